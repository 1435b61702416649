//! Commands that work on the database directly: `serve` and `token create`.

use std::process::ExitCode;
use std::sync::Arc;

use keyward_core::model::{Actor, Role};
use keyward_core::time::SystemClock;
use keyward_server::service::{self, Ctx};
use keyward_server::{AppState, Config};

use crate::cli::ServeArgs;

fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("KEYWARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let filter: Targets = spec
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .try_init();
}

async fn open(url: &str) -> Option<Arc<dyn keyward_store::Store>> {
    match keyward_store::open(url).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "error: cannot open the database {}: {e}",
                keyward_store::redact_url(url)
            );
            None
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: draining requests and flushing usage");
}

pub async fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    let Some(store) = open(&args.db.database_url).await else {
        return ExitCode::from(1);
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(args.listen.clone());
    let config = Config {
        usage_flush_ms: args.usage_flush_ms,
        sweep_interval_secs: args.sweep_interval_secs,
        verify_requires_token: args.verify_requires_token,
        trust_proxy_headers: args.trust_proxy_headers,
        redis_url: args.redis_url,
        ..Config::default()
    };
    let state = AppState::new(store, Arc::new(SystemClock), config);
    tracing::info!(
        listen = %addr,
        database = %keyward_store::redact_url(&args.db.database_url),
        "keyward listening on http://{addr}"
    );
    match keyward_server::serve(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "cli".into());
    Actor::cli(&user)
}

pub async fn token_create(
    url: &str,
    name: String,
    role: &str,
    keyspaces: Vec<String>,
    ttl: Option<i64>,
) -> ExitCode {
    let Some(store) = open(url).await else {
        return ExitCode::from(1);
    };
    let Some(role) = Role::parse(role) else {
        eprintln!("error: unknown role '{role}'");
        return ExitCode::from(2);
    };
    let state = AppState::new(store, Arc::new(SystemClock), Config::default());
    let ctx = Ctx {
        actor: cli_actor(),
        request_id: None,
        ip: None,
        keyspaces: None,
    };
    let input = service::CreateToken {
        name,
        role,
        keyspace_ids: if keyspaces.is_empty() {
            None
        } else {
            Some(keyspaces)
        },
        ttl_secs: ttl,
    };
    match service::create_token(&state, &ctx, input).await {
        Ok((_, plaintext)) => {
            println!("{}", plaintext.expose());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {}", e.code.as_str(), e.message);
            ExitCode::from(1)
        }
    }
}

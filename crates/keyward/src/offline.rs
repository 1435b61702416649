//! Commands that work on the database directly: `serve`, `token create` and `user create|disable`.

use std::process::ExitCode;
use std::sync::Arc;

use keyward_core::model::{Actor, Role};
use keyward_core::secret::Secret;
use keyward_core::time::{CoarseClock, SystemClock};
use keyward_server::authz::Ctx;
use keyward_server::service;
use keyward_server::state::Records;
use keyward_server::{AppState, Config};

/// Logs to stderr, filtered by `KEYWARD_LOG` (or `RUST_LOG`), as text or, with
/// `KEYWARD_LOG_FORMAT=json`, one JSON object a line (for log shippers).
/// Logs on standard error (text or JSON lines), and traces over OTLP when the environment asks
/// for them: the tracer provider to shut down at the end is returned.
fn init_logging() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("KEYWARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let filter: Targets = spec
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    // The spans exported as traces are not log lines.
    let filter = filter.with_target(crate::telemetry::TARGET, LevelFilter::OFF);
    let provider = crate::telemetry::provider()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("keyward"))
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(crate::telemetry::TARGET, LevelFilter::TRACE))
    });
    let json = match std::env::var("KEYWARD_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => {
            return Err(format!(
                "KEYWARD_LOG_FORMAT must be text or json, not {:?}",
                keyward_core::keyformat::shown(other)
            ))
        }
    };
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    // The union of what the layers take, as a global filter: a callsite no layer wants is
    // disabled outright (the `None` layers above would otherwise make every callsite live,
    // and each span would be built only to be ignored).
    let global = if traces.is_some() {
        filter
            .clone()
            .with_target(crate::telemetry::TARGET, LevelFilter::TRACE)
    } else {
        filter.clone()
    };
    let _ = tracing_subscriber::registry()
        .with(global)
        .with(text.with_filter(filter.clone()))
        .with(json.with_filter(filter))
        .with(traces)
        .try_init();
    Ok(provider)
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

/// Reads the TLS certificate and key again on every SIGHUP (after a renewal); a pair that does
/// not load is logged and the one in use stays.
fn reload_on_sighup(tls: keyward_server::tls::Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed before serving starts, so no SIGHUP is missed (or ends the process).
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: the TLS certificate was not reloaded; the previous one stays in use"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// `keyward serve`: listens on `listen`, on the database at `database_url`.
pub async fn serve(
    listen: &str,
    database_url: &str,
    key: &crate::master_key::KeyArgs,
    config: Config,
) -> ExitCode {
    let traces = match init_logging() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if traces.is_some() {
        tracing::info!("traces: exporting spans over OTLP/HTTP");
    }
    // Held while serving: a restore cannot replace the file under a running server.
    let _lock = match crate::backup::lock_for_serving(database_url) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(store) = open(database_url).await else {
        return ExitCode::from(1);
    };
    if let Err(e) = store.writable().await {
        eprintln!(
            "error: the database {} cannot be written ({e}); keyward needs a writable database",
            keyward_store::redact_url(database_url)
        );
        store.close().await;
        return ExitCode::from(1);
    }
    let master_key = match crate::master_key::resolve(database_url, key, true) {
        Ok(k) => k.map(|(k, _)| k),
        Err(e) => {
            eprintln!("error: {e}");
            store.close().await;
            return ExitCode::from(1);
        }
    };
    if let Err(e) = crate::master_key::prepare(store.as_ref(), master_key.as_ref()).await {
        eprintln!("error: {e}");
        store.close().await;
        return ExitCode::from(1);
    }
    // Read before listening: a certificate that cannot be used stops the start.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => match keyward_server::tls::Tls::load(cert, key) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                store.close().await;
                return ExitCode::from(1);
            }
        },
        _ => None,
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            store.close().await;
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen.to_string());
    // The server reads the clock on every verification: a millisecond-ticking clock makes that
    // one atomic load.
    let state = AppState::with_master_key(
        store.clone(),
        Arc::new(CoarseClock::start()),
        config,
        master_key,
    );
    let scheme = if tls.is_some() { "https" } else { "http" };
    announce_setup_link(&state, scheme, &addr).await;
    tracing::info!(
        listen = %addr,
        database = %keyward_store::redact_url(database_url),
        "keyward listening on {scheme}://{addr}"
    );
    if let Some(tls) = &tls {
        reload_on_sighup(tls.clone());
    }
    let served = keyward_server::serve_with(listener, state, tls, shutdown_signal()).await;
    // Every request and background task has finished: closing checkpoints SQLite's
    // write-ahead log, so the database file alone is complete after a graceful stop.
    store.close().await;
    if let Some(t) = traces {
        let _ = tokio::task::spawn_blocking(move || crate::telemetry::shutdown(t)).await;
    }
    match served {
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
    // Only the database: a token or a user is one transaction, no server state is needed.
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = Ctx::operator(cli_actor());
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
    let created = match ctx.allow() {
        Ok(who) => service::create_token(&records, &who, input).await,
        Err(e) => Err(e),
    };
    // Closing checkpoints SQLite's write-ahead log: the database file alone is complete.
    store.close().await;
    match created {
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

/// On a database without users, prints the one-time link that creates the first admin in the
/// browser, on standard output only (never in the log).
async fn announce_setup_link(state: &AppState, scheme: &str, addr: &str) {
    match keyward_server::accounts::issue_setup_token(state.records()).await {
        Ok(Some(token)) => {
            // A wildcard listen address is not something a browser can open.
            let host = match addr.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_unspecified() => format!("localhost:{}", a.port()),
                _ => addr.to_string(),
            };
            let link = format!("{scheme}://{host}/setup?token={}", token.expose());
            let minutes = keyward_server::accounts::SETUP_TTL_SECS / 60;
            println!(
                "No dashboard users yet. Create the first admin within {minutes} minutes (the link works once):\n\n    {link}\n"
            );
            // The log gets no token: logs are shipped and kept; the terminal line is the only copy.
            tracing::info!("first run: a one-time setup link was printed on standard output");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e.message, "could not create the first-run setup link"),
    }
}

fn role_arg(role: &str) -> Option<Role> {
    let r = Role::parse(role);
    if r.is_none() {
        eprintln!("error: unknown role '{role}'");
    }
    r
}

/// The password: one line of standard input with `--password-stdin`, otherwise asked twice on
/// the terminal (without echo).
fn read_password(from_stdin: bool) -> Result<Secret, String> {
    if from_stdin || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        return Ok(Secret::new(pw));
    }
    let first = rpassword::prompt_password("Password (at least 12 characters): ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let second = rpassword::prompt_password("Repeat the password: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if first != second {
        return Err("the two passwords differ".into());
    }
    Ok(Secret::new(first))
}

pub async fn user_create(url: &str, email: &str, role: &str, password_stdin: bool) -> ExitCode {
    let Some(role) = role_arg(role) else {
        return ExitCode::from(2);
    };
    let password = match read_password(password_stdin) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(store) = open(url).await else {
        return ExitCode::from(1);
    };
    // Only the database: a token or a user is one transaction, no server state is needed.
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = cli_ctx();
    let created = match ctx.allow() {
        Ok(who) => {
            keyward_server::accounts::create_user(&records, &who, email, role, password).await
        }
        Err(e) => Err(e),
    };
    // Closing checkpoints SQLite's write-ahead log: the database file alone is complete.
    store.close().await;
    match created {
        Ok(user) => {
            println!(
                "created {} ({}, {})",
                user.id,
                user.email,
                user.role.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {}", e.code.as_str(), e.message);
            ExitCode::from(1)
        }
    }
}

pub async fn user_disable(url: &str, email: &str) -> ExitCode {
    let Some(store) = open(url).await else {
        return ExitCode::from(1);
    };
    // Only the database: a token or a user is one transaction, no server state is needed.
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = cli_ctx();
    let disabled = match ctx.allow() {
        Ok(who) => keyward_server::accounts::disable_user(&records, &who, email).await,
        Err(e) => Err(e),
    };
    // Closing checkpoints SQLite's write-ahead log: the database file alone is complete.
    store.close().await;
    match disabled {
        Ok(user) => {
            println!("disabled {} ({})", user.id, user.email);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {}", e.code.as_str(), e.message);
            ExitCode::from(1)
        }
    }
}

fn cli_ctx() -> Ctx {
    Ctx::operator(cli_actor())
}

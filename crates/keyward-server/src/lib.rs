//! keyward-server: the HTTP server of keyward.
//!
//! # Layout
//! From the edges inwards (docs/architecture.md has the whole picture):
//! - [`config`]: the settings of `keyward serve` (clap, the one place a default is written).
//! - [`routes`]: what a route is and who may call it; [`app`] builds the router from the API's
//!   and the dashboard's route tables.
//! - [`http`]: the API's handlers, extractors and the mapping of errors to HTTP (`http::error`).
//! - `dashboard`: the web dashboard at `/`: handlers that read through [`service`] into view
//!   models, and views that render them.
//! - [`authz`]: [`authz::Ctx`] and the door, `Ctx::allow::<Right>()`: the only way to the proof
//!   every control-plane function requires.
//! - [`service`]: the control plane's rules and reads (one transaction + audit event per change);
//!   [`accounts`] (token authentication, dashboard users and sessions) and the inventory report
//!   sit beside it behind the same door.
//! - [`verifier`]: the data plane (cache, live counters, quota leases, decision).
//! - [`jobs`]: named background tasks (usage flusher, change-feed follower, sweeper, webhook
//!   delivery), awaited on shutdown.
//! - [`state`]: [`AppState`] (what the front ends share) and the parts each layer takes:
//!   [`state::Records`] (the store and the clock: reads, tokens, users, the offline commands),
//!   [`state::Control`] (changes of keys, keyspaces and webhooks, and the jobs: the records
//!   plus this node's caches they keep in step) and `state::Authn` (authentication: the records
//!   plus this node's throttles).
//! - Leaves: the control plane's error type, [`throttle`], metrics, events, anomaly rules,
//!   `slowhash` (imported keys' salted hashes) and the Redis client.
//!
//! [`serve`] takes the listener, the state and a shutdown future, so tests run real servers on
//! port 0 and stop them when they like.

pub mod accounts;
pub(crate) mod anomalies;
pub mod authz;
pub(crate) mod census;
pub mod config;
pub(crate) mod conn;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod github;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod leaks;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod redis;
pub(crate) mod reports;
pub mod routes;
pub mod service;
pub(crate) mod slowhash;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod traces;
pub mod verifier;

use std::future::Future;

pub use config::Config;
pub use state::AppState;

/// Every route the server answers (the API's, then the dashboard's), for the tests that hold
/// each to its access and to the OpenAPI document.
#[cfg(feature = "test-hooks")]
pub fn route_table() -> Vec<routes::RouteSpec> {
    http::api_routes()
        .into_iter()
        .chain(dashboard::routes())
        .map(|(spec, _)| spec)
        .collect()
}

/// The whole application: the API, the dashboard, a JSON 404 for anything else, and the
/// request-id and logging layer around all of it.
pub fn app(state: AppState) -> axum::Router {
    routes::from_table(http::api_routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::bounded,
        ))
        // The web dashboard: `/`, `/login`, `/keys`, ... and `/static/...`.
        .merge(dashboard::router(state.clone()))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn(http::request_context))
        .with_state(state)
}

/// Serves until `shutdown` resolves; then drains in-flight requests and flushes usage.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], over TLS with `tls` when it is given (HTTPS only: a plain HTTP request on the
/// port fails its handshake).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The gRPC ext_authz listener, when configured, is bound before anything starts (an
    // address that cannot be used stops serve at once) and stops with the HTTP one.
    let grpc_listener = match &state.config.grpc_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for gRPC on {addr}: {e}"))
        })?),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(jobs::usage::run(
        state.control.clone(),
        state.config.usage_flush,
        stop_rx,
    ));
    let follower = tokio::spawn(jobs::feed::run(
        state.control.clone(),
        state.config.feed_poll,
        stop_tx.subscribe(),
    ));
    let sweeper = tokio::spawn(jobs::sweep::run(
        state.control.clone(),
        state.config.sweep_interval,
        state.config.retention(),
        stop_tx.subscribe(),
    ));
    let deliverer = tokio::spawn(jobs::webhooks::run(
        state.control.clone(),
        state.config.webhook_poll,
        jobs::webhooks::Deliverer::from_config(&state.config),
        stop_tx.subscribe(),
    ));
    let warmer = {
        let (st, mut stop) = (state.clone(), stop_tx.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                () = dashboard::census::warm(st) => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
        })
    };
    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = match grpc_listener {
        Some(listener) => {
            let at = listener.local_addr()?;
            tracing::info!(listen = %at, "gRPC ext_authz listening on {at}");
            let st = state.clone();
            Some(tokio::spawn(async move {
                let stop = async {
                    let _ = grpc_stopped.await;
                };
                if let Err(e) = grpc::serve(listener, st, stop).await {
                    tracing::error!(error = %e, "gRPC ext_authz server failed");
                }
            }))
        }
        None => None,
    };
    let shutdown = async move {
        shutdown.await;
        let _ = grpc_stop.send(());
    };
    let limits = conn::Limits {
        header_read: state.config.header_read_timeout,
        body_read: state.config.body_read_timeout,
        max_connections: state.config.connection_cap(),
    };
    let served = conn::accept_loop(
        listener,
        app(state.clone()),
        limits,
        tls,
        state.metrics().clone(),
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    if let Some(g) = grpc {
        let _ = g.await;
    }
    let tasks = [
        ("usage flusher", flusher),
        ("change-feed follower", follower),
        ("sweeper", sweeper),
        ("webhook deliverer", deliverer),
        ("overview counter", warmer),
    ];
    for (name, task) in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, task = name, "background task failed");
        }
    }
    served
}

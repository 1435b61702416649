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
//! - [`state`]: [`AppState`] (what handlers and jobs share) and [`state::Records`] (what the
//!   offline commands need: the store and the clock).
//! - Leaves: the control plane's error type, [`throttle`], metrics, events, anomaly rules and
//!   the Redis client.
//!
//! [`serve`] takes the listener, the state and a shutdown future, so tests run real servers on
//! port 0 and stop them when they like.

pub mod accounts;
pub(crate) mod anomalies;
pub mod authz;
pub mod config;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod events;
pub mod http;
pub mod jobs;
pub(crate) mod metrics;
pub(crate) mod redis;
pub(crate) mod reports;
pub mod routes;
pub mod service;
pub mod state;
pub mod throttle;
pub mod verifier;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

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
        // The web dashboard: `/`, `/login`, `/keys`, ... and `/static/...`.
        .merge(dashboard::router())
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn(http::request_context))
        .with_state(state)
}

/// Accepts HTTP/1.1 connections until `shutdown` resolves, then lets each finish its request in
/// flight and waits for all of them (what `axum::serve` does, plus a header-read timeout).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Service as _;

    // Connections watch `stop` to begin a graceful shutdown, and each holds a `done` receiver:
    // when all are dropped, every connection has finished.
    let (stop, stop_rx) = tokio::sync::watch::channel(());
    let (done, done_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(remote));
                app.clone().call(req)
            });
        let mut stop_rx = stop_rx.clone();
        let done_rx = done_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(done_rx);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop.send(());
    drop(done_rx);
    done.closed().await;
    Ok(())
}

/// Errors of one connection that failed while being accepted (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Serves until `shutdown` resolves; then drains in-flight requests and flushes usage.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(jobs::usage::run(
        state.clone(),
        state.config.usage_flush,
        stop_rx,
    ));
    let follower = tokio::spawn(jobs::feed::run(
        state.clone(),
        state.config.feed_poll,
        stop_tx.subscribe(),
    ));
    let sweeper = tokio::spawn(jobs::sweep::run(
        state.clone(),
        state.config.sweep_interval,
        stop_tx.subscribe(),
    ));
    let deliverer = tokio::spawn(jobs::webhooks::run(
        state.clone(),
        state.config.webhook_poll,
        stop_tx.subscribe(),
    ));
    let header_timeout = state.config.header_read_timeout;
    let served = accept_loop(listener, app(state.clone()), header_timeout, shutdown).await;
    let _ = stop_tx.send(true);
    let tasks = [
        ("usage flusher", flusher),
        ("change-feed follower", follower),
        ("sweeper", sweeper),
        ("webhook deliverer", deliverer),
    ];
    for (name, task) in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, task = name, "background task failed");
        }
    }
    served
}

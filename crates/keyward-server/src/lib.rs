//! keyward-server: the HTTP server of keyward.
//!
//! # Layout
//! - [`config`]: settings; [`state`]: what handlers and tasks share.
//! - [`service`]: the control plane's rules (one transaction + audit event per change).
//! - [`verifier`]: the data plane (cache, live counters, decision).
//! - [`accounts`]: dashboard users, passwords, sessions, the first-run setup link.
//! - [`dashboard`]: the web dashboard at `/` (server-rendered pages over [`service`]).
//! - [`http`]: routes, extractors, the error envelope ([`error`]).
//! - [`jobs`]: background tasks (usage flusher, change-feed follower, sweeper, webhook
//!   delivery); [`anomalies`] and [`events`] feed them.
//! - [`metrics`]: Prometheus counters.
//!
//! [`serve`] takes the listener, the state and a shutdown future, so tests run real servers on
//! port 0 and stop them when they like.

pub mod accounts;
pub mod anomalies;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod redis;
pub mod reports;
pub mod service;
pub mod state;
pub mod verifier;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use config::Config;
pub use state::AppState;

/// Serves until `shutdown` resolves; then drains in-flight requests and flushes usage.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(jobs::usage::run(
        state.clone(),
        Duration::from_millis(state.config.usage_flush_ms.max(1)),
        stop_rx,
    ));
    let follower = tokio::spawn(jobs::feed::run(
        state.clone(),
        Duration::from_millis(state.config.feed_poll_ms.max(1)),
        stop_tx.subscribe(),
    ));
    let sweeper = tokio::spawn(jobs::sweep::run(
        state.clone(),
        Duration::from_secs(state.config.sweep_interval_secs.max(1)),
        stop_tx.subscribe(),
    ));
    let deliverer = tokio::spawn(jobs::webhooks::run(
        state.clone(),
        Duration::from_millis(state.config.webhook_poll_ms.max(1)),
        stop_tx.subscribe(),
    ));
    let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
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

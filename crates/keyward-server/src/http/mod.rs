//! The HTTP surface: routes, the request-id and logging middleware, and the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`).

pub mod extract;
pub mod v1;
pub mod verify;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::{Code, Error, REQUEST_ID};
use crate::state::AppState;

pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route(
            "/v1/keyspaces",
            post(v1::create_keyspace).get(v1::list_keyspaces),
        )
        .route(
            "/v1/keyspaces/{id}",
            get(v1::get_keyspace).patch(v1::patch_keyspace),
        )
        .route("/v1/keys", post(v1::create_key).get(v1::list_keys))
        .route("/v1/keys/revoke", post(v1::revoke_owner))
        .route("/v1/keys/{id}", get(v1::get_key).patch(v1::patch_key))
        .route("/v1/keys/{id}/revoke", post(v1::revoke_key))
        .route("/v1/keys/{id}/rotate", post(v1::rotate_key))
        .route("/v1/verify", post(verify::verify))
        .route("/v1/forward-auth", any(verify::forward_auth))
        .route("/v1/tokens", post(v1::create_token).get(v1::list_tokens))
        .route("/v1/tokens/{id}/revoke", post(v1::revoke_token))
        .route("/v1/audit", get(v1::list_audit))
        .route("/v1/audit/verify", get(v1::verify_audit))
        .route("/v1/audit/export", get(v1::export_audit))
        .route("/v1/keys/{id}/usage", get(v1::key_usage))
        .route("/v1/keys/{id}/sources", get(v1::key_sources))
        .route("/v1/keyspaces/{id}/usage", get(v1::keyspace_usage))
        .route("/v1/anomalies", get(v1::list_anomalies))
        .route(
            "/v1/webhooks",
            post(v1::create_webhook).get(v1::list_webhooks),
        )
        .route(
            "/v1/webhooks/{id}",
            axum::routing::delete(v1::delete_webhook),
        )
        .route("/v1/webhooks/{id}/deliveries", get(v1::list_deliveries))
        .route("/v1/reports/inventory", get(v1::inventory))
        // The web dashboard: `/`, `/login`, `/keys`, ... and `/static/...`.
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::not_found("no such endpoint")
}

/// `req_` + a random per-process prefix + a counter: unique without a system call per request
/// (request ids need not be secret).
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| keyward_core::keyformat::base62_random(10));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "req_{prefix}{}",
        keyward_core::keyformat::encode_base62_fixed(n, 10)
    )
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    // Any printable ASCII (spaces included) up to 256 bytes is echoed as sent.
    let printable = s.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    // An id is stored in audit events and logs: one that holds a key is replaced.
    let secret = keyward_core::keyformat::contains_key_material(s);
    (!s.is_empty() && s.len() <= 256 && printable && !secret).then(|| s.to_string())
}

/// Gives every request an id (echoed from `x-request-id` when it sent a usable one), makes it
/// available to error bodies, turns the router's bare 405s into the error envelope, and logs
/// one line per request with the route template (never the raw path: it could hold a secret).
async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(valid_request_id)
        .unwrap_or_else(new_request_id);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let mut res = REQUEST_ID
        .scope(id.clone(), async move {
            let res = next.run(req).await;
            if res.status() == StatusCode::METHOD_NOT_ALLOWED
                && !res.headers().contains_key(header::CONTENT_TYPE)
            {
                let allow = res.headers().get(header::ALLOW).cloned();
                let mut r = Error::new(
                    Code::MethodNotAllowed,
                    "method not allowed for this endpoint",
                )
                .into_response();
                if let Some(a) = allow {
                    r.headers_mut().insert(header::ALLOW, a);
                }
                r
            } else {
                res
            }
        })
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    let route = route.as_ref().map_or("-", MatchedPath::as_str);
    let status = res.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    // The data plane answers tens of thousands of requests a second: its lines are debug-level
    // (its outcomes are in /metrics); the control plane is logged at info.
    if matches!(route, "/v1/verify" | "/v1/forward-auth") {
        tracing::debug!(request_id = %id, method = %method, route, status, micros, "request");
    } else {
        tracing::info!(request_id = %id, method = %method, route, status, micros, "request");
    }
    res
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "store": st.store.backend()})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "store": st.store.backend(), "error": "the store cannot be reached"})),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics.render(
        st.verifier.pending_keys(),
        st.verifier.cached_entries(),
        st.clock.now().millis(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

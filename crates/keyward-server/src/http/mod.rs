//! The HTTP surface: routes, the request-id and logging middleware, and the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`).

pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod v1;
pub(crate) mod verify;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use axum::Json;
use serde_json::json;

use keyward_core::model::Permission;

use crate::error::{Error, ErrorCode};
use crate::http::error::REQUEST_ID;
use crate::routes::{spec, Access, Handler, RouteSpec};
use crate::state::AppState;

pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the API and the operational endpoints, with its access.
pub(crate) fn api_routes() -> Vec<(RouteSpec, Handler)> {
    use Access::{Public, Right};
    use Permission::*;
    vec![
        spec("GET", "/healthz", Public, get(healthz)),
        spec("GET", "/readyz", Public, get(readyz)),
        spec("GET", "/metrics", Public, get(metrics)),
        spec("GET", "/v1/openapi.json", Public, get(openapi)),
        spec(
            "POST",
            "/v1/keyspaces",
            Right(WriteKeyspaces),
            post(v1::create_keyspace),
        ),
        spec(
            "GET",
            "/v1/keyspaces",
            Right(ReadKeys),
            get(v1::list_keyspaces),
        ),
        spec(
            "GET",
            "/v1/keyspaces/{id}",
            Right(ReadKeys),
            get(v1::get_keyspace),
        ),
        spec(
            "PATCH",
            "/v1/keyspaces/{id}",
            Right(WriteKeyspaces),
            patch(v1::patch_keyspace),
        ),
        spec(
            "POST",
            "/v1/keyspaces/{id}/keys/import",
            Right(WriteKeys),
            post(v1::import_keys),
        ),
        spec(
            "GET",
            "/v1/keyspaces/{id}/usage",
            Right(ReadKeys),
            get(v1::keyspace_usage),
        ),
        spec("POST", "/v1/keys", Right(WriteKeys), post(v1::create_key)),
        spec(
            "POST",
            "/v1/keys/lookup",
            Right(ReadAudit),
            post(v1::lookup_keys),
        ),
        spec("GET", "/v1/keys", Right(ReadKeys), get(v1::list_keys)),
        spec(
            "POST",
            "/v1/keys/revoke",
            Right(WriteKeys),
            post(v1::revoke_owner),
        ),
        spec("GET", "/v1/keys/{id}", Right(ReadKeys), get(v1::get_key)),
        spec(
            "PATCH",
            "/v1/keys/{id}",
            Right(WriteKeys),
            patch(v1::patch_key),
        ),
        spec(
            "POST",
            "/v1/keys/{id}/revoke",
            Right(WriteKeys),
            post(v1::revoke_key),
        ),
        spec(
            "POST",
            "/v1/keys/{id}/rotate",
            Right(WriteKeys),
            post(v1::rotate_key),
        ),
        spec(
            "GET",
            "/v1/keys/{id}/usage",
            Right(ReadKeys),
            get(v1::key_usage),
        ),
        spec(
            "GET",
            "/v1/keys/{id}/sources",
            Right(ReadKeys),
            get(v1::key_sources),
        ),
        spec(
            "POST",
            "/v1/identities",
            Right(WriteKeys),
            post(v1::create_identity),
        ),
        spec(
            "GET",
            "/v1/identities",
            Right(ReadKeys),
            get(v1::list_identities),
        ),
        spec(
            "GET",
            "/v1/identities/{id}",
            Right(ReadKeys),
            get(v1::get_identity),
        ),
        spec(
            "PATCH",
            "/v1/identities/{id}",
            Right(WriteKeys),
            patch(v1::patch_identity),
        ),
        spec(
            "DELETE",
            "/v1/identities/{id}",
            Right(WriteKeys),
            delete(v1::delete_identity),
        ),
        spec(
            "GET",
            "/v1/identities/{id}/usage",
            Right(ReadKeys),
            get(v1::identity_usage),
        ),
        spec("POST", "/v1/verify", Access::Verify, post(verify::verify)),
        spec("POST", "/v1/leaks", Public, post(v1::report_leak)),
        spec(
            "POST",
            "/v1/integrations/github/secret-scanning",
            Public,
            post(v1::github_secret_scanning),
        ),
        spec(
            "ANY",
            "/v1/forward-auth",
            Access::Verify,
            any(verify::forward_auth),
        ),
        // Envoy's HTTP ext_authz (and Istio) append the original path to the configured one
        // (`/` included).
        spec(
            "ANY",
            "/v1/forward-auth/",
            Access::Verify,
            any(verify::forward_auth),
        ),
        spec(
            "ANY",
            "/v1/forward-auth/{*path}",
            Access::Verify,
            any(verify::forward_auth),
        ),
        spec(
            "POST",
            "/v1/tokens",
            Right(ManageTokens),
            post(v1::create_token),
        ),
        spec(
            "GET",
            "/v1/tokens",
            Right(ManageTokens),
            get(v1::list_tokens),
        ),
        spec(
            "POST",
            "/v1/tokens/{id}/revoke",
            Right(ManageTokens),
            post(v1::revoke_token),
        ),
        spec("GET", "/v1/audit", Right(ReadAudit), get(v1::list_audit)),
        spec(
            "GET",
            "/v1/audit/verify",
            Right(ReadAudit),
            get(v1::verify_audit),
        ),
        spec(
            "GET",
            "/v1/audit/export",
            Right(ReadAudit),
            get(v1::export_audit),
        ),
        spec(
            "GET",
            "/v1/anomalies",
            Right(ReadKeys),
            get(v1::list_anomalies),
        ),
        spec(
            "POST",
            "/v1/webhooks",
            Right(ManageTokens),
            post(v1::create_webhook),
        ),
        spec(
            "GET",
            "/v1/webhooks",
            Right(ManageTokens),
            get(v1::list_webhooks),
        ),
        spec(
            "DELETE",
            "/v1/webhooks/{id}",
            Right(ManageTokens),
            delete(v1::delete_webhook),
        ),
        spec(
            "GET",
            "/v1/webhooks/{id}/deliveries",
            Right(ManageTokens),
            get(v1::list_deliveries),
        ),
        spec(
            "GET",
            "/v1/reports/inventory",
            Right(ReadAudit),
            get(v1::inventory),
        ),
    ]
}

pub(crate) async fn not_found() -> Error {
    Error::not_found("no such endpoint")
}

/// `req_` + a random per-process prefix + a counter: unique without a system call per request
/// (request ids need not be secret).
pub(crate) fn new_request_id() -> String {
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

pub(crate) fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    // Any printable ASCII (spaces included) up to 256 bytes is echoed as sent.
    let printable = s.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    // An id is stored in audit events and logs: one that holds a key is replaced.
    let secret = keyward_core::keyformat::contains_key_material(s);
    (!s.is_empty() && s.len() <= 256 && printable && !secret).then(|| s.to_string())
}

/// Bounds a management call's time (`KEYWARD_REQUEST_TIMEOUT_MS`): one that has not answered
/// by then is dropped, which rolls its transaction back (every change is one transaction, and
/// the cache hooks act on drop), and answered 503 `UNAVAILABLE`. Verification, forward-auth
/// and the operational endpoints are not bounded here: they never wait on a write.
pub(crate) async fn bounded(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let management = req.extensions().get::<MatchedPath>().is_some_and(|m| {
        let r = m.as_str();
        r.starts_with("/v1/") && r != "/v1/verify" && !r.starts_with("/v1/forward-auth")
    });
    if !management {
        return next.run(req).await;
    }
    match tokio::time::timeout(st.config.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Error::new(
            ErrorCode::Unavailable,
            "the request took too long and was stopped (a change not yet committed was rolled back)",
        )
        .into_response(),
    }
}

/// Gives every request an id (echoed from `x-request-id` when it sent a usable one), makes it
/// available to error bodies, turns the router's bare 405s into the error envelope, and logs
/// one line per request with the route template (never the raw path: it could hold a secret).
pub(crate) async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(valid_request_id)
        .unwrap_or_else(new_request_id);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let span = crate::traces::request(
        method.as_str(),
        route.as_ref().map_or("-", MatchedPath::as_str),
        req.headers(),
        &id,
    );
    let served = REQUEST_ID.scope(id.clone(), async move {
        let res = next.run(req).await;
        if res.status() == StatusCode::METHOD_NOT_ALLOWED
            && !res.headers().contains_key(header::CONTENT_TYPE)
        {
            let allow = res.headers().get(header::ALLOW).cloned();
            let mut r = Error::new(
                ErrorCode::MethodNotAllowed,
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
    });
    let served = tracing::Instrument::instrument(served, span.clone());
    #[cfg(not(feature = "test-hooks"))]
    let mut res = served.await;
    #[cfg(feature = "test-hooks")]
    let mut res = {
        let (mut res, granted) = crate::authz::witness::observe(served).await;
        if let Some(p) = granted {
            if let Ok(v) = HeaderValue::from_str(&format!("{p:?}")) {
                res.headers_mut().insert("x-keyward-granted", v);
            }
        }
        res
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    let route = route.as_ref().map_or("-", MatchedPath::as_str);
    // API answers are never stored by a cache on the way (some carry a new key, token or
    // webhook secret, shown once); the dashboard sets its own policy.
    if route.starts_with("/v1/") && !res.headers().contains_key(header::CACHE_CONTROL) {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let status = res.status().as_u16();
    crate::traces::finish_request(&span, status);
    let micros = started.elapsed().as_micros() as u64;
    // The data plane answers tens of thousands of requests a second: its lines are debug-level
    // (its outcomes are in /metrics); the control plane is logged at info.
    if matches!(
        route,
        "/v1/verify" | "/v1/forward-auth" | "/v1/forward-auth/" | "/v1/forward-auth/{*path}"
    ) {
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
    match crate::service::readiness(st.records()).await {
        (None, backend) => Json(json!({"status": "ready", "store": backend})).into_response(),
        (Some(problem), backend) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "store": backend, "error": problem})),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics().render(
        st.verifier().pending_keys(),
        st.verifier().cached_entries(),
        st.clock().now().millis(),
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

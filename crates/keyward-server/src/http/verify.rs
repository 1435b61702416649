//! The data plane over HTTP: `POST /v1/verify` and `ANY /v1/forward-auth`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_core::model::parse_ip;
use keyward_core::routes::RouteRequest;
use keyward_core::scope::check_requested_scope;
use keyward_core::verify::Code as VCode;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::http::error::error_body;
use crate::http::extract::{authenticate, bearer, client_ip, JsonBody, Params};
use crate::state::AppState;
use crate::verifier::{Outcome, Request};

const MAX_COST: i64 = 1_000_000_000;

pub(crate) fn check_scopes(scopes: &[String]) -> Result<()> {
    if scopes.len() > 100 {
        return Err(Error::bad_request("at most 100 scopes may be requested"));
    }
    scopes
        .iter()
        .try_for_each(|s| check_requested_scope(s).map_err(Error::bad_request))
}

pub(crate) async fn verify(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let mut limit = None;
    if st.config.verify_requires_token {
        let ip = client_ip(&parts, st.config.trust_proxy_headers);
        let auth = authenticate(&st, bearer(&parts.headers), ip).await?;
        auth.ctx().allow::<crate::authz::Verify>()?;
        limit = auth.token.keyspace_ids;
    }
    let body = match JsonBody::read(parts, body).await {
        Ok(b) => b,
        Err(refused) => return Ok(refused),
    };
    let b: keyward_core::api::VerifyRequest = body.parse()?;
    if b.key.expose().is_empty() {
        return Err(Error::bad_request("key must not be empty"));
    }
    let scopes = b.scopes.unwrap_or_default();
    check_scopes(&scopes)?;
    let ip =
        b.ip.as_deref()
            .map(parse_ip)
            .transpose()
            .map_err(Error::bad_request)?;
    let cost = b.cost.unwrap_or(1);
    if !(0..=MAX_COST).contains(&cost) {
        return Err(Error::bad_request(format!(
            "cost must be an integer in 0..{MAX_COST}"
        )));
    }
    let outcome = run(
        &st,
        b.key.expose(),
        &scopes,
        ip,
        cost,
        limit.as_deref(),
        None,
    )
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        outcome_body(&outcome),
    )
        .into_response())
}

pub(crate) async fn run(
    st: &AppState,
    key: &str,
    scopes: &[String],
    ip: Option<IpAddr>,
    cost: i64,
    keyspaces: Option<&[String]>,
    route: Option<RouteRequest<'_>>,
) -> Result<Outcome> {
    let started = Instant::now();
    let outcome = st
        .verifier()
        .verify(&Request {
            key,
            scopes,
            ip,
            cost,
            keyspaces,
            route,
        })
        .await?;
    st.metrics().observe(outcome.code(), started.elapsed());
    Ok(outcome)
}

/// The answer, written straight into the response body: the key's part was rendered when it
/// was cached ([`crate::verifier::Entry::write_answer`]); only quota and rate limit are added here.
fn outcome_body(o: &Outcome) -> Vec<u8> {
    match o {
        Outcome::Valid {
            entry,
            remaining,
            limits,
        } => {
            let rate = limits.default_rate(entry);
            let mut out = Vec::with_capacity(entry.answer_len() + 160);
            out.extend_from_slice(b"{\"valid\":true,\"code\":\"VALID\",");
            entry.write_answer(&mut out);
            out.extend_from_slice(b",\"remaining\":");
            push_int(&mut out, *remaining);
            out.extend_from_slice(b",\"ratelimit\":");
            match rate {
                Some(r) => {
                    out.extend_from_slice(b"{\"limit\":");
                    push_int(&mut out, Some(r.limit));
                    out.extend_from_slice(b",\"remaining\":");
                    push_int(&mut out, Some(r.remaining));
                    out.extend_from_slice(b",\"reset_at\":\"");
                    out.extend_from_slice(r.reset_at.to_rfc3339().as_bytes());
                    out.extend_from_slice(b"\"}");
                }
                None => out.extend_from_slice(b"null"),
            }
            // `ratelimits` when it says more than `ratelimit` (an answer about none, or only the
            // `default` limit, keeps the shape it had).
            if entry.has_named_limits() {
                // Limit names need no JSON escaping (their grammar excludes it).
                out.extend_from_slice(b",\"ratelimits\":[");
                for (i, (at, l, left, reset_at)) in limits.iter(entry).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"name\":\"");
                    out.extend_from_slice(l.name.as_bytes());
                    out.extend_from_slice(b"\",\"limit\":");
                    push_int(&mut out, Some(l.limit));
                    out.extend_from_slice(b",\"remaining\":");
                    push_int(&mut out, Some(left));
                    out.extend_from_slice(b",\"reset_at\":\"");
                    out.extend_from_slice(reset_at.to_rfc3339().as_bytes());
                    out.push(b'"');
                    if at.identity {
                        out.extend_from_slice(b",\"identity\":true");
                    }
                    out.push(b'}');
                }
                out.push(b']');
            }
            out.push(b'}');
            out
        }
        Outcome::Denied {
            code,
            entry,
            reset_at,
            limit,
        } => {
            // The exhausted limit, named when the key's limits say more than `ratelimit`.
            let named = match (entry, limit) {
                (Some(e), Some(l)) if e.has_named_limits() => e.limit_of(*l).map(|x| (*l, x)),
                _ => None,
            };
            #[derive(Serialize)]
            struct Denied<'a> {
                valid: bool,
                code: VCode,
                #[serde(skip_serializing_if = "Option::is_none")]
                key_id: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                keyspace_id: Option<&'a str>,
                /// `RATE_LIMITED` only: when the exhausted window resets.
                #[serde(skip_serializing_if = "Option::is_none")]
                reset_at: Option<keyward_core::time::Timestamp>,
                /// `RATE_LIMITED` only, when the key has named limits: the exhausted limit's
                /// name.
                #[serde(skip_serializing_if = "Option::is_none")]
                limit: Option<&'a str>,
                /// With `limit`: it is the identity's.
                #[serde(skip_serializing_if = "std::ops::Not::not")]
                identity: bool,
            }
            serde_json::to_vec(&Denied {
                valid: false,
                code: *code,
                key_id: entry.as_ref().map(|e| e.key_id()),
                keyspace_id: entry.as_ref().map(|e| e.keyspace_id()),
                reset_at: reset_at.filter(|_| *code == VCode::RateLimited),
                limit: named.map(|(_, l)| &*l.name),
                identity: named.is_some_and(|(e, _)| e.identity),
            })
            .unwrap_or_default()
        }
    }
}

/// A JSON integer, or `null`.
fn push_int(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// The request a proxy asks about, as far as it says: method and URI (path and query),
/// borrowed from the check's own request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Original<'a> {
    pub(crate) method: Option<&'a str>,
    pub(crate) uri: Option<&'a str>,
}

/// Reads the original request, in this order: the path after `/v1/forward-auth` (Envoy's
/// HTTP ext_authz, which also keeps the original method and query); `X-Forwarded-Method` and
/// `X-Forwarded-Uri` (Traefik, Caddy); `X-Original-Method` and `X-Original-URI` (nginx).
pub(crate) fn original_request(parts: &axum::http::request::Parts) -> Original<'_> {
    const PREFIX: &str = "/v1/forward-auth/";
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if parts.uri.path().starts_with(PREFIX) {
        // The path and query after the prefix, keeping its `/`.
        let uri = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| &pq.as_str()[PREFIX.len() - 1..]);
        return Original {
            method: Some(parts.method.as_str()),
            uri: Some(uri),
        };
    }
    // The first pair that names a URI (a method alone, e.g. a client-sent X-Forwarded-Method
    // that the proxy did not clear, does not hide the pair the proxy set).
    let mut method_only = None;
    for (m, u) in [
        ("x-forwarded-method", "x-forwarded-uri"),
        ("x-original-method", "x-original-uri"),
    ] {
        let (method, uri) = (header(m), header(u));
        if uri.is_some() {
            return Original { method, uri };
        }
        method_only = method_only.or(method);
    }
    Original {
        method: method_only,
        uri: None,
    }
}

/// For reverse proxies: the key from `Authorization: Bearer` or `X-API-Key` (never from the
/// URL), required scopes from repeated `?scope=`. Bodies are ignored. Any path under
/// `/v1/forward-auth/` is the same check (Envoy appends the original path).
pub(crate) async fn forward_auth(
    State(st): State<AppState>,
    mut params: Params,
    req: axum::extract::Request,
) -> Result<Response> {
    let (parts, _body) = req.into_parts();
    let original = original_request(&parts);
    tracing::debug!(method = ?original.method, "forward-auth check");
    let ip = client_ip(&parts, st.config.trust_proxy_headers);
    let mut limit = None;
    if st.config.verify_requires_token {
        let tok = parts
            .headers
            .get("x-keyward-token")
            .and_then(|v| v.to_str().ok());
        let auth = authenticate(&st, tok, ip).await.map_err(|mut e| {
            // Forward-auth's `Authorization` carries the API key: say where the token goes.
            if e.code == crate::error::ErrorCode::Unauthenticated && tok.is_none() {
                e.message = "a verifier token is required in X-Keyward-Token".into();
            }
            e
        })?;
        auth.ctx().allow::<crate::authz::Verify>()?;
        limit = auth.token.keyspace_ids;
    }
    let scopes = params.take_all("scope");
    check_scopes(&scopes)?;
    let Some(key) = presented_key(&parts.headers) else {
        return Err(Error::unauthenticated(
            "an API key is required (Authorization: Bearer <key> or X-API-Key)",
        ));
    };
    let route = RouteRequest {
        method: original.method,
        uri: original.uri,
    };
    let outcome = run(&st, &key, &scopes, ip, 1, limit.as_deref(), Some(route)).await?;
    let (status, message) = denial(outcome.code());
    let mut res = match &outcome {
        Outcome::Valid { entry, .. } => {
            let mut res = StatusCode::OK.into_response();
            let h = res.headers_mut();
            h.reserve(8);
            for ((_, value), name) in identity(entry).into_iter().zip(IDENTITY_HEADERS) {
                set(h, name, &value);
            }
            res
        }
        Outcome::Denied { code, reset_at, .. } => {
            let mut res = (status, Json(error_body(code.as_str(), message))).into_response();
            if let (VCode::RateLimited, Some(reset)) = (code, reset_at) {
                let secs = retry_after_secs(*reset, st.clock().now());
                res.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            res
        }
    };
    if let Outcome::Denied {
        code, entry, limit, ..
    } = &outcome
    {
        // The code in a header too: nginx's auth_request passes on the status but not the body.
        set(res.headers_mut(), CODE_HEADER, code.as_str());
        if let Some(e) = entry {
            set(res.headers_mut(), KEY_ID_HEADER, e.key_id());
            if let Some(l) = limit
                .filter(|_| e.has_named_limits())
                .and_then(|l| e.limit_of(l))
            {
                set(res.headers_mut(), LIMIT_HEADER, &l.name);
            }
        }
    }
    // Other query parameters belong to the proxied request; forward-auth ignores them.
    drop(params);
    Ok(res)
}

// Header names built once (a name from a string is parsed on every insert).
const KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-keyward-key-id");
const CODE_HEADER: HeaderName = HeaderName::from_static("x-keyward-code");
/// On `RATE_LIMITED`: the name of the exhausted limit.
const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-keyward-limit");
/// The names of [`identity`]'s headers, in its order.
const IDENTITY_HEADERS: [HeaderName; 5] = [
    KEY_ID_HEADER,
    HeaderName::from_static("x-keyward-keyspace-id"),
    HeaderName::from_static("x-keyward-owner"),
    HeaderName::from_static("x-keyward-scopes"),
    HeaderName::from_static("x-keyward-name"),
];

/// Whole seconds until `reset` (at least 1): a denial's `Retry-After`.
pub(crate) fn retry_after_secs(
    reset: keyward_core::time::Timestamp,
    now: keyward_core::time::Timestamp,
) -> i64 {
    ((reset.millis() - now.millis()) + 999)
        .div_euclid(1000)
        .max(1)
}

/// The identity headers of a valid key, as forward-auth (HTTP and gRPC) passes them upstream.
pub(crate) fn identity(entry: &crate::verifier::Entry) -> [(&'static str, Cow<'_, str>); 5] {
    [
        ("x-keyward-key-id", Cow::Borrowed(entry.key_id())),
        ("x-keyward-keyspace-id", Cow::Borrowed(entry.keyspace_id())),
        (
            "x-keyward-owner",
            Cow::Borrowed(entry.owner().unwrap_or("")),
        ),
        ("x-keyward-scopes", Cow::Owned(join_scopes(entry))),
        ("x-keyward-name", Cow::Owned(entry.name())),
    ]
}

/// Forward-auth's status and message for a verification's outcome (HTTP and gRPC alike).
pub(crate) fn denial(code: VCode) -> (StatusCode, &'static str) {
    let (status, message) = code.denial();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
        message,
    )
}

/// The key's scopes, comma-separated (one allocation).
fn join_scopes(entry: &crate::verifier::Entry) -> String {
    let mut out = String::new();
    for (i, scope) in entry.scopes().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(scope);
    }
    out
}

/// Sets an identity header; UTF-8 is sent as is (a field value may carry such bytes), and a
/// value a header cannot carry (control characters) is left out.
fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
        h.insert(name, v);
    }
}

fn presented_key(h: &HeaderMap) -> Option<String> {
    if let Some(b) = bearer(h) {
        return Some(b.to_string());
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, method: &str, headers: &[(&str, &str)]) -> axum::http::request::Parts {
        let mut b = axum::http::Request::builder().uri(uri).method(method);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_original_request_comes_from_the_path_then_traefik_then_nginx_headers() {
        let envoy = parts(
            "/v1/forward-auth/orders/7?page=2",
            "DELETE",
            &[
                ("x-forwarded-uri", "/ignored"),
                ("x-original-uri", "/ignored"),
            ],
        );
        assert_eq!(
            original_request(&envoy),
            Original {
                method: Some("DELETE"),
                uri: Some("/orders/7?page=2")
            }
        );
        let traefik = parts(
            "/v1/forward-auth",
            "GET",
            &[
                ("x-forwarded-method", "PATCH"),
                ("x-forwarded-uri", "/orders/7"),
                ("x-original-uri", "/ignored"),
            ],
        );
        assert_eq!(
            original_request(&traefik),
            Original {
                method: Some("PATCH"),
                uri: Some("/orders/7")
            }
        );
        let nginx = parts(
            "/v1/forward-auth",
            "GET",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/pay?x=1"),
            ],
        );
        assert_eq!(
            original_request(&nginx),
            Original {
                method: Some("POST"),
                uri: Some("/pay?x=1")
            }
        );
        assert_eq!(
            original_request(&parts("/v1/forward-auth", "GET", &[])),
            Original::default()
        );
        // A method alone (a client-sent X-Forwarded-Method) does not hide nginx's pair.
        let stray = parts(
            "/v1/forward-auth",
            "GET",
            &[
                ("x-forwarded-method", "GET"),
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/admin/x"),
            ],
        );
        assert_eq!(
            original_request(&stray),
            Original {
                method: Some("DELETE"),
                uri: Some("/admin/x")
            }
        );
    }
}

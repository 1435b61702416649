//! Envoy's gRPC external authorization (`envoy.service.auth.v3.Authorization/Check`), served on
//! `KEYWARD_GRPC_LISTEN` (off by default): the same decision as HTTP forward-auth.
//!
//! - The key comes from the checked request's `x-api-key` header or `authorization: Bearer`.
//! - The checked request's method and path (`attributes.request.http`) go through the
//!   keyspace's route rules; required scopes may also come from the route's
//!   `context_extensions` (`scopes`: comma- or space-separated), Envoy's way of passing
//!   per-route settings (HTTP forward-auth takes them from `?scope=`).
//! - On success the answer is `OkHttpResponse` with the identity headers (overwriting any the
//!   client sent) and `x-keyward-token` removed; a denial is `DeniedHttpResponse` with the same
//!   status as forward-auth (401/403/429 with `retry-after`, 503 when the store is down), the
//!   JSON error envelope as body, `x-keyward-code`, and a non-OK gRPC status inside the answer.
//! - The client address is the gRPC peer's, or the `source` address Envoy reports when the
//!   server trusts proxy headers (`KEYWARD_TRUST_PROXY_HEADERS=true`), as for `X-Forwarded-For`.
//! - With `KEYWARD_VERIFY_REQUIRES_TOKEN=true` the verifier token comes in the call's gRPC
//!   metadata `x-keyward-token` (Envoy's `initial_metadata`).
//! - A check without HTTP attributes, a key header over 8 KiB or with control characters, or any
//!   other malformed input is a denied answer, never a panic or an RPC error.

use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use keyward_core::routes::RouteRequest;
use keyward_core::verify::Code as VCode;

use crate::error::Error;
use crate::http::error::{error_body, status, REQUEST_ID};
use crate::http::verify::{check_scopes, denial, identity, retry_after_secs, run};
use crate::state::AppState;
use crate::verifier::Outcome;

/// Longest key header read; a longer one is refused unread (no key is longer than ~70 bytes).
const MAX_KEY_HEADER: usize = 8192;

/// Serves ext_authz on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(ExtAuthz { state }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}

struct ExtAuthz {
    state: AppState,
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let token = req
            .metadata()
            .get("x-keyward-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let check = req.into_inner();
        let request_id = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| header(h, "x-request-id"))
            .and_then(|v| axum::http::HeaderValue::from_str(v).ok())
            .and_then(|v| crate::http::valid_request_id(&v))
            .unwrap_or_else(crate::http::new_request_id);
        let answer = REQUEST_ID
            .scope(request_id, decide(&self.state, check, peer, token))
            .await;
        Ok(tonic::Response::new(answer))
    }
}

async fn decide(
    st: &AppState,
    check: CheckRequest,
    peer: Option<IpAddr>,
    token: Option<String>,
) -> CheckResponse {
    let Some(attrs) = check.attributes else {
        return refused(Error::bad_request("the check carries no attributes"));
    };
    let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return refused(Error::bad_request(
            "the check carries no HTTP request attributes",
        ));
    };
    let source = attrs
        .source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                s.address.parse::<IpAddr>().ok()
            }
            _ => None,
        });
    let ip = if st.config.trust_proxy_headers {
        source.or(peer)
    } else {
        peer
    };
    let mut limit = None;
    if st.config.verify_requires_token {
        let auth = match crate::http::extract::authenticate(st, token.as_deref(), ip).await {
            Ok(a) => a,
            Err(mut e) => {
                if token.is_none() {
                    e.message =
                        "a verifier token is required in the gRPC metadata x-keyward-token".into();
                }
                return refused(e);
            }
        };
        if let Err(e) = auth.ctx().allow::<crate::authz::Verify>() {
            return refused(e);
        }
        limit = auth.token.keyspace_ids;
    }
    let scopes = match requested_scopes(&attrs.context_extensions) {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let Some(key) = presented_key(http) else {
        return refused(Error::unauthenticated(
            "an API key is required (authorization: Bearer <key> or x-api-key)",
        ));
    };
    // The path Envoy reports includes the query.
    let route = RouteRequest {
        method: Some(http.method.as_str()).filter(|m| !m.is_empty()),
        uri: Some(http.path.as_str()).filter(|p| !p.is_empty()),
    };
    let outcome = match run(st, key, &scopes, ip, 1, limit.as_deref(), Some(route)).await {
        Ok(o) => o,
        Err(e) => return refused(e),
    };
    match &outcome {
        Outcome::Valid { entry, .. } => {
            let headers = identity(entry)
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, value)| overwrite(name, &value))
                .collect();
            CheckResponse {
                status: Some(RpcStatus {
                    code: tonic::Code::Ok as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove: vec!["x-keyward-token".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }
        }
        Outcome::Denied {
            code,
            entry,
            reset_at,
            limit,
        } => {
            let (http_status, message) = denial(*code);
            let mut extra = vec![overwrite("x-keyward-code", code.as_str())];
            if let Some(e) = entry {
                extra.push(overwrite("x-keyward-key-id", e.key_id()));
                if let Some(l) = limit
                    .filter(|_| e.has_named_limits())
                    .and_then(|l| e.limit_of(l))
                {
                    extra.push(overwrite("x-keyward-limit", &l.name));
                }
            }
            if let (VCode::RateLimited, Some(reset)) = (code, reset_at) {
                let secs = retry_after_secs(*reset, st.clock().now());
                extra.push(overwrite("retry-after", &secs.to_string()));
            }
            denied(http_status.as_u16(), code.as_str(), message, extra)
        }
    }
}

/// A denial decided before (or instead of) a verification.
fn refused(e: Error) -> CheckResponse {
    let http_status = status(e.code).as_u16();
    let mut extra = Vec::new();
    if let Some(secs) = e.retry_after {
        extra.push(overwrite("retry-after", &secs.to_string()));
    }
    denied(http_status, e.code.as_str(), &e.message, extra)
}

fn denied(
    http_status: u16,
    code: &str,
    message: &str,
    mut headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    headers.push(overwrite("content-type", "application/json"));
    let grpc = match http_status {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        429 => tonic::Code::ResourceExhausted,
        400 => tonic::Code::InvalidArgument,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: grpc as i32,
            message: message.to_string(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http_status),
            }),
            headers,
            body: error_body(code, message).to_string(),
        })),
        ..Default::default()
    }
}

/// A header set on the request (or answer), replacing any value already there.
fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A header of the checked request: Envoy sends lowercase names in `headers`, or, with
/// `encode_raw_headers`, raw values in `header_map`.
fn header<'a>(
    http: &'a envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
    name: &str,
) -> Option<&'a str> {
    if let Some(v) = http.headers.get(name) {
        return Some(v.as_str());
    }
    http.header_map.as_ref().and_then(|m| {
        m.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .and_then(|h| {
                if h.raw_value.is_empty() {
                    Some(h.value.as_str())
                } else {
                    std::str::from_utf8(&h.raw_value).ok()
                }
            })
    })
}

/// The key: `authorization: Bearer <key>`, else `x-api-key`; a value over 8 KiB or with
/// control characters is no key (refused as missing, never echoed).
fn presented_key(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Option<&str> {
    let usable = |v: &&str| v.len() <= MAX_KEY_HEADER && !v.chars().any(char::is_control);
    if let Some(auth) = header(http, "authorization").filter(usable) {
        let (scheme, rest) = auth.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let key = rest.trim_start_matches(' ');
            if !key.is_empty() {
                return Some(key);
            }
        }
    }
    header(http, "x-api-key")
        .filter(usable)
        .filter(|k| !k.is_empty())
}

/// Required scopes from the route's `context_extensions["scopes"]`.
fn requested_scopes(ext: &HashMap<String, String>) -> Result<Vec<String>, Error> {
    let Some(list) = ext.get("scopes") else {
        return Ok(Vec::new());
    };
    let scopes: Vec<String> = list
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    check_scopes(&scopes)?;
    Ok(scopes)
}

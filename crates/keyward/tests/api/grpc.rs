//! Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) through a real gRPC
//! client over loopback: the same decisions as HTTP forward-auth, identity headers in
//! `OkHttpResponse`, denials as `DeniedHttpResponse` with forward-auth's status codes, route
//! rules on the checked request's method and path, and malformed checks denied, never failed.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{json, Value};

use crate::both;
use crate::helpers::TestApp;

type Client = AuthorizationClient<tonic::transport::Channel>;

/// Starts the ext_authz server on the app's state, on a free port; a connected client.
async fn client(app: &TestApp) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = app.state.clone();
    tokio::spawn(keyward_server::grpc::serve(
        listener,
        state,
        std::future::pending(),
    ));
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn check(method: &str, path: &str, headers: &[(&str, &str)], ext: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
    }
}

async fn ask(c: &mut Client, req: CheckRequest) -> CheckResponse {
    c.check(req)
        .await
        .expect("an answer, never an RPC error")
        .into_inner()
}

/// The OK answer's headers, or panics with the denial.
fn allowed(r: &CheckResponse) -> HashMap<String, String> {
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert!(ok
                .headers_to_remove
                .contains(&"x-keyward-token".to_string()));
            ok.headers
                .iter()
                .map(|h| {
                    let h = h.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone())
                })
                .collect()
        }
        other => panic!("not allowed: {other:?}"),
    }
}

/// A denial: (HTTP status, headers, JSON body); asserts the code in body and header.
#[track_caller]
fn denied(r: &CheckResponse, status: i32, code: &str) -> (HashMap<String, String>, Value) {
    assert_ne!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.as_ref().unwrap().code, status, "{r:?}");
            let headers: HashMap<String, String> = d
                .headers
                .iter()
                .map(|h| {
                    let h = h.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone())
                })
                .collect();
            let body: Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
            // As in HTTP forward-auth, the header carries a verification's code only.
            match code {
                "BAD_REQUEST" | "UNAUTHENTICATED" | "FORBIDDEN" | "UNAVAILABLE" => {
                    assert!(!headers.contains_key("x-keyward-code"), "{headers:?}")
                }
                _ => assert_eq!(headers["x-keyward-code"], code),
            }
            assert_eq!(headers["content-type"], "application/json");
            (headers, body)
        }
        other => panic!("not denied: {other:?}"),
    }
}

async fn ext_authz_decides_like_forward_auth(app: TestApp) {
    let mut c = client(&app).await;
    let prefix = format!(
        "g{}",
        keyward_core::keyformat::base62_random(8).to_lowercase()
    );
    let ks = app
        .post(
            "/v1/keyspaces",
            json!({"name": "grpc", "prefix": prefix, "unmatched": "deny",
                   "routes": [{"method": "GET", "path": "/orders/**", "scopes": ["orders:read"]}]}),
        )
        .await
        .expect(201)
        .id();
    let (id, key) = app
        .key(
            &ks,
            json!({"scopes": ["orders:read"], "owner": "team-g", "name": "grpc key"}),
        )
        .await;
    let bearer = format!("Bearer {key}");

    // Allowed: identity headers to set upstream (overwriting), the token header removed.
    let r = ask(
        &mut c,
        check("GET", "/orders/1?x=1", &[("authorization", &bearer)], &[]),
    )
    .await;
    let h = allowed(&r);
    assert_eq!(h["x-keyward-key-id"], id);
    assert_eq!(h["x-keyward-keyspace-id"], ks);
    assert_eq!(h["x-keyward-owner"], "team-g");
    assert_eq!(h["x-keyward-scopes"], "orders:read");
    assert_eq!(h["x-keyward-name"], "grpc key");
    if let Some(HttpResponse::OkResponse(ok)) = &r.http_response {
        assert!(
            ok.headers.iter().all(|o| o.append_action == 2),
            "overwrite, not append"
        );
    }
    allowed(&ask(&mut c, check("GET", "/orders", &[("x-api-key", &key)], &[])).await);

    // Route rules on the checked request; scopes from the route's context_extensions.
    denied(
        &ask(
            &mut c,
            check("DELETE", "/orders/1", &[("authorization", &bearer)], &[]),
        )
        .await,
        403,
        "ROUTE_NOT_ALLOWED",
    );
    let (h, _) = denied(
        &ask(
            &mut c,
            check(
                "GET",
                "/orders/1",
                &[("authorization", &bearer)],
                &[("scopes", "orders:read, billing:read")],
            ),
        )
        .await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    assert_eq!(h["x-keyward-key-id"], id);
    denied(
        &ask(
            &mut c,
            check(
                "GET",
                "/orders/1",
                &[("authorization", &bearer)],
                &[("scopes", "a:*")],
            ),
        )
        .await,
        400,
        "BAD_REQUEST",
    );

    // No key, a wrong key, a revoked key.
    denied(
        &ask(&mut c, check("GET", "/orders/1", &[], &[])).await,
        401,
        "UNAUTHENTICATED",
    );
    let mut wrong = key.clone();
    wrong.pop();
    wrong.push(if key.ends_with('0') { '1' } else { '0' });
    denied(
        &ask(
            &mut c,
            check("GET", "/orders/1", &[("x-api-key", &wrong)], &[]),
        )
        .await,
        401,
        "NOT_FOUND",
    );

    // Over the rate limit: 429 with retry-after.
    let (_, limited) = app
        .key(
            &ks,
            json!({"scopes": ["orders:read"], "ratelimit": {"limit": 1, "window_secs": 60}}),
        )
        .await;
    let auth = format!("Bearer {limited}");
    allowed(
        &ask(
            &mut c,
            check("GET", "/orders/1", &[("authorization", &auth)], &[]),
        )
        .await,
    );
    let (h, _) = denied(
        &ask(
            &mut c,
            check("GET", "/orders/1", &[("authorization", &auth)], &[]),
        )
        .await,
        429,
        "RATE_LIMITED",
    );
    let retry: i64 = h["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "grpc test"}),
    )
    .await
    .expect(200);
    denied(
        &ask(
            &mut c,
            check("GET", "/orders/1", &[("authorization", &bearer)], &[]),
        )
        .await,
        401,
        "REVOKED",
    );

    // Counted like any verification.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("keyward_verifications_total{code=\"RATE_LIMITED\"} 1"),
        "{text}"
    );
}
both!(ext_authz_decides_like_forward_auth);

async fn malformed_checks_are_denied_never_failed(app: TestApp) {
    let mut c = client(&app).await;
    // No attributes at all, and no HTTP request in them.
    let (_, body) = denied(
        &ask(&mut c, CheckRequest { attributes: None }).await,
        400,
        "BAD_REQUEST",
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("attributes"));
    let no_http = CheckRequest {
        attributes: Some(AttributeContext::default()),
    };
    denied(&ask(&mut c, no_http).await, 400, "BAD_REQUEST");
    // Key headers with control characters or over 8 KiB: no key, and never echoed.
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    for bad in [
        format!("{key}\r\nx-injected: 1"),
        format!("{key}{}", "a".repeat(9000)),
    ] {
        let r = ask(&mut c, check("GET", "/", &[("x-api-key", &bad)], &[])).await;
        let (_, body) = denied(&r, 401, "UNAUTHENTICATED");
        assert!(!body.to_string().contains(&key), "the key is not echoed");
    }
    // Empty method and path: rules with a path do not match; the key alone decides here.
    let r = ask(&mut c, check("", "", &[("x-api-key", &key)], &[])).await;
    allowed(&r);
    // The request id of the checked request is the error's.
    let r = ask(
        &mut c,
        check("GET", "/", &[("x-request-id", "req-from-envoy")], &[]),
    )
    .await;
    let (_, body) = denied(&r, 401, "UNAUTHENTICATED");
    assert_eq!(body["error"]["request_id"], "req-from-envoy");
}
both!(malformed_checks_are_denied_never_failed);

/// `keyward serve` with `KEYWARD_GRPC_LISTEN` answers checks there, and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_serve_answers_ext_authz_on_its_grpc_listener() {
    let dir = crate::helpers::TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let p = crate::secrets::start_with(&db, &[("KEYWARD_GRPC_LISTEN", "127.0.0.1:0")]);
    let marker = "gRPC ext_authz listening on ";
    let started = std::time::Instant::now();
    let addr = loop {
        let log = p.log();
        if let Some(i) = log.find(marker) {
            break log[i + marker.len()..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .to_string();
        }
        assert!(started.elapsed().as_secs() < 10, "{log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut c = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let r = ask(&mut c, check("GET", "/", &[], &[])).await;
    denied(&r, 401, "UNAUTHENTICATED");
    drop(c);
    crate::secrets::stop(p);
}

/// A gRPC address that cannot be used stops `keyward serve` with the reason.
#[test]
fn an_unusable_grpc_address_stops_serve() {
    let dir = crate::helpers::TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .env("KEYWARD_GRPC_LISTEN", &addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for gRPC on {addr}")),
        "{err}"
    );
    drop(taken);
}

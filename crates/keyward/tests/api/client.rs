//! `keyward-client` against a real server: every resource through typed calls, errors with the
//! API's code and request id, retries only where repeating is safe, timeouts, no secret in any
//! `Debug`; and its tower layer in front of a real axum service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use keyward_client::layer::{KeywardLayer, VerifiedKey};
use keyward_client::{
    AnomalyQuery, AuditQuery, BulkRevoke, ChainCheck, Client, Code, CreateKey, CreateKeyspace,
    CreateToken, CreateWebhook, Error, KeyQuery, KeyStatus, PageQuery, PatchKey, PatchKeyspace,
    RateLimit, Role, RotateKey, RouteRule, Unmatched, UsageQuery, VerifyRequest,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::both;
use crate::helpers::TestApp;

fn client(app: &TestApp) -> Client {
    Client::builder(app.url.clone())
        .token(app.admin.clone())
        .build()
        .unwrap()
}

async fn the_client_manages_every_resource_with_the_servers_types(app: TestApp) {
    let kw = client(&app);
    assert!(
        !format!("{kw:?}").contains(&app.admin),
        "the token never shows in Debug"
    );
    kw.healthy().await.unwrap();
    kw.ready().await.unwrap();

    // Keyspaces.
    let ks = kw
        .create_keyspace(&CreateKeyspace {
            name: "billing".into(),
            prefix: "bill".into(),
            routes: vec![RouteRule {
                method: Some("GET".into()),
                path: "/orders/**".into(),
                scopes: vec!["orders:read".into()],
            }],
            ..CreateKeyspace::default()
        })
        .await
        .unwrap();
    assert_eq!(ks.routes.len(), 1);
    let ks = kw
        .update_keyspace(
            &ks.id,
            &PatchKeyspace {
                unmatched: Some(Unmatched::Deny),
                ..PatchKeyspace::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ks.unmatched, Unmatched::Deny);
    assert_eq!(kw.get_keyspace(&ks.id).await.unwrap(), ks);
    let page = kw.list_keyspaces(&PageQuery::default()).await.unwrap();
    assert!(page.items.iter().any(|k| k.id == ks.id));

    // Keys: create, verify, read, change, rotate, revoke.
    let created = kw
        .create_key(&CreateKey {
            keyspace_id: ks.id.clone(),
            name: "prod".into(),
            owner: Some("acme".into()),
            scopes: vec!["orders:*".into()],
            ratelimit: Some(RateLimit {
                limit: 100,
                window_secs: 60,
            }),
            ..CreateKey::default()
        })
        .await
        .unwrap();
    let plaintext = created.plaintext.expose().to_string();
    assert!(plaintext.starts_with("bill_"));
    assert!(
        !format!("{created:?}").contains(&plaintext),
        "no plaintext in Debug"
    );
    let id = created.object.key.id.clone();
    assert_eq!(created.object.status, KeyStatus::Active);

    let mut req = VerifyRequest::new(plaintext.clone());
    req.scopes = Some(vec!["orders:read".into()]);
    let a = kw.verify(&req).await.unwrap();
    assert!(a.valid);
    assert_eq!(a.code, Code::Valid);
    assert_eq!(a.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(a.owner.as_deref(), Some("acme"));
    assert_eq!(a.ratelimit.unwrap().limit, 100);
    assert!(!format!("{req:?}").contains(&plaintext));
    let a = kw
        .verify(&VerifyRequest {
            scopes: Some(vec!["billing:write".into()]),
            ..VerifyRequest::new(plaintext.clone())
        })
        .await
        .unwrap();
    assert_eq!((a.valid, a.code), (false, Code::InsufficientScope));

    let k = kw
        .update_key(
            &id,
            &PatchKey {
                name: Some(Some("prod eu".into())),
                ratelimit: Some(None),
                ..PatchKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((k.key.name.as_str(), k.key.ratelimit), ("prod eu", None));
    assert_eq!(kw.get_key(&id).await.unwrap().key.name, "prod eu");
    let page = kw
        .list_keys(&KeyQuery {
            keyspace_id: Some(ks.id.clone()),
            owner: Some("acme".into()),
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);

    let next = kw
        .rotate_key(
            &id,
            &RotateKey {
                grace_secs: Some(60),
                reason: Some("scheduled".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(next.object.key.rotated_from.as_deref(), Some(id.as_str()));
    assert_eq!(kw.get_key(&id).await.unwrap().status, KeyStatus::Rotating);
    let revoked = kw.revoke_key(&id, "replaced").await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    let bulk = kw
        .revoke_owner_keys(&BulkRevoke {
            owner: "acme".into(),
            keyspace_id: Some(ks.id.clone()),
            reason: "offboarded".into(),
        })
        .await
        .unwrap();
    assert_eq!(bulk.key_ids, vec![next.object.key.id.clone()]);

    // Usage, sources, anomalies, inventory.
    let usage = kw.key_usage(&id, &UsageQuery::default()).await.unwrap();
    assert_eq!(usage["key_id"], id.as_str());
    kw.keyspace_usage(&ks.id, &UsageQuery::default())
        .await
        .unwrap();
    kw.key_sources(&id).await.unwrap();
    kw.list_anomalies(&AnomalyQuery::default()).await.unwrap();
    let inv = kw.inventory(Some(&ks.id)).await.unwrap();
    assert_eq!(inv["items"].as_array().map(Vec::len), Some(2));
    let csv = kw
        .inventory_csv(Some(&ks.id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // Tokens.
    let t = kw
        .create_token(&CreateToken {
            name: "ci".into(),
            role: Role::Viewer,
            keyspace_ids: Some(vec![ks.id.clone()]),
            ttl_secs: None,
        })
        .await
        .unwrap();
    assert!(!format!("{t:?}").contains(t.plaintext.expose()));
    let viewer = Client::builder(app.url.clone())
        .token(t.plaintext.expose())
        .build()
        .unwrap();
    assert_eq!(viewer.get_key(&id).await.unwrap().key.id, id);
    let tokens = kw.list_tokens(&PageQuery::default()).await.unwrap();
    assert!(tokens.items.iter().any(|x| x.id == t.object.id));
    kw.revoke_token(&t.object.id, "done").await.unwrap();
    let e = viewer.get_key(&id).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("UNAUTHENTICATED")));

    // Webhooks.
    let w = kw
        .create_webhook(&CreateWebhook {
            url: "https://hooks.example.com/keyward".into(),
            events: vec!["key.revoked".into()],
            keyspace_id: None,
        })
        .await
        .unwrap();
    assert!(!format!("{w:?}").contains(w.secret.expose()));
    assert!(kw
        .list_webhooks(&PageQuery::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|x| x.id == w.object.id));
    kw.list_deliveries(&w.object.id, &PageQuery::default())
        .await
        .unwrap();
    kw.delete_webhook(&w.object.id).await.unwrap();

    // Audit.
    let events = kw
        .list_audit(&AuditQuery {
            target_id: Some(id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<String> = events.items.iter().map(|e| e.action.clone()).collect();
    assert!(actions.contains(&"key.create".to_string()), "{actions:?}");
    assert!(actions.contains(&"key.revoke".to_string()), "{actions:?}");
    assert!(matches!(
        kw.verify_audit().await.unwrap(),
        ChainCheck::Ok { .. }
    ));
    let export = kw
        .export_audit("jsonl")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains(&plaintext));

    // Errors carry the API's code, message and request id.
    let e = kw
        .get_key("key_00000000000000000000000000")
        .await
        .unwrap_err();
    match &e {
        Error::Api {
            status,
            code,
            request_id,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (404, "NOT_FOUND"));
            assert!(request_id.as_deref().is_some_and(|r| !r.is_empty()));
        }
        other => panic!("{other:?}"),
    }
    let e = kw
        .create_key(&CreateKey {
            keyspace_id: ks.id.clone(),
            name: String::new(),
            ..CreateKey::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
}
both!(the_client_manages_every_resource_with_the_servers_types);

/// A local server that answers `status` to its first `fail` calls, then 200 `{}`; counts calls.
async fn flaky(status: u16, fail: usize, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let handler = move || {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            if n < fail {
                let body = json!({"error": {"code": "UNAVAILABLE", "message": "busy", "request_id": format!("req-{n}")}});
                (StatusCode::from_u16(status).unwrap(), axum::Json(body))
            } else {
                (
                    StatusCode::OK,
                    axum::Json(json!({"items": [], "next_cursor": null})),
                )
            }
        }
    };
    let app = Router::new()
        .route("/v1/keyspaces", get(handler.clone()).post(handler.clone()))
        .route("/v1/verify", post(handler));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, hits)
}

#[tokio::test]
async fn reads_are_retried_with_backoff_and_writes_and_verifications_never_are() {
    let fast = |url: &str| {
        Client::builder(url)
            .backoff(Duration::from_millis(5))
            .retries(2)
            .build()
            .unwrap()
    };
    // A read retried past two 503s succeeds on the third attempt.
    let (url, hits) = flaky(503, 2, Duration::ZERO).await;
    fast(&url)
        .list_keyspaces(&PageQuery::default())
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // More failures than retries: the last error, with its code and request id.
    let (url, hits) = flaky(503, 10, Duration::ZERO).await;
    let e = fast(&url)
        .list_keyspaces(&PageQuery::default())
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(e.code(), Some("UNAVAILABLE"));
    assert!(e.to_string().contains("req-2"), "{e}");

    // A write and a verification are sent once.
    let (url, hits) = flaky(503, 10, Duration::ZERO).await;
    let c = fast(&url);
    c.create_keyspace(&CreateKeyspace {
        name: "x".into(),
        prefix: "x".into(),
        ..CreateKeyspace::default()
    })
    .await
    .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    c.verify(&VerifyRequest::new("x_1")).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A 4xx is never retried.
    let (url, hits) = flaky(404, 10, Duration::ZERO).await;
    fast(&url)
        .list_keyspaces(&PageQuery::default())
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A slow server: each attempt times out, and a timed-out write is not repeated.
    let (url, hits) = flaky(200, 0, Duration::from_millis(500)).await;
    let slow = Client::builder(url.as_str())
        .timeout(Duration::from_millis(100))
        .backoff(Duration::from_millis(5))
        .retries(1)
        .build()
        .unwrap();
    let e = slow
        .list_keyspaces(&PageQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    let e = slow
        .create_keyspace(&CreateKeyspace::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "two reads and one write");

    // Nobody listening: unreachable, after the retries.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let e = fast(&gone)
        .create_keyspace(&CreateKeyspace::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(Client::builder("ftp://x").build().is_err());
    let e = Client::builder("http://ops:hunter2@127.0.0.1:1")
        .build()
        .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");

    // A redirect is an answer, never followed (it would carry a key in a body elsewhere).
    let (target, hits) = flaky(200, 0, Duration::ZERO).await;
    let app = Router::new().route(
        "/v1/verify",
        post(move || {
            let to = format!("{target}/v1/verify");
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let e = fast(&url)
        .verify(&VerifyRequest::new("acme_x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(307), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------- the tower layer

async fn whoami(key: VerifiedKey) -> axum::Json<Value> {
    axum::Json(json!({
        "key_id": key.key_id(),
        "keyspace_id": key.keyspace_id(),
        "owner": key.owner,
        "meta": key.meta,
        "orders": key.has_scope("orders:read"),
    }))
}

fn guarded(layer: KeywardLayer) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route_layer(layer)
}

async fn call(app: &Router, headers: &[(&str, &str)]) -> (u16, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().uri("/whoami");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

async fn the_layer_verifies_through_keyward_and_hands_the_key_to_handlers(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"owner": "acme", "scopes": ["orders:read"], "meta": {"plan": "pro"}}),
        )
        .await;
    let kw = Client::builder(app.url.clone()).build().unwrap();
    let any = guarded(KeywardLayer::new(kw.clone()));

    let bearer = format!("Bearer {key}");
    let (status, body, _) = call(&any, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key_id"], id.as_str());
    assert_eq!(body["keyspace_id"], ks.as_str());
    assert_eq!(body["owner"], "acme");
    assert_eq!(body["meta"]["plan"], "pro");
    assert_eq!(body["orders"], true);
    let (status, _, _) = call(&any, &[("x-api-key", &key)]).await;
    assert_eq!(status, 200);
    // The scheme in any case, as forward-auth reads it; a key is never trimmed.
    let shouted = format!("BEARER {key}");
    assert_eq!(call(&any, &[("authorization", &shouted)]).await.0, 200);
    let padded = format!("{key} ");
    assert_eq!(call(&any, &[("x-api-key", &padded)]).await.0, 401);
    let (status, body, _) = call(&any, &[("authorization", "Bearer ")]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("NOT_FOUND"))
    );

    // No key, a wrong key, an oversized header: refused without echoing.
    let (status, body, _) = call(&any, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    // Another last character (a key that ends in `x` would otherwise be itself).
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    let (status, body, _) = call(&any, &[("x-api-key", &wrong)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("NOT_FOUND"))
    );
    assert!(!body.to_string().contains(&wrong));
    let huge = "k".repeat(9000);
    let (status, body, _) = call(&any, &[("x-api-key", &huge)]).await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains(&huge));

    // A scope the key lacks: 403 with the verify answer's code.
    let admin_only = guarded(KeywardLayer::new(kw.clone()).require_scopes(["orders:write"]));
    let (status, body, _) = call(&admin_only, &[("authorization", &bearer)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("INSUFFICIENT_SCOPE"))
    );

    // A configured header only.
    let custom =
        guarded(KeywardLayer::new(kw.clone()).header(axum::http::HeaderName::from_static("x-key")));
    assert_eq!(call(&custom, &[("x-api-key", &key)]).await.0, 401);
    assert_eq!(call(&custom, &[("x-key", &key)]).await.0, 200);

    // Rate limited: 429 with Retry-After.
    let (_, limited) = app
        .key(
            &ks,
            json!({"owner": "acme", "ratelimit": {"limit": 1, "window_secs": 3600}}),
        )
        .await;
    assert_eq!(call(&any, &[("x-api-key", &limited)]).await.0, 200);
    let (status, body, headers) = call(&any, &[("x-api-key", &limited)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("RATE_LIMITED"))
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    // Revoked: 401 REVOKED at once (no cache by default).
    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "leaked"}),
    )
    .await
    .expect(200);
    let (status, body, _) = call(&any, &[("authorization", &bearer)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("REVOKED"))
    );

    // keyward unreachable: 503, closed.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let down = guarded(KeywardLayer::new(
        Client::builder(gone).retries(0).build().unwrap(),
    ));
    let (status, body, _) = call(&down, &[("x-api-key", &limited)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("UNAVAILABLE"))
    );
}
both!(the_layer_verifies_through_keyward_and_hands_the_key_to_handlers);

/// A pass-through to keyward's `/v1/verify` that waits `delay` and counts calls.
async fn counting_proxy(upstream: String, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let http = reqwest::Client::new();
    let app = Router::new().route(
        "/v1/verify",
        post(move |body: String| {
            let (h, http, upstream) = (h.clone(), http.clone(), upstream.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let r = http
                    .post(format!("{upstream}/v1/verify"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                (
                    status,
                    [("content-type", "application/json")],
                    r.text().await.unwrap(),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, hits)
}

async fn concurrent_checks_of_one_key_share_one_call_and_caching_is_opt_in(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, other) = app.key(&ks, json!({"owner": "acme"})).await;
    let (proxy, hits) = counting_proxy(app.url.clone(), Duration::from_millis(300)).await;
    let kw = Client::builder(proxy).build().unwrap();
    let svc = guarded(KeywardLayer::new(kw.clone()));

    // 40 requests at once with one key and 10 with another: one call per key.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let svc = svc.clone();
        let k = if i % 5 == 0 {
            other.clone()
        } else {
            key.clone()
        };
        tasks.push(tokio::spawn(async move {
            call(&svc, &[("x-api-key", &k)]).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A key with a rate limit: joiners of a VALID answer make their own call, so the limit
    // holds whatever the concurrency (5 of 10 pass).
    let (_, limited) = app
        .key(
            &ks,
            json!({"owner": "acme", "ratelimit": {"limit": 5, "window_secs": 3600}}),
        )
        .await;
    let before = hits.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (svc, k) = (svc.clone(), limited.clone());
        tasks.push(tokio::spawn(async move {
            call(&svc, &[("x-api-key", &k)]).await.0
        }));
    }
    let mut passed = 0;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 200 || status == 429, "{status}");
        passed += usize::from(status == 200);
    }
    assert_eq!(passed, 5);
    assert_eq!(hits.load(Ordering::SeqCst) - before, 10);
    let before = hits.load(Ordering::SeqCst);

    // Without a cache, the next request asks again.
    assert_eq!(call(&svc, &[("x-api-key", &key)]).await.0, 200);
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);

    // With a bounded staleness, a VALID answer is reused until it is that old, even past a
    // revocation (the documented cost of opting in).
    let cached =
        guarded(KeywardLayer::new(kw).cache_valid_answers(Duration::from_millis(400), 100));
    assert_eq!(call(&cached, &[("x-api-key", &key)]).await.0, 200);
    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "leaked"}),
    )
    .await
    .expect(200);
    assert_eq!(call(&cached, &[("x-api-key", &key)]).await.0, 200);
    assert_eq!(hits.load(Ordering::SeqCst), before + 2);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(call(&cached, &[("x-api-key", &key)]).await.0, 401);
    assert_eq!(hits.load(Ordering::SeqCst), before + 3);
}
both!(concurrent_checks_of_one_key_share_one_call_and_caching_is_opt_in);

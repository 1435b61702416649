//! Route rules: a keyspace's `routes` and `unmatched` decide, from the original request's
//! method and path, which scopes forward-auth requires, through every proxy convention; they
//! are validated with the rule and position named, replaced as a whole by PATCH, audited, and
//! honoured by every node after a change.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{spawn_node, Res, TestApp};

/// A forward-auth request: `suffix` after `/v1/forward-auth` (Envoy's path mode when it starts
/// with `/`), the key as a bearer token, and these extra headers.
async fn fa(
    app: &TestApp,
    method: Method,
    suffix: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> Res {
    let bearer = format!("Bearer {key}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    crate::verify::fa_body(app, method, suffix, &all, None).await
}

#[track_caller]
fn denied(r: &Res, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), code, "{}", r.body);
    assert_eq!(r.headers["x-keyward-code"], code);
}

fn orders_rules() -> Value {
    json!([
        {"method": "GET", "path": "/orders/**", "scopes": ["orders:read"]},
        {"method": "POST", "path": "/orders", "scopes": ["orders:write"]},
        {"path": "/orders/*/items/*", "scopes": ["items:any"]},
        {"path": "/health"},
    ])
}

async fn a_keyspace_with_rules(app: &TestApp, unmatched: &str) -> String {
    let prefix = format!(
        "r{}",
        keyward_core::keyformat::base62_random(8).to_lowercase()
    );
    let r = app
        .post(
            "/v1/keyspaces",
            json!({"name": "routes", "prefix": prefix, "routes": orders_rules(), "unmatched": unmatched}),
        )
        .await
        .expect(201);
    assert_eq!(
        r.body["routes"],
        orders_rules()
            .as_array()
            .map(|rules| {
                // Rules come back as sent, with `scopes` filled in.
                let mut v = rules.clone();
                v[3]["scopes"] = json!([]);
                Value::Array(v)
            })
            .unwrap()
    );
    assert_eq!(r.body["unmatched"], unmatched);
    r.id()
}

async fn rules_add_the_scopes_of_the_first_matching_rule(app: TestApp) {
    let ks = a_keyspace_with_rules(&app, "deny").await;
    let (id, key) = app.key(&ks, json!({"scopes": ["orders:read"]})).await;

    // Envoy's path mode: the original path follows /v1/forward-auth.
    let ok = fa(&app, Method::GET, "/orders/1", &key, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["x-keyward-key-id"], id.as_str());
    assert_eq!(
        fa(&app, Method::GET, "/orders", &key, &[]).await.status,
        200
    );
    denied(
        &fa(&app, Method::POST, "/orders", &key, &[]).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    // Traefik and Caddy: X-Forwarded-Method and X-Forwarded-Uri.
    let traefik = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/orders/7?page=2"),
    ];
    assert_eq!(fa(&app, Method::GET, "", &key, &traefik).await.status, 200);
    let write = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/orders"),
    ];
    denied(
        &fa(&app, Method::GET, "", &key, &write).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    // nginx: X-Original-Method and X-Original-URI; no rule for DELETE /orders/7.
    let nginx = [
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/orders/7"),
    ];
    denied(
        &fa(&app, Method::GET, "", &key, &nginx).await,
        403,
        "ROUTE_NOT_ALLOWED",
    );
    // A rule without a method matches every method; one without scopes requires none.
    let items = [
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/orders/7/items/3"),
    ];
    denied(
        &fa(&app, Method::GET, "", &key, &items).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    assert_eq!(
        fa(&app, Method::PUT, "/health", &key, &[]).await.status,
        200
    );
    // No original URI at all: no rule matches, `unmatched` decides.
    denied(
        &fa(&app, Method::GET, "", &key, &[]).await,
        403,
        "ROUTE_NOT_ALLOWED",
    );
    // A path that cannot be normalized is refused; one that can is matched normalized.
    for dodge in ["//orders/1", "/orders/./1", "/%6Frders/1"] {
        let h = [("x-forwarded-method", "GET"), ("x-forwarded-uri", dodge)];
        assert_eq!(
            fa(&app, Method::GET, "", &key, &h).await.status,
            200,
            "{dodge}"
        );
    }
    for bad in [
        "/../orders/1",
        "/x/../orders/1",
        "/orders;v=1/1",
        "/orders%2F1",
    ] {
        let h = [("x-forwarded-method", "GET"), ("x-forwarded-uri", bad)];
        denied(
            &fa(&app, Method::GET, "", &key, &h).await,
            403,
            "ROUTE_NOT_ALLOWED",
        );
    }
    // `?scope=` still adds its own scopes.
    denied(
        &fa(&app, Method::GET, "/orders/1?scope=billing:read", &key, &[]).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    // A key that is not usable says so first, whatever the path.
    app.post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "test"}))
        .await
        .expect(200);
    denied(
        &fa(&app, Method::DELETE, "/nowhere", &key, &[]).await,
        401,
        "REVOKED",
    );

    // Rules are for forward-auth: /v1/verify decides by the key alone.
    let (_, other) = app.key(&ks, json!({"scopes": []})).await;
    assert_eq!(app.verify_code(&other).await, "VALID");
    denied(
        &fa(&app, Method::GET, "/orders/1", &other, &[]).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    // Denials by route count as denied verifications.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines().any(|l| l
            .starts_with("keyward_verifications_total{code=\"ROUTE_NOT_ALLOWED\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );
}
both!(rules_add_the_scopes_of_the_first_matching_rule);

async fn under_allow_unmatched_requests_are_decided_by_the_key(app: TestApp) {
    let ks = a_keyspace_with_rules(&app, "allow").await;
    let (_, key) = app.key(&ks, json!({"scopes": []})).await;
    assert_eq!(
        fa(&app, Method::GET, "/anything/else", &key, &[])
            .await
            .status,
        200
    );
    assert_eq!(fa(&app, Method::GET, "", &key, &[]).await.status, 200);
    denied(
        &fa(&app, Method::GET, "/orders/1", &key, &[]).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    // Without rules (a keyspace created as before), nothing changes.
    let plain = app.keyspace(json!({})).await;
    let r = app.get(&format!("/v1/keyspaces/{plain}")).await.expect(200);
    assert_eq!(r.body["routes"], json!([]));
    assert_eq!(r.body["unmatched"], "allow");
    let (_, k) = app.key(&plain, json!({})).await;
    assert_eq!(
        fa(&app, Method::GET, "/orders/1", &k, &[]).await.status,
        200
    );
}
both!(under_allow_unmatched_requests_are_decided_by_the_key);

async fn bad_rules_are_refused_naming_the_rule_and_patch_replaces_them(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let path = format!("/v1/keyspaces/{ks}");
    let cases = [
        (
            json!([{"path": "/ok"}, {"path": "/a/**/b"}]),
            "routes[1].path: '**' may only be the last segment (at character 4)",
        ),
        (
            json!([{"path": "orders"}]),
            "routes[0].path: a pattern starts with '/'",
        ),
        (
            json!([{"path": "/a*"}]),
            "routes[0].path: '*' must be a whole segment (at character 3)",
        ),
        (json!([{"method": "get", "path": "/a"}]), "routes[0].method"),
        (
            json!([{"path": "/a", "scopes": ["a:*"]}]),
            "routes[0].scopes[0]",
        ),
        (json!([{"path": "/a", "extra": 1}]), "extra"),
        (json!([{"method": "GET"}]), "path"),
        (json!(null), "routes"),
    ];
    for (routes, want) in cases {
        let r = app
            .patch(&path, json!({"routes": routes}))
            .await
            .expect(400);
        assert_eq!(r.code(), "BAD_REQUEST");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{routes}: {msg}");
    }
    let r = app
        .patch(&path, json!({"unmatched": "maybe"}))
        .await
        .expect(400);
    assert_eq!(r.code(), "BAD_REQUEST");
    // A refused create creates nothing.
    let r = app
        .post(
            "/v1/keyspaces",
            json!({"name": "x", "prefix": "routebad", "routes": [{"path": "x"}]}),
        )
        .await
        .expect(400);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("routes[0].path"));
    assert!(app.get("/v1/keyspaces?limit=500").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["prefix"] != "routebad"));

    // PATCH replaces the list as a whole, and each change is audited.
    let (_, key) = app.key(&ks, json!({"scopes": ["a:read"]})).await;
    // A key pasted into a rule is refused, not stored, and not echoed.
    for routes in [
        json!([{"path": format!("/x/{key}")}]),
        json!([{"path": "/x", "scopes": [key]}]),
    ] {
        let r = app
            .patch(&path, json!({"routes": routes}))
            .await
            .expect(400);
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("looks like an API key"), "{msg}");
        assert!(!r.body.to_string().contains(&key), "{msg}");
    }
    assert_eq!(app.get(&path).await.body["routes"], json!([]));
    assert_eq!(fa(&app, Method::GET, "/b", &key, &[]).await.status, 200);
    let first =
        json!([{"path": "/a/**", "scopes": ["a:read"]}, {"path": "/b", "scopes": ["b:read"]}]);
    let r = app
        .patch(&path, json!({"routes": first, "unmatched": "deny"}))
        .await
        .expect(200);
    assert_eq!(r.body["unmatched"], "deny");
    // Applied on this node at once.
    denied(
        &fa(&app, Method::GET, "/b", &key, &[]).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    denied(
        &fa(&app, Method::GET, "/c", &key, &[]).await,
        403,
        "ROUTE_NOT_ALLOWED",
    );
    let second = json!([{"path": "/c"}]);
    let r = app
        .patch(&path, json!({"routes": second}))
        .await
        .expect(200);
    assert_eq!(r.body["routes"], json!([{"path": "/c", "scopes": []}]));
    assert_eq!(
        r.body["unmatched"], "deny",
        "a field PATCH leaves out stays"
    );
    assert_eq!(fa(&app, Method::GET, "/c", &key, &[]).await.status, 200);
    denied(
        &fa(&app, Method::GET, "/a/1", &key, &[]).await,
        403,
        "ROUTE_NOT_ALLOWED",
    );
    let r = app
        .patch(&path, json!({"routes": [], "unmatched": "allow"}))
        .await
        .expect(200);
    assert_eq!(r.body["routes"], json!([]));
    assert_eq!(fa(&app, Method::GET, "/a/1", &key, &[]).await.status, 200);

    let events = app.audit_actions("keyspace.update").await;
    let routes: Vec<&Value> = events
        .iter()
        .filter(|e| e["target_id"] == ks.as_str())
        .filter_map(|e| e["changes"].get("routes"))
        .collect();
    assert_eq!(routes.len(), 3, "{events:?}");
    assert_eq!(
        routes[0],
        &json!([[], [{"path": "/a/**", "scopes": ["a:read"]}, {"path": "/b", "scopes": ["b:read"]}]])
    );
    assert_eq!(routes[2][1], json!([]));
    // A PATCH that changes nothing is no event.
    app.patch(&path, json!({"routes": []})).await.expect(200);
    assert_eq!(
        app.audit_actions("keyspace.update").await.len(),
        events.len()
    );
}
both!(bad_rules_are_refused_naming_the_rule_and_patch_replaces_them);

async fn a_rule_change_on_one_node_reaches_the_others(a: TestApp) {
    let b = spawn_node(&a).await;
    let ks = a.keyspace(json!({})).await;
    let (_, key) = a.key(&ks, json!({"scopes": ["orders:read"]})).await;
    // Node B has the keyspace's (empty) rules loaded.
    assert_eq!(
        fa(&b, Method::DELETE, "/orders/1", &key, &[]).await.status,
        200
    );
    a.patch(
        &format!("/v1/keyspaces/{ks}"),
        json!({"routes": [{"method": "GET", "path": "/orders/**", "scopes": ["orders:read"]}], "unmatched": "deny"}),
    )
    .await
    .expect(200);
    let started = Instant::now();
    loop {
        let r = fa(&b, Method::DELETE, "/orders/1", &key, &[]).await;
        if r.status == 403 {
            assert_eq!(r.code(), "ROUTE_NOT_ALLOWED");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B never saw the rules"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fa(&b, Method::GET, "/orders/1", &key, &[]).await.status,
        200
    );
}
both!(a_rule_change_on_one_node_reaches_the_others);

//! The data plane: `POST /v1/verify` (every code, in order, and what each consumes),
//! `ANY /v1/forward-auth`, and verification that requires a management token.

use keyward_core::time::{Clock, Timestamp};
use keyward_server::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, Options, Res, TestApp};

/// `KEYWARD_VERIFY_REQUIRES_TOKEN=true`.
fn token_required() -> Options {
    Options {
        config: Config {
            verify_requires_token: true,
            ..Options::default().config
        },
        ..Options::default()
    }
}

/// `KEYWARD_TRUST_PROXY_HEADERS=true`.
fn trust_proxy() -> Options {
    Options {
        config: Config {
            trust_proxy_headers: true,
            ..Options::default().config
        },
        ..Options::default()
    }
}

fn now(app: &TestApp) -> i64 {
    app.clock.as_ref().expect("manual clock").now().millis()
}

#[track_caller]
fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    assert!(s.ends_with('Z'), "UTC with Z: {s}");
    Timestamp::parse_rfc3339(s).unwrap().millis()
}

async fn prefix_of(app: &TestApp, ks: &str) -> String {
    app.get(&format!("/v1/keyspaces/{ks}"))
        .await
        .expect(200)
        .body["prefix"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn get_key(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/keys/{id}")).await.expect(200).body
}

/// Asserts a denial: `valid: false`, the code, and `key_id`/`keyspace_id` exactly when the
/// key was identified.
#[track_caller]
fn denied(v: &Value, code: &str, identified: Option<(&str, &str)>) {
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    match identified {
        Some((key_id, ks)) => {
            assert_eq!(v["key_id"], key_id, "{v}");
            assert_eq!(v["keyspace_id"], ks, "{v}");
        }
        None => {
            assert!(v.get("key_id").is_none_or(Value::is_null), "no key_id: {v}");
            assert!(
                v.get("keyspace_id").is_none_or(Value::is_null),
                "no keyspace_id: {v}"
            );
        }
    }
}

/// A `/v1/verify` that must be a 400 with the error envelope.
async fn bad_verify(app: &TestApp, body: Value) {
    let res = app
        .send(Method::POST, "/v1/verify", None, Some(body.clone()))
        .await;
    assert_eq!(res.status, 400, "{body} -> {}", res.body);
    assert_eq!(res.code(), "BAD_REQUEST", "{body} -> {}", res.body);
    assert_eq!(
        res.body["error"]["request_id"].as_str().unwrap(),
        res.headers["x-request-id"].to_str().unwrap()
    );
}

/// A forward-auth request with these headers.
async fn fa(app: &TestApp, method: Method, query: &str, headers: &[(&str, &str)]) -> Res {
    fa_body(app, method, query, headers, None).await
}

pub(crate) async fn fa_body(
    app: &TestApp,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Res {
    let mut r = app
        .http
        .request(method, format!("{}/v1/forward-auth{query}", app.url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Res {
        status,
        body,
        headers,
    }
}

/// Asserts a forward-auth error: status, the error envelope with this code, no Retry-After
/// unless `RATE_LIMITED`.
#[track_caller]
fn fa_error(res: &Res, status: u16, code: &str) {
    assert_eq!(res.status, status, "{}", res.body);
    assert_eq!(res.code(), code, "{}", res.body);
    assert!(res.body["error"]["message"].is_string(), "{}", res.body);
    assert_eq!(
        res.body["error"]["request_id"].as_str().unwrap(),
        res.headers["x-request-id"].to_str().unwrap()
    );
    if code != "RATE_LIMITED" {
        assert!(
            res.headers.get("retry-after").is_none(),
            "Retry-After comes with RATE_LIMITED only"
        );
    }
    assert!(res.headers.get("x-keyward-owner").is_none());
    assert!(res.headers.get("x-keyward-scopes").is_none());
    // A verification's denial names its code in a header too (nginx drops the body).
    if let Some(h) = res.headers.get("x-keyward-code") {
        assert_eq!(h, code);
    }
    let decided = [
        "NOT_FOUND",
        "REVOKED",
        "EXPIRED",
        "DISABLED",
        "INSUFFICIENT_SCOPE",
        "IP_NOT_ALLOWED",
        "USAGE_EXCEEDED",
    ];
    if decided.contains(&code) {
        assert_eq!(res.headers["x-keyward-code"], code);
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

// ---------------------------------------------------------------- NOT_FOUND

async fn anything_that_is_not_a_stored_key_is_not_found(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let prefix = prefix_of(&app, &ks).await;
    let (id, key) = app.key(&ks, json!({})).await;
    let mut changed = key.clone().into_bytes();
    let last = changed.len() - 1;
    changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
    let changed = String::from_utf8(changed).unwrap();
    let candidates = vec![
        keyward_core::keyformat::generate(&prefix)
            .expose()
            .to_string(),
        keyward_core::keyformat::generate("nosuchprefix")
            .expose()
            .to_string(),
        format!(" {key}"),
        format!("{key} "),
        format!("{key}\n"),
        format!("\t{key}"),
        changed,
        key.to_uppercase(),
        key[..key.len() - 1].to_string(),
        format!("{key}0"),
        key.replacen('_', "-", 1),
        format!("Bearer {key}"),
        "abc".to_string(),
        format!("{prefix}_"),
        "_".to_string(),
        "x".repeat(5000),
        "ключ_абв".to_string(),
        app.admin.clone(),
    ];
    for c in &candidates {
        let v = app.verify(json!({"key": c})).await;
        denied(&v, "NOT_FOUND", None);
    }
    // The real key is fine, and none of the near misses counted against it.
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["denied_count"], 0);
    assert_eq!(k["call_count"], 1);
}
both!(anything_that_is_not_a_stored_key_is_not_found);

async fn a_management_token_never_verifies_as_an_api_key(app: TestApp) {
    let verifier = app.token("verifier", None).await;
    for t in [&app.admin, &verifier] {
        denied(&app.verify(json!({"key": t})).await, "NOT_FOUND", None);
        let res = fa(&app, Method::GET, "", &[("authorization", &bearer(t))]).await;
        fa_error(&res, 401, "NOT_FOUND");
    }
}
both!(a_management_token_never_verifies_as_an_api_key);

// ---------------------------------------------------------------- the order of the checks

async fn codes_are_checked_in_the_documented_order(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"enabled": false, "ttl_secs": 10, "allowed_cidrs": ["10.0.0.0/8"], "scopes": ["a:read"],
                   "remaining": 0, "ratelimit": {"limit": 1, "window_secs": 60}}),
        )
        .await;
    let who = Some((id.as_str(), ks.as_str()));
    let mut req = json!({"key": key, "ip": "192.0.2.1", "scopes": ["b:read"], "cost": 1});
    app.advance(11);
    // Expired, disabled, wrong address, wrong scope, no quota: EXPIRED.
    denied(&app.verify(req.clone()).await, "EXPIRED", who);
    let until = Timestamp::from_millis(now(&app) + 1_000_000).to_rfc3339();
    app.patch(&format!("/v1/keys/{id}"), json!({"expires_at": until}))
        .await
        .expect(200);
    denied(&app.verify(req.clone()).await, "DISABLED", who);
    app.patch(&format!("/v1/keys/{id}"), json!({"enabled": true}))
        .await
        .expect(200);
    denied(&app.verify(req.clone()).await, "IP_NOT_ALLOWED", who);
    req["ip"] = json!("10.1.2.3");
    denied(&app.verify(req.clone()).await, "INSUFFICIENT_SCOPE", who);
    req["scopes"] = json!(["a:read"]);
    denied(&app.verify(req.clone()).await, "USAGE_EXCEEDED", who);
    // Cost 0 with remaining 0 is valid, and takes the window's only slot.
    req["cost"] = json!(0);
    let v = app.verify(req.clone()).await;
    assert_eq!(v["code"], "VALID", "{v}");
    assert_eq!(v["remaining"], 0);
    assert_eq!(v["ratelimit"]["remaining"], 0);
    // Now the rate limit answers first, whatever the cost.
    denied(&app.verify(req.clone()).await, "RATE_LIMITED", who);
    req["cost"] = json!(1);
    denied(&app.verify(req.clone()).await, "RATE_LIMITED", who);
    app.advance(60);
    denied(&app.verify(req.clone()).await, "USAGE_EXCEEDED", who);
    // Revoked outranks everything, expiry included.
    app.post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "done"}))
        .await
        .expect(200);
    app.advance(2_000);
    req["ip"] = json!("192.0.2.1");
    req["scopes"] = json!(["b:read"]);
    denied(&app.verify(req.clone()).await, "REVOKED", who);
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["call_count"], 1);
    assert_eq!(k["denied_count"], 9);
    assert_eq!(k["remaining"], 0);
}
both!(codes_are_checked_in_the_documented_order, manual);

async fn a_disabled_expired_key_is_expired_and_a_disabled_one_is_disabled(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (a, ka) = app.key(&ks, json!({"enabled": false, "ttl_secs": 5})).await;
    let (b, kb) = app.key(&ks, json!({"enabled": false})).await;
    denied(
        &app.verify(json!({"key": ka})).await,
        "DISABLED",
        Some((&a, &ks)),
    );
    app.advance(5);
    denied(
        &app.verify(json!({"key": ka})).await,
        "EXPIRED",
        Some((&a, &ks)),
    );
    denied(
        &app.verify(json!({"key": kb})).await,
        "DISABLED",
        Some((&b, &ks)),
    );
}
both!(
    a_disabled_expired_key_is_expired_and_a_disabled_one_is_disabled,
    manual
);

// ---------------------------------------------------------------- IP_NOT_ALLOWED

async fn allowed_cidrs_restrict_the_source_address(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"allowed_cidrs": ["203.0.113.0/24", "2001:db8::/32", "192.0.2.5"]}),
        )
        .await;
    let who = Some((id.as_str(), ks.as_str()));
    denied(
        &app.verify(json!({"key": key})).await,
        "IP_NOT_ALLOWED",
        who,
    );
    for ip in [
        "203.0.113.7",
        "203.0.113.0",
        "203.0.113.255",
        "::ffff:203.0.113.7",
        "::FFFF:203.0.113.9",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "192.0.2.5",
        "::ffff:192.0.2.5",
    ] {
        let v = app.verify(json!({"key": key, "ip": ip})).await;
        assert_eq!(v["code"], "VALID", "{ip}: {v}");
    }
    for ip in [
        "203.0.114.1",
        "198.51.100.1",
        "::ffff:198.51.100.1",
        "2001:db9::1",
        "192.0.2.6",
        "::1",
        "127.0.0.1",
    ] {
        let v = app.verify(json!({"key": key, "ip": ip})).await;
        denied(&v, "IP_NOT_ALLOWED", who);
    }
    // An address that does not parse is a 400, not a denial.
    for ip in [
        "not-an-ip",
        "203.0.113.7/24",
        "",
        "203.0.113.256",
        "203.0.113.7:80",
        " 203.0.113.7",
        "[2001:db8::1]",
    ] {
        bad_verify(&app, json!({"key": key, "ip": ip})).await;
    }
    bad_verify(&app, json!({"key": key, "ip": 203})).await;
    // A key without allowed_cidrs takes any address, or none.
    let (_, open) = app.key(&ks, json!({})).await;
    assert_eq!(
        app.verify(json!({"key": open, "ip": "198.51.100.1"})).await["code"],
        "VALID"
    );
    assert_eq!(app.verify_code(&open).await, "VALID");
    // Mapped addresses in the list count as IPv4 as well.
    let (_, mapped) = app
        .key(&ks, json!({"allowed_cidrs": ["198.51.100.0/24"]}))
        .await;
    assert_eq!(
        app.verify(json!({"key": mapped, "ip": "::ffff:198.51.100.20"}))
            .await["code"],
        "VALID"
    );
}
both!(allowed_cidrs_restrict_the_source_address);

// ---------------------------------------------------------------- INSUFFICIENT_SCOPE

async fn scopes_are_granted_as_the_contract_says(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(&ks, json!({"scopes": ["orders:*", "billing:read"]}))
        .await;
    let who = Some((id.as_str(), ks.as_str()));
    for ok in [
        json!([]),
        json!(["orders:read"]),
        json!(["orders:read:deep"]),
        json!(["orders:write", "orders:read"]),
        json!(["billing:read"]),
        json!(["orders:read", "billing:read"]),
    ] {
        let v = app.verify(json!({"key": key, "scopes": ok})).await;
        assert_eq!(v["code"], "VALID", "{ok}: {v}");
    }
    for no in [
        json!(["orders"]),
        json!(["ordersx:read"]),
        json!(["Orders:read"]),
        json!(["ORDERS:READ"]),
        json!(["billing:write"]),
        json!(["billing:read:x"]),
        json!(["Billing:read"]),
        json!(["billing"]),
        json!(["orders:read", "billing:write"]),
        json!(["admin"]),
    ] {
        let v = app.verify(json!({"key": key, "scopes": no})).await;
        denied(&v, "INSUFFICIENT_SCOPE", who);
    }
    // `*` alone grants everything.
    let (_, all) = app.key(&ks, json!({"scopes": ["*"]})).await;
    for s in [json!(["anything"]), json!(["a:b:c", "x.y-z_1"])] {
        assert_eq!(
            app.verify(json!({"key": all, "scopes": s})).await["code"],
            "VALID"
        );
    }
    // A key without scopes grants none.
    let (_, none) = app.key(&ks, json!({})).await;
    assert_eq!(
        app.verify(json!({"key": none, "scopes": ["a"]})).await["code"],
        "INSUFFICIENT_SCOPE"
    );
    assert_eq!(app.verify_code(&none).await, "VALID");
    // Requested scopes are valid scopes without `*`.
    for bad in [
        json!(["orders:*"]),
        json!(["*"]),
        json!(["a b"]),
        json!([""]),
        json!(["a::b"]),
        json!(["orders:"]),
        json!("orders:read"),
        json!([1]),
    ] {
        bad_verify(&app, json!({"key": key, "scopes": bad})).await;
    }
}
both!(scopes_are_granted_as_the_contract_says);

// ---------------------------------------------------------------- RATE_LIMITED

async fn rate_limits_use_fixed_windows_aligned_to_the_epoch(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"ratelimit": {"limit": 3, "window_secs": 60}, "remaining": 10}),
        )
        .await;
    let t0 = now(&app);
    assert_eq!(t0 % 60_000, 0, "the test clock starts on a minute");
    app.advance(10);
    let mut left = 10;
    for (i, cost) in [1, 1, 5].into_iter().enumerate() {
        let v = app.verify(json!({"key": key, "cost": cost})).await;
        left -= cost;
        assert_eq!(v["code"], "VALID", "{v}");
        assert_eq!(v["ratelimit"]["limit"], 3);
        assert_eq!(
            v["ratelimit"]["remaining"],
            2 - i as i64,
            "cost does not change the count"
        );
        assert_eq!(
            ms(&v["ratelimit"]["reset_at"]),
            t0 + 60_000,
            "end of the window"
        );
        assert_eq!(v["remaining"], left);
    }
    let who = Some((id.as_str(), ks.as_str()));
    denied(&app.verify(json!({"key": key})).await, "RATE_LIMITED", who);
    app.advance(49);
    denied(
        &app.verify(json!({"key": key, "cost": 0})).await,
        "RATE_LIMITED",
        who,
    );
    app.advance(1);
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["code"], "VALID", "a new window starts at t0 + 60 s");
    assert_eq!(v["ratelimit"]["remaining"], 2);
    assert_eq!(ms(&v["ratelimit"]["reset_at"]), t0 + 120_000);
    assert_eq!(v["remaining"], 2, "rate-limited answers took no quota");
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["call_count"], 4);
    assert_eq!(k["denied_count"], 2);
    assert_eq!(k["remaining"], 2);

    // Windows are aligned to multiples of window_secs since the epoch, not to the first use.
    let (_, odd) = app
        .key(&ks, json!({"ratelimit": {"limit": 1, "window_secs": 7}}))
        .await;
    let t = now(&app);
    let end = (t / 7_000 + 1) * 7_000;
    let v = app.verify(json!({"key": odd})).await;
    assert_eq!(ms(&v["ratelimit"]["reset_at"]), end);
    assert_eq!(app.verify_code(&odd).await, "RATE_LIMITED");
    app.clock.as_ref().unwrap().advance_millis(end - t - 1);
    assert_eq!(app.verify_code(&odd).await, "RATE_LIMITED");
    app.clock.as_ref().unwrap().advance_millis(1);
    assert_eq!(app.verify_code(&odd).await, "VALID");
}
both!(rate_limits_use_fixed_windows_aligned_to_the_epoch, manual);

// ---------------------------------------------------------------- USAGE_EXCEEDED

async fn remaining_is_spent_by_cost_and_only_on_valid_answers(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"remaining": 3, "scopes": ["a"]})).await;
    let who = Some((id.as_str(), ks.as_str()));
    // Denials for other reasons take nothing.
    for _ in 0..3 {
        denied(
            &app.verify(json!({"key": key, "scopes": ["b"], "cost": 1}))
                .await,
            "INSUFFICIENT_SCOPE",
            who,
        );
    }
    let v = app.verify(json!({"key": key, "cost": 2})).await;
    assert_eq!(
        (v["code"].as_str(), v["remaining"].as_i64()),
        (Some("VALID"), Some(1))
    );
    denied(
        &app.verify(json!({"key": key, "cost": 2})).await,
        "USAGE_EXCEEDED",
        who,
    );
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        (v["code"].as_str(), v["remaining"].as_i64()),
        (Some("VALID"), Some(0)),
        "the default cost is 1"
    );
    let v = app.verify(json!({"key": key, "cost": 0})).await;
    assert_eq!(
        (v["code"].as_str(), v["remaining"].as_i64()),
        (Some("VALID"), Some(0)),
        "cost 0 with remaining 0"
    );
    denied(
        &app.verify(json!({"key": key})).await,
        "USAGE_EXCEEDED",
        who,
    );
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["remaining"], 0);
    assert_eq!(k["call_count"], 3);
    assert_eq!(k["denied_count"], 5);
    // A new quota from PATCH is seen at once.
    app.patch(&format!("/v1/keys/{id}"), json!({"remaining": 1}))
        .await
        .expect(200);
    assert_eq!(app.verify(json!({"key": key})).await["remaining"], 0);
    assert_eq!(app.verify_code(&key).await, "USAGE_EXCEEDED");
    // Invalid costs are 400s.
    for cost in [json!(-1), json!(1.5), json!("1")] {
        bad_verify(&app, json!({"key": key, "cost": cost})).await;
    }
    // remaining: null means unlimited.
    let (_, free) = app.key(&ks, json!({})).await;
    let v = app.verify(json!({"key": free, "cost": 1_000_000})).await;
    assert_eq!(v["code"], "VALID");
    assert!(v["remaining"].is_null());
}
both!(remaining_is_spent_by_cost_and_only_on_valid_answers);

async fn a_denial_takes_no_rate_limit_slot(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app
        .key(
            &ks,
            json!({"ratelimit": {"limit": 2, "window_secs": 60}, "remaining": 1, "scopes": ["a"]}),
        )
        .await;
    for _ in 0..5 {
        assert_eq!(
            app.verify(json!({"key": key, "scopes": ["b"]})).await["code"],
            "INSUFFICIENT_SCOPE"
        );
    }
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["ratelimit"]["remaining"], 1);
    for _ in 0..5 {
        assert_eq!(app.verify_code(&key).await, "USAGE_EXCEEDED");
    }
    let v = app.verify(json!({"key": key, "cost": 0})).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["ratelimit"]["remaining"], 0);
    assert_eq!(app.verify_code(&key).await, "RATE_LIMITED");
}
both!(a_denial_takes_no_rate_limit_slot, manual);

// ---------------------------------------------------------------- answers

async fn a_valid_answer_describes_the_key(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "billing prod", "owner": "team-billing", "scopes": ["orders:read"],
                   "labels": {"env": "prod"}, "meta": {"plan": "pro", "n": 1}, "ttl_secs": 86400,
                   "ratelimit": {"limit": 100, "window_secs": 60}, "remaining": 10000}),
        )
        .await
        .expect(201);
    let key = res.body["key"].as_str().unwrap();
    let v = app
        .verify(json!({"key": key, "scopes": ["orders:read"], "ip": "203.0.113.7", "cost": 1}))
        .await;
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    let mut want = vec![
        "valid",
        "code",
        "key_id",
        "keyspace_id",
        "name",
        "owner",
        "scopes",
        "labels",
        "meta",
        "expires_at",
        "remaining",
        "ratelimit",
    ];
    want.sort_unstable();
    assert_eq!(fields, want, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["key_id"], res.body["id"]);
    assert_eq!(v["keyspace_id"], ks.as_str());
    assert_eq!(v["name"], "billing prod");
    assert_eq!(v["owner"], "team-billing");
    assert_eq!(v["scopes"], json!(["orders:read"]));
    assert_eq!(v["labels"], json!({"env": "prod"}));
    assert_eq!(v["meta"], json!({"plan": "pro", "n": 1}));
    assert_eq!(v["expires_at"], res.body["expires_at"]);
    assert_eq!(v["remaining"], 9999);
    assert_eq!(v["ratelimit"]["limit"], 100);
    assert_eq!(v["ratelimit"]["remaining"], 99);
    let reset = ms(&v["ratelimit"]["reset_at"]);
    assert_eq!(reset % 60_000, 0, "a window end is a multiple of 60 s");
    assert!(
        !v.to_string().contains(key),
        "the answer does not echo the key"
    );

    // Without limits: ratelimit and remaining are null; owner may be null.
    let free = app.keyspace(json!({"require_owner": false})).await;
    let r = app
        .post("/v1/keys", json!({"keyspace_id": free, "name": "bare"}))
        .await
        .expect(201);
    let v = app
        .verify(json!({"key": r.body["key"].as_str().unwrap()}))
        .await;
    assert_eq!(v["code"], "VALID");
    assert!(v["ratelimit"].is_null() && v["remaining"].is_null() && v["owner"].is_null());
    assert_eq!(v["scopes"], json!([]));
    assert_eq!(v["labels"], json!({}));
    assert_eq!(v["meta"], json!({}));
}
both!(a_valid_answer_describes_the_key);

async fn malformed_verify_requests_are_400(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    for body in [
        json!({"key": ""}),
        json!({}),
        json!({"key": null}),
        json!({"key": 42}),
        json!({"key": [key]}),
        json!({"scopes": ["a"]}),
        json!({"key": key, "ip": "nope"}),
        json!({"key": key, "scopes": ["orders:*"]}),
        json!({"key": key, "scopes": ["*"]}),
        json!({"key": key, "extra": true}),
        json!([key]),
        json!(key),
    ] {
        bad_verify(&app, body).await;
    }
    // Nothing above was a verification.
    assert_eq!(app.verify_code(&key).await, "VALID");
}
both!(malformed_verify_requests_are_400);

async fn control_plane_changes_are_seen_by_the_very_next_verification(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"scopes": ["orders:read"]})).await;
    let path = format!("/v1/keys/{id}");
    let scoped = json!({"key": key, "scopes": ["orders:read"]});
    assert_eq!(app.verify(scoped.clone()).await["code"], "VALID");
    app.patch(&path, json!({"enabled": false}))
        .await
        .expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "DISABLED");
    app.patch(&path, json!({"enabled": true})).await.expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "VALID");
    app.patch(&path, json!({"scopes": ["billing:read"]}))
        .await
        .expect(200);
    assert_eq!(
        app.verify(scoped.clone()).await["code"],
        "INSUFFICIENT_SCOPE"
    );
    app.patch(&path, json!({"scopes": ["orders:*"]}))
        .await
        .expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "VALID");
    app.patch(&path, json!({"allowed_cidrs": ["10.0.0.0/8"]}))
        .await
        .expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "IP_NOT_ALLOWED");
    app.patch(&path, json!({"allowed_cidrs": null}))
        .await
        .expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "VALID");
    app.patch(&path, json!({"remaining": 0})).await.expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "USAGE_EXCEEDED");
    app.patch(&path, json!({"remaining": null}))
        .await
        .expect(200);
    app.patch(
        &path,
        json!({"ratelimit": {"limit": 1, "window_secs": 3600}}),
    )
    .await
    .expect(200);
    let v = app.verify(scoped.clone()).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["ratelimit"]["limit"], 1);
    app.patch(&path, json!({"name": "renamed", "meta": {"v": 2}}))
        .await
        .expect(200);
    let v = app.verify(json!({"key": key, "cost": 0})).await;
    assert_eq!(
        v["code"], "RATE_LIMITED",
        "the window survives a reload: {v}"
    );
    app.patch(&path, json!({"ratelimit": null}))
        .await
        .expect(200);
    let v = app.verify(scoped.clone()).await;
    assert_eq!(
        (v["name"].as_str(), &v["meta"]),
        (Some("renamed"), &json!({"v": 2}))
    );
    app.post(&format!("{path}/revoke"), json!({"reason": "leaked"}))
        .await
        .expect(200);
    assert_eq!(app.verify(scoped.clone()).await["code"], "REVOKED");
    let res = fa(&app, Method::GET, "", &[("authorization", &bearer(&key))]).await;
    fa_error(&res, 401, "REVOKED");
}
both!(
    control_plane_changes_are_seen_by_the_very_next_verification,
    manual
);

async fn usage_counts_appear_after_a_flush(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"scopes": ["a"]})).await;
    let k = get_key(&app, &id).await;
    assert_eq!(
        (k["call_count"].as_i64(), k["denied_count"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(k["last_used_at"].is_null());
    let t0 = now(&app);
    app.advance(5);
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.advance(2);
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.advance(2);
    assert_eq!(
        app.verify(json!({"key": key, "scopes": ["b"]})).await["code"],
        "INSUFFICIENT_SCOPE"
    );
    denied(
        &app.verify(json!({"key": format!("{key}x")})).await,
        "NOT_FOUND",
        None,
    );
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["call_count"], 2);
    assert_eq!(k["denied_count"], 1);
    assert_eq!(ms(&k["last_used_at"]), t0 + 7_000, "the last valid use");
    // Forward-auth counts exactly like /v1/verify.
    app.advance(1);
    let res = fa(&app, Method::GET, "", &[("x-api-key", &key)]).await;
    assert_eq!(res.status, 200);
    let res = fa(&app, Method::GET, "?scope=b", &[("x-api-key", &key)]).await;
    fa_error(&res, 403, "INSUFFICIENT_SCOPE");
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["call_count"], 3);
    assert_eq!(k["denied_count"], 2);
    assert_eq!(ms(&k["last_used_at"]), t0 + 10_000);
    // Listing shows the same counts.
    let list = app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200);
    assert_eq!(list.body["items"][0]["call_count"], 3);
}
both!(usage_counts_appear_after_a_flush, manual);

async fn counts_made_before_a_change_are_written_after_it(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(&ks, json!({"scopes": ["a"], "remaining": 100}))
        .await;
    let path = format!("/v1/keys/{id}");
    let t0 = now(&app);
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    denied(
        &app.verify(json!({"key": key, "scopes": ["b"]})).await,
        "INSUFFICIENT_SCOPE",
        Some((id.as_str(), ks.as_str())),
    );
    // Each change reloads the key's cache entry before anything was written.
    app.patch(&path, json!({"name": "one"})).await.expect(200);
    app.advance(61);
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.patch(&path, json!({"labels": {"x": "y"}}))
        .await
        .expect(200);
    let v = app.verify(json!({"key": key, "cost": 5})).await;
    assert_eq!(v["code"], "VALID");
    // (The answer's `remaining` is an estimate when a flush gives a lease back meanwhile; what
    // is stored after the flush is exact.)
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(
        (k["call_count"].as_i64(), k["denied_count"].as_i64()),
        (Some(5), Some(1))
    );
    assert_eq!(k["remaining"], 91);
    assert_eq!(ms(&k["last_used_at"]), t0 + 61_000);
    let usage = app
        .get(&format!("{path}/usage?granularity=minute"))
        .await
        .expect(200);
    let valid: Vec<i64> = usage.body["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x["valid"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(valid, [3, 2], "{}", usage.body);
}
both!(counts_made_before_a_change_are_written_after_it, manual);

async fn verifications_racing_with_changes_grant_a_quota_exactly(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"remaining": 300, "ratelimit": {"limit": 1000000, "window_secs": 3600}}),
        )
        .await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url, key) = (app.http.clone(), app.url.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let (mut valid, mut exceeded) = (0, 0);
            for _ in 0..60 {
                let r = crate::helpers::post_verify(&http, &url, &json!({"key": key})).await;
                match r["code"].as_str() {
                    Some("VALID") => valid += 1,
                    Some("USAGE_EXCEEDED") => exceeded += 1,
                    _ => panic!("{r}"),
                }
            }
            (valid, exceeded)
        }));
    }
    // Every change reloads the key's cache entry while the clients verify it.
    for i in 0..40 {
        app.patch(&format!("/v1/keys/{id}"), json!({"name": format!("n{i}")}))
            .await
            .expect(200);
    }
    let (mut valid, mut exceeded) = (0, 0);
    for c in clients {
        let (v, e) = c.await.unwrap();
        valid += v;
        exceeded += e;
    }
    assert_eq!((valid, exceeded), (300, 180), "the quota, exactly");
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(k["remaining"], 0);
    assert_eq!(k["call_count"], 300);
    assert_eq!(k["denied_count"], 180);
    let v = app.verify(json!({"key": key, "cost": 0})).await;
    assert_eq!(
        v["ratelimit"]["remaining"],
        1000000 - 301,
        "one window all along: {v}"
    );
}
both!(
    verifications_racing_with_changes_grant_a_quota_exactly,
    manual
);

// ---------------------------------------------------------------- forward-auth

async fn forward_auth_takes_the_key_from_bearer_or_x_api_key(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"scopes": ["orders:read", "billing:*"], "owner": "team-a"}),
        )
        .await;
    let b = bearer(&key);
    for (method, headers, body) in [
        (Method::GET, vec![("authorization", b.as_str())], None),
        (Method::GET, vec![("x-api-key", key.as_str())], None),
        (Method::POST, vec![("authorization", b.as_str())], None),
        (
            Method::POST,
            vec![
                ("x-api-key", key.as_str()),
                ("content-type", "application/json"),
            ],
            Some(r#"{"anything": "goes"}"#),
        ),
        (
            Method::POST,
            vec![
                ("authorization", b.as_str()),
                ("content-type", "text/plain"),
            ],
            Some("bodies are ignored, JSON or not"),
        ),
        (Method::PUT, vec![("authorization", b.as_str())], Some("{")),
        (Method::DELETE, vec![("x-api-key", key.as_str())], None),
    ] {
        let res = fa_body(&app, method.clone(), "", &headers, body).await;
        assert_eq!(res.status, 200, "{method} {headers:?}: {}", res.body);
        assert_eq!(res.headers["x-keyward-key-id"], id.as_str());
        assert_eq!(res.headers["x-keyward-keyspace-id"], ks.as_str());
        assert_eq!(res.headers["x-keyward-owner"], "team-a");
        assert_eq!(res.headers["x-keyward-scopes"], "orders:read,billing:*");
        assert!(res.headers.get("x-request-id").is_some());
    }
    // Scopes from repeated ?scope=, and other query parameters of the proxied request are fine.
    let h = [("authorization", b.as_str())];
    let res = fa(
        &app,
        Method::GET,
        "?scope=orders:read&scope=billing:refund&page=2",
        &h,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    app.flush().await;
    assert_eq!(get_key(&app, &id).await["call_count"], 8);
}
both!(forward_auth_takes_the_key_from_bearer_or_x_api_key);

/// Envoy's HTTP ext_authz (and Istio) send the check to the configured path plus the original
/// request's path and query: every path under `/v1/forward-auth/` is the same check, with the
/// same identity headers (the key's name too, UTF-8 as is).
async fn forward_auth_answers_under_any_path_as_envoy_calls_it(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"name": "Zoë's billing key", "scopes": ["orders:read"], "owner": "acme"}),
        )
        .await;
    let b = bearer(&key);
    let h = [("authorization", b.as_str())];
    for (method, suffix) in [
        (Method::GET, "/orders/1"),
        (Method::POST, "/orders"),
        (Method::DELETE, "/a/b/c/d?x=1&y=%2F"),
        (Method::GET, "/"),
        (Method::GET, "/v1/forward-auth"),
    ] {
        let res = fa(&app, method.clone(), suffix, &h).await;
        assert_eq!(res.status, 200, "{method} {suffix}: {}", res.body);
        assert_eq!(res.headers["x-keyward-key-id"], id.as_str());
        assert_eq!(res.headers["x-keyward-keyspace-id"], ks.as_str());
        assert_eq!(res.headers["x-keyward-owner"], "acme");
        assert_eq!(
            res.headers["x-keyward-name"].as_bytes(),
            "Zoë's billing key".as_bytes()
        );
    }
    let res = fa(&app, Method::GET, "/orders/1?scope=orders:read", &h).await;
    assert_eq!(res.status, 200);
    let res = fa(&app, Method::GET, "/orders/1?scope=orders:write", &h).await;
    fa_error(&res, 403, "INSUFFICIENT_SCOPE");
    let res = fa(&app, Method::GET, "/orders/1", &[]).await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    // The key with its last character changed (to one it is not).
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("Bearer {}{last}", &key[..key.len() - 1]);
    let res = fa(
        &app,
        Method::GET,
        "/orders/1",
        &[("authorization", wrong.as_str())],
    )
    .await;
    fa_error(&res, 401, "NOT_FOUND");
}
both!(forward_auth_answers_under_any_path_as_envoy_calls_it);

async fn forward_auth_never_takes_the_key_from_the_url(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    for query in [
        format!("?key={key}"),
        format!("?api_key={key}"),
        format!("?x-api-key={key}"),
        format!("?authorization=Bearer%20{key}"),
    ] {
        let res = fa(&app, Method::GET, &query, &[]).await;
        fa_error(&res, 401, "UNAUTHENTICATED");
    }
    let res = fa(&app, Method::GET, "", &[]).await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    // A key in the body is ignored too.
    let res = fa_body(
        &app,
        Method::POST,
        "",
        &[("content-type", "application/json")],
        Some(&json!({"key": key}).to_string()),
    )
    .await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    app.flush().await;
    let k = get_key(&app, &id).await;
    assert_eq!(
        (k["call_count"].as_i64(), k["denied_count"].as_i64()),
        (Some(0), Some(0))
    );
}
both!(forward_auth_never_takes_the_key_from_the_url);

async fn forward_auth_maps_denials_to_401_and_403(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let prefix = prefix_of(&app, &ks).await;
    let (rid, revoked) = app.key(&ks, json!({})).await;
    app.post(&format!("/v1/keys/{rid}/revoke"), json!({"reason": "x"}))
        .await
        .expect(200);
    let (_, disabled) = app.key(&ks, json!({"enabled": false})).await;
    let (_, expiring) = app.key(&ks, json!({"ttl_secs": 5})).await;
    let (_, walled) = app.key(&ks, json!({"allowed_cidrs": ["10.0.0.0/8"]})).await;
    let (_, local) = app
        .key(&ks, json!({"allowed_cidrs": ["127.0.0.1", "::1"]}))
        .await;
    let (_, scoped) = app.key(&ks, json!({"scopes": ["orders:*"]})).await;
    app.advance(5);
    let random = keyward_core::keyformat::generate(&prefix)
        .expose()
        .to_string();
    for (key, status, code) in [
        (random.as_str(), 401, "NOT_FOUND"),
        ("garbage", 401, "NOT_FOUND"),
        (revoked.as_str(), 401, "REVOKED"),
        (expiring.as_str(), 401, "EXPIRED"),
        (disabled.as_str(), 401, "DISABLED"),
        (walled.as_str(), 403, "IP_NOT_ALLOWED"),
    ] {
        for h in ["authorization", "x-api-key"] {
            let v = if h == "authorization" {
                bearer(key)
            } else {
                key.to_string()
            };
            let res = fa(&app, Method::GET, "", &[(h, &v)]).await;
            fa_error(&res, status, code);
        }
    }
    // The peer address is 127.0.0.1; X-Forwarded-For is not trusted by default.
    let res = fa(&app, Method::GET, "", &[("x-api-key", &local)]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("x-api-key", &walled), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    fa_error(&res, 403, "IP_NOT_ALLOWED");
    // Scopes.
    let h = [("x-api-key", scoped.as_str())];
    assert_eq!(
        fa(&app, Method::GET, "?scope=orders:read", &h).await.status,
        200
    );
    fa_error(
        &fa(&app, Method::GET, "?scope=orders", &h).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    fa_error(
        &fa(&app, Method::GET, "?scope=orders:read&scope=admin", &h).await,
        403,
        "INSUFFICIENT_SCOPE",
    );
    for bad in ["?scope=orders:*", "?scope=*", "?scope=a%20b", "?scope="] {
        fa_error(&fa(&app, Method::GET, bad, &h).await, 400, "BAD_REQUEST");
    }
}
both!(forward_auth_maps_denials_to_401_and_403, manual);

async fn forward_auth_answers_429_with_retry_after_only_when_rate_limited(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, limited) = app
        .key(&ks, json!({"ratelimit": {"limit": 1, "window_secs": 60}}))
        .await;
    let (_, quota) = app.key(&ks, json!({"remaining": 1})).await;
    app.advance(10);
    let h = [("authorization", bearer(&limited))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(fa(&app, Method::GET, "", &h).await.status, 200);
    let res = fa(&app, Method::GET, "", &h).await;
    fa_error(&res, 429, "RATE_LIMITED");
    assert_eq!(
        res.headers["retry-after"], "50",
        "whole seconds to the end of the window"
    );
    app.clock.as_ref().unwrap().advance_millis(250);
    let res = fa(&app, Method::GET, "", &h).await;
    fa_error(&res, 429, "RATE_LIMITED");
    assert_eq!(res.headers["retry-after"], "50", "49.75 s rounded up");
    app.clock.as_ref().unwrap().advance_millis(49_250);
    let res = fa(&app, Method::POST, "", &h).await;
    fa_error(&res, 429, "RATE_LIMITED");
    assert_eq!(res.headers["retry-after"], "1", "rounded up, at least 1");
    app.clock.as_ref().unwrap().advance_millis(500);
    assert_eq!(fa(&app, Method::GET, "", &h).await.status, 200);

    let h = [("x-api-key", quota.as_str())];
    assert_eq!(fa(&app, Method::GET, "", &h).await.status, 200);
    let res = fa(&app, Method::GET, "", &h).await;
    fa_error(&res, 429, "USAGE_EXCEEDED");
    assert!(res.headers.get("retry-after").is_none());
    // The quota forward-auth spent is the one /v1/verify sees.
    assert_eq!(app.verify_code(&quota).await, "USAGE_EXCEEDED");
}
both!(
    forward_auth_answers_429_with_retry_after_only_when_rate_limited,
    manual
);

async fn forward_auth_uses_x_forwarded_for_when_told_to_trust_it(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, walled) = app.key(&ks, json!({"allowed_cidrs": ["10.0.0.0/8"]})).await;
    let res = fa(
        &app,
        Method::GET,
        "",
        &[
            ("x-api-key", &walled),
            ("x-forwarded-for", "10.1.2.3, 127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = fa(
        &app,
        Method::GET,
        "",
        &[
            ("x-api-key", &walled),
            ("x-forwarded-for", "192.0.2.1, 10.1.2.3"),
        ],
    )
    .await;
    fa_error(&res, 403, "IP_NOT_ALLOWED");
    let res = fa(&app, Method::GET, "", &[("x-api-key", &walled)]).await;
    fa_error(&res, 403, "IP_NOT_ALLOWED");
}
both!(
    forward_auth_uses_x_forwarded_for_when_told_to_trust_it,
    trust_proxy
);

// ---------------------------------------------------------------- KEYWARD_VERIFY_REQUIRES_TOKEN

async fn verification_can_require_a_verifier_token(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    let body = json!({"key": key});
    let res = app
        .send(Method::POST, "/v1/verify", None, Some(body.clone()))
        .await;
    assert_eq!(
        (res.status, res.code()),
        (401, "UNAUTHENTICATED"),
        "{}",
        res.body
    );
    let res = app.post_as(&key, "/v1/verify", body.clone()).await;
    assert_eq!(
        (res.status, res.code()),
        (401, "UNAUTHENTICATED"),
        "an API key is not a token"
    );
    for role in ["viewer", "manager", "auditor"] {
        let t = app.token(role, None).await;
        let res = app.post_as(&t, "/v1/verify", body.clone()).await;
        assert_eq!(
            (res.status, res.code()),
            (403, "FORBIDDEN"),
            "{role}: {}",
            res.body
        );
    }
    let verifier = app.token("verifier", None).await;
    for t in [&verifier, &app.admin] {
        let res = app.post_as(t, "/v1/verify", body.clone()).await.expect(200);
        assert_eq!(res.body["code"], "VALID");
    }
    // Denials are still 200 answers for an authorised caller.
    let res = app
        .post_as(&verifier, "/v1/verify", json!({"key": "nope"}))
        .await
        .expect(200);
    assert_eq!(res.body["code"], "NOT_FOUND");
    // The verifier role verifies and nothing else.
    let res = app.get_as(&verifier, "/v1/keys").await;
    assert_eq!((res.status, res.code()), (403, "FORBIDDEN"));
}
both!(verification_can_require_a_verifier_token, token_required);

async fn forward_auth_takes_the_token_from_x_keyward_token(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    let verifier = app.token("verifier", None).await;
    let viewer = app.token("viewer", None).await;
    let b = bearer(&key);
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("authorization", &b), ("x-keyward-token", &verifier)],
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.headers["x-keyward-key-id"], id.as_str());
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("x-api-key", &key), ("x-keyward-token", &app.admin)],
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = fa(&app, Method::GET, "", &[("authorization", &b)]).await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("authorization", &b), ("x-keyward-token", "kwt_nope")],
    )
    .await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("authorization", &b), ("x-keyward-token", &viewer)],
    )
    .await;
    fa_error(&res, 403, "FORBIDDEN");
    // The token in Authorization is taken as the API key, not as the token.
    let res = fa(
        &app,
        Method::GET,
        "",
        &[("authorization", &bearer(&verifier))],
    )
    .await;
    fa_error(&res, 401, "UNAUTHENTICATED");
    app.flush().await;
    assert_eq!(get_key(&app, &id).await["call_count"], 2);
}
both!(
    forward_auth_takes_the_token_from_x_keyward_token,
    token_required
);

async fn the_longest_key_verifies_and_anything_longer_is_not_found(app: TestApp) {
    // A 32-character prefix makes a key of the longest length: 32 + 1 + 38 = 71.
    let prefix = format!(
        "l{}",
        keyward_core::keyformat::base62_random(31).to_lowercase()
    );
    let ks = app
        .post(
            "/v1/keyspaces",
            json!({"name": "long", "prefix": prefix, "policy": {"require_owner": false}}),
        )
        .await
        .expect(201)
        .id();
    let (id, key) = app.key(&ks, json!({})).await;
    assert_eq!(key.len(), 71);
    for _ in 0..2 {
        // Loaded from the store, then from the cache.
        let v = app.verify(json!({"key": key})).await;
        assert_eq!(v["code"], "VALID", "{v}");
        assert_eq!(v["key_id"], id.as_str());
    }
    for longer in [format!("{key}0"), format!("x{key}"), format!("{key} ")] {
        let v = app.verify(json!({"key": longer})).await;
        assert_eq!(v["code"], "NOT_FOUND", "{v}");
    }
}
both!(the_longest_key_verifies_and_anything_longer_is_not_found);

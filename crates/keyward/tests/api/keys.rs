//! Keyspaces and keys over HTTP: presets and policies, prefixes, key defaults and policy
//! checks, list filters, PATCH semantics, revoke (single and by owner) and rotation.

use std::collections::HashSet;

use keyward_core::time::Timestamp;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{create_keys_at_once, manual, Res, TestApp};

const DAY: i64 = 86_400;

/// Milliseconds of an RFC 3339 time in a response.
#[track_caller]
fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    assert!(s.ends_with('Z'), "UTC with Z: {s}");
    Timestamp::parse_rfc3339(s).unwrap().millis()
}

fn rfc(ms: i64) -> String {
    Timestamp::from_millis(ms).to_rfc3339()
}

/// The manual clock's current time in milliseconds.
fn now(app: &TestApp) -> i64 {
    use keyward_core::time::Clock;
    app.clock.as_ref().expect("manual clock").now().millis()
}

#[track_caller]
fn err(res: &Res, status: u16, code: &str) {
    assert_eq!(res.status, status, "unexpected status; body: {}", res.body);
    assert_eq!(res.code(), code, "body: {}", res.body);
}

fn ids(res: &Res) -> Vec<String> {
    res.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

async fn list_ids(app: &TestApp, query: &str) -> HashSet<String> {
    ids(&app
        .get(&format!("/v1/keys?limit=500&{query}"))
        .await
        .expect(200))
    .into_iter()
    .collect()
}

fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    app.get(&format!("/v1/audit?limit=500&{query}"))
        .await
        .expect(200)
        .body["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn get_key(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/keys/{id}")).await.expect(200).body
}

// ---------------------------------------------------------------- keyspaces

async fn presets_fill_the_policy_as_documented(app: TestApp) {
    let standard = json!({
        "max_lifetime_secs": 180 * DAY, "rotation_grace_secs": DAY, "max_grace_secs": 7 * DAY,
        "inactivity_revoke_secs": 180 * DAY, "expiry_warning_secs": 14 * DAY,
        "require_owner": true, "max_keys_per_owner": null, "on_leak": "revoke",
    });
    let mut strict = standard.clone();
    strict["max_lifetime_secs"] = json!(90 * DAY);
    strict["inactivity_revoke_secs"] = json!(30 * DAY);
    strict["rotation_grace_secs"] = json!(3600);
    let mut relaxed = standard.clone();
    relaxed["max_lifetime_secs"] = json!(null);
    relaxed["inactivity_revoke_secs"] = json!(365 * DAY);
    relaxed["rotation_grace_secs"] = json!(7 * DAY);

    for (prefix, preset, want) in [
        ("pstrict", Some("strict"), &strict),
        ("pstandard", Some("standard"), &standard),
        ("prelaxed", Some("relaxed"), &relaxed),
        ("pnone", None, &standard),
    ] {
        let mut body = json!({"name": format!("{prefix} ks"), "prefix": prefix});
        if let Some(p) = preset {
            body["preset"] = json!(p);
        }
        let ks = app.post("/v1/keyspaces", body).await.expect(201);
        assert_eq!(&ks.body["policy"], want, "preset {preset:?}");
        assert!(ks.id().starts_with("ks_"));
        assert_eq!(ks.body["prefix"], prefix);
        assert_eq!(ks.body["name"], format!("{prefix} ks"));
        assert_eq!(ms(&ks.body["created_at"]), ms(&ks.body["updated_at"]));
        let got = app
            .get(&format!("/v1/keyspaces/{}", ks.id()))
            .await
            .expect(200);
        assert_eq!(got.body, ks.body, "GET answers what POST created");
    }
    err(
        &app.post(
            "/v1/keyspaces",
            json!({"name": "x", "prefix": "plax", "preset": "lax"}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    let all = app.get("/v1/keyspaces").await.expect(200);
    assert_eq!(ids(&all).len(), 4);
}
both!(presets_fill_the_policy_as_documented);

async fn a_policy_overrides_the_preset_field_by_field(app: TestApp) {
    let ks = app
        .post(
            "/v1/keyspaces",
            json!({"name": "o", "prefix": "over", "preset": "strict",
                   "policy": {"rotation_grace_secs": 0, "max_keys_per_owner": 3, "max_lifetime_secs": null, "require_owner": false}}),
        )
        .await
        .expect(201);
    assert_eq!(
        ks.body["policy"],
        json!({"max_lifetime_secs": null, "rotation_grace_secs": 0, "max_grace_secs": 7 * DAY,
               "inactivity_revoke_secs": 30 * DAY, "expiry_warning_secs": 14 * DAY,
               "require_owner": false, "max_keys_per_owner": 3, "on_leak": "revoke"})
    );
    // Values as small as 1 s are fine; 0, negatives, null grace and unknown fields are not.
    app.post("/v1/keyspaces", json!({"name": "o", "prefix": "tiny", "policy": {"max_lifetime_secs": 1, "max_grace_secs": 1}}))
        .await
        .expect(201);
    for bad in [
        json!({"max_lifetime_secs": 0}),
        json!({"max_grace_secs": -1}),
        json!({"inactivity_revoke_secs": 0}),
        json!({"expiry_warning_secs": "1"}),
        json!({"max_keys_per_owner": 0}),
        json!({"rotation_grace_secs": null}),
        json!({"rotation_grace_secs": -1}),
        json!({"require_owner": null}),
        json!({"max_lifetime": 5}),
    ] {
        let res = app
            .post(
                "/v1/keyspaces",
                json!({"name": "bad", "prefix": "badpolicy", "policy": bad}),
            )
            .await;
        err(&res, 400, "BAD_REQUEST");
    }
    assert_eq!(ids(&app.get("/v1/keyspaces").await.expect(200)).len(), 2);
}
both!(a_policy_overrides_the_preset_field_by_field);

async fn prefixes_follow_the_grammar_and_are_unique(app: TestApp) {
    for good in [
        "a",
        "acme",
        "acme_live",
        "a1_b2_c3",
        &"a".repeat(32),
        "kw",
        "kwtx",
        "xkwt",
    ] {
        app.post("/v1/keyspaces", json!({"name": "ok", "prefix": good}))
            .await
            .expect(201);
    }
    for bad in [
        "",
        "1acme",
        "Acme",
        "acme_",
        "_acme",
        "ac__me",
        "ac-me",
        "ac me",
        "acmé",
        &"a".repeat(33),
        " acme",
    ] {
        let res = app
            .post("/v1/keyspaces", json!({"name": "bad", "prefix": bad}))
            .await;
        err(&res, 400, "BAD_REQUEST");
    }
    for reserved in ["kwt", "kwt_live", "kwt_a_b"] {
        let res = app
            .post(
                "/v1/keyspaces",
                json!({"name": "reserved", "prefix": reserved}),
            )
            .await;
        err(&res, 400, "BAD_REQUEST");
    }
    let res = app
        .post("/v1/keyspaces", json!({"name": "again", "prefix": "acme"}))
        .await;
    err(&res, 409, "CONFLICT");
    let res = app
        .post(
            "/v1/keyspaces",
            json!({"name": "again", "prefix": "acme_live", "preset": "relaxed"}),
        )
        .await;
    err(&res, 409, "CONFLICT");
    assert_eq!(ids(&app.get("/v1/keyspaces").await.expect(200)).len(), 8);
    // An invalid name is a 400 too.
    err(
        &app.post("/v1/keyspaces", json!({"name": "", "prefix": "noname"}))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post("/v1/keyspaces", json!({"name": "   ", "prefix": "noname"}))
            .await,
        400,
        "BAD_REQUEST",
    );
}
both!(prefixes_follow_the_grammar_and_are_unique);

async fn patching_a_keyspace_merges_its_policy_field_by_field(app: TestApp) {
    let ks = app
        .post(
            "/v1/keyspaces",
            json!({"name": "orders", "prefix": "orders"}),
        )
        .await
        .expect(201);
    let id = ks.id();
    let before = ks.body["policy"].clone();
    app.advance(5);
    let res = app
        .patch(
            &format!("/v1/keyspaces/{id}"),
            json!({"policy": {"max_keys_per_owner": 2}}),
        )
        .await
        .expect(200);
    let mut want = before.clone();
    want["max_keys_per_owner"] = json!(2);
    assert_eq!(res.body["policy"], want);
    assert_eq!(res.body["name"], "orders");
    assert_eq!(
        ms(&res.body["updated_at"]),
        ms(&ks.body["created_at"]) + 5000
    );
    assert_eq!(res.body["created_at"], ks.body["created_at"]);

    let res = app
        .patch(&format!("/v1/keyspaces/{id}"), json!({"name": "orders v2", "policy": {"max_lifetime_secs": null, "rotation_grace_secs": 60}}))
        .await
        .expect(200);
    want["max_lifetime_secs"] = json!(null);
    want["rotation_grace_secs"] = json!(60);
    assert_eq!(res.body["policy"], want, "the earlier change stays");
    assert_eq!(res.body["name"], "orders v2");
    assert_eq!(res.body["prefix"], "orders");
    let got = app.get(&format!("/v1/keyspaces/{id}")).await.expect(200);
    assert_eq!(got.body["policy"], want);

    // Naming `prefix` at all is a 400, even unchanged, even null, even next to valid fields.
    for body in [
        json!({"prefix": "neworders"}),
        json!({"prefix": "orders"}),
        json!({"prefix": null}),
        json!({"name": "renamed", "prefix": "orders"}),
    ] {
        err(
            &app.patch(&format!("/v1/keyspaces/{id}"), body).await,
            400,
            "BAD_REQUEST",
        );
    }
    // Invalid values and unknown fields are 400s; an unknown keyspace is a 404.
    err(
        &app.patch(
            &format!("/v1/keyspaces/{id}"),
            json!({"policy": {"rotation_grace_secs": null}}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.patch(
            &format!("/v1/keyspaces/{id}"),
            json!({"policy": {"max_grace_secs": 0}}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.patch(&format!("/v1/keyspaces/{id}"), json!({"preset": "strict"}))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.patch(
            "/v1/keyspaces/ks_nope0000000000000000",
            json!({"name": "x"}),
        )
        .await,
        404,
        "NOT_FOUND",
    );
    err(
        &app.get("/v1/keyspaces/ks_nope0000000000000000").await,
        404,
        "NOT_FOUND",
    );
    let got = app.get(&format!("/v1/keyspaces/{id}")).await.expect(200);
    assert_eq!(got.body["name"], "orders v2");
    assert_eq!(got.body["policy"], want, "failed PATCHes changed nothing");
    // Each effective change wrote one keyspace.update event.
    assert_eq!(
        audit(&app, &format!("target_id={id}&action=keyspace.update"))
            .await
            .len(),
        2
    );
}
both!(patching_a_keyspace_merges_its_policy_field_by_field, manual);

// ---------------------------------------------------------------- key creation

async fn a_new_key_has_the_documented_defaults_and_shape(app: TestApp) {
    let ks = app
        .post("/v1/keyspaces", json!({"name": "d", "prefix": "acme_live"}))
        .await
        .expect(201)
        .id();
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "billing prod", "owner": "team-billing"}),
        )
        .await
        .expect(201);
    let k = &res.body;
    let plaintext = k["key"].as_str().unwrap();
    assert!(plaintext.starts_with("acme_live_"));
    assert_eq!(plaintext.len(), "acme_live_".len() + 38);
    assert!(k["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(k["keyspace_id"], ks.as_str());
    assert_eq!(k["name"], "billing prod");
    assert_eq!(k["owner"], "team-billing");
    assert_eq!(k["scopes"], json!([]));
    assert_eq!(k["labels"], json!({}));
    assert_eq!(k["meta"], json!({}));
    assert_eq!(k["ratelimit"], Value::Null);
    assert_eq!(k["remaining"], Value::Null);
    assert_eq!(k["allowed_cidrs"], Value::Null);
    assert_eq!(k["enabled"], true);
    assert_eq!(k["status"], "active");
    assert_eq!(
        k["start"],
        format!(
            "acme_live_{}",
            &plaintext["acme_live_".len().."acme_live_".len() + 4]
        )
    );
    assert_eq!(k["end"], &plaintext[plaintext.len() - 4..]);
    assert_eq!(
        ms(&k["expires_at"]) - ms(&k["created_at"]),
        180 * DAY * 1000,
        "creation + max_lifetime_secs"
    );
    assert_eq!(k["created_at"], k["updated_at"]);
    assert_eq!(k["created_by"]["type"], "token");
    assert!(k["created_by"]["id"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(k["created_by"]["name"], "admin");
    for f in [
        "revoked_at",
        "revoked_by",
        "revoked_reason",
        "rotated_from",
        "rotated_to",
        "last_used_at",
    ] {
        assert!(k[f].is_null(), "{f} is null: {k}");
    }
    assert_eq!(k["call_count"], 0);
    assert_eq!(k["denied_count"], 0);
    let mut fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    let mut want = vec![
        "id",
        "keyspace_id",
        "name",
        "owner",
        "scopes",
        "labels",
        "meta",
        "start",
        "end",
        "status",
        "enabled",
        "created_at",
        "created_by",
        "updated_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
        "revoked_reason",
        "rotated_from",
        "rotated_to",
        "last_used_at",
        "call_count",
        "denied_count",
        "ratelimit",
        "remaining",
        "allowed_cidrs",
        "key",
    ];
    want.sort_unstable();
    assert_eq!(fields, want);

    // GET is the same object without the plaintext.
    let id = res.id();
    let mut got = get_key(&app, &id).await;
    assert!(
        got.get("key").is_none(),
        "the plaintext is returned only once"
    );
    got["key"] = json!(plaintext);
    assert_eq!(&got, k);
    let listed = app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200);
    assert!(listed.body["items"][0].get("key").is_none());
    assert!(!listed.body.to_string().contains(plaintext));
    assert!(!app
        .get("/v1/audit?limit=500")
        .await
        .expect(200)
        .body
        .to_string()
        .contains(plaintext));

    // Relaxed: no max lifetime, so no expiry by default. `enabled` may be given.
    let relaxed = app
        .post(
            "/v1/keyspaces",
            json!({"name": "r", "prefix": "relax", "preset": "relaxed"}),
        )
        .await
        .expect(201)
        .id();
    let r = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": relaxed, "name": "n", "owner": "o", "enabled": false}),
        )
        .await
        .expect(201);
    assert!(r.body["expires_at"].is_null());
    assert_eq!(r.body["enabled"], false);
    assert_eq!(r.body["status"], "disabled");
    // Given fields come back as given.
    let full = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": relaxed, "name": "full", "owner": "o", "scopes": ["orders:read", "billing:*"],
                   "labels": {"env": "prod"}, "meta": {"plan": "pro", "n": [1, 2]}, "ttl_secs": 3600,
                   "ratelimit": {"limit": 100, "window_secs": 60}, "remaining": 10000, "allowed_cidrs": ["203.0.113.0/24"]}),
        )
        .await
        .expect(201);
    let b = &full.body;
    assert_eq!(b["scopes"], json!(["orders:read", "billing:*"]));
    assert_eq!(b["labels"], json!({"env": "prod"}));
    assert_eq!(b["meta"], json!({"plan": "pro", "n": [1, 2]}));
    assert_eq!(ms(&b["expires_at"]) - ms(&b["created_at"]), 3_600_000);
    assert_eq!(b["ratelimit"], json!({"limit": 100, "window_secs": 60}));
    assert_eq!(b["remaining"], 10000);
    assert_eq!(b["allowed_cidrs"], json!(["203.0.113.0/24"]));
    // One key.create event per key.
    assert_eq!(
        audit(&app, &format!("target_id={}&action=key.create", full.id()))
            .await
            .len(),
        1
    );
}
both!(a_new_key_has_the_documented_defaults_and_shape);

async fn key_creation_enforces_the_keyspace_policy(app: TestApp) {
    let ks = app.keyspace(json!({"max_lifetime_secs": 3600})).await;
    let t0 = now(&app);
    // require_owner (standard) -> 422 without owner.
    let res = app
        .post("/v1/keys", json!({"keyspace_id": ks, "name": "n"}))
        .await;
    err(&res, 422, "POLICY_VIOLATION");
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": null}),
        )
        .await;
    err(&res, 422, "POLICY_VIOLATION");
    let free = app.keyspace(json!({"require_owner": false})).await;
    let r = app
        .post("/v1/keys", json!({"keyspace_id": free, "name": "n"}))
        .await
        .expect(201);
    assert!(r.body["owner"].is_null());

    // max lifetime, via ttl_secs and via expires_at; exactly the maximum is fine.
    err(
        &app.post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "o", "ttl_secs": 3601}),
        )
        .await,
        422,
        "POLICY_VIOLATION",
    );
    err(
        &app.post("/v1/keys", json!({"keyspace_id": ks, "name": "n", "owner": "o", "expires_at": rfc(t0 + 3_601_000)})).await,
        422,
        "POLICY_VIOLATION",
    );
    let a = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "o", "ttl_secs": 3600}),
        )
        .await
        .expect(201);
    assert_eq!(ms(&a.body["expires_at"]), t0 + 3_600_000);
    let b = app
        .post("/v1/keys", json!({"keyspace_id": ks, "name": "n", "owner": "o", "expires_at": rfc(t0 + 3_600_000)}))
        .await
        .expect(201);
    assert_eq!(ms(&b.body["expires_at"]), t0 + 3_600_000);
    let c = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "o", "ttl_secs": 1}),
        )
        .await
        .expect(201);
    assert_eq!(ms(&c.body["expires_at"]), t0 + 1000);
    // An expires_at with another offset is read as the same instant.
    let d = app
        .post("/v1/keys", json!({"keyspace_id": ks, "name": "n", "owner": "o",
                                  "expires_at": Timestamp::from_millis(t0 + 1_800_000).to_rfc3339().replace('Z', "+00:00")}))
        .await
        .expect(201);
    assert_eq!(ms(&d.body["expires_at"]), t0 + 1_800_000);

    // 400s: both ttl and expires_at, a past or present expiry, ttl below 1.
    for body in [
        json!({"ttl_secs": 60, "expires_at": rfc(t0 + 60_000)}),
        json!({"expires_at": rfc(t0 - 1000)}),
        json!({"expires_at": rfc(t0)}),
        json!({"expires_at": "tomorrow"}),
        json!({"ttl_secs": 0}),
        json!({"ttl_secs": -5}),
        json!({"ttl_secs": 1.5}),
    ] {
        let mut full = json!({"keyspace_id": ks, "name": "n", "owner": "o"});
        for (k, v) in body.as_object().unwrap() {
            full[k] = v.clone();
        }
        err(
            &app.post("/v1/keys", full.clone()).await,
            400,
            "BAD_REQUEST",
        );
    }
    assert_eq!(list_ids(&app, &format!("keyspace_id={ks}")).await.len(), 4);
}
both!(key_creation_enforces_the_keyspace_policy, manual);

async fn invalid_key_fields_are_400(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let base = json!({"keyspace_id": ks, "name": "n", "owner": "o"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    // meta: at most 4096 bytes as compact JSON. `{"a":"…"}` is 8 bytes plus the string.
    app.post("/v1/keys", with("meta", json!({"a": "x".repeat(4088)})))
        .await
        .expect(201);
    err(
        &app.post("/v1/keys", with("meta", json!({"a": "x".repeat(4089)})))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post("/v1/keys", with("meta", json!("not an object")))
            .await,
        400,
        "BAD_REQUEST",
    );
    // scopes
    for good in [
        json!(["orders:*"]),
        json!(["*"]),
        json!(["a.b-c_d:E9"]),
        json!(["x".repeat(128)]),
    ] {
        app.post("/v1/keys", with("scopes", good)).await.expect(201);
    }
    for bad in [
        "",
        ":",
        "orders:",
        ":read",
        "a::b",
        "a b",
        "*:x",
        "or*ders",
        "orders:*:read",
        "ünï",
        &"x".repeat(129),
    ] {
        err(
            &app.post("/v1/keys", with("scopes", json!([bad]))).await,
            400,
            "BAD_REQUEST",
        );
    }
    // everything else
    for (field, bad) in [
        ("name", json!("")),
        ("name", json!("   ")),
        ("name", json!("x".repeat(201))),
        ("owner", json!("")),
        ("labels", json!({"": "x"})),
        ("labels", json!({"env": 1})),
        ("ratelimit", json!({"limit": 0, "window_secs": 60})),
        ("ratelimit", json!({"limit": 10})),
        ("ratelimit", json!({"limit": 10, "window_secs": 0})),
        ("remaining", json!(-1)),
        ("allowed_cidrs", json!(["not a cidr"])),
        ("allowed_cidrs", json!(["10.0.0.0/33"])),
        ("enabled", json!("yes")),
    ] {
        err(
            &app.post("/v1/keys", with(field, bad.clone())).await,
            400,
            "BAD_REQUEST",
        );
    }
    assert_eq!(list_ids(&app, &format!("keyspace_id={ks}")).await.len(), 5);
}
both!(invalid_key_fields_are_400);

async fn an_unknown_keyspace_id_in_the_body_is_404(app: TestApp) {
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": "ks_doesnotexist00000000", "name": "n", "owner": "o"}),
        )
        .await;
    err(&res, 404, "NOT_FOUND");
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": "", "name": "n", "owner": "o"}),
        )
        .await;
    assert!(res.status == 404 || res.status == 400, "{}", res.body);
    let res = app
        .post(
            "/v1/keys/revoke",
            json!({"owner": "o", "keyspace_id": "ks_doesnotexist00000000", "reason": "x"}),
        )
        .await;
    err(&res, 404, "NOT_FOUND");
    err(
        &app.get("/v1/keys/key_doesnotexist0000000000").await,
        404,
        "NOT_FOUND",
    );
    let res = app
        .post(
            "/v1/tokens",
            json!({"name": "t", "role": "viewer", "keyspace_ids": ["ks_doesnotexist00000000"]}),
        )
        .await;
    err(&res, 404, "NOT_FOUND");
    assert_eq!(
        ids(&app.get("/v1/tokens").await.expect(200)).len(),
        1,
        "no token was created"
    );
}
both!(an_unknown_keyspace_id_in_the_body_is_404);

async fn max_keys_per_owner_limits_active_keys_per_owner(app: TestApp) {
    let ks = app.keyspace(json!({"max_keys_per_owner": 2})).await;
    let other = app.keyspace(json!({"max_keys_per_owner": 2})).await;
    let (a, _) = app.key(&ks, json!({"owner": "alice"})).await;
    app.key(&ks, json!({"owner": "alice"})).await;
    err(
        &app.post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "alice"}),
        )
        .await,
        422,
        "POLICY_VIOLATION",
    );
    // Other owners and other keyspaces are counted apart.
    app.key(&ks, json!({"owner": "bob"})).await;
    app.key(&other, json!({"owner": "alice"})).await;
    // A revoked key no longer counts.
    app.post(&format!("/v1/keys/{a}/revoke"), json!({"reason": "left"}))
        .await
        .expect(200);
    app.key(&ks, json!({"owner": "alice"})).await;
    err(
        &app.post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "n", "owner": "alice"}),
        )
        .await,
        422,
        "POLICY_VIOLATION",
    );
    // Moving a key to an owner who is at the limit is refused too.
    let (b, _) = app.key(&ks, json!({"owner": "bob"})).await;
    err(
        &app.patch(&format!("/v1/keys/{b}"), json!({"owner": "alice"}))
            .await,
        422,
        "POLICY_VIOLATION",
    );
    assert_eq!(get_key(&app, &b).await["owner"], "bob");
}
both!(max_keys_per_owner_limits_active_keys_per_owner);

// ---------------------------------------------------------------- listing

async fn keys_can_be_listed_by_keyspace_owner_label_and_name(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let other = app.keyspace(json!({})).await;
    let (k1, _) = app.key(&ks, json!({"name": "Billing Prod", "owner": "alice", "labels": {"env": "prod", "team": "pay"}})).await;
    let (k2, _) = app
        .key(
            &ks,
            json!({"name": "billing dev", "owner": "bob", "labels": {"env": "dev"}}),
        )
        .await;
    let (k3, _) = app
        .key(
            &ks,
            json!({"name": "search", "owner": "alice", "labels": {"env": "production"}}),
        )
        .await;
    let (k4, _) = app
        .key(
            &other,
            json!({"name": "BILLING other", "owner": "alice", "labels": {"xenv": "prod"}}),
        )
        .await;
    let (k5, _) = app
        .key(
            &other,
            json!({"name": "50%_off", "owner": "carol", "labels": {"env": "prod"}}),
        )
        .await;

    assert_eq!(
        list_ids(&app, &format!("keyspace_id={ks}")).await,
        set(&[&k1, &k2, &k3])
    );
    assert_eq!(
        list_ids(&app, &format!("keyspace_id={other}")).await,
        set(&[&k4, &k5])
    );
    assert_eq!(list_ids(&app, "").await, set(&[&k1, &k2, &k3, &k4, &k5]));
    assert_eq!(list_ids(&app, "owner=alice").await, set(&[&k1, &k3, &k4]));
    assert_eq!(
        list_ids(&app, "owner=Alice").await,
        set(&[]),
        "owner matches exactly"
    );
    assert_eq!(
        list_ids(&app, &format!("owner=alice&keyspace_id={ks}")).await,
        set(&[&k1, &k3])
    );
    assert_eq!(
        list_ids(&app, "label=env:prod").await,
        set(&[&k1, &k5]),
        "exact label name and value"
    );
    assert_eq!(list_ids(&app, "label=team:pay").await, set(&[&k1]));
    assert_eq!(list_ids(&app, "label=env:dev&owner=bob").await, set(&[&k2]));
    assert_eq!(list_ids(&app, "label=env:staging").await, set(&[]));
    assert_eq!(
        list_ids(&app, "q=billing").await,
        set(&[&k1, &k2, &k4]),
        "case-insensitive substring"
    );
    assert_eq!(list_ids(&app, "q=BILLING%20P").await, set(&[&k1]));
    assert_eq!(list_ids(&app, "q=ll").await, set(&[&k1, &k2, &k4]));
    assert_eq!(
        list_ids(&app, "q=%25").await,
        set(&[&k5]),
        "% is a literal character"
    );
    assert_eq!(
        list_ids(&app, "q=_").await,
        set(&[&k5]),
        "_ is a literal character"
    );
    assert_eq!(list_ids(&app, "q=nothing").await, set(&[]));
    assert_eq!(
        list_ids(&app, "keyspace_id=ks_unknown000000000000").await,
        set(&[])
    );
    // Bad filter values are 400s.
    for bad in [
        "status=gone",
        "label=envprod",
        "unused_for_secs=-1",
        "unused_for_secs=x",
        "sort=name",
    ] {
        err(
            &app.get(&format!("/v1/keys?{bad}")).await,
            400,
            "BAD_REQUEST",
        );
    }
}
both!(keys_can_be_listed_by_keyspace_owner_label_and_name);

async fn keys_can_be_listed_by_status(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (active, _) = app.key(&ks, json!({})).await;
    let (disabled, _) = app.key(&ks, json!({"enabled": false})).await;
    let (revoked, _) = app.key(&ks, json!({})).await;
    app.post(
        &format!("/v1/keys/{revoked}/revoke"),
        json!({"reason": "test"}),
    )
    .await
    .expect(200);
    let (rotated, _) = app.key(&ks, json!({})).await;
    let successor = app
        .post(
            &format!("/v1/keys/{rotated}/rotate"),
            json!({"grace_secs": 3600}),
        )
        .await
        .expect(201)
        .id();
    let (expiring, _) = app.key(&ks, json!({"ttl_secs": 60})).await;
    // A key both disabled and expired is expired; revoked and expired is revoked.
    let (dis_exp, _) = app
        .key(&ks, json!({"ttl_secs": 60, "enabled": false}))
        .await;
    let (rev_exp, _) = app.key(&ks, json!({"ttl_secs": 60})).await;
    app.post(
        &format!("/v1/keys/{rev_exp}/revoke"),
        json!({"reason": "test"}),
    )
    .await
    .expect(200);

    let q = |s: &str| format!("keyspace_id={ks}&status={s}");
    assert_eq!(
        list_ids(&app, &q("active")).await,
        set(&[&active, &successor, &expiring])
    );
    assert_eq!(
        list_ids(&app, &q("disabled")).await,
        set(&[&disabled, &dis_exp])
    );
    assert_eq!(list_ids(&app, &q("rotating")).await, set(&[&rotated]));
    assert_eq!(
        list_ids(&app, &q("revoked")).await,
        set(&[&revoked, &rev_exp])
    );
    assert_eq!(list_ids(&app, &q("expired")).await, set(&[]));

    app.advance(60);
    assert_eq!(
        list_ids(&app, &q("active")).await,
        set(&[&active, &successor])
    );
    assert_eq!(
        list_ids(&app, &q("expired")).await,
        set(&[&expiring, &dis_exp])
    );
    assert_eq!(list_ids(&app, &q("disabled")).await, set(&[&disabled]));
    assert_eq!(
        list_ids(&app, &q("revoked")).await,
        set(&[&revoked, &rev_exp])
    );
    assert_eq!(get_key(&app, &dis_exp).await["status"], "expired");
    assert_eq!(get_key(&app, &rev_exp).await["status"], "revoked");

    app.advance(3600);
    assert_eq!(list_ids(&app, &q("rotating")).await, set(&[]));
    assert_eq!(
        list_ids(&app, &q("expired")).await,
        set(&[&expiring, &dis_exp, &rotated])
    );
    // The status in each listed object agrees with the filter.
    for s in ["active", "disabled", "rotating", "revoked", "expired"] {
        let res = app.get(&format!("/v1/keys?{}", q(s))).await.expect(200);
        for item in res.body["items"].as_array().unwrap() {
            assert_eq!(item["status"], s);
        }
    }
}
both!(keys_can_be_listed_by_status, manual);

async fn unused_for_secs_counts_from_creation_for_keys_never_used(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (old_unused, _) = app.key(&ks, json!({})).await;
    let (old_used, old_used_key) = app.key(&ks, json!({})).await;
    app.advance(100);
    let (fresh, _) = app.key(&ks, json!({})).await;
    let q = |n: i64| format!("keyspace_id={ks}&unused_for_secs={n}");
    assert_eq!(list_ids(&app, &q(50)).await, set(&[&old_unused, &old_used]));
    assert_eq!(
        list_ids(&app, &q(100)).await,
        set(&[&old_unused, &old_used])
    );
    assert_eq!(list_ids(&app, &q(101)).await, set(&[]));
    assert_eq!(
        list_ids(&app, &q(0)).await,
        set(&[&old_unused, &old_used, &fresh])
    );

    assert_eq!(app.verify_code(&old_used_key).await, "VALID");
    app.flush().await;
    assert_eq!(
        list_ids(&app, &q(50)).await,
        set(&[&old_unused]),
        "a valid use resets the clock"
    );
    app.advance(60);
    assert_eq!(
        list_ids(&app, &q(50)).await,
        set(&[&old_unused, &old_used, &fresh])
    );
    // A denied verification is not a use.
    app.patch(&format!("/v1/keys/{old_used}"), json!({"scopes": ["a"]}))
        .await
        .expect(200);
    let v = app
        .verify(json!({"key": old_used_key, "scopes": ["b"]}))
        .await;
    assert_eq!(v["code"], "INSUFFICIENT_SCOPE");
    app.flush().await;
    assert_eq!(
        list_ids(&app, &q(50)).await,
        set(&[&old_unused, &old_used, &fresh])
    );
}
both!(
    unused_for_secs_counts_from_creation_for_keys_never_used,
    manual
);

// ---------------------------------------------------------------- PATCH

async fn patch_replaces_labels_meta_and_scopes_as_a_whole(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app
        .key(&ks, json!({"scopes": ["a", "b"], "labels": {"env": "prod", "team": "x"}, "meta": {"x": 1, "y": {"z": 2}},
                          "ratelimit": {"limit": 5, "window_secs": 60}, "remaining": 7, "allowed_cidrs": ["10.0.0.0/8"]}))
        .await;
    let before = get_key(&app, &id).await;
    let res = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"labels": {"env": "dev"}, "meta": {"y": {"w": 3}}, "scopes": ["c:*"]}),
        )
        .await
        .expect(200);
    assert_eq!(res.body["labels"], json!({"env": "dev"}));
    assert_eq!(res.body["meta"], json!({"y": {"w": 3}}));
    assert_eq!(res.body["scopes"], json!(["c:*"]));
    for f in [
        "name",
        "owner",
        "ratelimit",
        "remaining",
        "allowed_cidrs",
        "expires_at",
        "enabled",
        "created_at",
        "start",
        "end",
    ] {
        assert_eq!(res.body[f], before[f], "{f} is not named, so it is kept");
    }
    // Empty values are values.
    let res = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"labels": {}, "meta": {}, "scopes": []}),
        )
        .await
        .expect(200);
    assert_eq!(
        (&res.body["labels"], &res.body["meta"], &res.body["scopes"]),
        (&json!({}), &json!({}), &json!([]))
    );
    // null for one of these three is a 400, and changes nothing.
    app.patch(&format!("/v1/keys/{id}"), json!({"labels": {"a": "b"}}))
        .await
        .expect(200);
    for f in ["labels", "meta", "scopes"] {
        err(
            &app.patch(
                &format!("/v1/keys/{id}"),
                json!({f: null, "name": "renamed"}),
            )
            .await,
            400,
            "BAD_REQUEST",
        );
    }
    let got = get_key(&app, &id).await;
    assert_eq!(got["labels"], json!({"a": "b"}));
    assert_eq!(got["name"], "test key");
    // Nullable fields may be cleared.
    let res = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"ratelimit": null, "remaining": null, "allowed_cidrs": null, "name": "renamed"}),
        )
        .await
        .expect(200);
    assert!(
        res.body["ratelimit"].is_null()
            && res.body["remaining"].is_null()
            && res.body["allowed_cidrs"].is_null()
    );
    assert_eq!(res.body["name"], "renamed");
    assert_eq!(get_key(&app, &id).await["name"], "renamed");
    // Invalid values are 400s.
    for body in [
        json!({"scopes": ["bad scope"]}),
        json!({"meta": {"a": "x".repeat(5000)}}),
        json!({"name": null}),
        json!({"name": ""}),
        json!({"enabled": null}),
        json!({"remaining": -3}),
        json!({"prefix": "x"}),
        json!({"keyspace_id": ks}),
    ] {
        err(
            &app.patch(&format!("/v1/keys/{id}"), body).await,
            400,
            "BAD_REQUEST",
        );
    }
    err(
        &app.patch("/v1/keys/key_doesnotexist0000000000", json!({"name": "x"}))
            .await,
        404,
        "NOT_FOUND",
    );
    // Each effective PATCH is one key.update event with the changes.
    let events = audit(&app, &format!("target_id={id}&action=key.update")).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["changes"]["name"], json!(["test key", "renamed"]));
}
both!(patch_replaces_labels_meta_and_scopes_as_a_whole);

async fn patch_checks_expiry_against_the_policy(app: TestApp) {
    let ks = app.keyspace(json!({"max_lifetime_secs": 3600})).await;
    let (id, _) = app.key(&ks, json!({"ttl_secs": 600})).await;
    let t0 = now(&app);
    app.advance(100);
    err(
        &app.patch(&format!("/v1/keys/{id}"), json!({"expires_at": null}))
            .await,
        422,
        "POLICY_VIOLATION",
    );
    err(
        &app.patch(
            &format!("/v1/keys/{id}"),
            json!({"expires_at": rfc(t0 + 3_601_000)}),
        )
        .await,
        422,
        "POLICY_VIOLATION",
    );
    err(
        &app.patch(
            &format!("/v1/keys/{id}"),
            json!({"expires_at": rfc(t0 + 50_000)}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.patch(
            &format!("/v1/keys/{id}"),
            json!({"expires_at": rfc(t0 + 100_000)}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    let res = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"expires_at": rfc(t0 + 3_600_000)}),
        )
        .await
        .expect(200);
    assert_eq!(
        ms(&res.body["expires_at"]),
        t0 + 3_600_000,
        "measured from the key's creation"
    );
    // Without a max lifetime, null removes the expiry.
    let relaxed = app
        .post(
            "/v1/keyspaces",
            json!({"name": "r", "prefix": "relaxedpatch", "preset": "relaxed"}),
        )
        .await
        .expect(201)
        .id();
    let (r, _) = app.key(&relaxed, json!({"ttl_secs": 600})).await;
    let res = app
        .patch(&format!("/v1/keys/{r}"), json!({"expires_at": null}))
        .await
        .expect(200);
    assert!(res.body["expires_at"].is_null());
    assert!(get_key(&app, &r).await["expires_at"].is_null());
    // An owner may not be removed when the policy requires one.
    err(
        &app.patch(&format!("/v1/keys/{id}"), json!({"owner": null}))
            .await,
        422,
        "POLICY_VIOLATION",
    );
}
both!(patch_checks_expiry_against_the_policy, manual);

async fn a_revoked_key_cannot_be_patched(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    app.post(
        &format!("/v1/keys/{id}/revoke"),
        json!({"reason": "compromised"}),
    )
    .await
    .expect(200);
    for body in [
        json!({"enabled": true}),
        json!({"name": "again"}),
        json!({"expires_at": null}),
        json!({"remaining": 5}),
    ] {
        err(
            &app.patch(&format!("/v1/keys/{id}"), body).await,
            409,
            "CONFLICT",
        );
    }
    assert_eq!(get_key(&app, &id).await["name"], "test key");
    assert_eq!(app.verify_code(&key).await, "REVOKED");
}
both!(a_revoked_key_cannot_be_patched);

// ---------------------------------------------------------------- revoke

async fn revoke_needs_a_reason_and_is_idempotent(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({})).await;
    for body in [
        json!({}),
        json!({"reason": ""}),
        json!({"reason": "   "}),
        json!({"reason": "x".repeat(501)}),
        json!({"reason": null}),
    ] {
        err(
            &app.post(&format!("/v1/keys/{id}/revoke"), body).await,
            400,
            "BAD_REQUEST",
        );
    }
    assert_eq!(get_key(&app, &id).await["status"], "active");
    let t0 = now(&app);
    let first = app
        .post(
            &format!("/v1/keys/{id}/revoke"),
            json!({"reason": "x".repeat(500)}),
        )
        .await
        .expect(200);
    assert_eq!(first.body["status"], "revoked");
    assert_eq!(ms(&first.body["revoked_at"]), t0);
    assert_eq!(first.body["revoked_reason"], "x".repeat(500));
    assert_eq!(first.body["revoked_by"]["type"], "token");
    assert_eq!(first.body["revoked_by"]["name"], "admin");
    assert!(first.body["revoked_by"]["id"]
        .as_str()
        .unwrap()
        .starts_with("tok_"));
    assert_eq!(app.verify_code(&key).await, "REVOKED");

    app.advance(30);
    let second = app
        .post(&format!("/v1/keys/{id}/revoke"), json!({"reason": "again"}))
        .await
        .expect(200);
    for f in ["revoked_at", "revoked_by", "revoked_reason", "status"] {
        assert_eq!(
            second.body[f], first.body[f],
            "{f} of the first revocation stands"
        );
    }
    let got = get_key(&app, &id).await;
    assert_eq!(got["revoked_at"], first.body["revoked_at"]);
    let events = audit(&app, &format!("target_id={id}&action=key.revoke")).await;
    assert_eq!(
        events.len(),
        1,
        "a second revoke writes no event: {events:?}"
    );
    assert_eq!(events[0]["reason"], "x".repeat(500));
    err(
        &app.post(
            "/v1/keys/key_doesnotexist0000000000/revoke",
            json!({"reason": "x"}),
        )
        .await,
        404,
        "NOT_FOUND",
    );
}
both!(revoke_needs_a_reason_and_is_idempotent, manual);

async fn an_expired_key_may_be_revoked(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"ttl_secs": 10})).await;
    app.advance(11);
    assert_eq!(get_key(&app, &id).await["status"], "expired");
    assert_eq!(app.verify_code(&key).await, "EXPIRED");
    let res = app
        .post(
            &format!("/v1/keys/{id}/revoke"),
            json!({"reason": "cleanup"}),
        )
        .await
        .expect(200);
    assert_eq!(res.body["status"], "revoked");
    assert_eq!(app.verify_code(&key).await, "REVOKED");
}
both!(an_expired_key_may_be_revoked, manual);

async fn bulk_revoke_covers_every_live_key_of_the_owner(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let other = app.keyspace(json!({})).await;
    let (active, k_active) = app.key(&ks, json!({"owner": "leaver"})).await;
    let (disabled, k_disabled) = app
        .key(&ks, json!({"owner": "leaver", "enabled": false}))
        .await;
    let (rotated, k_rotated) = app.key(&ks, json!({"owner": "leaver"})).await;
    let (successor, k_successor) = app.rotate(&rotated, json!({"grace_secs": 3600})).await;
    let (revoked, _) = app.key(&ks, json!({"owner": "leaver"})).await;
    let first_revoke = app
        .post(
            &format!("/v1/keys/{revoked}/revoke"),
            json!({"reason": "earlier"}),
        )
        .await
        .expect(200);
    let (expired, _) = app
        .key(&ks, json!({"owner": "leaver", "ttl_secs": 5}))
        .await;
    let (elsewhere, k_elsewhere) = app.key(&other, json!({"owner": "leaver"})).await;
    let (stays, k_stays) = app.key(&ks, json!({"owner": "stayer"})).await;
    app.advance(6);

    err(
        &app.post("/v1/keys/revoke", json!({"owner": "leaver"}))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post("/v1/keys/revoke", json!({"owner": "leaver", "reason": ""}))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post("/v1/keys/revoke", json!({"reason": "x"})).await,
        400,
        "BAD_REQUEST",
    );

    // Limited to one keyspace first.
    let res = app
        .post(
            "/v1/keys/revoke",
            json!({"owner": "leaver", "keyspace_id": other, "reason": "left the company"}),
        )
        .await
        .expect(200);
    assert_eq!(res.body["revoked"], 1);
    assert_eq!(res.body["key_ids"], json!([elsewhere]));
    assert_eq!(app.verify_code(&k_elsewhere).await, "REVOKED");
    assert_eq!(app.verify_code(&k_active).await, "VALID");

    let res = app
        .post(
            "/v1/keys/revoke",
            json!({"owner": "leaver", "reason": "left the company"}),
        )
        .await
        .expect(200);
    let got: HashSet<String> = res.body["key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, set(&[&active, &disabled, &rotated, &successor]));
    assert_eq!(res.body["revoked"], 4);
    assert_eq!(res.body["key_ids"].as_array().unwrap().len(), 4);
    for (id, key) in [
        (&active, &k_active),
        (&disabled, &k_disabled),
        (&rotated, &k_rotated),
        (&successor, &k_successor),
    ] {
        let k = get_key(&app, id).await;
        assert_eq!(k["status"], "revoked", "{id}");
        assert_eq!(k["revoked_reason"], "left the company");
        assert_eq!(app.verify_code(key).await, "REVOKED");
    }
    // Already revoked keeps its first revocation; expired stays expired; others untouched.
    assert_eq!(
        get_key(&app, &revoked).await["revoked_at"],
        first_revoke.body["revoked_at"]
    );
    assert_eq!(get_key(&app, &revoked).await["revoked_reason"], "earlier");
    let e = get_key(&app, &expired).await;
    assert_eq!(e["status"], "expired");
    assert!(e["revoked_at"].is_null());
    assert_eq!(get_key(&app, &stays).await["status"], "active");
    assert_eq!(app.verify_code(&k_stays).await, "VALID");
    // One key.revoke event per key revoked.
    for id in [&active, &disabled, &rotated, &successor, &elsewhere] {
        assert_eq!(
            audit(&app, &format!("target_id={id}&action=key.revoke"))
                .await
                .len(),
            1,
            "{id}"
        );
    }
    assert_eq!(
        audit(&app, &format!("target_id={expired}&action=key.revoke"))
            .await
            .len(),
        0
    );
    // Again: nothing left to revoke.
    let res = app
        .post(
            "/v1/keys/revoke",
            json!({"owner": "leaver", "reason": "again"}),
        )
        .await
        .expect(200);
    assert_eq!(res.body, json!({"revoked": 0, "key_ids": []}));
}
both!(bulk_revoke_covers_every_live_key_of_the_owner, manual);

// ---------------------------------------------------------------- rotate

async fn rotation_copies_the_key_and_ends_the_old_one_after_its_grace(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let t0 = now(&app);
    let (old, old_key) = app
        .key(&ks, json!({"name": "billing", "owner": "team-billing", "scopes": ["orders:read"], "labels": {"env": "prod"},
                          "meta": {"plan": "pro"}, "ratelimit": {"limit": 100, "window_secs": 60}, "remaining": 50,
                          "allowed_cidrs": ["127.0.0.0/8"], "ttl_secs": 10 * DAY}))
        .await;
    app.advance(1000);
    let t1 = now(&app);
    let res = app
        .post(
            &format!("/v1/keys/{old}/rotate"),
            json!({"grace_secs": 3600, "reason": "scheduled"}),
        )
        .await
        .expect(201);
    let new = res.id();
    let new_key = res.body["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_ne!(new_key, old_key);
    let n = &res.body;
    for f in [
        "name",
        "owner",
        "scopes",
        "labels",
        "meta",
        "ratelimit",
        "allowed_cidrs",
        "remaining",
        "keyspace_id",
        "enabled",
    ] {
        assert_eq!(n[f], get_key(&app, &old).await[f], "{f} is copied");
    }
    assert_eq!(n["rotated_from"], old.as_str());
    assert!(n["rotated_to"].is_null());
    assert_eq!(n["status"], "active");
    assert_eq!(ms(&n["created_at"]), t1);
    assert_eq!(
        ms(&n["expires_at"]),
        t1 + 10 * DAY * 1000,
        "the old key's lifetime"
    );
    assert_eq!(n["call_count"], 0);
    assert!(n["last_used_at"].is_null());

    let o = get_key(&app, &old).await;
    assert_eq!(o["rotated_to"], new.as_str());
    assert_eq!(o["status"], "rotating");
    assert_eq!(
        ms(&o["expires_at"]),
        t1 + 3_600_000,
        "min(own expiry, now + grace)"
    );
    assert!(o["revoked_at"].is_null());
    assert_eq!(ms(&o["created_at"]), t0);

    let ip = json!("127.0.0.1");
    assert_eq!(
        app.verify(json!({"key": old_key, "ip": ip})).await["code"],
        "VALID",
        "the old key works in its grace"
    );
    assert_eq!(
        app.verify(json!({"key": new_key, "ip": ip})).await["code"],
        "VALID"
    );
    app.advance(3599);
    assert_eq!(
        app.verify(json!({"key": old_key, "ip": ip})).await["code"],
        "VALID"
    );
    app.advance(1);
    assert_eq!(
        app.verify(json!({"key": old_key, "ip": ip})).await["code"],
        "EXPIRED"
    );
    assert_eq!(get_key(&app, &old).await["status"], "expired");
    assert_eq!(
        app.verify(json!({"key": new_key, "ip": ip})).await["code"],
        "VALID"
    );

    // One key.rotate event on the old key; no key.create for the successor.
    let events = audit(&app, &format!("target_id={old}")).await;
    let rotates: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key.rotate")
        .collect();
    assert_eq!(rotates.len(), 1, "{events:?}");
    assert_eq!(rotates[0]["changes"]["rotated_to"], json!([null, new]));
    assert_eq!(rotates[0]["target_type"], "key");
    assert_eq!(rotates[0]["reason"], "scheduled");
    assert!(
        audit(&app, &format!("target_id={new}")).await.is_empty(),
        "no event targets the successor"
    );
    assert_eq!(
        audit(&app, "action=key.create").await.len(),
        1,
        "only the original key was created"
    );
    let text = app
        .get("/v1/audit?limit=500")
        .await
        .expect(200)
        .body
        .to_string();
    assert!(
        !text.contains(&new_key) && !text.contains(&old_key),
        "no plaintext in the audit trail"
    );
}
both!(
    rotation_copies_the_key_and_ends_the_old_one_after_its_grace,
    manual
);

async fn rotation_grace_defaults_to_the_policy_and_never_extends_a_key(app: TestApp) {
    let ks = app.keyspace(json!({"rotation_grace_secs": 300})).await;
    let (a, _) = app.key(&ks, json!({})).await;
    let t0 = now(&app);
    app.post(&format!("/v1/keys/{a}/rotate"), json!({}))
        .await
        .expect(201);
    assert_eq!(ms(&get_key(&app, &a).await["expires_at"]), t0 + 300_000);
    // A grace longer than the key's remaining life keeps its own expiry.
    let (b, _) = app.key(&ks, json!({"ttl_secs": 100})).await;
    app.post(&format!("/v1/keys/{b}/rotate"), json!({"grace_secs": 5000}))
        .await
        .expect(201);
    assert_eq!(ms(&get_key(&app, &b).await["expires_at"]), t0 + 100_000);
    // The successor's lifetime is the old key's, capped by the policy.
    let tight = app.keyspace(json!({"max_lifetime_secs": 1000})).await;
    let (c, _) = app.key(&tight, json!({"ttl_secs": 800})).await;
    app.advance(10);
    let succ = app
        .post(&format!("/v1/keys/{c}/rotate"), json!({"grace_secs": 0}))
        .await
        .expect(201);
    assert_eq!(ms(&succ.body["expires_at"]), t0 + 10_000 + 800_000);
    app.patch(
        &format!("/v1/keyspaces/{tight}"),
        json!({"policy": {"max_lifetime_secs": 500}}),
    )
    .await
    .expect(200);
    let succ2 = app
        .post(
            &format!("/v1/keys/{}/rotate", succ.id()),
            json!({"grace_secs": 0}),
        )
        .await
        .expect(201);
    assert_eq!(ms(&succ2.body["expires_at"]), t0 + 10_000 + 500_000);
}
both!(
    rotation_grace_defaults_to_the_policy_and_never_extends_a_key,
    manual
);

async fn rotation_with_zero_grace_revokes_the_old_key_at_once(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (old, old_key) = app.key(&ks, json!({})).await;
    assert_eq!(app.verify_code(&old_key).await, "VALID");
    let res = app
        .post(&format!("/v1/keys/{old}/rotate"), json!({"grace_secs": 0}))
        .await
        .expect(201);
    let new_key = res.body["key"].as_str().unwrap().to_string();
    assert_eq!(app.verify_code(&old_key).await, "REVOKED");
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    let o = get_key(&app, &old).await;
    assert_eq!(o["status"], "revoked");
    assert_eq!(o["rotated_to"], res.id().as_str());
    assert!(o["revoked_at"].is_string());
    assert_eq!(
        audit(&app, &format!("target_id={old}&action=key.rotate"))
            .await
            .len(),
        1
    );
}
both!(rotation_with_zero_grace_revokes_the_old_key_at_once);

async fn rotation_grace_over_the_policy_maximum_is_422(app: TestApp) {
    let ks = app
        .keyspace(json!({"max_grace_secs": 100, "rotation_grace_secs": 50}))
        .await;
    let (id, key) = app.key(&ks, json!({})).await;
    err(
        &app.post(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": 101}))
            .await,
        422,
        "POLICY_VIOLATION",
    );
    err(
        &app.post(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": -1}))
            .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_secs": "10"}),
        )
        .await,
        400,
        "BAD_REQUEST",
    );
    err(
        &app.post(&format!("/v1/keys/{id}/rotate"), json!({"reason": ""}))
            .await,
        400,
        "BAD_REQUEST",
    );
    let k = get_key(&app, &id).await;
    assert_eq!(k["status"], "active");
    assert!(k["rotated_to"].is_null());
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.post(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": 100}))
        .await
        .expect(201);
    // Without a maximum, any grace is fine.
    let free = app.keyspace(json!({"max_grace_secs": null})).await;
    let (f, _) = app.key(&free, json!({})).await;
    app.post(
        &format!("/v1/keys/{f}/rotate"),
        json!({"grace_secs": 30 * DAY}),
    )
    .await
    .expect(201);
}
both!(rotation_grace_over_the_policy_maximum_is_422);

async fn rotating_a_revoked_rotated_or_expired_key_is_409(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (revoked, _) = app.key(&ks, json!({})).await;
    app.post(
        &format!("/v1/keys/{revoked}/revoke"),
        json!({"reason": "x"}),
    )
    .await
    .expect(200);
    err(
        &app.post(&format!("/v1/keys/{revoked}/rotate"), json!({}))
            .await,
        409,
        "CONFLICT",
    );

    let (rotated, _) = app.key(&ks, json!({})).await;
    let succ = app
        .post(&format!("/v1/keys/{rotated}/rotate"), json!({}))
        .await
        .expect(201)
        .id();
    err(
        &app.post(&format!("/v1/keys/{rotated}/rotate"), json!({}))
            .await,
        409,
        "CONFLICT",
    );
    // After a rotation with zero grace the old key is revoked: still 409.
    let (zero, _) = app.key(&ks, json!({})).await;
    app.post(&format!("/v1/keys/{zero}/rotate"), json!({"grace_secs": 0}))
        .await
        .expect(201);
    err(
        &app.post(&format!("/v1/keys/{zero}/rotate"), json!({}))
            .await,
        409,
        "CONFLICT",
    );

    let (expired, _) = app.key(&ks, json!({"ttl_secs": 5})).await;
    app.advance(5);
    err(
        &app.post(&format!("/v1/keys/{expired}/rotate"), json!({}))
            .await,
        409,
        "CONFLICT",
    );
    // The successor may be rotated in turn (a chain).
    let next = app
        .post(&format!("/v1/keys/{succ}/rotate"), json!({}))
        .await
        .expect(201);
    assert_eq!(next.body["rotated_from"], succ.as_str());
    err(
        &app.post("/v1/keys/key_doesnotexist0000000000/rotate", json!({}))
            .await,
        404,
        "NOT_FOUND",
    );
    assert_eq!(audit(&app, "action=key.rotate").await.len(), 3);
}
both!(rotating_a_revoked_rotated_or_expired_key_is_409, manual);

async fn a_disabled_key_rotates_into_a_disabled_successor(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, _) = app.key(&ks, json!({"enabled": false})).await;
    let res = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({}))
        .await
        .expect(201);
    assert_eq!(res.body["enabled"], false);
    assert_eq!(res.body["status"], "disabled");
    let key = res.body["key"].as_str().unwrap().to_string();
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    assert_eq!(
        get_key(&app, &id).await["status"],
        "disabled",
        "disabled outranks rotating"
    );
}
both!(a_disabled_key_rotates_into_a_disabled_successor);

async fn a_quota_follows_a_chain_of_rotations(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (first, first_key) = app.key(&ks, json!({"remaining": 6})).await;
    let grace = json!({"grace_secs": 3600});
    let (second, second_key) = app.rotate(&first, grace.clone()).await;
    let (_, third_key) = app.rotate(&second, grace).await;
    // All three verify during the grace periods, and all spend the one quota, which the
    // last successor holds.
    let mut left = 6;
    for key in [
        &first_key,
        &second_key,
        &third_key,
        &first_key,
        &second_key,
        &third_key,
    ] {
        left -= 1;
        let v = app.verify(json!({"key": key})).await;
        assert_eq!(
            (v["code"].as_str(), v["remaining"].as_i64()),
            (Some("VALID"), Some(left)),
            "{v}"
        );
    }
    for key in [&first_key, &second_key, &third_key] {
        assert_eq!(
            app.verify(json!({"key": key})).await["code"],
            "USAGE_EXCEEDED"
        );
    }
}
both!(a_quota_follows_a_chain_of_rotations, manual);

async fn a_quota_moves_to_the_successor_and_is_never_doubled(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (old, old_key) = app.key(&ks, json!({"remaining": 5})).await;
    assert_eq!(app.verify(json!({"key": old_key})).await["remaining"], 4);
    assert_eq!(app.verify(json!({"key": old_key})).await["remaining"], 3);
    let res = app
        .post(
            &format!("/v1/keys/{old}/rotate"),
            json!({"grace_secs": 3600}),
        )
        .await
        .expect(201);
    let new = res.id();
    let new_key = res.body["key"].as_str().unwrap().to_string();
    assert_eq!(
        res.body["remaining"], 3,
        "the successor starts with what is left"
    );

    // The old key draws from, and reports, the successor's quota.
    assert_eq!(app.verify(json!({"key": old_key})).await["remaining"], 2);
    assert_eq!(app.verify(json!({"key": new_key})).await["remaining"], 1);
    app.flush().await;
    assert_eq!(get_key(&app, &new).await["remaining"], 1);
    assert_eq!(
        get_key(&app, &old).await["remaining"],
        1,
        "a rotating key reports its successor's remaining"
    );
    let listed = app
        .get(&format!("/v1/keys?keyspace_id={ks}"))
        .await
        .expect(200);
    for item in listed.body["items"].as_array().unwrap() {
        assert_eq!(
            item["remaining"], 1,
            "listed {} ({})",
            item["id"], item["status"]
        );
    }
    let v = app.verify(json!({"key": old_key, "cost": 2})).await;
    assert_eq!(v["code"], "USAGE_EXCEEDED");
    assert_eq!(v["key_id"], old.as_str());
    assert_eq!(app.verify(json!({"key": old_key})).await["remaining"], 0);
    assert_eq!(
        app.verify(json!({"key": new_key})).await["code"],
        "USAGE_EXCEEDED"
    );
    assert_eq!(
        app.verify(json!({"key": old_key})).await["code"],
        "USAGE_EXCEEDED"
    );
    app.flush().await;
    let o = get_key(&app, &old).await;
    let n = get_key(&app, &new).await;
    assert_eq!(n["remaining"], 0);
    assert_eq!(o["remaining"], 0);
    // 5 valid uses in all (the original quota): 4 on the old key, 1 on the successor.
    assert_eq!(
        o["call_count"].as_i64().unwrap() + n["call_count"].as_i64().unwrap(),
        5
    );
    assert_eq!(o["call_count"], 4);
    assert_eq!(n["call_count"], 1);
    assert_eq!(o["denied_count"], 2);
    assert_eq!(n["denied_count"], 1);
}
both!(a_quota_moves_to_the_successor_and_is_never_doubled);

/// Many clients creating keys at once on one node: every key is created, each with its event
/// in one unbroken chain, and the node takes them one at a time, so that each follows the one
/// before and is created in one round trip (`keyward_keys_created_predicted_total`). Without
/// that, concurrent creations would each take a transaction and none would be guessed.
async fn keys_created_by_many_clients_at_once_are_each_one_round_trip(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    app.key(&ks, json!({})).await;
    app.key(&ks, json!({})).await;
    let before = app.metric("keyward_keys_created_predicted_total").await;
    let bodies =
        (0..40).map(|i| json!({"keyspace_id": ks, "name": format!("k{i}"), "owner": "team-a"}));
    let answers = create_keys_at_once(&[&app], bodies.collect()).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 201),
        "{answers:?}"
    );
    let guessed = app.metric("keyward_keys_created_predicted_total").await - before;
    // A background job's write may make a guess miss, and the next create take a transaction.
    assert!(
        guessed >= 30,
        "only {guessed} of 40 created in one round trip"
    );
    let check = app.get("/v1/audit/verify").await;
    assert_eq!(check.body["ok"], true, "{}", check.body);
    assert_eq!(app.audit_actions("key.create").await.len(), 42);
}
both!(keys_created_by_many_clients_at_once_are_each_one_round_trip);

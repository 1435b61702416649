//! Named rate limits (several windows on a key, all of which must allow a verification),
//! identity limits counted over all of an identity's keys, and refilling quotas. Time is
//! injected; the cluster cases (three nodes on one PostgreSQL) are at the end.

use std::time::Duration;

use keyward_core::time::Timestamp;
use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{manual, spawn_node, Options, Receiver, TestApp};
use crate::verify::fa_body;

/// The manual clock's start: 2027-01-15T08:00:00Z (aligned to the minute and the hour).
fn t0() -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000)
}

fn at(secs: i64) -> String {
    t0().plus_secs(secs).to_rfc3339()
}

async fn named_limits_must_all_allow_and_the_answer_names_them(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app
        .key(
            &ks,
            json!({"ratelimits": [{"name": "burst", "limit": 2, "window_secs": 10},
                                  {"name": "minute", "limit": 3, "window_secs": 60}]}),
        )
        .await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["code"], "VALID");
    assert!(v["ratelimit"].is_null(), "no limit named default: {v}");
    assert_eq!(
        v["ratelimits"],
        json!([{"name": "burst", "limit": 2, "remaining": 0, "reset_at": at(10)},
               {"name": "minute", "limit": 3, "remaining": 1, "reset_at": at(60)}])
    );
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        (&v["code"], &v["limit"], &v["reset_at"]),
        (&json!("RATE_LIMITED"), &json!("burst"), &json!(at(10)))
    );
    app.advance(10);
    assert_eq!(app.verify_code(&key).await, "VALID", "a new burst window");
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        (&v["code"], &v["limit"], &v["reset_at"]),
        (&json!("RATE_LIMITED"), &json!("minute"), &json!(at(60))),
        "the denial took no burst slot, the minute is spent"
    );

    // Both exhausted: the answer names the one that resets last, as does forward-auth's
    // Retry-After.
    let (_, both) = app
        .key(
            &ks,
            json!({"ratelimits": [{"name": "a", "limit": 1, "window_secs": 30},
                                  {"name": "b", "limit": 1, "window_secs": 60}]}),
        )
        .await;
    assert_eq!(app.verify_code(&both).await, "VALID");
    let v = app.verify(json!({"key": both})).await;
    assert_eq!((&v["limit"], &v["reset_at"]), (&json!("b"), &json!(at(60))));
    let auth = format!("Bearer {both}");
    let res = fa_body(&app, Method::GET, "", &[("authorization", &auth)], None).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.headers["retry-after"], "50", "to the latest reset");
    assert_eq!(res.headers["x-keyward-limit"], "b");

    // Only a valid answer takes a slot: USAGE_EXCEEDED (checked after the limits) takes none.
    let (qid, quota) = app
        .key(
            &ks,
            json!({"remaining": 0, "ratelimits": [{"name": "burst", "limit": 1, "window_secs": 10}]}),
        )
        .await;
    assert_eq!(app.verify_code(&quota).await, "USAGE_EXCEEDED");
    app.patch(&format!("/v1/keys/{qid}"), json!({"remaining": 5}))
        .await
        .expect(200);
    let v = app.verify(json!({"key": quota})).await;
    assert_eq!(
        (&v["code"], &v["ratelimits"][0]["remaining"]),
        (&json!("VALID"), &json!(0))
    );
}
both!(
    named_limits_must_all_allow_and_the_answer_names_them,
    manual
);

async fn ratelimit_stays_the_shorthand_for_the_limit_named_default(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(&ks, json!({"ratelimit": {"limit": 5, "window_secs": 60}}))
        .await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert!(
        k.get("ratelimits").is_none(),
        "a key of one limit keeps its shape: {k}"
    );
    let v = app.verify(json!({"key": key})).await;
    assert!(v.get("ratelimits").is_none(), "{v}");
    assert_eq!(v["ratelimit"]["remaining"], 4);
    let k = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"ratelimits": [{"name": "default", "limit": 5, "window_secs": 60},
                                  {"name": "daily", "limit": 100, "window_secs": 86400}]}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(k["ratelimit"], json!({"limit": 5, "window_secs": 60}));
    // `ratelimit` changes the default limit and keeps the others.
    let k = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"ratelimit": {"limit": 7, "window_secs": 60}}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(k["ratelimits"][0]["limit"], 7);
    assert_eq!(k["ratelimits"][1]["name"], "daily");
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        v["ratelimit"],
        json!({"limit": 7, "remaining": 5, "reset_at": at(60)}),
        "the answer's ratelimit is the default limit, as before"
    );
    assert_eq!(v["ratelimits"][1]["remaining"], 99);
    let updates = app.audit_actions("key.update").await;
    let upd = updates.last().unwrap();
    assert_eq!(upd["changes"]["ratelimit"][1]["limit"], 7);
    let k = app
        .patch(&format!("/v1/keys/{id}"), json!({"ratelimit": null}))
        .await
        .expect(200)
        .body;
    assert!(k["ratelimit"].is_null());
    assert_eq!(k["ratelimits"].as_array().unwrap().len(), 1);
    // A key without limits answers as before: no `ratelimits` member.
    let (_, plain) = app.key(&ks, json!({})).await;
    let v = app.verify(json!({"key": plain})).await;
    assert!(v.get("ratelimits").is_none(), "{v}");
    assert!(v["ratelimit"].is_null());
}
both!(
    ratelimit_stays_the_shorthand_for_the_limit_named_default,
    manual
);

async fn an_identitys_limits_count_all_its_keys_together(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, k1) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, k2) = app
        .key(
            &ks,
            json!({"owner": "acme", "ratelimits": [{"name": "burst", "limit": 100, "window_secs": 1}]}),
        )
        .await;
    let (_, other) = app.key(&ks, json!({"owner": "globex"})).await;
    // Keys cached before the identity had limits follow it at once.
    assert_eq!(app.verify_code(&k1).await, "VALID");
    app.post(
        "/v1/identities",
        json!({"id": "acme", "ratelimits": [{"name": "per-minute", "limit": 5, "window_secs": 60}]}),
    )
    .await
    .expect(201);
    let mut valid = 0;
    for i in 0..8 {
        let v = app
            .verify(json!({"key": if i % 2 == 0 { &k1 } else { &k2 }}))
            .await;
        if v["code"] == "VALID" {
            valid += 1;
            let shared = v["ratelimits"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["identity"] == true)
                .unwrap_or_else(|| panic!("{v}"));
            assert_eq!(shared["name"], "per-minute");
            assert_eq!(shared["remaining"], 5 - valid);
        } else {
            assert_eq!(v["code"], "RATE_LIMITED");
            assert_eq!(v["limit"], "per-minute");
        }
    }
    assert_eq!(valid, 5, "five across both keys");
    let v = app.verify(json!({"key": k2})).await;
    assert_eq!(v["code"], "RATE_LIMITED");
    assert_eq!(app.verify_code(&other).await, "VALID");

    // A higher limit counts on from what was used in the window.
    app.patch(
        "/v1/identities/acme",
        json!({"ratelimits": [{"name": "per-minute", "limit": 7, "window_secs": 60}]}),
    )
    .await
    .expect(200);
    assert_eq!(app.verify_code(&k1).await, "VALID");
    assert_eq!(app.verify_code(&k2).await, "VALID");
    assert_eq!(app.verify_code(&k1).await, "RATE_LIMITED");
    let got = app.get("/v1/identities/acme").await.expect(200).body;
    assert_eq!(got["ratelimits"][0]["limit"], 7);
    let upd = &app.audit_actions("identity.update").await[0];
    assert_eq!(upd["changes"]["ratelimits"][1][0]["limit"], 7);
    // A new window; then without limits the keys are limited by their own only.
    app.advance(60);
    assert_eq!(app.verify_code(&k1).await, "VALID");
    app.patch("/v1/identities/acme", json!({"ratelimits": []}))
        .await
        .expect(200);
    for _ in 0..10 {
        assert_eq!(app.verify_code(&k1).await, "VALID");
    }
}
both!(an_identitys_limits_count_all_its_keys_together, manual);

/// The most a key and its identity may have (eight limits each) all count, the tightest of
/// either denying, and a change of a key's limits keeps the windows of those it keeps.
async fn eight_limits_on_a_key_and_eight_on_its_identity_all_count(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    // Limit i allows 20 - i per window: the key's last (13) is its tightest.
    let limits = |prefix: &str, first: i64| {
        (0..8)
            .map(|i| json!({"name": format!("{prefix}{i}"), "limit": first - i, "window_secs": 60 + i}))
            .collect::<Vec<_>>()
    };
    app.post(
        "/v1/identities",
        json!({"id": "wide", "ratelimits": limits("id", 30)}),
    )
    .await
    .expect(201);
    let (id, key) = app
        .key(
            &ks,
            json!({"owner": "wide", "ratelimits": limits("own", 20)}),
        )
        .await;
    let v = app.verify(json!({"key": key})).await;
    let states = v["ratelimits"].as_array().unwrap();
    assert_eq!(states.len(), 16, "{v}");
    for (i, s) in states.iter().enumerate() {
        let (identity, n) = (i >= 8, i as i64 % 8);
        let first = if identity { 30 } else { 20 };
        assert_eq!(s["remaining"], first - n - 1, "{s}");
        assert_eq!(s.get("identity").is_some(), identity, "{s}");
    }
    for _ in 1..13 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        (&v["code"], &v["limit"]),
        (&json!("RATE_LIMITED"), &json!("own7"))
    );
    // The identity's windows took thirteen, not fourteen: a denial takes no slot.
    let (_, second) = app.key(&ks, json!({"owner": "wide"})).await;
    let v = app.verify(json!({"key": second})).await;
    assert_eq!(v["ratelimits"][7]["remaining"], 23 - 14, "{v}");
    // Dropping the tightest limit keeps the others' windows: own6 (14) has one left.
    app.patch(
        &format!("/v1/keys/{id}"),
        json!({"ratelimits": limits("own", 20)[..7]}),
    )
    .await
    .expect(200);
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["code"], "VALID", "{v}");
    assert_eq!(v["ratelimits"][6]["remaining"], 0, "{v}");
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(
        (&v["code"], &v["limit"]),
        (&json!("RATE_LIMITED"), &json!("own6"))
    );
}
both!(
    eight_limits_on_a_key_and_eight_on_its_identity_all_count,
    manual
);

/// A call its identity's limit denies takes nothing of the key's own windows (the lean path
/// and, with a quota, the general one), with limits held inline and beyond.
async fn an_identitys_denial_takes_nothing_of_the_keys_own_limits(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    app.post(
        "/v1/identities",
        json!({"id": "tight", "ratelimits": [{"name": "per-minute", "limit": 2, "window_secs": 60}]}),
    )
    .await
    .expect(201);
    let hourly = |n: usize| {
        (0..n)
            .map(|i| json!({"name": format!("h{i}"), "limit": 100, "window_secs": 3600}))
            .collect::<Vec<_>>()
    };
    let (_, other) = app.key(&ks, json!({"owner": "tight"})).await;
    let keys = [
        json!({"owner": "tight", "ratelimits": hourly(1)}),
        json!({"owner": "tight", "ratelimits": hourly(5)}),
        json!({"owner": "tight", "ratelimits": hourly(5), "remaining": 50}),
    ];
    for body in keys {
        let (_, key) = app.key(&ks, body.clone()).await;
        // The identity's minute spent by another key.
        while app.verify_code(&other).await == "VALID" {}
        for _ in 0..3 {
            let v = app.verify(json!({"key": key})).await;
            assert_eq!(
                (&v["code"], &v["limit"]),
                (&json!("RATE_LIMITED"), &json!("per-minute")),
                "{body}: {v}"
            );
        }
        app.advance(60);
        let v = app.verify(json!({"key": key})).await;
        assert_eq!(v["code"], "VALID", "{body}: {v}");
        let n = body["ratelimits"].as_array().unwrap().len();
        for own in &v["ratelimits"].as_array().unwrap()[..n] {
            assert_eq!(
                own["remaining"], 99,
                "the denials took no slot: {body}: {v}"
            );
        }
        if body.get("remaining").is_some() {
            assert_eq!(v["remaining"], 49, "{v}");
        }
    }
}
both!(
    an_identitys_denial_takes_nothing_of_the_keys_own_limits,
    manual
);

async fn limits_and_refills_refuse_bad_input_naming_the_field(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let limit = |name: &str, window: i64| json!({"name": name, "limit": 1, "window_secs": window});
    let nine: Vec<Value> = (0..9).map(|i| limit(&format!("l{i}"), 60)).collect();
    let key_inside = format!(
        "cust {}",
        keyward_core::keyformat::generate("acme").expose()
    );
    for (body, field) in [
        (json!({"ratelimits": nine}), "ratelimits"),
        (
            json!({"ratelimits": [limit("a", 0)]}),
            "ratelimits[0].window_secs",
        ),
        (
            json!({"ratelimits": [limit("a", 60), limit("b", -5)]}),
            "ratelimits[1].window_secs",
        ),
        (
            json!({"ratelimits": [limit("a", 60), limit("a", 5)]}),
            "ratelimits[1].name",
        ),
        (
            json!({"ratelimits": [limit("a b", 60)]}),
            "ratelimits[0].name",
        ),
        (
            json!({"ratelimits": [{"name": "a", "limit": 0, "window_secs": 1}]}),
            "ratelimits[0].limit",
        ),
        (
            json!({"ratelimits": [limit("a", 60)], "ratelimit": {"limit": 1, "window_secs": 1}}),
            "ratelimit",
        ),
        (
            json!({"remaining": 5, "refill": {"amount": 5, "interval": "weekly"}}),
            "refill.interval",
        ),
        (
            json!({"remaining": 5, "refill": {"amount": 5, "interval": 0}}),
            "refill.interval",
        ),
        (
            json!({"refill": {"amount": 5, "interval": "daily"}}),
            "refill",
        ),
        (
            json!({"remaining": 5, "refill": {"amount": -1, "interval": "daily"}}),
            "refill.amount",
        ),
    ] {
        let mut b = body.clone();
        b["keyspace_id"] = json!(ks);
        b["name"] = json!("k");
        let r = app.post("/v1/keys", b).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let (id, _) = app.key(&ks, json!({})).await;
    for (body, field) in [
        (
            json!({"refill": {"amount": 5, "interval": "daily"}}),
            "refill",
        ),
        (
            json!({"remaining": null, "refill": {"amount": 5, "interval": "daily"}}),
            "refill",
        ),
        (
            json!({"ratelimits": [limit("a", 0)]}),
            "ratelimits[0].window_secs",
        ),
    ] {
        let r = app.patch(&format!("/v1/keys/{id}"), body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(field));
    }
    for (body, field) in [
        (
            json!({"id": "acme", "ratelimits": (0..9).map(|i| limit(&format!("l{i}"), 60)).collect::<Vec<_>>()}),
            "ratelimits",
        ),
        (
            json!({"id": "acme", "ratelimits": [limit("a", 0)]}),
            "ratelimits[0].window_secs",
        ),
        (json!({"id": key_inside}), "id"),
    ] {
        let r = app.post("/v1/identities", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(field));
    }
    // Nothing was created or changed.
    let keys = app.get(&format!("/v1/keys?keyspace_id={ks}")).await.body;
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);
    assert!(keys["items"][0].get("ratelimits").is_none());
    assert!(keys["items"][0]["remaining"].is_null());
    app.get("/v1/identities/acme").await.expect(404);
}
both!(limits_and_refills_refuse_bad_input_naming_the_field);

async fn a_quota_refills_each_period(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app
        .key(
            &ks,
            json!({"remaining": 3, "refill": {"amount": 3, "interval": "daily"}}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    assert_eq!(app.verify_code(&key).await, "USAGE_EXCEEDED");
    app.flush().await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert_eq!(k["remaining"], 0);
    assert_eq!(k["refill"], json!({"amount": 3, "interval": "daily"}));
    assert_eq!(k["refilled_at"], "2027-01-15T00:00:00Z");
    // 00:00 UTC the next day: a read shows the new period's quota at once.
    app.advance(16 * 3600 - 1);
    assert_eq!(app.verify_code(&key).await, "USAGE_EXCEEDED");
    app.advance(1);
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert_eq!(
        (&k["remaining"], &k["refilled_at"]),
        (&json!(3), &json!("2027-01-16T00:00:00Z"))
    );
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["code"], "USAGE_EXCEEDED");

    // A change made after a period began (before any node leased from it) starts from the
    // refilled quota, and the refill it was owed is not lost or given twice.
    app.advance(24 * 3600);
    let k = app
        .patch(
            &format!("/v1/keys/{id}"),
            json!({"refill": {"amount": 5, "interval": "daily"}}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        k["remaining"], 3,
        "today's quota, refilled; the new amount from tomorrow"
    );
    let mut valid = 0;
    while app.verify_code(&key).await == "VALID" {
        valid += 1;
    }
    assert_eq!(valid, 3);
    app.advance(24 * 3600);
    let k = app
        .patch(&format!("/v1/keys/{id}"), json!({"remaining": 2}))
        .await
        .expect(200)
        .body;
    assert_eq!(
        (&k["remaining"], &k["refilled_at"]),
        (&json!(2), &json!("2027-01-18T00:00:00Z")),
        "a quota set now is this period's"
    );
    let mut valid = 0;
    while app.verify_code(&key).await == "VALID" {
        valid += 1;
    }
    assert_eq!(valid, 2, "not refilled over the value just set");
    app.advance(24 * 3600);
    let mut valid = 0;
    while app.verify_code(&key).await == "VALID" {
        valid += 1;
    }
    assert_eq!(valid, 5, "the new amount from the next period");

    // Every so many seconds, counted from when the refill was set.
    let (id2, key2) = app
        .key(
            &ks,
            json!({"remaining": 2, "refill": {"amount": 5, "interval": 3600}}),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(app.verify_code(&key2).await, "VALID");
    }
    assert_eq!(app.verify_code(&key2).await, "USAGE_EXCEEDED");
    app.advance(3600);
    let mut valid = 0;
    while app.verify_code(&key2).await == "VALID" {
        valid += 1;
    }
    assert_eq!(valid, 5, "the refill sets remaining to amount");
    // Without a refill the quota stays spent.
    app.patch(&format!("/v1/keys/{id2}"), json!({"refill": null}))
        .await
        .expect(200);
    app.advance(3600);
    assert_eq!(app.verify_code(&key2).await, "USAGE_EXCEEDED");
    let updates = app.audit_actions("key.update").await;
    let upd = updates.last().unwrap();
    assert_eq!(upd["changes"]["refill"][0]["interval"], 3600);
    assert!(upd["changes"]["refill"][1].is_null());
    // No quota, nothing to refill.
    let k = app
        .patch(&format!("/v1/keys/{id}"), json!({"remaining": null}))
        .await
        .expect(200)
        .body;
    assert!(k.get("refill").is_none() || k["refill"].is_null(), "{k}");
}
both!(a_quota_refills_each_period, manual);

async fn thresholds_are_announced_once_per_key_limit_and_period(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["key.rate_limited", "key.quota_low"])
        .await;
    let ks = app.keyspace(json!({"quota_low_percent": 50})).await;
    let (_, limited) = app
        .key(
            &ks,
            json!({"ratelimits": [{"name": "burst", "limit": 1, "window_secs": 10}]}),
        )
        .await;
    let (_, quota) = app
        .key(
            &ks,
            json!({"remaining": 4, "refill": {"amount": 4, "interval": "daily"}}),
        )
        .await;
    // A second node on the same database, denying the same key in the same window.
    let b = spawn_node(&app).await;
    assert_eq!(app.verify_code(&limited).await, "VALID");
    for _ in 0..3 {
        assert_eq!(app.verify_code(&limited).await, "RATE_LIMITED");
    }
    assert_eq!(b.verify_code(&limited).await, "VALID");
    assert_eq!(b.verify_code(&limited).await, "RATE_LIMITED");
    // 4 -> 3 -> 2 -> 1 (below half of 4) -> 0: one notice.
    for _ in 0..4 {
        assert_eq!(app.verify_code(&quota).await, "VALID");
    }
    app.flush().await;
    b.flush().await;
    app.deliver().await;
    let rl = rx.wait_for("key.rate_limited", 1).await;
    let ql = rx.wait_for("key.quota_low", 1).await;
    assert_eq!(
        rl.len(),
        1,
        "once per key, limit and window, whichever node denied"
    );
    assert_eq!(
        rl[0]["data"]["limit"],
        json!({"name": "burst", "limit": 1, "window_secs": 10, "identity": false, "reset_at": at(10)})
    );
    assert_eq!(ql.len(), 1);
    assert_eq!(ql[0]["data"]["quota"]["remaining"], 1);
    assert_eq!(ql[0]["data"]["quota"]["below"], 2);
    assert_eq!(ql[0]["data"]["key"]["refill"]["amount"], 4);

    // The next window, the next period: announced again.
    app.advance(16 * 3600);
    assert_eq!(app.verify_code(&limited).await, "VALID");
    assert_eq!(app.verify_code(&limited).await, "RATE_LIMITED");
    for _ in 0..3 {
        assert_eq!(app.verify_code(&quota).await, "VALID");
    }
    app.flush().await;
    app.deliver().await;
    assert_eq!(rx.wait_for("key.rate_limited", 2).await.len(), 2);
    assert_eq!(rx.wait_for("key.quota_low", 2).await.len(), 2);
    assert!(rx.all_signatures_valid());
    b.stop().await;
}
both!(
    thresholds_are_announced_once_per_key_limit_and_period,
    manual
);

async fn an_identitys_quota_is_shared_by_its_keys_and_refills(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, k1) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, k2) = app
        .key(&ks, json!({"owner": "acme", "remaining": 100}))
        .await;
    assert_eq!(
        app.verify_code(&k1).await,
        "VALID",
        "cached before the quota"
    );
    let created = app
        .post(
            "/v1/identities",
            json!({"id": "acme", "remaining": 6, "refill": {"amount": 6, "interval": "daily"}}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(created["refilled_at"], "2027-01-15T00:00:00Z");
    let mut valid = 0;
    for i in 0..10 {
        let v = app
            .verify(json!({"key": if i % 2 == 0 { &k1 } else { &k2 }}))
            .await;
        if v["code"] == "VALID" {
            valid += 1;
            assert_eq!(
                v["remaining"],
                6 - valid,
                "the smaller of the key's and the identity's"
            );
        } else {
            assert_eq!(v["code"], "USAGE_EXCEEDED");
        }
    }
    assert_eq!(valid, 6, "six across both keys");
    app.flush().await;
    let i = app.get("/v1/identities/acme").await.expect(200).body;
    assert_eq!(i["remaining"], 0);
    let k = app
        .get(&format!("/v1/keys?owner=acme&keyspace_id={ks}"))
        .await
        .body;
    let own: Vec<_> = k["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["remaining"].clone())
        .collect();
    assert!(
        own.contains(&json!(97)),
        "the key's own quota was spent too: {own:?}"
    );

    // The next day: refilled, read and spent at once.
    app.advance(16 * 3600);
    let i = app.get("/v1/identities/acme").await.expect(200).body;
    assert_eq!(
        (&i["remaining"], &i["refilled_at"]),
        (&json!(6), &json!("2027-01-16T00:00:00Z"))
    );
    let mut valid = 0;
    while app
        .verify_code(if valid % 2 == 0 { &k1 } else { &k2 })
        .await
        == "VALID"
    {
        valid += 1;
    }
    assert_eq!(valid, 6);
    // Set anew, then removed.
    app.patch("/v1/identities/acme", json!({"remaining": 2}))
        .await
        .expect(200);
    assert_eq!(app.verify_code(&k1).await, "VALID");
    assert_eq!(app.verify_code(&k2).await, "VALID");
    assert_eq!(app.verify_code(&k1).await, "USAGE_EXCEEDED");
    let i = app
        .patch("/v1/identities/acme", json!({"remaining": null}))
        .await
        .expect(200)
        .body;
    assert!(
        i.get("remaining").is_none() && i.get("refill").is_none(),
        "{i}"
    );
    for _ in 0..10 {
        assert_eq!(app.verify_code(&k1).await, "VALID");
    }
    let upd = app.audit_actions("identity.update").await;
    assert_eq!(upd[0]["changes"]["remaining"], json!([0, 2]));
    assert_eq!(
        upd[1]["changes"]["remaining"],
        json!([0, null]),
        "both spent"
    );
}
both!(an_identitys_quota_is_shared_by_its_keys_and_refills, manual);

/// The members of every answer a key without the new features gets are exactly those it got
/// before them (keys with no limit, the one-limit shorthand, a quota, an address rule; each
/// outcome code they can have), on `/v1/verify` and forward-auth.
async fn answers_of_keys_without_the_new_features_keep_their_shape(app: TestApp) {
    fn members(v: &Value) -> Vec<String> {
        let mut m: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        m.sort();
        m
    }
    let valid: Vec<String> = [
        "code",
        "expires_at",
        "key_id",
        "keyspace_id",
        "labels",
        "meta",
        "name",
        "owner",
        "ratelimit",
        "remaining",
        "scopes",
        "valid",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let denied = |extra: &[&str]| {
        let mut m: Vec<String> = ["code", "key_id", "keyspace_id", "valid"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        m.sort();
        m
    };
    let ks = app.keyspace(json!({})).await;
    let (_, plain) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, limited) = app
        .key(
            &ks,
            json!({"ratelimit": {"limit": 1, "window_secs": 60}, "remaining": 5}),
        )
        .await;
    let (_, quota) = app.key(&ks, json!({"remaining": 1})).await;
    let (_, walled) = app.key(&ks, json!({"allowed_cidrs": ["10.0.0.0/8"]})).await;
    for key in [&plain, &limited, &quota] {
        assert_eq!(
            members(&app.verify(json!({"key": key})).await),
            valid,
            "{key}"
        );
    }
    let v = app.verify(json!({"key": limited})).await;
    assert_eq!(
        (v["code"].as_str(), members(&v)),
        (Some("RATE_LIMITED"), denied(&["reset_at"]))
    );
    let v = app.verify(json!({"key": quota})).await;
    assert_eq!(
        (v["code"].as_str(), members(&v)),
        (Some("USAGE_EXCEEDED"), denied(&[]))
    );
    let v = app.verify(json!({"key": walled})).await;
    assert_eq!(
        (v["code"].as_str(), members(&v)),
        (Some("IP_NOT_ALLOWED"), denied(&[]))
    );
    let auth = format!("Bearer {limited}");
    let res = fa_body(&app, Method::GET, "", &[("authorization", &auth)], None).await;
    assert_eq!(res.status, 429);
    assert!(res.headers.get("x-keyward-limit").is_none());
    let id = app
        .post("/v1/identities", json!({"id": "acme"}))
        .await
        .expect(201)
        .body;
    assert!(
        id.get("ratelimits").is_none() && id.get("remaining").is_none(),
        "{id}"
    );
}
both!(answers_of_keys_without_the_new_features_keep_their_shape);

// ---------------------------------------------------------------- three nodes

async fn three_nodes(redis: bool, manual_clock: bool) -> Option<(TestApp, TestApp, TestApp)> {
    let mut o = Options {
        manual_clock,
        ..Options::default()
    };
    if redis {
        if !keyward_store::testing::redis_available().await {
            return None;
        }
        o.config.redis_url = Some(
            keyward_server::config::RedisUrl::parse(&keyward_store::testing::redis_url()).unwrap(),
        );
    }
    let a = crate::helpers::spawn_with(crate::helpers::Backend::Postgres, o).await?;
    let b = spawn_node(&a).await;
    let c = spawn_node(&a).await;
    Some((a, b, c))
}

async fn spread(nodes: [&TestApp; 3], keys: &[String], n: usize) -> usize {
    crate::helpers::spread(&nodes, keys, n).await
}

/// Three keys of one identity whose limit is 300 an hour. The identity's id is new to every
/// run: Redis keeps its counters for the window, across test runs.
async fn identity_keys(a: &TestApp) -> Vec<String> {
    let id = keyward_core::id::new_id("acme", Timestamp::from_millis(0));
    a.post(
        "/v1/identities",
        json!({"id": id, "ratelimits": [{"name": "hourly", "limit": 300, "window_secs": 3600}]}),
    )
    .await
    .expect(201);
    let ks = a.keyspace(json!({})).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(a.key(&ks, json!({"owner": id})).await.1);
    }
    keys
}

/// A node's `keyward_redis_errors_total`: calls to Redis that failed (a verification decided on
/// the node's own windows, or a denial's slots not given back).
async fn redis_errors(node: &TestApp) -> u64 {
    node.metric("keyward_redis_errors_total").await
}

/// 1,200 verifications of an identity's three keys over three nodes: how many are valid, and
/// how many times a node found Redis not answering.
async fn identity_limit_on_three_nodes(redis: bool) -> Option<(usize, u64)> {
    let (a, b, c) = three_nodes(redis, false).await?;
    let keys = identity_keys(&a).await;
    let valid = spread([&a, &b, &c], &keys, 1200).await;
    let errors = redis_errors(&a).await + redis_errors(&b).await + redis_errors(&c).await;
    b.stop().await;
    c.stop().await;
    Some((valid, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_an_identitys_limit_is_granted_exactly_across_three_nodes() {
    if let Some((valid, errors)) = identity_limit_on_three_nodes(true).await {
        assert_eq!(
            (valid, errors),
            (300, 0),
            "the identity's limit over all keys and nodes (and Redis answered every time)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_identitys_limit_holds_per_node() {
    if let Some((valid, _)) = identity_limit_on_three_nodes(false).await {
        assert_eq!(valid, 900, "each node grants the limit (documented)");
    }
}

/// Spends a key's quota across three nodes in waves until none grants anything twice running
/// (between waves the clock moves 3 s, so that idle leases go back and are leased again).
async fn spend_all(nodes: [&TestApp; 3], keys: &[String]) -> usize {
    let mut total = 0;
    let mut quiet = 0;
    while quiet < 2 {
        let v = spread(nodes, keys, 90).await;
        total += v;
        quiet = if v == 0 { quiet + 1 } else { 0 };
        nodes[0].advance(3);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_grants_exactly_its_amount_each_month_across_three_nodes() {
    let Some((a, b, c)) = three_nodes(false, true).await else {
        return;
    };
    let ks = a.keyspace(json!({})).await;
    let (id, key) = a
        .key(
            &ks,
            json!({"remaining": 100, "refill": {"amount": 100, "interval": "monthly"}}),
        )
        .await;
    for (month, boundary) in [
        ("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
        ("2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        ("2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z"),
    ] {
        let granted = spend_all([&a, &b, &c], std::slice::from_ref(&key)).await;
        assert_eq!(granted, 100, "exactly the quota in the month from {month}");
        for n in [&a, &b, &c] {
            n.flush().await;
        }
        let k = a.get(&format!("/v1/keys/{id}")).await.expect(200).body;
        assert_eq!(
            (&k["remaining"], &k["refilled_at"]),
            (&json!(0), &json!(month))
        );
        // To the boundary: a second before it nothing more is granted; at it, the next month's.
        let now = a.state.clock().now();
        let next = Timestamp::parse_rfc3339(boundary).unwrap();
        a.advance((next.millis() - now.millis()) / 1000 - 1);
        assert_eq!(
            spread([&a, &b, &c], std::slice::from_ref(&key), 30).await,
            0
        );
        a.clock.as_ref().unwrap().set(next);
    }
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identitys_quota_is_granted_exactly_across_three_nodes() {
    let Some((a, b, c)) = three_nodes(false, true).await else {
        return;
    };
    a.post(
        "/v1/identities",
        json!({"id": "acme", "remaining": 100, "refill": {"amount": 100, "interval": "monthly"}}),
    )
    .await
    .expect(201);
    let ks = a.keyspace(json!({})).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(a.key(&ks, json!({"owner": "acme"})).await.1);
    }
    assert_eq!(
        spend_all([&a, &b, &c], &keys).await,
        100,
        "the shared quota, exactly"
    );
    a.clock
        .as_ref()
        .unwrap()
        .set(Timestamp::parse_rfc3339("2027-02-01T00:00:00Z").unwrap());
    assert_eq!(
        spend_all([&a, &b, &c], &keys).await,
        100,
        "and again the next month"
    );
    for n in [&a, &b, &c] {
        n.flush().await;
    }
    let i = a.get("/v1/identities/acme").await.expect(200).body;
    assert_eq!(
        (&i["remaining"], &i["refilled_at"]),
        (&json!(0), &json!("2027-02-01T00:00:00Z"))
    );
    b.stop().await;
    c.stop().await;
}

/// An identity's quota set anew, or removed and made again with the identity, is followed by
/// every node: each grants from the new quota only, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identitys_quota_set_anew_is_followed_by_every_node() {
    let Some((a, b, c)) = three_nodes(false, true).await else {
        return;
    };
    a.post("/v1/identities", json!({"id": "acme", "remaining": 50}))
        .await
        .expect(201);
    let ks = a.keyspace(json!({})).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(a.key(&ks, json!({"owner": "acme"})).await.1);
    }
    // Every node holds a lease of the first quota.
    let answers = crate::helpers::spread_answers(&[&a, &b, &c], &keys, 30).await;
    let denied: Vec<&Value> = answers.iter().filter(|r| r["code"] != "VALID").collect();
    assert!(denied.is_empty(), "{denied:?}");
    a.patch("/v1/identities/acme", json!({"remaining": 20}))
        .await
        .expect(200);
    // Within the revocation bound the other nodes read it again (feed rows for its keys).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        spend_all([&a, &b, &c], &keys).await,
        20,
        "the new quota, exactly"
    );

    // Deleted and made again: a new quota, whatever the old one's version was.
    let r = a.delete("/v1/identities/acme").await;
    assert_eq!(r.status, 204);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        spread([&a, &b, &c], &keys, 30).await,
        30,
        "no quota without the identity"
    );
    a.post("/v1/identities", json!({"id": "acme", "remaining": 7}))
        .await
        .expect(201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(spend_all([&a, &b, &c], &keys).await, 7);
    b.stop().await;
    c.stop().await;
}

//! Identities (`/v1/identities`): the owner string keys carry, as an object. Disabling one makes
//! every key of the owner verify `DISABLED` on every node without changing the keys; its usage
//! is its keys' usage; every change is audited.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::helpers::{spawn_node, Receiver, TestApp};

async fn an_identity_covers_its_owners_keys_and_disabling_it_disables_them(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (k1_id, k1) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, k2) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, other) = app.key(&ks, json!({"owner": "globex"})).await;
    for k in [&k1, &k2, &other] {
        assert_eq!(app.verify_code(k).await, "VALID");
    }
    let created = app
        .post(
            "/v1/identities",
            json!({"id": "acme", "name": "Acme Inc.", "meta": {"plan": "pro"}}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(created["id"], "acme");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["meta"]["plan"], "pro");
    app.post("/v1/identities", json!({"id": "acme"}))
        .await
        .expect(409);
    let got = app.get("/v1/identities/acme").await.expect(200).body;
    assert_eq!(got["name"], "Acme Inc.");

    // Disabled: every key of acme is DISABLED at once, the keys themselves unchanged.
    let r = app
        .patch("/v1/identities/acme", json!({"enabled": false}))
        .await
        .expect(200);
    assert_eq!(r.body["enabled"], false);
    for k in [&k1, &k2] {
        assert_eq!(app.verify_code(k).await, "DISABLED");
    }
    assert_eq!(app.verify_code(&other).await, "VALID");
    let key = app.get(&format!("/v1/keys/{k1_id}")).await.expect(200).body;
    assert_eq!(
        (key["enabled"].clone(), key["status"].clone()),
        (json!(true), json!("active"))
    );
    // A key created for a disabled identity is disabled too.
    let (_, k3) = app.key(&ks, json!({"owner": "acme"})).await;
    assert_eq!(app.verify_code(&k3).await, "DISABLED");
    // Enabled again; then deleted (the keys keep their owner and verify as before).
    app.patch("/v1/identities/acme", json!({"enabled": true}))
        .await
        .expect(200);
    assert_eq!(app.verify_code(&k1).await, "VALID");
    app.patch("/v1/identities/acme", json!({"enabled": false}))
        .await
        .expect(200);
    let r = app.delete("/v1/identities/acme").await;
    assert_eq!(r.status, 204);
    assert_eq!(app.verify_code(&k1).await, "VALID");
    app.get("/v1/identities/acme").await.expect(404);

    // Audited, with what changed.
    let actions: Vec<String> = app.get("/v1/audit?limit=100").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_type"] == "identity")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "identity.delete",
            "identity.update",
            "identity.update",
            "identity.update",
            "identity.create"
        ]
    );
    let upd = &app.audit_actions("identity.update").await[0];
    assert_eq!(upd["changes"]["enabled"], json!([true, false]));
}
both!(an_identity_covers_its_owners_keys_and_disabling_it_disables_them);

async fn identities_are_listed_paged_and_refuse_bad_input(app: TestApp) {
    for i in 0..5 {
        app.post("/v1/identities", json!({"id": format!("cust-{i}")}))
            .await
            .expect(201);
    }
    let first = app.get("/v1/identities?limit=3").await.expect(200).body;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    assert_eq!(first["items"][0]["id"], "cust-4", "newest first");
    assert_eq!(
        first["items"][0]["name"], "cust-4",
        "the name defaults to the id"
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/identities?limit=3&cursor={cursor}"))
        .await
        .expect(200)
        .body;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());

    let key_inside = format!(
        "owner {}",
        keyward_core::keyformat::generate("acme").expose()
    );
    for (body, field) in [
        (json!({"id": ""}), "id"),
        (json!({"id": "a\u{1}b"}), "id"),
        (json!({"id": key_inside}), "id"),
        (json!({"id": "x".repeat(201)}), "id"),
        (json!({"id": "ok", "name": " "}), "name"),
        (json!({"id": "ok", "colour": "red"}), "colour"),
        (json!({"name": "no id"}), "id"),
        (json!({"id": ".."}), "id"),
    ] {
        let r = app.post("/v1/identities", body).await;
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{}",
            r.body
        );
    }
    let r = app
        .patch("/v1/identities/cust-1", json!({"id": "other"}))
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .patch("/v1/identities/cust-1", json!({"enabled": null}))
        .await;
    assert_eq!(r.status, 400);
    app.patch("/v1/identities/nobody", json!({"name": "x"}))
        .await
        .expect(404);

    // Changing an identity needs a token not limited to keyspaces (its keys may be anywhere);
    // a viewer may read but not change.
    let ks = app.keyspace(json!({})).await;
    let limited = app.token("manager", Some(vec![ks.as_str()])).await;
    let r = app
        .patch_as(&limited, "/v1/identities/cust-1", json!({"enabled": false}))
        .await;
    assert_eq!(r.status, 403);
    let viewer = app.token("viewer", None).await;
    assert_eq!(
        app.get_as(&viewer, "/v1/identities/cust-1").await.status,
        200
    );
    let r = app
        .post_as(&viewer, "/v1/identities", json!({"id": "v"}))
        .await;
    assert_eq!(r.status, 403);
}
both!(identities_are_listed_paged_and_refuse_bad_input);

async fn an_identitys_usage_sums_its_keys(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (_, a) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, b) = app.key(&ks, json!({"owner": "acme"})).await;
    let (_, c) = app.key(&ks, json!({"owner": "globex"})).await;
    app.post("/v1/identities", json!({"id": "acme"}))
        .await
        .expect(201);
    for (k, n) in [(&a, 3), (&b, 2), (&c, 7)] {
        for _ in 0..n {
            app.verify_code(k).await;
        }
    }
    app.verify(json!({"key": a, "scopes": ["nope"]})).await;
    app.flush().await;
    let u = app.get("/v1/identities/acme/usage").await.expect(200).body;
    assert_eq!(u["identity_id"], "acme");
    assert_eq!(
        u["totals"],
        json!({"valid": 5, "denied": {"INSUFFICIENT_SCOPE": 1}})
    );
    let buckets = u["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty());
    let h = app
        .get("/v1/identities/acme/usage?granularity=hour")
        .await
        .expect(200)
        .body;
    assert_eq!(h["totals"]["valid"], 5);
    app.get("/v1/identities/acme/usage?granularity=x")
        .await
        .expect(400);
    app.get("/v1/identities/nobody/usage").await.expect(404);
}
both!(an_identitys_usage_sums_its_keys);

/// Disabling an identity on one node is honoured on another within a second.
async fn disabling_an_identity_reaches_every_node(a: TestApp) {
    let b = spawn_node(&a).await;
    let ks = a.keyspace(json!({})).await;
    let (_, key) = a.key(&ks, json!({"owner": "acme"})).await;
    a.post("/v1/identities", json!({"id": "acme"}))
        .await
        .expect(201);
    assert_eq!(b.verify_code(&key).await, "VALID");
    a.patch("/v1/identities/acme", json!({"enabled": false}))
        .await
        .expect(200);
    let started = Instant::now();
    while b.verify_code(&key).await != "DISABLED" {
        assert!(started.elapsed() < Duration::from_secs(1), "not within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.stop().await;
}
both!(disabling_an_identity_reaches_every_node);

async fn the_dashboard_creates_shows_and_disables_an_identity(app: TestApp) {
    use crate::dashboard::{add_user, sign_in};
    use keyward_core::model::Role;
    add_user(&app, "ops@example.com", Role::Admin).await;
    let b = sign_in(&app, "ops@example.com").await;
    let ks = app.keyspace(json!({})).await;
    let (key_id, key) = app.key(&ks, json!({"owner": "acme corp"})).await;
    // An id with a slash and dots stays one path segment in every link.
    app.post("/v1/identities", json!({"id": "../keys/x.y"}))
        .await
        .expect(201);
    let list = b.get("/identities").await.text().await.unwrap();
    assert!(list.contains("/identities/%2E%2E%2Fkeys%2Fx%2Ey"), "{list}");
    assert_eq!(
        b.get("/identities/%2E%2E%2Fkeys%2Fx%2Ey").await.status(),
        200
    );
    let r = b
        .post(
            "/identities",
            &[
                ("csrf", b.csrf.as_str()),
                ("id", "acme corp"),
                ("name", "Acme"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(to, "/identities/acme%20corp?done=created");
    let page = b.get(&to).await.text().await.unwrap();
    assert!(
        page.contains("Acme") && page.contains(&key_id),
        "its keys are listed"
    );
    assert!(page.contains("identity-usage"), "its usage chart");
    let list = b.get("/identities").await.text().await.unwrap();
    assert!(list.contains("/identities/acme%20corp"));
    // The same id again: the form says why.
    let r = b
        .post(
            "/identities",
            &[("csrf", b.csrf.as_str()), ("id", "acme corp")],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("exists"));

    let r = b
        .post(
            "/identities/acme%20corp/enabled",
            &[("csrf", b.csrf.as_str()), ("enabled", "false")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    let page = b.get("/identities/acme%20corp").await.text().await.unwrap();
    assert!(page.contains("Enable identity") && page.contains("is disabled"));
    // A viewer sees the page but no forms.
    add_user(&app, "viewer@example.com", Role::Viewer).await;
    let v = sign_in(&app, "viewer@example.com").await;
    let page = v.get("/identities/acme%20corp").await.text().await.unwrap();
    assert!(!page.contains("Enable identity"));
    let r = v
        .post(
            "/identities/acme%20corp/enabled",
            &[("csrf", v.csrf.as_str()), ("enabled", "true")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.verify_code(&key).await, "DISABLED");
}
both!(the_dashboard_creates_shows_and_disables_an_identity);

async fn the_cli_manages_identities(app: TestApp) {
    let run = |args: Vec<&'static str>| {
        let (url, token) = (app.url.clone(), app.admin.clone());
        async move { crate::cli::run(&url, &token, &args).await }
    };
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({"owner": "initech"})).await;
    let o = run(vec!["identities", "create", "initech", "--name", "Initech"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Initech"));
    let o = run(vec!["identities", "disable", "initech"]).await;
    assert!(o.status.success());
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    let o = run(vec!["identities", "show", "initech", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["enabled"], false);
    let o = run(vec!["identities", "enable", "initech"]).await;
    assert!(o.status.success());
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.flush().await;
    let o = run(vec!["identities", "usage", "initech", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["identity_id"], "initech");
    let o = run(vec!["identities", "list"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("initech"));
    let o = run(vec!["identities", "show", "nobody"]).await;
    assert_eq!(o.status.code(), Some(1));
    // Shared limits and quota.
    let o = run(vec![
        "identities",
        "limits",
        "initech",
        "--limit",
        "burst=10/1",
        "--limit",
        "daily=500/86400",
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(vec![
        "identities",
        "quota",
        "initech",
        "--quota",
        "2",
        "--refill",
        "monthly",
        "--json",
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ratelimits"][1]["name"], "daily");
    assert_eq!(
        (&v["remaining"], &v["refill"]),
        (&json!(2), &json!({"amount": 2, "interval": "monthly"}))
    );
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "USAGE_EXCEEDED");
    let o = run(vec!["identities", "limits", "initech", "--limit", "burst"]).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "a malformed limit is a usage error"
    );
    let o = run(vec!["identities", "quota", "initech"]).await;
    assert!(o.status.success());
    assert_eq!(app.verify_code(&key).await, "VALID", "unlimited again");
    let o = run(vec!["identities", "delete", "initech"]).await;
    assert!(o.status.success());
}
both!(the_cli_manages_identities);

async fn disabling_and_enabling_an_identity_are_announced_to_webhooks(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["identity.disabled", "identity.enabled"])
        .await;
    app.post("/v1/identities", json!({"id": "acme"}))
        .await
        .expect(201);
    // A change that does not change how the keys verify sends nothing.
    app.patch("/v1/identities/acme", json!({"name": "Acme"}))
        .await
        .expect(200);
    app.patch("/v1/identities/acme", json!({"enabled": false}))
        .await
        .expect(200);
    let disabled = rx.wait_for("identity.disabled", 1).await;
    assert_eq!(disabled[0]["data"]["identity"]["id"], "acme");
    assert_eq!(disabled[0]["data"]["identity"]["enabled"], false);
    app.delete("/v1/identities/acme").await;
    let enabled = rx.wait_for("identity.enabled", 1).await;
    assert_eq!(enabled[0]["data"]["deleted"], true);
    assert!(rx.all_signatures_valid());
    assert_eq!(rx.received("identity.disabled").len(), 1);
}
both!(disabling_and_enabling_an_identity_are_announced_to_webhooks);

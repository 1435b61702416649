//! Reported leaks (`POST /v1/leaks`): anyone may report a key; a live key is revoked or
//! announced as its keyspace's `on_leak` says; the reporter learns nothing; nothing of the key
//! is stored.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both;
use crate::helpers::{Receiver, TestApp};

/// Posts a report without a token; returns the status and the raw body.
async fn report(app: &TestApp, body: Value) -> (u16, String, reqwest::header::HeaderMap) {
    let r = app
        .http
        .post(format!("{}/v1/leaks", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

async fn until(app: &TestApp, key: &str, code: &str) {
    let started = Instant::now();
    while app.verify_code(key).await != code {
        assert!(started.elapsed() < Duration::from_secs(10), "never {code}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_reported_live_key_is_revoked_and_the_reporter_learns_nothing(app: TestApp) {
    let rx = Receiver::start(0).await;
    app.webhook(&rx, &["key.leaked", "key.revoked"]).await;
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"owner": "acme"})).await;
    let (other_id, _) = app.key(&ks, json!({"owner": "acme"})).await;
    let source = "https://gist.example.com/someone/abc123";

    let (status, body, _) = report(
        &app,
        json!({"key": key, "source": source, "reporter": "security@example.com"}),
    )
    .await;
    assert_eq!((status, body.as_str()), (202, ""));
    until(&app, &key, "REVOKED").await;
    let k = app.get(&format!("/v1/keys/{id}")).await.expect(200).body;
    assert_eq!(k["revoked_reason"], "leaked");
    assert_eq!(k["revoked_by"]["type"], "scanner");
    assert_eq!(k["revoked_by"]["name"], "security@example.com");
    let other = app
        .get(&format!("/v1/keys/{other_id}"))
        .await
        .expect(200)
        .body;
    assert_eq!(other["status"], "active", "only the reported key");

    // The audit trail: the report (with its source) and the revocation, by the scanner.
    let leaked = app.audit_actions("key.leaked").await;
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0]["target_id"], id.as_str());
    assert_eq!(leaked[0]["actor"]["type"], "scanner");
    assert_eq!(leaked[0]["changes"]["source"][1], source);
    let revoked = app.audit_actions("key.revoke").await;
    assert!(revoked
        .iter()
        .any(|e| e["target_id"] == id.as_str() && e["reason"] == "leaked"));

    // The webhooks: key.leaked with the source and what was done, and key.revoked.
    let hooks = rx.wait_for("key.leaked", 1).await;
    assert_eq!(hooks[0]["data"]["source"], source);
    assert_eq!(hooks[0]["data"]["action"], "revoked");
    assert_eq!(hooks[0]["data"]["key"]["id"], id.as_str());
    assert_eq!(rx.wait_for("key.revoked", 1).await.len(), 1);

    // Unknown keys, garbage, a second report of a dead key: the same empty 202.
    let unknown = format!("{}{}", &key[..key.len() - 4], "AAAA");
    for k in [unknown.as_str(), "hello", "x"] {
        let (status, body, _) = report(&app, json!({"key": k})).await;
        assert_eq!((status, body.as_str()), (202, ""));
    }
    let (status, _, _) = report(&app, json!({"key": key, "source": "again"})).await;
    assert_eq!(status, 202);
    let started = Instant::now();
    while app.audit_actions("key.leaked").await.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.audit_actions("key.leaked").await.len(),
        2,
        "a dead key's report is recorded; unknown keys leave nothing"
    );
    assert_eq!(
        app.audit_actions("key.revoke").await.len(),
        revoked.len(),
        "revoked once"
    );

    // Malformed reports are refused; nothing of a key is ever stored.
    for bad in [
        json!({}),
        json!({"key": key, "extra": 1}),
        json!({"key": key, "source": null}),
        json!({"key": 7}),
    ] {
        let (status, body, _) = report(&app, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!body.contains(&key), "never echoed");
    }
    let (_, key2) = app.key(&ks, json!({"owner": "acme"})).await;
    report(
        &app,
        json!({"key": key2, "source": format!("https://paste.example.com/?k={key2}"), "reporter": key2}),
    )
    .await;
    until(&app, &key2, "REVOKED").await;
    let export = app
        .http
        .get(format!("{}/v1/audit/export", app.url))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !export.contains(&key) && !export.contains(&key2),
        "no plaintext in the audit"
    );
    assert!(
        export.contains("[redacted]"),
        "a source holding a key is redacted"
    );
}
both!(a_reported_live_key_is_revoked_and_the_reporter_learns_nothing);

async fn on_leak_notify_announces_without_revoking(app: TestApp) {
    let r = app
        .post(
            "/v1/keyspaces",
            json!({"name": "partners", "prefix": "part", "policy": {"on_leak": "notify"}}),
        )
        .await
        .expect(201);
    assert_eq!(r.body["policy"]["on_leak"], "notify");
    let ks = r.id();
    let (id, key) = app.key(&ks, json!({"owner": "acme"})).await;
    report(&app, json!({"key": key, "source": "ci log"})).await;
    let started = Instant::now();
    while app.audit_actions("key.leaked").await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.verify_code(&key).await,
        "VALID",
        "notify leaves the key alone"
    );
    assert!(app
        .audit_actions("key.revoke")
        .await
        .iter()
        .all(|e| e["target_id"] != id.as_str()));

    // The policy field: a default on new keyspaces, patchable, never null.
    let other = app.keyspace(json!({})).await;
    let v = app
        .get(&format!("/v1/keyspaces/{other}"))
        .await
        .expect(200)
        .body;
    assert_eq!(v["policy"]["on_leak"], "revoke");
    app.patch(
        &format!("/v1/keyspaces/{ks}"),
        json!({"policy": {"on_leak": "revoke"}}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/v1/keyspaces/{ks}"),
        json!({"policy": {"on_leak": null}}),
    )
    .await
    .expect(400);
    app.patch(
        &format!("/v1/keyspaces/{ks}"),
        json!({"policy": {"on_leak": "ignore"}}),
    )
    .await
    .expect(400);
}
both!(on_leak_notify_announces_without_revoking);

async fn reports_are_limited_per_address(app: TestApp) {
    for i in 0..30 {
        let (status, _, _) = report(&app, json!({"key": format!("acme_{i}")})).await;
        assert_eq!(status, 202);
    }
    let (status, body, headers) = report(&app, json!({"key": "acme_x"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"));
}
both!(reports_are_limited_per_address);

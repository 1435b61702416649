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
    // The same key reported again within the hour (a public key reported in a loop): the
    // first report stands, nothing more is written.
    for _ in 0..5 {
        let (status, _, _) = report(&app, json!({"key": key, "source": "again"})).await;
        assert_eq!(status, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.audit_actions("key.leaked").await.len(),
        1,
        "repeats within the hour and unknown keys leave nothing"
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
    let export = app.audit_export("jsonl").await;
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

// ---------------------------------------------------------------- GitHub secret scanning

/// A key pair standing in for GitHub's, its key list (as GitHub publishes it) and a signer.
struct Github {
    pair: ring::signature::EcdsaKeyPair,
    list: String,
}

impl Github {
    fn new(id: &str) -> Github {
        use base64::Engine;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // SubjectPublicKeyInfo of a P-256 key: a fixed prefix and the point.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let list = json!({"public_keys": [
            {"key_identifier": "older", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is_current": false},
            {"key_identifier": id, "key": pem, "is_current": true},
        ]})
        .to_string();
        Github { pair, list }
    }

    fn sign(&self, body: &[u8]) -> String {
        use base64::Engine;
        let rng = ring::rand::SystemRandom::new();
        let sig = self.pair.sign(&rng, body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

async fn github_post(
    app: &TestApp,
    body: &str,
    key_id: Option<&str>,
    signature: Option<&str>,
) -> (u16, Value) {
    let mut r = app
        .http
        .post(format!(
            "{}/v1/integrations/github/secret-scanning",
            app.url
        ))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(id) = key_id {
        r = r.header("Github-Public-Key-Identifier", id);
    }
    if let Some(s) = signature {
        r = r.header("Github-Public-Key-Signature", s);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn github_file() -> crate::helpers::Options {
    let mut o = crate::helpers::Options::default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    o.config.github_keys_file = Some(std::env::temp_dir().join(format!(
        "keyward-github-keys-{}-{nanos}.json",
        std::process::id()
    )));
    o
}

async fn github_secret_scanning_revokes_what_a_signed_payload_names(app: TestApp) {
    let gh = Github::new("kid-current");
    let file = app.state.config.github_keys_file.clone().unwrap();
    std::fs::write(&file, &gh.list).unwrap();
    let ks = app.keyspace(json!({})).await;
    let (id, key) = app.key(&ks, json!({"owner": "acme"})).await;
    let unknown = format!("{}{}", &key[..key.len() - 4], "AAAA");
    let url = "https://github.com/someone/repo/blob/abc/config.yml";
    let payload = json!([
        {"token": key, "type": "keyward_api_key", "url": url, "source": "content"},
        {"token": unknown, "type": "keyward_api_key", "url": url, "source": "content"},
    ])
    .to_string();

    // Unsigned, signed by an unknown key, or a signature of another body: 401, nothing done.
    let (status, _) = github_post(&app, &payload, None, None).await;
    assert_eq!(status, 401);
    let sig = gh.sign(payload.as_bytes());
    let (status, _) = github_post(&app, &payload, Some("kid-unknown"), Some(&sig)).await;
    assert_eq!(status, 401);
    let (status, _) = github_post(&app, &payload, Some("older"), Some(&sig)).await;
    assert_eq!(status, 401);
    let other = gh.sign(b"[]");
    let (status, _) = github_post(&app, &payload, Some("kid-current"), Some(&other)).await;
    assert_eq!(status, 401);
    let (status, _) = github_post(&app, &payload, Some("kid-current"), Some("%%%")).await;
    assert_eq!(status, 401);
    assert_eq!(app.verify_code(&key).await, "VALID", "nothing was done");
    assert!(app.audit_actions("key.leaked").await.is_empty());

    // Signed by GitHub's current key: handled at once, labelled for GitHub.
    let (status, answer) = github_post(&app, &payload, Some("kid-current"), Some(&sig)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!([
            {"token_raw": key, "token_type": "keyward_api_key", "label": "true_positive"},
            {"token_raw": unknown, "token_type": "keyward_api_key", "label": "false_positive"},
        ])
    );
    assert_eq!(app.verify_code(&key).await, "REVOKED");
    let leaked = app.audit_actions("key.leaked").await;
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0]["target_id"], id.as_str());
    assert_eq!(leaked[0]["changes"]["source"][1], url);
    assert_eq!(leaked[0]["actor"]["name"], "GitHub secret scanning");

    // A malformed payload, correctly signed: 400.
    let bad = r#"{"token": "x"}"#;
    let (status, _) = github_post(
        &app,
        bad,
        Some("kid-current"),
        Some(&gh.sign(bad.as_bytes())),
    )
    .await;
    assert_eq!(status, 400);
    let _ = std::fs::remove_file(file);
}
both!(
    github_secret_scanning_revokes_what_a_signed_payload_names,
    github_file
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_keys_are_fetched_from_the_configured_url_and_an_unreachable_list_is_503() {
    let gh = Github::new("kid-url");
    let list = gh.list.clone();
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = fetched.clone();
    let keys = axum::Router::new().route(
        "/meta/public_keys/secret_scanning",
        axum::routing::get(move || {
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let list = list.clone();
            async move { ([("content-type", "application/json")], list) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, keys).await });

    let mut o = crate::helpers::Options::default();
    o.config.github_keys_url = format!("{base}/meta/public_keys/secret_scanning");
    let Some(app) = crate::helpers::spawn_with(crate::helpers::Backend::Sqlite, o).await else {
        return;
    };
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({"owner": "acme"})).await;
    let payload =
        json!([{"token": key, "type": "t", "url": "https://x", "source": "content"}]).to_string();
    let sig = gh.sign(payload.as_bytes());
    let (status, answer) = github_post(&app, &payload, Some("kid-url"), Some(&sig)).await;
    assert_eq!(
        (status, answer[0]["label"].as_str()),
        (200, Some("true_positive"))
    );
    let (status, _) = github_post(&app, &payload, Some("kid-url"), Some(&sig)).await;
    assert_eq!(status, 200);
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "kept, not fetched per call"
    );

    // A list that cannot be read at all: 503, and nothing is done.
    let mut o = crate::helpers::Options::default();
    o.config.github_keys_url = format!("{base}/nowhere");
    let Some(app) = crate::helpers::spawn_with(crate::helpers::Backend::Sqlite, o).await else {
        return;
    };
    let (status, _) = github_post(&app, &payload, Some("kid-url"), Some(&sig)).await;
    assert_eq!(status, 503);
}

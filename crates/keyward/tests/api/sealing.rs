//! Webhook signing secrets at rest: sealed with the master key (generated beside a SQLite
//! database, or given), secrets from before sealing are sealed at start, deliveries still
//! sign, a wrong key stops `serve`, and `keyward master-key rotate` re-seals everything.

use std::process::Command;
use std::sync::Arc;

use keyward_core::model::Actor;
use keyward_core::time::SystemClock;
use keyward_server::authz::Ctx;
use keyward_server::service;
use serde_json::{json, Value};

use crate::helpers::{Receiver, TempDir};
use crate::secrets::{admin_token, post_json, start, start_with, stop};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

async fn stored_secrets(db: &std::path::Path) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT secret FROM webhooks")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

async fn create_key(http: &reqwest::Client, base: &str, token: &str, ks: &Value) {
    let r = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(token)
        .json(&json!({"keyspace_id": ks, "name": "k", "owner": "o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_at_rest_and_deliveries_still_sign() {
    let dir = TempDir::new();
    let db = dir.0.join("keyward.db");
    let url = format!("sqlite://{}", db.display());
    let key_file = dir.0.join("keyward.db.master-key");
    let token = admin_token(&url);

    // A webhook from before sealing: its secret is stored plain.
    let legacy = Receiver::start(0).await;
    {
        let store = keyward_store::open(&url).await.unwrap();
        let state = keyward_server::AppState::new(
            store.clone(),
            Arc::new(SystemClock),
            keyward_server::Config::default(),
        );
        let ctx = Ctx::operator(Actor::cli("test"));
        let (_, secret) = service::create_webhook(
            &state.control,
            &ctx.allow().unwrap(),
            service::CreateWebhook {
                url: legacy.url.clone(),
                events: vec!["key.created".into()],
                keyspace_id: None,
            },
        )
        .await
        .unwrap();
        *legacy.secret.lock().unwrap() = secret.expose().to_string();
        store.close().await;
    }
    assert!(stored_secrets(&db).await[0].starts_with("whsec_"));
    assert!(!key_file.exists());

    let server = start(&url);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the generated key file is private");
    }
    let http = reqwest::Client::new();
    let fresh = Receiver::start(0).await;
    let hook = post_json(
        &http,
        &server.url,
        &token,
        "/v1/webhooks",
        json!({"url": fresh.url, "events": ["key.created"]}),
    )
    .await;
    let fresh_secret = hook["secret"].as_str().unwrap().to_string();
    *fresh.secret.lock().unwrap() = fresh_secret.clone();
    let stored = stored_secrets(&db).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|s| s.starts_with("kw1:")), "{stored:?}");
    assert!(!stored
        .iter()
        .any(|s| s.contains(&fresh_secret) || s.contains("whsec_")));

    let ks = post_json(
        &http,
        &server.url,
        &token,
        "/v1/keyspaces",
        json!({"name": "n", "prefix": "seal"}),
    )
    .await;
    create_key(&http, &server.url, &token, &ks["id"]).await;
    assert_eq!(legacy.wait_for("key.created", 1).await.len(), 1);
    assert_eq!(fresh.wait_for("key.created", 1).await.len(), 1);
    assert!(legacy.all_signatures_valid() && fresh.all_signatures_valid());
    stop(server);

    // Another key cannot open them: serve refuses to start.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("KEYWARD_MASTER_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sealed with master key"), "{err}");

    // Rotation re-seals every secret and replaces the key beside the database.
    let before = std::fs::read_to_string(&key_file).unwrap();
    let old_id = stored[0][4..12].to_string();
    let out = Command::new(BIN)
        .args(["master-key", "rotate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), before);
    let rotated = stored_secrets(&db).await;
    assert!(rotated
        .iter()
        .all(|s| s.starts_with("kw1:") && s[4..12] != old_id));

    let server = start_with(&url, &[]);
    create_key(&http, &server.url, &token, &ks["id"]).await;
    assert_eq!(legacy.wait_for("key.created", 2).await.len(), 2);
    assert_eq!(fresh.wait_for("key.created", 2).await.len(), 2);
    assert!(legacy.all_signatures_valid() && fresh.all_signatures_valid());
    stop(server);
}

//! The database at rest: after a graceful stop (and after every offline command) the SQLite
//! file alone is the whole database, and a database that cannot be written is refused at
//! start, reported by `/readyz` and answered with 503 `UNAVAILABLE`, never 500.

use std::process::Command;
use std::sync::Arc;

use keyward_core::model::Actor;
use keyward_core::time::SystemClock;
use keyward_server::authz::Ctx;
use keyward_server::service;
use keyward_server::state::Records;
use serde_json::{json, Value};

use crate::helpers::{spawn_with, Backend, Options, TempDir};
use crate::secrets::{start, start_with, stop};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn wal_bytes(db: &std::path::Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display()))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn after_a_graceful_stop_the_database_file_alone_holds_every_key_and_event() {
    let dir = TempDir::new();
    let db = dir.0.join("keyward.db");
    let url = format!("sqlite://{}", db.display());
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        wal_bytes(&db),
        0,
        "an offline command leaves no write-ahead log"
    );

    let server = start(&url);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.url))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let ks: Value = post("/v1/keyspaces", json!({"name": "n", "prefix": "dur"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ks = ks["id"].as_str().unwrap().to_string();
    for i in 0..200 {
        let r = post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": format!("k{i}"), "owner": "o"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert!(
        wal_bytes(&db) > 0,
        "a running server writes through its log"
    );
    stop(server);
    assert_eq!(wal_bytes(&db), 0, "a graceful stop checkpoints the log");

    // The one file, copied alone, is the whole database.
    let copy_dir = TempDir::new();
    let copy = copy_dir.0.join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    let store = keyward_store::open(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = Ctx::operator(Actor::cli("test"));
    let who = ctx.allow().unwrap();
    let mut seen = 0;
    let mut after = None;
    loop {
        let page = service::list_keys(
            &records,
            &who,
            keyward_store::KeyFilter {
                keyspace_ids: Some(vec![ks.clone()]),
                owner: None,
                status: None,
                label: None,
                name_contains: None,
                unused_for_secs: None,
                now: keyward_core::time::Timestamp::from_millis(0),
                page: keyward_store::Page {
                    limit: 500,
                    after: after.clone(),
                },
            },
        )
        .await
        .unwrap();
        seen += page.len();
        match page.last() {
            Some(k) if page.len() == 500 => after = Some((k.created_at.millis(), k.id.clone())),
            _ => break,
        }
    }
    assert_eq!(seen, 200);
    let chain = service::check_chain(&records, &ctx.allow().unwrap())
        .await
        .unwrap();
    assert!(
        matches!(
            chain,
            keyward_core::audit::ChainCheck::Ok { events: 202, .. }
        ),
        "token, keyspace and 200 keys, chain intact: {chain:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_database_that_cannot_be_written_stops_serve_with_a_clear_error() {
    let dir = TempDir::new();
    let db = dir.0.join("keyward.db");
    let url = format!("sqlite://{}", db.display());
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("{url}?mode=ro"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot be written"), "{err}");
}

/// A database that turns read-only under a running node (here: a node that opened it
/// read-only): reads and cached verifications go on; writes are 503 `UNAVAILABLE` and
/// `/readyz` says why.
#[tokio::test]
async fn writes_to_a_read_only_database_are_503_and_readyz_says_why() {
    let Some(writer) = spawn_with(Backend::Sqlite, Options::default()).await else {
        unreachable!("SQLite is always available");
    };
    let ks = writer.keyspace(json!({})).await;
    let (_, key) = writer.key(&ks, json!({})).await;
    let store = keyward_store::open(&format!("{}?mode=ro", writer.db_url))
        .await
        .unwrap();
    let state =
        keyward_server::AppState::new(store, Arc::new(SystemClock), Options::default().config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(keyward_server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be written"),
        "{body}"
    );
    let listed = http
        .get(format!("{url}/v1/keys"))
        .bearer_auth(&writer.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let created = http
        .post(format!("{url}/v1/keyspaces"))
        .bearer_auth(&writer.admin)
        .json(&json!({"name": "n", "prefix": "rofail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 503);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
    let verified: Value = http
        .post(format!("{url}/v1/verify"))
        .json(&json!({"key": key}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["code"], "VALID", "{verified}");
    let _ = tx.send(());
    served.await.unwrap().unwrap();
}

/// A PostgreSQL database named in the URL that does not exist yet is created (as a missing
/// SQLite file is); a role that may not create databases gets a clear error.
#[tokio::test]
async fn a_missing_postgres_database_is_created_when_the_role_may() {
    use sqlx::Connection;
    if !keyward_store::testing::postgres_available().await {
        return;
    }
    let base = keyward_store::testing::pg_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let name = format!("kw_{}", keyward_store::testing::unique_schema());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    let url = format!("{server}/{name}");
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    sqlx::raw_sql(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();

    // A role without CREATEDB.
    let role = format!("{name}_r");
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN NOCREATEDB"))
        .execute(&mut admin)
        .await
        .unwrap();
    let host = server.split_once('@').map_or(server, |(_, h)| h);
    let url = format!("postgres://{role}@{host}/{name}");
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("may not create databases"), "{err}");
    sqlx::raw_sql(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// With `KEYWARD_LOG_FORMAT=json` every line the server logs is one JSON object with a time, a
/// level and a message, and no key appears in any of them.
#[tokio::test]
async fn json_logs_are_one_object_a_line_without_secrets() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.0.join("keyward.db").display());
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = start_with(&url, &[("KEYWARD_LOG_FORMAT", "json")]);
    let http = reqwest::Client::new();
    let ks: Value = http
        .post(format!("{}/v1/keyspaces", server.url))
        .bearer_auth(&token)
        .json(&json!({"name": "n", "prefix": "logs"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: Value = http
        .post(format!("{}/v1/keys", server.url))
        .bearer_auth(&token)
        .json(&json!({"keyspace_id": ks["id"], "name": "k", "owner": "o"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    http.post(format!("{}/v1/verify", server.url))
        .json(&json!({"key": key}))
        .send()
        .await
        .unwrap();
    let log = stop(server);
    let mut objects = 0;
    for line in log.lines() {
        if line.trim().is_empty() || !line.starts_with('{') {
            // The first-run setup link is printed for a person, on standard output.
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        objects += 1;
    }
    assert!(objects >= 4, "requests were logged: {log}");
    assert!(log.contains("\"route\":\"/v1/verify\""), "{log}");
    assert!(
        !log.contains(&key) && !log.contains(&token),
        "no secret in the log"
    );
}

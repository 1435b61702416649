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
use crate::secrets::{admin_token, post_json, start, start_with, stop};

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
    let token = admin_token(&url);
    assert_eq!(
        wal_bytes(&db),
        0,
        "an offline command leaves no write-ahead log"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a new database is readable by its owner only");
    }

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
    let token = admin_token(&url);
    let server = start_with(&url, &[("KEYWARD_LOG_FORMAT", "json")]);
    let http = reqwest::Client::new();
    let ks = post_json(
        &http,
        &server.url,
        &token,
        "/v1/keyspaces",
        json!({"name": "n", "prefix": "logs"}),
    )
    .await;
    let key = post_json(
        &http,
        &server.url,
        &token,
        "/v1/keys",
        json!({"keyspace_id": ks["id"], "name": "k", "owner": "o"}),
    )
    .await;
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

/// The number of keys and the audit chain of the SQLite database at `path`.
async fn inspect(path: &std::path::Path) -> (i64, keyward_core::audit::ChainCheck) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = keyward_store::open(&url).await.unwrap();
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = Ctx::operator(Actor::cli("test"));
    let chain = service::check_chain(&records, &ctx.allow().unwrap())
        .await
        .unwrap();
    store.close().await;
    (keys, chain)
}

fn keyward(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// A backup taken while keys are being created is consistent (a prefix of the history, its
/// chain intact); a restore is refused while a server uses the database, refuses a backup whose
/// chain does not verify, and otherwise brings back exactly the backup.
#[tokio::test]
async fn a_backup_taken_while_writing_restores_to_a_consistent_database() {
    let dir = TempDir::new();
    let db = dir.0.join("keyward.db");
    let url = format!("sqlite://{}", db.display());
    let out = keyward(&[
        "token",
        "create",
        "--name",
        "ops",
        "--role",
        "admin",
        "--database-url",
        &url,
    ]);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = start(&url);
    let http = reqwest::Client::new();
    let ks = post_json(
        &http,
        &server.url,
        &token,
        "/v1/keyspaces",
        json!({"name": "n", "prefix": "bak"}),
    )
    .await;
    let created = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let stop_writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, base, token) = (http.clone(), server.url.clone(), token.clone());
        let (created, stop_writing, ks) = (created.clone(), stop_writing.clone(), ks["id"].clone());
        tokio::spawn(async move {
            while !stop_writing.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(format!("{base}/v1/keys"))
                    .bearer_auth(&token)
                    .json(&json!({"keyspace_id": ks, "name": "k", "owner": "o"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    while created.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let backup = dir.0.join("backup.db");
    let before = created.load(std::sync::atomic::Ordering::SeqCst);
    let (b, u) = (backup.display().to_string(), url.clone());
    let out =
        tokio::task::spawn_blocking(move || keyward(&["backup", "--to", &b, "--database-url", &u]))
            .await
            .unwrap();
    let after = created.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop_writing.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    let total = created.load(std::sync::atomic::Ordering::SeqCst);
    assert!(total > after, "keys were created after the backup");

    let b = backup.display().to_string();
    let out = keyward(&["restore", "--from", &b, "--database-url", &url]);
    assert_eq!(out.status.code(), Some(1), "refused while serving");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    stop(server);
    let (keys_now, _) = inspect(&db).await;
    assert_eq!(keys_now, total, "the refused restore changed nothing");

    // A backup whose chain was tampered with is refused.
    let tampered = dir.0.join("tampered.db");
    std::fs::copy(&backup, &tampered).unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", tampered.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET reason = 'edited' WHERE seq = 3")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let t = tampered.display().to_string();
    let out = keyward(&["restore", "--from", &t, "--database-url", &url]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(inspect(&db).await.0, total, "nothing was restored");

    let out = keyward(&["restore", "--from", &b, "--database-url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (keys, chain) = inspect(&db).await;
    assert!(
        (before..=after).contains(&keys),
        "the backup holds the keys of one moment: {before} <= {keys} <= {after}"
    );
    // Events: the token, the keyspace, one per key.
    assert!(
        matches!(chain, keyward_core::audit::ChainCheck::Ok { events, .. } if events == keys + 2),
        "{chain:?}"
    );
    // The restored database serves.
    let server = start(&url);
    let r = http
        .get(format!("{}/v1/keys?limit=1", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(server);
}

/// PostgreSQL is backed up and restored with its own tools: the commands docs/operations.md
/// gives, run here against a real database.
#[tokio::test]
async fn postgres_backs_up_with_pg_dump_and_restores_with_pg_restore() {
    use sqlx::Connection;
    if !keyward_store::testing::postgres_available().await {
        return;
    }
    for tool in ["pg_dump", "pg_restore"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {tool} is not installed"
            );
            keyward_store::testing::announce_skip(&format!(
                "SKIPPED postgres_backs_up_with_pg_dump_and_restores_with_pg_restore: {tool} is not installed"
            ));
            return;
        }
    }
    let base = keyward_store::testing::pg_url();
    let (server_url, _) = base.rsplit_once('/').unwrap();
    let name = format!("kw_{}", keyward_store::testing::unique_schema());
    let (src, dst) = (
        format!("{server_url}/{name}"),
        format!("{server_url}/{name}_restored"),
    );
    let out = keyward(&[
        "token",
        "create",
        "--name",
        "ops",
        "--role",
        "admin",
        "--database-url",
        &src,
    ]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = start(&src);
    let http = reqwest::Client::new();
    let ks = post_json(
        &http,
        &server.url,
        &token,
        "/v1/keyspaces",
        json!({"name": "n", "prefix": "pgbak"}),
    )
    .await;
    for _ in 0..20 {
        http.post(format!("{}/v1/keys", server.url))
            .bearer_auth(&token)
            .json(&json!({"keyspace_id": ks["id"], "name": "k", "owner": "o"}))
            .send()
            .await
            .unwrap();
    }
    let dir = TempDir::new();
    let dump = dir.0.join("keyward.dump").display().to_string();
    // While serving: pg_dump takes a consistent snapshot.
    let out = Command::new("pg_dump")
        .args(["--format=custom", "--file", &dump, &src])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(server);
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}_restored"))
        .execute(&mut admin)
        .await
        .unwrap();
    let out = Command::new("pg_restore")
        .args(["--no-owner", "--dbname", &dst, &dump])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = keyward_store::open(&dst).await.unwrap();
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = Ctx::operator(Actor::cli("test"));
    let chain = service::check_chain(&records, &ctx.allow().unwrap())
        .await
        .unwrap();
    assert!(
        matches!(
            chain,
            keyward_core::audit::ChainCheck::Ok { events: 22, .. }
        ),
        "{chain:?}"
    );
    store.close().await;
    for db in [format!("{name}_restored"), name.clone()] {
        sqlx::raw_sql(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

/// A management call that cannot finish (here: another process holds SQLite's write lock) is
/// stopped at `KEYWARD_REQUEST_TIMEOUT_MS` with 503, changes nothing, and verification is not
/// held up meanwhile.
#[tokio::test]
async fn a_management_call_past_its_time_is_503_and_changes_nothing() {
    use sqlx::Connection;
    let mut o = Options::default();
    o.config.request_timeout = std::time::Duration::from_millis(300);
    let Some(app) = spawn_with(Backend::Sqlite, o).await else {
        unreachable!("SQLite is always available");
    };
    let ks = app.keyspace(json!({})).await;
    let (_, key) = app.key(&ks, json!({})).await;
    let mut holder = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let res = app
        .post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": "late", "owner": "o"}),
        )
        .await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(res.body["error"]["code"], "UNAVAILABLE");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(app.verify_code(&key).await, "VALID");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    let listed = app.get("/v1/keys?q=late").await.expect(200);
    assert_eq!(listed.body["items"], json!([]), "nothing was created");
}

//! The command line against a real server: readable output, `--json`, and non-zero exits with
//! clear messages on every failure.

use std::process::Output;

use serde_json::{json, Value};

use crate::both;
use crate::helpers::TestApp;

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// Runs the `keyward` binary against `url` with `token` (the other modules' CLI tests use it).
pub(crate) async fn run(url: &str, token: &str, args: &[&str]) -> Output {
    let (url, token) = (url.to_string(), token.to_string());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .env("KEYWARD_URL", url)
            .env("KEYWARD_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn the_cli_creates_lists_shows_rotates_and_revokes_keys(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (url, t) = (app.url.clone(), app.admin.clone());

    let o = run(
        &url,
        &t,
        &[
            "keys",
            "create",
            "--keyspace",
            &ks,
            "--name",
            "ci deploy",
            "--owner",
            "team-ci",
            "--scope",
            "deploy:*",
            "--label",
            "env=prod",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let created: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["labels"], json!({"env": "prod"}));
    assert_eq!(app.verify_code(&key).await, "VALID");

    let o = run(
        &url,
        &t,
        &[
            "keys",
            "create",
            "--keyspace",
            &ks,
            "--name",
            "table out",
            "--owner",
            "o",
        ],
    )
    .await;
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("status:") && out.lines().any(|l| l.starts_with("key: ")),
        "{out}"
    );
    assert!(
        stderr(&o).contains("only time"),
        "the warning goes to stderr"
    );

    let o = run(&url, &t, &["keys", "list", "--owner", "team-ci"]).await;
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.starts_with("ID") && out.contains(&id) && out.contains("ci deploy"),
        "{out}"
    );
    assert!(!out.contains(&key), "a list never shows the plaintext");

    let o = run(&url, &t, &["keys", "show", &id, "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["id"],
        id
    );

    // Rotation for pipelines: only the new key, in the chosen form.
    let o = run(
        &url,
        &t,
        &["keys", "rotate", &id, "--grace", "1h", "--format", "env"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let new_key = line
        .trim()
        .strip_prefix("KEYWARD_API_KEY=")
        .unwrap()
        .to_string();
    assert_eq!(line.lines().count(), 1);
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    let successor = app.verify(json!({"key": new_key})).await["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(
        &url,
        &t,
        &[
            "keys", "rotate", &successor, "--grace", "0", "--format", "plain",
        ],
    )
    .await;
    let plain = stdout(&o).trim().to_string();
    assert!(keyward_core::keyformat::parse(&plain).is_some());
    assert_eq!(app.verify_code(&new_key).await, "REVOKED");
    let o = run(
        &url,
        &t,
        &["keys", "rotate", &successor, "--format", "json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "rotating a revoked key fails");
    assert!(stderr(&o).contains("CONFLICT"), "{}", stderr(&o));

    let latest = app.verify(json!({"key": plain})).await["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(
        &url,
        &t,
        &["keys", "revoke", &latest, "--reason", "test over"],
    )
    .await;
    assert!(o.status.success());
    assert_eq!(app.verify_code(&plain).await, "REVOKED");

    let (_, k2) = app.key(&ks, json!({"owner": "leaver"})).await;
    let o = run(
        &url,
        &t,
        &[
            "keys", "revoke", "--owner", "leaver", "--reason", "left", "--json",
        ],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["revoked"],
        1
    );
    assert_eq!(app.verify_code(&k2).await, "REVOKED");

    let o = run(&url, &t, &["audit", "verify"]).await;
    assert!(o.status.success());
    assert!(stdout(&o).contains("audit chain OK"));
}
both!(the_cli_creates_lists_shows_rotates_and_revokes_keys);

async fn the_cli_creates_lists_shows_and_updates_keyspaces_with_route_rules(app: TestApp) {
    let (url, t) = (app.url.clone(), app.admin.clone());
    let dir = crate::helpers::TempDir::new();
    let rules = dir.0.join("routes.json");
    std::fs::write(
        &rules,
        r#"[{"method": "GET", "path": "/orders/**", "scopes": ["orders:read"]}, {"path": "/health"}]"#,
    )
    .unwrap();
    let rules = rules.display().to_string();
    let o = run(
        &url,
        &t,
        &[
            "keyspaces",
            "create",
            "--name",
            "Orders",
            "--prefix",
            "clirt",
            "--preset",
            "strict",
            "--routes-file",
            &rules,
            "--unmatched",
            "deny",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let ks: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = ks["id"].as_str().unwrap().to_string();
    assert_eq!(ks["unmatched"], "deny");
    assert_eq!(ks["routes"][0]["path"], "/orders/**");
    assert_eq!(ks["policy"]["max_lifetime_secs"], 7_776_000);

    // The list finds it without curl; show prints its rules as a table.
    let o = run(&url, &t, &["keyspaces", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(out.contains(&id) && out.contains("clirt_"), "{out}");
    let o = run(&url, &t, &["keyspaces", "show", &id]).await;
    let out = stdout(&o);
    assert!(out.contains("unmatched  deny"), "{out}");
    assert!(
        out.contains("GET") && out.contains("/orders/**") && out.contains("orders:read"),
        "{out}"
    );

    // Update replaces the rules; a bad rule is refused with its index, naming the problem.
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, r#"[{"path": "/a/**/b"}]"#).unwrap();
    let o = run(
        &url,
        &t,
        &[
            "keyspaces",
            "update",
            &id,
            "--routes-file",
            &bad.display().to_string(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("routes[0].path"), "{}", stderr(&o));
    let empty = dir.0.join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    let o = run(
        &url,
        &t,
        &[
            "keyspaces",
            "update",
            &id,
            "--routes-file",
            &empty.display().to_string(),
            "--unmatched",
            "allow",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let ks: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(ks["routes"], json!([]));
    assert_eq!(ks["unmatched"], "allow");
    // Nothing to change, or a file that is not a list: a usage error before any request.
    let o = run(&url, &t, &["keyspaces", "update", &id]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let obj = dir.0.join("obj.json");
    std::fs::write(&obj, "{}").unwrap();
    let o = run(
        &url,
        &t,
        &[
            "keyspaces",
            "update",
            &id,
            "--routes-file",
            &obj.display().to_string(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("JSON list"), "{}", stderr(&o));
}
both!(the_cli_creates_lists_shows_and_updates_keyspaces_with_route_rules);

async fn the_cli_fails_clearly_with_a_non_zero_exit(app: TestApp) {
    let (url, t) = (app.url.clone(), app.admin.clone());
    let o = run(&url, &t, &["keys", "show", "key_doesnotexist"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NOT_FOUND"), "{}", stderr(&o));

    let o = run(&url, "kwt_wrong", &["keys", "list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("UNAUTHENTICATED") && stderr(&o).contains("KEYWARD_TOKEN"),
        "{}",
        stderr(&o)
    );

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = run(&dead, &t, &["keys", "list"]).await;
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(&t), "the token is never printed");

    // Neither a key id nor --owner: bad usage, refused before any request.
    let o = run(&url, &t, &["keys", "revoke", "--reason", "x"]).await;
    assert_eq!(o.status.code(), Some(2));
    let o = run(&url, &t, &["keys", "rotate", "key_x", "--grace", "soon"]).await;
    assert_eq!(o.status.code(), Some(2), "bad usage is exit 2");
}
both!(the_cli_fails_clearly_with_a_non_zero_exit);

async fn the_cli_covers_tokens_webhooks_usage_anomalies_and_reports(app: TestApp) {
    let ks = app.keyspace(json!({})).await;
    let (key_id, key) = app.key(&ks, json!({"owner": "acme"})).await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    let (url, t) = (app.url.clone(), app.admin.clone());

    // Tokens: the plaintext alone on stdout, once; listed without it; revoked.
    let o = run(
        &url,
        &t,
        &[
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--keyspace",
            &ks,
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    assert!(token.starts_with("kwt_"), "{token}");
    assert_eq!(
        app.get_as(&token, &format!("/v1/keys/{key_id}"))
            .await
            .status,
        200
    );
    let o = run(&url, &t, &["tokens", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("ID") && table.contains("ROLE") && table.contains("viewer"));
    assert!(!table.contains(&token), "a list never shows a token");
    let o = run(&url, &t, &["tokens", "list", "--json"]).await;
    let page: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let token_id = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(
        &url,
        &t,
        &["tokens", "revoke", &token_id, "--reason", "done"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        app.get_as(&token, &format!("/v1/keys/{key_id}"))
            .await
            .status,
        401
    );
    let o = run(
        &url,
        &t,
        &["tokens", "create", "--name", "x", "--role", "root"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "an unknown role is bad usage");

    // Webhooks: the secret once, then list, deliveries, delete.
    let o = run(
        &url,
        &t,
        &[
            "webhooks",
            "create",
            "https://hooks.example.com/keyward",
            "--event",
            "key.revoked",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let hook: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let secret = hook["secret"].as_str().unwrap().to_string();
    let o = run(&url, &t, &["webhooks", "list"]).await;
    assert!(stdout(&o).contains(&hook_id) && stdout(&o).contains("key.revoked"));
    assert!(!stdout(&o).contains(&secret));
    let o = run(&url, &t, &["webhooks", "deliveries", &hook_id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("AT"), "{}", stdout(&o));
    let o = run(&url, &t, &["webhooks", "delete", &hook_id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&url, &t, &["webhooks", "delete", &hook_id]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NOT_FOUND"), "{}", stderr(&o));

    // Usage of a key and of a keyspace, as tables and as the API's JSON.
    let o = run(
        &url,
        &t,
        &["usage", "key", &key_id, "--granularity", "hour"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("START"), "{}", stdout(&o));
    let o = run(&url, &t, &["usage", "keyspace", &ks, "--json"]).await;
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["keyspace_id"], ks.as_str());
    let o = run(&url, &t, &["usage", "key", &key_id, "--from", "yesterday"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("from"), "{}", stderr(&o));

    // The pattern to register with secret scanners.
    let prefix = app.get(&format!("/v1/keyspaces/{ks}")).await.body["prefix"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(&url, &t, &["keyspaces", "pattern", &ks]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("\\b{prefix}_[0-9A-Za-z]{{38}}\\b")
    );
    assert!(key.starts_with(&format!("{prefix}_")) && key.len() == prefix.len() + 39);

    // Anomalies and the inventory report.
    let o = run(&url, &t, &["anomalies", "list", "--keyspace", &ks]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("DETECTED"), "{}", stdout(&o));
    let table = run(&url, &t, &["reports", "inventory", "--keyspace", &ks]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(stdout(&table).contains(&key_id) && stdout(&table).contains("FINDINGS"));
    let csv = run(
        &url,
        &t,
        &["reports", "inventory", "--keyspace", &ks, "--format", "csv"],
    )
    .await;
    assert!(csv.status.success(), "{}", stderr(&csv));
    assert_eq!(stdout(&csv).lines().count(), 2, "{}", stdout(&csv));
    let json_out = run(&url, &t, &["reports", "inventory", "--json"]).await;
    let v: Value = serde_json::from_str(&stdout(&json_out)).unwrap();
    assert!(v["items"].is_array());
    for o in [&table, &csv, &json_out] {
        assert!(!stdout(o).contains(&key), "no plaintext key in any report");
    }
}
both!(the_cli_covers_tokens_webhooks_usage_anomalies_and_reports);

#[test]
fn token_create_prints_only_the_token_and_audits_it_as_cli() {
    let dir = crate::helpers::TempDir::new();
    let url = format!("sqlite://{}", dir.0.join("k.db").display());
    let o = std::process::Command::new(BIN)
        .args([
            "token",
            "create",
            "--name",
            "bootstrap",
            "--role",
            "admin",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert!(keyward_core::keyformat::parse(out.trim()).is_some_and(|p| p.prefix == "kwt"));
    let o = std::process::Command::new(BIN)
        .args([
            "token",
            "create",
            "--name",
            "x",
            "--role",
            "root",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "an unknown role is a usage error");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = keyward_store::open(&url).await.unwrap();
        let events = store.audit_after(0, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "token.create");
        assert_eq!(events[0].actor.kind, keyward_core::model::ActorKind::Cli);
    });
}

/// Settings are checked before anything starts: a Redis URL that cannot be used, or a zero
/// interval, stops `keyward serve` with exit 2 and a message that names the variable and never
/// repeats a password; no database file is created.
#[test]
fn serve_refuses_bad_settings_before_it_starts() {
    let dir = std::env::temp_dir().join(format!("kw-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("never.db");
    let url = format!("sqlite://{}", db.display());
    for (var, value, says) in [
        (
            "KEYWARD_REDIS_URL",
            "cache.internal:6379",
            "must start with redis://",
        ),
        (
            "KEYWARD_REDIS_URL",
            "redis://:hunter2secret@cache/x",
            "database number",
        ),
        (
            "KEYWARD_REDIS_URL",
            "https://:hunter2secret@cache",
            "scheme must be redis://",
        ),
        ("KEYWARD_USAGE_FLUSH_MS", "0", "positive whole number"),
        (
            "KEYWARD_SWEEP_INTERVAL_SECS",
            "soon",
            "positive whole number",
        ),
    ] {
        let o = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
            .env(var, value)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(says), "{var}={value}: {err}");
        assert!(!err.contains("hunter2secret"), "{err}");
        assert!(!db.exists(), "{var}={value} created the database");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

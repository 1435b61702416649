//! Plaintext keys and tokens appear only in the responses that create them: never in the
//! database, the server's log, the audit trail or an error message. The server here is the real
//! `keyward serve` process, logging at debug level, so its real output is searched.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::helpers::{fresh_db, Backend};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

pub(crate) struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    pub(crate) url: String,
}

impl Proc {
    /// Sends `signal` (`HUP`, `TERM`, ...) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// What the server has printed so far (standard error and output).
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

pub(crate) fn start(db_url: &str) -> Proc {
    start_with(db_url, &[])
}

/// [`start`] with more environment variables.
pub(crate) fn start_with(db_url: &str, env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db_url])
        .env("KEYWARD_LOG", "debug")
        .env("KEYWARD_USAGE_FLUSH_MS", "50")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let (log, tx) = (log.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                if let Some(i) = line
                    .find("listening on http://")
                    .or_else(|| line.find("listening on https://"))
                {
                    let _ = tx.send(
                        line[i + "listening on ".len()..]
                            .split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
            }
        });
    }
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("server did not start");
    Proc { child, log, url }
}

/// `keyward token create --role admin` on the database at `url`: the token.
pub(crate) fn admin_token(url: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .args(["--database-url", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// POSTs `body` with `token` to a real server; the answer's body (a 2xx is required).
pub(crate) async fn post_json(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: Value,
) -> Value {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    r.json().await.unwrap()
}

/// Kills the server with SIGKILL (no chance to flush or close anything).
pub(crate) fn kill9(mut p: Proc) {
    let _ = p.child.kill();
    let _ = p.child.wait();
}

pub(crate) fn stop(mut p: Proc) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let status = p.child.wait().unwrap();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = p.log.lock().unwrap().clone();
    log
}

async fn database_text(backend: Backend, db_url: &str) -> Vec<u8> {
    use sqlx::{Connection, Row};
    match backend {
        Backend::Sqlite => {
            let path = db_url.trim_start_matches("sqlite://");
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    all.extend(b);
                }
            }
            all
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
            let mut all = Vec::new();
            for table in [
                "keyspaces",
                "keys",
                "tokens",
                "audit_events",
                "change_feed",
                "key_imports",
                "_sqlx_migrations",
            ] {
                let rows = sqlx::query(&format!("SELECT t::text AS row FROM {table} t"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                for r in rows {
                    let s: String = r.get("row");
                    all.extend(s.into_bytes());
                }
            }
            all
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn no_plaintext_key_or_token_is_stored_logged_audited_or_echoed(backend: Backend) {
    let Some((db_url, _dir)) = fresh_db(backend).await else {
        return;
    };
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--name",
            "root",
            "--role",
            "admin",
            "--database-url",
            &db_url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(admin.starts_with("kwt_") && !admin.contains('\n'));

    let p = start(&db_url);
    let http = reqwest::Client::new();
    let url = p.url.clone();
    let mut secrets = vec![admin.clone()];
    let mut error_bodies = Vec::new();
    let call =
        |method: reqwest::Method, path: String, token: Option<String>, body: Option<Value>| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let mut r = http.request(method, format!("{url}{path}"));
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                if let Some(b) = body {
                    r = r.json(&b);
                }
                let res = r.send().await.unwrap();
                let status = res.status().as_u16();
                (status, res.text().await.unwrap())
            }
        };
    let post = |path: &str, body: Value| {
        call(
            reqwest::Method::POST,
            path.to_string(),
            Some(admin.clone()),
            Some(body),
        )
    };

    let (_, ks) = post(
        "/v1/keyspaces",
        json!({"name": "s", "prefix": "leak", "policy": {"rotation_grace_secs": 0}}),
    )
    .await;
    let ks: Value = serde_json::from_str(&ks).unwrap();
    let ks = ks["id"].as_str().unwrap().to_string();
    let (_, k) = post(
        "/v1/keys",
        json!({"keyspace_id": ks, "name": "k", "owner": "o", "remaining": 5}),
    )
    .await;
    let k: Value = serde_json::from_str(&k).unwrap();
    let (key_id, key) = (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    );
    secrets.push(key.clone());
    let (_, t) = post("/v1/tokens", json!({"name": "v", "role": "viewer"})).await;
    let t: Value = serde_json::from_str(&t).unwrap();
    let viewer = t["token"].as_str().unwrap().to_string();
    secrets.push(viewer.clone());

    // Every endpoint, including error paths that see a secret in the wrong place.
    let verify = |body: Value| call(reqwest::Method::POST, "/v1/verify".into(), None, Some(body));
    verify(json!({"key": key})).await;
    verify(json!({"key": key, "scopes": ["x"]})).await;
    error_bodies.push(verify(json!({"key": key, "cost": key})).await.1);
    error_bodies.push(verify(json!({"key": key, "ip": key})).await.1);
    error_bodies.push(verify(json!({"key": key, "scopes": [key]})).await.1);
    error_bodies.push(verify(json!({"key": key, "typo": 1})).await.1);
    error_bodies.push(verify(json!({"key": viewer})).await.1);
    error_bodies.push(
        call(
            reqwest::Method::GET,
            format!("/v1/keys/{key}"),
            Some(admin.clone()),
            None,
        )
        .await
        .1,
    );
    error_bodies.push(
        call(
            reqwest::Method::GET,
            format!("/v1/keys?owner={key}"),
            Some(admin.clone()),
            None,
        )
        .await
        .1,
    );
    error_bodies.push(
        call(
            reqwest::Method::GET,
            "/v1/keys".into(),
            Some(key.clone()),
            None,
        )
        .await
        .1,
    );
    error_bodies.push(
        call(
            reqwest::Method::GET,
            "/v1/keys".into(),
            Some(format!("{viewer}x")),
            None,
        )
        .await
        .1,
    );
    error_bodies.push(
        post(
            "/v1/keys",
            json!({"keyspace_id": ks, "name": key, "owner": "o", "scopes": [key]}),
        )
        .await
        .1,
    );
    error_bodies.push(
        post("/v1/keyspaces", json!({"name": "x", "prefix": key}))
            .await
            .1,
    );
    error_bodies.push(
        call(
            reqwest::Method::POST,
            format!("/v1/keys/{key_id}/revoke"),
            Some(viewer.clone()),
            Some(json!({"reason": "x"})),
        )
        .await
        .1,
    );
    let fa = http
        .get(format!("{url}/v1/forward-auth?key={key}&scope=a"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    error_bodies.push(fa.text().await.unwrap());
    let fa = http
        .post(format!("{url}/v1/forward-auth"))
        .bearer_auth(format!("{key}0"))
        .body(key.clone())
        .send()
        .await
        .unwrap();
    error_bodies.push(fa.text().await.unwrap());

    // A leak report: the reported key, and a source and reporter that hold it.
    let (_, l) = post(
        "/v1/keys",
        json!({"keyspace_id": ks, "name": "leaked", "owner": "o"}),
    )
    .await;
    let l: Value = serde_json::from_str(&l).unwrap();
    let leaked = l["key"].as_str().unwrap().to_string();
    secrets.push(leaked.clone());
    let report = |body: Value| call(reqwest::Method::POST, "/v1/leaks".into(), None, Some(body));
    error_bodies.push(report(json!({"key": leaked, "typo": leaked})).await.1);
    error_bodies.push(report(json!({"key": [leaked]})).await.1);
    let (status, _) = report(json!({
        "key": leaked,
        "source": format!("https://paste.example.com/raw?k={leaked}"),
        "reporter": leaked,
    }))
    .await;
    assert_eq!(status, 202);
    let started = std::time::Instant::now();
    loop {
        let (_, v) = verify(json!({"key": leaked})).await;
        if v.contains("REVOKED") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Imported keys: a plaintext of another format and a bcrypt hash of a `prefix.secret` key,
    // both verified (the bcrypt one is upgraded to its SHA-256), and refused batches that hold
    // a plaintext elsewhere in the batch or in the wrong field.
    let foreign = format!("sk_live_{}", keyward_core::keyformat::base62_random(28));
    let salted = format!("Pfx0001.{}", keyward_core::keyformat::base62_random(32));
    secrets.push(foreign.clone());
    secrets.push(salted.clone());
    let (status, body) = post(
        &format!("/v1/keyspaces/{ks}/keys/import"),
        json!({"keys": [
            {"plaintext": foreign, "owner": "o", "expires_at": "2099-01-01T00:00:00Z", "external_id": "e1"},
            {"hash": bcrypt::hash(&salted, 4).unwrap(), "algorithm": "bcrypt", "lookup": "Pfx0001.",
             "owner": "o", "expires_at": "2099-01-01T00:00:00Z", "external_id": "e2"},
        ], "allow_policy_violations": true}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.contains(&foreign));
    for k in [&foreign, &salted] {
        let (_, v) = verify(json!({"key": k})).await;
        assert!(v.contains("VALID"), "{v}");
    }
    for batch in [
        json!({"keys": [{"plaintext": foreign, "external_id": "e1"}, {"plaintext": "bad"}]}),
        json!({"keys": [{"plaintext": salted}, {"plaintext": foreign, "owner": foreign}]}),
        json!({"keys": [{"plaintext": foreign, "lookup": foreign}]}),
        json!({"keys": [{"hash": salted, "algorithm": "bcrypt", "lookup": "Pfx0001."}]}),
        json!({"keys": [{"plaintext": format!("{foreign}x"), "external_id": "e1"}]}),
        json!({"keys": [{"plaintext": foreign, "remaining": foreign}]}),
    ] {
        error_bodies.push(
            post(&format!("/v1/keyspaces/{ks}/keys/import"), batch)
                .await
                .1,
        );
    }

    let (_, r) = post(
        &format!("/v1/keys/{key_id}/rotate"),
        json!({"grace_secs": 0, "reason": "test"}),
    )
    .await;
    let r: Value = serde_json::from_str(&r).unwrap();
    let successor = r["key"].as_str().unwrap().to_string();
    secrets.push(successor.clone());
    verify(json!({"key": successor})).await;
    verify(json!({"key": key})).await;
    post(
        &format!("/v1/keys/{}/revoke", r["id"].as_str().unwrap()),
        json!({"reason": "done"}),
    )
    .await;
    let (_, audit) = call(
        reqwest::Method::GET,
        "/v1/audit/export?format=jsonl".into(),
        Some(admin.clone()),
        None,
    )
    .await;
    let (_, listed) = call(
        reqwest::Method::GET,
        "/v1/keys".into(),
        Some(admin.clone()),
        None,
    )
    .await;
    let (_, tokens) = call(
        reqwest::Method::GET,
        "/v1/tokens".into(),
        Some(admin.clone()),
        None,
    )
    .await;
    let (_, metrics) = call(reqwest::Method::GET, "/metrics".into(), None, None).await;
    let log = stop(p);
    assert!(
        log.contains("/v1/verify") && log.contains("DEBUG"),
        "the debug log was captured: {log}"
    );

    let db = database_text(backend, &db_url).await;
    for s in &secrets {
        assert!(!contains(&db, s), "a plaintext is in the database");
        assert!(
            !log.contains(s.as_str()),
            "a plaintext is in the server log"
        );
        assert!(
            !audit.contains(s.as_str()),
            "a plaintext is in the audit trail"
        );
        assert!(
            !listed.contains(s.as_str()) && !tokens.contains(s.as_str()),
            "a plaintext is in a list"
        );
        assert!(
            !metrics.contains(s.as_str()),
            "a plaintext is in the metrics"
        );
        for b in &error_bodies {
            assert!(
                !b.contains(s.as_str()),
                "a plaintext is in an error body: {b}"
            );
        }
        // The secret's random part alone must not appear either (e.g. a truncated echo).
        let body = &s[s.rfind(['_', '.']).unwrap() + 1..];
        assert!(!contains(&db, &body[..20]) && !log.contains(&body[..20]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_leaks_on_sqlite() {
    no_plaintext_key_or_token_is_stored_logged_audited_or_echoed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_leaks_on_postgres() {
    no_plaintext_key_or_token_is_stored_logged_audited_or_echoed(Backend::Postgres).await;
}

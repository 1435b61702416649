//! `spawn_app()` and one helper per endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use keyward_core::model::{Actor, Role};
use keyward_core::time::{Clock, ManualClock, SystemClock, Timestamp};
use keyward_server::authz::Ctx;
use keyward_server::service;
use keyward_server::{AppState, Config};
use keyward_store::testing;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub url: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub admin: String,
    pub backend: Backend,
    pub db_url: String,
    /// Present when the app runs on a manual clock.
    pub clock: Option<ManualClock>,
    pub state: AppState,
    /// The last minute judged for anomalies, carried from one [`TestApp::sweep`] to the next
    /// as the server's sweep job carries it.
    sweep_last: std::sync::Mutex<Option<i64>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<TempDir>,
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("keyward-test-{}", testing::unique_schema()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options with a manual clock that moves only with `app.advance(secs)`. Webhook deliveries
/// are the test's to make (`app.deliver()`): the server runs no delivery worker, so nothing
/// races the test for them (a worker woken by a new webhook once took a key's delivery first).
pub fn manual() -> Options {
    let mut o = Options {
        manual_clock: true,
        ..Options::default()
    };
    o.config.webhook_poll = std::time::Duration::ZERO;
    o
}

pub struct Options {
    pub manual_clock: bool,
    pub config: Config,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            manual_clock: false,
            config: Config {
                usage_flush: std::time::Duration::from_millis(50),
                ..Config::default()
            },
        }
    }
}

/// A database URL for a fresh database of this backend (None: PostgreSQL is not available).
pub async fn fresh_db(backend: Backend) -> Option<(String, Option<TempDir>)> {
    match backend {
        Backend::Sqlite => {
            let dir = TempDir::new();
            let url = format!("sqlite://{}", dir.0.join("keyward.db").display());
            Some((url, Some(dir)))
        }
        Backend::Postgres => {
            if !testing::postgres_available().await {
                return None;
            }
            let schema = testing::unique_schema();
            testing::create_schema(&schema).await.unwrap();
            Some((testing::pg_url_with_schema(&schema), None))
        }
    }
}

pub async fn spawn_with(backend: Backend, opts: Options) -> Option<TestApp> {
    let (db_url, dir) = fresh_db(backend).await?;
    Some(start(backend, db_url, dir, opts).await)
}

/// A server on an existing database URL (already created).
pub async fn spawn_on(backend: Backend, db_url: &str, opts: Options) -> TestApp {
    start(backend, db_url.to_string(), None, opts).await
}

async fn start(backend: Backend, db_url: String, dir: Option<TempDir>, opts: Options) -> TestApp {
    let store = keyward_store::open(&db_url).await.unwrap();
    let manual = opts
        .manual_clock
        .then(|| ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
    let clock: Arc<dyn Clock> = match &manual {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(SystemClock),
    };
    let state = AppState::new(store, clock, opts.config);
    let ctx = Ctx::operator(Actor::cli("test"));
    let (_, admin) = service::create_token(
        state.records(),
        &ctx.allow().unwrap(),
        service::CreateToken {
            name: "admin".into(),
            role: Role::Admin,
            keyspace_ids: None,
            ttl_secs: None,
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        keyward_server::serve(listener, st, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        url: format!("http://{addr}"),
        addr,
        http: reqwest::Client::new(),
        admin: admin.expose().to_string(),
        backend,
        db_url,
        clock: manual,
        state,
        sweep_last: std::sync::Mutex::new(None),
        shutdown: Some(tx),
        join: Some(join),
        _dir: dir,
    }
}

/// Runs one async test body against both backends; `both!(name, opts)` starts the servers with
/// the `Options` that `opts()` (a function in scope of the test) returns.
#[macro_export]
macro_rules! both {
    ($name:ident, $opts:ident) => {
        $crate::both!(@backends $name, super::$opts());
    };
    ($name:ident) => {
        $crate::both!(@backends $name, $crate::helpers::Options::default());
    };
    (@backends $name:ident, $opts:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::both!(@run $name, Sqlite, $opts);
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::both!(@run $name, Postgres, $opts);
            }
        }
    };
    (@run $name:ident, $backend:ident, $opts:expr) => {
        if let Some(app) =
            $crate::helpers::spawn_with($crate::helpers::Backend::$backend, $opts).await
        {
            super::$name(app).await;
        }
    };
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Res {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap().to_string()
    }
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }
}

impl TestApp {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        let mut r = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Res {
            status,
            body,
            headers,
        }
    }
    pub async fn get_as(&self, token: &str, path: &str) -> Res {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }
    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> Res {
        self.send(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }
    pub async fn patch_as(&self, token: &str, path: &str, body: Value) -> Res {
        self.send(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }
    pub async fn get(&self, path: &str) -> Res {
        self.get_as(&self.admin.clone(), path).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.post_as(&self.admin.clone(), path, body).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Res {
        self.patch_as(&self.admin.clone(), path, body).await
    }
    pub async fn delete(&self, path: &str) -> Res {
        self.send(reqwest::Method::DELETE, path, Some(&self.admin), None)
            .await
    }

    /// A keyspace with a fresh prefix and the given policy overrides.
    pub async fn keyspace(&self, policy: Value) -> String {
        let prefix = format!(
            "t{}",
            keyward_core::keyformat::base62_random(8).to_lowercase()
        );
        self.post(
            "/v1/keyspaces",
            json!({"name": "test", "prefix": prefix, "policy": policy}),
        )
        .await
        .expect(201)
        .id()
    }
    /// Creates a key; returns (id, plaintext).
    pub async fn key(&self, keyspace_id: &str, extra: Value) -> (String, String) {
        let mut body = json!({"keyspace_id": keyspace_id, "name": "test key", "owner": "team-a"});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self.post("/v1/keys", body).await.expect(201);
        (r.id(), r.body["key"].as_str().unwrap().to_string())
    }
    /// Rotates key `id` with `body` (201 expected); returns the successor's id and plaintext.
    pub async fn rotate(&self, id: &str, body: Value) -> (String, String) {
        let r = self
            .post(&format!("/v1/keys/{id}/rotate"), body)
            .await
            .expect(201);
        (r.id(), r.body["key"].as_str().unwrap().to_string())
    }
    pub async fn token(&self, role: &str, keyspaces: Option<Vec<&str>>) -> String {
        let mut body = json!({"name": format!("{role} token"), "role": role});
        if let Some(k) = keyspaces {
            body["keyspace_ids"] = json!(k);
        }
        self.post("/v1/tokens", body).await.expect(201).body["token"]
            .as_str()
            .unwrap()
            .to_string()
    }
    /// POST /v1/verify without a token; returns the body.
    pub async fn verify(&self, body: Value) -> Value {
        let r = self
            .send(reqwest::Method::POST, "/v1/verify", None, Some(body))
            .await;
        assert_eq!(r.status, 200, "verify answered {}: {}", r.status, r.body);
        r.body
    }
    pub async fn verify_code(&self, key: &str) -> String {
        self.verify(json!({"key": key})).await["code"]
            .as_str()
            .unwrap()
            .to_string()
    }
    pub fn advance(&self, secs: i64) {
        self.clock
            .as_ref()
            .expect("manual clock")
            .advance_secs(secs);
    }
    /// Writes pending usage now.
    pub async fn flush(&self) {
        keyward_server::jobs::usage::flush(&self.state.control)
            .await
            .unwrap();
    }
    /// Stops the server gracefully (drain + final flush); the returned guard keeps a SQLite
    /// database on disk until it is dropped.
    pub async fn stop(mut self) -> Option<TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.unwrap();
        }
        self._dir.take()
    }
}

/// Another node on the same database as `first` (PostgreSQL clusters, or a second process on
/// one SQLite file), sharing its admin token.
pub async fn spawn_node(first: &TestApp) -> TestApp {
    let store = keyward_store::open(&first.db_url).await.unwrap();
    let clock: Arc<dyn Clock> = match &first.clock {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(SystemClock),
    };
    let config = (*first.state.config).clone();
    let state = AppState::new(store, clock, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        keyward_server::serve(listener, st, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        url: format!("http://{addr}"),
        addr,
        http: reqwest::Client::new(),
        admin: first.admin.clone(),
        backend: first.backend,
        db_url: first.db_url.clone(),
        clock: first.clock.clone(),
        state,
        sweep_last: std::sync::Mutex::new(None),
        shutdown: Some(tx),
        join: Some(join),
        _dir: None,
    }
}

/// A real local webhook receiver: answers 503 to the first `fail_first` requests, then 200;
/// checks every signature independently (HMAC-SHA256 over `"<t>.<body>"`).
pub struct Receiver {
    pub url: String,
    pub secret: Arc<std::sync::Mutex<String>>,
    /// Every request received: (attempt number, body, signature valid).
    pub requests: Arc<std::sync::Mutex<Vec<(usize, Value, bool)>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        Self::start_on("127.0.0.1:0", fail_first).await
    }

    pub async fn start_on(addr: &str, fail_first: usize) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        use hmac::{Hmac, Mac};
        let secret = Arc::new(std::sync::Mutex::new(String::new()));
        let requests: Arc<std::sync::Mutex<Vec<(usize, Value, bool)>>> = Arc::default();
        let (s2, r2) = (secret.clone(), requests.clone());
        let handler = move |headers: HeaderMap, body: String| {
            let (secret, requests) = (s2.clone(), r2.clone());
            async move {
                let sig = headers
                    .get("keyward-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let (t, v1) = sig.split_once(',').unwrap_or(("", ""));
                let t = t.strip_prefix("t=").unwrap_or("");
                let v1 = v1.strip_prefix("v1=").unwrap_or("");
                let mut mac =
                    <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.lock().unwrap().as_bytes())
                        .unwrap();
                mac.update(format!("{t}.{body}").as_bytes());
                let want: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let mut reqs = requests.lock().unwrap();
                let n = reqs.len() + 1;
                reqs.push((
                    n,
                    serde_json::from_str(&body).unwrap_or(Value::Null),
                    want == v1,
                ));
                if n <= fail_first {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Receiver {
            url,
            secret,
            requests,
            shutdown: Some(tx),
        }
    }

    /// Bodies of the requests received for one event type (retries included).
    pub fn received(&self, kind: &str) -> Vec<Value> {
        let reqs = self.requests.lock().unwrap();
        reqs.iter()
            .filter(|(_, b, _)| b["type"] == kind)
            .map(|(_, b, _)| b.clone())
            .collect()
    }

    /// Waits (up to 10 s) until `n` requests of this type arrived; returns what arrived.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Vec<Value> {
        let started = std::time::Instant::now();
        while self.received(kind).len() < n
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.received(kind)
    }

    pub fn all_signatures_valid(&self) -> bool {
        self.requests.lock().unwrap().iter().all(|(_, _, ok)| *ok)
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Creates a webhook for `events` pointing at the receiver and gives it the secret.
    pub async fn webhook(&self, rx: &Receiver, events: &[&str]) -> String {
        let r = self
            .post("/v1/webhooks", json!({"url": rx.url, "events": events}))
            .await
            .expect(201);
        *rx.secret.lock().unwrap() = r.body["secret"].as_str().unwrap().to_string();
        r.id()
    }

    /// Makes the next [`TestApp::sweep`] judge anomalies as a node's first sweep does (the
    /// newest complete minute only), as after a restart.
    pub fn forget_sweeps(&self) {
        *self.sweep_last.lock().unwrap() = None;
    }

    /// Runs every sweep once now. Anomaly patterns are judged from the minute after the one
    /// the previous sweep judged, as in the server.
    pub async fn sweep(&self) -> keyward_server::jobs::sweep::Report {
        let mut last = *self.sweep_last.lock().unwrap();
        let report = keyward_server::jobs::sweep::sweep_once(
            &self.state.control,
            self.state.config.retention(),
            &mut last,
        )
        .await
        .unwrap();
        *self.sweep_last.lock().unwrap() = last;
        report
    }

    /// Sends every due webhook delivery now.
    pub async fn deliver(&self) -> usize {
        keyward_server::jobs::webhooks::deliver_due(
            &self.state.control,
            &keyward_server::jobs::webhooks::Deliverer::from_config(&self.state.config),
        )
        .await
        .unwrap()
    }

    /// The whole audit trail as `GET /v1/audit/export?format=` streams it (200 asserted).
    pub async fn audit_export(&self, format: &str) -> String {
        let res = self
            .http
            .get(format!("{}/v1/audit/export?format={format}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Audit events of one action, oldest first.
    /// Runs `sql` (one statement or several) on the app's database behind keyward's back: an
    /// intruder's edit, or a fault the test injects.
    pub async fn run_sql(&self, sql: &str) {
        use sqlx::{Connection, Executor};
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
                c.execute(sql).await.unwrap();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                c.execute(sql).await.unwrap();
            }
        }
    }

    /// The value of counter `name` on this node's `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").await.body;
        let text = text.as_str().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    pub async fn audit_actions(&self, action: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/audit?action={action}&limit=500"))
            .await
            .expect(200);
        let mut items = r.body["items"].as_array().unwrap().clone();
        items.reverse();
        items
    }
}

/// `POST {url}/v1/verify` with `body` from a task that does not hold the app (concurrent
/// clients): the answer's JSON.
pub async fn post_verify(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(format!("{url}/v1/verify"))
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /v1/keys` with each of `bodies`, all at once, body `i` on node `i % nodes` (as the
/// admin): each answer's status and id, in the order of `bodies`.
pub async fn create_keys_at_once(nodes: &[&TestApp], bodies: Vec<Value>) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let node = nodes[i % nodes.len()];
        let (http, url, admin) = (node.http.clone(), node.url.clone(), node.admin.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/keys"))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body["id"].as_str().unwrap_or_default().to_string())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// `n` verifications, concurrently, request `i` on node `i % nodes` with key `i % keys`;
/// counts VALID.
pub async fn spread(nodes: &[&TestApp], keys: &[String], n: usize) -> usize {
    spread_answers(nodes, keys, n)
        .await
        .iter()
        .filter(|a| a["code"] == "VALID")
        .count()
}

/// [`spread`]'s answers themselves (for a message that says why some were not valid).
pub async fn spread_answers(nodes: &[&TestApp], keys: &[String], n: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let (http, url) = (node.http.clone(), node.url.clone());
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            post_verify(&http, &url, &json!({"key": key})).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

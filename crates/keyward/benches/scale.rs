//! A million keys: the generator of a realistic large database, and what managing it costs
//! (`docs/benchmarks.md`, "A million keys"):
//!
//! ```sh
//! cargo bench -p keyward --bench scale
//! ```
//!
//! - `generate`: writes `KEYWARD_SCALE_KEYS` keys (default 1,000,000) into one keyspace, with
//!   100,000 owners (one of them, `owner-big`, holds 1 % of the keys), names of a few words,
//!   `env` and `team` labels, every status (5 % revoked, 2 % expired, 2 % disabled, 1 % rotating),
//!   usage counters (60 % used in the last day, 20 % months ago, 20 % never) and one chained
//!   `key.create` audit event per key. It goes through the store's batch writes (`insert_keys`,
//!   `append_audits`), 10,000 keys a transaction, so the database is what the server would have
//!   written, and reports the time it took.
//! - Then a real server on loopback over that database answers, one client over keep-alive:
//!   - key list pages (`GET /v1/keys`, 50 a page) unfiltered, deep, and with every filter:
//!     p50 and p99 of 100 requests each;
//!   - the dashboard's overview, keys list and key page (signed in), p50 and p99, and the
//!     overview's first view on a second server started over the loaded database;
//!   - the inventory report streamed as CSV and JSON (keys/s, and the process's peak memory
//!     before and after);
//!   - the audit export (events/s) and `GET /v1/audit/verify` (seconds);
//!   - the bulk revocation of `owner-big`'s keys (`POST /v1/keys/revoke`).
//!
//! `KEYWARD_SCALE_PARTS` picks what is measured after generating (any of `lists`, `dashboard`,
//! `streams`, `revoke`; default all). `KEYWARD_SCALE_BACKENDS=sqlite` (or `postgres`) runs one
//! backend; by default SQLite (a
//! temporary file) and, when it answers on 127.0.0.1:5432, PostgreSQL (a fresh schema). The
//! sweeper runs once after generating (it marks the expired keys, as a running server would
//! have) and is off while it measures.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator the `keyward` binary runs with: the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::id::new_id;
use keyward_core::kinds::{AuditAction, TargetType};
use keyward_core::model::{Actor, Key, Role};
use keyward_core::time::{Clock, SystemClock, Timestamp};
use keyward_server::authz::Ctx;
use keyward_server::{AppState, Config};
use keyward_store::{NewEvent, Store};
use serde_json::{json, Map, Value};

const DAY: i64 = 86_400_000;
const OWNERS: u64 = 100_000;
const BIG_OWNER: &str = "owner-big";
const WORDS: [&str; 24] = [
    "billing",
    "search",
    "export",
    "mobile",
    "partner",
    "analytics",
    "checkout",
    "ledger",
    "payroll",
    "ingest",
    "reports",
    "backup",
    "webhook",
    "gateway",
    "catalog",
    "inventory",
    "shipping",
    "support",
    "identity",
    "pricing",
    "metrics",
    "alerts",
    "sync",
    "archive",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// A small deterministic generator (xorshift64*): the same database on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Key number `i` of `n`, created over the two years before `now` in order.
fn key_number(i: u64, n: u64, ks: &str, prefix: &str, now: Timestamp, rng: &mut Rng) -> Key {
    let span = 730 * DAY;
    let created = Timestamp::from_millis(now.millis() - span + (span / n as i64) * i as i64);
    let plaintext = keyward_core::keyformat::generate(prefix);
    let mut k = Key::for_plaintext(plaintext.expose(), ks, created, Actor::cli("generator"))
        .expect("a generated key parses");
    k.owner = Some(if i.is_multiple_of(100) {
        BIG_OWNER.to_string()
    } else {
        format!("user-{:05}", rng.below(OWNERS))
    });
    let env = ENVS[[0, 0, 0, 0, 0, 0, 1, 1, 1, 2][rng.below(10) as usize]];
    k.name = format!(
        "{} {} {env} {i}",
        WORDS[rng.below(WORDS.len() as u64) as usize],
        WORDS[rng.below(WORDS.len() as u64) as usize]
    );
    k.labels.insert("env".into(), env.into());
    k.labels
        .insert("team".into(), format!("team-{}", rng.below(100)));
    k.scopes = vec!["read".into()];
    match rng.below(100) {
        0..=4 => {
            k.revoked_at = Some(created.plus_millis(rng.below(30 * DAY as u64) as i64));
            k.revoked_by = Some(Actor::cli("generator"));
            k.revoked_reason = Some("left the company".into());
        }
        5..=6 => k.expires_at = Some(now.plus_millis(-(rng.below(90 * DAY as u64) as i64) - 1)),
        7..=8 => k.enabled = false,
        9 => {
            k.rotated_to = Some(new_id("key", created));
            k.expires_at = Some(now.plus_millis(rng.below(7 * DAY as u64) as i64 + 1));
        }
        10..=39 => k.expires_at = Some(now.plus_millis(rng.below(365 * DAY as u64) as i64 + 1)),
        _ => {}
    }
    k.updated_at = k.revoked_at.unwrap_or(created);
    match rng.below(10) {
        0..=5 => {
            k.last_used_at = Some(now.plus_millis(-(rng.below(DAY as u64) as i64)));
            k.call_count = 1 + rng.below(100_000) as i64;
        }
        6..=7 => {
            k.last_used_at =
                Some(now.plus_millis(-(30 * DAY + rng.below(335 * DAY as u64) as i64)));
            k.call_count = 1 + rng.below(1_000) as i64;
        }
        _ => {}
    }
    k
}

fn created_event(k: &Key) -> NewEvent {
    let mut changes = Map::new();
    changes.insert("name".into(), json!([null, k.name]));
    changes.insert("owner".into(), json!([null, k.owner]));
    NewEvent {
        id: new_id("evt", k.created_at),
        at: k.created_at,
        actor: k.created_by.clone(),
        action: AuditAction::KeyCreate,
        target_type: TargetType::Key,
        target_id: k.id.clone(),
        reason: None,
        request_id: None,
        ip: None,
        changes,
    }
}

/// Writes `n` keys into keyspace `ks` (prefix `prefix`), 10,000 a transaction with their
/// audit events; then drops the change feed they wrote (no node has cached them). Returns one
/// key id, for the key page.
async fn generate(store: &Arc<dyn Store>, ks: &str, prefix: &str, n: u64) -> String {
    const TX: u64 = 10_000;
    let now = SystemClock.now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sample = String::new();
    let mut i = 0;
    while i < n {
        let keys: Vec<Key> = (i..(i + TX).min(n))
            .map(|j| key_number(j, n, ks, prefix, now, &mut rng))
            .collect();
        let events = keys.iter().map(created_event).collect();
        if sample.is_empty() {
            sample = keys[keys.len() / 2].id.clone();
        }
        let mut tx = store.begin().await.expect("begin");
        tx.insert_keys(&keys).await.expect("keys");
        tx.append_audits(events).await.expect("audit");
        tx.commit().await.expect("commit");
        i += TX;
    }
    store
        .prune_history(now.plus_millis(-3650 * DAY), now.plus_secs(1))
        .await
        .expect("feed");
    sample
}

struct Server {
    /// When the server was asked to start.
    started: Instant,
    url: String,
    admin: String,
    state: AppState,
    http: reqwest::Client,
}

async fn serve(db: &str) -> Server {
    let config = Config {
        sweep_interval: Duration::from_secs(86_400),
        ..Config::default()
    };
    let started = Instant::now();
    let (url, admin, state) = common::serve_with(db, config).await;
    Server {
        started,
        url,
        admin: admin.expose().to_string(),
        state,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .expect("client"),
    }
}

impl Server {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Vec<u8>) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.bytes().await.expect("body").to_vec())
    }
    /// A dashboard page read whole with the session cookie `session`: its status.
    async fn page(&self, session: &str, path: &str) -> u16 {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .header("cookie", session)
            .send()
            .await
            .expect("page");
        let status = res.status().as_u16();
        let _ = res.bytes().await;
        status
    }
    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("json")
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// p50 and p99 of `n` requests, the i-th to `path(i)`, answered 200.
async fn latency(name: &str, n: usize, mut get: impl AsyncFnMut(usize) -> (u16, usize)) {
    let mut times = Vec::with_capacity(n);
    let mut rows = 0;
    for i in 0..n {
        let started = Instant::now();
        let (status, items) = get(i).await;
        times.push(started.elapsed());
        assert_eq!(status, 200, "{name}");
        rows += items;
    }
    let p50 = percentile(&mut times, 0.5);
    let p99 = percentile(&mut times, 0.99);
    println!(
        "{name}: p50 {}, p99 {} ({n} requests, {:.0} rows a page)",
        ms(p50),
        ms(p99),
        rows as f64 / n as f64
    );
}

/// The process's anonymous resident memory now (`RssAnon`: the heap, not the database files
/// SQLite maps), in MiB.
fn anon_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Streams `path` to the end without keeping it: (bytes, lines, seconds, the most anonymous
/// memory the process held above what it held before, sampled every 20 ms, in MiB).
async fn stream(s: &Server, path: &str) -> (usize, usize, f64, f64) {
    let before = anon_mib();
    let peak = Arc::new(std::sync::Mutex::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = anon_mib();
                if let Ok(mut p) = peak.lock() {
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let mut res = s
        .http
        .get(format!("{}{path}", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200, "{path}");
    let (mut bytes, mut lines) = (0, 0);
    while let Some(chunk) = res.chunk().await.expect("body") {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let took = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let peak = peak.lock().map(|p| *p).unwrap_or(before);
    (bytes, lines, took, peak - before)
}

async fn lists(s: &Server, ks: &str) {
    let page = |q: String| format!("/v1/keys?keyspace_id={ks}&limit=50{q}");
    let mut rng = Rng(7);
    type Query = Box<dyn Fn(&mut Rng) -> String>;
    let filters: Vec<(&str, Query)> = vec![
        ("none", Box::new(|_| String::new())),
        (
            "owner",
            Box::new(|r| format!("&owner=user-{:05}", r.below(OWNERS))),
        ),
        (
            "owner (10,000 keys)",
            Box::new(|_| format!("&owner={BIG_OWNER}")),
        ),
        ("status=active", Box::new(|_| "&status=active".into())),
        ("status=revoked", Box::new(|_| "&status=revoked".into())),
        ("status=expired", Box::new(|_| "&status=expired".into())),
        ("status=disabled", Box::new(|_| "&status=disabled".into())),
        ("status=rotating", Box::new(|_| "&status=rotating".into())),
        ("label env:prod", Box::new(|_| "&label=env:prod".into())),
        (
            "label team (1 %)",
            Box::new(|r| format!("&label=team:team-{}", r.below(100))),
        ),
        ("label no match", Box::new(|_| "&label=env:nowhere".into())),
        (
            "q word",
            Box::new(|r| format!("&q={}", WORDS[r.below(WORDS.len() as u64) as usize])),
        ),
        (
            "q one key",
            Box::new(|r| format!("&q=%20{}", 100_000 + r.below(800_000))),
        ),
        ("q no match", Box::new(|_| "&q=zzzz".into())),
        (
            "unused_for_secs=90d",
            Box::new(|_| "&unused_for_secs=7776000".into()),
        ),
        (
            "owner + status=active",
            Box::new(|r| format!("&owner=user-{:05}&status=active", r.below(OWNERS))),
        ),
    ];
    for (name, q) in &filters {
        let paths: Vec<String> = (0..100).map(|_| page(q(&mut rng))).collect();
        latency(&format!("list/{name}"), paths.len(), async |i| {
            let (status, body) = s.call(reqwest::Method::GET, &paths[i], None).await;
            if status != 200 {
                eprintln!("{}: {}", paths[i], String::from_utf8_lossy(&body));
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            (status, v["items"].as_array().map_or(0, Vec::len))
        })
        .await;
    }
    // Page 20 of the unfiltered list, each page from the previous one's cursor.
    let mut cursor = String::new();
    let mut times = Vec::new();
    for _ in 0..20 {
        let path = format!("{}{}", page(String::new()), cursor);
        let started = Instant::now();
        let v = s.get_json(&path).await;
        times.push(started.elapsed());
        let next = v["next_cursor"].as_str().unwrap_or_default().to_string();
        cursor = format!("&cursor={next}");
    }
    println!(
        "list/paging: p50 {}, max {} (20 pages one after another)",
        ms(percentile(&mut times, 0.5)),
        ms(percentile(&mut times, 1.0))
    );
}

/// Signs a dashboard user in: its session cookie.
async fn dashboard_session(s: &Server) -> String {
    let ctx = Ctx::operator(Actor::cli("bench"));
    let password = "a long bench password 1";
    // Made once per database: a restarted server signs the same user in.
    if s.state
        .store()
        .users()
        .user_by_email("bench@example.com")
        .await
        .expect("users")
        .is_none()
    {
        keyward_server::accounts::create_user(
            s.state.records(),
            &ctx.allow().expect("operator"),
            "bench@example.com",
            Role::Admin,
            keyward_core::secret::Secret::new(password.into()),
        )
        .await
        .expect("user");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http
        .get(format!("{}/login", s.url))
        .send()
        .await
        .expect("login page");
    let cookie = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .expect("cookie")
            .to_string()
    };
    let form = cookie(&page, "kw_form");
    let html = page.text().await.expect("html");
    let at = html.find(r#"name="csrf" value=""#).expect("csrf") + r#"name="csrf" value=""#.len();
    let csrf = &html[at..at + html[at..].find('"').expect("csrf end")];
    let res = http
        .post(format!("{}/login", s.url))
        .header("cookie", form)
        .form(&[
            ("csrf", csrf),
            ("email", "bench@example.com"),
            ("password", password),
        ])
        .send()
        .await
        .expect("sign in");
    cookie(&res, "kw_session")
}

async fn dashboard(s: &Server, ks: &str, key: &str) {
    let session = dashboard_session(s).await;
    let page = async |path: &str| (s.page(&session, path).await, 0);
    // The overview's first view after start takes the census; later ones show it (see
    // docs/decisions.md): measured apart.
    let started = Instant::now();
    assert_eq!(page("/").await.0, 200);
    println!("dashboard/overview, first view: {}", ms(started.elapsed()));
    for (name, path) in [
        ("overview", "/".to_string()),
        ("keys", "/keys".to_string()),
        ("keys of the keyspace", format!("/keys?keyspace={ks}")),
        (
            "keys, a name search",
            format!("/keys?keyspace={ks}&q=ledger"),
        ),
        ("key page", format!("/keys/{key}")),
    ] {
        latency(&format!("dashboard/{name}"), 100, async |_| {
            page(&path).await
        })
        .await;
    }
}

async fn streams(s: &Server, ks: &str, n: u64) {
    for format in ["csv", "json"] {
        let path = format!("/v1/reports/inventory?keyspace_id={ks}&format={format}");
        let (bytes, _, took, grew) = stream(s, &path).await;
        println!(
            "inventory/{format}: {:.0} keys/s ({n} keys, {:.0} MiB in {took:.1} s; memory grew by at most {grew:.0} MiB)",
            n as f64 / took,
            bytes as f64 / 1048576.0,
        );
    }
    let (_, events, took, grew) = stream(s, "/v1/audit/export?format=jsonl").await;
    println!(
        "audit/export: {:.0} events/s ({events} events in {took:.1} s; memory grew by at most {grew:.0} MiB)",
        events as f64 / took,
    );
    let started = Instant::now();
    let v = s.get_json("/v1/audit/verify").await;
    println!(
        "audit/verify: {:.1} s ({} events, ok {})",
        started.elapsed().as_secs_f64(),
        v["events"],
        v["ok"]
    );
}

async fn bulk_revoke(s: &Server, ks: &str) {
    let started = Instant::now();
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/v1/keys/revoke",
            Some(
                json!({"owner": BIG_OWNER, "keyspace_id": ks, "reason": "bench: left the company"}),
            ),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("json");
    println!(
        "bulk revoke: {} keys in {:.2} s",
        v["revoked"],
        took.as_secs_f64()
    );
}

async fn run(name: &str, db: &str, n: u64) {
    let s = serve(db).await;
    let prefix = format!(
        "s{}",
        keyward_core::keyformat::base62_random(6).to_lowercase()
    );
    let ks = s
        .call(
            reqwest::Method::POST,
            "/v1/keyspaces",
            Some(json!({"name": "scale", "prefix": prefix, "policy": {
                "require_owner": false, "max_lifetime_secs": null,
                "inactivity_revoke_secs": null, "expiry_warning_secs": null}})),
        )
        .await;
    assert_eq!(ks.0, 201, "{}", String::from_utf8_lossy(&ks.1));
    let ks: Value = serde_json::from_slice(&ks.1).expect("keyspace");
    let ks = ks["id"].as_str().expect("id").to_string();
    println!("== {name}");
    let started = Instant::now();
    let sample = generate(s.state.store(), &ks, &prefix, n).await;
    println!(
        "generate: {n} keys with their audit events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The sweep a running server would have made as the generated keys expired: without it,
    // the server started for the restart measurement would mark the 2 % expired keys (an
    // audit event each) while its first view is measured.
    let started = Instant::now();
    let swept = keyward_server::jobs::sweep::sweep_once(
        &s.state.control,
        s.state.config.retention(),
        &mut None,
    )
    .await
    .expect("sweep");
    println!(
        "sweep: {} keys marked expired in {:.1} s",
        swept.expired,
        started.elapsed().as_secs_f64()
    );
    if db.starts_with("postgres") {
        // What autovacuum does within a minute of a load this size: the planner's statistics.
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(db).await.expect("postgres");
        pool.execute(
            "ANALYZE keys; ANALYZE key_labels; ANALYZE key_counters; ANALYZE audit_events",
        )
        .await
        .expect("analyze");
        pool.close().await;
    }
    let parts = std::env::var("KEYWARD_SCALE_PARTS")
        .unwrap_or_else(|_| "lists,dashboard,streams,revoke".into());
    if parts.contains("lists") {
        lists(&s, &ks).await;
    }
    if parts.contains("dashboard") {
        dashboard(&s, &ks, &sample).await;
        // A node started over the loaded database counts the overview's keys as it starts:
        // a view that comes sooner waits for that count, a later one shows it.
        let restarted = serve(db).await;
        let session = dashboard_session(&restarted).await;
        let started = Instant::now();
        assert_eq!(restarted.page(&session, "/").await, 200);
        println!(
            "dashboard/overview, first view after a restart (sign-in {:.0?} after start): {}",
            started.duration_since(restarted.started),
            ms(started.elapsed())
        );
        let kept = restarted.state.overview_counted().await;
        let counted = restarted.started.elapsed();
        let restarted = serve(db).await;
        let kept_again = restarted.state.overview_counted().await;
        let session = dashboard_session(&restarted).await;
        let started = Instant::now();
        assert_eq!(restarted.page(&session, "/").await, 200);
        println!(
            "dashboard/overview, counted at start in {} ({kept}/{kept_again} keyspaces kept); \
             first view after that count: {}",
            ms(counted),
            ms(started.elapsed())
        );
    }
    if parts.contains("streams") {
        streams(&s, &ks, n).await;
    }
    if parts.contains("revoke") {
        bulk_revoke(&s, &ks).await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery: nothing to list
    }
    let n: u64 = std::env::var("KEYWARD_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let backends =
        std::env::var("KEYWARD_SCALE_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    // Server errors and warnings on stderr (a failed request names its request id).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if backends.contains("sqlite") {
            let dir = std::env::temp_dir().join(format!(
                "keyward-bench-scale-{}",
                keyward_core::keyformat::base62_random(8)
            ));
            std::fs::create_dir_all(&dir).expect("directory");
            let db = format!("sqlite://{}", dir.join("k.db").display());
            run("SQLite", &db, n).await;
            let size: u64 = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            println!("database: {:.0} MiB on disk", size as f64 / 1048576.0);
            let _ = std::fs::remove_dir_all(&dir);
        }
        if backends.contains("postgres") {
            use keyward_store::testing;
            if testing::postgres_available().await {
                let schema = testing::unique_schema();
                testing::create_schema(&schema).await.expect("schema");
                run("PostgreSQL", &testing::pg_url_with_schema(&schema), n).await;
                // A million keys are a gigabyte or two: not left behind.
                use sqlx::Executor;
                if let Ok(pool) = sqlx::PgPool::connect(&testing::pg_url()).await {
                    let _ = pool
                        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
                        .await;
                }
            } else {
                println!("PostgreSQL: SKIPPED (nothing answers on 127.0.0.1:5432)");
            }
        }
    });
}

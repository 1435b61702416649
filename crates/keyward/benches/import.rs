//! Importing keys, and what an imported key costs afterwards (`docs/benchmarks.md`):
//!
//! ```sh
//! cargo bench -p keyward --bench import
//! ```
//!
//! - `throughput`: one client over keep-alive imports 20,000 records in batches of 1,000 through
//!   `POST /v1/keyspaces/{id}/keys/import` (a real server on loopback), as plaintext keys of
//!   another format and as SHA-256 hashes; keys/s on SQLite (a temporary file) and, when it
//!   answers on 127.0.0.1:5432, PostgreSQL (a fresh schema).
//! - `create`: for comparison, 3,000 keys created one `POST /v1/keys` at a time by the same
//!   client. `KEYWARD_BENCH_CREATE_ONLY=1` runs this line alone, on SQLite and PostgreSQL. On
//!   SQLite it also counts the write-ahead-log frames (pages written) of 100 more creates.
//! - `bcrypt`: 200 records hashed with bcrypt cost 10 (a common production setting): the import
//!   rate, then each key's first verification over HTTP (the one-time bcrypt check, the upgrade
//!   to SHA-256 and its audit event) and its second (the cached answer), p50 and p99.
//! - `verify/*` (criterion): the in-process verification of a cached key issued by keyward and
//!   of an imported key after its upgrade, side by side: they are the same cache entry, so they
//!   should cost the same.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator the `keyward` binary runs with: the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::Criterion;
use keyward_client::{Client, CreateKey, CreateKeyspace, ImportKeys, ImportRecord, Secret};
use keyward_core::api::HashAlgorithm;
use keyward_server::verifier::Request;
use keyward_server::AppState;

struct Server {
    client: Client,
    state: AppState,
    dir: Option<TempDir>,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(db: &str, dir: Option<TempDir>) -> Server {
    let (url, admin, state) = common::serve(db).await;
    let client = Client::builder(url)
        .token(admin.expose())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    Server { client, state, dir }
}

async fn sqlite() -> Server {
    let d = std::env::temp_dir().join(format!("keyward-bench-import-{}", rand_suffix()));
    std::fs::create_dir_all(&d).expect("temporary directory");
    let db = format!("sqlite://{}", d.join("k.db").display());
    start(&db, Some(TempDir(d))).await
}

async fn postgres() -> Option<Server> {
    use keyward_store::testing;
    if !testing::postgres_available().await {
        return None;
    }
    let schema = testing::unique_schema();
    testing::create_schema(&schema).await.expect("schema");
    Some(start(&testing::pg_url_with_schema(&schema), None).await)
}

fn rand_suffix() -> String {
    keyward_core::keyformat::base62_random(10)
}

fn foreign_key() -> String {
    format!("sk_live_{}", keyward_core::keyformat::base62_random(28))
}

fn sha256_hex(s: &str) -> String {
    keyward_core::keyformat::KeyHash::of(s).to_hex()
}

async fn keyspace(c: &Client, preset_relaxed: bool) -> String {
    let mut req = CreateKeyspace {
        name: "import bench".into(),
        prefix: format!("b{}", rand_suffix().to_lowercase()),
        ..CreateKeyspace::default()
    };
    if preset_relaxed {
        req.preset = Some(keyward_core::policy::Preset::Relaxed);
        req.policy = Some(
            serde_json::from_value(serde_json::json!({"require_owner": false})).expect("patch"),
        );
    }
    c.create_keyspace(&req).await.expect("keyspace").id
}

/// Imports `records` in batches of 1,000; keys/s.
async fn import_all(c: &Client, ks: &str, records: Vec<ImportRecord>) -> f64 {
    let n = records.len();
    let mut batches: Vec<Vec<ImportRecord>> = Vec::new();
    let mut it = records.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(it.by_ref().take(1000).collect());
    }
    let started = Instant::now();
    for keys in batches {
        let r = c
            .import_keys(
                ks,
                &ImportKeys {
                    keys,
                    allow_policy_violations: false,
                },
            )
            .await
            .expect("import");
        assert_eq!(r.skipped, 0);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Keys created one `POST /v1/keys` at a time by one client over keep-alive: the baseline an
/// import is compared with (each creation is one transaction with its audit event).
async fn create_rate(name: &str, s: &Server) {
    let ks = keyspace(&s.client, true).await;
    let started = Instant::now();
    create_keys(s, &ks, "k", 3000).await;
    let rate = 3000.0 / started.elapsed().as_secs_f64();
    println!("create/{name}: {rate:.0} keys/s (3,000 POST /v1/keys, one client, keep-alive)");
    // SQLite: the write-ahead-log frames (pages written) per create, over 100 creates that
    // no checkpoint interrupted (one restarts the log: tried again).
    let Some(wal) = s.dir.as_ref().map(|d| d.0.join("k.db-wal")) else {
        return;
    };
    for _ in 0..5 {
        let before = wal_frames(&wal);
        create_keys(s, &ks, "w", 100).await;
        let after = wal_frames(&wal);
        if before.0 == after.0 && after.1 > before.1 {
            println!(
                "create/{name}: {:.1} write-ahead-log frames (pages) per create, {:.1} commits",
                (after.1 - before.1) as f64 / 100.0,
                (after.2 - before.2) as f64 / 100.0
            );
            return;
        }
    }
}

/// Creates `n` keys named `{prefix}{i}` in `ks`, one `POST /v1/keys` at a time.
async fn create_keys(s: &Server, ks: &str, prefix: &str, n: usize) {
    for i in 0..n {
        s.client
            .create_key(&CreateKey {
                keyspace_id: ks.to_string(),
                name: format!("{prefix}{i}"),
                owner: Some("acme".into()),
                ..CreateKey::default()
            })
            .await
            .expect("create");
    }
}

/// A write-ahead log's salt (which changes when it restarts), its frames and its commit frames.
fn wal_frames(path: &std::path::Path) -> (u64, u64, u64) {
    let Ok(d) = std::fs::read(path) else {
        return (0, 0, 0);
    };
    let word = |at: usize| {
        d.get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (page, salt) = (
        word(8) as usize,
        (u64::from(word(16)) << 32) | u64::from(word(20)),
    );
    let (mut at, mut frames, mut commits) = (32, 0, 0);
    while page > 0 && at + 24 + page <= d.len() {
        if (u64::from(word(at + 8)) << 32 | u64::from(word(at + 12))) != salt {
            break;
        }
        frames += 1;
        if word(at + 4) != 0 {
            commits += 1;
        }
        at += 24 + page;
    }
    (salt, frames, commits)
}

async fn throughput(name: &str, s: &Server) {
    let ks = keyspace(&s.client, true).await;
    let plain: Vec<ImportRecord> = (0..20_000)
        .map(|_| ImportRecord {
            plaintext: Some(Secret::new(foreign_key())),
            owner: Some("acme".into()),
            ..ImportRecord::default()
        })
        .collect();
    let rate = import_all(&s.client, &ks, plain).await;
    println!("throughput/{name}/plaintext: {rate:.0} keys/s (20,000 records, batches of 1,000)");
    let hashed: Vec<ImportRecord> = (0..20_000)
        .map(|i| ImportRecord {
            hash: Some(sha256_hex(&foreign_key())),
            algorithm: Some(HashAlgorithm::Sha256),
            external_id: Some(format!("ext-{i}")),
            ..ImportRecord::default()
        })
        .collect();
    let rate = import_all(&s.client, &ks, hashed).await;
    println!("throughput/{name}/sha256+external_id: {rate:.0} keys/s (20,000 records)");
}

async fn bcrypt_keys(name: &str, s: &Server) {
    let ks = keyspace(&s.client, true).await;
    let keys: Vec<(String, String)> = (0..200)
        .map(|i| {
            let prefix = format!("P{i:07}.");
            (format!("{prefix}{}", rand_suffix().repeat(3)), prefix)
        })
        .collect();
    let hashed = Instant::now();
    let records: Vec<ImportRecord> = keys
        .iter()
        .map(|(k, lookup)| ImportRecord {
            hash: Some(bcrypt::hash(k, 10).expect("bcrypt")),
            algorithm: Some(HashAlgorithm::Bcrypt),
            lookup: Some(lookup.clone()),
            ..ImportRecord::default()
        })
        .collect();
    let hashing = hashed.elapsed();
    let rate = import_all(&s.client, &ks, records).await;
    println!(
        "bcrypt/{name}/import: {rate:.0} keys/s (200 records of cost 10; hashing them here took {:.1} s)",
        hashing.as_secs_f64()
    );
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (k, _) in &keys {
        for times in [&mut first, &mut second] {
            let t = Instant::now();
            let a = s
                .client
                .verify(&keyward_client::VerifyRequest::new(k.clone()))
                .await
                .expect("verify");
            times.push(t.elapsed());
            assert!(a.valid, "{:?}", a.code);
        }
    }
    println!(
        "bcrypt/{name}/first verification: p50 {:.2} ms, p99 {:.2} ms (bcrypt check, upgrade to SHA-256, audit event)",
        percentile(&mut first, 0.5).as_secs_f64() * 1e3,
        percentile(&mut first, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "bcrypt/{name}/second verification: p50 {:.3} ms, p99 {:.3} ms",
        percentile(&mut second, 0.5).as_secs_f64() * 1e3,
        percentile(&mut second, 0.99).as_secs_f64() * 1e3
    );
}

/// A native key and an upgraded imported key, both verified once (cached), for criterion.
async fn two_keys(s: &Server) -> (String, String) {
    let ks = keyspace(&s.client, true).await;
    let native = s
        .client
        .create_key(&CreateKey {
            keyspace_id: ks.clone(),
            name: "native".into(),
            ..CreateKey::default()
        })
        .await
        .expect("key")
        .plaintext
        .expose()
        .to_string();
    let imported = "Q0000001.".to_string() + &rand_suffix().repeat(3);
    s.client
        .import_keys(
            &ks,
            &ImportKeys {
                keys: vec![ImportRecord {
                    hash: Some(bcrypt::hash(&imported, 10).expect("bcrypt")),
                    algorithm: Some(HashAlgorithm::Bcrypt),
                    lookup: Some("Q0000001.".into()),
                    ..ImportRecord::default()
                }],
                allow_policy_violations: false,
            },
        )
        .await
        .expect("import");
    for k in [&native, &imported] {
        let a = s
            .client
            .verify(&keyward_client::VerifyRequest::new(k.clone()))
            .await
            .expect("verify");
        assert!(a.valid);
    }
    (native, imported)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lite = rt.block_on(sqlite());
    rt.block_on(create_rate("sqlite", &lite));
    if std::env::var_os("KEYWARD_BENCH_CREATE_ONLY").is_some() {
        if let Some(pg) = rt.block_on(postgres()) {
            rt.block_on(create_rate("postgres", &pg));
        }
        return;
    }
    rt.block_on(throughput("sqlite", &lite));
    rt.block_on(bcrypt_keys("sqlite", &lite));
    match rt.block_on(postgres()) {
        Some(pg) => {
            rt.block_on(create_rate("postgres", &pg));
            rt.block_on(throughput("postgres", &pg));
            rt.block_on(bcrypt_keys("postgres", &pg));
        }
        None => println!("postgres: SKIPPED (no PostgreSQL on 127.0.0.1:5432)"),
    }
    let (native, imported) = rt.block_on(two_keys(&lite));
    let verifier = lite.state.verifier();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("verify");
    for (name, key) in [("native", &native), ("imported_upgraded", &imported)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = Request {
                    key,
                    scopes: &[],
                    ip: None,
                    cost: 1,
                    keyspaces: None,
                    route: None,
                };
                rt.block_on(verifier.verify(&req)).expect("verify")
            })
        });
    }
    g.finish();
    c.final_summary();
}

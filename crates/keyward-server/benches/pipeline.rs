//! The usage pipeline at scale: what one node's background work costs per minute when many
//! distinct keys are used in each minute (`docs/benchmarks.md`, "The usage pipeline at scale"):
//!
//! ```sh
//! cargo bench -p keyward-server --bench pipeline
//! KEYWARD_PIPELINE_KEYS=1000000 KEYWARD_PIPELINE_BACKENDS=sqlite cargo bench -p keyward-server --bench pipeline
//! ```
//!
//! For each backend (SQLite in a temporary file; PostgreSQL in a fresh schema when it answers on
//! 127.0.0.1:5432) and each count N of `KEYWARD_PIPELINE_KEYS` (default 10,000, 100,000 and
//! 1,000,000), a node with a manual clock and N cached keys in one keyspace (inactivity
//! revocation after 90 days and expiry warnings 7 days ahead, so those sweeps run) lives through
//! `KEYWARD_PIPELINE_MINUTES` (10) simulated minutes:
//!
//! - every key is verified 3 times a minute (at three seconds spread over the minute, each key
//!   from its own address), one key in 1,000 40 more times in minute 5 (a spike the sweep must
//!   find);
//! - after each simulated second the usage flusher runs (`jobs::usage::flush`, as
//!   `KEYWARD_USAGE_FLUSH_MS=1000` does; after every F seconds with
//!   `KEYWARD_PIPELINE_FLUSH_SECS=F`, F dividing 60, as `KEYWARD_USAGE_FLUSH_MS=F000` does), and
//!   after each minute the sweep
//!   (`jobs::sweep::sweep_once`: flush, expiry, warnings, inactivity, roll-up, retention,
//!   anomaly patterns);
//! - minute buckets are kept 5 minutes (`KEYWARD_USAGE_RETENTION_MINUTE_SECS=300`), so that
//!   from the sixth minute each sweep also deletes a minute of buckets, as every sweep does once
//!   retention applies.
//!
//! Only the background calls are timed; the verifications between them are not. For each
//! minute it prints the wall time of the flushes and of the sweep, and the CPU time they took
//! in this process and (PostgreSQL) in the database's processes, as a share of the minute.
//! The verdict is on the minutes after the first (the first also learns each key's address).

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator `keyward serve` runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{KeyMaker, KEY_LEN};
use keyward_core::time::{Clock, ManualClock, Timestamp};
use keyward_server::verifier::Request;
use keyward_server::{AppState, Config};
use keyward_store::testing;

const MINUTE: i64 = 60_000;
const CALLS_PER_MINUTE: usize = 3;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// CPU time (user + system) of the processes `pids` (this process when empty), in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    let read = |path: String| -> f64 {
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        // The fields after the command (which may hold spaces) close with ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state.
        (ticks(11) + ticks(12)) / 100.0
    };
    if pids.is_empty() {
        read("/proc/self/stat".into())
    } else {
        pids.iter().map(|p| read(format!("/proc/{p}/stat"))).sum()
    }
}

/// The PostgreSQL server's processes on this machine (for their CPU time).
fn postgres_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("postgres") || comm.starts_with("postmaster") {
            pids.push(pid);
        }
    }
    pids
}

/// Wall and CPU time of the background work, accumulated.
#[derive(Default, Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
    db_cpu: f64,
}

struct Meter {
    db: bool,
}

impl Meter {
    async fn time<T>(&self, into: &mut Cost, work: impl std::future::Future<Output = T>) -> T {
        // The database's backends may come and go: read the list each time.
        let pids = if self.db { postgres_pids() } else { Vec::new() };
        let (c0, d0) = (cpu_secs(&[]), if self.db { cpu_secs(&pids) } else { 0.0 });
        let t = Instant::now();
        let out = work.await;
        into.wall += t.elapsed().as_secs_f64();
        into.cpu += cpu_secs(&[]) - c0;
        if self.db {
            let pids = postgres_pids();
            into.db_cpu += cpu_secs(&pids) - d0;
        }
        out
    }
}

/// The seconds of the minute at which key `i` is used.
fn seconds_of(i: usize) -> [usize; CALLS_PER_MINUTE] {
    let s = (i * 7) % 60;
    [s, (s + 20) % 60, (s + 40) % 60]
}

async fn run(backend: &str, url: &str, n: usize, minutes: i64, flush_secs: usize) {
    let store = keyward_store::open(url).await.expect("open the store");
    let start = Timestamp::from_millis(
        (keyward_core::time::SystemClock.now().millis() / MINUTE) * MINUTE + 500,
    );
    let clock = ManualClock::new(start);
    let config = Config {
        retention_minute: Duration::from_secs(300),
        ..Config::default()
    };
    let st = AppState::new(store, Arc::new(clock.clone()), config);
    let retention = st.config.retention();

    // N keys in one keyspace, stored in batches and put in the cache.
    let t = Instant::now();
    let mut maker = KeyMaker::new();
    let mut ks = maker.keyspace();
    ks.policy.inactivity_revoke_secs = Some(90 * 86_400);
    ks.policy.expiry_warning_secs = Some(7 * 86_400);
    let mut tx = st.store().begin().await.expect("begin");
    tx.insert_keyspace(&ks).await.expect("keyspace");
    tx.commit().await.expect("commit");
    let mut plaintexts = String::with_capacity(n * KEY_LEN);
    let mut made = 0;
    while made < n {
        let batch: Vec<_> = (made..n.min(made + 10_000)).map(|_| maker.next()).collect();
        let keys: Vec<_> = batch.iter().map(|(_, k)| k.clone()).collect();
        let mut tx = st.store().begin().await.expect("begin");
        tx.insert_keys(&keys).await.expect("keys");
        tx.commit().await.expect("commit");
        for (p, k) in batch {
            plaintexts.push_str(p.expose());
            st.verifier().prime(k);
        }
        made = n.min(made + 10_000);
    }
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .expect("analyze");
    }
    println!(
        "\n{backend}, {n} keys used in each minute ({CALLS_PER_MINUTE} calls each), a flush every {flush_secs} s: set up in {:.1?}",
        t.elapsed()
    );
    println!("minute | flushes wall s | sweep wall s | keyward CPU s | database CPU s | share of one core");

    // Which keys are used in each second of a minute.
    let mut by_second: Vec<Vec<u32>> = vec![Vec::new(); 60];
    for i in 0..n {
        for s in seconds_of(i) {
            by_second[s].push(i as u32);
        }
    }
    let meter = Meter {
        db: url.starts_with("postgres"),
    };
    let no_scopes: Vec<String> = Vec::new();
    let verify = |i: usize, times: usize| {
        let key = &plaintexts[i * KEY_LEN..(i + 1) * KEY_LEN];
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 & 0x00ff_ffff)));
        let v = st.verifier().clone();
        let no_scopes = &no_scopes;
        async move {
            for _ in 0..times {
                v.verify(&Request {
                    key,
                    scopes: no_scopes,
                    ip: Some(ip),
                    cost: 1,
                    keyspaces: None,
                    route: None,
                })
                .await
                .expect("verified");
            }
        }
    };
    let mut shares = Vec::new();
    let mut last_minute = None;
    let mut anomalies = 0;
    for m in 0..minutes {
        let mut flushes = Cost::default();
        let mut sweep = Cost::default();
        let minute_start = start.millis() - 500 + m * MINUTE;
        for (s, keys) in by_second.iter().enumerate() {
            clock.set(Timestamp::from_millis(minute_start + s as i64 * 1000 + 200));
            for &i in keys {
                verify(i as usize, 1).await;
            }
            if m == 5 && s == 30 {
                for i in (0..n).step_by(1000) {
                    verify(i, 40).await;
                }
            }
            if (s + 1) % flush_secs != 0 {
                continue;
            }
            clock.set(Timestamp::from_millis(minute_start + s as i64 * 1000 + 700));
            meter
                .time(
                    &mut flushes,
                    keyward_server::jobs::usage::flush(&st.control),
                )
                .await
                .expect("flush");
        }
        clock.set(Timestamp::from_millis(minute_start + MINUTE + 100));
        let r = meter
            .time(
                &mut sweep,
                keyward_server::jobs::sweep::sweep_once(&st.control, retention, &mut last_minute),
            )
            .await
            .expect("sweep");
        anomalies += r.anomalies;
        let cpu = flushes.cpu + sweep.cpu + flushes.db_cpu + sweep.db_cpu;
        let share = cpu / 60.0 * 100.0;
        if m > 0 {
            shares.push(share);
        }
        println!(
            "{:>6} | {:>14.2} | {:>12.2} | {:>13.2} | {:>14.2} | {:>6.1} %",
            m + 1,
            flushes.wall,
            sweep.wall,
            flushes.cpu + sweep.cpu,
            flushes.db_cpu + sweep.db_cpu,
            share
        );
    }
    shares.sort_by(f64::total_cmp);
    let expected = n.div_ceil(1000);
    println!(
        "{backend}, {n} keys: median {:.1} %, worst {:.1} % of one core after the first minute; spikes found {anomalies} of {expected}",
        shares.get(shares.len() / 2).copied().unwrap_or(0.0),
        shares.last().copied().unwrap_or(0.0),
    );
}

fn main() {
    let counts: Vec<usize> = setting("KEYWARD_PIPELINE_KEYS", "10000,100000,1000000")
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let backends = setting("KEYWARD_PIPELINE_BACKENDS", "sqlite,postgres");
    let minutes: i64 = setting("KEYWARD_PIPELINE_MINUTES", "10")
        .parse()
        .expect("KEYWARD_PIPELINE_MINUTES is a number");
    let flush_secs: usize = setting("KEYWARD_PIPELINE_FLUSH_SECS", "1")
        .parse()
        .ok()
        .filter(|f| *f > 0 && 60 % *f == 0)
        .expect("KEYWARD_PIPELINE_FLUSH_SECS divides 60");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        for &n in &counts {
            if backends.contains("sqlite") {
                let dir = common::TempDir::new("bench-pipeline");
                let url = format!("sqlite://{}", dir.0.join("keyward.db").display());
                run("SQLite", &url, n, minutes, flush_secs).await;
            }
            if backends.contains("postgres") {
                if testing::postgres_available().await {
                    let schema = testing::unique_schema();
                    testing::create_schema(&schema).await.expect("schema");
                    run(
                        "PostgreSQL",
                        &testing::pg_url_with_schema(&schema),
                        n,
                        minutes,
                        flush_secs,
                    )
                    .await;
                    let pool = sqlx::PgPool::connect(&testing::pg_url())
                        .await
                        .expect("postgres");
                    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(&pool)
                        .await
                        .expect("drop the schema");
                } else {
                    println!("PostgreSQL: SKIPPED (nothing answers on 127.0.0.1:5432)");
                }
            }
        }
    });
}

//! What one sweep costs a node whose keys are in use (`docs/benchmarks.md`):
//!
//! ```sh
//! cargo bench -p keyward-server --bench sweep                     # 10,000 keys, 1 in 10 busy
//! KEYWARD_BENCH_KEYS=10000 KEYWARD_BENCH_BUSY_EVERY=1 cargo bench -p keyward-server --bench sweep
//! ```
//!
//! Stores the keys in a SQLite database in a temporary directory and writes an hour and a minute
//! of minute buckets for each (every `KEYWARD_BENCH_BUSY_EVERY`-th key busy at 40 valid calls a
//! minute, above the spike minimum, the rest at 2), runs a first sweep (it rolls the hour up into
//! hours and days), then three times: writes the minute that just closed for every key and times
//! `sweep_once` (the flush, expiry, warnings, inactivity, the roll-up of that minute, pruning, and
//! the anomaly patterns of that minute). Plain timings, not criterion: each sweep changes the
//! database the next one reads.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator `keyward serve` runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use common::{KeyMaker, TempDir};
use keyward_core::model::Key;
use keyward_server::state::AppState;
use keyward_store::UsageDelta;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `minutes` (minute starts) of valid calls for every key.
async fn write_minutes(st: &AppState, keys: &[Key], busy_every: usize, minutes: &[i64]) {
    for (c, chunk) in keys.chunks(1000).enumerate() {
        let deltas: Vec<UsageDelta> = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let per = if (c * 1000 + i) % busy_every == 0 {
                    40
                } else {
                    2
                };
                UsageDelta {
                    key_id: k.id.clone(),
                    calls: per * minutes.len() as i64,
                    denied: 0,
                    last_used_at: None,
                    consumed: 0,
                    buckets: minutes
                        .iter()
                        .map(|m| keyward_store::MinuteCount {
                            minute_ms: *m,
                            code: "VALID".to_string(),
                            n: per,
                        })
                        .collect(),
                    sources: Vec::new(),
                }
            })
            .collect();
        st.store()
            .apply_usage(&deltas)
            .await
            .expect("usage written");
    }
}

fn main() {
    let n = setting("KEYWARD_BENCH_KEYS", 10_000);
    let busy_every = setting("KEYWARD_BENCH_BUSY_EVERY", 10).max(1);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-sweep");
    let st = common::state(&rt, &dir);
    let mut maker = KeyMaker::new();
    let keys: Vec<Key> = (0..n).map(|_| maker.next().1).collect();
    rt.block_on(async {
        maker.store(&st, &keys).await;
        let minute = |st: &AppState| st.clock().now().millis().div_euclid(60_000) * 60_000;
        let now = minute(&st);
        let hour: Vec<i64> = (1..=61).map(|m| now - m * 60_000).collect();
        write_minutes(&st, &keys, busy_every, &hour).await;
        println!("keys: {n}, busy (40 valid calls a minute): 1 in {busy_every}, the rest 2");
        let t = Instant::now();
        keyward_server::jobs::sweep::sweep_once(&st.control, st.config.retention(), &mut None)
            .await
            .expect("sweep");
        println!(
            "first sweep (rolls up {} minute buckets): {:.2?}",
            n * hour.len(),
            t.elapsed()
        );
        for _ in 0..3 {
            // The minute that just closed, so that the sweep has a minute to roll up and judge.
            let closed = minute(&st) - 60_000;
            write_minutes(&st, &keys, busy_every, &[closed]).await;
            let t = Instant::now();
            keyward_server::jobs::sweep::sweep_once(&st.control, st.config.retention(), &mut None)
                .await
                .expect("sweep");
            println!("sweep of one minute: {:.2?}", t.elapsed());
        }
    });
}

//! Resident memory per cached key (`docs/benchmarks.md`):
//!
//! ```sh
//! cargo bench -p keyward-server --bench memory                 # 1,000,000 keys
//! KEYWARD_BENCH_KEYS=10000 cargo bench -p keyward-server --bench memory
//! ```
//!
//! Reads `VmRSS` before and after priming the cache of an `AppState` (over a real SQLite store in
//! a temporary directory) with keys that have typical fields (a name, an owner, two scopes, one
//! label), and prints bytes per key. Each key is built and primed at once, so the process never
//! holds more than the cache. The plaintexts are kept for the second figure (after one valid
//! verification of every key) in a buffer allocated and touched before the first reading.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator `keyward serve` runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::mem::size_of;

use common::{rss_bytes, KeyMaker, TempDir, KEY_LEN};
use futures_util::FutureExt;
use keyward_core::model::Key;
use keyward_core::verify::Code;
use keyward_server::config::USAGE_FLUSH_BATCH;
use keyward_server::verifier::{Entry, Request};

fn main() {
    let n: usize = std::env::var("KEYWARD_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-memory");
    let state = common::state(&rt, &dir);
    let mut maker = KeyMaker::new();
    let mut plaintexts = vec![b'0'; n * KEY_LEN];

    let before = rss_bytes();
    for i in 0..n {
        let (plaintext, key) = maker.next();
        plaintexts[i * KEY_LEN..(i + 1) * KEY_LEN].copy_from_slice(plaintext.expose().as_bytes());
        state.verifier().prime(key);
    }
    let primed = rss_bytes();
    assert_eq!(state.verifier().cached_entries(), n);

    let plaintexts = std::str::from_utf8(&plaintexts).expect("keys are ASCII");
    for i in 0..n {
        let outcome = state
            .verifier()
            .verify(&Request {
                key: &plaintexts[i * KEY_LEN..(i + 1) * KEY_LEN],
                scopes: &[],
                ip: None,
                cost: 1,
                keyspaces: None,
                route: None,
            })
            .now_or_never()
            .expect("a cached key verifies without waiting")
            .expect("a cached key needs no store");
        assert_eq!(outcome.code(), Code::Valid);
    }
    let used = rss_bytes();
    // As the flusher takes it: in batches, each dropped once written.
    let batch = USAGE_FLUSH_BATCH as usize;
    let mut taken = 0;
    loop {
        let usage = state.verifier().take_usage(batch);
        taken += usage.deltas.len();
        if usage.taken() < batch {
            break;
        }
    }
    assert_eq!(taken, n);
    let flushed = rss_bytes();

    let per_key = |rss: u64| rss.saturating_sub(before) as f64 / n as f64;
    println!("keys cached:                          {n}");
    println!(
        "VmRSS before priming:                 {:.1} MiB",
        mib(before)
    );
    println!(
        "VmRSS after priming:                  {:.1} MiB",
        mib(primed)
    );
    println!(
        "resident bytes per cached key:        {:.0}   (target: at most 300)",
        per_key(primed)
    );
    println!(
        "  after one verification of each key: {:.0}   (usage counted, not yet flushed)",
        per_key(used)
    );
    println!(
        "  after the usage was taken:          {:.0}   (what the flusher leaves)",
        per_key(flushed)
    );
    println!(
        "sizes: Key {} B, Entry {} B (inline, before its answer text)",
        size_of::<Key>(),
        size_of::<Entry>()
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

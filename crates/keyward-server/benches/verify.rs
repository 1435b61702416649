//! The in-process verify path, step by step and whole (`docs/benchmarks.md`):
//!
//! ```sh
//! cargo bench -p keyward-server --bench verify            # everything (about 3 minutes)
//! cargo bench -p keyward-server --bench verify -- cached_1000000/verify   # one benchmark
//! ```
//!
//! - `steps/*`: the steps of `Verifier::verify` that do not depend on the cache size, each
//!   through the function the verifier calls: the clock `keyward serve` uses, the parse, SHA-256,
//!   the decision (static rules, then rate limit and quota); and a whole verification of a
//!   malformed key (hash, cache lookup, parse: it stops there).
//! - `cached_N/*` with N = 10,000 and 1,000,000 keys primed into the cache of an `AppState` over
//!   a real SQLite store in a temporary directory (the store is only read on misses):
//!   - `lookup`: the cache lookup alone (`Verifier::lookup`: the shard's read lock, the set's
//!     get, clone the `Arc`).
//!   - `verify_not_found`: `Verifier::verify` of well-formed keys cached as "no such key"
//!     (parse + hash + lookup).
//!   - `verify`: `Verifier::verify` of a cached valid key, every step included.
//!   - `verify_uncounted`: the same with usage counting off (`KEYWARD_USAGE_COUNTING=false`); the
//!     difference to `verify` is what counting usage costs on the request path.
//!   - `usage_flush_sqlite` (10,000 only): what the background flusher spends per key to drain
//!     the counts (`take_usage`) and write them to SQLite (`apply_usage`): not on the request
//!     path, but on the same cores.
//!
//! - `limits/*`: a whole cached verification of a key with three named rate limits and an
//!   identity limit, against a key with none: one key each, and 10,000 keys each (100
//!   identities) in a shuffled order (`cargo bench -p keyward-server --bench verify --
//!   limits`).
//! - `routes/*`: route rules (forward-auth) with 100 rules: matching alone (the first rule, the
//!   last, none; a path that needs normalizing), and a whole cached verification with the
//!   rules against the same verification without them.
//!
//! Each iteration verifies another key, in an order unrelated to the order the keys were
//! allocated in, so the 1,000,000-key figures pay the CPU cache misses a real server pays.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

mod common;

/// The allocator `keyward serve` runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Duration;

use common::{KeyMaker, TempDir, KEY_LEN};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures_util::FutureExt;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::model::Key;
use keyward_core::routes::{RouteDecision, RouteRequest, RouteRule, Unmatched};
use keyward_core::verify::{check_and_consume, check_rules, Code, Rules, Window};
use keyward_server::verifier::{Outcome, Request, Verifier};

fn request(key: &str) -> Request<'_> {
    Request {
        key,
        scopes: &[],
        ip: None,
        cost: 1,
        keyspaces: None,
        route: None,
    }
}

/// Verifies a key the cache holds: such a verification never waits, so one poll finishes it.
fn verify_cached(v: &Verifier, key: &str) -> Outcome {
    v.verify(&request(key))
        .now_or_never()
        .expect("a cached key verifies without waiting")
        .expect("a cached key needs no store")
}

/// The decision's static rules, built from a key as the verifier builds them.
fn rules_of(key: &Key) -> Rules<'static> {
    Rules {
        revoked: key.revoked_at.is_some(),
        expires_at: key.expires_at,
        enabled: key.enabled,
        allowed: None,
    }
}

fn steps(c: &mut Criterion) {
    let (plaintext, key) = KeyMaker::new().next();
    let k = plaintext.expose();
    let mut malformed = k.to_string();
    malformed.replace_range(KEY_LEN - 1.., if k.ends_with('0') { "1" } else { "0" });
    let rules = rules_of(&key);
    let scopes = || key.scopes.iter().map(String::as_str);
    let requested = vec!["orders:read".to_string()];

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-verify-steps");
    let state = common::state(&rt, &dir);
    let now = state.clock().now();

    let mut g = c.benchmark_group("steps");
    g.throughput(Throughput::Elements(1));
    g.bench_function("clock", |b| b.iter(|| black_box(state.clock().now())));
    g.bench_function("parse", |b| {
        b.iter(|| black_box(keyformat::parse(black_box(k)).is_some()))
    });
    g.bench_function("sha256", |b| b.iter(|| KeyHash::of(black_box(k))));
    let mut window = Window::default();
    let mut remaining = None;
    g.bench_function("decision", |b| {
        b.iter(|| {
            let ok = check_rules(black_box(&rules), scopes(), &[], None, now).is_ok();
            let r = check_and_consume(key.ratelimit, &mut window, &mut remaining, 1, now);
            black_box((ok, r.is_ok()))
        })
    });
    g.bench_function("decision_one_scope", |b| {
        b.iter(|| {
            let ok = check_rules(black_box(&rules), scopes(), &requested, None, now).is_ok();
            let r = check_and_consume(key.ratelimit, &mut window, &mut remaining, 1, now);
            black_box((ok, r.is_ok()))
        })
    });
    g.bench_function("verify_malformed", |b| {
        b.iter(|| verify_cached(state.verifier(), black_box(&malformed)).code())
    });
    g.finish();
}

/// 100 rules as an API gateway might hold them: each of 50 resources gets a `GET .../**` rule
/// and a `POST .../*/items` rule (the first matching rule is decided after comparing the shared
/// `/api/v1` segments of every rule before it).
fn hundred_rules() -> Vec<RouteRule> {
    (0..50)
        .flat_map(|i| {
            [
                RouteRule {
                    method: Some("GET".into()),
                    path: format!("/api/v1/r{i}/**"),
                    scopes: vec![format!("r{i}:read")],
                },
                RouteRule {
                    method: Some("POST".into()),
                    path: format!("/api/v1/r{i}/*/items"),
                    scopes: vec![format!("r{i}:write")],
                },
            ]
        })
        .collect()
}

fn routes(c: &mut Criterion) {
    let rules = hundred_rules();
    let compiled = keyward_core::routes::compile(&rules, Unmatched::Deny).expect("valid rules");
    let ask = |method, uri| RouteRequest {
        method: Some(method),
        uri: Some(uri),
    };
    let first = ask("GET", "/api/v1/r0/orders/1");
    let last = ask("POST", "/api/v1/r49/7/items?expand=all");
    let none = ask("DELETE", "/api/v1/r49/7/items");
    let dirty = ask("POST", "/api//v1/./r49/7/items/");
    assert!(matches!(compiled.decide(last), RouteDecision::Require(s) if s[0] == "r49:write"));
    assert!(matches!(compiled.decide(none), RouteDecision::NotAllowed));

    let mut g = c.benchmark_group("routes");
    g.throughput(Throughput::Elements(1));
    g.bench_function("match_100_first", |b| {
        b.iter(|| black_box(compiled.decide(black_box(first))) == RouteDecision::NotAllowed)
    });
    g.bench_function("match_100_last", |b| {
        b.iter(|| black_box(compiled.decide(black_box(last))) == RouteDecision::NotAllowed)
    });
    g.bench_function("match_100_none", |b| {
        b.iter(|| black_box(compiled.decide(black_box(none))) == RouteDecision::NotAllowed)
    });
    g.bench_function("match_100_normalized", |b| {
        b.iter(|| black_box(compiled.decide(black_box(dirty))) == RouteDecision::NotAllowed)
    });

    // A whole verification of a cached key whose keyspace has the 100 rules, as forward-auth
    // makes it, against the same key verified without a route (`/v1/verify`).
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-verify-routes");
    let state = common::state(&rt, &dir);
    let mut maker = KeyMaker::new();
    let (plaintext, mut key) = maker.next();
    key.scopes = vec!["r49:write".into()];
    let mut ks = maker.keyspace();
    ks.routes = rules;
    ks.unmatched = Unmatched::Deny;
    rt.block_on(async {
        let mut tx = state.store().begin().await.expect("begin");
        tx.insert_keyspace(&ks).await.expect("insert keyspace");
        tx.commit().await.expect("commit");
    });
    state.verifier().prime(key);
    let k = plaintext.expose();
    let with_route = Request {
        route: Some(last),
        ..request(k)
    };
    // The first check reads the keyspace's rules from the store.
    let first_check = rt
        .block_on(state.verifier().verify(&with_route))
        .expect("verify");
    assert_eq!(first_check.code(), Code::Valid);
    g.bench_function("verify_with_100_rules", |b| {
        b.iter(|| {
            state
                .verifier()
                .verify(black_box(&with_route))
                .now_or_never()
                .expect("cached")
                .expect("no store")
                .code()
        })
    });
    g.bench_function("verify_without_rules", |b| {
        b.iter(|| verify_cached(state.verifier(), black_box(k)).code())
    });
    g.finish();
}

/// A whole cached verification of a key with three named limits and an identity limit (never
/// exhausted: each limit is 10⁹ per window) against a key with none, side by side.
fn limits(c: &mut Criterion) {
    use keyward_core::limits::NamedLimit;
    let named = |name: &str, window_secs| NamedLimit {
        name: name.into(),
        limit: 1_000_000_000,
        window_secs,
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-verify-limits");
    let state = common::state(&rt, &dir);
    let mut maker = KeyMaker::new();
    let (plain_text, plain) = maker.next();
    let (limited_text, mut limited) = maker.next();
    limited.set_ratelimits(vec![
        named("burst", 1),
        named("minute", 60),
        named("daily", 86_400),
    ]);
    limited.owner = Some("acme".into());
    limited.owner_ratelimits = vec![named("per-minute", 60)];
    state.verifier().prime(plain);
    state.verifier().prime(limited);
    let (p, l) = (plain_text.expose(), limited_text.expose());
    let Outcome::Valid { limits, .. } = verify_cached(state.verifier(), l) else {
        panic!("the limited key verifies");
    };
    assert_eq!(limits.len(), 4, "three own limits and the identity's");

    let mut g = c.benchmark_group("limits");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_no_limits", |b| {
        b.iter(|| verify_cached(state.verifier(), black_box(p)).code())
    });
    g.bench_function("verify_3_limits_and_identity", |b| {
        b.iter(|| verify_cached(state.verifier(), black_box(l)).code())
    });

    // The same over 10,000 keys of each kind (100 identities), each call another key in an
    // order unrelated to how they were made, as a server with many keys sees them.
    const N: usize = 10_000;
    let mut plain_keys = String::with_capacity(N * KEY_LEN);
    let mut limited_keys = String::with_capacity(N * KEY_LEN);
    let mut made = Vec::with_capacity(2 * N);
    for i in 0..N {
        let (text, key) = maker.next();
        state.verifier().prime(key);
        made.push((false, text));
        let (text, mut key) = maker.next();
        key.set_ratelimits(vec![
            named("burst", 1),
            named("minute", 60),
            named("daily", 86_400),
        ]);
        key.owner = Some(format!("customer-{}", i % 100));
        key.owner_ratelimits = vec![named("per-minute", 60)];
        state.verifier().prime(key);
        made.push((true, text));
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in (1..made.len()).rev() {
        made.swap(i, rng.below(i + 1));
    }
    for (is_limited, text) in &made {
        let keys = if *is_limited {
            &mut limited_keys
        } else {
            &mut plain_keys
        };
        keys.push_str(text.expose());
    }
    drop(made);
    let at = |keys: &str, slot: usize| keys[slot * KEY_LEN..(slot + 1) * KEY_LEN].to_string();
    for slot in 0..N {
        verify_cached(state.verifier(), &at(&limited_keys, slot));
        verify_cached(state.verifier(), &at(&plain_keys, slot));
    }
    drop(state.verifier().take_usage(usize::MAX));
    for (name, keys) in [
        ("verify_10000_no_limits", &plain_keys),
        ("verify_10000_3_limits_and_identity", &limited_keys),
    ] {
        let mut slot = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                slot = (slot + 1) % N;
                verify_cached(
                    state.verifier(),
                    black_box(&keys[slot * KEY_LEN..(slot + 1) * KEY_LEN]),
                )
                .code()
            })
        });
    }
    g.finish();
}

/// A small deterministic generator for the shuffle (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn cached(c: &mut Criterion, n: usize) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = TempDir::new("bench-verify");
    let state = common::state(&rt, &dir);
    let verifier = state.verifier();

    // Keys are built and primed in one order and verified in a shuffled one.
    let mut maker = KeyMaker::new();
    let mut plaintexts = Vec::with_capacity(n);
    let mut stored = Vec::new();
    for _ in 0..n {
        let (plaintext, key) = maker.next();
        plaintexts.push(plaintext);
        if n <= 10_000 {
            stored.push(key.clone());
        }
        verifier.prime(key);
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut keys = String::with_capacity(n * KEY_LEN);
    for &i in &order {
        keys.push_str(plaintexts[i].expose());
    }
    drop(plaintexts);
    let key_at = |slot: usize| &keys[slot * KEY_LEN..(slot + 1) * KEY_LEN];
    let hashes: Vec<KeyHash> = (0..n).map(|s| KeyHash::of(key_at(s))).collect();

    for slot in 0..n {
        let Outcome::Valid { .. } = verify_cached(verifier, key_at(slot)) else {
            panic!("a primed key verifies as valid");
        };
    }
    drop(verifier.take_usage(usize::MAX));

    // Well-formed keys that do not exist, cached as such by one store read each.
    let unknown: Vec<String> = (0..1000)
        .map(|_| keyformat::generate(common::PREFIX).expose().to_string())
        .collect();
    for k in &unknown {
        let code = rt
            .block_on(verifier.verify(&request(k)))
            .expect("the store answers")
            .code();
        assert_eq!(code, Code::NotFound);
    }
    let negatives = verifier.cached_entries() - n;
    println!("cached_{n}: {negatives} of 1000 unknown keys are cached as \"no such key\"");

    let mut g = c.benchmark_group(format!("cached_{n}"));
    g.throughput(Throughput::Elements(1));
    let mut slot = 0;
    let mut next = move || {
        slot += 1;
        if slot == n {
            slot = 0;
        }
        slot
    };
    g.bench_function("lookup", |b| {
        b.iter(|| black_box(verifier.lookup(&hashes[next()])))
    });
    if negatives == unknown.len() {
        let mut u = 0;
        g.bench_function("verify_not_found", |b| {
            b.iter(|| {
                u = (u + 1) % unknown.len();
                let code = verify_cached(verifier, &unknown[u]).code();
                debug_assert_eq!(code, Code::NotFound);
                code
            })
        });
    }
    g.bench_function("verify", |b| {
        b.iter(|| {
            let code = verify_cached(verifier, key_at(next())).code();
            debug_assert_eq!(code, Code::Valid);
            code
        })
    });
    verifier.set_usage_counting(false);
    g.bench_function("verify_uncounted", |b| {
        b.iter(|| verify_cached(verifier, key_at(next())).code())
    });
    verifier.set_usage_counting(true);
    drop(verifier.take_usage(usize::MAX));

    if !stored.is_empty() {
        // The flusher's cost per key, over keys that exist in the database.
        rt.block_on(maker.store(&state, &stored));
        const BATCH: usize = 1000;
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("usage_flush_sqlite", |b| {
            b.iter_batched(
                || {
                    for _ in 0..BATCH {
                        verify_cached(verifier, key_at(next()));
                    }
                },
                |()| {
                    let usage = verifier.take_usage(usize::MAX);
                    rt.block_on(state.store().apply_usage(&usage.deltas))
                        .expect("usage written");
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn cached_10k(c: &mut Criterion) {
    cached(c, 10_000);
}

fn cached_1m(c: &mut Criterion) {
    cached(c, 1_000_000);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = steps, routes, limits, cached_10k, cached_1m
}
criterion_main!(benches);

//! What hashing one audit event costs (`docs/decisions.md`, "An event's hash is computed from
//! its fields"): `audit verify` and every append hash each event once.
//!
//! ```sh
//! cargo bench -p keyward-server --bench audit
//! ```
//!
//! - `audit/event_hash`: `keyward_core::audit::event_hash`, the canonical form written field by
//!   field, then SHA-256;
//! - `audit/through_a_value`: the same hash computed the way it was first written
//!   (`event_hash_through_a_value`: the event made a `serde_json::Value`, `hash` taken out, the
//!   value's canonical form hashed), for comparison; both give the same hash (asserted before
//!   measuring).
//!
//! The event is a `key.create` with the changes the server records for a key with a name,
//! owner, keyspace, labels and scopes.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

use criterion::{criterion_group, criterion_main, Criterion};
use keyward_core::audit::{event_hash, event_hash_through_a_value, GENESIS_HASH};
use keyward_core::model::{Actor, ActorKind, AuditEvent};
use keyward_core::time::Timestamp;
use serde_json::{json, Map};

fn event() -> AuditEvent {
    let mut changes = Map::new();
    for (k, v) in [
        ("name", json!([null, "billing search export 42"])),
        ("owner", json!([null, "owner-4242"])),
        ("keyspace_id", json!([null, "ks_2abcdefghijkl"])),
        ("labels", json!([null, {"env": "prod", "team": "search"}])),
        ("scopes", json!([null, ["read", "write"]])),
    ] {
        changes.insert(k.into(), v);
    }
    AuditEvent {
        id: "evt_01HXYZABCDEFGHJK".into(),
        seq: 123_456,
        at: Timestamp::from_millis(1_780_000_000_123),
        actor: Actor {
            kind: ActorKind::Token,
            id: "tok_abcdefghijkl".into(),
            name: "bootstrap".into(),
        },
        action: "key.create".into(),
        target_type: "key".into(),
        target_id: "key_01HXYZABCDEFGH".into(),
        reason: None,
        request_id: Some("req_0123456789".into()),
        ip: Some("127.0.0.1".into()),
        changes,
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    }
}

fn audit(c: &mut Criterion) {
    let e = event();
    assert_eq!(event_hash(&e), event_hash_through_a_value(&e));
    let mut g = c.benchmark_group("audit");
    g.bench_function("event_hash", |b| {
        b.iter(|| event_hash(std::hint::black_box(&e)))
    });
    g.bench_function("through_a_value", |b| {
        b.iter(|| event_hash_through_a_value(std::hint::black_box(&e)))
    });
    g.finish();
}

criterion_group!(benches, audit);
criterion_main!(benches);

//! Usage counts written by the verification path's flusher.

use std::sync::Arc;

use keyward_core::model::Source;
use keyward_core::time::Timestamp;
use keyward_store::{
    Bucket, MinuteCount, SourceSeen, Store, Totals, UsageDelta, MAX_SOURCES_PER_KEY,
};

use crate::support::*;

fn delta(
    key_id: &str,
    calls: i64,
    denied: i64,
    last_used_secs: Option<i64>,
    consumed: i64,
) -> UsageDelta {
    UsageDelta {
        key_id: key_id.into(),
        calls,
        denied,
        last_used_at: last_used_secs.map(at),
        consumed,
        ..UsageDelta::default()
    }
}

async fn apply_usage_adds_counts_keeps_the_latest_use_and_spends_remaining(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut quota = key(&ks, at(0)).key;
    quota.remaining = Some(100);
    let unlimited = key(&ks, at(0)).key;
    let denied_only = key(&ks, at(0)).key;
    let mut untouched = key(&ks, at(0)).key;
    untouched.remaining = Some(7);
    untouched.call_count = 3;
    untouched.last_used_at = Some(at(1));
    insert_keys(&store, &[&quota, &unlimited, &denied_only, &untouched]).await;
    let head = store.change_head().await.unwrap();

    // Quota is spent from this node's lease: lease first, as the verification path does. The
    // key still reads its whole quota (unleased + leased).
    assert_eq!(lease(&store, &quota.id, 20, 1).await, Some((20, 80)));
    assert_eq!(remaining(&store, &quota.id).await, Some(100));
    assert_eq!(lease(&store, &unlimited.id, 20, 1).await, None);

    store
        .apply_usage(&[
            delta(&quota.id, 3, 1, Some(10), 5),
            delta(&unlimited.id, 2, 0, Some(20), 2),
            delta(&denied_only.id, 0, 4, None, 0),
        ])
        .await
        .unwrap();
    let q = store.key(&quota.id).await.unwrap().unwrap();
    assert_eq!(
        (q.call_count, q.denied_count, q.last_used_at, q.remaining),
        (3, 1, Some(at(10)), Some(95))
    );
    assert_eq!(
        pool(&store, &quota.id).await,
        Some(80),
        "spent from the lease, not from the unleased quota"
    );
    let u = store.key(&unlimited.id).await.unwrap().unwrap();
    assert_eq!(
        (u.call_count, u.denied_count, u.last_used_at, u.remaining),
        (2, 0, Some(at(20)), None)
    );
    let d = store.key(&denied_only.id).await.unwrap().unwrap();
    assert_eq!(
        (d.call_count, d.denied_count, d.last_used_at, d.remaining),
        (0, 4, None, None)
    );

    // An older use (a slow node's batch) never moves last_used_at back; a batch without a use
    // leaves it; several deltas for one key in one batch all count.
    store
        .apply_usage(&[
            delta(&quota.id, 1, 0, Some(5), 1),
            delta(&quota.id, 0, 2, None, 0),
            delta(&quota.id, 4, 0, Some(12), 4),
        ])
        .await
        .unwrap();
    let q = store.key(&quota.id).await.unwrap().unwrap();
    assert_eq!(
        (q.call_count, q.denied_count, q.last_used_at, q.remaining),
        (8, 3, Some(at(12)), Some(90))
    );
    assert_eq!(pool(&store, &quota.id).await, Some(80));
    // What is left of the lease (20 - 10) is exactly what this node can give back.
    store.return_lease(&quota.id, 11, None).await.unwrap();
    assert_eq!(pool(&store, &quota.id).await, Some(80));
    store.return_lease(&quota.id, 10, None).await.unwrap();
    assert_eq!(pool(&store, &quota.id).await, Some(90));
    assert_eq!(remaining(&store, &quota.id).await, Some(90));

    // Nothing to write is fine; a delta for a key that no longer exists does not fail the batch.
    store.apply_usage(&[]).await.unwrap();
    store
        .apply_usage(&[
            delta("key_gone", 1, 1, Some(30), 1),
            delta(&unlimited.id, 1, 0, Some(30), 0),
        ])
        .await
        .unwrap();
    let u = store.key(&unlimited.id).await.unwrap().unwrap();
    assert_eq!(
        (u.call_count, u.last_used_at, u.remaining),
        (3, Some(at(30)), None)
    );

    // Only the keys named were touched, and usage is not a key change for the feed.
    assert_eq!(store.key(&untouched.id).await.unwrap(), Some(untouched));
    assert_eq!(store.change_head().await.unwrap(), head);
}
conformance!(apply_usage_adds_counts_keeps_the_latest_use_and_spends_remaining
    => sqlite_apply_usage_adds_counts_keeps_the_latest_use_and_spends_remaining,
       postgres_apply_usage_adds_counts_keeps_the_latest_use_and_spends_remaining);

async fn usage_applied_in_a_transaction_commits_or_rolls_back_with_it(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut k = key(&ks, at(0)).key;
    k.remaining = Some(10);
    insert_keys(&store, &[&k]).await;
    assert_eq!(lease(&store, &k.id, 10, 1).await, Some((10, 0)));

    let mut tx = store.begin().await.unwrap();
    tx.apply_usage(&[delta(&k.id, 2, 1, Some(5), 2)])
        .await
        .unwrap();
    let inside = tx.key(&k.id).await.unwrap().unwrap();
    assert_eq!(
        (
            inside.call_count,
            inside.denied_count,
            inside.last_used_at,
            inside.remaining
        ),
        (2, 1, Some(at(5)), Some(8))
    );
    drop(tx);
    assert_eq!(
        store.key(&k.id).await.unwrap(),
        Some(k.clone()),
        "rolled back with its transaction"
    );

    let mut tx = store.begin().await.unwrap();
    tx.apply_usage(&[delta(&k.id, 2, 1, Some(5), 2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let after = store.key(&k.id).await.unwrap().unwrap();
    assert_eq!(
        (
            after.call_count,
            after.denied_count,
            after.last_used_at,
            after.remaining
        ),
        (2, 1, Some(at(5)), Some(8))
    );
    assert_eq!(pool(&store, &k.id).await, Some(0));
}
conformance!(usage_applied_in_a_transaction_commits_or_rolls_back_with_it
    => sqlite_usage_applied_in_a_transaction_commits_or_rolls_back_with_it,
       postgres_usage_applied_in_a_transaction_commits_or_rolls_back_with_it);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

fn bucket(key_id: &str, start_ms: i64, code: &str, n: i64) -> Bucket {
    Bucket {
        key_id: key_id.into(),
        start: Timestamp::from_millis(start_ms),
        code: code.into(),
        n,
    }
}

fn counts(key_id: &str, buckets: &[(i64, &str, i64)]) -> UsageDelta {
    UsageDelta {
        key_id: key_id.into(),
        buckets: buckets
            .iter()
            .map(|(minute, code, n)| MinuteCount {
                minute_ms: *minute,
                code: code.to_string(),
                n: *n,
            })
            .collect(),
        ..UsageDelta::default()
    }
}

async fn apply_usage_writes_minute_hour_and_day_buckets(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let a = key(&ks, at(0)).key;
    let b = key(&ks, at(0)).key;
    insert_keys(&store, &[&a, &b]).await;
    // T0 is 08:00 UTC: on a minute and an hour, not on a day.
    assert_eq!((T0 % MINUTE, T0 % HOUR), (0, 0));
    let day = T0.div_euclid(DAY) * DAY;
    assert!(day < T0 && T0 + 2 * HOUR < day + DAY);

    store
        .apply_usage(&[
            counts(
                &a.id,
                &[
                    (T0, "VALID", 3),
                    (T0, "RATE_LIMITED", 1),
                    (T0 + MINUTE, "VALID", 2),
                    (T0 + HOUR, "VALID", 5),
                ],
            ),
            counts(&b.id, &[(T0, "VALID", 7)]),
        ])
        .await
        .unwrap();
    // The sweep's roll-up takes every minute bucket written so far (once).
    assert_eq!(rollup_all(&store).await, 5);
    assert_eq!(rollup_all(&store).await, 0);
    // A later batch adds to the same buckets; a time inside a minute counts in that minute.
    // Hours and days read below see it before any roll-up.
    store
        .apply_usage(&[counts(
            &a.id,
            &[(T0, "VALID", 4), (T0 + 30_000, "RATE_LIMITED", 2)],
        )])
        .await
        .unwrap();

    let only_a = [a.id.clone()];
    let usage = |ids: Option<&[String]>, g: &'static str, from: i64, to: i64| {
        let store = store.clone();
        let ids = ids.map(<[String]>::to_vec);
        async move {
            store
                .usage(
                    ids.as_deref(),
                    gran(g),
                    Timestamp::from_millis(from),
                    Timestamp::from_millis(to),
                )
                .await
                .unwrap()
        }
    };

    // Minutes, oldest first (then by key and code).
    assert_eq!(
        usage(Some(&only_a), "m", T0, T0 + 2 * HOUR).await,
        vec![
            bucket(&a.id, T0, "RATE_LIMITED", 3),
            bucket(&a.id, T0, "VALID", 7),
            bucket(&a.id, T0 + MINUTE, "VALID", 2),
            bucket(&a.id, T0 + HOUR, "VALID", 5),
        ]
    );
    // `from` is inclusive, `to` exclusive.
    assert_eq!(
        usage(Some(&only_a), "m", T0 + MINUTE, T0 + HOUR).await,
        vec![bucket(&a.id, T0 + MINUTE, "VALID", 2)]
    );
    assert_eq!(
        usage(Some(&only_a), "m", T0, T0 + MINUTE).await,
        vec![
            bucket(&a.id, T0, "RATE_LIMITED", 3),
            bucket(&a.id, T0, "VALID", 7),
        ]
    );
    assert!(usage(Some(&only_a), "m", T0 + 1, T0 + MINUTE)
        .await
        .is_empty());

    // Hours and days hold the same counts, summed into their own starts.
    assert_eq!(
        usage(Some(&only_a), "h", T0, T0 + 2 * HOUR).await,
        vec![
            bucket(&a.id, T0, "RATE_LIMITED", 3),
            bucket(&a.id, T0, "VALID", 9),
            bucket(&a.id, T0 + HOUR, "VALID", 5),
        ]
    );
    assert_eq!(
        usage(Some(&only_a), "d", day, day + DAY).await,
        vec![
            bucket(&a.id, day, "RATE_LIMITED", 3),
            bucket(&a.id, day, "VALID", 14),
        ]
    );
    assert!(
        usage(Some(&only_a), "d", T0, T0 + DAY).await.is_empty(),
        "the day bucket starts at midnight, before T0"
    );

    // Every key, or none.
    assert_eq!(usage(None, "m", T0, T0 + MINUTE).await, {
        let mut all = vec![
            bucket(&a.id, T0, "RATE_LIMITED", 3),
            bucket(&a.id, T0, "VALID", 7),
            bucket(&b.id, T0, "VALID", 7),
        ];
        all.sort_by(|x, y| (&x.key_id, &x.code).cmp(&(&y.key_id, &y.code)));
        all
    });
    assert_eq!(
        usage(Some(std::slice::from_ref(&b.id)), "d", day, day + DAY).await,
        vec![bucket(&b.id, day, "VALID", 7)]
    );
    assert!(usage(Some(&[]), "m", T0, T0 + DAY).await.is_empty());

    // Pruning one granularity leaves the others; a minute leaves only once it is rolled up
    // (here only b's: a's first minute gained counts after the roll-up).
    let prune_minutes = || store.prune_usage(gran("m"), Timestamp::from_millis(T0 + MINUTE));
    assert_eq!(prune_minutes().await.unwrap(), 1);
    assert_eq!(rollup_all(&store).await, 2);
    assert_eq!(prune_minutes().await.unwrap(), 2);
    assert_eq!(
        usage(None, "m", 0, T0 + DAY).await,
        vec![
            bucket(&a.id, T0 + MINUTE, "VALID", 2),
            bucket(&a.id, T0 + HOUR, "VALID", 5),
        ]
    );
    assert_eq!(usage(None, "h", 0, T0 + DAY).await.len(), 4);
    assert_eq!(usage(None, "d", 0, T0 + DAY).await.len(), 3);
}
conformance!(apply_usage_writes_minute_hour_and_day_buckets
    => sqlite_apply_usage_writes_minute_hour_and_day_buckets,
       postgres_apply_usage_writes_minute_hour_and_day_buckets);

fn seen(key_id: &str, sources: &[(&str, i64, i64, i64)]) -> UsageDelta {
    UsageDelta {
        key_id: key_id.into(),
        sources: sources
            .iter()
            .map(|(ip, first, last, n)| sourced(ip, *first, *last, *n))
            .collect(),
        ..UsageDelta::default()
    }
}

/// A source address as the verification path hands it over (times in seconds).
fn sourced(ip: &str, first: i64, last: i64, count: i64) -> SourceSeen {
    SourceSeen {
        ip: ip.to_string(),
        first: at(first),
        last: at(last),
        count,
    }
}

fn source(ip: &str, first: i64, last: i64, count: i64) -> Source {
    Source {
        ip: ip.into(),
        first_seen: at(first),
        last_seen: at(last),
        count,
    }
}

async fn source_addresses_are_upserted_and_bounded_per_key(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let a = key(&ks, at(0)).key;
    let b = key(&ks, at(0)).key;
    insert_keys(&store, &[&a, &b]).await;

    store
        .apply_usage(&[
            seen(&a.id, &[("203.0.113.1", 1, 5, 2), ("2001:db8::1", 2, 3, 1)]),
            seen(&b.id, &[("203.0.113.1", 4, 4, 9)]),
        ])
        .await
        .unwrap();
    // Seen again: counts add, `last_seen` only moves forward, `first_seen` stays.
    store
        .apply_usage(&[seen(&a.id, &[("203.0.113.1", 10, 12, 3)])])
        .await
        .unwrap();
    store
        .apply_usage(&[seen(&a.id, &[("203.0.113.1", 2, 3, 1)])])
        .await
        .unwrap();
    // Most recently seen first.
    assert_eq!(
        store.sources(&a.id).await.unwrap(),
        vec![
            source("203.0.113.1", 1, 12, 6),
            source("2001:db8::1", 2, 3, 1),
        ]
    );
    assert_eq!(
        store.sources(&b.id).await.unwrap(),
        vec![source("203.0.113.1", 4, 4, 9)]
    );
    let mut known = store
        .known_sources(&[a.id.clone(), b.id.clone(), "key_nope".into()])
        .await
        .unwrap();
    known.sort();
    let pair = |id: &str, ip: &str| (id.to_string(), ip.to_string());
    let mut expected = vec![
        pair(&a.id, "2001:db8::1"),
        pair(&a.id, "203.0.113.1"),
        pair(&b.id, "203.0.113.1"),
    ];
    expected.sort();
    assert_eq!(known, expected);
    assert!(store.sources("key_nope").await.unwrap().is_empty());
    assert!(store
        .known_sources(&["key_nope".into()])
        .await
        .unwrap()
        .is_empty());
    assert!(store.known_sources(&[]).await.unwrap().is_empty());

    // A key keeps its MAX_SOURCES_PER_KEY most recently seen addresses.
    let max = MAX_SOURCES_PER_KEY;
    let ip = |i: i64| format!("198.51.100.{i}");
    let c = key(&ks, at(0)).key;
    insert_keys(&store, &[&c]).await;
    let first: Vec<(String, i64, i64, i64)> =
        (0..max).map(|i| (ip(i), 100 + i, 100 + i, 1)).collect();
    store
        .apply_usage(&[UsageDelta {
            key_id: c.id.clone(),
            sources: first
                .iter()
                .map(|(ip, f, l, n)| sourced(ip, *f, *l, *n))
                .collect(),
            ..UsageDelta::default()
        }])
        .await
        .unwrap();
    assert_eq!(store.sources(&c.id).await.unwrap().len(), max as usize);
    // Four new addresses, and the oldest one seen again: the four next-oldest go.
    store
        .apply_usage(&[seen(
            &c.id,
            &[
                ("192.0.2.1", 300, 300, 1),
                ("192.0.2.2", 301, 301, 1),
                ("192.0.2.3", 302, 302, 1),
                ("192.0.2.4", 303, 303, 1),
                (&ip(0), 304, 304, 1),
            ],
        )])
        .await
        .unwrap();
    let kept = store.sources(&c.id).await.unwrap();
    assert_eq!(kept.len(), max as usize);
    let mut expected = vec![
        source(&ip(0), 100, 304, 2),
        source("192.0.2.4", 303, 303, 1),
        source("192.0.2.3", 302, 302, 1),
        source("192.0.2.2", 301, 301, 1),
        source("192.0.2.1", 300, 300, 1),
    ];
    expected.extend((5..max).rev().map(|i| source(&ip(i), 100 + i, 100 + i, 1)));
    assert_eq!(kept, expected);
    // One batch with more than the bound keeps the most recent too.
    let d = key(&ks, at(0)).key;
    insert_keys(&store, &[&d]).await;
    store
        .apply_usage(&[UsageDelta {
            key_id: d.id.clone(),
            sources: (0..max + 3).map(|i| sourced(&ip(i), i, i, 1)).collect(),
            ..UsageDelta::default()
        }])
        .await
        .unwrap();
    let kept = store.sources(&d.id).await.unwrap();
    assert_eq!(kept.len(), max as usize);
    assert_eq!(kept[0], source(&ip(max + 2), max + 2, max + 2, 1));
    assert_eq!(kept[kept.len() - 1], source(&ip(3), 3, 3, 1));

    // The bound is per key: the others kept theirs.
    assert_eq!(store.sources(&a.id).await.unwrap().len(), 2);
    assert_eq!(store.sources(&b.id).await.unwrap().len(), 1);
}
conformance!(source_addresses_are_upserted_and_bounded_per_key
    => sqlite_source_addresses_are_upserted_and_bounded_per_key,
       postgres_source_addresses_are_upserted_and_bounded_per_key);

async fn copy_sources_gives_a_successor_its_predecessors_addresses(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let old = key(&ks, at(0)).key;
    let new = key(&ks, at(1)).key;
    insert_keys(&store, &[&old, &new]).await;
    store
        .apply_usage(&[
            seen(
                &old.id,
                &[("203.0.113.1", 1, 5, 2), ("203.0.113.2", 2, 6, 4)],
            ),
            seen(&new.id, &[("203.0.113.2", 7, 8, 1)]),
        ])
        .await
        .unwrap();
    let before = store.sources(&old.id).await.unwrap();

    // Rolled back with its transaction.
    let mut tx = store.begin().await.unwrap();
    tx.copy_sources(&old.id, &new.id).await.unwrap();
    drop(tx);
    assert_eq!(
        store.sources(&new.id).await.unwrap(),
        vec![source("203.0.113.2", 7, 8, 1)]
    );

    let mut tx = store.begin().await.unwrap();
    tx.copy_sources(&old.id, &new.id).await.unwrap();
    tx.commit().await.unwrap();
    // The successor's own record of an address wins; the rest is copied as it was.
    assert_eq!(
        store.sources(&new.id).await.unwrap(),
        vec![
            source("203.0.113.2", 7, 8, 1),
            source("203.0.113.1", 1, 5, 2),
        ]
    );
    assert_eq!(
        store.sources(&old.id).await.unwrap(),
        before,
        "a copy, not a move"
    );

    // Copying from a key with no record changes nothing.
    let mut tx = store.begin().await.unwrap();
    tx.copy_sources("key_nope", &new.id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.sources(&new.id).await.unwrap().len(), 2);
}
conformance!(copy_sources_gives_a_successor_its_predecessors_addresses
    => sqlite_copy_sources_gives_a_successor_its_predecessors_addresses,
       postgres_copy_sources_gives_a_successor_its_predecessors_addresses);

/// Roll-ups racing each other and the flusher (as several nodes' sweeps and flushes do) move
/// every count into hours and days exactly once.
async fn concurrent_rollups_count_every_minute_once(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let keys: Vec<_> = (0..4).map(|_| key(&ks, at(0)).key).collect();
    insert_keys(&store, &keys.iter().collect::<Vec<_>>()).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        tasks.push(tokio::spawn(async move {
            for i in 0..25i64 {
                let minute = T0 + (i % 3) * HOUR + (w * 7 % 60) * MINUTE;
                let batch: Vec<_> = ids
                    .iter()
                    .map(|id| counts(id, &[(minute, "VALID", 1)]))
                    .collect();
                store.apply_usage(&batch).await.unwrap();
                if i % 5 == w {
                    rollup_all(&store).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 4 writers x 25 batches x 4 keys, seen whole before and after the last roll-up.
    for _ in 0..2 {
        assert_eq!(usage_total(&store, "m", T0 + 2 * DAY).await, 400);
        assert_eq!(usage_total(&store, "h", T0 + 2 * DAY).await, 400);
        assert_eq!(usage_total(&store, "d", T0 + 2 * DAY).await, 400);
        rollup_all(&store).await;
    }
    assert_eq!(rollup_all(&store).await, 0);
    // Everything is rolled up: pruning every minute leaves hours and days whole.
    store
        .prune_usage(gran("m"), Timestamp::from_millis(T0 + 2 * DAY))
        .await
        .unwrap();
    assert_eq!(usage_total(&store, "m", T0 + 2 * DAY).await, 0);
    assert_eq!(
        (
            usage_total(&store, "h", T0 + 2 * DAY).await,
            usage_total(&store, "d", T0 + 2 * DAY).await
        ),
        (400, 400)
    );
}
conformance!(concurrent_rollups_count_every_minute_once
    => sqlite_concurrent_rollups_count_every_minute_once,
       postgres_concurrent_rollups_count_every_minute_once);

/// A roll-up of more minutes than one batch (5,000), all but one starting at the same time,
/// moves each minute's gain once, into its own key's hour and day; what is added to rolled
/// minutes later moves once more. Every key has a count of its own, so a batch read twice
/// with other rows (one key counted twice, another left out) shows.
async fn a_rollup_of_many_batches_moves_each_minute_once(store: Arc<dyn Store>) {
    const KEYS: usize = 5_001;
    let ids: Vec<String> = (0..KEYS).map(|i| format!("key_many_{i:05}")).collect();
    let first: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| counts(id, &[(T0, "VALID", i as i64 + 1)]))
        .chain([counts(&ids[0], &[(T0 + HOUR, "DISABLED", 5)])])
        .collect();
    store.apply_usage(&first).await.unwrap();
    assert_eq!(rollup_all(&store).await, KEYS as u64 + 1);
    assert_eq!(rollup_all(&store).await, 0);
    // Every other key used again in the same minute, after it was rolled up.
    let again: Vec<_> = ids
        .iter()
        .enumerate()
        .step_by(2)
        .map(|(i, id)| counts(id, &[(T0, "VALID", 3 * i as i64 + 2)]))
        .collect();
    store.apply_usage(&again).await.unwrap();
    assert_eq!(rollup_all(&store).await, again.len() as u64);
    // Each key's hours and days hold exactly its minutes.
    let per_key = |buckets: Vec<Bucket>| {
        let mut sums = std::collections::BTreeMap::<String, i64>::new();
        for b in buckets {
            *sums.entry(b.key_id).or_default() += b.n;
        }
        sums
    };
    let read = |g: &'static str| {
        store.usage(
            None,
            gran(g),
            Timestamp::from_millis(0),
            Timestamp::from_millis(T0 + 2 * DAY),
        )
    };
    let minutes = per_key(read("m").await.unwrap());
    assert_eq!(minutes.len(), KEYS);
    assert_eq!(minutes[&ids[0]], 1 + 2 + 5);
    assert_eq!(minutes[&ids[1]], 2);
    assert_eq!(minutes[&ids[4]], 5 + 14);
    for g in ["h", "d"] {
        assert_eq!(per_key(read(g).await.unwrap()), minutes, "{g}");
    }
}
conformance!(a_rollup_of_many_batches_moves_each_minute_once
    => sqlite_a_rollup_of_many_batches_moves_each_minute_once,
       postgres_a_rollup_of_many_batches_moves_each_minute_once);

/// The sweep rolls up closed minutes only (the flusher still adds to the current one); what
/// stays out is still in hour and day reads.
async fn rollup_takes_minutes_before_the_given_time(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let a = key(&ks, at(0)).key;
    insert_keys(&store, &[&a]).await;
    store
        .apply_usage(&[counts(
            &a.id,
            &[(T0, "VALID", 2), (T0 + MINUTE, "VALID", 3)],
        )])
        .await
        .unwrap();
    let rollup = |before: i64| store.rollup_usage(Timestamp::from_millis(before));
    assert_eq!(rollup(T0).await.unwrap(), 0);
    assert_eq!(rollup(T0 + MINUTE).await.unwrap(), 1);
    let hours = store
        .usage(
            None,
            gran("h"),
            Timestamp::from_millis(T0),
            Timestamp::from_millis(T0 + HOUR),
        )
        .await
        .unwrap();
    assert_eq!(hours, vec![bucket(&a.id, T0, "VALID", 5)]);
    assert_eq!(rollup(T0 + 2 * MINUTE).await.unwrap(), 1);
    assert_eq!(rollup(T0 + 2 * MINUTE).await.unwrap(), 0);
}
conformance!(rollup_takes_minutes_before_the_given_time
    => sqlite_rollup_takes_minutes_before_the_given_time,
       postgres_rollup_takes_minutes_before_the_given_time);

/// The anomaly sweep's baseline: each asked key's minutes of the span summed into valid and
/// denied verifications, rolled up or not; hours and days are not minutes.
async fn minute_totals_sum_each_keys_minutes_of_the_span(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let a = key(&ks, at(0)).key;
    let b = key(&ks, at(0)).key;
    let not_asked = key(&ks, at(0)).key;
    let quiet = key(&ks, at(0)).key;
    insert_keys(&store, &[&a, &b, &not_asked, &quiet]).await;
    store
        .apply_usage(&[
            counts(
                &a.id,
                &[
                    (T0 - MINUTE, "VALID", 100),
                    (T0, "VALID", 3),
                    (T0, "REVOKED", 2),
                    (T0 + 30 * MINUTE, "RATE_LIMITED", 4),
                    (T0 + 59 * MINUTE, "VALID", 5),
                    (T0 + HOUR, "VALID", 100),
                ],
            ),
            counts(&b.id, &[(T0 + MINUTE, "VALID", 7)]),
            counts(&not_asked.id, &[(T0, "VALID", 1000)]),
            counts(&quiet.id, &[(T0 + HOUR, "VALID", 1)]),
        ])
        .await
        .unwrap();
    // Half of the minutes rolled up into hours and days, which start inside the span too.
    assert!(
        store
            .rollup_usage(Timestamp::from_millis(T0 + 30 * MINUTE))
            .await
            .unwrap()
            > 0
    );
    let asked = [b.id.clone(), quiet.id.clone(), a.id.clone()];
    let mut totals = store
        .minute_totals(
            &asked,
            Timestamp::from_millis(T0),
            Timestamp::from_millis(T0 + HOUR),
        )
        .await
        .unwrap();
    totals.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    let mut want = vec![
        Totals {
            key_id: a.id.clone(),
            valid: 8,
            denied: 6,
        },
        Totals {
            key_id: b.id.clone(),
            valid: 7,
            denied: 0,
        },
    ];
    want.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    assert_eq!(totals, want);
    let none = store
        .minute_totals(
            &[],
            Timestamp::from_millis(T0),
            Timestamp::from_millis(T0 + HOUR),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}
conformance!(minute_totals_sum_each_keys_minutes_of_the_span
    => sqlite_minute_totals_sum_each_keys_minutes_of_the_span,
       postgres_minute_totals_sum_each_keys_minutes_of_the_span);

/// The anomaly sweep's first read: of the span's minute buckets, the valid ones at or above
/// the threshold and every denied one, rolled up or not, in (start, key, code) order; hours,
/// days and minutes outside the span are not read.
async fn busy_minutes_are_the_valid_ones_at_the_threshold_and_every_denial(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let a = key(&ks, at(0)).key;
    let b = key(&ks, at(0)).key;
    let quiet = key(&ks, at(0)).key;
    insert_keys(&store, &[&a, &b, &quiet]).await;
    store
        .apply_usage(&[
            counts(
                &a.id,
                &[
                    (T0 - MINUTE, "VALID", 100),
                    (T0, "VALID", 29),
                    (T0, "REVOKED", 1),
                    (T0 + MINUTE, "VALID", 30),
                    (T0 + 2 * MINUTE, "VALID", 100),
                ],
            ),
            counts(
                &b.id,
                &[(T0 + MINUTE, "RATE_LIMITED", 2), (T0 + MINUTE, "VALID", 3)],
            ),
            counts(&quiet.id, &[(T0, "VALID", 3), (T0 + MINUTE, "VALID", 29)]),
        ])
        .await
        .unwrap();
    // Rolled up or not, a minute is read the same (hours and days are not minutes).
    assert!(
        store
            .rollup_usage(Timestamp::from_millis(T0 + MINUTE))
            .await
            .unwrap()
            > 0
    );
    let busy = store
        .busy_minutes(
            Timestamp::from_millis(T0),
            Timestamp::from_millis(T0 + 2 * MINUTE),
            30,
        )
        .await
        .unwrap();
    let mut want = vec![
        (T0, a.id.clone(), "REVOKED", 1),
        (T0 + MINUTE, a.id.clone(), "VALID", 30),
        (T0 + MINUTE, b.id.clone(), "RATE_LIMITED", 2),
    ];
    want.sort();
    let got: Vec<_> = busy
        .iter()
        .map(|x| (x.start.millis(), x.key_id.clone(), x.code.as_str(), x.n))
        .collect();
    assert_eq!(got, want);
}
conformance!(busy_minutes_are_the_valid_ones_at_the_threshold_and_every_denial
    => sqlite_busy_minutes_are_the_valid_ones_at_the_threshold_and_every_denial,
       postgres_busy_minutes_are_the_valid_ones_at_the_threshold_and_every_denial);

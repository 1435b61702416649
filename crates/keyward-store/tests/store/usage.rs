//! Usage counts written by the verification path's flusher.

use std::sync::Arc;

use keyward_store::{Store, UsageDelta};

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
}
conformance!(usage_applied_in_a_transaction_commits_or_rolls_back_with_it
    => sqlite_usage_applied_in_a_transaction_commits_or_rolls_back_with_it,
       postgres_usage_applied_in_a_transaction_commits_or_rolls_back_with_it);

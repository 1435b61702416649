//! Transactions: rollback on drop, isolation, and writers serialized on the audit chain.

use std::collections::BTreeSet;
use std::sync::Arc;

use keyward_core::audit::{ChainCheck, ChainVerifier, GENESIS_HASH};
use keyward_store::{Store, StoreError};

use crate::support::*;

async fn a_transaction_dropped_without_commit_leaves_nothing_behind(store: Arc<dyn Store>) {
    let ks = keyspace("acme");
    let k = key(&ks, at(1));
    let (t, t_hash) = token(at(1));

    let mut tx = store.begin().await.unwrap();
    tx.insert_keyspace(&ks).await.unwrap();
    tx.insert_key(&k.key).await.unwrap();
    tx.insert_token(&t, &t_hash).await.unwrap();
    let ev = tx
        .append_audit(event("key.create", &k.key.id, at(1), token_actor("tok_a")))
        .await
        .unwrap();
    assert_eq!(ev.seq, 1);
    assert!(tx.key(&k.key.id).await.unwrap().is_some());
    drop(tx);

    // A new transaction can start at once: the dropped one gave the write lock back.
    let mut tx = within("begin after a dropped transaction", store.begin())
        .await
        .unwrap();
    assert_eq!(tx.key(&k.key.id).await.unwrap(), None);
    drop(tx);

    assert_eq!(store.keyspace(&ks.id).await.unwrap(), None);
    assert_eq!(store.key(&k.key.id).await.unwrap(), None);
    assert_eq!(store.key_by_hash(&k.key.hash).await.unwrap(), None);
    assert_eq!(store.token(&t.id).await.unwrap(), None);
    assert_eq!(store.token_by_hash(&t_hash).await.unwrap(), None);
    assert!(store.list_keys(&all_keys(at(2))).await.unwrap().is_empty());
    assert!(all_events(&store).await.is_empty(), "no audit event");
    assert!(store.list_audit(&audit_filter()).await.unwrap().is_empty());
    assert_eq!(store.change_head().await.unwrap(), 0, "no change-feed row");

    // The same rows can be written for real afterwards, and the chain starts afresh.
    let mut tx = store.begin().await.unwrap();
    tx.insert_keyspace(&ks).await.unwrap();
    tx.insert_key(&k.key).await.unwrap();
    tx.insert_token(&t, &t_hash).await.unwrap();
    let ev = tx
        .append_audit(event("key.create", &k.key.id, at(2), token_actor("tok_a")))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((ev.seq, ev.prev_hash.as_str()), (1, GENESIS_HASH));
    assert_eq!(
        store.key_by_hash(&k.key.hash).await.unwrap(),
        Some(k.key.clone())
    );
    assert_eq!(store.token(&t.id).await.unwrap(), Some(t));
    let feed = store.changes_after(0, 10).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].key_id, k.key.id);
}
conformance!(a_transaction_dropped_without_commit_leaves_nothing_behind
    => sqlite_a_transaction_dropped_without_commit_leaves_nothing_behind,
       postgres_a_transaction_dropped_without_commit_leaves_nothing_behind);

async fn a_failed_write_rolls_back_its_whole_transaction_and_the_store_goes_on(
    store: Arc<dyn Store>,
) {
    let ks = new_keyspace(&store, "acme").await;
    let before = append(
        &store,
        event("keyspace.create", &ks.id, at(0), token_actor("tok_a")),
    )
    .await;

    // The change, its audit event and its feed row go together, or not at all.
    let k = key(&ks, at(1));
    let mut tx = store.begin().await.unwrap();
    tx.insert_key(&k.key).await.unwrap();
    tx.append_audit(event("key.create", &k.key.id, at(1), token_actor("tok_a")))
        .await
        .unwrap();
    let err = tx.insert_keyspace(&keyspace("acme")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);

    assert_eq!(store.key(&k.key.id).await.unwrap(), None);
    assert_eq!(all_events(&store).await, vec![before.clone()]);
    assert_eq!(store.change_head().await.unwrap(), 0);

    let next = within(
        "append after a failed transaction",
        append(
            &store,
            event("key.create", &k.key.id, at(2), token_actor("tok_a")),
        ),
    )
    .await;
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (2, before.hash.as_str()),
        "no gap in the chain"
    );
}
conformance!(a_failed_write_rolls_back_its_whole_transaction_and_the_store_goes_on
    => sqlite_a_failed_write_rolls_back_its_whole_transaction_and_the_store_goes_on,
       postgres_a_failed_write_rolls_back_its_whole_transaction_and_the_store_goes_on);

async fn uncommitted_writes_are_invisible_to_other_readers(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let k = key(&ks, at(1));
    let mut tx = store.begin().await.unwrap();
    tx.insert_key(&k.key).await.unwrap();
    tx.append_audit(event("key.create", &k.key.id, at(1), token_actor("tok_a")))
        .await
        .unwrap();

    // Readers do not wait for the writer and do not see its rows.
    within("reads beside an open write transaction", async {
        assert_eq!(store.key(&k.key.id).await.unwrap(), None);
        assert_eq!(store.key_by_hash(&k.key.hash).await.unwrap(), None);
        assert!(all_events(&store).await.is_empty());
        assert_eq!(store.change_head().await.unwrap(), 0);
    })
    .await;

    tx.commit().await.unwrap();
    assert_eq!(store.key(&k.key.id).await.unwrap(), Some(k.key.clone()));
    assert_eq!(all_events(&store).await.len(), 1);
    assert_eq!(store.change_head().await.unwrap(), 1);
}
conformance!(uncommitted_writes_are_invisible_to_other_readers
    => sqlite_uncommitted_writes_are_invisible_to_other_readers,
       postgres_uncommitted_writes_are_invisible_to_other_readers);

async fn concurrent_transactions_produce_a_gapless_verifiable_chain(store: Arc<dyn Store>) {
    const TASKS: i64 = 20;
    let ks = new_keyspace(&store, "acme").await;

    let mut handles = Vec::new();
    for i in 0..TASKS {
        let store = store.clone();
        let ks = ks.clone();
        handles.push(tokio::spawn(async move {
            let k = key(&ks, at(i));
            let mut tx = store.begin().await.unwrap();
            tx.insert_key(&k.key).await.unwrap();
            // Yield between statements so that the tasks interleave.
            tokio::task::yield_now().await;
            let ev = tx
                .append_audit(event("key.create", &k.key.id, at(i), token_actor("tok_a")))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            tx.commit().await.unwrap();
            (k.key.id, ev)
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(within("a concurrent writer", h).await.unwrap());
    }

    let events = all_events(&store).await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=TASKS).collect::<Vec<_>>()
    );
    let mut v = ChainVerifier::default();
    events.iter().for_each(|e| v.push(e));
    assert_eq!(
        v.finish(),
        ChainCheck::Ok {
            events: TASKS,
            head: events[events.len() - 1].hash.clone()
        }
    );

    // What each writer was told is what was stored, and each change wrote its feed row.
    for (key_id, ev) in &results {
        assert_eq!(&events[(ev.seq - 1) as usize], ev);
        assert_eq!(&ev.target_id, key_id);
    }
    let feed = store.changes_after(0, 100).await.unwrap();
    assert_eq!(feed.len(), TASKS as usize);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    let fed: BTreeSet<String> = feed.into_iter().map(|c| c.key_id).collect();
    let written: BTreeSet<String> = results.into_iter().map(|(id, _)| id).collect();
    assert_eq!(fed, written);
    assert_eq!(
        store.list_keys(&all_keys(at(100))).await.unwrap().len(),
        TASKS as usize
    );
}
conformance!(concurrent_transactions_produce_a_gapless_verifiable_chain
    => sqlite_concurrent_transactions_produce_a_gapless_verifiable_chain,
       postgres_concurrent_transactions_produce_a_gapless_verifiable_chain);

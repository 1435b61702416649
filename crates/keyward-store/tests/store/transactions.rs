//! Transactions: rollback on drop, isolation, and writers serialized on the audit chain.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

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

/// A write transaction knows what its node's last commit left (the audit chain's head, the
/// keyspaces it read, the webhooks) only when no other transaction committed between; two
/// nodes on one database taking turns, and a transaction dropped midway, each see the
/// database as it is.
async fn nodes_taking_turns_see_each_others_writes(db: &TestDb) {
    let a = db.store();
    let b = db.reopen().await;
    let chain_event = |i: i64| event("key.update", &format!("key_{i}"), at(i), token_actor("tok"));
    for (i, s) in [&a, &a, &b, &a, &a, &b, &b, &a].into_iter().enumerate() {
        let i = i as i64;
        append(s, chain_event(i)).await;
        if i == 3 || i == 6 {
            // Appended and dropped: the next transaction must not chain to it.
            let mut tx = s.begin().await.unwrap();
            tx.append_audit(chain_event(100 + i)).await.unwrap();
            drop(tx);
        }
    }
    // The database loses a's last commit (a fail-over to a replica without it, a restore):
    // the counter is back where it was, b commits at the same count, and a's next event must
    // chain to b's, not to the one a remembers.
    append(&a, chain_event(8)).await;
    db.execute_in(
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events); \
         UPDATE write_lock SET n = n - 1, tag = 'restored' WHERE id = 1",
    )
    .await;
    append(&b, chain_event(9)).await;
    append(&a, chain_event(10)).await;
    let events = all_events(&a).await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let mut v = ChainVerifier::default();
    events.iter().for_each(|e| v.push(e));
    assert!(matches!(v.finish(), ChainCheck::Ok { events: 10, .. }));

    // A keyspace a read, then b renamed: a's next transaction reads the new name.
    let ks = new_keyspace(&a, "turns").await;
    for (s, name) in [(&a, None), (&b, Some("renamed by b")), (&a, None)] {
        let mut tx = s.begin().await.unwrap();
        let mut got = tx.keyspace(&ks.id).await.unwrap().unwrap();
        if let Some(name) = name {
            got.name = name.into();
            tx.update_keyspace(&got).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut tx = a.begin().await.unwrap();
    let seen = tx.keyspace(&ks.id).await.unwrap().unwrap();
    assert_eq!(seen.name, "renamed by b");
    // Changed in this very transaction: read back as changed.
    let mut mine = seen.clone();
    mine.name = "renamed by a".into();
    tx.update_keyspace(&mine).await.unwrap();
    assert_eq!(
        tx.keyspace(&ks.id).await.unwrap().unwrap().name,
        "renamed by a"
    );
    drop(tx);
    let mut tx = a.begin().await.unwrap();
    assert_eq!(
        tx.keyspace(&ks.id).await.unwrap().unwrap().name,
        "renamed by b",
        "the dropped rename is not known"
    );
    drop(tx);

    // a's transactions knew of no webhook; b adds one: a's next event is queued for it.
    let outbox = |i: i64| keyward_store::OutboxEvent {
        id: keyward_core::id::new_id("evt", at(i)),
        kind: "key.created".into(),
        at: at(i),
        keyspace_id: None,
        key_id: None,
        body: "{}".into(),
    };
    let mut tx = a.begin().await.unwrap();
    tx.enqueue(&outbox(1)).await.unwrap();
    tx.commit().await.unwrap();
    let hook = keyward_core::model::Webhook {
        id: keyward_core::id::new_id("whk", at(2)),
        url: "https://example.com/hook".into(),
        events: vec!["key.created".into()],
        keyspace_id: None,
        created_at: at(2),
        created_by: token_actor("tok"),
    };
    let mut tx = b.begin().await.unwrap();
    tx.insert_webhook(&hook, "whsec_x").await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = a.begin().await.unwrap();
    tx.enqueue(&outbox(3)).await.unwrap();
    tx.commit().await.unwrap();
    let due = a.due_deliveries(at(10), 100, 100).await.unwrap();
    assert_eq!(
        due.len(),
        1,
        "one delivery, of the event after the webhook: {due:?}"
    );
    // b deletes it: a's next event is queued for none.
    let mut tx = b.begin().await.unwrap();
    tx.delete_webhook(&hook.id).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = a.begin().await.unwrap();
    tx.enqueue(&outbox(4)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(a.due_deliveries(at(10), 100, 100).await.unwrap().is_empty());
}
conformance!(with_db nodes_taking_turns_see_each_others_writes
    => sqlite_nodes_taking_turns_see_each_others_writes,
       postgres_nodes_taking_turns_see_each_others_writes);

/// On PostgreSQL a committed change wakes the other nodes' followers: the feed's insert raises
/// `keyward_changes` at commit, with the schema and the writing node as payload (so this test
/// tells its own from other tests'), and a store's signal fires for other nodes' commits, not
/// for its own. SQLite has no notifications: it offers no signal (its follower polls).
async fn a_committed_change_notifies_the_followers(db: &TestDb) {
    let store = db.store();
    if db.backend_name() != "postgres" {
        assert!(store.change_signal().is_none());
        return;
    }
    let schema: String = {
        let Raw::Postgres(mut conn) = db.raw().await else {
            unreachable!("a PostgreSQL database")
        };
        sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let mut listener = sqlx::postgres::PgListener::connect(&keyward_store::testing::pg_url())
        .await
        .unwrap();
    listener.listen("keyward_changes").await.unwrap();
    let ks = new_keyspace(&store, "notified").await;
    let committed = key(&ks, at(2));
    insert_keys(&store, &[&committed.key]).await;
    let payload = format!("{schema} {}", store.node_id());
    within("the change notification", async {
        while listener.recv().await.unwrap().payload() != payload {}
    })
    .await;

    let other = db.reopen().await;
    let signal = store.change_signal().expect("PostgreSQL signals");
    // The store's listener connects in the background: the other node writes until it is heard.
    within("the store's listener", async {
        for i in 0.. {
            insert_keys(&other, &[&key(&ks, at(10 + i)).key]).await;
            let heard = tokio::time::timeout(Duration::from_millis(100), signal.notified());
            if heard.await.is_ok() {
                break;
            }
        }
    })
    .await;
    // Its own commit does not wake it (a notification arrives within milliseconds)...
    insert_keys(&store, &[&key(&ks, at(3)).key]).await;
    let own = tokio::time::timeout(Duration::from_millis(500), signal.notified()).await;
    assert!(own.is_err(), "a store was signalled for its own commit");
    // ...another node's does.
    insert_keys(&other, &[&key(&ks, at(4)).key]).await;
    within("the other node's change", signal.notified()).await;
}
conformance!(with_db a_committed_change_notifies_the_followers
    => sqlite_a_committed_change_notifies_the_followers,
       postgres_a_committed_change_notifies_the_followers);

//! The audit trail: the hash chain, reading it back, filtering it.

use std::sync::Arc;

use keyward_core::audit::{event_hash, ChainCheck, ChainVerifier, GENESIS_HASH};
use keyward_core::id::new_id;
use keyward_core::model::{Actor, AuditEvent, Key, Keyspace, Webhook};
use keyward_store::{AuditFilter, NewEvent, OutboxEvent, Page, Store};
use serde_json::json;

use crate::support::*;

fn is_lower_hex_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn verify(events: &[AuditEvent]) -> ChainCheck {
    let mut v = ChainVerifier::default();
    for e in events {
        v.push(e);
    }
    v.finish()
}

/// What the caller handed in comes back unchanged, with the chain's fields added.
fn assert_carries(stored: &AuditEvent, sent: &NewEvent) {
    assert_eq!(stored.id, sent.id);
    assert_eq!(stored.at, sent.at);
    assert_eq!(stored.actor, sent.actor);
    assert_eq!(stored.action, sent.action.as_str());
    assert_eq!(stored.target_type, sent.target_type.as_str());
    assert_eq!(stored.target_id, sent.target_id);
    assert_eq!(stored.reason, sent.reason);
    assert_eq!(stored.request_id, sent.request_id);
    assert_eq!(stored.ip, sent.ip);
    assert_eq!(stored.changes, sent.changes);
}

async fn the_first_event_starts_at_seq_one_on_the_genesis_hash(store: Arc<dyn Store>) {
    let sent = event("keyspace.create", "ks_1", at(1), Actor::cli("root"));
    let first = append(&store, sent.clone()).await;
    assert_carries(&first, &sent);
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert!(is_lower_hex_sha256(&first.hash), "{}", first.hash);
    assert_eq!(first.hash, event_hash(&first));
    assert_eq!(all_events(&store).await, vec![first]);
}
conformance!(the_first_event_starts_at_seq_one_on_the_genesis_hash
    => sqlite_the_first_event_starts_at_seq_one_on_the_genesis_hash,
       postgres_the_first_event_starts_at_seq_one_on_the_genesis_hash);

async fn a_second_event_chains_to_the_first(store: Arc<dyn Store>) {
    let first = append(
        &store,
        event("key.create", "key_1", at(1), token_actor("tok_a")),
    )
    .await;
    let second = append(
        &store,
        event("key.update", "key_1", at(2), token_actor("tok_a")),
    )
    .await;
    assert_eq!(second.seq, 2);
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(second.hash, event_hash(&second));
    assert_ne!(second.hash, first.hash);

    // Two events in one transaction chain to each other as well.
    let mut tx = store.begin().await.unwrap();
    let third = tx
        .append_audit(event("key.rotate", "key_1", at(3), user_actor()))
        .await
        .unwrap();
    let fourth = tx
        .append_audit(event("key.revoke", "key_1", at(3), Actor::system()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (third.seq, third.prev_hash.as_str()),
        (3, second.hash.as_str())
    );
    assert_eq!(
        (fourth.seq, fourth.prev_hash.as_str()),
        (4, third.hash.as_str())
    );

    let stored = all_events(&store).await;
    assert_eq!(
        stored,
        vec![first, second, third, fourth.clone()],
        "read back exactly as returned"
    );
    assert_eq!(
        verify(&stored),
        ChainCheck::Ok {
            events: 4,
            head: fourth.hash
        }
    );
}
conformance!(a_second_event_chains_to_the_first
    => sqlite_a_second_event_chains_to_the_first, postgres_a_second_event_chains_to_the_first);

async fn stored_events_hash_the_same_when_recomputed_from_what_is_read_back(store: Arc<dyn Store>) {
    let mut sent = event(
        "key.update",
        "key_1",
        at(1).plus_millis(7),
        token_actor("tok_a"),
    );
    sent.reason = Some("rotate \"now\" — ✓\n".into());
    sent.request_id = None;
    sent.ip = Some("2001:db8::1".into());
    sent.changes = json_map(json!({
        "name": ["old", "new \"name\" é😀"],
        "remaining": [null, 10],
        "labels": [{}, {"env": "prod", "a": {"z": 1, "b": [true, false]}}],
        "numbers": [1.0, 2.5, -0.0, 1e21, 1e-7, 9_007_199_254_740_993_i64, 0.1],
        "\u{e000}": ["private use", 1],
        "\u{1f600}": ["astral", 2],
        "ctrl": ["\u{1}\u{1f}", "\t"],
    }));
    let mut other = event("user.disable", "usr_1", at(2), user_actor());
    other.reason = None;
    other.ip = None;
    append(&store, sent.clone()).await;
    append(&store, other).await;

    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 2);
    assert_carries(&stored[0], &sent);
    for e in &stored {
        assert_eq!(e.hash, event_hash(e), "seq {}", e.seq);
    }
    assert!(matches!(verify(&stored), ChainCheck::Ok { events: 2, .. }));

    // The chain really covers the fields: a changed field no longer verifies.
    let mut tampered = stored.clone();
    tampered[0]
        .changes
        .insert("name".into(), json!(["old", "evil"]));
    assert_eq!(
        verify(&tampered),
        ChainCheck::Bad {
            events: 2,
            first_bad_seq: 1
        }
    );
}
conformance!(stored_events_hash_the_same_when_recomputed_from_what_is_read_back
    => sqlite_stored_events_hash_the_same_when_recomputed_from_what_is_read_back,
       postgres_stored_events_hash_the_same_when_recomputed_from_what_is_read_back);

/// Five events: (seq, action, target, actor, at):
/// 1 key.create key_1 tok_a @0, 2 key.update key_1 tok_b @10, 3 key.create key_2 tok_a @20,
/// 4 key.revoke key_1 system @30, 5 token.create tok_x cli @40.
async fn five_events(store: &Arc<dyn Store>) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    for (action, target, actor, secs) in [
        ("key.create", "key_1", token_actor("tok_a"), 0),
        ("key.update", "key_1", token_actor("tok_b"), 10),
        ("key.create", "key_2", token_actor("tok_a"), 20),
        ("key.revoke", "key_1", Actor::system(), 30),
        ("token.create", "tok_x", Actor::cli("root"), 40),
    ] {
        out.push(append(store, event(action, target, at(secs), actor)).await);
    }
    out
}

async fn audit_after_reads_oldest_first_from_a_seq(store: Arc<dyn Store>) {
    let events = five_events(&store).await;
    let seqs = |v: Vec<AuditEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(store.audit_after(0, 100).await.unwrap(), events);
    assert_eq!(seqs(store.audit_after(2, 2).await.unwrap()), vec![3, 4]);
    assert_eq!(seqs(store.audit_after(0, 1).await.unwrap()), vec![1]);
    assert_eq!(seqs(store.audit_after(4, 100).await.unwrap()), vec![5]);
    assert!(store.audit_after(5, 100).await.unwrap().is_empty());
    assert!(store.audit_after(99, 100).await.unwrap().is_empty());

    // Reading the chain in batches, as the export and `/v1/audit/verify` do.
    let mut v = ChainVerifier::default();
    let mut after = 0;
    loop {
        let batch = store.audit_after(after, 2).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.seq;
        batch.iter().for_each(|e| v.push(e));
    }
    assert_eq!(
        v.finish(),
        ChainCheck::Ok {
            events: 5,
            head: events[4].hash.clone()
        }
    );
}
conformance!(audit_after_reads_oldest_first_from_a_seq
    => sqlite_audit_after_reads_oldest_first_from_a_seq, postgres_audit_after_reads_oldest_first_from_a_seq);

async fn list_audit_filters_by_target_actor_action_and_time(store: Arc<dyn Store>) {
    let events = five_events(&store).await;
    let f = audit_filter;
    assert_eq!(
        store.list_audit(&f()).await.unwrap(),
        events.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                target_id: Some("key_1".into()),
                ..f()
            }
        )
        .await,
        vec![4, 2, 1]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                target_id: Some("key_".into()),
                ..f()
            }
        )
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                actor_id: Some("tok_a".into()),
                ..f()
            }
        )
        .await,
        vec![3, 1]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                actor_id: Some("system".into()),
                ..f()
            }
        )
        .await,
        vec![4]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                action: Some("key.create".into()),
                ..f()
            }
        )
        .await,
        vec![3, 1]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                action: Some("key".into()),
                ..f()
            }
        )
        .await,
        Vec::<i64>::new()
    );
    // `from` is inclusive, `to` exclusive.
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                from: Some(at(10)),
                to: Some(at(30)),
                ..f()
            }
        )
        .await,
        vec![3, 2]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                from: Some(at(30)),
                ..f()
            }
        )
        .await,
        vec![5, 4]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                to: Some(at(10)),
                ..f()
            }
        )
        .await,
        vec![1]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                from: Some(at(10).plus_millis(1)),
                to: Some(at(20).plus_millis(1)),
                ..f()
            }
        )
        .await,
        vec![3]
    );
    assert_eq!(
        audit_seqs(
            &store,
            AuditFilter {
                from: Some(at(40)),
                to: Some(at(40)),
                ..f()
            }
        )
        .await,
        Vec::<i64>::new()
    );
    let combined = AuditFilter {
        target_id: Some("key_1".into()),
        actor_id: Some("tok_b".into()),
        action: Some("key.update".into()),
        from: Some(at(0)),
        to: Some(at(100)),
        ..f()
    };
    assert_eq!(audit_seqs(&store, combined).await, vec![2]);
}
conformance!(list_audit_filters_by_target_actor_action_and_time
    => sqlite_list_audit_filters_by_target_actor_action_and_time,
       postgres_list_audit_filters_by_target_actor_action_and_time);

async fn list_audit_pages_newest_first_by_seq(store: Arc<dyn Store>) {
    five_events(&store).await;
    let page = |limit: i64, after: Option<i64>| AuditFilter {
        page: Page { limit, after },
        ..AuditFilter::default()
    };
    assert_eq!(audit_seqs(&store, page(2, None)).await, vec![5, 4]);
    assert_eq!(audit_seqs(&store, page(2, Some(4))).await, vec![3, 2]);
    assert_eq!(audit_seqs(&store, page(2, Some(2))).await, vec![1]);
    assert_eq!(
        audit_seqs(&store, page(2, Some(1))).await,
        Vec::<i64>::new()
    );

    // Paging through a filter.
    let mut seen = Vec::new();
    let mut f = AuditFilter {
        target_id: Some("key_1".into()),
        page: Page {
            limit: 1,
            after: None,
        },
        ..AuditFilter::default()
    };
    loop {
        let got = store.list_audit(&f).await.unwrap();
        assert!(got.len() <= 1);
        let Some(last) = got.last() else { break };
        f.page.after = Some(last.seq);
        seen.push(last.seq);
    }
    assert_eq!(seen, vec![4, 2, 1]);
}
conformance!(list_audit_pages_newest_first_by_seq
    => sqlite_list_audit_pages_newest_first_by_seq, postgres_list_audit_pages_newest_first_by_seq);

/// Events appended in a batch are chained as if appended one by one, in order, and an event
/// appended alone afterwards (in the same transaction or a later one) follows the batch's last.
async fn a_batch_of_events_chains_like_single_appends(store: Arc<dyn Store>) {
    append(
        &store,
        event("key.create", "key_first", at(1), Actor::system()),
    )
    .await;
    let batch: Vec<NewEvent> = (0..1_203)
        .map(|i| {
            let mut e = event(
                "key.revoke",
                &format!("key_{i}"),
                at(2),
                token_actor("tok_bulk"),
            );
            e.changes
                .insert("n".into(), json!({"i": i, "text": "ünï \"q\""}));
            e
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let stored = tx.append_audits(batch.clone()).await.unwrap();
    let single = tx
        .append_audit(event("key.create", "key_after", at(3), Actor::system()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored.len(), batch.len());
    for (s, sent) in stored.iter().zip(&batch) {
        assert_carries(s, sent);
    }
    assert_eq!(stored[0].seq, 2);
    assert_eq!(single.seq, 1_205);
    assert_eq!(single.prev_hash, stored.last().unwrap().hash);
    let all = all_events(&store).await;
    assert_eq!(all.len(), 1_205);
    assert_eq!(&all[1..1_204], &stored[..]);
    assert!(matches!(verify(&all), ChainCheck::Ok { events: 1_205, .. }));
    // An empty batch appends nothing and leaves the chain's head where it was.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.append_audits(Vec::new()).await.unwrap().is_empty());
    let next = tx
        .append_audit(event("key.create", "key_last", at(4), Actor::system()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((next.seq, next.prev_hash), (1_206, single.hash));
}
conformance!(a_batch_of_events_chains_like_single_appends
    => sqlite_a_batch_of_events_chains_like_single_appends,
       postgres_a_batch_of_events_chains_like_single_appends);

/// A key written with its event and committed in one round trip: the key (every field), its
/// feed row and the event are stored, the event chains after the head and the next append
/// after it. A write that fails (the key's id taken) leaves none of the three, and the chain
/// goes on from the last event actually stored; so does a transaction dropped before it
/// committed, and neither holds up the next writer.
async fn a_key_written_with_its_event_chains_like_an_append(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "together").await;
    let first = append(&store, event("key.create", "key_0", at(1), Actor::system())).await;
    let feed_before = store.changes_after(0, 100).await.unwrap().len();
    let k = full_key(&ks, at(2)).key;
    let sent = event("key.create", &k.id, at(2), token_actor("tok_creator"));
    let tx = store.begin().await.unwrap();
    let stored = tx.commit_with_key(&k, sent.clone()).await.unwrap();
    let after = append(&store, event("key.update", &k.id, at(3), Actor::system())).await;
    assert_carries(&stored, &sent);
    assert_eq!((stored.seq, &stored.prev_hash), (2, &first.hash));
    assert_eq!((after.seq, &after.prev_hash), (3, &stored.hash));
    assert_eq!(store.key(&k.id).await.unwrap().as_ref(), Some(&k));
    let feed = store.changes_after(0, 100).await.unwrap();
    assert_eq!(feed.len(), feed_before + 1);
    assert_eq!(
        feed.last().map(|c| (&c.key_id, c.key_hash)),
        Some((&k.id, k.hash))
    );

    // The same id again: refused, nothing of it stored, in this transaction or the next.
    let mut again = key(&ks, at(4)).key;
    again.id = k.id.clone();
    let tx = store.begin().await.unwrap();
    let refused = tx
        .commit_with_key(
            &again,
            event("key.create", &again.id, at(4), Actor::system()),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // A transaction that wrote and was dropped before its commit leaves nothing either.
    let mut tx = store.begin().await.unwrap();
    tx.append_audit(event("key.update", &k.id, at(4), Actor::system()))
        .await
        .unwrap();
    drop(tx);
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        append(&store, event("key.revoke", &k.id, at(5), Actor::system())),
    )
    .await
    .expect("the next writer is not held up by the ones that failed or were dropped");
    assert_eq!((next.seq, &next.prev_hash), (4, &after.hash));
    assert_eq!(
        store.changes_after(0, 100).await.unwrap().len(),
        feed_before + 1
    );
    assert!(store.key_by_hash(&again.hash).await.unwrap().is_none());
    let all = all_events(&store).await;
    assert_eq!(all.len(), 4);
    assert!(matches!(verify(&all), ChainCheck::Ok { events: 4, .. }));
}
conformance!(a_key_written_with_its_event_chains_like_an_append
    => sqlite_a_key_written_with_its_event_chains_like_an_append,
       postgres_a_key_written_with_its_event_chains_like_an_append);

/// What a key created in the API writes besides itself: its audit event and its webhook event.
fn created(ks: &Keyspace, secs: i64) -> (Key, NewEvent, OutboxEvent) {
    let k = key(ks, at(secs)).key;
    let e = event("key.create", &k.id, at(secs), Actor::system());
    let id = new_id("evt", at(secs));
    let o = OutboxEvent {
        body: format!(r#"{{"id":"{id}","type":"key.created"}}"#),
        id,
        kind: "key.created".into(),
        at: at(secs),
        keyspace_id: Some(ks.id.clone()),
        key_id: Some(k.id.clone()),
    };
    (k, e, o)
}

/// A key created the usual way: a transaction that reads the keyspace, queues the webhook
/// event and commits with the key and its audit event.
async fn create_in_tx(store: &Arc<dyn Store>, ks: &Keyspace, secs: i64) -> AuditEvent {
    let (k, e, o) = created(ks, secs);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.keyspace(&ks.id).await.unwrap().is_some());
    tx.enqueue(&o).await.unwrap();
    tx.commit_with_key(&k, e).await.unwrap()
}

/// A key created from a prediction (`Store::create_key_predicted`): stored with its audit event
/// (chained after the head) and its webhook delivery when no write came between this node's
/// last commit and it; otherwise nothing of it is stored (its outbox rows included), whether
/// another node wrote, a quota lease moved the lock's counter but not its tag, a transaction of
/// the same node came first, or the database refused the key, and the chain goes on from the
/// last event stored. A node makes one prediction at a time, none before it knows the chain's
/// head, and none after a failed one until a transaction of its own finds no other writer
/// before it.
async fn a_predicted_key_is_stored_only_when_no_write_came_between(db: &TestDb) {
    let (a, b) = (db.store(), db.reopen().await);
    assert!(a.predict().is_none(), "nothing known yet");
    let ks = new_keyspace(&a, "guess").await;
    let hook = Webhook {
        id: new_id("whk", at(0)),
        url: "https://example.com/hook".into(),
        events: vec!["key.created".into()],
        keyspace_id: None,
        created_at: at(0),
        created_by: Actor::system(),
    };
    let mut tx = a.begin().await.unwrap();
    tx.insert_webhook(&hook, "whsec_test").await.unwrap();
    tx.commit().await.unwrap();
    create_in_tx(&a, &ks, 1).await;
    let last = create_in_tx(&a, &ks, 2).await;

    // Two commits of this node in a row: predicted, one at a time.
    let p = a
        .predict()
        .expect("a prediction after two commits in a row");
    assert!(a.predict().is_none(), "one prediction at a time");
    assert!(p.keyspace(&ks.id).is_some());
    let (k, e, o) = created(&ks, 3);
    let stored = a
        .create_key_predicted(p, &k, e.clone(), std::slice::from_ref(&o))
        .await
        .unwrap()
        .expect("stored: no write came between");
    assert_carries(&stored, &e);
    assert_eq!((stored.seq, &stored.prev_hash), (last.seq + 1, &last.hash));
    assert_eq!(a.key(&k.id).await.unwrap().as_ref(), Some(&k));
    let due = a.due_deliveries(at(10), 100, 100).await.unwrap();
    assert!(due
        .iter()
        .any(|d| d.event_id == o.id && d.webhook_id == hook.id));

    // Refused by the database (the key's id is taken): nothing of it stored, its outbox rows
    // (written before the key) included.
    let p = a.predict().expect("still predicting");
    let (mut again, e, o) = created(&ks, 4);
    again.id = k.id.clone();
    let refused_event = e.id.clone();
    let refused = a
        .create_key_predicted(p, &again, e, std::slice::from_ref(&o))
        .await;
    assert!(matches!(refused, Ok(None)), "{refused:?}");
    assert!(a.key_by_hash(&again.hash).await.unwrap().is_none());
    assert!(!all_events(&a).await.iter().any(|e| e.id == refused_event));
    let due = a.due_deliveries(at(10), 100, 100).await.unwrap();
    assert!(!due.iter().any(|d| d.event_id == o.id));
    // A refusal stops predictions too, until a transaction finds no other writer before it.
    assert!(a.predict().is_none());
    let restored = create_in_tx(&a, &ks, 4).await;
    assert_eq!(restored.seq, stored.seq + 1);
    let feed = a.changes_after(0, 1_000).await.unwrap().len();

    // Another node writes after the prediction (a webhook, no audit event: the prediction's
    // chain head still holds, its webhooks do not): nothing stored, and no more predictions.
    let p = a.predict().expect("still predicting");
    let second = Webhook {
        id: new_id("whk", at(5)),
        ..hook.clone()
    };
    let mut tx = b.begin().await.unwrap();
    tx.insert_webhook(&second, "whsec_second").await.unwrap();
    tx.commit().await.unwrap();
    let (lost, e, o) = created(&ks, 6);
    let moved = a
        .create_key_predicted(p, &lost, e, std::slice::from_ref(&o))
        .await;
    assert!(matches!(moved, Ok(None)), "{moved:?}");
    assert!(a.key(&lost.id).await.unwrap().is_none());
    assert_eq!(a.changes_after(0, 1_000).await.unwrap().len(), feed);
    let due = a.due_deliveries(at(10), 100, 100).await.unwrap();
    assert!(!due.iter().any(|d| d.event_id == o.id));
    assert!(a.predict().is_none(), "another writer came between");
    // A transaction that finds another writer before it does not restore them; one that
    // follows this node's own commit does.
    let next = create_in_tx(&a, &ks, 7).await;
    assert_eq!(
        (next.seq, &next.prev_hash),
        (restored.seq + 1, &restored.hash)
    );
    // ... and it knew the new webhook, which a stale prediction would not have.
    let due = a.due_deliveries(at(10), 100, 100).await.unwrap();
    assert_eq!(due.iter().filter(|d| d.webhook_id == second.id).count(), 1);
    assert!(a.predict().is_none(), "b wrote since a's commit before");
    create_in_tx(&a, &ks, 8).await;
    let p = a.predict().expect("predicting again");
    let (k, e, o) = created(&ks, 9);
    let stored = a
        .create_key_predicted(p, &k, e, std::slice::from_ref(&o))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.seq, next.seq + 2);

    // The counter moved without the tag (a quota lease takes the lock so), or the tag with the
    // counter by a transaction of this very node: either way the guard refuses.
    let (mut quota, e, o) = created(&ks, 10);
    quota.remaining = Some(10);
    let mut tx = a.begin().await.unwrap();
    tx.enqueue(&o).await.unwrap();
    tx.commit_with_key(&quota, e).await.unwrap();
    create_in_tx(&a, &ks, 11).await;
    let p = a.predict().expect("predicting");
    assert!(a.lease_quota(&quota.id, 1, at(12)).await.unwrap().is_some());
    let (k, e, o) = created(&ks, 12);
    let leased = a
        .create_key_predicted(p, &k, e, std::slice::from_ref(&o))
        .await;
    assert!(matches!(leased, Ok(None)), "{leased:?}");
    assert!(a.key(&k.id).await.unwrap().is_none());
    create_in_tx(&a, &ks, 13).await;
    create_in_tx(&a, &ks, 14).await;
    let p = a.predict().expect("predicting");
    create_in_tx(&a, &ks, 15).await;
    let (k, e, o) = created(&ks, 16);
    let own = a
        .create_key_predicted(p, &k, e, std::slice::from_ref(&o))
        .await;
    assert!(matches!(own, Ok(None)), "{own:?}");
    assert!(a.key(&k.id).await.unwrap().is_none());

    let all = all_events(&a).await;
    assert_eq!(all.last().map(|e| e.seq), Some(stored.seq + 5));
    assert!(matches!(verify(&all), ChainCheck::Ok { .. }));
}
conformance!(with_db a_predicted_key_is_stored_only_when_no_write_came_between
    => sqlite_a_predicted_key_is_stored_only_when_no_write_came_between,
       postgres_a_predicted_key_is_stored_only_when_no_write_came_between);

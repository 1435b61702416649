//! The audit trail: the hash chain, reading it back, filtering it.

use std::sync::Arc;

use keyward_core::audit::{event_hash, ChainCheck, ChainVerifier, GENESIS_HASH};
use keyward_core::model::{Actor, AuditEvent};
use keyward_store::{AuditFilter, NewEvent, Page, Store};
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

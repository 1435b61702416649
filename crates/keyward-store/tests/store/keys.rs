//! Keys: insert, read by id and by hash, update, the change feed.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyward_core::keyformat::{self, KeyHash};
use keyward_core::model::{Actor, RateLimit};
use keyward_store::{Change, Store, StoreError, UsageDelta};
use serde_json::json;

use crate::support::*;

async fn a_key_round_trips_by_id_and_by_hash_with_every_field(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let full = full_key(&ks, at(10));
    let bare = key(&ks, at(11));

    let mut tx = store.begin().await.unwrap();
    tx.insert_key(&full.key).await.unwrap();
    tx.insert_key(&bare.key).await.unwrap();
    assert_eq!(
        tx.key(&full.key.id).await.unwrap(),
        Some(full.key.clone()),
        "visible inside its transaction"
    );
    tx.commit().await.unwrap();

    for k in [&full, &bare] {
        assert_eq!(store.key(&k.key.id).await.unwrap(), Some(k.key.clone()));
        // The verification path looks a key up by the SHA-256 of the plaintext it was handed.
        let by_hash = store
            .key_by_hash(&KeyHash::of(k.plaintext.expose()))
            .await
            .unwrap();
        assert_eq!(by_hash, Some(k.key.clone()));
    }

    let read = store.key(&full.key.id).await.unwrap().unwrap();
    assert_eq!(read.labels["team/unit.sub-part_1"], "a \"quoted\" \\ välue");
    assert_eq!(
        read.meta["nested"]["list"],
        json!([1, 2.5, -3, 1e21, null, true])
    );
    assert_eq!(
        read.meta["big"],
        json!(9_007_199_254_740_993_i64),
        "integers beyond 2^53 keep every digit"
    );
    assert_eq!(
        read.ratelimit,
        Some(RateLimit {
            limit: 100,
            window_secs: 60
        })
    );
    assert_eq!(read.created_by, user_actor());
    assert_eq!(read.revoked_by, Some(Actor::system()));
    assert_eq!(
        read.last_used_at,
        Some(at(10).plus_millis(1_234)),
        "millisecond precision"
    );
    assert_eq!(read.allowed_cidrs.as_deref().map(<[String]>::len), Some(3));

    // Another plaintext of the same shape finds nothing.
    let stranger = keyformat::generate("acme");
    assert_eq!(
        store
            .key_by_hash(&KeyHash::of(stranger.expose()))
            .await
            .unwrap(),
        None
    );
}
conformance!(a_key_round_trips_by_id_and_by_hash_with_every_field
    => sqlite_a_key_round_trips_by_id_and_by_hash_with_every_field,
       postgres_a_key_round_trips_by_id_and_by_hash_with_every_field);

async fn unknown_ids_and_hashes_read_as_none(store: Arc<dyn Store>) {
    assert_eq!(store.keyspace("ks_nope").await.unwrap(), None);
    assert_eq!(store.key("key_nope").await.unwrap(), None);
    assert_eq!(
        store.key_by_hash(&KeyHash::of("acme_nope")).await.unwrap(),
        None
    );
    assert_eq!(store.token("tok_nope").await.unwrap(), None);
    assert_eq!(
        store.token_by_hash(&KeyHash::of("kwt_nope")).await.unwrap(),
        None
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.keyspace("ks_nope").await.unwrap(), None);
    assert_eq!(tx.key("key_nope").await.unwrap(), None);
    assert_eq!(tx.token("tok_nope").await.unwrap(), None);
    tx.commit().await.unwrap();
    assert!(store.list_keys(&all_keys(at(0))).await.unwrap().is_empty());
    assert_eq!(store.change_head().await.unwrap(), 0);
    assert!(store.changes_after(0, 10).await.unwrap().is_empty());
    assert!(all_events(&store).await.is_empty());
}
conformance!(unknown_ids_and_hashes_read_as_none
    => sqlite_unknown_ids_and_hashes_read_as_none, postgres_unknown_ids_and_hashes_read_as_none);

async fn a_second_key_with_the_same_hash_or_id_is_a_conflict(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let first = key(&ks, at(1));
    insert_keys(&store, &[&first.key]).await;

    let mut same_hash = key(&ks, at(2));
    same_hash.key.hash = first.key.hash;
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert_key(&same_hash.key).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);

    let mut same_id = key(&ks, at(3));
    same_id.key.id = first.key.id.clone();
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert_key(&same_id.key).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);

    assert_eq!(
        store.key(&first.key.id).await.unwrap(),
        Some(first.key.clone())
    );
    assert_eq!(store.key(&same_hash.key.id).await.unwrap(), None);
    assert_eq!(
        store.change_head().await.unwrap(),
        1,
        "the failed inserts wrote no change row"
    );
}
conformance!(a_second_key_with_the_same_hash_or_id_is_a_conflict
    => sqlite_a_second_key_with_the_same_hash_or_id_is_a_conflict,
       postgres_a_second_key_with_the_same_hash_or_id_is_a_conflict);

async fn a_key_in_an_unknown_keyspace_is_refused(store: Arc<dyn Store>) {
    let ks = keyspace("ghost"); // never inserted
    let k = key(&ks, at(1));
    let mut tx = store.begin().await.unwrap();
    assert!(tx.insert_key(&k.key).await.is_err());
    drop(tx);
    assert_eq!(store.key(&k.key.id).await.unwrap(), None);
}
conformance!(a_key_in_an_unknown_keyspace_is_refused
    => sqlite_a_key_in_an_unknown_keyspace_is_refused, postgres_a_key_in_an_unknown_keyspace_is_refused);

async fn update_key_persists_every_mutable_field_and_feeds_the_change_feed(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let original = key(&ks, at(1)).key;
    insert_keys(&store, &[&original]).await;
    assert_eq!(store.change_head().await.unwrap(), 1);
    assert_eq!(
        store.changes_after(0, 10).await.unwrap(),
        vec![Change {
            seq: 1,
            key_id: original.id.clone(),
            key_hash: original.hash,
            origin: store.node_id().to_string(),
            quota: false,
            keyspace: false,
        }]
    );

    // Usage written meanwhile by the flusher must survive an update made from a stale copy.
    let delta = UsageDelta {
        key_id: original.id.clone(),
        calls: 5,
        denied: 2,
        last_used_at: Some(at(3)),
        consumed: 0,
        ..UsageDelta::default()
    };
    store.apply_usage(&[delta]).await.unwrap();

    let mut changed = original.clone();
    changed.name = "renamed".into();
    changed.owner = Some("team-orders".into());
    changed.scopes = vec!["orders:write".into()];
    changed.labels = BTreeMap::from([("env".to_string(), "staging".to_string())]);
    changed.meta = json_map(json!({"ticket": "OPS-1", "n": [1, 2]}));
    changed.enabled = false;
    changed.updated_at = at(4);
    changed.expires_at = Some(at(1000));
    changed.revoked_at = Some(at(4));
    changed.revoked_by = Some(token_actor("tok_revoker"));
    changed.revoked_reason = Some("employee left".into());
    changed.rotated_to = Some("key_next".into());
    changed.set_ratelimits(keyward_core::limits::from_shorthand(Some(RateLimit {
        limit: 5,
        window_secs: 1,
    })));
    changed.allowed_cidrs = Some(vec!["10.0.0.0/8".into()]);
    // `remaining` belongs to usage batches and `set_remaining`: update_key leaves it alone.
    changed.remaining = Some(3);
    update_key(&store, &changed).await;

    let mut expected = changed.clone();
    expected.call_count = 5;
    expected.denied_count = 2;
    expected.last_used_at = Some(at(3));
    expected.remaining = None;
    assert_eq!(
        store.key(&original.id).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        store.key_by_hash(&original.hash).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(store.change_head().await.unwrap(), 2);
    assert_eq!(
        store.changes_after(1, 10).await.unwrap(),
        vec![Change {
            seq: 2,
            key_id: original.id.clone(),
            key_hash: original.hash,
            origin: store.node_id().to_string(),
            quota: false,
            keyspace: false,
        }]
    );

    // Every optional field can be cleared again.
    let mut cleared = expected.clone();
    cleared.owner = None;
    cleared.scopes = vec![];
    cleared.labels = BTreeMap::new();
    cleared.meta = serde_json::Map::new();
    cleared.enabled = true;
    cleared.updated_at = at(5);
    cleared.expires_at = None;
    cleared.revoked_at = None;
    cleared.revoked_by = None;
    cleared.revoked_reason = None;
    cleared.rotated_to = None;
    cleared.set_ratelimits(Vec::new());
    cleared.allowed_cidrs = None;
    update_key(&store, &cleared).await;
    assert_eq!(store.key(&original.id).await.unwrap(), Some(cleared));

    // Another key's insert follows in the same feed; `limit` and `seq` page through it.
    let other = key(&ks, at(6)).key;
    insert_keys(&store, &[&other]).await;
    assert_eq!(store.change_head().await.unwrap(), 4);
    let feed = store.changes_after(0, 100).await.unwrap();
    let seqs: Vec<i64> = feed.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(
        feed[3],
        Change {
            seq: 4,
            key_id: other.id.clone(),
            key_hash: other.hash,
            origin: store.node_id().to_string(),
            quota: false,
            keyspace: false,
        }
    );
    assert_eq!(store.changes_after(0, 2).await.unwrap(), feed[..2].to_vec());
    assert_eq!(
        store.changes_after(2, 1).await.unwrap(),
        feed[2..3].to_vec()
    );
    assert!(store.changes_after(4, 10).await.unwrap().is_empty());
}
conformance!(update_key_persists_every_mutable_field_and_feeds_the_change_feed
    => sqlite_update_key_persists_every_mutable_field_and_feeds_the_change_feed,
       postgres_update_key_persists_every_mutable_field_and_feeds_the_change_feed);

async fn set_remaining_sets_or_clears_the_quota_and_update_key_never_overwrites_it(
    store: Arc<dyn Store>,
) {
    let ks = new_keyspace(&store, "acme").await;
    let mut k = key(&ks, at(1)).key;
    k.remaining = Some(100);
    insert_keys(&store, &[&k]).await;

    let mut tx = store.begin().await.unwrap();
    tx.set_remaining(&k.id, Some(40)).await.unwrap();
    assert_eq!(
        tx.key(&k.id).await.unwrap().unwrap().remaining,
        Some(40),
        "visible inside its transaction"
    );
    drop(tx);
    assert_eq!(
        store.key(&k.id).await.unwrap().unwrap().remaining,
        Some(100),
        "rolled back with its transaction"
    );

    assert_eq!(
        store.change_head().await.unwrap(),
        1,
        "no change row either"
    );

    let mut tx = store.begin().await.unwrap();
    tx.set_remaining(&k.id, Some(40)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.key(&k.id).await.unwrap().unwrap().remaining, Some(40));
    // (PostgreSQL's sequence may skip the number the rolled-back row took: only order counts.)
    let fed = store.changes_after(1, 10).await.unwrap();
    assert_eq!(fed.len(), 1, "one change row: {fed:?}");
    assert!(fed[0].quota && fed[0].key_id == k.id);

    // Another node leases and spends from the quota; an update made from a copy read before
    // that (still saying 40) must not give the spent quota back.
    let stale = store.key(&k.id).await.unwrap().unwrap();
    assert_eq!(lease(&store, &k.id, 15, 2).await, Some((15, 25)));
    let spent = UsageDelta {
        key_id: k.id.clone(),
        calls: 15,
        denied: 0,
        last_used_at: Some(at(2)),
        consumed: 15,
        ..UsageDelta::default()
    };
    store.apply_usage(&[spent]).await.unwrap();
    let mut renamed = stale.clone();
    renamed.name = "renamed".into();
    renamed.updated_at = at(3);
    update_key(&store, &renamed).await;
    let read = store.key(&k.id).await.unwrap().unwrap();
    assert_eq!(
        (read.name.as_str(), read.remaining, read.call_count),
        ("renamed", Some(25), 15)
    );
    assert_eq!(pool(&store, &k.id).await, Some(25));

    // `None` makes the key unlimited; usage then leaves it unlimited, and there is nothing
    // to lease.
    assert_eq!(lease(&store, &k.id, 5, 3).await, Some((5, 20)));
    let mut tx = store.begin().await.unwrap();
    tx.set_remaining(&k.id, None).await.unwrap();
    tx.commit().await.unwrap();
    let spent = UsageDelta {
        key_id: k.id.clone(),
        calls: 1,
        denied: 0,
        last_used_at: Some(at(4)),
        consumed: 1,
        ..UsageDelta::default()
    };
    store.apply_usage(&[spent]).await.unwrap();
    assert_eq!(store.key(&k.id).await.unwrap().unwrap().remaining, None);
    assert_eq!(lease(&store, &k.id, 5, 4).await, None);
    store.return_lease(&k.id, 4, None).await.unwrap();
    assert_eq!(store.key(&k.id).await.unwrap().unwrap().remaining, None);

    // A quota can be given back to an unlimited key.
    let mut tx = store.begin().await.unwrap();
    tx.set_remaining(&k.id, Some(0)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.key(&k.id).await.unwrap().unwrap().remaining, Some(0));
    assert_eq!(lease(&store, &k.id, 5, 5).await, Some((0, 0)));
}
conformance!(set_remaining_sets_or_clears_the_quota_and_update_key_never_overwrites_it
    => sqlite_set_remaining_sets_or_clears_the_quota_and_update_key_never_overwrites_it,
       postgres_set_remaining_sets_or_clears_the_quota_and_update_key_never_overwrites_it);

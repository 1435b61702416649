//! Lifecycle sweeps: expiry marked once, expiry warnings sent once, inactive keys.

use std::sync::Arc;

use keyward_core::model::{Actor, Key};
use keyward_store::Store;

use crate::support::*;

/// Ids in the order the sweeps return keys: (created_at, id).
fn in_order(keys: &[&Key]) -> Vec<String> {
    let mut v: Vec<&Key> = keys.to_vec();
    v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    v.into_iter().map(|k| k.id.clone()).collect()
}

fn key_ids(keys: &[Key]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

fn revoke(k: &mut Key, secs: i64) {
    k.revoked_at = Some(at(secs));
    k.revoked_by = Some(Actor::system());
    k.revoked_reason = Some("test".into());
}

async fn expired_keys_are_listed_until_marked_once(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let other_ks = new_keyspace(&store, "beta").await;
    let expiring = |created: i64, expires: Option<i64>| {
        let mut k = key(&ks, at(created)).key;
        k.expires_at = expires.map(at);
        k
    };
    let early = expiring(0, Some(5));
    let e10 = expiring(1, Some(10));
    let e20 = expiring(2, Some(20));
    let mut revoked = expiring(3, Some(10));
    revoke(&mut revoked, 4);
    let later = expiring(4, Some(100));
    let never = expiring(5, None);
    let mut elsewhere = key(&other_ks, at(6)).key;
    elsewhere.expires_at = Some(at(10));
    insert_keys(
        &store,
        &[&early, &e10, &e20, &revoked, &later, &never, &elsewhere],
    )
    .await;

    let expired = |secs: i64, limit: i64| {
        let store = store.clone();
        async move { key_ids(&store.expired_unmarked(at(secs), limit).await.unwrap()) }
    };
    assert!(expired(4, 100).await.is_empty());
    assert_eq!(expired(9, 100).await, in_order(&[&early]));
    assert_eq!(
        expired(10, 100).await,
        in_order(&[&early, &e10, &elsewhere]),
        "expired at the instant itself, in every keyspace; not when revoked"
    );
    assert_eq!(expired(20, 2).await, in_order(&[&early, &e10]));
    let listed = store.expired_unmarked(at(20), 100).await.unwrap();
    assert_eq!(listed[0], early, "whole keys, as read");

    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_expired(&e10.id, at(20)).await.unwrap());
    assert!(!tx.mark_expired(&e10.id, at(21)).await.unwrap(), "once");
    assert!(
        !tx.mark_expired(&later.id, at(20)).await.unwrap(),
        "not expired yet"
    );
    assert!(
        !tx.mark_expired(&revoked.id, at(20)).await.unwrap(),
        "revoked"
    );
    assert!(!tx.mark_expired(&never.id, at(20)).await.unwrap());
    assert!(!tx.mark_expired("key_nope", at(20)).await.unwrap());
    tx.commit().await.unwrap();
    // Rolled back: still unmarked.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_expired(&e20.id, at(20)).await.unwrap());
    drop(tx);

    assert_eq!(
        expired(20, 100).await,
        in_order(&[&early, &e20, &elsewhere])
    );
    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_expired(&e20.id, at(20)).await.unwrap());
    assert!(tx.mark_expired(&later.id, at(100)).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(expired(1_000, 100).await, in_order(&[&early, &elsewhere]));
    // Marking is no key change: the keys read as they were.
    assert_eq!(store.key(&e10.id).await.unwrap(), Some(e10));
}
conformance!(expired_keys_are_listed_until_marked_once
    => sqlite_expired_keys_are_listed_until_marked_once,
       postgres_expired_keys_are_listed_until_marked_once);

async fn expiring_keys_are_warned_about_once(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let other_ks = new_keyspace(&store, "beta").await;
    let expiring = |created: i64, expires: Option<i64>| {
        let mut k = key(&ks, at(created)).key;
        k.expires_at = expires.map(at);
        k
    };
    let soon = expiring(0, Some(50));
    let at_until = expiring(1, Some(100));
    let after_until = expiring(2, Some(101));
    let at_now = expiring(3, Some(10));
    let mut rotated = expiring(4, Some(60));
    rotated.rotated_to = Some("key_successor".into());
    let mut revoked = expiring(5, Some(70));
    revoke(&mut revoked, 6);
    let never = expiring(6, None);
    let mut disabled = expiring(7, Some(80));
    disabled.enabled = false;
    let mut elsewhere = key(&other_ks, at(8)).key;
    elsewhere.expires_at = Some(at(50));
    insert_keys(
        &store,
        &[
            &soon,
            &at_until,
            &after_until,
            &at_now,
            &rotated,
            &revoked,
            &never,
            &disabled,
            &elsewhere,
        ],
    )
    .await;

    let expiring_unwarned = |ks_id: String, limit: i64| {
        let store = store.clone();
        async move {
            key_ids(
                &store
                    .expiring_unwarned(&ks_id, at(10), at(100), limit)
                    .await
                    .unwrap(),
            )
        }
    };
    // In (now, until], live, not rotated away, in the keyspace asked for.
    assert_eq!(
        expiring_unwarned(ks.id.clone(), 100).await,
        in_order(&[&soon, &at_until, &disabled])
    );
    assert_eq!(
        expiring_unwarned(ks.id.clone(), 1).await,
        in_order(&[&soon])
    );
    assert_eq!(
        expiring_unwarned(other_ks.id.clone(), 100).await,
        in_order(&[&elsewhere])
    );

    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_warned(&soon.id, at(10)).await.unwrap());
    assert!(!tx.mark_warned(&soon.id, at(11)).await.unwrap(), "once");
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_warned(&at_until.id, at(10)).await.unwrap());
    drop(tx);
    assert_eq!(
        expiring_unwarned(ks.id.clone(), 100).await,
        in_order(&[&at_until, &disabled])
    );
    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_warned(&at_until.id, at(12)).await.unwrap());
    assert!(!tx.mark_warned("key_nope", at(12)).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(
        expiring_unwarned(ks.id.clone(), 100).await,
        in_order(&[&disabled])
    );
    assert_eq!(store.key(&soon.id).await.unwrap(), Some(soon));
}
conformance!(expiring_keys_are_warned_about_once
    => sqlite_expiring_keys_are_warned_about_once,
       postgres_expiring_keys_are_warned_about_once);

async fn inactive_since_selects_live_keys_unused_since_the_cutoff(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let other_ks = new_keyspace(&store, "beta").await;
    let created = |secs: i64| key(&ks, at(secs)).key;
    let never_used = created(0);
    let used_later = created(1); // used at 20 s, below
    let created_late = created(15);
    let mut revoked = created(2);
    revoke(&mut revoked, 3);
    let mut expires_at_30 = created(3);
    expires_at_30.expires_at = Some(at(30));
    let mut expires_later = created(4);
    expires_later.expires_at = Some(at(100));
    let mut disabled = created(5);
    disabled.enabled = false;
    let mut used_long_ago = created(6);
    used_long_ago.last_used_at = Some(at(8));
    let elsewhere = key(&other_ks, at(0)).key;
    insert_keys(
        &store,
        &[
            &never_used,
            &used_later,
            &created_late,
            &revoked,
            &expires_at_30,
            &expires_later,
            &disabled,
            &used_long_ago,
            &elsewhere,
        ],
    )
    .await;
    store
        .apply_usage(&[spend(&used_later.id, 0, 20)])
        .await
        .unwrap();

    let inactive = |now: i64, cutoff: i64, limit: i64| {
        let store = store.clone();
        let ks_id = ks.id.clone();
        async move {
            key_ids(
                &store
                    .inactive_since(&ks_id, at(now), at(cutoff), limit)
                    .await
                    .unwrap(),
            )
        }
    };
    // Not used (or created) after the cutoff, neither revoked nor expired at `now`.
    assert_eq!(
        inactive(30, 10, 100).await,
        in_order(&[&never_used, &expires_later, &disabled, &used_long_ago])
    );
    assert_eq!(
        inactive(29, 10, 100).await,
        in_order(&[
            &never_used,
            &expires_at_30,
            &expires_later,
            &disabled,
            &used_long_ago
        ])
    );
    // The cutoff is inclusive.
    assert_eq!(
        inactive(30, 20, 100).await,
        in_order(&[
            &never_used,
            &used_later,
            &created_late,
            &expires_later,
            &disabled,
            &used_long_ago
        ])
    );
    assert_eq!(
        inactive(30, 7, 100).await,
        in_order(&[&never_used, &expires_later, &disabled])
    );
    assert_eq!(
        inactive(30, 10, 2).await,
        in_order(&[&never_used, &expires_later])
    );
    assert_eq!(
        key_ids(
            &store
                .inactive_since(&other_ks.id, at(30), at(10), 100)
                .await
                .unwrap()
        ),
        vec![elsewhere.id.clone()]
    );
}
conformance!(inactive_since_selects_live_keys_unused_since_the_cutoff
    => sqlite_inactive_since_selects_live_keys_unused_since_the_cutoff,
       postgres_inactive_since_selects_live_keys_unused_since_the_cutoff);

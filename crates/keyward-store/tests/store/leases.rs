//! Quota leases: each node leases slices of a key's quota (`keys.remaining` is what no node
//! holds), spends from its own lease, and gives it back; a key reads as unleased + leased.
//! Tests that need two nodes open the same database twice: each open is a node with its own
//! `node_id`.

use std::sync::Arc;

use keyward_store::{Change, Store};

use crate::support::*;

/// Two stores on one database: two nodes.
async fn two_nodes(db: &TestDb) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let a = db.store();
    let b = db.reopen().await;
    assert_ne!(a.node_id(), b.node_id(), "each open is a node of its own");
    (a, b)
}

/// A committed key of a new keyspace with this quota.
async fn quota_key(store: &Arc<dyn Store>, prefix: &str, quota: Option<i64>) -> String {
    let ks = new_keyspace(store, prefix).await;
    let mut k = key(&ks, at(0)).key;
    k.remaining = quota;
    insert_keys(store, &[&k]).await;
    k.id
}

async fn lease_quota_grants_at_most_what_is_left(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut limited = key(&ks, at(0)).key;
    limited.remaining = Some(10);
    limited.owner = Some("team".into());
    let unlimited = key(&ks, at(0)).key;
    let mut empty = key(&ks, at(0)).key;
    empty.remaining = Some(0);
    insert_keys(&store, &[&limited, &unlimited, &empty]).await;
    let head = store.change_head().await.unwrap();

    // (granted, unleased quota left)
    assert_eq!(lease(&store, &limited.id, 4, 1).await, Some((4, 6)));
    assert_eq!(
        lease(&store, &limited.id, 10, 2).await,
        Some((6, 0)),
        "only what is left"
    );
    assert_eq!(
        lease(&store, &limited.id, 3, 3).await,
        Some((0, 0)),
        "nothing left"
    );
    assert_eq!(lease(&store, &limited.id, -5, 4).await, Some((0, 0)));
    assert_eq!(
        lease(&store, &unlimited.id, 5, 5).await,
        None,
        "no quota to lease"
    );
    assert_eq!(lease(&store, &empty.id, 1, 6).await, Some((0, 0)));
    assert_eq!(lease(&store, "key_nope", 1, 7).await, None);

    // Leased quota is still the key's: every read counts it.
    assert_eq!(store.key(&limited.id).await.unwrap(), Some(limited.clone()));
    assert_eq!(
        store.key_by_hash(&limited.hash).await.unwrap(),
        Some(limited.clone())
    );
    let listed = store.list_keys(&all_keys(at(10))).await.unwrap();
    assert!(listed.contains(&limited) && listed.contains(&unlimited) && listed.contains(&empty));
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.key(&limited.id).await.unwrap(), Some(limited.clone()));
    assert_eq!(
        tx.live_keys_of_owner("team", None, at(10)).await.unwrap(),
        vec![limited.clone()]
    );
    drop(tx);
    assert_eq!(remaining(&store, &unlimited.id).await, None);
    assert_eq!(remaining(&store, &empty.id).await, Some(0));

    // The node's two grants are one lease of 10: all of it can be given back at once.
    store.return_lease(&limited.id, 10, None).await.unwrap();
    assert_eq!(pool(&store, &limited.id).await, Some(10));
    assert_eq!(remaining(&store, &limited.id).await, Some(10));

    // Leasing is not a key change for the feed.
    assert_eq!(store.change_head().await.unwrap(), head);
}
conformance!(lease_quota_grants_at_most_what_is_left
    => sqlite_lease_quota_grants_at_most_what_is_left,
       postgres_lease_quota_grants_at_most_what_is_left);

async fn two_nodes_leasing_at_once_never_grant_more_than_the_quota(db: &TestDb) {
    const CALLS: i64 = 50;
    const WANT: i64 = 7;
    const QUOTA: i64 = 100;
    let (a, b) = two_nodes(db).await;
    let id = quota_key(&a, "acme", Some(QUOTA)).await;

    let mut handles = Vec::new();
    for i in 0..CALLS {
        let node = (i % 2) as usize;
        let store = if node == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let got = store.lease_quota(&id, WANT, at(i)).await.unwrap();
            let got = got.expect("the key has a quota");
            (node, (got.granted, got.left))
        }));
    }
    let mut per_node = [0_i64; 2];
    let mut grants = Vec::new();
    let mut lefts = Vec::new();
    for h in handles {
        let (node, (granted, left)) = within("a concurrent lease", h).await.unwrap();
        per_node[node] += granted;
        grants.push(granted);
        if granted > 0 {
            lefts.push(left);
        }
    }

    assert_eq!(
        per_node[0] + per_node[1],
        QUOTA,
        "exactly the quota, never more"
    );
    // Each grant saw the one before it: 14 of 7, one of the last 2, then nothing.
    grants.sort_unstable();
    let mut expected = vec![0; 35];
    expected.push(2);
    expected.extend([WANT; 14]);
    assert_eq!(grants, expected);
    lefts.sort_unstable();
    let mut expected: Vec<i64> = (1..=14).map(|n| QUOTA - n * WANT).collect();
    expected.push(0);
    expected.sort_unstable();
    assert_eq!(lefts, expected, "every grant left a different pool");

    // Both nodes read the whole quota; none of it is unleased.
    assert_eq!(remaining(&a, &id).await, Some(QUOTA));
    assert_eq!(remaining(&b, &id).await, Some(QUOTA));
    assert_eq!(pool(&a, &id).await, Some(0));
    assert_eq!(lease(&b, &id, 1, 100).await, Some((0, 0)));

    // Each node holds exactly what it was granted, and gives back only that.
    a.return_lease(&id, per_node[0] + 1, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(0));
    a.return_lease(&id, per_node[0], None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(per_node[0]));
    b.return_lease(&id, per_node[1] + 1, None).await.unwrap();
    assert_eq!(pool(&b, &id).await, Some(per_node[0]));
    b.return_lease(&id, per_node[1], None).await.unwrap();
    assert_eq!(pool(&b, &id).await, Some(QUOTA));
    assert_eq!(remaining(&a, &id).await, Some(QUOTA));
}
conformance!(with_db two_nodes_leasing_at_once_never_grant_more_than_the_quota
    => sqlite_two_nodes_leasing_at_once_never_grant_more_than_the_quota,
       postgres_two_nodes_leasing_at_once_never_grant_more_than_the_quota);

async fn usage_spends_only_the_own_nodes_lease(db: &TestDb) {
    let (a, b) = two_nodes(db).await;
    let id = quota_key(&a, "acme", Some(100)).await;
    assert_eq!(lease(&a, &id, 30, 1).await, Some((30, 70)));
    assert_eq!(lease(&b, &id, 20, 2).await, Some((20, 50)));
    assert_eq!(remaining(&b, &id).await, Some(100));

    a.apply_usage(&[spend(&id, 10, 3)]).await.unwrap();
    b.apply_usage(&[spend(&id, 5, 4)]).await.unwrap();
    // Both nodes see all the spending; the unleased quota did not move.
    for s in [&a, &b] {
        let k = s.key(&id).await.unwrap().unwrap();
        assert_eq!(
            (k.remaining, k.call_count, k.last_used_at),
            (Some(85), 2, Some(at(4)))
        );
    }
    assert_eq!(pool(&a, &id).await, Some(50));

    // a holds 30 - 10, b holds 20 - 5: neither can give back more than its own lease.
    a.return_lease(&id, 21, None).await.unwrap();
    b.return_lease(&id, 16, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(50));
    b.return_lease(&id, 15, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(65));
    a.return_lease(&id, 20, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(85));
    assert_eq!(remaining(&a, &id).await, Some(85));

    // Spending inside a transaction also comes out of that node's lease.
    assert_eq!(lease(&b, &id, 10, 5).await, Some((10, 75)));
    let mut tx = b.begin().await.unwrap();
    tx.apply_usage(&[spend(&id, 4, 6)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(remaining(&a, &id).await, Some(81));
    b.return_lease(&id, 7, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(75));
    b.return_lease(&id, 6, None).await.unwrap();
    assert_eq!(pool(&a, &id).await, Some(81));
}
conformance!(with_db usage_spends_only_the_own_nodes_lease
    => sqlite_usage_spends_only_the_own_nodes_lease,
       postgres_usage_spends_only_the_own_nodes_lease);

async fn return_lease_puts_quota_back_but_never_more_than_is_leased(store: Arc<dyn Store>) {
    let id = quota_key(&store, "acme", Some(50)).await;
    let unlimited = quota_key(&store, "beta", None).await;
    assert_eq!(lease(&store, &id, 20, 1).await, Some((20, 30)));

    store.return_lease(&id, 5, None).await.unwrap();
    assert_eq!(
        (pool(&store, &id).await, remaining(&store, &id).await),
        (Some(35), Some(50))
    );
    // 15 is leased: giving back 16 does nothing at all.
    store.return_lease(&id, 16, None).await.unwrap();
    assert_eq!(
        (pool(&store, &id).await, remaining(&store, &id).await),
        (Some(35), Some(50))
    );
    store.return_lease(&id, 15, None).await.unwrap();
    assert_eq!(
        (pool(&store, &id).await, remaining(&store, &id).await),
        (Some(50), Some(50))
    );
    // The emptied lease is gone (there is nothing left for a sweep to reclaim), and with no
    // lease there is nothing to give back.
    assert_eq!(store.reclaim_stale_leases(at(1_000_000)).await.unwrap(), 0);
    store.return_lease(&id, 1, None).await.unwrap();
    assert_eq!(pool(&store, &id).await, Some(50));

    // What was spent cannot be given back.
    assert_eq!(lease(&store, &id, 10, 2).await, Some((10, 40)));
    store.apply_usage(&[spend(&id, 4, 3)]).await.unwrap();
    store.return_lease(&id, 7, None).await.unwrap();
    assert_eq!(
        (pool(&store, &id).await, remaining(&store, &id).await),
        (Some(40), Some(46))
    );
    store.return_lease(&id, 6, None).await.unwrap();
    assert_eq!(
        (pool(&store, &id).await, remaining(&store, &id).await),
        (Some(46), Some(46))
    );

    // Keys without a quota, or unknown, have nothing to give back.
    store.return_lease(&unlimited, 3, None).await.unwrap();
    assert_eq!(remaining(&store, &unlimited).await, None);
    store.return_lease("key_nope", 3, None).await.unwrap();
}
conformance!(return_lease_puts_quota_back_but_never_more_than_is_leased
    => sqlite_return_lease_puts_quota_back_but_never_more_than_is_leased,
       postgres_return_lease_puts_quota_back_but_never_more_than_is_leased);

async fn reclaim_stale_leases_returns_leases_not_touched_since(db: &TestDb) {
    let (a, b) = two_nodes(db).await;
    let k1 = quota_key(&a, "one", Some(100)).await;
    let k2 = quota_key(&a, "two", Some(10)).await;
    let k3 = quota_key(&a, "three", Some(50)).await;
    assert_eq!(lease(&a, &k1, 30, 10).await, Some((30, 70)));
    assert_eq!(lease(&b, &k1, 20, 100).await, Some((20, 50)));
    assert_eq!(lease(&a, &k2, 10, 20).await, Some((10, 0)));
    assert_eq!(lease(&a, &k3, 5, 10).await, Some((5, 45)));
    // Spending touches a lease.
    a.apply_usage(&[spend(&k3, 1, 80)]).await.unwrap();

    // a's leases of k1 and k2 (10 s, 20 s) are stale at 50 s; b's (100 s) and the spent-from
    // one (80 s) are not.
    assert_eq!(b.reclaim_stale_leases(at(50)).await.unwrap(), 2);
    assert_eq!(
        (pool(&a, &k1).await, remaining(&a, &k1).await),
        (Some(80), Some(100))
    );
    assert_eq!(
        (pool(&a, &k2).await, remaining(&a, &k2).await),
        (Some(10), Some(10))
    );
    assert_eq!(
        (pool(&a, &k3).await, remaining(&a, &k3).await),
        (Some(45), Some(49))
    );
    assert_eq!(b.reclaim_stale_leases(at(50)).await.unwrap(), 0, "once");
    // The reclaimed quota can be leased by another node (here at 900 s, so that b keeps it
    // until the last sweep below); a's reclaimed lease is gone.
    assert_eq!(lease(&b, &k2, 10, 900).await, Some((10, 0)));
    a.return_lease(&k1, 1, None).await.unwrap();
    assert_eq!(pool(&a, &k1).await, Some(80));
    // What was not reclaimed is still its node's.
    b.return_lease(&k1, 20, None).await.unwrap();
    assert_eq!(pool(&a, &k1).await, Some(100));

    // Strictly older: a lease touched at the instant itself stays.
    assert_eq!(a.reclaim_stale_leases(at(80)).await.unwrap(), 0);
    assert_eq!(a.reclaim_stale_leases(at(81)).await.unwrap(), 1);
    assert_eq!(
        (pool(&a, &k3).await, remaining(&a, &k3).await),
        (Some(49), Some(49))
    );

    // Leasing more touches the lease too.
    assert_eq!(lease(&a, &k1, 10, 200).await, Some((10, 90)));
    assert_eq!(lease(&a, &k1, 5, 300).await, Some((5, 85)));
    assert_eq!(a.reclaim_stale_leases(at(250)).await.unwrap(), 0);
    assert_eq!(a.reclaim_stale_leases(at(301)).await.unwrap(), 1);
    assert_eq!(pool(&a, &k1).await, Some(100));

    // A lease spent to nothing is deleted without changing the quota.
    assert_eq!(lease(&a, &k3, 4, 400).await, Some((4, 45)));
    a.apply_usage(&[spend(&k3, 4, 401)]).await.unwrap();
    assert_eq!(remaining(&a, &k3).await, Some(45));
    assert_eq!(a.reclaim_stale_leases(at(500)).await.unwrap(), 1);
    assert_eq!(
        (pool(&a, &k3).await, remaining(&a, &k3).await),
        (Some(45), Some(45))
    );
    // b's lease of k2 is the only one left.
    assert_eq!(a.reclaim_stale_leases(at(1_000)).await.unwrap(), 1);
    assert_eq!(
        (pool(&a, &k2).await, remaining(&a, &k2).await),
        (Some(10), Some(10))
    );
}
conformance!(with_db reclaim_stale_leases_returns_leases_not_touched_since
    => sqlite_reclaim_stale_leases_returns_leases_not_touched_since,
       postgres_reclaim_stale_leases_returns_leases_not_touched_since);

async fn set_remaining_voids_every_lease_and_feeds_a_quota_change(db: &TestDb) {
    let (a, b) = two_nodes(db).await;
    let ks = new_keyspace(&a, "acme").await;
    let mut k = key(&ks, at(0)).key;
    k.remaining = Some(100);
    insert_keys(&a, &[&k]).await;
    assert_eq!(lease(&a, &k.id, 30, 1).await, Some((30, 70)));
    assert_eq!(lease(&b, &k.id, 20, 2).await, Some((20, 50)));
    let head = a.change_head().await.unwrap();
    assert!(
        !a.changes_after(0, 10).await.unwrap()[0].quota,
        "an insert is no quota change"
    );

    // Rolled back: the leases stand and nothing is fed.
    let mut tx = a.begin().await.unwrap();
    tx.set_remaining(&k.id, Some(70)).await.unwrap();
    assert_eq!(tx.key(&k.id).await.unwrap().unwrap().remaining, Some(70));
    drop(tx);
    assert_eq!(
        (pool(&a, &k.id).await, remaining(&a, &k.id).await),
        (Some(50), Some(100))
    );
    assert_eq!(a.change_head().await.unwrap(), head);

    let mut tx = a.begin().await.unwrap();
    tx.set_remaining(&k.id, Some(70)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (pool(&b, &k.id).await, remaining(&b, &k.id).await),
        (Some(70), Some(70))
    );
    // (PostgreSQL's sequence may skip the number the rolled-back row took: only order counts.)
    let fed = b.changes_after(head, 10).await.unwrap();
    let set_seq = fed.first().map_or(0, |c| c.seq);
    assert!(set_seq > head);
    assert_eq!(
        fed,
        vec![Change {
            seq: set_seq,
            key_id: k.id.clone(),
            key_hash: k.hash,
            origin: a.node_id().to_string(),
            quota: true,
            keyspace: false,
        }]
    );

    // The old leases are void: nothing to give back, and spending from them does not come out
    // of the new quota.
    a.return_lease(&k.id, 30, None).await.unwrap();
    b.return_lease(&k.id, 20, None).await.unwrap();
    b.apply_usage(&[spend(&k.id, 5, 3)]).await.unwrap();
    let read = a.key(&k.id).await.unwrap().unwrap();
    assert_eq!((read.remaining, read.call_count), (Some(70), 1));
    assert_eq!(pool(&a, &k.id).await, Some(70));
    assert_eq!(lease(&b, &k.id, 10, 4).await, Some((10, 60)), "leased anew");

    // Cleared by the other node: again void leases and a quota change, from b.
    let mut tx = b.begin().await.unwrap();
    tx.set_remaining(&k.id, None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(remaining(&a, &k.id).await, None);
    assert_eq!(lease(&b, &k.id, 1, 5).await, None);
    b.return_lease(&k.id, 10, None).await.unwrap();
    assert_eq!(remaining(&a, &k.id).await, None);
    assert_eq!(
        a.reclaim_stale_leases(at(1_000)).await.unwrap(),
        0,
        "no lease left"
    );

    // A plain update is a change, but not a quota change.
    let mut renamed = a.key(&k.id).await.unwrap().unwrap();
    renamed.name = "renamed".into();
    renamed.updated_at = at(6);
    update_key(&a, &renamed).await;
    let feed = a.changes_after(set_seq, 10).await.unwrap();
    let quota: Vec<(&str, bool)> = feed.iter().map(|c| (c.origin.as_str(), c.quota)).collect();
    assert_eq!(quota, vec![(b.node_id(), true), (a.node_id(), false)]);
    assert!(feed
        .iter()
        .all(|c| c.key_id == k.id && c.key_hash == k.hash));
}
conformance!(with_db set_remaining_voids_every_lease_and_feeds_a_quota_change
    => sqlite_set_remaining_voids_every_lease_and_feeds_a_quota_change,
       postgres_set_remaining_voids_every_lease_and_feeds_a_quota_change);

/// A quota with a refill: the first lease of a new period refills it (`remaining` = amount)
/// and voids every lease of the old period, whose units a node can then neither give back nor
/// spend into the new period; each grant says when its period ends.
async fn the_first_lease_of_a_period_refills_the_quota_and_voids_older_leases(db: &TestDb) {
    use keyward_core::limits::{Interval, Refill};
    let (a, b) = two_nodes(db).await;
    let ks = new_keyspace(&a, "acme").await;
    let mut k = key(&ks, at(0)).key;
    k.remaining = Some(10);
    k.refill = Some(Refill {
        amount: 10,
        interval: Interval::Secs(100),
    });
    k.refill_anchor = Some(at(0));
    k.refilled_at = Some(at(0));
    insert_keys(&a, &[&k]).await;

    let first = a.lease_quota(&k.id, 4, at(10)).await.unwrap().unwrap();
    assert_eq!(
        (first.granted, first.left, first.until),
        (4, 6, Some(at(100)))
    );
    let second = b.lease_quota(&k.id, 6, at(20)).await.unwrap().unwrap();
    assert_eq!((second.granted, second.left), (6, 0));
    assert_eq!(
        remaining(&a, &k.id).await,
        Some(10),
        "read: unleased plus leases"
    );

    // The next period: refilled to the amount, the old leases void.
    let head = a.change_head().await.unwrap();
    let next = b.lease_quota(&k.id, 3, at(150)).await.unwrap().unwrap();
    assert_eq!((next.granted, next.left, next.until), (3, 7, Some(at(200))));
    assert_eq!(
        remaining(&a, &k.id).await,
        Some(10),
        "A's old lease is gone"
    );
    let feed = a.changes_after(head, 10).await.unwrap();
    assert!(
        !feed.iter().any(|c| c.key_id == k.id && c.quota),
        "no quota row: nodes end their leases at the period's end, and one would void the new"
    );
    // A's old lease given back is void; B's current one is not.
    a.return_lease(&k.id, 4, Some(at(100))).await.unwrap();
    assert_eq!(remaining(&a, &k.id).await, Some(10));
    assert_eq!(pool(&a, &k.id).await, Some(7));
    b.return_lease(&k.id, 3, Some(at(200))).await.unwrap();
    assert_eq!(pool(&a, &k.id).await, Some(10));
    // A node whose clock lags gets the current period's units, and its end.
    let late = a.lease_quota(&k.id, 2, at(140)).await.unwrap().unwrap();
    assert_eq!((late.granted, late.until), (2, Some(at(200))));
}
conformance!(with_db the_first_lease_of_a_period_refills_the_quota_and_voids_older_leases
    => sqlite_the_first_lease_of_a_period_refills_the_quota_and_voids_older_leases,
       postgres_the_first_lease_of_a_period_refills_the_quota_and_voids_older_leases);

/// An identity's quota is leased as a key's is (under `@` and its id), read as unleased plus
/// leases, refilled by the first lease of a period, and voided when set anew.
async fn an_identitys_quota_is_leased_refilled_and_set_anew(db: &TestDb) {
    use keyward_core::limits::{Interval, Refill};
    use keyward_core::model::Identity;
    let (a, b) = two_nodes(db).await;
    let mut identity = Identity {
        id: "acme".into(),
        name: "Acme".into(),
        meta: serde_json::Map::new(),
        enabled: true,
        ratelimits: Vec::new(),
        remaining: Some(10),
        refill: Some(Refill {
            amount: 10,
            interval: Interval::Secs(100),
        }),
        refill_anchor: Some(at(0)),
        refilled_at: Some(at(0)),
        quota_version: 0,
        created_at: at(0),
        created_by: token_actor("tok_a"),
        updated_at: at(0),
    };
    let mut tx = a.begin().await.unwrap();
    tx.insert_identity(&identity).await.unwrap();
    tx.commit().await.unwrap();
    let read = |s: Arc<dyn Store>| async move { s.identity("acme", None).await.unwrap().unwrap() };

    let l = a.lease_quota("@acme", 4, at(10)).await.unwrap().unwrap();
    assert_eq!((l.granted, l.left, l.until), (4, 6, Some(at(100))));
    b.lease_quota("@acme", 3, at(11)).await.unwrap();
    assert_eq!(
        read(a.clone()).await.remaining,
        Some(10),
        "unleased plus leases"
    );
    // A key of the owner reads the quota's version.
    let ks = new_keyspace(&a, "acme").await;
    let mut k = key(&ks, at(0)).key;
    k.owner = Some("acme".into());
    insert_keys(&a, &[&k]).await;
    assert_eq!(
        a.key(&k.id).await.unwrap().unwrap().owner_quota_version,
        Some(0)
    );

    // The next period refills it; setting it anew voids every lease and bumps the version.
    let l = b.lease_quota("@acme", 2, at(120)).await.unwrap().unwrap();
    assert_eq!((l.granted, l.left), (2, 8));
    identity.remaining = Some(50);
    identity.refilled_at = Some(at(100));
    let mut tx = a.begin().await.unwrap();
    tx.set_identity_quota(&identity).await.unwrap();
    tx.commit().await.unwrap();
    let got = read(a.clone()).await;
    assert_eq!((got.remaining, got.quota_version), (Some(50), 1));
    assert_eq!(
        a.key(&k.id).await.unwrap().unwrap().owner_quota_version,
        Some(1)
    );
    // Usage spends from the node's lease, and writes no counters for the identity.
    let l = a.lease_quota("@acme", 5, at(130)).await.unwrap().unwrap();
    assert_eq!(l.granted, 5);
    a.apply_usage(&[keyward_store::UsageDelta {
        key_id: "@acme".into(),
        calls: 0,
        denied: 0,
        last_used_at: None,
        consumed: 5,
        buckets: Vec::new(),
        sources: Vec::new(),
    }])
    .await
    .unwrap();
    assert_eq!(read(a.clone()).await.remaining, Some(45));
    identity.remaining = None;
    identity.refill = None;
    let mut tx = a.begin().await.unwrap();
    tx.set_identity_quota(&identity).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        a.key(&k.id).await.unwrap().unwrap().owner_quota_version,
        None
    );
    assert_eq!(a.lease_quota("@acme", 1, at(140)).await.unwrap(), None);
}
conformance!(with_db an_identitys_quota_is_leased_refilled_and_set_anew
    => sqlite_an_identitys_quota_is_leased_refilled_and_set_anew,
       postgres_an_identitys_quota_is_leased_refilled_and_set_anew);

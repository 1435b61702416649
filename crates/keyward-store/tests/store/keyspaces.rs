//! Keyspaces.

use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::policy::Preset;
use keyward_core::routes::{RouteRule, Unmatched};
use keyward_store::{Page, Store, StoreError};

use crate::support::*;

async fn a_keyspace_round_trips_and_updates(store: Arc<dyn Store>) {
    let mut ks = keyspace("acme_live");
    ks.policy = Preset::Relaxed.policy();
    ks.policy.max_keys_per_owner = Some(3);

    let mut tx = store.begin().await.unwrap();
    tx.insert_keyspace(&ks).await.unwrap();
    assert_eq!(
        tx.keyspace(&ks.id).await.unwrap(),
        Some(ks.clone()),
        "visible inside its transaction"
    );
    tx.commit().await.unwrap();
    assert_eq!(store.keyspace(&ks.id).await.unwrap(), Some(ks.clone()));

    let mut changed = ks.clone();
    changed.name = "Orders API, production".into();
    changed.policy = Preset::Strict.policy();
    changed.policy.max_grace_secs = None;
    changed.updated_at = at(99);
    changed.routes = vec![
        RouteRule {
            method: Some("GET".into()),
            path: "/orders/**".into(),
            scopes: vec!["orders:read".into()],
        },
        RouteRule {
            method: None,
            path: "/health".into(),
            scopes: vec![],
        },
    ];
    changed.unmatched = Unmatched::Deny;
    let head = store.change_head().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.update_keyspace(&changed).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.keyspace(&ks.id).await.unwrap(), Some(changed));
    // The update is on the change feed, as a keyspace row, for the other nodes.
    let rows = store.changes_after(head, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].keyspace);
    assert_eq!(rows[0].key_id, ks.id);
    assert_eq!(rows[0].origin, store.node_id());
}
conformance!(a_keyspace_round_trips_and_updates
    => sqlite_a_keyspace_round_trips_and_updates, postgres_a_keyspace_round_trips_and_updates);

async fn a_second_keyspace_with_the_same_prefix_is_a_conflict(store: Arc<dyn Store>) {
    let first = new_keyspace(&store, "acme").await;

    let mut dup = keyspace("acme");
    dup.name = "another".into();
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert_keyspace(&dup).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);

    // The same id is a conflict too.
    let mut same_id = keyspace("other");
    same_id.id = first.id.clone();
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert_keyspace(&same_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);

    assert_eq!(store.keyspace(&dup.id).await.unwrap(), None);
    let all = store
        .list_keyspaces(
            None,
            &Page {
                limit: 50,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(all, vec![first]);
    // A prefix that only starts like the first is fine.
    new_keyspace(&store, "acme_live").await;
}
conformance!(a_second_keyspace_with_the_same_prefix_is_a_conflict
    => sqlite_a_second_keyspace_with_the_same_prefix_is_a_conflict,
       postgres_a_second_keyspace_with_the_same_prefix_is_a_conflict);

async fn keyspaces_list_newest_first_in_pages_and_by_id(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    for i in 0..7 {
        let mut ks = keyspace(&format!("ks{i}"));
        let created = at(i64::from(i / 3)); // ties on created_at, broken by id
        ks.id = new_id("ks", created);
        ks.created_at = created;
        ks.updated_at = created;
        insert_keyspace(&store, &ks).await;
        all.push(ks);
    }
    all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut seen = Vec::new();
    let mut page = Page {
        limit: 3,
        after: None,
    };
    loop {
        let got = store.list_keyspaces(None, &page).await.unwrap();
        assert!(got.len() <= 3);
        let Some(last) = got.last() else { break };
        page.after = Some((last.created_at.millis(), last.id.clone()));
        seen.extend(got);
    }
    assert_eq!(seen, all);

    let wanted = vec![all[1].id.clone(), all[4].id.clone()];
    let got = store
        .list_keyspaces(
            Some(wanted.as_slice()),
            &Page {
                limit: 50,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(got, vec![all[1].clone(), all[4].clone()]);
    let none = store
        .list_keyspaces(
            Some(&[][..]),
            &Page {
                limit: 50,
                after: None,
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}
conformance!(keyspaces_list_newest_first_in_pages_and_by_id
    => sqlite_keyspaces_list_newest_first_in_pages_and_by_id,
       postgres_keyspaces_list_newest_first_in_pages_and_by_id);

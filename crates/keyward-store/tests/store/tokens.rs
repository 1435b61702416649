//! Management tokens.

use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::keyformat::KeyHash;
use keyward_core::model::{Actor, Role, Token};
use keyward_store::{Page, Store, StoreError};

use crate::support::*;

async fn insert_token(store: &Arc<dyn Store>, t: &Token, hash: &KeyHash) {
    let mut tx = store.begin().await.unwrap();
    tx.insert_token(t, hash).await.unwrap();
    tx.commit().await.unwrap();
}

async fn a_token_round_trips_by_id_and_by_hash(store: Arc<dyn Store>) {
    let ks1 = new_keyspace(&store, "one").await;
    let ks2 = new_keyspace(&store, "two").await;
    let (mut limited, limited_hash) = token(at(1));
    limited.name = "orders \"deployer\" ✓".into();
    limited.role = Role::Verifier;
    limited.keyspace_ids = Some(vec![ks1.id.clone(), ks2.id.clone()]);
    limited.created_by = user_actor();
    limited.expires_at = Some(at(86_400));
    limited.last_used_at = Some(at(2));
    let (bare, bare_hash) = token(at(3));
    let (mut empty_limit, empty_hash) = token(at(4));
    empty_limit.keyspace_ids = Some(vec![]);
    empty_limit.role = Role::Auditor;

    let mut tx = store.begin().await.unwrap();
    tx.insert_token(&limited, &limited_hash).await.unwrap();
    assert_eq!(
        tx.token(&limited.id).await.unwrap(),
        Some(limited.clone()),
        "visible inside its transaction"
    );
    tx.insert_token(&bare, &bare_hash).await.unwrap();
    tx.insert_token(&empty_limit, &empty_hash).await.unwrap();
    tx.commit().await.unwrap();

    for (t, h) in [
        (&limited, &limited_hash),
        (&bare, &bare_hash),
        (&empty_limit, &empty_hash),
    ] {
        assert_eq!(store.token(&t.id).await.unwrap().as_ref(), Some(t));
        assert_eq!(store.token_by_hash(h).await.unwrap().as_ref(), Some(t));
    }
    // `Some([])` (sees no keyspace) and `None` (sees all) stay different.
    assert_eq!(
        store
            .token(&empty_limit.id)
            .await
            .unwrap()
            .unwrap()
            .keyspace_ids,
        Some(vec![])
    );
    assert_eq!(
        store.token(&bare.id).await.unwrap().unwrap().keyspace_ids,
        None
    );
    // A token's hash finds no key, and an unknown hash no token.
    assert_eq!(store.key_by_hash(&limited_hash).await.unwrap(), None);
    assert_eq!(
        store
            .token_by_hash(&KeyHash::of("kwt_other"))
            .await
            .unwrap(),
        None
    );
}
conformance!(a_token_round_trips_by_id_and_by_hash
    => sqlite_a_token_round_trips_by_id_and_by_hash, postgres_a_token_round_trips_by_id_and_by_hash);

async fn update_token_persists_name_and_revocation_and_touch_records_use(store: Arc<dyn Store>) {
    let (t, hash) = token(at(1));
    insert_token(&store, &t, &hash).await;

    let mut revoked = t.clone();
    revoked.name = "renamed".into();
    revoked.revoked_at = Some(at(50));
    revoked.revoked_by = Some(Actor::cli("ops"));
    revoked.revoked_reason = Some("rotated out".into());
    let mut tx = store.begin().await.unwrap();
    tx.update_token(&revoked).await.unwrap();
    assert_eq!(tx.token(&t.id).await.unwrap(), Some(revoked.clone()));
    tx.commit().await.unwrap();
    assert_eq!(store.token(&t.id).await.unwrap(), Some(revoked.clone()));
    assert_eq!(
        store.token_by_hash(&hash).await.unwrap(),
        Some(revoked.clone())
    );

    store.touch_token(&t.id, at(60)).await.unwrap();
    let touched = store.token(&t.id).await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(at(60)));
    store
        .touch_token(&t.id, at(61).plus_millis(5))
        .await
        .unwrap();
    assert_eq!(
        store.token(&t.id).await.unwrap().unwrap().last_used_at,
        Some(at(61).plus_millis(5))
    );
    store.touch_token("tok_unknown", at(62)).await.unwrap();

    // An update does not lose the recorded use.
    let mut renamed = revoked.clone();
    renamed.name = "renamed again".into();
    let mut tx = store.begin().await.unwrap();
    tx.update_token(&renamed).await.unwrap();
    tx.commit().await.unwrap();
    let read = store.token(&t.id).await.unwrap().unwrap();
    assert_eq!(read.name, "renamed again");
    assert_eq!(read.last_used_at, Some(at(61).plus_millis(5)));
    assert_eq!(read.revoked_reason.as_deref(), Some("rotated out"));
}
conformance!(update_token_persists_name_and_revocation_and_touch_records_use
    => sqlite_update_token_persists_name_and_revocation_and_touch_records_use,
       postgres_update_token_persists_name_and_revocation_and_touch_records_use);

async fn a_second_token_with_the_same_hash_is_a_conflict(store: Arc<dyn Store>) {
    let (t, hash) = token(at(1));
    insert_token(&store, &t, &hash).await;
    let (other, _) = token(at(2));
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert_token(&other, &hash).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
    drop(tx);
    assert_eq!(store.token(&other.id).await.unwrap(), None);
    assert_eq!(store.token_by_hash(&hash).await.unwrap(), Some(t));
}
conformance!(a_second_token_with_the_same_hash_is_a_conflict
    => sqlite_a_second_token_with_the_same_hash_is_a_conflict,
       postgres_a_second_token_with_the_same_hash_is_a_conflict);

async fn tokens_list_newest_first_in_pages(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    for i in 0..9 {
        let created = at(i / 4);
        let (mut t, h) = token(created);
        t.id = new_id("tok", created);
        insert_token(&store, &t, &h).await;
        all.push(t);
    }
    all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut seen = Vec::new();
    let mut page = Page {
        limit: 2,
        after: None,
    };
    loop {
        let got = store.list_tokens(&page).await.unwrap();
        assert!(got.len() <= 2);
        let Some(last) = got.last() else { break };
        page.after = Some((last.created_at.millis(), last.id.clone()));
        seen.extend(got);
    }
    assert_eq!(seen, all);
}
conformance!(tokens_list_newest_first_in_pages
    => sqlite_tokens_list_newest_first_in_pages, postgres_tokens_list_newest_first_in_pages);

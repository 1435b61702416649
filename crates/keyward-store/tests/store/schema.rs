//! Opening a database, migrations.

use std::sync::Arc;

use keyward_store::Store;

use crate::support::*;

async fn migrations_are_idempotent_and_keep_the_data(db: &TestDb) {
    let store = db.store();
    store.ping().await.unwrap();
    assert_eq!(store.backend(), db.backend_name());

    let ks = new_keyspace(&store, "acme").await;
    let k = key(&ks, at(1));
    insert_keys(&store, &[&k.key]).await;
    let first = append(
        &store,
        event("key.create", &k.key.id, at(1), token_actor("tok_a")),
    )
    .await;

    // Opening the same database again runs the migrations again: they must skip what is done
    // and leave every row in place.
    let again = db.reopen().await;
    again.ping().await.unwrap();
    assert_eq!(again.keyspace(&ks.id).await.unwrap(), Some(ks.clone()));
    assert_eq!(
        again.key_by_hash(&k.key.hash).await.unwrap(),
        Some(k.key.clone())
    );
    assert_eq!(again.change_head().await.unwrap(), 1);

    // The chain goes on where it was, whichever handle writes.
    let second = append(
        &again,
        event("key.update", &k.key.id, at(2), token_actor("tok_a")),
    )
    .await;
    assert_eq!(second.seq, 2);
    assert_eq!(second.prev_hash, first.hash);

    let third_open = db.reopen().await;
    assert_eq!(all_events(&third_open).await, vec![first, second]);
    assert_eq!(all_events(&store).await.len(), 2);
}
conformance!(with_db migrations_are_idempotent_and_keep_the_data
    => sqlite_migrations_are_idempotent_and_keep_the_data, postgres_migrations_are_idempotent_and_keep_the_data);

async fn nodes_opening_one_new_database_at_once_all_migrate_it(db: &TestDb) {
    // Several nodes (or a node and the CLI) starting together on an empty database. (The
    // opening futures are not `Send`, so they run side by side on this task.)
    let o = db.opener();
    let opened = tokio::join!(o.open(), o.open(), o.open(), o.open());
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for r in [opened.0, opened.1, opened.2, opened.3] {
        match r {
            Ok(s) => stores.push(s),
            Err(e) => panic!("a concurrent open failed: {e}"),
        }
    }
    let ks = new_keyspace(&stores[0], "acme").await;
    for s in &stores {
        assert_eq!(s.keyspace(&ks.id).await.unwrap(), Some(ks.clone()));
    }
}
conformance!(unopened nodes_opening_one_new_database_at_once_all_migrate_it
    => sqlite_nodes_opening_one_new_database_at_once_all_migrate_it,
       postgres_nodes_opening_one_new_database_at_once_all_migrate_it);

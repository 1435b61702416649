//! Opening a database, migrations.

use std::sync::Arc;

use keyward_core::time::Timestamp;
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

/// A database written by the version before the usage roll-up (migrations 1-4, counters in
/// `keys`, every bucket size written by the flush) keeps its counts when the new version opens
/// it: nothing lost, nothing doubled.
async fn a_version_4_database_keeps_its_counts_and_buckets(db: &TestDb) {
    macro_rules! both {
        ($f:literal) => {
            (
                include_str!(concat!("../../migrations/sqlite/", $f)),
                include_str!(concat!("../../migrations/postgres/", $f)),
            )
        };
    }
    let actor = serde_json::to_string(&keyward_core::model::Actor::system()).unwrap();
    let (minute, hour, day) = (T0 + 60_000, T0, T0 - T0.rem_euclid(86_400_000));
    // 32-byte digests, each backend's way of writing bytes.
    let bytes = |b: u8| {
        let hex = format!("{b:02x}").repeat(32);
        match db.backend_name() {
            "sqlite" => format!("X'{hex}'"),
            _ => format!("'\\x{hex}'::bytea"),
        }
    };
    let (hash1, hash2) = (bytes(1), bytes(2));
    db.execute_raw(
        &[
            both!("0001_init.sql"),
            both!("0002_lifecycle_usage.sql"),
            both!("0003_users.sql"),
            both!("0004_quota_leases.sql"),
        ],
        &format!(
            "CREATE TABLE keyward_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO keyward_migrations VALUES (1, 0), (2, 0), (3, 0), (4, 0);
             INSERT INTO keyspaces (id, name, prefix, policy, created_at, updated_at)
                 VALUES ('ks_old', 'old', 'old', '{{}}', 0, 0);
             INSERT INTO keys (id, keyspace_id, name, scopes, labels, meta, hash, start_chars,
                 end_chars, enabled, created_at, created_by, updated_at, last_used_at, call_count,
                 denied_count)
                 VALUES ('key_old', 'ks_old', 'old', '[]', '{{}}', '{{}}', {hash1}, 'old_', 'x', TRUE,
                 0, '{actor}', 0, {minute}, 7, 2);
             INSERT INTO keys (id, keyspace_id, name, scopes, labels, meta, hash, start_chars,
                 end_chars, enabled, created_at, created_by, updated_at)
                 VALUES ('key_unused', 'ks_old', 'unused', '[]', '{{}}', '{{}}', {hash2}, 'old_', 'y',
                 TRUE, 0, '{actor}', 0);
             INSERT INTO usage_buckets (key_id, granularity, start_at, code, n) VALUES
                 ('key_old', 'm', {minute}, 'VALID', 7), ('key_old', 'h', {hour}, 'VALID', 7),
                 ('key_old', 'd', {day}, 'VALID', 7), ('key_old', 'm', {minute}, 'REVOKED', 2),
                 ('key_old', 'h', {hour}, 'REVOKED', 2), ('key_old', 'd', {day}, 'REVOKED', 2);"
        ),
    )
    .await;
    let store = db.reopen().await;
    let k = store.key("key_old").await.unwrap().expect("the old key");
    assert_eq!(
        (k.call_count, k.denied_count, k.last_used_at),
        (7, 2, Some(Timestamp::from_millis(minute)))
    );
    let u = store
        .key("key_unused")
        .await
        .unwrap()
        .expect("the unused key");
    assert_eq!((u.call_count, u.denied_count, u.last_used_at), (0, 0, None));
    assert_eq!(
        (
            usage_total(&store, "m", T0 + 86_400_000).await,
            usage_total(&store, "h", T0 + 86_400_000).await,
            usage_total(&store, "d", T0 + 86_400_000).await
        ),
        (9, 9, 9)
    );
    // The migrated minutes are already in their hours and days.
    assert_eq!(rollup_all(&store).await, 0);
    // New counts add to the old ones, once.
    store
        .apply_usage(&[keyward_store::UsageDelta {
            key_id: "key_old".into(),
            calls: 1,
            last_used_at: Some(Timestamp::from_millis(minute + 1)),
            buckets: vec![(minute, "VALID".into(), 1)],
            ..keyward_store::UsageDelta::default()
        }])
        .await
        .unwrap();
    assert_eq!(rollup_all(&store).await, 1);
    assert_eq!(
        (
            usage_total(&store, "m", T0 + 86_400_000).await,
            usage_total(&store, "h", T0 + 86_400_000).await,
            usage_total(&store, "d", T0 + 86_400_000).await
        ),
        (10, 10, 10)
    );
    let k = store.key("key_old").await.unwrap().unwrap();
    assert_eq!(
        (k.call_count, k.last_used_at),
        (8, Some(Timestamp::from_millis(minute + 1)))
    );
}
conformance!(unopened a_version_4_database_keeps_its_counts_and_buckets
    => sqlite_a_version_4_database_keeps_its_counts_and_buckets,
       postgres_a_version_4_database_keeps_its_counts_and_buckets);

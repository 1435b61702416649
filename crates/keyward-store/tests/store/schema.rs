//! Opening a database, migrations.

use std::sync::Arc;

use keyward_core::time::Timestamp;
use keyward_store::{AuditFilter, Store};

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
    as_left_by_release(
        db,
        4,
        &format!(
            "INSERT INTO keyspaces (id, name, prefix, policy, created_at, updated_at)
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
            buckets: vec![keyward_store::MinuteCount {
                minute_ms: minute,
                code: "VALID".into(),
                n: 1,
            }],
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

/// Each migration's SQL, SQLite's and PostgreSQL's, in order: a database as an older release
/// left it is made of the first few.
macro_rules! migration_files {
    ($($f:literal),*) => {
        [$((
            include_str!(concat!("../../migrations/sqlite/", $f)),
            include_str!(concat!("../../migrations/postgres/", $f)),
        )),*]
    };
}
const MIGRATION_FILES: [(&str, &str); 17] = migration_files!(
    "0001_init.sql",
    "0002_lifecycle_usage.sql",
    "0003_users.sql",
    "0004_quota_leases.sql",
    "0005_usage_rollup.sql",
    "0006_key_counters.sql",
    "0007_route_rules.sql",
    "0008_key_imports.sql",
    "0009_identities.sql",
    "0010_limits_refills.sql",
    "0011_lock_tag_feed_notify.sql",
    "0012_key_list_indexes.sql",
    "0013_usage_pipeline.sql",
    "0014_counter_fillfactor.sql",
    "0015_feed_notify_origin.sql",
    "0016_usage_dirty.sql",
    "0017_audit_seq_rowid.sql"
);

/// Makes `db` a database as the release with migrations 1 to `version` left it (recorded in
/// `keyward_migrations`, as releases before the checksummed migrator did), then runs `rows`.
async fn as_left_by_release(db: &TestDb, version: usize, rows: &str) {
    let versions: Vec<String> = (1..=version).map(|v| format!("({v}, 0)")).collect();
    db.execute_raw(
        &MIGRATION_FILES[..version],
        &format!(
            "CREATE TABLE keyward_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO keyward_migrations VALUES {};
             {rows}",
            versions.join(", ")
        ),
    )
    .await;
}

/// Minute buckets not rolled up yet when migration 16 (PostgreSQL's index of them by a generated
/// column) is applied are still rolled up once, and read in hours meanwhile; rolled ones are not
/// rolled again.
async fn minutes_not_rolled_up_before_migration_16_are_rolled_up_after_it(db: &TestDb) {
    let (rolled, unrolled, hour) = (T0 + 60_000, T0 + 120_000, T0);
    // Recorded as the release before the checksummed migrator did: carried over, then 16 runs.
    as_left_by_release(
        db,
        15,
        &format!(
            "INSERT INTO usage_buckets (key_id, granularity, start_at, code, n, rolled) VALUES
                 ('key_a', 'm', {rolled}, 'VALID', 3, 3), ('key_a', 'h', {hour}, 'VALID', 3, 0),
                 ('key_a', 'm', {unrolled}, 'VALID', 5, 0), ('key_b', 'm', {unrolled}, 'VALID', 2, 1),
                 ('key_b', 'h', {hour}, 'VALID', 1, 0);"
        ),
    )
    .await;
    let store = db.reopen().await;
    let end = T0 + 86_400_000;
    assert_eq!(
        (
            usage_total(&store, "m", end).await,
            usage_total(&store, "h", end).await
        ),
        (10, 10)
    );
    // Exactly the two minutes with counts not rolled up, once.
    assert_eq!(rollup_all(&store).await, 2);
    assert_eq!(rollup_all(&store).await, 0);
    store
        .prune_usage(
            keyward_core::kinds::Granularity::Minute,
            Timestamp::from_millis(end),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            usage_total(&store, "m", end).await,
            usage_total(&store, "h", end).await,
            usage_total(&store, "d", end).await
        ),
        (0, 10, 6)
    );
}
conformance!(unopened minutes_not_rolled_up_before_migration_16_are_rolled_up_after_it
    => sqlite_minutes_not_rolled_up_before_migration_16_are_rolled_up_after_it,
       postgres_minutes_not_rolled_up_before_migration_16_are_rolled_up_after_it);

/// Audit events written before migration 17 (SQLite's trail copied into a table whose `seq` is
/// the row id) read back exactly after it, through every index, and the next event chains to
/// the last of them.
async fn audit_events_written_before_migration_17_read_back_the_same_after_it(db: &TestDb) {
    let hash = |c: char| c.to_string().repeat(64);
    let (genesis, h1, h2, h3) = (hash('0'), hash('a'), hash('b'), hash('c'));
    as_left_by_release(
        db,
        16,
        &format!(
            "INSERT INTO audit_events (seq, id, at, actor_type, actor_id, actor_name, action,
                 target_type, target_id, reason, request_id, ip, changes, prev_hash, hash) VALUES
                 (1, 'evt_1', {T0}, 'token', 'tok_a', 'ci', 'key.create', 'key', 'key_a', NULL,
                  'req-1', '203.0.113.9', '{{\"name\":[null,\"a é\"]}}', '{genesis}', '{h1}'),
                 (2, 'evt_2', {}, 'user', 'usr_1', 'Ann', 'key.revoke', 'key', 'key_a', 'left',
                  NULL, NULL, '{{}}', '{h1}', '{h2}'),
                 (3, 'evt_3', {}, 'system', 'system', 'keyward', 'key.expire', 'key', 'key_b',
                  NULL, NULL, NULL, '{{}}', '{h2}', '{h3}');",
            T0 + 1,
            T0 + 2,
        ),
    )
    .await;
    let store = db.reopen().await;
    let events = all_events(&store).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let chain = (e.prev_hash.as_str(), e.hash.as_str());
            (
                e.seq,
                e.id.as_str(),
                e.at.millis(),
                e.action.as_str(),
                chain,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                1,
                "evt_1",
                T0,
                "key.create",
                (genesis.as_str(), h1.as_str())
            ),
            (2, "evt_2", T0 + 1, "key.revoke", (h1.as_str(), h2.as_str())),
            (3, "evt_3", T0 + 2, "key.expire", (h2.as_str(), h3.as_str())),
        ]
    );
    let first = &events[0];
    assert_eq!(
        (
            &first.actor.id,
            first.request_id.as_deref(),
            first.ip.as_deref()
        ),
        (&"tok_a".to_string(), Some("req-1"), Some("203.0.113.9"))
    );
    assert_eq!(first.actor.name, "ci");
    assert_eq!(
        first.changes,
        json_map(serde_json::json!({"name": [null, "a é"]}))
    );
    assert_eq!(events[1].reason.as_deref(), Some("left"));
    // The next event follows the copied chain.
    let next = append(
        &store,
        event("key.update", "key_a", at(9), token_actor("tok_a")),
    )
    .await;
    assert_eq!((next.seq, next.prev_hash.as_str()), (4, h3.as_str()));
    // Each index of the trail answers.
    let by = |target: Option<&str>, actor: Option<&str>, action: Option<&str>| AuditFilter {
        target_id: target.map(String::from),
        actor_id: actor.map(String::from),
        action: action.map(String::from),
        page: keyward_store::Page {
            limit: 10,
            after: None,
        },
        ..AuditFilter::default()
    };
    assert_eq!(
        audit_seqs(&store, by(Some("key_a"), None, None)).await,
        vec![4, 2, 1]
    );
    assert_eq!(
        audit_seqs(&store, by(None, Some("tok_a"), None)).await,
        vec![4, 1]
    );
    assert_eq!(
        audit_seqs(&store, by(None, None, Some("key.expire"))).await,
        vec![3]
    );
    if db.backend_name() == "sqlite" {
        assert_eq!(
            db.index_names("audit_events").await,
            vec![
                "audit_action_idx",
                "audit_actor_idx",
                "audit_target_idx",
                "sqlite_autoindex_audit_events_1",
            ],
            "seq is the row id: no index of its own"
        );
    }
}
conformance!(unopened audit_events_written_before_migration_17_read_back_the_same_after_it
    => sqlite_audit_events_written_before_migration_17_read_back_the_same_after_it,
       postgres_audit_events_written_before_migration_17_read_back_the_same_after_it);

// ---- the checksummed migrator ----

/// What sqlx records for each migration when it applies it itself: (version, description,
/// SHA-384 of the backend's SQL). The first six are those the old release also had.
fn expected_migrations(db: &TestDb) -> Vec<(i64, String, Vec<u8>)> {
    use sha2::{Digest, Sha384};
    let descriptions = [
        "init",
        "lifecycle usage",
        "users",
        "quota leases",
        "usage rollup",
        "key counters",
        "route rules",
        "key imports",
        "identities",
        "limits refills",
        "lock tag feed notify",
        "key list indexes",
        "usage pipeline",
        "counter fillfactor",
        "feed notify origin",
        "usage dirty",
        "audit seq rowid",
    ];
    let newer = MIGRATION_FILES[OLD_MIGRATIONS.len()..]
        .iter()
        .zip(OLD_MIGRATIONS.len() as i64 + 1..)
        .map(|((sqlite, postgres), version)| (version, *sqlite, *postgres));
    OLD_MIGRATIONS
        .into_iter()
        .chain(newer)
        .zip(descriptions)
        .map(|((version, sqlite, postgres), description)| {
            let sql = if db.backend_name() == "sqlite" {
                sqlite
            } else {
                postgres
            };
            (
                version,
                description.to_string(),
                Sha384::digest(sql.as_bytes()).to_vec(),
            )
        })
        .collect()
}

/// A database written by the release before the checksummed migrator (`keyward_migrations`
/// with versions 1-6, no `_sqlx_migrations`) opens with its data, and nothing is applied again:
/// the versions are recorded in `_sqlx_migrations` as sqlx records them.
async fn a_database_migrated_the_old_way_is_carried_over_without_reapplying(db: &TestDb) {
    db.migrate_the_old_way().await;
    let old = db.old_migrations_table().await;
    assert_eq!(
        old.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(!db.has_table("_sqlx_migrations").await);
    // Data the old release wrote.
    let actor = serde_json::to_string(&keyward_core::model::Actor::system()).unwrap();
    let policy = serde_json::to_string(&keyspace("old").policy).unwrap();
    let hash = match db.backend_name() {
        "sqlite" => format!("X'{}'", "07".repeat(32)),
        _ => format!("'\\x{}'::bytea", "07".repeat(32)),
    };
    db.execute_in(&format!(
        "INSERT INTO keyspaces (id, name, prefix, policy, created_at, updated_at)
             VALUES ('ks_old', 'old', 'old', '{policy}', {T0}, {T0});
         INSERT INTO keys (id, keyspace_id, name, scopes, labels, meta, hash, start_chars,
             end_chars, enabled, created_at, created_by, updated_at, remaining)
             VALUES ('key_old', 'ks_old', 'old', '[]', '{{}}', '{{}}', {hash}, 'old_', 'x', TRUE,
             {T0}, '{actor}', {T0}, 40);
         INSERT INTO key_counters (key_id, calls, denied, last_used_at)
             VALUES ('key_old', 5, 1, {T0});"
    ))
    .await;

    let store = db.reopen().await;
    let ks = store
        .keyspace("ks_old")
        .await
        .unwrap()
        .expect("the old keyspace");
    assert_eq!((ks.name.as_str(), ks.prefix.as_str()), ("old", "old"));
    let k = store.key("key_old").await.unwrap().expect("the old key");
    assert_eq!(
        (k.call_count, k.denied_count, k.last_used_at, k.remaining),
        (5, 1, Some(Timestamp::from_millis(T0)), Some(40))
    );
    // The schema is whole: the new release writes where the old one left off.
    let ks_new = new_keyspace(&store, "acme").await;
    let k_new = key(&ks_new, at(1));
    insert_keys(&store, &[&k_new.key]).await;
    assert_eq!(
        store.key(&k_new.key.id).await.unwrap(),
        Some(k_new.key.clone())
    );

    // Recorded as sqlx records them, none applied by the migrator (it would have measured an
    // execution time), each installed when `keyward_migrations` says it was applied.
    let applied = db.migrations_table().await;
    let expected = expected_migrations(db);
    assert_eq!(applied.len(), expected.len());
    for ((row, (version, description, checksum)), (old_version, applied_at)) in
        applied.iter().zip(&expected).zip(&old)
    {
        assert_eq!(row.version, *version);
        assert_eq!(row.version, *old_version);
        assert_eq!(&row.description, description);
        assert_eq!(&row.checksum, checksum, "checksum of migration {version}");
        assert!(row.success);
        assert_eq!(
            row.execution_time, -1,
            "migration {version} must not run again"
        );
        assert_eq!(row.installed_on, applied_at.div_euclid(1000));
    }
    // Migrations newer than the old release ran normally, once.
    for row in &applied[old.len()..] {
        assert!(row.execution_time >= 0, "migration {} ran", row.version);
    }
    // `keyward_migrations` stays as it was (the previous release can still open the database).
    assert_eq!(db.old_migrations_table().await, old);

    // Carried over once: opening again changes nothing.
    let again = db.reopen().await;
    assert_eq!(db.migrations_table().await, applied);
    assert_eq!(
        again.key("key_old").await.unwrap().map(|k| k.call_count),
        Some(5)
    );
}
conformance!(unopened a_database_migrated_the_old_way_is_carried_over_without_reapplying
    => sqlite_a_database_migrated_the_old_way_is_carried_over_without_reapplying,
       postgres_a_database_migrated_the_old_way_is_carried_over_without_reapplying);

/// Several nodes of the new release starting together on a database of the old one: one
/// carries it over, the others find it done.
async fn nodes_opening_an_old_database_at_once_carry_it_over_once(db: &TestDb) {
    db.migrate_the_old_way().await;
    let o = db.opener();
    let opened = tokio::join!(o.open(), o.open(), o.open(), o.open());
    for r in [opened.0, opened.1, opened.2, opened.3] {
        if let Err(e) = r {
            panic!("a concurrent open failed: {e}");
        }
    }
    let applied = db.migrations_table().await;
    assert_eq!(
        applied.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    );
    assert!(applied[..6].iter().all(|r| r.execution_time == -1));
}
conformance!(unopened nodes_opening_an_old_database_at_once_carry_it_over_once
    => sqlite_nodes_opening_an_old_database_at_once_carry_it_over_once,
       postgres_nodes_opening_an_old_database_at_once_carry_it_over_once);

/// An applied migration whose SQL changed since (its checksum differs) stops `open` with an error
/// that says so, before any migration runs; the database is left as it was.
async fn an_edited_applied_migration_stops_open(db: &TestDb) {
    let store = db.store();
    let ks = new_keyspace(&store, "acme").await;
    let before = db.migrations_table().await;
    // Migration 6 pending again (a run would apply it), and migration 3 edited since it ran.
    db.execute_in("DROP TABLE key_counters; DELETE FROM _sqlx_migrations WHERE version = 6")
        .await;
    db.set_checksum(3, &[0u8; 48]).await;

    let err = match db.opener().open().await {
        Ok(_) => panic!("a database with an edited migration opened"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, keyward_store::StoreError::Other(_)), "{text}");
    assert!(text.contains("migration 3"), "{text}");
    assert!(text.contains("checksum"), "{text}");
    // Nothing ran: migration 6 is still pending, the checksum is still the edited one.
    assert!(!db.has_table("key_counters").await);
    let after = db.migrations_table().await;
    assert_eq!(
        after.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    );
    assert_eq!(after[2].checksum, vec![0u8; 48]);

    // The checksum was the only matter: with the applied SQL's back, the database opens and gets
    // the pending migration.
    db.set_checksum(3, &before[2].checksum).await;
    let again = db.reopen().await;
    assert_eq!(again.keyspace(&ks.id).await.unwrap(), Some(ks));
    assert!(db.has_table("key_counters").await);
    let applied = db.migrations_table().await;
    assert_eq!(applied[..5], before[..5]);
    assert_eq!(
        (applied[5].version, &applied[5].checksum),
        (6, &before[5].checksum)
    );
}
conformance!(with_db an_edited_applied_migration_stops_open
    => sqlite_an_edited_applied_migration_stops_open,
       postgres_an_edited_applied_migration_stops_open);

/// A new database gets every migration from the migrator, recorded with its checksum; the old
/// `keyward_migrations` table is not created.
async fn a_new_database_gets_every_migration(db: &TestDb) {
    let applied = db.migrations_table().await;
    let expected = expected_migrations(db);
    assert_eq!(applied.len(), expected.len());
    for (row, (version, description, checksum)) in applied.iter().zip(&expected) {
        assert_eq!(
            (&row.version, &row.description, &row.checksum),
            (version, description, checksum)
        );
        assert!(row.success);
        assert!(
            row.execution_time >= 0,
            "migration {version} was applied and measured"
        );
    }
    assert!(!db.has_table("keyward_migrations").await);
    let store = db.store();
    let ks = new_keyspace(&store, "acme").await;
    assert_eq!(store.keyspace(&ks.id).await.unwrap(), Some(ks));
}
conformance!(with_db a_new_database_gets_every_migration
    => sqlite_a_new_database_gets_every_migration, postgres_a_new_database_gets_every_migration);

/// A version this release does not have (applied by a newer release, as in a rolling upgrade)
/// does not stop it from opening the database, as before the checksummed migrator.
async fn a_migration_of_a_newer_release_does_not_stop_open(db: &TestDb) {
    let (installed, checksum) = match db.backend_name() {
        "sqlite" => ("CURRENT_TIMESTAMP", format!("X'{}'", "ab".repeat(48))),
        _ => ("now()", format!("'\\x{}'::bytea", "ab".repeat(48))),
    };
    db.execute_in(&format!(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, \
         execution_time) VALUES (99, 'from a newer release', {installed}, TRUE, {checksum}, 1)"
    ))
    .await;
    let store = db.reopen().await;
    store.ping().await.unwrap();
    assert_eq!(
        db.migrations_table().await.len(),
        expected_migrations(db).len() + 1
    );
}
conformance!(with_db a_migration_of_a_newer_release_does_not_stop_open
    => sqlite_a_migration_of_a_newer_release_does_not_stop_open,
       postgres_a_migration_of_a_newer_release_does_not_stop_open);

/// A `_sqlx_migrations` table written by another application (keyward pointed at a schema it
/// shares) is refused with a message that says so, and nothing is written into it: running
/// keyward's migrations there would mix two histories and stop the other application.
async fn another_applications_migration_table_is_refused(db: &TestDb) {
    let _ = db.store();
    let (installed, checksum) = match db.backend_name() {
        "sqlite" => ("CURRENT_TIMESTAMP", format!("X'{}'", "cd".repeat(48))),
        _ => ("now()", format!("'\\x{}'::bytea", "cd".repeat(48))),
    };
    // Only the other application's history: none of keyward's versions.
    db.execute_in(&format!(
        "DELETE FROM _sqlx_migrations; INSERT INTO _sqlx_migrations (version, description, \
         installed_on, success, checksum, execution_time) VALUES (20240101000000, \
         'create invoices', {installed}, TRUE, {checksum}, 1)"
    ))
    .await;
    let refused = |r: Result<_, keyward_store::StoreError>| match r {
        Ok(_) => panic!("opened a schema with another application's migrations"),
        Err(e) => e.to_string(),
    };
    let text = refused(db.opener().open().await);
    assert!(text.contains("another application"), "{text}");
    assert_eq!(db.migrations_table().await.len(), 1, "nothing was written");

    // One of keyward's versions under another description is another history too.
    db.execute_in(&format!(
        "DELETE FROM _sqlx_migrations; INSERT INTO _sqlx_migrations (version, description, \
         installed_on, success, checksum, execution_time) VALUES (1, 'create invoices', \
         {installed}, TRUE, {checksum}, 1)"
    ))
    .await;
    let text = refused(db.opener().open().await);
    assert!(text.contains("another application"), "{text}");
}
conformance!(with_db another_applications_migration_table_is_refused
    => sqlite_another_applications_migration_table_is_refused,
       postgres_another_applications_migration_table_is_refused);

//! The change feed: the row every key change appends (read by the other nodes to refresh their
//! caches), the followers' reads (`changes_after`, `change_head`), and the pruning of history
//! (old feed rows, finished webhook deliveries with their attempts and events, anomalies).
//!
//! Invariant: every write of a key appends a feed row in the same transaction (`key_changed`,
//! `quota_set`), and so does every update of a keyspace (`keyspace_changed`), stamped with the writing store's node id so a node can skip its own changes;
//! on PostgreSQL the feed's insert trigger (migration 0011) also notifies the listeners,
//! delivered at commit.

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty) => {
        use keyward_core::model::Key;
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, hash_from, map_err, Writes};
        use crate::{Change, Result};

        /// The feed row of a key written (inserted or updated) in this transaction.
        pub(super) async fn key_changed(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, k: &Key) -> Result<()> {
            keys_changed(conn, node, &[k]).await
        }

        /// The feed rows of keys written in this transaction, in one statement (callers pass
        /// at most a few hundred keys: 4 binds a row).
        pub(super) async fn keys_changed(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, keys: &[&Key]) -> Result<()> {
            let mut w = Writes::new();
            push_keys_changed(&mut w, node, keys);
            if let Some(mut q) = w.finish() {
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        /// The feed rows of `keys` as one write of `w` (none for no keys).
        pub(super) fn push_keys_changed(w: &mut Writes<'static, $DB>, node: &str, keys: &[&Key]) {
            if keys.is_empty() {
                return;
            }
            let q = w.next();
            q.push("INSERT INTO change_feed (key_id, key_hash, at, origin) ");
            q.push_values(keys, |mut b, k| {
                b.push_bind(k.id.clone()).push_bind(k.hash.0.to_vec()).push_bind(k.updated_at.millis()).push_bind(node.to_string());
            });
        }

        /// The feed row of keyspace `id`, dated `at` (its id in `key_id`, a zero hash,
        /// `keyspace` set): its rules changed, or keys were imported into it.
        pub(super) async fn keyspace_changed(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, id: &str, at: Timestamp) -> Result<()> {
            sqlx::query("INSERT INTO change_feed (key_id, key_hash, at, origin, keyspace) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(vec![0u8; 32])
                .bind(at.millis())
                .bind(node)
                .bind(true)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        /// The feed row of a key whose quota was set anew in this transaction (`quota`: every
        /// node's lease of it is void).
        pub(super) async fn quota_set(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, id: &str) -> Result<()> {
            sqlx::query(
                "INSERT INTO change_feed (key_id, key_hash, at, origin, quota) \
                 SELECT id, hash, updated_at, $2, $3 FROM keys WHERE id = $1",
            )
            .bind(id)
            .bind(node)
            .bind(true)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(())
        }

        pub(super) async fn changes_after(pool: &sqlx::Pool<$DB>, seq: i64, limit: i64) -> Result<Vec<Change>> {
            let rows = sqlx::query("SELECT seq, key_id, key_hash, origin, quota, keyspace FROM change_feed WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    Ok(Change {
                        seq: get(r, "seq")?,
                        key_id: get(r, "key_id")?,
                        key_hash: hash_from(get(r, "key_hash")?)?,
                        origin: get(r, "origin")?,
                        quota: get(r, "quota")?,
                        keyspace: get(r, "keyspace")?,
                    })
                })
                .collect()
        }

        pub(super) async fn change_head(pool: &sqlx::Pool<$DB>) -> Result<i64> {
            let r = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS head FROM change_feed")
                .fetch_one(pool)
                .await
                .map_err(map_err)?;
            get(&r, "head")
        }

        pub(super) async fn prune_history(pool: &sqlx::Pool<$DB>, history_before: Timestamp, feed_before: Timestamp) -> Result<u64> {
            let mut n = 0;
            let statements = [
                ("DELETE FROM webhook_attempts WHERE at < $1", history_before),
                ("DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1", history_before),
                (
                    "DELETE FROM webhook_events WHERE at < $1 AND id NOT IN (SELECT event_id FROM webhook_deliveries)",
                    history_before,
                ),
                ("DELETE FROM anomalies WHERE detected_at < $1", history_before),
                ("DELETE FROM notices WHERE at < $1", history_before),
                ("DELETE FROM change_feed WHERE at < $1", feed_before),
            ];
            for (sql, before) in statements {
                let r = sqlx::query(sql).bind(before.millis()).execute(pool).await.map_err(map_err)?;
                n += r.rows_affected();
            }
            Ok(n)
        }
    };
}
pub(super) use for_backend;

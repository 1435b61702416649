//! Imported keys (`key_imports`): what an import records beside the key row, the lookups that
//! keep an import idempotent and refuse duplicates, the candidates of a salted hash for a
//! presented key, and the one-time upgrade of a salted hash to the key's SHA-256.
//!
//! Invariants: a key row and its import row are written in one transaction; the upgrade
//! (`rehash`) clears the salted hash and replaces the placeholder hash in `keys` at once, only
//! while the salted hash is still there (so two nodes upgrading at once record it once), and
//! appends the key's change-feed row.

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty) => {
        use keyward_core::keyformat::KeyHash;

        use crate::sql::common::{get, map_err};
        use crate::{KeyImport, Result, SlowCandidate};

        pub(super) async fn insert_import(conn: &mut <$DB as sqlx::Database>::Connection, i: &KeyImport) -> Result<()> {
            sqlx::query(
                "INSERT INTO key_imports (key_id, keyspace_id, fingerprint, keyward_format, lookup, slow_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&i.key_id)
            .bind(&i.keyspace_id)
            .bind(i.fingerprint.to_vec())
            .bind(i.keyward_format)
            .bind(&i.lookup)
            .bind(&i.slow_hash)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(())
        }

        /// The key with `external_id` in a keyspace, and the fingerprint it was imported with
        /// (`None` for a key that has the id but was not imported: never, today).
        pub(super) async fn by_external_id(
            conn: &mut <$DB as sqlx::Database>::Connection,
            keyspace_id: &str,
            external_id: &str,
        ) -> Result<Option<(String, Option<Vec<u8>>)>> {
            let row = sqlx::query(
                "SELECT k.id, i.fingerprint FROM keys k LEFT JOIN key_imports i ON i.key_id = k.id \
                 WHERE k.keyspace_id = $1 AND k.external_id = $2",
            )
            .bind(keyspace_id)
            .bind(external_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
            row.map(|r| Ok((get(&r, "id")?, get(&r, "fingerprint")?))).transpose()
        }

        pub(super) async fn hash_taken(conn: &mut <$DB as sqlx::Database>::Connection, hash: &KeyHash) -> Result<bool> {
            let row = sqlx::query("SELECT 1 AS one FROM keys WHERE hash = $1")
                .bind(hash.0.to_vec())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(row.is_some())
        }

        /// Whether a lookup still in use is `lookup`, a prefix of it, or starts with it
        /// (lookups are kept prefix-free across keyspaces, so a presented key has at most one).
        pub(super) async fn lookup_conflicts(conn: &mut <$DB as sqlx::Database>::Connection, lookup: &str) -> Result<bool> {
            let mut q = sqlx::QueryBuilder::<$DB>::new("SELECT 1 AS one FROM key_imports WHERE lookup IS NOT NULL AND (substr(lookup, 1, ");
            q.push_bind(lookup.len() as i32).push(") = ").push_bind(lookup.to_string()).push(" OR lookup IN (");
            let mut sep = q.separated(", ");
            for n in 1..=lookup.len() {
                if let Some(p) = lookup.get(..n) {
                    sep.push_bind(p.to_string());
                }
            }
            q.push(")) LIMIT 1");
            let row = q.build().fetch_optional(&mut *conn).await.map_err(map_err)?;
            Ok(row.is_some())
        }

        /// Live keys (not revoked, not expired at `now`) still held as a salted hash whose
        /// lookup is one of `lookups`, in `keyspaces` (`None`: any), longest lookup first.
        pub(super) async fn slow_candidates(
            pool: &sqlx::Pool<$DB>,
            lookups: &[String],
            keyspaces: Option<&[String]>,
            now: keyward_core::time::Timestamp,
            limit: i64,
        ) -> Result<Vec<SlowCandidate>> {
            if lookups.is_empty() || keyspaces.is_some_and(|k| k.is_empty()) {
                return Ok(Vec::new());
            }
            let mut q = sqlx::QueryBuilder::<$DB>::new(
                "SELECT i.key_id, i.keyspace_id, i.lookup, i.slow_hash FROM key_imports i JOIN keys k ON k.id = i.key_id \
                 WHERE i.slow_hash IS NOT NULL AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ",
            );
            q.push_bind(now.millis()).push(") AND i.lookup IN (");
            let mut sep = q.separated(", ");
            for l in lookups {
                sep.push_bind(l.clone());
            }
            q.push(")");
            if let Some(ks) = keyspaces {
                q.push(" AND i.keyspace_id IN (");
                let mut sep = q.separated(", ");
                for k in ks {
                    sep.push_bind(k.clone());
                }
                q.push(")");
            }
            q.push(" ORDER BY length(i.lookup) DESC, i.key_id LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter()
                .map(|r: &$Row| {
                    Ok(SlowCandidate {
                        key_id: get(r, "key_id")?,
                        keyspace_id: get(r, "keyspace_id")?,
                        lookup: get(r, "lookup")?,
                        slow_hash: get(r, "slow_hash")?,
                    })
                })
                .collect()
        }

        /// Replaces a salted hash by the key's SHA-256; false when another node did it first.
        pub(super) async fn rehash(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, key_id: &str, hash: &KeyHash, at: keyward_core::time::Timestamp) -> Result<bool> {
            let r = sqlx::query("UPDATE key_imports SET slow_hash = NULL, lookup = NULL WHERE key_id = $1 AND slow_hash IS NOT NULL")
                .bind(key_id)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            sqlx::query("UPDATE keys SET hash = $2 WHERE id = $1")
                .bind(key_id)
                .bind(hash.0.to_vec())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            match super::keys::key(&mut *conn, key_id).await? {
                // The feed row is dated now (rows are pruned by date), not by the key's update.
                Some(mut k) => {
                    k.updated_at = at;
                    super::feed::key_changed(conn, node, &k).await?
                }
                None => return Ok(false),
            }
            Ok(true)
        }

        /// Whether any imported key lacks keyward's format.
        pub(super) async fn any_foreign(pool: &sqlx::Pool<$DB>) -> Result<bool> {
            let row = sqlx::query("SELECT 1 AS one FROM key_imports WHERE NOT keyward_format LIMIT 1")
                .fetch_optional(pool)
                .await
                .map_err(map_err)?;
            Ok(row.is_some())
        }
    };
}
pub(super) use for_backend;

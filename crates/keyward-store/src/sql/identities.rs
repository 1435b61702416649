//! Identities: reads (within a token's keyspaces: an identity is seen when it owns a key
//! there), the newest-first list, writes. A change of an identity's effective `enabled` or of
//! its rate limits changes how every key of its owner verifies: the caller then appends a change-feed row for each of
//! those keys that is not revoked (`announce`), in the same transaction, and the other nodes
//! read them again.

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty) => {
        use keyward_core::model::Identity;
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, json, json_opt, map_err, push_after_time, push_in, to_json, ts};
        use crate::{Page, Result, TimeCursor};

        const COLS: &str = "id, name, meta, enabled, created_at, created_by, updated_at, ratelimits, \
            refill, refill_anchor, refilled_at, quota_version, remaining";
        /// The columns read: `remaining` is the unleased quota plus every node's lease.
        const SELECT: &str = "id, name, meta, enabled, created_at, created_by, updated_at, ratelimits, \
            refill, refill_anchor, refilled_at, quota_version, \
            remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) FROM quota_leases q \
            WHERE q.key_id = '@' || identities.id) AS BIGINT) AS remaining";

        fn from_row(r: &$Row) -> Result<Identity> {
            Ok(Identity {
                id: get(r, "id")?,
                name: get(r, "name")?,
                meta: json("meta", &get::<String, _>(r, "meta")?)?,
                enabled: get(r, "enabled")?,
                ratelimits: json_opt("ratelimits", get(r, "ratelimits")?)?.unwrap_or_default(),
                remaining: get(r, "remaining")?,
                refill: json_opt("refill", get(r, "refill")?)?,
                refilled_at: ts(get(r, "refilled_at")?),
                refill_anchor: ts(get(r, "refill_anchor")?),
                quota_version: get(r, "quota_version")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String, _>(r, "created_by")?)?,
                updated_at: Timestamp::from_millis(get(r, "updated_at")?),
            })
        }

        pub(super) async fn identity<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Identity>> {
            let sql = format!("SELECT {SELECT} FROM identities WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(from_row).transpose()
        }

        /// `AND` the identity owns a key in `keyspace_ids` (`None`: no condition).
        fn push_owns_key_in<'a>(q: &mut sqlx::QueryBuilder<'a, $DB>, keyspace_ids: Option<&'a [String]>) {
            if keyspace_ids.is_some() {
                q.push(" AND EXISTS (SELECT 1 FROM keys k WHERE k.owner = identities.id");
                push_in(q, "k.keyspace_id", keyspace_ids);
                q.push(")");
            }
        }

        pub(super) async fn identity_in(pool: &sqlx::Pool<$DB>, id: &str, keyspace_ids: Option<&[String]>) -> Result<Option<Identity>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {SELECT} FROM identities WHERE id = "));
            q.push_bind(id.to_string());
            push_owns_key_in(&mut q, keyspace_ids);
            let row = q.build().fetch_optional(pool).await.map_err(map_err)?;
            row.as_ref().map(from_row).transpose()
        }

        pub(super) async fn list_identities(pool: &sqlx::Pool<$DB>, keyspace_ids: Option<&[String]>, page: &Page<TimeCursor>) -> Result<Vec<Identity>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {SELECT} FROM identities WHERE 1 = 1"));
            push_owns_key_in(&mut q, keyspace_ids);
            push_after_time(&mut q, &page.after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(from_row).collect()
        }

        pub(super) async fn insert_identity(conn: &mut <$DB as sqlx::Database>::Connection, i: &Identity) -> Result<()> {
            let sql = format!("INSERT INTO identities ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
            sqlx::query(&sql)
                .bind(&i.id)
                .bind(&i.name)
                .bind(to_json(&i.meta))
                .bind(i.enabled)
                .bind(i.created_at.millis())
                .bind(to_json(&i.created_by))
                .bind(i.updated_at.millis())
                .bind(limits_json(i))
                .bind(i.refill.as_ref().map(to_json))
                .bind(i.refill_anchor.map(Timestamp::millis))
                .bind(i.refilled_at.map(Timestamp::millis))
                .bind(i.quota_version)
                .bind(i.remaining)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        /// Sets an identity's quota anew: its `remaining` and refill, a new `quota_version`, and
        /// every node's lease of the old one void.
        pub(super) async fn set_identity_quota(conn: &mut <$DB as sqlx::Database>::Connection, i: &Identity) -> Result<()> {
            sqlx::query(
                "UPDATE identities SET remaining = $2, refill = $3, refill_anchor = $4, refilled_at = $5, \
                 quota_version = quota_version + 1 WHERE id = $1",
            )
            .bind(&i.id)
            .bind(i.remaining)
            .bind(i.refill.as_ref().map(to_json))
            .bind(i.refill_anchor.map(Timestamp::millis))
            .bind(i.refilled_at.map(Timestamp::millis))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            sqlx::query("DELETE FROM quota_leases WHERE key_id = $1")
                .bind(format!("@{}", i.id))
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        /// `ratelimits` as stored: the list, or NULL when there is none.
        fn limits_json(i: &Identity) -> Option<String> {
            (!i.ratelimits.is_empty()).then(|| to_json(&i.ratelimits))
        }

        pub(super) async fn update_identity(conn: &mut <$DB as sqlx::Database>::Connection, i: &Identity) -> Result<()> {
            sqlx::query("UPDATE identities SET name = $2, meta = $3, enabled = $4, updated_at = $5, ratelimits = $6 WHERE id = $1")
                .bind(&i.id)
                .bind(&i.name)
                .bind(to_json(&i.meta))
                .bind(i.enabled)
                .bind(i.updated_at.millis())
                .bind(limits_json(i))
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        pub(super) async fn delete_identity(conn: &mut <$DB as sqlx::Database>::Connection, id: &str) -> Result<bool> {
            let r = sqlx::query("DELETE FROM identities WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            sqlx::query("DELETE FROM quota_leases WHERE key_id = $1")
                .bind(format!("@{id}"))
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        /// A feed row for each key of `owner` that is not revoked (see the module's doc).
        pub(super) async fn announce(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, owner: &str, at: Timestamp) -> Result<()> {
            sqlx::query(
                "INSERT INTO change_feed (key_id, key_hash, at, origin) \
                 SELECT id, hash, $2, $3 FROM keys WHERE owner = $1 AND revoked_at IS NULL",
            )
            .bind(owner)
            .bind(at.millis())
            .bind(node)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(())
        }
    };
}
pub(super) use for_backend;

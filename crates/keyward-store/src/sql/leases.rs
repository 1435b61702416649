//! Quota leases: each node takes part of a key's quota ahead (`lease_quota`), spends it locally,
//! and gives back what it did not spend (`return_lease`); leases of nodes that stopped are
//! reclaimed by the sweep (`reclaim_stale_leases`). A quota with a refill is refilled by the
//! first lease of each period (which voids the older leases). An identity's quota is leased the
//! same way: its `quota_leases.key_id` is `@` and the identity's id.
//!
//! Invariant: a key's quota left is `keys.remaining` (the unleased part) plus the `amount` of
//! every `quota_leases` row of the key (what a key read returns, see `KEY_SELECT` in `keys.rs`).
//! Each function here moves quota between the two in one transaction that takes the write lock
//! first; usage batches spend from their node's lease (`usage.rs`), and a quota set anew voids
//! every lease (`set_remaining` in `keys.rs`).

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty) => {
        use keyward_core::time::Timestamp;

        use keyward_core::limits::Refill;

        use crate::sql::common::{get, json_opt, map_err, ts, TAKE_WRITE_LOCK};
        use crate::Result;

        /// The table and id of a quota's holder: a key, or (`@` and its id) an identity.
        fn holder(key_id: &str) -> (&'static str, &str) {
            match key_id.strip_prefix('@') {
                Some(identity) => ("identities", identity),
                None => ("keys", key_id),
            }
        }

        pub(super) async fn lease_quota(pool: &sqlx::Pool<$DB>, node: &str, key_id: &str, want: i64, now: Timestamp) -> Result<Option<crate::Lease>> {
            let mut tx = pool.begin().await.map_err(map_err)?;
            // Take the write lock first: leases across nodes are serialized.
            sqlx::query(TAKE_WRITE_LOCK).execute(&mut *tx).await.map_err(map_err)?;
            let (table, id) = holder(key_id);
            let row = sqlx::query(&format!("SELECT remaining, refill, refill_anchor, refilled_at FROM {table} WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let Some(mut left) = get::<Option<i64>, _>(&row, "remaining")? else {
                return Ok(None);
            };
            let refill: Option<Refill> = json_opt("refill", get(&row, "refill")?)?;
            let mut until = None;
            if let Some(refill) = refill {
                // A period began since the last refill: `remaining` is the amount again, and
                // every lease of the old period is void (its units are not this period's). No
                // feed row: each node stops spending its lease at the period's end by itself
                // (the grant says when), and a row would void leases of the new period too.
                let current = ts(get(&row, "refilled_at")?);
                let anchor = ts(get(&row, "refill_anchor")?).or(current).unwrap_or(now);
                let start = refill.period_start(anchor, now);
                let period = match current {
                    Some(c) if c >= start => c,
                    _ => {
                        sqlx::query(&format!("UPDATE {table} SET remaining = $2, refilled_at = $3 WHERE id = $1"))
                            .bind(id)
                            .bind(refill.amount)
                            .bind(start.millis())
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        sqlx::query("DELETE FROM quota_leases WHERE key_id = $1")
                            .bind(key_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        left = refill.amount;
                        start
                    }
                };
                until = Some(refill.next_period(period));
            }
            let take = want.clamp(0, left.max(0));
            if take > 0 {
                sqlx::query(&format!("UPDATE {table} SET remaining = remaining - $2 WHERE id = $1"))
                    .bind(id)
                    .bind(take)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO quota_leases (key_id, node, amount, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key_id, node) DO UPDATE SET amount = quota_leases.amount + excluded.amount, updated_at = excluded.updated_at",
                )
                .bind(key_id)
                .bind(node)
                .bind(take)
                .bind(now.millis())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            tx.commit().await.map_err(map_err)?;
            Ok(Some(crate::Lease { granted: take, left: left - take, until }))
        }

        pub(super) async fn return_lease(pool: &sqlx::Pool<$DB>, node: &str, key_id: &str, amount: i64, until: Option<Timestamp>) -> Result<()> {
            let mut tx = pool.begin().await.map_err(map_err)?;
            sqlx::query(TAKE_WRITE_LOCK).execute(&mut *tx).await.map_err(map_err)?;
            if let Some(until) = until {
                // A lease of a refill period that is over was voided by the refill: nothing
                // of it goes back (the row may hold the next period's lease).
                let (table, id) = holder(key_id);
                let row = sqlx::query(&format!("SELECT refill, refilled_at FROM {table} WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let current = match &row {
                    Some(r) => {
                        let refill: Option<Refill> = json_opt("refill", get(r, "refill")?)?;
                        refill.zip(ts(get(r, "refilled_at")?)).map(|(f, at)| f.next_period(at))
                    }
                    None => None,
                };
                if current != Some(until) {
                    return Ok(());
                }
            }
            let r = sqlx::query("UPDATE quota_leases SET amount = amount - $3 WHERE key_id = $1 AND node = $2 AND amount >= $3")
                .bind(key_id)
                .bind(node)
                .bind(amount)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            if r.rows_affected() == 1 {
                let (table, id) = holder(key_id);
                sqlx::query(&format!("UPDATE {table} SET remaining = remaining + $2 WHERE id = $1 AND remaining IS NOT NULL"))
                    .bind(id)
                    .bind(amount)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            sqlx::query("DELETE FROM quota_leases WHERE key_id = $1 AND node = $2 AND amount <= 0")
                .bind(key_id)
                .bind(node)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)
        }

        pub(super) async fn reclaim_stale_leases(pool: &sqlx::Pool<$DB>, older_than: Timestamp) -> Result<u64> {
            let mut tx = pool.begin().await.map_err(map_err)?;
            sqlx::query(TAKE_WRITE_LOCK).execute(&mut *tx).await.map_err(map_err)?;
            sqlx::query(
                "UPDATE keys SET remaining = remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) FROM quota_leases q \
                 WHERE q.key_id = keys.id AND q.updated_at < $1 AND q.amount > 0) AS BIGINT) \
                 WHERE remaining IS NOT NULL AND id IN (SELECT key_id FROM quota_leases WHERE updated_at < $1)",
            )
            .bind(older_than.millis())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            sqlx::query(
                "UPDATE identities SET remaining = remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) FROM quota_leases q \
                 WHERE q.key_id = '@' || identities.id AND q.updated_at < $1 AND q.amount > 0) AS BIGINT) \
                 WHERE remaining IS NOT NULL AND '@' || id IN (SELECT key_id FROM quota_leases WHERE updated_at < $1)",
            )
            .bind(older_than.millis())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let r = sqlx::query("DELETE FROM quota_leases WHERE updated_at < $1")
                .bind(older_than.millis())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            Ok(r.rows_affected())
        }
    };
}
pub(super) use for_backend;

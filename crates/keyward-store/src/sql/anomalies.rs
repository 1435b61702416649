//! Anomalies the detector records (a spike, a new source address, a dormant key used again, a
//! burst of denials): the deduplicated insert and the filtered list; and the threshold notices
//! sent (deduplicated the same way). (Old ones are pruned with the history, see
//! `prune_history` in `feed.rs`.)
//!
//! Invariant: at most one anomaly per `dedup` text, so a detector that sees the same thing twice
//! records it once.

pub(super) const ANOMALY_COLS: &str = "id, key_id, keyspace_id, kind, detected_at, detail";

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty) => {
        use keyward_core::kinds::AnomalyKind;
        use keyward_core::model::Anomaly;
        use keyward_core::time::Timestamp;

        use crate::sql::anomalies::ANOMALY_COLS;
        use crate::sql::common::{get, json, map_err, push_in, to_json};
        use crate::{AnomalyFilter, Result, StoreError};

        fn anomaly_from_row(r: &$Row) -> Result<Anomaly> {
            Ok(Anomaly {
                id: get(r, "id")?,
                key_id: get(r, "key_id")?,
                keyspace_id: get(r, "keyspace_id")?,
                kind: {
                    let k: String = get(r, "kind")?;
                    AnomalyKind::parse(&k).ok_or_else(|| StoreError::Other(format!("unknown anomaly kind in the database: {k}")))?
                },
                detected_at: Timestamp::from_millis(get(r, "detected_at")?),
                detail: json("detail", &get::<String, _>(r, "detail")?)?,
            })
        }

        pub(super) async fn insert_anomaly(conn: &mut <$DB as sqlx::Database>::Connection, a: &Anomaly, dedup: &str) -> Result<bool> {
            let r = sqlx::query(
                "INSERT INTO anomalies (id, key_id, keyspace_id, kind, dedup, detected_at, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedup) DO NOTHING",
            )
            .bind(&a.id)
            .bind(&a.key_id)
            .bind(&a.keyspace_id)
            .bind(a.kind.as_str())
            .bind(dedup)
            .bind(a.detected_at.millis())
            .bind(to_json(&a.detail))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn insert_notice(conn: &mut <$DB as sqlx::Database>::Connection, dedup: &str, at: Timestamp) -> Result<bool> {
            let r = sqlx::query("INSERT INTO notices (dedup, at) VALUES ($1, $2) ON CONFLICT (dedup) DO NOTHING")
                .bind(dedup)
                .bind(at.millis())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn list_anomalies(pool: &sqlx::Pool<$DB>, f: &AnomalyFilter) -> Result<Vec<Anomaly>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {ANOMALY_COLS} FROM anomalies WHERE 1 = 1"));
            // Kinds this release knows only: a kind a newer release added (a rolling upgrade)
            // is left out of the list instead of failing it.
            let kinds: Vec<String> = AnomalyKind::ALL.iter().map(|k| k.as_str().to_string()).collect();
            push_in(&mut q, "kind", Some(&kinds));
            push_in(&mut q, "keyspace_id", f.keyspace_ids.as_deref());
            if let Some(k) = &f.key_id {
                q.push(" AND key_id = ").push_bind(k.clone());
            }
            if let Some(since) = f.since {
                q.push(" AND detected_at >= ").push_bind(since.millis());
            }
            if let Some((at, id)) = &f.page.after {
                q.push(" AND (detected_at < ").push_bind(*at);
                q.push(" OR (detected_at = ").push_bind(*at);
                q.push(" AND id < ").push_bind(id.clone()).push("))");
            }
            q.push(" ORDER BY detected_at DESC, id DESC LIMIT ").push_bind(f.page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(anomaly_from_row).collect()
        }
    };
}
pub(super) use for_backend;

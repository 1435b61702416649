//! One SQL implementation of [`Store`], written once and instantiated for SQLite and
//! PostgreSQL. Both accept the same statements (`$n` parameters, `RETURNING`, `COALESCE`); the
//! few differences are macro parameters (the substring function) or live in each backend's
//! `open` and migrations.
//!
//! Write transactions start by updating the single `write_lock` row: that serializes writers
//! across every node (PostgreSQL row lock, SQLite's write lock) so the audit chain's `seq` has no
//! gaps and each event's `prev_hash` is the previous event's hash.

use async_trait::async_trait;
use keyward_core::audit::{event_hash, GENESIS_HASH};
use keyward_core::keyformat::KeyHash;
use keyward_core::kinds::{AnomalyKind, Granularity};
use keyward_core::model::{Actor, ActorKind, AuditEvent, Key, KeyStatus, Keyspace, Role, Token};
use keyward_core::time::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::Row;

use keyward_core::model::{Anomaly, Source, Webhook};

use crate::{
    AfterAttempt, AnomalyFilter, Attempt, AuditFilter, Bucket, Change, DueDelivery, KeyFilter,
    NewEvent, OutboxEvent, Page, Result, Store, StoreError, StoreTx, TimeCursor, Totals,
    UsageDelta, MAX_SOURCES_PER_KEY,
};

const KEY_COLS: &str = "id, keyspace_id, name, owner, scopes, labels, meta, hash, start_chars, \
    end_chars, enabled, created_at, created_by, updated_at, expires_at, revoked_at, revoked_by, \
    revoked_reason, rotated_from, rotated_to, last_used_at, call_count, denied_count, ratelimit, \
    remaining, allowed_cidrs";
/// The columns read for a key: `remaining` is the unleased quota plus every node's lease.
/// The counters come from `key_counters` (see its migration).
const KEY_SELECT: &str = "id, keyspace_id, name, owner, scopes, labels, meta, hash, start_chars, \
    end_chars, enabled, created_at, created_by, updated_at, expires_at, revoked_at, revoked_by, \
    revoked_reason, rotated_from, rotated_to, \
    (SELECT c.last_used_at FROM key_counters c WHERE c.key_id = keys.id) AS last_used_at, \
    COALESCE((SELECT c.calls FROM key_counters c WHERE c.key_id = keys.id), 0) AS call_count, \
    COALESCE((SELECT c.denied FROM key_counters c WHERE c.key_id = keys.id), 0) AS denied_count, \
    ratelimit, \
    remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) FROM quota_leases q WHERE q.key_id = keys.id) AS BIGINT) AS remaining, \
    allowed_cidrs";
const KEYSPACE_COLS: &str = "id, name, prefix, policy, created_at, updated_at";
const TOKEN_COLS: &str = "id, name, role, keyspace_ids, created_at, created_by, expires_at, \
    revoked_at, revoked_by, revoked_reason, last_used_at";
const WEBHOOK_COLS: &str = "id, url, events, keyspace_id, created_at, created_by";
const ANOMALY_COLS: &str = "id, key_id, keyspace_id, kind, detected_at, detail";
const AUDIT_COLS: &str = "seq, id, at, actor_type, actor_id, actor_name, action, target_type, \
    target_id, reason, request_id, ip, changes, prev_hash, hash";

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(
            db.constraint()
                .map(str::to_string)
                .unwrap_or_else(|| db.message().to_string()),
        ),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Other(other.to_string()),
    }
}

fn json<T: DeserializeOwned>(col: &str, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Other(format!("corrupt JSON in column {col}: {e}")))
}

fn json_opt<T: DeserializeOwned>(col: &str, s: Option<String>) -> Result<Option<T>> {
    s.map(|s| json(col, &s)).transpose()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

fn hash_from(bytes: Vec<u8>) -> Result<KeyHash> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Other("corrupt hash column".into()))?;
    Ok(KeyHash(arr))
}

/// A backend's migrations: `(version, SQL)` from `migrations/<dir>/<file>`, in order.
/// Both backends have the same migrations, each in its own dialect: this is their one list.
macro_rules! migrations {
    ($dir:literal) => {
        migrations!($dir:
            1 => "0001_init.sql",
            2 => "0002_lifecycle_usage.sql",
            3 => "0003_users.sql",
            4 => "0004_quota_leases.sql",
            5 => "0005_usage_rollup.sql",
            6 => "0006_key_counters.sql",
        )
    };
    ($dir:literal: $($version:literal => $file:literal),* $(,)?) => {
        &[$(($version, include_str!(concat!("../migrations/", $dir, "/", $file)))),*]
    };
}

macro_rules! sql_backend {
    ($Store:ident, $Tx:ident, $DB:ty, $Row:ty, $name:literal, $instr:literal, $notify:literal, $unrolled:literal) => {
        fn get<'r, T>(r: &'r $Row, col: &str) -> Result<T>
        where
            T: sqlx::Decode<'r, $DB> + sqlx::Type<$DB>,
        {
            r.try_get(col).map_err(map_err)
        }

        fn key_from_row(r: &$Row) -> Result<Key> {
            Ok(Key {
                id: get(r, "id")?,
                keyspace_id: get(r, "keyspace_id")?,
                name: get(r, "name")?,
                owner: get(r, "owner")?,
                scopes: json("scopes", &get::<String>(r, "scopes")?)?,
                labels: json("labels", &get::<String>(r, "labels")?)?,
                meta: json("meta", &get::<String>(r, "meta")?)?,
                hash: hash_from(get(r, "hash")?)?,
                start: get(r, "start_chars")?,
                end: get(r, "end_chars")?,
                enabled: get(r, "enabled")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String>(r, "created_by")?)?,
                updated_at: Timestamp::from_millis(get(r, "updated_at")?),
                expires_at: ts(get(r, "expires_at")?),
                revoked_at: ts(get(r, "revoked_at")?),
                revoked_by: json_opt("revoked_by", get(r, "revoked_by")?)?,
                revoked_reason: get(r, "revoked_reason")?,
                rotated_from: get(r, "rotated_from")?,
                rotated_to: get(r, "rotated_to")?,
                last_used_at: ts(get(r, "last_used_at")?),
                call_count: get(r, "call_count")?,
                denied_count: get(r, "denied_count")?,
                ratelimit: json_opt("ratelimit", get(r, "ratelimit")?)?,
                remaining: get(r, "remaining")?,
                allowed_cidrs: json_opt("allowed_cidrs", get(r, "allowed_cidrs")?)?,
            })
        }

        fn keyspace_from_row(r: &$Row) -> Result<Keyspace> {
            Ok(Keyspace {
                id: get(r, "id")?,
                name: get(r, "name")?,
                prefix: get(r, "prefix")?,
                policy: json("policy", &get::<String>(r, "policy")?)?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                updated_at: Timestamp::from_millis(get(r, "updated_at")?),
            })
        }

        fn token_from_row(r: &$Row) -> Result<Token> {
            let role: String = get(r, "role")?;
            Ok(Token {
                id: get(r, "id")?,
                name: get(r, "name")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Other("corrupt role".into()))?,
                keyspace_ids: json_opt("keyspace_ids", get(r, "keyspace_ids")?)?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String>(r, "created_by")?)?,
                expires_at: ts(get(r, "expires_at")?),
                revoked_at: ts(get(r, "revoked_at")?),
                revoked_by: json_opt("revoked_by", get(r, "revoked_by")?)?,
                revoked_reason: get(r, "revoked_reason")?,
                last_used_at: ts(get(r, "last_used_at")?),
            })
        }

        fn webhook_from_row(r: &$Row) -> Result<Webhook> {
            Ok(Webhook {
                id: get(r, "id")?,
                url: get(r, "url")?,
                events: json("events", &get::<String>(r, "events")?)?,
                keyspace_id: get(r, "keyspace_id")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String>(r, "created_by")?)?,
            })
        }

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
                detail: json("detail", &get::<String>(r, "detail")?)?,
            })
        }

        async fn fetch_webhook<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Webhook>> {
            let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(webhook_from_row).transpose()
        }

        async fn keys_where(pool: &sqlx::Pool<$DB>, cond: &str, binds: &[i64], text: Option<&str>, limit: i64) -> Result<Vec<Key>> {
            let sql = format!("SELECT {KEY_SELECT} FROM keys WHERE {cond} ORDER BY created_at, id LIMIT {limit}");
            let mut q = sqlx::query(&sql);
            if let Some(t) = text {
                q = q.bind(t.to_string());
            }
            for b in binds {
                q = q.bind(*b);
            }
            let rows = q.fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(key_from_row).collect()
        }

        fn audit_from_row(r: &$Row) -> Result<AuditEvent> {
            let kind: String = get(r, "actor_type")?;
            Ok(AuditEvent {
                id: get(r, "id")?,
                seq: get(r, "seq")?,
                at: Timestamp::from_millis(get(r, "at")?),
                actor: Actor {
                    // An unknown actor type can only come from an edited row; keep it visible
                    // to the chain check rather than failing the read.
                    kind: ActorKind::parse(&kind).unwrap_or(ActorKind::System),
                    id: get(r, "actor_id")?,
                    name: get(r, "actor_name")?,
                },
                action: get(r, "action")?,
                target_type: get(r, "target_type")?,
                target_id: get(r, "target_id")?,
                reason: get(r, "reason")?,
                request_id: get(r, "request_id")?,
                ip: get(r, "ip")?,
                changes: json("changes", &get::<String>(r, "changes")?)?,
                prev_hash: get(r, "prev_hash")?,
                hash: get(r, "hash")?,
            })
        }

        async fn fetch_key<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Key>> {
            let sql = format!("SELECT {KEY_SELECT} FROM keys WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(key_from_row).transpose()
        }

        async fn fetch_keyspace<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Keyspace>> {
            let sql = format!("SELECT {KEYSPACE_COLS} FROM keyspaces WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(keyspace_from_row).transpose()
        }

        async fn fetch_token<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Token>> {
            let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(token_from_row).transpose()
        }

        const MINUTE: i64 = 60_000;

        async fn usage_in(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, deltas: &[UsageDelta]) -> Result<()> {
            // A batch is written in a few multi-row statements (not a few per key): a flush of
            // thousands of keys must cost the server little.
            const CHUNK: usize = 200;
            // One row per key (a batch may hold several deltas of one key).
            let mut counters: std::collections::BTreeMap<&str, (i64, i64, i64)> = std::collections::BTreeMap::new();
            for d in deltas {
                let c = counters.entry(d.key_id.as_str()).or_insert((0, 0, -1));
                c.0 += d.calls;
                c.1 += d.denied;
                c.2 = c.2.max(d.last_used_at.map(|t| t.millis()).unwrap_or(-1));
            }
            let counters: Vec<_> = counters.into_iter().collect();
            for chunk in counters.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("INSERT INTO key_counters (key_id, calls, denied, last_used_at) ");
                q.push_values(chunk, |mut b, (key_id, (calls, denied, last))| {
                    b.push_bind(key_id.to_string()).push_bind(*calls).push_bind(*denied).push_bind((*last >= 0).then_some(*last));
                });
                q.push(
                    " ON CONFLICT (key_id) DO UPDATE SET calls = key_counters.calls + excluded.calls, \
                     denied = key_counters.denied + excluded.denied, \
                     last_used_at = CASE WHEN excluded.last_used_at > COALESCE(key_counters.last_used_at, -1) \
                     THEN excluded.last_used_at ELSE key_counters.last_used_at END",
                );
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            // Minute buckets only (hours and days are rolled up by the sweep, see
            // `rollup_usage`), summed here so that each row appears once per statement.
            let mut rows: std::collections::BTreeMap<(&str, &str, i64, &str), i64> = std::collections::BTreeMap::new();
            for d in deltas {
                for (minute, code, n) in &d.buckets {
                    *rows.entry((d.key_id.as_str(), "m", minute.div_euclid(MINUTE) * MINUTE, code.as_str())).or_default() += *n;
                }
            }
            let rows: Vec<_> = rows.into_iter().collect();
            upsert_buckets(&mut *conn, &rows).await?;
            usage_rest(&mut *conn, node, deltas).await
        }

        /// Moves what minute buckets (of minutes before `before`) gained since the last roll-up
        /// into hours and days, at most `limit` minute buckets. The claiming update takes each
        /// minute's gain exactly once: on PostgreSQL a concurrent roll-up waits for the row and
        /// then finds nothing left to take; SQLite has one writer. On PostgreSQL rows are locked
        /// in primary key order, the order the flusher writes them in, so the two cannot
        /// deadlock; SQLite reads the batch from the partial index of un-rolled minutes
        /// (`$unrolled` is each backend's source of the batch).
        async fn rollup_in(conn: &mut <$DB as sqlx::Database>::Connection, before: Timestamp, limit: i64) -> Result<u64> {
            let sql = concat!(
                "UPDATE usage_buckets SET pending = usage_buckets.n - usage_buckets.rolled, rolled = usage_buckets.n \
                 FROM (SELECT key_id, granularity, start_at, code ",
                $unrolled,
                ") AS c WHERE usage_buckets.key_id = c.key_id AND usage_buckets.granularity = c.granularity \
                 AND usage_buckets.start_at = c.start_at AND usage_buckets.code = c.code \
                 AND usage_buckets.n <> usage_buckets.rolled \
                 RETURNING usage_buckets.key_id, usage_buckets.start_at, usage_buckets.code, usage_buckets.pending"
            );
            let taken = sqlx::query(sql)
                .bind(before.millis())
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
            let mut minutes = Vec::with_capacity(taken.len());
            for r in &taken {
                minutes.push((get::<String>(r, "key_id")?, get::<i64>(r, "start_at")?, get::<String>(r, "code")?, get::<i64>(r, "pending")?));
            }
            let mut rows: std::collections::BTreeMap<(&str, &str, i64, &str), i64> = std::collections::BTreeMap::new();
            for (key_id, minute, code, n) in &minutes {
                for g in [Granularity::Hour, Granularity::Day] {
                    let len = g.millis();
                    *rows.entry((key_id.as_str(), g.code(), minute.div_euclid(len) * len, code.as_str())).or_default() += *n;
                }
            }
            let rows: Vec<_> = rows.into_iter().collect();
            upsert_buckets(&mut *conn, &rows).await?;
            Ok(minutes.len() as u64)
        }

        /// Bucket rows of one granularity, with (for hours and days) what minute buckets hold
        /// that is not rolled up yet, in one statement (one snapshot: a roll-up in between can
        /// neither hide nor double a count). `key_filter` appends the key condition.
        async fn buckets_in<'e, E>(
            exec: E,
            granularity: Granularity,
            from: Timestamp,
            to: Timestamp,
            key_filter: &(dyn Fn(&mut sqlx::QueryBuilder<'_, $DB>) + Sync),
        ) -> Result<Vec<Bucket>>
        where
            E: sqlx::Executor<'e, Database = $DB>,
        {
            let len = granularity.millis();
            let mut q = sqlx::QueryBuilder::<$DB>::new("SELECT key_id, start_at, code, n FROM usage_buckets WHERE granularity = ");
            q.push_bind(granularity.code());
            q.push(" AND start_at >= ").push_bind(from.millis());
            q.push(" AND start_at < ").push_bind(to.millis());
            key_filter(&mut q);
            if len != MINUTE {
                // Minute m belongs to bucket floor(m); floor(m) in [from, to) <=> m in [ceil(from), ceil(to)).
                let ceil = |t: i64| t.div_euclid(len) * len + if t.rem_euclid(len) == 0 { 0 } else { len };
                q.push(" UNION ALL SELECT key_id, start_at, code, n - rolled AS n FROM usage_buckets WHERE granularity = 'm' AND n <> rolled");
                q.push(" AND start_at >= ").push_bind(ceil(from.millis()));
                q.push(" AND start_at < ").push_bind(ceil(to.millis()));
                key_filter(&mut q);
            }
            let rows = q.build().fetch_all(exec).await.map_err(map_err)?;
            let mut sums: std::collections::BTreeMap<(i64, String, String), i64> = std::collections::BTreeMap::new();
            for r in &rows {
                let start = get::<i64>(r, "start_at")?.div_euclid(len) * len;
                *sums.entry((start, get(r, "key_id")?, get(r, "code")?)).or_default() += get::<i64>(r, "n")?;
            }
            Ok(sums
                .into_iter()
                .map(|((start, key_id, code), n)| Bucket { key_id, start: Timestamp::from_millis(start), code, n })
                .collect())
        }

        async fn upsert_buckets(
            conn: &mut <$DB as sqlx::Database>::Connection,
            rows: &[((&str, &str, i64, &str), i64)],
        ) -> Result<()> {
            const CHUNK: usize = 200;
            for chunk in rows.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("INSERT INTO usage_buckets (key_id, granularity, start_at, code, n) ");
                q.push_values(chunk, |mut b, ((key_id, g, start, code), n)| {
                    b.push_bind(key_id.to_string())
                        .push_bind(g.to_string())
                        .push_bind(*start)
                        .push_bind(code.to_string())
                        .push_bind(*n);
                });
                q.push(" ON CONFLICT (key_id, granularity, start_at, code) DO UPDATE SET n = usage_buckets.n + excluded.n");
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        async fn usage_rest(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, deltas: &[UsageDelta]) -> Result<()> {
            for d in deltas {
                if d.consumed != 0 {
                    // Quota is spent from this node's lease (see `lease_quota`).
                    sqlx::query("UPDATE quota_leases SET amount = amount - $3, \
                         updated_at = CASE WHEN $4 > updated_at THEN $4 ELSE updated_at END WHERE key_id = $1 AND node = $2")
                        .bind(&d.key_id)
                        .bind(node)
                        .bind(d.consumed)
                        .bind(d.last_used_at.map(|t| t.millis()).unwrap_or(0))
                        .execute(&mut *conn)
                        .await
                        .map_err(map_err)?;
                }
                for (ip, first, last, n) in &d.sources {
                    sqlx::query(
                        "INSERT INTO key_sources (key_id, ip, first_seen, last_seen, n) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (key_id, ip) DO UPDATE SET n = key_sources.n + excluded.n, \
                         last_seen = CASE WHEN excluded.last_seen > key_sources.last_seen THEN excluded.last_seen ELSE key_sources.last_seen END",
                    )
                    .bind(&d.key_id)
                    .bind(ip)
                    .bind(first.millis())
                    .bind(last.millis())
                    .bind(*n)
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
                }
                if !d.sources.is_empty() {
                    sqlx::query(
                        "DELETE FROM key_sources WHERE key_id = $1 AND ip NOT IN \
                         (SELECT ip FROM key_sources WHERE key_id = $1 ORDER BY last_seen DESC, ip LIMIT $2)",
                    )
                    .bind(&d.key_id)
                    .bind(MAX_SOURCES_PER_KEY)
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
                }
            }
            Ok(())
        }

        fn push_after_time(q: &mut sqlx::QueryBuilder<'_, $DB>, after: &Option<TimeCursor>) {
            if let Some((at, id)) = after {
                q.push(" AND (created_at < ").push_bind(*at);
                q.push(" OR (created_at = ").push_bind(*at);
                q.push(" AND id < ").push_bind(id.clone()).push("))");
            }
        }

        fn push_in(q: &mut sqlx::QueryBuilder<'_, $DB>, col: &str, ids: Option<&[String]>) {
            if let Some(ids) = ids {
                if ids.is_empty() {
                    q.push(" AND 1 = 0");
                    return;
                }
                q.push(format!(" AND {col} IN ("));
                let mut sep = q.separated(", ");
                for id in ids {
                    sep.push_bind(id.clone());
                }
                q.push(")");
            }
        }

        /// Database-side form of [`Key::status`].
        fn push_status(q: &mut sqlx::QueryBuilder<'_, $DB>, status: KeyStatus, now: i64) {
            let live = |q: &mut sqlx::QueryBuilder<'_, $DB>| {
                q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ").push_bind(now).push(")");
            };
            match status {
                KeyStatus::Revoked => {
                    q.push(" AND revoked_at IS NOT NULL");
                }
                KeyStatus::Expired => {
                    q.push(" AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ").push_bind(now);
                }
                KeyStatus::Disabled => {
                    live(q);
                    q.push(" AND NOT enabled");
                }
                KeyStatus::Rotating => {
                    live(q);
                    q.push(" AND enabled AND rotated_to IS NOT NULL");
                }
                KeyStatus::Active => {
                    live(q);
                    q.push(" AND enabled AND rotated_to IS NULL");
                }
            }
        }

        pub struct $Tx {
            pub(crate) tx: sqlx::Transaction<'static, $DB>,
            node: String,
        }

        #[async_trait]
        impl StoreTx for $Tx {
            fn users(&mut self) -> &mut dyn crate::users::UserTx {
                self
            }

            async fn keyspace(&mut self, id: &str) -> Result<Option<Keyspace>> {
                fetch_keyspace(&mut *self.tx, id).await
            }

            async fn insert_keyspace(&mut self, ks: &Keyspace) -> Result<()> {
                let sql = format!("INSERT INTO keyspaces ({KEYSPACE_COLS}) VALUES ($1, $2, $3, $4, $5, $6)");
                sqlx::query(&sql)
                    .bind(&ks.id)
                    .bind(&ks.name)
                    .bind(&ks.prefix)
                    .bind(to_json(&ks.policy))
                    .bind(ks.created_at.millis())
                    .bind(ks.updated_at.millis())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn update_keyspace(&mut self, ks: &Keyspace) -> Result<()> {
                sqlx::query("UPDATE keyspaces SET name = $2, policy = $3, updated_at = $4 WHERE id = $1")
                    .bind(&ks.id)
                    .bind(&ks.name)
                    .bind(to_json(&ks.policy))
                    .bind(ks.updated_at.millis())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn key(&mut self, id: &str) -> Result<Option<Key>> {
                fetch_key(&mut *self.tx, id).await
            }

            async fn insert_key(&mut self, k: &Key) -> Result<()> {
                let sql = format!(
                    "INSERT INTO keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                     $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
                );
                sqlx::query(&sql)
                    .bind(&k.id)
                    .bind(&k.keyspace_id)
                    .bind(&k.name)
                    .bind(&k.owner)
                    .bind(to_json(&k.scopes))
                    .bind(to_json(&k.labels))
                    .bind(to_json(&k.meta))
                    .bind(k.hash.0.to_vec())
                    .bind(&k.start)
                    .bind(&k.end)
                    .bind(k.enabled)
                    .bind(k.created_at.millis())
                    .bind(to_json(&k.created_by))
                    .bind(k.updated_at.millis())
                    .bind(k.expires_at.map(Timestamp::millis))
                    .bind(k.revoked_at.map(Timestamp::millis))
                    .bind(k.revoked_by.as_ref().map(to_json))
                    .bind(&k.revoked_reason)
                    .bind(&k.rotated_from)
                    .bind(&k.rotated_to)
                    .bind(k.last_used_at.map(Timestamp::millis))
                    .bind(k.call_count)
                    .bind(k.denied_count)
                    .bind(k.ratelimit.as_ref().map(to_json))
                    .bind(k.remaining)
                    .bind(k.allowed_cidrs.as_ref().map(to_json))
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                if k.call_count != 0 || k.denied_count != 0 || k.last_used_at.is_some() {
                    sqlx::query("INSERT INTO key_counters (key_id, calls, denied, last_used_at) VALUES ($1, $2, $3, $4)")
                        .bind(&k.id)
                        .bind(k.call_count)
                        .bind(k.denied_count)
                        .bind(k.last_used_at.map(Timestamp::millis))
                        .execute(&mut *self.tx)
                        .await
                        .map_err(map_err)?;
                }
                self.feed(k).await
            }

            async fn update_key(&mut self, k: &Key) -> Result<()> {
                sqlx::query(
                    "UPDATE keys SET name = $2, owner = $3, scopes = $4, labels = $5, meta = $6, enabled = $7, \
                     updated_at = $8, expires_at = $9, revoked_at = $10, revoked_by = $11, revoked_reason = $12, \
                     rotated_to = $13, ratelimit = $14, allowed_cidrs = $15 WHERE id = $1",
                )
                .bind(&k.id)
                .bind(&k.name)
                .bind(&k.owner)
                .bind(to_json(&k.scopes))
                .bind(to_json(&k.labels))
                .bind(to_json(&k.meta))
                .bind(k.enabled)
                .bind(k.updated_at.millis())
                .bind(k.expires_at.map(Timestamp::millis))
                .bind(k.revoked_at.map(Timestamp::millis))
                .bind(k.revoked_by.as_ref().map(to_json))
                .bind(&k.revoked_reason)
                .bind(&k.rotated_to)
                .bind(k.ratelimit.as_ref().map(to_json))
                .bind(k.allowed_cidrs.as_ref().map(to_json))
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                self.feed(k).await
            }

            async fn set_remaining(&mut self, id: &str, remaining: Option<i64>) -> Result<()> {
                sqlx::query("UPDATE keys SET remaining = $2 WHERE id = $1")
                    .bind(id)
                    .bind(remaining)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                // A quota set anew voids every node's lease of the old one.
                sqlx::query("DELETE FROM quota_leases WHERE key_id = $1")
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO change_feed (key_id, key_hash, at, origin, quota) \
                     SELECT id, hash, updated_at, $2, $3 FROM keys WHERE id = $1",
                )
                .bind(id)
                .bind(&self.node)
                .bind(true)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                if !$notify.is_empty() {
                    sqlx::query($notify).execute(&mut *self.tx).await.map_err(map_err)?;
                }
                Ok(())
            }

            async fn live_keys_of_owner(
                &mut self,
                owner: &str,
                keyspace_ids: Option<&[String]>,
                now: Timestamp,
            ) -> Result<Vec<Key>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_SELECT} FROM keys WHERE owner = "));
                q.push_bind(owner.to_string());
                q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                    .push_bind(now.millis())
                    .push(")");
                push_in(&mut q, "keyspace_id", keyspace_ids);
                q.push(" ORDER BY created_at, id");
                let rows = q.build().fetch_all(&mut *self.tx).await.map_err(map_err)?;
                rows.iter().map(key_from_row).collect()
            }

            async fn apply_usage(&mut self, deltas: &[UsageDelta]) -> Result<()> {
                usage_in(&mut *self.tx, &self.node, deltas).await
            }

            async fn token(&mut self, id: &str) -> Result<Option<Token>> {
                fetch_token(&mut *self.tx, id).await
            }

            async fn insert_token(&mut self, t: &Token, hash: &KeyHash) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tokens (id, name, role, keyspace_ids, hash, created_at, created_by, expires_at, \
                     revoked_at, revoked_by, revoked_reason, last_used_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(t.role.as_str())
                .bind(t.keyspace_ids.as_ref().map(to_json))
                .bind(hash.0.to_vec())
                .bind(t.created_at.millis())
                .bind(to_json(&t.created_by))
                .bind(t.expires_at.map(Timestamp::millis))
                .bind(t.revoked_at.map(Timestamp::millis))
                .bind(t.revoked_by.as_ref().map(to_json))
                .bind(&t.revoked_reason)
                .bind(t.last_used_at.map(Timestamp::millis))
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn update_token(&mut self, t: &Token) -> Result<()> {
                sqlx::query("UPDATE tokens SET name = $2, revoked_at = $3, revoked_by = $4, revoked_reason = $5 WHERE id = $1")
                    .bind(&t.id)
                    .bind(&t.name)
                    .bind(t.revoked_at.map(Timestamp::millis))
                    .bind(t.revoked_by.as_ref().map(to_json))
                    .bind(&t.revoked_reason)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn append_audit(&mut self, e: NewEvent) -> Result<AuditEvent> {
                let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                let (seq, prev_hash) = match last {
                    Some(r) => (get::<i64>(&r, "seq")? + 1, get::<String>(&r, "hash")?),
                    None => (1, GENESIS_HASH.to_string()),
                };
                let mut event = AuditEvent {
                    id: e.id,
                    seq,
                    at: e.at,
                    actor: e.actor,
                    action: e.action.as_str().to_string(),
                    target_type: e.target_type.as_str().to_string(),
                    target_id: e.target_id,
                    reason: e.reason,
                    request_id: e.request_id,
                    ip: e.ip,
                    changes: e.changes,
                    prev_hash,
                    hash: String::new(),
                };
                // Hash what will be read back: the changes as they round-trip through JSON text.
                let changes_text = to_json(&event.changes);
                event.changes = json("changes", &changes_text)?;
                event.hash = event_hash(&event);
                let sql = format!(
                    "INSERT INTO audit_events ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                );
                sqlx::query(&sql)
                    .bind(event.seq)
                    .bind(&event.id)
                    .bind(event.at.millis())
                    .bind(event.actor.kind.as_str())
                    .bind(&event.actor.id)
                    .bind(&event.actor.name)
                    .bind(&event.action)
                    .bind(&event.target_type)
                    .bind(&event.target_id)
                    .bind(&event.reason)
                    .bind(&event.request_id)
                    .bind(&event.ip)
                    .bind(changes_text)
                    .bind(&event.prev_hash)
                    .bind(&event.hash)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(event)
            }

            async fn enqueue(&mut self, e: &OutboxEvent) -> Result<()> {
                let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks");
                let rows = sqlx::query(&sql).fetch_all(&mut *self.tx).await.map_err(map_err)?;
                let mut hooks = Vec::new();
                for r in &rows {
                    let hook = webhook_from_row(r)?;
                    let kind_ok = hook.events.iter().any(|t| t == &e.kind);
                    let ks_ok = hook.keyspace_id.is_none() || hook.keyspace_id == e.keyspace_id;
                    if kind_ok && ks_ok {
                        hooks.push(hook);
                    }
                }
                // Only events that some webhook wants are kept.
                if hooks.is_empty() {
                    return Ok(());
                }
                sqlx::query("INSERT INTO webhook_events (id, type, at, keyspace_id, key_id, body) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(&e.id)
                    .bind(&e.kind)
                    .bind(e.at.millis())
                    .bind(&e.keyspace_id)
                    .bind(&e.key_id)
                    .bind(&e.body)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                for hook in &hooks {
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, attempts, next_at, lease_until, state, created_at) \
                         VALUES ($1, $2, $3, 0, $4, NULL, 'pending', $4)",
                    )
                    .bind(keyward_core::id::new_id("dlv", e.at))
                    .bind(&hook.id)
                    .bind(&e.id)
                    .bind(e.at.millis())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                }
                Ok(())
            }

            async fn insert_webhook(&mut self, h: &Webhook, secret: &str) -> Result<()> {
                let sql = format!("INSERT INTO webhooks ({WEBHOOK_COLS}, secret) VALUES ($1, $2, $3, $4, $5, $6, $7)");
                sqlx::query(&sql)
                    .bind(&h.id)
                    .bind(&h.url)
                    .bind(to_json(&h.events))
                    .bind(&h.keyspace_id)
                    .bind(h.created_at.millis())
                    .bind(to_json(&h.created_by))
                    .bind(secret)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn webhook(&mut self, id: &str) -> Result<Option<Webhook>> {
                fetch_webhook(&mut *self.tx, id).await
            }

            async fn delete_webhook(&mut self, id: &str) -> Result<()> {
                for sql in [
                    "DELETE FROM webhook_deliveries WHERE webhook_id = $1",
                    "DELETE FROM webhooks WHERE id = $1",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *self.tx).await.map_err(map_err)?;
                }
                Ok(())
            }

            async fn mark_expired(&mut self, id: &str, now: Timestamp) -> Result<bool> {
                let r = sqlx::query(
                    "UPDATE keys SET expired_at = $2 WHERE id = $1 AND expired_at IS NULL AND revoked_at IS NULL \
                     AND expires_at IS NOT NULL AND expires_at <= $2",
                )
                .bind(id)
                .bind(now.millis())
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() == 1)
            }

            async fn mark_warned(&mut self, id: &str, now: Timestamp) -> Result<bool> {
                let r = sqlx::query("UPDATE keys SET warned_at = $2 WHERE id = $1 AND warned_at IS NULL")
                    .bind(id)
                    .bind(now.millis())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected() == 1)
            }

            async fn insert_anomaly(&mut self, a: &Anomaly, dedup: &str) -> Result<bool> {
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
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() == 1)
            }

            async fn copy_sources(&mut self, from_key: &str, to_key: &str) -> Result<()> {
                sqlx::query(
                    "INSERT INTO key_sources (key_id, ip, first_seen, last_seen, n) \
                     SELECT $2, ip, first_seen, last_seen, n FROM key_sources WHERE key_id = $1 ON CONFLICT DO NOTHING",
                )
                .bind(from_key)
                .bind(to_key)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn commit(self: Box<Self>) -> Result<()> {
                self.tx.commit().await.map_err(map_err)
            }
        }

        impl $Tx {
            async fn feed(&mut self, k: &Key) -> Result<()> {
                sqlx::query("INSERT INTO change_feed (key_id, key_hash, at, origin) VALUES ($1, $2, $3, $4)")
                    .bind(&k.id)
                    .bind(k.hash.0.to_vec())
                    .bind(k.updated_at.millis())
                    .bind(&self.node)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                if !$notify.is_empty() {
                    // Delivered at commit; PostgreSQL folds repeats within one transaction.
                    sqlx::query($notify).execute(&mut *self.tx).await.map_err(map_err)?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $Store {
            fn users(&self) -> &dyn crate::users::UserStore {
                self
            }

            fn backend(&self) -> &'static str {
                $name
            }

            fn node_id(&self) -> &str {
                &self.node
            }

            fn change_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
                self.signal()
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
                Ok(())
            }

            async fn begin(&self) -> Result<Box<dyn StoreTx>> {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                sqlx::query("UPDATE write_lock SET n = n + 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                Ok(Box::new($Tx { tx, node: self.node.clone() }))
            }

            async fn keyspace(&self, id: &str) -> Result<Option<Keyspace>> {
                fetch_keyspace(&self.pool, id).await
            }

            async fn list_keyspaces(&self, ids: Option<&[String]>, page: &Page<TimeCursor>) -> Result<Vec<Keyspace>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEYSPACE_COLS} FROM keyspaces WHERE 1 = 1"));
                push_in(&mut q, "id", ids);
                push_after_time(&mut q, &page.after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(keyspace_from_row).collect()
            }

            async fn key(&self, id: &str) -> Result<Option<Key>> {
                fetch_key(&self.pool, id).await
            }

            async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>> {
                let sql = format!("SELECT {KEY_SELECT} FROM keys WHERE hash = $1");
                let row = sqlx::query(&sql).bind(hash.0.to_vec()).fetch_optional(&self.pool).await.map_err(map_err)?;
                row.as_ref().map(key_from_row).transpose()
            }

            async fn list_keys(&self, f: &KeyFilter) -> Result<Vec<Key>> {
                let now = f.now.millis();
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_SELECT} FROM keys WHERE 1 = 1"));
                push_in(&mut q, "keyspace_id", f.keyspace_ids.as_deref());
                if let Some(owner) = &f.owner {
                    q.push(" AND owner = ").push_bind(owner.clone());
                }
                if let Some(status) = f.status {
                    push_status(&mut q, status, now);
                }
                if let Some((k, v)) = &f.label {
                    // Labels are stored as compact JSON of a sorted map: `"k":"v"` occurs in the
                    // text exactly when the key has that label.
                    let needle = format!("{}:{}", to_json(k), to_json(v));
                    q.push(concat!(" AND ", $instr, "(labels, ")).push_bind(needle).push(") > 0");
                }
                if let Some(s) = &f.name_contains {
                    q.push(concat!(" AND ", $instr, "(lower(name), lower(")).push_bind(s.clone()).push(")) > 0");
                }
                if let Some(secs) = f.unused_for_secs {
                    let cutoff = f.now.plus_secs(-secs).millis();
                    q.push(" AND COALESCE((SELECT c.last_used_at FROM key_counters c WHERE c.key_id = keys.id), created_at) <= ").push_bind(cutoff);
                }
                push_after_time(&mut q, &f.page.after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(f.page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(key_from_row).collect()
            }

            async fn token(&self, id: &str) -> Result<Option<Token>> {
                fetch_token(&self.pool, id).await
            }

            async fn token_by_hash(&self, hash: &KeyHash) -> Result<Option<Token>> {
                let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1");
                let row = sqlx::query(&sql).bind(hash.0.to_vec()).fetch_optional(&self.pool).await.map_err(map_err)?;
                row.as_ref().map(token_from_row).transpose()
            }

            async fn list_tokens(&self, page: &Page<TimeCursor>) -> Result<Vec<Token>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {TOKEN_COLS} FROM tokens WHERE 1 = 1"));
                push_after_time(&mut q, &page.after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(token_from_row).collect()
            }

            async fn touch_token(&self, id: &str, at: Timestamp) -> Result<()> {
                sqlx::query("UPDATE tokens SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {AUDIT_COLS} FROM audit_events WHERE 1 = 1"));
                if let Some(v) = &f.target_id {
                    q.push(" AND target_id = ").push_bind(v.clone());
                }
                if let Some(v) = &f.actor_id {
                    q.push(" AND actor_id = ").push_bind(v.clone());
                }
                if let Some(v) = &f.action {
                    q.push(" AND action = ").push_bind(v.clone());
                }
                if let Some(v) = f.from {
                    q.push(" AND at >= ").push_bind(v.millis());
                }
                if let Some(v) = f.to {
                    q.push(" AND at < ").push_bind(v.millis());
                }
                if let Some(seq) = f.page.after {
                    q.push(" AND seq < ").push_bind(seq);
                }
                q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(audit_from_row).collect()
            }

            async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEvent>> {
                let sql = format!("SELECT {AUDIT_COLS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2");
                let rows = sqlx::query(&sql).bind(after_seq).bind(limit).fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(audit_from_row).collect()
            }

            async fn apply_usage(&self, deltas: &[UsageDelta]) -> Result<()> {
                if deltas.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                usage_in(&mut *tx, &self.node, deltas).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn webhook(&self, id: &str) -> Result<Option<Webhook>> {
                fetch_webhook(&self.pool, id).await
            }

            async fn list_webhooks(&self, page: &Page<TimeCursor>) -> Result<Vec<Webhook>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE 1 = 1"));
                push_after_time(&mut q, &page.after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(webhook_from_row).collect()
            }

            async fn due_deliveries(&self, now: Timestamp, limit: i64) -> Result<Vec<DueDelivery>> {
                let rows = sqlx::query(
                    "SELECT d.id, d.webhook_id, w.url, w.secret, d.event_id, e.type, e.body, d.attempts, d.created_at \
                     FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id JOIN webhook_events e ON e.id = d.event_id \
                     WHERE d.state = 'pending' AND d.next_at <= $1 AND (d.lease_until IS NULL OR d.lease_until < $1) \
                     ORDER BY d.next_at, d.id LIMIT $2",
                )
                .bind(now.millis())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(DueDelivery {
                            id: get(r, "id")?,
                            webhook_id: get(r, "webhook_id")?,
                            url: get(r, "url")?,
                            secret: get(r, "secret")?,
                            event_id: get(r, "event_id")?,
                            kind: get(r, "type")?,
                            body: get(r, "body")?,
                            attempts: get(r, "attempts")?,
                            created_at: Timestamp::from_millis(get(r, "created_at")?),
                        })
                    })
                    .collect()
            }

            async fn claim_delivery(&self, id: &str, now: Timestamp, lease_until: Timestamp) -> Result<bool> {
                let r = sqlx::query(
                    "UPDATE webhook_deliveries SET lease_until = $3 WHERE id = $1 AND state = 'pending' \
                     AND (lease_until IS NULL OR lease_until < $2)",
                )
                .bind(id)
                .bind(now.millis())
                .bind(lease_until.millis())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(r.rows_affected() == 1)
            }

            async fn finish_attempt(&self, delivery_id: &str, webhook_id: &str, a: &Attempt, after: AfterAttempt) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO webhook_attempts (id, webhook_id, delivery_id, event_id, type, attempt, status_code, error, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&a.id)
                .bind(webhook_id)
                .bind(delivery_id)
                .bind(&a.event_id)
                .bind(&a.kind)
                .bind(a.attempt)
                .bind(a.status_code)
                .bind(&a.error)
                .bind(a.at.millis())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let (state, next) = match after {
                    AfterAttempt::Delivered => ("done", a.at.millis()),
                    AfterAttempt::GiveUp => ("failed", a.at.millis()),
                    AfterAttempt::RetryAt(t) => ("pending", t.millis()),
                };
                sqlx::query("UPDATE webhook_deliveries SET attempts = $2, state = $3, next_at = $4, lease_until = NULL WHERE id = $1")
                    .bind(delivery_id)
                    .bind(a.attempt)
                    .bind(state)
                    .bind(next)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)
            }

            async fn list_attempts(&self, webhook_id: &str, page: &Page<TimeCursor>) -> Result<Vec<Attempt>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(
                    "SELECT id, event_id, type, attempt, status_code, error, at FROM webhook_attempts WHERE webhook_id = ",
                );
                q.push_bind(webhook_id.to_string());
                if let Some((at, id)) = &page.after {
                    q.push(" AND (at < ").push_bind(*at);
                    q.push(" OR (at = ").push_bind(*at);
                    q.push(" AND id < ").push_bind(id.clone()).push("))");
                }
                q.push(" ORDER BY at DESC, id DESC LIMIT ").push_bind(page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(Attempt {
                            id: get(r, "id")?,
                            event_id: get(r, "event_id")?,
                            kind: get(r, "type")?,
                            attempt: get(r, "attempt")?,
                            status_code: get(r, "status_code")?,
                            error: get(r, "error")?,
                            at: Timestamp::from_millis(get(r, "at")?),
                        })
                    })
                    .collect()
            }

            async fn usage(&self, key_ids: Option<&[String]>, granularity: Granularity, from: Timestamp, to: Timestamp) -> Result<Vec<Bucket>> {
                buckets_in(&self.pool, granularity, from, to, &|q| push_in(q, "key_id", key_ids)).await
            }

            async fn minute_totals(&self, key_ids: &[String], from: Timestamp, to: Timestamp) -> Result<Vec<Totals>> {
                // CAST: PostgreSQL sums BIGINT into NUMERIC.
                let mut q = sqlx::QueryBuilder::<$DB>::new(
                    "SELECT key_id, CAST(SUM(CASE WHEN code = 'VALID' THEN n ELSE 0 END) AS BIGINT) AS valid, \
                     CAST(SUM(CASE WHEN code = 'VALID' THEN 0 ELSE n END) AS BIGINT) AS denied \
                     FROM usage_buckets WHERE granularity = 'm' AND start_at >= ",
                );
                q.push_bind(from.millis()).push(" AND start_at < ").push_bind(to.millis());
                push_in(&mut q, "key_id", Some(key_ids));
                q.push(" GROUP BY key_id");
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter()
                    .map(|r| Ok(Totals { key_id: get(r, "key_id")?, valid: get(r, "valid")?, denied: get(r, "denied")? }))
                    .collect()
            }

            async fn usage_of_keyspace(&self, keyspace_id: &str, granularity: Granularity, from: Timestamp, to: Timestamp) -> Result<Vec<Bucket>> {
                buckets_in(&self.pool, granularity, from, to, &|q| {
                    q.push(" AND key_id IN (SELECT id FROM keys WHERE keyspace_id = ").push_bind(keyspace_id.to_string()).push(")");
                })
                .await
            }

            async fn prune_usage(&self, granularity: Granularity, before: Timestamp) -> Result<u64> {
                // A minute bucket leaves only once its count is in its hour and day.
                let r = sqlx::query("DELETE FROM usage_buckets WHERE granularity = $1 AND start_at < $2 AND (granularity <> 'm' OR n = rolled)")
                    .bind(granularity.code())
                    .bind(before.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected())
            }

            async fn rollup_usage(&self, before: Timestamp) -> Result<u64> {
                // In batches, each its own transaction: locks on busy minute rows are held briefly.
                const BATCH: i64 = 5000;
                let mut total = 0;
                loop {
                    let mut tx = self.pool.begin().await.map_err(map_err)?;
                    let n = rollup_in(&mut *tx, before, BATCH).await?;
                    tx.commit().await.map_err(map_err)?;
                    total += n;
                    if n < BATCH as u64 {
                        return Ok(total);
                    }
                }
            }

            async fn sources(&self, key_id: &str) -> Result<Vec<Source>> {
                let rows = sqlx::query(
                    "SELECT ip, first_seen, last_seen, n FROM key_sources WHERE key_id = $1 ORDER BY last_seen DESC, ip",
                )
                .bind(key_id)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(Source {
                            ip: get(r, "ip")?,
                            first_seen: Timestamp::from_millis(get(r, "first_seen")?),
                            last_seen: Timestamp::from_millis(get(r, "last_seen")?),
                            count: get(r, "n")?,
                        })
                    })
                    .collect()
            }

            async fn known_sources(&self, key_id: &str) -> Result<Vec<String>> {
                let rows = sqlx::query("SELECT ip FROM key_sources WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(|r| get(r, "ip")).collect()
            }

            async fn list_anomalies(&self, f: &AnomalyFilter) -> Result<Vec<Anomaly>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {ANOMALY_COLS} FROM anomalies WHERE 1 = 1"));
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
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(anomaly_from_row).collect()
            }

            async fn expired_unmarked(&self, now: Timestamp, limit: i64) -> Result<Vec<Key>> {
                keys_where(&self.pool, "revoked_at IS NULL AND expired_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1", &[now.millis()], None, limit).await
            }

            async fn expiring_unwarned(&self, keyspace_id: &str, now: Timestamp, until: Timestamp, limit: i64) -> Result<Vec<Key>> {
                keys_where(
                    &self.pool,
                    "keyspace_id = $1 AND revoked_at IS NULL AND rotated_to IS NULL AND warned_at IS NULL AND expires_at IS NOT NULL \
                     AND expires_at > $2 AND expires_at <= $3",
                    &[now.millis(), until.millis()],
                    Some(keyspace_id),
                    limit,
                )
                .await
            }

            async fn inactive_since(&self, keyspace_id: &str, now: Timestamp, cutoff: Timestamp, limit: i64) -> Result<Vec<Key>> {
                keys_where(
                    &self.pool,
                    "keyspace_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
                     AND COALESCE((SELECT c.last_used_at FROM key_counters c WHERE c.key_id = keys.id), created_at) <= $3",
                    &[now.millis(), cutoff.millis()],
                    Some(keyspace_id),
                    limit,
                )
                .await
            }

            async fn lease_quota(&self, key_id: &str, want: i64, now: Timestamp) -> Result<Option<(i64, i64)>> {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                // Take the write lock first: leases across nodes are serialized.
                sqlx::query("UPDATE write_lock SET n = n + 1 WHERE id = 1").execute(&mut *tx).await.map_err(map_err)?;
                let row = sqlx::query("SELECT remaining FROM keys WHERE id = $1").bind(key_id).fetch_optional(&mut *tx).await.map_err(map_err)?;
                let Some(pool) = row.map(|r| get::<Option<i64>>(&r, "remaining")).transpose()?.flatten() else {
                    return Ok(None);
                };
                let take = want.clamp(0, pool.max(0));
                if take > 0 {
                    sqlx::query("UPDATE keys SET remaining = remaining - $2 WHERE id = $1")
                        .bind(key_id)
                        .bind(take)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    sqlx::query(
                        "INSERT INTO quota_leases (key_id, node, amount, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (key_id, node) DO UPDATE SET amount = quota_leases.amount + excluded.amount, updated_at = excluded.updated_at",
                    )
                    .bind(key_id)
                    .bind(&self.node)
                    .bind(take)
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)?;
                Ok(Some((take, pool - take)))
            }

            async fn return_lease(&self, key_id: &str, amount: i64) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                sqlx::query("UPDATE write_lock SET n = n + 1 WHERE id = 1").execute(&mut *tx).await.map_err(map_err)?;
                let r = sqlx::query("UPDATE quota_leases SET amount = amount - $3 WHERE key_id = $1 AND node = $2 AND amount >= $3")
                    .bind(key_id)
                    .bind(&self.node)
                    .bind(amount)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if r.rows_affected() == 1 {
                    sqlx::query("UPDATE keys SET remaining = remaining + $2 WHERE id = $1 AND remaining IS NOT NULL")
                        .bind(key_id)
                        .bind(amount)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                sqlx::query("DELETE FROM quota_leases WHERE key_id = $1 AND node = $2 AND amount <= 0")
                    .bind(key_id)
                    .bind(&self.node)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)
            }

            async fn reclaim_stale_leases(&self, older_than: Timestamp) -> Result<u64> {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                sqlx::query("UPDATE write_lock SET n = n + 1 WHERE id = 1").execute(&mut *tx).await.map_err(map_err)?;
                sqlx::query(
                    "UPDATE keys SET remaining = remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) FROM quota_leases q \
                     WHERE q.key_id = keys.id AND q.updated_at < $1 AND q.amount > 0) AS BIGINT) \
                     WHERE remaining IS NOT NULL AND id IN (SELECT key_id FROM quota_leases WHERE updated_at < $1)",
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

            async fn prune_history(&self, history_before: Timestamp, feed_before: Timestamp) -> Result<u64> {
                let mut n = 0;
                let statements = [
                    ("DELETE FROM webhook_attempts WHERE at < $1", history_before),
                    ("DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1", history_before),
                    (
                        "DELETE FROM webhook_events WHERE at < $1 AND id NOT IN (SELECT event_id FROM webhook_deliveries)",
                        history_before,
                    ),
                    ("DELETE FROM anomalies WHERE detected_at < $1", history_before),
                    ("DELETE FROM change_feed WHERE at < $1", feed_before),
                ];
                for (sql, before) in statements {
                    let r = sqlx::query(sql).bind(before.millis()).execute(&self.pool).await.map_err(map_err)?;
                    n += r.rows_affected();
                }
                Ok(n)
            }

            async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>> {
                let rows = sqlx::query("SELECT seq, key_id, key_hash, origin, quota FROM change_feed WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
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
                        })
                    })
                    .collect()
            }

            async fn change_head(&self) -> Result<i64> {
                let r = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS head FROM change_feed")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?;
                get(&r, "head")
            }
        }

        impl $Store {
            /// Runs this backend's migrations that have not run yet, in order.
            async fn migrate(conn: &mut <$DB as sqlx::Database>::Connection) -> Result<()> {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS keyward_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
                )
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
                for (version, sql) in MIGRATIONS {
                    let done = sqlx::query("SELECT version FROM keyward_migrations WHERE version = $1")
                        .bind(*version)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(map_err)?;
                    if done.is_some() {
                        continue;
                    }
                    let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(map_err)?;
                    sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(map_err)?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    sqlx::query("INSERT INTO keyward_migrations (version, applied_at) VALUES ($1, $2)")
                        .bind(*version)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    tx.commit().await.map_err(map_err)?;
                }
                Ok(())
            }
        }
    };
}

pub mod sqlite {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    };
    use sqlx::Sqlite;

    use super::*;

    const MIGRATIONS: &[(i64, &str)] = migrations!("sqlite");

    /// The embedded single-node backend: one SQLite file in WAL mode.
    #[derive(Clone)]
    pub struct SqliteStore {
        pub(crate) pool: SqlitePool,
        node: String,
    }

    impl SqliteStore {
        pub async fn open(url: &str) -> Result<Self> {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Other(format!("bad SQLite URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // The usage flusher rewrites the rows of every key used in the last second. Read
                // pages through a memory map (no copy per page read), keep more of them cached,
                // and checkpoint the WAL less often: a page rewritten every second is copied
                // into the database once per checkpoint, however often it was rewritten.
                .pragma("mmap_size", "1073741824")
                .pragma("cache_size", "-16384")
                .pragma("wal_autocheckpoint", "10000");
            // Connecting turns a new file into WAL, which takes a lock SQLite cannot wait for
            // (`busy_timeout` does not apply): when several processes open one new file at once,
            // a loser gets "database is locked" here at once, and tries again.
            let mut tries = 0;
            let pool = loop {
                let connected = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts.clone())
                    .await;
                match connected {
                    Ok(pool) => break pool,
                    Err(sqlx::Error::Database(db))
                        if tries < 100
                            && db
                                .code()
                                .and_then(|c| c.parse::<i64>().ok())
                                .is_some_and(|c| c & 0xff == 5) =>
                    {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(map_err(e)),
                }
            };
            let mut conn = pool.acquire().await.map_err(map_err)?;
            // Migrate under SQLite's write lock, taken up front: when several processes (nodes,
            // the CLI) open one new file at once, the first migrates and the others then find
            // the work done instead of failing on "table already exists". (PostgreSQL uses an
            // advisory lock for the same.)
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
                .await
                .map_err(map_err)?;
            Self::migrate(&mut tx).await?;
            tx.commit().await.map_err(map_err)?;
            drop(conn);
            Ok(Self {
                pool,
                node: keyward_core::keyformat::base62_random(16),
            })
        }
    }

    sql_backend!(
        SqliteStore,
        SqliteTx,
        Sqlite,
        SqliteRow,
        "sqlite",
        "instr",
        "",
        // The un-rolled minutes straight from their partial index, oldest first: a batch reads
        // its own rows only (the planner, without statistics, took the time index and read every
        // minute bucket before each batch). One writer: no lock order to keep.
        "FROM usage_buckets INDEXED BY usage_buckets_unrolled_idx \
         WHERE granularity = 'm' AND n <> rolled AND start_at < $1 ORDER BY start_at LIMIT $2"
    );

    impl SqliteStore {
        /// SQLite has no notifications; the follower polls.
        fn signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
            None
        }
    }
}

pub mod postgres {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
    use sqlx::Postgres;

    use super::*;

    const MIGRATIONS: &[(i64, &str)] = migrations!("postgres");
    /// Advisory lock id held while migrating, so nodes starting together migrate once.
    const MIGRATION_LOCK: i64 = 0x6b_6579_7761_7264; // "keyward" in ASCII

    /// The cluster backend: any number of nodes share one PostgreSQL database.
    #[derive(Clone)]
    pub struct PgStore {
        pub(crate) pool: PgPool,
        node: String,
        /// Signalled when a node commits a change (LISTEN/NOTIFY).
        changes: std::sync::Arc<tokio::sync::Notify>,
        listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl PgStore {
        pub async fn open(url: &str) -> Result<Self> {
            Self::open_in_schema(url, None).await
        }

        /// Opens the store inside `schema` (created when missing): each test gets its own.
        pub async fn open_in_schema(url: &str, schema: Option<&str>) -> Result<Self> {
            let mut opts = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::Other(format!("bad PostgreSQL URL: {e}")))?;
            if let Some(schema) = schema {
                if !schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(StoreError::Other("schema names are [a-z0-9_]".into()));
                }
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts)
                    .await
                    .map_err(map_err)?;
                let created = sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .execute(&mut conn)
                    .await
                    .map_err(map_err);
                match created {
                    // `IF NOT EXISTS` does not cover a concurrent CREATE: the loser gets a unique
                    // violation on pg_namespace, and the schema exists all the same.
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                opts = opts.options([("search_path", schema)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await
                .map_err(map_err)?;
            let mut conn = pool.acquire().await.map_err(map_err)?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            let migrated = Self::migrate(&mut conn).await;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            migrated?;
            drop(conn);
            Ok(Self {
                pool,
                node: keyward_core::keyformat::base62_random(16),
                changes: std::sync::Arc::default(),
                listening: std::sync::Arc::default(),
            })
        }
    }

    sql_backend!(
        PgStore,
        PgTx,
        Postgres,
        PgRow,
        "postgres",
        "strpos",
        "SELECT pg_notify('keyward_changes', '')",
        "FROM usage_buckets WHERE granularity = 'm' AND n <> rolled AND start_at < $1 \
         ORDER BY key_id, granularity, start_at, code LIMIT $2 FOR UPDATE"
    );

    impl PgStore {
        fn signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
            Some(self.start_listener())
        }

        /// Starts (once) a task that LISTENs for change notifications and signals `changes`.
        fn start_listener(&self) -> std::sync::Arc<tokio::sync::Notify> {
            let notify = self.changes.clone();
            if self
                .listening
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                return notify;
            }
            let pool = self.pool.clone();
            let signal = notify.clone();
            tokio::spawn(async move {
                loop {
                    match sqlx::postgres::PgListener::connect_with(&pool).await {
                        Ok(mut l) => {
                            if l.listen("keyward_changes").await.is_ok() {
                                while l.recv().await.is_ok() {
                                    signal.notify_one();
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "change listener: cannot connect"),
                    }
                    // Reconnect; the follower's polling covers the gap.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            notify
        }
    }
}

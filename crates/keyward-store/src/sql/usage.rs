//! Usage: the batches the verification path flushes (key counters, minute buckets, quota spent
//! from this node's lease, source addresses), the roll-up of minutes into hours and days, bucket
//! reads and totals, pruning, and each key's source addresses.
//!
//! Invariants: a flush writes minute buckets only; the roll-up moves each minute's gain into its
//! hour and day exactly once (`n - rolled`), and reads of hours and days add what is not rolled
//! up yet, in the same statement. A minute bucket is pruned only once it is rolled up. On
//! PostgreSQL the minutes not rolled up yet are found by a generated column, `dirty` (`n <>
//! rolled`, migration 0016), which no writer sets: a flush's addition leaves every indexed value
//! as it was. At most
//! [`MAX_SOURCES_PER_KEY`](crate::MAX_SOURCES_PER_KEY) source addresses are kept per key.

/// This file's SQL for one backend (`$unrolled`: where its roll-up reads a batch of un-rolled
/// minutes from, see `rollup_in`; `$gained`: the condition of a minute bucket with counts not
/// rolled up yet, as its index has it, see `buckets_in`; `$batch`: see [`upserts`]).
macro_rules! for_backend {
    ($DB:ty, $unrolled:literal, $keyset:literal, $gained:literal, $batch:ident) => {
        use keyward_core::kinds::Granularity;
        use keyward_core::model::Source;
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, map_err, push_in};
        use crate::{Bucket, MinuteCount, Result, SourceSeen, Totals, UsageDelta, MAX_SOURCES_PER_KEY};

        const MINUTE: i64 = 60_000;
        /// Keys an `IN` list holds at most.
        const KEYS_PER_STATEMENT: usize = 500;

        // ---- writing a batch ----

        crate::sql::usage::upserts!($DB, $batch);

        /// Writes a batch of usage counts in one transaction of its own.
        pub(super) async fn apply_usage(pool: &sqlx::Pool<$DB>, node: &str, deltas: &[UsageDelta]) -> Result<()> {
            if deltas.is_empty() {
                return Ok(());
            }
            let mut tx = pool.begin().await.map_err(map_err)?;
            apply_usage_in(&mut *tx, node, deltas).await?;
            tx.commit().await.map_err(map_err)
        }

        /// Writes a batch of usage counts in the caller's transaction.
        pub(super) async fn apply_usage_in(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, deltas: &[UsageDelta]) -> Result<()> {
            // A batch is written in a few multi-row statements (not a few per key): a flush of
            // thousands of keys must cost the server little.
            // One row per key (a batch may hold several deltas of one key).
            let mut counters: std::collections::BTreeMap<&str, (i64, i64, i64)> = std::collections::BTreeMap::new();
            // An identity's quota (`@` and its id) has only quota spent, no counters.
            for d in deltas.iter().filter(|d| !d.key_id.starts_with('@')) {
                let c = counters.entry(d.key_id.as_str()).or_insert((0, 0, -1));
                c.0 += d.calls;
                c.1 += d.denied;
                c.2 = c.2.max(d.last_used_at.map(|t| t.millis()).unwrap_or(-1));
            }
            let counters: Vec<_> = counters.into_iter().collect();
            write_counters(&mut *conn, &counters).await?;
            // Minute buckets only (hours and days are rolled up by the sweep, see
            // `rollup_usage`), summed here so that each row appears once per statement.
            let mut rows: std::collections::BTreeMap<(&str, &str, i64, &str), i64> = std::collections::BTreeMap::new();
            for d in deltas {
                for MinuteCount { minute_ms: minute, code, n } in &d.buckets {
                    *rows.entry((d.key_id.as_str(), "m", minute.div_euclid(MINUTE) * MINUTE, code.as_str())).or_default() += *n;
                }
            }
            let rows: Vec<_> = rows.into_iter().collect();
            upsert_buckets(&mut *conn, &rows).await?;
            usage_rest(&mut *conn, node, deltas).await
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
            }
            // Source addresses: one multi-row upsert per chunk (a batch may hold several deltas
            // of one key, merged here), then the keys of the batch beyond
            // `MAX_SOURCES_PER_KEY` lose their least recently seen addresses, in one statement
            // per chunk that reads only the index for keys within the limit.
            let mut seen: std::collections::BTreeMap<(&str, &str), (i64, i64, i64)> = std::collections::BTreeMap::new();
            for d in deltas {
                for SourceSeen { ip, first, last, count: n } in &d.sources {
                    let e = seen.entry((d.key_id.as_str(), ip.as_str())).or_insert((i64::MAX, i64::MIN, 0));
                    e.0 = e.0.min(first.millis());
                    e.1 = e.1.max(last.millis());
                    e.2 += *n;
                }
            }
            let seen: Vec<_> = seen.into_iter().collect();
            write_sources(&mut *conn, &seen).await?;
            let mut keys: Vec<String> = seen.iter().map(|((key_id, _), _)| key_id.to_string()).collect();
            keys.dedup();
            for chunk in keys.chunks(KEYS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$DB>::new(
                    "DELETE FROM key_sources WHERE (key_id, ip) IN (SELECT key_id, ip FROM (\
                     SELECT key_id, ip, ROW_NUMBER() OVER (PARTITION BY key_id ORDER BY last_seen DESC, ip) AS r \
                     FROM key_sources WHERE key_id IN (SELECT key_id FROM key_sources WHERE 1 = 1",
                );
                push_in(&mut q, "key_id", Some(chunk));
                q.push(" GROUP BY key_id HAVING COUNT(*) > ").push_bind(MAX_SOURCES_PER_KEY);
                q.push(")) AS ranked WHERE r > ").push_bind(MAX_SOURCES_PER_KEY).push(")");
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        // ---- roll-up and pruning ----

        pub(super) async fn rollup_usage(pool: &sqlx::Pool<$DB>, before: Timestamp) -> Result<u64> {
            // In batches, each its own transaction: locks on busy minute rows are held briefly.
            const BATCH: i64 = 5000;
            let mut total = 0;
            let mut after = (String::new(), i64::MIN, String::new());
            loop {
                let mut tx = pool.begin().await.map_err(map_err)?;
                let n = if $keyset {
                    rollup_in(&mut *tx, before, BATCH, &mut after).await?
                } else {
                    rollup_in_place(&mut *tx, before, BATCH).await?
                };
                tx.commit().await.map_err(map_err)?;
                total += n;
                if n < BATCH as u64 {
                    return Ok(total);
                }
            }
        }

        /// Moves what minute buckets (of minutes before `before`) gained since the last roll-up
        /// into hours and days, at most `limit` minute buckets. The claiming update takes each
        /// minute's gain exactly once: on PostgreSQL a concurrent roll-up waits for the row and
        /// then finds nothing left to take; SQLite has one writer. On PostgreSQL rows are locked
        /// in primary key order, the order the flusher writes them in, so the two cannot
        /// deadlock; SQLite reads the batch from the partial index of un-rolled minutes
        /// (`$unrolled` is each backend's source of the batch).
        /// `after`: where the batch starts, for backends that read it by key (`$keyset`); set to
        /// the batch's last row.
        async fn rollup_in(
            conn: &mut <$DB as sqlx::Database>::Connection,
            before: Timestamp,
            limit: i64,
            after: &mut (String, i64, String),
        ) -> Result<u64> {
            let sql = concat!(
                "UPDATE usage_buckets SET pending = usage_buckets.n - usage_buckets.rolled, rolled = usage_buckets.n \
                 FROM (SELECT key_id, granularity, start_at, code ",
                $unrolled,
                ") AS c WHERE usage_buckets.key_id = c.key_id AND usage_buckets.granularity = c.granularity \
                 AND usage_buckets.start_at = c.start_at AND usage_buckets.code = c.code \
                 AND usage_buckets.n <> usage_buckets.rolled \
                 RETURNING usage_buckets.key_id, usage_buckets.start_at, usage_buckets.code, usage_buckets.pending"
            );
            let mut q = sqlx::query(sql).bind(before.millis()).bind(limit);
            if $keyset {
                q = q.bind(after.0.clone()).bind(after.1).bind(after.2.clone());
            }
            let taken = q.fetch_all(&mut *conn).await.map_err(map_err)?;
            let mut minutes = Vec::with_capacity(taken.len());
            for r in &taken {
                minutes.push((get::<String, _>(r, "key_id")?, get::<i64, _>(r, "start_at")?, get::<String, _>(r, "code")?, get::<i64, _>(r, "pending")?));
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
            if let Some(last) = minutes.iter().max_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2))) {
                *after = (last.0.clone(), last.1, last.2.clone());
            }
            Ok(minutes.len() as u64)
        }

        /// [`rollup_in`] for a backend with one writer and its batch read from the index of
        /// un-rolled minutes (`$keyset` false, SQLite): the batch's gains go into hours and days
        /// and the batch is marked rolled by three statements in the database, without its rows
        /// coming out and going back. Each statement reads the same batch, the first `limit`
        /// un-rolled minutes in index order: the writes in between add hours and days, which are
        /// not in that index, and no other writer runs. Returns how many minutes were rolled.
        async fn rollup_in_place(conn: &mut <$DB as sqlx::Database>::Connection, before: Timestamp, limit: i64) -> Result<u64> {
            for g in [Granularity::Hour, Granularity::Day] {
                // floor(start_at / len) * len, for any sign, as `div_euclid` has it.
                let sql = format!(
                    "INSERT INTO usage_buckets (key_id, granularity, start_at, code, n) \
                     SELECT key_id, '{code}', start_at - (((start_at % {len}) + {len}) % {len}) AS s, code, SUM(n - rolled) \
                     FROM (SELECT key_id, start_at, code, n, rolled {batch}) AS c \
                     WHERE 1 = 1 GROUP BY key_id, s, code{conflict}",
                    code = g.code(),
                    len = g.millis(),
                    batch = $unrolled,
                    conflict = crate::sql::usage::BUCKETS_CONFLICT,
                );
                sqlx::query(&sql).bind(before.millis()).bind(limit).execute(&mut *conn).await.map_err(map_err)?;
            }
            let done = sqlx::query(concat!("UPDATE usage_buckets SET rolled = n WHERE rowid IN (SELECT rowid ", $unrolled, ")"))
                .bind(before.millis())
                .bind(limit)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(done.rows_affected())
        }

        pub(super) async fn prune_usage(pool: &sqlx::Pool<$DB>, granularity: Granularity, before: Timestamp) -> Result<u64> {
            // A minute bucket leaves only once its count is in its hour and day.
            let r = sqlx::query("DELETE FROM usage_buckets WHERE granularity = $1 AND start_at < $2 AND (granularity <> 'm' OR n = rolled)")
                .bind(granularity.code())
                .bind(before.millis())
                .execute(pool)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected())
        }

        // ---- reading buckets ----

        pub(super) async fn usage(pool: &sqlx::Pool<$DB>, key_ids: Option<&[String]>, granularity: Granularity, from: Timestamp, to: Timestamp) -> Result<Vec<Bucket>> {
            buckets_in(pool, granularity, from, to, &|q| push_in(q, "key_id", key_ids)).await
        }

        pub(super) async fn usage_of_keyspace(pool: &sqlx::Pool<$DB>, keyspace_id: &str, granularity: Granularity, from: Timestamp, to: Timestamp) -> Result<Vec<Bucket>> {
            buckets_in(pool, granularity, from, to, &|q| {
                q.push(" AND key_id IN (SELECT id FROM keys WHERE keyspace_id = ").push_bind(keyspace_id.to_string()).push(")");
            })
            .await
        }

        pub(super) async fn usage_of_owner(pool: &sqlx::Pool<$DB>, owner: &str, keyspace_ids: Option<&[String]>, granularity: Granularity, from: Timestamp, to: Timestamp) -> Result<Vec<Bucket>> {
            buckets_in(pool, granularity, from, to, &|q| {
                q.push(" AND key_id IN (SELECT id FROM keys WHERE owner = ").push_bind(owner.to_string());
                crate::sql::common::push_in(q, "keyspace_id", keyspace_ids);
                q.push(")");
            })
            .await
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
                q.push(concat!(" UNION ALL SELECT key_id, start_at, code, n - rolled AS n FROM usage_buckets WHERE granularity = 'm' AND ", $gained));
                q.push(" AND start_at >= ").push_bind(ceil(from.millis()));
                q.push(" AND start_at < ").push_bind(ceil(to.millis()));
                key_filter(&mut q);
            }
            let rows = q.build().fetch_all(exec).await.map_err(map_err)?;
            let mut sums: std::collections::BTreeMap<(i64, String, String), i64> = std::collections::BTreeMap::new();
            for r in &rows {
                let start = get::<i64, _>(r, "start_at")?.div_euclid(len) * len;
                *sums.entry((start, get(r, "key_id")?, get(r, "code")?)).or_default() += get::<i64, _>(r, "n")?;
            }
            Ok(sums
                .into_iter()
                .map(|((start, key_id, code), n)| Bucket { key_id, start: Timestamp::from_millis(start), code, n })
                .collect())
        }

        pub(super) async fn busy_minutes(pool: &sqlx::Pool<$DB>, from: Timestamp, to: Timestamp, valid_at_least: i64) -> Result<Vec<Bucket>> {
            // Through the time index: the minutes of the span, filtered there, not sent.
            let rows = sqlx::query(
                "SELECT key_id, start_at, code, n FROM usage_buckets WHERE granularity = 'm' \
                 AND start_at >= $1 AND start_at < $2 AND (code <> 'VALID' OR n >= $3)",
            )
            .bind(from.millis())
            .bind(to.millis())
            .bind(valid_at_least)
            .fetch_all(pool)
            .await
            .map_err(map_err)?;
            let mut out = rows
                .iter()
                .map(|r| {
                    Ok(Bucket {
                        key_id: get(r, "key_id")?,
                        start: Timestamp::from_millis(get(r, "start_at")?),
                        code: get(r, "code")?,
                        n: get(r, "n")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.sort_by(|a, b| (a.start, &a.key_id, &a.code).cmp(&(b.start, &b.key_id, &b.code)));
            Ok(out)
        }

        pub(super) async fn minute_totals(pool: &sqlx::Pool<$DB>, key_ids: &[String], from: Timestamp, to: Timestamp) -> Result<Vec<Totals>> {
            // CAST: PostgreSQL sums BIGINT into NUMERIC.
            let mut q = sqlx::QueryBuilder::<$DB>::new(
                "SELECT key_id, CAST(SUM(CASE WHEN code = 'VALID' THEN n ELSE 0 END) AS BIGINT) AS valid, \
                 CAST(SUM(CASE WHEN code = 'VALID' THEN 0 ELSE n END) AS BIGINT) AS denied \
                 FROM usage_buckets WHERE granularity = 'm' AND start_at >= ",
            );
            q.push_bind(from.millis()).push(" AND start_at < ").push_bind(to.millis());
            push_in(&mut q, "key_id", Some(key_ids));
            q.push(" GROUP BY key_id");
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter()
                .map(|r| Ok(Totals { key_id: get(r, "key_id")?, valid: get(r, "valid")?, denied: get(r, "denied")? }))
                .collect()
        }

        // ---- source addresses ----

        pub(super) async fn sources(pool: &sqlx::Pool<$DB>, key_id: &str) -> Result<Vec<Source>> {
            let rows = sqlx::query(
                "SELECT ip, first_seen, last_seen, n FROM key_sources WHERE key_id = $1 ORDER BY last_seen DESC, ip",
            )
            .bind(key_id)
            .fetch_all(pool)
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

        pub(super) async fn known_sources(pool: &sqlx::Pool<$DB>, key_ids: &[String]) -> Result<Vec<(String, String)>> {
            let mut out = Vec::new();
            for chunk in key_ids.chunks(KEYS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("SELECT key_id, ip FROM key_sources WHERE 1 = 1");
                push_in(&mut q, "key_id", Some(chunk));
                for r in q.build().fetch_all(pool).await.map_err(map_err)? {
                    out.push((get(&r, "key_id")?, get(&r, "ip")?));
                }
            }
            Ok(out)
        }

        pub(super) async fn copy_sources(conn: &mut <$DB as sqlx::Database>::Connection, from_key: &str, to_key: &str) -> Result<()> {
            sqlx::query(
                "INSERT INTO key_sources (key_id, ip, first_seen, last_seen, n) \
                 SELECT $2, ip, first_seen, last_seen, n FROM key_sources WHERE key_id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(from_key)
            .bind(to_key)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(())
        }
    };
}
pub(super) use for_backend;

/// The three multi-row upserts of a usage batch (key counters, buckets, source addresses), in
/// one of two forms: `values`, rows of bound values in statements of `ROWS_PER_STATEMENT`
/// rows (SQLite: a statement binds at most 32,766 values); `arrays`, one array a column
/// expanded by `UNNEST` in statements of `ARRAY_ROWS` rows (PostgreSQL: encoding and sending a
/// thousand bound values a statement cost keyward about twice what five arrays do; the
/// database's time was the same).
/// Rows come sorted by their key (the order PostgreSQL locks them in, see `rollup_in`; `UNNEST`
/// reads an array's elements out in storage order, and the insert takes them as they come) and
/// unique within a batch, as `ON CONFLICT … DO UPDATE` requires.
macro_rules! upserts {
    ($DB:ty, values) => {
        /// Rows a multi-row upsert writes at most (five bound values a row).
        const ROWS_PER_STATEMENT: usize = 200;

        /// Counter rows: key, calls, denied, last use (-1: none).
        async fn write_counters(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[(&str, (i64, i64, i64))]) -> Result<()> {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("INSERT INTO key_counters (key_id, calls, denied, last_used_at) ");
                q.push_values(chunk, |mut b, (key_id, (calls, denied, last))| {
                    b.push_bind(key_id.to_string()).push_bind(*calls).push_bind(*denied).push_bind((*last >= 0).then_some(*last));
                });
                q.push(crate::sql::usage::COUNTERS_CONFLICT);
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        /// Bucket rows: (key, granularity, start, code), count.
        async fn upsert_buckets(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[((&str, &str, i64, &str), i64)]) -> Result<()> {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("INSERT INTO usage_buckets (key_id, granularity, start_at, code, n) ");
                q.push_values(chunk, |mut b, ((key_id, g, start, code), n)| {
                    b.push_bind(key_id.to_string()).push_bind(g.to_string()).push_bind(*start).push_bind(code.to_string()).push_bind(*n);
                });
                q.push(crate::sql::usage::BUCKETS_CONFLICT);
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        /// Source rows: (key, address), (first seen, last seen, count).
        async fn write_sources(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[((&str, &str), (i64, i64, i64))]) -> Result<()> {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$DB>::new("INSERT INTO key_sources (key_id, ip, first_seen, last_seen, n) ");
                q.push_values(chunk, |mut b, ((key_id, ip), (first, last, n))| {
                    b.push_bind(key_id.to_string()).push_bind(ip.to_string()).push_bind(*first).push_bind(*last).push_bind(*n);
                });
                q.push(crate::sql::usage::SOURCES_CONFLICT);
                q.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }
    };
    ($DB:ty, arrays) => {
        /// Rows an array statement writes at most.
        const ARRAY_ROWS: usize = 5000;

        /// Counter rows: key, calls, denied, last use (-1: none).
        async fn write_counters(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[(&str, (i64, i64, i64))]) -> Result<()> {
            let sql = format!(
                "INSERT INTO key_counters (key_id, calls, denied, last_used_at) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[]){}",
                crate::sql::usage::COUNTERS_CONFLICT
            );
            for chunk in rows.chunks(ARRAY_ROWS) {
                sqlx::query(&sql)
                    .bind(chunk.iter().map(|(k, _)| *k).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, c)| c.0).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, c)| c.1).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, c)| (c.2 >= 0).then_some(c.2)).collect::<Vec<_>>())
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }

        /// Bucket rows: (key, granularity, start, code), count.
        async fn upsert_buckets(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[((&str, &str, i64, &str), i64)]) -> Result<()> {
            let sql = format!(
                "INSERT INTO usage_buckets (key_id, granularity, start_at, code, n) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[]){}",
                crate::sql::usage::BUCKETS_CONFLICT
            );
            for chunk in rows.chunks(ARRAY_ROWS) {
                sqlx::query(&sql)
                    .bind(chunk.iter().map(|((k, ..), _)| *k).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|((_, g, ..), _)| *g).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|((_, _, start, _), _)| *start).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|((.., code), _)| *code).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, n)| *n).collect::<Vec<_>>())
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }

        /// Source rows: (key, address), (first seen, last seen, count).
        async fn write_sources(conn: &mut <$DB as sqlx::Database>::Connection, rows: &[((&str, &str), (i64, i64, i64))]) -> Result<()> {
            let sql = format!(
                "INSERT INTO key_sources (key_id, ip, first_seen, last_seen, n) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[]){}",
                crate::sql::usage::SOURCES_CONFLICT
            );
            for chunk in rows.chunks(ARRAY_ROWS) {
                sqlx::query(&sql)
                    .bind(chunk.iter().map(|((k, _), _)| *k).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|((_, ip), _)| *ip).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, s)| s.0).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, s)| s.1).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|(_, s)| s.2).collect::<Vec<_>>())
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }
    };
}
pub(super) use upserts;

/// What each upsert does with a row already there (shared by both forms of [`upserts`]).
pub(super) const COUNTERS_CONFLICT: &str =
    " ON CONFLICT (key_id) DO UPDATE SET calls = key_counters.calls + excluded.calls, \
     denied = key_counters.denied + excluded.denied, \
     last_used_at = CASE WHEN excluded.last_used_at > COALESCE(key_counters.last_used_at, -1) \
     THEN excluded.last_used_at ELSE key_counters.last_used_at END";
pub(super) const BUCKETS_CONFLICT: &str =
    " ON CONFLICT (key_id, granularity, start_at, code) DO UPDATE SET n = usage_buckets.n + excluded.n";
pub(super) const SOURCES_CONFLICT: &str = " ON CONFLICT (key_id, ip) DO UPDATE SET n = key_sources.n + excluded.n, \
     last_seen = CASE WHEN excluded.last_seen > key_sources.last_seen THEN excluded.last_seen ELSE key_sources.last_seen END";

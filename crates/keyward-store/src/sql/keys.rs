//! Keyspaces and keys: reads, the filtered key list, writes, quota resets, the owner query (bulk
//! revocation, `max_keys_per_owner`) and the lifecycle sweep's queries and marks (expired,
//! expiring, inactive keys).
//!
//! Invariants: every key write also appends the key's change-feed row (see `feed.rs`); a key is
//! read through [`KEY_SELECT`], whose `remaining` is the unleased quota plus every node's lease
//! (see `leases.rs`) and whose counters come from `key_counters` (see `usage.rs`).

use keyward_core::model::KeyStatus;
use sqlx::{Database, Encode, QueryBuilder, Type};

pub(super) const KEY_COLS: &str = "id, keyspace_id, name, owner, scopes, labels, meta, hash, \
    start_chars, end_chars, enabled, created_at, created_by, updated_at, expires_at, revoked_at, \
    revoked_by, revoked_reason, rotated_from, rotated_to, last_used_at, call_count, denied_count, \
    ratelimit, remaining, allowed_cidrs, external_id, ratelimits, refill, refill_anchor, refilled_at";
/// The columns read for a key, from [`KEY_FROM`]: `remaining` is the unleased quota plus every
/// node's lease. The counters come from `key_counters` (see its migration).
pub(super) const KEY_SELECT: &str = "id, keyspace_id, name, owner, scopes, labels, meta, hash, \
    start_chars, end_chars, enabled, created_at, created_by, updated_at, expires_at, revoked_at, \
    revoked_by, revoked_reason, rotated_from, rotated_to, \
    kc.last_used_at AS last_used_at, COALESCE(kc.calls, 0) AS call_count, \
    COALESCE(kc.denied, 0) AS denied_count, \
    ratelimit, \
    CASE WHEN remaining IS NULL THEN NULL ELSE remaining + CAST((SELECT COALESCE(SUM(q.amount), 0) \
    FROM quota_leases q WHERE q.key_id = keys.id) AS BIGINT) END AS remaining, \
    allowed_cidrs, external_id, ratelimits, refill, refill_anchor, refilled_at, \
    COALESCE((SELECT NOT i.enabled FROM identities i WHERE i.id = keys.owner), FALSE) AS owner_disabled, \
    (SELECT i.ratelimits FROM identities i WHERE i.id = keys.owner) AS owner_ratelimits, \
    (SELECT s.quota_low_percent FROM keyspaces s WHERE s.id = keys.keyspace_id) AS quota_low_percent, \
    (SELECT i.quota_version FROM identities i WHERE i.id = keys.owner AND i.remaining IS NOT NULL) AS owner_quota_version";
/// What [`KEY_SELECT`] reads from: the key with its counters (one join, where a subquery per
/// counter cost three lookups a key).
pub(super) const KEY_FROM: &str = "keys LEFT JOIN key_counters kc ON kc.key_id = keys.id";
pub(super) const KEYSPACE_COLS: &str =
    "id, name, prefix, policy, created_at, updated_at, routes, unmatched, quota_low_percent";

/// Database-side form of [`Key::status`](keyward_core::model::Key::status).
pub(super) fn push_status<'a, DB: Database>(
    q: &mut QueryBuilder<'a, DB>,
    status: KeyStatus,
    now: i64,
) where
    i64: Encode<'a, DB> + Type<DB>,
{
    let live = |q: &mut QueryBuilder<'a, DB>| {
        q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
            .push_bind(now)
            .push(")");
    };
    match status {
        KeyStatus::Revoked => {
            q.push(" AND revoked_at IS NOT NULL");
        }
        KeyStatus::Expired => {
            q.push(" AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ")
                .push_bind(now);
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

/// The columns of a key the inventory reads ([`crate::KeyBrief`]), in [`BriefColumns`] order;
/// flags as 0 or 1 (each backend's booleans are JSON of their own kind).
pub(super) const BRIEF_COLS: &str =
    "id, keyspace_id, name, owner, enabled, created_at, expires_at, \
    revoked, rotating, last_used_at, call_count";

/// One key's [`BRIEF_COLS`].
pub(super) type BriefColumns = (
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
    i64,
);

pub(super) fn brief(c: BriefColumns) -> crate::KeyBrief {
    use keyward_core::time::Timestamp;
    let (id, keyspace_id, name, owner, enabled, created_at) = (c.0, c.1, c.2, c.3, c.4, c.5);
    let (expires_at, revoked, rotating, last_used_at, call_count) = (c.6, c.7, c.8, c.9, c.10);
    crate::KeyBrief {
        id,
        keyspace_id,
        name,
        owner,
        enabled: enabled != 0,
        created_at: Timestamp::from_millis(created_at),
        expires_at: expires_at.map(Timestamp::from_millis),
        revoked: revoked != 0,
        rotating: rotating != 0,
        last_used_at: last_used_at.map(Timestamp::from_millis),
        call_count,
    }
}

/// This file's SQL for one backend (`$instr`: its substring-position function; `$json_rows`:
/// see `common::json_rows_around`).
macro_rules! for_backend {
    ($DB:ty, $Row:ty, $name:literal, $instr:literal, $json_rows:expr) => {
        use keyward_core::keyformat::KeyHash;
        use keyward_core::model::{Key, Keyspace};
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, hash_from, json, json_opt, map_err, push_after_time, push_in, to_json, ts, Writes};
        use crate::sql::keys::{push_status, KEYSPACE_COLS, KEY_COLS, KEY_FROM, KEY_SELECT};
        use crate::{KeyFilter, Page, Result, TimeCursor};

        fn key_from_row(r: &$Row) -> Result<Key> {
            let shorthand = json_opt("ratelimit", get(r, "ratelimit")?)?;
            let ratelimits = match json_opt::<Vec<keyward_core::limits::NamedLimit>>("ratelimits", get(r, "ratelimits")?)? {
                Some(list) => list,
                None => keyward_core::limits::from_shorthand(shorthand),
            };
            Ok(Key {
                id: get(r, "id")?,
                keyspace_id: get(r, "keyspace_id")?,
                name: get(r, "name")?,
                owner: get(r, "owner")?,
                scopes: json("scopes", &get::<String, _>(r, "scopes")?)?,
                labels: json("labels", &get::<String, _>(r, "labels")?)?,
                meta: json("meta", &get::<String, _>(r, "meta")?)?,
                hash: hash_from(get(r, "hash")?)?,
                start: get(r, "start_chars")?,
                end: get(r, "end_chars")?,
                enabled: get(r, "enabled")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String, _>(r, "created_by")?)?,
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
                ratelimit: keyward_core::limits::shorthand(&ratelimits),
                ratelimits,
                remaining: get(r, "remaining")?,
                refill: json_opt("refill", get(r, "refill")?)?,
                refill_anchor: ts(get(r, "refill_anchor")?),
                refilled_at: ts(get(r, "refilled_at")?),
                allowed_cidrs: json_opt("allowed_cidrs", get(r, "allowed_cidrs")?)?,
                owner_ratelimits: json_opt("owner_ratelimits", get(r, "owner_ratelimits")?)?.unwrap_or_default(),
                quota_low_percent: get(r, "quota_low_percent")?,
                owner_quota_version: get(r, "owner_quota_version")?,
                external_id: get(r, "external_id")?,
                owner_disabled: get(r, "owner_disabled")?,
            })
        }

        fn keyspace_from_row(r: &$Row) -> Result<Keyspace> {
            Ok(Keyspace {
                id: get(r, "id")?,
                name: get(r, "name")?,
                prefix: get(r, "prefix")?,
                policy: json("policy", &get::<String, _>(r, "policy")?)?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                updated_at: Timestamp::from_millis(get(r, "updated_at")?),
                routes: json("routes", &get::<String, _>(r, "routes")?)?,
                unmatched: keyward_core::routes::Unmatched::parse(&get::<String, _>(r, "unmatched")?)
                    .ok_or_else(|| crate::StoreError::Other("corrupt unmatched column".into()))?,
            })
        }

        // ---- keyspaces ----

        pub(super) async fn keyspace<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Keyspace>> {
            let sql = format!("SELECT {KEYSPACE_COLS} FROM keyspaces WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(keyspace_from_row).transpose()
        }

        pub(super) async fn list_keyspaces(pool: &sqlx::Pool<$DB>, ids: Option<&[String]>, page: &Page<TimeCursor>) -> Result<Vec<Keyspace>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEYSPACE_COLS} FROM keyspaces WHERE 1 = 1"));
            push_in(&mut q, "id", ids);
            push_after_time(&mut q, &page.after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(keyspace_from_row).collect()
        }

        pub(super) async fn insert_keyspace(conn: &mut <$DB as sqlx::Database>::Connection, ks: &Keyspace) -> Result<()> {
            let sql = format!("INSERT INTO keyspaces ({KEYSPACE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
            sqlx::query(&sql)
                .bind(&ks.id)
                .bind(&ks.name)
                .bind(&ks.prefix)
                .bind(to_json(&ks.policy))
                .bind(ks.created_at.millis())
                .bind(ks.updated_at.millis())
                .bind(to_json(&ks.routes))
                .bind(ks.unmatched.as_str())
                .bind(ks.policy.quota_low_percent)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        /// Writes a keyspace and appends its feed row (the other nodes read its rules again).
        pub(super) async fn update_keyspace(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, ks: &Keyspace) -> Result<()> {
            sqlx::query("UPDATE keyspaces SET name = $2, policy = $3, updated_at = $4, routes = $5, unmatched = $6, quota_low_percent = $7 WHERE id = $1")
                .bind(&ks.id)
                .bind(&ks.name)
                .bind(to_json(&ks.policy))
                .bind(ks.updated_at.millis())
                .bind(to_json(&ks.routes))
                .bind(ks.unmatched.as_str())
                .bind(ks.policy.quota_low_percent)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            super::feed::keyspace_changed(conn, node, &ks.id, ks.updated_at).await
        }

        // ---- keys: reads ----

        pub(super) async fn key<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Key>> {
            let sql = format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(key_from_row).transpose()
        }

        pub(super) async fn key_by_hash(pool: &sqlx::Pool<$DB>, hash: &KeyHash) -> Result<Option<Key>> {
            let sql = format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE hash = $1");
            let row = sqlx::query(&sql).bind(hash.0.to_vec()).fetch_optional(pool).await.map_err(map_err)?;
            row.as_ref().map(key_from_row).transpose()
        }

        pub(super) async fn list_keys(pool: &sqlx::Pool<$DB>, f: &KeyFilter) -> Result<Vec<Key>> {
            let now = f.now.millis();
            // A label or a name search first asks its own index for the keys it matches (see
            // `candidates`); the page is then read from those keys alone.
            let only = candidates(pool, f).await?;
            if only.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Vec::new());
            }
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE 1 = 1"));
            push_in(&mut q, "id", only.as_deref());
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
                q.push(" AND COALESCE(kc.last_used_at, created_at) <= ").push_bind(cutoff);
            }
            push_after_time(&mut q, &f.page.after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(f.page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(key_from_row).collect()
        }

        /// The keys a label filter or a name search (`q`) could match, from their indexes
        /// (`key_labels`; the trigram index of names), when there are at most `CANDIDATES`
        /// of them: `None` when there are more (matches are then common enough that reading
        /// the list in order finds a page soon) or the filter has no index (a search shorter
        /// than three characters). The list's own
        /// conditions still decide, so the answer is the same either way.
        async fn candidates(pool: &sqlx::Pool<$DB>, f: &KeyFilter) -> Result<Option<Vec<String>>> {
            const CANDIDATES: i64 = 2000;
            let mut only: Option<Vec<String>> = None;
            if let Some((name, value)) = &f.label {
                let mut q = sqlx::QueryBuilder::<$DB>::new("SELECT l.key_id AS id FROM key_labels l");
                if f.keyspace_ids.is_some() {
                    q.push(" JOIN keys ON keys.id = l.key_id");
                }
                q.push(" WHERE l.name = ").push_bind(name.clone());
                q.push(" AND l.value = ").push_bind(value.clone());
                push_in(&mut q, "keys.keyspace_id", f.keyspace_ids.as_deref());
                q.push(" LIMIT ").push_bind(CANDIDATES + 1);
                let ids = ids_of(q.build().fetch_all(pool).await.map_err(map_err)?)?;
                if ids.len() as i64 <= CANDIDATES {
                    only = Some(ids);
                }
            }
            if only.as_ref().is_some_and(Vec::is_empty) {
                return Ok(only);
            }
            // Trigrams: a search of fewer than three characters has none to look up.
            if let Some(s) = f.name_contains.as_ref().filter(|s| s.chars().count() >= 3) {
                const BACKEND: &str = $name;
                let mut q = if BACKEND == "sqlite" {
                    // A phrase of the trigram index: any substring, case folded.
                    // CROSS JOIN: SQLite then joins in the order written, from the index's
                    // matches (it chose to read every key of the keyspace first).
                    let mut q = sqlx::QueryBuilder::<$DB>::new(
                        "SELECT n.key_id AS id FROM key_names_search s CROSS JOIN key_names n ON n.n = s.rowid",
                    );
                    if f.keyspace_ids.is_some() {
                        q.push(" CROSS JOIN keys ON keys.id = n.key_id");
                    }
                    q.push(" WHERE key_names_search MATCH ").push_bind(format!("\"{}\"", s.replace('"', "\"\"")));
                    q
                } else {
                    // Served by the trigram index where migration 0012 could make it. The
                    // search is lowered by the database, as the list's own condition lowers it
                    // (`!` escapes the pattern's wildcards: no backslash, whatever
                    // `standard_conforming_strings` says).
                    let escaped = s.replace('!', "!!").replace('%', "!%").replace('_', "!_");
                    let mut q = sqlx::QueryBuilder::<$DB>::new("SELECT id FROM keys WHERE lower(name) LIKE '%' || lower(");
                    q.push_bind(escaped).push(") || '%' ESCAPE '!'");
                    q
                };
                push_in(&mut q, "keys.keyspace_id", f.keyspace_ids.as_deref());
                q.push(" LIMIT ").push_bind(CANDIDATES + 1);
                // Not kept prepared: PostgreSQL plans a kept statement, after five runs, once for
                // any pattern, and that plan reads every key (77 ms at 100,000 keys, where the
                // trigram index answers in 1 ms); a statement sent each time is planned for its
                // pattern.
                let ids = ids_of(q.build().persistent(false).fetch_all(pool).await.map_err(map_err)?)?;
                if ids.len() as i64 <= CANDIDATES {
                    only = Some(match only {
                        None => ids,
                        Some(before) => {
                            let these: std::collections::HashSet<&String> = ids.iter().collect();
                            before.into_iter().filter(|id| these.contains(id)).collect()
                        }
                    });
                }
            }
            Ok(only)
        }

        fn ids_of(rows: Vec<$Row>) -> Result<Vec<String>> {
            rows.iter().map(|r| get(r, "id")).collect()
        }

        pub(super) async fn key_briefs(pool: &sqlx::Pool<$DB>, keyspace_ids: Option<&[String]>, after: Option<TimeCursor>, limit: i64) -> Result<Vec<crate::KeyBrief>> {
            // The inventory reads every key (see `common::json_rows_around`).
            let order = "created_at DESC, id DESC";
            let (head, tail) = crate::sql::common::json_rows_around($json_rows, crate::sql::keys::BRIEF_COLS, order);
            let flag = |cond: &str| format!("CAST(CASE WHEN {cond} THEN 1 ELSE 0 END AS BIGINT)");
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!(
                "{head}SELECT id, keyspace_id, name, owner, {} AS enabled, created_at, expires_at, \
                 {} AS revoked, {} AS rotating, kc.last_used_at AS last_used_at, \
                 COALESCE(kc.calls, 0) AS call_count FROM {KEY_FROM} WHERE 1 = 1",
                flag("enabled"),
                flag("revoked_at IS NOT NULL"),
                flag("rotated_to IS NOT NULL"),
            ));
            push_in(&mut q, "keyspace_id", keyspace_ids);
            push_after_time(&mut q, &after);
            q.push(format!(" ORDER BY {order} LIMIT ")).push_bind(limit).push(tail);
            let rows: Vec<crate::sql::keys::BriefColumns> = if head.is_empty() {
                q.build_query_as().fetch_all(pool).await.map_err(map_err)?
            } else {
                let page: Option<String> = q.build_query_scalar().fetch_one(pool).await.map_err(map_err)?;
                crate::sql::common::from_json_rows("keys", page.as_deref())?
            };
            Ok(rows.into_iter().map(crate::sql::keys::brief).collect())
        }

        /// A keyspace's keys counted in one pass (see [`crate::Store::key_census`]); the
        /// conditions are those of [`Key::status`] and the inventory report's findings.
        pub(super) async fn key_census(pool: &sqlx::Pool<$DB>, r: &crate::CensusRules, now: Timestamp) -> Result<crate::KeyCensus> {
            let now = now.millis();
            let live = "k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)";
            // CAST: PostgreSQL sums BIGINT into NUMERIC.
            let count = |cond: &str| format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0) AS BIGINT)");
            let too_long = match r.max_lifetime_ms {
                Some(_) => count(&format!("{live} AND (k.expires_at IS NULL OR k.expires_at > k.created_at + $3)")),
                None => "CAST(0 AS BIGINT)".into(),
            };
            let expiring = match r.warn_until {
                Some(_) => count(&format!("{live} AND k.expires_at <= $4")),
                None => "CAST(0 AS BIGINT)".into(),
            };
            let sql = format!(
                "SELECT {} AS revoked, {} AS expired, {} AS disabled, {} AS rotating, {} AS active, \
                 {} AS no_owner, {} AS no_expiry, {too_long} AS too_long, {expiring} AS expiring, {} AS inactive, \
                 CAST(COALESCE(SUM(c.calls), 0) AS BIGINT) AS calls, CAST(COALESCE(SUM(c.denied), 0) AS BIGINT) AS denied \
                 FROM keys k LEFT JOIN key_counters c ON c.key_id = k.id WHERE k.keyspace_id = $1",
                count("k.revoked_at IS NOT NULL"),
                count("k.revoked_at IS NULL AND k.expires_at <= $2"),
                count(&format!("{live} AND NOT k.enabled")),
                count(&format!("{live} AND k.enabled AND k.rotated_to IS NOT NULL")),
                count(&format!("{live} AND k.enabled AND k.rotated_to IS NULL")),
                count(&format!("{live} AND k.owner IS NULL")),
                count(&format!("{live} AND k.expires_at IS NULL")),
                count(&format!("{live} AND COALESCE(c.last_used_at, k.created_at) <= $5")),
            );
            let row = sqlx::query(&sql)
                .bind(&r.keyspace_id)
                .bind(now)
                .bind(r.max_lifetime_ms.unwrap_or(0))
                .bind(r.warn_until.map(Timestamp::millis).unwrap_or(0))
                .bind(r.inactive_before.millis())
                .fetch_one(pool)
                .await
                .map_err(map_err)?;
            Ok(crate::KeyCensus {
                active: get(&row, "active")?,
                rotating: get(&row, "rotating")?,
                disabled: get(&row, "disabled")?,
                expired: get(&row, "expired")?,
                revoked: get(&row, "revoked")?,
                no_owner: get(&row, "no_owner")?,
                no_expiry: get(&row, "no_expiry")?,
                too_long: get(&row, "too_long")?,
                expiring: get(&row, "expiring")?,
                inactive: get(&row, "inactive")?,
                calls: get(&row, "calls")?,
                denied: get(&row, "denied")?,
            })
        }

        pub(super) async fn flagged_keys(pool: &sqlx::Pool<$DB>, r: &crate::CensusRules, which: crate::Flagged, now: Timestamp, limit: i64) -> Result<Vec<Key>> {
            let now = now.millis();
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE keyspace_id = "));
            q.push_bind(r.keyspace_id.clone());
            q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ").push_bind(now).push(")");
            match which {
                crate::Flagged::Expiring => {
                    let Some(until) = r.warn_until else { return Ok(Vec::new()) };
                    q.push(" AND expires_at <= ").push_bind(until.millis());
                    q.push(" ORDER BY expires_at, id");
                }
                crate::Flagged::Inactive => {
                    let last = "COALESCE(kc.last_used_at, created_at)";
                    q.push(format!(" AND {last} <= ")).push_bind(r.inactive_before.millis());
                    q.push(format!(" ORDER BY {last}, id"));
                }
            }
            q.push(" LIMIT ").push_bind(limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(key_from_row).collect()
        }

        pub(super) async fn live_keys_of_owner(
            conn: &mut <$DB as sqlx::Database>::Connection,
            owner: &str,
            keyspace_ids: Option<&[String]>,
            now: Timestamp,
        ) -> Result<Vec<Key>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE owner = "));
            q.push_bind(owner.to_string());
            q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                .push_bind(now.millis())
                .push(")");
            push_in(&mut q, "keyspace_id", keyspace_ids);
            q.push(" ORDER BY created_at, id");
            let rows = q.build().fetch_all(&mut *conn).await.map_err(map_err)?;
            rows.iter().map(key_from_row).collect()
        }

        // ---- keys: writes ----

        pub(super) async fn insert_key(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, k: &Key) -> Result<()> {
            insert_keys(conn, node, std::slice::from_ref(k)).await
        }

        /// Inserts keys with their counters and feed rows, one round trip per [`INSERT_CHUNK`]
        /// keys (a bulk load or import costs round trips per chunk, not per key).
        pub(super) async fn insert_keys(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, keys: &[Key]) -> Result<()> {
            for chunk in keys.chunks(INSERT_CHUNK) {
                let mut w = Writes::new();
                push_insert_keys(&mut w, node, chunk);
                if let Some(mut q) = w.finish() {
                    q.build().execute(&mut *conn).await.map_err(map_err)?;
                }
            }
            Ok(())
        }

        /// 31 columns a key: this many keys (their rows, counters and feed rows) stay under either
        /// backend's bind limit in one round trip.
        const INSERT_CHUNK: usize = 500;

        /// The writes of new keys (at most [`INSERT_CHUNK`]): their rows, the counters of those
        /// already used (an import's), and their feed rows.
        pub(super) fn push_insert_keys(w: &mut Writes<'static, $DB>, node: &str, chunk: &[Key]) {
            let q = w.next();
            q.push(format!("INSERT INTO keys ({KEY_COLS}) "));
            q.push_values(chunk, |mut b, k| {
                b.push_bind(k.id.clone())
                    .push_bind(k.keyspace_id.clone())
                    .push_bind(k.name.clone())
                    .push_bind(k.owner.clone())
                    .push_bind(to_json(&k.scopes))
                    .push_bind(to_json(&k.labels))
                    .push_bind(to_json(&k.meta))
                    .push_bind(k.hash.0.to_vec())
                    .push_bind(k.start.clone())
                    .push_bind(k.end.clone())
                    .push_bind(k.enabled)
                    .push_bind(k.created_at.millis())
                    .push_bind(to_json(&k.created_by))
                    .push_bind(k.updated_at.millis())
                    .push_bind(k.expires_at.map(Timestamp::millis))
                    .push_bind(k.revoked_at.map(Timestamp::millis))
                    .push_bind(k.revoked_by.as_ref().map(to_json))
                    .push_bind(k.revoked_reason.clone())
                    .push_bind(k.rotated_from.clone())
                    .push_bind(k.rotated_to.clone())
                    .push_bind(k.last_used_at.map(Timestamp::millis))
                    .push_bind(k.call_count)
                    .push_bind(k.denied_count)
                    .push_bind(k.ratelimit.as_ref().map(to_json))
                    .push_bind(k.remaining)
                    .push_bind(k.allowed_cidrs.as_ref().map(to_json))
                    .push_bind(k.external_id.clone())
                    .push_bind(ratelimits_json(k))
                    .push_bind(k.refill.as_ref().map(to_json))
                    .push_bind(k.refill_anchor.map(Timestamp::millis))
                    .push_bind(k.refilled_at.map(Timestamp::millis));
            });
            let counted: Vec<&Key> = chunk
                .iter()
                .filter(|k| k.call_count != 0 || k.denied_count != 0 || k.last_used_at.is_some())
                .collect();
            if !counted.is_empty() {
                let q = w.next();
                q.push("INSERT INTO key_counters (key_id, calls, denied, last_used_at) ");
                q.push_values(counted, |mut b, k| {
                    b.push_bind(k.id.clone())
                        .push_bind(k.call_count)
                        .push_bind(k.denied_count)
                        .push_bind(k.last_used_at.map(Timestamp::millis));
                });
            }
            super::feed::push_keys_changed(w, node, &chunk.iter().collect::<Vec<_>>());
        }

        /// Writes the revocation each key carries (`revoked_at`, `revoked_by`, `revoked_reason`,
        /// `updated_at`) and its feed row: one statement per chunk of keys revoked alike (a bulk
        /// revocation is one group), not one per key.
        pub(super) async fn revoke_keys(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, keys: &[Key]) -> Result<()> {
            const CHUNK: usize = 500;
            type Revocation = (Option<i64>, Option<String>, Option<String>, i64);
            let mut groups: std::collections::BTreeMap<Revocation, Vec<&Key>> = std::collections::BTreeMap::new();
            for k in keys {
                let revocation = (k.revoked_at.map(Timestamp::millis), k.revoked_by.as_ref().map(to_json), k.revoked_reason.clone(), k.updated_at.millis());
                groups.entry(revocation).or_default().push(k);
            }
            for ((at, by, reason, updated), group) in groups {
                for chunk in group.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$DB>::new("UPDATE keys SET revoked_at = ");
                    q.push_bind(at).push(", revoked_by = ").push_bind(by.clone());
                    q.push(", revoked_reason = ").push_bind(reason.clone());
                    q.push(", updated_at = ").push_bind(updated).push(" WHERE id IN (");
                    let mut ids = q.separated(", ");
                    for k in chunk {
                        ids.push_bind(k.id.clone());
                    }
                    q.push(")");
                    q.build().execute(&mut *conn).await.map_err(map_err)?;
                    super::feed::keys_changed(conn, node, chunk).await?;
                }
            }
            Ok(())
        }

        pub(super) async fn update_key(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, k: &Key) -> Result<()> {
            sqlx::query(
                "UPDATE keys SET name = $2, owner = $3, scopes = $4, labels = $5, meta = $6, enabled = $7, \
                 updated_at = $8, expires_at = $9, revoked_at = $10, revoked_by = $11, revoked_reason = $12, \
                 rotated_to = $13, ratelimit = $14, allowed_cidrs = $15, ratelimits = $16 WHERE id = $1",
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
            .bind(ratelimits_json(k))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            super::feed::key_changed(conn, node, k).await
        }

        /// `ratelimits` as stored: the list, or NULL when there is none.
        fn ratelimits_json(k: &Key) -> Option<String> {
            (!k.ratelimits.is_empty()).then(|| to_json(&k.ratelimits))
        }

        pub(super) async fn set_remaining(conn: &mut <$DB as sqlx::Database>::Connection, node: &str, id: &str, remaining: Option<i64>) -> Result<()> {
            sqlx::query("UPDATE keys SET remaining = $2 WHERE id = $1")
                .bind(id)
                .bind(remaining)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            // A quota set anew voids every node's lease of the old one.
            sqlx::query("DELETE FROM quota_leases WHERE key_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            super::feed::quota_set(conn, node, id).await
        }

        pub(super) async fn set_refill(conn: &mut <$DB as sqlx::Database>::Connection, k: &Key) -> Result<()> {
            sqlx::query("UPDATE keys SET refill = $2, refill_anchor = $3, refilled_at = $4 WHERE id = $1")
                .bind(&k.id)
                .bind(k.refill.as_ref().map(to_json))
                .bind(k.refill_anchor.map(Timestamp::millis))
                .bind(k.refilled_at.map(Timestamp::millis))
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        // ---- keys: the lifecycle sweep ----

        pub(super) async fn mark_expired(conn: &mut <$DB as sqlx::Database>::Connection, id: &str, now: Timestamp) -> Result<bool> {
            let r = sqlx::query(
                "UPDATE keys SET expired_at = $2 WHERE id = $1 AND expired_at IS NULL AND revoked_at IS NULL \
                 AND expires_at IS NOT NULL AND expires_at <= $2",
            )
            .bind(id)
            .bind(now.millis())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn mark_warned(conn: &mut <$DB as sqlx::Database>::Connection, id: &str, now: Timestamp) -> Result<bool> {
            let r = sqlx::query("UPDATE keys SET warned_at = $2 WHERE id = $1 AND warned_at IS NULL")
                .bind(id)
                .bind(now.millis())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        async fn keys_where(pool: &sqlx::Pool<$DB>, cond: &str, binds: &[i64], text: Option<&str>, limit: i64) -> Result<Vec<Key>> {
            let sql = format!("SELECT {KEY_SELECT} FROM {KEY_FROM} WHERE {cond} ORDER BY created_at, id LIMIT {limit}");
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

        pub(super) async fn expired_unmarked(pool: &sqlx::Pool<$DB>, now: Timestamp, limit: i64) -> Result<Vec<Key>> {
            keys_where(pool, "revoked_at IS NULL AND expired_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1", &[now.millis()], None, limit).await
        }

        pub(super) async fn expiring_unwarned(pool: &sqlx::Pool<$DB>, keyspace_id: &str, now: Timestamp, until: Timestamp, limit: i64) -> Result<Vec<Key>> {
            keys_where(
                pool,
                "keyspace_id = $1 AND revoked_at IS NULL AND rotated_to IS NULL AND warned_at IS NULL AND expires_at IS NOT NULL \
                 AND expires_at > $2 AND expires_at <= $3",
                &[now.millis(), until.millis()],
                Some(keyspace_id),
                limit,
            )
            .await
        }

        pub(super) async fn inactive_since(pool: &sqlx::Pool<$DB>, keyspace_id: &str, now: Timestamp, cutoff: Timestamp, limit: i64) -> Result<Vec<Key>> {
            keys_where(
                pool,
                "keyspace_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
                 AND COALESCE(kc.last_used_at, created_at) <= $3",
                &[now.millis(), cutoff.millis()],
                Some(keyspace_id),
                limit,
            )
            .await
        }
    };
}
pub(super) use for_backend;

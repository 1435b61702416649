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
use keyward_core::model::{Actor, ActorKind, AuditEvent, Key, KeyStatus, Keyspace, Role, Token};
use keyward_core::time::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::Row;

use crate::{
    AuditFilter, Change, KeyFilter, NewEvent, Page, Result, Store, StoreError, StoreTx, TimeCursor,
    UsageDelta,
};

const KEY_COLS: &str = "id, keyspace_id, name, owner, scopes, labels, meta, hash, start_chars, \
    end_chars, enabled, created_at, created_by, updated_at, expires_at, revoked_at, revoked_by, \
    revoked_reason, rotated_from, rotated_to, last_used_at, call_count, denied_count, ratelimit, \
    remaining, allowed_cidrs";
const KEYSPACE_COLS: &str = "id, name, prefix, policy, created_at, updated_at";
const TOKEN_COLS: &str = "id, name, role, keyspace_ids, created_at, created_by, expires_at, \
    revoked_at, revoked_by, revoked_reason, last_used_at";
const AUDIT_COLS: &str = "seq, id, at, actor_type, actor_id, actor_name, action, target_type, \
    target_id, reason, request_id, ip, changes, prev_hash, hash";

fn map_err(e: sqlx::Error) -> StoreError {
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

macro_rules! sql_backend {
    ($Store:ident, $Tx:ident, $DB:ty, $Row:ty, $name:literal, $instr:literal) => {
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
            let sql = format!("SELECT {KEY_COLS} FROM keys WHERE id = $1");
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

        async fn usage_in(conn: &mut <$DB as sqlx::Database>::Connection, deltas: &[UsageDelta]) -> Result<()> {
            for d in deltas {
                sqlx::query(
                    "UPDATE keys SET call_count = call_count + $2, denied_count = denied_count + $3, \
                     last_used_at = CASE WHEN $4 > COALESCE(last_used_at, -1) THEN $4 ELSE last_used_at END, \
                     remaining = remaining - $5 WHERE id = $1",
                )
                .bind(&d.key_id)
                .bind(d.calls)
                .bind(d.denied)
                .bind(d.last_used_at.map(|t| t.millis()).unwrap_or(-1))
                .bind(d.consumed)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
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

        fn push_in(q: &mut sqlx::QueryBuilder<'_, $DB>, col: &str, ids: &Option<Vec<String>>) {
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
            tx: sqlx::Transaction<'static, $DB>,
            node: String,
        }

        #[async_trait]
        impl StoreTx for $Tx {
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
                Ok(())
            }

            async fn live_keys_of_owner(
                &mut self,
                owner: &str,
                keyspace_ids: Option<&[String]>,
                now: Timestamp,
            ) -> Result<Vec<Key>> {
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_COLS} FROM keys WHERE owner = "));
                q.push_bind(owner.to_string());
                q.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                    .push_bind(now.millis())
                    .push(")");
                push_in(&mut q, "keyspace_id", &keyspace_ids.map(<[String]>::to_vec));
                q.push(" ORDER BY created_at, id");
                let rows = q.build().fetch_all(&mut *self.tx).await.map_err(map_err)?;
                rows.iter().map(key_from_row).collect()
            }

            async fn apply_usage(&mut self, deltas: &[UsageDelta]) -> Result<()> {
                usage_in(&mut *self.tx, deltas).await
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
                    action: e.action,
                    target_type: e.target_type,
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
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $Store {
            fn backend(&self) -> &'static str {
                $name
            }

            fn node_id(&self) -> &str {
                &self.node
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
                push_in(&mut q, "id", &ids.map(<[String]>::to_vec));
                push_after_time(&mut q, &page.after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
                let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.iter().map(keyspace_from_row).collect()
            }

            async fn key(&self, id: &str) -> Result<Option<Key>> {
                fetch_key(&self.pool, id).await
            }

            async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>> {
                let sql = format!("SELECT {KEY_COLS} FROM keys WHERE hash = $1");
                let row = sqlx::query(&sql).bind(hash.0.to_vec()).fetch_optional(&self.pool).await.map_err(map_err)?;
                row.as_ref().map(key_from_row).transpose()
            }

            async fn list_keys(&self, f: &KeyFilter) -> Result<Vec<Key>> {
                let now = f.now.millis();
                let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {KEY_COLS} FROM keys WHERE 1 = 1"));
                push_in(&mut q, "keyspace_id", &f.keyspace_ids);
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
                    q.push(" AND COALESCE(last_used_at, created_at) <= ").push_bind(cutoff);
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
                usage_in(&mut *tx, deltas).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>> {
                let rows = sqlx::query("SELECT seq, key_id, key_hash, origin FROM change_feed WHERE seq > $1 ORDER BY seq LIMIT $2")
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

    const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];

    /// The embedded single-node backend: one SQLite file in WAL mode.
    #[derive(Clone)]
    pub struct SqliteStore {
        pool: SqlitePool,
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
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(map_err)?;
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

    sql_backend!(SqliteStore, SqliteTx, Sqlite, SqliteRow, "sqlite", "instr");
}

pub mod postgres {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
    use sqlx::Postgres;

    use super::*;

    const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_init.sql"))];
    /// Advisory lock id held while migrating, so nodes starting together migrate once.
    const MIGRATION_LOCK: i64 = 0x6b_6579_7761_7264; // "keyward" in ASCII

    /// The cluster backend: any number of nodes share one PostgreSQL database.
    #[derive(Clone)]
    pub struct PgStore {
        pool: PgPool,
        node: String,
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
                .max_connections(16)
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
            })
        }
    }

    sql_backend!(PgStore, PgTx, Postgres, PgRow, "postgres", "strpos");
}

//! API tokens (the credentials of the management API): reads by id and by hash, the list,
//! inserts, updates (name, revocation) and the last-use stamp.
//!
//! Invariant: only the token's hash is stored (`hash`, never read back into a [`Token`]); a token
//! is found by the hash of what its holder presents.
//!
//! [`Token`]: keyward_core::model::Token

pub(super) const TOKEN_COLS: &str =
    "id, name, role, keyspace_ids, created_at, created_by, expires_at, \
    revoked_at, revoked_by, revoked_reason, last_used_at";

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty) => {
        use keyward_core::keyformat::KeyHash;
        use keyward_core::model::{Role, Token};
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, json, json_opt, map_err, push_after_time, to_json, ts};
        use crate::sql::tokens::TOKEN_COLS;
        use crate::{Page, Result, StoreError, TimeCursor};

        fn token_from_row(r: &$Row) -> Result<Token> {
            let role: String = get(r, "role")?;
            Ok(Token {
                id: get(r, "id")?,
                name: get(r, "name")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Other("corrupt role".into()))?,
                keyspace_ids: json_opt("keyspace_ids", get(r, "keyspace_ids")?)?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String, _>(r, "created_by")?)?,
                expires_at: ts(get(r, "expires_at")?),
                revoked_at: ts(get(r, "revoked_at")?),
                revoked_by: json_opt("revoked_by", get(r, "revoked_by")?)?,
                revoked_reason: get(r, "revoked_reason")?,
                last_used_at: ts(get(r, "last_used_at")?),
            })
        }

        pub(super) async fn token<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Token>> {
            let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(token_from_row).transpose()
        }

        pub(super) async fn token_by_hash(pool: &sqlx::Pool<$DB>, hash: &KeyHash) -> Result<Option<Token>> {
            let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1");
            let row = sqlx::query(&sql).bind(hash.0.to_vec()).fetch_optional(pool).await.map_err(map_err)?;
            row.as_ref().map(token_from_row).transpose()
        }

        pub(super) async fn list_tokens(pool: &sqlx::Pool<$DB>, page: &Page<TimeCursor>) -> Result<Vec<Token>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {TOKEN_COLS} FROM tokens WHERE 1 = 1"));
            push_after_time(&mut q, &page.after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(token_from_row).collect()
        }

        pub(super) async fn touch_token(pool: &sqlx::Pool<$DB>, id: &str, at: Timestamp) -> Result<()> {
            sqlx::query("UPDATE tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at.millis())
                .execute(pool)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        pub(super) async fn insert_token(conn: &mut <$DB as sqlx::Database>::Connection, t: &Token, hash: &KeyHash) -> Result<()> {
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
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(())
        }

        pub(super) async fn update_token(conn: &mut <$DB as sqlx::Database>::Connection, t: &Token) -> Result<()> {
            sqlx::query("UPDATE tokens SET name = $2, revoked_at = $3, revoked_by = $4, revoked_reason = $5 WHERE id = $1")
                .bind(&t.id)
                .bind(&t.name)
                .bind(t.revoked_at.map(Timestamp::millis))
                .bind(t.revoked_by.as_ref().map(to_json))
                .bind(&t.revoked_reason)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }
    };
}
pub(super) use for_backend;

//! Dashboard users, their sessions and the one-time setup link: the SQL behind
//! [`UserStore`](crate::users::UserStore) and [`UserTx`](crate::users::UserTx) (the traits and
//! their records are in `crate::users`, which knows nothing of SQL).
//!
//! Invariant: session ids and setup tokens are secrets: only the lowercase hex SHA-256 of each is
//! passed in and stored (`hash`), so a copy of the database opens no session. At most one setup
//! token exists at a time.

pub(super) const USER_COLS: &str = "id, email, role, password_hash, created_at, created_by, \
    disabled_at, last_login_at";
pub(super) const USER_COLS_U: &str = "u.id, u.email, u.role, u.password_hash, u.created_at, \
    u.created_by, u.disabled_at, u.last_login_at";

/// This file's SQL for one backend: [`UserStore`] for `$Store` and [`UserTx`] for `$Tx`.
///
/// [`UserStore`]: crate::users::UserStore
/// [`UserTx`]: crate::users::UserTx
macro_rules! for_backend {
    ($Store:ident, $Tx:ident, $DB:ty, $Row:ty) => {
        use async_trait::async_trait;
        use keyward_core::model::Role;
        use keyward_core::time::Timestamp;
        use keyward_core::user::User;

        use crate::sql::common::{get, map_err, to_json};
        use crate::sql::users::{USER_COLS, USER_COLS_U};
        use crate::users::{NewSession, SessionRecord, UserStore, UserTx};
        use crate::{Result, StoreError};

        fn user_from_row(r: &$Row) -> Result<User> {
            let role: String = get(r, "role")?;
            let created_by: String = get(r, "created_by")?;
            Ok(User {
                id: get(r, "id")?,
                email: get(r, "email")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Other("corrupt role".into()))?,
                password_hash: get(r, "password_hash")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: serde_json::from_str(&created_by)
                    .map_err(|e| StoreError::Other(format!("corrupt created_by: {e}")))?,
                disabled_at: get::<Option<i64>, _>(r, "disabled_at")?.map(Timestamp::from_millis),
                last_login_at: get::<Option<i64>, _>(r, "last_login_at")?.map(Timestamp::from_millis),
            })
        }

        async fn count<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E) -> Result<i64> {
            let r = sqlx::query("SELECT COUNT(*) AS n FROM users")
                .fetch_one(e)
                .await
                .map_err(map_err)?;
            get(&r, "n")
        }

        async fn by_email<'e, E: sqlx::Executor<'e, Database = $DB>>(
            e: E,
            email: &str,
        ) -> Result<Option<User>> {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
            let row = sqlx::query(&sql)
                .bind(email)
                .fetch_optional(e)
                .await
                .map_err(map_err)?;
            row.as_ref().map(user_from_row).transpose()
        }

        #[async_trait]
        impl UserStore for super::$Store {
            async fn count_users(&self) -> Result<i64> {
                count(&self.pool).await
            }

            async fn user(&self, id: &str) -> Result<Option<User>> {
                let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
                by_email(&self.pool, email).await
            }

            async fn list_users(&self) -> Result<Vec<User>> {
                let sql = format!("SELECT {USER_COLS} FROM users ORDER BY created_at, id");
                let rows = sqlx::query(&sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(user_from_row).collect()
            }

            async fn record_login(&self, user_id: &str, at: Timestamp) -> Result<()> {
                sqlx::query("UPDATE users SET last_login_at = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(at.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn insert_session(&self, s: &NewSession) -> Result<()> {
                sqlx::query(
                    "INSERT INTO sessions (hash, user_id, created_at, last_seen_at, expires_at, ip) \
                     VALUES ($1, $2, $3, $3, $4, $5)",
                )
                .bind(&s.hash)
                .bind(&s.user_id)
                .bind(s.created_at.millis())
                .bind(s.expires_at.millis())
                .bind(&s.ip)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn session(&self, hash: &str, now: Timestamp) -> Result<Option<SessionRecord>> {
                let sql = format!(
                    "SELECT {USER_COLS_U}, s.created_at AS s_created_at, s.last_seen_at, s.expires_at \
                     FROM sessions s JOIN users u ON u.id = s.user_id \
                     WHERE s.hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL"
                );
                let row = sqlx::query(&sql)
                    .bind(hash)
                    .bind(now.millis())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.as_ref()
                    .map(|r| {
                        Ok(SessionRecord {
                            user: user_from_row(r)?,
                            created_at: Timestamp::from_millis(get(r, "s_created_at")?),
                            last_seen_at: Timestamp::from_millis(get(r, "last_seen_at")?),
                            expires_at: Timestamp::from_millis(get(r, "expires_at")?),
                        })
                    })
                    .transpose()
            }

            async fn touch_session(&self, hash: &str, at: Timestamp) -> Result<()> {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE hash = $1")
                    .bind(hash)
                    .bind(at.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn delete_session(&self, hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM sessions WHERE hash = $1")
                    .bind(hash)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn delete_expired(&self, now: Timestamp) -> Result<u64> {
                let a = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                    .bind(now.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                let b = sqlx::query("DELETE FROM setup_tokens WHERE expires_at <= $1")
                    .bind(now.millis())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(a.rows_affected() + b.rows_affected())
            }

            async fn put_setup_token(
                &self,
                hash: &str,
                created_at: Timestamp,
                expires_at: Timestamp,
            ) -> Result<()> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                sqlx::query("DELETE FROM setup_tokens")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO setup_tokens (hash, created_at, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(hash)
                .bind(created_at.millis())
                .bind(expires_at.millis())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)
            }

            async fn setup_token_valid(&self, hash: &str, now: Timestamp) -> Result<bool> {
                let row = sqlx::query(
                    "SELECT hash FROM setup_tokens WHERE hash = $1 AND expires_at > $2",
                )
                .bind(hash)
                .bind(now.millis())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(row.is_some())
            }
        }

        #[async_trait]
        impl UserTx for super::$Tx {
            async fn count_users(&mut self) -> Result<i64> {
                count(&mut *self.tx).await
            }

            async fn user_by_email(&mut self, email: &str) -> Result<Option<User>> {
                by_email(&mut *self.tx, email).await
            }

            async fn insert_user(&mut self, u: &User) -> Result<()> {
                let sql = format!(
                    "INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                sqlx::query(&sql)
                    .bind(&u.id)
                    .bind(&u.email)
                    .bind(u.role.as_str())
                    .bind(&u.password_hash)
                    .bind(u.created_at.millis())
                    .bind(to_json(&u.created_by))
                    .bind(u.disabled_at.map(Timestamp::millis))
                    .bind(u.last_login_at.map(Timestamp::millis))
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn update_user(&mut self, u: &User) -> Result<()> {
                sqlx::query("UPDATE users SET role = $2, disabled_at = $3 WHERE id = $1")
                    .bind(&u.id)
                    .bind(u.role.as_str())
                    .bind(u.disabled_at.map(Timestamp::millis))
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn delete_sessions_of(&mut self, user_id: &str) -> Result<u64> {
                let r = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(r.rows_affected())
            }

            async fn consume_setup_token(&mut self, hash: &str, now: Timestamp) -> Result<bool> {
                let hit = sqlx::query("DELETE FROM setup_tokens WHERE hash = $1 AND expires_at > $2")
                    .bind(hash)
                    .bind(now.millis())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("DELETE FROM setup_tokens")
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                Ok(hit.rows_affected() == 1)
            }
        }
    };
}
pub(super) use for_backend;

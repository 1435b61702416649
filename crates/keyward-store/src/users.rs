//! Dashboard users, their sessions and the one-time setup link: [`UserStore`] (reads and the
//! writes that need no audit event) and [`UserTx`] (writes inside a control-plane transaction,
//! next to the audit event they belong to). Both backends implement them in `sql/users.rs`, over
//! SQL that SQLite and PostgreSQL both accept; this module is the interface only.
//!
//! Session ids and setup tokens are secrets: only the lowercase hex SHA-256 of each is passed in
//! and stored (`hash`), so a copy of the database opens no session.

use async_trait::async_trait;
use keyward_core::time::Timestamp;
use keyward_core::user::User;

use crate::Result;

/// A live session with the user it belongs to.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub user: User,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A new session; `hash` is the hex SHA-256 of the session id the browser holds.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub hash: String,
    pub user_id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Every user, disabled ones included (the first-run setup link is offered only at 0).
    async fn count_users(&self) -> Result<i64>;
    async fn user(&self, id: &str) -> Result<Option<User>>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// All users, oldest first (an installation has a handful to a few hundred).
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn record_login(&self, user_id: &str, at: Timestamp) -> Result<()>;

    async fn insert_session(&self, s: &NewSession) -> Result<()>;
    /// The session with this hash if it has not expired at `now` and its user is not disabled.
    async fn session(&self, hash: &str, now: Timestamp) -> Result<Option<SessionRecord>>;
    async fn touch_session(&self, hash: &str, at: Timestamp) -> Result<()>;
    async fn delete_session(&self, hash: &str) -> Result<()>;
    /// Removes expired sessions and setup tokens; returns how many rows went.
    async fn delete_expired(&self, now: Timestamp) -> Result<u64>;

    /// Replaces any earlier setup token with this one.
    async fn put_setup_token(
        &self,
        hash: &str,
        created_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()>;
    /// Whether a setup token with this hash exists and has not expired (it is not consumed).
    async fn setup_token_valid(&self, hash: &str, now: Timestamp) -> Result<bool>;
}

/// User changes inside a [`crate::StoreTx`], so they commit (or not) with their audit event.
#[async_trait]
pub trait UserTx: Send {
    async fn count_users(&mut self) -> Result<i64>;
    async fn user_by_email(&mut self, email: &str) -> Result<Option<User>>;
    /// Fails with [`StoreError::Conflict`](crate::StoreError::Conflict)`("users_email_key")` when
    /// the email is taken.
    async fn insert_user(&mut self, user: &User) -> Result<()>;
    /// Writes `role` and `disabled_at`.
    async fn update_user(&mut self, user: &User) -> Result<()>;
    /// Ends every session of a user (when the user is disabled).
    async fn delete_sessions_of(&mut self, user_id: &str) -> Result<u64>;
    /// Deletes the setup token with this hash if it is still valid at `now`, and every other
    /// setup token; true when this one was valid. Two concurrent uses: only one gets true.
    async fn consume_setup_token(&mut self, hash: &str, now: Timestamp) -> Result<bool>;
}

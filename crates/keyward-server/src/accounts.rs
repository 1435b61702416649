//! Dashboard accounts: users (created and disabled with an audit event, like every other
//! change), Argon2id passwords, sign-in with throttling, server-side sessions, and the one-time
//! setup link that creates the first admin.
//!
//! What a signed-in user may *do* is not decided here: the dashboard calls [`crate::service`]
//! with a [`Ctx`] whose actor is the user, after checking the user's role with the same
//! [`Role::may`] as the API.
//!
//! Secrets: the session id lives only in the browser's cookie (the store keeps its SHA-256);
//! the CSRF token of a session is derived from the session id with a separate label, so it is
//! tied to the session yet reveals nothing about it; the setup token is printed once and stored
//! as its SHA-256 with an expiry of one hour.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use keyward_core::id::new_id;
use keyward_core::keyformat::{base62_random, KeyHash};
use keyward_core::model::{Actor, Role};
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_core::user::{check_new_password, normalize_email, User, MAX_PASSWORD_BYTES};
use keyward_store::users::{NewSession, SessionRecord};
use keyward_store::{NewEvent, StoreError};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::service::Ctx;
use crate::state::AppState;

/// A session ends this long after sign-in, whatever happens.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;
/// A session ends after this long without a request.
pub const SESSION_IDLE_SECS: i64 = 2 * 3600;
/// The first-run setup link works for this long.
pub const SETUP_TTL_SECS: i64 = 3600;
/// Failed sign-ins per address, and per account (email), within [`LOGIN_WINDOW_SECS`].
pub const LOGIN_FAILURES_PER_ADDRESS: usize = 20;
pub const LOGIN_FAILURES_PER_ACCOUNT: usize = 5;
pub const LOGIN_WINDOW_SECS: i64 = 15 * 60;

/// Per-node sign-in state (throttles) and the dummy hash that makes unknown users cost as much
/// as known ones.
pub struct Accounts {
    /// Argon2id hash of a random password nobody knows, with the same parameters as real ones.
    dummy: OnceLock<String>,
    by_address: Window<IpAddr>,
    by_account: Window<String>,
    /// Number of Argon2 verifications run by sign-ins (tests check that every failure path
    /// costs one).
    pub password_checks: AtomicU64,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            dummy: OnceLock::new(),
            by_address: Window::new(LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW_SECS),
            by_account: Window::new(LOGIN_FAILURES_PER_ACCOUNT, LOGIN_WINDOW_SECS),
            password_checks: AtomicU64::new(0),
        }
    }
}

/// Failures per key over a sliding window (in memory, per node: a cluster of n nodes allows
/// n times as many guesses, still few against Argon2id and a 12-character minimum).
struct Window<K> {
    limit: usize,
    window_ms: i64,
    failures: Mutex<HashMap<K, VecDeque<Timestamp>>>,
}

const MAX_TRACKED: usize = 100_000;

impl<K: std::hash::Hash + Eq + Clone> Window<K> {
    fn new(limit: usize, window_secs: i64) -> Self {
        Window {
            limit,
            window_ms: window_secs * 1000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn prune(&self, q: &mut VecDeque<Timestamp>, now: Timestamp) {
        while q
            .front()
            .is_some_and(|t| t.millis() <= now.millis() - self.window_ms)
        {
            q.pop_front();
        }
    }

    /// `Some(seconds to wait)` when `key` has used up its failures.
    fn blocked(&self, key: &K, now: Timestamp) -> Option<i64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(key)?;
        self.prune(q, now);
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            Some(((oldest.millis() + self.window_ms - now.millis()) / 1000).max(1))
        } else {
            None
        }
    }

    fn fail(&self, key: K, now: Timestamp) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            let cutoff = now.millis() - self.window_ms;
            map.retain(|_, q| q.back().is_some_and(|t| t.millis() > cutoff));
        }
        let q = map.entry(key).or_default();
        self.prune(q, now);
        q.push_back(now);
        while q.len() > self.limit {
            q.pop_front();
        }
    }
}

// ---------------------------------------------------------------- passwords

fn argon2() -> Argon2<'static> {
    // Argon2id, version 0x13, m = 19 MiB, t = 2, p = 1 (OWASP's recommendation).
    Argon2::default()
}

fn hash_blocking(password: &str) -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("OS random: {e}")))?;
    let salt = SaltString::encode_b64(&bytes).map_err(Error::internal)?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(Error::internal)
}

/// Hashes a password with Argon2id off the async threads.
pub async fn hash_password(password: Secret) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(password.expose()))
        .await
        .map_err(Error::internal)?
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

impl Accounts {
    fn dummy_hash(&self) -> Result<String> {
        if let Some(h) = self.dummy.get() {
            return Ok(h.clone());
        }
        let h = hash_blocking(&base62_random(32))?;
        Ok(self.dummy.get_or_init(|| h).clone())
    }
}

// ---------------------------------------------------------------- users

fn user_event(ctx: &Ctx, now: Timestamp, action: &str, user_id: &str) -> NewEvent {
    NewEvent {
        id: new_id("evt", now),
        at: now,
        actor: ctx.actor.clone(),
        action: action.into(),
        target_type: "user".into(),
        target_id: user_id.into(),
        reason: None,
        request_id: ctx.request_id.clone(),
        ip: ctx.ip.clone(),
        changes: Map::new(),
    }
}

fn created_changes(u: &User) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("email".into(), json!([null, u.email]));
    m.insert("role".into(), json!([null, u.role]));
    m
}

fn email_taken(e: StoreError) -> Error {
    match e {
        StoreError::Conflict(_) => Error::conflict("a user with this email already exists"),
        other => other.into(),
    }
}

/// Creates a dashboard user (`keyward user create`); writes `user.create`.
pub async fn create_user(
    st: &AppState,
    ctx: &Ctx,
    email: &str,
    role: Role,
    password: Secret,
) -> Result<User> {
    let email = normalize_email(email).map_err(Error::bad_request)?;
    check_new_password(password.expose()).map_err(Error::bad_request)?;
    let password_hash = hash_password(password).await?;
    let now = st.clock.now();
    let user = User {
        id: new_id("usr", now),
        email,
        role,
        password_hash,
        created_at: now,
        created_by: ctx.actor.clone(),
        disabled_at: None,
        last_login_at: None,
    };
    let mut tx = st.store.begin().await?;
    tx.users().insert_user(&user).await.map_err(email_taken)?;
    let mut ev = user_event(ctx, now, "user.create", &user.id);
    ev.changes = created_changes(&user);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

/// Disables a user and ends its sessions (`keyward user disable`); writes `user.disable` once.
pub async fn disable_user(st: &AppState, ctx: &Ctx, email: &str) -> Result<User> {
    let email = normalize_email(email).map_err(Error::bad_request)?;
    let now = st.clock.now();
    let mut tx = st.store.begin().await?;
    let mut user = tx
        .users()
        .user_by_email(&email)
        .await?
        .ok_or_else(|| Error::not_found("no user with this email"))?;
    if user.disabled_at.is_some() {
        return Ok(user);
    }
    user.disabled_at = Some(now);
    tx.users().update_user(&user).await?;
    tx.users().delete_sessions_of(&user.id).await?;
    let mut ev = user_event(ctx, now, "user.disable", &user.id);
    ev.changes
        .insert("disabled_at".into(), json!([null, user.disabled_at]));
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

// ---------------------------------------------------------------- first run

/// When the database has no users yet: a new one-time setup token (replacing any earlier one),
/// valid for [`SETUP_TTL_SECS`]. `None` once a user exists.
pub async fn issue_setup_token(st: &AppState) -> Result<Option<Secret>> {
    if st.store.users().count_users().await? > 0 {
        return Ok(None);
    }
    let now = st.clock.now();
    let token = Secret::new(base62_random(43));
    st.store
        .users()
        .put_setup_token(
            &KeyHash::of(token.expose()).to_hex(),
            now,
            now.plus_secs(SETUP_TTL_SECS),
        )
        .await?;
    Ok(Some(token))
}

/// Whether a setup token can still be used (for showing the form).
pub async fn setup_token_valid(st: &AppState, token: &str) -> Result<bool> {
    if token.is_empty() || token.len() > 128 {
        return Ok(false);
    }
    Ok(st
        .store
        .users()
        .setup_token_valid(&KeyHash::of(token).to_hex(), st.clock.now())
        .await?
        && st.store.users().count_users().await? == 0)
}

/// Creates the first admin with a setup token: the token is consumed in the same transaction
/// as the user and its `user.create` event (actor: the new user itself), so it works once.
pub async fn complete_setup(
    st: &AppState,
    token: &str,
    email: &str,
    password: Secret,
    request_id: Option<String>,
    ip: Option<String>,
) -> Result<User> {
    let used = || Error::forbidden("this setup link is not valid: it has expired or was used");
    // Cheap checks first, so a guessed token costs no Argon2 work.
    if !setup_token_valid(st, token).await? {
        return Err(used());
    }
    let email = normalize_email(email).map_err(Error::bad_request)?;
    check_new_password(password.expose()).map_err(Error::bad_request)?;
    let password_hash = hash_password(password).await?;
    let now = st.clock.now();
    let id = new_id("usr", now);
    let user = User {
        id: id.clone(),
        email: email.clone(),
        role: Role::Admin,
        password_hash,
        created_at: now,
        created_by: Actor {
            kind: keyward_core::model::ActorKind::User,
            id,
            name: email,
        },
        disabled_at: None,
        last_login_at: None,
    };
    let ctx = Ctx {
        actor: user.actor(),
        request_id,
        ip,
        keyspaces: None,
    };
    let mut tx = st.store.begin().await?;
    if !tx
        .users()
        .consume_setup_token(&KeyHash::of(token).to_hex(), now)
        .await?
    {
        return Err(used());
    }
    if tx.users().count_users().await? > 0 {
        return Err(used());
    }
    tx.users().insert_user(&user).await.map_err(email_taken)?;
    let mut ev = user_event(&ctx, now, "user.create", &user.id);
    ev.reason = Some("first admin, created with the one-time setup link".into());
    ev.changes = created_changes(&user);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

// ---------------------------------------------------------------- sign-in

/// Why a sign-in failed. Callers show one message for `Invalid`, whatever the cause.
#[derive(Debug)]
pub enum LoginError {
    /// Unknown email, wrong password or disabled user: indistinguishable on purpose.
    Invalid,
    /// Too many failures from this address or for this account; seconds to wait.
    Throttled(i64),
    Other(Error),
}

impl From<Error> for LoginError {
    fn from(e: Error) -> Self {
        LoginError::Other(e)
    }
}

impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        LoginError::Other(e.into())
    }
}

/// Password checks allowed at once (see `authenticate`).
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Checks an email and password. Every path that reaches the password check runs exactly one
/// Argon2id verification (against a dummy hash when the user is unknown or disabled), so the
/// answer's timing does not tell whether an account exists.
pub async fn authenticate(
    st: &AppState,
    email: &str,
    password: Secret,
    ip: IpAddr,
) -> std::result::Result<User, LoginError> {
    let now = st.clock.now();
    // Bounded: the throttle map is keyed by it.
    let account: String = email.trim().to_lowercase().chars().take(254).collect();
    if let Some(wait) = st.accounts.by_address.blocked(&ip, now) {
        return Err(LoginError::Throttled(wait));
    }
    if let Some(wait) = st.accounts.by_account.blocked(&account, now) {
        return Err(LoginError::Throttled(wait));
    }
    let user = match normalize_email(email) {
        Ok(e) => st.store.users().user_by_email(&e).await?,
        Err(_) => None,
    };
    let target = match &user {
        Some(u) if u.is_active() => u.password_hash.clone(),
        _ => st.accounts.dummy_hash()?,
    };
    // Each check holds ~19 MiB for a moment: at most a few run at once, so a flood of sign-ins
    // cannot exhaust memory (the excess waits, then is turned away).
    let permit =
        match tokio::time::timeout(std::time::Duration::from_secs(5), PASSWORD_CHECKS.acquire())
            .await
        {
            Ok(Ok(p)) => p,
            _ => return Err(LoginError::Throttled(1)),
        };
    st.accounts.password_checks.fetch_add(1, Ordering::Relaxed);
    let ok = tokio::task::spawn_blocking(move || {
        let pw = password.expose();
        // Over-long input is verified as an empty password: same work, never a match.
        let pw = if pw.len() > MAX_PASSWORD_BYTES {
            ""
        } else {
            pw
        };
        verify_blocking(pw, &target)
    })
    .await
    .map_err(Error::internal)?;
    drop(permit);
    match user {
        Some(u) if ok && u.is_active() => {
            if let Err(e) = st.store.users().record_login(&u.id, now).await {
                tracing::warn!(error = %e, "could not record a sign-in");
            }
            Ok(u)
        }
        _ => {
            st.accounts.by_address.fail(ip, now);
            st.accounts.by_account.fail(account, now);
            tracing::info!(%ip, "failed dashboard sign-in");
            Err(LoginError::Invalid)
        }
    }
}

// ---------------------------------------------------------------- sessions

/// The session id as the browser holds it (cookie value) and the CSRF token derived from it.
pub struct NewSessionId {
    pub id: Secret,
    pub csrf: String,
}

fn session_hash(id: &str) -> String {
    KeyHash::of(id).to_hex()
}

/// The synchronizer token of a session: SHA-256 of the session id under its own label (the
/// stored session hash is SHA-256 of the bare id, so neither can be computed from the other).
pub fn csrf_token(session_id: &str) -> String {
    KeyHash::of(&format!("keyward-csrf\n{session_id}")).to_hex()
}

/// Compares a submitted CSRF token with the expected one in constant time.
pub fn csrf_matches(expected: &str, submitted: Option<&str>) -> bool {
    match submitted {
        Some(s) => bool::from(expected.as_bytes().ct_eq(s.as_bytes())),
        None => false,
    }
}

/// Starts a session for a user who just signed in.
pub async fn start_session(st: &AppState, user: &User, ip: Option<IpAddr>) -> Result<NewSessionId> {
    let now = st.clock.now();
    let id = Secret::new(base62_random(43));
    st.store
        .users()
        .insert_session(&NewSession {
            hash: session_hash(id.expose()),
            user_id: user.id.clone(),
            created_at: now,
            expires_at: now.plus_secs(SESSION_TTL_SECS),
            ip: ip.map(|i| i.to_string()),
        })
        .await?;
    // Housekeeping at a quiet moment: expired sessions and setup tokens go.
    if let Err(e) = st.store.users().delete_expired(now).await {
        tracing::warn!(error = %e, "could not delete expired sessions");
    }
    let csrf = csrf_token(id.expose());
    Ok(NewSessionId { id, csrf })
}

/// The live session a cookie names, if any; ends it when it has been idle too long and
/// records activity at most once a minute.
pub async fn resume_session(st: &AppState, session_id: &str) -> Result<Option<SessionRecord>> {
    if session_id.is_empty() || session_id.len() > 128 {
        return Ok(None);
    }
    let now = st.clock.now();
    let hash = session_hash(session_id);
    let Some(s) = st.store.users().session(&hash, now).await? else {
        return Ok(None);
    };
    if now.millis() - s.last_seen_at.millis() > SESSION_IDLE_SECS * 1000 {
        st.store.users().delete_session(&hash).await?;
        return Ok(None);
    }
    if now.millis() - s.last_seen_at.millis() >= 60_000 {
        st.store.users().touch_session(&hash, now).await?;
    }
    Ok(Some(s))
}

/// Signs out: the session stops working at once, on every node.
pub async fn end_session(st: &AppState, session_id: &str) -> Result<()> {
    st.store
        .users()
        .delete_session(&session_hash(session_id))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_blocks_after_the_limit_and_forgets_after_the_window() {
        let w = Window::new(3, 60);
        let t0 = Timestamp::from_millis(1_000_000);
        for _ in 0..3 {
            assert!(w.blocked(&"a".to_string(), t0).is_none());
            w.fail("a".to_string(), t0);
        }
        assert_eq!(w.blocked(&"a".to_string(), t0), Some(60));
        assert!(w.blocked(&"b".to_string(), t0).is_none());
        assert!(w.blocked(&"a".to_string(), t0.plus_secs(61)).is_none());
    }

    #[test]
    fn csrf_tokens_are_tied_to_the_session_and_differ_from_its_stored_hash() {
        let t = csrf_token("abc");
        assert!(csrf_matches(&t, Some(&t)));
        assert!(!csrf_matches(&t, Some(&csrf_token("abd"))));
        assert!(!csrf_matches(&t, None));
        assert!(!csrf_matches(&t, Some("")));
        assert_ne!(t, session_hash("abc"));
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_blocking("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_blocking("correct horse battery staple", &h));
        assert!(!verify_blocking("correct horse battery stapl", &h));
        assert!(!verify_blocking("x", "not a hash"));
    }
}

//! Who is signing in: management tokens presented to the API (checked and throttled here),
//! and dashboard accounts: users (created and disabled with an audit event, like every other
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

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use keyward_core::id::new_id;
use keyward_core::keyformat::{self, base62_random, KeyHash, TOKEN_PREFIX};
use keyward_core::model::{Actor, Role, Token};
use keyward_core::secret::Secret;
use keyward_core::user::{check_new_password, normalize_email, User, MAX_PASSWORD_BYTES};
use keyward_store::users::{NewSession, SessionRecord};
use keyward_store::StoreError;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::authz::{Allowed, Ctx, ManageTokens};
use keyward_core::kinds::{AuditAction, TargetType};

use crate::error::{Error, ErrorCode, Result};
use crate::state::{Authn, Records};
use crate::throttle::SignIns;

/// A session ends this long after sign-in, whatever happens.
pub(crate) const SESSION_TTL_SECS: i64 = 12 * 3600;
/// A session ends after this long without a request.
pub const SESSION_IDLE_SECS: i64 = 2 * 3600;
/// The first-run setup link works for this long.
pub const SETUP_TTL_SECS: i64 = 3600;
pub use crate::throttle::{
    LOGIN_FAILURES_PER_ACCOUNT, LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW_SECS,
};

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
pub(crate) async fn hash_password(password: Secret) -> Result<String> {
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

/// Argon2id hash of a random password nobody knows, made once per node.
fn dummy_hash(sign_ins: &SignIns) -> Result<String> {
    if let Some(h) = sign_ins.dummy.get() {
        return Ok(h.clone());
    }
    let h = hash_blocking(&base62_random(32))?;
    Ok(sign_ins.dummy.get_or_init(|| h).clone())
}

// ---------------------------------------------------------------- users

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
    st: &Records,
    who: &Allowed<'_, ManageTokens>,
    email: &str,
    role: Role,
    password: Secret,
) -> Result<User> {
    let ctx = who.ctx();
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
    let mut ev = ctx.event(now, AuditAction::UserCreate, TargetType::User, &user.id);
    ev.changes = created_changes(&user);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

/// Disables a user and ends its sessions (`keyward user disable`); writes `user.disable` once.
pub async fn disable_user(
    st: &Records,
    who: &Allowed<'_, ManageTokens>,
    email: &str,
) -> Result<User> {
    let ctx = who.ctx();
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
    let mut ev = ctx.event(now, AuditAction::UserDisable, TargetType::User, &user.id);
    ev.changes
        .insert("disabled_at".into(), json!([null, user.disabled_at]));
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

// ---------------------------------------------------------------- first run

/// Whether no user exists yet (the sign-in page offers the setup instead).
pub(crate) async fn needs_setup(st: &Records) -> Result<bool> {
    Ok(st.store.users().count_users().await? == 0)
}

/// When the database has no users yet: a new one-time setup token (replacing any earlier one),
/// valid for [`SETUP_TTL_SECS`]. `None` once a user exists.
pub async fn issue_setup_token(st: &Records) -> Result<Option<Secret>> {
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
pub(crate) async fn setup_token_valid(st: &Records, token: &str) -> Result<bool> {
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
pub(crate) async fn complete_setup(
    st: &Records,
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
        role: user.role,
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
    let mut ev = ctx.event(now, AuditAction::UserCreate, TargetType::User, &user.id);
    ev.reason = Some("first admin, created with the one-time setup link".into());
    ev.changes = created_changes(&user);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(user)
}

// ---------------------------------------------------------------- sign-in

/// Why a sign-in failed. Callers show one message for `Invalid`, whatever the cause.
#[derive(Debug)]
pub(crate) enum LoginError {
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
pub(crate) async fn authenticate(
    st: &Authn,
    email: &str,
    password: Secret,
    ip: IpAddr,
) -> std::result::Result<User, LoginError> {
    let now = st.records.clock.now();
    // Bounded: the throttle map is keyed by it.
    let account: String = email.trim().to_lowercase().chars().take(254).collect();
    // An IPv6 client is counted by its /64.
    let ip = crate::throttle::client_block(ip);
    if let Some(wait) = st.sign_ins.by_address.blocked(&ip, now) {
        return Err(LoginError::Throttled(wait));
    }
    if let Some(wait) = st.sign_ins.by_account.blocked(&account, now) {
        return Err(LoginError::Throttled(wait));
    }
    let user = match normalize_email(email) {
        Ok(e) => st.records.store.users().user_by_email(&e).await?,
        Err(_) => None,
    };
    let target = match &user {
        Some(u) if u.is_active() => u.password_hash.clone(),
        _ => dummy_hash(&st.sign_ins)?,
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
    st.sign_ins.password_checks.fetch_add(1, Ordering::Relaxed);
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
            if let Err(e) = st.records.store.users().record_login(&u.id, now).await {
                tracing::warn!(error = %e, "could not record a sign-in");
            }
            Ok(u)
        }
        _ => {
            st.sign_ins.by_address.fail(ip, now);
            st.sign_ins.by_account.fail(account, now);
            tracing::info!(%ip, "failed dashboard sign-in");
            Err(LoginError::Invalid)
        }
    }
}

// ---------------------------------------------------------------- management tokens

/// Checks a management token given in a header; failures count towards the address's limit.
pub(crate) async fn authenticate_token(
    st: &Authn,
    presented: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Token> {
    let now = st.records.clock.now();
    let found = match presented
        .and_then(keyformat::parse)
        .filter(|p| p.prefix == TOKEN_PREFIX)
    {
        Some(_) => {
            let hash = KeyHash::of(presented.unwrap_or_default());
            let token = match st.records.tokens.get(&hash) {
                Ok(t) => Some(t),
                Err(read) => {
                    let t = st.records.store.token_by_hash(&hash).await?;
                    if let Some(t) = &t {
                        st.records.tokens.put(hash, t, read);
                    }
                    t
                }
            };
            token.filter(|t| t.is_usable(now))
        }
        None => None,
    };
    match found {
        Some(token) => {
            touch(st, &token.id, now);
            Ok(token)
        }
        None => {
            let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            if let Some(wait) = st.throttle.fail(ip, now) {
                return Err(Error::new(
                    ErrorCode::RateLimited,
                    "too many failed authentications from this address",
                )
                .with_retry_after(wait));
            }
            let msg = if presented.is_none() {
                "a management token is required (Authorization: Bearer kwt_...)"
            } else {
                "the management token is not valid (unknown, malformed, revoked or expired)"
            };
            Err(Error::unauthenticated(msg))
        }
    }
}

/// Records `last_used_at` of a token at most once a minute, off the request path.
fn touch(st: &Authn, id: &str, now: keyward_core::time::Timestamp) {
    let due = {
        let mut map = st.token_touched.lock().unwrap_or_else(|p| p.into_inner());
        let due = map
            .get(id)
            .is_none_or(|t| now.millis() - t.millis() >= 60_000);
        if due {
            map.insert(id.to_string(), now);
        }
        due
    };
    if due {
        let store = st.records.store.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.touch_token(&id, now).await {
                tracing::debug!(error = %e, "could not record token use");
            }
        });
    }
}

// ---------------------------------------------------------------- sessions

/// The session id as the browser holds it (its cookie value; the CSRF token is derived from it
/// with [`csrf_token`] when a page needs it).
pub(crate) struct NewSessionId {
    pub(crate) id: Secret,
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
pub(crate) fn csrf_matches(expected: &str, submitted: Option<&str>) -> bool {
    match submitted {
        Some(s) => bool::from(expected.as_bytes().ct_eq(s.as_bytes())),
        None => false,
    }
}

/// Starts a session for a user who just signed in.
pub(crate) async fn start_session(
    st: &Records,
    user: &User,
    ip: Option<IpAddr>,
) -> Result<NewSessionId> {
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
    Ok(NewSessionId { id })
}

/// The live session a cookie names, if any; ends it when it has been idle too long and
/// records activity at most once a minute.
pub(crate) async fn resume_session(
    st: &Records,
    session_id: &str,
) -> Result<Option<SessionRecord>> {
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
pub(crate) async fn end_session(st: &Records, session_id: &str) -> Result<()> {
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

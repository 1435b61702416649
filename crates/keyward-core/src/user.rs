//! Dashboard users: the record, and the rules for the email and password people type in.
//!
//! A user has one role of the API's matrix ([`Role`]) and acts with the same permissions as a
//! management token of that role. Passwords are never held here in plaintext: `password_hash` is
//! an Argon2id PHC string made by the server.

use crate::invalid::Invalid;
use crate::model::{Actor, ActorKind, Role};
use crate::time::Timestamp;

pub const MIN_PASSWORD_CHARS: usize = 12;
/// Bounds the work one sign-in attempt can ask of the hasher.
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MAX_EMAIL_LEN: usize = 254;

#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// `usr_...`
    pub id: String,
    /// Lowercase, as normalized by [`normalize_email`].
    pub email: String,
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: Timestamp,
    pub created_by: Actor,
    pub disabled_at: Option<Timestamp>,
    pub last_login_at: Option<Timestamp>,
}

impl User {
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }
    /// How this user appears in audit events and `created_by` / `revoked_by`.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: ActorKind::User,
            id: self.id.clone(),
            name: self.email.clone(),
        }
    }
}

/// Leaves the password hash out: it is not the password, but it is what an attacker would crack.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("password_hash", &"[redacted]")
            .field("created_at", &self.created_at)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// Trims and lowercases an email address and checks its shape (one `@`, something on each side,
/// a dot in the domain, no spaces or control characters, at most 254 characters).
pub fn normalize_email(s: &str) -> Result<String, Invalid> {
    let e = s.trim().to_lowercase();
    let bad = || Invalid::new("email must be an address such as alice@example.com");
    if e.is_empty() || e.len() > MAX_EMAIL_LEN {
        return Err(bad());
    }
    if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = e.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(e)
}

/// A new password: at least 12 characters, at most 1024 bytes, not only spaces.
pub fn check_new_password(p: &str) -> Result<(), Invalid> {
    if p.chars().count() < MIN_PASSWORD_CHARS || p.trim().is_empty() {
        return Err(
            format!("the password must have at least {MIN_PASSWORD_CHARS} characters").into(),
        );
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(format!("the password may have at most {MAX_PASSWORD_BYTES} bytes").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@b",
            "a@@b.c",
            "a b@c.d",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("            ").is_err());
        assert!(check_new_password("correct horse battery").is_ok());
        assert!(check_new_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn debug_leaves_the_hash_out() {
        let u = User {
            id: "usr_1".into(),
            email: "a@b.c".into(),
            role: Role::Admin,
            password_hash: "$argon2id$secret".into(),
            created_at: Timestamp::EPOCH,
            created_by: Actor::system(),
            disabled_at: None,
            last_login_at: None,
        };
        assert!(!format!("{u:?}").contains("argon2id"));
    }
}

//! Scopes: `segment(:segment)*`, 1..128 characters, segments of `[A-Za-z0-9_.-]`. A key's scope
//! may end in the segment `*` (or be `*`), which grants every scope under it.

use crate::invalid::Invalid;

pub const MAX_SCOPE_LEN: usize = 128;

fn segment_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Validates a scope held by a key (wildcard allowed as the last segment).
pub fn check_key_scope(s: &str) -> Result<(), Invalid> {
    check(s, true)
}

/// Validates a scope a verification asks for (no wildcard).
pub fn check_requested_scope(s: &str) -> Result<(), Invalid> {
    check(s, false)
}

fn check(s: &str, wildcard: bool) -> Result<(), Invalid> {
    let shown = crate::keyformat::shown(s);
    if s.is_empty() || s.len() > MAX_SCOPE_LEN {
        return Err(format!("scope '{shown}' must be 1..{MAX_SCOPE_LEN} characters").into());
    }
    let segs: Vec<&str> = s.split(':').collect();
    let last = segs.len() - 1;
    for (i, seg) in segs.iter().enumerate() {
        if *seg == "*" {
            if !wildcard {
                return Err(format!("requested scope '{shown}' may not contain '*'").into());
            }
            if i != last {
                return Err(format!("scope '{shown}': '*' may only be the last segment").into());
            }
        } else if !segment_ok(seg) {
            return Err(format!(
                "scope '{shown}' must be segments of [A-Za-z0-9_.-] separated by ':'"
            )
            .into());
        }
    }
    Ok(())
}

/// Whether one key scope grants one requested scope. Case-sensitive.
pub fn grants(key_scope: &str, requested: &str) -> bool {
    if key_scope == "*" || key_scope == requested {
        return true;
    }
    match key_scope.strip_suffix('*') {
        // `orders:*` -> base `orders:`; grants `orders:read`, not `orders` or `ordersx:read`.
        Some(base) => requested.len() > base.len() && requested.starts_with(base),
        None => false,
    }
}

/// Whether the key's scopes grant every requested scope.
pub fn all_granted(key_scopes: &[String], requested: &[String]) -> bool {
    all_granted_by(key_scopes.iter().map(String::as_str), requested)
}

/// [`all_granted`] over any listing of the key's scopes (the verification cache keeps them
/// inside one string).
pub fn all_granted_by<'a, I>(key_scopes: I, requested: &[String]) -> bool
where
    I: Iterator<Item = &'a str> + Clone,
{
    requested
        .iter()
        .all(|r| key_scopes.clone().any(|k| grants(k, r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_grant_what_the_contract_says() {
        assert!(grants("*", "anything:at:all"));
        assert!(grants("orders:*", "orders:read"));
        assert!(grants("orders:*", "orders:read:deep"));
        assert!(!grants("orders:*", "orders"));
        assert!(!grants("orders:*", "ordersx:read"));
        assert!(!grants("orders:read", "Orders:read"));
        assert!(grants("orders:read", "orders:read"));
    }

    #[test]
    fn scope_grammar() {
        for ok in ["a", "orders:read", "a.b-c_d:e", "*", "orders:*"] {
            assert!(check_key_scope(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":",
            "a:",
            ":a",
            "a::b",
            "a b",
            "*:a",
            "or*ders",
            &"a".repeat(129),
        ] {
            assert!(check_key_scope(bad).is_err(), "{bad}");
        }
        assert!(check_requested_scope("orders:*").is_err());
        assert!(check_requested_scope("*").is_err());
    }

    #[test]
    fn all_requested_scopes_are_required() {
        let key = vec!["orders:read".to_string()];
        assert!(all_granted(&key, &[]));
        assert!(!all_granted(
            &key,
            &["orders:read".into(), "orders:write".into()]
        ));
    }
}

//! Salted password hashes of imported keys: the forms an import accepts (Argon2id PHC strings,
//! bcrypt modular-crypt strings, Django's `pbkdf2_sha256$iterations$salt$hash`), the bounds on
//! their cost, and the check of a presented key against one. Pure functions: the verifier runs
//! [`matches`] off the async runtime, a bounded number at once (see `verifier::imported`).
//!
//! Invariant: a stored string passed [`check`] at import, so its cost is within [`MAX_COST`]'s
//! bounds whatever the record said; a string that does not parse never matches.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::Engine;
use keyward_core::api::HashAlgorithm;

/// The most a single check may cost, per algorithm (an import beyond is refused: a hash that
/// takes seconds to check would let guesses exhaust the CPU).
pub struct MaxCost {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_lanes: u32,
    pub bcrypt_cost: u32,
    pub pbkdf2_iterations: u32,
}

pub const MAX_COST: MaxCost = MaxCost {
    argon2_memory_kib: 131_072,
    argon2_iterations: 10,
    argon2_lanes: 16,
    bcrypt_cost: 15,
    pbkdf2_iterations: 2_000_000,
};

/// Why a salted hash string is refused (a message naming the rule, never the string).
pub fn check(algorithm: HashAlgorithm, s: &str) -> Result<(), String> {
    if s.len() > 512 {
        return Err("hash is longer than 512 characters".into());
    }
    match algorithm {
        HashAlgorithm::Sha256 => Err("sha256 is not a salted hash".into()),
        HashAlgorithm::Argon2id => check_argon2(s),
        HashAlgorithm::Bcrypt => check_bcrypt(s),
        HashAlgorithm::Pbkdf2Sha256 => check_pbkdf2(s).map(|_| ()),
    }
}

fn check_argon2(s: &str) -> Result<(), String> {
    let h = PasswordHash::new(s).map_err(|_| {
        "hash is not an Argon2id PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash)"
    })?;
    if h.algorithm.as_str() != "argon2id" {
        return Err("hash is not an Argon2id PHC string (algorithm argon2id)".into());
    }
    if h.hash.is_none() || h.salt.is_none() {
        return Err("hash is an Argon2id PHC string without its salt or hash".into());
    }
    let params = argon2::Params::try_from(&h)
        .map_err(|_| "hash has Argon2 parameters that are not valid")?;
    if params.m_cost() > MAX_COST.argon2_memory_kib
        || params.t_cost() > MAX_COST.argon2_iterations
        || params.p_cost() > MAX_COST.argon2_lanes
    {
        return Err(format!(
            "hash costs more than keyward checks (at most m={}, t={}, p={})",
            MAX_COST.argon2_memory_kib, MAX_COST.argon2_iterations, MAX_COST.argon2_lanes
        ));
    }
    Ok(())
}

fn check_bcrypt(s: &str) -> Result<(), String> {
    // $2b$12$ + 22 characters of salt + 31 of hash.
    // Bytes, not string slices: a string of another shape may have a character across any
    // boundary.
    let b = s.as_bytes();
    let shape = b.len() == 60
        && matches!(&b[..4], b"$2a$" | b"$2b$" | b"$2y$")
        && b[4..6].iter().all(u8::is_ascii_digit)
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/');
    if !shape {
        return Err("hash is not a bcrypt string ($2b$cost$ and 53 characters)".into());
    }
    let cost = u32::from(b[4] - b'0') * 10 + u32::from(b[5] - b'0');
    if !(4..=MAX_COST.bcrypt_cost).contains(&cost) {
        return Err(format!(
            "hash has a bcrypt cost outside 4..{}",
            MAX_COST.bcrypt_cost
        ));
    }
    Ok(())
}

/// Django's form: iterations, salt (used as its bytes) and the base64 of the 32-byte result.
fn check_pbkdf2(s: &str) -> Result<(u32, &str, Vec<u8>), String> {
    let form = "hash is not in Django's form pbkdf2_sha256$iterations$salt$hash";
    let mut parts = s.split('$');
    let (Some("pbkdf2_sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(form.into());
    };
    let iterations: u32 = iter.parse().map_err(|_| form)?;
    if !(1..=MAX_COST.pbkdf2_iterations).contains(&iterations) {
        return Err(format!(
            "hash has a PBKDF2 iteration count outside 1..{}",
            MAX_COST.pbkdf2_iterations
        ));
    }
    let hash = base64::engine::general_purpose::STANDARD
        .decode(hash)
        .map_err(|_| form)?;
    // Django stores the 32 bytes of SHA-256; a shorter result would be guessed.
    if salt.is_empty() || hash.len() != 32 {
        return Err(form.into());
    }
    Ok((iterations, salt, hash))
}

/// The algorithm of a stored string that passed [`check`] (by its form).
pub fn algorithm(stored: &str) -> HashAlgorithm {
    if stored.starts_with("$argon2") {
        HashAlgorithm::Argon2id
    } else if stored.starts_with("$2") {
        HashAlgorithm::Bcrypt
    } else {
        HashAlgorithm::Pbkdf2Sha256
    }
}

/// Whether `key` is the key `stored` (a string that passed [`check`]) was made from. Costly
/// by design: call it off the async runtime.
pub fn matches(stored: &str, key: &str) -> bool {
    match algorithm(stored) {
        HashAlgorithm::Argon2id => {
            check_argon2(stored).is_ok()
                && PasswordHash::new(stored).is_ok_and(|h| {
                    Argon2::default()
                        .verify_password(key.as_bytes(), &h)
                        .is_ok()
                })
        }
        // bcrypt reads 72 bytes: a longer key would match on its first 72 alone.
        HashAlgorithm::Bcrypt => {
            key.len() <= 72
                && check_bcrypt(stored).is_ok()
                && bcrypt::verify(key, stored).unwrap_or(false)
        }
        HashAlgorithm::Pbkdf2Sha256 | HashAlgorithm::Sha256 => {
            let Ok((iterations, salt, hash)) = check_pbkdf2(stored) else {
                return false;
            };
            let Some(n) = std::num::NonZeroU32::new(iterations) else {
                return false;
            };
            ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                n,
                salt.as_bytes(),
                key.as_bytes(),
                &hash,
            )
            .is_ok()
        }
    }
}

/// The SHA-256 of a key given as 64 hex characters or base64 (standard or URL-safe, padded or
/// not).
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(out);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn each_form_matches_its_key_and_no_other() {
        let key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(
                key.as_bytes(),
                &SaltString::from_b64("c29tZXNhbHQ").unwrap(),
            )
            .unwrap()
            .to_string();
        let b = bcrypt::hash(key, 4).unwrap();
        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(1000).unwrap(),
            b"salty",
            key.as_bytes(),
            &mut out,
        );
        let d = format!(
            "pbkdf2_sha256$1000$salty${}",
            base64::engine::general_purpose::STANDARD.encode(out)
        );
        for (alg, s) in [
            (HashAlgorithm::Argon2id, &a),
            (HashAlgorithm::Bcrypt, &b),
            (HashAlgorithm::Pbkdf2Sha256, &d),
        ] {
            assert_eq!(check(alg, s), Ok(()), "{alg:?}");
            assert!(matches(s, key), "{alg:?}");
            assert!(!matches(s, "sk_live_4eC39HqLyjWDarjtT1zdp7dX"), "{alg:?}");
        }
        assert!(check(HashAlgorithm::Bcrypt, &a).is_err());
        assert!(check(HashAlgorithm::Argon2id, &b).is_err());
        assert!(check(HashAlgorithm::Pbkdf2Sha256, "pbkdf2_sha256$0$s$aGFzaA==").is_err());
        assert!(check(HashAlgorithm::Pbkdf2Sha256, "pbkdf2_sha256$1000$s$aA==").is_err());
        // A character across a byte boundary is refused, not a panic.
        let odd = format!("$2a{}{}", '\u{e9}', "a".repeat(55));
        assert_eq!(odd.len(), 60);
        assert!(check(HashAlgorithm::Bcrypt, &odd).is_err());
        assert!(!matches(&odd, key));
        assert!(!matches(&b, &format!("{key}{}", "x".repeat(72))));
        assert!(check(HashAlgorithm::Bcrypt, &b.replace("$04$", "$31$")).is_err());
        let heavy = a.replace("m=1024", "m=1048576");
        assert!(check(HashAlgorithm::Argon2id, &heavy).is_err());
        assert!(!matches("not a hash", key));
    }

    #[test]
    fn sha256_is_read_as_hex_or_base64() {
        let h = keyward_core::keyformat::KeyHash::of("abc").0;
        let hex = keyward_core::keyformat::hex(&h);
        let b64 = base64::engine::general_purpose::STANDARD.encode(h);
        assert_eq!(parse_sha256(&hex), Some(h));
        assert_eq!(parse_sha256(&hex.to_uppercase()), Some(h));
        assert_eq!(parse_sha256(&b64), Some(h));
        assert_eq!(parse_sha256(b64.trim_end_matches('=')), Some(h));
        assert_eq!(parse_sha256("abcd"), None);
    }
}

//! The API key format of the API contract (OpenAPI document, "API key format"): `<prefix>_<32 random base62><6 base62 CRC32>`.
//!
//! Parsing checks the prefix grammar, the alphabet, the length and the checksum, so a mistyped
//! or random string is rejected before it reaches the store (the verifier parses a key it does
//! not find in its cache; one it finds was parsed when it was issued). Only the SHA-256 of the
//! whole string is ever stored ([`KeyHash`]).

use crate::invalid::Invalid;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const RANDOM_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 6;
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
pub const MAX_PREFIX_LEN: usize = 32;
/// Management tokens share the key format with this prefix; keyspaces may not use it.
pub const TOKEN_PREFIX: &str = "kwt";

/// Lengths of an imported key without keyward's format (visible ASCII, no spaces): what an
/// import accepts and what the verifier looks up once such keys exist.
pub const FOREIGN_KEY_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Whether a string could be an imported key without keyward's format.
pub fn foreign_shape(s: &str) -> bool {
    FOREIGN_KEY_LEN.contains(&s.len()) && s.bytes().all(|c| (0x21..=0x7e).contains(&c))
}

/// SHA-256 of a key or token string: what the store keeps instead of the plaintext.
/// `Default` is all zeros: the hash of a key read from the API, which never sends hashes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(s: &str) -> Self {
        Self(Sha256::digest(s.as_bytes()).into())
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}..)", &self.to_hex()[..8])
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// Why a prefix is not acceptable, as a message for a 400.
pub fn check_prefix(prefix: &str) -> Result<(), Invalid> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(format!("prefix must be 1..{MAX_PREFIX_LEN} characters").into());
    }
    if !prefix_grammar_ok(prefix) {
        return Err(
            "prefix must match ^[a-z][a-z0-9]*(_[a-z0-9]+)*$ (lowercase letters, digits, single underscores)"
                .into(),
        );
    }
    if prefix == TOKEN_PREFIX || prefix.starts_with("kwt_") {
        return Err("prefixes 'kwt' and 'kwt_...' are reserved for management tokens".into());
    }
    Ok(())
}

fn prefix_grammar_ok(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() {
        return false;
    }
    let mut prev_underscore = false;
    for &c in &b[1..] {
        match c {
            b'_' if prev_underscore => return false,
            b'_' => prev_underscore = true,
            b'a'..=b'z' | b'0'..=b'9' => prev_underscore = false,
            _ => return false,
        }
    }
    !prev_underscore
}

/// Each byte's base62 value, or 0xFF (one load per character on the verify path).
const BASE62: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => 0xFF,
        };
        i += 1;
    }
    t
};

fn base62_digit(c: u8) -> Option<u64> {
    match BASE62[c as usize] {
        0xFF => None,
        d => Some(d as u64),
    }
}

/// `n` in base62, most significant digit first, zero-padded (or cut to the low digits) to `width`.
pub fn encode_base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// `len` characters drawn uniformly from the base62 alphabet with the OS CSPRNG.
pub fn base62_random(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        // The OS CSPRNG does not fail on supported platforms; if it ever did, refusing to
        // produce a key is the only safe answer.
        if getrandom::fill(&mut buf).is_err() {
            #[allow(clippy::panic)]
            {
                panic!("the operating system's random number generator failed");
            }
        }
        for &b in &buf {
            // 248 = 4 * 62: rejection sampling keeps the distribution uniform.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

fn checksum(before: &str) -> String {
    encode_base62_fixed(crc32fast::hash(before.as_bytes()) as u64, CHECKSUM_LEN)
}

/// A new plaintext key (or token, with prefix [`TOKEN_PREFIX`]). The prefix must be valid.
pub fn generate(prefix: &str) -> Secret {
    let mut s = String::with_capacity(prefix.len() + 1 + BODY_LEN);
    s.push_str(prefix);
    s.push('_');
    s.push_str(&base62_random(RANDOM_LEN));
    let sum = checksum(&s);
    s.push_str(&sum);
    Secret::new(s)
}

/// The regular expression that finds this keyspace's keys in text (what secret scanners such
/// as GitHub's are given): the prefix, `_`, then [`BODY_LEN`] base62 characters, as a whole
/// word. Prefixes hold only `[a-z0-9_]`, so nothing in them needs escaping.
pub fn pattern(prefix: &str) -> String {
    format!(r"\b{prefix}_[0-9A-Za-z]{{{BODY_LEN}}}\b")
}

/// Whether `text` contains a well-formed key or token (a word that passes the format and the
/// checksum). Free-text fields refuse such text, so a key pasted into a name or a revocation
/// reason is never stored.
pub fn contains_key_material(text: &str) -> bool {
    find_keys(text).next().is_some()
}

/// The well-formed keys and tokens in `text` (words of `[A-Za-z0-9_]` that pass the format and
/// the checksum), with their byte offsets: what `keyward scan` reports.
pub fn find_keys(text: &str) -> impl Iterator<Item = (usize, Parsed<'_>)> {
    words(text).filter_map(|(at, w)| {
        if w.len() > BODY_LEN {
            parse(w).map(|p| (at, p))
        } else {
            None
        }
    })
}

/// The words of `[A-Za-z0-9_]` in `text`, with their byte offsets.
pub fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && !is_word(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        // Word characters are ASCII, so both ends are character boundaries.
        text.get(start..i).map(|w| (start, w))
    })
}

/// What a refused field is told when it holds a key or token (after the field's name).
pub const SECRET_IN_TEXT: &str =
    "contains what looks like an API key or token; keyward never stores plaintext keys";

/// Refuses text holding what looks like a key or token: every stored field is checked so.
pub fn check_no_secret(field: &str, s: &str) -> Result<(), Invalid> {
    if contains_key_material(s) {
        return Err(format!("{field} {SECRET_IN_TEXT}").into());
    }
    Ok(())
}

/// Client input quoted in an error message: short values as they are, longer ones not at all
/// (every key and token is at least 40 characters, so none is ever echoed).
pub fn shown(s: &str) -> String {
    if s.chars().count() <= 32 {
        s.to_string()
    } else {
        "(value not shown)".to_string()
    }
}

/// A string that has the key format, with its parts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub prefix: &'a str,
    pub body: &'a str,
}

impl std::fmt::Debug for Parsed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Parsed {{ prefix: {:?}, body: [redacted] }}",
            self.prefix
        )
    }
}

impl<'a> Parsed<'a> {
    /// Display start: prefix, `_` and the first 4 random characters.
    pub fn start(&self) -> String {
        format!("{}_{}", self.prefix, &self.body[..4])
    }
    /// Display end: the last 4 characters.
    pub fn end(&self) -> String {
        self.body[BODY_LEN - 4..].to_string()
    }
}

/// Checks the format and checksum; no allocation, no store access.
pub fn parse(s: &str) -> Option<Parsed<'_>> {
    // The body is the last BODY_LEN characters, after the last `_` (base62 has no `_`, so the
    // last `_` is right before the body or the key is malformed).
    let cut = s.len().checked_sub(BODY_LEN + 1)?;
    if s.as_bytes()[cut] != b'_' {
        return None;
    }
    let bytes = &s.as_bytes()[cut + 1..];
    if !bytes.iter().all(|&c| BASE62[c as usize] != 0xFF) {
        return None;
    }
    // Both cuts are at ASCII bytes (`_` and base62), so they are character boundaries.
    let (prefix, body) = (&s[..cut], &s[cut + 1..]);
    if prefix.len() > MAX_PREFIX_LEN || !prefix_grammar_ok(prefix) {
        return None;
    }
    let mut sum: u64 = 0;
    for &c in &bytes[RANDOM_LEN..] {
        sum = sum * 62 + base62_digit(c)?;
    }
    let before = &s[..cut + 1 + RANDOM_LEN];
    if sum != crc32fast::hash(before.as_bytes()) as u64 {
        return None;
    }
    Some(Parsed { prefix, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_describes_generated_keys() {
        assert_eq!(pattern("acme_live"), r"\bacme_live_[0-9A-Za-z]{38}\b");
        let k = generate("acme_live");
        let body = k.expose().strip_prefix("acme_live_").unwrap_or_default();
        assert_eq!(body.len(), BODY_LEN);
        assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    use proptest::prelude::*;

    #[test]
    fn a_generated_key_has_the_documented_shape() {
        let k = generate("acme_live");
        let p = parse(k.expose()).unwrap();
        assert_eq!(p.prefix, "acme_live");
        assert_eq!(p.body.len(), 38);
        assert_eq!(p.start().len(), "acme_live_".len() + 4);
        assert_eq!(p.end().len(), 4);
    }

    #[test]
    fn checksum_matches_zlib_crc32_in_base62() {
        let crc = crc32fast::hash(b"123456789");
        assert_eq!(crc, 0xCBF43926, "IEEE CRC32 check value");
        assert_eq!(encode_base62_fixed(0, 6), "000000");
        assert_eq!(encode_base62_fixed(61, 6), "00000z");
        assert_eq!(encode_base62_fixed(62, 6), "000010");
        // Computed independently with Python's zlib.crc32 and the documented alphabet.
        let known = format!("acme_{}3E5X3a", "A".repeat(32));
        assert!(parse(&known).is_some());
    }

    #[test]
    fn prefix_rules() {
        for ok in ["a", "acme", "acme_live", "a1_b2_c3"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "Acme",
            "acme_",
            "_acme",
            "ac__me",
            "ac-me",
            "kwt",
            "kwt_x",
            &"a".repeat(33),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_strings() {
        let k = generate("acme");
        let s = k.expose();
        assert!(parse("").is_none());
        assert!(parse("acme").is_none());
        assert!(parse(&format!(" {s}")).is_none());
        assert!(parse(&format!("{s} ")).is_none());
        assert!(parse(&s[..s.len() - 1]).is_none());
        assert!(parse(&format!("{s}0")).is_none());
        assert!(parse(&s.replace("acme_", "ACME_")).is_none());
    }

    #[test]
    fn key_material_is_found_inside_text() {
        let k = generate("acme");
        assert!(contains_key_material(&format!(
            "leaked: {} in a log",
            k.expose()
        )));
        assert!(contains_key_material(&format!("({})", k.expose())));
        assert!(!contains_key_material("billing prod"));
        assert!(!contains_key_material(&k.expose()[..20]));
    }

    proptest! {
        #[test]
        fn generate_then_parse_round_trips(prefix in "[a-z][a-z0-9]{0,8}(_[a-z0-9]{1,5}){0,2}") {
            let k = generate(&prefix);
            let p = parse(k.expose()).unwrap();
            prop_assert_eq!(p.prefix, prefix.as_str());
        }

        #[test]
        fn any_one_changed_character_is_rejected(pos in 0usize..43, c in proptest::char::any()) {
            let k = generate("acme");
            let s = k.expose();
            let pos = pos % s.chars().count();
            let original = s.chars().nth(pos).unwrap();
            prop_assume!(original != c);
            let changed: String = s.chars().enumerate().map(|(i, o)| if i == pos { c } else { o }).collect();
            prop_assert!(parse(&changed).is_none(), "accepted {:?}", changed);
        }
    }
}

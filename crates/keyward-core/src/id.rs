//! Object ids: a type prefix (`ks_`, `key_`, `tok_`, `evt_`, `wh_`, `usr_`) and 22 base62
//! characters: 8 of creation time (milliseconds) then 14 random, so ids sort by creation within
//! the tie-breaking rule "newest first = (created_at, id) descending".

use crate::keyformat::{base62_random, encode_base62_fixed};
use crate::time::Timestamp;

pub fn new_id(prefix: &str, now: Timestamp) -> String {
    let mut s = String::with_capacity(prefix.len() + 23);
    s.push_str(prefix);
    s.push('_');
    s.push_str(&encode_base62_fixed(now.millis().max(0) as u64, 8));
    s.push_str(&base62_random(14));
    s
}

/// Whether `s` looks like an id with this prefix (cheap check before any store access).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| {
            (1..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

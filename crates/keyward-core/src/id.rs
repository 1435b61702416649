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

macro_rules! typed_ids {
    ($($(#[$doc:meta])* $name:ident => $prefix:literal,)*) => {$(
        $(#[$doc])*
        ///
        /// A value of this type has the shape of an id of its kind (it may still name no object).
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// The id, when `s` has the shape of an id of this kind.
            pub fn parse(s: &str) -> Option<$name> {
                is_id($prefix, s).then(|| $name(s.to_string()))
            }

            /// A new id, created at `now`.
            pub fn new(now: Timestamp) -> $name {
                $name(new_id($prefix, now))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

typed_ids! {
    /// The id of an API key (`key_...`).
    KeyId => "key",
    /// The id of a keyspace (`ks_...`).
    KeyspaceId => "ks",
    /// The id of a management token (`tok_...`).
    TokenId => "tok",
    /// The id of a webhook subscription (`wh_...`).
    WebhookId => "wh",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_id_has_its_kinds_shape() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let k = KeyId::new(now);
        assert_eq!(KeyId::parse(k.as_str()), Some(k.clone()));
        assert!(k.starts_with("key_"));
        assert_eq!(KeyId::parse("ks_abc"), None);
        assert_eq!(
            KeyspaceId::parse("ks_abc").map(|i| i.to_string()),
            Some("ks_abc".into())
        );
        for bad in ["", "key_", "key", "key_a-b", "kwt_abc", "key_é"] {
            assert_eq!(KeyId::parse(bad), None, "{bad}");
        }
    }
}

//! The closed sets of names keyward writes: audit actions and target types, webhook event types,
//! anomaly kinds and usage granularities. Each is an enum, so a misspelt name does not compile;
//! `as_str` is the name on the wire and in the database, `parse` the way back.

use serde::{Serialize, Serializer};

macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s: String = serde::Deserialize::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown {} '{}'", stringify!($name), s))
                })
            }
        }
    };
}

named! {
    /// What an audit event records (`action`).
    AuditAction {
        KeyspaceCreate => "keyspace.create",
        KeyspaceUpdate => "keyspace.update",
        KeyCreate => "key.create",
        KeyUpdate => "key.update",
        KeyRotate => "key.rotate",
        KeyRevoke => "key.revoke",
        KeyExpire => "key.expire",
        /// A leak of the key was reported (its source in `changes`).
        KeyLeaked => "key.leaked",
        /// A batch of keys was imported (count, keyspace, external ids; no secret).
        KeysImport => "keys.import",
        /// An imported key's salted hash was replaced by its SHA-256 at its first verification.
        KeyRehash => "key.rehash",
        IdentityCreate => "identity.create",
        IdentityUpdate => "identity.update",
        IdentityDelete => "identity.delete",
        TokenCreate => "token.create",
        TokenRevoke => "token.revoke",
        UserCreate => "user.create",
        UserDisable => "user.disable",
        WebhookCreate => "webhook.create",
        WebhookDelete => "webhook.delete",
    }
}

named! {
    /// The kind of object an audit event is about (`target_type`).
    TargetType {
        Key => "key",
        Keyspace => "keyspace",
        Identity => "identity",
        Token => "token",
        User => "user",
        Webhook => "webhook",
    }
}

named! {
    /// The event types a webhook can subscribe to (`type` of a delivery).
    WebhookEvent {
        KeyCreated => "key.created",
        KeyRevoked => "key.revoked",
        KeyRotated => "key.rotated",
        KeyExpiring => "key.expiring",
        KeyExpired => "key.expired",
        KeyInactiveRevoked => "key.inactive_revoked",
        KeyAnomaly => "key.anomaly",
        KeyLeaked => "key.leaked",
        /// A key's quota fell below its keyspace's `quota_low_percent` of its refill amount
        /// (once per refill period).
        KeyQuotaLow => "key.quota_low",
        /// A verification was denied `RATE_LIMITED` (once per key, limit and window).
        KeyRateLimited => "key.rate_limited",
        /// Every key of the identity verifies `DISABLED` from now on.
        IdentityDisabled => "identity.disabled",
        /// The identity's keys verify as their own state says again (enabled, or deleted while
        /// disabled).
        IdentityEnabled => "identity.enabled",
    }
}

named! {
    /// What changed in a key's usage pattern (`kind` of an anomaly).
    AnomalyKind {
        /// Valid calls far above the key's own baseline.
        Spike => "spike",
        /// A source address never seen for that key.
        NewSource => "new_source",
        /// Used again after a long silence.
        DormantReactivated => "dormant_reactivated",
        /// Many denied verifications (e.g. a revoked key still being tried).
        DeniedBurst => "denied_burst",
    }
}

named! {
    /// The size of a usage bucket. `as_str` is the API's name; [`Granularity::code`] the
    /// one-letter code the `usage_buckets` table stores.
    Granularity {
        Minute => "minute",
        Hour => "hour",
        Day => "day",
    }
}

impl Granularity {
    /// The code stored in `usage_buckets.granularity`.
    pub fn code(self) -> &'static str {
        match self {
            Granularity::Minute => "m",
            Granularity::Hour => "h",
            Granularity::Day => "d",
        }
    }

    /// The length of one bucket in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The widest range one usage request may span, in days, so that one request cannot ask
    /// for millions of buckets.
    pub fn max_span_days(self) -> i64 {
        match self {
            Granularity::Minute => 7,
            Granularity::Hour => 400,
            Granularity::Day => 36_600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(*a));
        }
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(e.as_str()), Some(*e));
        }
        for k in AnomalyKind::ALL {
            assert_eq!(AnomalyKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(Granularity::parse("hour"), Some(Granularity::Hour));
        assert_eq!(Granularity::parse("h"), None);
        assert_eq!(
            serde_json::to_string(&AuditAction::KeyRevoke).unwrap(),
            "\"key.revoke\""
        );
    }
}

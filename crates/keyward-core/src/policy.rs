//! Keyspace policies and their presets. A policy is data; the rules that use it are pure
//! functions of the policy, the key and `now`.

use crate::invalid::Invalid;
use serde::{Deserialize, Deserializer, Serialize};

const DAY: i64 = 86_400;
/// Largest duration we accept in a policy or a TTL (about 300 years): keeps time arithmetic sane.
pub const MAX_DURATION_SECS: i64 = 10_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub max_lifetime_secs: Option<i64>,
    pub rotation_grace_secs: i64,
    pub max_grace_secs: Option<i64>,
    pub inactivity_revoke_secs: Option<i64>,
    pub expiry_warning_secs: Option<i64>,
    pub require_owner: bool,
    pub max_keys_per_owner: Option<i64>,
    /// What a reported leak of a live key does (`POST /v1/leaks`).
    #[serde(default)]
    pub on_leak: OnLeak,
    /// `key.quota_low` is sent when a refilling quota falls below this percentage of its
    /// amount (once per period); `None`: never. Shown only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_low_percent: Option<i64>,
}

/// What a reported leak of a live key does: revoke it at once (the default), or only notify
/// (audit event and `key.leaked` webhook) and leave the decision to a person.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    #[default]
    Revoke,
    Notify,
}

impl OnLeak {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLeak::Revoke => "revoke",
            OnLeak::Notify => "notify",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Strict,
    Standard,
    Relaxed,
}

impl Preset {
    /// Presets differ only in the fields the API contract lists for them (lifetime, inactivity,
    /// grace); every other field is `standard`'s.
    pub fn policy(self) -> Policy {
        let standard = Policy {
            max_lifetime_secs: Some(180 * DAY),
            rotation_grace_secs: DAY,
            max_grace_secs: Some(7 * DAY),
            inactivity_revoke_secs: Some(180 * DAY),
            expiry_warning_secs: Some(14 * DAY),
            require_owner: true,
            max_keys_per_owner: None,
            on_leak: OnLeak::Revoke,
            quota_low_percent: None,
        };
        match self {
            Preset::Standard => standard,
            Preset::Strict => Policy {
                max_lifetime_secs: Some(90 * DAY),
                inactivity_revoke_secs: Some(30 * DAY),
                rotation_grace_secs: 3600,
                ..standard
            },
            Preset::Relaxed => Policy {
                max_lifetime_secs: None,
                inactivity_revoke_secs: Some(365 * DAY),
                rotation_grace_secs: 7 * DAY,
                ..standard
            },
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Preset::Standard.policy()
    }
}

/// For a field that may be left out but not sent as `null` (with `#[serde(default)]`).
pub fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// `Some(None)` when the field is present and `null`, `None` when absent.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A policy as sent by a client: every field optional, `null` disables a limit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_lifetime_secs: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotation_grace_secs: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_grace_secs: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub inactivity_revoke_secs: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiry_warning_secs: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub require_owner: Option<Option<bool>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_keys_per_owner: Option<Option<i64>>,
    /// `null` is refused: a keyspace always says what a leak does.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_leak: Option<OnLeak>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub quota_low_percent: Option<Option<i64>>,
}

fn limit(name: &str, v: Option<i64>) -> Result<Option<i64>, Invalid> {
    match v {
        Some(n) if !(1..=MAX_DURATION_SECS).contains(&n) => Err(format!(
            "policy.{name} must be null or an integer in 1..{MAX_DURATION_SECS}"
        )
        .into()),
        other => Ok(other),
    }
}

impl PolicyPatch {
    /// Applies the patch field by field over `base`; a 400 message when a value is invalid.
    pub fn apply(&self, base: &Policy) -> Result<Policy, Invalid> {
        let mut p = base.clone();
        if let Some(v) = self.max_lifetime_secs {
            p.max_lifetime_secs = limit("max_lifetime_secs", v)?;
        }
        if let Some(v) = self.max_grace_secs {
            p.max_grace_secs = limit("max_grace_secs", v)?;
        }
        if let Some(v) = self.inactivity_revoke_secs {
            p.inactivity_revoke_secs = limit("inactivity_revoke_secs", v)?;
        }
        if let Some(v) = self.expiry_warning_secs {
            p.expiry_warning_secs = limit("expiry_warning_secs", v)?;
        }
        if let Some(v) = self.max_keys_per_owner {
            p.max_keys_per_owner = limit("max_keys_per_owner", v)?;
        }
        if let Some(v) = self.rotation_grace_secs {
            match v {
                Some(n) if (0..=MAX_DURATION_SECS).contains(&n) => p.rotation_grace_secs = n,
                _ => {
                    return Err(format!(
                        "policy.rotation_grace_secs must be an integer in 0..{MAX_DURATION_SECS} (never null)"
                    ).into())
                }
            }
        }
        if let Some(v) = self.require_owner {
            p.require_owner = v.ok_or("policy.require_owner must be true or false")?;
        }
        if let Some(v) = self.on_leak {
            p.on_leak = v;
        }
        if let Some(v) = self.quota_low_percent {
            if v.is_some_and(|n| !(1..=99).contains(&n)) {
                return Err("policy.quota_low_percent must be null or an integer in 1..99".into());
            }
            p.quota_low_percent = v;
        }
        Ok(p)
    }
}

impl Policy {
    /// The grace a rotation gets when the request names none: the policy's default, capped at
    /// `max_grace_secs` so that a rotation without options never fails on its own policy.
    pub fn default_grace_secs(&self) -> i64 {
        match self.max_grace_secs {
            Some(max) => self.rotation_grace_secs.min(max),
            None => self.rotation_grace_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_fill_then_policy_overrides_field_by_field() {
        let patch: PolicyPatch =
            serde_json::from_str(r#"{"max_lifetime_secs": null, "rotation_grace_secs": 0}"#)
                .unwrap();
        let p = patch.apply(&Preset::Strict.policy()).unwrap();
        assert_eq!(p.max_lifetime_secs, None);
        assert_eq!(p.rotation_grace_secs, 0);
        assert_eq!(p.inactivity_revoke_secs, Some(30 * DAY));
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            r#"{"max_lifetime_secs": 0}"#,
            r#"{"rotation_grace_secs": null}"#,
            r#"{"rotation_grace_secs": -1}"#,
            r#"{"require_owner": null}"#,
            r#"{"quota_low_percent": 0}"#,
            r#"{"quota_low_percent": 100}"#,
        ] {
            let patch: PolicyPatch = serde_json::from_str(bad).unwrap();
            assert!(patch.apply(&Policy::default()).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<PolicyPatch>(r#"{"max_lifetime": 5}"#).is_err());
    }
}

//! Domain records: keyspaces, keys, management tokens, actors and audit events, with the
//! validation rules of the API contract (the OpenAPI document) as pure functions.

use crate::invalid::Invalid;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keyformat::{check_no_secret, KeyHash, SECRET_IN_TEXT};
pub use crate::limits::RateLimit;
use crate::limits::{NamedLimit, Refill};
use crate::policy::Policy;
use crate::time::Timestamp;

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_REASON_LEN: usize = 500;
pub const MAX_META_BYTES: usize = 4096;
pub const MAX_SCOPES: usize = 100;
pub const MAX_LABELS: usize = 64;
pub const MAX_CIDRS: usize = 100;

/// Who did something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    Token,
    User,
    Cli,
    System,
    /// A leak report (`POST /v1/leaks`, a secret-scanning partner): whoever found the key.
    Scanner,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Token => "token",
            ActorKind::User => "user",
            ActorKind::Cli => "cli",
            ActorKind::System => "system",
            ActorKind::Scanner => "scanner",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => ActorKind::Token,
            "user" => ActorKind::User,
            "cli" => ActorKind::Cli,
            "system" => ActorKind::System,
            "scanner" => ActorKind::Scanner,
            _ => return None,
        })
    }
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            kind: ActorKind::System,
            id: "system".into(),
            name: "keyward".into(),
        }
    }
    pub fn cli(name: &str) -> Self {
        Actor {
            kind: ActorKind::Cli,
            id: "cli".into(),
            name: name.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub policy: Policy,
    /// Forward-auth's route rules, in order (see [`crate::routes`]).
    pub routes: Vec<crate::routes::RouteRule>,
    /// What a forward-auth request no rule matches gets.
    pub unmatched: crate::routes::Unmatched,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Rotating,
    Disabled,
    Expired,
    Revoked,
}

impl KeyStatus {
    /// A key's status at `now` from the fields it depends on (see [`Key::status`]).
    pub fn of(
        revoked: bool,
        expires_at: Option<Timestamp>,
        enabled: bool,
        rotating: bool,
        now: Timestamp,
    ) -> KeyStatus {
        if revoked {
            KeyStatus::Revoked
        } else if expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else if !enabled {
            KeyStatus::Disabled
        } else if rotating {
            KeyStatus::Rotating
        } else {
            KeyStatus::Active
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Rotating => "rotating",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => KeyStatus::Active,
            "rotating" => KeyStatus::Rotating,
            "disabled" => KeyStatus::Disabled,
            "expired" => KeyStatus::Expired,
            "revoked" => KeyStatus::Revoked,
            _ => return None,
        })
    }
}

/// A stored API key. The plaintext is never part of it; `hash` never leaves the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub keyspace_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub meta: Map<String, Value>,
    #[serde(skip)]
    pub hash: KeyHash,
    pub start: String,
    pub end: String,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub created_by: Actor,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<Actor>,
    pub revoked_reason: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub last_used_at: Option<Timestamp>,
    pub call_count: i64,
    pub denied_count: i64,
    /// The limit named `default` of `ratelimits` (the one-limit shorthand), kept equal to it
    /// by [`Key::set_ratelimits`].
    pub ratelimit: Option<RateLimit>,
    /// Every named rate limit of the key (all must allow a verification). Shown when it says
    /// more than `ratelimit` (a key of none or only `default` keeps the shape it had).
    #[serde(default, skip_serializing_if = "crate::limits::only_shorthand")]
    pub ratelimits: Vec<NamedLimit>,
    pub remaining: Option<i64>,
    /// How the quota is refilled (`remaining` is set to `refill.amount` each period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// The start of the refill period `remaining` counts down in (shown with a refill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refilled_at: Option<Timestamp>,
    /// When the refill was set: the origin of an interval in seconds.
    #[serde(skip)]
    pub refill_anchor: Option<Timestamp>,
    pub allowed_cidrs: Option<Vec<String>>,
    /// The rate limits of the key's identity, shared by all its keys (read with the key, for
    /// the verifier; shown on the identity).
    #[serde(skip)]
    pub owner_ratelimits: Vec<NamedLimit>,
    /// Its identity's `quota_version` when the identity has a quota (read with the key, for
    /// the verifier).
    #[serde(skip)]
    pub owner_quota_version: Option<i64>,
    /// The keyspace's `policy.quota_low_percent` (read with the key, for the verifier).
    #[serde(skip)]
    pub quota_low_percent: Option<i64>,
    /// The key's id in the system it was imported from: shown only on imported keys that
    /// have one (keys keyward issued keep their shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The key's owner is an identity that is disabled: the key verifies `DISABLED` while its
    /// own `enabled` and `status` are unchanged. Shown only when true (read with the key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_disabled: bool,
}

impl Key {
    /// A new, active key for `plaintext` (kept only as its hash, first and last characters)
    /// with a new id and every optional field empty: where creating a key starts. `None` when
    /// the plaintext is not a well-formed key.
    pub fn for_plaintext(
        plaintext: &str,
        keyspace_id: &str,
        now: Timestamp,
        created_by: Actor,
    ) -> Option<Key> {
        let parsed = crate::keyformat::parse(plaintext)?;
        Some(Key::with_hash(
            KeyHash::of(plaintext),
            parsed.start(),
            parsed.end(),
            keyspace_id,
            now,
            created_by,
        ))
    }

    /// A new, active key held as `hash`, showing `start` and `end`, with a new id and every
    /// optional field empty (an imported key starts here).
    pub fn with_hash(
        hash: KeyHash,
        start: String,
        end: String,
        keyspace_id: &str,
        now: Timestamp,
        created_by: Actor,
    ) -> Key {
        Key {
            id: crate::id::new_id("key", now),
            keyspace_id: keyspace_id.to_string(),
            name: String::new(),
            owner: None,
            scopes: Vec::new(),
            labels: BTreeMap::new(),
            meta: Map::new(),
            hash,
            start,
            end,
            enabled: true,
            created_at: now,
            created_by,
            updated_at: now,
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            last_used_at: None,
            call_count: 0,
            denied_count: 0,
            ratelimit: None,
            ratelimits: Vec::new(),
            remaining: None,
            refill: None,
            refilled_at: None,
            refill_anchor: None,
            allowed_cidrs: None,
            owner_ratelimits: Vec::new(),
            owner_quota_version: None,
            quota_low_percent: None,
            external_id: None,
            owner_disabled: false,
        }
    }

    /// Sets the key's rate limits (`ratelimit` follows: the one named `default`).
    pub fn set_ratelimits(&mut self, list: Vec<NamedLimit>) {
        self.ratelimit = crate::limits::shorthand(&list);
        self.ratelimits = list;
    }

    /// The key as of `now` with its quota refilled when a refill period began since the store
    /// last refilled it (the store refills at the next lease or sweep; a read never lags).
    pub fn refilled(&self, now: Timestamp) -> Option<Key> {
        let (amount, start) =
            crate::limits::refill_due(self.refill, self.refill_anchor, self.refilled_at, now)?;
        let mut k = self.clone();
        k.remaining = Some(amount);
        k.refilled_at = Some(start);
        Some(k)
    }

    /// `revoked` > `expired` > `disabled` > `rotating` > `active`, computed at `now`.
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        KeyStatus::of(
            self.revoked_at.is_some(),
            self.expires_at,
            self.enabled,
            self.rotated_to.is_some(),
            now,
        )
    }
}

impl Identity {
    /// The identity as of `now` with its quota refilled when a refill period began since the
    /// store last refilled it (as [`Key::refilled`]).
    pub fn refilled(&self, now: Timestamp) -> Option<Identity> {
        let (amount, start) =
            crate::limits::refill_due(self.refill, self.refill_anchor, self.refilled_at, now)?;
        let mut i = self.clone();
        i.remaining = Some(amount);
        i.refilled_at = Some(start);
        Some(i)
    }
}

/// The key object of the API: the stored key plus its status at read time.
#[derive(Serialize)]
pub struct KeyObject<'a> {
    #[serde(flatten)]
    pub key: std::borrow::Cow<'a, Key>,
    pub status: KeyStatus,
}

impl<'a> KeyObject<'a> {
    /// The key as read at `now`: its status, and its quota refilled when a period began.
    pub fn new(key: &'a Key, now: Timestamp) -> Self {
        KeyObject {
            key: key
                .refilled(now)
                .map_or(std::borrow::Cow::Borrowed(key), std::borrow::Cow::Owned),
            status: key.status(now),
        }
    }
}

/// An identity: the owner string keys carry, as an object (a customer, a team). Its `id` is
/// that owner string, so a key belongs to the identity named by its `owner`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub meta: Map<String, Value>,
    /// `false`: every key of the identity verifies `DISABLED` (the keys are not changed).
    pub enabled: bool,
    /// Rate limits shared by every key of the identity (all of them counted together). Shown
    /// when it has some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratelimits: Vec<NamedLimit>,
    /// A quota shared by every key of the identity (each valid verification of one of them
    /// spends `cost` from it as well as from the key's own); shown when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refilled_at: Option<Timestamp>,
    #[serde(skip)]
    pub refill_anchor: Option<Timestamp>,
    /// How many times the quota was set anew (nodes drop their leases of an older one).
    #[serde(skip)]
    pub quota_version: i64,
    pub created_at: Timestamp,
    pub created_by: Actor,
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Manager,
    Viewer,
    Auditor,
    Verifier,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Verifier => "verifier",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => Role::Admin,
            "manager" => Role::Manager,
            "viewer" => Role::Viewer,
            "auditor" => Role::Auditor,
            "verifier" => Role::Verifier,
            _ => return None,
        })
    }
    pub fn may(self, action: Permission) -> bool {
        use Permission::*;
        use Role::*;
        matches!(
            (self, action),
            (Admin, _)
                | (Verifier, Verify)
                | (Manager | Viewer | Auditor, ReadKeys)
                | (Manager, WriteKeys)
                | (Auditor, ReadAudit)
        )
    }
}

/// The rows of the role matrix of the API contract (OpenAPI document, "Authentication and roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Verify,
    ReadKeys,
    WriteKeys,
    WriteKeyspaces,
    ReadAudit,
    ManageTokens,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub keyspace_ids: Option<Vec<String>>,
    pub created_at: Timestamp,
    pub created_by: Actor,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<Actor>,
    pub revoked_reason: Option<String>,
    pub last_used_at: Option<Timestamp>,
}

impl Token {
    pub fn is_usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
    /// Whether this token may see objects of keyspace `ks`.
    pub fn sees_keyspace(&self, ks: &str) -> bool {
        self.keyspace_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == ks))
    }
}

/// An audit event as stored and served. `hash` covers every other field (see [`crate::audit`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub id: String,
    pub seq: i64,
    pub at: Timestamp,
    pub actor: Actor,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub changes: Map<String, Value>,
    pub prev_hash: String,
    pub hash: String,
}

// ---- validation of client input (messages are for 400 responses) ----

pub fn check_name(field: &str, s: &str) -> Result<(), Invalid> {
    check_no_secret(field, s)?;
    let n = s.chars().count();
    if n == 0 || n > MAX_NAME_LEN || s.trim().is_empty() {
        return Err(
            format!("{field} must be 1..{MAX_NAME_LEN} characters, not only spaces").into(),
        );
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{field} may not contain control characters").into());
    }
    Ok(())
}

pub fn check_reason(s: &str) -> Result<(), Invalid> {
    check_no_secret("reason", s)?;
    if s.chars().any(char::is_control) {
        return Err("reason may not contain control characters".into());
    }
    let n = s.chars().count();
    if n == 0 || n > MAX_REASON_LEN || s.trim().is_empty() {
        return Err(format!("reason must be 1..{MAX_REASON_LEN} characters").into());
    }
    Ok(())
}

pub fn check_scopes(scopes: &[String]) -> Result<(), Invalid> {
    if scopes.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} scopes").into());
    }
    scopes.iter().try_for_each(|s| {
        check_no_secret("a scope", s)?;
        crate::scope::check_key_scope(s)
    })
}

pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels").into());
    }
    for (k, v) in labels {
        check_no_secret("a label name", k)?;
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
        if !key_ok {
            return Err(format!(
                "label name '{}' must be 1..64 characters of [A-Za-z0-9_./-]",
                crate::keyformat::shown(k)
            )
            .into());
        }
        check_no_secret("a label value", v)?;
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(format!(
                "label '{k}': value must be at most 256 characters without control characters"
            )
            .into());
        }
    }
    Ok(())
}

pub fn check_meta(meta: &Map<String, Value>) -> Result<(), Invalid> {
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_META_BYTES {
        return Err(
            format!("meta is {size} bytes as compact JSON; at most {MAX_META_BYTES}").into(),
        );
    }
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => crate::keyformat::contains_key_material(s),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(o) => o
                .iter()
                .any(|(k, v)| crate::keyformat::contains_key_material(k) || walk(v)),
            _ => false,
        }
    }
    if meta
        .iter()
        .any(|(k, v)| crate::keyformat::contains_key_material(k) || walk(v))
    {
        return Err(format!("meta {SECRET_IN_TEXT}").into());
    }
    Ok(())
}

pub fn check_cidrs(cidrs: &[String]) -> Result<(), Invalid> {
    if cidrs.len() > MAX_CIDRS {
        return Err(format!("at most {MAX_CIDRS} allowed_cidrs").into());
    }
    for c in cidrs {
        parse_cidr(c)?;
    }
    Ok(())
}

/// A CIDR (`203.0.113.0/24`, `2001:db8::/32`) or a single address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, Invalid> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(a));
    }
    Err(format!(
        "'{}' is not a CIDR such as 203.0.113.0/24",
        crate::keyformat::shown(s)
    )
    .into())
}

/// Parses a source address; an IPv4-mapped IPv6 address becomes the IPv4 address.
pub fn parse_ip(s: &str) -> Result<std::net::IpAddr, Invalid> {
    let ip: std::net::IpAddr = s.parse().map_err(|_| {
        format!(
            "ip '{}' is not an IPv4 or IPv6 address",
            crate::keyformat::shown(s)
        )
    })?;
    Ok(canonical_ip(ip))
}

pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// A webhook subscription. Its signing secret is returned once, at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub keyspace_id: Option<String>,
    pub created_at: Timestamp,
    pub created_by: Actor,
}

/// A change in a key's usage pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub id: String,
    pub key_id: String,
    pub keyspace_id: String,
    pub kind: crate::kinds::AnomalyKind,
    pub detected_at: Timestamp,
    pub detail: Value,
}

/// A recent source address of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub ip: String,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub count: i64,
}

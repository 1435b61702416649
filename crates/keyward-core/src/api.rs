//! The HTTP API's bodies as types: what a client sends and what the server answers.
//!
//! The server parses its request bodies into these types and renders its answers from the
//! [`crate::model`] types they wrap, so the client crate (`keyward-client`), which re-exports
//! this module, speaks exactly the server's shapes. Request types refuse unknown fields, as the
//! API does; answer types accept fields they do not know, so an older client keeps working
//! against a newer server.
//!
//! Plaintext keys, tokens and webhook secrets in answers are [`Secret`]s: they never show in
//! `Debug` output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{NamedLimit, Refill};
use crate::model::{Key, KeyStatus, Keyspace, RateLimit, Role, Token, Webhook};
use crate::policy::{double_option, PolicyPatch, Preset};
use crate::routes::{self, RouteRule, Unmatched};
use crate::secret::Secret;
use crate::time::Timestamp;
use crate::verify::Code;

pub use crate::policy::not_null;

// ---------------------------------------------------------------- requests

/// `POST /v1/keyspaces`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyspace {
    pub name: String,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyPatch>,
    /// Forward-auth's route rules (`null` is refused: leave the field out for none).
    #[serde(
        default,
        deserialize_with = "routes::deserialize_rules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<RouteRule>,
    #[serde(default)]
    pub unmatched: Unmatched,
}

/// `PATCH /v1/keyspaces/{id}`: fields left `None` are unchanged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchKeyspace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyPatch>,
    /// Replaces the rules as a whole (`null` is refused).
    #[serde(
        default,
        deserialize_with = "routes::deserialize_some_rules",
        skip_serializing_if = "Option::is_none"
    )]
    pub routes: Option<Vec<RouteRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<Unmatched>,
}

/// `POST /v1/keys`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub keyspace_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimit>,
    /// Named rate limits (exclusive with `ratelimit`, which is one named `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<NamedLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Needs `remaining`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `PATCH /v1/keys/{id}`: `None` leaves a field as it is, `Some(None)` sends `null` (clears it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchKey {
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub owner: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub labels: Option<Option<BTreeMap<String, String>>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub meta: Option<Option<Map<String, Value>>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Option<Timestamp>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub enabled: Option<Option<bool>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ratelimit: Option<Option<RateLimit>>,
    /// The whole list of named limits (`null` or `[]` clears them all).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ratelimits: Option<Option<Vec<NamedLimit>>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub refill: Option<Option<Refill>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_cidrs: Option<Option<Vec<String>>>,
}

/// `POST /v1/keys/revoke`: every live key of an owner.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRevoke {
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace_id: Option<String>,
    pub reason: String,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/keys/{id}/revoke` and `POST /v1/tokens/{id}/revoke`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    pub reason: String,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<i64>,
}

/// `POST /v1/webhooks`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace_id: Option<String>,
}

/// `POST /v1/identities`: the owner string `id` as an object.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentity {
    pub id: String,
    /// The id when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratelimits: Vec<NamedLimit>,
    /// A quota shared by all its keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Needs `remaining`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// `PATCH /v1/identities/{id}`: fields left out are unchanged (`null` is refused).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchIdentity {
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub meta: Option<Map<String, Value>>,
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub enabled: Option<bool>,
    /// The whole list (`[]` clears it).
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub ratelimits: Option<Vec<NamedLimit>>,
    /// `null` removes the quota (and its refill).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub refill: Option<Option<Refill>>,
}

/// `POST /v1/keyspaces/{id}/keys/import`: keys issued elsewhere, at most
/// [`MAX_IMPORT_BATCH`] a request. The batch is taken whole or refused whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKeys {
    pub keys: Vec<ImportRecord>,
    /// Import keys the keyspace policy would refuse (too long a lifetime, no owner, more keys
    /// per owner than allowed); the inventory report flags them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_policy_violations: bool,
}

/// Records a request may carry.
pub const MAX_IMPORT_BATCH: usize = 1000;

/// How an imported record's `hash` was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlgorithm {
    /// SHA-256 of the whole key, as 64 hex characters or base64.
    #[serde(rename = "sha256")]
    Sha256,
    /// An Argon2id PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
    #[serde(rename = "argon2id")]
    Argon2id,
    /// A bcrypt modular-crypt string (`$2a$`, `$2b$` or `$2y$`).
    #[serde(rename = "bcrypt")]
    Bcrypt,
    /// Django's `pbkdf2_sha256$iterations$salt$hash`.
    #[serde(rename = "pbkdf2-sha256")]
    Pbkdf2Sha256,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Argon2id => "argon2id",
            HashAlgorithm::Bcrypt => "bcrypt",
            HashAlgorithm::Pbkdf2Sha256 => "pbkdf2-sha256",
        }
    }
}

/// One key of an [`ImportKeys`] batch: the fields of a created key, the times it had, and the
/// key itself as exactly one of `plaintext` or `hash` (with `algorithm`, and `lookup` for a
/// salted hash). `Debug` never shows the plaintext.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// `"imported key"` when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<NamedLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// When the key was issued (now when left out; never in the future).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was last used, as the old system knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    /// The key's id in the old system: importing the same record again is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(
        default,
        serialize_with = "expose_some",
        skip_serializing_if = "Option::is_none"
    )]
    pub plaintext: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HashAlgorithm>,
    /// The key's leading characters that find a salted hash (unique in the keyspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

fn expose_some<S: serde::Serializer>(s: &Option<Secret>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => crate::secret::expose(s, ser),
        None => ser.serialize_none(),
    }
}

/// The answer to an import: per record, in order, the created key's id or `"skipped"` (its
/// `external_id` was imported before with the same hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub keys: Vec<String>,
    pub created: u64,
    pub skipped: u64,
}

/// `POST /v1/leaks`: a key found where it should not be. Anyone may report one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakReport {
    #[serde(serialize_with = "crate::secret::expose")]
    pub key: Secret,
    /// Where it was found (a URL, a file): kept in the audit event and the webhook.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub source: Option<String>,
    /// Who found it.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub reporter: Option<String>,
}

/// `POST /v1/keys/lookup`: which of these SHA-256 hashes (64 lowercase hex characters) are
/// keys, and in what state. Only hashes travel: what a scanner found stays on its machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLookupRequest {
    pub hashes: Vec<String>,
}

/// One hash of a [`KeyLookupRequest`] that is a key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyMatch {
    pub hash: String,
    pub key_id: String,
    pub keyspace_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub status: KeyStatus,
}

/// `POST /v1/verify`. The key is a [`Secret`]: it never shows in `Debug` output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(serialize_with = "crate::secret::expose")]
    pub key: Secret,
    // Optional, but not nullable: `null` is 400 like any other value of the wrong type.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<String>,
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub cost: Option<i64>,
}

impl VerifyRequest {
    /// A request for `key` with no scopes, no address (a key limited to CIDRs is then
    /// `IP_NOT_ALLOWED`) and a cost of 1.
    pub fn new(key: impl Into<String>) -> Self {
        VerifyRequest {
            key: Secret::new(key.into()),
            scopes: None,
            ip: None,
            cost: None,
        }
    }
}

// ---------------------------------------------------------------- answers

/// A page of a list: the items and, when there are more, the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A key as the API shows it: the stored key (never its hash) plus its status at read time.
/// The server renders the same shape from [`crate::model::KeyObject`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    #[serde(flatten)]
    pub key: Key,
    pub status: KeyStatus,
}

/// The answer to creating or rotating a key: the key and, this once, its plaintext.
#[derive(Clone, Debug, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub object: ApiKey,
    /// The plaintext key (the `key` member). Shown once; keyward keeps only its hash.
    #[serde(rename = "key")]
    pub plaintext: Secret,
}

/// The answer to revoking every key of an owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRevoked {
    pub revoked: u64,
    pub key_ids: Vec<String>,
}

/// The answer to creating a management token: the token and, this once, its plaintext.
#[derive(Clone, Debug, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub object: Token,
    /// The plaintext token (the `token` member). Shown once.
    #[serde(rename = "token")]
    pub plaintext: Secret,
}

/// The answer to creating a webhook: the webhook and, this once, its signing secret.
#[derive(Clone, Debug, Deserialize)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub object: Webhook,
    /// The signing secret (the `secret` member). Shown once.
    pub secret: Secret,
}

/// A rate limit's state in a `VALID` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitState {
    pub limit: i64,
    pub remaining: i64,
    pub reset_at: Timestamp,
}

/// A named limit's state in a `VALID` answer's `ratelimits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedLimitState {
    pub name: String,
    pub limit: i64,
    pub remaining: i64,
    pub reset_at: Timestamp,
    /// The limit is the identity's, counted over all its keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity: bool,
}

/// The answer of `POST /v1/verify` (and the body of a forward-auth denial). The key's members
/// are present when the key was found; `VALID` answers carry all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    pub valid: bool,
    pub code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The quota left after this call (`null`: no quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimitState>,
    /// Every rate limit that applied (the key's and its identity's), after this call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratelimits: Vec<NamedLimitState>,
    /// In a `RATE_LIMITED` answer: when the exhausted window resets (the latest of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<Timestamp>,
    /// In a `RATE_LIMITED` answer: the name of the exhausted limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// The error envelope of every non-2xx answer: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ApiError,
}

/// An error as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable code such as `NOT_FOUND` or `BAD_REQUEST`.
    pub code: String,
    pub message: String,
    /// The request's id (also in the `X-Request-Id` header and the server's log).
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A keyspace as the API shows it.
pub type ApiKeyspace = Keyspace;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, KeyObject};

    #[test]
    fn the_key_object_the_server_renders_reads_back_as_an_api_key() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let key = Key::for_plaintext(
            crate::keyformat::generate("acme").expose(),
            "ks_1",
            now,
            Actor::cli("ops"),
        )
        .unwrap_or_else(|| unreachable!("a generated key parses"));
        let json = serde_json::to_string(&KeyObject::new(&key, now)).unwrap_or_default();
        let back: ApiKey = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(back.status, KeyStatus::Active);
        assert_eq!(back.key.id, key.id);
        assert_eq!(back.key.start, key.start);
        assert_eq!(back.key.hash, crate::keyformat::KeyHash::default());
        assert!(!json.contains("hash"));
    }

    #[test]
    fn a_patch_sends_only_what_changes_and_null_to_clear() {
        let p = PatchKey {
            owner: Some(None),
            name: Some(Some("n".into())),
            ..PatchKey::default()
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap_or_default(),
            serde_json::json!({"name": "n", "owner": null})
        );
    }

    #[test]
    fn plaintexts_in_answers_never_show_in_debug() {
        let v = VerifyRequest::new("acme_supersecret");
        assert!(!format!("{v:?}").contains("supersecret"));
        assert_eq!(
            serde_json::to_value(&v).unwrap_or_default(),
            serde_json::json!({"key": "acme_supersecret"})
        );
    }
}

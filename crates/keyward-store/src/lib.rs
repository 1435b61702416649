//! keyward-store: the [`Store`] interface and its two backends.
//!
//! # Layout
//! - [`Store`] / [`StoreTx`]: what the server needs from storage. Every control-plane change runs
//!   in one [`StoreTx`], which also appends the audit event ([`StoreTx::append_audit`]) and, for
//!   keys, the change-feed row. Domain rules live in the server; the store only reads and writes.
//! - `sql`: one implementation written once over SQL that both SQLite and PostgreSQL accept,
//!   cut by concern (`sql/keys.rs`, `sql/usage.rs`, `sql/audit.rs`, ...) and instantiated for
//!   each backend by macros (`sqlite::SqliteStore`, `postgres::PgStore`).
//! - [`users`]: the interface of dashboard users and sessions (their SQL is in `sql/users.rs`).
//! - `migrations/{sqlite,postgres}/`: each backend's own schema, run at start by [`open`] through
//!   sqlx's checksummed migrator (`_sqlx_migrations`; see `sql/migrate.rs`).
//!
//! The URL scheme picks the backend: `sqlite://path` or `postgres://...`.

use std::sync::Arc;

use async_trait::async_trait;
use keyward_core::keyformat::KeyHash;
use keyward_core::kinds::{AuditAction, Granularity, TargetType};
use keyward_core::model::{
    Actor, Anomaly, AuditEvent, Identity, Key, KeyStatus, Keyspace, Source, Token, Webhook,
};
use keyward_core::time::Timestamp;
use serde_json::{Map, Value};

mod sql;
pub mod testing;
pub mod users;

pub use sql::postgres::PgStore;
pub use sql::sqlite::SqliteStore;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A unique constraint was violated (the name or column says which).
    Conflict(String),
    /// The database cannot be reached.
    Unavailable(String),
    /// Anything else: a bug or a corrupt row. The text is for logs, never for clients.
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(c) => write!(f, "conflict: {c}"),
            StoreError::Unavailable(c) => write!(f, "store unavailable: {c}"),
            StoreError::Other(c) => write!(f, "store error: {c}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An audit event before the chain gives it `seq`, `prev_hash` and `hash`.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: String,
    pub at: Timestamp,
    pub actor: Actor,
    pub action: AuditAction,
    pub target_type: TargetType,
    pub target_id: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub changes: Map<String, Value>,
}

/// Keyset pagination: rows strictly after `after` in the list's order.
#[derive(Clone, Debug, Default)]
pub struct Page<C> {
    pub limit: i64,
    pub after: Option<C>,
}

/// The position of a row in a "newest first" list: (`created_at` ms, id).
pub type TimeCursor = (i64, String);

#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    /// Only these keyspaces (a token's limit, or the `keyspace_id` filter). `None`: all.
    pub keyspace_ids: Option<Vec<String>>,
    pub owner: Option<String>,
    pub status: Option<KeyStatus>,
    pub label: Option<(String, String)>,
    pub name_contains: Option<String>,
    pub unused_for_secs: Option<i64>,
    /// The instant `status` and `unused_for_secs` are evaluated at.
    pub now: Timestamp,
    pub page: Page<TimeCursor>,
}

/// The thresholds of a keyspace's findings (its policy, as the inventory report reads it), for
/// [`Store::key_census`] and [`Store::flagged_keys`].
#[derive(Clone, Debug)]
pub struct CensusRules {
    pub keyspace_id: String,
    /// The policy's `max_lifetime_secs`, in milliseconds.
    pub max_lifetime_ms: Option<i64>,
    /// Keys expiring at or before this instant are `expiring_soon` (no warning window: none).
    pub warn_until: Option<Timestamp>,
    /// Keys last used (or, never used, created) at or before this instant are `inactive`.
    pub inactive_before: Timestamp,
}

/// One keyspace's keys counted by status as of an instant, with the live keys (active,
/// rotating, disabled) each finding of the inventory report flags, and every key's
/// verifications.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCensus {
    pub active: i64,
    pub rotating: i64,
    pub disabled: i64,
    pub expired: i64,
    pub revoked: i64,
    pub no_owner: i64,
    pub no_expiry: i64,
    pub too_long: i64,
    pub expiring: i64,
    pub inactive: i64,
    pub calls: i64,
    pub denied: i64,
}

/// What the inventory report reads of a key ([`Store::key_briefs`]): its status fields, its
/// owner and name, its usage; not its JSON columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBrief {
    pub id: String,
    pub keyspace_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub rotating: bool,
    pub last_used_at: Option<Timestamp>,
    pub call_count: i64,
}

impl KeyBrief {
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        KeyStatus::of(
            self.revoked,
            self.expires_at,
            self.enabled,
            self.rotating,
            now,
        )
    }
}

/// Which flagged keys [`Store::flagged_keys`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flagged {
    /// Live keys expiring within the warning window, soonest first.
    Expiring,
    /// Live inactive keys, least recently used first.
    Inactive,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub target_id: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Newest first; the cursor is the last `seq` seen.
    pub page: Page<i64>,
}

/// Counts gathered in memory by the verification path, written in one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    pub calls: i64,
    pub denied: i64,
    pub last_used_at: Option<Timestamp>,
    /// Quota spent (sum of `cost` of valid verifications), taken from `remaining`.
    pub consumed: i64,
    /// Verifications by minute and outcome code.
    pub buckets: Vec<MinuteCount>,
    /// Source addresses seen.
    pub sources: Vec<SourceSeen>,
}

/// Verifications of one key in one minute with one outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinuteCount {
    /// Start of the minute, in milliseconds since the epoch.
    pub minute_ms: i64,
    /// The verification code (`VALID`, `REVOKED`, ...).
    pub code: String,
    pub n: i64,
}

/// A source address a key was verified from since the last flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSeen {
    pub ip: String,
    pub first: Timestamp,
    pub last: Timestamp,
    pub count: i64,
}

/// Source addresses kept per key (the most recently seen).
pub const MAX_SOURCES_PER_KEY: i64 = 50;

/// A stored usage bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub key_id: String,
    pub start: Timestamp,
    pub code: String,
    pub n: i64,
}

/// One key's verifications over a span of minute buckets: valid ones and denied ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub key_id: String,
    pub valid: i64,
    pub denied: i64,
}

/// An event in the webhook outbox: `body` is the exact JSON every delivery sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: String,
    pub kind: String,
    pub at: Timestamp,
    pub keyspace_id: Option<String>,
    pub key_id: Option<String>,
    pub body: String,
}

/// A delivery that is due, with what it needs to be sent.
#[derive(Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub event_id: String,
    pub kind: String,
    pub body: String,
    pub attempts: i64,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("id", &self.id)
            .field("event_id", &self.event_id)
            .finish_non_exhaustive()
    }
}

/// One delivery attempt, as listed by `GET /v1/webhooks/{id}/deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    #[serde(skip)]
    pub id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub at: Timestamp,
}

/// What happens to a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    RetryAt(Timestamp),
    GiveUp,
}

#[derive(Clone, Debug, Default)]
pub struct AnomalyFilter {
    pub keyspace_ids: Option<Vec<String>>,
    pub key_id: Option<String>,
    pub since: Option<Timestamp>,
    /// Newest first by (detected_at, id).
    pub page: Page<TimeCursor>,
}

/// What [`Store::lease_quota`] granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub granted: i64,
    /// The unleased quota left after this grant.
    pub left: i64,
    /// For a quota with a refill: when the period of this grant ends (its units may not be
    /// spent from then on).
    pub until: Option<Timestamp>,
}

/// A change-feed row: key `key_id` (with hash `key_hash`) changed, or, with `keyspace`, the
/// keyspace `key_id` (its rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub key_id: String,
    pub key_hash: KeyHash,
    /// [`Store::node_id`] of the store that wrote it.
    pub origin: String,
    /// The key's quota was set anew: every node's lease of it is void.
    pub quota: bool,
    /// The row is about keyspace `key_id`, not a key (`key_hash` is zero).
    pub keyspace: bool,
}

/// What an import records beside the key row (see the `key_imports` migration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyImport {
    pub key_id: String,
    pub keyspace_id: String,
    /// SHA-256 of what the record carried, to recognise it when imported again.
    pub fingerprint: [u8; 32],
    /// Whether the key has keyward's prefix and checksum.
    pub keyward_format: bool,
    /// With `slow_hash`: the key's leading characters that find it.
    pub lookup: Option<String>,
    /// A salted password hash of the key (PHC or modular-crypt string), until its first
    /// verification.
    pub slow_hash: Option<String>,
}

/// A key still held as a salted hash, found by its lookup prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowCandidate {
    pub key_id: String,
    pub keyspace_id: String,
    pub lookup: String,
    pub slow_hash: String,
}

/// What a write transaction begun now would most likely know, made without the database
/// ([`Store::predict`]): what this node's last commit left. Only
/// [`Store::create_key_predicted`] may rely on it, because only its guard checks that no write
/// came between; while it is held, this node makes no other prediction.
pub struct Prediction {
    pub(crate) known: sql::known::Known,
    pub(crate) _writing: sql::known::Writing,
}

impl Prediction {
    /// The keyspace `id` as of this node's last commit, if it read or checked it then.
    pub fn keyspace(&self, id: &str) -> Option<Keyspace> {
        self.known.keyspace(id)
    }
}

/// One control-plane transaction. Dropping it without [`StoreTx::commit`] rolls it back.
#[async_trait]
pub trait StoreTx: Send {
    /// Dashboard users, changed in this transaction (see [`users`]).
    fn users(&mut self) -> &mut dyn users::UserTx;

    async fn keyspace(&mut self, id: &str) -> Result<Option<Keyspace>>;
    async fn insert_keyspace(&mut self, ks: &Keyspace) -> Result<()>;
    async fn update_keyspace(&mut self, ks: &Keyspace) -> Result<()>;

    async fn key(&mut self, id: &str) -> Result<Option<Key>>;
    /// Inserts a key and its change-feed row.
    async fn insert_key(&mut self, key: &Key) -> Result<()>;
    /// Inserts keys and their change-feed rows, one round trip per few hundred keys (bulk
    /// loads and imports).
    async fn insert_keys(&mut self, keys: &[Key]) -> Result<()>;
    /// [`insert_key`](Self::insert_key), [`append_audit`](Self::append_audit) of its event and
    /// [`commit`](Self::commit), the writes in one round trip when the chain's head is known,
    /// and with the commit in that same round trip on SQLite (a key created). An error leaves
    /// none of it stored.
    async fn commit_with_key(self: Box<Self>, key: &Key, event: NewEvent) -> Result<AuditEvent>;
    /// Writes the revocation each key carries (`revoked_at`, `revoked_by`, `revoked_reason`,
    /// `updated_at`; nothing else) and a change-feed row per key, in a few statements per few
    /// hundred keys (bulk revocation).
    async fn revoke_keys(&mut self, keys: &[Key]) -> Result<()>;
    /// Writes every mutable field of a key (not its usage counters, not `remaining`) and a
    /// change-feed row.
    async fn update_key(&mut self, key: &Key) -> Result<()>;
    /// Sets a key's quota (`remaining` is otherwise changed only by usage batches, so a stale
    /// read can never overwrite another node's consumption).
    async fn set_remaining(&mut self, id: &str, remaining: Option<i64>) -> Result<()>;
    /// Writes a key's `refill`, `refill_anchor` and `refilled_at` (with `set_remaining` when
    /// the quota is set anew).
    async fn set_refill(&mut self, key: &Key) -> Result<()>;
    /// Keys of `owner` that are neither revoked nor expired at `now`, in the given keyspaces
    /// (`None`: all), for bulk revocation and `max_keys_per_owner`.
    async fn live_keys_of_owner(
        &mut self,
        owner: &str,
        keyspace_ids: Option<&[String]>,
        now: Timestamp,
    ) -> Result<Vec<Key>>;
    async fn identity(&mut self, id: &str) -> Result<Option<Identity>>;
    async fn insert_identity(&mut self, identity: &Identity) -> Result<()>;
    async fn update_identity(&mut self, identity: &Identity) -> Result<()>;
    /// Sets an identity's quota anew (`remaining`, `refill`, `refill_anchor`, `refilled_at`):
    /// bumps its `quota_version` and voids every node's lease of it.
    async fn set_identity_quota(&mut self, identity: &Identity) -> Result<()>;
    /// False when there was no such identity.
    async fn delete_identity(&mut self, id: &str) -> Result<bool>;
    /// A change-feed row, dated `at`, for each key of `owner` that is not revoked: they verify
    /// differently from now on (an identity was disabled or enabled).
    async fn announce_owner(&mut self, owner: &str, at: Timestamp) -> Result<()>;
    /// Records what an import carried for a key inserted in this transaction.
    async fn insert_import(&mut self, import: &KeyImport) -> Result<()>;
    /// The id of the key with `external_id` in a keyspace, with its import fingerprint.
    async fn key_by_external_id(
        &mut self,
        keyspace_id: &str,
        external_id: &str,
    ) -> Result<Option<(String, Option<Vec<u8>>)>>;
    /// Whether a key (of any keyspace) has this hash.
    async fn hash_taken(&mut self, hash: &KeyHash) -> Result<bool>;
    /// Whether a lookup prefix still in use (any keyspace) is `lookup`, a prefix of it, or
    /// starts with it: lookups are kept prefix-free, so a presented key has at most one.
    async fn lookup_conflicts(&mut self, lookup: &str) -> Result<bool>;
    /// A keyspace's feed row dated `at`: keys were imported into it.
    async fn announce_import(&mut self, keyspace_id: &str, at: Timestamp) -> Result<()>;
    /// Replaces a key's salted hash by its SHA-256 (and appends its feed row, dated `at`);
    /// false when it was already done.
    async fn rehash(&mut self, key_id: &str, hash: &KeyHash, at: Timestamp) -> Result<bool>;
    /// Applies usage inside this transaction (used to settle counts before a rotation).
    async fn apply_usage(&mut self, deltas: &[UsageDelta]) -> Result<()>;

    async fn token(&mut self, id: &str) -> Result<Option<Token>>;
    async fn insert_token(&mut self, token: &Token, hash: &KeyHash) -> Result<()>;
    async fn update_token(&mut self, token: &Token) -> Result<()>;

    /// Appends the next event of the hash chain.
    async fn append_audit(&mut self, event: NewEvent) -> Result<AuditEvent>;
    /// Appends events in order, each the next of the chain, in a few statements per thousand.
    async fn append_audits(&mut self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>>;

    /// Puts an event in the webhook outbox with one delivery per matching webhook.
    async fn enqueue(&mut self, event: &OutboxEvent) -> Result<()>;
    /// [`enqueue`](Self::enqueue) of each event, in a few statements per few hundred.
    async fn enqueue_all(&mut self, events: &[OutboxEvent]) -> Result<()>;
    async fn insert_webhook(&mut self, hook: &Webhook, secret: &str) -> Result<()>;
    async fn webhook(&mut self, id: &str) -> Result<Option<Webhook>>;
    /// Deletes a webhook and its pending deliveries.
    async fn delete_webhook(&mut self, id: &str) -> Result<()>;
    /// Sets `expired_at` if the key has expired and was neither marked expired nor revoked.
    async fn mark_expired(&mut self, id: &str, now: Timestamp) -> Result<bool>;
    /// Sets `warned_at` once.
    async fn mark_warned(&mut self, id: &str, now: Timestamp) -> Result<bool>;
    /// Records an anomaly unless one with the same `dedup` exists; true when recorded.
    async fn insert_anomaly(&mut self, a: &Anomaly, dedup: &str) -> Result<bool>;
    /// Records that a threshold notice (`key.rate_limited`, `key.quota_low`) was sent; `false`
    /// when one with this `dedup` text was already (by any node).
    async fn insert_notice(&mut self, dedup: &str, at: Timestamp) -> Result<bool>;
    /// Copies the source-address record of one key to another (a successor starts with its
    /// predecessor's addresses).
    async fn copy_sources(&mut self, from_key: &str, to_key: &str) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Dashboard users, sessions and the setup link (see [`users`]).
    fn users(&self) -> &dyn users::UserStore;

    /// Which backend, for logs and `/readyz`.
    fn backend(&self) -> &'static str;
    /// A random id of this opened store (one per process), written with each change-feed row so
    /// a node can skip its own changes when following the feed.
    fn node_id(&self) -> &str;
    /// Signalled when another node (another opened store) may have written to the change feed
    /// (PostgreSQL LISTEN/NOTIFY; a store is not signalled for its own commits);
    /// `None` where the backend has no notifications.
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>>;
    async fn ping(&self) -> Result<()>;
    /// Whether a write transaction can start (a read-only file, mount, role or replica cannot):
    /// takes the write lock and rolls back, writing nothing.
    async fn writable(&self) -> Result<()> {
        drop(self.begin().await?);
        Ok(())
    }
    /// Writes a consistent copy of the whole database to `path` (a new file) while others keep
    /// reading and writing: SQLite's `VACUUM INTO`. PostgreSQL has `pg_dump` for this and
    /// refuses.
    async fn backup_to(&self, path: &str) -> Result<()>;
    /// Closes every connection. For SQLite this checkpoints the write-ahead log into the
    /// database file and removes it, so the file alone is the whole database again.
    async fn close(&self);
    /// Starts a write transaction. Write transactions are serialized (they share the audit chain).
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
    /// What a write transaction begun now would most likely find, without the database (see
    /// [`Prediction`]); `None` when there is no good guess: nothing known yet, another write
    /// transaction of this node under way, or another writer seen since this node's last commit.
    fn predict(&self) -> Option<Prediction>;
    /// [`StoreTx::commit_with_key`] without a transaction begun first, for a key whose checks
    /// used only what `prediction` knew: `key`, its audit `event` and the outbox's `events` are
    /// written in one round trip (one statement on PostgreSQL, one text ending in `COMMIT` on
    /// SQLite) that takes the write lock only if it is still where the prediction found it.
    /// `Ok(None)`: the lock had moved on or the database refused a write; nothing is stored
    /// and a transaction begun with [`Store::begin`] should do it, with its own checks.
    async fn create_key_predicted(
        &self,
        prediction: Prediction,
        key: &Key,
        event: NewEvent,
        events: &[OutboxEvent],
    ) -> Result<Option<AuditEvent>>;

    async fn keyspace(&self, id: &str) -> Result<Option<Keyspace>>;
    async fn list_keyspaces(
        &self,
        ids: Option<&[String]>,
        page: &Page<TimeCursor>,
    ) -> Result<Vec<Keyspace>>;

    async fn key(&self, id: &str) -> Result<Option<Key>>;
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>>;
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<Key>>;
    /// Keys in list order (newest first) after `after`, in the given keyspaces (`None`: all),
    /// read lean: what the inventory report needs of each.
    async fn key_briefs(
        &self,
        keyspace_ids: Option<&[String]>,
        after: Option<TimeCursor>,
        limit: i64,
    ) -> Result<Vec<KeyBrief>>;
    /// One keyspace's keys counted in the database as of `now` (one pass over its keys).
    async fn key_census(&self, rules: &CensusRules, now: Timestamp) -> Result<KeyCensus>;
    /// The first `limit` live keys of one keyspace that a finding flags, in its order.
    async fn flagged_keys(
        &self,
        rules: &CensusRules,
        which: Flagged,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<Key>>;
    /// An identity; with `keyspace_ids`, only if it owns a key in one of them.
    async fn identity(&self, id: &str, keyspace_ids: Option<&[String]>)
        -> Result<Option<Identity>>;
    /// Identities, newest first; with `keyspace_ids`, those that own a key in one of them.
    async fn list_identities(
        &self,
        keyspace_ids: Option<&[String]>,
        page: &Page<TimeCursor>,
    ) -> Result<Vec<Identity>>;
    /// Buckets of every key of `owner` (in `keyspace_ids`, `None`: all), as
    /// [`Store::usage_of_keyspace`] gives them.
    async fn usage_of_owner(
        &self,
        owner: &str,
        keyspace_ids: Option<&[String]>,
        granularity: Granularity,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Bucket>>;
    /// Live keys still held as a salted hash whose lookup prefix is one of `lookups`, in
    /// `keyspaces` (`None`: any), longest lookup first (at most `limit`).
    async fn slow_candidates(
        &self,
        lookups: &[String],
        keyspaces: Option<&[String]>,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<SlowCandidate>>;
    /// Whether any imported key lacks keyward's prefix and checksum.
    async fn any_foreign_keys(&self) -> Result<bool>;

    async fn token(&self, id: &str) -> Result<Option<Token>>;
    async fn token_by_hash(&self, hash: &KeyHash) -> Result<Option<Token>>;
    async fn list_tokens(&self, page: &Page<TimeCursor>) -> Result<Vec<Token>>;
    async fn touch_token(&self, id: &str, at: Timestamp) -> Result<()>;

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
    /// Events with `seq > after_seq`, oldest first, at most `limit` (for verify and export).
    async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEvent>>;

    /// Writes a batch of usage counts in one transaction.
    async fn apply_usage(&self, deltas: &[UsageDelta]) -> Result<()>;

    async fn webhook(&self, id: &str) -> Result<Option<Webhook>>;
    async fn list_webhooks(&self, page: &Page<TimeCursor>) -> Result<Vec<Webhook>>;
    /// Every webhook's stored signing secret (sealed or, from before sealing, plain), by id.
    async fn webhook_secrets(&self) -> Result<Vec<(String, String)>>;
    /// Replaces stored signing secrets (sealing them, or re-sealing under a new master key),
    /// all in one transaction.
    async fn replace_webhook_secrets(&self, secrets: &[(String, String)]) -> Result<()>;
    /// Pending deliveries with `next_at <= now` and no live lease, oldest first: at most
    /// `limit`, and at most `per_webhook` of each webhook (its oldest).
    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: i64,
        per_webhook: i64,
    ) -> Result<Vec<DueDelivery>>;
    /// Takes a lease on a delivery; false when another worker holds it or it is done.
    async fn claim_delivery(
        &self,
        id: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool>;
    /// Records an attempt and what follows it, in one transaction.
    async fn finish_attempt(
        &self,
        delivery_id: &str,
        webhook_id: &str,
        attempt: &Attempt,
        after: AfterAttempt,
    ) -> Result<()>;
    /// Attempts of a webhook, newest first by (`at`, id).
    async fn list_attempts(
        &self,
        webhook_id: &str,
        page: &Page<TimeCursor>,
    ) -> Result<Vec<Attempt>>;

    /// Buckets of one granularity with `from <= start < to`, ordered by
    /// (start, key id, code); `key_ids` None means every key. Hours and days include the minute
    /// counts not yet rolled up.
    async fn usage(
        &self,
        key_ids: Option<&[String]>,
        granularity: Granularity,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Bucket>>;
    /// The minute buckets of each of `key_ids` with `from <= start < to`, summed per key into
    /// valid and denied verifications: one row per key instead of one per minute and code.
    /// Keys without any are left out; in no particular order.
    async fn minute_totals(
        &self,
        key_ids: &[String],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Totals>>;
    /// The minute buckets with `from <= start < to` that can make a key's minute busy: those of
    /// valid calls counting `valid_at_least` or more, and every one of denied verifications
    /// (whose codes the caller adds up), ordered as [`Store::usage`]. With many keys used, most
    /// minutes are neither: the anomaly sweep reads these instead of every key's minutes.
    async fn busy_minutes(
        &self,
        from: Timestamp,
        to: Timestamp,
        valid_at_least: i64,
    ) -> Result<Vec<Bucket>>;
    /// Buckets of every key of a keyspace (as [`Store::usage`]), without listing the keys.
    async fn usage_of_keyspace(
        &self,
        keyspace_id: &str,
        granularity: Granularity,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Bucket>>;
    /// Deletes buckets of a granularity that start before `before`; returns how many. Minute
    /// buckets not yet rolled up are kept.
    async fn prune_usage(&self, granularity: Granularity, before: Timestamp) -> Result<u64>;
    /// Adds what minute buckets of minutes starting before `before` gained since the last
    /// roll-up to their hour and day buckets (exactly once, also when several nodes roll up at
    /// the same time; in batches, each one transaction); returns how many minute buckets it took.
    /// Reads of hours and days already include what is not rolled up yet: the roll-up keeps
    /// those reads cheap, it does not make them current.
    async fn rollup_usage(&self, before: Timestamp) -> Result<u64>;
    async fn sources(&self, key_id: &str) -> Result<Vec<Source>>;
    /// Every address on record for each of the keys: (key id, address) pairs, in no order.
    /// One statement for many keys: the flusher asks for every key first seen from an address
    /// in a batch (at a node's start, every key it sees).
    async fn known_sources(&self, key_ids: &[String]) -> Result<Vec<(String, String)>>;
    async fn list_anomalies(&self, f: &AnomalyFilter) -> Result<Vec<Anomaly>>;

    /// Keys not revoked, not marked expired, whose `expires_at <= now`.
    async fn expired_unmarked(&self, now: Timestamp, limit: i64) -> Result<Vec<Key>>;
    /// Live keys of a keyspace expiring in `(now, until]` that were not warned about yet (a key
    /// already rotated away is not warned about: its successor replaces it).
    async fn expiring_unwarned(
        &self,
        keyspace_id: &str,
        now: Timestamp,
        until: Timestamp,
        limit: i64,
    ) -> Result<Vec<Key>>;
    /// Live keys of a keyspace with no valid use (or creation) since `cutoff`.
    async fn inactive_since(
        &self,
        keyspace_id: &str,
        now: Timestamp,
        cutoff: Timestamp,
        limit: i64,
    ) -> Result<Vec<Key>>;

    /// Leases up to `want` of a key's unleased quota to this node, atomically across nodes,
    /// first refilling it when a refill period began; `None` when the key has no quota.
    async fn lease_quota(&self, key_id: &str, want: i64, now: Timestamp) -> Result<Option<Lease>>;
    /// Gives back an unspent part of this node's lease; `until`: the end of the refill period
    /// it was granted in (a lease of a period that is over is void: nothing goes back).
    async fn return_lease(&self, key_id: &str, amount: i64, until: Option<Timestamp>)
        -> Result<()>;
    /// Returns to the pool the leases not touched since `older_than` (nodes that died).
    async fn reclaim_stale_leases(&self, older_than: Timestamp) -> Result<u64>;

    /// Deletes finished webhook deliveries, their attempts and events, and anomalies from before
    /// `history_before`, and change-feed rows from before `feed_before`; returns rows deleted.
    async fn prune_history(&self, history_before: Timestamp, feed_before: Timestamp)
        -> Result<u64>;

    /// Change-feed rows after `seq`, oldest first.
    async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>>;
    /// The newest change-feed seq (0 when empty).
    async fn change_head(&self) -> Result<i64>;
}

/// Opens the store a URL names (`sqlite://path[?mode=..]` or `postgres://...`) and runs its
/// migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::Other(
            "database URL must start with sqlite:// or postgres://".to_string(),
        ))
    }
}

/// A database URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:[redacted]{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

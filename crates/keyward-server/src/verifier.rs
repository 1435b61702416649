//! The data plane: verification against an in-memory cache of key state, with usage counted in
//! memory and written in batches by the usage flusher (no database write per verification).
//!
//! - The cache maps a key's digest (the first 16 bytes of its SHA-256) to its [`Entry`] or to
//!   "no such key" (a negative entry, so a random key costs at most one store read per cache
//!   lifetime). It is sharded by digest.
//! - An [`Entry`] is one allocation (plus its answer text) holding what the decision and the
//!   answer read and what changes per verification (rate-limit window, quota lease, usage
//!   counts): about 280 bytes per key with typical fields (`docs/benchmarks.md`).
//! - Coherence on this node: every control-plane change calls [`Verifier::invalidate`] after its
//!   commit and before it answers. The entry stays in the cache marked stale; the next
//!   verification reads the store and the new entry takes over the old one's live state (window,
//!   lease, counts not yet written), so a reload loses no counts and resets no limit; the old
//!   entry points to the new one, and a verification, lease or flush still holding the old one
//!   follows the pointer. A load that raced with an invalidation caches its answer marked stale
//!   (the epoch check in `Verifier::install`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use keyward_core::keyformat::{self, KeyHash, TOKEN_PREFIX};
use keyward_core::model::{parse_cidr, Key, RateLimit};
use keyward_core::time::{Clock, Timestamp};
use keyward_core::verify::{check_and_consume, check_rules, Code, RateState, Rules, Window};
use keyward_store::{Store, StoreError, UsageDelta};

use crate::metrics::Metrics;

mod table;

const SHARDS: usize = 64;

/// What the cache is keyed by: the first 16 bytes of a key's SHA-256. Finding another key with
/// the same 128 bits is a second preimage of 2^128 work, on digests that are never shown; two
/// real keys sharing them is a birthday event of about n^2 / 2^129 (1e-27 for a million keys).
pub type Digest = [u8; 16];

fn digest(h: &KeyHash) -> Digest {
    let mut d = [0u8; 16];
    d.copy_from_slice(&h.0[..16]);
    d
}

/// Keys of the cache are SHA-256 digests: already uniformly random, so their first eight bytes
/// are the hash (no second hash function on the hot path).
#[derive(Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A digest hashes as its array (a length prefix, then the bytes).
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b).rotate_left(5);
    }
}

type DigestBuild = std::hash::BuildHasherDefault<DigestHasher>;
/// Negative entries kept per shard before that shard's negatives are dropped.
const NEGATIVE_PER_SHARD: usize = 4096;

/// Distinct source addresses remembered per key between two flushes (the rest still count).
const SOURCES_PER_FLUSH: usize = 64;
/// "None" for the millisecond fields of [`LiveState`] (an `Option` would double their size).
const NEVER: i64 = i64::MIN;

/// What changes with each verification of a key: 24 bytes inline for the common key (no rate
/// limit, no quota, valid uses within one minute between flushes), the rest boxed.
struct LiveState {
    /// Valid verifications in minute `minute` (minutes since the epoch) since the last flush.
    /// A minute holds at most 60 s of one core's verifications, far below `u32::MAX`.
    minute: u32,
    valid: u32,
    /// The last valid use this node knows of (ms, for `last_used_at` and
    /// `dormant_reactivated`), or [`NEVER`]. What a flush writes as `last_used_at` when valid
    /// uses were counted since the last one.
    previous_use: i64,
    more: Option<Box<More>>,
}

impl Default for LiveState {
    fn default() -> Self {
        LiveState {
            minute: 0,
            valid: 0,
            previous_use: NEVER,
            more: None,
        }
    }
}

/// What only some keys need: a rate-limit window, a quota lease, denials, addresses.
#[derive(Default)]
struct More {
    window: Window,
    /// The part of the quota this node holds (its lease) and may grant without asking the
    /// store; `None` for a key without quota.
    remaining: Option<i64>,
    /// The unleased quota as of this node's last lease (for reporting `remaining`).
    pool: i64,
    /// When this node last asked the store for quota.
    last_lease: Option<Timestamp>,
    consumed: i64,
    /// Verifications by (minute start ms, code) since the last flush, other than those counted
    /// inline.
    buckets: Vec<(i64, Code, i64)>,
    /// Source addresses since the last flush: (address, first, last, count).
    sources: Vec<(IpAddr, Timestamp, Timestamp, i64)>,
    /// Valid uses after a long silence since the last flush: (previous use, this use).
    reactivations: Vec<(Timestamp, Timestamp)>,
    /// Set once the entry's state was handed over: the entry that holds it now.
    forward: Option<Arc<Entry>>,
    /// Bumped whenever the quota is set anew (which voids every lease in the store): a lease
    /// granted, or given back in vain, under an older generation is dropped, not added.
    quota_gen: u32,
}

impl LiveState {
    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    fn remaining(&self) -> Option<i64> {
        self.more.as_ref().and_then(|m| m.remaining)
    }

    fn record(&mut self, code: Code, ip: Option<IpAddr>, now: Timestamp) {
        self.add(now.millis().div_euclid(60_000) * 60_000, code, 1);
        if let Some(ip) = ip {
            let sources = &mut self.more().sources;
            let full = sources.len() >= SOURCES_PER_FLUSH;
            match sources.iter_mut().find(|s| s.0 == ip) {
                Some(s) => {
                    s.2 = s.2.max(now);
                    s.3 += 1;
                }
                None if !full => sources.push((ip, now, now, 1)),
                None => {}
            }
        }
    }

    /// Adds `n` verifications with `code` in the minute starting at `minute_ms`.
    fn add(&mut self, minute_ms: i64, code: Code, n: i64) {
        if code == Code::Valid {
            if let Ok(m) = u32::try_from(minute_ms.div_euclid(60_000)) {
                if self.valid == 0 {
                    self.minute = m;
                }
                if self.minute == m {
                    if let Ok(v) = u32::try_from(i64::from(self.valid) + n) {
                        self.valid = v;
                        return;
                    }
                }
            }
        }
        let buckets = &mut self.more().buckets;
        match buckets
            .iter_mut()
            .rev()
            .find(|(m, c, _)| *m == minute_ms && *c == code)
        {
            Some(b) => b.2 += n,
            None => buckets.push((minute_ms, code, n)),
        }
    }

    /// Whether the flusher has something to write.
    fn pending(&self) -> bool {
        self.valid != 0
            || self.more.as_ref().is_some_and(|m| {
                m.consumed != 0
                    || !m.buckets.is_empty()
                    || !m.sources.is_empty()
                    || !m.reactivations.is_empty()
            })
    }
}

/// A valid use of a key after a long silence, found on the verification path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reactivation {
    pub key_id: String,
    pub keyspace_id: String,
    pub previous_use: Timestamp,
    pub at: Timestamp,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the counters inconsistent in a way
    // worse than losing the cache, so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cached key: what the decision and the answer read, compactly (the cache holds millions),
/// and its live state: 96 bytes inline (112 with the `Arc`'s counts).
pub struct Entry {
    digest: Digest,
    /// The values of a `VALID` answer that depend only on the key (the keyspace id aside),
    /// rendered once per load as JSON and copied into each answer, separated by U+001F (which
    /// JSON text never holds raw): key id (bare), name, owner, the scope list's members
    /// (`"a","b"`), labels, meta, expires_at. Ids and scopes need no JSON escaping (their
    /// grammars exclude it), so they are read straight out.
    text: Box<str>,
    /// Shared by every key of the keyspace.
    keyspace: Arc<String>,
    state: Mutex<LiveState>,
    /// Milliseconds, or `i64::MAX` for a key that does not expire.
    expires_ms: i64,
    rare: Option<Box<Rare>>,
    revoked: bool,
    enabled: bool,
    has_owner: bool,
    /// In the dirty list (counts not yet taken by the flusher).
    queued: AtomicBool,
    /// Changed since it was loaded: the next verification reads the store.
    stale: AtomicBool,
    /// Its live state was handed to a newer entry of the key (`More::forward`): whoever holds
    /// this one follows the pointer.
    moved: AtomicBool,
    /// Another node set the key's quota anew: the next load drops this node's lease.
    stale_quota: AtomicBool,
    /// In the list of leases to give back when idle.
    leased: AtomicBool,
}

/// What few keys have: address restrictions, a rate limit, a rotation's quota, an owner that
/// JSON escapes.
struct Rare {
    allowed: Option<Box<[ipnet::IpNet]>>,
    ratelimit: Option<RateLimit>,
    /// Where quota is drawn from during a rotation grace period: the successor's entry (so a
    /// rotation never doubles a quota).
    quota: Option<Arc<Entry>>,
    /// The owner as it is, when its JSON form is not simply it in quotes.
    owner: Option<Box<str>>,
}

const SEP: char = '\u{1f}';

impl Entry {
    fn new(key: &Key, keyspace: Arc<String>, quota: Option<Arc<Entry>>) -> Entry {
        fn json(t: &mut String, v: &impl serde::Serialize) {
            match serde_json::to_string(v) {
                Ok(j) => t.push_str(&j),
                Err(_) => t.push_str("null"),
            }
        }
        let mut t = String::with_capacity(160);
        t.push_str(&key.id);
        t.push(SEP);
        json(&mut t, &key.name);
        t.push(SEP);
        let owner_at = t.len();
        json(&mut t, &key.owner);
        // Escaping lengthens: same length plus the quotes means the JSON is the owner quoted.
        let plain_owner = key
            .owner
            .as_ref()
            .is_none_or(|o| t.len() - owner_at == o.len() + 2);
        t.push(SEP);
        for (i, scope) in key.scopes.iter().enumerate() {
            if i > 0 {
                t.push(',');
            }
            json(&mut t, scope);
        }
        t.push(SEP);
        json(&mut t, &key.labels);
        t.push(SEP);
        json(&mut t, &key.meta);
        t.push(SEP);
        json(&mut t, &key.expires_at);

        let allowed = key.allowed_cidrs.as_ref().map(|c| {
            c.iter()
                .filter_map(|s| parse_cidr(s).ok())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let owner = (!plain_owner)
            .then(|| key.owner.as_deref().map(Box::from))
            .flatten();
        let rare =
            (allowed.is_some() || key.ratelimit.is_some() || quota.is_some() || owner.is_some())
                .then(|| {
                    Box::new(Rare {
                        allowed,
                        ratelimit: key.ratelimit,
                        quota,
                        owner,
                    })
                });
        let mut state = LiveState {
            previous_use: key.last_used_at.map_or(NEVER, Timestamp::millis),
            ..LiveState::default()
        };
        if let Some(r) = key.remaining {
            // No lease yet: the first valid verification leases from the store.
            let m = state.more();
            m.remaining = Some(0);
            m.pool = r;
        }
        Entry {
            digest: digest(&key.hash),
            // A copy, not `into_boxed_str`: shrinking in place can keep the larger block.
            text: Box::from(t.as_str()),
            keyspace,
            state: Mutex::new(state),
            expires_ms: key.expires_at.map_or(i64::MAX, Timestamp::millis),
            rare,
            revoked: key.revoked_at.is_some(),
            enabled: key.enabled,
            has_owner: key.owner.is_some(),
            queued: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            moved: AtomicBool::new(false),
            stale_quota: AtomicBool::new(false),
            leased: AtomicBool::new(false),
        }
    }

    /// Piece `i` of [`Entry::text`].
    fn piece(&self, i: usize) -> &str {
        self.text.split(SEP).nth(i).unwrap_or("")
    }

    pub fn key_id(&self) -> &str {
        self.piece(0)
    }

    pub fn keyspace_id(&self) -> &str {
        &self.keyspace
    }

    pub fn owner(&self) -> Option<&str> {
        if !self.has_owner {
            return None;
        }
        match self.rare.as_ref().and_then(|r| r.owner.as_deref()) {
            Some(raw) => Some(raw),
            None => {
                let j = self.piece(2);
                Some(j.get(1..j.len().saturating_sub(1)).unwrap_or(""))
            }
        }
    }

    /// Appends the key's members of a `VALID` answer (`"key_id":..,"keyspace_id":..,"name":..,
    /// "owner":..,"scopes":[..],"labels":..,"meta":..,"expires_at":..`) to `out`.
    pub fn write_answer(&self, out: &mut Vec<u8>) {
        const NAMES: [&str; 7] = [
            "\"key_id\":\"",
            "\",\"name\":",
            ",\"owner\":",
            ",\"scopes\":[",
            "],\"labels\":",
            ",\"meta\":",
            ",\"expires_at\":",
        ];
        for (i, (name, piece)) in NAMES.iter().zip(self.text.split(SEP)).enumerate() {
            if i == 1 {
                out.extend_from_slice(b"\",\"keyspace_id\":\"");
                out.extend_from_slice(self.keyspace.as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(piece.as_bytes());
        }
    }

    /// About how long [`Entry::write_answer`]'s part is.
    pub fn answer_len(&self) -> usize {
        self.text.len() + self.keyspace.len() + 112
    }

    /// The key's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        // `"a","b"`: scopes hold neither `,` nor `"` (their grammar).
        self.piece(3)
            .split(',')
            .map(|s| s.trim_matches('"'))
            .filter(|s| !s.is_empty())
    }

    /// The checks that need no mutable state (`REVOKED` .. `INSUFFICIENT_SCOPE`). The answer
    /// text is read only when scopes are asked for (it is another cache line or two).
    fn check(&self, req: &Request<'_>, now: Timestamp) -> Result<(), Code> {
        if req.scopes.is_empty() {
            check_rules(&self.rules(), std::iter::empty(), &[], req.ip, now)
        } else {
            check_rules(&self.rules(), self.scopes(), req.scopes, req.ip, now)
        }
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            revoked: self.revoked,
            expires_at: (self.expires_ms != i64::MAX)
                .then(|| Timestamp::from_millis(self.expires_ms)),
            enabled: self.enabled,
            allowed: self.rare.as_ref().and_then(|r| r.allowed.as_deref()),
        }
    }

    fn ratelimit(&self) -> Option<RateLimit> {
        self.rare.as_ref().and_then(|r| r.ratelimit)
    }

    /// The successor's entry quota is drawn from (during a rotation's grace period).
    fn successor(&self) -> Option<&Arc<Entry>> {
        self.rare.as_ref().and_then(|r| r.quota.as_ref())
    }

    /// The entry quota is drawn from.
    fn quota_cell(self: &Arc<Self>) -> &Arc<Entry> {
        self.successor().unwrap_or(self)
    }

    fn is_moved(&self) -> bool {
        self.moved.load(Ordering::Acquire)
    }

    /// The entry that took over this one's state (read under its lock).
    fn forward(state: &LiveState) -> Option<Arc<Entry>> {
        state.more.as_ref().and_then(|m| m.forward.clone())
    }

    /// Runs `f` on the state `e` held, under its lock: in `e`, or in the entry that took it
    /// over last. Returns that entry too.
    fn with_state<R>(e: &Arc<Entry>, f: impl FnOnce(&mut LiveState) -> R) -> (Arc<Entry>, R) {
        let mut e = e.clone();
        loop {
            let mut s = lock(&e.state);
            if e.is_moved() {
                if let Some(next) = Entry::forward(&s) {
                    drop(s);
                    e = next;
                    continue;
                }
            }
            let r = f(&mut s);
            drop(s);
            return (e, r);
        }
    }

    /// Whether a verification must read the store first: the key changed since this entry was
    /// loaded, or the entry its quota is drawn from was replaced.
    fn needs_reload(&self) -> bool {
        self.stale.load(Ordering::Acquire)
            || self.is_moved()
            || self
                .successor()
                .is_some_and(|s| s.is_moved() || s.stale.load(Ordering::Acquire))
    }
}

impl table::Keyed for Arc<Entry> {
    fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// One shard of the cache: the found keys in a [`table::Table`] (a pointer and a tag byte per
/// key, in buckets of one cache line; the digest is in the entry), and the negatives apart, so
/// that a flood of random keys evicts only negatives, and only when there are many of them.
#[derive(Default)]
struct Shard {
    found: table::Table<Arc<Entry>>,
    negatives: HashSet<Digest, DigestBuild>,
    /// Bumped by every invalidation of a key of this shard (under its write lock).
    epoch: u64,
}

enum Cached {
    Found(Arc<Entry>),
    Missing,
    Unknown,
}

impl Shard {
    fn get(&self, d: &Digest) -> Cached {
        match self.found.get(d) {
            Some(e) => Cached::Found(e.clone()),
            None if self.negatives.contains(d) => Cached::Missing,
            None => Cached::Unknown,
        }
    }
    fn len(&self) -> usize {
        self.found.len() + self.negatives.len()
    }
    fn insert_missing(&mut self, d: Digest) {
        if self.negatives.len() >= NEGATIVE_PER_SHARD {
            self.negatives.clear();
        }
        self.negatives.insert(d);
    }
}

pub struct Request<'a> {
    pub key: &'a str,
    pub scopes: &'a [String],
    pub ip: Option<IpAddr>,
    pub cost: i64,
    /// The keyspaces of the verifying token when it is limited: keys of other keyspaces are
    /// `NOT_FOUND` to it (nothing is counted or consumed).
    pub keyspaces: Option<&'a [String]>,
}

/// How soon a node that found the store's quota empty asks again (other nodes may have given
/// back what they did not spend).
const LEASE_RETRY_MS: i64 = 500;
/// A lease held this long without being spent from is given back at the next flush.
const LEASE_IDLE_MS: i64 = 2000;
/// Successors followed from a rotated key to the one holding its quota.
const MAX_ROTATIONS: usize = 16;

enum Decision {
    Done(Outcome),
    /// The local lease cannot cover the cost; lease more from the store and decide again.
    NeedQuota,
    /// The entry's live state went to this newer entry; decide again on that one. (Each
    /// hand-over needs a store read, so following the pointers always catches up.)
    Moved(Arc<Entry>),
}

/// A rate-limit window counted in Redis: `count` includes this verification.
#[derive(Clone, Copy, Debug)]
struct SharedWindow {
    limit: i64,
    count: i64,
    start: i64,
    reset_at: Timestamp,
}

pub enum Outcome {
    Valid {
        entry: Arc<Entry>,
        remaining: Option<i64>,
        rate: Option<RateState>,
    },
    /// Denied; `entry` when the key was identified; `reset_at` for `RATE_LIMITED`.
    Denied {
        code: Code,
        entry: Option<Arc<Entry>>,
        reset_at: Option<Timestamp>,
    },
}

impl Outcome {
    pub fn code(&self) -> Code {
        match self {
            Outcome::Valid { .. } => Code::Valid,
            Outcome::Denied { code, .. } => *code,
        }
    }
}

/// What [`Verifier::take_usage`] took: the deltas to write, and the entries they came from (to
/// put them back when the write fails).
pub struct Usage {
    pub deltas: Vec<UsageDelta>,
    pub reactivations: Vec<Reactivation>,
    cells: Vec<Arc<Entry>>,
    taken: usize,
}

impl Usage {
    /// Entries taken from the dirty list (some may have had nothing left to write).
    pub fn taken(&self) -> usize {
        self.taken
    }
}

/// The entries with counts not yet written, first in first out, in chunks of a fixed size: a
/// list of a million keys grows without copying itself or leaving the smaller copies behind
/// (a `VecDeque` doubling to 2^20 pointers would hold 16 bytes per key, not 8), and the chunks
/// go back to the allocator as the flusher drains them.
#[derive(Default)]
struct DirtyList {
    chunks: std::collections::VecDeque<std::collections::VecDeque<Arc<Entry>>>,
    len: usize,
}

impl DirtyList {
    const CHUNK: usize = 4096;

    fn push(&mut self, e: Arc<Entry>) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < Self::CHUNK => c.push_back(e),
            _ => {
                let mut c = std::collections::VecDeque::with_capacity(Self::CHUNK);
                c.push_back(e);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    /// The oldest `max` entries (or all).
    fn take(&mut self, max: usize) -> Vec<Arc<Entry>> {
        let mut out = Vec::with_capacity(max.min(self.len));
        while out.len() < max {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = (max - out.len()).min(front.len());
            out.extend(front.drain(..n));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= out.len();
        out
    }

    fn len(&self) -> usize {
        self.len
    }
}

pub struct Verifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shards: Vec<RwLock<Shard>>,
    /// Keyspace ids, one allocation each, shared by their keys' entries.
    keyspaces: Mutex<HashMap<String, Arc<String>>>,
    /// Entries with counts not yet written (each at most once, see `Entry::queued`).
    dirty: Mutex<DirtyList>,
    /// A valid use this long after the previous one is a `dormant_reactivated` anomaly.
    dormant_after_ms: i64,
    /// Cluster-wide rate limits, when `KEYWARD_REDIS_URL` is set.
    redis: Option<Arc<crate::redis::RedisLimiter>>,
    /// Entries for which this node holds a quota lease (each at most once, see `Entry::leased`).
    leased: Mutex<Vec<Arc<Entry>>>,
    /// Addresses this node knows each key has been seen from (for `new_source`), bounded per
    /// key; only keys verified with an address have a set.
    known_sources: Mutex<HashMap<String, HashSet<String>>>,
    /// Whether verifications are counted (usage, buckets, sources, anomalies); off only for
    /// measuring what counting costs (`KEYWARD_USAGE_COUNTING=false`). Quota is always counted.
    usage_counting: AtomicBool,
    /// Prefixes of the keyspaces, and when they were last read from the store.
    prefixes: RwLock<(HashSet<String>, Option<std::time::Instant>)>,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        dormant_after: std::time::Duration,
        redis: Option<Arc<crate::redis::RedisLimiter>>,
    ) -> Self {
        Verifier {
            store,
            clock,
            metrics,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            keyspaces: Mutex::new(HashMap::new()),
            dirty: Mutex::new(DirtyList::default()),
            dormant_after_ms: dormant_after.as_millis() as i64,
            redis,
            leased: Mutex::new(Vec::new()),
            known_sources: Mutex::new(HashMap::new()),
            prefixes: RwLock::new((HashSet::new(), None)),
            usage_counting: AtomicBool::new(true),
        }
    }

    fn shard(&self, d: &Digest) -> &RwLock<Shard> {
        // The last byte picks the shard; the first eight feed the map (independent bits).
        &self.shards[d[15] as usize % SHARDS]
    }

    fn cached(&self, d: &Digest) -> Cached {
        self.shard(d)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
    }

    /// The entry cached for a key, if any (the lookup of a verification; for benchmarks).
    pub fn lookup(&self, hash: &KeyHash) -> Option<Arc<Entry>> {
        match self.cached(&digest(hash)) {
            Cached::Found(e) => Some(e),
            Cached::Missing | Cached::Unknown => None,
        }
    }

    /// Verifies one request. `Err` only when the key is not cached and the store cannot be read.
    pub async fn verify(&self, req: &Request<'_>) -> Result<Outcome, StoreError> {
        match self.verify_cached(req) {
            Some(outcome) => Ok(outcome),
            // Boxed: the common case above keeps its future small (no room for store calls).
            None => Box::pin(self.verify_slow(req)).await,
        }
    }

    /// The common case, without waiting: a malformed key, or a cached key whose answer needs
    /// neither the store, Redis nor a quota lease. `None`: take the slow path (which starts
    /// over).
    fn verify_cached(&self, req: &Request<'_>) -> Option<Outcome> {
        let not_found = Outcome::Denied {
            code: Code::NotFound,
            entry: None,
            reset_at: None,
        };
        // No key is longer (and hashing a long string would cost more than refusing it).
        if req.key.len() > keyformat::MAX_PREFIX_LEN + 1 + keyformat::BODY_LEN {
            return Some(not_found);
        }
        let now = self.clock.now();
        let entry = match self.cached(&digest(&KeyHash::of(req.key))) {
            // Only the digest of a stored key is found, and stored keys are well formed: the
            // parse (grammar, alphabet, CRC32) is needed only when the key is not cached.
            Cached::Found(e) => e,
            Cached::Missing => {
                self.metrics.cache_hit();
                return Some(not_found);
            }
            Cached::Unknown => {
                // Garbage and tokens stop here, not in the slow path.
                return match keyformat::parse(req.key) {
                    Some(p) if p.prefix != TOKEN_PREFIX => None,
                    _ => Some(not_found),
                };
            }
        };
        if entry.needs_reload() || (self.redis.is_some() && entry.ratelimit().is_some()) {
            return None;
        }
        let foreign = req
            .keyspaces
            .is_some_and(|ks| !ks.iter().any(|k| k == entry.keyspace_id()));
        let outcome = if foreign {
            not_found
        } else {
            match self.decide(entry, req, now, None, false) {
                Decision::Done(o) => o,
                Decision::NeedQuota | Decision::Moved(_) => return None,
            }
        };
        self.metrics.cache_hit();
        Some(outcome)
    }

    async fn verify_slow(&self, req: &Request<'_>) -> Result<Outcome, StoreError> {
        let now = self.clock.now();
        // Garbage never reaches a lock or the store; tokens never verify as keys.
        let not_found = || {
            Ok(Outcome::Denied {
                code: Code::NotFound,
                entry: None,
                reset_at: None,
            })
        };
        let prefix = match keyformat::parse(req.key) {
            Some(p) if p.prefix != TOKEN_PREFIX => p.prefix,
            _ => return not_found(),
        };
        let hash = KeyHash::of(req.key);
        let entry = match self.cached(&digest(&hash)) {
            Cached::Found(e) if !e.needs_reload() => {
                self.metrics.cache_hit();
                Some(e)
            }
            Cached::Missing => {
                self.metrics.cache_hit();
                None
            }
            Cached::Found(_) => {
                self.metrics.cache_miss();
                self.load(hash).await?
            }
            Cached::Unknown => {
                self.metrics.cache_miss();
                // A key of no keyspace's prefix costs no store read (the set of prefixes is
                // re-read at most once a second, for keyspaces created on other nodes).
                if !self.known_prefix(prefix).await? {
                    return not_found();
                }
                self.load(hash).await?
            }
        };
        let Some(mut entry) = entry else {
            return not_found();
        };
        if req
            .keyspaces
            .is_some_and(|ks| !ks.iter().any(|k| k == entry.keyspace_id()))
        {
            return not_found();
        }
        let shared = self.shared_window(&entry, req, now).await;
        let mut leases = 0;
        let outcome = loop {
            match self.decide(entry.clone(), req, now, shared, leases >= 3) {
                Decision::Done(o) => break o,
                Decision::NeedQuota => {
                    self.lease(entry.quota_cell(), req.cost, now).await?;
                    leases += 1;
                }
                // The same key (its rules as of a later read): the Redis slot stands.
                Decision::Moved(next) => entry = next,
            }
        };
        if let (
            Some(w),
            Outcome::Denied {
                code: Code::UsageExceeded,
                entry: Some(e),
                ..
            },
        ) = (shared, &outcome)
        {
            // Only a valid answer takes a rate-limit slot: give back the one taken in Redis.
            if let Some(redis) = &self.redis {
                let _ = redis.undo(e.key_id(), w.start).await;
            }
        }
        Ok(outcome)
    }

    /// Checks the rate limit in Redis (cluster-wide) when configured; `None` means decide with
    /// this node's own window (no Redis, no rate limit, or Redis unreachable).
    async fn shared_window(
        &self,
        entry: &Entry,
        req: &Request<'_>,
        now: Timestamp,
    ) -> Option<SharedWindow> {
        let (redis, rl) = (self.redis.as_ref()?, entry.ratelimit()?);
        if entry.check(req, now).is_err() {
            return None;
        }
        let len = rl.window_secs * 1000;
        let start = now.millis().div_euclid(len) * len;
        match redis.hit(entry.key_id(), start, len).await {
            Ok(count) => Some(SharedWindow {
                limit: rl.limit,
                count,
                start,
                reset_at: Timestamp::from_millis(start + len),
            }),
            Err(e) => {
                self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis unreachable: rate limit enforced per node");
                None
            }
        }
    }

    /// Decides on `entry`. `last_lease`: answer without asking the store for more quota.
    fn decide(
        &self,
        entry: Arc<Entry>,
        req: &Request<'_>,
        now: Timestamp,
        shared: Option<SharedWindow>,
        last_lease: bool,
    ) -> Decision {
        if let Err(code) = entry.check(req, now) {
            return self.deny(entry, code, None, req, now);
        }
        if let Some(w) = shared {
            if w.count > w.limit {
                return self.deny(entry, Code::RateLimited, Some(w.reset_at), req, now);
            }
        }
        // With a shared window the rate limit was decided in Redis; only the quota is local.
        let ratelimit = if shared.is_some() {
            None
        } else {
            entry.ratelimit()
        };
        let successor = entry.successor();
        let mut own = lock(&entry.state);
        if entry.is_moved() {
            if let Some(next) = Entry::forward(&own) {
                return Decision::Moved(next);
            }
        }
        // A quota that runs short may be topped up from the store (a lease) before answering
        // USAGE_EXCEEDED: when the store had some left at the last lease, or a while has passed.
        let may_lease = |q: &More| {
            !last_lease
                && (q.pool > 0
                    || q.last_lease
                        .is_none_or(|t| now.millis() - t.millis() >= LEASE_RETRY_MS))
        };
        let (result, need_quota) = match successor {
            // The common key: no rate limit, no quota.
            None if ratelimit.is_none() && own.remaining().is_none() => (Ok((None, None)), false),
            None => {
                let m = own.more();
                let may = may_lease(m);
                let r =
                    check_and_consume(ratelimit, &mut m.window, &mut m.remaining, req.cost, now);
                let need = matches!(r, Err((Code::UsageExceeded, _))) && may;
                (r.map(|rate| (rate, m.remaining.map(|l| l + m.pool))), need)
            }
            Some(successor) => {
                // Lock order: a rotated key, then its successor (a successor never locks back).
                // The entry that holds the successor's state now.
                let (quota, ()) = Entry::with_state(successor, |_| ());
                let mut q = lock(&quota.state);
                if quota.is_moved() {
                    // Replaced just now: decide again (`with_state` then finds the replacement).
                    drop(q);
                    drop(own);
                    return Decision::Moved(entry);
                }
                let qm = q.more();
                let may = may_lease(qm);
                let mut unlimited = Window::default();
                let window = match ratelimit {
                    Some(_) => &mut own.more().window,
                    None => &mut unlimited,
                };
                let r = check_and_consume(ratelimit, window, &mut qm.remaining, req.cost, now);
                if r.is_ok() && qm.remaining.is_some() {
                    qm.consumed += req.cost;
                }
                let rem = qm.remaining.map(|l| l + qm.pool);
                drop(q);
                if r.is_ok() {
                    self.mark_dirty(&quota);
                }
                let need = matches!(r, Err((Code::UsageExceeded, _))) && may;
                (r.map(|rate| (rate, rem)), need)
            }
        };
        if need_quota {
            return Decision::NeedQuota;
        }
        match result {
            Ok((rate, remaining)) => {
                let rate = match shared {
                    Some(w) => Some(RateState {
                        limit: w.limit,
                        remaining: w.limit - w.count,
                        reset_at: w.reset_at,
                    }),
                    None => rate,
                };
                let counting = self.usage_counting.load(Ordering::Relaxed);
                let spent = successor.is_none() && own.remaining().is_some();
                if spent {
                    own.more().consumed += req.cost;
                }
                if counting {
                    let at = now.millis();
                    let prev = own.previous_use;
                    if prev != NEVER && at - prev >= self.dormant_after_ms {
                        own.more()
                            .reactivations
                            .push((Timestamp::from_millis(prev), now));
                    }
                    if prev < at {
                        own.previous_use = at;
                    }
                    own.record(Code::Valid, req.ip, now);
                }
                drop(own);
                if counting || spent {
                    self.mark_dirty(&entry);
                }
                Decision::Done(Outcome::Valid {
                    entry,
                    remaining,
                    rate,
                })
            }
            Err((code, reset_at)) => {
                drop(own);
                self.deny(entry, code, reset_at, req, now)
            }
        }
    }

    fn deny(
        &self,
        entry: Arc<Entry>,
        code: Code,
        reset_at: Option<Timestamp>,
        req: &Request<'_>,
        now: Timestamp,
    ) -> Decision {
        if self.usage_counting.load(Ordering::Relaxed) {
            let mut s = lock(&entry.state);
            if entry.is_moved() {
                if let Some(next) = Entry::forward(&s) {
                    return Decision::Moved(next);
                }
            }
            s.record(code, req.ip, now);
            drop(s);
            self.mark_dirty(&entry);
        }
        Decision::Done(Outcome::Denied {
            code,
            entry: Some(entry),
            reset_at,
        })
    }

    fn mark_dirty(&self, entry: &Arc<Entry>) {
        // A plain load first: a key used again before the next flush is already queued, and
        // the read costs less than a read-modify-write.
        if !entry.queued.load(Ordering::Acquire) && !entry.queued.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(entry.clone());
        }
    }

    fn track_lease(&self, entry: &Arc<Entry>) {
        if !entry.leased.load(Ordering::Acquire) && !entry.leased.swap(true, Ordering::AcqRel) {
            lock(&self.leased).push(entry.clone());
        }
    }

    /// The shared keyspace id.
    fn keyspace(&self, id: &str) -> Arc<String> {
        let mut all = lock(&self.keyspaces);
        match all.get(id) {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(id.to_string());
                all.insert(id.to_string(), k.clone());
                k
            }
        }
    }

    /// The invalidations of the shard of `d` so far.
    fn epoch(&self, d: &Digest) -> u64 {
        self.shard(d)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .epoch
    }

    /// Reads a key from the store and caches the answer (found or not).
    async fn load(&self, hash: KeyHash) -> Result<Option<Arc<Entry>>, StoreError> {
        let d = digest(&hash);
        let epoch = self.epoch(&d);
        let Some(key) = self.store.key_by_hash(&hash).await? else {
            let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
            if shard.epoch == epoch {
                // A key that is gone leaves its counts in the dirty list and its lease in the
                // lease list: both are still written.
                shard.found.remove(&d);
                shard.insert_missing(d);
            }
            return Ok(None);
        };
        let mut successor = None;
        if let (Some(id), None) = (&key.rotated_to, key.revoked_at) {
            // The quota went down the rotations: to the last successor (a key rotated again
            // within the grace period, or with none, passed it on too).
            let mut next = id.clone();
            for _ in 0..MAX_ROTATIONS {
                let Some(s) = self.store.key(&next).await? else {
                    break;
                };
                if let Some(id) = &s.rotated_to {
                    next = id.clone();
                    continue;
                }
                // Read again after noting its shard's epoch, so that a change racing with
                // this read is not cached as current.
                let since = self.epoch(&digest(&s.hash));
                if let Some(s) = self.store.key(&s.id).await? {
                    successor = Some(self.successor_cell(&s, since));
                }
                break;
            }
        }
        let fresh = Arc::new(Entry::new(&key, self.keyspace(&key.keyspace_id), successor));
        Ok(Some(self.install(&fresh, Some(epoch))))
    }

    /// The entry of the key a rotated key draws quota from (the last of its successors): the
    /// cached one when current, else one read from `key`.
    fn successor_cell(&self, key: &Key, epoch: u64) -> Arc<Entry> {
        if let Cached::Found(e) = self.cached(&digest(&key.hash)) {
            if !e.needs_reload() && e.successor().is_none() {
                return e;
            }
        }
        let fresh = Arc::new(Entry::new(key, self.keyspace(&key.keyspace_id), None));
        let cell = self.install(&fresh, Some(epoch));
        // A cached entry that was rotated meanwhile draws from elsewhere: not a quota cell.
        if cell.successor().is_some() {
            fresh
        } else {
            cell
        }
    }

    /// Caches `fresh` in place of the key's current entry, which hands its live state over, and
    /// returns the entry to use. `epoch`: that of the key's shard when the load began.
    /// - A current entry cached meanwhile by a concurrent load is as fresh as `fresh` (an
    ///   invalidation would have marked it), so it stays and is returned: concurrent misses of
    ///   one key share one entry.
    /// - When a key of the shard was invalidated since the load began, the read may predate a
    ///   change: it answers the verification that made it (the two overlapped), and is cached
    ///   marked stale (the next verification reads again), so the key's state still has one
    ///   home.
    fn install(&self, fresh: &Arc<Entry>, epoch: Option<u64>) -> Arc<Entry> {
        let d = fresh.digest;
        // The epoch is compared under the shard's write lock, which `invalidate` also holds
        // while it bumps the epoch.
        let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
        let old = shard.found.get(&d).cloned();
        if let Some(old) = old
            .as_ref()
            .filter(|o| epoch.is_some() && !o.needs_reload())
        {
            return old.clone();
        }
        if epoch.is_some_and(|e| shard.epoch != e) {
            fresh.stale.store(true, Ordering::Release);
        }
        if let Some(old) = old {
            self.hand_over(&old, fresh);
        }
        shard.negatives.remove(&d);
        shard.found.replace(fresh.clone());
        fresh.clone()
    }

    /// Moves the live state of `old` into `fresh` (not yet shared): counts not yet written, the
    /// rate-limit window, the quota lease (unless another node set the quota anew, which voided
    /// every lease in the store: the quota is then taken from the row `fresh` was read from).
    fn hand_over(&self, old: &Arc<Entry>, fresh: &Arc<Entry>) {
        let mut o = lock(&old.state);
        let taken = std::mem::take(&mut *o);
        o.more().forward = Some(fresh.clone());
        old.moved.store(true, Ordering::Release);
        drop(o);
        let mut n = lock(&fresh.state);
        let from_row = std::mem::replace(&mut *n, taken);
        let reset = old.stale_quota.load(Ordering::Acquire);
        if reset || n.remaining().is_none() {
            let (remaining, pool) = from_row
                .more
                .as_ref()
                .map_or((None, 0), |m| (m.remaining, m.pool));
            if remaining.is_some() || n.more.is_some() {
                let m = n.more();
                m.remaining = remaining;
                m.pool = pool;
                if reset {
                    m.quota_gen = m.quota_gen.wrapping_add(1);
                    m.consumed = 0;
                }
            }
        }
        if n.previous_use == NEVER {
            n.previous_use = from_row.previous_use;
        }
        let (pending, leased) = (n.pending(), n.remaining().is_some_and(|r| r > 0));
        drop(n);
        if pending {
            self.mark_dirty(fresh);
        }
        if leased {
            self.track_lease(fresh);
        }
    }

    /// A change made elsewhere: the next verification reads the key from the store; when its
    /// quota was set anew, that load drops this node's (voided) lease.
    pub fn invalidate_remote(&self, hash: &KeyHash, quota_changed: bool) {
        self.invalidate_with(hash, |e| {
            if quota_changed {
                e.stale_quota.store(true, Ordering::Release);
            }
        });
    }

    /// Leases more quota for a key from the store: about a sixteenth of what is left (at least
    /// the cost), so that nodes share a quota finely near its end.
    async fn lease(&self, cell: &Arc<Entry>, cost: i64, now: Timestamp) -> Result<(), StoreError> {
        let (_, (pool, gen)) = Entry::with_state(cell, |s| {
            s.more.as_ref().map_or((0, 0), |m| (m.pool, m.quota_gen))
        });
        let want = cost
            .max(pool.saturating_add(15) / 16)
            .clamp(1, 100_000)
            .max(cost);
        let got = self.store.lease_quota(cell.key_id(), want, now).await?;
        // Into the entry that holds the key's state now (it may have been replaced meanwhile),
        // unless the quota was set anew meanwhile (the store voided this grant with the rest).
        let (cell, ()) = Entry::with_state(cell, |s| {
            let m = s.more();
            if m.quota_gen != gen {
                return;
            }
            m.last_lease = Some(now);
            match got {
                Some((granted, left)) => {
                    m.remaining = Some(m.remaining.unwrap_or(0) + granted);
                    m.pool = left;
                }
                None => {
                    m.remaining = None;
                    m.pool = 0;
                }
            }
        });
        self.track_lease(&cell);
        Ok(())
    }

    /// Gives back leases that sat unspent for a while (or all, at shutdown), so that other nodes
    /// can grant that quota.
    pub async fn return_leases(&self, now: Timestamp, all: bool) -> Result<(), StoreError> {
        let cells = lock(&self.leased).clone();
        for cell in cells {
            let (amount, gen) = {
                let mut s = lock(&cell.state);
                // A moved entry handed its lease to the newer one, which is in the list.
                let m = s.more.as_deref_mut().filter(|_| !cell.is_moved());
                match m {
                    Some(m) => {
                        let idle = m
                            .last_lease
                            .is_none_or(|t| now.millis() - t.millis() >= LEASE_IDLE_MS)
                            && m.consumed == 0;
                        match m.remaining {
                            Some(l) if l > 0 && (all || idle) => {
                                m.remaining = Some(0);
                                m.pool += l;
                                (l, m.quota_gen)
                            }
                            _ => (0, m.quota_gen),
                        }
                    }
                    None => (0, 0),
                }
            };
            if amount > 0 {
                if let Err(e) = self.store.return_lease(cell.key_id(), amount).await {
                    // Still this node's, unless the quota was set anew meanwhile.
                    let (cell, ()) = Entry::with_state(&cell, |s| {
                        let m = s.more();
                        if m.quota_gen == gen {
                            m.remaining = Some(m.remaining.unwrap_or(0) + amount);
                            m.pool -= amount;
                        }
                    });
                    self.track_lease(&cell);
                    return Err(e);
                }
            }
            let holds = !cell.is_moved() && lock(&cell.state).remaining().is_some_and(|l| l > 0);
            if !holds {
                lock(&self.leased).retain(|e| !Arc::ptr_eq(e, &cell));
                cell.leased.store(false, Ordering::Release);
                // A lease taken meanwhile puts the entry back.
                if !cell.is_moved() && lock(&cell.state).remaining().is_some_and(|l| l > 0) {
                    self.track_lease(&cell);
                }
            }
        }
        Ok(())
    }

    /// Whether some keyspace has this prefix.
    async fn known_prefix(&self, prefix: &str) -> Result<bool, StoreError> {
        {
            let p = self.prefixes.read().unwrap_or_else(|p| p.into_inner());
            if p.0.contains(prefix) {
                return Ok(true);
            }
            if p.1
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
            {
                return Ok(false);
            }
        }
        let mut all = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_keyspaces(
                    None,
                    &keyward_store::Page {
                        limit: 500,
                        after: after.clone(),
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.created_at.millis(), last.id.clone()));
            all.extend(page.into_iter().map(|k| k.prefix));
        }
        let known = all.contains(prefix);
        *self.prefixes.write().unwrap_or_else(|p| p.into_inner()) =
            (all, Some(std::time::Instant::now()));
        Ok(known)
    }

    /// Turns usage counting on or off (see the field's comment).
    pub fn set_usage_counting(&self, on: bool) {
        self.usage_counting.store(on, Ordering::Relaxed);
    }

    /// Records a keyspace created through this node.
    pub fn add_prefix(&self, prefix: &str) {
        self.prefixes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(prefix.to_string());
    }

    /// Puts a key straight into the cache, as a store read would (benchmarks and warm-up).
    /// `key` must be one the store could hold: issued by keyward, so its plaintext is a well
    /// formed key of a keyspace's prefix (never a token). The fast path of [`Verifier::verify`]
    /// answers a cached digest without parsing the key again.
    pub fn prime(&self, key: Key) {
        let fresh = Arc::new(Entry::new(&key, self.keyspace(&key.keyspace_id), None));
        self.install(&fresh, None);
    }

    /// Forgets what this node caches about a key: the next verification reads the store (the
    /// entry stays, marked stale, until then: the new one takes over its live state).
    pub fn invalidate(&self, hash: &KeyHash) {
        self.invalidate_with(hash, |_| {});
    }

    /// Marks the key's entry stale after `f` ran on it, under the shard's write lock (so the
    /// entry is the one that holds the key's state: none is replaced meanwhile).
    fn invalidate_with(&self, hash: &KeyHash, f: impl FnOnce(&Entry)) {
        let d = digest(hash);
        let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
        shard.epoch += 1;
        if let Some(e) = shard.found.get(&d) {
            f(e);
            e.stale.store(true, Ordering::Release);
        }
        shard.negatives.remove(&d);
    }

    /// Sets the quota of a key after the control plane changed it (call with the write gate
    /// held and after a flush, so no unwritten consumption is lost or double counted).
    pub fn set_remaining(&self, hash: &KeyHash, remaining: Option<i64>) {
        self.invalidate_with(hash, |e| {
            // The store voided every lease of the old quota.
            let mut s = lock(&e.state);
            if remaining.is_some() || s.more.is_some() {
                let m = s.more();
                m.remaining = remaining.map(|_| 0);
                m.pool = remaining.unwrap_or(0);
                m.consumed = 0;
                m.quota_gen = m.quota_gen.wrapping_add(1);
            }
        });
    }

    /// This node's unwritten usage of the `max` keys that have waited longest, for the
    /// flusher. Entries are reset as they are taken.
    pub fn take_usage(&self, max: usize) -> Usage {
        let cells = lock(&self.dirty).take(max);
        let mut usage = Usage {
            deltas: Vec::with_capacity(cells.len()),
            reactivations: Vec::new(),
            cells: Vec::with_capacity(cells.len()),
            taken: cells.len(),
        };
        for cell in cells {
            cell.queued.store(false, Ordering::Release);
            let mut s = lock(&cell.state);
            if !s.pending() {
                continue;
            }
            let mut d = UsageDelta {
                key_id: cell.key_id().to_string(),
                calls: i64::from(s.valid),
                denied: 0,
                last_used_at: None,
                consumed: 0,
                buckets: Vec::new(),
                sources: Vec::new(),
            };
            if s.valid != 0 {
                d.buckets.push((
                    i64::from(s.minute) * 60_000,
                    Code::Valid.as_str().to_string(),
                    i64::from(s.valid),
                ));
                s.valid = 0;
            }
            if let Some(m) = s.more.as_deref_mut() {
                d.consumed = std::mem::take(&mut m.consumed);
                for (minute, code, n) in m.buckets.drain(..) {
                    match code {
                        Code::Valid => d.calls += n,
                        _ => d.denied += n,
                    }
                    d.buckets.push((minute, code.as_str().to_string(), n));
                }
                d.sources = m
                    .sources
                    .drain(..)
                    .map(|(ip, f, l, n)| (ip.to_string(), f, l, n))
                    .collect();
                for (previous_use, at) in m.reactivations.drain(..) {
                    usage.reactivations.push(Reactivation {
                        key_id: d.key_id.clone(),
                        keyspace_id: cell.keyspace_id().to_string(),
                        previous_use,
                        at,
                    });
                }
                // A key that is rarely denied or seen from an address gives its box back.
                if m.window == Window::default()
                    && m.remaining.is_none()
                    && m.last_lease.is_none()
                    && m.forward.is_none()
                {
                    s.more = None;
                }
            }
            if d.calls > 0 && s.previous_use != NEVER {
                d.last_used_at = Some(Timestamp::from_millis(s.previous_use));
            }
            drop(s);
            usage.deltas.push(d);
            usage.cells.push(cell);
        }
        usage
    }

    /// Puts back usage that could not be written, so it is retried with the next flush.
    pub fn restore_usage(&self, usage: Usage) {
        let mut reactivations: HashMap<String, Vec<(Timestamp, Timestamp)>> = HashMap::new();
        for r in usage.reactivations {
            reactivations
                .entry(r.key_id)
                .or_default()
                .push((r.previous_use, r.at));
        }
        for (d, cell) in usage.deltas.into_iter().zip(usage.cells) {
            let reacts = reactivations.remove(&d.key_id).unwrap_or_default();
            // Into the entry that holds the key's state now.
            let (cell, ()) = Entry::with_state(&cell, |s| {
                if d.consumed != 0 {
                    s.more().consumed += d.consumed;
                }
                // `last_used_at` comes back with the valid counts (the last use is at least it).
                for (m, code, n) in d.buckets {
                    if let Some(code) = Code::parse(&code) {
                        s.add(m, code, n);
                    }
                }
                for (ip, first, last, n) in d.sources {
                    let Ok(ip) = ip.parse::<IpAddr>() else {
                        continue;
                    };
                    let sources = &mut s.more().sources;
                    match sources.iter_mut().find(|x| x.0 == ip) {
                        Some(x) => {
                            x.1 = x.1.min(first);
                            x.2 = x.2.max(last);
                            x.3 += n;
                        }
                        None => sources.push((ip, first, last, n)),
                    }
                }
                if !reacts.is_empty() {
                    s.more().reactivations.extend(reacts);
                }
            });
            self.mark_dirty(&cell);
        }
    }

    /// The addresses among `ips` this node does not yet know for the key.
    pub fn unknown_sources(&self, key_id: &str, ips: &[String]) -> Vec<String> {
        let known = lock(&self.known_sources);
        match known.get(key_id) {
            Some(k) => ips.iter().filter(|ip| !k.contains(*ip)).cloned().collect(),
            None => ips.to_vec(),
        }
    }

    /// Remembers addresses as known for the key (at most 256 per key on this node).
    pub fn remember_sources(&self, key_id: &str, ips: impl IntoIterator<Item = String>) {
        let mut known = lock(&self.known_sources);
        let k = known.entry(key_id.to_string()).or_default();
        for ip in ips {
            if k.len() >= 256 {
                break;
            }
            k.insert(ip);
        }
    }

    pub fn pending_keys(&self) -> usize {
        lock(&self.dirty).len()
    }

    pub fn cached_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(owner: Option<&str>) -> Key {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("env\u{1f}x".to_string(), "pr\"od\u{e9}".to_string());
        let mut meta = serde_json::Map::new();
        meta.insert(
            "n".into(),
            serde_json::json!({"a": [1, 2.5, "\u{1f}\\"], "b": null}),
        );
        let plaintext = keyformat::generate("acme");
        let mut k = Key::for_plaintext(
            plaintext.expose(),
            "ks_7Yb",
            Timestamp::from_millis(0),
            keyward_core::model::Actor::system(),
        )
        .expect("a generated key parses");
        k.id = "key_2x9ZQ".into();
        k.name = "svc \"one\"\u{1f}\n".into();
        k.owner = owner.map(str::to_string);
        k.scopes = vec!["orders:read".into(), "orders:*".into()];
        k.labels = labels;
        k.meta = meta;
        k.expires_at = Some(Timestamp::from_millis(1_800_000_000_123));
        k
    }

    fn entry(k: &Key) -> Entry {
        Entry::new(k, Arc::new(k.keyspace_id.clone()), None)
    }

    #[test]
    fn the_dirty_list_gives_entries_back_oldest_first_across_chunks() {
        let k = key(None);
        let pushed: Vec<Arc<Entry>> = (0..2 * DirtyList::CHUNK + 5)
            .map(|_| Arc::new(entry(&k)))
            .collect();
        let mut list = DirtyList::default();
        let mut taken = Vec::new();
        for (i, e) in pushed.iter().enumerate() {
            list.push(e.clone());
            if i == 10 {
                // Taken while being filled: the first chunk is partly drained.
                taken.extend(list.take(3));
            }
        }
        assert_eq!(list.len(), pushed.len() - 3);
        for max in [DirtyList::CHUNK - 1, 2, DirtyList::CHUNK + 1, usize::MAX] {
            let before = list.len();
            let got = list.take(max);
            assert_eq!(got.len(), max.min(before));
            assert_eq!(list.len(), before - got.len());
            taken.extend(got);
        }
        assert_eq!(taken.len(), pushed.len());
        assert!(pushed.iter().zip(&taken).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(list.take(10).is_empty());
        assert!(list.chunks.is_empty());
    }

    /// The compact entry answers exactly what serializing the key's fields answers, whatever
    /// the free-text fields hold (quotes, control characters, the separator itself).
    #[test]
    fn the_compact_entry_renders_the_fields_as_serde_does() {
        for owner in [None, Some("ops \u{1f} team \"a\""), Some("team-billing")] {
            let k = key(owner);
            let e = entry(&k);
            let mut out = b"{".to_vec();
            e.write_answer(&mut out);
            out.push(b'}');
            let got: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let want = serde_json::json!({
                "key_id": k.id, "keyspace_id": k.keyspace_id, "name": k.name, "owner": k.owner,
                "scopes": k.scopes, "labels": k.labels, "meta": k.meta, "expires_at": k.expires_at,
            });
            assert_eq!(got, want);
            assert_eq!(e.key_id(), "key_2x9ZQ");
            assert_eq!(e.keyspace_id(), "ks_7Yb");
            assert_eq!(e.owner(), owner);
            assert_eq!(e.scopes().collect::<Vec<_>>(), ["orders:read", "orders:*"]);
        }
        let mut k = key(None);
        k.scopes.clear();
        assert_eq!(entry(&k).scopes().count(), 0);
    }
}

//! The data plane: verification against an in-memory cache of key state, with usage counted in
//! memory and written in batches by the usage flusher (no database write per verification).
//!
//! - The cache maps a key's SHA-256 to its [`Entry`] or to "no such key" (a negative entry, so a
//!   random key costs at most one store read per cache lifetime). It is sharded by hash.
//! - [`Live`] holds what changes per verification (rate-limit window, quota, usage counts). It
//!   is keyed by key id and outlives cache entries, so a reload after a change loses no counts.
//! - Coherence on this node: every control-plane change calls [`Verifier::invalidate`] after its
//!   commit and before it answers; a load that raced with it does not cache its stale answer
//!   (the epoch check in [`Verifier::load`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use keyward_core::keyformat::{self, KeyHash, TOKEN_PREFIX};
use keyward_core::model::{parse_cidr, Key};
use keyward_core::time::{Clock, Timestamp};
use keyward_core::verify::{check_and_consume, check_rules, Code, RateState, Rules, Window};
use keyward_store::{Store, StoreError, UsageDelta};

use crate::metrics::Metrics;

const SHARDS: usize = 64;

/// Keys of the cache are SHA-256 digests: already uniformly random, so their first eight bytes
/// are the hash (no second hash function on the hot path).
#[derive(Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `KeyHash` hashes as its 32-byte array (a length prefix, then the bytes).
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b).rotate_left(5);
    }
}

type DigestMap<V> = HashMap<KeyHash, V, std::hash::BuildHasherDefault<DigestHasher>>;
/// Negative entries kept per shard before that shard's negatives are dropped.
const NEGATIVE_PER_SHARD: usize = 4096;

/// Per-key state that changes with each verification.
pub struct Live {
    /// The key id, then its keyspace's id (one allocation).
    ids: Box<str>,
    keyspace_at: u32,
    state: Mutex<LiveState>,
    queued: AtomicBool,
    /// Set when another node changed the key: the next load takes `remaining` from the store.
    stale_quota: AtomicBool,
}

/// Distinct source addresses remembered per key between two flushes (the rest still count).
const SOURCES_PER_FLUSH: usize = 64;

#[derive(Default)]
struct LiveState {
    window: Window,
    /// The part of the quota this node holds (its lease) and may grant without asking the
    /// store; `None` for a key without quota.
    remaining: Option<i64>,
    /// The unleased quota as of this node's last lease (for reporting `remaining`).
    pool: i64,
    /// When this node last asked the store for quota.
    last_lease: Option<Timestamp>,
    calls: i64,
    denied: i64,
    last_used: Option<Timestamp>,
    consumed: i64,
    /// Verifications by (minute start ms, code) since the last flush.
    buckets: Vec<(i64, Code, i64)>,
    /// What few keys need (addresses, reactivations): boxed, so that most keys pay a pointer.
    extra: Option<Box<Extra>>,
    /// The last valid use this node knows of (for `dormant_reactivated`).
    previous_use: Option<Timestamp>,
}

#[derive(Default)]
struct Extra {
    /// Source addresses since the last flush: (address, first, last, count).
    sources: Vec<(IpAddr, Timestamp, Timestamp, i64)>,
    /// Valid uses after a long silence since the last flush: (previous use, this use).
    reactivations: Vec<(Timestamp, Timestamp)>,
    /// Addresses this node knows the key has been seen from (for `new_source`), bounded.
    known_sources: std::collections::HashSet<String>,
}

impl Live {
    pub fn key_id(&self) -> &str {
        self.ids.get(..self.keyspace_at as usize).unwrap_or("")
    }
    pub fn keyspace_id(&self) -> &str {
        self.ids.get(self.keyspace_at as usize..).unwrap_or("")
    }
}

/// The live cells by key id (the set borrows the id from the cell: no second copy).
struct ById(Arc<Live>);

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.key_id()
    }
}
impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.key_id().hash(h)
    }
}
impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.key_id() == other.0.key_id()
    }
}
impl Eq for ById {}

impl LiveState {
    fn record(&mut self, code: Code, ip: Option<IpAddr>, now: Timestamp) {
        let minute = now.millis().div_euclid(60_000) * 60_000;
        match self
            .buckets
            .iter_mut()
            .rev()
            .find(|(m, c, _)| *m == minute && *c == code)
        {
            Some(b) => b.2 += 1,
            None => self.buckets.push((minute, code, 1)),
        }
        if let Some(ip) = ip {
            let sources = &mut self.extra.get_or_insert_with(Box::default).sources;
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
/// plus its live counters.
pub struct Entry {
    /// The values of a `VALID` answer that depend only on the key, rendered once per load as
    /// JSON and copied into each answer, separated by U+001F (which JSON text never holds raw):
    /// key id, keyspace id (both bare), name, owner, the scope list's members (`"a","b"`),
    /// labels, meta, expires_at; then the owner as it is (for forward-auth's header). Ids and
    /// scopes need no JSON escaping (their grammars exclude it), so they are read straight out.
    text: Box<str>,
    has_owner: bool,
    rules: Rules,
    ratelimit: Option<keyward_core::model::RateLimit>,
    live: Arc<Live>,
    /// Where quota is drawn from during a rotation grace period: the successor's cell (so a
    /// rotation never doubles a quota); `None`: the key's own.
    quota: Option<Arc<Live>>,
}

const SEP: char = '\u{1f}';
/// The pieces of [`Entry::text`] before the raw owner.
const PIECES: usize = 8;

impl Entry {
    fn new(key: &Key, rules: Rules, live: Arc<Live>, quota: Option<Arc<Live>>) -> Entry {
        fn json(t: &mut String, v: &impl serde::Serialize) {
            match serde_json::to_string(v) {
                Ok(j) => t.push_str(&j),
                Err(_) => t.push_str("null"),
            }
        }
        let mut t = String::with_capacity(192);
        t.push_str(&key.id);
        t.push(SEP);
        t.push_str(&key.keyspace_id);
        t.push(SEP);
        json(&mut t, &key.name);
        t.push(SEP);
        json(&mut t, &key.owner);
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
        t.push(SEP);
        if let Some(owner) = &key.owner {
            t.push_str(owner);
        }
        Entry {
            text: t.into_boxed_str(),
            has_owner: key.owner.is_some(),
            rules,
            ratelimit: key.ratelimit,
            live,
            quota,
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
        self.piece(1)
    }

    pub fn owner(&self) -> Option<&str> {
        // The raw owner may hold anything, U+001F included: it is all that follows the pieces.
        self.has_owner
            .then(|| self.text.splitn(PIECES + 1, SEP).nth(PIECES).unwrap_or(""))
    }

    /// Appends the key's members of a `VALID` answer (`"key_id":..,"keyspace_id":..,"name":..,
    /// "owner":..,"scopes":[..],"labels":..,"meta":..,"expires_at":..`) to `out`.
    pub fn write_answer(&self, out: &mut Vec<u8>) {
        const NAMES: [&str; PIECES] = [
            "\"key_id\":\"",
            "\",\"keyspace_id\":\"",
            "\",\"name\":",
            ",\"owner\":",
            ",\"scopes\":[",
            "],\"labels\":",
            ",\"meta\":",
            ",\"expires_at\":",
        ];
        for (name, piece) in NAMES.iter().zip(self.text.split(SEP)) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(piece.as_bytes());
        }
    }

    /// About how long [`Entry::write_answer`]'s part is.
    pub fn answer_len(&self) -> usize {
        self.text.len() + 96
    }

    /// The key's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        // `"a","b"`: scopes hold neither `,` nor `"` (their grammar).
        self.piece(4)
            .split(',')
            .map(|s| s.trim_matches('"'))
            .filter(|s| !s.is_empty())
    }

    /// The cell quota is drawn from.
    fn quota_cell(&self) -> &Arc<Live> {
        self.quota.as_ref().unwrap_or(&self.live)
    }
}

enum Slot {
    Found(Arc<Entry>),
    Missing,
}

/// One shard of the cache. Negative entries are counted so that a flood of random keys evicts
/// only negatives, and only when there are many of them.
#[derive(Default)]
struct Shard {
    map: DigestMap<Slot>,
    negatives: usize,
}

impl Shard {
    fn get(&self, h: &KeyHash) -> Option<&Slot> {
        self.map.get(h)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn remove(&mut self, h: &KeyHash) {
        if let Some(Slot::Missing) = self.map.remove(h) {
            self.negatives -= 1;
        }
    }
    fn insert_found(&mut self, h: KeyHash, e: Arc<Entry>) {
        if let Some(Slot::Missing) = self.map.insert(h, Slot::Found(e)) {
            self.negatives -= 1;
        }
    }
    fn insert_missing(&mut self, h: KeyHash) {
        if self.negatives >= NEGATIVE_PER_SHARD {
            self.map.retain(|_, s| matches!(s, Slot::Found(_)));
            self.negatives = 0;
        }
        match self.map.insert(h, Slot::Missing) {
            Some(Slot::Missing) => {}
            Some(Slot::Found(_)) | None => self.negatives += 1,
        }
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

enum Decision {
    Done(Outcome),
    /// The local lease cannot cover the cost; lease more from the store and decide again.
    NeedQuota,
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

pub struct Verifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shards: Vec<RwLock<Shard>>,
    /// Live state by key id.
    live: Mutex<std::collections::HashSet<ById>>,
    /// Live cells with counts not yet written (each at most once, see `Live::queued`).
    dirty: Mutex<Vec<Arc<Live>>>,
    /// Bumped by every invalidation; a load that saw another epoch does not cache its result.
    epoch: AtomicU64,
    /// A valid use this long after the previous one is a `dormant_reactivated` anomaly.
    dormant_after_ms: i64,
    /// Cluster-wide rate limits, when `KEYWARD_REDIS_URL` is set.
    redis: Option<Arc<crate::redis::RedisLimiter>>,
    /// Keys for which this node holds a quota lease.
    leased: Mutex<std::collections::HashSet<String>>,
    /// Whether verifications are counted (usage, buckets, sources, anomalies); off only for
    /// measuring what counting costs (`KEYWARD_USAGE_COUNTING=false`). Quota is always counted.
    usage_counting: AtomicBool,
    /// Prefixes of the keyspaces, and when they were last read from the store.
    prefixes: RwLock<(
        std::collections::HashSet<String>,
        Option<std::time::Instant>,
    )>,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        dormant_after_secs: i64,
        redis: Option<Arc<crate::redis::RedisLimiter>>,
    ) -> Self {
        Verifier {
            store,
            clock,
            metrics,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            live: Mutex::new(std::collections::HashSet::new()),
            dirty: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            dormant_after_ms: dormant_after_secs.saturating_mul(1000),
            redis,
            leased: Mutex::new(std::collections::HashSet::new()),
            prefixes: RwLock::new((std::collections::HashSet::new(), None)),
            usage_counting: AtomicBool::new(true),
        }
    }

    fn shard(&self, h: &KeyHash) -> &RwLock<Shard> {
        // The last byte picks the shard; the first eight feed the map (independent bits).
        &self.shards[h.0[31] as usize % SHARDS]
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
    /// neither Redis nor a quota lease. `None`: take the slow path (which starts over).
    fn verify_cached(&self, req: &Request<'_>) -> Option<Outcome> {
        let not_found = Outcome::Denied {
            code: Code::NotFound,
            entry: None,
            reset_at: None,
        };
        match keyformat::parse(req.key) {
            Some(p) if p.prefix != TOKEN_PREFIX => {}
            _ => return Some(not_found),
        }
        let now = self.clock.now();
        let hash = KeyHash::of(req.key);
        let entry = {
            let shard = self.shard(&hash).read().unwrap_or_else(|p| p.into_inner());
            match shard.get(&hash)? {
                Slot::Found(e) => e.clone(),
                Slot::Missing => {
                    drop(shard);
                    self.metrics.cache_hit();
                    return Some(not_found);
                }
            }
        };
        if self.redis.is_some() && entry.ratelimit.is_some() {
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
                Decision::NeedQuota => return None,
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
        let cached = {
            let shard = self.shard(&hash).read().unwrap_or_else(|p| p.into_inner());
            match shard.get(&hash) {
                Some(Slot::Found(e)) => Some(Some(e.clone())),
                Some(Slot::Missing) => Some(None),
                None => None,
            }
        };
        let entry = match cached {
            Some(e) => {
                self.metrics.cache_hit();
                e
            }
            None => {
                self.metrics.cache_miss();
                // A key of no keyspace's prefix costs no store read (the set of prefixes is
                // re-read at most once a second, for keyspaces created on other nodes).
                if !self.known_prefix(prefix).await? {
                    return not_found();
                }
                self.load(hash).await?
            }
        };
        let Some(entry) = entry else {
            return Ok(Outcome::Denied {
                code: Code::NotFound,
                entry: None,
                reset_at: None,
            });
        };
        if req
            .keyspaces
            .is_some_and(|ks| !ks.iter().any(|k| k == entry.keyspace_id()))
        {
            return not_found();
        }
        let shared = self.shared_window(&entry, req, now).await;
        let mut tries = 0;
        let outcome = loop {
            match self.decide(entry.clone(), req, now, shared, tries >= 3) {
                Decision::Done(o) => break o,
                Decision::NeedQuota => {
                    self.lease(entry.quota_cell(), req.cost, now).await?;
                    tries += 1;
                }
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
        let (redis, rl) = (self.redis.as_ref()?, entry.ratelimit?);
        if check_rules(&entry.rules, entry.scopes(), req.scopes, req.ip, now).is_err() {
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

    fn decide(
        &self,
        entry: Arc<Entry>,
        req: &Request<'_>,
        now: Timestamp,
        shared: Option<SharedWindow>,
        last_try: bool,
    ) -> Decision {
        if let Err(code) = check_rules(&entry.rules, entry.scopes(), req.scopes, req.ip, now) {
            self.deny(&entry.live, code, req, now);
            return Decision::Done(Outcome::Denied {
                code,
                entry: Some(entry),
                reset_at: None,
            });
        }
        if let Some(w) = shared {
            if w.count > w.limit {
                self.deny(&entry.live, Code::RateLimited, req, now);
                return Decision::Done(Outcome::Denied {
                    code: Code::RateLimited,
                    entry: Some(entry),
                    reset_at: Some(w.reset_at),
                });
            }
        }
        // With a shared window the rate limit was decided in Redis; only the quota is local.
        let ratelimit = if shared.is_some() {
            None
        } else {
            entry.ratelimit
        };
        let same = entry.quota.is_none();
        let mut own = lock(&entry.live.state);
        // A quota that runs short may be topped up from the store (a lease) before answering
        // USAGE_EXCEEDED: when the store had some left at the last lease, or a while has passed.
        let may_lease = |q: &LiveState| {
            !last_try
                && (q.pool > 0
                    || q.last_lease
                        .is_none_or(|t| now.millis() - t.millis() >= LEASE_RETRY_MS))
        };
        let (result, need_quota) = if same {
            let may = may_lease(&own);
            let LiveState {
                window,
                remaining,
                pool,
                ..
            } = &mut *own;
            let r = check_and_consume(ratelimit, window, remaining, req.cost, now);
            let need = matches!(r, Err((Code::UsageExceeded, _))) && may;
            (r.map(|rate| (rate, remaining.map(|l| l + *pool))), need)
        } else {
            // Lock order: a rotated key, then its successor (a successor never locks back).
            let quota = entry.quota_cell();
            let mut q = lock(&quota.state);
            let may = may_lease(&q);
            let r = check_and_consume(ratelimit, &mut own.window, &mut q.remaining, req.cost, now);
            if r.is_ok() && q.remaining.is_some() {
                q.consumed += req.cost;
            }
            let rem = q.remaining.map(|l| l + q.pool);
            drop(q);
            if r.is_ok() {
                self.mark_dirty(quota);
            }
            let need = matches!(r, Err((Code::UsageExceeded, _))) && may;
            (r.map(|rate| (rate, rem)), need)
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
                let spent = same && own.remaining.is_some();
                if spent {
                    own.consumed += req.cost;
                }
                if counting {
                    own.calls += 1;
                    if own.last_used.is_none_or(|t| t < now) {
                        own.last_used = Some(now);
                    }
                    if let Some(prev) = own.previous_use {
                        if now.millis() - prev.millis() >= self.dormant_after_ms {
                            own.extra
                                .get_or_insert_with(Box::default)
                                .reactivations
                                .push((prev, now));
                        }
                    }
                    if own.previous_use.is_none_or(|t| t < now) {
                        own.previous_use = Some(now);
                    }
                    own.record(Code::Valid, req.ip, now);
                }
                drop(own);
                if counting || spent {
                    self.mark_dirty(&entry.live);
                }
                Decision::Done(Outcome::Valid {
                    entry,
                    remaining,
                    rate,
                })
            }
            Err((code, reset_at)) => {
                drop(own);
                self.deny(&entry.live, code, req, now);
                Decision::Done(Outcome::Denied {
                    code,
                    entry: Some(entry),
                    reset_at,
                })
            }
        }
    }

    fn deny(&self, live: &Arc<Live>, code: Code, req: &Request<'_>, now: Timestamp) {
        if !self.usage_counting.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut s = lock(&live.state);
            s.denied += 1;
            s.record(code, req.ip, now);
        }
        self.mark_dirty(live);
    }

    fn mark_dirty(&self, live: &Arc<Live>) {
        // A plain load first: a key used again before the next flush is already queued, and
        // the read costs less than a read-modify-write.
        if !live.queued.load(Ordering::Acquire) && !live.queued.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(live.clone());
        }
    }

    /// Reads a key from the store and caches the answer (found or not).
    async fn load(&self, hash: KeyHash) -> Result<Option<Arc<Entry>>, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let key = self.store.key_by_hash(&hash).await?;
        let entry = match key {
            None => None,
            Some(key) => {
                let successor = match &key.rotated_to {
                    Some(id) if key.revoked_at.is_none() => self.store.key(id).await?,
                    _ => None,
                };
                Some(Arc::new(self.entry_for(key, successor.as_ref())))
            }
        };
        // The epoch is compared under the shard's write lock, which `invalidate` also holds while
        // it bumps the epoch: a load that raced with an invalidation never caches its answer.
        let mut shard = self.shard(&hash).write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) == epoch {
            match &entry {
                Some(e) => shard.insert_found(hash, e.clone()),
                None => shard.insert_missing(hash),
            }
        }
        drop(shard);
        Ok(entry)
    }

    fn entry_for(&self, key: Key, successor: Option<&Key>) -> Entry {
        let live = self.live_for(&key);
        let quota = successor.map(|s| self.live_for(s));
        let allowed = key.allowed_cidrs.as_ref().map(|c| {
            let mut nets: Vec<_> = c.iter().filter_map(|s| parse_cidr(s).ok()).collect();
            nets.shrink_to_fit();
            nets
        });
        let rules = Rules {
            revoked: key.revoked_at.is_some(),
            expires_at: key.expires_at,
            enabled: key.enabled,
            allowed,
        };
        Entry::new(&key, rules, live, quota)
    }

    /// The live cell of a key, created from the stored row when this node has none.
    fn live_for(&self, key: &Key) -> Arc<Live> {
        let live = {
            let mut cells = lock(&self.live);
            match cells.get(key.id.as_str()) {
                Some(c) => c.0.clone(),
                None => {
                    let live = Arc::new(Live {
                        ids: format!("{}{}", key.id, key.keyspace_id).into_boxed_str(),
                        keyspace_at: u32::try_from(key.id.len()).unwrap_or(u32::MAX),
                        state: Mutex::new(LiveState {
                            // No lease yet: the first valid verification leases from the store.
                            remaining: key.remaining.map(|_| 0),
                            pool: key.remaining.unwrap_or(0),
                            previous_use: key.last_used_at,
                            ..LiveState::default()
                        }),
                        queued: AtomicBool::new(false),
                        stale_quota: AtomicBool::new(false),
                    });
                    cells.insert(ById(live.clone()));
                    live
                }
            }
        };
        if live.stale_quota.swap(false, Ordering::AcqRel) {
            // Another node changed the key; a new quota voids this node's lease. Dropping the
            // lease can only under-grant until the sweep reclaims it, never over-grant.
            let mut s = lock(&live.state);
            s.remaining = key.remaining.map(|_| 0);
            s.pool = key.remaining.unwrap_or(0);
        }
        live
    }

    /// A change made elsewhere: forget the cached key; when its quota was set anew, drop this
    /// node's (voided) lease on the next load.
    pub fn invalidate_remote(&self, hash: &KeyHash, key_id: &str, quota_changed: bool) {
        if quota_changed {
            if let Some(live) = lock(&self.live).get(key_id) {
                live.0.stale_quota.store(true, Ordering::Release);
            }
        }
        self.invalidate(hash);
    }

    /// Leases more quota for a key from the store: about a sixteenth of what is left (at least
    /// the cost), so that nodes share a quota finely near its end.
    async fn lease(&self, live: &Arc<Live>, cost: i64, now: Timestamp) -> Result<(), StoreError> {
        let pool = lock(&live.state).pool;
        let want = cost
            .max(pool.saturating_add(15) / 16)
            .clamp(1, 100_000)
            .max(cost);
        let got = self.store.lease_quota(live.key_id(), want, now).await?;
        let mut s = lock(&live.state);
        s.last_lease = Some(now);
        match got {
            Some((granted, left)) => {
                s.remaining = Some(s.remaining.unwrap_or(0) + granted);
                s.pool = left;
            }
            None => {
                s.remaining = None;
                s.pool = 0;
            }
        }
        drop(s);
        lock(&self.leased).insert(live.key_id().to_string());
        Ok(())
    }

    /// Gives back leases that sat unspent for a while (or all, at shutdown), so that other nodes
    /// can grant that quota.
    pub async fn return_leases(&self, now: Timestamp, all: bool) -> Result<(), StoreError> {
        let ids: Vec<String> = lock(&self.leased).iter().cloned().collect();
        for id in ids {
            let Some(live) = lock(&self.live).get(id.as_str()).map(|c| c.0.clone()) else {
                lock(&self.leased).remove(&id);
                continue;
            };
            let amount = {
                let mut s = lock(&live.state);
                let idle = s
                    .last_lease
                    .is_none_or(|t| now.millis() - t.millis() >= LEASE_IDLE_MS)
                    && s.consumed == 0;
                match s.remaining {
                    Some(l) if l > 0 && (all || idle) => {
                        s.remaining = Some(0);
                        s.pool += l;
                        l
                    }
                    _ => 0,
                }
            };
            if amount > 0 {
                if let Err(e) = self.store.return_lease(&id, amount).await {
                    let mut s = lock(&live.state);
                    s.remaining = Some(s.remaining.unwrap_or(0) + amount);
                    s.pool -= amount;
                    return Err(e);
                }
                lock(&self.leased).remove(&id);
            } else if lock(&live.state).remaining.is_none_or(|l| l == 0) {
                lock(&self.leased).remove(&id);
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
    pub fn prime(&self, key: Key) {
        let hash = key.hash;
        let entry = Arc::new(self.entry_for(key, None));
        self.shard(&hash)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert_found(hash, entry);
    }

    /// Forgets what this node caches about a key; the next verification reads the store.
    pub fn invalidate(&self, hash: &KeyHash) {
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.remove(hash);
    }

    /// Sets the quota of a key after the control plane changed it (call with the write gate
    /// held and after a flush, so no unwritten consumption is lost or double counted).
    pub fn set_remaining(&self, key_id: &str, remaining: Option<i64>) {
        if let Some(live) = lock(&self.live).get(key_id) {
            // The store voided every lease of the old quota.
            let mut s = lock(&live.0.state);
            s.remaining = remaining.map(|_| 0);
            s.pool = remaining.unwrap_or(0);
            s.consumed = 0;
        }
    }

    /// What this node's unwritten usage is, for the flusher. Cells are reset as they are taken.
    pub fn take_usage(&self) -> (Vec<UsageDelta>, Vec<Reactivation>) {
        let cells = std::mem::take(&mut *lock(&self.dirty));
        let mut out = Vec::with_capacity(cells.len());
        let mut reactivations = Vec::new();
        for live in cells {
            live.queued.store(false, Ordering::Release);
            let mut s = lock(&live.state);
            let (sources, reacts) = match s.extra.as_deref_mut() {
                Some(x) => (
                    std::mem::take(&mut x.sources),
                    std::mem::take(&mut x.reactivations),
                ),
                None => Default::default(),
            };
            let d = UsageDelta {
                key_id: live.key_id().to_string(),
                calls: std::mem::take(&mut s.calls),
                denied: std::mem::take(&mut s.denied),
                last_used_at: s.last_used.take(),
                consumed: std::mem::take(&mut s.consumed),
                buckets: std::mem::take(&mut s.buckets)
                    .into_iter()
                    .map(|(m, c, n)| (m, c.as_str().to_string(), n))
                    .collect(),
                sources: sources
                    .into_iter()
                    .map(|(ip, f, l, n)| (ip.to_string(), f, l, n))
                    .collect(),
            };
            for (previous_use, at) in reacts {
                reactivations.push(Reactivation {
                    key_id: live.key_id().to_string(),
                    keyspace_id: live.keyspace_id().to_string(),
                    previous_use,
                    at,
                });
            }
            drop(s);
            if d.calls != 0
                || d.denied != 0
                || d.consumed != 0
                || d.last_used_at.is_some()
                || !d.buckets.is_empty()
            {
                out.push(d);
            }
        }
        (out, reactivations)
    }

    /// Puts back usage that could not be written, so it is retried with the next flush.
    pub fn restore_usage(&self, deltas: Vec<UsageDelta>) {
        for d in deltas {
            let live = lock(&self.live).get(d.key_id.as_str()).map(|c| c.0.clone());
            if let Some(live) = live {
                {
                    let mut s = lock(&live.state);
                    s.calls += d.calls;
                    s.denied += d.denied;
                    s.consumed += d.consumed;
                    if d.last_used_at > s.last_used {
                        s.last_used = d.last_used_at;
                    }
                    for (m, code, n) in d.buckets {
                        let Some(code) = Code::parse(&code) else {
                            continue;
                        };
                        match s.buckets.iter_mut().find(|b| b.0 == m && b.1 == code) {
                            Some(b) => b.2 += n,
                            None => s.buckets.push((m, code, n)),
                        }
                    }
                    for (ip, first, last, n) in d.sources {
                        let Ok(ip) = ip.parse::<IpAddr>() else {
                            continue;
                        };
                        let sources = &mut s.extra.get_or_insert_with(Box::default).sources;
                        match sources.iter_mut().find(|x| x.0 == ip) {
                            Some(x) => {
                                x.1 = x.1.min(first);
                                x.2 = x.2.max(last);
                                x.3 += n;
                            }
                            None => sources.push((ip, first, last, n)),
                        }
                    }
                }
                self.mark_dirty(&live);
            }
        }
    }

    /// The addresses among `ips` this node does not yet know for the key.
    pub fn unknown_sources(&self, key_id: &str, ips: &[String]) -> Vec<String> {
        let live = lock(&self.live).get(key_id).map(|c| c.0.clone());
        match live {
            Some(live) => {
                let s = lock(&live.state);
                ips.iter()
                    .filter(|ip| {
                        !s.extra
                            .as_ref()
                            .is_some_and(|x| x.known_sources.contains(*ip))
                    })
                    .cloned()
                    .collect()
            }
            None => ips.to_vec(),
        }
    }

    /// Remembers addresses as known for the key (at most 256 per key on this node).
    pub fn remember_sources(&self, key_id: &str, ips: impl IntoIterator<Item = String>) {
        if let Some(live) = lock(&self.live).get(key_id).map(|c| c.0.clone()) {
            let mut s = lock(&live.state);
            let known = &mut s.extra.get_or_insert_with(Box::default).known_sources;
            for ip in ips {
                if known.len() >= 256 {
                    break;
                }
                known.insert(ip);
            }
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
        Key {
            id: "key_2x9ZQ".into(),
            keyspace_id: "ks_7Yb".into(),
            name: "svc \"one\"\u{1f}\n".into(),
            owner: owner.map(str::to_string),
            scopes: vec!["orders:read".into(), "orders:*".into()],
            labels,
            meta,
            hash: KeyHash::of("x"),
            start: String::new(),
            end: String::new(),
            enabled: true,
            created_at: Timestamp::from_millis(0),
            created_by: keyward_core::model::Actor::system(),
            updated_at: Timestamp::from_millis(0),
            expires_at: Some(Timestamp::from_millis(1_800_000_000_123)),
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            last_used_at: None,
            call_count: 0,
            denied_count: 0,
            ratelimit: None,
            remaining: None,
            allowed_cidrs: None,
        }
    }

    fn entry(k: &Key) -> Entry {
        let rules = Rules {
            revoked: false,
            expires_at: k.expires_at,
            enabled: true,
            allowed: None,
        };
        let live = Arc::new(Live {
            ids: format!("{}{}", k.id, k.keyspace_id).into_boxed_str(),
            keyspace_at: k.id.len() as u32,
            state: Mutex::new(LiveState::default()),
            queued: AtomicBool::new(false),
            stale_quota: AtomicBool::new(false),
        });
        Entry::new(k, rules, live, None)
    }

    /// The compact entry answers exactly what serializing the key's fields answers, whatever
    /// the free-text fields hold (quotes, control characters, the separator itself).
    #[test]
    fn the_compact_entry_renders_the_fields_as_serde_does() {
        for owner in [None, Some("ops \u{1f} team \"a\"")] {
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

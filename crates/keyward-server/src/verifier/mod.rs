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
//!
//! One module per concern, each stating its invariants:
//! - `entry`: what a cached key is ([`Entry`]) and how its part of an answer is rendered.
//! - `live`: what changes with each verification of a key (rate-limit window, quota lease,
//!   counts, source addresses), behind the entry's lock.
//! - `shard`: the sharded cache of entries and negative entries, keyed by `Digest` (its
//!   table of found keys is `table`).
//! - `load`: reading a key into the cache and keeping the cache coherent (the epoch check,
//!   the hand-over of live state, invalidation).
//! - `decide`: the decision on a [`Request`] for one entry, and its [`Outcome`].
//! - `lease`: quota leased from the store, and given back when idle.
//! - `flush`: the hand-off of counts to the usage flusher ([`Usage`]).
//!
//! This module holds [`Verifier`], which ties them together: the verification paths (the
//! common one that never waits, and the one that reads the store, Redis or leases quota), and
//! the calls the control plane makes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use keyward_core::keyformat::{self, KeyHash, TOKEN_PREFIX};
use keyward_core::model::Key;
use keyward_core::time::Clock;
use keyward_store::{Store, StoreError};

use crate::metrics::Metrics;

mod decide;
mod entry;
mod flush;
mod imported;
mod lease;
mod live;
mod load;
mod shard;
mod space;
mod table;

// The methods of `Verifier` are compiled with this module (their self type's), whichever file
// their `impl` block is in: the small helpers of other modules they call on the verification
// and flush paths (`Shard::get`, `DirtyList::push`, `DirtyList::take`) are `#[inline]`, so
// that they are inlined into them as when all was one module.

pub use decide::{Exhausted, LimitStates, Outcome, Request};
pub use entry::Entry;
pub use flush::{Reactivation, Usage};
pub use live::Notice;
pub(crate) use shard::Digest;

use decide::Decision;
use flush::DirtyList;
use shard::{digest, Cached, Shard, SHARDS};
use space::Space;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the counters inconsistent in a way
    // worse than losing the cache, so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Verifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shards: Vec<RwLock<Shard>>,
    /// Keyspace ids, one allocation each, shared by their keys' entries.
    keyspaces: Mutex<HashMap<String, Arc<Space>>>,
    /// The rate-limit windows of identities with limits, held by their keys' entries (a cell
    /// goes when its last entry does).
    identities: Mutex<HashMap<Box<str>, std::sync::Weak<entry::IdentityCell>>>,
    /// Live cells in `identities` when it was last swept of dead ones.
    identities_live: std::sync::atomic::AtomicUsize,
    /// Entries with counts not yet written (each at most once, see `Entry::queued`).
    dirty: Mutex<DirtyList>,
    /// Held while a quota cell leases from the store (see [`LEASE_STRIPES`]).
    leasing: Box<[tokio::sync::Mutex<()>]>,
    /// Entries whose only unwritten counts are those of known source addresses, by when they
    /// are due (each at most once, see `More::sources_waiting`): they wait here, not in
    /// `dirty`, so a flush looks only at keys used since the last one and at those now due.
    later: Mutex<flush::Later>,
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
    /// Set for the last flushes at shutdown: every source address is written, due or not.
    write_all_sources: AtomicBool,
    /// Imported keys: whether some lack keyward's format, and the bounds on slow-hash checks.
    imports: imported::Imports,
}

/// How many rounds of leasing (its own lease, or waiting for another's) one verification may go
/// through before it answers with what it has. The verifications running at once on a node
/// spend from one lease: one may find a grant spent by the others and lease again, for as long
/// as the store had quota left (`More::pool`).
const LEASES_PER_VERIFICATION: usize = 16;
/// Stripes of the lease locks: one lease at a time per quota cell on a node (cells of one
/// stripe wait for each other's store call, which is rare: leases are near a quota's end).
const LEASE_STRIPES: usize = 64;

/// The lease lock of a quota cell (its key id, or `@` and its identity's id).
fn lease_stripe(key_id: &str) -> usize {
    let h = key_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % LEASE_STRIPES as u64) as usize
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
            identities: Mutex::new(HashMap::new()),
            identities_live: std::sync::atomic::AtomicUsize::new(0),
            dirty: Mutex::new(DirtyList::default()),
            leasing: (0..LEASE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            later: Mutex::new(flush::Later::default()),
            dormant_after_ms: dormant_after.as_millis() as i64,
            redis,
            leased: Mutex::new(Vec::new()),
            known_sources: Mutex::new(HashMap::new()),
            usage_counting: AtomicBool::new(true),
            write_all_sources: AtomicBool::new(false),
            imports: imported::Imports::new(),
        }
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
        let not_found = Outcome::not_found();
        // No key is longer (and hashing a long string would cost more than refusing it).
        if req.key.len() > keyformat::MAX_PREFIX_LEN + 1 + keyformat::BODY_LEN
            && !self.maybe_foreign(req.key)
        {
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
                // Garbage and tokens stop here, not in the slow path (a string of no key
                // format too, unless the store may hold imported keys of other formats).
                return match keyformat::parse(req.key) {
                    Some(p) if p.prefix != TOKEN_PREFIX => None,
                    Some(_) => Some(not_found),
                    None if self.maybe_foreign(req.key) => None,
                    None => Some(not_found),
                };
            }
        };
        if entry.needs_reload()
            || (self.redis.is_some() && entry.has_limits())
            || (req.route.is_some() && !entry.space().is_loaded())
        {
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
                Decision::NeedQuota(_) | Decision::Moved(_) => return None,
            }
        };
        self.metrics.cache_hit();
        Some(outcome)
    }

    async fn verify_slow(&self, req: &Request<'_>) -> Result<Outcome, StoreError> {
        let now = self.clock.now();
        // Garbage never reaches a lock or the store; tokens never verify as keys.
        let not_found = || Ok(Outcome::not_found());
        match keyformat::parse(req.key) {
            Some(p) if p.prefix != TOKEN_PREFIX => {}
            Some(_) => return not_found(),
            None if self.maybe_foreign(req.key) && self.foreign_known().await? => {}
            None => return not_found(),
        }
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
                // Read once whatever its prefix: a keyspace created on another node a moment
                // ago is not known here yet, and its first key must verify at once. The answer,
                // "no such key" included, is cached. The checksum only keeps typos and other
                // systems' strings out (CRC32 is public: a caller who crafts distinct well-formed
                // keys costs one indexed read each, as with a known prefix before; see
                // docs/decisions.md).
                if self.foreign_known().await? {
                    // An imported key still held as a salted hash is found by its lookup
                    // prefix: the miss is cached only once that search found nothing.
                    let epoch = self.epoch(&digest(&hash));
                    match self.load_with(hash, false).await? {
                        Some(e) => Some(e),
                        None => match self.verify_salted(req.key, hash, req.keyspaces).await? {
                            imported::Salted::Found(e) => Some(e),
                            imported::Salted::Missing => {
                                self.remember_missing(&hash, epoch);
                                None
                            }
                            imported::Salted::Refused => None,
                        },
                    }
                } else {
                    self.load(hash).await?
                }
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
        // A change that lands while the rules are read voids the read: read again (a few
        // times; past that the check fails closed, see `Space`).
        for _ in 0..3 {
            if req.route.is_none() || entry.space().is_loaded() {
                break;
            }
            self.load_space(entry.space()).await?;
        }
        let mut shared = self.shared_windows(&entry, req, now).await;
        let mut leases = 0;
        let result = loop {
            let last = leases >= LEASES_PER_VERIFICATION;
            match self.decide(entry.clone(), req, now, shared.as_ref(), last) {
                Decision::Done(o) => break Ok(o),
                Decision::NeedQuota(cell) => {
                    // One lease in flight per cell: verifications that ran short at once wait
                    // for it and decide again on what it brought (or on the empty pool it
                    // found). Each leasing its own share (all sized from the same view of the
                    // pool) took a quota's whole rest to a few nodes while others were denied
                    // `USAGE_EXCEEDED`, until the idle leases came back.
                    let seen = Entry::with_state(&cell, |s| s.more.as_ref().map(|m| m.leases)).1;
                    let _one = self.leasing[lease_stripe(cell.key_id())].lock().await;
                    let (_, (leased_meanwhile, covered)) = Entry::with_state(&cell, |s| {
                        let m = s.more.as_ref();
                        (
                            m.map(|m| m.leases) != seen,
                            m.and_then(|m| m.remaining).is_some_and(|r| r >= req.cost),
                        )
                    });
                    if !leased_meanwhile && !covered {
                        if let Err(e) = self.lease(&cell, req.cost, self.clock.now()).await {
                            break Err(e);
                        }
                    }
                    // Every round counts, leased or not: a verification decides a bounded
                    // number of times.
                    leases += 1;
                }
                Decision::Moved(next) => {
                    // The same key, its rules as of a later read: counted in Redis again when
                    // its limits changed (the counts are matched to limits by position).
                    if shared.is_some() && !next.same_limits(&entry) {
                        self.undo_shared(shared.take()).await;
                        shared = self.shared_windows(&next, req, now).await;
                    }
                    entry = next;
                }
            }
        };
        if !matches!(result, Ok(Outcome::Valid { .. })) {
            // Only a valid answer takes a rate-limit slot: give back those taken in Redis.
            self.undo_shared(shared).await;
        }
        result
    }

    async fn undo_shared(&self, shared: Option<decide::SharedWindows>) {
        if let (Some(w), Some(redis)) = (shared, &self.redis) {
            // A slot not given back stays taken until its window ends (the limit then grants
            // fewer than it says): counted with the other failures of Redis.
            if let Err(e) = redis.undo(&w.counters).await {
                self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis unreachable: a denied verification's slots stay taken");
            }
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

    /// Turns usage counting on or off (see the field's comment).
    pub fn set_usage_counting(&self, on: bool) {
        self.usage_counting.store(on, Ordering::Relaxed);
    }

    /// Puts a key straight into the cache, as a store read would (benchmarks and warm-up).
    /// `key` must be one the store could hold: issued by keyward, so its plaintext is a well
    /// formed key of a keyspace's prefix (never a token). The fast path of [`Verifier::verify`]
    /// answers a cached digest without parsing the key again.
    pub fn prime(&self, key: Key) {
        let fresh = self.entry_of(&key, None);
        self.install(&fresh, None);
    }

    /// Forgets what this node caches about a key: the next verification reads the store (the
    /// entry stays, marked stale, until then: the new one takes over its live state).
    pub fn invalidate(&self, hash: &KeyHash) {
        self.invalidate_with(hash, |_| {});
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
                m.lease_until = live::NEVER;
                m.quota_gen = m.quota_gen.wrapping_add(1);
            }
        });
    }

    pub fn cached_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

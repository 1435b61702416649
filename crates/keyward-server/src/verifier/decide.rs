//! The decision on one request for one entry: the rules that need no live state, then the rate
//! limits (the key's and its identity's: this node's windows, or cluster-wide ones counted in
//! Redis), all of which must allow it, and the quota; and the counts the verification leaves
//! for the flusher.
//!
//! Invariants:
//! - Deciding never waits: what memory cannot answer is handed back to the caller
//!   ([`Decision::NeedQuota`]: lease, then decide again; [`Decision::Moved`]: decide again on
//!   the entry that holds the key's state now).
//! - Lock order: a rotated key's state, then its successor's (a successor never locks back),
//!   then its identity's quota entry. The key's windows are under its lock from check to
//!   consumption; its identity's are shared atomics (`AtomicWindow`), each slot taken with one
//!   compare-and-swap that fails when none is left (and given back when a later check denies),
//!   so every limit is exact on this node.
//! - Only a valid answer spends quota or takes a rate-limit slot: slots taken in Redis for a
//!   verification that is then denied are given back (`Verifier::verify_slow`).
//! - A `RATE_LIMITED` answer names the exhausted limit that resets last (the earliest time a
//!   retry can succeed).
//! - Quota is always counted; usage (counts, sources, reactivations) only while counting is on.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyward_core::limits::{DEFAULT_LIMIT, MAX_RATELIMITS};
use keyward_core::time::Timestamp;
use keyward_core::verify::{Code, Limit, RateState};

use super::entry::Slot;
use super::lease::LEASE_RETRY_MS;
use super::live::{LiveState, More, Notice, NEVER};
use super::{lock, Entry, Verifier};
use crate::redis::{CounterOf, RedisLimiter};

/// One verification: the key, the scopes it must hold, where the request came from, and what it
/// costs.
pub struct Request<'a> {
    pub key: &'a str,
    pub scopes: &'a [String],
    pub ip: Option<IpAddr>,
    pub cost: i64,
    /// The keyspaces of the verifying token when it is limited: keys of other keyspaces are
    /// `NOT_FOUND` to it (nothing is counted or consumed).
    pub keyspaces: Option<&'a [String]>,
    /// Forward-auth: the request the proxy asks about, for the keyspace's route rules.
    /// `None` (`/v1/verify`): the rules do not apply.
    pub route: Option<keyward_core::routes::RouteRequest<'a>>,
}

pub(super) enum Decision {
    Done(Outcome),
    /// A local lease cannot cover the cost: lease more for this entry (the key's quota cell,
    /// or its identity's quota) from the store and decide again.
    NeedQuota(Arc<Entry>),
    /// The entry's live state went to this newer entry; decide again on that one. (Each
    /// hand-over needs a store read, so following the pointers always catches up.)
    Moved(Arc<Entry>),
}

/// The windows of a verification counted in Redis: one per limit (the key's, then its
/// identity's), each count including this verification.
#[derive(Clone, Debug)]
pub(super) struct SharedWindows {
    pub(super) counters: Vec<(String, i64)>,
    counts: Vec<i64>,
    /// Window starts, in the order of `counters`.
    starts: Vec<i64>,
}

/// What each limit has left after a valid verification: the key's limits, then its identity's,
/// in order, held inline (no allocation per call). A window's reset is computed from `now` when
/// the answer is written.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct LimitStates {
    now: Timestamp,
    left: [u32; 2 * MAX_RATELIMITS],
    own: u8,
    len: u8,
}

impl LimitStates {
    /// For `own` limits of the key and `identity` of its identity (at most `MAX_RATELIMITS`
    /// each: `Entry::new`).
    #[inline]
    fn new(now: Timestamp, own: usize, identity: usize) -> Self {
        let own = own.min(MAX_RATELIMITS);
        LimitStates {
            now,
            own: own as u8,
            len: (own + identity.min(MAX_RATELIMITS)) as u8,
            left: [0; 2 * MAX_RATELIMITS],
        }
    }

    /// What limit `i` (the key's, then its identity's) has left.
    #[inline]
    fn set(&mut self, i: usize, remaining: i64) {
        // A limit is at most 10^9, so what is left fits a `u32`.
        if let Some(slot) = self.left.get_mut(i) {
            *slot = remaining as u32;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The state of the key's limit named `default` (what `ratelimit` answers about).
    pub fn default_rate(&self, entry: &Entry) -> Option<RateState> {
        self.iter(entry)
            .next()
            .filter(|(at, l, _, _)| !at.identity && &*l.name == DEFAULT_LIMIT)
            .map(|(_, l, remaining, reset_at)| RateState {
                limit: l.limit,
                remaining,
                reset_at,
            })
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Each limit's place (which limit: [`Entry::limit_of`]), what it has left and when its
    /// window resets.
    pub fn iter<'a>(
        &'a self,
        entry: &'a Entry,
    ) -> impl Iterator<Item = (Exhausted, &'a Limit, i64, Timestamp)> + 'a {
        (0..self.len).filter_map(move |i| {
            let identity = i >= self.own;
            let index = if identity { i - self.own } else { i };
            let at = Exhausted { index, identity };
            let l = entry.limit_of(at)?;
            let reset = Timestamp::from_millis(l.window_start(self.now) + l.window_ms);
            Some((at, l, i64::from(self.left[usize::from(i)]), reset))
        })
    }
}

pub enum Outcome {
    Valid {
        entry: Arc<Entry>,
        remaining: Option<i64>,
        /// Every limit that applied, the key's then its identity's.
        limits: LimitStates,
    },
    /// Denied; `entry` when the key was identified; for `RATE_LIMITED`, `reset_at` (the latest
    /// reset among the exhausted limits) and `limit`, the one that resets then.
    Denied {
        code: Code,
        entry: Option<Arc<Entry>>,
        reset_at: Option<Timestamp>,
        limit: Option<Exhausted>,
    },
}

/// The limit a `RATE_LIMITED` answer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub index: u8,
    pub identity: bool,
}

impl Outcome {
    pub fn code(&self) -> Code {
        match self {
            Outcome::Valid { .. } => Code::Valid,
            Outcome::Denied { code, .. } => *code,
        }
    }

    /// A denial of an unidentified key.
    pub(super) fn not_found() -> Outcome {
        Outcome::Denied {
            code: Code::NotFound,
            entry: None,
            reset_at: None,
            limit: None,
        }
    }
}

impl Entry {
    /// The limit `e` names: the key's, or its identity's.
    pub fn limit_of(&self, e: Exhausted) -> Option<&Limit> {
        if e.identity {
            self.identity_limits().get(usize::from(e.index))
        } else {
            self.limits().get(usize::from(e.index))
        }
    }
}

/// Whether a quota that runs short may be topped up from the store (a lease) before answering
/// USAGE_EXCEEDED: when the store had some left at the last lease, or a while has passed.
fn may_lease(m: &More, last_lease: bool, now: Timestamp) -> bool {
    !last_lease
        && (m.pool > 0
            || m.last_lease
                .is_none_or(|t| now.millis() - t.millis() >= LEASE_RETRY_MS))
}

/// The limit that exhausted with the latest reset so far, and that reset.
type Worst = Option<(Exhausted, Timestamp)>;

fn note_exhausted(worst: &mut Worst, e: Exhausted, reset: Timestamp) {
    if worst.is_none_or(|(_, r)| reset > r) {
        *worst = Some((e, reset));
    }
}

/// Notes the key's exhausted windows (under its state lock).
#[inline]
fn note_own_exhausted(own: &[Slot], now: Timestamp, worst: &mut Worst) {
    for (i, s) in own.iter().enumerate() {
        let w = s.own_window(now);
        if w.count >= s.spec.limit {
            let e = Exhausted {
                index: i as u8,
                identity: false,
            };
            note_exhausted(worst, e, Timestamp::from_millis(w.start + s.spec.window_ms));
        }
    }
}

/// Takes a slot of each of the key's windows (under its state lock, none exhausted), noting
/// what each has left in `states`.
#[inline]
fn take_own_slots(own: &[Slot], now: Timestamp, states: &mut LimitStates) {
    for (i, s) in own.iter().enumerate() {
        let w = s.own_window(now);
        s.set_own(&w, w.count + 1);
        states.set(i, s.spec.limit - w.count - 1);
    }
}

/// Gives back the slot just taken of each of the key's windows (under its state lock).
#[cold]
fn untake_own_slots(own: &[Slot], now: Timestamp) {
    for s in own {
        let w = s.own_window(now);
        s.set_own(&w, w.count - 1);
    }
}

/// Takes a slot of each of the identity's windows, or none, noting what each has left in
/// `states` (after the key's `own` limits); else (every slot taken given back) the exhausted
/// window that resets last; `None` when none is exhausted any more (a window ended meanwhile:
/// decide again). A window can run out between a check and the take: a verification of
/// another of the identity's keys took its last slot.
#[inline(always)]
fn take_identity_slots(
    identity: &[Slot],
    own: usize,
    now: Timestamp,
    states: &mut LimitStates,
) -> Result<(), Worst> {
    for (i, s) in identity.iter().enumerate() {
        let Some(w) = s.shared() else { continue };
        match w.try_take(s.spec, now) {
            Ok((_, count)) => states.set(own + i, s.spec.limit - count),
            Err(_) => {
                for s in identity.iter().take(i) {
                    if let Some(w) = s.shared() {
                        w.untake(s.spec, s.spec.window_start(now));
                    }
                }
                let mut worst: Worst = None;
                note_identity_exhausted(identity, now, &mut worst);
                return Err(worst);
            }
        }
    }
    Ok(())
}

/// Notes the identity's exhausted windows.
#[cold]
fn note_identity_exhausted(identity: &[Slot], now: Timestamp, worst: &mut Worst) {
    for (i, s) in identity.iter().enumerate() {
        let Some(w) = s.shared() else { continue };
        let (start, count) = w.peek(s.spec, now);
        if count >= s.spec.limit {
            let e = Exhausted {
                index: i as u8,
                identity: true,
            };
            note_exhausted(worst, e, Timestamp::from_millis(start + s.spec.window_ms));
        }
    }
}

impl Verifier {
    /// Counts the verification in Redis (cluster-wide) when configured and a limit applies;
    /// `None` means decide with this node's own windows (no Redis, no limit, or Redis
    /// unreachable).
    pub(super) async fn shared_windows(
        &self,
        entry: &Entry,
        req: &Request<'_>,
        now: Timestamp,
    ) -> Option<SharedWindows> {
        let redis = self.redis.as_ref()?;
        if !entry.has_limits() || entry.check(req, now).is_err() {
            return None;
        }
        let (own, id) = (entry.limits(), entry.identity());
        let mut counters = Vec::with_capacity(own.len() + id.map_or(0, |(l, _)| l.len()));
        let mut starts = Vec::with_capacity(counters.capacity());
        for l in own {
            let start = l.window_start(now);
            counters.push((
                RedisLimiter::counter(CounterOf::Key(entry.key_id()), &l.name, l.window_ms, start),
                l.window_ms,
            ));
            starts.push(start);
        }
        if let Some((limits, cell)) = id {
            for l in limits {
                let start = l.window_start(now);
                counters.push((
                    RedisLimiter::counter(
                        CounterOf::Identity(&cell.id),
                        &l.name,
                        l.window_ms,
                        start,
                    ),
                    l.window_ms,
                ));
                starts.push(start);
            }
        }
        match redis.hit(&counters).await {
            Ok(counts) => Some(SharedWindows {
                counters,
                counts,
                starts,
            }),
            Err(e) => {
                self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis unreachable: rate limits enforced per node");
                None
            }
        }
    }

    /// Decides on `entry`. `last_lease`: answer without asking the store for more quota.
    pub(super) fn decide(
        &self,
        entry: Arc<Entry>,
        req: &Request<'_>,
        now: Timestamp,
        shared: Option<&SharedWindows>,
        last_lease: bool,
    ) -> Decision {
        if let Err(code) = entry.check(req, now) {
            return self.deny(entry, code, None, None, req, now);
        }
        // Rate limits counted in Redis: decided before any lock.
        let mut worst: Worst = None;
        if let Some(w) = shared {
            let own_limits = entry.limits();
            let id_limits = entry.identity_limits();
            let all = own_limits
                .iter()
                .map(|l| (l, false))
                .chain(id_limits.iter().map(|l| (l, true)));
            let mut own_i = 0u8;
            let mut id_i = 0u8;
            for ((l, is_id), (count, start)) in all.zip(w.counts.iter().zip(&w.starts)) {
                let index = if is_id { &mut id_i } else { &mut own_i };
                if *count > l.limit {
                    let e = Exhausted {
                        index: *index,
                        identity: is_id,
                    };
                    note_exhausted(&mut worst, e, Timestamp::from_millis(start + l.window_ms));
                }
                *index += 1;
            }
            if let Some((e, reset)) = worst {
                return self.deny(entry, Code::RateLimited, Some(reset), Some(e), req, now);
            }
        }
        let local = shared.is_none();
        let successor = entry.successor();
        let mut own = lock(&entry.state);
        if entry.is_moved() {
            if let Some(next) = Entry::forward(&own) {
                return Decision::Moved(next);
            }
        }
        if successor.is_none() && own.remaining().is_none() && !entry.has_identity_quota() {
            // The common key: no rate limit, no quota.
            if !entry.has_limits() {
                let dirty = self.count_valid(&mut own, req, now);
                drop(own);
                return self.valid(entry, dirty, None, LimitStates::new(now, 0, 0));
            }
            // Rate limits and no quota, counted on this node: the windows alone.
            if local {
                let mut states = LimitStates::new(now, 0, 0);
                let decided = self.decide_limits(&entry, &mut own, req, now, &mut states);
                drop(own);
                return match decided {
                    Ok(dirty) => self.valid(entry, dirty, None, states),
                    Err(Some((e, reset))) => {
                        self.deny(entry, Code::RateLimited, Some(reset), Some(e), req, now)
                    }
                    // An identity's window freed meanwhile (it ended): decide again, on the
                    // same entry (`Moved` to itself).
                    Err(None) => Decision::Moved(entry),
                };
            }
        }
        let own_limits = entry.limits();
        let id_limits = entry.identity_limits();
        // Lock order: the key, its successor (whose quota it draws from), its identity.
        // The entry that holds the successor's state now.
        let quota_entry = successor.map(|s| Entry::with_state(s, |_| ()).0);
        let mut q = quota_entry.as_ref().map(|e| lock(&e.state));
        if quota_entry.as_ref().is_some_and(|e| e.is_moved()) {
            // Replaced just now: decide again (`with_state` then finds the replacement).
            drop(q);
            drop(own);
            return Decision::Moved(entry);
        }
        // This node's windows: the key's under its lock, its identity's shared without one.
        let (own_slots, id_slots) = entry.slots();
        let id_slots = if local { id_slots } else { &[] };
        let mut states = LimitStates::new(now, own_limits.len(), id_limits.len());
        if local {
            note_own_exhausted(own_slots, now, &mut worst);
            if worst.is_some() {
                // Denied: the identity's exhausted windows too, to name the one that resets
                // last (otherwise they are checked as their slots are taken, below).
                note_identity_exhausted(id_slots, now, &mut worst);
            }
            if let Some((e, reset)) = worst {
                drop(q);
                drop(own);
                return self.deny(entry, Code::RateLimited, Some(reset), Some(e), req, now);
            }
        }
        // The quota: the successor's during a rotation's grace period, else the key's; then
        // its identity's. Both must cover the cost before either is spent.
        let m = match q.as_deref_mut() {
            Some(q) => q.more(),
            None => own.more(),
        };
        m.end_period(now);
        if m.remaining.is_some_and(|r| r < req.cost) {
            let may = may_lease(m, last_lease, now);
            drop(q);
            drop(own);
            if may {
                return Decision::NeedQuota(entry.quota_cell().clone());
            }
            return self.deny(entry, Code::UsageExceeded, None, None, req, now);
        }
        let shared_quota = entry.identity_quota();
        let mut iq = shared_quota.as_ref().map(|e| lock(&e.state));
        if shared_quota.as_ref().is_some_and(|e| e.is_moved()) {
            // Set anew just now: decide again (on the identity's new quota).
            drop(iq);
            drop(q);
            drop(own);
            return Decision::Moved(entry);
        }
        if let Some(im) = iq.as_deref_mut().map(LiveState::more) {
            im.end_period(now);
            if im.remaining.is_some_and(|r| r < req.cost) {
                let may = may_lease(im, last_lease, now);
                drop(iq);
                drop(q);
                drop(own);
                if let (true, Some(cell)) = (may, shared_quota) {
                    return Decision::NeedQuota(cell);
                }
                return self.deny(entry, Code::UsageExceeded, None, None, req, now);
            }
        }
        match take_identity_slots(id_slots, own_limits.len(), now, &mut states) {
            Ok(()) => {}
            Err(worst) => {
                drop(iq);
                drop(q);
                drop(own);
                return match worst {
                    Some((e, reset)) => {
                        self.deny(entry, Code::RateLimited, Some(reset), Some(e), req, now)
                    }
                    // Freed meanwhile (a window ended): decide again.
                    None => Decision::Moved(entry),
                };
            }
        };
        // Valid as far as quotas go: spend from both.
        let m = match q.as_deref_mut() {
            Some(q) => q.more(),
            None => own.more(),
        };
        if let Some(r) = m.remaining.as_mut() {
            *r -= req.cost;
        }
        let mut remaining = m.remaining.map(|l| l + m.pool);
        if let Some(left) = remaining {
            if m.low_below != NEVER && left < m.low_below && m.low_noticed != m.lease_until {
                // Once per refill period (per node; the store keeps one per period).
                m.low_noticed = m.lease_until;
                m.notices.push(Notice::QuotaLow {
                    remaining: left,
                    below: m.low_below,
                    period_end: Timestamp::from_millis(m.lease_until),
                    at: now,
                });
            }
        }
        let drawn = quota_entry.is_some() && m.remaining.is_some();
        if drawn {
            m.consumed += req.cost;
        }
        let mut identity_spent = false;
        if let Some(im) = iq.as_deref_mut().map(LiveState::more) {
            if let Some(r) = im.remaining.as_mut() {
                *r -= req.cost;
                im.consumed += req.cost;
                identity_spent = true;
                // What this key may still spend: the smaller of the two.
                let left = *r + im.pool;
                remaining = Some(remaining.map_or(left, |k| k.min(left)));
            }
        }
        drop(iq);
        if identity_spent {
            if let Some(e) = &shared_quota {
                self.mark_dirty(e);
            }
        }
        let noticed = match q.as_deref() {
            Some(q) => q.more.as_ref().is_some_and(|m| !m.notices.is_empty()),
            None => false,
        };
        // Valid: every limit takes its slot (the identity's are taken above).
        match shared {
            Some(w) => {
                let all = own_limits.iter().chain(id_limits);
                for (i, (l, count)) in all.zip(&w.counts).enumerate() {
                    states.set(i, l.limit - count);
                }
            }
            None => take_own_slots(own_slots, now, &mut states),
        }
        drop(q);
        if drawn || noticed {
            if let Some(qe) = &quota_entry {
                self.mark_dirty(qe);
            }
        }
        let spent = quota_entry.is_none() && own.remaining().is_some();
        if spent {
            own.more().consumed += req.cost;
        }
        let dirty = self.count_valid(&mut own, req, now);
        drop(own);
        self.valid(entry, dirty, remaining, states)
    }

    /// The decision for a key with rate limits (its own, its identity's) counted on this node
    /// and no quota: `decide` without the quota's steps (the most common limited key, kept
    /// lean: its cost is measured against a key without limits).
    fn decide_limits(
        &self,
        entry: &Entry,
        own: &mut LiveState,
        req: &Request<'_>,
        now: Timestamp,
        states: &mut LimitStates,
    ) -> Result<bool, Worst> {
        let (own_slots, id_slots) = entry.slots();
        *states = LimitStates::new(now, own_slots.len(), id_slots.len());
        // One pass: a slot of each of the key's windows (under its lock), given back when one
        // is exhausted, or when one of its identity's is.
        for (i, s) in own_slots.iter().enumerate() {
            let w = s.own_window(now);
            if w.count >= s.spec.limit {
                untake_own_slots(&own_slots[..i], now);
                let mut worst: Worst = None;
                note_own_exhausted(own_slots, now, &mut worst);
                note_identity_exhausted(id_slots, now, &mut worst);
                return Err(worst);
            }
            s.set_own(&w, w.count + 1);
            states.set(i, s.spec.limit - w.count - 1);
        }
        if let Err(worst) = take_identity_slots(id_slots, own_slots.len(), now, states) {
            untake_own_slots(own_slots, now);
            return Err(worst);
        }
        Ok(self.count_valid(own, req, now))
    }

    /// Counts a valid use (when counting is on); returns whether the entry has something for
    /// the flusher.
    fn count_valid(&self, own: &mut LiveState, req: &Request<'_>, now: Timestamp) -> bool {
        let counting = self.usage_counting.load(Ordering::Relaxed);
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
        counting || own.more.as_ref().is_some_and(|m| m.consumed != 0)
    }

    /// The valid answer (the key's state unlocked).
    fn valid(
        &self,
        entry: Arc<Entry>,
        dirty: bool,
        remaining: Option<i64>,
        limits: LimitStates,
    ) -> Decision {
        if dirty {
            self.mark_dirty(&entry);
        }
        Decision::Done(Outcome::Valid {
            entry,
            remaining,
            limits,
        })
    }

    fn deny(
        &self,
        entry: Arc<Entry>,
        code: Code,
        reset_at: Option<Timestamp>,
        limit: Option<Exhausted>,
        req: &Request<'_>,
        now: Timestamp,
    ) -> Decision {
        let counting = self.usage_counting.load(Ordering::Relaxed);
        // `key.rate_limited`: once per key, limit and window.
        let notice = match (limit, reset_at) {
            (Some(e), Some(reset)) => entry.limit_of(e).map(|l| (e, l.clone(), reset)),
            _ => None,
        };
        if counting || notice.is_some() {
            let mut s = lock(&entry.state);
            if entry.is_moved() {
                if let Some(next) = Entry::forward(&s) {
                    return Decision::Moved(next);
                }
            }
            if counting {
                s.record(code, req.ip, now);
            }
            if let Some((e, l, reset)) = notice {
                let m = s.more();
                let seen = (e.index, e.identity, reset.millis());
                if !m.noticed.contains(&seen) {
                    m.noticed.push(seen);
                    m.notices.push(Notice::RateLimited {
                        name: l.name,
                        limit: l.limit,
                        window_secs: l.window_ms / 1000,
                        identity: e.identity,
                        reset_at: reset,
                        at: now,
                    });
                }
            }
            drop(s);
            self.mark_dirty(&entry);
        }
        Decision::Done(Outcome::Denied {
            code,
            entry: Some(entry),
            reset_at,
            limit,
        })
    }
}

//! What changes with each verification of a key ([`LiveState`], under its entry's lock): the
//! valid uses of one minute inline, and what only some keys need boxed ([`More`]): the quota
//! lease, the other counts, source addresses, reactivations, notices. (The key's rate-limit
//! windows are its entry's own slots, changed under the same lock.)
//!
//! Invariants:
//! - The counts are those not yet taken by the flusher (`flush`): taking resets them, a failed
//!   write adds them back.
//! - The common key (no quota, valid uses within one minute between flushes; rate limits or
//!   not) has no box: 24 bytes inline. A flush gives back the box of a key that needs it no longer.
//! - Millisecond fields say "none" with [`NEVER`], not an `Option` (which would double them).
//! - `More::remaining` is `None` for a key without quota, else this node's lease (`lease`);
//!   `More::quota_gen` tells leases of a quota set anew from older ones.
//! - At most [`SOURCES_PER_FLUSH`] distinct addresses are kept between two flushes; the
//!   verifications from the others still count.
//! - A source address is written at the first flush after it is first seen here, then with
//!   its accumulated count at most once every [`SOURCE_WRITE_MS`] (and at shutdown): an address
//!   is news once, its count is not worth a write every second. Until written, a seen address
//!   keeps its key in the flusher's queue.
//! - Once `More::forward` is set (the state was handed to a newer entry of the key), this state
//!   holds nothing but that pointer: the newer entry's state is the key's.

use std::net::IpAddr;
use std::sync::Arc;

use keyward_core::time::Timestamp;
use keyward_core::verify::Code;

use super::Entry;

/// Distinct source addresses remembered per key between two flushes (the rest still count).
const SOURCES_PER_FLUSH: usize = 64;
/// How often a known source address's count and last sighting are written, at most.
pub(super) const SOURCE_WRITE_MS: i64 = 60_000;

/// A source address seen since it was last written.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) ip: IpAddr,
    pub(super) first: Timestamp,
    pub(super) last: Timestamp,
    /// Verifications from it not yet written.
    pub(super) count: i64,
    /// Written at least once by this entry (so not news any more).
    pub(super) written: bool,
}
/// "None" for the millisecond fields of [`LiveState`] (an `Option` would double their size).
pub(super) const NEVER: i64 = i64::MIN;

/// What changes with each verification of a key: 24 bytes inline for the common key (no rate
/// limit, no quota, valid uses within one minute between flushes), the rest boxed.
pub(super) struct LiveState {
    /// Valid verifications in minute `minute` (minutes since the epoch) since the last flush.
    /// A minute holds at most 60 s of one core's verifications, far below `u32::MAX`.
    pub(super) minute: u32,
    pub(super) valid: u32,
    /// The last valid use this node knows of (ms, for `last_used_at` and
    /// `dormant_reactivated`), or [`NEVER`]. What a flush writes as `last_used_at` when valid
    /// uses were counted since the last one.
    pub(super) previous_use: i64,
    pub(super) more: Option<Box<More>>,
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

/// What only some keys need: a quota lease, denials, addresses, notices.
pub(super) struct More {
    /// The part of the quota this node holds (its lease) and may grant without asking the
    /// store; `None` for a key without quota.
    pub(super) remaining: Option<i64>,
    /// The unleased quota as of this node's last lease (for reporting `remaining`).
    pub(super) pool: i64,
    /// When this node last asked the store for quota.
    pub(super) last_lease: Option<Timestamp>,
    /// For a quota with a refill: when the period of this node's lease ends (ms; its units may
    /// not be spent from then on), or [`NEVER`].
    pub(super) lease_until: i64,
    pub(super) consumed: i64,
    /// Verifications by (minute start ms, code) since the last flush, other than those counted
    /// inline.
    pub(super) buckets: Vec<(i64, Code, i64)>,
    /// Source addresses seen (see [`Seen`]).
    pub(super) sources: Vec<Seen>,
    /// When the sources were last written (milliseconds; 0: never).
    pub(super) sources_written: i64,
    /// In the verifier's list of source counts to write when due (`Verifier::later`).
    pub(super) sources_waiting: bool,
    /// Valid uses after a long silence since the last flush: (previous use, this use).
    pub(super) reactivations: Vec<(Timestamp, Timestamp)>,
    /// Set once the entry's state was handed over: the entry that holds it now.
    pub(super) forward: Option<Arc<Entry>>,
    /// Bumped whenever the quota is set anew (which voids every lease in the store): a lease
    /// granted, or given back in vain, under an older generation is dropped, not added.
    pub(super) quota_gen: u32,
    /// Bumped by every lease this node made for the cell (granted or not): a verification that
    /// waited for another's lease sees it and decides again instead of leasing too.
    pub(super) leases: u32,
    /// Threshold notices found since the last flush (`key.rate_limited`, `key.quota_low`).
    pub(super) notices: Vec<Notice>,
    /// Rate-limit windows noticed here: (limit index, identity's, window end ms). One notice
    /// per key, limit and window (the store deduplicates across nodes).
    pub(super) noticed: Vec<(u8, bool, i64)>,
    /// A refilling quota whose keyspace asks for `key.quota_low`: what is left is low below
    /// this; [`NEVER`] otherwise.
    pub(super) low_below: i64,
    /// The period (its end, as `lease_until`) whose low quota was noticed here.
    pub(super) low_noticed: i64,
}

/// A threshold crossed on the verification path, for the flusher to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `RATE_LIMITED` by this limit in the window that ends at `reset_at`.
    RateLimited {
        name: Box<str>,
        limit: i64,
        window_secs: i64,
        identity: bool,
        reset_at: Timestamp,
        at: Timestamp,
    },
    /// What is left of a refilling quota fell below `below` in the period ending `period_end`.
    QuotaLow {
        remaining: i64,
        below: i64,
        period_end: Timestamp,
        at: Timestamp,
    },
}

impl Default for More {
    fn default() -> Self {
        More {
            remaining: None,
            pool: 0,
            last_lease: None,
            lease_until: NEVER,
            consumed: 0,
            buckets: Vec::new(),
            sources: Vec::new(),
            sources_written: 0,
            sources_waiting: false,
            reactivations: Vec::new(),
            forward: None,
            quota_gen: 0,
            leases: 0,
            notices: Vec::new(),
            noticed: Vec::new(),
            low_below: NEVER,
            low_noticed: NEVER,
        }
    }
}

impl More {
    /// The lease is of a refill period that ended: it may not be spent, and what was spent from
    /// it is the old period's (the first lease of the new period refills the quota and voids
    /// the old leases). Returns whether it was voided.
    pub(super) fn end_period(&mut self, now: Timestamp) -> bool {
        if self.lease_until == NEVER || now.millis() < self.lease_until {
            return false;
        }
        if self.remaining.is_some() {
            self.remaining = Some(0);
            self.consumed = 0;
            self.last_lease = None;
        }
        self.lease_until = NEVER;
        true
    }
}

impl LiveState {
    pub(super) fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    pub(super) fn remaining(&self) -> Option<i64> {
        self.more.as_ref().and_then(|m| m.remaining)
    }

    pub(super) fn record(&mut self, code: Code, ip: Option<IpAddr>, now: Timestamp) {
        self.add(now.millis().div_euclid(60_000) * 60_000, code, 1);
        if let Some(ip) = ip {
            let sources = &mut self.more().sources;
            let full = sources.len() >= SOURCES_PER_FLUSH;
            match sources.iter_mut().find(|s| s.ip == ip) {
                Some(s) => {
                    s.last = s.last.max(now);
                    s.count += 1;
                }
                None if !full => sources.push(Seen {
                    ip,
                    first: now,
                    last: now,
                    count: 1,
                    written: false,
                }),
                None => {}
            }
        }
    }

    /// Adds `n` verifications with `code` in the minute starting at `minute_ms`.
    pub(super) fn add(&mut self, minute_ms: i64, code: Code, n: i64) {
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
    pub(super) fn pending(&self) -> bool {
        self.valid != 0
            || self.more.as_ref().is_some_and(|m| {
                m.consumed != 0
                    || !m.notices.is_empty()
                    || !m.buckets.is_empty()
                    || m.sources.iter().any(|s| s.count != 0)
                    || !m.reactivations.is_empty()
            })
    }
}

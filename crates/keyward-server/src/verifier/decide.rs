//! The decision on one request for one entry: the rules that need no live state, then the rate
//! limit (this node's window, or the cluster-wide one counted in Redis) and the quota, and the
//! counts the verification leaves for the flusher.
//!
//! Invariants:
//! - Deciding never waits: what memory cannot answer is handed back to the caller
//!   ([`Decision::NeedQuota`]: lease, then decide again; [`Decision::Moved`]: decide again on
//!   the entry that holds the key's state now).
//! - Lock order: a rotated key's state, then its successor's (a successor never locks back).
//! - Only a valid answer spends quota or takes a rate-limit slot: a slot taken in Redis for a
//!   verification that ends `USAGE_EXCEEDED` is given back (`Verifier::verify_slow`).
//! - Quota is always counted; usage (counts, sources, reactivations) only while counting is on.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyward_core::time::Timestamp;
use keyward_core::verify::{check_and_consume, Code, RateState, Window};

use super::lease::LEASE_RETRY_MS;
use super::live::{More, NEVER};
use super::{lock, Entry, Verifier};

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
    /// The local lease cannot cover the cost; lease more from the store and decide again.
    NeedQuota,
    /// The entry's live state went to this newer entry; decide again on that one. (Each
    /// hand-over needs a store read, so following the pointers always catches up.)
    Moved(Arc<Entry>),
}

/// A rate-limit window counted in Redis: `count` includes this verification.
#[derive(Clone, Copy, Debug)]
pub(super) struct SharedWindow {
    limit: i64,
    count: i64,
    pub(super) start: i64,
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

impl Verifier {
    /// Checks the rate limit in Redis (cluster-wide) when configured; `None` means decide with
    /// this node's own window (no Redis, no rate limit, or Redis unreachable).
    pub(super) async fn shared_window(
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
    pub(super) fn decide(
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
}

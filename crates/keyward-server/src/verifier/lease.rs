//! Quota leases: a node grants quota from the part the store leased to it (`More::remaining`),
//! without a store call per verification, and gives back what sits unspent so that other nodes
//! can grant it.
//!
//! Invariants:
//! - A lease is about a sixteenth of what the store has left (at least the cost): nodes share a
//!   quota finely near its end. `More::pool` is the unleased quota as of this node's last
//!   lease; the `remaining` a verification reports is lease plus pool.
//! - Setting a quota anew voids every lease in the store and bumps `More::quota_gen`: a grant,
//!   or a give-back that failed, begun under an older generation is dropped, not added.
//! - A grant goes into the entry that holds the key's state now (`Entry::with_state`). The
//!   lease list holds each entry at most once (`Entry::leased`); a moved entry handed its lease
//!   to the newer one, which is in the list.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyward_core::time::Timestamp;
use keyward_store::StoreError;

use super::live::NEVER;
use super::{lock, Entry, Verifier};

/// How soon a node that found the store's quota empty asks again (other nodes may have given
/// back what they did not spend).
pub(super) const LEASE_RETRY_MS: i64 = 500;
/// A lease held this long without being spent from is given back at the next flush.
const LEASE_IDLE_MS: i64 = 2000;

impl Verifier {
    pub(super) fn track_lease(&self, entry: &Arc<Entry>) {
        if !entry.leased.load(Ordering::Acquire) && !entry.leased.swap(true, Ordering::AcqRel) {
            lock(&self.leased).push(entry.clone());
        }
    }

    /// Leases more quota for a key from the store: about a sixteenth of what is left (at least
    /// the cost), so that nodes share a quota finely near its end.
    pub(super) async fn lease(
        &self,
        cell: &Arc<Entry>,
        cost: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
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
            m.leases = m.leases.wrapping_add(1);
            match got {
                Some(lease) => {
                    let until = lease.until.map_or(NEVER, Timestamp::millis);
                    if until != m.lease_until {
                        if until != NEVER && m.lease_until != NEVER && until < m.lease_until {
                            // A grant of an earlier period that arrived after one of a later
                            // period: the refill voided it in the store.
                            return;
                        }
                        // A grant of another refill period: what this node holds or spent of
                        // the last one is not this period's (the store voided those leases).
                        m.remaining = Some(0);
                        m.consumed = 0;
                        m.lease_until = until;
                    }
                    m.remaining = Some(m.remaining.unwrap_or(0) + lease.granted);
                    m.pool = lease.left;
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
    pub(crate) async fn return_leases(&self, now: Timestamp, all: bool) -> Result<(), StoreError> {
        let cells = lock(&self.leased).clone();
        for cell in cells {
            let (amount, gen, until) = {
                let mut s = lock(&cell.state);
                // A moved entry handed its lease to the newer one, which is in the list.
                let m = s.more.as_deref_mut().filter(|_| !cell.is_moved());
                match m {
                    Some(m) => {
                        let idle = m
                            .last_lease
                            .is_none_or(|t| now.millis() - t.millis() >= LEASE_IDLE_MS)
                            && m.consumed == 0;
                        let until =
                            (m.lease_until != NEVER).then(|| Timestamp::from_millis(m.lease_until));
                        // A lease of a refill period that is over is void (nothing to give).
                        m.end_period(now);
                        match m.remaining {
                            Some(l) if l > 0 && (all || idle) => {
                                m.remaining = Some(0);
                                m.pool += l;
                                (l, m.quota_gen, until)
                            }
                            _ => (0, m.quota_gen, until),
                        }
                    }
                    None => (0, 0, None),
                }
            };
            if amount > 0 {
                if let Err(e) = self.store.return_lease(cell.key_id(), amount, until).await {
                    // Still this node's:
                    let until_ms = until.map_or(NEVER, Timestamp::millis);
                    let (cell, ()) = Entry::with_state(&cell, |s| {
                        let m = s.more();
                        // Unless the quota was set anew, or a new refill period began, meanwhile.
                        if m.quota_gen == gen && m.lease_until == until_ms {
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
}

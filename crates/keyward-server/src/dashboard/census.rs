//! The overview's counts: every visible keyspace's keys by status and by finding, counted by the
//! database ([`crate::service::key_census`]) rather than read into memory, and the first keys of
//! the two flagged lists.
//!
//! A census costs one pass over the keys: a few milliseconds for thousands of keys, about a
//! second for a million. One of [`KEPT_FROM_KEYS`] keys or more that took [`FRESH_BELOW`] or
//! longer is kept per scope (the set of keyspaces a viewer sees) and shown for up to
//! [`MAX_AGE_MS`], the page saying as of when; an older one is shown while a new one is taken in
//! the background, so no view waits for a pass over many keys but the first. Any other census
//! is taken at every view.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::model::Keyspace;
use keyward_core::time::Timestamp;

use crate::authz::{Ctx, ReadKeys};
use crate::census::{Census, Slot};
use crate::state::AppState;

/// A census that took less than this is taken again at every view: half the overview's
/// 100 ms target, so no view but a scope's first waits longer for its counts.
const FRESH_BELOW: Duration = Duration::from_millis(50);
/// A census of fewer keys is taken again at every view, however long it took (a busy machine,
/// not the size, made it slow): small deployments see every change at once.
const KEPT_FROM_KEYS: i64 = 10_000;

/// Whether `census` is kept for later views (see the module docs).
fn worth_keeping(census: &Census) -> bool {
    let t = census.total();
    census.took >= FRESH_BELOW
        && t.active + t.rotating + t.disabled + t.expired + t.revoked >= KEPT_FROM_KEYS
}
/// How old a kept census may be before a view starts a new one.
const MAX_AGE_MS: i64 = 60_000;
/// Keys shown in each flagged list.
const LISTED: i64 = 10;
/// Scopes kept at most (each a few hundred bytes a keyspace).
const SCOPES_KEPT: usize = 64;

/// Counts keyspaces `kss` at `now` for context `ctx` (one query per keyspace and list).
async fn take(
    st: &AppState,
    ctx: &Ctx,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<Census, crate::error::Error> {
    let started = Instant::now();
    let who = ctx.allow::<ReadKeys>()?;
    let mut per_keyspace = HashMap::new();
    let (mut expiring, mut inactive) = (Vec::new(), Vec::new());
    for ks in kss {
        let rules = crate::reports::census_rules(ks, now);
        let (census, soon, idle) =
            crate::service::key_census(st.records(), &who, &rules, now, LISTED).await?;
        per_keyspace.insert(ks.id.clone(), census);
        expiring.extend(soon);
        inactive.extend(idle);
    }
    expiring.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
    expiring.truncate(LISTED as usize);
    inactive.sort_by(|a, b| {
        a.last_used_at
            .unwrap_or(a.created_at)
            .cmp(&b.last_used_at.unwrap_or(b.created_at))
            .then(a.id.cmp(&b.id))
    });
    inactive.truncate(LISTED as usize);
    Ok(Census {
        per_keyspace,
        expiring,
        inactive,
        at: now,
        took: started.elapsed(),
    })
}

/// The census of keyspaces `kss` (what a viewer sees) for a view at `now`: taken now, or kept
/// (see the module docs).
pub(crate) async fn census(
    st: &AppState,
    ctx: &Ctx,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<Arc<Census>, crate::error::Error> {
    let mut scope: Vec<String> = kss.iter().map(|k| k.id.clone()).collect();
    scope.sort();
    let kept = {
        let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(&scope) {
            Some(slot) if worth_keeping(&slot.census) => {
                let stale = now.millis() - slot.census.at.millis() >= MAX_AGE_MS;
                let refresh = stale && !slot.refreshing;
                slot.refreshing |= refresh;
                Some((slot.census.clone(), refresh))
            }
            _ => None,
        }
    };
    if let Some((census, refresh)) = kept {
        if refresh {
            let (st, ctx, kss, scope) = (st.clone(), ctx.clone(), kss.to_vec(), scope.clone());
            tokio::spawn(async move {
                let now = st.clock().now();
                let taken = take(&st, &ctx, &kss, now).await;
                if let Err(e) = &taken {
                    tracing::warn!(error = %e.message, "the overview's counts could not be taken again");
                }
                keep(&st, scope, taken.ok().map(Arc::new));
            });
        }
        return Ok(census);
    }
    let census = take(st, ctx, kss, now).await?;
    let census = Arc::new(census);
    if worth_keeping(&census) {
        keep(st, scope, Some(census.clone()));
    }
    Ok(census)
}

/// Keeps `census` for `scope` (none: the refresh failed; the old one stays, to be retried).
fn keep(st: &AppState, scope: Vec<String>, census: Option<Arc<Census>>) {
    let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    match census {
        Some(c) => {
            if slots.len() >= SCOPES_KEPT && !slots.contains_key(&scope) {
                slots.clear();
            }
            slots.insert(
                scope,
                Slot {
                    census: c,
                    refreshing: false,
                },
            );
        }
        None => {
            if let Some(slot) = slots.get_mut(&scope) {
                slot.refreshing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::KeyCensus;

    fn census(took_ms: u64, counts: &[(&str, i64, i64)]) -> Census {
        Census {
            per_keyspace: counts
                .iter()
                .map(|(ks, active, revoked)| {
                    let c = KeyCensus {
                        active: *active,
                        revoked: *revoked,
                        ..KeyCensus::default()
                    };
                    (ks.to_string(), c)
                })
                .collect(),
            expiring: Vec::new(),
            inactive: Vec::new(),
            at: Timestamp::from_millis(0),
            took: Duration::from_millis(took_ms),
        }
    }

    #[test]
    fn a_census_is_kept_when_it_was_slow_because_of_many_keys() {
        assert!(worth_keeping(&census(50, &[("ks_a", 9_000, 1_000)])));
        assert!(worth_keeping(&census(
            180,
            &[("ks_a", 6_000, 0), ("ks_b", 4_000, 0)]
        )));
        assert!(
            !worth_keeping(&census(49, &[("ks_a", 1_000_000, 0)])),
            "cheap"
        );
        assert!(
            !worth_keeping(&census(400, &[("ks_a", 7, 0)])),
            "slow, but few keys: a busy machine"
        );
        assert!(!worth_keeping(&census(400, &[("ks_a", 5_000, 4_999)])));
    }
}

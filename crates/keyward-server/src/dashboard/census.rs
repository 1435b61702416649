//! The overview's counts: every visible keyspace's keys by status and by finding, counted by the
//! database ([`crate::service::key_census`]) rather than read into memory, and the first keys of
//! the two flagged lists.
//!
//! A count costs one pass over a keyspace's keys: a few milliseconds for thousands of keys,
//! about a second for a million. Counts are kept per keyspace. A view's counts that took
//! [`FRESH_BELOW`] or longer over [`Config::overview_kept_from`](crate::Config) keys or more
//! (10,000 by default) are kept, and so is one keyspace's count that does so alone; a kept count
//! is shown for up to [`MAX_AGE_MS`], the page saying as of when, and an older one is shown while
//! a new one is taken in the background. Each node counts every keyspace once when it starts
//! ([`warm`]), so that no view waits for a pass over many keys, not even the first after a
//! start; a view that comes while a keyspace is being counted waits for that count instead of
//! taking a second one. Any other count is taken at every view, so small deployments see every
//! change at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::model::{Actor, Keyspace};
use keyward_core::time::Timestamp;

use crate::authz::{Allowed, Ctx, ReadKeys};
use crate::census::{Census, Part};
use crate::state::AppState;

/// Counts that took less than this are taken again at every view: half the overview's
/// 100 ms target, so no view waits longer for its counts but one that finds nothing kept.
const FRESH_BELOW: Duration = Duration::from_millis(50);
/// How old kept counts may be before a view starts new ones.
const MAX_AGE_MS: i64 = 60_000;
/// Keys shown in each flagged list.
const LISTED: i64 = 10;

/// Whether `parts`, counted together, are kept for later views (see the module docs);
/// `kept_from` is [`crate::Config::overview_kept_from`] (0: every count is kept).
fn worth_keeping(parts: &[(String, Arc<Part>)], kept_from: u64) -> bool {
    let took: Duration = parts.iter().map(|(_, p)| p.took).sum();
    let keys: i64 = parts
        .iter()
        .map(|(_, p)| {
            let c = &p.census;
            c.active + c.rotating + c.disabled + c.expired + c.revoked
        })
        .sum();
    kept_from == 0 || (took >= FRESH_BELOW && keys >= kept_from as i64)
}

/// Counts keyspace `ks` at `now` (one query for the counts and one per flagged list).
async fn take(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    ks: &Keyspace,
    now: Timestamp,
) -> Result<Part, crate::error::Error> {
    let started = Instant::now();
    let rules = crate::reports::census_rules(ks, now);
    let (census, expiring, inactive) =
        crate::service::key_census(st.records(), who, &rules, now, LISTED).await?;
    Ok(Part {
        census,
        expiring,
        inactive,
        at: now,
        took: started.elapsed(),
    })
}

/// The view of `parts` as one census: counts by keyspace, the flagged lists merged, as of the
/// oldest part (`now` when there is none).
fn merge(parts: &[(String, Arc<Part>)], now: Timestamp) -> Census {
    let (mut expiring, mut inactive) = (Vec::new(), Vec::new());
    for (_, p) in parts {
        expiring.extend(p.expiring.iter().cloned());
        inactive.extend(p.inactive.iter().cloned());
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
    Census {
        per_keyspace: parts
            .iter()
            .map(|(id, p)| (id.clone(), p.census.clone()))
            .collect(),
        expiring,
        inactive,
        at: parts.iter().map(|(_, p)| p.at).min().unwrap_or(now),
    }
}

/// What this node keeps of keyspace `id`: its counts, if kept, or else the gate to hold while
/// counting it. Kept counts `MAX_AGE_MS` old at `now` are taken again in the background
/// (`refresh` says so, once).
enum Kept {
    Counts { part: Arc<Part>, refresh: bool },
    Missing(Arc<tokio::sync::Mutex<()>>),
}

fn kept(st: &AppState, id: &str, now: Timestamp) -> Kept {
    let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    let slot = slots.entry(id.to_string()).or_default();
    match &slot.part {
        Some(part) => {
            let stale = now.millis() - part.at.millis() >= MAX_AGE_MS;
            let refresh = stale && !slot.refreshing;
            slot.refreshing |= refresh;
            Kept::Counts {
                part: part.clone(),
                refresh,
            }
        }
        None => Kept::Missing(slot.gate.clone()),
    }
}

/// The kept counts of keyspace `id`, if any.
fn kept_part(st: &AppState, id: &str) -> Option<Arc<Part>> {
    let slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    slots.get(id).and_then(|s| s.part.clone())
}

/// Keeps `part` for keyspace `id` (none: a refresh failed; the old counts stay, to be taken
/// again at a later view).
fn keep(st: &AppState, id: &str, part: Option<Arc<Part>>) {
    let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    let slot = slots.entry(id.to_string()).or_default();
    slot.refreshing = false;
    if part.is_some() {
        slot.part = part;
    }
}

/// The context the node counts with when no viewer waits (at start, in the background).
fn node_ctx() -> Ctx {
    Ctx::operator(Actor::system())
}

/// Counts keyspace `ks` again in the background and keeps the result.
fn refresh(st: &AppState, ks: &Keyspace) {
    let (st, ks) = (st.clone(), ks.clone());
    tokio::spawn(async move {
        let ctx = node_ctx();
        let taken = match ctx.allow::<ReadKeys>() {
            Ok(who) => take(&st, &who, &ks, st.clock().now()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &taken {
            tracing::warn!(error = %e.message, keyspace = %ks.id, "the overview's counts could not be taken again");
        }
        keep(&st, &ks.id, taken.ok().map(Arc::new));
    });
}

/// The counts of `kss` at `now`: kept ones where kept, the others taken now (waiting for a
/// count of the same keyspace under way), and which of those were taken.
async fn gather(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<(Vec<(String, Arc<Part>)>, Vec<(String, Arc<Part>)>), crate::error::Error> {
    let kept_from = st.config.overview_kept_from;
    let (mut parts, mut fresh) = (Vec::new(), Vec::new());
    for ks in kss {
        let gate = match kept(st, &ks.id, now) {
            Kept::Counts { part, refresh: r } => {
                if r {
                    refresh(st, ks);
                }
                parts.push((ks.id.clone(), part));
                continue;
            }
            Kept::Missing(gate) => gate,
        };
        let _counting = gate.lock().await;
        if let Some(part) = kept_part(st, &ks.id) {
            parts.push((ks.id.clone(), part));
            continue;
        }
        let part = (ks.id.clone(), Arc::new(take(st, who, ks, now).await?));
        if worth_keeping(std::slice::from_ref(&part), kept_from) {
            keep(st, &part.0, Some(part.1.clone()));
        } else {
            fresh.push(part.clone());
        }
        parts.push(part);
    }
    Ok((parts, fresh))
}

/// Keeps the counts in `fresh` when, together, they are worth keeping (many keyspaces of a
/// few thousand keys each).
fn keep_together(st: &AppState, fresh: &[(String, Arc<Part>)]) {
    if worth_keeping(fresh, st.config.overview_kept_from) {
        for (id, part) in fresh {
            keep(st, id, Some(part.clone()));
        }
    }
}

/// The census of keyspaces `kss` (what a viewer sees) for a view at `now`: taken now, or kept
/// (see the module docs).
pub(crate) async fn census(
    st: &AppState,
    ctx: &Ctx,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<Census, crate::error::Error> {
    let who = ctx.allow::<ReadKeys>()?;
    let (parts, fresh) = gather(st, &who, kss, now).await?;
    keep_together(st, &fresh);
    Ok(merge(&parts, now))
}

/// Counts every keyspace the dashboard shows once, as this node starts, and keeps what is
/// worth keeping; then tells [`crate::AppState::overview_counted`]. Started by `serve`.
pub(crate) async fn warm(st: AppState) {
    let ctx = node_ctx();
    let now = st.clock().now();
    let counted = async {
        let who = ctx.allow::<ReadKeys>().map_err(|e| e.message)?;
        let kss = crate::service::list_keyspaces(st.records(), &who, &super::data::KEYSPACES_SHOWN)
            .await
            .map_err(|e| e.message)?;
        let (_, fresh) = gather(&st, &who, &kss, now).await.map_err(|e| e.message)?;
        keep_together(&st, &fresh);
        Ok::<_, String>(())
    };
    if let Err(e) = counted.await {
        tracing::warn!(error = %e, "the overview's counts could not be taken at start");
    }
    let kept = {
        let slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().filter(|s| s.part.is_some()).count()
    };
    st.census.warmed.send_replace(Some(kept));
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::KeyCensus;

    /// Keyspaces counted together in `took_ms`: `(id, active, revoked)` each.
    fn parts(took_ms: u64, counts: &[(&str, i64, i64)]) -> Vec<(String, Arc<Part>)> {
        let each = Duration::from_millis(took_ms) / counts.len() as u32;
        counts
            .iter()
            .map(|(ks, active, revoked)| {
                let census = KeyCensus {
                    active: *active,
                    revoked: *revoked,
                    ..KeyCensus::default()
                };
                let part = Part {
                    census,
                    expiring: Vec::new(),
                    inactive: Vec::new(),
                    at: Timestamp::from_millis(0),
                    took: each,
                };
                (ks.to_string(), Arc::new(part))
            })
            .collect()
    }

    #[test]
    fn counts_are_kept_when_they_were_slow_because_of_many_keys() {
        let keep = |p: &[(String, Arc<Part>)]| worth_keeping(p, 10_000);
        assert!(keep(&parts(50, &[("ks_a", 9_000, 1_000)])));
        assert!(keep(&parts(180, &[("ks_a", 6_000, 0), ("ks_b", 4_000, 0)])));
        assert!(!keep(&parts(49, &[("ks_a", 1_000_000, 0)])), "cheap");
        assert!(
            !keep(&parts(400, &[("ks_a", 7, 0)])),
            "slow, but few keys: a busy machine"
        );
        assert!(!keep(&parts(400, &[("ks_a", 5_000, 4_999)])));
        assert!(
            worth_keeping(&parts(0, &[("ks_a", 7, 0)]), 0),
            "0 keeps every count"
        );
    }
}

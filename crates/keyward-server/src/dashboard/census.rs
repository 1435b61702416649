//! The overview's counts: every visible keyspace's keys by status and by finding, counted by the
//! database ([`crate::service::key_census`]) rather than read into memory, and the first keys of
//! the two flagged lists.
//!
//! A count costs one pass over a keyspace's keys: a few milliseconds for thousands of keys,
//! about two seconds for a million. The node holds the latest count of each keyspace. A view
//! shows the held counts of its keyspaces when, together, they took [`FRESH_BELOW`] or longer
//! over [`Config::overview_kept_from`](crate::Config) keys or more (10,000 by default), the page
//! saying as of when; counts a minute old are shown once more while they are taken again in the
//! background. Otherwise the view counts, so small deployments see every change at once.
//!
//! Each node counts every keyspace the dashboard shows as it starts ([`warm`]), so that the first
//! view after a start does not wait for a pass over many keys. A view that needs a keyspace
//! counted while a count of it is under way waits for that count and shows it when it is worth
//! keeping, instead of taking a second pass; keyspaces whose last count was cheap are counted by
//! each view at once, without waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::model::{Actor, Keyspace};
use keyward_core::time::Timestamp;

use crate::authz::{Allowed, Ctx, ReadKeys};
use crate::census::{Census, Part};
use crate::state::AppState;

/// Counts that took less than this are taken again at every view: half the overview's
/// 100 ms target, so no view waits longer for its counts but one that finds nothing held.
const FRESH_BELOW: Duration = Duration::from_millis(50);
/// How old held counts may be before a view starts new ones.
const MAX_AGE_MS: i64 = 60_000;
/// Keys shown in each flagged list.
const LISTED: i64 = 10;

/// Whether `parts`, counted together, are worth keeping for later views (see the module docs);
/// `kept_from` is [`crate::Config::overview_kept_from`] (0: every count is).
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
        taken: Instant::now(),
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

/// Stores `part` as keyspace `id`'s latest counts, unless later ones are there already.
fn store(st: &AppState, id: &str, part: &Arc<Part>) {
    let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    let slot = slots.entry(id.to_string()).or_default();
    if slot
        .part
        .as_ref()
        .is_none_or(|held| held.taken <= part.taken)
    {
        slot.part = Some(part.clone());
    }
}

/// The context the node counts with when no viewer waits (at start, in the background).
fn node_ctx() -> Ctx {
    Ctx::operator(Actor::system())
}

/// Counts keyspace `ks` again in the background.
fn refresh(st: &AppState, ks: &Keyspace) {
    let (st, ks) = (st.clone(), ks.clone());
    tokio::spawn(async move {
        let ctx = node_ctx();
        let taken = match ctx.allow::<ReadKeys>() {
            Ok(who) => take(&st, &who, &ks, st.clock().now()).await,
            Err(e) => Err(e),
        };
        match taken {
            Ok(part) => store(&st, &ks.id, &Arc::new(part)),
            Err(e) => {
                tracing::warn!(error = %e.message, keyspace = %ks.id, "the overview's counts could not be taken again");
            }
        }
        let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(&ks.id) {
            slot.refreshing = false;
        }
    });
}

/// What a view of `kss` at `now` shows of the counts held: each keyspace's, when together they
/// are worth keeping (starting a refresh of those a minute old), or none.
fn held(st: &AppState, kss: &[Keyspace], now: Timestamp) -> Vec<Option<Arc<Part>>> {
    let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
    let parts: Vec<Option<Arc<Part>>> = kss
        .iter()
        .map(|ks| slots.get(&ks.id).and_then(|s| s.part.clone()))
        .collect();
    let present: Vec<(String, Arc<Part>)> = kss
        .iter()
        .zip(&parts)
        .filter_map(|(ks, p)| Some((ks.id.clone(), p.clone()?)))
        .collect();
    if present.is_empty() || !worth_keeping(&present, st.config.overview_kept_from) {
        return vec![None; kss.len()];
    }
    let mut stale = Vec::new();
    for (ks, part) in kss.iter().zip(&parts) {
        let (Some(part), Some(slot)) = (part, slots.get_mut(&ks.id)) else {
            continue;
        };
        if now.millis() - part.at.millis() >= MAX_AGE_MS && !slot.refreshing {
            slot.refreshing = true;
            stale.push(ks);
        }
    }
    drop(slots);
    for ks in stale {
        refresh(st, ks);
    }
    parts
}

/// Counts keyspace `ks` for a view at `now`. When a count of it may be costly (none taken yet,
/// or the last one was worth keeping alone), under its gate: a count ended while this view
/// waited is shown if it is worth keeping, rather than taken again.
async fn count(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    ks: &Keyspace,
    now: Timestamp,
) -> Result<Arc<Part>, crate::error::Error> {
    let kept_from = st.config.overview_kept_from;
    let alone = |part: &Arc<Part>| worth_keeping(&[(ks.id.clone(), part.clone())], kept_from);
    let (latest, gate) = {
        let mut slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(ks.id.clone()).or_default();
        (slot.part.clone(), slot.gate.clone())
    };
    let _counting = match &latest {
        Some(part) if !alone(part) => None,
        _ => {
            let waited_from = Instant::now();
            let held = gate.lock_owned().await;
            let latest = {
                let slots = st.census.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots.get(&ks.id).and_then(|s| s.part.clone())
            };
            if let Some(part) = latest.filter(|p| p.taken >= waited_from && alone(p)) {
                return Ok(part);
            }
            Some(held)
        }
    };
    let part = Arc::new(take(st, who, ks, now).await?);
    store(st, &ks.id, &part);
    Ok(part)
}

/// The counts of `kss` for a view at `now`: held ones, or else counted (see the module docs).
async fn gather(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<Vec<(String, Arc<Part>)>, crate::error::Error> {
    let mut parts = Vec::with_capacity(kss.len());
    for (ks, part) in kss.iter().zip(held(st, kss, now)) {
        let part = match part {
            Some(part) => part,
            None => count(st, who, ks, now).await?,
        };
        parts.push((ks.id.clone(), part));
    }
    Ok(parts)
}

/// The census of keyspaces `kss` (what a viewer sees) for a view at `now`: held counts, or
/// counts taken now (see the module docs).
pub(crate) async fn census(
    st: &AppState,
    ctx: &Ctx,
    kss: &[Keyspace],
    now: Timestamp,
) -> Result<Census, crate::error::Error> {
    let who = ctx.allow::<ReadKeys>()?;
    let parts = gather(st, &who, kss, now).await?;
    Ok(merge(&parts, now))
}

/// Counts every keyspace the dashboard shows once, as this node starts; then tells
/// [`crate::AppState::overview_counted`] how many keyspaces' counts are worth keeping (all of
/// them when together they are, else those that are alone). Started by `serve`.
pub(crate) async fn warm(st: AppState) {
    let ctx = node_ctx();
    let now = st.clock().now();
    let kept_from = st.config.overview_kept_from;
    let counted = async {
        let who = ctx.allow::<ReadKeys>().map_err(|e| e.message)?;
        let kss = crate::service::list_keyspaces(st.records(), &who, &super::data::KEYSPACES_SHOWN)
            .await
            .map_err(|e| e.message)?;
        gather(&st, &who, &kss, now).await.map_err(|e| e.message)
    };
    let kept = match counted.await {
        Ok(parts) if worth_keeping(&parts, kept_from) => parts.len(),
        Ok(parts) => parts
            .iter()
            .filter(|p| worth_keeping(std::slice::from_ref(p), kept_from))
            .count(),
        Err(e) => {
            tracing::warn!(error = %e, "the overview's counts could not be taken at start");
            0
        }
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
                    taken: Instant::now(),
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

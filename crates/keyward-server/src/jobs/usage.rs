//! The usage flusher: writes the counts gathered by the verification path every
//! `KEYWARD_USAGE_FLUSH_MS` (in batches of at most
//! [`USAGE_FLUSH_BATCH`](crate::config::USAGE_FLUSH_BATCH) keys by default), and once more at
//! shutdown. A failed batch is put back and retried,
//! so counts are lost only if the process dies (at most one flush interval's worth). It also
//! turns what the verification path noticed into anomalies (`new_source`,
//! `dormant_reactivated`) and threshold notices (`key.rate_limited`, `key.quota_low`: each once
//! cluster-wide, by a deduplicated row written with its webhook event).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use keyward_core::kinds::{AnomalyKind, WebhookEvent};
use keyward_store::SourceSeen;
use serde_json::json;

use crate::anomalies::{self, Found};
use crate::events::key_event;
use crate::state::Control;
use crate::verifier::{Notice, Usage};

/// `new_source` anomalies reported per key and flush at most.
const NEW_SOURCES_PER_FLUSH: usize = 5;

/// Writes everything pending now. Holds the write gate so a control-plane change that sets a
/// quota never interleaves with a batch that subtracts from it.
pub async fn flush(state: &Control) -> Result<usize, keyward_store::StoreError> {
    let _gate = state.gate.lock().await;
    let written = flush_locked(state).await;
    if written.is_ok() {
        state
            .metrics
            .last_flush_ms
            .store(state.records.clock.now().millis(), Ordering::Relaxed);
        return_idle_leases(state).await;
    }
    written
}

/// Addresses never seen before for their key. The first address a key is ever seen from is not
/// an anomaly. The addresses on record are read for every key of the batch in a few statements
/// (after a start, every key a node sees is first seen from an address it does not know).
async fn new_sources(
    state: &Control,
    usage: &Usage,
) -> Result<Vec<Found>, keyward_store::StoreError> {
    let ips_of = |d: &keyward_store::UsageDelta| -> Vec<String> {
        d.sources.iter().map(|s| s.ip.clone()).collect()
    };
    // The deltas with an address this node does not know for its key.
    let asking: Vec<usize> = (0..usage.deltas.len())
        .filter(|&i| {
            let d = &usage.deltas[i];
            !d.sources.is_empty()
                && !state
                    .verifier
                    .unknown_sources(&d.key_id, &ips_of(d))
                    .is_empty()
        })
        .collect();
    let mut found = Vec::new();
    if asking.is_empty() {
        return Ok(found);
    }
    let ids: Vec<String> = asking
        .iter()
        .map(|&i| usage.deltas[i].key_id.clone())
        .collect();
    let mut on_record: HashMap<String, HashSet<String>> = HashMap::new();
    for (key_id, ip) in state.records.store.known_sources(&ids).await? {
        on_record.entry(key_id).or_default().insert(ip);
    }
    for i in asking {
        let d = &usage.deltas[i];
        // Asked again: an earlier delta of the same key in this batch made some known.
        let ips = ips_of(d);
        let unknown = state.verifier.unknown_sources(&d.key_id, &ips);
        if unknown.is_empty() {
            continue;
        }
        let stored = on_record.get(&d.key_id).cloned().unwrap_or_default();
        let mut fresh: Vec<&SourceSeen> = d
            .sources
            .iter()
            .filter(|s| unknown.contains(&s.ip) && !stored.contains(&s.ip))
            .collect();
        fresh.sort_by_key(|s| s.first);
        let mut skip_first = stored.is_empty();
        let keyspace_id = usage.keyspace_of(i);
        // A flood of made-up addresses on one key reports a handful per flush, not thousands.
        for s in fresh.into_iter().take(NEW_SOURCES_PER_FLUSH + 1) {
            if std::mem::take(&mut skip_first) {
                continue;
            }
            found.push(anomalies::found(
                &d.key_id,
                keyspace_id,
                AnomalyKind::NewSource,
                format!("new_source:{}:{}", d.key_id, s.ip),
                s.first,
                json!({"ip": s.ip, "known_sources": stored.len(), "first_seen": s.first}),
            ));
        }
        state
            .verifier
            .remember_sources(&d.key_id, stored.into_iter().chain(ips));
    }
    Ok(found)
}

/// [`flush`] for callers that already hold the write gate: every key pending when it starts (the
/// queue is first in, first out, so those are the first taken), in batches of at most
/// `Control::flush_batch` keys.
pub(crate) async fn flush_locked(state: &Control) -> Result<usize, keyward_store::StoreError> {
    state.verifier.queue_due();
    let mut left = state.verifier.pending_keys();
    let mut written = 0;
    while left > 0 {
        let (n, taken) = flush_batch(state, left.min(state.flush_batch)).await?;
        written += n;
        if taken == 0 {
            break;
        }
        left = left.saturating_sub(taken);
    }
    Ok(written)
}

/// Writes the usage of the `max` keys queued longest: (keys written, keys taken).
async fn flush_batch(
    state: &Control,
    max: usize,
) -> Result<(usize, usize), keyward_store::StoreError> {
    let mut usage = state.verifier.take_usage(max);
    let taken = usage.taken();
    let notices = std::mem::take(&mut usage.notices);
    if !notices.is_empty() {
        if let Err((e, notices)) = record_notices(state, notices).await {
            tracing::warn!(error = %e, "could not record threshold notices; retried at the next flush");
            state.verifier.restore_notices(notices);
        }
    }
    if usage.deltas.is_empty() && usage.reactivations.is_empty() {
        return Ok((0, taken));
    }
    let mut found = match new_sources(state, &usage).await {
        Ok(f) => f,
        Err(e) => {
            state.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
            state.verifier.restore_usage(usage);
            return Err(e);
        }
    };
    let n = usage.deltas.len();
    match state.records.store.apply_usage(&usage.deltas).await {
        Ok(()) => {
            state.metrics.flushes.fetch_add(1, Ordering::Relaxed);
            state
                .metrics
                .flushed_keys
                .fetch_add(n as u64, Ordering::Relaxed);
            state
                .metrics
                .last_flush_batch
                .store(n as u64, Ordering::Relaxed);
        }
        Err(e) => {
            state.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
            state.verifier.restore_usage(usage);
            return Err(e);
        }
    }
    for r in std::mem::take(&mut usage.reactivations) {
        let silent = (r.at.millis() - r.previous_use.millis()) / 1000;
        found.push(anomalies::found(
            &r.key_id,
            &r.keyspace_id,
            AnomalyKind::DormantReactivated,
            format!("dormant_reactivated:{}:{}", r.key_id, r.at.millis()),
            r.at,
            json!({"previous_use": r.previous_use, "silent_secs": silent}),
        ));
    }
    if let Err(e) = anomalies::record(state, found).await {
        tracing::warn!(error = %e, "could not record anomalies found while flushing usage");
    }
    Ok((n, taken))
}

type Notices = Vec<(std::sync::Arc<crate::verifier::Entry>, Notice)>;

/// Announces thresholds crossed, each once cluster-wide: a notice row with a unique `dedup`
/// text and its webhook event, in one transaction. On failure the notices come back.
async fn record_notices(
    state: &Control,
    notices: Notices,
) -> Result<(), (keyward_store::StoreError, Notices)> {
    let run = async {
        let mut tx = state.records.store.begin().await?;
        let mut sent = false;
        for (entry, n) in &notices {
            let key_id = entry.key_id();
            let (kind, dedup, at, extra) = match n {
                Notice::RateLimited {
                    name,
                    limit,
                    window_secs,
                    identity,
                    reset_at,
                    at,
                } => (
                    WebhookEvent::KeyRateLimited,
                    format!(
                        "rate_limited:{key_id}:{}:{name}:{}",
                        if *identity { "i" } else { "k" },
                        reset_at.millis()
                    ),
                    *at,
                    json!({"limit": {"name": name, "limit": limit, "window_secs": window_secs,
                                     "identity": identity, "reset_at": reset_at}}),
                ),
                Notice::QuotaLow {
                    remaining,
                    below,
                    period_end,
                    at,
                } => (
                    WebhookEvent::KeyQuotaLow,
                    format!("quota_low:{key_id}:{}", period_end.millis()),
                    *at,
                    json!({"quota": {"remaining": remaining, "below": below,
                                     "period_end": period_end}}),
                ),
            };
            if !tx.insert_notice(&dedup, at).await? {
                continue;
            }
            if let Some(key) = tx.key(key_id).await? {
                let extra = match extra {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                tx.enqueue(&key_event(kind, &key, at, extra)).await?;
                sent = true;
            }
        }
        tx.commit().await?;
        if sent {
            state.webhook_wake.notify_one();
        }
        Ok::<_, keyward_store::StoreError>(())
    };
    run.await.map_err(|e| (e, notices))
}

async fn return_idle_leases(state: &Control) {
    if let Err(e) = state
        .verifier
        .return_leases(state.records.clock.now(), false)
        .await
    {
        tracing::warn!(error = %e, "could not give back idle quota leases");
    }
}

/// Runs until `shutdown` resolves, then flushes one last time and gives back every lease.
pub(crate) async fn run(
    state: Control,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = flush(&state).await {
                    tracing::warn!(error = %e, "usage flush failed; will retry");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // The last flushes write every source address too, due or not.
    state.verifier.write_all_sources();
    for attempt in 0..5 {
        match flush(&state).await {
            Ok(_) => {
                if let Err(e) = state
                    .verifier
                    .return_leases(state.records.clock.now(), true)
                    .await
                {
                    tracing::warn!(error = %e, "could not give back quota leases at shutdown; the sweep reclaims them");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "final usage flush failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

//! The usage flusher: writes the counts gathered by the verification path in one batch every
//! `KEYWARD_USAGE_FLUSH_MS`, and once more at shutdown. A failed batch is put back and retried,
//! so counts are lost only if the process dies (at most one flush interval's worth).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::AppState;

/// Writes everything pending now. Holds the write gate so a control-plane change that sets a
/// quota never interleaves with a batch that subtracts from it.
pub async fn flush(state: &AppState) -> Result<usize, keyward_store::StoreError> {
    let _gate = state.gate.lock().await;
    flush_locked(state).await
}

/// [`flush`] for callers that already hold the write gate.
pub async fn flush_locked(state: &AppState) -> Result<usize, keyward_store::StoreError> {
    let deltas = state.verifier.take_usage();
    if deltas.is_empty() {
        return Ok(0);
    }
    let n = deltas.len();
    match state.store.apply_usage(&deltas).await {
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
            Ok(n)
        }
        Err(e) => {
            state.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
            state.verifier.restore_usage(deltas);
            Err(e)
        }
    }
}

/// Runs until `shutdown` resolves, then flushes one last time.
pub async fn run(state: AppState, every: Duration, shutdown: tokio::sync::watch::Receiver<bool>) {
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
    for attempt in 0..5 {
        match flush(&state).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "final usage flush failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

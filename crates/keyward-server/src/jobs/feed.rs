//! The change-feed follower: applies changes made by other nodes (or other processes on the same
//! database) to this node's verification cache. Changes made through this node are applied at
//! once by the control plane; this loop is what bounds staleness across a cluster. On
//! PostgreSQL it is woken by LISTEN/NOTIFY as soon as another node commits a change, and polls
//! every `feed_poll_ms` as the safety net.
//!
//! PostgreSQL sequence values can become visible out of order (a transaction that took seq 10
//! may commit after the one that took 11), so each poll re-reads a trailing window and skips the
//! rows it has already applied.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::state::Control;

/// How far behind the newest applied seq each poll looks again.
const WINDOW: i64 = 1024;

pub(crate) async fn run(
    state: Control,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut head = loop {
        match state.records.store.change_head().await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "change feed: cannot read the head; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let node = state.records.store.node_id().to_string();
    let signal = state.records.store.change_signal();
    let mut applied: BTreeSet<i64> = BTreeSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = async {
            match &signal {
                Some(s) => s.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = woken => {}
            _ = shutdown.changed() => return,
        }
        let from = (head - WINDOW).max(0);
        match state.records.store.changes_after(from, 10_000).await {
            Ok(rows) => {
                for c in rows {
                    if c.seq <= from || applied.contains(&c.seq) {
                        continue;
                    }
                    // A node's own changes were applied when they were made (see
                    // `service::Forget`, which holds even for cancelled requests).
                    if c.origin != node {
                        if c.keyspace {
                            state.verifier.forget_keyspace(&c.key_id);
                            // A keyspace's row also follows an import into it: forget cached
                            // misses, and learn whether keys of other formats now exist.
                            state.verifier.imported(None);
                        } else {
                            state.verifier.invalidate_remote(&c.key_hash, c.quota);
                        }
                    }
                    applied.insert(c.seq);
                    head = head.max(c.seq);
                }
                let floor = head - WINDOW;
                applied = applied.split_off(&floor);
            }
            Err(e) => tracing::debug!(error = %e, "change feed: poll failed"),
        }
    }
}

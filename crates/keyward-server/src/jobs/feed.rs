//! The change-feed follower: applies changes made by other nodes (or other processes on the same
//! database) to this node's verification cache. Changes made through this node are applied at
//! once by the control plane; this loop is what bounds staleness across a cluster. On
//! PostgreSQL it is woken by LISTEN/NOTIFY as soon as another node commits a change, and polls
//! every `feed_poll_ms` as the safety net.
//!
//! PostgreSQL sequence values can become visible out of order (a transaction that took seq 10
//! may commit after the one that took 11), so the follower remembers the seqs it has not seen
//! below the newest it applied ([`Seen`]) and each read starts at the oldest of them: a read
//! fetches what is new, not a window of old rows again. A seq missing once [`WINDOW`]
//! newer ones arrived (a rolled-back transaction's) is given up.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::state::Control;

/// How far below the newest applied seq a seq not yet seen is still waited for.
const WINDOW: i64 = 1024;

pub(crate) async fn run(
    state: Control,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let head = loop {
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
    let mut seen = Seen::at(head);
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
        match state
            .records
            .store
            .changes_after(seen.read_after(), 10_000)
            .await
        {
            Ok(rows) => {
                for c in rows {
                    if !seen.take(c.seq) {
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
                }
                seen.give_up_old();
            }
            Err(e) => tracing::debug!(error = %e, "change feed: poll failed"),
        }
    }
}

/// The feed rows a follower has applied: every seq up to `head` but those in `missing`.
#[derive(Debug)]
struct Seen {
    head: i64,
    /// Seqs below `head` not read yet, within [`WINDOW`] of it: a transaction that took one may
    /// still commit.
    missing: BTreeSet<i64>,
}

impl Seen {
    /// At start, the window below the head counts as missing: a transaction in flight when the
    /// follower started may commit any of those seqs.
    fn at(head: i64) -> Self {
        Seen {
            head,
            missing: ((head - WINDOW + 1).max(1)..=head).collect(),
        }
    }

    /// The seq the next read starts after: just before the oldest missing one, or the head.
    fn read_after(&self) -> i64 {
        self.missing.first().map_or(self.head, |m| m - 1)
    }

    /// Records `seq` as read; whether it was new (not applied before).
    fn take(&mut self, seq: i64) -> bool {
        if seq > self.head {
            self.missing
                .extend((self.head + 1).max(seq - WINDOW + 1)..seq);
            self.head = seq;
            true
        } else {
            self.missing.remove(&seq)
        }
    }

    /// Gives up the seqs missing for more than [`WINDOW`] newer ones.
    fn give_up_old(&mut self) {
        self.missing = self.missing.split_off(&(self.head - WINDOW + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_starts_at_the_oldest_seq_not_seen() {
        let mut s = Seen::at(0);
        assert_eq!(s.read_after(), 0);
        assert!(s.take(1) && s.take(2));
        assert_eq!(s.read_after(), 2, "nothing missing: read what is new");
        // 3 and 4 are taken by transactions still open; 5 commits first.
        assert!(s.take(5));
        assert_eq!(s.read_after(), 2);
        assert!(!s.take(5), "a seq read again is not applied again");
        assert!(s.take(4));
        assert_eq!(s.read_after(), 2);
        assert!(s.take(3));
        assert_eq!(s.read_after(), 5);
        assert!(!s.take(3) && !s.take(1));
    }

    #[test]
    fn a_seq_never_committed_is_given_up_after_a_window() {
        let mut s = Seen::at(0);
        assert!(s.take(1) && s.take(3));
        for seq in 4..=WINDOW + 1 {
            assert!(s.take(seq));
        }
        s.give_up_old();
        assert_eq!(s.read_after(), 1, "2 is within the window");
        assert!(s.take(WINDOW + 2));
        s.give_up_old();
        assert_eq!(s.read_after(), WINDOW + 2, "2 is given up");
        assert!(!s.take(2), "a seq given up is not applied");
    }

    #[test]
    fn the_window_below_the_head_at_start_is_read_once() {
        let mut s = Seen::at(5000);
        assert_eq!(s.read_after(), 5000 - WINDOW);
        for seq in 5000 - WINDOW + 1..=5000 {
            assert!(s.take(seq), "{seq}");
        }
        assert_eq!(s.read_after(), 5000);
        let mut s = Seen::at(3);
        assert_eq!(s.read_after(), 0, "never below seq 1");
        // A jump far past the head marks only a window missing.
        assert!(s.take(1) && s.take(2) && s.take(3) && s.take(100_000));
        assert_eq!(s.missing.len() as i64, WINDOW - 1);
    }
}

//! Prometheus metrics, kept in atomics (no lock on the verify path) and rendered as text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use keyward_core::verify::Code;

/// Upper bounds (seconds) of the verification latency histogram.
const BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.1,
];

/// Counters of the verification path, one set per shard so that threads on different cores do
/// not fight over one cache line on every request; `/metrics` adds the shards up.
#[derive(Default)]
#[repr(align(128))]
struct HotShard {
    verifications: [AtomicU64; Code::ALL.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    duration_buckets: [AtomicU64; 12],
    duration_count: AtomicU64,
    duration_sum_ns: AtomicU64,
}

const HOT_SHARDS: usize = 8;

/// This thread's shard (threads are spread round-robin).
fn hot_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % HOT_SHARDS;
    }
    INDEX.with(|i| *i)
}

#[derive(Default)]
pub struct Metrics {
    hot: [HotShard; HOT_SHARDS],
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_failures: AtomicU64,
    pub flushed_keys: AtomicU64,
    pub(crate) last_flush_batch: AtomicU64,
    /// When usage was last written (ms since the epoch), for the flush lag gauge.
    pub(crate) last_flush_ms: std::sync::atomic::AtomicI64,
    pub(crate) webhook_ok: AtomicU64,
    pub(crate) webhook_failed: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    /// Keys created in one round trip from what this node's last write left.
    pub(crate) keys_created_predicted: AtomicU64,
    /// Such creations that wrote nothing and were made in a transaction instead.
    pub(crate) key_predictions_missed: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub(crate) connections_refused: AtomicU64,
    /// Salted hashes of imported keys computed at verification, and keys upgraded to SHA-256.
    pub(crate) slow_hash_checks: AtomicU64,
    pub(crate) keys_rehashed: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_webhook(&self, ok: bool) {
        let c = if ok {
            &self.webhook_ok
        } else {
            &self.webhook_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn observe(&self, code: Code, elapsed: std::time::Duration) {
        let h = &self.hot[hot_index()];
        h.verifications[code.index()].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        h.duration_count.fetch_add(1, Ordering::Relaxed);
        h.duration_sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.hot[hot_index()]
            .cache_hits
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.hot[hot_index()]
            .cache_misses
            .fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&HotShard) -> &AtomicU64) -> u64 {
        self.hot.iter().map(|h| f(h).load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn render(
        &self,
        pending_usage_keys: usize,
        cached_entries: usize,
        now_ms: i64,
    ) -> String {
        let mut s = String::new();
        let last = self.last_flush_ms.load(Ordering::Relaxed);
        let lag = if last == 0 {
            0.0
        } else {
            (now_ms - last).max(0) as f64 / 1000.0
        };
        let _ = writeln!(
            s,
            "# HELP keyward_usage_flush_lag_seconds Time since usage was last written.\n# TYPE keyward_usage_flush_lag_seconds gauge\nkeyward_usage_flush_lag_seconds {lag}"
        );
        let _ = writeln!(
            s,
            "# HELP keyward_verifications_total Verifications by outcome code."
        );
        let _ = writeln!(s, "# TYPE keyward_verifications_total counter");
        for code in Code::ALL {
            let n = self.sum(|h| &h.verifications[code.index()]);
            let _ = writeln!(
                s,
                "keyward_verifications_total{{code=\"{}\"}} {n}",
                code.as_str()
            );
        }
        let _ = writeln!(
            s,
            "# HELP keyward_verify_duration_seconds Time to decide one verification."
        );
        let _ = writeln!(s, "# TYPE keyward_verify_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|h| &h.duration_buckets[i]);
            let _ = writeln!(
                s,
                "keyward_verify_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.sum(|h| &h.duration_count);
        let _ = writeln!(
            s,
            "keyward_verify_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.sum(|h| &h.duration_sum_ns) as f64 / 1e9;
        let _ = writeln!(s, "keyward_verify_duration_seconds_sum {sum}");
        let _ = writeln!(s, "keyward_verify_duration_seconds_count {count}");
        let counters = [
            (
                "keyward_cache_hits_total",
                "Verifications answered from the cache.",
                self.sum(|h| &h.cache_hits),
            ),
            (
                "keyward_cache_misses_total",
                "Verifications that read the store.",
                self.sum(|h| &h.cache_misses),
            ),
            (
                "keyward_usage_flushes_total",
                "Usage batches written.",
                self.flushes.load(Ordering::Relaxed),
            ),
            (
                "keyward_usage_flush_failures_total",
                "Usage batches that failed and were kept for retry.",
                self.flush_failures.load(Ordering::Relaxed),
            ),
            (
                "keyward_usage_flushed_keys_total",
                "Per-key usage rows written.",
                self.flushed_keys.load(Ordering::Relaxed),
            ),
            (
                "keyward_slow_hash_checks_total",
                "Salted hashes of imported keys computed to check a presented key.",
                self.slow_hash_checks.load(Ordering::Relaxed),
            ),
            (
                "keyward_keys_rehashed_total",
                "Imported keys whose salted hash was replaced by their SHA-256 on this node.",
                self.keys_rehashed.load(Ordering::Relaxed),
            ),
            (
                "keyward_connections_refused_total",
                "Connections closed on arrival because the connection cap was reached.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "keyward_redis_errors_total",
                "Calls to Redis that failed: rate-limit checks that fell back to this node, and denials whose slots could not be given back.",
                self.redis_errors.load(Ordering::Relaxed),
            ),
            (
                "keyward_keys_created_predicted_total",
                "Keys created in one round trip, from what this node's last write left.",
                self.keys_created_predicted.load(Ordering::Relaxed),
            ),
            (
                "keyward_key_predictions_missed_total",
                "One-round-trip key creations that wrote nothing (another writer came between, or the database refused) and were made in a transaction instead.",
                self.key_predictions_missed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP keyward_webhook_deliveries_total Webhook delivery attempts by result."
        );
        let _ = writeln!(s, "# TYPE keyward_webhook_deliveries_total counter");
        let _ = writeln!(
            s,
            "keyward_webhook_deliveries_total{{result=\"success\"}} {}",
            self.webhook_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "keyward_webhook_deliveries_total{{result=\"failure\"}} {}",
            self.webhook_failed.load(Ordering::Relaxed)
        );
        let gauges = [
            (
                "keyward_usage_last_batch_keys",
                "Keys in the last usage batch.",
                self.last_flush_batch.load(Ordering::Relaxed) as usize,
            ),
            (
                "keyward_usage_pending_keys",
                "Keys with usage not yet written.",
                pending_usage_keys,
            ),
            (
                "keyward_cache_entries",
                "Entries in the verification cache.",
                cached_entries,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}

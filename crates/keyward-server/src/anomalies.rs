//! Pattern changes in a key's usage, each judged against the key's own history:
//!
//! - `new_source`: a verification that identified the key came from an address never seen for
//!   it before (the first address a key is ever seen from is not one; a successor starts with
//!   its predecessor's addresses). Found by the usage flusher. Once per key and address.
//! - `dormant_reactivated`: a valid use after at least `KEYWARD_DORMANT_SECS` (default 30 days)
//!   without one. Found on the verification path, recorded by the usage flusher.
//! - `spike`: in one complete minute, valid calls ≥ [`SPIKE_MIN`] and ≥ [`SPIKE_FACTOR`] × (the
//!   key's mean valid calls per minute over the previous [`BASELINE_MINUTES`] minutes + 1).
//!   Found by the sweeper. At most once per key and hour.
//! - `denied_burst`: in one complete minute, denied verifications ≥ [`BURST_MIN`] and ≥
//!   [`SPIKE_FACTOR`] × (the mean denied per minute over the baseline + 1). At most once per key
//!   and hour.
//!
//! Each anomaly is stored once cluster-wide (a unique `dedup` key) and announced by a
//! `key.anomaly` webhook written in the same transaction.

use std::collections::HashMap;

use keyward_core::id::new_id;
use keyward_core::kinds::{AnomalyKind, WebhookEvent};
use keyward_core::model::Anomaly;
use keyward_core::time::Timestamp;
use keyward_store::Bucket;
use serde_json::{json, Map, Value};

use crate::events::key_event;
use crate::state::Control;

pub(crate) const BASELINE_MINUTES: i64 = 60;
pub(crate) const SPIKE_FACTOR: f64 = 5.0;
pub(crate) const SPIKE_MIN: i64 = 30;
pub(crate) const BURST_MIN: i64 = 20;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// An anomaly to record, with its de-duplication key.
pub(crate) struct Found {
    pub(crate) anomaly: Anomaly,
    pub(crate) dedup: String,
}

pub(crate) fn found(
    key_id: &str,
    keyspace_id: &str,
    kind: AnomalyKind,
    dedup: String,
    at: Timestamp,
    detail: Value,
) -> Found {
    Found {
        anomaly: Anomaly {
            id: new_id("anm", at),
            key_id: key_id.to_string(),
            keyspace_id: keyspace_id.to_string(),
            kind,
            detected_at: at,
            detail,
        },
        dedup,
    }
}

/// Adds a bucket's count to (valid, denied): every code but `VALID` is a denial.
fn add(counts: &mut (i64, i64), b: &Bucket) {
    if b.code == "VALID" {
        counts.0 += b.n;
    } else {
        counts.1 += b.n;
    }
}

/// The keys that could be judged a spike or a denied burst in one of the minutes `buckets`
/// cover: enough valid calls or denials in one minute ([`SPIKE_MIN`], [`BURST_MIN`]). Only their
/// baseline needs reading (a key below both minimums is never found, whatever its history).
/// `buckets` may hold only those that can make a minute busy (`Store::busy_minutes`): the keys
/// are the same. Sorted, without repeats.
pub(crate) fn candidates(buckets: &[Bucket]) -> Vec<String> {
    let mut per_minute: HashMap<(&str, i64), (i64, i64)> = HashMap::new();
    for b in buckets {
        add(
            per_minute
                .entry((b.key_id.as_str(), b.start.millis()))
                .or_default(),
            b,
        );
    }
    let keys: std::collections::BTreeSet<&str> = per_minute
        .into_iter()
        .filter(|(_, (valid, denied))| *valid >= SPIKE_MIN || *denied >= BURST_MIN)
        .map(|((key, _), _)| key)
        .collect();
    keys.into_iter().map(str::to_string).collect()
}

/// Spikes and denied bursts in `minute` (a minute start), from minute buckets covering at least
/// the baseline window before it. The keyspace of each finding is left empty for the caller.
pub(crate) fn judge_minute(buckets: &[Bucket], minute: i64, now: Timestamp) -> Vec<Found> {
    let from = minute - BASELINE_MINUTES * MINUTE;
    let mut before: HashMap<&str, (i64, i64)> = HashMap::new();
    for b in buckets {
        let start = b.start.millis();
        if start >= from && start < minute {
            add(before.entry(b.key_id.as_str()).or_default(), b);
        }
    }
    judge(buckets, minute, now, |key| {
        before.get(key).copied().unwrap_or_default()
    })
}

/// Spikes and denied bursts in `minute`, from its buckets (those of other minutes are ignored)
/// and `baseline`: a key's valid and denied verifications in the [`BASELINE_MINUTES`] minutes
/// before it. The keyspace of each finding is left empty for the caller.
pub(crate) fn judge(
    buckets: &[Bucket],
    minute: i64,
    now: Timestamp,
    baseline: impl Fn(&str) -> (i64, i64),
) -> Vec<Found> {
    #[derive(Default)]
    struct Counts {
        valid: i64,
        denied: i64,
        by_code: Map<String, Value>,
    }
    let mut per_key: HashMap<&str, Counts> = HashMap::new();
    for b in buckets.iter().filter(|b| b.start.millis() == minute) {
        let c = per_key.entry(b.key_id.as_str()).or_default();
        if b.code == "VALID" {
            c.valid += b.n;
        } else {
            c.denied += b.n;
            c.by_code.insert(b.code.clone(), json!(b.n));
        }
    }
    let mut out = Vec::new();
    let hour = minute.div_euclid(HOUR) * HOUR;
    for (key_id, c) in per_key {
        let ks = "";
        let (valid_before, denied_before) = baseline(key_id);
        let base_valid = valid_before as f64 / BASELINE_MINUTES as f64;
        let base_denied = denied_before as f64 / BASELINE_MINUTES as f64;
        let at = Timestamp::from_millis(minute);
        if c.valid >= SPIKE_MIN && c.valid as f64 >= SPIKE_FACTOR * (base_valid + 1.0) {
            out.push(found(
                key_id,
                ks,
                AnomalyKind::Spike,
                format!("spike:{key_id}:{hour}"),
                now,
                json!({"minute": at, "valid": c.valid, "baseline_per_minute": round2(base_valid)}),
            ));
        }
        if c.denied >= BURST_MIN && c.denied as f64 >= SPIKE_FACTOR * (base_denied + 1.0) {
            out.push(found(
                key_id,
                ks,
                AnomalyKind::DeniedBurst,
                format!("denied_burst:{key_id}:{hour}"),
                now,
                json!({"minute": at, "denied": c.denied, "by_code": c.by_code, "baseline_per_minute": round2(base_denied)}),
            ));
        }
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Stores anomalies (once each) and enqueues their `key.anomaly` webhooks, in one transaction.
pub(crate) async fn record(
    st: &Control,
    found: Vec<Found>,
) -> Result<usize, keyward_store::StoreError> {
    if found.is_empty() {
        return Ok(0);
    }
    let mut tx = st.records.store.begin().await?;
    let mut n = 0;
    for f in found {
        if !tx.insert_anomaly(&f.anomaly, &f.dedup).await? {
            continue;
        }
        n += 1;
        if let Some(key) = tx.key(&f.anomaly.key_id).await? {
            let mut extra = Map::new();
            extra.insert("anomaly".into(), json!(f.anomaly));
            tx.enqueue(&key_event(
                WebhookEvent::KeyAnomaly,
                &key,
                f.anomaly.detected_at,
                extra,
            ))
            .await?;
        }
    }
    tx.commit().await?;
    if n > 0 {
        st.webhook_wake.notify_one();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(key: &str, minute: i64, code: &str, n: i64) -> Bucket {
        Bucket {
            key_id: key.into(),
            start: Timestamp::from_millis(minute * MINUTE),
            code: code.into(),
            n,
        }
    }

    #[test]
    fn steady_traffic_is_no_spike_and_a_jump_is() {
        let mut steady: Vec<Bucket> = (0..=60).map(|m| b("k", 1000 + m, "VALID", 40)).collect();
        assert!(judge_minute(&steady, 1060 * MINUTE, Timestamp::EPOCH).is_empty());
        steady.pop();
        steady.push(b("k", 1060, "VALID", 400));
        let found = judge_minute(&steady, 1060 * MINUTE, Timestamp::EPOCH);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].anomaly.kind, AnomalyKind::Spike);
    }

    #[test]
    fn only_keys_at_a_minimum_in_one_minute_are_candidates() {
        let buckets = vec![
            b("quiet", 1000, "VALID", SPIKE_MIN - 1),
            b("quiet", 1000, "REVOKED", BURST_MIN - 1),
            b("quiet", 1001, "VALID", SPIKE_MIN - 1),
            b("busy", 1000, "VALID", 1),
            b("busy", 1001, "VALID", SPIKE_MIN),
            // Denials of several codes add up.
            b("denied", 1001, "REVOKED", BURST_MIN - 5),
            b("denied", 1001, "RATE_LIMITED", 5),
        ];
        assert_eq!(candidates(&buckets), vec!["busy", "denied"]);
    }

    /// The sweep's usual way (the baseline summed by the store) finds what the whole hour of
    /// buckets finds, and the baseline is what decides.
    #[test]
    fn a_summed_baseline_judges_as_the_buckets_do() {
        let mut buckets: Vec<Bucket> = (0..60).map(|m| b("busy", 1000 + m, "VALID", 40)).collect();
        buckets.extend((0..60).map(|m| b("quiet", 1000 + m, "VALID", 2)));
        buckets.push(b("quiet", 999, "VALID", 10_000)); // before the window
        buckets.push(b("busy", 1060, "VALID", 200));
        buckets.push(b("quiet", 1060, "VALID", 200));
        buckets.push(b("quiet", 1060, "REVOKED", 30));
        let minute = 1060 * MINUTE;
        let kinds = |found: Vec<Found>| {
            let mut k: Vec<(String, AnomalyKind)> = found
                .into_iter()
                .map(|f| (f.anomaly.key_id, f.anomaly.kind))
                .collect();
            k.sort();
            k
        };
        let whole = kinds(judge_minute(&buckets, minute, Timestamp::EPOCH));
        assert_eq!(
            whole,
            vec![
                // Sorted by kind in declaration order.
                ("quiet".to_string(), AnomalyKind::Spike),
                ("quiet".to_string(), AnomalyKind::DeniedBurst),
            ]
        );
        let summed = |key: &str| match key {
            "busy" => (60 * 40, 0),
            "quiet" => (60 * 2, 0),
            _ => (0, 0),
        };
        assert_eq!(
            kinds(judge(&buckets, minute, Timestamp::EPOCH, summed)),
            whole
        );
        // Without its baseline the busy key's usual pace would be a spike.
        assert_eq!(
            kinds(judge(&buckets, minute, Timestamp::EPOCH, |_| (0, 0))).len(),
            3
        );
    }

    #[test]
    fn a_revoked_key_still_being_tried_is_a_denied_burst() {
        let buckets = vec![b("k", 1000, "VALID", 3), b("k", 1060, "REVOKED", 25)];
        let found = judge_minute(&buckets, 1060 * MINUTE, Timestamp::EPOCH);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].anomaly.kind, AnomalyKind::DeniedBurst);
        assert_eq!(found[0].anomaly.detail["by_code"]["REVOKED"], 25);
    }
}

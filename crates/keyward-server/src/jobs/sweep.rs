//! The sweeper: one per node, every `KEYWARD_SWEEP_INTERVAL_SECS`, reading `now` from the clock.
//!
//! - expiry: a key past `expires_at` (including an old key at the end of its rotation grace)
//!   that is not revoked is marked expired once: `key.expire` audit event by the system actor and
//!   a `key.expired` webhook;
//! - warning: `key.expiring` once per key, `expiry_warning_secs` before `expires_at`;
//! - inactivity: a key without valid use for its keyspace's `inactivity_revoke_secs` (counted
//!   from creation if never used) is revoked with reason `inactive` (`key.revoke` event,
//!   `key.inactive_revoked` webhook only);
//! - usage roll-up (minutes into hours and days), retention, and spike / denied-burst detection.
//!
//! Every key's step is conditional inside its transaction (`mark_expired`, `mark_warned`, a
//! re-read of the key under the write lock), so nodes sweeping at the same time write each audit
//! event and enqueue each webhook exactly once, and a crash between transactions loses or
//! repeats nothing. Each step takes a page of [`BATCH`] keys a transaction (20,000 keys expiring
//! at once took 22–26 s on SQLite at one transaction each, 11 s a page at a time).

use std::collections::HashMap;
use std::time::Duration;

use keyward_core::id::new_id;
use keyward_core::kinds::{AuditAction, Granularity, TargetType, WebhookEvent};
use keyward_core::model::{Actor, Key, KeyStatus};
use keyward_core::time::Timestamp;
use keyward_store::{NewEvent, Page, StoreError};
use serde_json::{json, Map};

use crate::anomalies;
use crate::events::key_event;
use crate::state::Control;

/// Keys read, and written in one transaction, at a time.
const BATCH: i64 = 200;

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub expired: usize,
    pub warned: usize,
    pub inactive_revoked: usize,
    pub anomalies: usize,
    pub pruned_buckets: u64,
    /// Minute buckets whose new counts went into their hours and days.
    pub rolled_up: u64,
}

fn system_event(now: Timestamp, action: AuditAction, key: &Key) -> NewEvent {
    NewEvent {
        id: new_id("evt", now),
        at: now,
        actor: Actor::system(),
        action,
        target_type: TargetType::Key,
        target_id: key.id.clone(),
        reason: None,
        request_id: None,
        ip: None,
        changes: Map::new(),
    }
}

/// `$step` (an expression using `$page`, a slice of `$keys`) on the whole page in one
/// transaction (none for an empty page); if that fails, once more one key a transaction, so a
/// key that cannot be written holds back only itself and the keys after it (as when each key
/// was its own transaction), not the keys of its page before it. (A macro: an async closure over a borrowed page makes the
/// sweeper's future not `Send` for every lifetime, which `tokio::spawn` needs.)
macro_rules! page_or_each {
    ($keys:expr, |$page:ident| $step:expr) => {{
        let keys: &[Key] = $keys;
        let whole = if keys.is_empty() {
            Ok(0)
        } else {
            let $page = keys;
            $step.await
        };
        match whole {
            Ok(n) => Ok(n),
            Err(e) if keys.len() <= 1 => Err(e),
            Err(_) => {
                let mut n = 0;
                let mut failed = None;
                for k in keys {
                    let $page = std::slice::from_ref(k);
                    match $step.await {
                        Ok(m) => n += m,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(n), Err)
            }
        }
    }};
}

/// Marks the keys expired by `now`, a page of [`BATCH`] a transaction: each key's mark is
/// conditional (another node may have marked it) and gets its own audit event and webhook.
async fn expire(st: &Control, now: Timestamp) -> Result<usize, StoreError> {
    let mut n = 0;
    loop {
        let keys = st.records.store.expired_unmarked(now, BATCH).await?;
        if keys.is_empty() {
            return Ok(n);
        }
        let marked = page_or_each!(&keys, |page| expire_page(st, page, now))?;
        if marked == 0 {
            return Ok(n);
        }
        n += marked;
    }
}

/// [`expire`]'s transaction for one page: the number of keys it marked.
async fn expire_page(st: &Control, keys: &[Key], now: Timestamp) -> Result<usize, StoreError> {
    let mut tx = st.records.store.begin().await?;
    let (mut events, mut outbox) = (Vec::new(), Vec::new());
    for k in keys {
        if !tx.mark_expired(&k.id, now).await? {
            continue;
        }
        let Some(k) = tx.key(&k.id).await? else {
            continue;
        };
        let mut ev = system_event(now, AuditAction::KeyExpire, &k);
        ev.changes.insert("status".into(), json!([null, "expired"]));
        ev.changes
            .insert("expires_at".into(), json!([k.expires_at, k.expires_at]));
        events.push(ev);
        outbox.push(key_event(WebhookEvent::KeyExpired, &k, now, Map::new()));
    }
    if !outbox.is_empty() {
        tx.append_audits(events).await?;
        tx.enqueue_all(&outbox).await?;
        tx.commit().await?;
    }
    Ok(outbox.len())
}

async fn keyspaces(st: &Control) -> Result<Vec<keyward_core::model::Keyspace>, StoreError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = st
            .records
            .store
            .list_keyspaces(
                None,
                &Page {
                    limit: 500,
                    after: after.clone(),
                },
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        after = Some((last.created_at.millis(), last.id.clone()));
        all.extend(page);
    }
}

async fn warn(
    st: &Control,
    now: Timestamp,
    spaces: &[keyward_core::model::Keyspace],
) -> Result<usize, StoreError> {
    let mut n = 0;
    for ks in spaces {
        let Some(w) = ks.policy.expiry_warning_secs else {
            continue;
        };
        loop {
            let keys = st
                .records
                .store
                .expiring_unwarned(&ks.id, now, now.plus_secs(w), BATCH)
                .await?;
            // A page a transaction, each key's mark conditional (another node may have warned).
            let warned = page_or_each!(&keys, |page| warn_page(st, page, now))?;
            n += warned;
            if keys.len() < BATCH as usize || warned == 0 {
                break;
            }
        }
    }
    Ok(n)
}

/// [`warn`]'s transaction for one page: the number of keys it warned about.
async fn warn_page(st: &Control, keys: &[Key], now: Timestamp) -> Result<usize, StoreError> {
    let mut tx = st.records.store.begin().await?;
    let mut outbox = Vec::new();
    for k in keys {
        if tx.mark_warned(&k.id, now).await? {
            outbox.push(key_event(WebhookEvent::KeyExpiring, k, now, Map::new()));
        }
    }
    if !outbox.is_empty() {
        tx.enqueue_all(&outbox).await?;
        tx.commit().await?;
    }
    Ok(outbox.len())
}

async fn revoke_inactive(
    st: &Control,
    now: Timestamp,
    spaces: &[keyward_core::model::Keyspace],
) -> Result<usize, StoreError> {
    let mut n = 0;
    for ks in spaces {
        let Some(secs) = ks.policy.inactivity_revoke_secs else {
            continue;
        };
        let cutoff = now.plus_secs(-secs);
        loop {
            let keys = st
                .records
                .store
                .inactive_since(&ks.id, now, cutoff, BATCH)
                .await?;
            // A page a transaction; each key re-read under the write lock (another node may
            // have acted, or the key been used).
            let revoked = page_or_each!(&keys, |page| revoke_page(st, page, now, cutoff))?;
            n += revoked;
            let progressed = revoked > 0;
            if keys.len() < BATCH as usize || !progressed {
                break;
            }
        }
    }
    Ok(n)
}

/// [`revoke_inactive`]'s transaction for one page: the number of keys it revoked, each re-read
/// under the write lock (another node may have acted, or the key been used), and dropped from
/// this node's cache once committed.
async fn revoke_page(
    st: &Control,
    keys: &[Key],
    now: Timestamp,
    cutoff: Timestamp,
) -> Result<usize, StoreError> {
    let mut tx = st.records.store.begin().await?;
    let (mut events, mut outbox, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for k in keys {
        let Some(mut k) = tx.key(&k.id).await? else {
            continue;
        };
        let last = k.last_used_at.unwrap_or(k.created_at);
        let live = matches!(
            k.status(now),
            KeyStatus::Active | KeyStatus::Disabled | KeyStatus::Rotating
        );
        if !live || last > cutoff {
            continue;
        }
        let actor = Actor::system();
        let mut ev = system_event(now, AuditAction::KeyRevoke, &k);
        ev.reason = Some("inactive".into());
        ev.changes.insert("revoked_at".into(), json!([null, now]));
        ev.changes.insert("revoked_by".into(), json!([null, actor]));
        ev.changes
            .insert("revoked_reason".into(), json!([null, "inactive"]));
        k.revoked_at = Some(now);
        k.revoked_by = Some(actor);
        k.revoked_reason = Some("inactive".into());
        k.updated_at = now;
        tx.update_key(&k).await?;
        events.push(ev);
        outbox.push(key_event(
            WebhookEvent::KeyInactiveRevoked,
            &k,
            now,
            Map::new(),
        ));
        hashes.push(k.hash);
    }
    if !hashes.is_empty() {
        tx.append_audits(events).await?;
        tx.enqueue_all(&outbox).await?;
        tx.commit().await?;
        for hash in &hashes {
            st.verifier.invalidate(hash);
        }
    }
    Ok(hashes.len())
}

async fn prune(st: &Control, now: Timestamp, retention: [Duration; 3]) -> Result<u64, StoreError> {
    let mut n = 0;
    for (i, g) in Granularity::ALL.iter().enumerate() {
        n += st
            .records
            .store
            .prune_usage(*g, now.plus_millis(-(retention[i].as_millis() as i64)))
            .await?;
    }
    Ok(n)
}

/// Judges every complete minute after `*last` up to the one before `now`.
async fn patterns(
    st: &Control,
    now: Timestamp,
    last: &mut Option<i64>,
) -> Result<usize, StoreError> {
    const MINUTE: i64 = 60_000;
    let current = now.millis().div_euclid(MINUTE) * MINUTE;
    let newest = current - MINUTE;
    let first = match *last {
        Some(l) => (l + MINUTE).max(newest - 59 * MINUTE),
        None => newest,
    };
    if first > newest {
        return Ok(0);
    }
    // The keys that could be found (enough valid calls or denials in a judged minute), from the
    // buckets that can make a minute busy: a quiet key costs the database a look at its minute
    // and this node nothing (with a million keys used a minute, reading every key's minute
    // here was a quarter of a sweep). Then their judged minutes whole, and their baseline: when one
    // minute is judged (every sweep but one that catches up, with sweeps at most a minute apart)
    // the store sums each such key's hour, one row per key, not sixty.
    let (from_judged, to_judged) = (
        Timestamp::from_millis(first),
        Timestamp::from_millis(current),
    );
    let busy = st
        .records
        .store
        .busy_minutes(from_judged, to_judged, anomalies::SPIKE_MIN)
        .await?;
    let candidates = anomalies::candidates(&busy);
    let mut buckets = Vec::new();
    for chunk in candidates.chunks(500) {
        buckets.extend(
            st.records
                .store
                .usage(Some(chunk), Granularity::Minute, from_judged, to_judged)
                .await?,
        );
    }
    let from = Timestamp::from_millis(first - anomalies::BASELINE_MINUTES * MINUTE);
    let mut found = if first == newest {
        let mut baseline = HashMap::new();
        for chunk in candidates.chunks(500) {
            for t in st
                .records
                .store
                .minute_totals(chunk, from, Timestamp::from_millis(first))
                .await?
            {
                baseline.insert(t.key_id, (t.valid, t.denied));
            }
        }
        anomalies::judge(&buckets, first, now, |key| {
            baseline.get(key).copied().unwrap_or_default()
        })
    } else {
        for chunk in candidates.chunks(500) {
            buckets.extend(
                st.records
                    .store
                    .usage(
                        Some(chunk),
                        Granularity::Minute,
                        from,
                        Timestamp::from_millis(first),
                    )
                    .await?,
            );
        }
        let mut found = Vec::new();
        let mut m = first;
        while m <= newest {
            found.extend(anomalies::judge_minute(&buckets, m, now));
            m += MINUTE;
        }
        found
    };
    for f in &mut found {
        if let Some(k) = st.records.store.key(&f.anomaly.key_id).await? {
            f.anomaly.keyspace_id = k.keyspace_id;
        }
    }
    let n = anomalies::record(st, found).await?;
    *last = Some(newest);
    Ok(n)
}

/// Runs every sweep once at `now` (the clock's), keeping usage buckets for `retention`
/// (minutes, hours, days). `last_minute` carries pattern detection's
/// progress between sweeps of this node.
pub async fn sweep_once(
    st: &Control,
    retention: [Duration; 3],
    last_minute: &mut Option<i64>,
) -> Result<Report, StoreError> {
    // Inactivity must see this node's latest uses.
    crate::jobs::usage::flush(st).await?;
    let now = st.records.clock.now();
    let spaces = keyspaces(st).await?;
    let mut r = Report {
        expired: expire(st, now).await?,
        ..Report::default()
    };
    r.warned = warn(st, now, &spaces).await?;
    r.inactive_revoked = revoke_inactive(st, now, &spaces).await?;
    // Hours and days from the minutes written since the last roll-up, before minutes are pruned.
    // Only closed minutes: the flusher is still adding to the current one.
    let minute = Timestamp::from_millis(now.millis().div_euclid(60_000) * 60_000);
    r.rolled_up = st.records.store.rollup_usage(minute).await?;
    r.pruned_buckets = prune(st, now, retention).await?;
    // Leases untouched for a minute belong to nodes that died: their quota goes back to the pool.
    st.records
        .store
        .reclaim_stale_leases(now.plus_secs(-60))
        .await?;
    // Bounded history: webhook deliveries and anomalies for 90 days, the change feed for a day
    // (a node that was away longer starts with an empty cache).
    r.pruned_buckets += st
        .records
        .store
        .prune_history(now.plus_secs(-90 * 86_400), now.plus_secs(-86_400))
        .await?;
    // Expired dashboard sessions and setup links (also dropped at each sign-in).
    st.records.store.users().delete_expired(now).await?;
    r.anomalies = patterns(st, now, last_minute).await?;
    if r.expired + r.warned + r.inactive_revoked + r.anomalies > 0 {
        st.webhook_wake.notify_one();
    }
    Ok(r)
}

pub(crate) async fn run(
    st: Control,
    every: Duration,
    retention: [Duration; 3],
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_minute = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let swept = sweep_once(&st, retention, &mut last_minute);
        match tracing::Instrument::instrument(swept, crate::traces::sweep()).await {
            // Roll-ups happen on nearly every sweep of a busy node: not worth a line alone.
            Ok(r)
                if r != (Report {
                    rolled_up: r.rolled_up,
                    ..Report::default()
                }) =>
            {
                tracing::info!(?r, "sweep")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed; the next one retries"),
        }
    }
}

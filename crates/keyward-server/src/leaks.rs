//! Reported leaks (`POST /v1/leaks`): anyone who finds a key may report it. A live key is
//! revoked (reason `leaked`, by an actor of type `scanner`) or only announced, as its
//! keyspace's `on_leak` policy says; either way the report is an audit event `key.leaked` and a
//! `key.leaked` webhook, both carrying the source. The reporter learns nothing: the answer is
//! 202 whatever the key, and the work runs after the answer (so its duration tells nothing
//! either).
//!
//! Invariants:
//! - The reported plaintext is hashed at once and never stored or logged; a source or reporter
//!   that holds key material is stored as `[redacted]`.
//! - One transaction per report: the revocation (when the policy says so), its audit events and
//!   its webhook events commit together or not at all, and this node's cache forgets the key
//!   after the commit (other nodes through the change feed, as for every revocation).

use keyward_core::api::LeakReport;
use keyward_core::id::new_id;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::kinds::{AuditAction, TargetType, WebhookEvent};
use keyward_core::model::{Actor, ActorKind, KeyStatus};
use keyward_core::policy::OnLeak;
use keyward_core::time::Timestamp;
use keyward_store::{NewEvent, StoreError};
use serde_json::{json, Map, Value};

use crate::events::key_event;
use crate::state::Control;
use crate::throttle::LeakGate as Gate;

/// The longest source kept (longer ones are cut).
const MAX_SOURCE: usize = 2048;
/// The longest reporter kept.
const MAX_REPORTER: usize = 200;
/// No key is longer; a longer string is not looked up.
const MAX_KEY: usize = 1024;

/// Makes this node's cache forget a key when dropped: after the commit, or when the handling
/// is cancelled after it (a GitHub request whose connection closed).
struct Invalidate<'a>(&'a Control, Option<KeyHash>);

impl Drop for Invalidate<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.1 {
            self.0.verifier.invalidate(h);
        }
    }
}

/// What a report did (for the log and the metrics; never told to the reporter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a key: not of keyward's format, or no key has this hash.
    Unknown,
    /// A key reported within the last hour on this node: nothing more recorded.
    Repeated,
    /// A live key, revoked.
    Revoked,
    /// A live key, announced only (`on_leak: notify`).
    Notified,
    /// A key already revoked or expired: recorded, nothing else to do.
    Dead,
}

/// Text from the reporter as it may be stored: without control characters, cut to `max`
/// characters, and then (so that neither step can assemble one) never holding a key: neither
/// a well-formed key nor the reported one.
fn stored_text(s: Option<&str>, max: usize, reported: &str) -> Value {
    let Some(s) = s else {
        return Value::Null;
    };
    let cleaned: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if keyformat::contains_key_material(&cleaned) || cleaned.contains(reported) {
        json!("[redacted]")
    } else {
        json!(cleaned)
    }
}

/// Handles one report.
pub(crate) async fn handle(
    st: &Control,
    gate: &Gate,
    report: &LeakReport,
    ip: Option<String>,
    request_id: Option<String>,
) -> Result<Outcome, StoreError> {
    let key = report.key.expose();
    // Only keyward's format with a valid checksum can be a key: nothing else reaches the store,
    // unless keys of other formats were imported.
    let shaped = keyformat::parse(key).is_some()
        || (keyformat::foreign_shape(key) && st.verifier.foreign_known().await?);
    if key.len() > MAX_KEY || !shaped {
        return Ok(Outcome::Unknown);
    }
    let hash = KeyHash::of(key);
    let Some(found) = st.records.store.key_by_hash(&hash).await? else {
        return Ok(Outcome::Unknown);
    };
    let now: Timestamp = st.records.clock.now();
    if gate.seen(&hash, now) {
        return Ok(Outcome::Repeated);
    }
    let outcome = record(st, report, &found.id, ip, request_id, now).await;
    if outcome.is_err() {
        gate.forget(&hash);
    }
    outcome
}

/// Records one report of the key `id` in one transaction (and revokes it, when its policy
/// says so).
async fn record(
    st: &Control,
    report: &LeakReport,
    id: &str,
    ip: Option<String>,
    request_id: Option<String>,
    now: Timestamp,
) -> Result<Outcome, StoreError> {
    let key = report.key.expose();
    let source = stored_text(report.source.as_deref(), MAX_SOURCE, key);
    let reporter = stored_text(report.reporter.as_deref(), MAX_REPORTER, key);
    let actor = Actor {
        kind: ActorKind::Scanner,
        id: "leak-report".into(),
        name: reporter
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "anonymous".into()),
    };
    let mut tx = st.records.store.begin().await?;
    // Re-read under the write lock: the key may have changed since.
    let Some(mut k) = tx.key(id).await? else {
        return Ok(Outcome::Unknown);
    };
    let policy = tx
        .keyspace(&k.keyspace_id)
        .await?
        .map(|ks| ks.policy.on_leak)
        .unwrap_or_default();
    let live = matches!(
        k.status(now),
        KeyStatus::Active | KeyStatus::Disabled | KeyStatus::Rotating
    );
    let outcome = match (live, policy) {
        (false, _) => Outcome::Dead,
        (true, OnLeak::Revoke) => Outcome::Revoked,
        (true, OnLeak::Notify) => Outcome::Notified,
    };
    let event = |action: AuditAction| NewEvent {
        id: new_id("evt", now),
        at: now,
        actor: actor.clone(),
        action,
        target_type: TargetType::Key,
        target_id: k.id.clone(),
        reason: Some("leaked".into()),
        request_id: request_id.clone(),
        ip: ip.clone(),
        changes: Map::new(),
    };
    let mut reported = event(AuditAction::KeyLeaked);
    reported
        .changes
        .insert("source".into(), json!([null, source]));
    reported
        .changes
        .insert("reporter".into(), json!([null, reporter]));
    tx.append_audit(reported).await?;
    if outcome == Outcome::Revoked {
        let mut ev = event(AuditAction::KeyRevoke);
        ev.changes.insert("revoked_at".into(), json!([null, now]));
        ev.changes.insert("revoked_by".into(), json!([null, actor]));
        ev.changes
            .insert("revoked_reason".into(), json!([null, "leaked"]));
        k.revoked_at = Some(now);
        k.revoked_by = Some(actor.clone());
        k.revoked_reason = Some("leaked".into());
        k.updated_at = now;
        tx.update_key(&k).await?;
        tx.append_audit(ev).await?;
        tx.enqueue(&key_event(WebhookEvent::KeyRevoked, &k, now, Map::new()))
            .await?;
    }
    let mut extra = Map::new();
    extra.insert("source".into(), source);
    extra.insert(
        "action".into(),
        json!(match outcome {
            Outcome::Revoked => "revoked",
            Outcome::Notified => "notified",
            _ => "none",
        }),
    );
    tx.enqueue(&key_event(WebhookEvent::KeyLeaked, &k, now, extra))
        .await?;
    let _forget = Invalidate(st, (outcome == Outcome::Revoked).then_some(k.hash));
    tx.commit().await?;
    st.webhook_wake.notify_one();
    Ok(outcome)
}

//! The inventory report: one row per key with the findings an auditor looks for.
//!
//! Findings are computed for keys that are still live (not revoked, not expired); a revoked or
//! expired key is listed with no findings, since it can no longer be used.
//! - `no_expiry`: the key never expires;
//! - `exceeds_max_lifetime`: its lifetime (`expires_at - created_at`, or unbounded) is longer than
//!   the keyspace policy's `max_lifetime_secs` (e.g. after the policy was tightened);
//! - `expiring_soon`: it expires within `expiry_warning_secs`;
//! - `inactive`: no valid use (or creation, if never used) for at least half of the policy's
//!   `inactivity_revoke_secs` (90 days when the policy has none);
//! - `no_owner`: it has no owner.

use std::collections::HashMap;

use keyward_core::model::{Key, KeyStatus, Keyspace};
use keyward_core::time::Timestamp;
use keyward_store::{KeyFilter, Page};
use serde::Serialize;

use crate::authz::{Allowed, ReadAudit};
use crate::error::Result;
use crate::state::Records;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) owner: Option<String>,
    pub(crate) keyspace_id: String,
    pub(crate) keyspace: String,
    pub(crate) status: KeyStatus,
    pub(crate) created_at: Timestamp,
    pub(crate) age_days: i64,
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) last_used_at: Option<Timestamp>,
    pub(crate) days_since_use: Option<i64>,
    pub(crate) call_count: i64,
    pub(crate) findings: Vec<&'static str>,
}

const DAY_MS: i64 = 86_400_000;

pub(crate) fn findings(k: &Key, ks: &Keyspace, now: Timestamp) -> Vec<&'static str> {
    let mut f = Vec::new();
    if !matches!(
        k.status(now),
        KeyStatus::Active | KeyStatus::Disabled | KeyStatus::Rotating
    ) {
        return f;
    }
    let p = &ks.policy;
    if k.expires_at.is_none() {
        f.push("no_expiry");
    }
    if let Some(max) = p.max_lifetime_secs {
        let over = match k.expires_at {
            None => true,
            Some(e) => e > k.created_at.plus_secs(max),
        };
        if over {
            f.push("exceeds_max_lifetime");
        }
    }
    if let (Some(w), Some(e)) = (p.expiry_warning_secs, k.expires_at) {
        if e <= now.plus_secs(w) {
            f.push("expiring_soon");
        }
    }
    let threshold_ms = p
        .inactivity_revoke_secs
        .map(|s| s * 1000 / 2)
        .unwrap_or(90 * DAY_MS);
    let last = k.last_used_at.unwrap_or(k.created_at);
    if now.millis() - last.millis() >= threshold_ms {
        f.push("inactive");
    }
    if k.owner.is_none() {
        f.push("no_owner");
    }
    f
}

/// Every key the context may see (in one keyspace, or all), with findings at `now`.
pub(crate) async fn inventory(
    st: &Records,
    who: &Allowed<'_, ReadAudit>,
    keyspace_id: Option<&str>,
) -> Result<Vec<Row>> {
    let ctx = who.ctx();
    let now = st.clock.now();
    let keyspace_ids = match keyspace_id {
        Some(id) => {
            crate::service::keyspace_seen(st, ctx, id).await?;
            Some(vec![id.to_string()])
        }
        None => ctx.keyspaces.clone(),
    };
    let mut spaces: HashMap<String, Keyspace> = HashMap::new();
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let filter = KeyFilter {
            keyspace_ids: keyspace_ids.clone(),
            now,
            page: Page {
                limit: 500,
                after: after.clone(),
            },
            ..KeyFilter::default()
        };
        let keys = st.store.list_keys(&filter).await?;
        let Some(last) = keys.last() else { break };
        after = Some((last.created_at.millis(), last.id.clone()));
        for k in keys {
            if !spaces.contains_key(&k.keyspace_id) {
                if let Some(ks) = st.store.keyspace(&k.keyspace_id).await? {
                    spaces.insert(ks.id.clone(), ks);
                }
            }
            let Some(ks) = spaces.get(&k.keyspace_id) else {
                continue;
            };
            let last_use = k.last_used_at;
            rows.push(Row {
                findings: findings(&k, ks, now),
                id: k.id.clone(),
                name: k.name.clone(),
                owner: k.owner.clone(),
                keyspace_id: k.keyspace_id.clone(),
                keyspace: ks.name.clone(),
                status: k.status(now),
                created_at: k.created_at,
                age_days: (now.millis() - k.created_at.millis()).max(0) / DAY_MS,
                expires_at: k.expires_at,
                last_used_at: last_use,
                days_since_use: last_use.map(|t| (now.millis() - t.millis()).max(0) / DAY_MS),
                call_count: k.call_count,
            });
        }
    }
    Ok(rows)
}

pub(crate) fn csv_field(s: &str) -> String {
    // Cells that a spreadsheet would run as a formula are prefixed with a quote.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub(crate) fn to_csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "id,name,owner,keyspace_id,keyspace,status,created_at,age_days,expires_at,last_used_at,days_since_use,call_count,findings\n",
    );
    for r in rows {
        let t = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        let cells = [
            r.id.clone(),
            r.name.clone(),
            r.owner.clone().unwrap_or_default(),
            r.keyspace_id.clone(),
            r.keyspace.clone(),
            r.status.as_str().to_string(),
            r.created_at.to_rfc3339(),
            r.age_days.to_string(),
            t(r.expires_at),
            t(r.last_used_at),
            r.days_since_use.map(|d| d.to_string()).unwrap_or_default(),
            r.call_count.to_string(),
            r.findings.join(";"),
        ];
        out.push_str(
            &cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

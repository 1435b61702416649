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

use keyward_core::model::{KeyStatus, Keyspace};
use keyward_core::time::Timestamp;
use keyward_store::{CensusRules, KeyBrief};
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

/// The thresholds of keyspace `ks`'s findings at `now`: what [`findings`] applies to each key,
/// and what the dashboard's overview counts in the database with, so the two agree.
pub(crate) fn census_rules(ks: &Keyspace, now: Timestamp) -> CensusRules {
    let p = &ks.policy;
    let threshold_ms = p
        .inactivity_revoke_secs
        .map(|s| s * 1000 / 2)
        .unwrap_or(90 * DAY_MS);
    CensusRules {
        keyspace_id: ks.id.clone(),
        max_lifetime_ms: p.max_lifetime_secs.map(|s| s.saturating_mul(1000)),
        warn_until: p.expiry_warning_secs.map(|w| now.plus_secs(w)),
        inactive_before: now.plus_millis(-threshold_ms),
    }
}

/// The findings of key `k` at `now` under its keyspace's `rules` (see [`census_rules`]).
pub(crate) fn findings(k: &KeyBrief, rules: &CensusRules, now: Timestamp) -> Vec<&'static str> {
    let mut f = Vec::new();
    if !matches!(
        k.status(now),
        KeyStatus::Active | KeyStatus::Disabled | KeyStatus::Rotating
    ) {
        return f;
    }
    if k.expires_at.is_none() {
        f.push("no_expiry");
    }
    if let Some(max) = rules.max_lifetime_ms {
        let over = match k.expires_at {
            None => true,
            Some(e) => e > k.created_at.plus_millis(max),
        };
        if over {
            f.push("exceeds_max_lifetime");
        }
    }
    if let (Some(until), Some(e)) = (rules.warn_until, k.expires_at) {
        if e <= until {
            f.push("expiring_soon");
        }
    }
    if k.last_used_at.unwrap_or(k.created_at) <= rules.inactive_before {
        f.push("inactive");
    }
    if k.owner.is_none() {
        f.push("no_owner");
    }
    f
}

/// Every key the context may see (in one keyspace, or all), with findings at `now`, read a
/// page at a time ([`Inventory::next_page`]): a report of a million keys is streamed in the
/// memory of one page.
pub(crate) struct Inventory {
    st: Records,
    keyspace_ids: Option<Vec<String>>,
    now: Timestamp,
    /// Each keyspace's name and finding thresholds, read at its first key.
    spaces: HashMap<String, (String, CensusRules)>,
    /// The read of the next page, started when the page before it arrived (the store reads it
    /// while that one is written out).
    next: Option<
        tokio::task::JoinHandle<std::result::Result<Vec<KeyBrief>, keyward_store::StoreError>>,
    >,
    done: bool,
}

/// Keys read a page.
const INVENTORY_PAGE: i64 = 1000;

impl Inventory {
    /// The report at the clock's now, of keyspace `keyspace_id` (which the context must see) or
    /// of every keyspace the context may see.
    pub(crate) async fn open(
        st: &Records,
        who: &Allowed<'_, ReadAudit>,
        keyspace_id: Option<&str>,
    ) -> Result<Inventory> {
        let ctx = who.ctx();
        let keyspace_ids = match keyspace_id {
            Some(id) => {
                crate::service::keyspace_seen(st, ctx, id).await?;
                Some(vec![id.to_string()])
            }
            None => ctx.keyspaces.clone(),
        };
        Ok(Inventory {
            st: st.clone(),
            keyspace_ids,
            now: st.clock.now(),
            spaces: HashMap::new(),
            next: None,
            done: false,
        })
    }

    /// The next rows, newest key first; `None` once every key is read.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<Row>>> {
        if self.done {
            return Ok(None);
        }
        let pending = match self.next.take() {
            Some(p) => p,
            None => self.read(None),
        };
        let keys = pending.await.map_err(|e| {
            crate::error::Error::internal(format!("the inventory read failed: {e}"))
        })??;
        let Some(last) = keys.last() else {
            self.done = true;
            return Ok(None);
        };
        if (keys.len() as i64) < INVENTORY_PAGE {
            self.done = true;
        } else {
            self.next = Some(self.read(Some((last.created_at.millis(), last.id.clone()))));
        }
        let now = self.now;
        let mut rows = Vec::with_capacity(keys.len());
        for k in keys {
            if !self.spaces.contains_key(&k.keyspace_id) {
                if let Some(ks) = self.st.store.keyspace(&k.keyspace_id).await? {
                    let rules = census_rules(&ks, now);
                    self.spaces.insert(ks.id, (ks.name, rules));
                }
            }
            let Some((keyspace, rules)) = self.spaces.get(&k.keyspace_id) else {
                continue;
            };
            let last_use = k.last_used_at;
            rows.push(Row {
                findings: findings(&k, rules, now),
                status: k.status(now),
                id: k.id,
                name: k.name,
                owner: k.owner,
                keyspace_id: k.keyspace_id,
                keyspace: keyspace.clone(),
                created_at: k.created_at,
                age_days: (now.millis() - k.created_at.millis()).max(0) / DAY_MS,
                expires_at: k.expires_at,
                last_used_at: last_use,
                days_since_use: last_use.map(|t| (now.millis() - t.millis()).max(0) / DAY_MS),
                call_count: k.call_count,
            });
        }
        Ok(Some(rows))
    }

    /// Starts reading the page after `after`.
    fn read(
        &self,
        after: Option<(i64, String)>,
    ) -> tokio::task::JoinHandle<std::result::Result<Vec<KeyBrief>, keyward_store::StoreError>>
    {
        let (store, keyspace_ids) = (self.st.store.clone(), self.keyspace_ids.clone());
        tokio::spawn(async move {
            store
                .key_briefs(keyspace_ids.as_deref(), after, INVENTORY_PAGE)
                .await
        })
    }

    /// Every row at once (the dashboard's summary page).
    pub(crate) async fn all(mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        while let Some(page) = self.next_page().await? {
            rows.extend(page);
        }
        Ok(rows)
    }

    /// The report as a streamed CSV body: the header, then a chunk per page. The first page is
    /// read before the answer starts, so an unreachable store is a clean error, not a cut file.
    pub(crate) async fn csv(mut self) -> Result<axum::body::Body> {
        let first = self.next_page().await?;
        let mut head = String::from(CSV_HEADER);
        for r in first.iter().flatten() {
            push_csv_row(&mut head, r);
        }
        Ok(self.stream(
            head,
            |out, rows| {
                for r in rows {
                    push_csv_row(out, r);
                }
            },
            String::new(),
        ))
    }

    /// The report as a streamed JSON body: `{"keyspace_id", "generated_at", "items": [...]}`,
    /// a chunk per page (see [`Inventory::csv`]).
    pub(crate) async fn json(mut self, keyspace_id: Option<&str>) -> Result<axum::body::Body> {
        let first = self.next_page().await?;
        let mut head = format!(
            "{{\"keyspace_id\":{},\"generated_at\":{},\"items\":[",
            serde_json::to_string(&keyspace_id).unwrap_or_default(),
            serde_json::to_string(&self.now).unwrap_or_default()
        );
        let mut first_row = true;
        let mut push = move |out: &mut String, rows: &[Row]| {
            for r in rows {
                if !first_row {
                    out.push(',');
                }
                first_row = false;
                out.push_str(&serde_json::to_string(r).unwrap_or_default());
            }
        };
        push(&mut head, first.as_deref().unwrap_or_default());
        Ok(self.stream(head, push, "]}".to_string()))
    }

    /// `head`, then each further page written by `write`, then `tail`. A store error part
    /// way cuts the stream (the client sees an incomplete body, never a complete-looking one).
    fn stream(
        self,
        head: String,
        write: impl FnMut(&mut String, &[Row]) + Send + 'static,
        tail: String,
    ) -> axum::body::Body {
        enum Step {
            Head(String),
            Pages,
            Done,
        }
        let state = (self, Step::Head(head), write, Some(tail));
        let s = futures_util::stream::unfold(
            state,
            |(mut inv, step, mut write, mut tail)| async move {
                match step {
                    Step::Head(h) => {
                        Some((Ok::<_, std::io::Error>(h), (inv, Step::Pages, write, tail)))
                    }
                    Step::Pages => match inv.next_page().await {
                        Ok(Some(rows)) => {
                            let mut out = String::new();
                            write(&mut out, &rows);
                            Some((Ok(out), (inv, Step::Pages, write, tail)))
                        }
                        Ok(None) => Some((
                            Ok(tail.take().unwrap_or_default()),
                            (inv, Step::Done, write, tail),
                        )),
                        Err(e) => Some((
                            Err(std::io::Error::other(e.message)),
                            (inv, Step::Done, write, tail),
                        )),
                    },
                    Step::Done => None,
                }
            },
        );
        axum::body::Body::from_stream(s)
    }
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

/// The CSV report's header line.
pub(crate) const CSV_HEADER: &str =
    "id,name,owner,keyspace_id,keyspace,status,created_at,age_days,expires_at,last_used_at,days_since_use,call_count,findings\n";

/// Appends one row of the CSV report.
pub(crate) fn push_csv_row(out: &mut String, r: &Row) {
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
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(c));
    }
    out.push('\n');
}

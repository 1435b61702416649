//! The markup of the inventory report page ([`crate::dashboard::reports`]).

use std::collections::BTreeMap;

use keyward_core::model::Keyspace;
use keyward_core::time::Timestamp;
use maud::{html, Markup};

use crate::dashboard::chart::group;
use crate::dashboard::ui::{self, heading, page, status_badge, Nav};
use crate::dashboard::SignedIn;
use crate::reports::Row;

/// Keys with findings listed on the page (the CSV has them all).
const LISTED: usize = 100;

/// The findings, in the order the page shows them, with what each means.
pub(crate) const FINDINGS: [(&str, &str, &str); 5] = [
    ("no_owner", "No owner", "nobody is accountable for them"),
    ("no_expiry", "Never expire", "no expiry date"),
    (
        "exceeds_max_lifetime",
        "Beyond max lifetime",
        "longer than their policy now allows",
    ),
    (
        "expiring_soon",
        "Expiring soon",
        "within the warning window",
    ),
    (
        "inactive",
        "Inactive",
        "unused for half the inactivity limit",
    ),
];

/// The report's summary and its keys with findings.
pub(crate) struct Report<'a> {
    /// Keys in the report, and how many of them are live.
    pub(crate) total: usize,
    pub(crate) live: usize,
    /// Keys with findings, most findings first.
    pub(crate) flagged: Vec<&'a Row>,
    /// Keys per finding.
    pub(crate) by_finding: BTreeMap<&'a str, usize>,
    /// keyspace name → (live keys, count per finding in [`FINDINGS`] order)
    pub(crate) by_space: BTreeMap<&'a str, (usize, [usize; 5])>,
    /// The CSV of the same selection.
    pub(crate) download: String,
    pub(crate) keyspaces: Vec<Keyspace>,
    /// The keyspace the report is limited to, if any.
    pub(crate) keyspace: Option<&'a str>,
    pub(crate) now: Timestamp,
}

fn finding_label(f: &str) -> &str {
    FINDINGS
        .iter()
        .find(|(k, _, _)| *k == f)
        .map_or(f, |(_, l, _)| l)
}

pub(crate) fn report(s: &SignedIn, m: &Report) -> Markup {
    let (flagged, keyspace, now) = (&m.flagged, m.keyspace, m.now);
    let body = html! {
        (heading("Inventory report", Some(html! {
            "Every key with the findings an auditor looks for, computed now: "
            (group(m.total as i64)) " keys, " (group(m.live as i64)) " live, "
            span data-flagged=(flagged.len()) { (group(flagged.len() as i64)) } " with findings."
        }), html! {
            a.button.primary href=(m.download) download="keyward-inventory.csv" data-action="download-inventory" { "Download CSV" }
        }))
        form.filters method="get" action="/reports" {
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in &m.keyspaces { option value=(ks.id) selected[keyspace == Some(ks.id.as_str())] { (ks.name) } }
            }
            button.secondary type="submit" { "Apply" }
        }
        div.stats {
            @for (k, label, hint) in FINDINGS {
                @let n = m.by_finding.get(k).copied().unwrap_or(0);
                div class={ "stat " (if n > 0 { "tone-warn" } else { "tone-ok" }) } data-finding=(k) {
                    div.stat-label { (label) }
                    div.stat-value data-count=(n) { (group(n as i64)) }
                    div.stat-hint { (hint) }
                }
            }
        }
        section.card {
            h2 { "By keyspace" }
            @if m.by_space.is_empty() { (ui::empty("No keys.")) } @else {
                div.table-wrap { table.by-keyspace {
                    thead { tr { th { "Keyspace" } th.num { "Live keys" } @for (_, l, _) in FINDINGS { th.num { (l) } } } }
                    tbody { @for (name, (n, f)) in &m.by_space { tr {
                        td { (name) }
                        td.num { (n) }
                        @for c in f { td.num { @if *c > 0 { strong.warn-text { (c) } } @else { span.muted { "0" } } } }
                    } } }
                } }
            }
        }
        section.card.flush {
            div.card-head.padded {
                h2 { "Keys with findings" }
                span.count { (flagged.len()) }
            }
            @if flagged.is_empty() {
                (ui::empty("No live key has a finding."))
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Key" } th { "Keyspace" } th { "Owner" } th { "Status" } th { "Expires" } th { "Last used" } th { "Findings" } } }
                    tbody { @for r in flagged.iter().take(LISTED) { tr {
                        td { a.strong href={ "/keys/" (r.id) } { (r.name) } }
                        td { (r.keyspace) }
                        td { @if let Some(o) = &r.owner { (o) } @else { span.muted { "—" } } }
                        td { (status_badge(r.status)) }
                        td { (ui::when(r.expires_at, now, "never")) }
                        td { (ui::when(r.last_used_at, now, "never")) }
                        td { @for f in &r.findings { span.chip.finding { (finding_label(f)) } } }
                    } } }
                } }
                @if flagged.len() > LISTED {
                    p.hint.padded { "And " (flagged.len() - LISTED) " more in the CSV." }
                }
            }
        }
        p.hint { "The same report from the API: " code { "GET /v1/reports/inventory?format=csv" } " (or json)." }
    };
    page("Inventory report", s, Nav::Reports, body)
}

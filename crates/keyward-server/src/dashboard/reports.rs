//! The inventory report, for admins and auditors (`ReadAudit`, as the API): a summary of the
//! findings on the page and the CSV download, both from [`crate::reports::inventory`] (the
//! CSV is [`crate::reports::to_csv`], byte for byte the API's).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use keyward_core::model::KeyStatus;
use maud::{html, Markup};

use super::chart::group;
use super::ui::{self, heading, page, status_badge, Nav};
use super::{PageResult, QueryMap, SignedIn};
use crate::authz;
use crate::reports::{self, Row};
use crate::state::AppState;

/// Keys with findings listed on the page (the CSV has them all).
const LISTED: usize = 100;

/// The findings, in the order the page shows them, with what each means.
const FINDINGS: [(&str, &str, &str); 5] = [
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

fn finding_label(f: &str) -> &str {
    FINDINGS
        .iter()
        .find(|(k, _, _)| *k == f)
        .map_or(f, |(_, l, _)| l)
}

fn is_live(r: &Row) -> bool {
    matches!(
        r.status,
        KeyStatus::Active | KeyStatus::Rotating | KeyStatus::Disabled
    )
}

pub async fn report(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let now = st.clock.now();
    let keyspace = q.get("keyspace");
    let rows = reports::inventory(&st, &who, keyspace).await?;
    let kss = super::keys::all_keyspaces(&st, &ctx).await?;

    let live = rows.iter().filter(|r| is_live(r)).count();
    let flagged: Vec<&Row> = {
        let mut v: Vec<&Row> = rows.iter().filter(|r| !r.findings.is_empty()).collect();
        v.sort_by(|a, b| {
            b.findings
                .len()
                .cmp(&a.findings.len())
                .then(a.keyspace.cmp(&b.keyspace))
                .then(a.name.cmp(&b.name))
        });
        v
    };
    let mut by_finding: BTreeMap<&str, usize> = BTreeMap::new();
    // keyspace name → (live keys, count per finding in FINDINGS order)
    let mut by_space: BTreeMap<&str, (usize, [usize; 5])> = BTreeMap::new();
    for r in &rows {
        let e = by_space.entry(r.keyspace.as_str()).or_default();
        if is_live(r) {
            e.0 += 1;
        }
        for f in &r.findings {
            *by_finding.entry(f).or_default() += 1;
            if let Some(i) = FINDINGS.iter().position(|(k, _, _)| k == f) {
                e.1[i] += 1;
            }
        }
    }
    let download = format!(
        "/reports/inventory.csv{}",
        ui::query(&[("keyspace", keyspace)])
    );

    let body = html! {
        (heading("Inventory report", Some(html! {
            "Every key with the findings an auditor looks for, computed now: "
            (group(rows.len() as i64)) " keys, " (group(live as i64)) " live, "
            span data-flagged=(flagged.len()) { (group(flagged.len() as i64)) } " with findings."
        }), html! {
            a.button.primary href=(download) download="keyward-inventory.csv" data-action="download-inventory" { "Download CSV" }
        }))
        form.filters method="get" action="/reports" {
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in &kss { option value=(ks.id) selected[keyspace == Some(ks.id.as_str())] { (ks.name) } }
            }
            button.secondary type="submit" { "Apply" }
        }
        div.stats {
            @for (k, label, hint) in FINDINGS {
                @let n = by_finding.get(k).copied().unwrap_or(0);
                div class={ "stat " (if n > 0 { "tone-warn" } else { "tone-ok" }) } data-finding=(k) {
                    div.stat-label { (label) }
                    div.stat-value data-count=(n) { (group(n as i64)) }
                    div.stat-hint { (hint) }
                }
            }
        }
        section.card {
            h2 { "By keyspace" }
            @if by_space.is_empty() { (ui::empty("No keys.")) } @else {
                div.table-wrap { table.by-keyspace {
                    thead { tr { th { "Keyspace" } th.num { "Live keys" } @for (_, l, _) in FINDINGS { th.num { (l) } } } }
                    tbody { @for (name, (n, f)) in &by_space { tr {
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
    Ok(page("Inventory report", &s, Nav::Reports, body))
}

/// `GET /reports/inventory.csv[?keyspace=]`: the API's CSV, as a download.
pub async fn inventory_csv(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Response> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let rows = reports::inventory(&st, &who, q.get("keyspace")).await?;
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"keyward-inventory.csv\"",
            ),
        ],
        reports::to_csv(&rows),
    )
        .into_response())
}

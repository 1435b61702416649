//! The inventory report, for admins and auditors (`ReadAudit`, as the API): a summary of the
//! findings on the page and the CSV download, both from [`crate::reports::Inventory`] (the
//! CSV is [`crate::reports::Inventory::csv`], byte for byte the API's). The markup is in
//! [`super::views::reports`].

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use keyward_core::model::KeyStatus;
use maud::Markup;

use super::data::all_keyspaces;
use super::ui;
use super::views::reports::{self as view, Report, FINDINGS};
use super::{PageResult, QueryMap, SignedIn};
use crate::authz;
use crate::reports::{self, Row};
use crate::state::AppState;

fn is_live(r: &Row) -> bool {
    matches!(
        r.status,
        KeyStatus::Active | KeyStatus::Rotating | KeyStatus::Disabled
    )
}

pub(crate) async fn report(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let now = st.clock().now();
    let keyspace = q.get("keyspace");
    let rows = reports::Inventory::open(st.records(), &who, keyspace)
        .await?
        .all()
        .await?;
    let kss = all_keyspaces(&st, &ctx).await?;

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

    Ok(view::report(
        &s,
        &Report {
            total: rows.len(),
            live,
            flagged,
            by_finding,
            by_space,
            download,
            keyspaces: kss,
            keyspace,
            now,
        },
    ))
}

/// `GET /reports/inventory.csv[?keyspace=]`: the API's CSV, as a download.
pub(crate) async fn inventory_csv(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Response> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let inventory = reports::Inventory::open(st.records(), &who, q.get("keyspace")).await?;
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"keyward-inventory.csv\"",
            ),
        ],
        inventory.csv().await?,
    )
        .into_response())
}

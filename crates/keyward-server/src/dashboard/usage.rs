//! Usage on the dashboard: the key page's chart, source addresses and pattern changes, and the
//! overview's last 24 hours. Reads only what the API's usage endpoints read
//! ([`keyward_store::Store::usage`], `sources`, `list_anomalies`), under the same permission
//! (`ReadKeys`, checked by the pages that call these). The markup is in [`super::views::usage`].

use std::collections::HashMap;

use keyward_core::model::Key;
use keyward_store::{AnomalyFilter, Page};

use super::chart::{Usage, View};
use super::views::usage::{KeyUsage, OverviewUsage, RecentAnomalies, TopKey};
use super::PageResult;
use crate::authz::{Allowed, ReadKeys};
use crate::service;
use crate::state::AppState;

/// Anomalies shown on the key page and on the overview.
const ANOMALIES_SHOWN: i64 = 10;
/// Keys listed as the busiest of the last 24 hours on the overview.
const TOP_KEYS: usize = 5;

// ---------------------------------------------------------------- key page

/// The key page's usage: the chart (`view`), then its source addresses and its anomalies.
pub(crate) async fn key_usage<'a>(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    key: &'a Key,
    view: View,
) -> PageResult<KeyUsage<'a>> {
    let now = st.clock().now();
    let (from, to) = view.range(now);
    let (_, buckets) = service::key_usage(
        st.records(),
        who,
        &service::key_id(&key.id)?,
        view.granularity(),
        from,
        to,
    )
    .await?;
    let u = Usage::from_buckets(view, now, &buckets);
    let (_, sources) = service::key_sources(st.records(), who, &service::key_id(&key.id)?).await?;
    let filter = AnomalyFilter {
        key_id: Some(key.id.clone()),
        page: Page {
            limit: ANOMALIES_SHOWN,
            after: None,
        },
        ..Default::default()
    };
    let anomalies = service::list_anomalies(st.records(), who, filter).await?;
    Ok(KeyUsage {
        key,
        view,
        usage: u,
        sources,
        anomalies,
        now,
    })
}

// ---------------------------------------------------------------- overview

/// The overview's last 24 hours: totals, the chart and the busiest keys, over every key
/// (dashboard users are never limited to keyspaces: their `Ctx` has `keyspaces: None`). The
/// busiest keys are named by their ids; the overview puts their names in.
pub(crate) async fn overview_usage(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
) -> PageResult<OverviewUsage> {
    let now = st.clock().now();
    let view = View::Day;
    let (from, to) = view.range(now);
    let buckets = service::all_usage(st.records(), who, view.granularity(), from, to).await?;
    let u = Usage::from_buckets(view, now, &buckets);
    let mut per_key: HashMap<&str, (i64, i64)> = HashMap::new();
    for b in &buckets {
        let e = per_key.entry(b.key_id.as_str()).or_default();
        if b.code == "VALID" {
            e.0 += b.n;
        } else {
            e.1 += b.n;
        }
    }
    let mut top: Vec<(&str, (i64, i64))> = per_key.into_iter().collect();
    top.sort_by(|a, b| (b.1 .0 + b.1 .1).cmp(&(a.1 .0 + a.1 .1)).then(a.0.cmp(b.0)));
    top.truncate(TOP_KEYS);
    let (valid, denied) = (u.valid(), u.denied());
    let rate = if valid + denied > 0 {
        format!("{:.1}%", denied as f64 * 100.0 / (valid + denied) as f64)
    } else {
        "—".into()
    };
    let top = top
        .into_iter()
        .map(|(id, (v, d))| TopKey {
            id: id.to_string(),
            name: id.to_string(),
            valid: v,
            denied: d,
        })
        .collect();
    Ok(OverviewUsage {
        usage: u,
        valid,
        denied,
        rate,
        top,
    })
}

/// The most recent anomalies across every keyspace, for the overview.
pub(crate) async fn recent_anomalies(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
) -> PageResult<RecentAnomalies> {
    let now = st.clock().now();
    let filter = AnomalyFilter {
        page: Page {
            limit: ANOMALIES_SHOWN,
            after: None,
        },
        ..Default::default()
    };
    let items = service::list_anomalies(st.records(), who, filter).await?;
    Ok(RecentAnomalies { items, now })
}

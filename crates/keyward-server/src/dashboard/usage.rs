//! Usage on the dashboard: the key page's chart, source addresses and pattern changes, and the
//! overview's last 24 hours. Reads only what the API's usage endpoints read
//! ([`keyward_store::Store::usage`], `sources`, `list_anomalies`), under the same permission
//! (`ReadKeys`, checked by the pages that call these).

use std::collections::HashMap;

use keyward_core::kinds::AnomalyKind;
use keyward_core::model::{Anomaly, Key, Source};
use keyward_core::time::Timestamp;
use keyward_store::{AnomalyFilter, Page, MAX_SOURCES_PER_KEY};
use maud::{html, Markup};
use serde_json::Value;

use super::chart::{self, group, Usage, View};
use super::ui::{self, when};
use super::PageResult;
use crate::authz::{Allowed, ReadKeys};
use crate::service;
use crate::state::AppState;

/// Anomalies shown on the key page and on the overview.
const ANOMALIES_SHOWN: i64 = 10;
/// Keys listed as the busiest of the last 24 hours on the overview.
const TOP_KEYS: usize = 5;

// ---------------------------------------------------------------- anomalies

/// A human sentence for an anomaly, from its `detail` (as documented in `anomalies.rs`).
fn anomaly_text(a: &Anomaly) -> String {
    let d = &a.detail;
    let int = |k: &str| d.get(k).and_then(Value::as_i64);
    let minute = || {
        d.get("minute")
            .and_then(Value::as_str)
            .and_then(|m| Timestamp::parse_rfc3339(m).ok())
            .map(|t| format!(" in the minute of {}", ui::date_time(t)))
            .unwrap_or_default()
    };
    let baseline = || {
        d.get("baseline_per_minute")
            .and_then(Value::as_f64)
            .map(|b| format!(", against a usual {b} per minute"))
            .unwrap_or_default()
    };
    match a.kind {
        AnomalyKind::Spike => format!(
            "{} valid verifications{}{}.",
            int("valid").map(group).unwrap_or_else(|| "Many".into()),
            minute(),
            baseline()
        ),
        AnomalyKind::DeniedBurst => {
            let codes = d
                .get("by_code")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(c, n)| format!("{} {}", n, chart::code_label(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            format!(
                "{} denied verifications{}{}{}.",
                int("denied").map(group).unwrap_or_else(|| "Many".into()),
                codes,
                minute(),
                baseline()
            )
        }
        AnomalyKind::NewSource => {
            let ip = d.get("ip").and_then(Value::as_str).unwrap_or("?");
            match int("known_sources") {
                Some(n) if n > 0 => format!(
                    "First use from {ip}, after {n} known address{}.",
                    if n == 1 { "" } else { "es" }
                ),
                _ => format!("First use from {ip}, an address not seen for this key before."),
            }
        }
        AnomalyKind::DormantReactivated => match int("silent_secs") {
            Some(s) => format!(
                "Used again after {} without a valid use.",
                ui::human_secs(s)
            ),
            None => "Used again after a long silence.".into(),
        },
    }
}

fn anomaly_kind(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::Spike => "spike",
        AnomalyKind::DeniedBurst => "denied burst",
        AnomalyKind::NewSource => "new source",
        AnomalyKind::DormantReactivated => "dormant, reactivated",
    }
}

/// A list of anomalies; `keys` names them (and links to their key) when given.
pub fn anomaly_list(
    items: &[Anomaly],
    keys: Option<&HashMap<String, String>>,
    now: Timestamp,
) -> Markup {
    html! {
        ul.anomalies {
            @for a in items {
                li data-kind=(a.kind) {
                    div.anomaly-head {
                        span class={ "badge anomaly-" (a.kind) } { (anomaly_kind(a.kind)) }
                        @if let Some(names) = keys {
                            a href={ "/keys/" (a.key_id) } {
                                (names.get(&a.key_id).map(String::as_str).unwrap_or(a.key_id.as_str()))
                            }
                        }
                        span.right { (when(Some(a.detected_at), now, "")) }
                    }
                    div.anomaly-text { (anomaly_text(a)) }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- key page

fn sources_table(sources: &[Source], now: Timestamp) -> Markup {
    html! {
        div.table-wrap { table.sources {
            thead { tr { th { "Address" } th { "First seen" } th { "Last seen" } th.num title="Verifications from this address" { "Count" } } }
            tbody { @for s in sources { tr {
                td.mono { (s.ip) }
                td { (when(Some(s.first_seen), now, "")) }
                td { (when(Some(s.last_seen), now, "")) }
                td.num { (group(s.count)) }
            } } }
        } }
    }
}

/// The key page's usage: the chart (`view`), then its source addresses and its anomalies.
pub async fn key_section(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    key: &Key,
    view: View,
) -> PageResult<Markup> {
    let now = st.clock.now();
    let (from, to) = view.range(now);
    let (_, buckets) = service::key_usage(st, who, &key.id, view.granularity(), from, to).await?;
    let u = Usage::from_buckets(view, now, &buckets);
    let (_, sources) = service::key_sources(st, who, &key.id).await?;
    let filter = AnomalyFilter {
        key_id: Some(key.id.clone()),
        page: Page {
            limit: ANOMALIES_SHOWN,
            after: None,
        },
        ..Default::default()
    };
    let anomalies = service::list_anomalies(st, who, filter).await?;
    let tab = |v: View, label: &str| {
        html! {
            a href={ "/keys/" (key.id) "?usage=" (v.param()) "#usage" }
                aria-current=[(v == view).then_some("true")] data-view=(v.param()) { (label) }
        }
    };
    let valid = u.valid();
    let denied = u.denied();
    Ok(html! {
        section.card #usage {
            div.card-head {
                h2 { "Usage" }
                nav.segmented aria-label="Period" {
                    (tab(View::Day, "24 hours"))
                    (tab(View::Month, "30 days"))
                }
            }
            p.usage-summary {
                strong { (group(valid)) } " valid · "
                strong class=(if denied > 0 { "bad" } else { "" }) { (group(denied)) } " denied"
                span.muted { " in the " (view.period()) ", " (if view == View::Day { "per hour" } else { "per day" }) " (UTC)" }
            }
            (chart::render(&u, "key-usage", &format!("Verifications of {}", key.name), 240))
            (chart::legend(&u))
        }
        div.grid2 {
            section.card #sources {
                div.card-head {
                    h2 { "Recent source addresses" }
                    span.count { (sources.len()) }
                }
                @if sources.is_empty() {
                    (ui::empty("No verification of this key has carried a source address yet."))
                } @else {
                    (sources_table(&sources, now))
                }
                p.hint {
                    "Addresses the verifying service passed as " code { "ip" } ". keyward keeps the "
                    (MAX_SOURCES_PER_KEY) " most recent; many of them can mean one key is shared by several systems."
                }
            }
            section.card #anomalies {
                div.card-head {
                    h2 { "Pattern changes" }
                    span.count { (anomalies.len()) }
                }
                @if anomalies.is_empty() {
                    (ui::empty("No spike, burst of denials, new source or reactivation detected."))
                } @else {
                    (anomaly_list(&anomalies, None, now))
                }
            }
        }
    })
}

// ---------------------------------------------------------------- overview

/// The overview's last 24 hours: totals, the chart and the busiest keys, over every key
/// (dashboard users are never limited to keyspaces: their `Ctx` has `keyspaces: None`).
pub async fn overview_section(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    names: &HashMap<String, String>,
) -> PageResult<Markup> {
    let now = st.clock.now();
    let view = View::Day;
    let (from, to) = view.range(now);
    let buckets = service::all_usage(st, who, view.granularity(), from, to).await?;
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
    Ok(html! {
        section.card #usage-24h {
            div.card-head {
                h2 { "Verifications, last 24 hours" }
                span.muted.small-text { "per hour, UTC" }
            }
            div.usage-split {
                div.usage-main {
                    div.mini-stats {
                        div { span.mini-label { "Valid" } span.mini-value data-total="valid" { (group(valid)) } }
                        div { span.mini-label { "Denied" } span.mini-value.bad[denied > 0] data-total="denied" { (group(denied)) } }
                        div { span.mini-label { "Denial rate" } span.mini-value { (rate) } }
                    }
                    (chart::render(&u, "overview-usage", "Verifications of every key", 170))
                    (chart::legend(&u))
                }
                div.usage-side {
                    h3 { "Busiest keys" }
                    @if top.is_empty() {
                        p.muted { "No key was verified in the last 24 hours." }
                    } @else {
                        ol.top-keys {
                            @for (id, (v, d)) in &top {
                                li {
                                    a href={ "/keys/" (id) } { (names.get(*id).map(String::as_str).unwrap_or(id)) }
                                    span.right {
                                        (group(*v)) " valid"
                                        @if *d > 0 { " · " span.bad { (group(*d)) " denied" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The most recent anomalies across every keyspace, for the overview.
pub async fn recent_anomalies(
    st: &AppState,
    who: &Allowed<'_, ReadKeys>,
    names: &HashMap<String, String>,
) -> PageResult<Markup> {
    let now = st.clock.now();
    let filter = AnomalyFilter {
        page: Page {
            limit: ANOMALIES_SHOWN,
            after: None,
        },
        ..Default::default()
    };
    let items = service::list_anomalies(st, who, filter).await?;
    Ok(html! {
        section.card #recent-anomalies {
            div.card-head { h2 { "Recent pattern changes" } span.count { (items.len()) } }
            @if items.is_empty() {
                (ui::empty("No spike, burst of denials, new source or reactivation detected."))
            } @else {
                (anomaly_list(&items, Some(names), now))
            }
        }
    })
}

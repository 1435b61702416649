//! The markup of usage ([`crate::dashboard::usage`]): the key page's chart, source addresses and
//! pattern changes, and the overview's last 24 hours and recent pattern changes.

use std::collections::HashMap;

use keyward_core::kinds::AnomalyKind;
use keyward_core::model::{Anomaly, Key, Source};
use keyward_core::time::Timestamp;
use keyward_store::MAX_SOURCES_PER_KEY;
use maud::{html, Markup};
use serde_json::Value;

use crate::dashboard::chart::{self, group, Usage, View};
use crate::dashboard::ui::{self, when};

/// The key page's usage: the chart of one view, the key's source addresses and anomalies.
pub(crate) struct KeyUsage<'a> {
    pub(crate) key: &'a Key,
    pub(crate) view: View,
    pub(crate) usage: Usage,
    pub(crate) sources: Vec<Source>,
    pub(crate) anomalies: Vec<Anomaly>,
    pub(crate) now: Timestamp,
}

/// One of the overview's busiest keys of the last 24 hours.
pub(crate) struct TopKey {
    pub(crate) id: String,
    /// The key's name, or its id when the page does not know it.
    pub(crate) name: String,
    pub(crate) valid: i64,
    pub(crate) denied: i64,
}

/// The overview's last 24 hours over every key.
pub(crate) struct OverviewUsage {
    pub(crate) usage: Usage,
    pub(crate) valid: i64,
    pub(crate) denied: i64,
    /// The share of denials, `—` without verifications.
    pub(crate) rate: String,
    /// Busiest first.
    pub(crate) top: Vec<TopKey>,
}

/// The overview's most recent anomalies, across every keyspace.
pub(crate) struct RecentAnomalies {
    pub(crate) items: Vec<Anomaly>,
    pub(crate) now: Timestamp,
}

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
fn anomaly_list(
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
pub(crate) fn key_section(m: &KeyUsage) -> Markup {
    let (key, view, u, now) = (m.key, m.view, &m.usage, m.now);
    let (sources, anomalies) = (&m.sources, &m.anomalies);
    let tab = |v: View, label: &str| {
        html! {
            a href={ "/keys/" (key.id) "?usage=" (v.param()) "#usage" }
                aria-current=[(v == view).then_some("true")] data-view=(v.param()) { (label) }
        }
    };
    let valid = u.valid();
    let denied = u.denied();
    html! {
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
            (chart::render(u, "key-usage", &format!("Verifications of {}", key.name), 240))
            (chart::legend(u))
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
                    (sources_table(sources, now))
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
                    (anomaly_list(anomalies, None, now))
                }
            }
        }
    }
}

// ---------------------------------------------------------------- overview

/// The overview's last 24 hours: totals, the chart and the busiest keys.
pub(crate) fn overview_section(m: &OverviewUsage) -> Markup {
    let (u, valid, denied) = (&m.usage, m.valid, m.denied);
    html! {
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
                        div { span.mini-label { "Denial rate" } span.mini-value { (m.rate) } }
                    }
                    (chart::render(u, "overview-usage", "Verifications of every key", 170))
                    (chart::legend(u))
                }
                div.usage-side {
                    h3 { "Busiest keys" }
                    @if m.top.is_empty() {
                        p.muted { "No key was verified in the last 24 hours." }
                    } @else {
                        ol.top-keys {
                            @for k in &m.top {
                                li {
                                    a href={ "/keys/" (k.id) } { (k.name) }
                                    span.right {
                                        (group(k.valid)) " valid"
                                        @if k.denied > 0 { " · " span.bad { (group(k.denied)) " denied" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The most recent anomalies across every keyspace, for the overview; `names` names their keys.
pub(crate) fn recent_anomalies(m: &RecentAnomalies, names: &HashMap<String, String>) -> Markup {
    let (items, now) = (&m.items, m.now);
    html! {
        section.card #recent-anomalies {
            div.card-head { h2 { "Recent pattern changes" } span.count { (items.len()) } }
            @if items.is_empty() {
                (ui::empty("No spike, burst of denials, new source or reactivation detected."))
            } @else {
                (anomaly_list(items, Some(names), now))
            }
        }
    }
}

//! The markup of the overview and the key pages ([`crate::dashboard::keys`]): list, detail,
//! create form, the one-time plaintext, and revoking every key of an owner.

use std::collections::HashMap;

use keyward_core::kinds::AuditAction;
use keyward_core::model::{AuditEvent, Key, KeyStatus, Keyspace};
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_store::KeyCensus;
use maud::{html, Markup};
use serde_json::Value;

use super::admin::audit_table;
use super::usage::{self, KeyUsage, OverviewUsage, RecentAnomalies};
use crate::census::Census;
use crate::dashboard::chart;
use crate::dashboard::ui::{self, csrf_field, heading, page, row, status_badge, when, Nav};
use crate::dashboard::SignedIn;

/// The statuses in the order the overview's columns and the list's filter show them.
pub(crate) const STATUSES: [KeyStatus; 5] = [
    KeyStatus::Active,
    KeyStatus::Rotating,
    KeyStatus::Disabled,
    KeyStatus::Expired,
    KeyStatus::Revoked,
];

// ---------------------------------------------------------------- overview

/// What the overview shows.
pub(crate) struct Overview<'a> {
    /// The flash of a change just made (`?done=`).
    pub(crate) done: Option<&'static str>,
    pub(crate) may_write_keys: bool,
    pub(crate) may_write_keyspaces: bool,
    pub(crate) may_read_audit: bool,
    /// The keys counted (see [`crate::dashboard::census`]).
    pub(crate) census: &'a Census,
    pub(crate) usage_24h: OverviewUsage,
    pub(crate) keyspaces: &'a [Keyspace],
    /// Keyspace names by id.
    pub(crate) keyspace_names: &'a HashMap<String, String>,
    pub(crate) anomalies: RecentAnomalies,
    /// The newest reported leaks (`key.leaked` audit events); `None` when the role cannot
    /// read the audit trail.
    pub(crate) leaks: Option<Vec<AuditEvent>>,
    /// Key names by id, for the anomalies.
    pub(crate) key_names: &'a HashMap<String, String>,
    pub(crate) now: Timestamp,
}

fn stat(label: &str, value: String, hint: &str, tone: &str) -> Markup {
    html! {
        div class={ "stat " (tone) } {
            div.stat-label { (label) }
            div.stat-value { (value) }
            div.stat-hint { (hint) }
        }
    }
}

pub(crate) fn overview(s: &SignedIn, m: &Overview) -> Markup {
    let (kss, names, now, census) = (m.keyspaces, m.keyspace_names, m.now, m.census);
    let c = census.total();
    let (expiring, inactive) = (&census.expiring, &census.inactive);
    let (no_owner, no_expiry, too_long) = (c.no_owner, c.no_expiry, c.too_long);
    let (n_expiring, n_inactive) = (c.expiring, c.inactive);
    // In STATUSES order.
    let per_status = |c: &KeyCensus| [c.active, c.rotating, c.disabled, c.expired, c.revoked];
    let totals = per_status(&c);

    let key_line = |k: &Key, right: Markup| {
        html! {
            li {
                a href={ "/keys/" (k.id) } { (k.name) }
                span.muted { " · " (names.get(&k.keyspace_id).map(String::as_str).unwrap_or("?")) }
                @if let Some(o) = &k.owner { span.muted { " · " (o) } }
                span.right { (right) }
            }
        }
    };

    let body = html! {
        @if let Some(text) = m.done { (ui::flash("ok", text)) }
        (heading("Overview", Some(html! { "Keys, policies and activity across every keyspace." }), html! {
            @if m.may_write_keys {
                a.button.primary href="/keys/new" data-action="new-key" { "Create key" }
            }
        }))
        @if census.at != now {
            p.muted data-counted-at=(census.at.to_rfc3339()) {
                "Key counts as of " (when(Some(census.at), now, "now")) "; they are taken again at most once a minute."
            }
        }
        div.stats {
            (stat("Active keys", totals[0].to_string(), "valid and in use", "tone-ok"))
            (stat("Rotating", totals[1].to_string(), "in a rotation grace period", "tone-info"))
            (stat("Expiring soon", n_expiring.to_string(), "within the warning window", if n_expiring > 0 { "tone-warn" } else { "" }))
            (stat("Inactive", n_inactive.to_string(), "unused for half the inactivity limit", if n_inactive > 0 { "tone-warn" } else { "" }))
            (stat("Verifications", chart::group(c.calls), &format!("{} denied, all time", chart::group(c.denied)), ""))
        }
        (usage::overview_section(&m.usage_24h))
        section.card {
            div.card-head {
                h2 { "Keyspaces" }
                @if m.may_write_keyspaces {
                    a.button.secondary.small href="/keyspaces/new" { "New keyspace" }
                }
            }
            @if kss.is_empty() {
                (ui::empty("No keyspaces yet. A keyspace groups keys with one prefix and one policy."))
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th { "Keyspace" } th { "Prefix" }
                        @for st_ in STATUSES { th.num { (st_.as_str()) } }
                        th { "Lifetime" }
                    } }
                    tbody {
                        @for ks in kss {
                            @let n_per_status = census.per_keyspace.get(ks.id.as_str()).map(per_status).unwrap_or_default();
                            tr {
                                td { a href={ "/keyspaces/" (ks.id) } { (ks.name) } }
                                td { code { (ks.prefix) "_" } }
                                @for (i, n) in n_per_status.iter().enumerate() {
                                    td.num {
                                        @if *n > 0 {
                                            a href={ "/keys" (ui::query(&[("keyspace", Some(&ks.id)), ("status", Some(STATUSES[i].as_str()))])) } { (n) }
                                        } @else { span.muted { "0" } }
                                    }
                                }
                                td { (ks.policy.max_lifetime_secs.map(ui::human_secs).unwrap_or_else(|| "unlimited".into())) }
                            }
                        }
                    }
                } }
            }
        }
        div.grid2 {
            section.card {
                div.card-head { h2 { "Expiring soon" } span.count { (n_expiring) } }
                @if expiring.is_empty() { (ui::empty("No key expires within its warning window.")) }
                @else { ul.keylist { @for k in expiring.iter().take(10) { (key_line(k, when(k.expires_at, now, "never"))) } } }
            }
            section.card {
                div.card-head { h2 { "Inactive for long" } span.count { (n_inactive) } }
                @if inactive.is_empty() { (ui::empty("Every live key has been used recently.")) }
                @else { ul.keylist { @for k in inactive.iter().take(10) {
                    (key_line(k, html! { "last used " (when(k.last_used_at, now, "never")) }))
                } } }
            }
        }
        div.grid2 {
            section.card {
                div.card-head {
                    h2 { "Policy findings" }
                    @if m.may_read_audit {
                        a.button.secondary.small href="/reports" data-action="reports" { "Inventory report" }
                    }
                }
                ul.findings {
                    li { span { "Live keys without an owner" } strong class=(if no_owner > 0 { "warn" } else { "" }) { (no_owner) } }
                    li { span { "Live keys that never expire" } strong class=(if no_expiry > 0 { "warn" } else { "" }) { (no_expiry) } }
                    li { span { "Live keys beyond their keyspace's max lifetime" } strong class=(if too_long > 0 { "warn" } else { "" }) { (too_long) } }
                }
            }
            (usage::recent_anomalies(&m.anomalies, m.key_names))
        }
        @if let Some(leaks) = &m.leaks {
            section.card #leaks {
                div.card-head { h2 { "Reported leaks" } span.count { (leaks.len()) } }
                @if leaks.is_empty() { (ui::empty("No leak has been reported.")) }
                @else { ul.keylist { @for e in leaks {
                    li {
                        a href={ "/keys/" (e.target_id) } {
                            (m.key_names.get(&e.target_id).map_or(e.target_id.as_str(), String::as_str))
                        }
                        span.muted { " " (ui::relative(e.at, now)) " · " (leak_source(e)) }
                    }
                } } }
            }
        }
    };
    page("Overview", s, Nav::Overview, body)
}

/// Where a reported leak was found, from its audit event.
fn leak_source(e: &AuditEvent) -> String {
    e.changes
        .get("source")
        .and_then(|c| c.get(1))
        .and_then(Value::as_str)
        .unwrap_or("source not given")
        .to_string()
}

// ---------------------------------------------------------------- list

/// The list's sort orders.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sort {
    Newest,
    Oldest,
    Name,
    Expires,
    LastUsed,
    Calls,
}

/// Each sort order: (order, query value, label).
pub(crate) const SORTS: [(Sort, &str, &str); 6] = [
    (Sort::Newest, "newest", "Newest first"),
    (Sort::Oldest, "oldest", "Oldest first"),
    (Sort::Name, "name", "Name"),
    (Sort::Expires, "expires", "Expires soonest"),
    (Sort::LastUsed, "last_used", "Least recently used"),
    (Sort::Calls, "calls", "Most verifications"),
];

/// One page of the key list, with its filters.
pub(crate) struct KeyList<'a> {
    pub(crate) may_write_keys: bool,
    pub(crate) error: Option<&'static str>,
    /// The filters as typed, to fill the form again.
    pub(crate) search: &'a str,
    pub(crate) keyspace: Option<&'a str>,
    pub(crate) owner: &'a str,
    pub(crate) status: Option<KeyStatus>,
    pub(crate) label: &'a str,
    pub(crate) sort: Sort,
    pub(crate) keyspaces: &'a [Keyspace],
    /// Keyspace names by id.
    pub(crate) keyspace_names: &'a HashMap<String, String>,
    /// A warning over the list (sorting covered only part of the matches).
    pub(crate) note: Option<String>,
    pub(crate) rows: Vec<Key>,
    pub(crate) prev: Option<String>,
    pub(crate) next: Option<String>,
    pub(crate) now: Timestamp,
}

pub(crate) fn list(s: &SignedIn, m: &KeyList) -> Markup {
    let (kss, names, rows, now) = (m.keyspaces, m.keyspace_names, &m.rows, m.now);
    let (status, sort) = (m.status, m.sort);
    let body = html! {
        (heading("Keys", None, html! {
            @if m.may_write_keys {
                a.button.secondary href="/keys/revoke-owner" { "Revoke all keys of an owner" }
                a.button.primary href="/keys/new" data-action="new-key" { "Create key" }
            }
        }))
        (ui::error_box(m.error))
        form.filters method="get" action="/keys" {
            input type="search" name="q" value=(m.search) placeholder="Search by name" aria-label="Search by name";
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in kss {
                    option value=(ks.id) selected[m.keyspace == Some(ks.id.as_str())] { (ks.name) }
                }
            }
            input type="text" name="owner" value=(m.owner) placeholder="Owner" aria-label="Owner";
            select name="status" aria-label="Status" {
                option value="" { "Any status" }
                @for x in STATUSES {
                    option value=(x.as_str()) selected[status == Some(x)] { (x.as_str()) }
                }
            }
            input type="text" name="label" value=(m.label) placeholder="Label, e.g. env:prod" aria-label="Label";
            select name="sort" aria-label="Sort" {
                @for (x, k, l) in SORTS {
                    option value=(k) selected[sort == x] { (l) }
                }
            }
            button.secondary type="submit" { "Apply" }
            a.button.ghost href="/keys" { "Reset" }
        }
        @if let Some(n) = &m.note { (ui::flash("warn", n)) }
        section.card.flush {
            @if rows.is_empty() {
                (ui::empty("No key matches these filters."))
            } @else {
                div.table-wrap { table.keys {
                    thead { tr {
                        th { "Name" } th { "Keyspace" } th { "Owner" } th { "Status" }
                        th { "Created" } th { "Expires" } th { "Last used" } th.num { "Calls" }
                    } }
                    tbody {
                        @for k in rows {
                            tr {
                                td {
                                    a.strong href={ "/keys/" (k.id) } { (k.name) }
                                    div.mono.muted { (k.start) "…" (k.end) }
                                }
                                td { (names.get(&k.keyspace_id).map(String::as_str).unwrap_or("?")) }
                                td { @if let Some(o) = &k.owner {
                                    a href={ "/keys" (ui::query(&[("owner", Some(o))])) } { (o) }
                                } @else { span.muted { "—" } } }
                                td { (status_badge(k.status(now))) }
                                td { (when(Some(k.created_at), now, "")) }
                                td { (when(k.expires_at, now, "never")) }
                                td { (when(k.last_used_at, now, "never")) }
                                td.num { (k.call_count) }
                            }
                        }
                    }
                } }
            }
        }
        nav.pager {
            @if let Some(p) = &m.prev { a.button.secondary href=(p) { "← First page" } }
            @if let Some(n) = &m.next { a.button.secondary href=(n) { "Next page →" } }
        }
    };
    page("Keys", s, Nav::Keys, body)
}

// ---------------------------------------------------------------- create

/// The create form's values, kept when the form comes back with an error. Read from the post
/// and turned into the API's body by the handlers ([`crate::dashboard::keys`]).
#[derive(Default)]
pub(crate) struct KeyForm {
    pub(crate) keyspace_id: String,
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) scopes: String,
    pub(crate) labels: String,
    pub(crate) expiry: String,
    pub(crate) ttl: String,
    pub(crate) rl_limit: String,
    pub(crate) rl_window: String,
    pub(crate) remaining: String,
    pub(crate) cidrs: String,
    pub(crate) disabled: bool,
}

/// The create form: the keyspaces to choose from, the values so far and what was wrong.
pub(crate) fn new_key(s: &SignedIn, kss: &[Keyspace], v: &KeyForm, error: Option<&str>) -> Markup {
    let expiry_opts = [
        ("policy", "Keyspace default (its max lifetime, if any)"),
        ("7d", "7 days"),
        ("30d", "30 days"),
        ("90d", "90 days"),
        ("180d", "180 days"),
        ("365d", "1 year"),
    ];
    let body = html! {
        (heading("Create key", Some(html! { "The key is shown once, right after it is created." }), html! {}))
        (ui::error_box(error))
        @if kss.is_empty() {
            div.card { (ui::empty("Create a keyspace first: every key belongs to one.")) }
        } @else {
        form.card.form-grid method="post" action="/keys" {
            (csrf_field(s))
            div.field {
                label for="keyspace_id" { "Keyspace" }
                select #keyspace_id name="keyspace_id" required {
                    @for ks in kss {
                        option value=(ks.id) selected[v.keyspace_id == ks.id] { (ks.name) " (" (ks.prefix) "_)" }
                    }
                }
            }
            div.field {
                label for="name" { "Name" }
                input #name name="name" value=(v.name) required maxlength="200" placeholder="billing prod";
            }
            div.field {
                label for="owner" { "Owner" }
                input #owner name="owner" value=(v.owner) maxlength="200" placeholder="team-billing";
                p.hint { "A person or team accountable for the key. Most policies require one." }
            }
            div.field {
                label for="scopes" { "Scopes" }
                input #scopes name="scopes" value=(v.scopes) placeholder="orders:read orders:write";
                p.hint { "Separated by spaces or commas. " code { "orders:*" } " grants every orders scope." }
            }
            div.field {
                label for="expiry" { "Expires" }
                select #expiry name="expiry" {
                    @for (val, text) in expiry_opts {
                        option value=(val) selected[v.expiry == val] { (text) }
                    }
                }
                input #ttl name="ttl" value=(v.ttl) placeholder="or a lifetime such as 45d";
            }
            div.field {
                label for="labels" { "Labels" }
                textarea #labels name="labels" rows="2" placeholder="env=prod" { (v.labels) }
                p.hint { "One name=value per line." }
            }
            details.field.span2 {
                summary { "Limits: rate limit, quota, allowed addresses" }
                div.form-grid.inner {
                    div.field {
                        label for="rl_limit" { "Rate limit (requests)" }
                        input #rl_limit name="rl_limit" inputmode="numeric" value=(v.rl_limit) placeholder="100";
                    }
                    div.field {
                        label for="rl_window" { "per window" }
                        input #rl_window name="rl_window" value=(v.rl_window) placeholder="60s";
                    }
                    div.field {
                        label for="remaining" { "Quota (total verifications)" }
                        input #remaining name="remaining" inputmode="numeric" value=(v.remaining) placeholder="unlimited";
                    }
                    div.field {
                        label for="cidrs" { "Allowed addresses (CIDR)" }
                        textarea #cidrs name="cidrs" rows="2" placeholder="203.0.113.0/24" { (v.cidrs) }
                    }
                }
            }
            div.field.span2 {
                label.check { input type="checkbox" name="disabled" checked[v.disabled]; " Create it disabled" }
            }
            div.form-actions.span2 {
                a.button.ghost href="/keys" { "Cancel" }
                button.primary type="submit" data-action="create-key" { "Create key" }
            }
        }
        }
    };
    page("Create key", s, Nav::Keys, body)
}

/// The one page that shows a plaintext (the handler marks it `no-store`).
fn secret_page(s: &SignedIn, title: &str, key: &Key, plaintext: &Secret, lead: Markup) -> Markup {
    let body = html! {
        (heading(title, None, html! {}))
        div.card.secret-card {
            div.warning role="alert" {
                strong { "Copy this key now. " }
                "It is shown only once: keyward stores only its SHA-256 and cannot show it again. "
                "Put it in your secret manager; if it is lost, rotate the key."
            }
            (lead)
            div.secret-row {
                code #plaintext.secret { (plaintext.expose()) }
                button.primary type="button" data-copy="plaintext" { "Copy" }
            }
            dl.meta {
                (row("Key id", html! { code { (key.id) } }))
                (row("Name", html! { (key.name) }))
                (row("Expires", html! { (key.expires_at.map(ui::date_time).unwrap_or_else(|| "never".into())) }))
            }
            div.form-actions {
                a.button.primary href={ "/keys/" (key.id) } data-action="done" { "I have stored it — show the key" }
            }
        }
    };
    page(title, s, Nav::Keys, body)
}

/// A new key's one-time plaintext.
pub(crate) fn key_created(s: &SignedIn, key: &Key, plaintext: &Secret) -> Markup {
    secret_page(
        s,
        "Key created",
        key,
        plaintext,
        html! { p { "The key " strong { (key.name) } " is ready to use." } },
    )
}

/// The successor's one-time plaintext after rotating key `old`.
pub(crate) fn key_rotated(s: &SignedIn, key: &Key, plaintext: &Secret, old: &str) -> Markup {
    secret_page(
        s,
        "Key rotated",
        key,
        plaintext,
        html! { p { "This is the successor of " a href={ "/keys/" (old) } { "the old key" }
        ", which keeps working until its grace period ends. Deploy the new key before then." } },
    )
}

// ---------------------------------------------------------------- detail

/// A key with its lineage, usage and audit events.
pub(crate) struct KeyDetail<'a> {
    /// The flash of a change just made (`?done=`).
    pub(crate) done: Option<&'static str>,
    pub(crate) key: &'a Key,
    pub(crate) keyspace: Option<&'a Keyspace>,
    pub(crate) status: KeyStatus,
    /// Rotation lineage: predecessors (oldest first), then successors.
    pub(crate) before: Vec<Key>,
    pub(crate) after: Vec<Key>,
    /// `None` when the role cannot read the audit trail.
    pub(crate) events: Option<Vec<AuditEvent>>,
    pub(crate) usage: KeyUsage<'a>,
    /// The user may change keys and this one is not revoked: the action forms are shown.
    pub(crate) can_write: bool,
    pub(crate) live: bool,
    pub(crate) default_grace: i64,
    /// The grace periods a rotation offers: (seconds, label).
    pub(crate) graces: Vec<(i64, String)>,
    pub(crate) now: Timestamp,
}

pub(crate) fn detail(s: &SignedIn, m: &KeyDetail) -> Markup {
    let (key, ks, status, now) = (m.key, m.keyspace, m.status, m.now);
    let (can_write, live) = (m.can_write, m.live);
    let (before, after, events) = (&m.before, &m.after, &m.events);

    let lineage_item = |k: &Key, this: bool| {
        html! {
            li class=(if this { "this" } else { "" }) {
                @if this { strong { (k.start) "…" (k.end) } " (this key)" }
                @else { a href={ "/keys/" (k.id) } { (k.start) "…" (k.end) } }
                " " (status_badge(k.status(now)))
                span.muted { " created " (ui::date(k.created_at)) }
            }
        }
    };

    let leak = events.as_ref().and_then(|ev| {
        ev.iter()
            .find(|e| e.action == AuditAction::KeyLeaked.as_str())
    });
    let body = html! {
        @if let Some(text) = m.done { (ui::flash("ok", text)) }
        @if let Some(e) = leak {
            (ui::flash("error", &format!("A leak of this key was reported {} ({}).", ui::relative(e.at, now), leak_source(e))))
        } @else if key.revoked_reason.as_deref() == Some("leaked") {
            (ui::flash("error", "This key was revoked because a leak of it was reported."))
        }
        div.crumbs { a href="/keys" { "Keys" } " / " (key.name) }
        (heading(&key.name, Some(html! { (status_badge(status)) " " code.muted { (key.id) } }), html! {
            @if can_write && live {
                @if status != KeyStatus::Expired {
                    form.inline method="post" action={ "/keys/" (key.id) "/enabled" } {
                        (csrf_field(s))
                        @if key.enabled {
                            input type="hidden" name="enabled" value="false";
                            button.secondary type="submit" data-action="disable" { "Disable" }
                        } @else {
                            input type="hidden" name="enabled" value="true";
                            button.secondary type="submit" data-action="enable" { "Enable" }
                        }
                    }
                }
            }
        }))
        div.detail-grid {
            section.card {
                h2 { "Details" }
                dl.meta {
                    (row("Key", html! { code { (key.start) "…" (key.end) } }))
                    (row("Keyspace", html! { @if let Some(ks) = &ks { a href={ "/keyspaces/" (ks.id) } { (ks.name) } } @else { (key.keyspace_id) } }))
                    (row("Owner", html! { @if let Some(o) = &key.owner { a href={ "/keys" (ui::query(&[("owner", Some(o))])) } { (o) } } @else { span.muted { "none" } } }))
                    (row("Scopes", html! { @if key.scopes.is_empty() { span.muted { "none" } } @else { @for sc in &key.scopes { span.chip { (sc) } } } }))
                    (row("Labels", html! { @if key.labels.is_empty() { span.muted { "none" } } @else { @for (k, v) in &key.labels { span.chip { (k) "=" (v) } } } }))
                    (row("Created", html! { (ui::date_time(key.created_at)) " by " (ui::actor(&key.created_by)) }))
                    (row("Expires", html! { @if let Some(e) = key.expires_at { (ui::date_time(e)) " (" (ui::relative(e, now)) ")" } @else { span.muted { "never" } } }))
                    (row("Last used", when(key.last_used_at, now, "never")))
                    (row("Verifications", html! { (key.call_count) " valid · " (key.denied_count) " denied" }))
                    (row("Rate limits", ui::limits(&key.ratelimits)))
                    (row("Quota left", html! { @if let Some(r) = key.remaining { (r) } @else { span.muted { "unlimited" } } }))
                    @if let Some(r) = &key.refill {
                        (row("Refills", html! { (ui::refill(r)) @if let Some(at) = key.refilled_at { span.muted { " · this period since " (ui::date_time(at)) } } }))
                    }
                    (row("Allowed addresses", html! { @match &key.allowed_cidrs { Some(c) if !c.is_empty() => { @for x in c { span.chip { (x) } } } _ => { span.muted { "any" } } } }))
                    @if let Some(x) = &key.external_id {
                        (row("Imported", html! { "external id " code { (x) } }))
                    }
                    @if !key.meta.is_empty() {
                        (row("Meta", html! { code.wrap { (ui::json_text(&Value::Object(key.meta.clone()))) } }))
                    }
                    @if let Some(at) = key.revoked_at {
                        (row("Revoked", html! { (ui::date_time(at)) @if let Some(b) = &key.revoked_by { " by " (ui::actor(b)) } }))
                        (row("Reason", html! { (key.revoked_reason.as_deref().unwrap_or("")) }))
                    }
                }
            }
            div.side {
                @if can_write && live {
                    @if key.rotated_to.is_none() && status != KeyStatus::Expired {
                        details.card.action-card {
                            summary { "Rotate key" }
                            form method="post" action={ "/keys/" (key.id) "/rotate" } {
                                (csrf_field(s))
                                p.hint { "Issues a successor with the same settings. The old key keeps working during the grace period." }
                                label for="grace" { "Grace period of the old key" }
                                select #grace name="grace_secs" {
                                    option value="" selected { "Policy default (" (ui::human_secs(m.default_grace)) ")" }
                                    @for (g, l) in &m.graces { option value=(g) { (l) } }
                                }
                                label for="rotate-reason" { "Reason (optional)" }
                                input #rotate-reason name="reason" maxlength="500" placeholder="scheduled rotation";
                                button.primary type="submit" data-action="rotate" { "Rotate" }
                            }
                        }
                    }
                    details.card.action-card.danger {
                        summary { "Revoke key" }
                        form method="post" action={ "/keys/" (key.id) "/revoke" } {
                            (csrf_field(s))
                            p.hint { "Verifications of this key answer REVOKED from the moment you confirm. This cannot be undone." }
                            label for="reason" { "Reason (required)" }
                            textarea #reason name="reason" rows="2" required maxlength="500" placeholder="leaked in a CI log" {}
                            label.check { input type="checkbox" name="confirm" value="yes" required; " I understand this cannot be undone" }
                            button.danger type="submit" data-action="revoke" { "Revoke key" }
                        }
                    }
                }
                section.card {
                    h2 { "Rotation lineage" }
                    @if before.is_empty() && after.is_empty() {
                        p.muted { "This key has not been rotated." }
                    } @else {
                        ol.lineage {
                            @for k in before { (lineage_item(k, false)) }
                            (lineage_item(key, true))
                            @for k in after { (lineage_item(k, false)) }
                        }
                    }
                }
            }
        }
        (usage::key_section(&m.usage))
        section.card {
            h2 { "Audit events" }
            @match events {
                None => { p.muted { "Your role cannot read the audit trail." } }
                Some(ev) if ev.is_empty() => { p.muted { "No events." } }
                Some(ev) => { (audit_table(ev, now, false)) }
            }
        }
    };
    page(&key.name, s, Nav::Keys, body)
}

// ---------------------------------------------------------------- revoke all of an owner

/// The revoke-owner page: the search form, then the owner's live keys and the confirmation.
pub(crate) struct RevokeOwner<'a> {
    pub(crate) keyspaces: &'a [Keyspace],
    pub(crate) owner: &'a str,
    /// The keyspace searched, empty for all.
    pub(crate) keyspace: &'a str,
    /// The owner's live keys, once an owner was asked for.
    pub(crate) preview: Option<(&'a [Key], Timestamp)>,
    pub(crate) error: Option<&'a str>,
}

pub(crate) fn revoke_owner(s: &SignedIn, m: &RevokeOwner) -> Markup {
    let (kss, owner, keyspace) = (m.keyspaces, m.owner, m.keyspace);
    let body = html! {
        div.crumbs { a href="/keys" { "Keys" } " / revoke all keys of an owner" }
        (heading("Revoke all keys of an owner", Some(html! { "For someone who left, or a team whose credentials are compromised." }), html! {}))
        (ui::error_box(m.error))
        form.card.filters method="get" action="/keys/revoke-owner" {
            input name="owner" value=(owner) placeholder="Owner, e.g. team-billing" required aria-label="Owner";
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in kss { option value=(ks.id) selected[keyspace == ks.id] { (ks.name) } }
            }
            button.secondary type="submit" { "Show their keys" }
        }
        @if let Some((keys, now)) = m.preview {
            section.card {
                h2 { (keys.len()) " live key" @if keys.len() != 1 { "s" } " of " (owner) }
                @if keys.is_empty() {
                    (ui::empty("Nothing to revoke: this owner has no active, disabled or rotating key here."))
                } @else {
                    ul.keylist {
                        @for k in keys {
                            li { a href={ "/keys/" (k.id) } { (k.name) } span.muted { " " (k.start) "…" (k.end) } span.right { (status_badge(k.status(now))) } }
                        }
                    }
                    form.stack method="post" action="/keys/revoke-owner" {
                        (csrf_field(s))
                        input type="hidden" name="owner" value=(owner);
                        input type="hidden" name="keyspace_id" value=(keyspace);
                        label for="reason" { "Reason (required)" }
                        textarea #reason name="reason" rows="2" required maxlength="500" placeholder="left the company" {}
                        label.check { input type="checkbox" name="confirm" value="yes" required; " Revoke all " (keys.len()) " keys. This cannot be undone." }
                        button.danger type="submit" data-action="revoke-owner" { "Revoke all" }
                    }
                }
            }
        }
    };
    page("Revoke keys of an owner", s, Nav::Keys, body)
}

/// The keys just revoked for `owner`.
pub(crate) fn owner_revoked(s: &SignedIn, owner: &str, ids: &[String]) -> Markup {
    let body = html! {
        (heading("Keys revoked", None, html! {}))
        div.card {
            (ui::flash("ok", &format!("Revoked {} key{} of {owner}.", ids.len(), if ids.len() == 1 { "" } else { "s" })))
            ul.keylist { @for id in ids { li { a href={ "/keys/" (id) } { code { (id) } } } } }
            p { a.button.secondary href={ "/keys" (ui::query(&[("owner", Some(owner))])) } { "Show this owner's keys" } }
        }
    };
    page("Keys revoked", s, Nav::Keys, body)
}

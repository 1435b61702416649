//! The overview and everything about keys: list, detail, create, rotate, enable/disable,
//! revoke, and revoke every key of an owner.
//!
//! Inputs from forms are turned into the same request types the API parses (through
//! `serde_json`), and handed to [`crate::service`]: the rules are the API's, written once.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::model::{Key, KeyStatus, Keyspace, Permission};
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_store::{AuditFilter, KeyFilter, Page};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::chart::{self, View};
use super::ui::{self, heading, page, row, status_badge, when, Nav};
use super::usage;
use super::{csrf_field, redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz::{self, Allowed, Ctx};
use crate::error::ErrorCode;
use crate::http::extract::{encode_cursor, time_cursor};
use crate::reports;
use crate::service;
use crate::state::AppState;

/// The overview reads at most this many keys (newest first) for its counts.
const OVERVIEW_CAP: usize = 20_000;
/// Sorting other than "newest first" happens in memory over at most this many matches.
const SORT_CAP: usize = 5_000;
const PAGE_SIZE: i64 = 50;

fn parse_input<T: serde::de::DeserializeOwned>(v: Value) -> PageResult<T> {
    serde_json::from_value(v)
        .map_err(|e| PageError::Failed(StatusCode::BAD_REQUEST, format!("Invalid input: {e}")))
}

/// Keys matching `filter`, newest first, up to `cap` (and whether there were more).
async fn scan_keys(
    st: &AppState,
    who: &Allowed<'_, authz::ReadKeys>,
    mut filter: KeyFilter,
    cap: usize,
) -> PageResult<(Vec<Key>, bool)> {
    let mut out = Vec::new();
    filter.page = Page {
        limit: 500,
        after: None,
    };
    loop {
        let rows = service::list_keys(st, who, filter.clone()).await?;
        let n = rows.len();
        let last = rows.last().map(|k| (k.created_at.millis(), k.id.clone()));
        out.extend(rows);
        if out.len() >= cap {
            out.truncate(cap);
            return Ok((out, true));
        }
        match last {
            Some(pos) if n == 500 => filter.page.after = Some(pos),
            _ => return Ok((out, false)),
        }
    }
}

/// Keyspaces the context may see (for names and pickers).
pub(super) async fn all_keyspaces(st: &AppState, ctx: &Ctx) -> PageResult<Vec<Keyspace>> {
    let who = ctx.allow::<authz::ReadKeys>()?;
    let page = Page {
        limit: 500,
        after: None,
    };
    Ok(service::list_keyspaces(st, &who, &page).await?)
}

fn keyspace_names(kss: &[Keyspace]) -> HashMap<String, String> {
    kss.iter().map(|k| (k.id.clone(), k.name.clone())).collect()
}

fn done_message(q: &QueryMap) -> Option<Markup> {
    let text = match q.get("done")? {
        "welcome" => {
            "Welcome! You are the first administrator. Create a keyspace to start issuing keys."
        }
        "revoked" => "The key was revoked. Verifications of it now answer REVOKED.",
        "disabled" => "The key was disabled.",
        "enabled" => "The key was enabled.",
        "policy" => {
            "The policy was saved. It applies to keys created from now on and to every sweep."
        }
        "keyspace" => "The keyspace was created.",
        "token_revoked" => "The token was revoked.",
        _ => return None,
    };
    Some(ui::flash("ok", text))
}

// ---------------------------------------------------------------- overview

const STATUSES: [KeyStatus; 5] = [
    KeyStatus::Active,
    KeyStatus::Rotating,
    KeyStatus::Disabled,
    KeyStatus::Expired,
    KeyStatus::Revoked,
];

fn stat(label: &str, value: String, hint: &str, tone: &str) -> Markup {
    html! {
        div class={ "stat " (tone) } {
            div.stat-label { (label) }
            div.stat-value { (value) }
            div.stat-hint { (hint) }
        }
    }
}

pub async fn overview(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock.now();
    let kss = all_keyspaces(&st, &ctx).await?;
    let spaces: HashMap<&str, &Keyspace> = kss.iter().map(|k| (k.id.as_str(), k)).collect();
    let names = keyspace_names(&kss);
    let (keys, capped) = scan_keys(
        &st,
        &who,
        KeyFilter {
            now,
            ..Default::default()
        },
        OVERVIEW_CAP,
    )
    .await?;

    let mut per_ks: HashMap<&str, [usize; 5]> = HashMap::new();
    let mut totals = [0usize; 5];
    let (mut calls, mut denied) = (0i64, 0i64);
    let mut expiring: Vec<&Key> = Vec::new();
    let mut inactive: Vec<&Key> = Vec::new();
    let (mut no_owner, mut no_expiry, mut too_long) = (0, 0, 0);
    for k in &keys {
        let status = k.status(now);
        let i = STATUSES.iter().position(|x| *x == status).unwrap_or(0);
        per_ks.entry(k.keyspace_id.as_str()).or_default()[i] += 1;
        totals[i] += 1;
        calls += k.call_count;
        denied += k.denied_count;
        if matches!(status, KeyStatus::Revoked | KeyStatus::Expired) {
            continue;
        }
        // The inventory report's rules, so the overview and the report agree.
        let Some(ks) = spaces.get(k.keyspace_id.as_str()) else {
            continue;
        };
        let f = reports::findings(k, ks, now);
        if f.contains(&"expiring_soon") {
            expiring.push(k);
        }
        if f.contains(&"inactive") {
            inactive.push(k);
        }
        no_owner += usize::from(f.contains(&"no_owner"));
        no_expiry += usize::from(f.contains(&"no_expiry"));
        too_long += usize::from(f.contains(&"exceeds_max_lifetime"));
    }
    let key_names: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.id.clone(), k.name.clone()))
        .collect();
    let usage_24h = usage::overview_section(&st, &who, &key_names).await?;
    let anomalies = usage::recent_anomalies(&st, &who, &key_names).await?;
    expiring.sort_by_key(|k| k.expires_at);
    inactive.sort_by_key(|k| k.last_used_at.unwrap_or(k.created_at));
    let n_expiring = expiring.len();
    let n_inactive = inactive.len();

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
        @if let Some(m) = done_message(&q) { (m) }
        (heading("Overview", Some(html! { "Keys, policies and activity across every keyspace." }), html! {
            @if s.may(Permission::WriteKeys) {
                a.button.primary href="/keys/new" data-action="new-key" { "Create key" }
            }
        }))
        @if capped {
            (ui::flash("warn", &format!("Counts cover the newest {OVERVIEW_CAP} keys.")))
        }
        div.stats {
            (stat("Active keys", totals[0].to_string(), "valid and in use", "tone-ok"))
            (stat("Rotating", totals[1].to_string(), "in a rotation grace period", "tone-info"))
            (stat("Expiring soon", n_expiring.to_string(), "within the warning window", if n_expiring > 0 { "tone-warn" } else { "" }))
            (stat("Inactive", n_inactive.to_string(), "unused for half the inactivity limit", if n_inactive > 0 { "tone-warn" } else { "" }))
            (stat("Verifications", chart::group(calls), &format!("{} denied, all time", chart::group(denied)), ""))
        }
        (usage_24h)
        section.card {
            div.card-head {
                h2 { "Keyspaces" }
                @if s.may(Permission::WriteKeyspaces) {
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
                        @for ks in &kss {
                            @let c = per_ks.get(ks.id.as_str()).copied().unwrap_or_default();
                            tr {
                                td { a href={ "/keyspaces/" (ks.id) } { (ks.name) } }
                                td { code { (ks.prefix) "_" } }
                                @for (i, n) in c.iter().enumerate() {
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
                    @if s.may(Permission::ReadAudit) {
                        a.button.secondary.small href="/reports" data-action="reports" { "Inventory report" }
                    }
                }
                ul.findings {
                    li { span { "Live keys without an owner" } strong class=(if no_owner > 0 { "warn" } else { "" }) { (no_owner) } }
                    li { span { "Live keys that never expire" } strong class=(if no_expiry > 0 { "warn" } else { "" }) { (no_expiry) } }
                    li { span { "Live keys beyond their keyspace's max lifetime" } strong class=(if too_long > 0 { "warn" } else { "" }) { (too_long) } }
                }
            }
            (anomalies)
        }
    };
    Ok(page("Overview", &s, Nav::Overview, body))
}

// ---------------------------------------------------------------- list

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Newest,
    Oldest,
    Name,
    Expires,
    LastUsed,
    Calls,
}

const SORTS: [(Sort, &str, &str); 6] = [
    (Sort::Newest, "newest", "Newest first"),
    (Sort::Oldest, "oldest", "Oldest first"),
    (Sort::Name, "name", "Name"),
    (Sort::Expires, "expires", "Expires soonest"),
    (Sort::LastUsed, "last_used", "Least recently used"),
    (Sort::Calls, "calls", "Most verifications"),
];

pub async fn list(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock.now();
    let kss = all_keyspaces(&st, &ctx).await?;
    let names = keyspace_names(&kss);
    let mut error = None;
    let status = match q.get("status") {
        Some(v) => match KeyStatus::parse(v) {
            Some(x) => Some(x),
            None => {
                error = Some("Unknown status.");
                None
            }
        },
        None => None,
    };
    let label = match q.get("label") {
        Some(l) => match l.split_once([':', '=']) {
            Some((k, v)) => Some((k.trim().to_string(), v.trim().to_string())),
            None => {
                error = Some("A label filter is name:value, e.g. env:prod.");
                None
            }
        },
        None => None,
    };
    let sort_key = q.get("sort").unwrap_or("newest");
    let sort = SORTS
        .iter()
        .find(|(_, k, _)| *k == sort_key)
        .map(|(s, _, _)| *s)
        .unwrap_or(Sort::Newest);
    let filter = KeyFilter {
        keyspace_ids: q.get("keyspace").map(|k| vec![k.to_string()]),
        owner: q.get("owner").map(str::to_string),
        status,
        label: label.clone(),
        name_contains: q.get("q").map(str::to_string),
        now,
        ..Default::default()
    };
    let fp = format!(
        "dash-keys|{:?}|{:?}|{:?}|{:?}|{:?}",
        filter.keyspace_ids, filter.owner, filter.status, filter.label, filter.name_contains
    );
    let base_query = |extra: (&str, Option<&str>)| {
        ui::query(&[
            ("q", q.get("q")),
            ("keyspace", q.get("keyspace")),
            ("owner", q.get("owner")),
            ("status", q.get("status")),
            ("label", q.get("label")),
            ("sort", (sort != Sort::Newest).then_some(sort_key)),
            extra,
        ])
    };
    let (rows, next_link, prev_link, note): (
        Vec<Key>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = if sort == Sort::Newest {
        // A cursor from another filter (or a hand-edited one) starts at the first page.
        let after = time_cursor(q.get("cursor").map(str::to_string), &fp).unwrap_or_default();
        let mut f = filter.clone();
        f.page = Page {
            limit: PAGE_SIZE + 1,
            after: after.clone(),
        };
        let mut rows = service::list_keys(&st, &who, f).await?;
        let more = rows.len() as i64 > PAGE_SIZE;
        rows.truncate(PAGE_SIZE as usize);
        let next = more
            .then(|| {
                rows.last()
                    .map(|k| encode_cursor(&format!("{}:{}", k.created_at.millis(), k.id), &fp))
            })
            .flatten()
            .map(|c| format!("/keys{}", base_query(("cursor", Some(&c)))));
        let first = after
            .is_some()
            .then(|| format!("/keys{}", base_query(("cursor", None))));
        (rows, next, first, None)
    } else {
        let (mut all, capped) = scan_keys(&st, &who, filter.clone(), SORT_CAP).await?;
        match sort {
            Sort::Oldest => all.reverse(),
            Sort::Name => all.sort_by_key(|k| k.name.to_lowercase()),
            Sort::Expires => all.sort_by_key(|k| k.expires_at.map_or(i64::MAX, |t| t.millis())),
            Sort::LastUsed => all.sort_by_key(|k| k.last_used_at.map_or(i64::MIN, |t| t.millis())),
            Sort::Calls => all.sort_by_key(|k| std::cmp::Reverse(k.call_count)),
            Sort::Newest => {}
        }
        let page_no: usize = q
            .get("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1);
        let start = (page_no - 1) * PAGE_SIZE as usize;
        let more = all.len() > start + PAGE_SIZE as usize;
        let rows: Vec<Key> = all
            .into_iter()
            .skip(start)
            .take(PAGE_SIZE as usize)
            .collect();
        let next = more.then(|| {
            format!(
                "/keys{}",
                base_query(("page", Some(&(page_no + 1).to_string())))
            )
        });
        let prev = (page_no > 1).then(|| {
            format!(
                "/keys{}",
                base_query(("page", Some(&(page_no - 1).to_string())))
            )
        });
        let note = capped.then(|| format!("Sorted over the newest {SORT_CAP} matching keys."));
        (rows, next, prev, note)
    };

    let body = html! {
        (heading("Keys", None, html! {
            @if s.may(Permission::WriteKeys) {
                a.button.secondary href="/keys/revoke-owner" { "Revoke all keys of an owner" }
                a.button.primary href="/keys/new" data-action="new-key" { "Create key" }
            }
        }))
        (ui::error_box(error))
        form.filters method="get" action="/keys" {
            input type="search" name="q" value=(q.get("q").unwrap_or("")) placeholder="Search by name" aria-label="Search by name";
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in &kss {
                    option value=(ks.id) selected[q.get("keyspace") == Some(ks.id.as_str())] { (ks.name) }
                }
            }
            input type="text" name="owner" value=(q.get("owner").unwrap_or("")) placeholder="Owner" aria-label="Owner";
            select name="status" aria-label="Status" {
                option value="" { "Any status" }
                @for x in STATUSES {
                    option value=(x.as_str()) selected[status == Some(x)] { (x.as_str()) }
                }
            }
            input type="text" name="label" value=(q.get("label").unwrap_or("")) placeholder="Label, e.g. env:prod" aria-label="Label";
            select name="sort" aria-label="Sort" {
                @for (x, k, l) in SORTS {
                    option value=(k) selected[sort == x] { (l) }
                }
            }
            button.secondary type="submit" { "Apply" }
            a.button.ghost href="/keys" { "Reset" }
        }
        @if let Some(n) = &note { (ui::flash("warn", n)) }
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
                        @for k in &rows {
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
            @if let Some(p) = &prev_link { a.button.secondary href=(p) { "← First page" } }
            @if let Some(n) = &next_link { a.button.secondary href=(n) { "Next page →" } }
        }
    };
    Ok(page("Keys", &s, Nav::Keys, body))
}

// ---------------------------------------------------------------- create

/// The create form's values, kept when the form comes back with an error.
#[derive(Default)]
struct KeyForm {
    keyspace_id: String,
    name: String,
    owner: String,
    scopes: String,
    labels: String,
    expiry: String,
    ttl: String,
    rl_limit: String,
    rl_window: String,
    remaining: String,
    cidrs: String,
    disabled: bool,
}

impl KeyForm {
    fn from_form(f: &Form) -> Self {
        let g = |k: &str| f.get(k).unwrap_or("").to_string();
        KeyForm {
            keyspace_id: g("keyspace_id"),
            name: g("name"),
            owner: g("owner"),
            scopes: g("scopes"),
            labels: g("labels"),
            expiry: g("expiry"),
            ttl: g("ttl"),
            rl_limit: g("rl_limit"),
            rl_window: g("rl_window"),
            remaining: g("remaining"),
            cidrs: g("cidrs"),
            disabled: f.checked("disabled"),
        }
    }

    /// The API's create body.
    fn to_json(&self) -> Result<Value, String> {
        let mut body = Map::new();
        body.insert("keyspace_id".into(), json!(self.keyspace_id.trim()));
        body.insert("name".into(), json!(self.name.trim()));
        if !self.owner.trim().is_empty() {
            body.insert("owner".into(), json!(self.owner.trim()));
        }
        let scopes: Vec<&str> = self
            .scopes
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        body.insert("scopes".into(), json!(scopes));
        let mut labels = BTreeMap::new();
        for line in self.labels.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .or_else(|| line.split_once(':'))
                .ok_or("Each label is one line name=value, e.g. env=prod.")?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        body.insert("labels".into(), json!(labels));
        let ttl = if !self.ttl.trim().is_empty() {
            ui::parse_duration(&self.ttl)?
        } else if self.expiry.is_empty() || self.expiry == "policy" {
            None
        } else {
            ui::parse_duration(&self.expiry)?
        };
        if let Some(t) = ttl {
            body.insert("ttl_secs".into(), json!(t));
        }
        match (self.rl_limit.trim(), self.rl_window.trim()) {
            ("", "") => {}
            (l, w) => {
                let limit: i64 = l
                    .parse()
                    .map_err(|_| "The rate limit must be a whole number of requests.")?;
                let window = ui::parse_duration(w)?
                    .ok_or("Give the rate limit's window, e.g. 60s or 1m.")?;
                body.insert(
                    "ratelimit".into(),
                    json!({"limit": limit, "window_secs": window}),
                );
            }
        }
        if !self.remaining.trim().is_empty() {
            let n: i64 = self
                .remaining
                .trim()
                .parse()
                .map_err(|_| "The quota must be a whole number.")?;
            body.insert("remaining".into(), json!(n));
        }
        let cidrs: Vec<&str> = self
            .cidrs
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        if !cidrs.is_empty() {
            body.insert("allowed_cidrs".into(), json!(cidrs));
        }
        if self.disabled {
            body.insert("enabled".into(), json!(false));
        }
        Ok(Value::Object(body))
    }
}

fn key_form(s: &SignedIn, kss: &[Keyspace], v: &KeyForm, error: Option<&str>) -> Markup {
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

pub async fn new_form(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let v = KeyForm {
        keyspace_id: q.get("keyspace").unwrap_or("").to_string(),
        owner: q.get("owner").unwrap_or("").to_string(),
        ..Default::default()
    };
    Ok(key_form(&s, &kss, &v, None))
}

/// The one page that shows a plaintext: `Cache-Control: no-store` (as every dashboard page),
/// never logged, never stored.
fn secret_page(s: &SignedIn, title: &str, key: &Key, plaintext: &Secret, lead: Markup) -> Response {
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
    let mut res = page(title, s, Nav::Keys, body).into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store, max-age=0"),
    );
    res.headers_mut().insert(
        axum::http::header::PRAGMA,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    res
}

pub async fn create(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let v = KeyForm::from_form(&form);
    let fail =
        |status: StatusCode, msg: &str| (status, key_form(&s, &kss, &v, Some(msg))).into_response();
    let body = match v.to_json() {
        Ok(b) => b,
        Err(m) => return Ok(fail(StatusCode::BAD_REQUEST, &m)),
    };
    let input: service::CreateKey = match parse_input(body) {
        Ok(i) => i,
        Err(PageError::Failed(st_, m)) => return Ok(fail(st_, &m)),
        Err(e) => return Err(e),
    };
    match service::create_key(&st, &who, input).await {
        Ok((key, plaintext)) => Ok(secret_page(
            &s,
            "Key created",
            &key,
            &plaintext,
            html! { p { "The key " strong { (key.name) } " is ready to use." } },
        )),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            Ok(fail(crate::http::error::status(e.code), &e.message))
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- detail

/// A key of a rotation lineage, if the context may see it.
async fn lineage_key(
    st: &AppState,
    who: &Allowed<'_, authz::ReadKeys>,
    id: &str,
) -> PageResult<Option<Key>> {
    match service::get_key(st, who, id).await {
        Ok(k) => Ok(Some(k)),
        Err(e) if e.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn detail(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let key = service::get_key(&st, &who, &id).await?;
    let ks = service::get_keyspace(&st, &who, &key.keyspace_id)
        .await
        .ok();
    let now = st.clock.now();
    let status = key.status(now);

    // Rotation lineage: predecessors (oldest first), then successors.
    let mut before = Vec::new();
    let mut cur = key.rotated_from.clone();
    while let Some(pid) = cur.take() {
        if before.len() >= 20 {
            break;
        }
        if let Some(p) = lineage_key(&st, &who, &pid).await? {
            cur = p.rotated_from.clone();
            before.push(p);
        }
    }
    before.reverse();
    let mut after = Vec::new();
    let mut cur = key.rotated_to.clone();
    while let Some(nid) = cur.take() {
        if after.len() >= 20 {
            break;
        }
        if let Some(n) = lineage_key(&st, &who, &nid).await? {
            cur = n.rotated_to.clone();
            after.push(n);
        }
    }

    let events = match ctx.allow::<authz::ReadAudit>() {
        Ok(auditor) => {
            let filter = AuditFilter {
                target_id: Some(key.id.clone()),
                page: Page {
                    limit: 50,
                    after: None,
                },
                ..Default::default()
            };
            Some(service::list_audit(&st, &auditor, &filter).await?)
        }
        Err(_) => None,
    };

    let usage_section = usage::key_section(&st, &who, &key, View::parse(q.get("usage"))).await?;

    let can_write = s.may(Permission::WriteKeys);
    let live = !matches!(status, KeyStatus::Revoked);
    let policy = ks.as_ref().map(|k| k.policy.clone()).unwrap_or_default();
    let default_grace = policy.default_grace_secs();
    let mut graces: Vec<(i64, String)> = vec![(0, "None: revoke the old key now".into())];
    for g in [3600, 86_400, 7 * 86_400] {
        if policy.max_grace_secs.is_none_or(|m| g <= m) {
            graces.push((g, ui::human_secs(g)));
        }
    }

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

    let body = html! {
        @if let Some(m) = done_message(&q) { (m) }
        div.crumbs { a href="/keys" { "Keys" } " / " (key.name) }
        (heading(&key.name, Some(html! { (status_badge(status)) " " code.muted { (key.id) } }), html! {
            @if can_write && live {
                @if status != KeyStatus::Expired {
                    form.inline method="post" action={ "/keys/" (key.id) "/enabled" } {
                        (csrf_field(&s))
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
                    (row("Rate limit", html! { @if let Some(r) = key.ratelimit { (r.limit) " per " (ui::human_secs(r.window_secs)) } @else { span.muted { "none" } } }))
                    (row("Quota left", html! { @if let Some(r) = key.remaining { (r) } @else { span.muted { "unlimited" } } }))
                    (row("Allowed addresses", html! { @match &key.allowed_cidrs { Some(c) if !c.is_empty() => { @for x in c { span.chip { (x) } } } _ => { span.muted { "any" } } } }))
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
                                (csrf_field(&s))
                                p.hint { "Issues a successor with the same settings. The old key keeps working during the grace period." }
                                label for="grace" { "Grace period of the old key" }
                                select #grace name="grace_secs" {
                                    option value="" selected { "Policy default (" (ui::human_secs(default_grace)) ")" }
                                    @for (g, l) in &graces { option value=(g) { (l) } }
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
                            (csrf_field(&s))
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
                            @for k in &before { (lineage_item(k, false)) }
                            (lineage_item(&key, true))
                            @for k in &after { (lineage_item(k, false)) }
                        }
                    }
                }
            }
        }
        (usage_section)
        section.card {
            h2 { "Audit events" }
            @match &events {
                None => { p.muted { "Your role cannot read the audit trail." } }
                Some(ev) if ev.is_empty() => { p.muted { "No events." } }
                Some(ev) => { (super::admin::audit_table(ev, now, false)) }
            }
        }
    };
    Ok(page(&key.name, &s, Nav::Keys, body))
}

// ---------------------------------------------------------------- changes

pub async fn revoke(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    if form.get("confirm") != Some("yes") {
        return Err(PageError::Failed(
            StatusCode::BAD_REQUEST,
            "Confirm the revocation by ticking the box.".into(),
        ));
    }
    let reason = form.text("reason").unwrap_or_default();
    service::revoke_key(&st, &who, &id, &reason).await?;
    Ok(redirect(&format!(
        "/keys/{}?done=revoked",
        ui::urlencode(&id)
    )))
}

pub async fn set_enabled(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let enabled = form.get("enabled") == Some("true");
    let patch: service::PatchKey = parse_input(json!({ "enabled": enabled }))?;
    service::update_key(&st, &who, &id, patch).await?;
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(redirect(&format!(
        "/keys/{}?done={done}",
        ui::urlencode(&id)
    )))
}

pub async fn rotate(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let mut body = Map::new();
    if let Some(g) = form.text("grace_secs") {
        let g: i64 = g.parse().map_err(|_| {
            PageError::Failed(StatusCode::BAD_REQUEST, "Choose a grace period.".into())
        })?;
        body.insert("grace_secs".into(), json!(g));
    }
    if let Some(r) = form.text("reason") {
        body.insert("reason".into(), json!(r));
    }
    let input: service::RotateKey = parse_input(Value::Object(body))?;
    let old = id.clone();
    let (key, plaintext) = service::rotate_key(&st, &who, &id, input).await?;
    Ok(secret_page(
        &s,
        "Key rotated",
        &key,
        &plaintext,
        html! { p { "This is the successor of " a href={ "/keys/" (old) } { "the old key" }
        ", which keeps working until its grace period ends. Deploy the new key before then." } },
    ))
}

fn revoke_owner_form(
    s: &SignedIn,
    kss: &[Keyspace],
    owner: &str,
    keyspace: &str,
    preview: Option<(&[Key], Timestamp)>,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        div.crumbs { a href="/keys" { "Keys" } " / revoke all keys of an owner" }
        (heading("Revoke all keys of an owner", Some(html! { "For someone who left, or a team whose credentials are compromised." }), html! {}))
        (ui::error_box(error))
        form.card.filters method="get" action="/keys/revoke-owner" {
            input name="owner" value=(owner) placeholder="Owner, e.g. team-billing" required aria-label="Owner";
            select name="keyspace" aria-label="Keyspace" {
                option value="" { "All keyspaces" }
                @for ks in kss { option value=(ks.id) selected[keyspace == ks.id] { (ks.name) } }
            }
            button.secondary type="submit" { "Show their keys" }
        }
        @if let Some((keys, now)) = preview {
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

pub async fn revoke_owner_page(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let owner = q.get("owner").unwrap_or("").to_string();
    let keyspace = q.get("keyspace").unwrap_or("").to_string();
    let now = st.clock.now();
    if owner.is_empty() {
        return Ok(revoke_owner_form(&s, &kss, "", &keyspace, None, None));
    }
    let filter = KeyFilter {
        owner: Some(owner.clone()),
        keyspace_ids: (!keyspace.is_empty()).then(|| vec![keyspace.clone()]),
        now,
        ..Default::default()
    };
    let (keys, _) = scan_keys(&st, &ctx.allow()?, filter, SORT_CAP).await?;
    let live: Vec<Key> = keys
        .into_iter()
        .filter(|k| !matches!(k.status(now), KeyStatus::Revoked | KeyStatus::Expired))
        .collect();
    Ok(revoke_owner_form(
        &s,
        &kss,
        &owner,
        &keyspace,
        Some((&live, now)),
        None,
    ))
}

pub async fn revoke_owner(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    if form.get("confirm") != Some("yes") {
        return Err(PageError::Failed(
            StatusCode::BAD_REQUEST,
            "Confirm the revocation by ticking the box.".into(),
        ));
    }
    let mut body = json!({
        "owner": form.text("owner").unwrap_or_default(),
        "reason": form.text("reason").unwrap_or_default(),
    });
    if let Some(ks) = form.text("keyspace_id") {
        body["keyspace_id"] = json!(ks);
    }
    let input: service::BulkRevoke = parse_input(body)?;
    let owner = input.owner.clone();
    let ids = service::revoke_owner_keys(&st, &who, input).await?;
    let body = html! {
        (heading("Keys revoked", None, html! {}))
        div.card {
            (ui::flash("ok", &format!("Revoked {} key{} of {owner}.", ids.len(), if ids.len() == 1 { "" } else { "s" })))
            ul.keylist { @for id in &ids { li { a href={ "/keys/" (id) } { code { (id) } } } } }
            p { a.button.secondary href={ "/keys" (ui::query(&[("owner", Some(&owner))])) } { "Show this owner's keys" } }
        }
    };
    Ok(page("Keys revoked", &s, Nav::Keys, body).into_response())
}

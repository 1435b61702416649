//! The overview and everything about keys: list, detail, create, rotate, enable/disable,
//! revoke, and revoke every key of an owner. The markup is in [`super::views::keys`].
//!
//! Inputs from forms are turned into the same request types the API parses (through
//! `serde_json`), and handed to [`crate::service`]: the rules are the API's, written once.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::kinds::AuditAction;
use keyward_core::model::{Key, KeyStatus, Permission};
use keyward_core::policy::Policy;
use keyward_core::time::Timestamp;
use keyward_store::{AuditFilter, KeyFilter, Page};
use maud::Markup;
use serde_json::{json, Map, Value};

use super::chart::View;
use super::data::{all_keyspaces, keyspace_names, scan_keys};
use super::ui;
use super::usage;
use super::views::keys::{
    self as view, KeyDetail, KeyForm, KeyList, Overview, RevokeOwner, Sort, SORTS,
};
use super::{redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz::{self, Allowed};
use crate::error::ErrorCode;
use crate::http::extract::{encode_cursor, time_cursor};
use crate::service;
use crate::state::AppState;

/// Sorting other than "newest first" happens in memory over at most this many matches.
const SORT_CAP: usize = 5_000;
const PAGE_SIZE: i64 = 50;

pub(crate) fn parse_input<T: serde::de::DeserializeOwned>(v: Value) -> PageResult<T> {
    serde_json::from_value(v)
        .map_err(|e| PageError::Failed(StatusCode::BAD_REQUEST, format!("Invalid input: {e}")))
}

/// The flash for `?done=`, where a change redirects to.
fn done_message(q: &QueryMap) -> Option<&'static str> {
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
    Some(text)
}

// ---------------------------------------------------------------- overview

pub(crate) async fn overview(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock().now();
    let kss = all_keyspaces(&st, &ctx).await?;
    let census = super::census::census(&st, &ctx, &kss, now).await?;
    let mut usage_24h = usage::overview_usage(&st, &who).await?;
    let anomalies = usage::recent_anomalies(&st, &who).await?;
    // Reported leaks are audit events: shown to the roles that read the audit trail.
    let leaks = match ctx.allow::<authz::ReadAudit>() {
        Ok(auditor) => {
            let filter = AuditFilter {
                action: Some(AuditAction::KeyLeaked.as_str().into()),
                page: Page {
                    limit: 5,
                    after: None,
                },
                ..Default::default()
            };
            Some(service::list_audit(st.records(), &auditor, &filter).await?)
        }
        Err(_) => None,
    };
    // The names of the keys the page mentions (the busiest, the anomalies', the leaked).
    let mut mentioned: Vec<String> = usage_24h
        .top
        .iter()
        .map(|t| t.id.clone())
        .chain(anomalies.items.iter().map(|a| a.key_id.clone()))
        .chain(leaks.iter().flatten().map(|e| e.target_id.clone()))
        .collect();
    mentioned.sort();
    mentioned.dedup();
    let mut key_names: HashMap<String, String> = HashMap::new();
    for id in mentioned {
        let Some(key_id) = keyward_core::id::KeyId::parse(&id) else {
            continue;
        };
        match service::get_key(st.records(), &who, &key_id).await {
            Ok(k) => {
                key_names.insert(id, k.name);
            }
            Err(e) if e.code == crate::error::ErrorCode::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    for t in &mut usage_24h.top {
        if let Some(name) = key_names.get(&t.id) {
            t.name = name.clone();
        }
    }
    let names = keyspace_names(&kss);

    Ok(view::overview(
        &s,
        &Overview {
            done: done_message(&q),
            may_write_keys: s.may(Permission::WriteKeys),
            may_write_keyspaces: s.may(Permission::WriteKeyspaces),
            may_read_audit: s.may(Permission::ReadAudit),
            census: &census,
            usage_24h,
            keyspaces: &kss,
            keyspace_names: &names,
            anomalies,
            leaks,
            key_names: &key_names,
            now,
        },
    ))
}

// ---------------------------------------------------------------- list

/// The list's query, read: what the store filters on, the status and sort chosen, and what
/// could not be read.
struct ListQuery<'q> {
    filter: KeyFilter,
    status: Option<KeyStatus>,
    sort: Sort,
    /// The sort's query value, kept in the pager's links.
    sort_key: &'q str,
    error: Option<&'static str>,
}

fn list_query(q: &QueryMap, now: Timestamp) -> ListQuery<'_> {
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
        label,
        name_contains: q.get("q").map(str::to_string),
        now,
        ..Default::default()
    };
    ListQuery {
        filter,
        status,
        sort,
        sort_key,
        error,
    }
}

/// One page of the list, with the links to the pages around it and a note on what it covers.
struct ListPage {
    rows: Vec<Key>,
    next: Option<String>,
    prev: Option<String>,
    note: Option<String>,
}

/// The page of keys the query asks for: newest first by the store's cursor, any other order
/// sorted in memory.
async fn list_page(
    st: &AppState,
    who: &Allowed<'_, authz::ReadKeys>,
    q: &QueryMap,
    lq: &ListQuery<'_>,
) -> PageResult<ListPage> {
    let (filter, sort, sort_key) = (&lq.filter, lq.sort, lq.sort_key);
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
    if sort == Sort::Newest {
        // A cursor from another filter (or a hand-edited one) starts at the first page.
        let after = time_cursor(q.get("cursor").map(str::to_string), &fp).unwrap_or_default();
        let mut f = filter.clone();
        f.page = Page {
            limit: PAGE_SIZE + 1,
            after: after.clone(),
        };
        let mut rows = service::list_keys(st.records(), who, f).await?;
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
        return Ok(ListPage {
            rows,
            next,
            prev: first,
            note: None,
        });
    }
    let (mut all, capped) = scan_keys(st, who, filter.clone(), SORT_CAP).await?;
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
    Ok(ListPage {
        rows,
        next,
        prev,
        note,
    })
}

pub(crate) async fn list(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock().now();
    let kss = all_keyspaces(&st, &ctx).await?;
    let names = keyspace_names(&kss);
    let lq = list_query(&q, now);
    let page = list_page(&st, &who, &q, &lq).await?;
    Ok(view::list(
        &s,
        &KeyList {
            may_write_keys: s.may(Permission::WriteKeys),
            error: lq.error,
            search: q.get("q").unwrap_or(""),
            keyspace: q.get("keyspace"),
            owner: q.get("owner").unwrap_or(""),
            status: lq.status,
            label: q.get("label").unwrap_or(""),
            sort: lq.sort,
            keyspaces: &kss,
            keyspace_names: &names,
            note: page.note,
            rows: page.rows,
            prev: page.prev,
            next: page.next,
            now,
        },
    ))
}

// ---------------------------------------------------------------- create

// The form's values live with its markup (`views::keys`); reading them is the handlers' part.
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

pub(crate) async fn new_form(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let v = KeyForm {
        keyspace_id: q.get("keyspace").unwrap_or("").to_string(),
        owner: q.get("owner").unwrap_or("").to_string(),
        ..Default::default()
    };
    Ok(view::new_key(&s, &kss, &v, None))
}

/// The one page that shows a plaintext: `Cache-Control: no-store` (as every dashboard page),
/// never logged, never stored.
fn secret_page(page: Markup) -> Response {
    ui::no_store(page.into_response())
}

pub(crate) async fn create(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let v = KeyForm::from_form(&form);
    let fail = |status: StatusCode, msg: &str| {
        (status, view::new_key(&s, &kss, &v, Some(msg))).into_response()
    };
    let body = match v.to_json() {
        Ok(b) => b,
        Err(m) => return Ok(fail(StatusCode::BAD_REQUEST, &m)),
    };
    let input: service::CreateKey = match parse_input(body) {
        Ok(i) => i,
        Err(PageError::Failed(st_, m)) => return Ok(fail(st_, &m)),
        Err(e) => return Err(e),
    };
    match service::create_key(&st.control, &who, input).await {
        Ok((key, plaintext)) => Ok(secret_page(view::key_created(&s, &key, &plaintext))),
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
    let Some(id) = keyward_core::id::KeyId::parse(id) else {
        return Ok(None);
    };
    match service::get_key(st.records(), who, &id).await {
        Ok(k) => Ok(Some(k)),
        Err(e) if e.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Rotation lineage: predecessors (oldest first), then successors, up to 20 each way.
async fn lineage(
    st: &AppState,
    who: &Allowed<'_, authz::ReadKeys>,
    key: &Key,
) -> PageResult<(Vec<Key>, Vec<Key>)> {
    let mut before = Vec::new();
    let mut cur = key.rotated_from.clone();
    while let Some(pid) = cur.take() {
        if before.len() >= 20 {
            break;
        }
        if let Some(p) = lineage_key(st, who, &pid).await? {
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
        if let Some(n) = lineage_key(st, who, &nid).await? {
            cur = n.rotated_to.clone();
            after.push(n);
        }
    }
    Ok((before, after))
}

/// The grace periods a rotation under `policy` offers: (seconds, label), none first.
fn graces(policy: &Policy) -> Vec<(i64, String)> {
    let mut graces: Vec<(i64, String)> = vec![(0, "None: revoke the old key now".into())];
    for g in [3600, 86_400, 7 * 86_400] {
        if policy.max_grace_secs.is_none_or(|m| g <= m) {
            graces.push((g, ui::human_secs(g)));
        }
    }
    graces
}

pub(crate) async fn detail(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let key = service::get_key(st.records(), &who, &service::key_id(&id)?).await?;
    let ks = service::get_keyspace(st.records(), &who, &service::keyspace_id(&key.keyspace_id)?)
        .await
        .ok();
    let now = st.clock().now();
    let status = key.status(now);

    let (before, after) = lineage(&st, &who, &key).await?;

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
            Some(service::list_audit(st.records(), &auditor, &filter).await?)
        }
        Err(_) => None,
    };

    let usage = usage::key_usage(&st, &who, &key, View::parse(q.get("usage"))).await?;

    let can_write = s.may(Permission::WriteKeys);
    let live = !matches!(status, KeyStatus::Revoked);
    let policy = ks.as_ref().map(|k| k.policy.clone()).unwrap_or_default();
    let default_grace = policy.default_grace_secs();

    Ok(view::detail(
        &s,
        &KeyDetail {
            done: done_message(&q),
            key: &key,
            keyspace: ks.as_ref(),
            status,
            before,
            after,
            events,
            usage,
            can_write,
            live,
            default_grace,
            graces: graces(&policy),
            now,
        },
    ))
}

// ---------------------------------------------------------------- changes

pub(crate) async fn revoke(
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
    service::revoke_key(&st.control, &who, &service::key_id(&id)?, &reason).await?;
    Ok(redirect(&format!(
        "/keys/{}?done=revoked",
        ui::urlencode(&id)
    )))
}

pub(crate) async fn set_enabled(
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
    service::update_key(&st.control, &who, &service::key_id(&id)?, patch).await?;
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(redirect(&format!(
        "/keys/{}?done={done}",
        ui::urlencode(&id)
    )))
}

pub(crate) async fn rotate(
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
    let (key, plaintext) =
        service::rotate_key(&st.control, &who, &service::key_id(&id)?, input).await?;
    Ok(secret_page(view::key_rotated(&s, &key, &plaintext, &old)))
}

pub(crate) async fn revoke_owner_page(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::WriteKeys>()?;
    let kss = all_keyspaces(&st, &ctx).await?;
    let owner = q.get("owner").unwrap_or("").to_string();
    let keyspace = q.get("keyspace").unwrap_or("").to_string();
    let now = st.clock().now();
    if owner.is_empty() {
        return Ok(view::revoke_owner(
            &s,
            &RevokeOwner {
                keyspaces: &kss,
                owner: "",
                keyspace: &keyspace,
                preview: None,
                error: None,
            },
        ));
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
    Ok(view::revoke_owner(
        &s,
        &RevokeOwner {
            keyspaces: &kss,
            owner: &owner,
            keyspace: &keyspace,
            preview: Some((&live, now)),
            error: None,
        },
    ))
}

pub(crate) async fn revoke_owner(
    State(st): State<AppState>,
    s: SignedIn,
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
    let mut body = json!({
        "owner": form.text("owner").unwrap_or_default(),
        "reason": form.text("reason").unwrap_or_default(),
    });
    if let Some(ks) = form.text("keyspace_id") {
        body["keyspace_id"] = json!(ks);
    }
    let input: service::BulkRevoke = parse_input(body)?;
    let owner = input.owner.clone();
    let ids = service::revoke_owner_keys(&st.control, &who, input).await?;
    Ok(view::owner_revoked(&s, &owner, &ids).into_response())
}

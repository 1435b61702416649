//! Keyspaces and their policies, the audit trail, and management tokens. The markup is in
//! [`super::views::admin`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::model::{Keyspace, Permission};
use keyward_core::policy::{Policy, Preset};
use keyward_core::routes::Unmatched;
use keyward_core::time::Timestamp;
use keyward_store::{AuditFilter, Page};
use maud::Markup;
use serde_json::{json, Map, Value};

use super::data::all_keyspaces;
use super::ui;
use super::views::admin::{
    self as view, AuditPage, KeyspaceList, KeyspacePage, NewKeyspace, TokensPage, POLICY_FIELDS,
};
use super::{redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz;
use crate::http::extract::{decode_cursor, encode_cursor};
use crate::service;
use crate::state::AppState;

fn parse_input<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("Invalid input: {e}"))
}

// ---------------------------------------------------------------- keyspaces

pub(crate) async fn keyspaces(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock().now();
    let kss = all_keyspaces(&st, &ctx).await?;
    Ok(view::keyspaces(
        &s,
        &KeyspaceList {
            created: q.get("done") == Some("keyspace"),
            may_create: s.may(Permission::WriteKeyspaces),
            keyspaces: kss,
            now,
        },
    ))
}

fn preset_of(name: &str) -> Option<Preset> {
    match name {
        "strict" => Some(Preset::Strict),
        "standard" => Some(Preset::Standard),
        "relaxed" => Some(Preset::Relaxed),
        _ => None,
    }
}

pub(crate) async fn new_keyspace(s: SignedIn) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::CreateKeyspaces>()?;
    Ok(view::new_keyspace(
        &s,
        &NewKeyspace {
            name: "",
            prefix: "",
            preset: "standard",
            error: None,
        },
    ))
}

pub(crate) async fn create_keyspace(
    State(st): State<AppState>,
    s: SignedIn,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::CreateKeyspaces>()?;
    let name = form.get("name").unwrap_or("").trim().to_string();
    let prefix = form.get("prefix").unwrap_or("").trim().to_string();
    let preset = form.get("preset").unwrap_or("standard").to_string();
    let fail = |status: StatusCode, m: &str| {
        let page = view::new_keyspace(
            &s,
            &NewKeyspace {
                name: &name,
                prefix: &prefix,
                preset: &preset,
                error: Some(m),
            },
        );
        (status, page).into_response()
    };
    if preset_of(&preset).is_none() {
        return Ok(fail(StatusCode::BAD_REQUEST, "Choose a preset."));
    }
    let input: service::CreateKeyspace =
        match parse_input(json!({"name": name, "prefix": prefix, "preset": preset})) {
            Ok(i) => i,
            Err(m) => return Ok(fail(StatusCode::BAD_REQUEST, &m)),
        };
    match service::create_keyspace(&st.control, &who, input).await {
        Ok(ks) => Ok(redirect(&format!("/keyspaces/{}?done=keyspace", ks.id))),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            Ok(fail(crate::http::error::status(e.code), &e.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// The keyspace page's view-model: `shown` is the policy in the editor.
fn keyspace_page<'a>(
    s: &SignedIn,
    ks: &'a Keyspace,
    shown: &'a Policy,
    notice: Option<(&'static str, &'static str)>,
    error: Option<&'a str>,
) -> KeyspacePage<'a> {
    KeyspacePage {
        keyspace: ks,
        shown,
        notice,
        error,
        editable: s.may(Permission::WriteKeyspaces),
        may_write_keys: s.may(Permission::WriteKeys),
        routes_text: view::routes_text(&ks.routes),
        unmatched: ks.unmatched,
        routes_error: None,
        import_error: None,
    }
}

pub(crate) async fn keyspace(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let ks = service::get_keyspace(st.records(), &who, &service::keyspace_id(&id)?).await?;
    let notice = match q.get("done") {
        Some("policy") => Some((
            "ok",
            "The policy was saved. It applies to keys created from now on and to every sweep.",
        )),
        Some("keyspace") => Some((
            "ok",
            "The keyspace was created. Adjust its policy below, or create its first key.",
        )),
        Some("routes") => Some((
            "ok",
            "The route rules were saved. Forward-auth applies them on every node within a second.",
        )),
        Some("import") => Some((
            "ok",
            "The keys were imported (records imported before were skipped); they verify from now on. The audit trail lists them under keys.import.",
        )),
        _ => None,
    };
    Ok(view::keyspace(
        &s,
        &keyspace_page(&s, &ks, &ks.policy, notice, None),
    ))
}

/// The policy patch the editor's fields describe.
fn policy_patch(form: &Form) -> Result<Value, String> {
    let mut p = Map::new();
    for (f, label, _, nullable) in POLICY_FIELDS {
        let v =
            ui::parse_duration(form.get(f).unwrap_or("")).map_err(|e| format!("{label}: {e}"))?;
        if v.is_none() && !nullable {
            return Err(format!("{label} is required (0 or more)."));
        }
        p.insert(f.into(), json!(v));
    }
    let max = match form.text("max_keys_per_owner") {
        Some(n) => Some(
            n.parse::<i64>()
                .map_err(|_| "Max active keys per owner must be a whole number.".to_string())?,
        ),
        None => None,
    };
    p.insert("max_keys_per_owner".into(), json!(max));
    p.insert(
        "require_owner".into(),
        json!(form.get("require_owner") == Some("yes")),
    );
    Ok(Value::Object(p))
}

pub(crate) async fn update_keyspace(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeyspaces>()?;
    let ks =
        service::get_keyspace(st.records(), &ctx.allow()?, &service::keyspace_id(&id)?).await?;
    if form.get("action") == Some("preset") {
        // Show the preset's values in the editor; nothing is saved until "Save policy".
        let Some(p) = form.get("preset").and_then(preset_of) else {
            let page = keyspace_page(&s, &ks, &ks.policy, None, Some("Choose a preset to load."));
            return Ok(view::keyspace(&s, &page).into_response());
        };
        let notice = (
            "info",
            "Preset loaded into the form. Review the values, then save.",
        );
        let shown = p.policy();
        let page = keyspace_page(&s, &ks, &shown, Some(notice), None);
        return Ok(view::keyspace(&s, &page).into_response());
    }
    let fail = |m: &str| {
        let page = keyspace_page(&s, &ks, &ks.policy, None, Some(m));
        (StatusCode::BAD_REQUEST, view::keyspace(&s, &page)).into_response()
    };
    let policy = match policy_patch(&form) {
        Ok(p) => p,
        Err(m) => return Ok(fail(&m)),
    };
    let mut body = json!({ "policy": policy });
    if let Some(n) = form.text("name") {
        body["name"] = json!(n);
    }
    let input: service::PatchKeyspace = match parse_input(body) {
        Ok(i) => i,
        Err(m) => return Ok(fail(&m)),
    };
    let saved =
        service::update_keyspace(&st.control, &who, &service::keyspace_id(&id)?, input).await;
    answer(
        saved,
        &format!("/keyspaces/{}?done=policy", ui::urlencode(&id)),
        fail,
    )
}

/// The answer to a keyspace change: on to `then` once saved; the page again with the message
/// when the request was refused (a 403 stays an error page).
fn answer<T>(
    saved: crate::error::Result<T>,
    then: &str,
    fail: impl FnOnce(&str) -> Response,
) -> PageResult {
    match saved {
        Ok(_) => Ok(redirect(then)),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            Ok(fail(&e.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// Saves the route rules typed in the keyspace page's editor (one per line) and `unmatched`.
pub(crate) async fn update_routes(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeyspaces>()?;
    let ks =
        service::get_keyspace(st.records(), &ctx.allow()?, &service::keyspace_id(&id)?).await?;
    let text = form.get("routes").unwrap_or("").to_string();
    let unmatched = form.get("unmatched").and_then(Unmatched::parse);
    let fail = |m: &str| {
        let mut page = keyspace_page(&s, &ks, &ks.policy, None, None);
        page.routes_text = text.clone();
        page.unmatched = unmatched.unwrap_or(ks.unmatched);
        page.routes_error = Some(m);
        (StatusCode::BAD_REQUEST, view::keyspace(&s, &page)).into_response()
    };
    let Some(unmatched) = unmatched else {
        return Ok(fail("Choose what a request no rule matches gets."));
    };
    let routes = match view::parse_routes_text(&text) {
        Ok(r) => r,
        Err(m) => return Ok(fail(&m)),
    };
    let input = service::PatchKeyspace {
        routes: Some(routes),
        unmatched: Some(unmatched),
        ..Default::default()
    };
    let saved =
        service::update_keyspace(&st.control, &who, &service::keyspace_id(&id)?, input).await;
    answer(
        saved,
        &format!("/keyspaces/{}?done=routes#routes", ui::urlencode(&id)),
        fail,
    )
}

/// Imports the JSON Lines pasted in the keyspace page (one batch: at most 1,000 records).
pub(crate) async fn import_keys(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let ks_id = service::keyspace_id(&id)?;
    let ks = service::get_keyspace(st.records(), &ctx.allow()?, &ks_id).await?;
    let fail = |m: &str| {
        let mut page = keyspace_page(&s, &ks, &ks.policy, None, None);
        page.import_error = Some(m);
        (StatusCode::BAD_REQUEST, view::keyspace(&s, &page)).into_response()
    };
    let text = zeroize::Zeroizing::new(form.get("records").unwrap_or("").to_string());
    let (mut keys, mut lines) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<keyward_core::api::ImportRecord>(line) {
            Ok(r) => {
                keys.push(r);
                lines.push(n + 1);
            }
            Err(_) => {
                return Ok(fail(&format!(
                    "Line {} is not a record: one JSON object per line, with the fields listed above. Nothing was imported.",
                    n + 1
                )))
            }
        }
    }
    if keys.is_empty() {
        return Ok(fail("Paste at least one record."));
    }
    let input = keyward_core::api::ImportKeys {
        keys,
        allow_policy_violations: form.checked("allow_policy_violations"),
    };
    let saved = service::import_keys(&st.control, &who, &ks_id, input).await;
    answer(
        saved,
        &format!("/keyspaces/{}?done=import#import", ui::urlencode(&id)),
        |m| {
            // `keys[i].field: ...` names the record by its index: name its line instead.
            let at = m
                .strip_prefix("keys[")
                .and_then(|r| r.split_once(']'))
                .and_then(|(i, rest)| Some((lines.get(i.parse::<usize>().ok()?)?, rest)));
            match at {
                Some((line, rest)) => fail(&format!(
                    "Nothing was imported: line {line}{}",
                    rest.strip_prefix('.')
                        .map_or(rest.to_string(), |r| format!(", {r}"))
                )),
                None => fail(&format!("Nothing was imported: {m}")),
            }
        },
    )
}

// ---------------------------------------------------------------- audit

pub(crate) async fn audit(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let now = st.clock().now();
    let day = |name: &str, end: bool| -> Result<Option<Timestamp>, String> {
        match q.get(name) {
            None => Ok(None),
            Some(d) => Timestamp::parse_rfc3339(&format!("{d}T00:00:00Z"))
                .map(|t| Some(if end { t.plus_secs(86_400) } else { t }))
                .map_err(|_| format!("'{}' is not a date", keyward_core::keyformat::shown(d))),
        }
    };
    let (from, to) = match (day("from", false), day("to", true)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return Err(PageError::Failed(StatusCode::BAD_REQUEST, e)),
    };
    let mut f = AuditFilter {
        target_id: q.get("target_id").map(str::to_string),
        actor_id: q.get("actor_id").map(str::to_string),
        action: q.get("action").map(str::to_string),
        from,
        to,
        page: Page {
            limit: 51,
            after: None,
        },
    };
    let fp = format!(
        "dash-audit|{:?}|{:?}|{:?}|{:?}|{:?}",
        f.target_id, f.actor_id, f.action, f.from, f.to
    );
    if let Some(c) = q.get("cursor") {
        f.page.after = decode_cursor(c, &fp).ok().and_then(|p| p.parse().ok());
    }
    let mut rows = service::list_audit(st.records(), &who, &f).await?;
    let more = rows.len() > 50;
    rows.truncate(50);
    let chain = service::check_chain(st.records(), &who).await?;
    let base = |cursor: Option<&str>| {
        ui::query(&[
            ("action", q.get("action")),
            ("actor_id", q.get("actor_id")),
            ("target_id", q.get("target_id")),
            ("from", q.get("from")),
            ("to", q.get("to")),
            ("cursor", cursor),
        ])
    };
    let next = more
        .then(|| rows.last().map(|e| encode_cursor(&e.seq.to_string(), &fp)))
        .flatten()
        .map(|c| format!("/audit{}", base(Some(&c))));
    let newest = q
        .get("cursor")
        .is_some()
        .then(|| format!("/audit{}", base(None)));
    Ok(view::audit(
        &s,
        &AuditPage {
            chain,
            rows,
            now,
            action: q.get("action"),
            actor_id: q.get("actor_id").unwrap_or(""),
            target_id: q.get("target_id").unwrap_or(""),
            from: q.get("from").unwrap_or(""),
            to: q.get("to").unwrap_or(""),
            newest,
            older: next,
        },
    ))
}

// ---------------------------------------------------------------- tokens

pub(crate) async fn tokens(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let now = st.clock().now();
    let first = Page {
        limit: 500,
        after: None,
    };
    let rows = service::list_tokens(st.records(), &who, &first).await?;
    let users = service::list_users(st.records(), &who).await?;
    Ok(view::tokens(
        &s,
        &TokensPage {
            revoked: q.get("done") == Some("token_revoked"),
            tokens: rows,
            users,
            now,
        },
    ))
}

pub(crate) async fn create_token(
    State(st): State<AppState>,
    s: SignedIn,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let bad = |m: String| PageError::Failed(StatusCode::BAD_REQUEST, m);
    let mut body = json!({
        "name": form.text("name").unwrap_or_default(),
        "role": form.text("role").unwrap_or_default(),
    });
    if let Some(t) = ui::parse_duration(form.get("ttl").unwrap_or("")).map_err(bad)? {
        body["ttl_secs"] = json!(t);
    }
    let input: service::CreateToken = parse_input(body).map_err(bad)?;
    let (token, plaintext) = service::create_token(st.records(), &who, input).await?;
    let mut res = view::token_created(&s, &token, &plaintext).into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store, max-age=0"),
    );
    Ok(res)
}

pub(crate) async fn revoke_token(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult<Response> {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let reason = form.text("reason").unwrap_or_default();
    service::revoke_token(st.records(), &who, &service::token_id(&id)?, &reason).await?;
    Ok(redirect("/tokens?done=token_revoked"))
}

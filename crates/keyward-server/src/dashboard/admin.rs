//! Keyspaces and their policies, the audit trail, and management tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::audit::ChainCheck;
use keyward_core::model::{AuditEvent, Keyspace, Permission, Role};
use keyward_core::policy::{Policy, Preset};
use keyward_core::time::Timestamp;
use keyward_store::{AuditFilter, Page};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::ui::{self, heading, page, row, Nav};
use super::{csrf_field, redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz;
use crate::http::extract::{decode_cursor, encode_cursor};
use crate::service;
use crate::state::AppState;

fn parse_input<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("Invalid input: {e}"))
}

// ---------------------------------------------------------------- keyspaces

fn policy_summary(p: &Policy) -> String {
    let life = p
        .max_lifetime_secs
        .map(ui::human_secs)
        .unwrap_or_else(|| "no max lifetime".into());
    let idle = p
        .inactivity_revoke_secs
        .map(|s| format!("revoked after {} unused", ui::human_secs(s)))
        .unwrap_or_else(|| "no inactivity limit".into());
    format!("{life} · {idle}")
}

pub async fn keyspaces(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::ReadKeys>()?;
    let now = st.clock.now();
    let kss = super::keys::all_keyspaces(&st, &ctx).await?;
    let body = html! {
        @if q.get("done") == Some("keyspace") { (ui::flash("ok", "The keyspace was created.")) }
        (heading("Keyspaces", Some(html! { "A keyspace is a family of keys with one prefix and one policy." }), html! {
            @if s.may(Permission::WriteKeyspaces) {
                a.button.primary href="/keyspaces/new" data-action="new-keyspace" { "New keyspace" }
            }
        }))
        section.card.flush {
            @if kss.is_empty() {
                (ui::empty("No keyspaces yet."))
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Prefix" } th { "Policy" } th { "Owner required" } th { "Created" } } }
                    tbody { @for ks in &kss { tr {
                        td { a.strong href={ "/keyspaces/" (ks.id) } { (ks.name) } }
                        td { code { (ks.prefix) "_" } }
                        td { (policy_summary(&ks.policy)) }
                        td { (if ks.policy.require_owner { "yes" } else { "no" }) }
                        td { (ui::when(Some(ks.created_at), now, "")) }
                    } } }
                } }
            }
        }
    };
    Ok(page("Keyspaces", &s, Nav::Keyspaces, body))
}

fn preset_of(name: &str) -> Option<Preset> {
    match name {
        "strict" => Some(Preset::Strict),
        "standard" => Some(Preset::Standard),
        "relaxed" => Some(Preset::Relaxed),
        _ => None,
    }
}

const PRESETS: [(&str, &str); 3] = [
    (
        "strict",
        "Strict: 90 days lifetime, revoked after 30 days unused, 1 hour grace",
    ),
    (
        "standard",
        "Standard: 180 days lifetime, revoked after 180 days unused, 1 day grace",
    ),
    (
        "relaxed",
        "Relaxed: no max lifetime, revoked after 1 year unused, 7 days grace",
    ),
];

fn new_keyspace_page(
    s: &SignedIn,
    name: &str,
    prefix: &str,
    preset: &str,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        div.crumbs { a href="/keyspaces" { "Keyspaces" } " / new" }
        (heading("New keyspace", None, html! {}))
        (ui::error_box(error))
        form.card.form-grid method="post" action="/keyspaces" {
            (csrf_field(s))
            div.field {
                label for="name" { "Name" }
                input #name name="name" value=(name) required maxlength="200" placeholder="Orders API, production";
            }
            div.field {
                label for="prefix" { "Key prefix" }
                input #prefix name="prefix" value=(prefix) required maxlength="32" pattern="[a-z][a-z0-9]*(_[a-z0-9]+)*" placeholder="acme_live";
                p.hint { "Lowercase letters, digits and underscores; keys look like " code { "acme_live_…" } ". It cannot be changed later." }
            }
            fieldset.field.span2 {
                legend { "Policy preset" }
                @for (k, l) in PRESETS {
                    label.radio { input type="radio" name="preset" value=(k) checked[preset == k]; " " (l) }
                }
                p.hint { "Every value can be adjusted on the keyspace's page afterwards." }
            }
            div.form-actions.span2 {
                a.button.ghost href="/keyspaces" { "Cancel" }
                button.primary type="submit" data-action="create-keyspace" { "Create keyspace" }
            }
        }
    };
    page("New keyspace", s, Nav::Keyspaces, body)
}

pub async fn new_keyspace(s: SignedIn) -> PageResult<Markup> {
    let ctx = s.ctx();
    ctx.allow::<authz::WriteKeyspaces>()?;
    Ok(new_keyspace_page(&s, "", "", "standard", None))
}

pub async fn create_keyspace(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeyspaces>()?;
    let name = form.get("name").unwrap_or("").trim().to_string();
    let prefix = form.get("prefix").unwrap_or("").trim().to_string();
    let preset = form.get("preset").unwrap_or("standard").to_string();
    let fail = |status: StatusCode, m: &str| {
        (
            status,
            new_keyspace_page(&s, &name, &prefix, &preset, Some(m)),
        )
            .into_response()
    };
    if preset_of(&preset).is_none() {
        return Ok(fail(StatusCode::BAD_REQUEST, "Choose a preset."));
    }
    let input: service::CreateKeyspace =
        match parse_input(json!({"name": name, "prefix": prefix, "preset": preset})) {
            Ok(i) => i,
            Err(m) => return Ok(fail(StatusCode::BAD_REQUEST, &m)),
        };
    match service::create_keyspace(&st, &who, input).await {
        Ok(ks) => Ok(redirect(&format!("/keyspaces/{}?done=keyspace", ks.id))),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            Ok(fail(crate::http::error::status(e.code), &e.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// The policy editor's text fields: (field, label, hint, nullable).
const POLICY_FIELDS: [(&str, &str, &str, bool); 5] = [
    (
        "max_lifetime_secs",
        "Max lifetime",
        "Every key expires within this of its creation. Empty: no limit.",
        true,
    ),
    (
        "rotation_grace_secs",
        "Default rotation grace",
        "How long the old key keeps working after a rotation. 0 revokes it at once.",
        false,
    ),
    (
        "max_grace_secs",
        "Max rotation grace",
        "A rotation may not ask for more. Empty: no limit.",
        true,
    ),
    (
        "inactivity_revoke_secs",
        "Revoke when unused for",
        "Keys with no valid use for this long are revoked by the system. Empty: never.",
        true,
    ),
    (
        "expiry_warning_secs",
        "Expiry warning",
        "key.expiring is emitted this long before a key expires. Empty: no warning.",
        true,
    ),
];

fn policy_value(p: &Policy, field: &str) -> Option<i64> {
    match field {
        "max_lifetime_secs" => p.max_lifetime_secs,
        "rotation_grace_secs" => Some(p.rotation_grace_secs),
        "max_grace_secs" => p.max_grace_secs,
        "inactivity_revoke_secs" => p.inactivity_revoke_secs,
        "expiry_warning_secs" => p.expiry_warning_secs,
        _ => None,
    }
}

fn keyspace_page(
    s: &SignedIn,
    ks: &Keyspace,
    shown: &Policy,
    notice: Option<Markup>,
    error: Option<&str>,
) -> Markup {
    let editable = s.may(Permission::WriteKeyspaces);
    let body = html! {
        @if let Some(n) = notice { (n) }
        div.crumbs { a href="/keyspaces" { "Keyspaces" } " / " (ks.name) }
        (heading(&ks.name, Some(html! { "Prefix " code { (ks.prefix) "_" } " · " code.muted { (ks.id) } }), html! {
            a.button.secondary href={ "/keys" (ui::query(&[("keyspace", Some(&ks.id))])) } { "Show its keys" }
            @if s.may(Permission::WriteKeys) {
                a.button.primary href={ "/keys/new" (ui::query(&[("keyspace", Some(&ks.id))])) } { "Create key" }
            }
        }))
        (ui::error_box(error))
        form.card method="post" action={ "/keyspaces/" (ks.id) } {
            (csrf_field(s))
            div.card-head {
                h2 { "Policy" }
                @if editable {
                    div.preset-picker {
                        select name="preset" aria-label="Preset" {
                            option value="" { "Presets…" }
                            @for (k, l) in PRESETS { option value=(k) { (l) } }
                        }
                        button.secondary.small type="submit" name="action" value="preset" data-action="load-preset" { "Load preset" }
                    }
                }
            }
            p.hint { "Durations such as 90d, 12h, 30m or 3600 (seconds). Changes apply to keys created afterwards and to every sweep; existing keys that break the new policy are flagged, not revoked." }
            div.form-grid {
                div.field {
                    label for="name" { "Name" }
                    input #name name="name" value=(ks.name) maxlength="200" disabled[!editable];
                }
                @for (f, label, hint, _) in POLICY_FIELDS {
                    div.field {
                        label for=(f) { (label) }
                        input id=(f) name=(f) value=(ui::duration_input(policy_value(shown, f))) disabled[!editable] placeholder="none";
                        p.hint { (hint) }
                    }
                }
                div.field {
                    label for="max_keys_per_owner" { "Max active keys per owner" }
                    input #max_keys_per_owner name="max_keys_per_owner" inputmode="numeric" value=(shown.max_keys_per_owner.map(|n| n.to_string()).unwrap_or_default()) disabled[!editable] placeholder="no limit";
                }
                div.field {
                    label.check { input type="checkbox" name="require_owner" value="yes" checked[shown.require_owner] disabled[!editable]; " Every key must have an owner" }
                }
            }
            @if editable {
                div.form-actions {
                    button.primary type="submit" name="action" value="save" data-action="save-policy" { "Save policy" }
                }
            } @else {
                p.muted { "Your role can read this policy but not change it." }
            }
        }
    };
    page(&ks.name, s, Nav::Keyspaces, body)
}

pub async fn keyspace(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let ks = service::get_keyspace(&st, &who, &id).await?;
    let notice = match q.get("done") {
        Some("policy") => Some(ui::flash(
            "ok",
            "The policy was saved. It applies to keys created from now on and to every sweep.",
        )),
        Some("keyspace") => Some(ui::flash(
            "ok",
            "The keyspace was created. Adjust its policy below, or create its first key.",
        )),
        _ => None,
    };
    Ok(keyspace_page(&s, &ks, &ks.policy, notice, None))
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

pub async fn update_keyspace(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeyspaces>()?;
    let ks = service::get_keyspace(&st, &ctx.allow()?, &id).await?;
    if form.get("action") == Some("preset") {
        // Show the preset's values in the editor; nothing is saved until "Save policy".
        let Some(p) = form.get("preset").and_then(preset_of) else {
            return Ok(
                keyspace_page(&s, &ks, &ks.policy, None, Some("Choose a preset to load."))
                    .into_response(),
            );
        };
        let notice = ui::flash(
            "info",
            "Preset loaded into the form. Review the values, then save.",
        );
        return Ok(keyspace_page(&s, &ks, &p.policy(), Some(notice), None).into_response());
    }
    let fail = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            keyspace_page(&s, &ks, &ks.policy, None, Some(m)),
        )
            .into_response()
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
    match service::update_keyspace(&st, &who, &id, input).await {
        Ok(_) => Ok(redirect(&format!(
            "/keyspaces/{}?done=policy",
            ui::urlencode(&id)
        ))),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            Ok(fail(&e.message))
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- audit

const ACTIONS: [&str; 13] = [
    "keyspace.create",
    "keyspace.update",
    "key.create",
    "key.update",
    "key.rotate",
    "key.revoke",
    "key.expire",
    "token.create",
    "token.revoke",
    "user.create",
    "user.disable",
    "webhook.create",
    "webhook.delete",
];

fn target_link(e: &AuditEvent) -> Markup {
    match e.target_type.as_str() {
        "key" => html! { a href={ "/keys/" (e.target_id) } { code { (e.target_id) } } },
        "keyspace" => html! { a href={ "/keyspaces/" (e.target_id) } { code { (e.target_id) } } },
        _ => html! { code { (e.target_id) } },
    }
}

/// The changed fields of an event, old → new, compact.
fn changes(e: &AuditEvent) -> Markup {
    html! {
        @for (field, v) in &e.changes {
            div.change {
                span.field { (field) } ": "
                @match v.as_array().map(Vec::as_slice) {
                    Some([old, new]) => {
                        @if !old.is_null() { span.old { (short(old)) } " → " }
                        span.new { (short(new)) }
                    }
                    _ => { (short(v)) }
                }
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => ui::json_text(other),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A table of audit events (also used on the key page).
pub fn audit_table(events: &[AuditEvent], now: Timestamp, with_target: bool) -> Markup {
    html! {
        div.table-wrap { table.audit {
            thead { tr {
                th.num { "#" } th { "When" } th { "Actor" } th { "Action" }
                @if with_target { th { "Target" } }
                th { "Reason and changes" }
            } }
            tbody { @for e in events { tr {
                td.num.muted { (e.seq) }
                td { (ui::when(Some(e.at), now, "")) }
                td { (ui::actor(&e.actor)) }
                td { span.action { (e.action) } }
                @if with_target { td { (target_link(e)) } }
                td {
                    @if let Some(r) = &e.reason { div.reason { (r) } }
                    (changes(e))
                }
            } } }
        } }
    }
}

pub async fn audit(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let now = st.clock.now();
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
    let mut rows = service::list_audit(&st, &who, &f).await?;
    let more = rows.len() > 50;
    rows.truncate(50);
    let chain = service::check_chain(&st, &who).await?;
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
    let body = html! {
        (heading("Audit trail", Some(html! { "Every change, by whom, when and why; each event hash-chained to the previous one." }), html! {}))
        @match &chain {
            ChainCheck::Ok { events, head } => {
                div.chain.ok data-chain="ok" {
                    strong { "Chain verified. " }
                    (events) " events, each linked to the one before. Head "
                    code.wrap { (head.get(..16).unwrap_or(head)) "…" }
                }
            }
            ChainCheck::Bad { events, first_bad_seq } => {
                div.chain.bad data-chain="bad" role="alert" {
                    strong { "Chain broken. " }
                    "Event #" (first_bad_seq) " does not match the chain (" (events) " events checked): the trail was altered."
                }
            }
        }
        form.filters method="get" action="/audit" {
            select name="action" aria-label="Action" {
                option value="" { "Any action" }
                @for a in ACTIONS { option value=(a) selected[q.get("action") == Some(a)] { (a) } }
            }
            input name="actor_id" value=(q.get("actor_id").unwrap_or("")) placeholder="Actor id (usr_…, tok_…)" aria-label="Actor id";
            input name="target_id" value=(q.get("target_id").unwrap_or("")) placeholder="Target id (key_…)" aria-label="Target id";
            label.inline-label { "From " input type="date" name="from" value=(q.get("from").unwrap_or("")); }
            label.inline-label { "To " input type="date" name="to" value=(q.get("to").unwrap_or("")); }
            button.secondary type="submit" { "Apply" }
            a.button.ghost href="/audit" { "Reset" }
        }
        section.card.flush {
            @if rows.is_empty() { (ui::empty("No event matches these filters.")) }
            @else { (audit_table(&rows, now, true)) }
        }
        nav.pager {
            @if q.get("cursor").is_some() { a.button.secondary href={ "/audit" (base(None)) } { "← Newest" } }
            @if let Some(n) = &next { a.button.secondary href=(n) { "Older →" } }
        }
        p.hint { "Export the whole trail with the API: " code { "GET /v1/audit/export?format=csv" } " (or jsonl), and re-check it with " code { "keyward audit verify" } "." }
    };
    Ok(page("Audit trail", &s, Nav::Audit, body))
}

// ---------------------------------------------------------------- tokens

const ROLES: [Role; 5] = [
    Role::Admin,
    Role::Manager,
    Role::Viewer,
    Role::Auditor,
    Role::Verifier,
];

pub async fn tokens(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let now = st.clock.now();
    let first = Page {
        limit: 500,
        after: None,
    };
    let rows = service::list_tokens(&st, &who, &first).await?;
    let users = service::list_users(&st, &who).await?;
    let body = html! {
        @if q.get("done") == Some("token_revoked") { (ui::flash("ok", "The token was revoked.")) }
        (heading("Management tokens", Some(html! { "Bearer tokens for the HTTP API and the command line." }), html! {}))
        div.detail-grid {
            section.card.flush {
                @if rows.is_empty() { (ui::empty("No tokens.")) } @else {
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Role" } th { "Keyspaces" } th { "Created" } th { "Last used" } th { "Status" } th {} } }
                    tbody { @for t in &rows { tr {
                        td { strong { (t.name) } div.mono.muted { (t.id) } }
                        td { span.role-badge { (t.role.as_str()) } }
                        td { @match &t.keyspace_ids { Some(ids) => { (ids.len()) " limited" } None => { span.muted { "all" } } } }
                        td { (ui::when(Some(t.created_at), now, "")) }
                        td { (ui::when(t.last_used_at, now, "never")) }
                        td {
                            @if t.revoked_at.is_some() { span.badge.status-revoked { "revoked" } }
                            @else if !t.is_usable(now) { span.badge.status-expired { "expired" } }
                            @else { span.badge.status-active { "active" } }
                        }
                        td { @if t.is_usable(now) {
                            details.inline-action {
                                summary { "Revoke…" }
                                form.stack method="post" action={ "/tokens/" (t.id) "/revoke" } {
                                    (csrf_field(&s))
                                    input name="reason" required maxlength="500" placeholder="Reason" aria-label="Reason";
                                    button.danger.small type="submit" { "Revoke token" }
                                }
                            }
                        } }
                    } } }
                } }
                }
            }
            div.side {
                form.card.stack method="post" action="/tokens" {
                    h2 { "New token" }
                    (csrf_field(&s))
                    label for="tname" { "Name" }
                    input #tname name="name" required maxlength="200" placeholder="ci deploy";
                    label for="trole" { "Role" }
                    select #trole name="role" { @for r in ROLES { option value=(r.as_str()) selected[r == Role::Manager] { (r.as_str()) } } }
                    label for="tttl" { "Expires after" }
                    input #tttl name="ttl" placeholder="e.g. 90d (empty: never)";
                    button.primary type="submit" data-action="create-token" { "Create token" }
                }
                section.card {
                    h2 { "Dashboard users" }
                    ul.keylist { @for u in &users { li {
                        span { (u.email) } span.muted { " · " (u.role.as_str()) }
                        span.right { @if u.is_active() { (ui::when(u.last_login_at, now, "never signed in")) } @else { span.badge.status-disabled { "disabled" } } }
                    } } }
                    p.hint { "Add or disable users on the server: " code { "keyward user create --email … --role …" } }
                }
            }
        }
    };
    Ok(page("Tokens", &s, Nav::Tokens, body))
}

pub async fn create_token(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
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
    let (token, plaintext) = service::create_token(&st.records(), &who, input).await?;
    let body = html! {
        (heading("Token created", None, html! {}))
        div.card.secret-card {
            div.warning role="alert" {
                strong { "Copy this token now. " }
                "It is shown only once: keyward stores only its SHA-256."
            }
            div.secret-row {
                code #plaintext.secret { (plaintext.expose()) }
                button.primary type="button" data-copy="plaintext" { "Copy" }
            }
            dl.meta {
                (row("Token id", html! { code { (token.id) } }))
                (row("Name", html! { (token.name) }))
                (row("Role", html! { (token.role.as_str()) }))
            }
            div.form-actions { a.button.primary href="/tokens" { "I have stored it" } }
        }
    };
    let mut res = page("Token created", &s, Nav::Tokens, body).into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store, max-age=0"),
    );
    Ok(res)
}

pub async fn revoke_token(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult<Response> {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let reason = form.text("reason").unwrap_or_default();
    service::revoke_token(&st.records(), &who, &id, &reason).await?;
    Ok(redirect("/tokens?done=token_revoked"))
}

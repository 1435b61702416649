//! The markup of the keyspace, audit and token pages ([`crate::dashboard::admin`]), and the
//! audit table the key page shares.

use keyward_core::audit::ChainCheck;
use keyward_core::model::{AuditEvent, Keyspace, Role, Token};
use keyward_core::policy::Policy;
use keyward_core::routes::{RouteRule, Unmatched};
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_core::user::User;
use maud::{html, Markup};
use serde_json::Value;

use crate::dashboard::ui::{self, csrf_field, heading, page, row, Nav};
use crate::dashboard::SignedIn;

// ---------------------------------------------------------------- keyspaces

/// The keyspace list.
pub(crate) struct KeyspaceList {
    /// Just created one (`?done=keyspace`).
    pub(crate) created: bool,
    pub(crate) may_create: bool,
    pub(crate) keyspaces: Vec<Keyspace>,
    pub(crate) now: Timestamp,
}

/// The new-keyspace form, with the values typed so far.
pub(crate) struct NewKeyspace<'a> {
    pub(crate) name: &'a str,
    pub(crate) prefix: &'a str,
    pub(crate) preset: &'a str,
    pub(crate) error: Option<&'a str>,
}

/// A keyspace and its policy editor.
pub(crate) struct KeyspacePage<'a> {
    pub(crate) keyspace: &'a Keyspace,
    /// The policy in the editor: the keyspace's, or a preset loaded but not saved.
    pub(crate) shown: &'a Policy,
    /// A flash message: (kind, text).
    pub(crate) notice: Option<(&'static str, &'static str)>,
    pub(crate) error: Option<&'a str>,
    pub(crate) editable: bool,
    pub(crate) may_write_keys: bool,
    /// The route rules in the editor, one per line (the keyspace's, or what was typed when
    /// saving failed), and the `unmatched` choice shown.
    pub(crate) routes_text: String,
    pub(crate) unmatched: Unmatched,
    pub(crate) routes_error: Option<&'a str>,
    /// Why the last import was refused (the pasted records are not shown again: they may hold
    /// plaintext keys).
    pub(crate) import_error: Option<&'a str>,
}

/// Route rules as the editor shows them: one per line, `[METHOD] PATH [SCOPE ...]`.
pub(crate) fn routes_text(rules: &[RouteRule]) -> String {
    let mut out = String::new();
    for r in rules {
        if let Some(m) = &r.method {
            out.push_str(m);
            out.push(' ');
        }
        out.push_str(&r.path);
        for s in &r.scopes {
            out.push(' ');
            out.push_str(s);
        }
        out.push('\n');
    }
    out
}

/// Reads the editor's text back into rules: one rule per line, `[METHOD] PATH [SCOPE ...]`
/// (blank lines and lines starting with `#` are skipped). The error names the line.
pub(crate) fn parse_routes_text(text: &str) -> Result<Vec<RouteRule>, String> {
    let mut rules = Vec::new();
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let (method, path) = if first.starts_with('/') {
            (None, first.to_string())
        } else {
            let Some(path) = words.next() else {
                return Err(format!(
                    "Line {}: a rule needs a path after the method.",
                    n + 1
                ));
            };
            (Some(first.to_string()), path.to_string())
        };
        rules.push(RouteRule {
            method,
            path,
            scopes: words.map(str::to_string).collect(),
        });
        lines.push(n + 1);
    }
    keyward_core::routes::check_rules(&rules).map_err(|e| {
        // `routes[3].path: ...` -> `Line 5, path: ...`
        let msg = e.to_string();
        let named = msg
            .strip_prefix("routes[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(i, rest)| Some((lines.get(i.parse::<usize>().ok()?)?, rest)));
        match named {
            Some((line, rest)) => {
                format!("Line {line}{}", rest.replacen('.', ", ", 1))
            }
            None => msg,
        }
    })?;
    Ok(rules)
}

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

pub(crate) fn keyspaces(s: &SignedIn, m: &KeyspaceList) -> Markup {
    let (kss, now) = (&m.keyspaces, m.now);
    let body = html! {
        @if m.created { (ui::flash("ok", "The keyspace was created.")) }
        (heading("Keyspaces", Some(html! { "A keyspace is a family of keys with one prefix and one policy." }), html! {
            @if m.may_create {
                a.button.primary href="/keyspaces/new" data-action="new-keyspace" { "New keyspace" }
            }
        }))
        section.card.flush {
            @if kss.is_empty() {
                (ui::empty("No keyspaces yet."))
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Prefix" } th { "Policy" } th { "Owner required" } th { "Created" } } }
                    tbody { @for ks in kss { tr {
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
    page("Keyspaces", s, Nav::Keyspaces, body)
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

pub(crate) fn new_keyspace(s: &SignedIn, m: &NewKeyspace) -> Markup {
    let (name, prefix, preset, error) = (m.name, m.prefix, m.preset, m.error);
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

/// The policy editor's text fields: (field, label, hint, nullable).
pub(crate) const POLICY_FIELDS: [(&str, &str, &str, bool); 5] = [
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

pub(crate) fn keyspace(s: &SignedIn, m: &KeyspacePage) -> Markup {
    let (ks, shown, editable) = (m.keyspace, m.shown, m.editable);
    let body = html! {
        @if let Some((kind, text)) = m.notice { (ui::flash(kind, text)) }
        div.crumbs { a href="/keyspaces" { "Keyspaces" } " / " (ks.name) }
        (heading(&ks.name, Some(html! { "Prefix " code { (ks.prefix) "_" } " · " code.muted { (ks.id) } }), html! {
            a.button.secondary href={ "/keys" (ui::query(&[("keyspace", Some(&ks.id))])) } { "Show its keys" }
            @if m.may_write_keys {
                a.button.primary href={ "/keys/new" (ui::query(&[("keyspace", Some(&ks.id))])) } { "Create key" }
            }
        }))
        (ui::error_box(m.error))
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
        form.card #routes method="post" action={ "/keyspaces/" (ks.id) "/routes" } {
            (csrf_field(s))
            div.card-head {
                h2 { "Route rules" }
                span.count { (ks.routes.len()) }
            }
            p.hint {
                "For forward-auth (nginx, Caddy, Traefik, Envoy): the first rule whose method and path match the proxied request decides which scopes the key must hold, on top of any "
                code { "?scope=" } ". One rule per line: "
                code { "[METHOD] PATH [SCOPE ...]" } ", e.g. "
                code { "GET /orders/** orders:read" } ". In a path, "
                code { "*" } " matches one segment and a final "
                code { "**" } " the rest. Lines starting with # are skipped."
            }
            (ui::error_box(m.routes_error))
            div.field {
                label for="routes-text" { "Rules, in order" }
                textarea #routes-text name="routes" rows="8" spellcheck="false" disabled[!editable] placeholder="GET /orders/** orders:read\nPOST /orders orders:write\n/health" { (m.routes_text) }
            }
            div.field {
                label for="unmatched" { "A request no rule matches" }
                select #unmatched name="unmatched" disabled[!editable] {
                    option value="allow" selected[m.unmatched == Unmatched::Allow] { "Allow it (the key alone decides)" }
                    option value="deny" selected[m.unmatched == Unmatched::Deny] { "Deny it (403 ROUTE_NOT_ALLOWED)" }
                }
            }
            @if editable {
                div.form-actions {
                    button.primary type="submit" data-action="save-routes" { "Save rules" }
                }
            }
        }
        @if m.may_write_keys {
            form.card #import method="post" action={ "/keyspaces/" (ks.id) "/import" } {
                (csrf_field(s))
                div.card-head {
                    h2 { "Import keys" }
                }
                p.hint {
                    "Keys issued by another system, one JSON record per line (up to 64 KiB here; "
                    code { "keyward keys import --keyspace " (ks.id) " FILE" } " takes files of any size and CSV). Each record has "
                    code { "plaintext" } ", or " code { "hash" } " with " code { "algorithm" }
                    " (sha256, argon2id, bcrypt, pbkdf2-sha256; salted ones with " code { "lookup" }
                    "), and may carry name, owner, scopes, labels, expires_at, created_at, last_used_at and "
                    code { "external_id" } " (records imported before are skipped). The batch is imported whole or not at all."
                }
                (ui::error_box(m.import_error))
                div.field {
                    label for="import-records" { "Records (JSON Lines)" }
                    textarea #import-records name="records" rows="6" spellcheck="false" autocomplete="off" placeholder="{\"external_id\": \"42\", \"plaintext\": \"sk_live_…\", \"owner\": \"acme\"}" {}
                }
                div.field {
                    label.check { input type="checkbox" name="allow_policy_violations" value="yes"; " Import keys the policy would refuse (the inventory report flags them)" }
                }
                div.form-actions {
                    button.primary type="submit" data-action="import-keys" { "Import" }
                }
            }
        }
    };
    page(&ks.name, s, Nav::Keyspaces, body)
}

// ---------------------------------------------------------------- audit

/// The audit trail: one page of events and the chain's check.
pub(crate) struct AuditPage<'a> {
    pub(crate) chain: ChainCheck,
    pub(crate) rows: Vec<AuditEvent>,
    pub(crate) now: Timestamp,
    /// The filters as typed, to fill the form again.
    pub(crate) action: Option<&'a str>,
    pub(crate) actor_id: &'a str,
    pub(crate) target_id: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    /// Back to the newest events, when this is not the first page.
    pub(crate) newest: Option<String>,
    pub(crate) older: Option<String>,
}

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
pub(crate) fn audit_table(events: &[AuditEvent], now: Timestamp, with_target: bool) -> Markup {
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

pub(crate) fn audit(s: &SignedIn, m: &AuditPage) -> Markup {
    let (rows, now) = (&m.rows, m.now);
    let body = html! {
        (heading("Audit trail", Some(html! { "Every change, by whom, when and why; each event hash-chained to the previous one." }), html! {}))
        @match &m.chain {
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
                @for a in ACTIONS { option value=(a) selected[m.action == Some(a)] { (a) } }
            }
            input name="actor_id" value=(m.actor_id) placeholder="Actor id (usr_…, tok_…)" aria-label="Actor id";
            input name="target_id" value=(m.target_id) placeholder="Target id (key_…)" aria-label="Target id";
            label.inline-label { "From " input type="date" name="from" value=(m.from); }
            label.inline-label { "To " input type="date" name="to" value=(m.to); }
            button.secondary type="submit" { "Apply" }
            a.button.ghost href="/audit" { "Reset" }
        }
        section.card.flush {
            @if rows.is_empty() { (ui::empty("No event matches these filters.")) }
            @else { (audit_table(rows, now, true)) }
        }
        nav.pager {
            @if let Some(n) = &m.newest { a.button.secondary href=(n) { "← Newest" } }
            @if let Some(n) = &m.older { a.button.secondary href=(n) { "Older →" } }
        }
        p.hint { "Export the whole trail with the API: " code { "GET /v1/audit/export?format=csv" } " (or jsonl), and re-check it with " code { "keyward audit verify" } "." }
    };
    page("Audit trail", s, Nav::Audit, body)
}

// ---------------------------------------------------------------- tokens

/// The management tokens and the dashboard users.
pub(crate) struct TokensPage {
    /// Just revoked one (`?done=token_revoked`).
    pub(crate) revoked: bool,
    pub(crate) tokens: Vec<Token>,
    pub(crate) users: Vec<User>,
    pub(crate) now: Timestamp,
}

const ROLES: [Role; 5] = [
    Role::Admin,
    Role::Manager,
    Role::Viewer,
    Role::Auditor,
    Role::Verifier,
];

pub(crate) fn tokens(s: &SignedIn, m: &TokensPage) -> Markup {
    let (rows, users, now) = (&m.tokens, &m.users, m.now);
    let body = html! {
        @if m.revoked { (ui::flash("ok", "The token was revoked.")) }
        (heading("Management tokens", Some(html! { "Bearer tokens for the HTTP API and the command line." }), html! {}))
        div.detail-grid {
            section.card.flush {
                @if rows.is_empty() { (ui::empty("No tokens.")) } @else {
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Role" } th { "Keyspaces" } th { "Created" } th { "Last used" } th { "Status" } th {} } }
                    tbody { @for t in rows { tr {
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
                                    (csrf_field(s))
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
                    (csrf_field(s))
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
                    ul.keylist { @for u in users { li {
                        span { (u.email) } span.muted { " · " (u.role.as_str()) }
                        span.right { @if u.is_active() { (ui::when(u.last_login_at, now, "never signed in")) } @else { span.badge.status-disabled { "disabled" } } }
                    } } }
                    p.hint { "Add or disable users on the server: " code { "keyward user create --email … --role …" } }
                }
            }
        }
    };
    page("Tokens", s, Nav::Tokens, body)
}

/// The new token's one-time plaintext.
pub(crate) fn token_created(s: &SignedIn, token: &Token, plaintext: &Secret) -> Markup {
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
    page("Token created", s, Nav::Tokens, body)
}

//! Webhooks, for admins: the subscriptions with their recent deliveries, create (the signing
//! secret shown once) and delete. The same permission as the API (`ManageTokens`, and a context
//! not limited to keyspaces); every change goes through [`service::create_webhook`] and
//! [`service::delete_webhook`].

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::kinds::WebhookEvent;
use keyward_core::model::{Keyspace, Webhook};
use keyward_store::{Attempt, Page};
use maud::{html, Markup};

use super::ui::{self, heading, page, row, Nav};
use super::{csrf_field, redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz::{self, Allowed, ManageTokens};
use crate::error::ErrorCode;
use crate::service;
use crate::state::AppState;

/// Delivery attempts shown under each webhook.
const ATTEMPTS_SHOWN: i64 = 8;

/// What each event type announces, for the create form.
fn event_hint(e: &str) -> &'static str {
    match e {
        "key.created" => "a key is created",
        "key.revoked" => "a key is revoked",
        "key.rotated" => "a key is rotated (with its successor)",
        "key.expiring" => "a key enters its keyspace's expiry warning window",
        "key.expired" => "a key expires",
        "key.inactive_revoked" => "a key is revoked for being unused too long",
        "key.anomaly" => "a key's usage pattern changes (spike, denials, new source…)",
        "key.leaked" => "a key is reported leaked",
        _ => "",
    }
}

/// The create form's values, kept when it comes back with an error.
#[derive(Default)]
struct HookForm {
    url: String,
    events: Vec<String>,
    keyspace_id: String,
}

impl HookForm {
    fn from_form(f: &Form) -> Self {
        HookForm {
            url: f.get("url").unwrap_or("").trim().to_string(),
            events: f
                .0
                .iter()
                .filter(|(k, _)| k == "events")
                .map(|(_, v)| v.clone())
                .collect(),
            keyspace_id: f.get("keyspace_id").unwrap_or("").trim().to_string(),
        }
    }
}

fn attempt_status(a: &Attempt) -> Markup {
    match a.status_code {
        Some(c) if (200..300).contains(&c) => html! { span.badge.status-active { (c) } },
        Some(c) => html! { span.badge.status-revoked { (c) } },
        None => html! { span.badge.status-disabled { "no answer" } },
    }
}

fn deliveries_table(attempts: &[Attempt], now: keyward_core::time::Timestamp) -> Markup {
    html! {
        div.table-wrap { table.deliveries {
            thead { tr { th { "When" } th { "Event" } th.num { "Attempt" } th { "Status" } th { "Error" } } }
            tbody { @for a in attempts { tr {
                td { (ui::when(Some(a.at), now, "")) }
                td { span.action { (a.kind) } div.mono.muted { (a.event_id) } }
                td.num { (a.attempt) }
                td { (attempt_status(a)) }
                td.error-cell { @if let Some(e) = &a.error { (e) } @else { span.muted { "—" } } }
            } } }
        } }
    }
}

fn hook_card(
    s: &SignedIn,
    h: &Webhook,
    attempts: &[Attempt],
    spaces: &HashMap<String, String>,
    now: keyward_core::time::Timestamp,
) -> Markup {
    html! {
        section.card.webhook id=(h.id) data-webhook=(h.id) {
            div.card-head {
                div.webhook-title {
                    code.wrap.webhook-url { (h.url) }
                    div.muted.small-text {
                        code { (h.id) } " · "
                        @match &h.keyspace_id {
                            Some(ks) => { "keyspace " a href={ "/keyspaces/" (ks) } { (spaces.get(ks).map(String::as_str).unwrap_or(ks)) } }
                            None => { "every keyspace" }
                        }
                        " · created " (ui::when(Some(h.created_at), now, "")) " by " (h.created_by.name)
                    }
                }
                details.inline-action {
                    summary { "Delete…" }
                    form.stack method="post" action={ "/webhooks/" (h.id) "/delete" } {
                        (csrf_field(s))
                        label.check { input type="checkbox" name="confirm" value="yes" required; " Stop notifying this URL. Deliveries not yet made are dropped." }
                        button.danger.small type="submit" data-action="delete-webhook" { "Delete webhook" }
                    }
                }
            }
            div.events { @for e in &h.events { span.chip { (e) } } }
            h3 { "Recent deliveries" }
            @if attempts.is_empty() {
                p.muted { "No delivery yet: one is made when a subscribed event happens." }
            } @else {
                (deliveries_table(attempts, now))
            }
        }
    }
}

fn create_form(s: &SignedIn, kss: &[Keyspace], v: &HookForm, error: Option<&str>) -> Markup {
    html! {
        form.card.stack #new-webhook method="post" action="/webhooks" {
            h2 { "New webhook" }
            (ui::error_box(error))
            (csrf_field(s))
            label for="wurl" { "URL" }
            input #wurl type="url" name="url" value=(v.url) required maxlength="2048" placeholder="https://hooks.example.com/keyward";
            fieldset {
                legend { "Events" }
                @for e in WebhookEvent::ALL.iter().map(|e| e.as_str()) {
                    label.check {
                        input type="checkbox" name="events" value=(e) checked[v.events.iter().any(|x| x == e)];
                        span { code { (e) } br; span.hint { (event_hint(e)) } }
                    }
                }
            }
            label for="wks" { "Keyspace" }
            select #wks name="keyspace_id" {
                option value="" { "Every keyspace" }
                @for ks in kss { option value=(ks.id) selected[v.keyspace_id == ks.id] { (ks.name) } }
            }
            button.primary type="submit" data-action="create-webhook" { "Create webhook" }
        }
    }
}

async fn webhooks_page(
    st: &AppState,
    who: &Allowed<'_, ManageTokens>,
    s: &SignedIn,
    notice: Option<Markup>,
    form: &HookForm,
    error: Option<&str>,
) -> PageResult<Markup> {
    let now = st.clock.now();
    let hooks = service::list_webhooks(
        st,
        who,
        &Page {
            limit: 500,
            after: None,
        },
    )
    .await?;
    let kss = super::keys::all_keyspaces(st, who.ctx()).await?;
    let spaces: HashMap<String, String> =
        kss.iter().map(|k| (k.id.clone(), k.name.clone())).collect();
    let mut cards = Vec::with_capacity(hooks.len());
    for h in &hooks {
        let attempts = service::list_deliveries(
            st,
            who,
            &h.id,
            &Page {
                limit: ATTEMPTS_SHOWN,
                after: None,
            },
        )
        .await?;
        cards.push(hook_card(s, h, &attempts, &spaces, now));
    }
    let body = html! {
        @if let Some(n) = notice { (n) }
        (heading("Webhooks", Some(html! { "Signed notifications of key events to your services." }), html! {}))
        div.detail-grid {
            div {
                @if cards.is_empty() {
                    section.card { (ui::empty("No webhooks yet. Create one to be notified when keys are created, revoked, rotated, expire or behave unusually.")) }
                }
                @for c in cards { (c) }
            }
            div.side {
                (create_form(s, &kss, form, error))
                section.card {
                    h2 { "Checking a delivery" }
                    p.hint { "Each delivery is a " code { "POST" } " of " code { "{\"id\", \"type\", \"at\", \"data\"}" } " with the header:" }
                    pre.cmd { "Keyward-Signature: t=<unix secs>,v1=<hex>" }
                    p.hint { "where " code { "v1" } " is the HMAC-SHA256 of " code { "<t>.<body>" } " keyed with the webhook's secret. Failed deliveries are retried with growing delays for 24 hours; a retry carries the same event id." }
                }
            }
        }
    };
    Ok(page("Webhooks", s, Nav::Webhooks, body))
}

pub async fn list(State(st): State<AppState>, s: SignedIn, q: QueryMap) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let notice = match q.get("done") {
        Some("deleted") => Some(ui::flash("ok", "The webhook was deleted.")),
        Some("created") => Some(ui::flash(
            "ok",
            "The webhook was created. Its deliveries appear below as subscribed events happen.",
        )),
        _ => None,
    };
    webhooks_page(&st, &who, &s, notice, &HookForm::default(), None).await
}

pub async fn create(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let v = HookForm::from_form(&form);
    let input = service::CreateWebhook {
        url: v.url.clone(),
        events: v.events.clone(),
        keyspace_id: (!v.keyspace_id.is_empty()).then(|| v.keyspace_id.clone()),
    };
    let (hook, secret) = match service::create_webhook(&st, &who, input).await {
        Ok(r) => r,
        Err(e) if e.code.is_request_error() && e.code != ErrorCode::Forbidden => {
            let page = webhooks_page(&st, &who, &s, None, &v, Some(&e.message)).await?;
            return Ok((crate::http::error::status(e.code), page).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let body = html! {
        (heading("Webhook created", None, html! {}))
        div.card.secret-card {
            div.warning role="alert" {
                strong { "Copy this signing secret now. " }
                "It is shown only once. Your service checks each delivery's "
                code { "Keyward-Signature" } " with it; if it is lost, delete the webhook and create a new one."
            }
            div.secret-row {
                code #plaintext.secret { (secret.expose()) }
                button.primary type="button" data-copy="plaintext" { "Copy" }
            }
            dl.meta {
                (row("Webhook id", html! { code { (hook.id) } }))
                (row("URL", html! { code.wrap { (hook.url) } }))
                (row("Events", html! { @for e in &hook.events { span.chip { (e) } } }))
            }
            // Another URL than this page's (`/webhooks`, the form's target): a link that only
            // adds a fragment would not reload, and the secret would stay on screen.
            div.form-actions {
                a.button.primary href={ "/webhooks?done=created#" (hook.id) } data-action="done" { "I have stored it" }
            }
        }
    };
    Ok(ui::no_store(
        page("Webhook created", &s, Nav::Webhooks, body).into_response(),
    ))
}

pub async fn delete(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult<Response> {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    if form.get("confirm") != Some("yes") {
        return Err(PageError::Failed(
            StatusCode::BAD_REQUEST,
            "Confirm the deletion by ticking the box.".into(),
        ));
    }
    service::delete_webhook(&st, &who, &id).await?;
    Ok(redirect("/webhooks?done=deleted"))
}

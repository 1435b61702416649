//! The markup of the webhooks page ([`crate::dashboard::webhooks`]): each subscription with its
//! recent deliveries, the create form, and the signing secret shown once.

use std::collections::HashMap;

use keyward_core::kinds::WebhookEvent;
use keyward_core::model::{Keyspace, Webhook};
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_store::Attempt;
use maud::{html, Markup};

use crate::dashboard::ui::{self, csrf_field, heading, page, row, Nav};
use crate::dashboard::SignedIn;

/// The webhooks page: the subscriptions, and the create form as last sent.
pub(crate) struct WebhooksPage<'a> {
    /// The flash of a change just made (`?done=`).
    pub(crate) notice: Option<&'static str>,
    /// Each webhook with its most recent delivery attempts.
    pub(crate) hooks: Vec<(Webhook, Vec<Attempt>)>,
    pub(crate) keyspaces: Vec<Keyspace>,
    /// Keyspace names by id.
    pub(crate) keyspace_names: HashMap<String, String>,
    pub(crate) form: &'a HookForm,
    pub(crate) error: Option<&'a str>,
    pub(crate) now: Timestamp,
}

/// The create form's values, kept when it comes back with an error. Read from the post by the
/// handlers ([`crate::dashboard::webhooks`]).
#[derive(Default)]
pub(crate) struct HookForm {
    pub(crate) url: String,
    pub(crate) events: Vec<String>,
    pub(crate) keyspace_id: String,
}

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

fn attempt_status(a: &Attempt) -> Markup {
    match a.status_code {
        Some(c) if (200..300).contains(&c) => html! { span.badge.status-active { (c) } },
        Some(c) => html! { span.badge.status-revoked { (c) } },
        None => html! { span.badge.status-disabled { "no answer" } },
    }
}

fn deliveries_table(attempts: &[Attempt], now: Timestamp) -> Markup {
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
    now: Timestamp,
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

pub(crate) fn list(s: &SignedIn, m: &WebhooksPage) -> Markup {
    let cards: Vec<Markup> = m
        .hooks
        .iter()
        .map(|(h, attempts)| hook_card(s, h, attempts, &m.keyspace_names, m.now))
        .collect();
    let body = html! {
        @if let Some(text) = m.notice { (ui::flash("ok", text)) }
        (heading("Webhooks", Some(html! { "Signed notifications of key events to your services." }), html! {}))
        div.detail-grid {
            div {
                @if cards.is_empty() {
                    section.card { (ui::empty("No webhooks yet. Create one to be notified when keys are created, revoked, rotated, expire or behave unusually.")) }
                }
                @for c in cards { (c) }
            }
            div.side {
                (create_form(s, &m.keyspaces, m.form, m.error))
                section.card {
                    h2 { "Checking a delivery" }
                    p.hint { "Each delivery is a " code { "POST" } " of " code { "{\"id\", \"type\", \"at\", \"data\"}" } " with the header:" }
                    pre.cmd { "Keyward-Signature: t=<unix secs>,v1=<hex>" }
                    p.hint { "where " code { "v1" } " is the HMAC-SHA256 of " code { "<t>.<body>" } " keyed with the webhook's secret. Failed deliveries are retried with growing delays for 24 hours; a retry carries the same event id." }
                }
            }
        }
    };
    page("Webhooks", s, Nav::Webhooks, body)
}

/// The new webhook's signing secret, shown once.
pub(crate) fn created(s: &SignedIn, hook: &Webhook, secret: &Secret) -> Markup {
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
    page("Webhook created", s, Nav::Webhooks, body)
}

//! The identities pages: the list (with the create form) and one identity (its keys, its usage
//! chart, enable/disable, revoke all).

use keyward_core::model::{Identity, Key};
use keyward_core::time::Timestamp;
use maud::{html, Markup};

use super::super::chart::{self, group, Usage, View};
use super::super::ui::{self, csrf_field, heading, page, status_badge, when, Nav};
use super::super::SignedIn;

pub(crate) struct IdentityList<'a> {
    pub(crate) rows: &'a [Identity],
    pub(crate) next: Option<String>,
    pub(crate) may_write: bool,
    pub(crate) error: Option<&'a str>,
    pub(crate) now: Timestamp,
}

pub(crate) fn list(s: &SignedIn, m: &IdentityList) -> Markup {
    let body = html! {
        (heading("Identities", Some(html! { "A customer or team: the owner string its keys carry, as one object. Disabling it disables all its keys." }), html! {}))
        @if m.may_write {
            form.card.filters method="post" action="/identities" {
                (csrf_field(s))
                (ui::error_box(m.error))
                input name="id" placeholder="Owner, e.g. acme" required aria-label="Identity id (the owner of its keys)";
                input name="name" placeholder="Name (optional)" aria-label="Name";
                button.primary type="submit" data-action="create-identity" { "Create identity" }
            }
        }
        section.card.flush {
            @if m.rows.is_empty() {
                (ui::empty("No identity yet. Keys with an owner work without one; create one to govern an owner's keys together."))
            } @else {
                div.table-wrap { table.identities {
                    thead { tr { th { "Identity" } th { "Name" } th { "Status" } th { "Created" } } }
                    tbody { @for i in m.rows { tr {
                        td { a.strong href={ "/identities/" (ui::segment(&i.id)) } { (i.id) } }
                        td { (i.name) }
                        td { (enabled_badge(i.enabled)) }
                        td { (when(Some(i.created_at), m.now, "")) }
                    } } }
                } }
            }
        }
        nav.pager {
            @if let Some(n) = &m.next { a.button.secondary href=(n) { "Next page →" } }
        }
    };
    page("Identities", s, Nav::Identities, body)
}

fn enabled_badge(enabled: bool) -> Markup {
    html! {
        @if enabled { span class="badge status-active" { "enabled" } } @else { span class="badge status-revoked" { "disabled" } }
    }
}

pub(crate) struct IdentityPage<'a> {
    pub(crate) identity: &'a Identity,
    pub(crate) keys: &'a [Key],
    pub(crate) more_keys: bool,
    pub(crate) usage: Usage,
    pub(crate) view: View,
    pub(crate) may_write: bool,
    pub(crate) notice: Option<&'static str>,
    pub(crate) now: Timestamp,
}

pub(crate) fn detail(s: &SignedIn, m: &IdentityPage) -> Markup {
    let i = m.identity;
    let path = format!("/identities/{}", ui::segment(&i.id));
    let tab = |v: View, label: &str| {
        html! {
            a href={ (path) "?usage=" (v.param()) "#usage" }
                aria-current=[(v == m.view).then_some("true")] data-view=(v.param()) { (label) }
        }
    };
    let live = m.keys.iter().filter(|k| k.revoked_at.is_none()).count();
    let body = html! {
        div.crumbs { a href="/identities" { "Identities" } " / " (i.id) }
        (heading(&i.name, Some(html! { "Identity " code { (i.id) } " · " (enabled_badge(i.enabled)) }), html! {}))
        @if let Some(n) = m.notice { (ui::flash("ok", n)) }
        @if !i.enabled {
            (ui::flash("warn", "This identity is disabled: every one of its keys verifies DISABLED (the keys themselves are unchanged)."))
        }
        div.detail-grid {
            section.card {
                h2 { "Details" }
                dl.meta {
                    dt { "Name" } dd { (i.name) }
                    dt { "Created" } dd { (ui::date_time(i.created_at)) " by " (ui::actor(&i.created_by)) }
                    dt { "Keys" } dd { (live) " not revoked" @if m.more_keys { " (first " (m.keys.len()) " shown)" } }
                    dt { "Rate limits" } dd #identity-limits { (ui::limits(&i.ratelimits)) @if !i.ratelimits.is_empty() { span.muted { " · shared by all its keys" } } }
                    dt { "Quota left" } dd #identity-quota {
                        @if let Some(r) = i.remaining { (r) span.muted { " · shared by all its keys" } } @else { span.muted { "unlimited" } }
                        @if let Some(f) = &i.refill { br; span.muted { "refills " (ui::refill(f)) } }
                    }
                    @if !i.meta.is_empty() {
                        dt { "Meta" } dd { code.wrap { (ui::json_text(&serde_json::Value::Object(i.meta.clone()))) } }
                    }
                }
            }
            div.side {
                @if m.may_write {
                    section.card.action-card {
                        h2 { @if i.enabled { "Disable" } @else { "Enable" } }
                        form method="post" action={ (path) "/enabled" } {
                            (csrf_field(s))
                            input type="hidden" name="enabled" value=(if i.enabled { "false" } else { "true" });
                            p.hint { @if i.enabled { "Every key of this identity will verify DISABLED, on every node within a second, until it is enabled again." } @else { "Its keys verify again as their own state says." } }
                            button class=(if i.enabled { "danger" } else { "primary" }) type="submit" data-action="identity-enabled" {
                                @if i.enabled { "Disable identity" } @else { "Enable identity" }
                            }
                        }
                    }
                    section.card.action-card {
                        h2 { "Revoke all keys" }
                        p.hint { "For someone who left, or a customer whose contract ended: every live key, one audit event each." }
                        a.button.danger href={ "/keys/revoke-owner" (ui::query(&[("owner", Some(&i.id))])) } { "Revoke all keys…" }
                    }
                }
            }
        }
        section.card #usage {
            div.card-head {
                h2 { "Usage of its keys" }
                nav.segmented aria-label="Period" {
                    (tab(View::Day, "24 hours"))
                    (tab(View::Month, "30 days"))
                }
            }
            p.usage-summary {
                strong { (group(m.usage.valid())) } " valid · "
                strong { (group(m.usage.denied())) } " denied"
                span.muted { " in the " (m.view.period()) " (UTC)" }
            }
            (chart::render(&m.usage, "identity-usage", &format!("Verifications of the keys of {}", i.id), 220))
            (chart::legend(&m.usage))
        }
        section.card.flush #keys {
            div.card-head { h2 { "Keys" } span.count { (m.keys.len()) } }
            @if m.keys.is_empty() {
                (ui::empty("No key has this owner yet."))
            } @else {
                div.table-wrap { table.keys {
                    thead { tr { th { "Name" } th { "Status" } th { "Created" } th { "Last used" } th.num { "Calls" } } }
                    tbody { @for k in m.keys { tr {
                        td { a.strong href={ "/keys/" (k.id) } { (k.name) } div.mono.muted { (k.start) "…" (k.end) } }
                        td { (status_badge(k.status(m.now))) }
                        td { (when(Some(k.created_at), m.now, "")) }
                        td { (when(k.last_used_at, m.now, "never")) }
                        td.num { (k.call_count) }
                    } } }
                } }
            }
        }
    };
    page(&i.name, s, Nav::Identities, body)
}

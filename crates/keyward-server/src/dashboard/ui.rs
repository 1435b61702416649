//! The page shell and the small pieces every page uses. No inline script or style anywhere
//! (the CSP forbids both): behaviour lives in `assets/app.js`, looks in `assets/style.css`.

use keyward_core::model::{Actor, KeyStatus, Permission};
use keyward_core::time::Timestamp;
use maud::{html, Markup, DOCTYPE};

use super::{asset_version, SignedIn};

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Keys,
    Keyspaces,
    Identities,
    Audit,
    Reports,
    Tokens,
    Webhooks,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · keyward" }
            link rel="stylesheet" href={ "/static/style.css?v=" (asset_version()) };
            link rel="icon" href=(FAVICON);
            script src={ "/static/app.js?v=" (asset_version()) } defer {}
        }
    }
}

/// A small key glyph as an SVG data URL (img-src allows `data:`).
const FAVICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='4' fill='%23334fb4'/%3E%3Ccircle cx='6' cy='8' r='2.6' fill='none' stroke='white' stroke-width='1.6'/%3E%3Cpath d='M8.5 8h5M11.5 8v2' stroke='white' stroke-width='1.6'/%3E%3C/svg%3E";

fn logo() -> Markup {
    html! {
        a.brand href="/" {
            svg viewBox="0 0 16 16" width="22" height="22" aria-hidden="true" {
                rect width="16" height="16" rx="4" fill="currentColor" {}
                circle cx="6" cy="8" r="2.6" fill="none" stroke="white" stroke-width="1.6" {}
                path d="M8.5 8h5M11.5 8v2" stroke="white" stroke-width="1.6" {}
            }
            span { "keyward" }
        }
    }
}

/// A full page for a signed-in user.
pub(crate) fn page(title: &str, s: &SignedIn, active: Nav, body: Markup) -> Markup {
    let item = |nav: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class=(if nav == active { "active" } else { "" }) { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.topbar {
                    div.topbar-inner {
                        (logo())
                        nav.mainnav aria-label="Main" {
                            (item(Nav::Overview, "/", "Overview"))
                            (item(Nav::Keys, "/keys", "Keys"))
                            (item(Nav::Keyspaces, "/keyspaces", "Keyspaces"))
                            (item(Nav::Identities, "/identities", "Identities"))
                            @if s.may(Permission::ReadAudit) {
                                (item(Nav::Audit, "/audit", "Audit"))
                                (item(Nav::Reports, "/reports", "Reports"))
                            }
                            @if s.may(Permission::ManageTokens) {
                                (item(Nav::Tokens, "/tokens", "Tokens"))
                                (item(Nav::Webhooks, "/webhooks", "Webhooks"))
                            }
                        }
                        div.account {
                            span.who title=(s.user.email) {
                                span.email { (s.user.email) }
                                span.role-badge { (s.role().as_str()) }
                            }
                            form method="post" action="/logout" {
                                (csrf_field(s))
                                button.linklike type="submit" data-action="logout" { "Sign out" }
                            }
                        }
                    }
                }
                main.container { (body) }
                footer.footer { "keyward · self-hosted API key lifecycle manager" }
            }
        }
    }
}

/// Hidden CSRF field for a form.
pub(crate) fn csrf_field(s: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The page of a [`super::PageError`]: what went wrong, and the way back.
pub(crate) fn error_page(title: &str, text: &str) -> Markup {
    bare_page(
        title,
        html! {
            div.card.narrow {
                h1 { (title) }
                p { (text) }
                p { a.button.secondary href="/" { "Back to the overview" } }
            }
        },
    )
}

/// A page without navigation (sign-in, setup, errors).
pub(crate) fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.bare-head { (logo()) }
                main.container { (body) }
            }
        }
    }
}

/// Marks a response that shows a one-time secret: never stored by the browser or a proxy.
pub(crate) fn no_store(mut res: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

pub(crate) fn status_badge(s: KeyStatus) -> Markup {
    html! { span class={ "badge status-" (s.as_str()) } { (s.as_str()) } }
}

pub(crate) fn actor(a: &Actor) -> Markup {
    let kind = a.kind.as_str();
    html! {
        span.actor title=(a.id) {
            span class={ "badge kind-" (kind) } { (kind) }
            " " (a.name)
        }
    }
}

/// `2026-03-01 14:05 UTC`
pub(crate) fn date_time(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm} UTC"),
        _ => s,
    }
}

pub(crate) fn date(t: Timestamp) -> String {
    t.to_rfc3339().get(..10).unwrap_or_default().to_string()
}

/// `3 days ago`, `in 5 hours`, `just now`.
pub(crate) fn relative(t: Timestamp, now: Timestamp) -> String {
    let d = (t.millis() - now.millis()) / 1000;
    let a = d.abs();
    if a < 60 {
        return "just now".into();
    }
    let text = human_secs(a);
    if d < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// The largest whole unit: `3 days`, `5 hours`, `1 minute`.
pub(crate) fn human_secs(secs: i64) -> String {
    let (n, unit) = if secs >= 86_400 * 365 {
        (secs / (86_400 * 365), "year")
    } else if secs >= 86_400 {
        (secs / 86_400, "day")
    } else if secs >= 3600 {
        (secs / 3600, "hour")
    } else if secs >= 60 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Named rate limits as chips (`burst: 10 per 1 s`), or a muted "none".
pub(crate) fn limits(list: &[keyward_core::limits::NamedLimit]) -> Markup {
    html! {
        @if list.is_empty() { span.muted { "none" } }
        @for l in list { span.chip data-limit=(l.name) { (l.name) ": " (l.limit) " per " (human_secs(l.window_secs)) } }
    }
}

/// A quota's refill, in words.
pub(crate) fn refill(r: &keyward_core::limits::Refill) -> String {
    use keyward_core::limits::Interval;
    match r.interval {
        Interval::Daily => format!("to {} daily (00:00 UTC)", r.amount),
        Interval::Monthly => format!("to {} monthly (the 1st, 00:00 UTC)", r.amount),
        Interval::Secs(n) => format!("to {} every {}", r.amount, human_secs(n)),
    }
}

/// A time cell: the date and a relative hint, full time on hover.
pub(crate) fn when(t: Option<Timestamp>, now: Timestamp, never: &str) -> Markup {
    match t {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(date_time(t)) { (relative(t, now)) }
        },
        None => html! { span.muted { (never) } },
    }
}

/// A duration as typed in forms: `180d`, `12h`, `30m`, `45s`; empty for none.
pub(crate) fn duration_input(secs: Option<i64>) -> String {
    match secs {
        None => String::new(),
        Some(0) => "0".into(),
        Some(s) if s % 86_400 == 0 => format!("{}d", s / 86_400),
        Some(s) if s % 3600 == 0 => format!("{}h", s / 3600),
        Some(s) if s % 60 == 0 => format!("{}m", s / 60),
        Some(s) => format!("{s}s"),
    }
}

/// Parses `90d`, `12h`, `30m`, `45s` or plain seconds; blank is `None`.
pub(crate) fn parse_duration(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (num, mult) = match s.chars().last() {
        Some('d') => (&s[..s.len() - 1], 86_400),
        Some('h') => (&s[..s.len() - 1], 3_600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    num.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(mult))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "'{}' is not a duration such as 90d, 12h, 30m or 3600",
                keyward_core::keyformat::shown(s)
            )
        })
}

/// Percent-encodes a path segment: everything but letters, digits and `-_~` (so that `/`, `.`
/// and `..` in an identity's id stay one segment and never walk the path).
pub(crate) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query string from pairs, skipping empty values.
pub(crate) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", urlencode(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub(crate) fn flash(kind: &str, text: &str) -> Markup {
    html! { div class={ "flash flash-" (kind) } role="status" { (text) } }
}

pub(crate) fn error_box(msg: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = msg {
            div.flash.flash-error role="alert" { (m) }
        }
    }
}

/// A page heading with an optional subtitle and actions on the right.
pub(crate) fn heading(title: &str, sub: Option<Markup>, actions: Markup) -> Markup {
    html! {
        div.page-head {
            div {
                h1 { (title) }
                @if let Some(s) = sub { p.sub { (s) } }
            }
            div.actions { (actions) }
        }
    }
}

/// A labelled metadata row of a `dl`.
pub(crate) fn row(label: &str, value: Markup) -> Markup {
    html! { dt { (label) } dd { (value) } }
}

pub(crate) fn empty(text: &str) -> Markup {
    html! { div.empty { (text) } }
}

/// Renders a JSON value compactly for display (never used for secrets).
pub(crate) fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_the_form() {
        for s in [3600, 86_400 * 180, 90, 0, 120] {
            assert_eq!(parse_duration(&duration_input(Some(s))), Ok(Some(s)));
        }
        assert_eq!(parse_duration(""), Ok(None));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Timestamp::from_millis(10_000_000_000);
        assert_eq!(relative(now.plus_secs(-3 * 86_400), now), "3 days ago");
        assert_eq!(relative(now.plus_secs(3600), now), "in 1 hour");
        assert_eq!(relative(now, now), "just now");
    }
}

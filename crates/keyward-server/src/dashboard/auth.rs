//! Sign-in, sign-out, and the first-run setup page.
//!
//! The sign-in and setup forms are posted before a session exists, so their CSRF token is tied
//! to a short-lived pre-session cookie ([`FORM_COOKIE`], HttpOnly, SameSite=Strict): the form
//! carries a value derived from it, compared in constant time.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::keyformat::base62_random;
use keyward_core::secret::Secret;
use maud::{html, Markup};

use super::ui::{bare_page, error_box};
use super::{
    cookie, cookies, is_https, redirect, Form, PageError, PageResult, QueryMap, SignedIn,
    FORM_COOKIE, SESSION_COOKIE,
};
use crate::accounts::{self, LoginError, SESSION_TTL_SECS};
use crate::http::error::current_request_id;
use crate::http::extract::client_ip;
use crate::state::AppState;

/// A request's parts that the sign-in pages need (headers for cookies, the client address).
pub struct Client {
    headers: HeaderMap,
    ip: Option<std::net::IpAddr>,
    https: bool,
}

impl axum::extract::FromRequestParts<AppState> for Client {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> PageResult<Self> {
        Ok(Client {
            headers: parts.headers.clone(),
            ip: client_ip(parts, st.config.trust_proxy_headers),
            https: is_https(&parts.headers, st),
        })
    }
}

/// The pre-session cookie value (a new one when absent) and the form token derived from it.
fn form_token(c: &Client) -> (String, String, bool) {
    match cookies(&c.headers).remove(FORM_COOKIE) {
        Some(v) if (20..=64).contains(&v.len()) => {
            let t = accounts::csrf_token(&v);
            (v, t, false)
        }
        _ => {
            let v = base62_random(32);
            let t = accounts::csrf_token(&v);
            (v, t, true)
        }
    }
}

fn form_cookie_ok(c: &Client, form: &Form) -> bool {
    match cookies(&c.headers).remove(FORM_COOKIE) {
        Some(v) => accounts::csrf_matches(&accounts::csrf_token(&v), form.get("csrf")),
        None => false,
    }
}

/// Only local paths, so `next` cannot send a user to another site after sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines inside URLs, so "/\t/evil.example" would become
        // "//evil.example": refuse control characters as well as "//" and backslashes.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.into()
        }
        _ => "/".into(),
    }
}

fn with_form_cookie(c: &Client, status: StatusCode, body: impl Fn(&str) -> Markup) -> Response {
    let (value, token, fresh) = form_token(c);
    let mut res = (status, body(&token)).into_response();
    if fresh {
        if let Ok(v) = cookie(FORM_COOKIE, &value, 3600, c.https).parse() {
            res.headers_mut().append(SET_COOKIE, v);
        }
    }
    res
}

fn login_markup(token: &str, next: &str, email: &str, error: Option<&str>) -> Markup {
    bare_page(
        "Sign in",
        html! {
            div.card.narrow.auth {
                h1 { "Sign in" }
                p.sub { "Manage API keys, policies and the audit trail." }
                (error_box(error))
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="next" value=(next);
                    label for="email" { "Email" }
                    input #email type="email" name="email" value=(email) autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button.primary.wide type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub async fn login_page(State(st): State<AppState>, c: Client, q: QueryMap) -> PageResult {
    // Already signed in: go on.
    if let Some(id) = cookies(&c.headers).remove(SESSION_COOKIE) {
        if accounts::resume_session(&st, &id).await?.is_some() {
            return Ok(redirect(&safe_next(q.get("next"))));
        }
    }
    if accounts::needs_setup(&st).await? {
        return Ok((
            StatusCode::OK,
            bare_page(
                "Set up keyward",
                html! {
                    div.card.narrow {
                        h1 { "No users yet" }
                        p { "This installation has no dashboard users. Open the one-time setup link that "
                            code { "keyward serve" } " printed when it started, or create a user on the server:" }
                        pre.cmd { "keyward user create --email you@example.com --role admin" }
                    }
                },
            ),
        )
            .into_response());
    }
    let next = safe_next(q.get("next"));
    Ok(with_form_cookie(&c, StatusCode::OK, |t| {
        login_markup(t, &next, "", None)
    }))
}

pub async fn login(State(st): State<AppState>, c: Client, form: Form) -> PageResult {
    if !form_cookie_ok(&c, &form) {
        return Err(PageError::Csrf);
    }
    let next = safe_next(form.get("next"));
    let email = form.get("email").unwrap_or("").to_string();
    let password = Secret::new(form.get("password").unwrap_or("").to_string());
    let ip = c.ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    match accounts::authenticate(&st, &email, password, ip).await {
        Ok(user) => {
            let s = accounts::start_session(&st, &user, c.ip).await?;
            tracing::info!(user_id = %user.id, "dashboard sign-in");
            let mut res = redirect(&next);
            let h = res.headers_mut();
            if let Ok(v) = cookie(SESSION_COOKIE, s.id.expose(), SESSION_TTL_SECS, c.https).parse()
            {
                h.append(SET_COOKIE, v);
            }
            // The pre-session cookie has done its job.
            if let Ok(v) = cookie(FORM_COOKIE, "", 0, c.https).parse() {
                h.append(SET_COOKIE, v);
            }
            Ok(res)
        }
        Err(LoginError::Invalid) => Ok(with_form_cookie(&c, StatusCode::UNAUTHORIZED, |t| {
            login_markup(t, &next, &email, Some("Email or password is incorrect."))
        })),
        Err(LoginError::Throttled(wait)) => {
            let msg = format!(
                "Too many failed sign-ins. Try again in {}.",
                super::ui::human_secs(wait.max(60))
            );
            let mut res = with_form_cookie(&c, StatusCode::TOO_MANY_REQUESTS, |t| {
                login_markup(t, &next, &email, Some(&msg))
            });
            res.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(wait.max(1)));
            Ok(res)
        }
        Err(LoginError::Other(e)) => Err(e.into()),
    }
}

pub async fn logout(State(st): State<AppState>, s: SignedIn, c: Client, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    accounts::end_session(&st, s.session_id()).await?;
    let mut res = redirect("/login");
    if let Ok(v) = cookie(SESSION_COOKIE, "", 0, c.https).parse() {
        res.headers_mut().append(SET_COOKIE, v);
    }
    Ok(res)
}

fn setup_markup(csrf: &str, token: &str, email: &str, error: Option<&str>) -> Markup {
    bare_page(
        "Create the first admin",
        html! {
            div.card.narrow.auth {
                h1 { "Welcome to keyward" }
                p.sub { "Create the first administrator. This link works once and expires within an hour." }
                (error_box(error))
                form method="post" action="/setup" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="token" value=(token);
                    label for="email" { "Email" }
                    input #email type="email" name="email" value=(email) autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" minlength="12" autocomplete="new-password" required;
                    p.hint { "At least 12 characters. A passphrase of several words is easiest to remember." }
                    label for="confirm" { "Repeat the password" }
                    input #confirm type="password" name="confirm" minlength="12" autocomplete="new-password" required;
                    button.primary.wide type="submit" { "Create admin and sign in" }
                }
            }
        },
    )
}

fn setup_gone() -> Response {
    (
        StatusCode::FORBIDDEN,
        bare_page(
            "Setup link not valid",
            html! {
                div.card.narrow {
                    h1 { "This setup link is not valid" }
                    p { "It has expired or was already used. Restart " code { "keyward serve" }
                        " on an empty database for a new link, or create a user on the server:" }
                    pre.cmd { "keyward user create --email you@example.com --role admin" }
                    p { a.button.secondary href="/login" { "Go to sign-in" } }
                }
            },
        ),
    )
        .into_response()
}

pub async fn setup_page(State(st): State<AppState>, c: Client, q: QueryMap) -> PageResult {
    let token = q.get("token").unwrap_or("").to_string();
    if !accounts::setup_token_valid(&st, &token).await? {
        return Ok(setup_gone());
    }
    Ok(with_form_cookie(&c, StatusCode::OK, |csrf| {
        setup_markup(csrf, &token, "", None)
    }))
}

pub async fn setup(State(st): State<AppState>, c: Client, form: Form) -> PageResult {
    if !form_cookie_ok(&c, &form) {
        return Err(PageError::Csrf);
    }
    let token = form.get("token").unwrap_or("").to_string();
    let email = form.get("email").unwrap_or("").to_string();
    let password = form.get("password").unwrap_or("");
    if password != form.get("confirm").unwrap_or("") {
        return Ok(with_form_cookie(&c, StatusCode::BAD_REQUEST, |csrf| {
            setup_markup(csrf, &token, &email, Some("The two passwords differ."))
        }));
    }
    let result = accounts::complete_setup(
        &st,
        &token,
        &email,
        Secret::new(password.to_string()),
        Some(current_request_id()),
        c.ip.map(|i| i.to_string()),
    )
    .await;
    match result {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "first admin created with the setup link");
            let s = accounts::start_session(&st, &user, c.ip).await?;
            let mut res = redirect("/?done=welcome");
            if let Ok(v) = cookie(SESSION_COOKIE, s.id.expose(), SESSION_TTL_SECS, c.https).parse()
            {
                res.headers_mut().append(SET_COOKIE, v);
            }
            Ok(res)
        }
        Err(e) if e.code == crate::error::ErrorCode::Forbidden => Ok(setup_gone()),
        Err(e)
            if e.code == crate::error::ErrorCode::BadRequest
                || e.code == crate::error::ErrorCode::Conflict =>
        {
            Ok(with_form_cookie(&c, StatusCode::BAD_REQUEST, |csrf| {
                setup_markup(csrf, &token, &email, Some(&e.message))
            }))
        }
        Err(e) => Err(e.into()),
    }
}

//! Sign-in, sign-out, and the first-run setup page.
//!
//! The sign-in and setup forms are posted before a session exists, so their CSRF token is tied
//! to a short-lived pre-session cookie ([`FORM_COOKIE`], HttpOnly, SameSite=Strict): the form
//! carries a value derived from it, compared in constant time. The markup is in
//! [`super::views::auth`].

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::keyformat::base62_random;
use keyward_core::secret::Secret;
use maud::Markup;

use super::views::auth::{self as view, LoginForm, SetupForm};
use super::{
    cookie, cookie_name, cookies, is_https, redirect, Form, PageError, PageResult, QueryMap,
    SignedIn, FORM_COOKIE, SESSION_COOKIE,
};
use crate::accounts::{self, LoginError, SESSION_TTL_SECS};
use crate::http::error::current_request_id;
use crate::http::extract::client_ip;
use crate::state::AppState;

/// A request's parts that the sign-in pages need (headers for cookies, the client address).
pub(crate) struct Client {
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
            https: is_https(&parts.headers, &parts.extensions, st),
        })
    }
}

/// The pre-session cookie value (a new one when absent) and the form token derived from it.
fn form_token(c: &Client) -> (String, String, bool) {
    match cookies(&c.headers).remove(&cookie_name(FORM_COOKIE, c.https)) {
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
    match cookies(&c.headers).remove(&cookie_name(FORM_COOKIE, c.https)) {
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

pub(crate) async fn login_page(State(st): State<AppState>, c: Client, q: QueryMap) -> PageResult {
    // Already signed in: go on.
    if let Some(id) = cookies(&c.headers).remove(&cookie_name(SESSION_COOKIE, c.https)) {
        if accounts::resume_session(st.records(), &id).await?.is_some() {
            return Ok(redirect(&safe_next(q.get("next"))));
        }
    }
    if accounts::needs_setup(st.records()).await? {
        return Ok((StatusCode::OK, view::no_users()).into_response());
    }
    let next = safe_next(q.get("next"));
    Ok(with_form_cookie(&c, StatusCode::OK, |t| {
        view::login(&LoginForm {
            csrf: t,
            next: &next,
            email: "",
            error: None,
        })
    }))
}

pub(crate) async fn login(State(st): State<AppState>, c: Client, form: Form) -> PageResult {
    if !form_cookie_ok(&c, &form) {
        return Err(PageError::Csrf);
    }
    let next = safe_next(form.get("next"));
    let email = form.get("email").unwrap_or("").to_string();
    let password = Secret::new(form.get("password").unwrap_or("").to_string());
    let ip = c.ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    match accounts::authenticate(&st.authn, &email, password, ip).await {
        Ok(user) => {
            let s = accounts::start_session(st.records(), &user, c.ip).await?;
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
            view::login(&LoginForm {
                csrf: t,
                next: &next,
                email: &email,
                error: Some("Email or password is incorrect."),
            })
        })),
        Err(LoginError::Throttled(wait)) => {
            let msg = format!(
                "Too many failed sign-ins. Try again in {}.",
                super::ui::human_secs(wait.max(60))
            );
            let mut res = with_form_cookie(&c, StatusCode::TOO_MANY_REQUESTS, |t| {
                view::login(&LoginForm {
                    csrf: t,
                    next: &next,
                    email: &email,
                    error: Some(&msg),
                })
            });
            res.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(wait.max(1)));
            Ok(res)
        }
        Err(LoginError::Other(e)) => Err(e.into()),
    }
}

pub(crate) async fn logout(
    State(st): State<AppState>,
    s: SignedIn,
    c: Client,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    accounts::end_session(st.records(), s.session_id()).await?;
    let mut res = redirect("/login");
    if let Ok(v) = cookie(SESSION_COOKIE, "", 0, c.https).parse() {
        res.headers_mut().append(SET_COOKIE, v);
    }
    Ok(res)
}

fn setup_gone() -> Response {
    (StatusCode::FORBIDDEN, view::setup_gone()).into_response()
}

pub(crate) async fn setup_page(State(st): State<AppState>, c: Client, q: QueryMap) -> PageResult {
    let token = q.get("token").unwrap_or("").to_string();
    if !accounts::setup_token_valid(st.records(), &token).await? {
        return Ok(setup_gone());
    }
    Ok(with_form_cookie(&c, StatusCode::OK, |csrf| {
        view::setup(&SetupForm {
            csrf,
            token: &token,
            email: "",
            error: None,
        })
    }))
}

pub(crate) async fn setup(State(st): State<AppState>, c: Client, form: Form) -> PageResult {
    if !form_cookie_ok(&c, &form) {
        return Err(PageError::Csrf);
    }
    let token = form.get("token").unwrap_or("").to_string();
    let email = form.get("email").unwrap_or("").to_string();
    let password = form.get("password").unwrap_or("");
    if password != form.get("confirm").unwrap_or("") {
        return Ok(with_form_cookie(&c, StatusCode::BAD_REQUEST, |csrf| {
            view::setup(&SetupForm {
                csrf,
                token: &token,
                email: &email,
                error: Some("The two passwords differ."),
            })
        }));
    }
    let result = accounts::complete_setup(
        st.records(),
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
            let s = accounts::start_session(st.records(), &user, c.ip).await?;
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
                view::setup(&SetupForm {
                    csrf,
                    token: &token,
                    email: &email,
                    error: Some(&e.message),
                })
            }))
        }
        Err(e) => Err(e.into()),
    }
}

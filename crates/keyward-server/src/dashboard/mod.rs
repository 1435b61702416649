//! The web dashboard, served at `/` by the same binary: server-rendered HTML (maud), one CSS and
//! one JS file embedded in the binary, no build step.
//!
//! # Layout
//! - this file: the router, security headers, sessions and CSRF ([`SignedIn`], [`Form`]), the
//!   error pages ([`PageError`]) and the static assets.
//! - the page modules hold the handlers: each extracts, gets its right from [`Ctx::allow`],
//!   reads through the service, computes a view-model and hands it to its view in [`views`]:
//!   - [`auth`]: sign-in, sign-out and the first-run setup page.
//!   - [`keys`]: overview, key list, key detail, create, rotate, revoke, revoke all of an owner.
//!   - [`usage`]: the reads behind the key page's usage chart, source addresses and pattern
//!     changes, and the overview's last 24 hours.
//!   - [`admin`]: keyspaces and their policies, the audit trail, management tokens.
//!   - [`webhooks`]: webhook subscriptions and their deliveries (admins).
//!   - [`reports`]: the inventory report and its CSV download (admins and auditors).
//! - [`data`]: reads several page modules share (keyspaces, keys beyond one page), so that no
//!   page module imports another.
//! - [`views`]: the markup of each page module, from view-models, without I/O.
//! - [`ui`]: the page shell and small components (badges, times, durations, the CSRF field).
//! - [`chart`]: the usage charts (SVG drawn on the server).
//!
//! # Rules every handler follows
//! - Every read and change goes through [`crate::service`] (or [`crate::accounts`],
//!   [`crate::reports`]) with the user's [`Ctx`]: the right is granted by [`Ctx::allow`], the
//!   same door and role matrix as the API's. Pages hide what a role may not use ([`SignedIn::may`]);
//!   the service refuses it anyway (403 page).
//! - Every POST carries the session's synchronizer token, compared in constant time; a request
//!   a browser marks `Sec-Fetch-Site: cross-site` or whose `Origin` names another site is
//!   refused before anything else.
//! - No page shows a secret, except the one-time plaintext of a new key, token or webhook
//!   secret, on a response that is `Cache-Control: no-store` like every dashboard page.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod census;
pub(crate) mod chart;
pub(crate) mod data;
pub(crate) mod identities;
pub(crate) mod keys;
pub(crate) mod reports;
pub(crate) mod ui;
pub(crate) mod usage;
pub(crate) mod views;
pub(crate) mod webhooks;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use keyward_core::keyformat::KeyHash;
use keyward_core::model::{Permission, Role};
use keyward_core::user::User;

use crate::accounts;
use crate::authz::Ctx;
use crate::error::{Error, ErrorCode};
use crate::http::error::current_request_id;
use crate::http::extract::client_ip;
use crate::routes::{Access, RouteSpec};
use crate::state::AppState;

pub(crate) const SESSION_COOKIE: &str = "kw_session";
/// Pre-session cookie for the sign-in and setup forms (login CSRF).
pub(crate) const FORM_COOKIE: &str = "kw_form";
const MAX_FORM: usize = 64 * 1024;

pub(crate) const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Every page and form of the dashboard, with its access (see [`Access`]).
pub(crate) fn routes() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use keyward_core::model::Permission::*;
    use Access::{Public, Right, SignIn};
    let r = crate::routes::spec;
    vec![
        r("GET", "/", Right(ReadKeys), get(keys::overview)),
        r("GET", "/login", SignIn, get(auth::login_page)),
        r("POST", "/login", SignIn, post(auth::login)),
        r("POST", "/logout", SignIn, post(auth::logout)),
        r("GET", "/setup", SignIn, get(auth::setup_page)),
        r("POST", "/setup", SignIn, post(auth::setup)),
        r("GET", "/keys", Right(ReadKeys), get(keys::list)),
        r("POST", "/keys", Right(WriteKeys), post(keys::create)),
        r("GET", "/keys/new", Right(WriteKeys), get(keys::new_form)),
        r(
            "GET",
            "/keys/revoke-owner",
            Right(WriteKeys),
            get(keys::revoke_owner_page),
        ),
        r(
            "POST",
            "/keys/revoke-owner",
            Right(WriteKeys),
            post(keys::revoke_owner),
        ),
        r("GET", "/keys/{id}", Right(ReadKeys), get(keys::detail)),
        r(
            "POST",
            "/keys/{id}/revoke",
            Right(WriteKeys),
            post(keys::revoke),
        ),
        r(
            "POST",
            "/keys/{id}/rotate",
            Right(WriteKeys),
            post(keys::rotate),
        ),
        r(
            "POST",
            "/keys/{id}/enabled",
            Right(WriteKeys),
            post(keys::set_enabled),
        ),
        r("GET", "/keyspaces", Right(ReadKeys), get(admin::keyspaces)),
        r(
            "POST",
            "/keyspaces",
            Right(WriteKeyspaces),
            post(admin::create_keyspace),
        ),
        r(
            "GET",
            "/keyspaces/new",
            Right(WriteKeyspaces),
            get(admin::new_keyspace),
        ),
        r(
            "GET",
            "/keyspaces/{id}",
            Right(ReadKeys),
            get(admin::keyspace),
        ),
        r(
            "POST",
            "/keyspaces/{id}",
            Right(WriteKeyspaces),
            post(admin::update_keyspace),
        ),
        r(
            "POST",
            "/keyspaces/{id}/routes",
            Right(WriteKeyspaces),
            post(admin::update_routes),
        ),
        r(
            "POST",
            "/keyspaces/{id}/import",
            Right(WriteKeys),
            post(admin::import_keys),
        ),
        r("GET", "/identities", Right(ReadKeys), get(identities::list)),
        r(
            "POST",
            "/identities",
            Right(WriteKeys),
            post(identities::create),
        ),
        r(
            "GET",
            "/identities/{id}",
            Right(ReadKeys),
            get(identities::detail),
        ),
        r(
            "POST",
            "/identities/{id}/enabled",
            Right(WriteKeys),
            post(identities::set_enabled),
        ),
        r("GET", "/audit", Right(ReadAudit), get(admin::audit)),
        r("GET", "/tokens", Right(ManageTokens), get(admin::tokens)),
        r(
            "POST",
            "/tokens",
            Right(ManageTokens),
            post(admin::create_token),
        ),
        r(
            "POST",
            "/tokens/{id}/revoke",
            Right(ManageTokens),
            post(admin::revoke_token),
        ),
        r("GET", "/reports", Right(ReadAudit), get(reports::report)),
        r(
            "GET",
            "/reports/inventory.csv",
            Right(ReadAudit),
            get(reports::inventory_csv),
        ),
        r("GET", "/webhooks", Right(ManageTokens), get(webhooks::list)),
        r(
            "POST",
            "/webhooks",
            Right(ManageTokens),
            post(webhooks::create),
        ),
        r(
            "POST",
            "/webhooks/{id}/delete",
            Right(ManageTokens),
            post(webhooks::delete),
        ),
        r("GET", "/static/{file}", Public, get(static_file)),
    ]
}

pub(crate) fn router(st: AppState) -> Router<AppState> {
    crate::routes::from_table(routes()).layer(middleware::from_fn_with_state(st, guard))
}

/// Whether a state-changing request came from another site: a browser marks it with
/// `Sec-Fetch-Site: cross-site`/`same-site`, or names another origin in `Origin`. An opaque
/// `Origin: null` says nothing (the dashboard's `Referrer-Policy: no-referrer` makes Chromium
/// send it for its own forms), so `Sec-Fetch-Site` decides; a request with neither header (not
/// a browser) is left to the CSRF token.
fn foreign_origin(headers: &HeaderMap, extensions: &Extensions, st: &AppState) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site");
    let Some(origin) = headers.get("origin").filter(|o| o.as_bytes() != b"null") else {
        return fetch_site;
    };
    let Some((scheme, host)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return true;
    };
    // This server as the browser addressed it: the Host header (or, behind a trusted proxy,
    // X-Forwarded-Host); the scheme is compared when it is known to be HTTPS.
    let own_host = st
        .config
        .trust_proxy_headers
        .then(|| headers.get("x-forwarded-host"))
        .flatten()
        .or_else(|| headers.get("host"))
        .and_then(|h| h.to_str().ok());
    let scheme_ok = match scheme {
        "https" => true,
        "http" => !is_https(headers, extensions, st),
        _ => false,
    };
    fetch_site || !scheme_ok || own_host.is_none_or(|h| !h.eq_ignore_ascii_case(host))
}

/// Security headers on every dashboard response, `no-store` unless the handler chose a cache
/// policy, and the refusal of cross-site form posts before any handler runs.
async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let cross_site =
        req.method() == Method::POST && foreign_origin(req.headers(), req.extensions(), &st);
    let mut res = if cross_site {
        PageError::Csrf.into_response()
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

// ---------------------------------------------------------------- static assets

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// A short hash of the assets, added to their URLs so they can be cached for a year.
pub(crate) fn asset_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| KeyHash::of(&format!("{STYLE}\n{SCRIPT}")).to_hex()[..12].to_string())
}

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return PageError::NotFound.into_response(),
    };
    (
        [
            (CONTENT_TYPE, ctype),
            (CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------- errors

/// What a dashboard handler can fail with; each renders a page (or a redirect to sign-in).
#[derive(Debug)]
pub(crate) enum PageError {
    /// Not signed in (or the session ended): go to the sign-in page, then back to `next`.
    SignIn(String),
    /// The form's CSRF token is missing or wrong, or the post came from another site.
    Csrf,
    Forbidden(String),
    NotFound,
    /// A request the page cannot act on (status and message from the service).
    Failed(StatusCode, String),
    Internal,
}

pub(crate) type PageResult<T = Response> = std::result::Result<T, PageError>;

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        match e.code {
            ErrorCode::NotFound => PageError::NotFound,
            ErrorCode::Forbidden => PageError::Forbidden(e.message),
            ErrorCode::Internal => PageError::Internal,
            ErrorCode::Unavailable => PageError::Failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database cannot be reached. Try again in a moment.".into(),
            ),
            c => PageError::Failed(crate::http::error::status(c), e.message),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            PageError::SignIn(next) => {
                let loc = format!("/login?next={}", ui::urlencode(&next));
                return redirect(&loc);
            }
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form could not be verified (missing or invalid CSRF token, or it was sent \
                 from another site). Reload the page and try again."
                    .to_string(),
            ),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or you may not see it.".to_string(),
            ),
            PageError::Failed(s, m) => (s, "Request failed", m),
            PageError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                format!(
                    "An internal error occurred; the server log has the details under request id {}.",
                    current_request_id()
                ),
            ),
        };
        (status, ui::error_page(title, &text)).into_response()
    }
}

/// 303 See Other: after a POST, the browser GETs the target.
pub(crate) fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

// ---------------------------------------------------------------- sessions

/// All cookies of a request.
pub(crate) fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether the browser reached us over HTTPS (this server's own TLS, or as told by a trusted
/// proxy): cookies get `Secure`.
pub(crate) fn is_https(parts_headers: &HeaderMap, extensions: &Extensions, st: &AppState) -> bool {
    extensions.get::<crate::conn::ArrivedOverTls>().is_some()
        || st.config.trust_proxy_headers
            && parts_headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// A cookie's name: over HTTPS with the `__Host-` prefix, which browsers accept only from a
/// secure origin, with `Secure`, `Path=/` and no `Domain`: a sibling subdomain or a plain-HTTP
/// page cannot set or overwrite it.
pub(crate) fn cookie_name(name: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{name}")
    } else {
        name.to_string()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`; over HTTPS `Secure` and
/// `__Host-` prefixed.
pub(crate) fn cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        cookie_name(name, secure),
        if secure { "; Secure" } else { "" }
    )
}

/// A signed-in user, from the session cookie.
pub(crate) struct SignedIn {
    pub(crate) user: User,
    /// The session's synchronizer token, put in every form.
    pub(crate) csrf: String,
    pub(crate) ip: Option<IpAddr>,
    /// The raw session id (for sign-out).
    session_id: keyward_core::secret::Secret,
}

impl SignedIn {
    pub(crate) fn role(&self) -> Role {
        self.user.role
    }
    pub(crate) fn may(&self, p: Permission) -> bool {
        self.user.role.may(p)
    }
    /// The service context: actor `{type: user, id: usr_..., name: email}`, no keyspace limit.
    pub(crate) fn ctx(&self) -> Ctx {
        Ctx {
            actor: self.user.actor(),
            role: self.user.role,
            request_id: Some(current_request_id()),
            ip: self.ip.map(|i| i.to_string()),
            keyspaces: None,
        }
    }
    /// Refuses a form whose `csrf` field is not this session's token.
    pub(crate) fn check_csrf(&self, form: &Form) -> PageResult<()> {
        if accounts::csrf_matches(&self.csrf, form.get("csrf")) {
            Ok(())
        } else {
            Err(PageError::Csrf)
        }
    }
    pub(crate) fn session_id(&self) -> &str {
        self.session_id.expose()
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> PageResult<Self> {
        let next = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into())
        } else {
            "/".into()
        };
        let https = is_https(&parts.headers, &parts.extensions, st);
        let Some(id) = cookies(&parts.headers).remove(&cookie_name(SESSION_COOKIE, https)) else {
            return Err(PageError::SignIn(next));
        };
        match accounts::resume_session(st.records(), &id).await? {
            Some(s) => Ok(SignedIn {
                user: s.user,
                csrf: accounts::csrf_token(&id),
                ip: client_ip(parts, st.config.trust_proxy_headers),
                session_id: keyward_core::secret::Secret::new(id),
            }),
            None => Err(PageError::SignIn(next)),
        }
    }
}

// ---------------------------------------------------------------- forms

/// An `application/x-www-form-urlencoded` body (at most 64 KiB), as ordered pairs.
pub(crate) struct Form(pub(crate) Vec<(String, String)>);

impl Form {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The trimmed value, `None` when absent or blank.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
    pub(crate) fn checked(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v == "on" || v == "true" || v == "yes")
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = PageError;

    async fn from_request(req: Request, _: &S) -> PageResult<Self> {
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(PageError::Failed(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Forms must be sent as application/x-www-form-urlencoded.".into(),
            ));
        }
        let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_FORM)
            .await
            .map_err(|_| {
                PageError::Failed(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large.".into(),
                )
            })?;
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .map(Form)
            .map_err(|_| {
                PageError::Failed(StatusCode::BAD_REQUEST, "The form is malformed.".into())
            })
    }
}

/// Query parameters as a map (the dashboard ignores parameters it does not know).
pub(crate) struct QueryMap(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> PageResult<Self> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()
            // A NUL character means nothing in any filter, and PostgreSQL refuses it.
            .filter(|v| !v.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')))
            .map(|v| QueryMap(v.into_iter().collect()))
            .ok_or_else(|| PageError::Failed(StatusCode::BAD_REQUEST, "Malformed query.".into()))
    }
}

impl QueryMap {
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
}

//! Every route the server answers, and who may call it. The API ([`crate::http`]) and the
//! dashboard ([`crate::dashboard`]) each keep a table of their routes with an [`Access`]; the
//! router is built from those tables, so a route cannot exist without a declared access, and the
//! route-authorization test (`tests/api/door.rs`) holds every route to its declaration.

use axum::middleware;
use axum::routing::MethodRouter;
use axum::Router;
use keyward_core::model::Permission;

use crate::state::AppState;

/// Who may call a route. Every route is listed in the API's table ([`crate::http`]) or the dashboard's with
/// its access, and the route-authorization test holds each one to it: a route that needs a right
/// must reach [`crate::authz::Ctx::allow`] for exactly that right before it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials: operational endpoints and static assets.
    Public,
    /// The data plane: public, unless `KEYWARD_VERIFY_REQUIRES_TOKEN` (then the `Verify` right).
    Verify,
    /// Establishes who is acting (sign-in, sign-out, first-run setup).
    SignIn,
    /// Needs this right, granted by the service's door.
    Right(Permission),
}

/// One route: method (`ANY` for every method), path template, access.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

pub(crate) type Handler = MethodRouter<AppState>;

pub(crate) fn spec(
    method: &'static str,
    path: &'static str,
    access: Access,
    h: Handler,
) -> (RouteSpec, Handler) {
    (
        RouteSpec {
            method,
            path,
            access,
        },
        h,
    )
}

/// Builds a router from a route table (several methods of one path merge into one entry).
pub(crate) fn from_table(routes: Vec<(RouteSpec, Handler)>) -> Router<AppState> {
    routes
        .into_iter()
        .fold(Router::new(), |r, (spec, h)| r.route(spec.path, h))
}

/// Every route the server answers (the API's, then the dashboard's), for the tests that hold
/// each to its access and to the OpenAPI document.
#[cfg(feature = "test-hooks")]
pub fn all() -> Vec<RouteSpec> {
    crate::http::api_routes()
        .into_iter()
        .chain(crate::dashboard::routes())
        .map(|(spec, _)| spec)
        .collect()
}

/// The whole application: the API, the dashboard, a JSON 404 for anything else, and the
/// request-id and logging layer around all of it.
pub fn router(state: AppState) -> Router {
    from_table(crate::http::api_routes())
        // The web dashboard: `/`, `/login`, `/keys`, ... and `/static/...`.
        .merge(crate::dashboard::router())
        .fallback(crate::http::not_found)
        .layer(middleware::from_fn(crate::http::request_context))
        .with_state(state)
}

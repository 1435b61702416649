//! What a route is: a path, a method and who may call it ([`Access`]). The API
//! ([`crate::http`]) and the dashboard (`dashboard`) each keep a table of their routes;
//! the application's router ([`crate::app`]) is built from those tables, so a route cannot exist
//! without a declared access, and the route-authorization test (`tests/api/door.rs`) holds every
//! route to its declaration.

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

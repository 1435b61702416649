//! The dashboard's markup: one module per page module, each a set of functions from a
//! view-model (plus the [`SignedIn`](super::SignedIn) user the page shell shows) to
//! [`maud::Markup`]. No I/O, no service calls, no `async`: the handlers read, decide and compute
//! the view-model; these only lay it out. View modules import [`super::ui`] and
//! [`super::chart`], and one another only downwards (`keys` uses `usage` and `admin`'s audit
//! table), never a page module.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod identities;
pub(crate) mod keys;
pub(crate) mod reports;
pub(crate) mod usage;
pub(crate) mod webhooks;

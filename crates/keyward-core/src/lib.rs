//! keyward-core: the parts of keyward that do no I/O at all.
//!
//! # Layout
//! - [`keyformat`]: generating, parsing and hashing API keys and management tokens.
//! - [`secret`]: the type that holds plaintext secrets (redacting `Debug`, zeroed on drop).
//! - [`time`]: [`time::Timestamp`] and the [`time::Clock`] that tests control.
//! - [`invalid`]: [`invalid::Invalid`], the error of every validator and parser.
//! - [`id`]: prefixed, time-ordered object ids.
//! - [`scope`], [`policy`], [`model`]: validated domain types.
//! - [`limits`]: named rate limits and quota refills.
//! - [`routes`]: route rules (the scopes a request needs from its method and path).
//! - [`verify`]: the verification decision, a pure function of key state, request and `now`.
//! - [`kinds`]: the closed sets of names (audit actions, webhook events, anomaly kinds,
//!   granularities) as enums.
//! - [`user`]: dashboard users and the rules for their email and password.
//! - [`api`]: the HTTP API's request and answer bodies, shared with the client crate.
//! - [`audit`]: RFC 8785 canonical JSON and the hash chain of audit events.

pub mod api;
pub mod audit;
pub mod id;
pub mod invalid;
pub mod keyformat;
pub mod kinds;
pub mod limits;
pub mod model;
pub mod policy;
pub mod routes;
pub mod scope;
pub mod seal;
pub mod secret;
pub mod time;
pub mod user;
pub mod verify;

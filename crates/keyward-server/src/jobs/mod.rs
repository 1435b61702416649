//! Background tasks, each named, supervised by the server and drained on shutdown.

pub(crate) mod feed;
pub mod sweep;
pub mod usage;
pub mod webhooks;

//! Background tasks, each named, supervised by the server and drained on shutdown.

pub mod feed;
pub mod usage;

//! End-to-end tests: real servers on port 0 against a fresh SQLite file or a fresh PostgreSQL
//! schema, driven over HTTP (and the `keyward` binary for the CLI). Every test body runs against
//! both backends through the `both!` macro.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod automation;
mod cli;
mod client;
mod cluster;
mod conventions;
mod crash;
mod dashboard;
mod degraded;
mod door;
mod durability;
mod grpc;
mod identities;
mod import;
mod keys;
mod leaks;
mod lifecycle;
mod limits;
mod outbound;
mod proxies;
mod retention;
mod roles;
mod routes;
mod scan;
mod sealing;
mod secrets;
mod tls;
mod traces;
mod usage;
mod verify;

//! The store conformance suite: every test body is written once, as an async fn that takes an
//! `Arc<dyn Store>`, and runs against both backends — SQLite (a fresh file per test) and
//! PostgreSQL (a fresh schema per test; skipped with a message when PostgreSQL is not reachable,
//! except under `CI=true`, see `keyward_store::testing`).
//!
//! `conformance!(body => sqlite_body, postgres_body)` generates the two `#[tokio::test]`s.
//! macro_rules cannot glue identifiers, so each invocation spells out both test names; they are
//! always `sqlite_` and `postgres_` followed by the body's name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

macro_rules! conformance {
    ($body:path => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let db = crate::support::TestDb::sqlite().await;
            $body(db.store()).await;
            db.finish().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(db) = crate::support::TestDb::postgres().await else {
                return;
            };
            $body(db.store()).await;
            db.finish().await;
        }
    };
    // For bodies that open the database themselves: it is not opened before they run.
    (unopened $body:path => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let db = crate::support::TestDb::sqlite_unopened();
            $body(&db).await;
            db.finish().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(db) = crate::support::TestDb::postgres_unopened().await else {
                return;
            };
            $body(&db).await;
            db.finish().await;
        }
    };
    // For bodies that need the database itself (to open it again), not just the store.
    (with_db $body:path => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let db = crate::support::TestDb::sqlite().await;
            $body(&db).await;
            db.finish().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(db) = crate::support::TestDb::postgres().await else {
                return;
            };
            $body(&db).await;
            db.finish().await;
        }
    };
}

#[path = "store/support.rs"]
mod support;

#[path = "store/anomalies.rs"]
mod anomalies;
#[path = "store/audit.rs"]
mod audit;
#[path = "store/keys.rs"]
mod keys;
#[path = "store/keyspaces.rs"]
mod keyspaces;
#[path = "store/leases.rs"]
mod leases;
#[path = "store/lifecycle.rs"]
mod lifecycle;
#[path = "store/listing.rs"]
mod listing;
#[path = "store/schema.rs"]
mod schema;
#[path = "store/tokens.rs"]
mod tokens;
#[path = "store/transactions.rs"]
mod transactions;
#[path = "store/usage.rs"]
mod usage;
#[path = "store/webhooks.rs"]
mod webhooks;

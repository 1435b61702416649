//! Data at rest (`docs/benchmarks.md`): bytes on disk per key and per active key-day of usage,
//! on SQLite and (when it answers on 127.0.0.1:5432) PostgreSQL.
//!
//! ```sh
//! cargo bench -p keyward --bench storage
//! ```
//!
//! - per key: 20,000 keys created in-process through the control plane (each with its audit
//!   event and change-feed row, typical fields: name, owner, two scopes, a label), the
//!   database's size before and after;
//! - per active key-day: 5,000 of them verified once an hour for a simulated day (time
//!   injected), usage flushed each hour and the day swept (roll-up into hours and days), the
//!   size before and after. That day's rows stay: minutes for the minute retention (7 days by
//!   default), hours for 90 days, days for 2 years, so the figure is what one key-day costs
//!   while its minutes are kept, and the tail it leaves after.
//!
//! Sizes: SQLite's pages in use (`page_count - freelist_count`, after a WAL checkpoint);
//! PostgreSQL's `pg_total_relation_size` of the schema's tables (heap, indexes, TOAST) after
//! `VACUUM ANALYZE`.

#![allow(clippy::expect_used)] // a benchmark whose setup fails should stop loudly

use std::sync::Arc;

use keyward_core::model::Actor;
use keyward_core::time::{ManualClock, Timestamp};
use keyward_server::authz::Ctx;
use keyward_server::verifier::Request;
use keyward_server::{service, AppState, Config};
use sqlx::{Connection, Row};

const KEYS: usize = 20_000;
const ACTIVE: usize = 5_000;

enum Db {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

async fn size(db: &Db) -> i64 {
    match db {
        Db::Sqlite(path) => {
            let url = format!("sqlite://{}", path.display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut c)
                .await
                .expect("checkpoint");
            let page: i64 = sqlx::query("PRAGMA page_size")
                .fetch_one(&mut c)
                .await
                .expect("page size")
                .get(0);
            let count: i64 = sqlx::query("PRAGMA page_count")
                .fetch_one(&mut c)
                .await
                .expect("page count")
                .get(0);
            let free: i64 = sqlx::query("PRAGMA freelist_count")
                .fetch_one(&mut c)
                .await
                .expect("freelist")
                .get(0);
            (count - free) * page
        }
        Db::Postgres { url, schema } => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
            sqlx::query("VACUUM ANALYZE")
                .execute(&mut c)
                .await
                .expect("vacuum");
            sqlx::query(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            )
            .bind(schema)
            .fetch_one(&mut c)
            .await
            .expect("size")
            .get(0)
        }
    }
}

async fn measure(name: &str, db_url: &str, db: Db) {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let store = keyward_store::open(db_url).await.expect("store");
    let state = AppState::new(store, Arc::new(clock.clone()), Config::default());
    let ctx = Ctx::operator(Actor::cli("bench"));
    let ks = service::create_keyspace(
        &state.control,
        &ctx.allow().expect("operator"),
        serde_json::from_value(serde_json::json!({
            "name": "storage", "prefix": "store", "preset": "relaxed",
            "policy": {"inactivity_revoke_secs": null}
        }))
        .expect("keyspace"),
    )
    .await
    .expect("keyspace");
    let before = size(&db).await;
    let mut plaintexts = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let input: service::CreateKey = serde_json::from_value(serde_json::json!({
            "keyspace_id": ks.id,
            "name": format!("service {i}"),
            "owner": format!("customer-{}", i % 1000),
            "scopes": ["orders:read", "orders:write"],
            "labels": {"env": "prod"},
        }))
        .expect("key");
        let (_, p) = service::create_key(&state.control, &ctx.allow().expect("operator"), input)
            .await
            .expect("create");
        plaintexts.push(p);
    }
    let after_keys = size(&db).await;
    let per_key = (after_keys - before) as f64 / KEYS as f64;
    println!(
        "{name}: {per_key:.0} bytes per key ({KEYS} keys with their audit events and feed rows: {} KiB)",
        (after_keys - before) / 1024
    );
    // A simulated day: each active key used once an hour.
    let verifier = state.verifier();
    for _ in 0..24 {
        for p in plaintexts.iter().take(ACTIVE) {
            let req = Request {
                key: p.expose(),
                scopes: &[],
                ip: None,
                cost: 1,
                keyspaces: None,
                route: None,
            };
            verifier.verify(&req).await.expect("verify");
        }
        keyward_server::jobs::usage::flush(&state.control)
            .await
            .expect("flush");
        clock.advance_secs(3600);
    }
    let mut last = None;
    keyward_server::jobs::sweep::sweep_once(&state.control, state.config.retention(), &mut last)
        .await
        .expect("sweep");
    let after_day = size(&db).await;
    let per_day = (after_day - after_keys) as f64 / ACTIVE as f64;
    println!(
        "{name}: {per_day:.0} bytes per active key-day ({ACTIVE} keys used once an hour for a day, swept: {} KiB)",
        (after_day - after_keys) / 1024
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!(
        "keyward-bench-storage-{}",
        keyward_core::keyformat::base62_random(8)
    ));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join("k.db");
    rt.block_on(measure(
        "sqlite",
        &format!("sqlite://{}", path.display()),
        Db::Sqlite(path.clone()),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    rt.block_on(async {
        use keyward_store::testing;
        if !testing::postgres_available().await {
            println!("postgres: SKIPPED (no PostgreSQL on 127.0.0.1:5432)");
            return;
        }
        let schema = testing::unique_schema();
        testing::create_schema(&schema).await.expect("schema");
        let url = testing::pg_url_with_schema(&schema);
        measure(
            "postgres",
            &url,
            Db::Postgres {
                url: url.clone(),
                schema,
            },
        )
        .await;
    });
}

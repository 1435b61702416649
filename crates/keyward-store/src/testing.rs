//! Helpers for tests that need a real database: a fresh SQLite file or a fresh PostgreSQL
//! schema per test. PostgreSQL tests run when `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) answers; when it does not, they are skipped with a
//! message, except under `CI=true`, where a missing PostgreSQL fails the test.

use std::sync::atomic::{AtomicU64, Ordering};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("KEYWARD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A schema name no other test (or test process) uses.
pub fn unique_schema() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Says once per process, where a person running `cargo test` sees it, that tests were skipped
/// and why. The test harness captures `eprintln!` of passing tests (a skipped test passes), so
/// the line is written to the process's standard error directly, past the capture.
pub fn announce_skip(why: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.iter().any(|s| s == why) {
        return;
    }
    said.push(why.to_string());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\nSKIPPED: {why}");
    let _ = err.flush();
}

/// Whether PostgreSQL tests should run. Prints why when they are skipped; panics in CI.
pub async fn postgres_available() -> bool {
    use sqlx::Connection;
    let url = pg_url();
    let ok = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        sqlx::PgConnection::connect(&url),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !ok {
        if in_ci() {
            #[allow(clippy::panic)]
            {
                panic!(
                    "CI=true but PostgreSQL at {} is not reachable",
                    crate::redact_url(&url)
                );
            }
        }
        announce_skip(&format!(
            "PostgreSQL at {} is not reachable: the PostgreSQL half of these tests did not run \
             (start PostgreSQL or set KEYWARD_TEST_POSTGRES_URL)",
            crate::redact_url(&url)
        ));
    }
    ok
}

/// A PostgreSQL URL whose connections use a fresh schema (for servers started by tests).
pub fn pg_url_with_schema(schema: &str) -> String {
    let url = pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Creates a schema (for servers that open the URL from [`pg_url_with_schema`]).
pub async fn create_schema(schema: &str) -> crate::Result<()> {
    crate::PgStore::open_in_schema(&pg_url(), Some(schema))
        .await
        .map(|_| ())
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn redis_url() -> String {
    std::env::var("KEYWARD_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_string())
}

/// Whether Redis tests should run. Prints why when they are skipped; panics in CI.
pub async fn redis_available() -> bool {
    let url = redis_url();
    let addr = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let ok = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !ok {
        if in_ci() {
            #[allow(clippy::panic)]
            {
                panic!("CI=true but Redis at {url} is not reachable");
            }
        }
        announce_skip(&format!(
            "Redis at {url} is not reachable: the Redis tests did not run \
             (start Redis or set KEYWARD_TEST_REDIS_URL)"
        ));
    }
    ok
}

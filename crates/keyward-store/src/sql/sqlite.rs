//! The embedded single-node backend: one SQLite file in WAL mode. Opening it (connection
//! options, migrating under SQLite's write lock) and SQLite's side of the dialect differences.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::sql::common::{map_err, WriteTx, BEGIN_TAKING_WRITE_LOCK};
use crate::{Result, StoreError};

/// The embedded single-node backend: one SQLite file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    /// What write transactions know between commits (`sql::known`).
    known: std::sync::Arc<crate::sql::known::KnownCell>,
    pool: SqlitePool,
    /// The one connection write transactions take (the control plane's [`Store::begin`], the
    /// usage flush and roll-up, quota leases, webhook attempts): SQLite writes one at a time
    /// anyway, and a connection that made the last write keeps its page cache, where one that
    /// did not rereads every page it needs from the write-ahead log. Writers wait for it in
    /// turn, not in SQLite's busy-wait (where a sleeping waiter loses to one in the queue).
    /// Single statements that write (pruning, a token's last use) stay on the pool.
    ///
    /// [`Store::begin`]: crate::Store::begin
    writer: SqlitePool,
    node: String,
}

mod migrate {
    crate::sql::migrate::for_backend!(
        sqlx::Sqlite,
        "sqlite",
        table_exists: "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1",
        // `_sqlx_migrations.installed_on` is text as CURRENT_TIMESTAMP writes it (UTC).
        installed_on: "datetime(applied_at / 1000, 'unixepoch')",
    );
}

/// Creates a new database file readable by its owner only (0600): it holds webhook secrets and
/// password hashes. SQLite gives its `-wal` and `-shm` files the same permissions. An existing
/// file keeps its own.
fn private_file(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
            return;
        }
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // The usage flusher rewrites the rows of every key used in the last second. Read
            // pages through a memory map (no copy per page read), keep more of them cached,
            // and checkpoint the WAL less often: a page rewritten every second is copied
            // into the database once per checkpoint, however often it was rewritten.
            .pragma("mmap_size", "1073741824")
            .pragma("cache_size", "-131072")
            .pragma("wal_autocheckpoint", "10000");
        private_file(opts.get_filename());
        // Connecting turns a new file into WAL, which takes a lock SQLite cannot wait for
        // (`busy_timeout` does not apply): when several processes open one new file at once,
        // a loser gets "database is locked" here at once, and tries again.
        let mut tries = 0;
        let pool_of = |n: u32| {
            SqlitePoolOptions::new()
                .max_connections(n)
                // A connection to a local file cannot go stale: no round trip to its worker
                // thread to test it before each use.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
        };
        let pool = loop {
            let connected = pool_of(8).connect_with(opts.clone()).await;
            match connected {
                Ok(pool) => break pool,
                Err(sqlx::Error::Database(db))
                    if tries < 100
                        && db
                            .code()
                            .and_then(|c| c.parse::<i64>().ok())
                            .is_some_and(|c| c & 0xff == 5) =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        };
        let mut conn = pool.acquire().await.map_err(map_err)?;
        // Migrate under SQLite's write lock, taken up front: when several processes (nodes,
        // the CLI) open one new file at once, the first migrates and the others then find
        // the work done instead of failing on "table already exists". (PostgreSQL uses an
        // advisory lock for the same.)
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        match migrate::run(&mut tx).await {
            Ok(()) => tx.commit().await.map_err(map_err)?,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        drop(conn);
        let writer = pool_of(1)
            .connect_with(opts.clone())
            .await
            .map_err(map_err)?;
        Ok(Self {
            pool,
            writer,
            node: keyward_core::keyformat::base62_random(16),
            known: std::sync::Arc::default(),
        })
    }

    /// `VACUUM INTO`: a consistent, compacted copy in one file, taken while others write.
    async fn backup_into(&self, path: &str) -> Result<()> {
        sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Before the pool closes: copies the write-ahead log into the database file and truncates
    /// it, so the file alone is complete even if the process exits before SQLite's own
    /// close-time checkpoint runs (sqlx closes connections on a worker thread).
    async fn before_close(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not checkpoint the write-ahead log");
        }
    }

    /// SQLite has no notifications; the follower polls.
    fn signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Begins a write transaction on the writer connection and takes the write lock, in one
    /// round trip (see [`BEGIN_TAKING_WRITE_LOCK`]); answers the lock's counter and whether it
    /// replaced `last_tag`.
    async fn begin_write(
        &self,
        last_tag: Option<String>,
        tag: &str,
    ) -> Result<(WriteTx<sqlx::Sqlite>, i64, Option<bool>)> {
        // Dropped on an error below, it rolls back whatever began.
        let mut tx = WriteTx::new(self.writer.acquire().await.map_err(map_err)?);
        let (n, hit): (i64, Option<bool>) = sqlx::query_as(BEGIN_TAKING_WRITE_LOCK)
            .bind(last_tag)
            .bind(tag)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        Ok((tx, n, hit))
    }

    /// Runs a `Writes::finish_guarded` text (its own `BEGIN IMMEDIATE` to `COMMIT`) on the
    /// writer connection; one that stopped at an error is rolled back.
    async fn write_guarded(
        &self,
        mut q: sqlx::QueryBuilder<'static, sqlx::Sqlite>,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut tx = WriteTx::new(self.writer.acquire().await?);
        q.build().execute(&mut *tx).await?;
        tx.committed();
        Ok(())
    }
}

sql_backend!(
    SqliteStore,
    SqliteTx,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    "sqlite",
    "instr",
    // The un-rolled minutes straight from their partial index, oldest first: a batch reads
    // its own rows only (the planner, without statistics, took the time index and read every
    // minute bucket before each batch). One writer: no lock order to keep. Ties by row id (the
    // index's own order, so nothing is sorted): the roll-up reads its batch three times and must
    // get the same rows each time (see `usage::rollup_in_place`).
    "FROM usage_buckets INDEXED BY usage_buckets_unrolled_idx \
     WHERE granularity = 'm' AND n <> rolled AND start_at < $1 ORDER BY start_at, rowid LIMIT $2",
    // Rolled minutes leave the index: each batch starts at its front, no cursor needed.
    false,
    // Minutes not rolled up yet, as `usage_buckets_unrolled_idx` has it.
    "n <> rolled",
    // Usage batches as rows of bound values (see `usage::upserts`).
    values,
    // Whole-table walks read a page as one JSON text (see `common::json_rows_around`).
    Some("json_group_array(json_array({cols}) ORDER BY {order})")
);

//! The cluster backend: any number of nodes share one PostgreSQL database (optionally one schema
//! of it). Opening it (migrating under an advisory lock on the schema), the LISTEN/NOTIFY change
//! signal, and PostgreSQL's side of the dialect differences.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::sql::common::{map_err, WriteTx, TAKE_WRITE_LOCK_COUNTING};
use crate::{Result, StoreError};

/// Class of the advisory lock held while migrating a schema (the second key is the schema's
/// name hashed), so nodes starting together migrate it once while other schemas of the same
/// database migrate in parallel. The lock is the transaction's: it ends with it, also on error.
const MIGRATION_LOCK: i32 = 0x6b65_7977; // "keyw" in ASCII

/// How long an idle connection is lent without testing it first.
const STILL_FRESH: Duration = Duration::from_secs(1);

/// The cluster backend: any number of nodes share one PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    /// What write transactions know between commits (`sql::known`).
    known: std::sync::Arc<crate::sql::known::KnownCell>,
    pool: PgPool,
    node: String,
    /// Signalled when another node commits a change (LISTEN/NOTIFY).
    changes: std::sync::Arc<tokio::sync::Notify>,
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

mod migrate {
    crate::sql::migrate::for_backend!(
        sqlx::Postgres,
        "postgres",
        // `current_schema()`: where unqualified names are created, so where `keyward_migrations`
        // was and `_sqlx_migrations` goes (the test schema under `open_in_schema`).
        table_exists: "SELECT COUNT(*) AS n FROM pg_catalog.pg_tables \
                       WHERE schemaname = current_schema() AND tablename = $1",
        installed_on: "to_timestamp(applied_at / 1000.0)",
    );
}

/// Creates the database `opts` names, connected to the server's `postgres` database with the
/// same role. Another process creating it at the same moment is not an error.
async fn create_database(opts: &PgConnectOptions) -> Result<()> {
    let name = opts.get_database().unwrap_or_default().to_string();
    let maintenance = opts.clone().database("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&maintenance)
        .await
        .map_err(|e| {
            StoreError::Other(format!(
                "the database \"{name}\" does not exist, and keyward could not connect to the \
                 server's \"postgres\" database to create it: {e}"
            ))
        })?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::raw_sql(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => {
            tracing::info!(database = %name, "created the PostgreSQL database");
            Ok(())
        }
        // Created by another process meanwhile (duplicate_database, or the catalog's unique
        // index when both ran at once).
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(())
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
            Err(StoreError::Other(format!(
                "the database \"{name}\" does not exist and this role may not create databases \
                 (CREATE DATABASE {quoted} as a role that may, or grant CREATEDB)"
            )))
        }
        Err(e) => Err(StoreError::Other(format!(
            "the database \"{name}\" does not exist and could not be created: {e}"
        ))),
    }
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_in_schema(url, None).await
    }

    /// Opens the store inside `schema` (created when missing): each test gets its own.
    pub async fn open_in_schema(url: &str, schema: Option<&str>) -> Result<Self> {
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("bad PostgreSQL URL: {e}")))?;
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(StoreError::Other("schema names are [a-z0-9_]".into()));
            }
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts)
                .await
                .map_err(map_err)?;
            let created = sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await
                .map_err(map_err);
            match created {
                // `IF NOT EXISTS` does not cover a concurrent CREATE: the loser gets a unique
                // violation on pg_namespace, and the schema exists all the same.
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            opts = opts.options([("search_path", schema)]);
        }
        let connect = || {
            PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                // sqlx tests each connection with a round trip before lending it (and again as
                // it takes it back). A connection used within the last second is lent as it is:
                // one create costs two round trips fewer. One broken in that second (the server
                // restarted) fails its request once, as one broken in use does.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= STILL_FRESH {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(opts.clone())
        };
        let pool = match connect().await {
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
                // The database named in the URL does not exist yet: create it (as a missing
                // SQLite file is created), when the role may.
                create_database(&opts).await?;
                connect().await.map_err(map_err)?
            }
            other => other.map_err(map_err)?,
        };
        let mut tx = pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(COALESCE(current_schema(), '')))")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        match migrate::run(&mut tx).await {
            Ok(()) => tx.commit().await.map_err(map_err)?,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        Ok(Self {
            pool,
            node: keyward_core::keyformat::base62_random(16),
            known: std::sync::Arc::default(),
            changes: std::sync::Arc::default(),
            listening: std::sync::Arc::default(),
        })
    }

    /// PostgreSQL is backed up with its own tools.
    async fn backup_into(&self, _path: &str) -> Result<()> {
        Err(StoreError::Other(
            "a PostgreSQL database is backed up with pg_dump and restored with pg_restore (see docs/operations.md)".into(),
        ))
    }

    /// Nothing to do before the pool closes.
    async fn before_close(&self) {}

    fn signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.start_listener())
    }

    /// Write transactions take any connection of the pool (each node's wait on the write
    /// lock's row in turn).
    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a write transaction and takes the write lock; answers the lock's counter and
    /// whether it replaced `last_tag`. Two round trips: sent as one simple query (which takes
    /// no parameters, so planned anew each time), the two statements made creating a key
    /// slower, not faster (docs/benchmarks.md, "Creating keys one at a time").
    async fn begin_write(
        &self,
        last_tag: Option<String>,
        tag: &str,
    ) -> Result<(WriteTx<sqlx::Postgres>, i64, Option<bool>)> {
        // Dropped on an error below, it rolls back whatever began.
        let mut tx = WriteTx::new(self.pool.acquire().await.map_err(map_err)?);
        sqlx::Executor::execute(&mut *tx, "BEGIN")
            .await
            .map_err(map_err)?;
        let (n, hit): (i64, Option<bool>) = sqlx::query_as(TAKE_WRITE_LOCK_COUNTING)
            .bind(last_tag)
            .bind(tag)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        Ok((tx, n, hit))
    }

    /// Runs a `Writes::finish_guarded` statement, a transaction of its own.
    async fn write_guarded(
        &self,
        mut q: sqlx::QueryBuilder<'static, sqlx::Postgres>,
    ) -> std::result::Result<(), sqlx::Error> {
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    /// Starts (once) a task that LISTENs for change notifications and signals `changes`.
    fn start_listener(&self) -> std::sync::Arc<tokio::sync::Notify> {
        let notify = self.changes.clone();
        if self
            .listening
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return notify;
        }
        let pool = self.pool.clone();
        let signal = notify.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let schema: sqlx::Result<String> =
                    sqlx::query_scalar("SELECT COALESCE(current_schema(), '')")
                        .fetch_one(&pool)
                        .await;
                let listener = match schema {
                    Ok(schema) => sqlx::postgres::PgListener::connect_with(&pool)
                        .await
                        .map(|l| (l, schema)),
                    Err(e) => Err(e),
                };
                match listener {
                    Ok((mut l, schema)) => {
                        if l.listen("keyward_changes").await.is_ok() {
                            while let Ok(n) = l.recv().await {
                                if wakes(n.payload(), &schema, &node) {
                                    signal.notify_one();
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "change listener: cannot connect"),
                }
                // Reconnect; the follower's polling covers the gap.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        notify
    }
}

/// Whether a change notification wakes the follower of `node` in `schema`: its payload (the
/// schema, a space, the writing node: migration 0015) names this schema and another node. A
/// node's own commits were applied when it made them, and another schema is another deployment.
/// A payload of the schema alone (migration 0011, a node not yet upgraded) wakes every node.
fn wakes(payload: &str, schema: &str, node: &str) -> bool {
    match payload.rsplit_once(' ') {
        Some((s, origin)) => s == schema && origin != node,
        None => payload == schema,
    }
}

sql_backend!(
    PgStore,
    PgTx,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    "postgres",
    "strpos",
    // Locked in primary key order (the flusher's), read in that order from the partial index
    // of dirty minutes by key (migrations 0013 and 0016), after the previous batch's last row: a
    // batch reads its own rows and the current minute's of its keys, not every un-rolled row
    // (sorting all of them for each batch made a roll-up of a million minutes quadratic).
    // Byte order (`COLLATE "C"`, as the index): the order the flusher writes rows in, and the
    // order the cursor is computed in.
    "FROM usage_buckets WHERE granularity = 'm' AND dirty AND start_at < $1 \
     AND (key_id COLLATE \"C\", start_at, code COLLATE \"C\") > ($3, $4, $5) \
     ORDER BY key_id COLLATE \"C\", start_at, code COLLATE \"C\" LIMIT $2 FOR UPDATE",
    true,
    // Minutes not rolled up yet: the generated column of migration 0016, which its index has.
    "dirty",
    // Usage batches as one array a column (see `usage::upserts`).
    arrays,
    // Whole-table walks read rows: the protocol streams them, and `json_agg` halved the
    // inventory's and the audit walk's pace at a million rows.
    None
);

#[cfg(test)]
mod tests {
    use super::wakes;

    #[test]
    fn a_notification_wakes_the_other_nodes_of_its_schema() {
        assert!(
            !wakes("public abc123", "public", "abc123"),
            "its own commit"
        );
        assert!(wakes("public xyz789", "public", "abc123"));
        assert!(wakes("public abc1234", "public", "abc123"));
        assert!(wakes("a schema abc1234", "a schema", "abc123"));
        assert!(!wakes("a schema abc123", "a schema", "abc123"));
        assert!(!wakes("other xyz789", "public", "abc123"), "another schema");
        assert!(!wakes("publi xyz789", "public", "abc123"));
        // Migration 0011's payload (the schema alone) wakes every node of the schema.
        assert!(wakes("public", "public", "abc123"));
        assert!(!wakes("other", "public", "abc123"));
        assert!(!wakes("", "public", "abc123"));
    }
}

//! What the SQL of every concern shares: error mapping, reading a column, JSON and timestamp
//! columns, the write-lock statement, and the query-builder fragments for IN-lists and "newest
//! first" cursors. Plain functions, generic over the backend: nothing here is written per backend.
//! (Each concern's row decoders sit next to the column list they read, in that concern's file.)

use keyward_core::keyformat::KeyHash;
use keyward_core::time::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use crate::{Result, StoreError, TimeCursor};

/// The first statement of every write transaction (see the `sql` module docs): updating the
/// single `write_lock` row serializes writers across every node.
pub(super) const TAKE_WRITE_LOCK: &str = "UPDATE write_lock SET n = n + 1 WHERE id = 1";

/// [`TAKE_WRITE_LOCK`], answering the counter as this transaction made it and whether the tag
/// it replaced is `$1` (the node's last commit's), and setting its own tag `$2` (for `known`).
pub(super) const TAKE_WRITE_LOCK_COUNTING: &str =
    "UPDATE write_lock SET n = n + 1, hit = (tag = $1), tag = $2 WHERE id = 1 RETURNING n, hit";

/// SQLite's [`TAKE_WRITE_LOCK_COUNTING`] with the `BEGIN IMMEDIATE` before it, in one text (one
/// round trip to the connection's worker thread; `?` are bound in turn).
pub(super) const BEGIN_TAKING_WRITE_LOCK: &str = "BEGIN IMMEDIATE; \
    UPDATE write_lock SET n = n + 1, hit = (tag = ?), tag = ? WHERE id = 1 RETURNING n, hit";

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(
            db.constraint()
                .map(str::to_string)
                .unwrap_or_else(|| db.message().to_string()),
        ),
        sqlx::Error::Database(db) if cannot_write(&*db) => {
            StoreError::Unavailable(format!("the database cannot be written: {}", db.message()))
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Other(other.to_string()),
    }
}

/// A database that refuses writes as a whole (not this statement): read-only (SQLite's
/// `SQLITE_READONLY` family, PostgreSQL's `read_only_sql_transaction` on a replica or
/// read-only role) or full (`SQLITE_FULL`, PostgreSQL's `disk_full`).
fn cannot_write(db: &dyn sqlx::error::DatabaseError) -> bool {
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 8 | 13));
    }
    matches!(db.code().as_deref(), Some("25006" | "53100"))
}

/// Column `col` of a row of either backend.
pub(super) fn get<'r, T, R>(r: &'r R, col: &str) -> Result<T>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    r.try_get(col).map_err(map_err)
}

pub(super) fn json<T: DeserializeOwned>(col: &str, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Other(format!("corrupt JSON in column {col}: {e}")))
}

pub(super) fn json_opt<T: DeserializeOwned>(col: &str, s: Option<String>) -> Result<Option<T>> {
    s.map(|s| json(col, &s)).transpose()
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

pub(super) fn hash_from(bytes: Vec<u8>) -> Result<KeyHash> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Other("corrupt hash column".into()))?;
    Ok(KeyHash(arr))
}

/// Rows after a "newest first" cursor (`created_at` ms, id).
pub(super) fn push_after_time<'a, DB: Database>(
    q: &mut QueryBuilder<'a, DB>,
    after: &Option<TimeCursor>,
) where
    i64: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
{
    if let Some((at, id)) = after {
        // A row value: both backends seek the (created_at, id) index to it (with the
        // equivalent `created_at < $1 OR (created_at = $1 AND id < $2)` PostgreSQL could not,
        // and read every row before the cursor).
        q.push(" AND (created_at, id) < (").push_bind(*at);
        q.push(", ").push_bind(id.clone()).push(")");
    }
}

/// `AND col IN (ids)`; `None` adds nothing, an empty list matches nothing.
pub(super) fn push_in<'a, DB: Database>(
    q: &mut QueryBuilder<'a, DB>,
    col: &str,
    ids: Option<&[String]>,
) where
    String: Encode<'a, DB> + Type<DB>,
{
    if let Some(ids) = ids {
        if ids.is_empty() {
            q.push(" AND 1 = 0");
            return;
        }
        q.push(format!(" AND {col} IN ("));
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id.clone());
        }
        q.push(")");
    }
}

/// The text around a page query (`inner`, selecting at least `cols`, in `order`) that makes its
/// rows come back as one JSON text, an array of each row's `cols`; nothing to add when the
/// backend reads rows as they are. `pattern` is the backend's aggregate (`sql_backend!`'s
/// `$json_rows`, with `{cols}` and `{order}` in it).
///
/// Reads of whole tables a page at a time (the audit trail's walk, the inventory) go through
/// it: SQLite's driver hands rows over to the async side one at a time, which cost more than
/// their columns (the trail's walk and the inventory ran at a third of the pace), and one text
/// crosses once. No rows read as `[]` ([`from_json_rows`]).
pub(super) fn json_rows_around(
    pattern: Option<&str>,
    cols: &str,
    order: &str,
) -> (String, &'static str) {
    match pattern {
        Some(p) => {
            let agg = p.replace("{cols}", cols).replace("{order}", order);
            (format!("SELECT {agg} AS page FROM ("), ") AS p")
        }
        None => (String::new(), ""),
    }
}

/// The rows of a [`json_rows_around`] text, each as its tuple of columns.
pub(super) fn from_json_rows<T: DeserializeOwned>(
    what: &str,
    page: Option<&str>,
) -> Result<Vec<T>> {
    match page {
        Some(page) => json(what, page),
        None => Ok(Vec::new()),
    }
}

/// Writes sent to the database in one round trip: SQLite runs several statements of one text
/// (`;` between them, each `?` bound in turn); PostgreSQL takes one statement, so each write is
/// a data-changing `WITH` clause of a `SELECT 1` (all of them run to completion, and constraints
/// are checked at the statement's end, when every row is in).
pub(super) struct Writes<'a, DB: Database> {
    q: QueryBuilder<'a, DB>,
    n: usize,
    /// Whether the writes follow [`Writes::if_lock_at`]'s guard.
    guarded: bool,
}

/// What SQLite's guard in [`Writes::if_lock_at`] fails with when the lock moved on.
const LOCK_MOVED: &str = "malformed JSON";

impl<'a, DB: Database> Writes<'a, DB> {
    pub(super) fn new() -> Self {
        Writes {
            q: QueryBuilder::new(""),
            n: 0,
            guarded: false,
        }
    }

    /// Whether `e` is a database's answer to a statement that failed as a whole: nothing it
    /// held was written (a moved lock under [`Writes::if_lock_at`], a constraint, ...).
    pub(super) fn refused(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(_))
    }

    /// Whether `e` is [`Writes::if_lock_at`]'s guard failing (the lock moved on).
    pub(super) fn lock_moved(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(d) if Self::statements() => d.message().contains(LOCK_MOVED),
            // division_by_zero
            sqlx::Error::Database(d) => d.code().as_deref() == Some("22012"),
            _ => false,
        }
    }

    fn statements() -> bool {
        DB::NAME == "SQLite"
    }

    /// The builder, ready for the next write (one `INSERT`, `UPDATE` or `DELETE`).
    pub(super) fn next(&mut self) -> &mut QueryBuilder<'a, DB> {
        match (Self::statements(), self.n) {
            (true, 0) if !self.guarded => {}
            (true, _) => {
                self.q.push("; ");
            }
            (false, 0) if !self.guarded => {
                self.q.push("WITH w0 AS (");
            }
            (false, 0) => {
                self.q.push(", w0 AS (");
            }
            (false, n) => {
                self.q.push(format!("), w{n} AS ("));
            }
        }
        self.n += 1;
        &mut self.q
    }

    /// The query of every write pushed; `None` when there is none.
    pub(super) fn finish(mut self) -> Option<QueryBuilder<'a, DB>> {
        if self.n == 0 {
            return None;
        }
        if !Self::statements() {
            self.q.push(") SELECT 1");
        }
        Some(self.q)
    }

    /// The query of a [`Writes::if_lock_at`] and every write pushed, committing them.
    pub(super) fn finish_guarded(mut self) -> QueryBuilder<'a, DB> {
        match (Self::statements(), self.n) {
            (true, _) => {
                self.q.push("; COMMIT");
            }
            (false, 0) => {
                self.q.push(" SELECT 1 / (SELECT COUNT(*)::INT FROM l)");
            }
            (false, _) => {
                self.q.push(") SELECT 1 / (SELECT COUNT(*)::INT FROM l)");
            }
        }
        self.q
    }
}

impl<DB: Database> Writes<'static, DB>
where
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    /// Writes that take effect only if the write lock's counter is still `n` and its tag still
    /// `tag` (no write transaction of any node committed since the one that left them), taking
    /// the lock on the way (counter `n + 1`, tag `new_tag`): a whole write transaction in one
    /// round trip, finished by [`Writes::finish_guarded`].
    ///
    /// SQLite: `BEGIN IMMEDIATE`, the lock's update, then a statement that fails (stopping the
    /// text before any write) unless the update changed its row. PostgreSQL: one statement, so
    /// a transaction of its own; the lock's update is a `WITH` clause its answer reads, dividing
    /// by the number of rows that update changed. The answer reading it is what makes it run
    /// first: the writes, which nothing reads, run after the answer, so a moved lock fails the
    /// statement before any of them. Either way a moved lock is a database error, and nothing
    /// is written.
    pub(super) fn if_lock_at(n: i64, tag: String, new_tag: String) -> Self {
        let mut q = QueryBuilder::new(if Self::statements() {
            "BEGIN IMMEDIATE; UPDATE write_lock SET n = n + 1, hit = TRUE, tag = "
        } else {
            "WITH l AS (UPDATE write_lock SET n = n + 1, hit = TRUE, tag = "
        });
        q.push_bind(new_tag)
            .push(" WHERE id = 1 AND n = ")
            .push_bind(n)
            .push(" AND tag = ")
            .push_bind(tag);
        if Self::statements() {
            // `changes()` is not constant, so the failing `json` is not evaluated ahead.
            q.push("; SELECT json(CASE WHEN changes() = 1 THEN '0' ELSE 'moved' END)");
        } else {
            q.push(" RETURNING n)");
        }
        Writes {
            q,
            n: 0,
            guarded: true,
        }
    }
}

/// A write transaction on a connection of its own: begun and committed by statements of its
/// own rather than sqlx's `Transaction`, so that each can share its round trip with others:
/// the `BEGIN` with the write lock's update (each backend's `begin_write`), and on SQLite the
/// last writes with `COMMIT` (`StoreTx::commit_with_key`). On SQLite a round trip is a hand-off
/// to the connection's worker thread and back, on PostgreSQL one to the server: most of what a
/// small change costs (docs/decisions.md, "Write transactions").
///
/// Dropped before it committed, it rolls back before the connection serves anyone else (a task
/// does, as sqlx's `Transaction` does on drop); a connection that cannot roll back (or is
/// dropped outside a runtime) is closed instead, which rolls back too.
pub(crate) struct WriteTx<DB: RollsBack> {
    conn: Option<sqlx::pool::PoolConnection<DB>>,
}

impl<DB: RollsBack> WriteTx<DB> {
    /// A connection about to begin (the caller sends `BEGIN` on it next).
    pub(super) fn new(conn: sqlx::pool::PoolConnection<DB>) -> Self {
        WriteTx { conn: Some(conn) }
    }

    /// The transaction committed (its `COMMIT` succeeded): the connection goes back as it is.
    pub(super) fn committed(mut self) {
        drop(self.conn.take());
    }
}

impl<DB: RollsBack> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        #[allow(clippy::expect_used)]
        // only `commit` and `drop` take the connection, and both consume
        self.conn
            .as_deref()
            .expect("a write transaction in use holds its connection")
    }
}

impl<DB: RollsBack> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        #[allow(clippy::expect_used)] // as in `deref`
        self.conn
            .as_deref_mut()
            .expect("a write transaction in use holds its connection")
    }
}

impl<DB: RollsBack> Drop for WriteTx<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => DB::roll_back(&rt, conn),
                // No runtime to roll back on: the connection leaves its pool (which opens
                // another when needed) and is closed, which rolls back. (`close_on_drop` would
                // need a runtime to close it.)
                Err(_) => drop(conn.detach()),
            }
        }
    }
}

/// A backend whose [`WriteTx`] rolls back when dropped.
pub(crate) trait RollsBack: Database {
    /// Spawns a task that sends `ROLLBACK` on `conn` before it goes back to its pool, and
    /// closes it instead when that fails.
    fn roll_back(rt: &tokio::runtime::Handle, conn: sqlx::pool::PoolConnection<Self>);
}

/// [`RollsBack`] for one backend; `$not_in_tx`: whether an error is `ROLLBACK` outside a
/// transaction (its `BEGIN` failed, or an error already ended it), which leaves the connection
/// fine as it is.
macro_rules! rolls_back {
    ($DB:ty, $not_in_tx:expr) => {
        impl RollsBack for $DB {
            fn roll_back(rt: &tokio::runtime::Handle, mut conn: sqlx::pool::PoolConnection<Self>) {
                rt.spawn(async move {
                    match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                        Ok(_) => {}
                        Err(e) if $not_in_tx(&e) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "could not roll back a write transaction; closing its connection");
                            conn.close_on_drop();
                        }
                    }
                });
            }
        }
    };
}

rolls_back!(
    sqlx::Sqlite,
    |e: &sqlx::Error| matches!(e, sqlx::Error::Database(d) if d.message().contains("no transaction is active"))
);
// PostgreSQL answers a `ROLLBACK` outside a transaction with a warning, not an error.
rolls_back!(sqlx::Postgres, |_: &sqlx::Error| false);

//! The two backends under test, and builders for the domain values the tests store.

use keyward_core::kinds::{AuditAction, Granularity, TargetType};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::model::{Actor, ActorKind, AuditEvent, Key, Keyspace, Role, Token};
use keyward_core::policy::Preset;
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_store::{testing, AuditFilter, KeyFilter, NewEvent, Page, PgStore, Store, UsageDelta};
use serde_json::{json, Map, Value};

// ---- backends ----

#[derive(Clone)]
enum Backend {
    Sqlite { url: String, path: PathBuf },
    Postgres { schema: String },
}

/// One fresh database for one test: a new SQLite file or a new PostgreSQL schema.
pub struct TestDb {
    store: Option<Arc<dyn Store>>,
    backend: Backend,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let mut db = TestDb::sqlite_unopened();
        db.store = Some(db.reopen().await);
        db
    }

    /// `None` (after printing why) when PostgreSQL is not reachable outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let mut db = TestDb::postgres_unopened().await?;
        db.store = Some(db.reopen().await);
        Some(db)
    }

    /// A SQLite file name nothing has opened yet.
    pub fn sqlite_unopened() -> TestDb {
        let path =
            std::env::temp_dir().join(format!("keyward-store-{}.db", testing::unique_schema()));
        let url = format!("sqlite://{}", path.display());
        TestDb {
            store: None,
            backend: Backend::Sqlite { url, path },
        }
    }

    /// A PostgreSQL schema name nothing has opened yet.
    pub async fn postgres_unopened() -> Option<TestDb> {
        if !testing::postgres_available().await {
            return None;
        }
        Some(TestDb {
            store: None,
            backend: Backend::Postgres {
                schema: testing::unique_schema(),
            },
        })
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone().expect("the store is open until finish")
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// Opens the database (again: that runs the migrations again).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        self.opener().open().await.expect("open the test database")
    }

    /// A handle that opens this database, so that several opens can run side by side.
    pub fn opener(&self) -> Opener {
        Opener(self.backend.clone())
    }

    /// Runs SQL straight on the database, as its backend's own client would (for databases made
    /// by an older version: `files` are that version's migrations, run before `sql`).
    pub async fn execute_raw(&self, files: &[(&str, &str)], sql: &str) {
        use sqlx::Connection;
        let mut all = String::new();
        for (sqlite, postgres) in files {
            all.push_str(match self.backend {
                Backend::Sqlite { .. } => sqlite,
                Backend::Postgres { .. } => postgres,
            });
            all.push('\n');
        }
        all.push_str(sql);
        match &self.backend {
            Backend::Sqlite { url, .. } => {
                let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("a SQLite URL");
                let mut conn = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true))
                    .await
                    .expect("connect to SQLite");
                sqlx::raw_sql(&all)
                    .execute(&mut conn)
                    .await
                    .expect("raw SQL");
                conn.close().await.expect("close");
            }
            Backend::Postgres { schema } => {
                let mut conn = sqlx::PgConnection::connect(&testing::pg_url())
                    .await
                    .expect("connect to PostgreSQL");
                let sql = format!("CREATE SCHEMA {schema}; SET search_path TO {schema};\n{all}");
                sqlx::raw_sql(&sql)
                    .execute(&mut conn)
                    .await
                    .expect("raw SQL");
                conn.close().await.expect("close");
            }
        }
    }

    /// Removes the database after a test that passed (a failed test leaves it for a look).
    pub async fn finish(mut self) {
        self.store = None;
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let p = path.display().to_string();
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{p}{suffix}"));
                }
            }
            Backend::Postgres { schema } => {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&testing::pg_url()).await {
                    let sql =
                        format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                    let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            }
        }
    }
}

// ---- the database underneath ----

/// The migrations of the last release before the checksummed migrator (versions 1-6), as
/// `(version, SQLite SQL, PostgreSQL SQL)`.
pub const OLD_MIGRATIONS: [(i64, &str, &str); 6] = [
    (
        1,
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../migrations/sqlite/0002_lifecycle_usage.sql"),
        include_str!("../../migrations/postgres/0002_lifecycle_usage.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_users.sql"),
        include_str!("../../migrations/postgres/0003_users.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_quota_leases.sql"),
        include_str!("../../migrations/postgres/0004_quota_leases.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_usage_rollup.sql"),
        include_str!("../../migrations/postgres/0005_usage_rollup.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_key_counters.sql"),
        include_str!("../../migrations/postgres/0006_key_counters.sql"),
    ),
];

/// A connection straight to a test database (inside its schema on PostgreSQL), as the backend's
/// own client would open it, used through `raw!`.
pub enum Raw {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// `raw!(db.raw().await, |conn| body)`: runs the same `body` (a block that may `.await`) with
/// `conn` the `&mut` connection of either backend, closes the connection, and yields the
/// body's value.
macro_rules! raw {
    ($raw:expr, |$conn:ident| $body:block) => {
        match $raw {
            crate::support::Raw::Sqlite(mut c) => {
                let $conn = &mut c;
                let v = $body;
                sqlx::Connection::close(c).await.expect("close");
                v
            }
            crate::support::Raw::Postgres(mut c) => {
                let $conn = &mut c;
                let v = $body;
                sqlx::Connection::close(c).await.expect("close");
                v
            }
        }
    };
}

/// A row of `_sqlx_migrations`; `installed_on` in whole seconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedRow {
    pub version: i64,
    pub description: String,
    pub installed_on: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
    pub execution_time: i64,
}

impl TestDb {
    /// A raw connection to this database (the schema is created on PostgreSQL if missing).
    pub async fn raw(&self) -> Raw {
        use sqlx::Connection;
        match &self.backend {
            Backend::Sqlite { url, .. } => {
                let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("a SQLite URL");
                let conn = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true))
                    .await
                    .expect("connect to SQLite");
                Raw::Sqlite(conn)
            }
            Backend::Postgres { schema } => {
                let mut conn = sqlx::PgConnection::connect(&testing::pg_url())
                    .await
                    .expect("connect to PostgreSQL");
                let sql =
                    format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}");
                sqlx::raw_sql(&sql)
                    .execute(&mut conn)
                    .await
                    .expect("enter the schema");
                Raw::Postgres(conn)
            }
        }
    }

    /// Migrates the database as the releases before the checksummed migrator did: a copy of
    /// their routine (`keyward_migrations`, each file not recorded there run in its own
    /// transaction with its row), over their six migrations.
    pub async fn migrate_the_old_way(&self) {
        let postgres = self.backend_name() == "postgres";
        raw!(self.raw().await, |conn| {
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS keyward_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *conn)
            .await
            .expect("create keyward_migrations");
            for (version, sqlite, pg) in OLD_MIGRATIONS {
                let sql = if postgres { pg } else { sqlite };
                let done = sqlx::query("SELECT version FROM keyward_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await
                    .expect("read keyward_migrations");
                if done.is_some() {
                    continue;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
                sqlx::raw_sql(sql)
                    .execute(&mut *tx)
                    .await
                    .expect("an old migration");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                sqlx::query("INSERT INTO keyward_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .expect("record an old migration");
                tx.commit().await.expect("commit");
            }
        })
    }

    /// Runs SQL on the database as it is (no schema is created, unlike [`TestDb::execute_raw`]).
    pub async fn execute_in(&self, sql: &str) {
        raw!(self.raw().await, |conn| {
            sqlx::raw_sql(sql)
                .execute(&mut *conn)
                .await
                .expect("raw SQL");
        })
    }

    /// Whether a table exists in the database (in its schema on PostgreSQL).
    pub async fn has_table(&self, name: &str) -> bool {
        let sql = match self.backend_name() {
            "sqlite" => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            _ => {
                "SELECT COUNT(*) AS n FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema() AND tablename = $1"
            }
        };
        raw!(self.raw().await, |conn| {
            use sqlx::Row;
            let r = sqlx::query(sql)
                .bind(name)
                .fetch_one(&mut *conn)
                .await
                .expect("look for a table");
            r.get::<i64, _>("n") > 0
        })
    }

    /// The names of the indexes of `table`, sorted (in its schema on PostgreSQL).
    pub async fn index_names(&self, table: &str) -> Vec<String> {
        let sql = match self.backend_name() {
            "sqlite" => {
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 ORDER BY name"
            }
            _ => {
                "SELECT indexname AS name FROM pg_catalog.pg_indexes \
                 WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname"
            }
        };
        raw!(self.raw().await, |conn| {
            use sqlx::Row;
            sqlx::query(sql)
                .bind(table)
                .fetch_all(&mut *conn)
                .await
                .expect("list indexes")
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect()
        })
    }

    /// `keyward_migrations` as `(version, applied_at)`, by version.
    pub async fn old_migrations_table(&self) -> Vec<(i64, i64)> {
        raw!(self.raw().await, |conn| {
            use sqlx::Row;
            let rows =
                sqlx::query("SELECT version, applied_at FROM keyward_migrations ORDER BY version")
                    .fetch_all(&mut *conn)
                    .await
                    .expect("read keyward_migrations");
            rows.iter()
                .map(|r| (r.get("version"), r.get("applied_at")))
                .collect()
        })
    }

    /// `_sqlx_migrations`, by version.
    pub async fn migrations_table(&self) -> Vec<AppliedRow> {
        let installed_on = match self.backend_name() {
            "sqlite" => "CAST(strftime('%s', installed_on) AS INTEGER)",
            _ => "CAST(floor(extract(epoch FROM installed_on)) AS BIGINT)",
        };
        let sql = format!(
            "SELECT version, description, {installed_on} AS installed_on, success, checksum, \
             execution_time FROM _sqlx_migrations ORDER BY version"
        );
        raw!(self.raw().await, |conn| {
            use sqlx::Row;
            let rows = sqlx::query(&sql)
                .fetch_all(&mut *conn)
                .await
                .expect("read _sqlx_migrations");
            rows.iter()
                .map(|r| AppliedRow {
                    version: r.get("version"),
                    description: r.get("description"),
                    installed_on: r.get("installed_on"),
                    success: r.get("success"),
                    checksum: r.get("checksum"),
                    execution_time: r.get("execution_time"),
                })
                .collect()
        })
    }

    /// Sets the checksum `_sqlx_migrations` records for a version, as an edit of an applied
    /// migration would leave it.
    pub async fn set_checksum(&self, version: i64, checksum: &[u8]) {
        raw!(self.raw().await, |conn| {
            sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
                .bind(checksum.to_vec())
                .bind(version)
                .execute(&mut *conn)
                .await
                .expect("set a checksum");
        })
    }
}

#[derive(Clone)]
pub struct Opener(Backend);

impl Opener {
    pub async fn open(&self) -> keyward_store::Result<Arc<dyn Store>> {
        match &self.0 {
            Backend::Sqlite { url, .. } => keyward_store::open(url).await,
            Backend::Postgres { schema } => {
                let store = PgStore::open_in_schema(&testing::pg_url(), Some(schema)).await?;
                Ok(Arc::new(store))
            }
        }
    }
}

// ---- time ----

/// Fails the test instead of hanging it when a writer never gets the lock.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within 60 s"),
    }
}

/// A fixed origin (2027-01-15) so tests never depend on the wall clock.
pub const T0: i64 = 1_800_000_000_000;

/// `T0` plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0).plus_secs(secs)
}

// ---- actors ----

pub fn token_actor(id: &str) -> Actor {
    Actor {
        kind: ActorKind::Token,
        id: id.into(),
        name: "deploy \"bot\" ✓".into(),
    }
}

pub fn user_actor() -> Actor {
    Actor {
        kind: ActorKind::User,
        id: "usr_alice".into(),
        name: "alice@example.com".into(),
    }
}

// ---- keyspaces ----

pub fn keyspace(prefix: &str) -> Keyspace {
    let created = at(0);
    Keyspace {
        id: new_id("ks", created),
        name: format!("{prefix} keyspace"),
        prefix: prefix.into(),
        policy: Preset::Standard.policy(),
        created_at: created,
        updated_at: created,
        routes: Vec::new(),
        unmatched: Default::default(),
    }
}

pub async fn insert_keyspace(store: &Arc<dyn Store>, ks: &Keyspace) {
    let mut tx = store.begin().await.unwrap();
    tx.insert_keyspace(ks).await.unwrap();
    tx.commit().await.unwrap();
}

/// A committed keyspace with this prefix.
pub async fn new_keyspace(store: &Arc<dyn Store>, prefix: &str) -> Keyspace {
    let ks = keyspace(prefix);
    insert_keyspace(store, &ks).await;
    ks
}

// ---- keys ----

/// A key as the server would build it, with its plaintext (which the store never sees).
pub struct NewKey {
    pub key: Key,
    pub plaintext: Secret,
}

/// A key with every optional field empty.
pub fn key(ks: &Keyspace, created_at: Timestamp) -> NewKey {
    let plaintext = keyformat::generate(&ks.prefix);
    let mut key = Key::for_plaintext(
        plaintext.expose(),
        &ks.id,
        created_at,
        token_actor("tok_creator"),
    )
    .expect("a generated key parses");
    key.name = "test key".into();
    NewKey { key, plaintext }
}

/// A key with every field set, to values chosen to trip up JSON and text handling.
pub fn full_key(ks: &Keyspace, created_at: Timestamp) -> NewKey {
    let mut k = key(ks, created_at);
    let key = &mut k.key;
    key.name = "Billing prod — ünïcødé \"quoted\"".into();
    key.owner = Some("team-billing".into());
    key.scopes = vec!["orders:read".into(), "orders:*".into(), "*".into()];
    key.labels = BTreeMap::from([
        ("env".to_string(), "prod".to_string()),
        (
            "team/unit.sub-part_1".to_string(),
            "a \"quoted\" \\ välue".to_string(),
        ),
        ("empty".to_string(), String::new()),
    ]);
    key.meta = json_map(json!({
        "plan": "gold",
        "nested": {"list": [1, 2.5, -3, 1e21, null, true], "empty": {}},
        "unicode": "é😀\n\t",
        "big": 9_007_199_254_740_993_i64,
        "float": 0.1,
    }));
    key.created_by = user_actor();
    key.updated_at = created_at.plus_secs(5);
    key.expires_at = Some(created_at.plus_secs(86_400));
    key.revoked_at = Some(created_at.plus_secs(60));
    key.revoked_by = Some(Actor::system());
    key.revoked_reason = Some("leaked in a \"public\" repo".into());
    key.rotated_from = Some("key_predecessor".into());
    key.rotated_to = Some("key_successor".into());
    key.last_used_at = Some(created_at.plus_millis(1_234));
    key.call_count = 42;
    key.denied_count = 7;
    key.set_ratelimits(vec![
        keyward_core::limits::NamedLimit {
            name: "default".into(),
            limit: 100,
            window_secs: 60,
        },
        keyward_core::limits::NamedLimit {
            name: "daily".into(),
            limit: 10_000,
            window_secs: 86_400,
        },
    ]);
    key.remaining = Some(10_000);
    key.refill = Some(keyward_core::limits::Refill {
        amount: 10_000,
        interval: keyward_core::limits::Interval::Monthly,
    });
    key.refill_anchor = Some(created_at);
    key.refilled_at = Some(created_at);
    key.allowed_cidrs = Some(vec![
        "203.0.113.0/24".into(),
        "2001:db8::/32".into(),
        "198.51.100.7".into(),
    ]);
    k
}

pub fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

pub async fn insert_keys(store: &Arc<dyn Store>, keys: &[&Key]) {
    let mut tx = store.begin().await.unwrap();
    for k in keys {
        tx.insert_key(k).await.unwrap();
    }
    tx.commit().await.unwrap();
}

pub async fn update_key(store: &Arc<dyn Store>, key: &Key) {
    let mut tx = store.begin().await.unwrap();
    tx.update_key(key).await.unwrap();
    tx.commit().await.unwrap();
}

/// A filter that matches everything, evaluated at `now`, with room for every row.
pub fn all_keys(now: Timestamp) -> KeyFilter {
    KeyFilter {
        now,
        page: Page {
            limit: 500,
            after: None,
        },
        ..KeyFilter::default()
    }
}

/// The ids `list_keys` returns for a filter, as a set.
pub async fn listed(store: &Arc<dyn Store>, filter: &KeyFilter) -> BTreeSet<String> {
    let keys = store.list_keys(filter).await.unwrap();
    let ids: BTreeSet<String> = keys.iter().map(|k| k.id.clone()).collect();
    assert_eq!(ids.len(), keys.len(), "list_keys returned a key twice");
    ids
}

pub fn ids<'a>(keys: impl IntoIterator<Item = &'a Key>) -> BTreeSet<String> {
    keys.into_iter().map(|k| k.id.clone()).collect()
}

// ---- tokens ----

pub fn token(created_at: Timestamp) -> (Token, KeyHash) {
    let plaintext = keyformat::generate(keyformat::TOKEN_PREFIX);
    let token = Token {
        id: new_id("tok", created_at),
        name: "ci deploys".into(),
        role: Role::Manager,
        keyspace_ids: None,
        created_at,
        created_by: Actor::cli("root"),
        expires_at: None,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
        last_used_at: None,
    };
    (token, KeyHash::of(plaintext.expose()))
}

/// A granularity by its stored code (`m`, `h`, `d`), as the tests name them.
pub fn gran(code: &str) -> Granularity {
    *Granularity::ALL
        .iter()
        .find(|g| g.code() == code)
        .unwrap_or_else(|| panic!("no granularity {code}"))
}

// ---- audit ----

pub fn event(action: &str, target_id: &str, at: Timestamp, actor: Actor) -> NewEvent {
    let target_type = action.split('.').next().unwrap_or("key");
    NewEvent {
        id: new_id("evt", at),
        at,
        actor,
        action: AuditAction::parse(action).unwrap_or_else(|| panic!("no audit action {action}")),
        target_type: TargetType::parse(target_type)
            .unwrap_or_else(|| panic!("no target {target_type}")),
        target_id: target_id.into(),
        reason: None,
        request_id: Some(format!("req-{}", at.millis())),
        ip: Some("203.0.113.9".into()),
        changes: Map::new(),
    }
}

/// Appends one event in its own committed transaction.
pub async fn append(store: &Arc<dyn Store>, e: NewEvent) -> AuditEvent {
    let mut tx = store.begin().await.unwrap();
    let stored = tx.append_audit(e).await.unwrap();
    tx.commit().await.unwrap();
    stored
}

/// The whole chain, oldest first.
pub async fn all_events(store: &Arc<dyn Store>) -> Vec<AuditEvent> {
    store.audit_after(0, 100_000).await.unwrap()
}

/// Every event matching `filter`, as seqs, newest first.
pub async fn audit_seqs(store: &Arc<dyn Store>, filter: AuditFilter) -> Vec<i64> {
    store
        .list_audit(&filter)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

pub fn audit_filter() -> AuditFilter {
    AuditFilter {
        page: Page {
            limit: 500,
            after: None,
        },
        ..AuditFilter::default()
    }
}

// ---- usage ----

/// Rolls up every minute bucket not yet rolled up (as a sweep far in the future would); how many.
pub async fn rollup_all(store: &Arc<dyn Store>) -> u64 {
    store
        .rollup_usage(Timestamp::from_millis(i64::MAX))
        .await
        .unwrap()
}

/// Every count of one granularity in buckets starting before `to_ms`, all keys together.
pub async fn usage_total(store: &Arc<dyn Store>, granularity: &str, to_ms: i64) -> i64 {
    store
        .usage(
            None,
            gran(granularity),
            Timestamp::from_millis(0),
            Timestamp::from_millis(to_ms),
        )
        .await
        .unwrap()
        .iter()
        .map(|b| b.n)
        .sum()
}

// ---- quota ----

/// A key's quota as every read returns it: the unleased quota plus every node's lease.
pub async fn remaining(store: &Arc<dyn Store>, key_id: &str) -> Option<i64> {
    store.key(key_id).await.unwrap().unwrap().remaining
}

/// A key's unleased quota (`keys.remaining`), read by leasing nothing; `None`: no quota.
pub async fn pool(store: &Arc<dyn Store>, key_id: &str) -> Option<i64> {
    let got = store.lease_quota(key_id, 0, at(0)).await.unwrap();
    got.map(|l| {
        assert_eq!(l.granted, 0, "leasing nothing grants nothing");
        l.left
    })
}

/// Leases up to `want` of a key's quota to this store's node at `at(secs)`.
pub async fn lease(
    store: &Arc<dyn Store>,
    key_id: &str,
    want: i64,
    secs: i64,
) -> Option<(i64, i64)> {
    store
        .lease_quota(key_id, want, at(secs))
        .await
        .unwrap()
        .map(|l| (l.granted, l.left))
}

/// A usage batch entry: one valid verification at `at(secs)` that spent `consumed` quota.
pub fn spend(key_id: &str, consumed: i64, secs: i64) -> UsageDelta {
    UsageDelta {
        key_id: key_id.into(),
        calls: 1,
        last_used_at: Some(at(secs)),
        consumed,
        ..UsageDelta::default()
    }
}

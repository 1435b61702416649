//! The schema: each backend's migrations (`migrations/<backend>/000N_*.sql`, embedded), run at
//! open by sqlx's [`Migrator`], which records each applied migration with the SHA-384 of its SQL
//! in `_sqlx_migrations` and refuses to open a database where an applied migration's SQL has
//! changed since.
//!
//! Invariants:
//! - An applied migration file is never edited: a change to the schema is a new migration.
//! - Migrations run inside the caller's transaction, under the caller's lock (SQLite's write
//!   lock, a PostgreSQL advisory lock on the schema, see each backend's `open`), so nodes opening
//!   one database at once migrate it once, and a failure leaves the schema as it was.
//! - Releases before the checksummed migrator recorded versions in `keyward_migrations (version,
//!   applied_at)`. A database that has that table and no `_sqlx_migrations` is carried over
//!   first: its applied versions are recorded in `_sqlx_migrations` as sqlx records them (the
//!   checksum of the same embedded SQL, `success`), and the migrator then applies only newer
//!   ones.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use crate::sql::common::map_err;
use crate::{Result, StoreError};

/// One backend's migrations as `(version, file name, SQL)`, from `migrations/<dir>/<file>`, in
/// order. Both backends have the same migrations, each in its own dialect: this is their one list.
macro_rules! migrations {
    ($dir:literal) => {
        $crate::sql::migrate::migrations!($dir:
            1 => "0001_init.sql",
            2 => "0002_lifecycle_usage.sql",
            3 => "0003_users.sql",
            4 => "0004_quota_leases.sql",
            5 => "0005_usage_rollup.sql",
            6 => "0006_key_counters.sql",
            7 => "0007_route_rules.sql",
            8 => "0008_key_imports.sql",
            9 => "0009_identities.sql",
            10 => "0010_limits_refills.sql",
            11 => "0011_lock_tag_feed_notify.sql",
            12 => "0012_key_list_indexes.sql",
            13 => "0013_usage_pipeline.sql",
            14 => "0014_counter_fillfactor.sql",
            15 => "0015_feed_notify_origin.sql",
            16 => "0016_usage_dirty.sql",
            17 => "0017_audit_seq_rowid.sql",
        )
    };
    ($dir:literal: $($version:literal => $file:literal),* $(,)?) => {
        &[$(($version, $file, include_str!(concat!("../../migrations/", $dir, "/", $file)))),*]
    };
}

/// Embedded migration files: `(version, file name, SQL)`.
pub(super) type Files = &'static [(i64, &'static str, &'static str)];

/// A migration as sqlx reads it from a file: the description is the file name without its
/// version and extension, `_` read as a space ("0002_lifecycle_usage.sql": "lifecycle usage");
/// the checksum is the SHA-384 of the SQL.
fn migration(version: i64, file: &str, sql: &'static str) -> Migration {
    let name = file.split_once('_').map_or(file, |(_, rest)| rest);
    let description = name.trim_end_matches(".sql").replace('_', " ");
    Migration::new(
        version,
        Cow::Owned(description),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        false,
    )
}

/// The embedded files as a source for [`Migrator::new`].
#[derive(Debug)]
struct Embedded(Files);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<Vec<Migration>, BoxDynError>> + Send>>
    {
        let migrations = self
            .0
            .iter()
            .map(|&(version, file, sql)| migration(version, file, sql))
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// The migrator of one backend's files.
pub(super) async fn migrator(files: Files) -> Result<Migrator> {
    let mut migrator = Migrator::new(Embedded(files)).await.map_err(migrate_err)?;
    // The caller holds the lock (see the module docs); sqlx's own PostgreSQL lock is keyed on
    // the database only, so with it every schema of one database would migrate one at a time,
    // and an error return keeps that session lock on a pooled connection.
    migrator.set_locking(false);
    // A version applied by a newer release (a rolling upgrade, where a node of this release
    // restarts after another already migrated further) does not stop this one from opening, as
    // before the checksummed migrator; an edited migration still does.
    migrator.set_ignore_missing(true);
    Ok(migrator)
}

/// What sqlx records for each migration of `files` it applies: `(version, description,
/// checksum)`.
pub(super) fn carried(files: Files) -> Vec<(i64, String, Vec<u8>)> {
    files
        .iter()
        .map(|&(version, file, sql)| {
            let m = migration(version, file, sql);
            (
                m.version,
                m.description.into_owned(),
                m.checksum.into_owned(),
            )
        })
        .collect()
}

pub(super) fn migrate_err(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) => map_err(e),
        MigrateError::ExecuteMigration(e, version) => match map_err(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            StoreError::Conflict(m) | StoreError::Other(m) => {
                StoreError::Other(format!("migration {version} failed: {m}"))
            }
        },
        MigrateError::VersionMismatch(version) => StoreError::Other(format!(
            "migration {version} was applied to this database from other SQL than this build's \
             (its checksum in _sqlx_migrations differs): an applied migration must never be \
             edited; not opening the database"
        )),
        other => StoreError::Other(format!("migrating the database: {other}")),
    }
}

/// Migrations for one backend: `$dir` is its `migrations/` directory, `$table_exists` a query of
/// whether table `$1` exists where unqualified names are created (`n` > 0), and `$installed_on`
/// the SQL of `keyward_migrations.applied_at` (ms) as a `_sqlx_migrations.installed_on` value.
macro_rules! for_backend {
    ($DB:ty, $dir:literal, table_exists: $table_exists:literal, installed_on: $installed_on:literal $(,)?) => {
        use sqlx::migrate::Migrate as _;

        use crate::sql::common::{get, map_err};
        use crate::sql::migrate::{carried, migrate_err, migrator, Files};
        use crate::Result;

        const MIGRATIONS: Files = crate::sql::migrate::migrations!($dir);

        /// Brings the schema up to date: the carry-over from `keyward_migrations` if it is due,
        /// then every migration not applied yet, in order. Runs in the caller's transaction, under
        /// the caller's lock.
        pub(super) async fn run(conn: &mut <$DB as sqlx::Database>::Connection) -> Result<()> {
            carry_over(&mut *conn).await?;
            refuse_foreign(&mut *conn).await?;
            let migrator = migrator(MIGRATIONS).await?;
            migrator.run(&mut *conn).await.map_err(migrate_err)
        }

        async fn table_exists(conn: &mut <$DB as sqlx::Database>::Connection, name: &str) -> Result<bool> {
            let r = sqlx::query($table_exists).bind(name).fetch_one(&mut *conn).await.map_err(map_err)?;
            Ok(get::<i64, _>(&r, "n")? > 0)
        }

        /// Refuses a `_sqlx_migrations` table that another application's sqlx wrote (keyward
        /// pointed at a schema it shares): its versions are none of keyward's, or one of
        /// keyward's versions has another description. Running keyward's migrations there would
        /// mix two applications' histories in one table and make the other one refuse to start.
        async fn refuse_foreign(conn: &mut <$DB as sqlx::Database>::Connection) -> Result<()> {
            if !table_exists(&mut *conn, "_sqlx_migrations").await? {
                return Ok(());
            }
            let ours = carried(MIGRATIONS);
            let rows = sqlx::query("SELECT version, description FROM _sqlx_migrations")
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
            let mut known = 0;
            for r in &rows {
                let version: i64 = get(r, "version")?;
                let description: String = get(r, "description")?;
                match ours.iter().find(|(v, _, _)| *v == version) {
                    Some((_, d, _)) if *d == description => known += 1,
                    Some(_) => return Err(foreign()),
                    None => {}
                }
            }
            if !rows.is_empty() && known == 0 {
                return Err(foreign());
            }
            Ok(())
        }

        fn foreign() -> crate::StoreError {
            crate::StoreError::Other(
                "the database's _sqlx_migrations table holds another application's migrations: \
                 give keyward a database (or PostgreSQL schema) of its own; not opening it"
                    .into(),
            )
        }

        /// Records in `_sqlx_migrations` the versions a database written before the checksummed
        /// migrator lists in `keyward_migrations`, once (when that table exists and
        /// `_sqlx_migrations` does not). The checksum is that of this build's SQL of the version:
        /// the files were never edited once released, so it is the SQL that was applied.
        /// Versions this build does not have are left out, as the old routine ignored them.
        ///
        /// `keyward_migrations` stays, no longer written or read once `_sqlx_migrations` exists:
        /// the previous release still opens the database after this carry-over (it finds its
        /// versions applied), so a rollback needs no restore; dropping it would buy nothing but
        /// that. (A database this release creates has no `keyward_migrations`: the previous
        /// release would try to create its tables again, and fail.)
        async fn carry_over(conn: &mut <$DB as sqlx::Database>::Connection) -> Result<()> {
            if !table_exists(&mut *conn, "keyward_migrations").await? || table_exists(&mut *conn, "_sqlx_migrations").await? {
                return Ok(());
            }
            conn.ensure_migrations_table().await.map_err(migrate_err)?;
            for (version, description, checksum) in carried(MIGRATIONS) {
                // execution_time -1: not measured (sqlx's own value until it has measured).
                sqlx::query(concat!(
                    "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
                     SELECT $1, $2, ",
                    $installed_on,
                    ", TRUE, $3, -1 FROM keyward_migrations WHERE version = $1"
                ))
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            }
            Ok(())
        }
    };
}
pub(super) use {for_backend, migrations};

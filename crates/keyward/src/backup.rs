//! `keyward backup` and `keyward restore` for the embedded SQLite database; and the lock a
//! running server holds so that a restore cannot swap the file under it.
//!
//! A backup is `VACUUM INTO`: one consistent file, taken while the server keeps serving, then
//! checked (its audit chain is verified). A restore verifies the backup's chain on a copy,
//! refuses while a server holds the database's lock, and then replaces the database file (and
//! removes its stale write-ahead log) in one rename. PostgreSQL uses `pg_dump`/`pg_restore`
//! (docs/operations.md).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use keyward_core::audit::ChainCheck;
use keyward_core::model::Actor;
use keyward_core::time::SystemClock;
use keyward_server::authz::Ctx;
use keyward_server::state::Records;

use crate::exit::EXIT_CHAIN_BROKEN;

/// The file of a `sqlite://PATH[?options]` URL; `None` for another database.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// The lock file beside a database: servers hold it shared, a restore exclusively.
fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Held by `keyward serve` for as long as it runs on a SQLite database.
pub struct ServerLock(#[allow(dead_code)] File);

/// Takes the database's lock shared (several servers may share one SQLite file).
pub fn lock_for_serving(url: &str) -> Result<Option<ServerLock>, String> {
    let Some(db) = sqlite_path(url) else {
        return Ok(None);
    };
    let path = lock_path(&db);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    file.try_lock_shared().map_err(|_| {
        format!(
            "{} is being restored; start the server once the restore is done",
            db.display()
        )
    })?;
    Ok(Some(ServerLock(file)))
}

/// Makes a database file readable by its owner only (it holds webhook secrets and password
/// hashes), as keyward creates its own.
fn owner_only(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Takes the database's lock exclusively (no server may use it meanwhile); `None` for a
/// database that is not a SQLite file.
pub fn lock_exclusively(url: &str) -> Result<Option<File>, String> {
    let Some(db) = sqlite_path(url) else {
        return Ok(None);
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(&db))
        .map_err(|e| format!("cannot open the database's lock file: {e}"))?;
    file.try_lock().map_err(|_| {
        format!(
            "a keyward server is using {}; stop it first (nothing was changed)",
            db.display()
        )
    })?;
    Ok(Some(file))
}

/// The audit chain of the database at `url` (opened, migrated if needed, then closed).
async fn chain_of(url: &str) -> Result<ChainCheck, String> {
    let store = keyward_store::open(url)
        .await
        .map_err(|e| format!("cannot open {}: {e}", keyward_store::redact_url(url)))?;
    let records = Records::new(store.clone(), Arc::new(SystemClock));
    let ctx = Ctx::operator(Actor::cli("backup"));
    let checked = match ctx.allow() {
        Ok(who) => keyward_server::service::check_chain(&records, &who)
            .await
            .map_err(|e| e.message),
        Err(e) => Err(e.message),
    };
    store.close().await;
    checked
}

fn describe(c: &ChainCheck) -> String {
    match c {
        ChainCheck::Ok { events, head } => {
            format!("{events} audit events, chain intact, head {head}")
        }
        ChainCheck::Bad {
            events,
            first_bad_seq,
        } => format!("{events} audit events, chain BROKEN at seq {first_bad_seq}"),
    }
}

/// `keyward backup --to FILE`: a consistent copy of the SQLite database, taken online.
pub async fn backup(url: &str, to: &Path) -> ExitCode {
    if sqlite_path(url).is_none() {
        eprintln!(
            "error: keyward backup copies the embedded SQLite database; back up PostgreSQL with \
             pg_dump (docs/operations.md)"
        );
        return ExitCode::from(2);
    }
    if to.exists() {
        eprintln!(
            "error: {} exists; keyward backup writes a new file",
            to.display()
        );
        return ExitCode::from(2);
    }
    let Some(to_str) = to.to_str() else {
        eprintln!("error: the backup path must be valid UTF-8");
        return ExitCode::from(2);
    };
    let store = match keyward_store::open(url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open the database {}: {e}",
                keyward_store::redact_url(url)
            );
            return ExitCode::from(1);
        }
    };
    let copied = store.backup_to(to_str).await;
    store.close().await;
    if let Err(e) = copied {
        eprintln!("error: the backup failed: {e}");
        return ExitCode::from(1);
    }
    owner_only(to);
    match chain_of(&format!("sqlite://{to_str}")).await {
        Ok(c @ ChainCheck::Ok { .. }) => {
            println!("backed up to {}: {}", to.display(), describe(&c));
            ExitCode::SUCCESS
        }
        Ok(c) => {
            eprintln!(
                "error: the backup at {} does not verify: {}",
                to.display(),
                describe(&c)
            );
            ExitCode::from(EXIT_CHAIN_BROKEN)
        }
        Err(e) => {
            eprintln!("error: the backup at {} cannot be read: {e}", to.display());
            ExitCode::from(1)
        }
    }
}

/// `keyward restore --from FILE`: replaces the SQLite database with a verified backup.
pub async fn restore(url: &str, from: &Path) -> ExitCode {
    let Some(db) = sqlite_path(url) else {
        eprintln!(
            "error: keyward restore replaces the embedded SQLite database; restore PostgreSQL \
             with pg_restore (docs/operations.md)"
        );
        return ExitCode::from(2);
    };
    if !from.is_file() {
        eprintln!("error: no backup file at {}", from.display());
        return ExitCode::from(2);
    }
    // Check a copy (opening migrates it to this version), beside the target so the final
    // rename stays on one file system.
    let mut staged = db.as_os_str().to_owned();
    staged.push(format!(".restore-{}", std::process::id()));
    let staged = PathBuf::from(staged);
    let discard = |staged: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = staged.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    };
    if let Err(e) = std::fs::copy(from, &staged) {
        eprintln!(
            "error: cannot copy {} beside the database: {e}",
            from.display()
        );
        return ExitCode::from(1);
    }
    owner_only(&staged);
    let checked = chain_of(&format!("sqlite://{}", staged.display())).await;
    let summary = match checked {
        Ok(c @ ChainCheck::Ok { .. }) => describe(&c),
        Ok(c) => {
            discard(&staged);
            eprintln!(
                "error: the backup does not verify ({}); nothing was restored",
                describe(&c)
            );
            return ExitCode::from(EXIT_CHAIN_BROKEN);
        }
        Err(e) => {
            discard(&staged);
            eprintln!("error: the backup cannot be read ({e}); nothing was restored");
            return ExitCode::from(1);
        }
    };
    let lock = match File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(&db))
    {
        Ok(f) => f,
        Err(e) => {
            discard(&staged);
            eprintln!("error: cannot open the database's lock file: {e}");
            return ExitCode::from(1);
        }
    };
    if lock.try_lock().is_err() {
        discard(&staged);
        eprintln!(
            "error: a keyward server is using {}; stop it first (nothing was restored)",
            db.display()
        );
        return ExitCode::from(1);
    }
    // The old database's write-ahead log belongs to the old file: it goes with it.
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    if let Err(e) = std::fs::rename(&staged, &db) {
        discard(&staged);
        eprintln!("error: cannot replace {}: {e}", db.display());
        return ExitCode::from(1);
    }
    discard(&staged);
    drop(lock);
    println!(
        "restored {} from {}: {summary}",
        db.display(),
        from.display()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://keyward.db"),
            Some("keyward.db".into())
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/k.db?mode=ro"),
            Some("/var/lib/k.db".into())
        );
        assert_eq!(sqlite_path("sqlite:k.db"), Some("k.db".into()));
        assert_eq!(sqlite_path("postgres://h/db"), None);
        assert_eq!(sqlite_path("sqlite://:memory:"), None);
    }
}

//! Where the master key that seals webhook signing secrets comes from, and what `serve` and
//! `keyward master-key rotate` do with it.
//!
//! The key is, in this order: `KEYWARD_MASTER_KEY` (64 hex characters), the file named by
//! `KEYWARD_MASTER_KEY_FILE`, or, for SQLite, `<database file>.master-key` beside the database
//! (generated with mode 0600 by the first `serve`). A PostgreSQL installation without a key
//! keeps secrets as before (plain), with a warning. `serve` seals any plain secret it finds and
//! refuses to start when the database holds secrets sealed with another key, or sealed ones
//! and no key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use keyward_core::seal::{is_sealed, sealed_with, MasterKey};
use keyward_store::Store;

use crate::backup::sqlite_path;

#[derive(Args, Clone, Default)]
pub struct KeyArgs {
    /// The master key (64 hex characters) that seals webhook signing secrets at rest.
    #[arg(long, env = "KEYWARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// A file holding the master key (instead of KEYWARD_MASTER_KEY).
    #[arg(long, env = "KEYWARD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

/// Where the key was found.
pub enum Source {
    Given,
    File,
    /// The file beside the SQLite database (`<database file>.master-key`).
    Beside,
}

fn beside(url: &str) -> Option<PathBuf> {
    let db = sqlite_path(url)?;
    let mut p = db.into_os_string();
    p.push(".master-key");
    Some(PathBuf::from(p))
}

fn read_key(path: &Path) -> Result<MasterKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the master key file {}: {e}", path.display()))?;
    MasterKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a new key file readable by its owner only; refuses to overwrite one.
fn write_key(path: &Path, key: &MasterKey) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create the master key file {}: {e}", path.display()))?;
    f.write_all(format!("{}\n", key.to_text().as_str()).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write the master key file {}: {e}", path.display()))
}

/// The configured key; for SQLite without one, the key beside the database (created when
/// `create` and missing).
pub fn resolve(
    url: &str,
    args: &KeyArgs,
    create: bool,
) -> Result<Option<(MasterKey, Source)>, String> {
    if let Some(text) = &args.master_key {
        let key = MasterKey::parse(text).map_err(|e| format!("KEYWARD_MASTER_KEY: {e}"))?;
        return Ok(Some((key, Source::Given)));
    }
    if let Some(path) = &args.master_key_file {
        return Ok(Some((read_key(path)?, Source::File)));
    }
    let Some(path) = beside(url) else {
        return Ok(None);
    };
    if path.exists() {
        return Ok(Some((read_key(&path)?, Source::Beside)));
    }
    if !create {
        return Ok(None);
    }
    let key = MasterKey::generate()?;
    write_key(&path, &key)?;
    tracing::info!(file = %path.display(), id = key.id(), "generated the master key that seals webhook secrets");
    Ok(Some((key, Source::Beside)))
}

/// Before serving: refuses a database whose sealed secrets this key cannot open, and seals the
/// plain ones.
pub async fn prepare(store: &dyn Store, key: Option<&MasterKey>) -> Result<(), String> {
    let secrets = store
        .webhook_secrets()
        .await
        .map_err(|e| format!("cannot read webhook secrets: {e}"))?;
    let mut plain = Vec::new();
    for (id, secret) in &secrets {
        match (is_sealed(secret), key) {
            (true, None) => {
                return Err(format!(
                    "the database holds webhook secrets sealed with master key {}; set \
                     KEYWARD_MASTER_KEY or KEYWARD_MASTER_KEY_FILE",
                    sealed_with(secret).unwrap_or("?")
                ))
            }
            (true, Some(k)) if sealed_with(secret) != Some(k.id()) => {
                return Err(format!(
                    "the database's webhook secrets are sealed with master key {}, not with the \
                     configured key {}",
                    sealed_with(secret).unwrap_or("?"),
                    k.id()
                ))
            }
            (true, Some(_)) => {}
            (false, Some(k)) => plain.push((id.clone(), k.seal(secret, id)?)),
            (false, None) => plain.push((id.clone(), String::new())),
        }
    }
    match key {
        Some(_) if !plain.is_empty() => {
            store
                .replace_webhook_secrets(&plain)
                .await
                .map_err(|e| format!("cannot seal webhook secrets: {e}"))?;
            tracing::info!(count = plain.len(), "sealed webhook secrets with the master key");
        }
        None if !plain.is_empty() => tracing::warn!(
            count = plain.len(),
            "webhook secrets are stored in plain: set KEYWARD_MASTER_KEY or KEYWARD_MASTER_KEY_FILE to seal them"
        ),
        _ => {}
    }
    Ok(())
}

/// `keyward master-key rotate`: re-seals every webhook secret under a new key.
pub async fn rotate(url: &str, args: &KeyArgs, new_key_file: Option<&Path>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(1)
    };
    // A running server holds the old key: refuse while one uses the SQLite file.
    let _lock = match crate::backup::lock_exclusively(url) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let current = match resolve(url, args, false) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (new_key, new_path) = match new_key_file {
        Some(p) if p.exists() => match read_key(p) {
            Ok(k) => (k, Some(p.to_path_buf())),
            Err(e) => return fail(e),
        },
        Some(p) => match MasterKey::generate().and_then(|k| write_key(p, &k).map(|()| k)) {
            Ok(k) => (k, Some(p.to_path_buf())),
            Err(e) => return fail(e),
        },
        None => match (&current, beside(url)) {
            (None | Some((_, Source::Beside)), Some(_)) => match MasterKey::generate() {
                Ok(k) => (k, None),
                Err(e) => return fail(e),
            },
            _ => {
                return fail(
                    "give --new-key-file: the current key comes from KEYWARD_MASTER_KEY or \
                     KEYWARD_MASTER_KEY_FILE, and the new one must be kept where you keep it"
                        .into(),
                )
            }
        },
    };
    let store = match keyward_store::open(url).await {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the database: {e}")),
    };
    let result = reseal(
        store.as_ref(),
        current.as_ref().map(|(k, _)| k),
        &new_key,
        url,
        new_path.is_none(),
    )
    .await;
    store.close().await;
    match result {
        Ok(n) => {
            println!(
                "re-sealed {n} webhook secrets with master key {}{}",
                new_key.id(),
                match (&new_path, beside(url)) {
                    (Some(p), _) => format!(" ({}); start the servers with it", p.display()),
                    (None, Some(p)) => format!(" (kept in {})", p.display()),
                    (None, None) => String::new(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn reseal(
    store: &dyn Store,
    current: Option<&MasterKey>,
    new_key: &MasterKey,
    url: &str,
    replace_beside: bool,
) -> Result<usize, String> {
    let secrets = store
        .webhook_secrets()
        .await
        .map_err(|e| format!("cannot read webhook secrets: {e}"))?;
    let mut resealed = Vec::new();
    for (id, stored) in &secrets {
        let plain = if is_sealed(stored) {
            let k =
                current.ok_or("the secrets are sealed and no current master key is configured")?;
            k.open(stored, id)
                .map_err(|e| format!("webhook {id}: {e}"))?
        } else {
            zeroize::Zeroizing::new(stored.clone())
        };
        resealed.push((id.clone(), new_key.seal(&plain, id)?));
    }
    // The new key file is written before the database changes and put in place after, so a
    // crash in between leaves `<file>.new` holding the key the database now needs.
    let staged = match (replace_beside, beside(url)) {
        (true, Some(path)) => {
            let mut staged = path.clone().into_os_string();
            staged.push(".new");
            let staged = PathBuf::from(staged);
            let _ = std::fs::remove_file(&staged);
            write_key(&staged, new_key)?;
            Some((staged, path))
        }
        _ => None,
    };
    store
        .replace_webhook_secrets(&resealed)
        .await
        .map_err(|e| format!("cannot store the re-sealed secrets (nothing changed): {e}"))?;
    if let Some((staged, path)) = staged {
        std::fs::rename(&staged, &path).map_err(|e| {
            format!(
                "the secrets are re-sealed but {} could not replace {}: move it there by hand ({e})",
                staged.display(),
                path.display()
            )
        })?;
    }
    Ok(resealed.len())
}

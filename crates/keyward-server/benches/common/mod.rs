//! What the benchmarks share: a server state over a real SQLite store in a temporary directory,
//! and keys with typical fields (a name, an owner, two scopes, one label) built in memory.

// Each benchmark binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::keyformat;
use keyward_core::model::{Actor, ActorKind, Key, Keyspace};
use keyward_core::policy::Policy;
use keyward_core::time::{Clock, CoarseClock, SystemClock, Timestamp};
use keyward_server::{AppState, Config};

/// The keyspace prefix of every benchmark key: keys are `acme_` + 38 characters.
pub const PREFIX: &str = "acme";
pub const KEY_LEN: usize = PREFIX.len() + 1 + keyformat::BODY_LEN;

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("keyward-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's state over a fresh SQLite database in `dir` (only cache misses touch it), with
/// the clock `keyward serve` uses.
pub fn state(rt: &tokio::runtime::Runtime, dir: &TempDir) -> AppState {
    let url = format!("sqlite://{}", dir.0.join("keyward.db").display());
    let store = rt
        .block_on(keyward_store::open(&url))
        .expect("open the SQLite store");
    AppState::new(store, Arc::new(CoarseClock::start()), Config::default())
}

/// Builds keys with the fields a typical key has, as the control plane would store them.
pub struct KeyMaker {
    keyspace_id: String,
    creator: Actor,
    now: Timestamp,
    n: u64,
}

impl KeyMaker {
    pub fn new() -> Self {
        let now = SystemClock.now();
        KeyMaker {
            keyspace_id: new_id("ks", now),
            creator: Actor {
                kind: ActorKind::Token,
                id: new_id("tok", now),
                name: "bootstrap".into(),
            },
            now,
            n: 0,
        }
    }

    /// The keyspace every key of this maker belongs to (for benchmarks that store the keys).
    pub fn keyspace(&self) -> Keyspace {
        Keyspace {
            id: self.keyspace_id.clone(),
            name: "Orders API".into(),
            prefix: PREFIX.into(),
            policy: Policy::default(),
            created_at: self.now,
            updated_at: self.now,
            routes: Vec::new(),
            unmatched: Default::default(),
        }
    }

    /// Stores the maker's keyspace and `keys` (made by it) in the state's store, in one
    /// transaction.
    pub async fn store(&self, st: &AppState, keys: &[Key]) {
        let mut tx = st.store().begin().await.expect("begin");
        tx.insert_keyspace(&self.keyspace())
            .await
            .expect("insert keyspace");
        for k in keys {
            tx.insert_key(k).await.expect("insert key");
        }
        tx.commit().await.expect("commit");
    }

    /// A new key: its plaintext and its stored form.
    pub fn next(&mut self) -> (keyward_core::secret::Secret, Key) {
        self.n += 1;
        let plaintext = keyformat::generate(PREFIX);
        let mut key = Key::for_plaintext(
            plaintext.expose(),
            &self.keyspace_id,
            self.now,
            self.creator.clone(),
        )
        .expect("a generated key parses");
        key.name = format!("billing service {}", self.n);
        key.owner = Some("team-billing".into());
        key.scopes = vec!["orders:read".into(), "orders:write".into()];
        key.labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        (plaintext, key)
    }
}

/// Resident memory of this process (`VmRSS` of `/proc/self/status`), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

//! Imported keys at verification time.
//!
//! - A string without keyward's format (prefix, alphabet, checksum) is looked up by its SHA-256
//!   only when the store holds imported keys without that format ([`Foreign`]); otherwise it is
//!   `NOT_FOUND` without the store, as before any import.
//! - A key still held as a salted hash (Argon2id, bcrypt, PBKDF2) is found by its lookup prefix
//!   and checked off the async runtime, at most [`Imports::permits`] at once per node and at
//!   most [`TRIES_PER_WINDOW`] checks per lookup prefix per [`TRY_WINDOW_MS`], so guessing
//!   cannot exhaust the CPU. On the first success the key's SHA-256 replaces the salted hash
//!   (one transaction, audited `key.rehash` with no secret); from then on it is found by hash
//!   like any key, and the slow hash is never computed again.
//!
//! Invariants:
//! - A wrong key for a known lookup prefix is cached as "no such key" like any miss; a check
//!   refused by the per-prefix bound is answered `NOT_FOUND` and not cached (the right key must
//!   still pass once the bound allows).
//! - An import (on this node, or on another through the change feed's keyspace row) clears the
//!   cached misses, so a key that was tried before it was imported verifies at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::id::new_id;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::kinds::{AuditAction, TargetType};
use keyward_core::model::Actor;
use keyward_store::{NewEvent, SlowCandidate, StoreError};
use serde_json::{json, Map};

use super::{lock, Entry, Verifier};

/// Slow-hash checks allowed per lookup prefix in each window.
pub(super) const TRIES_PER_WINDOW: u32 = 10;
pub(super) const TRY_WINDOW_MS: i64 = 10_000;
/// Candidates checked for one presented key (lookup prefixes of several keyspaces).
const MAX_CANDIDATES: i64 = 4;

/// Whether the store holds imported keys without keyward's format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Foreign {
    /// Not known yet: the next such string asks the store.
    Unknown = 0,
    No = 1,
    Yes = 2,
}

pub(super) struct Imports {
    foreign: AtomicU8,
    /// Slow-hash checks running at once on this node.
    permits: tokio::sync::Semaphore,
    /// Per lookup prefix: the window's start and the checks made in it.
    tries: Mutex<HashMap<String, (i64, u32)>>,
}

impl Imports {
    pub(super) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Imports {
            foreign: AtomicU8::new(Foreign::Unknown as u8),
            permits: tokio::sync::Semaphore::new(cores),
            tries: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn foreign(&self) -> Foreign {
        match self.foreign.load(Ordering::Acquire) {
            1 => Foreign::No,
            2 => Foreign::Yes,
            _ => Foreign::Unknown,
        }
    }

    fn set(&self, f: Foreign) {
        self.foreign.store(f as u8, Ordering::Release);
    }

    /// Takes one check of `lookup` from its window's allowance.
    fn allow(&self, lookup: &str, now_ms: i64) -> bool {
        let mut t = lock(&self.tries);
        if t.len() > 10_000 {
            t.retain(|_, (start, _)| now_ms - *start < TRY_WINDOW_MS);
        }
        let slot = t.entry(lookup.to_string()).or_insert((now_ms, 0));
        if now_ms - slot.0 >= TRY_WINDOW_MS {
            *slot = (now_ms, 0);
        }
        slot.1 += 1;
        slot.1 <= TRIES_PER_WINDOW
    }
}

impl Verifier {
    /// Whether a string that is not a keyward key may still be an imported key, to be read from
    /// the store (not when the store is known to hold no such key).
    pub(super) fn maybe_foreign(&self, key: &str) -> bool {
        self.imports.foreign() != Foreign::No && keyformat::foreign_shape(key)
    }

    /// Whether the store holds imported keys without keyward's format (asked once, then kept up
    /// to date by imports here and the change feed).
    pub async fn foreign_known(&self) -> Result<bool, StoreError> {
        match self.imports.foreign() {
            Foreign::Yes => Ok(true),
            Foreign::No => Ok(false),
            Foreign::Unknown => {
                let yes = self.store.any_foreign_keys().await?;
                // An import that landed meanwhile set `Yes`: never overwrite it with `No`.
                let _ = self.imports.foreign.compare_exchange(
                    Foreign::Unknown as u8,
                    if yes { Foreign::Yes } else { Foreign::No } as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                Ok(self.imports.foreign() == Foreign::Yes)
            }
        }
    }

    /// Keys were imported (here, `foreign` telling whether some lack keyward's format; or on
    /// another node, `None`): cached misses are forgotten, and the store is asked again whether
    /// it holds foreign keys unless this node knows it does.
    pub fn imported(&self, foreign: Option<bool>) {
        match foreign {
            Some(true) => self.imports.set(Foreign::Yes),
            Some(false) => {}
            None => {
                let _ = self.imports.foreign.compare_exchange(
                    Foreign::No as u8,
                    Foreign::Unknown as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
        for s in &self.shards {
            let mut s = s.write().unwrap_or_else(|p| p.into_inner());
            s.negatives.clear();
            s.epoch += 1;
        }
    }

    /// A key held as a salted hash whose lookup prefix starts `key`: checked, and on success
    /// upgraded to its SHA-256 and read into the cache. `None`: no such key (or the check was
    /// refused by the per-prefix bound; then the miss is not cached).
    pub(super) async fn verify_salted(
        &self,
        key: &str,
        hash: KeyHash,
    ) -> Result<Option<Arc<Entry>>, StoreError> {
        let lookups: Vec<String> = (4..=key.len().min(64))
            .filter(|&n| key.is_char_boundary(n))
            .map(|n| key[..n].to_string())
            .collect();
        let candidates = self.store.slow_candidates(&lookups, MAX_CANDIDATES).await?;
        let now = self.clock.now();
        for c in candidates {
            if !self.imports.allow(&c.lookup, now.millis()) {
                // Not cached as missing: the right key must pass once the bound allows.
                self.invalidate(&hash);
                return Ok(None);
            }
            let Ok(_permit) = self.imports.permits.acquire().await else {
                return Ok(None);
            };
            self.metrics
                .slow_hash_checks
                .fetch_add(1, Ordering::Relaxed);
            let stored = c.slow_hash.clone();
            let presented = zeroize::Zeroizing::new(key.to_string());
            let ok =
                tokio::task::spawn_blocking(move || crate::slowhash::matches(&stored, &presented))
                    .await
                    .unwrap_or(false);
            if ok {
                self.rehash(&c, hash).await?;
                // The load that missed cached "no such key": forget it, then read the key.
                self.invalidate(&hash);
                return self.load(hash).await;
            }
        }
        Ok(None)
    }

    /// Replaces a salted hash by the key's SHA-256, with its audit event (once, whichever node
    /// gets there first).
    async fn rehash(&self, c: &SlowCandidate, hash: KeyHash) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if tx.rehash(&c.key_id, &hash).await? {
            let algorithm = if c.slow_hash.starts_with("$argon2") {
                "argon2id"
            } else if c.slow_hash.starts_with("$2") {
                "bcrypt"
            } else {
                "pbkdf2-sha256"
            };
            let mut changes = Map::new();
            changes.insert("hash".into(), json!([algorithm, "sha256"]));
            tx.append_audit(NewEvent {
                id: new_id("evt", now),
                at: now,
                actor: Actor::system(),
                action: AuditAction::KeyRehash,
                target_type: TargetType::Key,
                target_id: c.key_id.clone(),
                reason: Some("first verification of an imported key".into()),
                request_id: None,
                ip: None,
                changes,
            })
            .await?;
            tx.commit().await?;
            self.metrics.keys_rehashed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_core::id::new_id;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::kinds::{AuditAction, TargetType};
use keyward_core::model::Actor;
use keyward_store::{NewEvent, SlowCandidate, StoreError};
use serde_json::{json, Map};

use super::shard::digest;
use super::{lock, Entry, Verifier};

/// Slow-hash checks allowed per lookup prefix in each window.
pub(super) const TRIES_PER_WINDOW: u32 = 10;
pub(super) const TRY_WINDOW_MS: i64 = 10_000;
/// Candidates read for one presented key (lookups are prefix-free, so one is the most that
/// can match; the bound is for safety).
const MAX_CANDIDATES: i64 = 4;
/// How long a check waits for a free slot before the key is answered `NOT_FOUND` (uncached).
const PERMIT_WAIT: Duration = Duration::from_secs(2);

/// Whether the store holds imported keys without keyward's format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Foreign {
    /// Not known yet: the next such string asks the store.
    Unknown,
    No,
    Yes,
}

/// What a salted-hash search found.
pub(super) enum Salted {
    Found(Arc<Entry>),
    /// No candidate, or none matched: the key is missing (and may be cached as such).
    Missing,
    /// A candidate could not be checked now (its prefix's bound, no free slot): answer
    /// `NOT_FOUND` without caching it.
    Refused,
}

pub(super) struct Imports {
    /// [`Foreign`] in the low 2 bits, a generation above them: an answer from the store is
    /// kept only if no import was announced while it was asked (the generation moved).
    foreign: AtomicU64,
    /// Slow-hash checks running at once on this node (a permit moves into the blocking task,
    /// so a cancelled request does not free it before the hash is done).
    permits: Arc<tokio::sync::Semaphore>,
    /// Per lookup prefix: the window's start and the checks made in it.
    tries: Mutex<HashMap<String, (i64, u32)>>,
}

const UNKNOWN: u64 = 0;
const NO: u64 = 1;
const YES: u64 = 2;

impl Imports {
    pub(super) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Imports {
            foreign: AtomicU64::new(UNKNOWN),
            permits: Arc::new(tokio::sync::Semaphore::new(cores)),
            tries: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn foreign(&self) -> Foreign {
        match self.foreign.load(Ordering::Acquire) & 3 {
            NO => Foreign::No,
            YES => Foreign::Yes,
            _ => Foreign::Unknown,
        }
    }

    /// Keys were imported: `Some(true)` here with keys of other formats (`Yes`); `None`
    /// elsewhere (the generation moves and `No` becomes `Unknown`).
    fn announce(&self, foreign: Option<bool>) {
        let _ = self
            .foreign
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (state, gen) = (v & 3, v >> 2);
                let state = match foreign {
                    Some(true) => YES,
                    _ if state == YES => YES,
                    _ => UNKNOWN,
                };
                Some(((gen + 1) << 2) | state)
            });
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
        let v = self.imports.foreign.load(Ordering::Acquire);
        match v & 3 {
            YES => Ok(true),
            NO => Ok(false),
            _ => {
                let yes = self.store.any_foreign_keys().await?;
                // Kept only if nothing was announced meanwhile (else the next string asks
                // again); `Yes` set meanwhile stands.
                let _ = self.imports.foreign.compare_exchange(
                    v,
                    (v & !3) | if yes { YES } else { NO },
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                Ok(yes || self.imports.foreign() == Foreign::Yes)
            }
        }
    }

    /// Keys were imported (here, `foreign` telling whether some lack keyward's format; or on
    /// another node, `None`): cached misses are forgotten, and the store is asked again whether
    /// it holds foreign keys unless this node knows it does.
    pub fn imported(&self, foreign: Option<bool>) {
        if foreign != Some(false) {
            self.imports.announce(foreign);
        }
        for s in &self.shards {
            let mut s = s.write().unwrap_or_else(|p| p.into_inner());
            s.negatives.clear();
            s.epoch += 1;
        }
    }

    /// Caches "no such key" for `hash`, unless the key's shard changed since `epoch`.
    pub(super) fn remember_missing(&self, hash: &KeyHash, epoch: u64) {
        let d = digest(hash);
        let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
        if shard.epoch == epoch {
            shard.found.remove(&d);
            shard.insert_missing(d);
        }
    }

    /// A key held as a salted hash whose lookup prefix starts `key`, in `keyspaces` (`None`:
    /// any): checked, and on success upgraded to its SHA-256 and read into the cache.
    pub(super) async fn verify_salted(
        &self,
        key: &str,
        hash: KeyHash,
        keyspaces: Option<&[String]>,
    ) -> Result<Salted, StoreError> {
        let lookups: Vec<String> = (8..=key.len().min(32))
            .filter_map(|n| key.get(..n).map(str::to_string))
            .collect();
        let now = self.clock.now();
        let candidates = self
            .store
            .slow_candidates(&lookups, keyspaces, now, MAX_CANDIDATES)
            .await?;
        let mut refused = false;
        for c in candidates {
            if !self.imports.allow(&c.lookup, now.millis()) {
                refused = true;
                continue;
            }
            let permit = match tokio::time::timeout(
                PERMIT_WAIT,
                self.imports.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(p)) => p,
                _ => {
                    refused = true;
                    continue;
                }
            };
            self.metrics
                .slow_hash_checks
                .fetch_add(1, Ordering::Relaxed);
            let stored = c.slow_hash.clone();
            let presented = zeroize::Zeroizing::new(key.to_string());
            let checked = tokio::task::spawn_blocking(move || {
                let ok = crate::slowhash::matches(&stored, &presented);
                drop(permit);
                ok
            })
            .await;
            match checked {
                Ok(true) => {
                    self.rehash(&c, hash).await?;
                    // Read the key now held by its SHA-256.
                    self.invalidate(&hash);
                    return Ok(match self.load(hash).await? {
                        Some(e) => Salted::Found(e),
                        None => Salted::Refused,
                    });
                }
                Ok(false) => {}
                // The task did not finish: nothing is known about this key.
                Err(_) => refused = true,
            }
        }
        Ok(if refused {
            Salted::Refused
        } else {
            Salted::Missing
        })
    }

    /// Replaces a salted hash by the key's SHA-256, with its audit event (once, whichever node
    /// gets there first).
    async fn rehash(&self, c: &SlowCandidate, hash: KeyHash) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if tx.rehash(&c.key_id, &hash, now).await? {
            let algorithm = crate::slowhash::algorithm(&c.slow_hash).as_str();
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

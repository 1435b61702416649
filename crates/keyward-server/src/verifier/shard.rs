//! The sharded cache: a key's [`Digest`] maps to its entry, or to "no such key" (a negative
//! entry, so a random key costs at most one store read per cache lifetime).
//!
//! Invariants:
//! - [`SHARDS`] shards, each behind its own lock; the digest's last byte picks the shard, its
//!   first eight bytes the bucket in the shard's table (independent bits: digests are SHA-256
//!   output).
//! - Found keys are in a [`table::Table`] (the digest is in the entry), negatives in a set
//!   apart, and a digest is never in both: caching one removes the other. A flood of random
//!   keys evicts only negatives, and only when a shard holds [`NEGATIVE_PER_SHARD`] of them.
//! - A shard's `epoch` is bumped, under its write lock, by every invalidation of a key of the
//!   shard; a load compares it under the same lock (`Verifier::install`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use keyward_core::keyformat::KeyHash;

use super::{table, Entry, Verifier};

/// Shards of the cache (the digest's last byte picks one).
pub(super) const SHARDS: usize = 64;

/// What the cache is keyed by: the first 16 bytes of a key's SHA-256. Finding another key with
/// the same 128 bits is a second preimage of 2^128 work, on digests that are never shown; two
/// real keys sharing them is a birthday event of about n^2 / 2^129 (1e-27 for a million keys).
pub(crate) type Digest = [u8; 16];

pub(super) fn digest(h: &KeyHash) -> Digest {
    let mut d = [0u8; 16];
    d.copy_from_slice(&h.0[..16]);
    d
}

/// Keys of the cache are SHA-256 digests: already uniformly random, so their first eight bytes
/// are the hash (no second hash function on the hot path).
#[derive(Clone, Copy, Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A digest hashes as its array (a length prefix, then the bytes).
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b).rotate_left(5);
    }
}

type DigestBuild = std::hash::BuildHasherDefault<DigestHasher>;
/// Negative entries kept per shard before that shard's negatives are dropped.
const NEGATIVE_PER_SHARD: usize = 4096;

impl table::Keyed for Arc<Entry> {
    fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// One shard of the cache: the found keys in a [`table::Table`] (a pointer and a tag byte per
/// key, in buckets of one cache line; the digest is in the entry), and the negatives apart, so
/// that a flood of random keys evicts only negatives, and only when there are many of them.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) found: table::Table<Arc<Entry>>,
    pub(super) negatives: HashSet<Digest, DigestBuild>,
    /// Bumped by every invalidation of a key of this shard (under its write lock).
    pub(super) epoch: u64,
}

pub(super) enum Cached {
    Found(Arc<Entry>),
    Missing,
    Unknown,
}

impl Shard {
    // Called from `Verifier::cached`, compiled with `mod.rs` (see there).
    #[inline]
    fn get(&self, d: &Digest) -> Cached {
        match self.found.get(d) {
            Some(e) => Cached::Found(e.clone()),
            None if self.negatives.contains(d) => Cached::Missing,
            None => Cached::Unknown,
        }
    }
    pub(super) fn len(&self) -> usize {
        self.found.len() + self.negatives.len()
    }
    pub(super) fn insert_missing(&mut self, d: Digest) {
        if self.negatives.len() >= NEGATIVE_PER_SHARD {
            self.negatives.clear();
        }
        self.negatives.insert(d);
    }
}

impl Verifier {
    pub(super) fn shard(&self, d: &Digest) -> &RwLock<Shard> {
        // The last byte picks the shard; the first eight feed the map (independent bits).
        &self.shards[d[15] as usize % SHARDS]
    }

    pub(super) fn cached(&self, d: &Digest) -> Cached {
        self.shard(d)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
    }

    /// The invalidations of the shard of `d` so far.
    pub(super) fn epoch(&self, d: &Digest) -> u64 {
        self.shard(d)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .epoch
    }
}

//! Reading a key from the store into the cache, and coherence on this node (told in the
//! `verifier` module's doc): a new entry takes over its predecessor's live state, and an
//! invalidation marks the key's entry stale.
//!
//! Invariants:
//! - A key's live state has one home: its newest entry, the one not `moved`.
//!   [`Verifier::install`] hands the old entry's state to the new one under the shard's write
//!   lock, and the old entry points to the new one (`More::forward`).
//! - A read that may predate a change (the shard's epoch moved while it ran) answers the
//!   verification that made it, but is cached marked stale.
//! - A rotated key in its grace period draws quota from the entry of its last successor (at
//!   most [`MAX_ROTATIONS`] followed), which draws from no other: a rotation never doubles a
//!   quota.
//! - A well-formed key the cache does not know is read from the store once, whatever its
//!   prefix, and cached with the answer ("no such key" included): a key of a keyspace created
//!   on another node a moment ago is found at once, and a repeated unknown key costs one read.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use keyward_core::keyformat::KeyHash;
use keyward_core::model::Key;
use keyward_store::StoreError;

use super::entry::IdentityCell;
use super::live::NEVER;
use super::shard::{digest, Cached};
use super::space::Space;
use super::{lock, Entry, Verifier};

/// An identity's quota entry set anew: its lease was voided in the store, so it is neither
/// spent from, given back, nor added to again (a grant in flight is dropped: new generation),
/// and what it spent unwritten is not charged to the new quota.
fn retire(old: &Entry) {
    let mut s = lock(&old.state);
    old.moved.store(true, Ordering::Release);
    if let Some(m) = s.more.as_deref_mut() {
        m.remaining = Some(0);
        m.consumed = 0;
        m.quota_gen = m.quota_gen.wrapping_add(1);
    }
}

/// Successors followed from a rotated key to the one holding its quota.
const MAX_ROTATIONS: usize = 16;

impl Verifier {
    /// The shared keyspace (its rules not read yet when it is new).
    pub(super) fn keyspace(&self, id: &str) -> Arc<Space> {
        let mut all = lock(&self.keyspaces);
        match all.get(id) {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(Space::new(id));
                all.insert(id.to_string(), k.clone());
                k
            }
        }
    }

    /// A new entry for `key` (not yet cached), sharing its keyspace and, when its identity has
    /// rate limits, the identity's windows.
    pub(super) fn entry_of(&self, key: &Key, successor: Option<Arc<Entry>>) -> Arc<Entry> {
        let shared = !key.owner_ratelimits.is_empty() || key.owner_quota_version.is_some();
        let identity = match &key.owner {
            Some(owner) if shared => Some(self.identity_cell(owner)),
            _ => None,
        };
        Arc::new(Entry::new(
            key,
            self.keyspace(&key.keyspace_id),
            successor,
            identity,
        ))
    }

    /// The cell of an identity's limits and quota on this node.
    fn identity_cell(&self, owner: &str) -> Arc<IdentityCell> {
        let mut all = lock(&self.identities);
        if let Some(c) = all.get(owner).and_then(Weak::upgrade) {
            return c;
        }
        // The map holds cells weakly (entries hold them): forget the dead ones whenever it has
        // doubled.
        if all.len() >= 2 * self.identities_live.load(Ordering::Relaxed).max(64) {
            all.retain(|_, w| w.strong_count() > 0);
            self.identities_live.store(all.len(), Ordering::Relaxed);
        }
        let c = Arc::new(IdentityCell::new(owner));
        all.insert(owner.into(), Arc::downgrade(&c));
        c
    }

    /// Makes this node's entry of the key's identity's quota the one of the version the key
    /// was read with: read from the store when it was set anew (the old one's lease is void:
    /// it is marked moved, so it is neither given back nor spent from again).
    /// Returns the cell: the caller holds it until an entry does (the map holds it weakly).
    async fn sync_identity_quota(
        &self,
        key: &Key,
    ) -> Result<Option<Arc<IdentityCell>>, StoreError> {
        let Some(owner) = &key.owner else {
            return Ok(None);
        };
        let Some(version) = key.owner_quota_version else {
            // No quota (any more): a cell still holding one lets it go.
            let cell = lock(&self.identities)
                .get(owner.as_str())
                .and_then(Weak::upgrade);
            if let Some(cell) = cell {
                if let Some((_, old)) = lock(&cell.quota).take() {
                    retire(&old);
                }
            }
            return Ok(None);
        };
        let cell = self.identity_cell(owner);
        let current = |q: &Option<(i64, Arc<Entry>)>, version: i64| {
            q.as_ref().is_some_and(|(v, _)| *v >= version)
        };
        if current(&lock(&cell.quota), version) {
            return Ok(Some(cell));
        }
        let Some(identity) = self.store.identity(owner, None).await? else {
            return Ok(Some(cell));
        };
        let mut k = Key::with_hash(
            KeyHash::default(),
            String::new(),
            String::new(),
            "",
            self.clock.now(),
            keyward_core::model::Actor::system(),
        );
        k.id = format!("@{}", identity.id);
        k.remaining = identity.remaining;
        k.refill = identity.refill;
        k.refill_anchor = identity.refill_anchor;
        k.refilled_at = identity.refilled_at;
        let fresh = Arc::new(Entry::new(&k, self.keyspace(""), None, None));
        let mut q = lock(&cell.quota);
        if !current(&q, identity.quota_version) {
            if let Some((_, old)) = q.replace((identity.quota_version, fresh)) {
                retire(&old);
            }
        }
        drop(q);
        Ok(Some(cell))
    }

    /// Reads a keyspace's route rules from the store (forward-auth needs them).
    pub(super) async fn load_space(&self, space: &Space) -> Result<(), StoreError> {
        let epoch = space.epoch();
        if let Some(ks) = self.store.keyspace(space.id()).await? {
            space.install(epoch, &ks);
        }
        Ok(())
    }

    /// A keyspace changed (here or, through the change feed, on another node): its rules are
    /// read again before the next forward-auth check of one of its keys.
    pub fn forget_keyspace(&self, id: &str) {
        if let Some(s) = lock(&self.keyspaces).get(id) {
            s.forget();
        }
    }

    /// Reads a key from the store and caches the answer (found or not).
    pub(super) async fn load(&self, hash: KeyHash) -> Result<Option<Arc<Entry>>, StoreError> {
        self.load_with(hash, true).await
    }

    /// [`Verifier::load`]; with `cache_missing` false a key that is not found is not cached as
    /// missing (the caller still has somewhere to look: `imported`).
    pub(super) async fn load_with(
        &self,
        hash: KeyHash,
        cache_missing: bool,
    ) -> Result<Option<Arc<Entry>>, StoreError> {
        let d = digest(&hash);
        let epoch = self.epoch(&d);
        let found = self.store.key_by_hash(&hash).await?;
        // Held until the entry holds it.
        let _identity = match &found {
            Some(k) => self.sync_identity_quota(k).await?,
            None => None,
        };
        let Some(key) = found else {
            if cache_missing {
                // A key that is gone leaves its counts in the dirty list and its lease in the
                // lease list: both are still written.
                self.remember_missing(&hash, epoch);
            }
            return Ok(None);
        };
        let mut successor = None;
        if let (Some(id), None) = (&key.rotated_to, key.revoked_at) {
            // The quota went down the rotations: to the last successor (a key rotated again
            // within the grace period, or with none, passed it on too).
            let mut next = id.clone();
            for _ in 0..MAX_ROTATIONS {
                let Some(s) = self.store.key(&next).await? else {
                    break;
                };
                if let Some(id) = &s.rotated_to {
                    next = id.clone();
                    continue;
                }
                // Read again after noting its shard's epoch, so that a change racing with
                // this read is not cached as current.
                let since = self.epoch(&digest(&s.hash));
                if let Some(s) = self.store.key(&s.id).await? {
                    let _identity = self.sync_identity_quota(&s).await?;
                    successor = Some(self.successor_cell(&s, since));
                }
                break;
            }
        }
        let fresh = self.entry_of(&key, successor);
        Ok(Some(self.install(&fresh, Some(epoch))))
    }

    /// The entry of the key a rotated key draws quota from (the last of its successors): the
    /// cached one when current, else one read from `key`.
    fn successor_cell(&self, key: &Key, epoch: u64) -> Arc<Entry> {
        if let Cached::Found(e) = self.cached(&digest(&key.hash)) {
            if !e.needs_reload() && e.successor().is_none() {
                return e;
            }
        }
        let fresh = self.entry_of(key, None);
        let cell = self.install(&fresh, Some(epoch));
        // A cached entry that was rotated meanwhile draws from elsewhere: not a quota cell.
        if cell.successor().is_some() {
            fresh
        } else {
            cell
        }
    }

    /// Caches `fresh` in place of the key's current entry, which hands its live state over, and
    /// returns the entry to use. `epoch`: that of the key's shard when the load began.
    /// - A current entry cached meanwhile by a concurrent load is as fresh as `fresh` (an
    ///   invalidation would have marked it), so it stays and is returned: concurrent misses of
    ///   one key share one entry.
    /// - When a key of the shard was invalidated since the load began, the read may predate a
    ///   change: it answers the verification that made it (the two overlapped), and is cached
    ///   marked stale (the next verification reads again), so the key's state still has one
    ///   home.
    pub(super) fn install(&self, fresh: &Arc<Entry>, epoch: Option<u64>) -> Arc<Entry> {
        let d = fresh.digest;
        // The epoch is compared under the shard's write lock, which `invalidate` also holds
        // while it bumps the epoch.
        let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
        let old = shard.found.get(&d).cloned();
        if let Some(old) = old
            .as_ref()
            .filter(|o| epoch.is_some() && !o.needs_reload())
        {
            return old.clone();
        }
        if epoch.is_some_and(|e| shard.epoch != e) {
            fresh.stale.store(true, Ordering::Release);
        }
        if let Some(old) = old {
            self.hand_over(&old, fresh);
        }
        shard.negatives.remove(&d);
        shard.found.replace(fresh.clone());
        fresh.clone()
    }

    /// Moves the live state of `old` into `fresh` (not yet shared): counts not yet written, the
    /// rate-limit window, the quota lease (unless another node set the quota anew, which voided
    /// every lease in the store: the quota is then taken from the row `fresh` was read from).
    fn hand_over(&self, old: &Arc<Entry>, fresh: &Arc<Entry>) {
        let mut o = lock(&old.state);
        let taken = std::mem::take(&mut *o);
        // The windows follow the limits they count (by name and length). `fresh` is no one
        // else's yet: its windows are written without its lock.
        debug_assert_eq!(Arc::strong_count(fresh), 1, "a fresh entry is not shared");
        fresh.take_windows(old);
        o.more().forward = Some(fresh.clone());
        old.moved.store(true, Ordering::Release);
        drop(o);
        let mut n = lock(&fresh.state);
        let from_row = std::mem::replace(&mut *n, taken);
        if let Some(m) = n.more.as_deref_mut() {
            // `fresh` is in no list yet: marked dirty below, it waits again if not yet due.
            m.sources_waiting = false;
        }
        let reset = old.stale_quota.load(Ordering::Acquire);
        if reset || n.remaining().is_none() {
            let (remaining, pool) = from_row
                .more
                .as_ref()
                .map_or((None, 0), |m| (m.remaining, m.pool));
            if remaining.is_some() || n.more.is_some() {
                let m = n.more();
                m.remaining = remaining;
                m.pool = pool;
                if reset {
                    m.quota_gen = m.quota_gen.wrapping_add(1);
                    m.consumed = 0;
                    m.lease_until = NEVER;
                }
            }
        }
        // The quota's low mark follows the key's refill and keyspace as read now.
        let low = from_row.more.as_ref().map_or(NEVER, |m| m.low_below);
        if low != NEVER || n.more.is_some() {
            n.more().low_below = low;
        }
        if n.previous_use == NEVER {
            n.previous_use = from_row.previous_use;
        }
        let (pending, leased) = (n.pending(), n.remaining().is_some_and(|r| r > 0));
        drop(n);
        if pending {
            self.mark_dirty(fresh);
        }
        if leased {
            self.track_lease(fresh);
        }
    }

    /// Marks the key's entry stale after `f` ran on it, under the shard's write lock (so the
    /// entry is the one that holds the key's state: none is replaced meanwhile).
    pub(super) fn invalidate_with(&self, hash: &KeyHash, f: impl FnOnce(&Entry)) {
        let d = digest(hash);
        let mut shard = self.shard(&d).write().unwrap_or_else(|p| p.into_inner());
        shard.epoch += 1;
        if let Some(e) = shard.found.get(&d) {
            f(e);
            e.stale.store(true, Ordering::Release);
        }
        shard.negatives.remove(&d);
    }
}

//! What a node knows of the database between its own write transactions ([`Known`]): the audit
//! chain's head, the webhooks, the keyspaces it read. A write transaction would otherwise read
//! each of them again, one round trip each, on every change.
//!
//! Invariants:
//! - Known is kept with the write lock's counter (`write_lock.n`, bumped by every write
//!   transaction of every node under the lock, and rolled back with it) and tag (`write_lock.tag`,
//!   a random value each write transaction of this version sets, rolled back with it) as of the
//!   node's last commit. A transaction that takes the lock and finds the counter one past it and
//!   that tag still there (`begin`) follows that commit directly: no other transaction, of this
//!   node or another, of this version or an older one, committed a change between. The tag also
//!   tells a database that changed under the node (a fail-over to a replica that lost the
//!   commit, a restore) from the one it wrote: the counter alone could repeat there. Otherwise
//!   the transaction starts knowing nothing and reads the store.
//! - Within a transaction, what it writes to these tables updates or forgets what it knows
//!   (its own audit events move the head; a keyspace written is read again; a webhook written
//!   drops the list).
//! - It is handed back only by a commit that succeeded. A transaction dropped or failed leaves
//!   the cell as it was: its lock update (counter and tag) was rolled back with it, so the cell
//!   still matches the database; a commit that failed after the database took it leaves a tag
//!   the cell does not hold, so the next transaction reads the store.
//! - A prediction ([`KnownCell::predict`]) is what the last commit left, handed out without
//!   taking the lock: only a write whose guard finds the counter and tag still where that
//!   commit left them may rely on it (`Writes::if_lock_at`), and such a write moves the cell one
//!   commit on ([`Known::advance`]). Predictions are made one at a time, never while a write
//!   transaction of this node is under way, and not after a guard or a transaction found
//!   another writer before it, until a transaction finds none.
//! - Every write of `audit_events`, `keyspaces` and `webhooks` goes through a write transaction
//!   (a writer that skipped the lock would already break the audit chain's order; for keyspaces
//!   and webhooks the rule is kept for this cache). A migration that writes these tables must
//!   take the lock the same way (`UPDATE write_lock SET n = n + 1, tag = NULL`), so that running
//!   nodes do not remember past it (none does so far).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::model::{Keyspace, Webhook};

/// Keyspaces remembered per node between transactions (the ones read most recently).
const KEYSPACES: usize = 16;

/// What a write transaction knows of the database without reading it (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct Known {
    /// The write lock's counter this is true at (0: nothing is known).
    n: i64,
    /// The write lock's tag this is true at (the transaction's own).
    tag: String,
    /// The audit chain's last event: its `seq` and `hash` (`(0, GENESIS)` for an empty chain).
    pub(crate) audit_head: Option<(i64, String)>,
    /// Every webhook.
    pub(crate) webhooks: Option<Arc<Vec<Webhook>>>,
    /// Keyspaces read or checked, most recent last.
    keyspaces: Vec<Arc<Keyspace>>,
}

impl Known {
    pub(crate) fn keyspace(&self, id: &str) -> Option<Keyspace> {
        self.keyspaces
            .iter()
            .find(|k| k.id == id)
            .map(|k| Keyspace::clone(k))
    }

    pub(crate) fn remember_keyspace(&mut self, ks: &Keyspace) {
        self.forget_keyspace(&ks.id);
        if self.keyspaces.len() >= KEYSPACES {
            self.keyspaces.remove(0);
        }
        self.keyspaces.push(Arc::new(ks.clone()));
    }

    pub(crate) fn forget_keyspace(&mut self, id: &str) {
        self.keyspaces.retain(|k| k.id != id);
    }

    /// The write lock's counter and tag this is true at.
    pub(crate) fn lock(&self) -> (i64, &str) {
        (self.n, &self.tag)
    }

    /// Now true one commit later: the one that took the lock from where this was true and set
    /// its tag to `tag` (a guarded write, `Writes::if_lock_at`).
    pub(crate) fn advance(&mut self, tag: String) {
        self.n += 1;
        self.tag = tag;
    }
}

/// A store's [`Known`] between write transactions, and what [`KnownCell::predict`] needs.
#[derive(Default)]
pub(crate) struct KnownCell {
    held: Mutex<Known>,
    /// Write transactions of this node begun and not yet over, predictions included.
    writing: AtomicUsize,
    /// Whether the last transaction found the lock where this node's last commit left it (no
    /// other writer came between): predictions are made only then.
    trusted: AtomicBool,
}

/// One write transaction of this node (or prediction) under way, until dropped.
pub(crate) struct Writing(Arc<KnownCell>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl KnownCell {
    /// Counts a write transaction about to begin, until the answer is dropped.
    pub(crate) fn writing(self: &Arc<Self>) -> Writing {
        self.writing.fetch_add(1, Ordering::AcqRel);
        Writing(self.clone())
    }

    /// What a write transaction begun now would know, without beginning one: what this node's
    /// last commit left, if the audit chain's head and the webhooks are among it, no other
    /// write transaction of this node is under way, and the last one found no other writer
    /// before it. Only a write whose guard finds the lock still there may rely on it
    /// (`Writes::if_lock_at`): another node may have written since.
    pub(crate) fn predict(self: &Arc<Self>) -> Option<(Known, Writing)> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        self.writing
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let writing = Writing(self.clone());
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        (held.n != 0 && held.audit_head.is_some() && held.webhooks.is_some())
            .then(|| (held.clone(), writing))
    }

    /// A write relying on a prediction was refused (its guard found the lock moved, or the
    /// database refused a write): no more predictions until a transaction finds the lock where
    /// this node left it.
    pub(crate) fn mistrust(&self) {
        self.trusted.store(false, Ordering::Release);
    }

    /// The tag of the last commit this cell holds (if any), and a new one for a transaction.
    pub(crate) fn tags(&self) -> (Option<String>, String) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let last = (held.n != 0).then(|| held.tag.clone());
        (last, keyward_core::keyformat::base62_random(16))
    }

    /// What a transaction that took the write lock with counter `n`, finding the tag it was
    /// given by [`KnownCell::tags`] (`hit`), and setting `tag`, knows: what the last commit
    /// left, if it was the one just before; else nothing.
    pub(crate) fn take(&self, n: i64, hit: bool, tag: String) -> Known {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let follows = hit && held.n != 0 && held.n == n - 1;
        self.trusted.store(follows, Ordering::Release);
        if follows {
            Known {
                n,
                tag,
                ..held.clone()
            }
        } else {
            Known {
                n,
                tag,
                ..Known::default()
            }
        }
    }

    /// Keeps what a transaction knew once it committed (unless a later one already did).
    pub(crate) fn keep(&self, known: Known) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if known.n > held.n {
            *held = known;
        }
    }
}

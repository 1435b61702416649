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
//! - Every write of `audit_events`, `keyspaces` and `webhooks` goes through a write transaction
//!   (a writer that skipped the lock would already break the audit chain's order; for keyspaces
//!   and webhooks the rule is kept for this cache). A migration that writes these tables must
//!   take the lock the same way (`UPDATE write_lock SET n = n + 1, tag = NULL`), so that running
//!   nodes do not remember past it (none does so far).

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
}

/// A store's [`Known`] between write transactions.
#[derive(Default)]
pub(crate) struct KnownCell(Mutex<Known>);

impl KnownCell {
    /// The tag of the last commit this cell holds (if any), and a new one for a transaction.
    pub(crate) fn tags(&self) -> (Option<String>, String) {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let last = (held.n != 0).then(|| held.tag.clone());
        (last, keyward_core::keyformat::base62_random(16))
    }

    /// What a transaction that took the write lock with counter `n`, finding the tag it was
    /// given by [`KnownCell::tags`] (`hit`), and setting `tag`, knows: what the last commit
    /// left, if it was the one just before; else nothing.
    pub(crate) fn take(&self, n: i64, hit: bool, tag: String) -> Known {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if hit && held.n != 0 && held.n == n - 1 {
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
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.n > held.n {
            *held = known;
        }
    }
}

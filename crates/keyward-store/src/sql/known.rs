//! What a node knows of the database between its own write transactions ([`Known`]): the audit
//! chain's head, the webhooks, the keyspaces it read. A write transaction would otherwise read
//! each of them again, one round trip each, on every change.
//!
//! Invariants:
//! - Known is kept only for the write lock's counter (`write_lock.n`, bumped by every write
//!   transaction of every node under the lock, and rolled back with it) as of the node's last
//!   commit. A transaction that finds the counter one past it (`begin`) holds the lock next to
//!   that commit: no other transaction, of this node or another, committed a change between.
//!   Otherwise it starts knowing nothing and reads the store.
//! - Within a transaction, what it writes to these tables updates or forgets what it knows
//!   (its own audit events move the head; a keyspace written is read again; a webhook written
//!   drops the list).
//! - It is handed back only by a commit that succeeded; a transaction dropped or failed leaves
//!   the cell empty, so the next one reads the store.
//! - Every write of `audit_events`, `keyspaces` and `webhooks` goes through a write transaction
//!   (a writer that skipped the lock would already break the audit chain's order).

use std::sync::{Arc, Mutex};

use keyward_core::model::{Keyspace, Webhook};

/// Keyspaces remembered per node between transactions (the ones written to most recently).
const KEYSPACES: usize = 16;

/// What a write transaction knows of the database without reading it (see the module docs).
#[derive(Default)]
pub(crate) struct Known {
    /// The write lock's counter this is true at (0: nothing is known).
    n: i64,
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
    /// What a transaction that took the write lock with counter `n` knows: what the last commit
    /// left, if it was the one just before; else nothing.
    pub(crate) fn take(&self, n: i64) -> Known {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let known = std::mem::take(&mut *held);
        drop(held);
        if known.n != 0 && known.n == n - 1 {
            Known { n, ..known }
        } else {
            Known {
                n,
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

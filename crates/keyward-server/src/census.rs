//! What the dashboard overview's counts keep between views (see `dashboard::census`, which
//! takes and serves them): a census per scope. A leaf module, so the state can hold it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_core::model::Key;
use keyward_core::time::Timestamp;
use keyward_store::KeyCensus;

/// The counts of the keyspaces of one scope as of `at`.
pub(crate) struct Census {
    pub(crate) per_keyspace: HashMap<String, KeyCensus>,
    /// The first live keys expiring within their warning window, soonest first.
    pub(crate) expiring: Vec<Key>,
    /// The first inactive live keys, least recently used first.
    pub(crate) inactive: Vec<Key>,
    pub(crate) at: Timestamp,
    pub(crate) took: Duration,
}

impl Census {
    /// The sum over every keyspace.
    pub(crate) fn total(&self) -> KeyCensus {
        let mut t = KeyCensus::default();
        for c in self.per_keyspace.values() {
            t.active += c.active;
            t.rotating += c.rotating;
            t.disabled += c.disabled;
            t.expired += c.expired;
            t.revoked += c.revoked;
            t.no_owner += c.no_owner;
            t.no_expiry += c.no_expiry;
            t.too_long += c.too_long;
            t.expiring += c.expiring;
            t.inactive += c.inactive;
            t.calls += c.calls;
            t.denied += c.denied;
        }
        t
    }
}

pub(crate) struct Slot {
    pub(crate) census: Arc<Census>,
    pub(crate) refreshing: bool,
}

/// The censuses kept by this node, by scope.
#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) slots: Mutex<HashMap<Vec<String>, Slot>>,
}

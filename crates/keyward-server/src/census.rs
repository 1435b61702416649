//! What the dashboard overview's counts keep between views (see `dashboard::census`, which
//! takes, keeps and serves them): a count per keyspace. A leaf module, so the state can hold it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_core::model::Key;
use keyward_core::time::Timestamp;
use keyward_store::KeyCensus;

/// The counts of the keyspaces a view shows, as of `at` (the oldest of its keyspaces' counts).
pub(crate) struct Census {
    pub(crate) per_keyspace: HashMap<String, KeyCensus>,
    /// The first live keys expiring within their warning window, soonest first.
    pub(crate) expiring: Vec<Key>,
    /// The first inactive live keys, least recently used first.
    pub(crate) inactive: Vec<Key>,
    pub(crate) at: Timestamp,
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

/// One keyspace's counts as of `at`, with the first keys of its two flagged lists.
pub(crate) struct Part {
    pub(crate) census: KeyCensus,
    pub(crate) expiring: Vec<Key>,
    pub(crate) inactive: Vec<Key>,
    pub(crate) at: Timestamp,
    /// When the count ended, on this node's monotonic clock (`at` may be a test's clock).
    pub(crate) taken: Instant,
    pub(crate) took: Duration,
}

/// What this node holds of one keyspace's counts.
#[derive(Default)]
pub(crate) struct Slot {
    /// The latest counts (none: not taken yet). Whether a view shows them or counts again is
    /// the view's to decide (`dashboard::census`).
    pub(crate) part: Option<Arc<Part>>,
    /// The counts are being taken again in the background.
    pub(crate) refreshing: bool,
    /// Held while the keyspace is counted: a view that needs counts waits for a count under
    /// way and shows it, instead of taking a second one.
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
}

/// The counts held by this node, by keyspace.
pub(crate) struct Cache {
    pub(crate) slots: Mutex<HashMap<String, Slot>>,
    /// The count taken at start: `None` until it is done, then how many keyspaces' counts it
    /// took that are worth keeping.
    pub(crate) warmed: tokio::sync::watch::Sender<Option<usize>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            slots: Mutex::default(),
            warmed: tokio::sync::watch::channel(None).0,
        }
    }
}

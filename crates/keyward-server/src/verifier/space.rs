//! What the verifier knows of a keyspace, shared by the entries of its keys: its id (written
//! into every answer) and its route rules, read from the store the first time a forward-auth
//! check needs them and read again after the keyspace changes (on this node at once, on the
//! others through the change feed).
//!
//! Invariants: a rules read that began before a change never overwrites what the change made
//! stale (`epoch` counts changes, and a read installs its rules only if no change came between
//! its start and its end); and rules not read yet, or made stale by a change, refuse every
//! request (`Routes::closed`) rather than allow one: a check that could not read them fails
//! closed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use keyward_core::routes::{self, RouteDecision, RouteRequest, Routes};

pub struct Space {
    id: String,
    routes: RwLock<Arc<Routes>>,
    /// `routes` holds what the store held at the last read since the last change.
    loaded: AtomicBool,
    epoch: AtomicU64,
}

impl Space {
    pub(super) fn new(id: &str) -> Space {
        Space {
            id: id.to_string(),
            routes: RwLock::new(Arc::new(Routes::closed())),
            loaded: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether the rules are current (else a forward-auth check reads them first).
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The keyspace changed: its rules are read again before the next check that needs them.
    pub(super) fn forget(&self) {
        let mut g = self.routes.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.loaded.store(false, Ordering::Release);
        *g = Arc::new(Routes::closed());
    }

    /// The epoch a rules read starts at.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Installs rules read from the store since `epoch`, unless a change came meanwhile.
    pub(super) fn install(&self, epoch: u64, rules: &keyward_core::model::Keyspace) {
        // Stored rules were checked when written; one that no longer compiles (a rule this
        // version refuses) fails closed: every check of the keyspace is refused.
        let compiled = routes::compile(&rules.routes, rules.unmatched).unwrap_or_else(|e| {
            tracing::error!(keyspace = %self.id, error = %e, "stored route rules do not compile; refusing");
            Routes::closed()
        });
        let mut g = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) == epoch {
            *g = Arc::new(compiled);
            self.loaded.store(true, Ordering::Release);
        }
    }

    /// The rules' answer for a request, or `None` when there is nothing to check.
    pub(super) fn decide<R>(
        &self,
        req: RouteRequest<'_>,
        f: impl FnOnce(RouteDecision<'_>) -> R,
    ) -> R {
        let g = self.routes.read().unwrap_or_else(|p| p.into_inner());
        f(g.decide(req))
    }
}

//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::time::{Clock, Timestamp};
use keyward_store::Store;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::verifier::Verifier;

/// What every handler and job shares. One `Arc`: axum clones the state for every request (the
/// route's service and the `State` extractor), so a clone must cost one reference count, not
/// one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    /// Serializes usage batches with control-plane changes of a key's quota (a tokio mutex:
    /// it is held across store calls).
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
    pub(crate) throttle: Arc<crate::throttle::AuthThrottle>,
    /// When each token's `last_used_at` was last written, so it is written at most once a minute.
    pub(crate) token_touched: Arc<Mutex<HashMap<String, Timestamp>>>,
    /// Dashboard sign-in throttles and the dummy password hash.
    pub accounts: Arc<crate::throttle::SignIns>,
    /// Wakes the webhook delivery worker when a change enqueued events.
    pub(crate) webhook_wake: Arc<tokio::sync::Notify>,
}

/// What the changes no node caches (management tokens, dashboard users) use: the store and
/// the clock. The offline commands build one from the database alone, without a server's state.
#[derive(Clone)]
pub struct Records {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Records {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Records { store, clock }
    }
}

impl AppState {
    /// The records part of this state (two reference counts).
    pub fn records(&self) -> Records {
        Records::new(self.store.clone(), self.clock.clone())
    }

    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let redis = config
            .redis_url
            .as_ref()
            .map(|url| Arc::new(crate::redis::RedisLimiter::new(url)));
        let verifier = Arc::new(Verifier::new(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            config.dormant_after,
            redis,
        ));
        verifier.set_usage_counting(config.usage_counting);
        AppState(Arc::new(Shared {
            store,
            clock,
            throttle: Arc::new(crate::throttle::AuthThrottle::new(
                config.auth_failure_limit,
                60,
            )),
            config: Arc::new(config),
            verifier,
            metrics,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            token_touched: Arc::new(Mutex::new(HashMap::new())),
            accounts: Arc::new(crate::throttle::SignIns::default()),
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
        }))
    }
}

//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_core::keyformat::KeyHash;
use keyward_core::model::Token;

use keyward_core::time::{Clock, Timestamp};
use keyward_store::Store;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::verifier::Verifier;

/// What every handler and job shares. One `Arc`: axum clones the state for every request (the
/// route's service and the `State` extractor), so a clone must cost one reference count, not
/// one per field. Each part below it takes only the piece it uses: [`Records`], [`Control`] or
/// [`Authn`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The control plane and the background jobs.
    pub control: Control,
    /// Token authentication, dashboard sign-in and sessions.
    pub(crate) authn: Authn,
    /// GitHub's secret-scanning public keys (read when first needed).
    pub(crate) github: crate::github::GithubKeys,
    /// This node's bounds on leak reports.
    pub(crate) leaks: crate::throttle::LeakGate,
    /// The dashboard overview's counts, kept when they are costly to take.
    pub(crate) census: crate::census::Cache,
    pub config: Arc<Config>,
}

/// What reads and the changes no node caches (management tokens, dashboard users) use: the
/// store and the clock. The offline commands build one from the database alone, without a
/// server's state.
#[derive(Clone)]
pub struct Records {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Management tokens this node found lately (see [`FoundTokens`]).
    pub(crate) tokens: Arc<FoundTokens>,
}

impl Records {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Records {
            store,
            clock,
            tokens: Arc::default(),
        }
    }
}

/// What the control plane's changes and the background jobs use: the records, and this node's
/// caches and hand-offs a change must keep in step (the verifier's entries and quota leases,
/// the usage gate, the webhook worker's wake-up).
#[derive(Clone)]
pub struct Control {
    pub(crate) records: Records,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) metrics: Arc<Metrics>,
    /// Serializes usage batches with control-plane changes of a key's quota (a tokio mutex:
    /// it is held across store calls).
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
    /// This node's key creations, one at a time (see `service::create_key`).
    pub(crate) creating: Arc<tokio::sync::Mutex<()>>,
    /// Creations that had their turn and finished (see `service::create_key`).
    pub(crate) creations_done: Arc<std::sync::atomic::AtomicU64>,
    /// Wakes the webhook delivery worker when a change enqueued events.
    pub(crate) webhook_wake: Arc<tokio::sync::Notify>,
    /// Whether webhook URLs may name internal addresses (`KEYWARD_WEBHOOK_ALLOW_PRIVATE`).
    pub(crate) webhook_allow_private: bool,
    /// Keys a usage flush writes per transaction at most ([`Config::usage_flush_batch`]).
    pub(crate) flush_batch: usize,
    /// This node's webhook endpoint circuits.
    pub(crate) circuits: Arc<crate::outbound::Circuits>,
    /// Seals webhook signing secrets at rest, when configured.
    pub(crate) master_key: Option<Arc<keyward_core::seal::MasterKey>>,
}

/// Leak reports one address may make in a minute (the rest are 429).
pub(crate) const LEAK_REPORTS_PER_MINUTE: u32 = 30;

/// What authentication uses: the records and this node's throttles.
pub(crate) struct Authn {
    pub(crate) records: Records,
    pub(crate) throttle: crate::throttle::AuthThrottle,
    /// When each token's `last_used_at` was last written, so it is written at most once a minute.
    pub(crate) token_touched: Mutex<HashMap<String, Timestamp>>,
    /// Dashboard sign-in throttles and the dummy password hash.
    pub(crate) sign_ins: crate::throttle::SignIns,
    /// Leak reports per address (`POST /v1/leaks` needs no token).
    pub(crate) leak_reports: crate::throttle::AuthThrottle,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Self {
        Self::with_master_key(store, clock, config, None)
    }

    /// A state whose webhook signing secrets are sealed with `master_key` (the store's
    /// existing secrets must already be sealed with it: `keyward serve` sees to that).
    pub fn with_master_key(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Config,
        master_key: Option<keyward_core::seal::MasterKey>,
    ) -> Self {
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
        let records = Records::new(store, clock);
        AppState(Arc::new(Shared {
            authn: Authn {
                records: records.clone(),
                throttle: crate::throttle::AuthThrottle::new(config.auth_failure_limit, 60),
                token_touched: Mutex::new(HashMap::new()),
                sign_ins: crate::throttle::SignIns::default(),
                leak_reports: crate::throttle::AuthThrottle::new(LEAK_REPORTS_PER_MINUTE, 60),
            },
            control: Control {
                records,
                verifier,
                metrics,
                gate: Arc::new(tokio::sync::Mutex::new(())),
                creating: Arc::new(tokio::sync::Mutex::new(())),
                creations_done: Arc::default(),
                webhook_wake: Arc::new(tokio::sync::Notify::new()),
                webhook_allow_private: config.webhook_allow_private,
                flush_batch: config.usage_flush_batch as usize,
                circuits: Arc::default(),
                master_key: master_key.map(Arc::new),
            },
            github: crate::github::GithubKeys::from_config(&config),
            leaks: crate::throttle::LeakGate::default(),
            census: crate::census::Cache::default(),
            config: Arc::new(config),
        }))
    }

    /// Waits until this node has counted the dashboard overview's keys once (`serve` does so
    /// as it starts, so that the first view does not wait for a pass over many keys); how
    /// many keyspaces' counts it took are worth keeping for later views. It waits for ever on
    /// a state no `serve` runs with.
    pub async fn overview_counted(&self) -> usize {
        let mut warmed = self.census.warmed.subscribe();
        let counted = warmed.wait_for(Option::is_some).await;
        counted.ok().and_then(|v| *v).unwrap_or(0)
    }

    /// The store and the clock.
    pub fn records(&self) -> &Records {
        &self.control.records
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.control.records.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.control.records.clock
    }

    /// This node's data plane.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.control.verifier
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.control.metrics
    }

    /// Dashboard sign-in counters (tests check that every failed sign-in costs one Argon2 check).
    pub fn sign_ins(&self) -> &crate::throttle::SignIns {
        &self.authn.sign_ins
    }
}

/// Management tokens this node found by their hash in the last [`FoundTokens::FRESH`] (from the
/// start of the read that found each), so that a client sending request after request costs
/// the store one read per token and period, not one per request (the read is a round trip to
/// the database, one of the few a change makes).
///
/// Only tokens found are kept: an unknown token is read each time (and throttled). A token is
/// checked for expiry at each use all the same. A revocation through this node forgets every
/// kept token ([`ForgetTokens`]); one through another node is seen here within `FRESH`, inside
/// the cluster's bound of 1 s for a revocation to be honoured everywhere. `FRESH` is real
/// (monotonic) time, not the service clock: it bounds how stale a copy is, whatever a test's
/// clock says.
#[derive(Default)]
pub(crate) struct FoundTokens(Mutex<Found>);

#[derive(Default)]
struct Found {
    tokens: HashMap<KeyHash, (Token, Instant)>,
    /// Counts `forget_all`: a read that began before one is not kept (it may predate the change).
    generation: u64,
}

/// A read of a token from the store: when it began, and in which generation.
pub(crate) struct TokenRead {
    generation: u64,
    began: Instant,
}

/// Forgets every kept token when dropped: after a token's change committed, and on every other
/// way out of the change (an error, a request cancelled at its commit), so that the node that
/// made it never goes on accepting what it changed.
pub(crate) struct ForgetTokens<'a>(pub(crate) &'a FoundTokens);

impl Drop for ForgetTokens<'_> {
    fn drop(&mut self) {
        self.0.forget_all();
    }
}

impl FoundTokens {
    /// How long a token found is used without reading it again.
    const FRESH: Duration = Duration::from_millis(500);
    /// Tokens kept at most (all are dropped when full: the next request of each reads again).
    const MAX: usize = 4096;

    /// The token kept for `hash`, or what a read of the store that begins now must carry to
    /// [`FoundTokens::put`].
    pub(crate) fn get(&self, hash: &KeyHash) -> std::result::Result<Token, TokenRead> {
        let found = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match found.tokens.get(hash) {
            Some((t, at)) if at.elapsed() < Self::FRESH => Ok(t.clone()),
            _ => Err(TokenRead {
                generation: found.generation,
                began: Instant::now(),
            }),
        }
    }

    /// Keeps a token read since `read` began, unless a change came since; it is fresh for
    /// [`FoundTokens::FRESH`] from the read's beginning, not its end.
    pub(crate) fn put(&self, hash: KeyHash, token: &Token, read: TokenRead) {
        let mut found = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if found.generation != read.generation {
            return;
        }
        if found.tokens.len() >= Self::MAX {
            found.tokens.clear();
        }
        found.tokens.insert(hash, (token.clone(), read.began));
    }

    /// Forgets every token kept (a token changed: each is read again at its next use).
    pub(crate) fn forget_all(&self) {
        let mut found = self.0.lock().unwrap_or_else(|p| p.into_inner());
        found.tokens.clear();
        found.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::model::{Actor, Role};

    use super::*;

    fn a_token(id: &str) -> Token {
        Token {
            id: id.into(),
            name: "t".into(),
            role: Role::Admin,
            keyspace_ids: None,
            created_at: keyward_core::time::Timestamp::from_millis(0),
            created_by: Actor::system(),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
            last_used_at: None,
        }
    }

    #[test]
    fn a_token_read_before_a_change_is_not_kept_after_it() {
        let found = FoundTokens::default();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        let Err(read) = found.get(&a) else {
            panic!("nothing is kept yet");
        };
        found.put(a, &a_token("tok_a"), read);
        assert_eq!(found.get(&a).map(|t| t.id).ok(), Some("tok_a".to_string()));
        // A read of b begins, a token changes (everything is forgotten), then the read ends:
        // what it read may predate the change, so it is not kept.
        let Err(before) = found.get(&b) else {
            panic!("b is not kept");
        };
        found.forget_all();
        assert!(found.get(&a).is_err(), "forgotten");
        found.put(b, &a_token("tok_b"), before);
        assert!(
            found.get(&b).is_err(),
            "a read from before the change is not kept"
        );
        let Err(after) = found.get(&b) else {
            panic!("b is not kept");
        };
        found.put(b, &a_token("tok_b"), after);
        assert_eq!(found.get(&b).map(|t| t.id).ok(), Some("tok_b".to_string()));
        // Fresh from the read's beginning: one that took longer than FRESH is stale at once.
        let Err(slow) = found.get(&a) else {
            panic!("a was forgotten");
        };
        std::thread::sleep(FoundTokens::FRESH);
        found.put(a, &a_token("tok_a"), slow);
        assert!(
            found.get(&a).is_err(),
            "kept for FRESH from the read's beginning"
        );
        // The cluster's bound for a revocation to be honoured everywhere is 1 s.
        const { assert!(FoundTokens::FRESH.as_millis() < 1000) };
    }
}

//! What every handler and background task shares.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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
    pub gate: Arc<tokio::sync::Mutex<()>>,
    pub throttle: Arc<AuthThrottle>,
    /// When each token's `last_used_at` was last written, so it is written at most once a minute.
    pub token_touched: Arc<Mutex<HashMap<String, Timestamp>>>,
    /// Dashboard sign-in throttles and the dummy password hash.
    pub accounts: Arc<crate::accounts::Accounts>,
    /// Wakes the webhook delivery worker when a change enqueued events.
    pub webhook_wake: Arc<tokio::sync::Notify>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let redis = config.redis_url.as_deref().and_then(|url| match crate::redis::RedisLimiter::from_url(url) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::error!(error = %e, "KEYWARD_REDIS_URL is not usable; rate limits are per node");
                None
            }
        });
        let verifier = Arc::new(Verifier::new(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            config.dormant_after_secs,
            redis,
        ));
        verifier.set_usage_counting(config.usage_counting);
        AppState(Arc::new(Shared {
            store,
            clock,
            throttle: Arc::new(AuthThrottle::new(config.auth_failure_limit, 60)),
            config: Arc::new(config),
            verifier,
            metrics,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            token_touched: Arc::new(Mutex::new(HashMap::new())),
            accounts: Arc::new(crate::accounts::Accounts::default()),
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
        }))
    }
}

/// Counts failed management authentications per address over a sliding window.
pub struct AuthThrottle {
    limit: usize,
    window_ms: i64,
    failures: Mutex<HashMap<IpAddr, VecDeque<Timestamp>>>,
}

const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AuthThrottle {
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn new(limit: u32, window_secs: i64) -> Self {
        AuthThrottle {
            limit: limit as usize,
            window_ms: window_secs * 1000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one failure; `Some(retry_after_secs)` when this address is over the limit.
    pub fn fail(&self, ip: IpAddr, now: Timestamp) -> Option<i64> {
        // One IPv6 host usually holds a whole /64: count it as one address.
        let ip = match ip {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        };
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_ADDRESSES {
            let cutoff = now.millis() - self.window_ms;
            map.retain(|_, q| q.back().is_some_and(|t| t.millis() > cutoff));
        }
        let q = map.entry(ip).or_default();
        while q
            .front()
            .is_some_and(|t| t.millis() <= now.millis() - self.window_ms)
        {
            q.pop_front();
        }
        let over = q.len() >= self.limit;
        q.push_back(now);
        // Keep at most what decides the answer.
        while q.len() > self.limit + 1 {
            q.pop_front();
        }
        if over {
            let oldest = q.front().copied().unwrap_or(now);
            let wait_ms = oldest.millis() + self.window_ms - now.millis();
            Some((wait_ms + 999) / 1000)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_21st_failure_within_a_minute_is_throttled_and_an_ipv6_64_counts_as_one_address() {
        let t = AuthThrottle::new(20, 60);
        let now = Timestamp::from_millis(1_000_000);
        for i in 0..20u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]);
            assert_eq!(t.fail(ip, now), None, "failure {i}");
        }
        assert_eq!(t.tracked(), 1);
        let wait = t.fail(IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]), now);
        assert_eq!(wait, Some(60));
        assert_eq!(
            t.fail(IpAddr::from([10, 0, 0, 1]), now),
            None,
            "other addresses are not affected"
        );
        assert_eq!(
            t.fail(
                IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 1]),
                now.plus_secs(61)
            ),
            None,
            "the window passed"
        );
    }
}

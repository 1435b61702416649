//! Per-node throttles: failed authentication with management tokens per address
//! (`AuthThrottle`, also used for leak reports per address), dashboard sign-ins per address
//! and per account ([`SignIns`]), and the bounds on leak reports (`LeakGate`). They live in
//! memory: a cluster of n nodes allows n times as many, still few.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use keyward_core::time::Timestamp;

/// Failed sign-ins per address, and per account (email), within [`LOGIN_WINDOW_SECS`].
pub const LOGIN_FAILURES_PER_ADDRESS: usize = 20;
pub const LOGIN_FAILURES_PER_ACCOUNT: usize = 5;
pub const LOGIN_WINDOW_SECS: i64 = 15 * 60;

/// The unit a throttle counts: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
/// /64, so counting single IPv6 addresses would let it guess without limit).
pub(crate) fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
        v4 => v4,
    }
}

/// Per-node sign-in state (throttles) and the dummy hash that makes unknown users cost as much
/// as known ones.
pub struct SignIns {
    /// Argon2id hash of a random password nobody knows, with the same parameters as real ones.
    pub(crate) dummy: OnceLock<String>,
    pub(crate) by_address: Window<IpAddr>,
    pub(crate) by_account: Window<String>,
    /// Number of Argon2 verifications run by sign-ins (tests check that every failure path
    /// costs one).
    pub password_checks: AtomicU64,
}

impl Default for SignIns {
    fn default() -> Self {
        SignIns {
            dummy: OnceLock::new(),
            by_address: Window::new(LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW_SECS),
            by_account: Window::new(LOGIN_FAILURES_PER_ACCOUNT, LOGIN_WINDOW_SECS),
            password_checks: AtomicU64::new(0),
        }
    }
}

/// Failures per key over a sliding window (in memory, per node: a cluster of n nodes allows
/// n times as many guesses, still few against Argon2id and a 12-character minimum).
pub(crate) struct Window<K> {
    limit: usize,
    window_ms: i64,
    failures: Mutex<HashMap<K, VecDeque<Timestamp>>>,
}

const MAX_TRACKED: usize = 100_000;

impl<K: std::hash::Hash + Eq + Clone> Window<K> {
    fn new(limit: usize, window_secs: i64) -> Self {
        Window {
            limit,
            window_ms: window_secs * 1000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn prune(&self, q: &mut VecDeque<Timestamp>, now: Timestamp) {
        while q
            .front()
            .is_some_and(|t| t.millis() <= now.millis() - self.window_ms)
        {
            q.pop_front();
        }
    }

    /// `Some(seconds to wait)` when `key` has used up its failures.
    pub(crate) fn blocked(&self, key: &K, now: Timestamp) -> Option<i64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(key)?;
        self.prune(q, now);
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            Some(((oldest.millis() + self.window_ms - now.millis()) / 1000).max(1))
        } else {
            None
        }
    }

    pub(crate) fn fail(&self, key: K, now: Timestamp) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            let cutoff = now.millis() - self.window_ms;
            map.retain(|_, q| q.back().is_some_and(|t| t.millis() > cutoff));
        }
        let q = map.entry(key).or_default();
        self.prune(q, now);
        q.push_back(now);
        while q.len() > self.limit {
            q.pop_front();
        }
    }
}

/// Counts failed management authentications per address over a sliding window.
pub(crate) struct AuthThrottle {
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

    pub(crate) fn new(limit: u32, window_secs: i64) -> Self {
        AuthThrottle {
            limit: limit as usize,
            window_ms: window_secs * 1000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one failure; `Some(retry_after_secs)` when this address is over the limit.
    pub(crate) fn fail(&self, ip: IpAddr, now: Timestamp) -> Option<i64> {
        let ip = client_block(ip);
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

// ---------------------------------------------------------------- leak reports

/// How long a key's report stands for the next ones: a report of the same key within this
/// time (on this node) records nothing more.
const REPORT_WINDOW_MS: i64 = 3_600_000;
/// Keys remembered for [`REPORT_WINDOW_MS`] at most (then the oldest are forgotten).
const MAX_REMEMBERED: usize = 100_000;
/// Reports handled at once on this node; more are dropped (the answer is 202 either way).
const MAX_IN_FLIGHT: usize = 64;

/// This node's bounds on leak reports: how many are handled at once, and which keys were
/// reported lately (so one public key reported in a loop costs one audit event an hour, not
/// one a request).
pub(crate) struct LeakGate {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    recent: std::sync::Mutex<std::collections::HashMap<keyward_core::keyformat::KeyHash, i64>>,
}

impl Default for LeakGate {
    fn default() -> Self {
        LeakGate {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            recent: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl LeakGate {
    /// A place for one more report, or `None` when [`MAX_IN_FLIGHT`] are being handled.
    pub(crate) fn try_start(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Whether `hash` was reported within the window; records it as reported now if not.
    pub(crate) fn seen(
        &self,
        hash: &keyward_core::keyformat::KeyHash,
        now: keyward_core::time::Timestamp,
    ) -> bool {
        let mut m = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = now.millis();
        if m.get(hash).is_some_and(|t| now - t < REPORT_WINDOW_MS) {
            return true;
        }
        if m.len() >= MAX_REMEMBERED {
            m.retain(|_, t| now - *t < REPORT_WINDOW_MS);
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
        }
        m.insert(*hash, now);
        false
    }

    /// Forgets a report that was not recorded after all (its transaction failed).
    pub(crate) fn forget(&self, hash: &keyward_core::keyformat::KeyHash) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_block(a), client_block(b));
        assert_ne!(client_block(a), client_block(c));
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(
            client_block(mapped),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

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

    #[test]
    fn the_throttle_blocks_after_the_limit_and_forgets_after_the_window() {
        let w = Window::new(3, 60);
        let t0 = Timestamp::from_millis(1_000_000);
        for _ in 0..3 {
            assert!(w.blocked(&"a".to_string(), t0).is_none());
            w.fail("a".to_string(), t0);
        }
        assert_eq!(w.blocked(&"a".to_string(), t0), Some(60));
        assert!(w.blocked(&"b".to_string(), t0).is_none());
        assert!(w.blocked(&"a".to_string(), t0.plus_secs(61)).is_none());
    }
}

//! The verification decision: which code a request gets, as pure functions of the key's cached
//! state, the request and `now`. Checks run in the order the API contract
//! gives (the OpenAPI document's `VerifyCode`); a later check consumes
//! nothing when an earlier one fails, and only `VALID` consumes a rate-limit slot and quota.

use std::net::IpAddr;

use serde::Serialize;

use crate::model::RateLimit;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    NotFound,
    Revoked,
    Expired,
    Disabled,
    IpNotAllowed,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
    /// Forward-auth only: no route rule matches and the keyspace denies unmatched requests.
    RouteNotAllowed,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::Valid,
        Code::NotFound,
        Code::Revoked,
        Code::Expired,
        Code::Disabled,
        Code::IpNotAllowed,
        Code::InsufficientScope,
        Code::RateLimited,
        Code::UsageExceeded,
        Code::RouteNotAllowed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::NotFound => "NOT_FOUND",
            Code::Revoked => "REVOKED",
            Code::Expired => "EXPIRED",
            Code::Disabled => "DISABLED",
            Code::IpNotAllowed => "IP_NOT_ALLOWED",
            Code::InsufficientScope => "INSUFFICIENT_SCOPE",
            Code::RateLimited => "RATE_LIMITED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
            Code::RouteNotAllowed => "ROUTE_NOT_ALLOWED",
        }
    }
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }
    pub fn index(self) -> usize {
        self as usize
    }

    /// The HTTP status and message of a denial with this code, as forward-auth, gRPC
    /// ext_authz and the client's middleware answer it (`200` and `""` for `VALID`).
    pub fn denial(self) -> (u16, &'static str) {
        match self {
            Code::Valid => (200, ""),
            Code::NotFound => (401, "the API key is not valid"),
            Code::Revoked => (401, "the API key has been revoked"),
            Code::Expired => (401, "the API key has expired"),
            Code::Disabled => (401, "the API key is disabled"),
            Code::InsufficientScope => (403, "the API key lacks a required scope"),
            Code::IpNotAllowed => (403, "the API key may not be used from this address"),
            Code::RateLimited => (429, "the API key's rate limit is exhausted"),
            Code::UsageExceeded => (429, "the API key's usage quota is exhausted"),
            Code::RouteNotAllowed => (
                403,
                "no route rule of the key's keyspace allows this request",
            ),
        }
    }
}

/// The parts of a key that the static checks read.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    pub revoked: bool,
    pub expires_at: Option<Timestamp>,
    pub enabled: bool,
    /// `None`: any address. `Some(empty)`: no address.
    pub allowed: Option<&'a [ipnet::IpNet]>,
}

/// Checks that need no mutable state: `REVOKED` .. `INSUFFICIENT_SCOPE`.
pub fn check_rules<'a>(
    rules: &Rules<'_>,
    key_scopes: impl Iterator<Item = &'a str> + Clone,
    requested_scopes: &[String],
    ip: Option<IpAddr>,
    now: Timestamp,
) -> Result<(), Code> {
    if rules.revoked {
        return Err(Code::Revoked);
    }
    if rules.expires_at.is_some_and(|e| e <= now) {
        return Err(Code::Expired);
    }
    if !rules.enabled {
        return Err(Code::Disabled);
    }
    if let Some(allowed) = rules.allowed {
        match ip {
            Some(ip) if allowed.iter().any(|n| n.contains(&ip)) => {}
            _ => return Err(Code::IpNotAllowed),
        }
    }
    if !crate::scope::all_granted_by(key_scopes, requested_scopes) {
        return Err(Code::InsufficientScope);
    }
    Ok(())
}

/// A fixed rate-limit window, aligned to multiples of `window_secs` since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub count: i64,
}

/// One rate limit as the verifier holds it (of a key, or of its identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub name: Box<str>,
    pub limit: i64,
    pub window_ms: i64,
}

impl Limit {
    pub fn new(l: &crate::limits::NamedLimit) -> Self {
        Limit {
            name: l.name.as_str().into(),
            limit: l.limit,
            window_ms: l.window_secs.saturating_mul(1000).max(1),
        }
    }

    /// The start of the window `now` lies in.
    pub fn window_start(&self, now: Timestamp) -> i64 {
        now.millis().div_euclid(self.window_ms) * self.window_ms
    }
}

/// What a valid verification reports about the rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateState {
    pub limit: i64,
    pub remaining: i64,
    pub reset_at: Timestamp,
}

/// `RATE_LIMITED` and `USAGE_EXCEEDED`, then consumption. `remaining` is the quota (None:
/// unlimited). On success returns the rate-limit state after consumption; on `RATE_LIMITED` the
/// error carries the end of the window (for `Retry-After`).
pub fn check_and_consume(
    ratelimit: Option<RateLimit>,
    window: &mut Window,
    remaining: &mut Option<i64>,
    cost: i64,
    now: Timestamp,
) -> Result<Option<RateState>, (Code, Option<Timestamp>)> {
    let mut reset_at = None;
    if let Some(rl) = ratelimit {
        let len = rl.window_secs * 1000;
        let start = now.millis().div_euclid(len) * len;
        if window.start_ms != start {
            *window = Window {
                start_ms: start,
                count: 0,
            };
        }
        let reset = Timestamp::from_millis(start + len);
        if window.count >= rl.limit {
            return Err((Code::RateLimited, Some(reset)));
        }
        reset_at = Some(reset);
    }
    if let Some(r) = *remaining {
        if r < cost {
            return Err((Code::UsageExceeded, None));
        }
    }
    if let Some(r) = remaining.as_mut() {
        *r -= cost;
    }
    Ok(match (ratelimit, reset_at) {
        (Some(rl), Some(reset_at)) => {
            window.count += 1;
            Some(RateState {
                limit: rl.limit,
                remaining: rl.limit - window.count,
                reset_at,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPES: [&str; 1] = ["orders:*"];

    fn rules<'a>() -> Rules<'a> {
        Rules {
            revoked: false,
            expires_at: None,
            enabled: true,
            allowed: None,
        }
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let now = Timestamp::from_millis(10_000);
        let mut r = rules();
        r.revoked = true;
        r.expires_at = Some(now);
        r.enabled = false;
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &[], None, now),
            Err(Code::Revoked)
        );
        r.revoked = false;
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &[], None, now),
            Err(Code::Expired)
        );
        r.expires_at = None;
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &[], None, now),
            Err(Code::Disabled)
        );
        r.enabled = true;
        let nets = ["10.0.0.0/8".parse().unwrap()];
        r.allowed = Some(&nets);
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &["x".into()], None, now),
            Err(Code::IpNotAllowed)
        );
        let ip = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &["x".into()], ip, now),
            Err(Code::InsufficientScope)
        );
        assert_eq!(
            check_rules(&r, SCOPES.iter().copied(), &["orders:read".into()], ip, now),
            Ok(())
        );
    }

    #[test]
    fn rate_limit_is_checked_before_quota_and_denials_consume_nothing() {
        let now = Timestamp::from_millis(60_500);
        let rl = Some(RateLimit {
            limit: 2,
            window_secs: 60,
        });
        let mut w = Window::default();
        let mut rem = Some(1);
        let s = check_and_consume(rl, &mut w, &mut rem, 1, now)
            .unwrap()
            .unwrap();
        assert_eq!((s.remaining, s.reset_at.millis()), (1, 120_000));
        assert_eq!(rem, Some(0));
        assert_eq!(
            check_and_consume(rl, &mut w, &mut rem, 1, now)
                .unwrap_err()
                .0,
            Code::UsageExceeded
        );
        assert_eq!(w.count, 1, "a denial takes no rate-limit slot");
        assert!(
            check_and_consume(rl, &mut w, &mut rem, 0, now).is_ok(),
            "cost 0 with remaining 0 is valid"
        );
        assert_eq!(
            check_and_consume(rl, &mut w, &mut rem, 0, now)
                .unwrap_err()
                .0,
            Code::RateLimited
        );
        let next = Timestamp::from_millis(120_000);
        assert!(
            check_and_consume(rl, &mut w, &mut rem, 0, next).is_ok(),
            "a new window starts fresh"
        );
    }
}

//! What a key or an identity may spend: named rate limits ([`NamedLimit`], several fixed
//! windows that must all allow a verification) and the refill of a quota ([`Refill`]: daily,
//! monthly or every so many seconds), with the rules of the API contract as pure functions.
//!
//! - A key's `ratelimit` is shorthand for the limit named [`DEFAULT_LIMIT`]: a key holds the
//!   whole list in `ratelimits` and mirrors that one in `ratelimit` (`Key::set_ratelimits`).
//! - A refill period starts at 00:00 UTC (`daily`), at 00:00 UTC on the 1st (`monthly`), or at
//!   the time the refill was set plus a multiple of its seconds; the refill sets `remaining` to
//!   `amount` at the start of each period.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::invalid::Invalid;
use crate::time::Timestamp;

/// One rate limit: at most `limit` valid verifications per fixed window of `window_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub limit: i64,
    pub window_secs: i64,
}

impl RateLimit {
    pub fn check(&self) -> Result<(), Invalid> {
        if !(1..=1_000_000_000).contains(&self.limit) {
            return Err("ratelimit.limit must be an integer in 1..1000000000".into());
        }
        if !(1..=31_536_000).contains(&self.window_secs) {
            return Err("ratelimit.window_secs must be an integer in 1..31536000".into());
        }
        Ok(())
    }
}

/// At most this many named limits on a key, and on an identity.
pub const MAX_RATELIMITS: usize = 8;
/// The name `ratelimit` (the one-limit shorthand) stands for.
pub const DEFAULT_LIMIT: &str = "default";
const MAX_LIMIT_NAME: usize = 32;

/// One named rate limit: at most `limit` valid verifications per fixed window of
/// `window_secs` (aligned to multiples of it since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedLimit {
    pub name: String,
    pub limit: i64,
    pub window_secs: i64,
}

impl NamedLimit {
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            limit: self.limit,
            window_secs: self.window_secs,
        }
    }
}

/// Checks a list of limits given as `field`: at most [`MAX_RATELIMITS`], names of 1..32
/// characters `[A-Za-z0-9_.-]`, unique, each limit and window in range. The error names the
/// member (`ratelimits[2].window_secs`).
pub fn check_ratelimits(list: &[NamedLimit], field: &str) -> Result<(), Invalid> {
    if list.len() > MAX_RATELIMITS {
        return Err(format!("{field} holds at most {MAX_RATELIMITS} limits").into());
    }
    for (i, l) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name_ok = !l.name.is_empty()
            && l.name.len() <= MAX_LIMIT_NAME
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(format!(
                "{at}.name must be 1..{MAX_LIMIT_NAME} characters of letters, digits, '_', '.', '-'"
            )
            .into());
        }
        if list[..i].iter().any(|o| o.name == l.name) {
            return Err(format!("{at}.name '{}' is given twice", l.name).into());
        }
        l.rate()
            .check()
            .map_err(|e| Invalid::from(e.message().replacen("ratelimit.", &format!("{at}."), 1)))?;
    }
    Ok(())
}

/// `ratelimit` as the list it stands for.
pub fn from_shorthand(r: Option<RateLimit>) -> Vec<NamedLimit> {
    r.map(|r| NamedLimit {
        name: DEFAULT_LIMIT.into(),
        limit: r.limit,
        window_secs: r.window_secs,
    })
    .into_iter()
    .collect()
}

/// Whether `ratelimit` says all there is of the list (none, or only [`DEFAULT_LIMIT`]).
pub fn only_shorthand(list: &[NamedLimit]) -> bool {
    list.iter().all(|l| l.name == DEFAULT_LIMIT)
}

/// The limit `ratelimit` shows: the one named [`DEFAULT_LIMIT`].
pub fn shorthand(list: &[NamedLimit]) -> Option<RateLimit> {
    list.iter()
        .find(|l| l.name == DEFAULT_LIMIT)
        .map(NamedLimit::rate)
}

/// How often a quota is refilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    /// At 00:00 UTC.
    Daily,
    /// At 00:00 UTC on the 1st of each month.
    Monthly,
    /// Every so many seconds, counted from when the refill was set.
    Secs(i64),
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Interval::Daily => s.serialize_str("daily"),
            Interval::Monthly => s.serialize_str("monthly"),
            Interval::Secs(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Secs(i64),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "refill.interval must be \"daily\", \"monthly\" or a number of seconds",
            )
        })? {
            Raw::Name(n) if n == "daily" => Ok(Interval::Daily),
            Raw::Name(n) if n == "monthly" => Ok(Interval::Monthly),
            Raw::Name(_) => Err(serde::de::Error::custom(
                "refill.interval must be \"daily\", \"monthly\" or a number of seconds",
            )),
            Raw::Secs(n) => Ok(Interval::Secs(n)),
        }
    }
}

/// A quota's refill: at the start of each period `remaining` is set to `amount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub amount: i64,
    pub interval: Interval,
}

const DAY_MS: i64 = 86_400_000;
/// Longest interval in seconds (a year, as a rate-limit window).
const MAX_INTERVAL_SECS: i64 = 31_536_000;

impl Refill {
    pub fn check(&self) -> Result<(), Invalid> {
        if !(0..=1_000_000_000_000).contains(&self.amount) {
            return Err("refill.amount must be an integer in 0..1000000000000".into());
        }
        if let Interval::Secs(n) = self.interval {
            if !(1..=MAX_INTERVAL_SECS).contains(&n) {
                return Err(format!(
                    "refill.interval must be \"daily\", \"monthly\" or seconds in 1..{MAX_INTERVAL_SECS}"
                )
                .into());
            }
        }
        Ok(())
    }

    /// The start of the period `now` lies in; `anchor` is when the refill was set (the origin
    /// of an interval in seconds).
    pub fn period_start(&self, anchor: Timestamp, now: Timestamp) -> Timestamp {
        let t = now.millis();
        Timestamp::from_millis(match self.interval {
            Interval::Daily => t.div_euclid(DAY_MS) * DAY_MS,
            Interval::Monthly => {
                let (y, m, _) = civil_from_days(t.div_euclid(DAY_MS));
                days_from_civil(y, m, 1) * DAY_MS
            }
            Interval::Secs(n) => {
                let len = n.clamp(1, MAX_INTERVAL_SECS) * 1000;
                let a = anchor.millis();
                a + (t - a).div_euclid(len) * len
            }
        })
    }

    /// The start of the period after the one starting at `start`.
    pub fn next_period(&self, start: Timestamp) -> Timestamp {
        let t = start.millis();
        Timestamp::from_millis(match self.interval {
            Interval::Daily => t + DAY_MS,
            Interval::Monthly => {
                let (y, m, _) = civil_from_days(t.div_euclid(DAY_MS));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY_MS
            }
            Interval::Secs(n) => t + n.clamp(1, MAX_INTERVAL_SECS) * 1000,
        })
    }
}

/// When a refill period began since the quota was last refilled (`refilled_at`): the amount it
/// now holds and the period's start. `anchor`: when the refill was set (else `refilled_at`).
pub fn refill_due(
    refill: Option<Refill>,
    anchor: Option<Timestamp>,
    refilled_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<(i64, Timestamp)> {
    let refill = refill?;
    let start = refill.period_start(anchor.or(refilled_at).unwrap_or(now), now);
    if refilled_at.is_some_and(|r| r >= start) {
        return None;
    }
    Some((refill.amount, start))
}

/// (year, month 1..12, day 1..31) of a day counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day counted from 1970-01-01 of a (year, month, day).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn periods_start_where_the_contract_says() {
        let monthly = Refill {
            amount: 5,
            interval: Interval::Monthly,
        };
        let a = at("2026-01-15T08:00:00Z");
        for (now, start, next) in [
            (
                "2026-03-31T23:59:59.999Z",
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
            (
                "2026-04-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
                "2026-05-01T00:00:00Z",
            ),
            (
                "2024-02-29T12:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-03-01T00:00:00Z",
            ),
            (
                "2026-12-31T12:00:00Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
        ] {
            let s = monthly.period_start(a, at(now));
            assert_eq!(s, at(start), "{now}");
            assert_eq!(monthly.next_period(s), at(next), "{now}");
        }
        let daily = Refill {
            amount: 5,
            interval: Interval::Daily,
        };
        assert_eq!(
            daily.period_start(a, at("2026-03-31T23:59:59Z")),
            at("2026-03-31T00:00:00Z")
        );
        let secs = Refill {
            amount: 5,
            interval: Interval::Secs(3600),
        };
        assert_eq!(secs.period_start(a, a), a);
        assert_eq!(
            secs.period_start(a, at("2026-01-15T10:59:59Z")),
            at("2026-01-15T10:00:00Z")
        );
        assert_eq!(secs.next_period(a), at("2026-01-15T09:00:00Z"));
    }

    #[test]
    fn intervals_read_as_names_or_seconds() {
        let r: Refill = serde_json::from_str(r#"{"amount": 1, "interval": "monthly"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.interval, Interval::Monthly);
        let r: Refill = serde_json::from_str(r#"{"amount": 1, "interval": 60}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::to_value(r).unwrap_or_default(),
            serde_json::json!({"amount": 1, "interval": 60})
        );
        for bad in [r#""weekly""#, "0", "-5", "1.5", "null"] {
            let r =
                serde_json::from_str::<Refill>(&format!(r#"{{"amount": 1, "interval": {bad}}}"#))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.check().map_err(|e| e.to_string()));
            assert!(
                r.is_err_and(|e| e.contains("refill.interval")),
                "{bad} is refused naming the field"
            );
        }
    }

    #[test]
    fn limit_lists_are_checked_naming_the_member() {
        let l = |name: &str, limit, window_secs| NamedLimit {
            name: name.into(),
            limit,
            window_secs,
        };
        assert!(check_ratelimits(
            &[l("burst", 10, 1), l("daily", 10_000, 86_400)],
            "ratelimits"
        )
        .is_ok());
        let err = |list: &[NamedLimit]| {
            check_ratelimits(list, "ratelimits")
                .map_err(|e| e.to_string())
                .unwrap_err()
        };
        assert!(err(&vec![l("a", 1, 1); 9]).contains("at most 8"));
        assert!(err(&[l("a", 1, 1), l("b", 1, 0)]).contains("ratelimits[1].window_secs"));
        assert!(err(&[l("a", 0, 1)]).contains("ratelimits[0].limit"));
        assert!(err(&[l("a b", 1, 1)]).contains("ratelimits[0].name"));
        assert!(err(&[l("a", 1, 1), l("a", 2, 2)]).contains("twice"));
        assert_eq!(
            shorthand(&from_shorthand(Some(RateLimit {
                limit: 3,
                window_secs: 9
            }))),
            Some(RateLimit {
                limit: 3,
                window_secs: 9
            })
        );
    }
}

//! Time as a parameter: [`Timestamp`] (milliseconds since the Unix epoch, UTC) and the [`Clock`]
//! every policy, sweep and verification reads `now` from. Tests use [`ManualClock`].

use crate::invalid::Invalid;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Latest instant we accept (year 9999), so arithmetic never overflows.
const MAX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// `self + secs` seconds, saturating at the latest representable instant.
    pub fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)).min(MAX_MS))
    }
    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms).min(MAX_MS))
    }

    /// Parses an RFC 3339 time. Any offset is accepted and converted to UTC; precision beyond
    /// milliseconds is truncated.
    pub fn parse_rfc3339(s: &str) -> Result<Self, Invalid> {
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|_| format!("'{}' is not an RFC 3339 time", crate::keyformat::shown(s)))?;
        let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| "time out of range".to_string())?;
        if !(0..=MAX_MS).contains(&ms) {
            return Err("time out of range (1970..9999)".into());
        }
        Ok(Self(ms))
    }

    /// RFC 3339 in UTC with a `Z` suffix; fractional seconds only when they are not zero.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
        let (h, mi, s) = (t.hour(), t.minute(), t.second());
        if ms == 0 {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Where `now` comes from. The server holds one; tests hand it a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The real clock. The one place that reads the system time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// The system clock read by a background thread every millisecond, so that `now()` on the
/// verification path is one atomic load instead of a system call (decisions have millisecond
/// precision anyway). Clones share the same thread.
#[derive(Clone, Debug)]
pub struct CoarseClock(Arc<AtomicI64>);

impl CoarseClock {
    /// Starts the ticking thread (it lives as long as the process).
    pub fn start() -> Self {
        let now = Arc::new(AtomicI64::new(SystemClock.now().0));
        let tick = now.clone();
        let spawned = std::thread::Builder::new()
            .name("keyward-clock".into())
            .spawn(move || loop {
                tick.store(SystemClock.now().0, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
        if spawned.is_err() {
            // Without the thread the clock would stand still: refuse to run on it.
            #[allow(clippy::panic)]
            {
                panic!("could not start the clock thread");
            }
        }
        CoarseClock(now)
    }
}

impl Clock for CoarseClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::Relaxed))
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.0)))
    }
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1000, Ordering::SeqCst);
    }
    pub fn advance_millis(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_without_a_fraction_and_round_trips() {
        let t = Timestamp::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2027-01-01T00:00:00Z");
        let t = Timestamp::parse_rfc3339("2027-01-01T01:00:00.250+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2027-01-01T00:00:00.250Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range_times() {
        assert!(Timestamp::parse_rfc3339("tomorrow").is_err());
        assert!(Timestamp::parse_rfc3339("1960-01-01T00:00:00Z").is_err());
    }
}

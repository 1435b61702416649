//! Server settings: the flags of `keyward serve` and their `KEYWARD_*` environment variables,
//! parsed once at start into the types the server uses (durations as [`Duration`], never zero;
//! the Redis address as a [`RedisUrl`]), so a bad value is refused with a clear message before
//! anything starts. The attributes below are the one place a default is written:
//! [`Config::default`] reads them from clap.

use std::time::Duration;

use clap::{Args, FromArgMatches};

/// Settings of one node.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Milliseconds between usage writes (counts, quota, last use).
    #[arg(long = "usage-flush-ms", env = "KEYWARD_USAGE_FLUSH_MS", default_value = "1000", value_parser = millis)]
    pub usage_flush: Duration,
    /// Seconds between expiry, inactivity, warning, roll-up and anomaly sweeps.
    #[arg(long = "sweep-interval-secs", env = "KEYWARD_SWEEP_INTERVAL_SECS", default_value = "60", value_parser = secs)]
    pub sweep_interval: Duration,
    /// Require a verifier or admin token for verification.
    #[arg(long, env = "KEYWARD_VERIFY_REQUIRES_TOKEN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub verify_requires_token: bool,
    /// Take the client address from the first X-Forwarded-For entry (behind a trusted proxy).
    #[arg(long, env = "KEYWARD_TRUST_PROXY_HEADERS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy_headers: bool,
    /// Redis for cluster-wide rate limits: `redis://[:password@]host[:port][/db]`.
    #[arg(long, env = "KEYWARD_REDIS_URL", hide_env_values = true, value_parser = RedisUrlParser)]
    pub redis_url: Option<RedisUrl>,
    /// A valid use after this many seconds without one is a `dormant_reactivated` anomaly.
    #[arg(long = "dormant-secs", env = "KEYWARD_DORMANT_SECS", default_value = "2592000", value_parser = secs)]
    pub dormant_after: Duration,
    /// First webhook retry delay in milliseconds; each next one doubles (at most 1 h apart, for 24 h).
    #[arg(long = "webhook-retry-base-ms", env = "KEYWARD_WEBHOOK_RETRY_BASE_MS", default_value = "1000", value_parser = millis)]
    pub webhook_retry_base: Duration,
    /// Let webhooks call loopback, private and shared (CGNAT) addresses: receivers next to
    /// keyward. Set `false` where every receiver is public, so a webhook cannot reach internal
    /// services. Link-local (cloud metadata), unspecified, multicast and reserved addresses are
    /// refused either way.
    #[arg(long, env = "KEYWARD_WEBHOOK_ALLOW_PRIVATE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private: bool,
    /// How long one webhook attempt may take (milliseconds, connecting included).
    #[arg(long = "webhook-timeout-ms", env = "KEYWARD_WEBHOOK_TIMEOUT_MS", default_value = "10000", value_parser = header_timeout)]
    pub webhook_timeout: Duration,
    /// How long minute usage buckets are kept, in seconds.
    #[arg(long = "usage-retention-minute-secs", env = "KEYWARD_USAGE_RETENTION_MINUTE_SECS", default_value = "604800", value_parser = secs)]
    pub retention_minute: Duration,
    /// How long hour usage buckets are kept, in seconds.
    #[arg(long = "usage-retention-hour-secs", env = "KEYWARD_USAGE_RETENTION_HOUR_SECS", default_value = "7776000", value_parser = secs)]
    pub retention_hour: Duration,
    /// How long day usage buckets are kept, in seconds.
    #[arg(long = "usage-retention-day-secs", env = "KEYWARD_USAGE_RETENTION_DAY_SECS", default_value = "63072000", value_parser = secs)]
    pub retention_day: Duration,
    /// Count verifications (usage, last use, anomalies). Turn off only to measure its cost.
    #[arg(long, env = "KEYWARD_USAGE_COUNTING", default_value_t = true, action = clap::ArgAction::Set)]
    pub usage_counting: bool,
    /// Close a connection whose request head has not arrived this long (milliseconds, at most
    /// one hour) after the server began waiting for it: slow or idle clients.
    #[arg(long = "header-read-timeout-ms", env = "KEYWARD_HEADER_READ_TIMEOUT_MS", default_value = "30000", value_parser = header_timeout)]
    pub header_read_timeout: Duration,
    /// A management call (any API route but verification, forward-auth and the operational
    /// endpoints) that has not produced its answer this long (milliseconds, at most one hour)
    /// is stopped and answered 503 `UNAVAILABLE`; its transaction is rolled back.
    #[arg(long = "request-timeout-ms", env = "KEYWARD_REQUEST_TIMEOUT_MS", default_value = "30000", value_parser = header_timeout)]
    pub request_timeout: Duration,
    /// Answer 408 and close the connection when a request's body has not fully arrived this
    /// long (milliseconds, at most one hour) after its head: a total deadline, however slowly
    /// the bytes trickle in.
    #[arg(long = "body-read-timeout-ms", env = "KEYWARD_BODY_READ_TIMEOUT_MS", default_value = "30000", value_parser = header_timeout)]
    pub body_read_timeout: Duration,
    /// Open connections at most; one more is accepted and closed at once. Default: the
    /// process's file-descriptor limit less 128 kept for the store, Redis and webhooks.
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Serve Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) on this
    /// address (plaintext HTTP/2), e.g. 127.0.0.1:9191. Off when unset.
    #[arg(long, env = "KEYWARD_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`); both files are read
    /// again on SIGHUP.
    #[arg(long, env = "KEYWARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KEYWARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Where GitHub's secret-scanning public keys are read from (`POST
    /// /v1/integrations/github/secret-scanning` checks each payload's signature with them).
    #[arg(
        long,
        env = "KEYWARD_GITHUB_KEYS_URL",
        default_value = "https://api.github.com/meta/public_keys/secret_scanning"
    )]
    pub github_keys_url: String,
    /// Read GitHub's secret-scanning public keys from this file instead (the JSON of the URL
    /// above), for installations that cannot reach GitHub.
    #[arg(long, env = "KEYWARD_GITHUB_KEYS_FILE")]
    pub github_keys_file: Option<std::path::PathBuf>,
    /// Failed management authentications per address per minute before 429 (tests raise it).
    #[arg(long, hide = true, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failure_limit: u32,
    /// Milliseconds between polls of the change feed for changes made by other nodes (PostgreSQL
    /// also wakes the node at once through LISTEN/NOTIFY).
    #[arg(long = "feed-poll-ms", hide = true, default_value = "250", value_parser = millis)]
    pub feed_poll: Duration,
    /// Milliseconds between looks for due webhook deliveries (new events also wake the worker);
    /// 0: this node runs no delivery worker (tests that deliver by hand, with nothing racing them).
    #[arg(long = "webhook-poll-ms", hide = true, default_value = "1000", value_parser = millis)]
    pub webhook_poll: Duration,
    /// Keys from which the dashboard overview's counts, when they take 50 ms or more, are kept
    /// for up to a minute instead of taken at every view; 0: every count is kept (tests).
    #[arg(
        long = "overview-kept-from-keys",
        hide = true,
        default_value_t = 10_000
    )]
    pub overview_kept_from: u64,
    /// Keys a usage flush writes per transaction at most (tests lower it to flush in several).
    #[arg(
        long = "usage-flush-batch-keys",
        hide = true,
        default_value_t = USAGE_FLUSH_BATCH,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub usage_flush_batch: u32,
}

/// Keys a usage flush writes per transaction by default (`--usage-flush-batch-keys`): bounds
/// the memory and the transaction of a flush when many keys were used since the last one. A
/// transaction writes each page of the counters and minute buckets it touches once, however
/// many of its keys share the page: with a million keys used a minute, one flush's 50,000 keys
/// in one transaction cost SQLite about half the CPU of ten transactions of 5,000
/// (docs/decisions.md, "The usage pipeline at scale").
pub const USAGE_FLUSH_BATCH: u32 = 50_000;

impl Default for Config {
    /// The defaults of the attributes above (environment variables are not read).
    fn default() -> Self {
        let cmd = Config::augment_args(clap::Command::new("keyward-serve"))
            .mut_args(|a| a.env(None::<&str>));
        let parsed = cmd
            .try_get_matches_from(["keyward-serve"])
            .map_err(|e| e.to_string())
            .and_then(|m| Config::from_arg_matches(&m).map_err(|e| e.to_string()));
        match parsed {
            Ok(c) => c,
            // Only a wrong attribute above can get here; the unit test below parses them.
            Err(e) => panic!("the defaults of Config do not parse: {e}"),
        }
    }
}

impl Config {
    /// `max_connections`, or the default sized to the file-descriptor limit.
    pub fn connection_cap(&self) -> usize {
        match self.max_connections {
            Some(n) => n as usize,
            None => descriptor_limit().saturating_sub(128).max(64),
        }
    }

    /// How long each granularity's usage buckets are kept: minute, hour, day.
    pub fn retention(&self) -> [Duration; 3] {
        [
            self.retention_minute,
            self.retention_hour,
            self.retention_day,
        ]
    }
}

/// The soft limit on open file descriptors, from `/proc/self/limits` (1024 where it cannot be
/// read, the usual soft limit).
fn descriptor_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// The longest duration a setting takes (100 years): far beyond any use, and it keeps every
/// computation on milliseconds within `i64`.
const MAX_SECS: u64 = 100 * 365 * 86_400;

fn positive(s: &str, unit: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err(format!("must be a positive whole number of {unit}, not 0")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("must be a positive whole number of {unit}")),
    }
}

fn millis(s: &str) -> Result<Duration, String> {
    let n = positive(s, "milliseconds")?;
    if n > MAX_SECS * 1000 {
        return Err(format!("must be at most {} milliseconds", MAX_SECS * 1000));
    }
    Ok(Duration::from_millis(n))
}

fn secs(s: &str) -> Result<Duration, String> {
    let n = positive(s, "seconds")?;
    if n > MAX_SECS {
        return Err(format!("must be at most {MAX_SECS} seconds"));
    }
    Ok(Duration::from_secs(n))
}

fn header_timeout(s: &str) -> Result<Duration, String> {
    let d = millis(s)?;
    if d > Duration::from_secs(3600) {
        return Err("must be at most 3600000 milliseconds (one hour)".into());
    }
    Ok(d)
}

/// Parses `--redis-url` with an error that does not repeat the value (clap's own messages
/// quote it, and the URL may hold a password).
#[derive(Clone)]
struct RedisUrlParser;

impl clap::builder::TypedValueParser for RedisUrlParser {
    type Value = RedisUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<RedisUrl, clap::Error> {
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                "KEYWARD_REDIS_URL (--redis-url) is not valid UTF-8\n",
            )
        })?;
        RedisUrl::parse(text).map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("KEYWARD_REDIS_URL (--redis-url) is not usable: {why}\n"),
            )
        })
    }
}

/// A Redis address, checked when the settings are read: `redis://`, a host, an optional port,
/// password and database number. Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `host:port`.
    pub addr: String,
    pub password: Option<String>,
    pub db: Option<u32>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUrl")
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

impl RedisUrl {
    /// Parses `redis://[[user]:password@]host[:port][/db]`; the message never repeats the
    /// input (it may hold a password).
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        if !s.contains("://") {
            return Err("it must start with redis://, e.g. redis://127.0.0.1:6379".into());
        }
        let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "redis" {
            return Err(format!(
                "the scheme must be redis:// (got {}://; TLS is not supported)",
                url.scheme()
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("a host is required, e.g. redis://127.0.0.1:6379")?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a query or fragment is not supported".into());
        }
        let db = match url.path().trim_start_matches('/') {
            "" => None,
            d => Some(
                d.parse::<u32>()
                    .map_err(|_| "the path must be a database number, e.g. /0")?,
            ),
        };
        let password = url.password().map(str::to_string).or_else(|| {
            // redis://secret@host: a lone user part is the password, as redis-cli reads it.
            (!url.username().is_empty()).then(|| url.username().to_string())
        });
        Ok(RedisUrl {
            addr: format!("{host}:{}", url.port().unwrap_or(6379)),
            password,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_those_of_the_flags() {
        let c = Config::default();
        assert_eq!(c.usage_flush, Duration::from_secs(1));
        assert_eq!(c.sweep_interval, Duration::from_secs(60));
        assert_eq!(c.dormant_after, Duration::from_secs(30 * 86_400));
        assert_eq!(
            c.retention(),
            [7, 90, 730].map(|d| Duration::from_secs(d * 86_400))
        );
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.auth_failure_limit, 20);
        assert!(c.usage_counting && !c.verify_requires_token && c.redis_url.is_none());
    }

    #[test]
    fn zero_and_garbage_durations_are_refused() {
        assert!(millis("0").is_err());
        assert!(millis("-5").is_err());
        assert!(secs("1.5").is_err());
        assert!(header_timeout("3600001").is_err());
        assert_eq!(secs("7"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn redis_urls_are_checked_and_their_passwords_never_print() {
        let u = RedisUrl::parse("redis://:s3cret@cache.internal/2").unwrap();
        assert_eq!(u.addr, "cache.internal:6379");
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.db, Some(2));
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1:6380").unwrap().addr,
            "127.0.0.1:6380"
        );
        for bad in [
            "localhost:6379",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://127.0.0.1:6379/x",
            "redis://127.0.0.1:99999",
            "rediss://127.0.0.1",
        ] {
            let e = RedisUrl::parse(bad).expect_err(bad);
            assert!(!e.contains("s3cret"));
        }
    }
}

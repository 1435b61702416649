//! Server settings (the binary fills them from flags and `KEYWARD_*` environment variables).

#[derive(Clone, Debug)]
pub struct Config {
    /// How often counted usage is written (`KEYWARD_USAGE_FLUSH_MS`).
    pub usage_flush_ms: u64,
    /// How often the sweeps run (`KEYWARD_SWEEP_INTERVAL_SECS`).
    pub sweep_interval_secs: u64,
    /// `KEYWARD_VERIFY_REQUIRES_TOKEN`: verification needs a `verifier` or `admin` token.
    pub verify_requires_token: bool,
    /// `KEYWARD_TRUST_PROXY_HEADERS`: take the client address from `X-Forwarded-For`.
    pub trust_proxy_headers: bool,
    /// `KEYWARD_REDIS_URL` (cluster-wide rate limits; not used yet by this node).
    pub redis_url: Option<String>,
    /// Failed management authentications per address per minute before 429.
    pub auth_failure_limit: u32,
    /// How often the change feed is polled for changes made by other nodes.
    pub feed_poll_ms: u64,
    /// `KEYWARD_DORMANT_SECS`: a valid use after this long without one is `dormant_reactivated`.
    pub dormant_after_secs: i64,
    /// `KEYWARD_USAGE_RETENTION_MINUTES_SECS` / `_HOURS_SECS` / `_DAYS_SECS`: how long minute,
    /// hour and day buckets are kept.
    pub retention_secs: [i64; 3],
    /// `KEYWARD_WEBHOOK_RETRY_BASE_MS`: the first retry delay; each next one doubles (capped at
    /// one hour) until 24 h after the event.
    pub webhook_retry_base_ms: i64,
    /// How often the delivery worker looks for due deliveries (it is also woken by new events).
    pub webhook_poll_ms: u64,
    /// `KEYWARD_USAGE_COUNTING`: count verifications (default). Off only to measure its cost.
    pub usage_counting: bool,
    /// `KEYWARD_HEADER_READ_TIMEOUT_MS`: a connection whose request head has not fully arrived
    /// this long after the server started waiting for it (including an idle keep-alive
    /// connection) is closed, so slow clients cannot hold connections open forever.
    pub header_read_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            usage_flush_ms: 1000,
            sweep_interval_secs: 60,
            verify_requires_token: false,
            trust_proxy_headers: false,
            redis_url: None,
            auth_failure_limit: 20,
            feed_poll_ms: 250,
            dormant_after_secs: 30 * 86_400,
            retention_secs: [7 * 86_400, 90 * 86_400, 730 * 86_400],
            webhook_retry_base_ms: 1000,
            webhook_poll_ms: 1000,
            usage_counting: true,
            header_read_timeout_ms: 30_000,
        }
    }
}

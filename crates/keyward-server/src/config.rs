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
        }
    }
}

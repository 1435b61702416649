//! The Rust client of keyward's HTTP API.
//!
//! One typed method per endpoint, speaking the server's own request and answer types (re-exported
//! from `keyward_core`, never copied), errors that carry the API's error code and request id,
//! per-attempt timeouts, and retries with backoff for calls that are safe to repeat. Plaintext
//! keys, tokens and signing secrets are [`Secret`]s: no `Debug` output shows them, the client's
//! own token included.
//!
//! ```no_run
//! # async fn run() -> Result<(), keyward_client::Error> {
//! use keyward_client::{Client, CreateKey, VerifyRequest};
//! let kw = Client::builder("http://127.0.0.1:8080").token("kwt_...").build()?;
//! let created = kw
//!     .create_key(&CreateKey {
//!         keyspace_id: "ks_...".into(),
//!         name: "billing prod".into(),
//!         owner: Some("acme".into()),
//!         ..CreateKey::default()
//!     })
//!     .await?;
//! let answer = kw.verify(&VerifyRequest::new(created.plaintext.expose())).await?;
//! assert!(answer.valid);
//! # Ok(()) }
//! ```
//!
//! With the `tower` feature, [`layer::KeywardLayer`] verifies the API key of every request an
//! axum (or any tower) service receives, and [`layer::VerifiedKey`] hands the verified key to
//! handlers.

mod error;
#[cfg(feature = "tower")]
pub mod layer;
mod query;

use std::time::Duration;

pub use error::Error;
pub use keyward_core::api::{
    ApiError, ApiKey, BulkRevoke, BulkRevoked, CreateIdentity, CreateKey, CreateKeyspace,
    CreateToken, CreateWebhook, CreatedKey, CreatedToken, CreatedWebhook, HashAlgorithm,
    ImportKeys, ImportRecord, Imported, KeyLookupRequest, KeyMatch, LeakReport, Page,
    PatchIdentity, PatchKey, PatchKeyspace, RateLimitState, Revoke, RotateKey, VerifyAnswer,
    VerifyRequest,
};
pub use keyward_core::audit::ChainCheck;
pub use keyward_core::model::{
    Actor, ActorKind, Anomaly, AuditEvent, Identity, Key, KeyStatus, Keyspace, RateLimit, Role,
    Source, Token, Webhook,
};
pub use keyward_core::policy::{Policy, PolicyPatch, Preset};
pub use keyward_core::routes::{RouteRule, Unmatched};
pub use keyward_core::secret::Secret;
pub use keyward_core::time::Timestamp;
pub use keyward_core::verify::Code;
pub use query::{AnomalyQuery, AuditQuery, KeyQuery, PageQuery, UsageQuery};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// How a [`Client`] is set up: see [`Client::builder`].
pub struct ClientBuilder {
    base: String,
    token: Option<Secret>,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl ClientBuilder {
    /// The management (or verifier) token sent as `Authorization: Bearer`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token.into()));
        self
    }
    /// The most one attempt may take, from connecting to the last byte of the answer
    /// (default 10 s). Streamed answers (the audit export, the CSV report) are bounded per read
    /// instead, and the audit chain check gets ten minutes.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// The most a connection may take to open (default 2 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// How many times a call that is safe to repeat is retried (default 2; see
    /// [`Client`] for which calls and failures).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// The first retry's wait (default 100 ms); each retry doubles it, with jitter.
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }
    pub fn build(self) -> Result<Client, Error> {
        let base = self.base.trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        let Some(rest) = rest else {
            return Err(Error::Usage(format!(
                "the server address must start with http:// or https:// (got '{}')",
                keyward_core::keyformat::shown(&base)
            )));
        };
        if rest
            .split('/')
            .next()
            .is_some_and(|host| host.contains('@'))
        {
            // Credentials in the address would show in every error message.
            return Err(Error::Usage(
                "the server address must not hold credentials (user:password@); use a token".into(),
            ));
        }
        let http = reqwest::Client::builder()
            // Each call sets its own total time; this bounds every wait for bytes, so a
            // streamed report that keeps flowing is never cut off, and one that stalls is.
            .read_timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            // The API never redirects; following one would send a key in a body elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Unreachable(format!("cannot set up the HTTP client ({e})")))?;
        Ok(Client {
            base,
            token: self.token,
            http,
            timeout: self.timeout,
            retries: self.retries,
            backoff: self.backoff.min(MAX_WAIT),
        })
    }
}

/// The longest wait between two attempts (and the longest `Retry-After` waited for: a server
/// that asks for more gets the error back instead).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How long a call may take in all: the client's timeout, or none for streamed answers
/// (bounded by the per-read timeout) and the audit check (which reads the whole trail).
#[derive(Clone, Copy)]
enum Total {
    Timeout,
    Long,
    Streamed,
}

/// A client of one keyward server (or of a cluster's load balancer). Cheap to clone: clones
/// share one connection pool.
///
/// **Retries.** A call is retried (up to [`ClientBuilder::retries`] times, with exponential
/// backoff and jitter) when the connection could not be opened, whatever the call, since the
/// server never saw it; and, for reads (`GET`) only, when an attempt timed out or the server
/// answered 502, 503 or 504. Writes and verifications are never repeated after they may have
/// reached the server: a verification counts usage and spends quota.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a path segment (ids are plain, but a typo must not change the path).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A random fraction in 0..1 for backoff jitter (std's per-process random hash keys; no
/// cryptographic use).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Client {
    /// A client of the server at `base` (`http://host:port`, no path).
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            token: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            backoff: Duration::from_millis(100),
        }
    }

    /// The server's address, as given.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one call, retrying as the type's documentation says; the raw answer on 2xx.
    async fn send(
        &self,
        total: Total,
        method: Method,
        path: &str,
        query: Option<&(dyn erased::Query + Sync)>,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<reqwest::Response, Error> {
        let read = method == Method::GET;
        let mut attempt = 0;
        loop {
            let mut r = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path));
            if let Some(t) = &self.token {
                r = r.bearer_auth(t.expose());
            }
            match total {
                Total::Timeout => r = r.timeout(self.timeout),
                Total::Long => r = r.timeout(self.timeout.max(Duration::from_secs(600))),
                Total::Streamed => {}
            }
            if let Some(q) = query {
                r = q.apply(r);
            }
            if let Some(b) = body {
                r = b.apply(r);
            }
            let outcome = match r.send().await {
                Ok(res) if res.status().is_success() => return Ok(res),
                Ok(res) => {
                    let retry = read && matches!(res.status().as_u16(), 502..=504);
                    (Error::from_answer(res).await, retry)
                }
                Err(e) => {
                    let retry = e.is_connect() || (read && e.is_timeout());
                    (Error::transport(&self.base, &e), retry)
                }
            };
            match outcome {
                (err, true) if attempt < self.retries => {
                    let wait = self
                        .backoff
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(MAX_WAIT);
                    let wait = match err.retry_after() {
                        // Asked to wait longer than a call should: the caller decides.
                        Some(ra) if ra > MAX_WAIT => return Err(err),
                        Some(ra) if ra > wait => ra,
                        _ => wait.mul_f64(0.5 + jitter()),
                    };
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                (err, _) => return Err(err),
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&(dyn erased::Query + Sync)>,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<T, Error> {
        let res = self.send(Total::Timeout, method, path, query, body).await?;
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::transport(&self.base, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &(dyn erased::Query + Sync),
    ) -> Result<T, Error> {
        self.call(Method::GET, path, Some(query), None).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(dyn erased::Body + Sync),
    ) -> Result<T, Error> {
        self.call(Method::POST, path, None, Some(body)).await
    }

    /// A `POST` whose answer holds a secret shown once. If the answer cannot be read as `T`
    /// (a newer server, say), the error names what was created so it can be revoked, and
    /// never holds the secret.
    async fn create<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(dyn erased::Body + Sync),
    ) -> Result<T, Error> {
        let v: Value = self.post(path, body).await?;
        T::deserialize(&v).map_err(|e| {
            let id = v["id"].as_str().unwrap_or("unknown");
            Error::Decode(format!(
                "{id} was created, but its answer could not be read ({e}); its secret is lost: revoke it"
            ))
        })
    }

    // ------------------------------------------------------------ data plane

    /// `POST /v1/verify`. A denial is an answer (`valid: false` and its code), not an error;
    /// errors are for calls the server refused (a bad request, a missing verifier token).
    pub async fn verify(&self, req: &VerifyRequest) -> Result<VerifyAnswer, Error> {
        self.post("/v1/verify", &erased::json(req)).await
    }

    /// `GET /healthz`: whether the process answers.
    pub async fn healthy(&self) -> Result<(), Error> {
        self.send(Total::Timeout, Method::GET, "/healthz", None, None)
            .await
            .map(drop)
    }

    /// `GET /readyz`: whether the server reaches its store.
    pub async fn ready(&self) -> Result<(), Error> {
        self.send(Total::Timeout, Method::GET, "/readyz", None, None)
            .await
            .map(drop)
    }

    // ------------------------------------------------------------ keyspaces

    pub async fn create_keyspace(&self, req: &CreateKeyspace) -> Result<Keyspace, Error> {
        self.post("/v1/keyspaces", &erased::json(req)).await
    }
    pub async fn list_keyspaces(&self, q: &PageQuery) -> Result<Page<Keyspace>, Error> {
        self.get("/v1/keyspaces", &erased::query(q)).await
    }
    pub async fn get_keyspace(&self, id: &str) -> Result<Keyspace, Error> {
        self.get(&format!("/v1/keyspaces/{}", seg(id)), &erased::NONE)
            .await
    }
    /// `PATCH /v1/keyspaces/{id}`; `routes`, when given, replaces the rules as a whole.
    pub async fn update_keyspace(&self, id: &str, req: &PatchKeyspace) -> Result<Keyspace, Error> {
        self.call(
            Method::PATCH,
            &format!("/v1/keyspaces/{}", seg(id)),
            None,
            Some(&erased::json(req)),
        )
        .await
    }
    /// `GET /v1/keyspaces/{id}/usage`: the keyspace's totals over a range.
    pub async fn keyspace_usage(&self, id: &str, q: &UsageQuery) -> Result<Value, Error> {
        self.get(
            &format!("/v1/keyspaces/{}/usage", seg(id)),
            &erased::query(q),
        )
        .await
    }

    // ------------------------------------------------------------ keys

    /// `POST /v1/keys`: the key and, this once, its plaintext.
    pub async fn create_key(&self, req: &CreateKey) -> Result<CreatedKey, Error> {
        self.create("/v1/keys", &erased::json(req)).await
    }
    /// `POST /v1/keyspaces/{id}/keys/import`: at most 1,000 records, taken whole or refused
    /// whole. Never retried once sent (a record with `external_id` is skipped when sent again).
    pub async fn import_keys(
        &self,
        keyspace_id: &str,
        req: &ImportKeys,
    ) -> Result<Imported, Error> {
        self.post(
            &format!("/v1/keyspaces/{}/keys/import", seg(keyspace_id)),
            &erased::json(req),
        )
        .await
    }
    pub async fn list_keys(&self, q: &KeyQuery) -> Result<Page<ApiKey>, Error> {
        self.get("/v1/keys", &erased::query(q)).await
    }
    pub async fn get_key(&self, id: &str) -> Result<ApiKey, Error> {
        self.get(&format!("/v1/keys/{}", seg(id)), &erased::NONE)
            .await
    }
    pub async fn update_key(&self, id: &str, req: &PatchKey) -> Result<ApiKey, Error> {
        self.call(
            Method::PATCH,
            &format!("/v1/keys/{}", seg(id)),
            None,
            Some(&erased::json(req)),
        )
        .await
    }
    pub async fn revoke_key(&self, id: &str, reason: &str) -> Result<ApiKey, Error> {
        let body = Revoke {
            reason: reason.into(),
        };
        self.post(
            &format!("/v1/keys/{}/revoke", seg(id)),
            &erased::json(&body),
        )
        .await
    }
    /// `POST /v1/keys/{id}/rotate`: the successor and, this once, its plaintext.
    pub async fn rotate_key(&self, id: &str, req: &RotateKey) -> Result<CreatedKey, Error> {
        self.create(&format!("/v1/keys/{}/rotate", seg(id)), &erased::json(req))
            .await
    }
    /// `POST /v1/keys/revoke`: every live key of an owner.
    pub async fn revoke_owner_keys(&self, req: &BulkRevoke) -> Result<BulkRevoked, Error> {
        self.post("/v1/keys/revoke", &erased::json(req)).await
    }
    /// `GET /v1/keys/{id}/usage`: buckets and totals.
    pub async fn key_usage(&self, id: &str, q: &UsageQuery) -> Result<Value, Error> {
        self.get(&format!("/v1/keys/{}/usage", seg(id)), &erased::query(q))
            .await
    }
    /// `GET /v1/keys/{id}/sources`: the key's recent source addresses.
    pub async fn key_sources(&self, id: &str) -> Result<Vec<Source>, Error> {
        #[derive(serde::Deserialize)]
        struct Sources {
            items: Vec<Source>,
        }
        let s: Sources = self
            .get(&format!("/v1/keys/{}/sources", seg(id)), &erased::NONE)
            .await?;
        Ok(s.items)
    }

    /// `POST /v1/keys/lookup`: which of these SHA-256 hashes (hex) are keys.
    pub async fn lookup_keys(&self, hashes: &[String]) -> Result<Vec<KeyMatch>, Error> {
        #[derive(serde::Deserialize)]
        struct Matches {
            items: Vec<KeyMatch>,
        }
        let req = KeyLookupRequest {
            hashes: hashes.to_vec(),
        };
        let m: Matches = self.post("/v1/keys/lookup", &erased::json(&req)).await?;
        Ok(m.items)
    }

    /// `POST /v1/leaks`: reports a leaked key (no token needed). The server answers the same
    /// whatever the key.
    pub async fn report_leak(&self, report: &LeakReport) -> Result<(), Error> {
        self.send(
            Total::Timeout,
            Method::POST,
            "/v1/leaks",
            None,
            Some(&erased::json(report)),
        )
        .await
        .map(drop)
    }

    // ------------------------------------------------------------ tokens

    /// `POST /v1/tokens`: the token and, this once, its plaintext.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, Error> {
        self.create("/v1/tokens", &erased::json(req)).await
    }
    pub async fn list_tokens(&self, q: &PageQuery) -> Result<Page<Token>, Error> {
        self.get("/v1/tokens", &erased::query(q)).await
    }
    pub async fn revoke_token(&self, id: &str, reason: &str) -> Result<Token, Error> {
        let body = Revoke {
            reason: reason.into(),
        };
        self.post(
            &format!("/v1/tokens/{}/revoke", seg(id)),
            &erased::json(&body),
        )
        .await
    }

    // ------------------------------------------------------------ webhooks

    /// `POST /v1/webhooks`: the webhook and, this once, its signing secret.
    pub async fn create_webhook(&self, req: &CreateWebhook) -> Result<CreatedWebhook, Error> {
        self.create("/v1/webhooks", &erased::json(req)).await
    }
    // ------------------------------------------------------------ identities

    /// `POST /v1/identities`: the owner string `id` as an object.
    pub async fn create_identity(&self, req: &CreateIdentity) -> Result<Identity, Error> {
        self.post("/v1/identities", &erased::json(req)).await
    }
    pub async fn list_identities(&self, q: &PageQuery) -> Result<Page<Identity>, Error> {
        self.get("/v1/identities", &erased::query(q)).await
    }
    pub async fn get_identity(&self, id: &str) -> Result<Identity, Error> {
        self.get(&format!("/v1/identities/{}", seg(id)), &erased::NONE)
            .await
    }
    /// `PATCH /v1/identities/{id}`; `enabled: false` makes every key of it verify `DISABLED`.
    pub async fn update_identity(&self, id: &str, req: &PatchIdentity) -> Result<Identity, Error> {
        self.call(
            Method::PATCH,
            &format!("/v1/identities/{}", seg(id)),
            None,
            Some(&erased::json(req)),
        )
        .await
    }
    pub async fn delete_identity(&self, id: &str) -> Result<(), Error> {
        self.send(
            Total::Timeout,
            Method::DELETE,
            &format!("/v1/identities/{}", seg(id)),
            None,
            None,
        )
        .await
        .map(drop)
    }
    /// `GET /v1/identities/{id}/usage`: its keys' usage, summed (a key usage's shape).
    pub async fn identity_usage(&self, id: &str, q: &UsageQuery) -> Result<Value, Error> {
        self.get(
            &format!("/v1/identities/{}/usage", seg(id)),
            &erased::query(q),
        )
        .await
    }

    pub async fn list_webhooks(&self, q: &PageQuery) -> Result<Page<Webhook>, Error> {
        self.get("/v1/webhooks", &erased::query(q)).await
    }
    pub async fn delete_webhook(&self, id: &str) -> Result<(), Error> {
        self.send(
            Total::Timeout,
            Method::DELETE,
            &format!("/v1/webhooks/{}", seg(id)),
            None,
            None,
        )
        .await
        .map(drop)
    }
    /// `GET /v1/webhooks/{id}/deliveries`: delivery attempts, newest first.
    pub async fn list_deliveries(&self, id: &str, q: &PageQuery) -> Result<Page<Value>, Error> {
        self.get(
            &format!("/v1/webhooks/{}/deliveries", seg(id)),
            &erased::query(q),
        )
        .await
    }

    // ------------------------------------------------------------ audit, anomalies, reports

    /// `GET /v1/audit`, newest first.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEvent>, Error> {
        self.get("/v1/audit", &erased::query(q)).await
    }
    /// `GET /v1/audit/verify`: whether the hash chain is intact.
    pub async fn verify_audit(&self) -> Result<ChainCheck, Error> {
        let res = self
            .send(Total::Long, Method::GET, "/v1/audit/verify", None, None)
            .await?;
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::transport(&self.base, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }
    /// `GET /v1/audit/export?format=jsonl|csv`: the whole trail, oldest first, as the server
    /// streams it.
    pub async fn export_audit(&self, format: &str) -> Result<reqwest::Response, Error> {
        let q = [("format", format)];
        self.send(
            Total::Streamed,
            Method::GET,
            "/v1/audit/export",
            Some(&erased::query(&q)),
            None,
        )
        .await
    }
    pub async fn list_anomalies(&self, q: &AnomalyQuery) -> Result<Page<Anomaly>, Error> {
        self.get("/v1/anomalies", &erased::query(q)).await
    }
    /// `GET /v1/reports/inventory` as JSON: one row per key with its findings.
    pub async fn inventory(&self, keyspace_id: Option<&str>) -> Result<Value, Error> {
        let q: Vec<(&str, &str)> = keyspace_id
            .map(|k| ("keyspace_id", k))
            .into_iter()
            .collect();
        self.get("/v1/reports/inventory", &erased::query(&q)).await
    }
    /// `GET /v1/reports/inventory?format=csv`, as the server streams it.
    pub async fn inventory_csv(
        &self,
        keyspace_id: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let mut q: Vec<(&str, &str)> = vec![("format", "csv")];
        q.extend(keyspace_id.map(|k| ("keyspace_id", k)));
        self.send(
            Total::Streamed,
            Method::GET,
            "/v1/reports/inventory",
            Some(&erased::query(&q)),
            None,
        )
        .await
    }
}

/// Query strings and JSON bodies behind `dyn`, so one non-generic `send` serves every call.
mod erased {
    use super::Serialize;

    pub(crate) trait Query {
        fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder;
    }
    pub(crate) trait Body {
        fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder;
    }
    pub(crate) struct Q<'a, T: ?Sized>(&'a T);
    pub(crate) struct J<'a, T: ?Sized>(&'a T);
    impl<T: Serialize + ?Sized> Query for Q<'_, T> {
        fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
            r.query(self.0)
        }
    }
    impl<T: Serialize + ?Sized> Body for J<'_, T> {
        fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
            r.json(self.0)
        }
    }
    pub(crate) fn query<T: Serialize + ?Sized>(t: &T) -> Q<'_, T> {
        Q(t)
    }
    pub(crate) fn json<T: Serialize + ?Sized>(t: &T) -> J<'_, T> {
        J(t)
    }
    /// No query string.
    pub(crate) const NONE: Q<'static, [(&str, &str); 0]> = Q(&[]);
}

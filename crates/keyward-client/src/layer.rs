//! A tower [`Layer`] that verifies each request's API key through keyward, and the axum
//! extractor of what it verified (feature `tower`).
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use keyward_client::layer::{KeywardLayer, VerifiedKey};
//!
//! async fn orders(key: VerifiedKey) -> String {
//!     format!("orders of {}", key.owner.as_deref().unwrap_or("nobody"))
//! }
//!
//! # fn app(kw: keyward_client::Client) -> Router {
//! Router::new()
//!     .route("/orders", get(orders))
//!     .route_layer(KeywardLayer::new(kw).require_scopes(["orders:read"]))
//! # }
//! ```
//!
//! **What it does per request.** It takes the key from `Authorization: Bearer` or `X-API-Key`
//! (or from the one header [`KeywardLayer::header`] names), asks keyward's `POST /v1/verify`
//! with the layer's required scopes and the client's address (axum's `ConnectInfo`, when the
//! server was started with it), and either calls the inner service with a [`VerifiedKey`] in
//! the request's extensions, or answers itself: the verify answer's status (401 `NOT_FOUND`,
//! `REVOKED`, `EXPIRED`, `DISABLED`; 403 `INSUFFICIENT_SCOPE`, `IP_NOT_ALLOWED`; 429
//! `RATE_LIMITED` with `Retry-After`, `USAGE_EXCEEDED`) with keyward's JSON error body. A
//! request with no key is 401 `UNAUTHENTICATED`; when keyward cannot be asked the answer is 503
//! `UNAVAILABLE` (it fails closed).
//!
//! **Coalescing.** Verifications of one key (from one address) that overlap in time share one
//! call to keyward: a burst of a hundred concurrent requests with one key costs one round trip.
//! The shared answer serves every waiting request when it is a denial or when the key has
//! neither a rate limit nor a quota (such a burst counts as one call in the key's usage); for a
//! key with a rate limit or a quota each request makes its own call, so limits stay exact.
//!
//! **No cache unless asked.** An answer is used only by the requests that were waiting for it.
//! [`KeywardLayer::cache_valid_answers`] opts in to reusing `VALID` answers for a bounded time:
//! a revoked key then keeps working here for up to that long on top of keyward's own revocation
//! bound, and the reused answers count no usage.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use keyward_core::api::{VerifyAnswer, VerifyRequest};
use keyward_core::keyformat::KeyHash;
use keyward_core::verify::Code;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::{Client, Error};

/// The longest key header the layer looks at (longer ones are refused without a call).
const MAX_KEY_LEN: usize = 8 * 1024;

/// Builds [`KeywardService`]s: see the [module documentation](self).
#[derive(Clone)]
pub struct KeywardLayer {
    shared: Arc<Shared>,
}

type Answer = Result<Arc<VerifyAnswer>, Error>;

/// What one verification depends on besides the layer: the key (as its hash, so the map holds
/// no plaintext) and the caller's address.
type Asked = (KeyHash, Option<String>);

struct Shared {
    client: Client,
    header: Option<HeaderName>,
    scopes: Vec<String>,
    /// Calls in flight, by key hash and address: later requests wait on the first one's call.
    inflight: Mutex<HashMap<Asked, Arc<OnceCell<Answer>>>>,
    cache: Option<Cache>,
}

struct Cache {
    staleness: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Asked, (Instant, Arc<VerifyAnswer>)>>,
}

impl KeywardLayer {
    /// A layer that verifies through `client` (give it a verifier token when the server
    /// requires one).
    pub fn new(client: Client) -> Self {
        KeywardLayer {
            shared: Arc::new(Shared {
                client,
                header: None,
                scopes: Vec::new(),
                inflight: Mutex::new(HashMap::new()),
                cache: None,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                client: arc.client.clone(),
                header: arc.header.clone(),
                scopes: arc.scopes.clone(),
                inflight: Mutex::new(HashMap::new()),
                cache: arc.cache.as_ref().map(|c| Cache {
                    staleness: c.staleness,
                    capacity: c.capacity,
                    entries: Mutex::new(HashMap::new()),
                }),
            },
        };
        f(&mut shared);
        KeywardLayer {
            shared: Arc::new(shared),
        }
    }

    /// Takes the key from this header only (its whole value; for `Authorization`, the part
    /// after `Bearer `). By default `Authorization: Bearer` is read, then `X-API-Key`.
    pub fn header(self, name: HeaderName) -> Self {
        self.with(|s| s.header = Some(name))
    }

    /// Scopes every request through this layer needs. For scopes per route, put a layer on each
    /// route (axum's `route_layer` or a `MethodRouter`'s `layer`).
    pub fn require_scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.with(|s| s.scopes = scopes)
    }

    /// Opt-in: reuses a `VALID` answer for up to `staleness` (at most `capacity` keys are
    /// remembered). This weakens revocation: a key revoked in keyward keeps working here for
    /// up to `staleness` longer than keyward's own bound, and reused answers count no usage,
    /// spend no quota and take nothing from a rate limit.
    pub fn cache_valid_answers(self, staleness: Duration, capacity: usize) -> Self {
        self.with(|s| {
            s.cache = Some(Cache {
                staleness,
                capacity: capacity.max(1),
                entries: Mutex::new(HashMap::new()),
            })
        })
    }
}

impl<S> tower_layer::Layer<S> for KeywardLayer {
    type Service = KeywardService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeywardService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`KeywardLayer`] wraps around another.
#[derive(Clone)]
pub struct KeywardService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> tower_service::Service<Request<B>> for KeywardService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let key = match shared.presented_key(req.headers()) {
                Ok(k) => k,
                Err("NOT_FOUND") => {
                    let message = Code::NotFound.denial().1;
                    return Ok(refusal(
                        StatusCode::UNAUTHORIZED,
                        "NOT_FOUND",
                        message,
                        None,
                    ));
                }
                Err(code) => {
                    let message =
                        "an API key is required (Authorization: Bearer <key> or X-API-Key)";
                    return Ok(refusal(StatusCode::UNAUTHORIZED, code, message, None));
                }
            };
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string());
            match shared.verify(key, ip).await {
                Ok(answer) if answer.valid => {
                    req.extensions_mut().insert(VerifiedKey(answer));
                    inner.call(req).await
                }
                Ok(answer) => Ok(denied(&answer)),
                Err(e) => Ok(unavailable(&e)),
            }
        })
    }
}

impl Shared {
    /// The key the request presents; `Err` with the refusal's code when there is none usable.
    fn presented_key(&self, h: &axum::http::HeaderMap) -> Result<String, &'static str> {
        // As forward-auth reads them: the scheme in any case, the key as sent (never trimmed).
        let bearer = |v: &HeaderValue| {
            let (scheme, rest) = v.to_str().ok()?.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim_start().to_string())
        };
        let plain = |v: &HeaderValue| Some(v.to_str().unwrap_or_default().to_string());
        let found = match &self.header {
            Some(name) if name == header::AUTHORIZATION => h.get(name).and_then(bearer),
            Some(name) => h.get(name).and_then(plain),
            None => h
                .get(header::AUTHORIZATION)
                .and_then(bearer)
                .or_else(|| h.get("x-api-key").and_then(plain)),
        };
        match found {
            Some(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Ok(k),
            // Presented but empty, oversized or not text: not a key, and not worth a call.
            Some(_) => Err("NOT_FOUND"),
            None => Err("UNAUTHENTICATED"),
        }
    }

    async fn verify(&self, key: String, ip: Option<String>) -> Answer {
        let id = (KeyHash::of(&key), ip);
        if let Some(cache) = &self.cache {
            if let Some(a) = cache.get(&id) {
                return Ok(a);
            }
        }
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.clone()).or_default().clone()
        };
        // Whatever happens to this request (answered, or dropped mid-call when its client goes
        // away), the last one to leave a call removes it: cancelled checks of keys never seen
        // again must not pile up in the map.
        let leave = Leave {
            shared: self,
            id: &id,
            cell: Some(cell),
        };
        // The guard holds the only reference this request has (see `Leave`).
        let Some(cell) = leave.cell.as_ref() else {
            return Err(Error::Decode("no call in flight".into()));
        };
        let started_here = std::sync::atomic::AtomicBool::new(false);
        let mut answer = cell
            .get_or_init(|| async {
                started_here.store(true, std::sync::atomic::Ordering::Relaxed);
                let answer = self.call(&key, &id.1).await;
                // Later requests make their own call: the answer is shared only with the
                // requests that were already waiting for it.
                let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&id).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                    map.remove(&id);
                }
                answer
            })
            .await
            .clone();
        // A request that joined another's call may keep a shared VALID answer only when the key
        // has neither a rate limit nor a quota: otherwise each request must be counted.
        let limited = |a: &VerifyAnswer| a.ratelimit.is_some() || a.remaining.is_some();
        if !started_here.load(std::sync::atomic::Ordering::Relaxed)
            && matches!(&answer, Ok(a) if a.valid && limited(a))
        {
            answer = self.call(&key, &id.1).await;
        }
        if let (Some(cache), Ok(a)) = (&self.cache, &answer) {
            if a.valid {
                cache.put(id.clone(), a.clone());
            }
        }
        answer
    }
}

/// Removes a call from the in-flight map when the last request waiting on it is gone.
struct Leave<'a> {
    shared: &'a Shared,
    id: &'a Asked,
    cell: Option<Arc<OnceCell<Answer>>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(cell) = self.cell.take() else {
            return;
        };
        // References are taken and given back only under the lock, so once this one is given
        // back a count of one (the map's) means nobody waits on this call any more.
        let mine = map.get(self.id).is_some_and(|c| Arc::ptr_eq(c, &cell));
        drop(cell);
        if mine && map.get(self.id).is_some_and(|c| Arc::strong_count(c) == 1) {
            map.remove(self.id);
        }
    }
}

impl Shared {
    /// One call to keyward for `key` (from `ip`) with the layer's scopes.
    async fn call(&self, key: &str, ip: &Option<String>) -> Answer {
        let req = VerifyRequest {
            scopes: (!self.scopes.is_empty()).then(|| self.scopes.clone()),
            ip: ip.clone(),
            ..VerifyRequest::new(key)
        };
        self.client.verify(&req).await.map(Arc::new)
    }
}

impl Cache {
    fn get(&self, id: &Asked) -> Option<Arc<VerifyAnswer>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|(at, _)| at.elapsed() < self.staleness)
            .map(|(_, a)| a.clone())
    }

    fn put(&self, id: Asked, a: Arc<VerifyAnswer>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&id) {
            // Drop what is stale; if all are fresh, drop everything (bounded, and simple).
            map.retain(|_, (at, _)| at.elapsed() < self.staleness);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(id, (Instant::now(), a));
    }
}

fn refusal(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

fn denied(a: &VerifyAnswer) -> Response<Body> {
    let (status, message) = a.code.denial();
    let retry_after = match (a.code, a.reset_at) {
        (Code::RateLimited, Some(reset)) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            Some(((reset.millis() - now_ms + 999).div_euclid(1000)).max(1) as u64)
        }
        (Code::RateLimited, None) => Some(1),
        _ => None,
    };
    refusal(
        StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
        a.code.as_str(),
        message,
        retry_after,
    )
}

fn unavailable(e: &Error) -> Response<Body> {
    // The operator learns why from the log (an error's text never holds a secret); the API's
    // caller is not told.
    tracing::warn!(error = %e, "keyward could not verify an API key; answering 503");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the API key could not be verified; try again",
        Some(1),
    )
}

/// The key a request was verified with: keyward's `VALID` answer (id, keyspace, name, owner,
/// scopes, labels, meta, expiry, quota and rate limit). Put in the request's extensions by
/// [`KeywardLayer`]; an axum handler takes it as an argument.
#[derive(Clone, Debug)]
pub struct VerifiedKey(Arc<VerifyAnswer>);

impl VerifiedKey {
    /// The key's id (`key_...`).
    pub fn key_id(&self) -> &str {
        self.0.key_id.as_deref().unwrap_or_default()
    }
    /// The key's keyspace id (`ks_...`).
    pub fn keyspace_id(&self) -> &str {
        self.0.keyspace_id.as_deref().unwrap_or_default()
    }
    /// Whether the key's scopes grant `scope`, by keyward's own rule (wildcards included).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0
            .scopes
            .iter()
            .any(|s| keyward_core::scope::grants(s, scope))
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = VerifyAnswer;
    fn deref(&self) -> &VerifyAnswer {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedKey {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<VerifiedKey>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "VerifiedKey used on a route without KeywardLayer",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers.
    async fn silent() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                held.push(c);
            }
        });
        url
    }

    #[tokio::test]
    async fn cancelled_checks_leave_nothing_in_flight() {
        let client = Client::builder(silent().await)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let layer = KeywardLayer::new(client);
        let shared = layer.shared.clone();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = shared.clone();
            // Ten keys, two waiters each.
            tasks.push(tokio::spawn(async move {
                let _ = s.verify(format!("acme_key{}", i % 10), None).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.inflight.lock().map(|m| m.len()).unwrap_or(0), 10);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(shared.inflight.lock().map(|m| m.len()).unwrap_or(99), 0);
    }
}

//! Webhook delivery from the outbox: at least once, signed, retried with exponential backoff
//! (`KEYWARD_WEBHOOK_RETRY_BASE_MS`, doubling, capped at one hour between attempts) until 24 h
//! after the event. Deliveries live in the database, so they survive a restart; a lease keeps
//! two nodes from sending the same attempt at once.
//!
//! Endpoints are isolated: each gets one worker and one attempt at a time, in event order, and
//! a fetch takes at most [`PER_ENDPOINT`] of one endpoint, so a slow or dead receiver holds up
//! only its own deliveries. After [`crate::outbound::CIRCUIT_FAILURES`] failures in a row an
//! endpoint's circuit opens: its deliveries wait (leased) until one probe may try again.

use std::time::Duration;

use hmac::{Hmac, Mac};
use keyward_core::id::new_id;
use keyward_core::keyformat::hex;
use keyward_core::time::Timestamp;
use keyward_store::{AfterAttempt, Attempt, DueDelivery, StoreError};
use sha2::Sha256;

use crate::state::Control;

const GIVE_UP_AFTER_MS: i64 = 24 * 3_600_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;
const LEASE_MS: i64 = 60_000;

/// `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub(crate) fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex(&mac.finalize().into_bytes()))
}

/// The delay before attempt `attempt + 1` after `attempt` failed.
pub(crate) fn backoff_ms(base_ms: i64, attempt: i64) -> i64 {
    let shift = (attempt - 1).clamp(0, 40) as u32;
    base_ms
        .max(1)
        .saturating_mul(1i64 << shift)
        .min(MAX_BACKOFF_MS)
}

/// The delivery's signing secret, opened when it is sealed.
fn signing_secret(st: &Control, d: &DueDelivery) -> Result<zeroize::Zeroizing<String>, String> {
    if !keyward_core::seal::is_sealed(&d.secret) {
        return Ok(zeroize::Zeroizing::new(d.secret.clone()));
    }
    match &st.master_key {
        Some(k) => k
            .open(&d.secret, &d.webhook_id)
            .map_err(|e| format!("the signing secret cannot be opened: {e}")),
        None => Err("the signing secret is sealed and this node has no master key".into()),
    }
}

async fn send(
    http: &reqwest::Client,
    d: &DueDelivery,
    secret: &str,
    now: Timestamp,
    allow_private: bool,
) -> (Option<i64>, Option<String>) {
    // A literal address is judged here; a name by the client's resolver.
    if let Some(refused) = crate::outbound::literal_refusal(&d.url, allow_private) {
        return (None, Some(refused));
    }
    let res = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("keyward/", env!("CARGO_PKG_VERSION")))
        .header("keyward-signature", signature(secret, now.secs(), &d.body))
        .header("keyward-event-id", &d.event_id)
        .body(d.body.clone())
        .send()
        .await;
    match res {
        Ok(r) => {
            let code = r.status().as_u16() as i64;
            let err = (!r.status().is_success()).then(|| format!("HTTP {code}"));
            (Some(code), err)
        }
        Err(e) => {
            if let Some(refused) = crate::outbound::refused_in(&e) {
                return (None, Some(refused));
            }
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            (None, Some(what.to_string()))
        }
    }
}

/// How deliveries are sent: the HTTP client (timeout, address rules) and the retry schedule.
#[derive(Clone)]
pub struct Deliverer {
    /// `None` when the client could not be built: every attempt then fails, recorded.
    http: Option<reqwest::Client>,
    retry_base: Duration,
    allow_private: bool,
}

impl Deliverer {
    /// A failed attempt is retried after `retry_base`, doubling; an attempt may take `timeout`.
    pub fn new(retry_base: Duration, timeout: Duration, allow_private: bool) -> Self {
        Deliverer {
            http: crate::outbound::client(timeout, allow_private),
            retry_base,
            allow_private,
        }
    }

    /// The deliverer `keyward serve` runs with these settings.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self::new(
            c.webhook_retry_base,
            c.webhook_timeout,
            c.webhook_allow_private,
        )
    }
}

/// One attempt at one delivery: `None` when another worker holds it.
async fn attempt(
    st: &Control,
    how: &Deliverer,
    d: DueDelivery,
) -> Result<Option<bool>, StoreError> {
    let now = st.records.clock.now();
    if !st
        .records
        .store
        .claim_delivery(&d.id, now, now.plus_millis(LEASE_MS))
        .await?
    {
        return Ok(None);
    }
    let attempt_no = d.attempts + 1;
    let span = crate::traces::webhook_attempt(&d.webhook_id, &d.event_id, &d.kind, attempt_no);
    let (status_code, error) = tracing::Instrument::instrument(
        async {
            match signing_secret(st, &d) {
                Ok(secret) => match &how.http {
                    Some(http) => send(http, &d, &secret, now, how.allow_private).await,
                    None => (
                        None,
                        Some("the webhook HTTP client could not be built".into()),
                    ),
                },
                Err(why) => (None, Some(why)),
            }
        },
        span.clone(),
    )
    .await;
    crate::traces::finish_attempt(&span, status_code, error.as_deref());
    let at = st.records.clock.now();
    let ok = status_code.is_some_and(|c| (200..300).contains(&c));
    let after = if ok {
        AfterAttempt::Delivered
    } else {
        let next = at.plus_millis(backoff_ms(how.retry_base.as_millis() as i64, attempt_no));
        if next.millis() - d.created_at.millis() > GIVE_UP_AFTER_MS {
            AfterAttempt::GiveUp
        } else {
            AfterAttempt::RetryAt(next)
        }
    };
    let attempt = Attempt {
        id: new_id("att", at),
        event_id: d.event_id.clone(),
        kind: d.kind.clone(),
        attempt: attempt_no,
        status_code,
        error,
        at,
    };
    st.records
        .store
        .finish_attempt(&d.id, &d.webhook_id, &attempt, after)
        .await?;
    st.metrics.record_webhook(ok);
    Ok(Some(ok))
}

/// Deliveries fetched at once, and of one endpoint at once.
const BATCH: i64 = 512;
const PER_ENDPOINT: i64 = 32;

/// Releases an endpoint when its worker ends, however it ends.
struct Worker<'a> {
    circuits: &'a crate::outbound::Circuits,
    endpoint: String,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        self.circuits.release(&self.endpoint);
    }
}

/// One endpoint's due deliveries, one attempt at a time in event order (the endpoint was
/// entered by the caller). When its circuit opens, the rest are leased until the circuit's
/// time is up, so they are neither attempted nor fetched again before then. Returns the
/// attempts made.
async fn deliver_endpoint(
    st: &Control,
    how: &Deliverer,
    batch: Vec<DueDelivery>,
) -> Result<usize, StoreError> {
    let Some(endpoint) = batch.first().map(|d| d.webhook_id.clone()) else {
        return Ok(0);
    };
    let _worker = Worker {
        circuits: &st.circuits,
        endpoint: endpoint.clone(),
    };
    let mut made = 0;
    let mut rest = batch.into_iter();
    while let Some(d) = rest.next() {
        let Some(ok) = attempt(st, how, d).await? else {
            continue;
        };
        made += 1;
        let now = st.records.clock.now();
        if let Some(until) = st.circuits.record(&endpoint, ok, now.millis()) {
            tracing::info!(webhook = %endpoint, "webhook endpoint failing: paused until it recovers");
            hold(st, rest.by_ref(), until).await?;
        }
    }
    Ok(made)
}

/// Leases deliveries until `until_ms` (an open circuit's end): they wait without being fetched.
async fn hold(
    st: &Control,
    deliveries: impl Iterator<Item = DueDelivery>,
    until_ms: i64,
) -> Result<(), StoreError> {
    let now = st.records.clock.now();
    for d in deliveries {
        st.records
            .store
            .claim_delivery(&d.id, now, Timestamp::from_millis(until_ms))
            .await?;
    }
    Ok(())
}

/// The due deliveries, grouped by endpoint in order of their oldest.
fn by_endpoint(due: Vec<DueDelivery>) -> Vec<Vec<DueDelivery>> {
    let mut groups: Vec<Vec<DueDelivery>> = Vec::new();
    for d in due {
        match groups.iter_mut().find(|g| g[0].webhook_id == d.webhook_id) {
            Some(g) => g.push(d),
            None => groups.push(vec![d]),
        }
    }
    groups
}

/// Fetches due deliveries and enters each endpoint that may be called now; deliveries of an
/// endpoint whose circuit is open are held until it may.
async fn ready_groups(st: &Control) -> Result<Vec<Vec<DueDelivery>>, StoreError> {
    let now = st.records.clock.now();
    let due = st
        .records
        .store
        .due_deliveries(now, BATCH, PER_ENDPOINT)
        .await?;
    let mut ready = Vec::new();
    for group in by_endpoint(due) {
        match st.circuits.enter(&group[0].webhook_id, now.millis()) {
            crate::outbound::Gate::Go => ready.push(group),
            crate::outbound::Gate::Busy => {}
            crate::outbound::Gate::OpenUntil(until) => hold(st, group.into_iter(), until).await?,
        }
    }
    Ok(ready)
}

/// Sends every delivery that is due now, endpoint by endpoint in parallel, until none is left;
/// returns how many attempts were made.
pub async fn deliver_due(st: &Control, how: &Deliverer) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let ready = ready_groups(st).await?;
        if ready.is_empty() {
            return Ok(total);
        }
        let results =
            futures_util::future::join_all(ready.into_iter().map(|g| deliver_endpoint(st, how, g)))
                .await;
        let mut made = 0;
        for r in results {
            made += r?;
        }
        total += made;
        if made == 0 {
            return Ok(total);
        }
    }
}

/// The delivery worker of `keyward serve`: each endpoint with due deliveries gets a task of its
/// own, so a slow or dead receiver holds up only its own deliveries.
pub(crate) async fn run(
    st: Control,
    every: Duration,
    how: Deliverer,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    if every.is_zero() {
        // No worker (`Config::webhook_poll` 0): deliveries are made by whoever calls
        // `deliver_due`, as tests on a manual clock do, with nothing racing them.
        let _ = shutdown.changed().await;
        return;
    }
    let mut workers = tokio::task::JoinSet::new();
    loop {
        match ready_groups(&st).await {
            Ok(ready) => {
                for group in ready {
                    let (st, how) = (st.clone(), how.clone());
                    workers.spawn(async move { deliver_endpoint(&st, &how, group).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook delivery failed; will retry"),
        }
        tokio::select! {
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "webhook delivery failed; will retry");
                }
            }
            _ = tokio::time::sleep(every) => {}
            _ = st.webhook_wake.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Attempts in flight may finish (a few seconds at most); the rest are retried after their
    // lease by whichever node runs next.
    let drain = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        workers.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: python3 -c "import hmac,hashlib;print(hmac.new(b'whsec_test',
        // b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
        let s = signature("whsec_test", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            s,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1000, 1), 1000);
        assert_eq!(backoff_ms(1000, 2), 2000);
        assert_eq!(backoff_ms(1000, 5), 16000);
        assert_eq!(backoff_ms(1000, 40), MAX_BACKOFF_MS);
    }
}

//! Webhook delivery from the outbox: at least once, signed, retried with exponential backoff
//! (`KEYWARD_WEBHOOK_RETRY_BASE_MS`, doubling, capped at one hour between attempts) until 24 h
//! after the event. Deliveries live in the database, so they survive a restart; a lease keeps
//! two nodes from sending the same attempt at once.

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
const TIMEOUT: Duration = Duration::from_secs(10);

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

async fn send(
    http: &reqwest::Client,
    d: &DueDelivery,
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
        .header(
            "keyward-signature",
            signature(&d.secret, now.secs(), &d.body),
        )
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

async fn deliver(
    st: &Control,
    http: &reqwest::Client,
    d: DueDelivery,
    retry_base: Duration,
) -> Result<bool, StoreError> {
    let now = st.records.clock.now();
    if !st
        .records
        .store
        .claim_delivery(&d.id, now, now.plus_millis(LEASE_MS))
        .await?
    {
        return Ok(false);
    }
    let (status_code, error) = send(http, &d, now, st.webhook_allow_private).await;
    let attempt_no = d.attempts + 1;
    let at = st.records.clock.now();
    let ok = status_code.is_some_and(|c| (200..300).contains(&c));
    let after = if ok {
        AfterAttempt::Delivered
    } else {
        let next = at.plus_millis(backoff_ms(retry_base.as_millis() as i64, attempt_no));
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
    Ok(true)
}

/// Sends every delivery that is due now (a failed attempt is retried after `retry_base`,
/// doubling); returns how many attempts were made.
pub async fn deliver_due(
    st: &Control,
    http: &reqwest::Client,
    retry_base: Duration,
) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let due = st
            .records
            .store
            .due_deliveries(st.records.clock.now(), 32)
            .await?;
        if due.is_empty() {
            return Ok(total);
        }
        let results = futures_util::future::join_all(
            due.into_iter().map(|d| deliver(st, http, d, retry_base)),
        )
        .await;
        let made = results.iter().filter(|r| matches!(r, Ok(true))).count();
        total += made;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e);
        }
        if made == 0 {
            return Ok(total);
        }
    }
}

/// The client deliveries are sent with (see [`crate::outbound`]).
pub fn client(allow_private: bool) -> reqwest::Client {
    crate::outbound::client(TIMEOUT, allow_private)
}

pub(crate) async fn run(
    st: Control,
    every: Duration,
    retry_base: Duration,
    allow_private: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let http = client(allow_private);
    loop {
        if let Err(e) = deliver_due(&st, &http, retry_base).await {
            tracing::warn!(error = %e, "webhook delivery failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = st.webhook_wake.notified() => {}
            _ = shutdown.changed() => return,
        }
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

//! What a request asks of a key's rate limits and quota refill: the one-limit shorthand
//! `ratelimit` against the list `ratelimits`, and a refill's need of a quota. Shared by key
//! creation, change and import (which names the record in its errors).

use keyward_core::limits::{check_ratelimits, NamedLimit, Refill, DEFAULT_LIMIT};
use keyward_core::model::{Key, RateLimit};
use keyward_core::time::Timestamp;

/// The key's limits after a request that gives `ratelimit` (the limit named `default`: set or
/// cleared, the others kept) or `ratelimits` (the whole list; `null` clears it), not both.
/// `None`: the request leaves them as they are.
pub(super) fn merged(
    current: &[NamedLimit],
    ratelimit: Option<Option<RateLimit>>,
    ratelimits: Option<Option<Vec<NamedLimit>>>,
) -> Result<Option<Vec<NamedLimit>>, String> {
    let list = match (ratelimit, ratelimits) {
        (Some(_), Some(_)) => return Err("give ratelimit or ratelimits, not both".into()),
        (None, None) => return Ok(None),
        (Some(r), None) => {
            if let Some(r) = &r {
                r.check().map_err(String::from)?;
            }
            let mut list: Vec<NamedLimit> = current
                .iter()
                .filter(|l| l.name != DEFAULT_LIMIT)
                .cloned()
                .collect();
            list.splice(0..0, keyward_core::limits::from_shorthand(r));
            list
        }
        (None, Some(l)) => l.unwrap_or_default(),
    };
    check_ratelimits(&list, "ratelimits").map_err(String::from)?;
    Ok(Some(list))
}

/// A refill needs a quota to refill.
pub(super) fn check_refill(refill: Option<&Refill>, remaining: Option<i64>) -> Result<(), String> {
    if let Some(r) = refill {
        r.check().map_err(String::from)?;
        if remaining.is_none() {
            return Err("refill needs remaining (the quota it refills)".into());
        }
    }
    Ok(())
}

/// Sets (or clears) a key's refill as of `now`: its periods are counted from now, and the
/// quota the key holds is that of the period now begun.
pub(super) fn set_refill(k: &mut Key, refill: Option<Refill>, now: Timestamp) {
    k.refill = refill;
    k.refill_anchor = refill.map(|_| now);
    k.refilled_at = refill.map(|r| r.period_start(now, now));
}

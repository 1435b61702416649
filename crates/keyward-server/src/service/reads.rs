//! The control plane's reads: lists, the audit trail, usage, sources and anomalies. Each takes
//! the proof of the right it needs and applies the context's keyspace limit itself, so the API
//! and the dashboard answer the same question the same way.

use std::sync::Arc;

use keyward_core::audit::{ChainCheck, ChainVerifier};
use keyward_core::id::{KeyId, KeyspaceId, WebhookId};
use keyward_core::kinds::Granularity;
use keyward_core::model::{Anomaly, AuditEvent, Key, Keyspace, Source, Token, Webhook};
use keyward_core::time::Timestamp;
use keyward_core::user::User;
use keyward_store::{
    AnomalyFilter, Attempt, AuditFilter, Bucket, KeyFilter, Page, Store, TimeCursor,
};

use super::{key_seen, keyspace_seen, not_found, report_successor_quota};
use crate::authz::{Allowed, Ctx, ManageTokens, ReadAudit, ReadKeys};
use crate::error::Result;
use crate::state::Records;

/// The keyspaces a list may cover: what was asked for, within what the context may see.
/// `None`: every keyspace. An empty list: none.
pub(super) fn within_limit(ctx: &Ctx, asked: Option<Vec<String>>) -> Option<Vec<String>> {
    match (asked, &ctx.keyspaces) {
        (Some(asked), Some(limit)) => {
            Some(asked.into_iter().filter(|a| limit.contains(a)).collect())
        }
        (Some(asked), None) => Some(asked),
        (None, limit) => limit.clone(),
    }
}

pub async fn list_keyspaces(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    page: &Page<TimeCursor>,
) -> Result<Vec<Keyspace>> {
    Ok(st
        .store
        .list_keyspaces(who.ctx().keyspaces.as_deref(), page)
        .await?)
}

/// A keyspace's keys counted by status and finding at `now` (`rules`, from
/// `reports::census_rules`), with the first `listed` keys of each flagged list (expiring
/// soonest, least recently used): the dashboard overview's counts. A keyspace the context may
/// not see counts as empty.
pub(crate) async fn key_census(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    rules: &keyward_store::CensusRules,
    now: Timestamp,
    listed: i64,
) -> Result<(keyward_store::KeyCensus, Vec<Key>, Vec<Key>)> {
    if !who.ctx().sees(&rules.keyspace_id) {
        return Ok(Default::default());
    }
    let census = st.store.key_census(rules, now).await?;
    let expiring = st
        .store
        .flagged_keys(rules, keyward_store::Flagged::Expiring, now, listed)
        .await?;
    let inactive = st
        .store
        .flagged_keys(rules, keyward_store::Flagged::Inactive, now, listed)
        .await?;
    Ok((census, expiring, inactive))
}

/// Keys matching `filter`, within the context's keyspaces; a key in its grace period reports
/// its successor's quota, as [`super::get_key`] does.
pub async fn list_keys(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    mut filter: KeyFilter,
) -> Result<Vec<Key>> {
    filter.keyspace_ids = within_limit(who.ctx(), filter.keyspace_ids.take());
    let mut rows = st.store.list_keys(&filter).await?;
    for k in rows.iter_mut() {
        report_successor_quota(st, k).await?;
    }
    Ok(rows)
}

/// Buckets of one key (`granularity` `m`, `h` or `d`), oldest first.
pub async fn key_usage(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    key_id: &KeyId,
    granularity: Granularity,
    from: Timestamp,
    to: Timestamp,
) -> Result<(Key, Vec<Bucket>)> {
    let key = key_seen(st, who.ctx(), key_id).await?;
    let buckets = st
        .store
        .usage(Some(std::slice::from_ref(&key.id)), granularity, from, to)
        .await?;
    Ok((key, buckets))
}

/// Buckets of every key of a keyspace.
pub async fn keyspace_usage(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    keyspace_id: &KeyspaceId,
    granularity: Granularity,
    from: Timestamp,
    to: Timestamp,
) -> Result<(Keyspace, Vec<Bucket>)> {
    let ks = keyspace_seen(st, who.ctx(), keyspace_id).await?;
    let buckets = st
        .store
        .usage_of_keyspace(&ks.id, granularity, from, to)
        .await?;
    Ok((ks, buckets))
}

/// Buckets of every key of the installation (a context limited to keyspaces is refused).
pub async fn all_usage(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    granularity: Granularity,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<Bucket>> {
    who.ctx().require_unlimited("usage across every keyspace")?;
    Ok(st.store.usage(None, granularity, from, to).await?)
}

/// The source addresses a key was seen from.
pub async fn key_sources(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    key_id: &KeyId,
) -> Result<(Key, Vec<Source>)> {
    let key = key_seen(st, who.ctx(), key_id).await?;
    let sources = st.store.sources(&key.id).await?;
    Ok((key, sources))
}

/// Anomalies matching `filter`, within the context's keyspaces.
pub async fn list_anomalies(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    mut filter: AnomalyFilter,
) -> Result<Vec<Anomaly>> {
    filter.keyspace_ids = within_limit(who.ctx(), filter.keyspace_ids.take());
    Ok(st.store.list_anomalies(&filter).await?)
}

// ---------------------------------------------------------------- audit

pub async fn list_audit(
    st: &Records,
    _who: &Allowed<'_, ReadAudit>,
    filter: &AuditFilter,
) -> Result<Vec<AuditEvent>> {
    Ok(st.store.list_audit(filter).await?)
}

/// Walks the whole chain from the first event.
pub async fn check_chain(st: &Records, _who: &Allowed<'_, ReadAudit>) -> Result<ChainCheck> {
    // The next page is read while this one is hashed: the store's work and the hashing overlap.
    const PAGE: i64 = 2000;
    let fetch = |after: i64| {
        let store = st.store.clone();
        tokio::spawn(async move { store.audit_after(after, PAGE).await })
    };
    let mut v = ChainVerifier::default();
    let mut next = fetch(0);
    loop {
        let page = next
            .await
            .map_err(|e| crate::error::Error::internal(format!("the audit read failed: {e}")))??;
        let Some(last) = page.last() else { break };
        next = fetch(last.seq);
        for e in &page {
            v.push(e);
        }
    }
    Ok(v.finish())
}

/// The whole trail, oldest first, a page at a time (for exports streamed after the check).
pub struct AuditReader {
    store: Arc<dyn Store>,
}

impl AuditReader {
    /// Events with `seq > after`, at most `limit`, oldest first.
    pub async fn after(&self, after: i64, limit: i64) -> Result<Vec<AuditEvent>> {
        Ok(self.store.audit_after(after, limit).await?)
    }
}

pub fn audit_reader(st: &Records, _who: &Allowed<'_, ReadAudit>) -> AuditReader {
    AuditReader {
        store: st.store.clone(),
    }
}

// ---------------------------------------------------------------- tokens, users, webhooks

pub async fn list_tokens(
    st: &Records,
    _who: &Allowed<'_, ManageTokens>,
    page: &Page<TimeCursor>,
) -> Result<Vec<Token>> {
    Ok(st.store.list_tokens(page).await?)
}

/// Dashboard users, oldest first.
pub async fn list_users(st: &Records, _who: &Allowed<'_, ManageTokens>) -> Result<Vec<User>> {
    Ok(st.store.users().list_users().await?)
}

pub async fn list_webhooks(
    st: &Records,
    _who: &Allowed<'_, ManageTokens>,
    page: &Page<TimeCursor>,
) -> Result<Vec<Webhook>> {
    Ok(st.store.list_webhooks(page).await?)
}

/// Delivery attempts of a webhook, newest first (404 for an unknown webhook).
pub async fn list_deliveries(
    st: &Records,
    _who: &Allowed<'_, ManageTokens>,
    webhook_id: &WebhookId,
    page: &Page<TimeCursor>,
) -> Result<Vec<Attempt>> {
    if st.store.webhook(webhook_id).await?.is_none() {
        return Err(not_found("webhook", webhook_id));
    }
    Ok(st.store.list_attempts(webhook_id, page).await?)
}

/// Most hashes one lookup may ask about.
pub const MAX_LOOKUP: usize = 1000;

/// Which of these SHA-256 hashes (hex) are keys: for scanners that found key-shaped strings
/// and must not send them (`POST /v1/keys/lookup`). The same right as the audit trail and
/// reports: it tells about keys of every keyspace.
pub async fn lookup_hashes(
    st: &Records,
    _who: &Allowed<'_, ReadAudit>,
    hashes: &[String],
) -> Result<Vec<keyward_core::api::KeyMatch>> {
    if hashes.len() > MAX_LOOKUP {
        return Err(crate::error::Error::bad_request(format!(
            "at most {MAX_LOOKUP} hashes a lookup"
        )));
    }
    let now = st.clock.now();
    let mut out = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let hash = parse_hash(h).ok_or_else(|| {
            crate::error::Error::bad_request(format!(
                "hashes[{i}] must be the SHA-256 of a key as 64 hex characters"
            ))
        })?;
        if let Some(k) = st.store.key_by_hash(&hash).await? {
            out.push(keyward_core::api::KeyMatch {
                hash: keyward_core::keyformat::hex(&hash.0),
                key_id: k.id.clone(),
                keyspace_id: k.keyspace_id.clone(),
                name: k.name.clone(),
                owner: k.owner.clone(),
                status: k.status(now),
            });
        }
    }
    Ok(out)
}

fn parse_hash(h: &str) -> Option<keyward_core::keyformat::KeyHash> {
    let b = h.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(keyward_core::keyformat::KeyHash(out))
}

//! Identities: the owner string keys carry, as an object. Creating one changes nothing about
//! its keys; disabling it makes every key of the owner verify `DISABLED` (the keys themselves
//! are not changed), on this node before the call answers and on the others through the change
//! feed (one row per key, written with the change). Its rate limits, counted over all its
//! keys together, travel the same way. Every change is audited.
//!
//! Identities span keyspaces, so changing one needs a token that is not limited to keyspaces;
//! reading one is open to every reader, and its usage counts only the keys the reader sees.

use keyward_core::api::{CreateIdentity, PatchIdentity};
use keyward_core::kinds::{AuditAction, Granularity, TargetType, WebhookEvent};
use keyward_core::model::{check_meta, check_name, Identity, KeyStatus};
use keyward_core::time::Timestamp;
use keyward_store::{Bucket, KeyFilter, Page, StoreError, StoreTx, TimeCursor};
use serde_json::{Map, Value};

use super::reads::within_limit;
use super::{change, Forget};
use crate::authz::{Allowed, ReadKeys, WriteKeys};
use crate::error::{Error, Result};
use crate::events::identity_event;
use crate::state::{Control, Records};

fn not_found() -> Error {
    // The id is not echoed: it is whatever the caller put in the path.
    Error::not_found("identity not found")
}

fn check_id(id: &str) -> Result<()> {
    check_name("id", id).map_err(Error::bad_request)?;
    if id == "." || id == ".." {
        // A path segment of its own would be read as "here" or "up" by every URL parser.
        return Err(Error::bad_request("id may not be '.' or '..'"));
    }
    Ok(())
}

/// The identity's keys now verify differently (its rate limits changed): a feed row per key
/// for the other nodes, and the hashes this node's cache must forget.
async fn keys_changed(
    tx: &mut Box<dyn StoreTx>,
    id: &str,
    now: Timestamp,
) -> Result<Vec<keyward_core::keyformat::KeyHash>> {
    tx.announce_owner(id, now).await?;
    Ok(tx
        .live_keys_of_owner(id, None, now)
        .await?
        .into_iter()
        .map(|k| k.hash)
        .collect())
}

/// The identity's keys now verify again, or no longer (`enabled`): [`keys_changed`], and the
/// webhook event.
async fn keys_toggled(
    tx: &mut Box<dyn StoreTx>,
    identity: &Identity,
    enabled: bool,
    extra: Map<String, Value>,
    now: Timestamp,
) -> Result<Vec<keyward_core::keyformat::KeyHash>> {
    let kind = if enabled {
        WebhookEvent::IdentityEnabled
    } else {
        WebhookEvent::IdentityDisabled
    };
    tx.enqueue(&identity_event(kind, identity, now, extra))
        .await?;
    keys_changed(tx, &identity.id, now).await
}

fn check_limits(list: &[keyward_core::limits::NamedLimit]) -> Result<()> {
    keyward_core::limits::check_ratelimits(list, "ratelimits")
        .map_err(|e| Error::bad_request(String::from(e)))
}

pub async fn create_identity(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    input: CreateIdentity,
) -> Result<Identity> {
    let ctx = who.ctx();
    ctx.require_unlimited("changing an identity (its keys may be in any keyspace)")?;
    check_id(&input.id)?;
    let name = input.name.unwrap_or_else(|| input.id.clone());
    check_name("name", &name).map_err(Error::bad_request)?;
    check_meta(&input.meta).map_err(Error::bad_request)?;
    check_limits(&input.ratelimits)?;
    super::check_remaining(input.remaining)?;
    super::limits::check_refill(input.refill.as_ref(), input.remaining)
        .map_err(Error::bad_request)?;
    let now = st.records.clock.now();
    let identity = Identity {
        id: input.id,
        name,
        meta: input.meta,
        enabled: input.enabled.unwrap_or(true),
        ratelimits: input.ratelimits,
        remaining: input.remaining,
        refill: input.refill,
        refill_anchor: input.refill.map(|_| now),
        refilled_at: input.refill.map(|r| r.period_start(now, now)),
        // Later than any version an identity of this id had before (deleted and made anew):
        // nodes still holding the old one's quota replace it.
        quota_version: now.millis(),
        created_at: now,
        created_by: ctx.actor.clone(),
        updated_at: now,
    };
    let mut tx = st.records.store.begin().await?;
    match tx.insert_identity(&identity).await {
        Err(StoreError::Conflict(_)) => {
            return Err(Error::conflict("an identity with this id exists"))
        }
        other => other?,
    }
    let mut ev = ctx.event(
        now,
        AuditAction::IdentityCreate,
        TargetType::Identity,
        &identity.id,
    );
    change(&mut ev.changes, "name", Value::Null, &identity.name);
    change(&mut ev.changes, "enabled", Value::Null, identity.enabled);
    if !identity.meta.is_empty() {
        change(&mut ev.changes, "meta", Value::Null, &identity.meta);
    }
    if !identity.ratelimits.is_empty() {
        change(
            &mut ev.changes,
            "ratelimits",
            Value::Null,
            &identity.ratelimits,
        );
    }
    if identity.remaining.is_some() {
        change(
            &mut ev.changes,
            "remaining",
            Value::Null,
            identity.remaining,
        );
    }
    if identity.refill.is_some() {
        change(&mut ev.changes, "refill", Value::Null, identity.refill);
    }
    tx.append_audit(ev).await?;
    // Only a change of how the keys verify is announced (to every node, one row per key).
    let hashes = if !identity.enabled {
        keys_toggled(&mut tx, &identity, false, Map::new(), now).await?
    } else if !identity.ratelimits.is_empty() || identity.remaining.is_some() {
        keys_changed(&mut tx, &identity.id, now).await?
    } else {
        Vec::new()
    };
    let _forget = Forget::keys(st, hashes);
    tx.commit().await?;
    if !identity.enabled {
        st.webhook_wake.notify_one();
    }
    Ok(identity)
}

/// An identity the context may see: any, or with a token limited to keyspaces, one that owns
/// a key in them.
pub async fn get_identity(st: &Records, who: &Allowed<'_, ReadKeys>, id: &str) -> Result<Identity> {
    let i = st
        .store
        .identity(id, who.ctx().keyspaces.as_deref())
        .await?
        .ok_or_else(not_found)?;
    Ok(i.refilled(st.clock.now()).unwrap_or(i))
}

pub async fn list_identities(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    page: &Page<TimeCursor>,
) -> Result<Vec<Identity>> {
    let now = st.clock.now();
    let list = st
        .store
        .list_identities(who.ctx().keyspaces.as_deref(), page)
        .await?;
    Ok(list
        .into_iter()
        .map(|i| i.refilled(now).unwrap_or(i))
        .collect())
}

pub async fn update_identity(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    id: &str,
    p: PatchIdentity,
) -> Result<Identity> {
    let ctx = who.ctx();
    ctx.require_unlimited("changing an identity (its keys may be in any keyspace)")?;
    if let Some(n) = &p.name {
        check_name("name", n).map_err(Error::bad_request)?;
    }
    if let Some(m) = &p.meta {
        check_meta(m).map_err(Error::bad_request)?;
    }
    if let Some(l) = &p.ratelimits {
        check_limits(l)?;
    }
    if let Some(r) = p.remaining {
        super::check_remaining(r)?;
    }
    if let Some(Some(r)) = &p.refill {
        r.check().map_err(|e| Error::bad_request(String::from(e)))?;
        if p.remaining == Some(None) {
            return Err(Error::bad_request(
                "refill needs remaining (the quota it refills)",
            ));
        }
    }
    let now = st.records.clock.now();
    let quota_set = p.remaining.is_some() || p.refill.is_some();
    // A quota change must not interleave with a usage batch (see jobs::usage::flush).
    let _gate = if quota_set {
        let g = st.gate.lock().await;
        crate::jobs::usage::flush_locked(st).await?;
        Some(g)
    } else {
        None
    };
    let mut tx = st.records.store.begin().await?;
    let old = tx.identity(id).await?.ok_or_else(not_found)?;
    // As a read shows it now (a refill period that began counts).
    let old = old.refilled(now).unwrap_or(old);
    let mut new = old.clone();
    if let Some(n) = p.name {
        new.name = n;
    }
    if let Some(m) = p.meta {
        new.meta = m;
    }
    if let Some(e) = p.enabled {
        new.enabled = e;
    }
    if let Some(l) = p.ratelimits {
        new.ratelimits = l;
    }
    // Setting `remaining` or `refill` sets the shared quota anew (every node's lease is void).
    if let Some(v) = p.remaining {
        new.remaining = v;
        match (v, new.refill) {
            (None, _) => {
                new.refill = None;
                new.refill_anchor = None;
                new.refilled_at = None;
            }
            (Some(_), Some(r)) => {
                let anchor = new.refill_anchor.or(new.refilled_at).unwrap_or(now);
                new.refilled_at = Some(r.period_start(anchor, now));
            }
            (Some(_), None) => {}
        }
    }
    if let Some(r) = p.refill {
        super::limits::check_refill(r.as_ref(), new.remaining).map_err(Error::bad_request)?;
        new.refill = r;
        new.refill_anchor = r.map(|_| now);
        new.refilled_at = r.map(|r| r.period_start(now, now));
    }
    let mut ev = ctx.event(now, AuditAction::IdentityUpdate, TargetType::Identity, id);
    change(&mut ev.changes, "name", &old.name, &new.name);
    change(&mut ev.changes, "meta", &old.meta, &new.meta);
    change(&mut ev.changes, "enabled", old.enabled, new.enabled);
    change(
        &mut ev.changes,
        "ratelimits",
        &old.ratelimits,
        &new.ratelimits,
    );
    if p.remaining.is_some() {
        change(&mut ev.changes, "remaining", old.remaining, new.remaining);
    }
    change(&mut ev.changes, "refill", old.refill, new.refill);
    if ev.changes.is_empty() {
        return Ok(old);
    }
    new.updated_at = now;
    tx.update_identity(&new).await?;
    if quota_set {
        tx.set_identity_quota(&new).await?;
        new.quota_version += 1;
    }
    tx.append_audit(ev).await?;
    let toggled = old.enabled != new.enabled;
    let hashes = if toggled {
        keys_toggled(&mut tx, &new, new.enabled, Map::new(), now).await?
    } else if old.ratelimits != new.ratelimits || quota_set {
        keys_changed(&mut tx, id, now).await?
    } else {
        Vec::new()
    };
    let _forget = Forget::keys(st, hashes);
    tx.commit().await?;
    if toggled {
        st.webhook_wake.notify_one();
    }
    Ok(new)
}

/// Deletes an identity; its keys keep their owner string and verify as their own state says.
pub async fn delete_identity(st: &Control, who: &Allowed<'_, WriteKeys>, id: &str) -> Result<()> {
    let ctx = who.ctx();
    ctx.require_unlimited("changing an identity (its keys may be in any keyspace)")?;
    let mut tx = st.records.store.begin().await?;
    let old = tx.identity(id).await?.ok_or_else(not_found)?;
    let now = st.records.clock.now();
    tx.delete_identity(id).await?;
    let mut ev = ctx.event(now, AuditAction::IdentityDelete, TargetType::Identity, id);
    change(&mut ev.changes, "name", &old.name, Value::Null);
    change(&mut ev.changes, "enabled", old.enabled, Value::Null);
    tx.append_audit(ev).await?;
    let hashes = if old.enabled && old.ratelimits.is_empty() && old.remaining.is_none() {
        Vec::new()
    } else if old.enabled {
        keys_changed(&mut tx, id, now).await?
    } else {
        let mut extra = Map::new();
        extra.insert("deleted".into(), Value::Bool(true));
        keys_toggled(&mut tx, &old, true, extra, now).await?
    };
    let _forget = Forget::keys(st, hashes);
    tx.commit().await?;
    if !old.enabled {
        st.webhook_wake.notify_one();
    }
    Ok(())
}

/// Buckets of every key of the identity the context sees (revoked ones included: their past
/// use is the identity's), oldest first. Usage follows a key's current owner.
pub async fn identity_usage(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    id: &str,
    granularity: Granularity,
    from: Timestamp,
    to: Timestamp,
) -> Result<(Identity, Vec<Bucket>)> {
    let identity = get_identity(st, who, id).await?;
    let buckets = st
        .store
        .usage_of_owner(
            &identity.id,
            who.ctx().keyspaces.as_deref(),
            granularity,
            from,
            to,
        )
        .await?;
    Ok((identity, buckets))
}

/// The keys of an identity the context sees, newest first (for its page).
pub async fn identity_keys(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    id: &str,
    status: Option<KeyStatus>,
    page: Page<TimeCursor>,
) -> Result<Vec<keyward_core::model::Key>> {
    let filter = KeyFilter {
        keyspace_ids: within_limit(who.ctx(), None),
        owner: Some(id.to_string()),
        status,
        now: st.clock.now(),
        page,
        ..KeyFilter::default()
    };
    Ok(st.store.list_keys(&filter).await?)
}

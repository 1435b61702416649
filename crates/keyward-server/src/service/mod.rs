//! The control plane: every rule about keyspaces, keys, tokens and webhooks, written once and
//! used by the HTTP API, the dashboard and the command line. Each function takes the
//! [`Allowed`] proof of the right it needs (see [`crate::authz`]), so no front end reaches it
//! without the role check; keyspace limits are applied here, from the proof's [`Ctx`].
//!
//! Each change is one store transaction that also appends its audit event; after the commit
//! the verification cache of this node forgets the key, before the caller answers. Reads are
//! in `reads` (re-exported here).

mod identities;
mod import;
mod limits;
mod reads;

pub use identities::{
    create_identity, delete_identity, get_identity, identity_keys, identity_usage, list_identities,
    update_identity,
};
pub use import::import_keys;
pub use reads::*;

/// The request bodies live with the API's other types in [`keyward_core::api`], which the
/// client crate shares.
pub use keyward_core::api::{
    BulkRevoke, CreateIdentity, CreateKey, CreateKeyspace, CreateToken, CreateWebhook,
    PatchIdentity, PatchKey, PatchKeyspace, RotateKey,
};

use keyward_core::id::{new_id, KeyId, KeyspaceId, TokenId, WebhookId};
use keyward_core::keyformat::{self, KeyHash, TOKEN_PREFIX};
use keyward_core::model::{
    check_cidrs, check_labels, check_meta, check_name, check_reason, check_scopes, Key, KeyStatus,
    Keyspace, Token,
};
use keyward_core::policy::{Policy, Preset, MAX_DURATION_SECS};
use keyward_core::routes;
use keyward_core::secret::Secret;
use keyward_core::time::Timestamp;
use keyward_store::{NewEvent, StoreError, StoreTx};
use serde_json::{json, Map, Value};

use crate::authz::{
    Allowed, CreateKeyspaces, Ctx, ManageTokens, ReadKeys, WriteKeys, WriteKeyspaces,
};
use keyward_core::kinds::{AuditAction, TargetType, WebhookEvent};

use crate::error::{Error, Result};
use crate::events::key_event;
use crate::state::{Control, Records};

/// Why the node is not ready (`/readyz`, no token needed), if it is not, and which backend
/// it uses: the store must answer and accept writes.
pub(crate) async fn readiness(st: &Records) -> (Option<&'static str>, &'static str) {
    let problem = if st.store.ping().await.is_err() {
        Some("the store cannot be reached")
    } else if st.store.writable().await.is_err() {
        Some("the database cannot be written (read-only or full)")
    } else {
        None
    };
    (problem, st.store.backend())
}

/// Makes this node's cache forget keys once their change is committed, before the caller
/// answers. It acts when dropped, so a request cancelled between the commit and the response
/// (a client that hung up) still leaves no stale entry: if the commit did not happen after all,
/// forgetting costs one store read.
struct Forget<'a> {
    st: &'a Control,
    hashes: Vec<KeyHash>,
    /// Quotas set anew: this node's leases of them are void.
    quota: Vec<(KeyHash, Option<i64>)>,
}

impl<'a> Forget<'a> {
    fn keys(st: &'a Control, hashes: Vec<KeyHash>) -> Self {
        Forget {
            st,
            hashes,
            quota: Vec::new(),
        }
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        for (hash, remaining) in &self.quota {
            self.st.verifier.set_remaining(hash, *remaining);
        }
        for h in &self.hashes {
            self.st.verifier.invalidate(h);
        }
    }
}

fn change(
    changes: &mut Map<String, Value>,
    field: &str,
    old: impl serde::Serialize,
    new: impl serde::Serialize,
) {
    let (old, new) = (json!(old), json!(new));
    if old != new {
        changes.insert(field.into(), json!([old, new]));
    }
}

/// Ids named in a path, parsed at the edge: a string without its kind's shape names no object
/// (404, like an unknown id; it is not echoed).
pub fn key_id(s: &str) -> Result<KeyId> {
    KeyId::parse(s).ok_or_else(|| Error::not_found("key not found"))
}
pub fn keyspace_id(s: &str) -> Result<KeyspaceId> {
    KeyspaceId::parse(s).ok_or_else(|| Error::not_found("keyspace not found"))
}
pub fn token_id(s: &str) -> Result<TokenId> {
    TokenId::parse(s).ok_or_else(|| Error::not_found("token not found"))
}
pub fn webhook_id(s: &str) -> Result<WebhookId> {
    WebhookId::parse(s).ok_or_else(|| Error::not_found("webhook not found"))
}

/// A 404 that names the id only when it has the shape of an id of that kind (whatever a
/// client put in a path is never echoed: it could be a key pasted in the wrong place).
fn not_found(kind: &str, id: &str) -> Error {
    let prefix = match kind {
        "keyspace" => KeyspaceId::PREFIX,
        "key" => KeyId::PREFIX,
        "token" => TokenId::PREFIX,
        "webhook" => WebhookId::PREFIX,
        _ => "",
    };
    if keyward_core::id::is_id(prefix, id) {
        Error::not_found(format!("{kind} '{id}' not found"))
    } else {
        Error::not_found(format!("{kind} not found"))
    }
}

// ---------------------------------------------------------------- keyspaces

pub async fn create_keyspace(
    st: &Control,
    who: &Allowed<'_, CreateKeyspaces>,
    input: CreateKeyspace,
) -> Result<Keyspace> {
    let ctx = who.ctx();
    check_name("name", &input.name).map_err(Error::bad_request)?;
    keyformat::check_prefix(&input.prefix).map_err(Error::bad_request)?;
    let base = input.preset.unwrap_or(Preset::Standard).policy();
    let policy = match &input.policy {
        Some(p) => p.apply(&base).map_err(Error::bad_request)?,
        None => base,
    };
    routes::check_rules(&input.routes).map_err(Error::bad_request)?;
    let now = st.records.clock.now();
    let ks = Keyspace {
        id: new_id("ks", now),
        name: input.name,
        prefix: input.prefix,
        policy,
        created_at: now,
        updated_at: now,
        routes: input.routes,
        unmatched: input.unmatched,
    };
    let mut tx = st.records.store.begin().await?;
    match tx.insert_keyspace(&ks).await {
        Err(StoreError::Conflict(_)) => {
            return Err(Error::conflict(format!(
                "prefix '{}' is already used by another keyspace",
                ks.prefix
            )))
        }
        other => other?,
    }
    let mut ev = ctx.event(
        now,
        AuditAction::KeyspaceCreate,
        TargetType::Keyspace,
        &ks.id,
    );
    change(&mut ev.changes, "name", Value::Null, &ks.name);
    change(&mut ev.changes, "prefix", Value::Null, &ks.prefix);
    change(&mut ev.changes, "policy", Value::Null, &ks.policy);
    if !ks.routes.is_empty() {
        change(&mut ev.changes, "routes", Value::Null, &ks.routes);
    }
    change(&mut ev.changes, "unmatched", Value::Null, ks.unmatched);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(ks)
}

pub async fn get_keyspace(
    st: &Records,
    who: &Allowed<'_, ReadKeys>,
    id: &KeyspaceId,
) -> Result<Keyspace> {
    keyspace_seen(st, who.ctx(), id).await
}

/// A keyspace the context may see (404 otherwise).
pub(crate) async fn keyspace_seen(st: &Records, ctx: &Ctx, id: &str) -> Result<Keyspace> {
    // A string without an id's shape names no keyspace: answered without the store (which
    // may refuse some strings outright, e.g. PostgreSQL a NUL character).
    if !ctx.sees(id) || KeyspaceId::parse(id).is_none() {
        return Err(not_found("keyspace", id));
    }
    st.store
        .keyspace(id)
        .await?
        .ok_or_else(|| not_found("keyspace", id))
}

/// Makes this node read a keyspace's rules again when dropped (see `update_keyspace`).
struct ForgetKeyspace<'a>(&'a crate::verifier::Verifier, &'a str);

impl Drop for ForgetKeyspace<'_> {
    fn drop(&mut self) {
        self.0.forget_keyspace(self.1);
    }
}

pub async fn update_keyspace(
    st: &Control,
    who: &Allowed<'_, WriteKeyspaces>,
    id: &KeyspaceId,
    input: PatchKeyspace,
) -> Result<Keyspace> {
    let ctx = who.ctx();
    if let Some(n) = &input.name {
        check_name("name", n).map_err(Error::bad_request)?;
    }
    if let Some(r) = &input.routes {
        routes::check_rules(r).map_err(Error::bad_request)?;
    }
    if !ctx.sees(id) {
        return Err(not_found("keyspace", id));
    }
    let mut tx = st.records.store.begin().await?;
    let old = tx
        .keyspace(id)
        .await?
        .ok_or_else(|| not_found("keyspace", id))?;
    let mut ks = old.clone();
    if let Some(n) = input.name {
        ks.name = n;
    }
    if let Some(p) = &input.policy {
        ks.policy = p.apply(&ks.policy).map_err(Error::bad_request)?;
    }
    if let Some(r) = input.routes {
        ks.routes = r;
    }
    if let Some(u) = input.unmatched {
        ks.unmatched = u;
    }
    let now = st.records.clock.now();
    let mut ev = ctx.event(now, AuditAction::KeyspaceUpdate, TargetType::Keyspace, id);
    change(&mut ev.changes, "name", &old.name, &ks.name);
    if old.policy != ks.policy {
        let (o, n) = (json!(old.policy), json!(ks.policy));
        if let (Value::Object(o), Value::Object(n)) = (o, n) {
            for (k, v) in n {
                change(&mut ev.changes, &format!("policy.{k}"), o.get(&k), v);
            }
        }
    }
    change(&mut ev.changes, "routes", &old.routes, &ks.routes);
    change(&mut ev.changes, "unmatched", old.unmatched, ks.unmatched);
    if ev.changes.is_empty() {
        return Ok(old);
    }
    ks.updated_at = now;
    tx.update_keyspace(&ks).await?;
    tx.append_audit(ev).await?;
    // This node's verifier reads the rules again (the others follow the change feed, which
    // skips this node's rows): on drop, so that a call cancelled while committing still does.
    let forget = ForgetKeyspace(&st.verifier, id);
    tx.commit().await?;
    drop(forget);
    Ok(ks)
}

// ---------------------------------------------------------------- keys

fn check_owner(owner: &Option<String>) -> Result<()> {
    match owner {
        Some(o) => check_name("owner", o).map_err(Error::bad_request),
        None => Ok(()),
    }
}

/// Quotas stay within what JSON numbers hold exactly (2^53 - 1).
const MAX_REMAINING: i64 = 9_007_199_254_740_991;

pub(super) fn check_remaining(r: Option<i64>) -> Result<()> {
    match r {
        Some(n) if !(0..=MAX_REMAINING).contains(&n) => Err(Error::bad_request(format!(
            "remaining must be an integer in 0..{MAX_REMAINING}, or null for unlimited"
        ))),
        _ => Ok(()),
    }
}

/// Whether `expires_at` keeps a key created at `created_at` within the policy's lifetime.
fn check_lifetime(
    policy: &Policy,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> Result<()> {
    if let Some(max) = policy.max_lifetime_secs {
        match expires_at {
            None => {
                return Err(Error::policy(format!(
                "the keyspace policy requires every key to expire within {max} s of its creation"
            )))
            }
            Some(e) if e > created_at.plus_secs(max) => {
                return Err(Error::policy(format!(
                    "expires_at is beyond the keyspace's max_lifetime_secs ({max} s after creation)"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Live keys of an owner that count towards `max_keys_per_owner` (not rotated away).
async fn check_owner_limit(
    tx: &mut Box<dyn StoreTx>,
    ks: &Keyspace,
    owner: &Option<String>,
    now: Timestamp,
    except: Option<&str>,
) -> Result<()> {
    if let (Some(max), Some(owner)) = (ks.policy.max_keys_per_owner, owner) {
        let live = tx
            .live_keys_of_owner(owner, Some(std::slice::from_ref(&ks.id)), now)
            .await?;
        let n = live
            .iter()
            .filter(|k| k.status(now) == KeyStatus::Active && Some(k.id.as_str()) != except)
            .count();
        if n as i64 >= max {
            return Err(Error::policy(format!(
                "owner already has {n} active keys in this keyspace; the policy allows {max}"
            )));
        }
    }
    Ok(())
}

/// How long a key's creation waits for its turn while no creation of the node finishes (see
/// [`creating_turn`]).
const CREATE_STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// This node's creations one at a time: the turn of one, counted as done when dropped.
struct CreatingTurn<'a> {
    _turn: tokio::sync::MutexGuard<'a, ()>,
    done: &'a std::sync::atomic::AtomicU64,
}

impl Drop for CreatingTurn<'_> {
    fn drop(&mut self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits for this create's turn among the node's creations (`Control::creating`). While the
/// queue moves it waits however long, but when no creation finished for [`CREATE_STALL`] it
/// goes ahead without a turn (`None`: a transaction, most likely): one stuck create must not
/// hold up every other.
async fn creating_turn(st: &Control) -> Option<CreatingTurn<'_>> {
    use std::sync::atomic::Ordering;
    let done = &st.creations_done;
    let mut seen = done.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(CREATE_STALL, st.creating.lock()).await {
            Ok(turn) => return Some(CreatingTurn { _turn: turn, done }),
            Err(_) => {
                let now = done.load(Ordering::Relaxed);
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

pub async fn create_key(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    input: CreateKey,
) -> Result<(Key, Secret)> {
    let ctx = who.ctx();
    check_name("name", &input.name).map_err(Error::bad_request)?;
    check_owner(&input.owner)?;
    check_scopes(&input.scopes).map_err(Error::bad_request)?;
    check_labels(&input.labels).map_err(Error::bad_request)?;
    check_meta(&input.meta).map_err(Error::bad_request)?;
    let ratelimits = limits::merged(
        &[],
        input.ratelimit.map(Some),
        input.ratelimits.clone().map(Some),
    )
    .map_err(Error::bad_request)?
    .unwrap_or_default();
    check_remaining(input.remaining)?;
    limits::check_refill(input.refill.as_ref(), input.remaining).map_err(Error::bad_request)?;
    if let Some(c) = &input.allowed_cidrs {
        check_cidrs(c).map_err(Error::bad_request)?;
    }
    let now = st.records.clock.now();
    let explicit_expiry = match (input.ttl_secs, input.expires_at) {
        (Some(_), Some(_)) => {
            return Err(Error::bad_request("give ttl_secs or expires_at, not both"))
        }
        (Some(t), None) if !(1..=MAX_DURATION_SECS).contains(&t) => {
            return Err(Error::bad_request(format!(
                "ttl_secs must be an integer in 1..{MAX_DURATION_SECS}"
            )))
        }
        (Some(t), None) => Some(now.plus_secs(t)),
        (None, Some(e)) if e <= now => return Err(Error::bad_request("expires_at is in the past")),
        (None, e) => e,
    };
    if !ctx.sees(&input.keyspace_id) || KeyspaceId::parse(&input.keyspace_id).is_none() {
        return Err(not_found("keyspace", &input.keyspace_id));
    }
    // This node's creations go one at a time: they would wait for the write lock one after
    // another anyway, and in turn each follows the one before, so that it can be guessed.
    let _one_at_a_time = creating_turn(st).await;
    // One round trip when this node's last commit left all the checks need (the keyspace, and
    // no owner limit to count) and they pass: see `Store::create_key_predicted`. Else, or when
    // the lock moved on since, a transaction, whose checks decide (a refusal here may rest on
    // a keyspace another node changed since).
    let predicted = st.records.store.predict().and_then(|p| {
        let ks = p.keyspace(&input.keyspace_id)?;
        let counted = ks.policy.max_keys_per_owner.is_some() && input.owner.is_some();
        let expires_at = checked_expiry(&ks, &input, now, explicit_expiry).ok()?;
        (!counted).then_some((p, ks, expires_at))
    });
    if let Some((p, ks, expires_at)) = predicted {
        if let Ok((key, plaintext, ev, outbox)) =
            new_key(&ks, &input, ctx, now, expires_at, &ratelimits)
        {
            let _forget = Forget::keys(st, vec![key.hash]);
            let created = st
                .records
                .store
                .create_key_predicted(p, &key, ev, std::slice::from_ref(&outbox))
                .await?;
            if created.is_some() {
                st.metrics
                    .keys_created_predicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok((key, plaintext));
            }
            st.metrics
                .key_predictions_missed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let mut tx = st.records.store.begin().await?;
    let ks = tx
        .keyspace(&input.keyspace_id)
        .await?
        .ok_or_else(|| not_found("keyspace", &input.keyspace_id))?;
    let expires_at = checked_expiry(&ks, &input, now, explicit_expiry)?;
    check_owner_limit(&mut tx, &ks, &input.owner, now, None).await?;
    let (key, plaintext, ev, outbox) = new_key(&ks, &input, ctx, now, expires_at, &ratelimits)?;
    tx.enqueue(&outbox).await?;
    let _forget = Forget::keys(st, vec![key.hash]);
    tx.commit_with_key(&key, ev).await?;
    Ok((key, plaintext))
}

/// The expiry of a key `input` asks for in `ks`, once the keyspace policy allows the key (all
/// but its owner limit, which needs a transaction).
fn checked_expiry(
    ks: &Keyspace,
    input: &CreateKey,
    now: Timestamp,
    explicit_expiry: Option<Timestamp>,
) -> Result<Option<Timestamp>> {
    if ks.policy.require_owner && input.owner.is_none() {
        return Err(Error::policy("the keyspace policy requires an owner"));
    }
    let expires_at = explicit_expiry.or(ks.policy.max_lifetime_secs.map(|m| now.plus_secs(m)));
    check_lifetime(&ks.policy, now, expires_at)?;
    Ok(expires_at)
}

/// A key `input` asks for in `ks`, expiring at `expires_at` (see [`checked_expiry`]), its
/// plaintext, its audit event and its webhook event.
fn new_key(
    ks: &Keyspace,
    input: &CreateKey,
    ctx: &Ctx,
    now: Timestamp,
    expires_at: Option<Timestamp>,
    ratelimits: &[keyward_core::limits::NamedLimit],
) -> Result<(Key, Secret, NewEvent, keyward_store::OutboxEvent)> {
    let plaintext = keyformat::generate(&ks.prefix);
    let key = new_key_record(ks, &plaintext, ctx, now, |k| {
        k.name = input.name.clone();
        k.owner = input.owner.clone();
        k.scopes = input.scopes.clone();
        k.labels = input.labels.clone();
        k.meta = input.meta.clone();
        k.expires_at = expires_at;
        k.set_ratelimits(ratelimits.to_vec());
        k.remaining = input.remaining;
        limits::set_refill(k, input.refill, now);
        k.allowed_cidrs = input.allowed_cidrs.clone();
        k.enabled = input.enabled.unwrap_or(true);
    })?;
    let mut ev = ctx.event(now, AuditAction::KeyCreate, TargetType::Key, &key.id);
    for (field, v) in [
        ("keyspace_id", json!(key.keyspace_id)),
        ("name", json!(key.name)),
        ("owner", json!(key.owner)),
        ("scopes", json!(key.scopes)),
        ("labels", json!(key.labels)),
        ("expires_at", json!(key.expires_at)),
        ("enabled", json!(key.enabled)),
        ("ratelimit", json!(key.ratelimit)),
        ("remaining", json!(key.remaining)),
        ("allowed_cidrs", json!(key.allowed_cidrs)),
    ] {
        change(&mut ev.changes, field, Value::Null, v);
    }
    if !keyward_core::limits::only_shorthand(&key.ratelimits) {
        change(&mut ev.changes, "ratelimits", Value::Null, &key.ratelimits);
    }
    if key.refill.is_some() {
        change(&mut ev.changes, "refill", Value::Null, key.refill);
    }
    let outbox = key_event(WebhookEvent::KeyCreated, &key, now, Map::new());
    Ok((key, plaintext, ev, outbox))
}

fn new_key_record(
    ks: &Keyspace,
    plaintext: &Secret,
    ctx: &Ctx,
    now: Timestamp,
    fill: impl FnOnce(&mut Key),
) -> Result<Key> {
    let mut key = Key::for_plaintext(plaintext.expose(), &ks.id, now, ctx.actor.clone())
        .ok_or_else(|| Error::internal("generated key does not parse"))?;
    fill(&mut key);
    Ok(key)
}

/// A key the context may see, read outside a transaction.
pub async fn get_key(st: &Records, who: &Allowed<'_, ReadKeys>, id: &KeyId) -> Result<Key> {
    key_seen(st, who.ctx(), id).await
}

/// A key the context may see (404 otherwise), reporting its successor's quota while rotating.
pub(crate) async fn key_seen(st: &Records, ctx: &Ctx, id: &str) -> Result<Key> {
    let mut key = st
        .store
        .key(id)
        .await?
        .filter(|k| ctx.sees(&k.keyspace_id))
        .ok_or_else(|| not_found("key", id))?;
    report_successor_quota(st, &mut key).await?;
    Ok(key)
}

/// The quota a key reports as read now: refilled when a refill period began since the store
/// last refilled it; during its grace period (rotated, neither revoked nor expired, disabled or
/// not) a rotated key draws from its successor's quota, so it reports the successor's.
pub(crate) async fn report_successor_quota(st: &Records, key: &mut Key) -> Result<()> {
    let now = st.clock.now();
    if let Some(k) = key.refilled(now) {
        *key = k;
    }
    if let (Some(next), Some(_)) = (&key.rotated_to, key.remaining) {
        let status = key.status(now);
        if status != KeyStatus::Revoked && status != KeyStatus::Expired {
            if let Some(s) = st.store.key(next).await? {
                key.remaining = s.refilled(now).unwrap_or(s).remaining;
            }
        }
    }
    Ok(())
}

async fn key_in_tx(tx: &mut Box<dyn StoreTx>, ctx: &Ctx, id: &str) -> Result<Key> {
    tx.key(id)
        .await?
        .filter(|k| ctx.sees(&k.keyspace_id))
        .ok_or_else(|| not_found("key", id))
}

fn required<T>(field: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::bad_request(format!("{field} may not be null")))
}

pub async fn update_key(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    id: &KeyId,
    p: PatchKey,
) -> Result<Key> {
    let ctx = who.ctx();
    // Validate everything before touching the store.
    let name = p.name.map(|v| required("name", v)).transpose()?;
    let scopes = p.scopes.map(|v| required("scopes", v)).transpose()?;
    let labels = p.labels.map(|v| required("labels", v)).transpose()?;
    let meta = p.meta.map(|v| required("meta", v)).transpose()?;
    let enabled = p.enabled.map(|v| required("enabled", v)).transpose()?;
    if let Some(n) = &name {
        check_name("name", n).map_err(Error::bad_request)?;
    }
    if let Some(o) = &p.owner {
        check_owner(o)?;
    }
    if let Some(s) = &scopes {
        check_scopes(s).map_err(Error::bad_request)?;
    }
    if let Some(l) = &labels {
        check_labels(l).map_err(Error::bad_request)?;
    }
    if let Some(m) = &meta {
        check_meta(m).map_err(Error::bad_request)?;
    }
    if let (Some(_), Some(_)) = (&p.ratelimit, &p.ratelimits) {
        return Err(Error::bad_request("give ratelimit or ratelimits, not both"));
    }
    // Checked whole here; merged with the key's other limits below.
    limits::merged(&[], p.ratelimit, p.ratelimits.clone()).map_err(Error::bad_request)?;
    if let Some(r) = p.remaining {
        check_remaining(r)?;
    }
    if let Some(Some(r)) = &p.refill {
        r.check().map_err(|e| Error::bad_request(String::from(e)))?;
        if p.remaining == Some(None) {
            return Err(Error::bad_request(
                "refill needs remaining (the quota it refills)",
            ));
        }
    }
    if let Some(Some(c)) = &p.allowed_cidrs {
        check_cidrs(c).map_err(Error::bad_request)?;
    }
    let now = st.records.clock.now();
    if let Some(Some(e)) = p.expires_at {
        if e <= now {
            return Err(Error::bad_request("expires_at is in the past"));
        }
    }

    // A quota change must not interleave with a usage batch (see jobs::usage::flush).
    let _gate = st.gate.lock().await;
    let quota_set = p.remaining.is_some() || p.refill.is_some();
    if quota_set {
        crate::jobs::usage::flush_locked(st).await?;
    }
    let mut tx = st.records.store.begin().await?;
    let old = key_in_tx(&mut tx, ctx, id).await?;
    // The key as a read shows it now: a refill period that began since the store last refilled
    // counts (what is changed below starts from it).
    let old = old.refilled(now).unwrap_or(old);
    if old.revoked_at.is_some() {
        return Err(Error::conflict("the key is revoked and cannot be changed"));
    }
    let ks = tx
        .keyspace(&old.keyspace_id)
        .await?
        .ok_or_else(|| not_found("keyspace", &old.keyspace_id))?;
    let mut k = old.clone();
    if let Some(v) = name {
        k.name = v;
    }
    if let Some(v) = p.owner {
        k.owner = v;
    }
    if let Some(v) = scopes {
        k.scopes = v;
    }
    if let Some(v) = labels {
        k.labels = v;
    }
    if let Some(v) = meta {
        k.meta = v;
    }
    if let Some(v) = enabled {
        k.enabled = v;
    }
    if let Some(list) =
        limits::merged(&old.ratelimits, p.ratelimit, p.ratelimits).map_err(Error::bad_request)?
    {
        k.set_ratelimits(list);
    }
    if let Some(v) = p.allowed_cidrs {
        k.allowed_cidrs = v;
    }
    if let Some(v) = p.expires_at {
        check_lifetime(&ks.policy, k.created_at, v)?;
        k.expires_at = v;
    }
    if k.owner != old.owner {
        if ks.policy.require_owner && k.owner.is_none() {
            return Err(Error::policy("the keyspace policy requires an owner"));
        }
        // Moving a key out of (or into) a disabled identity changes whether it verifies:
        // that is the identity's business, which a token limited to keyspaces may not change.
        if old.owner_disabled || k.owner.is_some() && ctx.keyspaces.is_some() {
            let disabled_new = match &k.owner {
                Some(o) => tx.identity(o).await?.is_some_and(|i| !i.enabled),
                None => false,
            };
            if old.owner_disabled || disabled_new {
                ctx.require_unlimited("moving a key out of or into a disabled identity")?;
            }
        }
        check_owner_limit(&mut tx, &ks, &k.owner, now, Some(&k.id)).await?;
    } else if k.enabled && !old.enabled {
        // Re-enabling makes the key active again: it counts towards the owner's limit.
        check_owner_limit(&mut tx, &ks, &k.owner, now, Some(&k.id)).await?;
    }
    // Setting `remaining` or `refill` sets the quota anew (every node's lease of it is void):
    // `remaining` as given, or as a read shows it now.
    if let Some(v) = p.remaining {
        k.remaining = v;
        match (v, k.refill) {
            // No quota, nothing to refill.
            (None, _) => limits::set_refill(&mut k, None, now),
            // The quota given is that of the period now under way.
            (Some(_), Some(r)) => {
                k.refilled_at =
                    Some(r.period_start(k.refill_anchor.or(k.refilled_at).unwrap_or(now), now));
            }
            (Some(_), None) => {}
        }
    }
    if let Some(r) = p.refill {
        limits::check_refill(r.as_ref(), k.remaining).map_err(Error::bad_request)?;
        limits::set_refill(&mut k, r, now);
    }

    let mut ev = ctx.event(now, AuditAction::KeyUpdate, TargetType::Key, id);
    change(&mut ev.changes, "name", &old.name, &k.name);
    change(&mut ev.changes, "owner", &old.owner, &k.owner);
    change(&mut ev.changes, "scopes", &old.scopes, &k.scopes);
    change(&mut ev.changes, "labels", &old.labels, &k.labels);
    change(&mut ev.changes, "meta", &old.meta, &k.meta);
    change(&mut ev.changes, "enabled", old.enabled, k.enabled);
    change(&mut ev.changes, "ratelimit", old.ratelimit, k.ratelimit);
    if !keyward_core::limits::only_shorthand(&old.ratelimits)
        || !keyward_core::limits::only_shorthand(&k.ratelimits)
    {
        // Beyond what `ratelimit` says (its change is recorded as before).
        change(
            &mut ev.changes,
            "ratelimits",
            &old.ratelimits,
            &k.ratelimits,
        );
    }
    change(&mut ev.changes, "refill", old.refill, k.refill);
    change(
        &mut ev.changes,
        "allowed_cidrs",
        &old.allowed_cidrs,
        &k.allowed_cidrs,
    );
    change(&mut ev.changes, "expires_at", old.expires_at, k.expires_at);
    if p.remaining.is_some() {
        change(&mut ev.changes, "remaining", old.remaining, k.remaining);
    }
    if ev.changes.is_empty() {
        return Ok(old);
    }
    k.updated_at = now;
    tx.update_key(&k).await?;
    if quota_set {
        tx.set_remaining(&k.id, k.remaining).await?;
        tx.set_refill(&k).await?;
    }
    tx.append_audit(ev).await?;
    let mut forget = Forget::keys(st, vec![k.hash]);
    if quota_set {
        forget.quota.push((k.hash, k.remaining));
    }
    tx.commit().await?;
    drop(forget);
    Ok(k)
}

fn revoke_in_place(k: &mut Key, ctx: &Ctx, now: Timestamp, reason: &str, ev: &mut NewEvent) {
    change(&mut ev.changes, "revoked_at", Value::Null, now);
    change(&mut ev.changes, "revoked_by", Value::Null, &ctx.actor);
    change(&mut ev.changes, "revoked_reason", Value::Null, reason);
    k.revoked_at = Some(now);
    k.revoked_by = Some(ctx.actor.clone());
    k.revoked_reason = Some(reason.to_string());
    k.updated_at = now;
}

pub async fn revoke_key(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    id: &KeyId,
    reason: &str,
) -> Result<Key> {
    let ctx = who.ctx();
    check_reason(reason).map_err(Error::bad_request)?;
    let mut tx = st.records.store.begin().await?;
    let mut k = key_in_tx(&mut tx, ctx, id).await?;
    if k.revoked_at.is_some() {
        // Idempotent: the first revocation stands and no second event is written.
        return Ok(k);
    }
    let now = st.records.clock.now();
    let mut ev = ctx.event(now, AuditAction::KeyRevoke, TargetType::Key, id);
    ev.reason = Some(reason.to_string());
    revoke_in_place(&mut k, ctx, now, reason, &mut ev);
    tx.update_key(&k).await?;
    tx.append_audit(ev).await?;
    tx.enqueue(&key_event(WebhookEvent::KeyRevoked, &k, now, Map::new()))
        .await?;
    let _forget = Forget::keys(st, vec![k.hash]);
    tx.commit().await?;
    Ok(k)
}

pub async fn revoke_owner_keys(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    input: BulkRevoke,
) -> Result<Vec<String>> {
    let ctx = who.ctx();
    check_name("owner", &input.owner).map_err(Error::bad_request)?;
    check_reason(&input.reason).map_err(Error::bad_request)?;
    let scope: Option<Vec<String>> = match (&input.keyspace_id, &ctx.keyspaces) {
        (Some(ks), _) => {
            keyspace_seen(&st.records, ctx, ks).await?;
            Some(vec![ks.clone()])
        }
        (None, limit) => limit.clone(),
    };
    let now = st.records.clock.now();
    let mut tx = st.records.store.begin().await?;
    let keys = tx
        .live_keys_of_owner(&input.owner, scope.as_deref(), now)
        .await?;
    // One audit event and webhook per key as for a single revocation, written a few hundred
    // keys per statement: an owner's 10,000 keys are one transaction of a few dozen statements.
    let mut revoked = Vec::with_capacity(keys.len());
    let mut events = Vec::with_capacity(keys.len());
    let mut outbox = Vec::with_capacity(keys.len());
    for mut k in keys {
        let mut ev = ctx.event(now, AuditAction::KeyRevoke, TargetType::Key, &k.id);
        ev.reason = Some(input.reason.clone());
        revoke_in_place(&mut k, ctx, now, &input.reason, &mut ev);
        events.push(ev);
        outbox.push(key_event(WebhookEvent::KeyRevoked, &k, now, Map::new()));
        revoked.push(k);
    }
    tx.revoke_keys(&revoked).await?;
    tx.append_audits(events).await?;
    tx.enqueue_all(&outbox).await?;
    let (ids, hashes): (Vec<String>, Vec<_>) = revoked.into_iter().map(|k| (k.id, k.hash)).unzip();
    let _forget = Forget::keys(st, hashes);
    tx.commit().await?;
    Ok(ids)
}

/// Rotates a key: returns the successor and its plaintext.
pub async fn rotate_key(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    id: &KeyId,
    input: RotateKey,
) -> Result<(Key, Secret)> {
    let ctx = who.ctx();
    if let Some(r) = &input.reason {
        check_reason(r).map_err(Error::bad_request)?;
    }
    if let Some(g) = input.grace_secs {
        if !(0..=MAX_DURATION_SECS).contains(&g) {
            return Err(Error::bad_request(format!(
                "grace_secs must be an integer in 0..{MAX_DURATION_SECS}"
            )));
        }
    }
    // Settle unwritten usage first so the quota that moves to the successor is current.
    let _gate = st.gate.lock().await;
    crate::jobs::usage::flush_locked(st).await?;
    let now = st.records.clock.now();
    let mut tx = st.records.store.begin().await?;
    let old = key_in_tx(&mut tx, ctx, id).await?;
    match old.status(now) {
        KeyStatus::Revoked => {
            return Err(Error::conflict("the key is revoked and cannot be rotated"))
        }
        KeyStatus::Expired => {
            return Err(Error::conflict("the key has expired and cannot be rotated"))
        }
        _ if old.rotated_to.is_some() => {
            return Err(Error::conflict(
                "the key has already been rotated; rotate its successor",
            ))
        }
        _ => {}
    }
    let ks = tx
        .keyspace(&old.keyspace_id)
        .await?
        .ok_or_else(|| not_found("keyspace", &old.keyspace_id))?;
    let grace = match input.grace_secs {
        Some(g) => {
            if let Some(max) = ks.policy.max_grace_secs {
                if g > max {
                    return Err(Error::policy(format!(
                        "grace_secs {g} exceeds the keyspace's max_grace_secs ({max})"
                    )));
                }
            }
            g
        }
        None => ks.policy.default_grace_secs(),
    };
    let lifetime = old
        .expires_at
        .map(|e| (e.millis() - old.created_at.millis()).max(1000) / 1000);
    let lifetime = match (lifetime, ks.policy.max_lifetime_secs) {
        (Some(l), Some(m)) => Some(l.min(m)),
        (l, m) => l.or(m),
    };
    let plaintext = keyformat::generate(&ks.prefix);
    let new = new_key_record(&ks, &plaintext, ctx, now, |k| {
        k.name = old.name.clone();
        k.owner = old.owner.clone();
        k.scopes = old.scopes.clone();
        k.labels = old.labels.clone();
        k.meta = old.meta.clone();
        k.set_ratelimits(old.ratelimits.clone());
        k.allowed_cidrs = old.allowed_cidrs.clone();
        k.remaining = old.remaining;
        k.refill = old.refill;
        k.refill_anchor = old.refill_anchor;
        k.refilled_at = old.refilled_at;
        k.enabled = old.enabled;
        k.rotated_from = Some(old.id.clone());
        k.expires_at = lifetime.map(|l| now.plus_secs(l));
    })?;

    let mut k = old.clone();
    let mut ev = ctx.event(now, AuditAction::KeyRotate, TargetType::Key, id);
    ev.reason = input.reason.clone();
    change(&mut ev.changes, "rotated_to", Value::Null, &new.id);
    k.rotated_to = Some(new.id.clone());
    k.updated_at = now;
    if grace == 0 {
        let reason = input
            .reason
            .clone()
            .unwrap_or_else(|| "rotated".to_string());
        revoke_in_place(&mut k, ctx, now, &reason, &mut ev);
    } else {
        let end = now.plus_secs(grace);
        let new_expiry = Some(k.expires_at.map_or(end, |e| e.min(end)));
        change(&mut ev.changes, "expires_at", k.expires_at, new_expiry);
        k.expires_at = new_expiry;
    }
    tx.insert_key(&new).await?;
    tx.update_key(&k).await?;
    tx.copy_sources(&k.id, &new.id).await?;
    if k.remaining.is_some() {
        // The quota (leases included) moved to the successor: void the old key's leases.
        tx.set_remaining(&k.id, Some(0)).await?;
    }
    tx.append_audit(ev).await?;
    let mut extra = Map::new();
    extra.insert(
        "successor".into(),
        json!(keyward_core::model::KeyObject::new(&new, now)),
    );
    tx.enqueue(&key_event(WebhookEvent::KeyRotated, &k, now, extra))
        .await?;
    let mut forget = Forget::keys(st, vec![k.hash, new.hash]);
    if k.remaining.is_some() {
        forget.quota.push((k.hash, Some(0)));
    }
    tx.commit().await?;
    drop(forget);
    Ok((new, plaintext))
}

// ---------------------------------------------------------------- tokens

pub async fn create_token(
    st: &Records,
    who: &Allowed<'_, ManageTokens>,
    input: CreateToken,
) -> Result<(Token, Secret)> {
    let ctx = who.ctx();
    check_name("name", &input.name).map_err(Error::bad_request)?;
    if let Some(t) = input.ttl_secs {
        if !(1..=MAX_DURATION_SECS).contains(&t) {
            return Err(Error::bad_request(format!(
                "ttl_secs must be an integer in 1..{MAX_DURATION_SECS}"
            )));
        }
    }
    if let Some(ids) = &input.keyspace_ids {
        if ids.is_empty() {
            return Err(Error::bad_request(
                "keyspace_ids may not be empty; omit it (or null) for an unlimited token",
            ));
        }
    }
    let now = st.clock.now();
    let mut tx = st.store.begin().await?;
    if let Some(ids) = &input.keyspace_ids {
        for id in ids {
            if KeyspaceId::parse(id).is_none() || tx.keyspace(id).await?.is_none() {
                return Err(not_found("keyspace", id));
            }
        }
    }
    let plaintext = keyformat::generate(TOKEN_PREFIX);
    let mut keyspace_ids = input.keyspace_ids;
    if let Some(ids) = keyspace_ids.as_mut() {
        dedup_in_order(ids);
    }
    let token = Token {
        id: new_id("tok", now),
        name: input.name,
        role: input.role,
        keyspace_ids,
        created_at: now,
        created_by: ctx.actor.clone(),
        expires_at: input.ttl_secs.map(|t| now.plus_secs(t)),
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
        last_used_at: None,
    };
    tx.insert_token(&token, &KeyHash::of(plaintext.expose()))
        .await?;
    let mut ev = ctx.event(now, AuditAction::TokenCreate, TargetType::Token, &token.id);
    change(&mut ev.changes, "name", Value::Null, &token.name);
    change(&mut ev.changes, "role", Value::Null, token.role);
    change(
        &mut ev.changes,
        "keyspace_ids",
        Value::Null,
        &token.keyspace_ids,
    );
    change(&mut ev.changes, "expires_at", Value::Null, token.expires_at);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok((token, plaintext))
}

pub async fn revoke_token(
    st: &Records,
    who: &Allowed<'_, ManageTokens>,
    id: &TokenId,
    reason: &str,
) -> Result<Token> {
    let ctx = who.ctx();
    check_reason(reason).map_err(Error::bad_request)?;
    let mut tx = st.store.begin().await?;
    let mut t = tx.token(id).await?.ok_or_else(|| not_found("token", id))?;
    // From here every way out forgets the tokens this node kept (revoked here or elsewhere).
    let _forget = crate::state::ForgetTokens(&st.tokens);
    if t.revoked_at.is_some() {
        return Ok(t);
    }
    let now = st.clock.now();
    let mut ev = ctx.event(now, AuditAction::TokenRevoke, TargetType::Token, id);
    ev.reason = Some(reason.to_string());
    change(&mut ev.changes, "revoked_at", Value::Null, now);
    t.revoked_at = Some(now);
    t.revoked_by = Some(ctx.actor.clone());
    t.revoked_reason = Some(reason.to_string());
    tx.update_token(&t).await?;
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(t)
}

// ---------------------------------------------------------------- webhooks

fn check_webhook_url(url: &str, allow_private: bool) -> Result<()> {
    if keyformat::contains_key_material(url) {
        return Err(Error::bad_request(
            "url contains what looks like an API key or token; keyward never stores plaintext keys",
        ));
    }
    crate::outbound::check_url(url, allow_private).map_err(Error::bad_request)
}

/// Creates a webhook; returns it with its signing secret (shown once).
pub async fn create_webhook(
    st: &Control,
    who: &Allowed<'_, ManageTokens>,
    input: CreateWebhook,
) -> Result<(keyward_core::model::Webhook, Secret)> {
    let ctx = who.ctx();
    ctx.require_unlimited("managing webhooks")?;
    check_webhook_url(&input.url, st.webhook_allow_private)?;
    if input.events.is_empty() {
        return Err(Error::bad_request(
            "events must name at least one event type",
        ));
    }
    for e in &input.events {
        if WebhookEvent::parse(e).is_none() {
            let known: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
            return Err(Error::bad_request(format!(
                "unknown event type '{}'; known: {}",
                keyformat::shown(e),
                known.join(", ")
            )));
        }
    }
    let mut events = input.events;
    dedup_in_order(&mut events);
    let now = st.records.clock.now();
    let mut tx = st.records.store.begin().await?;
    if let Some(ks) = &input.keyspace_id {
        if KeyspaceId::parse(ks).is_none() || tx.keyspace(ks).await?.is_none() {
            return Err(not_found("keyspace", ks));
        }
    }
    let hook = keyward_core::model::Webhook {
        id: new_id("wh", now),
        url: input.url,
        events,
        keyspace_id: input.keyspace_id,
        created_at: now,
        created_by: ctx.actor.clone(),
    };
    let secret = Secret::new(format!("whsec_{}", keyformat::base62_random(32)));
    // Sealed at rest when the server has a master key (see keyward_core::seal).
    let stored = match &st.master_key {
        Some(k) => k.seal(secret.expose(), &hook.id).map_err(Error::internal)?,
        None => secret.expose().to_string(),
    };
    tx.insert_webhook(&hook, &stored).await?;
    let mut ev = ctx.event(
        now,
        AuditAction::WebhookCreate,
        TargetType::Webhook,
        &hook.id,
    );
    change(&mut ev.changes, "url", Value::Null, &hook.url);
    change(&mut ev.changes, "events", Value::Null, &hook.events);
    change(
        &mut ev.changes,
        "keyspace_id",
        Value::Null,
        &hook.keyspace_id,
    );
    tx.append_audit(ev).await?;
    tx.commit().await?;
    st.webhook_wake.notify_one();
    Ok((hook, secret))
}

pub async fn delete_webhook(
    st: &Control,
    who: &Allowed<'_, ManageTokens>,
    id: &WebhookId,
) -> Result<()> {
    let ctx = who.ctx();
    ctx.require_unlimited("managing webhooks")?;
    let mut tx = st.records.store.begin().await?;
    let hook = tx
        .webhook(id)
        .await?
        .ok_or_else(|| not_found("webhook", id))?;
    tx.delete_webhook(id).await?;
    let now = st.records.clock.now();
    let mut ev = ctx.event(now, AuditAction::WebhookDelete, TargetType::Webhook, id);
    change(&mut ev.changes, "url", &hook.url, Value::Null);
    tx.append_audit(ev).await?;
    tx.commit().await?;
    Ok(())
}

/// Drops repeated items, keeping the first of each in the order given (a list comes back as it
/// was sent, less its repeats).
fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.clone()));
}

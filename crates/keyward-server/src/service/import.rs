//! Importing keys issued by another system (`POST /v1/keyspaces/{id}/keys/import`): each record
//! is checked whole before the store is touched, then the batch is one transaction with one
//! `keys.import` audit event; any refused record refuses the batch.
//!
//! Invariants:
//! - A plaintext is hashed on arrival and dropped: only its SHA-256 (and its display ends) is
//!   stored. A salted hash is stored as given, with a random placeholder in `keys.hash` (the
//!   SHA-256 of no known string) until its first verification replaces it.
//! - A record whose `external_id` exists in the keyspace with the same fingerprint is skipped,
//!   so the same file imported twice creates nothing twice; with another fingerprint it is a
//!   409, as is a key (or lookup prefix) another key already holds.
//! - After the commit this node's verifier forgets the imported hashes and any cached "no such
//!   key"; the other nodes do the same from the change feed (the keyspace's feed row).

use keyward_core::api::{HashAlgorithm, ImportKeys, ImportRecord, Imported, MAX_IMPORT_BATCH};
use keyward_core::id::KeyspaceId;
use keyward_core::keyformat::{self, foreign_shape, KeyHash, FOREIGN_KEY_LEN, TOKEN_PREFIX};
use keyward_core::model::{
    check_cidrs, check_labels, check_meta, check_name, check_scopes, Key, Keyspace,
};
use keyward_core::time::Timestamp;
use keyward_store::{KeyImport, StoreTx};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    change, check_lifetime, check_owner, check_owner_limit, check_remaining, not_found, Forget,
};
use crate::authz::{Allowed, Ctx, WriteKeys, WriteKeyspaces};
use crate::error::{Error, Result};
use crate::slowhash;
use crate::state::Control;
use keyward_core::kinds::{AuditAction, TargetType};

/// Lengths of a salted hash's lookup prefix (long enough not to be guessed by accident, short
/// enough never to be most of a key).
const LOOKUP_LEN: std::ops::RangeInclusive<usize> = 8..=32;
/// What a key shows of its lookup prefix.
const LOOKUP_SHOWN: usize = 12;

/// A record checked and turned into what is stored.
struct Prepared {
    key: Key,
    import: KeyImport,
    /// `plaintext` or the hash algorithm (for the audit event).
    format: &'static str,
}

fn bad(i: usize, field: &str, m: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("keys[{i}].{field}: {m}"))
}

/// What a record shows of its key: keyward's display ends for keyward keys; for others up to
/// six leading characters (never more than a sixth of the key) and the last two.
fn display_ends(plaintext: &str) -> (String, String) {
    if let Some(p) = keyformat::parse(plaintext) {
        return (p.start(), p.end());
    }
    let n = plaintext.len();
    let start = plaintext[..(n / 6).min(6)].to_string();
    let end = if n >= 16 {
        plaintext[n - 2..].to_string()
    } else {
        String::new()
    };
    (start, end)
}

fn prepare(
    i: usize,
    r: ImportRecord,
    ks: &Keyspace,
    ctx: &Ctx,
    now: Timestamp,
) -> Result<Prepared> {
    let format = match (&r.plaintext, r.algorithm) {
        (Some(_), _) => "plaintext",
        (None, Some(a)) => a.as_str(),
        (None, None) => "",
    };
    let name = r.name.unwrap_or_else(|| "imported key".into());
    check_name("name", &name).map_err(|e| bad(i, "name", e))?;
    check_owner(&r.owner).map_err(|e| bad(i, "owner", &e.message))?;
    check_scopes(&r.scopes).map_err(|e| bad(i, "scopes", e))?;
    check_labels(&r.labels).map_err(|e| bad(i, "labels", e))?;
    check_meta(&r.meta).map_err(|e| bad(i, "meta", e))?;
    let ratelimits =
        super::limits::merged(&[], r.ratelimit.map(Some), r.ratelimits.clone().map(Some))
            .map_err(|e| bad(i, "ratelimits", e))?
            .unwrap_or_default();
    check_remaining(r.remaining).map_err(|e| bad(i, "remaining", &e.message))?;
    super::limits::check_refill(r.refill.as_ref(), r.remaining).map_err(|e| bad(i, "refill", e))?;
    if let Some(c) = &r.allowed_cidrs {
        check_cidrs(c).map_err(|e| bad(i, "allowed_cidrs", e))?;
    }
    if let Some(x) = &r.external_id {
        check_name("external_id", x).map_err(|e| bad(i, "external_id", e))?;
        if keyformat::parse(x).is_some() {
            return Err(bad(
                i,
                "external_id",
                "looks like a key; give the old system's id",
            ));
        }
    }
    let created_at = r.created_at.unwrap_or(now);
    if created_at > now {
        return Err(bad(i, "created_at", "is in the future"));
    }
    if let Some(u) = r.last_used_at {
        if u > now || u < created_at {
            return Err(bad(
                i,
                "last_used_at",
                "must lie between created_at and now",
            ));
        }
    }
    if let Some(e) = r.expires_at {
        if e <= now {
            return Err(bad(
                i,
                "expires_at",
                "is in the past (an expired key is not imported)",
            ));
        }
    }
    // The key itself: exactly one of plaintext or hash.
    let (hash, fingerprint, keyward_format, lookup, slow_hash, (start, end)) =
        match (r.plaintext, r.hash, r.algorithm) {
            (Some(_), Some(_), _) => {
                return Err(bad(i, "plaintext", "give plaintext or hash, not both"))
            }
            (None, None, _) => return Err(bad(i, "plaintext", "give plaintext or hash")),
            (Some(_), None, Some(_)) => {
                return Err(bad(i, "algorithm", "goes with hash, not plaintext"))
            }
            (Some(p), None, None) => {
                let p = p.expose();
                let native = keyformat::parse(p);
                if native.as_ref().is_some_and(|n| n.prefix == TOKEN_PREFIX) {
                    return Err(bad(i, "plaintext", "is a management token, not a key"));
                }
                if native.is_none() && !foreign_shape(p) {
                    return Err(bad(
                        i,
                        "plaintext",
                        format!(
                            "must be {}..{} visible ASCII characters without spaces",
                            FOREIGN_KEY_LEN.start(),
                            FOREIGN_KEY_LEN.end()
                        ),
                    ));
                }
                if r.lookup.is_some() {
                    return Err(bad(i, "lookup", "goes with a salted hash, not plaintext"));
                }
                let h = KeyHash::of(p);
                (h, h.0, native.is_some(), None, None, display_ends(p))
            }
            (None, Some(_), None) => {
                return Err(bad(
                    i,
                    "algorithm",
                    "is required with hash (sha256, argon2id, bcrypt or pbkdf2-sha256)",
                ))
            }
            (None, Some(h), Some(HashAlgorithm::Sha256)) => {
                let bytes = slowhash::parse_sha256(&h).ok_or_else(|| {
                    bad(i, "hash", "is not a SHA-256 as 64 hex characters or base64")
                })?;
                let start = match r.lookup {
                    Some(l) => {
                        check_lookup(i, &l)?;
                        l.chars().take(LOOKUP_SHOWN).collect()
                    }
                    None => String::new(),
                };
                (
                    KeyHash(bytes),
                    bytes,
                    false,
                    None,
                    None,
                    (start, String::new()),
                )
            }
            (None, Some(h), Some(alg)) => {
                slowhash::check(alg, &h).map_err(|e| bad(i, "hash", e))?;
                let lookup = r.lookup.ok_or_else(|| {
                    bad(
                    i,
                    "lookup",
                    "is required with a salted hash: the key's leading characters that identify it",
                )
                })?;
                check_lookup(i, &lookup)?;
                let mut placeholder = [0u8; 32];
                getrandom::fill(&mut placeholder)
                    .map_err(|_| Error::internal("the random number generator failed"))?;
                let fp: [u8; 32] = Sha256::digest(format!("{}:{h}", alg.as_str())).into();
                (
                    KeyHash(placeholder),
                    fp,
                    false,
                    Some(lookup.clone()),
                    Some(h),
                    (lookup, String::new()),
                )
            }
        };
    let mut key = Key::with_hash(hash, start, end, &ks.id, now, ctx.actor.clone());
    key.name = name;
    key.owner = r.owner;
    key.scopes = r.scopes;
    key.labels = r.labels;
    key.meta = r.meta;
    key.expires_at = r.expires_at;
    key.set_ratelimits(ratelimits);
    key.remaining = r.remaining;
    super::limits::set_refill(&mut key, r.refill, now);
    key.allowed_cidrs = r.allowed_cidrs;
    key.enabled = r.enabled.unwrap_or(true);
    key.created_at = created_at;
    key.updated_at = now;
    key.last_used_at = r.last_used_at;
    key.external_id = r.external_id;
    let import = KeyImport {
        key_id: key.id.clone(),
        keyspace_id: ks.id.clone(),
        fingerprint,
        keyward_format,
        lookup,
        slow_hash,
    };
    Ok(Prepared {
        key,
        import,
        format,
    })
}

fn check_lookup(i: usize, l: &str) -> Result<()> {
    if !LOOKUP_LEN.contains(&l.len()) || !l.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
        return Err(bad(
            i,
            "lookup",
            format!(
                "must be {}..{} visible ASCII characters",
                LOOKUP_LEN.start(),
                LOOKUP_LEN.end()
            ),
        ));
    }
    Ok(())
}

pub async fn import_keys(
    st: &Control,
    who: &Allowed<'_, WriteKeys>,
    keyspace_id: &KeyspaceId,
    input: ImportKeys,
) -> Result<Imported> {
    let ctx = who.ctx();
    if input.keys.is_empty() || input.keys.len() > MAX_IMPORT_BATCH {
        return Err(Error::bad_request(format!(
            "keys must hold 1..{MAX_IMPORT_BATCH} records (send more in several requests)"
        )));
    }
    if !ctx.sees(keyspace_id) {
        return Err(not_found("keyspace", keyspace_id));
    }
    if input.allow_policy_violations {
        // An exemption from the keyspace's policy is the policy owner's call.
        ctx.allow::<WriteKeyspaces>().map_err(|_| {
            Error::forbidden(
                "allow_policy_violations needs the right to change keyspaces (role admin)",
            )
        })?;
    }
    let now = st.records.clock.now();
    let ks = st
        .records
        .store
        .keyspace(keyspace_id)
        .await?
        .ok_or_else(|| not_found("keyspace", keyspace_id))?;
    // Every record is checked before the store is written.
    let mut prepared = Vec::with_capacity(input.keys.len());
    for (i, r) in input.keys.into_iter().enumerate() {
        prepared.push(prepare(i, r, &ks, ctx, now)?);
    }
    let mut tx = st.records.store.begin().await?;
    let ks = tx
        .keyspace(keyspace_id)
        .await?
        .ok_or_else(|| not_found("keyspace", keyspace_id))?;
    let mut answer = Vec::with_capacity(prepared.len());
    let mut created = Vec::new();
    for (i, p) in prepared.into_iter().enumerate() {
        if let Some(x) = &p.key.external_id {
            if let Some((_, fp)) = tx.key_by_external_id(&ks.id, x).await? {
                if fp.as_deref() == Some(&p.import.fingerprint[..]) {
                    answer.push("skipped".to_string());
                    continue;
                }
                return Err(Error::conflict(format!(
                    "keys[{i}].external_id: was imported into this keyspace before, with another key"
                )));
            }
        }
        match &p.import.lookup {
            Some(l) if tx.lookup_conflicts(l).await? => {
                return Err(Error::conflict(format!(
                    "keys[{i}].lookup: another key's lookup prefix is the same, or one of the two starts the other"
                )))
            }
            Some(_) => {}
            None => {
                if tx.hash_taken(&p.key.hash).await? {
                    return Err(Error::conflict(format!(
                        "keys[{i}].{}: another key already is this key",
                        if p.format == "plaintext" {
                            "plaintext"
                        } else {
                            "hash"
                        }
                    )));
                }
            }
        }
        if !input.allow_policy_violations {
            police(&mut tx, &ks, &p.key, now)
                .await
                .map_err(|e| {
                    Error::policy(format!(
                        "keys[{i}]: {} (allow_policy_violations imports it as it is; the inventory report flags it)",
                        &e.message
                    ))
                })?;
        }
        tx.insert_key(&p.key).await?;
        tx.insert_import(&p.import).await?;
        answer.push(p.key.id.clone());
        created.push(p);
    }
    if created.is_empty() {
        // Nothing changed: no event, nothing to forget.
        let skipped = answer.len() as u64;
        return Ok(Imported {
            keys: answer,
            created: 0,
            skipped,
        });
    }
    let mut ev = ctx.event(now, AuditAction::KeysImport, TargetType::Keyspace, &ks.id);
    change(&mut ev.changes, "count", Value::Null, created.len());
    change(
        &mut ev.changes,
        "key_ids",
        Value::Null,
        created
            .iter()
            .map(|p| p.key.id.as_str())
            .collect::<Vec<_>>(),
    );
    let external: Vec<&str> = created
        .iter()
        .filter_map(|p| p.key.external_id.as_deref())
        .collect();
    if !external.is_empty() {
        change(&mut ev.changes, "external_ids", Value::Null, external);
    }
    let mut algorithms: Vec<&str> = created.iter().map(|p| p.format).collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    change(&mut ev.changes, "formats", Value::Null, json!(algorithms));
    if input.allow_policy_violations {
        ev.changes
            .insert("allow_policy_violations".into(), json!([null, true]));
    }
    tx.append_audit(ev).await?;
    // The keyspace's feed row tells the other nodes to forget what they cached as missing.
    tx.announce_import(&ks.id, now).await?;
    let foreign = created.iter().any(|p| !p.import.keyward_format);
    let _forget = Forget::keys(st, created.iter().map(|p| p.key.hash).collect());
    let _announce = Announce(st, foreign);
    tx.commit().await?;
    let n = created.len() as u64;
    Ok(Imported {
        skipped: answer.len() as u64 - n,
        keys: answer,
        created: n,
    })
}

/// On drop, this node's verifier learns that keys were imported (see `Forget` for why on drop).
struct Announce<'a>(&'a Control, bool);

impl Drop for Announce<'_> {
    fn drop(&mut self) {
        self.0.verifier.imported(Some(self.1));
    }
}

/// The keyspace policy for one imported key: an owner if required, the lifetime counted from
/// the key's own `created_at`, and the keys per owner (counting this batch's).
async fn police(tx: &mut Box<dyn StoreTx>, ks: &Keyspace, key: &Key, now: Timestamp) -> Result<()> {
    if ks.policy.require_owner && key.owner.is_none() {
        return Err(Error::policy("the keyspace policy requires an owner"));
    }
    check_lifetime(&ks.policy, key.created_at, key.expires_at)?;
    if key.enabled {
        check_owner_limit(tx, ks, &key.owner, now, None).await?;
    }
    Ok(())
}

//! The management API under `/v1`: keyspaces, keys, tokens and the audit trail.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_core::kinds::Granularity;
use keyward_core::model::{AuditEvent, Key, KeyObject, KeyStatus};
use keyward_store::{AuditFilter, KeyFilter, Page};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::authz;
use crate::error::{Error, Result};
use crate::http::extract::{
    decode_cursor, encode_cursor, not_null, time_cursor, Auth, ImportBody, JsonBody, Params,
};
use crate::service;
use crate::state::AppState;

fn list<T: serde::Serialize>(items: Vec<T>, next: Option<String>) -> Json<Value> {
    Json(json!({"items": items, "next_cursor": next}))
}

/// Answers one page of a list fetched with `limit + 1` rows: the items and, when there are
/// more, the cursor of the last one (`position` gives its place in the list's order).
fn page<T: serde::Serialize>(
    rows: Vec<T>,
    limit: i64,
    fingerprint: &str,
    position: impl Fn(&T) -> String,
) -> Json<Value> {
    let (rows, more) = split_page(rows, limit);
    let next = more
        .then(|| {
            rows.last()
                .map(|r| encode_cursor(&position(r), fingerprint))
        })
        .flatten();
    list(rows, next)
}

/// Fetches `limit + 1` rows; returns the page and whether there are more.
fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    (rows, more)
}

fn key_json(k: &Key, st: &AppState) -> Value {
    json!(KeyObject::new(k, st.clock().now()))
}

// ---------------------------------------------------------------- keyspaces

pub(crate) async fn create_keyspace(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::CreateKeyspaces>()?;
    let input = body.parse()?;
    let ks = service::create_keyspace(&st.control, &who, input).await?;
    Ok((StatusCode::CREATED, Json(ks)).into_response())
}

pub(crate) async fn list_keyspaces(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let limit = params.take_limit()?;
    let fp = "keyspaces";
    let after = time_cursor(params.take_cursor()?, fp)?;
    params.finish()?;
    let rows = service::list_keyspaces(
        st.records(),
        &who,
        &Page {
            limit: limit + 1,
            after,
        },
    )
    .await?;
    Ok(page(rows, limit, fp, |k| {
        format!("{}:{}", k.created_at.millis(), k.id)
    }))
}

pub(crate) async fn get_keyspace(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    Ok(
        Json(service::get_keyspace(st.records(), &who, &service::keyspace_id(&id)?).await?)
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchKeyspaceBody {
    name: Option<String>,
    policy: Option<keyward_core::policy::PolicyPatch>,
    // Optional, but not nullable (`[]` clears the rules).
    #[serde(
        default,
        deserialize_with = "keyward_core::routes::deserialize_some_rules"
    )]
    routes: Option<Vec<keyward_core::routes::RouteRule>>,
    #[serde(default, deserialize_with = "not_null")]
    unmatched: Option<keyward_core::routes::Unmatched>,
}

pub(crate) async fn patch_keyspace(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeyspaces>()?;
    if let Some(b) = &body.0 {
        if serde_json::from_slice::<Value>(b)
            .ok()
            .and_then(|v| v.get("prefix").map(|_| ()))
            .is_some()
        {
            return Err(Error::bad_request("a keyspace's prefix cannot be changed"));
        }
    }
    let b: PatchKeyspaceBody = body.parse()?;
    let ks = service::update_keyspace(
        &st.control,
        &who,
        &service::keyspace_id(&id)?,
        service::PatchKeyspace {
            name: b.name,
            policy: b.policy,
            routes: b.routes,
            unmatched: b.unmatched,
        },
    )
    .await?;
    Ok(Json(ks).into_response())
}

// ---------------------------------------------------------------- keys

pub(crate) async fn create_key(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let input = body.parse()?;
    let (key, plaintext) = service::create_key(&st.control, &who, input).await?;
    let mut v = key_json(&key, &st);
    v["key"] = json!(plaintext.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

// ---------------------------------------------------------------- identities

pub(crate) async fn create_identity(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let input = body.parse()?;
    let i = service::create_identity(&st.control, &who, input).await?;
    Ok((StatusCode::CREATED, Json(i)).into_response())
}

pub(crate) async fn list_identities(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let limit = params.take_limit()?;
    let fp = "identities";
    let after = time_cursor(params.take_cursor()?, fp)?;
    params.finish()?;
    let rows = service::list_identities(
        st.records(),
        &who,
        &Page {
            limit: limit + 1,
            after,
        },
    )
    .await?;
    Ok(page(rows, limit, fp, |i| {
        format!("{}:{}", i.created_at.millis(), i.id)
    }))
}

pub(crate) async fn get_identity(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    Ok(Json(service::get_identity(st.records(), &who, &id).await?).into_response())
}

pub(crate) async fn patch_identity(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    if let Some(b) = &body.0 {
        if serde_json::from_slice::<Value>(b)
            .ok()
            .and_then(|v| v.get("id").map(|_| ()))
            .is_some()
        {
            return Err(Error::bad_request(
                "an identity's id cannot be changed (it is its keys' owner)",
            ));
        }
    }
    let input = body.parse()?;
    Ok(Json(service::update_identity(&st.control, &who, &id, input).await?).into_response())
}

pub(crate) async fn delete_identity(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    service::delete_identity(&st.control, &who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The summed usage of the identity's keys: the parameters and answer of a key's usage, with
/// `identity_id` in place of `key_id`.
pub(crate) async fn identity_usage(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let g = granularity(&mut params)?;
    let (from, to) = range(&mut params, st.clock().now())?;
    check_span(g, from, to)?;
    params.finish()?;
    let (identity, buckets) = service::identity_usage(st.records(), &who, &id, g, from, to).await?;
    let (series, totals) = usage_series(&buckets);
    Ok(Json(
        json!({"identity_id": identity.id, "granularity": g, "from": from, "to": to, "buckets": series, "totals": totals}),
    ))
}

/// `POST /v1/keyspaces/{id}/keys/import`: keys issued elsewhere, in batches of at most 1,000.
pub(crate) async fn import_keys(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ImportBody(body): ImportBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let id = service::keyspace_id(&id)?;
    let input = body.parse()?;
    let answer = service::import_keys(&st.control, &who, &id, input).await?;
    let status = if answer.created > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

pub(crate) async fn list_keys(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let limit = params.take_limit()?;
    let cursor = params.take_cursor()?;
    let keyspace_id = params.take("keyspace_id")?;
    let owner = params.take("owner")?;
    let status = params
        .take("status")?
        .map(|s| {
            KeyStatus::parse(&s).ok_or_else(|| {
                Error::bad_request(
                    "status must be one of active, rotating, disabled, expired, revoked",
                )
            })
        })
        .transpose()?;
    let label = params
        .take("label")?
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::bad_request("label must be name:value"))
        })
        .transpose()?;
    let q = params.take("q")?;
    let unused_for_secs = params.take_int("unused_for_secs", 0)?;
    params.finish()?;
    let fp =
        format!("keys|{keyspace_id:?}|{owner:?}|{status:?}|{label:?}|{q:?}|{unused_for_secs:?}");
    let after = time_cursor(cursor, &fp)?;
    let filter = KeyFilter {
        keyspace_ids: keyspace_id.map(|id| vec![id]),
        owner,
        status,
        label,
        name_contains: q,
        unused_for_secs,
        now: st.clock().now(),
        page: Page {
            limit: limit + 1,
            after,
        },
    };
    let rows = service::list_keys(st.records(), &who, filter).await?;
    let (rows, more) = split_page(rows, limit);
    let next = more
        .then(|| {
            rows.last()
                .map(|k| encode_cursor(&format!("{}:{}", k.created_at.millis(), k.id), &fp))
        })
        .flatten();
    let items: Vec<Value> = rows.iter().map(|k| key_json(k, &st)).collect();
    Ok(list(items, next))
}

pub(crate) async fn get_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let k = service::get_key(st.records(), &who, &service::key_id(&id)?).await?;
    Ok(Json(key_json(&k, &st)))
}

pub(crate) async fn patch_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let p = body.parse()?;
    let k = service::update_key(&st.control, &who, &service::key_id(&id)?, p).await?;
    Ok(Json(key_json(&k, &st)))
}

use keyward_core::api::Revoke as ReasonBody;

pub(crate) async fn revoke_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let b: ReasonBody = body.parse()?;
    let k = service::revoke_key(&st.control, &who, &service::key_id(&id)?, &b.reason).await?;
    Ok(Json(key_json(&k, &st)))
}

pub(crate) async fn revoke_owner(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let input = body.parse()?;
    let ids = service::revoke_owner_keys(&st.control, &who, input).await?;
    Ok(Json(json!({"revoked": ids.len(), "key_ids": ids})))
}

pub(crate) async fn rotate_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let input = body.parse_or_default()?;
    let (key, plaintext) =
        service::rotate_key(&st.control, &who, &service::key_id(&id)?, input).await?;
    let mut v = key_json(&key, &st);
    v["key"] = json!(plaintext.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

// ---------------------------------------------------------------- tokens

pub(crate) async fn create_token(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let input = body.parse()?;
    let (token, plaintext) = service::create_token(st.records(), &who, input).await?;
    let mut v = json!(token);
    v["token"] = json!(plaintext.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(crate) async fn list_tokens(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let limit = params.take_limit()?;
    let fp = "tokens";
    let after = time_cursor(params.take_cursor()?, fp)?;
    params.finish()?;
    let rows = service::list_tokens(
        st.records(),
        &who,
        &Page {
            limit: limit + 1,
            after,
        },
    )
    .await?;
    Ok(page(rows, limit, fp, |t| {
        format!("{}:{}", t.created_at.millis(), t.id)
    }))
}

pub(crate) async fn revoke_token(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let b: ReasonBody = body.parse()?;
    Ok(
        Json(service::revoke_token(st.records(), &who, &service::token_id(&id)?, &b.reason).await?)
            .into_response(),
    )
}

// ---------------------------------------------------------------- audit

pub(crate) async fn list_audit(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let limit = params.take_limit()?;
    let cursor = params.take_cursor()?;
    let mut f = AuditFilter {
        target_id: params.take("target_id")?,
        actor_id: params.take("actor_id")?,
        action: params.take("action")?,
        from: params.take_time("from")?,
        to: params.take_time("to")?,
        page: Page {
            limit: limit + 1,
            after: None,
        },
    };
    params.finish()?;
    let fp = format!(
        "audit|{:?}|{:?}|{:?}|{:?}|{:?}",
        f.target_id, f.actor_id, f.action, f.from, f.to
    );
    if let Some(c) = cursor {
        let pos = decode_cursor(&c, &fp)?;
        f.page.after = Some(
            pos.parse()
                .map_err(|_| Error::bad_request("cursor is not valid for this list"))?,
        );
    }
    let rows = service::list_audit(st.records(), &who, &f).await?;
    Ok(page(rows, limit, &fp, |e| e.seq.to_string()))
}

pub(crate) async fn verify_audit(State(st): State<AppState>, auth: Auth) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    Ok(Json(json!(service::check_chain(st.records(), &who).await?)))
}

/// Audit CSV cells: quoted, and safe to open in a spreadsheet (see `reports::csv_field`).
fn csv_field(s: &str) -> String {
    crate::reports::csv_field(s)
}

const AUDIT_CSV_HEADER: &str = "id,seq,at,actor_type,actor_id,actor_name,action,target_type,target_id,reason,request_id,ip,changes,prev_hash,hash\n";

fn audit_csv_row(e: &AuditEvent) -> String {
    let fields = [
        e.id.clone(),
        e.seq.to_string(),
        e.at.to_rfc3339(),
        e.actor.kind.as_str().to_string(),
        e.actor.id.clone(),
        e.actor.name.clone(),
        e.action.clone(),
        e.target_type.clone(),
        e.target_id.clone(),
        e.reason.clone().unwrap_or_default(),
        e.request_id.clone().unwrap_or_default(),
        e.ip.clone().unwrap_or_default(),
        serde_json::to_string(&e.changes).unwrap_or_default(),
        e.prev_hash.clone(),
        e.hash.clone(),
    ];
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Streams the whole trail, oldest first, a page at a time.
pub(crate) async fn export_audit(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let format = params.take("format")?.unwrap_or_else(|| "jsonl".into());
    params.finish()?;
    let csv = match format.as_str() {
        "jsonl" => false,
        "csv" => true,
        _ => return Err(Error::bad_request("format must be jsonl or csv")),
    };
    // Read the first page now so an unreachable store is a clean 503, not a cut stream.
    let reader = std::sync::Arc::new(service::audit_reader(st.records(), &who));
    let first = reader.after(0, 1000).await?;
    let header = if csv {
        Some(AUDIT_CSV_HEADER.to_string())
    } else {
        None
    };
    let stream =
        futures_util::stream::unfold((Some(first), 0i64, header), move |(page, after, header)| {
            let reader = reader.clone();
            async move {
                if let Some(h) = header {
                    return Some((Ok::<_, std::io::Error>(h), (page, after, None)));
                }
                let page = match page {
                    Some(p) => p,
                    None => match reader.after(after, 1000).await {
                        Ok(p) => p,
                        Err(e) => {
                            return Some((
                                Err(std::io::Error::other(e.message)),
                                (Some(Vec::new()), i64::MAX, None),
                            ))
                        }
                    },
                };
                let last = page.last()?.seq;
                let mut chunk = String::new();
                for e in &page {
                    if csv {
                        chunk.push_str(&audit_csv_row(e));
                    } else {
                        chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
                        chunk.push('\n');
                    }
                }
                Some((Ok(chunk), (None, last, None)))
            }
        });
    let ctype = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok(([(header::CONTENT_TYPE, ctype)], Body::from_stream(stream)).into_response())
}

// ---------------------------------------------------------------- webhooks

pub(crate) async fn create_webhook(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let input = body.parse()?;
    let (hook, secret) = service::create_webhook(&st.control, &who, input).await?;
    let mut v = json!(hook);
    v["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(crate) async fn list_webhooks(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let limit = params.take_limit()?;
    let fp = "webhooks";
    let after = time_cursor(params.take_cursor()?, fp)?;
    params.finish()?;
    let rows = service::list_webhooks(
        st.records(),
        &who,
        &Page {
            limit: limit + 1,
            after,
        },
    )
    .await?;
    Ok(page(rows, limit, fp, |w| {
        format!("{}:{}", w.created_at.millis(), w.id)
    }))
}

pub(crate) async fn delete_webhook(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    service::delete_webhook(&st.control, &who, &service::webhook_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn list_deliveries(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let limit = params.take_limit()?;
    let fp = format!("deliveries|{id}");
    let after = time_cursor(params.take_cursor()?, &fp)?;
    params.finish()?;
    let rows = service::list_deliveries(
        st.records(),
        &who,
        &service::webhook_id(&id)?,
        &Page {
            limit: limit + 1,
            after,
        },
    )
    .await?;
    Ok(page(rows, limit, &fp, |a| {
        format!("{}:{}", a.at.millis(), a.id)
    }))
}

// ---------------------------------------------------------------- usage and anomalies

fn granularity(p: &mut Params) -> Result<Granularity> {
    match p.take("granularity")? {
        None => Ok(Granularity::Hour),
        Some(g) => Granularity::parse(&g)
            .ok_or_else(|| Error::bad_request("granularity must be minute, hour or day")),
    }
}

fn range(
    p: &mut Params,
    now: keyward_core::time::Timestamp,
) -> Result<(keyward_core::time::Timestamp, keyward_core::time::Timestamp)> {
    let to = p.take_time("to")?.unwrap_or(now);
    let from = p.take_time("from")?.unwrap_or(to.plus_secs(-86_400));
    if from > to {
        return Err(Error::bad_request("from is after to"));
    }
    Ok((from, to))
}

/// Bounds a range by its granularity, so one request cannot ask for millions of buckets.
fn check_span(
    g: Granularity,
    from: keyward_core::time::Timestamp,
    to: keyward_core::time::Timestamp,
) -> Result<()> {
    let (max_days, what) = (g.max_span_days(), g.as_str());
    if to.millis() - from.millis() > max_days * 86_400_000 {
        return Err(Error::bad_request(format!(
            "a {what} range may span at most {max_days} days"
        )));
    }
    Ok(())
}

/// Buckets grouped by start (oldest first, empty ones omitted) and their totals.
fn usage_series(buckets: &[keyward_store::Bucket]) -> (Vec<Value>, Value) {
    use std::collections::BTreeMap;
    let mut by_start: BTreeMap<i64, (i64, serde_json::Map<String, Value>)> = BTreeMap::new();
    let mut total_valid = 0;
    let mut total_denied: BTreeMap<String, i64> = BTreeMap::new();
    for b in buckets {
        let e = by_start.entry(b.start.millis()).or_default();
        if b.code == "VALID" {
            e.0 += b.n;
            total_valid += b.n;
        } else {
            let n = e.1.get(&b.code).and_then(Value::as_i64).unwrap_or(0) + b.n;
            e.1.insert(b.code.clone(), json!(n));
            *total_denied.entry(b.code.clone()).or_default() += b.n;
        }
    }
    let series = by_start
        .into_iter()
        .map(|(start, (valid, denied))| {
            json!({"start": keyward_core::time::Timestamp::from_millis(start), "valid": valid, "denied": denied})
        })
        .collect();
    (
        series,
        json!({"valid": total_valid, "denied": total_denied}),
    )
}

pub(crate) async fn key_usage(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let g = granularity(&mut params)?;
    let (from, to) = range(&mut params, st.clock().now())?;
    check_span(g, from, to)?;
    params.finish()?;
    let (key, buckets) =
        service::key_usage(st.records(), &who, &service::key_id(&id)?, g, from, to).await?;
    let (series, totals) = usage_series(&buckets);
    Ok(Json(
        json!({"key_id": key.id, "granularity": g, "from": from, "to": to, "buckets": series, "totals": totals}),
    ))
}

/// Keyspace-wide usage: totals over time and the top keys by calls and by denials.
pub(crate) async fn keyspace_usage(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let g = granularity(&mut params)?;
    let (from, to) = range(&mut params, st.clock().now())?;
    check_span(g, from, to)?;
    let top = params.take_int("top", 1)?.unwrap_or(10).min(100) as usize;
    params.finish()?;
    let (ks, buckets) =
        service::keyspace_usage(st.records(), &who, &service::keyspace_id(&id)?, g, from, to)
            .await?;
    let (series, totals) = usage_series(&buckets);
    let mut valid: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut denied: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for b in &buckets {
        let m = if b.code == "VALID" {
            &mut valid
        } else {
            &mut denied
        };
        *m.entry(b.key_id.as_str()).or_default() += b.n;
    }
    let rank = |m: std::collections::HashMap<&str, i64>| -> Vec<(String, i64)> {
        let mut v: Vec<(&str, i64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(top)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    };
    let named = |rows: Vec<(String, i64)>, field: &'static str| {
        let st = st.clone();
        let who = &who;
        async move {
            let mut out = Vec::with_capacity(rows.len());
            for (id, n) in rows {
                let name = match service::get_key(st.records(), who, &service::key_id(&id)?).await {
                    Ok(k) => Some(k.name),
                    Err(e) if e.code == crate::error::ErrorCode::NotFound => None,
                    Err(e) => return Err(e),
                };
                out.push(json!({"key_id": id, "name": name, field: n}));
            }
            Ok::<Vec<Value>, Error>(out)
        }
    };
    let top_by_calls = named(rank(valid), "valid").await?;
    let top_by_denials = named(rank(denied), "denied").await?;
    Ok(Json(json!({
        "keyspace_id": ks.id, "granularity": g, "from": from, "to": to, "buckets": series, "totals": totals,
        "top_by_calls": top_by_calls, "top_by_denials": top_by_denials,
    })))
}

pub(crate) async fn key_sources(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let (key, sources) = service::key_sources(st.records(), &who, &service::key_id(&id)?).await?;
    Ok(Json(json!({"key_id": key.id, "items": sources})))
}

pub(crate) async fn list_anomalies(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let limit = params.take_limit()?;
    let cursor = params.take_cursor()?;
    let keyspace_id = params.take("keyspace_id")?;
    let key_id = params.take("key_id")?;
    let since = params.take_time("since")?;
    params.finish()?;
    let fp = format!("anomalies|{keyspace_id:?}|{key_id:?}|{since:?}");
    let after = time_cursor(cursor, &fp)?;
    let f = keyward_store::AnomalyFilter {
        keyspace_ids: keyspace_id.map(|id| vec![id]),
        key_id,
        since,
        page: Page {
            limit: limit + 1,
            after,
        },
    };
    let rows = service::list_anomalies(st.records(), &who, f).await?;
    Ok(page(rows, limit, &fp, |a| {
        format!("{}:{}", a.detected_at.millis(), a.id)
    }))
}

// ---------------------------------------------------------------- reports

pub(crate) async fn inventory(
    State(st): State<AppState>,
    auth: Auth,
    mut params: Params,
) -> Result<Response> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let keyspace_id = params.take("keyspace_id")?;
    let format = params.take("format")?.unwrap_or_else(|| "json".into());
    params.finish()?;
    if !matches!(format.as_str(), "json" | "csv") {
        return Err(Error::bad_request("format must be json or csv"));
    }
    // Streamed a page at a time: a million keys cost the memory of one page.
    let inventory =
        crate::reports::Inventory::open(st.records(), &who, keyspace_id.as_deref()).await?;
    if format == "csv" {
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"keyward-inventory.csv\"".to_string(),
            ),
        ];
        return Ok((headers, inventory.csv().await?).into_response());
    }
    let body = inventory.json(keyspace_id.as_deref()).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

// ---------------------------------------------------------------- leaks

/// `POST /v1/leaks`: anyone may report a key found where it should not be. Always 202 with an
/// empty body once the report is well-formed; the work runs after the answer
/// ([`crate::leaks`]), so neither the answer nor its timing says whether the key exists.
pub(crate) async fn report_leak(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let ip = crate::http::extract::client_ip(&parts, st.config.trust_proxy_headers);
    if let Some(ip) = ip {
        if let Some(wait) = st.authn.leak_reports.fail(ip, st.clock().now()) {
            return Err(Error::new(
                crate::error::ErrorCode::RateLimited,
                "too many leak reports from this address; try again later",
            )
            .with_retry_after(wait));
        }
    }
    let body = match JsonBody::read(parts, body).await {
        Ok(b) => b,
        Err(refused) => return Ok(refused),
    };
    let report: keyward_core::api::LeakReport = body.parse()?;
    let Some(permit) = st.leaks.try_start() else {
        // The answer says nothing either way; the reporter may send it again.
        tracing::warn!("a leak report was dropped: too many are being handled");
        return Ok(StatusCode::ACCEPTED.into_response());
    };
    let state = st.clone();
    let request_id = crate::http::error::current_request_id();
    tokio::spawn(async move {
        let ip = ip.map(|i| i.to_string());
        let outcome =
            crate::leaks::handle(&state.control, &state.leaks, &report, ip, Some(request_id)).await;
        match outcome {
            Ok(outcome) => tracing::info!(?outcome, "leak report handled"),
            Err(e) => tracing::error!(error = %e, "a leak report could not be handled"),
        }
        drop(permit);
    });
    Ok(StatusCode::ACCEPTED.into_response())
}

/// One token of GitHub's secret-scanning payload (fields GitHub adds later are ignored).
#[derive(Deserialize)]
struct GithubToken {
    token: keyward_core::secret::Secret,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// Most tokens handled from one payload.
const MAX_GITHUB_TOKENS: usize = 1000;

/// `POST /v1/integrations/github/secret-scanning`: GitHub's partner endpoint. The payload must
/// be signed by a key GitHub publishes (`Github-Public-Key-Identifier`,
/// `Github-Public-Key-Signature`: ECDSA P-256 with SHA-256 over the raw body), else 401 and
/// nothing is done. Each token is handled as a reported leak, and labelled for GitHub:
/// `true_positive` when it is a keyward key (live or not), `false_positive` otherwise.
pub(crate) async fn github_secret_scanning(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(key_id), Some(signature)) = (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) else {
        return Err(Error::unauthenticated(
            "a GitHub signature is required (Github-Public-Key-Identifier, Github-Public-Key-Signature)",
        ));
    };
    let raw = match JsonBody::read(parts, body).await {
        Ok(JsonBody(Some(raw))) => raw,
        Ok(JsonBody(None)) => return Err(Error::bad_request("the payload is missing")),
        Err(refused) => return Ok(refused),
    };
    let point = match st.github.key(&key_id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(Error::unauthenticated(
                "the payload is not signed by a key GitHub publishes",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "GitHub's secret-scanning keys could not be read");
            return Err(Error::new(
                crate::error::ErrorCode::Unavailable,
                "GitHub's public keys could not be read; try again later",
            ));
        }
    };
    if !crate::github::signed(&point, &raw, &signature) {
        return Err(Error::unauthenticated(
            "the payload is not signed by a key GitHub publishes",
        ));
    }
    let tokens: Vec<GithubToken> = serde_json::from_slice(&raw).map_err(|_| {
        Error::bad_request("the payload must be a JSON list of {token, type, url, source}")
    })?;
    if tokens.len() > MAX_GITHUB_TOKENS {
        return Err(Error::bad_request(format!(
            "at most {MAX_GITHUB_TOKENS} tokens a payload"
        )));
    }
    let request_id = crate::http::error::current_request_id();
    let mut answer = Vec::with_capacity(tokens.len());
    for t in tokens {
        let report = keyward_core::api::LeakReport {
            key: t.token,
            source: t.url.clone().or(t.source.clone()),
            reporter: Some("GitHub secret scanning".into()),
        };
        let outcome = crate::leaks::handle(
            &st.control,
            &st.leaks,
            &report,
            None,
            Some(request_id.clone()),
        )
        .await?;
        let label = match outcome {
            crate::leaks::Outcome::Unknown => "false_positive",
            _ => "true_positive",
        };
        // GitHub sent this token and asks for it back; it is public already.
        answer
            .push(json!({"token_raw": report.key.expose(), "token_type": t.kind, "label": label}));
    }
    Ok(Json(Value::Array(answer)).into_response())
}

/// `POST /v1/keys/lookup`: which of these SHA-256 hashes are keys (`keyward scan --check`).
pub(crate) async fn lookup_keys(
    State(st): State<AppState>,
    auth: Auth,
    body: JsonBody,
) -> Result<Json<Value>> {
    let ctx = auth.ctx();
    let who = ctx.allow::<authz::ReadAudit>()?;
    let input: keyward_core::api::KeyLookupRequest = body.parse()?;
    let items = service::lookup_hashes(st.records(), &who, &input.hashes).await?;
    Ok(Json(json!({"items": items})))
}

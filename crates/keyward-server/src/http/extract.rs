//! Parsing requests at the edge: JSON bodies (415, 413, 400 with precise messages), query
//! parameters (unknown ones are 400), list paging, client addresses and management tokens.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use keyward_core::keyformat::{self, KeyHash};
use keyward_core::model::{canonical_ip, Actor, ActorKind, Token};
use serde::de::DeserializeOwned;

use crate::authz::Ctx;
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorCode, Result};
use crate::http::error::{current_request_id, Refusal};
use crate::state::AppState;

pub(crate) const MAX_BODY: usize = 64 * 1024;

/// A request body that is JSON (or absent), read up to [`MAX_BODY`] bytes.
pub(crate) struct JsonBody(pub Option<Bytes>);

impl JsonBody {
    /// Reads the body of a request whose head a handler has already looked at; `Err` is the
    /// refusal to answer as it is (415, 413, 408).
    pub(crate) async fn read(
        parts: Parts,
        body: axum::body::Body,
    ) -> std::result::Result<JsonBody, Response> {
        <JsonBody as FromRequest<()>>::from_request(Request::from_parts(parts, body), &()).await
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| {
            let starts = |p: &str| m.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p));
            let ends = |p: &str| {
                m.len() >= p.len()
                    && m.get(m.len() - p.len()..)
                        .is_some_and(|s| s.eq_ignore_ascii_case(p))
            };
            m.eq_ignore_ascii_case("application/json") || (starts("application/") && ends("+json"))
        })
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> std::result::Result<Self, Response> {
        read_json(req, MAX_BODY).await
    }
}

/// The body of an import (`POST /v1/keyspaces/{id}/keys/import`): JSON, read up to
/// [`MAX_IMPORT_BODY`] bytes (a full batch of records with salted hashes and metadata).
pub(crate) struct ImportBody(pub JsonBody);

pub(crate) const MAX_IMPORT_BODY: usize = 4 * 1024 * 1024;

impl<S: Send + Sync> FromRequest<S> for ImportBody {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> std::result::Result<Self, Response> {
        read_json(req, MAX_IMPORT_BODY).await.map(ImportBody)
    }
}

async fn read_json(req: Request, max: usize) -> std::result::Result<JsonBody, Response> {
    let headers = req.headers();
    let declared: Option<u64> = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    let has_body = declared.is_some_and(|n| n > 0) || chunked;
    let json = is_json(headers);
    // Answered before the body is read: tell the client this connection is not reused.
    let close = |e: Error| Refusal(e).into_response();
    if has_body && !json {
        return Err(close(Error::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON (Content-Type: application/json)",
        )));
    }
    if declared.is_some_and(|n| n > max as u64) {
        return Err(close(too_large(max)));
    }
    let bytes = match declared {
        // The declared length is known (and enforced by hyper): stop once it has arrived,
        // without another round through the connection to learn that the body ended.
        Some(n) if !chunked => read_declared(req.into_body(), n as usize, max)
            .await
            .map_err(|_| too_large(max).into_response())?,
        _ => axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|_| too_large(max).into_response())?,
    };
    if bytes.is_empty() {
        return Ok(JsonBody(None));
    }
    if !json {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON (Content-Type: application/json)",
        )
        .into_response());
    }
    Ok(JsonBody(Some(bytes)))
}

/// Reads a body of `n` bytes (at most `max`): one chunk is returned as it is.
async fn read_declared(
    mut body: axum::body::Body,
    n: usize,
    max: usize,
) -> std::result::Result<Bytes, ()> {
    use http_body_util::BodyExt;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut have = 0;
    while have < n {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(|_| ())?.into_data() {
            have += data.len();
            if have > max {
                return Err(());
            }
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

fn too_large(max: usize) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {max} bytes"),
    )
}

/// serde's message without any input value: `"..."` strings (escapes included) become `"…"`,
/// and `` `...` `` names (unknown fields, variants) longer than 32 characters are not shown.
fn sanitize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    match d {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"…\"");
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|&d| d != '`').collect();
                out.push('`');
                out.push_str(&keyformat::shown(&name));
                out.push('`');
            }
            c => out.push(c),
        }
    }
    out
}

impl JsonBody {
    /// Parses a body that the endpoint requires.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        match &self.0 {
            None => Err(Error::bad_request("a JSON request body is required")),
            Some(b) => parse_json(b),
        }
    }
    /// Parses a body whose fields are all optional: no body means defaults.
    pub(crate) fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T> {
        match &self.0 {
            None => Ok(T::default()),
            Some(b) => parse_json(b),
        }
    }
}

fn parse_json<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    // Every body is an object: serde would otherwise fill a struct from an array by position.
    if b.trim_ascii_start().first() != Some(&b'{') {
        return Err(Error::bad_request(
            "invalid JSON body: the body must be a JSON object",
        ));
    }
    serde_json::from_slice(b).or_else(|e| {
        // JSON does not tell `793` from `793.0`, and JSON Schema reads both as an integer: a
        // body that fails only because an integer was written with a zero fraction (or an
        // exponent) is read again with such numbers made integers. Only failing bodies pay.
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|mut v| integral_numbers(&mut v).then_some(v))
            .and_then(|v| T::deserialize(v).ok())
            .ok_or_else(|| {
                Error::bad_request(format!("invalid JSON body: {}", sanitize(&e.to_string())))
            })
    })
}

/// Turns every number with no fractional part (within `i64`) into an integer; whether any was
/// changed.
fn integral_numbers(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
                *v = Value::from(f as i64);
                true
            }
            _ => false,
        },
        Value::Array(items) => items.iter_mut().fold(false, |c, i| integral_numbers(i) | c),
        Value::Object(m) => m.values_mut().fold(false, |c, i| integral_numbers(i) | c),
        _ => false,
    }
}

pub(crate) use keyward_core::api::not_null;

/// Query parameters, taken one by one; whatever is left over is an unknown parameter (400).
pub(crate) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        match axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state).await
        {
            Ok(q) => Ok(Params(q.0)),
            Err(_) => Err(Error::bad_request("the query string is not valid")),
        }
    }
}

impl Params {
    pub(crate) fn take(&mut self, name: &str) -> Result<Option<String>> {
        if self.0.iter().any(|(k, v)| k == name && v.contains('\0')) {
            // No parameter means anything with a NUL, and a database may refuse the character.
            return Err(Error::bad_request(format!(
                "query parameter '{name}' may not contain a NUL character"
            )));
        }
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == name {
                if found.is_some() {
                    return Err(Error::bad_request(format!(
                        "query parameter '{name}' given more than once"
                    )));
                }
                found = Some(self.0.remove(i).1);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }
    /// `cursor`: an empty one is no cursor (the first page), as a client that echoes an empty
    /// `next_cursor` field expects.
    pub(crate) fn take_cursor(&mut self) -> Result<Option<String>> {
        Ok(self.take("cursor")?.filter(|c| !c.is_empty()))
    }
    pub(crate) fn take_all(&mut self, name: &str) -> Vec<String> {
        let (hit, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.0 = rest;
        hit.into_iter().map(|(_, v)| v).collect()
    }
    pub(crate) fn take_int(&mut self, name: &str, min: i64) -> Result<Option<i64>> {
        match self.take(name)? {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(Error::bad_request(format!(
                    "query parameter '{name}' must be an integer ≥ {min}"
                ))),
            },
        }
    }
    pub(crate) fn take_time(
        &mut self,
        name: &str,
    ) -> Result<Option<keyward_core::time::Timestamp>> {
        self.take(name)?
            .map(|v| {
                keyward_core::time::Timestamp::parse_rfc3339(&v)
                    .map_err(|m| Error::bad_request(format!("query parameter '{name}': {m}")))
            })
            .transpose()
    }
    /// `limit` (1..500, default 50).
    pub(crate) fn take_limit(&mut self) -> Result<i64> {
        match self.take("limit")? {
            None => Ok(50),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=500).contains(&n) => Ok(n),
                _ => Err(Error::bad_request("limit must be an integer in 1..500")),
            },
        }
    }
    /// Rejects any parameter not taken.
    pub(crate) fn finish(self) -> Result<()> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(Error::bad_request(format!(
                "unknown query parameter '{}'",
                keyformat::shown(k)
            ))),
        }
    }
}

/// Opaque list cursors: the position of the last row plus a fingerprint of the endpoint and
/// filters, so a cursor is only accepted by the list that produced it.
pub(crate) fn encode_cursor(position: &str, fingerprint: &str) -> String {
    keyformat::hex(format!("{position}|{}", &KeyHash::of(fingerprint).to_hex()[..12]).as_bytes())
}

pub(crate) fn decode_cursor(cursor: &str, fingerprint: &str) -> Result<String> {
    let bad = || Error::bad_request("cursor is not valid for this list");
    if !cursor.len().is_multiple_of(2) || cursor.len() > 512 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let (pos, fp) = text.rsplit_once('|').ok_or_else(bad)?;
    if fp != &KeyHash::of(fingerprint).to_hex()[..12] {
        return Err(bad());
    }
    Ok(pos.to_string())
}

/// A (created_at, id) position from a cursor.
pub(crate) fn time_cursor(
    cursor: Option<String>,
    fingerprint: &str,
) -> Result<Option<(i64, String)>> {
    cursor
        .map(|c| {
            let pos = decode_cursor(&c, fingerprint)?;
            let (ms, id) = pos
                .split_once(':')
                .ok_or_else(|| Error::bad_request("cursor is not valid for this list"))?;
            let ms = ms
                .parse()
                .map_err(|_| Error::bad_request("cursor is not valid for this list"))?;
            Ok((ms, id.to_string()))
        })
        .transpose()
}

/// The address of the client: the connection's peer, or the first `X-Forwarded-For` entry
/// when the server trusts proxy headers.
pub(crate) fn client_ip(parts: &Parts, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return Some(canonical_ip(ip));
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| canonical_ip(c.0.ip()))
}

/// An authenticated management token.
pub(crate) struct Auth {
    pub(crate) token: Token,
    pub(crate) ip: Option<IpAddr>,
}

impl Auth {
    pub(crate) fn ctx(&self) -> Ctx {
        Ctx {
            actor: Actor {
                kind: ActorKind::Token,
                id: self.token.id.clone(),
                name: self.token.name.clone(),
            },
            role: self.token.role,
            request_id: Some(current_request_id()),
            ip: self.ip.map(|i| i.to_string()),
            keyspaces: self.token.keyspace_ids.clone(),
        }
    }
}

/// The bearer token of `Authorization`, if the header has that form.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim_start())
}

/// Checks a management token given in a header; failures count towards the address's limit.
pub(crate) async fn authenticate(
    st: &AppState,
    presented: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Auth> {
    let token = crate::accounts::authenticate_token(&st.authn, presented, ip).await?;
    Ok(Auth { token, ip })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self> {
        let ip = client_ip(parts, st.config.trust_proxy_headers);
        authenticate(st, bearer(&parts.headers), ip).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_quoted_values() {
        assert_eq!(
            sanitize(r#"invalid type: string "acme_secret", expected i64"#),
            "invalid type: string \"…\", expected i64"
        );
        assert_eq!(
            sanitize("unknown field `expire_at`, expected one of `a`"),
            "unknown field `expire_at`, expected one of `a`"
        );
    }

    #[test]
    fn a_cursor_is_only_valid_for_its_own_list() {
        let c = encode_cursor("123:key_abc", "keys|owner=a");
        assert_eq!(decode_cursor(&c, "keys|owner=a").unwrap(), "123:key_abc");
        assert!(decode_cursor(&c, "keys|owner=b").is_err());
        assert!(decode_cursor("zz", "keys").is_err());
    }
}

//! Fuzzing on the stable toolchain: generated and mutated inputs for the key parser, RFC 8785
//! canonicalization (the audit hash input), CIDR parsing, and JSON bodies and list cursors
//! through the real router over a real SQLite store. No input may panic, and no request may
//! get a 5xx.
//!
//! `cargo test` runs a short round (20,000 inputs per target); `scripts/fuzz.sh` runs
//! 10,000,000 per target (`KEYWARD_FUZZ_INPUTS`, `KEYWARD_FUZZ_SEED` to replay a run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use keyward_core::audit::canonical_json;
use keyward_core::keyformat;
use keyward_core::model::{parse_cidr, Actor, Role};
use serde_json::{json, Map, Value};
use tower::Service;

fn inputs() -> u64 {
    std::env::var("KEYWARD_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed(target: u64) -> u64 {
    let base = std::env::var("KEYWARD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    (base ^ target.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// xorshift64*: fast, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const DICTIONARY: &[&str] = &[
    "_",
    ":",
    "/",
    ".",
    "*",
    "\0",
    "\u{7f}",
    "é",
    "\u{1F600}",
    "\u{FEFF}",
    "\r\n",
    "%",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    "0",
    "-1",
    "9223372036854775807",
    "1e309",
    "::",
    "/33",
    "/128",
    "::ffff:",
    "255.255.255.255",
    "kwt_",
];

/// A mutation of `seed`: flips, inserts, deletes, splices dictionary words, repeats.
fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.insert(at, rng.next() as u8),
            2 if !b.is_empty() => {
                b.remove(at.min(b.len() - 1));
            }
            3 => {
                let w = rng.pick(DICTIONARY).as_bytes();
                b.splice(at..at, w.iter().copied());
            }
            4 if !b.is_empty() => {
                let end = (at + rng.below(8)).min(b.len());
                let piece: Vec<u8> = b[at.min(end)..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => b.truncate(at),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => serde_json::Number::from_f64(f64::from_bits(rng.next()))
            .map_or(Value::Null, Value::Number),
        4 => json!((rng.below(2001) as f64 - 1000.0) / 8.0),
        5 => {
            let w = rng_word(rng);
            Value::String(mutate(rng, w))
        }
        6 | 7 => {
            let mut m = Map::new();
            for _ in 0..rng.below(6) {
                let k = if rng.below(3) == 0 {
                    let w = rng_word(rng);
                    mutate(rng, w)
                } else {
                    (*rng.pick(FIELDS)).to_string()
                };
                m.insert(k, random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.below(5))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
    }
}

fn rng_word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len())]
}

const WORDS: &[&str] = &[
    "",
    "a",
    "orders:read",
    "orders:*",
    "*",
    "team-a",
    "10.0.0.0/8",
    "2001:db8::/32",
    "2027-01-01T00:00:00Z",
    "strict",
    "relaxed",
    "admin",
    "viewer",
    "key.created",
    "https://hooks.example.com/h",
    "http://127.0.0.1:9/h",
    "ks_0000000000000000000000",
    "key_0000000000000000000000",
    "acme",
    "daily",
];

const FIELDS: &[&str] = &[
    "name",
    "owner",
    "scopes",
    "labels",
    "meta",
    "expires_at",
    "ttl_secs",
    "ratelimit",
    "limit",
    "window_secs",
    "remaining",
    "allowed_cidrs",
    "enabled",
    "keyspace_id",
    "prefix",
    "policy",
    "preset",
    "reason",
    "grace_secs",
    "url",
    "events",
    "role",
    "keyspace_ids",
    "key",
    "cost",
    "ip",
    "max_lifetime_secs",
    "rotation_grace_secs",
    "require_owner",
    "max_keys_per_owner",
];

#[test]
fn the_key_parser_survives_any_string() {
    let mut rng = Rng(seed(1));
    let seeds: Vec<String> = (0..16)
        .map(|i| keyformat::generate(&format!("p{i}")).expose().to_string())
        .collect();
    for _ in 0..inputs() {
        let seed = rng.pick(&seeds).clone();
        let s = mutate(&mut rng, &seed);
        if let Some(p) = keyformat::parse(&s) {
            assert_eq!(
                format!("{}_{}", p.prefix, p.body),
                s,
                "a parsed key is the whole input"
            );
        }
        let _ = keyformat::contains_key_material(&s);
        let _ = keyformat::shown(&s);
    }
}

#[test]
fn canonical_json_is_stable_for_any_value() {
    let mut rng = Rng(seed(2));
    for _ in 0..inputs() {
        let v = random_value(&mut rng, 0);
        let once = canonical_json(&v);
        let again = canonical_json(&serde_json::from_str(&once).expect("canonical JSON parses"));
        assert_eq!(once, again, "canonical form of {v}");
    }
}

#[test]
fn cidr_parsing_survives_any_string_and_round_trips() {
    let mut rng = Rng(seed(3));
    let seeds = [
        "10.0.0.0/8",
        "203.0.113.7",
        "2001:db8::/32",
        "::1",
        "0.0.0.0/0",
        "::ffff:1.2.3.4/128",
        "fe80::1%eth0",
        "1.2.3.4/32",
    ];
    for _ in 0..inputs() {
        let seed = *rng.pick(&seeds);
        let s = mutate(&mut rng, seed);
        if let Ok(net) = parse_cidr(&s) {
            assert_eq!(parse_cidr(&net.to_string()).ok(), Some(net), "{s}");
        }
    }
}

/// A server state over a fresh SQLite file, its router and an admin token.
async fn server() -> (axum::Router, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("keyward-fuzz-{}-{}", std::process::id(), seed(9)));
    std::fs::create_dir_all(&dir).unwrap();
    let store = keyward_store::open(&format!("sqlite://{}", dir.join("k.db").display()))
        .await
        .unwrap();
    let state = keyward_server::AppState::new(
        store,
        Arc::new(keyward_core::time::SystemClock),
        keyward_server::Config::default(),
    );
    let ctx = keyward_server::authz::Ctx::operator(Actor::cli("fuzz"));
    let (_, token) = keyward_server::service::create_token(
        state.records(),
        &ctx.allow().unwrap(),
        keyward_server::service::CreateToken {
            name: "fuzz".into(),
            role: Role::Admin,
            keyspace_ids: None,
            ttl_secs: None,
        },
    )
    .await
    .unwrap();
    (keyward_server::app(state), token.expose().to_string(), dir)
}

async fn send(app: &mut axum::Router, req: Request<Body>) -> u16 {
    let mut req = req;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    match app.call(req).await {
        Ok(res) => res.status().as_u16(),
        Err(never) => match never {},
    }
}

#[test]
fn json_bodies_through_the_router_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut app, token, dir) = server().await;
        let mut rng = Rng(seed(4));
        // A keyspace and a key, so that some generated ids and keys exist.
        let ks_body = json!({"name": "fuzz", "prefix": "fuzz"}).to_string();
        let req = Request::post("/v1/keyspaces")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(ks_body))
            .unwrap();
        assert_eq!(send(&mut app, req).await, 201);
        let routes: &[(Method, &str)] = &[
            (Method::POST, "/v1/keyspaces"),
            (Method::PATCH, "/v1/keyspaces/ks_0000000000000000000000"),
            (Method::POST, "/v1/keys"),
            (Method::PATCH, "/v1/keys/key_0000000000000000000000"),
            (Method::POST, "/v1/keys/key_0000000000000000000000/rotate"),
            (Method::POST, "/v1/keys/key_0000000000000000000000/revoke"),
            (Method::POST, "/v1/keys/revoke"),
            (Method::POST, "/v1/verify"),
            (Method::POST, "/v1/tokens"),
            (Method::POST, "/v1/webhooks"),
        ];
        for i in 0..inputs() {
            let (method, path) = rng.pick(routes).clone();
            let body = if rng.below(4) == 0 {
                let text = random_value(&mut rng, 0).to_string();
                mutate(&mut rng, &text)
            } else {
                random_value(&mut rng, 0).to_string()
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let status = send(&mut app, req).await;
            assert!(
                status < 500,
                "input {i}: {method} {path} {body:?} answered {status}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn list_cursors_through_the_router_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut app, token, dir) = server().await;
        let mut rng = Rng(seed(5));
        let seeds = [
            "",
            "00",
            "6b65795f31",
            "313730303030303030303030303a6b65795f31|abc",
        ];
        for i in 0..inputs() {
            let path = *rng.pick(&["/v1/keys", "/v1/keyspaces", "/v1/audit", "/v1/tokens"]);
            let seed = *rng.pick(&seeds);
            let cursor = mutate(&mut rng, seed);
            let q: String = url_encode(&cursor);
            let req = Request::get(format!("{path}?cursor={q}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let status = send(&mut app, req).await;
            assert!(
                status < 500,
                "input {i}: {path} cursor {cursor:?} answered {status}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    });
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

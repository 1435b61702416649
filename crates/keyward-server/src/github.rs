//! GitHub's secret scanning partner program: GitHub posts the keyward keys it finds in public
//! repositories to `POST /v1/integrations/github/secret-scanning`, signed with one of its
//! published ECDSA P-256 keys; each token is handled as a reported leak ([`crate::leaks`]).
//!
//! Invariants:
//! - Nothing is done for a payload whose signature does not verify against a key GitHub
//!   publishes (or the operator's file of them): 401.
//! - GitHub's keys are read when a payload names a key not read yet, and kept. Once a list was
//!   read, an unknown identifier makes keyward read it again at most every [`RELOAD_EVERY`]
//!   (unsigned requests with made-up identifiers cannot exhaust GitHub's rate limit, 60
//!   unauthenticated calls an hour); until one was read, at most every [`RETRY_EVERY`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use crate::config::Config;

/// The fewest time between two reads of the key list once one was read (GitHub rotates its
/// keys rarely, and announces a new one before using it).
const RELOAD_EVERY: Duration = Duration::from_secs(300);
/// The fewest time between two tries while no list was ever read.
const RETRY_EVERY: Duration = Duration::from_secs(30);
/// The longest a read of GitHub's key list may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys older than this are read again before use.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// The DER prefix of a P-256 SubjectPublicKeyInfo; the uncompressed point (65 bytes) follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

enum Source {
    Url(String),
    File(PathBuf),
}

#[derive(Default)]
struct Cached {
    /// Key identifier -> uncompressed P-256 point.
    keys: HashMap<String, Vec<u8>>,
    read_at: Option<Instant>,
    tried_at: Option<Instant>,
}

/// GitHub's public keys, as this node last read them.
pub(crate) struct GithubKeys {
    source: Source,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Cached>,
}

#[derive(Deserialize)]
struct KeyList {
    public_keys: Vec<PublicKey>,
}

#[derive(Deserialize)]
struct PublicKey {
    key_identifier: String,
    key: String,
}

/// The uncompressed point of a PEM P-256 public key; `None` for anything else.
pub(crate) fn p256_point(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let point = der.strip_prefix(&P256_SPKI_PREFIX[..])?;
    (point.len() == 65 && point[0] == 4).then(|| point.to_vec())
}

/// Whether `signature` (base64 of an ASN.1 DER ECDSA signature) signs `body` for `point`.
pub(crate) fn signed(point: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(body, &sig)
        .is_ok()
}

impl GithubKeys {
    pub(crate) fn from_config(c: &Config) -> Self {
        let source = match &c.github_keys_file {
            Some(f) => Source::File(f.clone()),
            None => Source::Url(c.github_keys_url.clone()),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent("keyward")
            .build()
            .unwrap_or_default();
        GithubKeys {
            source,
            http,
            cached: tokio::sync::Mutex::new(Cached::default()),
        }
    }

    async fn read(&self) -> Result<HashMap<String, Vec<u8>>, String> {
        let text = match &self.source {
            Source::File(f) => tokio::fs::read_to_string(f)
                .await
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?,
            Source::Url(u) => {
                let res = self
                    .http
                    .get(u)
                    // Per request: bounded even with the fallback client.
                    .timeout(FETCH_TIMEOUT)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| format!("cannot fetch GitHub's keys: {e}"))?;
                if !res.status().is_success() {
                    return Err(format!("GitHub's keys: HTTP {}", res.status().as_u16()));
                }
                res.text()
                    .await
                    .map_err(|e| format!("cannot read GitHub's keys: {e}"))?
            }
        };
        let list: KeyList = serde_json::from_str(&text)
            .map_err(|e| format!("GitHub's key list is not what it should be: {e}"))?;
        Ok(list
            .public_keys
            .into_iter()
            .filter_map(|k| p256_point(&k.key).map(|p| (k.key_identifier, p)))
            .collect())
    }

    /// The key GitHub names `id`: `Ok(None)` when it publishes no such key, `Err` when the
    /// list cannot be read at all.
    pub(crate) async fn key(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.cached.lock().await;
        let fresh = c.read_at.is_some_and(|t| t.elapsed() < MAX_AGE);
        if fresh {
            if let Some(k) = c.keys.get(id) {
                return Ok(Some(k.clone()));
            }
        }
        let wait = if c.read_at.is_some() {
            RELOAD_EVERY
        } else {
            RETRY_EVERY
        };
        if c.tried_at.is_some_and(|t| t.elapsed() < wait) {
            return Ok(c.keys.get(id).cloned());
        }
        c.tried_at = Some(Instant::now());
        match self.read().await {
            Ok(keys) => {
                c.keys = keys;
                c.read_at = Some(Instant::now());
                Ok(c.keys.get(id).cloned())
            }
            // Keys read before stay usable while the list cannot be read again.
            Err(e) if c.keys.contains_key(id) => {
                tracing::warn!(error = %e, "GitHub's keys could not be read again; using the ones read before");
                Ok(c.keys.get(id).cloned())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_and_body() {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let point = p256_point(&pem).unwrap_or_default();
        assert_eq!(point.len(), 65);
        let body = br#"[{"token":"acme_x","type":"keyward","url":"https://x"}]"#;
        let sig = pair.sign(&rng, body).unwrap_or_else(|e| panic!("{e}"));
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        assert!(signed(&point, body, &sig));
        assert!(!signed(&point, b"[]", &sig));
        assert!(!signed(&point, body, "not base64"));
        assert!(p256_point("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_none());
    }
}

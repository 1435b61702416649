//! Secrets keyward must recover (webhook signing secrets) are kept sealed at rest with a master
//! key: XChaCha20-Poly1305 with a random 24-byte nonce, the owning record's id as associated
//! data (a sealed value copied to another record does not open), and the key's id in the text
//! so a wrong key is named as such:
//!
//! `kw1:<key id, 8 hex>:<hex of nonce ‖ ciphertext ‖ tag>`

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keyformat::hex;

const PREFIX: &str = "kw1:";
const NONCE: usize = 24;

/// A 256-bit master key (zeroed when dropped).
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

/// Why a sealed value did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Sealed with another master key (its id).
    OtherKey(String),
    /// Not a sealed value, or altered.
    Corrupt,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::OtherKey(id) => write!(f, "sealed with another master key (id {id})"),
            OpenError::Corrupt => f.write_str("the sealed value is corrupt or was altered"),
        }
    }
}

impl std::error::Error for OpenError {}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl MasterKey {
    fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"keyward-master-key\n");
        h.update(bytes);
        let id = hex(&h.finalize()[..4]);
        MasterKey {
            bytes: Zeroizing::new(bytes),
            id,
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A key written as 64 hexadecimal characters (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bytes = unhex(t)
            .filter(|b| b.len() == 32)
            .ok_or("a master key is 64 hexadecimal characters (32 bytes)")?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Self::from_bytes(out))
    }

    /// The key as [`MasterKey::parse`] reads it (for the key file only).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(self.bytes.as_slice()))
    }

    /// A short fingerprint that names the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.bytes.as_slice()))
    }

    /// Seals `plaintext` for the record `aad` (its id).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| "sealing failed".to_string())?;
        Ok(format!(
            "{PREFIX}{}:{}{}",
            self.id,
            hex(&nonce),
            hex(&sealed)
        ))
    }

    /// Opens a value sealed for the record `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Zeroizing<String>, OpenError> {
        let (id, body) = sealed
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .ok_or(OpenError::Corrupt)?;
        if id != self.id {
            return Err(OpenError::OtherKey(id.to_string()));
        }
        let bytes = unhex(body)
            .filter(|b| b.len() > NONCE)
            .ok_or(OpenError::Corrupt)?;
        let (nonce, ct) = bytes.split_at(NONCE);
        let plain = self
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Corrupt)?;
        String::from_utf8(plain)
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Corrupt)
    }
}

/// Whether a stored value is sealed (else it is a plaintext from before sealing).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The id of the key a stored value was sealed with.
pub fn sealed_with(stored: &str) -> Option<&str> {
    stored.strip_prefix(PREFIX)?.split(':').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_key_for_its_record_only() {
        let k = MasterKey::generate().unwrap();
        let s = k.seal("whsec_abc", "wh_1").unwrap();
        assert!(is_sealed(&s) && !s.contains("whsec_abc"));
        assert_eq!(sealed_with(&s), Some(k.id()));
        assert_eq!(k.open(&s, "wh_1").unwrap().as_str(), "whsec_abc");
        assert_eq!(
            k.open(&s, "wh_2"),
            Err(OpenError::Corrupt),
            "bound to its record"
        );
        let other = MasterKey::generate().unwrap();
        assert_eq!(
            other.open(&s, "wh_1"),
            Err(OpenError::OtherKey(k.id().into()))
        );
        let mut altered = s.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(k.open(&altered, "wh_1"), Err(OpenError::Corrupt));
        assert_ne!(
            k.seal("whsec_abc", "wh_1").unwrap(),
            s,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_key_round_trips_through_its_text_and_bad_text_is_refused() {
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::parse(&format!(" {}\n", k.to_text().as_str())).unwrap();
        assert_eq!(again.id(), k.id());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(62)] {
            assert!(MasterKey::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{k:?}").contains(k.to_text().as_str()));
    }
}

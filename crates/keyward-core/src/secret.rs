//! Plaintext secrets (API keys, management tokens, webhook secrets).
//!
//! A [`Secret`] never prints itself: `Debug` and `Display` show `[redacted]`, and its bytes are
//! zeroed when it is dropped. The only way to read it is [`Secret::expose`], which makes every
//! place that handles a plaintext easy to find.

use zeroize::Zeroizing;

/// A plaintext secret string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Call only where the secret must leave the process (the one response that
    /// creates it) or be hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(Secret::new)
    }
}

/// `#[serde(serialize_with = "expose")]`: writes the plaintext. `Secret` has no `Serialize`
/// of its own, so a secret is written only where a field says so (a request that must carry
/// it).
pub fn expose<S: serde::Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("acme_supersecretvalue".into());
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{s}").contains("supersecret"));
        assert_eq!(s.expose(), "acme_supersecretvalue");
    }
}

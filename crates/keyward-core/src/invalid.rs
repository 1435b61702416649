//! Why an input value is refused: the error of every validator and parser of `keyward-core`
//! (`check_*`, `parse_*`, policy patches, scopes, prefixes, emails, times). Its message names the
//! field and the rule, never a value that could be a secret; the server turns it into a 400
//! `BAD_REQUEST` in one place.

/// An input value that breaks a rule, with a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl From<String> for Invalid {
    fn from(m: String) -> Self {
        Invalid(m)
    }
}

impl From<&str> for Invalid {
    fn from(m: &str) -> Self {
        Invalid(m.to_string())
    }
}

impl From<Invalid> for String {
    fn from(i: Invalid) -> Self {
        i.0
    }
}

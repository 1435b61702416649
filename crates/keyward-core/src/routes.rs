//! Route rules: the scopes a request needs, from its method and path, per keyspace.
//!
//! A keyspace holds an ordered list of [`RouteRule`]s and what happens to a request none
//! matches ([`Unmatched`]). A rule's `path` is a pattern of `/`-separated segments: a literal
//! segment matches itself (case-sensitive), `*` matches any one segment, and `**`, only as the
//! last segment, matches the rest of the path (zero or more segments: `/orders/**` matches
//! `/orders`, `/orders/1` and `/orders/1/items`). A rule without `method` matches every method;
//! with one, only that method (exact, as proxies send it; `HEAD` is matched as `GET`). The
//! first rule that matches decides: its scopes are required in addition to any the caller asked
//! for. No match: allowed as before under `allow`, refused (`ROUTE_NOT_ALLOWED`) under `deny`.
//!
//! The request's path is normalized before matching ([`normalize`]): the query is dropped,
//! percent-escapes are decoded, and empty and `.` segments are dropped, so `/orders//1`,
//! `/orders/./1` and `/%6frders/1` all match `/orders/*`. A path keyward will not judge (a `..`
//! segment, raw or escaped; `;` or `\`; a `#`; an escape that is not hex or decodes to `/` or
//! to a byte that is not UTF-8; no leading `/`) is refused (`ROUTE_NOT_ALLOWED`) whenever the
//! keyspace has rules: an upstream could read such a path as another route than keyward did. Matching is linear in the rules, with no allocation for a path that
//! needs no normalization: about a hundred rules cost a few hundred nanoseconds
//! (`cargo bench -p keyward-server --bench verify -- routes`).

use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;
use crate::keyformat::check_no_secret;
use crate::scope::check_requested_scope;

/// Most rules one keyspace may hold.
pub const MAX_RULES: usize = 500;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Most segments in a pattern.
pub const MAX_SEGMENTS: usize = 32;
/// Most scopes one rule may require.
pub const MAX_RULE_SCOPES: usize = 100;

/// One rule, as the API and the store hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// What happens to a request no rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Allow,
    Deny,
}

impl Unmatched {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::Allow => "allow",
            Unmatched::Deny => "deny",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Unmatched::Allow),
            "deny" => Some(Unmatched::Deny),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Word),
    Any,
}

/// A string with its [`fingerprint`], compared by one integer comparison when short.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    fp: u64,
    text: Box<str>,
}

impl Word {
    fn new(s: &str) -> Word {
        Word {
            fp: fingerprint(s),
            text: s.into(),
        }
    }

    /// Whether `s` (with fingerprint `fp`) is this word.
    fn is(&self, fp: u64, s: &str) -> bool {
        self.fp == fp && (self.text.len() <= 7 || *self.text == *s)
    }
}

/// Up to the first 7 bytes of `s` and, in the top byte, its length (0xFF beyond 7): equal
/// fingerprints of strings of at most 7 bytes mean equal strings.
fn fingerprint(s: &str) -> u64 {
    let b = s.as_bytes();
    let len = if b.len() <= 7 { b.len() as u64 } else { 0xFF };
    b.iter()
        .take(7)
        .enumerate()
        .fold(len << 56, |x, (i, c)| x | (u64::from(*c) << (8 * i)))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Compiled {
    method: Option<Word>,
    segments: Box<[Segment]>,
    /// Ends in `**`: the path may have more segments than `segments`.
    rest: bool,
    scopes: Box<[String]>,
}

/// A keyspace's rules, ready to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    rules: Box<[Compiled]>,
    unmatched: Unmatched,
}

/// The request a check is about, as far as the caller knows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteRequest<'a> {
    pub method: Option<&'a str>,
    /// The path, possibly with a query (`/orders/1?x=y`).
    pub uri: Option<&'a str>,
}

/// What the rules say about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteDecision<'a> {
    /// Allowed if the key also holds these scopes (empty: nothing more).
    Require(&'a [String]),
    /// No rule matches and the keyspace denies unmatched requests.
    NotAllowed,
}

/// Reads a rule list from JSON, naming the rule of any error (`routes[2]: unknown field
/// ...`); `null` is refused (`[]` is the empty list). The rules are not checked here.
pub fn rules_from_json(v: serde_json::Value) -> Result<Vec<RouteRule>, Invalid> {
    let items = match v {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Null => {
            return Err("routes may not be null ([] removes every rule)".into())
        }
        _ => return Err("routes must be a list of rules".into()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value(item).map_err(|e| Invalid::from(format!("routes[{i}]: {e}")))
        })
        .collect()
}

/// `#[serde(deserialize_with)]` for a rule list (see [`rules_from_json`]).
pub fn deserialize_rules<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<RouteRule>, D::Error> {
    rules_from_json(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// [`deserialize_rules`] for a field that may be left out (with `#[serde(default)]`).
pub fn deserialize_some_rules<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RouteRule>>, D::Error> {
    deserialize_rules(d).map(Some)
}

/// Checks a keyspace's rules; the error names the rule (`routes[3].path: ...`).
pub fn check_rules(rules: &[RouteRule]) -> Result<(), Invalid> {
    compile(rules, Unmatched::Allow).map(|_| ())
}

/// Compiles checked or unchecked rules (an unchecked one is refused with the reason).
pub fn compile(rules: &[RouteRule], unmatched: Unmatched) -> Result<Routes, Invalid> {
    if rules.len() > MAX_RULES {
        return Err(format!("routes may hold at most {MAX_RULES} rules").into());
    }
    let compiled = rules
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r).map_err(|e| Invalid::from(format!("routes[{i}].{e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Routes {
        rules: compiled.into(),
        unmatched,
    })
}

fn compile_rule(r: &RouteRule) -> Result<Compiled, String> {
    let method = match &r.method {
        None => None,
        Some(m) => {
            if m.is_empty() || m.len() > 20 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "method: '{}' must be 1..20 uppercase letters (GET, POST, ...)",
                    crate::keyformat::shown(m)
                ));
            }
            Some(Word::new(m))
        }
    };
    // Rules are stored and audited: a key pasted into one is refused, as in every other field.
    check_no_secret("path", &r.path)?;
    let (segments, rest) = parse_pattern(&r.path).map_err(|e| format!("path: {e}"))?;
    if r.scopes.len() > MAX_RULE_SCOPES {
        return Err(format!("scopes: at most {MAX_RULE_SCOPES} scopes"));
    }
    for (j, s) in r.scopes.iter().enumerate() {
        check_no_secret(&format!("scopes[{j}]"), s)?;
        check_requested_scope(s).map_err(|e| format!("scopes[{j}]: {e}"))?;
    }
    Ok(Compiled {
        method,
        segments,
        rest,
        scopes: r.scopes.clone().into(),
    })
}

/// A pattern's segments and whether it ends in `**`; the error gives the character position
/// (from 1) of the problem.
fn parse_pattern(p: &str) -> Result<(Box<[Segment]>, bool), String> {
    if p.len() > MAX_PATTERN_LEN {
        return Err(format!("a pattern is at most {MAX_PATTERN_LEN} bytes"));
    }
    if !p.starts_with('/') {
        return Err("a pattern starts with '/' (at character 1)".into());
    }
    if let Some((at, c)) = p
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%'))
    {
        return Err(format!(
            "'{}' is not allowed in a pattern (at character {})",
            c.escape_default(),
            p[..at].chars().count() + 1
        ));
    }
    if p == "/" {
        return Ok((Box::new([]), false));
    }
    let mut segments = Vec::new();
    let mut rest = false;
    let mut at = 1; // character position of the segment's start
    let parts: Vec<&str> = p[1..].split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("a pattern has at most {MAX_SEGMENTS} segments"));
    }
    for (i, seg) in parts.iter().enumerate() {
        let pos = at + 1;
        match *seg {
            "" => return Err(format!("empty segment (at character {pos})")),
            "." | ".." => {
                return Err(format!(
                    "'{seg}' is not a segment a normalized path has (at character {pos})"
                ))
            }
            "**" if i + 1 == parts.len() => rest = true,
            "**" => {
                return Err(format!(
                    "'**' may only be the last segment (at character {pos})"
                ))
            }
            "*" => segments.push(Segment::Any),
            s if s.contains('*') => {
                let off = s.find('*').map_or(0, |o| s[..o].chars().count());
                return Err(format!(
                    "'*' must be a whole segment (at character {})",
                    pos + off
                ));
            }
            s => segments.push(Segment::Literal(Word::new(s))),
        }
        at += seg.chars().count() + 1;
    }
    Ok((segments.into(), rest))
}

impl Routes {
    /// Refuses every request: what a keyspace's rules are taken to be until they are read.
    pub fn closed() -> Routes {
        Routes {
            rules: Box::new([]),
            unmatched: Unmatched::Deny,
        }
    }

    /// What the rules require of `req`.
    pub fn decide(&self, req: RouteRequest<'_>) -> RouteDecision<'_> {
        if self.rules.is_empty() {
            return self.unmatched_decision();
        }
        let Some(uri) = req.uri.filter(|u| !u.is_empty()) else {
            return self.unmatched_decision();
        };
        // The path without its query (and the authority of an absolute-form URI).
        let Some(path) = path_of(uri) else {
            return RouteDecision::NotAllowed;
        };
        let mut segs = Segments::default();
        if !segs.split(path) {
            // Dot or empty segments, or escapes: match the normalized path. One that cannot be
            // made comparable is refused outright when there are rules: under `allow` it could
            // otherwise slip past a rule the upstream would apply.
            let Normalized::Changed(clean) = normalize(path) else {
                return RouteDecision::NotAllowed;
            };
            let mut again = Segments::default();
            if !again.split(&clean) {
                return RouteDecision::NotAllowed;
            }
            return self.first_match(req.method, &again);
        }
        self.first_match(req.method, &segs)
    }

    fn first_match<'s>(&'s self, method: Option<&str>, segs: &Segments<'_>) -> RouteDecision<'s> {
        // HEAD is matched as GET: servers answer it with their GET handlers.
        let method = method
            .map(|m| if m == "HEAD" { "GET" } else { m })
            .map(|m| (fingerprint(m), m));
        for rule in self.rules.iter() {
            if let Some(want) = &rule.method {
                match method {
                    Some((fp, m)) if want.is(fp, m) => {}
                    _ => continue,
                }
            }
            if rule.matches(segs) {
                return RouteDecision::Require(&rule.scopes);
            }
        }
        self.unmatched_decision()
    }

    fn unmatched_decision(&self) -> RouteDecision<'_> {
        match self.unmatched {
            Unmatched::Allow => RouteDecision::Require(&[]),
            Unmatched::Deny => RouteDecision::NotAllowed,
        }
    }
}

impl Compiled {
    fn matches(&self, path: &Segments<'_>) -> bool {
        let fixed = self.segments.len();
        if path.total < fixed || (!self.rest && path.total != fixed) {
            return false;
        }
        self.segments
            .iter()
            .zip(path.fps.iter().zip(&path.text))
            .all(|(s, (fp, p))| match s {
                Segment::Any => true,
                Segment::Literal(l) => l.is(*fp, p),
            })
    }
}

/// A path split into segments, on the stack: the first [`MAX_SEGMENTS`] (no pattern has more)
/// with their fingerprints, and how many there are.
#[derive(Default)]
struct Segments<'a> {
    fps: [u64; MAX_SEGMENTS],
    text: [&'a str; MAX_SEGMENTS],
    total: usize,
}

impl<'a> Segments<'a> {
    /// Splits a path that starts with `/`; `false` when it is not normal (an empty, `.` or
    /// `..` segment, a `%` escape, `;` or `\`), to be normalized (or refused) first.
    fn split(&mut self, path: &'a str) -> bool {
        if path == "/" {
            return true;
        }
        for seg in path[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['%', ';', '\\']) {
                return false;
            }
            if self.total < MAX_SEGMENTS {
                self.fps[self.total] = fingerprint(seg);
                self.text[self.total] = seg;
            }
            self.total += 1;
        }
        true
    }
}

/// The path of a URI: the query and fragment dropped, and the scheme and authority of an
/// absolute-form URI; `None` when what is left does not start with `/`.
fn path_of(uri: &str) -> Option<&str> {
    let uri = match uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
    {
        Some(rest) => match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => "/",
        },
        None => uri,
    };
    // A fragment never belongs in a request target: one there is refused (the upstream may
    // read the raw path past it).
    if uri.contains('#') {
        return None;
    }
    let path = match uri.find('?') {
        Some(i) => &uri[..i],
        None => uri,
    };
    path.starts_with('/').then_some(path)
}

/// A request path made comparable with patterns.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Already normal (the common case: no allocation).
    Clean(&'a str),
    Changed(String),
    /// Matches no rule.
    Invalid,
}

/// The path of `uri` (its query dropped) with escapes decoded and `.` and empty segments
/// dropped; `/` for the root. A `..` segment, `;`, `\\`, `#` or a bad escape is
/// [`Normalized::Invalid`].
pub fn normalize(uri: &str) -> Normalized<'_> {
    let Some(path) = path_of(uri) else {
        return Normalized::Invalid;
    };
    let needs_work = path.contains('%')
        || path.contains("//")
        || path.len() > 1 && path.ends_with('/')
        || path.split('/').any(|s| s == "." || s == "..")
        || path.contains([';', '\\']);
    if !needs_work {
        return Normalized::Clean(path);
    }
    let mut out: Vec<String> = Vec::new();
    for raw in path[1..].split('/') {
        let Some(seg) = decode(raw) else {
            return Normalized::Invalid;
        };
        // `..` is refused rather than resolved: an upstream that does not resolve it (or
        // routes by prefix) would reach another handler than the rule keyward matched. `;`
        // (path parameters, dropped by some servers) and `\` (a separator to others) likewise.
        if seg == ".." || seg.contains([';', '\\']) {
            return Normalized::Invalid;
        }
        if !seg.is_empty() && seg != "." {
            out.push(seg);
        }
    }
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() {
        p.push('/');
    }
    Normalized::Changed(p)
}

/// Percent-decodes one segment; `None` for a bad escape, an encoded `/` or invalid UTF-8.
fn decode(seg: &str) -> Option<String> {
    if !seg.contains('%') {
        return Some(seg.to_string());
    }
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return None;
            };
            let byte = (h * 16 + l) as u8;
            if byte == b'/' {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(method: Option<&str>, path: &str, scopes: &[&str]) -> RouteRule {
        RouteRule {
            method: method.map(str::to_string),
            path: path.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn req<'a>(method: &'a str, uri: &'a str) -> RouteRequest<'a> {
        RouteRequest {
            method: Some(method),
            uri: Some(uri),
        }
    }

    fn scopes<'a>(d: RouteDecision<'a>) -> Option<Vec<&'a str>> {
        match d {
            RouteDecision::Require(s) => Some(s.iter().map(String::as_str).collect()),
            RouteDecision::NotAllowed => None,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let r = compile(
            &[
                rule(Some("GET"), "/orders/**", &["orders:read"]),
                rule(Some("POST"), "/orders", &["orders:write"]),
                rule(None, "/orders/*/items/*", &["items:any"]),
                rule(None, "/health", &[]),
                rule(None, "/admin/**", &["admin"]),
            ],
            Unmatched::Deny,
        )
        .unwrap();
        assert_eq!(
            scopes(r.decide(req("GET", "/orders"))),
            Some(vec!["orders:read"])
        );
        assert_eq!(
            scopes(r.decide(req("GET", "/orders/1/items/2?x=1"))),
            Some(vec!["orders:read"])
        );
        assert_eq!(
            scopes(r.decide(req("POST", "/orders"))),
            Some(vec!["orders:write"])
        );
        assert_eq!(
            scopes(r.decide(req("DELETE", "/orders/1/items/2"))),
            Some(vec!["items:any"])
        );
        assert_eq!(scopes(r.decide(req("DELETE", "/orders/1/items"))), None);
        assert_eq!(scopes(r.decide(req("OPTIONS", "/orders/1"))), None);
        assert_eq!(
            scopes(r.decide(req("HEAD", "/orders"))),
            Some(vec!["orders:read"]),
            "HEAD is matched as GET"
        );
        assert_eq!(scopes(r.decide(req("GET", "/health"))), Some(vec![]));
        assert_eq!(scopes(r.decide(req("GET", "/healthz"))), None);
        assert_eq!(
            scopes(r.decide(req("GET", "/Admin/x"))),
            None,
            "case-sensitive"
        );
        assert_eq!(scopes(r.decide(req("GET", "/admin"))), Some(vec!["admin"]));
        let no_uri = RouteRequest {
            method: Some("GET"),
            uri: None,
        };
        assert_eq!(
            scopes(r.decide(no_uri)),
            None,
            "no original URI: unmatched decides"
        );
        let open = compile(&[rule(None, "/admin/**", &["admin"])], Unmatched::Allow).unwrap();
        assert_eq!(scopes(open.decide(req("GET", "/x"))), Some(vec![]));
        assert_eq!(scopes(open.decide(no_uri)), Some(vec![]));
    }

    #[test]
    fn paths_are_normalized_so_a_rule_cannot_be_dodged() {
        let r = compile(&[rule(None, "/admin/**", &["admin"])], Unmatched::Allow).unwrap();
        for dodge in [
            "/admin",
            "//admin/x",
            "/./admin/x",
            "/%61dmin/x",
            "/admin/",
            "/admin/x/",
            "/admin?/x",
        ] {
            assert_eq!(
                scopes(r.decide(req("GET", dodge))),
                Some(vec!["admin"]),
                "{dodge}"
            );
        }
        // A path that cannot be normalized is refused whenever there are rules, even under
        // `allow` (the upstream might read it as /admin).
        for invalid in [
            "/../admin",
            "/public/../admin/x",
            "/admin/../public/x",
            "/public/%2e%2e/admin",
            "/admin;x/secret",
            "/admin%3Bx/secret",
            "/admin\\x",
            "/public#/../admin",
            "/adm%2Fin/x",
            "/%zz/admin",
            "/%ff",
            "admin",
        ] {
            assert_eq!(scopes(r.decide(req("GET", invalid))), None, "{invalid}");
        }
        let no_rules = compile(&[], Unmatched::Allow).unwrap();
        assert_eq!(scopes(no_rules.decide(req("GET", "/../x"))), Some(vec![]));
        // An empty URI is no URI: unmatched decides.
        assert_eq!(scopes(r.decide(req("GET", ""))), Some(vec![]));
        // Absolute-form URIs are read for their path.
        assert_eq!(
            scopes(r.decide(req("GET", "https://api.example.com/admin/x"))),
            Some(vec!["admin"])
        );
        // Deeper than any pattern still matches a `**` rule by its prefix.
        let deep = format!("/admin{}", "/x".repeat(100));
        assert_eq!(scopes(r.decide(req("GET", &deep))), Some(vec!["admin"]));
        let exact = compile(&[rule(None, "/a/*", &["s"])], Unmatched::Deny).unwrap();
        assert_eq!(
            scopes(exact.decide(req("GET", &format!("/a{}", "/x".repeat(100))))),
            None
        );
        assert_eq!(normalize("/a/b"), Normalized::Clean("/a/b"));
        assert_eq!(normalize("/a/b?c=/d"), Normalized::Clean("/a/b"));
        assert_eq!(normalize("/a//b/"), Normalized::Changed("/a/b".into()));
        assert_eq!(normalize("/a/.."), Normalized::Invalid);
        assert_eq!(normalize("/a/./"), Normalized::Changed("/a".into()));
    }

    #[test]
    fn bad_patterns_name_the_rule_and_the_position() {
        let cases = [
            (
                rule(None, "orders", &[]),
                "routes[0].path: a pattern starts with '/' (at character 1)",
            ),
            (
                rule(None, "/orders/**/x", &[]),
                "routes[0].path: '**' may only be the last segment (at character 9)",
            ),
            (
                rule(None, "/orders/x*", &[]),
                "routes[0].path: '*' must be a whole segment (at character 10)",
            ),
            (
                rule(None, "/orders//x", &[]),
                "routes[0].path: empty segment (at character 9)",
            ),
            (
                rule(None, "/a b", &[]),
                "routes[0].path: ' ' is not allowed in a pattern (at character 3)",
            ),
            (
                rule(None, "/a?b", &[]),
                "routes[0].path: '?' is not allowed in a pattern (at character 3)",
            ),
            (
                rule(None, "/a/../b", &[]),
                "routes[0].path: '..' is not a segment a normalized path has (at character 4)",
            ),
            (
                rule(Some("get"), "/a", &[]),
                "routes[0].method: 'get' must be 1..20 uppercase letters (GET, POST, ...)",
            ),
            (
                rule(None, "/a", &["orders:*"]),
                "routes[0].scopes[0]: requested scope 'orders:*' may not contain '*'",
            ),
        ];
        for (r, want) in cases {
            let rules = [rule(None, "/ok", &[]), r];
            let got = check_rules(&rules[1..]).unwrap_err().to_string();
            assert_eq!(got, want);
            let got = check_rules(&rules).unwrap_err().to_string();
            assert!(got.starts_with("routes[1]."), "{got}");
        }
        let many: Vec<RouteRule> = (0..=MAX_RULES)
            .map(|i| rule(None, &format!("/{i}"), &[]))
            .collect();
        assert!(check_rules(&many).is_err());
        assert!(check_rules(&many[..MAX_RULES]).is_ok());
    }

    #[test]
    fn segments_compare_exactly_whatever_their_length() {
        let r = compile(
            &[
                rule(None, "/abcdefg", &["short"]),
                rule(None, "/abcdefghij", &["long"]),
                rule(Some("PROPFIND"), "/dav", &["dav"]),
            ],
            Unmatched::Deny,
        )
        .unwrap();
        assert_eq!(
            scopes(r.decide(req("GET", "/abcdefg"))),
            Some(vec!["short"])
        );
        assert_eq!(scopes(r.decide(req("GET", "/abcdefgh"))), None);
        let long = format!("/abcdefg{}", "x".repeat(256));
        assert_eq!(
            scopes(r.decide(req("GET", &long))),
            None,
            "a length that wraps a byte"
        );
        assert_eq!(
            scopes(r.decide(req("GET", "/abcdefghij"))),
            Some(vec!["long"])
        );
        assert_eq!(scopes(r.decide(req("GET", "/abcdefghik"))), None);
        assert_eq!(scopes(r.decide(req("GET", "/abcdef"))), None);
        assert_eq!(scopes(r.decide(req("PROPFIND", "/dav"))), Some(vec!["dav"]));
        assert_eq!(scopes(r.decide(req("PROPFINX", "/dav"))), None);
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("a\0"));
    }

    #[test]
    fn a_key_in_a_rule_is_refused() {
        let key = crate::keyformat::generate("acme");
        let k = key.expose();
        for (r, field) in [
            (rule(None, &format!("/x/{k}"), &[]), "routes[0].path"),
            (rule(None, "/x", &[k]), "routes[0].scopes[0]"),
        ] {
            let msg = check_rules(&[r]).unwrap_err().to_string();
            assert!(msg.starts_with(field), "{msg}");
            assert!(msg.contains("looks like an API key"), "{msg}");
            assert!(!msg.contains(k), "the key is not echoed: {msg}");
        }
    }

    #[test]
    fn root_and_catch_all_patterns() {
        let r = compile(
            &[rule(None, "/", &["root"]), rule(None, "/**", &["any"])],
            Unmatched::Deny,
        )
        .unwrap();
        assert_eq!(scopes(r.decide(req("GET", "/"))), Some(vec!["root"]));
        assert_eq!(scopes(r.decide(req("GET", "/?q=1"))), Some(vec!["root"]));
        assert_eq!(scopes(r.decide(req("GET", "/x/y"))), Some(vec!["any"]));
    }

    #[test]
    fn rules_round_trip_through_json() {
        let rules = vec![
            rule(Some("GET"), "/orders/**", &["orders:read"]),
            rule(None, "/x", &[]),
        ];
        let text = serde_json::to_string(&rules).unwrap();
        assert_eq!(
            text,
            r#"[{"method":"GET","path":"/orders/**","scopes":["orders:read"]},{"path":"/x","scopes":[]}]"#
        );
        let back: Vec<RouteRule> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rules);
        assert!(serde_json::from_str::<Vec<RouteRule>>(r#"[{"path":"/x","extra":1}]"#).is_err());
    }
}

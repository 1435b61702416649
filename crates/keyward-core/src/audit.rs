//! The audit hash chain: `hash = sha256_hex(prev_hash || JCS(event without "hash"))`, with the
//! first event's `prev_hash` 64 zeros. [`canonical_json`] implements RFC 8785 (JCS): object
//! members sorted by UTF-16 code units, no whitespace, ECMAScript number and string forms.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keyformat::hex;
use crate::model::AuditEvent;

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// RFC 8785 canonical form of a JSON value.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // JCS treats every number as an IEEE 754 double in ECMAScript's shortest form.
            let f = n.as_f64().unwrap_or(0.0);
            let mut buf = ryu_js::Buffer::new();
            out.push_str(buf.format(f));
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The hash an event must carry, computed from every field but `hash`.
pub fn event_hash(event: &AuditEvent) -> String {
    let mut v = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("hash");
    }
    let mut h = Sha256::new();
    h.update(event.prev_hash.as_bytes());
    h.update(canonical_json(&v).as_bytes());
    hex(&h.finalize())
}

/// The result of walking a chain from the first event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainCheck {
    Ok { events: i64, head: String },
    Bad { events: i64, first_bad_seq: i64 },
}

/// `ChainCheck` on the wire (`GET /v1/audit/verify`): `{"ok": true, "events", "head"}` or
/// `{"ok": false, "events", "first_bad_seq"}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChainCheckWire {
    ok: bool,
    events: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_bad_seq: Option<i64>,
}

impl serde::Serialize for ChainCheck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            ChainCheck::Ok { events, head } => ChainCheckWire {
                ok: true,
                events: *events,
                head: Some(head.clone()),
                first_bad_seq: None,
            },
            ChainCheck::Bad {
                events,
                first_bad_seq,
            } => ChainCheckWire {
                ok: false,
                events: *events,
                head: None,
                first_bad_seq: Some(*first_bad_seq),
            },
        };
        serde::Serialize::serialize(&wire, s)
    }
}

impl<'de> serde::Deserialize<'de> for ChainCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = <ChainCheckWire as serde::Deserialize>::deserialize(d)?;
        match (w.ok, w.head, w.first_bad_seq) {
            (true, Some(head), _) => Ok(ChainCheck::Ok {
                events: w.events,
                head,
            }),
            (false, _, Some(first_bad_seq)) => Ok(ChainCheck::Bad {
                events: w.events,
                first_bad_seq,
            }),
            _ => Err(serde::de::Error::custom(
                "an audit check is ok with a head, or not ok with a first_bad_seq",
            )),
        }
    }
}

/// Incremental chain checker: feed events in `seq` order.
pub struct ChainVerifier {
    expected_seq: i64,
    prev: String,
    bad: Option<i64>,
    count: i64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev: GENESIS_HASH.to_string(),
            bad: None,
            count: 0,
        }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, e: &AuditEvent) {
        self.count += 1;
        if self.bad.is_some() {
            return;
        }
        if e.seq != self.expected_seq || e.prev_hash != self.prev || event_hash(e) != e.hash {
            self.bad = Some(self.expected_seq.min(e.seq));
            return;
        }
        self.expected_seq += 1;
        self.prev = e.hash.clone();
    }

    pub fn finish(self) -> ChainCheck {
        match self.bad {
            Some(seq) => ChainCheck::Bad {
                events: self.count,
                first_bad_seq: seq,
            },
            None => ChainCheck::Ok {
                events: self.count,
                head: self.prev,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_follows_rfc_8785() {
        let v =
            json!({"b": [1.0, 1e21, 0.1, -0.0], "a": "\u{1}\n\"é", "\u{e000}": 1, "\u{1f600}": 2});
        assert_eq!(
            canonical_json(&v),
            "{\"a\":\"\\u0001\\n\\\"é\",\"b\":[1,1e+21,0.1,0],\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }
}

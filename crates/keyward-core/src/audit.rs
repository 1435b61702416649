//! The audit hash chain: `hash = sha256_hex(prev_hash || JCS(event without "hash"))`, with the
//! first event's `prev_hash` 64 zeros. [`canonical_json`] implements RFC 8785 (JCS): object
//! members sorted by UTF-16 code units, no whitespace, ECMAScript number and string forms.

use serde_json::{Map, Value};
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
            write_number(n.as_f64().unwrap_or(0.0), out);
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
        Value::Object(map) => write_object(map, out),
    }
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    // Names that are all ASCII (nearly every one) sort the same by bytes as by UTF-16 units.
    if keys.iter().all(|k| k.is_ascii()) {
        keys.sort_unstable();
    } else {
        keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    }
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

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Runs of characters that need no escape are copied whole; every escaped one is ASCII, so
    // byte offsets between them are character boundaries.
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escaped.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escaped);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

fn write_number(n: f64, out: &mut String) {
    let mut buf = ryu_js::Buffer::new();
    out.push_str(buf.format(n));
}

/// The hash an event must carry, computed from every field but `hash`.
pub fn event_hash(event: &AuditEvent) -> String {
    let mut body = String::with_capacity(512);
    write_event(event, &mut body);
    let mut h = Sha256::new();
    h.update(event.prev_hash.as_bytes());
    h.update(body.as_bytes());
    hex(&h.finalize())
}

/// [`event_hash`] computed as it was first written: the event made a JSON value, `hash` taken
/// out, the value's canonical form hashed after `prev_hash`. The same hash for every event (a
/// property test holds them equal), at about three times the cost: the reference that test and
/// the audit benchmark compare against, not for the server's use.
#[doc(hidden)]
pub fn event_hash_through_a_value(event: &AuditEvent) -> String {
    let mut v = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("hash");
    }
    let mut h = Sha256::new();
    h.update(event.prev_hash.as_bytes());
    h.update(canonical_json(&v).as_bytes());
    hex(&h.finalize())
}

/// The canonical form of `e` without `hash`, written field by field: what
/// `canonical_json(&to_value(e))` gives with `hash` removed (a test holds the two equal), without
/// building the value or sorting its names (`audit verify` hashes every event of the trail).
fn write_event(e: &AuditEvent, out: &mut String) {
    let text = |s: &Option<String>, out: &mut String| match s {
        Some(s) => write_string(s, out),
        None => out.push_str("null"),
    };
    out.push_str("{\"action\":");
    write_string(&e.action, out);
    out.push_str(",\"actor\":{\"id\":");
    write_string(&e.actor.id, out);
    out.push_str(",\"name\":");
    write_string(&e.actor.name, out);
    out.push_str(",\"type\":");
    write_string(e.actor.kind.as_str(), out);
    out.push_str("},\"at\":");
    write_string(&e.at.to_rfc3339(), out);
    out.push_str(",\"changes\":");
    write_object(&e.changes, out);
    out.push_str(",\"id\":");
    write_string(&e.id, out);
    out.push_str(",\"ip\":");
    text(&e.ip, out);
    out.push_str(",\"prev_hash\":");
    write_string(&e.prev_hash, out);
    out.push_str(",\"reason\":");
    text(&e.reason, out);
    out.push_str(",\"request_id\":");
    text(&e.request_id, out);
    out.push_str(",\"seq\":");
    write_number(e.seq as f64, out);
    out.push_str(",\"target_id\":");
    write_string(&e.target_id, out);
    out.push_str(",\"target_type\":");
    write_string(&e.target_type, out);
    out.push('}');
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

    fn text() -> impl Strategy<Value = String> {
        // ASCII, escapes, controls, DEL, two- to four-byte characters.
        proptest::string::string_regex("[a-z\"\\\\\u{0}-\u{1f}\u{7f}é\u{e000}\u{1f600} ]{0,12}")
            .expect("regex")
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn event() -> impl Strategy<Value = AuditEvent> {
        use crate::model::{Actor, ActorKind};
        let kinds = prop_oneof![
            Just(ActorKind::Token),
            Just(ActorKind::User),
            Just(ActorKind::Cli),
            Just(ActorKind::System),
            Just(ActorKind::Scanner),
        ];
        (
            (
                text(),
                any::<i64>(),
                -10_000_000_000_000i64..10_000_000_000_000,
                kinds,
            ),
            (text(), text(), text(), text(), text()),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            proptest::collection::btree_map(text(), json_value(), 0..5),
        )
            .prop_map(
                |(
                    (id, seq, at, kind),
                    (actor_id, name, action, target_type, target_id),
                    (reason, request_id, ip),
                    changes,
                )| AuditEvent {
                    id,
                    seq,
                    at: crate::time::Timestamp::from_millis(at),
                    actor: Actor {
                        kind,
                        id: actor_id,
                        name,
                    },
                    action,
                    target_type,
                    target_id,
                    reason,
                    request_id,
                    ip,
                    changes: changes.into_iter().collect(),
                    prev_hash: GENESIS_HASH.to_string(),
                    hash: String::new(),
                },
            )
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_hash_written_directly_is_the_hash_of_the_canonical_value(e in event()) {
            prop_assert_eq!(event_hash(&e), event_hash_through_a_value(&e));
        }

        /// JCS escapes strings as ECMAScript's `JSON.stringify` does, which is serde_json's
        /// escaping too: `"`, `\\` and controls below 0x20, lowercase `\\u00xx` but for the five
        /// short forms; nothing else.
        #[test]
        fn strings_are_escaped_as_ecmascript_does(s in text()) {
            prop_assert_eq!(canonical_json(&Value::String(s.clone())), serde_json::to_string(&s).expect("a string"));
        }
    }
}

//! Webhook events, built where the change happens and written to the outbox in the change's own
//! transaction (so an event exists exactly when its change committed).

use keyward_core::id::new_id;
use keyward_core::kinds::WebhookEvent;
use keyward_core::model::{Identity, Key, KeyObject};
use keyward_core::time::Timestamp;
use keyward_store::OutboxEvent;
use serde_json::{json, Map, Value};

/// An event about a key: `data` is `{"key": <key object>}` plus `extra` fields.
pub(crate) fn key_event(
    kind: WebhookEvent,
    key: &Key,
    now: Timestamp,
    extra: Map<String, Value>,
) -> OutboxEvent {
    let mut data = Map::new();
    data.insert("key".into(), json!(KeyObject::new(key, now)));
    data.extend(extra);
    let id = new_id("msg", now);
    let body = json!({"id": id, "type": kind, "at": now, "data": data});
    OutboxEvent {
        id,
        kind: kind.as_str().to_string(),
        at: now,
        keyspace_id: Some(key.keyspace_id.clone()),
        key_id: Some(key.id.clone()),
        body: body.to_string(),
    }
}

/// An event about an identity: `data` is `{"identity": <identity>}` plus `extra` fields. It
/// goes to webhooks of every keyspace (an identity's keys may be in any).
pub(crate) fn identity_event(
    kind: WebhookEvent,
    identity: &Identity,
    now: Timestamp,
    extra: Map<String, Value>,
) -> OutboxEvent {
    let mut data = Map::new();
    data.insert("identity".into(), json!(identity));
    data.extend(extra);
    let id = new_id("msg", now);
    let body = json!({"id": id, "type": kind, "at": now, "data": data});
    OutboxEvent {
        id,
        kind: kind.as_str().to_string(),
        at: now,
        keyspace_id: None,
        key_id: None,
        body: body.to_string(),
    }
}

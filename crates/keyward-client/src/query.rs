//! Query strings of the list and usage calls. Every field is optional; `None` is left out.

use serde::Serialize;

/// `limit` and `cursor` of a plain list (keyspaces, tokens, webhooks, deliveries).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/keys` filters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `active`, `rotating`, `disabled`, `expired` or `revoked`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `name:value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A substring of the key's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unused_for_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/audit` filters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Usage ranges (`from` and `to` in RFC 3339, `granularity` `minute`, `hour` or `day`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct UsageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
}

/// `GET /v1/anomalies` filters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AnomalyQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

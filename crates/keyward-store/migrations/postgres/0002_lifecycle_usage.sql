-- Webhooks with a transactional outbox, usage buckets, source addresses and anomalies.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    keyspace_id TEXT,
    -- The signing secret must be known to sign deliveries; it is never returned after creation.
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- The outbox: one row per event, written in the transaction of the change that caused it.
CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    at BIGINT NOT NULL,
    keyspace_id TEXT,
    key_id TEXT,
    body TEXT NOT NULL
);

-- One row per (webhook, event), created with the event; the delivery worker works these off.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    lease_until BIGINT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT webhook_deliveries_once UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (state, next_at);

-- One row per delivery attempt (the deliveries list of the API).
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_hook_idx ON webhook_attempts (webhook_id, at DESC, id DESC);

-- Verification counts per key, outcome code and minute / hour / day ('m', 'h', 'd').
CREATE TABLE usage_buckets (
    key_id TEXT NOT NULL,
    granularity TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    code TEXT NOT NULL,
    n BIGINT NOT NULL,
    CONSTRAINT usage_buckets_pkey PRIMARY KEY (key_id, granularity, start_at, code)
);
CREATE INDEX usage_buckets_time_idx ON usage_buckets (granularity, start_at);

-- A bounded record of recent source addresses per key.
CREATE TABLE key_sources (
    key_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    n BIGINT NOT NULL,
    CONSTRAINT key_sources_pkey PRIMARY KEY (key_id, ip)
);

CREATE TABLE anomalies (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    keyspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- Identifies one occurrence (e.g. the minute of a spike) so that nodes sweeping together
    -- record it once.
    dedup TEXT NOT NULL CONSTRAINT anomalies_dedup_key UNIQUE,
    detected_at BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX anomalies_detected_idx ON anomalies (detected_at DESC, id DESC);
CREATE INDEX anomalies_key_idx ON anomalies (key_id, kind, detected_at);

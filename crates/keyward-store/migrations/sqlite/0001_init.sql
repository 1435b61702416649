-- keyward schema v1 (SQLite). Times are milliseconds since the Unix epoch (UTC).
-- JSON-valued columns hold compact JSON text. Constraint names match the PostgreSQL schema.
CREATE TABLE write_lock (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO write_lock (id, n) VALUES (1, 0);

CREATE TABLE keyspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL CONSTRAINT keyspaces_prefix_key UNIQUE,
    policy TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    keyspace_id TEXT NOT NULL REFERENCES keyspaces (id),
    name TEXT NOT NULL,
    owner TEXT,
    scopes TEXT NOT NULL,
    labels TEXT NOT NULL,
    meta TEXT NOT NULL,
    hash BLOB NOT NULL CONSTRAINT keys_hash_key UNIQUE,
    start_chars TEXT NOT NULL,
    end_chars TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT,
    revoked_reason TEXT,
    rotated_from TEXT,
    rotated_to TEXT,
    last_used_at BIGINT,
    call_count BIGINT NOT NULL DEFAULT 0,
    denied_count BIGINT NOT NULL DEFAULT 0,
    ratelimit TEXT,
    remaining BIGINT,
    allowed_cidrs TEXT,
    expired_at BIGINT,
    warned_at BIGINT
);
CREATE INDEX keys_created_idx ON keys (created_at DESC, id DESC);
CREATE INDEX keys_keyspace_idx ON keys (keyspace_id, created_at DESC, id DESC);
CREATE INDEX keys_owner_idx ON keys (owner);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    keyspace_ids TEXT,
    hash BLOB NOT NULL CONSTRAINT tokens_hash_key UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT,
    revoked_reason TEXT,
    last_used_at BIGINT
);

CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL CONSTRAINT audit_events_id_key UNIQUE,
    at BIGINT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    reason TEXT,
    request_id TEXT,
    ip TEXT,
    changes TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_target_idx ON audit_events (target_id, seq);
CREATE INDEX audit_actor_idx ON audit_events (actor_id, seq);

-- Every change to a key appends here in the same transaction; nodes follow it by seq to keep
-- their verification caches coherent.
CREATE TABLE change_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    key_hash BLOB NOT NULL,
    at BIGINT NOT NULL,
    -- The node (process) that made the change; it applied the change to its own cache already.
    origin TEXT NOT NULL DEFAULT ''
);

-- keyward schema v3 (SQLite): dashboard users, their sessions, and the one-time setup link.
-- The same statements run on SQLite and PostgreSQL; constraint names match across backends.
-- Secrets are never stored: session ids and setup tokens only as the lowercase hex SHA-256 of
-- their value, passwords only as Argon2id PHC strings.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    -- Lowercased at the edge, so the unique constraint is case-insensitive in effect.
    email TEXT NOT NULL CONSTRAINT users_email_key UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    disabled_at BIGINT,
    last_login_at BIGINT
);

CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL CONSTRAINT sessions_user_fkey REFERENCES users (id),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip TEXT
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE setup_tokens (
    hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

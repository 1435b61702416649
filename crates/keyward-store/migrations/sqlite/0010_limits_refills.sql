-- Named rate limits and refilling quotas.
-- `keys.ratelimits`: every named limit of the key as JSON (NULL: none); `keys.ratelimit` keeps
-- the one named `default` (the one-limit shorthand), so rows written before read the same.
ALTER TABLE keys ADD COLUMN ratelimits TEXT;
-- `keys.refill`: `{"amount", "interval"}` as JSON (NULL: the quota never refills);
-- `refill_anchor`: when it was set (the origin of an interval in seconds);
-- `refilled_at`: the start of the period `remaining` and the leases belong to. A lease taken in a
-- later period first refills (`remaining` = amount) and voids every older lease.
ALTER TABLE keys ADD COLUMN refill TEXT;
ALTER TABLE keys ADD COLUMN refill_anchor BIGINT;
ALTER TABLE keys ADD COLUMN refilled_at BIGINT;
-- An identity's rate limits, shared by all its keys (JSON; NULL: none).
ALTER TABLE identities ADD COLUMN ratelimits TEXT;
-- The keyspace's `policy.quota_low_percent`, as a column a key read can join cheaply (the
-- verifier sends `key.quota_low` when a refilling quota falls below it).
ALTER TABLE keyspaces ADD COLUMN quota_low_percent BIGINT;
-- Threshold notices (`key.rate_limited`, `key.quota_low`) already sent: one row per key, limit
-- and window (or refill period), so that the nodes of a cluster send each once.
CREATE TABLE notices (
    dedup TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
CREATE INDEX notices_at ON notices (at);
-- An identity's quota, shared by all its keys: leased like a key's (`quota_leases.key_id` is
-- `@` and the identity's id: key ids never start with `@`). `quota_version` counts the times
-- it was set anew (nodes then drop their leases of it).
ALTER TABLE identities ADD COLUMN remaining BIGINT;
ALTER TABLE identities ADD COLUMN refill TEXT;
ALTER TABLE identities ADD COLUMN refill_anchor BIGINT;
ALTER TABLE identities ADD COLUMN refilled_at BIGINT;
ALTER TABLE identities ADD COLUMN quota_version BIGINT NOT NULL DEFAULT 0;

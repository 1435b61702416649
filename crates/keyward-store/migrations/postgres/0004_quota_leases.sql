-- Quota leases: `keys.remaining` is the quota no node holds; each node leases slices of it in one
-- atomic update and spends from its lease in memory, so a quota is never over-granted across
-- nodes. A key's remaining quota is `keys.remaining` plus the sum of its leases.
CREATE TABLE quota_leases (
    key_id TEXT NOT NULL,
    node TEXT NOT NULL,
    amount BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT quota_leases_pkey PRIMARY KEY (key_id, node)
);

-- A change-feed row that voids the key's leases (its quota was set anew): nodes drop theirs.
ALTER TABLE change_feed ADD COLUMN quota BOOLEAN NOT NULL DEFAULT FALSE;

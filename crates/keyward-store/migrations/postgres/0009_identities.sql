-- Identities: the owner string keys already carry, made an object (a customer, a team), so that
-- what applies to all of an owner's keys is set once. A key belongs to the identity whose id is
-- its owner; keys whose owner has no identity row behave as before.
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    meta TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX identities_created ON identities (created_at, id);

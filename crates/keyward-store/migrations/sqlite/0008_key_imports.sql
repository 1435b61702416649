-- Keys brought in from another system (POST /v1/keyspaces/{id}/keys/import).
-- `external_id`: the record's id in the system it came from; an import is idempotent by it
-- within a keyspace.
ALTER TABLE keys ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX keys_external_id ON keys (keyspace_id, external_id) WHERE external_id IS NOT NULL;
-- One row per imported key. `fingerprint`: SHA-256 of what the record carried (the key's own
-- SHA-256 for plaintext and sha256 records, of algorithm and hash string for salted ones), so a
-- record imported again is recognised. `keyward_format`: whether the key has keyward's prefix
-- and checksum (a key without them is looked up by its SHA-256 only once the node knows such
-- keys exist). `lookup` and `slow_hash`: a salted password hash of the key and the leading
-- characters that find it; both are cleared when the key is first verified and its SHA-256
-- takes the place of the placeholder in `keys.hash`.
CREATE TABLE key_imports (
    key_id TEXT PRIMARY KEY REFERENCES keys (id),
    keyspace_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    keyward_format BOOLEAN NOT NULL,
    lookup TEXT,
    slow_hash TEXT
);
CREATE UNIQUE INDEX key_imports_lookup ON key_imports (keyspace_id, lookup) WHERE lookup IS NOT NULL;
CREATE INDEX key_imports_lookup_any ON key_imports (lookup) WHERE lookup IS NOT NULL;
CREATE INDEX key_imports_foreign ON key_imports (keyspace_id) WHERE NOT keyward_format;

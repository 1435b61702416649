-- Key lists at a million keys: each filter of the key list reads what it matches, not the whole
-- keyspace (docs/decisions.md, "Key lists at a million keys").
-- An owner's keys in list order (newest first), in place of the owner index.
CREATE INDEX keys_owner_list_idx ON keys (owner, created_at DESC, id DESC);
DROP INDEX keys_owner_idx;
-- The statuses that are usually a small part of a keyspace, each in list order.
CREATE INDEX keys_revoked_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE revoked_at IS NOT NULL;
CREATE INDEX keys_disabled_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE NOT enabled;
CREATE INDEX keys_rotated_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE rotated_to IS NOT NULL;
CREATE INDEX keys_expiring_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE expires_at IS NOT NULL;

-- Each label of each key, kept by triggers from `keys.labels` (the source of truth): a label
-- filter finds its keys here.
CREATE TABLE key_labels (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    key_id TEXT NOT NULL,
    CONSTRAINT key_labels_pkey PRIMARY KEY (name, value, key_id)
) WITHOUT ROWID;
CREATE INDEX key_labels_key_idx ON key_labels (key_id);
INSERT INTO key_labels (name, value, key_id) SELECT j.key, j.value, k.id FROM keys k, json_each(k.labels) j;
CREATE TRIGGER key_labels_insert AFTER INSERT ON keys BEGIN
    INSERT INTO key_labels (name, value, key_id) SELECT j.key, j.value, new.id FROM json_each(new.labels) j;
END;
CREATE TRIGGER key_labels_update AFTER UPDATE OF labels ON keys WHEN old.labels <> new.labels BEGIN
    DELETE FROM key_labels WHERE key_id = old.id;
    INSERT INTO key_labels (name, value, key_id) SELECT j.key, j.value, new.id FROM json_each(new.labels) j;
END;
CREATE TRIGGER key_labels_delete AFTER DELETE ON keys BEGIN
    DELETE FROM key_labels WHERE key_id = old.id;
END;

-- Key names for `q`: a trigram full-text index (any substring of three characters or more),
-- over a copy of the names whose integer row ids are stable (those of `keys` are not).
CREATE TABLE key_names (
    n INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL CONSTRAINT key_names_key_id_key UNIQUE,
    name TEXT NOT NULL
);
INSERT INTO key_names (key_id, name) SELECT id, name FROM keys;
CREATE VIRTUAL TABLE key_names_search USING fts5 (
    name, content = 'key_names', content_rowid = 'n', tokenize = 'trigram'
);
INSERT INTO key_names_search (key_names_search) VALUES ('rebuild');
CREATE TRIGGER key_names_insert AFTER INSERT ON keys BEGIN
    INSERT INTO key_names (key_id, name) VALUES (new.id, new.name);
END;
CREATE TRIGGER key_names_update AFTER UPDATE OF name ON keys WHEN old.name <> new.name BEGIN
    UPDATE key_names SET name = new.name WHERE key_id = new.id;
END;
CREATE TRIGGER key_names_delete AFTER DELETE ON keys BEGIN
    DELETE FROM key_names WHERE key_id = old.id;
END;
CREATE TRIGGER key_names_search_insert AFTER INSERT ON key_names BEGIN
    INSERT INTO key_names_search (rowid, name) VALUES (new.n, new.name);
END;
CREATE TRIGGER key_names_search_update AFTER UPDATE ON key_names BEGIN
    INSERT INTO key_names_search (key_names_search, rowid, name) VALUES ('delete', old.n, old.name);
    INSERT INTO key_names_search (rowid, name) VALUES (new.n, new.name);
END;
CREATE TRIGGER key_names_search_delete AFTER DELETE ON key_names BEGIN
    INSERT INTO key_names_search (key_names_search, rowid, name) VALUES ('delete', old.n, old.name);
END;

-- The audit trail filtered by action, newest first (the overview's reported leaks, `GET
-- /v1/audit?action=`): without it, an action with no event read the whole trail.
CREATE INDEX audit_action_idx ON audit_events (action, seq);

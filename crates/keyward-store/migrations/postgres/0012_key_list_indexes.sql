-- Key lists at a million keys: each filter of the key list reads what it matches, not the whole
-- keyspace (docs/decisions.md, "Key lists at a million keys").
-- An owner's keys in list order (newest first); it replaces the owner index at the end, so
-- readers of `keys` on nodes not yet upgraded are not locked out while the indexes are built
-- (building them holds off writes to `keys`: seconds at a million keys).
CREATE INDEX keys_owner_list_idx ON keys (owner, created_at DESC, id DESC);
-- The statuses that are usually a small part of a keyspace, each in list order.
CREATE INDEX keys_revoked_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE revoked_at IS NOT NULL;
CREATE INDEX keys_disabled_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE NOT enabled;
CREATE INDEX keys_rotated_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE rotated_to IS NOT NULL;
CREATE INDEX keys_expiring_idx ON keys (keyspace_id, created_at DESC, id DESC) WHERE expires_at IS NOT NULL;

-- Each label of each key, kept by triggers from `keys.labels` (the source of truth): a label
-- filter finds its keys here. Inserts and deletes are handled a statement at a time (a bulk
-- insert costs one trigger call), a change of labels a row at a time.
CREATE TABLE key_labels (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    key_id TEXT NOT NULL,
    CONSTRAINT key_labels_pkey PRIMARY KEY (name, value, key_id)
);
CREATE INDEX key_labels_key_idx ON key_labels (key_id);
INSERT INTO key_labels (name, value, key_id)
    SELECT j.key, j.value, k.id FROM keys k, jsonb_each_text(k.labels::jsonb) j;
CREATE FUNCTION keyward_key_labels_added() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO key_labels (name, value, key_id)
        SELECT j.key, j.value, a.id FROM keyward_added a, jsonb_each_text(a.labels::jsonb) j;
    RETURN NULL;
END;
$$;
CREATE TRIGGER key_labels_insert AFTER INSERT ON keys REFERENCING NEW TABLE AS keyward_added
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_key_labels_added();
CREATE FUNCTION keyward_key_labels_removed() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM key_labels WHERE key_id IN (SELECT id FROM keyward_removed);
    RETURN NULL;
END;
$$;
CREATE TRIGGER key_labels_delete AFTER DELETE ON keys REFERENCING OLD TABLE AS keyward_removed
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_key_labels_removed();
CREATE FUNCTION keyward_key_labels_changed() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM key_labels WHERE key_id = OLD.id;
    INSERT INTO key_labels (name, value, key_id)
        SELECT j.key, j.value, NEW.id FROM jsonb_each_text(NEW.labels::jsonb) j;
    RETURN NULL;
END;
$$;
CREATE TRIGGER key_labels_update AFTER UPDATE OF labels ON keys
    FOR EACH ROW WHEN (OLD.labels IS DISTINCT FROM NEW.labels)
    EXECUTE FUNCTION keyward_key_labels_changed();

-- Key names for `q`: a trigram index of `lower(name)` (pg_trgm, shipped with PostgreSQL and
-- trusted since version 13), installed into `public` where it is not installed yet. Where it
-- cannot be installed or used (no `public`, no right to create there or to use the schema it is
-- in), the migration goes on without the index and a name search reads the keys in list order,
-- as before. It is never installed into keyward's own schema: dropping that schema would take
-- the extension, and every other schema's index with it.
DO $$
DECLARE
    ext_schema TEXT;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm could not be installed (%): key names are searched without an index', SQLERRM;
    END;
    SELECT n.nspname INTO ext_schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pg_trgm';
    IF ext_schema IS NOT NULL AND has_schema_privilege(ext_schema, 'USAGE') THEN
        BEGIN
            EXECUTE format('CREATE INDEX keys_name_trgm_idx ON keys USING gin (lower(name) %I.gin_trgm_ops)', ext_schema);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'the trigram index of key names could not be made (%): names are searched without it', SQLERRM;
        END;
    END IF;
END;
$$;

-- The audit trail filtered by action, newest first (the overview's reported leaks, `GET
-- /v1/audit?action=`): without it, an action with no event read the whole trail.
CREATE INDEX audit_action_idx ON audit_events (action, seq);

-- Last: the old owner index goes (the lock this takes is held only to the commit).
DROP INDEX keys_owner_idx;

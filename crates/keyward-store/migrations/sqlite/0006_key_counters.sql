-- Usage counters of keys in a narrow table: the usage flusher rewrites the counters of every key
-- used since the last flush (every second by default), and rewriting small rows touches a few
-- pages where rewriting the wide `keys` rows touched most of that table. Reads of a key take
-- `call_count`, `denied_count` and `last_used_at` from here (no row: never counted); the
-- columns of `keys` keep the values as of this migration and are no longer read.
CREATE TABLE key_counters (
    key_id TEXT NOT NULL,
    calls BIGINT NOT NULL,
    denied BIGINT NOT NULL,
    last_used_at BIGINT,
    CONSTRAINT key_counters_pkey PRIMARY KEY (key_id)
) WITHOUT ROWID;
INSERT INTO key_counters (key_id, calls, denied, last_used_at)
    SELECT id, call_count, denied_count, last_used_at FROM keys
    WHERE call_count <> 0 OR denied_count <> 0 OR last_used_at IS NOT NULL;

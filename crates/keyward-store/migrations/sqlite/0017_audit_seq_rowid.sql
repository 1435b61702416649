-- SQLite makes a column its table's row id only when it is declared `INTEGER PRIMARY KEY`:
-- `seq BIGINT PRIMARY KEY` kept an index of its own beside the table, one more B-tree page
-- written with every event and read, then the table, by every read of the trail in order
-- (`audit verify`, the export, the chain's head). The trail is copied column for column into a
-- table whose `seq` is the row id; no value changes, so the chain verifies as before. The copy
-- takes a few seconds per million events, once. PostgreSQL reads its `seq` index as it
-- should: nothing changes there.
CREATE TABLE audit_events_new (
    seq INTEGER PRIMARY KEY,
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
INSERT INTO audit_events_new (seq, id, at, actor_type, actor_id, actor_name, action, target_type,
    target_id, reason, request_id, ip, changes, prev_hash, hash)
SELECT seq, id, at, actor_type, actor_id, actor_name, action, target_type, target_id, reason,
    request_id, ip, changes, prev_hash, hash FROM audit_events ORDER BY seq;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_target_idx ON audit_events (target_id, seq);
CREATE INDEX audit_actor_idx ON audit_events (actor_id, seq);
CREATE INDEX audit_action_idx ON audit_events (action, seq);

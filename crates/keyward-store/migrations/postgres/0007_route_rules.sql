-- Route rules of a keyspace (forward-auth): the ordered rules as compact JSON, and what a
-- request no rule matches gets ('allow' keeps what keyspaces did before).
ALTER TABLE keyspaces ADD COLUMN routes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keyspaces ADD COLUMN unmatched TEXT NOT NULL DEFAULT 'allow';
-- A feed row about a keyspace (its rules changed): `key_id` holds the keyspace id and
-- `key_hash` is zero; the other nodes read the keyspace's rules again.
ALTER TABLE change_feed ADD COLUMN keyspace BOOLEAN NOT NULL DEFAULT FALSE;

-- The roll-up reads un-rolled minutes by key, in the order it locks them (the flusher's, byte
-- order), a batch after the previous one's last row: this index serves that walk. The index of
-- un-rolled minutes by time served a sort of every un-rolled minute for each batch.
CREATE INDEX usage_buckets_unrolled_key_idx ON usage_buckets (key_id COLLATE "C", start_at, code COLLATE "C")
    WHERE granularity = 'm' AND n <> rolled;
DROP INDEX usage_buckets_unrolled_idx;
-- Keys whose expiry the sweep has yet to mark, and keys yet to be warned, by expiry: each
-- sweep reads the keys due, not every key of the keyspace.
CREATE INDEX keys_expiry_due_idx ON keys (expires_at)
    WHERE revoked_at IS NULL AND expired_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX keys_warning_due_idx ON keys (keyspace_id, expires_at)
    WHERE revoked_at IS NULL AND rotated_to IS NULL AND warned_at IS NULL AND expires_at IS NOT NULL;

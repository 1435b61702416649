-- Keys whose expiry the sweep has yet to mark, and keys yet to be warned, by expiry: each
-- sweep reads the keys due, not every key of the keyspace.
CREATE INDEX keys_expiry_due_idx ON keys (expires_at)
    WHERE revoked_at IS NULL AND expired_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX keys_warning_due_idx ON keys (keyspace_id, expires_at)
    WHERE revoked_at IS NULL AND rotated_to IS NULL AND warned_at IS NULL AND expires_at IS NOT NULL;

-- `dirty`: whether a bucket holds counts not rolled up yet (`n <> rolled`), kept by PostgreSQL
-- itself (a stored generated column, so every writer of any release keeps it right). The
-- roll-up's batches and the reads of what is not rolled up yet go through a partial index on it
-- instead of one on `n <> rolled`: with `n` in an index's condition, each flush's addition to a
-- bucket wrote a new row version with an entry in each of the table's three indexes. Now `dirty`
-- stays true while a flush adds to a bucket not yet rolled up, no indexed value changes, and with
-- room on the page (`fillfactor` 70) the row is rewritten in place (a HOT update).
-- Adding the column rewrites the table (with the room) under an exclusive lock: usage reads and
-- writes wait for it.
ALTER TABLE usage_buckets SET (fillfactor = 70);
ALTER TABLE usage_buckets ADD COLUMN dirty BOOLEAN GENERATED ALWAYS AS (n <> rolled) STORED;
CREATE INDEX usage_buckets_dirty_key_idx ON usage_buckets (key_id COLLATE "C", start_at, code COLLATE "C")
    WHERE granularity = 'm' AND dirty;
DROP INDEX usage_buckets_unrolled_key_idx;

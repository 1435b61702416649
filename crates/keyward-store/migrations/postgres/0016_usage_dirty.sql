-- A minute bucket that gained since its last roll-up is marked `dirty` (set by the flush that
-- adds to it, cleared by the roll-up that moves its gain), and the roll-up reads its batches
-- from an index of dirty minutes. The index it replaces was on `n <> rolled`: with `n` in an
-- index's condition, every flush's addition to a bucket wrote a new row version with an entry in
-- each of the table's three indexes. Now a flush changes only `n`, which no index reads, and
-- with room on the page (`fillfactor` 70) PostgreSQL rewrites the row in place (a HOT update).
-- Invariant: `n <> rolled` implies `dirty`; a row that is not dirty has `n = rolled`.
ALTER TABLE usage_buckets ADD COLUMN dirty BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE usage_buckets SET dirty = TRUE WHERE granularity = 'm' AND n <> rolled;
CREATE INDEX usage_buckets_dirty_key_idx ON usage_buckets (key_id COLLATE "C", start_at, code COLLATE "C")
    WHERE granularity = 'm' AND dirty;
DROP INDEX usage_buckets_unrolled_key_idx;
ALTER TABLE usage_buckets SET (fillfactor = 70);

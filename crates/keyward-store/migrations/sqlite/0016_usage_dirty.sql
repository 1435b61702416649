-- A minute bucket that gained since its last roll-up is marked `dirty` (set by the flush that
-- adds to it, cleared by the roll-up that moves its gain), as on PostgreSQL, where the roll-up
-- reads its batches from an index of dirty minutes so that a flush's addition to a bucket
-- changes no indexed column. SQLite keeps reading un-rolled minutes from
-- `usage_buckets_unrolled_idx` (`n <> rolled`): it rewrites a row in its B-tree page either
-- way, and updating that index's entry costs it little.
-- Invariant: `n <> rolled` implies `dirty`; a row that is not dirty has `n = rolled`.
ALTER TABLE usage_buckets ADD COLUMN dirty BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE usage_buckets SET dirty = TRUE WHERE granularity = 'm' AND n <> rolled;

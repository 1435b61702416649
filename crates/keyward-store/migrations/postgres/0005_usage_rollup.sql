-- Hour and day buckets are rolled up from minute buckets by the sweep instead of being written
-- by every usage flush (a flush writes one bucket row per key and code, not three).
-- `rolled`: how much of a minute bucket's `n` is already in its hour and day buckets;
-- `pending`: scratch column of the roll-up (what one roll-up moved).
-- Reads of hours and days add the part of minute buckets not yet rolled up, so they are as
-- current as minutes. Minute buckets written before this migration are already in both.
ALTER TABLE usage_buckets ADD COLUMN rolled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_buckets ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
UPDATE usage_buckets SET rolled = n WHERE granularity = 'm';
CREATE INDEX usage_buckets_unrolled_idx ON usage_buckets (start_at)
    WHERE granularity = 'm' AND n <> rolled;

-- The write lock's row says which transaction committed last: `tag` is set by each write
-- transaction to a random value of its own (rolled back with it), and `hit` records whether the
-- tag it replaced was the one the writer expected. A node trusts what it remembers of its last
-- write only when it was the last to commit (and the counter `n` agrees).
ALTER TABLE write_lock ADD COLUMN tag TEXT;
ALTER TABLE write_lock ADD COLUMN hit INTEGER;

-- The write lock's row says which transaction committed last: `tag` is set by each write
-- transaction to a random value of its own (rolled back with it), and `hit` records whether the
-- tag it replaced was the one the writer expected. A node trusts what it remembers of its last
-- write only when it was the last to commit (and the counter `n` agrees).
ALTER TABLE write_lock ADD COLUMN tag TEXT;
ALTER TABLE write_lock ADD COLUMN hit BOOLEAN;
-- The change feed wakes the other nodes' followers by itself: a statement that adds feed rows
-- raises `keyward_changes` at commit (PostgreSQL folds repeats within one transaction), so a
-- write no longer spends a round trip on `pg_notify`. The payload names the schema (followers
-- wake on any payload).
CREATE FUNCTION keyward_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyward_changes', current_schema());
    RETURN NULL;
END;
$$;
CREATE TRIGGER change_feed_notify AFTER INSERT ON change_feed
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_feed_notify();

-- The change feed wakes the other nodes' followers by itself: a statement that adds feed rows
-- raises `keyward_changes` at commit (PostgreSQL folds repeats within one transaction), so a
-- write no longer spends a round trip on `pg_notify`. The payload names the schema (followers
-- wake on any; it tells the deployments sharing one database apart).
CREATE FUNCTION keyward_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyward_changes', current_schema());
    RETURN NULL;
END;
$$;
CREATE TRIGGER change_feed_notify AFTER INSERT ON change_feed
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_feed_notify();

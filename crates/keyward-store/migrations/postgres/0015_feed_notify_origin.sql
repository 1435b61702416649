-- The change feed's notification names the node that wrote the rows, after the schema and one
-- space ("keyward_test_ab12 Xy3...."): a node's follower does not wake for its own commits, whose
-- changes it applied when it made them. One notification per writing node and statement
-- (PostgreSQL folds repeats within a transaction, as before); a follower of an older version
-- wakes on any payload.
CREATE OR REPLACE FUNCTION keyward_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyward_changes', current_schema() || ' ' || origin)
        FROM (SELECT DISTINCT origin FROM new_rows) AS writers;
    RETURN NULL;
END;
$$;
DROP TRIGGER change_feed_notify ON change_feed;
CREATE TRIGGER change_feed_notify AFTER INSERT ON change_feed
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_feed_notify();

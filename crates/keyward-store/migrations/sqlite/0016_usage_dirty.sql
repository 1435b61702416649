-- PostgreSQL indexes the minute buckets not rolled up yet by a generated column (`dirty`, that
-- is `n <> rolled`) so that a flush's addition to a bucket changes no indexed value. SQLite
-- rewrites the row in its B-tree page either way, and keeps its index on `n <> rolled`. A
-- statement that changes nothing keeps the two backends' migrations numbered alike.
SELECT 1;

-- PostgreSQL's change feed now notifies by itself (a trigger). SQLite has no notification: one
-- node follows its own file, so there is nothing to change here.
SELECT 1;

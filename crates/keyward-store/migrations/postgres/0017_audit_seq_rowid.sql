-- SQLite copies its audit trail into a table whose `seq` is the row id (a B-tree less per
-- event). PostgreSQL's `seq` is already the primary key index it reads. A statement that
-- changes nothing keeps the two backends' migrations numbered alike.
SELECT 1;

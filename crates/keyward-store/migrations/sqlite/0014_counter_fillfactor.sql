-- PostgreSQL leaves room on the pages of the usage counters' tables for updates in place;
-- SQLite has no such setting (it rewrites a row in its B-tree page either way). A statement that
-- changes nothing keeps the two backends' migrations numbered alike.
SELECT 1;

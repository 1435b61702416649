-- PostgreSQL's change-feed notification names the writing node; SQLite has no notifications
-- (followers poll). A statement that changes nothing keeps the two backends' migrations
-- numbered alike.
SELECT 1;

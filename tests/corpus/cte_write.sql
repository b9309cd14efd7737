-- Data-modifying CTEs across shards (issue 15): the CTE's write runs once on its
-- shards in one distributed transaction (or the client's transaction block), its
-- RETURNING rows go to a temporary table of the finishing session, where PostgreSQL
-- runs the main query; the main query sees the RETURNING rows, not the write's effect
-- on the tables (one snapshot). Tables (test config): cw(id bigint), cw_log(id bigint,
-- co-located with cw), cw_arch(id bigint), cw_ref (reference).
CREATE TABLE cw (id bigint PRIMARY KEY, v text NOT NULL, n int, amount numeric(10,2));
CREATE TABLE cw_log (id bigint PRIMARY KEY, note text);
CREATE TABLE cw_arch (id bigint PRIMARY KEY, v text, n int, amount numeric(10,2));
CREATE TABLE cw_ref (code text PRIMARY KEY, label text);
INSERT INTO cw (id, v, n, amount) VALUES (1, 'a', 1, 1.50), (2, 'b', 2, NULL), (3, 'c', 3, -0.01), (4, 'd', 4, 100), (5, 'e', 5, 0), (6, 'f', 6, 7.25), (7, 'g', 7, 1), (8, 'h', 8, 2), (9, 'tab	here', 9, 3), (10, 'new
line', 10, 4);
INSERT INTO cw_log (id, note) VALUES (1, 'one'), (2, 'two'), (3, 'three'), (5, 'five'), (8, 'eight');
INSERT INTO cw_ref (code, label) VALUES ('a', 'A'), ('b', 'B');
-- A DELETE without the key, on every shard: the main query reads its RETURNING rows.
WITH d AS (DELETE FROM cw WHERE n > 8 RETURNING id, v, amount) SELECT * FROM d ORDER BY id;
SELECT * FROM cw ORDER BY id;
-- Aggregates over the returned rows, with the RETURNING list's column names.
WITH u AS (UPDATE cw SET n = n * 10 WHERE n BETWEEN 2 AND 4 RETURNING id, n AS new_n, amount * 2) SELECT count(*), sum(new_n), max("?column?") FROM u;
SELECT id, n FROM cw ORDER BY id;
-- RETURNING *, renamed by the CTE's column list.
WITH u (a, b, c, d) AS (UPDATE cw SET v = v || '!' WHERE amount > 1 RETURNING *) SELECT a, b, d FROM u ORDER BY a;
SELECT id, v FROM cw ORDER BY id;
-- A multi-row INSERT split by key.
WITH i AS (INSERT INTO cw (id, v, n) VALUES (11, 'k', 11), (12, 'l', 12), (13, 'm', 13) RETURNING id, v) SELECT string_agg(v, ',' ORDER BY id) AS vs FROM i;
-- One snapshot: the main query sees the table as it was before the write.
WITH d AS (DELETE FROM cw WHERE id > 10 RETURNING id) SELECT (SELECT count(*) FROM d) AS deleted, (SELECT count(*) FROM cw) AS seen;
SELECT count(*) FROM cw;
-- Joined with a distributed table (collected before the write).
WITH d AS (DELETE FROM cw_log WHERE note LIKE 't%' RETURNING id, note) SELECT d.id, d.note, cw.v FROM d JOIN cw ON cw.n = d.id ORDER BY d.id;
SELECT * FROM cw_log ORDER BY id;
-- Joined with a reference table.
WITH u AS (UPDATE cw SET v = 'a' WHERE n < 6 RETURNING id, v) SELECT u.id, r.label FROM u JOIN cw_ref r ON r.code = u.v ORDER BY u.id;
-- A write on one shard, the main query reading every shard.
WITH u AS (UPDATE cw SET n = 77 WHERE id = 7 RETURNING id, n) SELECT u.id, u.n, (SELECT count(*) FROM cw WHERE n = 77) AS before FROM u;
-- A reference-table write read with a distributed table.
WITH r AS (INSERT INTO cw_ref (code, label) VALUES ('c', 'C') RETURNING code) SELECT r.code, count(cw.id) AS rows FROM r LEFT JOIN cw ON cw.v = r.code GROUP BY r.code;
SELECT * FROM cw_ref ORDER BY code;
-- A write the main query does not read, and one without RETURNING: both run.
WITH d AS (DELETE FROM cw WHERE id = 7 OR id = 8 RETURNING id) SELECT 1 AS one;
WITH d AS (DELETE FROM cw WHERE n = 5) SELECT 2 AS two;
SELECT id FROM cw ORDER BY id;
WITH d AS (DELETE FROM cw WHERE v = 'nothing' RETURNING id) SELECT count(*) FROM d;
-- Errors roll the write back: a unique violation on one shard.
WITH i AS (INSERT INTO cw (id, v) VALUES (1, 'dup'), (100, 'new'), (101, 'new') RETURNING id) SELECT * FROM i;
SELECT id, v FROM cw ORDER BY id;
-- A NOT NULL violation inside an UPDATE.
WITH u AS (UPDATE cw SET v = NULL WHERE id > 3 RETURNING id) SELECT * FROM u;
-- An error in the main query.
WITH d AS (DELETE FROM cw WHERE id > 0 RETURNING id) SELECT 1 / (count(*) - count(*)) FROM d;
SELECT count(*) FROM cw;
-- A RETURNING column that does not exist.
WITH d AS (DELETE FROM cw WHERE id > 0 RETURNING nosuch) SELECT * FROM d;
SELECT count(*) FROM cw;
-- Inside a transaction block: the write joins the transaction.
BEGIN;
WITH d AS (DELETE FROM cw WHERE id = 1 OR id = 2 RETURNING id, v) SELECT * FROM d ORDER BY id;
SELECT id FROM cw ORDER BY id;
ROLLBACK;
SELECT id FROM cw ORDER BY id;
BEGIN;
WITH u AS (UPDATE cw SET n = 0 WHERE id < 5 RETURNING id, n) SELECT count(*), sum(n) FROM u;
COMMIT;
SELECT id, n FROM cw ORDER BY id;
BEGIN;
WITH i AS (INSERT INTO cw (id, v) VALUES (2, 'dup'), (200, 'x') RETURNING id) SELECT * FROM i;
ROLLBACK;
SELECT id, v FROM cw ORDER BY id;
-- Inside a block, the main query reading distributed tables: collected through the
-- transaction's backends (its own insert seen) before the write runs.
BEGIN;
INSERT INTO cw (id, v, n) VALUES (300, 'in block', 3);
WITH d AS (DELETE FROM cw_log WHERE id > 0 RETURNING id) SELECT count(*) AS deleted, (SELECT count(*) FROM cw) AS cw_rows, (SELECT count(*) FROM cw_log) AS log_rows FROM d;
WITH d AS (DELETE FROM cw WHERE id >= 300 RETURNING id, v) SELECT d.id, d.v, (SELECT count(*) FROM cw) AS seen FROM d ORDER BY d.id;
SELECT count(*) FROM cw_log;
ROLLBACK;
SELECT count(*) FROM cw_log;
SELECT id FROM cw ORDER BY id;
-- Refused inside a transaction block: the main query reads a reference table, which
-- the finishing session (outside the transaction) would see without the block's writes.
-- The refusal fails pgshard's block; both blocks are rolled back after it.
BEGIN;
UPDATE cw_ref SET label = 'changed' WHERE code = 'a';
-- @then-rollback: WITH u AS (UPDATE cw SET n = n + 1 WHERE id < 5 RETURNING id, v) SELECT u.id, r.label FROM u JOIN cw_ref r ON r.code = u.v ORDER BY u.id;
SELECT id, n FROM cw ORDER BY id;
SELECT * FROM cw_ref ORDER BY code;
-- The archive pattern: rows deleted from one table go into another, both writes in
-- one distributed transaction (the INSERT is staged on the finishing session, its rows
-- copied to their shards inside the write's transactions).
WITH d AS (DELETE FROM cw WHERE id > 4 RETURNING *) INSERT INTO cw_arch (id, v, n, amount) SELECT * FROM d;
SELECT * FROM cw ORDER BY id;
SELECT * FROM cw_arch ORDER BY id;
-- A unique violation in the archive rolls both writes back.
INSERT INTO cw (id, v, n) VALUES (5, 'again', 50), (6, 'again', 60);
WITH d AS (DELETE FROM cw WHERE id > 4 RETURNING *) INSERT INTO cw_arch (id, v, n, amount) SELECT * FROM d;
SELECT id, v FROM cw ORDER BY id;
SELECT id, v FROM cw_arch ORDER BY id;
-- An UPDATE's RETURNING rows into a reference table.
WITH u AS (UPDATE cw SET n = n + 1000 WHERE id = 5 OR id = 1 RETURNING id, n) INSERT INTO cw_ref (code, label) SELECT 'u' || id, n::text FROM u;
SELECT * FROM cw_ref ORDER BY code;
SELECT id, n FROM cw ORDER BY id;
-- Inside a transaction block.
BEGIN;
WITH d AS (DELETE FROM cw WHERE id = 6 OR id = 1 RETURNING *) INSERT INTO cw_arch (id, v, n, amount) SELECT id + 1000, v, n, amount FROM d;
SELECT id FROM cw_arch ORDER BY id;
COMMIT;
SELECT id FROM cw ORDER BY id;
SELECT id, v FROM cw_arch ORDER BY id;
-- Refused (0A000): several writes in one WITH, a RETURNING list repeating a name, an
-- UPDATE reading the write.
WITH a AS (DELETE FROM cw WHERE id = -1 RETURNING id), b AS (DELETE FROM cw_log WHERE id = -2 RETURNING id) SELECT * FROM a, b;
WITH d AS (DELETE FROM cw WHERE id < 0 RETURNING id, id) SELECT count(*) FROM d;
WITH d AS (DELETE FROM cw WHERE id < 0 RETURNING id) UPDATE cw_arch SET n = 0 FROM d WHERE d.id = cw_arch.id;
SELECT count(*) FROM cw_arch;

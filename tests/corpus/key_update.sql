-- UPDATE of the shard key (SPEC §5 rule 1, issue 15): the UPDATE runs in place on
-- every shard, and rows whose new key belongs to another shard are deleted there and
-- inserted on their new shard, in one distributed transaction. Tables (test config):
-- ku(id bigint), kc(pid bigint, co-located with ku, referencing it), kcc(pid bigint,
-- co-located, referencing ku ON UPDATE CASCADE), tku(k text), gen(id bigint, with a
-- generated column). The differential test then checks every row sits on the shard
-- its bucket maps to. A refused statement that PostgreSQL runs is undone on
-- PostgreSQL alone (`-- @plain:`), so both copies stay equal.
CREATE TABLE ku (id bigint PRIMARY KEY, v text NOT NULL, n int, amount numeric(10,2), at timestamptz, tags text[]);
CREATE TABLE kc (pid bigint NOT NULL REFERENCES ku (id), c int, PRIMARY KEY (pid, c));
CREATE TABLE tku (k text PRIMARY KEY, n int CHECK (n >= 0));
CREATE TABLE gen (id bigint PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);
INSERT INTO ku (id, v, n, amount, at, tags) VALUES (1, 'a', 1, 1.50, '2024-01-02 03:04:05+00', '{x,"y z"}'), (2, 'b', 2, NULL, NULL, NULL), (3, 'c', 3, -0.01, '2024-06-01 00:00:00+00', '{}'), (4, 'd', 4, 100, NULL, '{NULL}'), (5, 'e', 5, 0, NULL, NULL), (6, 'f', 6, 7.25, NULL, NULL), (7, 'g', 7, 1, NULL, NULL), (8, 'h', 8, 2, NULL, NULL), (9, 'tab\there', 9, 3, NULL, NULL), (10, 'new
line', 10, 4, NULL, NULL);
INSERT INTO kc (pid, c) VALUES (1, 1), (1, 2), (2, 1);
INSERT INTO tku (k, n) VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4), ('it''s', 5), ('Ünïcode', 6);
INSERT INTO gen (id, a) VALUES (1, 10), (2, 20), (3, 30), (4, 40);
-- One row, pinned by its key; every column comes along.
UPDATE ku SET id = 1003 WHERE id = 3;
SELECT * FROM ku WHERE id IN (3, 1003) ORDER BY id;
UPDATE ku SET id = id + 2000, n = n * 10 WHERE id = 4;
SELECT id, v, n, amount, tags FROM ku WHERE id IN (4, 2004) ORDER BY id;
-- Many rows on every shard, with other columns set from the old values.
UPDATE ku SET id = id + 100, v = v || '!' WHERE id BETWEEN 5 AND 10;
SELECT id, v, n, amount FROM ku ORDER BY id;
UPDATE ku SET (id, n) = (id - 100, n + 1) WHERE id > 100 AND id < 200;
SELECT id, v, n FROM ku ORDER BY id;
-- A key set to itself, no row matched, a key that stays put.
UPDATE ku SET id = id WHERE id = 5;
UPDATE ku SET id = 4242 WHERE id = 99999;
UPDATE ku SET id = 1003 WHERE id = 1003;
SELECT count(*), sum(id), sum(n) FROM ku;
-- Errors PostgreSQL raises: a duplicate key, a NULL key, a referenced key, a CHECK.
UPDATE ku SET id = 1 WHERE id = 5;
UPDATE ku SET id = 6 WHERE id = 5;
UPDATE ku SET id = NULL WHERE id = 5;
UPDATE ku SET id = 500 WHERE id = 1;
UPDATE ku SET id = 5 + 1 WHERE v = 'g!';
SELECT id, v FROM ku ORDER BY id;
-- Referenced rows without referencing ones move (NO ACTION foreign key).
UPDATE ku SET id = 700 WHERE id = 7;
INSERT INTO kc (pid, c) VALUES (700, 1);
SELECT pid, c FROM kc ORDER BY pid, c;
-- Text keys.
UPDATE tku SET k = k || '-moved' WHERE n <= 3;
UPDATE tku SET k = upper(k), n = n + 10 WHERE k = 'it''s';
UPDATE tku SET k = 'a' WHERE k = 'd';
UPDATE tku SET k = 'zz', n = -1 WHERE k = 'd';
SELECT * FROM tku ORDER BY k;
-- A generated column is computed again on the new shard.
UPDATE gen SET id = id * 100, a = a + 1 WHERE id <= 3;
SELECT * FROM gen ORDER BY id;
-- Inside transaction blocks: seen by the transaction, undone by ROLLBACK.
BEGIN;
UPDATE ku SET id = 3000 WHERE id = 2;
SELECT id, v FROM ku WHERE id IN (2, 3000) ORDER BY id;
SELECT count(*) FROM ku;
ROLLBACK;
SELECT id, v FROM ku WHERE id IN (2, 3000) ORDER BY id;
BEGIN;
UPDATE ku SET id = 3001 WHERE id = 2;
UPDATE ku SET id = id + 1 WHERE id = 3001;
COMMIT;
SELECT id, v FROM ku WHERE id IN (2, 3001, 3002) ORDER BY id;
BEGIN;
UPDATE ku SET id = 1 WHERE id = 3002;
SELECT 1;
COMMIT;
SELECT id, v FROM ku WHERE id IN (1, 3002) ORDER BY id;
-- RETURNING: the new rows, from whichever shard they end on.
UPDATE ku SET id = 9999 WHERE id = 99999 RETURNING *;
UPDATE tku SET k = k || '-r', n = n + 100 WHERE n < 100 RETURNING k, n, length(k) AS len;
UPDATE gen SET id = id + 1, a = a * 2 WHERE id >= 100 RETURNING *, twice - a AS diff;
UPDATE ku SET id = id + 10000, n = NULL WHERE id < 1000 RETURNING id, v, n, amount, tags;
SELECT * FROM tku ORDER BY k;
SELECT id, v, n FROM ku ORDER BY id;
-- Refused (0A000): a foreign key with ON UPDATE CASCADE when a row has to move.
CREATE TABLE kcc (pid bigint NOT NULL REFERENCES ku (id) ON UPDATE CASCADE, c int);
INSERT INTO ku (id, v) VALUES (50, 'cascade'), (51, 'cascade'), (52, 'cascade'), (53, 'cascade'), (54, 'cascade'), (55, 'cascade');
INSERT INTO kcc (pid, c) VALUES (50, 1), (51, 1), (52, 1), (53, 1), (54, 1), (55, 1);
UPDATE ku SET id = id + 5000 WHERE v = 'cascade';
-- @plain: UPDATE ku SET id = id - 5000 WHERE v = 'cascade';
SELECT * FROM kcc ORDER BY pid;
SELECT count(*), sum(id) FROM ku;

-- INSERTs that span shards or name no columns (SPEC §5 rule 1): multi-row INSERTs are
-- split by shard key, one INSERT per shard in one distributed transaction; an INSERT
-- without a column list is routed by the table's column order, looked up on a shard.
-- RETURNING rows come back shard by shard: the harness compares rows without ORDER BY
-- as multisets, so nothing here depends on their order. Tables (test config): kv(id
-- bigint), tk(k text), ref_c (reference).
CREATE TABLE kv (id bigint PRIMARY KEY, v text, n int DEFAULT 7, amount numeric(10,2));
CREATE TABLE tk (label text, k text PRIMARY KEY, n int);
CREATE TABLE ref_c (c int PRIMARY KEY, name text);
INSERT INTO ref_c VALUES (1, 'one'), (2, 'two'), (3, 'three');
-- Many rows, keys on both shards.
INSERT INTO kv (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f'), (7, 'g'), (8, 'h'), (9, 'i'), (10, 'j');
SELECT * FROM kv ORDER BY id;
-- Column list in another order, expressions in other columns, literals of every shape.
INSERT INTO kv (v, amount, id) VALUES ('it''s', 0.10, 11), (E'tab\there', 1e3, 12), ($$dollar$$, -0.5, -13), (upper('x'), 12.345, '14'), (NULL, NULL, 9223372036854775807), ('min', 2, -9223372036854775808);
SELECT id, v, n, amount FROM kv WHERE id > 10 OR id < 0 ORDER BY id;
-- RETURNING, compared as a set.
INSERT INTO kv (id, v, n) VALUES (21, 'r1', 1), (22, 'r2', 2), (23, 'r3', 3), (24, 'r4', 4) RETURNING id, v, n, amount;
INSERT INTO kv (id, v) VALUES (25, 'r5'), (26, 'r6'), (27, 'r7') RETURNING *;
INSERT INTO kv (id, v) VALUES (28, 'r8'), (29, 'r9') RETURNING id * 2 AS twice, v || '!' AS bang;
-- ON CONFLICT.
INSERT INTO kv (id, v) VALUES (1, 'dup'), (2, 'dup'), (30, 'new'), (31, 'new') ON CONFLICT DO NOTHING;
INSERT INTO kv (id, v) VALUES (3, 'dup'), (4, 'dup'), (32, 'new') ON CONFLICT (id) DO NOTHING RETURNING id, v;
INSERT INTO kv AS k (id, v) VALUES (5, 'u'), (6, 'u'), (7, 'u'), (33, 'u') ON CONFLICT (id) DO UPDATE SET v = k.v || excluded.v, n = k.n + 1 RETURNING id, v, n;
SELECT * FROM kv ORDER BY id;
-- Subqueries on a reference table in the VALUES: the same on every shard.
INSERT INTO kv (id, v) VALUES (40, (SELECT name FROM ref_c WHERE c = 1)), (41, (SELECT name FROM ref_c WHERE c = 2)), (42, (SELECT name FROM ref_c WHERE c = 3));
SELECT id, v FROM kv WHERE id >= 40 ORDER BY id;
-- Errors: a duplicate key on one shard rolls back every row; a NULL key.
INSERT INTO kv (id, v) VALUES (50, 'x'), (51, 'x'), (52, 'x'), (1, 'dup');
INSERT INTO kv (id, v) VALUES (1, 'dup'), (53, 'x'), (54, 'x'), (55, 'x');
INSERT INTO kv (id, v) VALUES (56, 'x'), (NULL, 'x');
SELECT count(*), sum(id), sum(n) FROM kv;
-- Inside transaction blocks.
BEGIN;
INSERT INTO kv (id, v) VALUES (60, 't'), (61, 't'), (62, 't'), (63, 't'), (64, 't');
SELECT v FROM kv WHERE id = 60;
SELECT v FROM kv WHERE id = 63;
COMMIT;
BEGIN;
INSERT INTO kv (id, v) VALUES (70, 't'), (71, 't'), (72, 't'), (73, 't');
ROLLBACK;
BEGIN;
INSERT INTO kv (id, v) VALUES (80, 't'), (81, 't'), (82, 't');
INSERT INTO kv (id, v) VALUES (83, 't'), (1, 'dup');
SELECT 1;
COMMIT;
SELECT * FROM kv ORDER BY id;
-- Without a column list: all columns, leading columns with defaults after, several rows.
INSERT INTO kv VALUES (90, 'nc', 1, 1.5);
INSERT INTO kv VALUES (91, 'nc'), (92, 'nc'), (93, 'nc'), (94, 'nc');
INSERT INTO kv VALUES (95), (96), (97) RETURNING *;
INSERT INTO kv VALUES (98, DEFAULT, DEFAULT, 2) RETURNING id, n, amount;
INSERT INTO kv VALUES (1, 'dup') ON CONFLICT (id) DO UPDATE SET v = 'conflict' RETURNING *;
INSERT INTO kv VALUES (99, 'x', 1, 1, 'too many');
SELECT * FROM kv WHERE id >= 90 ORDER BY id;
-- The key is not the first column.
INSERT INTO tk VALUES ('l1', 'k1', 1);
INSERT INTO tk VALUES ('l2', 'k2', 2), ('l3', 'k3', 3), ('l4', 'it''s', 4), ('l5', 'Ünïcode', 5), ('l6', '', 6);
INSERT INTO tk VALUES ('l7', 'k7') RETURNING *;
SELECT * FROM tk ORDER BY k;
-- An ALTER TABLE moves the key: later INSERTs follow the new order.
ALTER TABLE tk DROP COLUMN label;
INSERT INTO tk VALUES ('k8', 8), ('k9', 9), ('k10', 10);
ALTER TABLE tk ADD COLUMN extra text;
INSERT INTO tk VALUES ('k11', 11, 'e'), ('k12', 12, 'e');
SELECT * FROM tk ORDER BY k;
SELECT count(*), sum(n) FROM tk;

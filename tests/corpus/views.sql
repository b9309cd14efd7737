-- Views over distributed tables (issue 15): the router keeps their definitions in the
-- catalog and plans `FROM v` as the subquery, so the answer is the one a single
-- PostgreSQL gives. Tables (test config): vc(id bigint), vo(cid bigint, co-located
-- with vc), vr (reference); vl is local.
CREATE TABLE vc (id bigint PRIMARY KEY, name text NOT NULL, tier int, vip boolean);
CREATE TABLE vo (cid bigint NOT NULL, oid int NOT NULL, amount numeric(10,2), PRIMARY KEY (cid, oid));
CREATE TABLE vr (tier int PRIMARY KEY, label text);
CREATE TABLE vl (id int PRIMARY KEY, note text);
INSERT INTO vc VALUES (1, 'ann', 1, true), (2, 'bob', 2, false), (3, 'cid', 1, true), (4, 'dan', 3, NULL), (5, 'eve', 2, true), (6, 'fay', NULL, false), (7, 'gus', 1, true), (8, 'hal', 3, false);
INSERT INTO vo VALUES (1, 1, 10.50), (1, 2, 3.25), (2, 1, 7), (3, 1, 100), (5, 1, 1), (5, 2, 2), (5, 3, 3), (8, 1, NULL);
INSERT INTO vr VALUES (1, 'gold'), (2, 'silver'), (3, 'bronze');
INSERT INTO vl VALUES (1, 'local one'), (2, 'local two');
-- A filtering view, read as a whole, by key, with joins and aggregates.
CREATE VIEW vip_c AS SELECT id, name, tier FROM vc WHERE vip;
SELECT * FROM vip_c ORDER BY id;
SELECT name FROM vip_c WHERE id = 3;
SELECT name FROM vip_c WHERE id = 2;
SELECT count(*), sum(tier) FROM vip_c;
SELECT v.name, r.label FROM vip_c v JOIN vr r ON r.tier = v.tier ORDER BY v.id;
SELECT v.name, sum(o.amount) FROM vip_c v JOIN vo o ON o.cid = v.id GROUP BY v.name ORDER BY 1;
SELECT tier, count(*) FROM vip_c GROUP BY tier ORDER BY tier;
SELECT * FROM vip_c ORDER BY name DESC LIMIT 2;
-- Column names given to the view, an aggregate view, a view of a view.
CREATE VIEW c_totals (customer, total, n) AS SELECT c.id, sum(o.amount), count(o.oid) FROM vc c LEFT JOIN vo o ON o.cid = c.id GROUP BY c.id;
SELECT * FROM c_totals ORDER BY customer;
SELECT customer, total FROM c_totals WHERE total > 5 ORDER BY total DESC;
SELECT sum(total), max(n) FROM c_totals;
CREATE VIEW vip_totals AS SELECT v.name, t.total FROM vip_c v JOIN c_totals t ON t.customer = v.id;
SELECT * FROM vip_totals ORDER BY name;
-- A view aliased, in a subquery, in a CTE, joined to itself.
SELECT x.name FROM vip_c AS x WHERE x.tier = 1 ORDER BY 1;
SELECT name FROM vc WHERE id IN (SELECT id FROM vip_c WHERE tier = 1) ORDER BY 1;
WITH t AS (SELECT * FROM vip_c) SELECT count(*) FROM t;
SELECT a.name, b.name FROM vip_c a JOIN vip_c b ON a.tier = b.tier AND a.id < b.id ORDER BY 1, 2;
-- The view follows the table's rows.
INSERT INTO vc VALUES (9, 'ivy', 2, true);
UPDATE vc SET vip = false WHERE id = 1;
SELECT * FROM vip_c ORDER BY id;
-- CREATE OR REPLACE, DROP VIEW, errors PostgreSQL gives.
CREATE OR REPLACE VIEW vip_c AS SELECT id, name, tier, vip FROM vc WHERE vip OR tier = 3;
SELECT * FROM vip_c ORDER BY id;
CREATE VIEW vip_c AS SELECT id FROM vc;
CREATE VIEW bad_v AS SELECT no_such_column FROM vc;
SELECT * FROM bad_v;
DROP VIEW vip_totals;
SELECT * FROM vip_totals;
DROP VIEW IF EXISTS vip_totals;
-- Views over local and reference tables stay PostgreSQL's own.
CREATE VIEW local_v AS SELECT id, note FROM vl;
SELECT * FROM local_v ORDER BY id;
CREATE VIEW ref_v AS SELECT label FROM vr WHERE tier < 3;
SELECT * FROM ref_v ORDER BY label;
DROP VIEW local_v;
DROP VIEW ref_v;
-- Refused (0A000): a write through the view, a materialized one.
CREATE MATERIALIZED VIEW mv AS SELECT id FROM vc;
DROP VIEW c_totals;
DROP VIEW vip_c;
SELECT count(*) FROM vc;

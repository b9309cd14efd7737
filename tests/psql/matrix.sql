-- psql in the driver matrix (tests/tests/drivers.rs): run by psql -X against a router
-- and against a plain PostgreSQL after the same schema was created (and, on the router,
-- distributed); the two outputs, errors included, must be identical. psql talks the
-- simple query protocol: multi-statement strings, COPY FROM STDIN, meta-commands.
\set VERBOSITY sqlstate
\pset footer on

-- Bulk load: multi-row INSERTs spanning both shards (built by \gexec), COPY FROM STDIN.
SELECT 'INSERT INTO accounts (id, owner, balance, region, created) VALUES '
       || string_agg(format('(%s, %L, %s, %s, %L)', g, 'owner ' || g, (g * 37 % 1000) + 0.50,
                            g % 5, DATE '2024-01-01' + g % 30), ', ')
  FROM generate_series(1, 150) g \gexec
COPY accounts (id, owner, balance, region, created) FROM STDIN;
151	owner 151	587.50	1	2024-01-02
152	owner 152	624.50	2	2024-01-03
153	owner 153	661.50	3	2024-01-04
154	owner 154	698.50	4	2024-01-05
155	owner 155	735.50	0	2024-01-06
\.
INSERT INTO accounts (id, owner, balance, region) VALUES (160, 'a', 1, 1), (161, 'b', 2, 2), (162, 'c', 3, 3);
SELECT 'INSERT INTO events (account_id, seq, kind, amount) VALUES '
       || string_agg(format('(%s, %s, %L, %s)', a, s,
                            (ARRAY['deposit', 'fee', 'transfer'])[(a + s) % 3 + 1],
                            (a * s) % 50 - 10), ', ')
  FROM generate_series(1, 162) a, generate_series(1, 3) s \gexec

-- DDL on the distributed tables.
CREATE INDEX accounts_region ON accounts (region);
ALTER TABLE events ADD COLUMN note text DEFAULT 'n';
\d accounts

-- Point and fan-out reads.
SELECT id, owner, balance, region, created FROM accounts WHERE id = 17;
SELECT a.owner, e.seq, e.kind, e.amount FROM accounts a JOIN events e ON e.account_id = a.id WHERE a.id = 42 ORDER BY e.seq;
SELECT count(*), sum(balance), min(balance), max(owner), avg(region) FROM accounts;
SELECT id, owner, balance FROM accounts WHERE region = 3 ORDER BY balance DESC, id LIMIT 7;
SELECT region, count(*), sum(balance), avg(balance) FROM accounts GROUP BY region ORDER BY region;
SELECT kind, count(*), sum(amount), min(amount), max(amount) FROM events WHERE amount > -5 GROUP BY kind ORDER BY kind;
SELECT a.region, count(*), sum(e.amount) FROM accounts a JOIN events e ON e.account_id = a.id GROUP BY a.region ORDER BY a.region;
SELECT id, region FROM accounts WHERE id IN (1, 2, 3, 150, 161) ORDER BY id;
SELECT owner FROM accounts WHERE created = '2024-01-05' ORDER BY balance, id;
SELECT count(*) FROM events WHERE note = 'n' \gset
\echo events with a note: :count

-- SQL-level prepared statements.
PREPARE acc(bigint) AS SELECT owner, balance FROM accounts WHERE id = $1;
EXECUTE acc(5);
EXECUTE acc(123);
DEALLOCATE acc;

-- A multi-shard transaction, committed, and one rolled back.
BEGIN;
UPDATE accounts SET balance = balance - 4 WHERE id = 1;
UPDATE accounts SET balance = balance + 4 WHERE id = 2;
UPDATE accounts SET balance = balance + 1 WHERE region = 2;
INSERT INTO events (account_id, seq, kind, amount) VALUES (4, 9, 'tx', 1), (5, 9, 'tx', 1);
COMMIT;
SELECT id, balance FROM accounts WHERE id <= 5 ORDER BY id;
BEGIN;
UPDATE accounts SET balance = balance + 1;
DELETE FROM accounts WHERE id IN (7, 8, 9);
SELECT count(*) FROM accounts;
ROLLBACK;
SELECT count(*), sum(balance) FROM accounts;

-- Errors with their SQLSTATE; the session goes on.
INSERT INTO accounts (id, owner, balance, region) VALUES (5, 'x', 1, 0);
UPDATE accounts SET balance = -1 WHERE id = 6;
UPDATE accounts SET owner = NULL WHERE region = 2;
SELECT * FROM no_such_table;
SELECT no_such_column FROM accounts;
SELECT sum(1 / (region - region)) FROM accounts;
SELEC 1;
BEGIN;
UPDATE accounts SET balance = balance + 1 WHERE id = 20;
UPDATE accounts SET balance = -5 WHERE id = 21;
SELECT count(*) FROM accounts;
ROLLBACK;
SELECT balance FROM accounts WHERE id = 20;
TRUNCATE events;
SELECT count(*) FROM events;

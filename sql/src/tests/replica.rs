//! Which statements a replica may answer (SPEC §8): `Plan::replica_ok` and
//! `begin_read_only`. Every statement that can write, lock, call a function not
//! known read-only, or needs its own backend (cursors) must say `false`.

use super::catalog;
use crate::{begin_read_only, plan};

fn ok(sql: &str) -> bool {
    plan(sql, &catalog()).replica_ok
}

#[test]
fn plain_reads_may_go_to_a_replica() {
    for sql in [
        "SELECT 1",
        "select * from accounts where aid = 5",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        "SELECT inet_server_port(), count(*) FROM accounts WHERE aid = 1",
        "SELECT * FROM users u JOIN events e ON u.id = e.user_id WHERE u.id = 3",
        "WITH x AS (SELECT id FROM users WHERE id = 1) SELECT * FROM x",
        "VALUES (1), (2)",
        "TABLE branches",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SELECT * FROM accounts WHERE aid IN (1, 2, 3)",
        "SELECT * FROM accounts WHERE EXISTS (SELECT 1 FROM branches)",
        "SELECT coalesce(sum(abalance), 0)::numeric(12, 2) FROM pgbench_accounts",
        "SELECT pg_catalog.now(), lower('A'), pg_last_wal_replay_lsn()",
        "SELECT 1; SELECT 2",
        "SELECT * FROM accounts ORDER BY aid LIMIT 10",
        "SELECT count(*) FILTER (WHERE aid > 1) FROM accounts",
        "SELECT row_number() OVER (PARTITION BY aid ORDER BY aid) FROM accounts",
        "/* pgshard: shard=2 */ SELECT * FROM accounts",
    ] {
        assert!(ok(sql), "{sql} should be replica-safe");
    }
}

#[test]
fn writes_locks_and_unknown_functions_stay_on_the_primary() {
    for sql in [
        "INSERT INTO accounts VALUES (1)",
        "UPDATE accounts SET abalance = 1 WHERE aid = 1",
        "DELETE FROM accounts WHERE aid = 1",
        "WITH d AS (DELETE FROM accounts WHERE aid = 1 RETURNING *) SELECT * FROM d",
        "WITH i AS (INSERT INTO users VALUES (1) RETURNING id) SELECT id FROM i",
        "SELECT * FROM accounts WHERE aid = 1 FOR UPDATE",
        "SELECT * FROM accounts WHERE aid = 1 FOR NO KEY UPDATE",
        "SELECT * FROM accounts WHERE aid = 1 FOR SHARE",
        "select * from accounts where aid = 1 for key share nowait",
        "SELECT * FROM accounts FOR UPDATE OF accounts SKIP LOCKED",
        "SELECT nextval('s')",
        "SELECT setval('s', 5)",
        "SELECT set_config('search_path', 'x', false)",
        "SELECT pg_advisory_lock(1)",
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        "SELECT my_function(aid) FROM accounts WHERE aid = 1",
        "SELECT \"lower\"('A')",
        "SELECT public.lower('A')",
        "SELECT * INTO newtab FROM accounts",
        "SELECT 1; INSERT INTO accounts VALUES (1)",
        "SELECT 1; SELECT nextval('s')",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        "DECLARE c CURSOR FOR SELECT 1",
        "FETCH 10 FROM c",
        "COPY accounts TO STDOUT",
        "SHOW search_path",
        "SET search_path = x",
        "BEGIN",
        "BEGIN READ ONLY",
        "COMMIT",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "LOCK accounts",
        "CREATE TABLE x (a int)",
        "CALL p()",
        "DO $$ BEGIN END $$",
        "SELECT * FROM accounts a(x, y)",
        "",
    ] {
        assert!(!ok(sql), "{sql} must stay on the primary");
    }
}

#[test]
fn read_only_transactions() {
    for sql in [
        "BEGIN READ ONLY",
        "begin transaction read only",
        "START TRANSACTION READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "BEGIN READ WRITE, READ ONLY",
    ] {
        assert!(begin_read_only(sql), "{sql}");
    }
    for sql in [
        "BEGIN",
        "BEGIN READ WRITE",
        "BEGIN READ ONLY, READ WRITE",
        "START TRANSACTION",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE DEFERRABLE",
        "SELECT 'read only'",
        "SET TRANSACTION READ ONLY",
    ] {
        assert!(!begin_read_only(sql), "{sql}");
    }
}

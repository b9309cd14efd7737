//! DDL, utility commands, COPY and statements sqlparser cannot parse (SPEC §5 rules 5
//! and 8).

use super::*;

#[test]
fn ddl_on_declared_and_local_tables() {
    check_all(&[
        ("CREATE TABLE accounts (aid bigint PRIMARY KEY, abalance int)", E::All),
        ("CREATE TABLE IF NOT EXISTS public.accounts (aid bigint)", E::All),
        ("create table pgbench_history(tid int,bid int,aid int,delta int,mtime timestamp,filler char(22))", E::All),
        ("CREATE TABLE branches (bid int)", E::All),
        ("CREATE TABLE app.orders (order_id bigint)", E::All),
        ("CREATE TABLE newtable (id int)", E::Local),
        ("CREATE TABLE orders (id int)", E::Local),
        ("CREATE TEMP TABLE tmp (id int)", E::Local),
        ("CREATE TABLE copy AS SELECT * FROM branches", E::Local),
        ("CREATE TABLE copy AS SELECT * FROM accounts WHERE aid = 5", E::Unsup("CREATE TABLE … AS over distributed table accounts")),
        ("CREATE TABLE accounts AS SELECT 1 AS aid", E::Unsup("CREATE TABLE … AS of declared table accounts")),
        ("CREATE TABLE t2 (LIKE accounts)", E::Local),
        ("ALTER TABLE accounts ADD COLUMN note text", E::All),
        ("ALTER TABLE IF EXISTS ONLY accounts ALTER COLUMN abalance SET DEFAULT 0", E::All),
        ("ALTER TABLE branches ADD COLUMN x int", E::All),
        ("ALTER TABLE misc ADD COLUMN y int", E::Local),
        ("ALTER TABLE accounts RENAME TO accts", E::Unsup("renaming declared table accounts")),
        ("ALTER TABLE accounts RENAME COLUMN aid TO id", E::Unsup("renaming shard key column aid")),
        ("ALTER TABLE accounts RENAME COLUMN abalance TO bal", E::All),
        ("ALTER TABLE accounts ALTER COLUMN aid TYPE int", E::Unsup("changing the type of shard key column aid")),
        ("ALTER TABLE accounts ALTER COLUMN abalance TYPE bigint", E::All),
        ("ALTER TABLE accounts DROP COLUMN aid", E::Unsup("dropping the shard key column")),
        ("ALTER TABLE accounts DROP COLUMN abalance", E::All),
        ("DROP TABLE accounts", E::All),
        ("DROP TABLE IF EXISTS accounts, branches CASCADE", E::All),
        ("DROP TABLE misc", E::Local),
        ("DROP TABLE accounts, misc", E::Unsup("DROP TABLE of declared table accounts together with local table misc")),
        ("drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers", E::All),
        ("DROP TABLE IF EXISTS accounts, misc", E::All),
        ("CREATE INDEX ON accounts (abalance)", E::All),
        ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS acc_idx ON public.accounts USING btree (aid)", E::All),
        ("CREATE INDEX misc_idx ON misc (x)", E::Local),
        ("DROP INDEX acc_idx", E::All),
        ("DROP INDEX IF EXISTS acc_idx, misc_idx", E::All),
        ("TRUNCATE accounts", E::All),
        ("TRUNCATE TABLE ONLY accounts, branches RESTART IDENTITY CASCADE", E::All),
        ("truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers", E::All),
        ("TRUNCATE misc", E::Local),
        ("TRUNCATE accounts, misc", E::Unsup("TRUNCATE of declared table accounts together with local table misc")),
        ("VACUUM", E::All),
        ("VACUUM accounts", E::All),
        ("VACUUM ANALYZE accounts", E::All),
        ("VACUUM (VERBOSE, ANALYZE) accounts (abalance), branches", E::All),
        ("VACUUM FULL FREEZE VERBOSE misc", E::Local),
        ("vacuum analyze pgbench_branches", E::All),
        ("ANALYZE", E::All),
        ("ANALYZE accounts", E::All),
        ("ANALYZE VERBOSE misc", E::Local),
        ("ANALYSE accounts (aid)", E::All),
        ("CLUSTER accounts USING accounts_pkey", E::All),
        ("CLUSTER", E::All),
        ("CLUSTER misc", E::Local),
        ("REINDEX TABLE accounts", E::All),
        ("REINDEX TABLE CONCURRENTLY misc", E::Local),
        ("REINDEX INDEX accounts_pkey", E::All),
        ("REINDEX DATABASE postgres", E::All),
        ("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", E::All),
        ("LOCK misc", E::Local),
        ("COMMENT ON TABLE accounts IS 'x'", E::All),
        ("COMMENT ON COLUMN accounts.abalance IS 'x'", E::All),
        ("COMMENT ON TABLE misc IS 'x'", E::Local),
        ("GRANT SELECT ON accounts TO alice", E::All),
        ("GRANT SELECT, UPDATE ON TABLE accounts, branches TO alice", E::All),
        ("GRANT SELECT ON misc TO alice", E::Local),
        ("GRANT SELECT ON ALL TABLES IN SCHEMA public TO alice", E::All),
        ("REVOKE ALL ON accounts FROM alice", E::All),
        ("GRANT admin TO alice", E::All),
        ("CREATE ROLE alice LOGIN", E::All),
        ("DROP ROLE alice", E::All),
        ("CREATE SCHEMA app", E::All),
        ("DROP SCHEMA app CASCADE", E::All),
        ("CREATE EXTENSION IF NOT EXISTS pgcrypto", E::All),
        ("DROP EXTENSION pgcrypto", E::All),
        ("CREATE SEQUENCE s", E::Local),
        ("DROP SEQUENCE s", E::Local),
        // Types and domains go where any table's columns may use them.
        ("CREATE TYPE mood AS ENUM ('sad', 'ok')", E::All),
        ("CREATE TYPE pair AS (a int, b text)", E::All),
        ("ALTER TYPE mood ADD VALUE 'happy'", E::All),
        ("DROP TYPE IF EXISTS mood", E::All),
        ("CREATE DOMAIN posint AS int CHECK (VALUE > 0)", E::All),
        ("DROP DOMAIN posint", E::All),
        ("CREATE VIEW v AS SELECT * FROM branches", E::Local),
        // Kept by the router (`crate::views`).
        ("CREATE VIEW v AS SELECT * FROM accounts WHERE aid = 5", E::Router(RouterCommand::CreateView { name: "v".into(), columns: Vec::new(), query: "SELECT * FROM accounts WHERE aid = 5".into(), replace: false, check_sql: "CREATE VIEW v AS SELECT * FROM accounts WHERE aid = 5".into() })),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM accounts", E::Unsup("materialized view over distributed table accounts")),
        ("DROP VIEW v", E::Local),
        ("CREATE DATABASE other", E::Local),
        ("CHECKPOINT", E::All),
    ]);
    assert_eq!(kind("CREATE TABLE t (id int)"), StatementKind::Ddl);
    assert_eq!(kind("VACUUM ANALYZE accounts"), StatementKind::Ddl);
    assert_eq!(kind("TRUNCATE accounts"), StatementKind::Ddl);
    assert_eq!(
        kind("GRANT SELECT ON accounts TO alice"),
        StatementKind::Ddl
    );
    assert_eq!(kind("LOCK misc"), StatementKind::Other);
    assert_eq!(kind("CHECKPOINT"), StatementKind::Other);
}

#[test]
fn copy() {
    use crate::CopyDirection::{In, Out};
    check_all(&[
        ("COPY accounts FROM STDIN", E::Copy(In, 3, Some("aid"))),
        (
            "COPY accounts (aid, abalance) FROM STDIN WITH (FORMAT csv, FREEZE ON)",
            E::Copy(In, 3, Some("aid")),
        ),
        (
            "copy pgbench_accounts from stdin with (freeze on)",
            E::Copy(In, 3, Some("aid")),
        ),
        ("COPY BINARY accounts FROM STDIN", E::Copy(In, 3, Some("aid"))),
        ("COPY accounts TO STDOUT", E::Copy(Out, 3, None)),
        ("COPY accounts TO STDOUT (FORMAT csv, HEADER)", E::Copy(Out, 3, None)),
        (
            "COPY accounts FROM '/tmp/a.csv'",
            E::Unsup("COPY FROM a server file or program with distributed table accounts"),
        ),
        (
            "COPY accounts TO PROGRAM 'cat'",
            E::Unsup("COPY TO a server file or program"),
        ),
        (
            "COPY accounts FROM STDIN WITH OIDS",
            E::Unsup("COPY option oids (not understood by the router) on table accounts"),
        ),
        ("COPY branches TO STDOUT (FORMAT binary)", E::Any),
        ("COPY branches FROM STDIN", E::Copy(In, 3, None)),
        ("COPY misc FROM STDIN", E::Local),
        ("COPY misc (x) FROM '/tmp/file.csv' CSV HEADER", E::Local),
        ("COPY public.misc TO STDOUT", E::Local),
        (
            "COPY (SELECT * FROM accounts WHERE aid = 5) TO STDOUT",
            E::Key(int(5)),
        ),
        ("COPY (SELECT * FROM branches) TO STDOUT WITH CSV", E::Any),
        ("COPY (SELECT * FROM accounts) TO STDOUT", E::Copy(Out, 3, None)),
        (
            "COPY (SELECT aid, abalance FROM accounts WHERE abalance > 0) TO STDOUT (FORMAT csv)",
            E::Copy(Out, 3, None),
        ),
        (
            "COPY (SELECT * FROM accounts ORDER BY aid) TO STDOUT",
            E::Unsup("COPY (query) TO STDOUT with ORDER BY over several shards of distributed table accounts"),
        ),
        (
            "COPY (SELECT * FROM accounts LIMIT 5) TO STDOUT",
            E::Unsup("with LIMIT/OFFSET"),
        ),
        (
            "COPY (SELECT count(*) FROM accounts) TO STDOUT",
            E::Unsup("with aggregates"),
        ),
        (
            "COPY (SELECT bid, count(*) FROM accounts GROUP BY bid) TO STDOUT",
            E::Unsup("with GROUP BY"),
        ),
        (
            "COPY (SELECT DISTINCT bid FROM accounts) TO STDOUT",
            E::Unsup("with DISTINCT"),
        ),
        (
            "COPY (SELECT * FROM accounts) TO '/tmp/x'",
            E::Unsup("to a server file or program"),
        ),
        ("COPY (SELECT * FROM misc) TO STDOUT", E::Local),
        ("COPY accounts FROM STDIN; SELECT 1", E::Unsup("multi-statement")),
    ]);
    assert_eq!(kind("COPY accounts FROM STDIN"), StatementKind::Write);
    assert_eq!(kind("COPY accounts TO STDOUT"), StatementKind::Read);
    assert_eq!(kind("COPY (SELECT 1) TO STDOUT"), StatementKind::Read);
    let Route::Copy(c) = r("COPY app.orders (order_id, x) FROM STDIN (FORMAT csv, HEADER)") else {
        panic!("not a copy")
    };
    assert_eq!(c.table, "orders");
    assert_eq!(c.table_sql, "app.orders");
    assert_eq!(c.columns, Some(vec!["order_id".to_owned(), "x".to_owned()]));
    assert_eq!(c.options.format, crate::CopyFormat::Csv);
    assert!(c.options.header);
    let Route::Copy(c) = r("COPY \"MixedCase\" FROM STDIN") else {
        panic!("not a copy")
    };
    assert_eq!(c.table_sql, "\"MixedCase\"");
    assert_eq!(c.key.map(|k| k.column), Some("Key".to_owned()));
}

#[test]
fn unparseable_statements_are_still_routed() {
    check_all(&[
        ("DO $$ BEGIN PERFORM 1; END $$", E::Local),
        ("DO LANGUAGE plpgsql $$ BEGIN UPDATE accounts SET x = 1; END $$", E::Local),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$", E::Local),
        ("CREATE OR REPLACE FUNCTION f() RETURNS trigger AS $$ BEGIN RETURN NEW; END; $$ LANGUAGE plpgsql", E::Local),
        ("ALTER SYSTEM SET work_mem = '64MB'", E::All),
        ("CALL my_proc(1)", E::Local),
        ("LOAD 'auto_explain'", E::Local),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", E::Local),
        ("REFRESH MATERIALIZED VIEW mv", E::Local),
        ("SECURITY LABEL ON TABLE accounts IS 'x'", E::All),
        ("CREATE TABLE accounts_p1 PARTITION OF accounts FOR VALUES WITH (MODULUS 2, REMAINDER 0)", E::All),
        ("CREATE STATISTICS st ON aid, bid FROM accounts", E::All),
        ("CREATE RULE r AS ON INSERT TO misc DO NOTHING", E::Local),
        ("SOMETHING ENTIRELY UNKNOWN", E::Local),
        ("SELECT * FROM accounts WHERE aid = 5 ORDER BY abalance USING <", E::Unsup("statement on distributed table accounts that pgshard cannot parse")),
        ("SELECT * FROM misc m WHERE m.x OPERATOR(pg_catalog.=) 1 USING <", E::Local),
    ]);
    assert_eq!(kind("DO $$ BEGIN END $$"), StatementKind::Other);
    assert_eq!(
        kind("ALTER SYSTEM SET work_mem = '64MB'"),
        StatementKind::Ddl
    );
}

#[test]
fn names_are_folded_and_matched() {
    check_all(&[
        ("SELECT * FROM Accounts WHERE Aid = 5", E::Key(int(5))),
        ("SELECT * FROM \"Accounts\" WHERE aid = 5", E::Local),
        ("SELECT * FROM mixedcase", E::Local),
        (
            "SELECT * FROM \"MixedCase\" WHERE \"Key\" = 1",
            E::Key(int(1)),
        ),
        ("SELECT * FROM \"MixedCase\" WHERE key = 1", E::Fan),
        (
            "SELECT * FROM public.\"MixedCase\" m WHERE m.\"Key\" = 1",
            E::Key(int(1)),
        ),
        (
            "SELECT * FROM mydb.public.accounts WHERE aid = 5",
            E::Key(int(5)),
        ),
        ("SELECT * FROM orders", E::Local),
        (
            "SELECT * FROM app.orders o WHERE o.order_id = 2",
            E::Key(int(2)),
        ),
        (
            "SELECT * FROM APP.ORDERS WHERE ORDER_ID = 2",
            E::Key(int(2)),
        ),
    ]);
}

#[test]
fn table_names_lists_relations() {
    assert_eq!(
        crate::table_names(
            "SELECT * FROM accounts a JOIN Public.Branches b ON true; INSERT INTO \"X\" VALUES (1)"
        ),
        vec![
            "accounts".to_owned(),
            "public.branches".to_owned(),
            "X".to_owned()
        ]
    );
    assert!(crate::table_names("SELECT 1").is_empty());
}

/// Statements sqlparser cannot parse, planned through a stand-in text
/// (`crate::standin`): the shards get the original constructs back.
#[test]
fn stand_in_plans_send_the_original_syntax() {
    let c = catalog();
    let route = |s: &str| crate::plan(s, &c).route;
    match route("SELECT aid, abalance BETWEEN SYMMETRIC 5 AND 1 AS b FROM accounts ORDER BY aid") {
        Route::Fanout(f) => assert!(
            f.shard_sql.contains("BETWEEN SYMMETRIC (5) AND 1")
                && !f.shard_sql.contains("pgshard_symmetric"),
            "{}",
            f.shard_sql
        ),
        r => panic!("{r:?}"),
    }
    match route("SELECT aid, sum(abalance) OVER (PARTITION BY aid ORDER BY bid ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE TIES) FROM accounts") {
        Route::Fanout(f) => assert!(
            f.shard_sql.contains("EXCLUDE TIES)") && !f.shard_sql.contains("pgshard_exclude"),
            "{}",
            f.shard_sql
        ),
        r => panic!("{r:?}"),
    }
    // One shard: the client's text is forwarded as it is.
    assert!(matches!(
        route("SELECT trim(LEADING FROM filler) FROM accounts WHERE aid = 7"),
        Route::Shard(_)
    ));
    // A statement naming a marker itself is refused, parsed or not.
    for s in [
        "SELECT pgshard_symmetric(1) FROM accounts",
        "SELECT abalance BETWEEN SYMMETRIC pgshard_symmetric(1) AND 2 FROM accounts",
    ] {
        assert!(matches!(route(s), Route::Unsupported(_)), "{s}");
    }
}

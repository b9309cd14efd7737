//! Transaction and session commands, the escape hatch, PREPARE/EXECUTE, router
//! functions and multi-statement strings (SPEC §4, §5 rule 6, §6, §7).

use super::*;
use crate::{route_execute, ExecuteArg, PlanError};

#[test]
fn transaction_control() {
    let cases: &[(&str, StatementKind)] = &[
        ("BEGIN", StatementKind::Begin),
        ("begin;", StatementKind::Begin),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", StatementKind::Begin),
        ("BEGIN TRANSACTION READ ONLY", StatementKind::Begin),
        ("START TRANSACTION", StatementKind::Begin),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE",
            StatementKind::Begin,
        ),
        ("COMMIT", StatementKind::Commit),
        ("COMMIT WORK", StatementKind::Commit),
        ("COMMIT AND CHAIN", StatementKind::Commit),
        ("END", StatementKind::Commit),
        ("END TRANSACTION", StatementKind::Commit),
        ("ROLLBACK", StatementKind::Rollback),
        ("ROLLBACK WORK", StatementKind::Rollback),
        ("ABORT", StatementKind::Rollback),
        ("ABORT TRANSACTION", StatementKind::Rollback),
        ("SAVEPOINT sp1", StatementKind::Savepoint),
        ("RELEASE sp1", StatementKind::Savepoint),
        ("RELEASE SAVEPOINT sp1", StatementKind::Savepoint),
        ("ROLLBACK TO sp1", StatementKind::Savepoint),
        ("ROLLBACK TO SAVEPOINT sp1", StatementKind::Savepoint),
        (
            "ROLLBACK TRANSACTION TO SAVEPOINT sp1",
            StatementKind::Savepoint,
        ),
        ("/* c */ -- c\n  BEGIN", StatementKind::Begin),
    ];
    for (sql, want) in cases {
        let pl = p(sql);
        assert_eq!(pl.kind, *want, "{sql}");
        assert_eq!(pl.route, Route::AnyShard, "{sql}");
        assert_eq!(statement_kind(sql), *want, "{sql}");
    }
    check_all(&[
        ("PREPARE TRANSACTION 'x'", E::Unsup("two-phase commit")),
        ("COMMIT PREPARED 'x'", E::Unsup("two-phase commit")),
        ("ROLLBACK PREPARED 'x'", E::Unsup("two-phase commit")),
    ]);
}

#[test]
fn session_commands() {
    let sets = [
        "SET search_path TO app, public",
        "SET search_path = app",
        "SET application_name = 'psql'",
        "SET SESSION statement_timeout = 5000",
        "SET LOCAL statement_timeout = 5000",
        "SET TIME ZONE 'UTC'",
        "SET timezone TO DEFAULT",
        "SET ROLE alice",
        "SET SESSION AUTHORIZATION alice",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET CONSTRAINTS ALL DEFERRED",
        "SET NAMES 'UTF8'",
        "SET pgshard.other = 1",
        "RESET search_path",
        "RESET ALL",
        "RESET ROLE",
        "DISCARD ALL",
        "DISCARD PLANS",
    ];
    for sql in sets {
        let pl = p(sql);
        assert_eq!(pl.kind, StatementKind::SessionSet, "{sql}");
        assert_eq!(pl.route, Route::AnyShard, "{sql}");
        assert_eq!(statement_kind(sql), StatementKind::SessionSet, "{sql}");
    }
    for sql in [
        "SHOW search_path",
        "SHOW ALL",
        "show server_version",
        "SHOW TRANSACTION ISOLATION LEVEL",
    ] {
        let pl = p(sql);
        assert_eq!(pl.kind, StatementKind::SessionShow, "{sql}");
        assert_eq!(pl.route, Route::AnyShard, "{sql}");
    }
}

#[test]
fn pgshard_shard_setting() {
    let set = |n: u32, local: bool| {
        E::Router(RouterCommand::SetShard {
            shard: ShardId(n),
            local,
        })
    };
    check_all(&[
        ("SET pgshard.shard = 2", set(2, false)),
        ("SET pgshard.shard TO 3", set(3, false)),
        ("set PGSHARD.SHARD = '2'", set(2, false)),
        ("SET SESSION pgshard.shard = 2", set(2, false)),
        ("SET LOCAL pgshard.shard = 2", set(2, true)),
        ("SET pgshard.shard = 9", E::Err("22023")),
        ("SET pgshard.shard = 'abc'", E::Err("22023")),
        ("SET pgshard.shard = 1.5", E::Err("22023")),
        ("SET pgshard.shard = -1", E::Err("22023")),
        (
            "SET pgshard.shard TO DEFAULT",
            E::Router(RouterCommand::ResetShard),
        ),
        ("RESET pgshard.shard", E::Router(RouterCommand::ResetShard)),
        ("SHOW pgshard.shard", E::Router(RouterCommand::ShowShard)),
    ]);
    assert_eq!(kind("SET pgshard.shard = 2"), StatementKind::SessionSet);
    assert_eq!(kind("SHOW pgshard.shard"), StatementKind::SessionShow);
    match r("SET pgshard.shard = 9") {
        Route::Error(e) => assert_eq!(e.to_string(), "shard 9 does not exist"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn escape_hatch_comment() {
    check_all(&[
        ("/* pgshard: shard=2 */ SELECT * FROM accounts", E::Shard(2)),
        ("SELECT * FROM accounts /* pgshard: shard=3 */", E::Shard(3)),
        (
            "SELECT /*pgshard:shard=3*/ count(*) FROM accounts",
            E::Shard(3),
        ),
        ("SELECT * FROM accounts -- pgshard: shard=2", E::Shard(2)),
        (
            "/* pgshard: shard = 2 */ UPDATE accounts SET abalance = 0",
            E::Shard(2),
        ),
        (
            "/* pgshard: shard=2 */ INSERT INTO accounts (aid) VALUES (NULL)",
            E::Shard(2),
        ),
        ("/* pgshard: shard=2 */ SELECT * FROM misc", E::Shard(2)),
        ("/* pgshard: shard=2 */ SELECT 1", E::Shard(2)),
        (
            "/* pgshard: shard=2 */ SELECT * FROM accounts WHERE aid = $1",
            E::Shard(2),
        ),
        (
            "/* pgshard: shard=2 */ COPY accounts FROM STDIN",
            E::Shard(2),
        ),
        ("/* pgshard: shard=7 */ SELECT 1", E::Err("22023")),
        ("/* pgshard: shard=x */ SELECT 1", E::Err("22023")),
        ("/* pgshard: shards=2 */ SELECT 1", E::Err("22023")),
        // Not a hint: inside a string, or another comment.
        ("SELECT '/* pgshard: shard=2 */' FROM branches", E::Any),
        ("/* pgshard is great */ SELECT 1", E::Any),
        // Transaction and session commands are not redirected.
        ("/* pgshard: shard=2 */ BEGIN", E::Any),
        ("/* pgshard: shard=2 */ SET search_path = a", E::Any),
        (
            "/* pgshard: shard=2 */ SELECT create_reference_table('t')",
            E::Router(RouterCommand::CreateReferenceTable { table: "t".into() }),
        ),
    ]);
    assert_eq!(
        p("/* pgshard: shard=2 */ INSERT INTO accounts (aid) VALUES ($1)").null_key,
        None
    );
}

#[test]
fn router_functions() {
    let dist = |t: &str, c: &str, with: Option<&str>| {
        E::Router(RouterCommand::CreateDistributedTable {
            table: t.into(),
            column: c.into(),
            colocate_with: with.map(Into::into),
        })
    };
    check_all(&[
        ("SELECT create_distributed_table('t', 'col')", dist("t", "col", None)),
        ("select create_distributed_table('T', 'Col');", dist("t", "col", None)),
        ("SELECT create_distributed_table('\"T\"', '\"Col\"')", dist("T", "Col", None)),
        ("SELECT create_distributed_table('app.t', 'col')", dist("app.t", "col", None)),
        ("SELECT create_distributed_table('t', 'col', colocate_with => 'other')", dist("t", "col", Some("other"))),
        ("SELECT create_distributed_table('t', 'col', colocate_with := 'other')", dist("t", "col", Some("other"))),
        ("SELECT create_distributed_table('t', 'col', 'other')", dist("t", "col", Some("other"))),
        ("SELECT create_distributed_table('t', 'col', 'hash')", dist("t", "col", None)),
        ("SELECT create_distributed_table('t', 'col', distribution_type => 'hash', colocate_with => 'o')", dist("t", "col", Some("o"))),
        ("SELECT create_distributed_table('t', 'col', colocate_with => 'default')", dist("t", "col", None)),
        ("SELECT create_distributed_table('t', 'col', colocate_with => 'none')", dist("t", "col", Some("none"))),
        ("SELECT create_distributed_table(table_name => 't', distribution_column => 'col')", dist("t", "col", None)),
        ("SELECT create_distributed_table('t'::regclass, 'col')", dist("t", "col", None)),
        ("SELECT pgshard.create_distributed_table('t', 'col')", dist("t", "col", None)),
        ("SELECT create_reference_table('branches')", E::Router(RouterCommand::CreateReferenceTable { table: "branches".into() })),
        ("SELECT create_reference_table('Public.\"Br\"')", E::Router(RouterCommand::CreateReferenceTable { table: "public.Br".into() })),
        ("SELECT create_distributed_table('t', 'col', 'append')", E::Unsup("distribution type append")),
        ("SELECT create_distributed_table('t', 'col', shard_count => 4)", E::Err("22023")),
        ("SELECT create_distributed_table('t', 'col', shard_count => '4')", E::Unsup("argument shard_count")),
        ("SELECT create_distributed_table('t')", E::Err("42883")),
        ("SELECT create_distributed_table()", E::Err("42883")),
        ("SELECT create_reference_table('a', 'b')", E::Err("42883")),
        ("SELECT create_distributed_table(t, 'col')", E::Err("22023")),
        ("SELECT create_distributed_table('not a name', 'col')", E::Err("22023")),
        ("SELECT create_distributed_table('t', 'a.b')", E::Err("22023")),
    ]);
    assert_eq!(
        kind("SELECT create_distributed_table('t', 'col')"),
        StatementKind::Read
    );
}

#[test]
fn prepare_execute_deallocate() {
    let pl = p("PREPARE q (bigint) AS SELECT * FROM accounts WHERE aid = $1");
    assert_eq!(pl.kind, StatementKind::Prepared);
    let Route::Router(RouterCommand::Prepare {
        name,
        param_types,
        statement,
        plan,
    }) = &pl.route
    else {
        panic!("{pl:?}");
    };
    assert_eq!(name, "q");
    assert_eq!(param_types, &vec!["bigint".to_owned()]);
    assert_eq!(statement, "SELECT * FROM accounts WHERE aid = $1");
    assert_eq!(
        plan.route,
        Route::ShardByParam {
            param: 1,
            key_type: KeyType::Int8
        }
    );
    assert_eq!(plan.kind, StatementKind::Read);

    let ins = p("PREPARE \"Ins\" (int, numeric(10, 2)) AS INSERT INTO accounts (abalance, aid) VALUES ($1, $2)");
    let Route::Router(RouterCommand::Prepare {
        name,
        param_types,
        plan,
        ..
    }) = &ins.route
    else {
        panic!("{ins:?}");
    };
    assert_eq!(name, "Ins");
    assert_eq!(
        param_types,
        &vec!["int".to_owned(), "numeric(10, 2)".to_owned()]
    );
    assert_eq!(plan.kind, StatementKind::Write);

    let simple = p("PREPARE s AS SELECT 1");
    assert!(
        matches!(&simple.route, Route::Router(RouterCommand::Prepare { plan, param_types, .. }) if plan.route == Route::AnyShard && param_types.is_empty())
    );
    // A multi-shard read is kept for EXECUTE to run as a fan-out with its arguments
    // written in; a multi-shard write is still refused.
    let fanout = p("PREPARE s AS SELECT * FROM accounts");
    assert!(
        matches!(&fanout.route, Route::Router(RouterCommand::Prepare { plan, .. }) if crate::prepared_fanout(plan))
    );
    let unsup = p("PREPARE s AS UPDATE accounts SET abalance = 0");
    assert!(
        matches!(&unsup.route, Route::Router(RouterCommand::Prepare { plan, .. }) if matches!(plan.route, Route::Unsupported(_)))
    );
    let c = catalog();
    let text = "PREPARE f (text, int) AS SELECT aid FROM accounts WHERE filler = $1 AND abalance > $2 ORDER BY aid";
    let lit = |s: &str| ExecuteArg::Literal(s.into());
    match crate::execute_fanout(text, &[lit("it's \\"), lit("5")], &c) {
        Route::Fanout(f) => assert!(
            f.shard_sql.contains(r"(CAST(E'it\'s \\' AS TEXT))")
                && f.shard_sql.contains("(CAST(E'5' AS INT))"),
            "{}",
            f.shard_sql
        ),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        crate::execute_fanout(text, &[lit("x"), ExecuteArg::Expr("random()".into())], &c),
        Route::Unsupported(_)
    ));
    // PostgreSQL reports a wrong argument count.
    assert_eq!(
        crate::execute_fanout(text, &[lit("x")], &c),
        Route::AnyShard
    );
    // A parameter type PostgreSQL infers is not known here: refused, never sent to
    // one shard.
    let inferred =
        "PREPARE g (text) AS SELECT aid FROM accounts WHERE filler = $1 AND abalance > $2";
    assert!(matches!(
        crate::execute_fanout(inferred, &[lit("x"), lit("1")], &c),
        Route::Unsupported(_)
    ));
    assert!(matches!(
        crate::execute_fanout(
            "PREPARE h AS SELECT aid FROM accounts WHERE filler = $1",
            &[lit("x")],
            &c
        ),
        Route::Unsupported(_)
    ));
    assert_eq!(
        crate::execute_fanout(inferred, &[lit("x")], &c),
        Route::AnyShard
    );

    let exec = p("EXECUTE q(5, 'x', -3, NULL, now(), '5'::int, +4)");
    assert_eq!(exec.kind, StatementKind::Prepared);
    let Route::Router(RouterCommand::Execute { name, args }) = &exec.route else {
        panic!("{exec:?}");
    };
    assert_eq!(name, "q");
    assert_eq!(
        args,
        &vec![
            ExecuteArg::Literal("5".into()),
            ExecuteArg::Literal("x".into()),
            ExecuteArg::Literal("-3".into()),
            ExecuteArg::Null,
            ExecuteArg::Expr("now()".into()),
            ExecuteArg::Expr("'5'::int".into()),
            ExecuteArg::Literal("4".into()),
        ]
    );
    assert_eq!(
        r("EXECUTE q"),
        Route::Router(RouterCommand::Execute {
            name: "q".into(),
            args: vec![]
        })
    );

    // Resolving an EXECUTE against the prepared plan.
    let c = catalog();
    let lit = |s: &str| ExecuteArg::Literal(s.into());
    assert_eq!(route_execute(plan_of(&pl), &[lit("5")], &c), on(int(5)));
    assert_eq!(route_execute(plan_of(&pl), &[lit("-5")], &c), on(int(-5)));
    assert_eq!(
        route_execute(plan_of(&pl), &[ExecuteArg::Null], &c),
        Route::AnyShard
    );
    assert!(matches!(
        route_execute(plan_of(&pl), &[lit("5.5")], &c),
        Route::Unsupported(_)
    ));
    assert!(matches!(
        route_execute(plan_of(&pl), &[ExecuteArg::Expr("1+1".into())], &c),
        Route::Unsupported(_)
    ));
    assert_eq!(
        route_execute(plan_of(&ins), &[lit("0"), lit("9")], &c),
        on(int(9))
    );
    assert!(matches!(
        route_execute(plan_of(&ins), &[lit("0"), ExecuteArg::Null], &c),
        Route::Error(PlanError::NullShardKey { .. })
    ));
    assert_eq!(route_execute(plan_of(&simple), &[], &c), Route::AnyShard);

    check_all(&[
        (
            "DEALLOCATE q",
            E::Router(RouterCommand::Deallocate {
                name: Some("q".into()),
            }),
        ),
        (
            "DEALLOCATE PREPARE q",
            E::Router(RouterCommand::Deallocate {
                name: Some("q".into()),
            }),
        ),
        (
            "DEALLOCATE \"Q\"",
            E::Router(RouterCommand::Deallocate {
                name: Some("Q".into()),
            }),
        ),
        (
            "DEALLOCATE ALL",
            E::Router(RouterCommand::Deallocate { name: None }),
        ),
        (
            "DEALLOCATE PREPARE ALL",
            E::Router(RouterCommand::Deallocate { name: None }),
        ),
    ]);
    assert_eq!(kind("DEALLOCATE ALL"), StatementKind::Prepared);
}

fn plan_of(pl: &Plan) -> &Plan {
    match &pl.route {
        Route::Router(RouterCommand::Prepare { plan, .. }) => plan,
        _ => pl,
    }
}

#[test]
fn multi_statement_strings() {
    let (a, b, same) = spread();
    check_all(&[
        ("SELECT 1; SELECT 2", E::Any),
        (
            "SET x = 1; SELECT * FROM accounts WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "BEGIN; UPDATE accounts SET abalance = 0 WHERE aid = 5; COMMIT;",
            E::Key(int(5)),
        ),
        ("SELECT * FROM misc; SELECT * FROM branches", E::Local),
        (
            "CREATE INDEX ON accounts (abalance); ANALYZE accounts",
            E::All,
        ),
        (
            "SELECT * FROM misc; CREATE INDEX ON accounts (abalance)",
            E::Unsup("multi-statement query spanning shards"),
        ),
        (
            "SELECT 1; SELECT * FROM accounts",
            E::Unsup("without a shard key filter"),
        ),
        (
            "SELECT 1; SET pgshard.shard = 2",
            E::Unsup("multi-statement"),
        ),
        ("SELECT 'a;b'; SELECT \";\" FROM branches", E::Any),
    ]);
    check(
        &format!("UPDATE accounts SET abalance = 0 WHERE aid = {a}; UPDATE accounts SET abalance = 0 WHERE aid = {same}"),
        &E::Key(int(a)),
    );
    check(
        &format!("UPDATE accounts SET abalance = 0 WHERE aid = {a}; UPDATE accounts SET abalance = 0 WHERE aid = {b}"),
        &E::Unsup("multi-statement query spanning shards"),
    );
    let pl = p("BEGIN; UPDATE accounts SET abalance = 0 WHERE aid = 5; COMMIT;");
    assert_eq!(pl.kind, StatementKind::Write);
    let kinds: Vec<StatementKind> = pl.statements.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            StatementKind::Begin,
            StatementKind::Write,
            StatementKind::Commit
        ]
    );
    assert_eq!(p("SELECT 1; SELECT 2").kind, StatementKind::Read);
    assert!(p("SELECT 1").statements.is_empty());
    assert_eq!(p("SET a = 1; SET b = 2").kind, StatementKind::SessionSet);
}

#[test]
fn empty_queries() {
    for sql in ["", "   ", ";", " ; ; ", "-- only a comment", "/* c */"] {
        let pl = p(sql);
        assert_eq!(pl.kind, StatementKind::Empty, "{sql:?}");
        assert_eq!(pl.route, Route::AnyShard, "{sql:?}");
        assert_eq!(statement_kind(sql), StatementKind::Empty, "{sql:?}");
    }
}

#[test]
fn cursors_listen_notify() {
    check_all(&[
        (
            "DECLARE c CURSOR FOR SELECT * FROM accounts WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM branches",
            E::Any,
        ),
        // A multi-shard cursor: the fan-out, which the router keeps (see `cursor`).
        ("DECLARE c CURSOR FOR SELECT * FROM accounts", E::Fan),
        (
            "DECLARE c BINARY CURSOR FOR SELECT * FROM accounts",
            E::Unsup("BINARY CURSOR"),
        ),
        ("FETCH 10 FROM c", E::Any),
        ("FETCH NEXT IN c", E::Any),
        ("MOVE FORWARD 5 IN c", E::Any),
        ("CLOSE c", E::Any),
        ("CLOSE ALL", E::Any),
        ("LISTEN ch", E::Local),
        ("UNLISTEN *", E::Local),
        ("NOTIFY ch, 'x'", E::Local),
    ]);
    assert_eq!(kind("DECLARE c CURSOR FOR SELECT 1"), StatementKind::Read);
    assert_eq!(kind("FETCH 10 FROM c"), StatementKind::Read);
    assert_eq!(kind("CLOSE c"), StatementKind::Other);
    assert_eq!(kind("LISTEN ch"), StatementKind::Other);
}

#[test]
fn explain() {
    check_all(&[
        (
            "EXPLAIN SELECT * FROM accounts WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "EXPLAIN ANALYZE SELECT * FROM accounts WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE accounts SET abalance = 1 WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "EXPLAIN (COSTS OFF) SELECT * FROM accounts WHERE aid = $1",
            E::Param(1, KeyType::Int8),
        ),
        ("EXPLAIN VERBOSE SELECT 1", E::Any),
        ("EXPLAIN SELECT * FROM accounts", E::Unsup("accounts")),
        ("EXPLAIN SELECT * FROM misc", E::Local),
        (
            "EXPLAIN SELECT create_reference_table('t')",
            E::Unsup("EXPLAIN of a pgshard command"),
        ),
    ]);
    assert_eq!(kind("EXPLAIN UPDATE misc SET x = 1"), StatementKind::Read);
    assert_eq!(
        kind("EXPLAIN ANALYZE UPDATE misc SET x = 1"),
        StatementKind::Write
    );
    assert_eq!(
        kind("EXPLAIN (ANALYZE) DELETE FROM misc"),
        StatementKind::Write
    );
    assert_eq!(
        kind("EXPLAIN (ANALYZE false) DELETE FROM misc"),
        StatementKind::Read
    );
}

#[test]
fn create_table_as_execute_is_refused() {
    // The prepared statement may be a multi-shard read, which runs as a fan-out only
    // as EXECUTE itself; on one shard it would see that shard's rows.
    let c = catalog();
    for s in [
        "CREATE TABLE t AS EXECUTE q('FR')",
        "CREATE TEMP TABLE t (a) AS EXECUTE q",
    ] {
        assert!(
            matches!(crate::plan(s, &c).route, Route::Unsupported(_)),
            "{s}"
        );
    }
    assert!(!matches!(
        crate::plan("CREATE TABLE t AS SELECT 1", &c).route,
        Route::Unsupported(_)
    ));
}

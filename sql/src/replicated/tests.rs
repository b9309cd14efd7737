//! Replicated writes against the synthetic test catalog (`branches` and
//! `pgbench_tellers` are reference tables, `misc` is local).

use super::{is_constant_default, ColumnDefaults, DefaultedColumns};
use crate::tests::p;
use crate::Route;

fn refused(sql: &str) -> String {
    match p(sql).route {
        Route::Unsupported(m) => m,
        other => panic!("{sql}: expected 0A000, got {other:?}"),
    }
}

fn defaults(sql: &str) -> Vec<ColumnDefaults> {
    match p(sql).route {
        Route::FanoutWrite(w) if w.replicated => w.defaults,
        other => panic!("{sql}: expected a replicated write, got {other:?}"),
    }
}

#[test]
fn volatile_functions_are_refused() {
    for (sql, named) in [
        ("INSERT INTO branches VALUES (1, now())", "function now()"),
        (
            "INSERT INTO branches (bid, t) VALUES (1, CURRENT_TIMESTAMP)",
            "function CURRENT_TIMESTAMP",
        ),
        (
            "INSERT INTO branches (bid, t) VALUES (1, LOCALTIMESTAMP)",
            "function LOCALTIMESTAMP",
        ),
        (
            "INSERT INTO branches (bid, t) VALUES (1, current_date)",
            "function current_date",
        ),
        (
            "INSERT INTO branches VALUES (1, random())",
            "function random()",
        ),
        (
            "INSERT INTO branches VALUES (nextval('s'), 1)",
            "function nextval()",
        ),
        (
            "INSERT INTO branches VALUES (1, clock_timestamp())",
            "function clock_timestamp()",
        ),
        (
            "INSERT INTO branches VALUES (gen_random_uuid(), 1)",
            "function gen_random_uuid()",
        ),
        (
            "INSERT INTO branches VALUES (txid_current(), 1)",
            "function txid_current()",
        ),
        (
            "INSERT INTO branches VALUES (1, pg_catalog.now())",
            "function now()",
        ),
        (
            "UPDATE branches SET t = now() WHERE bid = 1",
            "function now()",
        ),
        (
            "UPDATE branches SET bbalance = bbalance + (random() * 10)::int",
            "function random()",
        ),
        (
            "DELETE FROM branches WHERE t < now() - interval '1 day'",
            "function now()",
        ),
        (
            "INSERT INTO branches VALUES (1, 'now'::timestamptz)",
            "'now'::",
        ),
        ("INSERT INTO branches VALUES (1, 'now')", "the value 'now'"),
        (
            "INSERT INTO branches VALUES (1, TIMESTAMP 'today')",
            "'today'",
        ),
        ("INSERT INTO branches VALUES (1, age(t))", "function age()"),
        (
            "INSERT INTO branches VALUES (1, my_func(2))",
            "function my_func()",
        ),
        (
            "INSERT INTO branches VALUES (1, app.lower('x'))",
            "function lower()",
        ),
        (
            "INSERT INTO branches VALUES (1, 't'::regclass)",
            "cast to REGCLASS",
        ),
        (
            "INSERT INTO branches VALUES (1, 'x'::my_type)",
            "cast to my_type",
        ),
        (
            "INSERT INTO branches VALUES (1, 2 OPERATOR(pg_catalog.+) 3)",
            "operator",
        ),
        (
            "INSERT INTO branches SELECT * FROM pgbench_tellers LIMIT 1",
            "LIMIT",
        ),
        (
            "INSERT INTO branches SELECT DISTINCT ON (bid) bid, tid FROM pgbench_tellers",
            "DISTINCT ON",
        ),
        (
            "INSERT INTO branches SELECT bid, row_number() OVER () FROM pgbench_tellers",
            "window function",
        ),
        (
            "INSERT INTO branches SELECT bid, string_agg(x, ',') FROM pgbench_tellers GROUP BY 1",
            "function string_agg()",
        ),
        (
            "INSERT INTO branches SELECT bid FROM pgbench_tellers TABLESAMPLE BERNOULLI (10)",
            "TABLESAMPLE",
        ),
        (
            "INSERT INTO branches SELECT g, 0 FROM generate_series(1, 3) g WHERE random() > 0.5",
            "function random()",
        ),
        (
            "WITH d AS (DELETE FROM branches RETURNING *) SELECT *, now() FROM d",
            "function now()",
        ),
        (
            "INSERT INTO branches VALUES (1, 0) ON CONFLICT (bid) DO UPDATE SET t = now()",
            "function now()",
        ),
    ] {
        let m = refused(sql);
        assert!(m.contains(named), "{sql}: {m}");
        assert!(m.contains("reference table \"branches\""), "{sql}: {m}");
        assert!(m.contains("compute the value in the client"), "{sql}: {m}");
    }
    // The exact message for the common case.
    assert_eq!(
        refused("INSERT INTO branches VALUES (1, now())"),
        "function now() in a write to reference table \"branches\" would give each shard's copy a different value; compute the value in the client"
    );
}

#[test]
fn reads_of_other_relations_are_refused() {
    let m = refused("INSERT INTO branches SELECT x, 0 FROM misc");
    assert!(m.contains("local table misc"), "{m}");
    let m = refused("INSERT INTO branches SELECT oid::int, 0 FROM pg_class");
    assert!(m.contains("catalog relation pg_class"), "{m}");
    // A distributed table: each shard would read only its own rows.
    let m = refused("INSERT INTO branches SELECT aid, 0 FROM accounts");
    assert!(m.contains("reading distributed table accounts"), "{m}");
    let m = refused("UPDATE branches SET bbalance = (SELECT sum(abalance) FROM accounts)");
    assert!(m.contains("reading distributed table accounts"), "{m}");
    let m = refused("UPDATE branches SET bbalance = (SELECT max(x) FROM misc)");
    assert!(m.contains("local table misc"), "{m}");
}

#[test]
fn deterministic_writes_are_allowed() {
    for sql in [
        "INSERT INTO branches (bid, bbalance) VALUES (1, 0)",
        "INSERT INTO branches (bid, bbalance, filler) VALUES (1, -5, lower('ABC') || 'x')",
        "INSERT INTO branches (bid, t) VALUES (1, '2024-01-01 00:00:00+00'::timestamptz)",
        "INSERT INTO branches (bid, t) VALUES (1, TIMESTAMP '2024-01-01')",
        "INSERT INTO branches (bid, t) VALUES (1, $1)",
        "INSERT INTO branches (bid, j) VALUES (1, jsonb_build_object('a', 1))",
        "UPDATE branches SET bbalance = bbalance + 5 WHERE bid = 1",
        "UPDATE branches SET bbalance = abs(bbalance) * 2, filler = upper(filler)",
        "UPDATE pgbench_tellers SET tbalance = tbalance + -42 WHERE tid = 7",
        "DELETE FROM branches WHERE bid IN (SELECT bid FROM pgbench_tellers WHERE tbalance < 0)",
        "INSERT INTO branches (bid, bbalance) SELECT bid, sum(tbalance) FROM pgbench_tellers GROUP BY bid",
        "INSERT INTO branches (bid, bbalance) SELECT g, 0 FROM generate_series(1, 10) g",
        "INSERT INTO branches (bid, bbalance) VALUES (1, 0) ON CONFLICT (bid) DO UPDATE SET bbalance = EXCLUDED.bbalance + 1",
        "INSERT INTO branches (bid, bbalance) VALUES (1, 0) RETURNING bid, current_user",
        "UPDATE branches SET filler = coalesce(filler, '') || to_char(12, '999')",
    ] {
        let _ = defaults(sql);
    }
}

#[test]
fn omitted_columns_are_reported() {
    let d = defaults("INSERT INTO branches (bid, bbalance) VALUES (1, 0)");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].table, "branches");
    assert_eq!(d[0].relation, "branches");
    assert_eq!(
        d[0].columns,
        DefaultedColumns::AllBut(vec!["bid".into(), "bbalance".into()])
    );
    // DEFAULT in one row takes the column out of the given ones.
    let d = defaults("INSERT INTO branches (bid, bbalance) VALUES (1, 0), (2, DEFAULT)");
    assert_eq!(d[0].columns, DefaultedColumns::AllBut(vec!["bid".into()]));
    let d = defaults("INSERT INTO branches VALUES (1, 0, 'x')");
    assert_eq!(d[0].columns, DefaultedColumns::AfterFirst(3));
    let d = defaults("INSERT INTO branches VALUES (1, DEFAULT, 'x')");
    assert_eq!(d[0].columns, DefaultedColumns::AfterFirst(1));
    let d = defaults("INSERT INTO public.branches DEFAULT VALUES");
    assert_eq!(d[0].columns, DefaultedColumns::AfterFirst(0));
    assert_eq!(d[0].relation, "public.branches");
    let d = defaults("INSERT INTO branches SELECT bid, tid FROM pgbench_tellers");
    assert_eq!(d[0].columns, DefaultedColumns::AfterFirst(2));
    let d = defaults("INSERT INTO branches SELECT * FROM pgbench_tellers");
    assert_eq!(d[0].columns, DefaultedColumns::AfterFirst(0));
    let d = defaults("UPDATE branches SET bbalance = DEFAULT, filler = 'x'");
    assert_eq!(
        d[0].columns,
        DefaultedColumns::Only(vec!["bbalance".into()])
    );
    assert!(defaults("UPDATE branches SET bbalance = 0").is_empty());
    assert!(defaults("DELETE FROM branches").is_empty());
    let d = defaults(
        "INSERT INTO branches (bid, bbalance) VALUES (1, 0) ON CONFLICT (bid) DO UPDATE SET filler = DEFAULT",
    );
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].columns, DefaultedColumns::Only(vec!["filler".into()]));
    // A data-modifying CTE.
    let d =
        defaults("WITH i AS (INSERT INTO branches (bid) VALUES (1) RETURNING *) SELECT * FROM i");
    assert_eq!(d[0].columns, DefaultedColumns::AllBut(vec!["bid".into()]));
}

#[test]
fn constant_defaults() {
    for d in [
        "0",
        "(-1)",
        "'abc'::text",
        "'x'::character varying",
        "true",
        "NULL::integer",
        "'{}'::jsonb",
        "'2020-01-01'::date",
        "0.5",
        "'{1,2}'::integer[]",
        "'infinity'::timestamp with time zone",
    ] {
        assert!(is_constant_default(d), "{d}");
    }
    for d in [
        "nextval('r_id_seq'::regclass)",
        "now()",
        "CURRENT_TIMESTAMP",
        "gen_random_uuid()",
        "'now'::timestamp with time zone",
        "('now'::text)::date",
        "(random() * 10)",
        "1 + 1",
        "my_func()",
        "'x'::my_enum",
        "",
    ] {
        assert!(!is_constant_default(d), "{d}");
    }
}

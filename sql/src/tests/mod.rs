//! Table-driven planner tests against a synthetic catalog: three shards, 1024 buckets
//! placed round-robin, and a fixed set of declared tables. Expectations about shards are
//! written in terms of `catalog.shard_of(key)`, so they hold whatever the hash.

mod corpus;
mod dml;
mod fuzz;
mod moving;
mod psql;
mod replica;
mod session;
mod split;
mod utility;

use crate::{plan, statement_kind, Plan, Route, RouterCommand, StatementKind};
use pgshard_catalog::{
    BucketId, Catalog, CatalogVersion, KeyType, KeyValue, Shard, ShardId, TableDef, TableKind,
};

pub(crate) const LOCAL: ShardId = ShardId(1);

fn distributed(name: &str, key: &str, key_type: KeyType, colocation: &str) -> TableDef {
    TableDef {
        name: name.to_owned(),
        kind: TableKind::Distributed {
            shard_key: key.to_owned(),
            key_type,
            colocation: colocation.to_owned(),
        },
    }
}

fn reference(name: &str) -> TableDef {
    TableDef {
        name: name.to_owned(),
        kind: TableKind::Reference,
    }
}

/// The test catalog: shards 1..=3 (1 holds local tables), 1024 buckets round-robin.
pub(crate) fn catalog() -> Catalog {
    let shards: Vec<ShardId> = (1..=3).map(ShardId).collect();
    Catalog {
        version: CatalogVersion(1),
        buckets: 1024,
        bucket_map: (0..1024).map(|b| shards[b % shards.len()]).collect(),
        shards: shards.iter().map(|&id| Shard::active(id)).collect(),
        nodes: Vec::new(),
        tables: vec![
            distributed("accounts", "aid", KeyType::Int8, "g1"),
            distributed("users", "id", KeyType::Int4, "g2"),
            distributed("events", "user_id", KeyType::Int4, "g2"),
            distributed("docs", "slug", KeyType::Text, "g3"),
            distributed("notes", "tag", KeyType::Varchar, "g3"),
            distributed("things", "id", KeyType::Uuid, "g4"),
            distributed("small", "s", KeyType::Int2, "g5"),
            distributed("app.orders", "order_id", KeyType::Int8, "g1"),
            distributed("MixedCase", "Key", KeyType::Int4, "g2"),
            distributed("pgbench_accounts", "aid", KeyType::Int4, "pgbench"),
            distributed("pgbench_history", "aid", KeyType::Int4, "pgbench"),
            reference("branches"),
            reference("pgbench_branches"),
            reference("pgbench_tellers"),
        ],
        local_shard: LOCAL,
        frozen: Default::default(),
        moving: Vec::new(),
        views: Vec::new(),
    }
}

pub(crate) fn p(sql: &str) -> Plan {
    plan(sql, &catalog())
}

/// The plan without the token fast path.
pub(crate) fn slow(sql: &str) -> Plan {
    crate::plan::FAST_PATH.with(|f| f.set(false));
    let plan = plan(sql, &catalog());
    crate::plan::FAST_PATH.with(|f| f.set(true));
    plan
}

pub(crate) fn r(sql: &str) -> Route {
    p(sql).route
}

pub(crate) fn int(v: i64) -> KeyValue {
    KeyValue::Int(v)
}

pub(crate) fn text(v: &str) -> KeyValue {
    KeyValue::Text(v.to_owned())
}

pub(crate) fn uuid(v: &str) -> KeyValue {
    KeyValue::Uuid(*uuid::Uuid::parse_str(v).expect("test uuid").as_bytes())
}

/// The route to the shard holding `key`.
pub(crate) fn on(key: KeyValue) -> Route {
    Route::Shard(catalog().shard_of(&key).expect("bucket has an owner"))
}

/// Two integer keys on different shards, and one more on the first key's shard.
pub(crate) fn spread() -> (i64, i64, i64) {
    let c = catalog();
    let s = |v: i64| c.shard_of(&KeyValue::Int(v));
    let a = 1;
    let b = (2..).find(|&v| s(v) != s(a)).unwrap_or(2);
    let same = (2..).find(|&v| s(v) == s(a)).unwrap_or(1);
    (a, b, same)
}

/// What a test expects.
#[derive(Debug)]
pub(crate) enum E {
    /// `Route::Shard` of the shard holding the key.
    Key(KeyValue),
    Shard(u32),
    Local,
    Any,
    All,
    Param(usize, KeyType),
    /// `Unsupported` whose message contains the text.
    Unsup(&'static str),
    /// A fan-out plan.
    Fan,
    /// A multi-shard UPDATE/DELETE on this many shards.
    FanWrite(usize),
    /// `Error` with this SQLSTATE.
    Err(&'static str),
    /// A COPY through the router: direction, number of shards, key column.
    Copy(crate::CopyDirection, usize, Option<&'static str>),
    Router(RouterCommand),
}

pub(crate) fn check(sql: &str, want: &E) {
    let got = r(sql);
    let ok = match (want, &got) {
        (E::Key(k), g) => *g == on(k.clone()),
        (E::Shard(n), Route::Shard(s)) => s.0 == *n,
        (E::Local, Route::Shard(s)) => *s == LOCAL,
        (E::Any, Route::AnyShard) => true,
        (E::All, Route::AllShards) => true,
        (E::Param(n, kt), Route::ShardByParam { param, key_type }) => param == n && key_type == kt,
        (E::Unsup(text), Route::Unsupported(msg)) => msg.contains(text),
        // Refused for push-down, answered by collecting (the reason is kept).
        (E::Unsup(text), Route::Fanout(f)) => {
            matches!(&f.merge, crate::MergePlan::Collect(c) if c.reason.contains(text))
        }
        (E::Fan, Route::Fanout(_)) => true,
        (E::FanWrite(n), Route::FanoutWrite(w)) => w.shards.len() == *n,
        (E::Err(code), Route::Error(e)) => e.sqlstate() == *code,
        (E::Copy(d, n, key), Route::Copy(c)) => {
            c.direction == *d
                && c.shards.len() == *n
                && c.key.as_ref().map(|k| k.column.as_str()) == *key
        }
        (E::Router(cmd), Route::Router(c)) => c == cmd,
        _ => false,
    };
    assert!(ok, "{sql}\n  want {want:?}\n  got  {got:?}");
    // The token fast path, where it applies, agrees with the full path.
    assert_eq!(slow(sql), p(sql), "fast path differs for {sql}");
    // The cheap keyword classification agrees with the planner.
    assert_eq!(statement_kind(sql), p(sql).kind, "kind of {sql}");
}

pub(crate) fn check_all(cases: &[(&str, E)]) {
    for (sql, want) in cases {
        check(sql, want);
    }
}

pub(crate) fn kind(sql: &str) -> StatementKind {
    p(sql).kind
}

#[test]
fn catalog_spreads_keys() {
    let (a, b, same) = spread();
    assert_ne!(on(int(a)), on(int(b)));
    assert_eq!(on(int(a)), on(int(same)));
    assert_ne!(a, same);
    // Shard 0 would be a bug in the fixture.
    assert!(catalog().shard_of_bucket(BucketId(0)).is_some());
}

/// Rough planner cost on the hot path; run with
/// `cargo test -p pgshard-sql --release -- --ignored --nocapture plan_speed`.
#[test]
#[ignore]
fn plan_speed() {
    let c = catalog();
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
        "UPDATE pgbench_accounts SET abalance = abalance + -42 WHERE aid = 77;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 5, 10, CURRENT_TIMESTAMP);",
        "BEGIN;",
    ] {
        let n = 20_000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(plan(std::hint::black_box(sql), &c));
        }
        let per = start.elapsed() / n;
        println!("{per:>10?}  {sql}");
    }
}

#[test]
#[ignore]
fn parse_speed() {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 123";
    let n = 20_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(crate::parse::parse_statement(std::hint::black_box(sql)).ok());
    }
    println!("{:>10?}  sqlparser only", start.elapsed() / n);
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(crate::parse::tokens(std::hint::black_box(sql)));
        std::hint::black_box(crate::parse::split_statements(std::hint::black_box(sql)));
    }
    println!("{:>10?}  scanner (split + tokens)", start.elapsed() / n);
    let st = crate::parse::parse_statement(sql).unwrap_or_default();
    let c = catalog();
    let start = std::time::Instant::now();
    for _ in 0..n {
        let mut a = crate::route::Analysis::new(&c);
        a.statement(&st[0]);
        std::hint::black_box(a.route_statement(None));
    }
    println!("{:>10?}  analysis", start.elapsed() / n);
}

//! Property tests: the planner never panics, and the token fast path agrees with the
//! full path on generated pgbench-like statements.

use super::*;
use proptest::prelude::*;

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "INSERT",
    "INTO",
    "UPDATE",
    "DELETE",
    "FROM",
    "WHERE",
    "SET",
    "VALUES",
    "AND",
    "OR",
    "NOT",
    "IN",
    "JOIN",
    "LEFT",
    "ON",
    "USING",
    "AS",
    "WITH",
    "UNION",
    "BEGIN",
    "COMMIT",
    "PREPARE",
    "EXECUTE",
    "COPY",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "CREATE",
    "TABLE",
    "DROP",
    "accounts",
    "a",
    "aid",
    "abalance",
    "users",
    "u",
    "id",
    "events",
    "e",
    "user_id",
    "misc",
    "branches",
    "docs",
    "slug",
    "things",
    "pg_class",
    "public",
    ".",
    ",",
    "(",
    ")",
    "=",
    "<",
    "+",
    "-",
    "*",
    ";",
    "::",
    "int",
    "5",
    "-7",
    "'x'",
    "'5'",
    "$1",
    "$2",
    "NULL",
    "''",
    "/* pgshard: shard=2 */",
    "-- c\n",
    "$$ $$",
    "\"aid\"",
    "E'\\n'",
    "create_distributed_table",
    "pgshard.shard",
    "TO",
    "DEFAULT",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24).prop_map(|v| v.join(" "))
}

fn pgbench_like() -> impl Strategy<Value = String> {
    let table = prop::sample::select(vec![
        "accounts",
        "public.accounts",
        "users",
        "docs",
        "things",
        "small",
        "branches",
        "misc",
        "app.misc",
        "\"accounts\"",
        "app.orders",
    ]);
    let col = prop::sample::select(vec![
        "aid",
        "id",
        "slug",
        "s",
        "order_id",
        "x",
        "a.aid",
        "accounts.aid",
        "t.aid",
    ]);
    let value = prop::sample::select(vec![
        "5",
        "-5",
        "'5'",
        "'abc'",
        "$1",
        "$2",
        "NULL",
        "5.0",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "99999",
        "''",
        "E'x'",
    ]);
    let alias = prop::sample::select(vec!["", " a", " AS a", " t"]);
    let shape = 0..4u8;
    (table, col, value, alias, shape, any::<bool>()).prop_map(|(t, c, v, al, shape, flip)| {
        let cond = if flip {
            format!("{v} = {c}")
        } else {
            format!("{c} = {v}")
        };
        match shape {
            0 => format!("SELECT abalance FROM {t}{al} WHERE {cond}"),
            1 => format!("UPDATE {t}{al} SET abalance = abalance + -1 WHERE {cond}"),
            2 => format!("DELETE FROM {t}{al} WHERE {cond}"),
            _ => format!(
                "INSERT INTO {t} (x, {}) VALUES (1, {v})",
                c.rsplit('.').next().unwrap_or(c)
            ),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(sql in any::<String>()) {
        let _ = p(&sql);
        let _ = statement_kind(&sql);
        let _ = crate::table_names(&sql);
    }

    #[test]
    fn token_soup_never_panics_and_kinds_agree(sql in soup()) {
        let pl = p(&sql);
        prop_assert_eq!(statement_kind(&sql), pl.kind.clone());
        prop_assert_eq!(slow(&sql), pl);
    }

    #[test]
    fn fast_path_agrees_with_full_path(sql in pgbench_like()) {
        prop_assert_eq!(slow(&sql), p(&sql), "{}", sql);
    }
}

#[test]
fn deep_and_long_inputs() {
    let long_and = format!(
        "SELECT * FROM accounts WHERE {} aid = 5",
        "abalance = 1 AND ".repeat(3000)
    );
    assert_eq!(r(&long_and), on(int(5)));
    let nested = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let _ = p(&nested);
    let many = "SELECT 1;".repeat(2000);
    assert_eq!(r(&many), Route::AnyShard);
    let or_chain = format!(
        "SELECT * FROM misc WHERE {} x = 0",
        "x = 1 OR ".repeat(20_000)
    );
    assert_eq!(r(&or_chain), Route::Shard(LOCAL));
    let huge = format!(
        "SELECT * FROM accounts WHERE {} aid = 5",
        "x = 1 OR ".repeat(30_000)
    );
    assert!(matches!(r(&huge), Route::Unsupported(_)));
    let explains = format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(50_000));
    let _ = p(&explains);
    assert_eq!(statement_kind(&explains), StatementKind::Read);
    let prepares = format!("{}SELECT 1", "PREPARE p AS ".repeat(50_000));
    let _ = p(&prepares);
    let unterminated = [
        "SELECT 'abc",
        "SELECT \"abc",
        "SELECT $$abc",
        "SELECT /* abc",
        "SELECT E'\\",
    ];
    for sql in unterminated {
        let _ = p(sql);
    }
}

//! Queries and DML: single-shard routing by shard key, reference and local tables, joins,
//! subqueries, and what is refused (SPEC §5 rules 1–4).

use super::*;
use crate::PlanError;
use KeyType::*;

#[test]
fn select_pinned_by_constant() {
    check_all(&[
        ("SELECT * FROM accounts WHERE aid = 5", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE 5 = aid", E::Key(int(5))),
        ("select * from ACCOUNTS where AID = 5", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = -5", E::Key(int(-5))),
        ("SELECT * FROM accounts WHERE aid = +7", E::Key(int(7))),
        ("SELECT * FROM accounts WHERE aid = '5'", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = ' 5 '", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = '5'::int", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = '-5'::bigint", E::Key(int(-5))),
        ("SELECT * FROM accounts WHERE aid = CAST('5' AS int8)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = 5::int::bigint", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = int8 '12'", E::Key(int(12))),
        ("SELECT * FROM accounts WHERE aid = (5)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE (aid = 5)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE ((aid = 5) AND abalance > 0)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE abalance > 0 AND aid = 5 AND bid = 2", E::Key(int(5))),
        ("SELECT * FROM accounts a WHERE a.aid = 5", E::Key(int(5))),
        ("SELECT * FROM accounts AS a WHERE a.aid = 5", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE accounts.aid = 5", E::Key(int(5))),
        ("SELECT * FROM public.accounts WHERE public.accounts.aid = 5", E::Key(int(5))),
        ("SELECT * FROM public.accounts WHERE aid = 5", E::Key(int(5))),
        ("SELECT * FROM \"accounts\" WHERE \"aid\" = 5", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = 9223372036854775807", E::Key(int(i64::MAX))),
        ("SELECT * FROM accounts WHERE aid = -9223372036854775808", E::Key(int(i64::MIN))),
        ("SELECT abalance FROM accounts WHERE aid = 5 ORDER BY 1 LIMIT 1 OFFSET 0", E::Key(int(5))),
        ("SELECT count(*), sum(abalance) FROM accounts WHERE aid = 5 GROUP BY bid HAVING count(*) > 1", E::Key(int(5))),
        ("SELECT DISTINCT bid FROM accounts WHERE aid = 5", E::Key(int(5))),
        ("SELECT *, row_number() OVER (ORDER BY abalance) FROM accounts WHERE aid = 5", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = 5 FOR UPDATE", E::Key(int(5))),
        ("SELECT nextval('s') FROM accounts WHERE aid = 5", E::Key(int(5))),
        ("(SELECT * FROM accounts WHERE aid = 5)", E::Key(int(5))),
        ("SELECT * FROM users WHERE id = 42", E::Key(int(42))),
        ("SELECT * FROM small WHERE s = 7", E::Key(int(7))),
        ("SELECT * FROM docs WHERE slug = 'hello'", E::Key(text("hello"))),
        ("SELECT * FROM docs WHERE slug = 'it''s'", E::Key(text("it's"))),
        ("SELECT * FROM docs WHERE slug = E'a\\tb'", E::Key(text("a\tb"))),
        ("SELECT * FROM docs WHERE slug = $$dollar$$", E::Key(text("dollar"))),
        ("SELECT * FROM docs WHERE slug = 'x'::text", E::Key(text("x"))),
        ("SELECT * FROM docs WHERE slug = 'x'::varchar", E::Key(text("x"))),
        ("SELECT * FROM docs WHERE slug = 'Hello World'", E::Key(text("Hello World"))),
        ("SELECT * FROM notes WHERE tag = 'x'", E::Key(text("x"))),
        ("SELECT * FROM things WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", E::Key(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))),
        ("SELECT * FROM things WHERE id = 'A0EEBC999C0B4EF8BB6D6BB9BD380A11'::uuid", E::Key(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))),
        ("SELECT * FROM things WHERE id = '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'", E::Key(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))),
        ("SELECT * FROM app.orders WHERE order_id = 3", E::Key(int(3))),
        ("SELECT * FROM \"MixedCase\" WHERE \"Key\" = 3", E::Key(int(3))),
        ("SELECT * FROM accounts WHERE aid IN (5)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid IN (5, 5, 5)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid IN (5, NULL)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = 5 AND aid IN (5, 6)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid IN (5, 6) AND aid = 5", E::Key(int(5))),
    ]);
}

#[test]
fn select_in_list_on_one_or_several_shards() {
    let (a, b, same) = spread();
    check(
        &format!("SELECT * FROM accounts WHERE aid IN ({a}, {same})"),
        &E::Key(int(a)),
    );
    check(
        &format!("SELECT * FROM accounts WHERE aid IN ({same}, '{a}')"),
        &E::Key(int(a)),
    );
    check(
        &format!("SELECT * FROM accounts WHERE aid IN ({a}, {b})"),
        &E::Fan,
    );
    check(
        &format!("SELECT * FROM accounts WHERE aid IN ({a}, {b}) AND aid = {a}"),
        &E::Key(int(a)),
    );
    check(
        &format!("DELETE FROM accounts WHERE aid IN ({a}, {b})"),
        &E::FanWrite(2),
    );
    check(
        &format!("UPDATE accounts SET abalance = 0 WHERE aid IN ({a}, {same})"),
        &E::Key(int(a)),
    );
}

#[test]
fn contradictory_or_null_keys_match_nothing() {
    let (a, b, _) = spread();
    check_all(&[
        ("SELECT * FROM accounts WHERE aid = NULL", E::Any),
        ("SELECT * FROM accounts WHERE aid IN (NULL)", E::Any),
    ]);
    check(
        &format!("SELECT * FROM accounts WHERE aid = {a} AND aid = {b}"),
        &E::Any,
    );
}

#[test]
fn select_pinned_by_parameter() {
    check_all(&[
        ("SELECT * FROM accounts WHERE aid = $1", E::Param(1, Int8)),
        (
            "SELECT * FROM accounts WHERE $2 = aid AND abalance > $1",
            E::Param(2, Int8),
        ),
        (
            "SELECT * FROM accounts WHERE aid = $1::bigint",
            E::Param(1, Int8),
        ),
        (
            "SELECT * FROM accounts WHERE aid = CAST($3 AS int)",
            E::Param(3, Int8),
        ),
        (
            "SELECT * FROM accounts WHERE aid IN ($1)",
            E::Param(1, Int8),
        ),
        ("SELECT * FROM users u WHERE u.id = $1", E::Param(1, Int4)),
        ("SELECT * FROM docs WHERE slug = $1", E::Param(1, Text)),
        (
            "SELECT * FROM things WHERE id = $1::uuid",
            E::Param(1, Uuid),
        ),
        ("SELECT * FROM small WHERE s = $1", E::Param(1, Int2)),
        (
            "UPDATE accounts SET abalance = $2 WHERE aid = $1",
            E::Param(1, Int8),
        ),
        ("DELETE FROM accounts WHERE aid = $1", E::Param(1, Int8)),
        // A constant is a tighter bound than a parameter.
        (
            "SELECT * FROM accounts WHERE aid = $1 AND aid = 5",
            E::Key(int(5)),
        ),
        (
            "SELECT * FROM accounts WHERE aid = $1 AND aid = $2",
            E::Param(1, Int8),
        ),
        // Reads on every shard, each filtering by the parameters itself.
        ("SELECT * FROM accounts WHERE aid IN ($1, $2)", E::Fan),
        ("SELECT * FROM accounts WHERE aid IN ($1, 5)", E::Fan),
        (
            "UPDATE accounts SET abalance = 0 WHERE aid IN ($1, $2)",
            E::Unsup("several parameters"),
        ),
        (
            "SELECT * FROM users u JOIN events e ON e.user_id = u.id WHERE u.id = $1",
            E::Param(1, Int4),
        ),
    ]);
    let (a, _, _) = spread();
    check(
        &format!("SELECT * FROM accounts a, users u WHERE a.aid = $1 AND u.id = {a}"),
        &E::Unsup("both constants and parameters"),
    );
    check(
        "SELECT * FROM accounts a, users u WHERE a.aid = $1 AND u.id = $2",
        &E::Unsup("different parameters"),
    );
    assert_eq!(p("SELECT * FROM accounts WHERE aid = $1").null_key, None);
}

#[test]
fn not_provably_single_shard() {
    let cases: &[(&str, E)] = &[
        ("SELECT * FROM accounts", E::Fan),
        ("SELECT count(*) FROM accounts", E::Fan),
        ("SELECT * FROM accounts WHERE aid = 5 OR aid = 6", E::Fan),
        (
            "SELECT * FROM accounts WHERE aid = 5 OR abalance = 0",
            E::Fan,
        ),
        ("SELECT * FROM accounts WHERE NOT aid = 5", E::Fan),
        ("SELECT * FROM accounts WHERE aid <> 5", E::Fan),
        ("SELECT * FROM accounts WHERE aid > 5", E::Fan),
        ("SELECT * FROM accounts WHERE aid BETWEEN 5 AND 5", E::Fan),
        ("SELECT * FROM accounts WHERE aid NOT IN (5)", E::Fan),
        ("SELECT * FROM accounts WHERE aid + 0 = 5", E::Fan),
        ("SELECT * FROM accounts WHERE aid = 5.0", E::Fan),
        ("SELECT * FROM accounts WHERE aid = 5.5", E::Fan),
        ("SELECT * FROM accounts WHERE aid = 1e3", E::Fan),
        ("SELECT * FROM accounts WHERE aid = '5'::numeric", E::Fan),
        ("SELECT * FROM accounts WHERE aid = 5::float8", E::Fan),
        ("SELECT * FROM accounts WHERE aid = abalance", E::Fan),
        (
            "SELECT * FROM accounts WHERE aid = 99999999999999999999",
            E::Fan,
        ),
        ("SELECT * FROM accounts WHERE aid IS NULL", E::Fan),
        ("SELECT * FROM accounts WHERE aid = ANY(ARRAY[5])", E::Fan),
        ("SELECT * FROM accounts WHERE aid = (SELECT 5)", E::Fan),
        ("SELECT * FROM accounts WHERE aid::text = '5'", E::Fan),
        ("SELECT * FROM accounts WHERE aid IN (5, abalance)", E::Fan),
        ("TABLE accounts", E::Unsup("accounts")),
        ("SELECT * FROM users WHERE id = 3000000000", E::Fan),
        ("SELECT * FROM small WHERE s = 40000", E::Fan),
        ("SELECT * FROM docs WHERE slug = 5", E::Fan),
        ("SELECT * FROM docs WHERE slug = 'a'::char(3)", E::Fan),
        ("SELECT * FROM docs WHERE slug = 'abc'::varchar(2)", E::Fan),
        ("SELECT * FROM docs WHERE lower(slug) = 'a'", E::Fan),
        ("SELECT * FROM docs WHERE slug = 'a' COLLATE \"C\"", E::Fan),
        ("SELECT * FROM things WHERE id = 'not-a-uuid'", E::Fan),
        ("UPDATE accounts SET abalance = 0", E::FanWrite(3)),
        (
            "UPDATE accounts SET abalance = 0 WHERE abalance < 0",
            E::FanWrite(3),
        ),
        ("DELETE FROM accounts", E::FanWrite(3)),
        (
            "DELETE FROM accounts WHERE aid = 1 OR aid = 2",
            E::FanWrite(3),
        ),
        // A filter in a subquery does not restrict the outer table.
        (
            "SELECT * FROM accounts WHERE EXISTS (SELECT 1 FROM accounts a2 WHERE a2.aid = 5)",
            E::Unsup("accounts"),
        ),
        (
            "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM branches b WHERE a.aid = 5)",
            E::Fan,
        ),
        (
            "SELECT * FROM accounts WHERE aid IN (SELECT aid FROM accounts WHERE aid = 5)",
            E::Key(int(5)),
        ),
        // An unqualified name in a subquery may be a column of the subquery's table.
        (
            "SELECT * FROM accounts WHERE EXISTS (SELECT 1 FROM branches WHERE aid = 5)",
            E::Fan,
        ),
    ];
    check_all(cases);
}

#[test]
fn pgbench_statements() {
    check_all(&[
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 123", E::Key(int(123))),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", E::Param(1, Int4)),
        ("UPDATE pgbench_accounts SET abalance = abalance + -42 WHERE aid = 77;", E::Key(int(77))),
        ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", E::Param(2, Int4)),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 5, 10, CURRENT_TIMESTAMP);", E::Key(int(5))),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);", E::Param(3, Int4)),
        ("SELECT bbalance FROM pgbench_branches WHERE bid = 1", E::Any),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + -42 WHERE tid = 3;", E::FanWrite(3)),
        ("UPDATE pgbench_branches SET bbalance = bbalance + 5 WHERE bid = 1;", E::FanWrite(3)),
        ("BEGIN;", E::Any),
        ("END;", E::Any),
    ]);
    assert_eq!(kind("BEGIN;"), StatementKind::Begin);
    assert_eq!(kind("END;"), StatementKind::Commit);
}

#[test]
fn insert_routes_by_key() {
    let (a, b, same) = spread();
    check_all(&[
        ("INSERT INTO accounts (aid, abalance) VALUES (5, 0)", E::Key(int(5))),
        ("INSERT INTO accounts (abalance, aid) VALUES (0, 5)", E::Key(int(5))),
        ("INSERT INTO accounts (\"aid\") VALUES ('5')", E::Key(int(5))),
        ("INSERT INTO accounts (aid) VALUES (-5) RETURNING *", E::Key(int(-5))),
        ("INSERT INTO public.accounts AS a (aid) VALUES (5) ON CONFLICT (aid) DO UPDATE SET abalance = a.abalance + 1", E::Key(int(5))),
        ("INSERT INTO accounts (aid) VALUES (5) ON CONFLICT DO NOTHING", E::Key(int(5))),
        ("INSERT INTO accounts (aid, abalance) VALUES (5, (SELECT max(bbalance) FROM branches))", E::Key(int(5))),
        ("INSERT INTO accounts (aid) VALUES ($1)", E::Param(1, Int8)),
        ("INSERT INTO accounts (aid) VALUES ($1), ($1)", E::Param(1, Int8)),
        ("INSERT INTO docs (slug, body) VALUES ('x', 'y')", E::Key(text("x"))),
        ("INSERT INTO things (id) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')", E::Key(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))),
        ("INSERT INTO app.orders (order_id) VALUES (1)", E::Key(int(1))),
        ("INSERT INTO accounts VALUES (5, 0)", E::Unsup("INSERT without a column list on distributed table accounts")),
        ("INSERT INTO accounts (abalance) VALUES (0)", E::Unsup("without a value for shard key column aid")),
        ("INSERT INTO accounts DEFAULT VALUES", E::Unsup("without a value for shard key column aid")),
        ("INSERT INTO accounts (aid) VALUES (DEFAULT)", E::Unsup("not a constant or parameter")),
        ("INSERT INTO accounts (aid) VALUES (nextval('s'))", E::Unsup("not a constant or parameter")),
        ("INSERT INTO accounts (aid) VALUES (5 + 1)", E::Unsup("not a constant or parameter")),
        ("INSERT INTO accounts (aid) SELECT aid FROM accounts WHERE aid = 5", E::Unsup("INSERT … SELECT into distributed table accounts is not supported\nHINT: Load the rows with COPY accounts FROM STDIN")),
        ("INSERT INTO accounts (aid) SELECT 5", E::Unsup("INSERT … SELECT")),
        ("INSERT INTO accounts (aid) VALUES (5) ON CONFLICT (aid) DO UPDATE SET aid = excluded.aid + 1", E::Unsup("ON CONFLICT DO UPDATE of shard key column aid")),
        ("INSERT INTO accounts (aid, abalance) VALUES (5, (SELECT x FROM misc))", E::Unsup("mixes distributed table accounts and local table misc")),
        ("INSERT INTO accounts (aid) VALUES (NULL)", E::Err("23502")),
        ("INSERT INTO accounts (aid) VALUES (NULL::bigint)", E::Err("23502")),
        ("INSERT INTO accounts (aid) VALUES (5), (NULL)", E::Err("23502")),
        ("INSERT INTO docs (slug) VALUES (NULL)", E::Err("23502")),
        ("INSERT INTO branches (bid) VALUES (1)", E::FanWrite(3)),
        ("INSERT INTO misc (x) VALUES (1)", E::Local),
        ("INSERT INTO misc SELECT * FROM branches", E::Local),
        ("INSERT INTO misc SELECT aid FROM accounts WHERE aid = 5", E::Unsup("mixes distributed table accounts and local table misc")),
    ]);
    check(
        &format!("INSERT INTO accounts (aid) VALUES ({a}), ({same}), ('{a}')"),
        &E::Key(int(a)),
    );
    check(
        &format!("INSERT INTO accounts (aid) VALUES ({a}), ({b})"),
        &E::FanWrite(2),
    );
    match r("INSERT INTO accounts (aid) VALUES (NULL)") {
        Route::Error(e) => {
            assert_eq!(
                e.to_string(),
                "null value in column \"aid\" of relation \"accounts\" violates not-null constraint"
            );
            assert_eq!(e.sqlstate(), "23502");
        }
        other => panic!("{other:?}"),
    }
    // A NULL parameter for an INSERT's key is the same error, decided at Bind.
    let pl = p("INSERT INTO accounts (aid) VALUES ($1)");
    assert_eq!(
        pl.null_key,
        Some(PlanError::NullShardKey {
            table: "accounts".into(),
            column: "aid".into()
        })
    );
    assert!(matches!(
        crate::route_for_key(&pl, None, &catalog()),
        Route::Error(PlanError::NullShardKey { .. })
    ));
    assert_eq!(
        crate::route_for_key(&pl, Some(&int(9)), &catalog()),
        on(int(9))
    );
    let sel = p("SELECT * FROM accounts WHERE aid = $1");
    assert_eq!(
        crate::route_for_key(&sel, None, &catalog()),
        Route::AnyShard
    );
}

#[test]
fn update_and_delete() {
    check_all(&[
        (
            "UPDATE accounts SET abalance = 0 WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            "UPDATE accounts a SET abalance = 0 WHERE a.aid = 5 RETURNING a.abalance",
            E::Key(int(5)),
        ),
        (
            "UPDATE accounts SET abalance = b.bbalance FROM branches b WHERE aid = 5 AND b.bid = 1",
            E::Key(int(5)),
        ),
        (
            "UPDATE accounts SET abalance = (SELECT max(bbalance) FROM branches) WHERE aid = 5",
            E::Key(int(5)),
        ),
        (
            // The row moves: in place on every shard, then moved (`crate::keyupdate`).
            "UPDATE accounts SET aid = 6 WHERE aid = 5",
            E::FanWrite(3),
        ),
        (
            "UPDATE accounts SET (abalance, aid) = (0, 6) WHERE aid = 5",
            E::FanWrite(3),
        ),
        (
            "UPDATE accounts SET abalance = 1 FROM misc WHERE aid = 5",
            E::Unsup("mixes distributed table accounts and local table misc"),
        ),
        (
            "UPDATE misc SET x = 1 FROM accounts WHERE accounts.aid = 5",
            E::Unsup("mixes"),
        ),
        ("UPDATE misc SET x = 1", E::Local),
        ("UPDATE misc SET x = b.bid FROM branches b", E::Local),
        (
            "UPDATE branches SET bbalance = 0 FROM accounts WHERE aid = 5",
            E::Unsup("write to reference table branches"),
        ),
        ("DELETE FROM accounts WHERE aid = 5", E::Key(int(5))),
        (
            "DELETE FROM accounts a USING branches b WHERE a.aid = 5 AND a.bid = b.bid",
            E::Key(int(5)),
        ),
        (
            "DELETE FROM accounts WHERE aid = 5 RETURNING *",
            E::Key(int(5)),
        ),
        ("DELETE FROM branches WHERE bid = 1", E::FanWrite(3)),
        ("DELETE FROM misc WHERE x = 1", E::Local),
        (
            "MERGE INTO accounts a USING branches b ON a.bid = b.bid WHEN MATCHED THEN DELETE",
            E::Unsup("MERGE into distributed table accounts"),
        ),
        (
            "MERGE INTO misc m USING branches b ON m.x = b.bid WHEN MATCHED THEN DELETE",
            E::Local,
        ),
    ]);
}

#[test]
fn reference_and_local_tables() {
    check_all(&[
        ("SELECT * FROM branches", E::Any),
        ("SELECT * FROM public.branches WHERE bid = 1", E::Any),
        (
            "SELECT count(*) FROM branches b JOIN pgbench_tellers t ON t.bid = b.bid",
            E::Any,
        ),
        ("SELECT * FROM misc", E::Local),
        ("SELECT * FROM public.misc", E::Local),
        ("SELECT * FROM other_schema.misc", E::Local),
        (
            "SELECT * FROM misc m JOIN branches b ON m.x = b.bid",
            E::Local,
        ),
        (
            "SELECT * FROM branches WHERE bid IN (SELECT x FROM misc)",
            E::Local,
        ),
        (
            "SELECT * FROM accounts a JOIN misc m ON m.x = a.aid WHERE a.aid = 5",
            E::Unsup("statement mixes distributed table accounts and local table misc"),
        ),
        (
            "SELECT * FROM accounts WHERE aid = 5 AND abalance IN (SELECT x FROM misc)",
            E::Unsup("mixes distributed table accounts and local table misc"),
        ),
        (
            "SELECT * FROM accounts WHERE aid = 5 UNION ALL SELECT x FROM misc",
            E::Unsup("mixes"),
        ),
        (
            "SELECT * FROM accounts a JOIN branches b ON a.bid = b.bid WHERE a.aid = 5",
            E::Key(int(5)),
        ),
        // The nullable side is restricted by its ON clause; branches is everywhere.
        (
            "SELECT * FROM branches b LEFT JOIN accounts a ON a.aid = 5",
            E::Key(int(5)),
        ),
        (
            "SELECT * FROM accounts a LEFT JOIN branches b ON a.aid = 5",
            E::Fan,
        ),
        (
            "SELECT * FROM accounts a JOIN branches b ON a.bid = b.bid",
            E::Fan,
        ),
        (
            "SELECT * FROM accounts WHERE aid = 5 AND bid IN (SELECT bid FROM branches)",
            E::Key(int(5)),
        ),
        // A function that may read local objects keeps reference reads on the local shard.
        ("SELECT my_func(bid) FROM branches", E::Local),
        ("SELECT nextval('branch_seq')", E::Local),
        // A data-modifying CTE on a reference table.
        (
            "WITH d AS (DELETE FROM branches RETURNING *) SELECT * FROM d",
            E::FanWrite(3),
        ),
    ]);
}

#[test]
fn joins() {
    let (a, b, _) = spread();
    check_all(&[
        // Co-located tables joined on their keys, one key pinned.
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u JOIN events e ON u.id = e.user_id WHERE e.user_id = 7", E::Key(int(7))),
        ("SELECT * FROM users u, events e WHERE e.user_id = u.id AND u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id AND u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u INNER JOIN events e ON (e.user_id = u.id) WHERE (u.id = 7)", E::Key(int(7))),
        ("SELECT * FROM users JOIN events ON events.user_id = users.id WHERE users.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id JOIN accounts a ON a.aid = e.user_id WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id JOIN branches b ON true WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM (users u JOIN events e ON e.user_id = u.id) WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u CROSS JOIN events e WHERE e.user_id = 7 AND u.id = 7", E::Key(int(7))),
        // Both pinned independently to the same shard.
        ("SELECT * FROM users u, accounts a WHERE u.id = 7 AND a.aid = 7", E::Key(int(7))),
        // Outer joins: the nullable side follows the preserved side.
        ("SELECT * FROM users u LEFT JOIN events e ON e.user_id = u.id WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u LEFT OUTER JOIN events e ON e.user_id = u.id WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM events e RIGHT JOIN users u ON e.user_id = u.id WHERE u.id = 7", E::Key(int(7))),
        // … but not the other way round.
        ("SELECT * FROM users u LEFT JOIN events e ON e.user_id = u.id WHERE e.user_id = 7", E::Unsup("users")),
        ("SELECT * FROM users u LEFT JOIN events e ON e.user_id = u.id AND u.id = 7", E::Fan),
        ("SELECT * FROM users u FULL JOIN events e ON e.user_id = u.id WHERE u.id = 7", E::Unsup("events")),
        ("SELECT * FROM users u LEFT JOIN (events e JOIN users u2 ON u2.id = e.user_id AND u2.id = 7) ON e.user_id = u.id", E::Unsup("users")),
        // USING.
        ("SELECT * FROM accounts a1 JOIN accounts a2 USING (aid) WHERE a1.aid = 7", E::Key(int(7))),
        // Not on the key.
        ("SELECT * FROM users u JOIN events e ON e.other = u.id WHERE u.id = 7", E::Unsup("join of distributed tables users and events that is not on the shard key of events")),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.other WHERE u.id = 7", E::Unsup("events")),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id", E::Fan),
        ("SELECT * FROM users u JOIN events e ON e.other = u.other", E::Unsup("join of distributed tables")),
        ("SELECT * FROM users u JOIN events e ON e.user_id = u.id OR u.id = 7", E::Unsup("join of distributed tables")),
        ("SELECT * FROM users u JOIN docs d ON d.slug = u.id::text WHERE u.id = 7", E::Unsup("docs")),
    ]);
    check(
        &format!("SELECT * FROM users u, accounts a WHERE u.id = {a} AND a.aid = {b}"),
        &E::Unsup("multi-shard query"),
    );
}

#[test]
fn subqueries_ctes_and_set_operations() {
    let (a, b, same) = spread();
    check_all(&[
        ("SELECT * FROM users u WHERE u.id = 7 AND EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id)", E::Key(int(7))),
        ("SELECT * FROM users u WHERE u.id = 7 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id AND e.kind = 'x')", E::Key(int(7))),
        ("SELECT u.*, (SELECT count(*) FROM events e WHERE e.user_id = u.id) FROM users u WHERE u.id = 7", E::Key(int(7))),
        ("SELECT * FROM users u WHERE u.id = 7 AND u.x > (SELECT max(v) FROM events e WHERE e.user_id = 7)", E::Key(int(7))),
        ("SELECT * FROM users WHERE id = 7 AND id IN (SELECT user_id FROM events WHERE user_id = 7)", E::Key(int(7))),
        ("SELECT * FROM (SELECT * FROM accounts WHERE aid = 5) s", E::Key(int(5))),
        ("SELECT * FROM (SELECT * FROM accounts WHERE aid = 5) AS s WHERE s.abalance > 0", E::Key(int(5))),
        ("SELECT * FROM users u, LATERAL (SELECT * FROM events e WHERE e.user_id = u.id) x WHERE u.id = 7", E::Key(int(7))),
        ("WITH x AS (SELECT * FROM accounts WHERE aid = 5) SELECT * FROM x", E::Key(int(5))),
        ("WITH x AS (SELECT * FROM accounts WHERE aid = 5), y AS (SELECT * FROM x) SELECT * FROM y", E::Key(int(5))),
        ("WITH x AS MATERIALIZED (SELECT * FROM accounts WHERE aid = 5) SELECT * FROM x JOIN branches b ON true", E::Key(int(5))),
        ("WITH u AS (UPDATE accounts SET abalance = 0 WHERE aid = 5 RETURNING *) SELECT * FROM u", E::Key(int(5))),
        ("WITH d AS (DELETE FROM accounts WHERE aid = 5 RETURNING *) INSERT INTO accounts (aid) VALUES (5)", E::Key(int(5))),
        ("SELECT * FROM accounts WHERE aid = 5 UNION SELECT * FROM accounts WHERE aid = 5", E::Key(int(5))),
        ("SELECT 1 FROM accounts WHERE aid = 5 INTERSECT SELECT 1 FROM branches", E::Key(int(5))),
        // A CTE named like a table hides it.
        ("WITH accounts AS (SELECT 1 AS aid) SELECT * FROM accounts", E::Any),
        ("WITH misc AS (SELECT * FROM accounts WHERE aid = 5) SELECT * FROM misc", E::Key(int(5))),
        // Unrestricted inside.
        ("SELECT * FROM (SELECT * FROM accounts) s WHERE s.aid = 5", E::Fan),
        ("WITH x AS (SELECT * FROM accounts) SELECT * FROM x WHERE aid = 5", E::Fan),
        ("SELECT * FROM users u WHERE u.id = 7 AND EXISTS (SELECT 1 FROM events e)", E::Unsup("events")),
        ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id AND e.user_id = 7)", E::Unsup("users")),
        ("SELECT * FROM branches WHERE bid = (SELECT bid FROM accounts LIMIT 1)", E::Unsup("accounts")),
        ("WITH RECURSIVE t AS (SELECT aid FROM accounts WHERE aid = 5 UNION SELECT a.aid FROM accounts a JOIN t ON a.bid = t.aid) SELECT * FROM t", E::Unsup("accounts")),
    ]);
    check(
        &format!("SELECT * FROM accounts WHERE aid = {a} UNION ALL SELECT * FROM accounts WHERE aid = {same}"),
        &E::Key(int(a)),
    );
    check(
        &format!("SELECT * FROM accounts WHERE aid = {a} UNION ALL SELECT * FROM accounts WHERE aid = {b}"),
        &E::Unsup("multi-shard"),
    );
}

#[test]
fn utility_queries() {
    check_all(&[
        ("SELECT 1", E::Any),
        ("select 1;", E::Any),
        ("SELECT 1 + 1 AS two, 'x' || 'y'", E::Any),
        ("SELECT version()", E::Any),
        ("SELECT now()", E::Any),
        ("SELECT CURRENT_TIMESTAMP", E::Any),
        ("SELECT current_setting('server_version_num')", E::Any),
        ("SELECT pg_catalog.current_setting('TimeZone')", E::Any),
        ("SELECT $1::int", E::Any),
        ("SELECT * FROM generate_series(1, 10) g", E::Any),
        ("SELECT count(*) FROM generate_series(1, 10)", E::Any),
        ("VALUES (1), (2)", E::Any),
        ("SELECT 'misc'::regclass", E::Local),
        ("SELECT 'misc'::regclass::oid", E::Local),
        ("SELECT pg_table_size('misc')", E::Local),
        ("SELECT nextval('misc_x_seq')", E::Local),
        ("SELECT my_function(1)", E::Local),
        ("SELECT 'happy'::mood", E::Local),
        ("SELECT pg_notify('ch', 'payload')", E::Local),
        ("SELECT * FROM pg_class", E::Local),
        (
            "SELECT * FROM pg_catalog.pg_class WHERE relname = 'accounts'",
            E::Local,
        ),
        ("SELECT * FROM information_schema.tables", E::Local),
        ("SELECT * FROM pg_stat_activity", E::Local),
        (
            "SELECT * FROM accounts a JOIN pg_class c ON c.relname = 'accounts' WHERE a.aid = 5",
            E::Key(int(5)),
        ),
        ("SELECT 1 INTO new_table", E::Local),
        ("SELECT * INTO new_table FROM branches", E::Local),
        (
            "SELECT * INTO new_table FROM accounts WHERE aid = 5",
            E::Unsup("SELECT INTO from distributed table accounts"),
        ),
    ]);
    assert_eq!(
        kind("SELECT * INTO new_table FROM branches"),
        StatementKind::Ddl
    );
    assert_eq!(kind("SELECT 1"), StatementKind::Read);
}

#[test]
fn tokio_postgres_and_driver_metadata_queries() {
    check_all(&[
        ("SELECT t.typname, t.typtype, t.typelem, r.rngsubtype, t.typbasetype, n.nspname, t.typrelid FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid INNER JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid WHERE t.oid = $1", E::Local),
        ("SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", E::Local),
        ("SELECT attname, atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND NOT attisdropped AND attnum > 0 ORDER BY attnum", E::Local),
        ("SELECT oid, typname FROM pg_type WHERE typname IN ('hstore', 'geometry')", E::Local),
        ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", E::Local),
        ("SHOW TRANSACTION ISOLATION LEVEL", E::Any),
        ("SELECT pg_catalog.set_config('search_path', '', false)", E::Local),
    ]);
}

#[test]
fn kinds_of_dml() {
    assert_eq!(
        kind("SELECT * FROM accounts WHERE aid = 1"),
        StatementKind::Read
    );
    assert_eq!(kind("INSERT INTO misc VALUES (1)"), StatementKind::Write);
    assert_eq!(kind("UPDATE misc SET x = 1"), StatementKind::Write);
    assert_eq!(kind("DELETE FROM misc"), StatementKind::Write);
    assert_eq!(
        kind("WITH x AS (DELETE FROM misc RETURNING *) SELECT * FROM x"),
        StatementKind::Write
    );
    assert_eq!(kind("SELECT * FROM misc FOR UPDATE"), StatementKind::Read);
    assert_eq!(
        kind("SELECT * FROM misc FOR NO KEY UPDATE"),
        StatementKind::Read
    );
    assert_eq!(kind("(SELECT 1)"), StatementKind::Read);
}

#[test]
fn fast_path_cases() {
    let c = catalog();
    let toks = |s: &'static str| crate::parse::tokens(s);
    // Taken by the fast path.
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT * FROM accounts a WHERE a.aid = -5",
        "SELECT a.*, b FROM accounts AS a WHERE 5 = a.aid",
        "SELECT x FROM docs WHERE slug = 'it''s'",
        "SELECT x FROM things WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "UPDATE pgbench_accounts SET abalance = abalance + -42 WHERE aid = 77",
        "UPDATE accounts a SET abalance = abalance + $1, note = 'x' WHERE a.aid = $2",
        "DELETE FROM accounts WHERE aid = 5",
        "SELECT \"abalance\" FROM public.accounts WHERE \"aid\" = '5'",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 5, 10, CURRENT_TIMESTAMP)",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        "INSERT INTO accounts (abalance, aid) VALUES (-1 * 3, -7)",
        "INSERT INTO docs (slug, body) VALUES ('a', E'b\\n')",
        // Local (undeclared) tables: the local shard, without a parse.
        "SELECT * FROM misc WHERE x = 5",
        "SELECT abalance FROM pgbench_local WHERE aid = $1",
        "SELECT a.x, b FROM misc AS a WHERE a.x = 'y' OR b > 3 ORDER BY b LIMIT 2",
        "SELECT x FROM misc",
        "SELECT x FROM app.misc m WHERE x = 1 FOR UPDATE",
        "UPDATE misc SET x = x + -1 WHERE id = 4",
        "UPDATE misc m SET x = 1",
        "DELETE FROM misc",
        "DELETE FROM misc WHERE x < 3",
        "INSERT INTO misc (a, b, c) VALUES (1, DEFAULT, CURRENT_TIMESTAMP)",
        "INSERT INTO misc (a) VALUES ($1)",
    ] {
        assert!(crate::route::fast_path(&toks(sql), &c).is_some(), "{sql}");
        check(sql, &E::Any.or_route(r(sql)));
    }
    // Left to the full path.
    for sql in [
        "SELECT count(*) FROM accounts WHERE aid = 5",
        "SELECT * FROM accounts WHERE aid = 5 OR aid = 6",
        "SELECT * FROM accounts WHERE aid = 5 AND bid = 1",
        "SELECT * FROM accounts WHERE aid = 5 FOR UPDATE",
        "SELECT * FROM accounts WHERE aid = 5::int",
        "SELECT * FROM accounts WHERE aid = 5.0",
        "SELECT * FROM accounts WHERE aid = NULL",
        "SELECT * FROM accounts WHERE abalance = 5",
        "SELECT * FROM accounts b WHERE a.aid = 5",
        "SELECT * FROM accounts a WHERE accounts.aid = 5",
        "SELECT * INTO t FROM accounts WHERE aid = 5",
        "SELECT * FROM ONLY accounts WHERE aid = 5",
        "SELECT * FROM accounts, branches WHERE aid = 5",
        "SELECT * FROM accounts JOIN branches USING (bid) WHERE aid = 5",
        "SELECT * FROM branches WHERE bid = 5",
        "SELECT * FROM docs WHERE slug = 5",
        "UPDATE accounts SET aid = 6 WHERE aid = 5",
        "UPDATE accounts SET abalance = 1, aid = 6 WHERE aid = 5",
        "UPDATE accounts SET abalance = 1 FROM branches WHERE aid = 5",
        "UPDATE accounts SET abalance = 1 WHERE aid = 5 RETURNING *",
        "DELETE FROM accounts USING branches WHERE aid = 5",
        "DELETE FROM accounts WHERE aid = 5 AND aid = 6",
        "INSERT INTO accounts VALUES (5)",
        "INSERT INTO accounts (abalance) VALUES (5)",
        "INSERT INTO accounts (aid) VALUES (NULL)",
        "INSERT INTO accounts (aid) VALUES (DEFAULT)",
        "INSERT INTO accounts (aid) VALUES (5), (6)",
        "INSERT INTO accounts (aid) VALUES (5) RETURNING aid",
        "INSERT INTO accounts (aid) VALUES (5) ON CONFLICT DO NOTHING",
        "INSERT INTO accounts (aid, abalance) VALUES (5, abs(-1))",
        "INSERT INTO accounts (aid, abalance) VALUES (5)",
        "INSERT INTO accounts (aid) SELECT 5",
        "INSERT INTO accounts (aid) VALUES (5 + 1)",
        "INSERT INTO branches (bid) VALUES (5)",
        // Local tables with anything that could bring in another table, or a name
        // the catalog declares.
        "SELECT * FROM misc WHERE x = 5 UNION SELECT * FROM accounts",
        "SELECT * FROM misc WHERE x IN (SELECT aid FROM accounts)",
        "SELECT * FROM misc m JOIN accounts a ON a.aid = m.x",
        "SELECT * FROM misc, accounts WHERE aid = 5",
        "SELECT * FROM misc WHERE accounts = 5",
        "SELECT * FROM misc WHERE",
        "SELECT * FROM misc ORDER BY x",
        "SELECT * FROM pg_class WHERE relname = 'x'",
        "UPDATE misc SET x = 1 FROM accounts WHERE x = aid",
        "UPDATE misc",
        "DELETE FROM misc USING accounts WHERE x = aid",
        "DELETE FROM misc WHERE x = 1 RETURNING *",
        "INSERT INTO misc (a) VALUES (1), (2)",
        "INSERT INTO misc (a) VALUES (abs(1))",
        "INSERT INTO misc (a) VALUES (1) RETURNING a",
        "INSERT INTO misc (a) SELECT aid FROM accounts",
        "INSERT INTO misc VALUES (1)",
    ] {
        assert!(crate::route::fast_path(&toks(sql), &c).is_none(), "{sql}");
    }
}

impl E {
    /// Accept exactly `route` (for cases checked only for fast/full agreement).
    fn or_route(self, route: Route) -> E {
        match route {
            Route::Shard(s) => E::Shard(s.0),
            Route::ShardByParam { param, key_type } => E::Param(param, key_type),
            Route::AnyShard => E::Any,
            _ => self,
        }
    }
}

//! Multi-row INSERTs split by shard key, and INSERTs without a column list planned with
//! the table's columns (SPEC §5 rule 1).

use super::*;
use crate::{columns_needed, plan_with_columns};

fn split(sql: &str) -> crate::FanoutWrite {
    match r(sql) {
        Route::FanoutWrite(w) => w,
        other => panic!("{sql}: {other:?}"),
    }
}

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn multi_row_insert_is_split_by_shard() {
    let (a, b, same) = spread();
    let c = catalog();
    let sql =
        format!("INSERT INTO accounts (aid, abalance) VALUES ({a}, 1), ({b}, 2), ({same}, 3)");
    let w = split(&sql);
    assert_eq!(w.shards.len(), 2);
    assert_eq!(w.shard_sql.len(), 2);
    assert!(!w.replicated);
    assert_eq!(w.tables, vec!["accounts".to_owned()]);
    let sa = c.shard_of(&int(a)).expect("owner");
    let sb = c.shard_of(&int(b)).expect("owner");
    let ia = w.shards.iter().position(|s| *s == sa).expect("a's shard");
    let ib = w.shards.iter().position(|s| *s == sb).expect("b's shard");
    // Each shard gets its own rows, in their original order.
    assert_eq!(
        w.sql_for(ia),
        format!("INSERT INTO accounts (aid, abalance) VALUES ({a}, 1), ({same}, 3)")
    );
    assert_eq!(
        w.sql_for(ib),
        format!("INSERT INTO accounts (aid, abalance) VALUES ({b}, 2)")
    );
    // The kind is still a write.
    assert_eq!(kind(&sql), StatementKind::Write);
}

#[test]
fn split_keeps_returning_and_on_conflict() {
    let (a, b, _) = spread();
    let w = split(&format!(
        "INSERT INTO accounts AS x (aid, abalance) VALUES ({a}, 1), ({b}, 2) ON CONFLICT (aid) DO UPDATE SET abalance = x.abalance + excluded.abalance RETURNING aid, abalance"
    ));
    for i in 0..w.shards.len() {
        let s = w.sql_for(i);
        assert!(
            s.contains("DO UPDATE SET abalance = x.abalance + excluded.abalance"),
            "{s}"
        );
        assert!(s.ends_with("RETURNING aid, abalance"), "{s}");
    }
    let w = split(&format!(
        "INSERT INTO accounts (aid) VALUES ({a}), ({b}) ON CONFLICT DO NOTHING"
    ));
    assert_eq!(w.shards.len(), 2);
    // Text keys too.
    let c = catalog();
    let s = |v: &str| c.shard_of(&text(v));
    let t2 = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| s(k) != s("k0"))
        .expect("two shards");
    let w = split(&format!(
        "INSERT INTO docs (slug, body) VALUES ('k0', 'x'), ('{t2}', 'y')"
    ));
    assert_eq!(w.shards.len(), 2);
}

#[test]
fn multi_row_insert_with_parameter_keys_is_routed_at_bind() {
    let (a, _, _) = spread();
    let sql = format!(
        "INSERT INTO accounts (abalance, aid) VALUES ($1, $2), (0, {a}), ($3, $4) RETURNING aid, $5::int"
    );
    let Route::InsertByParams(pi) = r(&sql) else {
        panic!("{sql}: {:?}", r(&sql));
    };
    assert_eq!(pi.table, "accounts");
    assert_eq!(pi.column, "aid");
    assert_eq!(
        pi.keys,
        vec![
            crate::RowKey::Param(2),
            crate::RowKey::Value(int(a)),
            crate::RowKey::Param(4)
        ]
    );
    // Rows 0 and 2 on one shard, row 1 on another: parameters renumbered per part,
    // those outside the rows (RETURNING) kept in each.
    let parts = crate::split_insert_rows(&pi.sql, &[vec![0, 2], vec![1]]).expect("split");
    assert_eq!(
        parts[0],
        (
            "INSERT INTO accounts (abalance, aid) VALUES ($1, $2), ($3, $4) RETURNING aid, $5::INT"
                .to_owned(),
            vec![1, 2, 3, 4, 5]
        )
    );
    assert_eq!(
        parts[1],
        (
            format!("INSERT INTO accounts (abalance, aid) VALUES (0, {a}) RETURNING aid, $1::INT"),
            vec![5]
        )
    );
    let p2 = crate::split_insert_rows(&pi.sql, &[vec![2]]).expect("split");
    assert_eq!(p2[0].1, vec![3, 4, 5]);
    assert!(matches!(
        r("INSERT INTO accounts (aid) VALUES ($1), ($2)"),
        Route::InsertByParams(_)
    ));
    // Inside PREPARE the rows cannot be split at EXECUTE: refused as before.
    check_all(&[(
        "PREPARE q AS INSERT INTO accounts (aid) VALUES ($1), ($2); SELECT 1",
        E::Unsup("multi-statement"),
    )]);
    assert_eq!(
        crate::renumber_params("SELECT $3, $1, $3").expect("parsed"),
        ("SELECT $1, $2, $1".to_owned(), vec![3, 1])
    );
}

#[test]
fn split_refusals_unchanged() {
    let (a, b, _) = spread();
    check_all(&[
        // NULL keys: the same error as for one row.
        (&*format!("INSERT INTO accounts (aid) VALUES ({a}), ({b}), (NULL)"), E::Err("23502")),
        (&*format!("INSERT INTO accounts (aid) VALUES ({a}), ({b}), (DEFAULT)"), E::Unsup("not a constant or parameter")),
        // Reading another distributed table in the VALUES: not split.
        (&*format!("INSERT INTO accounts (aid, abalance) VALUES ({a}, 1), ({b}, (SELECT count(*) FROM users))"), E::Unsup("users")),
        (&*format!("INSERT INTO accounts (aid, abalance) VALUES ({a}, 1), ({b}, (SELECT count(*) FROM users WHERE id = 3))"), E::Unsup("whose rows read other distributed tables")),
        // Not inside PREPARE or EXPLAIN, nor with other statements.
        (&*format!("INSERT INTO accounts (aid) VALUES ({a}), ({b}); SELECT 1"), E::Unsup("multi-statement")),
    ]);
    match r(&format!(
        "PREPARE p AS INSERT INTO accounts (aid) VALUES ({a}), ({b})"
    )) {
        Route::Router(RouterCommand::Prepare { plan, .. }) => assert!(
            matches!(&plan.route, Route::Unsupported(m) if m.contains("PREPARE of a multi-shard statement")),
            "{plan:?}"
        ),
        other => panic!("{other:?}"),
    }
    // A reference-table read in VALUES is the same on every shard.
    check(
        &format!("INSERT INTO accounts (aid, abalance) VALUES ({a}, 1), ({b}, (SELECT max(bbalance) FROM branches))"),
        &E::FanWrite(2),
    );
}

#[test]
fn insert_without_column_list() {
    let c = catalog();
    let (a, b, _) = spread();
    // The planner alone refuses it and says which table's columns it needs.
    let sql = format!("INSERT INTO accounts VALUES ({a}, 0)");
    check(
        &sql,
        &E::Unsup("INSERT without a column list on distributed table accounts"),
    );
    assert_eq!(columns_needed(&sql, &c).as_deref(), Some("accounts"));
    assert_eq!(
        columns_needed("INSERT INTO public.accounts VALUES (1)", &c).as_deref(),
        Some("public.accounts")
    );
    assert_eq!(
        columns_needed("INSERT INTO accounts (aid) VALUES (1)", &c),
        None
    );
    assert_eq!(
        columns_needed("INSERT INTO accounts DEFAULT VALUES", &c),
        None
    );
    assert_eq!(columns_needed("INSERT INTO branches VALUES (1)", &c), None);
    assert_eq!(columns_needed("SELECT 1", &c), None);
    assert_eq!(
        columns_needed("INSERT INTO accounts VALUES (1); SELECT 1", &c),
        None
    );

    let order = cols(&["aid", "bid", "abalance", "filler"]);
    let p1 = plan_with_columns(&sql, &c, &order).expect("planned");
    assert_eq!(p1.route, on(int(a)));
    assert!(p1.column_order);
    // The key is not the first column.
    let order2 = cols(&["abalance", "aid"]);
    let p2 = plan_with_columns(
        &format!("INSERT INTO accounts VALUES (0, {b})"),
        &c,
        &order2,
    )
    .expect("planned");
    assert_eq!(p2.route, on(int(b)));
    // Several rows on several shards: split, each part with the column list.
    let p3 = plan_with_columns(
        &format!("INSERT INTO accounts VALUES ({a}, 1), ({b}, 2) RETURNING *"),
        &c,
        &order,
    )
    .expect("planned");
    match p3.route {
        Route::FanoutWrite(w) => {
            assert_eq!(w.shards.len(), 2);
            assert!(
                w.sql_for(0)
                    .starts_with("INSERT INTO accounts (\"aid\", \"bid\") VALUES"),
                "{}",
                w.sql_for(0)
            );
        }
        other => panic!("{other:?}"),
    }
    // A parameter key: routed at Bind, NULL refused.
    let p4 =
        plan_with_columns("INSERT INTO accounts VALUES ($1, $2)", &c, &order).expect("planned");
    assert_eq!(
        p4.route,
        Route::ShardByParam {
            param: 1,
            key_type: KeyType::Int8
        }
    );
    assert!(p4.null_key.is_some());
    // A NULL key.
    let p5 =
        plan_with_columns("INSERT INTO accounts VALUES (NULL, 1)", &c, &order).expect("planned");
    assert!(matches!(p5.route, Route::Error(_)), "{:?}", p5.route);
    // The key among the trailing columns left to their defaults.
    let p6 = plan_with_columns("INSERT INTO accounts VALUES (0)", &c, &order2).expect("planned");
    match p6.route {
        Route::Unsupported(m) => assert!(
            m.contains("without a value for shard key column aid"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // More values than columns: PostgreSQL's error, not ours.
    assert_eq!(
        plan_with_columns("INSERT INTO accounts VALUES (1, 2, 3)", &c, &order2),
        None
    );
    // Quoted column names survive.
    let p7 = plan_with_columns("INSERT INTO \"MixedCase\" VALUES (3)", &c, &cols(&["Key"]))
        .expect("planned");
    assert_eq!(p7.route, on(int(3)));
}

//! Fan-out plans against the synthetic test catalog.

use crate::tests::p;
use crate::{FanoutPlan, MergePlan, Route, SortColumn};

fn fan(sql: &str) -> FanoutPlan {
    match p(sql).route {
        Route::Fanout(f) => f,
        other => panic!("{sql}: expected a fan-out, got {other:?}"),
    }
}

fn unsup(sql: &str) -> String {
    match p(sql).route {
        Route::Unsupported(m) => m,
        // Refused for push-down, answered by collecting.
        Route::Fanout(FanoutPlan {
            merge: MergePlan::Collect(c),
            ..
        }) => c.reason,
        other => panic!("{sql}: expected 0A000, got {other:?}"),
    }
}

#[test]
fn plain_rows_stream() {
    let f = fan("SELECT * FROM accounts");
    assert_eq!(f.shards.len(), 3);
    assert_eq!(f.shard_sql, "SELECT * FROM accounts");
    assert!(matches!(f.merge, MergePlan::Stream(ref s) if s.sort.is_empty() && s.hidden == 0));
}

#[test]
fn order_limit_offset() {
    let f = fan("SELECT aid, abalance FROM accounts ORDER BY abalance DESC, aid LIMIT 10 OFFSET 5");
    let MergePlan::Stream(s) = &f.merge else {
        panic!()
    };
    assert_eq!(s.limit, Some(10));
    assert_eq!(s.offset, 5);
    assert_eq!(s.sort.len(), 2);
    // Plain columns are sorted on hidden text copies (binary results merge too).
    assert_eq!(s.sort[0].column, SortColumn::Hidden(0));
    assert_eq!(s.sort[1].column, SortColumn::Hidden(1));
    assert_eq!(s.hidden, 2);
    assert!(s.sort[0].descending && s.sort[0].nulls_first);
    assert!(f.shard_sql.ends_with("LIMIT 15"), "{}", f.shard_sql);
    assert!(!f.shard_sql.contains("OFFSET"));
}

#[test]
fn visible_expression_keys_are_not_copied() {
    // A copy of random() would not sort by the values shown.
    let f = fan("SELECT aid, random() AS r FROM accounts ORDER BY r");
    let MergePlan::Stream(s) = &f.merge else {
        panic!()
    };
    assert_eq!(s.sort[0].column, SortColumn::Visible(1));
    assert_eq!(s.hidden, 0);
}

#[test]
fn hidden_sort_column() {
    let f = fan("SELECT aid FROM accounts ORDER BY abalance * 2 - aid");
    let MergePlan::Stream(s) = &f.merge else {
        panic!()
    };
    assert_eq!(s.sort[0].column, SortColumn::Hidden(0));
    assert_eq!(s.hidden, 1);
}

#[test]
fn subset_for_in_list() {
    let f = fan("SELECT * FROM accounts WHERE aid IN (1, 2, 3, 4, 5, 6)");
    assert!(f.shards.len() >= 2);
}

#[test]
fn aggregates_finish() {
    let f = fan("SELECT count(*), sum(abalance), avg(abalance) FROM accounts");
    let MergePlan::Finish(fp) = &f.merge else {
        panic!()
    };
    assert_eq!(
        f.shard_sql,
        "SELECT abalance AS __pgshard_c0, count(*) AS __pgshard_m FROM accounts GROUP BY 1"
    );
    let sql = fp.render(&["int4", "int8"], &[vec![Some("5"), Some("2")]]);
    assert_eq!(
        sql,
        "SELECT count(*) AS \"count\", sum(__pgshard_v.__pgshard_c0) AS \"sum\", avg(__pgshard_v.__pgshard_c0) AS \"avg\" FROM (VALUES (E'5'::int4, E'2'::int8)) AS __pgshard_v(__pgshard_c0, __pgshard_m) CROSS JOIN LATERAL generate_series(1, __pgshard_v.__pgshard_m) AS __pgshard_r(__pgshard_i)"
    );
    let empty = fp.render(&["int4", "int8"], &[]);
    assert!(
        empty.contains("(SELECT NULL::int4, NULL::int8 WHERE false)"),
        "{empty}"
    );
}

#[test]
fn group_by_key_pushed_down() {
    let f = fan("SELECT aid, count(*) FROM accounts GROUP BY aid ORDER BY aid LIMIT 3");
    assert!(matches!(f.merge, MergePlan::Stream(_)));
}

#[test]
fn grouped_having_order() {
    let f = fan("SELECT bid, count(*) FROM accounts GROUP BY bid HAVING count(*) > 2 ORDER BY bid");
    let MergePlan::Finish(fp) = &f.merge else {
        panic!()
    };
    assert!(
        fp.after
            .contains("GROUP BY __pgshard_v.__pgshard_c0 HAVING count(*) > 2 ORDER BY bid"),
        "{}",
        fp.after
    );
}

#[test]
fn distinct_and_distinct_on() {
    let f = fan("SELECT DISTINCT bid FROM accounts ORDER BY bid");
    assert!(matches!(f.merge, MergePlan::Finish(_)));
    let f = fan("SELECT DISTINCT ON (bid) bid, aid FROM accounts ORDER BY bid, abalance");
    let MergePlan::Finish(fp) = &f.merge else {
        panic!()
    };
    assert!(
        f.shard_sql.contains("ORDER BY bid, abalance"),
        "{}",
        f.shard_sql
    );
    assert!(
        fp.after
            .contains("ORDER BY __pgshard_v.__pgshard_c0, __pgshard_v.__pgshard_c2"),
        "{}",
        fp.after
    );
}

#[test]
fn colocated_joins_and_subqueries() {
    fan("SELECT * FROM users u JOIN events e ON e.user_id = u.id");
    fan("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id)");
    fan("SELECT * FROM users WHERE id IN (SELECT user_id FROM events WHERE x > 1)");
    fan("SELECT * FROM accounts a JOIN branches b ON b.bid = a.bid");
    fan("WITH big AS (SELECT aid FROM accounts WHERE abalance > 0) SELECT count(*) FROM big");
    fan("SELECT id, row_number() OVER (PARTITION BY id ORDER BY x) FROM users");
}

#[test]
fn refused() {
    for sql in [
        "SELECT * FROM users u JOIN events e ON e.x = u.id",
        "SELECT count(*) FROM (SELECT DISTINCT x FROM users) s",
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM events LIMIT 3)",
        "SELECT * FROM branches b LEFT JOIN accounts a ON a.bid = b.bid",
        "SELECT * FROM branches WHERE bid IN (SELECT bid FROM accounts)",
        "SELECT id, rank() OVER (ORDER BY x) FROM users",
        "SELECT id FROM users UNION SELECT user_id FROM events",
        "SELECT * FROM users ORDER BY name COLLATE \"de_DE\"",
        "SELECT my_agg(x) FROM users",
        "SELECT * FROM accounts a JOIN users u ON u.id = a.aid",
        "SELECT * FROM accounts LIMIT $1",
    ] {
        let m = unsup(sql);
        assert!(
            !m.contains("not yet supported")
                || sql.starts_with("UPDATE")
                || sql.starts_with("DELETE"),
            "{sql}: {m}"
        );
    }
}

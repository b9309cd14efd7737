//! UPDATE of the shard key (SPEC §5 rule 1, issue 15): a row whose new key falls in a
//! bucket another shard owns has to move there. The statement is planned as the
//! multi-shard write it would be without the key in its SET list, on every shard (a
//! row may move to any of them, so every shard takes part in the distributed
//! transaction), with the client's UPDATE run in place and `RETURNING ctid, <bucket
//! of the new key>` ahead of the client's own RETURNING list; the router then moves
//! the rows whose bucket is owned elsewhere ([`KeyMove`]) and hands the client its
//! columns, all in one distributed transaction committed with two-phase commit.

use crate::fanout::{FanoutWrite, KeyMove};
use crate::Route;
use pgshard_catalog::{hash::bucket_sql_expr, Catalog, KeyType};
use sqlparser::ast::{Statement, TableFactor};

/// The write target of an UPDATE that sets its shard key.
pub(crate) struct Target<'a> {
    pub table: &'a str,
    pub key: &'a str,
    pub key_type: KeyType,
}

/// The route of `st`, an UPDATE setting the shard key of `target`, given `route`, the
/// route the planner found for it otherwise (its WHERE clause decides where rows may
/// be; a refusal stays a refusal).
pub(crate) fn plan(st: &Statement, catalog: &Catalog, target: &Target<'_>, route: Route) -> Route {
    let refuse = |why: &str| {
        Route::Unsupported(format!(
            "UPDATE of shard key column {} of distributed table {}{why}",
            target.key, target.table
        ))
    };
    match &route {
        Route::Shard(_) | Route::ShardByParam { .. } => {}
        Route::FanoutWrite(w) if !w.replicated && w.shard_sql.is_empty() => {}
        Route::Unsupported(_) | Route::Error(_) => return route,
        _ => return refuse(""),
    }
    let Statement::Update { table, .. } = st else {
        return refuse("");
    };
    let TableFactor::Table {
        name, alias, args, ..
    } = &table.relation
    else {
        return refuse("");
    };
    if args.is_some() {
        return refuse("");
    }
    // Columns are qualified as the statement names the table.
    let qualifier = match alias {
        Some(a) => a.name.to_string(),
        None => name.to_string(),
    };
    let key = format!("{qualifier}.\"{}\"", target.key.replace('"', "\"\""));
    let bucket = bucket_sql_expr(&key, target.key_type, catalog.buckets);
    // The client's RETURNING list follows the row's address and bucket, which the
    // router takes off before the rows reach the client.
    let mut update = st.clone();
    let mut items = String::new();
    if let Statement::Update { returning, .. } = &mut update {
        if let Some(list) = returning.take() {
            for item in list {
                items.push_str(&format!(", {item}"));
            }
        }
    }
    let sql = format!("{update} RETURNING {qualifier}.ctid, {bucket}{items}");
    Route::FanoutWrite(FanoutWrite {
        tables: vec![target.table.to_owned()],
        shards: catalog.shard_ids(),
        sql,
        replicated: false,
        defaults: Vec::new(),
        shard_sql: Vec::new(),
        key_move: Some(KeyMove {
            table: quote_name(target.table),
            key: target.key.to_owned(),
            table_name: target.table.to_owned(),
            returning: matches!(
                st,
                Statement::Update {
                    returning: Some(_),
                    ..
                }
            ),
        }),
    })
}

/// Quotes a (possibly schema-qualified) folded name part by part.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use crate::tests::p;
    use crate::Route;

    #[test]
    fn key_updates_run_in_place_then_move() {
        for sql in [
            "UPDATE users SET id = id + 1000 WHERE id = 5",
            "UPDATE users SET id = 7, name = 'x' WHERE name = 'y'",
            "UPDATE users AS u SET id = u.id * 2",
        ] {
            let Route::FanoutWrite(w) = p(sql).route else {
                panic!("{sql}: {:?}", p(sql).route)
            };
            let m = w.key_move.expect("a key move");
            assert_eq!(m.table, "\"users\"");
            assert!(w.sql.contains(" RETURNING "), "{}", w.sql);
            assert!(w.sql.contains(".ctid, "), "{}", w.sql);
            assert_eq!(w.shards.len(), 3, "every shard takes part");
        }
        let Route::FanoutWrite(w) = p("UPDATE users AS u SET id = u.id * 2").route else {
            unreachable!()
        };
        assert!(w.sql.contains("RETURNING u.ctid, "), "{}", w.sql);
        let Route::FanoutWrite(w) =
            p("UPDATE users SET id = 1 WHERE id = 2 RETURNING *, id + 1 AS n").route
        else {
            unreachable!()
        };
        assert!(w.sql.ends_with("::int4, *, id + 1 AS n"), "{}", w.sql);
        assert!(w.key_move.is_some_and(|m| m.returning));
    }

    #[test]
    fn key_updates_that_cannot_move_exactly_stay_refused() {
        for (sql, why) in [
            ("UPDATE ONLY users* SET id = 1", ""),
            (
                "UPDATE users SET id = 1 WHERE id IN (SELECT aid FROM accounts WHERE aid > 3)",
                "",
            ),
        ] {
            match p(sql).route {
                Route::Unsupported(m) => assert!(m.contains(why), "{sql}: {m}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}

//! Data-modifying CTEs across shards (SPEC §5, issue 15): `WITH x AS (DELETE … RETURNING
//! …) SELECT … FROM x` where the write runs on several shards (an UPDATE/DELETE without
//! the key, a multi-row INSERT split by key, a reference-table write) or on another
//! shard than the rest of the query reads.
//!
//! PostgreSQL runs the CTE's write exactly once, and every part of the statement sees
//! one snapshot: the main query sees the write's RETURNING rows, not its effect on the
//! tables. The router reproduces that with the collect machinery ([`crate::collect`]):
//!
//! 1. the distributed tables the main query reads are collected into temporary tables
//!    of the finishing session first (so they do not see the write);
//! 2. the write runs as planned alone ([`crate::FanoutWrite`]: one distributed
//!    transaction, or the client's transaction block), each shard's part wrapped in
//!    `COPY (<write> RETURNING …) TO STDOUT (FORMAT binary)`, its rows streamed into
//!    the temporary table [`CTE_TABLE`], created beforehand as
//!    `CREATE TEMP TABLE … AS SELECT <RETURNING list> FROM <write's tables> WITH NO
//!    DATA`, so its columns are named and typed as PostgreSQL names and types the
//!    CTE's (typmods, collations and domains included);
//! 3. the main query runs on the finishing session with the CTE's body replaced by
//!    `SELECT * FROM pg_temp.pgshard_cte`; its answer is held until the write commits
//!    (two-phase commit), and an error anywhere rolls the write back.
//!
//! Refused (0A000, naming the construct): WITH RECURSIVE with a write, several writes
//! in one statement, writes nested below the top-level WITH, MERGE, a write reading
//! another WITH query, an UPDATE of the shard key in WITH, parameters, and a main
//! statement that is itself a write.

use crate::collect::{CollectPlan, Facts};
use crate::parse::{fold_ident, name_parts};
use crate::{FanoutWrite, Route};
use pgshard_catalog::Catalog;
use sqlparser::ast::{
    Expr, FromTable, Query, SetExpr, Statement, TableObject, UpdateTableFromKind, Value, Visit,
    Visitor,
};
use std::ops::ControlFlow;

/// The temporary table of the finishing session that receives the CTE's RETURNING rows.
pub const CTE_TABLE: &str = "pgshard_cte";

/// The write of a data-modifying CTE, run before the main query (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CteWrite {
    /// The CTE's name, folded.
    pub name: String,
    /// The write as its shards run it: `COPY (…) TO STDOUT (FORMAT binary)` around each
    /// shard's statement when it has a RETURNING list, else the statement as planned.
    pub write: FanoutWrite,
    /// Creates [`CTE_TABLE`] shaped like the RETURNING list (`None`: no RETURNING).
    pub create: Option<String>,
}

impl CteWrite {
    /// The statement the finishing session runs to receive the RETURNING rows.
    pub fn copy_in(&self) -> String {
        format!("COPY pg_temp.{CTE_TABLE} FROM STDIN (FORMAT binary)")
    }
}

/// True if `q`'s own WITH list holds a data-modifying statement.
pub(crate) fn has_write(q: &Query) -> bool {
    q.with
        .as_ref()
        .is_some_and(|w| w.cte_tables.iter().any(|c| write_of(&c.query).is_some()))
}

/// The refusal for an UPDATE or DELETE reading a data-modifying WITH query that does
/// not run on one shard (an INSERT is staged, see [`plan`]).
pub(crate) fn write_reading_write(st: &Statement) -> Option<String> {
    let Statement::Query(q) = st else {
        return None;
    };
    let body = write_of(q)?;
    (has_write(q) && !matches!(body, Statement::Insert(_))).then(|| {
        "an UPDATE or DELETE reading a data-modifying WITH query across shards (data-modifying statement in WITH across shards)".to_owned()
    })
}

/// The write a CTE's query is, if it is one.
fn write_of(q: &Query) -> Option<&Statement> {
    match q.body.as_ref() {
        SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) | SetExpr::Merge(st) => {
            Some(st)
        }
        _ => None,
    }
}

/// The data-modifying statements (INSERT, UPDATE, DELETE, MERGE) anywhere in `node`:
/// each is visited once as a statement, in a WITH query's body or at the top.
pub(crate) fn count_writes<T: Visit>(node: &T) -> usize {
    struct Writes(usize);
    impl Visitor for Writes {
        type Break = ();
        fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
            if matches!(
                s,
                Statement::Insert(_)
                    | Statement::Update { .. }
                    | Statement::Delete(_)
                    | Statement::Merge { .. }
            ) {
                self.0 += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut w = Writes(0);
    let _ = node.visit(&mut w);
    w.0
}

fn has_placeholder<T: Visit>(node: &T) -> bool {
    struct P;
    impl Visitor for P {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = e {
                if matches!(v.value, Value::Placeholder(_)) {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    node.visit(&mut P).is_break()
}

/// Single-part relation names `node` reads (candidates for WITH query names).
fn bare_relations<T: Visit>(node: &T) -> Vec<String> {
    let mut out = Vec::new();
    let _ = sqlparser::ast::visit_relations(node, |n| {
        let parts = name_parts(n);
        if parts.len() == 1 {
            out.push(parts[0].clone());
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The collect plan of query `q`, whose WITH list holds a data-modifying statement, that
/// the fan-out planner refused with `facts.reason`; `Err` with the refusal otherwise.
pub(crate) fn plan(q: &Query, catalog: &Catalog, facts: &Facts<'_>) -> Result<CollectPlan, String> {
    let refuse = |why: &str| {
        Err(format!(
            "{why} (data-modifying statement in WITH across shards)"
        ))
    };
    let Some(with) = &q.with else {
        return Err(facts.reason.to_owned());
    };
    if with.recursive {
        return refuse("WITH RECURSIVE with a data-modifying statement");
    }
    let writes: Vec<usize> = (0..with.cte_tables.len())
        .filter(|&i| write_of(&with.cte_tables[i].query).is_some())
        .collect();
    let [at] = writes.as_slice() else {
        return refuse("several data-modifying statements in one WITH");
    };
    let cte = &with.cte_tables[*at];
    let name = fold_ident(&cte.alias.name);
    let Some(write) = write_of(&cte.query) else {
        return Err(facts.reason.to_owned());
    };
    if matches!(write, Statement::Merge { .. }) {
        return refuse("MERGE in WITH");
    }
    // The CTE's write, and the main statement if it is one (an INSERT, below).
    let expected = 1 + usize::from(write_of(q).is_some());
    if count_writes(q) != expected || cte.query.with.is_some() {
        return refuse("a data-modifying statement nested in a WITH query");
    }
    if has_placeholder(q) {
        return refuse("parameters in a statement with a data-modifying WITH");
    }
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|c| fold_ident(&c.alias.name))
        .collect();
    if bare_relations(write).iter().any(|r| names.contains(r)) {
        return refuse("a data-modifying WITH query reading another WITH query");
    }
    let text = write.to_string();
    let mut fw = match crate::plan(&text, catalog).route {
        Route::FanoutWrite(w) if w.key_move.is_none() => w,
        Route::FanoutWrite(_) => return refuse("UPDATE of the shard key in WITH"),
        Route::Shard(s) => FanoutWrite {
            tables: written_table(write).into_iter().collect(),
            shards: vec![s],
            sql: text.clone(),
            replicated: false,
            defaults: Vec::new(),
            shard_sql: Vec::new(),
            key_move: None,
        },
        Route::Unsupported(m) => return Err(m),
        _ => return refuse("a write that does not run as one statement per shard"),
    };
    let mut main = q.clone();
    let create = match returning_shape(write)? {
        Some(shape) => {
            let wrap = |s: &str| format!("COPY ({s}) TO STDOUT (FORMAT binary)");
            fw.sql = wrap(&fw.sql);
            fw.shard_sql = fw.shard_sql.iter().map(|s| wrap(s)).collect();
            let body = crate::parse::parse_statement(&format!("SELECT * FROM pg_temp.{CTE_TABLE}"))
                .ok()
                .and_then(|mut sts| match sts.pop() {
                    Some(Statement::Query(q)) => Some(q),
                    _ => None,
                });
            let (Some(body), Some(w)) = (body, main.with.as_mut()) else {
                return Err(facts.reason.to_owned());
            };
            w.cte_tables[*at].query = body;
            Some(format!(
                "CREATE TEMP TABLE {CTE_TABLE} AS {shape} WITH NO DATA"
            ))
        }
        None => {
            // PostgreSQL runs it all the same; naming it is an error (0A000 there too).
            if let Some(w) = main.with.as_mut() {
                w.cte_tables.remove(*at);
                if w.cte_tables.is_empty() {
                    main.with = None;
                }
            }
            if bare_relations(&main).contains(&name) {
                return Err(format!(
                    "WITH query \"{name}\" does not have a RETURNING clause"
                ));
            }
            None
        }
    };
    let cte_write = CteWrite {
        name,
        write: fw,
        create,
    };
    if let SetExpr::Insert(Statement::Insert(ins)) = main.body.as_ref() {
        // `WITH d AS (…) INSERT INTO t (cols) SELECT … FROM d`: the INSERT is staged
        // (`crate::collect::plan_insert`) with the WITH list moved onto its source,
        // and its rows go to their shards inside the write's transaction.
        let mut ins = ins.clone();
        let Some(source) = ins.source.as_mut() else {
            return Err(facts.reason.to_owned());
        };
        if source.with.is_some() {
            return refuse("a WITH list on the source of an INSERT that has a data-modifying WITH");
        }
        source.with = main.with.clone();
        let st = Statement::Insert(ins);
        let text = st.to_string();
        let mut c = crate::collect::plan_insert(&st, &text, catalog, facts.clone())
            .map_err(|m| format!("{m} (an INSERT reading a data-modifying WITH query)"))?;
        c.write = Some(Box::new(cte_write));
        return Ok(c);
    }
    if write_of(&main).is_some() {
        return refuse("an UPDATE or DELETE reading a data-modifying WITH query");
    }
    let (inputs, main) = crate::collect::rewrite_query(&main, catalog, facts)?;
    let mut ctes = Vec::new();
    if let Some(w) = &main.with {
        ctes.extend(w.cte_tables.iter().map(|c| fold_ident(&c.alias.name)));
    }
    let mut reads_other = false;
    let _ = sqlparser::ast::visit_relations(&main, |n| {
        let parts = name_parts(n);
        let temp = parts.first().is_some_and(|p| p == "pg_temp");
        let cte = parts.len() == 1 && ctes.contains(&parts[0]);
        if !temp && !cte {
            reads_other = true;
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(CollectPlan {
        inputs,
        sql: Statement::Query(Box::new(main)).to_string(),
        finish: catalog.local_shard,
        reads_other: reads_other || facts.reads_other,
        reason: facts.reason.to_owned(),
        insert: None,
        write: Some(Box::new(cte_write)),
    })
}

/// The table a write writes, folded (for messages).
fn written_table(write: &Statement) -> Option<String> {
    let name = match write {
        Statement::Insert(ins) => match &ins.table {
            TableObject::TableName(n) => n.clone(),
            _ => return None,
        },
        Statement::Update { table, .. } => match &table.relation {
            sqlparser::ast::TableFactor::Table { name, .. } => name.clone(),
            _ => return None,
        },
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(ts) | FromTable::WithoutKeyword(ts)) = &d.from;
            match &ts.first()?.relation {
                sqlparser::ast::TableFactor::Table { name, .. } => name.clone(),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(name_parts(&name).join("."))
}

/// `SELECT <RETURNING list> FROM <the write's tables>` for a write with a RETURNING
/// list: run `WITH NO DATA`, it gives a table whose columns PostgreSQL names and types
/// as it names and types the write's RETURNING columns. `Ok(None)`: no RETURNING.
fn returning_shape(write: &Statement) -> Result<Option<String>, String> {
    let returning = match write {
        Statement::Insert(ins) => ins.returning.is_some(),
        Statement::Update { returning, .. } => returning.is_some(),
        Statement::Delete(d) => d.returning.is_some(),
        _ => false,
    };
    if !returning {
        return Ok(None);
    }
    shape(write).map(Some).ok_or_else(|| {
        "a RETURNING list pgshard cannot type (data-modifying statement in WITH across shards)"
            .to_owned()
    })
}

fn shape(write: &Statement) -> Option<String> {
    let list = |items: &[sqlparser::ast::SelectItem]| {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tables = |ts: &[sqlparser::ast::TableWithJoins]| {
        ts.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match write {
        Statement::Insert(ins) => {
            let items = ins.returning.as_ref()?;
            let TableObject::TableName(t) = &ins.table else {
                return None;
            };
            let alias = ins
                .table_alias
                .as_ref()
                .map_or(String::new(), |a| format!(" AS {a}"));
            Some(format!("SELECT {} FROM {t}{alias}", list(items)))
        }
        Statement::Update {
            table,
            from,
            returning,
            ..
        } => {
            let items = returning.as_ref()?;
            let mut from_list = table.to_string();
            if let Some(UpdateTableFromKind::AfterSet(ts) | UpdateTableFromKind::BeforeSet(ts)) =
                from
            {
                from_list.push_str(", ");
                from_list.push_str(&tables(ts));
            }
            Some(format!("SELECT {} FROM {from_list}", list(items)))
        }
        Statement::Delete(d) => {
            let items = d.returning.as_ref()?;
            let (FromTable::WithFromKeyword(ts) | FromTable::WithoutKeyword(ts)) = &d.from;
            let mut from_list = tables(ts);
            if let Some(using) = &d.using {
                from_list.push_str(", ");
                from_list.push_str(&tables(using));
            }
            Some(format!("SELECT {} FROM {from_list}", list(items)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::p;
    use crate::{CollectPlan, MergePlan, Route};

    fn planned(sql: &str) -> CollectPlan {
        match p(sql).route {
            Route::Fanout(f) => match f.merge {
                MergePlan::Collect(c) if c.write.is_some() => *c,
                other => panic!("{sql}: not a data-modifying WITH plan: {other:?}"),
            },
            other => panic!("{sql}: not collected: {other:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match p(sql).route {
            Route::Unsupported(m) => m,
            other => panic!("{sql}: not refused: {other:?}"),
        }
    }

    #[test]
    fn a_multi_shard_write_feeds_the_main_query() {
        let c = planned("WITH d AS (DELETE FROM accounts WHERE abalance < 0 RETURNING aid, abalance) SELECT count(*), sum(abalance) FROM d");
        let w = c.write.as_ref().expect("a write");
        assert_eq!(w.name, "d");
        assert_eq!(w.write.shards.len(), 3);
        assert_eq!(
            w.write.sql,
            "COPY (DELETE FROM accounts WHERE abalance < 0 RETURNING aid, abalance) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            w.create.as_deref(),
            Some(
                "CREATE TEMP TABLE pgshard_cte AS SELECT aid, abalance FROM accounts WITH NO DATA"
            )
        );
        assert_eq!(
            c.sql,
            "WITH d AS (SELECT * FROM pg_temp.pgshard_cte) SELECT count(*), sum(abalance) FROM d"
        );
        assert!(c.inputs.is_empty());
        assert!(!c.reads_other);
    }

    #[test]
    fn shapes_follow_the_write() {
        let c = planned("WITH u AS (UPDATE accounts a SET abalance = 0 FROM branches b WHERE a.bid = b.bid RETURNING a.aid, b.*) SELECT * FROM u");
        assert_eq!(
            c.write.as_ref().and_then(|w| w.create.clone()).as_deref(),
            Some("CREATE TEMP TABLE pgshard_cte AS SELECT a.aid, b.* FROM accounts AS a, branches AS b WITH NO DATA")
        );
        let c = planned("WITH i AS (INSERT INTO users AS x (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c') RETURNING x.id) SELECT * FROM i ORDER BY id");
        let w = c.write.as_ref().expect("a write");
        assert_eq!(w.write.shard_sql.len(), w.write.shards.len());
        assert!(w
            .write
            .shard_sql
            .iter()
            .all(|s| s.starts_with("COPY (INSERT")));
        assert_eq!(
            w.create.as_deref(),
            Some("CREATE TEMP TABLE pgshard_cte AS SELECT x.id FROM users AS x WITH NO DATA")
        );
        // Other distributed tables the main query reads are collected (before the write).
        let c = planned("WITH d AS (DELETE FROM users WHERE id > 5 RETURNING id) SELECT count(*) FROM d JOIN events e ON e.user_id = d.id");
        assert_eq!(c.inputs.len(), 1);
        // Without RETURNING: run, and gone from the main query.
        let c = planned("WITH d AS (DELETE FROM users WHERE name = 'x') SELECT 1");
        assert_eq!(c.write.as_ref().and_then(|w| w.create.clone()), None);
        assert_eq!(c.sql, "SELECT 1");
    }

    #[test]
    fn an_insert_reading_the_write_is_staged() {
        let c = planned("WITH d AS (DELETE FROM users WHERE id > 5 RETURNING id, name) INSERT INTO events (user_id, kind) SELECT id, name FROM d");
        let ins = c.insert.as_ref().expect("a staged insert");
        assert!(c.sql.starts_with("INSERT INTO pg_temp.pgshard_ins (user_id, kind) WITH d AS (SELECT * FROM pg_temp.pgshard_cte) SELECT id, name FROM d"), "{}", c.sql);
        let create = c.create_sql();
        assert!(
            create.contains("CREATE TEMP TABLE pgshard_ins")
                && create.contains("CREATE TEMP TABLE pgshard_cte"),
            "{create}"
        );
        let out = ins.copy_out_for(crate::tests::LOCAL, &crate::tests::catalog());
        assert!(out.starts_with("COPY (SELECT * FROM pg_temp.pgshard_ins WHERE (((hashint4extended((\"user_id\")::int4"), "{out}");
        assert!(out.contains("= ANY('{0,3,6,9,"), "{out}");
        assert!(
            out.ends_with(",1020,1023}'::int4[])) TO STDOUT (FORMAT binary)"),
            "{out}"
        );
        assert!(ins.null_key_sql().is_some());
    }

    #[test]
    fn what_stays_refused() {
        for (sql, why) in [
            ("WITH RECURSIVE d AS (DELETE FROM users RETURNING id) SELECT * FROM d", "WITH RECURSIVE"),
            ("WITH a AS (DELETE FROM users RETURNING id), b AS (DELETE FROM events RETURNING user_id) SELECT * FROM a, b", "several"),
            ("WITH d AS (DELETE FROM users RETURNING id) SELECT * FROM d WHERE id = (SELECT id FROM (WITH e AS (DELETE FROM events RETURNING user_id AS id) SELECT id FROM e) s)", "nested"),
            ("WITH s AS (SELECT 1 AS id), d AS (DELETE FROM users WHERE id IN (SELECT id FROM s) RETURNING id) SELECT * FROM d", "another WITH query"),
            ("WITH d AS (UPDATE users SET id = id + 1 RETURNING id) SELECT * FROM d", "shard key"),
            ("WITH d AS (DELETE FROM users WHERE name = $1 RETURNING id) SELECT * FROM d", "parameters"),
            ("WITH d AS (DELETE FROM users) SELECT * FROM d", "does not have a RETURNING clause"),
            // PostgreSQL refuses these too (the write must not run).
            ("DECLARE c CURSOR FOR WITH d AS (DELETE FROM users WHERE name = 'x' RETURNING id) SELECT * FROM d", "DECLARE CURSOR"),
            ("COPY (WITH d AS (DELETE FROM users WHERE name = 'x' RETURNING id) SELECT * FROM d) TO STDOUT", "COPY (query)"),
            ("EXPLAIN WITH d AS (DELETE FROM users WHERE name = 'x' RETURNING id) SELECT * FROM d", "EXPLAIN"),
            ("CREATE TABLE x AS WITH d AS (DELETE FROM users WHERE name = 'x' RETURNING id) SELECT * FROM d", "data-modifying"),
            ("WITH d AS (DELETE FROM users RETURNING id) UPDATE events SET kind = 'x' FROM d WHERE d.id = events.user_id", "reading a data-modifying WITH query"),
        ] {
            let m = refused(sql);
            assert!(m.contains(why), "{sql}: {m}");
        }
    }
}

//! Reads that cannot be pushed down, answered by collecting (SPEC §5 rule 3, issue 15).
//!
//! A read the fan-out planner refuses (a join not on the shard key, a subquery that
//! needs rows from every shard, a window not partitioned by the key, a set operation
//! across shards, ROLLUP, `percentile_*`, an ORDER BY the merge cannot compare…) is
//! still exact if one PostgreSQL sees every row: the router copies each distributed
//! table it reads from every shard (`COPY … TO STDOUT (FORMAT binary)`, streamed) into
//! a temporary table of one session on the finishing shard (`CREATE TEMP TABLE … (LIKE
//! t)`, `COPY … FROM STDIN`), and PostgreSQL runs the statement there, rewritten so each
//! reference to a distributed table names its temporary copy under the original name
//! or alias. Result types, order, NULL handling and text output are PostgreSQL's own.
//! This is Citus's "collect into intermediate results" in its simplest form: whole
//! tables are collected (no filter or projection push-down yet).
//!
//! The finishing shard is the local shard: reference tables are on every shard, and
//! local tables and functions live there. What the copy cannot reproduce is refused:
//! system columns (`ctid`, `tableoid`, `xmin`… differ in a copy), whole-row references
//! (their type would be the temporary table's row type), locking clauses, writes (a
//! data-modifying WITH is planned by [`crate::ctewrite`]), user
//! functions (one could read a distributed table, and see only the local shard's
//! rows), and a CTE named like a distributed table.

use crate::classify::{classify_table, is_portable_function, TableClass};
use crate::parse::{fold_ident, name_parts};
use pgshard_catalog::{Catalog, ShardId};
use sqlparser::ast::{
    Expr, Ident, ObjectName, Query, SetExpr, Statement, TableAlias, TableFactor, Visit, VisitMut,
    Visitor, VisitorMut,
};
use std::ops::ControlFlow;

/// How the router answers a read by collecting its distributed tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectPlan {
    /// One per distinct distributed table the statement reads.
    pub inputs: Vec<CollectInput>,
    /// The statement, rewritten to read the temporary tables (`$n` parameters mean
    /// what they mean in the client's statement).
    pub sql: String,
    /// The shard whose session holds the temporary tables and runs `sql`.
    pub finish: ShardId,
    /// The statement also reads reference, local or catalog relations. Inside a
    /// transaction block the finishing session (outside the transaction) would not see
    /// the transaction's writes to those: refused there.
    pub reads_other: bool,
    /// Why it could not be pushed down (the fan-out planner's refusal).
    pub reason: String,
    /// For `INSERT INTO distributed … SELECT/VALUES`: `sql` fills a staging table
    /// instead of answering, and its rows then go to their shards.
    pub insert: Option<InsertStage>,
    /// For a statement with a data-modifying CTE ([`crate::ctewrite`]): the write, run
    /// after the inputs are collected and before `sql`, its RETURNING rows in
    /// [`crate::ctewrite::CTE_TABLE`].
    pub write: Option<Box<crate::ctewrite::CteWrite>>,
}

/// An INSERT into a distributed table whose rows the router cannot route from the
/// statement's text (a query as source, a key that is an expression): PostgreSQL
/// computes the rows (with the INSERT's own coercions to the column types) into a
/// staging table on the finishing session, whose rows are then copied to their
/// shards as a COPY into the table is (split by key, one distributed transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertStage {
    /// Creates the staging table: the INSERT's columns, typed as the table's.
    pub create: String,
    /// The staging table's rows out, for the COPY into the distributed table.
    pub copy_out: String,
    /// `COPY table (columns) FROM STDIN (FORMAT binary)` as planned for the shards.
    pub copy: crate::CopyPlan,
}

impl InsertStage {
    /// The staged rows `shard` gets, as a binary COPY: those whose key's bucket it owns
    /// in `catalog` (all of them for a reference table). A NULL key has no bucket: the
    /// caller refuses such rows first ([`Self::null_key_sql`]).
    pub fn copy_out_for(&self, shard: ShardId, catalog: &Catalog) -> String {
        let Some(key) = &self.copy.key else {
            return self.copy_out.clone();
        };
        let column = format!("\"{}\"", key.column.replace('"', "\"\""));
        let bucket = pgshard_catalog::hash::bucket_sql_expr(&column, key.key_type, catalog.buckets);
        let owned: Vec<String> = catalog
            .bucket_map
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == shard)
            .map(|(b, _)| b.to_string())
            .collect();
        format!(
            "COPY (SELECT * FROM pg_temp.{STAGE_TABLE} WHERE {bucket} = ANY('{{{}}}'::int4[])) TO STDOUT (FORMAT binary)",
            owned.join(",")
        )
    }

    /// One row, `true` if a staged row has a NULL shard key (`None`: a reference table).
    pub fn null_key_sql(&self) -> Option<String> {
        let key = self.copy.key.as_ref()?;
        let column = format!("\"{}\"", key.column.replace('"', "\"\""));
        Some(format!(
            "SELECT EXISTS (SELECT FROM pg_temp.{STAGE_TABLE} WHERE {column} IS NULL)"
        ))
    }
}

/// The staging table of an [`InsertStage`].
pub const STAGE_TABLE: &str = "pgshard_ins";

/// One distributed table copied from every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectInput {
    /// The declared table name, as the catalog has it.
    pub table: String,
    /// The temporary table's name (unqualified; it lives in `pg_temp`).
    pub temp: String,
    /// Shards that copy out another text while a bucket move is under way (it skips the
    /// rows they hold but do not own, see [`crate::moving`]); use [`Self::copy_out_for`].
    pub moving: Vec<(ShardId, String)>,
}

impl CollectInput {
    /// The table's name quoted for SQL.
    pub fn quoted_table(&self) -> String {
        quote_name(&self.table)
    }

    /// The statement each shard runs: its rows in PostgreSQL's binary COPY format.
    pub fn copy_out(&self) -> String {
        format!("COPY {} TO STDOUT (FORMAT binary)", self.quoted_table())
    }

    /// The statement `shard` runs (see [`Self::moving`]).
    pub fn copy_out_for(&self, shard: ShardId) -> String {
        self.moving
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or_else(|| self.copy_out(), |(_, sql)| sql.clone())
    }

    /// The statement the finishing session runs to receive the rows.
    pub fn copy_in(&self) -> String {
        format!("COPY pg_temp.{} FROM STDIN (FORMAT binary)", self.temp)
    }
}

impl CollectPlan {
    /// SQL creating the temporary tables (empty, shaped like the distributed tables).
    pub fn create_sql(&self) -> String {
        let mut sql = self.drop_sql();
        if let Some(i) = &self.insert {
            sql.push_str("; ");
            sql.push_str(&i.create);
        }
        if let Some(create) = self.write.as_ref().and_then(|w| w.create.as_ref()) {
            sql.push_str("; ");
            sql.push_str(create);
        }
        for i in &self.inputs {
            sql.push_str(&format!(
                "; CREATE TEMP TABLE {} (LIKE {})",
                i.temp,
                i.quoted_table()
            ));
        }
        sql
    }

    /// SQL dropping the temporary tables (before the session returns to its pool).
    pub fn drop_sql(&self) -> String {
        let mut names: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("pg_temp.{}", i.temp))
            .collect();
        if self.insert.is_some() {
            names.push(format!("pg_temp.{STAGE_TABLE}"));
        }
        if self.write.is_some() {
            names.push(format!("pg_temp.{}", crate::ctewrite::CTE_TABLE));
        }
        format!("DROP TABLE IF EXISTS {}", names.join(", "))
    }

    /// SQL giving the planner statistics on the collected rows (`None`: none collected).
    pub fn analyze_sql(&self) -> Option<String> {
        if self.inputs.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("pg_temp.{}", i.temp))
            .collect();
        Some(format!("ANALYZE {}", names.join(", ")))
    }
}

/// The query the router runs inside a client's transaction, on its backend on the
/// finishing shard, before a collection there: the (1-based) position of the first of
/// `tables` (declared names) on which that transaction holds ACCESS EXCLUSIVE (taken by
/// TRUNCATE, ALTER TABLE, LOCK TABLE …), no row if none. The finishing session works
/// outside the transaction and needs ACCESS SHARE on the tables it copies (`LIKE t`,
/// `AS SELECT … FROM t`): it would wait for the transaction's own lock while the
/// transaction waits for the router.
pub fn exclusive_lock_sql(tables: &[&str]) -> String {
    let names: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "E'{}'",
                quote_name(t).replace('\\', "\\\\").replace('\'', "''")
            )
        })
        .collect();
    format!(
        "SELECT x.i FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS x(n, i) \
         WHERE EXISTS (SELECT FROM pg_catalog.pg_locks l \
         WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' \
         AND l.mode = 'AccessExclusiveLock' AND l.granted \
         AND l.relation = pg_catalog.to_regclass(x.n)) ORDER BY x.i LIMIT 1",
        names.join(", ")
    )
}

/// Quotes a (possibly schema-qualified) folded name part by part.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Functions that are not on the fan-out planner's list of portable functions but are
/// built into PostgreSQL (so they cannot read a distributed table behind the router's
/// back): a collected statement may call them.
const BUILT_IN: &[&str] = &[
    "row",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "grouping",
];

/// What the walk of a statement found that decides whether it may be collected.
#[derive(Clone)]
pub(crate) struct Facts<'a> {
    pub reason: &'a str,
    pub local_dependent: Option<&'a str>,
    pub reads_other: bool,
}

/// The collect plan for read `st`, which the fan-out planner refused with
/// `facts.reason`; `Err` with the refusal to keep when collecting could not be exact.
pub(crate) fn plan(
    st: &Statement,
    catalog: &Catalog,
    facts: Facts<'_>,
) -> Result<CollectPlan, String> {
    let reason = facts.reason;
    let Statement::Query(q) = st else {
        return Err(reason.to_owned());
    };
    if crate::ctewrite::has_write(q) {
        return crate::ctewrite::plan(q, catalog, &facts);
    }
    let (inputs, q) = rewrite_query(q, catalog, &facts)?;
    if inputs.is_empty() {
        return Err(reason.to_owned());
    }
    Ok(CollectPlan {
        inputs,
        sql: Statement::Query(Box::new(q)).to_string(),
        finish: catalog.local_shard,
        reads_other: facts.reads_other,
        reason: reason.to_owned(),
        insert: None,
        write: None,
    })
}

/// The collect plan for `INSERT INTO distributed (columns) <source>`, or `INSERT INTO
/// reference (columns) <source>` reading distributed tables, that the planner refused
/// with `facts.reason` (see [`InsertStage`]); `Err` with the refusal to keep.
pub(crate) fn plan_insert(
    st: &Statement,
    text: &str,
    catalog: &Catalog,
    facts: Facts<'_>,
) -> Result<CollectPlan, String> {
    let reason = facts.reason;
    let keep = |why: &str| Err(format!("{reason}; it cannot be collected either: {why}"));
    let Statement::Insert(ins) = st else {
        return Err(reason.to_owned());
    };
    let sqlparser::ast::TableObject::TableName(name) = &ins.table else {
        return Err(reason.to_owned());
    };
    // Into a distributed table (rows split by key) or a reference table (every row to
    // every shard: computed once here, so each shard gets the same values).
    let (key, table) = match classify_table(catalog, &name_parts(name)) {
        (TableClass::Distributed { key, .. }, table) => (Some(key), table),
        (TableClass::Reference(_), table) => (None, table),
        _ => return Err(reason.to_owned()),
    };
    let Some(source) = &ins.source else {
        return Err(reason.to_owned());
    };
    if ins.on.is_some() {
        return keep("ON CONFLICT");
    }
    if ins.returning.is_some() {
        return keep("RETURNING");
    }
    let columns: Vec<String> = ins.columns.iter().map(fold_ident).collect();
    let names_key = match key {
        Some(key) => columns.iter().any(|c| c == key),
        None => !columns.is_empty(),
    };
    if !names_key {
        return Err(reason.to_owned());
    }
    // `DEFAULT` in VALUES would take the staging table's default (none).
    if crate::parse::tokens(text)
        .iter()
        .any(|t| t.tok.is_word("default"))
    {
        return keep("DEFAULT in the inserted values");
    }
    let (inputs, source) = rewrite_query(source, catalog, &facts)?;
    let quoted_cols: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect();
    let cols = quoted_cols.join(", ");
    let target = quote_name(&table);
    let copy_sql = format!("COPY {target} ({cols}) FROM STDIN (FORMAT binary)");
    let copy = match crate::plan(&copy_sql, catalog).route {
        crate::Route::Copy(c) => c,
        _ => return keep("its rows cannot be copied to the table"),
    };
    let mut staged = ins.clone();
    staged.table = sqlparser::ast::TableObject::TableName(ObjectName::from(vec![
        Ident::new("pg_temp"),
        Ident::new(STAGE_TABLE),
    ]));
    staged.table_alias = None;
    staged.source = Some(Box::new(source));
    Ok(CollectPlan {
        inputs,
        sql: Statement::Insert(staged).to_string(),
        finish: catalog.local_shard,
        reads_other: facts.reads_other,
        reason: reason.to_owned(),
        insert: Some(InsertStage {
            create: format!(
                "CREATE TEMP TABLE {STAGE_TABLE} AS SELECT {cols} FROM {target} WITH NO DATA"
            ),
            copy_out: format!("COPY pg_temp.{STAGE_TABLE} TO STDOUT (FORMAT binary)"),
            copy,
        }),
        write: None,
    })
}

/// The collect plan for `CREATE TABLE t AS <query>` or `SELECT … INTO t` reading
/// distributed tables, refused with `reason`: the new (local) table is created on the
/// finishing shard, the local shard, from the collected rows.
pub(crate) fn plan_into(
    st: &Statement,
    catalog: &Catalog,
    reason: &str,
) -> Result<CollectPlan, String> {
    let keep = |why: &str| Err(format!("{reason}; it cannot be collected either: {why}"));
    let facts = Facts {
        reason,
        local_dependent: None,
        reads_other: true,
    };
    let temp_name = |n: &ObjectName| {
        name_parts(n)
            .first()
            .is_some_and(|p| p.starts_with("pg_temp"))
    };
    let (inputs, sql) = match st {
        Statement::CreateTable(ct) => {
            let Some(q) = &ct.query else {
                return Err(reason.to_owned());
            };
            if ct.temporary || temp_name(&ct.name) {
                return keep(
                    "a temporary table would be created in the router's session, not the client's",
                );
            }
            if classify_table(catalog, &name_parts(&ct.name))
                .0
                .is_declared()
            {
                return Err(reason.to_owned());
            }
            let (inputs, q) = rewrite_query(q, catalog, &facts)?;
            let mut ct = ct.clone();
            ct.query = Some(Box::new(q));
            (inputs, Statement::CreateTable(ct).to_string())
        }
        Statement::Query(q) => {
            let mut q = (**q).clone();
            let SetExpr::Select(s) = q.body.as_mut() else {
                return Err(reason.to_owned());
            };
            let Some(into) = s.into.take() else {
                return Err(reason.to_owned());
            };
            if into.temporary || temp_name(&into.name) {
                return keep(
                    "a temporary table would be created in the router's session, not the client's",
                );
            }
            if classify_table(catalog, &name_parts(&into.name))
                .0
                .is_declared()
            {
                return Err(reason.to_owned());
            }
            let (inputs, mut q) = rewrite_query(&q, catalog, &facts)?;
            if let SetExpr::Select(s) = q.body.as_mut() {
                s.into = Some(into);
            }
            (inputs, Statement::Query(Box::new(q)).to_string())
        }
        _ => return Err(reason.to_owned()),
    };
    if inputs.is_empty() {
        return Err(reason.to_owned());
    }
    Ok(CollectPlan {
        inputs,
        sql,
        finish: catalog.local_shard,
        reads_other: true,
        reason: reason.to_owned(),
        insert: None,
        write: None,
    })
}

/// Query `q` with every distributed table it reads replaced by its copy, and the
/// copies to make; `Err` with the refusal to keep when that would not be exact.
pub(crate) fn rewrite_query(
    q: &Query,
    catalog: &Catalog,
    facts: &Facts<'_>,
) -> Result<(Vec<CollectInput>, Query), String> {
    let reason = facts.reason;
    if let Some(f) = facts.local_dependent {
        let name = f.rsplit('.').next().unwrap_or(f).to_lowercase();
        if !BUILT_IN.contains(&name.as_str()) {
            return Err(format!(
                "{reason}; it cannot be collected either: function or type {f} (only built-in ones are known not to read distributed tables)"
            ));
        }
    }
    // Two passes: aliases are declared in FROM, after the select list that uses them.
    let mut check = Check {
        catalog,
        ctes: Vec::new(),
        aliases: Vec::new(),
        refusal: None,
    };
    let _ = q.visit(&mut check);
    check.refusal = None;
    check.ctes.clear();
    let _ = q.visit(&mut check);
    if let Some(r) = check.refusal {
        return Err(format!("{reason}; it cannot be collected either: {r}"));
    }
    if check.ctes.iter().any(|c| {
        matches!(
            classify_table(catalog, std::slice::from_ref(c)).0,
            TableClass::Distributed { .. }
        )
    }) {
        return Err(format!(
            "{reason}; it cannot be collected either: a CTE is named like a distributed table"
        ));
    }
    let mut q: Query = q.clone();
    let mut rewrite = Rewrite {
        catalog,
        ctes: check.ctes,
        inputs: Vec::new(),
    };
    let _ = VisitMut::visit(&mut q, &mut rewrite);
    // Every reference to a distributed table must now name a copy.
    let mut left = None;
    let _ = sqlparser::ast::visit_relations(&q, |n| {
        let parts = name_parts(n);
        if matches!(
            classify_table(catalog, &parts).0,
            TableClass::Distributed { .. }
        ) && !rewrite.ctes.contains(&parts.join("."))
        {
            left = Some(parts.join("."));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Some(t) = left {
        return Err(format!(
            "{reason}; it cannot be collected either: a reference to distributed table {t} in a construct pgshard does not rewrite"
        ));
    }
    Ok((rewrite.inputs, q))
}

/// The first construct a collected statement could not reproduce exactly.
struct Check<'c> {
    catalog: &'c Catalog,
    ctes: Vec<String>,
    /// Names distributed tables are referred to by (alias or table name).
    aliases: Vec<String>,
    refusal: Option<String>,
}

const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

impl Visitor for Check<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(w) = &q.with {
            for c in &w.cte_tables {
                self.ctes.push(fold_ident(&c.alias.name));
            }
        }
        if !q.locks.is_empty() {
            self.refusal.get_or_insert("FOR UPDATE/SHARE".to_owned());
        }
        if let SetExpr::Select(s) = q.body.as_ref() {
            if s.into.is_some() {
                self.refusal.get_or_insert("SELECT INTO".to_owned());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
        if !matches!(st, Statement::Query(_)) {
            self.refusal
                .get_or_insert("data-modifying statement in WITH".to_owned());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, alias, args, ..
        } = tf
        {
            let parts = name_parts(name);
            if args.is_none()
                && matches!(
                    classify_table(self.catalog, &parts).0,
                    TableClass::Distributed { .. }
                )
            {
                let n = match alias {
                    Some(a) => fold_ident(&a.name),
                    None => parts.last().cloned().unwrap_or_default(),
                };
                self.aliases.push(n);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let parts = name_parts(&f.name);
            let last = parts.last().cloned().unwrap_or_default();
            if !is_portable_function(&parts) && !BUILT_IN.contains(&last.as_str()) {
                self.refusal.get_or_insert(format!(
                    "function {} (only built-in functions are known not to read distributed tables)",
                    parts.join(".")
                ));
            }
        }
        let last = match e {
            Expr::Identifier(id) => Some(id),
            Expr::CompoundIdentifier(ids) => ids.last(),
            _ => None,
        };
        if let Some(id) = last {
            let name = fold_ident(id);
            if SYSTEM_COLUMNS.contains(&name.as_str()) {
                self.refusal.get_or_insert(format!("system column {name}"));
            }
        }
        if let Expr::Identifier(id) = e {
            // Checked against every table name and alias seen so far and below: a
            // column with a table's name is refused too (conservative).
            let name = fold_ident(id);
            let is_table = self.aliases.contains(&name)
                || matches!(
                    classify_table(self.catalog, std::slice::from_ref(&name)).0,
                    TableClass::Distributed { .. }
                );
            if is_table {
                self.refusal
                    .get_or_insert(format!("whole-row reference {name}"));
            }
        }
        ControlFlow::Continue(())
    }
}

/// Replaces each reference to a distributed table by its temporary copy.
struct Rewrite<'c> {
    catalog: &'c Catalog,
    ctes: Vec<String>,
    inputs: Vec<CollectInput>,
}

impl VisitorMut for Rewrite<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name, alias, args, ..
        } = tf
        else {
            return ControlFlow::Continue(());
        };
        if args.is_some() {
            return ControlFlow::Continue(());
        }
        let parts = name_parts(name);
        if parts.len() == 1 && self.ctes.contains(&parts[0]) {
            return ControlFlow::Continue(());
        }
        let (TableClass::Distributed { .. }, table) = classify_table(self.catalog, &parts) else {
            return ControlFlow::Continue(());
        };
        let temp = match self.inputs.iter().find(|i| i.table == table) {
            Some(i) => i.temp.clone(),
            None => {
                let temp = format!("pgshard_ir_{}", self.inputs.len());
                self.inputs.push(CollectInput {
                    table,
                    temp: temp.clone(),
                    moving: Vec::new(),
                });
                temp
            }
        };
        if alias.is_none() {
            let last = match name.0.last() {
                Some(sqlparser::ast::ObjectNamePart::Identifier(id)) => id.clone(),
                _ => Ident::new(parts.last().cloned().unwrap_or_default()),
            };
            *alias = Some(TableAlias {
                name: last,
                columns: Vec::new(),
            });
        }
        *name = ObjectName::from(vec![Ident::new("pg_temp"), Ident::new(temp)]);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::p;
    use crate::{CollectPlan, FanoutPlan, MergePlan, Route};

    fn collect(sql: &str) -> CollectPlan {
        match p(sql).route {
            Route::Fanout(FanoutPlan {
                merge: MergePlan::Collect(c),
                ..
            }) => *c,
            other => panic!("{sql}: expected a collection, got {other:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match p(sql).route {
            Route::Unsupported(m) => m,
            other => panic!("{sql}: expected 0A000, got {other:?}"),
        }
    }

    #[test]
    fn independent_scalar_subqueries_are_collected() {
        let c = collect(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM accounts WHERE aid > 3)",
        );
        let tables: Vec<&str> = c.inputs.iter().map(|i| i.table.as_str()).collect();
        assert_eq!(tables, ["users", "accounts"]);
        assert_eq!(
            c.sql,
            "SELECT (SELECT count(*) FROM pg_temp.pgshard_ir_0 AS users), (SELECT count(*) FROM pg_temp.pgshard_ir_1 AS accounts WHERE aid > 3)"
        );
        assert!(!c.reads_other);
        assert_eq!(c.finish, crate::tests::LOCAL);
    }

    #[test]
    fn references_keep_their_alias_and_share_one_copy() {
        let c = collect(
            "SELECT a.aid, b.aid FROM accounts a JOIN accounts AS b ON a.aid + 1 = b.aid JOIN branches br ON true",
        );
        assert_eq!(c.inputs.len(), 1);
        assert!(c.sql.contains("pg_temp.pgshard_ir_0 AS a "), "{}", c.sql);
        assert!(c.sql.contains("pg_temp.pgshard_ir_0 AS b "), "{}", c.sql);
        assert!(c.sql.contains("JOIN branches AS br"), "{}", c.sql);
        assert!(c.reads_other);
        let c = collect("SELECT id FROM public.users EXCEPT SELECT aid FROM app.orders");
        assert_eq!(
            c.inputs[1].copy_out(),
            r#"COPY "app"."orders" TO STDOUT (FORMAT binary)"#
        );
        assert!(c.sql.contains("pg_temp.pgshard_ir_0 AS users"), "{}", c.sql);
        assert!(
            c.sql.contains("pg_temp.pgshard_ir_1 AS orders"),
            "{}",
            c.sql
        );
    }

    #[test]
    fn what_a_copy_cannot_reproduce_stays_refused() {
        for (sql, why) in [
            ("SELECT ctid, aid FROM accounts a JOIN users u ON u.id = a.aid", "system column ctid"),
            ("SELECT a.tableoid FROM accounts a JOIN users u ON u.id = a.aid", "system column tableoid"),
            ("SELECT count(a) FROM accounts a JOIN users u ON u.id = a.aid", "whole-row reference a"),
            ("SELECT a.aid FROM accounts a JOIN users u ON u.id = a.aid FOR UPDATE", "FOR UPDATE"),
            ("SELECT my_func(a.aid) FROM accounts a JOIN users u ON u.id = a.aid", "function or type my_func"),
            ("WITH users AS (SELECT 1 AS id) SELECT * FROM users u JOIN accounts a ON a.aid = u.id JOIN accounts b ON b.aid = u.id + 1", "CTE is named like"),
        ] {
            let m = refused(sql);
            assert!(m.contains(why), "{sql}: {m}");
        }
        // Outside plain reads, no collection.
        for sql in [
            "EXPLAIN SELECT a.aid FROM accounts a JOIN users u ON u.id = a.aid",
            "DECLARE c CURSOR FOR SELECT a.aid FROM accounts a JOIN users u ON u.id = a.aid",
            "COPY (SELECT a.aid FROM accounts a JOIN users u ON u.id = a.aid) TO STDOUT",
            "SELECT a.aid INTO TEMP t2 FROM accounts a JOIN users u ON u.id = a.aid",
            "UPDATE accounts SET aid = 1 WHERE aid IN (SELECT id FROM users)",
        ] {
            refused(sql);
        }
    }

    #[test]
    fn built_in_aggregates_beyond_the_portable_list_are_collected() {
        let c = collect("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY aid) FROM accounts");
        assert_eq!(c.inputs.len(), 1);
        collect("SELECT aid, count(*) FROM accounts GROUP BY ROLLUP (aid)");
        collect("SELECT id, row_number() OVER (ORDER BY id) FROM users");
    }
}

#[cfg(test)]
mod insert_tests {
    use crate::tests::p;
    use crate::{CollectPlan, FanoutPlan, MergePlan, Route};

    fn staged(sql: &str) -> CollectPlan {
        match p(sql).route {
            Route::Fanout(FanoutPlan {
                merge: MergePlan::Collect(c),
                ..
            }) if c.insert.is_some() => *c,
            other => panic!("{sql}: expected a staged INSERT, got {other:?}"),
        }
    }

    #[test]
    fn insert_select_and_computed_keys_are_staged() {
        let c = staged("INSERT INTO users (id, name) SELECT aid, 'x' FROM accounts WHERE aid > 5");
        assert_eq!(
            c.sql,
            "INSERT INTO pg_temp.pgshard_ins (id, name) SELECT aid, 'x' FROM pg_temp.pgshard_ir_0 AS accounts WHERE aid > 5"
        );
        let Some(ins) = &c.insert else { unreachable!() };
        assert_eq!(
            ins.create,
            r#"CREATE TEMP TABLE pgshard_ins AS SELECT "id", "name" FROM "users" WITH NO DATA"#
        );
        assert_eq!(ins.copy.table, "users");
        let c = staged("INSERT INTO users (id, name) VALUES (350 + 355, 'expression')");
        assert!(c.inputs.is_empty());
        staged("INSERT INTO users (id) SELECT g FROM generate_series(1, 3) g");
    }

    #[test]
    fn inserts_that_staging_would_change_stay_refused() {
        for sql in [
            "INSERT INTO users (id, name) SELECT aid, 'x' FROM accounts ON CONFLICT DO NOTHING",
            "INSERT INTO users (id, name) SELECT aid, 'x' FROM accounts RETURNING id",
            "INSERT INTO users (id, name) VALUES (1 + 1, DEFAULT)",
            "INSERT INTO users SELECT aid FROM accounts",
            "INSERT INTO users (name) SELECT 'x' FROM accounts",
        ] {
            assert!(
                matches!(p(sql).route, Route::Unsupported(_)),
                "{sql}: {:?}",
                p(sql).route
            );
        }
    }
}

#[cfg(test)]
mod into_tests {
    use crate::tests::{p, LOCAL};
    use crate::{FanoutPlan, MergePlan, Route};

    #[test]
    fn tables_created_from_distributed_rows_are_collected_on_the_local_shard() {
        for (sql, want) in [
            (
                "CREATE TABLE copy AS SELECT * FROM users",
                "CREATE TABLE copy AS SELECT * FROM pg_temp.pgshard_ir_0 AS users",
            ),
            (
                "SELECT id INTO ids FROM users",
                "SELECT id INTO ids FROM pg_temp.pgshard_ir_0 AS users",
            ),
        ] {
            match p(sql).route {
                Route::Fanout(FanoutPlan {
                    merge: MergePlan::Collect(c),
                    ..
                }) => {
                    assert_eq!(c.sql, want);
                    assert_eq!(c.finish, LOCAL);
                    assert!(c.reads_other, "refused inside a transaction block");
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        for sql in [
            "CREATE TEMP TABLE copy AS SELECT * FROM users",
            "SELECT id INTO TEMP ids FROM users",
            "CREATE TABLE pg_temp.copy AS SELECT * FROM users",
        ] {
            assert!(matches!(p(sql).route, Route::Unsupported(_)), "{sql}");
        }
    }
}

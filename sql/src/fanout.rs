//! Fan-out planning (SPEC §5 rule 2): a read that needs several shards runs on each of
//! them in parallel, and the router merges the answers exactly as one PostgreSQL
//! would answer, or the statement is refused with 0A000 naming the construct.
//!
//! [`route`](crate::route) decides *whether* a statement may fan out (every
//! distributed table in the FROM tree of the top-level SELECT, joined on the shard key
//! within one colocation group; subqueries correlated on the key or `key IN (SELECT
//! key …)` semi-joins; aggregates, DISTINCT, LIMIT and window functions below the top
//! level only when grouped, partitioned or correlated by the key). This module decides
//! *how*, as data ([`FanoutPlan`]):
//!
//! - **Stream** ([`StreamMerge`]): plain rows, rows grouped by a shard key (each group
//!   lives on one shard), window functions partitioned by a shard key. Each shard runs
//!   the statement with its ORDER BY, `LIMIT n+m` and no OFFSET; sort keys that are not
//!   output columns are appended as hidden columns. Text is compared by bytes, which is
//!   PostgreSQL's order under the shards' `C.UTF-8` default collation; an explicit
//!   `COLLATE` other than a byte-order one is refused (columns declared with another
//!   collation are not detected). The router concatenates, or k-way merges, applies
//!   OFFSET/LIMIT and drops hidden columns.
//! - **Finish** ([`FinishPlan`]): aggregates (any, including DISTINCT and ordered
//!   aggregates, avg, stddev…), GROUP BY, HAVING, DISTINCT and DISTINCT ON. Each shard
//!   sends the *inputs* of the final step, reduced as far as exactness allows: for
//!   aggregates, one row per distinct combination of group keys and aggregate inputs
//!   with its multiplicity (`count(*)`); for DISTINCT, the shard's distinct rows; for
//!   DISTINCT ON, the shard's first row per key. The router sends those rows back to
//!   one shard inside a finishing query (`… FROM (VALUES …) v(…) CROSS JOIN LATERAL
//!   generate_series(1, v.m) …`) that applies the original aggregates, HAVING, ORDER
//!   BY, DISTINCT and LIMIT: PostgreSQL computes the final result, so result types,
//!   numeric display scales, float output (`extra_float_digits`), empty-input rows and
//!   collation-dependent ordering are PostgreSQL's own, at the cost of one round trip
//!   and of buffering the reduced rows.
//!
//! Output column names of the finishing query are PostgreSQL's: an item's alias, else
//! the name PostgreSQL's `FigureColname` gives the expression ([`column_name`]); an
//! expression whose name is not certain is refused (add an alias).

use crate::parse::fold_ident;
use pgshard_catalog::ShardId;
use sqlparser::ast::{
    BinaryOperator, DataType, Distinct, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName,
    ObjectNamePart, OrderByExpr, OrderByKind, Query, Select, SelectItem, SetExpr, Statement, Value,
    Visit, VisitMut, Visitor, VisitorMut, WindowType,
};
use std::ops::ControlFlow;

/// The switch for multi-shard UPDATE/DELETE: on, the planner returns
/// [`crate::Route::FanoutWrite`] instead of 0A000, and the router runs it on every
/// target shard and commits with two-phase commit (it still answers 0A000 where it
/// cannot: in a transaction block, the extended protocol, no catalog connection).
pub const MULTI_SHARD_WRITES: bool = true;

/// How a multi-shard read runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutPlan {
    /// The distributed tables it reads, for messages and metrics.
    pub tables: Vec<String>,
    /// The shards to run `shard_sql` on (a subset for `key IN (…)`, else all).
    pub shards: Vec<ShardId>,
    /// The statement each shard runs (the same text on every shard; `$n` parameters
    /// mean what they mean in the client's statement).
    pub shard_sql: String,
    /// Shards that must run another text while a bucket move is under way (it skips
    /// the rows they hold but do not own, see [`crate::moving`]); use [`Self::sql_for`].
    pub moving_sql: Vec<(ShardId, String)>,
    pub merge: MergePlan,
    /// Set for `DECLARE … CURSOR FOR` this read: the router runs it and keeps its rows
    /// for FETCH ([`crate::cursor`]).
    pub cursor: Option<crate::CursorDecl>,
    /// How to answer it if the router finds at run time that it cannot merge the
    /// shards' answers (an ORDER BY on a type it does not compare, a result type the
    /// finishing query cannot name): collect its tables instead ([`crate::collect`]).
    /// Set only where collecting is exact.
    pub fallback: Option<Box<crate::CollectPlan>>,
}

impl FanoutPlan {
    /// The statement `shard` runs.
    pub fn sql_for(&self, shard: ShardId) -> &str {
        self.moving_sql
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or(self.shard_sql.as_str(), |(_, sql)| sql)
    }
}

/// How the router combines the shards' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergePlan {
    /// Rows stream through the router (bounded memory).
    Stream(StreamMerge),
    /// Rows are collected and PostgreSQL computes the result in a finishing query.
    Finish(FinishPlan),
    /// The distributed tables are copied into temporary tables of one shard's session,
    /// where PostgreSQL runs the rewritten statement ([`crate::collect`]).
    Collect(Box<crate::CollectPlan>),
}

/// Concatenation or k-way merge of sorted shard results, then OFFSET/LIMIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMerge {
    /// How many trailing columns of each shard row the client does not see.
    pub hidden: usize,
    /// Sort keys, most significant first; empty: concatenate in arrival order.
    pub sort: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}

/// A column of the shard rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    /// The `n`-th output column (0-based, counted from the left).
    Visible(usize),
    /// The `n`-th hidden column (0-based, counted from the first hidden one).
    Hidden(usize),
}

/// One ORDER BY key, compared as PostgreSQL compares values of the column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub column: SortColumn,
    pub descending: bool,
    pub nulls_first: bool,
    /// A hidden column holding `pg_collation_for(key)`, if the planner asked for one:
    /// text is compared by bytes only under `default`, `"C"`, `"POSIX"` or
    /// `"C.UTF-8"`. `None` today: `pg_collation_for` fails on types without collation
    /// and the planner does not know the key's type, so only explicit `COLLATE`
    /// clauses are checked (at plan time); a column declared with a non-default
    /// collation is not detected (documented limitation).
    pub collation: Option<usize>,
}

/// A finishing query: `before` + the relation of collected rows + `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishPlan {
    pub before: String,
    pub after: String,
    /// The relation's alias; its columns are `columns`, one per shard column.
    pub relation: String,
    pub columns: Vec<String>,
}

impl FinishPlan {
    /// The finishing query for the collected shard rows: `types[i]` is the SQL type
    /// name of shard column `i` (see [`type_name`]), each row holds the columns' text
    /// values.
    pub fn render(&self, types: &[&str], rows: &[Vec<Option<&str>>]) -> String {
        let mut out = String::with_capacity(self.before.len() + self.after.len() + 64);
        out.push_str(&self.before);
        out.push('(');
        if rows.is_empty() {
            out.push_str("SELECT ");
            for (i, t) in types.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str("NULL::");
                out.push_str(t);
            }
            out.push_str(" WHERE false");
        } else {
            out.push_str("VALUES ");
            for (r, row) in rows.iter().enumerate() {
                if r > 0 {
                    out.push_str(", ");
                }
                out.push('(');
                for (i, (v, t)) in row.iter().zip(types).enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match v {
                        None => out.push_str("NULL"),
                        Some(v) => push_literal(&mut out, v),
                    }
                    out.push_str("::");
                    out.push_str(t);
                }
                out.push(')');
            }
        }
        out.push_str(") AS ");
        out.push_str(&self.relation);
        out.push('(');
        out.push_str(&self.columns.join(", "));
        out.push(')');
        out.push_str(&self.after);
        out
    }
}

/// An `E'…'` literal: the same meaning whatever `standard_conforming_strings` says.
fn push_literal(out: &mut String, v: &str) {
    out.push_str("E'");
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// The SQL name of a built-in type by OID, for casts in a finishing query; `None` for
/// types the router does not know (the finishing step refuses them).
pub fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        700 => "float4",
        701 => "float8",
        705 => "text",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        650 => "cidr",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        // Quoted: unquoted `bit` means `bit(1)` in PostgreSQL's grammar, and would cut
        // `1111` to `1`; `"bit"` is the type without a length.
        1560 => "\"bit\"",
        1562 => "varbit",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        1000 => "bool[]",
        1001 => "bytea[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1016 => "int8[]",
        1009 => "text[]",
        1014 => "bpchar[]",
        1015 => "varchar[]",
        1021 => "float4[]",
        1022 => "float8[]",
        1182 => "date[]",
        1115 => "timestamp[]",
        1185 => "timestamptz[]",
        1187 => "interval[]",
        1231 => "numeric[]",
        2951 => "uuid[]",
        3807 => "jsonb[]",
        199 => "json[]",
        _ => return None,
    })
}

/// A multi-shard UPDATE or DELETE: the same statement on every target shard, command
/// tags summed (`UPDATE n`), RETURNING rows concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutWrite {
    pub tables: Vec<String>,
    pub shards: Vec<ShardId>,
    pub sql: String,
    /// A write to reference tables: every shard holds the same copy and answers alike,
    /// so the client gets one shard's answer (no summing, no concatenation).
    pub replicated: bool,
    /// For a replicated write: the columns whose DEFAULT each shard would evaluate on
    /// its own; the router checks that those defaults are constants before running it.
    pub defaults: Vec<crate::replicated::ColumnDefaults>,
    /// When not empty, the statement for each shard of `shards`, in the same order (a
    /// multi-row INSERT split by shard key, [`crate::split`]); `sql` is then the whole
    /// statement, for messages. When empty, `sql` runs on every shard.
    pub shard_sql: Vec<String>,
    /// An UPDATE that sets the shard key (issue 15): `sql` updates the rows in place
    /// and returns each new row's address and bucket; the router then moves the rows
    /// whose new bucket another shard owns ([`KeyMove`]).
    pub key_move: Option<KeyMove>,
}

/// How an UPDATE of the shard key moves the rows it updated onto their new shards,
/// inside the write's distributed transaction (SPEC §5 rule 1).
///
/// Each shard runs the client's UPDATE in place (PostgreSQL evaluates the SET list,
/// coerces, checks constraints and fires UPDATE triggers as it would on one node) with
/// `RETURNING ctid, <bucket of the new key>` ahead of the client's RETURNING list. The
/// rows whose new bucket belongs to another shard are then deleted where they are
/// (`DELETE … WHERE ctid = ANY(…) RETURNING <columns>` — no other transaction can touch
/// them: this one holds their row locks) and copied, as COPY text, into the table on
/// the owning shard. The count in the command tag is the UPDATE's own.
///
/// What the delete and insert would do differently from PostgreSQL's UPDATE is checked
/// on a shard before any row moves ([`KeyMove::guard_sql`]): user triggers (DELETE and
/// INSERT triggers would fire instead of UPDATE ones), foreign keys referencing the
/// table with an ON UPDATE action (CASCADE, SET NULL, SET DEFAULT: the in-place UPDATE
/// would change the referencing rows on the old shard), rules, row-level security,
/// inheritance children and partitioned tables (a `ctid` names a row of one relation).
///
/// A foreign key referencing the table with NO ACTION or RESTRICT is exact: pgshard
/// only lets a distributed table reference another on its shard key (co-located,
/// [`crate::constraints`]), so every row referencing the old key is on the old shard,
/// where the in-place UPDATE checked it; the delete that follows removes a row with
/// the *new* key, which nothing on the old shard references, and the insert on the new
/// shard creates a key nothing referenced before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMove {
    /// The table, quoted for SQL as its catalog name.
    pub table: String,
    /// The shard key column, for messages.
    pub key: String,
    /// The catalog's name of the table, for messages.
    pub table_name: String,
    /// The client's UPDATE has RETURNING: its columns follow the address and bucket in
    /// each shard's rows (the router takes those two off).
    pub returning: bool,
}

impl KeyMove {
    /// One row: why the rows cannot move exactly (NULL when they can), then the
    /// columns a row is copied with (those not generated), quoted and comma-separated.
    pub fn guard_sql(&self) -> String {
        let t = literal(&self.table);
        format!(
            "SELECT coalesce(\
             (SELECT 'trigger ' || string_agg(quote_ident(tgname), ', ') FROM pg_trigger WHERE tgrelid = {t}::regclass AND NOT tgisinternal), \
             (SELECT 'foreign key ' || string_agg(quote_ident(conname), ', ') || ' referencing it with an ON UPDATE action' FROM pg_constraint WHERE confrelid = {t}::regclass AND contype = 'f' AND confupdtype NOT IN ('a', 'r')), \
             (SELECT 'rule ' || string_agg(quote_ident(rulename), ', ') FROM pg_rewrite WHERE ev_class = {t}::regclass AND rulename <> '_RETURN'), \
             (SELECT 'row-level security' FROM pg_class WHERE oid = {t}::regclass AND relrowsecurity), \
             (SELECT 'partitioned table' FROM pg_class WHERE oid = {t}::regclass AND relkind <> 'r'), \
             (SELECT 'inheritance children' FROM pg_inherits WHERE inhparent = {t}::regclass LIMIT 1)), \
             (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = {t}::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '')"
        )
    }

    /// Deletes the rows at `ctids` (text forms such as `(0,1)`) from the table on the
    /// shard that holds them, handing their `columns` out as COPY text.
    pub fn take_sql(&self, columns: &str, ctids: &[String]) -> String {
        let list = ctids
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "COPY (DELETE FROM ONLY {} WHERE ctid = ANY({}::tid[]) RETURNING {columns}) TO STDOUT",
            self.table,
            literal(&format!("{{{list}}}"))
        )
    }

    /// Receives moved rows on their new shard.
    pub fn put_sql(&self, columns: &str) -> String {
        format!("COPY {} ({columns}) FROM STDIN", self.table)
    }

    /// The 0A000 message when the guard found `problem`.
    pub fn refusal(&self, problem: &str) -> String {
        format!(
            "UPDATE of shard key column {} of distributed table {} moving rows to another shard, with {problem} (a delete and an insert would not do what the UPDATE does)",
            self.key, self.table_name
        )
    }
}

/// A string literal for SQL.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl FanoutWrite {
    /// The statement to run on `shards[i]`.
    pub fn sql_for(&self, i: usize) -> &str {
        self.shard_sql
            .get(i)
            .map_or(self.sql.as_str(), String::as_str)
    }
}

/// A multi-shard UPDATE or DELETE; `refusal` is the 0A000 message used while
/// [`MULTI_SHARD_WRITES`] is off.
pub(crate) fn plan_write(
    st: &Statement,
    shards: Vec<ShardId>,
    table: String,
    refusal: String,
) -> crate::Route {
    let writes = matches!(st, Statement::Update { .. } | Statement::Delete(_));
    if MULTI_SHARD_WRITES && writes {
        crate::Route::FanoutWrite(FanoutWrite {
            tables: vec![table],
            shards,
            sql: st.to_string(),
            replicated: false,
            defaults: Vec::new(),
            shard_sql: Vec::new(),
            key_move: None,
        })
    } else {
        crate::Route::Unsupported(refusal)
    }
}

/// Aggregate functions the planner knows (built-in, or the SQL-standard names).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

fn function_name(f: &Function) -> String {
    f.name
        .0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(fold_ident)
        .unwrap_or_default()
}

fn is_aggregate(f: &Function) -> bool {
    f.over.is_none()
        && (!f.within_group.is_empty() || AGGREGATES.contains(&function_name(f).as_str()))
}

/// What a SELECT computes, without looking into its subqueries.
#[derive(Debug, Default)]
pub(crate) struct Shape {
    /// Aggregates, GROUP BY or HAVING.
    pub aggregated: bool,
    /// Each window function's PARTITION BY (empty for a named window).
    pub windows: Vec<Vec<Expr>>,
    /// It contains a subquery.
    pub subquery: bool,
}

struct ShapeFinder {
    shape: Shape,
    depth: usize,
}

impl Visitor for ShapeFinder {
    type Break = ();
    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth += 1;
        self.shape.subquery = true;
        ControlFlow::Continue(())
    }
    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            match &f.over {
                Some(WindowType::WindowSpec(w)) => self.shape.windows.push(w.partition_by.clone()),
                Some(WindowType::NamedWindow(_)) => self.shape.windows.push(Vec::new()),
                None if is_aggregate(f) => self.shape.aggregated = true,
                None => {}
            }
        }
        ControlFlow::Continue(())
    }
}

fn shape_of<T: Visit>(nodes: &[&T]) -> Shape {
    let mut f = ShapeFinder {
        shape: Shape::default(),
        depth: 0,
    };
    for n in nodes {
        let _ = n.visit(&mut f);
    }
    f.shape
}

/// The shape of a SELECT's own expressions (select list, HAVING, GROUP BY).
pub(crate) fn select_shape(s: &Select) -> Shape {
    let mut shape = shape_of(&[&s.projection]);
    let having = shape_of(&[&s.having]);
    let grouped = match &s.group_by {
        GroupByExpr::Expressions(es, mods) => !es.is_empty() || !mods.is_empty(),
        GroupByExpr::All(_) => true,
    };
    shape.aggregated |= having.aggregated || grouped || s.having.is_some();
    shape.windows.extend(having.windows);
    shape
}

fn is_wildcard(i: &SelectItem) -> bool {
    matches!(
        i,
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(_, _)
    )
}

fn item_expr(i: &SelectItem) -> Option<&Expr> {
    match i {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

fn number(e: &Expr) -> Option<u64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// LIMIT and OFFSET as constants (`None`: no limit).
fn limit_offset(q: &Query) -> Result<(Option<u64>, u64), String> {
    let bad =
        || "LIMIT or OFFSET that is not an integer constant in a multi-shard query".to_owned();
    let mut limit = None;
    let mut offset = 0;
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit: l,
            offset: o,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err("LIMIT BY".to_owned());
            }
            match l {
                None => {}
                Some(Expr::Value(v)) if matches!(v.value, Value::Null) => {}
                Some(e) => limit = Some(number(e).ok_or_else(bad)?),
            }
            if let Some(o) = o {
                offset = number(&o.value).ok_or_else(bad)?;
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => return Err(bad()),
    }
    if let Some(f) = &q.fetch {
        if f.with_ties || f.percent {
            return Err("FETCH … WITH TIES or PERCENT in a multi-shard query".to_owned());
        }
        let n = match &f.quantity {
            None => 1,
            Some(e) => number(e).ok_or_else(bad)?,
        };
        limit = Some(limit.map_or(n, |l: u64| l.min(n)));
    }
    Ok((limit, offset))
}

fn order_exprs(q: &Query) -> Result<Vec<OrderByExpr>, String> {
    match &q.order_by {
        None => Ok(Vec::new()),
        Some(ob) if ob.interpolate.is_none() => match &ob.kind {
            OrderByKind::Expressions(v) => Ok(v.clone()),
            OrderByKind::All(_) => Err("ORDER BY ALL".to_owned()),
        },
        Some(_) => Err("ORDER BY … INTERPOLATE".to_owned()),
    }
}

/// `count(r)` of a whole-row reference `r` (a relation of the FROM list) rewritten as
/// `count(CASE WHEN r IS DISTINCT FROM NULL THEN 1 END)`: the same count (`count`
/// counts the rows whose argument is not the null value; a whole row is null only
/// where an outer join extends it, and `IS DISTINCT FROM NULL` tests the value, not its
/// fields as `IS NOT NULL` would), and the same if `r` is in fact a column, but the
/// shards send an integer the merge can handle instead of a row type it cannot name.
/// `None` when there is nothing to rewrite.
fn count_whole_rows(q: &Query) -> Option<Query> {
    let SetExpr::Select(sel) = &*q.body else {
        return None;
    };
    let mut names = Vec::new();
    for twj in &sel.from {
        for tf in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match tf {
                sqlparser::ast::TableFactor::Table { name, alias, .. } => match alias {
                    Some(a) => names.push(fold_ident(&a.name)),
                    None => names.extend(crate::parse::name_parts(name).last().cloned()),
                },
                sqlparser::ast::TableFactor::Derived { alias: Some(a), .. } => {
                    names.push(fold_ident(&a.name));
                }
                _ => {}
            }
        }
    }
    let mut out = q.clone();
    let mut r = CountWholeRows {
        names: &names,
        rewrote: false,
    };
    if let SetExpr::Select(sel) = &mut *out.body {
        let _ = VisitMut::visit(&mut sel.projection, &mut r);
        let _ = VisitMut::visit(&mut sel.having, &mut r);
    }
    let _ = VisitMut::visit(&mut out.order_by, &mut r);
    r.rewrote.then_some(out)
}

struct CountWholeRows<'n> {
    names: &'n [String],
    rewrote: bool,
}

impl VisitorMut for CountWholeRows<'_> {
    type Break = ();

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let is_count = matches!(f.name.0.as_slice(), [ObjectNamePart::Identifier(n)] if fold_ident(n) == "count");
        if !is_count || f.over.is_some() {
            return ControlFlow::Continue(());
        }
        let FunctionArguments::List(list) = &mut f.args else {
            return ControlFlow::Continue(());
        };
        if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
            return ControlFlow::Continue(());
        }
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_mut_slice() else {
            return ControlFlow::Continue(());
        };
        let Expr::Identifier(id) = arg else {
            return ControlFlow::Continue(());
        };
        if !self.names.contains(&fold_ident(id)) {
            return ControlFlow::Continue(());
        }
        let text = format!("CASE WHEN {id} IS DISTINCT FROM NULL THEN 1 END");
        let parsed = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr());
        if let Ok(case) = parsed {
            *arg = case;
            self.rewrote = true;
        }
        ControlFlow::Continue(())
    }
}

/// Plan a multi-shard query that [`crate::route`] found safe to run on every shard.
pub(crate) fn plan_query(
    q: &Query,
    shards: Vec<ShardId>,
    top: &crate::route::TopInfo,
    _occs: &[crate::route::Occ],
) -> Result<FanoutPlan, String> {
    if crate::ctewrite::count_writes(q) > 0 {
        return Err("data-modifying statement in WITH of a multi-shard query".to_owned());
    }
    let counted;
    let q = match count_whole_rows(q) {
        Some(r) => {
            counted = r;
            &counted
        }
        None => q,
    };
    let SetExpr::Select(sel) = &*q.body else {
        return Err(format!(
            "{} across shards",
            match &*q.body {
                SetExpr::SetOperation { op, .. } => op.to_string(),
                _ => "this query form".to_owned(),
            }
        ));
    };
    if q.with.as_ref().is_some_and(|w| w.recursive) {
        return Err("WITH RECURSIVE in a multi-shard query".to_owned());
    }
    if !sel.named_window.is_empty() {
        return Err("WINDOW clause in a multi-shard query".to_owned());
    }
    if sel.top.is_some() || sel.qualify.is_some() || !sel.sort_by.is_empty() {
        return Err("non-PostgreSQL SELECT clause".to_owned());
    }
    let (limit, offset) = limit_offset(q)?;
    let order = order_exprs(q)?;
    let shape = select_shape(sel);
    let order_shape = shape_of(&[&order]);
    if !order_shape.windows.is_empty() {
        return Err("window function in ORDER BY of a multi-shard query".to_owned());
    }
    if !(shape.windows.is_empty() || top.windows && top.windows_by_key) {
        return Err(
            "window function not partitioned by the shard key in a multi-shard query".to_owned(),
        );
    }
    let aggregated = shape.aggregated || order_shape.aggregated;
    let pushed_down = aggregated && top.grouped_by_key;
    if sel.distinct.is_none() && (!aggregated || pushed_down) {
        return stream(q, sel, &order, limit, offset, shards);
    }
    if !q.locks.is_empty() {
        return Err("FOR UPDATE/SHARE with aggregates or DISTINCT".to_owned());
    }
    if !shape.windows.is_empty() {
        return Err("window function with GROUP BY or DISTINCT in a multi-shard query".to_owned());
    }
    if aggregated {
        finish_aggregate(q, sel, &order, shards)
    } else {
        finish_distinct(q, sel, &order, shards)
    }
}

/// Collations under which text orders by its UTF-8 bytes.
fn bytewise_collation(name: &ObjectName) -> bool {
    let n = name.to_string();
    let n = n.trim_matches('"');
    matches!(
        n,
        "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "default" | "ucs_basic"
    )
}

fn check_collations<T: Visit>(node: &T) -> Result<(), String> {
    struct F(Option<String>);
    impl Visitor for F {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Collate { collation, .. } = e {
                if !bytewise_collation(collation) && self.0.is_none() {
                    self.0 = Some(collation.to_string());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = F(None);
    let _ = node.visit(&mut f);
    match f.0 {
        Some(c) => Err(format!(
            "ORDER BY with collation {c} in a multi-shard query (only byte-order collations such as \"C\" merge)"
        )),
        None => Ok(()),
    }
}

fn alias(name: &str) -> Ident {
    Ident::new(name)
}

fn hidden_item(expr: Expr, n: usize) -> SelectItem {
    SelectItem::ExprWithAlias {
        expr,
        alias: alias(&format!("__pgshard_h{n}")),
    }
}

/// The output column an ORDER BY expression refers to, if it is one (an ordinal, an
/// output alias, or an expression equal to an output expression), with the expression.
fn resolve_output<'a>(
    e: &'a Expr,
    items: &'a [SelectItem],
) -> Result<(Option<usize>, &'a Expr), String> {
    let no_wildcard_upto = |j: usize| !items[..=j].iter().any(is_wildcard);
    if let Some(k) = number(e) {
        let j = usize::try_from(k)
            .ok()
            .filter(|&k| k >= 1 && k <= items.len())
            .map(|k| k - 1);
        let Some(j) = j.filter(|&j| no_wildcard_upto(j)) else {
            return Err(
                "ORDER BY position past a * in the select list of a multi-shard query".to_owned(),
            );
        };
        let expr = item_expr(&items[j]).ok_or("ORDER BY position of a * item")?;
        return Ok((Some(j), expr));
    }
    if let Expr::Identifier(id) = e {
        let name = fold_ident(id);
        let hits: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i, SelectItem::ExprWithAlias { alias, .. } if fold_ident(alias) == name))
            .map(|(j, _)| j)
            .collect();
        match hits.as_slice() {
            [] => {}
            [j] if no_wildcard_upto(*j) => {
                return Ok((Some(*j), item_expr(&items[*j]).unwrap_or(e)));
            }
            _ => {
                return Err(format!(
                    "ORDER BY {name}, an ambiguous or hidden output column name"
                ))
            }
        }
        // An unaliased output column may still be named like the identifier.
        for it in items.iter() {
            if let SelectItem::UnnamedExpr(x) = it {
                if x != e && column_name(x).as_deref() == Some(name.as_str()) {
                    return Err(format!(
                        "ORDER BY {name}, which names an output expression, in a multi-shard query (order by the expression)"
                    ));
                }
            }
        }
    }
    for (j, it) in items.iter().enumerate() {
        if item_expr(it) == Some(e) && no_wildcard_upto(j) {
            return Ok((Some(j), e));
        }
    }
    Ok((None, e))
}

/// A column reference (`c` or `t.c`).
fn is_plain_column(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

#[allow(dead_code)]
fn call(name: &str, arg: Expr) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(sqlparser::ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

fn stream(
    q: &Query,
    sel: &Select,
    order: &[OrderByExpr],
    limit: Option<u64>,
    offset: u64,
    shards: Vec<ShardId>,
) -> Result<FanoutPlan, String> {
    check_collations(&order.to_vec())?;
    let items = &sel.projection;
    let mut hidden: Vec<Expr> = Vec::new();
    let mut sort = Vec::new();
    for ob in order {
        if ob.with_fill.is_some() {
            return Err("ORDER BY … WITH FILL".to_owned());
        }
        let (visible, expr) = resolve_output(&ob.expr, items)?;
        // A visible key that is a plain column gets a hidden copy too: hidden columns
        // are always fetched in text format, so clients that ask for binary results
        // (most drivers) still merge. Other expressions are not copied: a volatile one
        // would sort by values other than those shown.
        let column = match visible {
            Some(j) if !is_plain_column(expr) => SortColumn::Visible(j),
            _ => {
                hidden.push(expr.clone());
                SortColumn::Hidden(hidden.len() - 1)
            }
        };
        let descending = ob.options.asc == Some(false);
        sort.push(SortKey {
            column,
            descending,
            nulls_first: ob.options.nulls_first.unwrap_or(descending),
            collation: None,
        });
    }
    let mut sq = q.clone();
    if let SetExpr::Select(s) = &mut *sq.body {
        for (n, e) in hidden.iter().enumerate() {
            s.projection.push(hidden_item(e.clone(), n));
        }
    }
    sq.fetch = None;
    sq.limit_clause = limit.map(|l| LimitClause::LimitOffset {
        limit: Some(Expr::value(Value::Number(
            l.saturating_add(offset).to_string(),
            false,
        ))),
        offset: None,
        limit_by: Vec::new(),
    });
    Ok(FanoutPlan {
        tables: Vec::new(),
        shards,
        shard_sql: sq.to_string(),
        moving_sql: Vec::new(),
        merge: MergePlan::Stream(StreamMerge {
            hidden: hidden.len(),
            sort,
            limit,
            offset,
        }),
        cursor: None,
        fallback: None,
    })
}

const REL: &str = "__pgshard_v";

fn col_name(i: usize) -> String {
    format!("__pgshard_c{i}")
}

fn col_ref(i: usize) -> Expr {
    Expr::CompoundIdentifier(vec![Ident::new(REL), Ident::new(col_name(i))])
}

fn push_unique(cols: &mut Vec<Expr>, e: &Expr) -> usize {
    match cols.iter().position(|c| c == e) {
        Some(i) => i,
        None => {
            cols.push(e.clone());
            cols.len() - 1
        }
    }
}

/// The inputs of an aggregate call: arguments, ORDER BY inside, WITHIN GROUP, FILTER.
fn aggregate_inputs(f: &Function) -> Result<Vec<&Expr>, String> {
    let mut out = Vec::new();
    match &f.args {
        FunctionArguments::None => {}
        FunctionArguments::Subquery(_) => return Err("aggregate over a subquery".to_owned()),
        FunctionArguments::List(l) => {
            for a in &l.args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => out.push(e),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {}
                    _ => return Err(format!("argument form of aggregate {}", f.name)),
                }
            }
            for c in &l.clauses {
                match c {
                    FunctionArgumentClause::OrderBy(obs) => out.extend(obs.iter().map(|o| &o.expr)),
                    _ => return Err(format!("clause of aggregate {}", f.name)),
                }
            }
        }
    }
    out.extend(f.within_group.iter().map(|o| &o.expr));
    if let Some(fl) = &f.filter {
        out.push(fl);
    }
    Ok(out)
}

/// Collect every aggregate call's inputs (outside subqueries).
struct InputCollector<'c> {
    cols: &'c mut Vec<Expr>,
    err: Option<String>,
}

impl Visitor for InputCollector<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.err
            .get_or_insert_with(|| "subquery in an aggregate query across shards".to_owned());
        ControlFlow::Break(())
    }
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            if is_aggregate(f) {
                match aggregate_inputs(f) {
                    Ok(ins) => {
                        for i in ins {
                            push_unique(self.cols, i);
                        }
                    }
                    Err(m) => {
                        self.err.get_or_insert(m);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Rewrites expressions of the top-level SELECT over the collected rows: group keys
/// and aggregate inputs become columns of the finishing relation.
struct Rewriter<'c> {
    groups: &'c [(Expr, usize)],
    cols: &'c [Expr],
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some((_, i)) = self.groups.iter().find(|(g, _)| g == e) {
            *e = col_ref(*i);
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            if is_aggregate(f) {
                let map = |x: &mut Expr, cols: &[Expr]| {
                    if let Some(i) = cols.iter().position(|c| c == x) {
                        *x = col_ref(i);
                    }
                };
                if let FunctionArguments::List(l) = &mut f.args {
                    for a in &mut l.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a {
                            map(x, self.cols);
                        }
                    }
                    for c in &mut l.clauses {
                        if let FunctionArgumentClause::OrderBy(obs) = c {
                            for o in obs {
                                map(&mut o.expr, self.cols);
                            }
                        }
                    }
                }
                for o in &mut f.within_group {
                    map(&mut o.expr, self.cols);
                }
                if let Some(fl) = &mut f.filter {
                    map(fl, self.cols);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Fails if a rewritten expression still reads a column of the original tables.
fn check_rewritten<T: Visit>(node: &T) -> Result<(), String> {
    struct F(Option<String>);
    impl Visitor for F {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let bad = match e {
                Expr::Identifier(id) => Some(id.to_string()),
                Expr::CompoundIdentifier(ids)
                    if ids.first().map(|i| i.value.as_str()) != Some(REL) =>
                {
                    Some(e.to_string())
                }
                Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => {
                    Some(format!("parameter {}", v.value))
                }
                _ => None,
            };
            if let Some(b) = bad {
                self.0.get_or_insert(b);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = F(None);
    let _ = node.visit(&mut f);
    match f.0 {
        Some(b) => Err(format!(
            "{b} outside an aggregate and not a GROUP BY expression in a multi-shard query"
        )),
        None => Ok(()),
    }
}

/// The final select list: rewritten expressions named as PostgreSQL names them.
fn final_items(items: &[SelectItem], rw: &mut Rewriter<'_>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for it in items {
        let (e, name) = match it {
            SelectItem::UnnamedExpr(e) => {
                let name = column_name(e).ok_or_else(|| {
                    format!("output column name of {e} in a multi-shard query (add a column alias)")
                })?;
                (e, Ident::with_quote('"', name))
            }
            SelectItem::ExprWithAlias { expr, alias } => (expr, alias.clone()),
            _ => {
                return Err(
                    "* in the select list of a multi-shard aggregate or DISTINCT".to_owned(),
                )
            }
        };
        let mut e = e.clone();
        let _ = VisitMut::visit(&mut e, rw);
        check_rewritten(&e)?;
        out.push(format!("{e} AS {name}"));
    }
    Ok(out)
}

/// Output names of the final select list (for ORDER BY references kept verbatim).
fn output_names(items: &[SelectItem]) -> Vec<String> {
    items
        .iter()
        .map(|it| match it {
            SelectItem::ExprWithAlias { alias, .. } => fold_ident(alias),
            SelectItem::UnnamedExpr(e) => column_name(e).unwrap_or_default(),
            _ => String::new(),
        })
        .collect()
}

fn limit_text(q: &Query) -> String {
    let mut s = String::new();
    if let Some(l) = &q.limit_clause {
        s.push_str(&l.to_string());
    }
    if let Some(f) = &q.fetch {
        s.push(' ');
        s.push_str(&f.to_string());
    }
    s
}

/// The shard query's common part: `WITH … SELECT` items `FROM … WHERE …`.
fn shard_select(
    q: &Query,
    sel: &Select,
    items: Vec<SelectItem>,
    distinct: Option<Distinct>,
) -> Select {
    let mut s = sel.clone();
    s.projection = items;
    s.distinct = distinct;
    s.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
    s.having = None;
    let _ = q;
    s
}

fn shard_query(q: &Query, s: Select, order: Option<sqlparser::ast::OrderBy>) -> String {
    let sq = Query {
        with: q.with.clone(),
        body: Box::new(SetExpr::Select(Box::new(s))),
        order_by: order,
        limit_clause: None,
        fetch: None,
        locks: Vec::new(),
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: Vec::new(),
    };
    sq.to_string()
}

fn finish_aggregate(
    q: &Query,
    sel: &Select,
    order: &[OrderByExpr],
    shards: Vec<ShardId>,
) -> Result<FanoutPlan, String> {
    let items = &sel.projection;
    if items.iter().any(is_wildcard) {
        return Err("* in the select list of a multi-shard aggregate".to_owned());
    }
    let group_exprs = match &sel.group_by {
        GroupByExpr::Expressions(es, mods) if mods.is_empty() => es.clone(),
        _ => return Err("GROUP BY ALL or GROUP BY modifiers in a multi-shard query".to_owned()),
    };
    let mut cols: Vec<Expr> = Vec::new();
    let mut groups: Vec<(Expr, usize)> = Vec::new();
    for g in &group_exprs {
        let g = match g {
            Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_) => {
                return Err("ROLLUP, CUBE or GROUPING SETS in a multi-shard query".to_owned())
            }
            // The empty grouping set: a grouping column `()` is not a valid select-list
            // item for the shards.
            Expr::Tuple(es) if es.is_empty() => {
                return Err("GROUP BY () in a multi-shard query".to_owned())
            }
            e if number(e).is_some() => {
                let (_, e) = resolve_output(e, items)?;
                e.clone()
            }
            Expr::Identifier(id) => {
                let name = fold_ident(id);
                let aliased = items.iter().any(|i| {
                    matches!(i, SelectItem::ExprWithAlias { alias, expr } if fold_ident(alias) == name && expr != g)
                });
                if aliased {
                    return Err(format!(
                        "GROUP BY output column alias {name} in a multi-shard query (group by the expression)"
                    ));
                }
                g.clone()
            }
            e => e.clone(),
        };
        let i = push_unique(&mut cols, &g);
        groups.push((g, i));
    }
    let mut collector = InputCollector {
        cols: &mut cols,
        err: None,
    };
    let _ = items.visit(&mut collector);
    let _ = sel.having.visit(&mut collector);
    let _ = order.to_vec().visit(&mut collector);
    if let Some(e) = collector.err {
        return Err(e);
    }
    if let Some(Distinct::On(es)) = &sel.distinct {
        if shape_of(&[es]).subquery {
            return Err("subquery in DISTINCT ON".to_owned());
        }
    }
    // Shard query: group keys and aggregate inputs, grouped, with multiplicities.
    let mut shard_items: Vec<SelectItem> = cols
        .iter()
        .enumerate()
        .map(|(i, e)| SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: alias(&col_name(i)),
        })
        .collect();
    shard_items.push(SelectItem::ExprWithAlias {
        expr: Expr::Function(Function {
            name: ObjectName::from(vec![Ident::new("count")]),
            uses_odbc_syntax: false,
            parameters: FunctionArguments::None,
            args: FunctionArguments::List(sqlparser::ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![FunctionArg::Unnamed(FunctionArgExpr::Wildcard)],
                clauses: Vec::new(),
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: Vec::new(),
        }),
        alias: alias("__pgshard_m"),
    });
    let mut s = shard_select(q, sel, shard_items, None);
    s.group_by = GroupByExpr::Expressions(
        (1..=cols.len())
            .map(|i| Expr::value(Value::Number(i.to_string(), false)))
            .collect(),
        Vec::new(),
    );
    let shard_sql = shard_query(q, s, None);

    // Finishing query.
    let mut rw = Rewriter {
        groups: &groups,
        cols: &cols,
    };
    let list = final_items(items, &mut rw)?;
    let mut before = String::from("SELECT ");
    match &sel.distinct {
        None => {}
        Some(Distinct::Distinct) => before.push_str("DISTINCT "),
        Some(Distinct::On(es)) => {
            let mut es = es.clone();
            let _ = VisitMut::visit(&mut es, &mut rw);
            check_rewritten(&es)?;
            before.push_str(&format!(
                "DISTINCT ON ({}) ",
                es.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    before.push_str(&list.join(", "));
    before.push_str(" FROM ");
    let mut after = format!(
        " CROSS JOIN LATERAL generate_series(1, {REL}.__pgshard_m) AS __pgshard_r(__pgshard_i)"
    );
    if !groups.is_empty() {
        after.push_str(" GROUP BY ");
        after.push_str(
            &groups
                .iter()
                .map(|(_, i)| col_ref(*i).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(h) = &sel.having {
        let mut h = h.clone();
        let _ = VisitMut::visit(&mut h, &mut rw);
        check_rewritten(&h)?;
        after.push_str(&format!(" HAVING {h}"));
    }
    let names = output_names(items);
    after.push_str(&final_order(order, &names, |e| {
        let mut e = e.clone();
        let _ = VisitMut::visit(&mut e, &mut rw);
        check_rewritten(&e)?;
        Ok(e)
    })?);
    after.push_str(&limit_text(q));
    check_no_params(&after)?;
    let mut columns: Vec<String> = (0..cols.len()).map(col_name).collect();
    columns.push("__pgshard_m".to_owned());
    Ok(FanoutPlan {
        tables: Vec::new(),
        shards,
        shard_sql,
        moving_sql: Vec::new(),
        merge: MergePlan::Finish(FinishPlan {
            before,
            after,
            relation: REL.to_owned(),
            columns,
        }),
        cursor: None,
        fallback: None,
    })
}

fn check_no_params(s: &str) -> Result<(), String> {
    if s.contains('$') {
        return Err(
            "parameter in ORDER BY, HAVING or LIMIT of a multi-shard aggregate or DISTINCT"
                .to_owned(),
        );
    }
    Ok(())
}

/// The finishing query's ORDER BY: ordinals and output names stay as written (they
/// name the finishing query's own output columns), other expressions are mapped.
fn final_order(
    order: &[OrderByExpr],
    names: &[String],
    mut map: impl FnMut(&Expr) -> Result<Expr, String>,
) -> Result<String, String> {
    if order.is_empty() {
        return Ok(String::new());
    }
    let mut parts = Vec::new();
    for ob in order {
        let keep = number(&ob.expr).is_some()
            || matches!(&ob.expr, Expr::Identifier(id) if names.contains(&fold_ident(id)));
        let e = if keep {
            ob.expr.clone()
        } else {
            map(&ob.expr)?
        };
        let mut o = ob.clone();
        o.expr = e;
        parts.push(o.to_string());
    }
    Ok(format!(" ORDER BY {}", parts.join(", ")))
}

fn finish_distinct(
    q: &Query,
    sel: &Select,
    order: &[OrderByExpr],
    shards: Vec<ShardId>,
) -> Result<FanoutPlan, String> {
    let items = &sel.projection;
    if items.iter().any(is_wildcard) {
        return Err("* in the select list of a multi-shard SELECT DISTINCT".to_owned());
    }
    let n = items.len();
    let mut extra: Vec<Expr> = Vec::new();
    let distinct_on = matches!(sel.distinct, Some(Distinct::On(_)));
    // Map an expression to a column of the collected rows, keeping an outer COLLATE.
    let map = |e: &Expr, extra: &mut Vec<Expr>| -> Result<Expr, String> {
        let (inner, collate) = match e {
            Expr::Collate { expr, collation } => (&**expr, Some(collation.clone())),
            e => (e, None),
        };
        let (visible, expr) = resolve_output(inner, items)?;
        let i = match visible {
            Some(j) => j,
            None if distinct_on => n + push_unique(extra, expr),
            None => {
                return Err(format!(
                    "ORDER BY {e} not in the select list of SELECT DISTINCT"
                ))
            }
        };
        Ok(match collate {
            Some(c) => Expr::Collate {
                expr: Box::new(col_ref(i)),
                collation: c,
            },
            None => col_ref(i),
        })
    };
    let mut before = String::from("SELECT ");
    if let Some(Distinct::On(es)) = &sel.distinct {
        let mut mapped = Vec::new();
        for e in es {
            mapped.push(map(e, &mut extra)?.to_string());
        }
        before.push_str(&format!("DISTINCT ON ({}) ", mapped.join(", ")));
    } else {
        before.push_str("DISTINCT ");
    }
    let names = output_names(items);
    let mut list = Vec::new();
    for (j, it) in items.iter().enumerate() {
        let name = match it {
            SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
            SelectItem::UnnamedExpr(e) => Ident::with_quote(
                '"',
                column_name(e).ok_or_else(|| {
                    format!("output column name of {e} in a multi-shard query (add a column alias)")
                })?,
            ),
            _ => return Err("* in SELECT DISTINCT".to_owned()),
        };
        list.push(format!("{} AS {name}", col_ref(j)));
    }
    before.push_str(&list.join(", "));
    before.push_str(" FROM ");
    let mut after = String::new();
    {
        let mut order_parts = Vec::new();
        for ob in order {
            let keep = number(&ob.expr).is_some()
                || matches!(&ob.expr, Expr::Identifier(id) if names.contains(&fold_ident(id)) && !distinct_on);
            let mut o = ob.clone();
            if !keep {
                o.expr = map(&ob.expr, &mut extra)?;
            }
            order_parts.push(o.to_string());
        }
        if !order_parts.is_empty() {
            after.push_str(&format!(" ORDER BY {}", order_parts.join(", ")));
        }
    }
    after.push_str(&limit_text(q));
    check_no_params(&after)?;
    let mut shard_items: Vec<SelectItem> = items.clone();
    for (k, e) in extra.iter().enumerate() {
        shard_items.push(hidden_item(e.clone(), k));
    }
    let s = shard_select(q, sel, shard_items, sel.distinct.clone());
    // DISTINCT ON keeps the shard's first row per key: the shard needs the ORDER BY.
    let shard_order = if distinct_on {
        q.order_by.clone()
    } else {
        None
    };
    let shard_sql = shard_query(q, s, shard_order);
    Ok(FanoutPlan {
        tables: Vec::new(),
        shards,
        shard_sql,
        moving_sql: Vec::new(),
        merge: MergePlan::Finish(FinishPlan {
            before,
            after,
            relation: REL.to_owned(),
            columns: (0..n + extra.len()).map(col_name).collect(),
        }),
        cursor: None,
        fallback: None,
    })
}

/// How sure a column name is (PostgreSQL's `FigureColnameInternal` strength).
#[derive(PartialEq, PartialOrd)]
enum Strength {
    None,
    Weak,
    Strong,
}

/// The name PostgreSQL gives an unaliased output expression, or `None` when the
/// planner is not sure.
pub fn column_name(e: &Expr) -> Option<String> {
    match figure(e)? {
        (_, Strength::None) => Some("?column?".to_owned()),
        (n, _) => Some(n),
    }
}

fn figure(e: &Expr) -> Option<(String, Strength)> {
    let strong = |s: &str| Some((s.to_owned(), Strength::Strong));
    let unnamed = || Some((String::new(), Strength::None));
    match e {
        Expr::Identifier(id) => Some((fold_ident(id), Strength::Strong)),
        Expr::CompoundIdentifier(ids) => ids.last().map(|i| (fold_ident(i), Strength::Strong)),
        Expr::Function(f) => {
            let name = function_name(f);
            if name.is_empty() || f.name.0.len() > 2 {
                return None;
            }
            match name.as_str() {
                // Parsed by PostgreSQL into other nodes or renamed functions.
                "trim" | "btrim" | "ltrim" | "rtrim" | "position" | "overlay" | "substring"
                | "extract" | "collation" | "normalize" | "xmlelement" | "xmlforest" => None,
                _ => strong(&name),
            }
        }
        Expr::Nested(inner) => figure(inner),
        Expr::Collate { expr, .. } => figure(expr),
        Expr::Cast {
            expr, data_type, ..
        } => {
            let inner = figure(expr)?;
            if inner.1 == Strength::Strong {
                Some(inner)
            } else {
                type_colname(data_type).map(|t| (t, Strength::Weak))
            }
        }
        Expr::Case { else_result, .. } => {
            if let Some(er) = else_result {
                let inner = figure(er)?;
                if inner.1 == Strength::Strong {
                    return Some(inner);
                }
            }
            Some(("case".to_owned(), Strength::Weak))
        }
        Expr::Exists { .. } => strong("exists"),
        Expr::Array(_) => Some(("array".to_owned(), Strength::Weak)),
        Expr::Value(_)
        | Expr::UnaryOp { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::Between { .. }
        | Expr::InList { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. } => unnamed(),
        Expr::BinaryOp { op, .. } => match op {
            BinaryOperator::Custom(_) | BinaryOperator::PGCustomBinaryOperator(_) => None,
            _ => unnamed(),
        },
        _ => None,
    }
}

/// The internal name PostgreSQL shows for a cast target type.
fn type_colname(dt: &DataType) -> Option<String> {
    let s = match dt {
        DataType::Int(None) | DataType::Integer(None) | DataType::Int4(None) => "int4",
        DataType::BigInt(None) | DataType::Int8(None) => "int8",
        DataType::SmallInt(None) | DataType::Int2(None) => "int2",
        DataType::Real | DataType::Float4 => "float4",
        DataType::DoublePrecision | DataType::Float8 | DataType::Double(_) => "float8",
        DataType::Numeric(_) | DataType::Decimal(_) | DataType::Dec(_) => "numeric",
        DataType::Text => "text",
        DataType::Varchar(_) | DataType::CharacterVarying(_) => "varchar",
        DataType::Boolean | DataType::Bool => "bool",
        DataType::Date => "date",
        DataType::JSONB => "jsonb",
        DataType::JSON => "json",
        DataType::Uuid => "uuid",
        DataType::Bytea => "bytea",
        DataType::Interval { .. } => "interval",
        _ => return None,
    };
    Some(s.to_owned())
}

#[cfg(test)]
mod tests;

//! The planner's entry points and per-statement dispatch (SPEC §5, §6, §7).
//!
//! A Query string is split into statements; each is planned by its leading keyword:
//! transaction and session commands, `PREPARE`/`EXECUTE`/`DEALLOCATE`, `EXPLAIN`,
//! `DECLARE`, `COPY` and the utility commands (`VACUUM`, `ANALYZE`, `TRUNCATE`, `LOCK`,
//! …) are read from their tokens, which also covers the forms sqlparser rejects. Queries,
//! DML and DDL are parsed once with sqlparser and routed from the AST ([`crate::route`]
//! for queries and DML); if sqlparser fails, the keyword fallback still routes the
//! statement (SPEC §5 rule 8: utility to all shards when it names a declared table,
//! anything unknown to the local shard, never dropped). The `/* pgshard: shard=N */` hint
//! then overrides the route of any statement that reaches a backend.
//!
//! Placement decisions that a later issue will change live in one place each:
//! [`crate::route::reference_write`] (reference-table writes) and the `multi_shard` /
//! `unpinned_message` helpers in `route` (fan-out), `copy` below (COPY splitting).

use crate::classify::replica_safe;
use crate::classify::{classify_table, first_non_paren, kind_of, TableClass};
use crate::parse::{
    name_parts, parse_statement, read_name, skip_parens, split_statements, tokens, Hint,
    StatementText, Tok, Token,
};
use crate::route::{fast_path, Analysis};

#[cfg(test)]
thread_local! {
    /// Tests turn the token fast path off to compare it with the full path.
    pub(crate) static FAST_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn fast_path_enabled() -> bool {
    #[cfg(test)]
    {
        FAST_PATH.with(std::cell::Cell::get)
    }
    #[cfg(not(test))]
    {
        true
    }
}
use crate::copy::{CopyDirection, CopyKey, CopyPlan};
use crate::{
    key_from_literal, shard_of, ExecuteArg, Plan, PlanError, Route, RouterCommand, StatementKind,
};
use pgshard_catalog::{Catalog, KeyValue, ShardId};
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnDef, ColumnOption, CommentObject, Expr,
    FunctionArg, FunctionArgExpr, FunctionArguments, GrantObjects, ObjectName, ObjectType, Query,
    SelectItem, SetExpr, Statement, Value,
};
use std::ops::ControlFlow;

/// Plan a Query string against a catalog snapshot.
///
/// The string may hold several statements separated by semicolons (the simple query
/// protocol allows it): each is planned (see [`Plan::statements`]) and the combined
/// route is their common target — statements that may run anywhere (`SET`, `BEGIN`,
/// `SELECT 1`) join any target — or `Unsupported("multi-statement query spanning
/// shards")`.
pub fn plan(sql: &str, catalog: &Catalog) -> Plan {
    SplitQuery::new(sql).plan(catalog)
}

/// A Query string split into statements once, with each statement's tokens: the
/// router reads the statement texts and session commands from it and plans it without
/// lexing the text again (issue 16: it used to be lexed by the router's split, then by
/// the planner's).
#[derive(Debug, Clone)]
pub struct SplitQuery<'a> {
    stmts: Vec<StatementText<'a>>,
}

impl<'a> SplitQuery<'a> {
    pub fn new(sql: &'a str) -> Self {
        SplitQuery {
            stmts: split_statements(sql),
        }
    }

    /// The statements, trimmed; statements of only whitespace and comments are
    /// dropped (as [`statement_texts`](crate::statement_texts)).
    pub fn texts(&self) -> Vec<&'a str> {
        self.stmts
            .iter()
            .filter(|s| !s.empty)
            .map(|s| s.text.trim())
            .collect()
    }

    /// The plan of the whole Query string (as [`plan`]).
    pub fn plan(&self, catalog: &Catalog) -> Plan {
        let mut plan = if let [one] = self.stmts.as_slice() {
            plan_one(one, catalog)
        } else {
            combine(self.stmts.iter().map(|s| plan_one(s, catalog)).collect())
        };
        crate::moving::attach(&mut plan, catalog);
        plan
    }
}

/// The kind of a Query string from its leading keywords only (no full parse): cheap
/// enough for the router's transaction tracking on every statement. Agrees with
/// [`plan`]'s `kind`.
pub fn statement_kind(sql: &str) -> StatementKind {
    let stmts = split_statements(sql);
    let kinds: Vec<StatementKind> = stmts.iter().map(|s| kind_of(&s.toks, s.text)).collect();
    combine_kinds(&kinds)
}

/// The tables a Query string names (folded, as written: `t`, `public.t`), in order of
/// first appearance, from the statements sqlparser can parse.
pub fn table_names(sql: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in split_statements(sql) {
        let Ok(stmts) = parse_statement(s.text) else {
            continue;
        };
        for st in &stmts {
            let _ = sqlparser::ast::visit_relations(st, |n| {
                let name = name_parts(n).join(".");
                if !out.contains(&name) {
                    out.push(name);
                }
                ControlFlow::<()>::Continue(())
            });
        }
    }
    out
}

/// The declared tables (their catalog names) a `DROP TABLE` in `sql` names: the router
/// forgets those distributed by `create_distributed_table`/`create_reference_table`
/// once they are gone from every shard (as Citus forgets a dropped table).
pub fn dropped_tables(sql: &str, catalog: &Catalog) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in split_statements(sql) {
        let Ok(stmts) = parse_statement(s.text) else {
            continue;
        };
        for st in &stmts {
            if let Statement::Drop {
                object_type: ObjectType::Table,
                names,
                ..
            } = st
            {
                for n in names {
                    let (class, name) = classify_table(catalog, &name_parts(n));
                    if class.is_declared() && !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
    }
    out
}

/// For a plan routed by a parameter, the route once the key value is known (at Bind):
/// the key's shard, or for a NULL key (`None`) the plan's [`Plan::null_key`] error or
/// any shard. Other routes are returned unchanged.
pub fn route_for_key(plan: &Plan, key: Option<&KeyValue>, catalog: &Catalog) -> Route {
    match &plan.route {
        Route::ShardByParam { .. } => match key {
            Some(k) => match shard_of(catalog, k) {
                Some(s) => Route::Shard(s),
                None => Route::Unsupported("no shard owns the bucket of this key".to_owned()),
            },
            None => plan.null_key.clone().map_or(Route::AnyShard, Route::Error),
        },
        other => other.clone(),
    }
}

/// True when an SQL-level prepared statement with this plan reads several shards: its
/// PREPARE goes to one shard (PostgreSQL checks it there), and each EXECUTE is planned
/// with [`execute_fanout`].
pub fn prepared_fanout(prepared: &Plan) -> bool {
    matches!(prepared.route, Route::Fanout(_))
}

/// The route of `EXECUTE name (args)` of a multi-shard read prepared by `prepare_text`
/// (the whole `PREPARE` statement, see [`prepared_fanout`]): the prepared statement
/// with each `$n` replaced by its argument as a constant of the declared parameter
/// type, planned as a statement of its own (a fan-out, or the one shard the arguments
/// pin it to, where the EXECUTE itself goes). PostgreSQL evaluates EXECUTE's
/// arguments once and coerces them to the parameter types; a constant cast to the type
/// is the same value. An argument that is an expression (it might be volatile) or an
/// undeclared parameter type is refused; a wrong argument count goes to a shard for
/// PostgreSQL to report.
pub fn execute_fanout(prepare_text: &str, args: &[ExecuteArg], catalog: &Catalog) -> Route {
    let Route::Router(RouterCommand::Prepare {
        statement,
        param_types,
        plan,
        ..
    }) = crate::plan(prepare_text, catalog).route
    else {
        return Route::Unsupported("EXECUTE of a statement prepared again differently".to_owned());
    };
    if !prepared_fanout(&plan) {
        return route_execute(&plan, args, catalog);
    }
    // PostgreSQL's count: the declared types, and any parameter used beyond them
    // (its type inferred, and unknown here).
    let toks = tokens(&statement);
    let used = toks
        .iter()
        .filter_map(|t| match t.tok {
            Tok::Param(n) => Some(n),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if args.len() != used.max(param_types.len()) {
        // PostgreSQL reports the wrong number of parameters.
        return Route::AnyShard;
    }
    if used > param_types.len() {
        return Route::Unsupported(
            "EXECUTE of a multi-shard statement whose PREPARE does not declare every parameter type".to_owned(),
        );
    }
    let mut values = Vec::with_capacity(args.len());
    for (n, (arg, ty)) in args.iter().zip(&param_types).enumerate() {
        let quoted = |v: &str| format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
        values.push(match arg {
            ExecuteArg::Literal(v) => format!("CAST({} AS {ty})", quoted(v)),
            ExecuteArg::Numeric(v) => format!("CAST(CAST({} AS numeric) AS {ty})", quoted(v)),
            ExecuteArg::Null => format!("CAST(NULL AS {ty})"),
            ExecuteArg::Expr(_) => {
                return Route::Unsupported(format!(
                    "EXECUTE of a multi-shard statement with argument ${} an expression (only constants are written into the shards' statement)",
                    n + 1
                ))
            }
        });
    }
    let mut text = String::with_capacity(statement.len() + 32);
    let mut at = 0;
    for t in &toks {
        if let Tok::Param(n) = t.tok {
            let Some(v) = values.get(n.wrapping_sub(1)) else {
                return Route::AnyShard;
            };
            text.push_str(&statement[at..t.start]);
            text.push('(');
            text.push_str(v);
            text.push(')');
            at = t.end;
        }
    }
    text.push_str(&statement[at..]);
    match crate::plan(&text, catalog) {
        Plan {
            route: route @ Route::Fanout(_),
            kind: StatementKind::Read,
            ..
        } => route,
        // The arguments pin it to one shard: the EXECUTE itself goes there.
        Plan {
            route: route @ Route::Shard(_),
            kind: StatementKind::Read,
            ..
        } => route,
        Plan {
            route: route @ (Route::Unsupported(_) | Route::Error(_)),
            ..
        } => route,
        _ => Route::Unsupported(
            "EXECUTE of a multi-shard statement that its arguments make another kind of statement"
                .to_owned(),
        ),
    }
}

/// The route of an SQL-level `EXECUTE` of a statement prepared with plan `prepared`.
pub fn route_execute(prepared: &Plan, args: &[ExecuteArg], catalog: &Catalog) -> Route {
    let Route::ShardByParam { param, key_type } = &prepared.route else {
        return prepared.route.clone();
    };
    match args.get(param.wrapping_sub(1)) {
        Some(ExecuteArg::Literal(text)) => match key_from_literal(text, *key_type) {
            Some(k) => route_for_key(prepared, Some(&k), catalog),
            None => Route::Unsupported(format!(
                "EXECUTE argument ${param} is not a {key_type} constant, so its shard is unknown"
            )),
        },
        Some(ExecuteArg::Numeric(text)) => match crate::constant::round_numeric(text) {
            Some(n) if key_type.is_integer() => match key_from_literal(&n.to_string(), *key_type) {
                Some(k) => route_for_key(prepared, Some(&k), catalog),
                None => Route::Unsupported(format!(
                    "EXECUTE argument ${param} is out of the range of {key_type}, so its shard is unknown"
                )),
            },
            _ => Route::Unsupported(format!(
                "EXECUTE argument ${param} is a numeric constant routing a {key_type} key"
            )),
        },
        Some(ExecuteArg::Null) => route_for_key(prepared, None, catalog),
        Some(ExecuteArg::Expr(_)) => Route::Unsupported(format!(
            "EXECUTE argument ${param} routes the statement and must be a constant"
        )),
        // PostgreSQL reports the wrong parameter count.
        None => Route::AnyShard,
    }
}

fn combine_kinds(kinds: &[StatementKind]) -> StatementKind {
    match kinds {
        [] => StatementKind::Empty,
        [k, rest @ ..] if rest.iter().all(|r| r == k) => k.clone(),
        _ => [
            StatementKind::Write,
            StatementKind::Ddl,
            StatementKind::Read,
        ]
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or(StatementKind::Other),
    }
}

fn combine(plans: Vec<Plan>) -> Plan {
    let kinds: Vec<StatementKind> = plans.iter().map(|p| p.kind.clone()).collect();
    let kind = combine_kinds(&kinds);
    let mut target: Option<Route> = None;
    let mut refused: Option<Route> = None;
    for p in &plans {
        match &p.route {
            Route::Error(_) | Route::Unsupported(_) => {
                refused.get_or_insert_with(|| p.route.clone());
            }
            Route::Router(_) => {
                refused.get_or_insert_with(|| {
                    Route::Unsupported(
                        "pgshard command (create_distributed_table, pgshard.shard, PREPARE, EXECUTE…) in a multi-statement query".to_owned(),
                    )
                });
            }
            Route::ShardByParam { .. } => {
                refused.get_or_insert_with(|| {
                    Route::Unsupported("parameters in a multi-statement query".to_owned())
                });
            }
            Route::InsertByParams(pi) => {
                refused.get_or_insert_with(|| Route::Unsupported(pi.refusal.clone()));
            }
            Route::Copy(_) => {
                refused.get_or_insert_with(|| {
                    Route::Unsupported(
                        "COPY into or out of a sharded table in a multi-statement query".to_owned(),
                    )
                });
            }
            Route::Fanout(crate::FanoutPlan { tables, .. })
            | Route::FanoutWrite(crate::FanoutWrite { tables, .. }) => {
                refused.get_or_insert_with(|| {
                    Route::Unsupported(format!(
                        "multi-shard statement on distributed table {} without a shard key filter in a multi-statement query",
                        tables.join(", ")
                    ))
                });
            }
            Route::AnyShard => {}
            r @ (Route::Shard(_) | Route::AllShards) => match &target {
                None => target = Some(r.clone()),
                Some(t) if t == r => {}
                Some(_) => {
                    refused.get_or_insert_with(|| {
                        Route::Unsupported("multi-statement query spanning shards".to_owned())
                    });
                }
            },
        }
    }
    let replica_ok = !plans.is_empty() && plans.iter().all(|p| p.replica_ok);
    Plan {
        route: refused.or(target).unwrap_or(Route::AnyShard),
        kind,
        null_key: None,
        statements: plans,
        column_order: false,
        rewritten: None,
        replica_ok,
    }
}

/// The route of `DECLARE … CURSOR FOR <query>` given the query's: a multi-shard read
/// becomes a router-held cursor ([`crate::cursor`]); a binary one is refused (the router
/// keeps the rows in text).
fn declare_route(route: Route, decl: crate::CursorDecl) -> Route {
    match route {
        Route::Router(_) => Route::Unsupported("cursor over a pgshard command".to_owned()),
        Route::Fanout(f) if matches!(f.merge, crate::MergePlan::Collect(_)) => {
            Route::Unsupported(format!(
                "DECLARE CURSOR of a query that needs its tables collected on one shard (distributed table {})",
                f.tables.join(", ")
            ))
        }
        Route::Fanout(_) if decl.binary => Route::Unsupported(
            "DECLARE BINARY CURSOR of a multi-shard statement (declare it without BINARY and fetch with binary results)".to_owned(),
        ),
        Route::Fanout(mut f) => {
            f.cursor = Some(decl);
            f.fallback = None;
            Route::Fanout(f)
        }
        Route::FanoutWrite(w) => Route::Unsupported(format!(
            "DECLARE CURSOR of a multi-shard statement on distributed table {} (not yet supported)",
            w.tables.join(", ")
        )),
        r => r,
    }
}

/// Plan a piece of text holding one statement (the body of PREPARE, EXPLAIN…). These
/// do not nest in PostgreSQL (`EXPLAIN EXPLAIN …` is a syntax error), so a nested one
/// goes to the local shard for PostgreSQL to reject, without recursing.
///
/// `what` names the enclosing command: a multi-shard statement inside it is refused
/// (the router merges only plain multi-shard statements).
fn plan_text(text: &str, what: &str, catalog: &Catalog) -> Plan {
    let mut plan = plan_nested(text, catalog);
    let tables = match &plan.route {
        Route::Fanout(f) => Some(&f.tables),
        Route::FanoutWrite(w) => Some(&w.tables),
        _ => None,
    };
    if let Some(t) = tables {
        plan.route = Route::Unsupported(format!(
            "{what} of a multi-shard statement on distributed table {} (not yet supported)",
            t.join(", ")
        ));
    }
    plan
}

/// The plan of a statement nested in another (see [`plan_text`]), multi-shard routes
/// kept for the caller to judge.
fn plan_nested(text: &str, catalog: &Catalog) -> Plan {
    let toks = tokens(text);
    let first = word(&toks, first_non_paren(&toks));
    if ["EXPLAIN", "PREPARE", "DECLARE", "COPY"].contains(&first.as_str()) {
        return Plan::new(Route::Shard(catalog.local_shard), kind_of(&toks, text));
    }
    let stmts = split_statements(text);
    match stmts.as_slice() {
        [one] => plan_one(one, catalog),
        _ => combine(stmts.iter().map(|s| plan_one(s, catalog)).collect()),
    }
}

/// Statements with more tokens than this are planned on a stack of their own: the
/// AST of a long operator chain (`a = 1 OR a = 2 OR …`) is as deep as the chain, and
/// sqlparser's visitor, its `Drop` and the walk in `route` all recurse over it.
const DEEP_STATEMENT_TOKENS: usize = 1_000;
/// Stack per token for such statements (generous: debug builds use ~2 KiB per level).
const STACK_PER_TOKEN: usize = 16 * 1024;
/// Beyond this stack size a statement is not parsed at all but routed by keywords.
const MAX_STACK: usize = 1 << 30;

fn plan_one(stmt: &StatementText<'_>, catalog: &Catalog) -> Plan {
    let toks = &stmt.toks;
    let kind = kind_of(toks, stmt.text);
    let mut plan = if toks.is_empty() {
        Plan::new(Route::AnyShard, StatementKind::Empty)
    } else if toks.len() > DEEP_STATEMENT_TOKENS {
        let stack = toks.len().saturating_mul(STACK_PER_TOKEN);
        if stack > MAX_STACK {
            let first = word(toks, first_non_paren(toks));
            let route = fallback(&first, toks, &kind, "statement too large to parse", catalog);
            Plan::new(route, kind)
        } else {
            stacker::grow(stack, || dispatch(stmt.text, toks, kind, catalog))
        }
    } else if crate::views::may_name_view(toks, catalog) {
        match with_views(stmt.text, &kind, catalog) {
            Some(plan) => plan,
            None => dispatch(stmt.text, toks, kind, catalog),
        }
    } else {
        dispatch(stmt.text, toks, kind, catalog)
    };
    if let Some(hint) = &stmt.hint {
        let overridable = !matches!(plan.route, Route::Router(_))
            && !matches!(
                plan.kind,
                StatementKind::Begin
                    | StatementKind::Commit
                    | StatementKind::Rollback
                    | StatementKind::Savepoint
                    | StatementKind::SessionSet
                    | StatementKind::SessionShow
                    | StatementKind::Prepared
                    | StatementKind::Empty
            );
        if overridable {
            plan.null_key = None;
            plan.route = match hint {
                Hint::Shard(n) => match existing_shard(catalog, *n) {
                    Some(s) => Route::Shard(s),
                    None => Route::Error(PlanError::UnknownShard { shard: *n }),
                },
                Hint::Malformed(text) => Route::Error(PlanError::InvalidShardSetting {
                    value: text.clone(),
                }),
            };
        }
    }
    plan.replica_ok = plan.kind == StatementKind::Read && replica_safe(toks);
    plan
}

/// `CREATE [OR REPLACE] VIEW` whose query reads distributed tables (directly or
/// through views the router keeps, written in): the router command that records it
/// ([`crate::views`]). `None`: a view PostgreSQL keeps on the local shard.
fn create_view(st: &Statement, catalog: &Catalog) -> Option<Route> {
    let Statement::CreateView {
        or_alter,
        or_replace,
        materialized,
        name,
        columns,
        query,
        options,
        temporary,
        if_not_exists,
        to,
        ..
    } = st
    else {
        return None;
    };
    let mut q = (**query).clone();
    let expanded = match crate::views::expand(&mut q, catalog) {
        Ok(e) => e,
        Err(msg) => return Some(Route::Unsupported(msg)),
    };
    let mut a = Analysis::new(catalog);
    a.statement(&Statement::Query(Box::new(q.clone())));
    let reads = a.occs.first().map(|o| o.table.clone());
    if reads.is_none() && !expanded {
        return None;
    }
    let what = match &reads {
        Some(t) => format!("view over distributed table {t}"),
        None => "view over views of distributed tables".to_owned(),
    };
    let unsupported = |why: &str| Some(Route::Unsupported(format!("{why} {what}")));
    if *materialized {
        return unsupported("materialized");
    }
    if *temporary {
        return unsupported("temporary");
    }
    if *or_alter || *if_not_exists || to.is_some() {
        return unsupported("this form of");
    }
    if !matches!(options, sqlparser::ast::CreateTableOptions::None) {
        return unsupported("options of");
    }
    if columns
        .iter()
        .any(|c| c.data_type.is_some() || c.options.is_some())
    {
        return unsupported("column options of");
    }
    let parts = name_parts(name);
    if parts.len() > 2 || parts.first().is_some_and(|p| p.starts_with("pg_temp")) {
        return unsupported("this name for a");
    }
    let joined = parts.join(".");
    let view = joined
        .strip_prefix("public.")
        .map_or(joined.clone(), str::to_owned);
    if classify_table(catalog, &parts).0.is_declared() {
        return Some(Route::Unsupported(format!(
            "a view named like declared table {view}"
        )));
    }
    let cols: Vec<String> = columns
        .iter()
        .map(|c| crate::parse::fold_ident(&c.name))
        .collect();
    let mut check = st.clone();
    if let Statement::CreateView { query, .. } = &mut check {
        **query = q.clone();
    }
    Some(Route::Router(RouterCommand::CreateView {
        name: view,
        columns: cols,
        query: q.to_string(),
        replace: *or_replace,
        check_sql: check.to_string(),
    }))
}

/// The plan of a statement that names a view the router keeps ([`crate::views`]): a
/// SELECT planned with the view written in, anything else refused. `None`: planned
/// as usual (CREATE VIEW and DROP VIEW, a name that is not the view's).
fn with_views(text: &str, kind: &StatementKind, catalog: &Catalog) -> Option<Plan> {
    let stmts = parse_statement(text).ok()?;
    let [st] = stmts.as_slice() else {
        return None;
    };
    let refuse = |msg: String| Some(Plan::new(Route::Unsupported(msg), kind.clone()));
    match st {
        Statement::CreateView { .. } | Statement::Drop { .. } => None,
        Statement::Query(q) => {
            let mut q = (**q).clone();
            match crate::views::expand(&mut q, catalog) {
                Err(msg) => refuse(msg),
                Ok(false) => None,
                Ok(true) => {
                    if let SetExpr::Select(s) = q.body.as_ref() {
                        if s.into.is_some() {
                            return refuse(
                                "SELECT INTO from a view over distributed tables".to_owned(),
                            );
                        }
                    }
                    let st = Statement::Query(Box::new(q));
                    let (route, _) = analyse_with(&st, catalog, true);
                    let mut plan = Plan::new(route, kind.clone());
                    plan.rewritten = Some(st.to_string());
                    Some(plan)
                }
            }
        }
        other => crate::views::named_view(other, catalog).and_then(|v| {
            refuse(format!(
                "view {v} over distributed tables in a statement other than SELECT"
            ))
        }),
    }
}

fn existing_shard(catalog: &Catalog, n: u64) -> Option<ShardId> {
    catalog
        .shards
        .iter()
        .map(|s| s.id)
        .find(|id| u64::from(id.0) == n)
}

/// The word at `i` in uppercase (empty for anything else).
fn word(toks: &[Token<'_>], i: usize) -> crate::parse::Upper {
    match toks.get(i).map(|t| t.tok) {
        Some(Tok::Word(w)) => crate::parse::Upper::new(w),
        _ => crate::parse::Upper::new(""),
    }
}

fn is_word(toks: &[Token<'_>], i: usize, kw: &str) -> bool {
    toks.get(i).is_some_and(|t| t.tok.is_word(kw))
}

fn dispatch(text: &str, toks: &[Token<'_>], kind: StatementKind, catalog: &Catalog) -> Plan {
    let i = first_non_paren(toks);
    let local = Route::Shard(catalog.local_shard);
    let first = word(toks, i);
    let route = match first.as_str() {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            if kind == StatementKind::Other {
                two_phase()
            } else {
                Route::AnyShard
            }
        }
        "PREPARE" => {
            if is_word(toks, i + 1, "transaction") {
                two_phase()
            } else {
                prepare(text, toks, i, catalog)
            }
        }
        "EXECUTE" => execute(text, toks, i),
        "DEALLOCATE" => deallocate(toks, i),
        "SET" => set(toks, i, catalog),
        "RESET" => match read_name(toks, i + 1) {
            Some((p, _)) if is_shard_setting(&p) => Route::Router(RouterCommand::ResetShard),
            Some((p, _)) if is_read_from_setting(&p) => Route::Router(RouterCommand::ResetReadFrom),
            _ => Route::AnyShard,
        },
        "SHOW" => match read_name(toks, i + 1) {
            Some((p, _)) if is_shard_setting(&p) => Route::Router(RouterCommand::ShowShard),
            Some((p, _)) if is_read_from_setting(&p) => Route::Router(RouterCommand::ShowReadFrom),
            _ => Route::AnyShard,
        },
        "DISCARD" | "FETCH" | "MOVE" | "CLOSE" => Route::AnyShard,
        "EXPLAIN" => {
            let (inner, _) = crate::classify::explain_inner(toks);
            match inner {
                Some(off) => {
                    let p = plan_text(&text[off..], "EXPLAIN", catalog);
                    return Plan {
                        route: match p.route {
                            Route::Router(_) => {
                                Route::Unsupported("EXPLAIN of a pgshard command".to_owned())
                            }
                            Route::Fanout(f) if matches!(f.merge, crate::MergePlan::Collect(_)) => {
                                Route::Unsupported(format!(
                                    "EXPLAIN of a query that needs its tables collected on one shard (distributed table {})",
                                    f.tables.join(", ")
                                ))
                            }
                            Route::Fanout(mut f) => {
                                f.fallback = None;
                                Route::Fanout(f)
                            }
                            r => r,
                        },
                        kind,
                        null_key: p.null_key,
                        statements: Vec::new(),
                        column_order: false,
                        rewritten: None,
                        replica_ok: false,
                    };
                }
                None => Route::AnyShard,
            }
        }
        "DECLARE" => match crate::cursor::declaration(toks, i) {
            // DECLARE name … CURSOR … FOR query
            Some((decl, f)) => {
                let p = plan_nested(&text[toks[f].end..], catalog);
                return Plan {
                    route: declare_route(p.route, decl),
                    kind,
                    null_key: p.null_key,
                    statements: Vec::new(),
                    column_order: false,
                    rewritten: None,
                    replica_ok: false,
                };
            }
            None => local,
        },
        "COPY" => copy(text, toks, i, catalog),
        "VACUUM" | "ANALYZE" | "ANALYSE" | "CLUSTER" | "REINDEX" | "TRUNCATE" | "LOCK" => {
            utility(&first, toks, i, catalog)
        }
        "CHECKPOINT" => Route::AllShards,
        // LISTEN and NOTIFY must meet on one instance; the local shard is where
        // `pg_notify()` and anything else unknown goes too.
        "LISTEN" | "UNLISTEN" | "NOTIFY" | "DO" | "CALL" | "LOAD" => local,
        _ => {
            if fast_path_enabled() {
                if let Some((route, null_key)) = fast_path(toks, catalog) {
                    let mut plan = Plan::new(route, kind);
                    plan.null_key = null_key;
                    return plan;
                }
            }
            // `CREATE TABLE … AS EXECUTE q`: the prepared statement may read several
            // shards (a multi-shard read runs as a fan-out only as EXECUTE itself).
            if first.as_str() == "CREATE"
                && toks
                    .windows(2)
                    .any(|w| w[0].tok.is_word("as") && w[1].tok.is_word("execute"))
            {
                return Plan::new(
                    Route::Unsupported(
                        "CREATE TABLE … AS EXECUTE (the prepared statement may read several shards)".to_owned(),
                    ),
                    kind,
                );
            }
            if crate::standin::names_marker(toks) {
                return Plan::new(
                    Route::Unsupported(
                        "a statement naming pgshard_symmetric or pgshard_exclude_* (names reserved by the router)".to_owned(),
                    ),
                    kind,
                );
            }
            return match parse_statement(text) {
                Ok(stmts) => match stmts.as_slice() {
                    [] => Plan::new(Route::AnyShard, StatementKind::Empty),
                    [one] => {
                        let (route, null_key) = plan_ast(one, catalog);
                        Plan {
                            route,
                            kind,
                            null_key,
                            statements: Vec::new(),
                            column_order: false,
                            rewritten: None,
                            replica_ok: false,
                        }
                    }
                    many => combine(
                        many.iter()
                            .map(|st| {
                                let (route, null_key) = plan_ast(st, catalog);
                                Plan {
                                    route,
                                    kind: kind.clone(),
                                    null_key,
                                    statements: Vec::new(),
                                    column_order: false,
                                    rewritten: None,
                                    replica_ok: false,
                                }
                            })
                            .collect(),
                    ),
                },
                Err(err) => match planned_from_stand_in(text, &kind, catalog) {
                    Some(plan) => plan,
                    None => Plan::new(fallback(&first, toks, &kind, &err, catalog), kind),
                },
            };
        }
    };
    Plan::new(route, kind)
}

/// A statement sqlparser cannot parse, planned from its stand-in text when it has one
/// and the plan's texts can be restored ([`crate::standin`]).
fn planned_from_stand_in(text: &str, kind: &StatementKind, catalog: &Catalog) -> Option<Plan> {
    let alt = crate::standin::stand_in(text)?;
    let stmts = parse_statement(&alt).ok()?;
    let [one] = stmts.as_slice() else {
        return None;
    };
    let (route, null_key) = plan_ast(one, catalog);
    Some(Plan {
        route: crate::standin::restore_route(route)?,
        kind: kind.clone(),
        null_key,
        statements: Vec::new(),
        column_order: false,
        rewritten: None,
        replica_ok: false,
    })
}

fn two_phase() -> Route {
    Route::Unsupported(
        "two-phase commit commands (PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED) through the router".to_owned(),
    )
}

fn is_shard_setting(parts: &[String]) -> bool {
    parts.len() == 2 && parts[0] == "pgshard" && parts[1] == "shard"
}

fn is_read_from_setting(parts: &[String]) -> bool {
    parts.len() == 2 && parts[0] == "pgshard" && parts[1] == "read_from"
}

/// `SET [SESSION] pgshard.read_from {TO | =} {primary | replica | any | DEFAULT}`
/// (tokens from `v`, the value).
fn set_read_from(toks: &[Token<'_>], v: usize) -> Route {
    let value = match toks.get(v).map(|t| t.tok) {
        Some(t @ Tok::Word(_)) if t.is_word("default") && toks.len() == v + 1 => {
            return Route::Router(RouterCommand::ResetReadFrom)
        }
        Some(t @ Tok::Str { .. }) => t.string_value().unwrap_or_default(),
        Some(Tok::Word(w)) => w.to_owned(),
        _ => String::new(),
    };
    match pgshard_catalog::config::ReadFrom::parse(value.trim()) {
        Some(from) if toks.len() == v + 1 => Route::Router(RouterCommand::SetReadFrom { from }),
        _ => Route::Error(PlanError::InvalidReadFrom { value }),
    }
}

/// `SET [SESSION | LOCAL] name {TO | =} value`.
fn set(toks: &[Token<'_>], i: usize, catalog: &Catalog) -> Route {
    let mut j = i + 1;
    let mut local = false;
    if is_word(toks, j, "session") {
        j += 1;
    } else if is_word(toks, j, "local") {
        local = true;
        j += 1;
    }
    let Some((parts, k)) = read_name(toks, j) else {
        return Route::AnyShard;
    };
    if is_read_from_setting(&parts) && !local {
        let eq = is_word(toks, k, "to") || toks.get(k).map(|t| t.tok) == Some(Tok::Punct(b'='));
        return set_read_from(toks, if eq { k + 1 } else { toks.len() });
    }
    if !is_shard_setting(&parts) {
        return Route::AnyShard;
    }
    let v = if is_word(toks, k, "to") || toks.get(k).map(|t| t.tok) == Some(Tok::Punct(b'=')) {
        k + 1
    } else {
        return Route::Error(PlanError::InvalidShardSetting {
            value: String::new(),
        });
    };
    let value = match toks.get(v).map(|t| t.tok) {
        Some(t @ Tok::Word(_)) if t.is_word("default") => {
            return Route::Router(RouterCommand::ResetShard)
        }
        Some(Tok::Number(n)) => n.to_owned(),
        Some(t @ Tok::Str { .. }) => t.string_value().unwrap_or_default(),
        Some(Tok::Word(w)) => w.to_owned(),
        _ => String::new(),
    };
    match value.trim().parse::<u64>() {
        Ok(n) if toks.len() == v + 1 => match existing_shard(catalog, n) {
            Some(shard) => Route::Router(RouterCommand::SetShard { shard, local }),
            None => Route::Error(PlanError::UnknownShard { shard: n }),
        },
        _ => Route::Error(PlanError::InvalidShardSetting { value }),
    }
}

/// `PREPARE name [(type, …)] AS statement`.
fn prepare(text: &str, toks: &[Token<'_>], i: usize, catalog: &Catalog) -> Route {
    let local = Route::Shard(catalog.local_shard);
    let Some(name) = toks.get(i + 1).and_then(|t| t.tok.ident()) else {
        return local;
    };
    let mut j = i + 2;
    let mut param_types = Vec::new();
    if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        let end = skip_parens(toks, j);
        param_types = split_args(text, toks, j, end)
            .into_iter()
            .map(|(s, _)| s.to_owned())
            .collect();
        j = end;
    }
    if !is_word(toks, j, "as") {
        // Malformed: PostgreSQL reports the syntax error.
        return local;
    }
    let statement = text[toks[j].end..].trim().to_owned();
    // A multi-shard read is kept: EXECUTE runs it as a fan-out of its text with the
    // arguments written in ([`execute_fanout`]). Other multi-shard statements are
    // refused.
    let nested = plan_nested(&statement, catalog);
    let plan = match &nested.route {
        Route::Fanout(f) if f.cursor.is_none() && nested.kind == StatementKind::Read => nested,
        _ => plan_text(&statement, "PREPARE", catalog),
    };
    Route::Router(RouterCommand::Prepare {
        name,
        param_types,
        statement,
        plan: Box::new(plan),
    })
}

/// The comma-separated items of the parenthesised group `toks[open..end]` (`end` just
/// after the closing parenthesis): each item's text and token range.
fn split_args<'t>(
    text: &'t str,
    toks: &[Token<'_>],
    open: usize,
    end: usize,
) -> Vec<(&'t str, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let close = end.saturating_sub(1);
    let mut depth = 0usize;
    let mut item_start = open + 1;
    for k in open + 1..=close.min(toks.len().saturating_sub(1)) {
        match toks[k].tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') if depth > 0 => depth -= 1,
            Tok::Punct(b',') | Tok::Punct(b')') if depth == 0 => {
                if k > item_start {
                    let s = toks[item_start].start;
                    let e = toks[k - 1].end;
                    out.push((text[s..e].trim(), item_start..k));
                }
                item_start = k + 1;
            }
            _ => {}
        }
    }
    out
}

/// `EXECUTE name [(arg, …)]`.
fn execute(text: &str, toks: &[Token<'_>], i: usize) -> Route {
    let Some(name) = toks.get(i + 1).and_then(|t| t.tok.ident()) else {
        return Route::AnyShard;
    };
    let mut args = Vec::new();
    let j = i + 2;
    if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        let end = skip_parens(toks, j);
        for (arg_text, range) in split_args(text, toks, j, end) {
            let t: Vec<Tok<'_>> = toks[range].iter().map(|t| t.tok).collect();
            let arg = match t.as_slice() {
                [s @ Tok::Str { .. }] => ExecuteArg::Literal(s.string_value().unwrap_or_default()),
                [w] if w.is_word("null") => ExecuteArg::Null,
                [Tok::Punct(b'-'), Tok::Number(n)] if !crate::constant::is_integer(n) => {
                    ExecuteArg::Numeric(format!("-{n}"))
                }
                [Tok::Punct(b'+'), Tok::Number(n)] | [Tok::Number(n)]
                    if !crate::constant::is_integer(n) =>
                {
                    ExecuteArg::Numeric((*n).to_owned())
                }
                _ => match crate::constant::integer_expr(&t) {
                    Some(v) => ExecuteArg::Literal(v.to_string()),
                    None => ExecuteArg::Expr(arg_text.to_owned()),
                },
            };
            args.push(arg);
        }
    }
    Route::Router(RouterCommand::Execute { name, args })
}

/// `DEALLOCATE [PREPARE] {name | ALL}`.
fn deallocate(toks: &[Token<'_>], i: usize) -> Route {
    let mut j = i + 1;
    if is_word(toks, j, "prepare") {
        j += 1;
    }
    match toks.get(j) {
        Some(t) if t.tok.is_word("all") => Route::Router(RouterCommand::Deallocate { name: None }),
        Some(t) => match t.tok.ident() {
            Some(name) => Route::Router(RouterCommand::Deallocate { name: Some(name) }),
            None => Route::AnyShard,
        },
        None => Route::AnyShard,
    }
}

/// `COPY table [(cols)] {FROM | TO} …` and `COPY (query) TO …` (see [`crate::copy`]).
///
/// COPY FROM STDIN into a distributed or reference table and COPY TO STDOUT from a
/// distributed table (or a plain multi-shard query) become [`Route::Copy`]; the router
/// splits or concatenates the data streams. Other COPYs go where their table lives.
fn copy(text: &str, toks: &[Token<'_>], i: usize, catalog: &Catalog) -> Route {
    let local = Route::Shard(catalog.local_shard);
    let mut j = i + 1;
    if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        let end = skip_parens(toks, j);
        let (Some(open), Some(close)) = (toks.get(j), toks.get(end.saturating_sub(1))) else {
            return local;
        };
        if close.start <= open.end {
            return local;
        }
        let query = &text[open.end..close.start];
        let inner = plan_nested(query, catalog);
        return match inner.route {
            Route::Router(_) => Route::Unsupported("COPY of a pgshard command".to_owned()),
            Route::ShardByParam { .. } => {
                Route::Unsupported("COPY of a query routed by a parameter".to_owned())
            }
            Route::Fanout(f) if f.shards.len() > 1 => {
                copy_query_out(text, toks, end, query, f, catalog)
            }
            Route::FanoutWrite(w) => Route::Unsupported(format!(
                "COPY of a multi-shard statement on distributed table {} (not yet supported)",
                w.tables.join(", ")
            )),
            r => r,
        };
    }
    let binary_prefix = is_word(toks, j, "binary");
    if binary_prefix {
        j += 1;
    }
    let Some((parts, k)) = read_name(toks, j) else {
        return local;
    };
    let (class, name) = classify_table(catalog, &parts);
    if !class.is_declared() {
        return local;
    }
    let statement = match crate::copy::read_tail(toks, k, binary_prefix) {
        Ok(s) => s,
        Err(msg) => return Route::Unsupported(format!("{msg} on table {name}")),
    };
    let from = statement.direction == CopyDirection::In;
    let key = match class {
        TableClass::Distributed { key, key_type, .. } => Some(CopyKey {
            column: key.to_owned(),
            key_type,
        }),
        TableClass::Reference(_) if from => None,
        // One shard holds every row of a reference table.
        TableClass::Reference(_) => return Route::AnyShard,
        TableClass::Local | TableClass::Catalog => return local,
    };
    if !statement.stdio {
        return Route::Unsupported(format!(
            "COPY {} a server file or program with {} table {name} (use FROM STDIN / TO STDOUT, e.g. psql's \\copy)",
            if from { "FROM" } else { "TO" },
            if key.is_some() { "distributed" } else { "reference" },
        ));
    }
    let (Some(first), Some(last)) = (toks.get(j), toks.get(k.saturating_sub(1))) else {
        return local;
    };
    let table_sql = text[first.start..last.end].to_owned();
    Route::Copy(CopyPlan {
        table: parts.last().cloned().unwrap_or(name),
        table_sql,
        columns: statement.columns,
        direction: statement.direction,
        options: statement.options,
        shards: catalog.shard_ids(),
        key: if from { key } else { None },
        sql: text.trim().to_owned(),
        moving_sql: Vec::new(),
    })
}

/// `COPY (query) TO STDOUT` for a query that reads several shards: allowed when the
/// shards' rows only need concatenating (SPEC §5 rule 2, plain rows), refused with
/// 0A000 naming the construct otherwise.
fn copy_query_out(
    text: &str,
    toks: &[Token<'_>],
    after: usize,
    query: &str,
    f: crate::FanoutPlan,
    _catalog: &Catalog,
) -> Route {
    let tables = f.tables.join(", ");
    let construct = match &f.merge {
        crate::MergePlan::Stream(m)
            if m.sort.is_empty() && m.limit.is_none() && m.offset == 0 && m.hidden == 0 =>
        {
            None
        }
        crate::MergePlan::Stream(m) if !m.sort.is_empty() => Some("ORDER BY"),
        crate::MergePlan::Stream(_) => Some("LIMIT/OFFSET"),
        crate::MergePlan::Collect(_) => {
            Some("a query that needs its tables collected on one shard")
        }
        crate::MergePlan::Finish(_) => {
            let qt = tokens(query);
            Some(if qt.iter().any(|t| t.tok.is_word("distinct")) {
                "DISTINCT"
            } else if qt.iter().any(|t| t.tok.is_word("group")) {
                "GROUP BY"
            } else {
                "aggregates"
            })
        }
    };
    if let Some(c) = construct {
        return Route::Unsupported(format!(
            "COPY (query) TO STDOUT with {c} over several shards of distributed table {tables}"
        ));
    }
    let statement = match crate::copy::read_tail(toks, after, false) {
        Ok(s) => s,
        Err(msg) => return Route::Unsupported(format!("{msg} on a multi-shard query")),
    };
    if !statement.stdio || statement.direction != CopyDirection::Out {
        return Route::Unsupported(format!(
            "COPY (query) of distributed table {tables} to a server file or program (use TO STDOUT)"
        ));
    }
    Route::Copy(CopyPlan {
        table: tables,
        table_sql: String::new(),
        columns: None,
        direction: CopyDirection::Out,
        options: statement.options,
        shards: f.shards,
        key: None,
        sql: text.trim().to_owned(),
        moving_sql: Vec::new(),
    })
}

/// Read `[ONLY] name [*] [(cols)] [, …]` from `toks[j..]`.
fn name_list(toks: &[Token<'_>], mut j: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    loop {
        if is_word(toks, j, "only") {
            j += 1;
        }
        let Some((parts, k)) = read_name(toks, j) else {
            break;
        };
        out.push(parts);
        j = k;
        if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'*')) {
            j += 1;
        }
        if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
            j = skip_parens(toks, j);
        }
        if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b',')) {
            j += 1;
        } else {
            break;
        }
    }
    out
}

/// VACUUM, ANALYZE, CLUSTER, REINDEX, TRUNCATE and LOCK, read from their tokens (SPEC
/// §5 rule 5): the named tables' class, or every shard for the whole database.
fn utility(first: &str, toks: &[Token<'_>], i: usize, catalog: &Catalog) -> Route {
    let mut j = i + 1;
    if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        j = skip_parens(toks, j);
    }
    let names = match first {
        "REINDEX" => {
            let target = word(toks, j);
            j += 1;
            if is_word(toks, j, "concurrently") {
                j += 1;
            }
            match target.as_str() {
                "TABLE" => name_list(toks, j),
                // An index of a local table exists only on the local shard, but its
                // name does not say whose it is.
                _ => return Route::AllShards,
            }
        }
        "TRUNCATE" | "LOCK" => {
            if is_word(toks, j, "table") {
                j += 1;
            }
            name_list(toks, j)
        }
        "CLUSTER" => {
            if is_word(toks, j, "verbose") {
                j += 1;
            }
            let mut names = name_list(toks, j);
            // Old syntax `CLUSTER index ON table`.
            if let Some(on) = toks.iter().position(|t| t.tok.is_word("on")) {
                names = name_list(toks, on + 1);
            }
            names
        }
        _ => {
            while [
                "full",
                "freeze",
                "verbose",
                "analyze",
                "analyse",
                "skip_locked",
            ]
            .iter()
            .any(|w| is_word(toks, j, w))
            {
                j += 1;
            }
            name_list(toks, j)
        }
    };
    if names.is_empty() {
        return Route::AllShards;
    }
    tables_route(first, &names, false, catalog)
}

/// The route of a utility or DDL statement on `names`: every shard if they are all
/// declared, the local shard if none is, else refused (it would fail on every shard
/// but one). `lenient` (`DROP … IF EXISTS`) runs a mix on every shard.
fn tables_route(verb: &str, names: &[Vec<String>], lenient: bool, catalog: &Catalog) -> Route {
    let mut declared = None;
    let mut local = None;
    for n in names {
        let (class, name) = classify_table(catalog, n);
        if class.is_declared() {
            declared.get_or_insert(name);
        } else if class == TableClass::Local {
            local.get_or_insert(name);
        }
    }
    match (declared, local) {
        (None, _) => Route::Shard(catalog.local_shard),
        (Some(_), None) => Route::AllShards,
        (Some(_), Some(_)) if lenient => Route::AllShards,
        (Some(d), Some(l)) => Route::Unsupported(format!(
            "{verb} of declared table {d} together with local table {l} (run them separately)"
        )),
    }
}

/// Route a statement sqlparser parsed. Returns the route and, for a parameter-routed
/// INSERT, the error a NULL parameter means.
fn plan_ast(st: &Statement, catalog: &Catalog) -> (Route, Option<PlanError>) {
    let local = Route::Shard(catalog.local_shard);
    let route = match st {
        Statement::Query(q) => {
            if let Some(r) = router_function(q) {
                return (r, None);
            }
            return analyse(st, catalog);
        }
        Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) => {
            return analyse(st, catalog);
        }
        Statement::Merge { .. } => return analyse(st, catalog),
        Statement::CreateTable(ct) => {
            let parts = name_parts(&ct.name);
            let (class, name) = classify_table(catalog, &parts);
            if let Some(q) = &ct.query {
                let mut a = Analysis::new(catalog);
                a.statement(&Statement::Query(q.clone()));
                if let Some(o) = a.occs.first() {
                    let reason = format!("CREATE TABLE … AS over distributed table {}", o.table);
                    into_route(st, catalog, &reason)
                } else if class.is_declared() {
                    Route::Unsupported(format!("CREATE TABLE … AS of declared table {name}"))
                } else {
                    local
                }
            } else if let Some(msg) =
                crate::constraints::unenforceable(catalog, &ct.name, &ct.columns, &ct.constraints)
            {
                Route::Unsupported(msg)
            } else if class.is_declared() {
                match ct.columns.iter().find_map(non_bytewise_collation) {
                    Some(msg) => Route::Unsupported(format!("{msg} in declared table {name}")),
                    None => Route::AllShards,
                }
            } else {
                local
            }
        }
        Statement::CreateIndex(ci) => {
            let refused = ci
                .unique
                .then(|| crate::constraints::unique_index(catalog, &ci.table_name, &ci.columns))
                .flatten();
            match refused {
                Some(msg) => Route::Unsupported(msg),
                None => tables_route(
                    "CREATE INDEX",
                    &[name_parts(&ci.table_name)],
                    false,
                    catalog,
                ),
            }
        }
        Statement::AlterTable {
            name, operations, ..
        } => alter_table(name, operations, catalog),
        Statement::Drop {
            object_type,
            names,
            if_exists,
            ..
        } => match object_type {
            ObjectType::View
                if names
                    .iter()
                    .any(|n| crate::views::view_of(catalog, &name_parts(n)).is_some()) =>
            {
                let kept: Vec<String> = names
                    .iter()
                    .filter_map(|n| crate::views::view_of(catalog, &name_parts(n)))
                    .map(|v| v.name.clone())
                    .collect();
                if kept.len() == names.len() {
                    Route::Router(RouterCommand::DropViews { names: kept })
                } else {
                    Route::Unsupported(
                        "DROP VIEW of views over distributed tables together with other views"
                            .to_owned(),
                    )
                }
            }
            ObjectType::Table => {
                let parts: Vec<Vec<String>> = names.iter().map(name_parts).collect();
                tables_route("DROP TABLE", &parts, *if_exists, catalog)
            }
            // Index names do not say whose they are; distributed tables' indexes exist
            // on every shard.
            // Types: a distributed table's columns may use them (see below).
            ObjectType::Index
            | ObjectType::Schema
            | ObjectType::Role
            | ObjectType::User
            | ObjectType::Type => Route::AllShards,
            _ => local,
        },
        Statement::Truncate { table_names, .. } => {
            let parts: Vec<Vec<String>> = table_names.iter().map(|t| name_parts(&t.name)).collect();
            tables_route("TRUNCATE", &parts, false, catalog)
        }
        Statement::Comment {
            object_type,
            object_name,
            ..
        } => {
            let parts = name_parts(object_name);
            match object_type {
                CommentObject::Table => tables_route("COMMENT", &[parts], false, catalog),
                CommentObject::Column if parts.len() >= 2 => tables_route(
                    "COMMENT",
                    &[parts[..parts.len() - 1].to_vec()],
                    false,
                    catalog,
                ),
                CommentObject::Schema
                | CommentObject::Extension
                | CommentObject::Role
                | CommentObject::User => Route::AllShards,
                _ => local,
            }
        }
        Statement::Grant { objects, .. } | Statement::Revoke { objects, .. } => match objects {
            // GRANT role TO role: roles exist on every shard.
            None => Route::AllShards,
            Some(GrantObjects::Tables(names)) => {
                let parts: Vec<Vec<String>> = names.iter().map(name_parts).collect();
                tables_route("GRANT", &parts, false, catalog)
            }
            Some(
                GrantObjects::AllTablesInSchema { .. }
                | GrantObjects::Schemas(_)
                | GrantObjects::AllSequencesInSchema { .. }
                | GrantObjects::AllFunctionsInSchema { .. },
            ) => Route::AllShards,
            Some(_) => local,
        },
        Statement::CreateView { .. } => create_view(st, catalog).unwrap_or(local),
        Statement::CreateTrigger(t) => tables_route(
            "CREATE TRIGGER",
            &[name_parts(&t.table_name)],
            false,
            catalog,
        ),
        Statement::DropTrigger(t) => match &t.table_name {
            Some(n) => tables_route("DROP TRIGGER", &[name_parts(n)], false, catalog),
            None => local,
        },
        Statement::CreatePolicy { table_name, .. }
        | Statement::AlterPolicy { table_name, .. }
        | Statement::DropPolicy { table_name, .. } => {
            tables_route("POLICY", &[name_parts(table_name)], false, catalog)
        }
        // Schemas, extensions and roles have no data and are needed wherever a
        // distributed table may use them.
        Statement::CreateSchema { .. }
        | Statement::AlterSchema(_)
        | Statement::CreateExtension { .. }
        | Statement::DropExtension { .. }
        | Statement::CreateRole { .. }
        | Statement::AlterRole { .. } => Route::AllShards,
        // Types and domains hold no data, and a distributed or reference table's
        // columns may use them: on every shard (as Citus propagates them), so its
        // CREATE TABLE does not fail on the shards that lack them.
        Statement::CreateType { .. }
        | Statement::AlterType(_)
        | Statement::CreateDomain(_)
        | Statement::DropDomain(_) => Route::AllShards,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::Discard { .. } => Route::AnyShard,
        // Functions, sequences… are local objects (SPEC §4: undeclared things live on the
        // local shard). Functions stay there because a SQL function's body is checked
        // against the tables it names, which may be local.
        _ => local,
    };
    (route, None)
}

fn analyse(st: &Statement, catalog: &Catalog) -> (Route, Option<PlanError>) {
    analyse_with(st, catalog, false)
}

/// [`analyse`]; `force_fanout` for a statement whose text is not the client's (see
/// [`Analysis::force_fanout`]).
fn analyse_with(
    st: &Statement,
    catalog: &Catalog,
    force_fanout: bool,
) -> (Route, Option<PlanError>) {
    let mut a = Analysis::new(catalog);
    a.force_fanout = force_fanout;
    a.statement(st);
    let null_key = a.insert_target.map(|o| PlanError::NullShardKey {
        table: a.occs[o].table.clone(),
        column: a.occs[o].key.clone(),
    });
    // What collecting needs to know, before the walk is consumed.
    let collectable = a.verb == "query"
        && a.unsupported.is_none()
        && a.error.is_none()
        && !a.select_into
        && !a.occs.is_empty();
    // A data-modifying WITH: its write and the rest are planned again part by part
    // (`crate::ctewrite`), whatever the walk of the whole found.
    let cte_collectable = a.error.is_none()
        && !a.occs.is_empty()
        && matches!(st, Statement::Query(q) if crate::ctewrite::has_write(q));
    let reads_other =
        !a.reference_reads.is_empty() || !a.locals.is_empty() || !a.catalog_relations.is_empty();
    let local_dependent = a.local_dependent.clone();
    let into_collectable = a.verb == "query"
        && a.select_into
        && a.unsupported.is_none()
        && a.error.is_none()
        && !a.occs.is_empty();
    // Into a distributed table, or into a reference table (its only write) from a
    // source reading distributed tables.
    let insert_collectable = a.verb == "INSERT"
        && a.error.is_none()
        && ((a.reference_writes.is_empty() && a.insert_target.is_some())
            || (a.reference_writes.len() == 1 && a.insert_target.is_none() && !a.occs.is_empty()));
    let key_update = a.key_update.map(|o| a.occs[o].clone());
    let route = a.route_statement(Some(st));
    let route = match key_update {
        Some(o) => {
            let target = crate::keyupdate::Target {
                table: &o.table,
                key: &o.key,
                key_type: o.key_type,
            };
            crate::keyupdate::plan(st, catalog, &target, route)
        }
        None => route,
    };
    // A write reading a data-modifying WITH query: named as such, never collected.
    let route = match (route, crate::ctewrite::write_reading_write(st)) {
        (Route::Unsupported(_), Some(why)) => return (Route::Unsupported(why), None),
        (route, _) => route,
    };
    let route = match route {
        Route::Unsupported(reason) if collectable || cte_collectable => collect_route(
            st,
            catalog,
            &reason,
            local_dependent.as_deref(),
            reads_other,
        ),
        Route::Unsupported(reason) if into_collectable => into_route(st, catalog, &reason),
        Route::Unsupported(reason) if insert_collectable => {
            let facts = crate::collect::Facts {
                reason: &reason,
                local_dependent: local_dependent.as_deref(),
                reads_other,
            };
            match crate::collect::plan_insert(st, &st.to_string(), catalog, facts) {
                Ok(c) => Route::Fanout(crate::FanoutPlan {
                    tables: c
                        .insert
                        .iter()
                        .map(|i| i.copy.table.clone())
                        .chain(c.inputs.iter().map(|i| i.table.clone()))
                        .collect(),
                    shards: catalog.shard_ids(),
                    shard_sql: st.to_string(),
                    merge: crate::MergePlan::Collect(Box::new(c)),
                    cursor: None,
                    fallback: None,
                    moving_sql: Vec::new(),
                }),
                Err(msg) => Route::Unsupported(msg),
            }
        }
        r => r,
    };
    let null_key = null_key.filter(|_| matches!(route, Route::ShardByParam { .. }));
    (route, null_key)
}

/// A read the fan-out planner refused with `reason`, answered by collecting its
/// distributed tables on one shard ([`crate::collect`]), or still refused.
fn collect_route(
    st: &Statement,
    catalog: &Catalog,
    reason: &str,
    local_dependent: Option<&str>,
    reads_other: bool,
) -> Route {
    let facts = crate::collect::Facts {
        reason,
        local_dependent,
        reads_other,
    };
    match crate::collect::plan(st, catalog, facts) {
        Ok(c) => Route::Fanout(crate::FanoutPlan {
            // The tables it reads, and the one a data-modifying WITH writes.
            tables: c
                .inputs
                .iter()
                .map(|i| i.table.clone())
                .chain(c.write.iter().flat_map(|w| w.write.tables.iter().cloned()))
                .collect(),
            shards: catalog.shard_ids(),
            shard_sql: st.to_string(),
            merge: crate::MergePlan::Collect(Box::new(c)),
            cursor: None,
            fallback: None,
            moving_sql: Vec::new(),
        }),
        Err(msg) => Route::Unsupported(msg),
    }
}

/// `CREATE TABLE … AS` / `SELECT … INTO` over distributed tables, refused with
/// `reason` for push-down: created on the local shard from the collected rows.
fn into_route(st: &Statement, catalog: &Catalog, reason: &str) -> Route {
    match crate::collect::plan_into(st, catalog, reason) {
        Ok(c) => Route::Fanout(crate::FanoutPlan {
            tables: c.inputs.iter().map(|i| i.table.clone()).collect(),
            shards: catalog.shard_ids(),
            shard_sql: st.to_string(),
            merge: crate::MergePlan::Collect(Box::new(c)),
            cursor: None,
            fallback: None,
            moving_sql: Vec::new(),
        }),
        Err(msg) => Route::Unsupported(msg),
    }
}

fn alter_table(name: &ObjectName, ops: &[AlterTableOperation], catalog: &Catalog) -> Route {
    for op in ops {
        let refused = match op {
            AlterTableOperation::AddConstraint { constraint, .. } => {
                crate::constraints::unenforceable(
                    catalog,
                    name,
                    &[],
                    std::slice::from_ref(constraint),
                )
            }
            AlterTableOperation::AddColumn { column_def, .. } => crate::constraints::unenforceable(
                catalog,
                name,
                std::slice::from_ref(column_def),
                &[],
            ),
            AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::SetDefault { value },
            } => crate::constraints::sequence_default(catalog, name, column_name, Some(value)),
            AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::AddGenerated { .. },
            } => crate::constraints::sequence_default(catalog, name, column_name, None),
            _ => None,
        };
        if let Some(msg) = refused {
            return Route::Unsupported(msg);
        }
    }
    let parts = name_parts(name);
    let (class, table) = classify_table(catalog, &parts);
    let key = match class {
        TableClass::Distributed { key, .. } => Some(key),
        TableClass::Reference(_) => None,
        _ => return Route::Shard(catalog.local_shard),
    };
    let is_key = |id: &sqlparser::ast::Ident| key == Some(crate::parse::fold_ident(id).as_str());
    for op in ops {
        let refused = match op {
            AlterTableOperation::RenameTable { .. } => Some(format!(
                "renaming declared table {table} (the pgshard catalog would not follow)"
            )),
            AlterTableOperation::RenameColumn {
                old_column_name, ..
            } if is_key(old_column_name) => Some(format!(
                "renaming shard key column {old_column_name} of distributed table {table}"
            )),
            AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::SetDataType { .. },
            } if is_key(column_name) => Some(format!(
                "changing the type of shard key column {column_name} of distributed table {table}"
            )),
            AlterTableOperation::DropColumn { column_names, .. }
                if column_names.iter().any(is_key) =>
            {
                Some(format!(
                    "dropping the shard key column of distributed table {table}"
                ))
            }
            AlterTableOperation::AddColumn { column_def, .. } => {
                non_bytewise_collation(column_def).map(|m| format!("{m} in declared table {table}"))
            }
            _ => None,
        };
        if let Some(msg) = refused {
            return Route::Unsupported(msg);
        }
    }
    Route::AllShards
}

/// A column declared with a collation under which text does not order by its bytes.
/// Multi-shard merges (ORDER BY, min/max, DISTINCT, GROUP BY in a finishing query)
/// compare text by bytes or under the default collation (the shards' `C.UTF-8`), so
/// such a column in a declared table would come back in the wrong order.
fn non_bytewise_collation(col: &ColumnDef) -> Option<String> {
    col.options.iter().find_map(|o| match &o.option {
        ColumnOption::Collation(n) => {
            let last = name_parts(n).last().cloned().unwrap_or_default();
            let bytewise = matches!(
                last.as_str(),
                "default" | "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "ucs_basic"
            );
            (!bytewise).then(|| format!("column {} with collation {n}", col.name))
        }
        _ => None,
    })
}

/// `SELECT create_distributed_table(…)` / `SELECT create_reference_table(…)` alone.
fn router_function(q: &Query) -> Option<Route> {
    let SetExpr::Select(s) = &*q.body else {
        return None;
    };
    if !s.from.is_empty() || s.projection.len() != 1 || q.with.is_some() {
        return None;
    }
    let (SelectItem::UnnamedExpr(Expr::Function(f))
    | SelectItem::ExprWithAlias {
        expr: Expr::Function(f),
        ..
    }) = &s.projection[0]
    else {
        return None;
    };
    let fname = name_parts(&f.name).last().cloned().unwrap_or_default();
    let distributed = match fname.as_str() {
        "create_distributed_table" => true,
        "create_reference_table" => false,
        _ => return None,
    };
    let args: &[FunctionArg] = match &f.args {
        FunctionArguments::List(l) => &l.args,
        FunctionArguments::None => &[],
        FunctionArguments::Subquery(_) => return Some(bad_args(&fname)),
    };
    let mut positional: Vec<String> = Vec::new();
    let mut named: Vec<(String, String)> = Vec::new();
    for a in args {
        let (name, e) = match a {
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(crate::parse::fold_ident(name)), e),
            FunctionArg::ExprNamed {
                name: Expr::Identifier(name),
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(crate::parse::fold_ident(name)), e),
            // `name := value` arrives as an assignment expression.
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::BinaryOp {
                left,
                op: sqlparser::ast::BinaryOperator::Assignment,
                right,
            })) => match &**left {
                Expr::Identifier(name) => (Some(crate::parse::fold_ident(name)), &**right),
                _ => return Some(bad_args(&fname)),
            },
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => (None, e),
            _ => return Some(bad_args(&fname)),
        };
        let value = match e {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => s.clone(),
                Value::DollarQuotedString(d) => d.value.clone(),
                _ => return Some(bad_args(&fname)),
            },
            Expr::Cast { expr, .. } => match &**expr {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    _ => return Some(bad_args(&fname)),
                },
                _ => return Some(bad_args(&fname)),
            },
            _ => return Some(bad_args(&fname)),
        };
        match name {
            None if named.is_empty() => positional.push(value),
            None => return Some(bad_args(&fname)),
            Some(n) => named.push((n, value)),
        }
    }
    let take = |pos: usize, name: &str| -> Option<String> {
        positional.get(pos).cloned().or_else(|| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        })
    };
    let arity = positional.len() + named.len();
    let Some(table_arg) = take(0, "table_name") else {
        return Some(Route::Error(PlanError::UndefinedFunction {
            signature: format!("{fname}()"),
        }));
    };
    let Some(table) = regclass_name(&table_arg) else {
        return Some(Route::Error(PlanError::InvalidArgument {
            message: format!("invalid table name \"{table_arg}\""),
        }));
    };
    if !distributed {
        if arity != 1 {
            return Some(Route::Error(PlanError::UndefinedFunction {
                signature: format!("{fname}({})", vec!["unknown"; arity].join(", ")),
            }));
        }
        return Some(Route::Router(RouterCommand::CreateReferenceTable { table }));
    }
    for (n, _) in &named {
        if !matches!(
            n.as_str(),
            "table_name" | "distribution_column" | "colocate_with" | "distribution_type"
        ) {
            return Some(Route::Unsupported(format!(
                "create_distributed_table argument {n}"
            )));
        }
    }
    let Some(column_arg) = take(1, "distribution_column") else {
        return Some(Route::Error(PlanError::UndefinedFunction {
            signature: format!("{fname}({})", vec!["unknown"; arity].join(", ")),
        }));
    };
    if positional.len() > 3 {
        return Some(Route::Unsupported(
            "create_distributed_table with more than three positional arguments".to_owned(),
        ));
    }
    let Some(column) = regclass_name(&column_arg).filter(|c| !c.contains('.')) else {
        return Some(Route::Error(PlanError::InvalidArgument {
            message: format!("invalid column name \"{column_arg}\""),
        }));
    };
    let mut colocate_with = named
        .iter()
        .find(|(n, _)| n == "colocate_with")
        .map(|(_, v)| v.clone());
    let mut dist_type = named
        .iter()
        .find(|(n, _)| n == "distribution_type")
        .map(|(_, v)| v.clone());
    // A third positional argument is Citus' distribution_type when it names one,
    // else (pgshard's shorthand) the table to co-locate with.
    if let Some(third) = positional.get(2) {
        if ["hash", "append", "range"].contains(&third.to_ascii_lowercase().as_str()) {
            dist_type = Some(third.clone());
        } else {
            colocate_with = Some(third.clone());
        }
    }
    if let Some(t) = dist_type.filter(|t| !t.eq_ignore_ascii_case("hash")) {
        return Some(Route::Unsupported(format!(
            "distribution type {t} (only hash distribution is supported)"
        )));
    }
    let colocate_with = match colocate_with {
        None => None,
        Some(c) if c.eq_ignore_ascii_case("default") => None,
        Some(c) if c.eq_ignore_ascii_case("none") => Some("none".to_owned()),
        Some(c) => match regclass_name(&c) {
            Some(n) => Some(n),
            None => {
                return Some(Route::Error(PlanError::InvalidArgument {
                    message: format!("invalid table name \"{c}\""),
                }))
            }
        },
    };
    Some(Route::Router(RouterCommand::CreateDistributedTable {
        table,
        column,
        colocate_with,
    }))
}

fn bad_args(fname: &str) -> Route {
    Route::Error(PlanError::InvalidArgument {
        message: format!("arguments of {fname} must be string constants"),
    })
}

/// Read a (possibly schema-qualified, possibly quoted) name the way `regclass` input
/// does: unquoted parts folded to lowercase.
fn regclass_name(text: &str) -> Option<String> {
    let toks = tokens(text);
    let (parts, end) = read_name(&toks, 0)?;
    (end == toks.len()).then(|| parts.join("."))
}

/// Statements sqlparser could not parse, routed by their leading keyword (SPEC §5 rule
/// 8).
fn fallback(
    first: &str,
    toks: &[Token<'_>],
    kind: &StatementKind,
    err: &str,
    catalog: &Catalog,
) -> Route {
    let local = Route::Shard(catalog.local_shard);
    // Every dotted name in the statement that the catalog declares.
    let mut distributed = None;
    let mut reference = None;
    let mut j = 0;
    while j < toks.len() {
        let after_dot = j > 0 && toks[j - 1].tok == Tok::Punct(b'.');
        match read_name(toks, j) {
            Some((parts, k)) if !after_dot => {
                match classify_table(catalog, &parts).0 {
                    TableClass::Distributed { def, .. } => {
                        distributed.get_or_insert(def.name.clone());
                    }
                    TableClass::Reference(def) => {
                        reference.get_or_insert(def.name.clone());
                    }
                    _ => {}
                }
                j = k;
            }
            _ => j += 1,
        }
    }
    let second = word(toks, 1);
    match first {
        "SELECT" | "WITH" | "VALUES" | "TABLE" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" => {
            if let Some(t) = distributed {
                Route::Unsupported(format!(
                    "statement on distributed table {t} that pgshard cannot parse ({err})"
                ))
            } else if let (Some(t), StatementKind::Write) = (&reference, kind) {
                Route::Unsupported(format!(
                    "write statement on reference table {t} that pgshard cannot parse ({err})"
                ))
            } else {
                local
            }
        }
        "ALTER" if second.as_str() == "SYSTEM" => Route::AllShards,
        // `GRANT role TO role`: roles exist on every shard.
        "GRANT" | "REVOKE" if !toks.iter().any(|t| t.tok.is_word("on")) => Route::AllShards,
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE" | "SECURITY" | "REFRESH" => {
            let object = toks
                .iter()
                .skip(1)
                .take(3)
                .find_map(|t| match t.tok {
                    Tok::Word(w) => Some(w.to_ascii_uppercase()),
                    _ => None,
                })
                .unwrap_or_default();
            let objectless = ["SCHEMA", "EXTENSION", "ROLE", "USER", "TYPE", "DOMAIN"]
                .contains(&object.as_str());
            if objectless || distributed.is_some() || reference.is_some() {
                Route::AllShards
            } else {
                local
            }
        }
        _ => local,
    }
}

//! INSERTs into distributed tables that the key alone does not route (SPEC §5 rule 1:
//! "INSERT routes each row by its key; a multi-row INSERT spanning shards is split").
//!
//! - A multi-row `INSERT … VALUES` whose rows fall on several shards becomes one INSERT
//!   per shard holding only that shard's rows, in their original order, run as a
//!   [`crate::FanoutWrite`] (one distributed transaction). Everything else in the
//!   statement (ON CONFLICT, RETURNING) is kept as written, so each shard answers for
//!   its own rows; the router sums the tags and concatenates the RETURNING rows shard by
//!   shard (their order across shards is therefore not PostgreSQL's).
//! - An INSERT without a column list names no shard key, so the planner cannot route
//!   it alone: [`columns_needed`] tells the router which table's column order it must
//!   look up (on a shard, each time it plans the statement, so an ALTER TABLE cannot
//!   leave a stale order behind), and [`plan_with_columns`] plans the statement as if the
//!   column list had been written.

use crate::parse::{fold_ident, name_parts, parse_statement, split_statements};
use crate::route::{const_value, Const};
use crate::{shard_of, FanoutWrite, ParamInsert, Plan, Route, RowKey};
use pgshard_catalog::{Catalog, KeyType, ShardId};
use sqlparser::ast::{visit_expressions_mut, Expr, Ident, SetExpr, Statement, TableObject, Value};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// One INSERT per shard for a multi-row `INSERT … VALUES` into distributed table `table`
/// (key column `key`) whose constant keys span several shards; `refusal` if the
/// statement is not of that shape after all.
pub(crate) fn split_insert(
    st: &Statement,
    catalog: &Catalog,
    table: &str,
    key: &str,
    key_type: KeyType,
    refusal: Route,
) -> Route {
    let Statement::Insert(ins) = st else {
        return refusal;
    };
    let Some(idx) = ins.columns.iter().position(|c| fold_ident(c) == key) else {
        return refusal;
    };
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|s| &*s.body) else {
        return refusal;
    };
    let mut groups: BTreeMap<ShardId, Vec<Vec<Expr>>> = BTreeMap::new();
    for row in &values.rows {
        let shard = match row.get(idx).and_then(|e| const_value(e, key_type)) {
            Some(Const::Value(v)) => shard_of(catalog, &v),
            _ => None,
        };
        match shard {
            Some(s) => groups.entry(s).or_default().push(row.clone()),
            None => return refusal,
        }
    }
    let mut shards = Vec::with_capacity(groups.len());
    let mut shard_sql = Vec::with_capacity(groups.len());
    for (shard, rows) in groups {
        let mut part = ins.clone();
        if let Some(source) = part.source.as_mut() {
            if let SetExpr::Values(v) = &mut *source.body {
                v.rows = rows;
            }
        }
        shards.push(shard);
        shard_sql.push(Statement::Insert(part).to_string());
    }
    Route::FanoutWrite(FanoutWrite {
        tables: vec![table.to_owned()],
        shards,
        sql: st.to_string(),
        replicated: false,
        defaults: Vec::new(),
        shard_sql,
        key_move: None,
    })
}

/// A multi-row `INSERT … VALUES` into distributed table `table` whose shard keys are
/// parameters or constants, routed row by row at Bind ([`Route::InsertByParams`]);
/// `refusal` (0A000) if a row's key is anything else.
pub(crate) fn param_insert(
    st: &Statement,
    table: &str,
    key: &str,
    key_type: KeyType,
    refusal: String,
) -> Route {
    let Statement::Insert(ins) = st else {
        return Route::Unsupported(refusal);
    };
    let Some(idx) = ins.columns.iter().position(|c| fold_ident(c) == key) else {
        return Route::Unsupported(refusal);
    };
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|s| &*s.body) else {
        return Route::Unsupported(refusal);
    };
    let mut keys = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        match row.get(idx).and_then(|e| const_value(e, key_type)) {
            Some(Const::Value(v)) => keys.push(RowKey::Value(v)),
            Some(Const::Param(n)) => keys.push(RowKey::Param(n)),
            _ => return Route::Unsupported(refusal),
        }
    }
    Route::InsertByParams(ParamInsert {
        table: table.to_owned(),
        column: key.to_owned(),
        key_type,
        keys,
        sql: st.to_string(),
        refusal,
    })
}

/// Splits the multi-row INSERT `sql` ([`ParamInsert::sql`]) into one INSERT per group
/// of rows (`groups` holds row indices, in order), each with its parameters renumbered
/// from `$1` ([`renumber_params`]). `None` if `sql` is not such an INSERT.
pub fn split_insert_rows(sql: &str, groups: &[Vec<usize>]) -> Option<Vec<(String, Vec<usize>)>> {
    let ins = single_insert(sql)?;
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|s| &*s.body) else {
        return None;
    };
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let rows = group
            .iter()
            .map(|&i| values.rows.get(i).cloned())
            .collect::<Option<Vec<_>>>()?;
        let mut part = ins.clone();
        if let Some(source) = part.source.as_mut() {
            if let SetExpr::Values(v) = &mut *source.body {
                v.rows = rows;
            }
        }
        out.push(renumber_statement(Statement::Insert(part)));
    }
    Some(out)
}

/// Renumbers the parameters of one statement `$1, $2…` in order of first appearance,
/// and returns the new text with, for each new parameter, the old number (1-based): a
/// shard's part of a split statement then takes only the values it uses. `None` if
/// `sql` is not one statement sqlparser parses.
pub fn renumber_params(sql: &str) -> Option<(String, Vec<usize>)> {
    let mut parsed = parse_statement(sql).ok()?;
    match (parsed.pop(), parsed.is_empty()) {
        (Some(st), true) => Some(renumber_statement(st)),
        _ => None,
    }
}

fn renumber_statement(mut st: Statement) -> (String, Vec<usize>) {
    let mut old: Vec<usize> = Vec::new();
    let _ = visit_expressions_mut(&mut st, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &mut v.value {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    let new = match old.iter().position(|&o| o == n) {
                        Some(i) => i + 1,
                        None => {
                            old.push(n);
                            old.len()
                        }
                    };
                    *p = format!("${new}");
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    (st.to_string(), old)
}

/// For a Query string holding one `INSERT INTO t VALUES …` (no column list) into a
/// distributed table: the table's name as written (for `'name'::regclass`), whose
/// column order the router must look up before [`plan_with_columns`].
pub fn columns_needed(sql: &str, catalog: &Catalog) -> Option<String> {
    let ins = single_insert(sql)?;
    // Only `VALUES` rows are routed by position (INSERT … SELECT is refused anyway).
    let values = matches!(
        ins.source.as_ref().map(|s| &*s.body),
        Some(SetExpr::Values(_))
    );
    if !ins.columns.is_empty() || !values {
        return None;
    }
    let TableObject::TableName(name) = &ins.table else {
        return None;
    };
    let parts = name_parts(name);
    match crate::classify::classify_table(catalog, &parts) {
        (crate::classify::TableClass::Distributed { .. }, _) => Some(name.to_string()),
        _ => None,
    }
}

/// Plans a Query string holding one INSERT without a column list as if its column list
/// were the first columns of `columns` (the target table's columns in order), one for
/// each value of a row (PostgreSQL fills the leading columns and defaults the rest).
/// Returns `None` if the statement is not of that shape or has more values than the
/// table has columns (PostgreSQL's own error then comes from the shard).
pub fn plan_with_columns(sql: &str, catalog: &Catalog, columns: &[String]) -> Option<Plan> {
    let mut ins = single_insert(sql)?;
    let width = match ins.source.as_ref().map(|s| &*s.body) {
        Some(SetExpr::Values(v)) => v.rows.first().map_or(0, Vec::len),
        _ => return None,
    };
    if !ins.columns.is_empty() || width > columns.len() {
        return None;
    }
    ins.columns = columns[..width]
        .iter()
        .map(|c| Ident::with_quote('"', c.as_str()))
        .collect();
    let text = Statement::Insert(ins).to_string();
    let mut plan = crate::plan(&text, catalog);
    plan.column_order = true;
    Some(plan)
}

fn single_insert(sql: &str) -> Option<sqlparser::ast::Insert> {
    let stmts = split_statements(sql);
    let [one] = stmts.as_slice() else {
        return None;
    };
    let first = one.text.trim_start();
    if !first
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
    {
        return None;
    }
    let mut parsed = parse_statement(one.text).ok()?;
    match (parsed.pop(), parsed.is_empty()) {
        (Some(Statement::Insert(ins)), true) => Some(ins),
        _ => None,
    }
}

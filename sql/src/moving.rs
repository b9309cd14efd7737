//! Reads while buckets move (SPEC §9): from a move's freeze until it is done, the rows
//! of its buckets may sit on two shards — copied to the target (committed before the
//! flip) and not yet deleted from the source (deleted after every router routes with
//! the flip). A multi-shard read runs on both, so each shard's copy of it must skip
//! the rows of buckets that shard holds but does not own in the catalog the statement
//! was planned with ([`Catalog::not_owned_on`]); otherwise those rows would be counted
//! twice.
//!
//! The filter is written into the shard's statement: every reference to a distributed
//! table `t [AS a]` becomes `(SELECT * FROM t WHERE NOT (<bucket of key> = ANY(…))) AS
//! a`, so joins, subqueries and CTEs of the original statement read the filtered rows
//! and nothing else changes. Only shards that hold such buckets get a different text;
//! with no move under way nothing is rewritten.

use crate::parse::{name_parts, parse_statement};
use crate::{CopyDirection, Plan, Route};
use pgshard_catalog::hash::bucket_sql_expr;
use pgshard_catalog::{BucketId, Catalog, ShardId, TableKind};
use sqlparser::ast::{
    BinaryOperator, CopySource, Expr, FromTable, Ident, ObjectName, Query, SetExpr, Statement,
    TableAlias, TableFactor, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

/// Give every multi-shard read in `plan` (and in its statements) the per-shard texts
/// that skip buckets a shard holds but does not own (see the module doc).
pub(crate) fn attach(plan: &mut Plan, catalog: &Catalog) {
    if catalog.moving.is_empty() {
        return;
    }
    for p in plan.statements.iter_mut() {
        attach(p, catalog);
    }
    match &mut plan.route {
        Route::Fanout(f) => {
            f.moving_sql = per_shard(&f.shards, &f.shard_sql, catalog);
            // A read answered by collecting copies whole tables from every shard.
            let shards = f.shards.clone();
            let collects = match &mut f.merge {
                crate::MergePlan::Collect(c) => Some(c),
                _ => None,
            };
            for c in collects.into_iter().chain(f.fallback.as_mut()) {
                for i in c.inputs.iter_mut() {
                    i.moving = per_shard(&shards, &i.copy_out(), catalog);
                }
            }
        }
        Route::Copy(c) if c.direction == CopyDirection::Out => {
            c.moving_sql = per_shard(&c.shards, &c.sql, catalog);
        }
        // An UPDATE or DELETE on every shard must not write the copy a move keeps on a
        // shard that does not own the rows: the move's subscription copies the owner's
        // writes there already (a second `x = x + 1` would be applied twice).
        Route::FanoutWrite(w) if !w.replicated && w.shard_sql.is_empty() => {
            let texts = per_shard_with(&w.shards, &w.sql, catalog, filtered_write);
            if !texts.is_empty() {
                w.shard_sql = w
                    .shards
                    .iter()
                    .map(|s| {
                        texts
                            .iter()
                            .find(|(t, _)| t == s)
                            .map_or_else(|| w.sql.clone(), |(_, text)| text.clone())
                    })
                    .collect();
            }
        }
        _ => {}
    }
}

/// The rewritten text for each of `shards` that holds buckets it does not own. A
/// statement that cannot be rewritten gets a text that fails with SQLSTATE 0A000 on
/// the shard, rather than a double count.
fn per_shard(shards: &[ShardId], sql: &str, catalog: &Catalog) -> Vec<(ShardId, String)> {
    per_shard_with(shards, sql, catalog, filtered)
}

type Rewrite = fn(&str, &Catalog, &[BucketId]) -> Result<Option<String>, String>;

fn per_shard_with(
    shards: &[ShardId],
    sql: &str,
    catalog: &Catalog,
    rewrite: Rewrite,
) -> Vec<(ShardId, String)> {
    let mut out = Vec::new();
    for &s in shards {
        let skip = catalog.not_owned_on(s);
        if skip.is_empty() {
            continue;
        }
        let text = rewrite(sql, catalog, &skip).unwrap_or_else(|why| {
            Some(format!(
                "DO $pgshard$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}; END $pgshard$",
                quote_literal(&format!(
                    "{why} while buckets are being moved between shards; retry when the move is done"
                ))
            ))
        });
        if let Some(text) = text {
            out.push((s, text));
        }
    }
    out
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `sql` with every reference to a distributed table reading only rows of buckets not
/// in `skip`; `None` when it reads no distributed table.
pub fn filtered(sql: &str, catalog: &Catalog, skip: &[BucketId]) -> Result<Option<String>, String> {
    let mut stmts = parse_statement(sql)?;
    let [stmt] = stmts.as_mut_slice() else {
        return Err("a multi-statement read".into());
    };
    let list: Vec<String> = skip.iter().map(|b| b.0.to_string()).collect();
    let mut f = Filter {
        catalog,
        list: format!("'{{{}}}'::int4[]", list.join(",")),
        ctes: Vec::new(),
        error: None,
        replaced: false,
        filters: Vec::new(),
    };
    if let Statement::Copy {
        source: source @ CopySource::Table { .. },
        to: true,
        ..
    } = stmt
    {
        let CopySource::Table {
            table_name,
            columns,
        } = &*source
        else {
            unreachable!("matched above");
        };
        let cols = if columns.is_empty() {
            "*".to_string()
        } else {
            columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let q = format!("SELECT {cols} FROM {table_name}");
        let Some(Statement::Query(query)) = parse_statement(&q)?.into_iter().next() else {
            return Err("COPY of this table".into());
        };
        *source = CopySource::Query(query);
    }
    collect_ctes(stmt, &mut f.ctes);
    let _ = stmt.visit(&mut f);
    if let Some(e) = f.error {
        return Err(e);
    }
    if !f.replaced {
        return Ok(None);
    }
    let mut text = stmt.to_string();
    for (placeholder, filter) in &f.filters {
        text = text.replace(placeholder.as_str(), filter);
    }
    Ok(Some(text))
}

/// An UPDATE or DELETE `sql` that leaves alone the rows of buckets in `skip`: its
/// target table gets `NOT (<bucket of key> = ANY(…))` added to the WHERE clause, and
/// every other distributed table it reads (FROM, USING, subqueries) is read filtered
/// as [`filtered`] does. `None` when it writes no distributed table.
pub fn filtered_write(
    sql: &str,
    catalog: &Catalog,
    skip: &[BucketId],
) -> Result<Option<String>, String> {
    let mut stmts = parse_statement(sql)?;
    let [stmt] = stmts.as_mut_slice() else {
        return Err("a multi-statement write".into());
    };
    let list: Vec<String> = skip.iter().map(|b| b.0.to_string()).collect();
    let mut f = Filter {
        catalog,
        list: format!("'{{{}}}'::int4[]", list.join(",")),
        ctes: Vec::new(),
        error: None,
        replaced: false,
        filters: Vec::new(),
    };
    collect_ctes(stmt, &mut f.ctes);
    // The written table itself stays; it gets the filter in its WHERE clause.
    let target = match stmt {
        Statement::Update { table, .. } => table.relation.clone(),
        Statement::Delete(d) => match &d.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) if t.len() == 1 => {
                t[0].relation.clone()
            }
            _ => return Err("a DELETE of several tables".into()),
        },
        _ => return Err("this multi-shard write".into()),
    };
    let _ = stmt.visit(&mut f);
    if let Some(e) = f.error {
        return Err(e);
    }
    let TableFactor::Table {
        name, alias, args, ..
    } = &target
    else {
        return Err("the written table".into());
    };
    let written = if args.is_none() {
        f.key_filter(name, alias)?
    } else {
        None
    };
    let (relation, selection) = match stmt {
        Statement::Update {
            table, selection, ..
        } => (&mut table.relation, selection),
        Statement::Delete(d) => match &mut d.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => {
                (&mut t[0].relation, &mut d.selection)
            }
        },
        _ => unreachable!("matched above"),
    };
    *relation = target;
    if let Some(placeholder) = written {
        let cond = Expr::Identifier(Ident::new(placeholder));
        *selection = Some(match selection.take() {
            Some(e) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(e))),
                op: BinaryOperator::And,
                right: Box::new(cond),
            },
            None => cond,
        });
        f.replaced = true;
    }
    if !f.replaced {
        return Ok(None);
    }
    let mut text = stmt.to_string();
    for (placeholder, filter) in &f.filters {
        text = text.replace(placeholder.as_str(), filter);
    }
    Ok(Some(text))
}

/// The names of every CTE in the statement: a reference by such a name is not the
/// table, wherever it appears (conservative: a table shadowed somewhere is rewritten
/// nowhere, and the statement is refused below if it reads the table directly).
fn collect_ctes(stmt: &mut Statement, out: &mut Vec<String>) {
    struct Ctes<'a>(&'a mut Vec<String>);
    impl VisitorMut for Ctes<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for c in &with.cte_tables {
                    self.0.push(crate::parse::fold_ident(&c.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Ctes(out));
}

struct Filter<'a> {
    catalog: &'a Catalog,
    list: String,
    ctes: Vec<String>,
    error: Option<String>,
    replaced: bool,
    /// Placeholders in the printed statement and the filters they stand for.
    filters: Vec<(String, String)>,
}

impl Filter<'_> {
    /// For the written table `name` (when distributed): a placeholder standing for
    /// `(NOT (<bucket of its key> = ANY(…)))`, its key qualified as the statement
    /// names the table.
    fn key_filter(
        &mut self,
        name: &ObjectName,
        alias: &Option<TableAlias>,
    ) -> Result<Option<String>, String> {
        let parts = name_parts(name);
        let Some(def) = self.catalog.table(&parts.join(".")) else {
            return Ok(None);
        };
        let TableKind::Distributed {
            shard_key,
            key_type,
            ..
        } = &def.kind
        else {
            return Ok(None);
        };
        let qualifier = match alias {
            Some(a) => a.name.to_string(),
            None => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.to_string())
                .ok_or_else(|| format!("the table reference {name}"))?,
        };
        let key = Ident::with_quote('"', shard_key.clone());
        let bucket = bucket_sql_expr(
            &format!("{qualifier}.{key}"),
            *key_type,
            self.catalog.buckets,
        );
        let placeholder = format!("pgshard_moving_filter_{}_", self.filters.len());
        self.filters.push((
            placeholder.clone(),
            format!("(NOT ({bucket} = ANY({})))", self.list),
        ));
        Ok(Some(placeholder))
    }

    /// The filtered derived table for `name` (a distributed table), or `None` for
    /// other relations.
    fn replacement(
        &mut self,
        name: &ObjectName,
        alias: &Option<TableAlias>,
    ) -> Result<Option<TableFactor>, String> {
        let parts = name_parts(name);
        let folded = parts.join(".");
        if parts.len() == 1 && self.ctes.contains(&folded) {
            return Ok(None);
        }
        let Some(def) = self.catalog.table(&folded) else {
            return Ok(None);
        };
        let TableKind::Distributed {
            shard_key,
            key_type,
            ..
        } = &def.kind
        else {
            return Ok(None);
        };
        let key = Ident::with_quote('"', shard_key.clone()).to_string();
        let bucket = bucket_sql_expr(&key, *key_type, self.catalog.buckets);
        let alias = match alias {
            Some(a) => a.clone(),
            None => TableAlias {
                name: name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .cloned()
                    .ok_or_else(|| format!("the table reference {name}"))?,
                columns: Vec::new(),
            },
        };
        // The bucket expression is put in after printing: sqlparser does not read all of
        // it back (`::text COLLATE "C"` inside a function call).
        let placeholder = format!("pgshard_moving_filter_{}_", self.filters.len());
        self.filters.push((
            placeholder.clone(),
            format!("({bucket} = ANY({}))", self.list),
        ));
        let sql =
            format!("SELECT * FROM (SELECT * FROM {name} WHERE NOT {placeholder}) AS {alias}");
        let stmt = parse_statement(&sql)?.into_iter().next();
        let Some(Statement::Query(q)) = stmt else {
            return Err(format!("the table reference {name}"));
        };
        let SetExpr::Select(select) = *q.body else {
            return Err(format!("the table reference {name}"));
        };
        let factor = select
            .from
            .into_iter()
            .next()
            .map(|t| t.relation)
            .ok_or_else(|| format!("the table reference {name}"))?;
        Ok(Some(factor))
    }
}

impl VisitorMut for Filter<'_> {
    type Break = ();

    fn post_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, alias, args, ..
        } = t
        {
            if args.is_some() {
                return ControlFlow::Continue(());
            }
            match self.replacement(name, alias) {
                Ok(Some(f)) => {
                    *t = f;
                    self.replaced = true;
                }
                Ok(None) => {}
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }
}

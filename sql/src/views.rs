//! Views over distributed tables (issue 15). PostgreSQL's own view on one shard would
//! read that shard's rows only, so the router keeps such a view's definition in the
//! catalog ([`pgshard_catalog::ViewDef`], `pgshard.views`; every router sees it, as it
//! sees table declarations) and plans `FROM v` as `FROM (query) AS v (columns)`: the
//! plan is the one the user would get by writing the subquery.
//!
//! - `CREATE [OR REPLACE] VIEW v [(columns)] AS query` whose query reads distributed
//!   tables (directly or through such views, which are written into it, as PostgreSQL
//!   binds a view's references at creation) is a router command: PostgreSQL checks it
//!   on the local shard inside a transaction that rolls back, then the catalog records
//!   it. Views reading only local or reference tables stay PostgreSQL's own views on
//!   the local shard, as before.
//! - `DROP VIEW [IF EXISTS] v, …` of such views forgets them.
//! - A SELECT naming such a view is planned with the view written in; it is never
//!   forwarded as written (no shard has the view), so a single-shard answer becomes a
//!   one-shard fan-out carrying the expanded text. Other statements naming one
//!   (INSERT … SELECT, UPDATE … FROM, EXPLAIN, COPY, DECLARE) are refused with 0A000.

use crate::parse::{fold_ident, name_parts};
use pgshard_catalog::{Catalog, ViewDef};
use sqlparser::ast::{
    Ident, Query, Statement, TableAlias, TableAliasColumnDef, TableFactor, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

/// How many views one statement may have written in (each expansion may name more).
const MAX_EXPANSIONS: usize = 64;

/// The view `parts` names, if it is one the router keeps.
pub(crate) fn view_of<'c>(catalog: &'c Catalog, parts: &[String]) -> Option<&'c ViewDef> {
    if catalog.views.is_empty() {
        return None;
    }
    match parts {
        [t] => catalog.view(t),
        [s, t] => catalog.view(&format!("{s}.{t}")),
        [_, s, t] => catalog.view(&format!("{s}.{t}")),
        _ => None,
    }
}

/// True if a statement's tokens may name one of the catalog's views (a cheap test
/// before parsing).
pub(crate) fn may_name_view(toks: &[crate::parse::Token<'_>], catalog: &Catalog) -> bool {
    if catalog.views.is_empty() {
        return false;
    }
    toks.iter().any(|t| {
        t.tok.ident().is_some_and(|w| {
            catalog
                .views
                .iter()
                .any(|v| v.name.rsplit('.').next() == Some(w.as_str()))
        })
    })
}

/// Writes every view of the catalog that `q` names into it as a derived table. `Ok`
/// with whether anything was written in; `Err` with a refusal.
pub(crate) fn expand(q: &mut Query, catalog: &Catalog) -> Result<bool, String> {
    let mut e = Expand {
        catalog,
        ctes: Vec::new(),
        expanded: 0,
        error: None,
    };
    let mut ctes = Vec::new();
    let _ = sqlparser::ast::Visit::visit(&*q, &mut CteNames(&mut ctes));
    e.ctes = ctes;
    let _ = q.visit(&mut e);
    match e.error {
        Some(msg) => Err(msg),
        None => Ok(e.expanded > 0),
    }
}

/// The first view of the catalog a statement names, for refusals.
pub(crate) fn named_view(st: &Statement, catalog: &Catalog) -> Option<String> {
    let mut found = None;
    let _ = sqlparser::ast::visit_relations(st, |n| {
        if let Some(v) = view_of(catalog, &name_parts(n)) {
            found = Some(v.name.clone());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

struct CteNames<'a>(&'a mut Vec<String>);

impl sqlparser::ast::Visitor for CteNames<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(w) = &q.with {
            for c in &w.cte_tables {
                self.0.push(fold_ident(&c.alias.name));
            }
        }
        ControlFlow::Continue(())
    }
}

struct Expand<'c> {
    catalog: &'c Catalog,
    ctes: Vec<String>,
    expanded: usize,
    error: Option<String>,
}

impl VisitorMut for Expand<'_> {
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
        let Some(view) = view_of(self.catalog, &parts) else {
            return ControlFlow::Continue(());
        };
        if parts.len() == 1 && self.ctes.contains(&parts[0]) {
            // A CTE of that name may shadow the view in one scope and not another:
            // not worth the risk of reading the wrong one.
            self.error = Some(format!(
                "a CTE named like view {} over distributed tables",
                view.name
            ));
            return ControlFlow::Break(());
        }
        self.expanded += 1;
        if self.expanded > MAX_EXPANSIONS {
            self.error = Some(format!("views nested too deeply at view {}", view.name));
            return ControlFlow::Break(());
        }
        let subquery = match parse_query(&view.query) {
            Some(q) => q,
            None => {
                self.error = Some(format!(
                    "view {} over distributed tables whose query the router cannot read",
                    view.name
                ));
                return ControlFlow::Break(());
            }
        };
        let alias = match alias.take() {
            Some(a) if !a.columns.is_empty() || view.columns.is_empty() => a,
            Some(a) => TableAlias {
                name: a.name,
                columns: alias_columns(view),
            },
            None => TableAlias {
                name: match name.0.last() {
                    Some(sqlparser::ast::ObjectNamePart::Identifier(id)) => id.clone(),
                    _ => Ident::new(parts.last().cloned().unwrap_or_default()),
                },
                columns: alias_columns(view),
            },
        };
        *tf = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(subquery),
            alias: Some(alias),
        };
        ControlFlow::Continue(())
    }
}

/// The view's column names, quoted (they are stored folded).
fn alias_columns(view: &ViewDef) -> Vec<TableAliasColumnDef> {
    view.columns
        .iter()
        .map(|c| TableAliasColumnDef {
            name: Ident::with_quote('"', c.clone()),
            data_type: None,
        })
        .collect()
}

fn parse_query(sql: &str) -> Option<Query> {
    match crate::parse::parse_statement(sql)
        .ok()?
        .into_iter()
        .next()?
    {
        Statement::Query(q) => Some(*q),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{catalog, LOCAL};
    use crate::{plan, FanoutPlan, Route, RouterCommand};
    use pgshard_catalog::{Catalog, ViewDef};

    fn with_views() -> Catalog {
        let mut c = catalog();
        c.views = vec![
            ViewDef {
                name: "rich".into(),
                columns: Vec::new(),
                query: "SELECT aid, abalance FROM accounts WHERE abalance > 0".into(),
            },
            ViewDef {
                name: "five".into(),
                columns: Vec::new(),
                query: "SELECT aid FROM accounts WHERE aid = 5".into(),
            },
            ViewDef {
                name: "totals".into(),
                columns: vec!["who".into(), "n".into()],
                query: "SELECT id, count(*) FROM users GROUP BY id".into(),
            },
        ];
        c
    }

    fn fanout(sql: &str) -> FanoutPlan {
        match plan(sql, &with_views()).route {
            Route::Fanout(f) => f,
            other => panic!("{sql}: expected a fan-out, got {other:?}"),
        }
    }

    #[test]
    fn views_are_written_in_and_never_forwarded_as_written() {
        // As the subquery would be planned: the outer filter does not pin it.
        let f = fanout("SELECT * FROM rich WHERE aid = 5");
        assert_eq!(f.shards.len(), 3);
        let f = fanout("SELECT * FROM rich r WHERE r.abalance > 7 AND r.aid IN (SELECT 5)");
        assert_eq!(f.shards.len(), 3);
        let f = fanout("SELECT * FROM five");
        assert_eq!(f.shards.len(), 1, "one shard's answer, carrying the text");
        let f = fanout("SELECT * FROM rich WHERE aid = 5");
        assert!(
            f.shard_sql
                .contains("FROM (SELECT aid, abalance FROM accounts WHERE abalance > 0) AS rich"),
            "{}",
            f.shard_sql
        );
        assert_eq!(fanout("SELECT count(*) FROM rich").shards.len(), 3);
        let f = fanout("SELECT t.who FROM totals AS t ORDER BY 1");
        assert!(
            f.shard_sql.contains(" AS t (\"who\", \"n\")"),
            "{}",
            f.shard_sql
        );
        let p = plan("SELECT * FROM rich WHERE aid = $1", &with_views());
        assert!(matches!(p.route, Route::Fanout(_)), "{:?}", p.route);
        assert!(p.rewritten.is_some_and(|t| t.contains("(SELECT aid")));
        // Not a view: the usual plan.
        assert_eq!(
            plan("SELECT * FROM misc", &with_views()).route,
            Route::Shard(LOCAL)
        );
    }

    #[test]
    fn view_ddl_is_a_router_command_and_other_uses_are_refused() {
        let c = with_views();
        match plan("CREATE VIEW v2 (a) AS SELECT aid FROM rich", &c).route {
            Route::Router(RouterCommand::CreateView {
                name,
                columns,
                query,
                replace,
                check_sql,
            }) => {
                assert_eq!(
                    (name.as_str(), columns, replace),
                    ("v2", vec!["a".to_owned()], false)
                );
                assert!(
                    query.contains("FROM (SELECT aid, abalance FROM accounts"),
                    "{query}"
                );
                assert!(check_sql.starts_with("CREATE VIEW v2 (a) AS SELECT aid FROM (SELECT"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan("CREATE VIEW lv AS SELECT * FROM misc", &c).route,
            Route::Shard(LOCAL)
        );
        assert_eq!(
            plan("DROP VIEW IF EXISTS public.rich, totals", &c).route,
            Route::Router(RouterCommand::DropViews {
                names: vec!["rich".into(), "totals".into()]
            })
        );
        for sql in [
            "DROP VIEW rich, lv",
            "UPDATE accounts SET abalance = 0 FROM rich WHERE rich.aid = accounts.aid",
            "INSERT INTO users (id) SELECT aid FROM rich",
            "WITH rich AS (SELECT 1 AS aid) SELECT * FROM rich",
            "CREATE MATERIALIZED VIEW mv AS SELECT * FROM accounts",
            "CREATE TEMP VIEW tv AS SELECT * FROM accounts",
            "SELECT aid INTO t9 FROM rich",
        ] {
            assert!(
                matches!(plan(sql, &c).route, Route::Unsupported(_)),
                "{sql}: {:?}",
                plan(sql, &c).route
            );
        }
    }
}

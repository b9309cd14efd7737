//! Shard-key extraction for queries and DML (SPEC §5 rules 1, 3, 4, 7).
//!
//! [`Analysis`] walks a parsed statement scope by scope (each SELECT, CTE body, derived
//! table and subquery), records every table it touches with its placement class, and
//! for every *occurrence* of a distributed table works out an upper bound on the key
//! values of the rows that can affect the result (its [`Pin`]):
//!
//! - `key = const`, `const = key`, `key IN (consts)`, `key = $n` in a WHERE clause's
//!   top-level AND chain (or an inner join's ON) restrict that occurrence;
//! - `a.key = b.key` between two occurrences of the same scope makes them share
//!   restrictions; between an inner occurrence and one of an enclosing scope
//!   (correlation) the inner one inherits the outer one's restriction, never the
//!   reverse; in an outer join's ON only the nullable side inherits;
//! - OR, NOT, functions of the key and everything else restrict nothing.
//!
//! A statement goes to one shard only if every distributed occurrence is pinned to
//! that shard (then each shard-local join, subquery or aggregate sees all the rows it
//! needs). A second pass with sqlparser's relation visitor checks that the walk saw
//! every relation; any it missed is treated as an unrestricted read.

use crate::classify::{classify_table, is_portable_function, key_family, TableClass};
use crate::parse::{fold_ident, name_parts};
use crate::{key_from_literal, shard_of, PlanError, Route};
use pgshard_catalog::{Catalog, KeyType, KeyValue, ShardId};
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CastKind, DataType, Expr, FromTable, Insert, JoinConstraint,
    JoinOperator, ObjectName, OnConflictAction, OnInsert, Query, Select, SelectItem, SetExpr,
    Statement, TableAlias, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    UpdateTableFromKind, Value, Visit, Visitor,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// An upper bound on the shard-key values of an occurrence's relevant rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pin {
    /// Unrestricted.
    Any,
    /// One of these values (possibly none: the occurrence contributes no row).
    Values(Vec<KeyValue>),
    /// The value of parameter `$n`.
    Param(usize),
    /// One of several parameters, or a mix of parameters and constants: known only at
    /// Bind, and possibly on several shards.
    Params,
}

impl Pin {
    /// Narrow `self` by another upper bound. Returns true if it changed.
    fn intersect(&mut self, other: &Pin) -> bool {
        let new = match (&*self, other) {
            (_, Pin::Any) => return false,
            (Pin::Any, o) => o.clone(),
            (Pin::Values(a), Pin::Values(b)) => {
                Pin::Values(a.iter().filter(|v| b.contains(v)).cloned().collect())
            }
            (Pin::Values(_), _) => return false,
            (_, Pin::Values(b)) => Pin::Values(b.clone()),
            (Pin::Param(_), _) => return false,
            (Pin::Params, Pin::Param(n)) => Pin::Param(*n),
            (Pin::Params, Pin::Params) => return false,
        };
        if *self == new {
            false
        } else {
            *self = new;
            true
        }
    }
}

/// A constant (or parameter) compared with a shard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Const {
    Value(KeyValue),
    Null,
    Param(usize),
}

/// One occurrence of a distributed table in a statement.
#[derive(Debug, Clone)]
pub(crate) struct Occ {
    /// The declared table name.
    pub table: String,
    pub key: String,
    pub key_type: KeyType,
    pub pin: Pin,
    /// The table's colocation group.
    pub colocation: String,
    /// Query nesting depth at registration (1: the statement's own query).
    pub depth: usize,
    /// In the FROM tree of the top-level SELECT (directly, or through derived tables
    /// and CTEs named there): its rows are the rows the top-level SELECT reads.
    pub from_tree: bool,
    /// Restricted by a key equality with an occurrence of an enclosing query
    /// (correlation), so everything it contributes sits on that occurrence's shard.
    pub correlated: bool,
    /// On the nullable side of an outer join: its key is NULL in the NULL-extended
    /// rows, which every shard produces, so grouping, DISTINCT or partitioning by
    /// its key does not keep a group on one shard.
    pub nullable: bool,
}

/// What the walk learnt about the top-level SELECT, for fan-out planning.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopInfo {
    /// GROUP BY names a shard key of a distributed table of its FROM clause.
    pub grouped_by_key: bool,
    /// It has window functions, and every one is partitioned by a shard key.
    pub windows: bool,
    pub windows_by_key: bool,
}

#[derive(Debug)]
struct Rel {
    /// The name columns are qualified with: the alias, else the table's last name part.
    name: String,
    /// The full folded name, for `schema.table.column` references (no alias only).
    full: Option<Vec<String>>,
    occ: Option<usize>,
}

#[derive(Debug, Default)]
struct Scope {
    /// CTE names visible from here (a WITH clause), or
    ctes: Vec<String>,
    /// the FROM items of one SELECT / UPDATE / DELETE / INSERT target.
    rels: Vec<Rel>,
    is_from: bool,
}

/// What a statement touches, collected by walking it.
pub(crate) struct Analysis<'c> {
    catalog: &'c Catalog,
    pub occs: Vec<Occ>,
    /// `(a, b)`: occurrence `a`'s relevant keys are among occurrence `b`'s.
    edges: Vec<(usize, usize)>,
    /// Key equalities between occurrences (for messages and, later, co-located fan-out).
    joins: Vec<(usize, usize)>,
    scopes: Vec<Scope>,
    pub reference_reads: Vec<String>,
    pub reference_writes: Vec<String>,
    pub locals: Vec<String>,
    pub catalog_relations: Vec<String>,
    /// A function or cast that may depend on local objects (first one seen).
    pub local_dependent: Option<String>,
    pub unsupported: Option<String>,
    pub error: Option<PlanError>,
    /// Relation names seen by the walk, for the completeness check.
    seen: Vec<Vec<String>>,
    /// `SELECT … INTO new_table`.
    pub select_into: bool,
    /// What to call the statement in messages: "query", "UPDATE", "DELETE", "INSERT".
    pub verb: &'static str,
    /// The next table registered is the statement's write target.
    write_target: bool,
    /// INSERT target occurrence, for multi-row messages and NULL parameter handling.
    pub insert_target: Option<usize>,
    /// Query nesting depth of the walk (0 outside any query).
    depth: usize,
    /// The first construct that would make a fan-out of this statement wrong (an
    /// aggregate, LIMIT or outer join whose rows are not all on one shard).
    pub nonlocal: Option<String>,
    /// CTE names and the occurrences their bodies registered.
    cte_ranges: Vec<(String, std::ops::Range<usize>)>,
    /// `outer.key IN (subquery)`: the subquery (by address) and the outer occurrence.
    pending_in: Vec<(usize, usize)>,
    pub top: TopInfo,
    /// An UPDATE that sets the shard key of this occurrence (its target).
    pub key_update: Option<usize>,
    /// A read whose text differs from the client's (a view written in,
    /// [`crate::views`]): it must not be forwarded as written, so one shard's answer is
    /// planned as a fan-out to that shard, which carries the text.
    pub force_fanout: bool,
}

impl<'c> Analysis<'c> {
    pub(crate) fn new(catalog: &'c Catalog) -> Self {
        Analysis {
            catalog,
            occs: Vec::new(),
            edges: Vec::new(),
            joins: Vec::new(),
            scopes: Vec::new(),
            reference_reads: Vec::new(),
            reference_writes: Vec::new(),
            locals: Vec::new(),
            catalog_relations: Vec::new(),
            local_dependent: None,
            unsupported: None,
            error: None,
            seen: Vec::new(),
            select_into: false,
            verb: "query",
            write_target: false,
            insert_target: None,
            depth: 0,
            nonlocal: None,
            cte_ranges: Vec::new(),
            pending_in: Vec::new(),
            top: TopInfo::default(),
            key_update: None,
            force_fanout: false,
        }
    }

    fn nonlocal(&mut self, msg: String) {
        self.nonlocal.get_or_insert(msg);
    }

    /// True if an occurrence in `range` is correlated by key with an enclosing query.
    fn anchored(&self, range: std::ops::Range<usize>) -> bool {
        self.occs[range].iter().any(|o| o.correlated)
    }

    fn first_table(&self, range: std::ops::Range<usize>) -> Option<String> {
        self.occs.get(range.start).map(|o| o.table.clone())
    }

    fn unsupported(&mut self, msg: String) {
        self.unsupported.get_or_insert(msg);
    }

    /// Walk a query or DML statement, then check that every relation was seen.
    pub(crate) fn statement(&mut self, st: &Statement) {
        self.dml(st);
        let mut expected: Vec<Vec<String>> = Vec::new();
        let _ = sqlparser::ast::visit_relations(st, |name| {
            expected.push(name_parts(name));
            ControlFlow::<()>::Continue(())
        });
        for name in expected {
            if let Some(pos) = self.seen.iter().position(|s| *s == name) {
                self.seen.swap_remove(pos);
            } else {
                // A relation in a construct the walk does not model: treat it as an
                // unrestricted access.
                let write = matches!(st, Statement::Insert(_) | Statement::Update { .. });
                self.write_target = write;
                self.register_table(&name);
                self.write_target = false;
            }
        }
    }

    fn dml(&mut self, st: &Statement) {
        match st {
            Statement::Query(q) => self.query(q),
            Statement::Insert(ins) => self.insert(ins),
            Statement::Update {
                table,
                assignments,
                from,
                selection,
                returning,
                ..
            } => {
                self.verb = "UPDATE";
                self.scopes.push(Scope {
                    is_from: true,
                    ..Scope::default()
                });
                self.write_target = true;
                let mut filt = self.join_tree(table);
                self.write_target = false;
                if let Some(&target) = filt.first() {
                    let key = self.occs[target].key.clone();
                    let sets_key = assignments.iter().any(|a| match &a.target {
                        AssignmentTarget::ColumnName(n) => last_is(n, &key),
                        AssignmentTarget::Tuple(ns) => ns.iter().any(|n| last_is(n, &key)),
                    });
                    if sets_key {
                        // Planned as a move of the updated rows (`crate::keyupdate`).
                        self.key_update = Some(target);
                    }
                }
                if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                    from
                {
                    for twj in f {
                        let o = self.join_tree(twj);
                        filt.extend(o);
                    }
                }
                if let Some(w) = selection {
                    self.filter(w, &filt);
                    self.walk(w);
                }
                self.walk(assignments);
                self.walk(returning);
                self.scopes.pop();
            }
            Statement::Delete(d) => {
                self.verb = "DELETE";
                self.scopes.push(Scope {
                    is_from: true,
                    ..Scope::default()
                });
                let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) =
                    &d.from;
                let mut filt = Vec::new();
                for (i, twj) in tables.iter().enumerate() {
                    self.write_target = i == 0;
                    let o = self.join_tree(twj);
                    self.write_target = false;
                    filt.extend(o);
                }
                for twj in d.using.iter().flatten() {
                    let o = self.join_tree(twj);
                    filt.extend(o);
                }
                if let Some(w) = &d.selection {
                    self.filter(w, &filt);
                    self.walk(w);
                }
                self.walk(&d.returning);
                self.walk(&d.order_by);
                self.walk(&d.limit);
                self.scopes.pop();
            }
            Statement::Merge {
                table,
                source,
                on,
                clauses,
                ..
            } => {
                self.scopes.push(Scope {
                    is_from: true,
                    ..Scope::default()
                });
                let mut occs = Vec::new();
                self.write_target = true;
                self.factor(table, &mut occs);
                self.write_target = false;
                if let Some(&o) = occs.first() {
                    let t = self.occs[o].table.clone();
                    self.unsupported(format!("MERGE into distributed table {t}"));
                }
                self.factor(source, &mut occs);
                self.walk(on);
                self.walk(clauses);
                self.scopes.pop();
            }
            other => {
                // Not a query or DML statement: nothing is modelled, so every relation
                // it names is found by the completeness check.
                self.walk(other);
            }
        }
    }

    fn query(&mut self, q: &Query) {
        self.depth += 1;
        let start = self.occs.len();
        self.query_inner(q);
        let end = self.occs.len();
        if self.depth > 1 && start < end {
            let limited = q.limit_clause.is_some() || q.fetch.is_some();
            if limited && !self.anchored(start..end) {
                let t = self.first_table(start..end).unwrap_or_default();
                self.nonlocal(format!(
                    "LIMIT/OFFSET in a subquery over distributed table {t} that is not correlated on its shard key"
                ));
            }
            let addr = q as *const Query as usize;
            if let Some(pos) = self.pending_in.iter().position(|&(a, _)| a == addr) {
                let (_, outer) = self.pending_in.swap_remove(pos);
                self.link_in(q, outer, start);
            }
        }
        self.depth -= 1;
    }

    /// `outer.key IN (SELECT t.key FROM t …)`: a semi-join on the shard key of the
    /// subquery's only FROM item, so each shard can answer it for its own rows.
    fn link_in(&mut self, q: &Query, outer: usize, start: usize) {
        let SetExpr::Select(s) = &*q.body else { return };
        if q.with.is_some() || s.from.len() != 1 || !s.from[0].joins.is_empty() {
            return;
        }
        let TableFactor::Table { alias, .. } = &s.from[0].relation else {
            return;
        };
        let Some(inner) = (start..self.occs.len()).find(|&i| self.occs[i].depth == self.depth)
        else {
            return;
        };
        let [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] =
            s.projection.as_slice()
        else {
            return;
        };
        let key = self.occs[inner].key.clone();
        let table_last = self.occs[inner]
            .table
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let names_key = match e {
            Expr::Identifier(id) => fold_ident(id) == key,
            Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
                let q = fold_ident(&ids[0]);
                let visible = alias.as_ref().map_or(table_last, |a| fold_ident(&a.name));
                q == visible && fold_ident(&ids[1]) == key
            }
            _ => false,
        };
        if names_key
            && key_family(self.occs[inner].key_type) == key_family(self.occs[outer].key_type)
        {
            self.joins.push((outer, inner));
            self.edges.push((outer, inner));
            self.edges.push((inner, outer));
        }
    }

    fn query_inner(&mut self, q: &Query) {
        let mut pushed = false;
        if let Some(with) = &q.with {
            pushed = true;
            self.scopes.push(Scope::default());
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| fold_ident(&c.alias.name))
                .collect();
            if with.recursive {
                if let Some(s) = self.scopes.last_mut() {
                    s.ctes.clone_from(&names);
                }
            }
            for (cte, name) in with.cte_tables.iter().zip(names) {
                let start = self.occs.len();
                self.query(&cte.query);
                self.cte_ranges.push((name.clone(), start..self.occs.len()));
                if !with.recursive {
                    if let Some(s) = self.scopes.last_mut() {
                        s.ctes.push(name);
                    }
                }
            }
        }
        self.set_expr(&q.body);
        self.walk(&q.order_by);
        self.walk(&q.limit_clause);
        self.walk(&q.fetch);
        if pushed {
            self.scopes.pop();
        }
    }

    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(s) => self.select(s),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation {
                left,
                right,
                op,
                set_quantifier,
            } => {
                let start = self.occs.len();
                self.set_expr(left);
                self.set_expr(right);
                let end = self.occs.len();
                let union_all = matches!(op, sqlparser::ast::SetOperator::Union)
                    && matches!(
                        set_quantifier,
                        sqlparser::ast::SetQuantifier::All
                            | sqlparser::ast::SetQuantifier::AllByName
                    );
                if self.depth > 1 && start < end && !union_all && !self.anchored(start..end) {
                    let t = self.first_table(start..end).unwrap_or_default();
                    self.nonlocal(format!(
                        "{op} {set_quantifier} in a subquery over distributed table {t}"
                    ));
                }
            }
            SetExpr::Values(v) => self.walk(v),
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => {
                // A data-modifying CTE: its own scope, like a subquery.
                let verb = self.verb;
                self.dml(st);
                self.verb = verb;
            }
            SetExpr::Table(t) => {
                let mut parts = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(s.to_lowercase());
                }
                if let Some(n) = &t.table_name {
                    parts.push(n.to_lowercase());
                }
                self.register_table(&parts);
            }
        }
    }

    fn select(&mut self, s: &Select) {
        let start = self.occs.len();
        self.scopes.push(Scope {
            is_from: true,
            ..Scope::default()
        });
        let mut occs = Vec::new();
        for twj in &s.from {
            let o = self.join_tree(twj);
            occs.extend(o);
        }
        if let Some(w) = &s.selection {
            self.filter(w, &occs);
            self.walk(w);
        }
        if s.into.is_some() {
            self.select_into = true;
        }
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    self.walk(e)
                }
                other => self.walk(other),
            }
        }
        self.walk(&s.distinct);
        self.walk(&s.group_by);
        self.walk(&s.having);
        self.walk(&s.named_window);
        self.walk(&s.qualify);
        self.walk(&s.lateral_views);
        self.walk(&s.prewhere);
        self.walk(&s.sort_by);
        self.walk(&s.cluster_by);
        self.walk(&s.distribute_by);
        self.walk(&s.connect_by);
        self.check_select(s, start);
        self.scopes.pop();
    }

    /// Fan-out safety of one SELECT: aggregates, DISTINCT and window functions must
    /// see all their rows on one shard (grouped or partitioned by a shard key, or
    /// correlated by key with an enclosing query) unless this is the top-level SELECT,
    /// whose merge the router plans.
    fn check_select(&mut self, s: &Select, start: usize) {
        let shape = crate::fanout::select_shape(s);
        let by_key = |a: &Self, es: &[Expr]| es.iter().any(|e| a.group_key_ref(e).is_some());
        let grouped_by_key = match &s.group_by {
            sqlparser::ast::GroupByExpr::Expressions(es, mods) => {
                mods.is_empty() && by_key(self, es)
            }
            sqlparser::ast::GroupByExpr::All(_) => false,
        };
        let windows_by_key = shape.windows.iter().all(|w| by_key(self, w));
        let distinct_by_key = match &s.distinct {
            None => true,
            Some(sqlparser::ast::Distinct::On(es)) => by_key(self, es),
            Some(sqlparser::ast::Distinct::Distinct) => s.projection.iter().any(|i| match i {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    self.group_key_ref(e).is_some()
                }
                _ => false,
            }),
        };
        if self.depth == 1 {
            self.top = TopInfo {
                grouped_by_key,
                windows: !shape.windows.is_empty(),
                windows_by_key,
            };
            return;
        }
        let end = self.occs.len();
        if start == end || self.anchored(start..end) {
            return;
        }
        let t = self.first_table(start..end).unwrap_or_default();
        if shape.aggregated && !grouped_by_key {
            self.nonlocal(format!(
                "aggregate in a subquery over distributed table {t} that is not grouped by or correlated on its shard key"
            ));
        } else if !windows_by_key {
            self.nonlocal(format!(
                "window function in a subquery over distributed table {t} that is not partitioned by its shard key"
            ));
        } else if !distinct_by_key {
            self.nonlocal(format!(
                "DISTINCT in a subquery over distributed table {t} that does not include its shard key"
            ));
        }
    }

    fn insert(&mut self, ins: &Insert) {
        self.verb = "INSERT";
        let TableObject::TableName(name) = &ins.table else {
            self.unsupported("INSERT INTO TABLE FUNCTION".to_owned());
            return;
        };
        let parts = name_parts(name);
        self.seen.push(parts.clone());
        self.scopes.push(Scope {
            is_from: true,
            ..Scope::default()
        });
        self.write_target = true;
        let occ = self.register_table(&parts);
        self.write_target = false;
        let visible = ins
            .table_alias
            .as_ref()
            .map(fold_ident)
            .or_else(|| parts.last().cloned())
            .unwrap_or_default();
        self.add_rel(visible, Some(parts), occ);
        match occ {
            Some(o) => {
                self.insert_target = Some(o);
                self.insert_distributed(o, ins);
            }
            None => {
                if let Some(q) = &ins.source {
                    self.query(q);
                }
            }
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let (OnConflictAction::DoUpdate(du), Some(o)) = (&oc.action, occ) {
                let key = self.occs[o].key.clone();
                let sets_key = du.assignments.iter().any(|a| match &a.target {
                    AssignmentTarget::ColumnName(n) => last_is(n, &key),
                    AssignmentTarget::Tuple(ns) => ns.iter().any(|n| last_is(n, &key)),
                });
                if sets_key {
                    let t = self.occs[o].table.clone();
                    self.unsupported(format!(
                        "ON CONFLICT DO UPDATE of shard key column {key} of distributed table {t}"
                    ));
                }
            }
            self.walk(oc);
        } else {
            self.walk(&ins.on);
        }
        self.walk(&ins.returning);
        self.scopes.pop();
    }

    fn insert_distributed(&mut self, o: usize, ins: &Insert) {
        let table = self.occs[o].table.clone();
        let key = self.occs[o].key.clone();
        let key_type = self.occs[o].key_type;
        let Some(source) = &ins.source else {
            self.unsupported(format!(
                "INSERT into distributed table {table} without a value for shard key column {key} (its default would decide the shard)"
            ));
            return;
        };
        let rows = match (&*source.body, &source.with) {
            (SetExpr::Values(v), None) => &v.rows,
            _ => {
                // The first bulk load most people try: say what works instead, as the
                // ErrorResponse's HINT.
                self.unsupported(format!(
                    "INSERT … SELECT into distributed table {table} is not supported{}\
                     Load the rows with COPY {table} FROM STDIN, or run the INSERT … SELECT \
                     before create_distributed_table('{table}', …), which moves existing rows.",
                    crate::HINT_SEPARATOR
                ));
                self.query(source);
                return;
            }
        };
        if ins.columns.is_empty() {
            self.unsupported(format!(
                "INSERT without a column list on distributed table {table}"
            ));
            self.query(source);
            return;
        }
        let Some(idx) = ins.columns.iter().position(|c| fold_ident(c) == key) else {
            self.unsupported(format!(
                "INSERT into distributed table {table} without a value for shard key column {key} (its default would decide the shard)"
            ));
            self.query(source);
            return;
        };
        let mut values = Vec::new();
        let mut params = BTreeSet::new();
        for row in rows {
            match row.get(idx).and_then(|e| const_value(e, key_type)) {
                Some(Const::Value(v)) => values.push(v),
                Some(Const::Param(n)) => {
                    params.insert(n);
                }
                Some(Const::Null) => {
                    self.error.get_or_insert(PlanError::NullShardKey {
                        table: table.clone(),
                        column: key.clone(),
                    });
                }
                None => self.unsupported(format!(
                    "INSERT into distributed table {table} with a shard key value that is not a constant or parameter"
                )),
            }
        }
        self.occs[o].pin = match (values.is_empty(), params.len()) {
            (_, 0) => Pin::Values(values),
            (true, 1) => Pin::Param(params.first().copied().unwrap_or(0)),
            _ => Pin::Params,
        };
        self.walk(rows);
    }

    /// Register the FROM item `twj` in the current scope; returns the distributed
    /// occurrences it holds. Applies the join conditions.
    fn join_tree(&mut self, twj: &TableWithJoins) -> Vec<usize> {
        let mut left = Vec::new();
        self.factor(&twj.relation, &mut left);
        for join in &twj.joins {
            let mut right = Vec::new();
            self.factor(&join.relation, &mut right);
            let (constraint, filt): (Option<&JoinConstraint>, Vec<usize>) =
                match &join.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::CrossJoin(c)
                    | JoinOperator::StraightJoin(c) => {
                        (Some(c), left.iter().chain(&right).copied().collect())
                    }
                    JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), right.clone()),
                    JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Some(c), left.clone()),
                    JoinOperator::FullOuter(c) => (Some(c), Vec::new()),
                    other => {
                        self.unsupported(format!("join type {other:?}"));
                        self.walk(other);
                        (None, Vec::new())
                    }
                };
            match constraint {
                Some(JoinConstraint::On(e)) => {
                    self.filter(e, &filt);
                    self.walk(e);
                }
                Some(JoinConstraint::Using(cols)) => {
                    for col in cols {
                        let Some(c) = col.0.last().and_then(|p| p.as_ident()).map(fold_ident)
                        else {
                            continue;
                        };
                        let l: Vec<usize> = left
                            .iter()
                            .copied()
                            .filter(|&o| self.occs[o].key == c)
                            .collect();
                        let r: Vec<usize> = right
                            .iter()
                            .copied()
                            .filter(|&o| self.occs[o].key == c)
                            .collect();
                        if let ([a], [b]) = (l.as_slice(), r.as_slice()) {
                            self.key_equality(*a, *b, &filt);
                        }
                    }
                }
                _ => {}
            }
            let nullable: Vec<usize> = match &join.join_operator {
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => right.clone(),
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => left.clone(),
                JoinOperator::FullOuter(_) => left.iter().chain(&right).copied().collect(),
                _ => Vec::new(),
            };
            for o in nullable {
                self.occs[o].nullable = true;
            }
            let outer = match &join.join_operator {
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => {
                    left.is_empty() && !right.is_empty()
                }
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => {
                    right.is_empty() && !left.is_empty()
                }
                JoinOperator::FullOuter(_) => left.is_empty() != right.is_empty(),
                _ => false,
            };
            if outer {
                let t = left
                    .first()
                    .or(right.first())
                    .map(|&o| self.occs[o].table.clone())
                    .unwrap_or_default();
                self.nonlocal(format!(
                    "outer join that keeps rows of a non-distributed relation unmatched by distributed table {t}"
                ));
            }
            left.extend(right);
        }
        left
    }

    fn factor(&mut self, tf: &TableFactor, occs: &mut Vec<usize>) {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts = name_parts(name);
                self.seen.push(parts.clone());
                let visible = alias_or(alias, &parts);
                if let Some(args) = args {
                    // A set-returning function in FROM.
                    self.function_used(&parts);
                    self.walk(args);
                    self.add_rel(visible, None, None);
                    return;
                }
                if parts.len() == 1 && self.is_cte(&parts[0]) {
                    if self.depth == 1 {
                        let ranges: Vec<std::ops::Range<usize>> = self
                            .cte_ranges
                            .iter()
                            .filter(|(n, _)| *n == parts[0])
                            .map(|(_, r)| r.clone())
                            .collect();
                        for r in ranges {
                            for o in &mut self.occs[r] {
                                o.from_tree = true;
                            }
                        }
                    }
                    self.add_rel(visible, None, None);
                    return;
                }
                let occ = self.register_table(&parts);
                if let (Some(o), 1) = (occ, self.depth) {
                    self.occs[o].from_tree = true;
                }
                let full = alias.is_none().then_some(parts);
                self.add_rel(visible, full, occ);
                occs.extend(occ);
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let start = self.occs.len();
                self.query(subquery);
                if self.depth == 1 {
                    for o in &mut self.occs[start..] {
                        o.from_tree = true;
                    }
                }
                self.add_rel(alias_or(alias, &[]), None, None);
            }
            TableFactor::TableFunction { expr, alias } => {
                self.walk(expr);
                self.add_rel(alias_or(alias, &[]), None, None);
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                self.function_used(&name_parts(name));
                self.walk(args);
                self.add_rel(alias_or(alias, &[]), None, None);
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                self.walk(array_exprs);
                self.add_rel(alias_or(alias, &[]), None, None);
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                let o = self.join_tree(table_with_joins);
                occs.extend(o);
            }
            other => {
                self.unsupported(format!("table expression {other}"));
                self.walk(other);
            }
        }
    }

    fn is_cte(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.ctes.iter().any(|c| c == name))
    }

    fn add_rel(&mut self, name: String, full: Option<Vec<String>>, occ: Option<usize>) {
        if let Some(s) = self.scopes.iter_mut().rev().find(|s| s.is_from) {
            s.rels.push(Rel { name, full, occ });
        }
    }

    /// Record a table; returns its occurrence if it is distributed.
    fn register_table(&mut self, parts: &[String]) -> Option<usize> {
        let write = std::mem::take(&mut self.write_target);
        let (class, display) = classify_table(self.catalog, parts);
        match class {
            TableClass::Distributed { key, key_type, def } => {
                let colocation = match &def.kind {
                    pgshard_catalog::TableKind::Distributed { colocation, .. } => {
                        colocation.clone()
                    }
                    pgshard_catalog::TableKind::Reference => String::new(),
                };
                self.occs.push(Occ {
                    table: display,
                    key: key.to_owned(),
                    key_type,
                    pin: Pin::Any,
                    colocation,
                    depth: self.depth,
                    from_tree: false,
                    correlated: false,
                    nullable: false,
                });
                Some(self.occs.len() - 1)
            }
            TableClass::Reference(_) => {
                if write {
                    self.reference_writes.push(display);
                } else {
                    self.reference_reads.push(display);
                }
                None
            }
            TableClass::Local => {
                self.locals.push(display);
                None
            }
            TableClass::Catalog => {
                if write {
                    self.locals.push(display);
                } else {
                    self.catalog_relations.push(display);
                }
                None
            }
        }
    }

    fn function_used(&mut self, parts: &[String]) {
        if self.local_dependent.is_none() && !is_portable_function(parts) {
            self.local_dependent = Some(parts.join("."));
        }
    }

    /// Apply a filter (WHERE, or a join's ON) whose conjuncts restrict the occurrences
    /// in `filt`.
    fn filter(&mut self, e: &Expr, filt: &[usize]) {
        let mut cs = Vec::new();
        conjuncts(e, &mut cs);
        for c in cs {
            self.conjunct(c, filt);
        }
    }

    fn conjunct(&mut self, e: &Expr, filt: &[usize]) {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let l = self.key_ref(left);
                let r = self.key_ref(right);
                match (l, r) {
                    (Some(a), Some(b)) => self.key_equality(a, b, filt),
                    (Some(a), None) => self.restrict(a, std::slice::from_ref(&**right), filt),
                    (None, Some(b)) => self.restrict(b, std::slice::from_ref(&**left), filt),
                    (None, None) => {}
                }
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                if let Some(a) = self.key_ref(expr) {
                    self.restrict(a, list, filt);
                }
            }
            Expr::InSubquery {
                expr,
                subquery,
                negated: false,
            } => {
                if let Some(a) = self.key_ref(expr).filter(|a| filt.contains(a)) {
                    self.pending_in
                        .push((&**subquery as *const Query as usize, a));
                }
            }
            _ => {}
        }
    }

    fn key_equality(&mut self, a: usize, b: usize, filt: &[usize]) {
        if a == b || key_family(self.occs[a].key_type) != key_family(self.occs[b].key_type) {
            return;
        }
        self.joins.push((a, b));
        if filt.contains(&a) {
            self.edges.push((a, b));
            if self.occs[b].depth < self.occs[a].depth {
                self.occs[a].correlated = true;
            }
        }
        if filt.contains(&b) {
            self.edges.push((b, a));
            if self.occs[a].depth < self.occs[b].depth {
                self.occs[b].correlated = true;
            }
        }
    }

    /// `occ.key = e` or `occ.key IN (es)`.
    fn restrict(&mut self, occ: usize, es: &[Expr], filt: &[usize]) {
        if !filt.contains(&occ) {
            return;
        }
        let kt = self.occs[occ].key_type;
        let mut values = Vec::new();
        let mut params = BTreeSet::new();
        for e in es {
            match const_value(e, kt) {
                Some(Const::Value(v)) => values.push(v),
                Some(Const::Null) => {}
                Some(Const::Param(n)) => {
                    params.insert(n);
                }
                None => return,
            }
        }
        let pin = match (values.is_empty(), params.len()) {
            (_, 0) => Pin::Values(values),
            (true, 1) => Pin::Param(params.first().copied().unwrap_or(0)),
            _ => Pin::Params,
        };
        self.occs[occ].pin.intersect(&pin);
    }

    /// The distributed occurrence whose shard key `e` names, if any.
    /// A shard-key reference that keeps each group of a GROUP BY, DISTINCT or window
    /// PARTITION BY on one shard: not the key of an outer join's nullable side, whose
    /// NULL-extended rows come from every shard.
    fn group_key_ref(&self, e: &Expr) -> Option<usize> {
        self.key_ref(e).filter(|&o| !self.occs[o].nullable)
    }

    fn key_ref(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Nested(inner) => self.key_ref(inner),
            Expr::Identifier(id) => {
                // Unqualified: only the innermost FROM scope (an inner table with a
                // column of that name would shadow any outer one).
                let col = fold_ident(id);
                let scope = self.scopes.iter().rev().find(|s| s.is_from)?;
                let mut found = scope
                    .rels
                    .iter()
                    .filter_map(|r| r.occ)
                    .filter(|&o| self.occs[o].key == col);
                let first = found.next()?;
                found.next().is_none().then_some(first)
            }
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
                let col = fold_ident(ids.last()?);
                let qual: Vec<String> = ids[..ids.len() - 1].iter().map(fold_ident).collect();
                for scope in self.scopes.iter().rev().filter(|s| s.is_from) {
                    let rel = scope.rels.iter().find(|r| match qual.as_slice() {
                        [q] => r.name == *q,
                        q => r.full.as_deref().is_some_and(|f| f.ends_with(q)),
                    });
                    if let Some(rel) = rel {
                        return rel.occ.filter(|&o| self.occs[o].key == col);
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Walk any AST node for subqueries (analysed as nested scopes), function calls
    /// and casts, and relations outside a modelled position.
    fn walk<T: Visit>(&mut self, node: &T) {
        let mut w = Walker { a: self, depth: 0 };
        let _ = node.visit(&mut w);
    }

    /// Propagate restrictions along the edges until nothing changes.
    fn propagate(&mut self) {
        for _ in 0..=self.occs.len() {
            let mut changed = false;
            for &(a, b) in &self.edges {
                let pb = self.occs[b].pin.clone();
                changed |= self.occs[a].pin.intersect(&pb);
            }
            if !changed {
                break;
            }
        }
    }

    /// The route for the statement, given what the walk found.
    /// The route for statement `st`, which the walk analysed: as for any statement,
    /// and a multi-shard query gets a fan-out plan ([`crate::fanout`]).
    pub(crate) fn route_statement(mut self, st: Option<&Statement>) -> Route {
        if let Some(e) = self.error.take() {
            return Route::Error(e);
        }
        if let Some(u) = self.unsupported.take() {
            return Route::Unsupported(u);
        }
        if self.occs.is_empty() {
            if let Some(r) = self.reference_writes.first() {
                // Only reference tables written: the same statement on every shard, in
                // one distributed transaction (SPEC §5 rule 4).
                return match st {
                    Some(st) if crate::fanout::MULTI_SHARD_WRITES => self.replicated_write(st, r),
                    _ => reference_write(r),
                };
            }
            if self.select_into
                || !self.locals.is_empty()
                || !self.catalog_relations.is_empty()
                || self.local_dependent.is_some()
            {
                return Route::Shard(self.catalog.local_shard);
            }
            return Route::AnyShard;
        }
        let first = self.occs[0].table.clone();
        if let Some(l) = self.locals.first() {
            return Route::Unsupported(format!(
                "statement mixes distributed table {first} and local table {l}"
            ));
        }
        if let Some(r) = self.reference_writes.first() {
            // Each shard would read only its own rows of the distributed table.
            return Route::Unsupported(format!(
                "write to reference table {r} reading distributed table {first} (each shard would see only its own rows)"
            ));
        }
        if self.select_into {
            return Route::Unsupported(format!("SELECT INTO from distributed table {first}"));
        }
        self.propagate();
        let mut shards: BTreeSet<ShardId> = BTreeSet::new();
        let mut params: BTreeSet<usize> = BTreeSet::new();
        let mut unpinned = Vec::new();
        let mut multi_param = None;
        for (i, o) in self.occs.iter().enumerate() {
            match &o.pin {
                Pin::Any => unpinned.push(i),
                Pin::Values(vs) => {
                    for v in vs {
                        match shard_of(self.catalog, v) {
                            Some(s) => {
                                shards.insert(s);
                            }
                            None => {
                                return Route::Unsupported(format!(
                                    "no shard owns the bucket of a key of distributed table {}",
                                    o.table
                                ))
                            }
                        }
                    }
                }
                Pin::Param(n) => {
                    params.insert(*n);
                }
                Pin::Params => multi_param = Some(i),
            }
        }
        if !unpinned.is_empty() {
            let fan = self.occs.len() == 1 || unpinned.len() == self.occs.len() && self.connected();
            if let (true, Some(st)) = (fan, st) {
                if self.verb != "query" {
                    let Route::Unsupported(msg) = self.unpinned_message(&unpinned) else {
                        return self.unpinned_message(&unpinned);
                    };
                    return crate::fanout::plan_write(
                        st,
                        self.catalog.shard_ids(),
                        self.occs[0].table.clone(),
                        msg,
                    );
                }
                return self.fanout(st, None);
            }
            return self.unpinned_message(&unpinned);
        }
        if let Some(i) = multi_param {
            // A read runs on every shard with its whole WHERE clause: the shards filter
            // by the parameters themselves (pruning to their shards would be an
            // optimisation, decided at Bind).
            let fan = self.occs.len() == 1 || self.connected();
            if let (true, Some(st), "query") = (fan, st, self.verb) {
                return self.fanout(st, None);
            }
            let refusal = format!(
                "shard key of distributed table {} compared with several parameters (multi-shard routing at Bind is not yet supported)",
                self.occs[i].table
            );
            if let (Some(o), Some(st)) = (self.insert_target, st) {
                if self.occs.len() == 1 && crate::fanout::MULTI_SHARD_WRITES {
                    // A multi-row INSERT … VALUES: its rows are routed at Bind.
                    let occ = &self.occs[o];
                    return crate::split::param_insert(
                        st,
                        &occ.table,
                        &occ.key,
                        occ.key_type,
                        refusal,
                    );
                }
            }
            return Route::Unsupported(refusal);
        }
        match (shards.len(), params.len(), st) {
            (n @ (0 | 1), 0, Some(st)) if self.force_fanout && self.verb == "query" => {
                let targets = (n == 1).then(|| shards.into_iter().collect());
                self.fanout(st, targets)
            }
            (_, 1, Some(st)) if self.force_fanout && self.verb == "query" => self.fanout(st, None),
            _ => self.pinned(shards, params, st, &first),
        }
    }

    /// [`Self::route_statement`] once every occurrence is pinned: by constants to
    /// `shards`, or by `params`.
    fn pinned(
        mut self,
        shards: BTreeSet<ShardId>,
        params: BTreeSet<usize>,
        st: Option<&Statement>,
        first: &str,
    ) -> Route {
        let first = first.to_owned();
        match (shards.len(), params.len()) {
            (0, 0) => Route::AnyShard,
            (1, 0) => shards.first().map_or(Route::AnyShard, |s| Route::Shard(*s)),
            (n, 0) if self.insert_target.is_none() && self.connected() && st.is_some() => {
                match st {
                    Some(st) if self.verb == "query" => {
                        self.fanout(st, Some(shards.into_iter().collect()))
                    }
                    Some(st) => match multi_shard(self.verb, &first, false, n) {
                        Route::Unsupported(msg) => crate::fanout::plan_write(
                            st,
                            shards.into_iter().collect(),
                            first.clone(),
                            msg,
                        ),
                        other => other,
                    },
                    None => multi_shard(self.verb, &first, false, n),
                }
            }
            (n, 0) => {
                let refusal = multi_shard(self.verb, &first, self.insert_target.is_some(), n);
                match (self.insert_target, st) {
                    // A multi-row INSERT … VALUES: one INSERT per shard with its rows.
                    (Some(o), Some(st))
                        if self.occs.len() == 1 && crate::fanout::MULTI_SHARD_WRITES =>
                    {
                        let occ = &self.occs[o];
                        crate::split::split_insert(
                            st,
                            self.catalog,
                            &occ.table,
                            &occ.key,
                            occ.key_type,
                            refusal,
                        )
                    }
                    _ => refusal,
                }
            }
            (0, 1) => {
                let param = params.first().copied().unwrap_or(0);
                let key_type = self
                    .occs
                    .iter()
                    .find(|o| o.pin == Pin::Param(param))
                    .map_or(KeyType::Int8, |o| o.key_type);
                Route::ShardByParam { param, key_type }
            }
            _ => {
                let refusal = format!(
                    "shard keys of distributed table {first} compared with different parameters or with both constants and parameters (not yet supported)"
                );
                match (self.insert_target, st) {
                    // A multi-row INSERT … VALUES: its rows are routed at Bind.
                    (Some(o), Some(st))
                        if self.occs.len() == 1 && crate::fanout::MULTI_SHARD_WRITES =>
                    {
                        let occ = &self.occs[o];
                        crate::split::param_insert(st, &occ.table, &occ.key, occ.key_type, refusal)
                    }
                    _ => Route::Unsupported(refusal),
                }
            }
        }
    }

    /// A write to reference tables only (`first` names one): the same statement on
    /// every shard, if every shard computes the same values (see [`crate::replicated`]).
    fn replicated_write(&self, st: &Statement, first: &str) -> Route {
        if let Some(l) = self.locals.first() {
            return Route::Unsupported(format!(
                "write to reference table \"{first}\" reading local table {l} (it exists on the local shard only)"
            ));
        }
        if let Some(c) = self.catalog_relations.first() {
            return Route::Unsupported(format!(
                "write to reference table \"{first}\" reading catalog relation {c} (its contents differ between shards)"
            ));
        }
        match crate::replicated::check(st, self.catalog, first) {
            Ok(defaults) => Route::FanoutWrite(crate::FanoutWrite {
                tables: self.reference_writes.clone(),
                shards: self.catalog.shard_ids(),
                sql: st.to_string(),
                replicated: true,
                defaults,
                shard_sql: Vec::new(),
                key_move: None,
            }),
            Err(msg) => Route::Unsupported(msg),
        }
    }

    /// A statement that runs on several shards (SPEC §5 rule 2): `targets` are the
    /// shards its key values live on, `None` for every shard.
    fn fanout(&mut self, st: &Statement, targets: Option<Vec<ShardId>>) -> Route {
        let first = self.occs[0].table.clone();
        if let Some(msg) = self.nonlocal.take() {
            return Route::Unsupported(msg);
        }
        for o in &self.occs {
            if !o.from_tree && !o.correlated && !self.in_linked(o) {
                return Route::Unsupported(format!(
                    "subquery over distributed table {} that is not correlated on its shard key",
                    o.table
                ));
            }
            if o.colocation != self.occs[0].colocation {
                return Route::Unsupported(format!(
                    "join of distributed tables {first} and {} of different colocation groups",
                    o.table
                ));
            }
        }
        let shards = targets.unwrap_or_else(|| self.catalog.shard_ids());
        match st {
            Statement::Query(q) if self.verb == "query" => {
                if let Some(f) = &self.local_dependent {
                    return Route::Unsupported(format!(
                        "function or type {f} in a multi-shard query (only built-in functions are known to behave alike on every shard)"
                    ));
                }
                match crate::fanout::plan_query(q, shards, &self.top, &self.occs) {
                    Ok(mut plan) => {
                        for o in &self.occs {
                            if !plan.tables.contains(&o.table) {
                                plan.tables.push(o.table.clone());
                            }
                        }
                        if !matches!(&plan.merge, crate::MergePlan::Stream(m) if m.sort.is_empty())
                        {
                            // Sorted or finished: the merge may find a type it cannot
                            // handle once the shards describe their rows.
                            let facts = crate::collect::Facts {
                                reason: "the shards' answers cannot be merged",
                                local_dependent: None,
                                reads_other: !self.reference_reads.is_empty()
                                    || !self.locals.is_empty()
                                    || !self.catalog_relations.is_empty(),
                            };
                            plan.fallback = crate::collect::plan(st, self.catalog, facts)
                                .ok()
                                .map(Box::new);
                        }
                        Route::Fanout(plan)
                    }
                    Err(msg) if msg.contains(first.as_str()) => Route::Unsupported(msg),
                    Err(msg) => Route::Unsupported(format!("{msg} (distributed table {first})")),
                }
            }
            _ => Route::Unsupported(format!(
                "multi-shard {} on distributed table {first} (fan-out not yet supported)",
                self.verb
            )),
        }
    }

    fn in_linked(&self, o: &Occ) -> bool {
        let i = self.occs.iter().position(|x| std::ptr::eq(x, o));
        i.is_some_and(|i| {
            self.edges
                .iter()
                .any(|&(a, b)| a == i && self.occs[b].from_tree && self.joins.contains(&(b, a)))
        })
    }

    fn unpinned_message(&self, unpinned: &[usize]) -> Route {
        let names = |ids: &mut dyn Iterator<Item = usize>| {
            let mut v: Vec<&str> = Vec::new();
            for i in ids {
                let t = self.occs[i].table.as_str();
                if !v.contains(&t) {
                    v.push(t);
                }
            }
            v
        };
        let u = unpinned[0];
        if self.occs.len() == 1 || unpinned.len() == self.occs.len() && self.connected() {
            let all = names(&mut (0..self.occs.len()));
            let plural = if all.len() > 1 { "s" } else { "" };
            return Route::Unsupported(format!(
                "{} on distributed table{plural} {} without a shard key filter (multi-shard writes need a distributed transaction, not yet supported)",
                self.verb,
                all.join(", ")
            ));
        }
        let other = (0..self.occs.len())
            .find(|&i| i != u)
            .map_or(String::new(), |i| self.occs[i].table.clone());
        Route::Unsupported(format!(
            "join of distributed tables {other} and {} that is not on the shard key of {} (repartition joins are not supported)",
            self.occs[u].table, self.occs[u].table
        ))
    }

    /// True if all occurrences are linked by shard-key equalities (a co-located join).
    fn connected(&self) -> bool {
        let n = self.occs.len();
        let mut seen = vec![false; n];
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            for &(a, b) in &self.joins {
                if a == i && !seen[b] {
                    stack.push(b);
                }
                if b == i && !seen[a] {
                    stack.push(a);
                }
            }
        }
        seen.iter().all(|&s| s)
    }
}

/// The refusal for a reference-table write that cannot run as one statement on every
/// shard yet (COPY FROM, or mixed with distributed tables); SPEC §5 rule 4.
pub(crate) fn reference_write(table: &str) -> Route {
    Route::Unsupported(format!(
        "write to reference table {table} needs a distributed transaction (not yet supported)"
    ))
}

/// A statement whose keys span several shards (SPEC §5 rule 2, not yet supported).
fn multi_shard(verb: &str, table: &str, insert: bool, n: usize) -> Route {
    if insert {
        Route::Unsupported(format!(
            "multi-row INSERT into distributed table {table} spanning {n} shards whose rows read other distributed tables (each shard would see only its own rows)"
        ))
    } else {
        Route::Unsupported(format!(
            "multi-shard {verb} on distributed table {table}: its shard key values span {n} shards (multi-shard writes need a distributed transaction, not yet supported)"
        ))
    }
}

fn alias_or(alias: &Option<TableAlias>, parts: &[String]) -> String {
    match alias {
        Some(a) => fold_ident(&a.name),
        None => parts.last().cloned().unwrap_or_default(),
    }
}

fn last_is(name: &ObjectName, col: &str) -> bool {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .is_some_and(|id| fold_ident(id) == col)
}

/// The top-level AND chain of a condition.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// True if a cast to `dt` keeps a value of the key's type unchanged (so that the
/// literal inside identifies the key): integer casts for integer keys, unbounded
/// text/varchar for text keys, uuid for uuid keys.
fn cast_fits(dt: &DataType, kt: KeyType) -> bool {
    match key_family(kt) {
        0 => matches!(
            dt,
            DataType::Int2(None)
                | DataType::SmallInt(None)
                | DataType::Int(None)
                | DataType::Int4(None)
                | DataType::Integer(None)
                | DataType::Int8(None)
                | DataType::BigInt(None)
        ),
        1 => matches!(
            dt,
            DataType::Text
                | DataType::Varchar(None)
                | DataType::CharacterVarying(None)
                | DataType::CharVarying(None)
        ),
        _ => match dt {
            DataType::Uuid => true,
            DataType::Custom(n, args) => {
                args.is_empty()
                    && n.0.len() == 1
                    && n.0[0]
                        .as_ident()
                        .is_some_and(|i| i.value.eq_ignore_ascii_case("uuid"))
            }
            _ => false,
        },
    }
}

/// The constant, NULL or parameter an expression compared with a key of type `kt`
/// stands for, if it is one PostgreSQL would read exactly as that key value.
pub(crate) fn const_value(e: &Expr, kt: KeyType) -> Option<Const> {
    match e {
        Expr::Nested(inner) => const_value(inner, kt),
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Const::Null),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .map(Const::Param),
            Value::Number(n, _) if kt.is_integer() => key_from_literal(n, kt).map(Const::Value),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => key_from_literal(s, kt).map(Const::Value),
            Value::DollarQuotedString(d) => key_from_literal(&d.value, kt).map(Const::Value),
            _ => None,
        },
        Expr::UnaryOp { op, expr } if kt.is_integer() => {
            let sign = match op {
                UnaryOperator::Minus => "-",
                UnaryOperator::Plus => "",
                _ => return None,
            };
            match &**expr {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) if !n.starts_with(['-', '+']) => {
                        key_from_literal(&format!("{sign}{n}"), kt).map(Const::Value)
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } if cast_fits(data_type, kt) => const_value(expr, kt),
        Expr::TypedString(ts) if cast_fits(&ts.data_type, kt) => match &ts.value.value {
            Value::SingleQuotedString(s) => key_from_literal(s, kt).map(Const::Value),
            _ => None,
        },
        _ => None,
    }
}

/// Visits an AST node: subqueries at the top are analysed with the structured walk
/// (their own scope, nested in the current one); function calls and casts at the top
/// are checked for shard-local dependencies; relations at the top (in positions the
/// walk does not model) are registered as unrestricted.
struct Walker<'w, 'c> {
    a: &'w mut Analysis<'c>,
    depth: usize,
}

impl Visitor for Walker<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.a.query(q);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        if self.depth == 0 {
            let parts = name_parts(name);
            self.a.seen.push(parts.clone());
            self.a.register_table(&parts);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 || self.a.local_dependent.is_some() {
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Function(f) => self.a.function_used(&name_parts(&f.name)),
            Expr::Cast { data_type, .. } if depends_on_objects(data_type) => {
                self.a.local_dependent = Some(data_type.to_string());
            }
            Expr::TypedString(ts) if depends_on_objects(&ts.data_type) => {
                self.a.local_dependent = Some(ts.data_type.to_string());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Casts that look up objects by name (`'t'::regclass`) or to user-defined types.
fn depends_on_objects(dt: &DataType) -> bool {
    match dt {
        DataType::Regclass => true,
        DataType::Custom(name, _) => {
            let n = name_parts(name);
            let last = n.last().map(String::as_str).unwrap_or("");
            last.starts_with("reg")
                || !matches!(
                    last,
                    "oid"
                        | "name"
                        | "inet"
                        | "cidr"
                        | "macaddr"
                        | "money"
                        | "xml"
                        | "bpchar"
                        | "int2vector"
                        | "oidvector"
                        | "xid"
                        | "xid8"
                        | "cid"
                        | "tid"
                        | "pg_lsn"
                        | "txid_snapshot"
                        | "pg_snapshot"
                        | "uuid"
                        | "char"
                        | "jsonpath"
                        | "point"
                        | "line"
                        | "lseg"
                        | "box"
                        | "path"
                        | "polygon"
                        | "circle"
                        | "timestamptz"
                        | "timetz"
                        | "float4"
                        | "float8"
                        | "int2"
                        | "int4"
                        | "int8"
                        | "serial"
                        | "bool"
                        | "numeric"
                        | "varchar"
                        | "text"
                        | "bytea"
                        | "json"
                        | "jsonb"
                        | "date"
                        | "interval"
                        | "unknown"
                        | "void"
                        | "record"
                        | "anyelement"
                        | "aclitem"
                        | "tsvector"
                        | "tsquery"
                )
        }
        DataType::Array(_) => false,
        _ => false,
    }
}

/// The hot path without sqlparser: `SELECT list FROM t [alias] WHERE key = const`,
/// `UPDATE t [alias] SET … WHERE key = const` and `DELETE FROM t [alias] WHERE key =
/// const` on a distributed table, with no parenthesis anywhere (so no subquery, function
/// call or row constructor) and nothing after the one condition — pgbench's statements
/// in the simple protocol. Anything else, or any doubt, returns `None` and the statement
/// takes the full path; tests check that both paths agree.
pub(crate) fn fast_path(
    toks: &[crate::parse::Token<'_>],
    catalog: &Catalog,
) -> Option<(Route, Option<PlanError>)> {
    use crate::parse::{read_name, Tok};
    if toks.first().is_some_and(|t| t.tok.is_word("insert")) {
        return fast_insert(toks, catalog);
    }
    if toks
        .iter()
        .any(|t| matches!(t.tok, Tok::Punct(b'(' | b')' | b';' | b'[' | b'$')))
    {
        return None;
    }
    let is = |i: usize, kw: &str| toks.get(i).is_some_and(|t| t.tok.is_word(kw));
    let first = toks.first()?;
    let mut j;
    let forbidden = [
        "from",
        "into",
        "where",
        "returning",
        "select",
        "with",
        "only",
    ];
    if first.tok.is_word("select") {
        let from = toks.iter().position(|t| t.tok.is_word("from"))?;
        if from < 2 {
            return None;
        }
        for t in &toks[1..from] {
            let ok = match t.tok {
                Tok::Word(w) => !forbidden.iter().any(|f| w.eq_ignore_ascii_case(f)),
                Tok::QuotedIdent(_) => true,
                Tok::Punct(c) => matches!(c, b',' | b'.' | b'*'),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        j = from + 1;
    } else if first.tok.is_word("delete") && is(1, "from") {
        j = 2;
    } else if first.tok.is_word("update") {
        j = 1;
    } else {
        return None;
    }
    if is(j, "only") {
        return None;
    }
    let (parts, next) = read_name(toks, j)?;
    j = next;
    let (key, key_type) = match classify_table(catalog, &parts).0 {
        TableClass::Distributed { key, key_type, .. } => (key, key_type),
        TableClass::Local => {
            return fast_local(toks, j, first.tok.is_word("update"), catalog)
                .then_some((Route::Shard(catalog.local_shard), None));
        }
        _ => return None,
    };
    // Optional alias.
    let mut alias = None;
    if is(j, "as") {
        j += 1;
    }
    if !is(j, "where") && !is(j, "set") {
        match toks.get(j).map(|t| t.tok) {
            Some(t @ (Tok::Word(_) | Tok::QuotedIdent(_))) => {
                alias = t.ident();
                j += 1;
            }
            _ => return None,
        }
    }
    let qualifier = alias.or_else(|| parts.last().cloned())?;
    if first.tok.is_word("update") {
        if !is(j, "set") {
            return None;
        }
        // Assignments up to WHERE: plain values only; no target may be the key.
        let where_at = j + toks[j..].iter().position(|t| t.tok.is_word("where"))?;
        let mut expect_target = true;
        for t in &toks[j + 1..where_at] {
            match t.tok {
                Tok::Word(w) if forbidden.iter().any(|f| w.eq_ignore_ascii_case(f)) => return None,
                Tok::Punct(b',') => expect_target = true,
                Tok::Punct(b'.' | b'+' | b'-' | b'*' | b'/' | b'=') => {}
                Tok::Punct(_) => return None,
                Tok::Word(_) | Tok::QuotedIdent(_) if expect_target => {
                    if t.tok.ident().as_deref() == Some(key) {
                        return None;
                    }
                    expect_target = false;
                }
                _ => expect_target = false,
            }
        }
        j = where_at;
    }
    if !is(j, "where") {
        return None;
    }
    j += 1;
    // `[q.]key = const` or `const = [q.]key`, then the end.
    let column_at = |i: usize| -> Option<usize> {
        match (toks.get(i).map(|t| t.tok), toks.get(i + 1).map(|t| t.tok)) {
            (Some(q), Some(Tok::Punct(b'.'))) => {
                let col = toks.get(i + 2)?.tok.ident()?;
                (q.ident()? == qualifier && col == key).then_some(i + 3)
            }
            (Some(c), _) => (c.ident()? == key).then_some(i + 1),
            _ => None,
        }
    };
    let const_at = |i: usize| -> Option<(Const, usize)> {
        match (toks.get(i).map(|t| t.tok), toks.get(i + 1).map(|t| t.tok)) {
            (Some(Tok::Number(n)), _) if key_type.is_integer() => {
                Some((Const::Value(key_from_literal(n, key_type)?), i + 1))
            }
            (Some(Tok::Punct(b'-')), Some(Tok::Number(n))) if key_type.is_integer() => Some((
                Const::Value(key_from_literal(&format!("-{n}"), key_type)?),
                i + 2,
            )),
            (Some(s @ Tok::Str { .. }), _) => Some((
                Const::Value(key_from_literal(&s.string_value()?, key_type)?),
                i + 1,
            )),
            (Some(Tok::Param(n)), _) => Some((Const::Param(n), i + 1)),
            _ => None,
        }
    };
    let (c, end) = match column_at(j) {
        Some(k) if toks.get(k).map(|t| t.tok) == Some(Tok::Punct(b'=')) => const_at(k + 1)?,
        _ => {
            let (c, k) = const_at(j)?;
            if toks.get(k).map(|t| t.tok) != Some(Tok::Punct(b'=')) {
                return None;
            }
            (c, column_at(k + 1)?)
        }
    };
    if end != toks.len() {
        return None;
    }
    match c {
        Const::Value(v) => shard_of(catalog, &v).map(|s| (Route::Shard(s), None)),
        Const::Param(param) => Some((Route::ShardByParam { param, key_type }, None)),
        Const::Null => None,
    }
}

/// `INSERT INTO t (cols) VALUES (vals)`: one row, no nested parentheses, nothing after.
fn fast_insert(
    toks: &[crate::parse::Token<'_>],
    catalog: &Catalog,
) -> Option<(Route, Option<PlanError>)> {
    use crate::parse::{read_name, Tok};
    let is = |i: usize, kw: &str| toks.get(i).is_some_and(|t| t.tok.is_word(kw));
    let punct = |i: usize, c: u8| toks.get(i).map(|t| t.tok) == Some(Tok::Punct(c));
    if !is(1, "into") {
        return None;
    }
    let (parts, mut j) = read_name(toks, 2)?;
    let (key, key_type, table) = match classify_table(catalog, &parts) {
        (TableClass::Distributed { key, key_type, .. }, table) => (key, key_type, table),
        (TableClass::Local, _) => {
            return local_insert(toks, j, catalog)
                .then_some((Route::Shard(catalog.local_shard), None));
        }
        _ => return None,
    };
    if !punct(j, b'(') {
        return None;
    }
    let mut key_index = None;
    let mut n = 0usize;
    j += 1;
    loop {
        let col = toks.get(j)?.tok.ident()?;
        if col == key {
            key_index = Some(n);
        }
        n += 1;
        j += 1;
        if punct(j, b',') {
            j += 1;
        } else if punct(j, b')') {
            j += 1;
            break;
        } else {
            return None;
        }
    }
    let key_index = key_index?;
    if !is(j, "values") || !punct(j + 1, b'(') {
        return None;
    }
    j += 2;
    // The values: comma-separated runs of tokens without parentheses.
    let mut values: Vec<&[crate::parse::Token<'_>]> = Vec::with_capacity(n);
    let mut start = j;
    loop {
        match toks.get(j)?.tok {
            Tok::Punct(b',') => {
                values.push(&toks[start..j]);
                start = j + 1;
            }
            Tok::Punct(b')') => {
                values.push(&toks[start..j]);
                break;
            }
            Tok::Punct(b'(' | b';' | b'[') => return None,
            Tok::Word(w)
                if ["select", "default", "values", "with"]
                    .iter()
                    .any(|f| w.eq_ignore_ascii_case(f)) =>
            {
                return None
            }
            _ => {}
        }
        j += 1;
    }
    if j + 1 != toks.len() || values.len() != n {
        return None;
    }
    let c = match values[key_index]
        .iter()
        .map(|t| t.tok)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [Tok::Number(v)] if key_type.is_integer() => Const::Value(key_from_literal(v, key_type)?),
        [Tok::Punct(b'-'), Tok::Number(v)] if key_type.is_integer() => {
            Const::Value(key_from_literal(&format!("-{v}"), key_type)?)
        }
        [s @ Tok::Str { .. }] => Const::Value(key_from_literal(&s.string_value()?, key_type)?),
        [Tok::Param(p)] => Const::Param(*p),
        _ => return None,
    };
    match c {
        Const::Value(v) => shard_of(catalog, &v).map(|s| (Route::Shard(s), None)),
        Const::Param(param) => Some((
            Route::ShardByParam { param, key_type },
            Some(PlanError::NullShardKey {
                table,
                column: key.to_owned(),
            }),
        )),
        Const::Null => None,
    }
}

/// Words that may bring another table, a subquery or a second statement into a tail the
/// local fast path accepts: with any of them, the full path decides.
const LOCAL_TAIL_FORBIDDEN: [&str; 14] = [
    "select",
    "from",
    "join",
    "union",
    "intersect",
    "except",
    "with",
    "into",
    "returning",
    "values",
    "table",
    "lateral",
    "using",
    "only",
];

/// True when some identifier in the statement could name a declared table (its last
/// name part, ignoring case): the full path, or its keyword fallback when sqlparser
/// cannot parse the statement, looks at every name, so the local fast path steps aside.
fn names_declared(toks: &[crate::parse::Token<'_>], catalog: &Catalog) -> bool {
    use crate::parse::Tok;
    let last = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    toks.iter().any(|t| match t.tok {
        Tok::Word(w) => catalog
            .tables
            .iter()
            .any(|d| last(&d.name).eq_ignore_ascii_case(w)),
        Tok::QuotedIdent(q) => q.contains('"') || catalog.tables.iter().any(|d| last(&d.name) == q),
        _ => false,
    })
}

/// The rest of a `SELECT list FROM t`, `UPDATE t` or `DELETE FROM t` (from token `j`,
/// after the table name) on a local (undeclared) table, when the full path would send
/// the statement to the local shard too: an optional alias, then nothing or `WHERE …`
/// (`SET … [WHERE …]` for UPDATE) without parentheses, another table, a subquery or a
/// set operation, and no name the catalog declares. Every table the statement touches
/// is then that one local table, which is the local shard's (SPEC §4), so routing an
/// unmodified application's statements costs no parse (issue 16).
fn fast_local(
    toks: &[crate::parse::Token<'_>],
    mut j: usize,
    update: bool,
    catalog: &Catalog,
) -> bool {
    use crate::parse::Tok;
    let is = |i: usize, kw: &str| toks.get(i).is_some_and(|t| t.tok.is_word(kw));
    let clause = if update { "set" } else { "where" };
    if is(j, "as") {
        j += 1;
        if !matches!(
            toks.get(j).map(|t| t.tok),
            Some(Tok::Word(_) | Tok::QuotedIdent(_))
        ) {
            return false;
        }
        j += 1;
    } else if !is(j, clause) {
        match toks.get(j).map(|t| t.tok) {
            Some(Tok::Word(_) | Tok::QuotedIdent(_)) => j += 1,
            None if !update => {}
            _ => return false,
        }
    }
    if j < toks.len() && !is(j, clause) || update && j == toks.len() || j + 1 == toks.len() {
        return false;
    }
    let tail_ok = toks[j..].iter().all(|t| match t.tok {
        Tok::Word(w) => !LOCAL_TAIL_FORBIDDEN
            .iter()
            .any(|f| w.eq_ignore_ascii_case(f)),
        // Parentheses, `;`, `[` and `$` were refused before (see `fast_path`).
        _ => true,
    });
    tail_ok && !names_declared(toks, catalog)
}

/// `INSERT INTO t (cols) VALUES (vals)` on a local table (from token `j`, after the
/// name): one row of values without parentheses or subqueries, nothing after, and no
/// name the catalog declares: the local shard, as the full path routes it.
fn local_insert(toks: &[crate::parse::Token<'_>], mut j: usize, catalog: &Catalog) -> bool {
    use crate::parse::Tok;
    let punct = |i: usize, c: u8| toks.get(i).map(|t| t.tok) == Some(Tok::Punct(c));
    if !punct(j, b'(') {
        return false;
    }
    j += 1;
    loop {
        if toks.get(j).and_then(|t| t.tok.ident()).is_none() {
            return false;
        }
        j += 1;
        if punct(j, b',') {
            j += 1;
        } else if punct(j, b')') {
            j += 1;
            break;
        } else {
            return false;
        }
    }
    if !toks.get(j).is_some_and(|t| t.tok.is_word("values")) || !punct(j + 1, b'(') {
        return false;
    }
    j += 2;
    let close = match toks[j..].iter().position(|t| {
        matches!(t.tok, Tok::Punct(b'(' | b')' | b';' | b'[' | b'$'))
            || matches!(t.tok, Tok::Word(w) if ["select", "values", "with", "table"].iter().any(|f| w.eq_ignore_ascii_case(f)))
    }) {
        Some(k) if punct(j + k, b')') => j + k,
        _ => return false,
    };
    close > j && close + 1 == toks.len() && !names_declared(toks, catalog)
}

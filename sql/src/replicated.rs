//! Writes that replicate (SPEC §4, §5 rule 4): a write to reference tables runs the same
//! statement on every shard, so each shard evaluates its expressions on its own. Any
//! value that is not a function of the statement text and the (identical) copies makes
//! the copies diverge for good: `now()` and `CURRENT_TIMESTAMP` (each shard's
//! transaction starts at another instant), `random()`, `nextval()` (each shard has its
//! own sequence), `gen_random_uuid()`, `txid_current()`, `'now'::timestamptz`, a
//! `LIMIT` without a total order, a read of a local table or of `pg_catalog`…
//!
//! [`check`] is an allow-list, not a deny-list: a function, operator, cast or construct
//! that is not known to give every shard the same result refuses the statement (0A000,
//! naming it). It also reports which columns the statement leaves to their DEFAULT
//! ([`ColumnDefaults`]): the planner cannot see the table's defaults, so the router
//! looks them up on a shard and refuses a default that is not a plain constant (see
//! [`is_constant_default`] and the router's `refcheck`).

use crate::classify::{classify_table, TableClass};
use crate::parse::{fold_ident, name_parts};
use pgshard_catalog::Catalog;
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CastKind, DataType, Expr, FunctionArguments, Ident, Insert,
    ObjectName, OnConflictAction, OnInsert, Query, SelectItem, SetExpr, Statement, TableFactor,
    TableObject, UnaryOperator, Value, Visit, Visitor,
};
use std::ops::ControlFlow;

/// Columns of a reference table whose DEFAULT a replicated write evaluates on each
/// shard; the router refuses the write unless each of their defaults is a constant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefaults {
    /// The table as the statement names it (SQL text, quoted as written), for the
    /// router's lookup on a shard under the session's `search_path`.
    pub relation: String,
    /// The declared table name, for messages.
    pub table: String,
    pub columns: DefaultedColumns,
}

/// Which columns get their DEFAULT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultedColumns {
    /// Every column except these (an INSERT with a column list).
    AllBut(Vec<String>),
    /// Every column after the first `n`, in table order (an INSERT without a column
    /// list; `0` for `DEFAULT VALUES` or a `SELECT *` of unknown width).
    AfterFirst(usize),
    /// Exactly these (`SET col = DEFAULT`).
    Only(Vec<String>),
}

/// Functions whose result depends only on their arguments (and on session settings,
/// which the router replays alike on every shard): safe in a replicated write. Anything
/// else is refused; order-sensitive aggregates (`array_agg`, `string_agg`…) and window
/// functions are left out on purpose (the shards may scan rows in different orders).
#[rustfmt::skip]
const SAME_EVERYWHERE: &[&str] = &[
    // math
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power",
    "pow", "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians", "sin",
    "cos", "tan", "asin", "acos", "atan", "atan2", "greatest", "least", "width_bucket",
    "gcd", "lcm", "factorial", "scale", "min_scale", "trim_scale",
    // casts written as calls
    "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar", "bool",
    // strings
    "length", "char_length", "character_length", "octet_length", "bit_length", "lower",
    "upper", "initcap", "trim", "btrim", "ltrim", "rtrim", "substr", "substring",
    "position", "strpos", "replace", "concat", "concat_ws", "format", "left", "right",
    "lpad", "rpad", "repeat", "reverse", "split_part", "md5", "sha224", "sha256", "sha384",
    "sha512", "encode", "decode", "to_hex", "chr", "ascii", "quote_ident", "quote_literal",
    "quote_nullable", "regexp_replace", "regexp_match", "regexp_matches",
    "regexp_split_to_array", "regexp_count", "regexp_like", "regexp_substr",
    "string_to_array", "array_to_string", "starts_with", "translate", "overlay",
    "normalize",
    // dates (`age` with one argument reads the current date: refused in `pre_visit_expr`)
    "to_char", "to_date", "to_timestamp", "to_number", "date_trunc", "date_part", "extract",
    "date_bin", "age", "make_date", "make_time", "make_timestamp", "make_timestamptz",
    "make_interval", "justify_days", "justify_hours", "justify_interval", "isfinite",
    "timezone",
    // conditional
    "coalesce", "nullif",
    // the session's role: the router connects to every shard as the client's user
    "current_user", "session_user", "current_role", "user",
    // aggregates whose result does not depend on the order of their input
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "bit_and",
    "bit_or", "bit_xor",
    // arrays and series
    "array_length", "cardinality", "unnest", "array_append", "array_prepend", "array_cat",
    "array_position", "array_positions", "array_remove", "array_replace", "array_upper",
    "array_lower", "array_ndims", "array_dims", "array_fill", "generate_series",
    "generate_subscripts",
    // json
    "to_json", "to_jsonb", "json_build_object", "jsonb_build_object", "json_build_array",
    "jsonb_build_array", "row_to_json", "array_to_json", "jsonb_pretty", "json_typeof",
    "jsonb_typeof", "jsonb_set", "jsonb_set_lax", "jsonb_insert", "json_extract_path",
    "json_extract_path_text", "jsonb_extract_path", "jsonb_extract_path_text",
    "json_array_length", "jsonb_array_length", "jsonb_strip_nulls", "json_strip_nulls",
    "json_object", "jsonb_object",
];

/// Functions known to give each shard another value: named as such in the message.
#[rustfmt::skip]
const DIVERGENT: &[&str] = &[
    "now", "current_timestamp", "current_date", "current_time", "localtime",
    "localtimestamp", "statement_timestamp", "transaction_timestamp", "clock_timestamp",
    "timeofday", "random", "setseed", "gen_random_uuid", "uuid_generate_v1",
    "uuid_generate_v4", "nextval", "currval", "lastval", "setval", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_backend_pid", "inet_server_port",
    "inet_server_addr", "pg_postmaster_start_time", "current_setting", "version",
];

/// String values PostgreSQL's date/time input reads as the current time or date
/// (`'now'::timestamptz`, or an untyped `'now'` stored into a timestamp column).
const TIME_WORDS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// Checks a write to the reference tables `tables` (`tables[0]` names the first, for
/// messages). `Ok`: the columns whose defaults the shards will evaluate; `Err`: the
/// 0A000 message naming what would make the copies diverge.
pub(crate) fn check(
    st: &Statement,
    catalog: &Catalog,
    table: &str,
) -> Result<Vec<ColumnDefaults>, String> {
    let mut v = Check {
        catalog,
        table,
        defaults: Vec::new(),
    };
    match st.visit(&mut v) {
        ControlFlow::Break(msg) => Err(msg),
        ControlFlow::Continue(()) => Ok(v.defaults),
    }
}

struct Check<'c> {
    catalog: &'c Catalog,
    table: &'c str,
    defaults: Vec<ColumnDefaults>,
}

impl Check<'_> {
    fn refuse(&self, what: &str, known: bool) -> ControlFlow<String> {
        let table = self.table;
        ControlFlow::Break(if known {
            format!(
                "{what} in a write to reference table \"{table}\" would give each shard's copy a different value; compute the value in the client"
            )
        } else {
            format!(
                "{what} in a write to reference table \"{table}\" is not known to give every shard's copy the same value; compute the value in the client"
            )
        })
    }

    /// The declared name of `name` if it is a reference table.
    fn reference(&self, name: &ObjectName) -> Option<String> {
        match classify_table(self.catalog, &name_parts(name)) {
            (TableClass::Reference(_), display) => Some(display),
            _ => None,
        }
    }

    fn insert(&mut self, ins: &Insert) {
        let TableObject::TableName(name) = &ins.table else {
            return;
        };
        let Some(table) = self.reference(name) else {
            return;
        };
        let relation = name.to_string();
        let rows = ins.source.as_deref().and_then(|q| match &*q.body {
            SetExpr::Values(v) => Some(&v.rows),
            _ => None,
        });
        let columns = if ins.columns.is_empty() {
            let given = match (&ins.source, rows) {
                (None, _) => 0,
                (Some(_), Some(rows)) => rows
                    .iter()
                    .map(|r| r.iter().position(is_default).unwrap_or(r.len()))
                    .min()
                    .unwrap_or(0),
                (Some(q), None) => select_width(q).unwrap_or(0),
            };
            DefaultedColumns::AfterFirst(given)
        } else {
            let given = ins
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    !rows.is_some_and(|rows| rows.iter().any(|r| r.get(*i).is_some_and(is_default)))
                })
                .map(|(_, c)| fold_ident(c))
                .collect();
            DefaultedColumns::AllBut(given)
        };
        self.defaults.push(ColumnDefaults {
            relation: relation.clone(),
            table: table.clone(),
            columns,
        });
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                let cols = defaulted_targets(&du.assignments);
                if !cols.is_empty() {
                    self.defaults.push(ColumnDefaults {
                        relation,
                        table,
                        columns: DefaultedColumns::Only(cols),
                    });
                }
            }
        }
    }
}

impl Visitor for Check<'_> {
    type Break = String;

    fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<String> {
        match st {
            Statement::Insert(ins) => self.insert(ins),
            Statement::Update {
                table, assignments, ..
            } => {
                let name = match &table.relation {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                };
                let cols = defaulted_targets(assignments);
                if let (Some(name), false) = (name, cols.is_empty()) {
                    if let Some(t) = self.reference(name) {
                        self.defaults.push(ColumnDefaults {
                            relation: name.to_string(),
                            table: t,
                            columns: DefaultedColumns::Only(cols),
                        });
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<String> {
        if q.limit_clause.is_some() || q.fetch.is_some() {
            return self.refuse(
                "LIMIT, OFFSET or FETCH (the shards may pick other rows)",
                false,
            );
        }
        if let SetExpr::Select(s) = &*q.body {
            if matches!(s.distinct, Some(sqlparser::ast::Distinct::On(_))) {
                return self.refuse("DISTINCT ON (the shards may pick other rows)", false);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<String> {
        match tf {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                let parts = name_parts(name);
                if !function_is_safe(&parts) {
                    let n = parts.last().cloned().unwrap_or_default();
                    return self
                        .refuse(&format!("function {n}()"), DIVERGENT.contains(&n.as_str()));
                }
            }
            TableFactor::Table {
                sample: Some(_), ..
            } => return self.refuse("TABLESAMPLE", true),
            TableFactor::TableFunction { .. } => return self.refuse("table function", false),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<String> {
        match e {
            Expr::Function(f) => {
                let parts = name_parts(&f.name);
                let name = parts.last().cloned().unwrap_or_default();
                let shown = match &f.args {
                    FunctionArguments::None => f.name.to_string(),
                    _ => format!("{name}()"),
                };
                if f.over.is_some() {
                    return self.refuse(&format!("window function {shown}"), false);
                }
                let args = match &f.args {
                    FunctionArguments::List(l) => l.args.len(),
                    _ => 0,
                };
                let one_arg_age = name == "age" && args < 2;
                if !function_is_safe(&parts) || one_arg_age {
                    let known = DIVERGENT.contains(&name.as_str()) || one_arg_age;
                    return self.refuse(&format!("function {shown}"), known);
                }
            }
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                data_type,
                expr,
                ..
            } => {
                if !type_is_safe(data_type) {
                    return self.refuse(&format!("cast to {data_type}"), false);
                }
                if let Some(w) = time_word(expr) {
                    return self.refuse(&format!("'{w}'::{data_type}"), true);
                }
            }
            Expr::Cast { kind, .. } => {
                return self.refuse(&format!("{kind:?} cast"), false);
            }
            Expr::TypedString(ts) => {
                if !type_is_safe(&ts.data_type) {
                    return self.refuse(&format!("cast to {}", ts.data_type), false);
                }
                if let Some(w) = value_time_word(&ts.value.value) {
                    return self.refuse(&format!("{} '{w}'", ts.data_type), true);
                }
            }
            Expr::Value(v) => {
                if let Some(w) = value_time_word(&v.value) {
                    return self.refuse(&format!("the value '{w}'"), true);
                }
            }
            Expr::BinaryOp {
                op: op @ (BinaryOperator::PGCustomBinaryOperator(_) | BinaryOperator::Custom(_)),
                ..
            } => return self.refuse(&format!("operator {op}"), false),
            // `NOT`, signs, `~`, `|/`, `||/`, `@`: built-in; anything else is refused to
            // keep the list closed.
            Expr::UnaryOp {
                op:
                    UnaryOperator::Not
                    | UnaryOperator::Minus
                    | UnaryOperator::Plus
                    | UnaryOperator::PGBitwiseNot
                    | UnaryOperator::PGSquareRoot
                    | UnaryOperator::PGCubeRoot
                    | UnaryOperator::PGAbs,
                ..
            } => {}
            Expr::UnaryOp { op, .. } => return self.refuse(&format!("operator {op}"), false),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// A built-in function from [`SAME_EVERYWHERE`], unqualified or in `pg_catalog`.
fn function_is_safe(parts: &[String]) -> bool {
    let name = match parts {
        [name] => name,
        [schema, name] if schema == "pg_catalog" => name,
        _ => return false,
    };
    SAME_EVERYWHERE.contains(&name.as_str())
}

/// Casts to built-in types whose input does not depend on the shard (not `regclass`
/// and friends, whose OIDs differ; not user types, whose input functions are unknown).
fn type_is_safe(dt: &DataType) -> bool {
    match dt {
        DataType::Regclass => false,
        DataType::Array(sqlparser::ast::ArrayElemTypeDef::AngleBracket(t))
        | DataType::Array(sqlparser::ast::ArrayElemTypeDef::SquareBracket(t, _))
        | DataType::Array(sqlparser::ast::ArrayElemTypeDef::Parenthesis(t)) => type_is_safe(t),
        DataType::Custom(name, _) => {
            let n = name_parts(name);
            let last = match n.as_slice() {
                [t] => t.as_str(),
                [s, t] if s == "pg_catalog" => t.as_str(),
                _ => return false,
            };
            matches!(
                last,
                "int2"
                    | "int4"
                    | "int8"
                    | "float4"
                    | "float8"
                    | "bool"
                    | "numeric"
                    | "text"
                    | "varchar"
                    | "bpchar"
                    | "bytea"
                    | "json"
                    | "jsonb"
                    | "uuid"
                    | "date"
                    | "timestamptz"
                    | "timetz"
                    | "interval"
                    | "inet"
                    | "cidr"
                    | "macaddr"
                    | "money"
                    | "name"
                    | "oid"
                    | "serial"
                    | "tsvector"
                    | "tsquery"
                    | "point"
                    | "line"
                    | "lseg"
                    | "box"
                    | "path"
                    | "polygon"
                    | "circle"
                    | "xml"
                    | "int4range"
                    | "int8range"
                    | "numrange"
                    | "daterange"
                    | "tsrange"
                    | "tstzrange"
                    | "bit"
                    | "varbit"
            )
        }
        _ => true,
    }
}

/// The time word a literal spells (see [`TIME_WORDS`]), through parentheses.
fn time_word(e: &Expr) -> Option<String> {
    match e {
        Expr::Nested(inner) => time_word(inner),
        Expr::Value(v) => value_time_word(&v.value),
        _ => None,
    }
}

fn value_time_word(v: &Value) -> Option<String> {
    let s = match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => s.as_str(),
        Value::DollarQuotedString(d) => d.value.as_str(),
        _ => return None,
    };
    let w = s.trim().to_ascii_lowercase();
    // `'now'`, and the same word with a time zone or time after it (`'today 12:00'`).
    let first = w.split_whitespace().next().unwrap_or("");
    TIME_WORDS.contains(&first).then_some(w)
}

/// `DEFAULT` as a value (sqlparser reads it as an identifier).
fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(Ident { value, quote_style: None, .. }) if value.eq_ignore_ascii_case("default"))
}

/// The columns an assignment list sets to DEFAULT.
fn defaulted_targets(assignments: &[sqlparser::ast::Assignment]) -> Vec<String> {
    let mut out = Vec::new();
    for a in assignments {
        let names: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        let all_default = match &a.value {
            Expr::Tuple(vs) => vs.iter().all(is_default) && !vs.is_empty(),
            v => is_default(v),
        };
        let some_default = match &a.value {
            Expr::Tuple(vs) => vs.iter().any(is_default),
            v => is_default(v),
        };
        if all_default || some_default {
            // A tuple with some DEFAULTs: count every target as defaulted (safe side).
            for n in names {
                if let Some(id) = n.0.last().and_then(|p| p.as_ident()) {
                    out.push(fold_ident(id));
                }
            }
        }
    }
    out
}

/// The number of columns a plain `SELECT` produces, if it has no `*`.
fn select_width(q: &Query) -> Option<usize> {
    let SetExpr::Select(s) = &*q.body else {
        return None;
    };
    let plain = s.projection.iter().all(|i| {
        matches!(
            i,
            SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
        )
    });
    plain.then_some(s.projection.len())
}

/// True if a column default (as `pg_get_expr` prints it) is a plain constant, the same
/// whichever shard evaluates it: a literal (not a time word such as `'now'`), `NULL` or
/// a boolean, possibly signed, parenthesised or cast to a built-in type. Anything else
/// (`nextval(…)`, `now()`, `CURRENT_TIMESTAMP`, `gen_random_uuid()`, an expression) is
/// not.
pub fn is_constant_default(expr_sql: &str) -> bool {
    let Ok(e) = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(expr_sql)
        .and_then(|mut p| p.parse_expr())
    else {
        return false;
    };
    constant(&e)
}

fn constant(e: &Expr) -> bool {
    match e {
        Expr::Nested(inner) => constant(inner),
        Expr::Value(v) => match &v.value {
            Value::Number(..) | Value::Boolean(_) | Value::Null => true,
            other => {
                value_time_word(other).is_none()
                    && matches!(
                        other,
                        Value::SingleQuotedString(_)
                            | Value::EscapedStringLiteral(_)
                            | Value::UnicodeStringLiteral(_)
                            | Value::DollarQuotedString(_)
                    )
            }
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => constant(expr),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            ..
        } => type_is_safe(data_type) && constant(expr),
        Expr::TypedString(ts) => {
            type_is_safe(&ts.data_type) && value_time_word(&ts.value.value).is_none()
        }
        Expr::Array(a) => a.elem.iter().all(constant),
        _ => false,
    }
}

#[cfg(test)]
mod tests;

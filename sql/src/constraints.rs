//! Constraints the shards of a declared table cannot enforce alone (SPEC §4): a
//! PRIMARY KEY, UNIQUE constraint or unique index of a distributed table that does not
//! include the shard key (each shard sees only its own rows, so duplicates on
//! different shards would be accepted), and foreign keys whose referenced rows may live
//! on another shard (the check runs on the referencing row's shard only). DDL that
//! would create one is refused with 0A000, as `create_distributed_table` refuses such
//! a table (`router::distribute`).
//!
//! A column that is not the shard key of a distributed table may not take its values
//! from a sequence (serial, identity, `DEFAULT nextval(…)`): each shard has its own
//! sequence, so the values would repeat across shards where PostgreSQL's are unique.
//!
//! A foreign key can be enforced shard by shard when it references a reference table
//! (a full copy on every shard), or when a distributed table references a co-located
//! one by the shard key: the referencing key column matches the referenced key.

use crate::classify::{classify_table, TableClass};
use crate::parse::{fold_ident, name_parts};
use pgshard_catalog::{Catalog, TableKind};
use sqlparser::ast::{
    ColumnDef, ColumnOption, DataType, Expr, Ident, IndexColumn, ObjectName, TableConstraint,
};

/// The first constraint of `columns` and `constraints` (a CREATE TABLE, or the pieces
/// of an ALTER TABLE) on `table` that its shards could not enforce, as a message.
pub(crate) fn unenforceable(
    catalog: &Catalog,
    table: &ObjectName,
    columns: &[ColumnDef],
    constraints: &[TableConstraint],
) -> Option<String> {
    let parts = name_parts(table);
    let (class, name) = classify_table(catalog, &parts);
    for col in columns {
        if let Some(msg) = sequence_column(&class, &name, col) {
            return Some(msg);
        }
        for o in &col.options {
            let found = match &o.option {
                ColumnOption::Unique { is_primary, .. } => unique(
                    &class,
                    &name,
                    if *is_primary { "PRIMARY KEY" } else { "UNIQUE" },
                    &[fold_ident(&col.name)],
                ),
                ColumnOption::ForeignKey {
                    foreign_table,
                    referred_columns,
                    ..
                } => foreign_key(
                    catalog,
                    &class,
                    &name,
                    std::slice::from_ref(&col.name),
                    foreign_table,
                    referred_columns,
                ),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
    }
    constraints.iter().find_map(|c| match c {
        TableConstraint::Unique { columns, .. } => {
            unique(&class, &name, "UNIQUE", &index_columns(columns))
        }
        TableConstraint::PrimaryKey { columns, .. } => {
            unique(&class, &name, "PRIMARY KEY", &index_columns(columns))
        }
        TableConstraint::ForeignKey {
            columns,
            foreign_table,
            referred_columns,
            ..
        } => foreign_key(
            catalog,
            &class,
            &name,
            columns,
            foreign_table,
            referred_columns,
        ),
        _ => None,
    })
}

/// `ALTER TABLE table ALTER COLUMN column SET DEFAULT value` or `ADD GENERATED … AS
/// IDENTITY` (`value` None) that would make a non-key column of a distributed table
/// take its values from a per-shard sequence.
pub(crate) fn sequence_default(
    catalog: &Catalog,
    table: &ObjectName,
    column: &Ident,
    value: Option<&Expr>,
) -> Option<String> {
    let (class, name) = classify_table(catalog, &name_parts(table));
    let TableClass::Distributed { key, .. } = class else {
        return None;
    };
    let col = fold_ident(column);
    (col != key && value.is_none_or(calls_nextval)).then(|| sequence_message(&name, &col))
}

fn sequence_column(class: &TableClass<'_>, name: &str, col: &ColumnDef) -> Option<String> {
    let TableClass::Distributed { key, .. } = class else {
        return None;
    };
    let column = fold_ident(&col.name);
    if column == *key {
        // A sequence-backed key: an INSERT that leaves it to the default has no key
        // to route by and is refused at planning.
        return None;
    }
    let serial = matches!(&col.data_type, DataType::Custom(n, _) if matches!(
        name_parts(n).last().map(String::as_str),
        Some("serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8")
    ));
    let from_sequence = serial
        || col.options.iter().any(|o| match &o.option {
            ColumnOption::Generated {
                generation_expr: None,
                ..
            }
            | ColumnOption::Identity(_) => true,
            ColumnOption::Default(e) => calls_nextval(e),
            _ => false,
        });
    from_sequence.then(|| sequence_message(name, &column))
}

fn calls_nextval(e: &Expr) -> bool {
    e.to_string().to_ascii_lowercase().contains("nextval")
}

fn sequence_message(table: &str, column: &str) -> String {
    format!(
        "column {column} of distributed table {table} takes its values from a sequence (serial, identity or nextval default): each shard has its own sequence, so values would repeat across shards"
    )
}

/// A CREATE UNIQUE INDEX on `table` whose shards could not enforce it.
pub(crate) fn unique_index(
    catalog: &Catalog,
    table: &ObjectName,
    columns: &[IndexColumn],
) -> Option<String> {
    let (class, name) = classify_table(catalog, &name_parts(table));
    unique(&class, &name, "unique index", &index_columns(columns))
}

/// Plain column names of an index or constraint (expressions give none).
fn index_columns(columns: &[IndexColumn]) -> Vec<String> {
    columns
        .iter()
        .filter_map(|c| match &c.column.expr {
            Expr::Identifier(id) => Some(fold_ident(id)),
            _ => None,
        })
        .collect()
}

fn unique(class: &TableClass<'_>, name: &str, what: &str, columns: &[String]) -> Option<String> {
    let TableClass::Distributed { key, .. } = class else {
        return None;
    };
    (!columns.iter().any(|c| c == key)).then(|| {
        format!(
            "{what} on distributed table {name} that does not include its shard key {key} (each shard could enforce it only on its own rows)"
        )
    })
}

fn foreign_key(
    catalog: &Catalog,
    class: &TableClass<'_>,
    name: &str,
    columns: &[Ident],
    foreign_table: &ObjectName,
    referred: &[Ident],
) -> Option<String> {
    let (target, target_name) = classify_table(catalog, &name_parts(foreign_table));
    let refuse = |why: &str| Some(format!("foreign key from {name} to {target_name}: {why}"));
    match (class, &target) {
        // A full copy on every shard: every shard can check it.
        (_, TableClass::Reference(_)) => None,
        (
            TableClass::Distributed { def, key, .. },
            TableClass::Distributed {
                def: tdef,
                key: tkey,
                ..
            },
        ) => {
            let group = |d: &pgshard_catalog::TableDef| match &d.kind {
                TableKind::Distributed { colocation, .. } => Some(colocation.clone()),
                TableKind::Reference => None,
            };
            if group(def) != group(tdef) {
                return refuse(
                    "the tables are not co-located (the referenced row may be on another shard)",
                );
            }
            let cols: Vec<String> = columns.iter().map(fold_ident).collect();
            let refs: Vec<String> = referred.iter().map(fold_ident).collect();
            let on_key = match cols.iter().position(|c| c == key) {
                // `REFERENCES t` names t's primary key, which includes its shard key:
                // a one-column one is the shard key.
                Some(0) if refs.is_empty() && cols.len() == 1 => true,
                Some(i) => refs.get(i).is_some_and(|r| r == tkey),
                None => false,
            };
            if on_key {
                None
            } else {
                refuse("it does not map the shard key to the referenced shard key (the referenced row may be on another shard)")
            }
        }
        (TableClass::Distributed { .. }, _) => {
            refuse("the referenced table is not distributed or reference (it is on one shard only)")
        }
        (TableClass::Reference(_), _) => {
            refuse("a reference table can only reference reference tables (the referenced rows are spread over the shards)")
        }
        (_, TableClass::Distributed { .. }) => refuse(
            "a local table cannot reference a distributed table (its rows are on several shards)",
        ),
        _ => None,
    }
}

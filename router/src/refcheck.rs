//! Column defaults in writes to reference tables (SPEC §4, §5 rule 4).
//!
//! A reference-table write runs on every shard, and an INSERT that leaves a column out
//! (or writes `DEFAULT`) makes each shard evaluate that column's default on its own: a
//! `nextval()` (serial), `now()`, `gen_random_uuid()` or identity column gives every
//! copy a different value. The planner checks the statement's own expressions
//! (`pgshard_sql::replicated`) and reports which columns get their default
//! ([`ColumnDefaults`]); it cannot see the table, so this module looks the defaults up
//! on one shard (`pg_attrdef` through `pg_get_expr`, a domain's default when the column
//! has none, `attidentity`) and refuses the write unless every such default is a plain
//! constant ([`pgshard_sql::replicated::is_constant_default`]).
//!
//! The look-up runs for every such write, on a pooled connection with the session's
//! settings (so the table resolves under the session's `search_path`). It is not cached
//! by catalog version: `ALTER TABLE … SET DEFAULT` changes a default without changing
//! the pgshard catalog, and a stale "constant" would let copies diverge. Writes that
//! name every column (pgbench's, most applications') skip it entirely.

use crate::backend::Pools;
use crate::session::error::SessionError;
use crate::session::vars::SessionVars;
use crate::session::Session;
use pgshard_catalog::Catalog;
use pgshard_sql::replicated::{is_constant_default, ColumnDefaults, DefaultedColumns};
use pgshard_sql::FanoutWrite;
use tokio::io::{AsyncRead, AsyncWrite};

/// One column of the table, as the shard describes it.
struct Column {
    name: String,
    /// The default expression (`pg_get_expr`), the column's own or its domain's.
    default: Option<String>,
    /// `attidentity`: `a` (ALWAYS), `d` (BY DEFAULT) or empty.
    identity: String,
    /// `attgenerated`: `s` for a stored generated column (computed from the row, so the
    /// same everywhere).
    generated: String,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Refuses a reference-table write whose omitted columns have defaults that differ
    /// per shard (the call site in `session::txn`).
    pub(crate) async fn check_defaults(
        &self,
        catalog: &Catalog,
        w: &FanoutWrite,
    ) -> Result<(), SessionError> {
        let (pools, vars) = (&self.ctx.pools, &self.vars);
        check_defaults(pools, catalog, &self.user, &self.database, vars, w).await
    }
}

/// Refuses (0A000) a replicated write that would make a shard evaluate a default that
/// is not a constant. Writes without omitted columns return at once.
async fn check_defaults(
    pools: &Pools,
    catalog: &Catalog,
    user: &str,
    database: &str,
    vars: &SessionVars,
    w: &FanoutWrite,
) -> Result<(), SessionError> {
    if !w.replicated || w.defaults.is_empty() {
        return Ok(());
    }
    let Some(&shard) = w.shards.first() else {
        return Ok(());
    };
    let node = catalog
        .primary(shard)
        .ok_or(SessionError::NoPrimary(shard))?;
    let mut conn = pools
        .get(node, user, database)
        .checkout()
        .await
        .map_err(|e| SessionError::from_backend(shard, e))?;
    let fp = vars.fingerprint();
    if conn.state_fp != fp {
        if let Err(e) = conn.run_silent(&vars.replay_sql()).await {
            conn.broken = true;
            return Err(SessionError::from_backend(shard, e));
        }
        conn.state_fp = fp;
    }
    for d in &w.defaults {
        let rows = conn
            .query_text(&columns_sql(&d.relation))
            .await
            .map_err(|e| SessionError::from_backend(shard, e))?;
        let columns: Vec<Column> = rows
            .into_iter()
            .map(|mut r| {
                let mut take = |i: usize| r.get_mut(i).and_then(Option::take);
                Column {
                    name: take(0).unwrap_or_default(),
                    default: take(1),
                    identity: take(2).unwrap_or_default(),
                    generated: take(3).unwrap_or_default(),
                }
            })
            .collect();
        // No such table: the write itself fails on the shards with PostgreSQL's error.
        if let Some(msg) = refusal(d, &columns) {
            return Err(SessionError::Unsupported(msg));
        }
    }
    Ok(())
}

/// The table's columns in order, with their defaults. `relation` is the name as the
/// statement wrote it (quotes included), resolved by `to_regclass` as PostgreSQL would.
fn columns_sql(relation: &str) -> String {
    let literal = relation.replace('\'', "''");
    format!(
        "SELECT a.attname, \
                COALESCE(pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                         CASE WHEN t.typtype = 'd' THEN pg_catalog.pg_get_expr(t.typdefaultbin, 0) END), \
                a.attidentity, a.attgenerated \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
           LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
          WHERE a.attrelid = pg_catalog.to_regclass('{literal}') \
            AND a.attnum > 0 AND NOT a.attisdropped \
          ORDER BY a.attnum"
    )
}

/// The 0A000 message for the first defaulted column whose value would differ between
/// shards, if any.
fn refusal(d: &ColumnDefaults, columns: &[Column]) -> Option<String> {
    let table = &d.table;
    for (i, c) in columns.iter().enumerate() {
        let defaulted = match &d.columns {
            DefaultedColumns::AllBut(given) => !given.contains(&c.name),
            DefaultedColumns::AfterFirst(n) => i >= *n,
            DefaultedColumns::Only(cols) => cols.contains(&c.name),
        };
        if !defaulted || !c.generated.is_empty() {
            continue;
        }
        if !c.identity.is_empty() {
            return Some(format!(
                "identity column \"{}\" left to its default in a write to reference table \"{table}\" would give each shard's copy a different value; give the column a value in the statement",
                c.name
            ));
        }
        if let Some(expr) = &c.default {
            if !is_constant_default(expr) {
                return Some(format!(
                    "default {expr} of column \"{}\" in a write to reference table \"{table}\" would give each shard's copy a different value; give the column a value in the statement",
                    c.name
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, default: Option<&str>, identity: &str) -> Column {
        Column {
            name: name.into(),
            default: default.map(str::to_owned),
            identity: identity.into(),
            generated: String::new(),
        }
    }

    fn defaults(columns: DefaultedColumns) -> ColumnDefaults {
        ColumnDefaults {
            relation: "r".into(),
            table: "r".into(),
            columns,
        }
    }

    #[test]
    fn omitted_volatile_defaults_are_refused() {
        let cols = [
            col("id", Some("nextval('r_id_seq'::regclass)"), ""),
            col("v", Some("0"), ""),
            col("ts", Some("now()"), ""),
            col("note", None, ""),
        ];
        let given =
            |c: &[&str]| DefaultedColumns::AllBut(c.iter().map(|s| s.to_string()).collect());
        let m = refusal(&defaults(given(&["v", "ts", "note"])), &cols).unwrap_or_default();
        assert_eq!(
            m,
            "default nextval('r_id_seq'::regclass) of column \"id\" in a write to reference table \"r\" would give each shard's copy a different value; give the column a value in the statement"
        );
        let m = refusal(&defaults(given(&["id", "v"])), &cols).unwrap_or_default();
        assert!(m.contains("default now() of column \"ts\""), "{m}");
        assert!(refusal(&defaults(given(&["id", "ts"])), &cols).is_none());
        assert!(refusal(&defaults(DefaultedColumns::AfterFirst(3)), &cols).is_none());
        assert!(refusal(&defaults(DefaultedColumns::AfterFirst(2)), &cols).is_some());
        assert!(refusal(&defaults(DefaultedColumns::Only(vec!["v".into()])), &cols).is_none());
        assert!(refusal(&defaults(DefaultedColumns::Only(vec!["ts".into()])), &cols).is_some());
    }

    #[test]
    fn identity_and_generated_columns() {
        let mut generated = col("g", Some("(v * 2)"), "");
        generated.generated = "s".into();
        let cols = [col("id", None, "d"), col("v", None, ""), generated];
        let m = refusal(&defaults(DefaultedColumns::AfterFirst(0)), &cols).unwrap_or_default();
        assert!(m.starts_with("identity column \"id\""), "{m}");
        assert!(refusal(&defaults(DefaultedColumns::AfterFirst(1)), &cols).is_none());
    }

    #[test]
    fn relation_literal_is_quoted() {
        assert!(columns_sql("\"it's\"").contains("to_regclass('\"it''s\"')"));
    }
}

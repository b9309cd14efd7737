//! INSERTs into distributed tables that need the router's help before they can be
//! planned (SPEC §5 rule 1): an `INSERT INTO t VALUES …` without a column list names no
//! shard key, so the router asks a shard for the table's columns in order and plans the
//! statement as if they had been written ([`pgshard_sql::plan_with_columns`]).
//!
//! The look-up runs every time such a statement is planned (a Query, or a Parse), never
//! from a cache: an ALTER TABLE, through the router or not, may drop or add columns
//! and so move the shard key. Inside a transaction block it runs on the backend that
//! holds the transaction, so it sees the transaction's own DDL.
//!
//! Multi-row INSERTs spanning shards need nothing here: the planner splits them into a
//! [`pgshard_sql::FanoutWrite`] with one statement per shard, which the fan-out write
//! path in `txn` runs atomically.

use super::Session;
use pgshard_catalog::Catalog;
use pgshard_sql::{Plan, Route};
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// For an INSERT without a column list into a distributed table (which the planner
    /// refuses alone), replaces `plan` of `sql` with the plan with the table's columns
    /// filled in. Any failure of the look-up keeps the planner's refusal. `extended`:
    /// called at a Parse, where an extended-protocol batch may hold an implicit
    /// transaction open. (`plan` by reference: moving it in and out of this future cost
    /// three copies of a Plan on every statement, issue 16.)
    pub(crate) async fn complete_insert_columns(
        &mut self,
        sql: &str,
        plan: &mut Plan,
        catalog: &Catalog,
        extended: bool,
    ) {
        if !matches!(plan.route, Route::Unsupported(_)) {
            return;
        }
        let Some(table) = pgshard_sql::columns_needed(sql, catalog) else {
            return;
        };
        if let Some(columns) = Box::pin(self.table_column_order(&table, catalog, extended)).await {
            if let Some(p) = pgshard_sql::plan_with_columns(sql, catalog, &columns) {
                *plan = p;
            }
        }
    }

    /// The columns of `table` (as written in SQL) in order, dropped ones excepted, as the
    /// transaction's backend sees them, or a pooled connection's outside a transaction.
    /// Generated columns count: an INSERT without a column list fills them by position
    /// too (with DEFAULT).
    async fn table_column_order(
        &mut self,
        table: &str,
        catalog: &Catalog,
        extended: bool,
    ) -> Option<Vec<String>> {
        // to_regclass: a missing table is no error, so the transaction stays usable.
        let sql = format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass('{}') AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            table.replace('\'', "''")
        );
        let rows = match self.attached.as_mut() {
            // The backend of the session's transaction (or session-pooled backend),
            // idle and with no implicit transaction of an extended-protocol batch open
            // (a Query would end it): ask it, so uncommitted DDL counts.
            Some(a)
                if a.expects.is_empty()
                    && !(extended && a.executed)
                    && matches!(a.conn.status, b'T' | b'I') =>
            {
                let shard = a.shard;
                match a.conn.query_text(&sql).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        tracing::debug!(%shard, %error, "column look-up failed");
                        return None;
                    }
                }
            }
            Some(_) => return None,
            None => {
                let shard = catalog.local_shard;
                let mut conn = match self.checkout_primary(catalog, shard, true).await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::debug!(%shard, %error, "no backend for a column look-up");
                        return None;
                    }
                };
                match conn.query_text(&sql).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        tracing::debug!(%shard, %error, "column look-up failed");
                        return None;
                    }
                }
            }
        };
        let columns: Vec<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        (!columns.is_empty()).then_some(columns)
    }
}

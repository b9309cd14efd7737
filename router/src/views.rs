//! CREATE VIEW and DROP VIEW of views over distributed tables (issue 15,
//! [`pgshard_sql`]'s `views` module plans them): the definition is kept in the catalog
//! (`pgshard.views`, a version bump and NOTIFY as for a table declaration), so every
//! router writes the view into the statements that name it.
//!
//! Why the catalog and not PostgreSQL's `pg_views` on the local shard: the planner is a
//! pure function of the statement and the catalog snapshot, and must know without a
//! round trip that `v` is a view to expand (a name it does not know is a local table,
//! sent to the local shard as written — where a real view over distributed tables
//! would read that shard's rows only). The catalog also carries the definition to every
//! router at once, with the table declarations it depends on.
//!
//! PostgreSQL checks the definition first: the CREATE VIEW (with the views it names
//! written in) runs on the local shard inside a transaction that rolls back, so a bad
//! query, an unknown column or a name already taken by a local relation gets
//! PostgreSQL's own error. This router then reloads its catalog (the session's next
//! statement sees the view); others follow the NOTIFY.

use crate::protocol::backend::encode_command_complete;
use crate::session::error::SessionError;
use crate::session::Session;
use bytes::BytesMut;
use pgshard_catalog::store::{self, StoreError};
use pgshard_catalog::ViewDef;
use pgshard_sql::RouterCommand;
use tokio::io::{AsyncRead, AsyncWrite};

fn catalog_error(e: impl std::fmt::Display) -> SessionError {
    SessionError::View {
        code: "XX000",
        message: format!("could not record the view in the catalog: {e}"),
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs `CREATE VIEW` or `DROP VIEW` of views over distributed tables, outside a
    /// transaction block (the catalog change could not roll back with the client's
    /// transaction).
    pub(crate) async fn run_view_command(
        &mut self,
        cmd: &RouterCommand,
        in_txn: bool,
        b: &mut BytesMut,
    ) -> Result<(), SessionError> {
        if in_txn {
            return Err(SessionError::Unsupported(
                "CREATE VIEW or DROP VIEW of a view over distributed tables inside a transaction block (the view is kept in the catalog, which would not roll back with the transaction)".into(),
            ));
        }
        let Some(twopc) = self.ctx.twopc.as_ref() else {
            return Err(SessionError::Unsupported(
                "a view over distributed tables without a catalog connection".into(),
            ));
        };
        let log = twopc.log.clone();
        let tag = match cmd {
            RouterCommand::CreateView {
                name,
                columns,
                query,
                replace,
                check_sql,
            } => {
                self.check_view(check_sql).await?;
                let mut client = log.dedicated().await.map_err(catalog_error)?;
                let view = ViewDef {
                    name: name.clone(),
                    columns: columns.clone(),
                    query: query.clone(),
                };
                match store::put_view(&mut client, &view, *replace).await {
                    Ok(_) => {}
                    Err(StoreError::Conflict(message)) => {
                        return Err(SessionError::View {
                            code: "42P07",
                            message,
                        })
                    }
                    Err(e) => return Err(catalog_error(e)),
                }
                tracing::info!(view = %name, "view over distributed tables recorded");
                "CREATE VIEW"
            }
            RouterCommand::DropViews { names } => {
                let mut client = log.dedicated().await.map_err(catalog_error)?;
                store::drop_views(&mut client, names)
                    .await
                    .map_err(catalog_error)?;
                "DROP VIEW"
            }
            _ => return Err(SessionError::Unsupported("not a view command".into())),
        };
        // This session's next statement must see the change.
        if let Ok(client) = log.dedicated().await {
            match store::load(&client).await {
                Ok(c) if c.version > self.ctx.catalog.current().version => {
                    self.ctx.catalog.replace(c)
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not reload the catalog"),
            }
        }
        encode_command_complete(b, tag);
        Ok(())
    }

    /// PostgreSQL's check of a view definition: the CREATE VIEW on the local shard, in
    /// a transaction that rolls back.
    async fn check_view(&mut self, sql: &str) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        let shard = catalog.local_shard;
        let mut conn = self.checkout_primary(&catalog, shard, false).await?;
        let checked = conn.run_silent(&format!("BEGIN; {sql}")).await;
        if let Err(e) = conn.run_silent("ROLLBACK").await {
            conn.broken = true;
            return Err(SessionError::from_backend(shard, e));
        }
        checked
            .map(|_| ())
            .map_err(|e| SessionError::from_backend(shard, e))
    }
}

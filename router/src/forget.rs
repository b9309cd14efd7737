//! Forgetting dropped tables (SPEC §4): a table distributed with
//! `create_distributed_table` or `create_reference_table` is forgotten by the catalog
//! once it is dropped, as Citus forgets it, so a schema script that drops and recreates
//! it runs twice. Tables declared in `pgshard.toml` stay declared by name.
//!
//! A session notes the declared tables each `DROP TABLE` names and, once its
//! transaction has ended (committed or not), asks every shard whether the table still
//! exists: only a table gone from every shard is forgotten. A DROP that failed or was
//! rolled back (also to a savepoint) leaves the table, so nothing is forgotten and no
//! read can go to the local shard alone while the rows are spread over all of them.

use crate::hold::checkout_primary;
use crate::server::RouterCtx;
use pgshard_catalog::store;

/// A table name as the catalog folds it, quoted for `to_regclass` (which folds again).
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// True when no shard has a relation of that name (every shard answered).
async fn gone_everywhere(ctx: &RouterCtx, name: &str, user: &str, database: &str) -> bool {
    let catalog = ctx.catalog.current();
    let literal = quoted(name).replace('\'', "''");
    let sql = format!("SELECT to_regclass('{literal}') IS NULL");
    for shard in catalog.shard_ids() {
        let Ok(mut conn) = checkout_primary(ctx, shard, user, database, true).await else {
            return false;
        };
        match conn.query_text(&sql).await {
            Ok(rows) if rows.first().and_then(|r| r.first()) == Some(&Some("t".into())) => {}
            Ok(_) => return false,
            Err(error) => {
                conn.broken = true;
                tracing::debug!(%shard, table = name, %error, "could not look up a dropped table");
                return false;
            }
        }
    }
    true
}

/// Forgets each of `names` (declared tables some `DROP TABLE` of the session named)
/// that is gone from every shard and was declared by a function; then this router's
/// catalog is reloaded, so the session's next statement sees the table undeclared.
pub async fn forget_dropped(ctx: &RouterCtx, names: Vec<String>, user: &str, database: &str) {
    let Some(twopc) = ctx.twopc.as_ref() else {
        return;
    };
    let mut forgot = false;
    for name in names {
        if ctx.catalog.current().table(&name).is_none()
            || !gone_everywhere(ctx, &name, user, database).await
        {
            continue;
        }
        let mut client = match twopc.log.dedicated().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(table = %name, %error, "could not forget a dropped table");
                return;
            }
        };
        match store::forget_dropped_table(&mut client, &name).await {
            Ok(Some(_)) => {
                tracing::info!(table = %name, "dropped table forgotten");
                forgot = true;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(table = %name, %error, "could not forget a dropped table"),
        }
    }
    if !forgot {
        return;
    }
    if let Ok(client) = twopc.log.dedicated().await {
        match store::load(&client).await {
            Ok(c) if c.version > ctx.catalog.current().version => ctx.catalog.replace(c),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not reload the catalog"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn names_are_quoted_per_part() {
        assert_eq!(quoted("t"), "\"t\"");
        assert_eq!(quoted("Sales.Order\"s"), "\"Sales\".\"Order\"\"s\"");
    }
}

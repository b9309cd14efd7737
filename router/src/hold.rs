//! Holding statements for a shard whose primary is being replaced (SPEC §8): while the
//! catalog says the shard is `failing_over`, or while its primary cannot be reached
//! (killed, not yet declared failed by shardd), a statement that needs a backend on the
//! shard *waits* for the next catalog snapshot instead of failing, up to
//! `router.failover_hold_ms` (default 10 s). When the catalog names the new primary the
//! statement goes there; past the bound the client gets SQLSTATE 57P03 naming the
//! shard. A shard whose failover shardd refused fails at once with its reason.
//!
//! A bucket *frozen* for a move (SPEC §9) is held the same way: the catalog routes its
//! keys to [`FROZEN`], and a plan naming it ([`touches_frozen`]) waits, with
//! [`FrozenHold`], for the next catalog snapshot and is planned again, so that once the
//! move flipped (or was rolled back) the statement goes to the bucket's owner. Statements
//! on other buckets never wait. Fan-out writes and COPY FROM wait while any bucket is
//! frozen, since they may write every bucket.
//!
//! Only the checkout of a backend waits, before anything of the statement was sent:
//! holding never re-sends work whose outcome is unknown. The idle connections of a
//! pool are checked before reuse (a killed primary's sockets read as closed), so a
//! statement after a failover never lands on a dead connection.

use crate::backend::{BackendError, PooledConn};
use crate::server::RouterCtx;
use crate::session::error::SessionError;
use pgshard_catalog::{Catalog, ShardId, ShardStatus, FROZEN};
use pgshard_sql::{Plan, Route};
use std::time::{Duration, Instant};

/// How often an unreachable primary is tried again while no new catalog arrives (it
/// may only be restarting).
const RETRY: Duration = Duration::from_millis(100);

/// True for errors that mean "the primary is not there now", which a failover cures.
pub(crate) fn unreachable(e: &BackendError) -> bool {
    match e {
        BackendError::Connect { .. }
        | BackendError::ConnectTimeout(_)
        | BackendError::Io { .. }
        | BackendError::Closed { .. } => true,
        // cannot_connect_now (starting up, shutting down, in recovery), admin shutdown.
        BackendError::Server { code, .. } => code == "57P03" || code == "57P01",
        BackendError::Protocol { .. }
        | BackendError::Auth { .. }
        | BackendError::PoolTimeout(_) => false,
    }
}

/// True when `plan` would send something to a frozen bucket's owner (see the module
/// doc): it must wait for the move and be planned again.
pub fn touches_frozen(plan: &Plan, catalog: &Catalog) -> bool {
    if catalog.frozen.is_empty() {
        return false;
    }
    let route_frozen = match &plan.route {
        Route::Shard(s) => *s == FROZEN,
        // An INSERT … SELECT answered by collecting writes rows of any bucket.
        Route::Fanout(f) => {
            f.shards.contains(&FROZEN)
                || matches!(&f.merge, pgshard_sql::MergePlan::Collect(c) if c.insert.is_some())
        }
        Route::FanoutWrite(w) => !w.replicated || w.shards.contains(&FROZEN),
        Route::Copy(c) => c.direction == pgshard_sql::CopyDirection::In,
        // Routed row by row at Bind (a frozen row's group is refused there, to retry).
        Route::InsertByParams(_)
        | Route::ShardByParam { .. }
        | Route::AnyShard
        | Route::AllShards
        | Route::Router(_)
        | Route::Unsupported(_)
        | Route::Error(_) => false,
    };
    route_frozen || plan.statements.iter().any(|p| touches_frozen(p, catalog))
}

/// Waiting for frozen buckets to be released, bounded by `router.failover_hold_ms`
/// from the first wait: call [`FrozenHold::wait`] each time a plan
/// [`touches_frozen`], then read the catalog and plan again.
pub struct FrozenHold {
    /// Since the first wait, with the subscription to the catalog made then (a
    /// statement that never waits reads no clock: one per statement, issue 16).
    changes: Option<(
        Instant,
        tokio::sync::watch::Receiver<pgshard_catalog::CatalogVersion>,
    )>,
}

impl Default for FrozenHold {
    fn default() -> Self {
        Self::new()
    }
}

impl FrozenHold {
    pub fn new() -> FrozenHold {
        FrozenHold { changes: None }
    }

    /// Return once the catalog may have changed (the first call returns at once, having
    /// subscribed, so that no snapshot published from now on is missed), or fail with
    /// 57P03 past the bound.
    pub async fn wait(&mut self, ctx: &RouterCtx) -> Result<(), SessionError> {
        let hold = Duration::from_millis(ctx.config.failover_hold_ms);
        let Some((started, c)) = self.changes.as_mut() else {
            self.changes = Some((Instant::now(), ctx.catalog.subscribe()));
            return Ok(());
        };
        c.borrow_and_update();
        let waited = started.elapsed();
        if waited >= hold {
            crate::stats::bump(&ctx.stats.hold_timeouts);
            return Err(SessionError::BucketsMoving {
                reason: format!("still frozen after {hold:?} (router.failover_hold_ms); retry"),
            });
        }
        tokio::select! {
            _ = c.changed() => {}
            _ = tokio::time::sleep(RETRY.min(hold - waited)) => {}
        }
        Ok(())
    }

    /// Note a statement released after a wait.
    pub fn released(&self, ctx: &RouterCtx) {
        if let Some((started, _)) = &self.changes {
            tracing::debug!(held = ?started.elapsed(), "statement held through a bucket move");
            ctx.stats.note_held(started.elapsed());
        }
    }
}

/// PostgreSQL (14+) reports `in_hot_standby` at startup: `on` for a standby.
pub(crate) fn in_hot_standby(conn: &PooledConn) -> bool {
    conn.params
        .iter()
        .any(|(k, v)| k == "in_hot_standby" && v == "on")
}

/// A pooled connection to `shard`'s primary, held through a change of primary (see the
/// module doc). `more`: the caller holds backends on other shards (no waiting for pool
/// capacity, see [`crate::backend::pool`]).
pub async fn checkout_primary(
    ctx: &RouterCtx,
    shard: ShardId,
    user: &str,
    database: &str,
    more: bool,
) -> Result<PooledConn, SessionError> {
    let hold = Duration::from_millis(ctx.config.failover_hold_ms);
    let started = Instant::now();
    // Subscribed only once a wait is needed (the common checkout never waits), and
    // before the catalog is read again, so no new snapshot is missed.
    let mut changes: Option<tokio::sync::watch::Receiver<_>> = None;
    if shard == FROZEN {
        // Planned before a freeze reached this point (a COPY row, a split INSERT): the
        // router cannot plan it again here, so it is refused for the client to retry.
        return Err(SessionError::BucketsMoving {
            reason: "retry the statement".into(),
        });
    }
    loop {
        if let Some(c) = changes.as_mut() {
            c.borrow_and_update();
        }
        let catalog = ctx.catalog.current();
        let why = match catalog.shard(shard) {
            Some(s) if s.status == ShardStatus::FailingOver => {
                format!("shard {shard} is failing over")
            }
            Some(s) if s.status == ShardStatus::Refused => {
                return Err(SessionError::ShardUnavailable {
                    shard,
                    reason: s
                        .status_reason
                        .clone()
                        .unwrap_or_else(|| "its failover was refused".into()),
                });
            }
            None => return Err(SessionError::ShardRemoved(shard)),
            Some(_) => {
                let node = catalog
                    .primary(shard)
                    .ok_or(SessionError::NoPrimary(shard))?;
                let pool = ctx.pools.get(node, user, database);
                pool.set_shards(catalog.shards.len());
                match pool.checkout_for(more).await {
                    Ok(mut conn) if in_hot_standby(&conn) => {
                        // A stale catalog's primary that is a standby now (demoted and
                        // rebuilt after a switchover): a write would get 25006.
                        conn.broken = true;
                        format!(
                            "its primary {} in this router's catalog is a standby now",
                            node.name
                        )
                    }
                    Ok(conn) => {
                        // Held: an earlier attempt failed (`changes` is set then). Time
                        // spent queueing for a pooled backend is not a hold.
                        if changes.is_some() {
                            tracing::info!(%shard, node = %node.name, held = ?started.elapsed(), "statement held through a change of primary");
                            ctx.stats.note_held(started.elapsed());
                        }
                        return Ok(conn);
                    }
                    Err(e) if unreachable(&e) && hold > Duration::ZERO => {
                        format!("its primary {} is unreachable: {e}", node.name)
                    }
                    Err(e) => return Err(SessionError::from_backend(shard, e)),
                }
            }
        };
        let waited = started.elapsed();
        if waited >= hold {
            crate::stats::bump(&ctx.stats.hold_timeouts);
            return Err(SessionError::ShardUnavailable {
                shard,
                reason: format!(
                    "{why}; no primary took over within {hold:?} (router.failover_hold_ms)"
                ),
            });
        }
        let Some(c) = changes.as_mut() else {
            changes = Some(ctx.catalog.subscribe());
            continue;
        };
        tracing::debug!(%shard, reason = %why, "holding a statement");
        let left = hold - waited;
        tokio::select! {
            _ = c.changed() => {}
            _ = tokio::time::sleep(RETRY.min(left)) => {}
        }
    }
}

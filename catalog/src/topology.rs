//! Changes of the topology intent (SPEC §8, §10): which node is each shard's primary,
//! its term, and a change of primary in progress.
//!
//! A change of primary (failover or planned switchover) is three catalog transactions,
//! each safe to repeat, so that shardd can crash anywhere and resume from what is
//! recorded rather than start a second, different change:
//!
//! 1. [`begin`]: the shard turns `failing_over` from its current primary at its current
//!    term. Routers hold new statements for it from here (the version is bumped).
//! 2. [`choose`]: the replica to promote is recorded *before* it is promoted; once
//!    recorded it never changes, so a restarted shardd never promotes a second replica.
//! 3. [`complete`]: in one transaction the old primary becomes a fenced replica, the
//!    chosen one the primary, the term grows by one, and routers are notified.
//!
//! [`abandon`] ends a change that cannot go on, and is refused once a replica was
//! chosen (it may already be promoted: only [`complete`] may follow then). The unique
//! index `nodes_one_primary_per_shard` makes two primaries for one shard impossible in
//! the catalog whatever the caller does.

use crate::store::{bump, StoreError};
use crate::types::*;
use tokio_postgres::Client;

/// Why the primary changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The primary failed.
    Failover,
    /// A person moves the primary role (`pgshard switchover`).
    Switchover,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Failover => "failover",
            ChangeKind::Switchover => "switchover",
        }
    }
}

fn shard_i32(shard: ShardId) -> i32 {
    shard.0 as i32
}

fn node_i32(node: NodeId) -> i32 {
    node.0 as i32
}

struct Locked {
    term: i64,
    status: String,
    from: Option<i32>,
    to: Option<i32>,
}

async fn lock_shard(
    tx: &tokio_postgres::Transaction<'_>,
    shard: ShardId,
) -> Result<Locked, StoreError> {
    let row = tx
        .query_opt(
            "SELECT term, status, failover_from, failover_to FROM pgshard.shards
              WHERE id = $1 FOR UPDATE",
            &[&shard_i32(shard)],
        )
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no shard {shard}")))?;
    Ok(Locked {
        term: row.get(0),
        status: row.get(1),
        from: row.get(2),
        to: row.get(3),
    })
}

/// Start replacing `shard`'s primary `from`, seen at `term`. Repeating it for the same
/// `from` while the change is in progress is a no-op; a different term or primary is a
/// [`StoreError::Conflict`].
pub async fn begin(
    client: &mut Client,
    shard: ShardId,
    from: NodeId,
    term: i64,
    kind: ChangeKind,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let s = lock_shard(&tx, shard).await?;
    if s.status == ShardStatus::FailingOver.as_str() {
        if s.from == Some(node_i32(from)) {
            let v: i64 = tx
                .query_one("SELECT version FROM pgshard.meta", &[])
                .await?
                .get(0);
            tx.commit().await?;
            return Ok(CatalogVersion(v));
        }
        return Err(StoreError::Conflict(format!(
            "shard {shard} is already failing over from node {}",
            s.from.unwrap_or_default()
        )));
    }
    if s.term != term {
        return Err(StoreError::Conflict(format!(
            "shard {shard} is at term {}, not {term}",
            s.term
        )));
    }
    let primary: Option<i32> = tx
        .query_opt(
            "SELECT id FROM pgshard.nodes WHERE shard_id = $1 AND role = 'primary'",
            &[&shard_i32(shard)],
        )
        .await?
        .map(|r| r.get(0));
    if primary != Some(node_i32(from)) {
        return Err(StoreError::Conflict(format!(
            "node {from} is not the primary of shard {shard}"
        )));
    }
    tx.execute(
        "UPDATE pgshard.shards SET status = 'failing_over', status_reason = NULL,
                failover_from = $2, failover_to = NULL, failover_kind = $3,
                failover_started_at = now()
          WHERE id = $1",
        &[&shard_i32(shard), &node_i32(from), &kind.as_str()],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Record `to` as the replica to promote, unless one is recorded already: returns the
/// recorded one, which the caller must promote (never another).
pub async fn choose(client: &mut Client, shard: ShardId, to: NodeId) -> Result<NodeId, StoreError> {
    let tx = client.transaction().await?;
    let s = lock_shard(&tx, shard).await?;
    if s.status != ShardStatus::FailingOver.as_str() {
        return Err(StoreError::Conflict(format!(
            "shard {shard} is not failing over"
        )));
    }
    if let Some(chosen) = s.to {
        tx.commit().await?;
        return Ok(NodeId(chosen as u32));
    }
    let n = tx
        .execute(
            "UPDATE pgshard.shards s SET failover_to = $2
              WHERE s.id = $1 AND EXISTS (SELECT 1 FROM pgshard.nodes n
                     WHERE n.id = $2 AND n.shard_id = $1 AND n.role = 'replica'
                       AND n.state NOT IN ('fenced', 'rebuilding'))",
            &[&shard_i32(shard), &node_i32(to)],
        )
        .await?;
    if n != 1 {
        return Err(StoreError::Invalid(format!(
            "node {to} is not an in-service replica of shard {shard}"
        )));
    }
    tx.commit().await?;
    Ok(to)
}

/// Finish the change in progress: the chosen replica becomes the primary, the old
/// primary a fenced replica (to be rebuilt), the term grows by one; the shard's status
/// becomes `after` (`ok`, or `degraded` with `reason`).
pub async fn complete(
    client: &mut Client,
    shard: ShardId,
    after: ShardStatus,
    reason: Option<&str>,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let s = lock_shard(&tx, shard).await?;
    let (Some(from), Some(to)) = (s.from, s.to) else {
        return Err(StoreError::Conflict(format!(
            "shard {shard} has no change of primary with a chosen replica in progress"
        )));
    };
    // Demote first: at most one primary per shard, at every statement.
    tx.execute(
        "UPDATE pgshard.nodes SET role = 'replica', state = 'fenced' WHERE id = $1",
        &[&from],
    )
    .await?;
    tx.execute(
        "UPDATE pgshard.nodes SET role = 'primary', state = 'healthy' WHERE id = $1",
        &[&to],
    )
    .await?;
    tx.execute(
        "UPDATE pgshard.shards SET term = term + 1, status = $2, status_reason = $3,
                failover_from = NULL, failover_to = NULL, failover_kind = NULL,
                last_failover_at = now(),
                last_failover_ms = (extract(epoch FROM clock_timestamp()
                                            - failover_started_at) * 1000)::bigint,
                failover_started_at = NULL, failovers = failovers + 1
          WHERE id = $1",
        &[&shard_i32(shard), &after.as_str(), &reason],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// End a change that cannot go on, leaving the primary as it is, with the shard's
/// status `after` (`refused` with the reason, or `ok` for a switchover given up).
/// Refused with [`StoreError::Conflict`] once a replica was chosen.
pub async fn abandon(
    client: &mut Client,
    shard: ShardId,
    after: ShardStatus,
    reason: Option<&str>,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let s = lock_shard(&tx, shard).await?;
    if s.to.is_some() {
        return Err(StoreError::Conflict(format!(
            "shard {shard}: a replica was already chosen for promotion"
        )));
    }
    tx.execute(
        "UPDATE pgshard.shards SET status = $2, status_reason = $3, failover_from = NULL,
                failover_kind = NULL, failover_started_at = NULL
          WHERE id = $1",
        &[&shard_i32(shard), &after.as_str(), &reason],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Set a serving shard's status (`ok`, `degraded`, `refused`) and reason; bumps the
/// version only on a change. A shard failing over is left alone (returns `None`).
pub async fn set_status(
    client: &mut Client,
    shard: ShardId,
    status: ShardStatus,
    reason: Option<&str>,
) -> Result<Option<CatalogVersion>, StoreError> {
    update_then_bump(
        client,
        "UPDATE pgshard.shards SET status = $2, status_reason = $3
          WHERE id = $1 AND status <> 'failing_over'
            AND (status, coalesce(status_reason, '')) IS DISTINCT FROM ($2, coalesce($3, ''))",
        &[&shard_i32(shard), &status.as_str(), &reason],
    )
    .await
}

/// Run one UPDATE and bump the version (NOTIFY) only if it changed a row.
async fn update_then_bump(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<CatalogVersion>, StoreError> {
    let tx = client.transaction().await?;
    let n = tx.execute(sql, params).await?;
    let v = if n == 1 { Some(bump(&tx).await?) } else { None };
    tx.commit().await?;
    Ok(v)
}

/// Set a node's place in the topology (`healthy` in service, `fenced`, `rebuilding`);
/// bumps the version only on a change.
pub async fn set_node_state(
    client: &mut Client,
    node: NodeId,
    state: NodeState,
) -> Result<Option<CatalogVersion>, StoreError> {
    update_then_bump(
        client,
        "UPDATE pgshard.nodes SET state = $2 WHERE id = $1 AND state <> $2",
        &[&node_i32(node), &state.as_str()],
    )
    .await
}

/// Pause or resume automatic failover of a shard.
pub async fn set_failover_paused(
    client: &mut Client,
    shard: ShardId,
    paused: bool,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE pgshard.shards SET failover_paused = $2 WHERE id = $1",
            &[&shard_i32(shard), &paused],
        )
        .await?;
    if n != 1 {
        return Err(StoreError::Invalid(format!("no shard {shard}")));
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Record a failover of the catalog node itself in the (new) catalog: `to` is the
/// catalog node, `from` a fenced replica to rebuild. The layout already says so (the
/// catalog could not be written while it was down); this makes the catalog agree.
pub async fn catalog_failed_over(
    client: &mut Client,
    from: &str,
    to: &str,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE pgshard.nodes SET role = 'replica', state = 'fenced'
          WHERE name = $1 AND shard_id IS NULL",
        &[&from],
    )
    .await?;
    tx.execute(
        "UPDATE pgshard.nodes SET role = 'catalog', state = 'healthy'
          WHERE name = $1 AND shard_id IS NULL",
        &[&to],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Set a catalog-group node's state by name (its rebuild done).
pub async fn set_node_state_by_name(
    client: &mut Client,
    name: &str,
    state: NodeState,
) -> Result<Option<CatalogVersion>, StoreError> {
    update_then_bump(
        client,
        "UPDATE pgshard.nodes SET state = $2 WHERE name = $1 AND state <> $2",
        &[&name, &state.as_str()],
    )
    .await
}

/// A router routes with catalog `version` now (its follower's heartbeat).
pub async fn router_seen(
    client: &Client,
    router: &str,
    version: CatalogVersion,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO pgshard.routers (id, version) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, seen_at = now()",
            &[&router, &version.0],
        )
        .await?;
    Ok(())
}

/// Routers heard from within `live_secs` that still route with a version older than
/// `version`.
pub async fn routers_behind(
    client: &Client,
    version: CatalogVersion,
    live_secs: f64,
) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT id FROM pgshard.routers
              WHERE seen_at > now() - make_interval(secs => $2) AND version < $1",
            &[&version.0, &live_secs],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

//! Bucket moves as recorded in the catalog (SPEC §9, §10; `schema/0004_moves.sql`).
//!
//! A move takes a group of buckets from a source shard to a target shard. Its state
//! machine (each state recorded before the work it names starts, so a restarted shardd
//! knows where it stopped):
//!
//! ```text
//! planned → syncing → frozen → copying → flipped → cleaning → done
//!    └─────────┴─────────┴─────────┴──→ aborted            (only before the flip)
//! ```
//!
//! Four transitions change what routers do and so bump the catalog version (NOTIFY):
//! [`sync`] (multi-shard statements skip the buckets' rows on the target, where a
//! subscription copies them), [`freeze`] (routers hold statements for the buckets), [`flip`] (the buckets' owner
//! becomes the target and they are unfrozen: the commit point of the move) and
//! [`abort`] (unfrozen, the owner unchanged). The others are bookkeeping
//! ([`advance`]). Every function here is safe to repeat: it checks the state it expects
//! under a row lock and does nothing (or refuses with [`StoreError::Conflict`]) when the
//! move is already past it.

use crate::store::{bump, StoreError};
use crate::types::{BucketId, CatalogVersion, ShardId};
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio_postgres::{Client, Row};

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    Planned,
    Syncing,
    Frozen,
    Copying,
    Flipped,
    Cleaning,
    Done,
    Aborted,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Planned => "planned",
            MoveState::Syncing => "syncing",
            MoveState::Frozen => "frozen",
            MoveState::Copying => "copying",
            MoveState::Flipped => "flipped",
            MoveState::Cleaning => "cleaning",
            MoveState::Done => "done",
            MoveState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<MoveState> {
        Some(match s {
            "planned" => MoveState::Planned,
            "syncing" => MoveState::Syncing,
            "frozen" => MoveState::Frozen,
            "copying" => MoveState::Copying,
            "flipped" => MoveState::Flipped,
            "cleaning" => MoveState::Cleaning,
            "done" => MoveState::Done,
            "aborted" => MoveState::Aborted,
            _ => return None,
        })
    }

    /// Done or aborted.
    pub fn finished(self) -> bool {
        matches!(self, MoveState::Done | MoveState::Aborted)
    }

    /// Before the commit point ([`flip`]): the move may still be rolled back.
    pub fn before_flip(self) -> bool {
        matches!(
            self,
            MoveState::Planned | MoveState::Syncing | MoveState::Frozen | MoveState::Copying
        )
    }
}

impl fmt::Display for MoveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One move as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub id: i64,
    /// What asked for it (`rebalance`, `add-shard 3`, `move`…).
    pub operation: String,
    pub source: ShardId,
    pub target: ShardId,
    pub buckets: Vec<BucketId>,
    pub state: MoveState,
    /// Rows copied to the target (all tables), once copied.
    pub rows_moved: i64,
    /// The catalog version that flipped the owner.
    pub flip_version: Option<i64>,
    /// How long the buckets were frozen (freeze to flip or abort), in milliseconds.
    pub freeze_ms: Option<i64>,
    /// Why it was aborted.
    pub error: Option<String>,
}

const COLUMNS: &str = "id, operation, source, target, buckets, state, rows_moved, \
                       flip_version, freeze_ms, error";

fn from_row(r: &Row) -> Result<Move, StoreError> {
    let state: String = r.get(5);
    let buckets: Vec<i32> = r.get(4);
    Ok(Move {
        id: r.get(0),
        operation: r.get(1),
        source: ShardId(r.get::<_, i32>(2) as u32),
        target: ShardId(r.get::<_, i32>(3) as u32),
        buckets: buckets.into_iter().map(|b| BucketId(b as u32)).collect(),
        state: MoveState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("move state `{state}`")))?,
        rows_moved: r.get(6),
        flip_version: r.get(7),
        freeze_ms: r.get(8),
        error: r.get(9),
    })
}

fn buckets_i32(buckets: &[BucketId]) -> Vec<i32> {
    buckets.iter().map(|b| b.0 as i32).collect()
}

/// Record a new move of `buckets` from `source` to `target`. Refused when a bucket is
/// not on `source` or is part of another unfinished move.
pub async fn create(
    client: &mut Client,
    operation: &str,
    source: ShardId,
    target: ShardId,
    buckets: &[BucketId],
) -> Result<Move, StoreError> {
    if buckets.is_empty() || source == target {
        return Err(StoreError::Invalid(
            "a move needs buckets and two different shards".into(),
        ));
    }
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE pgshard.moves IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    let b = buckets_i32(buckets);
    let misplaced: i64 = tx
        .query_one(
            "SELECT count(*) FROM unnest($1::int4[]) AS u(bucket)
              WHERE NOT EXISTS (SELECT 1 FROM pgshard.buckets b
                                 WHERE b.bucket = u.bucket AND b.shard_id = $2)",
            &[&b, &(source.0 as i32)],
        )
        .await?
        .get(0);
    if misplaced > 0 {
        return Err(StoreError::Conflict(format!(
            "{misplaced} of the buckets are not on shard {source}"
        )));
    }
    let busy: i64 = tx
        .query_one(
            "SELECT count(*) FROM pgshard.moves
              WHERE state NOT IN ('done', 'aborted') AND buckets && $1::int4[]",
            &[&b],
        )
        .await?
        .get(0);
    if busy > 0 {
        return Err(StoreError::Conflict(
            "a bucket is already part of an unfinished move".into(),
        ));
    }
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO pgshard.moves (operation, source, target, buckets)
                 VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
            ),
            &[&operation, &(source.0 as i32), &(target.0 as i32), &b],
        )
        .await?;
    tx.commit().await?;
    from_row(&row)
}

/// Every move, newest first (`unfinished`: only those not done or aborted, oldest
/// first, the order they are carried out in).
pub async fn list(client: &Client, unfinished: bool) -> Result<Vec<Move>, StoreError> {
    let sql = if unfinished {
        format!(
            "SELECT {COLUMNS} FROM pgshard.moves WHERE state NOT IN ('done', 'aborted')
              ORDER BY id"
        )
    } else {
        format!("SELECT {COLUMNS} FROM pgshard.moves ORDER BY id DESC")
    };
    client
        .query(&sql, &[])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// One move.
pub async fn get(client: &Client, id: i64) -> Result<Move, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM pgshard.moves WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no move {id}")))?;
    from_row(&row)
}

async fn lock(tx: &tokio_postgres::Transaction<'_>, id: i64) -> Result<Move, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM pgshard.moves WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no move {id}")))?;
    from_row(&row)
}

/// `planned → syncing`: from the version this returns, multi-shard statements skip the
/// buckets' rows on the target (which does not own them), so they can be copied there
/// ahead of the freeze. Repeating it on a syncing move returns the current version.
pub async fn sync(client: &mut Client, id: i64) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let m = lock(&tx, id).await?;
    if m.state != MoveState::Planned {
        if m.state == MoveState::Syncing {
            let v: i64 = tx
                .query_one("SELECT version FROM pgshard.meta", &[])
                .await?
                .get(0);
            return Ok(CatalogVersion(v));
        }
        return Err(StoreError::Conflict(format!("move {id} is {}", m.state)));
    }
    tx.execute(
        "UPDATE pgshard.moves SET state = 'syncing', updated_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// `planned | syncing → frozen`: routers hold statements for the buckets from the
/// version this returns. Repeating it on a frozen move returns the current version.
pub async fn freeze(client: &mut Client, id: i64) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let m = lock(&tx, id).await?;
    if !matches!(m.state, MoveState::Planned | MoveState::Syncing) {
        if m.state == MoveState::Frozen {
            let v: i64 = tx
                .query_one("SELECT version FROM pgshard.meta", &[])
                .await?
                .get(0);
            return Ok(CatalogVersion(v));
        }
        return Err(StoreError::Conflict(format!("move {id} is {}", m.state)));
    }
    let n = tx
        .execute(
            "UPDATE pgshard.buckets SET frozen = true
              WHERE bucket = ANY($1::int4[]) AND shard_id = $2",
            &[&buckets_i32(&m.buckets), &(m.source.0 as i32)],
        )
        .await?;
    if n != m.buckets.len() as u64 {
        return Err(StoreError::Conflict(format!(
            "move {id}: its buckets are no longer all on shard {}",
            m.source
        )));
    }
    tx.execute(
        "UPDATE pgshard.moves SET state = 'frozen', frozen_at = clock_timestamp(),
                updated_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// A bookkeeping step that changes nothing routers see: `frozen → copying` (with the
/// rows about to be copied) and `flipped → cleaning → done`. Returns false (and
/// changes nothing) when the move is not in state `from`.
pub async fn advance(
    client: &Client,
    id: i64,
    from: MoveState,
    to: MoveState,
    rows: Option<i64>,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE pgshard.moves SET state = $3, rows_moved = coalesce($4, rows_moved),
                    updated_at = now()
              WHERE id = $1 AND state = $2",
            &[&id, &from.as_str(), &to.as_str(), &rows],
        )
        .await?;
    Ok(n == 1)
}

/// `cleaning → done`, with a version bump: routers stop filtering the move's buckets
/// out of reads ([`crate::Catalog::moving`]) once they see it. Repeating it is a no-op.
pub async fn done(client: &mut Client, id: i64) -> Result<bool, StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE pgshard.moves SET state = 'done', updated_at = now()
              WHERE id = $1 AND state = 'cleaning'",
            &[&id],
        )
        .await?;
    if n == 1 {
        bump(&tx).await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

/// `copying → flipped`, the commit point: the buckets' owner becomes the target and
/// they are unfrozen, in one transaction with the version bump. Repeating it on a
/// flipped (or later) move returns its flip version.
pub async fn flip(client: &mut Client, id: i64) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let m = lock(&tx, id).await?;
    if !m.state.before_flip() && m.state != MoveState::Aborted {
        return Ok(CatalogVersion(m.flip_version.unwrap_or_default()));
    }
    if m.state != MoveState::Copying {
        return Err(StoreError::Conflict(format!("move {id} is {}", m.state)));
    }
    let n = tx
        .execute(
            "UPDATE pgshard.buckets SET shard_id = $3, frozen = false
              WHERE bucket = ANY($1::int4[]) AND shard_id = $2 AND frozen",
            &[
                &buckets_i32(&m.buckets),
                &(m.source.0 as i32),
                &(m.target.0 as i32),
            ],
        )
        .await?;
    if n != m.buckets.len() as u64 {
        return Err(StoreError::Conflict(format!(
            "move {id}: its buckets are no longer all frozen on shard {}",
            m.source
        )));
    }
    let v = bump(&tx).await?;
    tx.execute(
        "UPDATE pgshard.moves SET state = 'flipped', flip_version = $2, updated_at = now(),
                freeze_ms = (extract(epoch FROM clock_timestamp() - frozen_at) * 1000)::bigint
          WHERE id = $1",
        &[&id, &v.0],
    )
    .await?;
    tx.commit().await?;
    Ok(v)
}

/// Roll back a move before its flip: unfrozen, owner unchanged, `aborted` with `why`;
/// in the same transaction, unless its buckets' moves were rolled back `tries` times
/// already, the move is recorded again as two `planned` halves (smaller groups are less
/// likely to meet a transaction that keeps the source busy), so a crash right after the
/// rollback loses no part of the operation. Returns the new version when buckets were
/// unfrozen, `None` when nothing routers see changed.
pub async fn abort(
    client: &mut Client,
    id: i64,
    why: &str,
    tries: i64,
) -> Result<Option<CatalogVersion>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE pgshard.moves IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    let m = lock(&tx, id).await?;
    if m.state == MoveState::Aborted {
        return Ok(None);
    }
    if !m.state.before_flip() {
        return Err(StoreError::Conflict(format!(
            "move {id} is {}: past its commit point, it can only finish",
            m.state
        )));
    }
    let n = tx
        .execute(
            "UPDATE pgshard.buckets SET frozen = false
              WHERE bucket = ANY($1::int4[]) AND frozen",
            &[&buckets_i32(&m.buckets)],
        )
        .await?;
    tx.execute(
        "UPDATE pgshard.moves SET state = 'aborted', error = $2, updated_at = now(),
                freeze_ms = (extract(epoch FROM clock_timestamp() - frozen_at) * 1000)::bigint
          WHERE id = $1",
        &[&id, &why],
    )
    .await?;
    let failed: i64 = tx
        .query_one(
            "SELECT count(*) FROM pgshard.moves
              WHERE state = 'aborted' AND operation = $1 AND buckets && $2::int4[]",
            &[&m.operation, &buckets_i32(&m.buckets)],
        )
        .await?
        .get(0);
    if failed < tries {
        let half = m.buckets.len().div_ceil(2).max(1);
        for part in m.buckets.chunks(half) {
            tx.execute(
                "INSERT INTO pgshard.moves (operation, source, target, buckets)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &m.operation,
                    &(m.source.0 as i32),
                    &(m.target.0 as i32),
                    &buckets_i32(part),
                ],
            )
            .await?;
        }
    }
    let v = if n > 0 { Some(bump(&tx).await?) } else { None };
    tx.commit().await?;
    Ok(v)
}

/// Set a shard's placement state (`active`, `draining`); bumps the version on a change.
pub async fn set_shard_state(
    client: &mut Client,
    shard: ShardId,
    state: &str,
) -> Result<Option<CatalogVersion>, StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE pgshard.shards SET state = $2 WHERE id = $1 AND state <> $2",
            &[&(shard.0 as i32), &state],
        )
        .await?;
    let v = if n == 1 { Some(bump(&tx).await?) } else { None };
    tx.commit().await?;
    Ok(v)
}

/// Add a shard that owns no bucket yet, with its nodes, as `provisioning` (`add-shard`:
/// its instances run and hold every declared table's schema already; routers send it
/// reference-table writes and DDL, never reads, until [`activate_shard`]). Repeating
/// it is a no-op.
pub async fn add_shard(
    client: &mut Client,
    shard: ShardId,
    nodes: &[crate::types::Node],
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO pgshard.shards (id, state) VALUES ($1, 'provisioning')
         ON CONFLICT (id) DO NOTHING",
        &[&(shard.0 as i32)],
    )
    .await?;
    for n in nodes {
        crate::store::insert_node(&tx, n).await?;
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// A `provisioning` shard (its reference rows copied) becomes `active`: placement may
/// give it buckets. Bumps the version; a no-op for a shard in any other state.
pub async fn activate_shard(
    client: &mut Client,
    shard: ShardId,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE pgshard.shards SET state = 'active' WHERE id = $1 AND state = 'provisioning'",
        &[&(shard.0 as i32)],
    )
    .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Add a node to a shard (a new replica, `rebuilding` until it streams), bumping the
/// version.
pub async fn add_node(
    client: &mut Client,
    node: &crate::types::Node,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    crate::store::insert_node(&tx, node).await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Remove a replica from the catalog, bumping the version (routers stop reading from
/// it). A primary is refused.
pub async fn remove_replica(
    client: &mut Client,
    node: crate::types::NodeId,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    // The record of a past failover may name it.
    tx.execute(
        "UPDATE pgshard.shards
            SET failover_from = nullif(failover_from, $1), failover_to = nullif(failover_to, $1)",
        &[&(node.0 as i32)],
    )
    .await?;
    let n = tx
        .execute(
            "DELETE FROM pgshard.nodes WHERE id = $1 AND role = 'replica'",
            &[&(node.0 as i32)],
        )
        .await?;
    if n != 1 {
        return Err(StoreError::Conflict(format!(
            "node {node} is not a replica in the catalog"
        )));
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Decommission shard `shard` once `remove-shard` drained it: its nodes leave the
/// catalog and it becomes `removed` (routers stop seeing it), bumping the version.
/// Returns the names of the nodes removed and the new version, `None` while it is not
/// drained (it still owns buckets, or a move names it) or not being removed.
pub async fn decommission(
    client: &mut Client,
    shard: ShardId,
) -> Result<Option<(Vec<String>, CatalogVersion)>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE pgshard.moves IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    let id = shard.0 as i32;
    let ready: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgshard.shards WHERE id = $1 AND state = 'removing')
                AND NOT EXISTS (SELECT 1 FROM pgshard.buckets WHERE shard_id = $1)
                AND NOT EXISTS (SELECT 1 FROM pgshard.moves
                                 WHERE state NOT IN ('done', 'aborted')
                                   AND (source = $1 OR target = $1))
                AND (SELECT local_shard FROM pgshard.meta) <> $1",
            &[&id],
        )
        .await?
        .get(0);
    if !ready {
        return Ok(None);
    }
    tx.execute(
        "UPDATE pgshard.shards SET state = 'removed', failover_from = NULL, failover_to = NULL
          WHERE id = $1",
        &[&id],
    )
    .await?;
    let names: Vec<String> = tx
        .query(
            "DELETE FROM pgshard.nodes WHERE shard_id = $1 RETURNING name",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(Some((names, v)))
}

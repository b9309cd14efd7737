//! Bucket moves (SPEC §9), carried out by the [`Reconciler`] one recorded move at a
//! time ([`pgshard_catalog::moves`] holds the state machine).
//!
//! ## Logical replication ahead, a write fence at the end
//!
//! A shard keeps every bucket it owns in one table per distributed table, and fan-out
//! statements run on every shard. Rows copied to the target ahead of the flip are
//! visible there, next to the same rows still on the source: so from `syncing` on,
//! every multi-shard read and write skips them on the shard that does not own them
//! (`pgshard_sql::moving`). The rows are copied ahead by a subscription
//! ([`super::sync`]); the move's commit point is still the catalog flip, reached under
//! a short per-bucket *write fence*: the buckets are frozen, the last changes applied,
//! the subscription dropped, the source's rows deleted in a prepared transaction.
//! Tables whose replica identity does not cover the shard key are copied inside the
//! fence instead (with `COPY`, in a prepared transaction on the target). Multi-shard
//! reads have no global snapshot, as documented.
//!
//! ## Steps ([`Reconciler::run_move`])
//!
//! 0. `planned → syncing` ([`moves::sync`]) and the subscription's copy
//!    ([`Reconciler::start_sync`], [`Reconciler::resume_move`]), for the tables that allow it.
//! 1. `→ frozen` ([`moves::freeze`]): routers hold statements for the buckets.
//! 2. The source *fence*: a row per bucket in `pgshard_move.fence` on the source and a
//!    trigger on each distributed table refusing (SQLSTATE 55000) writes to fenced
//!    buckets by transactions that began once the fence was hard (a short soft period
//!    after it is set), so a router that has not seen the freeze cannot write there.
//!    Then every router must route with the freeze's version (bounded wait on
//!    `pgshard.routers`) and the transactions that began before the fence was hard
//!    (prepared ones included) must end: from then on nothing writes the buckets' rows.
//!    Routers send a frozen bucket's statement of such a transaction to the source
//!    instead of holding it (`router::session::frozen`), so the two never wait for
//!    each other.
//! 3. The synced tables' last changes are applied ([`Reconciler::caught_up`]); `→
//!    copying`: per database, `COPY (SELECT … WHERE
//!    bucket IN …)` from the source into the target for the other tables, `DELETE` on
//!    the source, both `PREPARE TRANSACTION 'pgshard_move_<id>_…'`.
//! 4. COMMIT PREPARED on the target (routers still send the buckets to the source, and
//!    multi-shard reads skip them on the target: `pgshard_sql::moving`), then
//!    `→ flipped` ([`moves::flip`], the commit point), then, once every router routes
//!    with the flip's version (bounded), COMMIT PREPARED on the source (reads skip the
//!    buckets there from the flip on). A rollback before the flip deletes the target's
//!    copy again.
//! 5. `→ cleaning`: the rows copied ahead are deleted from the source a range of
//!    blocks at a time, a bounded slice per control-loop round (other moves, probes
//!    and failovers go on meanwhile); then the fence rows go, and the triggers when no
//!    fence row is left; `→ done` (a version bump: reads stop filtering the buckets).
//!
//! A move found before its flip that this process did not just start (shardd crashed
//! during it) is rolled back ([`Reconciler::abort_move`]: prepared transactions rolled
//! back, fence lifted, buckets unfrozen); one found flipped is finished. The rest of an
//! operation is planned again from the bucket map ([`pgshard_catalog::placement`]).

use super::{node_err, spec_of, ReconcileError, Reconciler};
use crate::runtime::{ready, NodeSpec};
use futures::{SinkExt, TryStreamExt};
use pgshard_catalog::hash::bucket_sql_expr;
use pgshard_catalog::moves::{self, Move, MoveState};
use pgshard_catalog::placement::{self, BucketMove};
use pgshard_catalog::{BucketId, Catalog, CatalogVersion, KeyType, ShardId, TableKind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The prefix of a move's prepared transactions (2PC recovery leaves them alone).
pub const GID_PREFIX: &str = "pgshard_move_";
/// Bound on waiting for the transactions open at the fence to end; past it the move is
/// rolled back and tried again later (a router may hold a statement of one of them).
const DRAIN: Duration = Duration::from_millis(500);

/// How long a new fence lets writes through: longer than a statement takes from its
/// router's plan to the shard, shorter than routers take to see a freeze.
pub(super) const SOFT: Duration = Duration::from_millis(100);

/// How long the fence stays soft once every router acknowledged the freeze: a
/// statement its router planned before that is on its way to the source by then.
const GRACE: Duration = Duration::from_millis(20);

/// Attempts at a move that fails (rolled back each time, and recorded again in halves
/// in the same catalog transaction, [`moves::abort`]) before it is given up.
const TRIES: i64 = 50;

/// Buckets per move. The freeze of a table copied ahead does not grow with its rows,
/// but each move scans the source's tables (to copy, to delete): fewer, larger moves.
/// Tables copied inside the freeze (no replica identity on the key) make it longer.
pub const GROUP: usize = 16;

/// Blocks of a table one statement of a move's source cleaning deletes from (64 MB).
const CLEAN_BLOCKS: i64 = 8192;

/// Time a round gives a move's source cleaning before the control loop goes on.
const CLEAN_ROUND: Duration = Duration::from_millis(500);

/// How far the deletion of a flipped move's rows on its source got: database and
/// table (by position) and block; rows deleted not yet recorded in the catalog.
#[derive(Debug, Default)]
pub struct Cleaning {
    db: usize,
    table: usize,
    block: i64,
    deleted: i64,
}

/// A change of placement asked for over the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ScaleOp {
    /// Even out bucket counts over `shards` (default: the active shards); the others
    /// are drained.
    Rebalance { shards: Option<Vec<ShardId>> },
    /// Drain every bucket of `shard` to the others.
    RemoveShard { shard: ShardId },
    /// Create a shard with `replicas` replicas (default: as the others), then move its
    /// share of the buckets to it.
    AddShard { replicas: Option<u32> },
    /// Move `buckets` to shard `to`.
    Move { buckets: Vec<BucketId>, to: ShardId },
    /// Start a new streaming replica of `shard` (no bucket moves).
    AddReplica { shard: ShardId },
    /// Stop and remove replica `node` (no bucket moves).
    RemoveReplica { node: String },
}

/// What to do with a recorded move found unfinished at the start of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Carry it out from the start.
    Run,
    /// Interrupted before its commit point: roll it back.
    Abort,
    /// Interrupted after its commit point: finish it.
    Finish,
}

/// The pure decision for a move found unfinished (see the module doc).
pub fn next(state: MoveState) -> Option<Next> {
    match state {
        MoveState::Planned => Some(Next::Run),
        MoveState::Syncing | MoveState::Frozen | MoveState::Copying => Some(Next::Abort),
        MoveState::Flipped | MoveState::Cleaning => Some(Next::Finish),
        MoveState::Done | MoveState::Aborted => None,
    }
}

/// Milliseconds spent in each step of a move's freeze, for the log.
struct Laps {
    last: Instant,
    steps: Vec<(&'static str, u128)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        self.steps.push((step, self.last.elapsed().as_millis()));
        self.last = Instant::now();
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.steps.iter().enumerate() {
            write!(f, "{}{step} {ms} ms", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

/// Group a placement plan into moves of at most `size` buckets with the same source and
/// target, in plan order.
pub fn group(plan: &[BucketMove], size: usize) -> Vec<(ShardId, ShardId, Vec<BucketId>)> {
    // Each (source, target) pair's buckets together, pairs in the order they first
    // appear: a plan alternating sources must not become one-bucket moves (each move
    // scans the source's tables once to copy and once to delete).
    let mut pairs: Vec<((ShardId, ShardId), Vec<BucketId>)> = Vec::new();
    for m in plan {
        match pairs.iter_mut().find(|(p, _)| *p == (m.from, m.to)) {
            Some((_, b)) => b.push(m.bucket),
            None => pairs.push(((m.from, m.to), vec![m.bucket])),
        }
    }
    let mut out = Vec::new();
    for ((from, to), buckets) in pairs {
        for chunk in buckets.chunks(size.max(1)) {
            out.push((from, to, chunk.to_vec()));
        }
    }
    out
}

/// A distributed table as the move SQL needs it.
pub(super) struct Dist {
    pub(super) name: String,
    pub(super) quoted: String,
    pub(super) key: String,
    pub(super) key_type: KeyType,
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn distributed(catalog: &Catalog) -> Vec<Dist> {
    catalog
        .tables
        .iter()
        .filter_map(|t| match &t.kind {
            TableKind::Distributed {
                shard_key,
                key_type,
                ..
            } => Some(Dist {
                name: t.name.clone(),
                quoted: t
                    .name
                    .split('.')
                    .map(quote_ident)
                    .collect::<Vec<_>>()
                    .join("."),
                key: shard_key.clone(),
                key_type: *key_type,
            }),
            TableKind::Reference => None,
        })
        .collect()
}

pub(super) fn bucket_list(buckets: &[BucketId]) -> String {
    let list: Vec<String> = buckets.iter().map(|b| b.0.to_string()).collect();
    format!("'{{{}}}'::int4[]", list.join(","))
}

pub(super) fn db_err(node: &str, e: tokio_postgres::Error) -> ReconcileError {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    node_err(node, detail)
}

/// The fence function and trigger of one table (see the module doc).
fn fence_sql(t: &Dist, buckets: u32) -> String {
    let expr = |rec: &str| {
        bucket_sql_expr(
            &format!("{rec}.{}", quote_ident(&t.key)),
            t.key_type,
            buckets,
        )
    };
    let func = quote_ident(&format!("fence_{}", t.name));
    let (new, old) = (expr("NEW"), expr("OLD"));
    format!(
        "CREATE OR REPLACE FUNCTION pgshard_move.{func}() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           IF TG_OP <> 'DELETE' THEN
             IF EXISTS (SELECT 1 FROM pgshard_move.fence WHERE bucket = {new}
                                AND hard_at <= now()) THEN
               RAISE EXCEPTION USING ERRCODE = '55000',
                 MESSAGE = format('the bucket of this row of table %s is being moved to another shard', TG_TABLE_NAME),
                 HINT = 'The router that sent it has not seen the move yet: retry the transaction.';
             END IF;
           END IF;
           IF TG_OP <> 'INSERT' THEN
             IF EXISTS (SELECT 1 FROM pgshard_move.fence WHERE bucket = {old}
                                AND hard_at <= now()) THEN
               RAISE EXCEPTION USING ERRCODE = '55000',
                 MESSAGE = format('the bucket of this row of table %s is being moved to another shard', TG_TABLE_NAME),
                 HINT = 'The router that sent it has not seen the move yet: retry the transaction.';
             END IF;
           END IF;
           IF TG_OP = 'DELETE' THEN
             RETURN OLD;
           END IF;
           RETURN NEW;
         END $f$;
         CREATE OR REPLACE TRIGGER pgshard_move_fence BEFORE INSERT OR UPDATE OR DELETE
           ON {} FOR EACH ROW EXECUTE FUNCTION pgshard_move.{func}();",
        t.quoted
    )
}

impl Reconciler {
    /// A connection to `db` on `spec`, kept for the rest of the move: every step of a
    /// freeze would otherwise pay for new connections ([`Reconciler::forget_move_conns`]
    /// drops them when a move starts, fails or ends).
    pub(super) async fn connect_db(
        &self,
        spec: &NodeSpec,
        db: &str,
    ) -> Result<Arc<Client>, ReconcileError> {
        let key = (spec.name.clone(), spec.port, db.to_string());
        let kept = self
            .move_conns
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        if let Some(c) = kept.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let c = ready::connect(&spec.pg_config(db, self.opts.timeout), self.opts.timeout)
            .await
            .map(Arc::new)
            .map_err(|e| node_err(&spec.name, format!("cannot connect to {db}: {e}")))?;
        if let Ok(mut m) = self.move_conns.lock() {
            m.insert(key, c.clone());
        }
        Ok(c)
    }

    /// Drop the connections [`Reconciler::connect_db`] kept (one may be inside a
    /// transaction a failed step left open).
    pub(crate) fn forget_move_conns(&self) {
        if let Ok(mut m) = self.move_conns.lock() {
            m.clear();
        }
    }

    fn primary_spec(&self, catalog: &Catalog, shard: ShardId) -> Result<NodeSpec, ReconcileError> {
        let p = catalog
            .primary(shard)
            .ok_or_else(|| ReconcileError::Refused(format!("shard {shard} has no primary")))?;
        spec_of(&self.cluster, &self.cluster.layout(), &p.name)
    }

    /// The user databases of a shard primary.
    pub(super) async fn databases(&self, spec: &NodeSpec) -> Result<Vec<String>, ReconcileError> {
        let c = self.connect_db(spec, "postgres").await?;
        let rows = c
            .query(
                "SELECT datname FROM pg_database
                  WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                &[],
            )
            .await
            .map_err(|e| db_err(&spec.name, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The distributed tables present in the database `c` is connected to.
    pub(super) async fn present(
        &self,
        c: &Client,
        all: &[Dist],
    ) -> Result<Vec<usize>, tokio_postgres::Error> {
        let mut out = Vec::new();
        for (i, t) in all.iter().enumerate() {
            let exists: bool = c
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.quoted])
                .await?
                .get(0);
            if exists {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Carry out the unfinished moves recorded in the catalog, oldest first, until
    /// `budget` has passed (the control loop's other work goes on between rounds).
    pub async fn run_moves(&mut self, budget: Duration) -> Result<usize, ReconcileError> {
        let started = Instant::now();
        let mut done = 0;
        let client = self.catalog_client().await?;
        for m in moves::list(&client, true).await? {
            if started.elapsed() > budget {
                break;
            }
            match next(m.state) {
                Some(Next::Run) => match self.run_move(m.id).await {
                    Ok(true) => {}
                    // Syncing: the next round looks again (probes, failovers and the
                    // API are served meanwhile); moves run one at a time.
                    Ok(false) => break,
                    Err(error) => {
                        tracing::warn!(id = m.id, %error, "move failed");
                        self.syncing.remove(&m.id);
                        self.abort_move(m.id, &error.to_string()).await?;
                    }
                },
                Some(Next::Abort) if self.syncing.contains_key(&m.id) => {
                    match self.resume_move(m.id).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(error) => {
                            tracing::warn!(id = m.id, %error, "move failed");
                            self.syncing.remove(&m.id);
                            self.abort_move(m.id, &error.to_string()).await?;
                        }
                    }
                }
                Some(Next::Abort) => {
                    tracing::warn!(id = m.id, state = %m.state, "move interrupted before its flip; rolling back");
                    self.abort_move(m.id, "interrupted (shardd restarted)")
                        .await?;
                }
                Some(Next::Finish) => self.finish_move(m.id).await?,
                None => {}
            }
            done += 1;
        }
        self.forget_move_conns();
        self.decommission_drained().await?;
        Ok(done)
    }

    /// Decommission every shard `remove-shard` drained: out of the catalog first
    /// ([`moves::decommission`], only once it owns nothing and no move names it), then
    /// its nodes stopped and their data removed, and out of the layout.
    async fn decommission_drained(&mut self) -> Result<(), ReconcileError> {
        let mut client = self.catalog_client().await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        for shard in catalog.shards.iter().filter(|s| s.state == "removing") {
            if catalog.bucket_map.contains(&shard.id)
                || catalog
                    .moving
                    .iter()
                    .any(|m| m.source == shard.id || m.target == shard.id)
            {
                continue;
            }
            // A multi-shard statement planned while the shard still held rows may still
            // be on its way: every router routes with this catalog first (bounded), and
            // what it sent before has time to arrive.
            self.routers_caught_up(&client, catalog.version).await;
            tokio::time::sleep(SOFT).await;
            let Some((names, v)) = moves::decommission(&mut client, shard.id).await? else {
                continue;
            };
            // Routers stop sending it anything; what they sent before ends (bounded).
            self.routers_caught_up(&client, v).await;
            let layout = self.cluster.layout();
            let config = self.cluster.config().clone();
            let rt = self.cluster.runtime().clone();
            for n in layout.nodes.iter().filter(|n| n.shard == Some(shard.id)) {
                let spec = layout.spec(n, &config);
                self.drain(&spec).await;
                rt.stop(&spec).await?;
                rt.remove(&spec).await?;
            }
            self.cluster.update_layout(|l| {
                l.nodes.retain(|n| n.shard != Some(shard.id));
                l.shards.retain(|s| *s != shard.id);
            })?;
            tracing::info!(shard = %shard.id, nodes = ?names, "shard decommissioned");
        }
        Ok(())
    }

    /// Start a planned move (see the module doc): its fence triggers, then the sync of
    /// its rows ahead of the freeze. Returns false while that sync runs
    /// ([`Reconciler::resume_move`] goes on from there in later rounds); without tables
    /// to sync it goes on at once. An error before the flip leaves the move for
    /// [`Reconciler::abort_move`].
    async fn run_move(&mut self, id: i64) -> Result<bool, ReconcileError> {
        self.forget_move_conns();
        let mut client = self.catalog_client().await?;
        let m = moves::get(&client, id).await?;
        self.fault("move-planned").await;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let source = self.primary_spec(&catalog, m.source)?;
        let tables = distributed(&catalog);
        let dbs = self.databases(&source).await?;
        self.install_fence(&source, &dbs, &tables, catalog.buckets)
            .await?;
        let target = self.primary_spec(&catalog, m.target)?;
        let synced = self.syncable(&source, &dbs, &tables).await?;
        if synced.is_empty() {
            self.freeze_move(id, &synced).await?;
            return Ok(true);
        }
        self.start_sync(
            &mut client,
            &source,
            &target,
            &synced,
            &tables,
            &m,
            catalog.buckets,
        )
        .await?;
        self.syncing.insert(id, (Instant::now(), synced));
        self.resume_move(id).await
    }

    /// A move this process is syncing: once its rows are copied and the target is
    /// close behind, freeze and flip it (true); false while the sync goes on.
    async fn resume_move(&mut self, id: i64) -> Result<bool, ReconcileError> {
        let Some((started, synced)) = self.syncing.get(&id).cloned() else {
            return Err(ReconcileError::Refused(format!(
                "move {id} is not being synced here"
            )));
        };
        let client = self.catalog_client().await?;
        let m = moves::get(&client, id).await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let source = self.primary_spec(&catalog, m.source)?;
        let target = self.primary_spec(&catalog, m.target)?;
        if !self.synced(&source, &target, &synced, id, started).await? {
            return Ok(false);
        }
        tracing::info!(id, elapsed = ?started.elapsed(), "rows synced ahead of the freeze");
        self.syncing.remove(&id);
        self.freeze_move(id, &synced).await?;
        Ok(true)
    }

    /// A move from its freeze to `done` (see the module doc); `synced` are the tables
    /// already copied by its subscription.
    async fn freeze_move(
        &mut self,
        id: i64,
        synced: &super::sync::Synced,
    ) -> Result<(), ReconcileError> {
        let mut client = self.catalog_client().await?;
        let m = moves::get(&client, id).await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let source = self.primary_spec(&catalog, m.source)?;
        let target = self.primary_spec(&catalog, m.target)?;
        let tables = distributed(&catalog);
        let dbs = self.databases(&source).await?;
        let v = moves::freeze(&mut client, id).await?;
        tracing::info!(id, source = %m.source, target = %m.target, buckets = m.buckets.len(), %v, "buckets frozen");
        // Where the freeze goes, step by step (logged at the flip).
        let mut laps = Laps::new();
        self.fault("move-frozen").await;
        // The fence goes in while routers take the freeze: the two do not wait on
        // each other (the fence is soft until the drain hardens it).
        let (fenced, ()) = tokio::join!(
            self.fence(&source, &dbs, &tables, &m),
            self.routers_caught_up(&client, v)
        );
        fenced?;
        laps.lap("fence_and_routers");
        self.drain_fenced(&source, &dbs, &tables, &m).await?;
        laps.lap("drain");
        if !synced.is_empty() {
            self.caught_up(&source, &target, id).await?;
            laps.lap("catch_up");
        }
        moves::advance(&client, id, MoveState::Frozen, MoveState::Copying, None).await?;
        self.fault("move-copying").await;
        // The subscriptions stay until the flip is done: nothing writes the buckets on
        // the source any more (the fence refuses it, multi-shard writes skip them once
        // the target owns them), so they apply nothing; they are dropped before the
        // source's rows are deleted ([`Reconciler::finish_move`]).
        let rows = self
            .copy_prepared(&source, &target, &dbs, &tables, &m, catalog.buckets, synced)
            .await?;
        laps.lap("copy");
        if rows > 0 {
            moves::advance(
                &client,
                id,
                MoveState::Copying,
                MoveState::Copying,
                Some(rows),
            )
            .await?;
        }
        // The target's rows are committed *before* the flip: a statement routed there
        // by the flip must find them (an UPDATE does not wait for a prepared insert, it
        // does not see the row). Routers do not route the buckets there before the
        // flip, and a rollback deletes them again (`abort_move`).
        self.end_prepared(&target, id, true).await?;
        laps.lap("target_commit");
        self.fault("move-target-committed").await;
        let v = moves::flip(&mut client, id).await?;
        laps.lap("flip");
        tracing::info!(id, rows, %v, steps = %laps, "move flipped");
        self.fault("move-flipped").await;
        drop(client);
        self.finish_move(id).await
    }

    /// Install the fence triggers on the source (idempotent; before the freeze, so that
    /// their lock never waits behind a transaction a router holds for a frozen bucket).
    /// A trigger already there is left alone: creating it again would lock its table.
    async fn install_fence(
        &self,
        source: &NodeSpec,
        dbs: &[String],
        tables: &[Dist],
        buckets: u32,
    ) -> Result<(), ReconcileError> {
        for db in dbs {
            let c = self.connect_db(source, db).await?;
            let present = self
                .present(&c, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?;
            if present.is_empty() {
                continue;
            }
            let mut sql = String::from(
                "CREATE SCHEMA IF NOT EXISTS pgshard_move;
                 CREATE TABLE IF NOT EXISTS pgshard_move.fence (
                     bucket int4 PRIMARY KEY, move_id bigint NOT NULL,
                     hard_at timestamptz NOT NULL);",
            );
            for i in present {
                let has: bool = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_trigger
                                         WHERE tgrelid = to_regclass($1)
                                           AND tgname = 'pgshard_move_fence')",
                        &[&tables[i].quoted],
                    )
                    .await
                    .map_err(|e| db_err(&source.name, e))?
                    .get(0);
                if !has {
                    sql.push_str(&fence_sql(&tables[i], buckets));
                }
            }
            locking_ddl(&c, &sql)
                .await
                .map_err(|e| db_err(&source.name, e))?;
        }
        Ok(())
    }

    /// Insert the move's fence rows on the source (idempotent), *soft* for [`SOFT`]:
    /// writes to the buckets still pass (a statement a router planned just before it
    /// saw the freeze may arrive now), then refused to transactions that began after it.
    /// [`Reconciler::drain_fenced`] then waits (bounded by [`DRAIN`]) until every
    /// transaction that may have written the buckets has ended.
    async fn fence(
        &self,
        source: &NodeSpec,
        dbs: &[String],
        tables: &[Dist],
        m: &Move,
    ) -> Result<(), ReconcileError> {
        let list = bucket_list(&m.buckets);
        for db in dbs {
            let c = self.connect_db(source, db).await?;
            if self
                .present(&c, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?
                .is_empty()
            {
                continue;
            }
            c.batch_execute(&format!(
                "INSERT INTO pgshard_move.fence
                 SELECT b, {}, clock_timestamp() + interval '{} ms' FROM unnest({list}) AS b
                 ON CONFLICT (bucket) DO NOTHING",
                m.id,
                SOFT.as_millis()
            ))
            .await
            .map_err(|e| db_err(&source.name, e))?;
        }
        Ok(())
    }

    /// Wait until the fence of `m` is hard on the source and every transaction that may
    /// have written its buckets has ended (see [`Reconciler::fence`]): the fence lets a
    /// transaction write them when it began before the fence became hard, so those are
    /// waited for (by pid and start), then the transactions prepared by the time they
    /// had left. Transactions that began later cannot write the buckets and are not
    /// waited for: a router holding one of their statements for a frozen bucket does
    /// not stall the move.
    async fn drain_fenced(
        &self,
        source: &NodeSpec,
        dbs: &[String],
        tables: &[Dist],
        m: &Move,
    ) -> Result<(), ReconcileError> {
        let deadline = Instant::now() + DRAIN + SOFT;
        let mut hard: Vec<String> = Vec::new();
        let mut wait_for = 0.0f64;
        for db in dbs {
            let c = self.connect_db(source, db).await?;
            if self
                .present(&c, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?
                .is_empty()
            {
                continue;
            }
            // Every router routes with the freeze now (or the bound passed): only a
            // statement already on its way may still arrive, so the soft period can end
            // after [`GRACE`] rather than the whole of [`SOFT`].
            // One round trip: the new end of the soft period, and how far off it is by
            // the server's clock.
            let row = c
                .query_one(
                    &format!(
                        "WITH f AS (
                             UPDATE pgshard_move.fence
                                SET hard_at = least(hard_at, clock_timestamp() + interval '{} ms')
                              WHERE move_id = $1 RETURNING hard_at)
                         SELECT max(hard_at)::text,
                                coalesce(extract(epoch FROM max(hard_at) - clock_timestamp()), 0)
                                    ::float8
                           FROM f",
                        GRACE.as_millis()
                    ),
                    &[&m.id],
                )
                .await
                .map_err(|e| db_err(&source.name, e))?;
            let (at, left): (Option<String>, f64) = (row.get(0), row.get(1));
            hard.extend(at);
            wait_for = wait_for.max(left);
        }
        // Sleep out the grace, then, once the server's clock agrees, the transactions
        // that began before the fence was hard (by pid and start).
        if wait_for > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait_for.min(SOFT.as_secs_f64()))).await;
        }
        let c = self.connect_db(source, "postgres").await?;
        let err = |e| db_err(&source.name, e);
        let open: Vec<String> = loop {
            let row = c
                .query_one(
                    "WITH h AS (SELECT max(h::timestamptz) AS at FROM unnest($1::text[]) h)
                     SELECT coalesce((SELECT at FROM h) <= clock_timestamp(), true),
                            coalesce(array_agg(pid::text || '@' || xact_start::text), '{}')
                       FROM pg_stat_activity
                      WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
                        AND xact_start < (SELECT at FROM h)",
                    &[&hard],
                )
                .await
                .map_err(err)?;
            if row.get::<_, bool>(0) {
                break row.get(1);
            }
            if Instant::now() > deadline {
                return Err(node_err(&source.name, "the fence did not become hard"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Then the transactions prepared by the time those had left (read in the same
        // round trip as the last check).
        let deadline = Instant::now() + DRAIN;
        let prepared: Vec<String> = loop {
            let row = c
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                         WHERE pid::text || '@' || xact_start::text = ANY($1)),
                            (SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts)",
                    &[&open],
                )
                .await
                .map_err(err)?;
            if row.get::<_, bool>(0) {
                break row.get(1);
            }
            if Instant::now() > deadline {
                return Err(node_err(
                    &source.name,
                    format!("transactions older than the fence still open after {DRAIN:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if prepared.is_empty() {
            return Ok(());
        }
        let wait = "SELECT NOT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = ANY($1))";
        self.poll(&c, source, deadline, wait, &[&prepared]).await
    }

    /// Run `sql` (one boolean) until it is true or `deadline` passes (an error).
    async fn poll(
        &self,
        c: &Client,
        source: &NodeSpec,
        deadline: Instant,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), ReconcileError> {
        loop {
            let done: bool = c
                .query_one(sql, params)
                .await
                .map_err(|e| db_err(&source.name, e))?
                .get(0);
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(node_err(
                    &source.name,
                    format!("transactions older than the fence still open after {DRAIN:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Copy the buckets' rows of every distributed table not `synced` ahead to the
    /// target and delete them on the source, per database, each side in a prepared
    /// transaction named after the move. Returns the rows copied.
    #[allow(clippy::too_many_arguments)]
    async fn copy_prepared(
        &self,
        source: &NodeSpec,
        target: &NodeSpec,
        dbs: &[String],
        tables: &[Dist],
        m: &Move,
        buckets: u32,
        synced: &super::sync::Synced,
    ) -> Result<i64, ReconcileError> {
        let list = bucket_list(&m.buckets);
        let mut rows = 0i64;
        for (n, db) in dbs.iter().enumerate() {
            let src = self.connect_db(source, db).await?;
            let present = self
                .present(&src, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?;
            // Copied ahead: deleted on the source after the flip
            // ([`Reconciler::finish_move`]), outside the freeze.
            let todo: Vec<usize> = present
                .into_iter()
                .filter(|&i| !super::sync::is_synced(synced, db, i))
                .collect();
            if todo.is_empty() {
                continue;
            }
            let dst = self.connect_db(target, db).await?;
            // The fence trigger (and foreign keys, moved together) must not fire for the
            // move's own writes: `replica` role, as logical replication applies rows.
            let begin = "BEGIN; SET LOCAL session_replication_role = replica";
            src.batch_execute(begin)
                .await
                .map_err(|e| db_err(&source.name, e))?;
            dst.batch_execute(begin)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            for i in todo {
                let t = &tables[i];
                let filter = format!(
                    "{} = ANY({list})",
                    bucket_sql_expr(&quote_ident(&t.key), t.key_type, buckets)
                );
                rows +=
                    copy_table(&src, &dst, &t.quoted, &filter, &source.name, &target.name).await?;
                src.execute(&format!("DELETE FROM {} WHERE {filter}", t.quoted), &[])
                    .await
                    .map_err(|e| db_err(&source.name, e))?;
            }
            let gid = |side: &str| format!("{GID_PREFIX}{}_{n}_{side}", m.id);
            dst.batch_execute(&format!("PREPARE TRANSACTION '{}'", gid("target")))
                .await
                .map_err(|e| db_err(&target.name, e))?;
            src.batch_execute(&format!("PREPARE TRANSACTION '{}'", gid("source")))
                .await
                .map_err(|e| db_err(&source.name, e))?;
        }
        if !synced.is_empty() {
            // The subscription applies without waiting for a flush or a synchronous
            // replica: one durable commit on the target (a transaction id, so it waits
            // for both) makes every row it applied durable there before the flip.
            self.connect_db(target, "postgres")
                .await?
                .batch_execute("SELECT txid_current()")
                .await
                .map_err(|e| db_err(&target.name, e))?;
        }
        Ok(rows)
    }

    /// COMMIT PREPARED (`commit`) or ROLLBACK PREPARED every prepared transaction of
    /// move `id` on `spec` (none left is fine: repeating is safe).
    async fn end_prepared(
        &self,
        spec: &NodeSpec,
        id: i64,
        commit: bool,
    ) -> Result<(), ReconcileError> {
        let c = self.connect_db(spec, "postgres").await?;
        let rows = c
            .query(
                "SELECT gid, database::text FROM pg_prepared_xacts WHERE starts_with(gid, $1)",
                &[&format!("{GID_PREFIX}{id}_")],
            )
            .await
            .map_err(|e| db_err(&spec.name, e))?;
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        for r in rows {
            let (gid, db): (String, String) = (r.get(0), r.get(1));
            let c = self.connect_db(spec, &db).await?;
            c.batch_execute(&format!("{verb} PREPARED '{gid}'"))
                .await
                .map_err(|e| db_err(&spec.name, e))?;
            tracing::info!(node = %spec.name, %gid, verb, "move transaction finished");
        }
        Ok(())
    }

    /// Remove move `id`'s fence rows on `source`, and the fence triggers of a database
    /// where no fence row is left.
    async fn lift_fence(
        &self,
        source: &NodeSpec,
        id: i64,
        tables: &[Dist],
        drop_triggers: bool,
    ) -> Result<(), ReconcileError> {
        for db in self.databases(source).await? {
            let c = self.connect_db(source, &db).await?;
            let has: bool = c
                .query_one("SELECT to_regclass('pgshard_move.fence') IS NOT NULL", &[])
                .await
                .map_err(|e| db_err(&source.name, e))?
                .get(0);
            if !has {
                continue;
            }
            c.execute("DELETE FROM pgshard_move.fence WHERE move_id = $1", &[&id])
                .await
                .map_err(|e| db_err(&source.name, e))?;
            let left: i64 = c
                .query_one("SELECT count(*) FROM pgshard_move.fence", &[])
                .await
                .map_err(|e| db_err(&source.name, e))?
                .get(0);
            if left > 0 || !drop_triggers {
                continue;
            }
            let present = self
                .present(&c, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?;
            let mut sql = String::new();
            for i in present {
                sql.push_str(&format!(
                    "DROP TRIGGER IF EXISTS pgshard_move_fence ON {};",
                    tables[i].quoted
                ));
            }
            sql.push_str("DROP SCHEMA pgshard_move CASCADE;");
            locking_ddl(&c, &sql)
                .await
                .map_err(|e| db_err(&source.name, e))?;
        }
        Ok(())
    }

    /// True when no other unfinished move takes buckets from `m`'s source: its fence
    /// triggers can go (dropping and creating them again for each move of an operation
    /// would lock the tables each time).
    async fn last_move_of(&self, client: &Client, m: &Move) -> Result<bool, ReconcileError> {
        Ok(!moves::list(client, true)
            .await?
            .iter()
            .any(|o| o.id != m.id && o.source == m.source))
    }

    /// Finish a flipped move: commit the target's copy (again, if a crash came between),
    /// wait (bounded) until routers route with the flip, commit the source's delete,
    /// lift the fence, `done`. The source keeps the rows until routers read the buckets
    /// from the target: a read planned with the catalog before the flip skips them on
    /// the target and finds them on the source (`pgshard_sql::moving`).
    async fn finish_move(&mut self, id: i64) -> Result<(), ReconcileError> {
        self.forget_move_conns();
        let mut client = self.catalog_client().await?;
        let m = moves::get(&client, id).await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let source = self.primary_spec(&catalog, m.source)?;
        if m.state == MoveState::Flipped {
            let target = self.primary_spec(&catalog, m.target)?;
            // The subscriptions go before the source's rows: the delete would reach the
            // target through them.
            self.drop_sync(&source, &target, id).await?;
            self.end_prepared(&target, id, true).await?;
            let flip = CatalogVersion(m.flip_version.unwrap_or(catalog.version.0));
            self.routers_caught_up(&client, flip).await;
            // A read its router planned just before it saw the flip may still be on its
            // way to the source.
            tokio::time::sleep(SOFT).await;
            self.end_prepared(&source, id, true).await?;
            moves::advance(&client, id, MoveState::Flipped, MoveState::Cleaning, None).await?;
            self.fault("move-cleaning").await;
        }
        // The rows copied ahead leave the source now, outside the freeze and a batch of
        // blocks per round (the control loop goes on between): until the move is done,
        // multi-shard statements skip them there, and the fence refuses writes to them.
        let mut at = self.cleaning.remove(&id).unwrap_or_default();
        let started = Instant::now();
        let finished = self
            .delete_batches(&source, &m, &catalog, &mut at, CLEAN_ROUND)
            .await?;
        tracing::debug!(id, deleted = at.deleted, took = ?started.elapsed(), finished, "source rows deleted");
        if at.deleted > 0 {
            let rows = m.rows_moved + at.deleted;
            moves::advance(
                &client,
                id,
                MoveState::Cleaning,
                MoveState::Cleaning,
                Some(rows),
            )
            .await?;
            at.deleted = 0;
        }
        if !finished {
            self.cleaning.insert(id, at);
            return Ok(());
        }
        let last = self.last_move_of(&client, &m).await?;
        self.lift_fence(&source, id, &distributed(&catalog), last)
            .await?;
        moves::done(&mut client, id).await?;
        tracing::info!(id, rows = m.rows_moved, freeze_ms = ?m.freeze_ms, "move done");
        Ok(())
    }

    /// Roll back a move before its flip (a move already flipped is left to
    /// [`Reconciler::finish_move`]).
    pub(crate) async fn abort_move(&mut self, id: i64, why: &str) -> Result<(), ReconcileError> {
        self.forget_move_conns();
        let mut client = self.catalog_client().await?;
        let m = moves::get(&client, id).await?;
        if !m.state.before_flip() {
            return Ok(());
        }
        let catalog = pgshard_catalog::store::load(&client).await?;
        let source = self.primary_spec(&catalog, m.source)?;
        let target = self.primary_spec(&catalog, m.target)?;
        self.end_prepared(&target, id, false).await?;
        // The subscriptions first: they would copy rows again.
        self.drop_sync(&source, &target, id).await?;
        self.delete_buckets(&target, &m, &catalog).await?;
        self.end_prepared(&source, id, false).await?;
        // The fence goes before the buckets are released to the source again, the
        // triggers after (their lock could wait behind a transaction routers hold).
        let tables = distributed(&catalog);
        self.lift_fence(&source, id, &tables, false).await?;
        moves::abort(&mut client, id, why, TRIES).await?;
        let last = self.last_move_of(&client, &m).await?;
        self.lift_fence(&source, id, &tables, last).await?;
        tracing::warn!(id, why, "move rolled back");
        Ok(())
    }

    /// Delete the rows of `m`'s buckets on `node`, every distributed table, returning
    /// how many: on the target in a rollback (before the flip it owns none of them, so
    /// every such row is the move's copy), on the source after the flip (the target
    /// owns them). As `replica`: the fence trigger must not refuse it.
    async fn delete_buckets(
        &self,
        node: &NodeSpec,
        m: &Move,
        catalog: &Catalog,
    ) -> Result<i64, ReconcileError> {
        let tables = distributed(catalog);
        let list = bucket_list(&m.buckets);
        let mut deleted = 0i64;
        for db in self.databases(node).await? {
            let c = self.connect_db(node, &db).await?;
            let err = |e| db_err(&node.name, e);
            let present = self.present(&c, &tables).await.map_err(err)?;
            if present.is_empty() {
                continue;
            }
            c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
                .await
                .map_err(err)?;
            for i in &present {
                let t = &tables[*i];
                let expr = bucket_sql_expr(&quote_ident(&t.key), t.key_type, catalog.buckets);
                let sql = format!("DELETE FROM {} WHERE {expr} = ANY({list})", t.quoted);
                match c.execute(&sql, &[]).await {
                    Ok(n) => deleted += n as i64,
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(err(e));
                    }
                }
            }
            c.batch_execute("COMMIT").await.map_err(err)?;
        }
        Ok(deleted)
    }

    /// Delete `m`'s buckets' rows from `node` a range of [`CLEAN_BLOCKS`] blocks per
    /// statement (a TID range scan: one pass over each table, short transactions),
    /// going on from `at` until `budget` is spent. True once every table of every
    /// database was passed through. Nothing writes those rows any more (the fence), so
    /// starting over after a crash finds only what is left.
    async fn delete_batches(
        &self,
        node: &NodeSpec,
        m: &Move,
        catalog: &Catalog,
        at: &mut Cleaning,
        budget: Duration,
    ) -> Result<bool, ReconcileError> {
        let started = Instant::now();
        let tables = distributed(catalog);
        let list = bucket_list(&m.buckets);
        let dbs = self.databases(node).await?;
        let err = |e| db_err(&node.name, e);
        while let Some(db) = dbs.get(at.db) {
            let c = self.connect_db(node, db).await?;
            let present = self.present(&c, &tables).await.map_err(err)?;
            while let Some(&i) = present.get(at.table) {
                let t = &tables[i];
                let blocks: i64 = c
                    .query_one(
                        "SELECT pg_relation_size(to_regclass($1))
                                / current_setting('block_size')::bigint",
                        &[&t.quoted],
                    )
                    .await
                    .map_err(err)?
                    .get(0);
                let expr = bucket_sql_expr(&quote_ident(&t.key), t.key_type, catalog.buckets);
                while at.block < blocks {
                    if started.elapsed() >= budget {
                        return Ok(false);
                    }
                    let (lo, hi) = (at.block, at.block + CLEAN_BLOCKS);
                    let sql = format!(
                        "DELETE FROM {} WHERE ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid
                            AND {expr} = ANY({list})",
                        t.quoted
                    );
                    // Replica role: the fence's and foreign keys' triggers stay out of it.
                    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
                        .await
                        .map_err(err)?;
                    match c.execute(&sql, &[]).await {
                        Ok(n) => at.deleted += n as i64,
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            return Err(err(e));
                        }
                    }
                    c.batch_execute("COMMIT").await.map_err(err)?;
                    at.block = hi;
                }
                at.table += 1;
                at.block = 0;
            }
            at.db += 1;
            at.table = 0;
        }
        Ok(true)
    }

    /// Record the moves an operation needs, grouped by [`GROUP`] buckets; the control
    /// loop carries them out ([`Reconciler::run_moves`]).
    pub(crate) async fn scale(&mut self, op: ScaleOp) -> Result<Vec<i64>, ReconcileError> {
        let mut client = self.catalog_client().await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let active: Vec<ShardId> = catalog
            .shards
            .iter()
            .filter(|s| s.state == "active")
            .map(|s| s.id)
            .collect();
        let refused =
            |e: pgshard_catalog::placement::PlacementError| ReconcileError::Refused(e.to_string());
        let (operation, plan) = match op {
            ScaleOp::AddReplica { shard } => {
                if catalog.shard(shard).is_none() {
                    return Err(ReconcileError::Refused(format!(
                        "there is no shard {shard}"
                    )));
                }
                self.add_replica(shard).await?;
                return Ok(Vec::new());
            }
            ScaleOp::RemoveReplica { node } => {
                self.remove_replica(&node).await?;
                return Ok(Vec::new());
            }
            ScaleOp::Rebalance { shards } => {
                let shards = shards.unwrap_or(active);
                for s in &catalog.shards {
                    let state = if shards.contains(&s.id) {
                        "active"
                    } else {
                        "draining"
                    };
                    moves::set_shard_state(&mut client, s.id, state).await?;
                }
                let plan = placement::rebalance(&catalog.bucket_map, &shards).map_err(refused)?;
                ("rebalance".to_string(), plan)
            }
            ScaleOp::RemoveShard { shard } => {
                if catalog.shard(shard).is_none() {
                    return Err(ReconcileError::Refused(format!(
                        "there is no shard {shard}"
                    )));
                }
                if shard == catalog.local_shard {
                    return Err(ReconcileError::Refused(format!(
                        "shard {shard} holds the undeclared (local) tables; it cannot be removed"
                    )));
                }
                // Decommissioned once drained (`decommission_drained`).
                moves::set_shard_state(&mut client, shard, "removing").await?;
                let plan = placement::remove_shard(&catalog.bucket_map, &active, shard)
                    .map_err(refused)?;
                (format!("remove-shard {shard}"), plan)
            }
            ScaleOp::AddShard { replicas } => {
                let replicas = replicas.unwrap_or(self.opts.plan.replicas_wanted);
                let new = self.add_shard(replicas).await?;
                let catalog = pgshard_catalog::store::load(&client).await?;
                let shards: Vec<ShardId> = catalog
                    .shards
                    .iter()
                    .filter(|s| s.state == "active")
                    .map(|s| s.id)
                    .collect();
                let plan = placement::moves_for_add(&catalog.bucket_map, &shards, new);
                (format!("add-shard {new}"), plan)
            }
            ScaleOp::Move { buckets, to } => {
                let plan = buckets
                    .iter()
                    .filter_map(|b| {
                        let from = catalog.shard_of_bucket(*b)?;
                        (from != to).then_some(BucketMove {
                            bucket: *b,
                            from,
                            to,
                        })
                    })
                    .collect();
                (format!("move to shard {to}"), plan)
            }
        };
        self.plan_moves(&operation, &plan, GROUP).await
    }

    /// Record moves of `plan` grouped by `group_size`, for `operation`.
    async fn plan_moves(
        &mut self,
        operation: &str,
        plan: &[BucketMove],
        group_size: usize,
    ) -> Result<Vec<i64>, ReconcileError> {
        let mut client = self.catalog_client().await?;
        let mut ids = Vec::new();
        for (from, to, buckets) in group(plan, group_size) {
            ids.push(
                moves::create(&mut client, operation, from, to, &buckets)
                    .await?
                    .id,
            );
        }
        Ok(ids)
    }
}

/// How long [`locking_ddl`] waits for a table lock at each try, and for how long it tries.
const LOCK_TRY: Duration = Duration::from_millis(50);
const LOCK_TRIES_FOR: Duration = Duration::from_secs(10);
/// A transaction prepared this long ago is in doubt: two-phase commits end theirs within
/// milliseconds.
const IN_DOUBT_AFTER: Duration = Duration::from_secs(1);

/// Run `sql` (DDL that locks tables against writes: creating or dropping a trigger) in
/// one transaction, waiting at most [`LOCK_TRY`] for its locks each time and trying
/// again until it gets them. A DDL statement waiting for a table lock makes every
/// writer that comes later wait behind it; with writes that span shards, that wait can
/// close a cycle no single PostgreSQL sees (a multi-shard UPDATE queued behind the
/// DDL here holds rows on another shard that a transaction holding this table's lock
/// needs there). Short tries never hold anyone for long, and a moment without writers
/// on the table is enough.
///
/// Except when a transaction left prepared holds the lock: it is in doubt (its commit
/// point's shard failed, or its router did) and keeps its locks until 2PC recovery ends
/// it, which may need this very control loop to fail that shard over first. The tries
/// stop as soon as the database has a transaction prepared for over
/// [`IN_DOUBT_AFTER`]; the move fails this round and is tried again at the next one.
async fn locking_ddl(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let deadline = Instant::now() + LOCK_TRIES_FOR;
    let in_doubt = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database() \
           AND prepared < now() - interval '{} ms')",
        IN_DOUBT_AFTER.as_millis()
    );
    loop {
        let tried = c
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'; {sql} COMMIT;",
                LOCK_TRY.as_millis()
            ))
            .await;
        match tried {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && Instant::now() < deadline =>
            {
                c.batch_execute("ROLLBACK").await?;
                if c.query_one(&in_doubt, &[]).await?.get::<_, bool>(0) {
                    return Err(e);
                }
                tokio::time::sleep(LOCK_TRY).await;
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
}

/// Stream one table's rows matching `filter` from `src` into `dst` (binary COPY).
pub(super) async fn copy_table(
    src: &Client,
    dst: &Client,
    quoted: &str,
    filter: &str,
    src_name: &str,
    dst_name: &str,
) -> Result<i64, ReconcileError> {
    let out = src
        .copy_out(&format!(
            "COPY (SELECT * FROM {quoted} WHERE {filter}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .map_err(|e| db_err(src_name, e))?;
    let sink = dst
        .copy_in(&format!("COPY {quoted} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| db_err(dst_name, e))?;
    futures::pin_mut!(out);
    futures::pin_mut!(sink);
    while let Some(chunk) = out.try_next().await.map_err(|e| db_err(src_name, e))? {
        sink.send(chunk).await.map_err(|e| db_err(dst_name, e))?;
    }
    let n = sink.finish().await.map_err(|e| db_err(dst_name, e))?;
    Ok(n as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(bucket: u32, from: u32, to: u32) -> BucketMove {
        BucketMove {
            bucket: BucketId(bucket),
            from: ShardId(from),
            to: ShardId(to),
        }
    }

    #[test]
    fn plans_are_grouped_by_source_and_target() {
        let plan = [
            mv(1, 1, 3),
            mv(2, 1, 3),
            mv(3, 1, 3),
            mv(4, 2, 3),
            mv(5, 1, 3),
        ];
        let g = group(&plan, 2);
        let shape: Vec<(u32, u32, usize)> = g.iter().map(|(f, t, b)| (f.0, t.0, b.len())).collect();
        assert_eq!(shape, [(1, 3, 2), (1, 3, 2), (2, 3, 1)]);
        assert_eq!(g[1].2, vec![BucketId(3), BucketId(5)]);
    }

    #[test]
    fn interrupted_moves_roll_back_before_the_flip_and_finish_after() {
        assert_eq!(next(MoveState::Planned), Some(Next::Run));
        assert_eq!(next(MoveState::Syncing), Some(Next::Abort));
        assert_eq!(next(MoveState::Frozen), Some(Next::Abort));
        assert_eq!(next(MoveState::Copying), Some(Next::Abort));
        assert_eq!(next(MoveState::Flipped), Some(Next::Finish));
        assert_eq!(next(MoveState::Cleaning), Some(Next::Finish));
        assert_eq!(next(MoveState::Done), None);
        assert_eq!(next(MoveState::Aborted), None);
    }
}

//! The reconciler (SPEC §8; STYLE principle 6): the catalog holds the *intent* (per
//! shard: its primary, its replicas, its term, a change of primary in progress); the
//! probes give the *observed* state; [`plan`] — a pure function — compares them and
//! yields [`Action`]s; the [`Reconciler`] carries each out, every step safe to repeat
//! after a crash of shardd at any point.
//!
//! ## Failover
//!
//! A primary has *failed* when it missed `shardd.failure_threshold` probes in a row
//! *and* every replica in service that answers confirms it lost its WAL stream (no
//! WAL receiver streaming): a network problem between shardd and the primary alone
//! does not fail a shard over. Then, each step recorded before the next
//! ([`pgshard_catalog::topology`]):
//!
//! 1. **begin**: the shard turns `failing_over`; routers hold its statements;
//! 2. **fence**: the old primary is killed (process or container), so it can never
//!    acknowledge another commit; if the runtime cannot kill it, every replica is
//!    detached from it (`primary_conninfo` cleared and reloaded), so that in `sync`
//!    mode it cannot get another commit confirmed either;
//! 3. **choose**: with `ANY 1 (…)` an acknowledged commit may be on one replica only,
//!    so *every* replica in service must answer, and the one that received the most
//!    WAL is chosen (and recorded, so a restart never promotes a second one). If one
//!    does not answer, the failover is refused and reported (`refused`), never guessed;
//! 4. **promote** once it has replayed all it received;
//! 5. the new primary's `synchronous_standby_names` and the other replicas'
//!    upstreams are rewritten and reloaded (they follow the new timeline);
//! 6. **complete**: in one catalog transaction the new primary, the fenced old one,
//!    the term + 1; NOTIFY. 2PC recovery runs at once against the new primary.
//!
//! The fenced node is then rebuilt as a replica of the new primary (fresh base backup)
//! in the background, and joins the synchronous set once it streams.
//!
//! A planned switchover is the same change with a clean stop in place of the kill,
//! after the open transactions on the old primary have finished.

mod moves;
mod provision;
mod sync;
pub use moves::ScaleOp;

use crate::cluster::{Cluster, Layout};
use crate::probe::NodeStatus;
use crate::runtime::{ready, NodeSpec, Readiness};
use pgshard_catalog::store::{self, StoreError};
use pgshard_catalog::topology::{self, ChangeKind};
use pgshard_catalog::{Catalog, NodeId, NodeRole, NodeState, ShardId, ShardStatus};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The file (in the data dir) recording a catalog failover's chosen replica before it
/// is promoted: `{"from": …, "to": …}` (the catalog itself cannot record it).
pub const CATALOG_FAILOVER_FILE: &str = "catalog-failover.json";

/// A catalog failover recorded and not finished: `(from, to)`.
pub fn recorded_catalog_failover(data_dir: &std::path::Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(data_dir.join(CATALOG_FAILOVER_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        v["from"].as_str()?.to_string(),
        v["to"].as_str()?.to_string(),
    ))
}

/// What to do about the catalog group (its primary holds the catalog database, so its
/// failover is decided from the layout and the probes alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogAction {
    Failover { from: String },
    Refuse { reason: String },
    Rebuild { node: NodeId, name: String },
}

/// The catalog group's counterpart of [`plan`]: the same rules (confirmed by every
/// replica, refused if one is silent).
pub fn plan_catalog(
    layout: &Layout,
    observed: &[NodeStatus],
    opts: &PlanOptions,
    busy: &HashSet<NodeId>,
) -> Option<CatalogAction> {
    let obs = |id: NodeId| observed.iter().find(|o| o.id == id);
    let primary = layout.catalog()?;
    let replicas: Vec<_> = layout
        .nodes
        .iter()
        .filter(|n| n.shard.is_none() && n.role == NodeRole::Replica)
        .collect();
    let in_service: Vec<_> = replicas.iter().filter(|n| !n.out_of_service).collect();
    let failed = obs(primary.id).is_some_and(|o| o.failures >= opts.threshold.max(1));
    if failed {
        if !opts.auto_failover || in_service.is_empty() {
            return None;
        }
        let answered: Vec<&NodeStatus> = in_service
            .iter()
            .filter_map(|n| obs(n.id))
            .filter(|o| o.answered())
            .collect();
        if answered.is_empty()
            || answered
                .iter()
                .any(|o| o.wal_receiver.as_deref() == Some("streaming"))
        {
            return None;
        }
        if let Some(missing) = in_service
            .iter()
            .find(|n| !answered.iter().any(|o| o.id == n.id))
        {
            return Some(CatalogAction::Refuse {
                reason: format!(
                    "catalog node {} failed and replica {} does not answer",
                    primary.name, missing.name
                ),
            });
        }
        return Some(CatalogAction::Failover {
            from: primary.name.clone(),
        });
    }
    replicas
        .iter()
        .find(|n| n.out_of_service && !busy.contains(&n.id))
        .map(|n| CatalogAction::Rebuild {
            node: n.id,
            name: n.name.clone(),
        })
}

/// The file (in the data dir) where a fault point that was reached writes its name.
pub const FAULT_MARKER: &str = "fault-reached";

/// What the reconciler decides to do, one shard at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Carry on with the change of primary recorded in the catalog.
    Resume { shard: ShardId },
    /// Start replacing the failed primary `from`, seen at `term`.
    Failover {
        shard: ShardId,
        from: NodeId,
        term: i64,
    },
    /// The primary failed but no replica can be promoted safely: report why.
    Refuse { shard: ShardId, reason: String },
    /// Rebuild a fenced node as a replica of its shard's primary.
    Rebuild { shard: ShardId, node: NodeId },
    /// Start a replica in service that probes see down, if its process is gone (a
    /// crashed replica comes back on its own data; in `sync` mode with one replica
    /// the primary's commits wait for it).
    Restart { shard: ShardId, node: NodeId },
    /// The shard serves; its status (`ok`, `degraded`) should say how well.
    SetStatus {
        shard: ShardId,
        status: ShardStatus,
        reason: Option<String>,
    },
}

/// What [`plan`] needs besides the catalog and the probes.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Failed probes in a row before a primary counts as failed.
    pub threshold: u32,
    /// `shardd.auto_failover`.
    pub auto_failover: bool,
    /// Replicas per shard the cluster was created with.
    pub replicas_wanted: u32,
}

fn out_of_service(state: NodeState) -> bool {
    matches!(state, NodeState::Fenced | NodeState::Rebuilding)
}

/// Compare the topology with what the probes see; `busy` are nodes being rebuilt now.
pub fn plan(
    catalog: &Catalog,
    observed: &[NodeStatus],
    opts: &PlanOptions,
    busy: &HashSet<NodeId>,
) -> Vec<Action> {
    let obs = |id: NodeId| observed.iter().find(|o| o.id == id);
    let mut actions = Vec::new();
    for shard in &catalog.shards {
        if shard.status == ShardStatus::FailingOver {
            actions.push(Action::Resume { shard: shard.id });
            continue;
        }
        let Some(primary) = catalog.primary(shard.id) else {
            continue;
        };
        let in_service: Vec<_> = catalog
            .replicas(shard.id)
            .filter(|n| !out_of_service(n.state))
            .collect();
        // A crashed replica in service is started again (always safe; a failover may
        // need it to answer).
        for n in &in_service {
            if opts.auto_failover
                && !shard.failover_paused
                && !busy.contains(&n.id)
                && obs(n.id).is_some_and(|o| o.failures >= opts.threshold.max(1))
            {
                actions.push(Action::Restart {
                    shard: shard.id,
                    node: n.id,
                });
            }
        }
        let failed = obs(primary.id).is_some_and(|o| o.failures >= opts.threshold.max(1));
        if failed {
            let answered: Vec<&NodeStatus> = in_service
                .iter()
                .filter_map(|n| obs(n.id))
                .filter(|o| o.answered())
                .collect();
            let still_streaming = answered
                .iter()
                .any(|o| o.wal_receiver.as_deref() == Some("streaming"));
            if still_streaming || answered.is_empty() {
                // Not confirmed by any replica: maybe only shardd lost the primary.
                continue;
            }
            if shard.failover_paused || !opts.auto_failover {
                continue;
            }
            if let Some(missing) = in_service
                .iter()
                .find(|n| !answered.iter().any(|o| o.id == n.id))
            {
                let reason = format!(
                    "primary {} failed and replica {} does not answer: it may hold \
                     acknowledged commits the other replicas lack, so none is promoted; \
                     bring {} back or promote by hand",
                    primary.name, missing.name, missing.name
                );
                if shard.status != ShardStatus::Refused
                    || shard.status_reason.as_deref() != Some(reason.as_str())
                {
                    actions.push(Action::Refuse {
                        shard: shard.id,
                        reason,
                    });
                }
                continue;
            }
            actions.push(Action::Failover {
                shard: shard.id,
                from: primary.id,
                term: shard.term,
            });
            continue;
        }
        for n in catalog.replicas(shard.id) {
            if out_of_service(n.state) && !busy.contains(&n.id) {
                actions.push(Action::Rebuild {
                    shard: shard.id,
                    node: n.id,
                });
            }
        }
        let have = in_service.len() as u32;
        let (status, reason) = if have < opts.replicas_wanted {
            (
                ShardStatus::Degraded,
                Some(format!(
                    "{have} of {} replicas in service",
                    opts.replicas_wanted
                )),
            )
        } else {
            (ShardStatus::Ok, None)
        };
        if shard.status != status || shard.status_reason != reason {
            actions.push(Action::SetStatus {
                shard: shard.id,
                status,
                reason,
            });
        }
    }
    actions
}

/// Why a step of the reconciler failed (it is retried next round).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("{0}")]
    Refused(String),
}

fn node_err(node: &str, message: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Node {
        node: node.to_string(),
        message: message.to_string(),
    }
}

/// How the reconciler acts.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    pub plan: PlanOptions,
    /// Bound on a promoted replica replaying what it received.
    pub replay_timeout: Duration,
    /// Bound on connecting to a node and on one statement.
    pub timeout: Duration,
    /// Tests: stop (hang) at this step of a change of primary, as if shardd crashed
    /// there: `begin`, `fence`, `choose`, `promote`, `repoint`, `complete`; or
    /// `kill-fails`: the old primary cannot be stopped (fencing by cutting its
    /// replicas off) and is not rebuilt.
    pub fault: Option<String>,
}

/// Where a node's WAL is.
#[derive(Debug, Clone, Copy)]
struct WalPosition {
    in_recovery: bool,
    received: i64,
    replayed: i64,
}

/// Carries out the actions of [`plan`] on a cluster.
pub struct Reconciler {
    cluster: Arc<Cluster>,
    opts: ReconcileOptions,
    /// Woken after a change of primary: 2PC recovery runs a round at once.
    recovery_now: Arc<tokio::sync::Notify>,
    rebuilds: tokio::task::JoinSet<(NodeId, Result<(), ReconcileError>)>,
    busy: HashSet<NodeId>,
    /// Connections of the move being carried out, by node, port and database
    /// (`reconcile::moves`).
    move_conns: std::sync::Mutex<HashMap<(String, u16, String), Arc<tokio_postgres::Client>>>,
    /// Moves this process started syncing ahead of their freeze (`reconcile::sync`),
    /// with when the sync started and the tables it copies; checked once per round.
    syncing: HashMap<i64, (std::time::Instant, sync::Synced)>,
    /// Where each move in `cleaning` goes on deleting the source's rows (`reconcile::
    /// moves`, a batch of blocks per round); lost with the process, then started over.
    cleaning: HashMap<i64, moves::Cleaning>,
}

impl Reconciler {
    pub fn new(
        cluster: Arc<Cluster>,
        opts: ReconcileOptions,
        recovery_now: Arc<tokio::sync::Notify>,
    ) -> Reconciler {
        Reconciler {
            cluster,
            opts,
            recovery_now,
            rebuilds: tokio::task::JoinSet::new(),
            busy: HashSet::new(),
            move_conns: Default::default(),
            syncing: HashMap::new(),
            cleaning: HashMap::new(),
        }
    }

    /// Nodes being rebuilt now.
    pub fn busy(&self) -> &HashSet<NodeId> {
        &self.busy
    }

    pub fn plan_options(&self) -> &PlanOptions {
        &self.opts.plan
    }

    pub async fn catalog_client(&self) -> Result<Client, ReconcileError> {
        Ok(self.cluster.connect_catalog().await?)
    }

    /// Collect finished rebuilds.
    pub fn reap(&mut self) {
        while let Some(done) = self.rebuilds.try_join_next() {
            match done {
                Ok((node, Ok(()))) => {
                    self.busy.remove(&node);
                }
                Ok((node, Err(error))) => {
                    tracing::warn!(%node, %error, "replica rebuild failed; retrying later");
                    self.busy.remove(&node);
                }
                Err(error) => tracing::error!(%error, "rebuild task failed"),
            }
        }
    }

    /// Stop every rebuild in progress (shutdown).
    pub async fn shutdown(&mut self) {
        self.rebuilds.shutdown().await;
        self.busy.clear();
    }

    /// Carry out one action. Errors are logged by the caller and the action comes
    /// back next round if still needed.
    pub async fn act(&mut self, action: Action) -> Result<(), ReconcileError> {
        match action {
            Action::Resume { shard } => self.resume(shard).await,
            Action::Failover { shard, from, term } => {
                tracing::warn!(%shard, %from, term, "primary failed; failing over");
                let mut client = self.catalog_client().await?;
                topology::begin(&mut client, shard, from, term, ChangeKind::Failover).await?;
                self.fault("begin").await;
                self.resume(shard).await
            }
            Action::Refuse { shard, reason } => {
                tracing::error!(%shard, %reason, "failover refused");
                let mut client = self.catalog_client().await?;
                topology::set_status(&mut client, shard, ShardStatus::Refused, Some(&reason))
                    .await?;
                Ok(())
            }
            Action::Rebuild { shard, node } => {
                if !self.unkillable() {
                    self.start_rebuild(shard, node);
                }
                Ok(())
            }
            Action::Restart { shard, node } => {
                let client = self.catalog_client().await?;
                let catalog = store::load(&client).await?;
                let name = name_of(&catalog, node)?;
                let spec = spec_of(&self.cluster, &self.cluster.layout(), &name)?;
                if !self.cluster.runtime().is_running(&spec).await? {
                    tracing::warn!(%shard, node = %name, "replica is not running; starting it");
                    self.cluster.runtime().start(&spec).await?;
                }
                Ok(())
            }
            Action::SetStatus {
                shard,
                status,
                reason,
            } => {
                let mut client = self.catalog_client().await?;
                if topology::set_status(&mut client, shard, status, reason.as_deref())
                    .await?
                    .is_some()
                {
                    tracing::info!(%shard, %status, reason = reason.as_deref().unwrap_or(""), "shard status");
                }
                Ok(())
            }
        }
    }

    /// Tests: the runtime cannot stop the old primary (a machine cut off from shardd),
    /// so fencing must cut its replicas off instead, and it is not rebuilt.
    fn unkillable(&self) -> bool {
        self.opts.fault.as_deref() == Some("kill-fails")
    }

    async fn fault(&self, step: &str) {
        if self.opts.fault.as_deref() == Some(step) {
            tracing::error!(step, "fault injection: shardd stops here");
            let marker = self.cluster.data_dir().join(FAULT_MARKER);
            let _ = std::fs::write(marker, step);
            std::future::pending::<()>().await;
        }
    }

    /// Carry out a [`CatalogAction`].
    pub async fn act_catalog(&mut self, action: CatalogAction) -> Result<(), ReconcileError> {
        match action {
            CatalogAction::Refuse { reason } => {
                tracing::error!(%reason, "catalog failover refused");
                Ok(())
            }
            CatalogAction::Rebuild { node, name } => {
                if self.busy.insert(node) {
                    let cluster = self.cluster.clone();
                    let timeout = self.opts.timeout;
                    self.rebuilds.spawn(async move {
                        let r = rebuild_catalog_node(cluster, name, timeout).await;
                        (node, r)
                    });
                }
                Ok(())
            }
            CatalogAction::Failover { from } => self.catalog_failover(&from).await,
        }
    }

    /// Fail the catalog node over to its most advanced replica: fence, choose (recorded
    /// in [`CATALOG_FAILOVER_FILE`] before promoting), promote, re-point the others,
    /// record it in the layout, then in the new catalog.
    async fn catalog_failover(&mut self, from: &str) -> Result<(), ReconcileError> {
        tracing::warn!(node = %from, "catalog node failed; failing over");
        let layout = self.cluster.layout();
        let from_spec = spec_of(&self.cluster, &layout, from)?;
        if let Err(error) = self.cluster.runtime().kill(&from_spec).await {
            tracing::error!(node = %from, %error, "could not stop the old catalog node");
        }
        let mut best: Option<(i64, String)> = None;
        for n in layout
            .nodes
            .iter()
            .filter(|n| n.shard.is_none() && n.role == NodeRole::Replica && !n.out_of_service)
        {
            let spec = layout.spec(n, self.cluster.config());
            let pos = self.position(&spec).await.map_err(|e| {
                ReconcileError::Refused(format!(
                    "catalog replica {} does not answer ({e}); no catalog failover",
                    n.name
                ))
            })?;
            let received = pos.received.max(pos.replayed);
            if best.as_ref().is_none_or(|(b, _)| received > *b) {
                best = Some((received, n.name.clone()));
            }
        }
        let Some((_, to)) = best else {
            return Err(ReconcileError::Refused("the catalog has no replica".into()));
        };
        let record = serde_json::json!({ "from": from, "to": to }).to_string();
        std::fs::write(self.cluster.data_dir().join(CATALOG_FAILOVER_FILE), record)
            .map_err(|e| node_err(&to, format!("could not record the catalog failover: {e}")))?;
        let to_spec = spec_of(&self.cluster, &layout, &to)?;
        let pos = self.wait_replayed(&to_spec).await?;
        if pos.in_recovery {
            self.cluster.runtime().promote(&to_spec).await?;
        }
        let mut future = layout.clone();
        future.set_catalog_primary(&to, from);
        let config = self.cluster.config();
        for r in future
            .nodes
            .iter()
            .filter(|n| n.shard.is_none() && n.role == NodeRole::Replica && !n.out_of_service)
        {
            let spec = future.spec(r, config);
            ready::ensure_replication_slot(&spec).await?;
            self.cluster.runtime().configure(&spec).await?;
            self.reload(&spec).await?;
        }
        let new_spec = spec_of(&self.cluster, &future, &to)?;
        self.cluster.runtime().configure(&new_spec).await?;
        self.reload(&new_spec).await?;
        self.cluster
            .update_layout(|l| l.set_catalog_primary(&to, from))?;
        let mut client = self.catalog_client().await?;
        let v = topology::catalog_failed_over(&mut client, from, &to).await?;
        let _ = std::fs::remove_file(self.cluster.data_dir().join(CATALOG_FAILOVER_FILE));
        tracing::warn!(new = %to, old = %from, version = %v, "catalog failed over");
        self.recovery_now.notify_one();
        Ok(())
    }

    /// Planned switchover of `shard` to `to` (or the most advanced replica): writes are
    /// held from the start; the old primary stops cleanly once its open transactions
    /// have ended.
    pub async fn switchover(
        &mut self,
        shard: ShardId,
        to: Option<String>,
    ) -> Result<Duration, ReconcileError> {
        let started = Instant::now();
        let mut client = self.catalog_client().await?;
        let catalog = store::load(&client).await?;
        let s = catalog
            .shard(shard)
            .ok_or_else(|| ReconcileError::Refused(format!("there is no shard {shard}")))?;
        if s.status == ShardStatus::FailingOver {
            return Err(ReconcileError::Refused(format!(
                "shard {shard} is already changing its primary"
            )));
        }
        let primary = catalog
            .primary(shard)
            .ok_or_else(|| ReconcileError::Refused(format!("shard {shard} has no primary")))?;
        let replicas: Vec<_> = catalog
            .replicas(shard)
            .filter(|n| !out_of_service(n.state))
            .collect();
        if let Some(name) = &to {
            if !replicas.iter().any(|n| &n.name == name) {
                return Err(ReconcileError::Refused(format!(
                    "{name} is not an in-service replica of shard {shard}"
                )));
            }
        }
        if replicas.is_empty() {
            return Err(ReconcileError::Refused(format!(
                "shard {shard} has no replica in service to switch over to"
            )));
        }
        let to_id = to.and_then(|name| replicas.iter().find(|n| n.name == name).map(|n| n.id));
        topology::begin(
            &mut client,
            shard,
            primary.id,
            s.term,
            ChangeKind::Switchover,
        )
        .await?;
        if let Some(id) = to_id {
            topology::choose(&mut client, shard, id).await?;
        }
        drop(client);
        self.resume(shard).await?;
        Ok(started.elapsed())
    }

    /// Carry on with the change of primary recorded for `shard`, from wherever it is.
    async fn resume(&mut self, shard: ShardId) -> Result<(), ReconcileError> {
        let mut client = self.catalog_client().await?;
        let catalog = store::load(&client).await?;
        let Some(s) = catalog
            .shard(shard)
            .filter(|s| s.status == ShardStatus::FailingOver)
        else {
            return Ok(());
        };
        let from_id = s
            .failover_from
            .ok_or_else(|| ReconcileError::Refused(format!("shard {shard}: no old primary")))?;
        let from = name_of(&catalog, from_id)?;
        let switchover = is_switchover(&client, shard).await?;
        let layout = self.cluster.layout();
        let from_spec = spec_of(&self.cluster, &layout, &from)?;

        // Fence.
        let fenced = if switchover {
            self.routers_caught_up(&client, catalog.version).await;
            self.drain(&from_spec).await;
            self.cluster.runtime().stop(&from_spec).await
        } else if self.unkillable() {
            Err(crate::runtime::RuntimeError::Spec {
                node: from.clone(),
                message: "fault injection: the runtime cannot reach it".into(),
            })
        } else {
            self.cluster.runtime().kill(&from_spec).await
        };
        if let Err(error) = fenced {
            tracing::error!(node = %from, %error, "could not stop the old primary; detaching its replicas");
            self.detach_replicas(&catalog, shard).await?;
        } else {
            tracing::info!(node = %from, switchover, "old primary fenced");
        }
        self.fault("fence").await;

        // Choose.
        let chosen = match s.failover_to {
            Some(id) => id,
            None => {
                let best = match self.most_advanced(&catalog, shard).await {
                    Ok(best) => best,
                    Err(ReconcileError::Refused(reason)) => {
                        tracing::error!(%shard, %reason, "failover refused");
                        topology::abandon(&mut client, shard, ShardStatus::Refused, Some(&reason))
                            .await?;
                        return Err(ReconcileError::Refused(reason));
                    }
                    Err(e) => return Err(e),
                };
                topology::choose(&mut client, shard, best).await?
            }
        };
        let chosen_name = name_of(&catalog, chosen)?;
        tracing::info!(%shard, node = %chosen_name, "replica chosen for promotion");
        self.fault("choose").await;

        // Promote once it replayed everything it received.
        let chosen_spec = spec_of(&self.cluster, &layout, &chosen_name)?;
        let pos = self.wait_replayed(&chosen_spec).await?;
        if pos.in_recovery {
            self.cluster.runtime().promote(&chosen_spec).await?;
            tracing::info!(node = %chosen_name, "promoted");
        }
        self.fault("promote").await;

        // The new wiring, before routers are told: the new primary's synchronous set
        // and every other replica streaming from it.
        let mut future = layout.clone();
        future.set_primary(shard, &chosen_name, &from);
        self.rewire(&future, shard).await?;
        self.fault("repoint").await;

        let left = future
            .nodes
            .iter()
            .filter(|n| n.shard == Some(shard) && n.role == NodeRole::Replica)
            .filter(|n| !n.out_of_service)
            .count() as u32;
        let (after, reason) = if left < self.opts.plan.replicas_wanted {
            (
                ShardStatus::Degraded,
                Some(format!(
                    "{left} of {} replicas in service",
                    self.opts.plan.replicas_wanted
                )),
            )
        } else {
            (ShardStatus::Ok, None)
        };
        let v = topology::complete(&mut client, shard, after, reason.as_deref()).await?;
        let catalog = store::load(&client).await?;
        self.cluster.apply_topology(&catalog)?;
        let took = catalog.shard(shard).and_then(|s| s.last_failover_ms);
        tracing::warn!(%shard, primary = %chosen_name, old = %from, version = %v, took_ms = ?took, "new primary in the catalog");
        self.recovery_now.notify_one();
        self.fault("complete").await;
        Ok(())
    }

    /// Wait (bounded) until every router heard from lately routes with catalog
    /// `version` or newer, i.e. holds new statements for the shard: only then can the
    /// old primary's open transactions be counted on to be the last.
    async fn routers_caught_up(&self, client: &Client, version: pgshard_catalog::CatalogVersion) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match topology::routers_behind(client, version, 10.0).await {
                Ok(behind) if behind.is_empty() => return,
                Ok(behind) if Instant::now() > deadline => {
                    tracing::warn!(
                        ?behind,
                        "routers have not seen the switchover start; going on"
                    );
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not ask which routers saw the switchover");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// Wait (bounded) until the old primary has no client transaction open: routers
    /// hold new ones, so the open ones end in milliseconds.
    pub(crate) async fn drain(&self, spec: &NodeSpec) {
        let Ok(client) = self.connect(spec).await else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        // Idle twice in a row, 50 ms apart: a statement checked out just before its
        // router saw the switchover has reached the server by then.
        let mut idle = 0;
        while Instant::now() < deadline {
            let open: i64 = match client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                        AND xact_start IS NOT NULL AND application_name <> 'shardd'",
                    &[],
                )
                .await
            {
                Ok(row) => row.get(0),
                Err(_) => return,
            };
            if open == 0 {
                idle += 1;
                if idle == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            idle = 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(node = %spec.name, "transactions still open on the old primary; stopping it anyway");
    }

    async fn connect(&self, spec: &NodeSpec) -> Result<Client, ReconcileError> {
        ready::connect(
            &spec.pg_config("postgres", self.opts.timeout),
            self.opts.timeout,
        )
        .await
        .map_err(|e| node_err(&spec.name, format!("cannot connect: {e}")))
    }

    async fn position(&self, spec: &NodeSpec) -> Result<WalPosition, ReconcileError> {
        let client = self.connect(spec).await?;
        let row = tokio::time::timeout(
            self.opts.timeout,
            client.query_one(
                "SELECT pg_is_in_recovery(),
                        (coalesce(pg_last_wal_receive_lsn(), '0/0') - '0/0'::pg_lsn)::int8,
                        (coalesce(pg_last_wal_replay_lsn(), '0/0') - '0/0'::pg_lsn)::int8",
                &[],
            ),
        )
        .await
        .map_err(|_| node_err(&spec.name, "WAL position query timed out"))?
        .map_err(|e| node_err(&spec.name, e))?;
        Ok(WalPosition {
            in_recovery: row.get(0),
            received: row.get(1),
            replayed: row.get(2),
        })
    }

    /// The in-service replica of `shard` that received the most WAL; refused when one
    /// does not answer.
    async fn most_advanced(
        &self,
        catalog: &Catalog,
        shard: ShardId,
    ) -> Result<NodeId, ReconcileError> {
        let layout = self.cluster.layout();
        let mut best: Option<(i64, NodeId, String)> = None;
        for n in catalog.replicas(shard).filter(|n| !out_of_service(n.state)) {
            let spec = spec_of(&self.cluster, &layout, &n.name)?;
            let pos = self.position(&spec).await.map_err(|e| {
                ReconcileError::Refused(format!(
                    "replica {} does not answer ({e}): it may hold acknowledged commits \
                     the other replicas lack, so none is promoted; bring it back or \
                     promote by hand",
                    n.name
                ))
            })?;
            // An already promoted replica (not in recovery) can only be one we chose.
            let received = pos.received.max(pos.replayed);
            tracing::info!(node = %n.name, received, replayed = pos.replayed, "candidate");
            if best.as_ref().is_none_or(|(b, _, _)| received > *b) {
                best = Some((received, n.id, n.name.clone()));
            }
        }
        best.map(|(_, id, _)| id).ok_or_else(|| {
            ReconcileError::Refused(format!("shard {shard} has no replica in service"))
        })
    }

    /// Wait until `spec` replayed all the WAL it received (bounded).
    async fn wait_replayed(&self, spec: &NodeSpec) -> Result<WalPosition, ReconcileError> {
        let deadline = Instant::now() + self.opts.replay_timeout;
        loop {
            let pos = self.position(spec).await?;
            if !pos.in_recovery || pos.replayed >= pos.received {
                return Ok(pos);
            }
            if Instant::now() > deadline {
                return Err(node_err(
                    &spec.name,
                    format!(
                        "did not replay the WAL it received within {:?}",
                        self.opts.replay_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Write the configuration of `layout`'s primary of `shard` and of its replicas in
    /// service (slots first), and reload each.
    async fn rewire(&self, layout: &Layout, shard: ShardId) -> Result<(), ReconcileError> {
        let config = self.cluster.config();
        let Some(primary) = layout.primary_of(shard) else {
            return Ok(());
        };
        let primary_spec = layout.spec(primary, config);
        for r in layout
            .nodes
            .iter()
            .filter(|n| n.shard == Some(shard) && n.role == NodeRole::Replica)
            .filter(|n| !n.out_of_service)
        {
            let spec = layout.spec(r, config);
            ready::ensure_replication_slot(&spec).await?;
            self.cluster.runtime().configure(&spec).await?;
            self.reload(&spec).await?;
            tracing::info!(node = %spec.name, primary = %primary_spec.name, "replica re-pointed");
        }
        self.cluster.runtime().configure(&primary_spec).await?;
        self.reload(&primary_spec).await?;
        tracing::info!(node = %primary_spec.name, synchronous_standby_names = %primary_spec.settings.get("synchronous_standby_names").map(String::as_str).unwrap_or(""), "primary configured");
        Ok(())
    }

    async fn reload(&self, spec: &NodeSpec) -> Result<(), ReconcileError> {
        let client = self.connect(spec).await?;
        client
            .execute("SELECT pg_reload_conf()", &[])
            .await
            .map_err(|e| node_err(&spec.name, e))?;
        Ok(())
    }

    /// Cut every replica of `shard` off its primary (fencing when the old primary
    /// cannot be stopped): no `primary_conninfo`, reloaded.
    async fn detach_replicas(
        &self,
        catalog: &Catalog,
        shard: ShardId,
    ) -> Result<(), ReconcileError> {
        let layout = self.cluster.layout();
        for n in catalog.replicas(shard).filter(|n| !out_of_service(n.state)) {
            let mut spec = spec_of(&self.cluster, &layout, &n.name)?;
            spec.upstream = None;
            self.cluster.runtime().configure(&spec).await?;
            self.reload(&spec).await?;
            tracing::warn!(node = %n.name, "replica detached from the old primary");
        }
        Ok(())
    }

    /// Rebuild `node` as a replica of its shard's primary, in the background.
    fn start_rebuild(&mut self, shard: ShardId, node: NodeId) {
        if !self.busy.insert(node) {
            return;
        }
        let cluster = self.cluster.clone();
        let timeout = self.opts.timeout;
        self.rebuilds.spawn(async move {
            let r = rebuild(cluster, shard, node, timeout).await;
            (node, r)
        });
    }
}

async fn is_switchover(client: &Client, shard: ShardId) -> Result<bool, ReconcileError> {
    let kind: Option<String> = client
        .query_one(
            "SELECT failover_kind FROM pgshard.shards WHERE id = $1",
            &[&(shard.0 as i32)],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    Ok(kind.as_deref() == Some(ChangeKind::Switchover.as_str()))
}

fn name_of(catalog: &Catalog, id: NodeId) -> Result<String, ReconcileError> {
    catalog
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.name.clone())
        .ok_or_else(|| ReconcileError::Refused(format!("node {id} is not in the catalog")))
}

fn spec_of(cluster: &Cluster, layout: &Layout, name: &str) -> Result<NodeSpec, ReconcileError> {
    layout
        .node(name)
        .map(|n| layout.spec(n, cluster.config()))
        .ok_or_else(|| node_err(name, "not in this cluster's layout"))
}

/// Rebuild a fenced node as a streaming replica of its shard's primary: a fresh base
/// backup (the old data directory is removed), start, wait until it streams, then put
/// it back in service and add it to the primary's synchronous set.
async fn rebuild(
    cluster: Arc<Cluster>,
    shard: ShardId,
    node: NodeId,
    timeout: Duration,
) -> Result<(), ReconcileError> {
    let started = Instant::now();
    let mut client = cluster.connect_catalog().await?;
    topology::set_node_state(&mut client, node, NodeState::Rebuilding).await?;
    let catalog = store::load(&client).await?;
    cluster.apply_topology(&catalog)?;
    let name = name_of(&catalog, node)?;
    let layout = cluster.layout();
    let mut spec = spec_of(&cluster, &layout, &name)?;
    // Build it as a replica even if the layout still says otherwise.
    spec.role = NodeRole::Replica;
    if spec.upstream.is_none() {
        return Err(node_err(&name, "its shard has no primary to rebuild from"));
    }
    tracing::info!(node = %name, %shard, upstream = ?spec.upstream.as_ref().map(|u| &u.name), "rebuilding replica");
    let rt = cluster.runtime();
    rt.kill(&spec).await?;
    rt.remove(&spec).await?;
    rt.create_replica(&spec).await?;
    rt.start(&spec).await?;
    rt.wait_ready(&spec, Readiness::Streaming { sync: false }, timeout * 60)
        .await?;
    topology::set_node_state(&mut client, node, NodeState::Healthy).await?;
    let catalog = store::load(&client).await?;
    cluster.apply_topology(&catalog)?;
    // Now in the primary's synchronous set.
    let layout = cluster.layout();
    if let Some(primary) = layout.primary_of(shard) {
        reconfigure(&cluster, &layout.spec(primary, cluster.config()), timeout).await?;
    }
    tracing::info!(node = %name, elapsed = ?started.elapsed(), "replica rebuilt and in service");
    Ok(())
}

/// Requests from the HTTP API, carried out by the control loop (the one writer of
/// topology changes).
#[derive(Debug)]
pub enum Command {
    /// `pgshard switchover --shard N [--to NODE]`: replies with the write pause.
    Switchover {
        shard: ShardId,
        to: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<Duration, String>>,
    },
    /// `pgshard rebalance`, `remove-shard N`, `move`: replies with the moves recorded
    /// (carried out by the control loop, round after round).
    Scale {
        op: ScaleOp,
        reply: tokio::sync::oneshot::Sender<Result<Vec<i64>, String>>,
    },
    /// `pgshard moves`: every move recorded, newest first.
    Moves {
        reply: tokio::sync::oneshot::Sender<Result<Vec<pgshard_catalog::moves::Move>, String>>,
    },
    /// `pgshard failover pause|resume --shard N`.
    PauseFailover {
        shard: ShardId,
        paused: bool,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// One shard as `GET /v1/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardView {
    #[serde(flatten)]
    pub shard: pgshard_catalog::Shard,
    /// The primary's node name.
    pub primary: Option<String>,
}

/// The control loop: every probe interval, read the topology from the catalog, probe
/// every node, publish what was seen, and carry out what [`plan`] says; in between,
/// serve the API's [`Command`]s. Runs until `shutdown`.
pub async fn run_control_loop(
    mut prober: crate::probe::Prober,
    mut reconciler: Reconciler,
    interval: Duration,
    shared: Arc<std::sync::RwLock<crate::probe::ClusterStatus>>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut catalog_client: Option<Client> = None;
    let mut last: Option<Catalog> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            cmd = commands.recv() => {
                if let Some(cmd) = cmd {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = serve(&mut reconciler, cmd) => {}
                    }
                }
                continue;
            }
        }
        reconciler.reap();
        let round = async {
            let catalog = read_catalog(&reconciler.cluster, &mut catalog_client).await;
            if let Some(c) = &catalog {
                if let Err(error) = reconciler.cluster.apply_topology(c) {
                    tracing::error!(%error, "could not save the layout");
                }
                last = Some(c.clone());
            }
            let version = prober.probe_once().await;
            publish(&shared, &prober, last.as_ref(), version);
            let layout = reconciler.cluster.layout();
            if let Some(action) = plan_catalog(
                &layout,
                prober.status(),
                reconciler.plan_options(),
                reconciler.busy(),
            ) {
                let failover = matches!(action, CatalogAction::Failover { .. });
                if let Err(error) = reconciler.act_catalog(action.clone()).await {
                    tracing::warn!(?action, %error, "catalog reconcile step failed; retrying next round");
                }
                if failover {
                    catalog_client = None;
                    return;
                }
            }
            let Some(catalog) = catalog else { return };
            let actions = plan(
                &catalog,
                prober.status(),
                reconciler.plan_options(),
                reconciler.busy(),
            );
            let acted = !actions.is_empty();
            for action in actions {
                tracing::debug!(?action, "reconcile");
                if let Err(error) = reconciler.act(action.clone()).await {
                    tracing::warn!(?action, %error, "reconcile step failed; retrying next round");
                }
            }
            // Bucket moves, a few per round (probes and failovers go on between).
            let moved = match reconciler
                .run_moves(interval.max(Duration::from_secs(1)))
                .await
            {
                Ok(n) => n > 0,
                Err(error) => {
                    tracing::warn!(%error, "bucket moves failed; retrying next round");
                    true
                }
            };
            if moved {
                if let Ok(c) = reconciler.catalog_client().await {
                    if let Ok(all) = pgshard_catalog::moves::list(&c, false).await {
                        let mut s = shared.write().unwrap_or_else(|p| p.into_inner());
                        s.moves = crate::probe::MovesStatus::of(&all);
                    }
                }
            }
            if acted || moved {
                // Show what the actions changed without waiting for the next round.
                if let Some(c) = read_catalog(&reconciler.cluster, &mut catalog_client).await {
                    publish(&shared, &prober, Some(&c), None);
                    last = Some(c);
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = round => {}
        }
    }
    reconciler.shutdown().await;
    tracing::debug!("control loop stopped");
}

async fn serve(reconciler: &mut Reconciler, cmd: Command) {
    match cmd {
        Command::Switchover { shard, to, reply } => {
            tracing::info!(%shard, to = ?to, "switchover requested");
            let r = reconciler.switchover(shard, to).await;
            if let Err(error) = &r {
                tracing::warn!(%shard, %error, "switchover failed");
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        Command::Scale { op, reply } => {
            tracing::info!(?op, "placement change requested");
            let r = reconciler.scale(op).await;
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        Command::Moves { reply } => {
            let r = async {
                let client = reconciler.catalog_client().await?;
                Ok::<_, ReconcileError>(pgshard_catalog::moves::list(&client, false).await?)
            }
            .await;
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        Command::PauseFailover {
            shard,
            paused,
            reply,
        } => {
            let r = async {
                let mut client = reconciler.catalog_client().await?;
                topology::set_failover_paused(&mut client, shard, paused).await?;
                Ok::<_, ReconcileError>(())
            }
            .await;
            tracing::info!(%shard, paused, ok = r.is_ok(), "automatic failover paused/resumed");
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
    }
}

async fn read_catalog(cluster: &Cluster, client: &mut Option<Client>) -> Option<Catalog> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        match cluster.connect_catalog().await {
            Ok(c) => *client = Some(c),
            Err(error) => {
                tracing::debug!(%error, "catalog unreachable");
                return None;
            }
        }
    }
    let c = client.as_ref()?;
    match tokio::time::timeout(Duration::from_secs(5), store::load(c)).await {
        Ok(Ok(catalog)) => Some(catalog),
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not read the catalog");
            *client = None;
            None
        }
        Err(_) => {
            tracing::warn!("reading the catalog timed out");
            *client = None;
            None
        }
    }
}

fn publish(
    shared: &std::sync::RwLock<crate::probe::ClusterStatus>,
    prober: &crate::probe::Prober,
    catalog: Option<&Catalog>,
    version: Option<pgshard_catalog::CatalogVersion>,
) {
    let mut s = shared.write().unwrap_or_else(|p| p.into_inner());
    s.nodes = prober.status().to_vec();
    if let Some(v) = version {
        s.version = Some(v.0);
    }
    if let Some(c) = catalog {
        s.version = Some(s.version.unwrap_or(0).max(c.version.0));
        s.shards = c
            .shards
            .iter()
            .map(|shard| ShardView {
                primary: c.primary(shard.id).map(|n| n.name.clone()),
                shard: shard.clone(),
            })
            .collect();
    }
}

/// Write `spec`'s configuration and have the running instance reload it (a primary's
/// synchronous set after a replica joins it).
pub(crate) async fn reconfigure(
    cluster: &Cluster,
    spec: &NodeSpec,
    timeout: Duration,
) -> Result<(), ReconcileError> {
    cluster.runtime().configure(spec).await?;
    let c = ready::connect(&spec.pg_config("postgres", timeout), timeout)
        .await
        .map_err(|e| node_err(&spec.name, e))?;
    c.execute("SELECT pg_reload_conf()", &[])
        .await
        .map_err(|e| node_err(&spec.name, e))?;
    Ok(())
}

/// Rebuild a fenced catalog node as a replica of the catalog primary (see [`rebuild`]).
async fn rebuild_catalog_node(
    cluster: Arc<Cluster>,
    name: String,
    timeout: Duration,
) -> Result<(), ReconcileError> {
    let started = Instant::now();
    let layout = cluster.layout();
    let mut spec = spec_of(&cluster, &layout, &name)?;
    spec.role = NodeRole::Replica;
    if spec.upstream.is_none() {
        return Err(node_err(
            &name,
            "the catalog has no primary to rebuild from",
        ));
    }
    tracing::info!(node = %name, "rebuilding catalog replica");
    let rt = cluster.runtime();
    rt.kill(&spec).await?;
    rt.remove(&spec).await?;
    rt.create_replica(&spec).await?;
    rt.start(&spec).await?;
    rt.wait_ready(&spec, Readiness::Streaming { sync: false }, timeout * 60)
        .await?;
    cluster.update_layout(|l| {
        if let Some(n) = l.nodes.iter_mut().find(|n| n.name == name) {
            n.out_of_service = false;
        }
    })?;
    let layout = cluster.layout();
    if let Some(primary) = layout.catalog() {
        reconfigure(&cluster, &layout.spec(primary, cluster.config()), timeout).await?;
    }
    let mut client = cluster.connect_catalog().await?;
    topology::set_node_state_by_name(&mut client, &name, NodeState::Healthy).await?;
    tracing::info!(node = %name, elapsed = ?started.elapsed(), "catalog replica rebuilt");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgshard_catalog::{CatalogVersion, Node, Shard};

    fn node(id: u32, role: NodeRole, state: NodeState) -> Node {
        Node {
            id: NodeId(id),
            shard: Some(ShardId(1)),
            role,
            name: format!("shard1-node{id}"),
            host: "127.0.0.1".into(),
            port: 5000 + id as u16,
            state,
            lag_bytes: None,
        }
    }

    fn catalog(nodes: Vec<Node>) -> Catalog {
        Catalog {
            version: CatalogVersion(1),
            buckets: 4,
            bucket_map: vec![ShardId(1); 4],
            shards: vec![Shard::active(ShardId(1))],
            nodes,
            tables: Vec::new(),
            local_shard: ShardId(1),
            frozen: Default::default(),
            moving: Vec::new(),
            views: Vec::new(),
        }
    }

    fn seen(id: u32, failures: u32, receiver: Option<&str>) -> NodeStatus {
        NodeStatus {
            id: NodeId(id),
            name: format!("shard1-node{id}"),
            shard: Some(ShardId(1)),
            role: NodeRole::Replica,
            host: "127.0.0.1".into(),
            port: 5000,
            state: if failures >= 3 {
                NodeState::Down
            } else {
                NodeState::Healthy
            },
            lag_bytes: None,
            replication_state: None,
            sync_state: None,
            failures,
            last_error: None,
            in_recovery: (failures == 0).then_some(true),
            wal_receiver: receiver.map(str::to_string),
            receive_lsn: None,
            replay_lsn: None,
        }
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            threshold: 3,
            auto_failover: true,
            replicas_wanted: 2,
        }
    }

    fn three() -> Catalog {
        catalog(vec![
            node(1, NodeRole::Primary, NodeState::Healthy),
            node(2, NodeRole::Replica, NodeState::Healthy),
            node(3, NodeRole::Replica, NodeState::Healthy),
        ])
    }

    #[test]
    fn healthy_shard_needs_nothing() {
        let obs = [
            seen(1, 0, None),
            seen(2, 0, Some("streaming")),
            seen(3, 0, Some("streaming")),
        ];
        assert!(plan(&three(), &obs, &opts(), &HashSet::new()).is_empty());
    }

    #[test]
    fn failed_primary_confirmed_by_every_replica_fails_over() {
        let obs = [seen(1, 3, None), seen(2, 0, None), seen(3, 0, None)];
        assert_eq!(
            plan(&three(), &obs, &opts(), &HashSet::new()),
            [Action::Failover {
                shard: ShardId(1),
                from: NodeId(1),
                term: 1
            }]
        );
    }

    #[test]
    fn unconfirmed_primary_failure_is_left_alone() {
        // Below the threshold.
        let obs = [seen(1, 2, None), seen(2, 0, None), seen(3, 0, None)];
        assert!(plan(&three(), &obs, &opts(), &HashSet::new()).is_empty());
        // A replica still streams from it: shardd's own network problem.
        let obs = [
            seen(1, 5, None),
            seen(2, 0, Some("streaming")),
            seen(3, 0, None),
        ];
        assert!(plan(&three(), &obs, &opts(), &HashSet::new()).is_empty());
        // No replica answers: nothing confirms it, nothing could be promoted; the
        // replicas are started again (if their processes are gone).
        let obs = [seen(1, 5, None), seen(2, 5, None), seen(3, 5, None)];
        assert_eq!(
            plan(&three(), &obs, &opts(), &HashSet::new()),
            [
                Action::Restart {
                    shard: ShardId(1),
                    node: NodeId(2)
                },
                Action::Restart {
                    shard: ShardId(1),
                    node: NodeId(3)
                }
            ]
        );
    }

    #[test]
    fn a_silent_replica_refuses_the_failover() {
        let obs = [seen(1, 3, None), seen(2, 0, None), seen(3, 4, None)];
        let actions = plan(&three(), &obs, &opts(), &HashSet::new());
        assert!(
            matches!(&actions[..], [
                Action::Restart { node: NodeId(3), .. },
                Action::Refuse { reason, .. }
            ] if reason.contains("shard1-node3")),
            "{actions:?}"
        );
    }

    #[test]
    fn paused_shard_does_not_fail_over() {
        let mut c = three();
        c.shards[0].failover_paused = true;
        let obs = [seen(1, 3, None), seen(2, 0, None), seen(3, 0, None)];
        assert!(plan(&c, &obs, &opts(), &HashSet::new()).is_empty());
        let mut o = opts();
        o.auto_failover = false;
        assert!(plan(&three(), &obs, &o, &HashSet::new()).is_empty());
    }

    #[test]
    fn change_in_progress_is_resumed() {
        let mut c = three();
        c.shards[0].status = ShardStatus::FailingOver;
        c.shards[0].failover_from = Some(NodeId(1));
        assert_eq!(
            plan(&c, &[], &opts(), &HashSet::new()),
            [Action::Resume { shard: ShardId(1) }]
        );
    }

    #[test]
    fn fenced_node_is_rebuilt_and_the_shard_reported_degraded() {
        let c = catalog(vec![
            node(1, NodeRole::Replica, NodeState::Fenced),
            node(2, NodeRole::Primary, NodeState::Healthy),
            node(3, NodeRole::Replica, NodeState::Healthy),
        ]);
        let obs = [seen(2, 0, None), seen(3, 0, Some("streaming"))];
        let actions = plan(&c, &obs, &opts(), &HashSet::new());
        assert_eq!(
            actions,
            [
                Action::Rebuild {
                    shard: ShardId(1),
                    node: NodeId(1)
                },
                Action::SetStatus {
                    shard: ShardId(1),
                    status: ShardStatus::Degraded,
                    reason: Some("1 of 2 replicas in service".into())
                }
            ]
        );
        // Not twice while a rebuild runs.
        let busy = HashSet::from([NodeId(1)]);
        assert_eq!(plan(&c, &obs, &opts(), &busy).len(), 1);
    }
}

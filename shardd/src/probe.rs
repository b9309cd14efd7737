//! Health probes (SPEC §8): every `shardd.probe_interval_ms`, connect to each instance
//! (`shardd.probe_timeout_ms`, connections kept between rounds), ask it whether it is in
//! recovery, where its WAL is, and — for a replica — whether its WAL receiver streams;
//! ask each primary for its standbys in `pg_stat_replication`. The result is the
//! *observed* state: served by the HTTP API, fed to the reconciler
//! ([`crate::reconcile`]), and recorded in the catalog's `node_health` (never a version
//! bump: observed health is not topology).
//!
//! The targets are the cluster's layout *now*, re-read every round: after a failover
//! the promoted node is probed as the primary and the old one as out of service.
//!
//! A node turns `down` after `shardd.failure_threshold` failed probes in a row and
//! `healthy` again at its first good one. A replica counts as good when it answers, is
//! in recovery, and its primary lists it as streaming (or its primary cannot be
//! reached, since then the replica's own health is all we can know).

use crate::cluster::{Cluster, LayoutNode};
use crate::runtime::{ready, slot_name, NodeSpec};
use futures::future::join_all;
use pgshard_catalog::store;
use pgshard_catalog::{CatalogVersion, NodeId, NodeRole, NodeState, ShardId};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// What shardd last observed about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    pub shard: Option<ShardId>,
    /// Its role in the topology now.
    pub role: NodeRole,
    pub host: String,
    pub port: u16,
    /// `healthy`/`down` as probed; `fenced`/`rebuilding` for a node out of service
    /// (not probed).
    pub state: NodeState,
    /// Replicas: replay lag behind the primary in bytes, from the primary's
    /// `pg_stat_replication`.
    pub lag_bytes: Option<i64>,
    /// Replicas: `state` in the primary's `pg_stat_replication` (`streaming`,
    /// `catchup`, …).
    pub replication_state: Option<String>,
    /// Replicas: `sync_state` there (`sync`, `quorum`, `async`, `potential`).
    pub sync_state: Option<String>,
    /// Failed probes in a row.
    pub failures: u32,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// `pg_is_in_recovery()` at the last good probe.
    pub in_recovery: Option<bool>,
    /// Replicas: the status of its WAL receiver (`streaming`, …), `None` when it has
    /// none: it lost (or never had) its primary's stream.
    pub wal_receiver: Option<String>,
    /// Replicas: WAL received and replayed (bytes since 0/0); primaries: current WAL.
    pub receive_lsn: Option<i64>,
    pub replay_lsn: Option<i64>,
}

impl NodeStatus {
    /// The status of a node not probed yet.
    pub fn initial(node: &LayoutNode, state: NodeState) -> NodeStatus {
        NodeStatus {
            id: node.id,
            name: node.name.clone(),
            shard: node.shard,
            role: node.role,
            host: node.host.clone(),
            port: node.port,
            state,
            lag_bytes: None,
            replication_state: None,
            sync_state: None,
            failures: 0,
            last_error: None,
            in_recovery: None,
            wal_receiver: None,
            receive_lsn: None,
            replay_lsn: None,
        }
    }

    /// True when the last probe reached it.
    pub fn answered(&self) -> bool {
        self.failures == 0 && self.in_recovery.is_some()
    }
}

/// One standby as its primary reports it.
#[derive(Debug, Clone)]
struct Standby {
    state: String,
    sync_state: String,
    lag_bytes: Option<i64>,
}

/// What one probe of one instance saw.
#[derive(Debug, Default)]
struct Observation {
    error: Option<String>,
    in_recovery: bool,
    wal_receiver: Option<String>,
    receive_lsn: Option<i64>,
    replay_lsn: Option<i64>,
    /// For primaries: standbys by application name.
    standbys: HashMap<String, Standby>,
}

/// Probes every instance of a cluster and records what it sees.
pub struct Prober {
    cluster: Arc<Cluster>,
    /// Connections kept between rounds, by node name.
    clients: HashMap<String, Client>,
    catalog: Option<Client>,
    status: Vec<NodeStatus>,
    threshold: u32,
    timeout: Duration,
}

impl Prober {
    pub fn new(cluster: Arc<Cluster>) -> Prober {
        let layout = cluster.layout();
        let config = cluster.config();
        let threshold = config.shardd.failure_threshold.max(1);
        let timeout = Duration::from_millis(config.shardd.probe_timeout_ms.max(50));
        Prober {
            // Bootstrap and restart only return once every node passed its readiness
            // check.
            status: layout
                .nodes
                .iter()
                .map(|n| NodeStatus::initial(n, NodeState::Healthy))
                .collect(),
            cluster,
            clients: HashMap::new(),
            catalog: None,
            threshold,
            timeout,
        }
    }

    /// The last observed status of every node.
    pub fn status(&self) -> &[NodeStatus] {
        &self.status
    }

    /// Probe every node once (in parallel), update the observed state, and record it in
    /// the catalog. Returns the catalog version after recording, if the catalog could
    /// be reached.
    pub async fn probe_once(&mut self) -> Option<CatalogVersion> {
        let layout = self.cluster.layout();
        let config = self.cluster.config();
        let specs: Vec<(NodeSpec, bool)> = layout
            .nodes
            .iter()
            .map(|n| (layout.spec(n, config), n.out_of_service))
            .collect();
        let timeout = self.timeout;
        let mut clients = std::mem::take(&mut self.clients);
        let jobs = specs.iter().map(|(spec, out)| {
            let client = clients.remove(&spec.name);
            let out = *out;
            async move {
                if out {
                    return (None, Observation::default());
                }
                probe_node(spec, client, timeout).await
            }
        });
        let results: Vec<(Option<Client>, Observation)> = join_all(jobs).await;
        let mut observations = Vec::with_capacity(results.len());
        for ((spec, _), (client, obs)) in specs.iter().zip(results) {
            if let Some(c) = client {
                self.clients.insert(spec.name.clone(), c);
            }
            observations.push(obs);
        }
        let by_name: HashMap<&str, &Observation> = specs
            .iter()
            .zip(&observations)
            .map(|((s, _), o)| (s.name.as_str(), o))
            .collect();
        let previous: HashMap<NodeId, NodeStatus> =
            self.status.drain(..).map(|s| (s.id, s)).collect();
        for ((node, (spec, out)), obs) in layout.nodes.iter().zip(&specs).zip(&observations) {
            let mut status = previous
                .get(&node.id)
                .cloned()
                .unwrap_or_else(|| NodeStatus::initial(node, NodeState::Healthy));
            status.role = node.role;
            if *out {
                status.state = NodeState::Fenced;
                status.failures = 0;
                status.last_error = None;
                status.in_recovery = None;
                status.wal_receiver = None;
                self.status.push(status);
                continue;
            }
            self.observe(&mut status, spec, obs, &by_name);
            self.status.push(status);
        }
        self.record().await
    }

    /// Fold one observation into a node's status.
    fn observe(
        &self,
        status: &mut NodeStatus,
        spec: &NodeSpec,
        obs: &Observation,
        by_name: &HashMap<&str, &Observation>,
    ) {
        let mut error = obs.error.clone();
        status.lag_bytes = None;
        status.replication_state = None;
        status.sync_state = None;
        if error.is_none() {
            status.in_recovery = Some(obs.in_recovery);
            status.wal_receiver = obs.wal_receiver.clone();
            status.receive_lsn = obs.receive_lsn;
            status.replay_lsn = obs.replay_lsn;
        } else {
            status.in_recovery = None;
            status.wal_receiver = None;
        }
        match spec.role {
            NodeRole::Primary | NodeRole::Catalog => {
                if error.is_none() && obs.in_recovery {
                    error = Some("primary is in recovery".into());
                }
            }
            NodeRole::Replica => {
                let upstream = spec
                    .upstream
                    .as_ref()
                    .and_then(|u| by_name.get(u.name.as_str()));
                let seen = upstream
                    .filter(|u| u.error.is_none())
                    .map(|u| u.standbys.get(&slot_name(&spec.name)));
                if let Some(Some(s)) = seen {
                    status.lag_bytes = s.lag_bytes;
                    status.replication_state = Some(s.state.clone());
                    status.sync_state = Some(s.sync_state.clone());
                }
                if error.is_none() {
                    if !obs.in_recovery {
                        error = Some("replica is not in recovery".into());
                    } else {
                        match seen {
                            Some(None) => {
                                error = Some("not in its primary's pg_stat_replication".into())
                            }
                            Some(Some(s)) if s.state != "streaming" => {
                                error = Some(format!("replication state is {}", s.state))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        match error {
            None => {
                if status.state != NodeState::Healthy {
                    tracing::info!(node = %spec.name, previous = %status.state, "node healthy");
                }
                status.state = NodeState::Healthy;
                status.failures = 0;
                status.last_error = None;
            }
            Some(e) => {
                status.failures = status.failures.saturating_add(1);
                if status.failures >= self.threshold && status.state != NodeState::Down {
                    tracing::warn!(node = %spec.name, failures = status.failures, error = %e, "node down");
                    status.state = NodeState::Down;
                } else {
                    tracing::debug!(node = %spec.name, failures = status.failures, error = %e, "probe failed");
                }
                status.last_error = Some(e);
            }
        }
    }

    /// Record every node's observed health in the catalog (pipelined on one
    /// connection).
    async fn record(&mut self) -> Option<CatalogVersion> {
        let spec = self
            .cluster
            .layout()
            .catalog()
            .map(|n| self.cluster.layout().spec(n, self.cluster.config()))?;
        if self.catalog.as_ref().is_none_or(|c| c.is_closed()) {
            match ready::connect(
                &spec.pg_config(store::CATALOG_DB, self.timeout),
                self.timeout,
            )
            .await
            {
                Ok(c) => self.catalog = Some(c),
                Err(error) => {
                    tracing::debug!(%error, "catalog unreachable; probe results not recorded");
                    return None;
                }
            }
        }
        let client = self.catalog.as_ref()?;
        let writes = join_all(
            self.status
                .iter()
                .filter(|s| matches!(s.state, NodeState::Healthy | NodeState::Down))
                .map(|s| store::record_probe(client, s.id, s.state, s.lag_bytes)),
        );
        // In sync mode a commit waits for the catalog's replica: bound the wait.
        match tokio::time::timeout(self.timeout * 2, writes).await {
            Ok(results) => {
                let mut version = None;
                for r in results {
                    match r {
                        Ok(v) => {
                            version = Some(version.map_or(v, |old: CatalogVersion| old.max(v)))
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not record probe result");
                            self.catalog = None;
                            return None;
                        }
                    }
                }
                version
            }
            Err(_) => {
                tracing::warn!("recording probe results timed out");
                self.catalog = None;
                None
            }
        }
    }
}

/// Probe one instance with the connection kept from the last round (or a new one);
/// returns the connection to keep, if it still works.
async fn probe_node(
    spec: &NodeSpec,
    client: Option<Client>,
    timeout: Duration,
) -> (Option<Client>, Observation) {
    let failed = |error: String| Observation {
        error: Some(error),
        ..Default::default()
    };
    match tokio::time::timeout(timeout, probe_inner(spec, client, timeout)).await {
        Ok(Ok((client, obs))) => (Some(client), obs),
        Ok(Err(e)) => (None, failed(e)),
        Err(_) => (None, failed(format!("probe timed out after {timeout:?}"))),
    }
}

async fn probe_inner(
    spec: &NodeSpec,
    client: Option<Client>,
    timeout: Duration,
) -> Result<(Client, Observation), String> {
    let client = match client.filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => ready::connect(&spec.pg_config("postgres", timeout), timeout)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?,
    };
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
                    CASE WHEN pg_is_in_recovery()
                         THEN (coalesce(pg_last_wal_receive_lsn(), '0/0') - '0/0'::pg_lsn)::int8
                         ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 END,
                    (coalesce(pg_last_wal_replay_lsn(), '0/0') - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await
        .map_err(|e| format!("probe query failed: {e}"))?;
    let in_recovery: bool = row.get(0);
    let mut obs = Observation {
        error: None,
        in_recovery,
        wal_receiver: row.get(1),
        receive_lsn: row.get(2),
        replay_lsn: if in_recovery { row.get(3) } else { None },
        standbys: HashMap::new(),
    };
    if !in_recovery {
        let rows = client
            .query(
                "SELECT application_name, state, sync_state, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint \
                 FROM pg_stat_replication",
                &[],
            )
            .await
            .map_err(|e| format!("pg_stat_replication failed: {e}"))?;
        for r in rows {
            obs.standbys.insert(
                r.get::<_, String>(0),
                Standby {
                    state: r.get(1),
                    sync_state: r.get(2),
                    lag_bytes: r.get(3),
                },
            );
        }
    }
    Ok((client, obs))
}

/// The observed cluster, shared with the HTTP API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The catalog version after the last recorded probe round.
    pub version: Option<i64>,
    /// True once the cluster is bootstrapped (or restarted) and serving.
    pub ready: bool,
    pub nodes: Vec<NodeStatus>,
    /// Each shard: its primary, term, status (and why), paused failover, the last
    /// change of primary.
    pub shards: Vec<crate::reconcile::ShardView>,
    /// Bucket moves recorded in the catalog (SPEC §9), as of the last round with moves.
    #[serde(default)]
    pub moves: MovesStatus,
}

/// Bucket moves in numbers (`pgshard status`, Prometheus).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MovesStatus {
    /// Moves not done or aborted (the running operation).
    pub unfinished: u64,
    pub done: u64,
    pub aborted: u64,
    /// Buckets and rows moved by the moves done.
    pub buckets_moved: u64,
    pub rows_moved: i64,
    /// How long the last move done kept its buckets frozen, in milliseconds.
    pub last_freeze_ms: Option<i64>,
    /// The freeze of the moves done, in milliseconds: median, 99th percentile, longest
    /// (nearest rank; 0 with none).
    #[serde(default)]
    pub freeze_ms: [i64; 3],
}

impl MovesStatus {
    /// The numbers of `moves` (as [`pgshard_catalog::moves::list`] gives them).
    pub fn of(moves: &[pgshard_catalog::moves::Move]) -> MovesStatus {
        use pgshard_catalog::moves::MoveState;
        let done: Vec<_> = moves
            .iter()
            .filter(|m| m.state == MoveState::Done)
            .collect();
        MovesStatus {
            unfinished: moves.iter().filter(|m| !m.state.finished()).count() as u64,
            done: done.len() as u64,
            aborted: moves
                .iter()
                .filter(|m| m.state == MoveState::Aborted)
                .count() as u64,
            buckets_moved: done.iter().map(|m| m.buckets.len() as u64).sum(),
            rows_moved: done.iter().map(|m| m.rows_moved).sum(),
            last_freeze_ms: done.iter().max_by_key(|m| m.id).and_then(|m| m.freeze_ms),
            freeze_ms: {
                let mut f: Vec<i64> = done.iter().filter_map(|m| m.freeze_ms).collect();
                f.sort_unstable();
                let rank = |q: f64| -> i64 {
                    match f.len() {
                        0 => 0,
                        n => f[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
                    }
                };
                [rank(0.5), rank(0.99), f.last().copied().unwrap_or(0)]
            },
        }
    }
}

#[cfg(test)]
mod moves_tests {
    use super::MovesStatus;
    use pgshard_catalog::moves::{Move, MoveState};
    use pgshard_catalog::{BucketId, ShardId};

    fn done(id: i64, freeze_ms: i64) -> Move {
        Move {
            id,
            operation: "rebalance".into(),
            source: ShardId(1),
            target: ShardId(2),
            buckets: vec![BucketId(id as u32)],
            state: MoveState::Done,
            rows_moved: 10,
            flip_version: Some(id),
            freeze_ms: Some(freeze_ms),
            error: None,
        }
    }

    #[test]
    fn freeze_quantiles_of_the_moves_done() {
        let moves: Vec<Move> = (1..=100).map(|i| done(i, 101 - i)).collect();
        let s = MovesStatus::of(&moves);
        assert_eq!(s.freeze_ms, [50, 99, 100]);
        assert_eq!(s.last_freeze_ms, Some(1));
        assert_eq!(s.buckets_moved, 100);
        assert_eq!(MovesStatus::of(&[]).freeze_ms, [0, 0, 0]);
    }
}

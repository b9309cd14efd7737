//! Health probes (SPEC §8): every `shardd.probe_interval_ms`, connect to each instance
//! (short timeout, connections kept between rounds), ask it whether it is in recovery,
//! and ask each primary for its standbys in `pg_stat_replication`. The result is the
//! *observed* state: served by the HTTP API and recorded in the catalog with
//! `record_probe`, which bumps the catalog version only when a node's state changes.
//!
//! A node turns `down` after `shardd.failure_threshold` failed probes in a row and
//! `healthy` again at its first good one. A replica counts as good when it answers, is
//! in recovery, and its primary lists it as streaming (or its primary cannot be
//! reached, since then the replica's own health is all we can know).
//!
//! Probes only observe; acting on what they see (failover) is the reconciler's job.

use crate::cluster::{Cluster, LayoutNode};
use crate::runtime::{ready, slot_name, NodeSpec};
use futures::future::join_all;
use pgshard_catalog::store;
use pgshard_catalog::{CatalogVersion, NodeId, NodeRole, NodeState, ShardId};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// What shardd last observed about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    pub shard: Option<ShardId>,
    pub role: NodeRole,
    pub host: String,
    pub port: u16,
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
        }
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
    /// For primaries: standbys by application name.
    standbys: HashMap<String, Standby>,
}

struct Target {
    spec: NodeSpec,
    client: Option<Client>,
}

/// Probes every instance of a cluster and records what it sees.
pub struct Prober {
    targets: Vec<Target>,
    catalog_spec: Option<NodeSpec>,
    catalog: Option<Client>,
    status: Vec<NodeStatus>,
    threshold: u32,
    timeout: Duration,
}

impl Prober {
    pub fn new(cluster: &Cluster) -> Prober {
        let layout = cluster.layout();
        let interval = Duration::from_millis(cluster.config().shardd.probe_interval_ms);
        Prober {
            targets: layout
                .nodes
                .iter()
                .map(|n| Target {
                    spec: layout.spec(n, cluster.config()),
                    client: None,
                })
                .collect(),
            catalog_spec: layout.catalog().map(|n| layout.spec(n, cluster.config())),
            catalog: None,
            // Bootstrap and restart only return once every node passed its readiness
            // check.
            status: layout
                .nodes
                .iter()
                .map(|n| NodeStatus::initial(n, NodeState::Healthy))
                .collect(),
            threshold: cluster.config().shardd.failure_threshold.max(1),
            timeout: interval.clamp(Duration::from_millis(200), Duration::from_secs(2)),
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
        let timeout = self.timeout;
        let observations: Vec<Observation> =
            join_all(self.targets.iter_mut().map(|t| probe_node(t, timeout))).await;
        let by_name: HashMap<&str, &Observation> = self
            .targets
            .iter()
            .zip(&observations)
            .map(|(t, o)| (t.spec.name.as_str(), o))
            .collect();
        for ((target, obs), status) in self
            .targets
            .iter()
            .zip(&observations)
            .zip(self.status.iter_mut())
        {
            let spec = &target.spec;
            let mut error = obs.error.clone();
            status.lag_bytes = None;
            status.replication_state = None;
            status.sync_state = None;
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
        self.record().await
    }

    /// Record every node's state in the catalog (pipelined on one connection).
    async fn record(&mut self) -> Option<CatalogVersion> {
        let spec = self.catalog_spec.as_ref()?;
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

/// Probe one instance, reconnecting if needed.
async fn probe_node(target: &mut Target, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, probe_inner(target, timeout)).await {
        Ok(Ok(obs)) => obs,
        Ok(Err(e)) => {
            target.client = None;
            Observation {
                error: Some(e),
                ..Default::default()
            }
        }
        Err(_) => {
            target.client = None;
            Observation {
                error: Some(format!("probe timed out after {timeout:?}")),
                ..Default::default()
            }
        }
    }
}

async fn probe_inner(target: &mut Target, timeout: Duration) -> Result<Observation, String> {
    if target.client.as_ref().is_none_or(|c| c.is_closed()) {
        let client = ready::connect(&target.spec.pg_config("postgres", timeout), timeout)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        target.client = Some(client);
    }
    let client = target
        .client
        .as_ref()
        .ok_or_else(|| "no connection".to_string())?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| format!("probe query failed: {e}"))?
        .get(0);
    let mut standbys = HashMap::new();
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
            standbys.insert(
                r.get::<_, String>(0),
                Standby {
                    state: r.get(1),
                    sync_state: r.get(2),
                    lag_bytes: r.get(3),
                },
            );
        }
    }
    Ok(Observation {
        error: None,
        in_recovery,
        standbys,
    })
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
}

/// Probe every `interval` until `shutdown`, publishing each round into `shared`.
pub async fn run_probes(
    mut prober: Prober,
    interval: Duration,
    shared: Arc<RwLock<ClusterStatus>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let version = tokio::select! {
            _ = shutdown.cancelled() => break,
            v = prober.probe_once() => v,
        };
        let mut s = shared.write().unwrap_or_else(|p| p.into_inner());
        s.nodes = prober.status().to_vec();
        if let Some(v) = version {
            s.version = Some(v.0);
        }
    }
    tracing::debug!("probe loop stopped");
}

//! Read routing (SPEC §8): which node of a shard serves a read.
//!
//! The planner decides whether a statement *may* run on a replica
//! (`pgshard_sql::Plan::replica_ok`: a query that cannot write, lock or change session
//! state); the session decides whether it *does*, from its `read_from`
//! (`router.read_from`, `SET pgshard.read_from`) and its transaction: outside a
//! transaction block, or in a transaction declared `READ ONLY`, never after a write
//! in the same transaction (the backend of a transaction stays attached until it
//! ends, so a read that follows a write runs where the write did). This module then
//! picks the node:
//!
//! 1. the read set: the shard's replicas in the current catalog snapshot that are
//!    `healthy` (promoted, fenced, rebuilding or down nodes drop out as the catalog
//!    changes), with a weight above 0 (`router.read_weights`), plus the primary for
//!    `read_from = any`;
//! 2. minus the replicas that are banned (a failed connection or probe, for
//!    `router.replica_ban_ms`), lag beyond `router.max_replica_lag_bytes` /
//!    `_ms` (replay paused included: its lag grows with every write), or, for
//!    read-your-writes, have not been seen to replay the session's last commit on the
//!    shard;
//! 3. one of the rest by `router.read_policy` ([`policy`]); none left: the primary
//!    (`any`, or `replica_fallback = "primary"`) or an error (`replica_fallback =
//!    "error"`).
//!
//! Lag is measured by the router itself ([`probe`]), not read from shardd's
//! `node_health`: the router samples each primary's WAL position and then each
//! replica's replay position every `router.replica_probe_ms`, which gives bytes
//! behind, a time bound ("has replayed everything the primary had written at
//! instant t") and the read-your-writes test with one clock, the router's.

pub mod policy;
pub mod probe;

use crate::lock;
use pgshard_catalog::config::{ReadFrom, ReadPolicy, ReplicaFallback, RouterConfig};
use pgshard_catalog::{Catalog, NodeId, NodeRole, NodeState, ShardId};
use policy::{Candidate, Pick};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the router last observed of a replica (see [`probe`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Left out of reads until then (a failed connection or probe).
    pub banned_until: Option<Instant>,
    /// Bytes of WAL behind the primary's last sampled position.
    pub lag_bytes: Option<u64>,
    /// When the latest primary position this replica has replayed was sampled.
    pub covered_at: Option<Instant>,
    /// When the primary's latest position was sampled (the probe round).
    pub sampled_at: Option<Instant>,
    /// `pg_is_wal_replay_paused()` at the last probe.
    pub paused: bool,
}

impl Observed {
    /// How far behind the replica was at the last probe, in time: the primary's
    /// writes of this long before the probe may be missing from it.
    pub fn lag_time(&self) -> Option<Duration> {
        Some(self.sampled_at?.saturating_duration_since(self.covered_at?))
    }
}

/// Counters and observations of one node, for reads (SHOW POOLS, Prometheus).
#[derive(Debug, Default)]
pub struct NodeReads {
    pub served: AtomicU64,
    pub in_flight: AtomicU64,
    pub skipped_lag: AtomicU64,
    pub bans: AtomicU64,
    observed: Mutex<Observed>,
}

impl NodeReads {
    pub fn observed(&self) -> Observed {
        *lock(&self.observed)
    }
}

/// Why a replica did not qualify for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Banned,
    /// Lag beyond a bound (or replay paused while writes arrive).
    Lag,
    /// A bound or read-your-writes applies and the router has no recent probe of it.
    Unknown,
    /// Read-your-writes: it has not been seen to replay the session's last commit.
    NotCaughtUp,
}

/// The bounds a replica must meet (from `[router]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_lag_bytes: Option<u64>,
    pub max_lag: Option<Duration>,
    /// An observation older than this is unknown (three probe intervals).
    pub stale_after: Duration,
}

impl Limits {
    pub fn from_config(c: &RouterConfig) -> Limits {
        Limits {
            max_lag_bytes: c.max_replica_lag_bytes,
            max_lag: c.max_replica_lag_ms.map(Duration::from_millis),
            stale_after: Duration::from_millis(c.replica_probe_ms.saturating_mul(3).max(100)),
        }
    }
}

/// Whether a replica with this observation may serve a read now; `since`: the
/// session's last commit on the shard, for read-your-writes.
pub fn fit(
    o: &Observed,
    now: Instant,
    limits: &Limits,
    since: Option<Instant>,
) -> Result<(), Skip> {
    if o.banned_until.is_some_and(|t| t > now) {
        return Err(Skip::Banned);
    }
    let bounded = limits.max_lag_bytes.is_some() || limits.max_lag.is_some() || since.is_some();
    if !bounded {
        return Ok(());
    }
    let fresh = o
        .sampled_at
        .is_some_and(|t| now.saturating_duration_since(t) <= limits.stale_after);
    if !fresh {
        return Err(Skip::Unknown);
    }
    if let Some(max) = limits.max_lag_bytes {
        if o.lag_bytes.is_none_or(|l| l > max) {
            return Err(Skip::Lag);
        }
    }
    if let Some(max) = limits.max_lag {
        if o.lag_time().is_none_or(|l| l > max) {
            return Err(Skip::Lag);
        }
    }
    if let Some(since) = since {
        if o.covered_at.is_none_or(|c| c < since) {
            return Err(Skip::NotCaughtUp);
        }
    }
    Ok(())
}

/// What a read needs: the hash key for `read_policy = "hash"` and, for
/// read-your-writes, when the session last committed a write on the shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadReq {
    pub key: u64,
    pub since: Option<Instant>,
}

/// Where a read goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Primary,
    Replica(NodeId),
    /// `read_from = replica` with `replica_fallback = error` and no replica fit: why.
    NoReplica(String),
}

/// A read in flight on a node: counted in `in_flight` until dropped (the backend is
/// released).
pub struct ReadLease {
    node: Arc<NodeReads>,
    pub replica: bool,
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router's read state: per node counters and observations, the round-robin
/// counter. Shared by every session ([`crate::server::RouterCtx::reads`]).
#[derive(Default)]
pub struct ReadSet {
    nodes: Mutex<HashMap<NodeId, Arc<NodeReads>>>,
    counter: AtomicU64,
}

impl ReadSet {
    /// The entry of a node (made on first use).
    pub fn node(&self, id: NodeId) -> Arc<NodeReads> {
        lock(&self.nodes).entry(id).or_default().clone()
    }

    /// Every node's entry, by id.
    pub fn snapshot(&self) -> Vec<(NodeId, Arc<NodeReads>)> {
        let mut v: Vec<_> = lock(&self.nodes)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Updates what was observed of a node.
    pub fn observe(&self, id: NodeId, f: impl FnOnce(&mut Observed)) {
        let n = self.node(id);
        f(&mut lock(&n.observed));
    }

    /// Leaves a node out of reads for `ban` (a failed connection or probe).
    pub fn ban(&self, id: NodeId, ban: Duration) {
        let n = self.node(id);
        n.bans.fetch_add(1, Ordering::Relaxed);
        lock(&n.observed).banned_until = Some(Instant::now() + ban);
    }

    /// A read starts on `id`.
    pub fn lease(&self, id: NodeId, replica: bool) -> ReadLease {
        let node = self.node(id);
        node.served.fetch_add(1, Ordering::Relaxed);
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        ReadLease { node, replica }
    }

    /// Chooses the node for a read on `shard` (see the module documentation).
    pub fn choose(
        &self,
        config: &RouterConfig,
        catalog: &Catalog,
        shard: ShardId,
        from: ReadFrom,
        req: &ReadReq,
    ) -> Choice {
        if from == ReadFrom::Primary {
            return Choice::Primary;
        }
        let now = Instant::now();
        let limits = Limits::from_config(config);
        let weight = |name: &str| config.read_weights.get(name).copied().unwrap_or(1);
        let mut cands: Vec<Candidate> = Vec::new();
        let mut skipped: Vec<(String, Skip)> = Vec::new();
        for r in catalog.replicas(shard) {
            if r.state != NodeState::Healthy || weight(&r.name) == 0 {
                continue;
            }
            let entry = self.node(r.id);
            match fit(&entry.observed(), now, &limits, req.since) {
                Ok(()) => cands.push(Candidate {
                    node: r.id,
                    weight: weight(&r.name),
                    outstanding: entry.in_flight.load(Ordering::Relaxed),
                }),
                Err(why) => {
                    if why == Skip::Lag {
                        entry.skipped_lag.fetch_add(1, Ordering::Relaxed);
                    }
                    skipped.push((r.name.clone(), why));
                }
            }
        }
        let primary = catalog.primary(shard);
        if from == ReadFrom::Any {
            if let Some(p) = primary.filter(|p| weight(&p.name) > 0) {
                cands.push(Candidate {
                    node: p.id,
                    weight: weight(&p.name),
                    outstanding: self.node(p.id).in_flight.load(Ordering::Relaxed),
                });
            }
        }
        if cands.is_empty() {
            // Read-your-writes falls back to the primary whatever the setting: it is
            // the one node known to have the commit.
            let behind_commit = skipped.iter().any(|(_, s)| *s == Skip::NotCaughtUp);
            if config.replica_fallback == ReplicaFallback::Primary || behind_commit {
                return Choice::Primary;
            }
            return Choice::NoReplica(no_replica_reason(&skipped));
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let how = match config.read_policy {
            ReadPolicy::RoundRobin => Pick::RoundRobin(n),
            ReadPolicy::Random => Pick::Random(rand::random()),
            ReadPolicy::LeastOutstanding => Pick::LeastOutstanding(n),
            ReadPolicy::Hash => Pick::Hash(req.key),
        };
        let chosen = policy::pick(&cands, how).map(|i| cands[i].node);
        match chosen {
            Some(id) if primary.is_none_or(|p| p.id != id) => Choice::Replica(id),
            _ => Choice::Primary,
        }
    }
}

/// Why no replica could serve, for the client's error.
fn no_replica_reason(skipped: &[(String, Skip)]) -> String {
    if skipped.is_empty() {
        return "no replica is in service".into();
    }
    let each: Vec<String> = skipped
        .iter()
        .map(|(name, why)| {
            let why = match why {
                Skip::Banned => "failed recently",
                Skip::Lag => "lags beyond router.max_replica_lag",
                Skip::Unknown => "its lag is unknown",
                Skip::NotCaughtUp => "has not replayed this session's last write",
            };
            format!("{name} {why}")
        })
        .collect();
    format!("no replica can serve reads ({})", each.join(", "))
}

/// The role label of a node for reads (SHOW POOLS, metrics).
pub fn role_of(catalog: &Catalog, id: NodeId) -> &'static str {
    catalog
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map_or("gone", |n| match n.role {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
            NodeRole::Catalog => "catalog",
        })
}

#[cfg(test)]
mod tests;

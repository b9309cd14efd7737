//! The router's replica probe (SPEC §8 lag bound, read-your-writes): every
//! `router.replica_probe_ms`, for each shard with replicas in the current catalog
//! snapshot (so the probed set follows failovers and rebuilds), it samples the
//! primary's WAL position and *then* each replica's replay position.
//!
//! A sample is `(t, P)`: `t` taken before asking the primary, `P` its
//! `pg_current_wal_lsn()`. Any commit acknowledged before `t` ends at or before `P`
//! (the commit record is written before the acknowledgement). A replica whose
//! `pg_last_wal_replay_lsn()` is at least `P` has therefore replayed every commit
//! acknowledged before `t`: its `covered_at` is the latest such `t` among the
//! shard's recent samples. That one number gives the time lag (the last sample's
//! `t` minus `covered_at`: writes older than that are all there) and the
//! read-your-writes test (a session that committed at `c` may read from a replica
//! with `covered_at ≥ c`), both on the router's clock; bytes behind is the last `P`
//! minus the replay position. Replay paused shows as lag that grows with every
//! write. A replica that cannot be reached or queried is banned
//! (`router.replica_ban_ms`); a primary that cannot is simply not sampled, so its
//! replicas' `covered_at` stops advancing and their observations go stale.
//!
//! Why not shardd's `pgshard.node_health`: it holds bytes only (no time, no
//! positions to compare with a session's commit), is written without a catalog
//! version bump (so it would need polling anyway) and would add a second probe
//! interval of delay. One query per node per interval from each router is cheap.

use super::ReadSet;
use crate::backend::node_conns::NodeConns;
use pgshard_catalog::config::RouterConfig;
use pgshard_catalog::{Catalog, NodeId, NodeState, ShardId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Samples kept per shard (the replica's position is compared with each).
const SAMPLES: usize = 64;

/// A WAL position as text (`16/B374D848`) to a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// The latest sample time whose position `replayed` has reached.
pub fn covered_at(samples: &VecDeque<(Instant, u64)>, replayed: u64) -> Option<Instant> {
    samples
        .iter()
        .filter(|(_, p)| *p <= replayed)
        .map(|(t, _)| *t)
        .max()
}

/// The probe's connections and samples.
struct Prober {
    conns: NodeConns,
    samples: HashMap<ShardId, VecDeque<(Instant, u64)>>,
    ban: Duration,
}

/// Probes until `shutdown` (spawned by [`crate::server::Router::serve`]).
pub async fn run(
    config: RouterConfig,
    catalog: crate::CatalogHandle,
    reads: Arc<ReadSet>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_millis(config.replica_probe_ms.max(1));
    let timeout = every.clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut p = Prober {
        conns: NodeConns::new(&config, timeout, "replica probe"),
        samples: HashMap::new(),
        ban: Duration::from_millis(config.replica_ban_ms),
    };
    loop {
        let snapshot = catalog.current();
        p.round(&snapshot, &reads).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

impl Prober {
    async fn round(&mut self, catalog: &Catalog, reads: &ReadSet) {
        let live: Vec<NodeId> = catalog.nodes.iter().map(|n| n.id).collect();
        self.conns.retain(&live);
        for shard in &catalog.shards {
            let replicas: Vec<_> = catalog
                .replicas(shard.id)
                .filter(|r| r.state == NodeState::Healthy)
                .cloned()
                .collect();
            if replicas.is_empty() {
                continue;
            }
            let Some(primary) = catalog.primary(shard.id).cloned() else {
                continue;
            };
            let t = Instant::now();
            let sql = "SELECT pg_current_wal_lsn()::text";
            if let Some(lsn) = self.query_lsn(&primary, sql).await {
                let s = self.samples.entry(shard.id).or_default();
                s.push_back((t, lsn));
                while s.len() > SAMPLES {
                    s.pop_front();
                }
            }
            let Some(&(last_t, last_p)) = self.samples.get(&shard.id).and_then(|s| s.back()) else {
                continue;
            };
            for r in &replicas {
                let sql = "SELECT pg_last_wal_replay_lsn()::text, \
                           CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END::text";
                match self.query(r, sql).await {
                    Some(row) => {
                        let replayed = row.first().and_then(|v| v.as_deref()).and_then(parse_lsn);
                        let paused = row.get(1).and_then(|v| v.as_deref()) == Some("true");
                        let covered = replayed.and_then(|lsn| {
                            self.samples.get(&shard.id).and_then(|s| covered_at(s, lsn))
                        });
                        reads.observe(r.id, |o| {
                            o.sampled_at = Some(last_t);
                            o.covered_at = covered;
                            o.lag_bytes = replayed.map(|lsn| last_p.saturating_sub(lsn));
                            o.paused = paused;
                        });
                    }
                    None => reads.ban(r.id, self.ban),
                }
            }
        }
    }

    async fn query_lsn(&mut self, node: &pgshard_catalog::Node, sql: &str) -> Option<u64> {
        let row = self.query(node, sql).await?;
        row.first()?.as_deref().and_then(parse_lsn)
    }

    /// The first row of `sql` on `node`; `None` on any failure.
    async fn query(
        &mut self,
        node: &pgshard_catalog::Node,
        sql: &str,
    ) -> Option<Vec<Option<String>>> {
        self.conns.rows(node, sql).await?.into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn coverage_is_the_latest_sample_reached() {
        let t0 = Instant::now();
        let s: VecDeque<(Instant, u64)> = [(0, 100), (10, 200), (20, 300)]
            .iter()
            .map(|(ms, p)| (t0 + Duration::from_millis(*ms), *p))
            .collect();
        assert_eq!(covered_at(&s, 50), None);
        assert_eq!(covered_at(&s, 200), Some(t0 + Duration::from_millis(10)));
        assert_eq!(covered_at(&s, 299), Some(t0 + Duration::from_millis(10)));
        assert_eq!(covered_at(&s, 1000), Some(t0 + Duration::from_millis(20)));
    }
}

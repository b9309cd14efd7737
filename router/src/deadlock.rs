//! Distributed deadlock detection (SPEC §7). PostgreSQL finds deadlocks within one
//! server only: a transaction holding a row lock on shard 1 and waiting on shard 2,
//! while another holds on shard 2 and waits on shard 1, would wait forever. Like
//! Citus's detector, the router gathers a wait-for graph and breaks the cycles itself.
//!
//! Sessions publish, in the client registry ([`crate::registry`]), each transaction's
//! identity and start and the backend (pid) it holds on each shard — an explicit
//! transaction block, or the router's own multi-shard autocommit write while it runs.
//! Every `router.distributed_deadlock_check_ms` (0 turns the detector off), and only
//! when some session in a transaction has had a request running that long, the
//! detector asks each involved shard's primary, on a connection of its own,
//! `SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type =
//! 'Lock' AND pid = ANY(<the pids the router's transactions hold there>)`. An edge
//! A → B says A's backend on shard s is blocked by a pid B holds on s. Cycles whose
//! edges all lie on one shard are left to that server (its own detector resolves them
//! after its `deadlock_timeout`); a cycle spanning shards is confirmed by asking those
//! shards again (the first answers were not taken at one instant), then its youngest
//! transaction is the victim: its waiting backend gets a CancelRequest, and the
//! backend's [`Mark`] turns the 57014 that comes back into `40P01 deadlock detected`
//! with a DETAIL naming the shards. From there it is an error like any other: a
//! transaction block fails (and its other shards roll back at once, releasing their
//! locks as PostgreSQL does at an error), a multi-shard autocommit write rolls back
//! everywhere.
//!
//! Limits. One router sees only its own sessions: a cycle through transactions of two
//! router processes (or through clients connected to the shards directly) is not
//! found, and such transactions wait until a statement or lock timeout ends them. A
//! cancel reaches the victim's backend a moment after the detector looked; if the
//! statement finished in between, the cancel is ignored by an idle backend and the
//! mark is cleared when the connection goes back to its pool. A victim inside a
//! transaction block with savepoints keeps its locks on its other shards until the
//! client rolls back (as a PostgreSQL transaction keeps the locks taken before a
//! savepoint); without savepoints they are rolled back at the error (see the session's
//! `roll_back_parked`). The detector's view is the sessions' last publication (at each
//! backend change and ReadyForQuery); backends on replicas are not asked (reads take
//! no row locks). Errors of the statements the router runs in a side transaction of
//! its own (collecting rows for a repartitioned query) are not rewritten. The
//! detector connects to database `postgres` as the first of `router.users` (as the
//! replica probe does): when clients log in as other users, that role needs
//! `pg_read_all_stats` to see their waits in `pg_stat_activity`.

use crate::backend::node_conns::NodeConns;
use crate::registry::{ClientEntry, TxnMark};
use crate::server::RouterCtx;
use pgshard_catalog::{Catalog, NodeId, ShardId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The SQLSTATE the victim's client sees (PostgreSQL's `deadlock_detected`).
pub const DEADLOCK_DETECTED: &str = "40P01";

/// Set on a backend connection the detector is about to cancel: the DETAIL of the
/// 40P01 its cancellation error (57014) becomes. Cleared when the connection is
/// checked out of or given back to its pool.
#[derive(Debug, Default)]
pub struct Mark(Mutex<Option<String>>);

impl Mark {
    pub fn set(&self, detail: String) {
        *crate::lock(&self.0) = Some(detail);
    }

    pub fn take(&self) -> Option<String> {
        crate::lock(&self.0).take()
    }

    pub fn clear(&self) {
        *crate::lock(&self.0) = None;
    }
}

/// A router transaction as the graph sees it: who, how old, and the pid it holds on
/// each shard.
#[derive(Debug, Clone)]
pub struct TxnView {
    pub txn: TxnMark,
    pub holds: Vec<(ShardId, i32)>,
}

/// A backend waiting for a lock: on `shard`, `pid` is blocked by `blockers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub shard: ShardId,
    pub pid: i32,
    pub blockers: Vec<i32>,
}

/// `from` (an index into the views) waits on `shard`, with its backend `pid`, for `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub shard: ShardId,
    pub pid: i32,
}

/// A wait-for cycle spanning shards and the transaction to cancel to break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub edges: Vec<Edge>,
    /// The shards the cycle's waits lie on, ascending.
    pub shards: Vec<ShardId>,
    /// The youngest transaction of the cycle (an index into the views) and the backend
    /// through which it waits.
    pub victim: usize,
    pub victim_shard: ShardId,
    pub victim_pid: i32,
}

/// How many edges the cycle search may follow per round (the graph is that of waiting
/// transactions, small; this bounds a pathological one).
const SEARCH_BUDGET: usize = 100_000;

/// The wait-for graph between the router's transactions. A pid claimed by two views
/// (a backend given back to the pool and taken by another session between two
/// publications) is nobody's: no edge is drawn through it.
pub fn wait_for_graph(views: &[TxnView], waits: &[Wait]) -> Vec<Edge> {
    let mut owner: HashMap<(ShardId, i32), Option<usize>> = HashMap::new();
    for (i, v) in views.iter().enumerate() {
        for &(shard, pid) in &v.holds {
            owner
                .entry((shard, pid))
                .and_modify(|o| {
                    if *o != Some(i) {
                        *o = None
                    }
                })
                .or_insert(Some(i));
        }
    }
    let mut edges = Vec::new();
    for w in waits {
        let Some(&Some(from)) = owner.get(&(w.shard, w.pid)) else {
            continue;
        };
        for b in &w.blockers {
            if let Some(&Some(to)) = owner.get(&(w.shard, *b)) {
                let e = Edge {
                    from,
                    to,
                    shard: w.shard,
                    pid: w.pid,
                };
                if to != from && !edges.contains(&e) {
                    edges.push(e);
                }
            }
        }
    }
    edges
}

/// Cycles of `edges` whose waits lie on more than one shard, each with its victim.
/// Once a cycle is found its victim leaves the graph (cancelling it breaks every cycle
/// through it) and the search goes on, so disjoint deadlocks are all found in a round.
pub fn distributed_cycles(views: &[TxnView], edges: &[Edge]) -> Vec<Cycle> {
    let n = views.len();
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        adj[e.from].push(i);
    }
    let mut removed = vec![false; n];
    let mut budget = SEARCH_BUDGET;
    let mut found = Vec::new();
    for start in 0..n {
        loop {
            if removed[start] || adj[start].is_empty() {
                break;
            }
            let mut search = Search {
                start,
                edges,
                adj: &adj,
                removed: &removed,
                on_path: vec![false; n],
                path: Vec::new(),
                budget: &mut budget,
            };
            let Some(path) = search.from(start) else {
                break;
            };
            let cycle_edges: Vec<Edge> = path.iter().map(|&i| edges[i]).collect();
            let Some(victim_edge) = cycle_edges
                .iter()
                .max_by_key(|e| (views[e.from].txn.started, views[e.from].txn.id))
                .copied()
            else {
                break;
            };
            let shards: BTreeSet<ShardId> = cycle_edges.iter().map(|e| e.shard).collect();
            removed[victim_edge.from] = true;
            found.push(Cycle {
                edges: cycle_edges,
                shards: shards.into_iter().collect(),
                victim: victim_edge.from,
                victim_shard: victim_edge.shard,
                victim_pid: victim_edge.pid,
            });
        }
    }
    found
}

/// A depth-first search for a cycle through `start` spanning shards, over nodes
/// numbered above `start` (each cycle is found from its lowest member).
struct Search<'a> {
    start: usize,
    edges: &'a [Edge],
    adj: &'a [Vec<usize>],
    removed: &'a [bool],
    on_path: Vec<bool>,
    path: Vec<usize>,
    budget: &'a mut usize,
}

impl Search<'_> {
    fn from(&mut self, node: usize) -> Option<Vec<usize>> {
        for &i in &self.adj[node] {
            if *self.budget == 0 {
                return None;
            }
            *self.budget -= 1;
            let to = self.edges[i].to;
            if self.removed[to] {
                continue;
            }
            if to == self.start {
                self.path.push(i);
                let first = self.edges[self.path[0]].shard;
                if self.path.iter().any(|&j| self.edges[j].shard != first) {
                    return Some(self.path.clone());
                }
                self.path.pop();
                continue;
            }
            if to < self.start || self.on_path[to] {
                continue;
            }
            self.on_path[to] = true;
            self.path.push(i);
            if let Some(c) = self.from(to) {
                return Some(c);
            }
            self.path.pop();
            self.on_path[to] = false;
        }
        None
    }
}

/// The 40P01 DETAIL for the victim of `cycle`.
pub fn detail(cycle: &Cycle) -> String {
    let shards: Vec<String> = cycle.shards.iter().map(|s| s.to_string()).collect();
    let list = match shards.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    format!(
        "Distributed deadlock across shards {list} between {} transactions of this router: \
         this transaction waited for a lock on shard {} and, the youngest in the cycle, was \
         cancelled.",
        cycle.edges.len(),
        cycle.victim_shard
    )
}

/// `{12,345}` (an `int[]` as text) to its numbers.
fn parse_pids(text: &str) -> Vec<i32> {
    text.trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// One router transaction in a round: its registry entry and what it published.
struct Seen {
    entry: Arc<ClientEntry>,
    view: TxnView,
    /// The primary address each held pid is on, by shard (pids on replicas are left out).
    addrs: Vec<Arc<str>>,
}

/// The detector's connections to shard primaries.
struct Detector {
    conns: NodeConns,
}

/// Checks every `router.distributed_deadlock_check_ms` until `shutdown` (spawned by
/// [`crate::server::Router::serve`]); returns at once when the setting is 0.
pub async fn run(ctx: Arc<RouterCtx>, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.config.distributed_deadlock_check_ms);
    if every.is_zero() {
        return;
    }
    let timeout = every.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut d = Detector {
        conns: NodeConns::new(&ctx.config, timeout, "deadlock detector"),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        d.round(&ctx, every).await;
    }
}

impl Detector {
    async fn round(&mut self, ctx: &RouterCtx, every: Duration) {
        let now = Instant::now();
        let entries = ctx.clients.list();
        let stuck = entries
            .iter()
            .any(|e| e.busy_for(now).is_some_and(|d| d >= every) && e.holds().is_some());
        if !stuck {
            tracing::trace!(clients = entries.len(), "deadlock check: nothing waits");
            return;
        }
        let catalog = ctx.catalog.current();
        let live: Vec<NodeId> = catalog.nodes.iter().map(|n| n.id).collect();
        self.conns.retain(&live);
        let seen: Vec<Seen> = entries
            .into_iter()
            .filter_map(|entry| {
                let (txn, holds) = entry.holds()?;
                let view = TxnView {
                    txn,
                    holds: holds.iter().map(|h| (h.shard, h.target.pid)).collect(),
                };
                let addrs = holds.iter().map(|h| h.target.addr.clone()).collect();
                Some(Seen { entry, view, addrs })
            })
            .collect();
        let shards: BTreeSet<ShardId> = seen
            .iter()
            .flat_map(|s| s.view.holds.iter().map(|h| h.0))
            .collect();
        let views: Vec<TxnView> = seen.iter().map(|s| s.view.clone()).collect();
        let waits = self.waits(&catalog, &seen, &shards).await;
        tracing::debug!(?views, ?waits, "deadlock check");
        let cycles = distributed_cycles(&views, &wait_for_graph(&views, &waits));
        if cycles.is_empty() {
            return;
        }
        // The shards were asked one after another: confirm with a second look that
        // every wait of each cycle is still there (in a real deadlock nobody moves).
        let involved: BTreeSet<ShardId> = cycles.iter().flat_map(|c| c.shards.clone()).collect();
        let again = self.waits(&catalog, &seen, &involved).await;
        let confirmed = wait_for_graph(&views, &again);
        for cycle in cycles {
            if !cycle.edges.iter().all(|e| confirmed.contains(e)) {
                tracing::debug!(shards = ?cycle.shards, "wait-for cycle gone on a second look");
                continue;
            }
            let victim = &seen[cycle.victim];
            let detail = detail(&cycle);
            let Some(target) = victim.entry.mark_victim(
                victim.view.txn.id,
                cycle.victim_shard,
                cycle.victim_pid,
                &detail,
            ) else {
                continue;
            };
            crate::stats::bump(&ctx.stats.distributed_deadlocks);
            tracing::info!(
                shards = ?cycle.shards,
                transactions = cycle.edges.len(),
                victim_client = victim.entry.pid,
                victim_shard = %cycle.victim_shard,
                victim_backend = cycle.victim_pid,
                "distributed deadlock detected; cancelling the youngest transaction"
            );
            if let Err(error) = target.cancel().await {
                tracing::warn!(%error, backend = cycle.victim_pid, "could not cancel the deadlock victim");
            }
        }
    }

    /// The lock waits of the router's backends on each of `shards`' primaries. A shard
    /// that cannot be asked adds none (no edge is guessed).
    async fn waits(
        &mut self,
        catalog: &Catalog,
        seen: &[Seen],
        shards: &BTreeSet<ShardId>,
    ) -> Vec<Wait> {
        let mut waits = Vec::new();
        for &shard in shards {
            let Some(primary) = catalog.primary(shard).cloned() else {
                continue;
            };
            let addr = format!("{}:{}", primary.host, primary.port);
            let pids: Vec<String> = seen
                .iter()
                .flat_map(|s| s.view.holds.iter().zip(&s.addrs))
                .filter(|((s, _), a)| *s == shard && ***a == *addr)
                .map(|((_, pid), _)| pid.to_string())
                .collect();
            if pids.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT pid::text, pg_blocking_pids(pid)::text FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND pid = ANY('{{{}}}'::int[])",
                pids.join(",")
            );
            for row in self.query(&primary, &sql).await {
                let pid = row.first().and_then(|v| v.as_deref()?.parse().ok());
                let blockers = row.get(1).and_then(|v| v.as_deref()).map(parse_pids);
                if let (Some(pid), Some(blockers)) = (pid, blockers) {
                    waits.push(Wait {
                        shard,
                        pid,
                        blockers,
                    });
                }
            }
        }
        waits
    }

    /// The rows of `sql` on `node`; none on any failure.
    async fn query(&mut self, node: &pgshard_catalog::Node, sql: &str) -> Vec<Vec<Option<String>>> {
        self.conns.rows(node, sql).await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, age_ms: u64, holds: &[(u32, i32)], t0: Instant) -> TxnView {
        TxnView {
            txn: TxnMark {
                id,
                started: t0 + Duration::from_millis(age_ms),
            },
            holds: holds.iter().map(|&(s, p)| (ShardId(s), p)).collect(),
        }
    }

    fn wait(shard: u32, pid: i32, blockers: &[i32]) -> Wait {
        Wait {
            shard: ShardId(shard),
            pid,
            blockers: blockers.to_vec(),
        }
    }

    #[test]
    fn two_transactions_crossed_on_two_shards() {
        let t0 = Instant::now();
        // T0 holds 101 on shard 1 and waits with 201 on shard 2; T1 the other way.
        let views = [
            view(1, 0, &[(1, 101), (2, 201)], t0),
            view(2, 5, &[(2, 202), (1, 102)], t0),
        ];
        let waits = [wait(2, 201, &[202]), wait(1, 102, &[101])];
        let edges = wait_for_graph(&views, &waits);
        assert_eq!(edges.len(), 2);
        let cycles = distributed_cycles(&views, &edges);
        assert_eq!(cycles.len(), 1);
        let c = &cycles[0];
        assert_eq!(c.shards, vec![ShardId(1), ShardId(2)]);
        assert_eq!(c.victim, 1, "the youngest");
        assert_eq!((c.victim_shard, c.victim_pid), (ShardId(1), 102));
        assert!(detail(c).contains("shards 1 and 2"), "{}", detail(c));
    }

    #[test]
    fn a_cycle_on_one_shard_is_left_to_postgresql() {
        let t0 = Instant::now();
        let views = [view(1, 0, &[(1, 101)], t0), view(2, 1, &[(1, 102)], t0)];
        let waits = [wait(1, 101, &[102]), wait(1, 102, &[101])];
        let edges = wait_for_graph(&views, &waits);
        assert_eq!(edges.len(), 2);
        assert!(distributed_cycles(&views, &edges).is_empty());
    }

    #[test]
    fn plain_waits_are_no_deadlock() {
        let t0 = Instant::now();
        let views = [
            view(1, 0, &[(1, 101), (2, 201)], t0),
            view(2, 1, &[(2, 202)], t0),
        ];
        // T1 waits for T0 on shard 2; T0 waits for nobody the router knows.
        let waits = [wait(2, 202, &[201]), wait(1, 101, &[999])];
        let edges = wait_for_graph(&views, &waits);
        assert_eq!(edges.len(), 1);
        assert!(distributed_cycles(&views, &edges).is_empty());
    }

    #[test]
    fn three_transactions_one_holding_a_single_shard() {
        let t0 = Instant::now();
        // A -s1-> B -s1-> C -s2-> A.
        let views = [
            view(1, 0, &[(1, 11), (2, 21)], t0),
            view(2, 9, &[(1, 12)], t0),
            view(3, 3, &[(1, 13), (2, 23)], t0),
        ];
        let waits = [wait(1, 11, &[12]), wait(1, 12, &[13]), wait(2, 23, &[21])];
        tracing::debug!(?views, ?waits, "deadlock check");
        let cycles = distributed_cycles(&views, &wait_for_graph(&views, &waits));
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].victim, 1);
        assert_eq!(cycles[0].edges.len(), 3);
    }

    #[test]
    fn disjoint_deadlocks_are_all_found() {
        let t0 = Instant::now();
        let views = [
            view(1, 0, &[(1, 1), (2, 1)], t0),
            view(2, 1, &[(1, 2), (2, 2)], t0),
            view(3, 2, &[(1, 3), (2, 3)], t0),
            view(4, 3, &[(1, 4), (2, 4)], t0),
        ];
        let waits = [
            wait(2, 1, &[2]),
            wait(1, 2, &[1]),
            wait(2, 3, &[4]),
            wait(1, 4, &[3]),
        ];
        tracing::debug!(?views, ?waits, "deadlock check");
        let cycles = distributed_cycles(&views, &wait_for_graph(&views, &waits));
        let victims: Vec<usize> = cycles.iter().map(|c| c.victim).collect();
        assert_eq!(victims, vec![1, 3]);
    }

    #[test]
    fn a_pid_claimed_twice_draws_no_edge() {
        let t0 = Instant::now();
        let views = [
            view(1, 0, &[(1, 7), (2, 8)], t0),
            view(2, 1, &[(1, 7), (2, 9)], t0),
        ];
        let waits = [wait(2, 8, &[9]), wait(1, 7, &[7])];
        let edges = wait_for_graph(&views, &waits);
        assert_eq!(edges.len(), 1);
        assert!(distributed_cycles(&views, &edges).is_empty());
    }

    #[test]
    fn blocking_pids_as_text() {
        assert_eq!(parse_pids("{12,345}"), vec![12, 345]);
        assert_eq!(parse_pids("{}"), Vec::<i32>::new());
    }

    #[test]
    fn marks_are_taken_once() {
        let m = Mark::default();
        m.set("d".into());
        assert_eq!(m.take().as_deref(), Some("d"));
        assert_eq!(m.take(), None);
    }
}

//! The read set against catalog snapshots: who qualifies, fallbacks, bans, lag and
//! read-your-writes, and the set following a failover.

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

fn three() -> Catalog {
    catalog(vec![
        node(1, NodeRole::Primary, NodeState::Healthy),
        node(2, NodeRole::Replica, NodeState::Healthy),
        node(3, NodeRole::Replica, NodeState::Healthy),
    ])
}

fn config() -> RouterConfig {
    RouterConfig::default()
}

fn choose(set: &ReadSet, c: &RouterConfig, cat: &Catalog, from: ReadFrom) -> Choice {
    set.choose(c, cat, ShardId(1), from, &ReadReq::default())
}

#[test]
fn primary_mode_never_reads_a_replica() {
    let set = ReadSet::default();
    for _ in 0..10 {
        assert_eq!(
            choose(&set, &config(), &three(), ReadFrom::Primary),
            Choice::Primary
        );
    }
}

#[test]
fn replica_mode_alternates_and_any_includes_the_primary() {
    let set = ReadSet::default();
    let picks: Vec<Choice> = (0..4)
        .map(|_| choose(&set, &config(), &three(), ReadFrom::Replica))
        .collect();
    assert!(picks.contains(&Choice::Replica(NodeId(2))));
    assert!(picks.contains(&Choice::Replica(NodeId(3))));
    let any: Vec<Choice> = (0..3)
        .map(|_| choose(&set, &config(), &three(), ReadFrom::Any))
        .collect();
    assert!(any.contains(&Choice::Primary), "{any:?}");
}

#[test]
fn down_fenced_and_zero_weight_nodes_are_out() {
    let set = ReadSet::default();
    let cat = catalog(vec![
        node(1, NodeRole::Primary, NodeState::Healthy),
        node(2, NodeRole::Replica, NodeState::Down),
        node(3, NodeRole::Replica, NodeState::Rebuilding),
        node(4, NodeRole::Replica, NodeState::Healthy),
        node(5, NodeRole::Replica, NodeState::Healthy),
    ]);
    let mut c = config();
    c.read_weights.insert("shard1-node5".into(), 0);
    for _ in 0..6 {
        assert_eq!(
            choose(&set, &c, &cat, ReadFrom::Replica),
            Choice::Replica(NodeId(4))
        );
    }
}

#[test]
fn banned_replicas_are_skipped_then_fallback_applies() {
    let set = ReadSet::default();
    set.ban(NodeId(2), Duration::from_secs(60));
    for _ in 0..4 {
        assert_eq!(
            choose(&set, &config(), &three(), ReadFrom::Replica),
            Choice::Replica(NodeId(3))
        );
    }
    set.ban(NodeId(3), Duration::from_secs(60));
    assert_eq!(
        choose(&set, &config(), &three(), ReadFrom::Replica),
        Choice::Primary
    );
    let mut c = config();
    c.replica_fallback = ReplicaFallback::Error;
    assert!(matches!(
        choose(&set, &c, &three(), ReadFrom::Replica),
        Choice::NoReplica(why) if why.contains("failed recently")
    ));
    // An expired ban is over.
    set.ban(NodeId(2), Duration::ZERO);
    assert_eq!(
        choose(&set, &c, &three(), ReadFrom::Replica),
        Choice::Replica(NodeId(2))
    );
}

#[test]
fn lag_bounds_and_unknown_lag() {
    let set = ReadSet::default();
    let mut c = config();
    c.max_replica_lag_bytes = Some(1000);
    c.replica_fallback = ReplicaFallback::Error;
    // Nothing probed yet: unknown, so not used under a bound.
    assert!(matches!(
        choose(&set, &c, &three(), ReadFrom::Replica),
        Choice::NoReplica(_)
    ));
    let now = Instant::now();
    set.observe(NodeId(2), |o| {
        o.sampled_at = Some(now);
        o.covered_at = Some(now);
        o.lag_bytes = Some(10);
    });
    set.observe(NodeId(3), |o| {
        o.sampled_at = Some(now);
        o.covered_at = Some(now - Duration::from_secs(30));
        o.lag_bytes = Some(5000);
        o.paused = true;
    });
    for _ in 0..4 {
        assert_eq!(
            choose(&set, &c, &three(), ReadFrom::Replica),
            Choice::Replica(NodeId(2))
        );
    }
    assert!(set.node(NodeId(3)).skipped_lag.load(Ordering::Relaxed) >= 4);
    // A time bound alone catches it too.
    c.max_replica_lag_bytes = None;
    c.max_replica_lag_ms = Some(2000);
    for _ in 0..4 {
        assert_eq!(
            choose(&set, &c, &three(), ReadFrom::Replica),
            Choice::Replica(NodeId(2))
        );
    }
}

#[test]
fn read_your_writes_needs_a_replica_past_the_commit() {
    let set = ReadSet::default();
    let mut c = config();
    c.replica_fallback = ReplicaFallback::Error;
    let before = Instant::now();
    let commit = before + Duration::from_millis(5);
    let after = commit + Duration::from_millis(5);
    set.observe(NodeId(2), |o| {
        o.sampled_at = Some(after);
        o.covered_at = Some(before);
    });
    set.observe(NodeId(3), |o| {
        o.sampled_at = Some(after);
        o.covered_at = Some(after);
    });
    let req = ReadReq {
        key: 0,
        since: Some(commit),
    };
    for _ in 0..4 {
        assert_eq!(
            set.choose(&c, &three(), ShardId(1), ReadFrom::Replica, &req),
            Choice::Replica(NodeId(3))
        );
    }
    set.observe(NodeId(3), |o| o.covered_at = Some(before));
    // Nobody has the commit: the primary, even with replica_fallback = error.
    assert_eq!(
        set.choose(&c, &three(), ShardId(1), ReadFrom::Replica, &req),
        Choice::Primary
    );
}

#[test]
fn the_read_set_follows_a_failover() {
    let set = ReadSet::default();
    // Node 2 promoted, node 1 fenced: only node 3 is a replica now.
    let cat = catalog(vec![
        node(1, NodeRole::Replica, NodeState::Fenced),
        node(2, NodeRole::Primary, NodeState::Healthy),
        node(3, NodeRole::Replica, NodeState::Healthy),
    ]);
    for _ in 0..4 {
        assert_eq!(
            choose(&set, &config(), &cat, ReadFrom::Replica),
            Choice::Replica(NodeId(3))
        );
    }
}

#[test]
fn leases_count_reads_in_flight() {
    let set = ReadSet::default();
    let a = set.lease(NodeId(2), true);
    let b = set.lease(NodeId(2), true);
    assert_eq!(set.node(NodeId(2)).in_flight.load(Ordering::Relaxed), 2);
    drop(a);
    drop(b);
    let n = set.node(NodeId(2));
    assert_eq!(n.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(n.served.load(Ordering::Relaxed), 2);
}

#[test]
fn prometheus_shows_reads_per_node_and_role() {
    let ctx = crate::server::RouterCtx::new(config(), crate::CatalogHandle::new(three()));
    drop(ctx.reads.lease(NodeId(2), true));
    let _running = ctx.reads.lease(NodeId(3), true);
    ctx.reads.ban(NodeId(3), Duration::from_secs(1));
    let text = crate::metrics::render(&ctx);
    for line in [
        "pgshard_router_reads_total{node=\"shard1-node2\",role=\"replica\"} 1",
        "pgshard_router_reads_in_flight{node=\"shard1-node3\",role=\"replica\"} 1",
        "pgshard_router_replica_bans_total{node=\"shard1-node3\",role=\"replica\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

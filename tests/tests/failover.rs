//! Automatic failover and planned switchover (SPEC §8; issue: high availability), on
//! real clusters under shardd's control loop, with real kills.

use pgshard_catalog::{NodeState, ShardId, ShardStatus};
use pgshard_tests::{TestClusterOptions, TestDaemon};
use std::time::{Duration, Instant};

const FAILOVER: Duration = Duration::from_secs(60);
const REBUILD: Duration = Duration::from_secs(120);

fn opts(replicas: u32) -> TestClusterOptions {
    TestClusterOptions {
        shards: 2,
        replicas,
        buckets: 64,
        ..Default::default()
    }
}

/// Kill shard 1's primary: the most advanced replica is promoted, the term grows, every
/// committed row is on the new primary, the old primary is fenced then rebuilt as a
/// replica of the new one, and the shard is back to two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_is_replaced_and_rebuilt() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(2), |_| {}).await?;
    let before = d.catalog().await?;
    let old = d.primary_of(1).await?;
    let term = before.shard(ShardId(1)).map(|s| s.term);
    assert_eq!(term, Some(1));
    let c = d.connect_node(&old).await?;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await?;
    drop(c);

    let killed = Instant::now();
    d.kill_node(&old).await?;
    let after = d
        .wait_catalog("shard 1 has a new primary", FAILOVER, |c| {
            c.primary(ShardId(1)).is_some_and(|p| p.name != old)
                && c.shard(ShardId(1))
                    .is_some_and(|s| s.status != ShardStatus::FailingOver)
        })
        .await?;
    let took = killed.elapsed();
    let s1 = after.shard(ShardId(1)).expect("shard 1");
    assert_eq!(s1.term, 2, "{s1:?}");
    assert_eq!(s1.failovers, 1);
    assert!(s1.last_failover_ms.is_some());
    let new = after.primary(ShardId(1)).expect("primary").name.clone();
    eprintln!("failover of {old} to {new} in {took:?}");
    // Shard 2 untouched.
    assert_eq!(after.shard(ShardId(2)).map(|s| s.term), Some(1));

    let c = d.connect_node(&new).await?;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 100);
    c.execute("INSERT INTO t VALUES (101)", &[]).await?;

    // Rebuilt and back in service, streaming from the new primary; the shard is ok.
    let back = d.wait_redundant(REBUILD).await?;
    let oldnode = back.nodes.iter().find(|n| n.name == old).expect("old node");
    assert_eq!(oldnode.state, NodeState::Healthy);
    assert_eq!(oldnode.role, pgshard_catalog::NodeRole::Replica);
    let standbys: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(standbys, 2);
    let o = d.connect_node(&old).await?;
    let n: i64 = o.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert!(n >= 100);
    Ok(())
}

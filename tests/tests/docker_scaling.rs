//! Online bucket moves on the Docker runtime (SPEC §9, §11; issue 12): the grow/shrink
//! of `tests/tests/scaling.rs` with every instance a container. shardd (in the test
//! process) provisions the new shard's container and volume, copies the schema to it,
//! moves its share of the buckets while clients write through a router, then drains it
//! and removes its container and volume.
//!
//! The PostgreSQL image is built offline on first use (`docker/build-image.sh`, minutes
//! on a fresh machine). Without an answering engine the test prints why and passes.

use pgshard_catalog::moves::MoveState;
use pgshard_catalog::ShardId;
use pgshard_shardd::runtime::docker::{DockerRuntime, LABEL_CLUSTER, LABEL_SHARD};
use pgshard_tests::scaling::{
    acked_values, balances, check_bumps, check_clean, check_no_leftovers, check_placement,
    expected_balances, expected_values, scale, wait_moves, Load, ACCOUNTS, MOVES, START_BALANCE,
};
use pgshard_tests::{TestClusterOptions, TestDaemon};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 64;

/// Run a docker CLI command; its trimmed stdout lines (none on failure).
fn docker_cli(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Containers and volumes carrying every label of `filters`, as the docker CLI lists
/// them (independently of the runtime).
fn labelled(filters: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (kind, mut args) in [
        ("container", vec!["ps", "-a", "--format", "{{.Names}}"]),
        ("volume", vec!["volume", "ls", "--format", "{{.Name}}"]),
    ] {
        for f in filters {
            args.extend(["--filter", f.as_str()]);
        }
        found.extend(docker_cli(&args).into_iter().map(|n| format!("{kind} {n}")));
    }
    found
}

/// Removes everything labelled with the test's cluster when dropped (also on panic).
struct Cleanup {
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_CLUSTER}={}", self.cluster);
        let containers = docker_cli(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            docker_cli(&args);
        }
        let volumes = docker_cli(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker_cli(&args);
        }
        let networks = docker_cli(&["network", "ls", "-q", "--filter", &filter]);
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            docker_cli(&args);
        }
    }
}

/// Grow 2 → 3 (`add_shard`) and shrink 3 → 2 (`remove_shard 3`) over shardd's HTTP API
/// on the Docker runtime while clients insert, update and transfer through a router:
/// 0 client errors; every acknowledged row exactly once, on the shard its bucket names,
/// with the value its acknowledged updates gave it; every balance as the acknowledged
/// transfers left it; nothing of the moves left on any instance; the removed shard's
/// containers and volumes gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_add_and_remove_shard_under_load() -> anyhow::Result<()> {
    let version = match DockerRuntime::ping().await {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "SKIPPED docker_add_and_remove_shard_under_load: no Docker engine answers ({e})"
            );
            return Ok(());
        }
    };
    let cluster = format!(
        "pgshard-t-scale-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    );
    // First declared, dropped last: after the daemon and its router.
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let name = cluster.clone();
    let t = Instant::now();
    let d = TestDaemon::start(
        TestClusterOptions {
            shards: 2,
            replicas: 0,
            buckets: BUCKETS,
            tables: vec![
                pgshard_tests::distributed("acked", "id", "bigint"),
                pgshard_tests::distributed("accounts", "id", "bigint"),
                pgshard_tests::distributed("tallies", "id", "bigint"),
            ],
            ..Default::default()
        },
        move |c| {
            c.cluster.name = name;
            c.cluster.backend = pgshard_catalog::config::Backend::Docker;
        },
    )
    .await?;
    eprintln!(
        "engine {version}: cluster {cluster} up in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let router = d.router().await?;
    Load::prepare(&router).await?;
    let load = Load::start(&router, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // --- grow 2 → 3 -------------------------------------------------------------------
    let before = d.catalog().await?;
    let t = Instant::now();
    let ids = scale(&d, json!({"op": "add_shard", "replicas": 0})).await?;
    let provisioned = t.elapsed();
    assert!(!ids.is_empty());
    let grown = wait_moves(&d).await?;
    let grow_took = t.elapsed();
    let after = d.catalog().await?;
    assert_eq!(after.shard_ids(), [ShardId(1), ShardId(2), ShardId(3)]);
    let on3 = after
        .bucket_map
        .iter()
        .filter(|o| **o == ShardId(3))
        .count();
    assert_eq!(on3, (BUCKETS / 3) as usize, "shard 3 got its share");
    for (b, (old, new)) in before.bucket_map.iter().zip(&after.bucket_map).enumerate() {
        assert!(
            old == new || *new == ShardId(3),
            "bucket {b} moved {old} → {new}"
        );
    }
    let shard3 = [
        format!("label={LABEL_CLUSTER}={cluster}"),
        format!("label={LABEL_SHARD}=3"),
    ];
    let made = labelled(&shard3);
    assert!(
        made.iter().any(|n| n.starts_with("container "))
            && made.iter().any(|n| n.starts_with("volume ")),
        "shard 3's container and volume: {made:?}"
    );
    let old_primary = d.spec(&d.primary_of(3).await?)?;

    // --- shrink 3 → 2 -----------------------------------------------------------------
    let t = Instant::now();
    let ids = scale(&d, json!({"op": "remove_shard", "shard": 3})).await?;
    assert!(!ids.is_empty());
    let all = wait_moves(&d).await?;
    let c = d
        .wait_catalog("shard 3 decommissioned", MOVES, |c| {
            c.shard(ShardId(3)).is_none()
        })
        .await?;
    let shrink_took = t.elapsed();
    assert!(!c.bucket_map.contains(&ShardId(3)), "shard 3 owns buckets");
    assert!(c.nodes.iter().all(|n| n.shard != Some(ShardId(3))));
    let max = pgshard_catalog::placement::max_per_shard(BUCKETS, 2) as usize;
    for s in [1, 2] {
        assert!(c.bucket_map.iter().filter(|o| **o == ShardId(s)).count() <= max);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;

    let done = all.iter().filter(|m| m.1 == MoveState::Done).count();
    let rows: i64 = all.iter().map(|m| m.2).sum();
    let mut freeze: Vec<i64> = all.iter().filter_map(|m| m.3).collect();
    freeze.sort();
    eprintln!(
        "docker: add-shard {:.1}s (provisioning {:.1}s), remove-shard {:.1}s; {} moves ({} growing), {done} done, {} rolled back and retried, {rows} rows moved; freeze per move p50 {:?} ms, max {:?} ms; {} inserts, {} updates, {} transfers, {} multi-shard reads checked",
        grow_took.as_secs_f64(),
        provisioned.as_secs_f64(),
        shrink_took.as_secs_f64(),
        all.len(),
        grown.len(),
        all.len() - done,
        freeze.get(freeze.len() / 2),
        freeze.last(),
        report.acked.len(),
        report.updated.len(),
        report.transfers,
        report.reads
    );
    assert!(
        report.errors.is_empty(),
        "client errors: {:?}",
        report.errors
    );
    assert!(
        report.acked.len() > 50 && report.transfers > 10 && report.reads > 10,
        "the load did not run"
    );
    for (id, state, rows, _) in &all {
        assert!(
            *state == MoveState::Done || (*state == MoveState::Aborted && *rows == 0),
            "move {id}: {state}"
        );
    }

    // Every acknowledged row once, on its bucket's shard, with its updates.
    let mut acked = report.acked.clone();
    acked.sort();
    assert_eq!(
        check_placement(&d, "acked").await?,
        acked,
        "acknowledged rows lost or extra rows"
    );
    check_placement(&d, "accounts").await?;
    check_bumps(&router, &report).await?;
    let want = expected_values(&report);
    let have = acked_values(&d).await?;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(id, v)| have.get(id) != Some(v))
        .map(|(id, v)| (*id, *v, have.get(id).copied()))
        .collect();
    assert!(wrong.is_empty(), "(id, v wanted, v found): {wrong:?}");
    assert_eq!(
        have.values().map(|v| i64::from(*v)).sum::<i64>(),
        report.updated.len() as i64,
        "updates lost or doubled"
    );
    let balances = balances(&d).await?;
    assert_eq!(balances, expected_balances(&report), "balances");
    assert_eq!(
        balances.values().sum::<i64>(),
        ACCOUNTS * START_BALANCE,
        "transfers lost or doubled"
    );
    // Through the router too.
    let c = router.connect().await?;
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n as usize, acked.len());

    check_clean(&d).await?;
    check_no_leftovers(&d, Duration::from_secs(30)).await?;
    // The removed shard: its instance stopped, its container and volume gone.
    assert!(
        tokio_postgres::connect(&old_primary.connstr("postgres"), tokio_postgres::NoTls)
            .await
            .is_err(),
        "shard 3's primary still answers"
    );
    let left = labelled(&shard3);
    assert!(left.is_empty(), "shard 3 left behind: {left:?}");
    let kept = labelled(&[
        format!("label={LABEL_CLUSTER}={cluster}"),
        format!("label={LABEL_SHARD}=1"),
    ]);
    assert!(
        kept.iter().any(|n| n.starts_with("container ")),
        "shard 1's container: {kept:?}"
    );
    Ok(())
}

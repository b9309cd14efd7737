//! The admin console's `SHOW BUCKETS` and `SHOW STATS`, and the Prometheus endpoint
//! (SPEC §12) on a 2-shard cluster: the bucket runs cover every bucket once and agree
//! with `SHOW SHARDS`; the counters move with what the session did (single-shard
//! statements, a fan-out read, a multi-shard write, a two-phase commit, a rollback, a
//! refusal), and `GET /metrics` reports the same values and the pools.

use pgshard_tests::{distributed, two_shards, TestRouter};
use std::collections::HashMap;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows as maps from column name to value.
async fn table(client: &Client, sql: &str) -> anyhow::Result<Vec<HashMap<String, String>>> {
    let mut header = Vec::new();
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                header = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => out.push(
                header
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (h.clone(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(out)
}

async fn stats(admin: &Client) -> anyhow::Result<HashMap<String, u64>> {
    Ok(table(admin, "SHOW STATS")
        .await?
        .into_iter()
        .map(|r| (r["stat"].clone(), r["value"].parse().unwrap_or(u64::MAX)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_buckets_and_show_stats() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("st", "id", "bigint")]).await?;
    let router = TestRouter::start_with(
        &cluster,
        pgshard_catalog::config::RouterConfig {
            metrics_listen: Some("127.0.0.1:0".into()),
            ..cluster.config().router.clone()
        },
    )
    .await?;
    let admin = router.connect_admin().await?;

    // Bucket runs: contiguous from 0, no gap or overlap, counts per shard as SHOW SHARDS.
    let runs = table(&admin, "SHOW BUCKETS").await?;
    assert!(runs.len() >= 2, "{runs:?}");
    let mut next = 0u64;
    let mut per_shard: HashMap<String, u64> = HashMap::new();
    for r in &runs {
        let (first, last, n): (u64, u64, u64) = (
            r["first_bucket"].parse()?,
            r["last_bucket"].parse()?,
            r["buckets"].parse()?,
        );
        assert_eq!(first, next, "{runs:?}");
        assert_eq!(last - first + 1, n, "{r:?}");
        assert!(r["primary"].ends_with("-node1"), "{r:?}");
        *per_shard.entry(r["shard"].clone()).or_default() += n;
        next = last + 1;
    }
    let shards = table(&admin, "SHOW SHARDS").await?;
    let total: u64 = shards
        .iter()
        .map(|s| s["buckets"].parse::<u64>().unwrap_or(0))
        .sum();
    assert_eq!(next, total);
    for s in &shards {
        assert_eq!(
            per_shard.get(&s["shard"]).copied(),
            s["buckets"].parse().ok(),
            "{s:?}"
        );
    }

    let before = stats(&admin).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE st (id bigint PRIMARY KEY, v int)")
        .await?;
    for id in 1..=10 {
        c.batch_execute(&format!("INSERT INTO st VALUES ({id}, 0)"))
            .await?;
    }
    let n: i64 = c.query_one("SELECT count(*) FROM st", &[]).await?.get(0);
    assert_eq!(n, 10);
    c.batch_execute("UPDATE st SET v = 1").await?; // every shard: two-phase commit
    c.batch_execute("BEGIN").await?;
    c.batch_execute("UPDATE st SET v = 2").await?;
    c.batch_execute("ROLLBACK").await?;
    // A parameter in the merge step: answered by collecting the table on one shard.
    let rows = c
        .query(
            "SELECT v, count(*) FROM st GROUP BY v HAVING count(*) > $1",
            &[&1i64],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    // Refused: a system column, which a collected copy would not reproduce.
    let e = c
        .query("SELECT a.ctid FROM st a JOIN st b ON a.v = b.id", &[])
        .await
        .expect_err("system column");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    let after = stats(&admin).await?;
    let grew = |name: &str| after[name].saturating_sub(before[name]);
    assert_eq!(grew("statements_all_shards"), 1, "{after:?}"); // CREATE TABLE
    assert!(grew("statements_single_shard") >= 10, "{after:?}"); // the INSERTs
    assert!(grew("statements_fanout_read") >= 1, "{after:?}");
    assert!(grew("statements_multi_shard_write") >= 2, "{after:?}");
    assert!(
        grew("transactions_spanning_two_phase_commit") >= 1,
        "{after:?}"
    );
    assert!(grew("transactions_spanning_rolled_back") >= 1, "{after:?}");
    assert_eq!(grew("statements_unsupported"), 1, "{after:?}");
    assert!(after["client_connections_total"] >= 2, "{after:?}");
    assert!(after["clients_connected"] >= 2, "{after:?}");

    // Prometheus: the same counters (nothing ran since SHOW STATS), and the pools.
    let addr = router.metrics_addr().expect("metrics_listen set");
    let resp = reqwest::get(format!("http://{addr}/metrics")).await?;
    assert!(resp.status().is_success());
    let text = resp.text().await?;
    let sample = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(
        sample("pgshard_router_statements_total{route=\"fanout_read\"}"),
        Some(after["statements_fanout_read"]),
        "{text}"
    );
    assert_eq!(
        sample("pgshard_router_statements_unsupported_total"),
        Some(after["statements_unsupported"]),
        "{text}"
    );
    assert_eq!(
        sample("pgshard_router_spanning_transactions_total{outcome=\"two_phase_commit\"}"),
        Some(after["transactions_spanning_two_phase_commit"]),
        "{text}"
    );
    assert!(
        text.contains("# TYPE pgshard_router_statements_total counter"),
        "{text}"
    );
    let in_use = text
        .lines()
        .filter(|l| {
            l.starts_with("pgshard_router_pool_connections{") && l.contains("state=\"in_use\"")
        })
        .count();
    assert_eq!(in_use, 2, "one pool per shard primary:\n{text}");
    // Every answered request is in the latency histogram (one count per Query or
    // batch; +Inf holds them all).
    let count = sample("pgshard_router_request_duration_seconds_count").unwrap_or(0);
    assert!(count >= 15, "{text}");
    assert_eq!(
        sample("pgshard_router_request_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(count),
        "{text}"
    );
    Ok(())
}

/// Queueing for a pooled backend is not a failover hold: a statement that waits longer
/// than the hold's retry interval (100 ms) for the only backend of its pool, while the
/// shard's primary never changes, leaves `statements_held_failover` at 0 (it counted
/// one, and logged "held through a change of primary" at INFO for every such statement
/// of a `pgbench -c 1000` run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_pool_is_not_a_failover_hold() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("ph", "id", "bigint")]).await?;
    let router = TestRouter::start_with(
        &cluster,
        pgshard_catalog::config::RouterConfig {
            pool_size: 1,
            ..cluster.config().router.clone()
        },
    )
    .await?;
    let admin = router.connect_admin().await?;
    let holder = router.connect().await?;
    holder
        .simple_query("CREATE TABLE ph (id bigint PRIMARY KEY)")
        .await?;
    // A transaction on shard 1 keeps its pool's only backend.
    holder.simple_query("BEGIN").await?;
    holder
        .simple_query("SELECT * FROM ph WHERE id = 1 /* pgshard: shard=1 */")
        .await?;
    let waiter = router.connect().await?;
    let queued = tokio::spawn(async move {
        waiter
            .simple_query("SELECT count(*) FROM ph /* pgshard: shard=1 */")
            .await
            .map(|_| ())
    });
    // Until the second client queues for the backend…
    loop {
        let waiting: u64 = table(&admin, "SHOW POOLS")
            .await?
            .iter()
            .filter_map(|r| r.get("waiting").and_then(|w| w.parse::<u64>().ok()))
            .sum();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // … and for longer than the hold's retry interval (the wait is what is measured).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.simple_query("COMMIT").await?;
    queued.await??;
    let s = stats(&admin).await?;
    assert_eq!(s["statements_held_failover"], 0, "{s:?}");
    Ok(())
}

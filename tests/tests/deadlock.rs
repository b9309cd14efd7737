//! Deadlocks spanning shards (SPEC §7, `router/src/deadlock.rs`) end to end: a 2-shard
//! cluster, a router with its catalog connection (two-phase commit on) and its
//! distributed deadlock detector at the default interval. PostgreSQL sees only half of
//! each cycle on each shard; the router must cancel one transaction with 40P01 so the
//! other finishes, and nothing may stay prepared or hang.

use pgshard_catalog::{KeyValue, ShardId};
use pgshard_tests::{distributed, two_shards, TestCluster, TestRouter};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

/// How many times each scenario runs in one test (cheap: about a second each).
const ROUNDS: usize = 5;

/// Bounds every wait of the test so a missed deadlock fails instead of hanging (not a
/// timing assertion: the detector acts within about two of its 1 s intervals).
const PATIENCE: Duration = Duration::from_secs(60);

/// A key of `table`'s shard-key space that lives on `shard`.
fn key_on(cluster: &TestCluster, shard: u32) -> i64 {
    (1..10_000)
        .find(|&k| cluster.catalog().shard_of(&KeyValue::Int(k)) == Some(ShardId(shard)))
        .expect("both shards own buckets")
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Waits until a backend on `node` waits for a lock (a statement sent through the
/// router has reached its lock wait).
async fn lock_wait_on(cluster: &TestCluster, node: &str) -> anyhow::Result<()> {
    let c = cluster.connect_node(node).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await?
            .get(0);
        if waiting > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no lock wait on {node}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The single value of a one-row, one-column read through the router.
async fn value(c: &Client, sql: &str) -> anyhow::Result<i64> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("").parse()?);
        }
    }
    anyhow::bail!("no row for {sql}")
}

async fn stats(admin: &Client) -> anyhow::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for m in admin.simple_query("SHOW STATS").await? {
        if let SimpleQueryMessage::Row(r) = m {
            let stat = r.get(0).unwrap_or("").to_string();
            out.insert(stat, r.get(1).unwrap_or("").parse().unwrap_or(u64::MAX));
        }
    }
    Ok(out)
}

async fn no_prepared(cluster: &TestCluster) -> anyhow::Result<()> {
    cluster
        .value_on_each::<i64>(&PRIMARIES, "SELECT count(*) FROM pg_prepared_xacts")
        .await?;
    Ok(())
}

async fn settle<T>(
    task: tokio::task::JoinHandle<Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<Result<T, tokio_postgres::Error>> {
    Ok(tokio::time::timeout(PATIENCE, task)
        .await
        .map_err(|_| anyhow::anyhow!("a statement hung: deadlock not broken"))??)
}

/// Two explicit transactions move amounts between a key on shard 1 and one on shard 2
/// in opposite orders, each holding its first lock before asking for the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_transactions_one_gets_40p01() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dl_acct", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let setup = router.connect().await?;
    setup
        .simple_query("CREATE TABLE dl_acct (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await?;
    let (k1, k2) = (key_on(&cluster, 1), key_on(&cluster, 2));
    for k in [k1, k2] {
        setup
            .simple_query(&format!("INSERT INTO dl_acct (id, n) VALUES ({k}, 100)"))
            .await?;
    }
    let admin = router.connect_admin().await?;
    let mut victims = 0;
    for round in 0..ROUNDS {
        let (a1, a2) = (
            value(&setup, &format!("SELECT n FROM dl_acct WHERE id = {k1}")).await?,
            value(&setup, &format!("SELECT n FROM dl_acct WHERE id = {k2}")).await?,
        );
        // T1 (simple protocol): k1 -= 10, then k2 += 10.
        let t1 = Arc::new(router.connect().await?);
        t1.simple_query(&format!(
            "BEGIN; UPDATE dl_acct SET n = n - 10 WHERE id = {k1}"
        ))
        .await?;
        // T2 (extended protocol): k2 -= 5, then k1 += 5.
        let t2 = Arc::new(router.connect().await?);
        t2.simple_query("BEGIN").await?;
        t2.execute("UPDATE dl_acct SET n = n - 5 WHERE id = $1", &[&k2])
            .await?;
        let second1 = {
            let t1 = t1.clone();
            let sql = format!("UPDATE dl_acct SET n = n + 10 WHERE id = {k2}");
            tokio::spawn(async move { t1.simple_query(&sql).await.map(|_| ()) })
        };
        lock_wait_on(&cluster, PRIMARIES[1]).await?;
        let closed = std::time::Instant::now();
        let second2 = {
            let t2 = t2.clone();
            tokio::spawn(async move {
                t2.execute("UPDATE dl_acct SET n = n + 5 WHERE id = $1", &[&k1])
                    .await
                    .map(|_| ())
            })
        };
        // Both settle before either client ends its transaction: the victim's other
        // shard rolls back at its error (its locks go, as a failed PostgreSQL
        // transaction's do), so the survivor's waiting statement goes on.
        let (r1, r2) = (settle(second1).await?, settle(second2).await?);
        let resolved = closed.elapsed();
        let (e, t1_won) = match (r1, r2) {
            (Ok(()), Err(e)) => (e, true),
            (Err(e), Ok(())) => (e, false),
            (r1, r2) => panic!("round {round}: exactly one must fail: {r1:?} {r2:?}"),
        };
        assert_eq!(sqlstate(&e).as_deref(), Some("40P01"), "round {round}: {e}");
        let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
        assert!(detail.contains("shards 1 and 2"), "round {round}: {detail}");
        let (victim, survivor) = if t1_won { (&t2, &t1) } else { (&t1, &t2) };
        // A failed transaction's COMMIT rolls back, as in PostgreSQL.
        let end = if round % 2 == 0 { "ROLLBACK" } else { "COMMIT" };
        victim.simple_query(end).await?;
        survivor.simple_query("COMMIT").await?;
        victims += 1;
        eprintln!(
            "round {round}: t1 committed {t1_won}, victim ended with {end}, \
             both statements answered {resolved:?} after the cycle closed"
        );
        let (b1, b2) = (
            value(&setup, &format!("SELECT n FROM dl_acct WHERE id = {k1}")).await?,
            value(&setup, &format!("SELECT n FROM dl_acct WHERE id = {k2}")).await?,
        );
        let expected = if t1_won {
            (a1 - 10, a2 + 10)
        } else {
            (a1 + 5, a2 - 5)
        };
        assert_eq!((b1, b2), expected, "round {round}: t1 committed: {t1_won}");
        no_prepared(&cluster).await?;
    }
    let s = stats(&admin).await?;
    assert_eq!(s.get("distributed_deadlocks"), Some(&victims), "{s:?}");
    Ok(())
}

/// The case seen in the field: a multi-shard autocommit `UPDATE … SET n = n + 1` (run
/// shard after shard in the router's own transaction) against an explicit transaction
/// that locked a row on the second shard first and then wants one on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_write_against_a_transaction_never_hangs() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dl_tally", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let setup = router.connect().await?;
    setup
        .simple_query("CREATE TABLE dl_tally (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await?;
    let (k1, k2) = (key_on(&cluster, 1), key_on(&cluster, 2));
    for id in (1..=20).chain([k1, k2]) {
        setup
            .simple_query(&format!(
                "INSERT INTO dl_tally (id, n) VALUES ({id}, 0) ON CONFLICT DO NOTHING"
            ))
            .await?;
    }
    let rows = value(&setup, "SELECT count(*) FROM dl_tally").await?;
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let before = value(&setup, "SELECT sum(n) FROM dl_tally").await?;
        let x = Arc::new(router.connect().await?);
        x.simple_query(&format!(
            "BEGIN; UPDATE dl_tally SET n = n + 100 WHERE id = {k2}"
        ))
        .await?;
        let w = router.connect().await?;
        // Simple protocol in even rounds, bound parameters (extended) in odd ones.
        let extended = round % 2 == 1;
        let write = tokio::spawn(async move {
            if extended {
                w.execute("UPDATE dl_tally SET n = n + $1", &[&1i64])
                    .await
                    .map(|_| ())
            } else {
                w.simple_query("UPDATE dl_tally SET n = n + 1")
                    .await
                    .map(|_| ())
            }
        });
        lock_wait_on(&cluster, PRIMARIES[1]).await?;
        let second = {
            let x = x.clone();
            let sql = format!("UPDATE dl_tally SET n = n + 100 WHERE id = {k1}");
            tokio::spawn(async move { x.simple_query(&sql).await.map(|_| ()) })
        };
        let (rx, rw) = (settle(second).await?, settle(write).await?);
        for e in rx.as_ref().err().into_iter().chain(rw.as_ref().err()) {
            assert_eq!(sqlstate(e).as_deref(), Some("40P01"), "round {round}: {e}");
            let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
            assert!(detail.contains("shards 1 and 2"), "round {round}: {detail}");
        }
        let x_commits = rx.is_ok();
        x.simple_query(if x_commits { "COMMIT" } else { "ROLLBACK" })
            .await?;
        let after = value(&setup, "SELECT sum(n) FROM dl_tally").await?;
        let expected = before + if x_commits { 200 } else { 0 } + if rw.is_ok() { rows } else { 0 };
        assert_eq!(
            after,
            expected,
            "round {round}: transaction ok {x_commits}, write ok {}",
            rw.is_ok()
        );
        no_prepared(&cluster).await?;
        outcomes.push((x_commits, rw.is_ok()));
    }
    assert!(
        outcomes.iter().all(|&(x, w)| x || w),
        "somebody finishes every round: {outcomes:?}"
    );
    eprintln!("(transaction committed, multi-shard write committed) per round: {outcomes:?}");
    Ok(())
}

/// A deadlock within one shard is PostgreSQL's own to break (its detector, its 40P01):
/// the router's detector sees the cycle on one shard and leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_on_one_shard_is_left_to_postgresql() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dl_one", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let setup = router.connect().await?;
    setup
        .simple_query("CREATE TABLE dl_one (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await?;
    let on_one: Vec<i64> = (1..10_000)
        .filter(|&k| cluster.catalog().shard_of(&KeyValue::Int(k)) == Some(ShardId(1)))
        .take(2)
        .collect();
    let (ka, kb) = (on_one[0], on_one[1]);
    for k in [ka, kb] {
        setup
            .simple_query(&format!("INSERT INTO dl_one (id, n) VALUES ({k}, 0)"))
            .await?;
    }
    let admin = router.connect_admin().await?;
    let t1 = Arc::new(router.connect().await?);
    let t2 = Arc::new(router.connect().await?);
    t1.simple_query(&format!("BEGIN; UPDATE dl_one SET n = 1 WHERE id = {ka}"))
        .await?;
    t2.simple_query(&format!("BEGIN; UPDATE dl_one SET n = 2 WHERE id = {kb}"))
        .await?;
    let second1 = {
        let t1 = t1.clone();
        let sql = format!("UPDATE dl_one SET n = 1 WHERE id = {kb}");
        tokio::spawn(async move { t1.simple_query(&sql).await.map(|_| ()) })
    };
    lock_wait_on(&cluster, PRIMARIES[0]).await?;
    let second2 = {
        let t2 = t2.clone();
        let sql = format!("UPDATE dl_one SET n = 2 WHERE id = {ka}");
        tokio::spawn(async move { t2.simple_query(&sql).await.map(|_| ()) })
    };
    let (r1, r2) = (settle(second1).await?, settle(second2).await?);
    let failed: Vec<&tokio_postgres::Error> = r1
        .as_ref()
        .err()
        .into_iter()
        .chain(r2.as_ref().err())
        .collect();
    assert_eq!(failed.len(), 1, "PostgreSQL cancels one: {r1:?} {r2:?}");
    let e = failed[0];
    assert_eq!(sqlstate(e).as_deref(), Some("40P01"), "{e}");
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
    assert!(
        !detail.contains("Distributed"),
        "PostgreSQL's own: {detail}"
    );
    for t in [&t1, &t2] {
        t.simple_query("ROLLBACK").await?;
    }
    let s = stats(&admin).await?;
    assert_eq!(s.get("distributed_deadlocks"), Some(&0), "{s:?}");
    Ok(())
}

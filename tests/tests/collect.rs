//! Reads answered by collecting their distributed tables on one shard (issue 15), end
//! to end through a router on a 2-shard cluster: the pgbench example, the bound
//! `router.max_intermediate_bytes` (SQLSTATE 54000 naming it, the session usable
//! afterwards), and no temporary table left behind on the pooled backends.

use pgshard_tests::{distributed, two_shards, TestRouter};
use tokio_postgres::SimpleQueryMessage;

async fn rows(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_reads_are_bounded_and_leave_nothing_behind() -> anyhow::Result<()> {
    let cluster = two_shards(vec![
        distributed("pgbench_tellers", "tid", "integer"),
        distributed("pgbench_branches", "bid", "integer"),
    ])
    .await?;
    let mut config = cluster.config().router.clone();
    config.max_intermediate_bytes = 64 * 1024;
    let router = TestRouter::start_with(&cluster, config).await?;
    let client = router.connect().await?;
    for sql in [
        "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))",
        "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))",
        // Staged INSERT … SELECTs: rows computed on one shard, split by key.
        "INSERT INTO pgbench_branches (bid, bbalance) SELECT g, 0 FROM generate_series(1, 3) g",
        "INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, 30) g",
    ] {
        client.batch_execute(sql).await?;
    }
    // The example: two independent scalar subqueries over distributed tables.
    let got = rows(
        &client,
        "SELECT (SELECT count(*) FROM pgbench_tellers), (SELECT count(*) FROM pgbench_branches)",
    )
    .await?;
    assert_eq!(got, vec![vec!["30".to_string(), "3".to_string()]]);
    // A join not on the shard key, through the extended protocol with a parameter.
    let joined = client
        .query(
            "SELECT b.bid, count(t.tid) FROM pgbench_branches b JOIN pgbench_tellers t ON t.bid = b.bid WHERE b.bid >= $1 GROUP BY b.bid ORDER BY b.bid",
            &[&2i32],
        )
        .await?;
    let counts: Vec<(i32, i64)> = joined.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(counts, vec![(2, 10), (3, 10)]);
    // Past the bound: 54000 naming the setting; the session goes on.
    client
        .batch_execute(
            "INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT g, 1, 0 FROM generate_series(31, 3000) g",
        )
        .await?;
    let err = client
        .simple_query("SELECT (SELECT count(*) FROM pgbench_tellers), (SELECT count(*) FROM pgbench_branches)")
        .await
        .expect_err("more than max_intermediate_bytes collected");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "54000", "{db:?}");
    assert!(
        db.message().contains("router.max_intermediate_bytes"),
        "{db:?}"
    );
    let got = rows(&client, "SELECT count(*) FROM pgbench_branches").await?;
    assert_eq!(got, vec![vec!["3".to_string()]]);
    // No collected table is left on any shard's pooled backends.
    for shard in cluster.catalog().shard_ids() {
        let primary = cluster
            .catalog()
            .primary(shard)
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow::anyhow!("no primary for shard {shard}"))?;
        let direct = cluster.connect_node(&primary).await?;
        let left = direct
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'pgshard_ir_%' OR relname = 'pgshard_ins'",
                &[],
            )
            .await?;
        let n: i64 = left.get(0);
        assert_eq!(n, 0, "temporary tables left on shard {shard}");
    }
    Ok(())
}

/// Runs `sql`, which must fail with 0A000 naming `table`, within a minute (a wait for a
/// lock that never comes would otherwise hang the test).
async fn refused_naming(
    client: &tokio_postgres::Client,
    sql: &str,
    table: &str,
) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), client.simple_query(sql))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 60 s to {sql}"))?;
    let err = answer.expect_err("refused");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{sql}: {db:?}");
    assert!(
        db.message().contains(&format!("distributed table {table}"))
            && db.message().contains("exclusively"),
        "{sql}: {db:?}"
    );
    Ok(())
}

/// Inside a transaction block that holds ACCESS EXCLUSIVE on a table (TRUNCATE, LOCK
/// TABLE), a statement that would collect that table on the finishing session — which
/// works outside the transaction and needs ACCESS SHARE on it — is refused with 0A000
/// naming the table. Before the fix it waited forever for the transaction's own lock,
/// and the transaction's backends kept the lock after the client left, blocking every
/// other client. Tables the transaction did not lock still collect in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collecting_a_table_the_transaction_locked_exclusively_is_refused() -> anyhow::Result<()> {
    let cluster = two_shards(vec![
        distributed("t", "id", "integer"),
        distributed("u", "id", "integer"),
        distributed("w", "id", "integer"),
    ])
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let client = router.connect().await?;
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, {})", i % 5)).collect();
    let values = values.join(", ");
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY, v int)".to_string(),
        "CREATE TABLE u (id int PRIMARY KEY, v int)".to_string(),
        "CREATE TABLE w (id int PRIMARY KEY, v int)".to_string(),
        format!("INSERT INTO t VALUES {values}"),
        format!("INSERT INTO u VALUES {values}"),
    ] {
        client.batch_execute(&sql).await?;
    }
    let join = "SELECT count(*) FROM t JOIN u ON t.v = u.v";
    assert_eq!(rows(&client, join).await?, vec![vec!["80".to_string()]]);

    // (BEGIN on its own: a Query that runs on every shard may not leave a block open.)
    client.batch_execute("BEGIN").await?;
    client.batch_execute("TRUNCATE u").await?;
    refused_naming(&client, join, "u").await?;
    client.batch_execute("ROLLBACK").await?;

    client.batch_execute("BEGIN").await?;
    client
        .batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await?;
    refused_naming(&client, join, "t").await?;
    client.batch_execute("ROLLBACK").await?;

    // A data-modifying WITH across shards on the locked table.
    client.batch_execute("BEGIN").await?;
    client.batch_execute("TRUNCATE u").await?;
    refused_naming(
        &client,
        "WITH d AS (DELETE FROM u RETURNING id) SELECT count(*) FROM d",
        "u",
    )
    .await?;
    client.batch_execute("ROLLBACK").await?;

    // Another table locked: the collection goes on inside the transaction.
    client.batch_execute("BEGIN").await?;
    client.batch_execute("TRUNCATE w").await?;
    assert_eq!(rows(&client, join).await?, vec![vec!["80".to_string()]]);
    client.batch_execute("COMMIT").await?;

    // Nothing is left locked: a second client reads and writes both tables.
    let other = router.connect().await?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        other.batch_execute("DELETE FROM u WHERE id = 1").await?;
        rows(&other, join).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("tables still locked"))??;
    assert_eq!(answer, vec![vec!["76".to_string()]]);
    Ok(())
}

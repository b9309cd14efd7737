//! Data-modifying CTEs across shards (issue 15) through a driver (tokio-postgres: the
//! extended protocol, described before it runs), end to end on a 2-shard cluster: the
//! write runs once and the main query reads its RETURNING rows, a transaction block
//! rolls it back, parameters are refused before anything is written, and a write whose
//! RETURNING rows exceed `router.max_intermediate_bytes` rolls back with 54000. No
//! temporary table is left on the pooled backends.

use pgshard_tests::{distributed, two_shards, TestRouter};

async fn count(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM cwt", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cte_writes_through_a_driver() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("cwt", "id", "bigint")]).await?;
    let mut config = cluster.config().router.clone();
    config.max_intermediate_bytes = 64 * 1024;
    let router = TestRouter::start_with(&cluster, config).await?;
    let mut client = router.connect().await?;
    for sql in [
        "CREATE TABLE cwt (id bigint PRIMARY KEY, v int NOT NULL, filler text)",
        "INSERT INTO cwt (id, v) SELECT g, g FROM generate_series(1, 100) g",
    ] {
        client.batch_execute(sql).await?;
    }
    // The write on both shards, once; the main query aggregates its rows.
    let row = client
        .query_one(
            "WITH d AS (DELETE FROM cwt WHERE v > 90 RETURNING id, v) SELECT count(*), sum(v) FROM d",
            &[],
        )
        .await?;
    let (n, sum): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((n, sum), (10, (91..=100).sum::<i64>()));
    assert_eq!(count(&client).await?, 90);
    // Inside a transaction block: the write joins it, and goes with its ROLLBACK.
    let tx = client.transaction().await?;
    let min: i32 = tx
        .query_one(
            "WITH u AS (UPDATE cwt SET v = v + 1000 WHERE v <= 10 RETURNING v) SELECT min(v) FROM u",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(min, 1001);
    tx.rollback().await?;
    let max: i32 = client
        .query_one("SELECT max(v) FROM cwt", &[])
        .await?
        .get(0);
    assert_eq!(max, 90);
    // Parameters: refused (COPY takes none) before anything is written.
    let err = client
        .query(
            "WITH d AS (DELETE FROM cwt WHERE v > $1 RETURNING id) SELECT count(*) FROM d",
            &[&50i32],
        )
        .await
        .expect_err("parameters in a data-modifying WITH across shards");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert_eq!(count(&client).await?, 90);
    // RETURNING rows past the bound: 54000, the write rolled back, the session goes on.
    client
        .batch_execute("UPDATE cwt SET filler = repeat('x', 2000)")
        .await?;
    let err = client
        .query(
            "WITH d AS (DELETE FROM cwt RETURNING *) SELECT count(*) FROM d",
            &[],
        )
        .await
        .expect_err("more than max_intermediate_bytes returned");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "54000", "{db:?}");
    assert_eq!(count(&client).await?, 90);
    // No temporary table is left on any shard's pooled backends.
    for shard in cluster.catalog().shard_ids() {
        let primary = cluster
            .catalog()
            .primary(shard)
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow::anyhow!("no primary for shard {shard}"))?;
        let direct = cluster.connect_node(&primary).await?;
        let left: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname IN ('pgshard_cte', 'pgshard_ins')",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(left, 0, "temporary tables left on shard {shard}");
    }
    Ok(())
}

//! Multi-shard writes through the extended protocol (SPEC §5, §7), as drivers send them:
//! tokio-postgres (Parse/Bind/Describe/Execute/Sync, binary results) through a router
//! on a 2-shard cluster. UPDATE/DELETE without the shard key and reference-table writes
//! with parameters run on every target shard and commit atomically (two-phase commit)
//! outside a transaction block, or join the transaction inside one; RETURNING rows come
//! from every shard in the client's formats; an error on one shard leaves nothing
//! applied anywhere; nothing stays prepared.

use pgshard_tests::{distributed, reference, two_shards, TestCluster, TestRouter};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

/// One bigint straight from each primary, and no prepared transaction left there.
async fn per_shard(cluster: &TestCluster, sql: &str) -> anyhow::Result<Vec<i64>> {
    cluster.value_on_each(&PRIMARIES, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_writes_with_parameters() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("ew", "id", "bigint"), reference("ew_ref")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let mut c = router.connect().await?;
    c.batch_execute("CREATE TABLE ew (id bigint PRIMARY KEY, v int NOT NULL, note text)")
        .await?;
    c.batch_execute("CREATE TABLE ew_ref (k int PRIMARY KEY, name text)")
        .await?;
    for id in 1..=20i64 {
        c.execute("INSERT INTO ew (id, v) VALUES ($1, 0)", &[&id])
            .await?;
    }
    let rows = per_shard(&cluster, "SELECT count(*) FROM ew").await?;
    assert!(rows.iter().all(|&n| n > 0), "rows on both shards: {rows:?}");

    // Autocommit UPDATE without the key: every shard, the count summed.
    let n = c
        .execute("UPDATE ew SET v = $1 WHERE v = $2", &[&5i32, &0i32])
        .await?;
    assert_eq!(n, 20);
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM ew WHERE v = 5").await?,
        rows
    );

    // RETURNING in binary: rows from both shards.
    let returned = c
        .query(
            "UPDATE ew SET v = v + $1 WHERE id <= $2 RETURNING id, v, note",
            &[&1i32, &20i64],
        )
        .await?;
    let mut ids: Vec<i64> = returned.iter().map(|r| r.get(0)).collect();
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>());
    assert!(returned.iter().all(|r| r.get::<_, i32>(1) == 6));
    assert!(returned
        .iter()
        .all(|r| r.get::<_, Option<String>>(2).is_none()));

    // An error on a shard: nothing applied anywhere (v = 6 everywhere still).
    let e = c
        .execute("UPDATE ew SET v = v / $1 WHERE id > $2", &[&0i32, &0i64])
        .await
        .expect_err("division by zero");
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM ew WHERE v = 6").await?,
        rows
    );
    // The session goes on.
    let one: i32 = c
        .query_one("SELECT v FROM ew WHERE id = $1", &[&3i64])
        .await?
        .get(0);
    assert_eq!(one, 6);

    // Inside a transaction block: joined by every shard, rolled back, then committed.
    c.batch_execute("BEGIN").await?;
    let n = c.execute("DELETE FROM ew WHERE v = $1", &[&6i32]).await?;
    assert_eq!(n, 20);
    let left: i64 = c.query_one("SELECT count(*) FROM ew", &[]).await?.get(0);
    assert_eq!(left, 0, "the transaction sees its own delete");
    c.batch_execute("ROLLBACK").await?;
    assert_eq!(per_shard(&cluster, "SELECT count(*) FROM ew").await?, rows);
    let tx = c.build_transaction().start().await?;
    tx.execute("UPDATE ew SET note = $1", &[&"t"]).await?;
    tx.execute("INSERT INTO ew (id, v) VALUES ($1, $2)", &[&100i64, &7i32])
        .await?;
    tx.commit().await?;
    let notes = per_shard(&cluster, "SELECT count(*) FROM ew WHERE note = 't'").await?;
    assert_eq!(notes, rows);
    let total: i64 = c.query_one("SELECT count(*) FROM ew", &[]).await?.get(0);
    assert_eq!(total, 21);

    // Reference table: the same row on every shard, one answer.
    let n = c
        .execute(
            "INSERT INTO ew_ref (k, name) VALUES ($1, $2), ($3, $4)",
            &[&1i32, &"one", &2i32, &"two"],
        )
        .await?;
    assert_eq!(n, 2);
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM ew_ref").await?,
        vec![2, 2]
    );
    let renamed = c
        .query(
            "UPDATE ew_ref SET name = upper(name) WHERE k = $1 RETURNING name",
            &[&2i32],
        )
        .await?;
    assert_eq!(renamed.len(), 1, "one copy's answer");
    assert_eq!(renamed[0].get::<_, String>(0), "TWO");

    // A multi-row INSERT with parameter keys: rows routed at Bind (split across
    // shards when they fall on several; see extended_parity.rs).
    let n = c
        .execute(
            "INSERT INTO ew (id, v) VALUES ($1, 1), ($2, 1)",
            &[&200i64, &201i64],
        )
        .await?;
    assert_eq!(n, 2);

    // A row-limited Execute (a portal read 3 rows at a time) of a multi-shard write
    // with RETURNING: the write runs whole, its rows come in batches, as PostgreSQL
    // hands out a RETURNING portal's rows.
    let tx = c.transaction().await?;
    let update = tx
        .prepare("UPDATE ew SET v = v + 1 WHERE id <= $1 RETURNING id")
        .await?;
    let portal = tx.bind(&update, &[&20i64]).await?;
    let mut ids = Vec::new();
    loop {
        let batch = tx.query_portal(&portal, 3).await?;
        assert!(batch.len() <= 3);
        if batch.is_empty() {
            break;
        }
        ids.extend(batch.iter().map(|r| r.get::<_, i64>(0)));
    }
    tx.commit().await?;
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>());
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM ew WHERE id <= 20 AND v = 7").await?,
        rows
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_through_the_extended_protocol_in_a_transaction_spanning_shards(
) -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("es", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let mut c = router.connect().await?;
    c.batch_execute("CREATE TABLE es (id bigint PRIMARY KEY, v int NOT NULL)")
        .await?;
    let tx = c.build_transaction().start().await?;
    for id in 1..=10i64 {
        tx.execute("INSERT INTO es (id, v) VALUES ($1, 0)", &[&id])
            .await?;
    }
    // Spanning both shards now; SAVEPOINT, a multi-shard write, ROLLBACK TO, RELEASE,
    // all as Parse/Bind/Execute.
    tx.execute("SAVEPOINT s1", &[]).await?;
    assert_eq!(tx.execute("UPDATE es SET v = $1", &[&9i32]).await?, 10);
    tx.execute("ROLLBACK TO SAVEPOINT s1", &[]).await?;
    let nines: i64 = tx
        .query_one("SELECT count(*) FROM es WHERE v = $1", &[&9i32])
        .await?
        .get(0);
    assert_eq!(nines, 0, "rolled back to the savepoint on every shard");
    tx.execute("SAVEPOINT s2", &[]).await?;
    tx.execute("UPDATE es SET v = $1 WHERE v = $2", &[&1i32, &0i32])
        .await?;
    tx.execute("RELEASE SAVEPOINT s2", &[]).await?;
    // An error, then recovery with ROLLBACK TO (the transaction is failed until then).
    tx.execute("SAVEPOINT s3", &[]).await?;
    let e = tx
        .execute("UPDATE es SET v = v / $1", &[&0i32])
        .await
        .expect_err("division by zero");
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
    tx.execute("ROLLBACK TO SAVEPOINT s3", &[]).await?;
    tx.commit().await?;
    let rows = per_shard(&cluster, "SELECT count(*) FROM es").await?;
    assert!(
        rows.iter().all(|&n| n > 0),
        "both shards took part: {rows:?}"
    );
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM es WHERE v = 1").await?,
        per_shard(&cluster, "SELECT count(*) FROM es").await?
    );
    let ones: i64 = c
        .query_one("SELECT count(*) FROM es WHERE v = 1", &[])
        .await?
        .get(0);
    assert_eq!(ones, 10);
    Ok(())
}

/// Pipelined batches (several Executes before one Sync, as psycopg's pipeline mode,
/// `executemany` and JDBC's `executeBatch` send them) holding multi-shard writes: the
/// batch's implicit transaction spans the shards and commits at the Sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_writes_in_pipelined_batches() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("pw", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE pw (id bigint PRIMARY KEY, v int NOT NULL)")
        .await?;
    let insert = c.prepare("INSERT INTO pw (id, v) VALUES ($1, 0)").await?;
    let bump = c.prepare("UPDATE pw SET v = v + $1").await?;
    // tokio-postgres pipelines the futures polled together.
    let ids: Vec<i64> = (1..=10).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        ids.iter().map(|id| [id as _]).collect();
    let writes = params.iter().map(|p| c.execute(&insert, p));
    let results = futures::future::join_all(writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (a, b, d) = tokio::join!(
        c.execute(&bump, &[&1i32]),
        c.execute(&insert, &[&11i64]),
        c.execute(&bump, &[&1i32]),
    );
    assert_eq!((a?, b?, d?), (10, 1, 11));
    let sums = per_shard(&cluster, "SELECT coalesce(sum(v), 0)::int8 FROM pw").await?;
    assert_eq!(sums.iter().sum::<i64>(), 10 * 2 + 1);
    Ok(())
}

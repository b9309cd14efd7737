//! UPDATE of the shard key and views over distributed tables through a driver
//! (tokio-postgres: extended protocol, parameters, binary results) on a 2-shard
//! cluster (issue 15). Moved rows end on exactly one shard, the one owning their new
//! key; what a delete and an insert would not reproduce (a user trigger) is refused
//! with 0A000 and changes nothing; nothing stays prepared.

use pgshard_tests::{distributed, two_shards, TestCluster, TestRouter};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

async fn per_shard(cluster: &TestCluster, sql: &str) -> anyhow::Result<Vec<i64>> {
    cluster.value_on_each(&PRIMARIES, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_with_parameters_move_rows() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("km", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let mut c = router.connect().await?;
    c.batch_execute("CREATE TABLE km (id bigint PRIMARY KEY, v int NOT NULL, note text)")
        .await?;
    for id in 1..=20i64 {
        c.execute(
            "INSERT INTO km (id, v) VALUES ($1, $2)",
            &[&id, &(id as i32)],
        )
        .await?;
    }
    let before = per_shard(&cluster, "SELECT count(*) FROM km").await?;
    assert!(
        before.iter().all(|&n| n > 0),
        "rows on both shards: {before:?}"
    );

    // Every row gets a new key; about half of them change shards.
    let n = c
        .execute(
            "UPDATE km SET id = id + $1, note = $2",
            &[&1000i64, &"moved"],
        )
        .await?;
    assert_eq!(n, 20);
    let moved = per_shard(
        &cluster,
        "SELECT count(*) FROM km WHERE id > 1000 AND note = 'moved'",
    )
    .await?;
    assert_eq!(moved.iter().sum::<i64>(), 20);
    assert_ne!(moved, before, "some rows changed shards");
    // Each key on one shard only, and found through the router by its key.
    for id in 1001..=1020i64 {
        let on = per_shard(
            &cluster,
            &format!("SELECT count(*) FROM km WHERE id = {id}"),
        )
        .await?;
        assert_eq!(on.iter().sum::<i64>(), 1, "key {id}: {on:?}");
        let v: i32 = c
            .query_one("SELECT v FROM km WHERE id = $1", &[&id])
            .await?
            .get(0);
        assert_eq!(i64::from(v), id - 1000);
    }

    // One row by parameters, inside a transaction block: rolled back, then committed.
    let tx = c.transaction().await?;
    assert_eq!(
        tx.execute("UPDATE km SET id = $1 WHERE id = $2", &[&5i64, &1005i64])
            .await?,
        1
    );
    let seen: i64 = tx
        .query_one("SELECT count(*) FROM km WHERE id = $1", &[&5i64])
        .await?
        .get(0);
    assert_eq!(seen, 1, "the transaction sees the moved row");
    tx.rollback().await?;
    let tx = c.transaction().await?;
    tx.execute("UPDATE km SET id = $1 WHERE id = $2", &[&5i64, &1005i64])
        .await?;
    tx.commit().await?;
    let on = per_shard(&cluster, "SELECT count(*) FROM km WHERE id IN (5, 1005)").await?;
    assert_eq!(on.iter().sum::<i64>(), 1);

    // RETURNING in binary: the new rows, from whichever shard they end on.
    let rows = c
        .query(
            "UPDATE km SET id = id + $1 WHERE id BETWEEN $2 AND $3 RETURNING v, id, note",
            &[&100i64, &1011i64, &1015i64],
        )
        .await?;
    let mut got: Vec<(i64, i32)> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
    got.sort();
    assert_eq!(
        got,
        (11..=15).map(|i| (1100 + i, i as i32)).collect::<Vec<_>>()
    );
    let on = per_shard(
        &cluster,
        "SELECT count(*) FROM km WHERE id BETWEEN 1111 AND 1115",
    )
    .await?;
    assert_eq!(on.iter().sum::<i64>(), 5);

    // A duplicate key on the new shard: nothing applied anywhere.
    let e = c
        .execute("UPDATE km SET id = $1 WHERE id > $2", &[&5i64, &1000i64])
        .await
        .expect_err("duplicate key");
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{e}");
    let total = per_shard(&cluster, "SELECT count(*) FROM km").await?;
    assert_eq!(total.iter().sum::<i64>(), 20);

    // A user trigger on the table (created on each shard): refused when a row would
    // move, and nothing changes.
    for node in PRIMARIES {
        let s = cluster.connect_node(node).await?;
        s.batch_execute(
            "CREATE FUNCTION km_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.note := 'trg'; RETURN NEW; END$$;
             CREATE TRIGGER km_touch BEFORE UPDATE ON km FOR EACH ROW EXECUTE FUNCTION km_touch()",
        )
        .await?;
    }
    let e = c
        .execute(
            "UPDATE km SET id = id + $1 WHERE id > $2",
            &[&1000i64, &1000i64],
        )
        .await
        .expect_err("refused");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("trigger km_touch")),
        "{message:?}"
    );
    let unchanged = per_shard(&cluster, "SELECT count(*) FROM km WHERE id > 2000").await?;
    assert_eq!(unchanged.iter().sum::<i64>(), 0);
    let prepared = per_shard(&cluster, "SELECT count(*) FROM pg_prepared_xacts").await?;
    assert_eq!(prepared, vec![0, 0], "nothing stays prepared");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_with_parameters() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("kvw", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE kvw (id bigint PRIMARY KEY, v int NOT NULL)")
        .await?;
    for id in 1..=20i64 {
        c.execute(
            "INSERT INTO kvw (id, v) VALUES ($1, $2)",
            &[&id, &((id % 3) as i32)],
        )
        .await?;
    }
    c.batch_execute("CREATE VIEW kvw_odd (k, val) AS SELECT id, v FROM kvw WHERE id % 2 = 1")
        .await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM kvw_odd WHERE val = $1", &[&1i32])
        .await?
        .get(0);
    let want: i64 = (1..=20i64).filter(|i| i % 2 == 1 && i % 3 == 1).count() as i64;
    assert_eq!(n, want);
    let row = c
        .query_one("SELECT k, val FROM kvw_odd WHERE k = $1", &[&7i64])
        .await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (7, 1));
    assert!(c
        .query_opt("SELECT k FROM kvw_odd WHERE k = $1", &[&8i64])
        .await?
        .is_none());
    // Prepared once, executed with several values.
    let st = c.prepare("SELECT val FROM kvw_odd WHERE k = $1").await?;
    for k in [1i64, 3, 5] {
        let v: i32 = c.query_one(&st, &[&k]).await?.get(0);
        assert_eq!(i64::from(v), k % 3);
    }
    c.batch_execute("DROP VIEW kvw_odd").await?;
    let e = c
        .query("SELECT * FROM kvw_odd", &[])
        .await
        .expect_err("dropped");
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{e}");
    Ok(())
}

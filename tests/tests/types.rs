//! User-defined types and domains on distributed tables (SPEC §5 rule 5): CREATE TYPE /
//! CREATE DOMAIN / ALTER TYPE / DROP run on every shard, so a distributed table's
//! CREATE TABLE finds them everywhere and its rows keep their values and checks on
//! whichever shard they land.

use pgshard_tests::{distributed, two_shards, TestRouter};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enums_and_domains_on_a_distributed_table() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("person", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await?;
    c.batch_execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        .await?;
    let types = "SELECT count(*) FROM pg_type WHERE typname IN ('mood', 'posint')";
    assert_eq!(
        cluster.value_on_each::<i64>(&PRIMARIES, types).await?,
        vec![2, 2]
    );
    c.batch_execute("CREATE TABLE person (id bigint PRIMARY KEY, m mood, n posint)")
        .await?;
    for id in 1..=20i64 {
        let m = ["sad", "ok", "happy"][(id % 3) as usize];
        c.batch_execute(&format!(
            "INSERT INTO person VALUES ({id}, '{m}', {})",
            id + 1
        ))
        .await?;
    }
    let rows = cluster
        .value_on_each::<i64>(&PRIMARIES, "SELECT count(*) FROM person")
        .await?;
    assert!(rows.iter().all(|&n| n > 0), "rows on both shards: {rows:?}");
    // Rows merged across shards (the enum only in the output), a count per value.
    let got: Vec<(i64, String)> = c
        .query(
            "SELECT id, m::text FROM person WHERE id <= $1 ORDER BY id",
            &[&4i64],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "ok".into()),
            (2, "happy".into()),
            (3, "sad".into()),
            (4, "ok".into())
        ]
    );
    let ok: i64 = c
        .query_one("SELECT count(*) FROM person WHERE m = 'ok'", &[])
        .await?
        .get(0);
    assert_eq!(ok, 7);
    // Grouping by the enum across shards: the merge step cannot rebuild a type whose
    // oid differs per shard, so the table is collected on one shard (binary COPY
    // carries enum labels) and PostgreSQL groups and orders it there.
    let groups = c
        .query("SELECT m, count(*) FROM person GROUP BY m ORDER BY m", &[])
        .await?;
    assert_eq!(groups.len(), 3);
    // In the enum's order: sad, ok, happy.
    assert_eq!(groups[1].get::<_, i64>(1), 7);
    // The domain's check holds on every shard.
    for id in [1i64, 2, 3, 4] {
        let e = c
            .execute("UPDATE person SET n = 0 WHERE id = $1", &[&id])
            .await
            .expect_err("domain check");
        assert_eq!(e.code().map(|c| c.code()), Some("23514"), "{e}");
    }
    c.batch_execute("ALTER TYPE mood ADD VALUE 'ecstatic'")
        .await?;
    c.batch_execute("INSERT INTO person VALUES (100, 'ecstatic', 1), (101, 'ecstatic', 1)")
        .await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM person WHERE m = 'ecstatic'", &[])
        .await?
        .get(0);
    assert_eq!(n, 2);
    c.batch_execute("DROP TABLE person").await?;
    c.batch_execute("DROP TYPE mood").await?;
    c.batch_execute("DROP DOMAIN posint").await?;
    assert_eq!(
        cluster.value_on_each::<i64>(&PRIMARIES, types).await?,
        vec![0, 0]
    );
    Ok(())
}

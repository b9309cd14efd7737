//! A second language's driver (SPEC §14): psycopg 3 drives a router on a 2-shard
//! cluster through `tests/python/psycopg_driver.py`. `.ci/run` installs psycopg; a
//! missing psycopg is a failure here, not a skip.

use pgshard_tests::{TestCluster, TestClusterOptions, TestRouter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_the_router() -> anyhow::Result<()> {
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables: vec![
            pgshard_tests::distributed("py_users", "id", "bigint"),
            pgshard_tests::distributed("py_batch", "id", "bigint"),
        ],
        ..Default::default()
    })
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let script = format!("{}/python/psycopg_driver.py", env!("CARGO_MANIFEST_DIR"));
    let port = router.port().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&port)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "psycopg script failed:\n{text}"
    );
    // The rows went to both shards.
    let mut total = 0;
    for name in ["shard1-node1", "shard2-node1"] {
        let n: i64 = cluster
            .connect_node(name)
            .await?
            .query_one("SELECT count(*) FROM py_users", &[])
            .await?
            .get(0);
        assert!(n > 0, "no rows on {name}");
        total += n;
    }
    assert_eq!(total, 50);
    Ok(())
}

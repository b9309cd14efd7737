//! Multi-shard reads end to end (SPEC §5 rule 2): tokio-postgres through a router on a
//! 2-shard cluster. Merged answers, a shard's error reaching the client with its
//! SQLSTATE, the session usable afterwards, no backend left checked out (admin console
//! `SHOW POOLS`), and the router's memory bounded while large answers stream through.

use pgshard_catalog::config::TableConfig;
use pgshard_tests::{TestCluster, TestRouter};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The tests of this file measure the process's memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn distributed(name: &str) -> TableConfig {
    pgshard_tests::distributed(name, "id", "bigint")
}

async fn cluster(table: &str) -> anyhow::Result<TestCluster> {
    pgshard_tests::two_shards(vec![distributed(table)]).await
}

/// The rows of a simple Query, as text.
async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(out)
}

async fn one(client: &Client, sql: &str) -> anyhow::Result<String> {
    let r = rows(client, sql).await?;
    r.first()
        .and_then(|row| row.first().cloned().flatten())
        .ok_or_else(|| anyhow::anyhow!("no value from {sql}"))
}

/// `in_use` of every pool, from the admin console.
async fn pools_in_use(router: &TestRouter) -> anyhow::Result<Vec<(String, i64)>> {
    let admin = router.connect_admin().await?;
    let mut header: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for m in admin.simple_query("SHOW POOLS").await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                header = Some(cols.iter().map(|c| c.name().to_string()).collect());
            }
            SimpleQueryMessage::Row(r) => {
                let h = header.clone().unwrap_or_default();
                let at = |name: &str| h.iter().position(|c| c == name);
                let in_use = at("in_use")
                    .and_then(|i| r.get(i))
                    .ok_or_else(|| anyhow::anyhow!("SHOW POOLS has no in_use column: {h:?}"))?
                    .parse::<i64>()?;
                let node = at("node").and_then(|i| r.get(i)).unwrap_or("?").to_string();
                out.push((node, in_use));
            }
            _ => {}
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reads_errors_and_pools() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    pgshard_tests::init_tracing();
    let cluster = cluster("fo_items").await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE fo_items (id bigint PRIMARY KEY, v int, name text)")
        .await?;
    for id in 1..=200i64 {
        c.simple_query(&format!(
            "INSERT INTO fo_items (id, v, name) VALUES ({id}, {}, 'n{id}')",
            id % 7
        ))
        .await?;
    }
    // Both shards hold rows, so every answer below is a merge.
    for name in ["shard1-node1", "shard2-node1"] {
        let n: i64 = cluster
            .connect_node(name)
            .await?
            .query_one("SELECT count(*) FROM fo_items", &[])
            .await?
            .get(0);
        assert!(n > 0 && n < 200, "{n} rows on {name}");
    }

    assert_eq!(one(&c, "SELECT count(*) FROM fo_items").await?, "200");
    assert_eq!(one(&c, "SELECT sum(v) FROM fo_items").await?, {
        let s: i64 = (1..=200i64).map(|i| i % 7).sum();
        s.to_string()
    });
    assert_eq!(
        one(&c, "SELECT avg(id) FROM fo_items").await?,
        "100.5000000000000000"
    );

    let got = rows(
        &c,
        "SELECT id, name FROM fo_items ORDER BY id DESC LIMIT 5 OFFSET 2",
    )
    .await?;
    let want: Vec<Vec<Option<String>>> = (194..=198i64)
        .rev()
        .map(|i| vec![Some(i.to_string()), Some(format!("n{i}"))])
        .collect();
    assert_eq!(got, want);
    // A sort key that is not an output column (hidden column), ascending.
    let got = rows(&c, "SELECT name FROM fo_items ORDER BY v, id LIMIT 3").await?;
    assert_eq!(
        got,
        vec![
            vec![Some("n7".to_string())],
            vec![Some("n14".to_string())],
            vec![Some("n21".to_string())]
        ]
    );
    let grouped = rows(&c, "SELECT v, count(*) FROM fo_items GROUP BY v ORDER BY v").await?;
    assert_eq!(grouped.len(), 7);
    assert_eq!(
        grouped[0],
        vec![Some("0".to_string()), Some("28".to_string())]
    );

    // An error on one shard only (division by zero where id = 7) reaches the client with
    // its SQLSTATE, and the session goes on.
    let e = c
        .simple_query("SELECT id / (id - 7) FROM fo_items")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("division by zero on one shard did not fail"))?;
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO),
        "{e:?}"
    );
    assert_eq!(one(&c, "SELECT count(*) FROM fo_items").await?, "200");
    // Again with a sort, where the other shard may be stopped mid-answer.
    let e = c
        .simple_query("SELECT id / (id - 7) FROM fo_items ORDER BY id")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("division by zero on one shard did not fail"))?;
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    assert_eq!(one(&c, "SELECT max(id) FROM fo_items").await?, "200");

    // Session state reaches every shard of a fan-out.
    c.simple_query("SET application_name = 'fanout-test'")
        .await?;
    let names = rows(
        &c,
        "SELECT current_setting('application_name') FROM fo_items WHERE id IN (1, 2, 3, 4, 5, 6)",
    )
    .await?;
    assert_eq!(names.len(), 6);
    assert!(names.iter().all(|r| r[0].as_deref() == Some("fanout-test")));

    // Inside a transaction block: on the transaction's own backends, so the read sees
    // its uncommitted writes; a merge step's settings do not leak into the session.
    c.simple_query("BEGIN").await?;
    for id in [100001, 100002, 100003] {
        c.simple_query(&format!("INSERT INTO fo_items (id) VALUES ({id})"))
            .await?;
    }
    let before = one(&c, "SHOW extra_float_digits").await?;
    let n = one(&c, "SELECT count(*) FROM fo_items").await?;
    assert_eq!(n, "203");
    assert_eq!(one(&c, "SHOW extra_float_digits").await?, before);
    let top = one(&c, "SELECT id FROM fo_items ORDER BY id DESC LIMIT 1").await?;
    assert_eq!(top, "100003");
    c.simple_query("ROLLBACK").await?;
    assert_eq!(one(&c, "SELECT count(*) FROM fo_items").await?, "200");
    // The extended protocol fans out too (tests/tests/fanout_extended.rs has more).
    let n: i64 = c
        .query_one("SELECT count(*) FROM fo_items", &[])
        .await?
        .get(0);
    assert_eq!(n, 200);
    assert_eq!(one(&c, "SELECT count(*) FROM fo_items").await?, "200");

    // Nothing stays checked out once the client is idle.
    let pools = pools_in_use(&router).await?;
    assert!(!pools.is_empty(), "SHOW POOLS listed no pool");
    assert!(
        pools.iter().all(|(_, n)| *n == 0),
        "backends left in use: {pools:?}"
    );
    drop(c);
    Ok(())
}

/// Peak resident memory of this process (the router runs in it), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Reset the peak so the next reading covers what follows only.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_streams_large_answers_in_bounded_memory() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = cluster("fo_big").await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE fo_big (id bigint PRIMARY KEY, pad text)")
        .await?;
    // 600k rows of ~210 bytes (~130 MB of answer), loaded on the shards directly: a
    // plain or sorted fan-out returns every row wherever it sits.
    const N: i64 = 300_000;
    for (i, name) in ["shard1-node1", "shard2-node1"].iter().enumerate() {
        let base = i as i64 * N;
        cluster
            .connect_node(name)
            .await?
            .simple_query(&format!(
                "INSERT INTO fo_big SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
                base + 1,
                base + N
            ))
            .await?;
    }
    for sql in [
        "SELECT id, pad FROM fo_big",
        "SELECT id, pad FROM fo_big ORDER BY id DESC",
    ] {
        reset_peak_rss();
        let before = peak_rss_kib();
        // psql holds the answer in its own process; this process is the router's.
        let out = tokio::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &router.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-o",
                "/dev/null",
                "-c",
                sql,
            ])
            .output()
            .await?;
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grown = peak_rss_kib().saturating_sub(before);
        eprintln!("{sql}: router process peak grew by {grown} KiB for ~130 MB of rows");
        assert!(
            grown < 48 * 1024,
            "{sql}: peak memory grew by {grown} KiB: the answer is buffered, not streamed"
        );
    }
    assert_eq!(one(&c, "SELECT count(*) FROM fo_big").await?, "600000");
    Ok(())
}

//! The real `pgshard-router` binary shuts down promptly on SIGTERM (SPEC §1 `run(config,
//! shutdown)`, §13): it stops accepting, ends idle sessions at once with FATAL 57P01
//! like PostgreSQL's fast shutdown, gives sessions in a transaction a bounded grace,
//! closes its pools and exits 0.

use nix::sys::signal::Signal;
use pgshard_tests::{RouterProcess, TestCluster, TestClusterOptions};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Far above what a prompt shutdown takes, far below the 10 s it used to take.
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// A client through the router whose connection task reports how the server ended it.
async fn client(
    router: &RouterProcess,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
)> {
    let (client, conn) = tokio_postgres::connect(&router.connstr("postgres"), NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

#[tokio::test]
async fn sigterm_ends_sessions_with_57p01_and_exits_promptly() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let tc = TestCluster::start(TestClusterOptions {
        shards: 1,
        replicas: 0,
        ..Default::default()
    })
    .await?;
    let mut router = RouterProcess::start(&tc, &[]).await?;

    // One idle session that has used a shard (a pooled backend exists), one that never
    // ran anything, and one inside a transaction.
    let (used, used_conn) = client(&router).await?;
    used.simple_query("SELECT 1").await?;
    let (_fresh, fresh_conn) = client(&router).await?;
    let (txn, txn_conn) = client(&router).await?;
    txn.batch_execute("BEGIN; SELECT 1").await?;
    let (committer, committer_conn) = client(&router).await?;
    committer.batch_execute("BEGIN; SELECT 1").await?;

    let started = Instant::now();
    router.signal(Signal::SIGTERM)?;
    // A transaction may still finish within the grace period, then its session ends.
    committer.batch_execute("SELECT 2; COMMIT").await?;
    let status = router.wait_exit(EXIT_BOUND).await?;
    let elapsed = started.elapsed();
    let Some(status) = status else {
        anyhow::bail!(
            "router still running {EXIT_BOUND:?} after SIGTERM:\n{}",
            router.log()
        );
    };
    assert!(
        status.success(),
        "router exited with {status}:\n{}",
        router.log()
    );
    tracing::info!(?elapsed, "router exited after SIGTERM");

    for (what, conn) in [
        ("idle", used_conn),
        ("fresh", fresh_conn),
        ("in a transaction", txn_conn),
        ("committed in the grace period", committer_conn),
    ] {
        let ended = tokio::time::timeout(EXIT_BOUND, conn).await??;
        let err = ended.expect_err("the router ended the session with an error");
        assert_eq!(
            err.code(),
            Some(&SqlState::ADMIN_SHUTDOWN),
            "{what} session: {err}"
        );
    }
    drop((used, txn, committer));
    Ok(())
}

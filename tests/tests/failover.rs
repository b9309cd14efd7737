//! Automatic failover and planned switchover (SPEC §8; issue: high availability), on
//! real clusters under shardd's control loop, with real kills.

use pgshard_catalog::{NodeState, ShardId, ShardStatus};
use pgshard_tests::{TestClusterOptions, TestDaemon};
use std::time::{Duration, Instant};

const FAILOVER: Duration = Duration::from_secs(60);
const REBUILD: Duration = Duration::from_secs(120);

fn opts(replicas: u32) -> TestClusterOptions {
    TestClusterOptions {
        shards: 2,
        replicas,
        buckets: 64,
        ..Default::default()
    }
}

/// Kill shard 1's primary: the most advanced replica is promoted, the term grows, every
/// committed row is on the new primary, the old primary is fenced then rebuilt as a
/// replica of the new one, and the shard is back to two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_is_replaced_and_rebuilt() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(2), |_| {}).await?;
    let before = d.catalog().await?;
    let old = d.primary_of(1).await?;
    let term = before.shard(ShardId(1)).map(|s| s.term);
    assert_eq!(term, Some(1));
    let c = d.connect_node(&old).await?;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await?;
    drop(c);

    let killed = Instant::now();
    d.kill_node(&old).await?;
    let after = d
        .wait_catalog("shard 1 has a new primary", FAILOVER, |c| {
            c.primary(ShardId(1)).is_some_and(|p| p.name != old)
                && c.shard(ShardId(1))
                    .is_some_and(|s| s.status != ShardStatus::FailingOver)
        })
        .await?;
    let took = killed.elapsed();
    let s1 = after.shard(ShardId(1)).expect("shard 1");
    assert_eq!(s1.term, 2, "{s1:?}");
    assert_eq!(s1.failovers, 1);
    assert!(s1.last_failover_ms.is_some());
    let new = after.primary(ShardId(1)).expect("primary").name.clone();
    eprintln!("failover of {old} to {new} in {took:?}");
    // Shard 2 untouched.
    assert_eq!(after.shard(ShardId(2)).map(|s| s.term), Some(1));

    let c = d.connect_node(&new).await?;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 100);
    c.execute("INSERT INTO t VALUES (101)", &[]).await?;

    // Rebuilt and back in service, streaming from the new primary; the shard is ok.
    let back = d.wait_redundant(REBUILD).await?;
    let metrics = d.get_text("/metrics").await?;
    for line in [
        "pgshard_shardd_shard_term{shard=\"1\"} 2",
        "pgshard_shardd_failovers_total{shard=\"1\"} 1",
        "pgshard_shardd_failovers_total{shard=\"2\"} 0",
        "pgshard_shardd_shard_status{shard=\"1\",status=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let status = d.status().await?;
    let shard1 = &status["shards"][0];
    assert_eq!(shard1["primary"], new.as_str(), "{status}");
    assert_eq!(shard1["term"], 2, "{status}");
    let oldnode = back.nodes.iter().find(|n| n.name == old).expect("old node");
    assert_eq!(oldnode.state, NodeState::Healthy);
    assert_eq!(oldnode.role, pgshard_catalog::NodeRole::Replica);
    let started = Instant::now();
    loop {
        let standbys: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?
            .get(0);
        if standbys == 2 {
            break;
        }
        assert!(started.elapsed() < REBUILD, "{standbys} standbys streaming");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = d.connect_node(&old).await?;
    let n: i64 = o.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert!(n >= 100);
    Ok(())
}

/// The workload of the kill loops: autocommit single-row inserts whose acknowledged
/// ids are recorded, and transfers between accounts on different shards (one
/// transaction, two-phase commit), through the router.
struct Load {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

#[derive(Debug, Default)]
struct LoadReport {
    acked: Vec<i64>,
    /// When each acknowledged insert was acknowledged (same order as `acked`).
    acked_at: Vec<Instant>,
    errors: Vec<String>,
    transfers: u64,
}

/// An error as a client sees it: SQLSTATE and message, or why the connection ended.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

const ACCOUNTS: i64 = 20;
const START_BALANCE: i64 = 1000;

impl Load {
    async fn prepare(router: &pgshard_tests::TestRouter) -> anyhow::Result<()> {
        let c = router.connect().await?;
        c.batch_execute(
            "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz DEFAULT now());
             CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
        )
        .await?;
        for id in 1..=ACCOUNTS {
            c.execute(
                "INSERT INTO accounts VALUES ($1, $2)",
                &[&id, &START_BALANCE],
            )
            .await?;
        }
        Ok(())
    }

    fn start(router: &pgshard_tests::TestRouter, writers: usize) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let stop = stop.clone();
            let connstr = router.connstr();
            tasks.push(tokio::spawn(async move {
                let mut report = LoadReport::default();
                let mut client: Option<tokio_postgres::Client> = None;
                let mut next = (w as i64) * 10_000_000;
                while !stop.is_cancelled() {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client =
                            match tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await {
                                Ok((c, conn)) => {
                                    tokio::spawn(conn);
                                    Some(c)
                                }
                                Err(e) => {
                                    report.errors.push(format!("connect: {e}"));
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            };
                    }
                    let Some(c) = client.as_ref() else { continue };
                    next += 1;
                    match c
                        .execute("INSERT INTO acked (id) VALUES ($1)", &[&next])
                        .await
                    {
                        Ok(1) => {
                            report.acked.push(next);
                            report.acked_at.push(Instant::now());
                        }
                        Ok(n) => report.errors.push(format!("insert {next}: {n} rows")),
                        Err(e) => report
                            .errors
                            .push(format!("insert {next}: {}", describe(&e))),
                    }
                }
                report
            }));
        }
        // One task moving money between accounts on both shards.
        let stop2 = stop.clone();
        let connstr = router.connstr();
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut client: Option<tokio_postgres::Client> = None;
            let mut i: i64 = 0;
            while !stop2.is_cancelled() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                }
                let Some(c) = client.as_mut() else { continue };
                i += 1;
                let from = i % ACCOUNTS + 1;
                let to = (i * 7 + 3) % ACCOUNTS + 1;
                if from == to {
                    continue;
                }
                let r = async {
                    let tx = c.transaction().await?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
                        &[&from],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                        &[&to],
                    )
                    .await?;
                    tx.commit().await
                }
                .await;
                match r {
                    Ok(()) => report.transfers += 1,
                    Err(e) => report.errors.push(format!("transfer: {}", describe(&e))),
                }
            }
            report
        }));
        Load { stop, tasks }
    }

    async fn finish(self) -> LoadReport {
        self.stop.cancel();
        let mut all = LoadReport::default();
        for t in self.tasks {
            if let Ok(r) = t.await {
                all.acked.extend(r.acked);
                all.acked_at.extend(r.acked_at);
                all.errors.extend(r.errors);
                all.transfers += r.transfers;
            }
        }
        all
    }
}

/// No acknowledged write lost: 2 shards × (primary + 2 replicas) under concurrent
/// inserts and cross-shard transfers through the router; the primary of a shard is
/// SIGKILLed, shardd fails over and rebuilds, again and again (each time on whichever
/// node is primary then, alternating shards). Afterwards every acknowledged row is
/// there, the money is all there, and no prepared transaction is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_lost_over_repeated_primary_kills() -> anyhow::Result<()> {
    let kills: usize = std::env::var("PGSHARD_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let d = TestDaemon::start(
        TestClusterOptions {
            tables: vec![
                pgshard_tests::distributed("acked", "id", "bigint"),
                pgshard_tests::distributed("accounts", "id", "bigint"),
            ],
            ..opts(2)
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    Load::prepare(&router).await?;
    let load = Load::start(&router, 4);
    let mut pauses = Vec::new();
    let mut kill_times = Vec::new();
    for k in 0..kills {
        let shard = (k % 2) as u32 + 1;
        // Let some writes happen on this topology first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = d.primary_of(shard).await?;
        let term = d.catalog().await?.shard(ShardId(shard)).map(|s| s.term);
        let killed = Instant::now();
        d.kill_node(&old).await?;
        // Unavailability counts from when the primary is gone (kill returns once no
        // process of it is left).
        kill_times.push((shard, Instant::now()));
        d.wait_catalog(
            &format!("kill {k}: shard {shard} fails over from {old}"),
            FAILOVER,
            |c| {
                c.shard(ShardId(shard))
                    .is_some_and(|s| Some(s.term) > term && s.status != ShardStatus::FailingOver)
            },
        )
        .await?;
        pauses.push(killed.elapsed());
        d.wait_redundant(REBUILD).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;
    eprintln!(
        "{kills} kills: {} inserts acknowledged, {} transfers committed, {} client errors; \
         catalog switched {:?} after each kill",
        report.acked.len(),
        report.transfers,
        report.errors.len(),
        pauses
    );
    for e in report.errors.iter().take(20) {
        eprintln!("  client error: {e}");
    }
    // Write unavailability per kill: from the kill to the first insert acknowledged on
    // that shard afterwards (what a client sees; not asserted, reported).
    let catalog = d.catalog().await?;
    let mut unavailable: Vec<Duration> = kill_times
        .iter()
        .filter_map(|(shard, at)| {
            report
                .acked
                .iter()
                .zip(&report.acked_at)
                .filter(|(id, t)| {
                    *t > at
                        && catalog.shard_of(&pgshard_catalog::KeyValue::Int(**id))
                            == Some(ShardId(*shard))
                })
                .map(|(_, t)| t.duration_since(*at))
                .min()
        })
        .collect();
    unavailable.sort();
    if let (Some(p50), Some(max)) = (unavailable.get(unavailable.len() / 2), unavailable.last()) {
        eprintln!(
            "write unavailability after a primary kill over {} kills: p50 {p50:?}, max {max:?}",
            unavailable.len()
        );
    }
    assert!(report.acked.len() > 100, "the load did not run");
    // Statements that arrived during a failover were held, never failed: the only
    // errors are those of statements running on the killed primary (08006, 08007).
    let held_too_long: Vec<&String> = report
        .errors
        .iter()
        .filter(|e| e.contains("57P03"))
        .collect();
    assert!(
        held_too_long.is_empty(),
        "statements failed while held: {held_too_long:?}"
    );

    // Every acknowledged insert is there.
    let c = router.connect().await?;
    let rows = c.query("SELECT id FROM acked", &[]).await?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i64> = report
        .acked
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    // No prepared transaction left, once recovery has run on the new primaries.
    d.wait_no_prepared(Duration::from_secs(90)).await?;
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);
    assert_eq!(total, ACCOUNTS * START_BALANCE, "transfers were not atomic");
    Ok(())
}

/// shardd killed at each step of a failover, then restarted: the failover completes
/// from what the catalog recorded, never with two primaries, and the shard is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardd_killed_at_each_failover_step_finishes_it_after_restart() -> anyhow::Result<()> {
    let mut d = TestDaemon::start(opts(2), |_| {}).await?;
    let marker = d.data_dir().join(pgshard_shardd::reconcile::FAULT_MARKER);
    for (i, step) in ["begin", "fence", "choose", "promote", "repoint", "complete"]
        .into_iter()
        .enumerate()
    {
        let _ = std::fs::remove_file(&marker);
        d.restart_with_fault(step).await?;
        let old = d.primary_of(1).await?;
        let term = d
            .catalog()
            .await?
            .shard(ShardId(1))
            .map(|s| s.term)
            .unwrap_or(0);
        let c = d.connect_node(&old).await?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS k (step int PRIMARY KEY); INSERT INTO k VALUES ({i})"
        ))
        .await?;
        drop(c);
        d.kill_node(&old).await?;
        let started = Instant::now();
        while !marker.exists() {
            assert!(
                started.elapsed() < FAILOVER,
                "fault point {step} never reached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // shardd dies here; a new one takes over.
        d.restart(None).await?;
        let after = d
            .wait_catalog(
                &format!("failover resumed after a crash at {step}"),
                FAILOVER,
                |c| {
                    c.shard(ShardId(1))
                        .is_some_and(|s| s.term > term && s.status != ShardStatus::FailingOver)
                },
            )
            .await?;
        assert_eq!(
            after.shard(ShardId(1)).map(|s| s.term),
            Some(term + 1),
            "{step}"
        );
        let new = after.primary(ShardId(1)).expect("primary").name.clone();
        assert_ne!(new, old, "{step}");
        let back = d.wait_redundant(REBUILD).await?;
        // Exactly one node of the shard takes writes; every step's row is there.
        let mut writable = Vec::new();
        for n in back.nodes.iter().filter(|n| n.shard == Some(ShardId(1))) {
            let c = d.connect_node(&n.name).await?;
            let standby: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
            if !standby {
                writable.push(n.name.clone());
            }
        }
        assert_eq!(
            writable,
            std::slice::from_ref(&new),
            "after a crash at {step}"
        );
        let c = d.connect_node(&new).await?;
        let n: i64 = c.query_one("SELECT count(*) FROM k", &[]).await?.get(0);
        assert_eq!(n, i as i64 + 1, "after a crash at {step}");
    }
    Ok(())
}

/// A primary killed together with one of its two replicas: the other replica may lack
/// commits only the dead one acknowledged, so nothing is promoted and the shard is
/// reported `refused` with the reason; statements fail at once naming the shard. When
/// the replica comes back, the failover goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_lost_together_refuses_then_recovers() -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            tables: vec![pgshard_tests::distributed("acked", "id", "bigint")],
            ..opts(2)
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    router
        .connect()
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    let catalog = d.catalog().await?;
    let old = d.primary_of(1).await?;
    let replica = catalog
        .replicas(ShardId(1))
        .next()
        .expect("replica")
        .name
        .clone();
    // The replica's machine is gone: killed, and its data out of reach (shardd would
    // otherwise just start it again).
    d.kill_node(&replica).await?;
    let data = d.spec(&replica)?.data_dir();
    let away = data.with_extension("away");
    std::fs::rename(&data, &away)?;
    d.kill_node(&old).await?;
    let refused = d
        .wait_catalog("shard 1 refused", FAILOVER, |c| {
            c.shard(ShardId(1))
                .is_some_and(|s| s.status == ShardStatus::Refused)
        })
        .await?;
    let reason = refused
        .shard(ShardId(1))
        .and_then(|s| s.status_reason.clone())
        .unwrap_or_default();
    assert!(reason.contains(&replica), "{reason}");
    assert_eq!(
        refused.primary(ShardId(1)).map(|p| p.name.clone()),
        Some(old.clone())
    );
    assert_eq!(refused.shard(ShardId(1)).map(|s| s.term), Some(1));
    // The router says so at once, with the shard named; shard 2 serves.
    let key_on = |shard: u32| {
        (1..1000i64)
            .find(|k| refused.shard_of(&pgshard_catalog::KeyValue::Int(*k)) == Some(ShardId(shard)))
            .expect("a key")
    };
    let started = Instant::now();
    let c = router.connect().await?;
    let e = c
        .query("SELECT * FROM acked WHERE id = $1", &[&key_on(1)])
        .await
        .expect_err("shard 1 cannot answer");
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("shard 1"), "{db:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusal must not be held"
    );
    c.query("SELECT * FROM acked WHERE id = $1", &[&key_on(2)])
        .await?;
    // shardd publishes its status once per round: it says so by the next one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.status().await?;
        if status["shards"].to_string().contains("refused") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The replica's data is back: shardd starts it, its WAL can be compared, the
    // failover proceeds.
    std::fs::rename(&away, &data)?;
    d.wait_catalog(
        "shard 1 failed over once the replica answered",
        FAILOVER,
        |c| c.shard(ShardId(1)).is_some_and(|s| s.term == 2),
    )
    .await?;
    d.wait_redundant(REBUILD).await?;
    Ok(())
}

/// A planned switchover under load through the router: writes are held for the switch,
/// no client sees an error, and the old primary comes back as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_under_load_has_no_client_error() -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            tables: vec![
                pgshard_tests::distributed("acked", "id", "bigint"),
                pgshard_tests::distributed("accounts", "id", "bigint"),
            ],
            ..opts(1)
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    Load::prepare(&router).await?;
    let load = Load::start(&router, 4);
    let mut pauses = Vec::new();
    for shard in [1u32, 2, 1, 2] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = d.primary_of(shard).await?;
        let (code, answer) = d
            .post("/v1/switchover", serde_json::json!({ "shard": shard }))
            .await?;
        assert_eq!(code, 200, "{answer}");
        pauses.push(answer["pause_ms"].as_u64().unwrap_or(0));
        assert_ne!(d.primary_of(shard).await?, old);
        d.wait_redundant(REBUILD).await?;
    }
    // Asking for a node that is not a replica is refused, naming it.
    let (code, answer) = d
        .post(
            "/v1/switchover",
            serde_json::json!({ "shard": 1, "to": "no-such-node" }),
        )
        .await?;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].to_string().contains("no-such-node"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;
    eprintln!(
        "4 switchovers, write pauses {pauses:?} ms: {} inserts, {} transfers, errors {:?}",
        report.acked.len(),
        report.transfers,
        report.errors
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let c = router.connect().await?;
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n as usize, report.acked.len());
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);
    assert_eq!(total, ACCOUNTS * START_BALANCE);
    Ok(())
}

/// `failover pause`: a dead primary is left alone (the shard's statements wait, then
/// fail naming it); `failover resume`: the failover happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_failover_waits_for_resume() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(1), |_| {}).await?;
    let (code, answer) = d
        .post("/v1/failover/pause", serde_json::json!({ "shard": 2 }))
        .await?;
    assert_eq!(code, 200, "{answer}");
    let paused = d.catalog().await?;
    assert!(paused.shard(ShardId(2)).is_some_and(|s| s.failover_paused));
    let old = d.primary_of(2).await?;
    d.kill_node(&old).await?;
    // Seen down by the probes for several rounds, and still the primary.
    let started = Instant::now();
    loop {
        let status = d.status().await?;
        let failures = status["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == old.as_str()))
            .and_then(|n| n["failures"].as_u64())
            .unwrap_or(0);
        if failures >= 6 {
            break;
        }
        assert!(
            started.elapsed() < FAILOVER,
            "probes never saw {old} down: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = d.catalog().await?;
    assert_eq!(
        c.primary(ShardId(2)).map(|n| n.name.clone()),
        Some(old.clone())
    );
    assert_eq!(c.shard(ShardId(2)).map(|s| s.term), Some(1));
    let (code, _) = d
        .post("/v1/failover/resume", serde_json::json!({ "shard": 2 }))
        .await?;
    assert_eq!(code, 200);
    d.wait_catalog("failover after resume", FAILOVER, |c| {
        c.shard(ShardId(2))
            .is_some_and(|s| s.term == 2 && !s.failover_paused)
    })
    .await?;
    Ok(())
}

/// pgbench's TPC-B-like load through the router survives a primary kill: shardd fails
/// the shard over, pgbench goes on (clients whose transaction was on the killed primary
/// abort, as against one PostgreSQL), and afterwards the four balance sums agree and no
/// prepared transaction is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_survives_a_primary_kill() -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct File {
        table: Vec<pgshard_catalog::config::TableConfig>,
    }
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pgbench.toml");
    let tables = toml::from_str::<File>(&std::fs::read_to_string(&path)?)?.table;
    let d = TestDaemon::start(TestClusterOptions { tables, ..opts(1) }, |_| {}).await?;
    let router = d.router().await?;
    let bin = pgshard_shardd::runtime::local::find_pg_bin_dir(
        std::env::var_os("PGSHARD_PG_BIN_DIR")
            .map(std::path::PathBuf::from)
            .as_deref(),
    )?
    .join("pgbench");
    let port = router.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    let init = tokio::process::Command::new(&bin)
        .args(base)
        .args(["-i", "-s", "1", "postgres"])
        .output()
        .await?;
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = tokio::process::Command::new(&bin)
        .args(base)
        .args([
            "-n", "-c", "4", "-j", "2", "-T", "12", "-M", "prepared", "postgres",
        ])
        .output();
    let run = tokio::spawn(run);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = d.primary_of(1).await?;
    d.kill_node(&old).await?;
    d.wait_catalog("shard 1 failed over under pgbench", FAILOVER, |c| {
        c.shard(ShardId(1))
            .is_some_and(|s| s.term == 2 && s.status != ShardStatus::FailingOver)
    })
    .await?;
    let out = run.await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "pgbench under a primary kill ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("number of transactions actually processed"),
        "pgbench did not run: {stdout}\n{stderr}"
    );
    // Recovery finishes what the kill left prepared; then the ledger agrees.
    let c = router.connect().await?;
    d.wait_no_prepared(Duration::from_secs(90)).await?;
    let sums: Vec<i64> = {
        let mut v = Vec::new();
        for sql in [
            "SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts",
            "SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers",
            "SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches",
            "SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history",
        ] {
            v.push(c.query_one(sql, &[]).await?.get(0));
        }
        v
    };
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "balances disagree: {sums:?}"
    );
    Ok(())
}

/// The catalog node fails over too: killed, its replica is promoted (recorded in the
/// layout, since the catalog is what failed), routers keep serving with their last
/// catalog meanwhile and follow the new one; a shard failover afterwards works through
/// the new catalog, and the old catalog node is rebuilt as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_node_fails_over_and_routers_follow() -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            tables: vec![pgshard_tests::distributed("acked", "id", "bigint")],
            ..opts(1)
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    for id in 1..=20i64 {
        c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await?;
    }
    let old = d.layout()?.catalog().expect("catalog node").name.clone();
    d.kill_node(&old).await?;
    // Single-shard work goes on with the router's last catalog.
    for id in 21..=30i64 {
        c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await?;
    }
    let started = Instant::now();
    let new = loop {
        if let Some(n) = d.layout()?.catalog().filter(|n| n.name != old) {
            break n.name.clone();
        }
        assert!(
            started.elapsed() < FAILOVER,
            "the catalog never failed over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "catalog failed over from {old} to {new} in {:?}",
        started.elapsed()
    );
    let catalog = d
        .wait_catalog("the new catalog records its failover", FAILOVER, |c| {
            c.nodes
                .iter()
                .any(|n| n.name == new && n.role == pgshard_catalog::NodeRole::Catalog)
        })
        .await?;
    assert!(catalog
        .nodes
        .iter()
        .any(|n| n.name == old && n.role == pgshard_catalog::NodeRole::Replica));
    // A shard failover now goes through the new catalog, and the router follows it.
    let primary = d.primary_of(1).await?;
    d.kill_node(&primary).await?;
    d.wait_catalog("shard 1 fails over after the catalog did", FAILOVER, |c| {
        c.shard(ShardId(1))
            .is_some_and(|s| s.term == 2 && s.status != ShardStatus::FailingOver)
    })
    .await?;
    for id in 31..=60i64 {
        c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await?;
    }
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n, 60);
    d.wait_redundant(REBUILD).await?;
    Ok(())
}

/// A primary that shardd cannot stop (frozen here with SIGSTOP, as a machine cut off
/// from shardd; the runtime's kill is made to fail): its replicas are cut off from it
/// before one is promoted, so when it wakes up it cannot get a single commit
/// confirmed: a commit on it never returns, and the router sends nothing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_primary_that_cannot_be_stopped_acknowledges_no_commit() -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut d = TestDaemon::start(
        TestClusterOptions {
            tables: vec![pgshard_tests::distributed("acked", "id", "bigint")],
            postgres: [("wal_receiver_timeout", "2s"), ("wal_sender_timeout", "2s")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..opts(2)
        },
        |_| {},
    )
    .await?;
    d.restart_with_fault("kill-fails").await?;
    let router = d.router().await?;
    router
        .connect()
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    let old = d.primary_of(1).await?;
    let direct = d.connect_node(&old).await?;
    // Every process of the instance: the postmaster and its children.
    let data = d.spec(&old)?.data_dir();
    let postmaster: i32 = std::fs::read_to_string(data.join("postmaster.pid"))?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()?;
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    for &p in &pids {
        kill(Pid::from_raw(p), Signal::SIGSTOP)?;
    }
    let after = d
        .wait_catalog("shard 1 fails over from a frozen primary", FAILOVER, |c| {
            c.shard(ShardId(1))
                .is_some_and(|s| s.term == 2 && s.status != ShardStatus::FailingOver)
        })
        .await;
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
    let after = after?;
    let new = after.primary(ShardId(1)).expect("primary").name.clone();
    assert_ne!(new, old);
    // The old primary is awake and still thinks it is one; a commit on it waits for a
    // synchronous standby that will never confirm again.
    let commit = tokio::time::timeout(
        Duration::from_secs(5),
        direct.execute("INSERT INTO acked VALUES (-1)", &[]),
    )
    .await;
    assert!(
        commit.is_err(),
        "the fenced primary acknowledged a commit: {commit:?}"
    );
    // Its replicas follow the new primary; writes through the router go there.
    let c = router.connect().await?;
    for id in 1..=20i64 {
        c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await?;
    }
    let standbys: Vec<String> = d
        .connect_node(&new)
        .await?
        .query("SELECT application_name FROM pg_stat_replication", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(standbys.len(), 1, "{standbys:?}");
    assert_ne!(standbys[0], old.replace('-', "_"));
    d.kill_node(&old).await?;
    Ok(())
}

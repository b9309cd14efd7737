//! Crashes with real processes (SPEC §7, §13): the `pgshard-router` binary stopped by
//! its fault hook (`PGSHARD_FAULT`) at each step of two-phase commit, then SIGKILLed;
//! a shard primary SIGKILLed and restarted while the coordinator waits at each step;
//! shardd itself killed and restarted. After shardd's recovery every transaction is on
//! every shard or on none, nothing of ours stays prepared and no commit record or
//! decision row is left.
//! The admin console's `SHOW TRANSACTIONS` lists what a crash left in doubt.
//!
//! Each case runs `PGSHARD_CRASH_LOOPS` times (default 3). The binaries must be built
//! (`cargo build --workspace --bins`; scripts/test does it).

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use pgshard_catalog::twopc::{self, Gid, RouterId};
use pgshard_catalog::ShardId;
use pgshard_router::twopc::{FaultPoint, FAULT_ENV};
use pgshard_shardd::cluster::{Layout, LAYOUT_FILE};
use pgshard_shardd::recovery::{Recovery, RecoveryOptions, ABORT_AFTER_ENV};
use pgshard_tests::dirs::temp_dir;
use pgshard_tests::ports::free_port;
use pgshard_tests::router_process::binary;
use pgshard_tests::{RouterProcess, TestCluster, TestClusterOptions, TestRouter};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(60);
const SHARDS: [&str; 2] = ["shard1-node1", "shard2-node1"];
/// Rows each transaction writes: enough keys to land on both shards.
const ROWS: i64 = 20;
/// What the fault hook logs when the coordinator stops.
const STOPPED: &str = "fault injection: coordinator stops";

/// How many times each crash case runs.
fn loops() -> usize {
    std::env::var("PGSHARD_CRASH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

static NEXT_BASE: AtomicI64 = AtomicI64::new(0);

/// A fresh range of keys `base+1 ..= base+ROWS` for one round.
fn next_base() -> i64 {
    NEXT_BASE.fetch_add(1000, Ordering::Relaxed)
}

/// The GID in a fault-hook log line (`… gid=pgshard:r…:1:… point=…`).
fn gid_in(line: &str) -> anyhow::Result<String> {
    let at = line.find("gid=").context("no gid in the log line")?;
    let gid = line[at + 4..]
        .split_whitespace()
        .next()
        .context("empty gid")?;
    Ok(gid.trim_matches('"').to_string())
}

/// What the crashed client was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `BEGIN`, one INSERT per key (the transaction joins both shards), `COMMIT`.
    Txn,
    /// A multi-shard autocommit `UPDATE` without the key (two-phase commit on its own).
    Update,
    /// `Txn` through the extended protocol (BEGIN, INSERTs with a parameter key and
    /// COMMIT each as Parse/Bind/Execute/Sync), as drivers and pgbench -M extended send it.
    ExtendedTxn,
}

/// A 2-shard cluster without replicas (2PC does not depend on them) with table `kv`
/// declared distributed by `id` and created on both primaries.
struct Fx {
    tc: TestCluster,
}

impl Fx {
    async fn start() -> anyhow::Result<Fx> {
        let tc = TestCluster::start(TestClusterOptions {
            replicas: 0,
            buckets: 64,
            tables: vec![pgshard_catalog::config::TableConfig {
                name: "kv".into(),
                shard_key: Some("id".into()),
                key_type: Some("bigint".into()),
                kind: None,
                colocate_with: None,
            }],
            ..Default::default()
        })
        .await?;
        for name in SHARDS {
            tc.connect_node(name)
                .await?
                .batch_execute("CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL)")
                .await?;
        }
        let fx = Fx { tc };
        // As shardd's first round does: the decision tables, so the routers decide on
        // a shard.
        fx.recovery()?.run_once().await?;
        Ok(fx)
    }

    /// Decision rows on both primaries.
    async fn decision_rows(&self) -> anyhow::Result<i64> {
        let mut n = 0;
        for name in SHARDS {
            n += count(
                &self.tc.connect_node(name).await?,
                "SELECT count(*) FROM pgshard_2pc.decisions",
            )
            .await?;
        }
        Ok(n)
    }

    /// Recovery as shardd runs it, but with no wait for coordinators: every router that
    /// could finish the transactions is dead when the tests call it.
    fn recovery(&self) -> anyhow::Result<Recovery> {
        Ok(Recovery::new(
            self.tc.cluster(),
            RecoveryOptions {
                interval: Duration::from_millis(100),
                abort_after: Duration::ZERO,
                abort_retention: Duration::ZERO,
                timeout: Duration::from_secs(5),
            },
        )?)
    }

    /// Recovery rounds until nothing of ours is prepared on any shard and no commit
    /// record is left.
    async fn recover_until_clean(&self, what: &str) -> anyhow::Result<()> {
        let mut recovery = self.recovery()?;
        let catalog = self.tc.connect_catalog().await?;
        let started = Instant::now();
        loop {
            let report = recovery.run_once().await?;
            let prepared = self.ours_prepared().await?;
            let records = twopc::list(&catalog).await?;
            let rows = self.decision_rows().await?;
            if prepared == 0 && records.is_empty() && rows == 0 {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                bail!("{what}: not recovered: {prepared} prepared, records {records:?}, {rows} decision rows, last round {report:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Prepared transactions with a pgshard GID, over both primaries.
    async fn ours_prepared(&self) -> anyhow::Result<i64> {
        let mut n = 0;
        for name in SHARDS {
            n += count(
                &self.tc.connect_node(name).await?,
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard:%'",
            )
            .await?;
        }
        Ok(n)
    }

    /// Per shard: rows of the round's key range that show its work as committed.
    async fn applied(&self, work: Work, base: i64) -> anyhow::Result<[i64; 2]> {
        let filter = match work {
            Work::Txn | Work::ExtendedTxn => "true",
            Work::Update => "v = 'updated'",
        };
        let sql = format!(
            "SELECT count(*) FROM kv WHERE id > {base} AND id <= {} AND {filter}",
            base + ROWS
        );
        let mut out = [0; 2];
        for (i, name) in SHARDS.iter().enumerate() {
            out[i] = count(&self.tc.connect_node(name).await?, &sql).await?;
        }
        Ok(out)
    }

    /// Check the round ended all-or-nothing; returns whether it committed.
    async fn all_or_nothing(&self, work: Work, base: i64, what: &str) -> anyhow::Result<bool> {
        let [a, b] = self.applied(work, base).await?;
        if a + b == 0 {
            return Ok(false);
        }
        if a + b == ROWS && a > 0 && b > 0 {
            return Ok(true);
        }
        bail!("{what}: half committed: {a} rows on shard 1, {b} on shard 2 (of {ROWS})")
    }
}

async fn count(c: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// Start `work` through `client` and send its commit, which the fault hook stops: the
/// returned task ends when the router answers or dies.
async fn start_work(
    client: Client,
    work: Work,
    base: i64,
) -> anyhow::Result<JoinHandle<Result<(), tokio_postgres::Error>>> {
    let last = match work {
        Work::Txn => {
            client.batch_execute("BEGIN").await?;
            for id in base + 1..=base + ROWS {
                client
                    .batch_execute(&format!("INSERT INTO kv (id, v) VALUES ({id}, 'txn')"))
                    .await?;
            }
            "COMMIT".to_string()
        }
        Work::ExtendedTxn => {
            client.execute("BEGIN", &[]).await?;
            for id in base + 1..=base + ROWS {
                client
                    .execute("INSERT INTO kv (id, v) VALUES ($1, 'txn')", &[&id])
                    .await?;
            }
            "COMMIT".to_string()
        }
        Work::Update => {
            // Single-shard autocommit inserts: no 2PC, so the fault hook lets them by.
            for id in base + 1..=base + ROWS {
                client
                    .batch_execute(&format!(
                        "INSERT INTO kv (id, v) VALUES ({id}, 'seed{base}')"
                    ))
                    .await?;
            }
            format!("UPDATE kv SET v = 'updated' WHERE v = 'seed{base}'")
        }
    };
    if work == Work::ExtendedTxn {
        return Ok(tokio::spawn(async move {
            client.execute(last.as_str(), &[]).await.map(drop)
        }));
    }
    Ok(tokio::spawn(async move {
        client.simple_query(&last).await.map(drop)
    }))
}

/// `SHOW TRANSACTIONS` rows as (gid, shard, decision).
async fn show_transactions(admin: &Client) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for m in admin.simple_query("SHOW TRANSACTIONS").await? {
        if let SimpleQueryMessage::Row(r) = m {
            let col = |name: &str| -> anyhow::Result<String> {
                Ok(r.try_get(name)?
                    .context("NULL in SHOW TRANSACTIONS")?
                    .to_string())
            };
            out.push((col("gid")?, col("shard")?, col("decision")?));
        }
    }
    Ok(out)
}

/// What `SHOW TRANSACTIONS` must list for a coordinator stopped at `point` with the
/// decision on a shard (of 2 writers, only the other one prepares): how many shards
/// hold the transaction prepared, and its decision.
fn expected_listing(point: FaultPoint) -> (usize, &'static str) {
    match point {
        FaultPoint::BeforePrepare | FaultPoint::AfterDecision => (0, "undecided"),
        FaultPoint::BetweenPrepares | FaultPoint::AfterPrepares => (1, "undecided"),
        FaultPoint::AfterRecord => (1, "commit"),
        FaultPoint::BetweenCommits => (0, "commit"),
    }
}

/// One round: a real router stopped at `point` during `work`, SIGKILLed there.
async fn router_killed(fx: &Fx, point: FaultPoint, work: Work, round: usize) -> anyhow::Result<()> {
    let what = format!("{point} {work:?} round {round}");
    let mut router = RouterProcess::start(&fx.tc, &[(FAULT_ENV, point.as_str())]).await?;
    let admin = router.connect_admin().await?;
    assert_eq!(show_transactions(&admin).await?, [], "{what}: left over");
    let base = next_base();
    let pending = start_work(router.connect().await?, work, base).await?;
    let line = router.wait_for_log(STOPPED, DEADLINE).await?;
    let gid = gid_in(&line)?;
    let coordinator = Gid::parse(&gid).and_then(|g| g.coordinator());
    assert!(
        coordinator.is_some(),
        "{what}: {gid} does not decide on a shard"
    );

    // The admin console still answers while the coordinator is stuck, and lists the
    // transaction where it is prepared, with the decision so far.
    let listed: Vec<_> = show_transactions(&admin)
        .await?
        .into_iter()
        .filter(|(g, _, _)| *g == gid)
        .collect();
    let (shards, decision) = expected_listing(point);
    assert_eq!(listed.len(), shards, "{what}: {listed:?}");
    assert!(
        listed.iter().all(|(_, _, d)| d == decision),
        "{what}: {listed:?}"
    );
    assert!(!pending.is_finished(), "{what}: the commit was answered");

    router.kill()?;
    let answer = tokio::time::timeout(DEADLINE, pending).await??;
    assert!(
        answer.is_err(),
        "{what}: a killed router answered {answer:?}"
    );
    fx.recover_until_clean(&what).await?;
    let committed = fx.all_or_nothing(work, base, &what).await?;
    assert_eq!(committed, point.after_commit_point(), "{what}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_at_each_fault_point_in_a_transaction() -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    for point in FaultPoint::ALL {
        for round in 0..loops() {
            router_killed(&fx, point, Work::Txn, round).await?;
        }
    }
    assert_eq!(fx.ours_prepared().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_at_each_fault_point_in_an_extended_protocol_transaction(
) -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    for point in FaultPoint::ALL {
        for round in 0..loops() {
            router_killed(&fx, point, Work::ExtendedTxn, round).await?;
        }
    }
    assert_eq!(fx.ours_prepared().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_at_each_fault_point_in_a_multi_shard_update() -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    for point in FaultPoint::ALL {
        for round in 0..loops() {
            router_killed(&fx, point, Work::Update, round).await?;
        }
    }
    assert_eq!(fx.ours_prepared().await?, 0);
    Ok(())
}

/// One round: the coordinator pauses at `point`, a shard primary is SIGKILLed and
/// restarted, then the coordinator goes on over its broken connection to that shard.
async fn shard_killed(fx: &Fx, point: FaultPoint, work: Work, round: usize) -> anyhow::Result<()> {
    let what = format!("{point} {work:?} round {round}");
    let victim = SHARDS[round % 2];
    let fault = format!("{point}:pause");
    let mut router = RouterProcess::start(&fx.tc, &[(FAULT_ENV, &fault)]).await?;
    let base = next_base();
    let pending = start_work(router.connect().await?, work, base).await?;
    router.wait_for_log(STOPPED, DEADLINE).await?;

    fx.tc.kill_node(victim).await?;
    fx.tc.start_node(victim).await?;
    router.signal(Signal::SIGUSR1)?;
    let answer = tokio::time::timeout(DEADLINE, pending).await??;
    // Whatever the router answered, shardd's recovery settles the rest.
    router.kill()?;
    fx.recover_until_clean(&what).await?;
    let committed = fx.all_or_nothing(work, base, &what).await?;
    if answer.is_ok() {
        assert!(committed, "{what}: acknowledged but not committed");
    }
    if point.after_commit_point() {
        assert!(committed, "{what}: past the commit point but rolled back");
    }
    eprintln!(
        "{what}: {victim} killed; client got {}; {}",
        match &answer {
            Ok(()) => "success".to_string(),
            Err(e) => format!("error {:?}", e.code().map(|c| c.code())),
        },
        if committed {
            "committed"
        } else {
            "rolled back"
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_primary_killed_at_each_fault_point() -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    for point in FaultPoint::ALL {
        for round in 0..loops() {
            let work = if round % 2 == 0 {
                Work::Txn
            } else {
                Work::Update
            };
            shard_killed(&fx, point, work, round).await?;
        }
    }
    assert_eq!(fx.ours_prepared().await?, 0);
    Ok(())
}

/// PostgreSQL keeps a prepared transaction through a crash of its server, and the
/// coordinator shard its committed decision row: a shard primary (either one)
/// SIGKILLed and restarted between the commit point and COMMIT PREPARED, the other
/// shard still holds the transaction prepared, `SHOW TRANSACTIONS` still lists it as
/// `commit`, and recovery commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_keeps_its_prepared_transaction_and_recovery_commits_it(
) -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    for round in 0..loops() {
        let what = format!("round {round}");
        let mut router =
            RouterProcess::start(&fx.tc, &[(FAULT_ENV, FaultPoint::AfterRecord.as_str())]).await?;
        let base = next_base();
        let pending = start_work(router.connect().await?, Work::Txn, base).await?;
        let gid = gid_in(&router.wait_for_log(STOPPED, DEADLINE).await?)?;
        // The coordinator shard committed (its decision row with it); the other one
        // holds the transaction prepared. Kill each in turn.
        let coordinator = Gid::parse(&gid)
            .and_then(|g| g.coordinator())
            .context("the gid names no coordinator shard")?;
        let c = SHARDS[coordinator.0 as usize - 1];
        let other = SHARDS[2 - coordinator.0 as usize];
        let victim = if round % 2 == 0 { other } else { c };

        fx.tc.kill_node(victim).await?;
        fx.tc.start_node(victim).await?;
        let held = count(
            &fx.tc.connect_node(other).await?,
            &format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid = '{gid}'"),
        )
        .await?;
        assert_eq!(held, 1, "{what}: {other} lost the prepared transaction");
        let row = count(
            &fx.tc.connect_node(c).await?,
            &format!(
                "SELECT count(*) FROM pgshard_2pc.decisions WHERE gid = '{gid}' AND NOT aborted"
            ),
        )
        .await?;
        assert_eq!(row, 1, "{what}: {c} lost the decision row");
        let listed = show_transactions(&router.connect_admin().await?).await?;
        let ours: Vec<_> = listed.iter().filter(|(g, _, _)| *g == gid).collect();
        assert_eq!(ours.len(), 1, "{what}: {listed:?}");
        assert!(
            ours.iter().all(|(_, _, d)| d == "commit"),
            "{what}: {listed:?}"
        );

        router.kill()?;
        let _ = tokio::time::timeout(DEADLINE, pending).await??;
        fx.recover_until_clean(&what).await?;
        assert!(fx.all_or_nothing(Work::Txn, base, &what).await?, "{what}");
    }
    Ok(())
}

/// `SHOW TRANSACTIONS` labels: no record → `undecided`, an abort record → `rollback`,
/// a commit record → `commit`; a shard that is down is skipped (with a warning) and the
/// others are still listed; after recovery the list is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_transactions_lists_in_doubt_transactions_with_their_decision() -> anyhow::Result<()> {
    let fx = Fx::start().await?;
    let router = TestRouter::start(&fx.tc).await?;
    let (admin, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=pgshard",
            router.port()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    assert_eq!(show_transactions(&admin).await?, []);

    let id = RouterId::new("crash-test").context("router id")?;
    let catalog = fx.tc.connect_catalog().await?;
    let gids: Vec<Gid> = (1..=3).map(|n| Gid::new(&id, n)).collect();
    for (n, gid) in gids.iter().enumerate() {
        for name in SHARDS {
            fx.tc
                .connect_node(name)
                .await?
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO kv VALUES ({}, 'x'); PREPARE TRANSACTION {}",
                    -1 - n as i64,
                    gid.literal()
                ))
                .await?;
        }
    }
    let both = [ShardId(1), ShardId(2)];
    twopc::record_abort(&catalog, &gids[1], &both).await?;
    twopc::record_commit(&catalog, &gids[2], &id, &both).await?;
    // Not ours: never listed.
    fx.tc
        .connect_node(SHARDS[0])
        .await?
        .batch_execute("BEGIN; INSERT INTO kv VALUES (-100, 'x'); PREPARE TRANSACTION 'other'")
        .await?;

    let listed = show_transactions(&admin).await?;
    let mut want = Vec::new();
    for (gid, decision) in gids.iter().zip(["undecided", "rollback", "commit"]) {
        for shard in ["1", "2"] {
            want.push((gid.to_string(), shard.to_string(), decision.to_string()));
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want);

    // A shard down: its rows are missing, the other shard's are still there.
    fx.tc.kill_node(SHARDS[1]).await?;
    let partial = show_transactions(&admin).await?;
    assert_eq!(partial.len(), 3, "{partial:?}");
    assert!(partial.iter().all(|(_, s, _)| s == "1"), "{partial:?}");
    fx.tc.start_node(SHARDS[1]).await?;
    assert_eq!(show_transactions(&admin).await?.len(), 6);

    fx.recover_until_clean("show transactions").await?;
    assert_eq!(show_transactions(&admin).await?, []);
    // Undecided and aborted: rolled back; committed: on both shards.
    for name in SHARDS {
        let c = fx.tc.connect_node(name).await?;
        let ids: Vec<i64> = c
            .query("SELECT id FROM kv WHERE id < 0 ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [-3], "{name}");
    }
    fx.tc
        .connect_node(SHARDS[0])
        .await?
        .batch_execute("ROLLBACK PREPARED 'other'")
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// shardd killed and restarted, through the `pgshard` CLI (real binaries, detached
// instances, as in production).

fn pgshard(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(binary("pgshard")?);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove(FAULT_ENV)
        .env_remove(ABORT_AFTER_ENV)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// SIGKILL `pid` if it is a live process whose command line contains `name` (pids get
/// reused), and wait until it is gone.
async fn kill_named(pid: i32, name: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(name) {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    let started = Instant::now();
    // Not our child (shardd's or init's): poll until the kernel has it gone or a zombie.
    while alive(pid) && started.elapsed() < Duration::from_secs(10) {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The cluster a `pgshard up` started: stopped and removed however the test ends.
struct CliCluster {
    data_dir: PathBuf,
    _root: tempfile::TempDir,
}

impl CliCluster {
    fn state(&self) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(self.data_dir.join("shardd.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn pid(&self, key: &str) -> anyhow::Result<i32> {
        self.state()?[key]
            .as_i64()
            .map(|p| p as i32)
            .with_context(|| format!("no {key} in shardd.json"))
    }

    fn router_log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("router.log")).unwrap_or_default()
    }

    fn up(&self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let out = pgshard(&["up"], &self.data_dir, env)?;
        if !out.status.success() {
            bail!("pgshard up: {}", text(&out));
        }
        Ok(())
    }

    /// A client to shard `shard`'s primary, found in the persisted layout (works with
    /// or without a running shardd).
    async fn primary(&self, shard: u32) -> anyhow::Result<Client> {
        let layout = Layout::load(&self.data_dir.join(LAYOUT_FILE))?.context("no layout")?;
        let node = layout
            .primaries()
            .find(|n| n.shard == Some(ShardId(shard)))
            .context("no primary for the shard in the layout")?;
        connect(node.port, "postgres").await
    }
}

impl Drop for CliCluster {
    fn drop(&mut self) {
        // A router orphaned by a killed shardd is nobody's child: stop it by hand.
        if let Ok(text) = std::fs::read_to_string(self.data_dir.join("router.pid")) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("pgshard-router") {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = pgshard(&["down"], &self.data_dir, &[]);
        let _ = pgshard(&["destroy"], &self.data_dir, &[]);
    }
}

async fn connect(port: u16, dbname: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={dbname} connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// shardd SIGKILLed, then the router it ran SIGKILLed at a fault point while no shardd
/// was running; `pgshard up` starts shardd again, whose first recovery round finishes
/// (commit record) or rolls back (none, older than the bound) what was left prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardd_restarted_after_a_crash_recovers_what_was_left() -> anyhow::Result<()> {
    let root = temp_dir("crash-cli")?;
    let router_port = free_port()?;
    let config = root.path().join("pgshard.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nshards = 2\nreplicas = 0\nbuckets = 64\n\
             [router]\nlisten = \"127.0.0.1:{router_port}\"\n\
             [[table]]\nname = \"kv\"\nshard_key = \"id\"\n"
        ),
    )?;
    let cluster = CliCluster {
        data_dir: root.path().join("data"),
        _root: root,
    };
    let points = [FaultPoint::AfterRecord, FaultPoint::AfterPrepares];
    // A short bound so the rollback case does not wait 30 s.
    let bound = (ABORT_AFTER_ENV, "1000");
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8 path")?],
        &cluster.data_dir,
        &[(FAULT_ENV, points[0].as_str()), bound],
    )?;
    if !out.status.success() {
        bail!("pgshard up: {}", text(&out));
    }
    connect(router_port, "postgres")
        .await?
        .batch_execute("CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL)")
        .await?;

    let rounds = loops().max(2);
    for round in 0..rounds {
        let point = points[round % 2];
        let what = format!("{point} round {round}");
        // shardd dies first: nothing recovers while the router is stuck.
        kill_named(cluster.pid("pid")?, "shardd").await;
        let seen = cluster.router_log().matches(STOPPED).count();
        let base = next_base();
        let pending = start_work(connect(router_port, "postgres").await?, Work::Txn, base).await?;
        let started = Instant::now();
        while cluster.router_log().matches(STOPPED).count() == seen {
            if started.elapsed() > DEADLINE {
                bail!(
                    "{what}: the router never reached the fault point:\n{}",
                    cluster.router_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let admin = connect(router_port, "pgshard").await?;
        let listed = show_transactions(&admin).await?;
        // Decided on a shard, only the other writer prepares (the catalog protocol,
        // before shardd created the decision tables: both).
        let on_shard = listed
            .first()
            .and_then(|(g, _, _)| Gid::parse(g))
            .is_some_and(|g| g.coordinator().is_some());
        let preparers = if on_shard { 1 } else { 2 };
        assert_eq!(listed.len(), preparers, "{what}: {listed:?}");
        drop(admin);
        kill_named(cluster.pid("router_pid")?, "pgshard-router").await;
        let answer = tokio::time::timeout(DEADLINE, pending).await??;
        assert!(answer.is_err(), "{what}: {answer:?}");

        // Still prepared on both shards: no one has recovered it.
        let mut held = 0;
        for shard in [1, 2] {
            held += count(
                &cluster.primary(shard).await?,
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard:%'",
            )
            .await?;
        }
        assert_eq!(held as usize, preparers, "{what}");

        // shardd again (armed for the next round); its recovery settles the rest.
        let next = points[(round + 1) % 2];
        cluster.up(&[(FAULT_ENV, next.as_str()), bound])?;
        let started = Instant::now();
        let mut applied;
        loop {
            held = 0;
            applied = [0i64; 2];
            for shard in [1u32, 2] {
                let c = cluster.primary(shard).await?;
                held += count(
                    &c,
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard:%'",
                )
                .await?;
                applied[shard as usize - 1] = count(
                    &c,
                    &format!(
                        "SELECT count(*) FROM kv WHERE id > {base} AND id <= {}",
                        base + ROWS
                    ),
                )
                .await?;
            }
            if held == 0 {
                break;
            }
            if started.elapsed() > DEADLINE {
                bail!("{what}: still {held} prepared after shardd restarted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let [a, b] = applied;
        if point.after_commit_point() {
            assert!(a > 0 && b > 0 && a + b == ROWS, "{what}: {applied:?}");
        } else {
            assert_eq!(applied, [0, 0], "{what}");
        }
        // The new router's console shows nothing in doubt.
        let admin = connect(router_port, "pgshard").await?;
        assert_eq!(show_transactions(&admin).await?, [], "{what}");
    }
    Ok(())
}

//! Online bucket moves (SPEC §9; issue 12), on real clusters under shardd's control
//! loop: shrinking and growing the set of shards that own buckets while clients write
//! through a router, shardd killed at each state of a move, and the source's fence
//! against routers that have not seen a move.

use pgshard_catalog::moves::MoveState;
use pgshard_catalog::{hash, KeyValue, ShardId};
use pgshard_tests::scaling::{
    check_bumps, check_clean, check_placement, connect, describe, scale, wait_moves, Load,
    ACCOUNTS, MOVES, START_BALANCE,
};
use pgshard_tests::{TestClusterOptions, TestDaemon};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 64;

fn opts(shards: u32) -> TestClusterOptions {
    TestClusterOptions {
        shards,
        replicas: 0,
        buckets: BUCKETS,
        tables: vec![
            pgshard_tests::distributed("acked", "id", "bigint"),
            pgshard_tests::distributed("accounts", "id", "bigint"),
            pgshard_tests::distributed("tallies", "id", "bigint"),
            pgshard_tests::reference("notes"),
            pgshard_tests::distributed("nopk", "id", "bigint"),
        ],
        ..Default::default()
    }
}

/// What a client writing a reference table had acknowledged: rows inserted, each with
/// its acknowledged increments, and how often a write was refused for retry (40001, a
/// shard joining the cluster while it ran).
#[derive(Default, Debug)]
struct Notes {
    rows: std::collections::BTreeMap<i64, i64>,
    retried: usize,
    errors: Vec<String>,
}

/// Insert a row into reference table `notes`, then increment an earlier one, until
/// `stop`; 40001 is retried, anything else recorded.
fn write_notes(
    connstr: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Notes> {
    tokio::spawn(async move {
        let mut n = Notes::default();
        let Some(c) = connect(&connstr).await else {
            n.errors.push("connect".into());
            return n;
        };
        let mut id = 0i64;
        while !stop.is_cancelled() {
            id += 1;
            let earlier = (id / 2).max(1);
            loop {
                let r = if n.rows.contains_key(&id) {
                    c.execute("UPDATE notes SET n = n + 1 WHERE id = $1", &[&earlier])
                        .await
                } else {
                    c.execute("INSERT INTO notes VALUES ($1, 0)", &[&id]).await
                };
                match r {
                    Ok(_) if !n.rows.contains_key(&id) => {
                        n.rows.insert(id, 0);
                        continue;
                    }
                    Ok(1) => {
                        *n.rows.entry(earlier).or_default() += 1;
                        break;
                    }
                    Ok(rows) => {
                        n.errors
                            .push(format!("update of note {earlier}: {rows} rows"));
                        break;
                    }
                    Err(e) if e.code().map(|c| c.code()) == Some("40001") => n.retried += 1,
                    Err(e) => {
                        n.errors.push(describe(&e));
                        break;
                    }
                }
            }
        }
        n
    })
}

/// Every shard's primary holds exactly the acknowledged `notes`.
async fn check_notes(d: &TestDaemon, notes: &Notes) -> anyhow::Result<()> {
    let catalog = d.catalog().await?;
    let want: Vec<(i64, i64)> = notes.rows.iter().map(|(k, v)| (*k, *v)).collect();
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        let got: Vec<(i64, i64)> = c
            .query("SELECT id, n::bigint FROM notes ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, want, "reference table notes on shard {s}");
    }
    Ok(())
}

/// Shrink 3 → 2 (`remove_shard 3` drains its buckets to shards 1 and 2, then its nodes
/// are decommissioned) and grow back 2 → 3 (`add_shard`) while clients insert, update
/// and transfer
/// through a router: 0 client errors, every acknowledged row exactly once on the shard
/// its bucket names, the money all there, nothing of the moves left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shrink_and_grow_under_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(3), |_| {}).await?;
    let router = d.router().await?;
    Load::prepare(&router).await?;
    let load = Load::start(&router, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let old_primary = d.primary_of(3).await?;
    let ids = scale(&d, json!({"op": "remove_shard", "shard": 3})).await?;
    assert!(!ids.is_empty());
    let shrunk = wait_moves(&d).await?;
    // Drained, shard 3 is decommissioned: out of the catalog, its nodes stopped.
    let started = Instant::now();
    let c = loop {
        let c = d.catalog().await?;
        if c.shard(ShardId(3)).is_none() {
            break c;
        }
        anyhow::ensure!(started.elapsed() < MOVES, "shard 3 never decommissioned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !c.bucket_map.contains(&ShardId(3)),
        "shard 3 still owns buckets: {shrunk:?}"
    );
    assert!(c.nodes.iter().all(|n| n.shard != Some(ShardId(3))));
    assert!(
        d.connect_node(&old_primary).await.is_err(),
        "shard 3's primary still runs"
    );
    let max = pgshard_catalog::placement::max_per_shard(BUCKETS, 2) as usize;
    for s in [1, 2] {
        assert!(c.bucket_map.iter().filter(|o| **o == ShardId(s)).count() <= max);
    }

    // Grow back to three shards: a new shard (4) takes its share.
    let ids = scale(&d, json!({"op": "add_shard", "replicas": 0})).await?;
    assert!(!ids.is_empty());
    let all = wait_moves(&d).await?;
    let c = d.catalog().await?;
    let on4 = c.bucket_map.iter().filter(|o| **o == ShardId(4)).count();
    assert_eq!(on4, (BUCKETS / 3) as usize, "shard 4 got its share");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;

    let done = all.iter().filter(|m| m.1 == MoveState::Done).count();
    let aborted = all.len() - done;
    let rows: i64 = all.iter().map(|m| m.2).sum();
    let mut freeze: Vec<i64> = all.iter().filter_map(|m| m.3).collect();
    freeze.sort();
    eprintln!(
        "{} moves ({} in the shrink), {done} done, {aborted} rolled back and retried, {rows} rows moved; freeze per move p50 {:?} ms, max {:?} ms; {} inserts, {} transfers, {} multi-shard reads checked",
        all.len(),
        shrunk.len(),
        freeze.get(freeze.len() / 2),
        freeze.last(),
        report.acked.len(),
        report.transfers,
        report.reads
    );
    assert!(
        report.errors.is_empty(),
        "client errors: {:?}",
        report.errors
    );
    let mut expect: HashMap<i64, i64> = (1..=ACCOUNTS).map(|a| (a, START_BALANCE)).collect();
    for (from, to) in &report.moved {
        *expect.entry(*from).or_default() -= 1;
        *expect.entry(*to).or_default() += 1;
    }
    let c = router.connect().await?;
    for r in c
        .query("SELECT id, balance FROM accounts ORDER BY id", &[])
        .await?
    {
        let (id, balance): (i64, i64) = (r.get(0), r.get(1));
        if expect.get(&id) != Some(&balance) {
            let b = hash::bucket(&KeyValue::Int(id), BUCKETS);
            eprintln!(
                "account {id} (bucket {b}): balance {balance}, expected {:?}",
                expect.get(&id)
            );
        }
    }
    assert!(
        report.acked.len() > 50 && report.transfers > 10 && report.reads > 10,
        "the load did not run"
    );
    let present = check_placement(&d, "acked").await?;
    let mut acked = report.acked.clone();
    acked.sort();
    assert_eq!(present, acked, "acknowledged rows lost or extra rows");
    check_placement(&d, "accounts").await?;
    check_bumps(&router, &report).await?;
    let c = router.connect().await?;
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);
    assert_eq!(total, ACCOUNTS * START_BALANCE, "transfers lost or doubled");
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n as usize, acked.len());
    // A move that could not drain (a transaction a router held for a frozen bucket
    // kept its source busy) was rolled back and recorded again.
    for (id, state, rows, _) in &all {
        assert!(
            *state == MoveState::Done || (*state == MoveState::Aborted && *rows == 0),
            "move {id}: {state}"
        );
    }
    check_clean(&d).await?;
    Ok(())
}

/// Grow 2 → 3 with `add_shard` while clients write through a router: a new shard's
/// instances start, get the tables' schema, join the catalog and receive their share
/// (`floor(64/3)` buckets, nothing else moves); 0 client errors, every acknowledged
/// row exactly once on its bucket's shard, the money all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_shard_under_load_moves_only_its_share() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(2), |_| {}).await?;
    let router = d.router().await?;
    Load::prepare(&router).await?;
    router
        .connect()
        .await?
        .batch_execute(
            "CREATE TABLE notes (id bigint PRIMARY KEY, n int NOT NULL);
             CREATE TABLE nopk (id bigint NOT NULL, n int NOT NULL)",
        )
        .await?;
    let values: Vec<String> = (1..=500).map(|i| format!("({i}, 0)")).collect();
    router
        .connect()
        .await?
        .batch_execute(&format!("INSERT INTO nopk VALUES {}", values.join(",")))
        .await?;
    // A table without a primary key (no replica identity covering the key) cannot be
    // published with a row filter: it is copied inside the freeze instead, and its
    // updates go on meanwhile.
    let stop_nopk = tokio_util::sync::CancellationToken::new();
    let nopk = {
        let (stop, connstr) = (stop_nopk.clone(), router.connstr());
        tokio::spawn(async move {
            let c = connect(&connstr).await.expect("connect");
            let mut bumps = vec![0i64; 501];
            let mut errors = Vec::new();
            let mut id = 0i64;
            while !stop.is_cancelled() {
                id = id % 500 + 1;
                match c
                    .execute("UPDATE nopk SET n = n + 1 WHERE id = $1", &[&id])
                    .await
                {
                    Ok(1) => bumps[id as usize] += 1,
                    Ok(n) => errors.push(format!("update nopk {id}: {n} rows")),
                    Err(e) => errors.push(describe(&e)),
                }
            }
            (bumps, errors)
        })
    };
    let load = Load::start(&router, 3);
    let stop_notes = tokio_util::sync::CancellationToken::new();
    let notes = write_notes(router.connstr(), stop_notes.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = d.catalog().await?;
    let ids = scale(&d, json!({"op": "add_shard", "replicas": 0})).await?;
    let all = wait_moves(&d).await?;
    let after = d.catalog().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;
    stop_notes.cancel();
    let notes = notes.await?;
    stop_nopk.cancel();
    let (bumps, nopk_errors) = nopk.await?;
    assert!(nopk_errors.is_empty(), "nopk: {nopk_errors:?}");
    assert_eq!(
        check_placement(&d, "nopk").await?,
        (1..=500).collect::<Vec<i64>>()
    );
    let got: Vec<i64> = router
        .connect()
        .await?
        .query("SELECT n::bigint FROM nopk ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, bumps[1..], "nopk updates lost or doubled");
    eprintln!(
        "reference writes: {} rows, {} retried (40001)",
        notes.rows.len(),
        notes.retried
    );
    assert!(notes.errors.is_empty(), "notes: {:?}", notes.errors);
    assert!(notes.rows.len() > 10, "too few reference writes: {notes:?}");
    check_notes(&d, &notes).await?;
    assert_eq!(after.shard_ids(), [ShardId(1), ShardId(2), ShardId(3)]);
    let on3 = after
        .bucket_map
        .iter()
        .filter(|o| **o == ShardId(3))
        .count();
    assert_eq!(on3, (BUCKETS / 3) as usize);
    assert!(!ids.is_empty());
    // Only buckets that went to shard 3 changed owner.
    for (b, (old, new)) in before.bucket_map.iter().zip(&after.bucket_map).enumerate() {
        assert!(
            old == new || *new == ShardId(3),
            "bucket {b} moved {old} → {new}"
        );
    }
    let metrics = d.get_text("/metrics").await?;
    let moved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgshard_shardd_buckets_moved "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(moved, Some(u64::from(BUCKETS / 3)), "{metrics}");
    let p99 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgshard_shardd_move_freeze_ms{quantile=\"0.99\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok());
    assert!(p99.is_some_and(|v| v > 0), "{metrics}");
    let rows: i64 = all.iter().map(|m| m.2).sum();
    eprintln!(
        "add-shard: {} moves, {rows} rows moved; {} inserts, {} transfers",
        all.len(),
        report.acked.len(),
        report.transfers
    );
    assert!(
        report.errors.is_empty(),
        "client errors: {:?}",
        report.errors
    );
    let mut acked = report.acked.clone();
    acked.sort();
    assert_eq!(check_placement(&d, "acked").await?, acked);
    check_placement(&d, "accounts").await?;
    check_bumps(&router, &report).await?;
    let c = router.connect().await?;
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);
    assert_eq!(total, ACCOUNTS * START_BALANCE, "transfers lost or doubled");
    check_clean(&d).await?;
    Ok(())
}

/// shardd killed at each state of a move (`PGSHARD_MOVE_CRASH_LOOPS` rounds, default
/// 5, as the issue asks): after a restart the move finished (killed after its flip) or was rolled back
/// (before) and recorded again, so the operation completes either way; every row is
/// once on its owner, and nothing of the moves is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardd_killed_at_each_move_state_finishes_or_rolls_back() -> anyhow::Result<()> {
    let loops: usize = std::env::var("PGSHARD_MOVE_CRASH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut d = TestDaemon::start(opts(2), |_| {}).await?;
    let router = d.router().await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .await?;
    let values: Vec<String> = (1..=2000).map(|i| format!("({i})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO acked (id) VALUES {}",
        values.join(",")
    ))
    .await?;
    let marker = d.data_dir().join(pgshard_shardd::reconcile::FAULT_MARKER);
    let steps = [
        "move-planned",
        "move-syncing",
        "move-frozen",
        "move-copying",
        "move-target-committed",
        "move-flipped",
        "move-cleaning",
    ];
    for round in 0..loops {
        for step in steps {
            let _ = std::fs::remove_file(&marker);
            d.restart_with_fault(step).await?;
            let catalog = d.catalog().await?;
            let to = ShardId(1 + (round as u32 + 1) % 2);
            let buckets: Vec<u32> = (0..BUCKETS)
                .filter(|b| catalog.bucket_map[*b as usize] != to)
                .take(4)
                .collect();
            let recorded = scale(&d, json!({"op": "move", "buckets": buckets, "to": to})).await?;
            let started = Instant::now();
            while !marker.exists() {
                assert!(
                    started.elapsed() < MOVES,
                    "fault point {step} never reached"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d.restart(None).await?;
            let moves = wait_moves(&d).await?;
            let interrupted = moves
                .iter()
                .find(|m| Some(&m.0) == recorded.first())
                .expect("the recorded move");
            let expected = if matches!(step, "move-flipped" | "move-cleaning") {
                MoveState::Done
            } else if step == "move-planned" {
                // Nothing was done: the restarted shardd carries it out.
                MoveState::Done
            } else {
                // Rolled back, and recorded again in the same catalog transaction.
                MoveState::Aborted
            };
            assert_eq!(interrupted.1, expected, "crash at {step}");
            if expected == MoveState::Aborted {
                let retried = moves
                    .iter()
                    .filter(|m| m.0 > interrupted.0 && m.1 == MoveState::Done)
                    .count();
                assert!(retried > 0, "crash at {step}: not moved again: {moves:?}");
            }
            // Either way the operation completes: the buckets are on `to`.
            let after = d.catalog().await?;
            for b in &buckets {
                assert_eq!(after.bucket_map[*b as usize], to, "bucket {b} after {step}");
            }
            let ids = check_placement(&d, "acked").await?;
            assert_eq!(
                ids,
                (1..=2000).collect::<Vec<i64>>(),
                "after a crash at {step}"
            );
            check_clean(&d).await?;
        }
    }
    // Routers follow: every row is readable through the router.
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n, 2000);
    Ok(())
}

/// A router that has not seen a move (it writes to the bucket's old owner directly)
/// cannot write the moving buckets there: the source's fence refuses with 55000, while
/// other buckets take writes; the fence stays until the move is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_router_cannot_write_a_moving_bucket_on_the_old_owner() -> anyhow::Result<()> {
    let mut d = TestDaemon::start(opts(2), |_| {}).await?;
    let router = d.router().await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .await?;
    let marker = d.data_dir().join(pgshard_shardd::reconcile::FAULT_MARKER);
    // Stopped after the flip: the catalog names the new owner, the fence is still up.
    for step in ["move-copying", "move-cleaning"] {
        let _ = std::fs::remove_file(&marker);
        d.restart_with_fault(step).await?;
        let catalog = d.catalog().await?;
        let source = ShardId(1);
        let moving: Vec<u32> = (0..BUCKETS)
            .filter(|b| catalog.bucket_map[*b as usize] == source)
            .take(2)
            .collect();
        let key_in = |want: bool| {
            (1..100_000i64)
                .find(|k| {
                    let b = hash::bucket(&KeyValue::Int(*k), BUCKETS).0;
                    moving.contains(&b) == want && catalog.bucket_map[b as usize] == source
                })
                .expect("a key")
        };
        let (moving_key, staying_key) = (key_in(true), key_in(false));
        scale(&d, json!({"op": "move", "buckets": moving, "to": 2})).await?;
        let started = Instant::now();
        while !marker.exists() {
            assert!(
                started.elapsed() < MOVES,
                "fault point {step} never reached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The router's SHOW BUCKETS says what the move is doing with the buckets.
        let want = match step {
            "move-copying" => "frozen, 1 → 2",
            _ => "moved from 1",
        };
        let admin = router.connect_admin().await?;
        let started = Instant::now();
        loop {
            let shown: Vec<String> = admin
                .simple_query("SHOW BUCKETS")
                .await?
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get("moving").map(str::to_string)
                    }
                    _ => None,
                })
                .collect();
            if shown.iter().any(|v| v == want) {
                break;
            }
            assert!(
                started.elapsed() < MOVES,
                "SHOW BUCKETS at {step}: {shown:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old = d.connect_node(&d.primary_of(1).await?).await?;
        let e = old
            .execute("INSERT INTO acked (id) VALUES ($1)", &[&moving_key])
            .await
            .expect_err("the fence let a moving bucket be written");
        assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{e:?}");
        old.execute("INSERT INTO acked (id) VALUES ($1)", &[&staying_key])
            .await?;
        old.execute("DELETE FROM acked WHERE id = $1", &[&staying_key])
            .await?;
        d.restart(None).await?;
        wait_moves(&d).await?;
        check_clean(&d).await?;
    }
    Ok(())
}

/// The `[[table]]` entries of bench/pgbench.toml.
fn pgbench_tables() -> Vec<pgshard_catalog::config::TableConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        table: Vec<pgshard_catalog::config::TableConfig>,
    }
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pgbench.toml");
    let text = std::fs::read_to_string(&path).expect("bench/pgbench.toml");
    toml::from_str::<File>(&text).expect("parse").table
}

fn pgbench_cmd(port: u16) -> std::process::Command {
    let dir = pgshard_shardd::runtime::local::find_pg_bin_dir(
        std::env::var_os("PGSHARD_PG_BIN_DIR")
            .map(std::path::PathBuf::from)
            .as_deref(),
    )
    .expect("PostgreSQL binaries");
    let mut c = std::process::Command::new(dir.join("pgbench"));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]);
    c
}

async fn one_int(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// pgbench's TPC-B-like load through a router while `add_shard` grows the cluster
/// 2 → 3 and `remove_shard 3` shrinks it back: pgbench ends with 0 failed transactions
/// (a statement held for a moving bucket waits, one of a transaction begun before the
/// fence goes on at the source), and afterwards the four balances agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_during_add_and_remove_shard_fails_nothing() -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            shards: 2,
            replicas: 0,
            buckets: BUCKETS,
            tables: pgbench_tables(),
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    let port = router.port();
    let init = pgbench_cmd(port)
        .args(["-i", "-s", "2", "postgres"])
        .output()?;
    anyhow::ensure!(init.status.success(), "pgbench -i: {init:?}");
    let load = tokio::task::spawn_blocking(move || {
        pgbench_cmd(port)
            .args([
                "-M",
                "extended",
                "-n",
                "--verbose-errors",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                "40",
                "postgres",
            ])
            .output()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    scale(&d, json!({"op": "add_shard", "replicas": 0})).await?;
    let grown = wait_moves(&d).await?;
    scale(&d, json!({"op": "remove_shard", "shard": 3})).await?;
    let all = wait_moves(&d).await?;
    let out = load.await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "pgbench during {} moves ({} growing):\n{stdout}",
        all.len(),
        grown.len()
    );
    anyhow::ensure!(out.status.success(), "pgbench failed: {stdout}\n{stderr}");
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .unwrap_or_default();
    anyhow::ensure!(
        failed.starts_with("number of failed transactions: 0 "),
        "{failed}\n{stderr}"
    );
    let c = router.connect().await?;
    let history = one_int(
        &c,
        "SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history",
    )
    .await?;
    for sql in [
        "SELECT sum(abalance)::int8 FROM pgbench_accounts",
        "SELECT sum(tbalance)::int8 FROM pgbench_tellers",
        "SELECT sum(bbalance)::int8 FROM pgbench_branches",
    ] {
        assert_eq!(one_int(&c, sql).await?, history, "{sql}");
    }
    assert_eq!(
        one_int(&c, "SELECT count(*) FROM pgbench_accounts").await?,
        200_000
    );
    // Over the shards directly: every account once (no copy left behind).
    let catalog = d.catalog().await?;
    assert!(catalog.frozen.is_empty(), "buckets left frozen");
    let mut direct = 0;
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        direct += one_int(&c, "SELECT count(*) FROM pgbench_accounts").await?;
    }
    assert_eq!(direct, 200_000, "accounts over the shards");
    check_clean(&d).await?;
    Ok(())
}

/// `add_replica` and `remove_replica` over the API while a client writes through a
/// router: the new replica streams from the shard's primary, is in the catalog as a
/// healthy replica and (sync durability) in the primary's synchronous set; removed, it
/// is out of both, its replication slot dropped, and writes never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_and_removed_online() -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            shards: 1,
            replicas: 1,
            buckets: BUCKETS,
            tables: vec![pgshard_tests::distributed("acked", "id", "bigint")],
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (stop, connstr) = (stop.clone(), router.connstr());
        tokio::spawn(async move {
            let c = connect(&connstr).await.expect("connect");
            let mut n = 0i64;
            while !stop.is_cancelled() {
                n += 1;
                c.execute("INSERT INTO acked (id) VALUES ($1)", &[&n])
                    .await
                    .map_err(|e| describe(&e))?;
            }
            Ok::<i64, String>(n)
        })
    };
    let primary = d.primary_of(1).await?;
    let standby_names = |p: tokio_postgres::Client| async move {
        let v: String = p
            .query_one("SHOW synchronous_standby_names", &[])
            .await?
            .get(0);
        anyhow::Ok(v)
    };

    let (code, body) = d
        .post("/v1/scale", json!({"op": "add_replica", "shard": 1}))
        .await?;
    anyhow::ensure!(code == 200, "add_replica: {code} {body}");
    let catalog = d.catalog().await?;
    let added = catalog
        .replicas(ShardId(1))
        .find(|n| n.name == "shard1-node3")
        .expect("the new replica in the catalog");
    assert_eq!(added.state, pgshard_catalog::NodeState::Healthy);
    let p = d.connect_node(&primary).await?;
    let streaming: i64 = p
        .query_one(
            "SELECT count(*) FROM pg_stat_replication
              WHERE application_name = 'shard1_node3' AND state = 'streaming'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(streaming, 1, "the new replica streams");
    let names = standby_names(d.connect_node(&primary).await?).await?;
    assert!(names.contains("shard1_node3"), "{names}");

    let (code, body) = d
        .post(
            "/v1/scale",
            json!({"op": "remove_replica", "node": "shard1-node3"}),
        )
        .await?;
    anyhow::ensure!(code == 200, "remove_replica: {code} {body}");
    let catalog = d.catalog().await?;
    assert!(catalog.nodes.iter().all(|n| n.name != "shard1-node3"));
    let names = standby_names(d.connect_node(&primary).await?).await?;
    assert!(!names.contains("shard1_node3"), "{names}");
    assert!(names.contains("shard1_node2"), "{names}");
    let slots: i64 = p
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'shard1_node3'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(slots, 0, "the removed replica's slot");
    // A primary is refused.
    let (code, _) = d
        .post(
            "/v1/scale",
            json!({"op": "remove_replica", "node": primary}),
        )
        .await?;
    assert_ne!(code, 200);

    stop.cancel();
    let written = writer.await?.map_err(|e| anyhow::anyhow!("writer: {e}"))?;
    assert!(written > 10, "the writer ran");
    let n: i64 = c.query_one("SELECT count(*) FROM acked", &[]).await?.get(0);
    assert_eq!(n, written);
    Ok(())
}

/// Statements prepared before a move, with the shard key written in them, follow the
/// bucket to its new owner: a protocol-level prepared statement (planned again at Bind)
/// and a SQL-level `PREPARE` (planned again at EXECUTE) both find the row afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_a_moved_bucket() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(2), |_| {}).await?;
    let router = d.router().await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .await?;
    c.batch_execute("INSERT INTO acked (id, v) VALUES (7, 42)")
        .await?;
    c.batch_execute("PREPARE by_sql AS SELECT v FROM acked WHERE id = 7")
        .await?;
    let by_protocol = c.prepare("SELECT v FROM acked WHERE id = 7").await?;
    assert_eq!(c.query(&by_protocol, &[]).await?.len(), 1);
    let catalog = d.catalog().await?;
    let bucket = hash::bucket(&KeyValue::Int(7), BUCKETS);
    let from = catalog.shard_of_bucket(bucket).expect("owner");
    let to = if from == ShardId(1) { 2 } else { 1 };
    scale(&d, json!({"op": "move", "buckets": [bucket.0], "to": to})).await?;
    wait_moves(&d).await?;
    // Routers follow the flip; the row is only on the new owner now.
    let started = Instant::now();
    while router_catalog_owner(&router, bucket.0).await? != to.to_string() {
        anyhow::ensure!(started.elapsed() < MOVES, "the router never saw the move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = c.query(&by_protocol, &[]).await?;
    assert_eq!(
        rows.len(),
        1,
        "protocol-level prepared statement after the move"
    );
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    let rows: Vec<_> = c
        .simple_query("EXECUTE by_sql")
        .await?
        .into_iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .collect();
    assert_eq!(rows.len(), 1, "EXECUTE after the move");
    Ok(())
}

/// The shard owning `bucket` in the router's catalog (its admin console).
async fn router_catalog_owner(
    router: &pgshard_tests::TestRouter,
    bucket: u32,
) -> anyhow::Result<String> {
    let admin = router.connect_admin().await?;
    for m in admin.simple_query("SHOW BUCKETS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let first: u32 = r.get("first_bucket").unwrap_or("0").parse()?;
            let last: u32 = r.get("last_bucket").unwrap_or("0").parse()?;
            if (first..=last).contains(&bucket) {
                return Ok(r.get("shard").unwrap_or_default().to_string());
            }
        }
    }
    anyhow::bail!("bucket {bucket} not in SHOW BUCKETS")
}

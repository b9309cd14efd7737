//! Two-phase commit against real PostgreSQL (SPEC §7, §13): the decision records in
//! the catalog, shardd's recovery over transactions prepared by hand on two real shard
//! primaries (commit record present, absent and old, absent and young, half committed,
//! a shard restarted in between), recovery over transactions whose decision lives on a
//! coordinator shard (row committed, absent, held by a transaction still running), and
//! the router's coordinator driven over real connections and stopped at each fault
//! point, after which recovery must leave every transaction all-or-nothing with nothing
//! prepared and no decision left behind.

use futures::future::BoxFuture;
use pgshard_catalog::twopc::{self, Decision, Gid, RouterId, TwoPcError};
use pgshard_catalog::{store, ShardId};
use pgshard_router::twopc::{
    CatalogLog, CommitError, CommitLog, Coordinator, DecisionTable, FaultAction, FaultPoint,
    Faults, Member, Outcome, TxnConn, TxnError,
};
use pgshard_shardd::recovery::{
    run_recovery, Recovery, RecoveryOptions, RoundReport, TransactionsStatus,
};
use pgshard_shardd::runtime::{NodeRuntime, Readiness};
use pgshard_tests::{TestCluster, TestClusterOptions};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Crash cases are repeated this many times inside each test, to catch flakes.
const LOOPS: usize = 5;
const DEADLINE: Duration = Duration::from_secs(30);
const SHARDS: [&str; 2] = ["shard1-node1", "shard2-node1"];

static NEXT_ID: AtomicI32 = AtomicI32::new(1);

fn next_id() -> i32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn router() -> RouterId {
    RouterId::new("test-router").expect("router id")
}

/// A 2-shard cluster (no replicas: 2PC does not depend on them) with table `t` on both
/// primaries, and clients to both and to the catalog.
struct Fx {
    tc: TestCluster,
    shards: Vec<Client>,
    catalog: Client,
}

impl Fx {
    async fn start() -> Fx {
        let tc = TestCluster::start(TestClusterOptions {
            replicas: 0,
            buckets: 64,
            ..Default::default()
        })
        .await
        .expect("cluster starts");
        let mut shards = Vec::new();
        for name in SHARDS {
            let c = tc.connect_node(name).await.expect("connect shard");
            c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
                .await
                .expect("create table");
            shards.push(c);
        }
        let catalog = tc.connect_catalog().await.expect("connect catalog");
        Fx {
            tc,
            shards,
            catalog,
        }
    }

    async fn reconnect(&mut self, i: usize) {
        self.shards[i] = self
            .tc
            .connect_node(SHARDS[i])
            .await
            .expect("reconnect shard");
    }

    fn recovery(&self, abort_after: Duration) -> Recovery {
        Recovery::new(
            self.tc.cluster(),
            RecoveryOptions {
                interval: Duration::from_millis(100),
                abort_after,
                abort_retention: Duration::ZERO,
                timeout: Duration::from_secs(5),
            },
        )
        .expect("recovery")
    }

    /// On shard `i`: `BEGIN; INSERT id; PREPARE TRANSACTION gid`.
    async fn prepare(&self, i: usize, gid: &Gid, id: i32) {
        self.shards[i]
            .batch_execute(&format!(
                "BEGIN; INSERT INTO t VALUES ({id}, 'x'); PREPARE TRANSACTION {}",
                gid.literal()
            ))
            .await
            .expect("prepare");
    }

    async fn rows(&self, i: usize, id: i32) -> i64 {
        self.shards[i]
            .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
            .await
            .expect("count rows")
            .get(0)
    }

    /// Rows with `id` on (shard 1, shard 2).
    async fn rows_both(&self, id: i32) -> (i64, i64) {
        (self.rows(0, id).await, self.rows(1, id).await)
    }

    async fn prepared(&self, i: usize, gid: &str) -> i64 {
        self.shards[i]
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                &[&gid],
            )
            .await
            .expect("pg_prepared_xacts")
            .get(0)
    }

    async fn prepared_any(&self, gid: &str) -> i64 {
        self.prepared(0, gid).await + self.prepared(1, gid).await
    }

    async fn all_ours_prepared(&self) -> i64 {
        let mut n = 0;
        for c in &self.shards {
            let k: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard:%'",
                    &[],
                )
                .await
                .expect("pg_prepared_xacts")
                .get(0);
            n += k;
        }
        n
    }

    async fn record(&self, gid: &Gid) -> Option<Decision> {
        twopc::commit_decision(&self.catalog, gid)
            .await
            .expect("commit_decision")
            .map(|r| r.decision)
    }

    /// Decision rows (`pgshard_2pc.decisions`) for `gid` (all if `None`) on both
    /// shards; 0 where the table does not exist.
    async fn decision_rows(&self, gid: Option<&Gid>) -> i64 {
        let mut n = 0;
        for c in &self.shards {
            let exists: bool = c
                .query_one(
                    "SELECT to_regclass('pgshard_2pc.decisions') IS NOT NULL",
                    &[],
                )
                .await
                .expect("to_regclass")
                .get(0);
            if !exists {
                continue;
            }
            let k: i64 = c
                .query_one(
                    "SELECT count(*) FROM pgshard_2pc.decisions WHERE $1::text IS NULL OR gid = $1",
                    &[&gid.map(|g| g.as_str())],
                )
                .await
                .expect("decision rows")
                .get(0);
            n += k;
        }
        n
    }

    /// The decision row of `gid` on shard `i`: `Some(aborted)`.
    async fn decision(&self, i: usize, gid: &Gid) -> Option<bool> {
        self.shards[i]
            .query_opt(
                "SELECT aborted FROM pgshard_2pc.decisions WHERE gid = $1",
                &[&gid.as_str()],
            )
            .await
            .expect("decision row")
            .map(|r| r.get(0))
    }

    /// Run recovery rounds until `gid` is prepared nowhere and has no record or
    /// decision row.
    async fn recover_until_clean(&self, recovery: &mut Recovery, gid: &Gid) -> Vec<RoundReport> {
        let started = Instant::now();
        let mut reports = Vec::new();
        loop {
            reports.push(recovery.run_once().await.expect("recovery round"));
            if self.prepared_any(gid.as_str()).await == 0
                && self.record(gid).await.is_none()
                && self.decision_rows(Some(gid)).await == 0
            {
                return reports;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{gid} not recovered: {reports:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn commit_records_are_decisions_that_do_not_bump_the_catalog_version() {
    let fx = Fx::start().await;
    let c = &fx.catalog;
    let v0 = store::version(c).await.expect("version");
    let (a, b) = (Gid::new(&router(), 1), Gid::new(&router(), 2));
    let shards = [ShardId(1), ShardId(2)];

    twopc::record_commit(c, &a, &router(), &shards)
        .await
        .expect("record");
    twopc::record_commit(c, &a, &router(), &shards)
        .await
        .expect("idempotent");
    let rec = twopc::commit_decision(c, &a)
        .await
        .expect("decision")
        .expect("present");
    assert_eq!(rec.decision, Decision::Committing);
    assert_eq!(rec.participants, shards);
    assert_eq!(rec.router, "test-router");
    // Recovery's abort loses to a recorded commit...
    assert_eq!(
        twopc::record_abort(c, &a, &shards).await.expect("abort"),
        Decision::Committing
    );
    // ...and a recorded abort refuses a late commit.
    assert_eq!(
        twopc::record_abort(c, &b, &shards).await.expect("abort"),
        Decision::Aborted
    );
    assert!(matches!(
        twopc::record_commit(c, &b, &router(), &shards).await,
        Err(TwoPcError::Aborted(_))
    ));
    let listed: Vec<String> = twopc::list(c)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.gid)
        .collect();
    assert_eq!(listed, [a.to_string(), b.to_string()]);
    assert_eq!(store::version(c).await.expect("version"), v0);

    assert!(twopc::forget(c, &a).await.expect("forget"));
    assert!(!twopc::forget(c, &a).await.expect("forget again"));
    assert_eq!(twopc::commit_decision(c, &a).await.expect("decision"), None);
    assert_eq!(store::version(c).await.expect("version"), v0);
}

#[tokio::test]
async fn recovery_commits_rolls_back_or_waits_by_the_records() {
    let mut fx = Fx::start().await;
    let mut recovery = fx.recovery(Duration::from_secs(3600));
    let both = [ShardId(1), ShardId(2)];

    for round in 0..LOOPS {
        // (a) Commit record present: committed on both shards, record forgotten.
        let (gid, id) = (Gid::new(&router(), next_id() as u64), next_id());
        fx.prepare(0, &gid, id).await;
        fx.prepare(1, &gid, id).await;
        twopc::record_commit(&fx.catalog, &gid, &router(), &both)
            .await
            .expect("record");
        assert_eq!(fx.rows_both(id).await, (0, 0), "round {round}");
        fx.recover_until_clean(&mut recovery, &gid).await;
        assert_eq!(fx.rows_both(id).await, (1, 1), "(a) round {round}");

        // (d) Half-finished commit: shard 1 committed by hand, shard 2 by recovery.
        let (gid, id) = (Gid::new(&router(), next_id() as u64), next_id());
        fx.prepare(0, &gid, id).await;
        fx.prepare(1, &gid, id).await;
        twopc::record_commit(&fx.catalog, &gid, &router(), &both)
            .await
            .expect("record");
        fx.shards[0]
            .batch_execute(&format!("COMMIT PREPARED {}", gid.literal()))
            .await
            .expect("commit prepared on shard 1");
        assert_eq!(fx.rows_both(id).await, (1, 0));
        fx.recover_until_clean(&mut recovery, &gid).await;
        assert_eq!(fx.rows_both(id).await, (1, 1), "(d) round {round}");

        // (c, first half) No record, young: left alone and reported in doubt.
        let (gid, id) = (Gid::new(&router(), next_id() as u64), next_id());
        fx.prepare(0, &gid, id).await;
        fx.prepare(1, &gid, id).await;
        let report = recovery.run_once().await.expect("round");
        let doubt: Vec<_> = report
            .in_doubt
            .iter()
            .filter(|d| d.gid == gid.as_str())
            .collect();
        assert_eq!(doubt.len(), 2, "{report:#?}");
        assert!(doubt.iter().all(|d| d.decision.is_none()));
        assert_eq!(fx.prepared_any(gid.as_str()).await, 2);
        assert_eq!(fx.record(&gid).await, None);
        // (b) The same once old enough (a bound of zero): rolled back on both.
        let mut eager = fx.recovery(Duration::ZERO);
        fx.recover_until_clean(&mut eager, &gid).await;
        assert_eq!(fx.rows_both(id).await, (0, 0), "(b) round {round}");
    }

    // Transactions prepared by others are none of recovery's business.
    fx.shards[0]
        .batch_execute("BEGIN; INSERT INTO t VALUES (-1, 'x'); PREPARE TRANSACTION 'not-ours'")
        .await
        .expect("foreign prepare");
    fx.recovery(Duration::ZERO).run_once().await.expect("round");
    assert_eq!(fx.prepared(0, "not-ours").await, 1);
    fx.shards[0]
        .batch_execute("ROLLBACK PREPARED 'not-ours'")
        .await
        .expect("cleanup");

    // (e) A shard primary restarts between PREPARE and COMMIT PREPARED: prepared
    // transactions survive it, recovery waits for the shard and then commits.
    let runtime = fx.tc.runtime().clone();
    let spec = fx.tc.spec(SHARDS[1]).expect("spec");
    for round in 0..LOOPS {
        let (gid, id) = (Gid::new(&router(), next_id() as u64), next_id());
        fx.prepare(0, &gid, id).await;
        fx.prepare(1, &gid, id).await;
        twopc::record_commit(&fx.catalog, &gid, &router(), &both)
            .await
            .expect("record");
        runtime.stop(&spec).await.expect("stop shard 2");
        let report = recovery.run_once().await.expect("round");
        assert!(!report.errors.is_empty(), "shard 2 is down: {report:#?}");
        // Shard 1 is finished; the record stays while shard 2 is unseen.
        assert_eq!(fx.rows(0, id).await, 1, "(e) round {round}");
        assert_eq!(fx.record(&gid).await, Some(Decision::Committing));
        runtime.start(&spec).await.expect("start shard 2");
        runtime
            .wait_ready(&spec, Readiness::Accepting, DEADLINE)
            .await
            .expect("shard 2 ready");
        fx.reconnect(1).await;
        assert_eq!(
            fx.prepared(1, gid.as_str()).await,
            1,
            "survived the restart"
        );
        fx.recover_until_clean(&mut recovery, &gid).await;
        assert_eq!(fx.rows_both(id).await, (1, 1), "(e) round {round}");
    }
    assert_eq!(fx.all_ours_prepared().await, 0);
}

/// Transactions coordinated on shard 1 (their decision row there, in the same
/// database), prepared on shard 2 by hand: recovery commits on a committed row at any
/// age, waits while the coordinator's transaction still holds the key (never rolling
/// back under it), follows that transaction's end, and rolls back a transaction with
/// no row once old enough (its abort row then blocks a late coordinator).
#[tokio::test]
async fn recovery_decides_by_the_decision_row_on_the_coordinator_shard() {
    let fx = Fx::start().await;
    let mut patient = fx.recovery(Duration::from_secs(3600));
    let mut eager = fx.recovery(Duration::ZERO);
    patient
        .run_once()
        .await
        .expect("the first round creates the decision tables");
    let on_shard_1 = || Gid::on_shard(&router(), next_id() as u64, ShardId(1));
    let coordinate = |gid: &Gid, id: i32| {
        format!(
            "BEGIN; INSERT INTO t VALUES ({id}, 'c'); {}",
            twopc::decision_insert_sql(gid)
        )
    };
    for round in 0..LOOPS {
        // (a) The coordinator shard committed: committed at once, row deleted.
        let (gid, id) = (on_shard_1(), next_id());
        fx.shards[0]
            .batch_execute(&format!("{}; COMMIT", coordinate(&gid, id)))
            .await
            .expect("coordinator commits");
        fx.prepare(1, &gid, id).await;
        assert_eq!(fx.decision(0, &gid).await, Some(false));
        fx.recover_until_clean(&mut patient, &gid).await;
        assert_eq!(fx.rows_both(id).await, (1, 1), "(a) round {round}");

        // (b, c) The coordinator's transaction still runs with its row: in doubt even
        // past the bound; then it commits (b) or rolls back (c), and recovery follows.
        for commits in [true, false] {
            let (gid, id) = (on_shard_1(), next_id());
            let c = fx.tc.connect_node(SHARDS[0]).await.expect("connect");
            c.batch_execute(&coordinate(&gid, id))
                .await
                .expect("coordinate");
            fx.prepare(1, &gid, id).await;
            let report = eager.run_once().await.expect("round");
            assert!(
                report.in_doubt.iter().any(|d| d.gid == gid.as_str()),
                "{report:#?}"
            );
            assert_eq!(fx.prepared(1, gid.as_str()).await, 1, "round {round}");
            c.batch_execute(if commits { "COMMIT" } else { "ROLLBACK" })
                .await
                .expect("coordinator ends");
            fx.recover_until_clean(&mut eager, &gid).await;
            let want = if commits { (1, 1) } else { (0, 0) };
            assert_eq!(
                fx.rows_both(id).await,
                want,
                "commits {commits} round {round}"
            );
        }

        // (d) No row (the coordinator died before its commit): in doubt while young,
        // rolled back once old enough, and the coordinator's late insert conflicts.
        let (gid, id) = (on_shard_1(), next_id());
        fx.prepare(1, &gid, id).await;
        let report = patient.run_once().await.expect("round");
        assert!(report.in_doubt.iter().any(|d| d.gid == gid.as_str()));
        assert_eq!(fx.decision(0, &gid).await, None);
        let mut keep = fx.recovery(Duration::ZERO);
        let report = loop {
            let r = keep.run_once().await.expect("round");
            if fx.prepared_any(gid.as_str()).await == 0 {
                break r;
            }
        };
        assert!(
            report.rolled_back.iter().any(|(g, _)| *g == gid.as_str()),
            "{report:#?}"
        );
        assert_eq!(fx.rows_both(id).await, (0, 0), "(d) round {round}");
        assert_eq!(fx.decision(0, &gid).await, Some(true));
        let late = fx.tc.connect_node(SHARDS[0]).await.expect("connect");
        let err = late
            .batch_execute(&format!("{}; COMMIT", coordinate(&gid, next_id())))
            .await
            .expect_err("a late coordinator cannot commit");
        assert_eq!(err.code().map(|c| c.code()), Some("23505"));
        // With no retention, the abort row goes once nothing holds the transaction.
        fx.recover_until_clean(&mut eager, &gid).await;
    }
    assert_eq!(fx.all_ours_prepared().await, 0);
    assert_eq!(fx.decision_rows(None).await, 0);
}

/// (c) through the periodic task shardd runs: in doubt while young (and published for
/// `GET /v1/transactions`), rolled back once older than the bound.
#[tokio::test]
async fn the_recovery_task_rolls_back_young_transactions_after_the_bound() {
    let fx = Fx::start().await;
    let bound = Duration::from_secs(2);
    let shared = Arc::new(RwLock::new(TransactionsStatus::default()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_recovery(
        fx.recovery(bound),
        shared.clone(),
        stop.clone(),
    ));
    for round in 0..LOOPS {
        let (gid, id) = (Gid::new(&router(), next_id() as u64), next_id());
        let prepared_at = Instant::now();
        fx.prepare(0, &gid, id).await;
        fx.prepare(1, &gid, id).await;
        // Published as in doubt on both shards.
        loop {
            let seen = shared
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .in_doubt
                .iter()
                .filter(|d| d.gid == gid.as_str())
                .count();
            if seen == 2 {
                break;
            }
            assert!(
                prepared_at.elapsed() < bound,
                "round {round}: not reported in doubt before the bound"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fx.prepared_any(gid.as_str()).await, 2);
        // Rolled back after the bound, and never before it.
        loop {
            let left = fx.prepared_any(gid.as_str()).await;
            if left == 0 {
                assert!(
                    prepared_at.elapsed() >= bound,
                    "round {round}: rolled back early"
                );
                break;
            }
            assert!(
                prepared_at.elapsed() < DEADLINE,
                "round {round}: still prepared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(fx.rows_both(id).await, (0, 0), "round {round}");
    }
    stop.cancel();
    task.await.expect("recovery task");
    assert_eq!(fx.all_ours_prepared().await, 0);
}

/// A participant over a plain tokio-postgres client (simple query protocol).
struct PgConn {
    client: Client,
    failed: bool,
    table: DecisionTable,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PgErr(tokio_postgres::Error);

impl TxnError for PgErr {
    fn sqlstate(&self) -> Option<&str> {
        self.0.code().map(|c| c.code())
    }
}

impl TxnConn for PgConn {
    type Error = PgErr;
    fn simple<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), PgErr>> {
        Box::pin(async move {
            let r = self.client.batch_execute(sql).await.map_err(PgErr);
            self.failed = r.is_err();
            r
        })
    }
    fn in_failed_transaction(&self) -> bool {
        self.failed
    }
    fn decision_table(&self) -> DecisionTable {
        self.table
    }
    fn set_decision_table(&mut self, known: DecisionTable) {
        self.table = known;
    }
}

impl Fx {
    /// Open a transaction inserting `id` on both shards, over new connections.
    async fn begin_both(&self, id: i32) -> Vec<PgConn> {
        let mut conns = Vec::new();
        for name in SHARDS {
            let client = self.tc.connect_node(name).await.expect("connect");
            client
                .batch_execute(&format!("BEGIN; INSERT INTO t VALUES ({id}, 'c')"))
                .await
                .expect("begin");
            conns.push(PgConn {
                client,
                failed: false,
                table: DecisionTable::Unknown,
            });
        }
        conns
    }

    fn catalog_log(&self) -> CatalogLog {
        let conninfo = self
            .tc
            .catalog_spec()
            .expect("catalog spec")
            .connstr(store::CATALOG_DB);
        CatalogLog::new(&conninfo, router()).expect("catalog log")
    }
}

async fn commit_both(
    coordinator: &Coordinator,
    conns: &mut [PgConn],
    log: &dyn CommitLog,
) -> Result<Outcome, CommitError<PgErr>> {
    let mut members: Vec<Member<'_, PgErr>> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| Member {
            shard: ShardId(i as u32 + 1),
            wrote: true,
            conn: c,
        })
        .collect();
    coordinator.commit(&mut members, log).await
}

/// The coordinator over real shard primaries, stopped dead at each fault point (its
/// connections then dropped, as a crash drops them): after recovery each transaction is
/// on both shards or on neither, and nothing stays prepared.
#[tokio::test]
async fn the_coordinator_crashing_at_each_step_ends_all_or_nothing() {
    let fx = Fx::start().await;
    let log = fx.catalog_log();
    // A crashed coordinator's transactions have no one left to wait for.
    let mut recovery = fx.recovery(Duration::ZERO);

    // Without the decision tables (no recovery round yet): the catalog protocol, and
    // the record can be forgotten at once.
    let plain = Coordinator::new(router(), Faults::none());
    for _ in 0..LOOPS {
        let id = next_id();
        let mut conns = fx.begin_both(id).await;
        let outcome = commit_both(&plain, &mut conns, &log).await.expect("commit");
        let Outcome::Committed {
            gid: Some(gid),
            unfinished,
        } = outcome
        else {
            panic!("no 2PC: {outcome:?}");
        };
        assert!(unfinished.is_empty());
        assert_eq!(gid.coordinator(), None);
        assert_eq!(fx.rows_both(id).await, (1, 1));
        assert_eq!(fx.prepared_any(gid.as_str()).await, 0);
        assert_eq!(fx.record(&gid).await, Some(Decision::Committing));
        log.forget(&gid).await.expect("forget");
        assert_eq!(fx.record(&gid).await, None);
    }

    // With them (recovery creates them): the decision is a row on the first writer,
    // committed with it; no catalog record; recovery deletes the row.
    recovery
        .run_once()
        .await
        .expect("recovery creates the decision tables");
    for _ in 0..LOOPS {
        let id = next_id();
        let mut conns = fx.begin_both(id).await;
        let outcome = commit_both(&plain, &mut conns, &log).await.expect("commit");
        let Outcome::Committed {
            gid: Some(gid),
            unfinished,
        } = outcome
        else {
            panic!("no 2PC: {outcome:?}");
        };
        assert!(unfinished.is_empty());
        assert_eq!(gid.coordinator(), Some(ShardId(1)));
        assert_eq!(fx.rows_both(id).await, (1, 1));
        assert_eq!(fx.prepared_any(gid.as_str()).await, 0);
        assert_eq!(fx.record(&gid).await, None);
        assert_eq!(fx.decision(0, &gid).await, Some(false));
        fx.recover_until_clean(&mut recovery, &gid).await;
    }

    // A PREPARE that fails (a unique violation surfacing at a deferred check) rolls
    // everything back.
    for c in &fx.shards {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS d (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .expect("create d");
    }
    for _ in 0..LOOPS {
        let id = next_id();
        let mut conns = fx.begin_both(id).await;
        conns[1]
            .client
            .batch_execute(&format!("INSERT INTO d VALUES ({id}), ({id})"))
            .await
            .expect("deferred duplicate");
        match commit_both(&plain, &mut conns, &log).await {
            Err(e @ CommitError::Failed { shard, .. }) => {
                assert_eq!(shard, ShardId(2));
                assert_eq!(e.sqlstate(), "23505");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fx.rows_both(id).await, (0, 0));
        assert_eq!(fx.all_ours_prepared().await, 0);
    }

    // Each fault point, with the decision on a shard and (connections that found no
    // decision table) in the catalog.
    let cases = FaultPoint::ALL
        .into_iter()
        .flat_map(|p| [(p, false), (p, true)]);
    for (point, catalog) in cases {
        if catalog && point == FaultPoint::AfterDecision {
            continue; // the catalog protocol has no decision insert
        }
        let coordinator = Coordinator::new(router(), Faults::at(point, FaultAction::Abandon));
        for round in 0..LOOPS {
            let id = next_id();
            let mut conns = fx.begin_both(id).await;
            if catalog {
                for c in &mut conns {
                    c.table = DecisionTable::Absent(Instant::now());
                }
            }
            let r = commit_both(&coordinator, &mut conns, &log).await;
            assert!(
                matches!(r, Err(CommitError::Halted(p)) if p == point),
                "{point}: {r:?}"
            );
            // The crash: the coordinator's connections go away mid-protocol.
            drop(conns);
            // Recover until nothing of ours is prepared and the records are gone.
            let started = Instant::now();
            loop {
                recovery.run_once().await.expect("recovery round");
                let records = twopc::list(&fx.catalog).await.expect("list");
                if fx.all_ours_prepared().await == 0
                    && records.is_empty()
                    && fx.decision_rows(None).await == 0
                {
                    break;
                }
                assert!(
                    started.elapsed() < DEADLINE,
                    "{point} (catalog {catalog}) round {round}: not recovered; records {records:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let want = if point.after_commit_point() {
                (1, 1)
            } else {
                (0, 0)
            };
            assert_eq!(
                fx.rows_both(id).await,
                want,
                "{point} (catalog {catalog}) round {round}"
            );
        }
    }
}

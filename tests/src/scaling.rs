//! What the bucket-move tests (SPEC §9; `tests/tests/scaling*.rs`,
//! `tests/tests/docker_scaling.rs`) share: driving `/v1/scale` and waiting for the moves,
//! the clients that write through a router while buckets move ([`Load`]), and the checks
//! afterwards: every row once on the shard its bucket names ([`check_placement`]) and
//! nothing of a move left behind ([`check_clean`], [`check_no_leftovers`]).

use crate::{TestDaemon, TestRouter};
use pgshard_catalog::moves::MoveState;
use pgshard_catalog::{hash, Catalog, KeyValue, ShardId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the moves of one operation may take.
pub const MOVES: Duration = Duration::from_secs(180);

/// `POST /v1/scale` with `op`; the moves recorded.
pub async fn scale(d: &TestDaemon, op: serde_json::Value) -> anyhow::Result<Vec<i64>> {
    let (code, body) = d.post("/v1/scale", op.clone()).await?;
    anyhow::ensure!(code == 200, "scale {op}: {code} {body}");
    Ok(body["moves"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default())
}

/// Every move recorded, once none is unfinished: `(id, state, rows, freeze_ms)`.
pub async fn wait_moves(d: &TestDaemon) -> anyhow::Result<Vec<(i64, MoveState, i64, Option<i64>)>> {
    let started = Instant::now();
    loop {
        let body: serde_json::Value = serde_json::from_str(&d.get_text("/v1/moves").await?)?;
        let moves: Vec<pgshard_catalog::moves::Move> =
            serde_json::from_value(body["moves"].clone()).unwrap_or_default();
        if moves.iter().all(|m| m.state.finished()) {
            return Ok(moves
                .into_iter()
                .map(|m| (m.id, m.state, m.rows_moved, m.freeze_ms))
                .collect());
        }
        anyhow::ensure!(started.elapsed() < MOVES, "moves unfinished: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of `table` on each shard primary, read directly (not through a router).
pub async fn ids_by_shard(
    d: &TestDaemon,
    catalog: &Catalog,
    table: &str,
) -> anyhow::Result<HashMap<ShardId, Vec<i64>>> {
    let mut out = HashMap::new();
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        let rows = c.query(&format!("SELECT id FROM {table}"), &[]).await?;
        out.insert(s, rows.iter().map(|r| r.get(0)).collect());
    }
    Ok(out)
}

/// Every row of `table` exists exactly once, on the shard its bucket names; returns the
/// ids.
pub async fn check_placement(d: &TestDaemon, table: &str) -> anyhow::Result<Vec<i64>> {
    let catalog = d.catalog().await?;
    assert!(catalog.frozen.is_empty(), "buckets left frozen");
    let mut seen: HashMap<i64, ShardId> = HashMap::new();
    for (shard, ids) in ids_by_shard(d, &catalog, table).await? {
        for id in ids {
            let bucket = hash::bucket(&KeyValue::Int(id), catalog.buckets);
            let owner = catalog.shard_of_bucket(bucket);
            assert_eq!(
                owner,
                Some(shard),
                "{table} row {id} (bucket {bucket}) on the wrong shard"
            );
            if let Some(other) = seen.insert(id, shard) {
                panic!("{table} row {id} on shards {other} and {shard}");
            }
        }
    }
    let mut ids: Vec<i64> = seen.into_keys().collect();
    ids.sort();
    Ok(ids)
}

/// Nothing of a move left on any shard: no prepared transaction, no fence.
pub async fn check_clean(d: &TestDaemon) -> anyhow::Result<()> {
    let catalog = d.catalog().await?;
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        let prepared: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(prepared, 0, "prepared transactions left on shard {s}");
        let fence: bool = c
            .query_one("SELECT to_regnamespace('pgshard_move') IS NOT NULL", &[])
            .await?
            .get(0);
        assert!(!fence, "fence left on shard {s}");
        let triggers: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgshard_move_fence'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(triggers, 0, "fence triggers left on shard {s}");
        // Nothing of the subscriptions that copy rows ahead of a freeze.
        let replication: String = c
            .query_one(
                "SELECT concat_ws(' ',
                     (SELECT string_agg(slot_name, ',') FROM pg_replication_slots
                       WHERE slot_type = 'logical'),
                     (SELECT string_agg(pubname, ',') FROM pg_publication),
                     (SELECT string_agg(subname, ',') FROM pg_subscription))",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(replication, "", "replication objects left on shard {s}");
    }
    Ok(())
}

/// Every tally was bumped by every acknowledged multi-shard UPDATE, exactly once.
pub async fn check_bumps(router: &TestRouter, report: &Report) -> anyhow::Result<()> {
    let c = router.connect().await?;
    let wrong: Vec<String> = c
        .query(
            "SELECT id || ': ' || bumps FROM tallies WHERE bumps <> $1 ORDER BY id",
            &[&report.bumps],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} acknowledged multi-shard updates, but tallies bumped: {wrong:?}",
        report.bumps
    );
    Ok(())
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

pub const ACCOUNTS: i64 = 20;
/// Rows of `tallies`, which every multi-shard UPDATE of the load bumps.
pub const TALLIES: i64 = 20;
pub const START_BALANCE: i64 = 1000;

#[derive(Debug, Default)]
pub struct Report {
    pub acked: Vec<i64>,
    /// Acknowledged transfers `(from, to)`.
    pub moved: Vec<(i64, i64)>,
    pub errors: Vec<String>,
    pub transfers: u64,
    /// Multi-shard reads of `accounts` that were checked.
    pub reads: u64,
    /// Ids of acknowledged rows of `acked` whose `v` an acknowledged update raised by 1
    /// (once per update).
    pub updated: Vec<i64>,
    /// Acknowledged `UPDATE tallies SET bumps = bumps + 1` (every shard).
    pub bumps: i64,
}

/// Clients writing through the router: autocommit inserts whose acknowledged ids are
/// recorded, and transfers between accounts (one transaction, often two shards); and
/// a reader checking that multi-shard reads of `accounts` (which never gains or loses
/// a row) count every account exactly once while its buckets move, in both protocols.
/// A client whose connection the router closed (a shard primary killed under it)
/// connects again.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Report>>,
}

pub async fn connect(connstr: &str) -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(connstr, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(c)
}

impl Load {
    pub async fn prepare(router: &TestRouter) -> anyhow::Result<()> {
        let c = router.connect().await?;
        c.batch_execute(
            "CREATE TABLE acked (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0);
             CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE tallies (id bigint PRIMARY KEY, bumps bigint NOT NULL DEFAULT 0)",
        )
        .await?;
        let ids: Vec<String> = (1..=TALLIES).map(|i| format!("({i})")).collect();
        c.batch_execute(&format!(
            "INSERT INTO tallies (id) VALUES {}",
            ids.join(",")
        ))
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

    pub fn start(router: &TestRouter, writers: usize) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (stop, connstr) = (stop.clone(), router.connstr());
            tasks.push(tokio::spawn(async move {
                let mut r = Report::default();
                let Some(mut c) = connect(&connstr).await else {
                    r.errors.push("connect".into());
                    return r;
                };
                let mut next = (w as i64 + 1) * 10_000_000;
                while !stop.is_cancelled() {
                    if !reconnect(&mut c, &connstr, &mut r).await {
                        continue;
                    }
                    next += 1;
                    match c
                        .execute("INSERT INTO acked (id) VALUES ($1)", &[&next])
                        .await
                    {
                        Ok(1) => r.acked.push(next),
                        Ok(n) => failed(&mut r, format!("insert {next}: {n} rows")).await,
                        Err(e) => failed(&mut r, format!("insert {next}: {}", describe(&e))).await,
                    }
                    // And an update of an earlier row (simple protocol).
                    if next % 5 == 0 {
                        let sql = format!("UPDATE acked SET v = v + 1 WHERE id = {}", next - 3);
                        match c.batch_execute(&sql).await {
                            // The row is there when its insert was acknowledged.
                            Ok(()) if r.acked.iter().rev().take(4).any(|a| *a == next - 3) => {
                                r.updated.push(next - 3)
                            }
                            Ok(()) => {}
                            Err(e) => failed(&mut r, format!("update: {}", describe(&e))).await,
                        }
                    }
                }
                r
            }));
        }
        let (stop2, connstr) = (stop.clone(), router.connstr());
        tasks.push(tokio::spawn(async move {
            let mut r = Report::default();
            let Some(mut c) = connect(&connstr).await else {
                r.errors.push("connect".into());
                return r;
            };
            let mut i: i64 = 0;
            while !stop2.is_cancelled() {
                if !reconnect(&mut c, &connstr, &mut r).await {
                    continue;
                }
                i += 1;
                let (from, to) = (i % ACCOUNTS + 1, (i * 7 + 3) % ACCOUNTS + 1);
                if from == to {
                    continue;
                }
                let res = async {
                    let tx = c.transaction().await?;
                    let a = tx
                        .execute(
                            "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
                            &[&from],
                        )
                        .await?;
                    let b = tx
                        .execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                            &[&to],
                        )
                        .await?;
                    tx.commit().await.map(|()| (a, b))
                }
                .await;
                match res {
                    Ok((1, 1)) => {
                        r.transfers += 1;
                        r.moved.push((from, to));
                    }
                    Ok((a, b)) => {
                        failed(
                            &mut r,
                            format!("transfer {from}→{to}: updated {a} and {b} rows"),
                        )
                        .await
                    }
                    Err(e) => failed(&mut r, format!("transfer: {}", describe(&e))).await,
                }
            }
            r
        }));
        let (stop3, connstr) = (stop.clone(), router.connstr());
        tasks.push(tokio::spawn(async move {
            let mut r = Report::default();
            let Some(mut c) = connect(&connstr).await else {
                r.errors.push("connect".into());
                return r;
            };
            let sql = "SELECT count(*), count(DISTINCT id) FROM accounts";
            while !stop3.is_cancelled() {
                if !reconnect(&mut c, &connstr, &mut r).await {
                    continue;
                }
                // Extended protocol, then the simple one.
                let counts = match c.query_one(sql, &[]).await {
                    Ok(row) => vec![row.get::<_, i64>(0), row.get::<_, i64>(1)],
                    Err(e) => {
                        failed(&mut r, format!("read: {}", describe(&e))).await;
                        continue;
                    }
                };
                let simple = match c.simple_query("SELECT id FROM accounts ORDER BY id").await {
                    Ok(m) => m
                        .iter()
                        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                        .count() as i64,
                    Err(e) => {
                        failed(&mut r, format!("read: {}", describe(&e))).await;
                        continue;
                    }
                };
                if counts != [ACCOUNTS, ACCOUNTS] || simple != ACCOUNTS {
                    failed(
                        &mut r,
                        format!("read: count, distinct {counts:?}, ordered rows {simple}; expected {ACCOUNTS}"),
                    )
                    .await;
                }
                r.reads += 1;
                // A write on every shard: it must not also write a moving bucket's copy
                // on the shard that does not own it (the move copies the owner's). Not
                // of `accounts`: with the transfers it could deadlock across shards (no
                // distributed deadlock detection yet).
                match c.execute("UPDATE tallies SET bumps = bumps + 1", &[]).await {
                    Ok(n) if n == TALLIES as u64 => r.bumps += 1,
                    Ok(n) => failed(&mut r, format!("bump: {n} rows")).await,
                    Err(e) => failed(&mut r, format!("bump: {}", describe(&e))).await,
                }
            }
            r
        }));
        Load { stop, tasks }
    }

    pub async fn finish(mut self) -> Report {
        self.stop.cancel();
        let mut all = Report::default();
        for t in std::mem::take(&mut self.tasks) {
            if let Ok(r) = t.await {
                all.acked.extend(r.acked);
                all.errors.extend(r.errors);
                all.transfers += r.transfers;
                all.reads += r.reads;
                all.moved.extend(r.moved);
                all.updated.extend(r.updated);
                all.bumps += r.bumps;
            }
        }
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failed assertion stops the clients too.
        self.stop.cancel();
    }
}

/// A new connection in place of `c` if the router closed it (the error that closed it
/// was recorded); false, with an error recorded, if none could be made.
async fn reconnect(c: &mut tokio_postgres::Client, connstr: &str, r: &mut Report) -> bool {
    if !c.is_closed() {
        return true;
    }
    match connect(connstr).await {
        Some(new) => {
            *c = new;
            true
        }
        None => {
            failed(r, "connect".into()).await;
            false
        }
    }
}

/// Record a client error; errors past the first hundred are counted, not kept, and
/// the client pauses a little (a failing client must not spin).
pub async fn failed(r: &mut Report, e: String) {
    if r.errors.len() < 100 {
        r.errors.push(e);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// What a move may leave on an instance, by kind: a query counting it.
const LEFTOVERS: [(&str, &str); 6] = [
    (
        "prepared transactions",
        "SELECT count(*) FROM pg_prepared_xacts",
    ),
    (
        "fence schema",
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshard_move'",
    ),
    (
        "fence triggers",
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgshard_move_fence'",
    ),
    (
        "logical replication slots",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
    ),
    ("publications", "SELECT count(*) FROM pg_publication"),
    ("subscriptions", "SELECT count(*) FROM pg_subscription"),
];

/// Nothing of a move left on any instance of any shard, replicas included (they replay
/// the primaries' WAL, so each is given until `timeout` to catch up): no prepared
/// transaction, fence schema or trigger, logical replication slot, publication or
/// subscription.
pub async fn check_no_leftovers(d: &TestDaemon, timeout: Duration) -> anyhow::Result<()> {
    let catalog = d.catalog().await?;
    let started = Instant::now();
    for node in catalog.nodes.iter().filter(|n| n.shard.is_some()) {
        loop {
            let c = d.connect_node(&node.name).await?;
            let mut found = Vec::new();
            for (what, sql) in LEFTOVERS {
                let n: i64 = c.query_one(sql, &[]).await?.get(0);
                if n > 0 {
                    found.push(format!("{n} {what}"));
                }
            }
            if found.is_empty() {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "left on {} ({:?}): {}",
                node.name,
                node.role,
                found.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `id → v` of every row of `acked` on the shard primaries, read directly (a row on two
/// shards is an error).
pub async fn acked_values(d: &TestDaemon) -> anyhow::Result<HashMap<i64, i32>> {
    let catalog = d.catalog().await?;
    let mut out = HashMap::new();
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        for r in c.query("SELECT id, v FROM acked", &[]).await? {
            let (id, v): (i64, i32) = (r.get(0), r.get(1));
            anyhow::ensure!(out.insert(id, v).is_none(), "acked row {id} twice");
        }
    }
    Ok(out)
}

/// The `v` each acknowledged row of `acked` has after the load: the number of its
/// acknowledged updates.
pub fn expected_values(report: &Report) -> HashMap<i64, i32> {
    let mut want: HashMap<i64, i32> = report.acked.iter().map(|id| (*id, 0)).collect();
    for id in &report.updated {
        *want.entry(*id).or_default() += 1;
    }
    want
}

/// Each account's balance after the acknowledged transfers of `report`.
pub fn expected_balances(report: &Report) -> HashMap<i64, i64> {
    let mut want: HashMap<i64, i64> = (1..=ACCOUNTS).map(|a| (a, START_BALANCE)).collect();
    for (from, to) in &report.moved {
        *want.entry(*from).or_default() -= 1;
        *want.entry(*to).or_default() += 1;
    }
    want
}

/// `id → balance` of every account on the shard primaries, read directly.
pub async fn balances(d: &TestDaemon) -> anyhow::Result<HashMap<i64, i64>> {
    let catalog = d.catalog().await?;
    let mut out = HashMap::new();
    for s in catalog.shard_ids() {
        let p = catalog.primary(s).expect("primary");
        let c = d.connect_node(&p.name).await?;
        for r in c.query("SELECT id, balance FROM accounts", &[]).await? {
            let (id, b): (i64, i64) = (r.get(0), r.get(1));
            anyhow::ensure!(out.insert(id, b).is_none(), "account {id} twice");
        }
    }
    Ok(out)
}

/// The unfinished moves in the catalog now, read from the catalog database directly
/// (`GET /v1/moves` answers between the control loop's rounds, never during a move).
pub async fn unfinished_moves(
    catalog: &tokio_postgres::Client,
) -> anyhow::Result<Vec<pgshard_catalog::moves::Move>> {
    Ok(pgshard_catalog::moves::list(catalog, true).await?)
}

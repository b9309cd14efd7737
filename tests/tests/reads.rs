//! Read routing to replicas (SPEC §8, issue 13) on real clusters under shardd: which
//! node served each statement is read back with `inet_server_port()`.
//!
//! - routing rules: replica reads spread over both replicas of each shard; writes,
//!   `FOR UPDATE`, data-modifying CTEs, non-read-only functions and transactions that
//!   are not READ ONLY stay on the primary; a READ ONLY transaction stays on one node;
//!   `SET pgshard.read_from` per session;
//! - lag: a replica whose replay is paused and that falls behind the bound serves no
//!   read until it has caught up again;
//! - read-your-writes: insert then select in a loop always finds the row;
//! - a replica killed under read load: the reads go on through the other one.

use pgshard_catalog::config::{ReadFrom, ReplicaFallback};
use pgshard_catalog::{Catalog, Config, NodeRole, ShardId};
use pgshard_tests::{distributed, TestClusterOptions, TestDaemon, TestRouter};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn opts(shards: u32) -> TestClusterOptions {
    TestClusterOptions {
        shards,
        replicas: 2,
        buckets: 64,
        tables: vec![distributed("kv", "k", "integer")],
        ..Default::default()
    }
}

fn replica_reads(c: &mut Config) {
    c.router.read_from = ReadFrom::Replica;
    c.router.replica_probe_ms = 100;
}

/// Port → (node name, role, shard) in a catalog snapshot.
fn nodes_by_port(catalog: &Catalog) -> BTreeMap<u16, (String, NodeRole, Option<ShardId>)> {
    catalog
        .nodes
        .iter()
        .map(|n| (n.port, (n.name.clone(), n.role, n.shard)))
        .collect()
}

/// Creates `kv` with keys 1..=n through the router and waits until every replica
/// has them (a readiness check on the replicas themselves).
async fn seed(d: &TestDaemon, router: &TestRouter, n: i32) -> anyhow::Result<()> {
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL, pad text)")
        .await?;
    for k in 1..=n {
        c.execute("INSERT INTO kv VALUES ($1, $1)", &[&k]).await?;
    }
    let catalog = d.catalog().await?;
    let started = Instant::now();
    for node in catalog.nodes.iter().filter(|n| n.role == NodeRole::Replica) {
        if node.shard.is_none() {
            continue;
        }
        let r = d.connect_node(&node.name).await?;
        loop {
            let replayed: Option<i64> = r
                .query_one("SELECT count(*) FROM pg_class WHERE relname = 'kv'", &[])
                .await?
                .get(0);
            if replayed == Some(1) {
                let total: i64 = r.query_one("SELECT count(*) FROM kv", &[]).await?.get(0);
                let primary = catalog
                    .primary(node.shard.unwrap_or(ShardId(1)))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let p = d.connect_node(&primary).await?;
                let want: i64 = p.query_one("SELECT count(*) FROM kv", &[]).await?.get(0);
                if total == want {
                    break;
                }
            }
            assert!(started.elapsed() < WAIT, "{} did not catch up", node.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The port that served a one-row query whose first column is `inet_server_port()`.
async fn port_of(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<u16> {
    for m in c.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let p: u16 = r.get(0).unwrap_or_default().parse()?;
            return Ok(p);
        }
    }
    anyhow::bail!("no row from {sql}")
}

/// Replica reads spread over each shard's replicas; everything that may write stays
/// on the primary; READ ONLY transactions keep to one node; the session setting
/// overrides the router's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_never_do() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(2), replica_reads).await?;
    let router = d.router().await?;
    seed(&d, &router, 40).await?;
    let catalog = d.catalog().await?;
    let by_port = nodes_by_port(&catalog);
    let role = |p: u16| by_port.get(&p).map(|n| n.1);
    let shard_of_port = |p: u16| by_port.get(&p).and_then(|n| n.2);
    let c = router.connect().await?;

    // Simple protocol: every read on a replica of the key's shard, both replicas used.
    let mut seen: BTreeSet<u16> = BTreeSet::new();
    for k in 1..=40 {
        let p = port_of(
            &c,
            &format!("SELECT inet_server_port(), v FROM kv WHERE k = {k}"),
        )
        .await?;
        assert_eq!(role(p), Some(NodeRole::Replica), "read of {k} on {p}");
        let key_shard = catalog.shard_of(&pgshard_catalog::KeyValue::Int(i64::from(k)));
        assert_eq!(shard_of_port(p), key_shard, "read of {k}");
        seen.insert(p);
    }
    assert_eq!(
        seen.len(),
        4,
        "both replicas of both shards serve: {seen:?}"
    );

    // Extended protocol (Parse/Bind/Execute with the key as a parameter).
    let mut ext: BTreeSet<u16> = BTreeSet::new();
    for k in 1..=20i32 {
        let row = c
            .query_one(
                "SELECT inet_server_port()::int, v FROM kv WHERE k = $1",
                &[&k],
            )
            .await?;
        let p: i32 = row.get(0);
        let v: i32 = row.get(1);
        assert_eq!(v, k);
        assert_eq!(role(p as u16), Some(NodeRole::Replica));
        ext.insert(p as u16);
    }
    assert!(ext.len() >= 2, "{ext:?}");

    // Never on a replica: writes, locks, writing CTEs, unknown functions.
    for sql in [
        "INSERT INTO kv VALUES (1001, 1) RETURNING inet_server_port()",
        "UPDATE kv SET v = v + 1 WHERE k = 1 RETURNING inet_server_port()",
        "SELECT inet_server_port() FROM kv WHERE k = 2 FOR UPDATE",
        "SELECT inet_server_port() FROM kv WHERE k = 2 FOR SHARE",
        "WITH u AS (UPDATE kv SET v = v WHERE k = 3 RETURNING k) SELECT inet_server_port() FROM u",
        "DELETE FROM kv WHERE k = 1001 RETURNING inet_server_port()",
        "SELECT inet_server_port(), txid_current() FROM kv WHERE k = 4",
    ] {
        let p = port_of(&c, sql).await?;
        assert_eq!(role(p), Some(NodeRole::Primary), "{sql} ran on {p}");
    }
    let row = c
        .query_one(
            "SELECT inet_server_port()::int FROM kv WHERE k = $1 FOR UPDATE",
            &[&5i32],
        )
        .await?;
    assert_eq!(role(row.get::<_, i32>(0) as u16), Some(NodeRole::Primary));

    // Pipelined (each with its Sync): read, write, read on one shard. The write
    // leaves the replica for the primary; nothing that writes ever reaches a replica.
    let port_sql = "SELECT inet_server_port()::int FROM kv WHERE k = $1";
    let (r1, w, r2) = futures::try_join!(
        c.query_one(port_sql, &[&11i32]),
        c.query_one(
            "UPDATE kv SET v = v WHERE k = $1 RETURNING inet_server_port()::int",
            &[&11i32]
        ),
        c.query_one(port_sql, &[&11i32]),
    )?;
    assert_eq!(role(r1.get::<_, i32>(0) as u16), Some(NodeRole::Replica));
    assert_eq!(role(w.get::<_, i32>(0) as u16), Some(NodeRole::Primary));
    assert!(role(r2.get::<_, i32>(0) as u16).is_some());

    // The setting as a startup parameter, like a GUC.
    let (pc, conn) = tokio_postgres::connect(
        &format!(
            "{} options='-c pgshard.read_from=primary'",
            router.connstr()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let p = port_of(&pc, "SELECT inet_server_port() FROM kv WHERE k = 12").await?;
    assert_eq!(role(p), Some(NodeRole::Primary));

    // A transaction that is not READ ONLY: the primary, reads included.
    c.batch_execute("BEGIN").await?;
    let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 6").await?;
    assert_eq!(role(p), Some(NodeRole::Primary));
    c.batch_execute("UPDATE kv SET v = v WHERE k = 6; COMMIT")
        .await?;

    // READ ONLY: one replica for the whole transaction; a write in it is refused as
    // PostgreSQL refuses it in a READ ONLY transaction.
    for _ in 0..3 {
        c.batch_execute("BEGIN READ ONLY").await?;
        let first = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 7").await?;
        assert_eq!(role(first), Some(NodeRole::Replica));
        for _ in 0..5 {
            assert_eq!(
                port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 7").await?,
                first
            );
        }
        let e = c
            .batch_execute("INSERT INTO kv VALUES (2000, 1)")
            .await
            .expect_err("write in a READ ONLY transaction");
        assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");
        c.batch_execute("ROLLBACK").await?;
    }

    // Per session: primary, any, and back to the router's setting.
    c.batch_execute("SET pgshard.read_from = primary").await?;
    let shown = c.simple_query("SHOW pgshard.read_from").await?;
    assert!(
        matches!(&shown[..], [tokio_postgres::SimpleQueryMessage::RowDescription(_), tokio_postgres::SimpleQueryMessage::Row(r), ..] if r.get(0) == Some("primary"))
    );
    for k in 1..=5 {
        let p = port_of(
            &c,
            &format!("SELECT inet_server_port() FROM kv WHERE k = {k}"),
        )
        .await?;
        assert_eq!(role(p), Some(NodeRole::Primary));
    }
    c.batch_execute("SET pgshard.read_from = any").await?;
    let mut roles = BTreeSet::new();
    for _ in 0..12 {
        let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 8").await?;
        roles.insert(format!("{:?}", role(p)));
    }
    assert_eq!(roles.len(), 2, "any reads both roles: {roles:?}");
    let e = c
        .batch_execute("SET pgshard.read_from = secondary")
        .await
        .expect_err("bad value");
    assert_eq!(e.code().map(|c| c.code()), Some("22023"));
    c.batch_execute("RESET pgshard.read_from").await?;
    let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 9").await?;
    assert_eq!(role(p), Some(NodeRole::Replica));

    // SHOW POOLS counts the reads per node and role.
    let admin = router.connect_admin().await?;
    let mut replica_reads = 0u64;
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("role") == Some("replica") {
                replica_reads += r.get("reads").unwrap_or("0").parse::<u64>()?;
            }
        }
    }
    assert!(
        replica_reads >= 60,
        "SHOW POOLS: {replica_reads} replica reads"
    );
    Ok(())
}

/// The replica's lag as the router reports it in SHOW POOLS.
async fn lag_of(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<Option<u64>> {
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("name") == Some(name) {
                return Ok(r.get("lag_bytes").and_then(|v| v.parse().ok()));
            }
        }
    }
    Ok(None)
}

/// `pg_wal_replay_pause()` on one replica, writes until it is beyond the bound: no
/// read goes to it; once resumed and caught up, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_skipped_until_it_catches_up() -> anyhow::Result<()> {
    const BOUND: u64 = 256 * 1024;
    let d = TestDaemon::start(opts(1), |c| {
        replica_reads(c);
        c.router.max_replica_lag_bytes = Some(BOUND);
    })
    .await?;
    let router = d.router().await?;
    seed(&d, &router, 10).await?;
    let catalog = d.catalog().await?;
    let by_port = nodes_by_port(&catalog);
    let replicas: Vec<String> = catalog
        .replicas(ShardId(1))
        .map(|n| n.name.clone())
        .collect();
    let paused = replicas[0].clone();
    let c = router.connect().await?;
    let admin = router.connect_admin().await?;
    // Both serve while in bounds (the pool rows exist once used).
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 1").await?;
        seen.insert(by_port[&p].0.clone());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    let r = d.connect_node(&paused).await?;
    r.batch_execute("SELECT pg_wal_replay_pause()").await?;
    // WAL on the primary, written there directly (any write makes lag).
    let primary = d.connect_node(&d.primary_of(1).await?).await?;
    primary
        .batch_execute("CREATE TABLE filler (pad text)")
        .await?;
    let started = Instant::now();
    loop {
        // Writes until the router sees the lag beyond the bound.
        primary
            .batch_execute(
                "INSERT INTO filler SELECT repeat('x', 500) FROM generate_series(1, 300)",
            )
            .await?;
        if lag_of(&admin, &paused).await?.is_some_and(|l| l > BOUND) {
            break;
        }
        assert!(started.elapsed() < WAIT, "lag never exceeded the bound");
    }
    for _ in 0..40 {
        let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 1").await?;
        assert_ne!(by_port[&p].0, paused, "a read went to the paused replica");
    }
    let skipped = admin
        .simple_query("SHOW POOLS")
        .await?
        .into_iter()
        .any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
            if r.get("name") == Some(paused.as_str())
                && r.get("skipped_lag").is_some_and(|v| v != "0"))
        });
    assert!(skipped, "SHOW POOLS counts the lag skips");

    r.batch_execute("SELECT pg_wal_replay_resume()").await?;
    let started = Instant::now();
    while lag_of(&admin, &paused).await?.is_none_or(|l| l > BOUND) {
        assert!(started.elapsed() < WAIT, "never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = false;
    for _ in 0..20 {
        let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 1").await?;
        back |= by_port[&p].0 == paused;
    }
    assert!(back, "the caught-up replica serves again");
    Ok(())
}

/// With read-your-writes, a row inserted is always found by the next read, which
/// may go to a replica once one has replayed the insert (else the primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_and_a_killed_replica() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(1), |c| {
        replica_reads(c);
        c.router.read_your_writes = true;
        c.router.replica_fallback = ReplicaFallback::Primary;
    })
    .await?;
    let router = d.router().await?;
    seed(&d, &router, 10).await?;
    let catalog = d.catalog().await?;
    let by_port = nodes_by_port(&catalog);
    let c = router.connect().await?;
    let mut on_replica = 0;
    for k in 10_000..10_300i32 {
        c.execute("INSERT INTO kv VALUES ($1, $1)", &[&k]).await?;
        let rows = c
            .query(
                "SELECT inet_server_port()::int, v FROM kv WHERE k = $1",
                &[&k],
            )
            .await?;
        assert_eq!(rows.len(), 1, "row {k} not seen by its writer");
        let p: i32 = rows[0].get(0);
        if by_port[&(p as u16)].1 == NodeRole::Replica {
            on_replica += 1;
        }
        // Reads after a pause reach the replicas again.
        if k % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    eprintln!("read-your-writes: {on_replica} of 300 reads right after a write on a replica");
    // Once a replica has replayed the last write, reads go back to the replicas.
    let started = Instant::now();
    loop {
        let row = c
            .query_one(
                "SELECT inet_server_port()::int, v FROM kv WHERE k = $1",
                &[&10_299i32],
            )
            .await?;
        assert_eq!(row.get::<_, i32>(1), 10_299);
        if by_port[&(row.get::<_, i32>(0) as u16)].1 == NodeRole::Replica {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "reads never returned to the replicas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Kill one replica while four clients read; they go on through the other one.
    let victim = catalog
        .replicas(ShardId(1))
        .next()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let router_conn = router.connstr();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut ok = 0u64;
            let mut client = None;
            while !stop.is_cancelled() {
                if client.is_none() {
                    let (cl, conn) =
                        tokio_postgres::connect(&router_conn, tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    client = Some(cl);
                }
                let Some(cl) = client.as_ref() else { break };
                match cl.query("SELECT v FROM kv WHERE k = $1", &[&(i + 1)]).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors.push(e.to_string());
                        client = None;
                    }
                }
            }
            anyhow::Ok((ok, errors))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.kill_node(&victim).await?;
    // Reads after the kill: all served, none by the victim.
    let c2 = router.connect().await?;
    let mut after = 0;
    let started = Instant::now();
    while after < 50 {
        match c2
            .query_one("SELECT inet_server_port()::int FROM kv WHERE k = 1", &[])
            .await
        {
            Ok(row) => {
                // shardd may restart the victim meanwhile; any node of the shard may
                // answer, but every read must be answered.
                let p: i32 = row.get(0);
                assert!(by_port.contains_key(&(p as u16)));
                after += 1;
            }
            Err(e) => panic!("read after the kill failed: {e}"),
        }
        assert!(started.elapsed() < WAIT);
    }
    stop.cancel();
    let mut total_errors = 0;
    for t in tasks {
        let (ok, errors) = t.await??;
        eprintln!("reader: {ok} reads, errors {errors:?}");
        assert!(ok > 0);
        // At most the statement in flight on the killed replica fails.
        assert!(errors.len() <= 1, "{errors:?}");
        total_errors += errors.len();
    }
    eprintln!("{total_errors} reads failed with the killed replica");
    Ok(())
}

/// The differential corpus through a router with `read_from = any` on a 2-shard
/// cluster with one replica per shard: no wrong answers, and replicas serve part of
/// the reads. The cluster runs `synchronous_commit = remote_apply` (with one replica
/// per shard in `sync` durability, every acknowledged commit is already visible on
/// it), so no staleness is allowed; with plain `on`, only the lag the option allows
/// could differ (read-your-writes removes it too, see
/// `read_your_writes_and_a_killed_replica`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_corpus_with_read_from_any() -> anyhow::Result<()> {
    use pgshard_tests::diff::{self, parse_corpus};
    use pgshard_tests::wire::{Mode, WireClient};
    use pgshard_tests::{reference, Standalone, TestCluster};
    let tables = vec![
        distributed("accounts", "id", "bigint"),
        distributed("users", "id", "integer"),
        distributed("docs", "slug", "text"),
        distributed("things", "id", "uuid"),
        distributed("smalls", "k", "smallint"),
        distributed("vnames", "k", "varchar"),
        reference("branches"),
    ];
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 1,
        tables,
        postgres: [("synchronous_commit".to_string(), "remote_apply".to_string())].into(),
        ..Default::default()
    })
    .await?;
    let mut config = cluster.config().router.clone();
    config.read_from = ReadFrom::Any;

    let router = TestRouter::start_with(&cluster, config).await?;
    let plain = Standalone::start().await?;
    let path = format!("{}/corpus/single_shard.sql", env!("CARGO_MANIFEST_DIR"));
    let entries = parse_corpus("single_shard.sql", &std::fs::read_to_string(&path)?);
    let mut p =
        WireClient::connect("127.0.0.1", plain.port(), "postgres", "postgres", None).await?;
    let mut r =
        WireClient::connect("127.0.0.1", router.port(), "postgres", "postgres", None).await?;
    let report = diff::run_mode(&mut p, &mut r, &entries, Mode::Simple).await?;
    eprintln!("read_from = any: {}", report.summary());
    assert!(report.wrong.is_empty(), "{}", report.summary());
    assert!(report.same > 150, "{}", report.summary());
    let admin = router.connect_admin().await?;
    let mut by_role: BTreeMap<String, u64> = BTreeMap::new();
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            *by_role
                .entry(r.get("role").unwrap_or("?").to_string())
                .or_default() += r.get("reads").unwrap_or("0").parse::<u64>()?;
        }
    }
    eprintln!("reads routed by role: {by_role:?}");
    assert!(
        by_role.get("replica").is_some_and(|n| *n > 0),
        "{by_role:?}"
    );
    Ok(())
}

/// The read set follows the catalog through a failover: once the router's catalog
/// names the promoted replica as primary, replica reads go only to the remaining
/// replica, and they go on without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_set_follows_a_failover() -> anyhow::Result<()> {
    let d = TestDaemon::start(opts(1), replica_reads).await?;
    let router = d.router().await?;
    seed(&d, &router, 10).await?;
    let old = d.primary_of(1).await?;
    let c = router.connect().await?;
    for _ in 0..10 {
        port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 1").await?;
    }
    d.kill_node(&old).await?;
    let after = d
        .wait_catalog("shard 1 has a new primary", WAIT, |cat| {
            cat.primary(ShardId(1)).is_some_and(|p| p.name != old)
        })
        .await?;
    let promoted = after
        .primary(ShardId(1))
        .map(|p| p.port)
        .unwrap_or_default();
    let started = Instant::now();
    while router.catalog().primary(ShardId(1)).map(|p| p.port) != Some(promoted) {
        assert!(started.elapsed() < WAIT, "router never saw the new primary");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = router.connect().await?;
    for _ in 0..30 {
        let p = port_of(&c, "SELECT inet_server_port() FROM kv WHERE k = 1").await?;
        let snapshot = router.catalog();
        let node = snapshot.nodes.iter().find(|n| n.port == p);
        assert!(
            node.is_some_and(|n| n.role == NodeRole::Replica && n.name != old),
            "read served by {node:?} after the failover"
        );
        assert_ne!(p, promoted, "the promoted primary served a replica read");
    }
    Ok(())
}

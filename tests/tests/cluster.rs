//! End-to-end tests of cluster bootstrap, replication and restart, and of the harness
//! itself, against real PostgreSQL 15 processes (no mocks). Every test uses its own
//! temporary directory and free ports, and checks that no postmaster it started
//! survives it.

use pgshard_catalog::config::{Durability, TableConfig};
use pgshard_catalog::{KeyType, NodeRole, TableKind};
use pgshard_tests::{Standalone, TestCluster, TestClusterOptions};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// True while `pid` exists and is not a zombie (a detached postmaster that exited is
/// reaped by init, which may take a moment; it no longer runs meanwhile).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn assert_all_gone(pids: &[(String, u32)]) {
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
    assert!(left.is_empty(), "postmasters survived: {left:?}");
}

/// Poll `query` (returning one bigint) on `client` until it equals `want`.
async fn wait_for_value(client: &Client, query: &str, want: i64, deadline: Duration) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < deadline {
        match client.query_one(query, &[]).await {
            Ok(row) => {
                let v: i64 = row.get(0);
                if v == want {
                    return;
                }
                last = Some(Ok(v));
            }
            Err(e) => last = Some(Err(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("`{query}` did not reach {want} within {deadline:?}; last: {last:?}");
}

/// `(application_name, state, sync_state)` of every standby of `primary`.
async fn standbys(primary: &Client) -> Vec<(String, String, String)> {
    primary
        .query(
            "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_stat_replication")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn setting(client: &Client, name: &str) -> String {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .expect("current_setting")
        .get(0)
}

#[tokio::test]
async fn standalone_serves_and_stops_on_drop() {
    let pg = Standalone::start().await.expect("standalone starts");
    let client = pg.connect().await.expect("connect");
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    current_setting('lc_collate'), current_setting('server_encoding'), \
                    current_setting('max_prepared_transactions')::int",
            &[],
        )
        .await
        .expect("query");
    let version: i32 = row.get(0);
    assert!((150000..160000).contains(&version), "version {version}");
    assert_eq!(row.get::<_, String>(1), "C.UTF-8");
    assert_eq!(row.get::<_, String>(2), "UTF8");
    assert_eq!(row.get::<_, i32>(3), 100);
    let pid = pg.pid().await.expect("pid").expect("running");
    drop(client);
    drop(pg);
    assert_all_gone(&[("standalone".into(), pid)]);
}

/// The default shape: catalog + 2 shards, each a primary and one sync replica.
#[tokio::test]
async fn sync_cluster_streams_replicates_and_restarts_with_its_data() {
    let started = Instant::now();
    let mut tc = TestCluster::start(TestClusterOptions::default())
        .await
        .expect("cluster starts");
    let bootstrap = started.elapsed();

    // Layout: catalog + its replica + 2 × (primary + replica).
    assert_eq!(
        tc.node_names(),
        [
            "catalog-node1",
            "catalog-node2",
            "shard1-node1",
            "shard1-node2",
            "shard2-node1",
            "shard2-node2"
        ]
    );

    // Catalog round trip.
    let catalog = tc.catalog().clone();
    assert_eq!(catalog.shard_ids().len(), 2);
    assert_eq!(catalog.buckets, 1024);
    assert_eq!(catalog.bucket_map.len(), 1024);
    assert_eq!(catalog.nodes.len(), 6);
    for shard in catalog.shard_ids() {
        let primary = catalog.primary(shard).expect("shard has a primary");
        assert_eq!(primary.name, format!("shard{shard}-node1"));
        assert_eq!(catalog.replicas(shard).count(), 1);
        assert_eq!(
            catalog.bucket_map.iter().filter(|s| **s == shard).count(),
            512
        );
    }
    assert_eq!(
        catalog
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Catalog)
            .count(),
        1
    );

    // Every replica streams, synchronously, from its primary.
    for (primary, replica) in [
        ("catalog-node1", "catalog_node2"),
        ("shard1-node1", "shard1_node2"),
        ("shard2-node1", "shard2_node2"),
    ] {
        let client = tc.connect_node(primary).await.expect("connect primary");
        let rows = standbys(&client).await;
        assert_eq!(rows.len(), 1, "{primary}: {rows:?}");
        let (name, state, sync_state) = &rows[0];
        assert_eq!(name, replica);
        assert_eq!(state, "streaming");
        assert!(
            sync_state == "sync" || sync_state == "quorum",
            "{primary}: sync_state {sync_state}"
        );
        assert_eq!(
            setting(&client, "synchronous_standby_names").await,
            format!("ANY 1 (\"{replica}\")")
        );
    }

    // A write on each primary shows up on its replica.
    for s in 1..=2 {
        let primary = tc
            .connect_node(&format!("shard{s}-node1"))
            .await
            .expect("primary");
        primary
            .batch_execute(&format!(
                "CREATE TABLE t (id bigint PRIMARY KEY, shard int);
                 INSERT INTO t SELECT g, {s} FROM generate_series(1, 100) g;"
            ))
            .await
            .expect("write");
        let replica = tc
            .connect_node(&format!("shard{s}-node2"))
            .await
            .expect("replica");
        wait_for_value(
            &replica,
            "SELECT count(*) FROM pg_class WHERE relname = 't'",
            1,
            Duration::from_secs(30),
        )
        .await;
        wait_for_value(
            &replica,
            &format!("SELECT count(*) FROM t WHERE shard = {s}"),
            100,
            Duration::from_secs(30),
        )
        .await;
    }

    // Stop: every postmaster exits.
    let pids_before = tc.pids().await.expect("pids");
    assert_eq!(pids_before.len(), 6, "{pids_before:?}");
    tc.stop().await.expect("stop");
    assert_all_gone(&pids_before);
    assert!(tc.pids().await.expect("pids").is_empty());

    // Restart on the same data: same ports, data kept, replicas streaming again.
    let restart_started = Instant::now();
    tc.restart().await.expect("restart");
    let restart = restart_started.elapsed();
    assert_eq!(tc.catalog().nodes.len(), 6);
    assert_eq!(tc.catalog().bucket_map, catalog.bucket_map);
    for s in 1..=2 {
        let primary = tc
            .connect_node(&format!("shard{s}-node1"))
            .await
            .expect("primary");
        let n: i64 = primary
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 100);
        primary
            .execute("INSERT INTO t VALUES (1000, $1)", &[&s])
            .await
            .expect("write after restart");
        let rows = standbys(&primary).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, "streaming");
        let replica = tc
            .connect_node(&format!("shard{s}-node2"))
            .await
            .expect("replica");
        wait_for_value(
            &replica,
            "SELECT count(*) FROM t",
            101,
            Duration::from_secs(30),
        )
        .await;
    }
    let pids = tc.pids().await.expect("pids");
    assert_eq!(pids.len(), 6);
    drop(tc);
    assert_all_gone(&pids);
    eprintln!(
        "timings: bootstrap {bootstrap:?}, restart {restart:?}, test {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn async_cluster_has_no_synchronous_standbys() {
    let tc = TestCluster::start(TestClusterOptions {
        shards: 1,
        replicas: 1,
        durability: Some(Durability::Async),
        buckets: 64,
        tables: vec![
            TableConfig {
                name: "pgbench_accounts".into(),
                shard_key: Some("aid".into()),
                key_type: Some("integer".into()),
                kind: None,
                colocate_with: None,
            },
            TableConfig {
                name: "pgbench_branches".into(),
                shard_key: None,
                key_type: None,
                kind: Some("reference".into()),
                colocate_with: None,
            },
        ],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    assert_eq!(tc.catalog().buckets, 64);
    assert_eq!(tc.catalog().nodes.len(), 4);
    // The config's table declarations seed the catalog.
    let accounts = tc.catalog().table("pgbench_accounts").expect("declared");
    assert!(
        matches!(&accounts.kind, TableKind::Distributed { shard_key, key_type: KeyType::Int4, .. } if shard_key == "aid"),
        "{accounts:?}"
    );
    assert_eq!(
        tc.catalog().table("pgbench_branches").map(|t| &t.kind),
        Some(&TableKind::Reference)
    );
    for (primary, replica) in [
        ("catalog-node1", "catalog_node2"),
        ("shard1-node1", "shard1_node2"),
    ] {
        let client = tc.connect_node(primary).await.expect("connect");
        assert_eq!(setting(&client, "synchronous_standby_names").await, "");
        let rows = standbys(&client).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].0, replica);
        assert_eq!(rows[0].1, "streaming");
        assert_eq!(rows[0].2, "async");
    }
    let pids = tc.pids().await.expect("pids");
    assert_eq!(pids.len(), 4);

    // destroy: every instance stopped, all data gone.
    let data_dir = tc.data_dir().to_path_buf();
    tc.destroy().await.expect("destroy");
    assert_all_gone(&pids);
    assert!(!data_dir.join("cluster.json").exists());
    assert!(!data_dir.join("nodes").exists());
}

/// shardd as a process would run it (Owned lifecycle so nothing can leak): the API
/// reports the cluster, probes notice a killed replica, and `POST /v1/shutdown` stops
/// every instance.
#[tokio::test]
async fn shardd_serves_status_observes_failures_and_shuts_down() {
    use pgshard_shardd::runtime::ProcessLifecycle;
    use pgshard_shardd::{run_with, RunOptions, SharddState};
    use tokio_util::sync::CancellationToken;

    pgshard_tests::init_tracing();
    let dir = pgshard_tests::dirs::temp_dir("shardd").expect("temp dir");
    let data_dir = dir.path().join("data");
    let mut config = TestClusterOptions {
        shards: 1,
        replicas: 1,
        buckets: 16,
        ..Default::default()
    }
    .config(&data_dir);
    config.shardd.listen = "127.0.0.1:0".into();
    config.shardd.probe_interval_ms = 100;
    config.shardd.failure_threshold = 2;
    // Observing only: no failover, no restart of the replica this test kills.
    config.shardd.auto_failover = false;
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(run_with(
        config,
        RunOptions {
            lifecycle: ProcessLifecycle::Owned,
            fast_init: true,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    // Cancel the daemon (and so stop its instances) however this test ends.
    let _guard = shutdown.clone().drop_guard();

    // Ready once shardd.json appears.
    let started = Instant::now();
    let state = loop {
        if let Some(s) = SharddState::read(&data_dir).expect("read shardd.json") {
            break s;
        }
        assert!(!daemon.is_finished(), "shardd exited during bootstrap");
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "shardd not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state.pid, std::process::id());

    // A second shardd on the same data dir refuses to start.
    let second = run_with(
        TestClusterOptions::default().config(&data_dir),
        RunOptions {
            lifecycle: ProcessLifecycle::Owned,
            fast_init: true,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .expect_err("a second shardd must not start");
    assert!(second.to_string().contains("another shardd"), "{second:#}");
    let http = reqwest::Client::new();
    let status_url = format!("http://{}/v1/status", state.api);
    let get_status = || async {
        http.get(&status_url)
            .send()
            .await
            .expect("GET /v1/status")
            .json::<serde_json::Value>()
            .await
            .expect("status JSON")
    };
    let node = |status: &serde_json::Value, name: &str| -> serde_json::Value {
        status["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no node {name} in {status}"))
    };

    // Probes report both replicas streaming synchronously.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = get_status().await;
        let streaming = ["catalog-node2", "shard1-node2"]
            .iter()
            .all(|r| node(&s, r)["replication_state"] == "streaming");
        if streaming || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["cluster"], "pgshard-test");
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    assert!(status["version"].as_i64().is_some(), "{status}");
    for name in [
        "catalog-node1",
        "catalog-node2",
        "shard1-node1",
        "shard1-node2",
    ] {
        assert_eq!(node(&status, name)["state"], "healthy", "{status}");
    }
    // The same, for Prometheus.
    let metrics = http
        .get(format!("http://{}/metrics", state.api))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("\npgshard_shardd_ready 1\n"), "{metrics}");
    assert!(
        metrics.contains(
            "pgshard_shardd_node_up{node=\"shard1-node1\",shard=\"1\",role=\"primary\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("pgshard_shardd_node_up{"))
            .count(),
        4,
        "{metrics}"
    );
    for name in ["catalog-node2", "shard1-node2"] {
        let n = node(&status, name);
        assert_eq!(n["replication_state"], "streaming", "{n}");
        assert!(
            n["sync_state"] == "quorum" || n["sync_state"] == "sync",
            "{n}"
        );
        assert!(n["lag_bytes"].as_i64().is_some(), "{n}");
    }

    // Every postmaster, from the pid files.
    let pids: Vec<(String, u32)> = [
        "catalog-node1",
        "catalog-node2",
        "shard1-node1",
        "shard1-node2",
    ]
    .iter()
    .map(|name| {
        let text = std::fs::read_to_string(
            data_dir
                .join("nodes")
                .join(name)
                .join("data/postmaster.pid"),
        )
        .expect("postmaster.pid");
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid");
        (name.to_string(), pid)
    })
    .collect();

    // Kill the shard's replica: the probes mark it down, in the API and the catalog.
    let replica_pid = pids[3].1;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(replica_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill replica");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get_status().await;
        if node(&s, "shard1-node2")["state"] == "down" {
            break;
        }
        assert!(Instant::now() < deadline, "replica never marked down: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catalog_node = pids[0].0.clone();
    let cluster_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("cluster.json")).expect("cluster.json"),
    )
    .expect("layout JSON");
    let catalog_port = cluster_json["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == catalog_node.as_str()))
        .and_then(|n| n["port"].as_u64())
        .expect("catalog port");
    let (catalog, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={catalog_port} user=postgres dbname=pgshard_catalog"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect catalog");
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Observed health is kept apart from the topology (no version bump).
        let up: Option<bool> = catalog
            .query_one(
                "SELECT h.up FROM pgshard.nodes n
                   LEFT JOIN pgshard.node_health h ON h.node_id = n.id
                  WHERE n.name = 'shard1-node2'",
                &[],
            )
            .await
            .expect("node health")
            .get(0);
        if up == Some(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "catalog never recorded the replica down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(catalog);

    // Shut down over the API: run returns, shardd.json is gone, no postmaster is left.
    let resp = http
        .post(format!("http://{}/v1/shutdown", state.api))
        .send()
        .await
        .expect("POST /v1/shutdown");
    assert!(resp.status().is_success());
    let result = tokio::time::timeout(Duration::from_secs(120), daemon)
        .await
        .expect("shardd stops in time")
        .expect("shardd task");
    result.expect("shardd exits cleanly");
    assert!(SharddState::read(&data_dir).expect("read").is_none());
    assert_all_gone(&pids);
}

/// The runtime on its own: a replica built from a primary follows it, is promoted after
/// the primary is killed, and takes writes; the Detached lifecycle starts with pg_ctl,
/// tolerates a second start, and stops.
#[tokio::test]
async fn runtime_kill_promote_and_detached_lifecycle() {
    use pgshard_shardd::runtime::{
        ready, LocalOptions, LocalProcess, NodeRuntime, NodeSpec, ProcessLifecycle, Readiness,
        Upstream,
    };
    use std::collections::BTreeMap;

    pgshard_tests::init_tracing();
    let dir = pgshard_tests::dirs::temp_dir("runtime").expect("temp dir");
    let opts = |lifecycle| LocalOptions {
        pg_bin_dir: std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into),
        pg_user: "postgres".into(),
        lifecycle,
        fast_init: true,
        ctl_timeout: Duration::from_secs(60),
    };
    let spec = |name: &str, role, upstream: Option<&NodeSpec>| NodeSpec {
        name: name.into(),
        role,
        shard: None,
        host: "127.0.0.1".into(),
        port: pgshard_tests::ports::free_port().expect("port"),
        dir: dir.path().join(name),
        settings: BTreeMap::new(),
        upstream: upstream.map(|p| Upstream {
            name: p.name.clone(),
            host: p.host.clone(),
            port: p.port,
        }),
        socket_dir: None,
    };
    let connect = |s: &NodeSpec| {
        let cfg = s.pg_config("postgres", Duration::from_secs(5));
        async move {
            ready::connect(&cfg, Duration::from_secs(5))
                .await
                .expect("connect")
        }
    };
    let wait = Duration::from_secs(60);

    let owned = LocalProcess::new(opts(ProcessLifecycle::Owned)).expect("runtime");
    let primary = spec("p", NodeRole::Primary, None);
    let replica = spec("r", NodeRole::Replica, Some(&primary));
    owned.init_primary(&primary).await.expect("initdb");
    owned.start(&primary).await.expect("start primary");
    owned
        .wait_ready(&primary, Readiness::Accepting, wait)
        .await
        .expect("primary ready");
    owned
        .start(&primary)
        .await
        .expect("second start is a no-op");
    owned.create_replica(&replica).await.expect("basebackup");
    owned.start(&replica).await.expect("start replica");
    owned
        .wait_ready(&replica, Readiness::Streaming { sync: false }, wait)
        .await
        .expect("replica streaming");
    connect(&primary)
        .await
        .batch_execute("CREATE TABLE t AS SELECT 42 AS x")
        .await
        .expect("write");
    let r = connect(&replica).await;
    wait_for_value(
        &r,
        "SELECT count(*) FROM pg_class WHERE relname = 't'",
        1,
        wait,
    )
    .await;
    drop(r);

    let primary_pid = owned.pid(&primary).await.expect("pid").expect("running");
    owned.kill(&primary).await.expect("kill");
    assert!(!owned.is_running(&primary).await.expect("is_running"));
    assert_all_gone(&[("p".into(), primary_pid)]);
    owned.promote(&replica).await.expect("promote");
    let promoted = connect(&replica).await;
    promoted
        .execute("INSERT INTO t VALUES (43)", &[])
        .await
        .expect("promoted replica takes writes");
    drop(promoted);
    let replica_pid = owned.pid(&replica).await.expect("pid").expect("running");
    owned.stop(&replica).await.expect("stop");
    assert_all_gone(&[("r".into(), replica_pid)]);
    owned.remove(&replica).await.expect("remove");
    assert!(!replica.dir.exists());

    // Detached: pg_ctl owns the postmaster; kill it on the way out whatever happens.
    let detached = LocalProcess::new(opts(ProcessLifecycle::Detached)).expect("runtime");
    let d = spec("d", NodeRole::Primary, None);
    let _guard = pgshard_tests::dirs::KillOnDrop(d.data_dir().join("postmaster.pid"));
    detached.init_primary(&d).await.expect("initdb");
    detached.start(&d).await.expect("pg_ctl start");
    detached.start(&d).await.expect("second start is a no-op");
    detached
        .wait_ready(&d, Readiness::Accepting, wait)
        .await
        .expect("ready");
    let pid = detached.pid(&d).await.expect("pid").expect("running");
    detached.stop(&d).await.expect("pg_ctl stop");
    assert_all_gone(&[("d".into(), pid)]);
    assert!(!detached.is_running(&d).await.expect("is_running"));
    detached
        .stop(&d)
        .await
        .expect("stopping a stopped node is a no-op");
}

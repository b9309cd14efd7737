//! The Docker runtime against the real engine (SPEC §11): the offline PostgreSQL image,
//! a primary and a streaming replica as containers driven through the `NodeRuntime`
//! trait, container kill, a network partition and its healing, promotion, and removal
//! that leaves nothing behind; and the whole default cluster with `pgshard up --backend
//! docker` through the real binaries (router, status, logs, faults, destroy).
//!
//! Each test uses a unique cluster name (so containers, volumes and the network are its
//! own) and free host ports. A guard removes everything carrying the test's cluster
//! label when the test ends, also on panic. Without an answering engine the tests print
//! why and pass.

use pgshard_catalog::{NodeRole, ShardId};
use pgshard_shardd::runtime::docker::{
    DockerOptions, DockerRuntime, ImageOrigin, DEFAULT_IMAGE, LABEL_CLUSTER,
};
use pgshard_shardd::runtime::{ready, NodeRuntime, NodeSpec, Readiness, Upstream};
use pgshard_tests::ports::free_port;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const READY: Duration = Duration::from_secs(120);

/// `Some(engine version)` if a Docker engine answers; otherwise prints why the test is
/// skipped.
async fn engine(test: &str) -> Option<String> {
    match DockerRuntime::ping().await {
        Ok(version) => Some(version),
        Err(e) => {
            eprintln!("SKIPPED {test}: no Docker engine answers ({e})");
            None
        }
    }
}

/// A cluster name no other test run uses.
fn unique_cluster(test: &str) -> String {
    format!(
        "pgshard-t-{test}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Run a docker CLI command; its trimmed stdout (empty on failure).
fn docker_cli(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Names of the containers, volumes and networks labelled with `cluster`, as the
/// docker CLI (independently of the runtime) lists them.
fn leftovers(cluster: &str) -> Vec<String> {
    let filter = format!("label={LABEL_CLUSTER}={cluster}");
    let mut found = Vec::new();
    for (kind, args) in [
        (
            "container",
            vec!["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"],
        ),
        (
            "network",
            vec![
                "network",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Name}}",
            ],
        ),
    ] {
        found.extend(
            docker_cli(&args)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("{kind} {l}")),
        );
    }
    found
}

/// Removes everything labelled with the test's cluster when dropped (also on panic).
struct Cleanup {
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_CLUSTER}={}", self.cluster);
        let ids = |args: &[&str]| -> Vec<String> {
            docker_cli(args)
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let containers = ids(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            docker_cli(&args);
        }
        let volumes = ids(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker_cli(&args);
        }
        let networks = ids(&["network", "ls", "-q", "--filter", &filter]);
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            docker_cli(&args);
        }
    }
}

fn spec(
    name: &str,
    role: NodeRole,
    port: u16,
    dir: &Path,
    upstream: Option<&NodeSpec>,
) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        role,
        shard: Some(ShardId(1)),
        host: "127.0.0.1".into(),
        port,
        dir: dir.join(name),
        // Detect a cut connection within seconds rather than the default minute.
        settings: BTreeMap::from([
            ("wal_receiver_timeout".into(), "5s".into()),
            ("wal_sender_timeout".into(), "5s".into()),
            ("wal_retrieve_retry_interval".into(), "500ms".into()),
        ]),
        upstream: upstream.map(|p| Upstream {
            name: p.name.clone(),
            host: p.host.clone(),
            port: p.port,
        }),
        socket_dir: None,
    }
}

async fn connect(spec: &NodeSpec) -> Result<Client, String> {
    let timeout = Duration::from_secs(3);
    ready::connect(&spec.pg_config("postgres", timeout), timeout)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", spec.name))
}

/// Poll `check` until it returns `Ok`, with a short backoff, failing after `deadline`
/// with the last reason.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(reason) if started.elapsed() >= deadline => {
                panic!("{what}: not done after {:?}: {reason}", started.elapsed())
            }
            Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Rows of `t` on `spec`, as a count.
async fn count(spec: &NodeSpec) -> Result<i64, String> {
    let c = connect(spec).await?;
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())
}

/// Wait until the replica holds `want` rows of `t`.
async fn replica_sees(replica: &NodeSpec, want: i64) {
    eventually(
        &format!("{} sees {want} rows", replica.name),
        READY,
        || async {
            match count(replica).await? {
                n if n == want => Ok(()),
                n => Err(format!("{n} rows")),
            }
        },
    )
    .await
}

/// The labels of container `name`, through the docker CLI.
fn labels(name: &str) -> BTreeMap<String, String> {
    let json = docker_cli(&["inspect", "-f", "{{json .Config.Labels}}", name]);
    serde_json::from_str(&json).unwrap_or_default()
}

/// Primary and replica containers through the trait: streaming replication, kill,
/// partition and healing, promotion, removal without leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_primary_replica_lifecycle() {
    pgshard_tests::init_tracing();
    let Some(version) = engine("docker_primary_replica_lifecycle").await else {
        return;
    };
    let cluster = unique_cluster("life");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let mut opts = DockerOptions::new(&cluster, DEFAULT_IMAGE);
    opts.fast_init = true;
    opts.stop_timeout = Duration::from_secs(30);
    let docker = DockerRuntime::with_options(opts)
        .await
        .expect("docker runtime");
    let image = docker.ensure_image().await.expect("image");
    eprintln!(
        "engine {version}; image {} {:?} in {:?}, {} MB",
        image.image,
        image.origin,
        image.elapsed,
        image.size.unwrap_or(0) / 1_000_000
    );
    let rt: &dyn NodeRuntime = &docker;
    assert_eq!(rt.kind(), "docker");

    let dir = tempfile::tempdir().expect("temp dir");
    let primary = spec(
        "shard1-node1",
        NodeRole::Primary,
        free_port().expect("port"),
        dir.path(),
        None,
    );
    let replica = spec(
        "shard1-node2",
        NodeRole::Replica,
        free_port().expect("port"),
        dir.path(),
        Some(&primary),
    );

    // --- a primary -------------------------------------------------------------------
    assert!(!rt.exists(&primary).await.expect("exists"));
    let t0 = Instant::now();
    rt.init_primary(&primary).await.expect("init primary");
    let t_init = t0.elapsed();
    assert!(rt.exists(&primary).await.expect("exists"));
    assert!(!rt.is_running(&primary).await.expect("is_running"));
    let t1 = Instant::now();
    rt.start(&primary).await.expect("start primary");
    rt.wait_ready(&primary, Readiness::Accepting, READY)
        .await
        .expect("primary ready");
    let t_start = t1.elapsed();
    // Starting a running instance is a no-op.
    rt.start(&primary).await.expect("start again");
    // Configuration changes reach the running container.
    let mut tuned = primary.clone();
    tuned.settings.insert("work_mem".into(), "7MB".into());
    rt.configure(&tuned).await.expect("configure");
    connect(&primary)
        .await
        .expect("connect")
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .expect("reload");
    eventually("work_mem reloaded", READY, || async {
        let c = connect(&primary).await?;
        let v: String = c
            .query_one("SHOW work_mem", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if v == "7MB" {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    assert!(rt.pid(&primary).await.expect("pid").is_some());
    let p = connect(&primary).await.expect("connect primary");
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")
        .await
        .expect("write on primary");
    let container = docker.container_name(&primary.name);
    let l = labels(&container);
    assert_eq!(l.get(LABEL_CLUSTER), Some(&cluster), "{l:?}");
    assert_eq!(l.get("pgshard.role").map(String::as_str), Some("primary"));
    assert_eq!(l.get("pgshard.shard").map(String::as_str), Some("1"));
    assert_eq!(
        l.get("pgshard.node").map(String::as_str),
        Some("shard1-node1")
    );

    // --- a streaming replica ----------------------------------------------------------
    let t2 = Instant::now();
    rt.create_replica(&replica).await.expect("create replica");
    rt.start(&replica).await.expect("start replica");
    rt.wait_ready(&replica, Readiness::Streaming { sync: false }, READY)
        .await
        .expect("replica streaming");
    let t_replica = t2.elapsed();
    eprintln!(
        "docker timings: initdb {t_init:?}, primary start to ready {t_start:?}, replica basebackup+start to streaming {t_replica:?}"
    );
    p.execute(
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(2, 1000) g",
        &[],
    )
    .await
    .expect("insert");
    replica_sees(&replica, 1000).await;
    let state: String = p
        .query_one(
            "SELECT state FROM pg_stat_replication WHERE application_name = $1",
            &[&replica.slot_name()],
        )
        .await
        .expect("pg_stat_replication")
        .get(0);
    assert_eq!(state, "streaming");
    let r = connect(&replica).await.expect("connect replica");
    let in_recovery: bool = r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("recovery")
        .get(0);
    assert!(in_recovery, "the replica is a standby");
    drop(r);
    let logs = docker.logs(&replica, Some(50)).await.expect("logs");
    assert!(logs.contains("started streaming WAL"), "{logs}");

    // --- kill the replica, then bring it back ----------------------------------------
    rt.kill(&replica).await.expect("kill replica");
    assert!(!rt.is_running(&replica).await.expect("is_running"));
    assert_eq!(rt.pid(&replica).await.expect("pid"), None);
    assert!(
        connect(&replica).await.is_err(),
        "a killed replica must not answer"
    );
    rt.kill(&replica)
        .await
        .expect("killing a dead container is a no-op");
    rt.start(&replica).await.expect("restart replica");
    rt.wait_ready(&replica, Readiness::Streaming { sync: false }, READY)
        .await
        .expect("replica streaming again");

    // --- partition the primary, then heal it ----------------------------------------
    docker
        .disconnect_network(&primary)
        .await
        .expect("disconnect primary");
    assert!(!docker.is_connected(&primary).await.expect("connected?"));
    assert!(
        rt.is_running(&primary).await.expect("is_running"),
        "a partitioned primary still runs"
    );
    eventually("the primary is unreachable", READY, || async {
        match connect(&primary).await {
            Ok(c) => match c.query_one("SELECT 1", &[]).await {
                Ok(_) => Err("still answers".to_string()),
                Err(_) => Ok(()),
            },
            Err(_) => Ok(()),
        }
    })
    .await;
    docker
        .connect_network(&primary)
        .await
        .expect("reconnect primary");
    assert!(docker.is_connected(&primary).await.expect("connected?"));
    rt.wait_ready(&primary, Readiness::Accepting, READY)
        .await
        .expect("primary reachable again");
    let p = connect(&primary).await.expect("connect primary");
    p.execute("INSERT INTO t VALUES (1001, 'after the partition')", &[])
        .await
        .expect("insert after reconnect");
    let t3 = Instant::now();
    replica_sees(&replica, 1001).await;
    eprintln!(
        "replica caught up {:?} after the partition healed",
        t3.elapsed()
    );
    rt.wait_ready(&replica, Readiness::Streaming { sync: false }, READY)
        .await
        .expect("replica streaming after the partition");

    // --- kill the primary, promote the replica ------------------------------------------
    rt.kill(&primary).await.expect("kill primary");
    assert!(!rt.is_running(&primary).await.expect("is_running"));
    rt.promote(&replica).await.expect("promote");
    let promoted = NodeSpec {
        role: NodeRole::Primary,
        upstream: None,
        ..replica.clone()
    };
    let r = connect(&promoted).await.expect("connect promoted");
    r.execute("INSERT INTO t VALUES (1002, 'on the new primary')", &[])
        .await
        .expect("write on the promoted replica");
    drop(r);
    // A restart as a primary recreates the container with the new role label and keeps
    // the data; it must not come back as a standby.
    rt.stop(&promoted).await.expect("stop promoted");
    assert!(!rt.is_running(&promoted).await.expect("is_running"));
    rt.start(&promoted)
        .await
        .expect("start promoted as primary");
    rt.wait_ready(&promoted, Readiness::Writable, READY)
        .await
        .expect("promoted node writable after restart");
    assert_eq!(count(&promoted).await.expect("count"), 1002);
    let l = labels(&docker.container_name(&promoted.name));
    assert_eq!(l.get("pgshard.role").map(String::as_str), Some("primary"));

    // --- remove everything ---------------------------------------------------------------
    assert!(
        rt.remove(&promoted).await.is_err(),
        "removing a running instance is refused"
    );
    rt.stop(&promoted).await.expect("stop");
    rt.stop(&primary)
        .await
        .expect("stop a killed primary is a no-op");
    rt.remove(&promoted).await.expect("remove replica");
    rt.remove(&primary).await.expect("remove primary");
    rt.remove(&primary).await.expect("remove is idempotent");
    assert!(!rt.exists(&primary).await.expect("exists"));
    let left = docker.resources().await.expect("resources");
    assert!(left.is_empty(), "runtime sees leftovers: {left:?}");
    let left = leftovers(&cluster);
    assert!(left.is_empty(), "docker CLI sees leftovers: {left:?}");
}

/// `purge` removes a cluster's resources whatever state they are in (what `destroy`
/// and crash clean-up need), and a second runtime re-attaches to running containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_reattach_and_purge() {
    pgshard_tests::init_tracing();
    if engine("docker_reattach_and_purge").await.is_none() {
        return;
    }
    let cluster = unique_cluster("purge");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let mut opts = DockerOptions::new(&cluster, DEFAULT_IMAGE);
    opts.fast_init = true;
    let first = DockerRuntime::with_options(opts.clone())
        .await
        .expect("docker runtime");
    let report = first.ensure_image().await.expect("image");
    assert!(matches!(
        report.origin,
        ImageOrigin::Present | ImageOrigin::Built
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let node = spec(
        "catalog",
        NodeRole::Catalog,
        free_port().expect("port"),
        dir.path(),
        None,
    );
    first.init_primary(&node).await.expect("init");
    // Creating twice is refused, never overwrites data.
    assert!(first.init_primary(&node).await.is_err());
    first.start(&node).await.expect("start");
    first
        .wait_ready(&node, Readiness::Writable, READY)
        .await
        .expect("ready");
    drop(first);

    // A new runtime (a restarted shardd) sees the running instance.
    let second = DockerRuntime::with_options(opts).await.expect("runtime");
    assert!(second.is_running(&node).await.expect("is_running"));
    second.start(&node).await.expect("start is a no-op");
    connect(&node)
        .await
        .expect("connect")
        .query_one("SELECT 1", &[])
        .await
        .expect("query");
    assert!(!second.resources().await.expect("resources").is_empty());
    second.purge().await.expect("purge");
    second.purge().await.expect("purge is idempotent");
    assert!(!second.is_running(&node).await.expect("is_running"));
    let left = leftovers(&cluster);
    assert!(left.is_empty(), "leftovers after purge: {left:?}");
}

/// Times one primary + one streaming replica through each runtime (for the closing
/// note; run with `cargo test -p pgshard-tests --test docker -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn docker_vs_local_start_times() {
    use pgshard_shardd::runtime::{LocalOptions, LocalProcess, ProcessLifecycle};
    pgshard_tests::init_tracing();
    if engine("docker_vs_local_start_times").await.is_none() {
        return;
    }
    let cluster = unique_cluster("time");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let mut opts = DockerOptions::new(&cluster, DEFAULT_IMAGE);
    opts.fast_init = true;
    let docker = DockerRuntime::with_options(opts).await.expect("docker");
    docker.ensure_image().await.expect("image");
    let local = LocalProcess::new(LocalOptions {
        pg_bin_dir: None,
        pg_user: "postgres".into(),
        lifecycle: ProcessLifecycle::Owned,
        fast_init: true,
        ctl_timeout: Duration::from_secs(60),
    })
    .expect("local runtime");
    let dir = pgshard_tests::dirs::temp_dir("docker-time").expect("temp dir");
    for (label, rt) in [
        ("local", &local as &dyn NodeRuntime),
        ("docker", &docker as &dyn NodeRuntime),
    ] {
        let base = dir.path().join(label);
        let primary = spec(
            "shard1-node1",
            NodeRole::Primary,
            free_port().expect("port"),
            &base,
            None,
        );
        let replica = spec(
            "shard1-node2",
            NodeRole::Replica,
            free_port().expect("port"),
            &base,
            Some(&primary),
        );
        let t = Instant::now();
        rt.init_primary(&primary).await.expect("init");
        let init = t.elapsed();
        let t = Instant::now();
        rt.start(&primary).await.expect("start");
        rt.wait_ready(&primary, Readiness::Accepting, READY)
            .await
            .expect("ready");
        let start = t.elapsed();
        let t = Instant::now();
        rt.create_replica(&replica).await.expect("replica");
        rt.start(&replica).await.expect("start replica");
        rt.wait_ready(&replica, Readiness::Streaming { sync: false }, READY)
            .await
            .expect("streaming");
        let rep = t.elapsed();
        let t = Instant::now();
        rt.stop(&replica).await.expect("stop");
        rt.stop(&primary).await.expect("stop");
        let stop = t.elapsed();
        let t = Instant::now();
        rt.start(&primary).await.expect("restart");
        rt.wait_ready(&primary, Readiness::Accepting, READY)
            .await
            .expect("ready again");
        let restart = t.elapsed();
        eprintln!(
            "{label:>6}: init primary {init:?}, start→ready {start:?}, replica create+start→streaming {rep:?}, stop both {stop:?}, restart→ready {restart:?}"
        );
        rt.stop(&primary).await.expect("stop");
        rt.remove(&replica).await.expect("remove");
        rt.remove(&primary).await.expect("remove");
    }
    assert!(leftovers(&cluster).is_empty());
}

// --- the whole cluster through the CLI ---------------------------------------------------

/// `target/debug/NAME`, next to this test's binary directory.
fn bin(name: &str) -> PathBuf {
    // target/debug/deps/docker-<hash> → target/debug/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary has a target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Run `pgshard ARGS [--data-dir DIR]`.
fn pgshard(args: &[&str], data_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin("pgshard"));
    cmd.args(args);
    if let Some(dir) = data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    cmd.output().expect("run pgshard")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `pgshard destroy` on the data dir however the test ends (the label [`Cleanup`]
/// then takes whatever that missed).
struct Destroy(PathBuf);

impl Drop for Destroy {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = pgshard(&["destroy"], Some(&self.0));
        }
    }
}

/// `pgshard status --json`: whether it exited 0, and each node's JSON by name.
fn status(data_dir: &Path) -> (bool, BTreeMap<String, serde_json::Value>) {
    let out = pgshard(&["status", "--json"], Some(data_dir));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let nodes = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["name"].as_str()?.to_string(), n.clone())))
        .collect();
    (out.status.success(), nodes)
}

fn state_of(nodes: &BTreeMap<String, serde_json::Value>, node: &str) -> String {
    nodes
        .get(node)
        .and_then(|n| n["state"].as_str())
        .unwrap_or("missing")
        .to_string()
}

/// Wait until `pgshard status` exits non-zero and reports `node` down.
async fn reported_down(data_dir: &Path, node: &str) {
    eventually(
        &format!("pgshard status reports {node} down"),
        READY,
        || async {
            let (ok, nodes) = status(data_dir);
            match state_of(&nodes, node).as_str() {
                "down" if !ok => Ok(()),
                "down" => Err("status exited 0 with a node down".into()),
                other => Err(format!("{node} is {other}")),
            }
        },
    )
    .await
}

/// Wait until `pgshard status` exits 0 (every node healthy, replicas streaming).
async fn reported_healthy(data_dir: &Path) {
    eventually("pgshard status reports healthy", READY, || async {
        let (ok, nodes) = status(data_dir);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                nodes
                    .iter()
                    .map(|(n, v)| (
                        n.clone(),
                        v["state"].clone(),
                        v["replication_state"].clone()
                    ))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

async fn connect_port(port: u16) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await
    .map_err(|e| format!("connect to port {port}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// `SELECT count(*) FROM kv` run by psql *inside* container `container` against its own
/// instance (listening on `port` in there too).
fn count_in_container(container: &str, port: u64) -> Result<i64, String> {
    let out = docker_cli(&[
        "exec",
        container,
        "psql",
        "-XAt",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-c",
        "SELECT count(*) FROM kv",
    ]);
    out.parse()
        .map_err(|_| format!("psql in {container} said `{out}`"))
}

/// The embedded default cluster with `--backend docker`, as a user runs it through the
/// real binaries: `pgshard image build`, `up`, `status`, writes through the router to a
/// distributed table, replication checked inside the containers, `docker ps` labels,
/// `pgshard logs`, a shard primary cut off the network and reconnected, a replica and a
/// primary container killed (status exits non-zero naming them), and `destroy` leaving
/// no container, volume or network with the cluster's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_cluster_through_the_cli() {
    if engine("docker_cluster_through_the_cli").await.is_none() {
        return;
    }
    let cluster = unique_cluster("cli");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let root = pgshard_tests::dirs::temp_dir("docker-cli").expect("temp dir");
    let data_dir = root.path().join("data");
    let config = root.path().join("pgshard.toml");
    let router_port = free_port().expect("port");
    std::fs::write(
        &config,
        format!(
            r#"[cluster]
name = "{cluster}"
backend = "docker"
[cluster.postgres]
# Notice a cut connection within seconds rather than the default minute.
wal_receiver_timeout = "5s"
wal_sender_timeout = "5s"
wal_retrieve_retry_interval = "500ms"
[router]
listen = "127.0.0.1:{router_port}"
[shardd]
probe_interval_ms = 200
failure_threshold = 2
[[table]]
name = "kv"
shard_key = "k"
"#
        ),
    )
    .expect("write config");
    let _destroy = Destroy(data_dir.clone());

    // Built from nothing on a fresh machine (minutes), present afterwards.
    let t = Instant::now();
    let out = pgshard(
        &["image", "build", "--config", &config.to_string_lossy()],
        None,
    );
    assert!(out.status.success(), "image build: {}", text(&out));
    eprintln!(
        "pgshard image build: {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        text(&out).trim()
    );

    let t = Instant::now();
    let out = pgshard(
        &["up", "--config", &config.to_string_lossy()],
        Some(&data_dir),
    );
    assert!(out.status.success(), "up: {}", text(&out));
    eprintln!(
        "pgshard up --backend docker from nothing: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        text(&out).contains(&format!("psql -h 127.0.0.1 -p {router_port}")),
        "{}",
        text(&out)
    );
    let (ok, nodes) = status(&data_dir);
    assert!(ok, "status after up: {nodes:?}");
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    for r in ["shard1-node2", "shard2-node2"] {
        assert_eq!(nodes[r]["replication_state"], "streaming", "{nodes:?}");
    }

    // --- docker ps: one labelled container per instance ----------------------------------
    let filter = format!("label={LABEL_CLUSTER}={cluster}");
    let ps = docker_cli(&[
        "ps",
        "--filter",
        &filter,
        "--format",
        r#"{{.Names}} {{.Label "pgshard.node"}} {{.Label "pgshard.role"}} shard={{.Label "pgshard.shard"}}"#,
    ]);
    let mut rows: Vec<&str> = ps.lines().collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            format!("{cluster}-catalog-node1 catalog-node1 catalog shard="),
            format!("{cluster}-shard1-node1 shard1-node1 primary shard=1"),
            format!("{cluster}-shard1-node2 shard1-node2 replica shard=1"),
            format!("{cluster}-shard2-node1 shard2-node1 primary shard=2"),
            format!("{cluster}-shard2-node2 shard2-node2 replica shard=2"),
        ],
        "docker ps:\n{ps}"
    );

    // --- writes through the router land on both shards and replicate ---------------------
    let router = connect_port(router_port).await.expect("router");
    router
        .batch_execute("CREATE TABLE kv (k bigint PRIMARY KEY, v text)")
        .await
        .expect("create kv");
    for k in 1..=40i64 {
        router
            .execute(
                "INSERT INTO kv (k, v) VALUES ($1, $2)",
                &[&k, &format!("v{k}")],
            )
            .await
            .expect("insert through the router");
    }
    let row = router
        .query_one("SELECT v FROM kv WHERE k = $1", &[&17i64])
        .await
        .expect("read through the router");
    assert_eq!(row.get::<_, String>(0), "v17");
    let mut total = 0;
    for shard in [1, 2] {
        let primary = &nodes[&format!("shard{shard}-node1")];
        let replica = &nodes[&format!("shard{shard}-node2")];
        let on_primary = count_in_container(
            &format!("{cluster}-shard{shard}-node1"),
            primary["port"].as_u64().unwrap_or_default(),
        )
        .expect("count on the primary");
        assert!(on_primary > 0, "shard {shard} holds rows");
        total += on_primary;
        let replica_container = format!("{cluster}-shard{shard}-node2");
        let replica_port = replica["port"].as_u64().unwrap_or_default();
        eventually(
            &format!("shard {shard}'s replica holds its rows"),
            READY,
            || async {
                match count_in_container(&replica_container, replica_port)? {
                    n if n == on_primary => Ok(()),
                    n => Err(format!("{n} of {on_primary} rows")),
                }
            },
        )
        .await;
        let receiver = docker_cli(&[
            "exec",
            &replica_container,
            "psql",
            "-XAt",
            "-h",
            "127.0.0.1",
            "-p",
            &replica_port.to_string(),
            "-U",
            "postgres",
            "-c",
            "SELECT status FROM pg_stat_wal_receiver",
        ]);
        assert_eq!(receiver, "streaming", "shard {shard}'s replica");
    }
    assert_eq!(total, 40, "every row on exactly one shard");
    drop(router);

    let out = pgshard(&["logs", "shard1-node2"], Some(&data_dir));
    assert!(out.status.success(), "logs: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started streaming WAL"),
        "{}",
        text(&out)
    );
    let out = pgshard(&["logs", "shard9-node1"], Some(&data_dir));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("shard1-node1"),
        "names the nodes: {}",
        text(&out)
    );

    // --- cut shard 1's primary off the network: shardd fails over to its replica -------
    let network = format!("{cluster}-net");
    let primary1 = format!("{cluster}-shard1-node1");
    let out = Command::new("docker")
        .args(["network", "disconnect", &network, &primary1])
        .output()
        .expect("docker network disconnect");
    assert!(out.status.success(), "{}", text(&out));
    let t = Instant::now();
    eventually("shard 1 failed over to shard1-node2", READY, || async {
        let out = pgshard(&["status", "--json"], Some(&data_dir));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let s1 = v["shards"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == 1))
            .cloned()
            .unwrap_or_default();
        if s1["primary"] == "shard1-node2" && s1["term"] == 2 && s1["status"] != "failing_over" {
            Ok(())
        } else {
            Err(format!("{s1}"))
        }
    })
    .await;
    eprintln!(
        "shard 1 failed over {:.1}s after its primary was cut off",
        t.elapsed().as_secs_f64()
    );
    // The fenced container is rebuilt as a replica of the new primary.
    reported_healthy(&data_dir).await;
    let out = pgshard(&["status"], Some(&data_dir));
    assert!(
        out.status.success(),
        "status after the failover: {}",
        text(&out)
    );
    assert!(
        text(&out)
            .lines()
            .any(|l| l.starts_with("shard1-node1") && l.contains(" replica ")),
        "{}",
        text(&out)
    );
    let router = connect_port(router_port).await.expect("router");
    // Single-key statements (some keys land on shard 1's new primary).
    for k in 41..=50i64 {
        eventually(
            &format!("insert {k} through the router after the failover"),
            READY,
            || async {
                router
                    .execute(
                        "INSERT INTO kv (k, v) VALUES ($1, 'after') ON CONFLICT (k) DO NOTHING",
                        &[&k],
                    )
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        let row = router
            .query_one("SELECT v FROM kv WHERE k = $1", &[&k])
            .await
            .expect("read through the router");
        assert_eq!(row.get::<_, String>(0), "after");
    }
    let n: i64 = router
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 50, "every row survived the failover");
    drop(router);

    // --- with shard 2's failover paused, kill its replica, then its primary -------------
    let out = pgshard(&["failover", "pause", "--shard", "2"], Some(&data_dir));
    assert!(out.status.success(), "pause: {}", text(&out));
    // --- kill a replica container, then a primary container ------------------------------
    for node in ["shard2-node2", "shard2-node1"] {
        let container = format!("{cluster}-{node}");
        let out = Command::new("docker")
            .args(["kill", &container])
            .output()
            .expect("docker kill");
        assert!(out.status.success(), "{}", text(&out));
        reported_down(&data_dir, node).await;
    }
    let out = pgshard(&["status"], Some(&data_dir));
    assert!(!out.status.success(), "status must fail: {}", text(&out));
    let report = text(&out);
    for node in ["shard2-node2", "shard2-node1"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(node) && l.contains(" down ")),
            "{node} reported down:\n{report}"
        );
    }
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("shard1-node1") && l.contains(" healthy ")),
        "{report}"
    );

    assert!(
        report.lines().any(|l| l.contains("paused")),
        "status shows the paused failover:\n{report}"
    );
    let out = pgshard(&["failover", "resume", "--shard", "2"], Some(&data_dir));
    assert!(out.status.success(), "resume: {}", text(&out));
    // The replica is started again, confirms the primary is gone, and is promoted.
    reported_healthy(&data_dir).await;
    let out = pgshard(&["status"], Some(&data_dir));
    assert!(
        text(&out)
            .lines()
            .any(|l| l.trim_start().starts_with("2 ") && l.contains("shard2-node2")),
        "{}",
        text(&out)
    );

    // --- destroy: nothing left -----------------------------------------------------------
    let t = Instant::now();
    let out = pgshard(&["destroy"], Some(&data_dir));
    assert!(out.status.success(), "destroy: {}", text(&out));
    eprintln!("pgshard destroy: {:.1}s", t.elapsed().as_secs_f64());
    assert!(!data_dir.exists(), "destroy removes the data dir");
    let left = leftovers(&cluster);
    assert!(left.is_empty(), "labelled leftovers: {left:?}");
    let by_name = format!("name={cluster}");
    for args in [
        vec!["ps", "-a", "--filter", &by_name, "--format", "{{.Names}}"],
        vec![
            "volume",
            "ls",
            "--filter",
            &by_name,
            "--format",
            "{{.Name}}",
        ],
        vec![
            "network",
            "ls",
            "--filter",
            &by_name,
            "--format",
            "{{.Name}}",
        ],
    ] {
        let found = docker_cli(&args);
        assert!(found.is_empty(), "docker {} finds {found}", args[0]);
    }
}

/// Failover on the Docker runtime (SPEC §8, §11), under inserts through the router:
/// shard primaries' containers killed (`docker kill`) five times and cut off the
/// cluster network (`docker network disconnect`) five times, alternating shards, each
/// time on whichever node is primary then. Every failover completes (term + 1), the
/// fenced container is rebuilt, and no acknowledged insert is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_failover_on_kill_and_partition() {
    use pgshard_catalog::ShardStatus;
    if engine("docker_failover_on_kill_and_partition")
        .await
        .is_none()
    {
        return;
    }
    let cluster = unique_cluster("failover");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let name = cluster.clone();
    let d = pgshard_tests::TestDaemon::start(
        pgshard_tests::TestClusterOptions {
            shards: 2,
            replicas: 1,
            buckets: 64,
            tables: vec![pgshard_tests::distributed("acked", "id", "bigint")],
            // A replica notices a cut connection in seconds, not the default minute.
            postgres: [("wal_receiver_timeout", "2s"), ("wal_sender_timeout", "2s")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        move |c| {
            c.cluster.name = name;
            c.cluster.backend = pgshard_catalog::config::Backend::Docker;
        },
    )
    .await
    .expect("docker cluster under shardd");
    let router = pgshard_tests::TestRouter::start_on(
        &d.catalog_conninfo().expect("conninfo"),
        d.config().router.clone(),
    )
    .await
    .expect("router");
    router
        .connect()
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .expect("create");
    // Writers: a statement that hangs on a cut-off container is given up after 15 s.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..3i64 {
        let stop = stop.clone();
        let connstr = router.connstr();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = 0usize;
            let mut client: Option<Client> = None;
            let mut next = w * 10_000_000;
            while !stop.is_cancelled() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            client = Some(c);
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                next += 1;
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    c.execute("INSERT INTO acked VALUES ($1)", &[&next]),
                )
                .await;
                match r {
                    Ok(Ok(1)) => acked.push(next),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        client = None;
                    }
                }
            }
            (acked, errors)
        }));
    }
    let network = format!("{cluster}-net");
    let mut took = Vec::new();
    for round in 0..10usize {
        let shard = (round % 2) as u32 + 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = d.primary_of(shard).await.expect("primary");
        let term = d
            .catalog()
            .await
            .expect("catalog")
            .shard(ShardId(shard))
            .map(|s| s.term)
            .unwrap_or(0);
        let container = format!("{cluster}-{old}");
        let how = if round < 5 { "kill" } else { "partition" };
        let out = if round < 5 {
            Command::new("docker").args(["kill", &container]).output()
        } else {
            Command::new("docker")
                .args(["network", "disconnect", &network, &container])
                .output()
        }
        .expect("docker");
        assert!(out.status.success(), "{how} {container}: {}", text(&out));
        let t = Instant::now();
        d.wait_catalog(
            &format!("{how} of {old}: shard {shard} fails over"),
            Duration::from_secs(90),
            |c| {
                c.shard(ShardId(shard))
                    .is_some_and(|s| s.term > term && s.status != ShardStatus::FailingOver)
            },
        )
        .await
        .expect("failover");
        took.push((how, t.elapsed()));
        d.wait_redundant(Duration::from_secs(180))
            .await
            .expect("rebuilt");
    }
    stop.cancel();
    let mut acked = Vec::new();
    let mut errors = 0;
    for w in writers {
        let (a, e) = w.await.expect("writer");
        acked.extend(a);
        errors += e;
    }
    eprintln!(
        "docker failovers (kill ×5, partition ×5): {took:?}; {} inserts acknowledged, {errors} failed",
        acked.len()
    );
    let c = router.connect().await.expect("connect");
    let present: std::collections::HashSet<i64> = c
        .query("SELECT id FROM acked", &[])
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    assert!(acked.len() > 50, "the load did not run");
}

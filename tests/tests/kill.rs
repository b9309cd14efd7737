//! `NodeRuntime::kill` on local processes leaves nothing of the instance behind, so the
//! same data directory starts again at once (SPEC §8 fencing, §13 crashes).
//!
//! PostgreSQL's children call `setsid()`, so a kill of the postmaster (or of its process
//! group) alone leaves backends attached to the old shared memory for a moment, and a
//! start in that moment fails with "pre-existing shared memory block is still in use".
//! These tests kill instances with busy backends and start them again immediately, in
//! both lifecycles, and also after a `kill -9` of the postmaster alone from outside.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgshard_catalog::NodeRole;
use pgshard_shardd::runtime::{
    ready, LocalOptions, LocalProcess, NodeRuntime, NodeSpec, ProcessLifecycle, Readiness,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ROUNDS: usize = 5;
const WAIT: Duration = Duration::from_secs(60);

/// `[state, ppid, …]` of `pid`, from `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// The live children of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            alive(pid)
                && stat_fields(pid)
                    .is_some_and(|f| f.get(1).and_then(|p| p.parse().ok()) == Some(parent))
        })
        .collect()
}

fn runtime(lifecycle: ProcessLifecycle) -> LocalProcess {
    LocalProcess::new(LocalOptions {
        pg_bin_dir: std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into),
        pg_user: "postgres".into(),
        lifecycle,
        fast_init: true,
        ctl_timeout: Duration::from_secs(60),
    })
    .expect("local runtime")
}

fn spec(dir: &Path, name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        role: NodeRole::Primary,
        shard: None,
        host: "127.0.0.1".into(),
        port: pgshard_tests::ports::free_port().expect("port"),
        dir: dir.join(name),
        settings: BTreeMap::new(),
        upstream: None,
        socket_dir: None,
    }
}

/// Start `spec` and wait until it takes writes (crash recovery over).
async fn start_ready(rt: &LocalProcess, spec: &NodeSpec, round: usize) {
    rt.start(spec)
        .await
        .unwrap_or_else(|e| panic!("round {round}: start right after the kill: {e}"));
    rt.wait_ready(spec, Readiness::Writable, WAIT)
        .await
        .unwrap_or_else(|e| panic!("round {round}: ready after the kill: {e}"));
}

/// Open a few sessions, one of them busy in a long statement, so the instance has
/// backends to leave behind. Drop them after the kill.
async fn busy_sessions(spec: &NodeSpec) -> (Vec<Client>, tokio::task::JoinHandle<()>) {
    let cfg = spec.pg_config("postgres", Duration::from_secs(5));
    let mut idle = Vec::new();
    for _ in 0..3 {
        let client = ready::connect(&cfg, Duration::from_secs(5))
            .await
            .expect("connect");
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
            .await
            .expect("write");
        idle.push(client);
    }
    let busy = idle.pop().expect("three clients");
    let sleeper = tokio::spawn(async move {
        // Fails when the server is killed; that is the point.
        let _ = busy.batch_execute("SELECT pg_sleep(600)").await;
    });
    (idle, sleeper)
}

async fn kill_and_restart(lifecycle: ProcessLifecycle) {
    pgshard_tests::init_tracing();
    let dir = pgshard_tests::dirs::temp_dir("kill").expect("temp dir");
    let rt = runtime(lifecycle);
    let node = spec(dir.path(), "k");
    let _guard = pgshard_tests::dirs::KillOnDrop(node.data_dir().join("postmaster.pid"));
    rt.init_primary(&node).await.expect("initdb");
    start_ready(&rt, &node, 0).await;
    for round in 1..=ROUNDS {
        let (idle, sleeper) = busy_sessions(&node).await;
        let pm = rt.pid(&node).await.expect("pid").expect("running");
        let children = children_of(pm);
        assert!(
            children.len() >= 4,
            "round {round}: expected backends and auxiliary processes, got {children:?}"
        );
        rt.kill(&node).await.expect("kill");
        let left: Vec<_> = children
            .iter()
            .copied()
            .chain([pm])
            .filter(|&p| alive(p))
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: survived the kill: {left:?}"
        );
        assert!(!rt.is_running(&node).await.expect("is_running"));
        start_ready(&rt, &node, round).await;
        let _ = sleeper.await;
        drop(idle);
    }
    rt.stop(&node).await.expect("stop");
}

/// Owned lifecycle (tests, foreground `pgshard up`): kill, then start at once.
#[tokio::test]
async fn owned_kill_leaves_nothing_and_restarts_at_once() {
    kill_and_restart(ProcessLifecycle::Owned).await;
}

/// Detached lifecycle (production, `pg_ctl start`): kill, then start at once.
#[tokio::test]
async fn detached_kill_leaves_nothing_and_restarts_at_once() {
    kill_and_restart(ProcessLifecycle::Detached).await;
}

/// A `kill -9` of the postmaster alone, from outside the runtime (a chaos test, the
/// OOM killer): the next start kills the orphaned backends first instead of failing.
#[tokio::test]
async fn start_after_an_outside_kill_of_the_postmaster() {
    pgshard_tests::init_tracing();
    let dir = pgshard_tests::dirs::temp_dir("kill").expect("temp dir");
    let rt = runtime(ProcessLifecycle::Owned);
    let node = spec(dir.path(), "o");
    rt.init_primary(&node).await.expect("initdb");
    start_ready(&rt, &node, 0).await;
    for round in 1..=ROUNDS {
        let (idle, sleeper) = busy_sessions(&node).await;
        let pm = rt.pid(&node).await.expect("pid").expect("running");
        let raw = i32::try_from(pm).expect("pid in range");
        kill(Pid::from_raw(raw), Signal::SIGKILL).expect("kill -9 the postmaster");
        // The runtime sees it gone once the supervisor has reaped it.
        let deadline = Instant::now() + WAIT;
        while rt.is_running(&node).await.expect("is_running") {
            assert!(Instant::now() < deadline, "round {round}: still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start_ready(&rt, &node, round).await;
        let _ = sleeper.await;
        drop(idle);
    }
    rt.stop(&node).await.expect("stop");
}

//! The `pgshard` CLI end to end, as a user runs it: `up` from nothing, `status`, `up`
//! again (harmless), `down` (no PostgreSQL left), `up` on the existing data dir (data
//! kept), `destroy` (nothing left). Uses the real binaries and the production
//! (detached) process lifecycle; a guard runs `pgshard destroy` even if the test fails.

use anyhow::{bail, Context};
use pgshard_tests::dirs::temp_dir;
use pgshard_tests::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// The tests that start clusters run one at a time: each picks free ports that another
/// test's instance could take before its own process binds them.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    // target/debug/deps/cli-<hash> → target/debug/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` first (scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}

fn pgshard(args: &[&str], data_dir: &Path) -> anyhow::Result<Output> {
    let out = Command::new(bin("pgshard")?)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()?;
    Ok(out)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Destroys the cluster however the test ends.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = pgshard(&["destroy"], &self.0);
    }
}

fn postmaster_pids(data_dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "postmaster.pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
                {
                    pids.push(pid);
                }
            } else if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    pids
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

async fn shard_primary_port(data_dir: &Path, shard: u64) -> anyhow::Result<u16> {
    let out = pgshard(&["status", "--json"], data_dir)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("status --json: {}", text(&out)))?;
    v["nodes"]
        .as_array()
        .and_then(|ns| {
            ns.iter()
                .find(|n| n["role"] == "primary" && n["shard"].as_u64() == Some(shard))
        })
        .and_then(|n| n["port"].as_u64())
        .map(|p| p as u16)
        .context("no primary for shard in status")
}

async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn up_status_down_up_destroy() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let root = temp_dir("cli")?;
    let data_dir = root.path().join("data");
    let config = root.path().join("pgshard.toml");
    let router_port = free_port()?;
    std::fs::write(
        &config,
        format!(
            "[router]\nlisten = \"127.0.0.1:{router_port}\"\n[[table]]\nname = \"kv\"\nshard_key = \"k\"\n"
        ),
    )?;
    let _guard = Guard(data_dir.clone());

    let started = Instant::now();
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8 path")?],
        &data_dir,
    )?;
    assert!(out.status.success(), "up failed: {}", text(&out));
    let up_text = text(&out);
    eprintln!(
        "pgshard up from nothing: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let out = pgshard(&["status"], &data_dir)?;
    let status = text(&out);
    assert!(out.status.success(), "status unhealthy: {status}");
    let healthy = status.lines().filter(|l| l.contains(" healthy ")).count();
    assert_eq!(healthy, 5, "the default cluster has 5 instances:\n{status}");
    assert_eq!(
        status
            .lines()
            .filter(|l| l.contains("streaming/quorum") || l.contains("streaming/sync"))
            .count(),
        2,
        "both shard replicas stream synchronously:\n{status}"
    );

    assert!(
        up_text.contains(&format!("psql -h 127.0.0.1 -p {router_port}")),
        "up prints the psql line: {up_text}"
    );

    // The router started by `up` serves a distributed table by key.
    let router = connect(router_port).await?;
    router
        .batch_execute("CREATE TABLE kv (k bigint PRIMARY KEY, v text)")
        .await?;
    for k in 1..=20i64 {
        router
            .execute(
                "INSERT INTO kv (k, v) VALUES ($1, $2)",
                &[&k, &format!("v{k}")],
            )
            .await?;
    }
    let row = router
        .query_one("SELECT v FROM kv WHERE k = $1", &[&7i64])
        .await?;
    assert_eq!(row.get::<_, String>(0), "v7");
    let mut per_shard = Vec::new();
    for shard in [1, 2] {
        let n: i64 = connect(shard_primary_port(&data_dir, shard).await?)
            .await?
            .query_one("SELECT count(*) FROM kv", &[])
            .await?
            .get(0);
        per_shard.push(n);
    }
    assert_eq!(per_shard.iter().sum::<i64>(), 20, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|n| *n > 0),
        "rows on both shards: {per_shard:?}"
    );
    // The router reaches the local shards through their Unix sockets (cheaper than
    // loopback TCP): its backends have no client address; shardd's and ours do.
    let over_unix: i64 = connect(shard_primary_port(&data_dir, 1).await?)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND client_addr IS NULL",
            &[],
        )
        .await?
        .get(0);
    assert!(over_unix > 0, "no router backend on the Unix socket");
    drop(router);

    let out = pgshard(&["up"], &data_dir)?;
    assert!(out.status.success(), "second up: {}", text(&out));
    assert!(text(&out).contains("already running"), "{}", text(&out));

    let port = shard_primary_port(&data_dir, 1).await?;
    connect(port)
        .await?
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives restart')")
        .await?;

    let pids = postmaster_pids(&data_dir);
    assert_eq!(pids.len(), 5, "one postmaster per instance: {pids:?}");
    let started = Instant::now();
    let out = pgshard(&["down"], &data_dir)?;
    assert!(out.status.success(), "down: {}", text(&out));
    // Diagnostic only (SPEC §14: no timed tests); it used to be ~10 s, the router's
    // whole stop grace.
    eprintln!("pgshard down: {:.1}s", started.elapsed().as_secs_f64());
    let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "PostgreSQL still running after down: {left:?}"
    );
    let out = pgshard(&["status"], &data_dir)?;
    assert!(!out.status.success(), "status must fail when stopped");

    let started = Instant::now();
    let out = pgshard(&["up"], &data_dir)?;
    assert!(out.status.success(), "restart: {}", text(&out));
    eprintln!(
        "pgshard up on an existing data dir: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        shard_primary_port(&data_dir, 1).await?,
        port,
        "same ports after restart"
    );
    let row = connect(port)
        .await?
        .query_one("SELECT v FROM kept", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "survives restart");

    let pids = postmaster_pids(&data_dir);
    let out = pgshard(&["destroy"], &data_dir)?;
    assert!(out.status.success(), "destroy: {}", text(&out));
    assert!(!data_dir.exists(), "destroy removes the data dir");
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "destroy stops every instance"
    );
    Ok(())
}

#[test]
fn bad_config_names_the_key() -> anyhow::Result<()> {
    let root = temp_dir("cli-badcfg")?;
    let config = root.path().join("bad.toml");
    std::fs::write(&config, "[cluster]\nshards = 2\nreplicaz = 1\n")?;
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8 path")?],
        &root.path().join("data"),
    )?;
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("cluster.replicaz"),
        "error must name the key: {t}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Operator safety (SPEC §13, issue 17): only our own directory, only our own processes,
// our own ports.
// ---------------------------------------------------------------------------------------

/// Runs `pgshard` with extra environment, without `--data-dir` (the caller passes it).
fn pgshard_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(bin("pgshard")?);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

/// `pgshard up` of a default-shaped cluster in `data_dir` with its router on
/// 127.0.0.1:`port`; returns the output, asserting success.
fn up_cluster(data_dir: &Path, port: u16) -> anyhow::Result<String> {
    let config = data_dir.with_extension("toml");
    std::fs::write(
        &config,
        format!("[router]\nlisten = \"127.0.0.1:{port}\"\n"),
    )?;
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8 path")?],
        data_dir,
    )?;
    anyhow::ensure!(out.status.success(), "up failed: {}", text(&out));
    Ok(text(&out))
}

/// [`up_cluster`] on a free router port, which another test's instance may take
/// between our pick and the router's bind (up then fails naming it): destroyed and
/// tried again on another port.
fn up_cluster_on_free_port(data_dir: &Path) -> anyhow::Result<u16> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match up_cluster(data_dir, port) {
            Ok(_) => return Ok(port),
            Err(e) if attempt < 3 && e.to_string().contains("is already in use by pid") => {
                let _ = pgshard(&["destroy"], data_dir);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn answers(port: u16) -> bool {
    match connect(port).await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// `down`, `destroy` and `status` given a directory that is not a pgshard cluster (the
/// parent of a cluster's data directory, an unrelated PostgreSQL's data directory and
/// its parent, an empty directory) refuse, say why, and stop nothing: the unrelated
/// PostgreSQL and the cluster keep serving. `up` refuses such a directory too and
/// writes nothing into it.
#[tokio::test]
async fn commands_refuse_directories_that_are_not_a_cluster() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let unrelated = pgshard_tests::Standalone::start().await?;
    let root = temp_dir("cli-foreign")?;
    let data_dir = root.path().join("data");
    let _guard = Guard(data_dir.clone());
    let router_port = up_cluster_on_free_port(&data_dir)?;
    let pids = postmaster_pids(&data_dir);
    assert_eq!(pids.len(), 5, "{pids:?}");
    let unrelated_pid = unrelated.pid().await?.context("standalone pid")? as i32;
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty)?;

    let foreign: [(&Path, &str); 4] = [
        (root.path(), "is not a pgshard cluster"),
        (
            &unrelated.spec().data_dir(),
            "it is a PostgreSQL data directory",
        ),
        (&unrelated.spec().dir, "is not a pgshard cluster"),
        (&empty, "the directory is empty"),
    ];
    for (dir, why) in foreign {
        for cmd in ["down", "destroy", "status"] {
            let out = pgshard(&[cmd], dir)?;
            let t = text(&out);
            assert!(!out.status.success(), "{cmd} on {}: {t}", dir.display());
            assert!(
                t.contains(why),
                "{cmd} on {} must say why: {t}",
                dir.display()
            );
            assert!(
                t.contains("refusing") || cmd == "status" || why.contains("empty"),
                "{t}"
            );
        }
        // `up` will not make a cluster inside someone else's directory.
        if dir != empty.as_path() {
            let out = pgshard(&["up"], dir)?;
            assert!(
                !out.status.success(),
                "up on {}: {}",
                dir.display(),
                text(&out)
            );
            assert!(
                !dir.join("pgshard.toml").exists(),
                "up wrote into {}",
                dir.display()
            );
        }
    }
    // The parent's refusal points at the cluster inside it.
    let t = text(&pgshard(&["down"], root.path())?);
    assert!(t.contains(&data_dir.display().to_string()), "{t}");

    assert!(alive(unrelated_pid), "the unrelated PostgreSQL was stopped");
    unrelated.connect().await?.simple_query("SELECT 1").await?;
    let left: Vec<i32> = pids.iter().copied().filter(|p| !alive(*p)).collect();
    assert!(left.is_empty(), "cluster instances stopped: {left:?}");
    let out = pgshard(&["status"], &data_dir)?;
    assert!(out.status.success(), "cluster unhealthy: {}", text(&out));
    assert!(
        answers(router_port).await,
        "the cluster's router stopped serving"
    );

    // shardd dies (SIGKILL), leaving its router and instances running: `down` stops
    // those (each proved this cluster's), and leaves an unrelated PostgreSQL alone.
    let v: serde_json::Value =
        serde_json::from_slice(&pgshard(&["status", "--json"], &data_dir)?.stdout)?;
    let router_pid = v["router"]["pid"].as_u64().context("router pid")? as i32;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("shardd.json"))?)?;
    let shardd_pid = state["pid"].as_u64().context("shardd pid")? as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shardd_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while running(shardd_pid) {
        anyhow::ensure!(Instant::now() < deadline, "shardd survived SIGKILL");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(running(router_pid), "the router outlives shardd");
    assert!(pids.iter().all(|p| running(*p)), "instances outlive shardd");
    let out = pgshard(&["down"], &data_dir)?;
    assert!(out.status.success(), "down: {}", text(&out));
    assert!(!running(router_pid), "down stops the router left running");
    let left: Vec<i32> = pids.iter().copied().filter(|p| running(*p)).collect();
    assert!(
        left.is_empty(),
        "down stops the instances left running: {left:?}"
    );
    assert!(
        running(unrelated_pid),
        "the unrelated PostgreSQL was stopped"
    );
    unrelated.connect().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// Alive and not a zombie (a process whose parent is gone may wait a moment to be
/// reaped).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// A second cluster on the router port of a running one: `up` fails before starting
/// anything, naming the address and the process that holds it, and the first cluster
/// keeps serving. `status` shows the router; while the router cannot serve (its port
/// taken after a crash) `status` exits non-zero with the router's last error, and once
/// the port is free again it serves. An instance's port taken while the cluster is down
/// fails the next `up`, naming the instance and the address. The flags an existing
/// cluster ignores are named in a warning; hints are spelled as the CLI was invoked;
/// the logs carry no colour codes.
#[tokio::test]
async fn taken_ports_fail_up_and_the_router_is_in_status() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let root = temp_dir("cli-ports")?;
    let first = root.path().join("first");
    let second = root.path().join("second");
    let _guard = Guard(first.clone());
    let _guard2 = Guard(second.clone());
    let router_port = up_cluster_on_free_port(&first)?;

    let port = router_port.to_string();
    let out = pgshard(&["up", "--router-port", &port], &second)?;
    let t = text(&out);
    assert!(
        !out.status.success(),
        "second up on a taken port succeeded: {t}"
    );
    assert!(
        t.contains(&format!("127.0.0.1:{router_port}")),
        "names the address: {t}"
    );
    assert!(t.contains("already in use by pid"), "names the holder: {t}");
    assert!(t.contains("pgshard-router"), "{t}");
    assert!(!second.exists(), "a refused up leaves no directory behind");
    assert!(
        answers(router_port).await,
        "the first cluster stopped serving"
    );

    // status shows the router, serving.
    let out = pgshard(&["status"], &first)?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("router "))
        .with_context(|| format!("no router line: {t}"))?;
    assert!(line.contains(&format!("127.0.0.1:{router_port}")), "{line}");
    assert!(line.contains(" serving"), "{line}");
    let v: serde_json::Value =
        serde_json::from_slice(&pgshard(&["status", "--json"], &first)?.stdout)?;
    let router_pid = v["router"]["pid"].as_u64().context("router pid")? as i32;
    assert_eq!(v["router"]["state"], "serving");

    // The router dies and something else takes its port: status says so, non-zero.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(router_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let squatter = loop {
        match std::net::TcpListener::bind(("127.0.0.1", router_port)) {
            Ok(l) => break l,
            Err(_) if alive(router_pid) => tokio::task::yield_now().await,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let down_text = loop {
        let out = pgshard(&["status"], &first)?;
        let t = text(&out);
        if !out.status.success() && t.contains("NOT SERVING") && t.contains("in use") {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "status never showed the router down: {t}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        down_text.contains(&format!("127.0.0.1:{router_port}")),
        "the last error names the address: {down_text}"
    );
    drop(squatter);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = pgshard(&["status"], &first)?;
        if out.status.success() {
            assert!(text(&out).contains("restarts: "), "{}", text(&out));
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "router never came back: {}",
            text(&out)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answers(router_port).await);

    // Flags an existing cluster does not take are named; hints follow the invocation.
    let out = pgshard_env(
        &[
            "up",
            "--shards",
            "4",
            "--backend",
            "docker",
            "--data-dir",
            first.to_str().context("utf8")?,
        ],
        &[("PGSHARD_INVOKED_AS", "./pgshard")],
    )?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("warning"), "{t}");
    assert!(t.contains("--shards 4 (it has 2)"), "{t}");
    assert!(t.contains("--backend docker (it uses local)"), "{t}");
    assert!(t.contains("./pgshard status --data-dir"), "{t}");

    for log in ["shardd.log", "router.log"] {
        let bytes = std::fs::read(first.join(log))?;
        assert!(!bytes.contains(&0x1b), "{log} has colour codes");
    }

    // An instance's port taken while the cluster is down fails the next up.
    let node_port = shard_primary_port(&first, 1).await?;
    let out = pgshard(&["down"], &first)?;
    assert!(out.status.success(), "down: {}", text(&out));
    let squatter = std::net::TcpListener::bind(("127.0.0.1", node_port))?;
    let out = pgshard(&["up"], &first)?;
    let t = text(&out);
    assert!(!out.status.success(), "up with a node port taken: {t}");
    assert!(t.contains("the address of instance shard1-"), "{t}");
    assert!(t.contains(&format!("127.0.0.1:{node_port}")), "{t}");
    assert!(
        t.contains(&format!("pid {}", std::process::id())),
        "names the holder: {t}"
    );
    drop(squatter);
    Ok(())
}

/// `router.listen` on a non-loopback address with the default `trust` auth is refused
/// (by `up` and by the router itself) with a message naming both keys and the setting
/// that allows it; with `router.allow_remote_trust = true` the router gets past it.
#[tokio::test]
async fn trust_beyond_loopback_is_refused_unless_allowed() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let root = temp_dir("cli-trust")?;
    let port = free_port()?;
    let config = root.path().join("open.toml");
    std::fs::write(&config, format!("[router]\nlisten = \"0.0.0.0:{port}\"\n"))?;
    let data_dir = root.path().join("data");
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8")?],
        &data_dir,
    )?;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    for needle in [
        "router.auth",
        "router.listen",
        "router.allow_remote_trust",
        "is not supported",
    ] {
        assert!(t.contains(needle), "missing {needle}: {t}");
    }
    assert!(!data_dir.exists(), "nothing created");

    // The router binary itself, with --listen overriding a loopback config.
    let router = |extra: &[&str]| -> anyhow::Result<Output> {
        Ok(Command::new(bin("pgshard-router")?)
            .args(extra)
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .args([
                "--catalog",
                "host=127.0.0.1 port=1 user=postgres connect_timeout=1",
            ])
            .env("NO_COLOR", "1")
            .output()?)
    };
    let out = router(&[])?;
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("router.allow_remote_trust"), "{t}");
    let allowed = root.path().join("allowed.toml");
    std::fs::write(&allowed, "[router]\nallow_remote_trust = true\n")?;
    let out = router(&["--config", allowed.to_str().context("utf8")?])?;
    let t = text(&out);
    assert!(!out.status.success(), "no catalog to load: {t}");
    assert!(
        !t.contains("allow_remote_trust"),
        "allowed, so it fails later: {t}"
    );
    Ok(())
}

/// Config errors say where: a syntax error names the file, line and column; a missing
/// file's error is printed once.
#[test]
fn config_errors_name_file_line_and_column_once() -> anyhow::Result<()> {
    let root = temp_dir("cli-cfgerr")?;
    let config = root.path().join("broken.toml");
    std::fs::write(&config, "[cluster]\nshards = 2\nreplicas 1\n")?;
    let out = pgshard(
        &["up", "--config", config.to_str().context("utf8")?],
        &root.path().join("data"),
    )?;
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains(&format!(
            "config file {}, line 3, column 10",
            config.display()
        )),
        "{t}"
    );
    let missing = root.path().join("missing.toml");
    let out = pgshard(
        &["up", "--config", missing.to_str().context("utf8")?],
        &root.path().join("data"),
    )?;
    let t = text(&out);
    assert!(!out.status.success());
    assert_eq!(t.matches("No such file or directory").count(), 1, "{t}");
    assert_eq!(t.lines().count(), 1, "one line: {t}");
    Ok(())
}

/// `./pgshard` finds the binaries where cargo puts them: with `CARGO_TARGET_DIR` set
/// (here to another path of this build's target directory, with the debug profile the
/// tests build) it runs the CLI rather than a `target/` that may not exist.
#[test]
fn wrapper_honours_cargo_target_dir() -> anyhow::Result<()> {
    let exe = bin("pgshard")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("target dir")?
        .canonicalize()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repo")?
        .to_path_buf();
    let root = temp_dir("cli-wrapper")?;
    let elsewhere = root.path().join("target-elsewhere");
    std::os::unix::fs::symlink(&target, &elsewhere)?;
    let out = Command::new(repo.join("pgshard"))
        .arg("--version")
        .env("CARGO_TARGET_DIR", &elsewhere)
        .env("PGSHARD_PROFILE", "debug")
        .output()?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("pgshard "), "{t}");
    assert!(!t.contains("No such file"), "{t}");
    Ok(())
}

/// shardd itself refuses to start a router on a taken port (the CLI's check can be
/// raced, or shardd run by hand): it exits with an error naming the address and its
/// holder, after stopping the instances it started, instead of restarting the router
/// in a loop.
#[tokio::test]
async fn shardd_refuses_a_taken_router_port() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let root = temp_dir("cli-shardd-port")?;
    let data_dir = root.path().join("data");
    std::fs::create_dir(&data_dir)?;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = squatter.local_addr()?.port();
    let config = root.path().join("pgshard.toml");
    std::fs::write(
        &config,
        format!("[router]\nlisten = \"127.0.0.1:{port}\"\n"),
    )?;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new(bin("shardd")?)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("shardd did not exit")??;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "127.0.0.1:{port} is already in use by pid {}",
            std::process::id()
        )),
        "{t}"
    );
    assert!(
        !t.contains("\u{1b}["),
        "no colour codes off a terminal: {t}"
    );
    let left: Vec<i32> = postmaster_pids(&data_dir)
        .into_iter()
        .filter(|p| running(*p))
        .collect();
    assert!(left.is_empty(), "instances left running: {left:?}");
    drop(squatter);
    Ok(())
}

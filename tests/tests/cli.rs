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

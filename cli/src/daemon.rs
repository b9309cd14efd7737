//! Finding, starting and stopping a cluster's shardd from its data directory.
//!
//! shardd writes `shardd.json` (its pid and API address) into the data directory once
//! the cluster is ready and removes it on a clean exit; a stale file (dead pid) means
//! shardd is not running. The effective config of a cluster is kept as
//! `pgshard.toml` in its data directory, so later commands and restarts need no flags.

use anyhow::{anyhow, bail, Context, Result};
use pgshard_catalog::config::{Backend, Config};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const STATE_FILE: &str = "shardd.json";
const CONFIG_FILE: &str = "pgshard.toml";
const LOG_FILE: &str = "shardd.log";

/// A running shardd, as found in the data directory.
#[derive(Debug, Clone)]
pub struct DaemonState {
    pub pid: i32,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    /// The router's address, once the router runs.
    pub router: Option<(String, u16)>,
}

/// Flags of `pgshard up` that override the config for a new cluster.
pub struct Overrides {
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    pub router_port: Option<u16>,
    pub backend: Option<String>,
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_state(data_dir: &Path) -> Option<DaemonState> {
    let text = std::fs::read_to_string(data_dir.join(STATE_FILE)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let pid = v.get("pid")?.as_i64()? as i32;
    let api = ["api", "api_addr", "listen", "addr", "address"]
        .iter()
        .find_map(|k| v.get(*k)?.as_str()?.parse::<SocketAddr>().ok())?;
    let router = v.get("router").and_then(|r| {
        let addr: SocketAddr = r.as_str()?.parse().ok()?;
        Some((addr.ip().to_string(), addr.port()))
    });
    Some(DaemonState {
        pid,
        api,
        data_dir: data_dir.to_path_buf(),
        router,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// shardd's `GET /v1/status`.
pub async fn get_status(state: &DaemonState) -> Result<Value> {
    let url = format!("http://{}/v1/status", state.api);
    let resp = http().get(&url).send().await?.error_for_status()?;
    Ok(resp.json().await?)
}

/// The running shardd of this data directory, if it answers.
pub async fn running(data_dir: &Path) -> Option<DaemonState> {
    let state = read_state(data_dir)?;
    if !pid_alive(state.pid) {
        return None;
    }
    get_status(&state).await.ok()?;
    Some(state)
}

/// The config a cluster runs with: the one stored in its data directory, or (for a new
/// cluster) the given file or the defaults with the flags applied, then stored.
pub fn effective_config(
    data_dir: &Path,
    file: Option<&Path>,
    overrides: Overrides,
) -> Result<Config> {
    let stored = data_dir.join(CONFIG_FILE);
    if stored.exists() {
        let config = Config::load(Some(&stored))?;
        if overrides.shards.is_some_and(|s| s != config.cluster.shards)
            || overrides
                .replicas
                .is_some_and(|r| r != config.cluster.replicas)
        {
            eprintln!(
                "pgshard: {} holds an existing cluster; restarting it as it was created \
                 (--shards/--replicas apply to new clusters only)",
                data_dir.display()
            );
        }
        return Ok(config);
    }
    let mut config = Config::load(file)?;
    if let Some(s) = overrides.shards {
        config.cluster.shards = s;
    }
    if let Some(r) = overrides.replicas {
        config.cluster.replicas = r;
    }
    if let Some(p) = overrides.router_port {
        let host = config
            .router
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "127.0.0.1".into());
        config.router.listen = format!("{host}:{p}");
    }
    if let Some(b) = overrides.backend {
        config.cluster.backend = match b.as_str() {
            "local" => Backend::Local,
            "docker" => Backend::Docker,
            other => bail!("--backend must be `local` or `docker`, got `{other}`"),
        };
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let abs = std::fs::canonicalize(data_dir)?;
    config.cluster.data_dir = abs;
    config.validate()?;
    let text = toml::to_string_pretty(&config).context("serialising the config")?;
    std::fs::write(&stored, text).with_context(|| format!("writing {}", stored.display()))?;
    Ok(config)
}

/// The config stored in a cluster's data directory (`None` if no cluster was ever
/// created there), pointed at that directory wherever it is now.
pub fn stored_config(data_dir: &Path) -> Result<Option<Config>> {
    let stored = data_dir.join(CONFIG_FILE);
    if !stored.exists() {
        return Ok(None);
    }
    let mut config = Config::load(Some(&stored))?;
    config.cluster.data_dir = std::path::absolute(data_dir)
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    Ok(Some(config))
}

/// Fail early, saying what to install, when the chosen backend cannot work here.
pub fn check_backend(config: &Config) -> Result<()> {
    match config.cluster.backend {
        Backend::Local => {
            let candidates = config
                .cluster
                .pg_bin_dir
                .iter()
                .cloned()
                .chain([PathBuf::from("/usr/lib/postgresql/15/bin")]);
            for dir in candidates {
                if dir.join("postgres").exists() && dir.join("initdb").exists() {
                    return Ok(());
                }
            }
            if let Ok(out) = std::process::Command::new("pg_config")
                .arg("--bindir")
                .output()
            {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if dir.join("postgres").exists() && dir.join("initdb").exists() {
                    return Ok(());
                }
            }
            bail!(
                "PostgreSQL 15 server binaries not found (looked in /usr/lib/postgresql/15/bin \
                 and `pg_config --bindir`). Install them with `apt-get install -y postgresql-15` \
                 (Debian/Ubuntu), set cluster.pg_bin_dir in pgshard.toml, or use `--backend docker`"
            )
        }
        Backend::Docker => {
            let ok = std::process::Command::new("docker")
                .arg("info")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                bail!(
                    "no Docker engine answers `docker info`. Install Docker \
                     (apt-get install -y docker.io) and start it, or use the default \
                     `--backend local` with PostgreSQL 15 installed"
                );
            }
            Ok(())
        }
    }
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the pgshard binary")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("pgshard binary has no directory"))?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "`{name}` not found next to {} (build the workspace with `cargo build --release`)",
            exe.display()
        )
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Start shardd for this data directory in the background and wait until it reports
/// the cluster ready. Ctrl-C while waiting stops what was started.
pub async fn start(data_dir: &Path, timeout: Duration) -> Result<DaemonState> {
    let shardd = sibling_binary("shardd")?;
    let log_path = data_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    // A stale state file from a crashed shardd must not be mistaken for readiness.
    let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    let mut child = tokio::process::Command::new(&shardd)
        .arg("--config")
        .arg(data_dir.join(CONFIG_FILE))
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: Ctrl-C in this terminal later must not reach shardd.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", shardd.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("shardd exited immediately"))? as i32;
    eprintln!(
        "pgshard: starting cluster in {} (shardd pid {pid}, log {})",
        data_dir.display(),
        log_path.display()
    );
    let deadline = Instant::now() + timeout;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "shardd exited ({status}) before the cluster was ready; last lines of {}:\n{}",
                log_path.display(),
                log_tail(&log_path, 30)
            );
        }
        if let Some(state) = read_state(data_dir) {
            if state.pid == pid {
                if let Ok(status) = get_status(&state).await {
                    if status.get("ready").and_then(|r| r.as_bool()) == Some(true) {
                        return Ok(state);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            bail!(
                "cluster not ready after {}s; stopped shardd. Last lines of {}:\n{}",
                timeout.as_secs(),
                log_path.display(),
                log_tail(&log_path, 30)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut ctrl_c => {
                eprintln!("pgshard: interrupted; stopping the cluster");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait().await;
                bail!("interrupted");
            }
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// PostgreSQL postmaster pids found under the data directory (`postmaster.pid`).
fn postmasters(data_dir: &Path) -> Vec<(PathBuf, i32)> {
    let mut found = Vec::new();
    let mut stack = vec![(data_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "postmaster.pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
                {
                    found.push((dir.clone(), pid));
                }
            } else if depth < 4 && p.is_dir() && !p.is_symlink() {
                stack.push((p, depth + 1));
            }
        }
    }
    found
}

/// Stop the cluster: ask shardd to shut everything down; if shardd is not running,
/// stop any PostgreSQL instance left running in the data directory (fast shutdown).
pub async fn down(data_dir: &Path) -> Result<()> {
    if let Some(state) = read_state(data_dir) {
        if pid_alive(state.pid) {
            let url = format!("http://{}/v1/shutdown", state.api);
            let asked = http().post(&url).send().await.is_ok();
            if !asked {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(state.pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if !wait_pid_exit(state.pid, Duration::from_secs(120)).await {
                bail!("shardd (pid {}) did not stop within 120s", state.pid);
            }
        }
        let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    }
    for (dir, pid) in postmasters(data_dir) {
        if pid_alive(pid) {
            eprintln!(
                "pgshard: stopping PostgreSQL in {} (pid {pid})",
                dir.display()
            );
            // SIGINT is PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
            if !wait_pid_exit(pid, Duration::from_secs(60)).await {
                bail!("PostgreSQL pid {pid} in {} did not stop", dir.display());
            }
        }
    }
    Ok(())
}

/// Remove all of the cluster's data. The cluster must be stopped.
pub async fn destroy(data_dir: &Path) -> Result<()> {
    if !data_dir.exists() {
        return Ok(());
    }
    if !data_dir.join(CONFIG_FILE).exists() && !data_dir.join("cluster.json").exists() {
        bail!(
            "{} does not look like a pgshard data directory (no {CONFIG_FILE}); not removing it",
            data_dir.display()
        );
    }
    std::fs::remove_dir_all(data_dir)
        .with_context(|| format!("removing {}", data_dir.display()))?;
    Ok(())
}

//! The router process of the embedded cluster: shardd starts `pgshard-router` once the
//! cluster is ready, restarts it if it exits, and stops it before the instances.
//!
//! The router is a separate process (SPEC §1) so it can be restarted, upgraded or run
//! many times over, and a router crash never takes the control plane with it. It gets
//! the cluster's config (written to `data_dir/router.toml`) and the catalog node's
//! connection string; from there it follows the catalog on its own. Its pid is kept in
//! `data_dir/router.pid` so a shardd restarted after a crash can stop an orphaned router
//! before starting a new one on the same port.

use anyhow::Context;
use pgshard_catalog::Config;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const PID_FILE: &str = "router.pid";
const LOG_FILE: &str = "router.log";
const CONFIG_FILE: &str = "router.toml";
/// How long a stopping router may take before it is SIGKILLed: above the router's own
/// shutdown grace for sessions in a transaction.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The running router, as far as the supervisor knows.
#[derive(Debug, Clone, Default)]
pub struct RouterHandle {
    pid: Arc<AtomicU32>,
}

impl RouterHandle {
    /// The current router process id, 0 when none runs.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }
}

/// The `pgshard-router` binary installed next to the running executable, if any.
pub fn sibling_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join("pgshard-router");
    path.exists().then_some(path)
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Stop a router left behind by a previous shardd (only if the pid still names a
/// pgshard-router: pids get reused).
async fn stop_orphan(data_dir: &Path) {
    let path = data_dir.join(PID_FILE);
    let Some(pid) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if alive(pid) && String::from_utf8_lossy(&cmdline).contains("pgshard-router") {
        tracing::warn!(pid, "stopping a router left by a previous shardd");
        terminate(pid, STOP_GRACE).await;
    }
    let _ = std::fs::remove_file(path);
}

/// SIGTERM our own router child and wait for it to exit (reaping it), SIGKILL after
/// `grace`. Waiting on the child, not polling `kill(pid, 0)`: an exited child stays a
/// zombie until it is reaped, and `kill(pid, 0)` succeeds on a zombie, so polling it
/// from the reaper itself waited out the whole grace period on every stop.
async fn terminate_child(child: &mut tokio::process::Child, grace: Duration) {
    let started = Instant::now();
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            tracing::info!(?status, elapsed = ?started.elapsed(), "router exited");
        }
        Err(_) => {
            tracing::warn!(?grace, "router ignored SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

/// SIGTERM a router that is not our child (it is reaped by init, so `kill(pid, 0)`
/// tells when it is gone), SIGKILL after `grace`.
async fn terminate(pid: i32, grace: Duration) {
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Wait until a PostgreSQL session through the router answers `SELECT 1`.
async fn wait_answering(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("router.listen `{listen}`"))?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .application_name("shardd")
        .connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        let attempt = async {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            let task = tokio::spawn(conn);
            let r = client.simple_query("SELECT 1").await.map(|_| ());
            drop(client);
            let _ = task.await;
            r
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("router on {listen} not answering after {timeout:?}: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Start the router and keep it running until `stop`; returns once it answers queries.
/// The returned task ends after the router has been stopped.
pub async fn supervise(
    binary: PathBuf,
    config: &Config,
    data_dir: &Path,
    catalog_conninfo: String,
    stop: CancellationToken,
) -> anyhow::Result<(RouterHandle, tokio::task::JoinHandle<()>)> {
    stop_orphan(data_dir).await;
    let config_path = data_dir.join(CONFIG_FILE);
    std::fs::write(&config_path, toml::to_string_pretty(config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let handle = RouterHandle::default();
    let spawn = {
        let binary = binary.clone();
        let data_dir = data_dir.to_path_buf();
        move || -> anyhow::Result<tokio::process::Child> {
            let log_path = data_dir.join(LOG_FILE);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let child = Command::new(&binary)
                .arg("--config")
                .arg(&config_path)
                .arg("--catalog")
                .arg(&catalog_conninfo)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            if let Some(pid) = child.id() {
                let _ = std::fs::write(data_dir.join(PID_FILE), pid.to_string());
            }
            Ok(child)
        }
    };
    let first = spawn()?;
    handle.pid.store(first.id().unwrap_or(0), Ordering::Relaxed);
    wait_answering(&config.router.listen, Duration::from_secs(60)).await?;
    tracing::info!(listen = %config.router.listen, pid = handle.pid(), "router answering");

    let task_handle = handle.clone();
    let data_dir = data_dir.to_path_buf();
    let task = tokio::spawn(async move {
        let mut child = first;
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                status = child.wait() => {
                    tracing::error!(?status, "router exited; restarting it");
                    task_handle.pid.store(0, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match spawn() {
                        Ok(c) => {
                            task_handle.pid.store(c.id().unwrap_or(0), Ordering::Relaxed);
                            child = c;
                        }
                        Err(error) => tracing::error!(%error, "could not restart the router"),
                    }
                }
                _ = stop.cancelled() => {
                    terminate_child(&mut child, STOP_GRACE).await;
                    break;
                }
            }
        }
        task_handle.pid.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_file(data_dir.join(PID_FILE));
        tracing::info!("router stopped");
    });
    Ok((handle, task))
}

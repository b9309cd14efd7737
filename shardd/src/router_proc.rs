//! The router process of the embedded cluster: shardd starts `pgshard-router` once the
//! cluster is ready, restarts it if it exits, and stops it before the instances.
//!
//! The router is a separate process (SPEC §1) so it can be restarted, upgraded or run
//! many times over, and a router crash never takes the control plane with it. It gets
//! the cluster's config (written to `data_dir/router.toml`) and the catalog node's
//! connection string; from there it follows the catalog on its own. Its pid is kept in
//! `data_dir/router.pid` so a shardd restarted after a crash can stop an orphaned router
//! before starting a new one on the same port.
//!
//! Never a silent loop (SPEC §13): the router's address must be free before the first
//! start (the error names the address and what holds it), the first start is ready only
//! once *our* child holds the listening socket and answers, and every restart is
//! counted in [`RouterStatus`] with the router's last words, which `GET /v1/status`
//! and `pgshard status` show.

use anyhow::Context;
use pgshard_catalog::Config;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const PID_FILE: &str = "router.pid";
const LOG_FILE: &str = "router.log";
const CONFIG_FILE: &str = "router.toml";
/// How long a stopping router may take before it is SIGKILLed: above the router's own
/// shutdown grace for sessions in a transaction.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the first start may take to answer.
const FIRST_START: Duration = Duration::from_secs(60);

/// Where the supervised router is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterState {
    /// Started, not yet answering.
    #[default]
    Starting,
    /// Holds its listening socket and answers queries.
    Serving,
    /// Exited; waiting to be started again.
    Restarting,
    /// Stopped with the cluster.
    Stopped,
}

/// The supervised router as `GET /v1/status` reports it (`router`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouterStatus {
    /// `router.listen`.
    pub listen: String,
    pub state: RouterState,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// Times the router exited and was started again.
    pub restarts: u32,
    /// Why it last exited (its last log line, or its exit status).
    pub last_error: Option<String>,
}

/// The running router, as far as the supervisor knows; shared with the API.
#[derive(Debug, Clone, Default)]
pub struct RouterHandle {
    status: Arc<Mutex<Option<RouterStatus>>>,
}

impl RouterHandle {
    /// The current router process id, 0 when none runs.
    pub fn pid(&self) -> u32 {
        self.status().and_then(|s| s.pid).unwrap_or(0)
    }

    /// A snapshot; `None` when this shardd runs no router.
    pub fn status(&self) -> Option<RouterStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RouterStatus)) {
        let mut guard = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.get_or_insert_with(RouterStatus::default));
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

/// True if `pid` is this data directory's router (a `pgshard-router` started with
/// `--config DIR/router.toml`): pids get reused, and other clusters run routers too.
pub fn is_our_router(pid: u32, data_dir: &Path) -> bool {
    crate::ownership::is_program_with_arg(
        pid,
        "pgshard-router",
        "--config",
        &data_dir.join(CONFIG_FILE),
    )
}

/// The pid recorded in `data_dir/router.pid`, if it is still this data directory's
/// router.
pub fn recorded_router(data_dir: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()?;
    is_our_router(pid, data_dir).then_some(pid)
}

/// Stop a router left behind by a previous shardd (only if the pid is still this data
/// directory's router).
async fn stop_orphan(data_dir: &Path) {
    if let Some(pid) = recorded_router(data_dir) {
        if let Ok(pid) = i32::try_from(pid) {
            tracing::warn!(pid, "stopping a router left by a previous shardd");
            terminate(pid, STOP_GRACE).await;
        }
    }
    let _ = std::fs::remove_file(data_dir.join(PID_FILE));
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

/// One attempt at a PostgreSQL session through the router: true if it answered
/// `SELECT 1`, or refused us with an authentication error (the router answered; it
/// wants a password, as configured).
async fn answers(addr: SocketAddr) -> bool {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .application_name("shardd")
        .connect_timeout(Duration::from_secs(2));
    let attempt = async {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let r = client.simple_query("SELECT 1").await.map(|_| ());
        drop(client);
        let _ = task.await;
        r
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => e.code().is_some_and(|c| c.code().starts_with("28")),
        Err(_) => false,
    }
}

/// The address a router listening on `addr` is reached at (a wildcard address is
/// reached on loopback).
fn reach(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The last non-empty line the router wrote to its log after `offset`, without colour
/// codes: why it exited.
fn last_words(log: &Path, offset: u64) -> Option<String> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let line = strip_ansi(line.trim());
    Some(line.strip_prefix("error: ").unwrap_or(&line).to_string())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Wait until our child `child` answers on `addr` and holds the listening socket
/// itself: an answer from another process on that port (another cluster's router)
/// proves nothing. Fails as soon as the child exits, with its last words.
async fn wait_ours(
    child: &mut tokio::process::Child,
    addr: SocketAddr,
    log: &Path,
    offset: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    let pid = child.id().unwrap_or(0);
    loop {
        if let Some(status) = child.try_wait()? {
            let why = last_words(log, offset).unwrap_or_else(|| status.to_string());
            anyhow::bail!("the router exited ({status}) before answering on {addr}: {why}");
        }
        if crate::ownership::listens_on(pid, addr.port()) && answers(reach(addr)).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            let others: Vec<String> = crate::ownership::listeners(addr.port())
                .into_iter()
                .filter(|p| *p != pid)
                .map(crate::ownership::describe)
                .collect();
            if others.is_empty() {
                anyhow::bail!(
                    "the router (pid {pid}) is not answering on {addr} after {timeout:?}"
                );
            }
            anyhow::bail!(
                "the router (pid {pid}) is not answering on {addr} after {timeout:?}; \
                 {} listens there",
                others.join(", ")
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Start the router and keep it running until `stop`; returns once it answers queries
/// on its own listening socket. `handle` is kept up to date (state, pid, restarts, last
/// error) for the API. The returned task ends after the router has been stopped.
pub async fn supervise(
    binary: PathBuf,
    config: &Config,
    data_dir: &Path,
    catalog_conninfo: String,
    handle: RouterHandle,
    stop: CancellationToken,
) -> anyhow::Result<(RouterHandle, tokio::task::JoinHandle<()>)> {
    let listen: SocketAddr = config
        .router
        .listen
        .parse()
        .with_context(|| format!("router.listen `{}`", config.router.listen))?;
    handle.update(|s| {
        *s = RouterStatus {
            listen: config.router.listen.clone(),
            ..RouterStatus::default()
        }
    });
    stop_orphan(data_dir).await;
    if let Some(taken) = crate::ownership::port_taken(listen) {
        handle.update(|s| {
            s.state = RouterState::Stopped;
            s.last_error = Some(taken.clone());
        });
        anyhow::bail!("router.listen: {taken}");
    }
    let config_path = data_dir.join(CONFIG_FILE);
    // Local shards are reached through their Unix sockets.
    let mut config = config.clone();
    if config.cluster.backend == pgshard_catalog::config::Backend::Local {
        config.router.backend_socket_dir = crate::cluster::socket_dir(data_dir);
    }
    std::fs::write(&config_path, toml::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log_path = data_dir.join(LOG_FILE);
    let spawn = {
        let binary = binary.clone();
        let data_dir = data_dir.to_path_buf();
        let log_path = log_path.clone();
        move || -> anyhow::Result<(tokio::process::Child, u64)> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
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
            Ok((child, offset))
        }
    };
    let (mut first, offset) = spawn()?;
    handle.update(|s| s.pid = first.id());
    if let Err(e) = wait_ours(&mut first, listen, &log_path, offset, FIRST_START).await {
        terminate_child(&mut first, STOP_GRACE).await;
        let _ = std::fs::remove_file(data_dir.join(PID_FILE));
        handle.update(|s| {
            s.state = RouterState::Stopped;
            s.pid = None;
            s.last_error = Some(format!("{e:#}"));
        });
        return Err(e);
    }
    handle.update(|s| s.state = RouterState::Serving);
    tracing::info!(listen = %config.router.listen, pid = handle.pid(), "router answering");

    let task_handle = handle.clone();
    let data_dir = data_dir.to_path_buf();
    let task = tokio::spawn(async move {
        let mut child = first;
        let mut offset = offset;
        let mut backoff = Duration::from_millis(100);
        let mut starting = false;
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let mut why = last_words(&log_path, offset).unwrap_or_else(|| match &status {
                        Ok(s) => format!("exited ({s})"),
                        Err(e) => format!("could not be waited for: {e}"),
                    });
                    // Name what holds the port, when that is why.
                    if why.contains("already in use") {
                        if let Some(taken) = crate::ownership::port_taken(listen) {
                            why = format!("{why}; {taken}");
                        }
                    }
                    tracing::error!(?status, last_error = %why, restart_in = ?backoff, "router exited; restarting it");
                    task_handle.update(|s| {
                        s.state = RouterState::Restarting;
                        s.pid = None;
                        s.last_error = Some(why);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match spawn() {
                        Ok((c, o)) => {
                            task_handle.update(|s| {
                                s.pid = c.id();
                                s.state = RouterState::Starting;
                                s.restarts += 1;
                            });
                            child = c;
                            offset = o;
                            starting = true;
                        }
                        Err(error) => {
                            // The exited child's status stays cached: the next round
                            // of this loop waits out the backoff and tries again.
                            tracing::error!(%error, "could not restart the router");
                            task_handle.update(|s| s.last_error = Some(format!("{error:#}")));
                        }
                    }
                }
                _ = check.tick(), if starting => {
                    let pid = child.id().unwrap_or(0);
                    if crate::ownership::listens_on(pid, listen.port()) && answers(reach(listen)).await {
                        tracing::info!(pid, "router answering again");
                        task_handle.update(|s| s.state = RouterState::Serving);
                        starting = false;
                        backoff = Duration::from_millis(100);
                    }
                }
                _ = stop.cancelled() => {
                    terminate_child(&mut child, STOP_GRACE).await;
                    break;
                }
            }
        }
        task_handle.update(|s| {
            s.state = RouterState::Stopped;
            s.pid = None;
        });
        let _ = std::fs::remove_file(data_dir.join(PID_FILE));
        tracing::info!("router stopped");
    });
    Ok((handle, task))
}

/// The supervised router in Prometheus text format (appended to shardd's `/metrics`).
pub fn render_metrics(status: &RouterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let labels = format!("{{listen=\"{}\"}}", status.listen);
    let _ = writeln!(
        out,
        "# HELP pgshard_shardd_router_serving 1 while the supervised router holds its \
         address and answers, else 0."
    );
    let _ = writeln!(out, "# TYPE pgshard_shardd_router_serving gauge");
    let _ = writeln!(
        out,
        "pgshard_shardd_router_serving{labels} {}",
        i64::from(status.state == RouterState::Serving)
    );
    let _ = writeln!(
        out,
        "# HELP pgshard_shardd_router_restarts_total Times the router exited and was started again."
    );
    let _ = writeln!(out, "# TYPE pgshard_shardd_router_restarts_total counter");
    let _ = writeln!(
        out,
        "pgshard_shardd_router_restarts_total{labels} {}",
        status.restarts
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_say_whether_the_router_serves() {
        let status = RouterStatus {
            listen: "127.0.0.1:6432".into(),
            state: RouterState::Restarting,
            pid: None,
            restarts: 3,
            last_error: Some("in use".into()),
        };
        let text = render_metrics(&status);
        assert!(text.contains("pgshard_shardd_router_serving{listen=\"127.0.0.1:6432\"} 0"));
        assert!(text.contains("pgshard_shardd_router_restarts_total{listen=\"127.0.0.1:6432\"} 3"));
    }

    #[test]
    fn ansi_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m boom"),
            "2026 ERROR boom"
        );
    }
}

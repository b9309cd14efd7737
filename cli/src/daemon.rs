//! Finding, starting and stopping a cluster's shardd from its data directory.
//!
//! shardd writes `shardd.json` (its pid and API address) into the data directory once
//! the cluster is ready and removes it on a clean exit; a stale file (dead pid) means
//! shardd is not running. The effective config of a cluster is kept as
//! `pgshard.toml` in its data directory, so later commands and restarts need no flags.
//!
//! Safety (SPEC §13): every command first proves its directory is a pgshard cluster
//! ([`ClusterDir::open`]), and signals only processes proved to be that cluster's
//! (see [`pgshard_shardd::ownership`]): the shardd holding the directory's lock file,
//! the router started with its `router.toml`, and the postmasters of the instance
//! directories its layout (`cluster.json`) lists, each checked to run on that data
//! directory. Nothing found by walking a directory tree is ever signalled.

use anyhow::{anyhow, bail, Context, Result};
use pgshard_catalog::config::{Backend, Config};
use pgshard_shardd::cluster::{Layout, LAYOUT_FILE};
use pgshard_shardd::daemon::LOCK_FILE;
use pgshard_shardd::ownership;
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

/// A directory proved to hold a pgshard cluster: its stored config (written by `pgshard
/// up`) points at it, or shardd's layout (`cluster.json`) is there.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    /// As the user gave it (for messages).
    pub given: PathBuf,
    /// Canonical.
    pub path: PathBuf,
    pub layout: Option<Layout>,
}

/// An instance's `postmaster.pid`: which node, its data directory, the pid it names.
struct Postmaster {
    node: String,
    data: PathBuf,
    pid: u32,
}

/// What a directory that is not a cluster is, for the refusal.
fn not_a_cluster(dir: &Path) -> anyhow::Error {
    let shown = dir.display();
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().peekable(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return anyhow!("no pgshard cluster in {shown}: the directory does not exist")
        }
        Err(e) => return anyhow!("cannot read {shown}: {e}"),
    };
    if entries.peek().is_none() {
        return anyhow!("{shown} is not a pgshard cluster: the directory is empty");
    }
    let what = if dir.join("PG_VERSION").exists() {
        " (it is a PostgreSQL data directory)"
    } else {
        ""
    };
    let inside: Vec<String> = entries
        .filter(|e| e.path().is_dir() && is_cluster_dir(&e.path()))
        .map(|e| e.path().display().to_string())
        .collect();
    let hint = if inside.is_empty() {
        String::new()
    } else {
        format!("; pgshard clusters inside it: {}", inside.join(", "))
    };
    anyhow!(
        "{shown} is not a pgshard cluster{what}: it has no {CONFIG_FILE} written by \
         `pgshard up` and no {LAYOUT_FILE}; refusing to touch it{hint}"
    )
}

/// True if `dir` holds a cluster's layout, or the config `pgshard up` stored for it
/// (whose `cluster.data_dir` is that very directory).
fn is_cluster_dir(dir: &Path) -> bool {
    if dir.join(LAYOUT_FILE).is_file() {
        return true;
    }
    let Ok(config) = Config::load(Some(&dir.join(CONFIG_FILE))) else {
        return false;
    };
    match (
        std::fs::canonicalize(&config.cluster.data_dir),
        std::fs::canonicalize(dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl ClusterDir {
    /// The cluster in `dir`, or an error saying why `dir` is not one.
    pub fn open(dir: &Path) -> Result<ClusterDir> {
        if !is_cluster_dir(dir) {
            return Err(not_a_cluster(dir));
        }
        let path =
            std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let layout = Layout::load(&path.join(LAYOUT_FILE))?;
        Ok(ClusterDir {
            given: dir.to_path_buf(),
            path,
            layout,
        })
    }

    /// Whether `dir` can hold a new cluster: missing, empty, or already a cluster.
    pub fn check_new(dir: &Path) -> Result<()> {
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", dir.display())),
            Ok(mut entries) => {
                if entries.next().is_none() || is_cluster_dir(dir) {
                    Ok(())
                } else {
                    Err(not_a_cluster(dir))
                        .context("a new cluster needs an empty or new directory (--data-dir)")
                }
            }
        }
    }

    /// The shardd running on this cluster: the pid in `shardd.json` if that process
    /// is a `shardd` holding this directory's lock, else any `shardd` holding it
    /// (one still bootstrapping has written no `shardd.json` yet).
    pub fn shardd(&self) -> Option<u32> {
        let lock = self.path.join(LOCK_FILE);
        if let Some(state) = read_state(&self.path) {
            if let Ok(pid) = u32::try_from(state.pid) {
                if ownership::is_program_holding(pid, "shardd", &lock) {
                    return Some(pid);
                }
            }
        }
        ownership::holding("shardd", &lock).into_iter().next()
    }

    /// The postmasters of this cluster's local instances that are running: each
    /// instance's `postmaster.pid`, kept only if that pid is a postgres on that very
    /// data directory. Pids that fail the check are returned apart, to be reported.
    fn postmasters(&self) -> (Vec<Postmaster>, Vec<Postmaster>) {
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        for node in self.layout.iter().flat_map(|l| l.nodes.iter()) {
            let data = node.dir.join("data");
            let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            else {
                continue;
            };
            let found = Postmaster {
                node: node.name.clone(),
                data,
                pid,
            };
            if ownership::is_postgres_on(pid, &found.data) {
                ours.push(found);
            } else if pid_alive(pid as i32) {
                foreign.push(found);
            }
        }
        (ours, foreign)
    }
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
    Some(DaemonState { pid, api, router })
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

/// The running shardd of this cluster, if it is proved ours and answers.
pub async fn running(dir: &ClusterDir) -> Option<DaemonState> {
    let pid = dir.shardd()?;
    let state = read_state(&dir.path)?;
    if u32::try_from(state.pid).ok() != Some(pid) {
        return None;
    }
    get_status(&state).await.ok()?;
    Some(state)
}

/// A flag of `pgshard up` that a cluster which already exists does not take, with what
/// the cluster has instead.
fn ignored_flags(config: &Config, file: Option<&Path>, overrides: &Overrides) -> Vec<String> {
    let mut ignored = Vec::new();
    if let Some(s) = overrides.shards.filter(|s| *s != config.cluster.shards) {
        ignored.push(format!("--shards {s} (it has {})", config.cluster.shards));
    }
    if let Some(r) = overrides.replicas.filter(|r| *r != config.cluster.replicas) {
        ignored.push(format!(
            "--replicas {r} (it has {})",
            config.cluster.replicas
        ));
    }
    if let Some(b) = &overrides.backend {
        let has = match config.cluster.backend {
            Backend::Local => "local",
            Backend::Docker => "docker",
        };
        if b != has {
            ignored.push(format!("--backend {b} (it uses {has})"));
        }
    }
    if let Some(f) = file {
        ignored.push(format!(
            "--config {} (its config is kept in {CONFIG_FILE} in its directory)",
            f.display()
        ));
    }
    ignored
}

/// The warning for `up` flags that an existing cluster in `data_dir` does not take
/// (`None` for a new cluster, or when every flag agrees with it).
pub fn ignored_flags_warning(
    data_dir: &Path,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Option<String> {
    let config = stored_config(data_dir).ok().flatten()?;
    let ignored = ignored_flags(&config, file, overrides);
    if ignored.is_empty() {
        return None;
    }
    Some(format!(
        "pgshard: warning: {} holds an existing cluster, which starts as it was created; \
         ignored: {}. To create a different cluster, use a new --data-dir (or `destroy` \
         this one first)",
        data_dir.display(),
        ignored.join(", ")
    ))
}

/// The router address with `--router-port` applied.
fn with_router_port(listen: &str, port: u16) -> String {
    let host = listen
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    SocketAddr::new(
        host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        port,
    )
    .to_string()
}

/// The config a cluster runs with: the one stored in its data directory, or (for a new
/// cluster) the given file or the defaults with the flags applied, then stored.
///
/// On an existing cluster the flags that shape a cluster (`--shards`, `--replicas`,
/// `--backend`, `--config`) are not applied, with a warning naming them; the router's
/// port is the router's alone, so `--router-port` does change it.
pub fn effective_config(
    data_dir: &Path,
    file: Option<&Path>,
    overrides: Overrides,
) -> Result<Config> {
    let stored = data_dir.join(CONFIG_FILE);
    if stored.exists() {
        let mut config = Config::load(Some(&stored))?;
        if let Some(p) = overrides.router_port {
            let listen = with_router_port(&config.router.listen, p);
            if listen != config.router.listen {
                eprintln!(
                    "pgshard: the router of {} now listens on {listen} (was {})",
                    data_dir.display(),
                    config.router.listen
                );
                config.router.listen = listen;
                config.validate()?;
                let text = toml::to_string_pretty(&config).context("serialising the config")?;
                std::fs::write(&stored, text)
                    .with_context(|| format!("writing {}", stored.display()))?;
            }
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
        config.router.listen = with_router_port(&config.router.listen, p);
    }
    if let Some(b) = overrides.backend {
        config.cluster.backend = match b.as_str() {
            "local" => Backend::Local,
            "docker" => Backend::Docker,
            other => bail!("--backend must be `local` or `docker`, got `{other}`"),
        };
    }
    // Checked before anything is written: a refused config leaves no directory behind.
    config.validate()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let abs = std::fs::canonicalize(data_dir)?;
    config.cluster.data_dir = abs;
    config.validate()?;
    let text = toml::to_string_pretty(&config).context("serialising the config")?;
    std::fs::write(&stored, text).with_context(|| format!("writing {}", stored.display()))?;
    Ok(config)
}

/// Before starting: every address the cluster will listen on must be free, or held by
/// this cluster's own process (an instance or router left running by a shardd that
/// died is taken over, not fought). The error names the address and what holds it.
pub fn check_ports(data_dir: &Path, config: &Config) -> Result<()> {
    let listen: SocketAddr = config
        .router
        .listen
        .parse()
        .with_context(|| format!("router.listen `{}`", config.router.listen))?;
    if let Some(taken) = ownership::port_taken(listen) {
        let ours = ownership::listeners(listen.port())
            .into_iter()
            .any(|pid| pgshard_shardd::router_proc::is_our_router(pid, data_dir));
        if !ours {
            bail!(
                "cannot start the cluster: its router's address (router.listen) {taken}. \
                 Stop that process, or give this cluster another port with --router-port"
            );
        }
    }
    if config.cluster.backend != Backend::Local {
        return Ok(());
    }
    let Some(layout) = Layout::load(&data_dir.join(LAYOUT_FILE))? else {
        // A new cluster: with `cluster.base_port` its instances take the ports from
        // there up, one each; without it shardd picks free ports.
        let c = &config.cluster;
        if c.base_port != 0 {
            let count = 1 + c.catalog_replicas + c.shards * (1 + c.replicas);
            for i in 0..count {
                let Some(port) = u16::try_from(i)
                    .ok()
                    .and_then(|i| c.base_port.checked_add(i))
                else {
                    bail!(
                        "cluster.base_port {} leaves no room for {count} instances",
                        c.base_port
                    );
                };
                let Ok(ip) = c.host.parse::<std::net::IpAddr>() else {
                    break;
                };
                if let Some(taken) = ownership::port_taken(SocketAddr::new(ip, port)) {
                    bail!(
                        "cannot start the cluster: instance port {port} (cluster.base_port {} \
                         and up, one per instance) {taken}. Choose another cluster.base_port",
                        c.base_port
                    );
                }
            }
        }
        return Ok(());
    };
    for node in &layout.nodes {
        let Ok(ip) = node.host.parse::<std::net::IpAddr>() else {
            continue;
        };
        let addr = SocketAddr::new(ip, node.port);
        if let Some(taken) = ownership::port_taken(addr) {
            let data = node.dir.join("data");
            let ours = ownership::listeners(node.port)
                .into_iter()
                .any(|pid| ownership::is_postgres_on(pid, &data));
            if !ours {
                bail!(
                    "cannot start the cluster: the address of instance {} {taken}. \
                     Stop that process and run `up` again",
                    node.name
                );
            }
        }
    }
    Ok(())
}

/// After shardd reports ready: prove the router and the instances that answered are
/// this cluster's own processes (another cluster's router on the same port answers
/// `SELECT 1` just as well): the router's pid holds the listening socket and was
/// started with this directory's `router.toml`; each local instance's port is held by
/// a postgres on that instance's data directory.
pub async fn verify_ours(dir: &ClusterDir, state: &DaemonState) -> Result<()> {
    let status = get_status(state).await?;
    if let Some(router) = status.get("router").filter(|r| !r.is_null()) {
        let listen = router.get("listen").and_then(|v| v.as_str()).unwrap_or("");
        let addr: SocketAddr = listen
            .parse()
            .with_context(|| format!("router address `{listen}` in shardd's status"))?;
        let pid = router
            .get("pid")
            .and_then(|v| v.as_u64())
            .and_then(|p| u32::try_from(p).ok());
        let serving = router.get("state").and_then(|v| v.as_str()) == Some("serving");
        match pid {
            Some(pid)
                if serving
                    && ownership::listens_on(pid, addr.port())
                    && pgshard_shardd::router_proc::is_our_router(pid, &dir.path) => {}
            _ => {
                let holders: Vec<String> = ownership::listeners(addr.port())
                    .into_iter()
                    .map(ownership::describe)
                    .collect();
                bail!(
                    "the router on {addr} is not this cluster's (shardd reports pid {}, \
                     state {}; the port is held by {})",
                    pid.map_or("none".into(), |p| p.to_string()),
                    router.get("state").and_then(|v| v.as_str()).unwrap_or("?"),
                    if holders.is_empty() {
                        "nothing".into()
                    } else {
                        holders.join(", ")
                    }
                );
            }
        }
    }
    let config = stored_config(&dir.path)?;
    if config.as_ref().map(|c| c.cluster.backend) != Some(Backend::Local) {
        return Ok(());
    }
    let Some(layout) = Layout::load(&dir.path.join(LAYOUT_FILE))? else {
        bail!("shardd reports ready but wrote no {LAYOUT_FILE}");
    };
    for node in &layout.nodes {
        let data = node.dir.join("data");
        let holders = ownership::listeners(node.port);
        if !holders
            .iter()
            .any(|pid| ownership::is_postgres_on(*pid, &data))
        {
            let who: Vec<String> = holders.into_iter().map(ownership::describe).collect();
            bail!(
                "instance {} on {}:{} is not this cluster's (the port is held by {})",
                node.name,
                node.host,
                node.port,
                if who.is_empty() {
                    "nothing".into()
                } else {
                    who.join(", ")
                }
            );
        }
    }
    Ok(())
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

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Stop the cluster: ask its shardd to shut everything down; then stop what a shardd
/// that died left running: its router, and the postmasters of its instances (fast
/// shutdown). Only processes proved to be this cluster's are signalled.
pub async fn down(dir: &ClusterDir) -> Result<()> {
    let shardd = dir.shardd();
    if let Some(pid) = shardd {
        let via_api = match read_state(&dir.path) {
            Some(state) if u32::try_from(state.pid).ok() == Some(pid) => {
                let url = format!("http://{}/v1/shutdown", state.api);
                http().post(&url).send().await.is_ok()
            }
            _ => false,
        };
        if !via_api {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if !wait_pid_exit(pid as i32, Duration::from_secs(120)).await {
            bail!("shardd (pid {pid}) did not stop within 120s");
        }
    }
    let _ = std::fs::remove_file(dir.path.join(STATE_FILE));
    if let Some(pid) = pgshard_shardd::router_proc::recorded_router(&dir.path) {
        eprintln!("pgshard: stopping the router left running (pid {pid})");
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        if !wait_pid_exit(pid as i32, Duration::from_secs(30)).await {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    // shardd stops its containers itself; without it, they are stopped by name.
    if let (None, Some(config)) = (shardd, stored_config(&dir.path)?) {
        if config.cluster.backend == Backend::Docker {
            pgshard_shardd::tools::stop_docker_instances(&config)
                .await
                .context("stopping the cluster's containers")?;
        }
    }
    let (ours, foreign) = dir.postmasters();
    for Postmaster { node, pid, .. } in foreign {
        eprintln!(
            "pgshard: warning: the postmaster.pid of instance {node} names {}, which is \
             not a PostgreSQL on that instance's data directory; left alone",
            ownership::describe(pid)
        );
    }
    for Postmaster { node, data, pid } in ours {
        eprintln!(
            "pgshard: stopping instance {node} (PostgreSQL pid {pid} on {})",
            data.display()
        );
        // SIGINT is PostgreSQL's fast shutdown.
        signal(pid, nix::sys::signal::Signal::SIGINT);
        if !wait_pid_exit(pid as i32, Duration::from_secs(60)).await {
            bail!("PostgreSQL pid {pid} on {} did not stop", data.display());
        }
    }
    Ok(())
}

/// Remove all of the cluster's data. The cluster must be stopped.
pub async fn destroy(dir: &ClusterDir) -> Result<()> {
    if dir.shardd().is_some() {
        bail!(
            "the cluster in {} is still running; stop it first",
            dir.given.display()
        );
    }
    std::fs::remove_dir_all(&dir.path)
        .with_context(|| format!("removing {}", dir.path.display()))?;
    Ok(())
}

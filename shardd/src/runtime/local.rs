//! The local-process runtime: PostgreSQL 15 instances run from the machine's own
//! binaries, one directory per instance (`data/` = PGDATA, `logs/postgresql.log`).
//!
//! PostgreSQL refuses to run as root, and CI runs us as root, so when we are root every
//! binary is spawned as `cluster.pg_user` (default `postgres`) and the instance
//! directories are chowned to it. As any other user, instances run as that user.
//!
//! `initdb -E UTF8 --locale=C.UTF-8 -U postgres --auth=trust`: the encoding and the
//! locale are fixed rather than taken from the environment, so sorting and formatting
//! are the same on every machine and identical to the plain PostgreSQL the differential
//! tests compare against ([`crate`]'s harness uses this same code); the superuser is
//! always `postgres`; `trust` because pg_hba.conf only admits loopback and the router
//! authenticates clients itself.
//!
//! Two lifecycles (see [`ProcessLifecycle`]): *Detached* for production, where the
//! postmaster is started by `pg_ctl` and outlives shardd (a shardd restart re-attaches
//! to running instances), and *Owned* for tests, where the postmaster is our child and
//! dies with us.

use super::proctree::{self, Proc};
use super::supervisor::{OwnedChild, Supervisor};
use super::{pgconf, NodeRuntime, NodeSpec, Readiness, RuntimeError, SUPERUSER};
use async_trait::async_trait;
use nix::sys::signal::{self, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use pgshard_catalog::config::ClusterConfig;
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The PostgreSQL major version pgshard is built and tested against.
pub const PG_MAJOR: u32 = 15;
/// Where Debian's `postgresql-15` package installs the server binaries.
const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How long `kill` waits for an instance's processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who owns the postmaster process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessLifecycle {
    /// `pg_ctl start`: the postmaster is detached and outlives shardd; stopped with
    /// `pg_ctl stop -m fast`. For production.
    Detached,
    /// `postgres -D dir` spawned as our child from one dedicated thread with
    /// `PR_SET_PDEATHSIG = SIGQUIT`: the postmaster shuts down immediately if this
    /// process dies for any reason. For tests and foreground runs.
    Owned,
}

/// How to run local instances.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Directory of `postgres`, `initdb`, `pg_ctl`, `pg_basebackup`; `None` searches
    /// the usual places.
    pub pg_bin_dir: Option<PathBuf>,
    /// The OS user PostgreSQL runs as when we are root.
    pub pg_user: String,
    pub lifecycle: ProcessLifecycle,
    /// Skip fsync in initdb and pg_basebackup (`--no-sync`): for throwaway test
    /// clusters only. The servers themselves always run with `fsync = on`.
    pub fast_init: bool,
    /// How long `pg_ctl` may take to start, stop or promote an instance.
    pub ctl_timeout: Duration,
}

impl LocalOptions {
    pub fn from_config(cluster: &ClusterConfig, lifecycle: ProcessLifecycle) -> Self {
        LocalOptions {
            pg_bin_dir: cluster.pg_bin_dir.clone(),
            pg_user: cluster.pg_user.clone(),
            lifecycle,
            fast_init: false,
            ctl_timeout: Duration::from_secs(120),
        }
    }
}

/// The OS identity PostgreSQL runs as, when it differs from ours.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// Runs instances as local processes.
#[derive(Debug)]
pub struct LocalProcess {
    bin_dir: PathBuf,
    version: String,
    run_as: Option<RunAs>,
    opts: LocalOptions,
    supervisor: Option<Supervisor>,
    /// Postmasters we spawned (Owned lifecycle), by absolute data directory.
    owned: Mutex<HashMap<PathBuf, OwnedChild>>,
}

/// Find the PostgreSQL 15 server binaries: the configured directory, Debian's location,
/// then `pg_config --bindir`.
pub fn find_pg_bin_dir(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let mut searched = Vec::new();
    if let Some(dir) = configured.filter(|d| !d.as_os_str().is_empty()) {
        if has_server(dir) {
            return Ok(dir.to_path_buf());
        }
        searched.push(dir.display().to_string());
        // A configured directory that does not work is an error, not a hint.
        return Err(RuntimeError::BinariesNotFound {
            searched: searched.join(", "),
        });
    }
    let debian = Path::new(DEBIAN_BIN_DIR);
    if has_server(debian) {
        return Ok(debian.to_path_buf());
    }
    searched.push(DEBIAN_BIN_DIR.to_string());
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (pg_config --bindir)", dir.display()));
        }
    } else {
        searched.push("pg_config --bindir (not installed)".into());
    }
    Err(RuntimeError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

impl LocalProcess {
    /// Locate the binaries, check their version and resolve the OS user.
    pub fn new(opts: LocalOptions) -> Result<Self, RuntimeError> {
        let bin_dir = find_pg_bin_dir(opts.pg_bin_dir.as_deref())?;
        let out = std::process::Command::new(bin_dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| RuntimeError::io("could not run postgres --version", e))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(PG_MAJOR) {
            tracing::warn!(%version, bin_dir = %bin_dir.display(), "pgshard is tested with PostgreSQL 15 only");
        }
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name(&opts.pg_user)
                .map_err(|e| {
                    RuntimeError::io(format!("could not look up user {}", opts.pg_user), e.into())
                })?
                .ok_or_else(|| RuntimeError::UserNotFound {
                    user: opts.pg_user.clone(),
                })?;
            if user.uid.is_root() {
                return Err(RuntimeError::UserNotFound {
                    user: format!("{} (must not be root)", opts.pg_user),
                });
            }
            Some(RunAs {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };
        let supervisor = match opts.lifecycle {
            ProcessLifecycle::Owned => Some(Supervisor::new()?),
            ProcessLifecycle::Detached => None,
        };
        tracing::debug!(%version, bin_dir = %bin_dir.display(), run_as = ?run_as.as_ref().map(|r| &r.name), lifecycle = ?opts.lifecycle, "local runtime ready");
        Ok(LocalProcess {
            bin_dir,
            version,
            run_as,
            opts,
            supervisor,
            owned: Mutex::new(HashMap::new()),
        })
    }

    /// `postgres --version` output.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn lifecycle(&self) -> ProcessLifecycle {
        self.opts.lifecycle
    }

    /// The OS user PostgreSQL runs as (ours unless we are root).
    pub fn os_user(&self) -> Option<&str> {
        self.run_as.as_ref().map(|r| r.name.as_str())
    }

    /// Make `path` (and its contents we create) belong to the PostgreSQL user.
    pub fn chown(&self, path: &Path) -> Result<(), RuntimeError> {
        if let Some(r) = &self.run_as {
            nix::unistd::chown(path, Some(r.uid), Some(r.gid)).map_err(|e| {
                RuntimeError::io(format!("could not chown {}", path.display()), e.into())
            })?;
        }
        Ok(())
    }

    /// Check that the PostgreSQL user can reach `dir` through every ancestor.
    pub fn check_traversable(&self, dir: &Path) -> Result<(), RuntimeError> {
        let Some(r) = &self.run_as else {
            return Ok(());
        };
        let mut cur = Some(dir);
        while let Some(p) = cur {
            if let Ok(meta) = std::fs::metadata(p) {
                let mode = meta.permissions().mode();
                let ok = mode & 0o001 != 0
                    || (meta.uid() == r.uid.as_raw() && mode & 0o100 != 0)
                    || (meta.gid() == r.gid.as_raw() && mode & 0o010 != 0);
                if !ok {
                    return Err(RuntimeError::NotTraversable {
                        path: p.to_path_buf(),
                        user: r.name.clone(),
                    });
                }
            }
            cur = p.parent();
        }
        Ok(())
    }

    fn abs_dir(spec: &NodeSpec) -> Result<PathBuf, RuntimeError> {
        std::path::absolute(&spec.dir).map_err(|e| {
            RuntimeError::io(
                format!("could not resolve directory {}", spec.dir.display()),
                e,
            )
        })
    }

    /// Create the instance directory, an empty PGDATA (0700) and `logs/`, owned by the
    /// PostgreSQL user.
    fn prepare_dirs(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let dir = Self::abs_dir(spec)?;
        let mk = |p: &Path, mode: u32| -> Result<(), RuntimeError> {
            std::fs::create_dir_all(p)
                .map_err(|e| RuntimeError::io(format!("could not create {}", p.display()), e))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| RuntimeError::io(format!("could not chmod {}", p.display()), e))?;
            self.chown(p)
        };
        mk(&dir, 0o755)?;
        self.check_traversable(&dir)?;
        mk(&dir.join("data"), 0o700)?;
        mk(&dir.join("logs"), 0o755)?;
        self.ensure_log_file(spec)?;
        Ok(())
    }

    fn ensure_log_file(&self, spec: &NodeSpec) -> Result<std::fs::File, RuntimeError> {
        let path = self.logs_path(spec);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| RuntimeError::io(format!("could not open {}", path.display()), e))?;
        self.chown(&path)?;
        Ok(file)
    }

    /// A command for one of the PostgreSQL binaries, run as the PostgreSQL user, with a
    /// clean libpq environment (a stray PGPORT or PGDATA must not redirect it).
    fn command(&self, program: &str, cwd: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.bin_dir.join(program));
        self.prepare_std(cmd.as_std_mut(), cwd);
        cmd.kill_on_drop(true);
        if self.opts.lifecycle == ProcessLifecycle::Owned {
            // kill_on_drop does not run when the process dies; this does. (A postmaster
            // that pg_ctl forks would not inherit it, but Owned never uses pg_ctl start.)
            super::supervisor::die_with_parent(cmd.as_std_mut(), Signal::SIGKILL);
        }
        cmd
    }

    fn prepare_std(&self, cmd: &mut std::process::Command, cwd: &Path) {
        use std::os::unix::process::CommandExt;
        for var in [
            "PGDATA",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGPASSFILE",
            "PGSSLMODE",
            "PGTZ",
            "PGDATESTYLE",
        ] {
            cmd.env_remove(var);
        }
        cmd.current_dir(cwd).stdin(Stdio::null());
        if let Some(r) = &self.run_as {
            cmd.uid(r.uid.as_raw()).gid(r.gid.as_raw());
            if let Some(home) = User::from_uid(r.uid).ok().flatten().map(|u| u.dir) {
                cmd.env("HOME", home);
            }
        }
    }

    /// Run a command to completion; an error carries its output.
    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        what: &str,
    ) -> Result<String, RuntimeError> {
        let started = Instant::now();
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| RuntimeError::io(format!("could not run {what}"), e))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let output = [stderr.trim(), stdout.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            return Err(RuntimeError::Command {
                command: what.to_string(),
                status: out.status.to_string(),
                output,
            });
        }
        tracing::debug!(command = what, elapsed = ?started.elapsed(), "command done");
        Ok(stdout)
    }

    /// Write the configuration files from `spec` and hand them to the PostgreSQL user.
    fn write_config(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let data = Self::abs_dir(spec)?.join("data");
        if let Some(dir) = &spec.socket_dir {
            // Shared by the cluster's instances; the PostgreSQL user creates its socket
            // and lock file there.
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("could not create {}", dir.display()), e))?;
            self.chown(dir)?;
        }
        pgconf::write(spec, &data)?;
        for name in ["postgresql.conf", "pg_hba.conf", "standby.signal"] {
            let p = data.join(name);
            if p.exists() {
                self.chown(&p)?;
            }
        }
        Ok(())
    }

    fn data_key(spec: &NodeSpec) -> Result<PathBuf, RuntimeError> {
        Ok(Self::abs_dir(spec)?.join("data"))
    }

    fn owned_child(&self, spec: &NodeSpec) -> Option<OwnedChild> {
        let key = Self::data_key(spec).ok()?;
        let map = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).cloned()
    }

    /// The postmaster pid from `postmaster.pid`, if that process is alive, not a
    /// zombie, and is a postgres (guards against a stale file and pid reuse).
    fn pid_from_file(spec: &NodeSpec) -> Option<u32> {
        let data = Self::data_key(spec).ok()?;
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Wait until `pid` is gone (or reaped, when we own it).
    async fn wait_gone(&self, spec: &NodeSpec, pid: u32, timeout: Duration) -> bool {
        if let Some(child) = self.owned_child(spec).filter(|c| c.pid == pid) {
            return child.wait_exit(timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        while process_alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        true
    }

    /// Kill what is left of an instance whose postmaster died without cleaning up
    /// (a `kill -9` from outside, an OOM kill): its backends run on, attached to the old
    /// shared memory, until they notice, and until then PostgreSQL refuses to start on
    /// this data directory. A stale `postmaster.pid` is the sign of such a death (a
    /// clean shutdown removes it); only then are the directory's processes touched.
    async fn reap_orphans(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let data = Self::data_key(spec)?;
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        let killed = proctree::kill_instance(None, &data, KILL_TIMEOUT).await;
        // The dead postmaster itself may still be a zombie that blocks the lock file.
        let zombie = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            .and_then(Proc::of)
            .filter(|p| !p.alive());
        if let Some(pm) = zombie {
            if !self.wait_reaped(spec, pm, KILL_TIMEOUT).await {
                tracing::warn!(node = %spec.name, pid = pm.pid, "the dead postmaster has not been reaped");
            }
        }
        if !killed.left.is_empty() {
            return Err(RuntimeError::Spec {
                node: spec.name.clone(),
                message: format!(
                    "processes of a previous server still run on {}: {:?}",
                    data.display(),
                    killed.left
                ),
            });
        }
        if killed.signalled > 0 {
            tracing::warn!(node = %spec.name, processes = killed.signalled, "killed the orphaned processes of a dead postmaster");
        }
        Ok(())
    }

    /// Wait until the dead postmaster `pm` has been reaped: by the supervisor when we
    /// own it, else by init (or by us, if it was reparented to us); `false` on timeout.
    async fn wait_reaped(&self, spec: &NodeSpec, pm: Proc, timeout: Duration) -> bool {
        if let Some(child) = self.owned_child(spec).filter(|c| c.pid == pm.pid) {
            return child.wait_exit(timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            pm.reap_if_ours();
            if !pm.exists() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    async fn start_owned(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let supervisor = self
            .supervisor
            .as_ref()
            .ok_or(RuntimeError::SupervisorGone)?;
        let dir = Self::abs_dir(spec)?;
        let log = self.ensure_log_file(spec)?;
        let log2 = log
            .try_clone()
            .map_err(|e| RuntimeError::io("could not duplicate the log file handle", e))?;
        let mut cmd = std::process::Command::new(self.bin_dir.join("postgres"));
        self.prepare_std(&mut cmd, &dir);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group, so a terminal's Ctrl-C reaches us (and then it,
            // through the death signal) rather than racing us. (Its children are in
            // sessions of their own; `kill` finds them through `proctree`.)
            cmd.process_group(0);
        }
        cmd.arg("-D")
            .arg(dir.join("data"))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = supervisor.spawn(cmd).await?;
        tracing::info!(node = %spec.name, pid = child.pid, port = spec.port, "postgres started (owned)");
        let key = Self::data_key(spec)?;
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, child);
        Ok(())
    }

    async fn start_detached(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let dir = Self::abs_dir(spec)?;
        self.ensure_log_file(spec)?;
        let mut cmd = self.command("pg_ctl", &dir);
        cmd.arg("start")
            .arg("-w")
            .arg("-s")
            .arg("-t")
            .arg(self.opts.ctl_timeout.as_secs().to_string())
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(self.logs_path(spec));
        self.run(cmd, &format!("pg_ctl start ({})", spec.name))
            .await
            .map_err(|e| match e {
                RuntimeError::Command { .. } => RuntimeError::Exited {
                    node: spec.name.clone(),
                    status: e.to_string(),
                    log_tail: super::log_tail(&self.logs_path(spec), 20),
                },
                other => other,
            })?;
        tracing::info!(node = %spec.name, pid = ?Self::pid_from_file(spec), port = spec.port, "postgres started (detached)");
        Ok(())
    }
}

/// True if `pid` is a live (not zombie) postgres process.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may contain spaces, so split after the last ')'.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let state = rest.trim_start().chars().next().unwrap_or('?');
    if state == 'Z' || state == 'X' {
        return false;
    }
    // comm is "postgres" (or "postmaster"); process titles do not change comm.
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
    comm.starts_with("postgres") || comm.starts_with("postmaster")
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().map(Pid::from_raw)
}

#[async_trait]
impl NodeRuntime for LocalProcess {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn exists(&self, spec: &NodeSpec) -> Result<bool, RuntimeError> {
        Ok(Self::data_key(spec)?.join("PG_VERSION").is_file())
    }

    async fn init_primary(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        if self.exists(spec).await? {
            return Err(RuntimeError::Spec {
                node: spec.name.clone(),
                message: format!("{} is already initialised", spec.data_dir().display()),
            });
        }
        self.prepare_dirs(spec)?;
        let dir = Self::abs_dir(spec)?;
        let mut cmd = self.command("initdb", &dir);
        cmd.arg("-D").arg(dir.join("data")).args([
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-U",
            SUPERUSER,
            "--auth=trust",
        ]);
        if self.opts.fast_init {
            cmd.arg("--no-sync");
        }
        self.run(cmd, &format!("initdb ({})", spec.name)).await?;
        self.write_config(spec)?;
        tracing::info!(node = %spec.name, dir = %dir.display(), "initialised primary");
        Ok(())
    }

    async fn create_replica(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let up = spec.upstream.as_ref().ok_or_else(|| RuntimeError::Spec {
            node: spec.name.clone(),
            message: "a replica needs an upstream primary".into(),
        })?;
        if self.exists(spec).await? {
            return Err(RuntimeError::Spec {
                node: spec.name.clone(),
                message: format!("{} is already initialised", spec.data_dir().display()),
            });
        }
        let slot = spec.slot_name();
        super::ready::ensure_replication_slot(spec).await?;

        self.prepare_dirs(spec)?;
        let dir = Self::abs_dir(spec)?;
        let data = dir.join("data");
        let mut cmd = self.command("pg_basebackup", &dir);
        cmd.arg("-D")
            .arg(&data)
            .args(["-h", &up.host, "-p", &up.port.to_string(), "-U", SUPERUSER])
            .args(["-X", "stream", "-S", &slot, "--checkpoint=fast", "-w"]);
        if self.opts.fast_init {
            cmd.arg("--no-sync");
        }
        if let Err(e) = self
            .run(
                cmd,
                &format!("pg_basebackup ({} from {})", spec.name, up.name),
            )
            .await
        {
            // Leave an empty PGDATA behind so the next attempt can start over.
            let _ = std::fs::remove_dir_all(&data);
            return Err(e);
        }
        self.write_config(spec)?;
        tracing::info!(node = %spec.name, primary = %up.name, %slot, "created replica");
        Ok(())
    }

    async fn configure(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        self.write_config(spec)
    }

    async fn start(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        if self.is_running(spec).await? {
            tracing::debug!(node = %spec.name, "already running");
            return Ok(());
        }
        if !self.exists(spec).await? {
            return Err(RuntimeError::Spec {
                node: spec.name.clone(),
                message: format!("no data in {}", spec.data_dir().display()),
            });
        }
        self.reap_orphans(spec).await?;
        self.write_config(spec)?;
        match self.opts.lifecycle {
            ProcessLifecycle::Owned => self.start_owned(spec).await,
            ProcessLifecycle::Detached => self.start_detached(spec).await,
        }
    }

    async fn stop(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let Some(pid) = self.pid(spec).await? else {
            return Ok(());
        };
        let timeout = self.opts.ctl_timeout;
        let started = Instant::now();
        if self.owned_child(spec).is_some_and(|c| c.pid == pid) {
            // Our child: SIGINT is PostgreSQL's fast shutdown.
            if let Some(p) = to_pid(pid) {
                let _ = signal::kill(p, Signal::SIGINT);
            }
            if !self.wait_gone(spec, pid, timeout).await {
                return Err(RuntimeError::StopTimeout {
                    node: spec.name.clone(),
                    waited: started.elapsed(),
                });
            }
        } else {
            let dir = Self::abs_dir(spec)?;
            let mut cmd = self.command("pg_ctl", &dir);
            cmd.args(["stop", "-m", "fast", "-w", "-s", "-t"])
                .arg(timeout.as_secs().to_string())
                .arg("-D")
                .arg(dir.join("data"));
            if let Err(e) = self.run(cmd, &format!("pg_ctl stop ({})", spec.name)).await {
                // It may have exited on its own meanwhile.
                if process_alive(pid) {
                    return Err(e);
                }
            }
            self.wait_gone(spec, pid, timeout).await;
        }
        tracing::info!(node = %spec.name, pid, elapsed = ?started.elapsed(), "postgres stopped");
        Ok(())
    }

    async fn kill(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let data = Self::data_key(spec)?;
        let postmaster = self.pid(spec).await?.and_then(Proc::of);
        let started = Instant::now();
        let killed = proctree::kill_instance(postmaster, &data, KILL_TIMEOUT).await;
        if !killed.left.is_empty() {
            tracing::error!(node = %spec.name, pids = ?killed.left, "processes survived SIGKILL");
            return Err(RuntimeError::StopTimeout {
                node: spec.name.clone(),
                waited: started.elapsed(),
            });
        }
        // Wait until the postmaster is reaped, not just dead: see `Proc::exists`.
        if let Some(pm) = postmaster {
            if !self.wait_reaped(spec, pm, KILL_TIMEOUT).await {
                return Err(RuntimeError::StopTimeout {
                    node: spec.name.clone(),
                    waited: started.elapsed(),
                });
            }
        }
        if killed.signalled > 0 {
            tracing::warn!(node = %spec.name, postmaster = ?postmaster.map(|p| p.pid), processes = killed.signalled, elapsed = ?started.elapsed(), "postgres killed");
        }
        Ok(())
    }

    async fn promote(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        let dir = Self::abs_dir(spec)?;
        let mut cmd = self.command("pg_ctl", &dir);
        cmd.args(["promote", "-w", "-s", "-t"])
            .arg(self.opts.ctl_timeout.as_secs().to_string())
            .arg("-D")
            .arg(dir.join("data"));
        self.run(cmd, &format!("pg_ctl promote ({})", spec.name))
            .await?;
        self.wait_ready(spec, Readiness::Writable, self.opts.ctl_timeout)
            .await?;
        tracing::info!(node = %spec.name, "promoted");
        Ok(())
    }

    async fn is_running(&self, spec: &NodeSpec) -> Result<bool, RuntimeError> {
        Ok(self.pid(spec).await?.is_some())
    }

    async fn pid(&self, spec: &NodeSpec) -> Result<Option<u32>, RuntimeError> {
        if let Some(child) = self.owned_child(spec) {
            // Trust the supervisor's reaping, not /proc: between fork and exec the
            // child's command name is still ours.
            if child.is_running() {
                return Ok(Some(child.pid));
            }
        }
        Ok(Self::pid_from_file(spec))
    }

    fn logs_path(&self, spec: &NodeSpec) -> PathBuf {
        spec.log_dir().join("postgresql.log")
    }

    async fn remove(&self, spec: &NodeSpec) -> Result<(), RuntimeError> {
        if self.is_running(spec).await? {
            return Err(RuntimeError::Spec {
                node: spec.name.clone(),
                message: "is running; stop it before removing its data".into(),
            });
        }
        let dir = Self::abs_dir(spec)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("could not remove {}", dir.display()),
                    e,
                ))
            }
        }
        if let Ok(key) = Self::data_key(spec) {
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        tracing::info!(node = %spec.name, dir = %dir.display(), "removed data");
        Ok(())
    }
}

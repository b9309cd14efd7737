//! The real `pgshard-router` binary as a child process of the test, on a free port,
//! following a test cluster's catalog: for crash tests that must SIGKILL a router (an
//! in-process [`crate::TestRouter`] cannot die like that).
//!
//! The child's stdout and stderr go to a log file the test can wait on (e.g. for the
//! fault hook's `fault injection: coordinator stops`). It is SIGKILLed when the value
//! is dropped, and also when the thread that started it exits (parent-death signal), so
//! no router outlives a test even if the test process is killed.

use crate::cluster::TestCluster;
use anyhow::{bail, Context};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use pgshard_catalog::store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Start attempts before giving up on port collisions.
const PORT_ATTEMPTS: usize = 3;
/// How long a starting router may take to answer `SELECT 1`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `pgshard-router` child process.
pub struct RouterProcess {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl std::fmt::Debug for RouterProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterProcess")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish()
    }
}

/// `target/<profile>/<name>`, next to the test binary's `deps/` directory.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
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

impl RouterProcess {
    /// Start `pgshard-router` for `cluster` (default router settings) with extra
    /// environment variables (e.g. `PGSHARD_FAULT`), and wait until it answers queries.
    pub async fn start(cluster: &TestCluster, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let catalog = cluster.catalog_spec()?.connstr(store::CATALOG_DB);
        let mut last = None;
        for attempt in 1..=PORT_ATTEMPTS {
            let mut router = Self::spawn(&catalog, env)?;
            match router.wait_answering().await {
                Ok(()) => return Ok(router),
                Err(e) if router.log().contains("Address already in use") => {
                    tracing::warn!(attempt, error = %e, "router port taken; retrying");
                    router.kill()?;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("router did not start")))
    }

    fn spawn(catalog: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = crate::dirs::temp_dir("router")?;
        let log = dir.path().join("router.log");
        let file = std::fs::File::create(&log)?;
        let port = crate::ports::free_port()?;
        let mut cmd = Command::new(binary("pgshard-router")?);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--catalog")
            .arg(catalog)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove(pgshard_router::twopc::FAULT_ENV)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_thread(&mut cmd);
        let child = cmd.spawn().context("starting pgshard-router")?;
        Ok(RouterProcess {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    async fn wait_answering(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("pgshard-router exited ({status}):\n{}", self.log());
            }
            let attempt = async {
                let c = self.connect().await?;
                c.simple_query("SELECT 1").await?;
                anyhow::Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    bail!(
                        "router not answering after {START_TIMEOUT:?}: {e}\n{}",
                        self.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string for database `dbname` through the router.
    pub fn connstr(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} connect_timeout=5",
            self.port
        )
    }

    /// A client for database `postgres` through the router.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_db("postgres").await
    }

    /// A client for the admin console (database `pgshard`).
    pub async fn connect_admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_db("pgshard").await
    }

    async fn connect_db(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.connstr(dbname), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Everything the router has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until a log line contains `needle`, and return that line. Fails at once if
    /// the router exits.
    pub async fn wait_for_log(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "pgshard-router exited ({status}) before logging `{needle}`:\n{}",
                    self.log()
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "pgshard-router did not log `{needle}` within {timeout:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Send `sig` to the router.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        signal::kill(Pid::from_raw(pid), sig).context("signalling the router")?;
        Ok(())
    }

    /// Poll until the router has exited, for at most `timeout`; its exit status, or
    /// `None` if it is still running.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL the router and reap it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// SIGKILL the child when the thread that spawns it exits (test threads end with their
/// test), so no router survives a test process killed before its destructors run.
#[allow(unsafe_code)]
fn die_with_thread(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child between fork and exec. It only
    // makes the prctl(2) and getppid(2) system calls, which are async-signal-safe, and
    // allocates nothing: the error is built from a raw errno.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

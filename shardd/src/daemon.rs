//! The shardd process: bootstrap or restart the cluster, then probe it and serve the
//! HTTP API until told to stop (SIGTERM/SIGINT through the cancellation token, or
//! `POST /v1/shutdown`), and finally stop every instance cleanly.
//!
//! Once the cluster is ready, `data_dir/shardd.json` ([`SharddState`]) tells other
//! processes (the CLI) where the API listens and which pid to signal; it is removed on
//! a clean exit.

use crate::api::{self, ApiState};
use crate::cluster::Cluster;
use crate::probe::{ClusterStatus, NodeStatus, Prober};
use crate::reconcile::{run_control_loop, PlanOptions, ReconcileOptions, Reconciler};
use crate::recovery::{run_recovery_with, Recovery, RecoveryOptions, TransactionsStatus};
use crate::runtime::docker::{DockerOptions, DockerRuntime};
use crate::runtime::{LocalOptions, LocalProcess, NodeRuntime, ProcessLifecycle};
use crate::STATE_FILE;
use anyhow::Context;
use pgshard_catalog::config::Backend;
use pgshard_catalog::{Config, NodeState};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The lock file that keeps a second shardd off a data dir.
pub const LOCK_FILE: &str = "shardd.lock";

/// How shardd runs its instances.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Local backend: Detached (production: instances survive a shardd crash) or Owned
    /// (tests and foreground runs: instances die with shardd). Containers are always
    /// detached.
    pub lifecycle: ProcessLifecycle,
    /// Skip fsync in initdb/pg_basebackup: throwaway clusters only.
    pub fast_init: bool,
    /// The `pgshard-router` binary to run and supervise once the cluster is ready;
    /// `None` runs no router (tests run their router in-process).
    pub router_binary: Option<PathBuf>,
    /// Tests: the step of a change of primary at which the reconciler stops, as if
    /// shardd crashed there (see [`ReconcileOptions::fault`]).
    pub fault: Option<String>,
    /// Run the instances with this runtime instead of one made from the config (tests:
    /// a runtime that outlives one shardd, as the machine's processes outlive a crashed
    /// shardd).
    pub runtime: Option<Arc<dyn NodeRuntime>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            lifecycle: ProcessLifecycle::Detached,
            fast_init: false,
            router_binary: None,
            fault: None,
            runtime: None,
        }
    }
}

/// `data_dir/shardd.json`: where a ready shardd can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharddState {
    pub pid: u32,
    /// The bound address of the HTTP API.
    pub api: SocketAddr,
    pub cluster: String,
    pub data_dir: PathBuf,
    /// Where the router listens, when shardd runs one.
    #[serde(default)]
    pub router: Option<SocketAddr>,
    /// The router's process id when this file was written.
    #[serde(default)]
    pub router_pid: Option<u32>,
}

impl SharddState {
    /// Read `shardd.json` from a data dir; `None` if shardd is not (or not yet) ready.
    pub fn read(data_dir: &Path) -> std::io::Result<Option<SharddState>> {
        match std::fs::read_to_string(data_dir.join(STATE_FILE)) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(STATE_FILE);
        let tmp = data_dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Run shardd for `config` until `shutdown` is cancelled (production defaults).
/// The router binary installed next to shardd is started and supervised.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let opts = RunOptions {
        router_binary: crate::router_proc::sibling_binary(),
        ..RunOptions::default()
    };
    if opts.router_binary.is_none() {
        tracing::warn!("no pgshard-router binary next to shardd; running without a router");
    }
    run_with(config, opts, shutdown).await
}

/// [`run`] with explicit runtime options.
pub async fn run_with(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let runtime: Arc<dyn NodeRuntime> = match config.cluster.backend {
        _ if opts.runtime.is_some() => opts.runtime.clone().context("no runtime")?,
        Backend::Local => {
            let mut local = LocalOptions::from_config(&config.cluster, opts.lifecycle);
            local.fast_init = opts.fast_init;
            Arc::new(LocalProcess::new(local)?)
        }
        Backend::Docker => {
            let mut docker = DockerOptions::from_config(&config);
            docker.fast_init = opts.fast_init;
            Arc::new(DockerRuntime::with_options(docker).await?)
        }
    };
    let data_dir = std::path::absolute(&config.cluster.data_dir)
        .with_context(|| format!("resolving {}", config.cluster.data_dir.display()))?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // One shardd per data dir: two would fight over the same instances.
    let _lock = lock_data_dir(&data_dir)?;
    // A stale file from a crashed run must not point the CLI at a dead API.
    let _ = std::fs::remove_file(data_dir.join(STATE_FILE));

    // Stopping: our own token, also cancelled by the caller's.
    let stop = shutdown.child_token();
    let status = Arc::new(RwLock::new(ClusterStatus {
        cluster: config.cluster.name.clone(),
        ..Default::default()
    }));
    let transactions = Arc::new(RwLock::new(TransactionsStatus::default()));
    let listener = tokio::net::TcpListener::bind(&config.shardd.listen)
        .await
        .with_context(|| format!("binding the API on {}", config.shardd.listen))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(addr = %api_addr, "API listening");
    let router_status = crate::router_proc::RouterHandle::default();
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(16);
    let server = {
        let app = api::router(ApiState {
            status: status.clone(),
            transactions: transactions.clone(),
            shutdown: stop.clone(),
            router: router_status.clone(),
            commands: commands_tx,
        });
        let done = stop.clone();
        Owned::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(done.cancelled_owned())
                .await
        })
    };

    let started = Instant::now();
    let up = tokio::select! {
        r = Cluster::up(config.clone(), runtime.clone()) => Some(r),
        _ = stop.cancelled() => None,
    };
    let cluster = match up {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(error = %e, "cluster start failed; stopping what was started");
            stop_partial(&config, runtime).await;
            stop.cancel();
            let _ = server.await;
            return Err(e).context("starting the cluster");
        }
        None => {
            tracing::info!("shutdown during start; stopping what was started");
            stop_partial(&config, runtime).await;
            let _ = server.await;
            return Ok(());
        }
    };
    tracing::info!(cluster = %config.cluster.name, elapsed = ?started.elapsed(), "cluster ready");

    // One probe round before reporting ready, so the first `status` already shows
    // replication state and lag rather than a placeholder.
    let cluster = Arc::new(cluster);
    let mut prober = Prober::new(cluster.clone());
    let first = prober.probe_once().await;
    {
        let mut s = status.write().unwrap_or_else(|p| p.into_inner());
        s.nodes = prober.status().to_vec();
        if s.nodes.is_empty() {
            s.nodes = cluster
                .layout()
                .nodes
                .iter()
                .map(|n| NodeStatus::initial(n, NodeState::Healthy))
                .collect();
        }
        if let Some(v) = first {
            s.version = Some(v.0);
        }
        s.ready = true;
    }
    let mut router = None;
    if let Some(binary) = &opts.router_binary {
        // Every catalog node, so the router finds the catalog after its failover.
        let conninfo = cluster
            .layout()
            .catalog_conninfo()
            .context("the layout has no catalog node")?;
        match crate::router_proc::supervise(
            binary.clone(),
            &config,
            &data_dir,
            conninfo,
            router_status,
            stop.clone(),
        )
        .await
        {
            Ok(r) => router = Some(r),
            Err(e) => {
                tracing::error!(error = %e, "router did not start; stopping the cluster");
                stop.cancel();
                let _ = cluster.stop().await;
                let _ = server.await;
                return Err(e).context("starting the router");
            }
        }
    }
    let state = SharddState {
        pid: std::process::id(),
        api: api_addr,
        cluster: cluster.layout().cluster.clone(),
        data_dir: data_dir.clone(),
        router: router
            .as_ref()
            .and_then(|_| config.router.listen.parse().ok()),
        router_pid: router.as_ref().map(|(h, _)| h.pid()),
    };
    state.write(&data_dir)?;

    let recovery_now = Arc::new(tokio::sync::Notify::new());
    let reconciler = Reconciler::new(
        cluster.clone(),
        ReconcileOptions {
            plan: PlanOptions {
                threshold: config.shardd.failure_threshold.max(1),
                auto_failover: config.shardd.auto_failover,
                replicas_wanted: config.cluster.replicas,
            },
            replay_timeout: Duration::from_millis(config.shardd.replay_timeout_ms),
            timeout: Duration::from_millis(config.shardd.probe_timeout_ms.max(1000) * 5),
            fault: opts.fault.clone(),
        },
        recovery_now.clone(),
    );
    let probes = Owned::spawn(run_control_loop(
        prober,
        reconciler,
        Duration::from_millis(config.shardd.probe_interval_ms),
        status.clone(),
        commands_rx,
        stop.clone(),
    ));
    // 2PC recovery: a round now (after any crash), then periodically, and at once
    // after a change of primary.
    let recovery = match Recovery::following(cluster.clone(), RecoveryOptions::default()) {
        Ok(r) => Some(Owned::spawn(run_recovery_with(
            r,
            transactions,
            stop.clone(),
            recovery_now,
        ))),
        Err(error) => {
            tracing::error!(%error, "no 2PC recovery");
            None
        }
    };

    stop.cancelled().await;
    tracing::info!("stopping");
    status.write().unwrap_or_else(|p| p.into_inner()).ready = false;
    let _ = probes.await;
    if let Some(recovery) = recovery {
        let _ = recovery.await;
    }
    if let Some((_, task)) = router {
        // Clients go first, then the instances they were using.
        let _ = task.await;
    }
    let stopped = cluster.stop().await;
    let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "API server error"),
        Err(error) => tracing::warn!(%error, "API server task failed"),
    }
    stopped.context("stopping the cluster")?;
    tracing::info!("shardd stopped");
    Ok(())
}

/// A task that lives no longer than the `run_with` call that spawned it: if that call
/// is dropped mid-way (a test simulating a crash of shardd), its control loop and
/// recovery stop with it, as they would with the process.
struct Owned<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> Owned<T> {
    fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Owned<T> {
        Owned(Some(tokio::spawn(f)))
    }
}

impl<T> std::future::Future for Owned<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.0.as_mut() {
            Some(h) => std::pin::Pin::new(h).poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Stop whatever instances a failed or interrupted start left running.
async fn stop_partial(config: &Config, runtime: Arc<dyn NodeRuntime>) {
    match Cluster::open(config.clone(), runtime) {
        Ok(Some(c)) => {
            if let Err(error) = c.stop().await {
                tracing::error!(%error, "could not stop the cluster's instances");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::error!(%error, "could not read the cluster layout"),
    }
}

/// Take the data dir's lock file (`shardd.lock`, flock'ed for the life of the returned
/// value; the kernel releases it if we die).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let other = SharddState::read(data_dir)
                .ok()
                .flatten()
                .map(|s| format!(" (pid {})", s.pid))
                .unwrap_or_default();
            anyhow::bail!(
                "another shardd{other} is running on {}; stop it first",
                data_dir.display()
            )
        }
        Err((_, errno)) => Err(anyhow::Error::from(std::io::Error::from(errno)))
            .with_context(|| format!("locking {}", path.display())),
    }
}

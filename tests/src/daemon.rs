//! shardd itself, running in the test process ([`pgshard_shardd::run_with`]) with its
//! control loop (probes, reconciler, 2PC recovery) over a cluster in a temporary
//! directory, for failover and switchover tests.
//!
//! The instances run under a runtime owned by this harness (Owned lifecycle), not by the
//! daemon: [`TestDaemon::crash`] drops the daemon mid-step as a SIGKILLed shardd would
//! stop, and the instances keep running, as a real machine's processes outlive a
//! crashed shardd; [`TestDaemon::restart`] starts a new shardd on the same data
//! directory. Dropping the harness stops every instance.

use crate::cluster::TestClusterOptions;
use anyhow::{bail, Context};
use pgshard_catalog::{store, Catalog, Config, ShardId};
use pgshard_shardd::cluster::Layout;
use pgshard_shardd::runtime::{
    LocalOptions, LocalProcess, NodeRuntime, NodeSpec, ProcessLifecycle,
};
use pgshard_shardd::{run_with, RunOptions, SharddState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// How long bootstrap may take.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// A running shardd and its cluster.
pub struct TestDaemon {
    config: Config,
    data_dir: PathBuf,
    runtime: Arc<dyn NodeRuntime>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    state: SharddState,
    http: reqwest::Client,
    // Last: the directory outlives the instances.
    _dir: TempDir,
}

impl TestDaemon {
    /// Bootstrap a cluster of `opts` under shardd, with probes every `probe_ms`, and
    /// `tweak` applied to the config.
    pub async fn start(
        opts: TestClusterOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestDaemon> {
        crate::init_tracing();
        let dir = crate::dirs::temp_dir("shardd").context("temp dir")?;
        let data_dir = dir.path().join("data");
        let mut config = opts.config(&data_dir);
        config.shardd.listen = "127.0.0.1:0".into();
        // Faster than the defaults (1 s) so that tests run quickly; benchmarks set
        // PGSHARD_PROBE_MS=1000 to measure with the defaults.
        let probe_ms = std::env::var("PGSHARD_PROBE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        config.shardd.probe_interval_ms = probe_ms;
        config.shardd.probe_timeout_ms = probe_ms.clamp(200, 1000);
        config.shardd.failure_threshold = 3;
        tweak(&mut config);
        let runtime: Arc<dyn NodeRuntime> = match config.cluster.backend {
            pgshard_catalog::config::Backend::Local => Arc::new(LocalProcess::new(LocalOptions {
                pg_bin_dir: std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into),
                pg_user: "postgres".into(),
                lifecycle: ProcessLifecycle::Owned,
                fast_init: true,
                ctl_timeout: Duration::from_secs(60),
            })?),
            pgshard_catalog::config::Backend::Docker => {
                let mut o = pgshard_shardd::runtime::docker::DockerOptions::from_config(&config);
                o.fast_init = true;
                Arc::new(pgshard_shardd::runtime::docker::DockerRuntime::with_options(o).await?)
            }
        };
        let mut d = TestDaemon {
            config,
            data_dir,
            runtime,
            shutdown: CancellationToken::new(),
            task: None,
            state: SharddState {
                pid: 0,
                api: "127.0.0.1:1".parse()?,
                cluster: String::new(),
                data_dir: PathBuf::new(),
                router: None,
                router_pid: None,
            },
            http: reqwest::Client::new(),
            _dir: dir,
        };
        // Free ports are picked at bootstrap; another test may take one before its
        // instance binds it. An unfinished bootstrap is redone from scratch by the
        // next start, on other ports.
        let mut attempt = 1;
        loop {
            match d.launch(None).await {
                Ok(()) => return Ok(d),
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    tracing::warn!(attempt, error = %e, "port taken during bootstrap; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn launch(&mut self, fault: Option<String>) -> anyhow::Result<()> {
        // A stale state file from the run before must not count as ready.
        let _ = std::fs::remove_file(self.data_dir.join(pgshard_shardd::STATE_FILE));
        self.shutdown = CancellationToken::new();
        let rt = self.runtime.clone();
        let task = tokio::spawn(run_with(
            self.config.clone(),
            RunOptions {
                lifecycle: ProcessLifecycle::Owned,
                fast_init: true,
                router_binary: None,
                fault,
                runtime: Some(rt),
            },
            self.shutdown.clone(),
        ));
        let started = Instant::now();
        self.state = loop {
            if task.is_finished() {
                let r = task.await.context("shardd task")?;
                bail!("shardd exited while starting: {r:?}");
            }
            if let Some(s) = SharddState::read(&self.data_dir)? {
                break s;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("shardd not ready after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.task = Some(task);
        Ok(())
    }

    /// Stop shardd where it is, as a crash would (no clean-up runs; instances keep
    /// running), then start a new one on the same data directory with `fault`.
    pub async fn restart(&mut self, fault: Option<String>) -> anyhow::Result<()> {
        self.crash().await;
        self.launch(fault).await
    }

    /// Stop shardd where it is, as a crash would.
    pub async fn crash(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Start a fresh shardd whose reconciler stops at `fault` (see
    /// `ReconcileOptions::fault`), replacing this one.
    pub async fn restart_with_fault(&mut self, fault: &str) -> anyhow::Result<()> {
        self.restart(Some(fault.to_string())).await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The layout as shardd last saved it.
    pub fn layout(&self) -> anyhow::Result<Layout> {
        Layout::load(&self.data_dir.join(pgshard_shardd::cluster::LAYOUT_FILE))?
            .context("no cluster.json")
    }

    pub fn spec(&self, name: &str) -> anyhow::Result<NodeSpec> {
        let layout = self.layout()?;
        let node = layout
            .node(name)
            .with_context(|| format!("no node named {name}"))?;
        Ok(layout.spec(node, &self.config))
    }

    /// The catalog database's connection string: every catalog node, read-write
    /// wanted, as shardd gives its router (it finds the catalog after its failover).
    pub fn catalog_conninfo(&self) -> anyhow::Result<String> {
        self.layout()?.catalog_conninfo().context("no catalog node")
    }

    /// A router in this process following this cluster's catalog, with its router
    /// settings, on a free port.
    pub async fn router(&self) -> anyhow::Result<crate::TestRouter> {
        crate::TestRouter::start_on(&self.catalog_conninfo()?, self.config.router.clone()).await
    }

    /// The catalog as stored now.
    pub async fn catalog(&self) -> anyhow::Result<Catalog> {
        let (client, conn) =
            tokio_postgres::connect(&self.catalog_conninfo()?, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(store::load(&client).await?)
    }

    /// The name of `shard`'s primary in the catalog now.
    pub async fn primary_of(&self, shard: u32) -> anyhow::Result<String> {
        let catalog = self.catalog().await?;
        catalog
            .primary(ShardId(shard))
            .map(|n| n.name.clone())
            .with_context(|| format!("shard {shard} has no primary"))
    }

    /// A client on instance `name`'s `postgres` database.
    pub async fn connect_node(&self, name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.spec(name)?.connstr("postgres"), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {name}"))?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// SIGKILL instance `name` and its backends.
    pub async fn kill_node(&self, name: &str) -> anyhow::Result<()> {
        let spec = self.spec(name)?;
        self.runtime
            .kill(&spec)
            .await
            .with_context(|| format!("killing {name}"))
    }

    /// Start instance `name` again after a kill.
    pub async fn start_node(&self, name: &str) -> anyhow::Result<()> {
        let spec = self.spec(name)?;
        self.runtime
            .start(&spec)
            .await
            .with_context(|| format!("starting {name}"))
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("http://{}/v1/status", self.state.api))
            .send()
            .await?
            .json()
            .await?)
    }

    /// `GET` of any API path, as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{}{path}", self.state.api))
            .send()
            .await?
            .text()
            .await?)
    }

    /// `POST` a JSON body to an API path: the status code and the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self
            .http
            .post(format!("http://{}{path}", self.state.api))
            .json(&body)
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await?))
    }

    /// Poll the catalog until `done` holds for it, or fail after `timeout` saying
    /// `what`.
    pub async fn wait_catalog(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Catalog) -> bool,
    ) -> anyhow::Result<Catalog> {
        let started = Instant::now();
        loop {
            if let Ok(c) = self.catalog().await {
                if done(&c) {
                    return Ok(c);
                }
            }
            if started.elapsed() > timeout {
                let status = self.status().await.unwrap_or_default();
                bail!("{what}: not after {timeout:?}; status: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no shard primary holds a prepared transaction (2PC recovery has
    /// finished what failovers left in doubt).
    pub async fn wait_no_prepared(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let catalog = self.catalog().await?;
            let mut prepared = 0i64;
            for s in catalog.shard_ids() {
                let p = catalog.primary(s).context("a shard without a primary")?;
                prepared += self
                    .connect_node(&p.name)
                    .await?
                    .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                    .await?
                    .get::<_, i64>(0);
            }
            if prepared == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("{prepared} prepared transactions left after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until every shard has its primary and all its replicas in service and
    /// streaming (after a failover: the fenced node rebuilt).
    pub async fn wait_redundant(&self, timeout: Duration) -> anyhow::Result<Catalog> {
        let started = Instant::now();
        loop {
            let status = self.status().await?;
            let healthy = status["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().all(|n| n["state"] == "healthy"));
            let ok = status["shards"].as_array().is_some_and(|shards| {
                !shards.is_empty() && shards.iter().all(|s| s["status"] == "ok")
            });
            if healthy && ok {
                return self.catalog().await;
            }
            if started.elapsed() > timeout {
                bail!("cluster not back to full redundancy after {timeout:?}: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

//! A whole pgshard cluster for tests: the catalog node, shards and streaming replicas,
//! bootstrapped by shardd's own library code ([`pgshard_shardd::cluster::Cluster`]) in
//! a temporary directory on free ports, with the Owned process lifecycle.

use anyhow::Context;
use pgshard_catalog::config::{Durability, TableConfig};
use pgshard_catalog::{Catalog, Config};
use pgshard_shardd::cluster::Cluster;
use pgshard_shardd::runtime::{
    LocalOptions, LocalProcess, NodeRuntime, NodeSpec, ProcessLifecycle, Readiness,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_postgres::Client;

/// Bootstrap attempts before giving up on port collisions.
const PORT_ATTEMPTS: usize = 3;

/// The shape of a test cluster.
#[derive(Debug, Clone)]
pub struct TestClusterOptions {
    pub shards: u32,
    /// Streaming replicas per shard and for the catalog node.
    pub replicas: u32,
    /// `None`: the config default (`sync` when there are replicas).
    pub durability: Option<Durability>,
    pub buckets: u32,
    /// `[[table]]` declarations seeding the catalog.
    pub tables: Vec<TableConfig>,
    /// Extra `postgresql.conf` settings for every instance.
    pub postgres: BTreeMap<String, String>,
}

impl Default for TestClusterOptions {
    fn default() -> Self {
        TestClusterOptions {
            shards: 2,
            replicas: 1,
            durability: None,
            buckets: 1024,
            tables: Vec::new(),
            postgres: BTreeMap::new(),
        }
    }
}

impl TestClusterOptions {
    /// The config the cluster is bootstrapped from, with its data in `data_dir`.
    pub fn config(&self, data_dir: &Path) -> Config {
        let mut config = Config::default();
        config.cluster.name = "pgshard-test".into();
        config.cluster.shards = self.shards;
        config.cluster.replicas = self.replicas;
        // Tests replicate the catalog node like the shards (SPEC §8).
        config.cluster.catalog_replicas = self.replicas;
        config.cluster.durability = self.durability;
        config.cluster.buckets = self.buckets;
        config.cluster.data_dir = data_dir.to_path_buf();
        config.cluster.base_port = 0;
        config.cluster.pg_bin_dir = std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into);
        config.cluster.postgres = self.postgres.clone();
        config.tables = self.tables.clone();
        config.router.listen = "127.0.0.1:0".into();
        config
    }
}

/// A running cluster, stopped (and its directory removed) on drop.
pub struct TestCluster {
    // Field order is drop order: the cluster and the runtime (whose supervisor stops
    // every instance) go before the directory.
    cluster: Cluster,
    runtime: Arc<LocalProcess>,
    catalog: Catalog,
    dir: TempDir,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("dir", &self.dir.path())
            .field("nodes", &self.cluster.layout().nodes.len())
            .finish()
    }
}

fn new_runtime() -> anyhow::Result<Arc<LocalProcess>> {
    Ok(Arc::new(LocalProcess::new(LocalOptions {
        pg_bin_dir: std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into),
        pg_user: "postgres".into(),
        lifecycle: ProcessLifecycle::Owned,
        fast_init: true,
        ctl_timeout: Duration::from_secs(60),
    })?))
}

impl TestCluster {
    /// Bootstrap a new cluster and load its catalog.
    pub async fn start(opts: TestClusterOptions) -> anyhow::Result<TestCluster> {
        crate::init_tracing();
        let started = Instant::now();
        let dir = crate::dirs::temp_dir("cluster").context("creating a temporary directory")?;
        let config = opts.config(&dir.path().join("data"));
        let runtime = new_runtime()?;
        let mut attempt = 1;
        let cluster = loop {
            let rt: Arc<dyn NodeRuntime> = runtime.clone();
            match Cluster::up_with_ports(config.clone(), rt, crate::ports::free_port).await {
                Ok(c) => break c,
                Err(e) if e.is_port_conflict() && attempt < PORT_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "port taken; retrying on other ports");
                    attempt += 1;
                    let rt: Arc<dyn NodeRuntime> = runtime.clone();
                    if let Some(stale) = Cluster::open(config.clone(), rt)? {
                        stale.destroy().await?;
                    }
                }
                Err(e) => return Err(e).context("bootstrapping the test cluster"),
            }
        };
        let catalog = cluster.load_catalog().await?;
        tracing::info!(elapsed = ?started.elapsed(), "test cluster up");
        Ok(TestCluster {
            cluster,
            runtime,
            catalog,
            dir,
        })
    }

    /// The config the cluster was bootstrapped from.
    pub fn config(&self) -> &Config {
        self.cluster.config()
    }

    /// The shardd cluster handle (layout, specs, runtime).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The local runtime running the instances.
    pub fn runtime(&self) -> &Arc<LocalProcess> {
        &self.runtime
    }

    /// The catalog as loaded at the last start or [`TestCluster::reload_catalog`].
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Load the catalog again from the catalog node.
    pub async fn reload_catalog(&mut self) -> anyhow::Result<&Catalog> {
        self.catalog = self.cluster.load_catalog().await?;
        Ok(&self.catalog)
    }

    /// The cluster's data dir.
    pub fn data_dir(&self) -> &Path {
        self.cluster.data_dir()
    }

    /// Instance names in layout order (`catalog`, `catalog-node2`, `shard1-node1`…).
    pub fn node_names(&self) -> Vec<String> {
        self.cluster
            .layout()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// The spec of instance `name`.
    pub fn spec(&self, name: &str) -> anyhow::Result<NodeSpec> {
        self.cluster
            .spec(name)
            .with_context(|| format!("no node named {name}"))
    }

    /// A libpq connection string to the `postgres` database of instance `name`.
    pub fn connstr(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.spec(name)?.connstr("postgres"))
    }

    /// A client connected to the `postgres` database of instance `name`.
    pub async fn connect_node(&self, name: &str) -> anyhow::Result<Client> {
        self.cluster
            .connect_node(name)
            .await?
            .with_context(|| format!("no node named {name}"))
    }

    /// The single value `sql` returns on each of `nodes` (shard primaries), in order,
    /// after checking that no prepared transaction is left on it (two-phase commit
    /// finished everywhere).
    pub async fn value_on_each<T>(&self, nodes: &[&str], sql: &str) -> anyhow::Result<Vec<T>>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let mut out = Vec::new();
        for node in nodes {
            let c = self.connect_node(node).await?;
            let prepared: i64 = c
                .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
                .await?
                .get(0);
            anyhow::ensure!(prepared == 0, "prepared transactions left on {node}");
            out.push(c.query_one(sql, &[]).await?.get(0));
        }
        Ok(out)
    }

    /// The catalog node's spec.
    pub fn catalog_spec(&self) -> anyhow::Result<NodeSpec> {
        let layout = self.cluster.layout();
        layout
            .catalog()
            .map(|n| layout.spec(n, self.cluster.config()))
            .context("the layout has no catalog node")
    }

    /// The name of `shard`'s primary now (node names do not say it).
    pub fn primary_name(&self, shard: u32) -> anyhow::Result<String> {
        self.cluster
            .layout()
            .primary_of(pgshard_catalog::ShardId(shard))
            .map(|n| n.name.clone())
            .with_context(|| format!("shard {shard} has no primary"))
    }

    /// The names of `shard`'s replicas now.
    pub fn replica_names(&self, shard: u32) -> Vec<String> {
        self.cluster
            .layout()
            .replicas()
            .filter(|n| n.shard == Some(pgshard_catalog::ShardId(shard)))
            .map(|n| n.name.clone())
            .collect()
    }

    /// A client connected to the catalog database.
    pub async fn connect_catalog(&self) -> anyhow::Result<Client> {
        Ok(self.cluster.connect_catalog().await?)
    }

    /// The postmaster pid of every running instance.
    pub async fn pids(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for spec in self.cluster.specs() {
            if let Some(pid) = self.runtime.pid(&spec).await? {
                out.push((spec.name, pid));
            }
        }
        Ok(out)
    }

    /// SIGKILL instance `name` and every backend it runs, as a crash would, keeping its
    /// data. The runtime's kill returns once none of the instance's processes is left,
    /// so the instance can start again at once.
    pub async fn kill_node(&self, name: &str) -> anyhow::Result<()> {
        let spec = self.spec(name)?;
        self.runtime
            .kill(&spec)
            .await
            .with_context(|| format!("killing {name}"))
    }

    /// Start instance `name` again (after [`TestCluster::kill_node`] or a stop) and wait
    /// until it accepts connections (a primary then also takes writes: crash recovery
    /// is over).
    pub async fn start_node(&self, name: &str) -> anyhow::Result<()> {
        let spec = self.spec(name)?;
        self.runtime
            .start(&spec)
            .await
            .with_context(|| format!("starting {name}"))?;
        self.runtime
            .wait_ready(&spec, Readiness::Accepting, Duration::from_secs(60))
            .await
            .with_context(|| format!("waiting for {name}"))
    }

    /// Stop every instance (fast shutdown), keeping the data.
    pub async fn stop(&self) -> anyhow::Result<()> {
        Ok(self.cluster.stop().await?)
    }

    /// Stop every instance and remove all data (instance directories, layout).
    pub async fn destroy(self) -> anyhow::Result<()> {
        let TestCluster {
            cluster,
            runtime,
            catalog: _,
            dir,
        } = self;
        cluster.destroy().await?;
        drop(runtime);
        drop(dir);
        Ok(())
    }

    /// Stop (if running) and start the same cluster again on the same data, then reload
    /// the catalog.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.cluster.stop().await?;
        let rt: Arc<dyn NodeRuntime> = self.runtime.clone();
        self.cluster = Cluster::up(self.cluster.config().clone(), rt).await?;
        self.reload_catalog().await?;
        Ok(())
    }
}

//! Bootstrap, restart, stop and destruction of a whole cluster (SPEC §2, §8, §10): the
//! catalog node and its `catalog_replicas` replicas, and `shards` shards of one primary and `replicas`
//! streaming replicas each.
//!
//! The local *layout* — which instances exist, their names, ports, directories and
//! roles — is persisted in `data_dir/cluster.json`. It is written before the first
//! instance is created and marked `initialized` once the catalog has been written, so:
//! - an existing, initialised data dir restarts the same cluster with its data
//!   (starting an instance that is already running is a no-op, so this also re-attaches
//!   a restarted shardd to a running cluster);
//! - a bootstrap interrupted before the catalog existed held no user data, and is wiped
//!   and redone.
//!
//! Names: `catalog`, `catalog-replica1`, `shard1-primary`, `shard1-replica1`, … Shard ids
//! start at 1. Node ids: the catalog node is 1, then its replicas, then each shard's
//! primary and replicas in order.

use crate::runtime::docker;
use crate::runtime::{ready, slot_name, NodeRuntime, NodeSpec, Readiness, RuntimeError, Upstream};
use futures::future::try_join_all;
use pgshard_catalog::config::{Backend, ConfigError, DockerAddressing, Durability};
use pgshard_catalog::store::{self, ClusterInit, StoreError, CATALOG_DB};
use pgshard_catalog::{Catalog, Config, Node, NodeId, NodeRole, NodeState, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The layout file's name inside the data dir.
pub const LAYOUT_FILE: &str = "cluster.json";
/// The layout file format this code writes.
const LAYOUT_FORMAT: u32 = 1;
/// How long one instance may take to become ready at start.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Connection timeout for shardd's own connections to instances.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong with the cluster as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("invalid cluster layout {path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("catalog node {node}: {context}: {source}")]
    Catalog {
        node: String,
        context: String,
        source: ready::ConnectError,
    },
    #[error(
        "instance {node} already exists ({runtime}) but this data dir has no cluster: does \
         another cluster named `{cluster}` use it? Destroy that cluster, or set another \
         cluster.name"
    )]
    Occupied {
        node: String,
        cluster: String,
        runtime: &'static str,
    },
    #[error("the {backend} backend is not supported yet; use backend = \"local\"")]
    UnsupportedBackend { backend: String },
}

impl ClusterError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when an instance could not bind its port: a caller that chose free ports
    /// may wipe and retry with others.
    pub fn is_port_conflict(&self) -> bool {
        match self {
            ClusterError::Runtime(e) => e.is_port_conflict(),
            _ => false,
        }
    }
}

/// One instance in the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutNode {
    pub id: NodeId,
    pub name: String,
    pub role: NodeRole,
    pub shard: Option<ShardId>,
    pub host: String,
    pub port: u16,
    /// The instance directory (absolute).
    pub dir: PathBuf,
    /// For replicas: the name of the node they stream from.
    pub upstream: Option<String>,
}

/// The instances of a cluster on this machine, as persisted in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub format: u32,
    /// The cluster's name (`cluster.name`).
    pub cluster: String,
    /// Buckets and shards the catalog was created with.
    pub buckets: u32,
    pub shards: Vec<ShardId>,
    /// True once the catalog has been written: from then on the data is the cluster's.
    pub initialized: bool,
    pub nodes: Vec<LayoutNode>,
}

impl Layout {
    /// The layout a new cluster gets from `config`, with ports from `next_port`.
    ///
    /// Docker containers on the cluster network (`docker.addressing = "network"`) each
    /// have an address of their own: they are reached by container name on the
    /// standard port, and no host port is allocated.
    pub fn plan(
        config: &Config,
        data_dir: &Path,
        next_port: &mut dyn FnMut() -> std::io::Result<u16>,
    ) -> Result<Layout, ClusterError> {
        let c = &config.cluster;
        let by_container =
            c.backend == Backend::Docker && config.docker.addressing == DockerAddressing::Network;
        let mut nodes = Vec::new();
        let mut add = |name: String,
                       role: NodeRole,
                       shard: Option<ShardId>,
                       upstream: Option<String>|
         -> Result<(), ClusterError> {
            let (host, port) = if by_container {
                (
                    docker::container_name(&c.name, &name),
                    docker::CONTAINER_PORT,
                )
            } else {
                let port =
                    next_port().map_err(|e| ClusterError::io("could not allocate a port", e))?;
                (c.host.clone(), port)
            };
            nodes.push(LayoutNode {
                id: NodeId(nodes.len() as u32 + 1),
                dir: data_dir.join("nodes").join(&name),
                name,
                role,
                shard,
                host,
                port,
                upstream,
            });
            Ok(())
        };
        add("catalog".into(), NodeRole::Catalog, None, None)?;
        for r in 1..=c.catalog_replicas {
            add(
                format!("catalog-replica{r}"),
                NodeRole::Replica,
                None,
                Some("catalog".into()),
            )?;
        }
        for s in 1..=c.shards {
            let primary = format!("shard{s}-primary");
            add(primary.clone(), NodeRole::Primary, Some(ShardId(s)), None)?;
            for r in 1..=c.replicas {
                add(
                    format!("shard{s}-replica{r}"),
                    NodeRole::Replica,
                    Some(ShardId(s)),
                    Some(primary.clone()),
                )?;
            }
        }
        Ok(Layout {
            format: LAYOUT_FORMAT,
            cluster: c.name.clone(),
            buckets: c.buckets,
            shards: (1..=c.shards).map(ShardId).collect(),
            initialized: false,
            nodes,
        })
    }

    /// Read `cluster.json`; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Layout>, ClusterError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("could not read {}", path.display()),
                    e,
                ))
            }
        };
        let layout: Layout = serde_json::from_str(&text).map_err(|e| ClusterError::Layout {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if layout.format != LAYOUT_FORMAT {
            return Err(ClusterError::Layout {
                path: path.to_path_buf(),
                message: format!(
                    "format {} is not supported (expected {LAYOUT_FORMAT})",
                    layout.format
                ),
            });
        }
        Ok(Some(layout))
    }

    /// Write `cluster.json` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ClusterError> {
        use std::io::Write;
        let text = serde_json::to_string_pretty(self).map_err(|e| ClusterError::Layout {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| ClusterError::io(format!("could not write {}", path.display()), e))
    }

    pub fn node(&self, name: &str) -> Option<&LayoutNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The catalog node.
    pub fn catalog(&self) -> Option<&LayoutNode> {
        self.nodes.iter().find(|n| n.role == NodeRole::Catalog)
    }

    /// Nodes that stream from `name`.
    pub fn replicas_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a LayoutNode> {
        self.nodes
            .iter()
            .filter(move |n| n.upstream.as_deref() == Some(name))
    }

    /// Primaries (the catalog node included).
    pub fn primaries(&self) -> impl Iterator<Item = &LayoutNode> {
        self.nodes.iter().filter(|n| n.role != NodeRole::Replica)
    }

    pub fn replicas(&self) -> impl Iterator<Item = &LayoutNode> {
        self.nodes.iter().filter(|n| n.role == NodeRole::Replica)
    }

    /// The catalog's view of the nodes, for `init_cluster`.
    pub fn catalog_nodes(&self, state: NodeState) -> Vec<Node> {
        self.nodes
            .iter()
            .map(|n| Node {
                id: n.id,
                shard: n.shard,
                role: n.role,
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
                state,
                lag_bytes: None,
            })
            .collect()
    }

    /// The runtime spec of `node` under `config` (durability, extra settings).
    pub fn spec(&self, node: &LayoutNode, config: &Config) -> NodeSpec {
        let mut settings: BTreeMap<String, String> = config.cluster.postgres.clone();
        if node.role != NodeRole::Replica {
            let standbys: Vec<String> = self
                .replicas_of(&node.name)
                .map(|r| format!("\"{}\"", slot_name(&r.name)))
                .collect();
            let value = if config.cluster.durability() == Durability::Sync && !standbys.is_empty() {
                format!("ANY 1 ({})", standbys.join(", "))
            } else {
                String::new()
            };
            settings.insert("synchronous_standby_names".into(), value);
        }
        let upstream = node
            .upstream
            .as_deref()
            .and_then(|u| self.node(u))
            .map(|p| Upstream {
                name: p.name.clone(),
                host: p.host.clone(),
                port: p.port,
            });
        NodeSpec {
            name: node.name.clone(),
            role: node.role,
            shard: node.shard,
            host: node.host.clone(),
            port: node.port,
            dir: node.dir.clone(),
            settings,
            upstream,
        }
    }
}

/// The default port source: `cluster.base_port` and up, or free ports from the kernel
/// when it is 0 (each checked by binding it on `host`).
pub fn default_ports(host: String, base_port: u16) -> impl FnMut() -> std::io::Result<u16> + Send {
    let mut next = base_port;
    // Hold every allocated listener until the source is dropped, so the kernel cannot
    // hand out the same port twice within one cluster.
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    move || {
        if base_port != 0 {
            let port = next;
            next = next.checked_add(1).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "ran out of ports")
            })?;
            return Ok(port);
        }
        let listener = std::net::TcpListener::bind((host.as_str(), 0))?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        Ok(port)
    }
}

/// A cluster on this machine: its config, layout and the runtime that runs it.
#[derive(Debug)]
pub struct Cluster {
    config: Config,
    data_dir: PathBuf,
    layout: Layout,
    runtime: Arc<dyn NodeRuntime>,
}

impl Cluster {
    /// Bootstrap a new cluster in `config.cluster.data_dir`, or restart the one already
    /// there with its data. Returns once every instance is ready and every replica
    /// streams.
    pub async fn up(
        config: Config,
        runtime: Arc<dyn NodeRuntime>,
    ) -> Result<Cluster, ClusterError> {
        let ports = default_ports(config.cluster.host.clone(), config.cluster.base_port);
        Self::up_with_ports(config, runtime, ports).await
    }

    /// [`Cluster::up`] with an explicit port source for new clusters.
    pub async fn up_with_ports(
        config: Config,
        runtime: Arc<dyn NodeRuntime>,
        mut ports: impl FnMut() -> std::io::Result<u16> + Send,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let data_dir = absolute(&config.cluster.data_dir)?;
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| ClusterError::io(format!("could not create {}", data_dir.display()), e))?;
        let layout_path = data_dir.join(LAYOUT_FILE);
        match Layout::load(&layout_path)? {
            Some(layout) if layout.initialized => {
                let cluster = Cluster {
                    config,
                    data_dir,
                    layout,
                    runtime,
                };
                cluster.restart().await?;
                Ok(cluster)
            }
            previous => {
                // Adopted instances are not ours to wipe: bootstrap adopts them again.
                if let Some(layout) = previous.filter(|_| !adopting(&config)) {
                    tracing::warn!(data_dir = %data_dir.display(), "previous bootstrap did not finish; starting over");
                    let stale = Cluster {
                        config: config.clone(),
                        data_dir: data_dir.clone(),
                        layout,
                        runtime: runtime.clone(),
                    };
                    stale.remove_instances().await?;
                }
                let layout = Layout::plan(&config, &data_dir, &mut ports)?;
                drop(ports);
                let mut cluster = Cluster {
                    config,
                    data_dir,
                    layout,
                    runtime,
                };
                cluster.bootstrap().await?;
                Ok(cluster)
            }
        }
    }

    /// Attach to an existing, initialised cluster without starting anything (for
    /// status tools and `destroy`).
    pub fn open(
        config: Config,
        runtime: Arc<dyn NodeRuntime>,
    ) -> Result<Option<Cluster>, ClusterError> {
        let data_dir = absolute(&config.cluster.data_dir)?;
        Ok(
            Layout::load(&data_dir.join(LAYOUT_FILE))?.map(|layout| Cluster {
                config,
                data_dir,
                layout,
                runtime,
            }),
        )
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The absolute data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn runtime(&self) -> &Arc<dyn NodeRuntime> {
        &self.runtime
    }

    /// The runtime spec of every instance.
    pub fn specs(&self) -> Vec<NodeSpec> {
        self.layout
            .nodes
            .iter()
            .map(|n| self.layout.spec(n, &self.config))
            .collect()
    }

    /// The runtime spec of one instance.
    pub fn spec(&self, name: &str) -> Option<NodeSpec> {
        self.layout
            .node(name)
            .map(|n| self.layout.spec(n, &self.config))
    }

    fn sync(&self) -> bool {
        self.config.cluster.durability() == Durability::Sync
    }

    fn layout_path(&self) -> PathBuf {
        self.data_dir.join(LAYOUT_FILE)
    }

    async fn bootstrap(&mut self) -> Result<(), ClusterError> {
        let started = Instant::now();
        // Instances that exist before the layout does belong to someone else (Docker
        // objects are named after the cluster, not the data dir): refuse before the
        // layout claims them, so that clean-up and destroy never touch them.
        if !adopting(&self.config) {
            for spec in self.specs() {
                if self.runtime.exists(&spec).await? {
                    return Err(ClusterError::Occupied {
                        node: spec.name,
                        cluster: self.layout.cluster.clone(),
                        runtime: self.runtime.kind(),
                    });
                }
            }
        }
        self.layout.save(&self.layout_path())?;
        tracing::info!(
            cluster = %self.layout.cluster,
            nodes = self.layout.nodes.len(),
            data_dir = %self.data_dir.display(),
            "bootstrapping cluster"
        );
        // Primaries first (initdb in parallel), then every replica from its primary.
        let primaries: Vec<NodeSpec> = self
            .layout
            .primaries()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        let rt = &self.runtime;
        let adopt = adopting(&self.config);
        try_join_all(primaries.iter().map(|spec| async move {
            if adopt && rt.exists(spec).await? {
                adopt_instance(rt.as_ref(), spec).await?;
            } else {
                rt.init_primary(spec).await?;
            }
            rt.start(spec).await?;
            rt.wait_ready(spec, Readiness::Accepting, READY_TIMEOUT)
                .await
        }))
        .await?;
        tracing::info!(elapsed = ?started.elapsed(), "primaries ready");
        let replicas: Vec<NodeSpec> = self
            .layout
            .replicas()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        let sync = self.sync();
        let this = &*self;
        try_join_all(replicas.iter().map(|spec| async move {
            if adopt && rt.exists(spec).await? {
                this.ensure_slot(spec).await?;
                adopt_instance(rt.as_ref(), spec).await?;
            } else {
                rt.create_replica(spec).await?;
            }
            rt.start(spec).await?;
            rt.wait_ready(spec, Readiness::Streaming { sync }, READY_TIMEOUT)
                .await?;
            Ok::<_, ClusterError>(())
        }))
        .await?;
        tracing::info!(elapsed = ?started.elapsed(), "replicas streaming");
        // The catalog last: in sync mode its writes wait for a streaming replica.
        let version = self.init_catalog().await?;
        self.layout.initialized = true;
        self.layout.save(&self.layout_path())?;
        tracing::info!(elapsed = ?started.elapsed(), %version, "cluster bootstrapped");
        Ok(())
    }

    async fn init_catalog(&self) -> Result<pgshard_catalog::CatalogVersion, ClusterError> {
        let catalog = self.catalog_spec()?;
        let admin = self.connect(&catalog, "postgres").await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&CATALOG_DB],
            )
            .await
            .map_err(|e| self.catalog_err(&catalog, "could not look up the catalog database", e))?
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {CATALOG_DB}"))
                .await
                .map_err(|e| {
                    self.catalog_err(&catalog, "could not create the catalog database", e)
                })?;
        }
        drop(admin);
        let mut client = self.connect(&catalog, CATALOG_DB).await?;
        store::migrate(&mut client).await?;
        if store::is_initialized(&client).await? {
            return Ok(store::version(&client).await?);
        }
        let tables = store::tables_from_config(&self.config)?;
        let init = ClusterInit {
            buckets: self.layout.buckets,
            shards: self.layout.shards.clone(),
            bucket_map: pgshard_catalog::placement::initial(
                self.layout.buckets,
                &self.layout.shards,
            ),
            // Every node has just passed its readiness check.
            nodes: self.layout.catalog_nodes(NodeState::Healthy),
            tables,
            local_shard: self.layout.shards.first().copied().unwrap_or(ShardId(1)),
        };
        Ok(store::init_cluster(&mut client, &init).await?)
    }

    /// Start every instance of an existing cluster and wait until all serve.
    async fn restart(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        if self.layout.cluster != self.config.cluster.name {
            tracing::warn!(layout = %self.layout.cluster, config = %self.config.cluster.name, "cluster name in the config differs from the data dir's; using the data dir");
        }
        tracing::info!(cluster = %self.layout.cluster, nodes = self.layout.nodes.len(), "restarting cluster");
        // Primaries first: a replica started before its primary listens waits
        // wal_retrieve_retry_interval before trying again.
        let sync = self.sync();
        let rt = &self.runtime;
        let primaries: Vec<NodeSpec> = self
            .layout
            .primaries()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        try_join_all(primaries.iter().map(|spec| async move {
            rt.start(spec).await?;
            rt.wait_ready(spec, Readiness::Accepting, READY_TIMEOUT)
                .await
        }))
        .await?;
        let replicas: Vec<NodeSpec> = self
            .layout
            .replicas()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        try_join_all(replicas.iter().map(|spec| async move {
            rt.start(spec).await?;
            rt.wait_ready(spec, Readiness::Streaming { sync }, READY_TIMEOUT)
                .await
        }))
        .await?;
        // Apply any newer catalog migrations.
        let catalog = self.catalog_spec()?;
        let mut client = self.connect(&catalog, CATALOG_DB).await?;
        store::migrate(&mut client).await?;
        tracing::info!(elapsed = ?started.elapsed(), "cluster restarted");
        Ok(())
    }

    /// Stop every instance (fast shutdown): primaries first, so their replicas receive
    /// the shutdown checkpoint, then replicas.
    pub async fn stop(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let primaries: Vec<NodeSpec> = self
            .layout
            .primaries()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        let replicas: Vec<NodeSpec> = self
            .layout
            .replicas()
            .map(|n| self.layout.spec(n, &self.config))
            .collect();
        try_join_all(primaries.iter().map(|s| self.runtime.stop(s))).await?;
        try_join_all(replicas.iter().map(|s| self.runtime.stop(s))).await?;
        tracing::info!(elapsed = ?started.elapsed(), "cluster stopped");
        Ok(())
    }

    /// Stop every instance and remove all data: instance directories and the layout.
    pub async fn destroy(self) -> Result<(), ClusterError> {
        self.remove_instances().await?;
        for file in [LAYOUT_FILE, crate::STATE_FILE, crate::daemon::LOCK_FILE] {
            let path = self.data_dir.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ClusterError::io(
                        format!("could not remove {}", path.display()),
                        e,
                    ))
                }
            }
        }
        // Remove what is left only if it is ours and empty (the data dir may hold the
        // CLI's logs or a user's files).
        let _ = std::fs::remove_dir(self.data_dir.join("nodes"));
        tracing::info!(data_dir = %self.data_dir.display(), "cluster destroyed");
        Ok(())
    }

    async fn remove_instances(&self) -> Result<(), ClusterError> {
        self.stop().await?;
        let specs = self.specs();
        try_join_all(specs.iter().map(|s| self.runtime.remove(s))).await?;
        Ok(())
    }

    /// The physical slot an adopted replica streams from, on its primary (its creator
    /// may not have made one).
    async fn ensure_slot(&self, replica: &NodeSpec) -> Result<(), ClusterError> {
        let Some(primary) = replica.upstream.as_ref().and_then(|u| self.spec(&u.name)) else {
            return Ok(());
        };
        let client = self.connect(&primary, "postgres").await?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&replica.slot_name()],
            )
            .await
            .map_err(|source| RuntimeError::Sql {
                node: primary.name.clone(),
                context: "could not create replication slot".into(),
                source,
            })?;
        Ok(())
    }

    fn catalog_spec(&self) -> Result<NodeSpec, ClusterError> {
        self.layout
            .catalog()
            .map(|n| self.layout.spec(n, &self.config))
            .ok_or_else(|| ClusterError::Layout {
                path: self.layout_path(),
                message: "no catalog node".into(),
            })
    }

    fn catalog_err(
        &self,
        spec: &NodeSpec,
        context: &str,
        e: tokio_postgres::Error,
    ) -> ClusterError {
        ClusterError::Catalog {
            node: spec.name.clone(),
            context: context.into(),
            source: ready::ConnectError::Pg(e),
        }
    }

    async fn connect(&self, spec: &NodeSpec, dbname: &str) -> Result<Client, ClusterError> {
        ready::connect(&spec.pg_config(dbname, CONNECT_TIMEOUT), CONNECT_TIMEOUT)
            .await
            .map_err(|source| ClusterError::Catalog {
                node: spec.name.clone(),
                context: format!("could not connect to database {dbname}"),
                source,
            })
    }

    /// A connection to the catalog database on the catalog node.
    pub async fn connect_catalog(&self) -> Result<Client, ClusterError> {
        let spec = self.catalog_spec()?;
        self.connect(&spec, CATALOG_DB).await
    }

    /// A connection to the `postgres` database of instance `name`.
    pub async fn connect_node(&self, name: &str) -> Result<Option<Client>, ClusterError> {
        match self.spec(name) {
            Some(spec) => Ok(Some(self.connect(&spec, "postgres").await?)),
            None => Ok(None),
        }
    }

    /// The catalog as stored on the catalog node now.
    pub async fn load_catalog(&self) -> Result<Catalog, ClusterError> {
        let client = self.connect_catalog().await?;
        Ok(store::load(&client).await?)
    }
}

/// Whether bootstrap takes over instances that already hold data (`docker.adopt`,
/// docker/compose.yml) rather than refusing to touch them.
fn adopting(config: &Config) -> bool {
    config.cluster.backend == Backend::Docker && config.docker.adopt
}

/// Take over an instance someone else initialised (and may be running): stop it, so
/// that the following start writes pgshard's configuration and role into its data
/// directory.
async fn adopt_instance(rt: &dyn NodeRuntime, spec: &NodeSpec) -> Result<(), RuntimeError> {
    tracing::info!(node = %spec.name, "adopting existing instance");
    rt.stop(spec).await
}

fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(path)
        .map_err(|e| ClusterError::io(format!("could not resolve {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Layout {
        let config = Config::parse(text).expect("config");
        let mut port = 7000u16;
        Layout::plan(&config, Path::new("/d"), &mut || {
            port += 1;
            Ok(port)
        })
        .expect("plan")
    }

    #[test]
    fn default_layout_names_and_ids() {
        // SPEC §2's default cluster: an unreplicated catalog node and 2 × (primary + 1).
        let d = plan("");
        let names: Vec<&str> = d.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "catalog",
                "shard1-primary",
                "shard1-replica1",
                "shard2-primary",
                "shard2-replica1"
            ]
        );
        let l = plan("[cluster]\ncatalog_replicas = 1\n");
        let names: Vec<&str> = l.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "catalog",
                "catalog-replica1",
                "shard1-primary",
                "shard1-replica1",
                "shard2-primary",
                "shard2-replica1"
            ]
        );
        let ids: Vec<u32> = l.nodes.iter().map(|n| n.id.0).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(l.shards, [ShardId(1), ShardId(2)]);
        assert_eq!(
            l.node("shard2-replica1")
                .and_then(|n| n.upstream.as_deref()),
            Some("shard2-primary")
        );
        assert_eq!(
            l.node("catalog").map(|n| n.dir.clone()),
            Some("/d/nodes/catalog".into())
        );
        let ports: Vec<u16> = l.nodes.iter().map(|n| n.port).collect();
        assert_eq!(ports, [7001, 7002, 7003, 7004, 7005, 7006]);
    }

    #[test]
    fn sync_primary_waits_for_any_replica() {
        let config = Config::parse("[cluster]\nreplicas = 2\n").expect("config");
        let l = plan("[cluster]\nreplicas = 2\n");
        let primary = l.node("shard1-primary").expect("primary");
        let spec = l.spec(primary, &config);
        assert_eq!(
            spec.settings
                .get("synchronous_standby_names")
                .map(String::as_str),
            Some("ANY 1 (\"shard1_replica1\", \"shard1_replica2\")")
        );
        let replica = l.spec(l.node("shard1-replica2").expect("replica"), &config);
        assert!(!replica.settings.contains_key("synchronous_standby_names"));
        assert_eq!(replica.upstream.map(|u| u.port), Some(primary.port));
    }

    #[test]
    fn async_primary_has_no_sync_standbys() {
        let text = "[cluster]\ndurability = \"async\"\n";
        let config = Config::parse(text).expect("config");
        let l = plan(text);
        let spec = l.spec(l.node("catalog").expect("catalog"), &config);
        assert_eq!(
            spec.settings
                .get("synchronous_standby_names")
                .map(String::as_str),
            Some("")
        );
    }

    #[test]
    fn docker_network_layout_uses_container_names() {
        let text =
            "[cluster]\nname = \"c1\"\nbackend = \"docker\"\n[docker]\naddressing = \"network\"\n";
        let config = Config::parse(text).expect("config");
        let l = plan(text);
        let hosts: Vec<(&str, u16)> = l.nodes.iter().map(|n| (n.host.as_str(), n.port)).collect();
        assert_eq!(hosts[0], ("c1-catalog", 5432));
        assert_eq!(hosts[2], ("c1-shard1-replica1", 5432));
        let replica = l.spec(l.node("shard1-replica1").expect("replica"), &config);
        assert_eq!(
            replica.upstream.map(|u| (u.host, u.port)),
            Some(("c1-shard1-primary".to_string(), 5432))
        );
        // Published addressing (the default) allocates host ports as for processes.
        let l = plan("[cluster]\nbackend = \"docker\"\n");
        assert_eq!(l.nodes[0].host, "127.0.0.1");
        assert_eq!(l.nodes[0].port, 7001);
    }

    #[test]
    fn layout_round_trips_through_json() {
        let l = plan("[cluster]\nshards = 3\nreplicas = 0\n");
        assert_eq!(l.nodes.len(), 4);
        let text = serde_json::to_string(&l).expect("json");
        let back: Layout = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, l);
    }
}

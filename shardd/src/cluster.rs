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
//! Names say where a node belongs, never its role, which changes at failovers:
//! `catalog-node1`, `catalog-node2`, `shard1-node1`, `shard1-node2`, … (node 1 of each
//! group starts as its primary). Shard ids start at 1. Node ids: the catalog node is 1,
//! then its replicas, then each shard's nodes in order.
//!
//! The catalog holds the topology (SPEC §8): which node is each shard's primary, which
//! are fenced or being rebuilt. The layout's roles and upstreams are a cache of it,
//! refreshed by [`Cluster::apply_topology`] whenever shardd reads a new catalog, so a
//! restart starts each node in the role the catalog last gave it.

use crate::runtime::docker;
use crate::runtime::{ready, slot_name, NodeRuntime, NodeSpec, Readiness, RuntimeError, Upstream};
use futures::future::try_join_all;
use pgshard_catalog::config::{Backend, ConfigError, DockerAddressing, Durability};
use pgshard_catalog::store::{self, ClusterInit, StoreError, CATALOG_DB};
use pgshard_catalog::{Catalog, Config, Node, NodeId, NodeRole, NodeState, ShardId, ShardStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The name of the catalog node of a new cluster.
pub const CATALOG_NODE: &str = "catalog-node1";
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
    /// Fenced or being rebuilt (the catalog's topology says so): never started as it
    /// is; the reconciler rebuilds it as a replica of its shard's primary.
    #[serde(default)]
    pub out_of_service: bool,
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
        let mut nodes = Vec::new();
        let mut add = |name: String,
                       role: NodeRole,
                       shard: Option<ShardId>,
                       upstream: Option<String>|
         -> Result<(), ClusterError> {
            let (host, port) = node_address(config, &name, next_port)
                .map_err(|e| ClusterError::io("could not allocate a port", e))?;
            nodes.push(LayoutNode {
                id: NodeId(nodes.len() as u32 + 1),
                dir: data_dir.join("nodes").join(&name),
                name,
                role,
                shard,
                host,
                port,
                upstream,
                out_of_service: false,
            });
            Ok(())
        };
        add(CATALOG_NODE.into(), NodeRole::Catalog, None, None)?;
        for r in 1..=c.catalog_replicas {
            add(
                format!("catalog-node{}", r + 1),
                NodeRole::Replica,
                None,
                Some(CATALOG_NODE.into()),
            )?;
        }
        for s in 1..=c.shards {
            let primary = format!("shard{s}-node1");
            add(primary.clone(), NodeRole::Primary, Some(ShardId(s)), None)?;
            for r in 1..=c.replicas {
                add(
                    format!("shard{s}-node{}", r + 1),
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

    /// Replicas in service.
    pub fn replicas(&self) -> impl Iterator<Item = &LayoutNode> {
        self.nodes
            .iter()
            .filter(|n| n.role == NodeRole::Replica && !n.out_of_service)
    }

    /// Make `new` the primary of `shard` and `old` an out-of-service replica; the other
    /// nodes of the shard stream from `new` (the layout a change of primary leads to).
    pub fn set_primary(&mut self, shard: ShardId, new: &str, old: &str) {
        for n in self.nodes.iter_mut().filter(|n| n.shard == Some(shard)) {
            if n.name == new {
                n.role = NodeRole::Primary;
                n.upstream = None;
                n.out_of_service = false;
            } else {
                n.role = NodeRole::Replica;
                n.upstream = Some(new.to_string());
                if n.name == old {
                    n.out_of_service = true;
                }
            }
        }
    }

    /// Make `new` the catalog group's primary and `old` an out-of-service replica of it
    /// (the catalog's own failover: recorded in the layout, since the catalog database
    /// is what failed).
    pub fn set_catalog_primary(&mut self, new: &str, old: &str) {
        for n in self.nodes.iter_mut().filter(|n| n.shard.is_none()) {
            if n.name == new {
                n.role = NodeRole::Catalog;
                n.upstream = None;
                n.out_of_service = false;
            } else {
                n.role = NodeRole::Replica;
                n.upstream = Some(new.to_string());
                if n.name == old {
                    n.out_of_service = true;
                }
            }
        }
    }

    /// A libpq connection string for the catalog database naming every node of the
    /// catalog group, the primary first, with `target_session_attrs=read-write`: a
    /// router given it finds the catalog again after a catalog failover.
    pub fn catalog_conninfo(&self) -> Option<String> {
        let primary = self.catalog()?;
        let mut group: Vec<&LayoutNode> = vec![primary];
        group.extend(
            self.nodes
                .iter()
                .filter(|n| n.shard.is_none() && n.name != primary.name),
        );
        let hosts: Vec<&str> = group.iter().map(|n| n.host.as_str()).collect();
        let ports: Vec<String> = group.iter().map(|n| n.port.to_string()).collect();
        Some(format!(
            "host={} port={} user={} dbname={} target_session_attrs=read-write",
            hosts.join(","),
            ports.join(","),
            crate::runtime::SUPERUSER,
            CATALOG_DB
        ))
    }

    /// The primary of `shard`.
    pub fn primary_of(&self, shard: ShardId) -> Option<&LayoutNode> {
        self.nodes
            .iter()
            .find(|n| n.shard == Some(shard) && n.role == NodeRole::Primary)
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

    /// `synchronous_standby_names` for primary `node`: in `sync` mode any one of its
    /// replicas in service. With none in service (after a failover, until a replica is
    /// rebuilt) commits go on without one unless `cluster.strict_sync`, in which case they
    /// wait for any replica of the shard (SPEC §8, "degraded").
    pub fn sync_standby_names(&self, node: &LayoutNode, config: &Config) -> String {
        if config.cluster.durability() != Durability::Sync {
            return String::new();
        }
        let quoted = |r: &LayoutNode| format!("\"{}\"", slot_name(&r.name));
        let mut standbys: Vec<String> = self
            .replicas_of(&node.name)
            .filter(|r| !r.out_of_service)
            .map(quoted)
            .collect();
        if standbys.is_empty() && config.cluster.strict_sync {
            standbys = self
                .group_of(node)
                .filter(|r| r.name != node.name)
                .map(quoted)
                .collect();
        }
        if standbys.is_empty() {
            String::new()
        } else {
            format!("ANY 1 ({})", standbys.join(", "))
        }
    }

    /// The nodes of `node`'s replication group (its shard, or the catalog group).
    pub fn group_of<'a>(&'a self, node: &'a LayoutNode) -> impl Iterator<Item = &'a LayoutNode> {
        self.nodes.iter().filter(move |n| n.shard == node.shard)
    }

    /// The runtime spec of `node` under `config` (durability, extra settings).
    pub fn spec(&self, node: &LayoutNode, config: &Config) -> NodeSpec {
        let mut settings: BTreeMap<String, String> = config.cluster.postgres.clone();
        if node.role != NodeRole::Replica {
            settings.insert(
                "synchronous_standby_names".into(),
                self.sync_standby_names(node, config),
            );
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
            socket_dir: (config.cluster.backend == Backend::Local)
                .then(|| {
                    node.dir
                        .parent()
                        .and_then(Path::parent)
                        .and_then(socket_dir)
                })
                .flatten(),
        }
    }
}

/// Where the local instances of the cluster in `data_dir` put their Unix sockets (one
/// directory for all: each socket is named by its instance's port), absolute; the
/// router reaches its shards there ([`pgshard_catalog::config::RouterConfig`]'s
/// `backend_socket_dir`). `None` when the path would not fit a socket address (107
/// bytes with `/.s.PGSQL.65535`): then TCP only.
pub fn socket_dir(data_dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(data_dir).ok()?.join("sockets");
    (dir.as_os_str().len() + "/.s.PGSQL.65535".len() <= 107).then_some(dir)
}

/// The default port source: `cluster.base_port` and up, or free ports from the kernel
/// when it is 0 (each checked by binding it on `host`).
/// Where node `name` of a cluster with `config` is reached: by container name on the
/// standard port for Docker containers on the cluster network (`docker.addressing =
/// "network"`, no host port allocated), otherwise on `cluster.host` at a port from
/// `next_port`. Bootstrap and the nodes added later (`add-shard`, `add-replica`) alike.
pub fn node_address(
    config: &Config,
    name: &str,
    next_port: &mut dyn FnMut() -> std::io::Result<u16>,
) -> std::io::Result<(String, u16)> {
    let c = &config.cluster;
    if c.backend == Backend::Docker && config.docker.addressing == DockerAddressing::Network {
        Ok((
            docker::container_name(&c.name, name),
            docker::CONTAINER_PORT,
        ))
    } else {
        Ok((c.host.clone(), next_port()?))
    }
}

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
    /// Changes with the topology ([`Cluster::apply_topology`]); read it whole with
    /// [`Cluster::layout`], never across an `.await`.
    layout: std::sync::RwLock<Layout>,
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
                    layout: std::sync::RwLock::new(layout),
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
                        layout: std::sync::RwLock::new(layout),
                        runtime: runtime.clone(),
                    };
                    stale.remove_instances().await?;
                }
                let layout = Layout::plan(&config, &data_dir, &mut ports)?;
                drop(ports);
                let mut cluster = Cluster {
                    config,
                    data_dir,
                    layout: std::sync::RwLock::new(layout),
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
                layout: std::sync::RwLock::new(layout),
                runtime,
            }),
        )
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The layout now (a copy: the topology may change right after).
    pub fn layout(&self) -> Layout {
        self.lay().clone()
    }

    /// The specs of the primaries (the catalog node included).
    fn primary_specs(&self) -> Vec<NodeSpec> {
        let layout = self.lay();
        layout
            .primaries()
            .map(|n| layout.spec(n, &self.config))
            .collect()
    }

    /// The specs of the replicas in service.
    fn replica_specs(&self) -> Vec<NodeSpec> {
        let layout = self.lay();
        layout
            .replicas()
            .map(|n| layout.spec(n, &self.config))
            .collect()
    }

    fn lay(&self) -> std::sync::RwLockReadGuard<'_, Layout> {
        self.layout.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lay_mut(&self) -> std::sync::RwLockWriteGuard<'_, Layout> {
        self.layout.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the layout with `f` and save it (the catalog group's own changes, which
    /// the layout records since the catalog database is what changes).
    pub fn update_layout(&self, f: impl FnOnce(&mut Layout)) -> Result<(), ClusterError> {
        let mut layout = self.lay_mut();
        f(&mut layout);
        layout.save(&self.data_dir.join(LAYOUT_FILE))
    }

    /// Make the layout's roles, upstreams and out-of-service marks those of the
    /// catalog's topology, and save it if anything changed (returns whether it did).
    /// Only shard nodes follow the catalog; the catalog group is the layout's own.
    pub fn apply_topology(&self, catalog: &Catalog) -> Result<bool, ClusterError> {
        let mut layout = self.lay_mut();
        let mut changed = false;
        for node in layout.nodes.iter_mut() {
            let Some(shard) = node.shard else { continue };
            let Some(c) = catalog.nodes.iter().find(|n| n.id == node.id) else {
                continue;
            };
            let upstream = match c.role {
                NodeRole::Replica => catalog.primary(shard).map(|p| p.name.clone()),
                _ => None,
            };
            let out = matches!(c.state, NodeState::Fenced | NodeState::Rebuilding);
            if node.role != c.role || node.upstream != upstream || node.out_of_service != out {
                tracing::info!(node = %node.name, role = %c.role, upstream = ?upstream, out_of_service = out, "topology changed");
                node.role = c.role;
                node.upstream = upstream;
                node.out_of_service = out;
                changed = true;
            }
        }
        if changed {
            layout.save(&self.data_dir.join(LAYOUT_FILE))?;
        }
        Ok(changed)
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
        let layout = self.lay();
        layout
            .nodes
            .iter()
            .map(|n| layout.spec(n, &self.config))
            .collect()
    }

    /// The runtime spec of one instance.
    pub fn spec(&self, name: &str) -> Option<NodeSpec> {
        let layout = self.lay();
        layout.node(name).map(|n| layout.spec(n, &self.config))
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
                        cluster: self.lay().cluster.clone(),
                        runtime: self.runtime.kind(),
                    });
                }
            }
        }
        let layout = self.layout();
        layout.save(&self.layout_path())?;
        tracing::info!(
            cluster = %layout.cluster,
            nodes = layout.nodes.len(),
            data_dir = %self.data_dir.display(),
            "bootstrapping cluster"
        );
        // Primaries first (initdb in parallel), then every replica from its primary.
        let primaries: Vec<NodeSpec> = self.primary_specs();
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
        let replicas: Vec<NodeSpec> = self.replica_specs();
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
        self.lay_mut().initialized = true;
        self.lay().save(&self.layout_path())?;
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
        let layout = self.layout();
        let init = ClusterInit {
            buckets: layout.buckets,
            shards: layout.shards.clone(),
            bucket_map: pgshard_catalog::placement::initial(layout.buckets, &layout.shards),
            // Every node has just passed its readiness check.
            nodes: layout.catalog_nodes(NodeState::Healthy),
            tables,
            local_shard: layout.shards.first().copied().unwrap_or(ShardId(1)),
        };
        Ok(store::init_cluster(&mut client, &init).await?)
    }

    /// Start every instance of an existing cluster and wait until all serve.
    ///
    /// The catalog group first: the catalog's topology says which shard node is the
    /// primary now (failovers change it) and which nodes are fenced; the layout is
    /// brought in line with it before any shard node starts, so a fenced old primary is
    /// never started as a primary. A shard whose failover was interrupted gets its
    /// replicas started (the reconciler finishes the failover) but not its failed
    /// primary.
    async fn restart(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        {
            let layout = self.lay();
            if layout.cluster != self.config.cluster.name {
                tracing::warn!(layout = %layout.cluster, config = %self.config.cluster.name, "cluster name in the config differs from the data dir's; using the data dir");
            }
            tracing::info!(cluster = %layout.cluster, nodes = layout.nodes.len(), "restarting cluster");
        }
        let rt = &self.runtime;
        // A catalog failover that chose its replica before shardd stopped: the chosen
        // one is the catalog primary from now on, never the old one.
        if let Some((from, to)) = crate::reconcile::recorded_catalog_failover(&self.data_dir) {
            tracing::warn!(%from, %to, "finishing a recorded catalog failover");
            self.update_layout(|l| l.set_catalog_primary(&to, &from))?;
            let spec = self.catalog_spec()?;
            rt.start(&spec).await?;
            rt.wait_ready(&spec, Readiness::Accepting, READY_TIMEOUT)
                .await?;
            let client = self.connect(&spec, "postgres").await?;
            let standby: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| self.catalog_err(&spec, "could not ask whether it is a standby", e))?
                .get(0);
            if standby {
                rt.promote(&spec).await?;
            }
        }
        // Primaries first: a replica started before its primary listens waits
        // wal_retrieve_retry_interval before trying again.
        let catalog_spec = self.catalog_spec()?;
        rt.start(&catalog_spec).await?;
        rt.wait_ready(&catalog_spec, Readiness::Accepting, READY_TIMEOUT)
            .await?;
        let mut client = self.connect(&catalog_spec, CATALOG_DB).await?;
        store::migrate(&mut client).await?;
        let catalog = store::load(&client).await?;
        drop(client);
        self.apply_topology(&catalog)?;
        // Shards whose primary is being replaced: not started, replicas not awaited.
        let failing: Vec<ShardId> = catalog
            .shards
            .iter()
            .filter(|s| s.status == ShardStatus::FailingOver)
            .map(|s| s.id)
            .collect();
        let in_failover = |spec: &NodeSpec| spec.shard.is_some_and(|s| failing.contains(&s));
        let primaries: Vec<NodeSpec> = self
            .primary_specs()
            .into_iter()
            .filter(|s| s.name != catalog_spec.name && !in_failover(s))
            .collect();
        try_join_all(primaries.iter().map(|spec| async move {
            rt.start(spec).await?;
            rt.wait_ready(spec, Readiness::Accepting, READY_TIMEOUT)
                .await
        }))
        .await?;
        let replicas: Vec<NodeSpec> = self.replica_specs();
        // Streaming is enough here: a replica rebuilt while shardd was down (the old
        // primary of a failover finished at this restart) is in no primary's
        // synchronous_standby_names until the control loop, which runs once the
        // restart is done, adds it after it caught up. Waiting for `sync` would wait
        // for that loop. (Durability does not depend on this wait: commits wait for
        // whatever synchronous_standby_names the primary has.)
        try_join_all(replicas.iter().map(|spec| async move {
            rt.start(spec).await?;
            let want = if in_failover(spec) {
                Readiness::Accepting
            } else {
                Readiness::Streaming { sync: false }
            };
            rt.wait_ready(spec, want, READY_TIMEOUT).await
        }))
        .await?;
        tracing::info!(elapsed = ?started.elapsed(), "cluster restarted");
        Ok(())
    }

    /// Stop every instance (fast shutdown): primaries first, so their replicas receive
    /// the shutdown checkpoint, then replicas.
    pub async fn stop(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let primaries: Vec<NodeSpec> = self.primary_specs();
        // Every other node, out-of-service ones included (a fenced node may still run).
        let replicas: Vec<NodeSpec> = self
            .specs()
            .into_iter()
            .filter(|s| !primaries.iter().any(|p| p.name == s.name))
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
        let layout = self.layout();
        layout
            .catalog()
            .map(|n| layout.spec(n, &self.config))
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
                "catalog-node1",
                "shard1-node1",
                "shard1-node2",
                "shard2-node1",
                "shard2-node2"
            ]
        );
        let l = plan("[cluster]\ncatalog_replicas = 1\n");
        let names: Vec<&str> = l.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "catalog-node1",
                "catalog-node2",
                "shard1-node1",
                "shard1-node2",
                "shard2-node1",
                "shard2-node2"
            ]
        );
        let ids: Vec<u32> = l.nodes.iter().map(|n| n.id.0).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(l.shards, [ShardId(1), ShardId(2)]);
        assert_eq!(
            l.node("shard2-node2").and_then(|n| n.upstream.as_deref()),
            Some("shard2-node1")
        );
        assert_eq!(
            l.node("catalog-node1").map(|n| n.dir.clone()),
            Some("/d/nodes/catalog-node1".into())
        );
        let ports: Vec<u16> = l.nodes.iter().map(|n| n.port).collect();
        assert_eq!(ports, [7001, 7002, 7003, 7004, 7005, 7006]);
    }

    #[test]
    fn sync_primary_waits_for_any_replica() {
        let config = Config::parse("[cluster]\nreplicas = 2\n").expect("config");
        let l = plan("[cluster]\nreplicas = 2\n");
        let primary = l.node("shard1-node1").expect("primary");
        let spec = l.spec(primary, &config);
        assert_eq!(
            spec.settings
                .get("synchronous_standby_names")
                .map(String::as_str),
            Some("ANY 1 (\"shard1_node2\", \"shard1_node3\")")
        );
        let replica = l.spec(l.node("shard1-node3").expect("replica"), &config);
        assert!(!replica.settings.contains_key("synchronous_standby_names"));
        assert_eq!(replica.upstream.map(|u| u.port), Some(primary.port));
        // After a failover to node 2: node 3 follows it, node 1 is out of service and
        // not in the synchronous set.
        let mut after = l.clone();
        after.set_primary(ShardId(1), "shard1-node2", "shard1-node1");
        let new = after.spec(after.node("shard1-node2").expect("node"), &config);
        assert_eq!(
            new.settings
                .get("synchronous_standby_names")
                .map(String::as_str),
            Some("ANY 1 (\"shard1_node3\")")
        );
        let follower = after.spec(after.node("shard1-node3").expect("node"), &config);
        assert_eq!(
            follower.upstream.map(|u| u.name),
            Some("shard1-node2".into())
        );
        // With no replica left: non-strict keeps writing alone, strict waits for any.
        after.set_primary(ShardId(1), "shard1-node3", "shard1-node2");
        after.nodes.iter_mut().for_each(|n| {
            if n.name == "shard1-node1" {
                n.out_of_service = true;
            }
        });
        let last = after.node("shard1-node3").expect("node");
        assert_eq!(after.sync_standby_names(last, &config), "");
        let mut strict = config.clone();
        strict.cluster.strict_sync = true;
        assert_eq!(
            after.sync_standby_names(last, &strict),
            "ANY 1 (\"shard1_node1\", \"shard1_node2\")"
        );
    }

    #[test]
    fn async_primary_has_no_sync_standbys() {
        let text = "[cluster]\ndurability = \"async\"\n";
        let config = Config::parse(text).expect("config");
        let l = plan(text);
        let spec = l.spec(l.node("catalog-node1").expect("catalog"), &config);
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
        assert_eq!(hosts[0], ("c1-catalog-node1", 5432));
        assert_eq!(hosts[2], ("c1-shard1-node2", 5432));
        let replica = l.spec(l.node("shard1-node2").expect("replica"), &config);
        assert_eq!(
            replica.upstream.map(|u| (u.host, u.port)),
            Some(("c1-shard1-node1".to_string(), 5432))
        );
        // Published addressing (the default) allocates host ports as for processes.
        let l = plan("[cluster]\nbackend = \"docker\"\n");
        assert_eq!(l.nodes[0].host, "127.0.0.1");
        assert_eq!(l.nodes[0].port, 7001);
    }

    #[test]
    fn nodes_added_later_are_addressed_as_at_bootstrap() {
        let mut next = 7100u16;
        let mut ports = || {
            next += 1;
            Ok(next)
        };
        let network = Config::parse(
            "[cluster]\nname = \"c1\"\nbackend = \"docker\"\n[docker]\naddressing = \"network\"\n",
        )
        .expect("config");
        assert_eq!(
            node_address(&network, "shard3-node1", &mut ports).expect("address"),
            ("c1-shard3-node1".to_string(), 5432)
        );
        // Published containers and local processes: host ports, from the allocator.
        let published: Vec<(String, u16)> = ["[cluster]\nbackend = \"docker\"\n", "[cluster]\n"]
            .iter()
            .map(|text| {
                let config = Config::parse(text).expect("config");
                node_address(&config, "shard3-node1", &mut ports).expect("address")
            })
            .collect();
        assert_eq!(
            published,
            [
                ("127.0.0.1".to_string(), 7101),
                ("127.0.0.1".to_string(), 7102)
            ]
        );
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

//! Node runtimes: how one PostgreSQL instance is created, started, stopped, killed and
//! promoted (SPEC §8, §11).
//!
//! The control plane only ever talks to a [`NodeRuntime`] trait object, so the bootstrap
//! code, the health probes and (later) the failover reconciler cannot tell a local
//! process from a Docker container. A runtime is handed a [`NodeSpec`] — the *intent*
//! for one instance (name, role, address, directory, settings, upstream) — and makes the
//! instance match it. Every operation is safe to repeat: starting a running instance or
//! stopping a stopped one is a no-op, so a crashed shardd can simply run its plan again.
//!
//! Readiness is decided by checks against the instance itself (see [`ready`]), never by
//! sleeping.

pub mod docker;
pub mod local;
pub mod pgconf;
mod proctree;
pub mod ready;
mod supervisor;

use async_trait::async_trait;
use pgshard_catalog::{NodeRole, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use local::{LocalOptions, LocalProcess, ProcessLifecycle};
pub use ready::Readiness;

/// The PostgreSQL superuser every instance is initialised with (`initdb -U postgres`),
/// whatever OS user the server runs as.
pub const SUPERUSER: &str = "postgres";

/// The primary a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The primary's node name.
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// Everything a runtime needs to know about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Stable name, e.g. `shard1-node2`; also `cluster_name`, and (with `-` as `_`)
    /// the replica's `application_name` and replication slot.
    pub name: String,
    pub role: NodeRole,
    /// `None` for the catalog node and its replicas.
    pub shard: Option<ShardId>,
    /// Where the instance listens and where shardd reaches it.
    pub host: String,
    pub port: u16,
    /// The instance directory: `data/` (PGDATA) and `logs/` live below it.
    pub dir: PathBuf,
    /// `postgresql.conf` settings layered over the runtime's base settings
    /// (durability, the user's `cluster.postgres`).
    pub settings: BTreeMap<String, String>,
    /// For replicas: the primary to stream from.
    pub upstream: Option<Upstream>,
    /// Where the instance also listens on a Unix socket (local runtime; see
    /// [`crate::cluster::socket_dir`]); `None`: TCP only.
    pub socket_dir: Option<PathBuf>,
}

impl NodeSpec {
    /// The replication slot and `application_name` of this node: its name with `-` as
    /// `_` (both must be valid identifiers).
    pub fn slot_name(&self) -> String {
        slot_name(&self.name)
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the server log.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// A libpq connection string for `dbname` as the superuser.
    pub fn connstr(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, SUPERUSER, dbname
        )
    }

    /// A tokio-postgres config for `dbname` as the superuser.
    pub fn pg_config(&self, dbname: &str, connect_timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("shardd")
            .connect_timeout(connect_timeout);
        c
    }
}

/// A node name as a replication slot / `application_name`.
pub fn slot_name(node_name: &str) -> String {
    node_name.replace('-', "_")
}

/// What went wrong running an instance.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "PostgreSQL 15 server binaries not found (looked in {searched}); install postgresql-15 \
         (apt-get install -y postgresql-15) or set cluster.pg_bin_dir"
    )]
    BinariesNotFound { searched: String },
    #[error("OS user `{user}` (cluster.pg_user) does not exist; create it or set cluster.pg_user")]
    UserNotFound { user: String },
    #[error(
        "directory {path} is not traversable by OS user `{user}`, which runs PostgreSQL; \
         choose a data dir outside it or make it world-executable (chmod o+x)"
    )]
    NotTraversable { path: PathBuf, user: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("node {node}: {message}")]
    Spec { node: String, message: String },
    #[error("node {node} exited while starting ({status}); last log lines:\n{log_tail}")]
    Exited {
        node: String,
        status: String,
        log_tail: String,
    },
    #[error("node {node} not ready after {waited:?}: {reason}; last log lines:\n{log_tail}")]
    NotReady {
        node: String,
        waited: Duration,
        reason: String,
        log_tail: String,
    },
    #[error("node {node}: {context}: {source}")]
    Sql {
        node: String,
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("node {node} did not stop within {waited:?}")]
    StopTimeout { node: String, waited: Duration },
    #[error("the process supervisor thread is gone")]
    SupervisorGone,
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the instance could not bind its port (another process took it between
    /// allocation and start): callers that picked a free port may retry with another.
    pub fn is_port_conflict(&self) -> bool {
        let text = self.to_string();
        text.contains("could not bind") || text.contains("Address already in use")
    }
}

/// One way of running PostgreSQL instances (local processes, Docker containers).
///
/// Implementations must be idempotent per operation and must not keep per-node state
/// that cannot be rebuilt from the [`NodeSpec`] and the instance directory, because
/// shardd may restart at any time and re-attach to running instances.
#[async_trait]
pub trait NodeRuntime: Send + Sync + fmt::Debug {
    /// A short name for logs and status (`local`, `docker`).
    fn kind(&self) -> &'static str;

    /// True if the instance's data directory has been created (initdb or basebackup
    /// completed).
    async fn exists(&self, spec: &NodeSpec) -> Result<bool, RuntimeError>;

    /// Create a new, empty primary (initdb) and write its configuration. Does not start
    /// it. Fails if data already exists.
    async fn init_primary(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Create a streaming replica of `spec.upstream`, which must be running: a physical
    /// replication slot on the primary, a base backup, then the standby configuration.
    /// Does not start it.
    async fn create_replica(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Rewrite the instance's configuration from `spec` (takes effect at the next start
    /// or reload).
    async fn configure(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Start the instance; a no-op if it is already running. Returns once the process
    /// is up; use [`NodeRuntime::wait_ready`] to wait until it serves.
    async fn start(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Stop the instance with a fast shutdown (rolls back open transactions, checkpoints)
    /// and wait until it has exited; a no-op if it is not running.
    async fn stop(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Kill the instance at once (SIGKILL / container kill): for fencing and tests.
    async fn kill(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Promote a replica to primary and wait until it accepts writes.
    async fn promote(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Whether the instance's server process is alive.
    async fn is_running(&self, spec: &NodeSpec) -> Result<bool, RuntimeError>;

    /// The server's process id, if running (for tests and diagnostics).
    async fn pid(&self, spec: &NodeSpec) -> Result<Option<u32>, RuntimeError>;

    /// Where the server log is.
    fn logs_path(&self, spec: &NodeSpec) -> PathBuf;

    /// Where another instance of the cluster reaches this one (a shard's subscription
    /// to another during a bucket move): the spec's own address for local processes.
    fn peer_address(&self, spec: &NodeSpec) -> (String, u16) {
        (spec.host.clone(), spec.port)
    }

    /// Remove the instance's data (it must be stopped first).
    async fn remove(&self, spec: &NodeSpec) -> Result<(), RuntimeError>;

    /// Wait until the instance serves as `want` says, failing early if its process
    /// exits. Checks, never sleeps blindly: connects with backoff and asks PostgreSQL.
    async fn wait_ready(
        &self,
        spec: &NodeSpec,
        want: Readiness,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        ready::wait_ready(self, spec, want, timeout).await
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read): attached to
/// start-up errors so the cause is visible without opening the file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(_) => String::new(),
    }
}

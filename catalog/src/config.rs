//! `pgshard.toml` (SPEC §3): the cluster shape, the router, shardd and table
//! declarations. Every setting has a default, so no file is needed. Loading rejects
//! unknown keys and bad values with a message naming the key.
//!
//! The config only seeds the catalog at first start; afterwards the catalog is the truth.

use crate::types::KeyType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `error`, not `source`: the message already carries it, and a source would be
    // printed a second time by every error-chain printer.
    #[error("could not read config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config at key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A problem at a known place in the TOML text: a syntax error (no key), or a
    /// value or unknown key the parser placed.
    #[error("line {line}, column {column}: {}", located(key.as_deref(), message))]
    Located {
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    /// A problem in a config file, naming the file.
    #[error("{}", in_file(path, error))]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
}

fn located(key: Option<&str>, message: &str) -> String {
    match key {
        Some(key) => format!("invalid config at key `{key}`: {message}"),
        None => format!("invalid TOML: {message}"),
    }
}

fn in_file(path: &Path, error: &ConfigError) -> String {
    match error {
        ConfigError::Located { .. } => format!("config file {}, {error}", path.display()),
        _ => format!("config file {}: {error}", path.display()),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, l)| l)
        .chars()
        .count()
        + 1;
    (line, column)
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key at fault, if the problem is with one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Located { key, .. } => key.as_deref(),
            ConfigError::InFile { error, .. } => error.key(),
            ConfigError::Read { .. } => None,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub router: RouterConfig,
    pub shardd: SharddConfig,
    pub docker: DockerConfig,
    #[serde(rename = "table")]
    pub tables: Vec<TableConfig>,
}

/// Where PostgreSQL instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Local PostgreSQL processes started from the machine's binaries.
    #[default]
    Local,
    /// Docker containers.
    Docker,
}

/// How many replicas must hold a commit before it is acknowledged (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous_standby_names = 'ANY 1 (…)'`: an acknowledged commit is on a replica.
    Sync,
    /// Asynchronous streaming.
    Async,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name (labels, container and network names).
    pub name: String,
    /// Number of shards at creation.
    pub shards: u32,
    /// Streaming replicas per shard.
    pub replicas: u32,
    /// Streaming replicas of the catalog node (SPEC §2's default cluster has none).
    pub catalog_replicas: u32,
    /// Number of buckets, fixed at creation.
    pub buckets: u32,
    pub backend: Backend,
    /// `sync` (the default when replicas ≥ 1) or `async`.
    pub durability: Option<Durability>,
    /// Where instance data, logs and the cluster state live.
    pub data_dir: PathBuf,
    /// The address instances listen on.
    pub host: String,
    /// First port for instances; 0 picks free ports.
    pub base_port: u16,
    /// Directory of the PostgreSQL server binaries; empty means search the usual places.
    pub pg_bin_dir: Option<PathBuf>,
    /// The OS user PostgreSQL runs as when pgshard is started as root.
    pub pg_user: String,
    /// Extra `postgresql.conf` settings for every instance.
    pub postgres: BTreeMap<String, String>,
    /// `sync` durability while a shard has no streaming replica left (after a failover,
    /// until its replica is rebuilt): `false` (the default) keeps taking writes on the
    /// primary alone and reports the shard `degraded`, as Patroni's non-strict mode
    /// does; `true` makes commits wait until a replica confirms them again.
    pub strict_sync: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "pgshard".into(),
            shards: 2,
            replicas: 1,
            catalog_replicas: 0,
            buckets: 1024,
            backend: Backend::Local,
            durability: None,
            data_dir: PathBuf::from("./pgshard-data"),
            host: "127.0.0.1".into(),
            base_port: 0,
            pg_bin_dir: None,
            pg_user: "postgres".into(),
            postgres: BTreeMap::new(),
            strict_sync: false,
        }
    }
}

impl ClusterConfig {
    /// The effective durability mode.
    pub fn durability(&self) -> Durability {
        match self.durability {
            Some(d) => d,
            None if self.replicas >= 1 => Durability::Sync,
            None => Durability::Async,
        }
    }
}

/// Where reads may go (SPEC §8 read routing): `router.read_from`, and per session
/// `SET pgshard.read_from`. Only statements that cannot write are ever sent to a
/// replica (the planner's `Plan::replica_ok`, or a transaction declared READ ONLY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Every statement on the shard's primary (no replica reads).
    #[default]
    Primary,
    /// Reads on the replicas; when none qualifies, `router.replica_fallback` decides.
    Replica,
    /// Reads spread over the primary and the replicas.
    Any,
}

impl ReadFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Primary => "primary",
            ReadFrom::Replica => "replica",
            ReadFrom::Any => "any",
        }
    }

    /// The value of `SET pgshard.read_from = …` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "primary" => Some(ReadFrom::Primary),
            "replica" | "replicas" => Some(ReadFrom::Replica),
            "any" => Some(ReadFrom::Any),
            _ => None,
        }
    }
}

/// How a read picks one node among those that qualify (`router.read_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    #[default]
    RoundRobin,
    Random,
    /// The node with the fewest reads in flight from this router.
    LeastOutstanding,
    /// Rendezvous hashing on `router.read_hash_on`: the same key keeps to the same
    /// node, and a node joining or leaving moves only the keys it takes or had.
    Hash,
}

/// The key of `read_policy = "hash"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadHashOn {
    /// The statement's shard-key bucket (statements without one: the session's user
    /// and application_name), so the same rows stay hot in the same replica's cache.
    #[default]
    Key,
    /// The session (user and application_name): one client reads from one node.
    Session,
    /// The client's address.
    ClientAddress,
}

/// What a read does when no replica qualifies under `read_from = "replica"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaFallback {
    /// Read from the primary.
    #[default]
    Primary,
    /// Fail the statement (SQLSTATE 57P03, naming the shard and why).
    Error,
}

/// Backend pooling mode (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

/// A user the router authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// `host:port` the router listens on.
    pub listen: String,
    /// Backend connections per shard instance.
    pub pool_size: u32,
    pub pool_mode: PoolMode,
    /// How long a client waits for a backend connection, in milliseconds.
    pub pool_timeout_ms: u64,
    /// Maximum client connections.
    pub max_clients: u32,
    /// Maximum size of one client protocol message in bytes.
    pub max_message_bytes: u32,
    /// Where reads go (SPEC §8): `primary` (default), `replica` or `any`.
    pub read_from: ReadFrom,
    /// How a read picks a node: `round_robin`, `random`, `least_outstanding`, `hash`.
    pub read_policy: ReadPolicy,
    /// The key of `read_policy = "hash"`: `key` (shard-key bucket), `session`,
    /// `client_address`.
    pub read_hash_on: ReadHashOn,
    /// `read_from = "replica"` with no replica fit to serve: `primary` or `error`.
    pub replica_fallback: ReplicaFallback,
    /// Replicas further behind their primary than this many bytes of WAL are
    /// skipped (none: no byte bound).
    pub max_replica_lag_bytes: Option<u64>,
    /// Replicas that have not replayed everything their primary had written this
    /// many milliseconds ago are skipped (none: no time bound). Measured by the
    /// router's replica probe, so its resolution is `replica_probe_ms`.
    pub max_replica_lag_ms: Option<u64>,
    /// After a session commits a write on a shard, its reads there go only to nodes
    /// that have replayed that commit (the primary until a replica has).
    pub read_your_writes: bool,
    /// Relative weights of nodes for reads, by node name (default 1; 0 takes a node
    /// out of the read set).
    pub read_weights: std::collections::BTreeMap<String, u32>,
    /// How often the router probes each shard's primary and replicas for their WAL
    /// positions (replica lag, read-your-writes), in milliseconds.
    pub replica_probe_ms: u64,
    /// How long a replica that failed a connection or a probe is left out of reads,
    /// in milliseconds.
    pub replica_ban_ms: u64,
    /// `trust` (no password, the default for the embedded loopback cluster),
    /// `md5` or `scram-sha-256`.
    pub auth: String,
    /// Accept `auth = "trust"` on a `listen` address that is not loopback. Off by
    /// default: trust beyond this machine lets anyone who reaches the port in as any
    /// user, the superuser included, on every shard (SPEC §13).
    pub allow_remote_trust: bool,
    pub users: Vec<UserConfig>,
    /// PEM certificate (chain) and private key (PKCS#8, PKCS#1 or SEC1): when both are
    /// set, the router answers SSLRequest with `S` and serves that client over TLS;
    /// without them it answers `N`. The router reads the files at startup and refuses
    /// to start if either cannot be used (the message names the key and the path).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// With TLS configured: refuse clients that do not use it (FATAL 28000, as
    /// PostgreSQL's `hostssl`-only pg_hba.conf does). Off by default.
    pub tls_required: bool,
    /// How often to re-check the catalog version, in milliseconds (besides NOTIFY).
    pub catalog_poll_ms: u64,
    /// `host:port` for Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_listen: Option<String>,
    /// Threads serving client sessions, each with its own event loop; 0 (the default)
    /// means one per two CPU cores, at least one.
    pub workers: u32,
    /// How long a statement for a shard whose primary is being replaced (failover,
    /// switchover) waits for the new primary before failing, in milliseconds.
    pub failover_hold_ms: u64,
    /// The most bytes one statement may collect from the shards into temporary
    /// tables when it cannot be pushed down (a repartition join, a window not
    /// partitioned by the key…): past it the statement fails with SQLSTATE 54000.
    pub max_intermediate_bytes: u64,
    /// How often the router looks for deadlocks spanning shards (a transaction waits
    /// on shard 2 for one that waits on shard 1 for it), in milliseconds; it asks the
    /// shards only when a transaction's statement has run at least that long. The
    /// youngest transaction of a cycle is cancelled with SQLSTATE 40P01. 0 turns the
    /// detector off.
    pub distributed_deadlock_check_ms: u64,
    /// Directory of the Unix sockets of the shards running on this machine (written by
    /// shardd for the local runtime): a node on a loopback address is reached through
    /// `<dir>/.s.PGSQL.<port>` when that socket exists, over TCP otherwise.
    pub backend_socket_dir: Option<PathBuf>,
}

impl RouterConfig {
    /// No open door beyond this machine: `trust` on a non-loopback `listen` address is
    /// refused unless `allow_remote_trust` says it is meant. The router checks this
    /// again after a `--listen` override.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
            return Ok(());
        };
        if self.auth == "trust" && !addr.ip().is_loopback() && !self.allow_remote_trust {
            return Err(ConfigError::invalid(
                "router.auth",
                format!(
                    "router.auth = \"trust\" on router.listen = \"{}\" (not a loopback \
                     address) is not supported by default: anyone who can reach that port \
                     would get in as any user, the superuser included, on every shard, with \
                     no password. Use router.auth = \"scram-sha-256\" with [[router.users]] \
                     (and TLS), listen on 127.0.0.1, or set router.allow_remote_trust = true \
                     if the network is trusted",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: "127.0.0.1:6432".into(),
            pool_size: 8,
            pool_mode: PoolMode::Transaction,
            pool_timeout_ms: 10_000,
            max_clients: 1000,
            max_message_bytes: 64 * 1024 * 1024,
            read_from: ReadFrom::Primary,
            read_policy: ReadPolicy::RoundRobin,
            read_hash_on: ReadHashOn::Key,
            replica_fallback: ReplicaFallback::Primary,
            max_replica_lag_bytes: None,
            max_replica_lag_ms: None,
            read_your_writes: false,
            read_weights: std::collections::BTreeMap::new(),
            replica_probe_ms: 1000,
            replica_ban_ms: 5000,
            auth: "trust".into(),
            allow_remote_trust: false,
            users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            catalog_poll_ms: 1000,
            metrics_listen: None,
            workers: 0,
            failover_hold_ms: 10_000,
            max_intermediate_bytes: 1 << 30,
            distributed_deadlock_check_ms: 1000,
            backend_socket_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharddConfig {
    /// `host:port` of the HTTP API; port 0 picks a free one.
    pub listen: String,
    /// Probe interval in milliseconds.
    pub probe_interval_ms: u64,
    /// Failed probes in a row before a node counts as down.
    pub failure_threshold: u32,
    /// How long one probe may take, in milliseconds.
    pub probe_timeout_ms: u64,
    /// Fail over a shard whose primary failed (per shard it can also be paused with
    /// `pgshard failover pause --shard N`).
    pub auto_failover: bool,
    /// How long a promoted replica may take to replay what it received, in
    /// milliseconds, before the failover is given up and reported.
    pub replay_timeout_ms: u64,
}

impl Default for SharddConfig {
    fn default() -> Self {
        SharddConfig {
            listen: "127.0.0.1:0".into(),
            probe_interval_ms: 1000,
            failure_threshold: 3,
            probe_timeout_ms: 1000,
            auto_failover: true,
            replay_timeout_ms: 60_000,
        }
    }
}

/// The PostgreSQL image built offline by `docker/build-image.sh` (and `pgshard image
/// build`): the default `docker.image`.
pub const DEFAULT_DOCKER_IMAGE: &str = "pgshard/postgres:15-bookworm";

/// How shardd and routers reach the instances of the Docker backend (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerAddressing {
    /// shardd runs on the Docker host: each instance's port is published on
    /// `cluster.host` and the instances are reached there, like local processes.
    #[default]
    Published,
    /// shardd runs on the cluster network (in a container, as in
    /// `docker/compose.yml`): instances are reached by container name on port 5432
    /// and nothing is published.
    Network,
}

/// `[docker]`: the Docker backend (`cluster.backend = "docker"`); ignored otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// The PostgreSQL 15 image: the offline one ([`DEFAULT_DOCKER_IMAGE`], built when
    /// missing) or any Debian-layout image such as the official `postgres:15` (pulled
    /// when missing).
    pub image: String,
    pub addressing: DockerAddressing,
    /// At bootstrap, take over instance containers that already hold a database
    /// (created by `docker/compose.yml`) instead of refusing to touch them. Needs
    /// `addressing = "network"`.
    pub adopt: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            image: DEFAULT_DOCKER_IMAGE.into(),
            addressing: DockerAddressing::Published,
            adopt: false,
        }
    }
}

/// A Docker image reference as the engine accepts it: `[registry[:port]/]path[:tag]`
/// with a lowercase path. Checked loosely (the engine has the last word) so typos
/// fail at load rather than at the first container.
fn valid_image_ref(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(bad) = image
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | ':' | '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "`{image}` is not an image name (`{bad}` is not allowed)"
        ));
    }
    // The tag (after the last colon that is not part of a registry's host:port).
    let name = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    let path = name.split_once('/').map_or(name, |(first, rest)| {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            rest
        } else {
            name
        }
    });
    if path.is_empty() || path.starts_with(['/', '-', '.']) || path.ends_with('/') {
        return Err(format!("`{image}` is not an image name"));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{image}`: image names must be lowercase (tags may not be)"
        ));
    }
    Ok(())
}

/// A `[[table]]` declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    /// The shard key column: makes the table distributed.
    pub shard_key: Option<String>,
    /// The shard key's type (default `bigint`); must match the column's type.
    pub key_type: Option<String>,
    /// `distributed` (default when `shard_key` is set) or `reference`.
    pub kind: Option<String>,
    /// Co-locate with this table (default: every distributed table with the same key
    /// type shares one group).
    pub colocate_with: Option<String>,
}

impl Config {
    /// Parse and validate a config from TOML text.
    /// Errors the parser can place name the line and column (syntax errors, unknown
    /// keys, values of the wrong type).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            let key = (key != "." && !key.is_empty()).then_some(key);
            match inner.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    ConfigError::Located {
                        line,
                        column,
                        key,
                        message,
                    }
                }
                None => ConfigError::invalid(key.unwrap_or_default(), message),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Load from a file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => {
                let c = Config::default();
                c.validate()?;
                Ok(c)
            }
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?;
                Config::parse(&text).map_err(|e| ConfigError::InFile {
                    path: p.to_path_buf(),
                    error: Box::new(e),
                })
            }
        }
    }

    /// Check values the types cannot: ranges, names, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.shards == 0 || c.shards > 256 {
            return Err(ConfigError::invalid(
                "cluster.shards",
                format!("must be between 1 and 256, got {}", c.shards),
            ));
        }
        if c.replicas > 8 {
            return Err(ConfigError::invalid(
                "cluster.replicas",
                format!("must be between 0 and 8, got {}", c.replicas),
            ));
        }
        if c.catalog_replicas > 8 {
            return Err(ConfigError::invalid(
                "cluster.catalog_replicas",
                format!("must be between 0 and 8, got {}", c.catalog_replicas),
            ));
        }
        if c.buckets < c.shards || c.buckets > 65536 {
            return Err(ConfigError::invalid(
                "cluster.buckets",
                format!(
                    "must be between the number of shards ({}) and 65536, got {}",
                    c.shards, c.buckets
                ),
            ));
        }
        if c.durability == Some(Durability::Sync) && c.replicas == 0 {
            return Err(ConfigError::invalid(
                "cluster.durability",
                "`sync` needs at least one replica (cluster.replicas >= 1)",
            ));
        }
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(ConfigError::invalid(
                "cluster.name",
                "must be non-empty and use only letters, digits, `-` and `_`",
            ));
        }
        if c.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "cluster.data_dir",
                "must not be empty",
            ));
        }
        let r = &self.router;
        if r.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "router.listen",
                format!("`{}` is not a host:port address", r.listen),
            ));
        }
        if r.pool_size == 0 {
            return Err(ConfigError::invalid(
                "router.pool_size",
                "must be at least 1",
            ));
        }
        if r.replica_probe_ms == 0 {
            return Err(ConfigError::invalid(
                "router.replica_probe_ms",
                "must be at least 1",
            ));
        }
        if r.max_clients == 0 {
            return Err(ConfigError::invalid(
                "router.max_clients",
                "must be at least 1",
            ));
        }
        if r.max_message_bytes < 1024 {
            return Err(ConfigError::invalid(
                "router.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if !matches!(r.auth.as_str(), "trust" | "md5" | "scram-sha-256") {
            return Err(ConfigError::invalid(
                "router.auth",
                format!(
                    "must be `trust`, `md5` or `scram-sha-256`, got `{}`",
                    r.auth
                ),
            ));
        }
        r.check_exposure()?;
        if r.auth != "trust" && r.users.is_empty() {
            return Err(ConfigError::invalid(
                "router.users",
                format!(
                    "router.auth = `{}` needs at least one [[router.users]]",
                    r.auth
                ),
            ));
        }
        if r.tls_cert.is_some() != r.tls_key.is_some() {
            return Err(ConfigError::invalid(
                "router.tls_key",
                "tls_cert and tls_key must be set together",
            ));
        }
        if r.tls_required && r.tls_cert.is_none() {
            return Err(ConfigError::invalid(
                "router.tls_required",
                "needs router.tls_cert and router.tls_key",
            ));
        }
        if self.shardd.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "shardd.listen",
                format!("`{}` is not a host:port address", self.shardd.listen),
            ));
        }
        if self.shardd.probe_interval_ms < 50 {
            return Err(ConfigError::invalid(
                "shardd.probe_interval_ms",
                "must be at least 50",
            ));
        }
        if self.shardd.failure_threshold == 0 {
            return Err(ConfigError::invalid(
                "shardd.failure_threshold",
                "must be at least 1",
            ));
        }
        if let Err(message) = valid_image_ref(&self.docker.image) {
            return Err(ConfigError::invalid("docker.image", message));
        }
        if self.docker.adopt && self.docker.addressing != DockerAddressing::Network {
            return Err(ConfigError::invalid(
                "docker.adopt",
                "adopting containers needs docker.addressing = \"network\" (shardd on the cluster network)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let key = |field: &str| format!("table[{i}].{field}");
            if t.name.trim().is_empty() {
                return Err(ConfigError::invalid(key("name"), "must not be empty"));
            }
            if !seen.insert(t.name.clone()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("table `{}` is declared twice", t.name),
                ));
            }
            let kind = t.kind.as_deref().unwrap_or(if t.shard_key.is_some() {
                "distributed"
            } else {
                ""
            });
            match kind {
                "distributed" => {
                    if t.shard_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
                        return Err(ConfigError::invalid(
                            key("shard_key"),
                            format!("distributed table `{}` needs a shard_key", t.name),
                        ));
                    }
                }
                "reference" => {
                    if t.shard_key.is_some() {
                        return Err(ConfigError::invalid(
                            key("shard_key"),
                            format!("reference table `{}` cannot have a shard_key", t.name),
                        ));
                    }
                }
                "" => {
                    return Err(ConfigError::invalid(
                        key("kind"),
                        format!(
                            "table `{}` needs `shard_key` (distributed) or kind = \"reference\"",
                            t.name
                        ),
                    ))
                }
                other => {
                    return Err(ConfigError::invalid(
                        key("kind"),
                        format!("must be `distributed` or `reference`, got `{other}`"),
                    ))
                }
            }
            if let Some(kt) = &t.key_type {
                if KeyType::parse(kt).is_none() {
                    return Err(ConfigError::invalid(
                        key("key_type"),
                        format!(
                            "unsupported shard key type `{kt}`; use smallint, integer, bigint, text, varchar or uuid"
                        ),
                    ));
                }
            }
            if let Some(other) = &t.colocate_with {
                if !self
                    .tables
                    .iter()
                    .any(|o| &o.name == other && o.shard_key.is_some())
                {
                    return Err(ConfigError::invalid(
                        key("colocate_with"),
                        format!("`{other}` is not a declared distributed table"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str) -> String {
        match Config::parse(text) {
            Err(e) => e
                .key()
                .unwrap_or_else(|| panic!("expected an error naming a key, got {e:?}"))
                .to_string(),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").expect("empty config");
        assert_eq!(c, Config::default());
        assert_eq!(c.cluster.shards, 2);
        assert_eq!(c.cluster.replicas, 1);
        assert_eq!(c.cluster.buckets, 1024);
        assert_eq!(c.cluster.durability(), Durability::Sync);
        assert_eq!(c.router.listen, "127.0.0.1:6432");
    }

    #[test]
    fn tables_parse() {
        let c = Config::parse(
            r#"
            [[table]]
            name = "pgbench_accounts"
            shard_key = "aid"
            [[table]]
            name = "pgbench_branches"
            kind = "reference"
            "#,
        )
        .expect("valid");
        assert_eq!(c.tables.len(), 2);
        assert_eq!(c.tables[0].shard_key.as_deref(), Some("aid"));
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(key_of("[cluster]\nshardz = 3\n"), "cluster.shardz");
        assert_eq!(key_of("bogus = 1\n"), "bogus");
        assert_eq!(
            key_of("[[table]]\nname = \"t\"\nshard_key = \"id\"\ncolour = 1\n"),
            "table[0].colour"
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(key_of("[cluster]\nshards = 0\n"), "cluster.shards");
        assert_eq!(key_of("[cluster]\nshards = \"two\"\n"), "cluster.shards");
        assert_eq!(key_of("[cluster]\nbackend = \"vm\"\n"), "cluster.backend");
        assert_eq!(key_of("[router]\nlisten = \"nowhere\"\n"), "router.listen");
        assert_eq!(
            key_of("[cluster]\nreplicas = 0\ndurability = \"sync\"\n"),
            "cluster.durability"
        );
        assert_eq!(
            key_of("[[table]]\nname = \"t\"\nshard_key = \"id\"\nkey_type = \"float\"\n"),
            "table[0].key_type"
        );
        assert_eq!(key_of("[[table]]\nname = \"t\"\n"), "table[0].kind");
    }

    #[test]
    fn docker_table() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.docker.image, DEFAULT_DOCKER_IMAGE);
        assert_eq!(c.docker.addressing, DockerAddressing::Published);
        assert!(!c.docker.adopt);
        let c = Config::parse(
            "[docker]\nimage = \"localhost:5000/pg/postgres:15-Bookworm\"\naddressing = \"network\"\nadopt = true\n",
        )
        .expect("valid");
        assert_eq!(c.docker.addressing, DockerAddressing::Network);
        assert!(Config::parse("[docker]\nimage = \"postgres:15\"\n").is_ok());
        assert_eq!(key_of("[docker]\nimage = \"\"\n"), "docker.image");
        assert_eq!(
            key_of("[docker]\nimage = \"Postgres:15\"\n"),
            "docker.image"
        );
        assert_eq!(key_of("[docker]\nimage = \"pg 15\"\n"), "docker.image");
        assert_eq!(
            key_of("[docker]\naddressing = \"host\"\n"),
            "docker.addressing"
        );
        assert_eq!(key_of("[docker]\nadopt = true\n"), "docker.adopt");
        assert_eq!(key_of("[docker]\nimages = \"x\"\n"), "docker.images");
        let e = Config::parse("[docker]\nimage = \"A/b\"\n").expect_err("invalid");
        assert!(e.to_string().contains("docker.image"), "{e}");
    }

    #[test]
    fn trust_beyond_loopback_needs_saying_so() {
        for listen in ["0.0.0.0:6432", "192.0.2.1:6432", "[::]:6432"] {
            let text = format!("[router]\nlisten = \"{listen}\"\n");
            let e = Config::parse(&text).expect_err("trust on a public address");
            assert_eq!(e.key(), Some("router.auth"), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("router.listen"), "{msg}");
            assert!(msg.contains("router.allow_remote_trust"), "{msg}");
            assert!(msg.contains("is not supported"), "{msg}");
            let ok = format!("{text}allow_remote_trust = true\n");
            assert!(Config::parse(&ok).is_ok(), "{listen} with the allowance");
        }
        for listen in ["127.0.0.1:6432", "[::1]:6432", "127.0.0.2:7000"] {
            let text = format!("[router]\nlisten = \"{listen}\"\n");
            assert!(Config::parse(&text).is_ok(), "{listen}: trust on loopback");
        }
        let scram = "[router]\nlisten = \"0.0.0.0:6432\"\nauth = \"scram-sha-256\"\n\
                     [[router.users]]\nname = \"app\"\npassword = \"secret\"\n";
        assert!(Config::parse(scram).is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let e = Config::parse("[cluster]\nshards = 2\nreplicas 1\n").expect_err("bad TOML");
        let msg = e.to_string();
        assert!(msg.starts_with("line 3, column 10: invalid TOML:"), "{msg}");
        let e = Config::parse("[cluster]\n\nreplicaz = 1\n").expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.starts_with("line 3, column 1:"), "{msg}");
        assert!(msg.contains("cluster.replicaz"), "{msg}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[router\n").expect("write");
        let msg = Config::load(Some(&path)).expect_err("bad").to_string();
        assert!(
            msg.starts_with(&format!("config file {}, line 1, column", path.display())),
            "{msg}"
        );
        let missing = dir.path().join("missing.toml");
        let msg = Config::load(Some(&missing))
            .expect_err("missing")
            .to_string();
        assert_eq!(msg.matches("No such file").count(), 1, "said once: {msg}");
        assert!(
            std::error::Error::source(&Config::load(Some(&missing)).expect_err("missing"))
                .is_none()
        );
    }

    #[test]
    fn read_routing_settings_parse() {
        let c = Config::parse(
            "[router]\nread_from = \"any\"\nread_policy = \"hash\"\nread_hash_on = \"session\"\n\
             replica_fallback = \"error\"\nmax_replica_lag_bytes = 1048576\nmax_replica_lag_ms = 2000\n\
             read_your_writes = true\n[router.read_weights]\nshard1-node2 = 3\n",
        )
        .expect("valid");
        assert_eq!(c.router.read_from, ReadFrom::Any);
        assert_eq!(c.router.read_policy, ReadPolicy::Hash);
        assert_eq!(c.router.read_hash_on, ReadHashOn::Session);
        assert_eq!(c.router.replica_fallback, ReplicaFallback::Error);
        assert_eq!(c.router.max_replica_lag_bytes, Some(1 << 20));
        assert_eq!(c.router.max_replica_lag_ms, Some(2000));
        assert!(c.router.read_your_writes);
        assert_eq!(c.router.read_weights.get("shard1-node2"), Some(&3));
        assert_eq!(
            Config::parse("").expect("empty").router.read_from,
            ReadFrom::Primary
        );
        assert!(Config::parse("[router]\nread_from = \"secondary\"\n").is_err());
    }

    #[test]
    fn error_message_names_the_key() {
        let e = Config::parse("[router]\npool_size = 0\n").expect_err("invalid");
        let text = e.to_string();
        assert!(text.contains("router.pool_size"), "{text}");
    }
}

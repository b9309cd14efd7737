//! Cluster metadata types shared by the router and shardd.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A shard (replication group). Shard ids are never reused.
    ShardId,
    u32
);
id_newtype!(
    /// One bucket of the key space, `0..buckets`.
    BucketId,
    u32
);
id_newtype!(
    /// One PostgreSQL instance. Node ids are never reused.
    NodeId,
    u32
);
id_newtype!(
    /// The catalog's version, bumped by every change.
    CatalogVersion,
    i64
);

/// What a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The node holding the catalog database.
    Catalog,
    /// A shard's primary: takes writes.
    Primary,
    /// A streaming replica of a shard primary (or of the catalog node).
    Replica,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Catalog => "catalog",
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "catalog" => Some(NodeRole::Catalog),
            "primary" => Some(NodeRole::Primary),
            "replica" => Some(NodeRole::Replica),
            _ => None,
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The observed health of a node, as last recorded by shardd's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Created in the catalog, not yet started or not yet probed.
    Pending,
    /// Answers queries (and, for a replica, is streaming).
    Healthy,
    /// Failed its recent probes.
    Down,
    /// Deliberately stopped.
    Stopped,
    /// A former primary taken out of service by a failover: it must never serve again
    /// until it is rebuilt as a replica of the new primary.
    Fenced,
    /// Being rebuilt as a replica (base backup or pg_rewind from its shard's primary).
    Rebuilding,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Healthy => "healthy",
            NodeState::Down => "down",
            NodeState::Stopped => "stopped",
            NodeState::Fenced => "fenced",
            NodeState::Rebuilding => "rebuilding",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(NodeState::Pending),
            "healthy" => Some(NodeState::Healthy),
            "down" => Some(NodeState::Down),
            "stopped" => Some(NodeState::Stopped),
            "fenced" => Some(NodeState::Fenced),
            "rebuilding" => Some(NodeState::Rebuilding),
            _ => None,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PostgreSQL type of a shard key. The hash depends on it (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Text,
    Varchar,
    Uuid,
}

impl KeyType {
    /// The PostgreSQL type name as `format_type` prints it.
    pub fn sql_name(self) -> &'static str {
        match self {
            KeyType::Int2 => "smallint",
            KeyType::Int4 => "integer",
            KeyType::Int8 => "bigint",
            KeyType::Text => "text",
            KeyType::Varchar => "character varying",
            KeyType::Uuid => "uuid",
        }
    }

    /// Parse a PostgreSQL type name (any common spelling).
    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let base = lower.split('(').next().unwrap_or("").trim();
        match base {
            "int2" | "smallint" => Some(KeyType::Int2),
            "int4" | "int" | "integer" | "serial" | "serial4" => Some(KeyType::Int4),
            "int8" | "bigint" | "bigserial" | "serial8" => Some(KeyType::Int8),
            "text" => Some(KeyType::Text),
            "varchar" | "character varying" => Some(KeyType::Varchar),
            "uuid" => Some(KeyType::Uuid),
            _ => None,
        }
    }

    /// True for the integer types, which all hash like `int8` (PostgreSQL makes
    /// `hashint2/4/8extended` agree on equal values).
    pub fn is_integer(self) -> bool {
        matches!(self, KeyType::Int2 | KeyType::Int4 | KeyType::Int8)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// A shard-key value, already parsed into its type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// Any integer key (smallint, integer, bigint).
    Int(i64),
    /// text or varchar.
    Text(String),
    /// uuid, as its 16 bytes.
    Uuid([u8; 16]),
}

/// How a table is placed (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TableKind {
    /// Rows live on the shard of their key's bucket.
    Distributed {
        shard_key: String,
        key_type: KeyType,
        /// Tables in the same colocation group have equal keys on equal shards.
        colocation: String,
    },
    /// A full copy on every shard.
    Reference,
}

/// A declared table. Undeclared tables are *local*: they live on the catalog's
/// `local_shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// The table name, optionally schema-qualified, as PostgreSQL folds it (lowercase
    /// unless quoted).
    pub name: String,
    pub kind: TableKind,
}

/// Where a shard stands in a change of its primary (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShardStatus {
    /// Its primary serves; routers send it statements.
    #[default]
    Ok,
    /// Its primary is being replaced (failover or switchover): routers *hold* new
    /// statements for it until the catalog names the new primary (`router.failover_hold`).
    FailingOver,
    /// Serving, but with fewer streaming replicas than configured (or none).
    Degraded,
    /// Its primary failed and no replica could be promoted without risking an
    /// acknowledged commit: a person must act (the reason is in `status_reason`).
    Refused,
}

impl ShardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardStatus::Ok => "ok",
            ShardStatus::FailingOver => "failing_over",
            ShardStatus::Degraded => "degraded",
            ShardStatus::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(ShardStatus::Ok),
            "failing_over" => Some(ShardStatus::FailingOver),
            "degraded" => Some(ShardStatus::Degraded),
            "refused" => Some(ShardStatus::Refused),
            _ => None,
        }
    }
}

impl fmt::Display for ShardStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shard: a replication group owning buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: ShardId,
    /// `active`, `draining` (being removed) or `provisioning` (being added).
    pub state: String,
    /// Grows by one at every change of the shard's primary; a router that routes with
    /// an older term than the catalog's is about to learn of a new primary.
    #[serde(default = "first_term")]
    pub term: i64,
    #[serde(default)]
    pub status: ShardStatus,
    /// Automatic failover paused by a person (`pgshard failover pause`).
    #[serde(default)]
    pub failover_paused: bool,
    /// Why the shard is `refused` or `degraded`.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// While failing over: the primary being replaced, and (once chosen) the replica
    /// being promoted.
    #[serde(default)]
    pub failover_from: Option<NodeId>,
    #[serde(default)]
    pub failover_to: Option<NodeId>,
    /// The last completed change of primary: when (RFC 3339) and how long it took.
    #[serde(default)]
    pub last_failover_at: Option<String>,
    #[serde(default)]
    pub last_failover_ms: Option<i64>,
    /// Completed changes of primary since the cluster was created.
    #[serde(default)]
    pub failovers: i64,
}

fn first_term() -> i64 {
    1
}

impl Shard {
    /// An active shard at its first term, serving.
    pub fn active(id: ShardId) -> Shard {
        Shard {
            id,
            state: "active".to_owned(),
            term: first_term(),
            status: ShardStatus::Ok,
            failover_paused: false,
            status_reason: None,
            failover_from: None,
            failover_to: None,
            last_failover_at: None,
            last_failover_ms: None,
            failovers: 0,
        }
    }
}

/// One PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// `None` for the catalog node and its replicas.
    pub shard: Option<ShardId>,
    pub role: NodeRole,
    /// A stable name that says nothing of the node's role, which changes at failovers
    /// (`shard1-node1`, `catalog-node1`); also its `application_name` and replication
    /// slot name as a replica (with `-` as `_`).
    pub name: String,
    pub host: String,
    pub port: u16,
    /// In the topology: `healthy` (in service), `fenced`, `rebuilding`, …; shown as
    /// `down` while probes fail ([`store::load`](crate::store::load) overlays the
    /// observed health, which is kept apart and never bumps the version).
    pub state: NodeState,
    /// Replay lag behind its primary in bytes, for replicas, as last probed.
    pub lag_bytes: Option<i64>,
}

/// Everything a router needs to route, at one catalog version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: CatalogVersion,
    /// The number of buckets, fixed at cluster creation.
    pub buckets: u32,
    /// Owner of each bucket, indexed by bucket number.
    pub bucket_map: Vec<ShardId>,
    pub shards: Vec<Shard>,
    pub nodes: Vec<Node>,
    pub tables: Vec<TableDef>,
    /// Where undeclared (local) tables live.
    pub local_shard: ShardId,
    /// Buckets being moved whose statements routers hold (SPEC §9): see
    /// [`Catalog::shard_of`] and [`FROZEN`].
    #[serde(default)]
    pub frozen: std::collections::BTreeSet<BucketId>,
    /// Moves under way (frozen, copying, flipped or cleaning): their buckets' rows may
    /// sit on both shards, so reads filter them ([`Catalog::not_owned_on`]).
    #[serde(default)]
    pub moving: Vec<Moving>,
    /// Views over distributed tables, expanded by the router's planner (issue 15).
    #[serde(default)]
    pub views: Vec<ViewDef>,
}

/// A view whose query reads distributed tables: the router keeps its definition and
/// plans `FROM v` as `FROM (query) AS v (columns)`, since PostgreSQL's view on one
/// shard would read that shard's rows only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDef {
    /// Folded as a table name ([`crate::store::normalize_table_name`]).
    pub name: String,
    /// Column names given in `CREATE VIEW v (a, b)`; empty for the query's own.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The view's query.
    pub query: String,
}

/// A move under way, as routers see it: from its freeze until it is done or aborted,
/// the rows of `buckets` may be on both `source` and `target` (copied to the target
/// before the flip, deleted from the source after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    pub source: ShardId,
    pub target: ShardId,
    pub buckets: Vec<BucketId>,
}

/// The owner [`Catalog::shard_of`] gives a key whose bucket is frozen for a move: no
/// shard has this id (ids start at 1), so a route naming it is held by the router until
/// a catalog without the freeze arrives, then planned again.
pub const FROZEN: ShardId = ShardId(0);

impl Catalog {
    /// The bucket of a key value.
    pub fn bucket_of(&self, key: &KeyValue) -> BucketId {
        crate::hash::bucket(key, self.buckets)
    }

    /// The shard owning a bucket.
    pub fn shard_of_bucket(&self, bucket: BucketId) -> Option<ShardId> {
        self.bucket_map.get(bucket.0 as usize).copied()
    }

    /// The shard holding a key, for routing: [`FROZEN`] while its bucket is frozen
    /// for a move (the router holds such statements; see `router::hold`).
    pub fn shard_of(&self, key: &KeyValue) -> Option<ShardId> {
        let bucket = self.bucket_of(key);
        if self.frozen.contains(&bucket) {
            return Some(FROZEN);
        }
        self.shard_of_bucket(bucket)
    }

    /// The buckets whose rows `shard` may hold although it does not own them in this
    /// catalog (a move's copy on its target before the flip, the source's rows after
    /// it): a read on `shard` must skip them, or it would see those rows twice.
    pub fn not_owned_on(&self, shard: ShardId) -> Vec<BucketId> {
        let mut out = Vec::new();
        for m in &self.moving {
            for &b in &m.buckets {
                let owner = self.shard_of_bucket(b);
                let other = if owner == Some(m.target) {
                    m.source
                } else {
                    m.target
                };
                if other == shard && owner != Some(shard) {
                    out.push(b);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// True while a move has `bucket` frozen.
    pub fn is_frozen(&self, bucket: BucketId) -> bool {
        self.frozen.contains(&bucket)
    }

    /// A declared table by name (exact match on the folded name, or on the unqualified
    /// name when the declaration is unqualified).
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.iter().find(|t| t.name == name).or_else(|| {
            let unqualified = name.rsplit('.').next().unwrap_or(name);
            let in_public = name.starts_with("public.");
            if in_public {
                self.tables.iter().find(|t| t.name == unqualified)
            } else {
                None
            }
        })
    }

    /// The view over distributed tables named `name` (as [`Catalog::table`] finds
    /// tables).
    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.iter().find(|v| v.name == name).or_else(|| {
            let unqualified = name.strip_prefix("public.")?;
            self.views.iter().find(|v| v.name == unqualified)
        })
    }

    /// The primary of a shard.
    pub fn primary(&self, shard: ShardId) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.shard == Some(shard) && n.role == NodeRole::Primary)
    }

    /// The replicas of a shard.
    pub fn replicas(&self, shard: ShardId) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(move |n| n.shard == Some(shard) && n.role == NodeRole::Replica)
    }

    /// A shard by id.
    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// Shard ids in ascending order.
    pub fn shard_ids(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.shards.iter().map(|s| s.id).collect();
        ids.sort();
        ids
    }
}

//! The catalog store (SPEC §10): cluster metadata kept in the `pgshard` schema of the
//! `pgshard_catalog` database on the catalog node.
//!
//! The schema is created by the migrations in `catalog/schema/`, applied in order and
//! recorded in `pgshard.schema_migrations`. Every change bumps `pgshard.meta.version`
//! and sends `NOTIFY pgshard_catalog, '<version>'` in the same transaction, so a router
//! that hears the notification (or polls the version) reloads a consistent snapshot.
//!
//! This module opens no connections: callers pass a `tokio_postgres::Client`.
//! [`load`] reads the whole catalog in one statement, hence from one snapshot.

use crate::config::{Config, ConfigError};
use crate::types::*;
use serde::Deserialize;
use tokio_postgres::Client;

/// The database on the catalog node that holds the catalog.
pub const CATALOG_DB: &str = "pgshard_catalog";
/// The LISTEN/NOTIFY channel announcing a new catalog version (payload: the version).
pub const NOTIFY_CHANNEL: &str = "pgshard_catalog";

/// Schema migrations, in order. Never edit one that has shipped; add a new one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../schema/0001_init.sql")),
    (2, include_str!("../schema/0002_twopc.sql")),
    (3, include_str!("../schema/0003_topology.sql")),
    (4, include_str!("../schema/0004_moves.sql")),
    (6, include_str!("../schema/0006_table_origin.sql")),
    (7, include_str!("../schema/0007_shard_removal.sql")),
    (8, include_str!("../schema/0008_move_sync.sql")),
    (9, include_str!("../schema/0009_views.sql")),
];

/// Serialises concurrent `migrate` calls (an arbitrary, fixed advisory lock key).
const MIGRATION_LOCK: i64 = 0x7067_7368_6172_6401;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("catalog is not initialised")]
    NotInitialized,
    #[error("catalog is already initialised")]
    AlreadyInitialized,
    #[error("catalog holds invalid data: {0}")]
    Corrupt(String),
    #[error("invalid catalog change: {0}")]
    Invalid(String),
    /// A topology change was refused because the catalog moved on (another term, another
    /// primary): the caller re-reads the catalog and decides again.
    #[error("topology changed meanwhile: {0}")]
    Conflict(String),
    /// Recording a distributed transaction's decision failed (see
    /// [`add_table_at_commit`]).
    #[error(transparent)]
    TwoPc(#[from] crate::twopc::TwoPcError),
}

/// What a new cluster's catalog starts with.
#[derive(Debug, Clone)]
pub struct ClusterInit {
    pub buckets: u32,
    pub shards: Vec<ShardId>,
    /// Owner of each bucket, indexed by bucket.
    pub bucket_map: Vec<ShardId>,
    pub nodes: Vec<Node>,
    pub tables: Vec<TableDef>,
    pub local_shard: ShardId,
}

/// Apply every migration not yet applied. Safe to call concurrently and repeatedly.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgshard;
         CREATE TABLE IF NOT EXISTS pgshard.schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM pgshard.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, "applying catalog migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pgshard.schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// True once `init_cluster` has run.
pub async fn is_initialized(client: &Client) -> Result<bool, StoreError> {
    let has_meta: bool = client
        .query_one("SELECT to_regclass('pgshard.meta') IS NOT NULL", &[])
        .await?
        .get(0);
    if !has_meta {
        return Ok(false);
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM pgshard.meta", &[])
        .await?
        .get(0);
    Ok(n > 0)
}

fn check_init(init: &ClusterInit) -> Result<(), StoreError> {
    if init.bucket_map.len() != init.buckets as usize {
        return Err(StoreError::Invalid(format!(
            "bucket map has {} entries for {} buckets",
            init.bucket_map.len(),
            init.buckets
        )));
    }
    if let Some(s) = init.bucket_map.iter().find(|s| !init.shards.contains(s)) {
        return Err(StoreError::Invalid(format!(
            "bucket map names unknown shard {s}"
        )));
    }
    if !init.shards.contains(&init.local_shard) {
        return Err(StoreError::Invalid(format!(
            "local shard {} is not a shard",
            init.local_shard
        )));
    }
    Ok(())
}

/// Write a new cluster's catalog. Fails if it is already initialised.
pub async fn init_cluster(
    client: &mut Client,
    init: &ClusterInit,
) -> Result<CatalogVersion, StoreError> {
    check_init(init)?;
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE pgshard.meta IN EXCLUSIVE MODE", &[])
        .await?;
    let existing: i64 = tx
        .query_one("SELECT count(*) FROM pgshard.meta", &[])
        .await?
        .get(0);
    if existing > 0 {
        return Err(StoreError::AlreadyInitialized);
    }
    tx.execute(
        "INSERT INTO pgshard.meta (version, buckets, local_shard) VALUES (0, $1, $2)",
        &[&(init.buckets as i32), &(init.local_shard.0 as i32)],
    )
    .await?;
    for s in &init.shards {
        tx.execute(
            "INSERT INTO pgshard.shards (id, state) VALUES ($1, 'active')",
            &[&(s.0 as i32)],
        )
        .await?;
    }
    let buckets: Vec<i32> = (0..init.buckets as i32).collect();
    let owners: Vec<i32> = init.bucket_map.iter().map(|s| s.0 as i32).collect();
    tx.execute(
        "INSERT INTO pgshard.buckets (bucket, shard_id)
         SELECT * FROM unnest($1::int4[], $2::int4[])",
        &[&buckets, &owners],
    )
    .await?;
    for n in &init.nodes {
        insert_node(&tx, n).await?;
    }
    for t in &init.tables {
        insert_table(&tx, t, TableOrigin::Config).await?;
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

pub(crate) async fn bump(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<CatalogVersion, StoreError> {
    let v: i64 = tx
        .query_one("SELECT pgshard.bump_version()", &[])
        .await?
        .get(0);
    Ok(CatalogVersion(v))
}

pub(crate) async fn insert_node(
    tx: &tokio_postgres::Transaction<'_>,
    n: &Node,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO pgshard.nodes (id, shard_id, role, name, host, port, state, lag_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET shard_id = EXCLUDED.shard_id, role = EXCLUDED.role,
             name = EXCLUDED.name, host = EXCLUDED.host, port = EXCLUDED.port,
             state = EXCLUDED.state, lag_bytes = EXCLUDED.lag_bytes",
        &[
            &(n.id.0 as i32),
            &n.shard.map(|s| s.0 as i32),
            &n.role.as_str(),
            &n.name,
            &n.host,
            &(n.port as i32),
            &n.state.as_str(),
            &n.lag_bytes,
        ],
    )
    .await?;
    Ok(())
}

fn key_type_code(k: KeyType) -> &'static str {
    match k {
        KeyType::Int2 => "int2",
        KeyType::Int4 => "int4",
        KeyType::Int8 => "int8",
        KeyType::Text => "text",
        KeyType::Varchar => "varchar",
        KeyType::Uuid => "uuid",
    }
}

/// Where a table declaration comes from (see `schema/0006_table_origin.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOrigin {
    /// `pgshard.toml`: stays declared by name when the table is dropped.
    Config,
    /// `create_distributed_table` / `create_reference_table`: forgotten when dropped.
    Function,
}

impl TableOrigin {
    fn code(self) -> &'static str {
        match self {
            TableOrigin::Config => "config",
            TableOrigin::Function => "function",
        }
    }
}

async fn insert_table(
    tx: &tokio_postgres::Transaction<'_>,
    t: &TableDef,
    origin: TableOrigin,
) -> Result<(), StoreError> {
    let (kind, key, key_type, colocation) = match &t.kind {
        TableKind::Distributed {
            shard_key,
            key_type,
            colocation,
        } => (
            "distributed",
            Some(shard_key.as_str()),
            Some(key_type_code(*key_type)),
            Some(colocation.as_str()),
        ),
        TableKind::Reference => ("reference", None, None, None),
    };
    tx.execute(
        "INSERT INTO pgshard.tables (name, kind, shard_key, key_type, colocation, origin)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&t.name, &kind, &key, &key_type, &colocation, &origin.code()],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            StoreError::Invalid(format!("table \"{}\" is already declared", t.name))
        } else {
            StoreError::Db(e)
        }
    })?;
    Ok(())
}

/// Insert or replace a node.
pub async fn upsert_node(client: &mut Client, node: &Node) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    insert_node(&tx, node).await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Declare a table (distributed or reference).
pub async fn add_table(
    client: &mut Client,
    table: &TableDef,
    origin: TableOrigin,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    insert_table(&tx, table, origin).await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Declare a table at the commit point of distributed transaction `gid`, the one that
/// created it on the shards and moved its rows (a router's `create_distributed_table`):
/// the declaration, the version bump and the `committing` decision
/// ([`crate::twopc::record_commit`]) commit together, so routers see the table
/// declared exactly when its data is committed, and a transaction rolled back by
/// recovery declares nothing ([`crate::twopc::TwoPcError::Aborted`]).
pub async fn add_table_at_commit(
    client: &mut Client,
    table: &TableDef,
    gid: &crate::twopc::Gid,
    router: &crate::twopc::RouterId,
    participants: &[ShardId],
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    insert_table(&tx, table, TableOrigin::Function).await?;
    let v = bump(&tx).await?;
    crate::twopc::record_commit(&tx, gid, router, participants).await?;
    tx.commit().await?;
    Ok(v)
}

/// Forget a table declaration (the table becomes local again, e.g. after DROP TABLE).
pub async fn remove_table(client: &mut Client, name: &str) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM pgshard.tables WHERE name = $1", &[&name])
        .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Forget a table declared by `create_distributed_table`/`create_reference_table`
/// (the caller checked it is gone from every shard); declarations from the
/// configuration stay. The new version, or `None` when nothing was forgotten.
pub async fn forget_dropped_table(
    client: &mut Client,
    name: &str,
) -> Result<Option<CatalogVersion>, StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "DELETE FROM pgshard.tables WHERE name = $1 AND origin = 'function'",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Ok(None);
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(Some(v))
}

/// Record a probe result as observed health (`pgshard.node_health`); never bumps the
/// version: observed health is not topology.
pub async fn record_probe(
    client: &Client,
    node: NodeId,
    state: NodeState,
    lag_bytes: Option<i64>,
) -> Result<CatalogVersion, StoreError> {
    let v: i64 = client
        .query_one(
            "SELECT pgshard.record_probe($1, $2, $3)",
            &[&(node.0 as i32), &state.as_str(), &lag_bytes],
        )
        .await?
        .get(0);
    Ok(CatalogVersion(v))
}

/// The current catalog version.
pub async fn version(client: &Client) -> Result<CatalogVersion, StoreError> {
    let row = client
        .query_opt("SELECT version FROM pgshard.meta", &[])
        .await?
        .ok_or(StoreError::NotInitialized)?;
    Ok(CatalogVersion(row.get(0)))
}

#[derive(Deserialize)]
struct MetaRow {
    version: i64,
    buckets: i64,
    local_shard: i64,
}

#[derive(Deserialize)]
struct ShardRow {
    id: i64,
    state: String,
    #[serde(default)]
    term: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_reason: Option<String>,
    #[serde(default)]
    failover_paused: Option<bool>,
    #[serde(default)]
    failover_from: Option<i64>,
    #[serde(default)]
    failover_to: Option<i64>,
    #[serde(default)]
    last_failover_at: Option<String>,
    #[serde(default)]
    last_failover_ms: Option<i64>,
    #[serde(default)]
    failovers: Option<i64>,
}

#[derive(Deserialize)]
struct NodeRow {
    id: i64,
    shard_id: Option<i64>,
    role: String,
    name: String,
    host: String,
    port: i64,
    state: String,
    lag_bytes: Option<i64>,
}

#[derive(Deserialize)]
struct TableRow {
    name: String,
    kind: String,
    shard_key: Option<String>,
    key_type: Option<String>,
    colocation: Option<String>,
}

fn u32_of(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is out of range")))
}

/// Load the whole catalog from one snapshot (a single statement).
pub async fn load(client: &Client) -> Result<Catalog, StoreError> {
    let row = client
        .query_one(
            "SELECT
               (SELECT row_to_json(m) FROM (SELECT version, buckets, local_shard
                                              FROM pgshard.meta) m),
               (SELECT coalesce(json_agg(s ORDER BY s.id), '[]') FROM pgshard.shards s
                 WHERE s.state <> 'removed'),
               (SELECT coalesce(json_agg(n ORDER BY n.id), '[]')
                  FROM (SELECT n.id, n.shard_id, n.role, n.name, n.host, n.port,
                               CASE WHEN n.state = 'healthy' AND h.up IS FALSE
                                    THEN 'down' ELSE n.state END AS state,
                               h.lag_bytes
                          FROM pgshard.nodes n
                          LEFT JOIN pgshard.node_health h ON h.node_id = n.id) n),
               (SELECT coalesce(json_agg(t ORDER BY t.name), '[]') FROM pgshard.tables t),
               (SELECT coalesce(array_agg(shard_id ORDER BY bucket), '{}')
                  FROM pgshard.buckets),
               (SELECT coalesce(array_agg(bucket ORDER BY bucket) FILTER (WHERE frozen), '{}')
                  FROM pgshard.buckets),
               (SELECT coalesce(json_agg(json_build_object('source', source, 'target', target,
                                                           'buckets', buckets) ORDER BY id),
                                '[]')
                  FROM pgshard.moves
                 WHERE state IN ('syncing', 'frozen', 'copying', 'flipped', 'cleaning')),
               (SELECT coalesce(json_agg(v ORDER BY v.name), '[]') FROM pgshard.views v)",
            &[],
        )
        .await?;
    let meta: Option<serde_json::Value> = row.get(0);
    let meta: MetaRow = serde_json::from_value(meta.ok_or(StoreError::NotInitialized)?)
        .map_err(|e| StoreError::Corrupt(format!("meta: {e}")))?;
    let shards: Vec<ShardRow> = serde_json::from_value(row.get(1))
        .map_err(|e| StoreError::Corrupt(format!("shards: {e}")))?;
    let nodes: Vec<NodeRow> = serde_json::from_value(row.get(2))
        .map_err(|e| StoreError::Corrupt(format!("nodes: {e}")))?;
    let tables: Vec<TableRow> = serde_json::from_value(row.get(3))
        .map_err(|e| StoreError::Corrupt(format!("tables: {e}")))?;
    let owners: Vec<i32> = row.get(4);
    let frozen: Vec<i32> = row.get(5);
    let moving: Vec<Moving> = serde_json::from_value(row.get(6))
        .map_err(|e| StoreError::Corrupt(format!("moves: {e}")))?;
    let views: Vec<ViewDef> = serde_json::from_value(row.get(7))
        .map_err(|e| StoreError::Corrupt(format!("views: {e}")))?;

    let buckets = u32_of(meta.buckets, "bucket count")?;
    if owners.len() != buckets as usize {
        return Err(StoreError::Corrupt(format!(
            "{} buckets mapped, expected {buckets}",
            owners.len()
        )));
    }
    let bucket_map = owners
        .into_iter()
        .map(|s| u32_of(s as i64, "shard id").map(ShardId))
        .collect::<Result<Vec<_>, _>>()?;
    let shards = shards
        .into_iter()
        .map(|s| {
            let node = |v: Option<i64>| v.map(|n| u32_of(n, "node id").map(NodeId)).transpose();
            Ok(Shard {
                id: ShardId(u32_of(s.id, "shard id")?),
                state: s.state,
                term: s.term.unwrap_or(1),
                status: match s.status.as_deref() {
                    None => ShardStatus::Ok,
                    Some(v) => ShardStatus::parse(v)
                        .ok_or_else(|| StoreError::Corrupt(format!("shard status `{v}`")))?,
                },
                failover_paused: s.failover_paused.unwrap_or(false),
                status_reason: s.status_reason,
                failover_from: node(s.failover_from)?,
                failover_to: node(s.failover_to)?,
                last_failover_at: s.last_failover_at,
                last_failover_ms: s.last_failover_ms,
                failovers: s.failovers.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let nodes = nodes
        .into_iter()
        .map(|n| {
            Ok(Node {
                id: NodeId(u32_of(n.id, "node id")?),
                shard: n
                    .shard_id
                    .map(|s| u32_of(s, "shard id").map(ShardId))
                    .transpose()?,
                role: NodeRole::parse(&n.role)
                    .ok_or_else(|| StoreError::Corrupt(format!("node role `{}`", n.role)))?,
                name: n.name,
                host: n.host,
                port: u16::try_from(n.port)
                    .map_err(|_| StoreError::Corrupt(format!("port {}", n.port)))?,
                state: NodeState::parse(&n.state)
                    .ok_or_else(|| StoreError::Corrupt(format!("node state `{}`", n.state)))?,
                lag_bytes: n.lag_bytes,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let tables = tables
        .into_iter()
        .map(|t| {
            let kind = match t.kind.as_str() {
                "distributed" => {
                    let key_type =
                        t.key_type
                            .as_deref()
                            .and_then(KeyType::parse)
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("key type of table `{}`", t.name))
                            })?;
                    TableKind::Distributed {
                        shard_key: t.shard_key.unwrap_or_default(),
                        key_type,
                        colocation: t.colocation.unwrap_or_else(|| "default".into()),
                    }
                }
                "reference" => TableKind::Reference,
                other => return Err(StoreError::Corrupt(format!("table kind `{other}`"))),
            };
            Ok(TableDef { name: t.name, kind })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Catalog {
        version: CatalogVersion(meta.version),
        buckets,
        bucket_map,
        shards,
        nodes,
        tables,
        local_shard: ShardId(u32_of(meta.local_shard, "local shard")?),
        frozen: frozen
            .into_iter()
            .map(|b| u32_of(b as i64, "bucket").map(BucketId))
            .collect::<Result<_, _>>()?,
        moving,
        views,
    })
}

/// Records a view over distributed tables ([`ViewDef`]); `replace`: CREATE OR REPLACE
/// (else a view of that name is an error, as PostgreSQL's 42P07).
pub async fn put_view(
    client: &mut Client,
    view: &ViewDef,
    replace: bool,
) -> Result<CatalogVersion, StoreError> {
    let tx = client.transaction().await?;
    let sql = if replace {
        "INSERT INTO pgshard.views (name, columns, query) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET columns = excluded.columns, query = excluded.query"
    } else {
        "INSERT INTO pgshard.views (name, columns, query) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING"
    };
    let n = tx
        .execute(sql, &[&view.name, &view.columns, &view.query])
        .await?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "relation \"{}\" already exists",
            view.name
        )));
    }
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok(v)
}

/// Forgets views over distributed tables (DROP VIEW); the number forgotten.
pub async fn drop_views(
    client: &mut Client,
    names: &[String],
) -> Result<(CatalogVersion, u64), StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM pgshard.views WHERE name = ANY($1)", &[&names])
        .await?;
    let v = bump(&tx).await?;
    tx.commit().await?;
    Ok((v, n))
}

/// Fold a table name as PostgreSQL folds an unquoted identifier, and drop a `public.`
/// prefix so declarations match however the table is written.
pub fn normalize_table_name(name: &str) -> String {
    let folded = if name.starts_with('"') && name.ends_with('"') && name.len() >= 2 {
        name[1..name.len() - 1].to_string()
    } else {
        name.to_ascii_lowercase()
    };
    folded
        .strip_prefix("public.")
        .map(str::to_string)
        .unwrap_or(folded)
}

/// The table declarations of a config, with colocation groups resolved: a table with
/// `colocate_with` joins that table's group; others share one group per key type.
pub fn tables_from_config(config: &Config) -> Result<Vec<TableDef>, ConfigError> {
    let mut out = Vec::with_capacity(config.tables.len());
    for (i, t) in config.tables.iter().enumerate() {
        let name = normalize_table_name(&t.name);
        let kind = match &t.shard_key {
            None => TableKind::Reference,
            Some(key) => {
                let key_type = match &t.key_type {
                    None => KeyType::Int8,
                    Some(s) => KeyType::parse(s).ok_or_else(|| ConfigError::Invalid {
                        key: format!("table[{i}].key_type"),
                        message: format!("unsupported shard key type `{s}`"),
                    })?,
                };
                let colocation = match &t.colocate_with {
                    Some(other) => format!("with:{}", normalize_table_name(other)),
                    None => format!(
                        "default:{}",
                        if key_type.is_integer() {
                            "int"
                        } else {
                            key_type_code(key_type)
                        }
                    ),
                };
                TableKind::Distributed {
                    shard_key: key.to_ascii_lowercase(),
                    key_type,
                    colocation,
                }
            }
        };
        out.push(TableDef { name, kind });
    }
    // A table colocated with another takes that table's group.
    let groups: Vec<(String, String)> = out
        .iter()
        .filter_map(|t| match &t.kind {
            TableKind::Distributed { colocation, .. } if !colocation.starts_with("with:") => {
                Some((t.name.clone(), colocation.clone()))
            }
            _ => None,
        })
        .collect();
    for t in &mut out {
        if let TableKind::Distributed { colocation, .. } = &mut t.kind {
            if let Some(target) = colocation.strip_prefix("with:").map(str::to_string) {
                if let Some((_, g)) = groups.iter().find(|(n, _)| *n == target) {
                    *colocation = g.clone();
                }
            }
        }
    }
    Ok(out)
}

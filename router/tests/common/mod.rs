//! Shared setup for the router's end-to-end tests: real PostgreSQL servers from the
//! workspace harness (`pgshard_tests::Standalone`), a router bound to port 0 in front of
//! them with a fixed catalog, and helpers to drive it.

#![allow(dead_code)]

use pgshard_catalog::config::RouterConfig;
use pgshard_catalog::{
    Catalog, CatalogVersion, KeyType, Node, NodeId, NodeRole, NodeState, Shard, ShardId, TableDef,
    TableKind,
};
use pgshard_router::{CatalogHandle, Router, RouterCtx};
use pgshard_tests::Standalone;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub const BUCKETS: u32 = 16;

/// A router in front of one or more PostgreSQL servers (one per shard).
pub struct Env {
    pub shards: Vec<Standalone>,
    pub addr: SocketAddr,
    pub ctx: Arc<RouterCtx>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A catalog over the given servers: shard i+1 on server i, buckets dealt round-robin,
/// with `accounts(id bigint)` and `items(name text)` distributed.
pub fn catalog_for(shards: &[Standalone]) -> Catalog {
    let n = shards.len() as u32;
    Catalog {
        version: CatalogVersion(1),
        buckets: BUCKETS,
        bucket_map: (0..BUCKETS).map(|b| ShardId(b % n + 1)).collect(),
        shards: (1..=n).map(|i| Shard::active(ShardId(i))).collect(),
        nodes: shards
            .iter()
            .enumerate()
            .map(|(i, s)| Node {
                id: NodeId(i as u32 + 1),
                shard: Some(ShardId(i as u32 + 1)),
                role: NodeRole::Primary,
                name: format!("shard{}-primary", i + 1),
                host: s.host().to_string(),
                port: s.port(),
                state: NodeState::Healthy,
                lag_bytes: None,
            })
            .collect(),
        tables: vec![
            TableDef {
                name: "accounts".into(),
                kind: TableKind::Distributed {
                    shard_key: "id".into(),
                    key_type: KeyType::Int8,
                    colocation: "default".into(),
                },
            },
            TableDef {
                name: "items".into(),
                kind: TableKind::Distributed {
                    shard_key: "name".into(),
                    key_type: KeyType::Text,
                    colocation: "text".into(),
                },
            },
        ],
        local_shard: ShardId(1),
        frozen: Default::default(),
        moving: Vec::new(),
        views: Vec::new(),
    }
}

pub fn config() -> RouterConfig {
    RouterConfig {
        listen: "127.0.0.1:0".into(),
        pool_size: 4,
        pool_timeout_ms: 5_000,
        ..RouterConfig::default()
    }
}

impl Env {
    /// One shard, default config but the given pool size.
    pub async fn start(pool_size: u32) -> Env {
        Env::start_with(
            1,
            RouterConfig {
                pool_size,
                ..config()
            },
        )
        .await
    }

    pub async fn start_with(shards: usize, config: RouterConfig) -> Env {
        let mut servers = Vec::new();
        for _ in 0..shards {
            servers.push(Standalone::start().await.expect("start PostgreSQL"));
        }
        let catalog = catalog_for(&servers);
        let router = Router::bind(config, CatalogHandle::new(catalog))
            .await
            .expect("bind router");
        let addr = router.local_addr().expect("router address");
        let ctx = router.ctx();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(router.serve(shutdown.clone()));
        Env {
            shards: servers,
            addr,
            ctx,
            shutdown,
            task: Some(task),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10",
            self.port()
        )
    }

    /// A tokio-postgres client through the router.
    pub async fn connect(&self) -> Client {
        self.try_connect("postgres")
            .await
            .expect("connect through the router")
    }

    pub async fn try_connect(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.connstr(db), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The admin console.
    pub async fn admin(&self) -> Client {
        self.try_connect("pgshard")
            .await
            .expect("connect to the admin console")
    }

    /// Pools as `SHOW POOLS` reports them: (idle, in_use, waiting) summed.
    pub async fn pool_usage(&self) -> (u64, u64, u64) {
        let admin = self.admin().await;
        let rows = simple_rows(&admin, "SHOW POOLS").await;
        let mut t = (0, 0, 0);
        for r in rows {
            // node, name, shard, addr, user, database, size, idle, in_use, waiting
            t.0 += r[7].parse::<u64>().expect("idle");
            t.1 += r[8].parse::<u64>().expect("in_use");
            t.2 += r[9].parse::<u64>().expect("waiting");
        }
        t
    }

    /// Waits (bounded) until no backend connection is checked out.
    pub async fn wait_pools_idle(&self) -> (u64, u64, u64) {
        let mut last = (0, 0, 0);
        for _ in 0..100 {
            last = self.pool_usage().await;
            if last.1 == 0 && last.2 == 0 {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        last
    }
}

/// Rows of a simple query as text (NULL as "").
pub async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let msgs = client.simple_query(sql).await.expect("simple query");
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

//! pgshard's router (SPEC §6): a PostgreSQL wire-protocol server that routes each
//! statement to the shard primary that owns its data and relays the answer.
//!
//! Module map, from the wire inwards:
//! - [`protocol`]: framing and the messages of PostgreSQL protocol 3.0 (no routing);
//! - [`auth`]: md5 and SCRAM-SHA-256 checks for clients;
//! - [`server`]: the listener, client cap, one task per connection, shutdown;
//! - [`workers`]: the session threads, one event loop each;
//! - [`session`]: a client's protocol state machine: startup, simple and extended query
//!   protocol, transactions, session state, prepared statements;
//! - [`backend`]: connections to the shards and their pools;
//! - [`reads`]: read routing to replicas (read set, policies, lag probe, bans);
//! - [`registry`]: connected clients and cancel keys;
//! - [`catalog_watch`]: the shared catalog snapshot and its follower;
//! - [`copy`]: splitting a COPY FROM STDIN stream into rows and reading their keys;
//! - [`distribute`]: `create_distributed_table` / `create_reference_table` (moving rows),
//!   and [`forget`]: forgetting such tables once dropped;
//! - [`admin`]: the `pgshard` admin console, and [`stats`] behind its `SHOW STATS` and
//!   the Prometheus endpoint ([`metrics`]);
//! - [`tls`]: the rustls acceptor for clients that ask for TLS (SSLRequest);
//! - [`twopc`]: the two-phase commit coordinator for multi-shard transactions;
//! - `refcheck`: column defaults in writes to reference tables (refused unless constant).
//!
//! Entry points: [`run`] (what `main` calls) and [`Router::bind`] + [`Router::serve`]
//! (tests bind port 0 and read the address).

pub mod admin;
pub mod auth;
pub mod backend;
pub mod catalog_watch;
pub mod copy;
pub mod deadlock;
pub mod distribute;
pub mod fanout;
pub mod forget;
pub mod hold;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod reads;
mod refcheck;
pub mod registry;
pub mod server;
pub mod session;
pub mod stats;
pub mod tls;
pub mod twopc;
mod views;
pub mod workers;

pub use catalog_watch::{CatalogHandle, CatalogSource};
pub use server::{Router, RouterCtx};

use pgshard_catalog::config::RouterConfig;
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex held only for short, panic-free updates: a poisoned one is used as is
/// (no update can be left half done).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Loads the catalog, binds `config.listen` and serves until `shutdown`.
pub async fn run(
    config: RouterConfig,
    source: CatalogSource,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(dir) = &config.backend_socket_dir {
        backend::stream::set_socket_dir(dir);
    }
    let (handle, follow) = match source {
        CatalogSource::Fixed(c) => (CatalogHandle::new(c), None),
        CatalogSource::Store { conninfo } => {
            let catalog = catalog_watch::load_once(&conninfo).await?;
            (CatalogHandle::new(catalog), Some(conninfo))
        }
    };
    let router = match &follow {
        Some(conninfo) => {
            Router::bind_with_catalog(config.clone(), handle.clone(), conninfo).await?
        }
        None => Router::bind(config.clone(), handle.clone()).await?,
    };
    let follower = follow.map(|conninfo| {
        tokio::spawn(catalog_watch::follow(
            handle,
            conninfo,
            Duration::from_millis(config.catalog_poll_ms),
            shutdown.clone(),
        ))
    });
    router.serve(shutdown).await;
    if let Some(f) = follower {
        let _ = f.await;
    }
    Ok(())
}

//! A pgshard router running inside the test process, on a free port, following a test
//! cluster's catalog through the catalog store (NOTIFY plus polling), exactly as the
//! `pgshard-router` binary does. Stopped when dropped.

use crate::cluster::TestCluster;
use pgshard_catalog::config::RouterConfig;
use pgshard_catalog::store;
use pgshard_router::{catalog_watch, CatalogHandle, Router};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running router.
pub struct TestRouter {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    catalog: CatalogHandle,
    shutdown: CancellationToken,
}

impl TestRouter {
    /// Start a router for `cluster` with the cluster's router settings on a free port.
    pub async fn start(cluster: &TestCluster) -> anyhow::Result<TestRouter> {
        Self::start_with(cluster, cluster.config().router.clone()).await
    }

    /// Start a router for `cluster` with the given settings (`listen` is replaced by a
    /// free port).
    pub async fn start_with(
        cluster: &TestCluster,
        config: RouterConfig,
    ) -> anyhow::Result<TestRouter> {
        let conninfo = cluster.catalog_spec()?.connstr(store::CATALOG_DB);
        Self::start_on(&conninfo, config).await
    }

    /// Start a router following the catalog at `conninfo` (a libpq connection string
    /// to the catalog database), on a free port.
    pub async fn start_on(conninfo: &str, mut config: RouterConfig) -> anyhow::Result<TestRouter> {
        config.listen = "127.0.0.1:0".into();
        let conninfo = conninfo.to_string();
        let catalog = catalog_watch::load_once(&conninfo).await?;
        let handle = CatalogHandle::new(catalog);
        let router = Router::bind_with_catalog(config.clone(), handle.clone(), &conninfo).await?;
        let addr = router.local_addr()?;
        let metrics_addr = router.metrics_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(catalog_watch::follow(
            handle.clone(),
            conninfo,
            Duration::from_millis(config.catalog_poll_ms),
            shutdown.clone(),
        ));
        tokio::spawn(router.serve(shutdown.clone()));
        Ok(TestRouter {
            addr,
            metrics_addr,
            catalog: handle,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Prometheus endpoint, when started with `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq-style connection string for database `postgres` through the router.
    pub fn connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.addr.port()
        )
    }

    /// A tokio-postgres client through the router.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.connstr(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// A tokio-postgres client on the router's admin console (database `pgshard`).
    pub async fn connect_admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=pgshard",
                self.addr.port()
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The router's current catalog snapshot.
    pub fn catalog(&self) -> std::sync::Arc<pgshard_catalog::Catalog> {
        self.catalog.current()
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

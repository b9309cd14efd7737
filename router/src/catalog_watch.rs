//! Following the catalog (SPEC §10): the router routes with a shared snapshot that is
//! swapped whole when the catalog changes. A follower task LISTENs on
//! `pgshard_catalog::store::NOTIFY_CHANNEL` on the catalog node and also re-checks the
//! version every `router.catalog_poll_ms`; while the catalog node is unreachable the
//! router keeps serving with the last snapshot and retries.
//!
//! A router can also start from a fixed [`Catalog`] (tests, or a cluster without a
//! catalog node); then nothing is followed.

use pgshard_catalog::store;
use pgshard_catalog::Catalog;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

/// Where the router gets its catalog.
#[derive(Debug, Clone)]
pub enum CatalogSource {
    Fixed(Catalog),
    /// A libpq-style connection string to the catalog database, e.g.
    /// `host=127.0.0.1 port=5432 dbname=pgshard_catalog user=postgres`.
    Store {
        conninfo: String,
    },
}

/// The shared, swappable catalog snapshot. Readers take an `Arc` and never hold the lock
/// beyond that clone. Statements held during a failover ([`crate::hold`]) wait on
/// [`CatalogHandle::subscribe`] for the next snapshot.
#[derive(Clone)]
pub struct CatalogHandle {
    inner: Arc<RwLock<Arc<Catalog>>>,
    version: Arc<tokio::sync::watch::Sender<pgshard_catalog::CatalogVersion>>,
}

impl CatalogHandle {
    pub fn new(catalog: Catalog) -> Self {
        let (version, _) = tokio::sync::watch::channel(catalog.version);
        CatalogHandle {
            inner: Arc::new(RwLock::new(Arc::new(catalog))),
            version: Arc::new(version),
        }
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, catalog: Catalog) {
        let v = catalog.version;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        self.version.send_replace(v);
    }

    /// Wakes on every new snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<pgshard_catalog::CatalogVersion> {
        self.version.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("could not connect to the catalog: {0}")]
    Connect(#[from] tokio_postgres::Error),
    #[error("could not read the catalog: {0}")]
    Store(#[from] store::StoreError),
    #[error("the catalog connection closed")]
    Closed,
}

/// Loads the catalog once.
pub async fn load_once(conninfo: &str) -> Result<Catalog, WatchError> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let r = store::load(&client).await;
    drop(client);
    let _ = driver.await;
    Ok(r?)
}

/// Follows the catalog until `shutdown`, swapping `handle` on every new version.
pub async fn follow(
    handle: CatalogHandle,
    conninfo: String,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // This router's name in `pgshard.routers` (one per follower, i.e. per process).
    let me = pgshard_catalog::twopc::RouterId::generate().to_string();
    loop {
        match follow_once(&handle, &conninfo, poll, &shutdown, &me).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "catalog follower disconnected; serving the last catalog");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(
    handle: &CatalogHandle,
    conninfo: &str,
    poll: Duration,
    shutdown: &CancellationToken,
    me: &str,
) -> Result<(), WatchError> {
    let (client, mut connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection driver lives exactly as long as this function (aborted on exit).
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures::StreamExt;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "catalog connection ended");
                    break;
                }
            }
        }
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = Abort(driver);
    client
        .batch_execute(&format!("LISTEN \"{}\"", store::NOTIFY_CHANNEL))
        .await?;
    // Catch up on whatever changed while we were away.
    refresh(handle, &client, true).await?;
    seen(&client, me, handle).await;
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = rx.recv() => {
                if n.is_none() {
                    return Err(WatchError::Closed);
                }
                refresh(handle, &client, true).await?;
                seen(&client, me, handle).await;
            }
            _ = tick.tick() => {
                refresh(handle, &client, false).await?;
                seen(&client, me, handle).await;
            }
        }
    }
}

/// Tells the catalog which version this router routes with (`pgshard.routers`): a
/// switchover waits for every live router to have seen it start. A failure is only
/// logged: the catalog may be a standby for a moment.
async fn seen(client: &tokio_postgres::Client, me: &str, handle: &CatalogHandle) {
    let v = handle.current().version;
    if let Err(error) = pgshard_catalog::topology::router_seen(client, me, v).await {
        tracing::debug!(%error, "could not record the catalog version this router routes with");
    }
}

/// Reloads when the stored version is newer than the snapshot's (or always, if `force`).
async fn refresh(
    handle: &CatalogHandle,
    client: &tokio_postgres::Client,
    force: bool,
) -> Result<(), WatchError> {
    let current = handle.current().version;
    if !force {
        let v = store::version(client).await?;
        if v <= current {
            return Ok(());
        }
    }
    let catalog = store::load(client).await?;
    if catalog.version != current || force {
        if catalog.version != current {
            tracing::info!(from = %current, to = %catalog.version, "catalog updated");
        }
        handle.replace(catalog);
    }
    Ok(())
}

//! The listener: accepts clients, caps them with a semaphore (`router.max_clients`), and
//! runs one tracked task per connection with a cancellation token passed down
//! (mini-redis style). Shutdown stops accepting, tells every session, and waits for them
//! (bounded).
//!
//! A plain TCP client runs on the socket's owned halves; a client that negotiated TLS
//! runs on the two halves of a [`tokio::io::split`] TLS stream. The session code is
//! generic over both, so the plain path pays nothing for TLS being possible.

use crate::auth::ScramSecret;
use crate::backend::pool::PoolSettings;
use crate::backend::Pools;
use crate::catalog_watch::CatalogHandle;
use crate::protocol::FrameReader;
use crate::registry::ClientRegistry;
use crate::session::error::SessionError;
use crate::session::startup::{greeting, handshake, Handshake};
use crate::session::vars::SessionVars;
use crate::session::Session;
use crate::tls::{ServerTls, TlsAcceptor, TlsConfigError};
use crate::twopc::{CatalogLog, Coordinator, Faults, RouterId};
use crate::workers::Workers;
use bytes::BytesMut;
use pgshard_catalog::config::RouterConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The client database name that opens the admin console (SPEC §12).
pub const ADMIN_DATABASE: &str = "pgshard";

/// How long shutdown waits for sessions to end: sessions in a transaction get
/// [`crate::session::SHUTDOWN_GRACE`], then a moment to send their goodbye and cancel
/// their backend.
const SESSIONS_WAIT: Duration = Duration::from_secs(5);

/// How long a client may take to finish startup and authentication.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS for clients: with `router.tls_cert` and `router.tls_key` SSLRequest is answered
/// `S` and the session runs over TLS; without them it is answered `N`.
#[derive(Clone)]
pub enum TlsMode {
    Disabled,
    Enabled(TlsAcceptor),
}

impl TlsMode {
    /// Loads the certificate and key named in `config` (errors name the key and file).
    pub fn from_config(config: &RouterConfig) -> Result<TlsMode, TlsConfigError> {
        Ok(match crate::tls::acceptor(config)? {
            Some(a) => TlsMode::Enabled(a),
            None => TlsMode::Disabled,
        })
    }
}

impl std::fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Disabled => "Disabled",
            TlsMode::Enabled(_) => "Enabled",
        })
    }
}

/// Everything sessions share.
pub struct RouterCtx {
    pub config: RouterConfig,
    pub catalog: CatalogHandle,
    pub pools: Pools,
    pub clients: Arc<ClientRegistry>,
    pub scram_secrets: HashMap<String, ScramSecret>,
    pub tls: TlsMode,
    /// Two-phase commit for transactions spanning shards (SPEC §7); `None` when the
    /// router runs without a catalog database (a fixed catalog), and then such
    /// transactions are refused with 0A000.
    pub twopc: Option<TwoPc>,
    /// Counters for `SHOW STATS`.
    pub stats: crate::stats::Stats,
    /// Grows at every DDL statement a session of this router runs. It is part of the
    /// name under which a client statement is prepared on backends, so a statement
    /// prepared again after an ALTER TABLE is parsed afresh instead of reusing a
    /// backend's cached plan (PostgreSQL: "cached plan must not change result type").
    pub ddl_epoch: std::sync::atomic::AtomicU64,
    /// Read routing: per node counters, lag observations and bans (SPEC §8).
    pub reads: Arc<crate::reads::ReadSet>,
}

/// The coordinator and the catalog commit log, shared by every session.
pub struct TwoPc {
    pub coord: Arc<Coordinator>,
    pub log: Arc<CatalogLog>,
}

impl TwoPc {
    /// A coordinator with a fresh router id (and the test-only fault hook from the
    /// environment) logging commit decisions to the catalog at `conninfo`.
    pub fn new(conninfo: &str) -> Result<TwoPc, tokio_postgres::Error> {
        let coord = Arc::new(Coordinator::new(RouterId::generate(), Faults::from_env()));
        let log = Arc::new(CatalogLog::new(conninfo, coord.router().clone())?);
        Ok(TwoPc { coord, log })
    }
}

impl RouterCtx {
    pub fn new(config: RouterConfig, catalog: CatalogHandle) -> RouterCtx {
        let passwords: HashMap<String, String> = config
            .users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect();
        let scram_secrets = if config.auth == "scram-sha-256" {
            config
                .users
                .iter()
                .map(|u| (u.name.clone(), ScramSecret::from_password(&u.password)))
                .collect()
        } else {
            HashMap::new()
        };
        RouterCtx {
            pools: Pools::new(PoolSettings {
                size: config.pool_size.max(1) as usize,
                wait_timeout: Duration::from_millis(config.pool_timeout_ms),
                connect_timeout: Duration::from_secs(10),
                passwords,
            }),
            clients: Arc::new(ClientRegistry::default()),
            scram_secrets,
            tls: TlsMode::Disabled,
            twopc: None,
            stats: crate::stats::Stats::default(),
            ddl_epoch: std::sync::atomic::AtomicU64::new(0),
            reads: Arc::new(crate::reads::ReadSet::default()),
            catalog,
            config,
        }
    }
}

/// A bound router, ready to serve.
pub struct Router {
    ctx: Arc<RouterCtx>,
    listener: TcpListener,
    /// `router.metrics_listen`, bound with the client port.
    metrics: Option<TcpListener>,
}

/// Binds `router.listen`; the error names the key and the address.
async fn bind_listen(config: &RouterConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(&config.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("router.listen: cannot listen on {}: {e}", config.listen),
        )
    })
}

/// Binds `router.metrics_listen` if set; the error names the key.
async fn bind_metrics(config: &RouterConfig) -> std::io::Result<Option<TcpListener>> {
    let Some(addr) = &config.metrics_listen else {
        return Ok(None);
    };
    TcpListener::bind(addr).await.map(Some).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("router.metrics_listen: cannot listen on {addr}: {e}"),
        )
    })
}

impl Router {
    /// Binds `config.listen` (port 0 picks a free port; see [`Router::local_addr`]).
    /// The TLS certificate and key, when configured, are loaded first: a file that
    /// cannot be used fails here, with the config key and path in the message.
    pub async fn bind(config: RouterConfig, catalog: CatalogHandle) -> std::io::Result<Router> {
        let tls = TlsMode::from_config(&config).map_err(invalid_input)?;
        let listener = bind_listen(&config).await?;
        let metrics = bind_metrics(&config).await?;
        let mut ctx = RouterCtx::new(config, catalog);
        ctx.tls = tls;
        Ok(Router {
            ctx: Arc::new(ctx),
            listener,
            metrics,
        })
    }

    /// Like [`Router::bind`], with two-phase commit logging to the catalog database at
    /// `catalog_conninfo` (multi-shard transactions and writes become possible).
    pub async fn bind_with_catalog(
        config: RouterConfig,
        catalog: CatalogHandle,
        catalog_conninfo: &str,
    ) -> std::io::Result<Router> {
        let tls = TlsMode::from_config(&config).map_err(invalid_input)?;
        let twopc = TwoPc::new(catalog_conninfo).map_err(invalid_input)?;
        let listener = bind_listen(&config).await?;
        let metrics = bind_metrics(&config).await?;
        let mut ctx = RouterCtx::new(config, catalog);
        ctx.tls = tls;
        ctx.twopc = Some(twopc);
        Ok(Router {
            ctx: Arc::new(ctx),
            listener,
            metrics,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the metrics endpoint, when `router.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn ctx(&self) -> Arc<RouterCtx> {
        self.ctx.clone()
    }

    /// Serves until `shutdown`, then waits (at most [`SESSIONS_WAIT`]) for sessions to
    /// end.
    pub async fn serve(mut self, shutdown: CancellationToken) {
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(crate::metrics::serve(
                self.ctx.clone(),
                listener,
                shutdown.clone(),
            ));
        }
        // Lag and read-your-writes observations for replica reads (any session may
        // turn them on with SET pgshard.read_from, so the probe always runs; it
        // costs one query per node per interval, and nothing without replicas).
        tokio::spawn(crate::reads::probe::run(
            self.ctx.config.clone(),
            self.ctx.catalog.clone(),
            self.ctx.reads.clone(),
            shutdown.clone(),
        ));
        // Deadlocks spanning shards (idle unless a transaction's statement runs
        // longer than the check interval).
        tokio::spawn(crate::deadlock::run(self.ctx.clone(), shutdown.clone()));
        let limit = Arc::new(Semaphore::new(self.ctx.config.max_clients.max(1) as usize));
        let tracker = TaskTracker::new();
        let workers = match Workers::start(self.ctx.config.workers as usize) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "could not start session threads; sessions run on the main runtime");
                None
            }
        };
        tracing::info!(
            addr = ?self.listener.local_addr().ok(),
            workers = workers.as_ref().map_or(0, Workers::len),
            "router listening"
        );
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => r,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            crate::stats::bump(&self.ctx.stats.connections);
            let permit = limit.clone().try_acquire_owned().ok();
            let ctx = self.ctx.clone();
            let token = shutdown.child_token();
            match &workers {
                Some(w) => {
                    // Registered again on the session thread's event loop, which then
                    // drives the socket (else every readiness event would cross from
                    // this thread's loop to the session's).
                    let Ok(std_stream) = stream.into_std() else {
                        continue;
                    };
                    w.spawn(tracker.track_future(async move {
                        match TcpStream::from_std(std_stream) {
                            Ok(stream) => serve_client(ctx, stream, addr, permit, token).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not register a client socket")
                            }
                        }
                    }));
                }
                None => {
                    tokio::spawn(tracker.track_future(async move {
                        serve_client(ctx, stream, addr, permit, token).await;
                    }));
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(SESSIONS_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = tracker.len(),
                "sessions still running at shutdown"
            );
        }
    }
}

fn invalid_input<E>(e: E) -> std::io::Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

/// One client connection, from the first byte to the close: startup on the socket's
/// owned halves, and on an accepted SSLRequest the TLS handshake and the rest of startup
/// over TLS. The whole startup, TLS included, has [`STARTUP_TIMEOUT`].
async fn serve_client(
    ctx: Arc<RouterCtx>,
    stream: TcpStream,
    addr: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let max_message = ctx.config.max_message_bytes as usize;
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, max_message);
    // Small: it grows while an answer needs it, and an idle client holds only what its
    // greeting took (issue 16: memory per idle client).
    let mut out = BytesMut::with_capacity(1024);
    let hs = tokio::time::timeout_at(
        deadline,
        handshake(&ctx, &mut reader, &mut w, &mut out, false),
    )
    .await;
    let acceptor = match hs {
        Ok(Ok(Handshake::StartTls(acceptor))) => acceptor,
        hs => return start_session(ctx, hs, reader, w, out, addr, permit, shutdown).await,
    };
    // `handshake` answered `S` only with nothing buffered, so no byte is lost here.
    let (r, _) = reader.into_parts();
    let Ok(tcp) = r.reunite(w) else {
        return;
    };
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Garbage or a failed handshake after `S`: nothing can be said in the clear.
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (r, mut w) = tokio::io::split(ServerTls::new(tls));
    let mut reader = FrameReader::new(r, max_message);
    let hs = tokio::time::timeout_at(
        deadline,
        handshake(&ctx, &mut reader, &mut w, &mut out, true),
    )
    .await;
    start_session(ctx, hs, reader, w, out, addr, permit, shutdown).await
}

/// After startup: the error, or the greeting and the session (or the admin console).
#[allow(clippy::too_many_arguments)]
async fn start_session<R, W>(
    ctx: Arc<RouterCtx>,
    hs: Result<Result<Handshake, SessionError>, tokio::time::error::Elapsed>,
    reader: FrameReader<R>,
    mut w: W,
    mut out: BytesMut,
    addr: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let fail = |e: SessionError, out: &mut BytesMut| {
        let mut b = BytesMut::new();
        e.encode(&mut b);
        out.extend_from_slice(&b);
    };
    let (user, database, params) = match hs {
        Ok(Ok(Handshake::Session {
            user,
            database,
            params,
        })) => (user, database, params),
        // `StartTls` comes only from a plaintext handshake, which the caller handles.
        Ok(Ok(Handshake::Done | Handshake::StartTls(_))) => return,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "startup failed");
            fail(e, &mut out);
            let _ = w.write_all(&out).await;
            let _ = w.flush().await;
            return;
        }
        Err(_) => return,
    };
    if permit.is_none() {
        fail(SessionError::TooManyClients, &mut out);
        let _ = w.write_all(&out).await;
        let _ = w.flush().await;
        return;
    }
    let registration = ctx.clients.register(&user, &database, Some(addr));
    let entry = registration.entry.clone();
    let span = tracing::info_span!("session", pid = entry.pid, %user, db = %database, %addr);
    async move {
        let vars = SessionVars::from_startup(&params);
        if database == ADMIN_DATABASE {
            out.extend_from_slice(&crate::admin::greeting(entry.pid, entry.secret()));
            crate::admin::serve(ctx, reader, w, out, shutdown).await;
            return;
        }
        match server_params(&ctx, &user, &database).await {
            Ok(p) => greeting(&mut out, &p, &vars, entry.pid, entry.secret()),
            Err(e) => {
                tracing::info!(error = %e, "no shard connection for the new client");
                fail(e, &mut out);
                let _ = w.write_all(&out).await;
                let _ = w.flush().await;
                return;
            }
        }
        tracing::debug!("session started");
        Session::new(ctx, entry, user, database, vars, reader, w, out, shutdown)
            .run()
            .await;
        tracing::debug!("session ended");
        drop(registration);
        drop(permit);
    }
    .instrument(span)
    .await
}

/// The ParameterStatus set of the local shard's primary for this user and database
/// (learned from its first connection). Connecting also proves the database and role
/// exist on the shards; a shard's error is passed on as is.
async fn server_params(
    ctx: &RouterCtx,
    user: &str,
    database: &str,
) -> Result<Arc<Vec<(String, String)>>, SessionError> {
    let catalog = ctx.catalog.current();
    let shard = catalog.local_shard;
    let node = catalog
        .primary(shard)
        .ok_or(SessionError::NoPrimary(shard))?;
    let pool = ctx.pools.get(node, user, database);
    if let Some(p) = pool.server_params() {
        return Ok(p);
    }
    // Held through a change of primary, like any statement.
    let conn = crate::hold::checkout_primary(ctx, shard, user, database, false).await?;
    drop(conn);
    let catalog = ctx.catalog.current();
    let node = catalog
        .primary(shard)
        .ok_or(SessionError::NoPrimary(shard))?;
    ctx.pools
        .get(node, user, database)
        .server_params()
        .ok_or(SessionError::NoPrimary(shard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgshard_catalog::{Catalog, CatalogVersion, Shard, ShardId};

    fn catalog() -> Catalog {
        Catalog {
            version: CatalogVersion(1),
            buckets: 4,
            bucket_map: vec![ShardId(1); 4],
            shards: vec![Shard::active(ShardId(1))],
            nodes: Vec::new(),
            tables: Vec::new(),
            local_shard: ShardId(1),
            frozen: Default::default(),
            moving: Vec::new(),
            views: Vec::new(),
        }
    }

    /// Every client holds its task's future for as long as it is connected, idle or
    /// not, and the future is as large as its largest state (issue 16: memory per idle
    /// client). The rarely taken paths are boxed so that the task stays small.
    #[tokio::test]
    async fn the_session_task_is_small() {
        let ctx = Arc::new(RouterCtx::new(
            RouterConfig::default(),
            CatalogHandle::new(catalog()),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, addr) = listener.accept().await.expect("accept");
        let (r, w) = stream.into_split();
        let entry = ctx.clients.register("u", "d", Some(addr)).entry.clone();
        let session = Session::new(
            ctx.clone(),
            entry,
            "u".into(),
            "d".into(),
            SessionVars::default(),
            FrameReader::new(r, 1 << 20),
            w,
            BytesMut::new(),
            CancellationToken::new(),
        );
        let run = session.run();
        let run_size = std::mem::size_of_val(&run);
        drop(run);
        let (stream, addr) = {
            let _c = TcpStream::connect(listener.local_addr().expect("address"))
                .await
                .expect("connect");
            listener.accept().await.expect("accept")
        };
        let task = serve_client(ctx, stream, addr, None, CancellationToken::new());
        let task_size = std::mem::size_of_val(&task);
        println!("session task future: {task_size} bytes; Session::run future: {run_size} bytes");
        // 10,464 bytes in a debug build before the rarely taken paths were boxed, 7,968
        // after (a release build's are smaller). A path that grows it past this bound
        // should be boxed where it is called.
        assert!(
            task_size <= 9 * 1024,
            "session task future of {task_size} bytes"
        );
    }
}

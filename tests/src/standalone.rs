//! One plain PostgreSQL 15, initialised and configured exactly like a pgshard shard
//! (same initdb options, same generated `postgresql.conf`), for differential tests and
//! for tests that need a real server without a cluster.

use anyhow::Context;
use pgshard_catalog::NodeRole;
use pgshard_shardd::runtime::{
    LocalOptions, LocalProcess, NodeRuntime, NodeSpec, ProcessLifecycle, Readiness, RuntimeError,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tempfile::TempDir;
use tokio_postgres::Client;

/// Attempts at picking a port before giving up (another process may take a free port
/// between our check and the server's bind).
const PORT_ATTEMPTS: usize = 5;

/// A running PostgreSQL in a temporary directory, stopped and removed on drop.
pub struct Standalone {
    // Field order is drop order: the runtime (which stops the server) goes before the
    // directory is removed.
    runtime: LocalProcess,
    spec: NodeSpec,
    _dir: TempDir,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("port", &self.spec.port)
            .field("dir", &self.spec.dir)
            .finish()
    }
}

impl Standalone {
    /// Start a server with the shard settings.
    pub async fn start() -> anyhow::Result<Standalone> {
        Self::start_with(BTreeMap::new()).await
    }

    /// Start a server with extra `postgresql.conf` settings.
    pub async fn start_with(settings: BTreeMap<String, String>) -> anyhow::Result<Standalone> {
        crate::init_tracing();
        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            match Self::try_start(&settings).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_port_conflict() => {
                    tracing::warn!(attempt, error = %e, "port taken; retrying with another");
                    last_err = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.map(anyhow::Error::from).unwrap_or_else(|| {
            anyhow::anyhow!("could not start PostgreSQL after {PORT_ATTEMPTS} attempts")
        }))
    }

    async fn try_start(settings: &BTreeMap<String, String>) -> Result<Standalone, RuntimeError> {
        let dir = crate::dirs::temp_dir("standalone").map_err(|source| RuntimeError::Io {
            context: "could not create a temporary directory".into(),
            source,
        })?;
        let port = crate::ports::free_port().map_err(|source| RuntimeError::Io {
            context: "could not find a free port".into(),
            source,
        })?;
        let runtime = LocalProcess::new(LocalOptions {
            pg_bin_dir: std::env::var_os("PGSHARD_PG_BIN_DIR").map(Into::into),
            pg_user: "postgres".into(),
            lifecycle: ProcessLifecycle::Owned,
            fast_init: true,
            ctl_timeout: Duration::from_secs(60),
        })?;
        let spec = NodeSpec {
            name: "standalone".into(),
            role: NodeRole::Primary,
            shard: None,
            host: "127.0.0.1".into(),
            port,
            dir: dir.path().join("standalone"),
            settings: settings.clone(),
            upstream: None,
            socket_dir: None,
        };
        runtime.init_primary(&spec).await?;
        runtime.start(&spec).await?;
        runtime
            .wait_ready(&spec, Readiness::Accepting, Duration::from_secs(60))
            .await?;
        Ok(Standalone {
            runtime,
            spec,
            _dir: dir,
        })
    }

    pub fn host(&self) -> &str {
        &self.spec.host
    }

    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// A libpq connection string for the `postgres` database as superuser `postgres`.
    pub fn connstr(&self) -> String {
        self.spec.connstr("postgres")
    }

    /// A libpq connection string for another database.
    pub fn connstr_db(&self, dbname: &str) -> String {
        self.spec.connstr(dbname)
    }

    /// A connected client (its connection is driven on a background task).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_db("postgres").await
    }

    /// A connected client to another database.
    pub async fn connect_db(&self, dbname: &str) -> anyhow::Result<Client> {
        pgshard_shardd::runtime::ready::connect(
            &self.spec.pg_config(dbname, Duration::from_secs(10)),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("connecting to {}", self.connstr_db(dbname)))
    }

    /// The postmaster's process id.
    pub async fn pid(&self) -> anyhow::Result<Option<u32>> {
        Ok(self.runtime.pid(&self.spec).await?)
    }

    /// The node spec (directory, settings) of this server.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// The server log.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.runtime.logs_path(&self.spec)
    }

    /// Stop the server now (fast shutdown) rather than at drop.
    pub async fn stop(&self) -> anyhow::Result<()> {
        Ok(self.runtime.stop(&self.spec).await?)
    }
}

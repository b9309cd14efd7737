//! Readiness checks shared by every runtime: connect with backoff and ask PostgreSQL
//! whether the instance serves, instead of sleeping and hoping.
//!
//! A replica is ready only when its primary lists it in `pg_stat_replication` as
//! `streaming` (and, when the primary waits for synchronous standbys, as `sync` or
//! `quorum`): only then does an acknowledged commit on the primary imply a copy on it.

use super::{NodeRuntime, NodeSpec, RuntimeError};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// What "ready" means for one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Accepts connections and answers `SELECT 1` (a primary, or a replica in hot
    /// standby).
    Accepting,
    /// Accepting and out of recovery: takes writes (a promoted replica).
    Writable,
    /// A replica that its upstream primary shows as `streaming`; with `sync`, also with
    /// `sync_state` `sync` or `quorum`.
    Streaming { sync: bool },
}

/// Connect to `config` within `timeout`, driving the connection on a background task
/// that ends when the returned client is dropped.
pub async fn connect(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed with error");
        }
    });
    Ok(client)
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
}

/// The replication state of `replica` as its primary reports it: `(state, sync_state)`,
/// or `None` if the primary does not list it.
pub async fn replication_state(
    primary: &Client,
    replica_slot_name: &str,
) -> Result<Option<(String, String)>, tokio_postgres::Error> {
    let row = primary
        .query_opt(
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
            &[&replica_slot_name],
        )
        .await?;
    Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))))
}

/// One readiness check; `Err` carries why it is not ready yet.
async fn check(spec: &NodeSpec, want: Readiness, attempt_timeout: Duration) -> Result<(), String> {
    let client = connect(
        &spec.pg_config("postgres", attempt_timeout),
        attempt_timeout,
    )
    .await
    .map_err(|e| format!("cannot connect: {e}"))?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| format!("SELECT failed: {e}"))?
        .get(0);
    match want {
        Readiness::Accepting => Ok(()),
        Readiness::Writable if in_recovery => Err("still in recovery".into()),
        Readiness::Writable => Ok(()),
        Readiness::Streaming { sync } => {
            if !in_recovery {
                return Err("not a standby (not in recovery)".into());
            }
            let up = spec
                .upstream
                .as_ref()
                .ok_or_else(|| "replica has no upstream".to_string())?;
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(&up.host)
                .port(up.port)
                .user(super::SUPERUSER)
                .dbname("postgres")
                .application_name("shardd")
                .connect_timeout(attempt_timeout);
            let primary = connect(&cfg, attempt_timeout)
                .await
                .map_err(|e| format!("cannot connect to primary {}: {e}", up.name))?;
            match replication_state(&primary, &spec.slot_name())
                .await
                .map_err(|e| format!("pg_stat_replication on {} failed: {e}", up.name))?
            {
                None => Err(format!("not yet in {}'s pg_stat_replication", up.name)),
                Some((state, _)) if state != "streaming" => {
                    Err(format!("replication state is {state}"))
                }
                Some((_, sync_state)) if sync && sync_state != "sync" && sync_state != "quorum" => {
                    Err(format!("sync_state is {sync_state}"))
                }
                Some(_) => Ok(()),
            }
        }
    }
}

/// Poll `spec` until it is ready as `want` says, with exponential backoff between
/// checks (10 ms up to 250 ms). Fails at once if the process exits, attaching the end of
/// its log.
pub async fn wait_ready<R: NodeRuntime + ?Sized>(
    rt: &R,
    spec: &NodeSpec,
    want: Readiness,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        let remaining = timeout.saturating_sub(started.elapsed());
        let attempt = remaining.clamp(Duration::from_millis(100), Duration::from_secs(3));
        let reason = match check(spec, want, attempt).await {
            Ok(()) => {
                tracing::debug!(node = %spec.name, ?want, elapsed = ?started.elapsed(), "node ready");
                return Ok(());
            }
            Err(reason) => reason,
        };
        if !rt.is_running(spec).await? {
            return Err(RuntimeError::Exited {
                node: spec.name.clone(),
                status: "server process is not running".into(),
                log_tail: super::log_tail(&rt.logs_path(spec), 20),
            });
        }
        if started.elapsed() >= timeout {
            return Err(RuntimeError::NotReady {
                node: spec.name.clone(),
                waited: started.elapsed(),
                reason,
                log_tail: super::log_tail(&rt.logs_path(spec), 20),
            });
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Create the physical replication slot `spec` (a replica) will stream from on its
/// upstream primary. Idempotent: a previous attempt may have created it already. Shared
/// by every runtime, since the slot lives in PostgreSQL, not in the runtime.
pub async fn ensure_replication_slot(spec: &super::NodeSpec) -> Result<(), super::RuntimeError> {
    use super::RuntimeError;
    let up = spec.upstream.as_ref().ok_or_else(|| RuntimeError::Spec {
        node: spec.name.clone(),
        message: "a replica needs an upstream primary".into(),
    })?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&up.host)
        .port(up.port)
        .user(super::SUPERUSER)
        .dbname("postgres")
        .application_name("shardd");
    let primary = connect(&cfg, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| RuntimeError::Spec {
            node: spec.name.clone(),
            message: format!("cannot connect to primary {}: {e}", up.name),
        })?;
    primary
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&spec.slot_name()],
        )
        .await
        .map_err(|source| RuntimeError::Sql {
            node: up.name.clone(),
            context: "could not create replication slot".into(),
            source,
        })?;
    Ok(())
}

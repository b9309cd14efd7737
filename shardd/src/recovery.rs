//! Two-phase commit recovery (SPEC §7, §13): finish or roll back every distributed
//! transaction a crash left prepared on a shard.
//!
//! Every [`RecoveryOptions::interval`] (and at once when shardd starts), one round:
//!
//! 1. read the decision records from the catalog (`pgshard.transactions`, the catalog
//!    protocol's), then, on every shard primary, create the decision table
//!    (`pgshard_2pc.decisions`, see `pgshard_catalog::twopc`) in every database that
//!    lacks it and read its rows;
//! 2. list `pg_prepared_xacts` on every shard primary, keeping the GIDs that parse as
//!    ours ([`Gid`]);
//! 3. for each: a commit decision → `COMMIT PREPARED`; no decision and prepared longer
//!    ago than [`RecoveryOptions::abort_after`] (by the shard's clock) → decide: a GID
//!    naming a coordinator shard C gets an `aborted` row inserted on C
//!    ([`twopc::DECIDE_ABORT_SQL`], which waits for C's transaction if it still runs and
//!    loses to its committed decision), the others an abort record in the catalog
//!    ([`twopc::record_abort`], which loses to a coordinator that recorded its commit
//!    first); then `ROLLBACK PREPARED` or `COMMIT PREPARED` as the decision says. No
//!    decision and younger → left alone, *in doubt*: its coordinator may still be
//!    between PREPARE and its commit point;
//! 4. delete the decisions (records and rows) no shard holds any more: read before the
//!    listing, so each was taken after every PREPARE of its transaction; aborted ones
//!    only after [`RecoveryOptions::abort_retention`], so a coordinator that stalled past
//!    the bound still finds its commit refused.
//!
//! Each step is safe to repeat after any crash (shardd's, a router's, a shard's):
//! COMMIT/ROLLBACK PREPARED of a GID that is gone is skipped, decisions never change
//! once written, and a record is deleted only when its transaction is finished
//! everywhere. `COMMIT PREPARED` must run in the database the transaction was prepared
//! in, so recovery connects to each such database as the superuser.
//!
//! What stays in doubt after a round is published for `GET /v1/transactions` (and the
//! admin console's `SHOW TRANSACTIONS`).

use crate::cluster::Cluster;
use crate::runtime::{ready, NodeSpec};
use pgshard_catalog::store::CATALOG_DB;
use pgshard_catalog::twopc::{self, Decision, Gid, Record, GID_PREFIX};
use pgshard_catalog::ShardId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_postgres::error::Error as PgError;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// How recovery runs.
#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    /// Time between rounds.
    pub interval: Duration,
    /// A prepared transaction with no decision is rolled back once it is this old.
    /// Must exceed any coordinator's PREPARE → commit-record window; a coordinator that
    /// is slower only has its commit refused, never a split outcome.
    pub abort_after: Duration,
    /// How long an abort decision is kept after no shard holds its transaction.
    pub abort_retention: Duration,
    /// Bound on connecting and on each statement.
    pub timeout: Duration,
}

/// Test-only override of [`RecoveryOptions::abort_after`] in milliseconds, read by
/// [`RecoveryOptions::default`] (what shardd uses): crash tests that run a real shardd
/// must not wait 30 s for each rollback. Like the router's `PGSHARD_FAULT`, it is not a
/// configuration key on purpose: a short bound in production only turns slow commits
/// into refused ones.
pub const ABORT_AFTER_ENV: &str = "PGSHARD_2PC_ABORT_AFTER_MS";

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            interval: Duration::from_secs(5),
            abort_after: abort_after_from_env().unwrap_or(Duration::from_secs(30)),
            abort_retention: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        }
    }
}

/// [`ABORT_AFTER_ENV`] if set to a number of milliseconds; otherwise `None` (an
/// unparsable value is logged and ignored).
fn abort_after_from_env() -> Option<Duration> {
    let v = std::env::var(ABORT_AFTER_ENV)
        .ok()
        .filter(|v| !v.is_empty())?;
    match v.parse::<u64>() {
        Ok(ms) => {
            tracing::warn!(
                ms,
                "2PC recovery bound set by {ABORT_AFTER_ENV} (tests only)"
            );
            Some(Duration::from_millis(ms))
        }
        Err(_) => {
            tracing::error!(value = %v, "ignoring {ABORT_AFTER_ENV}: not a number of milliseconds");
            None
        }
    }
}

/// One prepared transaction that a round left in place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InDoubt {
    pub gid: String,
    pub shard: ShardId,
    /// The instance holding it (the shard's primary).
    pub node: String,
    pub database: String,
    pub prepared_at: SystemTime,
    /// Age when last seen, by the shard's clock.
    pub age_ms: u64,
    /// The recorded decision, if any (then finishing it failed and is retried).
    pub decision: Option<Decision>,
}

/// What shardd publishes for `GET /v1/transactions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransactionsStatus {
    /// When the last round finished; `None` before the first one.
    pub checked_at: Option<SystemTime>,
    pub in_doubt: Vec<InDoubt>,
    /// Why the last round could not do everything (unreachable shard or catalog).
    pub errors: Vec<String>,
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct RoundReport {
    /// `(gid, shard)` finished with COMMIT PREPARED.
    pub committed: Vec<(String, ShardId)>,
    /// `(gid, shard)` finished with ROLLBACK PREPARED.
    pub rolled_back: Vec<(String, ShardId)>,
    /// Records deleted.
    pub forgotten: Vec<String>,
    pub in_doubt: Vec<InDoubt>,
    pub errors: Vec<String>,
}

/// A shard primary recovery looks at.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    pub shard: ShardId,
    pub spec: NodeSpec,
}

/// One prepared transaction as listed on a shard.
#[derive(Debug, Clone)]
struct Prepared {
    gid: Gid,
    database: String,
    prepared_at: SystemTime,
    age: Duration,
}

/// Recovery's state between rounds: connections, kept and re-established.
pub struct Recovery {
    opts: RecoveryOptions,
    catalog: NodeSpec,
    shards: Vec<ShardTarget>,
    /// When set, the shard primaries are re-read from its layout at every round, so a
    /// failover's new primary is the one recovered.
    cluster: Option<Arc<Cluster>>,
    catalog_client: Option<Client>,
    /// By (node name, database).
    conns: HashMap<(String, String), Client>,
    /// (node name, database) known to hold the decision table.
    tables: BTreeSet<(String, String)>,
}

/// A decision row on a coordinator shard: aborted?, and how long ago it was taken.
#[derive(Debug, Clone, Copy)]
struct Row {
    aborted: bool,
    age: Duration,
}

/// The decision rows read in one round, by (coordinator shard, database), then gid.
type Rows = BTreeMap<(ShardId, String), BTreeMap<String, Row>>;

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("opts", &self.opts)
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the layout has no catalog node")]
    NoCatalog,
    #[error("catalog unreachable: {0}")]
    Catalog(String),
}

impl Recovery {
    /// Recovery over a cluster's catalog node and shard primaries as they are now.
    pub fn new(cluster: &Cluster, opts: RecoveryOptions) -> Result<Recovery, RecoveryError> {
        let layout = cluster.layout();
        let catalog = layout
            .catalog()
            .map(|n| layout.spec(n, cluster.config()))
            .ok_or(RecoveryError::NoCatalog)?;
        Ok(Recovery::with_targets(
            catalog,
            shard_targets(cluster),
            opts,
        ))
    }

    /// Recovery that follows the cluster's topology: every round recovers the shard
    /// primaries of the layout at that moment.
    pub fn following(
        cluster: Arc<Cluster>,
        opts: RecoveryOptions,
    ) -> Result<Recovery, RecoveryError> {
        let mut r = Recovery::new(&cluster, opts)?;
        r.cluster = Some(cluster);
        Ok(r)
    }

    /// Recovery over explicit instances.
    pub fn with_targets(
        catalog: NodeSpec,
        shards: Vec<ShardTarget>,
        opts: RecoveryOptions,
    ) -> Recovery {
        Recovery {
            opts,
            catalog,
            shards,
            cluster: None,
            catalog_client: None,
            conns: HashMap::new(),
            tables: BTreeSet::new(),
        }
    }

    pub fn options(&self) -> &RecoveryOptions {
        &self.opts
    }

    async fn catalog(&mut self) -> Result<&Client, RecoveryError> {
        if self.catalog_client.as_ref().is_none_or(|c| c.is_closed()) {
            let c = ready::connect(
                &self.catalog.pg_config(CATALOG_DB, self.opts.timeout),
                self.opts.timeout,
            )
            .await
            .map_err(|e| RecoveryError::Catalog(e.to_string()))?;
            self.catalog_client = Some(c);
        }
        self.catalog_client
            .as_ref()
            .ok_or_else(|| RecoveryError::Catalog("no connection".into()))
    }

    async fn conn(&mut self, spec: &NodeSpec, db: &str) -> Result<&Client, String> {
        let key = (spec.name.clone(), db.to_string());
        if self.conns.get(&key).is_none_or(|c| c.is_closed()) {
            let c = ready::connect(&spec.pg_config(db, self.opts.timeout), self.opts.timeout)
                .await
                .map_err(|e| format!("cannot connect to {} ({db}): {e}", spec.name))?;
            self.conns.insert(key.clone(), c);
        }
        self.conns
            .get(&key)
            .ok_or_else(|| format!("no connection to {}", spec.name))
    }

    /// A statement's result under the statement timeout; a broken or timed-out
    /// connection is dropped so the next use reconnects.
    fn settle<T>(
        &mut self,
        spec: &NodeSpec,
        db: &str,
        what: &str,
        r: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, StepError> {
        let key = (spec.name.clone(), db.to_string());
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.code().is_none() {
                    self.conns.remove(&key);
                }
                Err(StepError::Pg(e))
            }
            Err(_) => {
                self.conns.remove(&key);
                Err(StepError::Other(format!(
                    "{what} on {} timed out after {:?}",
                    spec.name, self.opts.timeout
                )))
            }
        }
    }

    async fn list_prepared(&mut self, target: &ShardTarget) -> Result<Vec<Prepared>, String> {
        let timeout = self.opts.timeout;
        let client = self.conn(&target.spec, "postgres").await?;
        let r = tokio::time::timeout(
            timeout,
            client.query(
                "SELECT gid, database::text, prepared,
                        GREATEST(extract(epoch FROM now() - prepared), 0)::float8
                   FROM pg_prepared_xacts
                  WHERE starts_with(gid, $1)",
                &[&GID_PREFIX],
            ),
        )
        .await;
        let rows = self
            .settle(&target.spec, "postgres", "listing prepared transactions", r)
            .map_err(|e| format!("{}: listing prepared transactions: {e}", target.spec.name))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let gid = Gid::parse(r.get::<_, &str>(0))?;
                Some(Prepared {
                    gid,
                    database: r.get(1),
                    prepared_at: r.get(2),
                    age: Duration::try_from_secs_f64(r.get(3)).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// COMMIT PREPARED or ROLLBACK PREPARED one transaction on one shard. `Ok(false)`:
    /// it was already gone.
    async fn finish(
        &mut self,
        target: &ShardTarget,
        p: &Prepared,
        commit: bool,
    ) -> Result<bool, String> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let sql = format!("{verb} PREPARED {}", p.gid.literal());
        let timeout = self.opts.timeout;
        let client = self.conn(&target.spec, &p.database).await?;
        let r = tokio::time::timeout(timeout, client.batch_execute(&sql)).await;
        match self.settle(&target.spec, &p.database, &sql, r) {
            Ok(()) => Ok(true),
            Err(StepError::Pg(e)) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(false),
            Err(e) => Err(format!("{}: {sql}: {e}", target.spec.name)),
        }
    }

    /// On one shard primary: create the decision table in every database that lacks
    /// it, and read every decision row.
    async fn decision_rows(&mut self, target: &ShardTarget, rows: &mut Rows) -> Result<(), String> {
        let timeout = self.opts.timeout;
        let spec = target.spec.clone();
        let client = self.conn(&spec, "postgres").await?;
        let r = tokio::time::timeout(
            timeout,
            client.query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
                &[],
            ),
        )
        .await;
        let dbs: Vec<String> = self
            .settle(&spec, "postgres", "listing databases", r)
            .map_err(|e| format!("{}: listing databases: {e}", spec.name))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut errors = Vec::new();
        for db in dbs {
            let key = (spec.name.clone(), db.clone());
            if !self.tables.contains(&key) {
                let client = self.conn(&spec, &db).await?;
                let r =
                    tokio::time::timeout(timeout, client.batch_execute(twopc::DECISIONS_DDL)).await;
                match self.settle(&spec, &db, "creating the decision table", r) {
                    Ok(()) => {
                        tracing::debug!(node = %spec.name, %db, "decision table ready");
                        self.tables.insert(key);
                    }
                    Err(e) => {
                        errors.push(format!(
                            "{} ({db}): creating the decision table: {e}",
                            spec.name
                        ));
                        continue;
                    }
                }
            }
            let client = self.conn(&spec, &db).await?;
            let r =
                tokio::time::timeout(timeout, client.query(twopc::LIST_DECISIONS_SQL, &[])).await;
            match self.settle(&spec, &db, "reading decisions", r) {
                Ok(listed) => {
                    let entry = rows.entry((target.shard, db.clone())).or_default();
                    for r in listed {
                        let age: f64 = r.get(2);
                        entry.insert(
                            r.get(0),
                            Row {
                                aborted: r.get(1),
                                age: Duration::try_from_secs_f64(age).unwrap_or_default(),
                            },
                        );
                    }
                }
                Err(e) => {
                    if matches!(&e, StepError::Pg(pg) if pg.code() == Some(&SqlState::UNDEFINED_TABLE))
                    {
                        // Dropped by someone: create it again next round.
                        self.tables.remove(&(spec.name.clone(), db.clone()));
                    }
                    errors.push(format!("{} ({db}): reading decisions: {e}", spec.name));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Decide a transaction coordinated on shard `coordinator` that has no decision
    /// row: insert an aborted one there unless the coordinator's commit holds the key
    /// (waiting, up to the timeout, for a coordinator transaction still running).
    /// Returns whether the transaction commits.
    async fn decide_on_shard(
        &mut self,
        coordinator: ShardId,
        p: &Prepared,
    ) -> Result<bool, String> {
        let target = self
            .shards
            .iter()
            .find(|t| t.shard == coordinator)
            .cloned()
            .ok_or_else(|| format!("coordinator shard {coordinator} has no primary"))?;
        let spec = &target.spec;
        let timeout = self.opts.timeout;
        let gid = p.gid.as_str();
        // The server gives up waiting on its own before our timeout drops the client.
        let lock_timeout = format!("SET lock_timeout = {}", (timeout.as_millis() / 2).max(1));
        let client = self.conn(spec, &p.database).await?;
        let r = tokio::time::timeout(timeout, async {
            client.batch_execute(&lock_timeout).await?;
            if client
                .query_opt(twopc::DECIDE_ABORT_SQL, &[&gid])
                .await?
                .is_some()
            {
                return Ok::<_, PgError>(Some(true));
            }
            // The key existed: a new statement sees the committed row.
            Ok(client
                .query_opt(
                    "SELECT aborted FROM pgshard_2pc.decisions WHERE gid = $1",
                    &[&gid],
                )
                .await?
                .map(|r| r.get::<_, bool>(0)))
        })
        .await;
        match self.settle(spec, &p.database, "deciding", r) {
            Ok(Some(aborted)) => Ok(!aborted),
            Ok(None) => Err(format!("{}: the decision row of {gid} vanished", spec.name)),
            Err(e) => Err(format!(
                "{} ({}): deciding {gid}: {e}",
                spec.name, p.database
            )),
        }
    }

    /// One recovery round (see the module doc).
    pub async fn run_once(&mut self) -> Result<RoundReport, RecoveryError> {
        if let Some(cluster) = &self.cluster {
            self.shards = shard_targets(cluster);
            let layout = cluster.layout();
            if let Some(spec) = layout.catalog().map(|n| layout.spec(n, cluster.config())) {
                if spec.name != self.catalog.name {
                    // The catalog failed over: its new node from now on.
                    self.catalog = spec;
                    self.catalog_client = None;
                }
            }
        }
        let timeout = self.opts.timeout;
        let mut report = RoundReport::default();
        // Read before listing: a record seen now was written after every PREPARE of
        // its transaction, so a shard not listing it afterwards has finished it.
        let records: BTreeMap<String, Record> = {
            let catalog = self.catalog().await?;
            let listed = tokio::time::timeout(timeout, twopc::list(catalog)).await;
            match listed {
                Ok(Ok(rs)) => rs.into_iter().map(|r| (r.gid.clone(), r)).collect(),
                Ok(Err(e)) => {
                    self.catalog_client = None;
                    return Err(RecoveryError::Catalog(e.to_string()));
                }
                Err(_) => {
                    self.catalog_client = None;
                    return Err(RecoveryError::Catalog("listing records timed out".into()));
                }
            }
        };

        // Also before listing, for the same reason.
        let mut rows = Rows::new();
        let mut rows_read = true;
        for target in self.shards.clone() {
            if let Err(e) = self.decision_rows(&target, &mut rows).await {
                rows_read = false;
                tracing::warn!(shard = %target.shard, error = %e, "2PC recovery cannot read decisions");
                report.errors.push(e);
            }
        }
        let read_rows = rows.clone();

        let mut all_listed = true;
        let mut found: Vec<(ShardTarget, Prepared)> = Vec::new();
        for target in self.shards.clone() {
            match self.list_prepared(&target).await {
                Ok(ps) => found.extend(ps.into_iter().map(|p| (target.clone(), p))),
                Err(e) => {
                    all_listed = false;
                    tracing::warn!(shard = %target.shard, error = %e, "2PC recovery cannot see a shard");
                    report.errors.push(e);
                }
            }
        }
        let mut holders: BTreeMap<String, BTreeSet<ShardId>> = BTreeMap::new();
        for (t, p) in &found {
            holders
                .entry(p.gid.to_string())
                .or_default()
                .insert(t.shard);
        }

        let mut still_held: BTreeSet<String> = BTreeSet::new();
        for (target, p) in &found {
            let gid = p.gid.to_string();
            let mut decision = match p.gid.coordinator() {
                None => records.get(&gid).map(|r| r.decision),
                Some(c) => rows
                    .get(&(c, p.database.clone()))
                    .and_then(|r| r.get(&gid))
                    .map(|r| decision_of(r.aborted)),
            };
            if let (None, Some(c), true) = (
                decision,
                p.gid.coordinator(),
                p.age >= self.opts.abort_after,
            ) {
                match self.decide_on_shard(c, p).await {
                    Ok(commit) => {
                        if !commit {
                            tracing::info!(%gid, age = ?p.age, "no decision on the coordinator shard: rolling back");
                        }
                        rows.entry((c, p.database.clone())).or_default().insert(
                            gid.clone(),
                            Row {
                                aborted: !commit,
                                age: Duration::ZERO,
                            },
                        );
                        decision = Some(decision_of(!commit));
                    }
                    Err(e) => report.errors.push(e),
                }
            }
            if decision.is_none() && p.gid.coordinator().is_none() && p.age >= self.opts.abort_after
            {
                let participants: Vec<ShardId> = holders
                    .get(&gid)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                let decided = match self.catalog().await {
                    Ok(c) => {
                        tokio::time::timeout(timeout, twopc::record_abort(c, &p.gid, &participants))
                            .await
                            .map_err(|_| "recording the abort timed out".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    }
                    Err(e) => Err(e.to_string()),
                };
                match decided {
                    Ok(d) => {
                        if d == Decision::Aborted {
                            tracing::info!(%gid, age = ?p.age, "no commit record: rolling back");
                        }
                        decision = Some(d);
                    }
                    Err(e) => {
                        self.catalog_client = None;
                        report.errors.push(format!("{gid}: deciding: {e}"));
                    }
                }
            }
            let Some(d) = decision else {
                tracing::debug!(%gid, shard = %target.shard, age = ?p.age, "in doubt: waiting for its coordinator");
                still_held.insert(gid.clone());
                report.in_doubt.push(in_doubt(target, p, None));
                continue;
            };
            match self.finish(target, p, d.is_commit()).await {
                Ok(done) => {
                    let verb = if d.is_commit() {
                        "COMMIT PREPARED"
                    } else {
                        "ROLLBACK PREPARED"
                    };
                    if done {
                        tracing::info!(%gid, shard = %target.shard, decision = %d, "recovery: {verb}");
                    }
                    let list = if d.is_commit() {
                        &mut report.committed
                    } else {
                        &mut report.rolled_back
                    };
                    list.push((gid, target.shard));
                }
                Err(e) => {
                    tracing::warn!(%gid, shard = %target.shard, decision = %d, error = %e, "recovery could not finish a transaction");
                    still_held.insert(gid.clone());
                    report.in_doubt.push(in_doubt(target, p, Some(d)));
                    report.errors.push(e);
                }
            }
        }

        // Forget what is finished everywhere.
        if all_listed && rows_read {
            for ((shard, db), listed) in &read_rows {
                let done: Vec<&str> = listed
                    .iter()
                    .filter(|(gid, _)| !still_held.contains(*gid))
                    .filter(|(_, r)| !r.aborted || r.age >= self.opts.abort_retention)
                    .map(|(gid, _)| gid.as_str())
                    .collect();
                if done.is_empty() {
                    continue;
                }
                let Some(target) = self.shards.iter().find(|t| t.shard == *shard).cloned() else {
                    continue;
                };
                let r = match self.conn(&target.spec, db).await {
                    Ok(c) => {
                        let r = tokio::time::timeout(
                            timeout,
                            c.execute(twopc::FORGET_DECISIONS_SQL, &[&done]),
                        )
                        .await;
                        self.settle(&target.spec, db, "forgetting decisions", r)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => report.forgotten.extend(done.iter().map(|s| s.to_string())),
                    Err(e) => report.errors.push(format!(
                        "{} ({db}): forgetting decisions: {e}",
                        target.spec.name
                    )),
                }
            }
        }
        if all_listed {
            let done: Vec<&str> = records
                .values()
                .filter(|r| !still_held.contains(&r.gid))
                .filter(|r| r.decision.is_commit() || r.decided_ago >= self.opts.abort_retention)
                .map(|r| r.gid.as_str())
                .collect();
            if !done.is_empty() {
                let forgotten = match self.catalog().await {
                    Ok(c) => tokio::time::timeout(timeout, twopc::forget_many(c, &done))
                        .await
                        .map_err(|_| "timed out".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match forgotten {
                    Ok(_) => {
                        for gid in &done {
                            tracing::debug!(%gid, "recovery: record forgotten");
                        }
                        report.forgotten = done.iter().map(|s| s.to_string()).collect();
                    }
                    Err(e) => {
                        self.catalog_client = None;
                        report.errors.push(format!("forgetting records: {e}"));
                    }
                }
            }
        }
        Ok(report)
    }
}

/// A decision row as a [`Decision`].
fn decision_of(aborted: bool) -> Decision {
    if aborted {
        Decision::Aborted
    } else {
        Decision::Committing
    }
}

fn in_doubt(target: &ShardTarget, p: &Prepared, decision: Option<Decision>) -> InDoubt {
    InDoubt {
        gid: p.gid.to_string(),
        shard: target.shard,
        node: target.spec.name.clone(),
        database: p.database.clone(),
        prepared_at: p.prepared_at,
        age_ms: p.age.as_millis() as u64,
        decision,
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Pg(tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

/// The shard primaries of a cluster's layout now.
fn shard_targets(cluster: &Cluster) -> Vec<ShardTarget> {
    let layout = cluster.layout();
    layout
        .primaries()
        .filter_map(|n| {
            n.shard.map(|shard| ShardTarget {
                shard,
                spec: layout.spec(n, cluster.config()),
            })
        })
        .collect()
}

/// Run a round at once and then every `interval` until `shutdown`, publishing what
/// stays in doubt into `shared`.
pub async fn run_recovery(
    recovery: Recovery,
    shared: Arc<RwLock<TransactionsStatus>>,
    shutdown: CancellationToken,
) {
    run_recovery_with(
        recovery,
        shared,
        shutdown,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
}

/// [`run_recovery`], also running a round as soon as `now` is notified (after a
/// failover: the new primary's prepared transactions are finished at once).
pub async fn run_recovery_with(
    mut recovery: Recovery,
    shared: Arc<RwLock<TransactionsStatus>>,
    shutdown: CancellationToken,
    now: Arc<tokio::sync::Notify>,
) {
    let mut ticker = tokio::time::interval(recovery.opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            _ = now.notified() => {}
        }
        let round = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = recovery.run_once() => r,
        };
        let status = match round {
            Ok(report) => TransactionsStatus {
                checked_at: Some(SystemTime::now()),
                in_doubt: report.in_doubt,
                errors: report.errors,
            },
            Err(error) => {
                tracing::warn!(%error, "2PC recovery round failed");
                let old = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
                TransactionsStatus {
                    errors: vec![error.to_string()],
                    ..old
                }
            }
        };
        *shared.write().unwrap_or_else(|p| p.into_inner()) = status;
    }
    tracing::debug!("recovery loop stopped");
}

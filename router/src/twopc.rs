//! The two-phase commit coordinator (SPEC §7): how the router ends a transaction that
//! has backends on several shards.
//!
//! - No participant wrote, or exactly one did: plain `COMMIT` everywhere (single-shard
//!   transactions never pay for 2PC).
//! - Several wrote: the first writer is the *coordinator shard* C (the session puts
//!   the one that began writing last first), and its own transaction carries the
//!   commit decision (as Citus does; see `pgshard_catalog::twopc`): every other writer
//!   runs `PREPARE TRANSACTION '<gid>'` (all in parallel), then C gets
//!   `INSERT INTO pgshard_2pc.decisions …; COMMIT` in one message — the commit point,
//!   one durable round trip on a shard that is already a participant (a failed insert
//!   skips the COMMIT and leaves C's transaction aborted: rolled back like a failed
//!   PREPARE) — then `COMMIT PREPARED '<gid>'` on the others in parallel;
//!   read-only participants `COMMIT` in one phase. The gid names C, so recovery knows
//!   where to look. No catalog round trip is on this path; shardd's recovery deletes
//!   the decision rows later, in batches.
//! - C's database lacks the decision table (a database created since shardd's last
//!   recovery round, or a role that may not use it): the first writer is probed once per
//!   backend connection under a savepoint ([`DecisionTable`]); without the table the
//!   transaction falls back to the catalog protocol: `PREPARE` on every writer, the
//!   commit record in the catalog ([`CommitLog::record_commit`], the commit point),
//!   `COMMIT PREPARED` on every writer, and the caller forgets the record afterwards.
//! - A PREPARE (or C's decision insert, or C's COMMIT) fails: `ROLLBACK PREPARED` where
//!   prepared, `ROLLBACK` elsewhere, and the failure goes to the client. Recording the
//!   commit in the catalog fails because recovery already rolled the transaction back:
//!   the same. The commit point's outcome is unknown (C's connection or the catalog's
//!   broke): the writers stay prepared, and shardd's recovery (`shardd::recovery`)
//!   decides from C's decision table or the catalog.
//!
//! Anything left prepared by a crash at any step is finished by that recovery, so every
//! transaction ends all-or-nothing.
//!
//! The coordinator knows nothing of sessions or sockets: it drives each participant
//! through [`TxnConn`] (implemented here for [`BackendConn`]) and the catalog through
//! [`CommitLog`] (implemented by [`CatalogLog`]). A test-only fault hook ([`Faults`],
//! `PGSHARD_FAULT`) stops it dead at a chosen step so crash tests can kill the router
//! there deterministically, or pauses it there until SIGUSR1 so they can kill a shard.

use crate::backend::{BackendConn, BackendError};
use futures::future::{join_all, BoxFuture};
use pgshard_catalog::twopc::{self as records, TwoPcError};
pub use pgshard_catalog::twopc::{Gid, RouterId};
use pgshard_catalog::ShardId;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SQLSTATE of "prepared transaction … does not exist" (`undefined_object`): after the
/// commit point it means recovery already finished that participant.
const UNDEFINED_OBJECT: &str = "42704";

/// A participant's error: the coordinator only needs to know whether the server
/// answered (and with which SQLSTATE) or the connection failed.
pub trait TxnError: std::error::Error + Send + Sync + 'static {
    /// The SQLSTATE of the server's ErrorResponse; `None` for connection failures.
    fn sqlstate(&self) -> Option<&str>;
}

/// What a backend connection knows of its database's decision table
/// (`pgshard_2pc.decisions`, created by shardd's recovery in every database).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecisionTable {
    /// Not tried yet: the next two-phase commit coordinated here probes it.
    #[default]
    Unknown,
    /// A decision insert went in: coordinate here without a probe.
    Present,
    /// The probe failed at this moment: use the catalog protocol until
    /// [`DECISION_TABLE_RECHECK`] has passed.
    Absent(Instant),
}

/// How long a connection whose database lacked the decision table keeps using the
/// catalog protocol before probing again (shardd creates the table within a recovery
/// round).
pub const DECISION_TABLE_RECHECK: Duration = Duration::from_secs(10);

/// SQLSTATEs of a probe that found no usable decision table: undefined table or
/// schema, insufficient privilege, read-only transaction.
const NO_DECISION_TABLE: [&str; 4] = ["42P01", "3F000", "42501", "25006"];

/// One participant's backend connection, inside the transaction being ended.
pub trait TxnConn: Send {
    type Error: TxnError;
    /// Run one statement with the simple protocol and wait for ReadyForQuery.
    fn simple<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), Self::Error>>;
    /// True if the transaction failed on this connection (ReadyForQuery status `E`):
    /// then COMMIT means ROLLBACK, and PREPARE TRANSACTION would silently roll back.
    fn in_failed_transaction(&self) -> bool;
    /// What is known of this connection's decision table (connections that do not
    /// remember it are probed each time they coordinate).
    fn decision_table(&self) -> DecisionTable {
        DecisionTable::Unknown
    }
    /// Remember what the coordinator found.
    fn set_decision_table(&mut self, _known: DecisionTable) {}
}

impl TxnError for BackendError {
    fn sqlstate(&self) -> Option<&str> {
        match self {
            BackendError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl TxnConn for BackendConn {
    type Error = BackendError;
    fn simple<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { self.run_silent(sql).await.map(drop) })
    }
    fn in_failed_transaction(&self) -> bool {
        self.status == b'E'
    }
    fn decision_table(&self) -> DecisionTable {
        self.decision_table
    }
    fn set_decision_table(&mut self, known: DecisionTable) {
        self.decision_table = known;
    }
}

/// One participant of the transaction being ended.
pub struct Member<'a, E> {
    pub shard: ShardId,
    /// True if any statement on this shard may have written (the session decides;
    /// when unsure, say true: it only costs a PREPARE).
    pub wrote: bool,
    pub conn: &'a mut (dyn TxnConn<Error = E> + 'a),
}

/// Why the commit record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// Recovery already decided to roll the transaction back: it must not commit.
    #[error("distributed transaction {0} was already rolled back by recovery")]
    Refused(String),
    /// The write may or may not have happened (e.g. the catalog connection broke).
    #[error("could not record the commit decision: {0}")]
    Unknown(String),
}

/// Where commit decisions go: the catalog (see [`CatalogLog`]).
pub trait CommitLog: Send + Sync {
    /// Durably record that `gid` commits on `participants`; the commit point.
    fn record_commit<'a>(
        &'a self,
        gid: &'a Gid,
        participants: &'a [ShardId],
    ) -> BoxFuture<'a, Result<(), RecordError>>;
    /// Delete the record of a transaction that committed everywhere (best effort).
    fn forget<'a>(&'a self, gid: &'a Gid) -> BoxFuture<'a, Result<(), RecordError>>;
}

/// A step of the protocol where the test-only fault hook can stop the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Several writers, nothing prepared yet.
    BeforePrepare,
    /// The decision row inserted in the coordinator shard's open transaction, nothing
    /// prepared yet (the catalog protocol never stops here).
    AfterDecision,
    /// The first writer to prepare prepared, the others not yet (with the decision on
    /// a shard, the coordinator shard also holds its decision row).
    BetweenPrepares,
    /// Every writer to prepare prepared; the coordinator shard not committed (or, in
    /// the catalog protocol, no commit record).
    AfterPrepares,
    /// The commit point passed: the coordinator shard committed with its decision row
    /// (or the catalog record was written); no COMMIT PREPARED sent.
    AfterRecord,
    /// The first prepared writer committed, the others still prepared.
    BetweenCommits,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 6] = [
        FaultPoint::BeforePrepare,
        FaultPoint::AfterDecision,
        FaultPoint::BetweenPrepares,
        FaultPoint::AfterPrepares,
        FaultPoint::AfterRecord,
        FaultPoint::BetweenCommits,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::BeforePrepare => "before_prepare",
            FaultPoint::AfterDecision => "after_decision",
            FaultPoint::BetweenPrepares => "between_prepares",
            FaultPoint::AfterPrepares => "after_prepares",
            FaultPoint::AfterRecord => "after_record",
            FaultPoint::BetweenCommits => "between_commits",
        }
    }

    pub fn parse(s: &str) -> Option<FaultPoint> {
        FaultPoint::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// True if the transaction must end committed when the coordinator dies here.
    pub fn after_commit_point(self) -> bool {
        matches!(self, FaultPoint::AfterRecord | FaultPoint::BetweenCommits)
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the coordinator does at an armed fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Never return (the router process is about to be SIGKILLed by a test).
    Hang,
    /// Return [`CommitError::Halted`] at once, touching nothing more; the caller must
    /// drop the connections as a crash would (in-process tests).
    Abandon,
    /// Wait until the process gets SIGUSR1, then go on (a test kills and restarts a
    /// shard meanwhile). The handler is installed before the stop is logged, so a
    /// signal sent after the log line is never lost.
    Pause,
}

/// The test-only fault hook: off unless configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    armed: Option<(FaultPoint, FaultAction)>,
}

/// The environment variable read by [`Faults::from_env`].
pub const FAULT_ENV: &str = "PGSHARD_FAULT";

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    pub fn at(point: FaultPoint, action: FaultAction) -> Faults {
        Faults {
            armed: Some((point, action)),
        }
    }

    /// `<point>` (hang), `<point>:abandon` or `<point>:pause`, e.g. `between_prepares`.
    pub fn parse(s: &str) -> Option<Faults> {
        let (point, action) = match s.split_once(':') {
            None => (s, FaultAction::Hang),
            Some((p, "hang")) => (p, FaultAction::Hang),
            Some((p, "abandon")) => (p, FaultAction::Abandon),
            Some((p, "pause")) => (p, FaultAction::Pause),
            Some(_) => return None,
        };
        Some(Faults::at(FaultPoint::parse(point)?, action))
    }

    /// From `PGSHARD_FAULT` (read once, at router start); unset or empty is off, an
    /// unknown value is off with an error logged.
    pub fn from_env() -> Faults {
        match std::env::var(FAULT_ENV) {
            Ok(v) if !v.is_empty() => Faults::parse(&v).unwrap_or_else(|| {
                tracing::error!(value = %v, "ignoring unknown {FAULT_ENV}");
                Faults::none()
            }),
            _ => Faults::none(),
        }
    }

    fn armed_at(&self, point: FaultPoint) -> bool {
        matches!(self.armed, Some((p, _)) if p == point)
    }

    async fn check(&self, point: FaultPoint, gid: &Gid) -> Result<(), FaultPoint> {
        match self.armed {
            Some((p, action)) if p == point => {
                let resume = match action {
                    FaultAction::Pause => Some(resume_signal()),
                    FaultAction::Hang | FaultAction::Abandon => None,
                };
                tracing::warn!(%gid, point = %point, "fault injection: coordinator stops");
                match (action, resume) {
                    (FaultAction::Abandon, _) => Err(point),
                    (FaultAction::Pause, Some(Ok(mut signal))) => {
                        signal.recv().await;
                        tracing::warn!(%gid, point = %point, "fault injection: coordinator resumes");
                        Ok(())
                    }
                    (FaultAction::Pause, Some(Err(error))) => {
                        tracing::error!(%error, "no SIGUSR1 handler: the pause is a hang");
                        std::future::pending().await
                    }
                    (FaultAction::Hang | FaultAction::Pause, _) => std::future::pending().await,
                }
            }
            _ => Ok(()),
        }
    }
}

/// The SIGUSR1 listener that ends a [`FaultAction::Pause`].
fn resume_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
}

/// How a transaction ended when [`Coordinator::commit`] returns `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed. `gid` is set when two-phase commit was used: the caller should
    /// [`CommitLog::forget`] it once the client has its answer — unless `unfinished`
    /// is not empty: those shards' COMMIT PREPARED failed (connection lost), recovery
    /// will finish them and then delete the record.
    Committed {
        gid: Option<Gid>,
        unfinished: Vec<ShardId>,
    },
    /// A participant's transaction had failed, so COMMIT rolled back everything, as
    /// PostgreSQL's COMMIT of a failed transaction does (command tag `ROLLBACK`).
    RolledBack,
}

/// Why a commit did not happen (or is not known to have happened).
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E: TxnError> {
    /// A participant refused to commit or prepare (e.g. a deferred constraint, a
    /// serialization failure); everything was rolled back. Forward `source` to the
    /// client.
    #[error("commit failed on shard {shard}: {source}")]
    Failed { shard: ShardId, source: E },
    /// Recovery rolled the transaction back before the commit record was written
    /// (the coordinator stalled longer than recovery's bound); everything was rolled
    /// back.
    #[error("distributed transaction {gid} was rolled back by recovery")]
    RecoveryAborted { gid: Gid },
    /// The outcome is unknown to this router (a connection broke at the commit point);
    /// recovery will commit or roll back every participant alike. SQLSTATE 08007.
    #[error("transaction outcome unknown: {reason}")]
    Unknown { gid: Option<Gid>, reason: String },
    /// The fault hook stopped the coordinator ([`FaultAction::Abandon`]).
    #[error("fault injection stopped the coordinator at {0}")]
    Halted(FaultPoint),
}

impl<E: TxnError> CommitError<E> {
    /// The SQLSTATE to report to the client (`Failed` forwards the shard's own error).
    pub fn sqlstate(&self) -> &str {
        match self {
            CommitError::Failed { source, .. } => source.sqlstate().unwrap_or("08006"),
            CommitError::RecoveryAborted { .. } => "40000",
            CommitError::Unknown { .. } => "08007",
            CommitError::Halted(_) => "XX000",
        }
    }
}

/// Ends multi-shard transactions for one router process. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Coordinator {
    router: RouterId,
    counter: AtomicU64,
    faults: Faults,
    /// Outcomes of transactions that spanned shards (`SHOW STATS`).
    pub stats: CommitStats,
}

/// How transactions spanning shards ended.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Committed with one writer (a single COMMIT on it, plain COMMITs on the readers).
    pub one_phase: AtomicU64,
    /// Committed through PREPARE TRANSACTION / COMMIT PREPARED.
    pub two_phase: AtomicU64,
    /// Rolled back (by the client, or a COMMIT of a failed transaction).
    pub rolled_back: AtomicU64,
}

impl Coordinator {
    pub fn new(router: RouterId, faults: Faults) -> Coordinator {
        Coordinator {
            router,
            counter: AtomicU64::new(0),
            faults,
            stats: CommitStats::default(),
        }
    }

    pub fn router(&self) -> &RouterId {
        &self.router
    }

    /// A fresh global transaction id.
    pub fn next_gid(&self) -> Gid {
        Gid::new(
            &self.router,
            self.counter.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }

    /// COMMIT the transaction open on every member (see the module doc for the steps).
    /// Call it only with no statement outstanding on any member. Afterwards every
    /// member's connection is outside a transaction, or broken.
    pub async fn commit<E: TxnError>(
        &self,
        members: &mut [Member<'_, E>],
        log: &dyn CommitLog,
    ) -> Result<Outcome, CommitError<E>> {
        if members.iter().any(|m| m.conn.in_failed_transaction()) {
            rollback_all(members.iter_mut().map(member_conn)).await;
            crate::stats::bump(&self.stats.rolled_back);
            return Ok(Outcome::RolledBack);
        }
        let writers = members.iter().filter(|m| m.wrote).count();
        let (outcome, counter) = if writers <= 1 {
            (one_phase(members).await, &self.stats.one_phase)
        } else {
            (self.two_phase(members, log).await, &self.stats.two_phase)
        };
        match &outcome {
            Ok(Outcome::Committed { .. }) => crate::stats::bump(counter),
            Ok(Outcome::RolledBack) => crate::stats::bump(&self.stats.rolled_back),
            Err(_) => {}
        }
        outcome
    }

    /// ROLLBACK on every member (errors only logged: a broken connection rolls back by
    /// itself).
    pub async fn rollback<E: TxnError>(&self, members: &mut [Member<'_, E>]) {
        crate::stats::bump(&self.stats.rolled_back);
        rollback_all(members.iter_mut().map(member_conn)).await;
    }

    /// Several writers: the decision on the first writer if its database has the
    /// decision table, else in the catalog (see the module doc).
    async fn two_phase<E: TxnError>(
        &self,
        members: &mut [Member<'_, E>],
        log: &dyn CommitLog,
    ) -> Result<Outcome, CommitError<E>> {
        let (mut writers, mut readers): (Vec<_>, Vec<_>) =
            members.iter_mut().partition(|m| m.wrote);
        let base = self.next_gid();
        let Some(c_shard) = writers.first().map(|c| c.shard) else {
            return one_phase_of(writers, readers).await;
        };
        let gid = base.clone().with_coordinator(c_shard);
        self.faults
            .check(FaultPoint::BeforePrepare, &gid)
            .await
            .map_err(CommitError::Halted)?;
        let decided = match writers[0].conn.decision_table() {
            DecisionTable::Present => false,
            DecisionTable::Absent(at) if at.elapsed() < DECISION_TABLE_RECHECK => {
                return self.two_phase_catalog(writers, readers, log, base).await;
            }
            DecisionTable::Unknown | DecisionTable::Absent(_) => {
                // The probe: the decision insert under a savepoint, so that a missing
                // table leaves the transaction usable for the catalog protocol.
                let c = &mut writers[0];
                let probe = format!(
                    "SAVEPOINT pgshard_2pc; {}; RELEASE SAVEPOINT pgshard_2pc",
                    records::decision_insert_sql(&gid)
                );
                match c.conn.simple(&probe).await {
                    Ok(()) => {
                        c.conn.set_decision_table(DecisionTable::Present);
                        true
                    }
                    Err(e)
                        if e.sqlstate()
                            .is_some_and(|code| NO_DECISION_TABLE.contains(&code)) =>
                    {
                        let undo =
                            "ROLLBACK TO SAVEPOINT pgshard_2pc; RELEASE SAVEPOINT pgshard_2pc";
                        if let Err(source) = c.conn.simple(undo).await {
                            rollback_all(writers.iter_mut().chain(readers.iter_mut()).map(conn_of))
                                .await;
                            return Err(CommitError::Failed {
                                shard: c_shard,
                                source,
                            });
                        }
                        if e.sqlstate() != Some("25006") {
                            c.conn
                                .set_decision_table(DecisionTable::Absent(Instant::now()));
                        }
                        tracing::debug!(shard = %c_shard, error = %e, "no decision table: commit record in the catalog");
                        return self.two_phase_catalog(writers, readers, log, base).await;
                    }
                    Err(source) => {
                        rollback_all(writers.iter_mut().chain(readers.iter_mut()).map(conn_of))
                            .await;
                        return Err(CommitError::Failed {
                            shard: c_shard,
                            source,
                        });
                    }
                }
            }
        };
        self.two_phase_local(writers, readers, gid, decided).await
    }

    /// The decision in the coordinator shard's own transaction: `writers[0]` is that
    /// shard C, `decided` says whether its decision row is inserted already.
    async fn two_phase_local<E: TxnError>(
        &self,
        mut writers: Vec<&mut Member<'_, E>>,
        mut readers: Vec<&mut Member<'_, E>>,
        gid: Gid,
        mut decided: bool,
    ) -> Result<Outcome, CommitError<E>> {
        let halted = CommitError::Halted;
        let Some((c, others)) = writers.split_first_mut() else {
            return one_phase_of(Vec::new(), readers).await;
        };
        let c_shard = c.shard;
        let insert = records::decision_insert_sql(&gid);
        let mut c_result = Ok(());
        if !decided && self.faults.armed_at(FaultPoint::AfterDecision) {
            c_result = c.conn.simple(&insert).await;
            decided = true;
        }
        if decided && c_result.is_ok() {
            self.faults
                .check(FaultPoint::AfterDecision, &gid)
                .await
                .map_err(halted)?;
        }

        // Phase one: PREPARE on the others, all at once (with the between-PREPAREs
        // fault armed, the first of them goes alone). C's decision row, unless it is in
        // already, goes with C's COMMIT below: one message to C instead of two.
        let prepare = format!("PREPARE TRANSACTION {}", gid.literal());
        let split = if self.faults.armed_at(FaultPoint::BetweenPrepares) {
            1.min(others.len())
        } else {
            others.len()
        };
        let mut results = Vec::with_capacity(others.len());
        if c_result.is_ok() {
            results = run_all(others[..split].iter_mut().map(conn_of), &prepare).await;
        }
        if c_result.is_ok() && results.iter().all(Result::is_ok) {
            if let Err(p) = self.faults.check(FaultPoint::BetweenPrepares, &gid).await {
                return Err(halted(p));
            }
            results.extend(run_all(others[split..].iter_mut().map(conn_of), &prepare).await);
        }
        let attempted = results.len();
        let mut prepared = vec![false; others.len()];
        let mut first_error = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => prepared[i] = true,
                Err(e) => {
                    first_error.get_or_insert((others[i].shard, e));
                }
            }
        }
        let failure = match (c_result, first_error) {
            (Err(source), _) => {
                c.conn.set_decision_table(DecisionTable::Unknown);
                Some(if source.sqlstate() == Some(UNIQUE_VIOLATION) {
                    // Recovery's abort row holds the gid: it rolled us back.
                    tracing::warn!(%gid, "recovery rolled the transaction back first");
                    CommitError::RecoveryAborted { gid: gid.clone() }
                } else {
                    tracing::info!(%gid, shard = %c_shard, error = %source, "decision insert failed; rolling back");
                    CommitError::Failed {
                        shard: c_shard,
                        source,
                    }
                })
            }
            (Ok(()), Some((shard, source))) => {
                tracing::info!(%gid, %shard, error = %source, "PREPARE failed; rolling back");
                Some(CommitError::Failed { shard, source })
            }
            (Ok(()), None) => None,
        };
        if let Some(failure) = failure {
            let rollback_prepared = format!("ROLLBACK PREPARED {}", gid.literal());
            let mut undo = vec![(conn_of(c), "ROLLBACK")];
            for (i, m) in others.iter_mut().enumerate() {
                // A writer whose PREPARE failed has rolled back already (or lost its
                // connection, which rolls back, or left it prepared for recovery).
                if prepared[i] {
                    undo.push((conn_of(m), rollback_prepared.as_str()));
                } else if i >= attempted {
                    undo.push((conn_of(m), "ROLLBACK"));
                }
            }
            undo_all(undo, &gid).await;
            rollback_all(readers.iter_mut().map(conn_of)).await;
            return Err(failure);
        }
        self.faults
            .check(FaultPoint::AfterPrepares, &gid)
            .await
            .map_err(halted)?;

        // The commit point: C commits in one phase, its decision row with it (inserted
        // in the same message when not in yet; a failed insert skips the COMMIT).
        let commit = if decided {
            "COMMIT".to_owned()
        } else {
            format!("{insert}; COMMIT")
        };
        if let Err(source) = c.conn.simple(&commit).await {
            // The decision insert failed (the COMMIT never ran): C's transaction is
            // still open, aborted, whatever the error was.
            let c_open = c.conn.in_failed_transaction();
            if c_open || commit_refused(&source) {
                tracing::info!(%gid, shard = %c_shard, error = %source, "the coordinator shard refused to commit; rolling back");
                let sql = format!("ROLLBACK PREPARED {}", gid.literal());
                let mut undo: Vec<_> = others
                    .iter_mut()
                    .map(|m| (conn_of(m), sql.as_str()))
                    .collect();
                if c_open {
                    undo.push((conn_of(c), "ROLLBACK"));
                }
                undo_all(undo, &gid).await;
                rollback_all(readers.iter_mut().map(conn_of)).await;
                if c_open {
                    c.conn.set_decision_table(DecisionTable::Unknown);
                    // (A deferred unique constraint failing the COMMIT is 23505 too.)
                    if source.sqlstate() == Some(UNIQUE_VIOLATION) {
                        // Recovery's abort row holds the gid: it rolled us back.
                        tracing::warn!(%gid, "recovery rolled the transaction back first");
                        return Err(CommitError::RecoveryAborted { gid });
                    }
                }
                return Err(CommitError::Failed {
                    shard: c_shard,
                    source,
                });
            }
            tracing::error!(%gid, shard = %c_shard, error = %source, "commit point outcome unknown; left to recovery");
            rollback_all(readers.iter_mut().map(conn_of)).await;
            return Err(CommitError::Unknown {
                gid: Some(gid),
                reason: format!("shard {c_shard}: {source}"),
            });
        }
        self.faults
            .check(FaultPoint::AfterRecord, &gid)
            .await
            .map_err(halted)?;
        let unfinished = self.commit_prepared(others, &gid).await?;
        commit_readers(readers.iter_mut().map(conn_of)).await;
        Ok(Outcome::Committed {
            gid: Some(gid),
            unfinished,
        })
    }

    /// Phase two (the transaction is committed whatever happens now): COMMIT PREPARED
    /// on `writers`, in parallel; returns the shards left to recovery.
    async fn commit_prepared<E: TxnError>(
        &self,
        writers: &mut [&mut Member<'_, E>],
        gid: &Gid,
    ) -> Result<Vec<ShardId>, CommitError<E>> {
        let commit = format!("COMMIT PREPARED {}", gid.literal());
        let split =
            usize::from(self.faults.armed_at(FaultPoint::BetweenCommits)).min(writers.len());
        let mut results = run_all(writers[..split].iter_mut().map(conn_of), &commit).await;
        self.faults
            .check(FaultPoint::BetweenCommits, gid)
            .await
            .map_err(CommitError::Halted)?;
        results.extend(run_all(writers[split..].iter_mut().map(conn_of), &commit).await);
        let mut unfinished = Vec::new();
        for (m, r) in writers.iter().zip(results) {
            if let Err(error) = r {
                if error.sqlstate() == Some(UNDEFINED_OBJECT) {
                    // Recovery got there first.
                    continue;
                }
                tracing::warn!(%gid, shard = %m.shard, %error, "COMMIT PREPARED failed; recovery will finish it");
                unfinished.push(m.shard);
            }
        }
        Ok(unfinished)
    }

    /// The catalog protocol (a database without the decision table): PREPARE on every
    /// writer, the commit record in the catalog, COMMIT PREPARED on every writer.
    async fn two_phase_catalog<E: TxnError>(
        &self,
        mut writers: Vec<&mut Member<'_, E>>,
        mut readers: Vec<&mut Member<'_, E>>,
        log: &dyn CommitLog,
        gid: Gid,
    ) -> Result<Outcome, CommitError<E>> {
        let halted = CommitError::Halted;
        let participants: Vec<ShardId> = writers.iter().map(|m| m.shard).collect();

        // Phase one. With the between-PREPAREs fault armed, the first writer goes alone.
        let prepare = format!("PREPARE TRANSACTION {}", gid.literal());
        let split = usize::from(self.faults.armed_at(FaultPoint::BetweenPrepares));
        let mut results = run_all(writers[..split].iter_mut().map(conn_of), &prepare).await;
        if results.iter().all(Result::is_ok) {
            if let Err(p) = self.faults.check(FaultPoint::BetweenPrepares, &gid).await {
                return Err(halted(p));
            }
            results.extend(run_all(writers[split..].iter_mut().map(conn_of), &prepare).await);
        }
        let attempted = results.len();
        let mut prepared = vec![false; writers.len()];
        let mut first_error = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => prepared[i] = true,
                Err(e) => {
                    first_error.get_or_insert((writers[i].shard, e));
                }
            }
        }
        if let Some((shard, source)) = first_error {
            tracing::info!(%gid, %shard, error = %source, "PREPARE failed; rolling back");
            let rollback_prepared = format!("ROLLBACK PREPARED {}", gid.literal());
            let mut undo = Vec::new();
            for (i, m) in writers.iter_mut().enumerate() {
                // A writer whose PREPARE failed has rolled back already (or lost its
                // connection, which rolls back, or left it prepared for recovery).
                if prepared[i] {
                    undo.push((conn_of(m), rollback_prepared.as_str()));
                } else if i >= attempted {
                    undo.push((conn_of(m), "ROLLBACK"));
                }
            }
            undo_all(undo, &gid).await;
            rollback_all(readers.iter_mut().map(conn_of)).await;
            return Err(CommitError::Failed { shard, source });
        }
        self.faults
            .check(FaultPoint::AfterPrepares, &gid)
            .await
            .map_err(halted)?;

        // The commit point.
        match log.record_commit(&gid, &participants).await {
            Ok(()) => {}
            Err(RecordError::Refused(_)) => {
                tracing::warn!(%gid, "recovery rolled the transaction back first");
                let sql = format!("ROLLBACK PREPARED {}", gid.literal());
                undo_all(
                    writers
                        .iter_mut()
                        .map(|m| (conn_of(m), sql.as_str()))
                        .collect(),
                    &gid,
                )
                .await;
                rollback_all(readers.iter_mut().map(conn_of)).await;
                return Err(CommitError::RecoveryAborted { gid });
            }
            Err(RecordError::Unknown(reason)) => {
                tracing::error!(%gid, %reason, "commit decision not recorded; left to recovery");
                rollback_all(readers.iter_mut().map(conn_of)).await;
                return Err(CommitError::Unknown {
                    gid: Some(gid),
                    reason,
                });
            }
        }
        self.faults
            .check(FaultPoint::AfterRecord, &gid)
            .await
            .map_err(halted)?;

        let unfinished = self.commit_prepared(&mut writers, &gid).await?;
        commit_readers(readers.iter_mut().map(conn_of)).await;
        Ok(Outcome::Committed {
            gid: Some(gid),
            unfinished,
        })
    }
}

fn member_conn<'m, E>(m: &'m mut Member<'_, E>) -> &'m mut (dyn TxnConn<Error = E> + 'm) {
    &mut *m.conn
}

fn conn_of<'m, E>(m: &'m mut &mut Member<'_, E>) -> &'m mut (dyn TxnConn<Error = E> + 'm) {
    &mut *m.conn
}

/// True if a COMMIT's error means the server rolled the transaction back (a deferred
/// constraint, a serialization failure, …) rather than that the outcome is unknown (the
/// connection broke, or the server was shutting down, possibly after the commit became
/// durable: classes 08, 53, 57, 58, XX).
fn commit_refused<E: TxnError>(e: &E) -> bool {
    match e.sqlstate() {
        None => false,
        Some(code) => !["08", "53", "57", "58", "XX"]
            .iter()
            .any(|class| code.starts_with(class)),
    }
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// No 2PC: at most one writer. The writer commits first; readers follow its fate.
async fn one_phase<E: TxnError>(members: &mut [Member<'_, E>]) -> Result<Outcome, CommitError<E>> {
    let (writers, readers): (Vec<_>, Vec<_>) = members.iter_mut().partition(|m| m.wrote);
    one_phase_of(writers, readers).await
}

async fn one_phase_of<E: TxnError>(
    mut writers: Vec<&mut Member<'_, E>>,
    mut readers: Vec<&mut Member<'_, E>>,
) -> Result<Outcome, CommitError<E>> {
    if let Some(w) = writers.first_mut() {
        if let Err(source) = w.conn.simple("COMMIT").await {
            let shard = w.shard;
            rollback_all(readers.iter_mut().map(conn_of)).await;
            return Err(match source.sqlstate() {
                Some(_) => CommitError::Failed { shard, source },
                // The COMMIT may have happened before the connection broke.
                None => CommitError::Unknown {
                    gid: None,
                    reason: format!("shard {shard}: {source}"),
                },
            });
        }
    }
    commit_readers(readers.iter_mut().map(conn_of)).await;
    Ok(Outcome::Committed {
        gid: None,
        unfinished: Vec::new(),
    })
}

/// Run `sql` on every member in parallel; results in member order.
async fn run_all<'m, E: TxnError>(
    conns: impl Iterator<Item = &'m mut (dyn TxnConn<Error = E> + 'm)>,
    sql: &str,
) -> Vec<Result<(), E>> {
    join_all(conns.map(|c| c.simple(sql))).await
}

async fn undo_all<E: TxnError>(conns: Vec<(&mut (dyn TxnConn<Error = E> + '_), &str)>, gid: &Gid) {
    let results = join_all(conns.into_iter().map(|(c, sql)| c.simple(sql))).await;
    for error in results.into_iter().filter_map(Result::err) {
        // Whatever is still prepared without a record is rolled back by recovery.
        tracing::warn!(%gid, %error, "rollback after a failed commit failed; left to recovery");
    }
}

async fn rollback_all<'c, E: TxnError>(
    conns: impl Iterator<Item = &'c mut (dyn TxnConn<Error = E> + 'c)>,
) {
    for error in join_all(conns.map(|c| c.simple("ROLLBACK")))
        .await
        .into_iter()
        .filter_map(Result::err)
    {
        tracing::debug!(%error, "ROLLBACK failed (the connection rolls back as it closes)");
    }
}

/// Read-only participants: their COMMIT cannot change any data, so a failure only
/// matters to the connection (the session discards a connection that is not idle).
async fn commit_readers<'c, E: TxnError>(
    conns: impl Iterator<Item = &'c mut (dyn TxnConn<Error = E> + 'c)>,
) {
    for error in join_all(conns.map(|c| c.simple("COMMIT")))
        .await
        .into_iter()
        .filter_map(Result::err)
    {
        tracing::debug!(%error, "COMMIT of a read-only participant failed");
    }
}

/// The commit log in the catalog database, over one shared connection that is
/// re-established when it breaks.
pub struct CatalogLog {
    config: tokio_postgres::Config,
    router: RouterId,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
    connect_timeout: Duration,
}

impl fmt::Debug for CatalogLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogLog")
            .field("router", &self.router)
            .finish()
    }
}

impl CatalogLog {
    /// `conninfo` names the catalog database (as the router's catalog follower uses).
    pub fn new(conninfo: &str, router: RouterId) -> Result<CatalogLog, tokio_postgres::Error> {
        Ok(CatalogLog {
            config: conninfo.parse()?,
            router,
            client: Mutex::new(None),
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// The router this log records decisions for.
    pub fn router(&self) -> &RouterId {
        &self.router
    }

    /// A new connection of its own to the catalog, for work that needs a transaction
    /// block (the shared one must never be left inside one). Closed when dropped.
    pub async fn dedicated(&self) -> Result<tokio_postgres::Client, String> {
        let connect = self.config.connect(tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| "timed out connecting to the catalog".to_string())?
            .map_err(|e| format!("cannot connect to the catalog: {e}"))?;
        // The connection task ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "catalog connection closed");
            }
        });
        Ok(client)
    }

    /// How this log connects to the catalog (the admin console reuses its credentials).
    pub fn connection_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Every decision record in the catalog (for the admin console's `SHOW
    /// TRANSACTIONS`), over the log's connection.
    pub async fn records(&self) -> Result<Vec<records::Record>, RecordError> {
        let client = self.client().await.map_err(RecordError::Unknown)?;
        records::list(&client).await.map_err(record_error)
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, String> {
        {
            let guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
                return Ok(c.clone());
            }
        }
        let client = Arc::new(self.dedicated().await?);
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }
}

fn record_error(e: TwoPcError) -> RecordError {
    match e {
        TwoPcError::Aborted(gid) => RecordError::Refused(gid),
        other => RecordError::Unknown(other.to_string()),
    }
}

impl CommitLog for CatalogLog {
    fn record_commit<'a>(
        &'a self,
        gid: &'a Gid,
        participants: &'a [ShardId],
    ) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let client = self.client().await.map_err(RecordError::Unknown)?;
            records::record_commit(&*client, gid, &self.router, participants)
                .await
                .map_err(record_error)
        })
    }

    fn forget<'a>(&'a self, gid: &'a Gid) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let client = self.client().await.map_err(RecordError::Unknown)?;
            records::forget(&client, gid)
                .await
                .map(drop)
                .map_err(record_error)
        })
    }
}

#[cfg(test)]
mod tests {
    //! The protocol as pure logic, with fake participants that record what they are
    //! sent (the real-PostgreSQL runs are in `tests/tests/twopc.rs`).

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("fake error {code:?}")]
    struct FakeError {
        code: Option<String>,
    }

    impl TxnError for FakeError {
        fn sqlstate(&self) -> Option<&str> {
            self.code.as_deref()
        }
    }

    type Journal = Arc<Mutex<Vec<String>>>;

    struct FakeConn {
        shard: u32,
        journal: Journal,
        failed: bool,
        /// Statements starting with this fail, with this SQLSTATE (`None`: connection).
        fail_on: Option<(&'static str, Option<&'static str>)>,
        table: DecisionTable,
    }

    /// How a statement shows in the journal.
    fn word(sql: &str) -> &str {
        if sql.starts_with("SAVEPOINT pgshard_2pc; INSERT INTO pgshard_2pc.decisions") {
            "probe"
        } else if sql.starts_with("INSERT INTO pgshard_2pc.decisions (gid) VALUES ('pgshard:") {
            "decide"
        } else if sql.starts_with("ROLLBACK TO SAVEPOINT pgshard_2pc") {
            "unprobe"
        } else {
            sql.split(" '").next().unwrap_or(sql)
        }
    }

    impl TxnConn for FakeConn {
        type Error = FakeError;
        fn simple<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), FakeError>> {
            Box::pin(async move {
                let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
                // Several statements in one message run one by one, as PostgreSQL runs
                // them; an error skips the rest (the probe is journaled whole).
                let parts: Vec<&str> = if matches!(word(sql), "probe" | "unprobe") {
                    vec![sql]
                } else {
                    sql.split("; ").collect()
                };
                for part in parts {
                    let word = word(part);
                    match self.fail_on {
                        Some((prefix, code)) if word.starts_with(prefix) => {
                            j.push(format!("{}: {word} -> error", self.shard));
                            // A failed statement other than COMMIT leaves the
                            // transaction open and aborted.
                            self.failed |= word != "COMMIT" && code.is_some();
                            return Err(FakeError {
                                code: code.map(str::to_string),
                            });
                        }
                        _ => j.push(format!("{}: {word}", self.shard)),
                    }
                }
                Ok(())
            })
        }
        fn in_failed_transaction(&self) -> bool {
            self.failed
        }
        fn decision_table(&self) -> DecisionTable {
            self.table
        }
        fn set_decision_table(&mut self, known: DecisionTable) {
            self.table = known;
        }
    }

    struct FakeLog {
        journal: Journal,
        answer: Result<(), RecordError>,
    }

    impl CommitLog for FakeLog {
        fn record_commit<'a>(
            &'a self,
            gid: &'a Gid,
            participants: &'a [ShardId],
        ) -> BoxFuture<'a, Result<(), RecordError>> {
            Box::pin(async move {
                assert!(Gid::parse(gid.as_str()).is_some());
                let shards: Vec<String> = participants.iter().map(|s| s.to_string()).collect();
                self.journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("record {}", shards.join(",")));
                self.answer.clone()
            })
        }
        fn forget<'a>(&'a self, _gid: &'a Gid) -> BoxFuture<'a, Result<(), RecordError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Shards 1..=n; `writers` lists the shards that wrote.
    struct Setup {
        journal: Journal,
        conns: Vec<FakeConn>,
        writers: Vec<u32>,
        answer: Result<(), RecordError>,
        faults: Faults,
    }

    impl Setup {
        fn new(n: u32, writers: &[u32]) -> Setup {
            let journal = Journal::default();
            Setup {
                conns: (1..=n)
                    .map(|shard| FakeConn {
                        shard,
                        journal: journal.clone(),
                        failed: false,
                        fail_on: None,
                        table: DecisionTable::Present,
                    })
                    .collect(),
                journal,
                writers: writers.to_vec(),
                answer: Ok(()),
                faults: Faults::none(),
            }
        }

        fn fail(mut self, shard: u32, prefix: &'static str, code: Option<&'static str>) -> Self {
            self.conns[shard as usize - 1].fail_on = Some((prefix, code));
            self
        }

        /// Every connection's database without the decision table: the catalog protocol.
        fn without_tables(mut self) -> Self {
            for c in &mut self.conns {
                c.table = DecisionTable::Absent(Instant::now());
            }
            self
        }

        async fn commit(mut self) -> (Result<Outcome, CommitError<FakeError>>, Vec<String>) {
            let coordinator = Coordinator::new(RouterId::new("t1").expect("id"), self.faults);
            let log = FakeLog {
                journal: self.journal.clone(),
                answer: self.answer.clone(),
            };
            let writers = self.writers.clone();
            let mut members: Vec<Member<'_, FakeError>> = self
                .conns
                .iter_mut()
                .map(|c| Member {
                    shard: ShardId(c.shard),
                    wrote: writers.contains(&c.shard),
                    conn: c,
                })
                .collect();
            let r = coordinator.commit(&mut members, &log).await;
            let j = self
                .journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            (r, j)
        }
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[tokio::test]
    async fn read_only_and_single_writer_transactions_commit_in_one_phase() {
        let (r, j) = Setup::new(3, &[]).commit().await;
        assert_eq!(
            r.ok(),
            Some(Outcome::Committed {
                gid: None,
                unfinished: vec![]
            })
        );
        assert_eq!(j, lines(&["1: COMMIT", "2: COMMIT", "3: COMMIT"]));

        let (r, j) = Setup::new(3, &[2]).commit().await;
        assert!(matches!(r, Ok(Outcome::Committed { gid: None, .. })));
        assert_eq!(j, lines(&["2: COMMIT", "1: COMMIT", "3: COMMIT"]));
    }

    #[tokio::test]
    async fn several_writers_decide_on_the_first_prepare_the_others_and_commit() {
        let (r, j) = Setup::new(3, &[1, 3]).commit().await;
        let Ok(Outcome::Committed {
            gid: Some(gid),
            unfinished,
        }) = r
        else {
            panic!("not committed with a gid: {r:?}");
        };
        assert!(unfinished.is_empty());
        assert_eq!(gid.coordinator(), Some(ShardId(1)));
        assert_eq!(
            j,
            lines(&[
                "3: PREPARE TRANSACTION",
                "1: decide",
                "1: COMMIT",
                "3: COMMIT PREPARED",
                "2: COMMIT",
            ])
        );
    }

    #[tokio::test]
    async fn the_first_coordination_on_a_connection_probes_the_decision_table() {
        let mut s = Setup::new(2, &[1, 2]);
        s.conns[0].table = DecisionTable::Unknown;
        let (r, j) = s.commit().await;
        assert!(
            matches!(&r, Ok(Outcome::Committed { gid: Some(g), .. }) if g.coordinator() == Some(ShardId(1))),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "1: probe",
                "2: PREPARE TRANSACTION",
                "1: COMMIT",
                "2: COMMIT PREPARED"
            ])
        );

        // No table (42P01): back to the savepoint, then the catalog protocol.
        let mut s = Setup::new(2, &[1, 2]).fail(1, "probe", Some("42P01"));
        s.conns[0].table = DecisionTable::Unknown;
        let (r, j) = s.commit().await;
        assert!(
            matches!(&r, Ok(Outcome::Committed { gid: Some(g), .. }) if g.coordinator().is_none()),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "1: probe -> error",
                "1: unprobe",
                "1: PREPARE TRANSACTION",
                "2: PREPARE TRANSACTION",
                "record 1,2",
                "1: COMMIT PREPARED",
                "2: COMMIT PREPARED",
            ])
        );

        // Any other probe error: rolled back, reported.
        let mut s = Setup::new(2, &[1, 2]).fail(1, "probe", Some("40001"));
        s.conns[0].table = DecisionTable::Unknown;
        let (r, j) = s.commit().await;
        assert!(
            matches!(
                r,
                Err(CommitError::Failed {
                    shard: ShardId(1),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&["1: probe -> error", "1: ROLLBACK", "2: ROLLBACK"])
        );
    }

    #[tokio::test]
    async fn the_coordinator_shard_refusing_or_losing_its_commit() {
        // Refused (a deferred constraint): everything rolls back.
        let (r, j) = Setup::new(3, &[1, 2])
            .fail(1, "COMMIT", Some("23505"))
            .commit()
            .await;
        assert!(
            matches!(
                r,
                Err(CommitError::Failed {
                    shard: ShardId(1),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "2: PREPARE TRANSACTION",
                "1: decide",
                "1: COMMIT -> error",
                "2: ROLLBACK PREPARED",
                "3: ROLLBACK",
            ])
        );
        // Connection lost (or the server shutting down): unknown, left to recovery.
        for code in [None, Some("57P01")] {
            let (r, j) = Setup::new(3, &[1, 2])
                .fail(1, "COMMIT", code)
                .commit()
                .await;
            match &r {
                Err(e @ CommitError::Unknown { gid: Some(g), .. }) => {
                    assert_eq!(e.sqlstate(), "08007");
                    assert_eq!(g.coordinator(), Some(ShardId(1)));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                j,
                lines(&[
                    "2: PREPARE TRANSACTION",
                    "1: decide",
                    "1: COMMIT -> error",
                    "3: ROLLBACK"
                ])
            );
        }
        // The decision insert conflicts: recovery's abort row won.
        let (r, j) = Setup::new(2, &[1, 2])
            .fail(1, "decide", Some("23505"))
            .commit()
            .await;
        assert!(
            matches!(r, Err(CommitError::RecoveryAborted { .. })),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "2: PREPARE TRANSACTION",
                "1: decide -> error",
                "2: ROLLBACK PREPARED",
                "1: ROLLBACK",
            ])
        );
        // Any other error of the decision insert (sent with C's COMMIT, which it
        // skips): C's aborted transaction and the prepared ones roll back, reported.
        let (r, j) = Setup::new(3, &[1, 2])
            .fail(1, "decide", Some("53100"))
            .commit()
            .await;
        assert!(
            matches!(
                r,
                Err(CommitError::Failed {
                    shard: ShardId(1),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "2: PREPARE TRANSACTION",
                "1: decide -> error",
                "2: ROLLBACK PREPARED",
                "1: ROLLBACK",
                "3: ROLLBACK",
            ])
        );
    }

    #[tokio::test]
    async fn without_a_decision_table_several_writers_prepare_record_then_commit_prepared() {
        let (r, j) = Setup::new(3, &[1, 3]).without_tables().commit().await;
        let Ok(Outcome::Committed {
            gid: Some(gid),
            unfinished,
        }) = r
        else {
            panic!("not committed with a gid: {r:?}");
        };
        assert!(unfinished.is_empty());
        assert_eq!(gid.router().as_str(), "t1");
        assert_eq!(
            j,
            lines(&[
                "1: PREPARE TRANSACTION",
                "3: PREPARE TRANSACTION",
                "record 1,3",
                "1: COMMIT PREPARED",
                "3: COMMIT PREPARED",
                "2: COMMIT",
            ])
        );
    }

    #[tokio::test]
    async fn a_failed_prepare_rolls_back_everything_and_reports_that_shard() {
        let (r, j) = Setup::new(3, &[1, 2])
            .fail(2, "PREPARE", Some("40001"))
            .commit()
            .await;
        match r {
            Err(e @ CommitError::Failed { shard, .. }) => {
                assert_eq!(shard, ShardId(2));
                assert_eq!(e.sqlstate(), "40001");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            j,
            lines(&[
                "2: PREPARE TRANSACTION -> error",
                "1: ROLLBACK",
                "3: ROLLBACK",
            ])
        );
    }

    #[tokio::test]
    async fn a_refused_record_rolls_back_and_an_unknown_one_leaves_it_to_recovery() {
        let mut s = Setup::new(3, &[1, 2]).without_tables();
        s.answer = Err(RecordError::Refused("x".into()));
        let (r, j) = s.commit().await;
        assert!(
            matches!(r, Err(CommitError::RecoveryAborted { .. })),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "1: PREPARE TRANSACTION",
                "2: PREPARE TRANSACTION",
                "record 1,2",
                "1: ROLLBACK PREPARED",
                "2: ROLLBACK PREPARED",
                "3: ROLLBACK",
            ])
        );

        let mut s = Setup::new(3, &[1, 2]).without_tables();
        s.answer = Err(RecordError::Unknown("catalog gone".into()));
        let (r, j) = s.commit().await;
        match &r {
            Err(e @ CommitError::Unknown { gid: Some(_), .. }) => assert_eq!(e.sqlstate(), "08007"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            j,
            lines(&[
                "1: PREPARE TRANSACTION",
                "2: PREPARE TRANSACTION",
                "record 1,2",
                "3: ROLLBACK",
            ])
        );
    }

    #[tokio::test]
    async fn a_failed_transaction_commits_as_rollback() {
        let mut s = Setup::new(2, &[1, 2]);
        s.conns[1].failed = true;
        let (r, j) = s.commit().await;
        assert_eq!(r.ok(), Some(Outcome::RolledBack));
        assert_eq!(j, lines(&["1: ROLLBACK", "2: ROLLBACK"]));
    }

    #[tokio::test]
    async fn single_writer_commit_errors_are_failures_or_unknown() {
        let (r, j) = Setup::new(2, &[1])
            .fail(1, "COMMIT", Some("23505"))
            .commit()
            .await;
        assert!(
            matches!(
                r,
                Err(CommitError::Failed {
                    shard: ShardId(1),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(j, lines(&["1: COMMIT -> error", "2: ROLLBACK"]));

        let (r, _) = Setup::new(2, &[1]).fail(1, "COMMIT", None).commit().await;
        assert!(
            matches!(r, Err(CommitError::Unknown { gid: None, .. })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn commit_prepared_failures_after_the_commit_point_are_left_to_recovery() {
        let (r, _) = Setup::new(2, &[1, 2])
            .fail(2, "COMMIT PREPARED", None)
            .commit()
            .await;
        match r {
            Ok(Outcome::Committed {
                gid: Some(_),
                unfinished,
            }) => assert_eq!(unfinished, vec![ShardId(2)]),
            other => panic!("{other:?}"),
        }
        // Already committed by recovery: not unfinished.
        let (r, _) = Setup::new(2, &[1, 2])
            .fail(2, "COMMIT PREPARED", Some(UNDEFINED_OBJECT))
            .commit()
            .await;
        assert!(
            matches!(&r, Ok(Outcome::Committed { unfinished, .. }) if unfinished.is_empty()),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn each_fault_point_stops_the_coordinator_right_there() {
        let want: [(FaultPoint, &[&str]); 6] = [
            (FaultPoint::BeforePrepare, &[]),
            (FaultPoint::AfterDecision, &["1: decide"]),
            (FaultPoint::BetweenPrepares, &["2: PREPARE TRANSACTION"]),
            (
                FaultPoint::AfterPrepares,
                &["2: PREPARE TRANSACTION", "3: PREPARE TRANSACTION"],
            ),
            (
                FaultPoint::AfterRecord,
                &[
                    "2: PREPARE TRANSACTION",
                    "3: PREPARE TRANSACTION",
                    "1: decide",
                    "1: COMMIT",
                ],
            ),
            (
                FaultPoint::BetweenCommits,
                &[
                    "2: PREPARE TRANSACTION",
                    "3: PREPARE TRANSACTION",
                    "1: decide",
                    "1: COMMIT",
                    "2: COMMIT PREPARED",
                ],
            ),
        ];
        for (point, journal) in want {
            let mut s = Setup::new(4, &[1, 2, 3]);
            s.faults = Faults::at(point, FaultAction::Abandon);
            let (r, j) = s.commit().await;
            assert!(
                matches!(r, Err(CommitError::Halted(p)) if p == point),
                "{point}: {r:?}"
            );
            assert_eq!(j, lines(journal), "{point}");

            // Hang: never returns.
            let mut s = Setup::new(4, &[1, 2, 3]);
            s.faults = Faults::at(point, FaultAction::Hang);
            let hung = tokio::time::timeout(Duration::from_millis(20), s.commit()).await;
            assert!(hung.is_err(), "{point} returned");
        }
        // Faults only concern 2PC: a single writer commits.
        let mut s = Setup::new(2, &[1]);
        s.faults = Faults::at(FaultPoint::BeforePrepare, FaultAction::Abandon);
        assert!(s.commit().await.0.is_ok());
    }

    #[tokio::test]
    async fn each_fault_point_of_the_catalog_protocol_stops_it_right_there() {
        let want: [(FaultPoint, &[&str]); 5] = [
            (FaultPoint::BeforePrepare, &[]),
            (FaultPoint::BetweenPrepares, &["1: PREPARE TRANSACTION"]),
            (
                FaultPoint::AfterPrepares,
                &["1: PREPARE TRANSACTION", "2: PREPARE TRANSACTION"],
            ),
            (
                FaultPoint::AfterRecord,
                &[
                    "1: PREPARE TRANSACTION",
                    "2: PREPARE TRANSACTION",
                    "record 1,2",
                ],
            ),
            (
                FaultPoint::BetweenCommits,
                &[
                    "1: PREPARE TRANSACTION",
                    "2: PREPARE TRANSACTION",
                    "record 1,2",
                    "1: COMMIT PREPARED",
                ],
            ),
        ];
        for (point, journal) in want {
            let mut s = Setup::new(3, &[1, 2]).without_tables();
            s.faults = Faults::at(point, FaultAction::Abandon);
            let (r, j) = s.commit().await;
            assert!(
                matches!(r, Err(CommitError::Halted(p)) if p == point),
                "{point}: {r:?}"
            );
            assert_eq!(j, lines(journal), "{point}");
        }
    }

    #[tokio::test]
    async fn a_failed_first_prepare_with_the_split_armed_rolls_back_the_rest() {
        let mut s = Setup::new(3, &[1, 2, 3]).fail(2, "PREPARE", Some("40001"));
        s.faults = Faults::at(FaultPoint::BetweenPrepares, FaultAction::Abandon);
        let (r, j) = s.commit().await;
        assert!(
            matches!(
                r,
                Err(CommitError::Failed {
                    shard: ShardId(2),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            j,
            lines(&[
                "2: PREPARE TRANSACTION -> error",
                "1: ROLLBACK",
                "3: ROLLBACK"
            ])
        );
    }

    #[test]
    fn fault_settings_parse() {
        for p in FaultPoint::ALL {
            assert_eq!(
                Faults::parse(p.as_str()),
                Some(Faults::at(p, FaultAction::Hang))
            );
            assert_eq!(
                Faults::parse(&format!("{p}:abandon")),
                Some(Faults::at(p, FaultAction::Abandon))
            );
            assert_eq!(
                Faults::parse(&format!("{p}:pause")),
                Some(Faults::at(p, FaultAction::Pause))
            );
        }
        assert_eq!(Faults::parse("after_prepare"), None);
        assert_eq!(Faults::parse("after_record:explode"), None);
        assert!(FaultPoint::AfterRecord.after_commit_point());
        assert!(!FaultPoint::AfterPrepares.after_commit_point());
    }

    #[test]
    fn gids_are_unique_per_coordinator_and_name_it() {
        let c = Coordinator::new(RouterId::new("rx").expect("id"), Faults::none());
        let a = c.next_gid();
        let b = c.next_gid();
        assert_ne!(a, b);
        assert_eq!((a.counter(), b.counter()), (1, 2));
        assert_eq!(b.router(), c.router());
    }
}

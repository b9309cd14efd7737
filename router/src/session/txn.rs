//! Transactions spanning shards (SPEC §7), simple query protocol.
//!
//! The session's loop reads from one backend, [`Session::attached`]; a transaction that
//! touches another shard *parks* the current backend (idle inside its transaction,
//! nothing outstanding, so nothing to read) and attaches the shard's, opening the
//! transaction there with the client's BEGIN (queued ahead of the statement, its reply
//! swallowed). Statements go to whichever participant they need. COMMIT runs the
//! two-phase commit coordinator ([`crate::twopc`]) over every participant, ROLLBACK
//! rolls them all back; the router answers both itself.
//!
//! Limits, each refused with 0A000 rather than guessed: savepoints in a transaction
//! that spans shards (a shard joining after a SAVEPOINT would lack it), the extended
//! protocol once a second shard joined, and everything when the router has no catalog
//! connection (no commit log, so no atomic commit).

use super::error::SessionError;
use super::{Attached, Session, VirtualTxn};
use crate::backend::BackendError;
use crate::protocol::backend::{encode_command_complete, encode_ready};
use crate::twopc::{CommitError, CommitLog, Member, Outcome};
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{Plan, StatementKind};
use tokio::io::{AsyncRead, AsyncWrite};

/// True if a statement of this kind may change data (a read may too, through a
/// function, but PostgreSQL's own answer for that is the same single-phase COMMIT).
pub(crate) fn may_write(plan: &Plan) -> bool {
    let kinds = std::iter::once(&plan.kind).chain(plan.statements.iter().map(|p| &p.kind));
    kinds.into_iter().any(|k| {
        !matches!(
            k,
            StatementKind::Begin
                | StatementKind::Commit
                | StatementKind::Rollback
                | StatementKind::Savepoint
                | StatementKind::SessionSet
                | StatementKind::SessionShow
                | StatementKind::Read
        )
    })
}

/// True if the plan holds a SAVEPOINT, RELEASE or ROLLBACK TO.
pub(crate) fn has_savepoint(plan: &Plan) -> bool {
    plan.kind == StatementKind::Savepoint
        || plan
            .statements
            .iter()
            .any(|p| p.kind == StatementKind::Savepoint)
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// True while a second shard has joined the transaction.
    pub(crate) fn spans_shards(&self) -> bool {
        !self.parked.is_empty()
    }

    /// True if the transaction failed on any participant.
    pub(crate) fn any_participant_failed(&self) -> bool {
        self.attached
            .iter()
            .chain(self.parked.iter())
            .any(|a| a.conn.status == b'E')
    }

    /// In an explicit transaction on the attached backend, with nothing outstanding, a
    /// statement needs `shard`: make `shard`'s backend (joining it to the transaction if
    /// new) the attached one and park the current one.
    pub(crate) async fn join_shard(&mut self, shard: ShardId) -> Result<(), SessionError> {
        let from = self.attached.as_ref().map(|a| a.shard).unwrap_or(shard);
        if self.ctx.twopc.is_none() {
            return Err(SessionError::CrossShard { from, to: shard });
        }
        if self.any_participant_failed() {
            return Err(SessionError::InFailedTransaction);
        }
        if let Some(i) = self.parked.iter().position(|p| p.shard == shard) {
            let next = self.parked.swap_remove(i);
            if let Some(cur) = self.attached.replace(next) {
                self.parked.push(cur);
            }
            self.publish_activity();
            return Ok(());
        }
        if self.txn_savepoints {
            return Err(SessionError::Unsupported(
                "a transaction that used savepoints cannot join another shard yet".into(),
            ));
        }
        let Some(cur) = self.attached.take() else {
            return Err(SessionError::CrossShard { from, to: shard });
        };
        self.virtual_txn = Some(VirtualTxn {
            begin_sql: self.txn_begin.clone().unwrap_or_else(|| "BEGIN".into()),
            failed: false,
        });
        let joined = self.attach(shard).await;
        self.virtual_txn = None;
        match joined {
            Ok(()) => {
                tracing::debug!(%shard, participants = self.parked.len() + 2, "shard joined the transaction");
                self.parked.push(cur);
                Ok(())
            }
            Err(e) => {
                self.attached = Some(cur);
                Err(e)
            }
        }
    }

    /// COMMIT (`commit`) or ROLLBACK of a transaction spanning shards, answered by the
    /// router once every participant has ended. Call with nothing outstanding.
    pub(crate) async fn end_spanning(&mut self, commit: bool) -> Result<(), SessionError> {
        let Some(twopc) = self.ctx.twopc.as_ref() else {
            return Err(SessionError::Unsupported(
                "transaction spanning shards without a catalog connection".into(),
            ));
        };
        let (coord, log) = (twopc.coord.clone(), twopc.log.clone());
        let mut parts: Vec<Attached> = self.attached.take().into_iter().collect();
        parts.append(&mut self.parked);
        self.entry.set_activity("active", None, None);
        let result = {
            let mut members: Vec<Member<'_, BackendError>> = parts
                .iter_mut()
                .map(|a| Member {
                    shard: a.shard,
                    wrote: a.wrote,
                    conn: &mut *a.conn,
                })
                .collect();
            if commit {
                Some(coord.commit(&mut members, &*log).await)
            } else {
                coord.rollback(&mut members).await;
                None
            }
        };
        // Every participant is now outside a transaction (or broken, and then the pool
        // discards it on drop).
        drop(parts);
        self.txn_begin = None;
        self.txn_savepoints = false;
        self.portals.clear();
        if self.shard_override.is_some_and(|(_, local)| local) {
            self.shard_override = None;
        }
        let pending = std::mem::take(&mut self.txn_vars);
        let mut b = BytesMut::new();
        match result {
            None => encode_command_complete(&mut b, "ROLLBACK"),
            Some(Ok(Outcome::RolledBack)) => encode_command_complete(&mut b, "ROLLBACK"),
            Some(Ok(Outcome::Committed { gid, unfinished })) => {
                for c in &pending {
                    self.vars.apply(c);
                }
                encode_command_complete(&mut b, "COMMIT");
                if let (Some(gid), true) = (gid, unfinished.is_empty()) {
                    // Best effort: recovery deletes the record anyway.
                    if let Err(error) = log.forget(&gid).await {
                        tracing::debug!(%gid, %error, "could not forget a commit record");
                    }
                }
            }
            Some(Err(CommitError::Failed { shard, source })) => {
                SessionError::from_backend(shard, source).encode(&mut b);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "distributed commit did not complete");
                let code = match &e {
                    CommitError::RecoveryAborted { .. } => "40000",
                    CommitError::Unknown { .. } => "08007",
                    CommitError::Failed { .. } | CommitError::Halted(_) => "XX000",
                };
                SessionError::Commit {
                    code,
                    message: e.to_string(),
                }
                .encode(&mut b);
            }
        }
        encode_ready(&mut b, b'I');
        self.out.extend_from_slice(&b);
        self.entry.set_activity("idle", None, None);
        Ok(())
    }
}

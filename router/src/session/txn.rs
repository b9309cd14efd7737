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
//! The extended protocol works the same way: a Bind (or the Execute or Describe of a
//! portal) on another shard first syncs and settles the current backend, then the shard
//! joins; an Execute of COMMIT or ROLLBACK ends every participant, its ReadyForQuery
//! following at the client's Sync. Statements that run on every shard (DDL, TRUNCATE,
//! reference-table writes, COPY) make every shard join.
//!
//! Savepoints: SAVEPOINT, RELEASE and ROLLBACK TO in a transaction spanning shards run
//! on every participant; a shard joining later gets the transaction's active
//! savepoints replayed after its BEGIN (a ROLLBACK TO then undoes its whole part, which
//! all came after).
//!
//! An extended-protocol batch (no BEGIN) whose statements need several shards — single
//! shard statements on different shards, or a multi-shard write among other
//! statements — has its implicit transaction made explicit on its first backend; the
//! other shards join it and all commit (two-phase) at the client's Sync.
//!
//! Limits, refused with 0A000 rather than guessed: everything spanning shards when the
//! router has no catalog connection (no commit log, so no atomic commit).

use super::error::SessionError;
use super::refusal::Refusal;
use super::{Attached, FanoutWritePortal, Session, VirtualTxn};
use crate::backend::{BackendConn, BackendError, PooledConn};
use crate::protocol::backend::{
    decode_command_tag, decode_ready_status, encode_command_complete, encode_ready,
};
use crate::protocol::frontend::{
    encode_bind_with_results, encode_describe, encode_execute, encode_parse, encode_query,
    encode_sync,
};
use crate::protocol::Frame;
use crate::twopc::{CommitError, CommitLog, Member, Outcome};
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{FanoutWrite, KeyMove, Plan, StatementKind};
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

/// The savepoint a SAVEPOINT, RELEASE or ROLLBACK TO statement names, as written
/// (`s1`, `"My Point"`).
fn savepoint_name(sql: &str) -> Option<&str> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    if let Some(q) = sql.find('"') {
        return sql.get(q..);
    }
    sql.split_whitespace().last()
}

/// Normalized for comparison: quoted names as they are, others lowercased.
fn savepoint_key(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => name.to_lowercase(),
    }
}

/// Keeps `active` (the transaction's savepoints, oldest first) up to date with one
/// statement: SAVEPOINT adds, RELEASE removes it and later ones, ROLLBACK TO removes
/// later ones. Other statements leave it alone.
pub(crate) fn track_savepoint(active: &mut Vec<String>, sql: &str) {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let Some(name) = savepoint_name(sql) else {
        return;
    };
    let key = savepoint_key(name);
    let pos = active.iter().rposition(|s| savepoint_key(s) == key);
    match first.as_str() {
        "savepoint" => active.push(name.to_string()),
        "release" => {
            if let Some(i) = pos {
                active.truncate(i);
            }
        }
        "rollback" => {
            if let Some(i) = pos {
                active.truncate(i + 1);
            }
        }
        _ => {}
    }
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
        !self.txn.parked.is_empty()
    }

    /// True if the transaction failed on any participant.
    pub(crate) fn any_participant_failed(&self) -> bool {
        self.attached
            .iter()
            .chain(self.txn.parked.iter())
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
        if let Some(i) = self.txn.parked.iter().position(|p| p.shard == shard) {
            let next = self.txn.parked.swap_remove(i);
            if let Some(cur) = self.attached.replace(next) {
                self.txn.parked.push(cur);
            }
            self.publish_activity();
            return Ok(());
        }
        let Some(cur) = self.attached.take() else {
            return Err(SessionError::CrossShard { from, to: shard });
        };
        // The transaction's BEGIN, then its active savepoints: a later ROLLBACK TO one
        // of them undoes on this shard everything it did (all of it came after).
        let mut begin_sql = self.txn.begin.clone().unwrap_or_else(|| "BEGIN".into());
        for sp in &self.txn.savepoints {
            begin_sql.push_str("; SAVEPOINT ");
            begin_sql.push_str(sp);
        }
        self.txn.virtual_txn = Some(VirtualTxn {
            begin_sql,
            failed: false,
        });
        let joined = self.attach(shard, true).await;
        self.txn.virtual_txn = None;
        match joined {
            Ok(()) => {
                tracing::debug!(%shard, participants = self.txn.parked.len() + 2, "shard joined the transaction");
                self.txn.parked.push(cur);
                // Every participant again (the deadlock detector must see the one
                // parked just now).
                self.publish_activity();
                Ok(())
            }
            Err(e) => {
                self.attached = Some(cur);
                Err(e)
            }
        }
    }

    /// After a deadlock error on the attached backend: the other participants roll
    /// back now rather than at the client's ROLLBACK, releasing their locks as
    /// PostgreSQL releases a failed transaction's (no savepoint keeps them), so the
    /// transaction the victim blocked on another shard goes on at once. The attached
    /// backend stays failed (the client still ends the transaction, and a COMMIT
    /// rolls back); the rolled back ones take part as readers from here.
    pub(crate) async fn roll_back_parked(&mut self) {
        self.txn.roll_back_parked = false;
        for p in self.txn.parked.iter_mut() {
            if let Err(error) = p.conn.run_silent("ROLLBACK").await {
                tracing::debug!(shard = %p.shard, %error, "ROLLBACK after a deadlock failed; the connection is closed");
                p.conn.broken = true;
            }
            p.wrote = None;
        }
    }

    /// The client's Sync ending an extended-protocol batch whose implicit transaction
    /// spans shards: what the attached backend owes is settled, then every participant
    /// commits (two-phase commit when several wrote) — or rolls back if anything in the
    /// batch failed, as PostgreSQL rolls back a failed implicit transaction — and the
    /// client gets ReadyForQuery (after the commit's error, if it failed).
    pub(crate) async fn end_implicit_spanning(&mut self) -> Result<(), SessionError> {
        self.syncs_seen += 1;
        self.skip_until_sync = false;
        self.parse_ack = None;
        if self.described_fanout.take().is_some() {
            self.emit_error(&SessionError::from(Refusal::DescribedNotExecuted));
        }
        if let Some(a) = self.attached.as_mut() {
            a.sync_silent();
        }
        self.drain_attached().await?;
        // An error in what was drained skips to *this* Sync, which is being answered.
        self.skip_until_sync = false;
        self.syncs_answered = self.syncs_seen;
        let commit = !self.any_participant_failed();
        Box::pin(self.end_spanning(commit, EndAnswer::Ready)).await
    }

    /// COMMIT (`commit`) or ROLLBACK of a transaction spanning shards, answered by the
    /// router once every participant has ended. Call with nothing outstanding.
    pub(crate) async fn end_spanning(
        &mut self,
        commit: bool,
        answer: EndAnswer,
    ) -> Result<(), SessionError> {
        self.txn.implicit_spanning = false;
        let tag = !matches!(answer, EndAnswer::Ready);
        let Some(twopc) = self.ctx.twopc.as_ref() else {
            return Err(Refusal::NoCommitLog("transaction spanning shards").into());
        };
        let (coord, log) = (twopc.coord.clone(), twopc.log.clone());
        let mut parts: Vec<Attached> = self.attached.take().into_iter().collect();
        parts.append(&mut self.txn.parked);
        // The first writer is the commit point, released a round trip before the
        // others (they still COMMIT PREPARED after it): the shard the transaction began
        // writing on last, whose locks were taken last — where an application that
        // takes its most contended lock last (TPC-B's branch row) has it.
        parts.sort_by_key(|a| std::cmp::Reverse(a.wrote));
        self.entry.set_activity("active", None, None);
        let result = {
            let mut members: Vec<Member<'_, BackendError>> = parts
                .iter_mut()
                .map(|a| Member {
                    shard: a.shard,
                    wrote: a.wrote.is_some(),
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
        self.txn.begin = None;
        self.txn.savepoints.clear();
        self.portals.clear();
        if self.shard_override.is_some_and(|(_, local)| local) {
            self.shard_override = None;
        }
        let pending = std::mem::take(&mut self.txn.vars);
        let mut b = BytesMut::new();
        match result {
            None | Some(Ok(Outcome::RolledBack)) => {
                if tag {
                    encode_command_complete(&mut b, "ROLLBACK");
                }
            }
            Some(Ok(Outcome::Committed { gid, unfinished })) => {
                for c in &pending {
                    self.vars.apply(c);
                }
                if tag {
                    encode_command_complete(&mut b, "COMMIT");
                }
                // Only the catalog protocol leaves a record here (a decision row on a
                // shard is deleted by recovery, in batches). Best effort: recovery
                // deletes the record anyway.
                let catalog_record = gid.filter(|g| g.coordinator().is_none());
                if let (Some(gid), true) = (catalog_record, unfinished.is_empty()) {
                    if let Err(error) = log.forget(&gid).await {
                        tracing::debug!(%gid, %error, "could not forget a commit record");
                    }
                }
            }
            Some(Err(CommitError::Failed { shard, source })) => {
                SessionError::from_backend(shard, source).encode(&mut b);
            }
            Some(Err(e)) => commit_error(&e).encode(&mut b),
        }
        if !matches!(answer, EndAnswer::Tag) {
            encode_ready(&mut b, b'I');
        }
        self.out.extend_from_slice(&b);
        self.entry.set_activity("idle", None, None);
        Ok(())
    }
}

/// How the client is answered when a transaction spanning shards ends.
pub(crate) enum EndAnswer {
    /// COMMIT's or ROLLBACK's command tag (extended protocol: ReadyForQuery follows at
    /// the client's Sync).
    Tag,
    /// The tag and ReadyForQuery (simple protocol).
    TagAndReady,
    /// ReadyForQuery only: the end, at its Sync, of an extended-protocol batch's
    /// implicit transaction that spanned shards (see `end_implicit_spanning`).
    Ready,
}

/// What one shard answered to a multi-shard write.
pub(super) struct ShardReply {
    shard: ShardId,
    row_description: Option<Frame>,
    rows: Vec<Frame>,
    tag: String,
    /// CopyData of a `COPY (<write> RETURNING …) TO STDOUT` (a data-modifying CTE's
    /// write, `super::ctewrite`).
    pub(super) copied: Vec<Frame>,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// A multi-shard UPDATE or DELETE, or a reference-table write, outside a transaction
    /// block: the statement runs inside a transaction on every target shard, then all
    /// commit with two-phase commit (atomic), and the client gets one answer: the
    /// RETURNING rows concatenated and the command tag with the row counts summed (for
    /// a reference table, one shard's answer: every shard holds the same copy).
    pub(crate) async fn run_fanout_write(&mut self, w: &FanoutWrite) -> Result<(), SessionError> {
        crate::stats::bump(&self.ctx.stats.multi_shard_writes);
        if self.ctx.twopc.is_none() {
            self.fail_simple(SessionError::from(Refusal::NoCommitLog(
                "write on several shards",
            )));
            return Ok(());
        }
        let catalog = self.ctx.catalog.current();
        if let Err(e) = self.check_defaults(&catalog, w).await {
            self.fail_simple(e);
            return Ok(());
        }
        let (mut conns, mut replies, mut failure) =
            self.begin_write_everywhere(&catalog, w, false).await;
        if let (None, Some(m)) = (&failure, &w.key_move) {
            let mut refs: Vec<(ShardId, &mut BackendConn)> =
                conns.iter_mut().map(|(s, c)| (*s, &mut **c)).collect();
            failure = self
                .move_keys(&mut refs, &mut replies, m, false)
                .await
                .err();
        }
        let mut b = BytesMut::new();
        if self.finish_write(&mut conns, failure, &mut b).await {
            merge_write_replies(&mut b, &replies, w.replicated);
        }
        drop(conns);
        self.publish_activity();
        encode_ready(&mut b, b'I');
        self.emit_local(&b);
        Ok(())
    }

    /// A multi-shard write bound through the extended protocol (UPDATE/DELETE without
    /// the key, a reference-table write, a multi-row INSERT split by key, with the
    /// client's parameters), at its Execute. Alone in its batch outside a transaction
    /// block, it runs in a transaction on every target shard and commits with two-phase
    /// commit, as with the simple protocol. Inside a transaction block every target shard
    /// joins the transaction; inside a batch that executed something before it, or that
    /// sends more before its Sync (psycopg's pipeline, `executemany`, node-postgres), the
    /// batch's implicit transaction becomes one spanning shards (see
    /// [`Session::ensure_backend`]), committed at the client's Sync as PostgreSQL commits
    /// the batch. The client gets one answer (RETURNING rows concatenated, the count
    /// summed; one copy for reference tables), in batches of `limit.rows` rows when the
    /// Execute set a row limit ([`Session::answer_write`]); ReadyForQuery follows at its
    /// Sync.
    pub(crate) async fn run_fanout_write_extended(
        &mut self,
        frame: &Frame,
        p: &FanoutWritePortal,
        describe: bool,
        limit: &RowLimit,
    ) -> Result<(), SessionError> {
        if self.ctx.twopc.is_none() {
            self.fail_extended(SessionError::from(Refusal::NoCommitLog(
                "write on several shards",
            )));
            return Ok(());
        }
        let mut in_txn = self.client_status() != b'I';
        // Executed in *this* batch (a previous batch's Sync may still be unanswered).
        let executed = self
            .attached
            .as_ref()
            .is_some_and(|a| a.executed && a.conn.unsynced);
        let alone = matches!(self.client.peek_frame(), Some((b'S', _)));
        if !in_txn && (executed || !alone) {
            if let Err(e) = self.open_implicit_spanning(p.write.shards[0]).await {
                self.fail_extended(e);
                return Ok(());
            }
            in_txn = true;
        }
        if let Some(a) = self.attached.as_mut() {
            // Earlier messages of the batch (a Parse on that backend…) are settled
            // first; this Execute comes back once their replies went to the client.
            a.sync_silent();
            if !a.expects.is_empty() {
                self.deferred = Some(frame.clone());
                return Ok(());
            }
        }
        crate::stats::bump(&self.ctx.stats.multi_shard_writes);
        let catalog = self.ctx.catalog.current();
        if let Err(e) = self.check_defaults(&catalog, &p.write).await {
            self.fail_extended(e);
            return Ok(());
        }
        if in_txn {
            self.fanout_write_in_block(p, describe, limit).await
        } else {
            self.fanout_write_alone(p, describe, limit).await
        }
    }

    /// Makes the current extended-protocol batch's implicit transaction one that shards
    /// can join (on `first`'s backend when none is attached yet); it commits at the
    /// client's Sync (`end_implicit_spanning`).
    async fn open_implicit_spanning(&mut self, first: ShardId) -> Result<(), SessionError> {
        if self.shard_override.is_some() {
            return Err(Refusal::FanoutWriteHere.into());
        }
        if self.attached.is_none() {
            self.attach(first, false).await?;
        }
        if let Some(a) = self.attached.as_mut() {
            a.begin_implicit_block();
        }
        self.txn.implicit_spanning = true;
        self.txn.begin = Some("BEGIN".into());
        self.txn.savepoints.clear();
        Ok(())
    }

    /// [`Self::run_fanout_write_extended`] inside a transaction block (explicit, or a
    /// batch's made spanning): every target shard joins it and runs its part.
    async fn fanout_write_in_block(
        &mut self,
        p: &FanoutWritePortal,
        describe: bool,
        limit: &RowLimit,
    ) -> Result<(), SessionError> {
        let mut replies = Vec::new();
        for (i, &shard) in p.write.shards.iter().enumerate() {
            match self.attach_writer(shard).await? {
                Ok(()) => {}
                Err(SessionError::ShardRemoved(_)) => continue,
                Err(e) => {
                    self.fail_extended(e);
                    return Ok(());
                }
            }
            let Some(a) = self.attached.as_mut() else {
                return Err(SessionError::LostBackend { shard });
            };
            match exec_write_extended(&mut a.conn, shard, i, p, describe, false).await {
                Ok(r) => replies.push(r),
                Err(e) => {
                    if a.conn.broken {
                        return Err(SessionError::LostBackend { shard });
                    }
                    self.fail_extended(e);
                    return Ok(());
                }
            }
        }
        if let Some(e) = self.shard_added_since(&p.write) {
            self.fail_extended(e);
            return Ok(());
        }
        let mut b = BytesMut::new();
        if let Some(m) = &p.write.key_move {
            let binary = super::keymove::shard_formats(m, &p.results).1;
            if let Err(e) = self.move_keys_in_txn(&mut replies, m, binary).await {
                self.fail_extended(e);
                return Ok(());
            }
            if describe && !m.returning {
                encode_no_data(&mut b);
            }
        }
        self.answer_write(b, &replies, p.write.replicated, limit);
        self.publish_activity();
        Ok(())
    }

    /// [`Self::run_fanout_write_extended`] alone in its batch outside a transaction
    /// block: its own transaction on every target shard, committed with two-phase
    /// commit before the answer.
    async fn fanout_write_alone(
        &mut self,
        p: &FanoutWritePortal,
        describe: bool,
        limit: &RowLimit,
    ) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        let mut conns: Vec<(ShardId, PooledConn)> = Vec::new();
        let mut replies = Vec::new();
        let mut failure: Option<SessionError> = None;
        // Holding a backend already (the batch's Parse went to one): no waiting for
        // pool capacity then (see `crate::backend::pool`).
        let holding = self.attached.is_some();
        for (i, &shard) in p.write.shards.iter().enumerate() {
            let mut conn = match self
                .checkout_primary(&catalog, shard, holding || !conns.is_empty())
                .await
            {
                Ok(c) => c,
                Err(SessionError::ShardRemoved(_)) => continue,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            self.publish_write_holds(&conns, (shard, &conn));
            let r = exec_write_extended(&mut conn, shard, i, p, describe, true).await;
            conns.push((shard, conn));
            match r {
                Ok(reply) => replies.push(reply),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            failure = self.shard_added_since(&p.write);
        }
        if let (None, Some(m)) = (&failure, &p.write.key_move) {
            let mut refs: Vec<(ShardId, &mut BackendConn)> =
                conns.iter_mut().map(|(s, c)| (*s, &mut **c)).collect();
            let binary = super::keymove::shard_formats(m, &p.results).1;
            failure = self
                .move_keys(&mut refs, &mut replies, m, binary)
                .await
                .err();
        }
        let mut b = BytesMut::new();
        let committed = self.finish_write(&mut conns, failure, &mut b).await;
        drop(conns);
        self.publish_activity();
        if committed {
            if describe && p.write.key_move.as_ref().is_some_and(|m| !m.returning) {
                encode_no_data(&mut b);
            }
            self.answer_write(b, &replies, p.write.replicated, limit);
        } else {
            // An ErrorResponse (or ROLLBACK's tag): what follows up to Sync is skipped.
            self.skip_until_sync = true;
            self.emit_local(&b);
        }
        Ok(())
    }

    /// The client's answer to a multi-shard write after `b`: all of it, or — when the
    /// Execute set a row limit and RETURNING gave more rows than that — the first rows
    /// and PortalSuspended, the rest kept on the portal for the next Executes, as
    /// PostgreSQL runs such a write to completion and then hands out its rows.
    fn answer_write(
        &mut self,
        mut b: BytesMut,
        replies: &[ShardReply],
        replicated: bool,
        limit: &RowLimit,
    ) {
        let replies = if replicated {
            &replies[..replies.len().min(1)]
        } else {
            replies
        };
        let rows: usize = replies.iter().map(|r| r.rows.len()).sum();
        if limit.rows == 0 || rows <= limit.rows {
            merge_write_replies(&mut b, replies, replicated);
            self.emit_local(&b);
            return;
        }
        let description = replies.iter().find_map(|r| r.row_description.as_ref());
        if let Some(d) = description {
            b.extend_from_slice(d.raw());
        }
        self.emit_local(&b);
        let first = replies.first().map_or("UPDATE 0", |r| r.tag.as_str());
        let command = first.rsplit_once(' ').map_or(first, |(c, _)| c);
        let rows = replies
            .iter()
            .flat_map(|r| r.rows.iter().map(|f| f.raw().clone()))
            .collect();
        self.buffer_portal(
            &limit.portal,
            description.map(|d| d.raw().clone()),
            rows,
            command,
            limit.rows,
        );
    }

    /// Ends a write that ran, each in its own transaction, on `conns` outside a
    /// transaction block: everything rolls back after a `failure` (whose error goes into
    /// `b`), else all commit with two-phase commit. True when committed (the caller then
    /// adds its answer to `b`); else `b` holds the client's error or `ROLLBACK` tag.
    pub(crate) async fn finish_write(
        &self,
        conns: &mut [(ShardId, PooledConn)],
        failure: Option<SessionError>,
        b: &mut BytesMut,
    ) -> bool {
        let Some(twopc) = self.ctx.twopc.as_ref() else {
            SessionError::from(Refusal::NoCommitLog("write on several shards")).encode(b);
            return false;
        };
        let (coord, log) = (twopc.coord.clone(), twopc.log.clone());
        let mut members: Vec<Member<'_, BackendError>> = conns
            .iter_mut()
            .map(|(shard, conn)| Member {
                shard: *shard,
                wrote: true,
                conn: &mut **conn,
            })
            .collect();
        if let Some(e) = failure {
            coord.rollback(&mut members).await;
            e.encode(b);
            return false;
        }
        match coord.commit(&mut members, &*log).await {
            Ok(Outcome::Committed { gid, unfinished }) => {
                let catalog_record = gid.filter(|g| g.coordinator().is_none());
                if let (Some(gid), true) = (catalog_record, unfinished.is_empty()) {
                    if let Err(error) = log.forget(&gid).await {
                        tracing::debug!(%gid, %error, "could not forget a commit record");
                    }
                }
                true
            }
            Ok(Outcome::RolledBack) => {
                encode_command_complete(b, "ROLLBACK");
                false
            }
            Err(CommitError::Failed { shard, source }) => {
                SessionError::from_backend(shard, source).encode(b);
                false
            }
            Err(e) => {
                commit_error(&e).encode(b);
                false
            }
        }
    }

    /// Inside a transaction block: makes `shard` the attached participant for a write
    /// (joining it to the transaction, or sending the router-answered BEGIN), settled
    /// and marked as a writer. The inner error is the client's (the transaction failed,
    /// or the shard could not join); the outer one ends the session.
    pub(super) async fn attach_writer(
        &mut self,
        shard: ShardId,
    ) -> Result<Result<(), SessionError>, SessionError> {
        if self.attached.as_ref().is_none_or(|a| a.shard != shard) {
            let joined = if self.attached.is_none() {
                // BEGIN answered by the router so far: it goes out now.
                self.attach(shard, false).await
            } else {
                Box::pin(self.join_shard(shard)).await
            };
            if let Err(e) = joined {
                return Ok(Err(e));
            }
            self.drain_attached().await?;
        }
        let Some(a) = self.attached.as_mut() else {
            return Err(SessionError::LostBackend { shard });
        };
        if a.conn.status == b'E' {
            return Ok(Err(SessionError::InFailedTransaction));
        }
        a.note_write(true);
        a.executed = true;
        Ok(Ok(()))
    }

    /// A multi-shard UPDATE/DELETE or reference-table write inside a transaction block:
    /// every target shard joins the transaction and runs it there; the writes commit
    /// with the transaction (two-phase commit at COMMIT). An error on a shard fails the
    /// whole transaction.
    pub(crate) async fn run_fanout_write_in_txn(
        &mut self,
        w: &FanoutWrite,
    ) -> Result<(), SessionError> {
        crate::stats::bump(&self.ctx.stats.multi_shard_writes);
        if let Err(e) = self.check_defaults(&self.ctx.catalog.current(), w).await {
            self.fail_simple(e);
            return Ok(());
        }
        let mut replies = Vec::new();
        for (i, &shard) in w.shards.iter().enumerate() {
            match self.attach_writer(shard).await? {
                Ok(()) => {}
                Err(SessionError::ShardRemoved(_)) => continue,
                Err(e) => {
                    self.fail_simple(e);
                    return Ok(());
                }
            }
            let Some(a) = self.attached.as_mut() else {
                return Err(SessionError::LostBackend { shard });
            };
            match exec_write(&mut a.conn, shard, w.sql_for(i)).await {
                Ok(r) => replies.push(r),
                Err(e) => {
                    if a.conn.broken {
                        return Err(SessionError::LostBackend { shard });
                    }
                    self.emit_error(&e);
                    self.emit_ready(b'E');
                    return Ok(());
                }
            }
        }
        if let Some(e) = self.shard_added_since(w) {
            self.fail_simple(e);
            return Ok(());
        }
        if let Some(m) = &w.key_move {
            if let Err(e) = self.move_keys_in_txn(&mut replies, m, false).await {
                // The rows were updated in place: the transaction must not commit
                // (`fail_simple` fails it, as PostgreSQL fails it after an error).
                self.fail_simple(e);
                return Ok(());
            }
        }
        let mut b = BytesMut::new();
        merge_write_replies(&mut b, &replies, w.replicated);
        encode_ready(&mut b, self.client_status());
        self.emit_local(&b);
        self.publish_activity();
        Ok(())
    }

    /// SAVEPOINT, RELEASE or ROLLBACK TO in a transaction spanning shards: run on every
    /// participant in turn (none is left holding the savepoint without the others), the
    /// client gets one answer, and the savepoint list follows.
    /// `extended`: the command came as Bind/Execute, so no ReadyForQuery follows here
    /// (the client's Sync brings it), and an error skips the rest up to Sync.
    pub(crate) async fn savepoint_everywhere(
        &mut self,
        sql: &str,
        extended: bool,
    ) -> Result<(), SessionError> {
        let mut parts: Vec<Attached> = self.attached.take().into_iter().collect();
        parts.append(&mut self.txn.parked);
        parts.sort_by_key(|a| a.shard);
        let mut reply: Option<Result<ShardReply, SessionError>> = None;
        let mut lost = None;
        for a in parts.iter_mut() {
            let r = exec_write(&mut a.conn, a.shard, sql).await;
            if a.conn.broken {
                lost = Some(a.shard);
            }
            match (&reply, r) {
                // The first error is the client's answer.
                (Some(Err(_)), _) => {}
                (_, r) => reply = Some(r),
            }
        }
        // Back as they were: the first one attached, the others parked.
        let mut parts = parts.into_iter();
        self.attached = parts.next();
        self.txn.parked = parts.collect();
        if let Some(shard) = lost {
            return Err(SessionError::LostBackend { shard });
        }
        let mut b = BytesMut::new();
        match reply {
            Some(Ok(r)) => {
                track_savepoint(&mut self.txn.savepoints, sql);
                encode_command_complete(&mut b, &r.tag);
            }
            Some(Err(e)) => {
                e.encode(&mut b);
                self.skip_until_sync |= extended;
            }
            None => encode_command_complete(&mut b, "SAVEPOINT"),
        }
        if !extended {
            encode_ready(&mut b, self.client_status());
        }
        self.emit_local(&b);
        self.publish_activity();
        Ok(())
    }

    /// Runs what the attached backend still owes (a joined shard's BEGIN) to the end
    /// here rather than in the session loop.
    pub(crate) async fn drain_attached(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(a) = self.attached.as_mut() else {
                return Ok(());
            };
            if a.expects.is_empty() {
                return Ok(());
            }
            let shard = a.shard;
            let frame = match a.conn.flush().await {
                Ok(()) => a.conn.read().await,
                Err(e) => Err(e),
            };
            match frame {
                Ok(f) => self.on_backend_frame(f)?,
                Err(error) => {
                    a.conn.broken = true;
                    tracing::warn!(%shard, %error, "lost backend connection");
                    return Err(SessionError::LostBackend { shard });
                }
            }
        }
    }

    /// Runs `BEGIN; <write>` on one shard's primary, leaving the transaction open;
    /// `held` are the backends the write already holds on other shards, `holding`
    /// whether the caller holds another one besides (no waiting for pool capacity
    /// then). The outer error means no connection was obtained; the inner one is the
    /// statement's.
    pub(super) async fn write_on_shard(
        &mut self,
        catalog: &pgshard_catalog::Catalog,
        shard: ShardId,
        sql: &str,
        held: &[(ShardId, PooledConn)],
        holding: bool,
    ) -> Result<(PooledConn, Result<ShardReply, SessionError>), SessionError> {
        let mut conn = self
            .checkout_primary(catalog, shard, holding || !held.is_empty())
            .await?;
        self.publish_write_holds(held, (shard, &conn));
        let reply = exec_write(&mut conn, shard, sql).await;
        Ok((conn, reply))
    }

    /// Runs `BEGIN; <w's statement>` on each of `w`'s shards in turn (skipping one
    /// removed from the catalog since), stopping at the first failure, then checks
    /// [`Session::shard_added_since`]. Returns the backends (transactions open), the
    /// replies, and the failure if any; `holding` as for [`Session::write_on_shard`].
    pub(super) async fn begin_write_everywhere(
        &mut self,
        catalog: &pgshard_catalog::Catalog,
        w: &FanoutWrite,
        holding: bool,
    ) -> (
        Vec<(ShardId, PooledConn)>,
        Vec<ShardReply>,
        Option<SessionError>,
    ) {
        let mut conns: Vec<(ShardId, PooledConn)> = Vec::new();
        let mut replies = Vec::new();
        for (i, &shard) in w.shards.iter().enumerate() {
            let sql = format!("BEGIN; {}", w.sql_for(i));
            match self
                .write_on_shard(catalog, shard, &sql, &conns, holding)
                .await
            {
                Ok((conn, reply)) => {
                    conns.push((shard, conn));
                    match reply {
                        Ok(r) => replies.push(r),
                        Err(e) => return (conns, replies, Some(e)),
                    }
                }
                Err(SessionError::ShardRemoved(_)) => continue,
                Err(e) => return (conns, replies, Some(e)),
            }
        }
        let failure = self.shard_added_since(w);
        (conns, replies, failure)
    }

    /// A reference-table write goes to every shard of the catalog it was planned with.
    /// A shard `add-shard` put in the catalog since gets every reference write from
    /// then on, and its copy of the reference rows waits only for the writes begun
    /// before this router saw it: checked once the write ran everywhere, so a write
    /// that would be missing there fails (40001, retry) instead of committing.
    pub(super) fn shard_added_since(&self, w: &FanoutWrite) -> Option<SessionError> {
        if !w.replicated {
            return None;
        }
        let catalog = self.ctx.catalog.current();
        let added = catalog.shards.iter().find(|s| !w.shards.contains(&s.id))?;
        Some(SessionError::ShardAdded(added.id))
    }

    /// A multi-shard autocommit write runs in a transaction of the router's own on
    /// every shard, one after another: the deadlock detector sees the backends it
    /// holds (`held`) and the one it is about to run on (`next`) as one transaction.
    fn publish_write_holds(&self, held: &[(ShardId, PooledConn)], next: (ShardId, &BackendConn)) {
        let holds = held.iter().map(|(s, c)| super::hold(*s, c));
        self.entry
            .set_holds(holds.chain(std::iter::once(super::hold(next.0, next.1))));
    }

    /// A pooled connection to `shard`'s primary with the session's state replayed;
    /// `more` when the operation already holds a backend on another shard (no waiting
    /// for pool capacity, see [`crate::backend::pool`]).
    pub(crate) async fn checkout_primary(
        &self,
        catalog: &pgshard_catalog::Catalog,
        shard: ShardId,
        more: bool,
    ) -> Result<PooledConn, SessionError> {
        let _ = catalog;
        let mut conn =
            crate::hold::checkout_primary(&self.ctx, shard, &self.user, &self.database, more)
                .await?;
        let fp = self.vars.fingerprint();
        if conn.state_fp != fp {
            if let Err(e) = conn.run_silent(&self.vars.replay_sql()).await {
                conn.broken = true;
                return Err(SessionError::from_backend(shard, e));
            }
            conn.state_fp = fp;
        }
        Ok(conn)
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// After an UPDATE of the shard key ran in place on `conns` (each shard's reply in
    /// `replies`): the rows whose new bucket is another shard's move
    /// there ([`super::keymove`]), and the replies keep only their command tags.
    async fn move_keys(
        &self,
        conns: &mut [(ShardId, &mut BackendConn)],
        replies: &mut [ShardReply],
        m: &KeyMove,
        binary: bool,
    ) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        let returned: Vec<(ShardId, &[Frame])> = replies
            .iter()
            .map(|r| (r.shard, r.rows.as_slice()))
            .collect();
        let limit = self.ctx.config.max_intermediate_bytes;
        let moved = super::keymove::move_rows(conns, &returned, m, &catalog, limit, binary).await;
        drop(returned);
        moved?;
        client_rows(replies, m)
    }

    /// [`Self::move_keys`] inside a transaction block, where every shard has joined the
    /// transaction. On failure the caller fails the transaction (the rows were updated
    /// in place, so it must not commit), as PostgreSQL fails it after an error.
    async fn move_keys_in_txn(
        &mut self,
        replies: &mut [ShardReply],
        m: &KeyMove,
        binary: bool,
    ) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        let limit = self.ctx.config.max_intermediate_bytes;
        let mut parts: Vec<&mut Attached> = self
            .attached
            .iter_mut()
            .chain(self.txn.parked.iter_mut())
            .collect();
        let mut refs: Vec<(ShardId, &mut BackendConn)> =
            parts.iter_mut().map(|a| (a.shard, &mut *a.conn)).collect();
        let returned: Vec<(ShardId, &[Frame])> = replies
            .iter()
            .map(|r| (r.shard, r.rows.as_slice()))
            .collect();
        let moved =
            super::keymove::move_rows(&mut refs, &returned, m, &catalog, limit, binary).await;
        drop(returned);
        moved?;
        client_rows(replies, m)
    }
}

/// What the client gets of an UPDATE of the shard key's replies: its RETURNING
/// columns (the address and bucket taken off), or only the command tags.
fn client_rows(replies: &mut [ShardReply], m: &KeyMove) -> Result<(), SessionError> {
    for r in replies.iter_mut() {
        if m.returning {
            for row in r.rows.iter_mut() {
                *row = super::keymove::strip_two(row)?;
            }
            if let Some(d) = r.row_description.as_mut() {
                if d.tag() == b'T' {
                    *d = super::keymove::strip_two(d)?;
                }
            }
        } else {
            r.rows.clear();
            r.row_description = None;
        }
    }
    Ok(())
}

/// NoData, the description of a statement without result rows.
fn encode_no_data(b: &mut BytesMut) {
    b.extend_from_slice(&[b'n', 0, 0, 0, 4]);
}

/// The row limit of the Execute that runs a multi-shard write, and its portal (which
/// keeps the rows beyond the limit).
pub(crate) struct RowLimit {
    pub portal: String,
    /// 0: no limit.
    pub rows: usize,
}

/// Runs one write Query on `conn` (inside its transaction) and collects its answer; a
/// lost connection marks it broken.
pub(super) async fn exec_write(
    conn: &mut BackendConn,
    shard: ShardId,
    sql: &str,
) -> Result<ShardReply, SessionError> {
    encode_query(&mut conn.out, sql);
    conn.unnamed = None;
    collect_reply(conn, shard, 1).await
}

/// Runs a multi-shard write's statement on `conn` through the extended protocol with
/// the client's parameters and result formats (after a `BEGIN` when `begin`), up to its
/// ReadyForQuery; Describe is sent when the client described the portal.
async fn exec_write_extended(
    conn: &mut BackendConn,
    shard: ShardId,
    index: usize,
    p: &FanoutWritePortal,
    describe: bool,
    begin: bool,
) -> Result<ShardReply, SessionError> {
    let mut readies = 1;
    if begin {
        encode_query(&mut conn.out, "BEGIN");
        readies += 1;
    }
    let (params, types) = p.params_for(index);
    encode_parse(&mut conn.out, "", p.write.sql_for(index), types);
    // An UPDATE of the shard key returns each row's address and bucket, for the router,
    // ahead of the client's RETURNING columns (`super::keymove::shard_formats`).
    let (results, described): (std::borrow::Cow<'_, [i16]>, bool) = match &p.write.key_move {
        Some(m) => (
            super::keymove::shard_formats(m, &p.results).0.into(),
            m.returning,
        ),
        None => (p.results.as_slice().into(), true),
    };
    encode_bind_with_results(&mut conn.out, "", "", params, &results);
    if describe && described {
        encode_describe(&mut conn.out, b'P', "");
    }
    encode_execute(&mut conn.out, "");
    encode_sync(&mut conn.out);
    conn.unnamed = None;
    collect_reply(conn, shard, readies).await
}

/// Sends what is queued on `conn` and reads up to its `readies`-th ReadyForQuery,
/// keeping the description (RowDescription or NoData), the rows and the last command
/// tag; the first error wins.
async fn collect_reply(
    conn: &mut BackendConn,
    shard: ShardId,
    mut readies: usize,
) -> Result<ShardReply, SessionError> {
    if let Err(e) = conn.flush().await {
        conn.broken = true;
        return Err(SessionError::from_backend(shard, e));
    }
    let mut reply = ShardReply {
        shard,
        row_description: None,
        rows: Vec::new(),
        tag: String::new(),
        copied: Vec::new(),
    };
    let mut error = None;
    loop {
        let f = match conn.read().await {
            Ok(f) => f,
            Err(e) => {
                conn.broken = true;
                return Err(SessionError::from_backend(shard, e));
            }
        };
        match f.tag() {
            b'Z' => {
                conn.status = decode_ready_status(&f).unwrap_or(b'E');
                readies -= 1;
                if readies == 0 {
                    break;
                }
            }
            b'E' if error.is_none() => error = Some(f),
            b'T' | b'n' => reply.row_description = Some(f),
            b'D' => reply.rows.push(f),
            b'd' => reply.copied.push(f),
            b'C' => {
                // The last CommandComplete is the write's (an earlier one is BEGIN's).
                if let Ok(tag) = decode_command_tag(&f) {
                    reply.tag = tag.to_string();
                }
            }
            _ => {}
        }
    }
    match error {
        Some(f) => Err(SessionError::from_backend(shard, conn.server_error(f))),
        None => Ok(reply),
    }
}

/// One answer from every shard's: the first RowDescription, every row, and the command
/// tag's count summed (`UPDATE 3` + `UPDATE 4` = `UPDATE 7`, `INSERT 0 2` + `INSERT 0 1`
/// = `INSERT 0 3`). Replicated writes (reference tables, DDL) pass one shard's reply:
/// every shard answered alike.
fn merge_write_replies(b: &mut BytesMut, replies: &[ShardReply], replicated: bool) {
    let replies = if replicated {
        &replies[..replies.len().min(1)]
    } else {
        replies
    };
    if let Some(rd) = replies.iter().find_map(|r| r.row_description.as_ref()) {
        b.extend_from_slice(rd.raw());
    }
    for r in replies {
        for row in &r.rows {
            b.extend_from_slice(row.raw());
        }
    }
    let first = replies
        .first()
        .map(|r| r.tag.as_str())
        .unwrap_or("UPDATE 0");
    if replicated {
        encode_command_complete(b, first);
        return;
    }
    let total: u64 = replies
        .iter()
        .filter_map(|r| r.tag.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let prefix = first.rsplit_once(' ').map_or(first, |(p, _)| p);
    encode_command_complete(b, &format!("{prefix} {total}"));
}

/// The client's error for a commit that did not (or is not known to have) committed.
fn commit_error(e: &CommitError<BackendError>) -> SessionError {
    let code = match e {
        CommitError::RecoveryAborted { .. } => "40000",
        CommitError::Unknown { .. } => "08007",
        CommitError::Failed { .. } | CommitError::Halted(_) => "XX000",
    };
    tracing::warn!(error = %e, "distributed commit did not complete");
    SessionError::Commit {
        code,
        message: e.to_string(),
    }
}

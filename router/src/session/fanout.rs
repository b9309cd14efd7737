//! Running a multi-shard read (SPEC §5 rule 2) for the simple query protocol: one
//! backend per shard of the [`FanoutPlan`], the shard query sent to all of them before
//! any answer is read (so the shards compute in parallel), the merge done by
//! [`crate::fanout::execute`] straight into the client's socket (rows stream through,
//! memory stays bounded), then every backend read to its ReadyForQuery.
//!
//! Backends come from the pools like the attached one (session state replayed); an
//! attached idle backend on one of the shards (session pooling) is used in place. Inside
//! an explicit transaction a fan-out would span shards, which needs two-phase commit:
//! refused with 0A000. A fan-out that needs one shard only never reaches here: it is
//! the original statement on that shard (see `Session::resolve`).
//!
//! A backend goes back to its pool only if it ended idle and clean. One that was sent a
//! CancelRequest is kept only if the cancel visibly took effect (SQLSTATE 57014): a
//! cancel still in flight could otherwise hit the next query run on it.

use super::error::SessionError;
use super::refusal::Refusal;
use super::{Attached, Expect, FanoutPortal, Session};
use crate::backend::{BackendConn, PooledConn};
use crate::fanout::{self, FanoutError, Outcome, ShardStream};
use crate::protocol::backend::{decode_ready_status, encode_error, encode_ready, error_summary};
use crate::protocol::frame::BodyReader;
use crate::protocol::frontend::{
    encode_bind_with_results, encode_describe, encode_execute, encode_parse, encode_query,
    encode_sync,
};
use crate::protocol::{Frame, ProtocolError};
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{FanoutPlan, MergePlan};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Settings under which the shards render the rows of a finishing step: exact floats
/// and a date format the finishing query reads back unambiguously whatever the
/// client's settings (SET LOCAL: they end with the shard query's implicit transaction).
const FINISH_SETTINGS: &[&str] = &[
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL datestyle = 'ISO, MDY'",
    "SET LOCAL intervalstyle = 'postgres'",
    "SET LOCAL bytea_output = 'hex'",
];

/// The savepoint a merge step's settings live under inside a transaction block.
const MERGE_SAVEPOINT: &str = "pgshard_merge";

/// Bytes of a finishing answer buffered before they are written to the client.
const FLUSH_AT: usize = 64 * 1024;

/// One shard's answer as the merge engine reads it. Skips the CommandCompletes of
/// the `SET LOCAL`s sent ahead of a finishing step's shard query.
struct ShardReader<'a> {
    conn: &'a mut BackendConn,
    skip_completes: usize,
}

impl ShardStream for ShardReader<'_> {
    async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            match self.conn.reader.read_frame().await {
                Ok(Some(f)) => {
                    if f.tag() == b'C' && self.skip_completes > 0 {
                        self.skip_completes -= 1;
                        continue;
                    }
                    if f.tag() == b'S' {
                        self.conn.note_parameter(&f);
                    }
                    if f.tag() == b'E' {
                        // A deadlock victim's cancellation reaches the client as 40P01.
                        return Ok(Some(self.conn.deadlock_rewrite(f)));
                    }
                    return Ok(Some(f));
                }
                Ok(None) => {
                    self.conn.broken = true;
                    return Ok(None);
                }
                Err(ProtocolError::Io(e)) => {
                    self.conn.broken = true;
                    return Err(e);
                }
                Err(e) => {
                    self.conn.broken = true;
                    return Err(std::io::Error::other(e.to_string()));
                }
            }
        }
    }
}

/// How the session answers after the merge.
pub(crate) enum Ending {
    /// The answer is complete up to ReadyForQuery.
    Ready,
    /// A router error (ErrorResponse, ReadyForQuery).
    Fail(SessionError),
    /// An ErrorResponse made here, then ReadyForQuery.
    Raw(BytesMut),
    /// The merge cannot handle the shards' rows (nothing was sent to the client): the
    /// plan's fallback answers, else 0A000 with this message.
    Fallback(String),
}

/// A transaction participant lent to a fan-out: everything but its connection.
pub(crate) struct Lent {
    shard: ShardId,
    expects: VecDeque<Expect>,
    executed: bool,
    failed_since_sync: bool,
    wrote: Option<u64>,
    lease: Option<crate::reads::ReadLease>,
}

/// A backend taking part in the fan-out.
pub(crate) struct Part {
    pub(crate) shard: ShardId,
    pub(crate) conn: PooledConn,
    /// A CancelRequest was sent for the shard query.
    cancelled: bool,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs a Query whose plan is a fan-out over two or more shards, answering the
    /// client up to and including ReadyForQuery.
    pub(crate) async fn run_fanout(
        &mut self,
        frame: &Frame,
        plan: &FanoutPlan,
        in_txn: bool,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        // Extended-protocol messages still unsynced on the attached backend: end that
        // batch first (as a switch of shards does), then come back to this message once
        // everything the backend owes (and the router's replies queued behind it) went
        // to the client.
        if let Some(a) = self.attached.as_mut() {
            a.sync_silent();
            if !a.expects.is_empty() {
                self.deferred = Some(frame.clone());
                return Ok(());
            }
        }
        if let MergePlan::Collect(c) = &plan.merge {
            return Box::pin(self.run_collect(plan, c, in_txn, ext)).await;
        }
        crate::stats::bump(&self.ctx.stats.fanout_reads);
        let Some((mut parts, reused_shard)) = self.fanout_parts(plan, in_txn, ext.is_some()).await
        else {
            return Ok(());
        };
        let finish = matches!(plan.merge, MergePlan::Finish(_));
        let Some(queries) = self
            .fanout_shard_query(plan, ext, in_txn, &mut parts, reused_shard)
            .await
        else {
            return Ok(());
        };
        for (p, query) in parts.iter_mut().zip(&queries) {
            p.conn.out.extend_from_slice(query);
            p.conn.unnamed = None;
            p.conn.pending_syncs += 1;
            // Running a statement: not idle until its ReadyForQuery says so.
            p.conn.status = b'T';
        }
        // Send to every shard before reading any answer.
        for i in 0..parts.len() {
            if let Err(e) = parts[i].conn.flush().await {
                let shard = parts[i].shard;
                self.abandon(&mut parts, reused_shard);
                self.fail_fanout(ext.is_some(), SessionError::from_backend(shard, e));
                return Ok(());
            }
        }
        // A CancelRequest from the client cancels the query on every shard.
        self.entry.set_activity_many(
            "active",
            parts.first().map(|p| p.shard),
            parts.iter().map(|p| p.conn.cancel_target()).collect(),
        );
        // Whatever the session queued for the client goes out before the merged rows.
        if !self.out.is_empty() {
            if self.writer.write_all(&self.out).await.is_err() {
                self.out.clear();
                self.closing = true;
                self.abandon(&mut parts, reused_shard);
                return Ok(());
            }
            self.out.clear();
        }
        let skip = match (finish, in_txn) {
            (false, _) => 0,
            (true, false) => FINISH_SETTINGS.len(),
            (true, true) => FINISH_SETTINGS.len() + 1,
        };
        let streams: Vec<ShardReader<'_>> = parts
            .iter_mut()
            .map(|p| ShardReader {
                conn: &mut p.conn,
                skip_completes: skip,
            })
            .collect();
        let describe = ext.is_none_or(|(_, d)| d);
        let rounded_floats = self.vars.floats_print_rounded();
        let result = match self.capture.as_mut() {
            // A row-limited Execute: the answer is kept (see `suspend`).
            Some(capture) => {
                fanout::execute_with(plan, streams, capture, describe, rounded_floats).await
            }
            None => {
                fanout::execute_with(plan, streams, &mut self.writer, describe, rounded_floats)
                    .await
            }
        };
        let _ = self.writer.flush().await;
        // Bound on the rows a shard still sends after the merge stopped reading it:
        // LIMIT n OFFSET m is pushed down as LIMIT n+m.
        let budget = match &plan.merge {
            MergePlan::Stream(m) => m.limit.map(|l| l.saturating_add(m.offset)),
            MergePlan::Finish(_) | MergePlan::Collect(_) => None,
        };
        let (ending, shard_failed) = self
            .settle_fanout(result, &mut parts, budget, in_txn, ext)
            .await;
        if let Ending::Fallback(msg) = ending {
            if in_txn && finish {
                self.undo_merge_settings(&mut parts).await;
            }
            let back = self.release_parts(parts, reused_shard);
            self.restore_attached(back);
            return match &plan.fallback {
                Some(c) => {
                    tracing::debug!(reason = %msg, "fan-out falls back to collecting");
                    let collect = FanoutPlan {
                        shards: self.ctx.catalog.current().shard_ids(),
                        merge: MergePlan::Collect(c.clone()),
                        fallback: None,
                        ..plan.clone()
                    };
                    Box::pin(self.run_collect(&collect, c, in_txn, ext)).await
                }
                None => {
                    self.answer_fanout(
                        ext.is_some(),
                        Ending::Fail(SessionError::Unsupported(msg)),
                        false,
                    );
                    Ok(())
                }
            };
        }
        let back = self.release_parts(parts, reused_shard);
        self.restore_attached(back);
        self.answer_fanout(ext.is_some(), ending, shard_failed);
        Ok(())
    }

    /// The backends a fan-out over `plan.shards` runs on: inside a transaction block the
    /// transaction's own (every shard it needs joins, so the read sees the transaction's
    /// writes), else an idle attached backend on one of the shards (session pooling)
    /// and new ones from the pools. With the shard of the reused one. `None` once the
    /// client has its error.
    pub(crate) async fn fanout_parts(
        &mut self,
        plan: &FanoutPlan,
        in_txn: bool,
        extended: bool,
    ) -> Option<(Vec<Part>, Option<ShardId>)> {
        let mut shards = plan.shards.clone();
        shards.sort();
        shards.dedup();
        if in_txn {
            if let Err(e) = self.lend_participants(&shards).await {
                self.fail_fanout(extended, e);
                return None;
            }
            return Some((std::mem::take(&mut self.txn.lent_parts), None));
        }
        let mut reused: Option<(ShardId, PooledConn)> = None;
        if let Some(a) = self.attached.take() {
            if shards.contains(&a.shard) && a.expects.is_empty() && a.conn.is_clean() {
                reused = Some((a.shard, a.conn));
                self.drop_backend_portals();
            } else {
                self.attached = Some(a);
            }
        }
        let reused_shard = reused.as_ref().map(|(s, _)| *s);
        match self.fanout_backends(&shards, reused).await {
            Ok(p) => Some((p, reused_shard)),
            Err((e, back)) => {
                self.restore_attached(back);
                self.fail_fanout(extended, e);
                None
            }
        }
    }

    /// The messages each part gets for a fan-out (in the order of `parts`): a Query
    /// (simple protocol), or the client's statement bound with its parameters and
    /// shard-side result formats, behind the settings a finishing step needs. The
    /// text is the plan's, or a shard's own while a bucket move is under way
    /// (`FanoutPlan::sql_for`). `None` once the client has its error (the parts are
    /// released or abandoned then).
    async fn fanout_shard_query(
        &mut self,
        plan: &FanoutPlan,
        ext: Option<(&FanoutPortal, bool)>,
        in_txn: bool,
        parts: &mut Vec<Part>,
        reused_shard: Option<ShardId>,
    ) -> Option<Vec<BytesMut>> {
        let finish = matches!(plan.merge, MergePlan::Finish(_));
        let results = match ext {
            None => None,
            Some((portal, _)) => match self.shard_result_formats(portal, parts).await {
                Ok(Ok(r)) => Some((portal, r)),
                Ok(Err(error)) => {
                    // The statement failed to parse on the shard: the client's error.
                    let back = self.release_parts(std::mem::take(parts), reused_shard);
                    self.restore_attached(back);
                    self.out.extend_from_slice(error.raw());
                    self.skip_until_sync = true;
                    return None;
                }
                Err(e) => {
                    self.abandon(parts, reused_shard);
                    self.fail_extended(e);
                    return None;
                }
            },
        };
        let encode = |shard_sql: &str| {
            let mut query = BytesMut::new();
            match &results {
                None if finish => {
                    let mut sql = if in_txn {
                        // The settings must not outlive this read: rolled back to here.
                        format!("SAVEPOINT {MERGE_SAVEPOINT}; ")
                    } else {
                        String::new()
                    };
                    sql.push_str(&FINISH_SETTINGS.join("; "));
                    sql.push_str("; ");
                    sql.push_str(shard_sql);
                    encode_query(&mut query, &sql);
                }
                None => encode_query(&mut query, shard_sql),
                Some((portal, results)) => {
                    if finish {
                        let savepoint = format!("SAVEPOINT {MERGE_SAVEPOINT}");
                        let prefix = in_txn.then_some(savepoint.as_str());
                        for set in prefix.into_iter().chain(FINISH_SETTINGS.iter().copied()) {
                            encode_parse(&mut query, "", set, &[]);
                            encode_bind_with_results(&mut query, "", "", &[0, 0, 0, 0], &[]);
                            encode_execute(&mut query, "");
                        }
                    }
                    encode_parse(&mut query, "", shard_sql, &portal.param_types);
                    encode_bind_with_results(&mut query, "", "", &portal.params, results);
                    encode_describe(&mut query, b'P', "");
                    encode_execute(&mut query, "");
                    encode_sync(&mut query);
                }
            }
            query
        };
        if plan.moving_sql.is_empty() {
            let query = encode(&plan.shard_sql);
            return Some(vec![query; parts.len()]);
        }
        Some(
            parts
                .iter()
                .map(|p| encode(plan.sql_for(p.shard)))
                .collect(),
        )
    }

    /// Settles the backends after the merge (drained, cancelled, or given up) and runs
    /// a finishing step; returns how the answer ends and whether a shard failed.
    async fn settle_fanout(
        &mut self,
        result: Result<Outcome, FanoutError>,
        parts: &mut [Part],
        budget: Option<u64>,
        in_txn: bool,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> (Ending, bool) {
        let mut ending = Ending::Ready;
        let mut shard_failed = false;
        match result {
            Ok(Outcome::Done { rows, unfinished }) => {
                tracing::debug!(rows, unfinished = unfinished.len(), "fan-out done");
                self.finish_parts(parts, &unfinished, budget, false).await;
            }
            Ok(Outcome::ShardError { shard, unfinished }) => {
                tracing::debug!(shard, "fan-out: a shard failed");
                shard_failed = true;
                self.finish_parts(parts, &unfinished, None, true).await;
            }
            Ok(Outcome::Finish { sql }) => {
                self.finish_parts(parts, &[], None, false).await;
                if in_txn {
                    self.undo_merge_settings(parts).await;
                }
                if let Err(e) = self.run_finishing(parts, &sql, ext).await {
                    ending = Ending::Fail(e);
                }
            }
            Err(FanoutError::Unsupported(msg)) => {
                let all: Vec<usize> = (0..parts.len()).collect();
                self.finish_parts(parts, &all, None, true).await;
                ending = Ending::Fail(SessionError::Unsupported(msg));
            }
            Err(FanoutError::Unmergeable(msg)) => {
                let all: Vec<usize> = (0..parts.len()).collect();
                self.finish_parts(parts, &all, None, true).await;
                ending = Ending::Fallback(msg);
            }
            Err(e) => {
                // A shard's stream is in an unknown state: close every backend.
                let lost = parts.iter().find(|p| p.conn.broken).map(|p| p.shard);
                tracing::warn!(error = %e, "fan-out failed");
                for p in parts.iter_mut() {
                    p.conn.broken = true;
                }
                let (code, message) = match lost {
                    Some(shard) => (
                        "08006",
                        format!("lost the connection to shard {shard} during a multi-shard query"),
                    ),
                    // No shard failed: writing to the client did.
                    None if matches!(e, FanoutError::Io(_)) => {
                        self.closing = true;
                        ("", String::new())
                    }
                    None => ("XX000", format!("multi-shard query: {e}")),
                };
                if !code.is_empty() {
                    let mut b = BytesMut::new();
                    encode_error(&mut b, b'E', "ERROR", code, &message, None, None);
                    ending = Ending::Raw(b);
                }
            }
        }
        (ending, shard_failed)
    }

    /// The end of a fan-out's answer in the client's protocol: ReadyForQuery after a
    /// simple Query; after an Execute nothing until Sync, and after an error the rest
    /// of the batch skipped.
    pub(crate) fn answer_fanout(&mut self, extended: bool, ending: Ending, shard_failed: bool) {
        if extended {
            // Extended protocol: no ReadyForQuery until the client's Sync; after an
            // error, skip to it.
            match ending {
                Ending::Fail(e) => self.fail_extended(e),
                Ending::Raw(b) => {
                    self.out.extend_from_slice(&b);
                    self.skip_until_sync = true;
                }
                Ending::Ready if shard_failed => self.skip_until_sync = true,
                Ending::Ready => {}
                Ending::Fallback(m) => self.fail_extended(SessionError::Unsupported(m)),
            }
            self.publish_activity();
            return;
        }
        match ending {
            Ending::Fail(e) => self.fail_simple(e),
            Ending::Raw(b) => {
                self.out.extend_from_slice(&b);
                let s = self.client_status();
                encode_ready(&mut self.out, s);
            }
            Ending::Fallback(m) => self.fail_simple(SessionError::Unsupported(m)),
            // One of several statements of a Query string: the last one says ready.
            Ending::Ready if !shard_failed && self.ready_held.is_some() => {
                self.ready_held = Some(true);
            }
            Ending::Ready => {
                let s = self.client_status();
                encode_ready(&mut self.out, s);
            }
        }
        self.publish_activity();
    }

    /// The result formats the shards bind an extended-protocol fan-out with: the
    /// client's for its columns, text for hidden sort columns and for every column of
    /// a finishing step (the router reads those). A single binary code with hidden
    /// columns needs the column count: asked of the first shard once per statement.
    /// The inner error is the shard's ErrorResponse for the statement.
    async fn shard_result_formats(
        &mut self,
        portal: &FanoutPortal,
        parts: &mut [Part],
    ) -> Result<Result<Vec<i16>, Frame>, SessionError> {
        let hidden = match &portal.plan.merge {
            MergePlan::Finish(_) | MergePlan::Collect(_) => return Ok(Ok(Vec::new())),
            MergePlan::Stream(m) => m.hidden,
        };
        let r = &portal.results;
        if hidden == 0 || r.is_empty() || (r.len() == 1 && r[0] == 0) {
            return Ok(Ok(r.clone()));
        }
        if r.len() > 1 {
            let mut all = r.clone();
            all.resize(r.len() + hidden, 0);
            return Ok(Ok(all));
        }
        let columns = match self.fanout_columns.get(&portal.digest) {
            Some(n) => *n,
            None => {
                let Some(p) = parts.first_mut() else {
                    return Ok(Ok(r.clone()));
                };
                let out = &mut p.conn.out;
                encode_parse(out, "", &portal.plan.shard_sql, &portal.param_types);
                encode_describe(out, b'S', "");
                encode_sync(out);
                p.conn.unnamed = None;
                let shard = p.shard;
                p.conn
                    .flush()
                    .await
                    .map_err(|e| SessionError::from_backend(shard, e))?;
                let mut columns = None;
                let mut error = None;
                loop {
                    let f = p
                        .conn
                        .read()
                        .await
                        .map_err(|e| SessionError::from_backend(shard, e))?;
                    match f.tag() {
                        b'T' => {
                            let mut body = BodyReader::new(f.body(), "RowDescription");
                            columns = Some(body.count16()?);
                        }
                        b'n' => columns = Some(0),
                        b'E' => error = Some(f),
                        b'Z' => break,
                        _ => {}
                    }
                }
                if let Some(e) = error {
                    return Ok(Err(e));
                }
                let n = columns.unwrap_or(0);
                self.fanout_columns.insert(portal.digest, n);
                n
            }
        };
        let visible = columns.saturating_sub(hidden);
        let mut all = vec![r[0]; visible];
        all.resize(columns, 0);
        Ok(Ok(all))
    }

    /// The router's error for a fan-out, in the client's protocol.
    pub(crate) fn fail_fanout(&mut self, extended: bool, e: SessionError) {
        if extended {
            self.fail_extended(e);
        } else {
            self.fail_simple(e);
        }
    }

    /// Inside a transaction block: makes every shard in `shards` a participant (joining
    /// the ones that are not, with the transaction's BEGIN), then lends their backends
    /// to the fan-out as [`Part`]s in `lent_parts` (the rest of each participant waits
    /// in `lent`; [`Self::release_parts`] puts them back together).
    async fn lend_participants(&mut self, shards: &[ShardId]) -> Result<(), SessionError> {
        if self.ctx.twopc.is_none() {
            return Err(SessionError::from(Refusal::NoCommitLog(
                "multi-shard read inside a transaction block",
            )));
        }
        if self.any_participant_failed() || self.txn.virtual_txn.as_ref().is_some_and(|v| v.failed)
        {
            return Err(SessionError::InFailedTransaction);
        }
        for &shard in shards {
            let present = self.attached.as_ref().is_some_and(|a| a.shard == shard)
                || self.txn.parked.iter().any(|p| p.shard == shard);
            if present {
                continue;
            }
            if self.attached.is_none() {
                // BEGIN answered by the router so far: it goes out now.
                self.attach(shard, false).await?;
            } else {
                Box::pin(self.join_shard(shard)).await?;
            }
            self.drain_attached().await?;
        }
        let mut all: Vec<Attached> = self.attached.take().into_iter().collect();
        all.append(&mut self.txn.parked);
        for a in all {
            if shards.contains(&a.shard) {
                let Attached {
                    conn,
                    shard,
                    expects,
                    executed,
                    failed_since_sync,
                    wrote,
                    lease,
                } = a;
                self.txn.lent.push(Lent {
                    shard,
                    expects,
                    executed,
                    failed_since_sync,
                    wrote,
                    lease,
                });
                self.txn.lent_parts.push(Part {
                    shard,
                    conn,
                    cancelled: false,
                });
            } else {
                self.txn.parked.push(a);
            }
        }
        self.txn.lent_parts.sort_by_key(|p| p.shard);
        self.txn.lending = true;
        Ok(())
    }

    /// After a merge step inside a transaction block: roll the shards that are fine
    /// back to before the merge settings (a shard whose read failed stays failed).
    async fn undo_merge_settings(&mut self, parts: &mut [Part]) {
        let sql =
            format!("ROLLBACK TO SAVEPOINT {MERGE_SAVEPOINT}; RELEASE SAVEPOINT {MERGE_SAVEPOINT}");
        for p in parts.iter_mut() {
            if p.conn.broken || p.conn.status != b'T' {
                continue;
            }
            if let Err(error) = p.conn.run_silent(&sql).await {
                tracing::warn!(shard = %p.shard, %error, "could not undo merge settings");
                p.conn.broken = true;
            }
        }
    }

    /// Checks out one backend per shard (ascending shard order, so sessions never wait
    /// on each other in a cycle), state replayed. On failure, the error and the reused
    /// attached backend to put back.
    async fn fanout_backends(
        &mut self,
        shards: &[ShardId],
        mut reused: Option<(ShardId, PooledConn)>,
    ) -> Result<Vec<Part>, (SessionError, Option<(ShardId, PooledConn)>)> {
        let fp = self.vars.fingerprint();
        let mut parts = Vec::with_capacity(shards.len());
        for &shard in shards {
            let mut conn = match reused.take() {
                Some((s, c)) if s == shard => c,
                other => {
                    reused = other;
                    // Only the first backend waits for capacity (see backend::pool).
                    let more = !parts.is_empty() || reused.is_some();
                    let checkout = crate::hold::checkout_primary(
                        &self.ctx,
                        shard,
                        &self.user,
                        &self.database,
                        more,
                    );
                    match checkout.await {
                        Ok(c) => c,
                        // Decommissioned since the plan: it owned no bucket by then.
                        Err(SessionError::ShardRemoved(_)) => continue,
                        Err(e) => return Err((e, reused)),
                    }
                }
            };
            if conn.state_fp != fp {
                if let Err(e) = conn.run_silent(&self.vars.replay_sql()).await {
                    conn.broken = true;
                    return Err((SessionError::from_backend(shard, e), reused));
                }
                conn.state_fp = fp;
            }
            parts.push(Part {
                shard,
                conn,
                cancelled: false,
            });
        }
        Ok(parts)
    }

    /// Reads every shard to its ReadyForQuery. `unfinished` shards are cancelled when
    /// `cancel` is set, or once they send more than `budget` rows (a LIMIT that was not
    /// pushed down); rows and notices read here are dropped.
    async fn finish_parts(
        &mut self,
        parts: &mut [Part],
        unfinished: &[usize],
        budget: Option<u64>,
        cancel: bool,
    ) {
        // Inside a transaction a cancel would abort it: read everything instead.
        let cancel_now = (cancel || budget.is_none()) && !self.txn.lending;
        let budget = if self.txn.lending { None } else { budget };
        for &i in unfinished {
            if let Some(p) = parts.get_mut(i) {
                if cancel_now && !p.conn.broken {
                    let _ = p.conn.cancel_target().cancel().await;
                    p.cancelled = true;
                }
            }
        }
        for p in parts.iter_mut() {
            if p.conn.broken {
                continue;
            }
            let mut rows: u64 = 0;
            let mut cancel_seen = false;
            loop {
                let f = match p.conn.read().await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(shard = %p.shard, error = %e, "lost a shard while draining a fan-out");
                        break;
                    }
                };
                match f.tag() {
                    b'Z' => {
                        p.conn.status = decode_ready_status(&f).unwrap_or(b'E');
                        p.conn.pending_syncs = p.conn.pending_syncs.saturating_sub(1);
                        break;
                    }
                    b'D' => {
                        rows += 1;
                        if !p.cancelled && !self.txn.lending && budget.is_some_and(|b| rows > b) {
                            let _ = p.conn.cancel_target().cancel().await;
                            p.cancelled = true;
                        }
                    }
                    b'E' => cancel_seen |= error_summary(&f).0 == "57014",
                    b'S' => p.conn.note_parameter(&f),
                    _ => {}
                }
            }
            if p.cancelled && !cancel_seen {
                // The cancel may still be on its way: never reuse this backend.
                p.conn.broken = true;
            }
        }
    }

    /// Runs a finishing query on the first shard's backend and relays its answer
    /// (without its ReadyForQuery) to the client.
    async fn run_finishing(
        &mut self,
        parts: &mut [Part],
        sql: &str,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        let Some(p) = parts.iter_mut().find(|p| !p.conn.broken) else {
            return Err(SessionError::Unsupported(
                "multi-shard aggregate: no shard connection left for the finishing step".into(),
            ));
        };
        match ext {
            None => encode_query(&mut p.conn.out, sql),
            // The client's result formats; a RowDescription only if it described.
            Some((portal, describe)) => {
                let out = &mut p.conn.out;
                encode_parse(out, "", sql, &[]);
                encode_bind_with_results(out, "", "", &[0, 0, 0, 0], &portal.results);
                if describe {
                    encode_describe(out, b'P', "");
                }
                encode_execute(out, "");
                encode_sync(out);
            }
        }
        p.conn.unnamed = None;
        p.conn.pending_syncs += 1;
        p.conn.status = b'T';
        if let Err(e) = p.conn.flush().await {
            return Err(SessionError::from_backend(p.shard, e));
        }
        let mut buf = BytesMut::new();
        loop {
            let f = match p.conn.read().await {
                Ok(f) => f,
                Err(e) => return Err(SessionError::from_backend(p.shard, e)),
            };
            match f.tag() {
                b'Z' => {
                    p.conn.status = decode_ready_status(&f).unwrap_or(b'E');
                    p.conn.pending_syncs = p.conn.pending_syncs.saturating_sub(1);
                    break;
                }
                b'S' => p.conn.note_parameter(&f),
                b'1' | b'2' => {}
                _ => {
                    buf.extend_from_slice(f.raw());
                    if let Some(capture) = self.capture.as_mut() {
                        capture.push(&buf);
                        buf.clear();
                    } else if buf.len() >= FLUSH_AT {
                        if self.writer.write_all(&buf).await.is_err() {
                            self.closing = true;
                            p.conn.broken = true;
                            return Ok(());
                        }
                        buf.clear();
                    }
                }
            }
        }
        self.out.extend_from_slice(&buf);
        Ok(())
    }

    /// Marks every backend unusable (a failure left them in an unknown state).
    pub(crate) fn abandon(&mut self, parts: &mut Vec<Part>, reused_shard: Option<ShardId>) {
        for p in parts.iter_mut() {
            p.conn.broken = true;
        }
        let back = self.release_parts(std::mem::take(parts), reused_shard);
        self.restore_attached(back);
    }

    /// Drops the pool backends (each goes back to its pool only if clean) and hands
    /// back the reused attached one.
    pub(crate) fn release_parts(
        &mut self,
        parts: Vec<Part>,
        reused_shard: Option<ShardId>,
    ) -> Option<(ShardId, PooledConn)> {
        if self.txn.lending {
            // Transaction participants go back to the transaction, broken or not (a
            // broken one fails its COMMIT, so nothing commits partially).
            for p in parts {
                let Some(i) = self.txn.lent.iter().position(|l| l.shard == p.shard) else {
                    continue;
                };
                let l = self.txn.lent.swap_remove(i);
                self.txn.parked.push(Attached {
                    conn: p.conn,
                    shard: l.shard,
                    expects: l.expects,
                    executed: l.executed,
                    failed_since_sync: l.failed_since_sync,
                    wrote: l.wrote,
                    lease: l.lease,
                });
            }
            return None;
        }
        let mut back = None;
        for p in parts {
            if Some(p.shard) == reused_shard {
                back = Some((p.shard, p.conn));
            }
            // Others drop here: returned to the pool if idle and clean, else closed.
        }
        back
    }

    /// Re-attaches the backend the fan-out borrowed, if it is still usable.
    pub(crate) fn restore_attached(&mut self, back: Option<(ShardId, PooledConn)>) {
        if self.txn.lending {
            self.txn.lending = false;
            if self.attached.is_none() {
                self.attached = self.txn.parked.pop();
            }
            return;
        }
        let Some((shard, conn)) = back else {
            return;
        };
        // A replica backend (a read attached before the fan-out) goes back to its
        // pool: re-attached without its read lease it would pass for the primary.
        if !conn.is_clean() || crate::hold::in_hot_standby(&conn) {
            return;
        }
        self.attached = Some(Attached {
            conn,
            shard,
            expects: VecDeque::new(),
            executed: false,
            failed_since_sync: false,
            wrote: None,
            lease: None,
        });
    }
}

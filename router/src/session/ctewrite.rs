//! Running a statement whose WITH list holds a write across shards (issue 15,
//! [`pgshard_sql::ctewrite`]): `WITH d AS (DELETE … RETURNING …) SELECT … FROM d`.
//! One path for both protocols, inside and outside transaction blocks:
//!
//! 1. the finishing session (a primary backend of the local shard, outside any
//!    transaction, as for collected reads: `super::collect`) creates its temporary
//!    tables, the one for the RETURNING rows shaped by PostgreSQL itself;
//! 2. the distributed tables the main query reads are collected into it, before the
//!    write runs, so the main query does not see the write's effect (PostgreSQL runs
//!    every part of the statement on one snapshot);
//! 3. the write runs as a multi-shard write does: outside a transaction block in a
//!    transaction of its own on every target shard, inside one on the transaction's
//!    backends; each shard's part is `COPY (<write> RETURNING …) TO STDOUT (FORMAT
//!    binary)`, its rows relayed into the finishing session's temporary table;
//! 4. the main query runs on the finishing session; its answer is held until the write
//!    commits (two-phase commit), and any error (a shard's, the main query's) rolls the
//!    write back — inside a transaction block, fails the transaction — as PostgreSQL
//!    would.
//!
//! Memory: the RETURNING rows are held in the router (as for any multi-shard write's
//! RETURNING), at most `router.max_intermediate_bytes`, and so is the main query's
//! answer until the commit.

use super::collect::{encode_copy_data, BinaryRelay, Collected, HEADER, TRAILER};
use super::error::SessionError;
use super::fanout::{Ending, Part};
use super::refusal::Refusal;
use super::{FanoutPortal, Session};
use crate::backend::{BackendError, PooledConn};
use crate::protocol::backend::{decode_ready_status, encode_ready};
use crate::protocol::frontend::{encode_copy_done, encode_copy_fail, encode_query};
use crate::protocol::Frame;
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{CollectPlan, CteWrite, FanoutPlan, InsertStage};
use tokio::io::{AsyncRead, AsyncWrite};

/// How collecting the main query's inputs ended.
enum Inputs {
    Collected,
    /// The client has its error already (no backends).
    Answered,
    /// Stopped: the client's answer.
    Failed(Ending),
}

/// How the write and the main query ended, before the commit decides.
enum Outcome {
    /// The main query's answer, held until the write commits.
    Answer(BytesMut),
    Failed(SessionError),
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs a statement planned with a data-modifying CTE ([`CollectPlan::write`]),
    /// answering the client like a fan-out (up to ReadyForQuery in the simple protocol,
    /// up to the Execute's end in the extended one).
    pub(crate) async fn run_cte_write(
        &mut self,
        plan: &FanoutPlan,
        c: &CollectPlan,
        w: &CteWrite,
        in_txn: bool,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        let extended = ext.is_some();
        if self.ctx.twopc.is_none() {
            let e = Refusal::NoCommitLog("write on several shards");
            self.fail_fanout(extended, e.into());
            return Ok(());
        }
        if in_txn && c.reads_other {
            self.fail_fanout(extended, Refusal::CollectInTransaction.into());
            return Ok(());
        }
        if !in_txn && extended {
            // An implicit transaction holding other statements would commit apart.
            let executed = self
                .attached
                .as_ref()
                .is_some_and(|a| a.executed && a.conn.unsynced);
            let alone = matches!(self.client.peek_frame(), Some((b'S', _)));
            if executed || !alone {
                self.fail_fanout(extended, Refusal::CteWriteInBatch.into());
                return Ok(());
            }
        }
        if in_txn {
            // The finishing session's tables are made from the written and collected
            // tables, outside the transaction (see `txn_exclusive_lock`).
            let tables: Vec<&str> = (c.inputs.iter().map(|i| i.table.as_str()))
                .chain(w.write.tables.iter().map(String::as_str))
                .collect();
            if let Some(e) = self.txn_exclusive_lock(c.finish, &tables).await {
                self.fail_fanout(extended, e);
                return Ok(());
            }
        }
        crate::stats::bump(&self.ctx.stats.multi_shard_writes);
        let catalog = self.ctx.catalog.current();
        if let Err(e) = self.check_defaults(&catalog, &w.write).await {
            self.fail_fanout(extended, e);
            return Ok(());
        }
        let shard = c.finish;
        let mut finish = match self.finishing_backend(shard).await {
            Ok(f) => f,
            Err(e) => {
                self.fail_fanout(extended, e);
                return Ok(());
            }
        };
        if let Err(e) = finish.run_silent(&c.create_sql()).await {
            let e = match e {
                // CREATE TABLE AS refuses a RETURNING list that repeats a name.
                BackendError::Server { code, .. } if code == "42701" => {
                    SessionError::from(Refusal::CteDuplicateColumns)
                }
                e => SessionError::from_backend(shard, e),
            };
            self.drop_finishing(c, finish).await;
            self.fail_fanout(extended, e);
            return Ok(());
        }
        // What the main query reads, as it was before the write.
        if !c.inputs.is_empty() {
            match self
                .collect_inputs(plan, c, &mut finish, in_txn, ext)
                .await?
            {
                Inputs::Collected => {}
                Inputs::Answered => {
                    self.drop_finishing(c, finish).await;
                    return Ok(());
                }
                Inputs::Failed(ending) => {
                    self.drop_finishing(c, finish).await;
                    self.answer_fanout(extended, ending, true);
                    return Ok(());
                }
            }
        }
        if in_txn {
            let outcome = self.cte_in_txn(c, w, &mut finish, ext).await?;
            self.drop_finishing(c, finish).await;
            match outcome {
                Outcome::Answer(b) => {
                    self.cte_answer(&b);
                    if !extended {
                        let status = self.client_status();
                        self.emit_ready(status);
                    }
                }
                Outcome::Failed(e) => self.fail_fanout(extended, e),
            }
            self.publish_activity();
            return Ok(());
        }
        let (mut conns, replies, failure) =
            self.begin_write_everywhere(&catalog, &w.write, true).await;
        let mut outcome = match failure {
            Some(e) => Outcome::Failed(e),
            None => self.cte_finish(c, w, &mut finish, &replies, ext).await,
        };
        if let (Outcome::Answer(_), Some(ins)) = (&outcome, &c.insert) {
            let staged = self
                .stage_out(ins, &mut finish, c.finish, Some(&mut conns))
                .await;
            if let Err(e) = staged {
                outcome = Outcome::Failed(e);
            }
        }
        let (failure, answer) = match outcome {
            Outcome::Answer(b) => (None, b),
            Outcome::Failed(e) => (Some(e), BytesMut::new()),
        };
        let mut b = BytesMut::new();
        let committed = self.finish_write(&mut conns, failure, &mut b).await;
        drop(conns);
        self.drop_finishing(c, finish).await;
        if committed {
            self.cte_answer(&answer);
        }
        if extended {
            if !committed {
                self.skip_until_sync = true;
            }
        } else {
            encode_ready(&mut b, b'I');
        }
        self.emit_local(&b);
        self.publish_activity();
        Ok(())
    }

    /// Inside a transaction block: the write runs on the transaction's backends (every
    /// target shard joins it), then the main query on the finishing session.
    async fn cte_in_txn(
        &mut self,
        c: &CollectPlan,
        w: &CteWrite,
        finish: &mut PooledConn,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<Outcome, SessionError> {
        let mut replies = Vec::new();
        for (i, &shard) in w.write.shards.iter().enumerate() {
            match self.attach_writer(shard).await? {
                Ok(()) => {}
                Err(SessionError::ShardRemoved(_)) => continue,
                Err(e) => return Ok(Outcome::Failed(e)),
            }
            let Some(a) = self.attached.as_mut() else {
                return Err(SessionError::LostBackend { shard });
            };
            match super::txn::exec_write(&mut a.conn, shard, w.write.sql_for(i)).await {
                Ok(r) => replies.push(r),
                Err(e) => {
                    if a.conn.broken {
                        return Err(SessionError::LostBackend { shard });
                    }
                    return Ok(Outcome::Failed(e));
                }
            }
        }
        if let Some(e) = self.shard_added_since(&w.write) {
            return Ok(Outcome::Failed(e));
        }
        let outcome = self.cte_finish(c, w, finish, &replies, ext).await;
        if let (Outcome::Answer(_), Some(ins)) = (&outcome, &c.insert) {
            if let Err(e) = self.stage_out(ins, finish, c.finish, None).await {
                if matches!(e, SessionError::LostBackend { .. }) {
                    return Err(e);
                }
                return Ok(Outcome::Failed(e));
            }
        }
        Ok(outcome)
    }

    /// The rows a main INSERT staged on the finishing session go to their shards,
    /// inside the write's transaction: `conns` (its own transactions, outside a
    /// transaction block; a shard it did not write joins with BEGIN), or the client's
    /// transaction (`None`). Each shard gets the rows whose bucket it owns, selected by
    /// PostgreSQL on the finishing session, as a binary COPY.
    async fn stage_out(
        &mut self,
        ins: &InsertStage,
        finish: &mut PooledConn,
        finish_shard: ShardId,
        mut conns: Option<&mut Vec<(ShardId, PooledConn)>>,
    ) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        if ins.copy.key.is_some() && (!catalog.moving.is_empty() || !catalog.frozen.is_empty()) {
            return Err(SessionError::Unsupported(
                "an INSERT reading a data-modifying WITH query while buckets are being moved between shards".into(),
            ));
        }
        if let (Some(sql), Some(key)) = (ins.null_key_sql(), &ins.copy.key) {
            let rows = finish
                .query_text(&sql)
                .await
                .map_err(|e| SessionError::from_backend(finish_shard, e))?;
            if rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .flatten()
                .as_deref()
                == Some("t")
            {
                return Err(SessionError::Plan(pgshard_sql::PlanError::NullShardKey {
                    table: ins.copy.table.clone(),
                    column: key.column.clone(),
                }));
            }
        }
        let limit = self.ctx.config.max_intermediate_bytes;
        let mut moved: u64 = 0;
        for &shard in &ins.copy.shards {
            let sql = ins.copy_out_for(shard, &catalog);
            let data = super::keymove::take(finish, finish_shard, &sql).await?;
            let bytes: usize = data.iter().map(Vec::len).sum();
            // A binary COPY stream without rows: its header and trailer.
            if bytes <= HEADER.len() + TRAILER.len() {
                continue;
            }
            moved += bytes as u64;
            if moved > limit {
                return Err(SessionError::IntermediateTooLarge { limit });
            }
            let into = ins.copy.sql_for(shard);
            match conns.as_deref_mut() {
                Some(conns) => {
                    if !conns.iter().any(|(s, _)| *s == shard) {
                        let (conn, begun) = self
                            .write_on_shard(&catalog, shard, "BEGIN", conns, true)
                            .await?;
                        conns.push((shard, conn));
                        begun?;
                    }
                    let Some((_, conn)) = conns.iter_mut().find(|(s, _)| *s == shard) else {
                        return Err(SessionError::LostBackend { shard });
                    };
                    super::keymove::put(conn, shard, into, &data).await?;
                }
                None => {
                    self.attach_writer(shard).await??;
                    let Some(a) = self.attached.as_mut() else {
                        return Err(SessionError::LostBackend { shard });
                    };
                    super::keymove::put(&mut a.conn, shard, into, &data).await?;
                }
            }
        }
        Ok(())
    }

    /// The RETURNING rows into the finishing session's table, then the main query there;
    /// its answer is held.
    async fn cte_finish(
        &mut self,
        c: &CollectPlan,
        w: &CteWrite,
        finish: &mut PooledConn,
        replies: &[super::txn::ShardReply],
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Outcome {
        let shard = c.finish;
        if w.create.is_some() {
            // A reference table's rows come back alike from every shard: one copy.
            let replies = if w.write.replicated {
                &replies[..replies.len().min(1)]
            } else {
                replies
            };
            let limit = self.ctx.config.max_intermediate_bytes;
            let bytes: u64 = replies
                .iter()
                .flat_map(|r| r.copied.iter())
                .map(|f| f.body().len() as u64)
                .sum();
            if bytes > limit {
                return Outcome::Failed(SessionError::IntermediateTooLarge { limit });
            }
            match fill(finish, shard, &w.copy_in(), replies).await {
                Ok(None) => {}
                Ok(Some(e)) => {
                    return Outcome::Failed(SessionError::from_backend(
                        shard,
                        finish.server_error(e),
                    ))
                }
                Err(e) => return Outcome::Failed(e),
            }
        }
        match self.finishing_answer(finish, shard, &c.sql, ext).await {
            Ok((answer, None)) => Outcome::Answer(answer),
            Ok((_, Some(e))) => {
                Outcome::Failed(SessionError::from_backend(shard, finish.server_error(e)))
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Collects the main query's distributed tables into the finishing session.
    async fn collect_inputs(
        &mut self,
        plan: &FanoutPlan,
        c: &CollectPlan,
        finish: &mut PooledConn,
        in_txn: bool,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<Inputs, SessionError> {
        let Some((mut parts, reused_shard)) = self.fanout_parts(plan, in_txn, ext.is_some()).await
        else {
            return Ok(Inputs::Answered);
        };
        let limit = self.ctx.config.max_intermediate_bytes;
        let mut moved = 0;
        let mut ending = None;
        for input in &c.inputs {
            match self
                .collect_table(input, &mut parts, finish, c.finish, limit, &mut moved)
                .await
            {
                Ok(Collected::Done) => {}
                Ok(Collected::ShardError(f)) => {
                    ending = Some(Ending::Raw(BytesMut::from(&f.raw()[..])));
                    break;
                }
                Err(e) => {
                    mark_stopped(&mut parts);
                    ending = Some(Ending::Fail(e));
                    break;
                }
            }
        }
        if ending.is_none() {
            if let Some(sql) = c.analyze_sql() {
                if let Err(e) = finish.run_silent(&sql).await {
                    ending = Some(Ending::Fail(SessionError::from_backend(c.finish, e)));
                }
            }
        }
        let back = self.release_parts(parts, reused_shard);
        self.restore_attached(back);
        Ok(ending.map_or(Inputs::Collected, Inputs::Failed))
    }

    /// The held answer of the main query, to the client (or to the capture of a
    /// row-limited Execute).
    fn cte_answer(&mut self, answer: &[u8]) {
        match self.capture.as_mut() {
            Some(capture) => capture.push(answer),
            None => self.emit_local(answer),
        }
    }

    /// Drops the temporary tables and lets the finishing backend go (closed unless
    /// clean).
    async fn drop_finishing(&mut self, c: &CollectPlan, mut finish: PooledConn) {
        if finish.is_clean() {
            if let Err(e) = finish.run_silent(&c.drop_sql()).await {
                tracing::warn!(error = %e, "could not drop collected tables");
                finish.broken = true;
            }
        } else {
            finish.broken = true;
        }
    }
}

/// Parts stopped mid-stream are in an unknown state.
fn mark_stopped(parts: &mut [Part]) {
    for p in parts.iter_mut() {
        if p.conn.pending_syncs > 0 {
            p.conn.broken = true;
        }
    }
}

/// Relays the shards' binary COPY streams (`replies`' CopyData) into `copy_in` on the
/// finishing backend. `Some(error)`: PostgreSQL's error for the COPY.
async fn fill(
    finish: &mut PooledConn,
    shard: ShardId,
    copy_in: &str,
    replies: &[super::txn::ShardReply],
) -> Result<Option<Frame>, SessionError> {
    let lost = |finish: &mut PooledConn, e| {
        finish.broken = true;
        SessionError::from_backend(shard, e)
    };
    encode_query(&mut finish.out, copy_in);
    finish.unnamed = None;
    finish.status = b'T';
    finish.flush().await.map_err(|e| lost(finish, e))?;
    let mut error = None;
    loop {
        let f = finish.read().await.map_err(|e| lost(finish, e))?;
        match f.tag() {
            b'G' => break,
            b'E' => error = Some(f),
            b'Z' => {
                finish.status = decode_ready_status(&f).unwrap_or(b'E');
                return Ok(error);
            }
            _ => {}
        }
    }
    encode_copy_data(&mut finish.out, HEADER);
    let mut chunk = Vec::new();
    let mut bad = None;
    for r in replies {
        let mut relay = BinaryRelay::default();
        for f in &r.copied {
            chunk.clear();
            if let Err(m) = relay.feed(f.body(), &mut chunk) {
                bad = Some(m);
                break;
            }
            if !chunk.is_empty() {
                encode_copy_data(&mut finish.out, &chunk);
            }
        }
        if bad.is_none() {
            bad = relay.finish().err();
        }
        if bad.is_some() {
            break;
        }
        finish.flush().await.map_err(|e| lost(finish, e))?;
    }
    if bad.is_some() {
        encode_copy_fail(&mut finish.out, "pgshard: malformed COPY stream");
    } else {
        encode_copy_data(&mut finish.out, TRAILER);
        encode_copy_done(&mut finish.out);
    }
    finish.flush().await.map_err(|e| lost(finish, e))?;
    loop {
        let f = finish.read().await.map_err(|e| lost(finish, e))?;
        match f.tag() {
            b'E' => {
                error.get_or_insert(f);
            }
            b'S' => finish.note_parameter(&f),
            b'Z' => {
                finish.status = decode_ready_status(&f).unwrap_or(b'E');
                break;
            }
            _ => {}
        }
    }
    if let Some(m) = bad {
        return Err(SessionError::Unsupported(m));
    }
    Ok(error)
}

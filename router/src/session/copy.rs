//! Running a [`CopyPlan`] (SPEC §6): `COPY … FROM STDIN` split by shard key over every
//! shard, `COPY … TO STDOUT` fanned out and concatenated.
//!
//! The statement runs unchanged on one backend per shard, all started before any data
//! moves. While a COPY FROM runs, the session reads the client's frames here, in its own
//! loop, until CopyDone or CopyFail (the main loop is not involved): each CopyData
//! payload goes through the [`Splitter`], each row to its shard's batch, and a batch
//! reaching [`BATCH`] bytes is written to its shard at once, so memory stays bounded
//! whatever the input size. While writing, whatever a shard sends (an error, a notice)
//! is read too, so neither side can block the other. A NULL or malformed key, a shard's
//! error, the client's CopyFail or its disconnection abort the COPY on every shard
//! (CopyFail), and the rows go nowhere.
//!
//! Atomicity: outside a transaction block each shard runs `BEGIN; COPY …` and the
//! two-phase commit coordinator ends them all ([`Session::finish_write`], as for a
//! multi-shard UPDATE); inside one, every shard joins the client's transaction first and
//! the COPY commits or rolls back with it.
//!
//! COPY TO: the shards' streams are concatenated in shard order; a csv/text header is
//! kept from the first shard only, and a binary stream keeps one header and one trailer
//! (PostgreSQL sends one row per CopyData message, the header with the first and the
//! trailer alone; protocol docs, "COPY Operations").
//!
//! Through the extended protocol (tokio-postgres' `copy_in`/`copy_out`), Bind of a COPY
//! statement is answered by the router and Execute runs the COPY as above; the Sync
//! PostgreSQL ignores during copy-in is ignored here too.
//!
//! A connection is marked as running a statement (`pending_syncs`) from the moment the
//! COPY is sent until its ReadyForQuery is read, so a connection abandoned halfway (the
//! client left) is never pooled in COPY state; rollback or the pool closes it.

use super::error::SessionError;
use super::refusal::Refusal;
use super::{Attached, Session};
use crate::backend::{BackendConn, PooledConn};
use crate::copy::{key_value, KeySpec, Piece, Splitter, BINARY_SIGNATURE, BINARY_TRAILER};
use crate::protocol::backend::{
    decode_command_tag, decode_ready_status, encode_command_complete, encode_error, encode_ready,
};
use crate::protocol::frame::{begin_frame, finish_frame};
use crate::protocol::frontend::encode_query;
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use futures::FutureExt;
use pgshard_catalog::ShardId;
use pgshard_sql::{CopyDirection, CopyFormat, CopyPlan};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bytes of rows gathered for one shard before they are sent as one CopyData.
pub(crate) const BATCH: usize = 64 * 1024;

/// Output for the client buffered before it is written (COPY TO).
const CLIENT_FLUSH: usize = 64 * 1024;

/// Which protocol started the COPY: the simple one ends with ReadyForQuery; the
/// extended one leaves that to the client's Sync and skips to it after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyMode {
    Simple,
    Extended,
}

/// How a COPY ended badly.
enum Failure {
    /// An error for the client (a shard's own ErrorResponse is forwarded as is).
    Error(SessionError),
    /// A shard's ErrorResponse.
    Shard(Frame),
    /// The client disconnected or broke the protocol: the session ends.
    ClientGone,
    /// A shard connection was lost: the session ends (its transaction is gone).
    Lost(ShardId),
}

/// Where the rows of a COPY FROM come from: the client's CopyData, or a backend's
/// `COPY … TO STDOUT` (the staged rows of a collected INSERT, `super::collect`).
pub(crate) enum CopySource<'a> {
    Client,
    Backend(ShardId, &'a mut BackendConn),
}

/// One shard's backend in a COPY.
struct Part<'c> {
    shard: ShardId,
    conn: &'c mut BackendConn,
    /// Rows gathered for the next CopyData.
    batch: BytesMut,
    /// The shard's COPY is running (CopyIn/CopyOut response seen, no end yet).
    copying: bool,
    /// The first ErrorResponse the shard sent.
    error: Option<Frame>,
    /// The count of its `COPY n` tag.
    rows: u64,
    /// The shard's ReadyForQuery was read: nothing is outstanding.
    ready: bool,
}

impl<'c> Part<'c> {
    fn new(shard: ShardId, conn: &'c mut BackendConn) -> Self {
        Part {
            shard,
            conn,
            batch: BytesMut::new(),
            copying: false,
            error: None,
            rows: 0,
            ready: true,
        }
    }

    /// Handles a frame the shard sent outside the expected flow (notices go to `notices`).
    fn note(&mut self, f: Frame, notices: &mut BytesMut) {
        match f.tag() {
            b'E' => {
                self.copying = false;
                if self.error.is_none() {
                    self.error = Some(f);
                }
            }
            b'N' => notices.extend_from_slice(f.raw()),
            b'S' => self.conn.note_parameter(&f),
            b'C' => {
                if let Ok(tag) = decode_command_tag(&f) {
                    if let Some(n) = tag
                        .strip_prefix("COPY ")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        self.rows = n;
                    }
                }
            }
            b'Z' => {
                self.conn.status = decode_ready_status(&f).unwrap_or(b'E');
                self.conn.pending_syncs = self.conn.pending_syncs.saturating_sub(1);
                self.copying = false;
                self.ready = true;
            }
            _ => {}
        }
    }

    /// Reads one frame; a lost connection is marked broken.
    async fn read(&mut self) -> Result<Frame, Failure> {
        self.conn.read().await.map_err(|error| {
            tracing::warn!(shard = %self.shard, %error, "lost a shard during COPY");
            self.conn.broken = true;
            Failure::Lost(self.shard)
        })
    }

    /// Reads until ReadyForQuery (the end of whatever runs), keeping errors and tags.
    async fn finish(&mut self, notices: &mut BytesMut) -> Result<(), Failure> {
        while !self.ready {
            let f = self.read().await?;
            self.note(f, notices);
        }
        Ok(())
    }

    /// Sends `conn.out` to the shard, reading (and keeping) what it sends meanwhile so
    /// that neither side waits on the other with full buffers.
    async fn send(&mut self, notices: &mut BytesMut) -> Result<(), Failure> {
        use bytes::Buf;
        while !self.conn.out.is_empty() {
            let conn = &mut *self.conn;
            let got = tokio::select! {
                r = conn.writer.write(&conn.out) => match r {
                    Ok(n) if n > 0 => {
                        conn.out.advance(n);
                        None
                    }
                    _ => {
                        conn.broken = true;
                        return Err(Failure::Lost(self.shard));
                    }
                },
                f = conn.reader.read_frame() => Some(f),
            };
            if let Some(f) = got {
                match f {
                    Ok(Some(f)) => self.note(f, notices),
                    _ => {
                        self.conn.broken = true;
                        return Err(Failure::Lost(self.shard));
                    }
                }
                if self.ready {
                    // The shard ended its statement (an error): it drops what follows.
                    self.conn.out.clear();
                }
            }
        }
        // Whatever else is already there (an error raised by an earlier batch).
        while let Some(r) = self.conn.reader.read_frame().now_or_never() {
            match r {
                Ok(Some(f)) => self.note(f, notices),
                _ => {
                    self.conn.broken = true;
                    return Err(Failure::Lost(self.shard));
                }
            }
        }
        Ok(())
    }

    /// Wraps the batch in a CopyData message and sends it.
    async fn flush_batch(&mut self, notices: &mut BytesMut) -> Result<(), Failure> {
        if self.batch.is_empty() || !self.copying {
            self.batch.clear();
            return Ok(());
        }
        let at = begin_frame(&mut self.conn.out, b'd');
        self.conn.out.extend_from_slice(&self.batch);
        finish_frame(&mut self.conn.out, at);
        self.batch.clear();
        self.send(notices).await
    }

    /// Ends the shard's copy-in with CopyFail (its transaction fails) and reads to its
    /// ReadyForQuery.
    async fn abort(&mut self, reason: &str, notices: &mut BytesMut) -> Result<(), Failure> {
        if self.copying {
            let at = begin_frame(&mut self.conn.out, b'f');
            crate::protocol::frame::put_cstr(&mut self.conn.out, reason.as_bytes());
            finish_frame(&mut self.conn.out, at);
            self.copying = false;
            self.send(notices).await?;
        }
        self.finish(notices).await
    }
}

/// The `n` of the client's `COPY n`: the shards' counts summed, or one shard's for a
/// reference table (every shard holds the same rows).
fn total(plan: &CopyPlan, parts: &[Part<'_>]) -> u64 {
    if plan.direction == CopyDirection::In && plan.key.is_none() {
        return parts.first().map_or(0, |p| p.rows);
    }
    parts.iter().map(|p| p.rows).sum()
}

/// A single-quoted SQL literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs a COPY planned as [`pgshard_sql::Route::Copy`] and answers the client (up to
    /// ReadyForQuery in the simple protocol). Call with nothing outstanding on the
    /// attached backend.
    pub(crate) async fn run_copy(
        &mut self,
        plan: &CopyPlan,
        in_txn: bool,
        mode: CopyMode,
    ) -> Result<(), SessionError> {
        self.run_copy_from(plan, in_txn, mode, CopySource::Client, false)
            .await
    }

    /// [`Self::run_copy`] with the rows from `source`; `insert`: answer with the
    /// command tag of an INSERT (`INSERT 0 n`) instead of `COPY n`.
    pub(crate) async fn run_copy_from(
        &mut self,
        plan: &CopyPlan,
        in_txn: bool,
        mode: CopyMode,
        source: CopySource<'_>,
        insert: bool,
    ) -> Result<(), SessionError> {
        crate::stats::bump(&self.ctx.stats.copies);
        if plan.direction == CopyDirection::In && self.ctx.twopc.is_none() {
            self.copy_failed(
                mode,
                Refusal::NoCommitLog("COPY into a sharded table").into(),
            );
            return Ok(());
        }
        let mut shards = plan.shards.clone();
        shards.sort();
        shards.dedup();
        if in_txn {
            return self.copy_in_txn(plan, &shards, mode).await;
        }
        let catalog = self.ctx.catalog.current();
        // Ascending shard order, so sessions never wait on each other's pools in a cycle.
        let mut conns: Vec<(ShardId, PooledConn)> = Vec::with_capacity(shards.len());
        for &shard in &shards {
            match self
                .checkout_primary(&catalog, shard, !conns.is_empty())
                .await
            {
                Ok(c) => conns.push((shard, c)),
                Err(e) => {
                    self.copy_failed(mode, e);
                    return Ok(());
                }
            }
        }
        self.entry.set_activity("active", None, None);
        let begin = plan.direction == CopyDirection::In;
        let result = {
            let mut parts: Vec<Part<'_>> =
                conns.iter_mut().map(|(s, c)| Part::new(*s, c)).collect();
            let r = self.drive(plan, &mut parts, begin, source).await;
            r.map(|()| total(plan, &parts))
        };
        let mut b = BytesMut::new();
        match (plan.direction, result) {
            (CopyDirection::In, Ok(n)) => {
                if self.finish_write(&mut conns, None, &mut b).await {
                    let tag = if insert {
                        format!("INSERT 0 {n}")
                    } else {
                        format!("COPY {n}")
                    };
                    encode_command_complete(&mut b, &tag);
                } else if mode == CopyMode::Extended {
                    self.skip_until_sync = true;
                }
            }
            (CopyDirection::Out, Ok(n)) => {
                encode_command_complete(&mut b, &format!("COPY {n}"));
            }
            (_, Err(f)) => {
                if begin {
                    // Connections still usable roll back; broken ones are closed.
                    let mut live: Vec<(ShardId, PooledConn)> =
                        conns.drain(..).filter(|(_, c)| !c.broken).collect();
                    let mut ignore = BytesMut::new();
                    self.finish_write(
                        &mut live,
                        Some(SessionError::Unsupported(String::new())),
                        &mut ignore,
                    )
                    .await;
                }
                drop(conns);
                self.entry.set_activity("idle", None, None);
                return self.copy_failure(mode, f);
            }
        }
        drop(conns);
        if mode == CopyMode::Simple {
            encode_ready(&mut b, b'I');
        }
        self.out.extend_from_slice(&b);
        self.entry.set_activity("idle", None, None);
        self.publish_activity();
        Ok(())
    }

    /// True if client statement `name` is a COPY the router runs itself.
    pub(crate) fn is_copy_statement(&self, stmt: &super::Stmt) -> bool {
        matches!(
            *self.overridden(&stmt.plan.route),
            pgshard_sql::Route::Copy(_)
        )
    }

    /// Bind of a COPY statement: answered here (a COPY has no parameters); Execute of
    /// the portal runs it.
    pub(crate) fn bind_copy(
        &mut self,
        frame: &Frame,
        bind: &crate::protocol::frontend::Bind<'_>,
        stmt: std::sync::Arc<super::Stmt>,
    ) -> Result<(), SessionError> {
        if self.skip_until_sync {
            return Ok(());
        }
        if self
            .attached
            .as_ref()
            .is_some_and(|a| !a.expects.is_empty())
        {
            // After what the backend still owes, which may also release it (and the
            // portals with it).
            self.deferred = Some(frame.clone());
            return Ok(());
        }
        self.bind_locally(bind, stmt, super::PortalAt::Copy);
        Ok(())
    }

    /// The plan of portal `name` if it is a COPY the router runs itself.
    pub(crate) fn copy_portal(&self, portal: &super::Portal) -> Option<CopyPlan> {
        match &*self.overridden(&portal.stmt.plan.route) {
            pgshard_sql::Route::Copy(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Execute of a COPY portal.
    pub(crate) async fn execute_copy(
        &mut self,
        frame: &Frame,
        plan: &CopyPlan,
    ) -> Result<(), SessionError> {
        if self.skip_until_sync {
            return Ok(());
        }
        if self
            .attached
            .as_ref()
            .is_some_and(|a| !a.expects.is_empty())
        {
            self.deferred = Some(frame.clone());
            return Ok(());
        }
        let in_txn = self.txn.virtual_txn.is_some()
            || self
                .attached
                .as_ref()
                .is_some_and(|a| a.conn.status != b'I');
        Box::pin(self.run_copy(plan, in_txn, CopyMode::Extended)).await
    }

    /// A COPY inside a transaction block: every shard joins the transaction (as for a
    /// multi-shard write in one), then the COPY runs on all of them.
    async fn copy_in_txn(
        &mut self,
        plan: &CopyPlan,
        shards: &[ShardId],
        mode: CopyMode,
    ) -> Result<(), SessionError> {
        for &shard in shards {
            let on_it = self.attached.as_ref().is_some_and(|a| a.shard == shard);
            let parked = self.txn.parked.iter().any(|a| a.shard == shard);
            if on_it || parked {
                continue;
            }
            let joined = if self.attached.is_none() {
                // BEGIN answered by the router so far: it goes out now.
                self.attach(shard, false).await
            } else {
                Box::pin(self.join_shard(shard)).await
            };
            if let Err(e) = joined {
                self.copy_failed(mode, e);
                return Ok(());
            }
            self.drain_attached().await?;
        }
        if self.any_participant_failed() {
            self.copy_failed(mode, SessionError::InFailedTransaction);
            return Ok(());
        }
        let mut all: Vec<Attached> = self.attached.take().into_iter().collect();
        all.append(&mut self.txn.parked);
        let result = {
            let mut parts: Vec<Part<'_>> = all
                .iter_mut()
                .filter(|a| shards.contains(&a.shard))
                .map(|a| Part::new(a.shard, &mut a.conn))
                .collect();
            parts.sort_by_key(|p| p.shard);
            let r = self
                .drive(plan, &mut parts, false, CopySource::Client)
                .await;
            r.map(|()| total(plan, &parts))
        };
        for a in all.iter_mut() {
            if shards.contains(&a.shard) {
                a.executed = true;
                a.note_write(plan.direction == CopyDirection::In);
            }
        }
        let lost = all.iter().find(|a| a.conn.broken).map(|a| a.shard);
        self.attached = all.pop();
        self.txn.parked = all;
        if let Some(shard) = lost {
            return Err(SessionError::LostBackend { shard });
        }
        match result {
            Ok(n) => {
                let mut b = BytesMut::new();
                encode_command_complete(&mut b, &format!("COPY {n}"));
                if mode == CopyMode::Simple {
                    encode_ready(&mut b, self.client_status());
                }
                self.out.extend_from_slice(&b);
            }
            Err(f) => return self.copy_failure(mode, f),
        }
        self.publish_activity();
        Ok(())
    }

    /// Answers a COPY that failed before or while it ran.
    fn copy_failure(&mut self, mode: CopyMode, f: Failure) -> Result<(), SessionError> {
        match f {
            Failure::Error(e) => self.copy_failed(mode, e),
            Failure::Shard(frame) => {
                self.out.extend_from_slice(frame.raw());
                self.copy_ended_badly(mode);
            }
            Failure::ClientGone => {
                self.closing = true;
                self.out.clear();
            }
            Failure::Lost(shard) => return Err(SessionError::LostBackend { shard }),
        }
        Ok(())
    }

    /// A router error for the COPY.
    fn copy_failed(&mut self, mode: CopyMode, e: SessionError) {
        if matches!(e, SessionError::Unsupported(_) | SessionError::Refused(_)) {
            crate::stats::bump(&self.ctx.stats.unsupported);
        }
        e.encode(&mut self.out);
        self.copy_ended_badly(mode);
    }

    /// After the ErrorResponse: ReadyForQuery (simple protocol) or skip to Sync.
    fn copy_ended_badly(&mut self, mode: CopyMode) {
        if let Some(vt) = self.txn.virtual_txn.as_mut() {
            vt.failed = true;
        }
        match mode {
            CopyMode::Simple => {
                let s = self.client_status();
                encode_ready(&mut self.out, s);
            }
            CopyMode::Extended => self.skip_until_sync = true,
        }
    }

    /// Runs the COPY on `parts` (sorted by shard) up to every shard's ReadyForQuery.
    /// `begin`: open a transaction first (`BEGIN; COPY …`).
    async fn drive(
        &mut self,
        plan: &CopyPlan,
        parts: &mut [Part<'_>],
        begin: bool,
        source: CopySource<'_>,
    ) -> Result<(), Failure> {
        let mut notices = BytesMut::new();
        let key = match (&plan.key, plan.direction) {
            (Some(k), CopyDirection::In) => {
                let index = match &plan.columns {
                    Some(cols) => cols.iter().position(|c| *c == k.column),
                    None => table_columns(parts, &plan.table_sql, &mut notices)
                        .await?
                        .iter()
                        .position(|c| *c == k.column),
                };
                let Some(index) = index else {
                    return Err(Failure::Error(SessionError::Copy {
                        table: plan.table.clone(),
                        source: crate::copy::CopyError::NoKeyColumn {
                            table: plan.table.clone(),
                            column: k.column.clone(),
                        },
                    }));
                };
                let forced = |list: &[String]| list.iter().any(|c| *c == k.column || c == "*");
                Some(KeySpec {
                    index,
                    column: k.column.clone(),
                    force_not_null: forced(&plan.options.force_not_null),
                    force_null: forced(&plan.options.force_null),
                })
            }
            _ => None,
        };
        // Start the statement everywhere before reading any answer.
        // A shard's own text while a bucket move is under way (`CopyPlan::sql_for`).
        let begin = if begin { "BEGIN; " } else { "" };
        for p in parts.iter_mut() {
            encode_query(
                &mut p.conn.out,
                &format!("{begin}{}", plan.sql_for(p.shard)),
            );
            p.conn.unnamed = None;
            p.conn.pending_syncs += 1;
            p.ready = false;
        }
        // A plain write, reading nothing: `send` would consume (and drop) the start of
        // a fast shard's answer — CopyOutResponse, rows, even its ReadyForQuery.
        for p in parts.iter_mut() {
            if let Err(error) = p.conn.flush().await {
                tracing::warn!(shard = %p.shard, %error, "lost a shard starting COPY");
                p.conn.broken = true;
                return Err(Failure::Lost(p.shard));
            }
        }
        let mut response: Option<Frame> = None;
        for p in parts.iter_mut() {
            while !p.ready {
                let f = p.read().await?;
                match f.tag() {
                    b'G' | b'H' => {
                        p.copying = true;
                        response.get_or_insert(f);
                        break;
                    }
                    b'd' | b'c' => {}
                    _ => p.note(f, &mut notices),
                }
            }
        }
        self.out.extend_from_slice(&notices);
        notices.clear();
        if let Some(e) = parts.iter().find_map(|p| p.error.clone()) {
            for p in parts.iter_mut() {
                p.abort("COPY failed on another shard", &mut notices)
                    .await?;
                if plan.direction == CopyDirection::Out {
                    // Its rows are not wanted: never reuse it mid-stream.
                    if !p.ready {
                        p.conn.broken = true;
                    }
                }
            }
            self.out.extend_from_slice(&notices);
            return Err(Failure::Shard(e));
        }
        let Some(response) = response else {
            return Err(Failure::Error(SessionError::Unsupported(
                "COPY: no shard started copying".into(),
            )));
        };
        if matches!(source, CopySource::Client) {
            self.out.extend_from_slice(response.raw());
        }
        match plan.direction {
            CopyDirection::In => self.copy_in(plan, parts, key, source).await,
            CopyDirection::Out => self.copy_out(plan, parts).await,
        }
    }

    /// The client's rows to their shards, up to CopyDone or CopyFail.
    async fn copy_in(
        &mut self,
        plan: &CopyPlan,
        parts: &mut [Part<'_>],
        key: Option<KeySpec>,
        mut source: CopySource<'_>,
    ) -> Result<(), Failure> {
        // The client waits for CopyInResponse before it sends data.
        if matches!(source, CopySource::Client) {
            if self.writer.write_all(&self.out).await.is_err() {
                self.out.clear();
                abort_all(parts, "client connection lost").await;
                return Err(Failure::ClientGone);
            }
            self.out.clear();
        }
        let router = RowRouter {
            catalog: self.ctx.catalog.current(),
            plan,
            key: key.clone(),
        };
        let mut splitter = Splitter::new(&plan.options, key);
        let mut notices = BytesMut::new();
        let failure: Failure = loop {
            let (frame, message) = match &mut source {
                CopySource::Client => match self.client.read_frame().await {
                    Ok(Some(f)) => {
                        let m = client_copy_message(&f);
                        (f, m)
                    }
                    r => {
                        tracing::debug!(result = ?r.map(|_| ()), "client left during COPY FROM STDIN");
                        break Failure::ClientGone;
                    }
                },
                CopySource::Backend(shard, conn) => match conn.read().await {
                    Ok(f) => {
                        let m = backend_copy_message(&f);
                        (f, m)
                    }
                    Err(error) => {
                        tracing::warn!(%shard, %error, "lost the shard a COPY's rows come from");
                        conn.broken = true;
                        break Failure::Lost(*shard);
                    }
                },
            };
            let done = match message {
                ClientCopy::Data => {
                    splitter.push(frame.body());
                    false
                }
                ClientCopy::Done => true,
                ClientCopy::Ignored => continue,
                ClientCopy::Fail(reason) => match self.client_copy_fail(parts, &reason).await {
                    Ok(failed) => return Err(failed),
                    Err(f) => break f,
                },
                ClientCopy::Unexpected(f) => break Failure::Shard(f),
            };
            let routed = take_pieces(&mut splitter, done)
                .map_err(|source| {
                    Failure::Error(SessionError::Copy {
                        table: plan.table.clone(),
                        source,
                    })
                })
                .and_then(|pieces| router.route(pieces, parts));
            if let Err(f) = routed {
                break f;
            }
            let trailer = done && splitter.needs_trailer();
            if let Err(f) = flush_parts(parts, done, trailer, &mut notices).await {
                break f;
            }
            self.out.extend_from_slice(&notices);
            notices.clear();
            if let Some(e) = parts.iter().find_map(|p| p.error.clone()) {
                break Failure::Shard(e);
            }
            if done {
                match end_copy_in(parts, &mut notices).await {
                    Ok(()) => {
                        self.out.extend_from_slice(&notices);
                        return match parts.iter().find_map(|p| p.error.clone()) {
                            Some(e) => Err(Failure::Shard(e)),
                            None => Ok(()),
                        };
                    }
                    Err(f) => break f,
                }
            }
        };
        // Abort everywhere: every shard's COPY fails, no row stays anywhere.
        let reason = match &failure {
            Failure::ClientGone => "client connection lost",
            _ => "COPY aborted by the router",
        };
        for p in parts.iter_mut() {
            p.batch.clear();
            if p.abort(reason, &mut notices).await.is_err() {
                p.conn.broken = true;
            }
        }
        if !matches!(failure, Failure::ClientGone) {
            self.out.extend_from_slice(&notices);
        }
        Err(failure)
    }

    /// The client's CopyFail: every shard's COPY fails with its reason. `Ok`: the
    /// client's error; `Err`: a shard could not be told (abort everywhere).
    async fn client_copy_fail(
        &mut self,
        parts: &mut [Part<'_>],
        reason: &str,
    ) -> Result<Failure, Failure> {
        let mut notices = BytesMut::new();
        for p in parts.iter_mut() {
            p.batch.clear();
            p.abort(reason, &mut notices).await?;
        }
        self.out.extend_from_slice(&notices);
        Ok(match parts.iter().find_map(|p| p.error.clone()) {
            Some(e) => Failure::Shard(e),
            None => Failure::Error(SessionError::Unsupported(format!(
                "COPY from stdin failed: {reason}"
            ))),
        })
    }

    /// Every shard's CopyData concatenated into the client's copy-out stream.
    async fn copy_out(&mut self, plan: &CopyPlan, parts: &mut [Part<'_>]) -> Result<(), Failure> {
        let binary = plan.options.format == CopyFormat::Binary;
        let header = plan.options.header && !binary;
        let mut notices = BytesMut::new();
        let mut failure: Option<Failure> = None;
        let mut held: Vec<u8> = Vec::new();
        for i in 0..parts.len() {
            let mut first = true;
            while !parts[i].ready {
                let f = match parts[i].read().await {
                    Ok(f) => f,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                match f.tag() {
                    b'd' => {
                        let body = f.body();
                        let mut data = body;
                        if first && binary {
                            let h = binary_header_len(body).unwrap_or(0);
                            if i == 0 {
                                held.extend_from_slice(&body[..h]);
                            }
                            data = &body[h..];
                        } else if first && header && i > 0 {
                            data = &[];
                        }
                        first = false;
                        if !(data.is_empty() || binary && data == BINARY_TRAILER) {
                            // Clients read the binary header and the first row from
                            // one message, as PostgreSQL sends them.
                            put_copy_data(&mut self.out, &[&held[..], data]);
                            held.clear();
                        }
                        if self.out.len() >= CLIENT_FLUSH {
                            if self.writer.write_all(&self.out).await.is_err() {
                                self.out.clear();
                                failure = Some(Failure::ClientGone);
                                break;
                            }
                            self.out.clear();
                        }
                    }
                    b'c' => {}
                    _ => parts[i].note(f, &mut notices),
                }
            }
            self.out.extend_from_slice(&notices);
            notices.clear();
            if failure.is_none() {
                if let Some(e) = parts[i].error.clone() {
                    failure = Some(Failure::Shard(e));
                }
            }
            if failure.is_some() {
                // The other shards' streams are not wanted: their connections are not
                // reusable mid-stream.
                for p in parts.iter_mut() {
                    if !p.ready {
                        p.conn.broken = true;
                    }
                }
                break;
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if binary {
            put_copy_data(&mut self.out, &[&held[..], &BINARY_TRAILER]);
        }
        let at = begin_frame(&mut self.out, b'c');
        finish_frame(&mut self.out, at);
        Ok(())
    }
}

/// Aborts every shard's copy-in after a failure elsewhere, marking connections that do
/// not end cleanly as broken.
async fn abort_all(parts: &mut [Part<'_>], reason: &str) {
    let mut ignore = BytesMut::new();
    for p in parts.iter_mut() {
        if p.abort(reason, &mut ignore).await.is_err() {
            p.conn.broken = true;
        }
    }
}

/// A CopyData message for the client, made of `pieces`.
fn put_copy_data(out: &mut BytesMut, pieces: &[&[u8]]) {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    if len == 0 {
        return;
    }
    out.put_u8(b'd');
    out.put_i32((len + 4) as i32);
    for p in pieces {
        out.extend_from_slice(p);
    }
}

/// The length of the binary header at the start of `body` (signature, flags, extension).
fn binary_header_len(body: &[u8]) -> Option<usize> {
    if body.len() < 19 || &body[..11] != BINARY_SIGNATURE {
        return None;
    }
    let ext = i32::from_be_bytes([body[15], body[16], body[17], body[18]]);
    let h = 19 + usize::try_from(ext).ok()?;
    (body.len() >= h).then_some(h)
}

/// The table's columns in order (those a COPY without a column list reads: not
/// dropped, not generated), asked of the first shard.
async fn table_columns(
    parts: &mut [Part<'_>],
    table_sql: &str,
    notices: &mut BytesMut,
) -> Result<Vec<String>, Failure> {
    let Some(p) = parts.first_mut() else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {}::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        literal(table_sql)
    );
    encode_query(&mut p.conn.out, &sql);
    p.conn.unnamed = None;
    p.conn.pending_syncs += 1;
    p.ready = false;
    // A plain write: `send` would consume the answer's rows.
    if let Err(error) = p.conn.flush().await {
        tracing::warn!(shard = %p.shard, %error, "lost a shard asking for columns");
        p.conn.broken = true;
        return Err(Failure::Lost(p.shard));
    }
    let mut names = Vec::new();
    while !p.ready {
        let f = p.read().await?;
        if f.tag() == b'D' {
            let body = f.body();
            // One column: count, length, bytes.
            if body.len() >= 6 {
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                if let Ok(len) = usize::try_from(len) {
                    if let Some(v) = body.get(6..6 + len) {
                        names.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
        } else {
            p.note(f, notices);
        }
    }
    if let Some(e) = p.error.take() {
        return Err(Failure::Shard(e));
    }
    Ok(names)
}

/// What a client message means during COPY FROM STDIN.
enum ClientCopy {
    Data,
    Done,
    /// CopyFail, with its reason.
    Fail(String),
    /// Flush and Sync, which PostgreSQL ignores during copy-in.
    Ignored,
    /// Anything else: the protocol error to answer with.
    Unexpected(Frame),
}

/// A backend's COPY TO STDOUT as the rows of a COPY FROM: its ErrorResponse ends it.
fn backend_copy_message(frame: &Frame) -> ClientCopy {
    match frame.tag() {
        b'd' => ClientCopy::Data,
        b'c' => ClientCopy::Done,
        b'E' => ClientCopy::Unexpected(frame.clone()),
        _ => ClientCopy::Ignored,
    }
}

fn client_copy_message(frame: &Frame) -> ClientCopy {
    match frame.tag() {
        b'd' => ClientCopy::Data,
        b'c' => ClientCopy::Done,
        b'f' => ClientCopy::Fail(
            crate::protocol::frame::BodyReader::new(frame.body(), "CopyFail")
                .cstr()
                .unwrap_or("")
                .to_owned(),
        ),
        b'H' | b'S' => ClientCopy::Ignored,
        other => {
            let mut b = BytesMut::new();
            encode_error(
                &mut b,
                b'E',
                "ERROR",
                "08P01",
                &format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                None,
                None,
            );
            match Frame::from_bytes(b.freeze()) {
                Ok(f) => ClientCopy::Unexpected(f),
                Err(_) => ClientCopy::Ignored,
            }
        }
    }
}

/// The pieces the splitter can give now (all of them, with the end, at CopyDone).
fn take_pieces(splitter: &mut Splitter, done: bool) -> Result<Vec<Piece>, crate::copy::CopyError> {
    let mut pieces = Vec::new();
    loop {
        let next = match splitter.next_piece()? {
            None if done => splitter.finish()?,
            next => next,
        };
        match next {
            Some(p) => pieces.push(p),
            None => return Ok(pieces),
        }
    }
}

/// Puts each piece of a COPY FROM STDIN into the batch of the shard it goes to.
struct RowRouter<'a> {
    catalog: std::sync::Arc<pgshard_catalog::Catalog>,
    plan: &'a CopyPlan,
    key: Option<KeySpec>,
}

impl RowRouter<'_> {
    fn route(&self, pieces: Vec<Piece>, parts: &mut [Part<'_>]) -> Result<(), Failure> {
        let key_type = self.plan.key.as_ref().map(|k| k.key_type);
        for piece in pieces {
            let (bytes, target) = match piece {
                Piece::All(b) => (b, None),
                Piece::Row {
                    bytes,
                    key: Some(field),
                    line,
                } if key_type.is_some() => {
                    let kt = key_type.unwrap_or(pgshard_catalog::KeyType::Int8);
                    let column = self.key.as_ref().map_or("", |k| k.column.as_str());
                    let value = key_value(&field, kt, &self.plan.table, column, line).map_err(
                        |source| {
                            Failure::Error(SessionError::Copy {
                                table: self.plan.table.clone(),
                                source,
                            })
                        },
                    )?;
                    let shard = self.catalog.shard_of(&value).ok_or_else(no_owner)?;
                    (bytes, Some(shard))
                }
                // A reference table: every shard gets every row.
                Piece::Row { bytes, .. } => (bytes, None),
            };
            match target {
                None => parts
                    .iter_mut()
                    .for_each(|p| p.batch.extend_from_slice(&bytes)),
                Some(shard) => parts
                    .iter_mut()
                    .find(|p| p.shard == shard)
                    .ok_or_else(no_owner)?
                    .batch
                    .extend_from_slice(&bytes),
            }
        }
        Ok(())
    }
}

fn no_owner() -> Failure {
    Failure::Error(SessionError::Unsupported(
        "COPY: no shard of this COPY owns the bucket of a row's key (the catalog changed)".into(),
    ))
}

/// Sends each shard its batch once it is big enough, or at the end (`done`, with the
/// binary trailer when the format needs one).
async fn flush_parts(
    parts: &mut [Part<'_>],
    done: bool,
    trailer: bool,
    notices: &mut BytesMut,
) -> Result<(), Failure> {
    for p in parts.iter_mut() {
        if p.batch.len() >= BATCH || done {
            if trailer {
                p.batch.extend_from_slice(&BINARY_TRAILER);
            }
            p.flush_batch(notices).await?;
        }
    }
    Ok(())
}

/// CopyDone to every shard still copying, then each one's answer.
async fn end_copy_in(parts: &mut [Part<'_>], notices: &mut BytesMut) -> Result<(), Failure> {
    for p in parts.iter_mut() {
        if p.copying {
            let at = begin_frame(&mut p.conn.out, b'c');
            finish_frame(&mut p.conn.out, at);
            p.copying = false;
            p.send(notices).await?;
        }
    }
    for p in parts.iter_mut() {
        p.finish(notices).await?;
    }
    Ok(())
}

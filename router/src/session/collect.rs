//! Running a read that cannot be pushed down (issue 15, [`pgshard_sql::collect`]): its
//! distributed tables are copied from every shard into temporary tables of one session
//! on the finishing shard, where PostgreSQL runs the rewritten statement; its answer
//! goes to the client as that shard sent it. One path for both protocols, framed like
//! a fan-out (`super::fanout`): the same backends (inside a transaction block the
//! transaction's own, so the rows are the transaction's snapshot), the same ending.
//!
//! The rows move as PostgreSQL's binary COPY format, streamed: each shard's
//! `COPY t TO STDOUT (FORMAT binary)` is relayed CopyData by CopyData into the
//! finishing session's `COPY pg_temp.… FROM STDIN (FORMAT binary)`, with each shard's
//! header and trailer dropped and one of each sent by the router ([`BinaryRelay`]), so
//! the router holds at most one message per shard. The bytes moved per statement are
//! bounded by `router.max_intermediate_bytes` (SQLSTATE 54000 past it).
//!
//! The finishing session is a pooled primary backend outside the client's transaction
//! (temporary tables cannot be created in a read-only transaction or on a standby),
//! with the session's settings replayed. Its temporary tables are dropped before it
//! goes back to its pool; a backend left in any other state is closed instead.

use super::copy::{CopyMode, CopySource};
use super::error::SessionError;
use super::fanout::{Ending, Part};
use super::refusal::Refusal;
use super::{FanoutPortal, Session};
use crate::backend::PooledConn;
use crate::protocol::backend::decode_ready_status;
use crate::protocol::frontend::{
    encode_bind_with_results, encode_copy_done, encode_copy_fail, encode_describe, encode_execute,
    encode_parse, encode_query, encode_sync,
};
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use pgshard_catalog::ShardId;
use pgshard_sql::{CollectInput, CollectPlan, FanoutPlan, InsertStage};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The binary COPY signature, flags and header-extension length the router sends once.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
pub(super) const TRAILER: &[u8] = &[0xff, 0xff];
/// Bytes of CopyData queued for the finishing backend before they are written.
const FLUSH_AT: usize = 256 * 1024;
/// Bytes of the finishing answer buffered before they are written to the client.
const ANSWER_FLUSH_AT: usize = 64 * 1024;

/// One shard's binary COPY stream with its header and trailer taken off: what is left
/// is tuples, which concatenate. No I/O; fed one CopyData payload at a time.
#[derive(Default)]
pub(super) struct BinaryRelay {
    /// Header bytes seen so far (the fixed 19, then the extension).
    header: Vec<u8>,
    header_done: bool,
    /// The last two bytes seen, held back: at the end of the stream they are the
    /// trailer.
    held: Vec<u8>,
}

impl BinaryRelay {
    /// Appends the tuple bytes of `payload` that are certainly not the trailer to `out`.
    pub(super) fn feed(&mut self, mut payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if !self.header_done {
            let want = |h: &[u8]| -> usize {
                if h.len() < 19 {
                    19
                } else {
                    19 + u32::from_be_bytes([h[15], h[16], h[17], h[18]]) as usize
                }
            };
            while !self.header_done && !payload.is_empty() {
                let need = want(&self.header) - self.header.len();
                let take = need.min(payload.len());
                self.header.extend_from_slice(&payload[..take]);
                payload = &payload[take..];
                if self.header.len() == want(&self.header) && self.header.len() >= 19 {
                    if &self.header[..11] != b"PGCOPY\n\xff\r\n\0" {
                        return Err("a shard's binary COPY stream has no signature".into());
                    }
                    self.header_done = true;
                }
            }
        }
        if payload.is_empty() {
            return Ok(());
        }
        self.held.extend_from_slice(payload);
        let keep = self.held.len().saturating_sub(2);
        out.extend_from_slice(&self.held[..keep]);
        self.held.drain(..keep);
        Ok(())
    }

    /// The end of the stream: what is held back must be the trailer.
    pub(super) fn finish(self) -> Result<(), String> {
        if self.header_done && self.held == TRAILER {
            Ok(())
        } else {
            Err("a shard's binary COPY stream ended without its trailer".into())
        }
    }
}

/// Appends a CopyData message holding `data`.
pub(super) fn encode_copy_data(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'd');
    out.put_u32((data.len() + 4) as u32);
    out.extend_from_slice(data);
}

/// How collecting one table ended.
pub(super) enum Collected {
    Done,
    /// A shard's (or the finishing shard's) ErrorResponse, for the client.
    ShardError(Frame),
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs a read planned as a collection ([`CollectPlan`]), answering the client like
    /// a fan-out: up to ReadyForQuery (simple protocol), or up to the Execute's end.
    pub(crate) async fn run_collect(
        &mut self,
        plan: &FanoutPlan,
        c: &CollectPlan,
        in_txn: bool,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        if let Some(w) = &c.write {
            return Box::pin(self.run_cte_write(plan, c, w, in_txn, ext)).await;
        }
        if in_txn && c.insert.is_some() {
            self.fail_fanout(
                ext.is_some(),
                SessionError::from(Refusal::CollectedInsertInTransaction),
            );
            return Ok(());
        }
        if in_txn && c.reads_other {
            self.fail_fanout(
                ext.is_some(),
                SessionError::from(Refusal::CollectInTransaction),
            );
            return Ok(());
        }
        if in_txn {
            let tables: Vec<&str> = c.inputs.iter().map(|i| i.table.as_str()).collect();
            if let Some(e) = self.txn_exclusive_lock(c.finish, &tables).await {
                self.fail_fanout(ext.is_some(), e);
                return Ok(());
            }
        }
        crate::stats::bump(&self.ctx.stats.fanout_reads);
        let Some((mut parts, reused_shard)) = self.fanout_parts(plan, in_txn, ext.is_some()).await
        else {
            return Ok(());
        };
        // The finishing backend: beyond the parts, so it never waits for capacity.
        let finish = match self.finishing_backend(c.finish).await {
            Ok(f) => f,
            Err(e) => {
                let back = self.release_parts(parts, reused_shard);
                self.restore_attached(back);
                self.fail_fanout(ext.is_some(), e);
                return Ok(());
            }
        };
        let mut finish = finish;
        // A CancelRequest from the client cancels the copies and the finishing query.
        self.entry.set_activity_many(
            "active",
            Some(c.finish),
            parts
                .iter()
                .map(|p| p.conn.cancel_target())
                .chain(std::iter::once(finish.cancel_target()))
                .collect(),
        );
        // Whatever the session queued for the client goes out first.
        if !self.out.is_empty() {
            if self.writer.write_all(&self.out).await.is_err() {
                self.closing = true;
            }
            self.out.clear();
        }
        let (ending, failed) = match self
            .collect_and_finish(c, &mut parts, &mut finish, ext)
            .await
        {
            Ok(Some(error)) => (Ending::Raw(BytesMut::from(&error.raw()[..])), true),
            Ok(None) => (Ending::Ready, self.collect_answer_failed),
            Err(e) => {
                // A backend stopped mid-stream is in an unknown state.
                for p in parts.iter_mut() {
                    if p.conn.pending_syncs > 0 {
                        p.conn.broken = true;
                    }
                }
                (Ending::Fail(e), false)
            }
        };
        self.collect_answer_failed = false;
        if let (Some(ins), Ending::Ready) = (&c.insert, &ending) {
            // The staged rows to their shards, as a COPY into the table is.
            let back = self.release_parts(parts, reused_shard);
            self.restore_attached(back);
            self.insert_staged(ins, c.finish, &mut finish, ext).await?;
            if finish.is_clean() {
                if let Err(e) = finish.run_silent(&c.drop_sql()).await {
                    tracing::warn!(error = %e, "could not drop collected tables");
                    finish.broken = true;
                }
            } else {
                finish.broken = true;
            }
            self.publish_activity();
            return Ok(());
        }
        // Temporary tables go before the backend goes back to its pool.
        if finish.is_clean() {
            if let Err(e) = finish.run_silent(&c.drop_sql()).await {
                tracing::warn!(error = %e, "could not drop collected tables");
                finish.broken = true;
            }
        } else {
            finish.broken = true;
        }
        drop(finish);
        let back = self.release_parts(parts, reused_shard);
        self.restore_attached(back);
        self.answer_fanout(ext.is_some(), ending, failed);
        Ok(())
    }

    /// Inside a transaction block, before a collection on `shard`: the refusal if the
    /// transaction holds ACCESS EXCLUSIVE there on one of `tables`
    /// ([`pgshard_sql::exclusive_lock_sql`]), looked up on the transaction's own
    /// backend on that shard (none: it holds no lock there), or the error of the
    /// look-up. `None`: the collection may go on.
    pub(super) async fn txn_exclusive_lock(
        &mut self,
        shard: ShardId,
        tables: &[&str],
    ) -> Option<SessionError> {
        if tables.is_empty() {
            return None;
        }
        if self.attached.as_ref().is_some_and(|a| a.shard == shard) {
            if let Err(e) = self.drain_attached().await {
                return Some(e);
            }
        }
        let conn = match self.attached.as_mut().filter(|a| a.shard == shard) {
            Some(a) => &mut a.conn,
            None => &mut self.txn.parked.iter_mut().find(|p| p.shard == shard)?.conn,
        };
        let rows = match conn
            .query_text(&pgshard_sql::exclusive_lock_sql(tables))
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Some(SessionError::from_backend(shard, e)),
        };
        let at = rows.first()?.first()?.as_deref()?.parse::<usize>().ok()?;
        let table = tables.get(at.checked_sub(1)?)?;
        Some(Refusal::CollectExclusiveLock((*table).to_string()).into())
    }

    /// A primary backend on the finishing shard with the session's settings.
    pub(super) async fn finishing_backend(
        &mut self,
        shard: ShardId,
    ) -> Result<PooledConn, SessionError> {
        let mut conn =
            crate::hold::checkout_primary(&self.ctx, shard, &self.user, &self.database, true)
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

    /// Creates the temporary tables, fills them from every shard and runs the statement.
    /// `Some(error)`: a shard's ErrorResponse ended it before the statement ran.
    async fn collect_and_finish(
        &mut self,
        c: &CollectPlan,
        parts: &mut [Part],
        finish: &mut PooledConn,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<Option<Frame>, SessionError> {
        let shard = c.finish;
        if let Err(e) = finish.run_silent(&c.create_sql()).await {
            return Err(SessionError::from_backend(shard, e));
        }
        let limit = self.ctx.config.max_intermediate_bytes;
        let mut moved: u64 = 0;
        for input in &c.inputs {
            match self
                .collect_table(input, parts, finish, shard, limit, &mut moved)
                .await?
            {
                Collected::Done => {}
                Collected::ShardError(f) => return Ok(Some(f)),
            }
        }
        tracing::debug!(bytes = moved, tables = c.inputs.len(), "collected");
        if let Some(sql) = c.analyze_sql() {
            if let Err(e) = finish.run_silent(&sql).await {
                return Err(SessionError::from_backend(shard, e));
            }
        }
        if c.insert.is_some() {
            return self.run_stage(finish, shard, &c.sql, ext).await;
        }
        self.relay_finishing(finish, shard, &c.sql, ext).await?;
        Ok(None)
    }

    /// Copies one table from every shard into its temporary table.
    pub(super) async fn collect_table(
        &mut self,
        input: &CollectInput,
        parts: &mut [Part],
        finish: &mut PooledConn,
        finish_shard: ShardId,
        limit: u64,
        moved: &mut u64,
    ) -> Result<Collected, SessionError> {
        let fin = |e| SessionError::from_backend(finish_shard, e);
        // Every shard starts its COPY before any is read: they work in parallel.
        for p in parts.iter_mut() {
            encode_query(&mut p.conn.out, &input.copy_out_for(p.shard));
            p.conn.unnamed = None;
            p.conn.pending_syncs += 1;
            p.conn.status = b'T';
            let shard = p.shard;
            p.conn
                .flush()
                .await
                .map_err(|e| SessionError::from_backend(shard, e))?;
        }
        encode_query(&mut finish.out, &input.copy_in());
        finish.unnamed = None;
        finish.status = b'T';
        finish.flush().await.map_err(fin)?;
        loop {
            let f = finish.read().await.map_err(fin)?;
            match f.tag() {
                b'G' => break,
                b'E' => {
                    self.drain_parts(parts).await;
                    loop {
                        let z = finish.read().await.map_err(fin)?;
                        if z.tag() == b'Z' {
                            finish.status = decode_ready_status(&z).unwrap_or(b'E');
                            break;
                        }
                    }
                    return Ok(Collected::ShardError(f));
                }
                _ => {}
            }
        }
        encode_copy_data(&mut finish.out, HEADER);
        let mut shard_error: Option<Frame> = None;
        let mut too_large = false;
        let mut chunk = Vec::new();
        for p in parts.iter_mut() {
            let shard = p.shard;
            let mut relay = BinaryRelay::default();
            let mut ok = false;
            loop {
                let f = p
                    .conn
                    .read()
                    .await
                    .map_err(|e| SessionError::from_backend(shard, e))?;
                match f.tag() {
                    b'd' if shard_error.is_none() && !too_large => {
                        chunk.clear();
                        relay.feed(f.body(), &mut chunk).map_err(|m| {
                            p.conn.broken = true;
                            SessionError::Unsupported(m)
                        })?;
                        *moved += chunk.len() as u64;
                        if *moved > limit {
                            too_large = true;
                            continue;
                        }
                        if !chunk.is_empty() {
                            encode_copy_data(&mut finish.out, &chunk);
                        }
                        if finish.out.len() >= FLUSH_AT {
                            finish.flush().await.map_err(fin)?;
                        }
                    }
                    b'C' => ok = true,
                    b'E' => {
                        shard_error.get_or_insert(f);
                    }
                    b'S' => p.conn.note_parameter(&f),
                    b'Z' => {
                        p.conn.status = decode_ready_status(&f).unwrap_or(b'E');
                        p.conn.pending_syncs = p.conn.pending_syncs.saturating_sub(1);
                        break;
                    }
                    _ => {}
                }
            }
            if ok && shard_error.is_none() && !too_large {
                relay.finish().map_err(SessionError::Unsupported)?;
            }
        }
        if shard_error.is_some() || too_large {
            encode_copy_fail(&mut finish.out, "pgshard: collection stopped");
        } else {
            encode_copy_data(&mut finish.out, TRAILER);
            encode_copy_done(&mut finish.out);
        }
        finish.flush().await.map_err(fin)?;
        let mut finish_error = None;
        loop {
            let f = finish.read().await.map_err(fin)?;
            match f.tag() {
                b'E' => finish_error = Some(f),
                b'S' => finish.note_parameter(&f),
                b'Z' => {
                    finish.status = decode_ready_status(&f).unwrap_or(b'E');
                    break;
                }
                _ => {}
            }
        }
        if too_large {
            return Err(SessionError::IntermediateTooLarge { limit });
        }
        if let Some(e) = shard_error.or(finish_error) {
            return Ok(Collected::ShardError(e));
        }
        Ok(Collected::Done)
    }

    /// Runs the statement filling the staging table of a collected INSERT, with the
    /// client's parameters. `Some(error)`: PostgreSQL's error for it.
    async fn run_stage(
        &mut self,
        conn: &mut PooledConn,
        shard: ShardId,
        sql: &str,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<Option<Frame>, SessionError> {
        send_statement(conn, shard, sql, ext, false).await?;
        let mut error = None;
        loop {
            let f = conn
                .read()
                .await
                .map_err(|e| SessionError::from_backend(shard, e))?;
            match f.tag() {
                b'Z' => {
                    conn.status = decode_ready_status(&f).unwrap_or(b'E');
                    break;
                }
                b'E' => {
                    error.get_or_insert(f);
                }
                b'S' => conn.note_parameter(&f),
                _ => {}
            }
        }
        Ok(error)
    }

    /// Copies the staging table's rows into the distributed table (split by key, one
    /// distributed transaction) and answers the client with `INSERT 0 n`.
    async fn insert_staged(
        &mut self,
        ins: &InsertStage,
        shard: ShardId,
        finish: &mut PooledConn,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        encode_query(&mut finish.out, &ins.copy_out);
        finish.unnamed = None;
        finish.status = b'T';
        if let Err(e) = finish.flush().await {
            finish.broken = true;
            self.fail_fanout(ext.is_some(), SessionError::from_backend(shard, e));
            return Ok(());
        }
        let mode = match ext {
            None => CopyMode::Simple,
            Some((_, describe)) => {
                if describe {
                    // An INSERT without RETURNING describes as NoData.
                    self.out.extend_from_slice(&[b'n', 0, 0, 0, 4]);
                }
                CopyMode::Extended
            }
        };
        self.run_copy_from(
            &ins.copy,
            false,
            mode,
            CopySource::Backend(shard, finish),
            true,
        )
        .await?;
        // Whatever the staging COPY still sends, up to its ReadyForQuery.
        while !finish.broken {
            match finish.read().await {
                Ok(f) if f.tag() == b'Z' => {
                    finish.status = decode_ready_status(&f).unwrap_or(b'E');
                    break;
                }
                Ok(_) => {}
                Err(_) => finish.broken = true,
            }
        }
        Ok(())
    }

    /// Reads every part to its ReadyForQuery (after the finishing side failed).
    async fn drain_parts(&mut self, parts: &mut [Part]) {
        for p in parts.iter_mut() {
            loop {
                match p.conn.read().await {
                    Ok(f) if f.tag() == b'Z' => {
                        p.conn.status = decode_ready_status(&f).unwrap_or(b'E');
                        p.conn.pending_syncs = p.conn.pending_syncs.saturating_sub(1);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        p.conn.broken = true;
                        break;
                    }
                }
            }
        }
    }

    /// Runs the rewritten statement on the finishing backend and relays its answer
    /// (without its ReadyForQuery) to the client, in the client's protocol: the
    /// client's parameters and result formats, a RowDescription only if it described.
    async fn relay_finishing(
        &mut self,
        conn: &mut PooledConn,
        shard: ShardId,
        sql: &str,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(), SessionError> {
        send_finishing(conn, shard, sql, ext).await?;
        let mut buf = BytesMut::new();
        loop {
            let f = conn
                .read()
                .await
                .map_err(|e| SessionError::from_backend(shard, e))?;
            match f.tag() {
                b'Z' => {
                    conn.status = decode_ready_status(&f).unwrap_or(b'E');
                    break;
                }
                b'S' => conn.note_parameter(&f),
                b'1' | b'2' => {}
                tag => {
                    if tag == b'E' {
                        self.collect_answer_failed = true;
                    }
                    buf.extend_from_slice(f.raw());
                    if let Some(capture) = self.capture.as_mut() {
                        capture.push(&buf);
                        buf.clear();
                    } else if buf.len() >= ANSWER_FLUSH_AT {
                        if self.writer.write_all(&buf).await.is_err() {
                            self.closing = true;
                            conn.broken = true;
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

    /// [`Self::relay_finishing`] with the answer held rather than sent (a statement
    /// whose write commits after it): the answer, and PostgreSQL's error if it failed
    /// (not in the answer then). At most `router.max_intermediate_bytes` are held
    /// (SQLSTATE 54000 beyond).
    pub(super) async fn finishing_answer(
        &mut self,
        conn: &mut PooledConn,
        shard: ShardId,
        sql: &str,
        ext: Option<(&FanoutPortal, bool)>,
    ) -> Result<(BytesMut, Option<Frame>), SessionError> {
        send_finishing(conn, shard, sql, ext).await?;
        let limit = self.ctx.config.max_intermediate_bytes;
        let mut buf = BytesMut::new();
        let mut error = None;
        loop {
            let f = conn.read().await.map_err(|e| {
                conn.broken = true;
                SessionError::from_backend(shard, e)
            })?;
            match f.tag() {
                b'Z' => {
                    conn.status = decode_ready_status(&f).unwrap_or(b'E');
                    break;
                }
                b'S' => conn.note_parameter(&f),
                b'1' | b'2' => {}
                b'E' => {
                    error.get_or_insert(f);
                }
                _ if buf.len() as u64 > limit => {}
                _ => buf.extend_from_slice(f.raw()),
            }
        }
        if error.is_none() && buf.len() as u64 > limit {
            return Err(SessionError::IntermediateTooLarge { limit });
        }
        Ok((buf, error))
    }
}

/// Sends the finishing statement: a Query, or the client's parameters and result
/// formats bound to it (Describe only if the client described).
async fn send_finishing(
    conn: &mut PooledConn,
    shard: ShardId,
    sql: &str,
    ext: Option<(&FanoutPortal, bool)>,
) -> Result<(), SessionError> {
    send_statement(conn, shard, sql, ext, true).await
}

/// Sends `sql`: a Query, or bound to the client's parameters; with `answer`, in the
/// client's result formats and described if the client described (the rows go to the
/// client), else in text and not described (the router reads the reply itself).
async fn send_statement(
    conn: &mut PooledConn,
    shard: ShardId,
    sql: &str,
    ext: Option<(&FanoutPortal, bool)>,
    answer: bool,
) -> Result<(), SessionError> {
    match ext {
        None => encode_query(&mut conn.out, sql),
        Some((portal, describe)) => {
            let out = &mut conn.out;
            let results: &[i16] = if answer { &portal.results } else { &[] };
            encode_parse(out, "", sql, &portal.param_types);
            encode_bind_with_results(out, "", "", &portal.params, results);
            if answer && describe {
                encode_describe(out, b'P', "");
            }
            encode_execute(out, "");
            encode_sync(out);
        }
    }
    conn.unnamed = None;
    conn.status = b'T';
    conn.flush()
        .await
        .map_err(|e| SessionError::from_backend(shard, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[&[u8]]) -> Vec<u8> {
        let mut s = HEADER.to_vec();
        for r in rows {
            s.extend_from_slice(r);
        }
        s.extend_from_slice(TRAILER);
        s
    }

    #[test]
    fn relay_drops_header_and_trailer_across_any_split() {
        let rows: &[&[u8]] = &[b"\x00\x01\x00\x00\x00\x01a", b"\x00\x01\xff\xff\xff\xff"];
        let s = stream(rows);
        let want: Vec<u8> = rows.concat();
        for a in 0..s.len() {
            for b in a..s.len() {
                let mut r = BinaryRelay::default();
                let mut out = Vec::new();
                for piece in [&s[..a], &s[a..b], &s[b..]] {
                    r.feed(piece, &mut out).expect("a well-formed stream");
                }
                assert_eq!(out, want, "split at {a}, {b}");
                r.finish().expect("a trailer");
            }
        }
    }

    #[test]
    fn relay_skips_a_header_extension() {
        let mut s = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\x03xyz".to_vec();
        s.extend_from_slice(b"\x00\x00");
        s.extend_from_slice(TRAILER);
        let mut r = BinaryRelay::default();
        let mut out = Vec::new();
        r.feed(&s, &mut out).expect("a well-formed stream");
        assert_eq!(out, b"\x00\x00");
        r.finish().expect("a trailer");
    }

    #[test]
    fn relay_refuses_a_stream_without_trailer() {
        let mut r = BinaryRelay::default();
        let mut out = Vec::new();
        r.feed(HEADER, &mut out).expect("a header");
        r.feed(b"\x00\x00\x00", &mut out).expect("bytes");
        assert!(r.finish().is_err());
    }
}

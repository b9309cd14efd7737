//! Statements the router runs itself instead of forwarding them to one shard: the
//! table-placement functions (`create_distributed_table`, `create_reference_table`),
//! `pgshard.shard`, SQL-level `DEALLOCATE`, `DISCARD ALL`, and statements that run on every shard
//! (DDL, TRUNCATE… SPEC §5 rule 5). Each has one execution path for both protocols
//! (SPEC §6): it produces its answer — notices, a RowDescription and DataRows in text
//! format, CommandComplete — or an error, and [`Answer`] frames it for the protocol that
//! asked. After a simple Query: ReadyForQuery (the error path aborts an open
//! transaction, as for any refusal). After an Execute: no RowDescription (the portal's
//! Describe answered that), nothing until the client's Sync, and after an error the
//! rest of the batch is skipped.
//!
//! The answers carry at most one row of `void` or `text`, whose binary and text
//! encodings are the same bytes, so any result format the client binds is honoured.

use super::error::SessionError;
use super::refusal::Refusal;
use super::Session;
use crate::protocol::backend::{
    encode_command_complete, encode_data_row, encode_error, encode_row_description_text,
    encode_row_description_void,
};
use crate::protocol::Frame;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgshard_catalog::ShardId;
use pgshard_sql::RouterCommand;
use tokio::io::{AsyncRead, AsyncWrite};

/// Which protocol a router-run statement answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A simple Query: the answer ends with ReadyForQuery.
    Simple,
    /// An Execute of a portal: no RowDescription, no ReadyForQuery.
    Extended,
}

/// A portal the router runs itself at Execute (see the module doc).
pub(crate) struct LocalPortal {
    pub kind: LocalKind,
    /// The client's Bind from its parameter formats to its last value.
    pub params: Bytes,
    /// The client's result format codes.
    pub results: Vec<i16>,
}

/// What a [`LocalPortal`] runs.
#[derive(Clone)]
pub(crate) enum LocalKind {
    Router(RouterCommand),
    /// The statement's text, on each of these shards.
    AllShards(Vec<ShardId>),
    /// DISCARD ALL: the session's state the router keeps, reset.
    DiscardAll,
}

/// The columns a router command answers with: `Some((name, is_void))`, or `None`
/// for no rows.
fn router_columns(cmd: &RouterCommand) -> Option<(&'static str, bool)> {
    match cmd {
        RouterCommand::CreateDistributedTable { .. } => Some(("create_distributed_table", true)),
        RouterCommand::CreateReferenceTable { .. } => Some(("create_reference_table", true)),
        RouterCommand::ShowShard => Some(("pgshard.shard", false)),
        RouterCommand::ShowReadFrom => Some(("pgshard.read_from", false)),
        RouterCommand::CreateView { .. } | RouterCommand::DropViews { .. } => None,
        RouterCommand::SetShard { .. }
        | RouterCommand::ResetShard
        | RouterCommand::SetReadFrom { .. }
        | RouterCommand::ResetReadFrom
        | RouterCommand::Prepare { .. }
        | RouterCommand::Execute { .. }
        | RouterCommand::Deallocate { .. }
        | RouterCommand::Cursor(_) => None,
    }
}

/// RowDescription (with the client's result format) or NoData for a local portal.
pub(crate) fn encode_local_description(out: &mut BytesMut, kind: &LocalKind, results: &[i16]) {
    let columns = match kind {
        LocalKind::Router(cmd) => router_columns(cmd),
        LocalKind::AllShards(_) | LocalKind::DiscardAll => None,
    };
    match columns {
        None => crate::protocol::backend::encode_empty(out, b'n'),
        Some((name, void)) => {
            let at = out.len();
            if void {
                encode_row_description_void(out, name);
            } else {
                encode_row_description_text(out, &[name]);
            }
            // The format code is the frame's last two bytes.
            if results.first() == Some(&1) {
                let end = out.len();
                out[end - 2..end].copy_from_slice(&1i16.to_be_bytes());
            }
            debug_assert!(out.len() > at);
        }
    }
}

/// ParameterDescription (no parameters) and the columns, for Describe of a statement
/// that is a router command.
pub(crate) fn encode_router_statement_description(out: &mut BytesMut, cmd: &RouterCommand) {
    out.put_u8(b't');
    out.put_i32(6);
    out.put_i16(0);
    encode_local_description(out, &LocalKind::Router(cmd.clone()), &[]);
}

/// Drops RowDescription frames from a router-made answer (Describe sent them already).
fn without_row_description(mut b: BytesMut) -> BytesMut {
    let mut out = BytesMut::with_capacity(b.len());
    while b.len() >= 5 {
        let tag = b[0];
        let len = (&b[1..5]).get_i32() as usize;
        let frame = b.split_to((1 + len).min(b.len()));
        if tag != b'T' {
            out.extend_from_slice(&frame);
        }
    }
    out
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Sends the client a router-run statement's answer `reply` (notices, rows,
    /// CommandComplete), or `reply` then `error`, framed for `answer`'s protocol.
    pub(crate) fn deliver(&mut self, answer: Answer, reply: BytesMut, error: Option<SessionError>) {
        match answer {
            Answer::Simple => {
                self.emit_local(&reply);
                match error {
                    None => {
                        let s = self.client_status();
                        self.emit_ready(s);
                    }
                    Some(e) => self.fail_simple(e),
                }
            }
            Answer::Extended => {
                self.emit_local(&without_row_description(reply));
                if let Some(e) = error {
                    self.fail_extended(e);
                }
            }
        }
    }

    /// Runs a router command other than PREPARE and EXECUTE (which go to a shard) and
    /// answers it; `in_txn` when a transaction block is open; `results`: the result
    /// formats the client asked for.
    pub(crate) async fn run_router_command(
        &mut self,
        cmd: &RouterCommand,
        in_txn: bool,
        answer: Answer,
        results: &[i16],
    ) {
        let mut b = BytesMut::new();
        let result = match cmd {
            RouterCommand::CreateDistributedTable { .. }
            | RouterCommand::CreateReferenceTable { .. } => {
                Box::pin(self.run_create_table(cmd, in_txn, &mut b)).await
            }
            RouterCommand::CreateView { .. } | RouterCommand::DropViews { .. } => {
                Box::pin(self.run_view_command(cmd, in_txn, &mut b)).await
            }
            RouterCommand::Deallocate { name: None } => {
                self.sql_prepared.clear();
                encode_command_complete(&mut b, "DEALLOCATE ALL");
                Ok(())
            }
            RouterCommand::Deallocate { name: Some(n) } => match self.sql_prepared.remove(n) {
                Some(_) => {
                    encode_command_complete(&mut b, "DEALLOCATE");
                    Ok(())
                }
                None => Err(SessionError::UnknownStatement(n.clone())),
            },
            RouterCommand::SetShard { shard, local } => {
                if *local && !in_txn {
                    encode_error(
                        &mut b,
                        b'N',
                        "WARNING",
                        "25P01",
                        "SET LOCAL can only be used in transaction blocks",
                        None,
                        None,
                    );
                } else {
                    self.shard_override = Some((*shard, *local));
                }
                encode_command_complete(&mut b, "SET");
                Ok(())
            }
            RouterCommand::ResetShard => {
                self.shard_override = None;
                encode_command_complete(&mut b, "RESET");
                Ok(())
            }
            RouterCommand::ShowShard => {
                let value = match self.shard_override {
                    Some((s, _)) => s.to_string(),
                    None => "none".to_string(),
                };
                encode_row_description_text(&mut b, &["pgshard.shard"]);
                encode_data_row(&mut b, &[Some(value)]);
                encode_command_complete(&mut b, "SHOW");
                Ok(())
            }
            RouterCommand::SetReadFrom { from } => {
                self.read_from = Some(*from);
                encode_command_complete(&mut b, "SET");
                Ok(())
            }
            RouterCommand::ResetReadFrom => {
                self.read_from = None;
                encode_command_complete(&mut b, "RESET");
                Ok(())
            }
            RouterCommand::ShowReadFrom => {
                encode_row_description_text(&mut b, &["pgshard.read_from"]);
                let value = self.effective_read_from().as_str().to_string();
                encode_data_row(&mut b, &[Some(value)]);
                encode_command_complete(&mut b, "SHOW");
                Ok(())
            }
            RouterCommand::Cursor(c) => self.run_cursor_command(c, results, &mut b),
            RouterCommand::Prepare { .. } | RouterCommand::Execute { .. } => {
                Err(super::refusal::Refusal::router_command(cmd).into())
            }
        };
        self.deliver(answer, b, result.err());
    }

    /// DISCARD ALL outside a transaction block: session settings reset (replayed on the
    /// next backend), every prepared statement and `pgshard.shard` forgotten.
    pub(crate) fn discard_all(&mut self, in_txn: bool) -> (BytesMut, Option<SessionError>) {
        let mut b = BytesMut::new();
        if in_txn {
            return (b, Some(SessionError::DiscardInTransaction));
        }
        self.vars.apply(&pgshard_sql::SessionCommand::DiscardAll);
        self.read_from = None;
        self.stmts.clear();
        self.sql_prepared.clear();
        self.shard_override = None;
        encode_command_complete(&mut b, "DISCARD ALL");
        (b, None)
    }

    /// Executes a portal the router runs itself (see the module doc).
    pub(crate) async fn execute_local(
        &mut self,
        frame: &Frame,
        sql: &str,
        p: &LocalPortal,
    ) -> Result<(), SessionError> {
        let in_txn = self.client_status() != b'I';
        if let LocalKind::AllShards(shards) = &p.kind {
            if in_txn || self.spans_shards() {
                // Inside a transaction block every shard joins it and runs the
                // statement; it commits (two-phase) with the transaction, as with the
                // simple protocol.
                let write = super::FanoutWritePortal {
                    write: pgshard_sql::FanoutWrite {
                        tables: Vec::new(),
                        shards: shards.clone(),
                        sql: sql.to_string(),
                        replicated: true,
                        defaults: Vec::new(),
                        shard_sql: Vec::new(),
                        key_move: None,
                    },
                    param_types: Vec::new(),
                    params: p.params.clone(),
                    results: p.results.clone(),
                    shard_params: Vec::new(),
                };
                let limit = super::txn::RowLimit {
                    portal: String::new(),
                    rows: 0,
                };
                return Box::pin(self.run_fanout_write_extended(frame, &write, false, &limit))
                    .await;
            }
        }
        // Outside a transaction block the statement runs on its own, as a simple Query
        // would run it: what the batch executed before it is settled (committed) first.
        if let Some(a) = self.attached.as_mut() {
            if a.executed && self.txn.implicit_spanning {
                self.fail_extended(SessionError::from(Refusal::LocalAfterSpanningBatch));
                return Ok(());
            }
            a.sync_silent();
            if !a.expects.is_empty() {
                self.deferred = Some(frame.clone());
                return Ok(());
            }
        }
        match &p.kind {
            LocalKind::Router(cmd) => {
                Box::pin(self.run_router_command(cmd, in_txn, Answer::Extended, &p.results)).await
            }
            LocalKind::AllShards(shards) => {
                let (reply, error) = Box::pin(self.run_on_all(sql, shards, true)).await?;
                self.deliver(Answer::Extended, reply, error);
            }
            LocalKind::DiscardAll => {
                let (reply, error) = self.discard_all(in_txn || self.spans_shards());
                self.deliver(Answer::Extended, reply, error);
            }
        }
        Ok(())
    }
}

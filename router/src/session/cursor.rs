//! Cursors over multi-shard queries (SPEC §6), for drivers' server-side cursors
//! (psycopg's named cursors, `DECLARE` in SQL): `DECLARE c CURSOR FOR <fan-out>` runs
//! the fan-out at once, as PostgreSQL's cursor takes its snapshot at DECLARE, and the
//! router keeps the merged rows (bounded by [`MAX_BUFFERED`], in text format); FETCH
//! and MOVE hand them out forward, CLOSE drops them, and the end of the transaction
//! drops those not declared `WITH HOLD`. The rows are kept in the format the DECLARE's
//! Bind asked for when it asked for binary throughout, else in text; a FETCH must ask
//! for the same. One path for both protocols: the DECLARE is a
//! fan-out (captured, [`super::suspend::Capture`]), FETCH/MOVE/CLOSE router commands
//! ([`super::local`]).
//!
//! Refused with 0A000, never guessed: backward motion (`PRIOR`, `BACKWARD`,
//! `ABSOLUTE`…), a FETCH in another format than the rows were kept in, and
//! `DECLARE … BINARY` (the planner's refusal).

use super::error::SessionError;
use super::local::Answer;
use super::suspend::{Capture, MAX_BUFFERED};
use super::{FanoutPortal, Session};
use crate::protocol::backend::encode_command_complete;
use crate::protocol::frame::try_split_frame;
use crate::protocol::Frame;
use bytes::{Bytes, BytesMut};
use pgshard_sql::{CursorCommand, CursorCount, CursorVerb, FanoutPlan, Route, RouterCommand};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};

/// A multi-shard cursor's rows, held by the router.
pub(crate) struct RouterCursor {
    /// The RowDescription, with the rows' format codes.
    pub description: Bytes,
    rows: VecDeque<Bytes>,
    hold: bool,
    /// Binary rows (else text).
    binary: bool,
}

/// True when result format codes ask for binary for every column.
fn all_binary(results: &[i16]) -> bool {
    !results.is_empty() && results.iter().all(|&f| f == 1)
}

/// The frames of an answer captured from a fan-out: its description, rows, and what
/// else goes to the client as it came (notices).
fn split_answer(
    mut buf: BytesMut,
) -> Result<(Option<Bytes>, VecDeque<Bytes>, BytesMut), SessionError> {
    let mut description = None;
    let mut rows = VecDeque::new();
    let mut other = BytesMut::new();
    while let Some(f) = try_split_frame(&mut buf, usize::MAX)? {
        match f.tag() {
            b'T' => description = Some(f.raw().clone()),
            b'D' => rows.push_back(f.raw().clone()),
            b'C' | b'n' => {}
            _ => other.extend_from_slice(f.raw()),
        }
    }
    Ok((description, rows, other))
}

/// True when `b` holds an ErrorResponse.
fn has_error(b: &BytesMut) -> bool {
    let mut buf = b.clone();
    std::iter::from_fn(|| try_split_frame(&mut buf, usize::MAX).ok().flatten())
        .any(|f| f.tag() == b'E')
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// `DECLARE … CURSOR FOR` a multi-shard query (`plan.cursor` is set): runs the
    /// fan-out with its answer captured and keeps the rows; the client gets
    /// `DECLARE CURSOR` (and ReadyForQuery for a simple Query). `ext`: the portal it was
    /// bound as (extended protocol).
    pub(crate) async fn declare_cursor(
        &mut self,
        frame: &Frame,
        plan: &FanoutPlan,
        ext: Option<&FanoutPortal>,
    ) -> Result<(), SessionError> {
        let Some(decl) = plan.cursor.clone() else {
            return Ok(());
        };
        let answer = if ext.is_some() {
            Answer::Extended
        } else {
            Answer::Simple
        };
        let in_txn = self.client_status() != b'I';
        let refusal = if !in_txn && !decl.hold {
            Some(SessionError::Cursor {
                code: "25P01",
                message: "DECLARE CURSOR can only be used in transaction blocks".into(),
            })
        } else if self.cursors.contains_key(&decl.name) {
            Some(SessionError::Cursor {
                code: "42P03",
                message: format!("cursor \"{}\" already exists", decl.name),
            })
        } else {
            None
        };
        if let Some(e) = refusal {
            self.deliver(answer, BytesMut::new(), Some(e));
            return Ok(());
        }
        // Binary throughout, or text (see the module doc).
        let binary = ext.is_some_and(|p| all_binary(&p.results));
        let kept = ext.map(|p| FanoutPortal {
            plan: p.plan.clone(),
            param_types: p.param_types.clone(),
            params: p.params.clone(),
            results: if binary { vec![1] } else { Vec::new() },
            digest: p.digest,
        });
        let before = std::mem::take(&mut self.out);
        self.capture = Some(Capture::new(MAX_BUFFERED));
        let run =
            Box::pin(self.run_fanout(frame, plan, in_txn, kept.as_ref().map(|p| (p, true)))).await;
        let captured = self.capture.take();
        let after = std::mem::replace(&mut self.out, before);
        run?;
        let Some(captured) = captured.filter(|_| self.deferred.is_none() && !has_error(&after))
        else {
            // Put aside (it runs again), or failed: the answer goes out as it came.
            self.out.extend_from_slice(&after);
            return Ok(());
        };
        if captured.overflowed() {
            let e = SessionError::Cursor {
                code: "54000",
                message: format!(
                    "the rows of multi-shard cursor \"{}\" exceed {} MB in the router (fetch them with a plain query, or narrow it)",
                    decl.name,
                    MAX_BUFFERED / (1024 * 1024)
                ),
            };
            self.deliver(answer, BytesMut::new(), Some(e));
            return Ok(());
        }
        let (description, rows, mut b) = split_answer(captured.into_inner())?;
        let cursor = RouterCursor {
            description: description.unwrap_or_default(),
            rows,
            hold: decl.hold,
            binary,
        };
        self.cursors.insert(decl.name, cursor);
        encode_command_complete(&mut b, "DECLARE CURSOR");
        self.deliver(answer, b, None);
        Ok(())
    }

    /// The route of a FETCH, MOVE or CLOSE of one of the router's cursors (a router
    /// command), if `sql` is one; `CLOSE ALL` drops them here and goes on to the shard.
    pub(crate) fn cursor_route(&mut self, sql: &str) -> Option<Route> {
        if self.cursors.is_empty() {
            return None;
        }
        let cmd = pgshard_sql::cursor_command(sql)?;
        match &cmd.name {
            None => {
                self.cursors.clear();
                None
            }
            Some(name) if self.cursors.contains_key(name) => {
                Some(Route::Router(RouterCommand::Cursor(cmd)))
            }
            Some(_) => None,
        }
    }

    /// FETCH, MOVE or CLOSE of a router cursor: the reply (RowDescription, rows and tag
    /// for FETCH) or the error. `results`: the formats the client asked for.
    pub(crate) fn run_cursor_command(
        &mut self,
        cmd: &CursorCommand,
        results: &[i16],
        b: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let name = cmd.name.clone().unwrap_or_default();
        if cmd.verb == CursorVerb::Close {
            self.cursors.remove(&name);
            encode_command_complete(b, "CLOSE CURSOR");
            return Ok(());
        }
        let Some(cursor) = self.cursors.get_mut(&name) else {
            return Err(SessionError::Cursor {
                code: "34000",
                message: format!("cursor \"{name}\" does not exist"),
            });
        };
        let n = match &cmd.count {
            CursorCount::Forward(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            CursorCount::All => usize::MAX,
            CursorCount::Unsupported(direction) => {
                return Err(SessionError::Unsupported(format!(
                "{direction} in a multi-shard cursor (only forward motion: NEXT, FORWARD n, ALL)"
            )))
            }
        };
        let n = n.min(cursor.rows.len());
        if cmd.verb == CursorVerb::Move {
            cursor.rows.drain(..n);
            encode_command_complete(b, &format!("MOVE {n}"));
            return Ok(());
        }
        if all_binary(results) != cursor.binary || (!cursor.binary && results.contains(&1)) {
            return Err(SessionError::Unsupported(format!(
                "FETCH in another result format than DECLARE of multi-shard cursor \"{name}\" asked for ({})",
                if cursor.binary { "binary" } else { "text" }
            )));
        }
        b.extend_from_slice(&cursor.description);
        for row in cursor.rows.drain(..n) {
            b.extend_from_slice(&row);
        }
        encode_command_complete(b, &format!("FETCH {n}"));
        Ok(())
    }

    /// RowDescription (FETCH) or NoData for a Describe of a cursor command.
    pub(crate) fn describe_cursor_command(&self, cmd: &CursorCommand, out: &mut BytesMut) {
        let cursor = cmd.name.as_ref().and_then(|n| self.cursors.get(n));
        match (cmd.verb, cursor) {
            (CursorVerb::Fetch, Some(c)) => out.extend_from_slice(&c.description),
            _ => crate::protocol::backend::encode_empty(out, b'n'),
        }
    }

    /// The transaction ended: its cursors (those not declared WITH HOLD) end with it.
    pub(crate) fn end_transaction_cursors(&mut self) {
        self.cursors.retain(|_, c| c.hold);
    }
}

//! Execute with a row limit on a multi-shard portal (SPEC §6, portal suspension): what
//! JDBC's `setFetchSize` and other cursor-like drivers send. The first Execute runs the
//! fan-out to the end with its answer captured (bounded by [`MAX_BUFFERED`]); the rows
//! are then handed out `max_rows` at a time, each batch but the last ending in
//! PortalSuspended, the last in `SELECT n` (n = that batch's rows), as PostgreSQL does.
//! Every row comes from the one fan-out the first Execute ran, as a suspended portal's
//! rows come from its one snapshot.
//!
//! The portal keeps its rows until it is closed, re-bound or its transaction ends.

use super::error::SessionError;
use super::{FanoutPortal, PortalAt, Session};
use crate::lock;
use crate::protocol::backend::{encode_command_complete, encode_empty};
use crate::protocol::frame::try_split_frame;
use crate::protocol::Frame;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// The most a row-limited multi-shard portal may hold in the router.
pub(crate) const MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// The answer of a fan-out, captured instead of written to the client; past `cap`
/// bytes it keeps nothing more and remembers that it overflowed (the stream still
/// drains, so the shards' connections stay usable).
pub(crate) struct Capture {
    buf: BytesMut,
    cap: usize,
    overflowed: bool,
}

impl Capture {
    pub(crate) fn new(cap: usize) -> Capture {
        Capture {
            buf: BytesMut::new(),
            cap,
            overflowed: false,
        }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn into_inner(self) -> BytesMut {
        self.buf
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > self.cap {
            self.overflowed = true;
            self.buf.clear();
        }
        if !self.overflowed {
            self.buf.extend_from_slice(bytes);
        }
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A multi-shard portal's rows, handed out by row-limited Executes.
pub(crate) struct BufferedRows {
    /// RowDescription (or NoData) for a Describe of the portal.
    pub description: Option<Bytes>,
    rows: VecDeque<Bytes>,
    /// The command tag without its count: `SELECT`, or a write's (`UPDATE`,
    /// `INSERT 0`…) for a multi-shard write's RETURNING rows.
    command: String,
}

pub(crate) type SharedRows = Arc<Mutex<BufferedRows>>;

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// The first Execute with a row limit of a multi-shard portal: runs the fan-out with
    /// its answer captured, keeps the rows on the portal, answers the first batch.
    pub(crate) async fn execute_fanout_limited(
        &mut self,
        frame: &Frame,
        name: &str,
        fp: &Arc<FanoutPortal>,
        max_rows: usize,
    ) -> Result<(), SessionError> {
        if !self.portals.contains_key(name) {
            self.fail_extended(SessionError::UnknownPortal(name.to_string()));
            return Ok(());
        }
        let in_txn = self.client_status() != b'I';
        let failed_before = self.skip_until_sync;
        self.capture = Some(Capture::new(MAX_BUFFERED));
        // Described or not, the rows need their description for later Describes.
        let run = Box::pin(self.run_fanout(frame, &fp.plan, in_txn, Some((fp, true)))).await;
        let captured = self.capture.take();
        run?;
        if self.deferred.is_some() {
            // Put aside until the attached backend answered: run again then.
            return Ok(());
        }
        let Some(captured) = captured else {
            return Ok(());
        };
        let described = self.described_fanout.as_deref() == Some(name);
        if self.skip_until_sync && !failed_before {
            // Failed (a shard's error is in the captured answer, or the router's is
            // queued already): the answer goes out as it came, without the
            // description the client did not ask for.
            let mut buf = captured.buf;
            let mut b = BytesMut::new();
            while let Some(f) = try_split_frame(&mut buf, usize::MAX)? {
                if described || !matches!(f.tag(), b'T' | b'n') {
                    b.extend_from_slice(f.raw());
                }
            }
            self.emit_local(&b);
            return Ok(());
        }
        if captured.overflowed {
            self.fail_extended(SessionError::Unsupported(format!(
                "Execute with a row limit of a multi-shard query whose result exceeds {} MB in the router (fetch all rows at once, or narrow the query)",
                MAX_BUFFERED / (1024 * 1024)
            )));
            return Ok(());
        }
        let mut buf = captured.buf;
        let mut description = None;
        let mut rows = VecDeque::new();
        let mut b = BytesMut::new();
        while let Some(f) = try_split_frame(&mut buf, usize::MAX)? {
            match f.tag() {
                b'T' | b'n' => description = Some(f.raw().clone()),
                b'D' => rows.push_back(f.raw().clone()),
                b'C' => {}
                // Notices and anything else go to the client as they came.
                _ => b.extend_from_slice(f.raw()),
            }
        }
        if described {
            if let Some(d) = &description {
                b.extend_from_slice(d);
            }
        }
        self.emit_local(&b);
        self.buffer_portal(name, description, rows, "SELECT", max_rows);
        Ok(())
    }

    /// Keeps a multi-shard portal's rows on it and answers the first `max_rows` of them
    /// (the description, if the client asked for it, went out already).
    pub(crate) fn buffer_portal(
        &mut self,
        name: &str,
        description: Option<Bytes>,
        rows: VecDeque<Bytes>,
        command: &str,
        max_rows: usize,
    ) {
        let Some(p) = self.portals.get_mut(name) else {
            self.fail_extended(SessionError::UnknownPortal(name.to_string()));
            return;
        };
        let shared = Arc::new(Mutex::new(BufferedRows {
            description,
            rows,
            command: command.to_string(),
        }));
        p.at = PortalAt::Buffered(shared.clone());
        self.emit_batch(&shared, max_rows);
    }

    /// Up to `max_rows` (0: all) of a buffered portal's remaining rows, then
    /// PortalSuspended if rows remain, else the command tag with `n` (PostgreSQL counts
    /// the rows of the last Execute there).
    pub(crate) fn emit_batch(&mut self, rows: &SharedRows, max_rows: usize) {
        let mut b = BytesMut::new();
        let mut g = lock(rows);
        let n = match max_rows {
            0 => g.rows.len(),
            m => m.min(g.rows.len()),
        };
        for row in g.rows.drain(..n) {
            b.extend_from_slice(&row);
        }
        if g.rows.is_empty() {
            encode_command_complete(&mut b, &format!("{} {n}", g.command));
        } else {
            encode_empty(&mut b, b's');
        }
        drop(g);
        self.emit_local(&b);
    }

    /// Describe of a buffered portal.
    pub(crate) fn describe_buffered(&mut self, rows: &SharedRows) {
        let d = lock(rows).description.clone();
        match d {
            Some(d) => self.emit_local(&d),
            None => self.emit_empty(b'n'),
        }
    }
}

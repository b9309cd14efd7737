//! One client session (SPEC §6, §7): startup and authentication, then the protocol state
//! machine that routes each statement to a shard primary and relays the answer.
//!
//! The loop `select!`s over four things, in this priority: frames from the attached
//! backend (relayed byte for byte into the client's output buffer), frames from the
//! client, writing queued bytes to the backend, writing queued bytes to the client (then
//! the router's shutdown). Frames already buffered are handled without a `select!`, and
//! once none is left, output is written at once where it can be (the backend's; the
//! client's when the backend owes nothing more), the `select!` waiting only for what
//! would block. So the client is written to only when the backend has nothing more
//! ready (or the buffer is large), which batches many small messages into one write,
//! and both directions keep moving while a pipeline is in flight (no deadlock on large
//! pipelines).
//!
//! A backend is *attached* from the first message that needs it until the ReadyForQuery
//! that leaves it idle (transaction pooling): a transaction, or a portal before Sync, pins
//! it. Every message sent to the backend pushes an [`Expect`] describing the reply it
//! will produce and whether that reply goes to the client (lazy re-prepares and replays
//! of session state are the router's own and are swallowed). Router-made replies that
//! must be ordered after pending backend replies are queued as [`Expect::Local`].
//!
//! Layers. The wire state machine: [`startup`] (handshake and auth), [`simple`]
//! (Query), [`extended`] (Parse/Bind/Describe/Execute/Close/Sync, portals, Sync and
//! error recovery), [`relay`] (backend replies). The transaction state, one type:
//! [`txn_state`]. Execution, each path written once for both protocols and framed by
//! the protocol that asked ([`local::Answer`]): [`local`] (router functions,
//! statements on every shard), [`fanout`] and [`suspend`] (multi-shard reads),
//! [`cursor`] (cursors over multi-shard reads), [`txn`] (multi-shard writes,
//! transactions spanning shards), [`copy`] (COPY split by shard key or fanned out,
//! which reads the client itself), [`split`] (INSERT column look-up). Also [`vars`]
//! (session state), [`error`] and [`refusal`] (the session's own 0A000 reasons, worded
//! once). One SQL front end: statements are split, planned and classified as session
//! commands by `pgshard_sql` (`statement_texts`, `plan`, `session_command`), with one
//! lexer.

mod attach;
mod collect;
mod copy;
mod ctewrite;
mod cursor;
pub mod error;
mod extended;
mod fanout;
mod frozen;
mod keymove;
mod local;
pub mod refusal;
mod relay;
mod simple;
mod split;
pub mod startup;
mod suspend;
mod txn;
mod txn_state;
pub mod vars;

use crate::backend::{PooledConn, StmtKey};
use crate::protocol::backend::{encode_empty, encode_ready};
use crate::protocol::{Frame, FrameReader, ProtocolError};
use crate::registry::ClientEntry;
use crate::server::RouterCtx;
use bytes::{Buf, Bytes, BytesMut};
use error::SessionError;
use pgshard_catalog::config::PoolMode;
use pgshard_catalog::ShardId;
use pgshard_sql::Plan;
use pgshard_sql::SessionCommand;
use refusal::Refusal;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
pub(crate) use txn_state::{TxnState, VirtualTxn};
use vars::SessionVars;

/// Output buffered beyond this is written before more is read (back-pressure).
const HIGH_WATER: usize = 256 * 1024;

/// How long a session inside a transaction may go on after the router is told to shut
/// down before it is ended with FATAL 57P01 (sessions between transactions end at
/// once). Below the listener's wait for sessions and shardd's SIGKILL grace.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A client's prepared statement (protocol level).
pub struct Stmt {
    pub key: Arc<StmtKey>,
    pub digest: u64,
    /// True for the unnamed statement, which maps to the backend's unnamed statement.
    pub unnamed: bool,
    pub plan: Plan,
    /// The catalog version the plan was made with.
    pub catalog_version: pgshard_catalog::CatalogVersion,
    /// A SET/RESET the statement performs, recorded when it completes.
    pub command: SessionCommand,
}

impl Stmt {
    /// The unnamed statement, planned under this catalog, as a Parse of `sql` with
    /// `param_types` would plan it again: its plan may be reused.
    pub(crate) fn same_unnamed(
        &self,
        sql: &str,
        param_types: &[u32],
        catalog: &pgshard_catalog::Catalog,
    ) -> bool {
        self.unnamed
            && self.catalog_version == catalog.version
            && self.key.sql == sql
            && self.key.param_types == param_types
            && !self.plan.column_order
    }
}

/// A SQL-level prepared statement (`PREPARE name AS …`).
pub struct SqlPrepared {
    /// The full PREPARE statement, replayed on backends that lack it.
    pub text: String,
    pub digest: u64,
    pub plan: Plan,
    /// The catalog version `plan` was made with (`None`: unknown, plan again).
    pub catalog_version: Option<pgshard_catalog::CatalogVersion>,
}

impl SqlPrepared {
    /// The statement's plan under `catalog`: planned again from its text when the
    /// catalog changed since (a constant key's bucket may have moved, SPEC §9).
    pub fn plan_for(&self, catalog: &pgshard_catalog::Catalog) -> std::borrow::Cow<'_, Plan> {
        if self.catalog_version == Some(catalog.version) {
            return std::borrow::Cow::Borrowed(&self.plan);
        }
        match pgshard_sql::plan(&self.text, catalog).route {
            pgshard_sql::Route::Router(pgshard_sql::RouterCommand::Prepare { plan, .. }) => {
                std::borrow::Cow::Owned(*plan)
            }
            _ => std::borrow::Cow::Borrowed(&self.plan),
        }
    }
}

/// A bound portal.
#[derive(Clone)]
pub(crate) struct Portal {
    pub(crate) stmt: Arc<Stmt>,
    pub(crate) at: PortalAt,
    /// The batch it was bound in (the client's Syncs seen before its Bind): a batch's
    /// end ends only its own portals, not those of batches pipelined after it.
    pub(crate) batch: u64,
}

/// Where a bound portal lives.
#[derive(Clone)]
pub(crate) enum PortalAt {
    /// On the backend of this shard (attached or parked).
    Shard(ShardId),
    /// Nowhere: a BEGIN the router answers itself (nothing attached).
    Begin,
    /// Nowhere yet: a multi-shard read the router runs at Execute.
    Fanout(Arc<FanoutPortal>),
    /// Nowhere yet: a COPY the router runs at Execute (see [`copy`]).
    Copy,
    /// Nowhere yet: a multi-shard write the router runs at Execute (see [`txn`]).
    FanoutWrite(Arc<FanoutWritePortal>),
    /// A multi-shard read run by a row-limited Execute: its remaining rows, handed out
    /// by the next Executes (see [`suspend`]).
    Buffered(suspend::SharedRows),
    /// Nowhere: a statement the router runs itself at Execute (see [`local`]).
    Local(Arc<local::LocalPortal>),
}

/// A bound multi-shard write (extended protocol): UPDATE/DELETE without the shard key,
/// a write to reference tables.
pub(crate) struct FanoutWritePortal {
    pub write: pgshard_sql::FanoutWrite,
    pub param_types: Vec<u32>,
    /// The client's Bind from its parameter formats to its last value, sent as is.
    pub params: Bytes,
    /// The client's result format codes (for RETURNING rows).
    pub results: Vec<i16>,
    /// For a statement split by the router (`write.shard_sql`), each shard's part of
    /// the parameters and their types (its text numbers them from `$1`); empty when
    /// every shard takes `params`.
    pub shard_params: Vec<(Bytes, Vec<u32>)>,
}

impl FanoutWritePortal {
    /// The parameters and their types for the `i`-th target shard.
    pub(crate) fn params_for(&self, i: usize) -> (&[u8], &[u32]) {
        match self.shard_params.get(i) {
            Some((p, t)) => (p, t),
            None => (&self.params, &self.param_types),
        }
    }
}

/// A bound multi-shard read (extended protocol).
pub(crate) struct FanoutPortal {
    pub plan: pgshard_sql::FanoutPlan,
    pub param_types: Vec<u32>,
    /// The client's Bind from its parameter formats to its last value, sent as is.
    pub params: Bytes,
    /// The client's result format codes.
    pub results: Vec<i16>,
    /// The client statement's digest (caches its column count).
    pub digest: u64,
}

/// A reply the attached backend owes, in order.
pub(crate) enum Expect {
    /// ParseComplete; `digest` names the router statement to forget if it fails.
    Parse {
        forward: bool,
        digest: Option<u64>,
    },
    /// A Parse that fails on purpose to abort the backend's transaction; its error is
    /// swallowed.
    Poison,
    Bind,
    Describe,
    Execute {
        command: Option<SessionCommand>,
    },
    Close {
        forward: bool,
    },
    Sync {
        forward: bool,
    },
    /// A simple Query up to its ReadyForQuery. `statements` holds each statement's
    /// session command, consumed one per CommandComplete; `prepare` names a SQL-level
    /// statement recorded optimistically, forgotten if the Query fails.
    Query {
        forward: bool,
        swallow_errors: bool,
        statements: VecDeque<SessionCommand>,
        prepare: Option<String>,
        failed: bool,
    },
    /// Bytes made by the router, sent when they reach the front.
    Local(Bytes),
    /// A reply to a message of the router's own with this tag, not forwarded.
    Swallow(u8),
}

pub(crate) struct Attached {
    pub conn: PooledConn,
    pub shard: ShardId,
    pub expects: VecDeque<Expect>,
    /// An Execute or Query ran since the last ReadyForQuery (an implicit transaction
    /// is open on this backend).
    pub executed: bool,
    /// An error was reported since the last ReadyForQuery.
    pub failed_since_sync: bool,
    /// A statement that may have written ran on it in the current transaction (decides
    /// who PREPAREs at a multi-shard COMMIT): when, in [`write_order`]'s order, the
    /// first one did (the one that wrote last becomes the commit point).
    pub wrote: Option<u64>,
    /// Set when the node was chosen for a read ([`crate::reads`]): counts the read in
    /// flight, and says whether it is a replica.
    pub lease: Option<crate::reads::ReadLease>,
}

/// A number larger than every earlier one: orders the participants' first writes.
fn write_order() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Attached {
    /// Records that a statement that may have written (`may_write`) was sent.
    pub(crate) fn note_write(&mut self, may_write: bool) {
        if may_write && self.wrote.is_none() {
            self.wrote = Some(write_order());
        }
    }

    /// Ends an unsynced extended-protocol batch with a Sync of the router's own (its
    /// ReadyForQuery is not forwarded), so the backend answers everything it owes.
    pub(crate) fn sync_silent(&mut self) {
        if self.conn.unsynced {
            crate::protocol::frontend::encode_sync(&mut self.conn.out);
            self.expects.push_back(Expect::Sync { forward: false });
            self.conn.pending_syncs += 1;
            self.conn.unsynced = false;
        }
    }

    /// Runs a statement of the router's own on this backend through the extended
    /// protocol (the unnamed statement and portal), inside whatever batch is open; its
    /// replies are not forwarded (an error is, and fails the batch).
    pub(crate) fn run_silent_extended(&mut self, sql: &str) {
        let out = &mut self.conn.out;
        crate::protocol::frontend::encode_parse(out, "", sql, &[]);
        crate::protocol::frontend::encode_bind_with_results(out, "", "", &[0, 0, 0, 0], &[]);
        crate::protocol::frontend::encode_execute(out, "");
        self.conn.unnamed = None;
        self.conn.unsynced = true;
        self.expects.push_back(Expect::Swallow(b'1'));
        self.expects.push_back(Expect::Swallow(b'2'));
        self.expects.push_back(Expect::Swallow(b'C'));
    }

    /// Sends a Query of the router's own on this backend; its reply is not forwarded
    /// to the client (errors too, when `swallow_errors`).
    pub(crate) fn send_silent(&mut self, sql: &str, swallow_errors: bool) {
        crate::protocol::frontend::encode_query(&mut self.conn.out, sql);
        self.conn.unnamed = None;
        self.conn.pending_syncs += 1;
        self.expects.push_back(Expect::Query {
            forward: false,
            swallow_errors,
            statements: VecDeque::new(),
            prepare: None,
            failed: false,
        });
    }
}

pub struct Session<R, W> {
    pub(crate) ctx: Arc<RouterCtx>,
    pub(crate) entry: Arc<ClientEntry>,
    pub(crate) user: String,
    pub(crate) database: String,
    pub(crate) client: FrameReader<R>,
    pub(crate) writer: W,
    /// Bytes for the client.
    pub(crate) out: BytesMut,
    pub(crate) vars: SessionVars,
    pub(crate) stmts: FxHashMap<String, Arc<Stmt>>,
    /// Bound portals.
    pub(crate) portals: FxHashMap<String, Portal>,
    /// The client's Syncs the router has read, and those answered (ReadyForQuery).
    pub(crate) syncs_seen: u64,
    pub(crate) syncs_answered: u64,
    /// A multi-shard portal described (Describe P) and not yet executed: its
    /// RowDescription goes out with the Execute.
    pub(crate) described_fanout: Option<String>,
    /// Set while a fan-out's answer is captured for a row-limited Execute.
    pub(crate) capture: Option<suspend::Capture>,
    /// The finishing statement of a collected read answered with an error (relayed).
    pub(crate) collect_answer_failed: bool,
    /// Column counts of multi-shard statements' shard queries, by statement digest.
    pub(crate) fanout_columns: FxHashMap<u64, usize>,
    pub(crate) sql_prepared: FxHashMap<String, Arc<SqlPrepared>>,
    pub(crate) attached: Option<Attached>,
    /// The client's transaction: participants, savepoints, virtual and implicit blocks.
    pub(crate) txn: TxnState,
    /// A client message waiting until the attached backend has answered everything.
    pub(crate) deferred: Option<Frame>,
    /// Set while a Query string's multi-shard reads run one by one (see
    /// `run_reads_one_by_one`): a fan-out that answers without error leaves out its
    /// ReadyForQuery and sets this to `Some(true)`.
    pub(crate) ready_held: Option<bool>,
    pub(crate) skip_until_sync: bool,
    /// The statement whose ParseComplete rides on its (deferred) prepare.
    pub(crate) parse_ack: Option<String>,
    /// The expectations queue of the last backend released, empty, for the next one
    /// attached (one allocation per session instead of two per transaction).
    pub(crate) spare_expects: VecDeque<Expect>,
    /// `SET pgshard.shard = N` (SPEC §5 escape hatch): every statement goes to shard N;
    /// `true` when set with SET LOCAL (cleared at the end of the transaction).
    pub(crate) shard_override: Option<(ShardId, bool)>,
    /// `SET pgshard.read_from` (SPEC §8); `None`: `router.read_from`.
    pub(crate) read_from: Option<pgshard_catalog::config::ReadFrom>,
    /// Read-your-writes (see [`crate::reads`]): a statement that is not a replica
    /// read was planned since the last read checkout (`pending_write`), and when the
    /// session's last such statement was known to be over (`last_write`). A read
    /// checks out a fresh backend only once everything before it has been answered,
    /// so the instant of that checkout is after the write's commit.
    pub(crate) pending_write: bool,
    pub(crate) last_write: Option<std::time::Instant>,
    /// Declared tables a `DROP TABLE` of this session named, to forget once its
    /// transaction has ended if they are gone ([`crate::forget`]).
    pub(crate) dropped: Vec<String>,
    /// Multi-shard cursors the router holds, by name ([`cursor`]).
    pub(crate) cursors: FxHashMap<String, cursor::RouterCursor>,
    pub(crate) closing: bool,
    /// When the request now being served (a Query, or a batch up to Sync) started;
    /// observed into the latency histogram when its ReadyForQuery is written.
    request_start: Option<std::time::Instant>,
    shutdown: CancellationToken,
    /// Set when the router shuts down while this session is inside a transaction:
    /// the transaction may finish until then, and the session ends at the first point
    /// between transactions or at the deadline, whichever comes first.
    shutdown_deadline: Option<tokio::time::Instant>,
}

enum Event {
    Shutdown,
    /// The shutdown grace of a session in a transaction is over.
    GraceOver,
    /// A message from the attached backend.
    Backend(Frame),
    /// The attached backend closed the connection (`None`) or broke the protocol.
    BackendGone(Option<ProtocolError>),
    /// A message from the client.
    Client(Frame),
    /// The client's side ended: it closed the connection (`None`) or sent what is not
    /// the protocol.
    ClientGone(Option<ProtocolError>),
    BackendWrote(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
}

impl Event {
    fn from_client(read: Result<Option<Frame>, ProtocolError>) -> Event {
        match read {
            Ok(Some(frame)) => Event::Client(frame),
            Ok(None) => Event::ClientGone(None),
            Err(e) => Event::ClientGone(Some(e)),
        }
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Arc<RouterCtx>,
        entry: Arc<ClientEntry>,
        user: String,
        database: String,
        vars: SessionVars,
        client: FrameReader<R>,
        writer: W,
        out: BytesMut,
        shutdown: CancellationToken,
    ) -> Self {
        // `options=-c pgshard.read_from=…` at startup, like a GUC (PGOPTIONS).
        let read_from = vars
            .startup_value("pgshard.read_from")
            .and_then(|v| pgshard_catalog::config::ReadFrom::parse(&v));
        Session {
            ctx,
            entry,
            user,
            database,
            client,
            writer,
            out,
            vars,
            stmts: FxHashMap::default(),
            portals: FxHashMap::default(),
            syncs_seen: 0,
            syncs_answered: 0,
            described_fanout: None,
            capture: None,
            collect_answer_failed: false,
            fanout_columns: FxHashMap::default(),
            sql_prepared: FxHashMap::default(),
            attached: None,
            txn: TxnState::default(),
            deferred: None,
            ready_held: None,
            skip_until_sync: false,
            parse_ack: None,
            spare_expects: VecDeque::new(),
            shard_override: None,
            read_from,
            pending_write: false,
            last_write: None,
            dropped: Vec::new(),
            cursors: FxHashMap::default(),
            closing: false,
            request_start: None,
            shutdown,
            shutdown_deadline: None,
        }
    }

    /// Serves the client until it leaves, the connection fails or the router shuts down.
    pub async fn run(mut self) {
        let result = self.serve().await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "session ended with an error");
            if e.is_fatal() || matches!(e, SessionError::Protocol(_)) {
                e.encode(&mut self.out);
            }
        }
        if !self.out.is_empty() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                self.writer.write_all(&self.out),
            )
            .await;
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            self.writer.shutdown(),
        )
        .await;
        self.detach_backend().await;
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        // Made once: re-creating it each turn costs a Notify registration per message.
        let shutdown = self.shutdown.clone().cancelled_owned();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            if self.closing && self.out.is_empty() {
                return Ok(());
            }
            if self.shutdown_deadline.is_some() && !self.closing && self.between_transactions() {
                self.terminate_for_shutdown();
                continue;
            }
            if !self.cursors.is_empty() && self.between_transactions() {
                self.end_transaction_cursors();
            }
            if !self.dropped.is_empty()
                && self.between_transactions()
                && self.attached.as_ref().is_none_or(|a| !a.conn.unsynced)
            {
                let names = std::mem::take(&mut self.dropped);
                Box::pin(crate::forget::forget_dropped(
                    &self.ctx,
                    names,
                    &self.user,
                    &self.database,
                ))
                .await;
                continue;
            }
            if self.deferred.is_some()
                && self.attached.as_ref().is_none_or(|a| a.expects.is_empty())
            {
                if let Some(f) = self.deferred.take() {
                    self.on_client_frame(f).await?;
                }
                continue;
            }
            let out_full = self.out.len() >= HIGH_WATER;
            let want_client = !self.closing && self.deferred.is_none() && !out_full;
            let has_backend = self.attached.is_some();
            // Frames already buffered are handled without a trip through `select!`
            // (a pipeline of five messages, a reply of six), in the same priority.
            let event = if let Some(event) = self.buffered_frame(want_client, out_full) {
                event
            } else if let Some(event) = self.write_now() {
                event
            } else {
                let (b_read, b_write) = match self.attached.as_mut() {
                    Some(a) => {
                        let c: &mut crate::backend::BackendConn = &mut a.conn;
                        let bout_full = c.out.len() >= HIGH_WATER;
                        (
                            Some(&mut c.reader),
                            Some((&mut c.writer, &c.out, bout_full)),
                        )
                    }
                    None => (None, None),
                };
                let want_client = want_client && !b_write.as_ref().is_some_and(|w| w.2);
                let b_has_out = b_write.as_ref().is_some_and(|w| !w.1.is_empty());
                let client = &mut self.client;
                let writer = &mut self.writer;
                let out = &self.out;
                let closing = self.closing;
                let deadline = self.shutdown_deadline;
                tokio::select! {
                    biased;
                    // Only armed once the router is shutting down.
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    }, if !closing && deadline.is_some() => Event::GraceOver,
                    r = async {
                        match b_read {
                            Some(r) => r.read_frame().await,
                            None => std::future::pending().await,
                        }
                    }, if has_backend && !out_full && !closing => match r {
                        Ok(Some(f)) => Event::Backend(f),
                        Ok(None) => Event::BackendGone(None),
                        Err(e) => Event::BackendGone(Some(e)),
                    },
                    r = client.read_frame(), if want_client => Event::from_client(r),
                    r = async {
                        match b_write {
                            Some((w, o, _)) => w.write(&o[..]).await,
                            None => std::future::pending().await,
                        }
                    }, if b_has_out && !closing => Event::BackendWrote(r),
                    r = writer.write(&out[..]), if !out.is_empty() => Event::ClientWrote(r),
                    // Last: polled only when nothing else is ready (it acts between
                    // transactions anyway), which keeps it off the per-message path.
                    _ = &mut shutdown, if !closing && deadline.is_none() => Event::Shutdown,
                }
            };
            // Only a client's message may wait (for a backend, a fan-out…): the rest is
            // handled without an async call's state, 11 events per prepared statement
            // (issue 16).
            match event {
                Event::Client(frame) => self.on_client_message(frame).await?,
                event => {
                    if self.on_event(event)? {
                        return Ok(());
                    }
                }
            }
            if self.txn.roll_back_parked {
                self.roll_back_parked().await;
            }
        }
    }

    /// A message from the client, its request's start noted.
    async fn on_client_message(&mut self, frame: Frame) -> Result<(), SessionError> {
        if self.request_start.is_none() {
            let now = std::time::Instant::now();
            self.request_start = Some(now);
            self.entry.set_busy(Some(now));
        }
        self.on_client_frame(frame).await
    }

    /// Output written as soon as nothing buffered is left to handle, instead of on the
    /// next turn through `select!` (which first polls every idle socket again and
    /// registers with each): the backend's as soon as the client's buffered messages
    /// are queued, the client's once the backend owes nothing more (or the buffer is
    /// full). Most such writes succeed at once; one that would block is left to the
    /// `select!`, which polls it again and waits. About a third of the socket polls of
    /// a `pgbench -S` transaction (issue 16).
    fn write_now(&mut self) -> Option<Event> {
        use std::pin::Pin;
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        if let Some(a) = self.attached.as_mut() {
            let c: &mut crate::backend::BackendConn = &mut a.conn;
            if !self.closing && !c.out.is_empty() {
                if let Poll::Ready(r) = Pin::new(&mut c.writer).poll_write(&mut cx, &c.out) {
                    return Some(Event::BackendWrote(r));
                }
            }
        }
        let backend_done = self.attached.as_ref().is_none_or(|a| a.expects.is_empty());
        if !self.out.is_empty() && (backend_done || self.out.len() >= HIGH_WATER) {
            if let Poll::Ready(r) = Pin::new(&mut self.writer).poll_write(&mut cx, &self.out) {
                return Some(Event::ClientWrote(r));
            }
        }
        None
    }

    /// A complete frame already buffered from the backend (first) or the client, when
    /// the loop would read that side now.
    fn buffered_frame(&mut self, want_client: bool, out_full: bool) -> Option<Event> {
        if self.closing {
            return None;
        }
        if let Some(a) = self.attached.as_mut() {
            if !out_full {
                match a.conn.reader.try_frame() {
                    Ok(Some(f)) => return Some(Event::Backend(f)),
                    Ok(None) => {}
                    Err(e) => return Some(Event::BackendGone(Some(e))),
                }
            }
            if a.conn.out.len() >= HIGH_WATER {
                return None;
            }
        }
        if !want_client {
            return None;
        }
        match self.client.try_frame() {
            Ok(Some(f)) => Some(Event::Client(f)),
            Ok(None) => None,
            Err(e) => Some(Event::from_client(Err(e))),
        }
    }

    /// Handles one event of the loop but a client's message (`on_client_message`);
    /// `true` ends the session (the client left).
    fn on_event(&mut self, event: Event) -> Result<bool, SessionError> {
        match event {
            Event::Shutdown => {
                if self.between_transactions() {
                    self.terminate_for_shutdown();
                } else {
                    // Like PostgreSQL's smart shutdown, for a bounded time: the
                    // transaction may commit or roll back, then the session ends.
                    tracing::info!(grace = ?SHUTDOWN_GRACE, "shutting down: waiting for the transaction to end");
                    self.shutdown_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
            }
            Event::GraceOver => {
                // Like fast shutdown: the open transaction is rolled back (the
                // backend is cancelled and closed, never pooled dirty).
                tracing::info!("shutting down: transaction still open after the grace period; terminating the session");
                self.terminate_for_shutdown();
            }
            Event::Backend(frame) => self.on_backend_frame(frame)?,
            Event::BackendGone(e) => {
                use crate::backend::BackendError;
                let addr = String::new();
                let e = match e {
                    None => BackendError::Closed { addr },
                    Some(source) => BackendError::Protocol { addr, source },
                };
                let lost = self.lose_backend();
                tracing::warn!(error = %e, "{lost}");
                return Err(lost);
            }
            // Not sent here: a message may wait (for a backend, a fan-out…), so the loop
            // hands it to `on_client_message`. Kept for the next turn if it were.
            Event::Client(frame) => self.deferred = Some(frame),
            Event::ClientGone(None | Some(ProtocolError::Io(_))) => return Ok(true),
            Event::ClientGone(Some(e)) => return Err(SessionError::Protocol(e)),
            Event::BackendWrote(Ok(n)) if n > 0 => {
                if let Some(a) = self.attached.as_mut() {
                    a.conn.out.advance(n);
                }
            }
            Event::BackendWrote(_) => return Err(self.lose_backend()),
            Event::ClientWrote(Ok(n)) if n > 0 => {
                // All written and it ends with ReadyForQuery: the request is answered.
                if n == self.out.len() && ends_with_ready(&self.out) {
                    if let Some(start) = self.request_start.take() {
                        self.ctx.stats.latency.observe(start.elapsed());
                        self.entry.set_busy(None);
                    }
                }
                self.out.advance(n)
            }
            Event::ClientWrote(_) => return Ok(true),
        }
        Ok(false)
    }

    /// The attached backend failed (read or write): never pooled again; the session's
    /// error names its shard.
    fn lose_backend(&mut self) -> SessionError {
        let shard = match self.attached.as_mut() {
            Some(a) => {
                a.conn.broken = true;
                a.shard
            }
            None => ShardId(0),
        };
        if self.txn.commit_in_flight {
            return SessionError::CommitUnknown { shard };
        }
        SessionError::LostBackend { shard }
    }

    /// True when no transaction is open and nothing is outstanding: the session can end
    /// without losing anything the client started.
    /// A DDL statement is about to run: statements prepared from now on are parsed
    /// afresh (see `ddl_epoch`), and the declared tables it drops are noted.
    pub(crate) fn note_ddl(&mut self, sql: &str) {
        self.ctx
            .ddl_epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let catalog = self.ctx.catalog.current();
        for t in pgshard_sql::dropped_tables(sql, &catalog) {
            if !self.dropped.contains(&t) {
                self.dropped.push(t);
            }
        }
    }

    fn between_transactions(&self) -> bool {
        self.txn.parked.is_empty()
            && self.txn.virtual_txn.is_none()
            && self.deferred.is_none()
            && self
                .attached
                .as_ref()
                .is_none_or(|a| a.expects.is_empty() && a.conn.status == b'I')
    }

    /// FATAL 57P01, as PostgreSQL sends when shut down. `out` holds whole messages only,
    /// so it can follow a partial answer; from here the loop reads neither the client
    /// nor the backend, flushes `out` and ends the session, and the backend (if still
    /// busy) is cancelled and closed, never pooled.
    fn terminate_for_shutdown(&mut self) {
        crate::protocol::backend::encode_shutdown_fatal(&mut self.out);
        self.closing = true;
    }

    /// Returns or discards the attached backend at the end of the session; a backend
    /// still running something is cancelled first, and never pooled dirty.
    async fn detach_backend(&mut self) {
        // Parked participants are idle inside their transaction: closing them rolls it
        // back (the pool discards a connection that is not clean).
        self.txn.parked.clear();
        let Some(a) = self.attached.take() else {
            return;
        };
        self.entry.set_activity("idle", None, None);
        if a.conn.is_clean() {
            drop(a);
            return;
        }
        let busy = a.conn.pending_syncs > 0 || a.conn.unsynced;
        let target = a.conn.cancel_target();
        if let Some(conn) = a.conn.detach() {
            if busy {
                let _ = target.cancel().await;
            }
            conn.terminate().await;
        }
    }

    /// Queues router-made bytes for the client after whatever the backend still owes.
    pub(crate) fn emit_local(&mut self, bytes: &[u8]) {
        match self.attached.as_mut() {
            Some(a) if !a.expects.is_empty() => a
                .expects
                .push_back(Expect::Local(Bytes::copy_from_slice(bytes))),
            _ => self.out.extend_from_slice(bytes),
        }
    }

    pub(crate) fn emit_ready(&mut self, status: u8) {
        let mut b = BytesMut::with_capacity(6);
        encode_ready(&mut b, status);
        self.emit_local(&b);
    }

    pub(crate) fn emit_empty(&mut self, tag: u8) {
        let mut b = BytesMut::with_capacity(5);
        encode_empty(&mut b, tag);
        self.emit_local(&b);
    }

    pub(crate) fn emit_error(&mut self, e: &SessionError) {
        if matches!(e, SessionError::Unsupported(_) | SessionError::Refused(_)) {
            crate::stats::bump(&self.ctx.stats.unsupported);
        }
        let mut b = BytesMut::new();
        e.encode(&mut b);
        self.emit_local(&b);
    }

    /// The transaction status to report when the router answers by itself.
    pub(crate) fn client_status(&self) -> u8 {
        if let Some(vt) = &self.txn.virtual_txn {
            return if vt.failed { b'E' } else { b'T' };
        }
        match &self.attached {
            // A transaction spanning shards failed if any participant failed.
            Some(_) if self.any_participant_failed() => b'E',
            Some(a) => a.conn.status,
            None => b'I',
        }
    }

    /// Dispatches one client message.
    async fn on_client_frame(&mut self, frame: Frame) -> Result<(), SessionError> {
        use crate::protocol::frontend::FrontendMessage as M;
        let msg = M::decode(&frame)?;
        tracing::trace!(tag = %(frame.tag() as char), len = frame.len(), "client message");
        if self.skip_until_sync && !matches!(msg, M::Sync | M::Terminate) {
            return Ok(());
        }
        match msg {
            M::Query { sql } => self.on_query(&frame, sql).await,
            M::Parse {
                name,
                sql,
                param_types,
            } => self.on_parse(&frame, name, sql, param_types).await,
            M::Bind(bind) => match self.stmts.get(bind.statement).cloned() {
                Some(stmt) if self.is_copy_statement(&stmt) => {
                    self.pending_write = true;
                    self.bind_copy(&frame, &bind, stmt)
                }
                stmt => self.on_bind(&frame, &bind, stmt).await,
            },
            M::Describe { kind, name } => self.on_describe(&frame, kind, name).await,
            M::Execute { portal, max_rows } => {
                let found = self.portals.get(portal).cloned();
                match found.as_ref().and_then(|p| self.copy_portal(p)) {
                    Some(plan) => Box::pin(self.execute_copy(&frame, &plan)).await,
                    None => self.on_execute(&frame, portal, found, max_rows).await,
                }
            }
            M::Close { kind, name } => {
                self.on_close(&frame, kind, name);
                Ok(())
            }
            M::Sync if self.txn.implicit_spanning => Box::pin(self.end_implicit_spanning()).await,
            M::Sync => {
                self.on_sync(&frame);
                Ok(())
            }
            M::Flush | M::CopyData | M::CopyDone | M::CopyFail => {
                // Copy messages outside COPY are ignored, as PostgreSQL does.
                if let Some(a) = self.attached.as_mut() {
                    a.conn.out.extend_from_slice(frame.raw());
                }
                Ok(())
            }
            M::Terminate => {
                self.closing = true;
                Ok(())
            }
            M::FunctionCall => {
                self.emit_error(&SessionError::from(Refusal::FunctionCall));
                let s = self.client_status();
                self.emit_ready(s);
                Ok(())
            }
            M::Password(_) => Err(SessionError::Protocol(ProtocolError::malformed(
                "frontend",
                "unexpected password message",
            ))),
        }
    }

    /// Updates what `SHOW CLIENTS`, CancelRequest and the distributed deadlock
    /// detector see (the backends of an open transaction, see [`crate::deadlock`]).
    pub(crate) fn publish_activity(&self) {
        match &self.attached {
            Some(a) => {
                let state = if a.conn.status == b'I' {
                    "active"
                } else {
                    "idle in transaction"
                };
                let in_txn = a.conn.status != b'I' || !self.txn.parked.is_empty();
                let holds = self.attached.iter().chain(self.txn.parked.iter());
                self.entry.set_activity_holds(
                    state,
                    Some(a.shard),
                    Some(a.conn.cancel_target()),
                    holds.filter(|_| in_txn).map(|p| hold(p.shard, &p.conn)),
                );
            }
            None => self.entry.set_activity("idle", None, None),
        }
    }

    /// Gives the attached backend back once it is idle (transaction pooling).
    /// Forgets the portals that lived on the attached backend (it ended them or is
    /// going); those the router holds itself live until the client's Sync.
    /// Records a portal bound in the current batch.
    pub(crate) fn add_portal(&mut self, name: &str, stmt: Arc<Stmt>, at: PortalAt) {
        let batch = self.syncs_seen;
        self.portals
            .insert(name.to_string(), Portal { stmt, at, batch });
    }

    /// The implicit transactions of the answered batches ended, and their portals with
    /// them; portals of batches the client pipelined after them stay.
    pub(crate) fn end_answered_portals(&mut self) {
        let done = self.syncs_answered;
        self.portals.retain(|_, p| p.batch >= done);
    }

    pub(crate) fn drop_backend_portals(&mut self) {
        self.portals
            .retain(|_, p| !matches!(p.at, PortalAt::Shard(_)));
    }

    pub(crate) fn maybe_release(&mut self) {
        let release = match &self.attached {
            Some(a) => {
                a.expects.is_empty()
                    && a.conn.is_clean()
                    && self.ctx.config.pool_mode == PoolMode::Transaction
                    && self.txn.virtual_txn.is_none()
            }
            None => false,
        };
        if release {
            // Unpublished before the backend goes back to its pool (the deadlock
            // detector must not mark a backend another session may take next).
            self.entry.set_activity("idle", None, None);
            if let Some(mut a) = self.attached.take() {
                self.spare_expects = std::mem::take(&mut a.expects);
            }
            self.drop_backend_portals();
        }
    }
}

/// A backend a transaction holds, as the deadlock detector sees it.
pub(crate) fn hold(shard: ShardId, conn: &crate::backend::BackendConn) -> crate::registry::Hold {
    crate::registry::Hold {
        shard,
        target: conn.cancel_target(),
        mark: conn.deadlock.clone(),
    }
}

/// True if `out` ends with a whole ReadyForQuery message (`Z`, length 5, status).
fn ends_with_ready(out: &[u8]) -> bool {
    matches!(out, [.., b'Z', 0, 0, 0, 5, b'I' | b'T' | b'E'])
}

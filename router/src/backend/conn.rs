//! One connection to a PostgreSQL server, speaking the client side of the protocol.
//!
//! After [`BackendConn::connect`] the connection is idle (`ReadyForQuery 'I'`). The
//! session drives it through its raw reader and writer; the bookkeeping here lets the pool
//! decide whether a returned connection is clean: no reply outstanding, nothing sent since
//! the last Sync, idle transaction status, no unread bytes.

use super::stream::{BackendRead, BackendWrite};
use crate::protocol::backend::{
    decode_backend_key, decode_command_tag, decode_data_row_text, decode_parameter_status,
    decode_ready_status, error_summary, Authentication,
};
use crate::protocol::frontend::{
    encode_password, encode_query, encode_sasl_initial, encode_terminate,
};
use crate::protocol::startup::{encode_cancel, encode_startup};
use crate::protocol::{Frame, FrameReader, ProtocolError};
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Backend messages can be large (wide rows); the limit only guards against garbage.
const BACKEND_MAX_MESSAGE: usize = 1 << 30;

/// A failure talking to a shard.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("protocol error from {addr}: {source}")]
    Protocol { addr: String, source: ProtocolError },
    #[error("{addr} closed the connection")]
    Closed { addr: String },
    #[error("authentication to {addr} failed: {message}")]
    Auth { addr: String, message: String },
    /// The server answered with an ErrorResponse; the frame is kept to forward as is.
    #[error("{addr} reported {code}: {message}")]
    Server {
        addr: String,
        code: String,
        message: String,
        frame: Frame,
    },
    #[error("timed out waiting for a connection to {0}")]
    PoolTimeout(String),
}

/// What a statement prepared under a router name stands for: equal keys may share one
/// server-side statement.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StmtKey {
    pub sql: String,
    pub param_types: Vec<u32>,
}

impl StmtKey {
    /// A stable 64-bit digest (FNV-1a), used for the router's statement names.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for b in self.sql.bytes() {
            eat(b);
        }
        eat(0);
        for t in &self.param_types {
            for b in t.to_be_bytes() {
                eat(b);
            }
        }
        h
    }
}

/// Where and how to cancel what a backend is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Shared with the connection (published on every transaction, so not copied).
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

impl CancelTarget {
    /// Sends a CancelRequest on a fresh connection (best effort, bounded in time).
    pub async fn cancel(&self) -> std::io::Result<()> {
        let fut = async {
            let mut s = TcpStream::connect(&*self.addr).await?;
            let mut buf = BytesMut::new();
            encode_cancel(&mut buf, self.pid, self.secret);
            s.write_all(&buf).await?;
            s.shutdown().await
        };
        match tokio::time::timeout(Duration::from_secs(5), fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "cancel timed out",
            )),
        }
    }
}

/// Per-connection cap on statements prepared under router names; past it the least
/// recently used is closed.
pub const MAX_PREPARED_PER_BACKEND: usize = 512;

/// An open, authenticated connection to one PostgreSQL server.
pub struct BackendConn {
    pub reader: FrameReader<BackendRead>,
    pub writer: BackendWrite,
    /// Bytes queued for the server, written by the session loop.
    pub out: BytesMut,
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values as last reported.
    pub params: Vec<(String, String)>,
    /// The last ReadyForQuery status.
    pub status: u8,
    /// Sync or Query messages sent and not yet answered by ReadyForQuery.
    pub pending_syncs: usize,
    /// Extended-protocol messages sent since the last Sync.
    pub unsynced: bool,
    /// Set on any I/O or protocol failure: never reuse.
    pub broken: bool,
    /// Named statements prepared under router names: digest → (key, last use tick).
    pub prepared: FxHashMap<u64, (Arc<StmtKey>, u64)>,
    pub tick: u64,
    /// The client statement currently in the server's unnamed statement slot.
    pub unnamed: Option<Arc<StmtKey>>,
    /// SQL-level prepared statements (PREPARE name AS …): name → digest of the PREPARE.
    pub sql_prepared: FxHashMap<String, u64>,
    /// The fingerprint of the session state (SETs) applied on this connection.
    pub state_fp: u64,
    /// The session thread whose event loop drives this socket ([`crate::workers`]).
    pub worker: usize,
    /// Whether this connection's database has the 2PC decision table
    /// ([`crate::twopc::DecisionTable`]), as last found by the coordinator.
    pub decision_table: crate::twopc::DecisionTable,
    /// Set when the distributed deadlock detector cancels this backend's statement:
    /// the cancellation error becomes 40P01 ([`BackendConn::deadlock_rewrite`]).
    pub deadlock: Arc<crate::deadlock::Mark>,
}

impl BackendConn {
    /// Connects, logs in and waits for the first ReadyForQuery.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        database: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let addr = format!("{host}:{port}");
        match tokio::time::timeout(
            timeout,
            Self::connect_inner(host, port, addr.clone(), user, database, password),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout(addr)),
        }
    }

    async fn connect_inner(
        host: &str,
        port: u16,
        addr: String,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Result<BackendConn, BackendError> {
        let (r, w) = super::stream::connect(host, port, &addr)
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let mut conn = BackendConn {
            reader: FrameReader::new(r, BACKEND_MAX_MESSAGE),
            writer: w,
            out: BytesMut::with_capacity(8 * 1024),
            addr: Arc::from(addr),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            status: b'I',
            pending_syncs: 0,
            unsynced: false,
            broken: false,
            prepared: FxHashMap::default(),
            tick: 0,
            unnamed: None,
            sql_prepared: FxHashMap::default(),
            state_fp: 0,
            decision_table: crate::twopc::DecisionTable::Unknown,
            worker: crate::workers::current(),
            deadlock: Arc::default(),
        };
        encode_startup(
            &mut conn.out,
            &[
                ("user", user),
                ("database", database),
                ("application_name", "pgshard-router"),
            ],
        );
        conn.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = conn.read().await?;
            match frame.tag() {
                b'R' => {
                    let auth = Authentication::decode(&frame).map_err(|e| conn.protocol(e))?;
                    let need_password = || {
                        password.ok_or_else(|| BackendError::Auth {
                            addr: conn.addr.to_string(),
                            message: format!("the server asks a password for user \"{user}\" and none is configured"),
                        })
                    };
                    match auth {
                        Authentication::Ok => {}
                        Authentication::Cleartext => {
                            let pw = need_password()?;
                            let mut payload = pw.as_bytes().to_vec();
                            payload.push(0);
                            encode_password(&mut conn.out, &payload);
                            conn.flush().await?;
                        }
                        Authentication::Md5 { salt } => {
                            let pw = need_password()?;
                            let mut payload = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                pw.as_bytes(),
                                salt,
                            )
                            .into_bytes();
                            payload.push(0);
                            encode_password(&mut conn.out, &payload);
                            conn.flush().await?;
                        }
                        Authentication::Sasl(mechs) => {
                            let pw = need_password()?;
                            if !mechs.contains(&SCRAM_SHA_256) {
                                return Err(BackendError::Auth {
                                    addr: conn.addr.to_string(),
                                    message: format!("no supported SASL mechanism in {mechs:?}"),
                                });
                            }
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            encode_sasl_initial(&mut conn.out, SCRAM_SHA_256, s.message());
                            scram = Some(s);
                            conn.flush().await?;
                        }
                        Authentication::SaslContinue(data) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| conn.auth_err("unexpected SASL continue"))?;
                            s.update(data).map_err(|e| conn.auth_err(&e.to_string()))?;
                            let msg = s.message().to_vec();
                            encode_password(&mut conn.out, &msg);
                            conn.flush().await?;
                        }
                        Authentication::SaslFinal(data) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| conn.auth_err("unexpected SASL final"))?;
                            s.finish(data).map_err(|e| conn.auth_err(&e.to_string()))?;
                        }
                        Authentication::Other(code) => {
                            return Err(
                                conn.auth_err(&format!("unsupported authentication method {code}"))
                            )
                        }
                    }
                }
                b'S' => conn.note_parameter(&frame),
                b'K' => {
                    let (pid, secret) = decode_backend_key(&frame).map_err(|e| conn.protocol(e))?;
                    conn.pid = pid;
                    conn.secret = secret;
                }
                b'Z' => {
                    conn.status = decode_ready_status(&frame).map_err(|e| conn.protocol(e))?;
                    return Ok(conn);
                }
                b'E' => return Err(conn.server_error(frame)),
                _ => {} // NoticeResponse, NegotiateProtocolVersion
            }
        }
    }

    fn protocol(&mut self, source: ProtocolError) -> BackendError {
        self.broken = true;
        BackendError::Protocol {
            addr: self.addr.to_string(),
            source,
        }
    }

    fn auth_err(&self, message: &str) -> BackendError {
        BackendError::Auth {
            addr: self.addr.to_string(),
            message: message.to_string(),
        }
    }

    pub fn server_error(&self, frame: Frame) -> BackendError {
        let frame = self.deadlock_rewrite(frame);
        let (code, message) = error_summary(&frame);
        BackendError::Server {
            addr: self.addr.to_string(),
            code,
            message,
            frame,
        }
    }

    /// An ErrorResponse from this server as the client gets it: the cancellation
    /// (57014) of a statement the deadlock detector chose as its victim becomes
    /// `40P01 deadlock detected` with the detector's DETAIL; anything else is
    /// unchanged.
    pub fn deadlock_rewrite(&self, frame: Frame) -> Frame {
        if error_summary(&frame).0 != "57014" {
            return frame;
        }
        let Some(detail) = self.deadlock.take() else {
            return frame;
        };
        let mut b = BytesMut::new();
        crate::protocol::backend::encode_error(
            &mut b,
            b'E',
            "ERROR",
            crate::deadlock::DEADLOCK_DETECTED,
            "deadlock detected",
            Some(&detail),
            Some("See the router log for the transactions involved."),
        );
        Frame::from_bytes(b.freeze()).unwrap_or(frame)
    }

    /// Records a ParameterStatus.
    pub fn note_parameter(&mut self, frame: &Frame) {
        if let Ok((name, value)) = decode_parameter_status(frame) {
            match self.params.iter_mut().find(|(n, _)| n == name) {
                Some(p) => p.1 = value.to_string(),
                None => self.params.push((name.to_string(), value.to_string())),
            }
        }
    }

    /// Reads one frame; end of stream or garbage marks the connection broken.
    pub async fn read(&mut self) -> Result<Frame, BackendError> {
        match self.reader.read_frame().await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => {
                self.broken = true;
                Err(BackendError::Closed {
                    addr: self.addr.to_string(),
                })
            }
            Err(ProtocolError::Io(source)) => {
                self.broken = true;
                Err(BackendError::Io {
                    addr: self.addr.to_string(),
                    source,
                })
            }
            Err(e) => Err(self.protocol(e)),
        }
    }

    /// Writes everything queued in `out`.
    pub async fn flush(&mut self) -> Result<(), BackendError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.writer.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|source| {
            self.broken = true;
            BackendError::Io {
                addr: self.addr.to_string(),
                source,
            }
        })
    }

    /// Runs SQL of the router's own with the simple protocol, outside any session
    /// pipeline (nothing else may be outstanding), up to ReadyForQuery. ParameterStatus
    /// is noted; every other frame but ErrorResponse goes to `each`. The first
    /// ErrorResponse becomes [`BackendError::Server`] once the statement has ended.
    async fn run_simple(
        &mut self,
        sql: &str,
        mut each: impl FnMut(&mut Self, Frame) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        encode_query(&mut self.out, sql);
        self.unnamed = None;
        self.flush().await?;
        let mut error = None;
        loop {
            let f = self.read().await?;
            match f.tag() {
                b'Z' => {
                    self.status = decode_ready_status(&f).map_err(|e| self.protocol(e))?;
                    break;
                }
                b'E' => {
                    if error.is_none() {
                        error = Some(self.server_error(f));
                    }
                }
                b'S' => {
                    self.note_parameter(&f);
                    each(self, f)?;
                }
                _ => each(self, f)?,
            }
        }
        error.map_or(Ok(()), Err)
    }

    /// Runs SQL with the simple protocol and waits for ReadyForQuery, outside any session
    /// pipeline (nothing else may be outstanding). Returns the ParameterStatus frames seen,
    /// which the caller may pass on; an ErrorResponse becomes [`BackendError::Server`].
    pub async fn run_silent(&mut self, sql: &str) -> Result<Vec<Frame>, BackendError> {
        let mut params = Vec::new();
        self.run_simple(sql, |_, f| {
            if f.tag() == b'S' {
                params.push(f);
            }
            Ok(())
        })
        .await?;
        Ok(params)
    }

    /// Runs one SQL statement of the router's own with the simple protocol, outside any
    /// session pipeline, and returns its rows as text (`None`: NULL). For small answers
    /// (catalog look-ups): every row is buffered.
    pub async fn query_text(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut rows = Vec::new();
        self.run_simple(sql, |c, f| {
            if f.tag() == b'D' {
                rows.push(decode_data_row_text(&f).map_err(|e| c.protocol(e))?);
            }
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// Runs SQL of the router's own with the simple protocol, outside any session
    /// pipeline, and returns each statement's command tag (`DELETE 3`).
    pub async fn query_tags(&mut self, sql: &str) -> Result<Vec<String>, BackendError> {
        let mut tags = Vec::new();
        self.run_simple(sql, |c, f| {
            if f.tag() == b'C' {
                tags.push(
                    decode_command_tag(&f)
                        .map_err(|e| c.protocol(e))?
                        .to_owned(),
                );
            }
            Ok(())
        })
        .await?;
        Ok(tags)
    }

    /// True when the connection may go back to the pool.
    pub fn is_clean(&self) -> bool {
        !self.broken
            && self.status == b'I'
            && self.pending_syncs == 0
            && !self.unsynced
            && self.out.is_empty()
            && self.reader.buffered() == 0
    }

    /// Checks, without blocking, that the server has not closed an idle connection or
    /// sent something unasked (e.g. a FATAL at shutdown).
    pub fn looks_alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.reader.get_mut().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            pid: self.pid,
            secret: self.secret,
        }
    }

    /// The router's name for a statement on this server (written on the stack: a
    /// prepared statement's every Bind names it).
    pub fn statement_name(digest: u64) -> StatementName {
        StatementName::new(digest)
    }

    /// Best-effort Terminate before the socket is dropped.
    pub async fn terminate(mut self) {
        self.out.clear();
        encode_terminate(&mut self.out);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.writer.write_all(&self.out))
            .await;
    }
}

/// `pgs_` and a statement digest in 16 lowercase hex digits: the name under which the
/// router prepares a client's named statement on a server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatementName([u8; 20]);

impl StatementName {
    fn new(digest: u64) -> StatementName {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = *b"pgs_0000000000000000";
        for (i, byte) in b[4..].iter_mut().enumerate() {
            *byte = HEX[((digest >> (60 - 4 * i)) & 0xf) as usize];
        }
        StatementName(b)
    }
}

impl std::ops::Deref for StatementName {
    type Target = str;
    fn deref(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for StatementName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_are_the_digest_in_hex() {
        for d in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(
                &*BackendConn::statement_name(d),
                format!("pgs_{d:016x}").as_str()
            );
        }
    }
}

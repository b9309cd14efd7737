//! The session layer's errors and their SQLSTATEs, decided here once (STYLE §5). Errors
//! that come from a shard are not re-encoded: their frame is forwarded as is.

use crate::backend::BackendError;
use crate::protocol::backend::encode_error;
use crate::protocol::ProtocolError;
use bytes::BytesMut;
use pgshard_catalog::ShardId;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Unsupported(String),
    /// The session's own refusals, worded once (see [`super::refusal`]).
    #[error("{0}")]
    Refused(#[from] super::refusal::Refusal),
    #[error("transaction spanning shards is not supported yet")]
    CrossShard { from: ShardId, to: ShardId },
    #[error("no primary known for shard {0}")]
    NoPrimary(ShardId),
    /// The shard left the catalog (decommissioned by `remove-shard`) after the statement
    /// was planned. It owned no bucket by then, so a multi-shard write skips it.
    #[error("shard {0} was removed from the cluster; retry the statement")]
    ShardRemoved(ShardId),
    /// A reference-table write planned before `add-shard` put a shard in the catalog
    /// (see `Session::shard_added_since`).
    #[error("shard {0} joined the cluster while this write to reference tables ran; retry the statement")]
    ShardAdded(ShardId),
    /// The shard's primary is being replaced and none took over within
    /// `router.failover_hold_ms`, or shardd refused its failover.
    #[error("shard {shard} is not available: {reason}")]
    ShardUnavailable { shard: ShardId, reason: String },
    /// A bucket the statement needs stayed frozen for a move longer than
    /// `router.failover_hold_ms` (or was reached where the router cannot plan again).
    #[error("a bucket this statement needs is being moved to another shard: {reason}")]
    BucketsMoving { reason: String },
    #[error("pool timeout: no connection to shard {shard} became free in time")]
    PoolTimeout { shard: ShardId },
    #[error("could not reach shard {shard}: {source}")]
    Backend {
        shard: ShardId,
        source: BackendError,
    },
    #[error("prepared statement \"{0}\" does not exist")]
    UnknownStatement(String),
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    #[error("portal \"{0}\" does not exist")]
    UnknownPortal(String),
    #[error("invalid input syntax for type {key_type}: \"{value}\"")]
    InvalidKey { key_type: String, value: String },
    #[error("bind message supplies too few parameters for the shard key ${0}")]
    MissingKeyParam(usize),
    #[error("null value in the shard key column")]
    NullKey,
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    #[error("DISCARD ALL cannot run inside a transaction block")]
    DiscardInTransaction,
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("lost the connection to shard {shard}")]
    LostBackend { shard: ShardId },
    /// The connection to the shard was lost while its COMMIT was in flight (its
    /// primary failed): the transaction may or may not have committed.
    #[error("lost the connection to shard {shard} during COMMIT: the transaction may or may not have committed")]
    CommitUnknown { shard: ShardId },
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// `router.tls_required` and the client did not negotiate TLS.
    #[error("TLS is required for user \"{user}\", database \"{database}\" (router.tls_required): connect with sslmode=require")]
    TlsRequired { user: String, database: String },
    #[error("sorry, too many clients already")]
    TooManyClients,
    /// A distributed COMMIT that did not (or is not known to have) committed; `code` is
    /// 40000 (rolled back by recovery), 08007 (outcome unknown) or XX000.
    #[error("{message}")]
    Commit { code: &'static str, message: String },
    /// An error the planner decided (its own SQLSTATE).
    #[error("{0}")]
    Plan(pgshard_sql::PlanError),
    /// A COPY FROM row the router cannot route (a NULL or malformed shard key…), with
    /// the table named in its context.
    #[error("{source}")]
    Copy {
        table: String,
        source: crate::copy::CopyError,
    },
    /// A multi-shard cursor's error (see `super::cursor`), with PostgreSQL's SQLSTATE.
    #[error("{message}")]
    Cursor { code: &'static str, message: String },
    /// A view over distributed tables the router keeps (see `crate::views`), with
    /// PostgreSQL's SQLSTATE (42P07 for a name taken, XX000 for the catalog).
    #[error("{message}")]
    View { code: &'static str, message: String },
    /// A statement answered by collecting its tables on one shard moved more bytes
    /// than `router.max_intermediate_bytes` allows.
    #[error("the rows collected for this statement exceed router.max_intermediate_bytes ({limit} bytes)")]
    IntermediateTooLarge { limit: u64 },
    /// `create_distributed_table` / `create_reference_table` refused (its own SQLSTATE).
    #[error("{0}")]
    Distribute(#[from] crate::distribute::DistributeError),
}

impl SessionError {
    /// The SQLSTATE the client sees. One exhaustive match, no wildcard.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Unsupported(_) => "0A000",
            SessionError::Refused(_) => "0A000",
            SessionError::CrossShard { .. } => "0A000",
            SessionError::NoPrimary(_) => "08006",
            SessionError::ShardRemoved(_) => "08006",
            SessionError::ShardAdded(_) => "40001",
            SessionError::ShardUnavailable { .. } => "57P03",
            SessionError::BucketsMoving { .. } => "57P03",
            SessionError::PoolTimeout { .. } => "53300",
            SessionError::Backend { .. } => "08006",
            SessionError::UnknownStatement(_) => "26000",
            SessionError::DuplicateStatement(_) => "42P05",
            SessionError::UnknownPortal(_) => "34000",
            SessionError::InvalidKey { .. } => "22P02",
            SessionError::MissingKeyParam(_) => "08P01",
            SessionError::NullKey => "23502",
            SessionError::InFailedTransaction => "25P02",
            SessionError::DiscardInTransaction => "25001",
            SessionError::Protocol(_) => "08P01",
            SessionError::LostBackend { .. } => "08006",
            SessionError::CommitUnknown { .. } => "08007",
            SessionError::AuthFailed(_) => "28P01",
            SessionError::NoUser => "28000",
            SessionError::TlsRequired { .. } => "28000",
            SessionError::TooManyClients => "53300",
            SessionError::Commit { code, .. } => code,
            SessionError::Cursor { code, .. } => code,
            SessionError::View { code, .. } => code,
            SessionError::Plan(e) => e.sqlstate(),
            SessionError::Copy { source, .. } => source.code(),
            SessionError::Distribute(e) => e.sqlstate(),
            SessionError::IntermediateTooLarge { .. } => "54000",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            SessionError::CrossShard { from, to } => Some(format!(
                "The transaction is pinned to shard {from}; this statement needs shard {to}. Distributed transactions (two-phase commit) are not implemented yet."
            )),
            SessionError::Copy { table, source } => source.context(table),
            _ => None,
        }
    }

    /// Whether the session can go on after this error (else the connection is closed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::Protocol(_)
                | SessionError::LostBackend { .. }
                | SessionError::CommitUnknown { .. }
                | SessionError::AuthFailed(_)
                | SessionError::NoUser
                | SessionError::TlsRequired { .. }
                | SessionError::TooManyClients
        )
    }

    /// Appends the ErrorResponse for this error; a shard's own error is forwarded as is.
    pub fn encode(&self, out: &mut BytesMut) {
        if let SessionError::Backend {
            source: BackendError::Server { frame, .. },
            ..
        } = self
        {
            out.extend_from_slice(frame.raw());
            return;
        }
        let severity = if self.is_fatal() { "FATAL" } else { "ERROR" };
        let text = self.to_string();
        // A planner refusal may carry a hint (pgshard_sql::HINT_SEPARATOR).
        let (message, hint) = match self {
            SessionError::Unsupported(_) => pgshard_sql::split_hint(&text),
            _ => (text.as_str(), None),
        };
        encode_error(
            out,
            b'E',
            severity,
            self.code(),
            message,
            self.detail().as_deref(),
            hint,
        );
    }

    pub fn from_backend(shard: ShardId, e: BackendError) -> SessionError {
        match e {
            BackendError::PoolTimeout(_) => SessionError::PoolTimeout { shard },
            source => SessionError::Backend { shard, source },
        }
    }
}

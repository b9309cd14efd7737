//! The client's transaction as the router sees it (SPEC §7), one type apart from the
//! wire state machine and from execution: which backends take part, the BEGIN and
//! savepoints to replay on a shard that joins, a BEGIN the router answered before any
//! shard was chosen, an extended-protocol batch made a transaction spanning shards, and
//! the session settings that take effect only if it commits. The attached backend (the
//! one the wire layer relays) is the session's; every other participant is here.

use super::{fanout, Attached};
use pgshard_sql::SessionCommand;

/// BEGIN answered by the router before any statement chose a shard.
pub(crate) struct VirtualTxn {
    pub begin_sql: String,
    pub failed: bool,
}

#[derive(Default)]
pub(crate) struct TxnState {
    /// BEGIN answered by the router; the transaction opens on the first backend a
    /// statement needs.
    pub virtual_txn: Option<VirtualTxn>,
    /// The BEGIN that opened the current transaction, replayed on shards that join it.
    pub begin: Option<String>,
    /// The savepoints active in the current transaction, oldest first, as written
    /// (replayed on shards that join it; see `txn`).
    pub savepoints: Vec<String>,
    /// The other participants of a transaction spanning shards (see `txn`): idle
    /// backends, each inside the transaction, nothing outstanding.
    pub parked: Vec<Attached>,
    /// An extended-protocol batch's implicit transaction turned into one spanning shards
    /// (see `attach`): it ends at the client's Sync, committed (two-phase) unless
    /// something in it failed, and the client sees only ReadyForQuery, as for any batch.
    pub implicit_spanning: bool,
    /// A COMMIT was forwarded to the attached backend and not answered yet: losing the
    /// backend now leaves the transaction's outcome unknown (08007).
    pub commit_in_flight: bool,
    /// SET/RESETs that completed inside an open (explicit or implicit) transaction:
    /// kept if it commits, dropped if it rolls back.
    pub vars: Vec<SessionCommand>,
    /// Participants lent to a running fan-out (see `fanout`).
    pub lent: Vec<fanout::Lent>,
    pub lent_parts: Vec<fanout::Part>,
    pub lending: bool,
    /// The attached backend failed with a deadlock error (40P01, the router's or
    /// PostgreSQL's) in a transaction without savepoints: the other participants are
    /// rolled back at once (see `txn::roll_back_parked`).
    pub roll_back_parked: bool,
    /// The BEGIN that starts the simple Query being answered, when it holds more
    /// statements and no transaction is open: if the router refuses the Query before
    /// anything of it ran, the client is left in a failed transaction, as PostgreSQL's
    /// error in `BEGIN; …` leaves it (statements refused until ROLLBACK), not outside one.
    pub query_begin: Option<String>,
}

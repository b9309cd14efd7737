//! What the session refuses on its own account (SQLSTATE 0A000), each reason worded
//! once, in PostgreSQL's style, instead of a string built at each site. Refusals the
//! planner decides arrive as [`pgshard_sql::Route::Unsupported`] text and stay
//! [`super::error::SessionError::Unsupported`]; fan-out and COPY have their own errors.

use pgshard_sql::RouterCommand;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} without a catalog connection (no two-phase commit)")]
    NoCommitLog(&'static str),
    #[error("a savepoint command together with other statements in one query, in a transaction spanning shards")]
    SavepointWithOthers,
    #[error("statements that run on every shard inside a transaction block need the catalog's commit log and one statement per query")]
    EveryShardInTransaction,
    #[error("a multi-shard query run through SQL-level EXECUTE (the prepared statement is not the shard query)")]
    MultiShardExecute,
    #[error("COPY into or out of a sharded table is supported on its own, through the simple query protocol or Bind/Execute")]
    CopyNotAlone,
    #[error("write on several shards inside a transaction block without a catalog connection, or through SQL-level EXECUTE (not supported yet)")]
    FanoutWriteHere,
    #[error("{0}")]
    RouterCommandHere(&'static str),
    #[error("a statement the router runs itself after statements on several shards in one extended-protocol batch (send Sync before it)")]
    LocalAfterSpanningBatch,
    #[error("Describe of a multi-shard portal that is not executed before Sync")]
    DescribedNotExecuted,
    #[error("a BEGIN portal executed after another statement of its batch chose a shard")]
    BeginAfterShard,
    #[error("a multi-row INSERT whose rows go to several shards, with parameters the router cannot renumber")]
    SplitParams,
    #[error("no shard owns the bucket of a key of distributed table {0}")]
    NoOwner(String),
    #[error("the fast-path function call protocol is not supported")]
    FunctionCall,
    #[error("a statement that runs on every shard, through SQL-level EXECUTE")]
    EveryShardExecute,
    #[error("COPY portal executed out of turn")]
    CopyOutOfTurn,
    #[error("a statement that needs its distributed tables collected on one shard and also reads reference, local or catalog relations or creates a table, inside a transaction block (the collecting session is outside the transaction: it would not see the transaction's writes, and its table would not roll back with it)")]
    CollectInTransaction,
    #[error("an INSERT into a distributed table whose rows are computed by a query or an expression of the shard key, inside a transaction block (not supported yet)")]
    CollectedInsertInTransaction,
    #[error("a statement with a data-modifying WITH across shards after or before other statements in one extended-protocol batch outside a transaction block (send Sync around it, or use a transaction block)")]
    CteWriteInBatch,
    #[error("a data-modifying WITH across shards whose RETURNING list repeats a column name (give the columns distinct aliases)")]
    CteDuplicateColumns,
    #[error("a statement that needs distributed table {0} collected on one shard, after this transaction locked {0} exclusively (TRUNCATE, ALTER TABLE, LOCK TABLE …): the collecting session is outside the transaction and would wait for its lock; run the statement before the one that takes the lock, or after COMMIT")]
    CollectExclusiveLock(String),
    #[error("a multi-statement query that runs on every shard and leaves a transaction block open (BEGIN without COMMIT or ROLLBACK in the same query): send BEGIN on its own, then the statements")]
    EveryShardOpensBlock,
}

impl Refusal {
    /// Why a router command cannot run where it was sent (inside PREPARE, or as part
    /// of another statement).
    pub fn router_command(cmd: &RouterCommand) -> Refusal {
        Refusal::RouterCommandHere(match cmd {
            RouterCommand::CreateDistributedTable { .. }
            | RouterCommand::CreateReferenceTable { .. } => {
                "create_distributed_table() and create_reference_table() run on their own, not prepared or inside another statement"
            }
            RouterCommand::CreateView { .. } | RouterCommand::DropViews { .. } => {
                "CREATE VIEW and DROP VIEW of views over distributed tables run on their own, not prepared or inside another statement"
            }
            RouterCommand::SetShard { .. }
            | RouterCommand::ResetShard
            | RouterCommand::ShowShard => {
                "pgshard.shard is set, reset and shown on its own, not prepared or inside another statement"
            }
            RouterCommand::SetReadFrom { .. }
            | RouterCommand::ResetReadFrom
            | RouterCommand::ShowReadFrom => {
                "pgshard.read_from is set, reset and shown on its own, not prepared or inside another statement"
            }
            RouterCommand::Prepare { .. }
            | RouterCommand::Execute { .. }
            | RouterCommand::Deallocate { .. } => {
                "PREPARE, EXECUTE and DEALLOCATE inside a prepared statement"
            }
            RouterCommand::Cursor(_) => {
                "FETCH, MOVE and CLOSE of a multi-shard cursor inside another statement"
            }
        })
    }
}

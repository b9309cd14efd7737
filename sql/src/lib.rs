//! Statement parsing, classification and planning for pgshard (SPEC §5). No I/O: the
//! router asks [`plan`]`(sql, &catalog)` what to do with a Query string and gets back
//! data.
//!
//! A [`Plan`] says where a statement goes ([`Route`]) and what kind of statement it is
//! ([`StatementKind`]), so the router can track transactions and session state. Statements
//! sqlparser cannot parse are classified by their leading keywords and still get a route,
//! never dropped (SPEC §5 rule 8).
//!
//! Modules, in the order a statement passes through them:
//! - `parse`: a PostgreSQL-aware scanner (statement splitting, leading keywords, the
//!   `/* pgshard: shard=N */` hint) and the sqlparser front end;
//! - `classify`: statement kinds from keywords, table classes from the catalog;
//! - `route`: walks a parsed query or DML statement, finds every table it touches and
//!   which shard-key values pin each distributed table, and turns that into a route;
//! - `copy`: the options of a COPY statement, read from its tokens;
//! - `constraints`: uniqueness and foreign keys a declared table's shards could not
//!   enforce alone (refused in DDL);
//! - `split`: multi-row INSERTs split by shard key, and INSERTs without a column list
//!   planned once the router has looked up the table's columns;
//! - `replicated`: what a write to reference tables may compute (each shard evaluates
//!   it on its own, so only values that are the same everywhere are allowed);
//! - `collect`: reads that cannot be pushed down, answered by collecting their
//!   distributed tables on one shard, and INSERTs whose rows are computed there;
//! - `ctewrite`: a data-modifying WITH across shards (its write run as a multi-shard
//!   write, its RETURNING rows collected for the rest of the statement);
//! - `plan`: the per-statement dispatcher (transaction and session commands, PREPARE /
//!   EXECUTE, COPY, utility and DDL, router commands, the keyword fallback) and the
//!   combination of several statements in one Query string.
//!
//! The planner is conservative: a statement is sent to one shard only when every
//! distributed table it reads or writes is provably restricted to that shard; a read
//! that needs several shards gets a [`FanoutPlan`] (`fanout`) when the router can
//! merge the shards' answers exactly as PostgreSQL would answer; anything else is
//! `Unsupported` with a message naming the construct.

mod classify;
pub mod collect;
mod constant;
mod constraints;
pub mod copy;
pub mod ctewrite;
pub mod cursor;
pub mod fanout;
mod keyupdate;
pub mod moving;
mod parse;
mod plan;
pub mod replicated;
mod route;
pub mod session;
mod split;
mod standin;
mod views;

#[cfg(test)]
mod tests;

use pgshard_catalog::{Catalog, KeyType, KeyValue, ShardId};

pub use classify::begin_read_only;
pub use collect::{exclusive_lock_sql, CollectInput, CollectPlan, InsertStage};
pub use copy::{CopyDirection, CopyFormat, CopyKey, CopyOptions, CopyPlan};
pub use ctewrite::{CteWrite, CTE_TABLE};
pub use cursor::{cursor_command, CursorCommand, CursorCount, CursorDecl, CursorVerb};
pub use fanout::{
    FanoutPlan, FanoutWrite, FinishPlan, KeyMove, MergePlan, SortColumn, SortKey, StreamMerge,
};
pub use plan::{
    dropped_tables, execute_fanout, plan, prepared_fanout, route_execute, route_for_key,
    statement_kind, table_names, SplitQuery,
};
pub use session::{begin_tag, session_command, statement_texts, SessionCommand};
pub use split::{columns_needed, plan_with_columns, renumber_params, split_insert_rows};

/// What the router does with one Query string (one statement, or several separated by
/// semicolons in the simple protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub route: Route,
    /// What kind of statement it is (transaction control, read, write, DDL…). For several
    /// statements: their common kind, else the strongest of Write, Ddl, Read, Other (see
    /// `statements` for each one's own kind).
    pub kind: StatementKind,
    /// For `Route::ShardByParam`: what a NULL parameter means at Bind. `Some(error)` for
    /// an INSERT whose shard key is the parameter (a NULL key is refused with SQLSTATE
    /// 23502); `None` when a NULL key merely matches no row, so any shard may answer.
    pub null_key: Option<PlanError>,
    /// For a Query string holding several statements: each statement's own plan, in
    /// order, so the router can track the transaction and session commands among them.
    /// Empty for a single statement.
    pub statements: Vec<Plan>,
    /// Planned with a column order looked up on a shard (an INSERT without a column
    /// list, [`plan_with_columns`]): valid for this planning only, never to be reused
    /// for a later Parse (an ALTER TABLE may have moved the columns since).
    pub column_order: bool,
    /// The statement as shards must see it when it differs from the client's text (a
    /// view over distributed tables written in, `views`): a statement prepared on a
    /// backend is prepared with this text.
    pub rewritten: Option<String>,
    /// The statement cannot write, lock rows or change session state, so a streaming
    /// replica may answer it (SPEC §8 read routing; the rule is
    /// [`replica_safe`](crate::classify)'s): a SELECT, VALUES, TABLE or WITH query
    /// with no data-modifying part, no `FOR UPDATE`/`FOR SHARE`, no `INTO`, calling only
    /// functions known to be read-only. Whether it *goes* to one is the router's call
    /// (the session's `read_from`, its transaction, read-your-writes).
    pub replica_ok: bool,
}

impl Plan {
    /// A single-statement plan.
    pub fn new(route: Route, kind: StatementKind) -> Self {
        Plan {
            route,
            kind,
            null_key: None,
            statements: Vec::new(),
            column_order: false,
            rewritten: None,
            replica_ok: false,
        }
    }
}

/// A refusal's text may end with a hint for the client, after this separator: the
/// router sends it as the ErrorResponse's HINT field ([`split_hint`]).
pub const HINT_SEPARATOR: &str = "\nHINT: ";

/// A refusal's message and its hint, if it has one (see [`HINT_SEPARATOR`]).
pub fn split_hint(text: &str) -> (&str, Option<&str>) {
    match text.split_once(HINT_SEPARATOR) {
        Some((message, hint)) => (message, Some(hint)),
        None => (text, None),
    }
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one shard; the statement is forwarded byte-for-byte.
    Shard(ShardId),
    /// One shard, decided at Bind from parameter `$param` (1-based), which holds a value
    /// of `key_type` for the shard key. See [`route_for_key`] and [`Plan::null_key`].
    ShardByParam { param: usize, key_type: KeyType },
    /// Any one shard (reference-table reads, utility queries, statements without tables
    /// such as `SELECT 1`, and transaction/session commands, which the router applies
    /// to whichever backends the session uses).
    AnyShard,
    /// Every shard (DDL and utility on distributed/reference tables).
    AllShards,
    /// Several shards in parallel, answers merged by the router (SPEC §5 rule 2): see
    /// [`FanoutPlan`].
    Fanout(FanoutPlan),
    /// A write on several shards (UPDATE/DELETE without a single-shard key filter):
    /// the same statement on each shard, in one distributed transaction (see
    /// [`fanout::MULTI_SHARD_WRITES`]).
    FanoutWrite(FanoutWrite),
    /// A multi-row `INSERT … VALUES` into a distributed table whose shard keys are
    /// parameters (and constants): each row's shard is known at Bind, where rows on one
    /// shard go there as written and rows on several are split ([`split_insert_rows`]).
    InsertByParams(ParamInsert),
    /// `COPY … FROM STDIN` into a distributed or reference table (rows split by shard
    /// key, or copied to every shard) or `COPY … TO STDOUT` from several shards (their
    /// streams concatenated): see [`CopyPlan`].
    Copy(CopyPlan),
    /// Handled by the router itself without a backend (e.g. `create_distributed_table`).
    Router(RouterCommand),
    /// Refused with SQLSTATE 0A000; the text names the construct.
    Unsupported(String),
    /// Refused with the error's SQLSTATE ([`PlanError::sqlstate`]), without contacting a
    /// shard (e.g. a NULL shard key on INSERT).
    Error(PlanError),
}

/// See [`Route::InsertByParams`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInsert {
    pub table: String,
    /// The shard key column (named in a NULL-key error).
    pub column: String,
    pub key_type: KeyType,
    /// Each row's shard key, in order.
    pub keys: Vec<RowKey>,
    /// The statement as planned (with its column list), which [`split_insert_rows`]
    /// splits.
    pub sql: String,
    /// The 0A000 message where rows cannot be split by parameter values (an SQL-level
    /// EXECUTE of the statement).
    pub refusal: String,
}

/// One row's shard key in a [`ParamInsert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    Value(KeyValue),
    /// Parameter `$n` (1-based).
    Param(usize),
}

/// Statements the router answers or acts on itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterCommand {
    /// `SELECT create_distributed_table('t', 'col' [, colocate_with => 'other'])`. The
    /// names are folded as PostgreSQL folds identifiers (`'T'` is `t`, `'"T"'` is `T`).
    /// `colocate_with` is `None` for Citus' `'default'`; `'none'` is passed through.
    CreateDistributedTable {
        table: String,
        column: String,
        colocate_with: Option<String>,
    },
    /// `SELECT create_reference_table('t')`.
    CreateReferenceTable { table: String },
    /// `CREATE [OR REPLACE] VIEW` over distributed tables: kept in the catalog and
    /// written into the statements that name it (see `views`).
    CreateView {
        /// Folded as a table name (`public.` dropped).
        name: String,
        /// Column names given after the view's name (folded); empty for the query's.
        columns: Vec<String>,
        /// The query, with the views it names written in.
        query: String,
        /// `OR REPLACE`.
        replace: bool,
        /// The statement with the views written in, which PostgreSQL checks on the
        /// local shard (in a transaction that rolls back) before the view is recorded.
        check_sql: String,
    },
    /// `DROP VIEW [IF EXISTS]` of views over distributed tables (their kept names).
    DropViews { names: Vec<String> },
    /// `SET [SESSION | LOCAL] pgshard.shard = N`: send the session's statements to shard
    /// `N` until reset (`local`: until the end of the current transaction).
    SetShard { shard: ShardId, local: bool },
    /// `RESET pgshard.shard` or `SET pgshard.shard TO DEFAULT`. (`RESET ALL`, planned as
    /// an ordinary session command, also clears it.)
    ResetShard,
    /// `SHOW pgshard.shard`: one row, the shard set with `SetShard` or `"none"`.
    ShowShard,
    /// `SET [SESSION] pgshard.read_from = primary | replica | any`: where this
    /// session's reads go (SPEC §8), over `router.read_from`.
    SetReadFrom {
        from: pgshard_catalog::config::ReadFrom,
    },
    /// `RESET pgshard.read_from` or `SET pgshard.read_from TO DEFAULT`.
    ResetReadFrom,
    /// `SHOW pgshard.read_from`: one row, the session's setting.
    ShowReadFrom,
    /// `PREPARE name [(types)] AS statement`. The router records the statement for the
    /// session and prepares it lazily on whichever backend runs an `EXECUTE` of it.
    Prepare {
        name: String,
        /// The parameter types as written, e.g. `["int", "text"]`.
        param_types: Vec<String>,
        /// The text of the prepared statement.
        statement: String,
        /// Its plan, with `$n` referring to the EXECUTE arguments.
        plan: Box<Plan>,
    },
    /// `EXECUTE name [(args)]`; route it with [`route_execute`] on the prepared plan.
    Execute { name: String, args: Vec<ExecuteArg> },
    /// `DEALLOCATE [PREPARE] name`, or `DEALLOCATE ALL` (`name` is `None`).
    Deallocate { name: Option<String> },
    /// FETCH, MOVE or CLOSE of a cursor the router holds (a multi-shard one, see
    /// [`cursor`]); the router decides this, the planner routes these to a shard.
    Cursor(CursorCommand),
}

/// One argument of an SQL-level `EXECUTE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecuteArg {
    /// A constant: an integer (with its sign, written as PostgreSQL prints it; also
    /// the value of a constant integer expression such as `1 + 2`) or the value of a
    /// string literal.
    Literal(String),
    /// A number constant that is not an integer (`3.0`, `-2.5`, `1e3`), as written
    /// with its sign: PostgreSQL types it `numeric` and rounds it when the parameter
    /// is an integer.
    Numeric(String),
    /// `NULL`.
    Null,
    /// Any other expression, as written.
    Expr(String),
}

/// The class of a statement, for transaction and session handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO.
    Savepoint,
    /// SET, RESET, DISCARD and similar session-state changes; replayed on every backend
    /// the session uses.
    SessionSet,
    /// SHOW and other read-only session queries.
    SessionShow,
    /// SELECT and other reads (also DECLARE/FETCH/MOVE, COPY … TO, EXPLAIN). A read may
    /// still call a function with side effects (`nextval`).
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM, and queries with data-modifying CTEs.
    Write,
    /// CREATE/ALTER/DROP, TRUNCATE, VACUUM, ANALYZE, COMMENT, GRANT, `SELECT … INTO`…
    Ddl,
    /// PREPARE / EXECUTE / DEALLOCATE at the SQL level.
    Prepared,
    /// A Query string with no statement (only whitespace, comments or semicolons);
    /// PostgreSQL answers EmptyQueryResponse.
    Empty,
    /// Anything else (DO, CALL, LISTEN, NOTIFY, LOCK, CLOSE, CHECKPOINT, two-phase
    /// commit commands…).
    Other,
}

/// Errors the planner decides by itself; the router sends them to the client with
/// [`PlanError::sqlstate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An INSERT gives NULL for the shard key.
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NullShardKey { table: String, column: String },
    /// A hint, `SET pgshard.shard` or similar names a shard that does not exist.
    #[error("shard {shard} does not exist")]
    UnknownShard { shard: u64 },
    /// A malformed `/* pgshard: … */` hint or `pgshard.shard` value.
    #[error("invalid value for pgshard.shard: \"{value}\"")]
    InvalidShardSetting { value: String },
    /// `SET pgshard.read_from` to something other than primary, replica or any.
    #[error("invalid value for parameter \"pgshard.read_from\": \"{value}\"")]
    InvalidReadFrom { value: String },
    /// A router function called with arguments of the wrong shape (not literals).
    #[error("{message}")]
    InvalidArgument { message: String },
    /// A router function called with the wrong number of arguments.
    #[error("function {signature} does not exist")]
    UndefinedFunction { signature: String },
}

impl PlanError {
    /// The SQLSTATE to report.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PlanError::NullShardKey { .. } => "23502",
            PlanError::UnknownShard { .. } => "22023",
            PlanError::InvalidShardSetting { .. } => "22023",
            PlanError::InvalidReadFrom { .. } => "22023",
            PlanError::InvalidArgument { .. } => "22023",
            PlanError::UndefinedFunction { .. } => "42883",
        }
    }
}

/// Parse a literal as a shard-key value (PostgreSQL's text input for the key type).
fn key_from_literal(text: &str, key_type: KeyType) -> Option<KeyValue> {
    pgshard_catalog::hash::parse_key(text, key_type)
}

/// The shard a key value lives on in this catalog snapshot.
fn shard_of(catalog: &Catalog, key: &KeyValue) -> Option<ShardId> {
    catalog.shard_of(key)
}

//! Statement parsing, classification and planning for pgshard (SPEC §5). No I/O: the
//! router asks `plan(sql, &catalog)` what to do with a statement and gets back data.
//!
//! A [`Plan`] says where a statement goes ([`Route`]) and what the router must do around
//! it. Statements sqlparser cannot parse are classified by their leading keywords and
//! still get a route, never dropped (SPEC §5 rule 8).

use pgshard_catalog::{Catalog, KeyType, ShardId};

/// What the router does with one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub route: Route,
    /// What kind of statement it is (transaction control, read, write, DDL…).
    pub kind: StatementKind,
}

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one shard; the statement is forwarded byte-for-byte.
    Shard(ShardId),
    /// One shard, decided at Bind from parameter `$param` (1-based), which holds a value
    /// of `key_type` for the shard key.
    ShardByParam { param: usize, key_type: KeyType },
    /// Any one shard (reference-table reads, catalog and utility queries, statements
    /// without tables such as `SELECT 1`).
    AnyShard,
    /// Every shard (DDL and utility on distributed/reference tables).
    AllShards,
    /// Handled by the router itself without a backend (e.g. `create_distributed_table`).
    Router(RouterCommand),
    /// Refused with SQLSTATE 0A000; the text names the construct.
    Unsupported(String),
}

/// Statements the router answers or acts on itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterCommand {
    /// `SELECT create_distributed_table('t', 'col' [, colocate_with => 'other'])`.
    CreateDistributedTable {
        table: String,
        column: String,
        colocate_with: Option<String>,
    },
    /// `SELECT create_reference_table('t')`.
    CreateReferenceTable { table: String },
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
    /// SELECT and other reads.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM.
    Write,
    /// CREATE/ALTER/DROP, TRUNCATE, VACUUM, ANALYZE…
    Ddl,
    /// PREPARE / EXECUTE / DEALLOCATE at the SQL level.
    Prepared,
    /// Anything else.
    Other,
}

/// Plan one statement against a catalog snapshot.
pub fn plan(_sql: &str, catalog: &Catalog) -> Plan {
    Plan {
        route: Route::Shard(catalog.local_shard),
        kind: StatementKind::Other,
    }
}

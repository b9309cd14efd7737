//! Decisions of distributed transactions (SPEC §7, §10): the global transaction id that
//! names a two-phase transaction on every shard, and where its commit decision lives.
//!
//! **On a participant (the default).** A [`Gid`] that names a *coordinator shard* C
//! (`pgshard:<router>:<n>:<ms>:<C>`) has its decision in [`DECISIONS_TABLE`] in the same
//! database on C's primary, written inside C's own transaction (Citus' scheme):
//!
//! 1. the coordinator inserts the row ([`decision_insert_sql`]) in C's open transaction,
//!    while it runs `PREPARE TRANSACTION '<gid>'` on every other writer;
//! 2. it commits C with a plain `COMMIT`: that commit is the commit point, and the row
//!    is durable exactly when C's writes are;
//! 3. it runs `COMMIT PREPARED '<gid>'` on the others; recovery deletes the row later.
//!
//! Recovery finds the others prepared. A committed row (not `aborted`) → commit. No
//! row, once old enough → [`DECIDE_ABORT_SQL`] inserts an `aborted` row on C with
//! `ON CONFLICT DO NOTHING`: if C's transaction still runs, the primary key makes the
//! insert wait for it; if C committed, the conflict leaves C's row (commit); if the
//! abort row goes in, C can never commit any more (its own insert would conflict), so
//! rolling back is safe. No catalog round trip is on the transaction's path, and the
//! decision fails over with C's data.
//!
//! **In the catalog (the fallback).** A [`Gid`] without a coordinator shard (a database
//! without the decision table yet) has its decision in `pgshard.transactions` on the
//! catalog node (migration `0002_twopc.sql`):
//!
//! 1. the coordinator runs `PREPARE TRANSACTION '<gid>'` on every writing shard;
//! 2. it calls [`record_commit`]: the row (`committing`) is committed before it returns,
//!    and that commit is the transaction's commit point;
//! 3. it runs `COMMIT PREPARED '<gid>'` on every shard and then [`forget`]s the row.
//!
//! Recovery finds prepared transactions on the shards. With a `committing` row it
//! commits them. Without one, once they are old enough, it calls [`record_abort`]
//! *before* rolling back: both functions insert on the same primary key, so exactly one
//! decision wins, and a coordinator that stalled past the bound finds its commit
//! refused ([`TwoPcError::Aborted`]) instead of committing half a transaction.
//! Aborted rows are kept for a while after the last shard forgot the transaction, for
//! the same reason.
//!
//! These rows are not topology: they never bump the catalog version.

use crate::types::ShardId;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

/// Every global transaction id starts with this, so recovery can tell ours from
/// transactions prepared by hand or by other software.
pub const GID_PREFIX: &str = "pgshard:";
/// The longest router id accepted in a [`Gid`] (PostgreSQL's limit for a whole GID is
/// 199 bytes; ours stay far below).
pub const MAX_ROUTER_ID: usize = 64;

/// Names the router that coordinates a transaction: 1 to 64 of `[A-Za-z0-9_.-]`, so a
/// [`Gid`] can be quoted in SQL without escaping and split on `:` unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId(String);

impl RouterId {
    pub fn new(id: &str) -> Option<RouterId> {
        let ok = !id.is_empty()
            && id.len() <= MAX_ROUTER_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| RouterId(id.to_string()))
    }

    /// A fresh id for one router process (`r` and 12 random hex digits): unique across
    /// restarts, so transaction counters may start again at 1.
    pub fn generate() -> RouterId {
        let u = uuid::Uuid::new_v4().simple().to_string();
        RouterId(format!("r{}", &u[..12]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A global transaction id, `pgshard:<router-id>:<txn-counter>:<unix-ms>[:<shard>]`:
/// names the coordinating router and its transaction, carries the creation time so
/// recovery can tell its age, and (when present) the coordinator shard whose
/// [`DECISIONS_TABLE`] holds the decision; without it the decision is in the catalog.
/// Always a valid PostgreSQL GID that needs no quoting beyond `'…'`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid {
    text: String,
    router: RouterId,
    counter: u64,
    created_ms: u64,
    coordinator: Option<ShardId>,
}

impl Gid {
    /// The id of transaction `counter` of `router`, created now.
    pub fn new(router: &RouterId, counter: u64) -> Gid {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Gid::with_time(router, counter, ms)
    }

    /// The id of transaction `counter` of `router`, created at `created_ms` (ms since
    /// the Unix epoch).
    pub fn with_time(router: &RouterId, counter: u64, created_ms: u64) -> Gid {
        Gid {
            text: format!("{GID_PREFIX}{router}:{counter}:{created_ms}"),
            router: router.clone(),
            counter,
            created_ms,
            coordinator: None,
        }
    }

    /// The id of transaction `counter` of `router`, created now, whose decision is
    /// written on shard `coordinator` (see the module doc).
    pub fn on_shard(router: &RouterId, counter: u64, coordinator: ShardId) -> Gid {
        Gid::new(router, counter).with_coordinator(coordinator)
    }

    /// This id with its decision on shard `coordinator`.
    pub fn with_coordinator(self, coordinator: ShardId) -> Gid {
        Gid {
            text: format!(
                "{GID_PREFIX}{}:{}:{}:{}",
                self.router, self.counter, self.created_ms, coordinator.0
            ),
            coordinator: Some(coordinator),
            ..self
        }
    }

    /// The shard whose decision table holds this transaction's decision; `None`: the
    /// catalog's `pgshard.transactions` does.
    pub fn coordinator(&self) -> Option<ShardId> {
        self.coordinator
    }

    /// Parse a GID as found in `pg_prepared_xacts`; `None` if it is not one of ours.
    pub fn parse(s: &str) -> Option<Gid> {
        let rest = s.strip_prefix(GID_PREFIX)?;
        let mut parts = rest.split(':');
        let router = RouterId::new(parts.next()?)?;
        let counter = parse_decimal(parts.next()?)?;
        let created_ms = parse_decimal(parts.next()?)?;
        let mut gid = Gid::with_time(&router, counter, created_ms);
        if let Some(shard) = parts.next() {
            let shard = u32::try_from(parse_decimal(shard)?).ok()?;
            gid = gid.with_coordinator(ShardId(shard));
        }
        if parts.next().is_some() {
            return None;
        }
        // Only the canonical spelling (no leading zeros), so text and value agree.
        (gid.text == s).then_some(gid)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn router(&self) -> &RouterId {
        &self.router
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// When the coordinator created the id (its clock).
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    /// The id as a SQL string literal, e.g. for `PREPARE TRANSACTION <literal>`.
    /// Router ids exclude quotes and backslashes, so no escaping is needed.
    pub fn literal(&self) -> String {
        format!("'{}'", self.text)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The table, in every database of every shard primary, that holds the decisions of
/// the transactions coordinated on that shard (see the module doc). shardd's recovery
/// creates it ([`DECISIONS_DDL`]) and deletes its rows once their transactions are
/// finished everywhere.
pub const DECISIONS_TABLE: &str = "pgshard_2pc.decisions";

/// Creates [`DECISIONS_TABLE`] (idempotent; run as a superuser). Every role may insert
/// and read: the router's backends log in as the client's user.
pub const DECISIONS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgshard_2pc;
CREATE TABLE IF NOT EXISTS pgshard_2pc.decisions (
    gid text PRIMARY KEY,
    aborted boolean NOT NULL DEFAULT false,
    decided_at timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA pgshard_2pc TO PUBLIC;
GRANT SELECT, INSERT ON pgshard_2pc.decisions TO PUBLIC;";

/// The coordinator's commit decision, run inside the coordinator shard's transaction
/// (simple protocol: no parameters).
pub fn decision_insert_sql(gid: &Gid) -> String {
    format!(
        "INSERT INTO {DECISIONS_TABLE} (gid) VALUES ({})",
        gid.literal()
    )
}

/// Recovery's abort decision on the coordinator shard: inserts an `aborted` row unless
/// a row exists, waiting for the coordinator's transaction if it holds the key. Returns
/// a row iff the abort went in. Parameter: the gid.
pub const DECIDE_ABORT_SQL: &str =
    "INSERT INTO pgshard_2pc.decisions (gid, aborted) VALUES ($1, true)
     ON CONFLICT (gid) DO NOTHING RETURNING aborted";

/// Every decision row on one shard database: `(gid, aborted, age in seconds)`.
pub const LIST_DECISIONS_SQL: &str =
    "SELECT gid, aborted, GREATEST(extract(epoch FROM now() - decided_at), 0)::float8
       FROM pgshard_2pc.decisions";

/// Deletes the decision rows whose gid is in `$1` (a `text[]`).
pub const FORGET_DECISIONS_SQL: &str = "DELETE FROM pgshard_2pc.decisions WHERE gid = ANY($1)";

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What was decided for a distributed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Commit: every participant must end with `COMMIT PREPARED`.
    Committing,
    /// Committed everywhere (kept for inspection; recovery normally deletes the row).
    Committed,
    /// Roll back: every participant must end with `ROLLBACK PREPARED`.
    Aborted,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Committing => "committing",
            Decision::Committed => "committed",
            Decision::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "committing" => Some(Decision::Committing),
            "committed" => Some(Decision::Committed),
            "aborted" => Some(Decision::Aborted),
            _ => None,
        }
    }

    /// True if the prepared transactions must be committed.
    pub fn is_commit(self) -> bool {
        matches!(self, Decision::Committing | Decision::Committed)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `pgshard.transactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The GID as stored (normally parses as a [`Gid`]).
    pub gid: String,
    pub router: String,
    pub decision: Decision,
    pub participants: Vec<ShardId>,
    pub created_at: SystemTime,
    pub decided_at: SystemTime,
    /// How long ago the decision was taken, by the catalog node's clock.
    pub decided_ago: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TwoPcError {
    #[error("catalog database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// [`record_commit`] found the transaction already aborted by recovery.
    #[error("distributed transaction {0} was already rolled back by recovery")]
    Aborted(String),
    #[error("catalog holds an invalid transaction record: {0}")]
    Corrupt(String),
}

fn shard_ids(participants: &[ShardId]) -> Vec<i32> {
    participants.iter().map(|s| s.0 as i32).collect()
}

async fn existing(
    client: &impl GenericClient,
    gid: &str,
) -> Result<tokio_postgres::Row, TwoPcError> {
    client
        .query_opt(
            "SELECT state FROM pgshard.transactions WHERE gid = $1",
            &[&gid],
        )
        .await?
        .ok_or_else(|| TwoPcError::Corrupt(format!("decision for {gid} vanished while deciding")))
}

/// Insert a decision unless one exists; return the decision in place afterwards.
async fn decide(
    client: &impl GenericClient,
    gid: &str,
    router: &str,
    participants: &[ShardId],
    decision: Decision,
) -> Result<Decision, TwoPcError> {
    let row = client
        .query_opt(
            "WITH ins AS (
                 INSERT INTO pgshard.transactions (gid, router, state, participants)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (gid) DO NOTHING
                 RETURNING state)
             SELECT state FROM ins
             UNION ALL
             SELECT state FROM pgshard.transactions
              WHERE gid = $1 AND NOT EXISTS (SELECT FROM ins)",
            &[&gid, &router, &decision.as_str(), &shard_ids(participants)],
        )
        .await;
    let row = match row {
        Ok(Some(r)) => r,
        // A concurrent decision on the same gid committed after this statement's
        // snapshot (so DO NOTHING skipped, or the key check fired): a new statement
        // sees it.
        Ok(None) => existing(client, gid).await?,
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => existing(client, gid).await?,
        Err(e) => return Err(TwoPcError::Db(e)),
    };
    let state: String = row.get(0);
    Decision::parse(&state).ok_or_else(|| TwoPcError::Corrupt(format!("state `{state}`")))
}

/// The commit point of a distributed transaction: record that `gid` commits on
/// `participants`. Returns once the row is committed (durable as the catalog node's
/// commits are: in `sync` mode, on its replica too). Run it on a connection that is not
/// inside a transaction block (or inside one that commits right after, as
/// [`crate::store::add_table_at_commit`] does). Idempotent; fails with [`TwoPcError::Aborted`] if
/// recovery already decided to roll `gid` back.
pub async fn record_commit(
    client: &impl GenericClient,
    gid: &Gid,
    router: &RouterId,
    participants: &[ShardId],
) -> Result<(), TwoPcError> {
    match decide(
        client,
        gid.as_str(),
        router.as_str(),
        participants,
        Decision::Committing,
    )
    .await?
    {
        Decision::Committing | Decision::Committed => Ok(()),
        Decision::Aborted => Err(TwoPcError::Aborted(gid.to_string())),
    }
}

/// Recovery's decision to roll back `gid` (a prepared transaction with no record):
/// inserts an `aborted` row unless a decision exists, and returns the decision that
/// holds — `Committing` if the coordinator got there first.
pub async fn record_abort(
    client: &Client,
    gid: &Gid,
    participants: &[ShardId],
) -> Result<Decision, TwoPcError> {
    decide(
        client,
        gid.as_str(),
        gid.router().as_str(),
        participants,
        Decision::Aborted,
    )
    .await
}

const RECORD_COLUMNS: &str = "gid, router, state, participants, created_at, decided_at, \
     GREATEST(extract(epoch FROM now() - decided_at), 0)::float8";

fn record_of(row: &tokio_postgres::Row) -> Result<Record, TwoPcError> {
    let state: String = row.get(2);
    let participants: Vec<i32> = row.get(3);
    let ago: f64 = row.get(6);
    Ok(Record {
        gid: row.get(0),
        router: row.get(1),
        decision: Decision::parse(&state)
            .ok_or_else(|| TwoPcError::Corrupt(format!("state `{state}`")))?,
        participants: participants
            .into_iter()
            .map(|s| {
                u32::try_from(s)
                    .map(ShardId)
                    .map_err(|_| TwoPcError::Corrupt(format!("shard id {s}")))
            })
            .collect::<Result<_, _>>()?,
        created_at: row.get(4),
        decided_at: row.get(5),
        decided_ago: Duration::try_from_secs_f64(ago).unwrap_or_default(),
    })
}

/// The decision recorded for `gid`, if any.
pub async fn commit_decision(client: &Client, gid: &Gid) -> Result<Option<Record>, TwoPcError> {
    let row = client
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM pgshard.transactions WHERE gid = $1"),
            &[&gid.as_str()],
        )
        .await?;
    row.as_ref().map(record_of).transpose()
}

/// Every record, oldest first.
pub async fn list(client: &Client) -> Result<Vec<Record>, TwoPcError> {
    client
        .query(
            &format!("SELECT {RECORD_COLUMNS} FROM pgshard.transactions ORDER BY created_at, gid"),
            &[],
        )
        .await?
        .iter()
        .map(record_of)
        .collect()
}

/// Delete the record of `gid` (once no shard holds it prepared). Returns whether a row
/// was deleted.
pub async fn forget(client: &Client, gid: &Gid) -> Result<bool, TwoPcError> {
    Ok(forget_many(client, &[gid.as_str()]).await? > 0)
}

/// Delete the records of `gids`; returns how many were deleted.
pub async fn forget_many(client: &Client, gids: &[&str]) -> Result<u64, TwoPcError> {
    if gids.is_empty() {
        return Ok(0);
    }
    Ok(client
        .execute(
            "DELETE FROM pgshard.transactions WHERE gid = ANY($1)",
            &[&gids],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> RouterId {
        RouterId::new(s).expect("valid router id")
    }

    #[test]
    fn gid_round_trips_and_names_router_counter_and_time() {
        let g = Gid::with_time(&rid("router-1.a_b"), 42, 1_700_000_000_123);
        assert_eq!(g.as_str(), "pgshard:router-1.a_b:42:1700000000123");
        assert_eq!(g.literal(), "'pgshard:router-1.a_b:42:1700000000123'");
        let p = Gid::parse(g.as_str()).expect("parses");
        assert_eq!(p, g);
        assert_eq!(p.router().as_str(), "router-1.a_b");
        assert_eq!(p.counter(), 42);
        assert_eq!(
            p.created(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
    }

    #[test]
    fn new_gid_is_now_and_parses() {
        let before = SystemTime::now() - Duration::from_secs(1);
        let g = Gid::new(&RouterId::generate(), 7);
        assert!(g.created() >= before && g.created() <= SystemTime::now());
        assert_eq!(Gid::parse(g.as_str()), Some(g));
    }

    #[test]
    fn longest_gid_is_a_valid_postgres_gid() {
        let g = Gid::with_time(&rid(&"x".repeat(MAX_ROUTER_ID)), u64::MAX, u64::MAX);
        assert!(g.as_str().len() < 200, "{} bytes", g.as_str().len());
        assert_eq!(Gid::parse(g.as_str()), Some(g));
    }

    #[test]
    fn foreign_or_malformed_gids_do_not_parse() {
        for s in [
            "",
            "pgshard:",
            "pgshard:r1:1",
            "pgshard:r1:1:2:3:4",
            "pgshard:r1:1:2:03",
            "pgshard:r1:1:2:",
            "pgshard:r1:1:2:4294967296",
            "pgshard::1:2",
            "pgshard:r1:x:2",
            "pgshard:r1:1:-2",
            "pgshard:r1:01:2",
            "pgshard:r1:1:+2",
            "pgshard:r'1:1:2",
            "pgshard:r 1:1:2",
            "pgshard:r1:1:99999999999999999999999",
            "PGSHARD:r1:1:2",
            "citus_1_2_3",
            "my-own-gid",
        ] {
            assert_eq!(Gid::parse(s), None, "{s:?}");
        }
        assert!(Gid::parse("pgshard:r1:0:0").is_some());
    }

    #[test]
    fn a_gid_may_name_its_coordinator_shard() {
        let g = Gid::with_time(&rid("r1"), 5, 1_000).with_coordinator(ShardId(3));
        assert_eq!(g.as_str(), "pgshard:r1:5:1000:3");
        assert_eq!(g.coordinator(), Some(ShardId(3)));
        assert_eq!(Gid::parse(g.as_str()), Some(g.clone()));
        assert_eq!(
            Gid::parse("pgshard:r1:5:1000").and_then(|g| g.coordinator()),
            None
        );
        assert_eq!(
            decision_insert_sql(&g),
            "INSERT INTO pgshard_2pc.decisions (gid) VALUES ('pgshard:r1:5:1000:3')"
        );
        let longest = Gid::with_time(&rid(&"x".repeat(MAX_ROUTER_ID)), u64::MAX, u64::MAX)
            .with_coordinator(ShardId(u32::MAX));
        assert!(longest.as_str().len() < 200);
    }

    #[test]
    fn router_ids_are_restricted_to_safe_characters() {
        assert!(RouterId::new("a").is_some());
        assert!(RouterId::new(&"a".repeat(MAX_ROUTER_ID + 1)).is_none());
        for bad in ["", "a:b", "a'b", "a\\b", "a b", "é"] {
            assert!(RouterId::new(bad).is_none(), "{bad:?}");
        }
        let g = RouterId::generate();
        assert_eq!(RouterId::new(g.as_str()), Some(g.clone()));
        assert_ne!(g, RouterId::generate());
    }

    #[test]
    fn decisions_round_trip() {
        for d in [Decision::Committing, Decision::Committed, Decision::Aborted] {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert!(Decision::Committing.is_commit() && !Decision::Aborted.is_commit());
    }
}

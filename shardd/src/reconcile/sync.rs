//! Copying a move's rows ahead of its freeze (SPEC §9), so that the freeze waits only
//! for the last changes instead of the whole copy.
//!
//! `planned → syncing` ([`moves::sync`]) makes every router's multi-shard statements
//! skip the buckets' rows on the target, which does not own them
//! (`pgshard_sql::moving`); once routers route with it, the source publishes the
//! buckets' rows of each distributed table (a publication with a row filter on the
//! bucket expression: PostgreSQL 15 evaluates the built-in hash functions there) and
//! the target subscribes to it: the initial copy runs under the subscription's snapshot
//! and the writes made meanwhile follow. Inside the freeze, once nothing writes the
//! buckets on the source any more (fence, drain), the move waits until the target has
//! confirmed every change up to the source's current WAL position and makes the
//! target's copy durable on the target's synchronous replica (the commit of the move's
//! prepared transaction there). After the flip the subscription is dropped (its
//! workers stop, its slot goes), then the source's rows are deleted, outside the freeze.
//!
//! A table is synced this way only when its replica identity covers the shard key (a
//! row filter must be computable from an UPDATE's or DELETE's old row: otherwise
//! PostgreSQL would refuse those writes on the source while it is published) and the
//! source runs `wal_level = logical`; the others are copied inside the freeze
//! ([`super::moves`]), so no table needs a primary key, only a longer freeze.

use super::moves::{bucket_list, db_err, quote_ident, Dist};
use super::{node_err, ReconcileError, Reconciler};
use crate::runtime::{NodeSpec, SUPERUSER};
use pgshard_catalog::hash::bucket_sql_expr;
use pgshard_catalog::moves::{self, Move};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Bound on the initial copy and catch-up before the freeze; past it the move is
/// rolled back (and tried again in halves).
const SYNC: Duration = Duration::from_secs(3600);

/// Source WAL (bytes) the target may still have to confirm when the freeze starts.
const CLOSE_BEHIND: i64 = 256 * 1024;

/// Bound on the last catch-up, inside the freeze.
const FINAL: Duration = Duration::from_secs(5);

/// How often the sync is checked.
const POLL: Duration = Duration::from_millis(10);

/// Per database, the indexes (into the move's table list) of the tables synced ahead.
pub(super) type Synced = Vec<(String, Vec<usize>)>;

/// The prefix of move `id`'s subscriptions (one per database, `…_<n>`) and so of their
/// replication slots on the source.
fn prefix(id: i64) -> String {
    format!("pgshard_move_{id}_")
}

/// Move `id`'s publication, in each database of the source.
fn publication(id: i64) -> String {
    format!("pgshard_move_{id}")
}

/// A libpq connection-string value, quoted.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL string literal.
fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// True when `synced` names table `i` of database `db`.
pub(super) fn is_synced(synced: &Synced, db: &str, i: usize) -> bool {
    synced
        .iter()
        .any(|(d, tables)| d == db && tables.contains(&i))
}

impl Reconciler {
    /// The tables of `dbs` a move from `source` can sync ahead (see the module doc);
    /// empty when the source does not run `wal_level = logical`.
    pub(super) async fn syncable(
        &self,
        source: &NodeSpec,
        dbs: &[String],
        tables: &[Dist],
    ) -> Result<Synced, ReconcileError> {
        let c = self.connect_db(source, "postgres").await?;
        let level: String = c
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| db_err(&source.name, e))?
            .get(0);
        if level != "logical" {
            tracing::info!(node = %source.name, %level, "no logical decoding: rows are copied inside the freeze");
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for db in dbs {
            let c = self.connect_db(source, db).await?;
            let mut ok = Vec::new();
            for i in self
                .present(&c, tables)
                .await
                .map_err(|e| db_err(&source.name, e))?
            {
                let t = &tables[i];
                let covered: bool = c
                    .query_one(
                        "SELECT c.relkind = 'r' AND CASE c.relreplident
                             WHEN 'f' THEN true
                             WHEN 'n' THEN false
                             ELSE EXISTS (
                                 SELECT 1 FROM pg_index i
                                  WHERE i.indrelid = c.oid
                                    AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                            ELSE i.indisreplident END
                                    AND (SELECT a.attnum FROM pg_attribute a
                                          WHERE a.attrelid = c.oid AND a.attname = $2)
                                        = ANY(i.indkey::int2[]))
                           END
                           FROM pg_class c WHERE c.oid = to_regclass($1)",
                        &[&t.quoted, &t.key],
                    )
                    .await
                    .map_err(|e| db_err(&source.name, e))?
                    .get(0);
                if covered {
                    ok.push(i);
                } else {
                    tracing::info!(table = %t.name, %db, "replica identity does not cover the shard key: copied inside the freeze");
                }
            }
            if !ok.is_empty() {
                out.push((db.clone(), ok));
            }
        }
        Ok(out)
    }

    /// `planned → syncing`, then per database a publication of the buckets' rows on
    /// the source and a subscription to it on the target ([`Reconciler::synced`] tells
    /// when they have copied).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_sync(
        &self,
        client: &mut Client,
        source: &NodeSpec,
        target: &NodeSpec,
        synced: &Synced,
        tables: &[Dist],
        m: &Move,
        buckets: u32,
    ) -> Result<(), ReconcileError> {
        let v = moves::sync(client, m.id).await?;
        // No router may count the target's copy in a multi-shard read.
        self.routers_caught_up(client, v).await;
        let (host, port) = self.cluster.runtime().peer_address(source);
        let list = bucket_list(&m.buckets);
        let publication = publication(m.id);
        for (n, (db, idx)) in synced.iter().enumerate() {
            let items: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let t = &tables[i];
                    let bucket = bucket_sql_expr(&quote_ident(&t.key), t.key_type, buckets);
                    format!("{} WHERE ({bucket} = ANY({list}))", t.quoted)
                })
                .collect();
            let src = self.connect_db(source, db).await?;
            src.batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {}
                   WITH (publish = 'insert, update, delete')",
                items.join(", ")
            ))
            .await
            .map_err(|e| db_err(&source.name, e))?;
            let sub = format!("{}{n}", prefix(m.id));
            let conninfo = format!(
                "host={} port={port} user={SUPERUSER} dbname={} application_name={sub}",
                conn_value(&host),
                conn_value(db)
            );
            // The apply worker commits as a client would (synchronous_commit on): the
            // target confirms only what it flushed.
            let dst = self.connect_db(target, db).await?;
            dst.batch_execute(&format!(
                "CREATE SUBSCRIPTION {sub} CONNECTION {} PUBLICATION {publication}
                   WITH (copy_data = true, synchronous_commit = 'on')",
                literal(&conninfo)
            ))
            .await
            .map_err(|e| db_err(&target.name, e))?;
        }
        self.fault("move-syncing").await;
        Ok(())
    }

    /// True once move `id`'s subscriptions copied every table and the target is close
    /// behind the source; an error when one failed or the copy takes longer than
    /// [`SYNC`] since `started`.
    pub(super) async fn synced(
        &self,
        source: &NodeSpec,
        target: &NodeSpec,
        synced: &Synced,
        id: i64,
        started: Instant,
    ) -> Result<bool, ReconcileError> {
        // A short wait here saves a round for small moves.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.subscriptions_healthy(target, id).await?;
            let mut copying = 0i64;
            for (db, _) in synced {
                let dst = self.connect_db(target, db).await?;
                copying += dst
                    .query_one(
                        "SELECT count(*) FROM pg_subscription_rel r
                           JOIN pg_subscription s ON s.oid = r.srsubid
                          WHERE starts_with(s.subname::text, $1) AND r.srsubstate <> 'r'",
                        &[&prefix(id)],
                    )
                    .await
                    .map_err(|e| db_err(&target.name, e))?
                    .get::<_, i64>(0);
            }
            // Asking the source each round also notices it went away (a failover).
            let behind = self.behind(source, id, None).await?;
            if copying == 0 && behind.is_some_and(|b| b <= CLOSE_BEHIND) {
                return Ok(true);
            }
            if started.elapsed() > SYNC {
                return Err(node_err(
                    &target.name,
                    format!("the move's rows were not copied within {SYNC:?}"),
                ));
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Bytes of source WAL, up to `upto` (default: the current position), that the
    /// slowest of move `id`'s subscriptions has not confirmed; `None` before every slot
    /// has confirmed a position.
    async fn behind(
        &self,
        source: &NodeSpec,
        id: i64,
        upto: Option<&str>,
    ) -> Result<Option<i64>, ReconcileError> {
        let c = self.connect_db(source, "postgres").await?;
        let row = c
            .query_one(
                "SELECT max((coalesce($2::text::pg_lsn, pg_current_wal_lsn())
                             - confirmed_flush_lsn)::int8),
                        count(*) FILTER (WHERE confirmed_flush_lsn IS NULL)
                   FROM pg_replication_slots WHERE starts_with(slot_name::text, $1)",
                &[&prefix(id), &upto],
            )
            .await
            .map_err(|e| db_err(&source.name, e))?;
        let unconfirmed: i64 = row.get(1);
        Ok(row.get::<_, Option<i64>>(0).filter(|_| unconfirmed == 0))
    }

    /// Fail the move when one of its subscriptions could not apply or copy a change
    /// (a conflict, a missing column): it would retry for ever otherwise.
    async fn subscriptions_healthy(
        &self,
        target: &NodeSpec,
        id: i64,
    ) -> Result<(), ReconcileError> {
        let c = self.connect_db(target, "postgres").await?;
        let errors: i64 = c
            .query_one(
                "SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::int8
                   FROM pg_stat_subscription_stats WHERE starts_with(subname::text, $1)",
                &[&prefix(id)],
            )
            .await
            .map_err(|e| db_err(&target.name, e))?
            .get(0);
        if errors > 0 {
            return Err(node_err(
                &target.name,
                format!("the move's subscription failed {errors} time(s) to apply or copy rows (see the server log)"),
            ));
        }
        Ok(())
    }

    /// Inside the freeze, once nothing writes the buckets on the source: wait until the
    /// target confirmed every change up to the source's current WAL position. The
    /// target's copy is then made durable on its synchronous replica by the commit of
    /// the move's prepared transaction there (which has a transaction id,
    /// `super::moves`): the apply worker's commits do not wait for that replica. The
    /// subscriptions are dropped after the flip ([`Reconciler::drop_sync`]), before the
    /// source's rows are deleted.
    pub(super) async fn caught_up(
        &self,
        source: &NodeSpec,
        target: &NodeSpec,
        id: i64,
    ) -> Result<(), ReconcileError> {
        let c = self.connect_db(source, "postgres").await?;
        // The walsender decodes only flushed WAL, and what was written but not flushed
        // (asynchronous commits, hint bits, pruning) would wait for the WAL writer
        // (200 ms and more: 410 ms freezes seen). A commit with a transaction id flushes
        // everything written before it; the flushed position then bounds the catch-up.
        c.batch_execute("SELECT txid_current()")
            .await
            .map_err(|e| db_err(&source.name, e))?;
        let upto: String = c
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(|e| db_err(&source.name, e))?
            .get(0);
        let deadline = Instant::now() + FINAL;
        let started = Instant::now();
        let mut first = None;
        let mut polls = 0u32;
        loop {
            let behind = self.behind(source, id, Some(&upto)).await?;
            first.get_or_insert(behind);
            polls += 1;
            if behind.is_some_and(|b| b <= 0) {
                tracing::debug!(id, ?first, polls, took = ?started.elapsed(), "last catch-up");
                return Ok(());
            }
            self.subscriptions_healthy(target, id).await?;
            if Instant::now() > deadline {
                return Err(node_err(
                    &target.name,
                    format!("the move's last changes were not applied within {FINAL:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Move `id`'s subscriptions on `target` and their databases.
    async fn subscriptions(
        &self,
        target: &NodeSpec,
        id: i64,
    ) -> Result<Vec<(String, String)>, ReconcileError> {
        let c = self.connect_db(target, "postgres").await?;
        let rows = c
            .query(
                "SELECT s.subname::text, d.datname::text
                   FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
                  WHERE starts_with(s.subname::text, $1)",
                &[&prefix(id)],
            )
            .await
            .map_err(|e| db_err(&target.name, e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn drop_publications(&self, source: &NodeSpec, id: i64) -> Result<(), ReconcileError> {
        for db in self.databases(source).await? {
            let c = self.connect_db(source, &db).await?;
            c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", publication(id)))
                .await
                .map_err(|e| db_err(&source.name, e))?;
        }
        Ok(())
    }

    /// Remove every replication object of move `id` (a rollback, or a crash left
    /// them), without needing the source to answer the target: the subscriptions are
    /// disabled, their workers stopped and they are dropped without their slot; then
    /// the slots (the subscriptions' and their table-copy slots) and the publication go
    /// on the source. Safe to repeat.
    pub(super) async fn drop_sync(
        &self,
        source: &NodeSpec,
        target: &NodeSpec,
        id: i64,
    ) -> Result<(), ReconcileError> {
        let subs = self.subscriptions(target, id).await?;
        let mut oids: Vec<String> = Vec::new();
        for (sub, db) in &subs {
            let c = self.connect_db(target, db).await?;
            let err = |e| db_err(&target.name, e);
            let oid: u32 = c
                .query_one("SELECT oid FROM pg_subscription WHERE subname = $1", &[sub])
                .await
                .map_err(err)?
                .get(0);
            oids.push(format!("pg_{oid}_sync_"));
            let sub = quote_ident(sub);
            c.batch_execute(&format!("ALTER SUBSCRIPTION {sub} DISABLE"))
                .await
                .map_err(err)?;
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_subscription
                  WHERE subid = $1 AND pid IS NOT NULL",
                &[&oid],
            )
            .await
            .map_err(err)?;
            c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}"
            ))
            .await
            .map_err(err)?;
        }
        // The slots: their walsenders end with the workers (terminated if not).
        let c = self.connect_db(source, "postgres").await?;
        let err = |e| db_err(&source.name, e);
        let deadline = Instant::now() + FINAL;
        loop {
            let rows = c
                .query(
                    "SELECT slot_name::text, active_pid FROM pg_replication_slots
                      WHERE starts_with(slot_name::text, $1)
                         OR EXISTS (SELECT 1 FROM unnest($2::text[]) p
                                     WHERE starts_with(slot_name::text, p))",
                    &[&prefix(id), &oids],
                )
                .await
                .map_err(err)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let (slot, pid): (String, Option<i32>) = (r.get(0), r.get(1));
                let sql = match pid {
                    Some(_) => {
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                                 WHERE slot_name = $1 AND active_pid IS NOT NULL"
                    }
                    None => {
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                              WHERE slot_name = $1 AND active_pid IS NULL"
                    }
                };
                // A slot becoming active again in between is tried next round.
                let _ = c.execute(sql, &[&slot]).await;
            }
            if Instant::now() > deadline {
                return Err(node_err(
                    &source.name,
                    format!("the replication slots of move {id} are still in use"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        self.drop_publications(source, id).await
    }
}

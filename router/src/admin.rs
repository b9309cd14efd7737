//! The admin console (SPEC §12): a client that connects to the database `pgshard` gets
//! `SHOW SHARDS | NODES | BUCKETS | TABLES | POOLS | CLIENTS | STATS | TRANSACTIONS` as ordinary result
//! sets (text columns, CommandComplete `SHOW`). Simple query protocol only.
//!
//! Everything but `SHOW TRANSACTIONS` answers from the router's memory. `SHOW
//! TRANSACTIONS` asks the cluster itself: the prepared transactions with a pgshard GID
//! on every shard primary (`pg_prepared_xacts`) next to their decisions (rows in the
//! coordinator shard's `pgshard_2pc.decisions`, or records in the catalog), so it shows what a crashed router left in doubt, whichever router that was
//! (shardd's recovery finishes them; see `shardd::recovery`).

use crate::protocol::backend::{
    encode_backend_key, encode_command_complete, encode_data_row, encode_empty, encode_error,
    encode_parameter_status, encode_ready, encode_row_description_text, encode_shutdown_fatal,
};
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::FrameReader;
use crate::server::RouterCtx;
use bytes::BytesMut;
use futures::future::join_all;
use pgshard_catalog::twopc::{Decision, Gid, GID_PREFIX};
use pgshard_catalog::{KeyType, ShardId, TableKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// ParameterStatus, BackendKeyData and ReadyForQuery for an admin session.
pub fn greeting(pid: i32, secret: i32) -> BytesMut {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (pgshard admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        encode_parameter_status(&mut out, k, v);
    }
    encode_backend_key(&mut out, pid, secret);
    encode_ready(&mut out, b'I');
    out
}

/// A result set: column names and rows.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

pub async fn serve<R, W>(
    ctx: Arc<RouterCtx>,
    mut reader: FrameReader<R>,
    mut w: W,
    mut out: BytesMut,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        let frame = tokio::select! {
            _ = shutdown.cancelled() => {
                encode_shutdown_fatal(&mut out);
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    w.write_all(&out),
                )
                .await;
                return;
            }
            f = reader.read_frame() => match f {
                Ok(Some(f)) => f,
                _ => return,
            },
        };
        match FrontendMessage::decode(&frame) {
            Ok(FrontendMessage::Query { sql }) => {
                answer(&ctx, sql, &mut out).await;
                encode_ready(&mut out, b'I');
            }
            Ok(FrontendMessage::Terminate) => return,
            Ok(FrontendMessage::Sync) => encode_ready(&mut out, b'I'),
            Ok(_) => {
                encode_error(
                    &mut out,
                    b'E',
                    "ERROR",
                    "0A000",
                    "the admin console supports the simple query protocol only",
                    None,
                    None,
                );
            }
            Err(e) => {
                encode_error(&mut out, b'E', "FATAL", "08P01", &e.to_string(), None, None);
                let _ = w.write_all(&out).await;
                return;
            }
        }
    }
}

async fn answer(ctx: &RouterCtx, sql: &str, out: &mut BytesMut) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    if words.is_empty() {
        encode_empty(out, b'I');
        return;
    }
    let table = match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["show", what] => match *what {
            "shards" => shards(ctx),
            "nodes" => nodes(ctx),
            "tables" => tables(ctx),
            "pools" => pools(ctx),
            "clients" => clients(ctx),
            "buckets" => buckets(ctx),
            "stats" => stats(ctx),
            "transactions" => match transactions(ctx).await {
                Ok((table, warnings)) => {
                    for w in warnings {
                        encode_error(out, b'N', "WARNING", "01000", &w, None, None);
                    }
                    table
                }
                Err(message) => {
                    encode_error(out, b'E', "ERROR", "55000", &message, None, None);
                    return;
                }
            },
            other => {
                encode_error(
                    out,
                    b'E',
                    "ERROR",
                    "0A000",
                    &format!("unknown admin command SHOW {}", other.to_uppercase()),
                    None,
                    Some("Try SHOW SHARDS, SHOW NODES, SHOW BUCKETS, SHOW TABLES, SHOW POOLS, SHOW CLIENTS, SHOW STATS or SHOW TRANSACTIONS."),
                );
                return;
            }
        },
        _ => {
            encode_error(
                out,
                b'E',
                "ERROR",
                "42601",
                "syntax error in admin command",
                None,
                Some("The admin console accepts SHOW SHARDS, SHOW NODES, SHOW BUCKETS, SHOW TABLES, SHOW POOLS, SHOW CLIENTS, SHOW STATS and SHOW TRANSACTIONS."),
            );
            return;
        }
    };
    encode_row_description_text(out, &table.columns);
    for row in &table.rows {
        encode_data_row(out, row);
    }
    encode_command_complete(out, "SHOW");
}

fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

fn shards(ctx: &RouterCtx) -> Table {
    let c = ctx.catalog.current();
    let rows = c
        .shard_ids()
        .into_iter()
        .map(|id| {
            let shard = c.shard(id);
            let state = shard.map(|x| x.state.clone());
            let buckets = c.bucket_map.iter().filter(|b| **b == id).count();
            let primary = c.primary(id).map(|n| format!("{}:{}", n.host, n.port));
            let replicas = c.replicas(id).count();
            vec![
                s(id),
                state,
                s(buckets),
                primary,
                s(replicas),
                s(id == c.local_shard),
                shard.map(|x| x.term.to_string()),
                shard.map(|x| x.status.to_string()),
                shard.and_then(|x| x.status_reason.clone()),
                shard.map(|x| x.failover_paused.to_string()),
                shard.map(|x| x.failovers.to_string()),
                shard.and_then(|x| x.last_failover_at.clone()),
                shard.and_then(|x| x.last_failover_ms.map(|m| m.to_string())),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "shard",
            "state",
            "buckets",
            "primary",
            "replicas",
            "local",
            "term",
            "status",
            "status_reason",
            "failover_paused",
            "failovers",
            "last_failover_at",
            "last_failover_ms",
        ],
        rows,
    }
}

/// The bucket map as runs of consecutive buckets on the same shard, with the shard's
/// primary (one row per run: 1024 buckets on 2 shards are a handful of rows), and what
/// a move is doing with the run: `frozen, 1 → 3` (statements for it are held) or
/// `moved from 1` (flipped; the source's copy is being deleted).
fn buckets(ctx: &RouterCtx) -> Table {
    let c = ctx.catalog.current();
    let moving = |b: usize| -> Option<String> {
        let bucket = pgshard_catalog::BucketId(b as u32);
        let m = c.moving.iter().find(|m| m.buckets.contains(&bucket));
        match m {
            Some(m) if c.is_frozen(bucket) => Some(format!("frozen, {} → {}", m.source, m.target)),
            Some(m) if c.shard_of_bucket(bucket) == Some(m.target) => {
                Some(format!("moved from {}", m.source))
            }
            Some(m) => Some(format!("moving, {} → {}", m.source, m.target)),
            None if c.is_frozen(bucket) => Some("frozen".into()),
            None => None,
        }
    };
    let mut rows = Vec::new();
    let mut start = 0usize;
    for i in 1..=c.bucket_map.len() {
        if i == c.bucket_map.len()
            || c.bucket_map[i] != c.bucket_map[start]
            || moving(i) != moving(start)
        {
            let shard = c.bucket_map[start];
            rows.push(vec![
                s(start),
                s(i - 1),
                s(i - start),
                s(shard),
                c.primary(shard).map(|n| n.name.clone()),
                Some(moving(start).unwrap_or_default()),
            ]);
            start = i;
        }
    }
    Table {
        columns: vec![
            "first_bucket",
            "last_bucket",
            "buckets",
            "shard",
            "primary",
            "moving",
        ],
        rows,
    }
}

/// Counters since the router started: statements by where they ran, refusals, and how
/// transactions spanning shards ended.
fn stats(ctx: &RouterCtx) -> Table {
    let mut rows: Vec<(&str, u64)> = ctx.stats.rows();
    rows.insert(1, ("clients_connected", ctx.clients.list().len() as u64));
    if let Some(t) = &ctx.twopc {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        rows.push((
            "transactions_spanning_one_phase_commit",
            get(&t.coord.stats.one_phase),
        ));
        rows.push((
            "transactions_spanning_two_phase_commit",
            get(&t.coord.stats.two_phase),
        ));
        rows.push((
            "transactions_spanning_rolled_back",
            get(&t.coord.stats.rolled_back),
        ));
    }
    Table {
        columns: vec!["stat", "value"],
        rows: rows
            .into_iter()
            .map(|(name, value)| vec![s(name), s(value)])
            .collect(),
    }
}

fn nodes(ctx: &RouterCtx) -> Table {
    let c = ctx.catalog.current();
    let rows = c
        .nodes
        .iter()
        .map(|n| {
            vec![
                s(n.id),
                s(&n.name),
                n.shard.map(|x| x.to_string()),
                s(n.role),
                s(&n.host),
                s(n.port),
                s(n.state),
                n.lag_bytes.map(|l| l.to_string()),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node",
            "name",
            "shard",
            "role",
            "host",
            "port",
            "state",
            "lag_bytes",
        ],
        rows,
    }
}

fn tables(ctx: &RouterCtx) -> Table {
    let c = ctx.catalog.current();
    let rows = c
        .tables
        .iter()
        .map(|t| match &t.kind {
            TableKind::Distributed {
                shard_key,
                key_type,
                colocation,
            } => vec![
                s(&t.name),
                s("distributed"),
                s(shard_key),
                s(KeyType::sql_name(*key_type)),
                s(colocation),
            ],
            TableKind::Reference => vec![s(&t.name), s("reference"), None, None, None],
        })
        .collect();
    Table {
        columns: vec!["table", "kind", "shard_key", "key_type", "colocation"],
        rows,
    }
}

fn pools(ctx: &RouterCtx) -> Table {
    let c = ctx.catalog.current();
    let rows = ctx
        .pools
        .stats()
        .into_iter()
        .map(|p| {
            let node = c.nodes.iter().find(|n| n.id == p.key.node);
            let mut row = vec![
                s(p.key.node),
                node.map(|n| n.name.clone()),
                node.and_then(|n| n.shard).map(|x| x.to_string()),
                s(format!("{}:{}", p.key.host, p.key.port)),
                s(&p.key.user),
                s(&p.key.database),
                s(p.size),
                s(p.idle),
                s(p.in_use),
                s(p.waiting),
                s(p.waits),
                s(p.wait_micros / 1000),
                s(p.over_cap),
                s(p.opened),
            ];
            row.extend(read_columns(ctx, &c, p.key.node));
            row
        })
        .collect();
    Table {
        columns: vec![
            "node",
            "name",
            "shard",
            "addr",
            "user",
            "database",
            "size",
            "idle",
            "in_use",
            "waiting",
            "waits",
            "wait_ms",
            "over_cap",
            "opened",
            "role",
            "reads",
            "reads_in_flight",
            "skipped_lag",
            "bans",
            "lag_bytes",
            "lag_ms",
            "banned",
        ],
        rows,
    }
}

/// The read-routing columns of `SHOW POOLS` for a node (SPEC §8, §12): its role now,
/// reads routed to it by this router, in flight, skipped for lag, bans, the lag last
/// probed, and whether it is banned now. The read counters are per node (all users).
fn read_columns(
    ctx: &RouterCtx,
    catalog: &pgshard_catalog::Catalog,
    id: pgshard_catalog::NodeId,
) -> Vec<Option<String>> {
    use std::sync::atomic::Ordering::Relaxed;
    let n = ctx.reads.node(id);
    let o = n.observed();
    let banned = o
        .banned_until
        .is_some_and(|t| t > std::time::Instant::now());
    vec![
        s(crate::reads::role_of(catalog, id)),
        s(n.served.load(Relaxed)),
        s(n.in_flight.load(Relaxed)),
        s(n.skipped_lag.load(Relaxed)),
        s(n.bans.load(Relaxed)),
        o.lag_bytes.map(|v| v.to_string()),
        o.lag_time().map(|d| d.as_millis().to_string()),
        s(banned),
    ]
}

fn clients(ctx: &RouterCtx) -> Table {
    let rows = ctx
        .clients
        .list()
        .into_iter()
        .map(|e| {
            let a = e.activity();
            let since = e
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let age = SystemTime::now()
                .duration_since(e.connected_at)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            vec![
                s(e.pid),
                s(&e.user),
                s(&e.database),
                e.addr.map(|a| a.to_string()),
                s(a.state),
                a.shard.map(|x| x.to_string()),
                s(since),
                s(age),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "pid",
            "user",
            "database",
            "addr",
            "state",
            "shard",
            "connected_at",
            "age_seconds",
        ],
        rows,
    }
}

/// Bound on connecting to, and querying, each node for `SHOW TRANSACTIONS`.
const TRANSACTIONS_TIMEOUT: Duration = Duration::from_secs(5);

/// One prepared transaction of ours, as a shard primary lists it.
struct PreparedRow {
    gid: String,
    shard: ShardId,
    node: String,
    database: String,
    prepared_at: String,
    age_seconds: i64,
}

/// `SHOW TRANSACTIONS`: every prepared transaction with a pgshard GID on every shard
/// primary, with what its decision (row on its coordinator shard, or record in the
/// catalog) says: `commit` (recovery commits it),
/// `rollback` (recovery rolls it back) or `undecided` (no record: its coordinator may
/// still be running; recovery rolls it back once older than its bound). Shards that
/// cannot be listed are named in WARNING notices and the rest is still shown.
///
/// It connects with the credentials of the router's commit log (the catalog
/// connection), which must be allowed to read `pg_prepared_xacts` on the shards.
async fn transactions(ctx: &RouterCtx) -> Result<(Table, Vec<String>), String> {
    let Some(twopc) = ctx.twopc.as_ref() else {
        return Err(
            "SHOW TRANSACTIONS needs the router's catalog connection (this router has a fixed catalog)"
                .into(),
        );
    };
    let records = tokio::time::timeout(TRANSACTIONS_TIMEOUT, twopc.log.records())
        .await
        .map_err(|_| "timed out reading the commit records from the catalog".to_string())?
        .map_err(|e| format!("cannot read the commit records: {e}"))?;
    let decisions: HashMap<String, Decision> =
        records.into_iter().map(|r| (r.gid, r.decision)).collect();
    let base = twopc.log.connection_config();
    let catalog = ctx.catalog.current();
    let listings = join_all(catalog.shard_ids().into_iter().filter_map(|shard| {
        let node = catalog.primary(shard)?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&node.host)
            .port(node.port)
            .dbname("postgres")
            .application_name("pgshard-admin")
            .connect_timeout(TRANSACTIONS_TIMEOUT);
        if let Some(user) = base.get_user() {
            config.user(user);
        }
        if let Some(password) = base.get_password() {
            config.password(password);
        }
        let name = node.name.clone();
        Some(async move {
            let listed =
                tokio::time::timeout(TRANSACTIONS_TIMEOUT, list_prepared(config, shard, &name))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
            listed.map_err(|e| {
                format!("cannot list prepared transactions on shard {shard} ({name}): {e}")
            })
        })
    }))
    .await;
    let mut warnings = Vec::new();
    let mut rows = Vec::new();
    for listing in listings {
        match listing {
            Ok(prepared) => rows.extend(prepared),
            Err(w) => {
                tracing::warn!(error = %w, "SHOW TRANSACTIONS");
                warnings.push(w);
            }
        }
    }
    // Transactions coordinated on a shard: their decision rows, read on it.
    let mut wanted: HashMap<(ShardId, String), Vec<String>> = HashMap::new();
    for p in &rows {
        if let Some(c) = Gid::parse(&p.gid).and_then(|g| g.coordinator()) {
            wanted
                .entry((c, p.database.clone()))
                .or_default()
                .push(p.gid.clone());
        }
    }
    let mut decisions = decisions;
    let looked_up = join_all(wanted.into_iter().filter_map(|((shard, db), gids)| {
        let node = catalog.primary(shard)?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&node.host)
            .port(node.port)
            .dbname(&db)
            .application_name("pgshard-admin")
            .connect_timeout(TRANSACTIONS_TIMEOUT);
        if let Some(user) = base.get_user() {
            config.user(user);
        }
        if let Some(password) = base.get_password() {
            config.password(password);
        }
        let name = node.name.clone();
        Some(async move {
            tokio::time::timeout(TRANSACTIONS_TIMEOUT, decision_rows(config, gids))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
                .map_err(|e| {
                    format!("cannot read the decisions on shard {shard} ({name}, {db}): {e}")
                })
        })
    }))
    .await;
    for found in looked_up {
        match found {
            Ok(found) => decisions.extend(found),
            Err(w) => {
                tracing::warn!(error = %w, "SHOW TRANSACTIONS");
                warnings.push(w);
            }
        }
    }
    let rows = rows
        .into_iter()
        .map(|p| {
            let decision = match decisions.get(&p.gid) {
                Some(d) if d.is_commit() => "commit",
                Some(_) => "rollback",
                None => "undecided",
            };
            vec![
                s(p.gid),
                s(p.shard),
                s(p.node),
                s(p.database),
                s(p.prepared_at),
                s(p.age_seconds),
                s(decision),
            ]
        })
        .collect();
    Ok((
        Table {
            columns: vec![
                "gid",
                "shard",
                "node",
                "database",
                "prepared_at",
                "age_seconds",
                "decision",
            ],
            rows,
        },
        warnings,
    ))
}

/// The decision rows of `gids` in one coordinator shard's database (committed ones
/// only: a coordinator's uncommitted row is invisible, so its transaction is undecided).
async fn decision_rows(
    config: tokio_postgres::Config,
    gids: Vec<String>,
) -> Result<Vec<(String, Decision)>, String> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let found = client
        .query(
            "SELECT gid, aborted FROM pgshard_2pc.decisions WHERE gid = ANY($1)",
            &[&gids],
        )
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = conn.await;
    Ok(found?
        .iter()
        .map(|r| {
            let decision = if r.get::<_, bool>(1) {
                Decision::Aborted
            } else {
                Decision::Committing
            };
            (r.get(0), decision)
        })
        .collect())
}

/// The prepared transactions with a pgshard GID on one shard primary, oldest first.
async fn list_prepared(
    config: tokio_postgres::Config,
    shard: ShardId,
    node: &str,
) -> Result<Vec<PreparedRow>, String> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let listed = client
        .query(
            "SELECT gid, database::text, prepared::text,
                    GREATEST(floor(extract(epoch FROM now() - prepared)), 0)::int8
               FROM pg_prepared_xacts
              WHERE starts_with(gid, $1)
              ORDER BY prepared, gid",
            &[&GID_PREFIX],
        )
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = conn.await;
    Ok(listed?
        .iter()
        .map(|r| PreparedRow {
            gid: r.get(0),
            shard,
            node: node.to_string(),
            database: r.get(1),
            prepared_at: r.get(2),
            age_seconds: r.get(3),
        })
        .collect())
}

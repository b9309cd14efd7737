//! The admin console (SPEC §12): a client that connects to the database `pgshard` gets
//! `SHOW SHARDS | NODES | TABLES | POOLS | CLIENTS` as ordinary result sets (text columns,
//! CommandComplete `SHOW`). Simple query protocol only.

use crate::protocol::backend::{
    encode_backend_key, encode_command_complete, encode_data_row, encode_empty, encode_error,
    encode_parameter_status, encode_ready, encode_row_description_text,
};
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::FrameReader;
use crate::server::RouterCtx;
use bytes::BytesMut;
use pgshard_catalog::{KeyType, TableKind};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
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
            _ = shutdown.cancelled() => return,
            f = reader.read_frame() => match f {
                Ok(Some(f)) => f,
                _ => return,
            },
        };
        match FrontendMessage::decode(&frame) {
            Ok(FrontendMessage::Query { sql }) => {
                answer(&ctx, sql, &mut out);
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

fn answer(ctx: &RouterCtx, sql: &str, out: &mut BytesMut) {
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
            other => {
                encode_error(
                    out,
                    b'E',
                    "ERROR",
                    "0A000",
                    &format!("unknown admin command SHOW {}", other.to_uppercase()),
                    None,
                    Some("Try SHOW SHARDS, SHOW NODES, SHOW TABLES, SHOW POOLS or SHOW CLIENTS."),
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
                Some("The admin console accepts SHOW SHARDS, SHOW NODES, SHOW TABLES, SHOW POOLS and SHOW CLIENTS."),
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
            let state = c
                .shards
                .iter()
                .find(|x| x.id == id)
                .map(|x| x.state.clone());
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
            ]
        })
        .collect();
    Table {
        columns: vec!["shard", "state", "buckets", "primary", "replicas", "local"],
        rows,
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
            vec![
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
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node", "name", "shard", "addr", "user", "database", "size", "idle", "in_use",
            "waiting",
        ],
        rows,
    }
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

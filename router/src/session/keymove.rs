//! Moving the rows an UPDATE of the shard key sent to another shard's buckets (issue
//! 15, [`pgshard_sql::KeyMove`]). The UPDATE has run in place on every shard, inside
//! the write's distributed transaction, and returned each updated row's `ctid` and new
//! bucket; here the rows whose bucket another shard owns are deleted where they are
//! and copied into the table on their owner, on the same transactions' backends, so
//! the two-phase commit that follows makes the move atomic.
//!
//! The moved rows pass through the router as COPY text (PostgreSQL's own output and
//! input functions, exact for every type), at most `router.max_intermediate_bytes` of
//! them (SQLSTATE 54000 beyond). Before any row moves, one shard is asked what would
//! make a delete and an insert differ from the UPDATE (triggers, foreign keys
//! referencing the table, rules, row-level security, inheritance): 0A000 naming it,
//! and the caller rolls the statement back.

use super::error::SessionError;
use crate::backend::BackendConn;
use crate::protocol::backend::{decode_data_row_text, decode_ready_status};
use crate::protocol::frontend::{encode_copy_done, encode_query};
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use pgshard_catalog::{Catalog, ShardId};
use pgshard_sql::{KeyMove, PlanError};
use std::collections::BTreeMap;

/// Moves the rows each shard's UPDATE returned (`returned`: per shard, its DataRows of
/// `ctid, bucket`) whose bucket `catalog` gives to another shard. `conns` holds a
/// backend inside the write's transaction for every shard.
pub(crate) async fn move_rows(
    conns: &mut [(ShardId, &mut BackendConn)],
    returned: &[(ShardId, &[Frame])],
    m: &KeyMove,
    catalog: &Catalog,
    limit: u64,
) -> Result<(), SessionError> {
    if !catalog.moving.is_empty() {
        return Err(SessionError::Unsupported(
            m.refusal("buckets being moved between shards"),
        ));
    }
    // (from, to) -> the rows' ctids.
    let mut moves: BTreeMap<(ShardId, ShardId), Vec<String>> = BTreeMap::new();
    for (shard, rows) in returned {
        for row in rows.iter() {
            let fields = decode_data_row_text(row)?;
            let (Some(Some(ctid)), bucket) = (fields.first(), fields.get(1)) else {
                return Err(SessionError::Unsupported(
                    m.refusal("a row without its address"),
                ));
            };
            let Some(Some(bucket)) = bucket else {
                return Err(SessionError::Plan(PlanError::NullShardKey {
                    table: m.table_name.clone(),
                    column: m.key.clone(),
                }));
            };
            let owner = bucket
                .parse::<usize>()
                .ok()
                .and_then(|b| catalog.bucket_map.get(b).copied())
                .ok_or_else(|| {
                    SessionError::Unsupported(m.refusal("a bucket the catalog does not know"))
                })?;
            if owner != *shard {
                moves.entry((*shard, owner)).or_default().push(ctid.clone());
            }
        }
    }
    let Some(&(first, _)) = moves.keys().next() else {
        return Ok(());
    };
    let columns = {
        let conn = conn_of(conns, first)?;
        let rows = conn
            .query_text(&m.guard_sql())
            .await
            .map_err(|e| SessionError::from_backend(first, e))?;
        let row = rows.into_iter().next().unwrap_or_default();
        if let Some(Some(problem)) = row.first() {
            return Err(SessionError::Unsupported(m.refusal(problem)));
        }
        match row.get(1) {
            Some(Some(c)) => c.clone(),
            _ => return Err(SessionError::Unsupported(m.refusal("no columns to copy"))),
        }
    };
    let mut moved: u64 = 0;
    for ((from, to), ctids) in &moves {
        let data = take(conn_of(conns, *from)?, *from, &m.take_sql(&columns, ctids)).await?;
        moved += data.iter().map(|d| d.len() as u64).sum::<u64>();
        if moved > limit {
            return Err(SessionError::IntermediateTooLarge { limit });
        }
        put(conn_of(conns, *to)?, *to, &m.put_sql(&columns), &data).await?;
        tracing::debug!(%from, %to, rows = ctids.len(), "rows moved to their new key's shard");
    }
    Ok(())
}

fn conn_of<'a>(
    conns: &'a mut [(ShardId, &mut BackendConn)],
    shard: ShardId,
) -> Result<&'a mut BackendConn, SessionError> {
    conns
        .iter_mut()
        .find(|(s, _)| *s == shard)
        .map(|(_, c)| &mut **c)
        .ok_or(SessionError::LostBackend { shard })
}

/// Reads `conn` up to its ReadyForQuery; the first ErrorResponse is returned as the
/// shard's error.
async fn settle(
    conn: &mut BackendConn,
    shard: ShardId,
    mut each: impl FnMut(&Frame),
) -> Result<(), SessionError> {
    let mut error = None;
    loop {
        let f = conn.read().await.map_err(|e| {
            conn.broken = true;
            SessionError::from_backend(shard, e)
        })?;
        match f.tag() {
            b'Z' => {
                conn.status = decode_ready_status(&f).unwrap_or(b'E');
                break;
            }
            b'E' => {
                error.get_or_insert(f);
            }
            b'S' => conn.note_parameter(&f),
            _ => each(&f),
        }
    }
    match error {
        Some(f) => Err(SessionError::from_backend(shard, conn.server_error(f))),
        None => Ok(()),
    }
}

/// Runs a `COPY (DELETE … RETURNING …) TO STDOUT` and returns its CopyData payloads.
async fn take(
    conn: &mut BackendConn,
    shard: ShardId,
    sql: &str,
) -> Result<Vec<Vec<u8>>, SessionError> {
    encode_query(&mut conn.out, sql);
    conn.unnamed = None;
    conn.status = b'T';
    conn.flush().await.map_err(|e| {
        conn.broken = true;
        SessionError::from_backend(shard, e)
    })?;
    let mut data = Vec::new();
    settle(conn, shard, |f| {
        if f.tag() == b'd' {
            data.push(f.body().to_vec());
        }
    })
    .await?;
    Ok(data)
}

/// Runs `COPY t (columns) FROM STDIN` with `data` as its rows.
async fn put(
    conn: &mut BackendConn,
    shard: ShardId,
    sql: &str,
    data: &[Vec<u8>],
) -> Result<(), SessionError> {
    let lost = |conn: &mut BackendConn, e| {
        conn.broken = true;
        SessionError::from_backend(shard, e)
    };
    encode_query(&mut conn.out, sql);
    conn.unnamed = None;
    conn.status = b'T';
    conn.flush().await.map_err(|e| lost(conn, e))?;
    // Up to CopyInResponse, or the error that replaces it.
    loop {
        let f = conn.read().await.map_err(|e| lost(conn, e))?;
        match f.tag() {
            b'G' => break,
            b'E' => {
                let error = conn.server_error(f);
                settle(conn, shard, |_| {}).await?;
                return Err(SessionError::from_backend(shard, error));
            }
            b'S' => conn.note_parameter(&f),
            _ => {}
        }
    }
    for d in data {
        put_copy_data(&mut conn.out, d);
        if conn.out.len() >= 256 * 1024 {
            conn.flush().await.map_err(|e| lost(conn, e))?;
        }
    }
    encode_copy_done(&mut conn.out);
    conn.flush().await.map_err(|e| lost(conn, e))?;
    settle(conn, shard, |_| {}).await
}

fn put_copy_data(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'd');
    out.put_u32((data.len() + 4) as u32);
    out.extend_from_slice(data);
}

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
//! and the caller rolls the statement back. The client's RETURNING columns follow the
//! address and bucket in each row; [`strip_two`] takes those two off.

use super::error::SessionError;
use crate::backend::BackendConn;
use crate::protocol::backend::decode_ready_status;
use crate::protocol::frontend::{encode_copy_done, encode_query};
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use pgshard_catalog::{Catalog, ShardId};
use pgshard_sql::{KeyMove, PlanError};
use std::collections::BTreeMap;

/// The result formats a shard's UPDATE is bound with for a client that asked for
/// `client` (Bind's codes: none, one for all, or one per RETURNING column), and
/// whether the row's address and bucket then come back in binary.
pub(crate) fn shard_formats(m: &KeyMove, client: &[i16]) -> (Vec<i16>, bool) {
    match client {
        _ if !m.returning => (Vec::new(), false),
        [] => (Vec::new(), false),
        [one] => (vec![*one], *one == 1),
        many => {
            let mut f = vec![0, 0];
            f.extend_from_slice(many);
            (f, false)
        }
    }
}

/// A DataRow's fields (`None`: NULL).
fn fields(row: &Frame) -> Result<Vec<Option<&[u8]>>, SessionError> {
    let bad = || SessionError::Unsupported("a malformed row from a shard".into());
    let body = row.body();
    let count = body.get(..2).ok_or_else(bad)?;
    let mut out = Vec::new();
    let mut at = 2;
    for _ in 0..u16::from_be_bytes([count[0], count[1]]) {
        let len = body.get(at..at + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            out.push(Some(body.get(at..end).ok_or_else(bad)?));
            at = end;
        }
    }
    Ok(out)
}

/// A row's address (`ctid`) as text, from its text or binary form.
fn ctid_text(field: &[u8], binary: bool) -> Option<String> {
    if !binary {
        return std::str::from_utf8(field).ok().map(str::to_owned);
    }
    let [b0, b1, b2, b3, o0, o1] = field else {
        return None;
    };
    let block = u32::from_be_bytes([*b0, *b1, *b2, *b3]);
    let offset = u16::from_be_bytes([*o0, *o1]);
    Some(format!("({block},{offset})"))
}

/// A bucket number from its text or binary (int4) form.
fn bucket_number(field: &[u8], binary: bool) -> Option<usize> {
    if binary {
        let [a, b, c, d] = field else { return None };
        usize::try_from(i32::from_be_bytes([*a, *b, *c, *d])).ok()
    } else {
        std::str::from_utf8(field).ok()?.parse().ok()
    }
}

/// `frame` (a DataRow or RowDescription) without its first two columns, the address
/// and bucket the client did not ask for.
pub(crate) fn strip_two(frame: &Frame) -> Result<Frame, SessionError> {
    let bad = || SessionError::Unsupported("a malformed row from a shard".into());
    let body = frame.body();
    let count = body.get(..2).ok_or_else(bad)?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut at = 2;
    for _ in 0..2 {
        match frame.tag() {
            b'D' => {
                let len = body.get(at..at + 4).ok_or_else(bad)?;
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                at += 4 + usize::try_from(len).unwrap_or(0);
            }
            b'T' => {
                let name = body.get(at..).ok_or_else(bad)?;
                let nul = name.iter().position(|b| *b == 0).ok_or_else(bad)?;
                at += nul + 1 + 18;
            }
            _ => return Err(bad()),
        }
    }
    let rest = body.get(at..).ok_or_else(bad)?;
    let mut out = BytesMut::with_capacity(rest.len() + 7);
    out.put_u8(frame.tag());
    out.put_u32((rest.len() + 6) as u32);
    out.put_u16(count.checked_sub(2).ok_or_else(bad)?);
    out.extend_from_slice(rest);
    Frame::from_bytes(out.freeze()).map_err(SessionError::from)
}

/// Moves the rows each shard's UPDATE returned (`returned`: per shard, its DataRows
/// starting with `ctid, bucket`, in binary when `binary`) whose bucket `catalog` gives
/// to another shard. `conns` holds a backend inside the write's transaction for every
/// shard.
pub(crate) async fn move_rows(
    conns: &mut [(ShardId, &mut BackendConn)],
    returned: &[(ShardId, &[Frame])],
    m: &KeyMove,
    catalog: &Catalog,
    limit: u64,
    binary: bool,
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
            let fields = fields(row)?;
            let ctid = match fields.first() {
                Some(Some(c)) => ctid_text(c, binary),
                _ => None,
            };
            let Some(ctid) = ctid else {
                return Err(SessionError::Unsupported(
                    m.refusal("a row without its address"),
                ));
            };
            let Some(Some(bucket)) = fields.get(1) else {
                return Err(SessionError::Plan(PlanError::NullShardKey {
                    table: m.table_name.clone(),
                    column: m.key.clone(),
                }));
            };
            let owner = bucket_number(bucket, binary)
                .and_then(|b| catalog.bucket_map.get(b).copied())
                .ok_or_else(|| {
                    SessionError::Unsupported(m.refusal("a bucket the catalog does not know"))
                })?;
            if owner != *shard {
                moves.entry((*shard, owner)).or_default().push(ctid);
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
pub(super) async fn take(
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
pub(super) async fn put(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(values: &[Option<&[u8]>]) -> Frame {
        let mut body = BytesMut::new();
        body.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.extend_from_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        let mut out = BytesMut::new();
        out.put_u8(b'D');
        out.put_u32(body.len() as u32 + 4);
        out.extend_from_slice(&body);
        Frame::from_bytes(out.freeze()).expect("a frame")
    }

    #[test]
    fn rows_lose_their_address_and_bucket() {
        let row = data_row(&[Some(b"(0,1)"), Some(b"17"), Some(b"x"), None]);
        let f = fields(&row).expect("fields");
        assert_eq!(
            ctid_text(f[0].expect("ctid"), false).as_deref(),
            Some("(0,1)")
        );
        assert_eq!(bucket_number(f[1].expect("bucket"), false), Some(17));
        let stripped = strip_two(&row).expect("stripped");
        assert_eq!(stripped.raw(), data_row(&[Some(b"x"), None]).raw());
        // Binary forms: tid is block (u32) and offset (u16), the bucket an int4.
        assert_eq!(
            ctid_text(&[0, 0, 1, 0, 0, 9], true).as_deref(),
            Some("(256,9)")
        );
        assert_eq!(bucket_number(&[0, 0, 3, 255], true), Some(1023));
        assert!(strip_two(&data_row(&[Some(b"(0,1)")])).is_err());
    }

    #[test]
    fn result_formats_keep_the_address_readable() {
        let m = KeyMove {
            table: "\"t\"".into(),
            key: "id".into(),
            table_name: "t".into(),
            returning: true,
        };
        assert_eq!(shard_formats(&m, &[]), (vec![], false));
        assert_eq!(shard_formats(&m, &[1]), (vec![1], true));
        assert_eq!(shard_formats(&m, &[1, 0]), (vec![0, 0, 1, 0], false));
        let m = KeyMove {
            returning: false,
            ..m
        };
        assert_eq!(shard_formats(&m, &[1]), (vec![], false));
    }
}

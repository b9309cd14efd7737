//! Execution of fan-out plans (SPEC §5 rule 2): merging the answers of several shards
//! into the one answer PostgreSQL would give. Pure protocol work on frames, no
//! sockets: the session hands in one [`ShardStream`] per shard (already sent the
//! shard query) and a client writer, and calls [`execute`].
//!
//! - `Stream` plans ([`pgshard_sql::StreamMerge`]): one RowDescription (hidden columns
//!   removed), then rows — shard after shard when unsorted (every shard computes in
//!   parallel; the router reads one socket at a time, so memory stays bounded), or a
//!   k-way merge holding one row per shard, comparing text values as PostgreSQL orders
//!   them ([`value`]) — OFFSET/LIMIT applied, then `SELECT n`.
//! - `Finish` plans ([`pgshard_sql::FinishPlan`]): the shard rows are collected and
//!   rendered into a finishing query; [`execute`] returns it as [`Outcome::Finish`]
//!   and the session runs it on any one shard and relays that answer unchanged.
//!
//! The first shard error is forwarded to the client as is ([`Outcome::ShardError`]);
//! the session then cancels and drains the other shards (those listed as
//! `unfinished`). Sort keys are compared in the format the client asked for (text, or
//! binary through [`value::compare_binary`]); every column of a finishing step must be
//! in text format (the session asks the shards for text there).

pub mod value;

use crate::protocol::frame::{begin_frame, finish_frame, BodyReader};
use crate::protocol::Frame;
use bytes::{BufMut, BytesMut};
use pgshard_sql::{FanoutPlan, MergePlan, SortColumn, StreamMerge};
use std::cmp::Ordering;
use std::future::Future;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use value::Kind;

/// Frames of one shard's answer to the shard query. Returns `Ok(None)` only if the
/// connection ended; the engine stops reading a shard after its CommandComplete or
/// ErrorResponse (the session reads the ReadyForQuery that follows).
pub trait ShardStream: Send {
    fn next_frame(&mut self) -> impl Future<Output = std::io::Result<Option<Frame>>> + Send;
}

/// What happened, for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client got RowDescription, DataRows and CommandComplete `SELECT rows`.
    /// `unfinished` shards were not read to their end (LIMIT reached): cancel and drain.
    Done { rows: u64, unfinished: Vec<usize> },
    /// Shard `shard` failed; its ErrorResponse went to the client. Cancel and drain
    /// the `unfinished` shards.
    ShardError {
        shard: usize,
        unfinished: Vec<usize>,
    },
    /// Nothing was sent to the client: run `sql` (simple Query) on any one shard and
    /// relay its answer (RowDescription, DataRows, CommandComplete or ErrorResponse).
    Finish { sql: String },
}

/// Errors of the engine; the session maps them to the client (`Unsupported`: 0A000
/// with the message, nothing has been sent; the others end the session's query).
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("{0}")]
    Unsupported(String),
    /// Like `Unsupported`, found from the shards' row descriptions before anything was
    /// written: the session may answer by collecting instead (`FanoutPlan::fallback`).
    #[error("{0}")]
    Unmergeable(String),
    #[error("shard {shard}: {message}")]
    Protocol { shard: usize, message: String },
    #[error("shard {shard} closed the connection")]
    ShardGone { shard: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One column of a RowDescription.
#[derive(Debug, Clone)]
struct Column {
    raw: Vec<u8>,
    type_oid: u32,
    format: i16,
}

fn parse_row_description(f: &Frame) -> Result<Vec<Column>, String> {
    let mut r = BodyReader::new(f.body(), "RowDescription");
    let n = r.count16().map_err(|e| e.to_string())?;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let start = f.body().len() - r.remaining().len();
        r.cstr_bytes().map_err(|e| e.to_string())?;
        r.i32().map_err(|e| e.to_string())?;
        r.i16().map_err(|e| e.to_string())?;
        let type_oid = r.i32().map_err(|e| e.to_string())? as u32;
        r.i16().map_err(|e| e.to_string())?;
        r.i32().map_err(|e| e.to_string())?;
        let format = r.i16().map_err(|e| e.to_string())?;
        let end = f.body().len() - r.remaining().len();
        cols.push(Column {
            raw: f.body()[start..end].to_vec(),
            type_oid,
            format,
        });
    }
    Ok(cols)
}

/// The values of a DataRow (`None`: NULL), as ranges into its body.
fn parse_data_row(f: &Frame) -> Result<Vec<Option<std::ops::Range<usize>>>, String> {
    let body = f.body();
    let mut r = BodyReader::new(body, "DataRow");
    let n = r.count16().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32().map_err(|e| e.to_string())?;
        if len < 0 {
            out.push(None);
        } else {
            let start = body.len() - r.remaining().len();
            r.bytes(len as usize).map_err(|e| e.to_string())?;
            out.push(Some(start..start + len as usize));
        }
    }
    Ok(out)
}

/// A row kept by the merge: the frame and its values.
struct Row {
    frame: Frame,
    values: Vec<Option<std::ops::Range<usize>>>,
}

impl Row {
    fn value(&self, i: usize) -> Option<&[u8]> {
        self.values
            .get(i)
            .and_then(|v| v.as_ref())
            .map(|r| &self.frame.body()[r.clone()])
    }
}

/// A shard's next message that matters to the merge.
enum Next {
    Row(Row),
    Done,
    Error(Frame),
}

struct Shard<S> {
    stream: S,
    index: usize,
    finished: bool,
}

impl<S: ShardStream> Shard<S> {
    /// Read up to the next DataRow, CommandComplete or ErrorResponse, passing notices
    /// through to `notices`.
    async fn next(&mut self, notices: &mut BytesMut) -> Result<Next, FanoutError> {
        loop {
            let Some(f) = self.stream.next_frame().await? else {
                self.finished = true;
                return Err(FanoutError::ShardGone { shard: self.index });
            };
            match f.tag() {
                b'D' => {
                    let values = parse_data_row(&f).map_err(|m| self.protocol(m))?;
                    return Ok(Next::Row(Row { frame: f, values }));
                }
                b'C' => {
                    self.finished = true;
                    return Ok(Next::Done);
                }
                b'E' => {
                    self.finished = true;
                    return Ok(Next::Error(f));
                }
                b'N' => notices.extend_from_slice(f.raw()),
                // ParseComplete, BindComplete, ParameterStatus: not the client's concern.
                b'1' | b'2' | b'S' => {}
                // A second RowDescription cannot come before CommandComplete.
                b'T' => return Err(self.protocol("unexpected RowDescription".into())),
                t => return Err(self.protocol(format!("unexpected message {:?}", t as char))),
            }
        }
    }

    /// Read up to the RowDescription.
    async fn describe(
        &mut self,
        notices: &mut BytesMut,
    ) -> Result<Result<Frame, Frame>, FanoutError> {
        loop {
            let Some(f) = self.stream.next_frame().await? else {
                self.finished = true;
                return Err(FanoutError::ShardGone { shard: self.index });
            };
            match f.tag() {
                b'T' => return Ok(Ok(f)),
                b'E' => {
                    self.finished = true;
                    return Ok(Err(f));
                }
                b'N' => notices.extend_from_slice(f.raw()),
                b'1' | b'2' | b'S' => {}
                t => {
                    return Err(self.protocol(format!(
                        "unexpected message {:?} before RowDescription",
                        t as char
                    )))
                }
            }
        }
    }

    fn protocol(&self, message: String) -> FanoutError {
        FanoutError::Protocol {
            shard: self.index,
            message,
        }
    }
}

fn unfinished<S>(shards: &[Shard<S>]) -> Vec<usize> {
    shards
        .iter()
        .filter(|s| !s.finished)
        .map(|s| s.index)
        .collect()
}

/// Output buffer flushed to the client at this size.
const FLUSH_AT: usize = 64 * 1024;

/// Run the merge of `plan` over the shards' answers, writing the client's messages to
/// `out`. See the module documentation for what the session does with the outcome.
pub async fn execute<S: ShardStream, W: AsyncWrite + Unpin>(
    plan: &FanoutPlan,
    streams: Vec<S>,
    out: &mut W,
) -> Result<Outcome, FanoutError> {
    execute_with(plan, streams, out, true, false).await
}

/// [`execute`]; `describe` false leaves the RowDescription out of a streamed answer
/// (an extended-protocol Execute whose portal was not described); `rounded_floats`
/// says the client's `extra_float_digits` is below 1, so float text is rounded and a
/// float sort key cannot be merged by it.
pub async fn execute_with<S: ShardStream, W: AsyncWrite + Unpin>(
    plan: &FanoutPlan,
    streams: Vec<S>,
    out: &mut W,
    describe: bool,
    rounded_floats: bool,
) -> Result<Outcome, FanoutError> {
    let mut shards: Vec<Shard<S>> = streams
        .into_iter()
        .enumerate()
        .map(|(index, stream)| Shard {
            stream,
            index,
            finished: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    // Every shard's RowDescription first: the columns decide the comparisons.
    let mut desc: Option<Vec<Column>> = None;
    for i in 0..shards.len() {
        match shards[i].describe(&mut buf).await? {
            Ok(f) => {
                let cols = parse_row_description(&f).map_err(|m| shards[i].protocol(m))?;
                match &desc {
                    None => desc = Some(cols),
                    Some(d)
                        if d.len() == cols.len()
                            && d.iter().zip(&cols).all(|(a, b)| a.type_oid == b.type_oid) => {}
                    Some(_) => {
                        return Err(
                            shards[i].protocol("shards disagree on the result columns".into())
                        )
                    }
                }
            }
            Err(e) => {
                buf.extend_from_slice(e.raw());
                out.write_all(&buf).await?;
                return Ok(Outcome::ShardError {
                    shard: i,
                    unfinished: unfinished(&shards),
                });
            }
        }
    }
    let cols = desc.unwrap_or_default();
    match &plan.merge {
        MergePlan::Stream(m) => {
            stream(m, &mut shards, &cols, buf, out, describe, rounded_floats).await
        }
        MergePlan::Collect(_) => Err(FanoutError::Unsupported(
            "a collected query reached the merge engine".into(),
        )),
        MergePlan::Finish(f) => {
            let mut types = Vec::with_capacity(cols.len());
            for c in &cols {
                if c.format != 0 {
                    return Err(FanoutError::Unmergeable(
                        "binary result format for a multi-shard aggregate or DISTINCT".into(),
                    ));
                }
                types.push(pgshard_sql::fanout::type_name(c.type_oid).ok_or_else(|| {
                    FanoutError::Unmergeable(format!(
                        "type with oid {} in a multi-shard aggregate or DISTINCT",
                        c.type_oid
                    ))
                })?);
            }
            let mut rows: Vec<Row> = Vec::new();
            for i in 0..shards.len() {
                loop {
                    match shards[i].next(&mut buf).await? {
                        Next::Row(r) => rows.push(r),
                        Next::Done => break,
                        Next::Error(e) => {
                            buf.extend_from_slice(e.raw());
                            out.write_all(&buf).await?;
                            return Ok(Outcome::ShardError {
                                shard: i,
                                unfinished: unfinished(&shards),
                            });
                        }
                    }
                }
            }
            let mut texts: Vec<Vec<Option<&str>>> = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut v = Vec::with_capacity(cols.len());
                for i in 0..cols.len() {
                    v.push(match r.value(i) {
                        None => None,
                        Some(b) => {
                            Some(std::str::from_utf8(b).map_err(|_| FanoutError::Protocol {
                                shard: 0,
                                message: "text value is not UTF-8".into(),
                            })?)
                        }
                    });
                }
                texts.push(v);
            }
            if !buf.is_empty() {
                out.write_all(&buf).await?;
            }
            Ok(Outcome::Finish {
                sql: f.render(&types, &texts),
            })
        }
    }
}

/// One sort key, resolved against the columns.
struct Key {
    column: usize,
    kind: Kind,
    /// In binary format: the column's type oid.
    binary: Option<u32>,
    descending: bool,
    nulls_first: bool,
    collation: Option<usize>,
}

fn compare_rows(keys: &[Key], a: &Row, b: &Row) -> Result<Ordering, FanoutError> {
    for k in keys {
        let ord = match (a.value(k.column), b.value(k.column)) {
            (None, None) => Ordering::Equal,
            // NULLS FIRST/LAST is independent of the direction.
            (None, Some(_)) => {
                return Ok(if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                })
            }
            (Some(_), None) => {
                return Ok(if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                })
            }
            (Some(x), Some(y)) => {
                let o = match k.binary {
                    Some(oid) => value::compare_binary(oid, k.kind, x, y),
                    None => value::compare(k.kind, x, y),
                }
                .map_err(|e| {
                    FanoutError::Unsupported(format!("merging sorted shard results: {}", e.0))
                })?;
                if k.descending {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if ord != Ordering::Equal {
            return Ok(ord);
        }
    }
    Ok(Ordering::Equal)
}

fn check_collations(keys: &[Key], r: &Row) -> Result<(), FanoutError> {
    for k in keys {
        let Some(probe) = k.collation else { continue };
        if k.kind.collatable() && !value::collation_is_bytewise(r.value(probe)) {
            let c = r
                .value(probe)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            return Err(FanoutError::Unsupported(format!(
                "ORDER BY text under collation {c} in a multi-shard query (only byte-order collations such as \"C\" merge)"
            )));
        }
    }
    Ok(())
}

/// Re-encode a DataRow without its hidden trailing columns.
fn visible_row(r: &Row, visible: usize, hidden: usize, out: &mut BytesMut) {
    if hidden == 0 {
        out.extend_from_slice(r.frame.raw());
        return;
    }
    let at = begin_frame(out, b'D');
    out.put_i16(visible as i16);
    for i in 0..visible {
        match r.value(i) {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v);
            }
        }
    }
    finish_frame(out, at);
}

async fn stream<S: ShardStream, W: AsyncWrite + Unpin>(
    m: &StreamMerge,
    shards: &mut [Shard<S>],
    cols: &[Column],
    mut buf: BytesMut,
    out: &mut W,
    describe: bool,
    rounded_floats: bool,
) -> Result<Outcome, FanoutError> {
    let visible = cols
        .len()
        .checked_sub(m.hidden)
        .ok_or_else(|| FanoutError::Protocol {
            shard: 0,
            message: "fewer columns than hidden sort columns".into(),
        })?;
    let keys = merge_keys(m, cols, visible, rounded_floats)?;
    // RowDescription without the hidden columns.
    if describe {
        let at = begin_frame(&mut buf, b'T');
        buf.put_i16(visible as i16);
        for c in &cols[..visible] {
            buf.extend_from_slice(&c.raw);
        }
        finish_frame(&mut buf, at);
    }
    let mut em = Emitter {
        visible,
        hidden: m.hidden,
        skip: m.offset,
        left: m.limit,
        sent: 0,
        flushed: false,
    };
    let stop = if keys.is_empty() {
        concat(shards, &mut em, &mut buf, out).await?
    } else {
        kway(shards, &keys, &mut em, &mut buf, out).await?
    };
    if let Some((shard, e)) = stop {
        buf.extend_from_slice(e.raw());
        out.write_all(&buf).await?;
        return Ok(Outcome::ShardError {
            shard,
            unfinished: unfinished(shards),
        });
    }
    let sent = em.sent;
    crate::protocol::backend::encode_command_complete(&mut buf, &format!("SELECT {sent}"));
    out.write_all(&buf).await?;
    Ok(Outcome::Done {
        rows: sent,
        unfinished: unfinished(shards),
    })
}

/// The merge's sort keys, checked against the columns: each one's position, how its
/// values compare, and its order.
fn merge_keys(
    m: &StreamMerge,
    cols: &[Column],
    visible: usize,
    rounded_floats: bool,
) -> Result<Vec<Key>, FanoutError> {
    let mut keys = Vec::with_capacity(m.sort.len());
    for s in &m.sort {
        let column = match s.column {
            SortColumn::Visible(i) if i < visible => i,
            SortColumn::Hidden(i) if i < m.hidden => visible + i,
            _ => {
                return Err(FanoutError::Protocol {
                    shard: 0,
                    message: "sort column out of range".into(),
                })
            }
        };
        let c = &cols[column];
        let kind = Kind::of(c.type_oid).ok_or_else(|| {
            FanoutError::Unmergeable(format!(
                "ORDER BY on a value of type oid {} in a multi-shard query",
                c.type_oid
            ))
        })?;
        if kind == Kind::Float && rounded_floats {
            return Err(FanoutError::Unmergeable(
                "ORDER BY on a float value in a multi-shard query while extra_float_digits is below 1 (floats print rounded, so the merge cannot order them)".into(),
            ));
        }
        keys.push(Key {
            column,
            kind,
            binary: (c.format == 1).then_some(c.type_oid),
            descending: s.descending,
            nulls_first: s.nulls_first,
            collation: s.collation.map(|c| visible + c),
        });
    }
    Ok(keys)
}

/// Sends merged rows to the client: OFFSET and LIMIT applied, hidden columns dropped,
/// the buffer written out whenever it is full.
struct Emitter {
    visible: usize,
    hidden: usize,
    skip: u64,
    left: Option<u64>,
    sent: u64,
    /// Rows were written to the client (not only buffered).
    flushed: bool,
}

impl Emitter {
    /// True once LIMIT rows went out.
    fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// A value the merge cannot compare, found before any row reached the client:
    /// the session may still answer another way ([`FanoutError::Unmergeable`]).
    fn soften(&self, e: FanoutError) -> FanoutError {
        match e {
            FanoutError::Unsupported(m) if !self.flushed => FanoutError::Unmergeable(m),
            e => e,
        }
    }

    async fn row<W: AsyncWrite + Unpin>(
        &mut self,
        r: &Row,
        buf: &mut BytesMut,
        out: &mut W,
    ) -> Result<(), FanoutError> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        visible_row(r, self.visible, self.hidden, buf);
        self.sent += 1;
        if buf.len() >= FLUSH_AT {
            self.flushed = true;
            out.write_all(buf).await?;
            buf.clear();
        }
        if let Some(l) = &mut self.left {
            *l -= 1;
        }
        Ok(())
    }
}

/// A shard's error that ended the merge: the shard and its ErrorResponse.
type Stopped = Option<(usize, Frame)>;

/// No ORDER BY: each shard's rows in turn.
async fn concat<S: ShardStream, W: AsyncWrite + Unpin>(
    shards: &mut [Shard<S>],
    em: &mut Emitter,
    buf: &mut BytesMut,
    out: &mut W,
) -> Result<Stopped, FanoutError> {
    for (i, shard) in shards.iter_mut().enumerate() {
        while !em.done() {
            match shard.next(buf).await? {
                Next::Row(r) => em.row(&r, buf, out).await?,
                Next::Done => break,
                Next::Error(e) => return Ok(Some((i, e))),
            }
        }
    }
    Ok(None)
}

/// k-way merge: the head row of every shard; emit the least, refill from its shard.
async fn kway<S: ShardStream, W: AsyncWrite + Unpin>(
    shards: &mut [Shard<S>],
    keys: &[Key],
    em: &mut Emitter,
    buf: &mut BytesMut,
    out: &mut W,
) -> Result<Stopped, FanoutError> {
    let mut heads: Vec<Option<Row>> = Vec::with_capacity(shards.len());
    for (i, shard) in shards.iter_mut().enumerate() {
        match shard.next(buf).await? {
            Next::Row(r) => {
                check_collations(keys, &r).map_err(|e| em.soften(e))?;
                heads.push(Some(r));
            }
            Next::Done => heads.push(None),
            Next::Error(e) => return Ok(Some((i, e))),
        }
    }
    while !em.done() {
        let mut best: Option<usize> = None;
        for (i, h) in heads.iter().enumerate() {
            let Some(h) = h else { continue };
            best = match best {
                None => Some(i),
                Some(b) => {
                    let hb = heads[b].as_ref().ok_or_else(|| FanoutError::Protocol {
                        shard: b,
                        message: "merge state".into(),
                    })?;
                    if compare_rows(keys, h, hb).map_err(|e| em.soften(e))? == Ordering::Less {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        let Some(b) = best else { break };
        let next = match shards[b].next(buf).await? {
            Next::Row(r) => Some(r),
            Next::Done => None,
            Next::Error(e) => return Ok(Some((b, e))),
        };
        if let Some(row) = std::mem::replace(&mut heads[b], next) {
            em.row(&row, buf, out).await?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

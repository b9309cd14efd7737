//! Splitting a `COPY … FROM STDIN` data stream into rows and reading each row's shard
//! key (SPEC §6), without I/O: the session feeds it the client's CopyData payloads and
//! routes what comes out.
//!
//! CopyData boundaries carry no meaning (PostgreSQL docs, "COPY Operations"): a row may
//! span messages and a message may hold many rows, so the [`Splitter`] keeps the bytes of
//! an unfinished row and resumes its scan where it stopped. It recognises rows exactly as
//! PostgreSQL 15's `copyfromparse.c` does:
//! - **text**: a row ends at an unescaped `\n`, `\r` or `\r\n`; a backslash escapes the
//!   next byte (even a newline); `\.` followed by a newline ends the data;
//! - **csv**: a row ends at a newline outside quotes; inside quotes the escape character
//!   (when it differs from the quote) protects a following quote; `\.` alone on a line
//!   ends the data;
//! - **binary**: the 19-byte-plus-extension header, then tuples (`int16` field count,
//!   each field an `int32` length, -1 for NULL, and its bytes), then the `int16` -1
//!   trailer.
//!
//! Rows are handed out as they are (their bytes are forwarded unchanged to the shard);
//! only the key field is decoded, as PostgreSQL would before converting it to the key
//! type. Header lines (`HEADER`) and the binary header are [`Piece::All`]: every shard
//! gets them, so each shard's COPY (which runs the client's statement unchanged) skips
//! or checks them itself.

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use pgshard_catalog::{KeyType, KeyValue};
use pgshard_sql::{CopyFormat, CopyOptions};

/// The binary COPY signature (PostgreSQL docs, "Binary Format").
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// The binary trailer: a field count of -1.
pub const BINARY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Why a COPY stream cannot be routed. Messages follow PostgreSQL's for the same fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NullKey {
        table: String,
        column: String,
        line: u64,
    },
    #[error("invalid input syntax for type {key_type}: \"{value}\"")]
    InvalidKey {
        key_type: KeyType,
        value: String,
        column: String,
        line: u64,
    },
    #[error("value \"{value}\" is out of range for type {key_type}")]
    KeyOutOfRange {
        key_type: KeyType,
        value: String,
        column: String,
        line: u64,
    },
    #[error("incorrect binary data format")]
    InvalidBinaryKey { column: String, line: u64 },
    #[error("invalid byte sequence for encoding \"UTF8\"")]
    Encoding { column: String, line: u64 },
    #[error("missing data for column \"{column}\"")]
    MissingKey { column: String, line: u64 },
    #[error("{message}")]
    Format { message: String, line: u64 },
    /// The key column is not a column of the COPY.
    #[error("column \"{column}\" of relation \"{table}\" is the shard key and must be copied")]
    NoKeyColumn { table: String, column: String },
}

impl CopyError {
    /// The SQLSTATE (PostgreSQL's for the same fault).
    pub fn code(&self) -> &'static str {
        match self {
            CopyError::NullKey { .. } => "23502",
            CopyError::InvalidKey { .. } => "22P02",
            CopyError::KeyOutOfRange { .. } => "22003",
            CopyError::InvalidBinaryKey { .. } => "22P03",
            CopyError::Encoding { .. } => "22021",
            CopyError::MissingKey { .. } => "22P04",
            CopyError::Format { .. } => "22P04",
            CopyError::NoKeyColumn { .. } => "0A000",
        }
    }

    /// Where in the data it happened, as PostgreSQL's CONTEXT says it.
    pub fn context(&self, table: &str) -> Option<String> {
        match self {
            CopyError::NullKey { column, line, .. }
            | CopyError::InvalidBinaryKey { column, line }
            | CopyError::Encoding { column, line } => {
                Some(format!("COPY {table}, line {line}, column {column}"))
            }
            CopyError::InvalidKey {
                value,
                column,
                line,
                ..
            }
            | CopyError::KeyOutOfRange {
                value,
                column,
                line,
                ..
            } => Some(format!(
                "COPY {table}, line {line}, column {column}: \"{value}\""
            )),
            CopyError::MissingKey { line, .. } | CopyError::Format { line, .. } => {
                Some(format!("COPY {table}, line {line}"))
            }
            CopyError::NoKeyColumn { .. } => None,
        }
    }
}

/// The key field of one row, as read from the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyField {
    Null,
    /// text and csv: the field's value after de-escaping or de-quoting.
    Text(String),
    /// binary: the field's bytes.
    Binary(Bytes),
}

/// What the splitter hands out, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes for every shard (header line, binary header).
    All(Bytes),
    /// One row, with its key field (`None` when no key column was asked for).
    Row {
        bytes: Bytes,
        key: Option<KeyField>,
        line: u64,
    },
}

/// Which field holds the shard key, and how its NULLs read (csv FORCE options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// 0-based position among the COPY's columns.
    pub index: usize,
    pub column: String,
    /// csv FORCE_NOT_NULL: an unquoted NULL string is a value.
    pub force_not_null: bool,
    /// csv FORCE_NULL: a quoted NULL string is NULL too.
    pub force_null: bool,
}

/// Where the binary parser is inside the current tuple.
#[derive(Debug, Clone, Default)]
struct BinaryState {
    /// Offset of the next unread field header in `pending` (0: the tuple's field count).
    pos: usize,
    /// Fields of the tuple still to read (`None`: field count not read yet).
    left: Option<usize>,
    /// Index of the next field.
    field: usize,
    key: Option<KeyField>,
}

/// Splits a COPY data stream into [`Piece`]s. Feed payloads with [`Splitter::push`],
/// take pieces with [`Splitter::next_piece`] until `Ok(None)`, and call
/// [`Splitter::finish`] at CopyDone for the last row.
#[derive(Debug)]
pub struct Splitter {
    format: CopyFormat,
    delimiter: u8,
    quote: u8,
    /// `None` when it equals the quote (PostgreSQL then ignores it).
    escape: Option<u8>,
    null: Vec<u8>,
    key: Option<KeySpec>,
    /// Bytes of the unfinished row (or header).
    pending: BytesMut,
    /// Scan position in `pending` (text/csv).
    scan: usize,
    in_quote: bool,
    last_was_esc: bool,
    bin: BinaryState,
    /// The header (line or binary header) is still to come.
    header: bool,
    /// The end-of-data marker was seen: later bytes are ignored.
    ended: bool,
    /// The binary header was seen (so the shards need a trailer).
    saw_binary_header: bool,
    /// Lines handed out so far (header included), for messages.
    line: u64,
}

impl Splitter {
    /// A splitter for the given options; `key` says which field to decode.
    pub fn new(opts: &CopyOptions, key: Option<KeySpec>) -> Splitter {
        Splitter {
            format: opts.format,
            delimiter: opts.delimiter,
            quote: opts.quote,
            escape: (opts.escape != opts.quote).then_some(opts.escape),
            null: opts.null.as_bytes().to_vec(),
            key,
            pending: BytesMut::new(),
            scan: 0,
            in_quote: false,
            last_was_esc: false,
            bin: BinaryState::default(),
            header: opts.header || opts.format == CopyFormat::Binary,
            ended: false,
            saw_binary_header: false,
            line: 0,
        }
    }

    /// Appends a CopyData payload.
    pub fn push(&mut self, data: &[u8]) {
        if !self.ended {
            self.pending.extend_from_slice(data);
        }
    }

    /// True once the data's end marker (text/csv `\.`, binary trailer) was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// True for a binary stream whose header was read: each shard's stream needs the
    /// trailer at the end.
    pub fn needs_trailer(&self) -> bool {
        self.saw_binary_header
    }

    /// Bytes buffered for an unfinished row.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The next complete piece, `Ok(None)` when more data is needed.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.ended {
            return Ok(None);
        }
        match self.format {
            CopyFormat::Binary => self.next_binary(),
            CopyFormat::Text | CopyFormat::Csv => self.next_line(false),
        }
    }

    /// At CopyDone: the last row if it lacks a newline (PostgreSQL accepts that), or an
    /// error for an unfinished binary tuple.
    pub fn finish(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.ended || self.pending.is_empty() {
            return Ok(None);
        }
        match self.format {
            CopyFormat::Binary => Err(CopyError::Format {
                message: "unexpected EOF in COPY data".into(),
                line: self.line + 1,
            }),
            CopyFormat::Text | CopyFormat::Csv => self.next_line(true),
        }
    }

    fn next_line(&mut self, at_end: bool) -> Result<Option<Piece>, CopyError> {
        let csv = self.format == CopyFormat::Csv;
        let buf = &self.pending[..];
        let mut i = self.scan;
        // `Some((content_end, row_end))`.
        let mut found: Option<(usize, usize)> = None;
        let mut end_marker: Option<usize> = None;
        while i < buf.len() {
            let c = buf[i];
            if c == b'\\' && (!csv || (i == 0 && !self.in_quote)) {
                let Some(&c2) = buf.get(i + 1) else {
                    if at_end {
                        i += 1;
                        continue;
                    }
                    break;
                };
                if c2 == b'.' {
                    match buf.get(i + 2) {
                        Some(b'\n' | b'\r') => {
                            end_marker = Some(i);
                            break;
                        }
                        None if at_end => {
                            end_marker = Some(i);
                            break;
                        }
                        None => break,
                        Some(_) => {}
                    }
                }
                if !csv {
                    i += 2;
                    continue;
                }
            }
            if csv {
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
                if self.in_quote {
                    i += 1;
                    continue;
                }
            }
            match c {
                b'\n' => {
                    found = Some((i, i + 1));
                    break;
                }
                b'\r' => match buf.get(i + 1) {
                    Some(b'\n') => {
                        found = Some((i, i + 2));
                        break;
                    }
                    Some(_) => {
                        found = Some((i, i + 1));
                        break;
                    }
                    None if at_end => {
                        found = Some((i, i + 1));
                        break;
                    }
                    None => break,
                },
                _ => i += 1,
            }
        }
        if let Some(at) = end_marker {
            self.ended = true;
            self.in_quote = false;
            if at == 0 {
                self.pending.clear();
                return Ok(None);
            }
            // Text: data before `\.` on its line is a last row.
            let row = self.pending.split_to(at);
            self.pending.clear();
            return self.line_piece(row.freeze(), at);
        }
        let (content_end, row_end) = match found {
            Some(f) => f,
            None if at_end && !self.pending.is_empty() => (self.pending.len(), self.pending.len()),
            None => {
                self.scan = i;
                return Ok(None);
            }
        };
        self.scan = 0;
        self.in_quote = false;
        self.last_was_esc = false;
        let row = self.pending.split_to(row_end).freeze();
        self.line_piece(row, content_end)
    }

    /// A complete line: the header, or a row with its key.
    fn line_piece(&mut self, row: Bytes, content_end: usize) -> Result<Option<Piece>, CopyError> {
        self.line += 1;
        if self.header {
            self.header = false;
            return Ok(Some(Piece::All(row)));
        }
        let key = match &self.key {
            None => None,
            Some(spec) => {
                let content = &row[..content_end];
                let field = if self.format == CopyFormat::Csv {
                    // Inside a field the escape character applies even when it is
                    // the quote character (`""`), unlike at the line level.
                    csv_field(
                        content,
                        spec,
                        self.delimiter,
                        self.quote,
                        self.escape.unwrap_or(self.quote),
                        &self.null,
                    )
                } else {
                    text_field(content, spec.index, self.delimiter, &self.null)
                };
                match field {
                    Some(Ok(f)) => Some(f),
                    Some(Err(())) => {
                        return Err(CopyError::Encoding {
                            column: spec.column.clone(),
                            line: self.line,
                        })
                    }
                    None => {
                        return Err(CopyError::MissingKey {
                            column: spec.column.clone(),
                            line: self.line,
                        })
                    }
                }
            }
        };
        Ok(Some(Piece::Row {
            bytes: row,
            key,
            line: self.line,
        }))
    }

    fn next_binary(&mut self) -> Result<Option<Piece>, CopyError> {
        if self.header {
            // Signature, flags, extension length, extension.
            if self.pending.len() < 19 {
                return Ok(None);
            }
            if &self.pending[..11] != BINARY_SIGNATURE {
                return Err(CopyError::Format {
                    message: "COPY file signature not recognized".into(),
                    line: 0,
                });
            }
            let ext = i32::from_be_bytes([
                self.pending[15],
                self.pending[16],
                self.pending[17],
                self.pending[18],
            ]);
            let Ok(ext) = usize::try_from(ext) else {
                return Err(CopyError::Format {
                    message: "invalid COPY file header (missing length)".into(),
                    line: 0,
                });
            };
            if self.pending.len() < 19 + ext {
                return Ok(None);
            }
            self.header = false;
            self.saw_binary_header = true;
            return Ok(Some(Piece::All(self.pending.split_to(19 + ext).freeze())));
        }
        loop {
            let st = &mut self.bin;
            let buf = &self.pending[..];
            let Some(left) = st.left else {
                let Some(b) = buf.get(..2) else {
                    return Ok(None);
                };
                let count = i16::from_be_bytes([b[0], b[1]]);
                if count == -1 {
                    self.ended = true;
                    self.pending.clear();
                    return Ok(None);
                }
                let Ok(count) = usize::try_from(count) else {
                    return Err(CopyError::Format {
                        message: format!("row field count is {count}, expected a positive count"),
                        line: self.line + 1,
                    });
                };
                st.left = Some(count);
                st.pos = 2;
                st.field = 0;
                st.key = None;
                continue;
            };
            if left == 0 {
                break;
            }
            let Some(b) = buf.get(st.pos..st.pos + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let data = st.pos + 4;
            let (value, next) = if len == -1 {
                (None, data)
            } else {
                let Ok(n) = usize::try_from(len) else {
                    return Err(CopyError::Format {
                        message: "invalid field size".into(),
                        line: self.line + 1,
                    });
                };
                if buf.len() < data + n {
                    return Ok(None);
                }
                (Some(data..data + n), data + n)
            };
            if self.key.as_ref().is_some_and(|k| k.index == st.field) {
                st.key = Some(match value {
                    None => KeyField::Null,
                    Some(r) => KeyField::Binary(Bytes::copy_from_slice(&buf[r])),
                });
            }
            st.pos = next;
            st.field += 1;
            st.left = Some(left - 1);
        }
        let st = std::mem::take(&mut self.bin);
        self.line += 1;
        let key = match &self.key {
            None => None,
            Some(spec) => match st.key {
                Some(k) => Some(k),
                None => {
                    return Err(CopyError::MissingKey {
                        column: spec.column.clone(),
                        line: self.line,
                    })
                }
            },
        };
        Ok(Some(Piece::Row {
            bytes: self.pending.split_to(st.pos).freeze(),
            key,
            line: self.line,
        }))
    }
}

/// Field `index` of a text-format row (without its newline): `None` if the row has
/// fewer fields, `Some(Err)` if its de-escaped bytes are not UTF-8.
fn text_field(
    row: &[u8],
    index: usize,
    delimiter: u8,
    null: &[u8],
) -> Option<Result<KeyField, ()>> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    let mut raw: Option<&[u8]> = None;
    while i <= row.len() {
        if i == row.len() || row[i] == delimiter {
            if field == index {
                raw = Some(&row[start..i]);
                break;
            }
            field += 1;
            start = i + 1;
            i += 1;
            continue;
        }
        if row[i] == b'\\' {
            i = (i + 2).min(row.len());
            continue;
        }
        i += 1;
    }
    let raw = raw?;
    if raw == null {
        return Some(Ok(KeyField::Null));
    }
    Some(
        String::from_utf8(unescape_text(raw))
            .map(KeyField::Text)
            .map_err(|_| ()),
    )
}

/// PostgreSQL's text-format de-escaping (`CopyReadAttributesText`).
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i >= raw.len() {
            out.push(c);
            continue;
        }
        let e = raw[i];
        i += 1;
        match e {
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v.wrapping_mul(16).wrapping_add(d as u8);
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v);
            }
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            other => out.push(other),
        }
    }
    out
}

/// The key field of a csv row (`CopyReadAttributesCSV`): `None` if the row has fewer
/// fields.
fn csv_field(
    row: &[u8],
    spec: &KeySpec,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Option<Result<KeyField, ()>> {
    let mut field = 0;
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut saw_quote = false;
        let mut in_quote = false;
        let mut ended_at_delim = false;
        while i < row.len() {
            let c = row[i];
            i += 1;
            if in_quote {
                if c == escape {
                    if let Some(&n) = row.get(i) {
                        if n == quote || n == escape {
                            value.push(n);
                            i += 1;
                            continue;
                        }
                    }
                }
                if c == quote {
                    in_quote = false;
                    continue;
                }
                value.push(c);
            } else if c == delimiter {
                ended_at_delim = true;
                break;
            } else if c == quote {
                in_quote = true;
                saw_quote = true;
            } else {
                value.push(c);
            }
        }
        if field == spec.index {
            let raw_end = if ended_at_delim { i - 1 } else { i };
            let raw = &row[start..raw_end];
            let is_null = if saw_quote {
                spec.force_null && value == null
            } else {
                raw == null && !spec.force_not_null
            };
            if is_null {
                return Some(Ok(KeyField::Null));
            }
            return Some(String::from_utf8(value).map(KeyField::Text).map_err(|_| ()));
        }
        if !ended_at_delim {
            return None;
        }
        field += 1;
    }
}

/// The shard key value of a row's key field, or the error PostgreSQL would raise
/// converting it (a NULL key is refused: no shard owns it).
pub fn key_value(
    field: &KeyField,
    key_type: KeyType,
    table: &str,
    column: &str,
    line: u64,
) -> Result<KeyValue, CopyError> {
    match field {
        KeyField::Null => Err(CopyError::NullKey {
            table: table.to_owned(),
            column: column.to_owned(),
            line,
        }),
        KeyField::Text(s) => pgshard_catalog::hash::parse_key(s, key_type).ok_or_else(|| {
            let digits = s.trim().trim_start_matches(['+', '-']);
            if key_type.is_integer()
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                CopyError::KeyOutOfRange {
                    key_type,
                    value: s.clone(),
                    column: column.to_owned(),
                    line,
                }
            } else {
                CopyError::InvalidKey {
                    key_type,
                    value: s.clone(),
                    column: column.to_owned(),
                    line,
                }
            }
        }),
        KeyField::Binary(b) => {
            // An integer key may be stored in a narrower or wider integer column than
            // declared; all integer types hash alike (see `KeyType::is_integer`).
            let as_type = if key_type.is_integer() {
                match b.len() {
                    2 => KeyType::Int2,
                    4 => KeyType::Int4,
                    _ => KeyType::Int8,
                }
            } else {
                key_type
            };
            pgshard_catalog::hash::key_from_binary(b, as_type).ok_or_else(|| {
                CopyError::InvalidBinaryKey {
                    column: column.to_owned(),
                    line,
                }
            })
        }
    }
}

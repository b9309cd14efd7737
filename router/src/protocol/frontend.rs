//! Messages a client (frontend) sends after startup, decoded by borrowing from their
//! frame, and the encoders the router uses as a client of the shards and to rewrite
//! statement names.

use super::frame::{begin_frame, finish_frame, put_cstr, BodyReader, Frame, ProtocolError};
use bytes::{BufMut, BytesMut};

/// The parameter part of a Bind (formats and values, as [`Bind::split_results`] cuts
/// it) holding only parameters `picks` (1-based), in that order: what one shard's part
/// of a statement split by the router takes, its parameters renumbered from `$1`.
pub fn subset_params(params: &[u8], picks: &[usize]) -> Result<BytesMut, ProtocolError> {
    let mut r = BodyReader::new(params, "Bind");
    let nformats = r.count16()?;
    let formats = r.bytes(nformats * 2)?;
    let nparams = r.count16()?;
    let mut values: Vec<&[u8]> = Vec::with_capacity(nparams);
    for _ in 0..nparams {
        let at = params.len() - r.remaining().len();
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        } else if len < -1 {
            return Err(ProtocolError::malformed("Bind", "negative value length"));
        }
        values.push(&params[at..params.len() - r.remaining().len()]);
    }
    let mut out = BytesMut::with_capacity(params.len());
    let pick = |n: usize| {
        n.checked_sub(1).filter(|i| *i < nparams).ok_or_else(|| {
            ProtocolError::malformed("Bind", "parameter missing from a split statement")
        })
    };
    if nformats > 1 {
        out.put_i16(picks.len() as i16);
        for &n in picks {
            let i = pick(n)?;
            out.extend_from_slice(&formats[2 * i..2 * i + 2]);
        }
    } else {
        out.put_i16(nformats as i16);
        out.extend_from_slice(formats);
    }
    out.put_i16(picks.len() as i16);
    for &n in picks {
        out.extend_from_slice(values[pick(n)?]);
    }
    Ok(out)
}

/// A Bind message. The parameter values are decoded on demand ([`Bind::param`]); the
/// bytes after the statement name are kept so a Bind can be re-addressed to another
/// statement name without touching its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Everything after the statement name: formats, values, result formats.
    pub rest: &'a [u8],
}

/// One bound parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundParam<'a> {
    /// 0 text, 1 binary.
    pub format: i16,
    /// `None` is SQL NULL.
    pub value: Option<&'a [u8]>,
}

impl<'a> Bind<'a> {
    /// Parameter `index` (0-based), checking the whole layout on the way.
    pub fn param(&self, index: usize) -> Result<Option<BoundParam<'a>>, ProtocolError> {
        let mut r = BodyReader::new(self.rest, "Bind");
        let nformats = r.count16()?;
        let formats = r.bytes(nformats * 2)?;
        let nparams = r.count16()?;
        if nformats > 1 && nformats != nparams {
            return Err(ProtocolError::malformed("Bind", "format count mismatch"));
        }
        let format_of = |i: usize| -> i16 {
            match nformats {
                0 => 0,
                1 => i16::from_be_bytes([formats[0], formats[1]]),
                _ => i16::from_be_bytes([formats[2 * i], formats[2 * i + 1]]),
            }
        };
        for i in 0..nparams {
            let len = r.i32()?;
            let value = if len == -1 {
                None
            } else if len < 0 {
                return Err(ProtocolError::malformed("Bind", "negative value length"));
            } else {
                Some(r.bytes(len as usize)?)
            };
            if i == index {
                return Ok(Some(BoundParam {
                    format: format_of(i),
                    value,
                }));
            }
        }
        Ok(None)
    }

    /// Splits `rest` into the parameter part (formats and values, as sent) and the
    /// result-column format codes.
    pub fn split_results(&self) -> Result<(&'a [u8], Vec<i16>), ProtocolError> {
        let mut r = BodyReader::new(self.rest, "Bind");
        let nformats = r.count16()?;
        r.bytes(nformats * 2)?;
        let nparams = r.count16()?;
        for _ in 0..nparams {
            let len = r.i32()?;
            if len > 0 {
                r.bytes(len as usize)?;
            } else if len < -1 {
                return Err(ProtocolError::malformed("Bind", "negative value length"));
            }
        }
        let params_len = self.rest.len() - r.remaining().len();
        let nresults = r.count16()?;
        let mut results = Vec::with_capacity(nresults);
        for _ in 0..nresults {
            results.push(r.i16()?);
        }
        Ok((&self.rest[..params_len], results))
    }
}

/// A Bind of `statement` into `portal` with the parameter part of another Bind (see
/// [`Bind::split_results`]) and the given result formats.
pub fn encode_bind_with_results(
    out: &mut BytesMut,
    portal: &str,
    statement: &str,
    params: &[u8],
    results: &[i16],
) {
    let at = begin_frame(out, b'B');
    put_cstr(out, portal.as_bytes());
    put_cstr(out, statement.as_bytes());
    out.extend_from_slice(params);
    out.put_i16(results.len() as i16);
    for r in results {
        out.put_i16(*r);
    }
    finish_frame(out, at);
}

/// Execute of `portal` with no row limit.
pub fn encode_execute(out: &mut BytesMut, portal: &str) {
    let at = begin_frame(out, b'E');
    put_cstr(out, portal.as_bytes());
    out.put_i32(0);
    finish_frame(out, at);
}

/// A decoded frontend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: &'a str,
    },
    Parse {
        name: &'a str,
        sql: &'a str,
        param_types: Vec<u32>,
    },
    Bind(Bind<'a>),
    /// `kind` is `b'S'` (statement) or `b'P'` (portal).
    Describe {
        kind: u8,
        name: &'a str,
    },
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    /// PasswordMessage, SASLInitialResponse or SASLResponse: which one depends on the
    /// authentication exchange in progress.
    Password(&'a [u8]),
    FunctionCall,
}

impl<'a> FrontendMessage<'a> {
    /// Decodes a frame. Never panics; unknown tags are an error.
    pub fn decode(frame: &'a Frame) -> Result<FrontendMessage<'a>, ProtocolError> {
        let body = frame.body();
        let msg = match frame.tag() {
            b'Q' => {
                let mut r = BodyReader::new(body, "Query");
                let sql = r.cstr()?;
                r.finish()?;
                FrontendMessage::Query { sql }
            }
            b'P' => {
                let mut r = BodyReader::new(body, "Parse");
                let name = r.cstr()?;
                let sql = r.cstr()?;
                let n = r.count16()?;
                let mut param_types = Vec::with_capacity(n);
                for _ in 0..n {
                    param_types.push(r.i32()? as u32);
                }
                r.finish()?;
                FrontendMessage::Parse {
                    name,
                    sql,
                    param_types,
                }
            }
            b'B' => {
                let mut r = BodyReader::new(body, "Bind");
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let bind = Bind {
                    portal,
                    statement,
                    rest: r.remaining(),
                };
                validate_bind_rest(bind.rest)?;
                FrontendMessage::Bind(bind)
            }
            b'D' | b'C' => {
                let what = if frame.tag() == b'D' {
                    "Describe"
                } else {
                    "Close"
                };
                let mut r = BodyReader::new(body, what);
                let kind = r.u8()?;
                if kind != b'S' && kind != b'P' {
                    return Err(ProtocolError::malformed(what, "kind must be S or P"));
                }
                let name = r.cstr()?;
                r.finish()?;
                if frame.tag() == b'D' {
                    FrontendMessage::Describe { kind, name }
                } else {
                    FrontendMessage::Close { kind, name }
                }
            }
            b'E' => {
                let mut r = BodyReader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'd' => FrontendMessage::CopyData,
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail,
            b'p' => FrontendMessage::Password(body),
            b'F' => FrontendMessage::FunctionCall,
            _ => return Err(ProtocolError::malformed("frontend", "unknown message type")),
        };
        Ok(msg)
    }
}

/// Checks the layout of a Bind's formats, values and result formats.
fn validate_bind_rest(rest: &[u8]) -> Result<(), ProtocolError> {
    let mut r = BodyReader::new(rest, "Bind");
    let nformats = r.count16()?;
    let formats = r.bytes(nformats * 2)?;
    for f in formats.chunks_exact(2) {
        if !matches!(i16::from_be_bytes([f[0], f[1]]), 0 | 1) {
            return Err(ProtocolError::malformed("Bind", "invalid format code"));
        }
    }
    let nparams = r.count16()?;
    if nformats > 1 && nformats != nparams {
        return Err(ProtocolError::malformed("Bind", "format count mismatch"));
    }
    for _ in 0..nparams {
        let len = r.i32()?;
        if len >= 0 {
            r.bytes(len as usize)?;
        } else if len != -1 {
            return Err(ProtocolError::malformed("Bind", "negative value length"));
        }
    }
    let nresult = r.count16()?;
    r.bytes(nresult * 2)?;
    r.finish()
}

pub fn encode_query(out: &mut BytesMut, sql: &str) {
    let at = begin_frame(out, b'Q');
    put_cstr(out, sql.as_bytes());
    finish_frame(out, at);
}

pub fn encode_parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    let at = begin_frame(out, b'P');
    put_cstr(out, name.as_bytes());
    put_cstr(out, sql.as_bytes());
    out.put_i16(param_types.len() as i16);
    for t in param_types {
        out.put_u32(*t);
    }
    finish_frame(out, at);
}

/// A Bind for `bind.portal` addressed to `statement` instead of `bind.statement`.
pub fn encode_bind_renamed(out: &mut BytesMut, bind: &Bind<'_>, statement: &str) {
    let at = begin_frame(out, b'B');
    put_cstr(out, bind.portal.as_bytes());
    put_cstr(out, statement.as_bytes());
    out.extend_from_slice(bind.rest);
    finish_frame(out, at);
}

pub fn encode_describe(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin_frame(out, b'D');
    out.put_u8(kind);
    put_cstr(out, name.as_bytes());
    finish_frame(out, at);
}

pub fn encode_close(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin_frame(out, b'C');
    out.put_u8(kind);
    put_cstr(out, name.as_bytes());
    finish_frame(out, at);
}

pub fn encode_sync(out: &mut BytesMut) {
    out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
}

/// CopyDone: the end of a COPY FROM STDIN's data.
pub fn encode_copy_done(out: &mut BytesMut) {
    out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
}

/// CopyFail: abort a COPY FROM STDIN with `message`.
pub fn encode_copy_fail(out: &mut BytesMut, message: &str) {
    let at = begin_frame(out, b'f');
    put_cstr(out, message.as_bytes());
    finish_frame(out, at);
}

pub fn encode_terminate(out: &mut BytesMut) {
    out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
}

/// PasswordMessage / SASLResponse: the payload as is.
pub fn encode_password(out: &mut BytesMut, payload: &[u8]) {
    let at = begin_frame(out, b'p');
    out.extend_from_slice(payload);
    finish_frame(out, at);
}

/// SASLInitialResponse.
pub fn encode_sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin_frame(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    finish_frame(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_subset() {
        // Two formats (text, binary), three values: "a", NULL, 0x0102.
        let mut p = BytesMut::new();
        p.put_i16(3);
        p.put_i16(0);
        p.put_i16(1);
        p.put_i16(0);
        p.put_i16(3);
        p.put_i32(1);
        p.put_u8(b'a');
        p.put_i32(-1);
        p.put_i32(2);
        p.put_slice(&[1, 2]);
        let s = subset_params(&p, &[3, 1]).expect("subset");
        let mut want = BytesMut::new();
        want.put_i16(2);
        want.put_i16(0);
        want.put_i16(0);
        want.put_i16(2);
        want.put_i32(2);
        want.put_slice(&[1, 2]);
        want.put_i32(1);
        want.put_u8(b'a');
        assert_eq!(s, want);
        assert!(subset_params(&p, &[4]).is_err());
    }
    use crate::protocol::frame::try_split_frame;
    use proptest::prelude::*;

    fn frame(bytes: BytesMut) -> Frame {
        let mut b = bytes;
        try_split_frame(&mut b, 1 << 20)
            .expect("ok")
            .expect("complete")
    }

    #[test]
    fn bind_renames_and_reads_params() {
        // Bind portal "p" stmt "s": 1 format (binary), 2 params, 0 result formats.
        let mut body = BytesMut::new();
        let at = begin_frame(&mut body, b'B');
        put_cstr(&mut body, b"p");
        put_cstr(&mut body, b"s");
        body.put_i16(1);
        body.put_i16(1);
        body.put_i16(2);
        body.put_i32(8);
        body.put_i64(42);
        body.put_i32(-1);
        body.put_i16(0);
        finish_frame(&mut body, at);
        let f = frame(body);
        let FrontendMessage::Bind(b) = FrontendMessage::decode(&f).expect("valid") else {
            panic!("not a bind")
        };
        assert_eq!(b.statement, "s");
        let p = b.param(0).expect("ok").expect("present");
        assert_eq!(p.format, 1);
        assert_eq!(p.value, Some(&42i64.to_be_bytes()[..]));
        assert_eq!(b.param(1).expect("ok").expect("present").value, None);
        assert!(b.param(2).expect("ok").is_none());
        let mut out = BytesMut::new();
        encode_bind_renamed(&mut out, &b, "pgs_1");
        let f2 = frame(out);
        let FrontendMessage::Bind(b2) = FrontendMessage::decode(&f2).expect("valid") else {
            panic!("not a bind")
        };
        assert_eq!(b2.statement, "pgs_1");
        assert_eq!(b2.rest, b.rest);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut raw = BytesMut::new();
            raw.put_u8(tag);
            raw.put_i32(body.len() as i32 + 4);
            raw.extend_from_slice(&body);
            let f = frame(raw);
            if let Ok(FrontendMessage::Bind(b)) = FrontendMessage::decode(&f) {
                for i in 0..4 { let _ = b.param(i); }
            }
        }
    }
}

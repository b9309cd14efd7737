//! Messages a server (backend) sends: decoders for the ones the router must read when it
//! is a client of the shards, and encoders for the ones it produces as a server.

use super::frame::{begin_frame, finish_frame, put_cstr, BodyReader, Frame, ProtocolError};
use bytes::{BufMut, BytesMut};

/// Authentication request codes (`R` messages).
pub mod auth_code {
    pub const OK: i32 = 0;
    pub const CLEARTEXT: i32 = 3;
    pub const MD5: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// A decoded `R` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    /// The mechanisms offered.
    Sasl(Vec<&'a str>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

impl<'a> Authentication<'a> {
    pub fn decode(frame: &'a Frame) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::new(frame.body(), "Authentication");
        Ok(match r.i32()? {
            auth_code::OK => Authentication::Ok,
            auth_code::CLEARTEXT => Authentication::Cleartext,
            auth_code::MD5 => {
                let s = r.bytes(4)?;
                Authentication::Md5 {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            auth_code::SASL => {
                let mut mechs = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechs.push(m);
                }
                Authentication::Sasl(mechs)
            }
            auth_code::SASL_CONTINUE => Authentication::SaslContinue(r.remaining()),
            auth_code::SASL_FINAL => Authentication::SaslFinal(r.remaining()),
            other => Authentication::Other(other),
        })
    }
}

/// `S`: a run-time parameter's name and value.
pub fn decode_parameter_status(frame: &Frame) -> Result<(&str, &str), ProtocolError> {
    let mut r = BodyReader::new(frame.body(), "ParameterStatus");
    let name = r.cstr()?;
    let value = r.cstr()?;
    Ok((name, value))
}

/// `K`: the backend's process id and cancel secret.
pub fn decode_backend_key(frame: &Frame) -> Result<(i32, i32), ProtocolError> {
    let mut r = BodyReader::new(frame.body(), "BackendKeyData");
    Ok((r.i32()?, r.i32()?))
}

/// `Z`: the transaction status, `I`, `T` or `E`.
pub fn decode_ready_status(frame: &Frame) -> Result<u8, ProtocolError> {
    let mut r = BodyReader::new(frame.body(), "ReadyForQuery");
    let s = r.u8()?;
    if !matches!(s, b'I' | b'T' | b'E') {
        return Err(ProtocolError::malformed("ReadyForQuery", "unknown status"));
    }
    Ok(s)
}

/// A DataRow's values as text (`None`: NULL), for the router's own small queries.
pub fn decode_data_row_text(frame: &Frame) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut r = BodyReader::new(frame.body(), "DataRow");
    let n = r.count16()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            out.push(None);
        } else {
            let b = r.bytes(len as usize)?;
            out.push(Some(String::from_utf8_lossy(b).into_owned()));
        }
    }
    Ok(out)
}

/// `E`/`N` fields: (field code, value).
pub fn decode_error_fields(frame: &Frame) -> Result<Vec<(u8, &str)>, ProtocolError> {
    let mut r = BodyReader::new(frame.body(), "ErrorResponse");
    let mut fields = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        fields.push((code, r.cstr()?));
    }
    Ok(fields)
}

/// The SQLSTATE and message of an ErrorResponse, for logs and internal errors.
pub fn error_summary(frame: &Frame) -> (String, String) {
    let fields = decode_error_fields(frame).unwrap_or_default();
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    (get(b'C'), get(b'M'))
}

/// `C`: the command tag.
pub fn decode_command_tag(frame: &Frame) -> Result<&str, ProtocolError> {
    BodyReader::new(frame.body(), "CommandComplete").cstr()
}

pub fn encode_auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin_frame(out, b'R');
    out.put_i32(code);
    out.extend_from_slice(data);
    finish_frame(out, at);
}

pub fn encode_auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin_frame(out, b'R');
    out.put_i32(auth_code::SASL);
    for m in mechanisms {
        put_cstr(out, m.as_bytes());
    }
    out.put_u8(0);
    finish_frame(out, at);
}

pub fn encode_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin_frame(out, b'S');
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish_frame(out, at);
}

pub fn encode_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin_frame(out, b'K');
    out.put_i32(pid);
    out.put_i32(secret);
    finish_frame(out, at);
}

pub fn encode_ready(out: &mut BytesMut, status: u8) {
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, status]);
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not
/// recognised.
pub fn encode_negotiate_protocol(out: &mut BytesMut, minor: i32, unrecognised: &[&str]) {
    let at = begin_frame(out, b'v');
    out.put_i32(minor);
    out.put_i32(unrecognised.len() as i32);
    for o in unrecognised {
        put_cstr(out, o.as_bytes());
    }
    finish_frame(out, at);
}

/// An ErrorResponse (`tag = b'E'`) or NoticeResponse (`b'N'`).
/// FATAL 57P01, what PostgreSQL sends to its sessions when it is shut down.
pub fn encode_shutdown_fatal(out: &mut BytesMut) {
    encode_error(
        out,
        b'E',
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
        None,
        None,
    );
}

pub fn encode_error(
    out: &mut BytesMut,
    tag: u8,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let at = begin_frame(out, tag);
    out.put_u8(b'S');
    put_cstr(out, severity.as_bytes());
    out.put_u8(b'V');
    put_cstr(out, severity.as_bytes());
    out.put_u8(b'C');
    put_cstr(out, code.as_bytes());
    out.put_u8(b'M');
    put_cstr(out, message.as_bytes());
    if let Some(d) = detail {
        out.put_u8(b'D');
        put_cstr(out, d.as_bytes());
    }
    if let Some(h) = hint {
        out.put_u8(b'H');
        put_cstr(out, h.as_bytes());
    }
    out.put_u8(0);
    finish_frame(out, at);
}

/// `text` type oid.
pub const TEXT_OID: u32 = 25;

/// A RowDescription whose columns are all `text` in text format.
pub fn encode_row_description_text(out: &mut BytesMut, columns: &[&str]) {
    let at = begin_frame(out, b'T');
    out.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(out, c.as_bytes());
        out.put_u32(0); // table oid
        out.put_i16(0); // column number
        out.put_u32(TEXT_OID);
        out.put_i16(-1); // type size
        out.put_i32(-1); // type modifier
        out.put_i16(0); // text format
    }
    finish_frame(out, at);
}

/// `void` type oid (what a function returning nothing answers, e.g. Citus'
/// `create_distributed_table`).
pub const VOID_OID: u32 = 2278;

/// A RowDescription of one `void` column in text format.
pub fn encode_row_description_void(out: &mut BytesMut, column: &str) {
    let at = begin_frame(out, b'T');
    out.put_i16(1);
    put_cstr(out, column.as_bytes());
    out.put_u32(0); // table oid
    out.put_i16(0); // column number
    out.put_u32(VOID_OID);
    out.put_i16(4); // type size
    out.put_i32(-1); // type modifier
    out.put_i16(0); // text format
    finish_frame(out, at);
}

/// A DataRow of text values (`None` is NULL).
pub fn encode_data_row<S: AsRef<str>>(out: &mut BytesMut, values: &[Option<S>]) {
    let at = begin_frame(out, b'D');
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                let v = v.as_ref().as_bytes();
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    finish_frame(out, at);
}

pub fn encode_command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin_frame(out, b'C');
    put_cstr(out, tag.as_bytes());
    finish_frame(out, at);
}

/// A message with an empty body: ParseComplete `1`, BindComplete `2`, CloseComplete
/// `3`, NoData `n`, EmptyQueryResponse `I`, PortalSuspended `s`.
pub fn encode_empty(out: &mut BytesMut, tag: u8) {
    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::try_split_frame;

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        encode_error(&mut out, b'E', "ERROR", "0A000", "nope", Some("d"), None);
        let f = try_split_frame(&mut out, 1024).expect("ok").expect("frame");
        assert_eq!(error_summary(&f), ("0A000".to_string(), "nope".to_string()));
    }
}

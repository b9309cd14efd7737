//! The first packet of a connection, which has no tag: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest, told apart by the code in place of the protocol
//! version.

use super::frame::{put_cstr, BodyReader, ProtocolError};
use bytes::{BufMut, BytesMut};

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup {
        /// The minor protocol version requested (3.x).
        minor: u16,
        /// Parameters in order: `user`, `database`, `options`, GUCs, `_pq_.` extensions.
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
}

impl StartupPacket {
    /// Decodes the body of a startup packet (after its length word).
    pub fn decode(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
        let mut r = BodyReader::new(body, "startup");
        let code = r.i32()?;
        match code {
            SSL_REQUEST => {
                r.finish()?;
                Ok(StartupPacket::SslRequest)
            }
            GSSENC_REQUEST => {
                r.finish()?;
                Ok(StartupPacket::GssEncRequest)
            }
            CANCEL_REQUEST => {
                let pid = r.i32()?;
                let secret = r.i32()?;
                r.finish()?;
                Ok(StartupPacket::Cancel { pid, secret })
            }
            _ => {
                let major = (code >> 16) as u16;
                let minor = (code & 0xffff) as u16;
                if major != 3 {
                    return Err(ProtocolError::UnsupportedProtocol { major, minor });
                }
                let mut params = Vec::new();
                loop {
                    let name = r.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((name.to_string(), value.to_string()));
                }
                r.finish()?;
                Ok(StartupPacket::Startup { minor, params })
            }
        }
    }
}

/// Encodes a protocol 3.0 StartupMessage.
pub fn encode_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a CancelRequest carrying a backend's key.
pub fn encode_cancel(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_startup() {
        let mut out = BytesMut::new();
        encode_startup(&mut out, &[("user", "bob"), ("database", "db")]);
        let p = StartupPacket::decode(&out[4..]).expect("valid");
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        let mut out = BytesMut::new();
        encode_cancel(&mut out, 7, 9);
        assert_eq!(
            StartupPacket::decode(&out[4..]).expect("valid"),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StartupPacket::decode(&data);
        }
    }
}

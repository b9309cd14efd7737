//! Connection startup (PostgreSQL protocol "Start-up"): SSL/GSS negotiation, the
//! StartupMessage, authentication against `router.auth` / `router.users`, then the
//! greeting (AuthenticationOk, ParameterStatus of a real shard, BackendKeyData,
//! ReadyForQuery). CancelRequest packets are served here too.
//!
//! TLS (SPEC §6): an SSLRequest is answered `S` when the router has a certificate
//! ([`TlsMode::Enabled`]) and `N` otherwise; after `S` [`handshake`] returns
//! [`Handshake::StartTls`], the caller runs the TLS handshake on the socket and calls
//! [`handshake`] again over the encrypted stream. As in PostgreSQL, each negotiation may
//! happen once per connection, and a client may not send bytes after its SSLRequest
//! before reading the answer (they would be plaintext spliced into the TLS session; see
//! CVE-2021-23214). GSSENCRequest is always answered `N`. A CancelRequest may come in
//! the clear (libpq's `PQcancel`) or over TLS (tokio-postgres, libpq 17).

use super::error::SessionError;
use crate::auth::{md5_matches, ScramExchange, SCRAM_SHA_256};
use crate::protocol::backend::{
    auth_code, encode_auth, encode_auth_sasl, encode_backend_key, encode_negotiate_protocol,
    encode_parameter_status, encode_ready,
};
use crate::protocol::frame::BodyReader;
use crate::protocol::startup::StartupPacket;
use crate::protocol::{FrameReader, ProtocolError};
use crate::server::{RouterCtx, TlsMode};
use bytes::BytesMut;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What the first packets asked for.
pub enum Handshake {
    /// A CancelRequest (served) or a connection closed before startup.
    Done,
    /// The client asked for TLS and was answered `S`: the caller wraps the socket with
    /// this acceptor and calls [`handshake`] again with `encrypted` set.
    StartTls(crate::tls::TlsAcceptor),
    Session {
        user: String,
        database: String,
        params: Vec<(String, String)>,
    },
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> Result<(), SessionError> {
    let r = w.write_all(out).await;
    out.clear();
    r.map_err(|e| SessionError::Protocol(ProtocolError::Io(e)))
}

/// The one-byte answer to SSLRequest or GSSENCRequest.
async fn answer<W: AsyncWrite + Unpin>(w: &mut W, byte: u8) -> Result<(), SessionError> {
    w.write_all(&[byte])
        .await
        .map_err(|e| SessionError::Protocol(ProtocolError::Io(e)))
}

/// Reads the startup packet(s) and authenticates. `encrypted` says that TLS is already
/// running on this connection. On failure, `out` may hold messages to send before the
/// error.
pub async fn handshake<R, W>(
    ctx: &RouterCtx,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    out: &mut BytesMut,
    encrypted: bool,
) -> Result<Handshake, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ssl_done = encrypted;
    let mut gss_done = encrypted;
    let (minor, params) = loop {
        let Some(body) = reader.read_startup().await? else {
            return Ok(Handshake::Done);
        };
        match StartupPacket::decode(&body)? {
            StartupPacket::SslRequest if ssl_done => {
                return Err(ProtocolError::malformed(
                    "SSLRequest",
                    "SSL negotiation was already done on this connection",
                )
                .into())
            }
            StartupPacket::SslRequest => {
                ssl_done = true;
                match &ctx.tls {
                    TlsMode::Enabled(acceptor) => {
                        if reader.buffered() > 0 {
                            return Err(ProtocolError::malformed(
                                "SSLRequest",
                                "received unencrypted data after SSL request",
                            )
                            .into());
                        }
                        answer(writer, b'S').await?;
                        return Ok(Handshake::StartTls(acceptor.clone()));
                    }
                    TlsMode::Disabled => answer(writer, b'N').await?,
                }
            }
            StartupPacket::GssEncRequest if gss_done => {
                return Err(ProtocolError::malformed(
                    "GSSENCRequest",
                    "GSSAPI negotiation was already done on this connection",
                )
                .into())
            }
            StartupPacket::GssEncRequest => {
                gss_done = true;
                answer(writer, b'N').await?;
            }
            StartupPacket::Cancel { pid, secret } => {
                for t in ctx.clients.cancel_targets(pid, secret) {
                    if let Err(e) = t.cancel().await {
                        tracing::debug!(error = %e, addr = %t.addr, "cancel request to backend failed");
                    }
                }
                return Ok(Handshake::Done);
            }
            StartupPacket::Startup { minor, params } => break (minor, params),
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return Err(SessionError::NoUser);
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if ctx.config.tls_required && !encrypted {
        return Err(SessionError::TlsRequired { user, database });
    }
    let unrecognised: Vec<&str> = params
        .iter()
        .filter(|(n, _)| n.starts_with("_pq_."))
        .map(|(n, _)| n.as_str())
        .collect();
    if minor > 0 || !unrecognised.is_empty() {
        encode_negotiate_protocol(out, 0, &unrecognised);
    }
    authenticate(ctx, reader, writer, out, &user).await?;
    encode_auth(out, auth_code::OK, &[]);
    Ok(Handshake::Session {
        user,
        database,
        params,
    })
}

async fn authenticate<R, W>(
    ctx: &RouterCtx,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    out: &mut BytesMut,
    user: &str,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let password = ctx
        .config
        .users
        .iter()
        .find(|u| u.name == user)
        .map(|u| u.password.clone());
    // Unknown user and wrong password look the same to the client.
    let fail = |_: &mut BytesMut| Err(SessionError::AuthFailed(user.to_string()));
    match ctx.config.auth.as_str() {
        "md5" => {
            let mut salt = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut salt);
            encode_auth(out, auth_code::MD5, &salt);
            send(writer, out).await?;
            let Some(frame) = reader.read_frame().await? else {
                return fail(out);
            };
            if frame.tag() != b'p' {
                return fail(out);
            }
            let response = frame.body().strip_suffix(&[0]).unwrap_or(frame.body());
            match password {
                Some(pw) if md5_matches(user, &pw, salt, response) => Ok(()),
                _ => fail(out),
            }
        }
        "scram-sha-256" => {
            encode_auth_sasl(out, &[SCRAM_SHA_256]);
            send(writer, out).await?;
            let Some(frame) = reader.read_frame().await? else {
                return fail(out);
            };
            if frame.tag() != b'p' {
                return fail(out);
            }
            let mut r = BodyReader::new(frame.body(), "SASLInitialResponse");
            let mechanism = r.cstr()?;
            let len = r.i32()?;
            let data = if len < 0 {
                &[][..]
            } else {
                r.bytes(len as usize)?
            };
            if mechanism != SCRAM_SHA_256 {
                return fail(out);
            }
            // An unknown user runs the exchange against a throwaway secret, so timing and
            // messages do not reveal which users exist.
            let secret = match password.as_ref().and_then(|_| ctx.scram_secrets.get(user)) {
                Some(s) => s.clone(),
                None => crate::auth::ScramSecret::from_password(&format!(
                    "{:x}",
                    rand::random::<u128>()
                )),
            };
            let (exchange, server_first) = match ScramExchange::start(&secret, data) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "SCRAM exchange failed");
                    return fail(out);
                }
            };
            encode_auth(out, auth_code::SASL_CONTINUE, server_first.as_bytes());
            send(writer, out).await?;
            let Some(frame) = reader.read_frame().await? else {
                return fail(out);
            };
            if frame.tag() != b'p' {
                return fail(out);
            }
            match exchange.finish(&secret, frame.body()) {
                Ok(server_final) if password.is_some() => {
                    encode_auth(out, auth_code::SASL_FINAL, server_final.as_bytes());
                    Ok(())
                }
                Ok(_) => fail(out),
                Err(e) => {
                    tracing::debug!(error = %e, "SCRAM exchange failed");
                    fail(out)
                }
            }
        }
        _ => Ok(()),
    }
}

/// The greeting after AuthenticationOk: ParameterStatus (the shard's values, with the
/// client's own startup settings where it gave them), BackendKeyData, ReadyForQuery.
pub fn greeting(
    out: &mut BytesMut,
    server_params: &[(String, String)],
    vars: &super::vars::SessionVars,
    pid: i32,
    secret: i32,
) {
    for (name, value) in server_params {
        let value = match vars.startup_value(name) {
            Some(v) if name == "client_encoding" => normalize_encoding(&v),
            Some(v) => v,
            None => value.clone(),
        };
        encode_parameter_status(out, name, &value);
    }
    encode_backend_key(out, pid, secret);
    encode_ready(out, b'I');
}

fn normalize_encoding(v: &str) -> String {
    match v.to_ascii_uppercase().replace(['-', '_'], "").as_str() {
        "UTF8" | "UNICODE" => "UTF8".into(),
        "LATIN1" => "LATIN1".into(),
        "SQLASCII" => "SQL_ASCII".into(),
        _ => v.to_ascii_uppercase(),
    }
}

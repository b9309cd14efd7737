//! Password checks for clients of the router (SPEC §6, §13): md5 and SCRAM-SHA-256
//! (RFC 5802/7677 as PostgreSQL implements it, without channel binding), against the
//! plain-text passwords of `router.users`. The router's own logins to the shards use
//! `postgres-protocol`'s client side, in `backend::conn`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const ITERATIONS: u32 = 4096;

/// Why a SASL exchange failed. The client only ever learns "password authentication
/// failed"; this is for the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("wrong password")]
    WrongPassword,
}

/// Checks an md5 PasswordMessage (`md5` + hex) against the user's password.
pub fn md5_matches(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    constant_time_eq(expected.as_bytes(), response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key size");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut prev = hmac(password, &[salt, &[0, 0, 0, 1]]);
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac(password, &[&prev]);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

/// A user's SCRAM secret, derived once from the password.
#[derive(Clone)]
pub struct ScramSecret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    pub fn from_password(password: &str) -> ScramSecret {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salted = hi(password.as_bytes(), &salt, ITERATIONS);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramSecret {
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
            salt,
            iterations: ITERATIONS,
        }
    }
}

/// The server side of one SCRAM-SHA-256 exchange, between the client's first and final
/// messages.
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ScramExchange {
    /// Takes the client-first-message (from SASLInitialResponse); returns the exchange and
    /// the server-first-message to send.
    pub fn start(
        secret: &ScramSecret,
        client_first: &[u8],
    ) -> Result<(ScramExchange, String), AuthError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(AuthError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(AuthError::ChannelBinding),
            _ => return Err(AuthError::Malformed("bad channel binding flag")),
        }
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Malformed("no gs2 header"))?;
        let gs2_header = msg[..msg.len() - bare.len()].to_string();
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("no nonce"))?;
        if client_nonce.is_empty() {
            return Err(AuthError::Malformed("empty nonce"));
        }
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramExchange {
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                gs2_header,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; returns the server-final-message on success.
    pub fn finish(self, secret: &ScramSecret, client_final: &[u8]) -> Result<String, AuthError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("no proof"))?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = cbind.ok_or(AuthError::Malformed("no channel binding"))?;
        if STANDARD.decode(cbind).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(AuthError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| AuthError::Malformed("bad proof"))?;
        if proof.len() != 32 {
            return Err(AuthError::Malformed("bad proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &secret.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn scram_round_trip_with_postgres_protocol_client() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unrequested());
        let (ex, server_first) = ScramExchange::start(&secret, client.message()).expect("first");
        client.update(server_first.as_bytes()).expect("update");
        let server_final = ex.finish(&secret, client.message()).expect("final");
        client
            .finish(server_final.as_bytes())
            .expect("client verifies server");
    }

    #[test]
    fn scram_rejects_wrong_password() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramSha256::new(b"wrong", ChannelBinding::unrequested());
        let (ex, server_first) = ScramExchange::start(&secret, client.message()).expect("first");
        client.update(server_first.as_bytes()).expect("update");
        assert!(matches!(
            ex.finish(&secret, client.message()),
            Err(AuthError::WrongPassword)
        ));
    }

    #[test]
    fn md5_check() {
        let salt = [1, 2, 3, 4];
        let good = postgres_protocol::authentication::md5_hash(b"u", b"p", salt);
        assert!(md5_matches("u", "p", salt, good.as_bytes()));
        assert!(!md5_matches("u", "q", salt, good.as_bytes()));
    }
}

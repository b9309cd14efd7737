//! TLS for clients (SPEC §6, "SSL negotiation"): the rustls acceptor built from
//! `router.tls_cert` / `router.tls_key`.
//!
//! PostgreSQL negotiates TLS inside its own protocol: the client sends an SSLRequest
//! packet in the clear, the server answers one byte (`S` or `N`), and on `S` the TLS
//! handshake starts on the same socket. [`session::startup`](crate::session::startup)
//! does the negotiation; this module only turns the configured PEM files into a
//! [`TlsAcceptor`], once at startup, so a bad file stops the router before it listens
//! instead of failing every client later.
//!
//! rustls with the `ring` provider: it builds with a C compiler alone (no OpenSSL
//! headers, no cmake), and the provider is named explicitly rather than taken from a
//! process-wide default.

use pgshard_catalog::config::RouterConfig;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
pub use tokio_rustls::TlsAcceptor;

/// Why the TLS settings cannot be used. Each message names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The I/O error is in the message, not a `source`, so it is printed once.
    #[error("router.{key}: cannot read `{path}`: {error}")]
    Read {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("router.{key}: `{path}` holds no PEM {what}")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("router.{key}: `{path}` is not valid PEM: {problem}")]
    BadPem {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "router.tls_key: `{key_path}` does not match the certificate in `{cert_path}`: {problem}"
    )]
    Mismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
        problem: String,
    },
    #[error("router.tls_cert and router.tls_key must be set together")]
    HalfSet,
}

/// The acceptor for `config`, or `None` when TLS is not configured (SSLRequest is then
/// answered `N`).
pub fn acceptor(config: &RouterConfig) -> Result<Option<TlsAcceptor>, TlsConfigError> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => load(cert, key).map(Some),
        _ => Err(TlsConfigError::HalfSet),
    }
}

/// Reads a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsConfigError> {
    let cert_pem = read("tls_cert", cert_path)?;
    let key_pem = read("tls_key", key_path)?;
    let bad_pem =
        |key: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsConfigError::BadPem {
            key,
            path: path.to_owned(),
            problem: e.to_string(),
        };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("tls_cert", cert_path, &e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::Empty {
            key: "tls_cert",
            path: cert_path.to_owned(),
            what: "certificate",
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsConfigError::Empty {
                key: "tls_key",
                path: key_path.to_owned(),
                what: "private key",
            })
        }
        Err(e) => return Err(bad_pem("tls_key", key_path, &e)),
    };
    let mismatch = |e: &dyn std::fmt::Display| TlsConfigError::Mismatch {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        problem: e.to_string(),
    };
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| mismatch(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| mismatch(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|error| TlsConfigError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

/// A server-side TLS stream whose reads first push out any encrypted bytes still queued.
///
/// rustls accepts plaintext into its own buffer and `poll_write` may return before every
/// record reached the socket (when the socket is full). The session writes a response
/// with `write_all` and then waits for the client without flushing, so the tail of a
/// large response could sit in rustls while the client waits for it. Every session
/// waits by reading the client, so a flush attempt at each read closes that gap without
/// touching the session code; a plain TCP stream needs none of this.
pub struct ServerTls<S>(tokio_rustls::server::TlsStream<S>);

impl<S> ServerTls<S> {
    pub fn new(stream: tokio_rustls::server::TlsStream<S>) -> Self {
        ServerTls(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Pending registers for write readiness and wakes this reader then; an error
        // will show again on the read or the next write.
        let _ = Pin::new(&mut self.0).poll_flush(cx);
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cert: &Path, key: &Path) -> RouterConfig {
        RouterConfig {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            ..RouterConfig::default()
        }
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key_pair.serialize_pem()).expect("write");
        (c, k)
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        assert!(matches!(acceptor(&config(&cert_a, &key_a)), Ok(Some(_))));
        let text = acceptor(&config(&cert_a, &key_b))
            .err()
            .expect("must fail")
            .to_string();
        assert!(text.starts_with("router.tls_key: `"), "{text}");
        assert!(text.contains("b.key") && text.contains("a.crt"), "{text}");
    }

    #[test]
    fn half_set_is_refused() {
        let c = RouterConfig {
            tls_cert: Some("/x.crt".into()),
            ..RouterConfig::default()
        };
        assert!(matches!(acceptor(&c), Err(TlsConfigError::HalfSet)));
    }

    #[test]
    fn not_configured_is_none() {
        assert!(matches!(acceptor(&RouterConfig::default()), Ok(None)));
    }

    #[test]
    fn missing_file_names_key_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("nope.crt");
        let key = dir.path().join("nope.key");
        let err = acceptor(&config(&cert, &key)).err().expect("must fail");
        let text = err.to_string();
        assert!(text.starts_with("router.tls_cert: cannot read `"), "{text}");
        assert!(text.contains("nope.crt"), "{text}");
    }

    #[test]
    fn garbage_files_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, "not a certificate\n").expect("write");
        std::fs::write(&key, "not a key\n").expect("write");
        let text = acceptor(&config(&cert, &key))
            .err()
            .expect("must fail")
            .to_string();
        assert!(text.starts_with("router.tls_cert: "), "{text}");
        assert!(text.contains("server.crt"), "{text}");
    }

    /// The tail of a response that rustls could not put on a full socket reaches the
    /// client once the server goes back to reading, with no flush from the writer. A
    /// 1 KiB in-memory pipe and a single-threaded runtime make the socket full at the
    /// moment the last `write_all` returns, every time.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_tail_is_sent_while_the_server_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls::pki_types::ServerName;
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};

        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_path, key_path) = write_pair(dir.path(), "server");
        let acceptor = load(&cert_path, &key_path).expect("acceptor");
        let mut roots = RootCertStore::empty();
        let pem = std::fs::read(&cert_path).expect("read");
        roots
            .add(CertificateDer::from_pem_slice(&pem).expect("pem"))
            .expect("root");
        let client_config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));

        let (client_io, server_io) = tokio::io::duplex(1024);
        const LEN: usize = 200 * 1024;
        let server = async move {
            let tls = acceptor.accept(server_io).await.expect("accept");
            let (mut r, mut w) = tokio::io::split(ServerTls::new(tls));
            w.write_all(&vec![7u8; LEN]).await.expect("write");
            // What a session does next: wait for the client.
            let mut b = [0u8; 1];
            let _ = r.read(&mut b).await;
        };
        let client = async move {
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, client_io).await.expect("connect");
            let mut got = vec![0u8; LEN];
            tls.read_exact(&mut got).await.expect("read");
            assert!(got.iter().all(|&b| b == 7));
        };
        tokio::select! {
            _ = server => panic!("server ended first"),
            r = tokio::time::timeout(std::time::Duration::from_secs(10), client) => {
                r.expect("client got the whole response")
            }
        }
    }
}

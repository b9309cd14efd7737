//! The socket of a backend connection: TCP, or the Unix socket of a PostgreSQL on
//! this machine (the local runtime's shards, `router.backend_socket_dir`), which costs
//! the kernel less per message than loopback TCP (no TCP stack, no netfilter) — on the
//! router's side and on PostgreSQL's.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// Where the shards on this machine keep their Unix sockets (set once at startup).
static SOCKET_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Backends on a loopback address are reached through `<dir>/.s.PGSQL.<port>` when
/// that socket exists (TCP otherwise).
pub fn set_socket_dir(dir: &Path) {
    let _ = SOCKET_DIR.set(dir.to_path_buf());
}

fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to `host:port`: through the Unix socket of a local instance when one is
/// configured and answers, else over TCP (with `TCP_NODELAY`).
pub(crate) async fn connect(
    host: &str,
    port: u16,
    addr: &str,
) -> io::Result<(BackendRead, BackendWrite)> {
    if let Some(dir) = SOCKET_DIR.get().filter(|_| loopback(host)) {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        match UnixStream::connect(&path).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                return Ok((BackendRead::Unix(r), BackendWrite::Unix(w)));
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "no Unix socket; connecting over TCP");
            }
        }
    }
    let s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let (r, w) = s.into_split();
    Ok((BackendRead::Tcp(r), BackendWrite::Tcp(w)))
}

/// The read half of a backend socket.
pub enum BackendRead {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// The write half of a backend socket.
pub enum BackendWrite {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl BackendRead {
    /// A read that does not wait (`WouldBlock` when nothing is there).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BackendRead::Tcp(r) => r.try_read(buf),
            BackendRead::Unix(r) => r.try_read(buf),
        }
    }
}

impl AsyncRead for BackendRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendRead::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            BackendRead::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            BackendWrite::Unix(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            BackendWrite::Unix(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            BackendWrite::Unix(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

//! Free TCP ports for test instances: bind `127.0.0.1:0` and keep the port the kernel
//! chose. The port is free when returned but not reserved, so a harness that starts a
//! server on it retries with a new port on the rare collision.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process: the kernel may offer a just-released port
/// again, and two tests in one process must not both get it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A currently free port on 127.0.0.1 not handed out before by this process.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no fresh free port after 100 tries",
    ))
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    (0..n).map(|_| free_port()).collect()
}

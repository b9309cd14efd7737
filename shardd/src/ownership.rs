//! Which process is whose (SPEC §13: the CLI and shardd touch only their own cluster).
//!
//! A pid read from a file is only a claim: the process may have exited and the pid been
//! reused, or the file may belong to someone else's server. Before anything is
//! signalled, the claim is proved against `/proc`:
//!
//! - a **postmaster** of data directory `D` is a `postgres` process whose working
//!   directory is `D` (PostgreSQL `chdir`s into its data directory at start);
//! - **shardd** of cluster directory `C` is a `shardd` process holding `C/shardd.lock`
//!   open (it keeps the lock for its whole life);
//! - the **router** of cluster directory `C` is a `pgshard-router` process started with
//!   `--config C/router.toml`.
//!
//! It also answers "who listens on this port", for error messages that name what holds a
//! port and for readiness checks that must prove they reached their own router.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The short command name (`comm`) of a live, non-zombie process.
fn comm(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let state = rest.trim_start().chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    Some(head.split_once('(')?.1.to_string())
}

/// A process's arguments (`argv`), if it is alive and readable.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A one-line description of a process for messages: `pid 123 (postgres -D /x)`.
pub fn describe(pid: u32) -> String {
    match cmdline(pid) {
        Some(args) => {
            let mut text = args.join(" ");
            if text.len() > 160 {
                let mut cut = 160;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            format!("pid {pid} ({text})")
        }
        None => match comm(pid) {
            Some(c) => format!("pid {pid} ({c})"),
            None => format!("pid {pid}"),
        },
    }
}

fn canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// True if `pid` is a live `postgres` postmaster (or one of its children) running on
/// data directory `data_dir`.
pub fn is_postgres_on(pid: u32, data_dir: &Path) -> bool {
    let Some(c) = comm(pid) else {
        return false;
    };
    if !(c.starts_with("postgres") || c.starts_with("postmaster")) {
        return false;
    }
    let Some(want) = canonical(data_dir) else {
        return false;
    };
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == want)
}

/// True if `pid` is a live process named `program` that has `file` open (e.g. shardd
/// and its data directory's lock file).
pub fn is_program_holding(pid: u32, program: &str, file: &Path) -> bool {
    if comm(pid).as_deref() != Some(truncated_comm(program)) {
        return false;
    }
    let Some(want) = canonical(file) else {
        return false;
    };
    open_files(pid).any(|p| p == want)
}

/// True if `pid` is a live process running program `program` with `flag value` among its
/// arguments (e.g. the router started with `--config DIR/router.toml`).
pub fn is_program_with_arg(pid: u32, program: &str, flag: &str, value: &Path) -> bool {
    let Some(args) = cmdline(pid) else {
        return false;
    };
    let Some(exe) = args.first() else {
        return false;
    };
    if Path::new(exe).file_name().and_then(|n| n.to_str()) != Some(program) {
        return false;
    }
    let want = canonical(value).unwrap_or_else(|| value.to_path_buf());
    args.windows(2).any(|w| {
        w[0] == flag && {
            let got = Path::new(&w[1]);
            got == value || canonical(got).is_some_and(|g| g == want)
        }
    })
}

/// The kernel truncates `comm` to 15 bytes.
fn truncated_comm(program: &str) -> &str {
    let mut end = program.len().min(15);
    while !program.is_char_boundary(end) {
        end -= 1;
    }
    &program[..end]
}

fn fd_links(pid: u32) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
}

fn open_files(pid: u32) -> impl Iterator<Item = PathBuf> {
    fd_links(pid)
}

/// The live processes named `program` that have `file` open (e.g. the shardd holding a
/// data directory's lock file), found by walking `/proc/*/fd`.
pub fn holding(program: &str, file: &Path) -> Vec<u32> {
    let Some(want) = canonical(file) else {
        return Vec::new();
    };
    let name = truncated_comm(program);
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).as_deref() == Some(name))
        .filter(|pid| open_files(*pid).any(|p| p == want))
        .collect();
    pids.sort_unstable();
    pids
}

/// Socket inodes of the sockets listening on TCP `port` (any address), from
/// `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            // 0A is TCP_LISTEN.
            if *state != "0A" {
                continue;
            }
            let Some(p) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if p == port {
                if let Ok(i) = inode.parse::<u64>() {
                    inodes.insert(i);
                }
            }
        }
    }
    inodes
}

fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    fd_links(pid)
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// True if process `pid` holds a socket listening on TCP `port`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let listening = listening_inodes(port);
    !listening.is_empty() && socket_inodes(pid).iter().any(|i| listening.contains(i))
}

/// The processes holding a socket that listens on TCP `port` (those whose `/proc`
/// entries this user may read).
pub fn listeners(port: u16) -> Vec<u32> {
    let listening = listening_inodes(port);
    if listening.is_empty() {
        return Vec::new();
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| socket_inodes(*pid).iter().any(|i| listening.contains(i)))
        .collect();
    pids.sort_unstable();
    pids
}

/// `None` if `addr` can be bound now; else why not, naming the address and, where
/// `/proc` tells, the process that holds it. Port 0 is always free.
pub fn port_taken(addr: SocketAddr) -> Option<String> {
    if addr.port() == 0 {
        return None;
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let holders = listeners(addr.port());
            Some(if holders.is_empty() {
                format!("{addr} is already in use")
            } else {
                let who: Vec<String> = holders.iter().map(|p| describe(*p)).collect();
                format!("{addr} is already in use by {}", who.join(", "))
            })
        }
        Err(e) => Some(format!("cannot listen on {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let me = std::process::id();
        assert!(listens_on(me, addr.port()));
        assert!(listeners(addr.port()).contains(&me));
        let taken = port_taken(addr).expect("taken");
        assert!(taken.contains(&addr.to_string()), "{taken}");
        assert!(taken.contains(&format!("pid {me}")), "{taken}");
        drop(l);
        assert_eq!(port_taken(addr), None);
    }

    #[test]
    fn a_file_held_open_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let file = std::fs::File::create(&path).expect("create");
        let me = std::process::id();
        let name = comm(me).expect("comm");
        assert!(is_program_holding(me, &name, &path));
        assert!(!is_program_holding(me, "shardd-other", &path));
        assert_eq!(holding(&name, &path), vec![me]);
        drop(file);
        assert!(!is_program_holding(me, &name, &path));
        // Not a postgres process.
        assert!(!is_postgres_on(me, dir.path()));
    }
}

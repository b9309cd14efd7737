//! Every process of one local PostgreSQL instance, found through `/proc`, and a kill
//! that leaves none of them behind.
//!
//! Why a process-group kill is not enough: each child of the postmaster (backends,
//! checkpointer, walwriter, walsender…) calls `setsid()` at birth, so it is in neither
//! the postmaster's process group nor its session. SIGKILLing the postmaster alone
//! leaves them running until they next check for postmaster death, and while any of
//! them is attached to the old shared memory segment a new postmaster on the same data
//! directory refuses to start ("pre-existing shared memory block is still in use").
//!
//! An instance's processes are the postmaster's descendants (by parent pid) plus every
//! `postgres` process whose working directory is the data directory (PostgreSQL
//! `chdir`s there at start and its children inherit it), which also finds the orphans of
//! a postmaster that was killed by someone else. A process is identified by its pid and
//! its start time, so a pid reused after exit is never mistaken for it.

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for a SIGSTOPped postmaster to show as stopped.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// One process, as of one reading of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Proc {
    pub pid: u32,
    /// Field 22 of `stat`: start time in clock ticks since boot.
    start: u64,
}

#[derive(Debug)]
struct Stat {
    state: char,
    ppid: u32,
    start: u64,
    comm: String,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may contain spaces and parentheses, so split at
    // the last ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); start time is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
        comm,
    })
}

impl Proc {
    /// The process now running as `pid`, if any.
    pub fn of(pid: u32) -> Option<Proc> {
        stat(pid).map(|s| Proc {
            pid,
            start: s.start,
        })
    }

    /// True while this very process exists and is not a zombie (a zombie has released
    /// its memory, shared memory included).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && !matches!(s.state, 'Z' | 'X'))
    }

    /// True while this process has not been reaped: a zombie still counts. A killed
    /// postmaster must be reaped before its data directory starts again, because the
    /// new postmaster's `kill(pid, 0)` on the pid in `postmaster.pid` succeeds on a
    /// zombie ("lock file already exists").
    pub fn exists(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start)
    }

    /// Reap this process if it is our own zombie child. A detached postmaster is
    /// nobody's child once `pg_ctl` exits, and is reaped by init, or by us when we are
    /// the subreaper (shardd as a container's PID 1).
    pub fn reap_if_ours(&self) {
        let ours = stat(self.pid).is_some_and(|s| {
            s.start == self.start && s.state == 'Z' && s.ppid == std::process::id()
        });
        if let (true, Ok(raw)) = (ours, i32::try_from(self.pid)) {
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(raw),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }

    fn signal(&self, sig: Signal) {
        if let Ok(raw) = i32::try_from(self.pid) {
            if self.alive() {
                let _ = signal::kill(Pid::from_raw(raw), sig);
            }
        }
    }
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The live processes of the instance in `data_dir` whose postmaster is (or was)
/// `postmaster`, the postmaster itself excluded.
pub(crate) fn instance_children(postmaster: Option<Proc>, data_dir: &Path) -> BTreeSet<Proc> {
    let data_dir: PathBuf = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.into());
    let table: Vec<(u32, Stat)> = all_pids()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| !matches!(s.state, 'Z' | 'X'))
        .collect();
    let mut found = BTreeSet::new();
    for (pid, s) in &table {
        if Some(*pid) == postmaster.map(|p| p.pid) {
            continue;
        }
        let in_dir = s.comm.starts_with("postgres")
            && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir);
        if in_dir {
            found.insert(Proc {
                pid: *pid,
                start: s.start,
            });
        }
    }
    // Descendants by parent pid, whatever their name or directory (an archive_command
    // shell, say).
    if let Some(pm) = postmaster {
        let mut frontier = vec![pm.pid];
        while let Some(parent) = frontier.pop() {
            for (pid, s) in &table {
                if s.ppid == parent && *pid != pm.pid {
                    let p = Proc {
                        pid: *pid,
                        start: s.start,
                    };
                    // A tree: every pid has one parent, so each is visited once.
                    found.insert(p);
                    frontier.push(*pid);
                }
            }
        }
    }
    found
}

/// What [`kill_instance`] did.
#[derive(Debug, Default)]
pub(crate) struct Killed {
    /// How many processes were sent SIGKILL.
    pub signalled: usize,
    /// Pids still alive at the deadline (empty on success).
    pub left: Vec<u32>,
}

/// SIGKILL the postmaster `postmaster` (if given and alive) and every process of the
/// instance in `data_dir`, and wait until none is left, for at most `timeout`.
///
/// The postmaster is SIGSTOPped first so it cannot fork (or restart its children after
/// a crash) while they are being killed; then the children go, then the postmaster.
/// The scan repeats until it comes back empty, so a child forked in the instant before
/// the stop is caught too.
pub(crate) async fn kill_instance(
    postmaster: Option<Proc>,
    data_dir: &Path,
    timeout: Duration,
) -> Killed {
    let deadline = Instant::now() + timeout;
    let postmaster = postmaster.filter(Proc::alive);
    if let Some(pm) = postmaster {
        pm.signal(Signal::SIGSTOP);
        let stop_deadline = Instant::now() + STOP_WAIT;
        while stat(pm.pid)
            .is_some_and(|s| s.start == pm.start && !matches!(s.state, 'T' | 'Z' | 'X'))
            && Instant::now() < stop_deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Every process ever found stays on the list until it is gone: a dying process
    // may no longer show up in a scan (its working directory is released early in
    // exit, and its parent changes once the postmaster is gone) while it still holds
    // the shared memory.
    let mut signalled = BTreeSet::new();
    let mut left = BTreeSet::new();
    let mut delay = Duration::from_millis(2);
    loop {
        let found = instance_children(postmaster, data_dir);
        for p in &found {
            p.signal(Signal::SIGKILL);
        }
        left.extend(found);
        if let Some(pm) = postmaster.filter(Proc::alive) {
            pm.signal(Signal::SIGKILL);
            left.insert(pm);
        }
        signalled.extend(left.iter().copied());
        left.retain(Proc::alive);
        if left.is_empty() || Instant::now() >= deadline {
            return Killed {
                signalled: signalled.len(),
                left: left.into_iter().map(|p| p.pid).collect(),
            };
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_stat() {
        let me = Proc::of(std::process::id()).expect("our own stat");
        assert!(me.alive());
        let stale = Proc {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(
            !stale.alive(),
            "a different start time is a different process"
        );
    }

    #[tokio::test]
    async fn kills_a_process_tree_in_a_directory() {
        // `sh` in a directory of its own with a child that is also in it; neither is
        // named postgres, so the tree is found through the parent pid alone.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 600 & wait"])
            .current_dir(dir.path())
            .spawn()
            .expect("spawn sh");
        let parent = Proc::of(child.id()).expect("sh is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while instance_children(Some(parent), dir.path()).is_empty() {
            assert!(Instant::now() < deadline, "sleep never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kids = instance_children(Some(parent), dir.path());
        let killed = kill_instance(Some(parent), dir.path(), Duration::from_secs(10)).await;
        let _ = child.wait();
        assert!(killed.left.is_empty(), "still alive: {:?}", killed.left);
        assert_eq!(killed.signalled, 2, "sh and sleep");
        assert!(
            kids.iter().all(|k| !k.alive()),
            "children survived: {kids:?}"
        );
    }
}

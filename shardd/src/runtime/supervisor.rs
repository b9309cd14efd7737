//! The owner of PostgreSQL processes in the *Owned* lifecycle (tests, `pgshard up` in
//! the foreground): one dedicated, long-lived thread spawns every postmaster and reaps
//! it.
//!
//! Why a thread of its own: `PR_SET_PDEATHSIG` fires when the *thread* that forked the
//! child exits, not the process. Spawning from tokio's worker or blocking-pool threads
//! (which come and go) would kill postmasters at random. From this thread, the signal
//! (SIGQUIT: immediate shutdown) fires exactly when our process dies — by panic, abort
//! or SIGKILL — so no PostgreSQL process outlives a test run. Dropping the supervisor
//! shuts down whatever is still running and waits for it.

use super::RuntimeError;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How often the thread checks its children for exit while any are alive.
const REAP_INTERVAL: Duration = Duration::from_millis(20);
/// How long the drop-time shutdown waits for SIGQUIT to work before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A child spawned by the supervisor.
#[derive(Debug, Clone)]
pub(crate) struct OwnedChild {
    pub pid: u32,
    /// `None` while running; the exit status once reaped.
    pub exited: watch::Receiver<Option<String>>,
}

impl OwnedChild {
    pub fn is_running(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Wait until the child has been reaped; `false` on timeout.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exited.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some())).await;
        // A closed channel means the supervisor is gone, and it reaps before closing.
        matches!(waited, Ok(Ok(_)) | Ok(Err(_)))
    }
}

enum Request {
    Spawn {
        cmd: Box<Command>,
        reply: oneshot::Sender<std::io::Result<OwnedChild>>,
    },
}

#[derive(Debug)]
pub(crate) struct Supervisor {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new() -> Result<Self, RuntimeError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pg-supervisor".into())
            .spawn(move || run(rx))
            .map_err(|e| RuntimeError::io("could not start the process supervisor thread", e))?;
        Ok(Supervisor {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawn `cmd` from the supervisor thread, with the parent-death signal set.
    pub async fn spawn(&self, cmd: Command) -> Result<OwnedChild, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        let program = format!("{:?}", cmd.get_program());
        self.tx
            .as_ref()
            .ok_or(RuntimeError::SupervisorGone)?
            .send(Request::Spawn {
                cmd: Box::new(cmd),
                reply,
            })
            .map_err(|_| RuntimeError::SupervisorGone)?;
        rx.await
            .map_err(|_| RuntimeError::SupervisorGone)?
            .map_err(|e| RuntimeError::io(format!("could not spawn {program}"), e))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Closing the channel tells the thread to shut its children down.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("process supervisor thread panicked");
            }
        }
    }
}

fn run(rx: mpsc::Receiver<Request>) {
    let mut children: Vec<(Child, watch::Sender<Option<String>>)> = Vec::new();
    loop {
        let msg = if children.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(REAP_INTERVAL)
        };
        match msg {
            Ok(Request::Spawn { mut cmd, reply }) => {
                die_with_parent(&mut cmd, Signal::SIGQUIT);
                let result = cmd.spawn().map(|child| {
                    let (tx, exited) = watch::channel(None);
                    let owned = OwnedChild {
                        pid: child.id(),
                        exited,
                    };
                    children.push((child, tx));
                    owned
                });
                // The requester may have gone away; the child is still ours to reap.
                let _ = reply.send(result);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                shutdown_all(&mut children);
                return;
            }
        }
        reap(&mut children);
    }
}

/// Reap exited children and publish their status.
fn reap(children: &mut Vec<(Child, watch::Sender<Option<String>>)>) {
    children.retain_mut(|(child, tx)| match child.try_wait() {
        Ok(Some(status)) => {
            tracing::debug!(pid = child.id(), %status, "owned process exited");
            tx.send_replace(Some(status.to_string()));
            false
        }
        Ok(None) => true,
        Err(error) => {
            tracing::warn!(pid = child.id(), %error, "could not check owned process");
            true
        }
    });
}

/// Immediate shutdown (SIGQUIT) of every child still running, then SIGKILL for any
/// that has not exited within the grace period.
fn shutdown_all(children: &mut Vec<(Child, watch::Sender<Option<String>>)>) {
    if children.is_empty() {
        return;
    }
    for (child, _) in children.iter() {
        signal_pid(child.id(), Signal::SIGQUIT);
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        reap(children);
        if !children.is_empty() {
            std::thread::sleep(REAP_INTERVAL);
        }
    }
    for (child, tx) in children.iter_mut() {
        tracing::warn!(
            pid = child.id(),
            "owned process ignored SIGQUIT; killing it"
        );
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        tx.send_replace(Some(status));
    }
    children.clear();
}

fn signal_pid(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = signal::kill(Pid::from_raw(raw), sig);
    }
}

/// Make the child get `sig` when the thread spawning it dies: SIGQUIT (PostgreSQL's
/// immediate shutdown) for postmasters spawned here; SIGKILL for the short-lived tools
/// (initdb, pg_basebackup) the Owned lifecycle runs from async tasks.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command, sig: Signal) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child between fork and exec, after the
    // uid/gid switch (which would otherwise clear the setting). It only makes the
    // prctl(2) and getppid(2) system calls, which are async-signal-safe, and allocates
    // nothing: the error is built from a raw errno.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(sig)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // If we died between fork and prctl, the signal will never come: give up.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

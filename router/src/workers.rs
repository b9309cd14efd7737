//! Session threads (`router.workers`): each runs its own single-threaded tokio runtime,
//! and the listener hands every new session to one of them (the one serving the fewest
//! sessions). A session then lives on one thread: its client socket, its backend
//! sockets and its timers are all driven by that thread's event loop, with no work
//! stealing and no cross-thread wakeups on the per-message path. Measured on 2 cores
//! with `pgbench -S -c 8`, this took about a fifth off the router's CPU per transaction
//! compared with tokio's work-stealing runtime (bench/RESULTS.md).
//!
//! Backend connections are pooled across threads; a connection remembers the thread it
//! was opened on and checkouts prefer one of their own thread's ([`current`]), since a
//! socket is driven by the event loop that registered it.

use futures::FutureExt;
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(NOT_A_WORKER) };
}

const NOT_A_WORKER: usize = usize::MAX;

/// The session thread this code runs on (`usize::MAX` elsewhere).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

/// The session threads. Dropping this stops them (tasks still running are dropped).
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `n` session threads (0: one per two cores, at least one).
    ///
    /// Why not one per core: the router usually shares its machine with the clients
    /// and the shards (`pgshard up`), and one event loop serving many sessions handles
    /// several ready sockets per wakeup. On 2 cores, `pgbench -S -c 8` cost the router
    /// about 30 µs of CPU per transaction with two session threads and about 24 µs
    /// with one (bench/RESULTS.md).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = match n {
            0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
            n => n,
        };
        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("pgshard-worker-{id}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(id));
                    // Runs the thread's sessions until `Workers` is dropped.
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Workers { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `session` on the thread serving the fewest sessions.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        let count = SessionCount::new(w.sessions.clone());
        // Not an `async move` block: one that awaits a future it captured holds it twice
        // (as captured and as awaited), which doubled every session's task (issue 16).
        w.handle.spawn(session.map(move |()| drop(count)));
    }
}

/// Counts a session on its thread while it lives.
struct SessionCount(Arc<AtomicUsize>);

impl SessionCount {
    fn new(c: Arc<AtomicUsize>) -> SessionCount {
        c.fetch_add(1, Ordering::Relaxed);
        SessionCount(c)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sessions_go_to_the_least_busy_thread_and_run_there() {
        let workers = Workers::start(2).expect("threads start");
        assert_eq!(workers.len(), 2);
        assert_eq!(current(), NOT_A_WORKER);
        // Four long-lived sessions: two on each thread, each seeing its own thread id
        // for its whole life (a session never moves).
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut released = released.clone();
            workers.spawn(async move {
                let first = current();
                let _ = released.wait_for(|r| *r).await;
                tokio::task::yield_now().await;
                tx.send((first, current())).expect("receiver alive");
            });
        }
        drop(tx);
        // Wait until all four are counted before letting them finish.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while workers
            .workers
            .iter()
            .map(|w| w.sessions.load(Ordering::Relaxed))
            .sum::<usize>()
            < 4
        {
            assert!(std::time::Instant::now() < deadline, "sessions not counted");
            std::thread::yield_now();
        }
        release.send(true).expect("sessions listening");
        let seen: Vec<(usize, usize)> = rx.iter().collect();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|(a, b)| a == b && *a < 2), "{seen:?}");
        assert_eq!(seen.iter().filter(|(a, _)| *a == 0).count(), 2, "{seen:?}");
    }

    #[test]
    fn zero_means_one_per_two_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = Workers::start(0).expect("threads start");
        assert_eq!(workers.len(), (cores / 2).max(1));
    }
}

//! A pool of backend connections per (node, user, database), capped at
//! `router.pool_size`, with a bounded wait (`router.pool_timeout_ms`).
//!
//! Capacity is a semaphore; idle connections sit in a `std::sync::Mutex<Vec<_>>` that is
//! only ever locked for a push or a pop, never across an `.await`. A checked-out
//! connection is a [`PooledConn`]; dropping it hands the connection back *only if it is
//! clean* ([`BackendConn::is_clean`]): anything else (a transaction left open, a reply
//! outstanding, a broken socket) is closed instead, so no session ever sees another's
//! leftovers.
//!
//! An operation that needs backends on several shards (a transaction spanning shards, a
//! multi-shard write or read) waits for capacity only for its *first* backend; the
//! others come from [`Pool::checkout_for`] with `more`, which may go over the cap instead of
//! waiting. Waiting while holding a backend elsewhere is how sessions deadlock on pools
//! (A holds shard 2's last backend and waits for shard 1, B the reverse); this way an
//! operation that holds one backend always completes, and a pool's connections stay
//! below `pool_size` × the number of shards (each over-cap backend belongs to an
//! operation holding a capped one on another shard).
//!
//! An over-cap connection handed back stays idle for the next checkout as long as the
//! pool's connections stay within that bound ([`Pool::set_shards`]): closing it would
//! make every transaction spanning shards under full pools open a connection (a
//! server process forked, authentication, the session's state replayed) while it holds
//! rows locked on the other shard. Measured in bench/RESULTS.md ("what serializes at
//! 32 clients").

use super::conn::{BackendConn, BackendError};
use crate::lock;
use pgshard_catalog::{Node, NodeId};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Identifies a pool: which server, as which user, in which database.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub node: NodeId,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
}

/// Pool settings shared by every pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub wait_timeout: Duration,
    pub connect_timeout: Duration,
    /// Passwords for logging in to the shards, by user.
    pub passwords: HashMap<String, String>,
}

/// A snapshot of one pool for `SHOW POOLS`.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub key: PoolKey,
    pub size: usize,
    pub idle: usize,
    pub in_use: usize,
    pub waiting: usize,
    /// Checkouts that waited for capacity since the router started, and their total
    /// wait in microseconds.
    pub waits: u64,
    pub wait_micros: u64,
    /// Checkouts that went over the cap (an operation holding a backend elsewhere).
    pub over_cap: u64,
    /// Connections opened since the router started.
    pub opened: u64,
}

/// ParameterStatus name/value pairs of a server.
pub type ServerParams = Arc<Vec<(String, String)>>;

pub struct Pool {
    key: PoolKey,
    settings: Arc<PoolSettings>,
    permits: Arc<Semaphore>,
    /// Boxed: a connection is a large value, moved on every checkout and return.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<BackendConn>>>,
    in_use: AtomicUsize,
    waiting: AtomicUsize,
    waits: AtomicU64,
    wait_micros: AtomicU64,
    over_cap: AtomicU64,
    opened: AtomicU64,
    /// The number of shards in the catalog, for the bound on kept connections.
    shards: AtomicUsize,
    /// ParameterStatus of the first connection, for client startups.
    server_params: Mutex<Option<ServerParams>>,
}

struct WaitGuard<'a>(&'a AtomicUsize);
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    fn new(key: PoolKey, settings: Arc<PoolSettings>) -> Pool {
        Pool {
            permits: Arc::new(Semaphore::new(settings.size)),
            key,
            settings,
            idle: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            over_cap: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            shards: AtomicUsize::new(1),
            server_params: Mutex::new(None),
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Takes an idle connection or opens one, waiting at most the pool timeout for
    /// capacity.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, BackendError> {
        self.checkout_for(false).await
    }

    /// Like [`Pool::checkout`]; `more` for a caller that already holds a backend of
    /// another pool for the same operation: then it never waits for capacity, going
    /// over the cap if there is none (see the module documentation).
    pub async fn checkout_for(self: &Arc<Self>, more: bool) -> Result<PooledConn, BackendError> {
        self.checkout_inner(more).await
    }

    /// Tells the pool how many shards the catalog has: connections handed back are
    /// kept up to `pool_size` × that many (see the module documentation).
    pub fn set_shards(&self, shards: usize) {
        self.shards.store(shards.max(1), Ordering::Relaxed);
    }

    /// True if a checkout would not wait (a permit is free now).
    pub fn has_capacity(&self) -> bool {
        self.permits.available_permits() > 0
    }

    async fn checkout_inner(self: &Arc<Self>, more: bool) -> Result<PooledConn, BackendError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if more => {
                self.over_cap.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let _g = WaitGuard(&self.waiting);
                let started = Instant::now();
                let acquired = tokio::time::timeout(
                    self.settings.wait_timeout,
                    self.permits.clone().acquire_owned(),
                )
                .await;
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.wait_micros.fetch_add(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                match acquired {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        return Err(BackendError::PoolTimeout(format!(
                            "{}:{}",
                            self.key.host, self.key.port
                        )))
                    }
                }
            }
        };
        let me = crate::workers::current();
        loop {
            // One opened on this session thread first (its socket is driven here).
            let candidate = {
                let mut idle = lock(&self.idle);
                match idle.iter().rposition(|c| c.worker == me) {
                    Some(i) => Some(idle.remove(i)),
                    None => idle.pop(),
                }
            };
            match candidate {
                Some(mut c) => {
                    if c.looks_alive() {
                        return Ok(self.wrap(c, permit));
                    }
                    // Closed while idle (server restart, idle timeout): drop it.
                }
                None => break,
            }
        }
        let password = self
            .settings
            .passwords
            .get(&self.key.user)
            .map(String::as_str);
        let conn = BackendConn::connect(
            &self.key.host,
            self.key.port,
            &self.key.user,
            &self.key.database,
            password,
            self.settings.connect_timeout,
        )
        .await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = lock(&self.server_params);
            if p.is_none() {
                *p = Some(Arc::new(conn.params.clone()));
            }
        }
        Ok(self.wrap(Box::new(conn), permit))
    }

    fn wrap(
        self: &Arc<Self>,
        conn: Box<BackendConn>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> PooledConn {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        conn.deadlock.clear();
        PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            permit,
        }
    }

    /// The ParameterStatus set of this server, once a connection has been made.
    pub fn server_params(&self) -> Option<Arc<Vec<(String, String)>>> {
        lock(&self.server_params).clone()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            key: self.key.clone(),
            size: self.settings.size,
            idle: lock(&self.idle).len(),
            in_use: self.in_use.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            wait_micros: self.wait_micros.load(Ordering::Relaxed),
            over_cap: self.over_cap.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    fn give_back(&self, conn: Box<BackendConn>, over_cap: bool) {
        let in_use = self
            .in_use
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let mut idle = lock(&self.idle);
        let keep = self.settings.size * self.shards.load(Ordering::Relaxed);
        if over_cap && idle.len() + in_use >= keep {
            // Over the cap: not kept beyond the bound on the pool's connections.
            return;
        }
        if conn.is_clean() {
            conn.deadlock.clear();
            idle.push(conn);
        } else {
            tracing::debug!(addr = %conn.addr, status = %(conn.status as char), broken = conn.broken, "discarding backend connection");
        }
    }

    /// Closes every idle connection (e.g. after the node left the catalog).
    pub fn close_idle(&self) {
        lock(&self.idle).clear();
    }
}

/// A checked-out connection. Dropping it returns it to its pool if clean, else closes it.
pub struct PooledConn {
    conn: Option<Box<BackendConn>>,
    pool: Arc<Pool>,
    /// None for a backend over the cap ([`Pool::checkout_for`] with `more`).
    permit: Option<OwnedSemaphorePermit>,
}

impl PooledConn {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Takes the connection out of the pool's accounting for good (the caller closes it).
    pub fn detach(mut self) -> Option<BackendConn> {
        let c = self.conn.take().map(|c| *c);
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        c
    }
}

#[allow(clippy::expect_used)]
impl Deref for PooledConn {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        self.conn.as_ref().expect("present until drop")
    }
}

#[allow(clippy::expect_used)]
impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.give_back(c, self.permit.is_none());
        }
    }
}

/// All pools of a router, created on first use.
pub struct Pools {
    settings: Arc<PoolSettings>,
    /// By node, then a short list (one per user and database in use): found without
    /// building a key, since every transaction looks its pool up.
    pools: Mutex<HashMap<NodeId, Vec<Arc<Pool>>>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings: Arc::new(settings),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `node` as `user` in `database`.
    pub fn get(&self, node: &Node, user: &str, database: &str) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        let list = pools.entry(node.id).or_default();
        let found = list.iter().find(|p| {
            p.key.port == node.port
                && p.key.user == user
                && p.key.database == database
                && p.key.host == node.host
        });
        if let Some(p) = found {
            return p.clone();
        }
        let key = PoolKey {
            node: node.id,
            host: node.host.clone(),
            port: node.port,
            user: user.to_string(),
            database: database.to_string(),
        };
        let pool = Arc::new(Pool::new(key, self.settings.clone()));
        list.push(pool.clone());
        pool
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().flatten().cloned().collect();
        let mut stats: Vec<PoolStats> = pools.iter().map(|p| p.stats()).collect();
        stats.sort_by(|a, b| a.key.cmp(&b.key));
        stats
    }

    pub fn size(&self) -> usize {
        self.settings.size
    }
}

//! Who is connected (`SHOW CLIENTS`) and how to cancel what they run (SPEC §6
//! CancelRequest): the router hands each client its own (pid, secret) in
//! BackendKeyData and maps it to the backend connections currently serving that client.

use crate::backend::CancelTarget;
use crate::lock;
use pgshard_catalog::ShardId;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What a client is doing, as `SHOW CLIENTS` reports it.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// `idle`, `active`, `idle in transaction`.
    pub state: &'static str,
    /// The shard whose backend currently serves the client.
    pub shard: Option<ShardId>,
    /// The backends to cancel on the client's CancelRequest.
    pub cancel: Vec<CancelTarget>,
    /// Inside a transaction (explicit, or the router's own multi-shard autocommit
    /// write while it runs): every backend it holds, one per shard, for the
    /// distributed deadlock detector ([`crate::deadlock`]). Empty otherwise.
    pub holds: Vec<Hold>,
    /// The transaction `holds` belong to: set when the first backend is published,
    /// cleared with the last.
    pub txn: Option<TxnMark>,
}

/// A backend a client's transaction holds (and may hold locks on).
#[derive(Debug, Clone)]
pub struct Hold {
    pub shard: ShardId,
    pub target: CancelTarget,
    /// Set by the deadlock detector on the backend it cancels (see
    /// [`crate::deadlock::Mark`]).
    pub mark: Arc<crate::deadlock::Mark>,
}

/// A transaction's identity and age, as the deadlock detector compares them (the
/// youngest in a cycle is cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMark {
    /// Unique within this router.
    pub id: u64,
    pub started: Instant,
}

pub struct ClientEntry {
    pub pid: i32,
    secret: i32,
    pub user: String,
    pub database: String,
    pub addr: Option<SocketAddr>,
    pub connected_at: SystemTime,
    activity: Mutex<Activity>,
    /// When the request now being served started, in milliseconds since `created`,
    /// plus one; 0 when none is running. An atomic so the statement path takes no
    /// lock for it.
    busy_since: AtomicU64,
    created: Instant,
    /// Hands out [`TxnMark::id`]s (shared by every client of the registry).
    txn_ids: Arc<AtomicU64>,
}

impl ClientEntry {
    pub fn secret(&self) -> i32 {
        self.secret
    }

    pub fn activity(&self) -> Activity {
        lock(&self.activity).clone()
    }

    /// `idle` also ends the transaction the deadlock detector sees (no backend held).
    pub fn set_activity(
        &self,
        state: &'static str,
        shard: Option<ShardId>,
        cancel: Option<CancelTarget>,
    ) {
        let mut a = lock(&self.activity);
        a.state = state;
        a.shard = shard;
        a.cancel.clear();
        a.cancel.extend(cancel);
        if state == "idle" {
            a.holds.clear();
            a.txn = None;
        }
    }

    /// Publishes the backends the client's transaction holds now (none: it is not in
    /// a transaction). The first backend starts a transaction identity, the last one
    /// gone ends it. Reuses the entry's vector (no allocation once it has grown).
    pub fn set_holds(&self, holds: impl Iterator<Item = Hold>) {
        let mut a = lock(&self.activity);
        self.put_holds(&mut a, holds);
    }

    /// [`ClientEntry::set_activity`] and [`ClientEntry::set_holds`] under one lock (what
    /// a session publishes at each ReadyForQuery).
    pub fn set_activity_holds(
        &self,
        state: &'static str,
        shard: Option<ShardId>,
        cancel: Option<CancelTarget>,
        holds: impl Iterator<Item = Hold>,
    ) {
        let mut a = lock(&self.activity);
        a.state = state;
        a.shard = shard;
        a.cancel.clear();
        a.cancel.extend(cancel);
        self.put_holds(&mut a, holds);
    }

    fn put_holds(&self, a: &mut Activity, holds: impl Iterator<Item = Hold>) {
        a.holds.clear();
        a.holds.extend(holds);
        if a.holds.is_empty() {
            a.txn = None;
        } else if a.txn.is_none() {
            a.txn = Some(TxnMark {
                id: self.txn_ids.fetch_add(1, Ordering::Relaxed) + 1,
                started: Instant::now(),
            });
        }
    }

    /// A request started (`Some`) or was answered (`None`).
    pub fn set_busy(&self, since: Option<Instant>) {
        let v = since.map_or(0, |t| {
            t.saturating_duration_since(self.created).as_millis() as u64 + 1
        });
        self.busy_since.store(v, Ordering::Relaxed);
    }

    /// How long the current request has been running, if one is.
    pub fn busy_for(&self, now: Instant) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.created + Duration::from_millis(ms - 1))),
        }
    }

    /// The transaction and the backends it holds, if it holds any.
    pub fn holds(&self) -> Option<(TxnMark, Vec<Hold>)> {
        let a = lock(&self.activity);
        Some((a.txn?, a.holds.clone()))
    }

    /// Marks the backend `(shard, pid)` as the deadlock victim with `detail`, if the
    /// transaction `txn` still holds it (it may have ended since the detector looked);
    /// returns what to cancel. Checked and marked under the entry's lock, so the mark
    /// is never left on a backend another transaction now uses.
    pub fn mark_victim(
        &self,
        txn: u64,
        shard: ShardId,
        pid: i32,
        detail: &str,
    ) -> Option<CancelTarget> {
        let a = lock(&self.activity);
        if a.txn.map(|t| t.id) != Some(txn) {
            return None;
        }
        let h = a
            .holds
            .iter()
            .find(|h| h.shard == shard && h.target.pid == pid)?;
        h.mark.set(detail.to_string());
        Some(h.target.clone())
    }

    /// Like [`ClientEntry::set_activity`] for a statement running on several backends at
    /// once (a fan-out): a CancelRequest reaches every one of them.
    pub fn set_activity_many(
        &self,
        state: &'static str,
        shard: Option<ShardId>,
        cancel: Vec<CancelTarget>,
    ) {
        let mut a = lock(&self.activity);
        a.state = state;
        a.shard = shard;
        a.cancel = cancel;
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<i32, Arc<ClientEntry>>>,
    txn_ids: Arc<AtomicU64>,
}

/// Removes the client from the registry when dropped.
pub struct Registration {
    registry: Arc<ClientRegistry>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.entry.pid);
    }
}

impl ClientRegistry {
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        addr: Option<SocketAddr>,
    ) -> Registration {
        let mut rng = rand::thread_rng();
        let mut map = lock(&self.clients);
        let pid = loop {
            let pid = rng.gen_range(1..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        let entry = Arc::new(ClientEntry {
            pid,
            secret: rng.gen(),
            user: user.to_string(),
            database: database.to_string(),
            addr,
            connected_at: SystemTime::now(),
            activity: Mutex::new(Activity {
                state: "idle",
                ..Activity::default()
            }),
            busy_since: AtomicU64::new(0),
            created: Instant::now(),
            txn_ids: self.txn_ids.clone(),
        });
        map.insert(pid, entry.clone());
        Registration {
            registry: self.clone(),
            entry,
        }
    }

    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = lock(&self.clients).values().cloned().collect();
        v.sort_by_key(|e| e.connected_at);
        v
    }

    /// The backends to cancel for a CancelRequest, if the key matches a client.
    pub fn cancel_targets(&self, pid: i32, secret: i32) -> Vec<CancelTarget> {
        match lock(&self.clients).get(&pid) {
            Some(e) if e.secret == secret => lock(&e.activity).cancel.clone(),
            _ => Vec::new(),
        }
    }
}

//! Who is connected (`SHOW CLIENTS`) and how to cancel what they run (SPEC §6
//! CancelRequest): the router hands each client its own (pid, secret) in
//! BackendKeyData and maps it to the backend connections currently serving that client.

use crate::backend::CancelTarget;
use crate::lock;
use pgshard_catalog::ShardId;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a client is doing, as `SHOW CLIENTS` reports it.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// `idle`, `active`, `idle in transaction`.
    pub state: &'static str,
    /// The shard whose backend currently serves the client.
    pub shard: Option<ShardId>,
    /// The backends to cancel on the client's CancelRequest.
    pub cancel: Vec<CancelTarget>,
}

pub struct ClientEntry {
    pub pid: i32,
    secret: i32,
    pub user: String,
    pub database: String,
    pub addr: Option<SocketAddr>,
    pub connected_at: SystemTime,
    activity: Mutex<Activity>,
}

impl ClientEntry {
    pub fn secret(&self) -> i32 {
        self.secret
    }

    pub fn activity(&self) -> Activity {
        lock(&self.activity).clone()
    }

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

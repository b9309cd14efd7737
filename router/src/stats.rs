//! Counters behind the admin console's `SHOW STATS` (SPEC §12): statements by where they
//! ran, and the statements the router refused. Each is a relaxed atomic add on the
//! statement path; commit outcomes are counted by the two-phase-commit coordinator
//! ([`crate::twopc::CommitStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Stats {
    started: Instant,
    /// Client connections accepted since the router started.
    pub connections: AtomicU64,
    /// Statements sent to one shard (simple Query statements and extended Executes).
    pub single_shard: AtomicU64,
    /// Reads fanned out to several shards and merged.
    pub fanout_reads: AtomicU64,
    /// Writes to several shards (UPDATE/DELETE without the key, reference-table writes,
    /// multi-row INSERTs across shards), atomic through two-phase commit.
    pub multi_shard_writes: AtomicU64,
    /// Statements run on every shard (DDL, TRUNCATE…).
    pub all_shards: AtomicU64,
    /// COPY FROM/TO split or merged by the router.
    pub copies: AtomicU64,
    /// Statements refused with SQLSTATE 0A000.
    pub unsupported: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            single_shard: AtomicU64::new(0),
            fanout_reads: AtomicU64::new(0),
            multi_shard_writes: AtomicU64::new(0),
            all_shards: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            unsupported: AtomicU64::new(0),
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// `(name, value)` pairs in display order.
    pub fn rows(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("uptime_seconds", self.started.elapsed().as_secs()),
            ("client_connections_total", get(&self.connections)),
            ("statements_single_shard", get(&self.single_shard)),
            ("statements_fanout_read", get(&self.fanout_reads)),
            (
                "statements_multi_shard_write",
                get(&self.multi_shard_writes),
            ),
            ("statements_all_shards", get(&self.all_shards)),
            ("copies", get(&self.copies)),
            ("statements_unsupported", get(&self.unsupported)),
        ]
    }
}

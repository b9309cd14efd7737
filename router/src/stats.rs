//! Counters behind the admin console's `SHOW STATS` (SPEC §12): statements by where they
//! ran, and the statements the router refused. Each is a relaxed atomic add on the
//! statement path; commit outcomes are counted by the two-phase-commit coordinator
//! ([`crate::twopc::CommitStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the request-duration histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A histogram of request durations: a simple Query or an extended-protocol batch,
/// from its first message to the ReadyForQuery that ends it being written.
#[derive(Default)]
pub struct Latency {
    /// Per bucket (not cumulative), the last one for anything above the largest bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bound (then +Inf), the count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

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
    /// Statements held while their shard changed primary ([`crate::hold`]), and the
    /// time they waited in total (microseconds).
    pub held: AtomicU64,
    pub held_micros: AtomicU64,
    /// Statements that waited out `router.failover_hold_ms` and failed.
    pub hold_timeouts: AtomicU64,
    /// Deadlocks spanning shards the router broke by cancelling a transaction
    /// ([`crate::deadlock`]).
    pub distributed_deadlocks: AtomicU64,
    pub latency: Latency,
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
            held: AtomicU64::new(0),
            held_micros: AtomicU64::new(0),
            hold_timeouts: AtomicU64::new(0),
            distributed_deadlocks: AtomicU64::new(0),
            latency: Latency::default(),
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

    /// A statement waited `d` for a change of primary.
    pub fn note_held(&self, d: Duration) {
        bump(&self.held);
        self.held_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
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
            ("statements_held_failover", get(&self.held)),
            ("held_failover_micros", get(&self.held_micros)),
            ("hold_timeouts", get(&self.hold_timeouts)),
            ("distributed_deadlocks", get(&self.distributed_deadlocks)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_with_everything_under_inf() {
        let l = Latency::default();
        for us in [50u64, 300, 300, 2_000, 60_000_000] {
            l.observe(Duration::from_micros(us));
        }
        let (cumulative, count, sum) = l.snapshot();
        assert_eq!(count, 5);
        assert_eq!(cumulative.len(), LATENCY_BUCKETS.len() + 1);
        // ≤ 0.1 ms: 1; ≤ 0.5 ms: 3; ≤ 2.5 ms: 4; 60 s only under +Inf.
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[2], 3);
        assert_eq!(cumulative[4], 4);
        assert_eq!(cumulative[LATENCY_BUCKETS.len() - 1], 4);
        assert_eq!(cumulative[LATENCY_BUCKETS.len()], 5);
        assert!((sum - 60.00265).abs() < 1e-9, "{sum}");
    }
}

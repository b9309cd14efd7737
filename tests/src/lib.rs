//! The end-to-end test harness: real PostgreSQL 15 instances and real pgshard clusters
//! on free ports in private temporary directories, so tests run in parallel and never
//! interfere.
//!
//! - [`standalone`]: one plain PostgreSQL, configured exactly like a shard, the
//!   reference for differential tests.
//! - [`cluster`]: a whole pgshard cluster (catalog node, shards, replicas) bootstrapped
//!   by shardd's own library code.
//! - [`router`]: a pgshard router in this process, following a test cluster's catalog.
//! - [`router_process`]: the real `pgshard-router` binary as a child process, for
//!   tests that kill it.
//! - [`wire`] and [`diff`]: a raw simple-protocol client and the differential corpus
//!   runner (plain PostgreSQL vs pgshard).
//! - [`ports`] and [`dirs`]: free TCP ports and temporary directories the PostgreSQL
//!   user can use.
//!
//! Every PostgreSQL process is started in shardd's *Owned* lifecycle: it is a child of a
//! dedicated thread with a parent-death signal, so none survives the test process, even
//! after a panic or a SIGKILL. Dropping a harness value stops its instances.

pub mod cluster;
pub mod diff;
pub mod dirs;
pub mod ports;
pub mod router;
pub mod router_process;
pub mod standalone;
pub mod wire;

pub use cluster::{TestCluster, TestClusterOptions};
pub use router::TestRouter;
pub use router_process::RouterProcess;
pub use standalone::Standalone;

/// Send `tracing` output to the test's captured output (once per process; set
/// `RUST_LOG` to see more than warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

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
//! - [`scaling`]: what the bucket-move tests share (load through a router, placement
//!   and leftover checks).
//! - [`wire`] and [`diff`]: a raw simple-protocol client and the differential corpus
//!   runner (plain PostgreSQL vs pgshard).
//! - [`ports`] and [`dirs`]: free TCP ports and temporary directories the PostgreSQL
//!   user can use.
//!
//! Every PostgreSQL process is started in shardd's *Owned* lifecycle: it is a child of a
//! dedicated thread with a parent-death signal, so none survives the test process, even
//! after a panic or a SIGKILL. Dropping a harness value stops its instances.

pub mod cluster;
pub mod daemon;
pub mod diff;
pub mod dirs;
pub mod ports;
pub mod router;
pub mod router_process;
pub mod scaling;
pub mod standalone;
pub mod wire;

pub use cluster::{TestCluster, TestClusterOptions};
pub use daemon::TestDaemon;
use pgshard_catalog::config::TableConfig;
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

/// A `[[table]]` distributed by `key` of type `key_type` (e.g. `"bigint"`).
pub fn distributed(name: &str, key: &str, key_type: &str) -> TableConfig {
    TableConfig {
        name: name.into(),
        shard_key: Some(key.into()),
        key_type: Some(key_type.into()),
        kind: None,
        colocate_with: None,
    }
}

/// A `[[table]]` declared as a reference table (a copy on every shard).
pub fn reference(name: &str) -> TableConfig {
    TableConfig {
        name: name.into(),
        shard_key: None,
        key_type: None,
        kind: Some("reference".into()),
        colocate_with: None,
    }
}

/// A test cluster of two shard primaries (no replicas) with `tables` declared.
pub async fn two_shards(tables: Vec<TableConfig>) -> anyhow::Result<TestCluster> {
    TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables,
        ..Default::default()
    })
    .await
}

//! shardd, pgshard's control plane (SPEC §8, §9, §11, §12).
//!
//! - [`runtime`]: the [`runtime::NodeRuntime`] trait and its local-process implementation:
//!   how one PostgreSQL instance is created, started, stopped, killed, promoted.
//! - [`cluster`]: bootstrap and restart of a whole cluster (catalog node, shards, their
//!   replicas) from a [`Config`], and its persisted local layout (`cluster.json`).
//! - [`probe`]: health probes feeding the observed state into the catalog and the API.
//! - [`recovery`]: two-phase commit recovery: finish or roll back prepared transactions.
//! - [`api`]: the HTTP JSON API.
//! - [`router_proc`]: the embedded cluster's router process, started and supervised.
//! - [`daemon`]: [`run`], the shardd process itself: bootstrap-or-restart, probe, serve,
//!   stop cleanly.
//! - [`ownership`]: proving a pid is this cluster's shardd, router or postmaster, and who
//!   holds a port, before anything is signalled or reported ready.
//! - [`tools`]: what the CLI does without a running shardd (destroy a cluster's Docker
//!   resources, read an instance's log, build the image).
//!
//! - [`reconcile`]: the reconciler: compares the catalog's topology (intent) with what
//!   the probes observe and acts: failover, switchover, replica rebuild, shard status,
//!   bucket moves (`reconcile::moves`) and new shards (`reconcile::provision`).

pub mod api;
pub mod cluster;
pub mod daemon;
pub mod ownership;
pub mod probe;
pub mod reconcile;
pub mod recovery;
pub mod router_proc;
pub mod runtime;
pub mod tools;

pub use daemon::{run, run_with, RunOptions, SharddState};
pub use pgshard_catalog::Config;

/// The file in the data dir where a running shardd publishes its API address and pid.
pub const STATE_FILE: &str = "shardd.json";

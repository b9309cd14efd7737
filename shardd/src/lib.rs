//! shardd, pgshard's control plane (SPEC §8, §9, §11).
//!
//! - [`runtime`]: the [`runtime::NodeRuntime`] trait and its local-process implementation:
//!   how one PostgreSQL instance is created, started, stopped, killed, promoted.
//! - [`cluster`]: bootstrap and restart of a whole cluster (catalog node, shards, their
//!   replicas) from a [`Config`], and its persisted local layout.

pub mod cluster;
pub mod runtime;

pub use pgshard_catalog::Config;

/// The file in the data dir where a running shardd publishes its API address and pid.
pub const STATE_FILE: &str = "shardd.json";

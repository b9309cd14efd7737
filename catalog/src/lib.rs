//! Cluster metadata for pgshard: the one owner of the shard-key hash, the bucket map and
//! the placement rules (SPEC §4), the configuration file (SPEC §3) and the catalog store
//! that keeps the metadata in PostgreSQL (SPEC §10).
//!
//! Glossary:
//! - *bucket*: one of `buckets` slices of the key space, `bucket(key) = H(key) mod buckets`
//!   where `H` is PostgreSQL's hash-partitioning hash, so a bucket is exactly a hash
//!   partition with `MODULUS buckets`.
//! - *shard*: a replication group (one primary, R streaming replicas) owning a set of
//!   buckets.
//! - *node*: one PostgreSQL instance (the catalog node, a shard primary or a replica).
//! - *catalog version*: bumped by every change, so routers can tell they are current.
//!
//! This crate opens no connections: the store functions take a client from the caller.

pub mod config;
pub mod hash;
pub mod moves;
pub mod placement;
pub mod store;
pub mod topology;
pub mod twopc;
pub mod types;

pub use config::{Config, ConfigError};
pub use types::*;

//! The router as a client of the shards (SPEC §6, §7): one [`conn::BackendConn`] per
//! PostgreSQL connection (startup, md5/SCRAM login, ParameterStatus and BackendKeyData,
//! what it has prepared and which session state it carries), and a [`pool::Pool`] of them
//! per (node, user, database).

pub mod conn;
pub(crate) mod node_conns;
pub mod pool;
pub mod stream;

pub use conn::{BackendConn, BackendError, CancelTarget, StmtKey};
pub use pool::{PoolKey, PoolStats, PooledConn, Pools};

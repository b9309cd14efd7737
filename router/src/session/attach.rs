//! Choosing and attaching a backend: a shard's primary from the current catalog — or,
//! for a read that may go to a replica ([`Need::Read`], a transaction declared READ
//! ONLY), the node [`crate::reads`] picks — checked out of its pool, brought to the
//! session's state, with a deferred BEGIN replayed.
//!
//! A replica backend is attached for one read outside a transaction (released at its
//! ReadyForQuery, as every backend is between transactions) or for a whole READ ONLY
//! transaction. A statement that needs the primary while a replica is attached
//! between transactions (the next statement of an extended-protocol batch) ends the
//! replica's implicit transaction with a Sync of the router's own and moves to the
//! primary; inside a READ ONLY transaction it stays, and the replica refuses a write
//! exactly as PostgreSQL refuses it in a READ ONLY transaction (SQLSTATE 25006).

use super::error::SessionError;
use super::{Attached, Expect, Session};
use crate::protocol::frontend::{encode_bind_with_results, encode_execute, encode_parse};
use crate::protocol::Frame;
use crate::reads::{Choice, ReadLease, ReadReq};
use pgshard_catalog::config::{PoolMode, ReadFrom};
use pgshard_catalog::ShardId;
use tokio::io::{AsyncRead, AsyncWrite};

/// The portal of the router's BEGIN that turns a batch's implicit transaction into one
/// other shards can join (named, so the client's unnamed portal is left alone).
const IMPLICIT_BEGIN_PORTAL: &str = "pgshard_begin";

/// Which node of the shard a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Whatever is attached on the shard (a portal, a Parse, a Describe), else the
    /// primary.
    Attached,
    /// The primary (a statement that may write); a READ ONLY transaction's replica
    /// stays (see the module documentation).
    Primary,
    /// A read the planner cleared for replicas (`Plan::replica_ok`), with its key for
    /// `read_policy = "hash"`.
    Read(u64),
}

pub(crate) enum Ensure {
    /// A backend on the shard is attached.
    Ready,
    /// The message was put aside until the current backend has answered everything.
    Deferred,
}

impl Attached {
    /// Queues a BEGIN inside the batch's implicit transaction, which makes it an
    /// explicit one (so a Sync no longer commits it), its replies swallowed.
    pub(crate) fn begin_implicit_block(&mut self) {
        let out = &mut self.conn.out;
        encode_parse(out, "", "BEGIN", &[]);
        encode_bind_with_results(out, IMPLICIT_BEGIN_PORTAL, "", &[0, 0, 0, 0], &[]);
        encode_execute(out, IMPLICIT_BEGIN_PORTAL);
        self.conn.unnamed = None;
        self.expects.push_back(Expect::Swallow(b'1'));
        self.expects.push_back(Expect::Swallow(b'2'));
        self.expects.push_back(Expect::Swallow(b'C'));
        self.conn.unsynced = true;
    }
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Makes sure a backend on `shard` is attached. Between transactions the session
    /// simply moves to the shard. Inside an explicit transaction the shard joins it
    /// (SPEC §7, see [`super::txn`]) once the current backend has answered everything:
    /// an unsynced batch is synced first by the router (inside an explicit transaction
    /// that ends nothing). An implicit transaction (an extended-protocol batch that
    /// executed something, not yet synced) cannot span shards.
    pub(crate) async fn ensure_backend(
        &mut self,
        shard: ShardId,
        frame: &Frame,
    ) -> Result<Ensure, SessionError> {
        self.ensure_backend_for(shard, Need::Attached, frame).await
    }

    /// [`Session::ensure_backend`] for a statement that needs `need`: a replica
    /// attached between transactions is left first when the statement needs the
    /// primary or another shard.
    pub(crate) async fn ensure_backend_for(
        &mut self,
        shard: ShardId,
        need: Need,
        frame: &Frame,
    ) -> Result<Ensure, SessionError> {
        if let Some(a) = self.attached.as_mut() {
            let on_replica = a.lease.as_ref().is_some_and(|l| l.replica);
            if on_replica && a.conn.status == b'I' && (a.shard != shard || need == Need::Primary) {
                a.sync_silent();
                if !a.expects.is_empty() {
                    self.deferred = Some(frame.clone());
                    return Ok(Ensure::Deferred);
                }
                self.attached = None;
                self.drop_backend_portals();
            }
        }
        if let Some(a) = self.attached.as_mut() {
            if a.shard == shard {
                return Ok(Ensure::Ready);
            }
            let explicit = a.conn.status != b'I';
            if a.executed && !explicit {
                if self.ctx.twopc.is_none() || self.shard_override.is_some() {
                    return Err(SessionError::CrossShard {
                        from: a.shard,
                        to: shard,
                    });
                }
                // An extended-protocol batch (no BEGIN) that executed on this shard and
                // now needs another (JDBC's executeBatch, psycopg's executemany): its
                // implicit transaction is made explicit here — a BEGIN inside an
                // implicit block does that in PostgreSQL — so the other shard can join
                // it; it commits at the client's Sync (`end_implicit_spanning`).
                a.begin_implicit_block();
                self.txn.implicit_spanning = true;
                self.txn.begin = Some("BEGIN".into());
                self.txn.savepoints.clear();
            }
            a.sync_silent();
            if !a.expects.is_empty() {
                // Decided again once the backend has answered (its status may change).
                self.deferred = Some(frame.clone());
                return Ok(Ensure::Deferred);
            }
            if explicit {
                if self.ctx.twopc.is_none() {
                    return Err(SessionError::CrossShard {
                        from: a.shard,
                        to: shard,
                    });
                }
                Box::pin(self.join_shard(shard)).await?;
                return Ok(Ensure::Ready);
            }
            self.attached = None;
            self.drop_backend_portals();
        }
        self.attach_for(shard, false, need).await?;
        Ok(Ensure::Ready)
    }

    /// The shard for statements any shard can answer: the attached one, else the
    /// catalog's local shard.
    /// While the local shard changes primary (or its failover was refused), another
    /// serving shard answers, so describing a statement does not wait on it.
    pub(crate) fn any_shard(&self) -> ShardId {
        match &self.attached {
            Some(a) => a.shard,
            None => {
                use pgshard_catalog::ShardStatus;
                let catalog = self.ctx.catalog.current();
                let local = catalog.local_shard;
                // A shard being added holds no reference rows yet.
                let serving = |s: &pgshard_catalog::Shard| {
                    matches!(s.status, ShardStatus::Ok | ShardStatus::Degraded)
                        && s.state != "provisioning"
                };
                if catalog.shard(local).is_none_or(serving) {
                    return local;
                }
                catalog
                    .shards
                    .iter()
                    .find(|s| serving(s))
                    .map_or(local, |s| s.id)
            }
        }
    }

    /// True if checking out a backend on `shard`'s primary would not wait.
    pub(crate) fn pool_has_capacity(&self, shard: ShardId) -> bool {
        let catalog = self.ctx.catalog.current();
        catalog.primary(shard).is_none_or(|node| {
            self.ctx
                .pools
                .get(node, &self.user, &self.database)
                .has_capacity()
        })
    }

    /// Checks out a backend on `shard` and attaches it; `more` when the session holds
    /// backends on other shards for the same transaction (no waiting for pool
    /// capacity, see [`crate::backend::pool`]).
    pub(crate) async fn attach(&mut self, shard: ShardId, more: bool) -> Result<(), SessionError> {
        self.attach_for(shard, more, Need::Primary).await
    }

    /// The session's `read_from`: `SET pgshard.read_from`, else `router.read_from`.
    pub(crate) fn effective_read_from(&self) -> ReadFrom {
        self.read_from.unwrap_or(self.ctx.config.read_from)
    }

    /// The hash key of a read for `read_policy = "hash"`: `statement_key` (the
    /// statement's bucket or text) or the session or client address
    /// (`router.read_hash_on`).
    pub(crate) fn read_key(&self, statement_key: u64) -> u64 {
        use crate::reads::policy::key_of;
        use pgshard_catalog::config::ReadHashOn;
        match self.ctx.config.read_hash_on {
            ReadHashOn::Key => statement_key,
            ReadHashOn::Session => {
                let app = self
                    .vars
                    .startup_value("application_name")
                    .unwrap_or_default();
                key_of(format!("{}\0{app}", self.user).as_bytes())
            }
            ReadHashOn::ClientAddress => match self.entry.addr {
                Some(a) => key_of(a.ip().to_string().as_bytes()),
                None => key_of(self.user.as_bytes()),
            },
        }
    }

    /// [`Need::Read`] with its hash key, `key` computed only when the read may go to a
    /// replica (`read_routing` uses it only then).
    pub(crate) fn read_need(&self, key: impl FnOnce() -> u64) -> Need {
        if self.effective_read_from() == ReadFrom::Primary
            || self.ctx.config.pool_mode != PoolMode::Transaction
        {
            return Need::Read(0);
        }
        Need::Read(self.read_key(key()))
    }

    /// Whether this attach may go to a replica, and with which hash key: a read
    /// cleared by the planner outside a transaction, or the first backend of a
    /// transaction declared READ ONLY; never a shard joining a transaction (`more`),
    /// never with `read_from = primary` or session pooling (its backend outlives the
    /// read).
    fn read_routing(&self, more: bool, need: Need) -> Option<u64> {
        if more
            || self.effective_read_from() == ReadFrom::Primary
            || self.ctx.config.pool_mode != PoolMode::Transaction
        {
            return None;
        }
        match (&self.txn.virtual_txn, need) {
            (Some(vt), _) => pgshard_sql::begin_read_only(&vt.begin_sql).then(|| self.read_key(0)),
            (None, Need::Read(key)) => Some(key),
            (None, Need::Attached | Need::Primary) => None,
        }
    }

    /// A backend for a read on `shard`: the node [`crate::reads::ReadSet::choose`]
    /// picks. A replica that refuses the connection is banned and the choice made
    /// again (the primary once none is left, or the fallback error).
    async fn checkout_read(
        &mut self,
        shard: ShardId,
        key: u64,
    ) -> Result<(crate::backend::PooledConn, Option<ReadLease>), SessionError> {
        let from = self.effective_read_from();
        if std::mem::take(&mut self.pending_write) {
            // Everything before this read has been answered (see `pending_write`).
            self.last_write = Some(std::time::Instant::now());
        }
        let since = self.last_write.filter(|_| self.ctx.config.read_your_writes);
        let req = ReadReq { key, since };
        let ban = std::time::Duration::from_millis(self.ctx.config.replica_ban_ms);
        // Bounded: with `replica_ban_ms = 0` a refused replica could be chosen again.
        for _attempt in 0..4 {
            let catalog = self.ctx.catalog.current();
            let choice = self
                .ctx
                .reads
                .choose(&self.ctx.config, &catalog, shard, from, &req);
            let id = match choice {
                Choice::Replica(id) => id,
                Choice::NoReplica(reason) => {
                    return Err(SessionError::ShardUnavailable { shard, reason })
                }
                Choice::Primary => {
                    let checkout = crate::hold::checkout_primary(
                        &self.ctx,
                        shard,
                        &self.user,
                        &self.database,
                        false,
                    );
                    let conn = checkout.await?;
                    let lease = catalog
                        .primary(shard)
                        .map(|p| self.ctx.reads.lease(p.id, false));
                    return Ok((conn, lease));
                }
            };
            let Some(node) = catalog.nodes.iter().find(|n| n.id == id) else {
                continue;
            };
            let pool = self.ctx.pools.get(node, &self.user, &self.database);
            match pool.checkout().await {
                Ok(conn) => return Ok((conn, Some(self.ctx.reads.lease(id, true)))),
                Err(e) if crate::hold::unreachable(&e) => {
                    tracing::warn!(node = %node.name, error = %e, "replica unreachable; banned from reads");
                    self.ctx.reads.ban(id, ban);
                }
                Err(e) => return Err(SessionError::from_backend(shard, e)),
            }
        }
        if self.ctx.config.replica_fallback == pgshard_catalog::config::ReplicaFallback::Error {
            return Err(SessionError::ShardUnavailable {
                shard,
                reason: "no replica accepted a connection".into(),
            });
        }
        let checkout =
            crate::hold::checkout_primary(&self.ctx, shard, &self.user, &self.database, false);
        Ok((checkout.await?, None))
    }

    /// [`Session::attach`] for a statement that needs `need`.
    pub(crate) async fn attach_for(
        &mut self,
        shard: ShardId,
        more: bool,
        need: Need,
    ) -> Result<(), SessionError> {
        // A transaction the router opened (BEGIN answered by itself) and then failed
        // (a refused statement): nothing runs until ROLLBACK, whichever protocol the
        // next statement comes by, as in PostgreSQL.
        if self.txn.virtual_txn.as_ref().is_some_and(|vt| vt.failed) {
            return Err(SessionError::InFailedTransaction);
        }
        self.entry.set_activity("waiting", Some(shard), None);
        tracing::trace!(%shard, "checking out a backend");
        let (mut conn, lease) = match self.read_routing(more, need) {
            Some(key) => self.checkout_read(shard, key).await?,
            None => {
                let checkout = crate::hold::checkout_primary(
                    &self.ctx,
                    shard,
                    &self.user,
                    &self.database,
                    more,
                );
                (checkout.await?, None)
            }
        };
        let fp = self.vars.fingerprint();
        tracing::trace!(%shard, replay = conn.state_fp != fp, "backend checked out");
        if conn.state_fp != fp {
            let sql = self.vars.replay_sql();
            match conn.run_silent(&sql).await {
                Ok(params) => {
                    for p in params {
                        self.out.extend_from_slice(p.raw());
                    }
                    conn.state_fp = fp;
                }
                Err(e) => {
                    conn.broken = true;
                    return Err(SessionError::from_backend(shard, e));
                }
            }
        }
        let mut a = Attached {
            conn,
            shard,
            expects: std::mem::take(&mut self.spare_expects),
            executed: false,
            failed_since_sync: false,
            wrote: None,
            lease,
        };
        if let Some(vt) = self.txn.virtual_txn.take() {
            a.send_silent(&vt.begin_sql, false);
            // In a transaction from here on, whatever the reply says later.
            a.conn.status = b'T';
        }
        self.attached = Some(a);
        self.publish_activity();
        Ok(())
    }
}

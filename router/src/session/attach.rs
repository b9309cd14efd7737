//! Choosing and attaching a backend: a shard's primary from the current catalog, checked
//! out of its pool, brought to the session's state, with a deferred BEGIN replayed.

use super::error::SessionError;
use super::{Attached, Expect, Session};
use crate::protocol::frontend::{encode_bind_with_results, encode_execute, encode_parse};
use crate::protocol::Frame;
use pgshard_catalog::ShardId;
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};

/// The portal of the router's BEGIN that turns a batch's implicit transaction into one
/// other shards can join (named, so the client's unnamed portal is left alone).
const IMPLICIT_BEGIN_PORTAL: &str = "pgshard_begin";

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
                self.join_shard(shard).await?;
                return Ok(Ensure::Ready);
            }
            self.attached = None;
            self.drop_backend_portals();
        }
        self.attach(shard, false).await?;
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
                let serving = |s: &pgshard_catalog::Shard| {
                    matches!(s.status, ShardStatus::Ok | ShardStatus::Degraded)
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
        self.entry.set_activity("waiting", Some(shard), None);
        tracing::trace!(%shard, "checking out a backend");
        let checkout =
            crate::hold::checkout_primary(&self.ctx, shard, &self.user, &self.database, more);
        let mut conn = checkout.await?;
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
            expects: VecDeque::new(),
            executed: false,
            failed_since_sync: false,
            wrote: false,
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

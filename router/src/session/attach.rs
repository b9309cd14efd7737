//! Choosing and attaching a backend: a shard's primary from the current catalog, checked
//! out of its pool, brought to the session's state, with a deferred BEGIN replayed.

use super::error::SessionError;
use super::{Attached, Expect, Session};
use crate::protocol::frontend::encode_sync;
use crate::protocol::Frame;
use pgshard_catalog::ShardId;
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) enum Ensure {
    /// A backend on the shard is attached.
    Ready,
    /// The message was put aside until the current backend has answered everything.
    Deferred,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Makes sure a backend on `shard` is attached. Switching shards is allowed only
    /// between transactions (no open explicit or implicit transaction on the current
    /// backend); else the statement would span shards.
    pub(crate) async fn ensure_backend(
        &mut self,
        shard: ShardId,
        frame: &Frame,
    ) -> Result<Ensure, SessionError> {
        if let Some(a) = self.attached.as_mut() {
            if a.shard == shard {
                return Ok(Ensure::Ready);
            }
            if a.conn.status != b'I' || a.executed {
                return Err(SessionError::CrossShard {
                    from: a.shard,
                    to: shard,
                });
            }
            if a.conn.unsynced {
                encode_sync(&mut a.conn.out);
                a.expects.push_back(Expect::Sync { forward: false });
                a.conn.pending_syncs += 1;
                a.conn.unsynced = false;
            }
            if !a.expects.is_empty() {
                self.deferred = Some(frame.clone());
                return Ok(Ensure::Deferred);
            }
            self.attached = None;
            self.portals.clear();
        }
        self.attach(shard).await?;
        Ok(Ensure::Ready)
    }

    /// The shard for statements any shard can answer: the attached one, else the
    /// catalog's local shard.
    pub(crate) fn any_shard(&self) -> ShardId {
        match &self.attached {
            Some(a) => a.shard,
            None => self.ctx.catalog.current().local_shard,
        }
    }

    pub(crate) async fn attach(&mut self, shard: ShardId) -> Result<(), SessionError> {
        let catalog = self.ctx.catalog.current();
        let node = catalog
            .primary(shard)
            .ok_or(SessionError::NoPrimary(shard))?;
        let pool = self.ctx.pools.get(node, &self.user, &self.database);
        self.entry.set_activity("waiting", Some(shard), None);
        tracing::trace!(%shard, "checking out a backend");
        let mut conn = pool
            .checkout()
            .await
            .map_err(|e| SessionError::from_backend(shard, e))?;
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
        if let Some(vt) = self.virtual_txn.take() {
            a.send_silent(&vt.begin_sql, false);
            // In a transaction from here on, whatever the reply says later.
            a.conn.status = b'T';
        }
        self.attached = Some(a);
        self.publish_activity();
        Ok(())
    }
}

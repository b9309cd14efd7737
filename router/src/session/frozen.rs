//! Statements of a transaction that began before a move's fence (SPEC §9).
//!
//! A statement for a frozen bucket is held until the move flips (`crate::hold`). But the
//! move itself waits, before copying, for every transaction that began on the source
//! before its fence became hard: those may still write the buckets, and the fence lets
//! them (`shardd::reconcile::moves`). Holding a statement of such a transaction would
//! make the two wait for each other until the move gives up. So when the client's
//! transaction already has a backend on the source of a frozen bucket's move, the router
//! asks that backend whether its transaction began before the fence became hard; if so
//! the statement goes to the source, where the move's copy will include what it writes.

use super::Session;
use pgshard_catalog::{Catalog, ShardId};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// `catalog` without the freeze of the buckets this transaction may still write on
    /// their source (see the module doc); `None` when there are none.
    pub(crate) async fn catalog_before_fence(&mut self, catalog: &Catalog) -> Option<Arc<Catalog>> {
        if catalog.frozen.is_empty() {
            return None;
        }
        let mut thawed: Option<Catalog> = None;
        for m in &catalog.moving {
            let frozen: Vec<String> = m
                .buckets
                .iter()
                .filter(|b| catalog.is_frozen(**b))
                .map(|b| b.0.to_string())
                .collect();
            if frozen.is_empty() || !self.began_before_fence(m.source, &frozen).await {
                continue;
            }
            let c = thawed.get_or_insert_with(|| catalog.clone());
            for b in &m.buckets {
                c.frozen.remove(b);
            }
        }
        thawed.map(Arc::new)
    }

    /// True when the transaction has an idle backend on `source` whose transaction
    /// began before the fence of `buckets` there became hard (or before it was set).
    async fn began_before_fence(&mut self, source: ShardId, buckets: &[String]) -> bool {
        let sql = format!(
            "SELECT coalesce(now() < min(hard_at), true) FROM pgshard_move.fence
              WHERE bucket = ANY('{{{}}}'::int4[])",
            buckets.join(",")
        );
        let conn = match self.attached.as_mut() {
            Some(a) if a.shard == source => {
                if !a.expects.is_empty() || a.conn.unsynced {
                    return false;
                }
                &mut a.conn
            }
            _ => match self.txn.parked.iter_mut().find(|p| p.shard == source) {
                Some(p) => &mut p.conn,
                None => return false,
            },
        };
        // Only inside a healthy transaction: the query must not change its outcome.
        if conn.status != b'T' {
            return false;
        }
        match conn.query_text(&sql).await {
            Ok(rows) => rows.first().and_then(|r| r.first()).cloned().flatten() == Some("t".into()),
            Err(error) => {
                tracing::warn!(%source, %error, "could not ask when the transaction began");
                conn.broken = true;
                false
            }
        }
    }
}

//! One connection per node for the router's own background queries (the replica lag
//! probe, the distributed deadlock detector): connected on first use as the first
//! configured user, replaced when the catalog moves the node to another address,
//! dropped after any failure or timeout and reconnected at the next query.

use std::collections::HashMap;
use std::time::Duration;

use pgshard_catalog::{Node, NodeId};

use pgshard_catalog::config::RouterConfig;

use super::BackendConn;

pub(crate) struct NodeConns {
    conns: HashMap<NodeId, (String, u16, BackendConn)>,
    user: String,
    password: Option<String>,
    timeout: Duration,
    /// Who is asking, for the logs.
    purpose: &'static str,
}

impl NodeConns {
    /// Connections as `config`'s first user (`postgres` without a password when there is
    /// none); every connect and query is bounded by `timeout`.
    pub(crate) fn new(config: &RouterConfig, timeout: Duration, purpose: &'static str) -> Self {
        let (user, password) = match config.users.first() {
            Some(u) => (u.name.clone(), Some(u.password.clone())),
            None => ("postgres".to_string(), None),
        };
        NodeConns {
            conns: HashMap::new(),
            user,
            password,
            timeout,
            purpose,
        }
    }

    /// Forgets the connections of nodes no longer in `live`.
    pub(crate) fn retain(&mut self, live: &[NodeId]) {
        self.conns.retain(|id, _| live.contains(id));
    }

    /// The rows of `sql` (simple protocol, text) on `node`, connecting first if needed;
    /// `None` on any failure, after which the connection is dropped.
    pub(crate) async fn rows(
        &mut self,
        node: &Node,
        sql: &str,
    ) -> Option<Vec<Vec<Option<String>>>> {
        if self
            .conns
            .get(&node.id)
            .is_some_and(|(h, p, _)| *h != node.host || *p != node.port)
        {
            self.conns.remove(&node.id);
        }
        if !self.conns.contains_key(&node.id) {
            let connected = BackendConn::connect(
                &node.host,
                node.port,
                &self.user,
                "postgres",
                self.password.as_deref(),
                self.timeout,
            )
            .await;
            match connected {
                Ok(c) => {
                    self.conns
                        .insert(node.id, (node.host.clone(), node.port, c));
                }
                Err(error) => {
                    tracing::debug!(node = %node.name, %error, purpose = self.purpose, "could not connect");
                    return None;
                }
            }
        }
        let (_, _, conn) = self.conns.get_mut(&node.id)?;
        match tokio::time::timeout(self.timeout, conn.query_text(sql)).await {
            Ok(Ok(rows)) => Some(rows),
            Ok(Err(error)) => {
                tracing::debug!(node = %node.name, %error, purpose = self.purpose, "query failed");
                self.conns.remove(&node.id);
                None
            }
            Err(_) => {
                tracing::debug!(node = %node.name, purpose = self.purpose, "query timed out");
                self.conns.remove(&node.id);
                None
            }
        }
    }
}

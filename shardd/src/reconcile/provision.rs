//! `add-shard` (SPEC §9): a new shard's instances are created and started (a primary
//! and `replicas` streaming replicas, named `shard<N>-node<k>` like bootstrap's), every
//! database and every declared table's schema copied onto its primary from an existing
//! shard, then it joins the catalog as `provisioning`: routers send it reference-table
//! writes and DDL, never reads and no buckets. The reference tables' rows are copied
//! then, exact against concurrent writes ([`Reconciler::copy_reference`]), and the shard
//! becomes `active`. Its share of the buckets is then moved to it like any other move
//! ([`super::moves`]).
//!
//! The new nodes are addressed as bootstrap addresses them ([`crate::cluster::node_address`]:
//! a host port, or the container's name on the cluster network with
//! `docker.addressing = "network"`).
//!
//! Limits: the schema is copied with `pg_dump | psql` run where shardd runs (the host,
//! reaching containers through their published ports, or shardd's own container, whose
//! image carries the PostgreSQL client); DDL during the copy may miss the new shard; a
//! crash of shardd during the provisioning leaves instances that a new `add-shard` does
//! not reuse.

use super::{node_err, ReconcileError, Reconciler};
use crate::cluster::LayoutNode;
use crate::runtime::{ready, NodeSpec, Readiness, SUPERUSER};
use pgshard_catalog::{Node, NodeId, NodeRole, NodeState, ShardId, TableKind};
use std::process::Stdio;
use std::time::Duration;

const READY: Duration = Duration::from_secs(180);

/// Bound on waiting for the reference-table writers a new shard's copy must outlast.
const WRITERS: Duration = Duration::from_secs(30);

impl Reconciler {
    /// Create, start and fill a new shard, then add it to the catalog. Returns its id.
    pub(crate) async fn add_shard(&mut self, replicas: u32) -> Result<ShardId, ReconcileError> {
        let client = self.catalog_client().await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let donor = catalog
            .primary(catalog.local_shard)
            .ok_or_else(|| ReconcileError::Refused("the local shard has no primary".into()))?;
        let donor = super::spec_of(&self.cluster, &self.cluster.layout(), &donor.name)?;
        // Shard ids are never reused, removed shards' included.
        let next: i32 = client
            .query_one("SELECT coalesce(max(id), 0) + 1 FROM pgshard.shards", &[])
            .await
            .map_err(pgshard_catalog::store::StoreError::from)?
            .get(0);
        let shard = self.lay_out_shard(replicas, ShardId(next as u32))?;
        let layout = self.cluster.layout();
        let config = self.cluster.config().clone();
        let nodes: Vec<&LayoutNode> = layout
            .nodes
            .iter()
            .filter(|n| n.shard == Some(shard))
            .collect();
        let rt = self.cluster.runtime().clone();
        let sync = config.cluster.durability() == pgshard_catalog::config::Durability::Sync;
        for n in &nodes {
            let spec = layout.spec(n, &config);
            if n.role == NodeRole::Primary {
                rt.init_primary(&spec).await?;
                rt.start(&spec).await?;
                rt.wait_ready(&spec, Readiness::Accepting, READY).await?;
            }
        }
        for n in nodes.iter().filter(|n| n.role == NodeRole::Replica) {
            let spec = layout.spec(n, &config);
            ready::ensure_replication_slot(&spec).await?;
            rt.create_replica(&spec).await?;
            rt.start(&spec).await?;
            rt.wait_ready(&spec, Readiness::Streaming { sync }, READY)
                .await?;
        }
        let primary = nodes
            .iter()
            .find(|n| n.role == NodeRole::Primary)
            .map(|n| layout.spec(n, &config))
            .ok_or_else(|| ReconcileError::Refused("the new shard has no primary".into()))?;
        self.copy_schema(&donor, &primary, &catalog).await?;
        let rows: Vec<Node> = nodes
            .iter()
            .map(|n| Node {
                id: n.id,
                shard: Some(shard),
                role: n.role,
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
                state: NodeState::Healthy,
                lag_bytes: None,
            })
            .collect();
        let mut client = self.catalog_client().await?;
        let v = pgshard_catalog::moves::add_shard(&mut client, shard, &rows).await?;
        tracing::info!(%shard, nodes = rows.len(), %v, "shard added, provisioning");
        self.copy_reference(&donor, &primary, &catalog, v).await?;
        let v = pgshard_catalog::moves::activate_shard(&mut client, shard).await?;
        tracing::info!(%shard, %v, "shard active");
        Ok(shard)
    }

    /// Add the new shard's nodes to the layout (saved) and return its id: `next` (the
    /// catalog's next unused id) or past every shard of the layout.
    fn lay_out_shard(&self, replicas: u32, next: ShardId) -> Result<ShardId, ReconcileError> {
        let config = self.cluster.config();
        let mut ports = crate::cluster::default_ports(config.cluster.host.clone(), 0);
        let layout = self.cluster.layout();
        let shard = ShardId(
            layout
                .nodes
                .iter()
                .filter_map(|n| n.shard)
                .map(|s| s.0 + 1)
                .chain([next.0])
                .max()
                .unwrap_or(1),
        );
        let first_id = layout.nodes.iter().map(|n| n.id.0).max().unwrap_or(0) + 1;
        let mut new = Vec::new();
        for k in 1..=replicas + 1 {
            let id = first_id + k - 1;
            let name = format!("shard{}-node{k}", shard.0);
            let (host, port) = crate::cluster::node_address(config, &name, &mut ports)
                .map_err(|e| node_err(&name, format!("no free port: {e}")))?;
            new.push(LayoutNode {
                id: NodeId(id),
                dir: self.cluster.data_dir().join("nodes").join(&name),
                role: if k == 1 {
                    NodeRole::Primary
                } else {
                    NodeRole::Replica
                },
                upstream: (k > 1).then(|| format!("shard{}-node1", shard.0)),
                shard: Some(shard),
                host,
                port,
                name,
                out_of_service: false,
            });
        }
        self.cluster.update_layout(|l| {
            l.nodes.extend(new);
            l.shards.push(shard);
        })?;
        Ok(shard)
    }

    /// Every database of `donor` and the schema of every declared table present there
    /// (with the rows of reference tables) onto `target`.
    async fn copy_schema(
        &self,
        donor: &NodeSpec,
        target: &NodeSpec,
        catalog: &pgshard_catalog::Catalog,
    ) -> Result<(), ReconcileError> {
        let bin = crate::runtime::local::find_pg_bin_dir(
            self.cluster.config().cluster.pg_bin_dir.as_deref(),
        )?;
        let admin = ready::connect(
            &target.pg_config("postgres", self.opts.timeout),
            self.opts.timeout,
        )
        .await
        .map_err(|e| node_err(&target.name, e))?;
        for db in self.databases(donor).await? {
            if db != "postgres" {
                let q = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
                if let Err(e) = admin.batch_execute(&q).await {
                    if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                        return Err(node_err(&target.name, e));
                    }
                }
            }
            let c = ready::connect(&donor.pg_config(&db, self.opts.timeout), self.opts.timeout)
                .await
                .map_err(|e| node_err(&donor.name, e))?;
            let mut args: Vec<String> = Vec::new();
            for t in &catalog.tables {
                let quoted: String = t
                    .name
                    .split('.')
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(".");
                let exists: bool = c
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
                    .await
                    .map_err(|e| node_err(&donor.name, e))?
                    .get(0);
                if exists {
                    args.push(format!("--table={quoted}"));
                }
            }
            if args.is_empty() {
                continue;
            }
            args.push("--schema-only".into());
            dump_restore(&bin, donor, target, &db, &args).await?;
            tracing::info!(db, tables = args.len() - 1, target = %target.name, "schema copied to the new shard");
        }
        Ok(())
    }

    /// Copy the reference tables' rows from `donor` onto the new shard `target`, which
    /// is in the catalog (version `v`, `provisioning`) so routers send it every
    /// reference-table write already. Exact against concurrent writes:
    /// 1. every router routes with `v`, and the donor's transactions that began before
    ///    then and write a reference table (or are prepared) end: every write left
    ///    reaches the new shard too (a router also refuses a reference write planned
    ///    without a shard that its catalog has by the time the write ran everywhere);
    /// 2. the new shard's reference tables are locked (`EXCLUSIVE`): writes in progress
    ///    there end, new ones wait; the donor's prepared transactions end (those whose
    ///    part on the new shard committed);
    /// 3. the donor's rows as of a snapshot taken then replace the new shard's, and the
    ///    lock goes. Writes held by the lock apply on top of the copy, as on the donor.
    async fn copy_reference(
        &self,
        donor: &NodeSpec,
        target: &NodeSpec,
        catalog: &pgshard_catalog::Catalog,
        v: pgshard_catalog::CatalogVersion,
    ) -> Result<(), ReconcileError> {
        let client = self.catalog_client().await?;
        self.routers_caught_up(&client, v).await;
        tokio::time::sleep(super::moves::SOFT).await;
        for db in self.databases(donor).await? {
            let d = ready::connect(&donor.pg_config(&db, self.opts.timeout), self.opts.timeout)
                .await
                .map_err(|e| node_err(&donor.name, e))?;
            let mut tables = Vec::new();
            for t in catalog
                .tables
                .iter()
                .filter(|t| t.kind == TableKind::Reference)
            {
                let quoted = quote_name(&t.name);
                let exists: bool = d
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
                    .await
                    .map_err(|e| node_err(&donor.name, e))?
                    .get(0);
                if exists {
                    tables.push(quoted);
                }
            }
            if tables.is_empty() {
                continue;
            }
            let since: String = d
                .query_one("SELECT clock_timestamp()::text", &[])
                .await
                .map_err(|e| node_err(&donor.name, e))?
                .get(0);
            let older = "SELECT NOT EXISTS (
                    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.mode = 'RowExclusiveLock' AND a.xact_start < $2::text::timestamptz
                       AND l.relation = ANY (ARRAY(SELECT to_regclass(x)::oid
                                                     FROM unnest($1::text[]) x)))
                  AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts
                                   WHERE prepared < $2::text::timestamptz)";
            wait_until(&d, &donor.name, older, &[&tables, &since]).await?;
            let t = ready::connect(&target.pg_config(&db, self.opts.timeout), self.opts.timeout)
                .await
                .map_err(|e| node_err(&target.name, e))?;
            t.batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN EXCLUSIVE MODE",
                tables.join(", ")
            ))
            .await
            .map_err(|e| node_err(&target.name, e))?;
            let locked: String = d
                .query_one("SELECT clock_timestamp()::text", &[])
                .await
                .map_err(|e| node_err(&donor.name, e))?
                .get(0);
            let prepared = "SELECT NOT EXISTS (SELECT 1 FROM pg_prepared_xacts
                                                WHERE prepared < $1::text::timestamptz)";
            wait_until(&d, &donor.name, prepared, &[&locked]).await?;
            d.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| node_err(&donor.name, e))?;
            let mut rows = 0;
            for q in &tables {
                t.batch_execute(&format!("DELETE FROM {q}"))
                    .await
                    .map_err(|e| node_err(&target.name, e))?;
                rows +=
                    super::moves::copy_table(&d, &t, q, "true", &donor.name, &target.name).await?;
            }
            t.batch_execute("COMMIT")
                .await
                .map_err(|e| node_err(&target.name, e))?;
            let _ = d.batch_execute("COMMIT").await;
            tracing::info!(db, tables = tables.len(), rows, target = %target.name, "reference rows copied to the new shard");
        }
        Ok(())
    }
}

/// `name` (`schema.table` or `table`) quoted part by part.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Run `sql` (one boolean) on `c` until it is true; an error past [`WRITERS`].
async fn wait_until(
    c: &tokio_postgres::Client,
    node: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), ReconcileError> {
    let deadline = std::time::Instant::now() + WRITERS;
    loop {
        let done: bool = c
            .query_one(sql, params)
            .await
            .map_err(|e| node_err(node, e))?
            .get(0);
        if done {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(node_err(
                node,
                format!("reference-table writers still open after {WRITERS:?}; try again"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `pg_dump <args> | psql` from `donor` to `target`, database `db`.
async fn dump_restore(
    bin: &std::path::Path,
    donor: &NodeSpec,
    target: &NodeSpec,
    db: &str,
    args: &[String],
) -> Result<(), ReconcileError> {
    let conn = |s: &NodeSpec| {
        vec![
            format!("--host={}", s.host),
            format!("--port={}", s.port),
            format!("--username={SUPERUSER}"),
            format!("--dbname={db}"),
        ]
    };
    let mut dump = tokio::process::Command::new(bin.join("pg_dump"))
        .args(conn(donor))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| node_err(&donor.name, format!("pg_dump: {e}")))?;
    let out = dump
        .stdout
        .take()
        .ok_or_else(|| node_err(&donor.name, "pg_dump: no output"))?;
    let out: Stdio = out
        .try_into()
        .map_err(|e| node_err(&donor.name, format!("pg_dump output: {e}")))?;
    let restore = tokio::process::Command::new(bin.join("psql"))
        .args(conn(target))
        .args(["--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1"])
        .stdin(out)
        .output()
        .await
        .map_err(|e| node_err(&target.name, format!("psql: {e}")))?;
    let dumped = dump
        .wait_with_output()
        .await
        .map_err(|e| node_err(&donor.name, format!("pg_dump: {e}")))?;
    if !dumped.status.success() {
        return Err(node_err(
            &donor.name,
            format!("pg_dump: {}", String::from_utf8_lossy(&dumped.stderr)),
        ));
    }
    if !restore.status.success() {
        return Err(node_err(
            &target.name,
            format!("psql: {}", String::from_utf8_lossy(&restore.stderr)),
        ));
    }
    Ok(())
}

impl Reconciler {
    /// `add-replica --shard N` (SPEC §9): a new streaming replica of the shard's
    /// primary, in the catalog as `rebuilding` (no reads, not in the primary's
    /// synchronous set) until it streams, then in service and, in `sync` mode, added to
    /// `synchronous_standby_names`. Returns its name.
    pub(crate) async fn add_replica(&mut self, shard: ShardId) -> Result<String, ReconcileError> {
        let config = self.cluster.config().clone();
        let layout = self.cluster.layout();
        let primary = layout
            .primary_of(shard)
            .ok_or_else(|| ReconcileError::Refused(format!("shard {shard} has no primary")))?
            .clone();
        let mut client = self.catalog_client().await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        let id = layout
            .nodes
            .iter()
            .map(|n| n.id.0)
            .chain(catalog.nodes.iter().map(|n| n.id.0))
            .max()
            .unwrap_or(0)
            + 1;
        let k = (1..)
            .find(|k| layout.node(&format!("shard{}-node{k}", shard.0)).is_none())
            .unwrap_or(1);
        let name = format!("shard{}-node{k}", shard.0);
        let mut ports = crate::cluster::default_ports(config.cluster.host.clone(), 0);
        let (host, port) = crate::cluster::node_address(&config, &name, &mut ports)
            .map_err(|e| node_err(&name, format!("no free port: {e}")))?;
        // The allocator holds the port's listener until it is dropped.
        drop(ports);
        let node = LayoutNode {
            id: NodeId(id),
            dir: self.cluster.data_dir().join("nodes").join(&name),
            role: NodeRole::Replica,
            upstream: Some(primary.name.clone()),
            shard: Some(shard),
            host,
            port,
            name: name.clone(),
            // Not in the primary's synchronous set until it streams.
            out_of_service: true,
        };
        self.cluster.update_layout(|l| l.nodes.push(node.clone()))?;
        let row = Node {
            id: node.id,
            shard: Some(shard),
            role: NodeRole::Replica,
            name: name.clone(),
            host: node.host.clone(),
            port,
            state: NodeState::Rebuilding,
            lag_bytes: None,
        };
        pgshard_catalog::moves::add_node(&mut client, &row).await?;
        let layout = self.cluster.layout();
        let spec = layout.spec(&node, &config);
        let rt = self.cluster.runtime().clone();
        ready::ensure_replication_slot(&spec).await?;
        rt.create_replica(&spec).await?;
        rt.start(&spec).await?;
        rt.wait_ready(&spec, Readiness::Streaming { sync: false }, READY)
            .await?;
        pgshard_catalog::topology::set_node_state(&mut client, node.id, NodeState::Healthy).await?;
        let catalog = pgshard_catalog::store::load(&client).await?;
        self.cluster.apply_topology(&catalog)?;
        let layout = self.cluster.layout();
        if let Some(p) = layout.primary_of(shard) {
            super::reconfigure(&self.cluster, &layout.spec(p, &config), self.opts.timeout).await?;
        }
        tracing::info!(node = %name, %shard, "replica added");
        Ok(name)
    }

    /// `remove-replica NODE`: out of the catalog (routers stop reading from it) and of
    /// its primary's synchronous set first, then stopped, its data and replication slot
    /// removed. A primary is refused (switch over first).
    pub(crate) async fn remove_replica(&mut self, name: &str) -> Result<(), ReconcileError> {
        let config = self.cluster.config().clone();
        let layout = self.cluster.layout();
        let node = layout
            .node(name)
            .ok_or_else(|| ReconcileError::Refused(format!("there is no node {name}")))?
            .clone();
        if node.role != NodeRole::Replica || node.shard.is_none() {
            return Err(ReconcileError::Refused(format!(
                "{name} is not a shard replica (a primary is replaced by `pgshard switchover` first)"
            )));
        }
        let mut client = self.catalog_client().await?;
        pgshard_catalog::moves::remove_replica(&mut client, node.id).await?;
        let spec = layout.spec(&node, &config);
        self.cluster
            .update_layout(|l| l.nodes.retain(|n| n.name != node.name))?;
        let layout = self.cluster.layout();
        let primary = node.shard.and_then(|s| layout.primary_of(s).cloned());
        if let Some(p) = &primary {
            super::reconfigure(&self.cluster, &layout.spec(p, &config), self.opts.timeout).await?;
        }
        let rt = self.cluster.runtime().clone();
        rt.stop(&spec).await?;
        rt.remove(&spec).await?;
        if let Some(p) = &primary {
            let p = layout.spec(p, &config);
            let c = ready::connect(
                &p.pg_config("postgres", self.opts.timeout),
                self.opts.timeout,
            )
            .await
            .map_err(|e| node_err(&p.name, e))?;
            // The slot turns inactive once the primary noticed the replica is gone.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&spec.slot_name()],
                    )
                    .await
                    .map_err(|e| node_err(&p.name, e))?
                    .get(0);
                if left == 0 {
                    break;
                }
                let dropped = c
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                          WHERE slot_name = $1 AND NOT active",
                        &[&spec.slot_name()],
                    )
                    .await
                    .map_err(|e| node_err(&p.name, e))?;
                if dropped > 0 || std::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tracing::info!(node = %name, "replica removed");
        Ok(())
    }
}

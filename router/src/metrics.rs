//! Prometheus metrics (SPEC §12) on `router.metrics_listen`: `GET /metrics` in the text
//! exposition format. The same counters as the admin console's `SHOW STATS`, the pools
//! of `SHOW POOLS`, connected clients, the catalog version and a histogram of request
//! durations; read when scraped, so serving them costs the statement path nothing
//! beyond its counters.

use crate::server::RouterCtx;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(ctx: Arc<RouterCtx>, listener: TcpListener, shutdown: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let ctx = ctx.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&ctx),
                )
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(ctx: &RouterCtx) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let s = &ctx.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    family(
        "pgshard_router_uptime_seconds",
        "gauge",
        "Seconds since the router started.",
        &[(String::new(), s.uptime().as_secs())],
    );
    family(
        "pgshard_router_connections_total",
        "counter",
        "Client connections accepted.",
        &[(String::new(), get(&s.connections))],
    );
    family(
        "pgshard_router_clients",
        "gauge",
        "Clients connected now.",
        &[(String::new(), ctx.clients.list().len() as u64)],
    );
    let routes = [
        ("single_shard", &s.single_shard),
        ("fanout_read", &s.fanout_reads),
        ("multi_shard_write", &s.multi_shard_writes),
        ("all_shards", &s.all_shards),
        ("copy", &s.copies),
    ];
    family(
        "pgshard_router_statements_total",
        "counter",
        "Statements by where they ran.",
        &routes
            .iter()
            .map(|(r, c)| (format!("{{route=\"{r}\"}}"), get(c)))
            .collect::<Vec<_>>(),
    );
    family(
        "pgshard_router_statements_unsupported_total",
        "counter",
        "Statements refused with SQLSTATE 0A000.",
        &[(String::new(), get(&s.unsupported))],
    );
    family(
        "pgshard_router_failover_held_statements_total",
        "counter",
        "Statements held while their shard changed primary.",
        &[(String::new(), get(&s.held))],
    );
    family(
        "pgshard_router_failover_held_milliseconds_total",
        "counter",
        "Time statements spent held while their shard changed primary.",
        &[(String::new(), get(&s.held_micros) / 1000)],
    );
    family(
        "pgshard_router_failover_hold_timeouts_total",
        "counter",
        "Statements that waited router.failover_hold_ms for a new primary and failed.",
        &[(String::new(), get(&s.hold_timeouts))],
    );
    family(
        "pgshard_router_distributed_deadlocks_total",
        "counter",
        "Deadlocks spanning shards broken by cancelling the youngest transaction (40P01).",
        &[(String::new(), get(&s.distributed_deadlocks))],
    );
    if let Some(t) = &ctx.twopc {
        let c = &t.coord.stats;
        family(
            "pgshard_router_spanning_transactions_total",
            "counter",
            "Transactions that spanned shards, by how they ended.",
            &[
                (
                    "{outcome=\"one_phase_commit\"}".to_string(),
                    get(&c.one_phase),
                ),
                (
                    "{outcome=\"two_phase_commit\"}".to_string(),
                    get(&c.two_phase),
                ),
                ("{outcome=\"rolled_back\"}".to_string(), get(&c.rolled_back)),
            ],
        );
    }
    let catalog = ctx.catalog.current();
    family(
        "pgshard_router_catalog_version",
        "gauge",
        "The catalog version the router routes with.",
        &[(String::new(), catalog.version.0.max(0) as u64)],
    );
    let pools = ctx.pools.stats();
    let pool_labels = |p: &crate::backend::pool::PoolStats| {
        let name = catalog
            .nodes
            .iter()
            .find(|n| n.id == p.key.node)
            .map_or_else(|| p.key.node.to_string(), |n| n.name.clone());
        format!(
            "node=\"{}\",user=\"{}\",database=\"{}\"",
            label(&name),
            label(&p.key.user),
            label(&p.key.database)
        )
    };
    let mut conns = Vec::new();
    let mut waiting = Vec::new();
    let mut size = Vec::new();
    let (mut waits, mut wait_micros) = (Vec::new(), Vec::new());
    let (mut over_cap, mut opened) = (Vec::new(), Vec::new());
    for p in &pools {
        let l = pool_labels(p);
        conns.push((format!("{{{l},state=\"idle\"}}"), p.idle as u64));
        conns.push((format!("{{{l},state=\"in_use\"}}"), p.in_use as u64));
        waiting.push((format!("{{{l}}}"), p.waiting as u64));
        size.push((format!("{{{l}}}"), p.size as u64));
        waits.push((format!("{{{l}}}"), p.waits));
        wait_micros.push((format!("{{{l}}}"), p.wait_micros));
        over_cap.push((format!("{{{l}}}"), p.over_cap));
        opened.push((format!("{{{l}}}"), p.opened));
    }
    family(
        "pgshard_router_pool_connections",
        "gauge",
        "Backend connections by pool and state.",
        &conns,
    );
    family(
        "pgshard_router_pool_waiting",
        "gauge",
        "Sessions waiting for a backend connection.",
        &waiting,
    );
    family(
        "pgshard_router_pool_waits_total",
        "counter",
        "Checkouts that waited for pool capacity.",
        &waits,
    );
    family(
        "pgshard_router_pool_wait_microseconds_total",
        "counter",
        "Time checkouts spent waiting for pool capacity, in microseconds.",
        &wait_micros,
    );
    family(
        "pgshard_router_pool_over_cap_total",
        "counter",
        "Checkouts over the pool's cap (an operation holding a backend on another shard).",
        &over_cap,
    );
    family(
        "pgshard_router_pool_opened_total",
        "counter",
        "Backend connections opened.",
        &opened,
    );
    family(
        "pgshard_router_pool_size",
        "gauge",
        "Configured pool size (router.pool_size).",
        &size,
    );
    read_families(ctx, &catalog, &mut family);
    let (cumulative, count, sum) = s.latency.snapshot();
    let name = "pgshard_router_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Requests (a simple Query, or an extended-protocol batch up to Sync) from their first message to their ReadyForQuery written."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, n) in crate::stats::LATENCY_BUCKETS.iter().zip(&cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}",
        cumulative.last().copied().unwrap_or(0)
    );
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// Read routing per node and role (SPEC §8): reads served, in flight, skipped for
/// lag, bans, and the replica lag last probed.
fn read_families(
    ctx: &RouterCtx,
    catalog: &pgshard_catalog::Catalog,
    family: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
) {
    let mut served = Vec::new();
    let mut in_flight = Vec::new();
    let mut skipped = Vec::new();
    let mut bans = Vec::new();
    let mut lag = Vec::new();
    for (id, n) in ctx.reads.snapshot() {
        let name = catalog
            .nodes
            .iter()
            .find(|x| x.id == id)
            .map_or_else(|| id.to_string(), |x| x.name.clone());
        let l = format!(
            "{{node=\"{}\",role=\"{}\"}}",
            label(&name),
            crate::reads::role_of(catalog, id)
        );
        served.push((l.clone(), n.served.load(Ordering::Relaxed)));
        in_flight.push((l.clone(), n.in_flight.load(Ordering::Relaxed)));
        skipped.push((l.clone(), n.skipped_lag.load(Ordering::Relaxed)));
        bans.push((l.clone(), n.bans.load(Ordering::Relaxed)));
        if let Some(b) = n.observed().lag_bytes {
            lag.push((l, b));
        }
    }
    family(
        "pgshard_router_reads_total",
        "counter",
        "Reads routed to each node by read routing (router.read_from).",
        &served,
    );
    family(
        "pgshard_router_reads_in_flight",
        "gauge",
        "Reads running on each node now.",
        &in_flight,
    );
    family(
        "pgshard_router_reads_skipped_lag_total",
        "counter",
        "Times a replica was passed over for lagging beyond router.max_replica_lag.",
        &skipped,
    );
    family(
        "pgshard_router_replica_bans_total",
        "counter",
        "Times a replica was left out of reads after a failed connection or probe.",
        &bans,
    );
    family(
        "pgshard_router_replica_lag_bytes",
        "gauge",
        "Replay lag behind the primary, as last probed by this router.",
        &lag,
    );
}

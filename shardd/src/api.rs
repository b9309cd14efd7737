//! shardd's HTTP JSON API (SPEC §12), used by the `pgshard` CLI:
//!
//! - `GET /v1/status`: cluster name, catalog version, ready flag, every node's
//!   observed state (see [`crate::probe::NodeStatus`]) and, when shardd runs one, the
//!   router (`router`: see [`crate::router_proc::RouterStatus`]);
//! - `GET /v1/transactions`: distributed transactions left in doubt on the shards, as
//!   the last 2PC recovery round saw them (see [`crate::recovery::TransactionsStatus`]);
//! - `POST /v1/shutdown`: stop the cluster and exit, as SIGTERM does;
//! - `POST /v1/switchover` `{"shard": N, "to": "NODE"?}`: move shard N's primary role
//!   with writes held (SPEC §9); answers with the write pause in milliseconds;
//! - `POST /v1/failover/pause` and `/v1/failover/resume` `{"shard": N}`: pause or resume
//!   automatic failover of a shard;
//! - `POST /v1/scale` (a [`crate::reconcile::ScaleOp`]): record the bucket moves of a
//!   rebalance, a shard removal or an explicit move (SPEC §9); answers with their ids;
//! - `GET /v1/moves`: every bucket move with its state, rows moved and freeze time;
//! - `GET /metrics`: Prometheus text format: readiness, catalog version, each node's
//!   state, failed probes in a row and replica lag, each shard's term, status, paused
//!   failover, failovers and the last one's duration, transactions in doubt, and the
//!   supervised router's state and restarts.
//!
//! The server is up from the start of `run`, so the CLI can show bootstrap progress
//! (`ready: false`) before the cluster serves.

use crate::probe::ClusterStatus;
use crate::reconcile::Command;
use crate::recovery::TransactionsStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use pgshard_catalog::ShardId;
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub status: Arc<RwLock<ClusterStatus>>,
    pub transactions: Arc<RwLock<TransactionsStatus>>,
    /// Cancelled by `POST /v1/shutdown`.
    pub shutdown: CancellationToken,
    /// The supervised router (no status while shardd runs none).
    pub router: crate::router_proc::RouterHandle,
    /// Topology changes, carried out by the control loop.
    pub commands: tokio::sync::mpsc::Sender<Command>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/transactions", get(transactions))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/switchover", post(switchover))
        .route("/v1/failover/pause", post(pause_failover))
        .route("/v1/scale", post(scale))
        .route("/v1/moves", get(list_moves))
        .route("/v1/failover/resume", post(resume_failover))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let snapshot = state
        .status
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut body = serde_json::to_value(snapshot).unwrap_or_else(|_| json!({}));
    if let (Some(router), Some(obj)) = (state.router.status(), body.as_object_mut()) {
        obj.insert(
            "router".into(),
            serde_json::to_value(router).unwrap_or_default(),
        );
    }
    Json(body)
}

async fn transactions(State(state): State<ApiState>) -> Json<TransactionsStatus> {
    let snapshot = state
        .transactions
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(snapshot)
}

async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
    let status = state
        .status
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let in_doubt = state
        .transactions
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .in_doubt
        .len();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&status, in_doubt)
            + &state
                .router
                .status()
                .map(|r| crate::router_proc::render_metrics(&r))
                .unwrap_or_default(),
    )
}

/// The Prometheus exposition of a status snapshot.
pub fn render_metrics(status: &ClusterStatus, in_doubt: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, i64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "pgshard_shardd_ready",
        "1 once the cluster is bootstrapped and serving.",
        vec![(String::new(), i64::from(status.ready))],
    );
    family(
        "pgshard_shardd_catalog_version",
        "The catalog version after the last probe round.",
        vec![(String::new(), status.version.unwrap_or(0))],
    );
    let labels = |n: &crate::probe::NodeStatus| {
        format!(
            "{{node=\"{}\",shard=\"{}\",role=\"{}\"}}",
            n.name,
            n.shard.map(|s| s.to_string()).unwrap_or_default(),
            n.role
        )
    };
    family(
        "pgshard_shardd_node_up",
        "1 if the node answered its last probes (healthy), else 0.",
        status
            .nodes
            .iter()
            .map(|n| {
                (
                    labels(n),
                    i64::from(n.state == pgshard_catalog::NodeState::Healthy),
                )
            })
            .collect(),
    );
    family(
        "pgshard_shardd_node_probe_failures",
        "Failed probes in a row.",
        status
            .nodes
            .iter()
            .map(|n| (labels(n), i64::from(n.failures)))
            .collect(),
    );
    family(
        "pgshard_shardd_replica_lag_bytes",
        "Replicas: replay lag behind the primary in bytes.",
        status
            .nodes
            .iter()
            .filter_map(|n| Some((labels(n), n.lag_bytes?)))
            .collect(),
    );
    let shard = |v: &crate::reconcile::ShardView| format!("{{shard=\"{}\"}}", v.shard.id);
    family(
        "pgshard_shardd_shard_term",
        "The shard's term: grows at every change of primary.",
        status
            .shards
            .iter()
            .map(|v| (shard(v), v.shard.term))
            .collect(),
    );
    family(
        "pgshard_shardd_failovers_total",
        "Completed changes of primary (failovers and switchovers) of the shard.",
        status
            .shards
            .iter()
            .map(|v| (shard(v), v.shard.failovers))
            .collect(),
    );
    family(
        "pgshard_shardd_last_failover_milliseconds",
        "How long the shard's last change of primary took, from its start to the new primary in the catalog.",
        status
            .shards
            .iter()
            .filter_map(|v| Some((shard(v), v.shard.last_failover_ms?)))
            .collect(),
    );
    family(
        "pgshard_shardd_shard_status",
        "1 for the shard's current status (ok, failing_over, degraded, refused).",
        status
            .shards
            .iter()
            .map(|v| {
                (
                    format!("{{shard=\"{}\",status=\"{}\"}}", v.shard.id, v.shard.status),
                    1,
                )
            })
            .collect(),
    );
    family(
        "pgshard_shardd_failover_paused",
        "1 if automatic failover of the shard is paused.",
        status
            .shards
            .iter()
            .map(|v| (shard(v), i64::from(v.shard.failover_paused)))
            .collect(),
    );
    let m = &status.moves;
    family(
        "pgshard_shardd_moves",
        "Bucket moves recorded, by state (unfinished, done, aborted).",
        vec![
            ("{state=\"unfinished\"}".into(), m.unfinished as i64),
            ("{state=\"done\"}".into(), m.done as i64),
            ("{state=\"aborted\"}".into(), m.aborted as i64),
        ],
    );
    family(
        "pgshard_shardd_buckets_moved",
        "Buckets moved by finished moves.",
        vec![(String::new(), m.buckets_moved as i64)],
    );
    family(
        "pgshard_shardd_rows_moved",
        "Rows copied by finished moves.",
        vec![(String::new(), m.rows_moved)],
    );
    family(
        "pgshard_shardd_last_move_freeze_ms",
        "How long the last finished move kept its buckets frozen (statements held), ms.",
        vec![(String::new(), m.last_freeze_ms.unwrap_or(0))],
    );
    family(
        "pgshard_shardd_move_freeze_ms",
        "Freeze per move done (buckets frozen, statements held) in ms: median, 99th percentile, longest.",
        vec![
            ("{quantile=\"0.5\"}".into(), m.freeze_ms[0]),
            ("{quantile=\"0.99\"}".into(), m.freeze_ms[1]),
            ("{quantile=\"1\"}".into(), m.freeze_ms[2]),
        ],
    );
    family(
        "pgshard_shardd_transactions_in_doubt",
        "Prepared transactions with a pgshard GID left on the shards (last recovery round).",
        vec![(String::new(), in_doubt as i64)],
    );
    out
}

async fn shutdown(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    tracing::info!("shutdown requested over the API");
    state.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(json!({ "shutting_down": true })))
}

#[derive(Debug, Deserialize)]
struct SwitchoverRequest {
    shard: u32,
    #[serde(default)]
    to: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ShardRequest {
    shard: u32,
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn failed(status: StatusCode, error: impl std::fmt::Display) -> Answer {
    (status, Json(json!({ "error": error.to_string() })))
}

async fn switchover(State(state): State<ApiState>, Json(req): Json<SwitchoverRequest>) -> Answer {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let cmd = Command::Switchover {
        shard: ShardId(req.shard),
        to: req.to,
        reply,
    };
    if state.commands.send(cmd).await.is_err() {
        return failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is not serving");
    }
    match answer.await {
        Ok(Ok(pause)) => (
            StatusCode::OK,
            Json(json!({ "shard": req.shard, "pause_ms": pause.as_millis() as u64 })),
        ),
        Ok(Err(error)) => failed(StatusCode::CONFLICT, error),
        Err(_) => failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is stopping"),
    }
}

async fn pause_failover(State(state): State<ApiState>, Json(req): Json<ShardRequest>) -> Answer {
    set_paused(state, req.shard, true).await
}

async fn resume_failover(State(state): State<ApiState>, Json(req): Json<ShardRequest>) -> Answer {
    set_paused(state, req.shard, false).await
}

async fn set_paused(state: ApiState, shard: u32, paused: bool) -> Answer {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let cmd = Command::PauseFailover {
        shard: ShardId(shard),
        paused,
        reply,
    };
    if state.commands.send(cmd).await.is_err() {
        return failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is not serving");
    }
    match answer.await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(json!({ "shard": shard, "failover_paused": paused })),
        ),
        Ok(Err(error)) => failed(StatusCode::CONFLICT, error),
        Err(_) => failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is stopping"),
    }
}

/// `POST /v1/scale` with a [`crate::reconcile::ScaleOp`]: `{"op": "rebalance"}`,
/// `{"op": "remove_shard", "shard": N}`, `{"op": "move", "buckets": […], "to": N}`.
async fn scale(State(state): State<ApiState>, Json(op): Json<crate::reconcile::ScaleOp>) -> Answer {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state
        .commands
        .send(Command::Scale { op, reply })
        .await
        .is_err()
    {
        return failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is not serving");
    }
    match answer.await {
        Ok(Ok(ids)) => (StatusCode::OK, Json(json!({ "moves": ids }))),
        Ok(Err(error)) => failed(StatusCode::CONFLICT, error),
        Err(_) => failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is stopping"),
    }
}

/// `GET /v1/moves`: every move recorded, newest first, with its state and rows.
async fn list_moves(State(state): State<ApiState>) -> Answer {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.commands.send(Command::Moves { reply }).await.is_err() {
        return failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is not serving");
    }
    match answer.await {
        Ok(Ok(moves)) => (StatusCode::OK, Json(json!({ "moves": moves }))),
        Ok(Err(error)) => failed(StatusCode::CONFLICT, error),
        Err(_) => failed(StatusCode::SERVICE_UNAVAILABLE, "shardd is stopping"),
    }
}

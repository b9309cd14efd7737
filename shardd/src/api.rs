//! shardd's HTTP JSON API (SPEC §12), used by the `pgshard` CLI:
//!
//! - `GET /v1/status`: cluster name, catalog version, ready flag, and every node's
//!   observed state (see [`crate::probe::NodeStatus`]);
//! - `GET /v1/transactions`: distributed transactions left in doubt on the shards, as
//!   the last 2PC recovery round saw them (see [`crate::recovery::TransactionsStatus`]);
//! - `POST /v1/shutdown`: stop the cluster and exit, as SIGTERM does.
//!
//! The server is up from the start of `run`, so the CLI can show bootstrap progress
//! (`ready: false`) before the cluster serves.

use crate::probe::ClusterStatus;
use crate::recovery::TransactionsStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
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
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/transactions", get(transactions))
        .route("/v1/shutdown", post(shutdown))
        .with_state(state)
}

async fn status(State(state): State<ApiState>) -> Json<ClusterStatus> {
    let snapshot = state
        .status
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(snapshot)
}

async fn transactions(State(state): State<ApiState>) -> Json<TransactionsStatus> {
    let snapshot = state
        .transactions
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(snapshot)
}

async fn shutdown(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    tracing::info!("shutdown requested over the API");
    state.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(json!({ "shutting_down": true })))
}

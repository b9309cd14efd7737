//! Placement commands (SPEC §9): `pgshard add-shard`, `pgshard rebalance`,
//! `pgshard remove-shard N`, `pgshard add-replica`, `pgshard remove-replica`, `pgshard moves`. shardd records the bucket moves and carries them out in its control
//! loop; these commands ask its API and follow the moves with a progress line (buckets
//! done of total, rows moved, the move running now). Ctrl-C leaves the command, not the
//! moves: `pgshard moves --follow` picks them up again.

use crate::daemon::{self, DaemonState};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

async fn running(data_dir: &Path) -> Result<DaemonState> {
    let cluster = daemon::ClusterDir::open(data_dir)?;
    daemon::running(&cluster).await.ok_or_else(|| {
        anyhow!(
            "no running cluster in {} (shardd is not running; start it with `./pgshard up`)",
            data_dir.display()
        )
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

async fn moves(state: &DaemonState) -> Result<Vec<Value>> {
    let url = format!("http://{}/v1/moves", state.api);
    let body: Value = http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking shardd ({url})"))?
        .json()
        .await?;
    Ok(body["moves"].as_array().cloned().unwrap_or_default())
}

/// The placement operation under way, for `pgshard status`: `None` when no move is
/// unfinished (or shardd does not answer at once: status must not wait on a round).
pub async fn running_operation(state: &DaemonState) -> Option<String> {
    let all = tokio::time::timeout(Duration::from_secs(2), moves(state))
        .await
        .ok()?
        .ok()?;
    describe_operation(&all)
}

/// See [`running_operation`]; `all` as `GET /v1/moves` lists them.
fn describe_operation(all: &[Value]) -> Option<String> {
    let left: Vec<&Value> = all.iter().filter(|m| !finished(m)).collect();
    let now = left
        .iter()
        .min_by_key(|m| m["id"].as_i64().unwrap_or(i64::MAX))?;
    let buckets: u64 = left.iter().map(|m| buckets(m)).sum();
    Some(format!(
        "operation {}: {} move(s) of {buckets} bucket(s) to go; now move {} {} → {}: {}\n",
        now["operation"].as_str().unwrap_or("?"),
        left.len(),
        now["id"],
        now["source"],
        now["target"],
        now["state"].as_str().unwrap_or("?")
    ))
}

fn finished(m: &Value) -> bool {
    matches!(m["state"].as_str(), Some("done" | "aborted"))
}

fn buckets(m: &Value) -> u64 {
    m["buckets"].as_array().map_or(0, |b| b.len() as u64)
}

/// Print a progress line until every move in `ids` (every unfinished move when empty)
/// has finished.
async fn follow(state: &DaemonState, ids: &[i64]) -> Result<()> {
    let started = Instant::now();
    loop {
        let all = moves(state).await?;
        // The operation's moves, and those recorded again after a rollback (same
        // operation, later id).
        let first = ids.iter().min().copied().unwrap_or(i64::MAX);
        let ops: Vec<&Value> = all
            .iter()
            .filter(|m| ids.contains(&m["id"].as_i64().unwrap_or(-1)))
            .map(|m| &m["operation"])
            .collect();
        let mine: Vec<&Value> = all
            .iter()
            .filter(|m| {
                let id = m["id"].as_i64().unwrap_or(-1);
                if ids.is_empty() {
                    !finished(m)
                } else {
                    ids.contains(&id) || (id > first && ops.contains(&&m["operation"]))
                }
            })
            .collect();
        let total: u64 = mine
            .iter()
            .filter(|m| m["state"] != "aborted")
            .map(|m| buckets(m))
            .sum();
        let done: u64 = mine
            .iter()
            .filter(|m| m["state"] == "done")
            .map(|m| buckets(m))
            .sum();
        let rows: i64 = mine.iter().filter_map(|m| m["rows_moved"].as_i64()).sum();
        // The move running now: the oldest unfinished one (shardd carries them out in
        // order; the list is newest first).
        let now = mine
            .iter()
            .filter(|m| !finished(m))
            .min_by_key(|m| m["id"].as_i64().unwrap_or(i64::MAX))
            .map(|m| {
                format!(
                    "move {} {} → {}: {}",
                    m["id"], m["source"], m["target"], m["state"]
                )
            })
            .unwrap_or_default();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let eta = match done {
            0 => "ETA -".to_string(),
            d => format!(
                "ETA {:.0} s",
                total.saturating_sub(d) as f64 * secs / d as f64
            ),
        };
        eprint!(
            "\r\x1b[2Kbuckets {done}/{total}, {rows} rows ({:.0} rows/s), {eta} {now}",
            rows as f64 / secs
        );
        let _ = std::io::stderr().flush();
        if mine.iter().all(|m| finished(m)) {
            eprintln!();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `POST /v1/scale` with `op` (long: add-shard and add-replica answer once their
/// instances run); shardd's answer, or its error as the command's.
async fn post_scale(data_dir: &Path, op: &Value) -> Result<(DaemonState, Value)> {
    let state = running(data_dir).await?;
    let url = format!("http://{}/v1/scale", state.api);
    let long = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap_or_default();
    let resp = long.post(&url).json(op).send().await?;
    let ok = resp.status().is_success();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !ok {
        return Err(anyhow!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("shardd refused the request")
        ));
    }
    Ok((state, answer))
}

/// Ask shardd for a placement change (`op`, see shardd's `ScaleOp`), then follow its
/// moves unless `detach`.
pub async fn scale(data_dir: &Path, op: Value, detach: bool) -> Result<ExitCode> {
    // add-shard answers once the new shard's instances run (base backups included).
    let (state, answer) = post_scale(data_dir, &op).await?;
    let ids: Vec<i64> = answer["moves"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    println!("pgshard: {} bucket moves recorded", ids.len());
    if ids.is_empty() || detach {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&state, &ids).await?;
    Ok(ExitCode::SUCCESS)
}

/// `pgshard rebalance [--shards 1,2,3]`.
pub async fn rebalance(
    data_dir: &Path,
    shards: Option<Vec<u32>>,
    detach: bool,
) -> Result<ExitCode> {
    scale(
        data_dir,
        json!({ "op": "rebalance", "shards": shards }),
        detach,
    )
    .await
}

/// `pgshard add-shard [--replicas R]`.
pub async fn add_shard(data_dir: &Path, replicas: Option<u32>, detach: bool) -> Result<ExitCode> {
    scale(
        data_dir,
        json!({ "op": "add_shard", "replicas": replicas }),
        detach,
    )
    .await
}

/// `pgshard remove-shard N`: drain its buckets, then shardd decommissions its nodes.
pub async fn remove_shard(data_dir: &Path, shard: u32, detach: bool) -> Result<ExitCode> {
    scale(
        data_dir,
        json!({ "op": "remove_shard", "shard": shard }),
        detach,
    )
    .await
}

/// `pgshard add-replica --shard N`: a new streaming replica (answers once it streams).
pub async fn add_replica(data_dir: &Path, shard: u32) -> Result<ExitCode> {
    replica_op(data_dir, json!({ "op": "add_replica", "shard": shard })).await
}

/// `pgshard remove-replica NODE`.
pub async fn remove_replica(data_dir: &Path, node: &str) -> Result<ExitCode> {
    replica_op(data_dir, json!({ "op": "remove_replica", "node": node })).await
}

async fn replica_op(data_dir: &Path, op: Value) -> Result<ExitCode> {
    // A new replica answers once its base backup is taken and it streams.
    post_scale(data_dir, &op).await?;
    println!("pgshard: done ({})", op["op"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

/// `pgshard moves [--follow]`: the moves recorded, newest first.
pub async fn list(data_dir: &Path, follow_them: bool) -> Result<ExitCode> {
    let state = running(data_dir).await?;
    if follow_them {
        follow(&state, &[]).await?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<10}  {:>6}  {:>6}  {:>7}  {:>8}  {:>9}  operation",
        "id", "state", "source", "target", "buckets", "rows", "freeze_ms"
    );
    for m in moves(&state).await? {
        println!(
            "{:>5}  {:<10}  {:>6}  {:>6}  {:>7}  {:>8}  {:>9}  {}",
            m["id"],
            m["state"].as_str().unwrap_or(""),
            m["source"],
            m["target"],
            buckets(&m),
            m["rows_moved"],
            m["freeze_ms"]
                .as_i64()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            m["operation"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_operation_and_the_move_running_now() {
        let all = vec![
            json!({"id": 7, "operation": "add-shard 3", "source": 2, "target": 3,
                   "state": "planned", "buckets": [5, 6]}),
            json!({"id": 6, "operation": "add-shard 3", "source": 1, "target": 3,
                   "state": "syncing", "buckets": [1, 2, 3]}),
            json!({"id": 5, "operation": "add-shard 3", "source": 1, "target": 3,
                   "state": "done", "buckets": [0]}),
        ];
        assert_eq!(
            describe_operation(&all).as_deref(),
            Some("operation add-shard 3: 2 move(s) of 5 bucket(s) to go; now move 6 1 → 3: syncing\n")
        );
        assert_eq!(describe_operation(&all[2..]), None);
    }
}

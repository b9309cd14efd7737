//! Commands that change or show who is primary (SPEC §8, §9): `pgshard switchover`,
//! `pgshard failover pause|resume`, and the shards table of `pgshard status`. The work
//! is shardd's (its control loop is the one writer of topology changes); these only
//! ask its API and print the answer.

use crate::daemon::{self, DaemonState};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

async fn running(data_dir: &Path) -> Result<DaemonState> {
    // Only a directory proved to be a cluster, and only its own shardd (SPEC §13).
    let cluster = daemon::ClusterDir::open(data_dir)?;
    daemon::running(&cluster).await.ok_or_else(|| {
        anyhow!(
            "no running cluster in {} (shardd is not running; start it with `./pgshard up`)",
            data_dir.display()
        )
    })
}

/// POST `body` to shardd's `path`; the JSON answer, or its `error` as the error.
async fn post(state: &DaemonState, path: &str, body: Value, timeout: Duration) -> Result<Value> {
    let url = format!("http://{}{path}", state.api);
    let resp = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default()
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("asking shardd ({url})"))?;
    let ok = resp.status().is_success();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if ok {
        Ok(answer)
    } else {
        Err(anyhow!(
            "{}",
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("shardd refused the request")
        ))
    }
}

/// `pgshard switchover --shard N [--to NODE]`.
pub async fn switchover(data_dir: &Path, shard: u32, to: Option<String>) -> Result<ExitCode> {
    let state = running(data_dir).await?;
    let answer = post(
        &state,
        "/v1/switchover",
        json!({ "shard": shard, "to": to }),
        Duration::from_secs(120),
    )
    .await
    .with_context(|| format!("switching over shard {shard}"))?;
    let status = daemon::get_status(&state).await?;
    let primary = shard_of(&status, shard)
        .and_then(|s| s.get("primary").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    println!(
        "pgshard: shard {shard} switched over to {primary} (writes held {} ms)",
        answer.get("pause_ms").and_then(Value::as_u64).unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

/// `pgshard failover pause|resume --shard N`.
pub async fn set_paused(data_dir: &Path, shard: u32, paused: bool) -> Result<ExitCode> {
    let state = running(data_dir).await?;
    let path = if paused {
        "/v1/failover/pause"
    } else {
        "/v1/failover/resume"
    };
    post(
        &state,
        path,
        json!({ "shard": shard }),
        Duration::from_secs(30),
    )
    .await?;
    if paused {
        println!("pgshard: automatic failover of shard {shard} paused (`./pgshard failover resume --shard {shard}` resumes it)");
    } else {
        println!("pgshard: automatic failover of shard {shard} resumed");
    }
    Ok(ExitCode::SUCCESS)
}

fn shard_of(status: &Value, shard: u32) -> Option<&Value> {
    status
        .get("shards")?
        .as_array()?
        .iter()
        .find(|s| s.get("id").and_then(Value::as_u64) == Some(u64::from(shard)))
}

/// The shards table of `pgshard status`, and whether every shard is `ok`.
pub fn shards_table(status: &Value) -> (String, bool) {
    let shards = status
        .get("shards")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    // No shard yet means shardd has not finished its first round: nothing to judge.
    let mut ok = true;
    if shards.is_empty() {
        return (out, ok);
    }
    out.push_str(&format!(
        "\n{:>5}  {:<18} {:>4}  {:<12} {:<9} {}\n",
        "SHARD", "PRIMARY", "TERM", "STATUS", "FAILOVER", "LAST CHANGE OF PRIMARY"
    ));
    for s in &shards {
        let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let status = text("status");
        if status != "ok" {
            ok = false;
        }
        let reason = s.get("status_reason").and_then(Value::as_str);
        let last = match s.get("last_failover_at").and_then(Value::as_str) {
            Some(at) => format!(
                "{at}, {} ms ({} in all)",
                s.get("last_failover_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                s.get("failovers").and_then(Value::as_i64).unwrap_or(0)
            ),
            None => "-".into(),
        };
        let paused = if s.get("failover_paused").and_then(Value::as_bool) == Some(true) {
            "paused"
        } else {
            "auto"
        };
        out.push_str(&format!(
            "{:>5}  {:<18} {:>4}  {:<12} {:<9} {}\n",
            s.get("id").and_then(Value::as_u64).unwrap_or(0),
            text("primary"),
            s.get("term").and_then(Value::as_i64).unwrap_or(0),
            status,
            paused,
            last
        ));
        if let Some(reason) = reason {
            out.push_str(&format!("{:>5}  {reason}\n", ""));
        }
    }
    (out, ok)
}

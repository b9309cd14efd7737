//! `shardd --config FILE --data-dir DIR`: parse flags, set up logging and signals, and
//! hand over to [`pgshard_shardd::run`].

use anyhow::Context;
use clap::Parser;
use pgshard_catalog::Config;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// pgshard's control plane: runs the cluster's PostgreSQL instances, probes them and
/// serves the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "shardd", version)]
struct Args {
    /// The pgshard.toml config file (defaults apply without one).
    #[arg(long, env = "PGSHARD_CONFIG")]
    config: Option<PathBuf>,
    /// Where instance data, logs and the cluster state live (overrides
    /// cluster.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The API's host:port (overrides shardd.listen).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.cluster.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.shardd.listen = listen;
    }
    config.validate()?;

    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signals = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        signals.cancel();
    });
    pgshard_shardd::run(config, shutdown).await
}

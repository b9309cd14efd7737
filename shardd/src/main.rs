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

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: `pgshard up` sends this to shardd.log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %one_line(&e), "shardd failed");
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

async fn run(args: Args) -> anyhow::Result<()> {
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

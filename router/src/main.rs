//! `pgshard-router`: parses flags and calls [`pgshard_router::run`].

use clap::Parser;
use pgshard_catalog::Config;
use pgshard_router::CatalogSource;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

// glibc's malloc was about a tenth of the router's instructions per select-only
// transaction (callgrind, bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "pgshard-router",
    about = "pgshard router: one PostgreSQL endpoint for a sharded cluster"
)]
struct Args {
    /// pgshard.toml (defaults apply without it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// host:port to listen on (overrides router.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Connection string of the catalog database,
    /// e.g. "host=127.0.0.1 port=5432 dbname=pgshard_catalog user=postgres".
    #[arg(long, env = "PGSHARD_CATALOG")]
    catalog: String,
}

// Sessions run on their own threads (`router.workers`); this runtime only accepts
// connections and follows the catalog.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?.router;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    #[cfg(unix)]
    {
        let signal = shutdown.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                signal.cancel();
            });
        }
    }
    pgshard_router::run(
        config,
        CatalogSource::Store {
            conninfo: args.catalog,
        },
        shutdown,
    )
    .await
}

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

// Sessions run on their own threads (`router.workers`); the main runtime (one thread)
// only accepts connections and follows the catalog.
fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour codes only for a terminal: shardd sends this output to router.log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // One descriptor per client connection: raise the soft limit before any socket
    // exists (README, "Many clients").
    match pgshard_router::limits::raise_nofile_limit() {
        Ok(l) => tracing::info!(
            before = l.before,
            now = l.now,
            hard = l.hard,
            "file descriptor limit"
        ),
        Err(e) => tracing::warn!(error = %e, "file descriptor limit not raised"),
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once: shardd reports the router's last line.
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
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?.router;
    if let Some(l) = args.listen {
        config.listen = l;
        // The exposure check again, for the address actually used.
        config.check_exposure()?;
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

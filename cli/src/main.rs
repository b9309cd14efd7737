//! `pgshard`: the command-line tool (SPEC §1, §2). It starts shardd in the background
//! for `up`, and talks to shardd's HTTP API for everything else. The CLI holds no
//! cluster logic of its own: it finds the cluster through its data directory, where
//! shardd writes `shardd.json` (pid and API address) once the cluster is ready.

mod daemon;
mod scale;
mod topology;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pgshard_shardd::runtime::docker::image::is_offline_image;
use pgshard_shardd::runtime::docker::{ImageOrigin, ImageReport};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pgshard",
    version,
    about = "A sharded PostgreSQL cluster behind one endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_DATA_DIR: &str = "./pgshard-data";

#[derive(Args, Clone)]
struct DataDirArg {
    /// The cluster's data directory (commands refuse a directory that does not hold a
    /// pgshard cluster).
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "PGSHARD_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create (or restart) the cluster and return once every node answers queries.
    Up(UpArgs),
    /// Print the cluster's nodes; exits non-zero when something is unhealthy.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print shardd's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop the whole cluster cleanly, keeping its data.
    Down {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Stop the cluster and remove all of its data (with the Docker backend: its
    /// containers, volumes and network too).
    Destroy {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Print an instance's server log (the log file of a local instance, the
    /// container's output with Docker).
    Logs {
        /// The node: catalog-node1, shard1-node1, shard1-node2, … (`status` lists them)
        node: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Only the last N lines.
        #[arg(long, short = 'n')]
        lines: Option<usize>,
    },
    /// The PostgreSQL image of the Docker backend.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Move a shard's primary role to one of its replicas, with writes held for the
    /// switch (a planned failover).
    Switchover {
        /// The shard.
        #[arg(long)]
        shard: u32,
        /// The replica to promote (default: the most advanced one).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Pause or resume automatic failover of a shard.
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// Even out bucket counts over the active shards (or `--shards`), moving buckets
    /// online; other shards are drained.
    Rebalance {
        /// The shards that should own buckets, e.g. `--shards 1,2,3`.
        #[arg(long, value_delimiter = ',')]
        shards: Option<Vec<u32>>,
        /// Return once the moves are recorded (`pgshard moves --follow` follows them).
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Start a new shard (primary and replicas), copy the tables' schema onto it, and
    /// move its share of the buckets to it online.
    AddShard {
        /// Streaming replicas of the new shard (default: as the others).
        #[arg(long)]
        replicas: Option<u32>,
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Move every bucket of a shard to the others, online, then stop its nodes and
    /// remove their data (the shard holding the undeclared tables cannot be removed).
    RemoveShard {
        shard: u32,
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Start a new streaming replica of a shard; in `sync` durability it joins the
    /// primary's synchronous set once it streams.
    AddReplica {
        #[arg(long)]
        shard: u32,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Stop and remove a replica (its data and replication slot too).
    RemoveReplica {
        /// The node's name, e.g. `shard1-node3` (`pgshard status` lists them).
        node: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// The bucket moves, newest first, with state, rows and freeze time.
    Moves {
        /// Follow the unfinished moves with a progress line until they finish.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
enum FailoverCommand {
    /// Stop failing the shard over automatically (status shows it paused).
    Pause {
        #[arg(long)]
        shard: u32,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Fail the shard over automatically again.
    Resume {
        #[arg(long)]
        shard: u32,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the PostgreSQL image offline (mmdebstrap from this machine's apt mirror;
    /// a few minutes), or pull it if it is not a pgshard image. Does nothing if it is
    /// present, unless --force.
    Build {
        /// Build (or pull) again even if the image exists.
        #[arg(long)]
        force: bool,
        /// The image (default: docker.image of --config, else the offline image).
        #[arg(long)]
        image: Option<String>,
        /// A pgshard.toml to read docker.image from.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// A pgshard.toml; defaults make it optional.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of shards (for a new cluster).
    #[arg(long)]
    shards: Option<u32>,
    /// Streaming replicas per shard (for a new cluster).
    #[arg(long)]
    replicas: Option<u32>,
    /// Port the router listens on.
    #[arg(long)]
    router_port: Option<u16>,
    /// `local` (PostgreSQL processes, the default) or `docker`.
    #[arg(long)]
    backend: Option<String>,
    /// How long to wait for the cluster, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text the message
/// before it already carries (`could not read X: No such file…` over the I/O error
/// itself) is not repeated.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// How the user invoked the CLI, for the commands it suggests: `./pgshard` through the
/// repository's wrapper (which says so in `PGSHARD_INVOKED_AS`), else `pgshard`.
fn invoked_as() -> String {
    std::env::var("PGSHARD_INVOKED_AS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pgshard".into())
}

/// A suggested command line for this data directory: `--data-dir` only when it is not
/// the default.
fn suggest(command: &str, data_dir: &std::path::Path) -> String {
    let me = invoked_as();
    if data_dir == std::path::Path::new(DEFAULT_DATA_DIR) {
        format!("{me} {command}")
    } else {
        format!("{me} {command} --data-dir {}", data_dir.display())
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Status { dir, json } => status(&dir.data_dir, json).await,
        Command::Down { dir } => {
            let cluster = daemon::ClusterDir::open(&dir.data_dir)?;
            daemon::down(&cluster).await?;
            println!("pgshard: cluster in {} stopped", dir.data_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Destroy { dir } => {
            // Nothing there is nothing to remove (`destroy` twice is harmless); any
            // other directory that is not a cluster is refused.
            if !dir.data_dir.exists() {
                println!(
                    "pgshard: no cluster in {}; nothing to remove",
                    dir.data_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let cluster = daemon::ClusterDir::open(&dir.data_dir)?;
            daemon::down(&cluster).await?;
            if let Some(config) = daemon::stored_config(&cluster.path)? {
                pgshard_shardd::tools::destroy_data(&config)
                    .await
                    .context("removing the cluster's containers, volumes and network")?;
            }
            daemon::destroy(&cluster).await?;
            println!("pgshard: cluster in {} removed", dir.data_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { node, dir, lines } => {
            let cluster = daemon::ClusterDir::open(&dir.data_dir)?;
            let config = daemon::stored_config(&cluster.path)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no cluster config in {} (create a cluster with `{}`)",
                    dir.data_dir.display(),
                    suggest("up", &dir.data_dir)
                )
            })?;
            let text = pgshard_shardd::tools::node_logs(&config, &node, lines).await?;
            // A closed pipe (`pgshard logs x | head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Build {
            force,
            image,
            config,
        }) => image_build(force, image, config.as_deref()).await,
        Command::Switchover { shard, to, dir } => {
            topology::switchover(&dir.data_dir, shard, to).await
        }
        Command::Failover(FailoverCommand::Pause { shard, dir }) => {
            topology::set_paused(&dir.data_dir, shard, true).await
        }
        Command::Failover(FailoverCommand::Resume { shard, dir }) => {
            topology::set_paused(&dir.data_dir, shard, false).await
        }
        Command::Rebalance {
            shards,
            detach,
            dir,
        } => scale::rebalance(&dir.data_dir, shards, detach).await,
        Command::AddShard {
            replicas,
            detach,
            dir,
        } => scale::add_shard(&dir.data_dir, replicas, detach).await,
        Command::RemoveShard { shard, detach, dir } => {
            scale::remove_shard(&dir.data_dir, shard, detach).await
        }
        Command::AddReplica { shard, dir } => scale::add_replica(&dir.data_dir, shard).await,
        Command::RemoveReplica { node, dir } => scale::remove_replica(&dir.data_dir, &node).await,
        Command::Moves { follow, dir } => scale::list(&dir.data_dir, follow).await,
    }
}

/// `pgshard image build`: the same build as shardd's (the embedded recipe), with a
/// progress line while it runs.
async fn image_build(
    force: bool,
    image: Option<String>,
    config: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let mut config = pgshard_catalog::Config::load(config)?;
    if let Some(image) = image {
        config.docker.image = image;
        config.validate()?;
    }
    let report = ensure_image(&config, force).await?;
    if report.origin == ImageOrigin::Present {
        println!(
            "pgshard: image {} is present ({}); --force rebuilds it",
            report.image,
            image_size(&report)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn image_size(report: &ImageReport) -> String {
    report
        .size
        .map(|s| format!("{} MB", s / 1_000_000))
        .unwrap_or_else(|| "size unknown".into())
}

/// Make the PostgreSQL image of `config` present (build it offline or pull it; with
/// `force`, again), with a progress line on stderr while that runs and a line saying
/// what was done.
async fn ensure_image(config: &pgshard_catalog::Config, force: bool) -> Result<ImageReport> {
    use std::io::IsTerminal;
    let name = &config.docker.image;
    let doing = if is_offline_image(name) {
        "building (mmdebstrap, then import)"
    } else {
        "pulling"
    };
    let started = std::time::Instant::now();
    let mut work = std::pin::pin!(pgshard_shardd::tools::build_image(config, force));
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let report = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs();
                // Nothing to show for an image that is already there.
                if secs == 0 {
                    continue;
                }
                if tty {
                    eprint!("\rpgshard: {doing} {name} … {secs}s ");
                } else if secs.is_multiple_of(15) {
                    eprintln!("pgshard: {doing} {name} … {secs}s");
                }
            }
        }
    };
    if tty && started.elapsed().as_secs() > 0 {
        eprintln!();
    }
    let report = report.with_context(|| format!("making image {name} available"))?;
    match report.origin {
        ImageOrigin::Present => {}
        ImageOrigin::Built => println!(
            "pgshard: built image {name} in {:.0}s ({})",
            report.elapsed.as_secs_f64(),
            image_size(&report)
        ),
        ImageOrigin::Pulled => println!(
            "pgshard: pulled image {name} in {:.0}s ({})",
            report.elapsed.as_secs_f64(),
            image_size(&report)
        ),
    }
    Ok(report)
}

async fn up(args: UpArgs) -> Result<ExitCode> {
    let data_dir = &args.dir.data_dir;
    daemon::ClusterDir::check_new(data_dir)?;
    if let Some(warning) =
        daemon::ignored_flags_warning(data_dir, args.config.as_deref(), &overrides(&args))
    {
        eprintln!("{warning}");
    }
    if let Ok(cluster) = daemon::ClusterDir::open(data_dir) {
        if let Some(state) = daemon::running(&cluster).await {
            println!(
                "pgshard: cluster in {} is already running",
                data_dir.display()
            );
            print_connect_hint(&state, data_dir);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(pid) = cluster.shardd() {
            anyhow::bail!(
                "the cluster in {} is starting or stopping (shardd pid {pid}); see `{}`",
                data_dir.display(),
                suggest("status", data_dir)
            );
        }
    }
    // A refused `up` on a new directory leaves nothing behind.
    let fresh = std::fs::read_dir(data_dir).map_or(true, |mut e| e.next().is_none());
    let prepared = prepare(&args).await;
    let config = match prepared {
        Ok(c) => c,
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_file(data_dir.join("pgshard.toml"));
                let _ = std::fs::remove_dir(data_dir);
            }
            return Err(e);
        }
    };
    let started = std::time::Instant::now();
    let state = daemon::start(data_dir, std::time::Duration::from_secs(args.timeout)).await?;
    let cluster = daemon::ClusterDir::open(data_dir)?;
    if let Err(e) = daemon::verify_ours(&cluster, &state).await {
        eprintln!("pgshard: the readiness check failed; stopping the cluster");
        daemon::down(&cluster).await?;
        return Err(e.context("the cluster did not prove it is serving on its own addresses"));
    }
    println!(
        "pgshard: cluster ready in {:.1}s ({}, {} each, {} backend)",
        started.elapsed().as_secs_f64(),
        plural(config.cluster.shards, "shard", "shards"),
        plural(config.cluster.replicas, "replica", "replicas"),
        match config.cluster.backend {
            pgshard_catalog::config::Backend::Local => "local",
            pgshard_catalog::config::Backend::Docker => "docker",
        }
    );
    print_connect_hint(&state, data_dir);
    Ok(ExitCode::SUCCESS)
}

fn overrides(args: &UpArgs) -> daemon::Overrides {
    daemon::Overrides {
        shards: args.shards,
        replicas: args.replicas,
        router_port: args.router_port,
        backend: args.backend.clone(),
    }
}

/// Everything `up` checks and prepares before it starts shardd: the effective config
/// (stored for a new cluster), the backend, free ports, the Docker image.
async fn prepare(args: &UpArgs) -> Result<pgshard_catalog::Config> {
    let config =
        daemon::effective_config(&args.dir.data_dir, args.config.as_deref(), overrides(args))?;
    daemon::check_backend(&config)?;
    daemon::check_ports(&args.dir.data_dir, &config)?;
    if config.cluster.backend == pgshard_catalog::config::Backend::Docker {
        // Here rather than inside shardd: a first build takes minutes, and shows progress.
        ensure_image(&config, false).await?;
    }
    Ok(config)
}

fn print_connect_hint(state: &daemon::DaemonState, data_dir: &std::path::Path) {
    if let Some(router) = &state.router {
        println!(
            "connect:   psql -h {} -p {} -U postgres postgres",
            router.0, router.1
        );
    }
    println!("status:    {}", suggest("status", data_dir));
    println!("stop:      {}", suggest("down", data_dir));
}

async fn status(data_dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let cluster = daemon::ClusterDir::open(data_dir)?;
    let Some(state) = daemon::running(&cluster).await else {
        let why = match cluster.shardd() {
            Some(pid) => format!("shardd (pid {pid}) is starting or stopping"),
            None => "shardd is not running".into(),
        };
        eprintln!(
            "pgshard: no running cluster in {} ({why}; start it with `{}`)",
            data_dir.display(),
            suggest("up", data_dir)
        );
        return Ok(ExitCode::from(2));
    };
    let body = daemon::get_status(&state)
        .await
        .context("asking shardd for the cluster status")?;
    let mut out = String::new();
    if json {
        out.push_str(&serde_json::to_string_pretty(&body)?);
        out.push('\n');
    }
    let nodes = body
        .get("nodes")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    let mut healthy = body.get("ready").and_then(|r| r.as_bool()).unwrap_or(false);
    // Column widths fit the longest name and address (container names with Docker).
    let width = |f: &dyn Fn(&serde_json::Value) -> usize, min: usize| {
        nodes.iter().map(f).max().unwrap_or(0).max(min)
    };
    let name_w = width(
        &|n| n.get("name").and_then(|v| v.as_str()).map_or(0, str::len),
        18,
    );
    let addr_w = width(
        &|n| {
            n.get("host").and_then(|v| v.as_str()).map_or(0, str::len)
                + 1
                + n.get("port")
                    .and_then(|v| v.as_u64())
                    .map_or(1, |p| p.to_string().len())
        },
        21,
    );
    if !json {
        out.push_str(&format!(
            "cluster {}\n",
            body.get("cluster").and_then(|c| c.as_str()).unwrap_or("?")
        ));
        out.push_str(&format!(
            "{:<name_w$} {:>5}  {:<8} {:<addr_w$} {:<8} {:<16} {:>10}\n",
            "NODE", "SHARD", "ROLE", "ADDRESS", "STATE", "REPLICATION", "LAG"
        ));
    }
    for n in &nodes {
        let s = |k: &str| n.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let state = s("state");
        if state != "healthy" {
            healthy = false;
        }
        if json {
            continue;
        }
        let shard = n
            .get("shard")
            .and_then(|v| v.as_u64())
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let addr = format!(
            "{}:{}",
            s("host"),
            n.get("port").and_then(|v| v.as_u64()).unwrap_or(0)
        );
        let repl = match (
            n.get("replication_state").and_then(|v| v.as_str()),
            n.get("sync_state").and_then(|v| v.as_str()),
        ) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.to_string(),
            (None, Some(s)) => s.to_string(),
            (None, None) => "-".into(),
        };
        let lag = n
            .get("lag_bytes")
            .and_then(|v| v.as_i64())
            .map(|v| format!("{v} B"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<name_w$} {:>5}  {:<8} {:<addr_w$} {:<8} {:<16} {:>10}\n",
            s("name"),
            shard,
            s("role"),
            addr,
            state,
            repl,
            lag
        ));
    }
    if nodes.is_empty() {
        healthy = false;
    }
    if let Some(router) = body.get("router").filter(|r| !r.is_null()) {
        let s = |k: &str| router.get(k).and_then(|v| v.as_str()).unwrap_or("?");
        let serving = s("state") == "serving";
        if !serving {
            healthy = false;
        }
        if !json {
            let pid = router
                .get("pid")
                .and_then(|v| v.as_u64())
                .map_or("-".into(), |p| p.to_string());
            let restarts = router.get("restarts").and_then(|v| v.as_u64()).unwrap_or(0);
            out.push_str(&format!(
                "router {} pid {pid} {} (restarts: {restarts})\n",
                s("listen"),
                if serving {
                    "serving".to_string()
                } else {
                    format!("NOT SERVING: {}", s("state"))
                },
            ));
            if let Some(e) = router.get("last_error").and_then(|v| v.as_str()) {
                out.push_str(&format!("router last error: {e}\n"));
            }
        }
    }
    // Every shard must be `ok` too (not failing over, degraded or refused), with or
    // without --json.
    let (table, shards_ok) = topology::shards_table(&body);
    if !json {
        out.push_str(&table);
        if let Some(op) = scale::running_operation(&state).await {
            out.push_str(&op);
        }
    }
    healthy &= shards_ok;
    if !healthy && !json {
        out.push_str("pgshard: cluster is not fully healthy\n");
    }
    // A closed pipe (`pgshard status | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_rendered_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io).context("could not read x.toml: No such file or directory");
        assert_eq!(
            render_error(&e),
            "could not read x.toml: No such file or directory"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render_error(&e), "outer: inner");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(plural(1, "replica", "replicas"), "1 replica");
        assert_eq!(plural(2, "shard", "shards"), "2 shards");
        assert_eq!(plural(0, "replica", "replicas"), "0 replicas");
    }
}

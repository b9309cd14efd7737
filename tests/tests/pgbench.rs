//! pgbench end to end through the router (SPEC §7, issue #5 item 5): the shipped
//! `bench/pgbench.toml` on a 2-shard cluster, the TPC-B-like script in all three query
//! modes, `-S` and `-N`, with 0 failed transactions, and afterwards the four balances
//! agreeing (sum(abalance) = sum(tbalance) = sum(bbalance) = sum(delta)), both through
//! the router and summed over the shards directly, with no prepared transaction left.
//!
//! `pgbench -i` loads through the router (COPY split by key). Runs are short here (a fixed number of transactions per client); `bench/tpcb.sh`
//! runs the 60-second versions and records them in bench/RESULTS.md.

use pgshard_catalog::config::{RouterConfig, TableConfig};
use pgshard_catalog::hash::bucket_sql_expr;
use pgshard_catalog::KeyType;
use pgshard_tests::{TestCluster, TestClusterOptions, TestRouter};
use std::path::PathBuf;
use std::process::Command;

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];
const SCALE: i64 = 1;

/// The `[[table]]` entries of bench/pgbench.toml.
fn pgbench_tables() -> Vec<TableConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        table: Vec<TableConfig>,
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/pgbench.toml");
    let text = std::fs::read_to_string(&path).expect("bench/pgbench.toml");
    toml::from_str::<File>(&text).expect("parse").table
}

fn pgbench_bin() -> PathBuf {
    let dir = pgshard_shardd::runtime::local::find_pg_bin_dir(
        std::env::var_os("PGSHARD_PG_BIN_DIR")
            .map(PathBuf::from)
            .as_deref(),
    )
    .expect("PostgreSQL binaries");
    dir.join("pgbench")
}

/// Runs pgbench against the router; returns its standard output, failing the test on
/// a non-zero exit or any failed transaction.
fn pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new(pgbench_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    if let Some(line) = stdout
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
    {
        assert!(
            line.starts_with("number of failed transactions: 0 "),
            "pgbench {args:?}: {line}\n{stdout}\n{stderr}"
        );
    }
    eprintln!("pgbench {args:?}:\n{stdout}");
    stdout
}

/// Every row of pgbench's initial data is on the shard its bucket says, and all of
/// it is there.
async fn check_placement(cluster: &TestCluster) -> anyhow::Result<()> {
    let catalog = cluster.catalog();
    let buckets = catalog.buckets;
    let mut totals = [0i64; 3];
    for (i, node) in PRIMARIES.iter().enumerate() {
        let shard = pgshard_catalog::ShardId(i as u32 + 1);
        let owned: Vec<String> = catalog
            .bucket_map
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == shard)
            .map(|(b, _)| b.to_string())
            .collect();
        let owned = format!("ARRAY[{}]::int4[]", owned.join(","));
        let c = cluster.connect_node(node).await?;
        for (t, (table, key)) in [
            ("pgbench_branches", "bid"),
            ("pgbench_tellers", "tid"),
            ("pgbench_accounts", "aid"),
        ]
        .iter()
        .enumerate()
        {
            let misplaced = sum(
                &c,
                &format!(
                    "SELECT count(*) FROM {table} WHERE NOT {} = ANY ({owned})",
                    bucket_sql_expr(key, KeyType::Int4, buckets)
                ),
            )
            .await?;
            assert_eq!(misplaced, 0, "{table} rows on the wrong shard ({node})");
            totals[t] += sum(&c, &format!("SELECT count(*) FROM {table}")).await?;
        }
    }
    assert_eq!(totals, [SCALE, 10 * SCALE, 100_000 * SCALE], "rows loaded");
    Ok(())
}

async fn sum(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).map_or(Ok(0), str::parse)?);
        }
    }
    anyhow::bail!("no row from {sql}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_in_every_mode_keeps_the_balances_consistent() -> anyhow::Result<()> {
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables: pgbench_tables(),
        ..Default::default()
    })
    .await?;
    // Far more clients than backends: transaction pooling and lazy re-prepares.
    let config = RouterConfig {
        pool_size: 8,
        ..cluster.config().router.clone()
    };
    let router = TestRouter::start_with(&cluster, config).await?;
    let port = router.port();

    // pgbench -i through the router: DROP/CREATE on every shard; then in one
    // transaction TRUNCATE on every shard, the branch and teller INSERTs on their
    // shards and `copy pgbench_accounts from stdin with (freeze on)` split by aid; then
    // VACUUM and the primary keys on every shard.
    pgbench(port, &["-i", "-s", &SCALE.to_string()]);
    check_placement(&cluster).await?;

    let client = router.connect().await?;
    let runs: [(&str, &[&str], i64); 6] = [
        ("simple", &["-c", "8", "-t", "40"], 320),
        ("extended", &["-c", "8", "-t", "40"], 320),
        ("prepared", &["-c", "8", "-t", "40"], 320),
        ("prepared", &["-c", "32", "-t", "10"], 320),
        ("extended", &["-c", "8", "-t", "40", "-N"], 320),
        ("prepared", &["-c", "8", "-t", "40", "-S"], 0),
    ];
    let mut n_expected = 0;
    // What -N (no teller or branch updates) added to the history.
    let mut simple_update_delta = 0;
    for (mode, args, history_rows) in runs {
        let before = sum(&client, "SELECT sum(delta)::int8 FROM pgbench_history").await?;
        let mut all = vec!["-M", mode, "-j", "2", "-n"];
        all.extend_from_slice(args);
        pgbench(port, &all);
        n_expected += history_rows;
        // The balances agree after every run (so a failure names the mode).
        let accounts = sum(&client, "SELECT sum(abalance)::int8 FROM pgbench_accounts").await?;
        let tellers = sum(&client, "SELECT sum(tbalance)::int8 FROM pgbench_tellers").await?;
        let branches = sum(&client, "SELECT sum(bbalance)::int8 FROM pgbench_branches").await?;
        let history = sum(&client, "SELECT sum(delta)::int8 FROM pgbench_history").await?;
        let n_history = sum(&client, "SELECT count(*) FROM pgbench_history").await?;
        assert_eq!(n_history, n_expected, "{mode} {args:?}: history rows");
        assert_eq!(accounts, history, "{mode} {args:?}: accounts vs history");
        if args.contains(&"-N") {
            simple_update_delta += history - before;
        }
        let tpcb = history - simple_update_delta;
        assert_eq!(tellers, tpcb, "{mode} {args:?}: tellers vs history");
        assert_eq!(branches, tpcb, "{mode} {args:?}: branches vs history");
    }
    let history = sum(&client, "SELECT sum(delta)::int8 FROM pgbench_history").await?;

    // The same sums over the shards directly, and nothing left prepared.
    let mut direct = [0i64; 4];
    for node in PRIMARIES {
        let c = cluster.connect_node(node).await?;
        for (i, sql) in [
            "SELECT sum(abalance)::int8 FROM pgbench_accounts",
            "SELECT sum(tbalance)::int8 FROM pgbench_tellers",
            "SELECT sum(bbalance)::int8 FROM pgbench_branches",
            "SELECT sum(delta)::int8 FROM pgbench_history",
        ]
        .iter()
        .enumerate()
        {
            direct[i] += sum(&c, sql).await?;
        }
        assert_eq!(
            sum(&c, "SELECT count(*) FROM pg_prepared_xacts").await?,
            0,
            "prepared transactions left on {node}"
        );
    }
    let tpcb = history - simple_update_delta;
    assert_eq!(
        direct,
        [history, tpcb, tpcb, history],
        "sums over the shards directly"
    );
    Ok(())
}

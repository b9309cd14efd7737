//! Differential tests (SPEC §14): the corpus in `tests/corpus/` runs against one plain
//! PostgreSQL and through a pgshard router on a 2-shard cluster; rows, column names and
//! types, command tags and SQLSTATEs must be identical, or the router must say 0A000.
//! Afterwards every row of every distributed table must sit on the shard its bucket
//! maps to, checked on the shards directly.

use pgshard_catalog::config::TableConfig;
use pgshard_catalog::{hash, TableKind};
use pgshard_tests::diff::{self, parse_corpus};
use pgshard_tests::wire::{Mode, WireClient};
use pgshard_tests::{distributed, reference, two_shards, Standalone, TestCluster, TestRouter};

/// Every row of every distributed table is on the shard owning its bucket.
async fn check_placement(cluster: &TestCluster) -> anyhow::Result<usize> {
    let catalog = cluster.catalog();
    let mut checked = 0;
    for t in &catalog.tables {
        let TableKind::Distributed {
            shard_key,
            key_type,
            ..
        } = &t.kind
        else {
            continue;
        };
        for shard in catalog.shard_ids() {
            let primary = catalog
                .primary(shard)
                .ok_or_else(|| anyhow::anyhow!("no primary for shard {shard}"))?;
            let client = cluster.connect_node(&primary.name).await?;
            let owned: Vec<i32> = (0..catalog.buckets)
                .filter(|b| catalog.bucket_map[*b as usize] == shard)
                .map(|b| b as i32)
                .collect();
            let expr =
                hash::bucket_sql_expr(&format!("\"{shard_key}\""), *key_type, catalog.buckets);
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE NOT ({expr}) = ANY($1)), count(*) FROM {}",
                        t.name
                    ),
                    &[&owned],
                )
                .await?;
            let (misplaced, total): (i64, i64) = (row.get(0), row.get(1));
            assert_eq!(
                misplaced, 0,
                "{misplaced} of {total} rows of {} on shard {shard} belong elsewhere",
                t.name
            );
            checked += total as usize;
        }
    }
    Ok(checked)
}

async fn run_corpus(file: &str, tables: Vec<TableConfig>) -> anyhow::Result<diff::Report> {
    run_corpus_mode(file, tables, Mode::Simple).await
}

async fn run_corpus_mode(
    file: &str,
    tables: Vec<TableConfig>,
    mode: Mode,
) -> anyhow::Result<diff::Report> {
    let cluster = two_shards(tables).await?;
    let router = TestRouter::start(&cluster).await?;
    let plain = Standalone::start().await?;
    let mut p =
        WireClient::connect("127.0.0.1", plain.port(), "postgres", "postgres", None).await?;
    let mut r =
        WireClient::connect("127.0.0.1", router.port(), "postgres", "postgres", None).await?;
    let path = format!("{}/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)?;
    let entries = parse_corpus(file, &text);
    let report = diff::run_mode(&mut p, &mut r, &entries, mode).await?;
    eprintln!("{file} ({mode:?}): {}", report.summary());
    let rows = check_placement(&cluster).await?;
    eprintln!("{file} ({mode:?}): {rows} rows checked on the shard their bucket maps to");
    Ok(report)
}

/// The corpus in the extended protocol, binary results, and as named prepared
/// statements (SPEC §6): no wrong answers, and the same statements unsupported as
/// through simple Queries (`simple`), with the same messages.
async fn extended_modes(
    file: &str,
    tables: Vec<TableConfig>,
    simple: &diff::Report,
) -> anyhow::Result<()> {
    let unsupported = |r: &diff::Report| -> Vec<(usize, String)> {
        r.unsupported
            .iter()
            .map(|(e, m)| (e.line, m.clone()))
            .collect()
    };
    let mut failures = Vec::new();
    for mode in [Mode::ExtendedBinary, Mode::Prepared] {
        let report = run_corpus_mode(file, tables.clone(), mode).await?;
        let (theirs, ours) = (unsupported(&report), unsupported(simple));
        for u in theirs.iter().filter(|u| !ours.contains(u)) {
            failures.push(format!("{mode:?} only: line {}: {}", u.0, u.1));
        }
        for u in ours.iter().filter(|u| !theirs.contains(u)) {
            failures.push(format!("Simple only: line {}: {}", u.0, u.1));
        }
        for (e, why) in &report.wrong {
            failures.push(format!(
                "{mode:?} WRONG line {}: {}\n  {why}",
                e.line, e.sql
            ));
        }
        if report.same != simple.same {
            failures.push(format!(
                "{mode:?}: {} same, simple protocol {}",
                report.same, simple.same
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{file}: the protocols differ:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Fails on any wrong answer, or when fewer than `min_same` statements compared equal
/// (a corpus that stopped running would otherwise pass).
fn no_wrong_answers(report: &diff::Report, min_same: usize) {
    assert!(
        report.wrong.is_empty(),
        "wrong answers:\n{}",
        report.summary()
    );
    assert!(
        report.same > min_same,
        "too few statements compared: {}",
        report.summary()
    );
}

/// The app corpus statements pgshard may still refuse (0A000).
const MAX_APP_REFUSALS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_shard_corpus() -> anyhow::Result<()> {
    let tables = vec![
        distributed("accounts", "id", "bigint"),
        distributed("users", "id", "integer"),
        distributed("docs", "slug", "text"),
        distributed("things", "id", "uuid"),
        distributed("smalls", "k", "smallint"),
        distributed("vnames", "k", "varchar"),
        reference("branches"),
    ];
    let report = run_corpus("single_shard.sql", tables.clone()).await?;
    no_wrong_answers(&report, 150);
    extended_modes("single_shard.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("items", "id", "bigint"),
        TableConfig {
            colocate_with: Some("items".into()),
            ..distributed("orders", "item_id", "bigint")
        },
        reference("categories"),
    ];
    let report = run_corpus("fanout.sql", tables.clone()).await?;
    no_wrong_answers(&report, 0);
    extended_modes("fanout.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("kv", "id", "bigint"),
        distributed("tk", "k", "text"),
        reference("ref_c"),
    ];
    let report = run_corpus("insert.sql", tables.clone()).await?;
    no_wrong_answers(&report, 0);
    extended_modes("insert.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_update_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("ku", "id", "bigint"),
        TableConfig {
            colocate_with: Some("ku".into()),
            ..distributed("kc", "pid", "bigint")
        },
        TableConfig {
            colocate_with: Some("ku".into()),
            ..distributed("kcc", "pid", "bigint")
        },
        distributed("tku", "k", "text"),
        distributed("gen", "id", "bigint"),
    ];
    let report = run_corpus("key_update.sql", tables.clone()).await?;
    no_wrong_answers(&report, 40);
    extended_modes("key_update.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("vc", "id", "bigint"),
        TableConfig {
            colocate_with: Some("vc".into()),
            ..distributed("vo", "cid", "bigint")
        },
        reference("vr"),
    ];
    let report = run_corpus("views.sql", tables.clone()).await?;
    no_wrong_answers(&report, 30);
    extended_modes("views.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cte_write_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("cw", "id", "bigint"),
        TableConfig {
            colocate_with: Some("cw".into()),
            ..distributed("cw_log", "id", "bigint")
        },
        distributed("cw_arch", "id", "bigint"),
        reference("cw_ref"),
    ];
    let report = run_corpus("cte_write.sql", tables.clone()).await?;
    no_wrong_answers(&report, 40);
    extended_modes("cte_write.sql", tables, &report).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_corpus_has_no_wrong_answers() -> anyhow::Result<()> {
    let tables = vec![
        distributed("customers", "id", "bigint"),
        TableConfig {
            colocate_with: Some("customers".into()),
            ..distributed("purchases", "customer_id", "bigint")
        },
        distributed("events", "id", "integer"),
        distributed("scratch", "k", "text"),
        distributed("measures", "id", "bigint"),
        reference("countries"),
    ];
    let report = run_corpus("app.sql", tables.clone()).await?;
    no_wrong_answers(&report, 150);
    // Issue 15: at most 3 % of the app corpus refused, each refusal listed with why in
    // README.md ("Still refused"). Lower this as refusals go.
    assert!(
        report.unsupported.len() <= MAX_APP_REFUSALS,
        "more than {MAX_APP_REFUSALS} app corpus statements refused:\n{}",
        report.summary()
    );
    extended_modes("app.sql", tables, &report).await?;
    Ok(())
}

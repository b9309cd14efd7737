//! A bucket move whose source shard fails over (SPEC §8, §9; issue 12: "the source
//! shard failing over mid-move restarts that move cleanly"), on the local runtime under
//! shardd's control loop: the source primary is SIGKILLed while one of `add-shard`'s
//! moves runs, shardd promotes the source's synchronous replica, and the interrupted
//! move is rolled back on the new primary and recorded again (killed before its flip),
//! or finished there (after it).

use pgshard_catalog::moves::MoveState;
use pgshard_catalog::{ShardId, ShardStatus};
use pgshard_tests::scaling::{
    acked_values, check_clean, check_no_leftovers, check_placement, expected_values, scale,
    unfinished_moves, wait_moves, Load, ACCOUNTS, MOVES, START_BALANCE,
};
use pgshard_tests::{TestClusterOptions, TestDaemon};
use serde_json::json;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 64;
const FAILOVER: Duration = Duration::from_secs(60);
const REBUILD: Duration = Duration::from_secs(180);

/// Killed while the move's buckets are frozen on the source (`frozen` or `copying`):
/// the move is rolled back on the new primary (its prepared transactions there rolled
/// back, the fence lifted, the target's copy deleted) and its buckets moved again, or,
/// if it flipped before the kill took, finished there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_failover_before_the_flip_rolls_the_move_back_and_redoes_it() -> anyhow::Result<()> {
    kill_source_mid_move(&[MoveState::Frozen, MoveState::Copying]).await
}

/// Killed after the move's flip (`flipped` or `cleaning`): the new primary holds the
/// source's prepared delete (replicated synchronously), and the move is finished there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_failover_after_the_flip_finishes_the_move_on_the_new_primary() -> anyhow::Result<()>
{
    kill_source_mid_move(&[MoveState::Flipped, MoveState::Cleaning]).await
}

/// 2 shards, each a primary and a synchronous replica; `add_shard` (with a replica) to
/// 3 while clients insert, update and transfer through a router; the source primary of
/// the first move seen in one of `states` is SIGKILLed. Afterwards: the shard failed
/// over, every move finished (the interrupted one done after its flip, or rolled back
/// and its buckets moved again), shard 3 holds its share, every acknowledged row exactly
/// once on its bucket's shard with its acknowledged updates, the money all there, and no
/// prepared transaction, fence or replication object left on any instance, the new
/// primary and the rebuilt old one included.
async fn kill_source_mid_move(states: &[MoveState]) -> anyhow::Result<()> {
    let d = TestDaemon::start(
        TestClusterOptions {
            shards: 2,
            replicas: 1,
            buckets: BUCKETS,
            tables: vec![
                pgshard_tests::distributed("acked", "id", "bigint"),
                pgshard_tests::distributed("accounts", "id", "bigint"),
                pgshard_tests::distributed("tallies", "id", "bigint"),
            ],
            ..Default::default()
        },
        // The default hold (10 s): a failover held up by a move waiting on a lock of a
        // transaction left in doubt by the kill (it took ~10.7 s about one run in five
        // before the move stopped waiting for those) fails the held statements.
        |_| {},
    )
    .await?;
    let router = d.router().await?;
    Load::prepare(&router).await?;
    // Rows in every bucket, so that each move has something to copy.
    let c = router.connect().await?;
    let values: Vec<String> = (1..=3000).map(|i| format!("({i})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO acked (id) VALUES {}",
        values.join(",")
    ))
    .await?;
    let load = Load::start(&router, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ids = scale(&d, json!({"op": "add_shard", "replicas": 1})).await?;
    assert!(!ids.is_empty());
    // Watch the moves in the catalog; kill the source primary of the first one seen with
    // its buckets frozen.
    let (catalog_client, conn) =
        tokio_postgres::connect(&d.catalog_conninfo()?, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let started = Instant::now();
    let caught = loop {
        let moves = unfinished_moves(&catalog_client).await?;
        if let Some(m) = moves.iter().find(|m| states.contains(&m.state)) {
            break m.clone();
        }
        anyhow::ensure!(
            !moves.is_empty() && started.elapsed() < MOVES,
            "no move seen in a state of {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let source = caught.source;
    let catalog = d.catalog().await?;
    let old = catalog.primary(source).expect("primary").name.clone();
    let term = catalog.shard(source).map(|s| s.term).unwrap_or_default();
    d.kill_node(&old).await?;
    let state_at_kill = pgshard_catalog::moves::get(&catalog_client, caught.id)
        .await?
        .state;
    eprintln!(
        "killed {old} (shard {source}, term {term}) with move {} seen {}, {} at the kill",
        caught.id, caught.state, state_at_kill
    );
    let killed = Instant::now();
    let after = d
        .wait_catalog(
            &format!("shard {source} fails over from {old}"),
            FAILOVER,
            |c| {
                c.shard(source)
                    .is_some_and(|s| s.term > term && s.status != ShardStatus::FailingOver)
                    && c.primary(source).is_some_and(|p| p.name != old)
            },
        )
        .await?;
    let new = after.primary(source).expect("primary").name.clone();
    let failed_over = killed.elapsed();
    let all = wait_moves(&d).await?;
    let moves_took = killed.elapsed();
    d.wait_redundant(REBUILD).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;

    let interrupted = all
        .iter()
        .find(|m| m.0 == caught.id)
        .expect("the interrupted move");
    let done = all.iter().filter(|m| m.1 == MoveState::Done).count();
    // A move is given up after 50 rollbacks of its buckets: how close this run came.
    let mut rollbacks = std::collections::HashMap::new();
    for m in pgshard_catalog::moves::list(&catalog_client, false).await? {
        if m.state == MoveState::Aborted {
            for b in m.buckets {
                *rollbacks.entry(b).or_insert(0) += 1;
            }
        }
    }
    eprintln!(
        "most rollbacks of one bucket: {:?}",
        rollbacks.values().max()
    );
    eprintln!(
        "shard {source} failed over to {new} in {failed_over:?}; moves finished {moves_took:?} after the kill; \
         move {} ended {}; {} moves, {done} done, {} rolled back; {} inserts, {} updates, {} transfers, {} client errors: {:?}",
        caught.id,
        interrupted.1,
        all.len(),
        all.len() - done,
        report.acked.len(),
        report.updated.len(),
        report.transfers,
        report.errors.len(),
        report.errors.iter().take(10).collect::<Vec<_>>()
    );
    // Every move ended: done, or rolled back with nothing moved (and recorded again).
    for (id, state, rows, _) in &all {
        assert!(
            *state == MoveState::Done || (*state == MoveState::Aborted && *rows == 0),
            "move {id}: {state}"
        );
    }
    // Seen before its flip, the move may still have flipped before the kill took (the
    // flip needs only the target and the catalog): then it is finished, like one seen
    // after its flip.
    assert!(
        caught.state.before_flip() || interrupted.1 == MoveState::Done,
        "move {} seen {} ended {}",
        caught.id,
        caught.state,
        interrupted.1
    );
    if interrupted.1 == MoveState::Aborted {
        let redone: Vec<_> = all
            .iter()
            .filter(|m| m.0 > caught.id && m.1 == MoveState::Done)
            .collect();
        assert!(!redone.is_empty(), "move {} not recorded again", caught.id);
    }
    let c = d.catalog().await?;
    assert!(c.frozen.is_empty(), "buckets left frozen");
    let on3 = c.bucket_map.iter().filter(|o| **o == ShardId(3)).count();
    assert_eq!(on3, (BUCKETS / 3) as usize, "shard 3 got its share");
    for b in &caught.buckets {
        assert_eq!(
            c.bucket_map[b.0 as usize], caught.target,
            "bucket {b} of the interrupted move"
        );
    }
    // Statements that arrived during the failover were held, never failed: the only
    // errors are those of statements running on the killed primary (08006, 08007), and
    // no read counted an account twice or missed one.
    let unexpected: Vec<&String> = report
        .errors
        .iter()
        .filter(|e| e.contains("expected") || e.contains("57P03") || e.contains(" rows"))
        .collect();
    assert!(unexpected.is_empty(), "client errors: {unexpected:?}");
    assert!(
        report.acked.len() > 50 && report.transfers > 10 && report.reads > 10,
        "the load did not run"
    );

    // 2PC recovery finishes the transfers the kill left prepared on the old primary.
    d.wait_no_prepared(Duration::from_secs(90)).await?;
    let present = check_placement(&d, "acked").await?;
    check_placement(&d, "accounts").await?;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    let lost: Vec<i64> = report
        .acked
        .iter()
        .copied()
        .chain(1..=3000)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    // An update whose acknowledgement the kill cut off may have committed: at least
    // the acknowledged ones.
    let have = acked_values(&d).await?;
    let short: Vec<_> = expected_values(&report)
        .into_iter()
        .filter(|(id, v)| have.get(id).is_none_or(|h| h < v))
        .collect();
    assert!(short.is_empty(), "acknowledged updates lost: {short:?}");
    let r = router.connect().await?;
    let total: i64 = r
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);
    assert_eq!(total, ACCOUNTS * START_BALANCE, "transfers lost or doubled");
    check_clean(&d).await?;
    check_no_leftovers(&d, Duration::from_secs(30)).await?;
    Ok(())
}

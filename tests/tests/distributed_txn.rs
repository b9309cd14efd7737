//! Transactions spanning shards end to end (SPEC §7): tokio-postgres through a router
//! (with its catalog connection, so two-phase commit is on) on a 2-shard cluster. A
//! transaction writing on both shards commits on both or on neither, and leaves no
//! prepared transaction behind.

use pgshard_catalog::config::TableConfig;
use pgshard_tests::{two_shards, TestCluster, TestRouter};
use tokio_postgres::{Client, SimpleQueryMessage};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

fn distributed(name: &str) -> TableConfig {
    pgshard_tests::distributed(name, "id", "bigint")
}

/// `SELECT count(*)`-style single value, straight from a shard primary.
async fn on_shard(cluster: &TestCluster, node: &str, sql: &str) -> anyhow::Result<i64> {
    let c = cluster.connect_node(node).await?;
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// Rows of `table` on each primary, and that no prepared transaction is left.
async fn per_shard(cluster: &TestCluster, table: &str) -> anyhow::Result<Vec<i64>> {
    cluster
        .value_on_each(&PRIMARIES, &format!("SELECT count(*) FROM {table}"))
        .await
}

/// The command tags of a simple Query.
async fn tags(client: &Client, sql: &str) -> anyhow::Result<Vec<u64>> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(n),
            _ => None,
        })
        .collect())
}

/// One single-row INSERT per key: each statement goes to its key's shard, so with 20
/// keys the transaction touches both shards.
async fn insert_keys(client: &Client, table: &str) -> anyhow::Result<()> {
    for id in 1..=20 {
        client
            .simple_query(&format!(
                "INSERT INTO {table} (id, v) VALUES ({id}, 'v{id}')"
            ))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_on_both_shards_commits_everywhere_or_nowhere() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dt_kv")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE dt_kv (id bigint PRIMARY KEY, v text)")
        .await?;

    // Committed: every row on its shard, both shards used, nothing left prepared.
    c.simple_query("BEGIN").await?;
    insert_keys(&c, "dt_kv").await?;
    let seen = tags(&c, "SELECT v FROM dt_kv WHERE id = 7").await?;
    assert_eq!(seen, vec![1], "the transaction sees its own write");
    c.simple_query("COMMIT").await?;
    let counts = per_shard(&cluster, "dt_kv").await?;
    assert_eq!(counts.iter().sum::<i64>(), 20, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "both shards took part: {counts:?}"
    );

    // Rolled back: nothing applied anywhere.
    c.simple_query("BEGIN").await?;
    for id in 101..=120 {
        c.simple_query(&format!("INSERT INTO dt_kv (id, v) VALUES ({id}, 'r')"))
            .await?;
    }
    c.simple_query("ROLLBACK").await?;
    assert_eq!(per_shard(&cluster, "dt_kv").await?.iter().sum::<i64>(), 20);

    // An error on one shard fails the whole transaction; COMMIT answers ROLLBACK.
    c.simple_query("BEGIN").await?;
    for id in 201..=220 {
        c.simple_query(&format!("INSERT INTO dt_kv (id, v) VALUES ({id}, 'e')"))
            .await?;
    }
    let dup = c
        .simple_query("INSERT INTO dt_kv (id, v) VALUES (1, 'dup')")
        .await;
    let code = dup.err().and_then(|e| e.code().cloned());
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    // Any later statement, on any shard, is refused as PostgreSQL does.
    for id in [2, 3, 4, 5] {
        let e = c
            .simple_query(&format!("SELECT v FROM dt_kv WHERE id = {id}"))
            .await
            .err()
            .and_then(|e| e.code().cloned());
        assert_eq!(
            e,
            Some(tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
        );
    }
    let ended = c.simple_query("COMMIT").await?;
    let rolled_back = ended
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)));
    assert!(rolled_back);
    assert_eq!(per_shard(&cluster, "dt_kv").await?.iter().sum::<i64>(), 20);

    // The session goes on, outside any transaction.
    let n: i64 = c
        .query_one("SELECT count(*) FROM dt_kv WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(tags(&c, "SELECT 1").await?, vec![1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_in_a_transaction_spanning_shards_are_kept_on_every_shard() -> anyhow::Result<()>
{
    let cluster = two_shards(vec![distributed("dt_sp")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE dt_sp (id bigint PRIMARY KEY, v text)")
        .await?;
    // A savepoint taken while only one shard takes part; the other shard joins
    // afterwards (the savepoint is replayed there); ROLLBACK TO undoes both.
    c.simple_query("BEGIN").await?;
    c.simple_query("INSERT INTO dt_sp (id, v) VALUES (1, 'kept')")
        .await?;
    c.simple_query("SAVEPOINT a").await?;
    insert_keys_from(&c, "dt_sp", 2).await?;
    assert_eq!(first(&c, "SELECT count(*) FROM dt_sp").await?, "20");
    c.simple_query("ROLLBACK TO SAVEPOINT a").await?;
    assert_eq!(first(&c, "SELECT count(*) FROM dt_sp").await?, "1");
    // A savepoint spanning shards, released; an error recovered with ROLLBACK TO.
    insert_keys_from(&c, "dt_sp", 2).await?;
    c.simple_query("SAVEPOINT b").await?;
    c.simple_query("UPDATE dt_sp SET v = 'changed'").await?;
    c.simple_query("RELEASE SAVEPOINT b").await?;
    c.simple_query("SAVEPOINT c").await?;
    assert!(c
        .simple_query("INSERT INTO dt_sp (id, v) VALUES (1, 'dup')")
        .await
        .is_err());
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "transaction is failed"
    );
    c.simple_query("ROLLBACK TO c").await?;
    c.simple_query("COMMIT").await?;
    let on_shards = per_shard(&cluster, "dt_sp").await?;
    assert_eq!(on_shards.iter().sum::<i64>(), 20, "{on_shards:?}");
    assert!(on_shards.iter().all(|&n| n > 0), "{on_shards:?}");
    assert_eq!(
        first(&c, "SELECT count(*) FROM dt_sp WHERE v = 'changed'").await?,
        "20"
    );
    Ok(())
}

/// The first value of the first row of a simple Query.
async fn first(client: &Client, sql: &str) -> anyhow::Result<String> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    anyhow::bail!("no row from {sql}")
}

/// Keys `from..=20`, one INSERT each (so both shards take part).
async fn insert_keys_from(client: &Client, table: &str, from: i64) -> anyhow::Result<()> {
    for id in from..=20 {
        client
            .simple_query(&format!(
                "INSERT INTO {table} (id, v) VALUES ({id}, 'v{id}')"
            ))
            .await?;
    }
    Ok(())
}

/// The rows of a simple Query, first column as text.
async fn column(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_without_the_key_run_on_every_shard() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dt_up")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE dt_up (id bigint PRIMARY KEY, v text)")
        .await?;
    insert_keys(&c, "dt_up").await?;

    // One command tag with the counts of both shards summed, every row changed.
    assert_eq!(tags(&c, "UPDATE dt_up SET v = 'x'").await?, vec![20]);
    for node in PRIMARIES {
        let left = on_shard(&cluster, node, "SELECT count(*) FROM dt_up WHERE v <> 'x'").await?;
        assert_eq!(left, 0, "{node}");
    }
    let counts = per_shard(&cluster, "dt_up").await?;
    assert!(
        counts.iter().all(|&n| n > 0),
        "both shards took part: {counts:?}"
    );

    // RETURNING rows from every shard, concatenated.
    let mut gone = column(&c, "DELETE FROM dt_up WHERE id > 10 RETURNING id").await?;
    gone.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    let want: Vec<String> = (11..=20).map(|i| i.to_string()).collect();
    assert_eq!(gone, want);
    assert_eq!(per_shard(&cluster, "dt_up").await?.iter().sum::<i64>(), 10);

    // A failure on one shard leaves every shard unchanged.
    let e = c
        .simple_query("UPDATE dt_up SET v = (10 / (id - 3))::text")
        .await
        .err()
        .and_then(|e| e.code().cloned());
    assert_eq!(e, Some(tokio_postgres::error::SqlState::DIVISION_BY_ZERO));
    assert_eq!(
        column(&c, "SELECT count(*) FROM dt_up WHERE v = 'x'").await?,
        vec!["10".to_string()]
    );
    per_shard(&cluster, "dt_up").await?;

    // Inside a transaction block: every shard joins it; ROLLBACK undoes all of it,
    // COMMIT applies all of it.
    c.simple_query("BEGIN").await?;
    assert_eq!(tags(&c, "UPDATE dt_up SET v = 'y'").await?, vec![10]);
    assert_eq!(
        column(&c, "SELECT v FROM dt_up WHERE id = 1").await?,
        vec!["y"]
    );
    c.simple_query("ROLLBACK").await?;
    assert_eq!(
        tags(&c, "SELECT 1 FROM dt_up WHERE v = 'x'").await?,
        vec![10]
    );
    c.simple_query("BEGIN").await?;
    c.simple_query("INSERT INTO dt_up (id, v) VALUES (50, 'x')")
        .await?;
    assert_eq!(tags(&c, "DELETE FROM dt_up WHERE v = 'x'").await?, vec![11]);
    c.simple_query("COMMIT").await?;
    assert_eq!(per_shard(&cluster, "dt_up").await?, vec![0, 0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_table_writes_land_on_every_shard() -> anyhow::Result<()> {
    let reference = TableConfig {
        name: "dt_ref".into(),
        shard_key: None,
        key_type: None,
        kind: Some("reference".into()),
        colocate_with: None,
    };
    let cluster = two_shards(vec![distributed("dt_kv2"), reference]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE dt_ref (id int PRIMARY KEY, name text)")
        .await?;

    // One shard's answer: INSERT 0 3, not 6.
    let inserted = tags(&c, "INSERT INTO dt_ref VALUES (1, 'a'), (2, 'b'), (3, 'c')").await?;
    assert_eq!(inserted, vec![3]);
    assert_eq!(per_shard(&cluster, "dt_ref").await?, vec![3, 3]);
    let renamed = column(
        &c,
        "UPDATE dt_ref SET name = 'z' WHERE id = 2 RETURNING name",
    )
    .await?;
    assert_eq!(renamed, vec!["z".to_string()]);
    for node in PRIMARIES {
        let z = on_shard(
            &cluster,
            node,
            "SELECT count(*) FROM dt_ref WHERE name = 'z'",
        )
        .await?;
        assert_eq!(z, 1, "{node}");
    }

    // A duplicate key fails on the first shard: nothing changes anywhere.
    let e = c
        .simple_query("INSERT INTO dt_ref VALUES (4, 'd'), (1, 'dup')")
        .await
        .err()
        .and_then(|e| e.code().cloned());
    assert_eq!(e, Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    assert_eq!(per_shard(&cluster, "dt_ref").await?, vec![3, 3]);
    assert_eq!(tags(&c, "DELETE FROM dt_ref").await?, vec![3]);
    assert_eq!(per_shard(&cluster, "dt_ref").await?, vec![0, 0]);

    // Inside a transaction block, with distributed rows (pgbench's shape).
    c.simple_query("CREATE TABLE dt_kv2 (id bigint PRIMARY KEY, v text)")
        .await?;
    c.simple_query("BEGIN").await?;
    insert_keys(&c, "dt_kv2").await?;
    assert_eq!(
        tags(&c, "INSERT INTO dt_ref VALUES (9, 'n')").await?,
        vec![1]
    );
    c.simple_query("COMMIT").await?;
    assert_eq!(per_shard(&cluster, "dt_ref").await?, vec![1, 1]);
    assert_eq!(per_shard(&cluster, "dt_kv2").await?.iter().sum::<i64>(), 20);
    Ok(())
}

/// `SHOW POOLS` as (shard, column) → value, for the shard primaries' pools.
async fn pool_column(admin: &Client, column: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut header = Vec::new();
    let mut out = Vec::new();
    for m in admin.simple_query("SHOW POOLS").await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                header = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let get = |name: &str| {
                    header
                        .iter()
                        .position(|h| h == name)
                        .and_then(|i| r.get(i))
                        .unwrap_or("")
                        .to_string()
                };
                out.push((get("shard"), get(column).parse()?));
            }
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

/// Two sessions each holding the only pooled backend of one shard (pool_size 1) join
/// each other's shard over the pool's cap. The connections they hand back stay in the
/// pool (up to pool_size × shards): later rounds open no connection. Closing them
/// made every spanning transaction under full pools connect anew, which is what
/// serialized TPC-B at 32 clients (bench/RESULTS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_the_pool_cap_are_kept_for_the_next_transaction() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("dt_cap")]).await?;
    let router = TestRouter::start_with(
        &cluster,
        pgshard_catalog::config::RouterConfig {
            pool_size: 1,
            ..cluster.config().router.clone()
        },
    )
    .await?;
    let setup = router.connect().await?;
    setup
        .simple_query("CREATE TABLE dt_cap (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0)")
        .await?;
    for id in 1..=20 {
        setup
            .simple_query(&format!("INSERT INTO dt_cap (id) VALUES ({id})"))
            .await?;
    }
    drop(setup);
    // Two keys on each shard.
    let mut keys = Vec::new();
    for node in PRIMARIES {
        let c = cluster.connect_node(node).await?;
        let rows = c
            .query("SELECT id FROM dt_cap ORDER BY id LIMIT 2", &[])
            .await?;
        anyhow::ensure!(rows.len() == 2, "two keys on {node}");
        keys.push((rows[0].get::<_, i64>(0), rows[1].get::<_, i64>(0)));
    }
    let ((a1, b1), (a2, b2)) = (keys[0], keys[1]);
    let admin = router.connect_admin().await?;
    let (x, y) = (router.connect().await?, router.connect().await?);
    let mut opened_after_first = Vec::new();
    let over_cap_before = pool_column(&admin, "over_cap").await?;
    for round in 0..3 {
        let upd = |id: i64| format!("UPDATE dt_cap SET v = v + 1 WHERE id = {id}");
        x.simple_query("BEGIN").await?;
        x.simple_query(&upd(a1)).await?; // shard 1's only permit
        y.simple_query("BEGIN").await?;
        y.simple_query(&upd(a2)).await?; // shard 2's only permit
        x.simple_query(&upd(b2)).await?; // shard 2 over the cap
        y.simple_query(&upd(b1)).await?; // shard 1 over the cap
        x.simple_query("COMMIT").await?;
        y.simple_query("COMMIT").await?;
        if round == 0 {
            opened_after_first = pool_column(&admin, "opened").await?;
        }
    }
    let opened = pool_column(&admin, "opened").await?;
    assert_eq!(
        opened, opened_after_first,
        "no connection opened after the first round"
    );
    assert!(
        opened.iter().all(|(_, n)| *n <= 2),
        "within pool_size × shards: {opened:?}"
    );
    let over_cap = pool_column(&admin, "over_cap").await?;
    for ((shard, before), (_, after)) in over_cap_before.iter().zip(&over_cap) {
        assert!(
            after - before >= 3,
            "shard {shard}: a checkout over the cap in every round ({before} → {after})"
        );
    }
    let c = router.connect().await?;
    let total: i64 = c
        .query_one("SELECT sum(v)::int8 FROM dt_cap", &[])
        .await?
        .get(0);
    assert_eq!(total, 12, "every update committed");
    let prepared = cluster
        .value_on_each::<i64>(&PRIMARIES, "SELECT count(*) FROM pg_prepared_xacts")
        .await?;
    assert_eq!(prepared, vec![0, 0]);
    Ok(())
}

/// A multi-statement Query that runs on every shard and leaves a transaction block
/// open (`BEGIN; TRUNCATE t`) is refused with 0A000 and changes nothing. It used to be
/// answered BEGIN and TRUNCATE TABLE while each shard's block was rolled back when its
/// backend was discarded, the session outside any transaction (so a later COMMIT
/// "succeeded" and the rows were still there). The refusal leaves the client in a failed
/// transaction, as an error in `BEGIN; …` does in PostgreSQL. With its COMMIT in the
/// same Query it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_query_leaving_a_block_open_is_refused() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("t"), distributed("x")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let client = router.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v int)")
        .await?;
    client
        .batch_execute("INSERT INTO t (id, v) VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        .await?;
    let err = client
        .batch_execute("BEGIN; TRUNCATE t")
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(
        db.message().contains("leaves a transaction block open"),
        "{db:?}"
    );
    // As after PostgreSQL's own error in `BEGIN; …`: a failed transaction until
    // ROLLBACK; then nothing is truncated.
    let err = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect_err("in a failed transaction");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "25P02", "{db:?}");
    client.batch_execute("ROLLBACK").await?;
    let count = client.query_one("SELECT count(*) FROM t", &[]).await?;
    assert_eq!(count.get::<_, i64>(0), 4);
    // The same after BEGIN on its own and a statement the router refuses, whatever
    // protocol the next statement comes by: it used to open a transaction on a shard
    // and run, and COMMIT committed it where PostgreSQL would have rolled back.
    client
        .batch_execute("BEGIN; CREATE TABLE IF NOT EXISTS x (id bigint, v int); COMMIT")
        .await?;
    client.batch_execute("BEGIN").await?;
    let err = client
        .query("SELECT t.id FROM t JOIN x ON t.v = x.v FOR UPDATE", &[])
        .await
        .expect_err("refused: a locking clause on a collected join");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("0A000"),
        "{err:?}"
    );
    for _ in 0..2 {
        let err = client
            .execute("INSERT INTO t (id, v) VALUES (6, 6)", &[])
            .await
            .expect_err("in a failed transaction");
        assert_eq!(
            err.as_db_error().map(|d| d.code().code()),
            Some("25P02"),
            "{err:?}"
        );
    }
    client.batch_execute("COMMIT").await?;
    let count = client.query_one("SELECT count(*) FROM t", &[]).await?;
    assert_eq!(count.get::<_, i64>(0), 4);
    // The whole block in one Query runs.
    client.batch_execute("BEGIN; TRUNCATE t; COMMIT").await?;
    assert_eq!(per_shard(&cluster, "t").await?, vec![0, 0]);
    Ok(())
}

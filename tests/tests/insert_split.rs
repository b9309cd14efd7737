//! INSERTs into distributed tables that span shards or name no columns (SPEC §5 rule
//! 1), end to end on a 2-shard cluster through a router with its catalog connection
//! (two-phase commit on): a multi-row INSERT is split by shard key and runs atomically,
//! inside or outside a transaction block; an INSERT without a column list is routed by
//! the table's column order, looked up on a shard each time.

use pgshard_catalog::config::TableConfig;
use pgshard_catalog::{KeyValue, ShardId};
use pgshard_tests::{two_shards, TestCluster, TestRouter};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

fn distributed(name: &str) -> TableConfig {
    pgshard_tests::distributed(name, "id", "bigint")
}

/// The shard of a bigint key, and its primary's name.
fn shard_of(cluster: &TestCluster, id: i64) -> ShardId {
    cluster
        .catalog()
        .shard_of(&KeyValue::Int(id))
        .expect("every bucket has an owner")
}

/// The ids of `table` on each shard's primary (sorted), checking that no prepared
/// transaction is left there.
async fn ids_per_shard(
    cluster: &TestCluster,
    table: &str,
) -> anyhow::Result<Vec<(ShardId, Vec<i64>)>> {
    let mut out = Vec::new();
    for shard in cluster.catalog().shard_ids() {
        let node = cluster
            .catalog()
            .primary(shard)
            .map(|n| n.name.clone())
            .expect("a primary");
        let c = cluster.connect_node(&node).await?;
        let prepared: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(prepared, 0, "prepared transactions left on {node}");
        let ids: Vec<i64> = c
            .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.push((shard, ids));
    }
    Ok(out)
}

/// Checks that exactly `ids` are stored, each on its key's shard.
async fn assert_placed(cluster: &TestCluster, table: &str, ids: &[i64]) -> anyhow::Result<()> {
    for (shard, got) in ids_per_shard(cluster, table).await? {
        let mut want: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|&id| shard_of(cluster, id) == shard)
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "{table} on {shard}");
    }
    Ok(())
}

/// Command tags and data rows (first column) of a simple Query.
async fn run(client: &Client, sql: &str) -> anyhow::Result<(Vec<u64>, Vec<String>)> {
    let mut tags = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::CommandComplete(n) => tags.push(n),
            SimpleQueryMessage::Row(r) => rows.push(r.get(0).unwrap_or("NULL").to_owned()),
            _ => {}
        }
    }
    Ok((tags, rows))
}

async fn code_of(client: &Client, sql: &str) -> Option<SqlState> {
    client
        .simple_query(sql)
        .await
        .err()
        .and_then(|e| e.code().cloned())
}

fn values(ids: impl IntoIterator<Item = i64>) -> String {
    ids.into_iter()
        .map(|id| format!("({id}, 'v{id}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_insert_is_split_and_atomic() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("is_kv")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE is_kv (id bigint PRIMARY KEY, v text)")
        .await?;
    let first: Vec<i64> = (1..=10).collect();
    assert!(
        first
            .iter()
            .any(|&i| shard_of(&cluster, i) != shard_of(&cluster, 1)),
        "keys 1..10 span both shards"
    );

    // Outside a transaction block: one tag with the total, each row on its shard.
    let (tags, _) = run(
        &c,
        &format!("INSERT INTO is_kv (id, v) VALUES {}", values(1..=10)),
    )
    .await?;
    assert_eq!(tags, vec![10]);
    assert_placed(&cluster, "is_kv", &first).await?;

    // RETURNING: every shard's rows (compared as a set: the order is per shard).
    let (tags, mut rows) = run(
        &c,
        &format!("INSERT INTO is_kv (v, id) VALUES {} RETURNING id", {
            (11..=16)
                .map(|id| format!("('v{id}', {id})"))
                .collect::<Vec<_>>()
                .join(", ")
        }),
    )
    .await?;
    assert_eq!(tags, vec![6]);
    rows.sort_by_key(|r| r.parse::<i64>().unwrap_or(0));
    assert_eq!(rows, (11..=16).map(|i| i.to_string()).collect::<Vec<_>>());
    let mut all: Vec<i64> = (1..=16).collect();
    assert_placed(&cluster, "is_kv", &all).await?;

    // ON CONFLICT DO NOTHING counts only the new rows; DO UPDATE updates on each shard.
    let (tags, _) = run(
        &c,
        &format!(
            "INSERT INTO is_kv (id, v) VALUES {} ON CONFLICT DO NOTHING",
            values(15..=20)
        ),
    )
    .await?;
    assert_eq!(tags, vec![4]);
    all.extend(17..=20);
    let (tags, mut rows) = run(
        &c,
        "INSERT INTO is_kv AS k (id, v) VALUES (1, 'x'), (2, 'x'), (3, 'x'), (4, 'x') ON CONFLICT (id) DO UPDATE SET v = k.v || excluded.v RETURNING v",
    )
    .await?;
    assert_eq!(tags, vec![4]);
    rows.sort();
    assert_eq!(rows, vec!["v1x", "v2x", "v3x", "v4x"]);

    // A duplicate key on one shard rolls back the rows of the other too.
    let dup_shard = shard_of(&cluster, 5);
    let other = (100..)
        .find(|&i| shard_of(&cluster, i) != dup_shard)
        .unwrap_or(100);
    assert_eq!(
        code_of(
            &c,
            &format!("INSERT INTO is_kv (id, v) VALUES ({other}, 'n'), (5, 'dup')")
        )
        .await,
        Some(SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(
        code_of(
            &c,
            &format!("INSERT INTO is_kv (id, v) VALUES (5, 'dup'), ({other}, 'n')")
        )
        .await,
        Some(SqlState::UNIQUE_VIOLATION)
    );
    assert_placed(&cluster, "is_kv", &all).await?;

    // A NULL key is refused as for one row, before any shard runs anything.
    assert_eq!(
        code_of(
            &c,
            "INSERT INTO is_kv (id, v) VALUES (30, 'a'), (NULL, 'b')"
        )
        .await,
        Some(SqlState::NOT_NULL_VIOLATION)
    );

    // Inside a transaction block: every shard joins; ROLLBACK undoes everything.
    c.simple_query("BEGIN").await?;
    let (tags, _) = run(
        &c,
        &format!("INSERT INTO is_kv (id, v) VALUES {}", values(31..=40)),
    )
    .await?;
    assert_eq!(tags, vec![10]);
    // (Point reads: a multi-shard read inside a transaction block is refused.)
    for id in 31..=40 {
        let (_, seen) = run(&c, &format!("SELECT v FROM is_kv WHERE id = {id}")).await?;
        assert_eq!(
            seen,
            vec![format!("v{id}")],
            "the transaction sees its own rows"
        );
    }
    c.simple_query("ROLLBACK").await?;
    assert_placed(&cluster, "is_kv", &all).await?;

    // … and COMMIT commits on both (two-phase).
    c.simple_query("BEGIN").await?;
    run(
        &c,
        &format!("INSERT INTO is_kv (id, v) VALUES {}", values(31..=40)),
    )
    .await?;
    run(&c, "INSERT INTO is_kv (id, v) VALUES (41, 'a')").await?;
    c.simple_query("COMMIT").await?;
    all.extend(31..=41);
    assert_placed(&cluster, "is_kv", &all).await?;

    // A duplicate inside the block fails the transaction; COMMIT rolls it back.
    c.simple_query("BEGIN").await?;
    run(
        &c,
        &format!("INSERT INTO is_kv (id, v) VALUES {}", values(51..=56)),
    )
    .await?;
    assert_eq!(
        code_of(
            &c,
            &format!("INSERT INTO is_kv (id, v) VALUES ({other}, 'n'), (5, 'dup')")
        )
        .await,
        Some(SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(
        code_of(&c, "SELECT 1").await,
        Some(SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    run(&c, "COMMIT").await?;
    assert_placed(&cluster, "is_kv", &all).await?;

    // Through the extended protocol too (Parse/Bind/Execute): split the same way.
    let n = c
        .execute(
            "INSERT INTO is_kv (id, v) VALUES (60, 'a'), (61, 'b'), (62, 'c'), (63, 'd')",
            &[],
        )
        .await?;
    assert_eq!(n, 4);
    all.extend(60..=63);
    assert_placed(&cluster, "is_kv", &all).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_without_column_list_follows_the_column_order() -> anyhow::Result<()> {
    let cluster = two_shards(vec![distributed("is_nc")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    // The key is not the first column.
    c.simple_query("CREATE TABLE is_nc (a text, id bigint PRIMARY KEY, b int DEFAULT 7)")
        .await?;
    let (tags, _) = run(&c, "INSERT INTO is_nc VALUES ('x', 1, 2)").await?;
    assert_eq!(tags, vec![1]);
    // Trailing columns defaulted; several rows on several shards.
    let (tags, rows) = run(
        &c,
        "INSERT INTO is_nc VALUES ('x', 2), ('y', 3), ('z', 4), ('w', 5), ('v', 6) RETURNING b",
    )
    .await?;
    assert_eq!(tags, vec![5]);
    assert_eq!(rows, vec!["7"; 5]);
    assert_placed(&cluster, "is_nc", &[1, 2, 3, 4, 5, 6]).await?;

    // The key among the defaulted trailing columns, or DEFAULT VALUES: its default
    // would decide the shard.
    assert_eq!(
        code_of(&c, "INSERT INTO is_nc VALUES ('x')").await,
        Some(SqlState::FEATURE_NOT_SUPPORTED)
    );
    let msg = c
        .simple_query("INSERT INTO is_nc DEFAULT VALUES")
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.message().to_owned()))
        .unwrap_or_default();
    assert!(msg.contains("shard key column id"), "{msg}");

    // INSERT … SELECT, the first bulk load most people try: refused, saying so, with a
    // HINT naming what works (both protocols).
    for extended in [false, true] {
        let sql = "INSERT INTO is_nc SELECT 'g', g FROM generate_series(100, 110) g";
        let e = if extended {
            c.execute(sql, &[]).await.expect_err("refused")
        } else {
            c.simple_query(sql).await.expect_err("refused")
        };
        let db = e.as_db_error().expect("an ErrorResponse");
        assert_eq!(db.code(), &SqlState::FEATURE_NOT_SUPPORTED);
        assert_eq!(
            db.message(),
            "INSERT … SELECT into distributed table is_nc is not supported"
        );
        let hint = db.hint().unwrap_or_default();
        assert!(hint.contains("COPY is_nc FROM STDIN"), "{hint}");
    }

    // An ALTER TABLE moves the key: the next INSERT sees the new order.
    c.simple_query("ALTER TABLE is_nc DROP COLUMN a").await?;
    run(&c, "INSERT INTO is_nc VALUES (7, 1), (8, 1)").await?;
    assert_placed(&cluster, "is_nc", &[1, 2, 3, 4, 5, 6, 7, 8]).await?;

    // Inside a transaction block the transaction's own DDL counts.
    c.simple_query("BEGIN").await?;
    run(&c, "INSERT INTO is_nc VALUES (9)").await?;
    c.simple_query("ALTER TABLE is_nc ADD COLUMN c text")
        .await?;
    run(&c, "INSERT INTO is_nc VALUES (10, 1, 'c'), (11, 2, 'c')").await?;
    c.simple_query("COMMIT").await?;
    assert_placed(&cluster, "is_nc", &(1..=11).collect::<Vec<_>>()).await?;

    // Through the extended protocol, a parameter key routes at Bind.
    let n = c
        .execute("INSERT INTO is_nc VALUES ($1, 5, 'p')", &[&12i64])
        .await?;
    assert_eq!(n, 1);
    let n = c
        .execute("INSERT INTO is_nc VALUES ($1, 5, 'p')", &[&13i64])
        .await?;
    assert_eq!(n, 1);
    assert_placed(&cluster, "is_nc", &(1..=13).collect::<Vec<_>>()).await?;
    // A NULL key parameter: PostgreSQL's not-null error.
    let e = c
        .execute("INSERT INTO is_nc VALUES ($1, 5, 'p')", &[&None::<i64>])
        .await
        .err()
        .and_then(|e| e.code().cloned());
    assert_eq!(e, Some(SqlState::NOT_NULL_VIOLATION));
    Ok(())
}

//! Extended-protocol parity (SPEC §6): what the router does for a simple Query it does
//! for Parse/Bind/Execute too, as drivers send it (tokio-postgres: Parse/Describe/Sync
//! then Bind/Execute/Sync, binary results), on a 2-shard cluster: the table-placement
//! functions, statements on every shard (DDL, TRUNCATE) in and out of a transaction
//! block, `pgshard.shard`, with the same errors as PostgreSQL.

use pgshard_tests::{two_shards, TestCluster, TestRouter};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];

async fn per_shard(cluster: &TestCluster, sql: &str) -> anyhow::Result<Vec<i64>> {
    cluster.value_on_each(&PRIMARIES, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_functions_and_every_shard_statements() -> anyhow::Result<()> {
    let cluster = two_shards(vec![]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.execute("CREATE TABLE p1 (id bigint PRIMARY KEY, v int)", &[])
        .await?;
    for id in 1..=20i64 {
        c.execute("INSERT INTO p1 (id, v) VALUES ($1, $2)", &[&id, &1i32])
            .await?;
    }
    // pgjdbc's stmt.execute("SELECT create_distributed_table(…)"): one void row.
    let n = c
        .execute("SELECT create_distributed_table('p1', 'id')", &[])
        .await?;
    assert_eq!(n, 1);
    let rows = per_shard(&cluster, "SELECT count(*) FROM p1").await?;
    assert_eq!(rows.iter().sum::<i64>(), 20);
    assert!(rows.iter().all(|&n| n > 0), "{rows:?}");
    let e = c
        .execute("SELECT create_distributed_table('p1', 'id')", &[])
        .await
        .expect_err("already distributed");
    assert!(e.code().is_some(), "{e}");

    // DDL on every shard.
    c.execute("CREATE INDEX p1_v ON p1 (v)", &[]).await?;
    let idx = per_shard(
        &cluster,
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'p1_v'",
    )
    .await?;
    assert_eq!(idx, vec![1, 1]);
    let e = c
        .execute("CREATE INDEX p1_v ON p1 (v)", &[])
        .await
        .expect_err("exists");
    assert_eq!(e.code().map(|c| c.code()), Some("42P07"), "{e}");
    // The session goes on; a parameterized read after the error.
    let v: i32 = c
        .query_one("SELECT v FROM p1 WHERE id = $1", &[&3i64])
        .await?
        .get(0);
    assert_eq!(v, 1);

    // In a transaction block: every shard joins, the rollback undoes it everywhere.
    c.batch_execute("BEGIN").await?;
    c.execute("ALTER TABLE p1 ADD COLUMN x int", &[]).await?;
    c.execute("UPDATE p1 SET x = $1 WHERE id = $2", &[&5i32, &4i64])
        .await?;
    c.batch_execute("ROLLBACK").await?;
    let cols = per_shard(
        &cluster,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'p1' AND column_name = 'x'",
    )
    .await?;
    assert_eq!(cols, vec![0, 0]);
    c.batch_execute("BEGIN").await?;
    c.execute("ALTER TABLE p1 ADD COLUMN w int", &[]).await?;
    c.batch_execute("COMMIT").await?;
    let cols = per_shard(
        &cluster,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'p1' AND column_name = 'w'",
    )
    .await?;
    assert_eq!(cols, vec![1, 1]);

    // TRUNCATE on every shard.
    c.execute("TRUNCATE p1", &[]).await?;
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM p1").await?,
        vec![0, 0]
    );

    // pgshard.shard: set, shown (text row in binary format), reset.
    let shown: String = c.query_one("SHOW pgshard.shard", &[]).await?.get(0);
    assert_eq!(shown, "none");
    c.execute("SET pgshard.shard = 2", &[]).await?;
    let shown: String = c.query_one("SHOW pgshard.shard", &[]).await?.get(0);
    assert_eq!(shown, "2");
    c.execute("RESET pgshard.shard", &[]).await?;
    let shown: String = c.query_one("SHOW pgshard.shard", &[]).await?.get(0);
    assert_eq!(shown, "none");
    // DISCARD ALL resets it too; refused inside a transaction block, as PostgreSQL does.
    c.execute("SET pgshard.shard = 2", &[]).await?;
    c.execute("DISCARD ALL", &[]).await?;
    let shown: String = c.query_one("SHOW pgshard.shard", &[]).await?.get(0);
    assert_eq!(shown, "none");
    c.batch_execute("BEGIN").await?;
    let e = c
        .execute("DISCARD ALL", &[])
        .await
        .expect_err("in a transaction");
    assert_eq!(e.code().map(|c| c.code()), Some("25001"), "{e}");
    c.batch_execute("ROLLBACK").await?;

    // A reference table through the function, then DROP on every shard.
    c.execute("CREATE TABLE r1 (k int PRIMARY KEY)", &[])
        .await?;
    c.execute("SELECT create_reference_table('r1')", &[])
        .await?;
    c.execute("INSERT INTO r1 (k) VALUES ($1)", &[&7i32])
        .await?;
    assert_eq!(
        per_shard(&cluster, "SELECT count(*) FROM r1").await?,
        vec![1, 1]
    );
    c.execute("DROP TABLE r1", &[]).await?;
    let left = per_shard(
        &cluster,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'r1'",
    )
    .await?;
    assert_eq!(left, vec![0, 0]);
    Ok(())
}

/// node-postgres' `INSERT … VALUES ($1, $2, 1), ($3, $4, 1)` and psycopg's
/// `INSERT INTO t VALUES (%s, %s)` on a distributed table: rows routed by their
/// parameters, split across shards in one distributed transaction, RETURNING rows in
/// binary; constant keys with parameter values split too; a NULL key refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_routed_by_parameters() -> anyhow::Result<()> {
    let cluster = two_shards(vec![pgshard_tests::distributed("pi", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE pi (id bigint PRIMARY KEY, v text, n int NOT NULL)")
        .await?;
    // Many rows: both shards get some.
    let mut sql = String::from("INSERT INTO pi (id, v, n) VALUES ");
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync>> = Vec::new();
    for i in 0..20i64 {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, 1)", 2 * i + 1, 2 * i + 2));
        params.push(Box::new(i + 1));
        params.push(Box::new(format!("v{}", i + 1)));
    }
    sql.push_str(" RETURNING id, v");
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as _).collect();
    let rows = c.query(&sql, &refs).await?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>(1) == format!("v{}", r.get::<_, i64>(0))));
    let per = per_shard(&cluster, "SELECT count(*) FROM pi").await?;
    assert_eq!(per.iter().sum::<i64>(), 20);
    assert!(per.iter().all(|&n| n > 0), "{per:?}");

    // All rows on one shard: sent there as written.
    let n = c
        .execute(
            "INSERT INTO pi (id, v, n) VALUES ($1, $2, 1), ($1 + 1000, $2, 2)",
            &[&100i64, &"x"],
        )
        .await;
    // `$1 + 1000` is no constant or parameter: PostgreSQL computes the rows on one
    // shard (staged, with the parameters bound), each goes to its key's shard.
    assert_eq!(n?, 2);
    let v: String = c
        .query_one("SELECT v FROM pi WHERE id = $1", &[&1100i64])
        .await?
        .get(0);
    assert_eq!(v, "x");
    assert_eq!(
        c.execute("DELETE FROM pi WHERE id IN (100, 1100)", &[])
            .await?,
        2
    );
    let n = c
        .execute(
            "INSERT INTO pi (id, v, n) VALUES ($1, $2, 1), ($1, $2, 2) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            &[&100i64, &"x"],
        )
        .await;
    // PostgreSQL's own error (a row affected twice) from the one shard.
    assert_eq!(
        n.expect_err("twice").code().map(|c| c.code()),
        Some("21000")
    );

    // Constant keys, parameter values, on several shards.
    let n = c
        .execute(
            "INSERT INTO pi (id, v, n) VALUES (101, $1, 1), (102, $2, 1), (103, $3, 1), (104, $4, 1)",
            &[&"a", &"b", &"c", &"d"],
        )
        .await?;
    assert_eq!(n, 4);
    let got: String = c
        .query_one("SELECT v FROM pi WHERE id = $1", &[&103i64])
        .await?
        .get(0);
    assert_eq!(got, "c");

    // A NULL key: 23502, nothing written; a failing row: nothing written anywhere.
    let e = c
        .execute(
            "INSERT INTO pi (id, v, n) VALUES ($1, 'a', 1), ($2, 'b', 1)",
            &[&200i64, &None::<i64>],
        )
        .await
        .expect_err("null key");
    assert_eq!(e.code().map(|c| c.code()), Some("23502"), "{e}");
    let e = c
        .execute(
            "INSERT INTO pi (id, v, n) VALUES ($1, 'a', 1), ($2, 'b', 1), ($3, 'c', $4)",
            &[&300i64, &301i64, &302i64, &None::<i32>],
        )
        .await
        .expect_err("not null");
    assert_eq!(e.code().map(|c| c.code()), Some("23502"), "{e}");
    let total: i64 = c.query_one("SELECT count(*) FROM pi", &[]).await?.get(0);
    assert_eq!(total, 24);

    // Without a column list (psycopg's `INSERT INTO t VALUES (%s, %s, %s)`).
    for id in 400..410i64 {
        c.execute("INSERT INTO pi VALUES ($1, $2, $3)", &[&id, &"z", &7i32])
            .await?;
    }
    let n = c
        .execute(
            "INSERT INTO pi VALUES ($1, $2, $3), ($4, $5, $6)",
            &[&500i64, &"p", &1i32, &501i64, &"q", &2i32],
        )
        .await?;
    assert_eq!(n, 2);
    let total: i64 = c
        .query_one("SELECT count(*) FROM pi WHERE id >= $1", &[&400i64])
        .await?
        .get(0);
    assert_eq!(total, 12);

    // SQL-level PREPARE / EXECUTE / DEALLOCATE as Parse/Bind/Execute (JDBC's
    // stmt.execute("EXECUTE …")), rows in binary.
    c.execute(
        "PREPARE getv (bigint) AS SELECT v FROM pi WHERE id = $1",
        &[],
    )
    .await?;
    let v: String = c.query_one("EXECUTE getv(103)", &[]).await?.get(0);
    assert_eq!(v, "c");
    let v: String = c.query_one("EXECUTE getv(400)", &[]).await?.get(0);
    assert_eq!(v, "z");
    let e = c
        .execute("PREPARE getv AS SELECT 1", &[])
        .await
        .expect_err("duplicate");
    assert_eq!(e.code().map(|c| c.code()), Some("42P05"), "{e}");
    c.execute("DEALLOCATE getv", &[]).await?;
    let e = c
        .query("EXECUTE getv(103)", &[])
        .await
        .expect_err("deallocated");
    assert_eq!(e.code().map(|c| c.code()), Some("26000"), "{e}");
    // A PREPARE the shard refuses is not recorded.
    let e = c
        .execute("PREPARE bad AS SELECT nosuch FROM pi WHERE id = 1", &[])
        .await
        .expect_err("bad column");
    assert_eq!(e.code().map(|c| c.code()), Some("42703"), "{e}");
    let e = c
        .execute("DEALLOCATE bad", &[])
        .await
        .expect_err("never prepared");
    assert_eq!(e.code().map(|c| c.code()), Some("26000"), "{e}");
    Ok(())
}

/// The failures drivers reported, through the drivers: `tests/python/parity.py` runs
/// psycopg 3 in binary mode and asyncpg against the router (a missing module fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_binary_and_asyncpg() -> anyhow::Result<()> {
    let cluster = two_shards(vec![pgshard_tests::distributed(
        "par_items",
        "id",
        "bigint",
    )])
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let script = format!("{}/python/parity.py", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(router.port().to_string())
        .kill_on_drop(true)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "parity script failed:\n{text}"
    );
    let per = per_shard(&cluster, "SELECT count(*) FROM par_items").await?;
    assert!(per.iter().all(|&n| n > 0), "{per:?}");
    assert_eq!(per.iter().sum::<i64>(), 34);
    Ok(())
}

/// asyncpg's and node-postgres' message flows on a multi-shard aggregate with a
/// parameter: the statement prepared with Parse/Describe/Flush (a backend answers and
/// stays attached, unsynced), then Bind, Describe of the portal, Execute (with a row
/// limit, as asyncpg's fetchval) and Sync. The portal the router holds survives the
/// Sync of its own that settles the backend first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_portal_after_a_flushed_prepare() -> anyhow::Result<()> {
    use pgshard_tests::wire::{message, Outcome, WireClient};
    let cluster = two_shards(vec![pgshard_tests::distributed("fl", "id", "bigint")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE fl (id bigint PRIMARY KEY, qty int)")
        .await?;
    for id in 1..=30i64 {
        c.execute(
            "INSERT INTO fl (id, qty) VALUES ($1, $2)",
            &[&id, &((id % 3) as i32)],
        )
        .await?;
    }
    let mut w =
        WireClient::connect("127.0.0.1", router.port(), "postgres", "postgres", None).await?;
    let sql = b"SELECT qty, count(*) FROM fl WHERE id <= $1 GROUP BY qty ORDER BY qty";
    for (limit, stmt) in [(0u32, &b"s1\0"[..]), (1, b"s2\0")] {
        let mut m = message(b'P', &[stmt, sql, b"\0\x00\x01\x00\x00\x00\x17"]);
        m.extend(message(b'D', &[b"S", stmt]));
        m.extend(message(b'H', &[]));
        w.send_raw(&m).await?;
        assert_eq!(w.read_tags(3).await?, b"1tT".to_vec());
        // Bind: parameter 1 = '30' (text), results text.
        let mut m = message(
            b'B',
            &[b"\0", stmt, b"\x00\x00\x00\x01\x00\x00\x00\x0230\x00\x00"],
        );
        m.extend(message(b'D', &[b"P\0"]));
        m.extend(message(b'E', &[b"\0", &limit.to_be_bytes()]));
        m.extend(message(b'S', &[]));
        w.send_raw(&m).await?;
        let (out, _) = w.read_outcomes(false).await?;
        let rows = match out.as_slice() {
            [Outcome::Done { rows, .. }] => rows.clone(),
            other => panic!("limit {limit}: {other:?}"),
        };
        let want: Vec<Vec<Option<String>>> = if limit == 1 {
            vec![vec![Some("0".into()), Some("10".into())]]
        } else {
            (0..3)
                .map(|q| vec![Some(q.to_string()), Some("10".into())])
                .collect()
        };
        assert_eq!(rows, want, "limit {limit}");
    }
    Ok(())
}

/// The same unnamed Parse sent again (as pgbench -M extended and psycopg do) is parsed
/// again by the backend, as PostgreSQL would, even though the router reuses its plan:
/// a column added in between shows in the next result instead of PostgreSQL's
/// "cached plan must not change result type" from the backend's old statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_parsed_again_sees_a_new_column() -> anyhow::Result<()> {
    use pgshard_tests::wire::{Mode, Outcome, WireClient};
    let cluster = two_shards(vec![]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.batch_execute("CREATE TABLE rp (a int); INSERT INTO rp VALUES (1)")
        .await?;
    drop(c);
    let mut w =
        WireClient::connect("127.0.0.1", router.port(), "postgres", "postgres", None).await?;
    let columns = |out: &[Outcome]| match out {
        [Outcome::Done { columns, .. }] => columns.len(),
        other => panic!("{other:?}"),
    };
    for _ in 0..3 {
        let (out, _) = w.run("SELECT * FROM rp", Mode::ExtendedBinary).await?;
        assert_eq!(columns(&out), 1);
    }
    // Behind the router's back (its backend of the statement stays idle in the pool):
    // on the shard that holds the local table.
    let shard = cluster.catalog().local_shard;
    let node = cluster.primary_name(shard.0)?;
    cluster
        .connect_node(&node)
        .await?
        .batch_execute("ALTER TABLE rp ADD COLUMN b int DEFAULT 7")
        .await?;
    for _ in 0..2 {
        let (out, _) = w.run("SELECT * FROM rp", Mode::ExtendedBinary).await?;
        assert_eq!(columns(&out), 2, "{out:?}");
    }
    Ok(())
}

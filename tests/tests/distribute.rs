//! `create_distributed_table` / `create_reference_table` through the router (SPEC §4):
//! tables created through the router live on the local shard; declaring them copies
//! their definition to every shard and moves each row to its bucket's shard, atomically,
//! and every router follows the new catalog. tokio-postgres through two routers on a
//! 2-shard cluster.

use pgshard_catalog::{KeyValue, ShardId, TableKind};
use pgshard_tests::{TestCluster, TestClusterOptions, TestRouter};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

fn node(shard: ShardId) -> String {
    format!("shard{shard}-node1")
}

async fn scalar(c: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// A single value through the router (simple protocol: multi-shard reads need it).
async fn routed(c: &Client, sql: &str) -> anyhow::Result<i64> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or_default().parse()?);
        }
    }
    anyhow::bail!("{sql}: no row")
}

/// The function's answer: (column name, value, rows in the tag).
async fn call(c: &Client, sql: &str) -> anyhow::Result<(String, Option<String>, u64)> {
    let mut out = (String::new(), None, 0);
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::Row(r) => {
                out.0 = r.columns()[0].name().to_owned();
                out.1 = r.get(0).map(str::to_owned);
            }
            SimpleQueryMessage::CommandComplete(n) => out.2 = n,
            _ => {}
        }
    }
    Ok(out)
}

async fn refused(c: &Client, sql: &str) -> (Option<SqlState>, String) {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: accepted"),
        Err(e) => {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default();
            (e.code().cloned(), msg)
        }
    }
}

async fn wait_for_table(router: &TestRouter, table: &str) {
    let start = Instant::now();
    while router.catalog().table(table).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{table} never reached the router"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_distributed_through_the_router() -> anyhow::Result<()> {
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        ..Default::default()
    })
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let other = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    let local = router.catalog().local_shard;
    let shards = router.catalog().shard_ids();
    assert_eq!(shards.len(), 2);
    let remote = shards
        .iter()
        .copied()
        .find(|&s| s != local)
        .unwrap_or(local);
    let local_node = cluster.connect_node(&node(local)).await?;
    let remote_node = cluster.connect_node(&node(remote)).await?;

    c.simple_query(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'n',
                             qty int CHECK (qty >= 0), made date DEFAULT '2020-01-01');
         CREATE INDEX items_name ON items (name);
         INSERT INTO items (id, name, qty) SELECT g, 'item' || g, g % 7 FROM generate_series(1, 200) g;
         CREATE TABLE orders (item_id bigint, n int, PRIMARY KEY (item_id, n));
         INSERT INTO orders SELECT g, 1 FROM generate_series(1, 200) g;
         CREATE TABLE serials (id serial PRIMARY KEY, v text);
         INSERT INTO serials (v) SELECT 'v' FROM generate_series(1, 20);
         CREATE TABLE kinds (k int PRIMARY KEY, label text);
         INSERT INTO kinds SELECT g, 'k' || g FROM generate_series(1, 5) g;",
    )
    .await?;
    assert_eq!(
        scalar(&local_node, "SELECT count(*) FROM items").await?,
        200
    );
    assert_eq!(
        scalar(
            &remote_node,
            "SELECT count(*) FROM pg_class WHERE relname = 'items'"
        )
        .await?,
        0
    );

    // Distribute: Citus' answer, rows on their buckets' shards.
    let answer = call(&c, "SELECT create_distributed_table('items', 'id')").await?;
    assert_eq!(
        answer,
        (
            "create_distributed_table".to_string(),
            Some(String::new()),
            1
        )
    );
    let catalog = router.catalog();
    assert!(matches!(
        catalog.table("items").map(|t| &t.kind),
        Some(TableKind::Distributed { shard_key, .. }) if shard_key == "id"
    ));
    let mut total = 0;
    for (shard, conn) in [(local, &local_node), (remote, &remote_node)] {
        let ids: Vec<i64> = conn
            .query("SELECT id FROM items", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!ids.is_empty(), "shard {shard} got no rows");
        for id in &ids {
            assert_eq!(
                catalog.shard_of(&KeyValue::Int(*id)),
                Some(shard),
                "row {id}"
            );
        }
        total += ids.len();
        // The definition came along: primary key, index, check, defaults.
        assert_eq!(
            scalar(
                conn,
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'items'"
            )
            .await?,
            2
        );
        assert_eq!(
            scalar(conn, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'c'").await?,
            1
        );
        assert_eq!(
            scalar(conn, "SELECT count(*) FROM pg_prepared_xacts").await?,
            0
        );
    }
    assert_eq!(total, 200);

    // Reads and writes by key through this router and a second one.
    let row = c
        .simple_query("SELECT name FROM items WHERE id = 77")
        .await?;
    assert!(row
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("item77"))));
    assert_eq!(routed(&c, "SELECT count(*) FROM items").await?, 200);
    wait_for_table(&other, "items").await;
    let c2 = other.connect().await?;
    assert_eq!(routed(&c2, "SELECT count(*) FROM items").await?, 200);
    c2.simple_query("INSERT INTO items (id, qty) VALUES (1000, 1)")
        .await?;
    let home = if catalog.shard_of(&KeyValue::Int(1000)) == Some(local) {
        &local_node
    } else {
        &remote_node
    };
    assert_eq!(
        scalar(
            home,
            "SELECT count(*) FROM items WHERE id = 1000 AND name = 'n'"
        )
        .await?,
        1
    );
    let (code, _) = refused(&c, "INSERT INTO items (id, qty) VALUES (1, -1)").await;
    assert_eq!(code, Some(SqlState::CHECK_VIOLATION));

    // colocate_with: the same group, so joins on the key run shard-locally.
    call(
        &c,
        "SELECT create_distributed_table('orders', 'item_id', colocate_with => 'items')",
    )
    .await?;
    let catalog = router.catalog();
    let group = |t: &str| match catalog.table(t).map(|t| &t.kind) {
        Some(TableKind::Distributed { colocation, .. }) => colocation.clone(),
        other => panic!("{t}: {other:?}"),
    };
    assert_eq!(group("orders"), group("items"));
    assert_eq!(
        routed(
            &c,
            "SELECT count(*) FROM items i JOIN orders o ON o.item_id = i.id"
        )
        .await?,
        200
    );

    // A serial column: its sequence is created on every shard.
    call(&c, "SELECT create_distributed_table('serials', 'id')").await?;
    assert_eq!(
        scalar(
            &remote_node,
            "SELECT count(*) FROM pg_class WHERE relname = 'serials_id_seq'"
        )
        .await?,
        1
    );
    assert_eq!(routed(&c, "SELECT count(*) FROM serials").await?, 20);
    assert_eq!(
        scalar(&remote_node, "SELECT last_value FROM serials_id_seq").await?,
        20
    );

    // Reference table: a full copy on every shard.
    let answer = call(&c, "SELECT create_reference_table('kinds')").await?;
    assert_eq!(answer.0, "create_reference_table");
    for conn in [&local_node, &remote_node] {
        assert_eq!(scalar(conn, "SELECT count(*) FROM kinds").await?, 5);
    }
    c.simple_query("INSERT INTO kinds VALUES (6, 'k6')").await?;
    for conn in [&local_node, &remote_node] {
        assert_eq!(scalar(conn, "SELECT count(*) FROM kinds").await?, 6);
    }

    // Errors, each leaving the table as it was (local, on the local shard only).
    c.simple_query(
        "CREATE TABLE plain (id int, v text);
         INSERT INTO plain VALUES (1, 'a'), (NULL, 'b');
         CREATE TABLE floaty (x float8);
         CREATE TABLE uniq (id int, email text UNIQUE);
         CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent SELECT generate_series(1, 50);
         CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent);
         INSERT INTO child SELECT g, g FROM generate_series(1, 50) g;",
    )
    .await?;
    for (sql, want, text) in [
        (
            "SELECT create_distributed_table('nosuch', 'id')",
            SqlState::UNDEFINED_TABLE,
            "relation \"nosuch\" does not exist",
        ),
        (
            "SELECT create_distributed_table('plain', 'nocol')",
            SqlState::UNDEFINED_COLUMN,
            "column \"nocol\"",
        ),
        (
            "SELECT create_distributed_table('items', 'id')",
            SqlState::DUPLICATE_TABLE,
            "already distributed",
        ),
        (
            "SELECT create_reference_table('kinds')",
            SqlState::DUPLICATE_TABLE,
            "already distributed",
        ),
        (
            "SELECT create_distributed_table('floaty', 'x')",
            SqlState::FEATURE_NOT_SUPPORTED,
            "double precision",
        ),
        (
            "SELECT create_distributed_table('plain', 'id')",
            SqlState::NOT_NULL_VIOLATION,
            "contains null values",
        ),
        (
            "SELECT create_distributed_table('uniq', 'id')",
            SqlState::FEATURE_NOT_SUPPORTED,
            "does not include the shard key",
        ),
        (
            "SELECT create_distributed_table('plain', 'v', colocate_with => 'kinds')",
            SqlState::INVALID_PARAMETER_VALUE,
            "reference table",
        ),
        (
            "SELECT create_distributed_table('plain', 'v', colocate_with => 'items')",
            SqlState::INVALID_PARAMETER_VALUE,
            "types do not match",
        ),
    ] {
        let (code, msg) = refused(&c, sql).await;
        assert_eq!(code, Some(want), "{sql}: {msg}");
        assert!(msg.contains(text), "{sql}: {msg}");
    }
    // A shard fails half-way (the referenced table is local, so it is missing on the
    // other shard): everything is rolled back.
    let (code, msg) = refused(&c, "SELECT create_distributed_table('child', 'id')").await;
    assert_eq!(code, Some(SqlState::UNDEFINED_TABLE), "{msg}");
    assert_eq!(scalar(&local_node, "SELECT count(*) FROM child").await?, 50);
    c.simple_query("BEGIN").await?;
    let (code, msg) = refused(&c, "SELECT create_reference_table('plain')").await;
    assert_eq!(code, Some(SqlState::ACTIVE_SQL_TRANSACTION), "{msg}");
    c.simple_query("ROLLBACK").await?;
    for t in ["plain", "floaty", "uniq", "child"] {
        assert!(router.catalog().table(t).is_none(), "{t} declared");
        let sql = format!("SELECT count(*) FROM pg_class WHERE relname = '{t}'");
        assert_eq!(
            scalar(&remote_node, &sql).await?,
            0,
            "{t} created on shard {remote}"
        );
    }
    assert_eq!(routed(&c, "SELECT count(*) FROM plain").await?, 2);
    for conn in [&local_node, &remote_node] {
        assert_eq!(
            scalar(conn, "SELECT count(*) FROM pg_prepared_xacts").await?,
            0
        );
    }
    Ok(())
}

/// A table distributed with the function is forgotten once dropped (as Citus does), so
/// a schema script that drops, recreates and distributes it runs again, through both
/// protocols; a DROP rolled back, or one that failed, forgets nothing; a table declared
/// in the configuration stays declared by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tables_are_forgotten() -> anyhow::Result<()> {
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables: vec![pgshard_catalog::config::TableConfig {
            name: "configured".into(),
            shard_key: Some("id".into()),
            key_type: None,
            kind: None,
            colocate_with: None,
        }],
        ..Default::default()
    })
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    let rows: Vec<String> = (1..=100).map(|i| format!("({i}, 'v')")).collect();
    let insert = format!("INSERT INTO t VALUES {}", rows.join(", "));
    let script = [
        "DROP TABLE IF EXISTS t",
        "CREATE TABLE t (id bigint PRIMARY KEY, v text)",
        "SELECT create_distributed_table('t', 'id')",
        insert.as_str(),
    ];
    for round in 0..2 {
        for sql in script {
            c.simple_query(sql)
                .await
                .map_err(|e| anyhow::anyhow!("simple round {round}: {sql}: {e:?}"))?;
        }
        assert_eq!(routed(&c, "SELECT count(*) FROM t").await?, 100);
    }
    // The extended protocol (every statement prepared, as JDBC sends them).
    for round in 0..2 {
        for sql in script {
            c.execute(sql, &[])
                .await
                .map_err(|e| anyhow::anyhow!("extended round {round}: {sql}: {e:?}"))?;
        }
        assert_eq!(routed(&c, "SELECT count(*) FROM t").await?, 100);
    }
    // The rows are spread: both shards hold some.
    for shard in router.catalog().shard_ids() {
        let node = cluster.connect_node(&node(shard)).await?;
        assert!(
            scalar(&node, "SELECT count(*) FROM t").await? > 0,
            "shard {shard}"
        );
    }

    // Rolled back, or failed: still declared, still spread, still answered whole.
    c.batch_execute("BEGIN; DROP TABLE t; ROLLBACK").await?;
    // (A Query that would leave every shard inside a block is refused before anything
    // runs, the client then in a failed transaction; one that fails on the shards is
    // rolled back there.)
    let (code, _) = refused(&c, "BEGIN; DROP TABLE t; SELECT 1 / 0").await;
    assert_eq!(code, Some(SqlState::FEATURE_NOT_SUPPORTED));
    c.batch_execute("COMMIT").await?;
    let (code, _) = refused(&c, "DROP TABLE t; SELECT 1 / 0").await;
    assert_eq!(code, Some(SqlState::DIVISION_BY_ZERO));
    c.batch_execute("BEGIN; SAVEPOINT s; DROP TABLE t; ROLLBACK TO s; COMMIT")
        .await?;
    assert!(router.catalog().table("t").is_some());
    assert_eq!(routed(&c, "SELECT count(*) FROM t").await?, 100);

    // Dropped inside a committed transaction: forgotten.
    c.batch_execute("BEGIN; DROP TABLE t; COMMIT").await?;
    assert!(router.catalog().table("t").is_none());

    // A configured table stays declared when dropped.
    c.batch_execute("CREATE TABLE configured (id bigint PRIMARY KEY); DROP TABLE configured")
        .await?;
    assert!(router.catalog().table("configured").is_some());
    Ok(())
}

//! Multi-shard reads through the extended query protocol (SPEC §5 rule 2, §6):
//! tokio-postgres — which binds parameters and asks for *binary* results — against one
//! plain PostgreSQL and through a router on a 2-shard cluster, the same rows in the same
//! order (typed values compared, so binary encodings must match exactly), and the same
//! SQLSTATE for errors. Also psql-style text results through the extended protocol
//! (`query_typed_raw` is not needed: tokio-postgres's simple queries cover text).

use pgshard_catalog::config::TableConfig;
use pgshard_tests::{Standalone, TestCluster, TestClusterOptions, TestRouter};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

const CREATE: &str = "CREATE TABLE items (id bigint PRIMARY KEY, grp int, name text, \
    price numeric(10,2), score float8, flag bool, seen timestamptz, tags text[])";

/// One INSERT per row (each on its key's shard through the router).
fn inserts() -> Vec<String> {
    let mut out: Vec<String> = (1..=300)
        .map(|g| {
            format!(
                "INSERT INTO items (id, grp, name, price, score, flag, seen, tags) VALUES ({g}, {}, 'item {g}', {g} * 1.25, {g} / 3.0, {}, \
                 timestamptz '2024-01-01 00:00:00+00' + {g} * interval '1 hour', \
                 ARRAY['t{}'])",
                g % 7,
                g % 2 == 0,
                g % 3
            )
        })
        .collect();
    out.push("INSERT INTO items (id, grp, name, price, score, flag, seen, tags) VALUES (1000, NULL, NULL, NULL, NULL, NULL, NULL, NULL)".into());
    out
}

/// A row's values as text via their Rust types (what a driver user sees).
fn render(row: &Row) -> Vec<String> {
    (0..row.len())
        .map(|i| {
            let t = row.columns()[i].type_().name().to_string();
            match t.as_str() {
                "int8" => format!("{:?}", row.get::<_, Option<i64>>(i)),
                "int4" => format!("{:?}", row.get::<_, Option<i32>>(i)),
                "text" => format!("{:?}", row.get::<_, Option<String>>(i)),
                "float8" => format!("{:?}", row.get::<_, Option<f64>>(i)),
                "bool" => format!("{:?}", row.get::<_, Option<bool>>(i)),
                "_text" => format!("{:?}", row.get::<_, Option<Vec<String>>>(i)),
                "timestamptz" => format!("{:?}", row.get::<_, Option<std::time::SystemTime>>(i)),
                // numeric: compared as its binary encoding.
                _ => format!("{:?}", row.get::<_, Option<RawValue>>(i)),
            }
        })
        .collect()
}

/// Any value's raw binary encoding.
#[derive(Debug)]
#[allow(dead_code)] // compared through Debug
struct RawValue(Vec<u8>);
impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

async fn answer(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    match client.query(sql, params).await {
        Ok(rows) => {
            let cols = rows
                .first()
                .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
                .unwrap_or_default();
            Ok((cols, rows.iter().map(render).collect()))
        }
        Err(e) => Err(e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_fanout_answers_like_postgres() -> anyhow::Result<()> {
    let plain = Standalone::start().await?;
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables: vec![TableConfig {
            name: "items".into(),
            shard_key: Some("id".into()),
            key_type: Some("bigint".into()),
            kind: None,
            colocate_with: None,
        }],
        ..Default::default()
    })
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let reference = plain.connect().await?;
    let client = router.connect().await?;
    for c in [&reference, &client] {
        c.batch_execute(CREATE).await?;
        for sql in inserts() {
            c.batch_execute(&sql).await?;
        }
    }

    let (lo, hi, g): (i64, i64, i32) = (10, 250, 3);
    let cases: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
        ("SELECT count(*) FROM items", vec![]),
        ("SELECT id, name FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id", vec![&lo, &hi]),
        ("SELECT * FROM items ORDER BY id DESC LIMIT 7", vec![]),
        ("SELECT * FROM items ORDER BY id LIMIT 5 OFFSET 3", vec![]),
        ("SELECT id, price FROM items WHERE grp = $1 ORDER BY price DESC NULLS LAST, id", vec![&g]),
        ("SELECT name, score FROM items ORDER BY score NULLS FIRST, id LIMIT 20", vec![]),
        ("SELECT count(*), sum(price), avg(price), min(score), min(seen), max(name) FROM items WHERE id > $1", vec![&lo]),
        ("SELECT grp, count(*), sum(id) FROM items GROUP BY grp ORDER BY grp", vec![]),
        ("SELECT grp, count(*) FROM items WHERE flag AND id > $1 GROUP BY grp HAVING count(*) > 10 ORDER BY 2 DESC, 1", vec![&lo]),
        ("SELECT DISTINCT grp FROM items ORDER BY grp", vec![]),
        ("SELECT id, tags FROM items WHERE id < $1 ORDER BY id", vec![&lo]),
        ("SELECT id, seen FROM items WHERE seen > now() - interval '100 years' ORDER BY seen DESC LIMIT 3", vec![]),
        ("SELECT id FROM items WHERE id IN ($1, $2, 7, 8, 9) ORDER BY id", vec![&lo, &hi]),
        ("SELECT count(*) FROM items WHERE name LIKE $1", vec![&"item 1%"]),
        ("SELECT id / 0 FROM items", vec![]),
        ("SELECT nosuchcolumn FROM items", vec![]),
    ];
    let mut compared = 0;
    for (sql, params) in &cases {
        let want = answer(&reference, sql, params).await;
        let got = answer(&client, sql, params).await;
        assert_eq!(got, want, "{sql}");
        compared += 1;
    }
    assert_eq!(compared, cases.len());
    // The session is fine afterwards, also for single-shard work.
    let one = client
        .query_one("SELECT name FROM items WHERE id = $1", &[&lo])
        .await?;
    assert_eq!(one.get::<_, String>(0), "item 10");
    // A prepared statement executed many times (cached column count, re-binds).
    let stmt = client
        .prepare("SELECT id FROM items WHERE grp = $1 ORDER BY id LIMIT 3")
        .await?;
    for grp in 0..7i32 {
        let got: Vec<i64> = client
            .query(&stmt, &[&grp])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<i64> = reference
            .query(
                "SELECT id FROM items WHERE grp = $1 ORDER BY id LIMIT 3",
                &[&grp],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, want, "grp {grp}");
    }
    // A parameter in the merge step (HAVING after the merge): the table is collected
    // on one shard and PostgreSQL applies it there, bound with the client's value.
    let groups = |rows: Vec<tokio_postgres::Row>| -> Vec<(Option<i32>, i64)> {
        let mut v: Vec<(Option<i32>, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        v.sort();
        v
    };
    let mut want = groups(
        client
            .query("SELECT grp, count(*) FROM items GROUP BY grp", &[])
            .await?,
    );
    want.retain(|(_, n)| *n > lo);
    let got = groups(
        client
            .query(
                "SELECT grp, count(*) FROM items GROUP BY grp HAVING count(*) > $1",
                &[&lo],
            )
            .await?,
    );
    assert_eq!(got, want);
    // Inside a transaction block: the transaction's own backends, its own writes seen.
    client.batch_execute("BEGIN").await?;
    for id in [5001i64, 5002, 5003] {
        client
            .execute(
                "INSERT INTO items (id, grp, name) VALUES ($1, 1, 'txn')",
                &[&id],
            )
            .await?;
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM items WHERE id > $1", &[&lo])
        .await?
        .get(0);
    assert_eq!(n, 291 + 3);
    let top: Vec<i64> = client
        .query("SELECT id FROM items ORDER BY id DESC LIMIT 2", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(top, vec![5003, 5002]);
    client.batch_execute("ROLLBACK").await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM items WHERE id > $1", &[&lo])
        .await?
        .get(0);
    assert_eq!(n, 291);
    Ok(())
}

/// Execute with a row limit on a multi-shard portal (portal suspension, what JDBC's
/// fetch size sends): batches of the merged, ordered answer across Syncs, the last one
/// short, then nothing; also for an aggregate finished by the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limited_execute_of_a_multi_shard_portal() -> anyhow::Result<()> {
    let cluster =
        pgshard_tests::two_shards(vec![pgshard_tests::distributed("rl", "id", "bigint")]).await?;
    let router = pgshard_tests::TestRouter::start(&cluster).await?;
    let mut c = router.connect().await?;
    c.batch_execute("CREATE TABLE rl (id bigint PRIMARY KEY, v int)")
        .await?;
    for id in 1..=25i64 {
        c.execute("INSERT INTO rl VALUES ($1, $2)", &[&id, &((id % 3) as i32)])
            .await?;
    }
    let tx = c.transaction().await?;
    let stmt = tx
        .prepare("SELECT id, v FROM rl WHERE id > $1 ORDER BY id")
        .await?;
    let portal = tx.bind(&stmt, &[&0i64]).await?;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let batch = tx.query_portal(&portal, 10).await?;
        sizes.push(batch.len());
        if batch.is_empty() {
            break;
        }
        for r in batch {
            let (id, v): (i64, i32) = (r.get(0), r.get(1));
            assert_eq!(v, (id % 3) as i32);
            seen.push(id);
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<i64>>());
    assert_eq!(sizes, vec![10, 10, 5, 0]);

    // Finished by the router (GROUP BY over shards), two groups at a time.
    let stmt = tx
        .prepare("SELECT v, count(*) FROM rl GROUP BY v ORDER BY v")
        .await?;
    let portal = tx.bind(&stmt, &[]).await?;
    let first = tx.query_portal(&portal, 2).await?;
    let rest = tx.query_portal(&portal, 2).await?;
    let groups: Vec<(i32, i64)> = first
        .iter()
        .chain(rest.iter())
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(groups, vec![(0, 8), (1, 9), (2, 8)]);
    tx.commit().await?;
    Ok(())
}

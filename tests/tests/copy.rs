//! COPY through the router end to end (SPEC §6): real clients (tokio-postgres'
//! `copy_in`/`copy_out` over the extended protocol, a raw simple-protocol client, psql's
//! `\copy`, `pgbench -i`) against a 2-shard cluster with two-phase commit on. Every
//! row must land on the shard its bucket maps to (checked on the shards directly),
//! counts and sums through the router must agree, and a COPY that fails halfway (bad
//! key, NULL key, CopyFail, a shard's error, the client vanishing) must leave no row
//! and no prepared transaction anywhere.

use futures::{pin_mut, SinkExt, StreamExt};
use pgshard_catalog::config::TableConfig;
use pgshard_catalog::hash;
use pgshard_tests::{reference, two_shards, TestCluster, TestRouter};
use std::io::Cursor;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const PRIMARIES: [&str; 2] = ["shard1-node1", "shard2-node1"];
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn distributed(name: &str, key: &str) -> TableConfig {
    pgshard_tests::distributed(name, key, "bigint")
}

async fn one(client: &Client, sql: &str) -> anyhow::Result<String> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    anyhow::bail!("no row from {sql}")
}

/// Rows of `table` on each primary; asserts every one sits on the shard its key's
/// bucket maps to and that no prepared transaction is left.
async fn per_shard(cluster: &TestCluster, table: &str, key: &str) -> anyhow::Result<Vec<i64>> {
    let catalog = cluster.catalog();
    let mut out = Vec::new();
    for shard in catalog.shard_ids() {
        let node = catalog
            .primary(shard)
            .ok_or_else(|| anyhow::anyhow!("no primary for shard {shard}"))?;
        let c = cluster.connect_node(&node.name).await?;
        let prepared: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await?
            .get(0);
        assert_eq!(prepared, 0, "prepared transactions left on {}", node.name);
        let owned: Vec<i32> = (0..catalog.buckets)
            .filter(|b| catalog.bucket_map[*b as usize] == shard)
            .map(|b| b as i32)
            .collect();
        let expr = hash::bucket_sql_expr(
            &format!("\"{key}\""),
            pgshard_catalog::KeyType::Int8,
            catalog.buckets,
        );
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE NOT ({expr}) = ANY($1)), count(*) FROM {table}"
                ),
                &[&owned],
            )
            .await?;
        let (misplaced, total): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            misplaced, 0,
            "{misplaced} of {total} rows of {table} on shard {shard} belong elsewhere"
        );
        out.push(total);
    }
    Ok(out)
}

/// Sends `data` to a `copy_in` in pieces of varying size (so rows straddle CopyData
/// messages) and finishes it.
async fn copy_in(client: &Client, sql: &str, data: &[u8]) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Cursor<Vec<u8>>>(sql).await?;
    pin_mut!(sink);
    let mut at = 0;
    let mut step = 1;
    while at < data.len() {
        let end = (at + step).min(data.len());
        sink.send(Cursor::new(data[at..end].to_vec())).await?;
        at = end;
        step = step * 7 % 5003 + 1;
    }
    sink.finish().await
}

async fn copy_out(client: &Client, sql: &str) -> anyhow::Result<Vec<u8>> {
    let stream = client.copy_out(sql).await?;
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_in_every_format() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let cluster = two_shards(vec![distributed("cp_items", "id"), reference("cp_ref")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE cp_items (id bigint PRIMARY KEY, v text, n int)")
        .await?;
    c.simple_query("CREATE TABLE cp_ref (id int PRIMARY KEY, name text)")
        .await?;

    // Text, all columns in table order, with escapes.
    let mut text = String::new();
    for id in 1..=2000 {
        text.push_str(&format!("{id}\tline\\t{id}\\nnext\t{id}\n"));
    }
    assert_eq!(
        copy_in(&c, "COPY cp_items FROM STDIN", text.as_bytes()).await?,
        2000
    );
    let counts = per_shard(&cluster, "cp_items", "id").await?;
    assert_eq!(counts.iter().sum::<i64>(), 2000, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "both shards got rows: {counts:?}"
    );
    assert_eq!(one(&c, "SELECT sum(n) FROM cp_items").await?, "2001000");
    assert_eq!(
        one(&c, "SELECT v FROM cp_items WHERE id = 7").await?,
        "line\t7\nnext"
    );

    // csv with a header, a column list in another order, quoted newlines and commas.
    let mut csv = String::from("n,v,id\n");
    for id in 2001..=3000 {
        csv.push_str(&format!("{id},\"a,\"\"b\"\"\nline {id}\",\"{id}\"\n"));
    }
    let n = copy_in(
        &c,
        "COPY cp_items (n, v, id) FROM STDIN WITH (FORMAT csv, HEADER true)",
        csv.as_bytes(),
    )
    .await?;
    assert_eq!(n, 1000);
    // Old option syntax and a custom delimiter, through the simple protocol.
    let n = copy_in(
        &c,
        "COPY cp_items FROM STDIN WITH CSV DELIMITER AS '|' NULL AS 'nil'",
        b"3001|nil|1\r\n3002|\"x|y\"|2\r\n",
    )
    .await?;
    assert_eq!(n, 2);
    assert_eq!(
        one(&c, "SELECT v FROM cp_items WHERE id = 2500").await?,
        "a,\"b\"\nline 2500"
    );
    assert_eq!(
        one(&c, "SELECT v IS NULL FROM cp_items WHERE id = 3001").await?,
        "t"
    );

    // Binary.
    let sink = c
        .copy_in("COPY cp_items (id, v, n) FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::INT4]);
    pin_mut!(writer);
    for id in 3003i64..=4000 {
        let v = format!("bin {id}");
        writer.as_mut().write(&[&id, &v, &(id as i32)]).await?;
    }
    assert_eq!(writer.finish().await?, 998);
    let counts = per_shard(&cluster, "cp_items", "id").await?;
    assert_eq!(counts.iter().sum::<i64>(), 4000);
    assert_eq!(one(&c, "SELECT count(*) FROM cp_items").await?, "4000");

    // COPY TO: every row once, one header, one binary header and trailer.
    let out = copy_out(&c, "COPY cp_items TO STDOUT").await?;
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 4000);
    let out = copy_out(&c, "COPY cp_items (id) TO STDOUT (FORMAT csv, HEADER)").await?;
    let lines: Vec<&str> = std::str::from_utf8(&out)?.lines().collect();
    assert_eq!(lines.len(), 4001);
    assert_eq!(lines[0], "id");
    let mut ids: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    assert_eq!(ids, (1..=4000).collect::<Vec<_>>());
    let stream = c
        .copy_out("COPY cp_items (id, n) TO STDOUT (FORMAT binary)")
        .await?;
    let rows = BinaryCopyOutStream::new(stream, &[Type::INT8, Type::INT4]);
    pin_mut!(rows);
    let mut sum = 0i64;
    let mut count = 0;
    while let Some(r) = rows.next().await {
        let r = r?;
        sum += r.get::<i64>(0);
        count += 1;
    }
    assert_eq!((count, sum), (4000, 4000 * 4001 / 2));
    let out = copy_out(
        &c,
        "COPY (SELECT id FROM cp_items WHERE n > 3500) TO STDOUT",
    )
    .await?;
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 500);
    let refused = c
        .simple_query("COPY (SELECT id FROM cp_items ORDER BY id) TO STDOUT")
        .await
        .err()
        .and_then(|e| e.code().cloned());
    assert_eq!(
        refused,
        Some(tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );

    // A reference table: every row on every shard.
    let n = copy_in(
        &c,
        "COPY cp_ref FROM STDIN (FORMAT csv)",
        b"1,one\n2,two\n3,three\n",
    )
    .await?;
    assert_eq!(n, 3);
    for node in PRIMARIES {
        let s = cluster.connect_node(node).await?;
        let n: i64 = s
            .query_one("SELECT count(*) FROM cp_ref", &[])
            .await?
            .get(0);
        assert_eq!(n, 3, "{node}");
    }

    // psql's \copy (simple protocol, psql's own chunking).
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rows.csv");
    let mut data = String::new();
    for id in 5001..=5500 {
        data.push_str(&format!("{id},\"psql\n{id}\",{id}\n"));
    }
    std::fs::write(&file, data)?;
    let status = tokio::process::Command::new(format!("{PG_BIN}/psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &router.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            &format!("\\copy cp_items from '{}' csv", file.display()),
        ])
        .status()
        .await?;
    assert!(status.success(), "psql \\copy failed");
    let counts = per_shard(&cluster, "cp_items", "id").await?;
    assert_eq!(counts.iter().sum::<i64>(), 4500);
    Ok(())
}

/// A raw simple-protocol connection: startup, then whatever bytes the test writes.
async fn raw_client(router: &TestRouter) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(router.addr()).await?;
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for kv in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).await?;
    // Up to ReadyForQuery.
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        let mut payload = vec![0; len - 4];
        s.read_exact(&mut payload).await?;
        if tag == b'Z' {
            return Ok(s);
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copies_leave_nothing_behind() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let cluster = two_shards(vec![distributed("cp_err", "id")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE cp_err (id bigint PRIMARY KEY, v text)")
        .await?;
    // Plenty of good rows on both shards first, so every shard has data in flight.
    let good: String = (1..=3000).map(|id| format!("{id}\tok\n")).collect();
    let code = |r: Result<u64, tokio_postgres::Error>| r.err().and_then(|e| e.code().cloned());

    // A malformed key, then a NULL key, near the end.
    let data = format!("{good}abc\tbad\n");
    let e = code(copy_in(&c, "COPY cp_err FROM STDIN", data.as_bytes()).await);
    assert_eq!(
        e,
        Some(tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION)
    );
    let data = format!("{good}\\N\tnull\n");
    let e = code(copy_in(&c, "COPY cp_err FROM STDIN", data.as_bytes()).await);
    assert_eq!(e, Some(tokio_postgres::error::SqlState::NOT_NULL_VIOLATION));
    let e = code(copy_in(&c, "COPY cp_err FROM STDIN (FORMAT csv)", b"1,ok\n,x\n").await);
    assert_eq!(e, Some(tokio_postgres::error::SqlState::NOT_NULL_VIOLATION));
    // A shard's own error (duplicate key) fails the whole COPY.
    let data = format!("{good}5\tdup\n");
    let e = code(copy_in(&c, "COPY cp_err FROM STDIN", data.as_bytes()).await);
    assert_eq!(e, Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    assert_eq!(per_shard(&cluster, "cp_err", "id").await?, vec![0, 0]);

    // CopyFail from the client: tokio-postgres sends it when the sink is dropped.
    {
        let sink = c
            .copy_in::<_, Cursor<Vec<u8>>>("COPY cp_err FROM STDIN")
            .await?;
        pin_mut!(sink);
        sink.send(Cursor::new(good.clone().into_bytes())).await?;
        sink.flush().await?;
    }
    assert_eq!(one(&c, "SELECT 1").await?, "1");
    assert_eq!(per_shard(&cluster, "cp_err", "id").await?, vec![0, 0]);

    // CopyFail and a vanishing client through the simple protocol.
    for vanish in [false, true] {
        let mut s = raw_client(&router).await?;
        let mut q = b"COPY cp_err FROM STDIN".to_vec();
        q.push(0);
        s.write_all(&message(b'Q', &q)).await?;
        s.write_all(&message(b'd', good.as_bytes())).await?;
        if vanish {
            s.write_all(&message(b'd', b"99999\tpartial row")).await?;
            s.shutdown().await?;
            drop(s);
        } else {
            s.write_all(&message(b'f', b"changed my mind\0")).await?;
            use tokio::io::AsyncReadExt;
            let mut seen = Vec::new();
            loop {
                let tag = s.read_u8().await?;
                let len = s.read_u32().await? as usize;
                let mut payload = vec![0; len - 4];
                s.read_exact(&mut payload).await?;
                seen.push(tag);
                if tag == b'Z' {
                    break;
                }
            }
            assert_eq!(seen, vec![b'G', b'E', b'Z']);
        }
    }
    // The router notices the disconnection, aborts and rolls back.
    let mut left = vec![];
    for _ in 0..50 {
        left = per_shard(&cluster, "cp_err", "id").await?;
        let busy: i64 = {
            let mut n = 0;
            for node in PRIMARIES {
                let s = cluster.connect_node(node).await?;
                let b: i64 = s
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY cp_err%' AND state <> 'idle'",
                        &[],
                    )
                    .await?
                    .get(0);
                n += b;
            }
            n
        };
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, vec![0, 0]);

    // The router still works and the same COPY now succeeds.
    assert_eq!(
        copy_in(&c, "COPY cp_err FROM STDIN", good.as_bytes()).await?,
        3000
    );
    assert_eq!(
        per_shard(&cluster, "cp_err", "id")
            .await?
            .iter()
            .sum::<i64>(),
        3000
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_inside_a_transaction_block() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let cluster = two_shards(vec![distributed("cp_txn", "id")]).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query("CREATE TABLE cp_txn (id bigint PRIMARY KEY, v text)")
        .await?;
    let rows: String = (1..=500).map(|id| format!("{id}\tt\n")).collect();

    // Rolled back: nothing anywhere, though the transaction saw its rows.
    c.simple_query("BEGIN").await?;
    c.simple_query("INSERT INTO cp_txn (id, v) VALUES (1000, 'before')")
        .await?;
    assert_eq!(
        copy_in(&c, "COPY cp_txn FROM STDIN", rows.as_bytes()).await?,
        500
    );
    // (A multi-shard SELECT in a transaction block is not supported yet; COPY TO is.)
    let seen = copy_out(&c, "COPY cp_txn TO STDOUT").await?;
    assert_eq!(seen.iter().filter(|&&b| b == b'\n').count(), 501);
    assert_eq!(
        one(&c, "SELECT v FROM cp_txn WHERE id = 1000").await?,
        "before"
    );
    c.simple_query("ROLLBACK").await?;
    assert_eq!(per_shard(&cluster, "cp_txn", "id").await?, vec![0, 0]);

    // Committed with the transaction, after COPY TO inside it.
    c.simple_query("BEGIN").await?;
    assert_eq!(
        copy_in(&c, "COPY cp_txn FROM STDIN", rows.as_bytes()).await?,
        500
    );
    let out = copy_out(&c, "COPY cp_txn TO STDOUT").await?;
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 500);
    c.simple_query("COMMIT").await?;
    assert_eq!(
        per_shard(&cluster, "cp_txn", "id")
            .await?
            .iter()
            .sum::<i64>(),
        500
    );

    // A failing COPY fails the transaction: COMMIT rolls back.
    c.simple_query("BEGIN").await?;
    c.simple_query("INSERT INTO cp_txn (id, v) VALUES (2000, 'x')")
        .await?;
    let bad = copy_in(&c, "COPY cp_txn FROM STDIN", b"3000\ta\n\\N\tb\n").await;
    assert!(bad.is_err());
    let e = c
        .simple_query("SELECT 1")
        .await
        .err()
        .and_then(|e| e.code().cloned());
    assert_eq!(
        e,
        Some(tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    c.simple_query("COMMIT").await?;
    assert_eq!(
        per_shard(&cluster, "cp_txn", "id")
            .await?
            .iter()
            .sum::<i64>(),
        500
    );
    Ok(())
}

fn pgbench_tables() -> Vec<TableConfig> {
    vec![
        distributed("pgbench_accounts", "aid"),
        distributed("pgbench_history", "aid"),
        distributed("pgbench_tellers", "tid"),
        distributed("pgbench_branches", "bid"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_through_the_router() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let cluster = two_shards(pgbench_tables()).await?;
    let router = TestRouter::start(&cluster).await?;
    let out = tokio::process::Command::new(format!("{PG_BIN}/pgbench"))
        .args([
            "-i",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &router.port().to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = per_shard(&cluster, "pgbench_accounts", "aid").await?;
    assert_eq!(counts.iter().sum::<i64>(), 100_000, "{counts:?}");
    let c = router.connect().await?;
    assert_eq!(
        one(&c, "SELECT count(*) FROM pgbench_accounts").await?,
        "100000"
    );
    assert_eq!(
        one(&c, "SELECT sum(aid) FROM pgbench_accounts").await?,
        "5000050000"
    );
    Ok(())
}

/// Runs one simple Query on a raw connection, answering a CopyInResponse with `data`
/// in 8 KiB CopyData messages (as libpq-based clients such as pgbench and psql do);
/// returns the command tags and error codes seen up to ReadyForQuery.
async fn raw_query(
    s: &mut tokio::net::TcpStream,
    sql: &str,
    data: &[u8],
) -> anyhow::Result<Vec<String>> {
    use tokio::io::AsyncReadExt;
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    s.write_all(&message(b'Q', &q)).await?;
    let mut seen = Vec::new();
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        let mut payload = vec![0; len - 4];
        s.read_exact(&mut payload).await?;
        match tag {
            b'G' => {
                for chunk in data.chunks(8192) {
                    s.write_all(&message(b'd', chunk)).await?;
                }
                s.write_all(&message(b'c', &[])).await?;
            }
            b'C' => seen.push(String::from_utf8_lossy(&payload[..payload.len() - 1]).into_owned()),
            b'E' => {
                let code = payload
                    .split(|b| *b == 0)
                    .find_map(|f| f.strip_prefix(b"C"))
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default();
                seen.push(format!("ERROR {code}"));
            }
            b'Z' => return Ok(seen),
            _ => {}
        }
    }
}

/// pgbench -i's data step minus its TRUNCATE (and so minus FREEZE, which needs it):
/// inserts and `COPY … FROM STDIN` in one transaction block, simple protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_style_load_in_a_transaction() -> anyhow::Result<()> {
    pgshard_tests::init_tracing();
    let cluster = two_shards(pgbench_tables()).await?;
    let router = TestRouter::start(&cluster).await?;
    let c = router.connect().await?;
    c.simple_query(
        "CREATE TABLE pgbench_branches (bid int NOT NULL PRIMARY KEY, bbalance int, filler char(88))",
    )
    .await?;
    c.simple_query(
        "CREATE TABLE pgbench_tellers (tid int NOT NULL PRIMARY KEY, bid int, tbalance int, filler char(84))",
    )
    .await?;
    c.simple_query(
        "CREATE TABLE pgbench_accounts (aid int NOT NULL PRIMARY KEY, bid int, abalance int, filler char(84))",
    )
    .await?;
    let mut s = raw_client(&router).await?;
    assert_eq!(raw_query(&mut s, "begin", b"").await?, vec!["BEGIN"]);
    raw_query(
        &mut s,
        "insert into pgbench_branches(bid,bbalance) values(1,0)",
        b"",
    )
    .await?;
    for tid in 1..=10 {
        raw_query(
            &mut s,
            &format!("insert into pgbench_tellers(tid,bid,tbalance) values ({tid},1,0)"),
            b"",
        )
        .await?;
    }
    let data: String = (1..=100_000)
        .map(|aid| format!("{aid}\t1\t0\t\n"))
        .collect();
    let tags = raw_query(
        &mut s,
        "copy pgbench_accounts from stdin with (freeze off)",
        data.as_bytes(),
    )
    .await?;
    assert_eq!(tags, vec!["COPY 100000"]);
    assert_eq!(raw_query(&mut s, "commit", b"").await?, vec!["COMMIT"]);
    let counts = per_shard(&cluster, "pgbench_accounts", "aid").await?;
    assert_eq!(counts.iter().sum::<i64>(), 100_000, "{counts:?}");
    assert_eq!(
        one(&c, "SELECT sum(aid) FROM pgbench_accounts").await?,
        "5000050000"
    );
    // FREEZE is passed through: PostgreSQL refuses it here (the table was not
    // truncated in this transaction), on every shard, and nothing is loaded.
    let tags = raw_query(
        &mut s,
        "copy pgbench_accounts from stdin with (freeze on)",
        b"100001\t1\t0\t\n",
    )
    .await?;
    assert_eq!(tags, vec!["ERROR 55000"]);
    assert_eq!(
        per_shard(&cluster, "pgbench_accounts", "aid")
            .await?
            .iter()
            .sum::<i64>(),
        100_000
    );
    Ok(())
}

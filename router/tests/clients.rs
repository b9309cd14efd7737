//! The router driven by tokio-postgres against real PostgreSQL: simple and extended
//! protocol, pipelining, transactions, errors, session state, prepared statements with
//! more clients than backends, cancellation, bad input, limits and the admin console.

mod common;

use common::{simple_rows, sqlstate, Env};
use futures::future::join_all;
use pgshard_catalog::config::UserConfig;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_and_errors() {
    let env = Env::start(2).await;
    let c = env.connect().await;
    assert_eq!(simple_rows(&c, "SELECT 1, 'a'").await, vec![vec!["1", "a"]]);
    // Errors keep their SQLSTATE and the session goes on.
    let e = c
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    let e = c.simple_query("SELEC 1").await.expect_err("syntax error");
    assert_eq!(sqlstate(&e), "42601");
    let e = c
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("no table");
    assert_eq!(sqlstate(&e), "42P01");
    // Several statements in one Query.
    c.batch_execute("CREATE TABLE t1 (a int); INSERT INTO t1 VALUES (1), (2); ")
        .await
        .expect("batch");
    assert_eq!(
        simple_rows(&c, "SELECT count(*) FROM t1").await,
        vec![vec!["2"]]
    );
    // Empty query.
    let empty = c.simple_query("").await.expect("empty query");
    assert!(empty
        .iter()
        .all(|m| !matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    // The server's version is PostgreSQL's.
    let v = simple_rows(&c, "SHOW server_version").await;
    assert!(v[0][0].starts_with("15"), "{v:?}");
    drop(c);
    let (_, in_use, _) = env.wait_pools_idle().await;
    assert_eq!(in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_binary_params_and_pipelining() {
    let env = Env::start(2).await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE accounts (id bigint PRIMARY KEY, balance int, note text)")
        .await
        .expect("create");
    let ins = c
        .prepare("INSERT INTO accounts (id, balance, note) VALUES ($1, $2, $3)")
        .await
        .expect("prepare insert");
    for i in 0..50i64 {
        c.execute(&ins, &[&i, &(i as i32 * 10), &format!("n{i}")])
            .await
            .expect("insert");
    }
    let sel = c
        .prepare("SELECT balance, note FROM accounts WHERE id = $1")
        .await
        .expect("prepare select");
    let row = c.query_one(&sel, &[&7i64]).await.expect("select");
    assert_eq!(row.get::<_, i32>(0), 70);
    assert_eq!(row.get::<_, String>(1), "n7");
    // Pipelining: many queries in flight on one connection.
    let futs = (0..50i64).map(|i| {
        let c = &c;
        let sel = &sel;
        async move { c.query_one(sel, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let results = join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("pipelined query"), i as i32 * 10);
    }
    // Unnamed statements via query with typed params, and row counts.
    let n = c
        .execute(
            "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
            &[&3i64],
        )
        .await
        .expect("update");
    assert_eq!(n, 1);
    // An error in the extended protocol carries its SQLSTATE; the connection recovers.
    let e = c
        .execute(
            "INSERT INTO accounts (id, balance) VALUES ($1, 1)",
            &[&3i64],
        )
        .await
        .expect_err("duplicate key");
    assert_eq!(sqlstate(&e), "23505");
    let e = c
        .prepare("SELEC 1")
        .await
        .expect_err("syntax error at parse");
    assert_eq!(sqlstate(&e), "42601");
    let row = c
        .query_one(&sel, &[&3i64])
        .await
        .expect("select after errors");
    assert_eq!(row.get::<_, i32>(0), 31);
    // Text columns with NULLs, many rows.
    let rows = c
        .query("SELECT g, NULL::text FROM generate_series(1, 50) g", &[])
        .await
        .expect("all rows");
    assert_eq!(rows.len(), 50);
    assert!(rows[0].get::<_, Option<String>>(1).is_none());
    drop(c);
    let (_, in_use, _) = env.wait_pools_idle().await;
    assert_eq!(in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_pin_a_backend() {
    let env = Env::start(1).await;
    let mut c = env.connect().await;
    c.batch_execute("CREATE TABLE tx (a int)")
        .await
        .expect("create");
    // Rolled back work is gone, committed work stays.
    let t = c.transaction().await.expect("begin");
    t.execute("INSERT INTO tx VALUES (1)", &[])
        .await
        .expect("insert");
    t.rollback().await.expect("rollback");
    let t = c.transaction().await.expect("begin");
    t.execute("INSERT INTO tx VALUES (2)", &[])
        .await
        .expect("insert");
    // Savepoints.
    t.batch_execute("SAVEPOINT s; INSERT INTO tx VALUES (3); ROLLBACK TO SAVEPOINT s")
        .await
        .expect("savepoint");
    t.commit().await.expect("commit");
    assert_eq!(
        simple_rows(&c, "SELECT a FROM tx ORDER BY a").await,
        vec![vec!["2"]]
    );
    // A failed transaction stays failed until ROLLBACK.
    c.batch_execute("BEGIN").await.expect("begin");
    let e = c
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("error in txn");
    assert_eq!(sqlstate(&e), "22012");
    let e = c.batch_execute("SELECT 1").await.expect_err("aborted txn");
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    // An empty transaction never needs a backend; BEGIN; COMMIT works.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("COMMIT").await.expect("commit");
    // With pool size 1 another client can use the backend between transactions.
    let c2 = env.connect().await;
    assert_eq!(
        simple_rows(&c2, "SELECT count(*) FROM tx").await,
        vec![vec!["1"]]
    );
    // Transaction status is reported correctly to the client while pinned.
    c.batch_execute("BEGIN; INSERT INTO tx VALUES (4)")
        .await
        .expect("begin+insert");
    let other = tokio::time::timeout(Duration::from_millis(300), c2.simple_query("SELECT 1")).await;
    assert!(
        other.is_err(),
        "pool of one: the other client waits while the transaction holds the backend"
    );
    c.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        simple_rows(&c2, "SELECT count(*) FROM tx").await,
        vec![vec!["2"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_replayed_per_client() {
    let env = Env::start(1).await;
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("SET statement_timeout = '1234ms'; SET application_name = 'client-a'")
        .await
        .expect("set");
    // Pool of one: b gets the same backend and must not see a's settings.
    assert_eq!(
        simple_rows(&b, "SHOW statement_timeout").await,
        vec![vec!["0"]]
    );
    assert_eq!(
        simple_rows(&a, "SHOW statement_timeout").await,
        vec![vec!["1234ms"]]
    );
    // Extended protocol sees the same state; SET through the extended protocol is tracked.
    let row = a
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .expect("setting");
    assert_eq!(row.get::<_, String>(0), "client-a");
    b.execute("SET work_mem = '3MB'", &[])
        .await
        .expect("set via extended");
    assert_eq!(simple_rows(&a, "SHOW work_mem").await, vec![vec!["4MB"]]);
    assert_eq!(simple_rows(&b, "SHOW work_mem").await, vec![vec!["3MB"]]);
    // RESET and SET rolled back with its transaction.
    a.batch_execute("RESET statement_timeout")
        .await
        .expect("reset");
    assert_eq!(
        simple_rows(&a, "SHOW statement_timeout").await,
        vec![vec!["0"]]
    );
    a.batch_execute("BEGIN; SET statement_timeout = '5s'; ROLLBACK")
        .await
        .expect("rolled back set");
    let _ = simple_rows(&b, "SELECT 1").await;
    assert_eq!(
        simple_rows(&a, "SHOW statement_timeout").await,
        vec![vec!["0"]]
    );
    a.batch_execute("BEGIN; SET statement_timeout = '6s'; COMMIT")
        .await
        .expect("committed set");
    let _ = simple_rows(&b, "SELECT 1").await;
    assert_eq!(
        simple_rows(&a, "SHOW statement_timeout").await,
        vec![vec!["6s"]]
    );
    // DISCARD ALL drops it all.
    a.batch_execute("DISCARD ALL").await.expect("discard");
    let _ = simple_rows(&b, "SELECT 1").await;
    assert_eq!(
        simple_rows(&a, "SHOW statement_timeout").await,
        vec![vec!["0"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_more_clients_than_backends() {
    let env = Env::start(2).await;
    let setup = env.connect().await;
    setup
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g")
        .await
        .expect("setup");
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(env.connect().await);
    }
    let work = clients.iter().enumerate().map(|(n, c)| async move {
        let st = c.prepare("SELECT v FROM kv WHERE k = $1").await?;
        let st2 = c
            .prepare_typed(
                "SELECT $1::int4 + k FROM kv WHERE k = $1",
                &[tokio_postgres::types::Type::INT4],
            )
            .await?;
        for i in 1..=30i32 {
            let k = (i + n as i32) % 100 + 1;
            let r = c.query_one(&st, &[&k]).await?;
            assert_eq!(r.get::<_, String>(0), format!("v{k}"));
            let r = c.query_one(&st2, &[&k]).await?;
            assert_eq!(r.get::<_, i32>(0), 2 * k);
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    for r in join_all(work).await {
        r.expect("client work");
    }
    // Statements are prepared once per backend, not once per client.
    let direct = env.shards[0].connect().await.expect("direct");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = 'postgres'", &[])
        .await
        .expect("activity")
        .get(0);
    assert!(n <= 3, "at most pool size + this connection, got {n}");
    drop(clients);
    let (_, in_use, waiting) = env.wait_pools_idle().await;
    assert_eq!((in_use, waiting), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_level_prepare_execute_deallocate() {
    let env = Env::start(1).await;
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("PREPARE q (int) AS SELECT $1 * 2")
        .await
        .expect("prepare");
    // b uses the backend in between and may even use the same name for something else.
    b.batch_execute("PREPARE q AS SELECT 'b'")
        .await
        .expect("prepare b");
    assert_eq!(simple_rows(&a, "EXECUTE q(21)").await, vec![vec!["42"]]);
    assert_eq!(simple_rows(&b, "EXECUTE q").await, vec![vec!["b"]]);
    assert_eq!(simple_rows(&a, "EXECUTE q(5)").await, vec![vec!["10"]]);
    let e = a
        .batch_execute("PREPARE q AS SELECT 1")
        .await
        .expect_err("duplicate");
    assert_eq!(sqlstate(&e), "42P05");
    a.batch_execute("DEALLOCATE q").await.expect("deallocate");
    let e = a.batch_execute("EXECUTE q(1)").await.expect_err("gone");
    assert_eq!(sqlstate(&e), "26000");
    let e = a
        .batch_execute("PREPARE bad AS SELEC 1")
        .await
        .expect_err("bad prepare");
    assert_eq!(sqlstate(&e), "42601");
    let e = a
        .batch_execute("EXECUTE bad")
        .await
        .expect_err("never prepared");
    assert_eq!(sqlstate(&e), "26000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_backend() {
    let env = Env::start(2).await;
    let c = env.connect().await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(10)").await;
        (r.map(|_| ()), c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    token.cancel_query(NoTls).await.expect("send cancel");
    let (r, c) = sleeper.await.expect("join");
    let e = r.expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The session is usable afterwards.
    assert_eq!(simple_rows(&c, "SELECT 2").await, vec![vec!["2"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dying_mid_query_does_not_leak_a_backend() {
    let env = Env::start(1).await;
    // A raw client: startup, then a long query, then the socket closes.
    let mut s = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    s.write_all(&startup_packet("postgres"))
        .await
        .expect("startup");
    read_until_ready(&mut s).await;
    let sql = b"SELECT pg_sleep(30)\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(sql);
    s.write_all(&q).await.expect("query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let (_, in_use, _) = env.wait_pools_idle().await;
    assert_eq!(in_use, 0);
    // The backend was cancelled, and the single pooled slot serves the next client.
    let direct = env.shards[0].connect().await.expect("direct");
    let mut sleeping = 1i64;
    for _ in 0..50 {
        sleeping = direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'", &[])
            .await
            .expect("activity")
            .get(0);
        if sleeping == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sleeping, 0, "the abandoned query still runs");
    let c2 = env.connect().await;
    assert_eq!(simple_rows(&c2, "SELECT 3").await, vec![vec!["3"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_does_not_disturb_others() {
    let env = Env::start(2).await;
    let good = env.connect().await;
    // Garbage instead of a startup packet.
    let mut s = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    s.write_all(&[0xff; 64]).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed");
    // A valid startup, then a message with a bad length.
    let mut s = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    let startup = startup_packet("postgres");
    s.write_all(&startup).await.expect("startup");
    s.write_all(&[b'Q', 0, 0, 0, 2, 1, 2, 3])
        .await
        .expect("garbage");
    buf.clear();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed");
    // The server sent an ErrorResponse (08P01) before closing.
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("08P01"), "{text}");
    // An oversize message.
    let mut s = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    s.write_all(&startup).await.expect("startup");
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff])
        .await
        .expect("huge");
    buf.clear();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(String::from_utf8_lossy(&buf).contains("08P01"));
    // Random bytes after a valid startup, many times.
    for seed in 0..20u64 {
        let mut s = tokio::net::TcpStream::connect(env.addr)
            .await
            .expect("connect");
        s.write_all(&startup).await.expect("startup");
        let junk: Vec<u8> = (0..200u64)
            .map(|i| ((i * 31 + seed * 17) ^ (i >> 3)) as u8)
            .collect();
        let _ = s.write_all(&junk).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    assert_eq!(
        simple_rows(&good, "SELECT 'still fine'").await,
        vec![vec!["still fine"]]
    );
    let (_, in_use, _) = env.wait_pools_idle().await;
    assert_eq!(in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_cluster_and_pools() {
    let env = Env::start(2).await;
    let c = env.connect().await;
    let _ = simple_rows(&c, "SELECT 1").await;
    let admin = env.admin().await;
    let shards = simple_rows(&admin, "SHOW SHARDS").await;
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0][0], "1");
    let nodes = simple_rows(&admin, "SHOW NODES").await;
    assert_eq!(nodes[0][3], "primary");
    let tables = simple_rows(&admin, "show tables;").await;
    assert_eq!(tables.len(), 2);
    let clients = simple_rows(&admin, "SHOW CLIENTS").await;
    assert!(clients.len() >= 2, "{clients:?}");
    let pools = simple_rows(&admin, "SHOW POOLS").await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0][6], "2");
    let e = admin
        .simple_query("SHOW NONSENSE")
        .await
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "0A000");
    let e = admin
        .simple_query("DROP TABLE x")
        .await
        .expect_err("not a command");
    assert_eq!(sqlstate(&e), "42601");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_max_clients_and_pool_timeout() {
    let env = Env::start_with(
        1,
        pgshard_catalog::config::RouterConfig {
            max_clients: 2,
            pool_size: 1,
            pool_timeout_ms: 300,
            ..common::config()
        },
    )
    .await;
    let a = env.connect().await;
    let b = env.connect().await;
    let e = env.try_connect("postgres").await.expect_err("third client");
    assert_eq!(sqlstate(&e), "53300");
    a.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("hold the backend");
    let e = b.simple_query("SELECT 1").await.expect_err("pool timeout");
    assert_eq!(sqlstate(&e), "53300");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(simple_rows(&b, "SELECT 1").await, vec![vec!["1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_scram_and_md5() {
    for method in ["scram-sha-256", "md5"] {
        let env = Env::start_with(
            1,
            pgshard_catalog::config::RouterConfig {
                auth: method.into(),
                users: vec![UserConfig {
                    name: "postgres".into(),
                    password: "s3cret".into(),
                }],
                ..common::config()
            },
        )
        .await;
        let ok = format!("{} password=s3cret", env.connstr("postgres"));
        let (c, conn) = tokio_postgres::connect(&ok, NoTls).await.expect(method);
        tokio::spawn(conn);
        assert_eq!(simple_rows(&c, "SELECT 1").await, vec![vec!["1"]]);
        for bad in [
            format!("{} password=wrong", env.connstr("postgres")),
            format!(
                "host=127.0.0.1 port={} user=nobody password=s3cret dbname=postgres",
                env.port()
            ),
        ] {
            let e = tokio_postgres::connect(&bad, NoTls)
                .await
                .err()
                .expect("refused");
            assert_eq!(sqlstate(&e), "28P01", "{method}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_route_by_key_and_refuse_spanning_transactions() {
    let env = Env::start_with(2, common::config()).await;
    let c = env.connect().await;
    for s in &env.shards {
        let d = s.connect().await.expect("direct");
        d.batch_execute("CREATE TABLE accounts (id bigint PRIMARY KEY, v int)")
            .await
            .expect("create on shard");
    }
    let ins = c
        .prepare("INSERT INTO accounts (id, v) VALUES ($1, $2)")
        .await
        .expect("prepare");
    for i in 0..40i64 {
        c.execute(&ins, &[&i, &(i as i32)]).await.expect("insert");
    }
    // Each row lives on the shard the catalog says, and reads by key find it.
    let catalog = env.ctx.catalog.current();
    let mut per_shard = [0i64; 2];
    for i in 0..40i64 {
        let shard = catalog
            .shard_of(&pgshard_catalog::KeyValue::Int(i))
            .expect("owner")
            .0 as usize;
        per_shard[shard - 1] += 1;
        let r = c
            .query_one("SELECT v FROM accounts WHERE id = $1", &[&i])
            .await
            .expect("read by key");
        assert_eq!(r.get::<_, i32>(0), i as i32);
        let r = simple_rows(&c, &format!("SELECT v FROM accounts WHERE id = {i}")).await;
        assert_eq!(r, vec![vec![i.to_string()]]);
    }
    for (n, s) in env.shards.iter().enumerate() {
        let d = s.connect().await.expect("direct");
        let cnt: i64 = d
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(cnt, per_shard[n], "shard {}", n + 1);
        assert!(cnt > 0);
    }
    // A transaction touching two shards is refused, and stays consistent.
    let (k1, k2) = {
        let mut k = (None, None);
        for i in 0..40i64 {
            match catalog
                .shard_of(&pgshard_catalog::KeyValue::Int(i))
                .expect("owner")
                .0
            {
                1 if k.0.is_none() => k.0 = Some(i),
                2 if k.1.is_none() => k.1 = Some(i),
                _ => {}
            }
        }
        (k.0.expect("key on 1"), k.1.expect("key on 2"))
    };
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute(&format!("UPDATE accounts SET v = -1 WHERE id = {k1}"))
        .await
        .expect("first shard");
    let e = c
        .batch_execute(&format!("UPDATE accounts SET v = -1 WHERE id = {k2}"))
        .await
        .expect_err("second shard");
    assert_eq!(sqlstate(&e), "0A000");
    let e = c
        .batch_execute("SELECT 1")
        .await
        .expect_err("transaction is aborted");
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let r = simple_rows(&c, &format!("SELECT v FROM accounts WHERE id = {k1}")).await;
    assert_eq!(r, vec![vec![k1.to_string()]]);
    // The escape hatch sends statements to a chosen shard.
    c.batch_execute("SET pgshard.shard = 2")
        .await
        .expect("set shard");
    let r = simple_rows(&c, "SELECT count(*) FROM accounts").await;
    assert_eq!(r, vec![vec![per_shard[1].to_string()]]);
    assert_eq!(simple_rows(&c, "SHOW pgshard.shard").await, vec![vec!["2"]]);
    c.batch_execute("RESET pgshard.shard")
        .await
        .expect("reset shard");
    // DDL on a distributed table runs on every shard.
    c.batch_execute("ALTER TABLE accounts ADD COLUMN note text")
        .await
        .expect("ddl on all shards");
    for s in &env.shards {
        let d = s.connect().await.expect("direct");
        d.query_one("SELECT note FROM accounts LIMIT 1", &[])
            .await
            .expect("column exists on every shard");
    }
    // A NULL key on INSERT is refused.
    let e = c
        .execute(&ins, &[&None::<i64>, &1i32])
        .await
        .expect_err("null key");
    assert_eq!(sqlstate(&e), "23502");
    let (_, in_use, _) = env.wait_pools_idle().await;
    assert_eq!(in_use, 0);
}

/// A protocol 3.0 StartupMessage for `user`.
fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    body.extend_from_slice(b"user\0");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Reads server messages until ReadyForQuery.
async fn read_until_ready(s: &mut tokio::net::TcpStream) {
    loop {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.expect("message header");
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.expect("message body");
        if header[0] == b'Z' {
            return;
        }
    }
}

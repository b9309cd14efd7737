//! The driver matrix (SPEC §14, issue 14): real client libraries of several languages
//! drive a router on a 2-shard cluster, and every read is compared with the same
//! workload on a plain PostgreSQL. Each driver's checks live in a script or program
//! beside this file (`tests/python`, `tests/java`, `tests/node`, `tests/psql`) that takes the router's
//! and the plain server's ports, prints one line per check and `OK` at the end;
//! `.ci/run` installs every driver, and a missing one is a failure here, not a skip.
//!
//! No check is skipped or gated: every driver passes all of its checks with no special
//! setting. psql and tokio-postgres are in the matrix too (driven from here); pgbench in all
//! three query modes is `pgbench.rs`.

use pgshard_tests::{Standalone, TestCluster, TestClusterOptions, TestRouter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest a driver program may run before the test gives up on it (it is killed).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// Where `.ci/run` unpacks Debian's node-pg when `node` is not Debian's own.
const NODE_PG_DIR: &str = "/opt/pgshard-ci/node-pg/usr/share/nodejs";
/// Debian's pgjdbc.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A router on a fresh 2-shard cluster (no table declared: the drivers create and
/// distribute their own) and a plain PostgreSQL to compare with.
struct Rig {
    cluster: TestCluster,
    router: TestRouter,
    plain: Standalone,
}

impl Rig {
    async fn start() -> anyhow::Result<Rig> {
        let cluster = TestCluster::start(TestClusterOptions {
            shards: 2,
            replicas: 0,
            ..Default::default()
        })
        .await?;
        let router = TestRouter::start(&cluster).await?;
        let plain = Standalone::start().await?;
        Ok(Rig {
            cluster,
            router,
            plain,
        })
    }

    /// Like [`Rig::start`] with a streaming replica per shard and the router reading
    /// from any node (`read_from = any`, SPEC §8). `synchronous_commit = remote_apply`
    /// makes every acknowledged commit visible on the (only, synchronous) replica, so
    /// replica reads may not differ from PostgreSQL's answers at all.
    async fn start_read_from_any() -> anyhow::Result<Rig> {
        let cluster = TestCluster::start(TestClusterOptions {
            shards: 2,
            replicas: 1,
            postgres: [("synchronous_commit".to_string(), "remote_apply".to_string())].into(),
            ..Default::default()
        })
        .await?;
        let mut config = cluster.config().router.clone();
        config.read_from = pgshard_catalog::config::ReadFrom::Any;
        let router = TestRouter::start_with(&cluster, config).await?;
        let plain = Standalone::start().await?;
        Ok(Rig {
            cluster,
            router,
            plain,
        })
    }

    fn ports(&self) -> [String; 2] {
        [
            self.router.port().to_string(),
            self.plain.port().to_string(),
        ]
    }

    /// The driver's rows of `table` really were spread: some on each shard, and as
    /// many in all as on the plain PostgreSQL.
    async fn assert_spread(&self, table: &str) -> anyhow::Result<()> {
        let sql = format!("SELECT count(*) FROM {table}");
        let mut total = 0;
        for name in ["shard1-node1", "shard2-node1"] {
            let n: i64 = self
                .cluster
                .connect_node(name)
                .await?
                .query_one(&sql, &[])
                .await?
                .get(0);
            assert!(n > 0, "no row of {table} on {name}");
            total += n;
        }
        let plain: i64 = self
            .plain
            .connect()
            .await?
            .query_one(&sql, &[])
            .await?
            .get(0);
        assert_eq!(
            total, plain,
            "{table}: rows on the shards vs plain PostgreSQL"
        );
        Ok(())
    }
}

/// Run a driver program to completion (killed if it outlives [`DRIVER_TIMEOUT`]) and
/// assert that it succeeded and printed `OK`; its output is printed either way, so a
/// run with `--nocapture` lists every check.
async fn run_driver(
    what: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(cwd).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DRIVER_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{what}: still running after {DRIVER_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{what}: could not run {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}\n{what}: {:.1?}", started.elapsed());
    assert!(
        out.status.success() && text.lines().any(|l| l == "OK"),
        "{what} failed ({}):\n{text}",
        out.status
    );
    Ok(())
}

/// psycopg 3: text and binary results, prepared statements, pipeline mode,
/// executemany, COPY, server-side cursors, transactions, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_matrix() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let [r, p] = rig.ports();
    let dir = tests_dir().join("python");
    run_driver(
        "psycopg",
        "python3",
        &["psycopg_matrix.py", &r, &p],
        &[],
        &dir,
    )
    .await?;
    rig.assert_spread("accounts").await
}

/// The psycopg matrix with `read_from = any` on a cluster with replicas: the same
/// checks pass with reads spread over primaries and replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_matrix_read_from_any() -> anyhow::Result<()> {
    let rig = Rig::start_read_from_any().await?;
    let [r, p] = rig.ports();
    let dir = tests_dir().join("python");
    run_driver(
        "psycopg (read_from = any)",
        "python3",
        &["psycopg_matrix.py", &r, &p],
        &[],
        &dir,
    )
    .await?;
    // Some of its reads really were served by replicas.
    let admin = rig.router.connect_admin().await?;
    let mut replica_reads = 0u64;
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            if row.get("role") == Some("replica") {
                replica_reads += row.get("reads").unwrap_or("0").parse::<u64>()?;
            }
        }
    }
    println!("psycopg (read_from = any): {replica_reads} reads on replicas");
    assert!(replica_reads > 0);
    rig.assert_spread("accounts").await
}

/// asyncpg: prepared statements, executemany, cursors in transactions,
/// copy_records_to_table, transactions, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_matrix() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let [r, p] = rig.ports();
    let dir = tests_dir().join("python");
    run_driver(
        "asyncpg",
        "python3",
        &["asyncpg_matrix.py", &r, &p],
        &[],
        &dir,
    )
    .await?;
    rig.assert_spread("accounts").await
}

/// pgjdbc (Debian's libpostgresql-jdbc-java), compiled at test time: PreparedStatement,
/// executeBatch, setFetchSize cursors, reWriteBatchedInserts, transactions, DDL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_matrix() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let [r, p] = rig.ports();
    let classes = pgshard_tests::dirs::temp_dir("jdbc")?;
    let classes_dir = classes.path().to_string_lossy().into_owned();
    let source = tests_dir().join("java/JdbcMatrix.java");
    run_javac(&source, &classes_dir).await?;
    let cp = format!("{classes_dir}:{PGJDBC_JAR}");
    run_driver(
        "pgjdbc",
        "java",
        &["-cp", &cp, "JdbcMatrix", &r, &p],
        &[],
        &tests_dir(),
    )
    .await?;
    rig.assert_spread("accounts").await
}

async fn run_javac(source: &Path, out_dir: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("javac")
        .args(["-cp", PGJDBC_JAR, "-d", out_dir])
        .arg(source)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("could not run javac (.ci/run installs a JDK): {e}"))?;
    assert!(
        out.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// node-postgres (Debian's node-pg with pg-cursor): parameterized queries, cursors,
/// transactions, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_matrix() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let [r, p] = rig.ports();
    let node_path = format!("{NODE_PG_DIR}:/usr/share/nodejs:/usr/lib/nodejs");
    run_driver(
        "node-pg",
        "node",
        &["node_pg_matrix.js", &r, &p],
        &[("NODE_PATH", &node_path)],
        &tests_dir().join("node"),
    )
    .await
}

/// One value exactly as the server sent it (tokio-postgres asks for binary results), so
/// rows from the router and from plain PostgreSQL compare byte for byte whatever the type.
#[derive(Debug, PartialEq)]
struct Raw(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Owned query parameters.
type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// Rows as (column name, type) headers and raw values.
type RawRows = (Vec<(String, u32)>, Vec<Vec<Raw>>);

fn raw_rows(rows: &[tokio_postgres::Row]) -> anyhow::Result<RawRows> {
    let header = rows
        .first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_().oid()))
                .collect()
        })
        .unwrap_or_default();
    let values = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.try_get::<_, Raw>(i)).collect())
        .collect::<Result<_, _>>()?;
    Ok((header, values))
}

/// The outcome of each check of a Rust-driven matrix entry (the scripts keep their own).
struct Checks {
    driver: &'static str,
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn new(driver: &'static str) -> Checks {
        Checks {
            driver,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// Record a check's result; true when it failed.
    fn record(&mut self, name: &str, result: anyhow::Result<()>) -> bool {
        match result {
            Ok(()) => {
                println!("ok    {}: {name}", self.driver);
                self.passed += 1;
                false
            }
            Err(e) => {
                println!("FAIL  {}: {name}: {e:#}", self.driver);
                self.failed.push(name.to_owned());
                true
            }
        }
    }

    fn finish(self) {
        println!(
            "{}: {} passed, {} failed",
            self.driver,
            self.passed,
            self.failed.len()
        );
        assert!(
            self.failed.is_empty(),
            "{}: failed {:?}",
            self.driver,
            self.failed
        );
    }
}

fn expect_same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> anyhow::Result<()> {
    anyhow::ensure!(
        got == want,
        "{what}: router gave {got:?}, plain PostgreSQL {want:?}"
    );
    Ok(())
}

/// tokio-postgres: every query a named prepared statement (Parse and Describe, then
/// Bind and Execute), binary results compared byte for byte, transactions, portals
/// read in batches, errors with their SQLSTATEs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_matrix() -> anyhow::Result<()> {
    use tokio_postgres::types::ToSql;
    let started = Instant::now();
    let rig = Rig::start().await?;
    let mut r = rig.router.connect().await?;
    let mut p = rig.plain.connect().await?;
    let mut checks = Checks::new("tokio-postgres");
    let schema = "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, \
                  balance numeric(12,2) NOT NULL CHECK (balance >= 0), region int NOT NULL, created date);
                  CREATE TABLE events (account_id bigint NOT NULL, seq int NOT NULL, kind text, \
                  amount int, PRIMARY KEY (account_id, seq));";
    r.batch_execute(schema).await?;
    p.batch_execute(schema).await?;
    let distribute = [
        "SELECT create_distributed_table('accounts', 'id')",
        "SELECT create_distributed_table('events', 'account_id', colocate_with => 'accounts')",
    ];
    let name = "create_distributed_table (prepared: extended protocol)";
    let result = async {
        for sql in distribute {
            r.query(sql, &[]).await?;
        }
        Ok(())
    }
    .await;
    if checks.record(name, result) {
        let result = async {
            for sql in distribute {
                r.simple_query(sql).await?;
            }
            Ok(())
        }
        .await;
        checks.record("create_distributed_table (simple protocol)", result);
    }

    let name = "load: prepared INSERTs in one multi-shard transaction";
    let result = async {
        for c in [&mut r, &mut p] {
            let t = c.transaction().await?;
            let acc = t
                .prepare(
                    "INSERT INTO accounts (id, owner, balance, region, created) \
                          VALUES ($1, $2, $3::text::numeric, $4, $5::text::date)",
                )
                .await?;
            let ev = t
                .prepare(
                    "INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, $2, $3, $4)",
                )
                .await?;
            for i in 1..=200i64 {
                let balance = format!("{}.50", i * 37 % 1000);
                let created = format!("2024-01-{:02}", 1 + i % 30);
                let region = (i % 5) as i32;
                t.execute(
                    &acc,
                    &[&i, &format!("owner {i}"), &balance, &region, &created],
                )
                .await?;
                for s in 1..=3i32 {
                    let kind = ["deposit", "fee", "transfer"][((i + i64::from(s)) % 3) as usize];
                    let amount = ((i * i64::from(s)) % 50 - 10) as i32;
                    t.execute(&ev, &[&i, &s, &kind, &amount]).await?;
                }
            }
            t.commit().await?;
        }
        Ok(())
    }
    .await;
    checks.record(name, result);

    let reads: [(&str, &str, Params); 10] = [
        (
            "point read",
            "SELECT id, owner, balance, region, created FROM accounts WHERE id = $1",
            vec![Box::new(17i64)],
        ),
        (
            "point read, other shard",
            "SELECT owner, balance FROM accounts WHERE id = $1",
            vec![Box::new(123i64)],
        ),
        (
            "co-located point join",
            "SELECT a.owner, e.seq, e.kind, e.amount FROM accounts a JOIN events e \
            ON e.account_id = a.id WHERE a.id = $1 ORDER BY e.seq",
            vec![Box::new(42i64)],
        ),
        ("fan-out count", "SELECT count(*) FROM accounts", vec![]),
        (
            "fan-out aggregates",
            "SELECT count(*), sum(balance), min(balance), max(owner), avg(region) FROM accounts",
            vec![],
        ),
        (
            "fan-out sum with parameter",
            "SELECT sum(amount) FROM events WHERE amount > $1",
            vec![Box::new(0i32)],
        ),
        (
            "fan-out ORDER BY LIMIT",
            "SELECT id, owner, balance FROM accounts WHERE region = $1 \
            ORDER BY balance DESC, id LIMIT 7",
            vec![Box::new(3i32)],
        ),
        (
            "fan-out GROUP BY ORDER BY",
            "SELECT region, count(*), sum(balance), avg(balance) FROM accounts \
            GROUP BY region ORDER BY region",
            vec![],
        ),
        (
            "fan-out co-located join GROUP BY",
            "SELECT a.region, count(*), sum(e.amount) FROM accounts a \
            JOIN events e ON e.account_id = a.id GROUP BY a.region ORDER BY a.region",
            vec![],
        ),
        (
            "key IN list",
            "SELECT id, region FROM accounts WHERE id IN (1, 2, 3, 150, 199) ORDER BY id",
            vec![],
        ),
    ];
    for (name, sql, params) in &reads {
        let name = format!("query: {name}");
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let result = async {
            let got = raw_rows(&r.query(*sql, &params).await?)?;
            anyhow::ensure!(!got.1.is_empty(), "{sql}: no rows");
            expect_same(sql, got, raw_rows(&p.query(*sql, &params).await?)?)
        }
        .await;
        if checks.record(&name, result) {
            r = rig.router.connect().await?;
        }
    }

    for (name, sql) in [
        (
            "portal read in batches, one shard",
            "SELECT seq, kind FROM events WHERE account_id = 9 ORDER BY seq",
        ),
        (
            "portal read in batches, every shard",
            "SELECT id, owner FROM accounts WHERE region = 4 ORDER BY id",
        ),
    ] {
        let result = async {
            let mut all = Vec::new();
            for c in [&mut r, &mut p] {
                let t = c.transaction().await?;
                let portal = t.bind(sql, &[]).await?;
                let mut rows = Vec::new();
                loop {
                    let batch = t.query_portal(&portal, 2).await?;
                    if batch.is_empty() {
                        break;
                    }
                    rows.extend(batch);
                }
                t.commit().await?;
                all.push(raw_rows(&rows)?);
            }
            anyhow::ensure!(!all[0].1.is_empty(), "{sql}: no rows");
            let plain = all.pop();
            expect_same(sql, all.pop(), plain)
        }
        .await;
        if checks.record(name, result) {
            r = rig.router.connect().await?;
        }
    }

    let name = "multi-shard transaction: commit and rollback";
    let result = async {
        for c in [&mut r, &mut p] {
            let t = c.transaction().await?;
            t.execute(
                "UPDATE accounts SET region = $1 WHERE id = $2",
                &[&9i32, &1i64],
            )
            .await?;
            t.execute(
                "UPDATE accounts SET region = $1 WHERE id = $2",
                &[&9i32, &2i64],
            )
            .await?;
            t.execute(
                "UPDATE accounts SET region = $1 WHERE id = $2",
                &[&9i32, &3i64],
            )
            .await?;
            t.commit().await?;
            let t = c.transaction().await?;
            t.execute("DELETE FROM accounts WHERE id = $1", &[&4i64])
                .await?;
            t.execute("DELETE FROM accounts WHERE id = $1", &[&5i64])
                .await?;
            t.rollback().await?;
        }
        let sql = "SELECT id, region FROM accounts WHERE id = $1";
        for id in 1..=5i64 {
            expect_same(
                sql,
                raw_rows(&r.query(sql, &[&id]).await?)?,
                raw_rows(&p.query(sql, &[&id]).await?)?,
            )?;
        }
        Ok(())
    }
    .await;
    checks.record(name, result);

    for (sql, params, want) in [
        (
            "INSERT INTO accounts (id, owner, balance, region) VALUES ($1, 'x', 1, 0)",
            Some(5i64),
            "23505",
        ),
        (
            "UPDATE accounts SET balance = -1 WHERE id = $1",
            Some(6i64),
            "23514",
        ),
        (
            "SELECT * FROM no_such_table WHERE id = $1",
            Some(1i64),
            "42P01",
        ),
        ("SELECT no_such_column FROM accounts", None, "42703"),
        (
            "SELECT sum(1 / (region - region)) FROM accounts",
            None,
            "22012",
        ),
        ("SELEC 1", None, "42601"),
    ] {
        let name = format!("error {want}: {sql}");
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let result = async {
            let mut codes = Vec::new();
            for c in [&r, &p] {
                codes.push(
                    c.query(sql, &params)
                        .await
                        .err()
                        .and_then(|e| e.code().map(|c| c.code().to_owned())),
                );
            }
            expect_same(sql, &codes[0], &codes[1])?;
            expect_same(sql, codes[0].as_deref(), Some(want))
        }
        .await;
        if checks.record(&name, result) {
            r = rig.router.connect().await?;
        }
    }
    println!("tokio-postgres: {:.1?}", started.elapsed());
    checks.finish();
    rig.assert_spread("accounts").await
}

/// psql: the same script (tests/psql/matrix.sql: bulk load with COPY, DDL, `\d`, point
/// and fan-out reads, PREPARE/EXECUTE, transactions, errors) through the router and
/// against plain PostgreSQL, the two outputs identical line for line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_matrix() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let schema = "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, \
                  balance numeric(12,2) NOT NULL CHECK (balance >= 0), region int NOT NULL, created date);
                  CREATE TABLE events (account_id bigint NOT NULL, seq int NOT NULL, kind text, \
                  amount int, PRIMARY KEY (account_id, seq));";
    rig.plain.connect().await?.batch_execute(schema).await?;
    let router = rig.router.connect().await?;
    router.batch_execute(schema).await?;
    for sql in [
        "SELECT create_distributed_table('accounts', 'id')",
        "SELECT create_distributed_table('events', 'account_id', colocate_with => 'accounts')",
    ] {
        router.simple_query(sql).await?;
    }
    let script = tests_dir().join("psql/matrix.sql");
    let started = Instant::now();
    let mut outputs = Vec::new();
    for port in [rig.router.port(), rig.plain.port()] {
        outputs.push(psql_output(port, &script).await?);
    }
    println!("{}\npsql: {:.1?}", outputs[0], started.elapsed());
    assert!(
        outputs[0].contains("events with a note: 486"),
        "{}",
        outputs[0]
    );
    let (router, plain) = (outputs[0].lines(), outputs[1].lines());
    for (n, (got, want)) in router.zip(plain).enumerate() {
        assert_eq!(got, want, "line {} of psql's output differs", n + 1);
    }
    assert_eq!(outputs[0].lines().count(), outputs[1].lines().count());
    rig.assert_spread("accounts").await
}

/// psql's output of `script` (stdout and stderr on one pipe, so in order).
async fn psql_output(port: u16, script: &Path) -> anyhow::Result<String> {
    let psql = pgshard_shardd::runtime::local::find_pg_bin_dir(
        std::env::var_os("PGSHARD_PG_BIN_DIR")
            .map(PathBuf::from)
            .as_deref(),
    )?
    .join("psql");
    let cmd = format!(
        "exec '{}' -X -h 127.0.0.1 -p {port} -U postgres -d postgres -f '{}' 2>&1",
        psql.display(),
        script.display()
    );
    let out = tokio::time::timeout(
        DRIVER_TIMEOUT,
        tokio::process::Command::new("sh")
            .args(["-c", &cmd])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("psql still running after {DRIVER_TIMEOUT:?}"))??;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A schema migration through a driver on the extended protocol: several tables,
/// distributed and co-located, a reference table, indexes and constraints, then the
/// schema compared with the plain PostgreSQL's and the constraints exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_through_a_driver() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let [r, p] = rig.ports();
    let dir = tests_dir().join("python");
    run_driver("migration", "python3", &["migration.py", &r, &p], &[], &dir).await?;
    // Every shard holds the whole migrated schema, exactly as the plain server does.
    let plain = rig.plain.connect().await?;
    for sql in SCHEMA_QUERIES {
        let want = text_rows(&plain, sql).await?;
        assert!(!want.is_empty(), "{sql}: nothing on the plain server");
        for name in ["shard1-node1", "shard2-node1"] {
            let got = text_rows(&rig.cluster.connect_node(name).await?, sql).await?;
            assert_eq!(got, want, "{name}: {sql}");
        }
    }
    rig.assert_spread("order_lines").await
}

/// A migrated schema as PostgreSQL's catalogs describe it.
const SCHEMA_QUERIES: [&str; 3] = [
    "SELECT table_name, column_name, data_type, is_nullable, column_default \
     FROM information_schema.columns WHERE table_schema = 'public' \
     ORDER BY table_name, ordinal_position",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint \
     WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
];

/// Every row of a simple-protocol query, as text.
async fn text_rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The first driver test: psycopg on tables declared in the cluster's configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_the_router() -> anyhow::Result<()> {
    let cluster = TestCluster::start(TestClusterOptions {
        shards: 2,
        replicas: 0,
        tables: vec![
            pgshard_tests::distributed("py_users", "id", "bigint"),
            pgshard_tests::distributed("py_batch", "id", "bigint"),
        ],
        ..Default::default()
    })
    .await?;
    let router = TestRouter::start(&cluster).await?;
    let script = format!("{}/python/psycopg_driver.py", env!("CARGO_MANIFEST_DIR"));
    let port = router.port().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&port)
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
        "psycopg script failed:\n{text}"
    );
    // The rows went to both shards.
    let mut total = 0;
    for name in ["shard1-node1", "shard2-node1"] {
        let n: i64 = cluster
            .connect_node(name)
            .await?
            .query_one("SELECT count(*) FROM py_users", &[])
            .await?
            .get(0);
        assert!(n > 0, "no rows on {name}");
        total += n;
    }
    assert_eq!(total, 50);
    Ok(())
}

//! The router driven by PostgreSQL's own tools: psql (including `\d`) and pgbench
//! (`-i`, then select-only with `-M prepared` and more clients than backends).

mod common;

use common::Env;
use std::process::Command;

fn psql(env: &Env, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &env.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_through_the_router() {
    let env = Env::start(2).await;
    let out = tokio::task::spawn_blocking({
        let port = env.port();
        move || {
            let run = |sql: &str| {
                Command::new("psql")
                    .args([
                        "-X",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-c",
                        sql,
                    ])
                    .output()
                    .expect("run psql")
            };
            let create = run("CREATE TABLE pt (id int PRIMARY KEY, name text)");
            let insert = run("INSERT INTO pt VALUES (1, 'one'), (2, 'two')");
            let select = run("SELECT name FROM pt ORDER BY id");
            let d = run("\\d pt");
            let dt = run("\\dt");
            let err = run("SELECT * FROM nope");
            (create, insert, select, d, dt, err)
        }
    })
    .await
    .expect("psql thread");
    let (create, insert, select, d, dt, err) = out;
    for o in [&create, &insert, &select, &d, &dt] {
        assert!(
            o.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let s = String::from_utf8_lossy(&select.stdout);
    assert!(
        s.contains("one") && s.contains("two") && s.contains("(2 rows)"),
        "{s}"
    );
    let s = String::from_utf8_lossy(&d.stdout);
    assert!(
        s.contains("Table \"public.pt\"") && s.contains("pt_pkey"),
        "{s}"
    );
    let s = String::from_utf8_lossy(&dt.stdout);
    assert!(s.contains("pt"), "{s}");
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("does not exist"));
    let _ = psql(&env, "SELECT 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_prepared_with_small_pool() {
    let env = Env::start(4).await;
    let port = env.port().to_string();
    let (init, run) = tokio::task::spawn_blocking(move || {
        let init = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-i",
                "-s",
                "1",
                "postgres",
            ])
            .output()
            .expect("pgbench -i");
        let run = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-S",
                "-M",
                "prepared",
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                "5",
                "postgres",
            ])
            .output()
            .expect("pgbench -S");
        (init, run)
    })
    .await
    .expect("pgbench thread");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench: {out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(tps > 100.0, "{out}");
    eprintln!("pgbench -S -M prepared -c 16 through the router (pool 4): {tps} tps");
    let (_, in_use, waiting) = env.wait_pools_idle().await;
    assert_eq!((in_use, waiting), (0, 0));
}

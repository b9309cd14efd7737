//! A quick comparison, not a test of correctness: pgbench select-only straight to
//! PostgreSQL and through the router, in each protocol mode. Ignored by default; run with
//! `cargo test --release -p pgshard-router --test bench -- --ignored --nocapture`.
//! (The project's benchmarks, with PgBouncer, live in `bench/`.)

mod common;

use common::Env;
use std::process::Command;

fn pgbench_tps(port: u16, args: &[&str]) -> f64 {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    all.extend_from_slice(args);
    all.push("postgres");
    let out = Command::new("pgbench")
        .args(&all)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    text.lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn pgbench_select_only_direct_vs_router() {
    let clients: &str = &std::env::var("BENCH_CLIENTS").unwrap_or_else(|_| "8".into());
    let secs: &str = &std::env::var("BENCH_SECONDS").unwrap_or_else(|_| "10".into());
    let env = Env::start(8).await;
    let direct = env.shards[0].port();
    let router = env.port();
    let (clients, secs) = (clients.to_string(), secs.to_string());
    let bouncer = PgBouncer::start(direct);
    let bouncer_port = bouncer.as_ref().map(|b| b.port);
    tokio::task::spawn_blocking(move || {
        let init = Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &direct.to_string(),
                "-U",
                "postgres",
                "-i",
                "-s",
                "1",
                "-q",
                "postgres",
            ])
            .output()
            .expect("pgbench -i");
        assert!(init.status.success());
        for mode in ["simple", "extended", "prepared"] {
            let args = ["-S", "-M", mode, "-c", &clients, "-j", "2", "-T", &secs];
            let d = pgbench_tps(direct, &args);
            let r = pgbench_tps(router, &args);
            // PgBouncer < 1.21 cannot pool named prepared statements.
            let b = bouncer_port.filter(|_| mode != "prepared").map(|p| pgbench_tps(p, &args));
            eprintln!(
                "select-only -M {mode} -c {clients}: direct {d:.0} tps, router {r:.0} tps ({:.2}x direct){}",
                r / d,
                b.map(|b| format!(", pgbouncer {b:.0} tps (router {:.2}x pgbouncer)", r / b)).unwrap_or_default()
            );
        }
    })
    .await
    .expect("bench thread");
}

/// PgBouncer (the Debian package), transaction pooling, 8 server connections, when
/// installed.
struct PgBouncer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(pg_port: u16) -> Option<PgBouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").ok()?;
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\nauth_file = {}/users.txt\npool_mode = transaction\ndefault_pool_size = 8\nunix_socket_dir =\nlogfile = {}/pgbouncer.log\nignore_startup_parameters = extra_float_digits\n",
                dir.path().display(),
                dir.path().display()
            ),
        )
        .ok()?;
        let _ = Command::new("chown")
            .args(["-R", "postgres", &dir.path().display().to_string()])
            .status();
        // PgBouncer refuses to run as root; -u switches user after startup, and keeps
        // the process ours to kill.
        let child = Command::new(bin)
            .args(["-u", "postgres", &ini.display().to_string()])
            .spawn()
            .ok()?;
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(PgBouncer {
                    port,
                    child,
                    _dir: dir,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

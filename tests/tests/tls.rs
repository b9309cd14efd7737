//! TLS between clients and the router (SPEC §6, "SSL negotiation"): a self-signed
//! certificate made at test time with rcgen, a router with `router.tls_cert` /
//! `router.tls_key`, and real clients: psql (libpq) with `sslmode=require` and
//! tokio-postgres with rustls; a client that stops reading in the middle of a large
//! answer still gets all of it. Also: a router without TLS refuses `sslmode=require` and
//! serves `sslmode=prefer` in the clear; CancelRequest reaches a query running over TLS,
//! whether the cancel comes in the clear or over TLS; bad negotiation (SSLRequest twice,
//! bytes after SSLRequest, garbage instead of a TLS handshake) ends only that
//! connection; and a missing key file stops the router at startup.

use pgshard_catalog::config::RouterConfig;
use pgshard_tests::{TestCluster, TestClusterOptions, TestRouter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
struct Cert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn make_cert() -> anyhow::Result<Cert> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let dir = tempfile::tempdir()?;
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key_pair.serialize_pem())?;
    Ok(Cert {
        der: cert.der().clone(),
        _dir: dir,
        cert: cert_path,
        key: key_path,
    })
}

fn tls_config(cluster: &TestCluster, cert: &Cert) -> RouterConfig {
    RouterConfig {
        tls_cert: Some(cert.cert.clone()),
        tls_key: Some(cert.key.clone()),
        ..cluster.config().router.clone()
    }
}

/// A rustls connector for tokio-postgres that trusts exactly `cert` (the hostname is
/// checked too: the certificate names 127.0.0.1).
fn connector(cert: &Cert) -> anyhow::Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(client_config(cert)?))
}

/// A rustls client configuration that trusts exactly `cert`.
fn client_config(cert: &Cert) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone())?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

async fn connect_tls(
    router: &TestRouter,
    mode: SslMode,
    tls: MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = router.connstr().parse()?;
    config.ssl_mode(mode);
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// psql with `sslmode`, running `command`; its exit status and all its output.
async fn psql(
    router: &TestRouter,
    sslmode: &str,
    root_cert: &Path,
    command: &str,
) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new("/usr/bin/psql")
        .arg(format!("{} sslmode={sslmode}", router.connstr()))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command])
        // A ~/.postgresql/root.crt would turn `require` into `verify-ca`: name ours.
        .env("PGSSLROOTCERT", root_cert)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn one_shard() -> TestClusterOptions {
    TestClusterOptions {
        shards: 1,
        replicas: 0,
        ..Default::default()
    }
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

fn startup_message() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// Everything the server sends until it closes the connection (bounded by a timeout).
async fn read_to_close(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await??;
    Ok(all)
}

/// The SQLSTATE of the first ErrorResponse in `bytes`.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let at = bytes.iter().position(|&b| b == b'E')?;
    let body = bytes.get(at + 5..)?;
    let mut fields = body.split(|&b| b == 0);
    fields.find_map(|f| {
        f.strip_prefix(b"C")
            .map(|c| String::from_utf8_lossy(c).into_owned())
    })
}

/// Waits for `query` on `client` to fail with `57014` (cancelled) while `cancel` runs.
async fn assert_cancelled(
    client: &tokio_postgres::Client,
    cancel: impl std::future::Future<Output = Result<(), tokio_postgres::Error>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let sleeping = client.simple_query("SELECT pg_sleep(30)");
    tokio::pin!(sleeping);
    // Let the query reach the shard before cancelling it.
    tokio::select! {
        r = &mut sleeping => anyhow::bail!("pg_sleep ended early: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    cancel.await?;
    let err = tokio::time::timeout(Duration::from_secs(15), sleeping)
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("pg_sleep was not cancelled"))?;
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The session goes on.
    let row = client.query_one("SELECT 1::int4", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    Ok(())
}

/// Reads messages from a raw protocol stream until ReadyForQuery; returns the DataRow count.
async fn read_until_ready<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<usize> {
    let mut rows = 0;
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_i32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        s.read_exact(&mut body).await?;
        match tag {
            b'D' => rows += 1,
            b'E' => anyhow::bail!("error: {}", String::from_utf8_lossy(&body)),
            b'Z' => return Ok(rows),
            _ => {}
        }
    }
}

/// A client that stops reading while a large answer comes back over TLS (the socket
/// fills up and rustls holds the rest), then reads again: it must get all of it,
/// ReadyForQuery included, without sending anything more.
async fn slow_reader_gets_everything(router: &TestRouter, cert: &Cert) -> anyhow::Result<()> {
    let config = client_config(cert)?;
    let mut tcp = TcpStream::connect(router.addr()).await?;
    tcp.write_all(&SSL_REQUEST).await?;
    assert_eq!(tcp.read_u8().await?, b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    s.write_all(&startup_message()).await?;
    s.flush().await?;
    read_until_ready(&mut s).await?;
    let sql = b"SELECT repeat('x', 1000) FROM generate_series(1, 20000)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    s.write_all(&query).await?;
    s.flush().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = tokio::time::timeout(Duration::from_secs(30), read_until_ready(&mut s)).await??;
    assert_eq!(rows, 20_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_router_serves_psql_tokio_postgres_and_cancel() -> anyhow::Result<()> {
    let cluster = TestCluster::start(one_shard()).await?;
    let cert = make_cert()?;
    let router = TestRouter::start_with(&cluster, tls_config(&cluster, &cert)).await?;

    // psql (libpq) with sslmode=require: the session is encrypted and answers queries.
    let (ok, text) = psql(&router, "require", &cert.cert, "\\conninfo").await?;
    assert!(
        ok && text.contains("SSL connection"),
        "psql \\conninfo:\n{text}"
    );
    let (ok, text) = psql(&router, "require", &cert.cert, "SELECT 40 + 2").await?;
    assert!(ok && text.trim() == "42", "psql over TLS:\n{text}");

    // tokio-postgres with rustls, sslmode=require, the certificate verified: DDL, writes
    // and reads round-trip, including a value far larger than one TLS record.
    let client = connect_tls(&router, SslMode::Require, connector(&cert)?).await?;
    client
        .batch_execute("CREATE TABLE tls_items (id bigint PRIMARY KEY, label text)")
        .await?;
    for i in 0..20i64 {
        client
            .execute(
                "INSERT INTO tls_items VALUES ($1, $2)",
                &[&i, &format!("item-{i}")],
            )
            .await?;
    }
    let rows = client
        .query("SELECT id, label FROM tls_items ORDER BY id", &[])
        .await?;
    assert_eq!(rows.len(), 20);
    assert_eq!(rows[7].get::<_, String>(1), "item-7");
    let big: String = client
        .query_one("SELECT repeat('x', 3000000)", &[])
        .await?
        .get(0);
    assert_eq!(big.len(), 3_000_000);

    slow_reader_gets_everything(&router, &cert).await?;

    // TLS stays optional: a plain client on the same router is served too.
    let plain = router.connect().await?;
    let n: i64 = plain
        .query_one("SELECT count(*) FROM tls_items", &[])
        .await?
        .get(0);
    assert_eq!(n, 20);

    // CancelRequest for a query running over TLS: in the clear (sslmode=prefer on the
    // session, NoTls for the cancel, as libpq's PQcancel does)…
    let prefer = connect_tls(&router, SslMode::Prefer, connector(&cert)?).await?;
    let token = prefer.cancel_token();
    assert_cancelled(&prefer, token.cancel_query(NoTls)).await?;
    // …and over TLS (tokio-postgres negotiates TLS for the cancel connection too).
    let token = client.cancel_token();
    let tls = connector(&cert)?;
    assert_cancelled(&client, token.cancel_query(tls)).await?;

    // Bad negotiation ends only its own connection.
    // SSLRequest with the StartupMessage pipelined behind it: refused in the clear.
    let mut s = TcpStream::connect(router.addr()).await?;
    let mut packet = SSL_REQUEST.to_vec();
    packet.extend_from_slice(&startup_message());
    s.write_all(&packet).await?;
    let got = read_to_close(&mut s).await?;
    assert_eq!(sqlstate(&got).as_deref(), Some("08P01"), "{got:?}");
    // Garbage where the TLS handshake should be: the connection is closed.
    let mut s = TcpStream::connect(router.addr()).await?;
    s.write_all(&SSL_REQUEST).await?;
    assert_eq!(s.read_u8().await?, b'S');
    s.write_all(b"this is not a TLS ClientHello\r\n\r\n")
        .await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await?;
    // GSSENCRequest is declined; SSLRequest may follow it (libpq's order).
    let mut s = TcpStream::connect(router.addr()).await?;
    s.write_all(&GSSENC_REQUEST).await?;
    assert_eq!(s.read_u8().await?, b'N');
    s.write_all(&SSL_REQUEST).await?;
    assert_eq!(s.read_u8().await?, b'S');
    drop(s);

    // The TLS sessions opened before all that still work.
    let n: i64 = client
        .query_one("SELECT count(*) FROM tls_items", &[])
        .await?
        .get(0);
    assert_eq!(n, 20);
    let (ok, text) = psql(
        &router,
        "require",
        &cert.cert,
        "SELECT count(*) FROM tls_items",
    )
    .await?;
    assert!(ok && text.trim() == "20", "psql after bad clients:\n{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_without_tls_declines_and_bad_files_stop_startup() -> anyhow::Result<()> {
    let cluster = TestCluster::start(one_shard()).await?;
    let cert = make_cert()?;
    let router = TestRouter::start(&cluster).await?;

    // sslmode=require fails (psql and tokio-postgres), sslmode=prefer falls back to plain.
    let (ok, text) = psql(&router, "require", &cert.cert, "SELECT 1").await?;
    assert!(
        !ok && text.contains("server does not support SSL"),
        "psql sslmode=require without TLS:\n{text}"
    );
    let (ok, text) = psql(&router, "prefer", &cert.cert, "\\conninfo").await?;
    assert!(
        ok && !text.contains("SSL connection"),
        "psql prefer:\n{text}"
    );
    let err = connect_tls(&router, SslMode::Require, connector(&cert)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("sslmode=require connected without TLS"))?;
    assert!(err.to_string().contains("TLS"), "{err}");
    let client = connect_tls(&router, SslMode::Prefer, connector(&cert)?).await?;
    let row = client.query_one("SELECT 'plain'::text", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "plain");

    // SSLRequest twice: the second is a protocol violation, for that connection alone.
    let mut s = TcpStream::connect(router.addr()).await?;
    s.write_all(&SSL_REQUEST).await?;
    assert_eq!(s.read_u8().await?, b'N');
    s.write_all(&SSL_REQUEST).await?;
    let got = read_to_close(&mut s).await?;
    assert_eq!(sqlstate(&got).as_deref(), Some("08P01"), "{got:?}");
    let row = client.query_one("SELECT 'still here'::text", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "still here");

    // A missing key file, or a key that is not PEM, stops the router at startup with
    // the config key and the path in the message.
    let mut bad = tls_config(&cluster, &cert);
    let missing = cert.key.with_file_name("missing.key");
    bad.tls_key = Some(missing.clone());
    let err = TestRouter::start_with(&cluster, bad)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("router started with a missing key"))?;
    let text = format!("{err:#}");
    assert!(
        text.contains("router.tls_key") && text.contains(&missing.display().to_string()),
        "{text}"
    );
    let mut bad = tls_config(&cluster, &cert);
    bad.tls_cert = Some(cert.key.clone());
    let text = format!(
        "{:#}",
        TestRouter::start_with(&cluster, bad)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("router started with a key as its certificate"))?
    );
    assert!(text.contains("router.tls_cert"), "{text}");
    Ok(())
}

/// `router.tls_required`: a client that does not negotiate TLS is refused with FATAL
/// 28000 naming the setting (as PostgreSQL's hostssl-only pg_hba.conf refuses it);
/// TLS clients are served; a CancelRequest in the clear still works (libpq sends it
/// so). Without a certificate the setting is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plain_clients() -> anyhow::Result<()> {
    let cluster = TestCluster::start(one_shard()).await?;
    let cert = make_cert()?;
    let router = TestRouter::start_with(
        &cluster,
        RouterConfig {
            tls_required: true,
            ..tls_config(&cluster, &cert)
        },
    )
    .await?;
    let (ok, text) = psql(&router, "disable", &cert.cert, "SELECT 1").await?;
    assert!(
        !ok && text.contains("TLS is required") && text.contains("router.tls_required"),
        "psql sslmode=disable:\n{text}"
    );
    let (ok, text) = psql(&router, "require", &cert.cert, "\\conninfo").await?;
    assert!(
        ok && text.contains("SSL connection"),
        "psql require:\n{text}"
    );
    let mut s = TcpStream::connect(router.addr()).await?;
    s.write_all(&startup_message()).await?;
    let got = read_to_close(&mut s).await?;
    assert_eq!(sqlstate(&got).as_deref(), Some("28000"), "{got:?}");
    let client = connect_tls(&router, SslMode::Require, connector(&cert)?).await?;
    let row = client.query_one("SELECT 'tls'::text", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "tls");

    let mut config = cluster.config().clone();
    config.router.tls_required = true;
    let text = toml::to_string(&config)?;
    let err = pgshard_catalog::Config::parse(&text)
        .err()
        .ok_or_else(|| anyhow::anyhow!("tls_required without a certificate accepted"))?;
    assert!(err.to_string().contains("router.tls_required"), "{err}");
    Ok(())
}

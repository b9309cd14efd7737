//! End-to-end tests of cluster bootstrap and the harness, against real PostgreSQL.

use pgshard_tests::Standalone;

#[tokio::test]
async fn standalone_serves_and_stops_on_drop() {
    let pg = Standalone::start().await.expect("standalone starts");
    let client = pg.connect().await.expect("connect");
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int, current_setting('lc_collate'), current_setting('server_encoding')", &[])
        .await
        .expect("query");
    let version: i32 = row.get(0);
    assert!((150000..160000).contains(&version), "version {version}");
    assert_eq!(row.get::<_, String>(1), "C.UTF-8");
    assert_eq!(row.get::<_, String>(2), "UTF8");
    let pid = pg.pid().await.expect("pid").expect("running");
    drop(client);
    drop(pg);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster {pid} survived drop"
    );
}

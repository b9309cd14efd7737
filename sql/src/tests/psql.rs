//! psql's describe queries (`\d`, `\dt`, `\l`, `\d t`, `\dn`, `\df`, `\du`, `\di`,
//! `\dv`, `\ds`, `\dx`, `\d+ t`, `\dt+`, `\dT`, `\db`, `\dp`), captured with `psql -E`
//! from PostgreSQL 15 (SPEC §5 rule 7). They read only pg_catalog, so they go to the
//! local shard, the one shard whose catalog also lists the local tables.

use super::*;

const DESCRIBE: &str = include_str!("psql_describe.sql");

#[test]
fn psql_describe_queries_go_to_the_local_shard() {
    let queries: Vec<&str> = DESCRIBE
        .split("-- @@@@")
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .collect();
    assert!(queries.len() >= 30, "{}", queries.len());
    for q in queries {
        // Each must parse (not just fall back) and be routed as a catalog read.
        assert!(
            crate::parse::parse_statement(q).is_ok(),
            "sqlparser rejects psql query:\n{q}"
        );
        let pl = p(q);
        assert_eq!(pl.route, Route::Shard(LOCAL), "{q}");
        assert_eq!(pl.kind, StatementKind::Read, "{q}");
    }
}

#[test]
fn psql_startup_and_misc() {
    check_all(&[
        // psql's tab completion and \conninfo-style queries.
        ("SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p') AND substring(pg_catalog.quote_ident(c.relname),1,3)='acc' AND pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000", E::Local),
        ("SELECT pg_catalog.pg_is_in_recovery()", E::Any),
        ("SELECT current_database(), current_user, version()", E::Any),
        ("SELECT d.datname FROM pg_catalog.pg_database d ORDER BY 1", E::Local),
        ("SELECT c.oid::regclass FROM pg_class c WHERE c.relname = 'accounts'", E::Local),
    ]);
}

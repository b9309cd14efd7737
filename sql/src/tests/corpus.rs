//! Planner fixes found by the differential corpus `tests/corpus/app.sql`: each case
//! was a wrong answer through a 2-shard cluster before the fix.

use super::p;
use crate::{MergePlan, Route};

fn merge(sql: &str) -> MergePlan {
    match p(sql).route {
        Route::Fanout(f) => f.merge,
        other => panic!("{sql}: expected a fan-out, got {other:?}"),
    }
}

/// The key of an outer join's nullable side is NULL in the NULL-extended rows, and
/// every shard produces some: a GROUP BY, DISTINCT or window PARTITION BY on that key
/// does not keep its NULL group on one shard, so the router must finish (or refuse),
/// never stream the shards' groups.
#[test]
fn nullable_side_key_does_not_group_on_one_shard() {
    for sql in [
        "SELECT e.user_id, count(*) FROM users u LEFT JOIN events e ON e.user_id = u.id GROUP BY e.user_id",
        "SELECT e.user_id, count(*) FROM events e RIGHT JOIN users u ON e.user_id = u.id GROUP BY e.user_id",
        "SELECT u.id, count(*) FROM users u FULL JOIN events e ON e.user_id = u.id GROUP BY u.id",
    ] {
        assert!(
            matches!(merge(sql), MergePlan::Finish(_)),
            "{sql}: grouped rows of a nullable side must be finished"
        );
    }
    // The preserved side's key still groups on one shard.
    for sql in [
        "SELECT u.id, count(*) FROM users u LEFT JOIN events e ON e.user_id = u.id GROUP BY u.id",
        "SELECT u.id, count(*) FROM events e RIGHT JOIN users u ON e.user_id = u.id GROUP BY u.id",
    ] {
        assert!(matches!(merge(sql), MergePlan::Stream(_)), "{sql}");
    }
    // A window partitioned by the nullable side's key is not shard-local.
    let sql = "SELECT u.id, count(*) OVER (PARTITION BY e.user_id) FROM users u LEFT JOIN events e ON e.user_id = u.id";
    assert!(
        matches!(p(sql).route, Route::Unsupported(_)) || collected(sql),
        "{sql}: {:?}",
        p(sql).route
    );
    // Nor is an aggregate in a subquery grouped by it.
    let sql = "SELECT max(n) FROM (SELECT e.user_id, count(*) AS n FROM users u LEFT JOIN events e ON e.user_id = u.id GROUP BY e.user_id) s";
    assert!(
        matches!(p(sql).route, Route::Unsupported(_)) || collected(sql),
        "{sql}: {:?}",
        p(sql).route
    );
}

/// sqlparser prints `- -3` as `--3`, a comment to PostgreSQL: the shard SQL of a
/// fan-out lost the rest of its line (an error, or another statement's answer).
#[test]
fn double_minus_is_not_printed_as_a_comment() {
    for (sql, want) in [
        (
            "SELECT id FROM users WHERE id = - -3",
            "SELECT id FROM users WHERE id = -(-3)",
        ),
        (
            "SELECT 5 - -1 AS x, id FROM users",
            "SELECT 5 - -1 AS x, id FROM users",
        ),
        (
            "SELECT - - -x AS y, id FROM users",
            "SELECT -(-(-x)) AS y, id FROM users",
        ),
    ] {
        let Route::Fanout(f) = p(sql).route else {
            panic!("{sql}: expected a fan-out, got {:?}", p(sql).route)
        };
        assert_eq!(f.shard_sql, want);
    }
    let Route::FanoutWrite(w) = p("UPDATE users SET x = - -x WHERE x > 0").route else {
        panic!("expected a multi-shard write")
    };
    assert!(!w.sql.contains("--"), "{}", w.sql);
}

/// The finishing query casts the collected values back to their types by name:
/// `bit` there means `bit(1)` (PostgreSQL's grammar), which cut `1111` to `1` in
/// `bit_or` over a `bit(4)` column.
#[test]
fn finishing_casts_keep_bit_lengths() {
    assert_eq!(crate::fanout::type_name(1560), Some("\"bit\""));
    // The other names the grammar rewrites are quoted or internal names too.
    assert_eq!(crate::fanout::type_name(18), Some("\"char\""));
    assert_eq!(crate::fanout::type_name(1042), Some("bpchar"));
}

/// `GROUP BY ()` became a select-list item `()` of the shard query: a syntax error on
/// the shards where PostgreSQL answers the grand total.
#[test]
fn empty_grouping_set_is_refused() {
    for sql in [
        "SELECT count(*) FROM users GROUP BY ()",
        "SELECT x, count(*) FROM users GROUP BY (), x",
    ] {
        match p(sql).route {
            Route::Unsupported(m) => assert!(m.contains("GROUP BY ()"), "{m}"),
            Route::Fanout(crate::FanoutPlan {
                merge: MergePlan::Collect(c),
                ..
            }) => assert!(c.reason.contains("GROUP BY ()"), "{}", c.reason),
            other => panic!("{sql}: expected 0A000, got {other:?}"),
        }
    }
}

/// A text column declared with a non-byte-order collation came back in byte order
/// from multi-shard ORDER BY, min/max and DISTINCT: such columns are refused in
/// declared tables (the planner does not see column collations at query time).
#[test]
fn non_bytewise_column_collations_are_refused_in_declared_tables() {
    for sql in [
        "CREATE TABLE users (id int, name text COLLATE \"und-x-icu\")",
        "CREATE TABLE branches (bid int, name text COLLATE \"en_US\")",
        "ALTER TABLE users ADD COLUMN lab text COLLATE \"de-x-icu\"",
        "ALTER TABLE accounts ADD COLUMN lab varchar(5) COLLATE pg_catalog.\"fr_FR\"",
    ] {
        match p(sql).route {
            Route::Unsupported(m) => assert!(m.contains("collation"), "{m}"),
            other => panic!("{sql}: expected 0A000, got {other:?}"),
        }
    }
    for sql in [
        "CREATE TABLE users (id int, name text COLLATE \"C\")",
        "ALTER TABLE users ADD COLUMN lab text COLLATE \"C.UTF-8\"",
        "ALTER TABLE users ADD COLUMN lab text",
    ] {
        assert_eq!(p(sql).route, Route::AllShards, "{sql}");
    }
    // Local tables may use any collation.
    assert!(matches!(
        p("CREATE TABLE mine (name text COLLATE \"und-x-icu\")").route,
        Route::Shard(_)
    ));
}

/// A unique index on customers(email) of a distributed table was created on every
/// shard, and two rows with the same email on different shards were both accepted
/// where PostgreSQL says 23505. Foreign keys whose referenced row may be on another
/// shard failed (or, with cascades, would act) per shard.
#[test]
fn constraints_the_shards_cannot_enforce_are_refused() {
    for sql in [
        "CREATE UNIQUE INDEX users_x ON users (x)",
        "CREATE UNIQUE INDEX users_lx ON users (lower(x))",
        "ALTER TABLE events ADD CONSTRAINT u UNIQUE (x, y)",
        "ALTER TABLE events ADD PRIMARY KEY (x)",
        "CREATE TABLE users (id int, email text UNIQUE)",
        "CREATE TABLE users (id int, email text PRIMARY KEY)",
        "CREATE TABLE users (id int, email text, UNIQUE (email))",
        "ALTER TABLE users ADD COLUMN email text UNIQUE",
        // Across colocation groups, or not key to key.
        "ALTER TABLE accounts ADD FOREIGN KEY (uid) REFERENCES users (id)",
        "ALTER TABLE events ADD FOREIGN KEY (x) REFERENCES users (id)",
        "CREATE TABLE events (user_id int, x int REFERENCES users (id))",
        // To or from a table on one shard.
        "ALTER TABLE users ADD FOREIGN KEY (x) REFERENCES mine (id)",
        "CREATE TABLE mine (id int, uid int REFERENCES users (id))",
        "ALTER TABLE branches ADD FOREIGN KEY (x) REFERENCES accounts (aid)",
    ] {
        match p(sql).route {
            Route::Unsupported(m) => assert!(m.contains("shard"), "{sql}: {m}"),
            other => panic!("{sql}: expected 0A000, got {other:?}"),
        }
    }
    for sql in [
        "CREATE UNIQUE INDEX users_ix ON users (x, id)",
        "CREATE INDEX users_x ON users (x)",
        "ALTER TABLE events ADD CONSTRAINT u UNIQUE (user_id, y)",
        "CREATE TABLE users (id int PRIMARY KEY, email text)",
        "CREATE TABLE branches (bid int PRIMARY KEY, name text UNIQUE)",
        // Co-located, key to key; to a reference table.
        "ALTER TABLE events ADD FOREIGN KEY (user_id) REFERENCES users (id)",
        "ALTER TABLE events ADD FOREIGN KEY (user_id) REFERENCES users",
        "ALTER TABLE events ADD FOREIGN KEY (y, user_id) REFERENCES users (z, id)",
        "CREATE TABLE events (user_id int, bid int REFERENCES branches (bid))",
    ] {
        assert_eq!(p(sql).route, Route::AllShards, "{sql}");
    }
    assert!(matches!(
        p("CREATE TABLE mine (id int, bid int REFERENCES branches, u text UNIQUE)").route,
        Route::Shard(_)
    ));
}

/// ALTER TABLE … ADD COLUMN sn serial on a distributed table numbered each shard's
/// rows from 1: duplicate "serial" values where PostgreSQL's are unique.
#[test]
fn sequence_backed_non_key_columns_are_refused() {
    for sql in [
        "ALTER TABLE users ADD COLUMN sn serial",
        "ALTER TABLE users ADD COLUMN sn bigserial NOT NULL",
        "ALTER TABLE users ADD COLUMN g bigint GENERATED BY DEFAULT AS IDENTITY",
        "ALTER TABLE users ADD COLUMN n bigint DEFAULT nextval('s')",
        "ALTER TABLE users ALTER COLUMN x SET DEFAULT nextval('s'::regclass)",
        "ALTER TABLE users ALTER COLUMN x ADD GENERATED ALWAYS AS IDENTITY",
        "CREATE TABLE users (id int PRIMARY KEY, n serial)",
    ] {
        match p(sql).route {
            Route::Unsupported(m) => assert!(m.contains("sequence"), "{sql}: {m}"),
            other => panic!("{sql}: expected 0A000, got {other:?}"),
        }
    }
    for sql in [
        // The key itself, a computed column, other defaults; reference tables.
        "CREATE TABLE users (id serial PRIMARY KEY, x int)",
        "ALTER TABLE users ADD COLUMN t int GENERATED ALWAYS AS (x * 2) STORED",
        "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT now()",
        "ALTER TABLE users ALTER COLUMN x SET DEFAULT 7",
        "ALTER TABLE branches ADD COLUMN sn serial",
    ] {
        assert_eq!(p(sql).route, Route::AllShards, "{sql}");
    }
}

/// Refused for push-down and answered by collecting its tables on one shard.
fn collected(sql: &str) -> bool {
    matches!(
        p(sql).route,
        Route::Fanout(crate::FanoutPlan {
            merge: MergePlan::Collect(_),
            ..
        })
    )
}

//! Reads while buckets move: each shard's text skips the buckets it holds but does not
//! own ([`crate::moving`]).

use super::catalog;
use crate::{plan, Route};
use pgshard_catalog::{BucketId, Catalog, Moving, ShardId};

/// Bucket 0 (owned by shard 1) moving to shard 3, not yet flipped; bucket 1 (owned by
/// shard 2 now) moved from shard 1, flipped.
fn moving() -> Catalog {
    let mut c = catalog();
    c.bucket_map[1] = ShardId(2);
    c.moving = vec![
        Moving {
            source: ShardId(1),
            target: ShardId(3),
            buckets: vec![BucketId(0)],
        },
        Moving {
            source: ShardId(1),
            target: ShardId(2),
            buckets: vec![BucketId(1)],
        },
    ];
    c
}

#[test]
fn each_shard_skips_what_it_holds_without_owning_it() {
    let c = moving();
    assert_eq!(c.not_owned_on(ShardId(1)), vec![BucketId(1)]);
    assert_eq!(c.not_owned_on(ShardId(2)), Vec::<BucketId>::new());
    assert_eq!(c.not_owned_on(ShardId(3)), vec![BucketId(0)]);
}

#[test]
fn fanout_reads_get_filtered_texts_on_those_shards_only() {
    let c = moving();
    let p = plan(
        "SELECT u.id, count(*) FROM users u JOIN events e ON e.user_id = u.id GROUP BY u.id",
        &c,
    );
    let Route::Fanout(f) = p.route else {
        panic!("{:?}", p.route)
    };
    let shards: Vec<ShardId> = f.moving_sql.iter().map(|(s, _)| *s).collect();
    assert_eq!(shards, vec![ShardId(1), ShardId(3)]);
    assert_eq!(f.sql_for(ShardId(2)), f.shard_sql);
    let on1 = f.sql_for(ShardId(1)).to_lowercase();
    assert!(
        on1.contains("from (select * from users where not ("),
        "{on1}"
    );
    assert!(on1.contains(") as u"), "{on1}");
    assert!(
        on1.contains("join (select * from events where not ("),
        "{on1}"
    );
    assert!(on1.contains("'{1}'::int4[]"), "{on1}");
    assert!(f
        .sql_for(ShardId(3))
        .to_lowercase()
        .contains("'{0}'::int4[]"));
    // Unchanged without moves.
    let Route::Fanout(f) = plan("SELECT count(*) FROM users", &catalog()).route else {
        panic!()
    };
    assert!(f.moving_sql.is_empty());
}

#[test]
fn ctes_reference_tables_and_copy_out() {
    let c = moving();
    let Route::Fanout(f) = plan(
        "WITH users AS (SELECT 1 AS id) SELECT * FROM users, accounts a",
        &c,
    )
    .route
    else {
        panic!()
    };
    let on1 = f.sql_for(ShardId(1)).to_lowercase();
    assert!(
        on1.contains("from users, (select * from accounts where"),
        "{on1}"
    );
    let Route::Copy(cp) = plan("COPY users (id) TO STDOUT WITH (FORMAT csv)", &c).route else {
        panic!()
    };
    let on3 = cp.sql_for(ShardId(3)).to_lowercase();
    assert!(
        on3.starts_with("copy (select id from (select * from users where"),
        "{on3}"
    );
    assert!(on3.contains("to stdout"), "{on3}");
    // A reference table is read whole wherever it is read.
    if let Route::Copy(cp) = plan("COPY branches TO STDOUT", &c).route {
        assert!(cp.moving_sql.is_empty());
    }
}

#[test]
fn collected_inputs_are_copied_filtered() {
    let c = moving();
    let p = plan(
        "SELECT count(*) FROM users u JOIN docs d ON d.slug = u.id::text",
        &c,
    );
    let Route::Fanout(f) = p.route else {
        panic!("{:?}", p.route)
    };
    let crate::MergePlan::Collect(cp) = &f.merge else {
        panic!("not collected: {:?}", f.merge)
    };
    for i in &cp.inputs {
        assert_eq!(i.copy_out_for(ShardId(2)), i.copy_out());
        let on1 = i.copy_out_for(ShardId(1)).to_lowercase();
        assert!(
            on1.starts_with("copy (select * from (select * from"),
            "{on1}"
        );
        assert!(on1.contains("format binary"), "{on1}");
    }
}

#[test]
fn fanout_writes_leave_the_rows_a_shard_does_not_own_alone() {
    let c = moving();
    let p = plan("UPDATE users u SET name = name || 'x' WHERE name <> ''", &c);
    let Route::FanoutWrite(w) = p.route else {
        panic!("{:?}", p.route)
    };
    assert_eq!(w.shard_sql.len(), w.shards.len(), "{w:?}");
    for (i, s) in w.shards.iter().enumerate() {
        let text = w.sql_for(i).to_lowercase();
        if c.not_owned_on(*s).is_empty() {
            assert_eq!(text, w.sql.to_lowercase());
        } else {
            assert!(text.contains("(name <> '') and (not ("), "{text}");
            assert!(text.contains("u.\"id\""), "{text}");
            let skip: Vec<String> = c.not_owned_on(*s).iter().map(|b| b.0.to_string()).collect();
            let list = format!("= any('{{{}}}'::int4[])))", skip.join(","));
            assert!(text.contains(&list), "{text}");
        }
    }
    let p = plan("DELETE FROM users WHERE id > 10 RETURNING id", &c);
    let Route::FanoutWrite(w) = p.route else {
        panic!("{:?}", p.route)
    };
    let i = w
        .shards
        .iter()
        .position(|s| *s == ShardId(1))
        .expect("shard 1 writes");
    let text = w.sql_for(i).to_lowercase();
    assert!(text.contains("where (id > 10) and (not ("), "{text}");
    assert!(text.contains("users.\"id\""), "{text}");
    assert!(text.ends_with("returning id"), "{text}");
}

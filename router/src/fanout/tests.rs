//! The merge engine against real PostgreSQL: two tables stand in for two shards, the
//! union table for one big PostgreSQL; every query's merged answer (through the engine,
//! and the finishing query where the plan has one) must equal PostgreSQL's answer on
//! the union: column names, type OIDs, rows (in order when the query sorts) and tag.

use super::*;
use crate::backend::conn::BackendConn;
use pgshard_catalog::{Catalog, CatalogVersion, KeyType, Shard, ShardId, TableDef, TableKind};
use std::time::Duration;

struct Conn<'a>(&'a mut BackendConn);

impl ShardStream for Conn<'_> {
    async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        match self.0.read().await {
            Ok(f) => Ok(Some(f)),
            Err(_) => Ok(None),
        }
    }
}

fn catalog() -> Catalog {
    let shards = [ShardId(1), ShardId(2)];
    Catalog {
        version: CatalogVersion(1),
        buckets: 16,
        bucket_map: (0..16).map(|b| shards[b % 2]).collect(),
        shards: shards.iter().map(|&id| Shard::active(id)).collect(),
        nodes: Vec::new(),
        tables: vec![TableDef {
            name: "items".to_owned(),
            kind: TableKind::Distributed {
                shard_key: "id".to_owned(),
                key_type: KeyType::Int8,
                colocation: "g".to_owned(),
            },
        }],
        local_shard: ShardId(1),
        frozen: Default::default(),
        moving: Vec::new(),
        views: Vec::new(),
    }
}

/// (column names and type oids, rows, tag) of one answer.
type Answer = (Vec<(String, u32)>, Vec<Vec<Option<String>>>, String);

fn decode(frames: &[Frame]) -> Result<Answer, String> {
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for f in frames {
        match f.tag() {
            b'T' => {
                for c in parse_row_description(f)? {
                    let end = c.raw.iter().position(|&b| b == 0).unwrap_or(0);
                    cols.push((
                        String::from_utf8_lossy(&c.raw[..end]).into_owned(),
                        c.type_oid,
                    ));
                }
            }
            b'D' => {
                let vals = parse_data_row(f)?;
                rows.push(
                    vals.into_iter()
                        .map(|v| v.map(|r| String::from_utf8_lossy(&f.body()[r]).into_owned()))
                        .collect(),
                );
            }
            b'C' => {
                let tag = String::from_utf8_lossy(f.body())
                    .trim_end_matches('\0')
                    .to_owned();
                return Ok((cols, rows, tag));
            }
            b'E' => return Err(format!("{:?}", crate::protocol::backend::error_summary(f))),
            _ => {}
        }
    }
    Err("no CommandComplete".into())
}

fn split_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(f)) = crate::protocol::frame::try_split_frame(&mut buf, 1 << 30) {
        out.push(f);
    }
    out
}

async fn run(c: &mut BackendConn, sql: &str) -> Vec<Frame> {
    crate::protocol::frontend::encode_query(&mut c.out, sql);
    c.flush().await.expect("send");
    let mut out = Vec::new();
    loop {
        let f = c.read().await.expect("read");
        if f.tag() == b'Z' {
            return out;
        }
        out.push(f);
    }
}

/// Read to ReadyForQuery.
async fn drain(c: &mut BackendConn) {
    loop {
        match c.read().await {
            Ok(f) if f.tag() == b'Z' => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn merged(conns: &mut [BackendConn], plan: &FanoutPlan) -> Result<Answer, String> {
    for (i, c) in conns.iter_mut().enumerate() {
        let sql = plan
            .shard_sql
            .replace("FROM items", &format!("FROM s{}_items", i + 1));
        crate::protocol::frontend::encode_query(&mut c.out, &sql);
        c.flush().await.map_err(|e| e.to_string())?;
    }
    let mut out: Vec<u8> = Vec::new();
    let outcome = {
        let (a, b) = conns.split_at_mut(1);
        let streams = vec![Conn(&mut a[0]), Conn(&mut b[0])];
        execute(plan, streams, &mut out).await
    };
    for c in conns.iter_mut() {
        drain(c).await;
    }
    match outcome.map_err(|e| e.to_string())? {
        Outcome::Done { .. } => decode(&split_frames(&out)),
        Outcome::ShardError { .. } => decode(&split_frames(&out)),
        Outcome::Finish { sql } => {
            let frames = run(&mut conns[0], &sql).await;
            decode(&frames).map_err(|e| format!("{e} in {sql}"))
        }
    }
}

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, grp int, price numeric(10,2), qty int, name text,
  ts timestamptz, flag boolean, f8 double precision);
INSERT INTO items
  SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE i % 5 END, CASE WHEN i % 11 = 0 THEN NULL ELSE (i * 37 % 1000) / 7.0 END,
    CASE WHEN i % 13 = 0 THEN NULL ELSE i * 17 % 300 - 50 END,
    CASE WHEN i % 9 = 0 THEN NULL ELSE (ARRAY['apple','Banana','cherry','Éclair','b','B','','zeta'])[i % 8 + 1] || (i % 3) END,
    timestamptz '2024-01-01 00:00:00+00' + (i * 7919 % 1000) * interval '1 hour',
    CASE WHEN i % 4 = 0 THEN NULL ELSE i % 3 = 0 END,
    CASE WHEN i % 17 = 0 THEN 'NaN'::float8 WHEN i % 19 = 0 THEN NULL ELSE (i * 31 % 400 - 200) / 4.0 END
  FROM generate_series(1, 300) i;
CREATE TABLE s1_items AS SELECT * FROM items WHERE id % 2 = 0;
CREATE TABLE s2_items AS SELECT * FROM items WHERE id % 2 = 1;
";

const QUERIES: &[&str] = &[
    "SELECT * FROM items",
    "SELECT id, name FROM items ORDER BY id",
    "SELECT id, name FROM items ORDER BY name, id",
    "SELECT id, name FROM items ORDER BY name DESC NULLS LAST, id",
    "SELECT id, name FROM items ORDER BY name NULLS FIRST, id DESC",
    "SELECT id, price FROM items ORDER BY price, id LIMIT 10",
    "SELECT id, price FROM items ORDER BY price DESC NULLS LAST, id LIMIT 5 OFFSET 3",
    "SELECT id FROM items ORDER BY qty * 2 - id, id LIMIT 7",
    "SELECT id, ts FROM items ORDER BY ts DESC, id LIMIT 20",
    "SELECT id, f8 FROM items ORDER BY f8 DESC, id LIMIT 12",
    "SELECT id, f8 FROM items ORDER BY f8, id",
    "SELECT id FROM items ORDER BY flag, id",
    "SELECT id FROM items ORDER BY id LIMIT 0",
    "SELECT id FROM items ORDER BY id OFFSET 290",
    "SELECT id FROM items ORDER BY 1 DESC FETCH FIRST 3 ROWS ONLY",
    "SELECT id AS k FROM items ORDER BY k LIMIT 4",
    "SELECT count(*), count(grp), count(DISTINCT grp) FROM items",
    "SELECT sum(qty), sum(price), sum(id), sum(f8) FROM items WHERE f8 <> 'NaN'",
    "SELECT min(price), max(price), min(name), max(name), min(ts), max(ts) FROM items",
    "SELECT avg(qty), avg(price), avg(id) FROM items",
    "SELECT bool_and(flag), bool_or(flag), every(flag) FROM items",
    "SELECT stddev(qty), variance(qty), stddev_pop(price), var_samp(price) FROM items",
    "SELECT grp, count(*) FROM items GROUP BY grp",
    "SELECT grp, count(*), sum(qty), avg(price), min(name), max(ts) FROM items GROUP BY grp ORDER BY grp",
    "SELECT grp, count(*) FROM items GROUP BY grp HAVING count(*) > 50 ORDER BY grp",
    "SELECT grp, sum(qty) AS s FROM items GROUP BY grp ORDER BY s DESC NULLS LAST LIMIT 3",
    "SELECT grp, string_agg(name, ',' ORDER BY name, id) FROM items GROUP BY grp ORDER BY grp",
    "SELECT grp, array_agg(id ORDER BY id) FROM items WHERE id < 40 GROUP BY grp ORDER BY grp",
    "SELECT count(DISTINCT name) FROM items",
    "SELECT DISTINCT grp FROM items ORDER BY grp",
    "SELECT DISTINCT grp, flag FROM items ORDER BY grp, flag",
    "SELECT DISTINCT ON (grp) grp, id, name FROM items ORDER BY grp, id",
    "SELECT count(*) FROM items WHERE false",
    "SELECT sum(qty), avg(qty), min(qty), bool_and(flag), string_agg(name, ',') FROM items WHERE id < 0",
    "SELECT grp, count(*) FROM items WHERE id < 0 GROUP BY grp",
    "SELECT count(*) FILTER (WHERE flag), sum(qty) FILTER (WHERE grp = 1) FROM items",
    "SELECT max(id) - min(id) AS spread FROM items",
    "SELECT sum(qty)::float8 / count(*) AS r FROM items",
    "SELECT id, count(*) FROM items GROUP BY id ORDER BY id LIMIT 5",
    "SELECT grp, avg(f8) FROM items WHERE f8 <> 'NaN' GROUP BY grp ORDER BY 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_answers_equal_postgresql_on_the_union() -> anyhow::Result<()> {
    let pg = pgshard_tests::Standalone::start().await?;
    let connect = || {
        BackendConn::connect(
            pg.host(),
            pg.port(),
            "postgres",
            "postgres",
            None,
            Duration::from_secs(10),
        )
    };
    let mut plain = connect().await?;
    plain.run_silent(SETUP).await?;
    let mut conns = vec![connect().await?, connect().await?];
    let catalog = catalog();
    let mut failures = Vec::new();
    let mut compared = 0;
    for q in QUERIES {
        let plan = pgshard_sql::plan(q, &catalog);
        let pgshard_sql::Route::Fanout(f) = plan.route else {
            failures.push(format!("{q}: not a fan-out: {:?}", plan.route));
            continue;
        };
        let want = decode(&run(&mut plain, q).await);
        let got = merged(&mut conns, &f).await;
        let same = match (&want, &got) {
            (Ok(w), Ok(g)) if q.contains("ORDER BY") => w == g,
            (Ok(w), Ok(g)) => {
                let (mut a, mut b) = (w.1.clone(), g.1.clone());
                a.sort();
                b.sort();
                w.0 == g.0 && w.2 == g.2 && a == b
            }
            _ => false,
        };
        compared += 1;
        if !same {
            failures.push(format!(
                "{q}\n  plan {f:?}\n  want {want:?}\n  got  {got:?}"
            ));
        }
    }
    let short: Vec<String> = failures
        .iter()
        .map(|f| f.chars().take(1500).collect())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {compared} differ:\n{}",
        failures.len(),
        short.join("\n")
    );
    Ok(())
}

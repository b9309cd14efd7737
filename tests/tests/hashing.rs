//! Proof against a live PostgreSQL 15 that pgshard's bucket function is PostgreSQL's own
//! hash partitioning (SPEC §4): for every key type, tens of thousands of keys (extremes,
//! every tail length of the byte hash, multi-byte UTF-8, long and random values), several
//! moduli, and three checks per key:
//!
//! 1. `satisfies_hash_partition(parent, modulus, bucket(key), key)` holds, where the
//!    parent is a table `PARTITION BY HASH` on a column of the key's type;
//! 2. `bucket_sql_expr`, evaluated by the server, gives the same bucket (and is
//!    immutable: it can be indexed);
//! 3. the router's parsers read the server's own text and binary output of the key back
//!    into the same `KeyValue`.
//!
//! Each check is one query per type and modulus over arrays of all keys, reporting the
//! number of mismatches and the first few offending keys.

use pgshard_catalog::hash::{bucket, bucket_sql_expr, key_from_binary, parse_key};
use pgshard_catalog::{KeyType, KeyValue};
use pgshard_tests::Standalone;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Moduli checked: the default bucket count, a prime, a larger power of two, the
/// degenerate 1 and a large non-power of two.
const MODULI: [u32; 5] = [1024, 7, 4096, 1, 100_003];

/// Random keys per type, on top of the hand-picked ones.
const RANDOM_KEYS: usize = 10_000;

/// Fixed so that a failure reproduces; the keys are printed on failure anyway.
const SEED: u64 = 0x5eed_9a5d_0000_0015;

/// One key type under test: its keys, and the PostgreSQL names to test it with.
struct Case {
    key_type: KeyType,
    /// The SQL type of the parent's partition column and of the key array.
    sql_type: &'static str,
    /// The binary send function, to check `key_from_binary` on the server's bytes.
    send_fn: &'static str,
    keys: Vec<KeyValue>,
}

impl Case {
    fn table(&self) -> String {
        format!("hp_{}", self.sql_type)
    }

    /// The keys as a typed array parameter of `sql_type[]`.
    fn keys_param(&self) -> Box<dyn ToSql + Sync + Send> {
        match self.key_type {
            KeyType::Int2 => Box::new(
                self.keys
                    .iter()
                    .map(|k| i16::try_from(int(k)).expect("int2 key in range"))
                    .collect::<Vec<i16>>(),
            ),
            KeyType::Int4 => Box::new(
                self.keys
                    .iter()
                    .map(|k| i32::try_from(int(k)).expect("int4 key in range"))
                    .collect::<Vec<i32>>(),
            ),
            KeyType::Int8 => Box::new(self.keys.iter().map(int).collect::<Vec<i64>>()),
            KeyType::Text | KeyType::Varchar => Box::new(
                self.keys
                    .iter()
                    .map(|k| match k {
                        KeyValue::Text(s) => s.clone(),
                        other => panic!("not a text key: {other:?}"),
                    })
                    .collect::<Vec<String>>(),
            ),
            KeyType::Uuid => Box::new(
                self.keys
                    .iter()
                    .map(|k| match k {
                        KeyValue::Uuid(b) => uuid::Uuid::from_bytes(*b),
                        other => panic!("not a uuid key: {other:?}"),
                    })
                    .collect::<Vec<uuid::Uuid>>(),
            ),
        }
    }

    fn buckets(&self, modulus: u32) -> Vec<i32> {
        self.keys
            .iter()
            .map(|k| i32::try_from(bucket(k, modulus).0).expect("bucket fits int4"))
            .collect()
    }
}

fn int(key: &KeyValue) -> i64 {
    match key {
        KeyValue::Int(v) => *v,
        other => panic!("not an integer key: {other:?}"),
    }
}

#[tokio::test]
async fn buckets_are_postgres_hash_partitions() {
    let pg = Standalone::start().await.expect("standalone starts");
    let client = pg.connect().await.expect("connect");
    let encoding: String = client
        .query_one("SELECT current_setting('server_encoding')", &[])
        .await
        .expect("query encoding")
        .get(0);
    assert_eq!(encoding, "UTF8", "text hashing assumes a UTF8 database");

    let mut rng = StdRng::seed_from_u64(SEED);
    let cases = [
        Case {
            key_type: KeyType::Int2,
            sql_type: "int2",
            send_fn: "int2send",
            keys: int2_keys(),
        },
        Case {
            key_type: KeyType::Int4,
            sql_type: "int4",
            send_fn: "int4send",
            keys: int_keys(&mut rng, i32::MIN.into(), i32::MAX.into()),
        },
        Case {
            key_type: KeyType::Int8,
            sql_type: "int8",
            send_fn: "int8send",
            keys: int_keys(&mut rng, i64::MIN, i64::MAX),
        },
        Case {
            key_type: KeyType::Text,
            sql_type: "text",
            send_fn: "textsend",
            keys: text_keys(&mut rng),
        },
        Case {
            key_type: KeyType::Varchar,
            sql_type: "varchar",
            send_fn: "varcharsend",
            keys: text_keys(&mut rng),
        },
        Case {
            key_type: KeyType::Uuid,
            sql_type: "uuid",
            send_fn: "uuid_send",
            keys: uuid_keys(&mut rng),
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            case.keys.len() >= RANDOM_KEYS,
            "{}: too few keys",
            case.sql_type
        );
        create_tables(&client, case).await;
        failures.extend(check_round_trip(&client, case).await);
        for modulus in MODULI {
            failures.extend(check_partitions(&client, case, modulus).await);
            failures.extend(check_sql_expr(&client, case, modulus).await);
        }
    }
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The hash-partitioned parent (no partitions are needed for
/// `satisfies_hash_partition`) and a plain table indexed on the bucket expression,
/// which PostgreSQL accepts only if the expression is immutable.
async fn create_tables(client: &Client, case: &Case) {
    let (table, ty) = (case.table(), case.sql_type);
    let expr = bucket_sql_expr("k", case.key_type, 1024);
    let sql = format!(
        "CREATE TABLE {table} (k {ty}) PARTITION BY HASH (k);
         CREATE TABLE {table}_rows (k {ty});
         CREATE INDEX ON {table}_rows (({expr}));"
    );
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{ty}: creating tables: {e}"));
}

/// PostgreSQL's verdict on our buckets, as `Err(description)` per failed check.
async fn check_partitions(client: &Client, case: &Case, modulus: u32) -> Option<String> {
    let sql = format!(
        "SELECT count(*), (array_agg(t.k::text || ' -> ' || t.b ORDER BY t.i))[1:5]
           FROM unnest($1::{ty}[], $2::int4[]) WITH ORDINALITY AS t(k, b, i)
          WHERE NOT satisfies_hash_partition('{table}'::regclass, $3::int4, t.b, t.k)",
        ty = case.sql_type,
        table = case.table(),
    );
    let modulus_param = i32::try_from(modulus).expect("modulus fits int4");
    mismatches(
        client,
        &sql,
        &[&*case.keys_param(), &case.buckets(modulus), &modulus_param],
        &format!(
            "{}: satisfies_hash_partition, modulus {modulus}",
            case.sql_type
        ),
    )
    .await
}

/// `bucket_sql_expr` evaluated by the server against our buckets.
async fn check_sql_expr(client: &Client, case: &Case, modulus: u32) -> Option<String> {
    let expr = bucket_sql_expr("t.k", case.key_type, modulus);
    let sql = format!(
        "SELECT count(*), (array_agg(t.k::text || ' -> ' || t.b || ' vs ' || {expr} ORDER BY t.i))[1:5]
           FROM unnest($1::{ty}[], $2::int4[]) WITH ORDINALITY AS t(k, b, i)
          WHERE {expr} IS DISTINCT FROM t.b",
        ty = case.sql_type,
    );
    mismatches(
        client,
        &sql,
        &[&*case.keys_param(), &case.buckets(modulus)],
        &format!("{}: bucket_sql_expr, modulus {modulus}", case.sql_type),
    )
    .await
}

/// Run a `SELECT count(*), first_offenders` query; `Some(report)` unless the count is 0.
async fn mismatches(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &str,
) -> Option<String> {
    let row = match client.query_one(sql, params).await {
        Ok(row) => row,
        Err(e) => return Some(format!("{what}: query failed: {e}")),
    };
    let count: i64 = row.get(0);
    let first: Option<Vec<String>> = row.get(1);
    (count != 0).then(|| {
        format!(
            "{what}: {count} mismatching key(s), first: {:?}",
            first.unwrap_or_default()
        )
    })
}

/// The server's text and binary output of every key parse back to the same key, so
/// the router reads Bind parameters in either format as the server would.
async fn check_round_trip(client: &Client, case: &Case) -> Vec<String> {
    let sql = format!(
        "SELECT k::text, {send}(k) FROM unnest($1::{ty}[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
        send = case.send_fn,
        ty = case.sql_type,
    );
    let rows = match client.query(&sql, &[&*case.keys_param()]).await {
        Ok(rows) => rows,
        Err(e) => return vec![format!("{}: round trip query failed: {e}", case.sql_type)],
    };
    let mut failures = Vec::new();
    for (key, row) in case.keys.iter().zip(&rows) {
        let text: String = row.get(0);
        let binary: Vec<u8> = row.get(1);
        if parse_key(&text, case.key_type).as_ref() != Some(key) {
            failures.push(format!("{}: parse_key({text:?}) != {key:?}", case.sql_type));
        }
        if key_from_binary(&binary, case.key_type).as_ref() != Some(key) {
            failures.push(format!(
                "{}: key_from_binary({binary:?}) != {key:?}",
                case.sql_type
            ));
        }
    }
    if rows.len() != case.keys.len() {
        failures.push(format!(
            "{}: {} rows for {} keys",
            case.sql_type,
            rows.len(),
            case.keys.len()
        ));
    }
    failures.truncate(10);
    failures
}

/// Every smallint: 65,536 keys, exhaustive.
fn int2_keys() -> Vec<KeyValue> {
    (i16::MIN..=i16::MAX)
        .map(|v| KeyValue::Int(v.into()))
        .collect()
}

/// Extremes, small values, powers of two and their neighbours (where the int8 hash
/// folds its high half), then uniform and log-uniform random values in `[min, max]`.
fn int_keys(rng: &mut StdRng, min: i64, max: i64) -> Vec<KeyValue> {
    let mut keys: Vec<i64> = vec![min, min + 1, max - 1, max, 0];
    keys.extend(-1000..=1000);
    for shift in 0..63 {
        let p = 1i64 << shift;
        keys.extend([p - 1, p, p + 1, -p - 1, -p, -p + 1]);
    }
    keys.extend([i32::MIN, i32::MAX, i16::MIN.into(), i16::MAX.into()].map(i64::from));
    keys.retain(|v| (min..=max).contains(v));
    for _ in 0..RANDOM_KEYS {
        keys.push(rng.gen_range(min..=max));
        let bits = rng.gen_range(0..64);
        let small = rng.gen::<i64>() >> bits;
        if (min..=max).contains(&small) {
            keys.push(small);
        }
    }
    keys.into_iter().map(KeyValue::Int).collect()
}

/// The empty string, every length 0..=40 (all tail lengths of the 12-byte rounds, in
/// ASCII and multi-byte), accents, CJK, emoji, combining marks, long strings, and
/// random strings over a mix of scripts.
fn text_keys(rng: &mut StdRng) -> Vec<KeyValue> {
    let mut keys: Vec<String> = vec![
        String::new(),
        " ".into(),
        "a".into(),
        "A".into(),
        "hello world!".into(),
        "café".into(),
        "cafe\u{301}".into(),
        "Ünïcödé ßtrasse".into(),
        "日本語のテキスト".into(),
        "中文".into(),
        "한국어".into(),
        "🦀".into(),
        "👩‍👩‍👧‍👦 family".into(),
        "🇫🇷🇯🇵".into(),
        "tab\tnew\nline".into(),
        "quote ' and \" and \\".into(),
        "\u{7f}\u{80}\u{ff}\u{100}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}".into(),
    ];
    for len in 0..=40 {
        keys.push("x".repeat(len));
        keys.push("é".repeat(len));
        keys.push("語".repeat(len));
        keys.push("🎉".repeat(len));
    }
    for len in [100, 1_000, 10_000, 100_000] {
        keys.push(random_string(rng, len));
    }
    for _ in 0..RANDOM_KEYS {
        let len = rng.gen_range(0..48);
        keys.push(random_string(rng, len));
    }
    keys.into_iter().map(KeyValue::Text).collect()
}

/// `len` characters from ASCII, Latin-1, general BMP, CJK and emoji ranges; never NUL
/// (PostgreSQL text cannot hold it) and never a surrogate (not a `char`).
fn random_string(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| {
            let range = match rng.gen_range(0..5) {
                0 => 0x01..=0x7f,
                1 => 0x80..=0xff,
                2 => 0x100..=0xd7ff,
                3 => 0x4e00..=0x9fff,
                _ => 0x1f300..=0x1faff,
            };
            char::from_u32(rng.gen_range(range)).unwrap_or('?')
        })
        .collect()
}

/// Nil, max, patterns, sequential and random (v4-shaped and arbitrary bytes) uuids.
fn uuid_keys(rng: &mut StdRng) -> Vec<KeyValue> {
    let mut keys: Vec<[u8; 16]> = vec![[0; 16], [0xff; 16], [0x80; 16], [0x7f; 16]];
    for i in 0..256u32 {
        let mut b = [0u8; 16];
        b[12..].copy_from_slice(&i.to_be_bytes());
        keys.push(b);
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        keys.push(b);
    }
    for _ in 0..RANDOM_KEYS {
        keys.push(rng.gen());
        keys.push(
            *uuid::Builder::from_random_bytes(rng.gen())
                .as_uuid()
                .as_bytes(),
        );
    }
    keys.into_iter().map(KeyValue::Uuid).collect()
}

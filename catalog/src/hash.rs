//! PostgreSQL-compatible shard-key hashing (SPEC §4).
//!
//! A bucket must be exactly a PostgreSQL hash partition with `MODULUS buckets`, so that
//! the router (which hashes in Rust) and a shard (which selects a bucket's rows in SQL
//! during a bucket move) can never disagree about where a row lives. This module
//! therefore reproduces, bit for bit, what PostgreSQL 15 does when it routes a row of a
//! table `PARTITION BY HASH (key)`:
//!
//! 1. `compute_partition_hash_value` / `satisfies_hash_partition`
//!    (`src/backend/partitioning/partbounds.c`) call the key type's *extended* hash
//!    support function with the seed `HASH_PARTITION_SEED`
//!    (`src/include/catalog/partition.h`), starting from a row hash of 0 and folding each
//!    column in with `hash_combine64(rowHash, h)` (`src/include/common/hashfn.h`).
//! 2. The remainder is `rowHash % modulus` on the unsigned 64-bit value.
//! 3. The per-type functions (`src/backend/access/hash/hashfunc.c`, `uuid.c`):
//!    `hashint2/4extended` hash the value widened to 32 bits; `hashint8extended` folds
//!    the high half into the low half so that equal values of all three integer types
//!    hash alike; `hashtextextended` (deterministic collations) hashes the bytes of the
//!    string in the database encoding; `uuid_hash_extended` hashes the 16 bytes.
//!    All of them end in Bob Jenkins' lookup3 (`hash_bytes_extended`,
//!    `hash_bytes_uint32_extended` in `src/common/hashfn.c`).
//!
//! PostgreSQL reads the input as native 32-bit words; we implement the little-endian
//! path (x86_64, aarch64). A big-endian server would place keys differently, and so
//! would a database whose encoding is not UTF8 or a text column with a nondeterministic
//! collation; pgshard creates its shards with UTF8 and the default collation.
//!
//! The router parses key values from Bind parameters with [`parse_key`] (text format)
//! and [`key_from_binary`] (binary format), then calls [`bucket`].

use crate::types::{BucketId, KeyType, KeyValue};

/// `HASH_PARTITION_SEED` from `src/include/catalog/partition.h`.
pub const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The random constant of `hash_combine64` in `src/include/common/hashfn.h`.
const HASH_COMBINE64_CONSTANT: u64 = 0x49a0_f4dd_15e5_a8e3;

/// Jenkins' initial state constant (the golden ratio) plus PostgreSQL's own offset.
const JENKINS_INIT: u32 = 0x9e37_79b9_u32.wrapping_add(3_923_095);

/// The bucket of a key: `H(key) mod buckets`, equal to PostgreSQL hash partitioning
/// with `MODULUS buckets`, i.e. `satisfies_hash_partition(parent, buckets, bucket, key)`
/// holds.
///
/// `buckets` is validated to be at least 1 when the cluster is created; 0 yields
/// bucket 0 rather than a division by zero.
pub fn bucket(key: &KeyValue, buckets: u32) -> BucketId {
    let remainder = hash_key(key).checked_rem(u64::from(buckets)).unwrap_or(0);
    // The remainder is below `buckets`, a u32, so the conversion cannot fail.
    BucketId(u32::try_from(remainder).unwrap_or(0))
}

/// The partition row hash of a single-column key: the value PostgreSQL computes in
/// `compute_partition_hash_value` before taking the remainder.
pub fn hash_key(key: &KeyValue) -> u64 {
    hash_combine64(0, column_hash(key, HASH_PARTITION_SEED))
}

/// The key type's extended hash support function, as PostgreSQL's hash opclass for
/// the type calls it.
fn column_hash(key: &KeyValue, seed: u64) -> u64 {
    match key {
        KeyValue::Int(v) => hash_int8_extended(*v, seed),
        KeyValue::Text(s) => hash_bytes_extended(s.as_bytes(), seed),
        KeyValue::Uuid(bytes) => hash_bytes_extended(bytes, seed),
    }
}

/// `hash_combine64(a, b)`. With `a == 0`, as for the first (here: only) partition
/// column, the shifts vanish and it is `b + constant`, wrapping.
fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(HASH_COMBINE64_CONSTANT)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// `hashint8extended`. `hashint2extended` and `hashint4extended` hash the value
/// sign-extended to 32 bits; for a value that fits in 32 bits the high half is all
/// zeros (non-negative) or all ones (negative), so the xor below leaves the low half
/// unchanged and all three agree. That is why `KeyValue::Int` needs no type tag.
fn hash_int8_extended(value: i64, seed: u64) -> u64 {
    let low = value as u32;
    let high = (value >> 32) as u32;
    let folded = if value >= 0 { low ^ high } else { low ^ !high };
    hash_bytes_uint32_extended(folded, seed)
}

/// Jenkins' `rot`: rotate a 32-bit value left.
#[inline]
fn rot(x: u32, k: u32) -> u32 {
    x.rotate_left(k)
}

/// Jenkins' `mix` macro: mix three 32-bit values reversibly.
#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= rot(*c, 4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= rot(*a, 6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= rot(*b, 8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= rot(*c, 16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= rot(*a, 19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= rot(*b, 4);
    *b = b.wrapping_add(*a);
}

/// Jenkins' `final` macro: final mixing of three 32-bit values into `c` (and `b`).
#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 14));
    *a ^= *c;
    *a = a.wrapping_sub(rot(*c, 11));
    *b ^= *a;
    *b = b.wrapping_sub(rot(*a, 25));
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 16));
    *a ^= *c;
    *a = a.wrapping_sub(rot(*c, 4));
    *b ^= *a;
    *b = b.wrapping_sub(rot(*a, 14));
    *c ^= *b;
    *c = c.wrapping_sub(rot(*b, 24));
}

/// The seed perturbation shared by both extended hashes: the seed is treated as a
/// 12-byte chunk (high half, low half, four zero bytes). A zero seed is skipped, which
/// keeps the extended hashes compatible with the 32-bit ones.
#[inline]
fn apply_seed(a: &mut u32, b: &mut u32, c: &mut u32, seed: u64) {
    if seed != 0 {
        *a = a.wrapping_add((seed >> 32) as u32);
        *b = b.wrapping_add(seed as u32);
        mix(a, b, c);
    }
}

/// `hash_bytes_uint32_extended(k, seed)`.
fn hash_bytes_uint32_extended(k: u32, seed: u64) -> u64 {
    let init = JENKINS_INIT.wrapping_add(4);
    let (mut a, mut b, mut c) = (init, init, init);
    apply_seed(&mut a, &mut b, &mut c, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// Read four bytes as a little-endian word; the caller guarantees the length.
#[inline]
fn le_word(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// `hash_bytes_extended(k, len, seed)`, little-endian path.
///
/// PostgreSQL has aligned and unaligned code paths; on a little-endian machine both
/// read the same little-endian words, so one implementation covers them.
fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    // PostgreSQL takes the length as a C int and adds it as a uint32; values are far
    // below 4 GiB (a varlena is at most 1 GB), the truncation only avoids a panic.
    let init = JENKINS_INIT.wrapping_add(key.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    apply_seed(&mut a, &mut b, &mut c, seed);

    let mut chunks = key.chunks_exact(12);
    for chunk in &mut chunks {
        a = a.wrapping_add(le_word(&chunk[0..4]));
        b = b.wrapping_add(le_word(&chunk[4..8]));
        c = c.wrapping_add(le_word(&chunk[8..12]));
        mix(&mut a, &mut b, &mut c);
    }

    // The last 0..=11 bytes, zero padded. The lowest byte of `c` is "reserved for the
    // length" in lookup3, so bytes 8..11 land one byte higher in `c` than in `a`/`b`;
    // byte 11 never exists here, so the shift loses nothing.
    let rest = chunks.remainder();
    let mut tail = [0u8; 12];
    tail[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(le_word(&tail[0..4]));
    b = b.wrapping_add(le_word(&tail[4..8]));
    c = c.wrapping_add(le_word(&tail[8..12]) << 8);

    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// An immutable SQL expression that evaluates, on a shard, to the bucket of
/// `column_sql` (an `int4`), equal to [`bucket`] for every value. Bucket moves use it
/// to select a bucket's rows: `WHERE <expr> = $bucket`.
///
/// The per-type hash functions return `int8`, i.e. the uint64 hash reinterpreted as
/// signed. The expression adds the `hash_combine64` constant and reduces modulo 2^64 in
/// `numeric`, so that neither the addition overflows nor the sign flips the remainder:
/// `(h + 2^64 + C) % 2^64 % buckets`, where `h + 2^64 + C` is always positive.
///
/// Text hashes under `COLLATE "C"`, which is deterministic and makes
/// `hashtextextended` hash the raw bytes, as [`bucket`] does, whatever the column's
/// collation.
pub fn bucket_sql_expr(column_sql: &str, key_type: KeyType, buckets: u32) -> String {
    let seed = HASH_PARTITION_SEED as i64;
    let hash = match key_type {
        KeyType::Int2 => format!("hashint2extended(({column_sql})::int2, {seed})"),
        KeyType::Int4 => format!("hashint4extended(({column_sql})::int4, {seed})"),
        KeyType::Int8 => format!("hashint8extended(({column_sql})::int8, {seed})"),
        KeyType::Text | KeyType::Varchar => {
            format!("hashtextextended(({column_sql})::text COLLATE \"C\", {seed})")
        }
        KeyType::Uuid => format!("uuid_hash_extended(({column_sql})::uuid, {seed})"),
    };
    let two_64: u128 = 1 << 64;
    let offset = two_64 + u128::from(HASH_COMBINE64_CONSTANT);
    format!("((({hash})::numeric + {offset}) % {two_64} % {buckets})::int4")
}

/// PostgreSQL's `isspace` in the C locale, which its integer input functions skip
/// around the digits.
fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C')
}

/// Parse a key from PostgreSQL's text form, as `int2in`/`int4in`/`int8in`, `uuid_in`
/// and `textin` would accept it (PostgreSQL 15). `None` means PostgreSQL would reject
/// the value, including integers out of range for the type.
pub fn parse_key(text: &str, key_type: KeyType) -> Option<KeyValue> {
    match key_type {
        KeyType::Int2 => parse_int(text)
            .filter(|v| i16::try_from(*v).is_ok())
            .map(KeyValue::Int),
        KeyType::Int4 => parse_int(text)
            .filter(|v| i32::try_from(*v).is_ok())
            .map(KeyValue::Int),
        KeyType::Int8 => parse_int(text).map(KeyValue::Int),
        KeyType::Text | KeyType::Varchar => Some(KeyValue::Text(text.to_owned())),
        KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid),
    }
}

/// PostgreSQL 15's integer syntax: optional whitespace, an optional sign, decimal
/// digits, optional whitespace. (Hex, octal, binary and `_` separators arrived in 16.)
/// One pass over the bytes: every Bind of a statement routed by an integer key parses
/// one.
fn parse_int(text: &str) -> Option<i64> {
    let space = |c: &u8| is_pg_space(char::from(*c));
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|c| !space(c))?;
    let end = bytes.iter().rposition(|c| !space(c))? + 1;
    let (negative, digits) = match &bytes[start..end] {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        all => (false, all),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulated negative, so that i64::MIN fits.
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// `string_to_uuid` in `src/backend/utils/adt/uuid.c`: 32 hex digits, optionally a `-`
/// after any group of four, optionally wrapped in `{}`; no surrounding whitespace.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut src = inner.as_bytes();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let (&[hi, lo], rest) = src.split_first_chunk::<2>()?;
        *byte = (hex_digit(hi)? << 4) | hex_digit(lo)?;
        src = rest;
        if i % 2 == 1 && i < 15 {
            if let Some(rest) = src.strip_prefix(b"-") {
                src = rest;
            }
        }
    }
    src.is_empty().then_some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode a binary-format Bind parameter of the key's type: big-endian integers of
/// exactly the type's width (`int2recv`/`int4recv`/`int8recv`), the 16 bytes of a uuid,
/// UTF-8 text. `None` if the bytes are not a valid value of the type.
pub fn key_from_binary(bytes: &[u8], key_type: KeyType) -> Option<KeyValue> {
    match key_type {
        KeyType::Int2 => <[u8; 2]>::try_from(bytes)
            .ok()
            .map(|b| KeyValue::Int(i16::from_be_bytes(b).into())),
        KeyType::Int4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| KeyValue::Int(i32::from_be_bytes(b).into())),
        KeyType::Int8 => <[u8; 8]>::try_from(bytes)
            .ok()
            .map(|b| KeyValue::Int(i64::from_be_bytes(b))),
        KeyType::Text | KeyType::Varchar => std::str::from_utf8(bytes)
            .ok()
            .map(|s| KeyValue::Text(s.to_owned())),
        KeyType::Uuid => <[u8; 16]>::try_from(bytes).ok().map(KeyValue::Uuid),
    }
}

/// PostgreSQL type OIDs the router meets as declared Bind parameter types.
pub mod oid {
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const UNKNOWN: u32 = 705;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
}

/// The type to decode a parameter declared as `param_oid` in, when it is compared with
/// a `key_type` shard key by value; `None` when such a parameter cannot be routed.
pub fn param_key_type(param_oid: u32, key_type: KeyType) -> Option<KeyType> {
    match (key_type, param_oid) {
        (_, 0) | (_, oid::UNKNOWN) => Some(key_type),
        (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, oid::INT2) => Some(KeyType::Int2),
        (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, oid::INT4) => Some(KeyType::Int4),
        (KeyType::Int2 | KeyType::Int4 | KeyType::Int8, oid::INT8) => Some(KeyType::Int8),
        (KeyType::Text | KeyType::Varchar, oid::TEXT | oid::VARCHAR) => Some(key_type),
        (KeyType::Uuid, oid::UUID) => Some(KeyType::Uuid),
        _ => None,
    }
}

/// The shard-key value of a Bind parameter compared with (or stored in) a key column of
/// `key_type`, decoded by the parameter's *declared* type `param_oid` (0 when the client
/// let the server infer it: then it is the column's type).
///
/// Drivers declare their own types: psycopg sends a small Python int as a binary
/// `int2`, JDBC a Java long as `int8`. For integer keys any integer parameter type
/// compares by value, so it routes by value. Any other declared type (a float8 or
/// numeric parameter, a bpchar, …) compares under other rules than the key's hash
/// equality, so `None` is returned and the caller must refuse rather than guess.
pub fn key_from_param(
    value: &[u8],
    binary: bool,
    param_oid: u32,
    key_type: KeyType,
) -> Option<KeyValue> {
    let as_type = param_key_type(param_oid, key_type)?;
    if binary {
        key_from_binary(value, as_type)
    } else {
        std::str::from_utf8(value)
            .ok()
            .and_then(|t| parse_key(t, as_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn params_decode_by_their_declared_type() {
        let k = |v: &[u8], bin, oid, kt| key_from_param(v, bin, oid, kt);
        // psycopg: a small int as binary int2 for a bigint key.
        assert_eq!(
            k(&[0, 1], true, oid::INT2, KeyType::Int8),
            Some(KeyValue::Int(1))
        );
        assert_eq!(
            k(&[255, 255, 255, 254], true, oid::INT4, KeyType::Int8),
            Some(KeyValue::Int(-2))
        );
        assert_eq!(
            k(&7i64.to_be_bytes(), true, 0, KeyType::Int8),
            Some(KeyValue::Int(7))
        );
        assert_eq!(
            k(b"42", false, oid::INT8, KeyType::Int4),
            Some(KeyValue::Int(42))
        );
        assert_eq!(
            k(b"42", false, oid::UNKNOWN, KeyType::Int4),
            Some(KeyValue::Int(42))
        );
        // A float8 parameter compares as float: never route it by its bits.
        assert_eq!(k(&5.0f64.to_be_bytes(), true, 701, KeyType::Int8), None);
        assert_eq!(k(b"5", false, 1700, KeyType::Int8), None);
        assert_eq!(
            k(b"abc", false, oid::VARCHAR, KeyType::Text),
            Some(KeyValue::Text("abc".into()))
        );
        assert_eq!(k(b"abc ", false, 1042, KeyType::Text), None);
        assert_eq!(
            k(&[0; 16], true, oid::UUID, KeyType::Uuid),
            Some(KeyValue::Uuid([0; 16]))
        );
        assert_eq!(k(b"1", false, oid::INT4, KeyType::Uuid), None);
    }

    /// `(key, hash*extended(key, HASH_PARTITION_SEED) as PostgreSQL prints it, bucket
    /// for MODULUS 1024)`, all taken from PostgreSQL 15.18 on x86_64 with
    /// `satisfies_hash_partition`.
    fn int_cases() -> Vec<(i64, i64, u32)> {
        vec![
            (0, -4403592609991167795, 432),
            (1, 5968994663651403477, 952),
            (-1, -5017072347659237694, 933),
            (42, 7363975540656877951, 610),
            (i64::MAX, 4938542303000433043, 630),
            (i64::MIN, -6050265599104649060, 383),
            (i32::MAX.into(), -6050265599104649060, 383),
            (i32::MIN.into(), 4938542303000433043, 630),
        ]
    }

    fn text_cases() -> Vec<(&'static str, i64, u32)> {
        vec![
            ("", -5700645584453517373, 166),
            ("a", -6705225459120232837, 862),
            ("abc", 3628778498291917250, 677),
            ("hello world!", -1886269529411655687, 220),
            ("hello world!x", -6609607681821511246, 661),
            ("héllo", 3506307356728073920, 931),
            ("日本語", -8050275759738715173, 190),
            ("🦀 rust", -2754234806602652971, 952),
            (
                "abcdefghijklmnopqrstuvwxyz0123456789",
                -7380664822038775401,
                634,
            ),
        ]
    }

    fn uuid_cases() -> Vec<(&'static str, i64, u32)> {
        vec![
            (
                "00000000-0000-0000-0000-000000000000",
                -5281082146396728638,
                933,
            ),
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                424513190990560493,
                464,
            ),
            (
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
                -148986464341306210,
                385,
            ),
        ]
    }

    #[test]
    fn integers_match_postgres() {
        for (v, hash, b) in int_cases() {
            let key = KeyValue::Int(v);
            assert_eq!(column_hash(&key, HASH_PARTITION_SEED) as i64, hash, "{v}");
            assert_eq!(bucket(&key, 1024), BucketId(b), "{v}");
        }
    }

    #[test]
    fn text_matches_postgres() {
        for (s, hash, b) in text_cases() {
            let key = KeyValue::Text(s.to_owned());
            assert_eq!(column_hash(&key, HASH_PARTITION_SEED) as i64, hash, "{s}");
            assert_eq!(bucket(&key, 1024), BucketId(b), "{s}");
        }
    }

    #[test]
    fn uuids_match_postgres() {
        for (s, hash, b) in uuid_cases() {
            let key = parse_key(s, KeyType::Uuid).expect("valid uuid");
            assert_eq!(column_hash(&key, HASH_PARTITION_SEED) as i64, hash, "{s}");
            assert_eq!(bucket(&key, 1024), BucketId(b), "{s}");
        }
    }

    #[test]
    fn zero_seed_matches_postgres() {
        // `SELECT hashint8extended(42, 0), hashtextextended('abc', 0)`: the seed
        // perturbation is skipped entirely for 0.
        assert_eq!(hash_int8_extended(42, 0) as i64, 8010225493015854792);
        assert_eq!(hash_bytes_extended(b"abc", 0) as i64, -6747756470228489321);
    }

    #[test]
    fn row_hash_is_column_hash_plus_combine_constant() {
        let key = KeyValue::Int(7);
        let h = column_hash(&key, HASH_PARTITION_SEED);
        assert_eq!(hash_key(&key), h.wrapping_add(HASH_COMBINE64_CONSTANT));
    }

    #[test]
    fn zero_buckets_does_not_panic() {
        assert_eq!(bucket(&KeyValue::Int(1), 0), BucketId(0));
    }

    #[test]
    fn seed_is_the_decimal_literal_used_in_sql() {
        assert_eq!(HASH_PARTITION_SEED, 8816678312871386365);
        let expr = bucket_sql_expr("k", KeyType::Int8, 1024);
        assert_eq!(
            expr,
            "(((hashint8extended((k)::int8, 8816678312871386365))::numeric \
             + 23752253665144318179) % 18446744073709551616 % 1024)::int4"
        );
    }

    #[test]
    fn parses_integers_like_postgres_15() {
        let int = |s, t| parse_key(s, t);
        assert_eq!(int("42", KeyType::Int4), Some(KeyValue::Int(42)));
        assert_eq!(int("  -7\n", KeyType::Int2), Some(KeyValue::Int(-7)));
        assert_eq!(int("+5", KeyType::Int8), Some(KeyValue::Int(5)));
        assert_eq!(int("32767", KeyType::Int2), Some(KeyValue::Int(32767)));
        assert_eq!(int("32768", KeyType::Int2), None);
        assert_eq!(int("-32768", KeyType::Int2), Some(KeyValue::Int(-32768)));
        assert_eq!(int("2147483648", KeyType::Int4), None);
        assert_eq!(
            int("-9223372036854775808", KeyType::Int8),
            Some(KeyValue::Int(i64::MIN))
        );
        assert_eq!(int("9223372036854775808", KeyType::Int8), None);
        for bad in [
            "", " ", "+", "-", "1.0", "0x10", "1_000", "1 2", "--1", "１",
        ] {
            assert_eq!(int(bad, KeyType::Int8), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_uuids_like_postgres() {
        let canonical = parse_key("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", KeyType::Uuid);
        assert!(canonical.is_some());
        for same in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(parse_key(same, KeyType::Uuid), canonical, "{same}");
        }
        for bad in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(parse_key(bad, KeyType::Uuid), None, "{bad}");
        }
    }

    #[test]
    fn decodes_binary_parameters() {
        assert_eq!(
            key_from_binary(&[0xff, 0xfe], KeyType::Int2),
            Some(KeyValue::Int(-2))
        );
        assert_eq!(
            key_from_binary(&[0, 0, 1, 0], KeyType::Int4),
            Some(KeyValue::Int(256))
        );
        assert_eq!(
            key_from_binary(&i64::MIN.to_be_bytes(), KeyType::Int8),
            Some(KeyValue::Int(i64::MIN))
        );
        assert_eq!(key_from_binary(&[0, 1], KeyType::Int4), None);
        assert_eq!(key_from_binary(&[0; 4], KeyType::Int8), None);
        assert_eq!(
            key_from_binary("日本".as_bytes(), KeyType::Text),
            Some(KeyValue::Text("日本".into()))
        );
        assert_eq!(key_from_binary(&[0xff], KeyType::Varchar), None);
        assert_eq!(
            key_from_binary(&[7; 16], KeyType::Uuid),
            Some(KeyValue::Uuid([7; 16]))
        );
        assert_eq!(key_from_binary(&[7; 15], KeyType::Uuid), None);
    }

    fn any_key_type() -> impl Strategy<Value = KeyType> {
        prop_oneof![
            Just(KeyType::Int2),
            Just(KeyType::Int4),
            Just(KeyType::Int8),
            Just(KeyType::Text),
            Just(KeyType::Varchar),
            Just(KeyType::Uuid),
        ]
    }

    proptest! {
        #[test]
        fn bucket_is_in_range(v in any::<i64>(), s in ".*", u in any::<[u8; 16]>(),
                              buckets in 1u32..=u32::MAX) {
            for key in [KeyValue::Int(v), KeyValue::Text(s.clone()), KeyValue::Uuid(u)] {
                prop_assert!(bucket(&key, buckets).0 < buckets);
            }
        }

        #[test]
        fn integer_types_agree(v in any::<i16>()) {
            // The same value hashes alike whatever integer type it came from.
            let as16 = key_from_binary(&v.to_be_bytes(), KeyType::Int2);
            let as32 = key_from_binary(&i32::from(v).to_be_bytes(), KeyType::Int4);
            let as64 = key_from_binary(&i64::from(v).to_be_bytes(), KeyType::Int8);
            prop_assert_eq!(&as16, &as32);
            prop_assert_eq!(&as32, &as64);
        }

        #[test]
        fn parsers_never_panic(text in ".*", bytes in proptest::collection::vec(any::<u8>(), 0..40),
                               key_type in any_key_type()) {
            let _ = parse_key(&text, key_type);
            let _ = key_from_binary(&bytes, key_type);
            let _ = bucket_sql_expr(&text, key_type, 1024);
        }

        #[test]
        fn integers_parse_as_the_standard_parser_does(text in "[ \t\n+-]{0,2}[0-9a]{0,21}[ \n]{0,2}") {
            // The standard parser on the trimmed text, digits and one sign only.
            let trimmed = text.trim_matches(is_pg_space);
            let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
            let expected = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| trimmed.parse::<i64>().ok())
                .flatten();
            prop_assert_eq!(parse_int(&text), expected);
        }

        #[test]
        fn integers_round_trip_through_text(v in any::<i64>()) {
            prop_assert_eq!(parse_key(&v.to_string(), KeyType::Int8), Some(KeyValue::Int(v)));
        }

        #[test]
        fn uuids_round_trip_through_text(u in any::<[u8; 16]>()) {
            let text = uuid::Uuid::from_bytes(u).to_string();
            prop_assert_eq!(parse_key(&text, KeyType::Uuid), Some(KeyValue::Uuid(u)));
            let simple = uuid::Uuid::from_bytes(u).simple().to_string();
            prop_assert_eq!(parse_key(&simple, KeyType::Uuid), Some(KeyValue::Uuid(u)));
        }

        #[test]
        fn hashing_long_inputs_never_panics(len in 0usize..4096) {
            let s = "é".repeat(len);
            let _ = bucket(&KeyValue::Text(s), 4096);
        }
    }
}

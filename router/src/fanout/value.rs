//! Comparing text-format values as PostgreSQL orders them, for the k-way merge of
//! sorted shard results (SPEC §5 rule 2). Only types whose order the router can
//! reproduce exactly from their text output are supported; any other sort key type is
//! refused with 0A000 before a row reaches the client.
//!
//! Text orders by bytes, which is PostgreSQL's order only under a byte-order collation;
//! the planner adds a `pg_collation_for(key)` probe per sort key, checked by
//! [`collation_is_bytewise`]. The shards are initdb'd with `C.UTF-8`, so `default` is
//! one of them.

use std::cmp::Ordering;

/// How to compare the values of one sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Numeric,
    Bool,
    /// text, varchar, name, uuid: UTF-8 bytes.
    Bytes,
    /// character(n): bytes without trailing spaces.
    Bpchar,
    /// date and timestamp in ISO style: bytes, after a shape check.
    IsoDateTime,
    /// timestamptz in ISO style: the UTC instant.
    TimestampTz,
}

impl Kind {
    /// The comparison for a column type, or `None` if the router cannot order it.
    pub fn of(oid: u32) -> Option<Kind> {
        Some(match oid {
            20 | 21 | 23 | 26 => Kind::Int,
            700 | 701 => Kind::Float,
            1700 => Kind::Numeric,
            16 => Kind::Bool,
            25 | 1043 | 19 | 705 | 2950 => Kind::Bytes,
            1042 => Kind::Bpchar,
            1082 | 1114 => Kind::IsoDateTime,
            1184 => Kind::TimestampTz,
            _ => return None,
        })
    }

    /// True if the type has a collation (text-like).
    pub fn collatable(self) -> bool {
        matches!(self, Kind::Bytes | Kind::Bpchar)
    }
}

/// A `pg_collation_for` result under which text orders by its bytes.
pub fn collation_is_bytewise(probe: Option<&[u8]>) -> bool {
    match probe {
        None => true,
        Some(p) => {
            let p = std::str::from_utf8(p).unwrap_or("").trim_matches('"');
            matches!(
                p,
                "default" | "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "ucs_basic"
            )
        }
    }
}

/// A value that cannot be compared (an unexpected text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

/// Compare two non-NULL values of one kind.
pub fn compare(kind: Kind, a: &[u8], b: &[u8]) -> Result<Ordering, BadValue> {
    fn s(x: &[u8]) -> Result<&str, BadValue> {
        std::str::from_utf8(x).map_err(|_| BadValue("invalid UTF-8".into()))
    }
    Ok(match kind {
        Kind::Int => {
            let p = |x: &[u8]| -> Result<i64, BadValue> {
                s(x)?
                    .parse()
                    .map_err(|_| BadValue(format!("integer {:?}", s(x))))
            };
            p(a)?.cmp(&p(b)?)
        }
        Kind::Float => float_key(s(a)?)?.cmp(&float_key(s(b)?)?),
        Kind::Numeric => numeric_cmp(s(a)?, s(b)?)?,
        Kind::Bool => a.cmp(b),
        Kind::Bytes => a.cmp(b),
        Kind::Bpchar => trim_spaces(a).cmp(trim_spaces(b)),
        Kind::IsoDateTime => {
            let ka = iso_key(s(a)?)?;
            let kb = iso_key(s(b)?)?;
            ka.cmp(&kb)
        }
        Kind::TimestampTz => tstz_key(s(a)?)?.cmp(&tstz_key(s(b)?)?),
    })
}

/// Compare two non-NULL values of one kind in binary format (type `oid`), as
/// PostgreSQL's send functions write them: integers, dates and timestamps big-endian
/// (date and timestamp infinities are the extreme values, so they order too), floats
/// IEEE 754, numeric as base-10000 digits (decoded to its text form), text-like types
/// as their bytes, uuid as its 16 bytes (the order of its text form).
pub fn compare_binary(oid: u32, kind: Kind, a: &[u8], b: &[u8]) -> Result<Ordering, BadValue> {
    fn int(oid: u32, x: &[u8]) -> Result<i64, BadValue> {
        Ok(match (oid, x.len()) {
            (26, 4) => i64::from(u32::from_be_bytes([x[0], x[1], x[2], x[3]])),
            (_, 2) => i64::from(i16::from_be_bytes([x[0], x[1]])),
            (_, 4) => i64::from(i32::from_be_bytes([x[0], x[1], x[2], x[3]])),
            (_, 8) => i64::from_be_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]),
            (_, n) => return Err(BadValue(format!("binary integer of {n} bytes"))),
        })
    }
    fn float(x: &[u8]) -> Result<(u8, OrdF64), BadValue> {
        let v = match x.len() {
            4 => f64::from(f32::from_be_bytes([x[0], x[1], x[2], x[3]])),
            8 => f64::from_be_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]),
            n => return Err(BadValue(format!("binary float of {n} bytes"))),
        };
        Ok(if v.is_nan() {
            (2, OrdF64(0.0))
        } else {
            (1, OrdF64(if v == 0.0 { 0.0 } else { v }))
        })
    }
    Ok(match kind {
        Kind::Int | Kind::IsoDateTime | Kind::TimestampTz => int(oid, a)?.cmp(&int(oid, b)?),
        Kind::Float => float(a)?.cmp(&float(b)?),
        Kind::Numeric => numeric_cmp(&numeric_text(a)?, &numeric_text(b)?)?,
        Kind::Bool | Kind::Bytes => a.cmp(b),
        Kind::Bpchar => trim_spaces(a).cmp(trim_spaces(b)),
    })
}

/// The text form of a binary numeric (`numeric_send`): digit count, weight, sign,
/// display scale, then base-10000 digits; trailing zeros of the fraction dropped.
pub fn numeric_text(x: &[u8]) -> Result<String, BadValue> {
    let bad = || BadValue("binary numeric".into());
    let word = |i: usize| -> Result<u16, BadValue> {
        x.get(2 * i..2 * i + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(bad)
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err(bad()),
    }
    let digit = |k: i64| -> Result<u16, BadValue> {
        if k < 0 || k >= ndigits as i64 {
            Ok(0)
        } else {
            word(4 + k as usize)
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=weight {
            let d = digit(k)?;
            if k == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    let last = ndigits as i64 - 1;
    if last > weight {
        out.push('.');
        for k in (weight + 1).max(0)..=last {
            out.push_str(&format!("{:04}", digit(k)?));
        }
        // Leading zero groups of a value below 10^-4 (weight < -1).
        if weight < -1 {
            let zeros = "0000".repeat((-weight - 1) as usize);
            let dot = out.find('.').unwrap_or(out.len());
            out.insert_str(dot + 1, &zeros);
        }
    }
    Ok(out)
}

fn trim_spaces(x: &[u8]) -> &[u8] {
    let end = x.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    &x[..end]
}

/// Total order of float8: -Infinity < numbers (with -0 = 0) < Infinity < NaN.
fn float_key(t: &str) -> Result<(u8, OrdF64), BadValue> {
    Ok(match t {
        "NaN" => (2, OrdF64(0.0)),
        _ => {
            let v: f64 = t.parse().map_err(|_| BadValue(format!("float {t}")))?;
            (1, OrdF64(if v == 0.0 { 0.0 } else { v }))
        }
    })
}

/// A float that is never NaN here (NaN is ranked apart), so its order is total.
#[derive(Debug, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.partial_cmp(&o.0).unwrap_or(Ordering::Equal)
    }
}

/// numeric: -Infinity < finite values < Infinity < NaN, finite values exactly.
fn numeric_cmp(a: &str, b: &str) -> Result<Ordering, BadValue> {
    let class = |t: &str| match t {
        "-Infinity" => 0,
        "Infinity" => 2,
        "NaN" => 3,
        _ => 1,
    };
    let (ca, cb) = (class(a), class(b));
    if ca != 1 || cb != 1 {
        return Ok(ca.cmp(&cb));
    }
    let parse = |t: &str| -> Result<(bool, String, String), BadValue> {
        let (neg, digits) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty()
            || !int.bytes().all(|c| c.is_ascii_digit())
            || !frac.bytes().all(|c| c.is_ascii_digit())
        {
            return Err(BadValue(format!("numeric {t}")));
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        let zero = int.is_empty() && frac.is_empty();
        Ok((neg && !zero, int, frac))
    };
    let (na, ia, fa) = parse(a)?;
    let (nb, ib, fb) = parse(b)?;
    let mag = ia
        .len()
        .cmp(&ib.len())
        .then_with(|| ia.cmp(&ib))
        .then_with(|| fa.cmp(&fb));
    Ok(match (na, nb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => mag,
        (true, true) => mag.reverse(),
    })
}

/// ISO date / timestamp (`YYYY-MM-DD[ HH:MM:SS[.f…]]`, four-digit AD years) orders
/// by its bytes; `-infinity`/`infinity` sort first/last.
fn iso_key(t: &str) -> Result<(u8, &str), BadValue> {
    match t {
        "-infinity" => return Ok((0, "")),
        "infinity" => return Ok((2, "")),
        _ => {}
    }
    let b = t.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let ok_date = b.len() >= 10
        && (0..4).all(digit)
        && b[4] == b'-'
        && digit(5)
        && digit(6)
        && b[7] == b'-'
        && digit(8)
        && digit(9);
    let rest = &t[10.min(t.len())..];
    let ok_time = rest.is_empty()
        || (rest.len() >= 9
            && rest.as_bytes()[0] == b' '
            && rest[1..]
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b':' || c == b'.'));
    if ok_date && ok_time {
        Ok((1, t))
    } else {
        Err(BadValue(format!(
            "date/time {t} (only ISO DateStyle merges)"
        )))
    }
}

/// timestamptz in ISO style (`YYYY-MM-DD HH:MM:SS[.f][+-]HH[:MM[:SS]]`) as UTC
/// microseconds.
fn tstz_key(t: &str) -> Result<(u8, i128), BadValue> {
    match t {
        "-infinity" => return Ok((0, 0)),
        "infinity" => return Ok((2, 0)),
        _ => {}
    }
    let bad = || BadValue(format!("timestamptz {t} (only ISO DateStyle merges)"));
    let (date, rest) = t.split_once(' ').ok_or_else(bad)?;
    let mut dp = date.split('-');
    let y: i64 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let m: i64 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let d: i64 = dp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if dp.next().is_some() || date.len() != 10 {
        return Err(bad());
    }
    let split = rest.find(['+', '-']).ok_or_else(bad)?;
    let (time, off) = rest.split_at(split);
    let mut tp = time.split(':');
    let hh: i64 = tp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let mi: i64 = tp.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let sec = tp.next().ok_or_else(bad)?;
    let (ss, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let ss: i64 = ss.parse().map_err(|_| bad())?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let micros_frac: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut op = off[1..].split(':');
    let oh: i64 = op.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let om: i64 = op.next().map_or(Ok(0), str::parse).map_err(|_| bad())?;
    let os: i64 = op.next().map_or(Ok(0), str::parse).map_err(|_| bad())?;
    let days = days_from_civil(y, m, d);
    let local = ((days * 24 + hh) * 60 + mi) * 60 + ss;
    let utc = local - sign * (oh * 3600 + om * 60 + os);
    Ok((1, i128::from(utc) * 1_000_000 + i128::from(micros_frac)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(k: Kind, a: &str, b: &str) -> Ordering {
        compare(k, a.as_bytes(), b.as_bytes()).expect("comparable")
    }

    #[test]
    fn numbers() {
        assert_eq!(c(Kind::Int, "-5", "3"), Ordering::Less);
        assert_eq!(c(Kind::Numeric, "10.50", "10.5"), Ordering::Equal);
        assert_eq!(c(Kind::Numeric, "-10.5", "-9"), Ordering::Less);
        assert_eq!(c(Kind::Numeric, "0.00", "-0"), Ordering::Equal);
        assert_eq!(c(Kind::Numeric, "NaN", "Infinity"), Ordering::Greater);
        assert_eq!(c(Kind::Numeric, "99", "100"), Ordering::Less);
        assert_eq!(c(Kind::Float, "NaN", "Infinity"), Ordering::Greater);
        assert_eq!(c(Kind::Float, "-0", "0"), Ordering::Equal);
        assert_eq!(c(Kind::Float, "-Infinity", "-1e+300"), Ordering::Less);
        assert_eq!(c(Kind::Float, "1e-05", "0.001"), Ordering::Less);
    }

    #[test]
    fn texts_and_times() {
        assert_eq!(c(Kind::Bytes, "B", "a"), Ordering::Less);
        assert_eq!(c(Kind::Bytes, "z", "é"), Ordering::Less);
        assert_eq!(c(Kind::Bpchar, "a  ", "a"), Ordering::Equal);
        assert_eq!(
            c(
                Kind::IsoDateTime,
                "2024-01-01 10:00:00",
                "2024-01-01 10:00:00.5"
            ),
            Ordering::Less
        );
        assert_eq!(
            c(Kind::IsoDateTime, "infinity", "2024-01-01"),
            Ordering::Greater
        );
        assert_eq!(
            c(
                Kind::TimestampTz,
                "2024-11-03 01:30:00-04",
                "2024-11-03 01:10:00-05"
            ),
            Ordering::Less
        );
        assert_eq!(
            c(
                Kind::TimestampTz,
                "2024-01-01 00:00:00.25+00",
                "2024-01-01 00:00:00.3+00"
            ),
            Ordering::Less
        );
        assert!(compare(Kind::IsoDateTime, b"01/02/2024", b"2024-01-01").is_err());
        assert!(collation_is_bytewise(Some(b"\"C\"")));
        assert!(collation_is_bytewise(Some(b"default")));
        assert!(!collation_is_bytewise(Some(b"\"de_DE\"")));
    }

    #[test]
    fn binary_values_compare_like_postgres() {
        use std::cmp::Ordering::*;
        let num =
            |words: &[u16]| -> Vec<u8> { words.iter().flat_map(|w| w.to_be_bytes()).collect() };
        // 12345.678, 0.0001234, 1e-6, -5, NaN
        assert_eq!(
            numeric_text(&num(&[3, 1, 0, 3, 1, 2345, 6780])).expect("decodes"),
            "12345.6780"
        );
        assert_eq!(
            numeric_text(&num(&[2, 0xFFFF, 0, 7, 1, 2340])).expect("decodes"),
            "0.00012340"
        );
        assert_eq!(
            numeric_text(&num(&[1, 0xFFFE, 0, 6, 100])).expect("decodes"),
            "0.00000100"
        );
        assert_eq!(
            numeric_text(&num(&[1, 0, 0x4000, 0, 5])).expect("decodes"),
            "-5"
        );
        assert_eq!(numeric_text(&num(&[0, 0, 0, 0])).expect("decodes"), "0");
        assert_eq!(
            numeric_text(&num(&[0, 0, 0xC000, 0])).expect("decodes"),
            "NaN"
        );
        let c = |oid, k, a: &[u8], b: &[u8]| compare_binary(oid, k, a, b).expect("decodes");
        assert_eq!(
            c(23, Kind::Int, &(-1i32).to_be_bytes(), &2i32.to_be_bytes()),
            Less
        );
        assert_eq!(
            c(20, Kind::Int, &5i64.to_be_bytes(), &(-7i64).to_be_bytes()),
            Greater
        );
        assert_eq!(
            c(26, Kind::Int, &u32::MAX.to_be_bytes(), &1u32.to_be_bytes()),
            Greater
        );
        assert_eq!(
            c(
                701,
                Kind::Float,
                &f64::NAN.to_be_bytes(),
                &f64::INFINITY.to_be_bytes()
            ),
            Greater
        );
        assert_eq!(
            c(
                700,
                Kind::Float,
                &(-0.0f32).to_be_bytes(),
                &0.0f32.to_be_bytes()
            ),
            Equal
        );
        assert_eq!(
            c(
                1700,
                Kind::Numeric,
                &num(&[1, 0, 0x4000, 0, 5]),
                &num(&[0, 0, 0, 0])
            ),
            Less
        );
        assert_eq!(
            c(
                1184,
                Kind::TimestampTz,
                &(-1i64).to_be_bytes(),
                &i64::MAX.to_be_bytes()
            ),
            Less
        );
        assert_eq!(c(1042, Kind::Bpchar, b"ab  ", b"ab"), Equal);
    }
}

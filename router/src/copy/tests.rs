//! The splitter against hand-written streams and, with proptest, against every way of
//! cutting a stream into CopyData messages.

use super::*;
use pgshard_sql::CopyFormat;
use proptest::prelude::*;

fn opts(format: CopyFormat) -> CopyOptions {
    let csv = format == CopyFormat::Csv;
    CopyOptions {
        format,
        delimiter: if csv { b',' } else { b'\t' },
        null: if csv { String::new() } else { "\\N".into() },
        header: false,
        quote: b'"',
        escape: b'"',
        force_not_null: Vec::new(),
        force_null: Vec::new(),
    }
}

fn key(index: usize) -> Option<KeySpec> {
    Some(KeySpec {
        index,
        column: "id".into(),
        force_not_null: false,
        force_null: false,
    })
}

/// Everything the splitter hands out for `data` cut at `cuts`, or its first error.
fn split(
    o: &CopyOptions,
    k: Option<KeySpec>,
    data: &[u8],
    cuts: &[usize],
) -> Result<Vec<Piece>, CopyError> {
    let mut s = Splitter::new(o, k);
    let mut out = Vec::new();
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(data.len());
    for b in bounds {
        s.push(&data[at..b]);
        at = b;
        while let Some(p) = s.next_piece()? {
            out.push(p);
        }
    }
    if let Some(p) = s.finish()? {
        out.push(p);
    }
    Ok(out)
}

fn rows(pieces: &[Piece]) -> Vec<(String, Option<KeyField>)> {
    pieces
        .iter()
        .map(|p| match p {
            Piece::All(b) => (format!("ALL:{}", String::from_utf8_lossy(b)), None),
            Piece::Row { bytes, key, .. } => {
                (String::from_utf8_lossy(bytes).into_owned(), key.clone())
            }
        })
        .collect()
}

fn text(s: &str) -> Option<KeyField> {
    Some(KeyField::Text(s.into()))
}

#[test]
fn text_rows_and_escapes() {
    let data = b"1\ta\n2\tb\\\nc\n\\N\tx\r\n3\\t4\ty\n5\t\\x41\\101";
    let got = rows(&split(&opts(CopyFormat::Text), key(0), data, &[]).expect("splits"));
    assert_eq!(
        got,
        vec![
            ("1\ta\n".into(), text("1")),
            // A backslash escapes the newline: one row.
            ("2\tb\\\nc\n".into(), text("2")),
            ("\\N\tx\r\n".into(), Some(KeyField::Null)),
            ("3\\t4\ty\n".into(), text("3\t4")),
            // The last row may lack its newline.
            ("5\t\\x41\\101".into(), text("5")),
        ]
    );
    let got =
        rows(&split(&opts(CopyFormat::Text), key(1), b"1\t\\x41\\101\\\\\n", &[]).expect("splits"));
    assert_eq!(got[0].1, text("AA\\"));
}

#[test]
fn text_end_marker_and_missing_fields() {
    let data = b"1\ta\n\\.\n2\tb\n";
    let got = rows(&split(&opts(CopyFormat::Text), key(0), data, &[]).expect("splits"));
    assert_eq!(got, vec![("1\ta\n".into(), text("1"))]);
    let err = split(&opts(CopyFormat::Text), key(2), b"1\ta\n", &[]).expect_err("too short");
    assert_eq!(err.code(), "22P04");
    assert_eq!(err.to_string(), "missing data for column \"id\"");
}

#[test]
fn csv_quotes_newlines_and_nulls() {
    let mut o = opts(CopyFormat::Csv);
    o.header = true;
    let data = b"id,v\n\"1\",\"multi\nline\"\n2,\"a\"\"b,c\"\n,x\n\"\",y\n3,\"\\.\"\n";
    let got = rows(&split(&o, key(0), data, &[]).expect("splits"));
    assert_eq!(
        got,
        vec![
            ("ALL:id,v\n".into(), None),
            ("\"1\",\"multi\nline\"\n".into(), text("1")),
            ("2,\"a\"\"b,c\"\n".into(), text("2")),
            (",x\n".into(), Some(KeyField::Null)),
            // A quoted empty string is not NULL.
            ("\"\",y\n".into(), text("")),
            ("3,\"\\.\"\n".into(), text("3")),
        ]
    );
    // The key in a quoted field with doubled quotes.
    let got = rows(&split(&o, key(1), data, &[]).expect("splits"));
    assert_eq!(got[2].1, text("a\"b,c"));
}

#[test]
fn csv_escape_and_force_options() {
    let mut o = opts(CopyFormat::Csv);
    o.escape = b'\\';
    let data = b"\"a\\\"\nb\",1\n";
    let got = rows(&split(&o, key(0), data, &[]).expect("splits"));
    assert_eq!(
        got,
        vec![(String::from_utf8_lossy(data).into_owned(), text("a\"\nb"))]
    );
    let o = opts(CopyFormat::Csv);
    let mut k = key(0);
    if let Some(k) = k.as_mut() {
        k.force_not_null = true;
    }
    let got = rows(&split(&o, k, b",1\n", &[]).expect("splits"));
    assert_eq!(got[0].1, text(""));
    let mut k = key(0);
    if let Some(k) = k.as_mut() {
        k.force_null = true;
    }
    let got = rows(&split(&o, k, b"\"\",1\n", &[]).expect("splits"));
    assert_eq!(got[0].1, Some(KeyField::Null));
    // `\.` alone on a line ends csv data.
    let got = rows(&split(&o, key(0), b"1,a\n\\.\n2,b\n", &[]).expect("splits"));
    assert_eq!(got.len(), 1);
}

fn binary_stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
    let mut out = BINARY_SIGNATURE.to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for r in rows {
        out.extend_from_slice(&(r.len() as i16).to_be_bytes());
        for f in r {
            match f {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
    }
    out.extend_from_slice(&BINARY_TRAILER);
    out
}

#[test]
fn binary_tuples() {
    let data = binary_stream(&[
        vec![Some(7i64.to_be_bytes().to_vec()), Some(b"x".to_vec())],
        vec![None, Some(b"y".to_vec())],
    ]);
    let o = opts(CopyFormat::Binary);
    let got = split(&o, key(0), &data, &[]).expect("splits");
    assert_eq!(got.len(), 3);
    assert!(matches!(&got[0], Piece::All(h) if h.len() == 19));
    assert!(
        matches!(&got[1], Piece::Row { key: Some(KeyField::Binary(b)), .. } if b[..] == 7i64.to_be_bytes())
    );
    assert!(matches!(
        &got[2],
        Piece::Row {
            key: Some(KeyField::Null),
            ..
        }
    ));
    let mut s = Splitter::new(&o, key(0));
    s.push(&data);
    while s.next_piece().expect("ok").is_some() {}
    assert!(s.ended() && s.needs_trailer());
    // Cut short: an error at CopyDone.
    let err = split(&o, key(0), &data[..data.len() - 5], &[]).expect_err("short");
    assert_eq!(err.code(), "22P04");
    let err = split(&o, key(0), b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", &[]).expect_err("sig");
    assert_eq!(err.to_string(), "COPY file signature not recognized");
}

#[test]
fn key_values() {
    use pgshard_catalog::{KeyType, KeyValue};
    let k = |f: KeyField, t| key_value(&f, t, "t", "id", 3);
    assert_eq!(
        k(KeyField::Text(" 42 ".into()), KeyType::Int4),
        Ok(KeyValue::Int(42))
    );
    assert_eq!(
        k(KeyField::Text("x".into()), KeyType::Int8).map_err(|e| e.code()),
        Err("22P02")
    );
    assert_eq!(
        k(KeyField::Text("99999999999".into()), KeyType::Int4).map_err(|e| e.code()),
        Err("22003")
    );
    let e = k(KeyField::Null, KeyType::Int8).expect_err("null");
    assert_eq!(e.code(), "23502");
    assert_eq!(
        e.to_string(),
        "null value in column \"id\" of relation \"t\" violates not-null constraint"
    );
    assert_eq!(
        k(
            KeyField::Binary(Bytes::from_static(&[0, 0, 0, 5])),
            KeyType::Int8
        ),
        Ok(KeyValue::Int(5))
    );
    assert_eq!(
        k(
            KeyField::Binary(Bytes::from_static(&[0, 5, 1])),
            KeyType::Int8
        )
        .map_err(|e| e.code()),
        Err("22P03")
    );
}

/// A text or csv field value the generators use (with the characters that matter).
fn field() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-c,\"\\\\\t\n\r. ]{0,6}").expect("regex")
}

fn text_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn csv_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

proptest! {
    #[test]
    fn text_chunking_gives_the_same_rows(
        table in proptest::collection::vec((0i64..1000, field()), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        crlf in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let data: String = table
            .iter()
            .map(|(k, v)| format!("{k}\t{}{eol}", text_escape(v)))
            .collect();
        let o = opts(CopyFormat::Text);
        let whole = split(&o, key(1), data.as_bytes(), &[]).expect("splits");
        let cut = split(&o, key(1), data.as_bytes(), &cuts).expect("splits");
        prop_assert_eq!(&whole, &cut);
        prop_assert_eq!(whole.len(), table.len());
        for (p, (_, v)) in whole.iter().zip(&table) {
            let Piece::Row { key, .. } = p else { panic!("a row") };
            prop_assert_eq!(key.clone(), text(v));
        }
        let firsts = split(&o, key(0), data.as_bytes(), &cuts).expect("splits");
        for (p, (k, _)) in firsts.iter().zip(&table) {
            let Piece::Row { key, .. } = p else { panic!("a row") };
            prop_assert_eq!(key.clone(), text(&k.to_string()));
        }
        // The rows put back together are the input.
        let joined: Vec<u8> = cut
            .iter()
            .flat_map(|p| match p { Piece::Row { bytes, .. } | Piece::All(bytes) => bytes.to_vec() })
            .collect();
        prop_assert_eq!(joined, data.into_bytes());
    }

    #[test]
    fn csv_chunking_gives_the_same_rows(
        table in proptest::collection::vec((field(), field(), any::<bool>()), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        header in any::<bool>(),
    ) {
        let mut data = String::new();
        if header {
            data.push_str("\"k\nk\",v\n");
        }
        for (k, v, quote_k) in &table {
            // A field with specials must be quoted; others may be.
            let special = k.is_empty() || k.contains(['"', ',', '\n', '\r']) || k.starts_with("\\.");
            let kq = if *quote_k || special { csv_quote(k) } else { k.clone() };
            data.push_str(&format!("{kq},{}\n", csv_quote(v)));
        }
        let mut o = opts(CopyFormat::Csv);
        o.header = header;
        let whole = split(&o, key(0), data.as_bytes(), &[]).expect("splits");
        let cut = split(&o, key(0), data.as_bytes(), &cuts).expect("splits");
        prop_assert_eq!(&whole, &cut);
        let rows: Vec<&Piece> = whole.iter().filter(|p| matches!(p, Piece::Row { .. })).collect();
        prop_assert_eq!(rows.len(), table.len());
        for (p, (k, _, _)) in rows.iter().zip(&table) {
            let Piece::Row { key, .. } = p else { panic!("a row") };
            prop_assert_eq!(key.clone(), text(k));
        }
        let vals = split(&o, key(1), data.as_bytes(), &cuts).expect("splits");
        let vals: Vec<&Piece> = vals.iter().filter(|p| matches!(p, Piece::Row { .. })).collect();
        for (p, (_, v, _)) in vals.iter().zip(&table) {
            let Piece::Row { key, .. } = p else { panic!("a row") };
            prop_assert_eq!(key.clone(), text(v));
        }
    }

    #[test]
    fn binary_chunking_gives_the_same_rows(
        table in proptest::collection::vec(
            (proptest::option::of(any::<i64>()), proptest::collection::vec(any::<u8>(), 0..40)),
            0..10,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let rows: Vec<Vec<Option<Vec<u8>>>> = table
            .iter()
            .map(|(k, v)| vec![k.map(|k| k.to_be_bytes().to_vec()), Some(v.clone())])
            .collect();
        let data = binary_stream(&rows);
        let o = opts(CopyFormat::Binary);
        let whole = split(&o, key(0), &data, &[]).expect("splits");
        let cut = split(&o, key(0), &data, &cuts).expect("splits");
        prop_assert_eq!(&whole, &cut);
        prop_assert_eq!(whole.len(), table.len() + 1);
        for (p, (k, _)) in whole[1..].iter().zip(&table) {
            let Piece::Row { key, .. } = p else { panic!("a row") };
            let want = match k {
                None => KeyField::Null,
                Some(k) => KeyField::Binary(Bytes::copy_from_slice(&k.to_be_bytes())),
            };
            prop_assert_eq!(key.clone(), Some(want));
        }
        // Header and rows put back together, plus the trailer, are the input.
        let mut joined: Vec<u8> = whole
            .iter()
            .flat_map(|p| match p { Piece::Row { bytes, .. } | Piece::All(bytes) => bytes.to_vec() })
            .collect();
        joined.extend_from_slice(&BINARY_TRAILER);
        prop_assert_eq!(joined, data);
    }
}

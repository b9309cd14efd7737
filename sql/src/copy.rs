//! `COPY` through the router (SPEC §6): what the planner reads from a COPY statement so
//! the router can split `COPY t FROM STDIN` by shard key and fan `COPY … TO STDOUT`
//! out over the shards.
//!
//! sqlparser cannot parse many COPY statements (`WITH (FREEZE ON)`, the pre-9.0 option
//! syntax, `COPY BINARY t`), so the statement is read from its tokens. The router needs
//! the options exactly as the shards will apply them (the delimiter, quote and escape
//! characters decide where a row ends and which field holds the key): an option this
//! module cannot read with certainty refuses the statement with 0A000 rather than risk
//! splitting rows differently from PostgreSQL. Unknown option names are left to the
//! shards, which reject them before any row is routed.

use crate::parse::{skip_parens, Tok, Token};
use pgshard_catalog::{KeyType, ShardId};

/// A COPY the router runs on several shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// The relation name for messages (`accounts`), or the tables a `COPY (query)`
    /// reads, joined with `, `.
    pub table: String,
    /// The table name as written in the statement (`app."Orders"`), for a `regclass`
    /// literal; empty for `COPY (query)`.
    pub table_sql: String,
    /// The column list, folded; `None` for all columns in table order.
    pub columns: Option<Vec<String>>,
    pub direction: CopyDirection,
    pub options: CopyOptions,
    /// The shards that run the statement (every shard for COPY FROM).
    pub shards: Vec<ShardId>,
    /// The shard key of a distributed table (COPY FROM routes each row by it); `None`
    /// for a reference table (every row to every shard) and for COPY TO.
    pub key: Option<CopyKey>,
    /// The statement as the client wrote it; every shard runs it unchanged, except
    /// the shards of `moving_sql` while a bucket move is under way ([`crate::moving`]).
    pub sql: String,
    pub moving_sql: Vec<(ShardId, String)>,
}

impl CopyPlan {
    /// The statement `shard` runs.
    pub fn sql_for(&self, shard: ShardId) -> &str {
        self.moving_sql
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or(self.sql.as_str(), |(_, sql)| sql)
    }
}

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY … FROM STDIN`.
    In,
    /// `COPY … TO STDOUT`.
    Out,
}

/// The shard key of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyKey {
    pub column: String,
    pub key_type: KeyType,
}

/// The data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The COPY options that decide how the data stream splits into rows and fields
/// (PostgreSQL's defaults unless the statement says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    /// One byte: `\t` for text, `,` for csv.
    pub delimiter: u8,
    /// `\N` for text, the empty string for csv.
    pub null: String,
    /// The first line is a header (text and csv; `HEADER MATCH` too).
    pub header: bool,
    /// csv only: `"` unless set.
    pub quote: u8,
    /// csv only: the quote character unless set.
    pub escape: u8,
    /// csv: columns whose quoted or unquoted value is never NULL.
    pub force_not_null: Vec<String>,
    /// csv: columns whose quoted value matching the NULL string is NULL too.
    pub force_null: Vec<String>,
}

impl CopyOptions {
    fn defaults(format: CopyFormat) -> CopyOptions {
        CopyOptions {
            format,
            delimiter: if format == CopyFormat::Csv {
                b','
            } else {
                b'\t'
            },
            null: if format == CopyFormat::Csv {
                String::new()
            } else {
                "\\N".to_owned()
            },
            header: false,
            quote: b'"',
            escape: b'"',
            force_not_null: Vec::new(),
            force_null: Vec::new(),
        }
    }
}

/// The shape of a COPY statement as far as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyStatement {
    /// `COPY BINARY t …` (the pre-7.3 spelling PostgreSQL still accepts).
    pub binary_prefix: bool,
    /// The token index after the table name or `( query )`.
    pub after_source: usize,
    pub columns: Option<Vec<String>>,
    pub direction: CopyDirection,
    /// `FROM STDIN` / `TO STDOUT` (rather than a file or a program).
    pub stdio: bool,
    pub options: CopyOptions,
}

/// Reads `… {FROM | TO} {STDIN | STDOUT | 'file' | PROGRAM 'cmd'} [options]` starting at
/// token `k` (just after the table name, its column list not yet read). `Err` is the
/// 0A000 message for what the router cannot read with certainty.
pub(crate) fn read_tail(
    toks: &[Token<'_>],
    mut k: usize,
    binary_prefix: bool,
) -> Result<CopyStatement, String> {
    let mut columns = None;
    if toks.get(k).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        let end = skip_parens(toks, k);
        let mut cols = Vec::new();
        for t in &toks[k + 1..end.saturating_sub(1)] {
            match t.tok {
                Tok::Punct(b',') => {}
                tok => cols.push(
                    tok.ident()
                        .ok_or_else(|| "COPY column list the router cannot read".to_owned())?,
                ),
            }
        }
        columns = Some(cols);
        k = end;
    }
    let after_source = k;
    let direction = match toks.get(k).map(|t| t.tok) {
        Some(t) if t.is_word("from") => CopyDirection::In,
        Some(t) if t.is_word("to") => CopyDirection::Out,
        _ => return Err("COPY statement the router cannot read".to_owned()),
    };
    k += 1;
    let stdio = match toks.get(k).map(|t| t.tok) {
        Some(t) if t.is_word("stdin") || t.is_word("stdout") => {
            k += 1;
            true
        }
        Some(t) if t.is_word("program") => {
            k += 2;
            false
        }
        _ => {
            k += 1;
            false
        }
    };
    let options = read_options(toks, k, binary_prefix)?;
    Ok(CopyStatement {
        binary_prefix,
        after_source,
        columns,
        direction,
        stdio,
        options,
    })
}

/// A raw option as written: name and value tokens.
struct RawOption<'t, 'a> {
    name: String,
    value: &'t [Token<'a>],
}

/// The options after `STDIN`/`STDOUT`: `[USING] DELIMITERS 'c'`, then either `[WITH]
/// ( name [value], … )` or the old `[WITH] BINARY | DELIMITER [AS] 'c' | NULL [AS] 's' |
/// CSV | HEADER | QUOTE [AS] 'c' | ESCAPE [AS] 'c' | FORCE QUOTE … | FORCE NOT NULL … |
/// FREEZE` list, then an optional `WHERE` (COPY FROM only; left to the shards).
fn read_options(
    toks: &[Token<'_>],
    mut k: usize,
    binary_prefix: bool,
) -> Result<CopyOptions, String> {
    let mut raw: Vec<RawOption<'_, '_>> = Vec::new();
    if binary_prefix {
        raw.push(RawOption {
            name: "format".into(),
            value: &[],
        });
    }
    if toks.get(k).is_some_and(|t| t.tok.is_word("using")) {
        k += 1;
    }
    if toks.get(k).is_some_and(|t| t.tok.is_word("delimiters")) {
        raw.push(RawOption {
            name: "delimiter".into(),
            value: toks.get(k + 1..k + 2).unwrap_or(&[]),
        });
        k += 2;
    }
    if toks.get(k).is_some_and(|t| t.tok.is_word("with")) {
        k += 1;
    }
    if toks.get(k).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
        let end = skip_parens(toks, k);
        let inner = &toks[k + 1..end.saturating_sub(1).max(k + 1)];
        for item in inner.split(|t| t.tok == Tok::Punct(b',')) {
            let Some((first, value)) = item.split_first() else {
                continue;
            };
            let name = first
                .tok
                .ident()
                .ok_or_else(|| "COPY option the router cannot read".to_owned())?;
            raw.push(RawOption { name, value });
        }
        k = end;
    } else {
        // The pre-9.0 syntax, one keyword at a time.
        while let Some(t) = toks.get(k) {
            let Tok::Word(w) = t.tok else {
                break;
            };
            let w = w.to_ascii_lowercase();
            let with_value = |k: usize| {
                let v = if toks.get(k + 1).is_some_and(|t| t.tok.is_word("as")) {
                    k + 2
                } else {
                    k + 1
                };
                (toks.get(v..v + 1).unwrap_or(&[]), v + 1)
            };
            match w.as_str() {
                "binary" => {
                    raw.push(RawOption {
                        name: "binary".into(),
                        value: &[],
                    });
                    k += 1;
                }
                "csv" => {
                    raw.push(RawOption {
                        name: "csv".into(),
                        value: &[],
                    });
                    k += 1;
                }
                "header" | "freeze" => {
                    raw.push(RawOption {
                        name: w.clone(),
                        value: &[],
                    });
                    k += 1;
                }
                "delimiter" | "null" | "quote" | "escape" => {
                    let (value, next) = with_value(k);
                    raw.push(RawOption {
                        name: w.clone(),
                        value,
                    });
                    k = next;
                }
                "force" => {
                    // FORCE QUOTE {cols | *} | FORCE NOT NULL cols | FORCE NULL cols
                    let (name, mut j) = if toks.get(k + 1).is_some_and(|t| t.tok.is_word("not")) {
                        ("force_not_null", k + 3)
                    } else if toks.get(k + 1).is_some_and(|t| t.tok.is_word("quote")) {
                        ("force_quote", k + 2)
                    } else {
                        ("force_null", k + 2)
                    };
                    let start = j;
                    loop {
                        match toks.get(j).map(|t| t.tok) {
                            Some(Tok::Punct(b'*')) => j += 1,
                            Some(t) if t.ident().is_some() && !t.is_word("where") => j += 1,
                            _ => break,
                        }
                        if toks.get(j).map(|t| t.tok) == Some(Tok::Punct(b',')) {
                            j += 1;
                        } else {
                            break;
                        }
                    }
                    raw.push(RawOption {
                        name: name.into(),
                        value: &toks[start..j],
                    });
                    k = j;
                }
                "where" => break,
                _ => return Err(format!("COPY option {w} (not understood by the router)")),
            }
        }
    }
    if let Some(t) = toks.get(k) {
        if !t.tok.is_word("where") {
            return Err("COPY statement the router cannot read".to_owned());
        }
    }
    apply(&raw)
}

/// The options' combined effect, PostgreSQL's defaults filled in for the format.
fn apply(raw: &[RawOption<'_, '_>]) -> Result<CopyOptions, String> {
    let mut format = CopyFormat::Text;
    for o in raw {
        match o.name.as_str() {
            "format" if o.value.is_empty() => format = CopyFormat::Binary,
            "format" => {
                let v = match o.value {
                    [t] => t.tok.ident().or_else(|| t.tok.string_value()),
                    _ => None,
                };
                format = match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("text") => CopyFormat::Text,
                    Some("csv") => CopyFormat::Csv,
                    Some("binary") => CopyFormat::Binary,
                    // PostgreSQL rejects it before any data is read.
                    _ => format,
                };
            }
            "binary" => format = CopyFormat::Binary,
            "csv" => format = CopyFormat::Csv,
            _ => {}
        }
    }
    let mut opts = CopyOptions::defaults(format);
    let mut escape_set = false;
    for o in raw {
        match o.name.as_str() {
            "delimiter" => opts.delimiter = one_byte(o, opts.delimiter)?,
            "quote" => opts.quote = one_byte(o, opts.quote)?,
            "escape" => {
                opts.escape = one_byte(o, opts.escape)?;
                escape_set = true;
            }
            "null" => {
                if let [t] = o.value {
                    if let Some(s) = t.tok.string_value() {
                        opts.null = s;
                    }
                }
            }
            "header" => opts.header = boolean(o.value, true),
            "force_not_null" => opts.force_not_null = column_names(o.value),
            "force_null" => opts.force_null = column_names(o.value),
            "encoding" => {
                let v = match o.value {
                    [t] => t.tok.string_value().or_else(|| t.tok.ident()),
                    _ => None,
                };
                let v = v
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .replace(['-', '_'], "");
                // Splitting works on bytes: only encodings where no byte of a multi-byte
                // character can look like a delimiter, quote or newline.
                if !matches!(v.as_str(), "utf8" | "unicode" | "sqlascii")
                    && !v.starts_with("latin")
                    && !v.starts_with("iso8859")
                    && !v.starts_with("win125")
                    && !v.starts_with("euc")
                {
                    return Err(format!("COPY with ENCODING '{v}' through the router"));
                }
            }
            _ => {}
        }
    }
    if !escape_set {
        opts.escape = opts.quote;
    }
    Ok(opts)
}

/// A one-character option value; anything else is left for the shards to reject.
fn one_byte(o: &RawOption<'_, '_>, default: u8) -> Result<u8, String> {
    let value = match o.value {
        [t] => t.tok.string_value(),
        _ => None,
    };
    match value.as_deref().map(str::as_bytes) {
        Some([b]) if b.is_ascii() => Ok(*b),
        Some([]) | None => Ok(default),
        // Multi-byte: PostgreSQL refuses ("COPY delimiter must be a single one-byte
        // character") before any data is read.
        Some(_) => Ok(default),
    }
}

/// A boolean option value (`HEADER`, `HEADER true`, `HEADER MATCH`, `FREEZE off`…).
fn boolean(value: &[Token<'_>], default: bool) -> bool {
    let v = match value {
        [] => return default,
        [t] => match t.tok {
            Tok::Number(n) => n.to_owned(),
            t => t
                .ident()
                .or_else(|| t.string_value())
                .unwrap_or_default()
                .to_ascii_lowercase(),
        },
        _ => return default,
    };
    !matches!(v.as_str(), "false" | "off" | "0" | "no")
}

/// `(a, b)`, `a, b` or `*` → folded names (`*` as itself).
fn column_names(value: &[Token<'_>]) -> Vec<String> {
    value
        .iter()
        .filter_map(|t| match t.tok {
            Tok::Punct(b'*') => Some("*".to_owned()),
            t => t.ident(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tokens;

    fn tail(sql: &str) -> Result<CopyStatement, String> {
        let toks = tokens(sql);
        // `COPY t` is two tokens.
        read_tail(&toks, 2, false)
    }

    #[test]
    fn defaults_by_format() {
        let s = tail("COPY t FROM STDIN").expect("reads");
        assert_eq!(s.direction, CopyDirection::In);
        assert!(s.stdio);
        assert_eq!(s.options, CopyOptions::defaults(CopyFormat::Text));
        let s = tail("COPY t TO STDOUT CSV").expect("reads");
        assert_eq!(s.direction, CopyDirection::Out);
        assert_eq!(s.options.format, CopyFormat::Csv);
        assert_eq!(s.options.delimiter, b',');
        assert_eq!(s.options.null, "");
    }

    #[test]
    fn new_syntax() {
        let s = tail(
            "COPY t (a, \"B\") FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'x', QUOTE '''', ESCAPE E'\\\\', FORCE_NOT_NULL (a), FREEZE ON)",
        )
        .expect("reads");
        assert_eq!(s.columns, Some(vec!["a".to_owned(), "B".to_owned()]));
        let o = s.options;
        assert_eq!(o.format, CopyFormat::Csv);
        assert!(o.header);
        assert_eq!(o.delimiter, b';');
        assert_eq!(o.null, "x");
        assert_eq!(o.quote, b'\'');
        assert_eq!(o.escape, b'\\');
        assert_eq!(o.force_not_null, vec!["a".to_owned()]);
        let s = tail("copy t from stdin with (freeze on)").expect("reads");
        assert_eq!(s.options.format, CopyFormat::Text);
        let s = tail("COPY t FROM STDIN (FORMAT binary)").expect("reads");
        assert_eq!(s.options.format, CopyFormat::Binary);
        let s = tail("COPY t FROM STDIN (FORMAT 'csv', HEADER false)").expect("reads");
        assert_eq!(s.options.format, CopyFormat::Csv);
        assert!(!s.options.header);
        let s = tail("COPY t FROM STDIN (FORMAT csv, HEADER match)").expect("reads");
        assert!(s.options.header);
        assert_eq!(
            tail("COPY t FROM STDIN (ENCODING 'SJIS')").map(|_| ()),
            Err("COPY with ENCODING 'sjis' through the router".to_owned())
        );
        assert!(tail("COPY t FROM STDIN (ENCODING 'UTF8')").is_ok());
    }

    #[test]
    fn old_syntax() {
        let o = tail("COPY t FROM STDIN WITH CSV HEADER DELIMITER AS '|' NULL 'n' QUOTE AS '$' FORCE NOT NULL a, b")
            .expect("reads")
            .options;
        assert_eq!(o.format, CopyFormat::Csv);
        assert!(o.header);
        assert_eq!(o.delimiter, b'|');
        assert_eq!(o.null, "n");
        assert_eq!(o.quote, b'$');
        assert_eq!(o.escape, b'$');
        assert_eq!(o.force_not_null, vec!["a".to_owned(), "b".to_owned()]);
        let o = tail("COPY t FROM STDIN BINARY").expect("reads").options;
        assert_eq!(o.format, CopyFormat::Binary);
        let o = tail("COPY t FROM STDIN USING DELIMITERS ','")
            .expect("reads")
            .options;
        assert_eq!(o.delimiter, b',');
        let o = tail("COPY t FROM STDIN DELIMITER E'\\t' WHERE a > 1")
            .expect("reads")
            .options;
        assert_eq!(o.delimiter, b'\t');
        assert!(tail("COPY t FROM STDIN WITH OIDS").is_err());
        assert!(tail("COPY t FROM STDIN garbage").is_err());
    }
}

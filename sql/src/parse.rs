//! Reading statement text: a small PostgreSQL-aware scanner and the sqlparser front end.
//!
//! The router must route every statement, including the many that sqlparser cannot parse
//! (`COPY … FROM STDIN`, `VACUUM ANALYZE t`, `DO $$…$$`, `ALTER SYSTEM`, …; SPEC §5 rule
//! 8). So planning starts from a scanner that understands exactly as much of
//! PostgreSQL's lexical structure as is needed to never be fooled by a keyword inside a
//! string, comment or quoted identifier: it splits a simple-protocol Query string into
//! statements, finds the leading keywords, reads the `/* pgshard: shard=N */` hint, and
//! extracts table names for the keyword fallback. sqlparser (PostgreSQL dialect) is then
//! used once per statement for the statements whose structure matters (queries, DML,
//! most DDL).

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Statement, UnaryOperator, Value, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// One lexical token of PostgreSQL SQL, borrowing from the statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A double-quoted identifier, without the outer quotes (`""` not yet collapsed).
    QuotedIdent(&'a str),
    /// A string constant, the raw text between the quotes. `escaped` for `E'…'`, where
    /// backslash escapes apply; `dollar` for `$tag$…$tag$`.
    Str {
        raw: &'a str,
        escaped: bool,
        dollar: bool,
    },
    /// A numeric constant.
    Number(&'a str),
    /// A positional parameter `$n`.
    Param(usize),
    /// Any other single character: punctuation or one character of an operator.
    Punct(u8),
}

impl<'a> Tok<'a> {
    /// True for an unquoted word equal to `kw` (ASCII case-insensitive).
    pub(crate) fn is_word(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// The identifier this token spells, folded as PostgreSQL does (unquoted words to
    /// lowercase, quoted ones kept), or `None` if it is not an identifier.
    pub(crate) fn ident(&self) -> Option<String> {
        match self {
            Tok::Word(w) => Some(w.to_ascii_lowercase()),
            Tok::QuotedIdent(q) => Some(q.replace("\"\"", "\"")),
            _ => None,
        }
    }

    /// The value of a string constant.
    pub(crate) fn string_value(&self) -> Option<String> {
        match *self {
            Tok::Str {
                raw,
                escaped,
                dollar,
            } => Some(if dollar {
                raw.to_owned()
            } else if escaped {
                unescape_e_string(raw)
            } else {
                raw.replace("''", "'")
            }),
            _ => None,
        }
    }
}

/// A token and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub tok: Tok<'a>,
    pub start: usize,
    pub end: usize,
}

/// A `/* pgshard: … */` (or `-- pgshard: …`) comment found while scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hint {
    /// `shard=N`.
    Shard(u64),
    /// A comment that starts with `pgshard:` but does not say `shard=N`.
    Malformed(String),
}

/// Scans PostgreSQL SQL into tokens, skipping whitespace and comments (and recording
/// any pgshard hint comment). Unterminated strings or comments end the token stream,
/// as the rest of the text is inside them.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    pub hint: Option<Hint>,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Lexer {
            src,
            pos: 0,
            hint: None,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn peek(&self, off: usize) -> Option<u8> {
        self.bytes().get(self.pos + off).copied()
    }

    /// Skip whitespace and comments. Returns false at end of input.
    fn skip_trivia(&mut self) -> bool {
        loop {
            match self.peek(0) {
                None => return false,
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'-') if self.peek(1) == Some(b'-') => {
                    let start = self.pos + 2;
                    let end = self.src[start..]
                        .find('\n')
                        .map_or(self.src.len(), |i| start + i);
                    self.note_comment(&self.src[start..end]);
                    self.pos = end;
                }
                Some(b'/') if self.peek(1) == Some(b'*') => {
                    // PostgreSQL block comments nest.
                    let start = self.pos + 2;
                    let mut depth = 1usize;
                    let mut i = start;
                    let b = self.bytes();
                    while i < b.len() && depth > 0 {
                        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                            depth += 1;
                            i += 2;
                        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                            depth -= 1;
                            i += 2;
                        } else {
                            i += 1;
                        }
                    }
                    let body_end = if depth == 0 { i - 2 } else { b.len() };
                    self.note_comment(&self.src[start..body_end]);
                    self.pos = i;
                }
                Some(_) => return true,
            }
        }
    }

    fn note_comment(&mut self, body: &str) {
        if self.hint.is_some() {
            return;
        }
        if let Some(h) = parse_hint(body) {
            self.hint = Some(h);
        }
    }

    /// The end of a quoted run starting after the opening quote at `from`; `''` (or
    /// `""`) is an escaped quote; with `backslash`, `\x` escapes any character.
    fn quoted_end(&self, from: usize, quote: u8, backslash: bool) -> Option<usize> {
        let b = self.bytes();
        let mut i = from;
        while i < b.len() {
            if backslash && b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == quote {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                    continue;
                }
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

/// A word in uppercase, made without allocating (the router compares a statement's
/// leading words with keywords on every query, issue 16). Words longer than any
/// keyword read as empty, which matches none.
pub(crate) struct Upper {
    buf: [u8; 16],
    len: usize,
}

impl Upper {
    pub(crate) fn new(word: &str) -> Upper {
        let mut buf = [0u8; 16];
        let len = if word.len() <= buf.len() {
            buf[..word.len()].copy_from_slice(word.as_bytes());
            buf[..word.len()].make_ascii_uppercase();
            word.len()
        } else {
            0
        };
        Upper { buf, len }
    }

    pub(crate) fn as_str(&self) -> &str {
        // ASCII case changes keep UTF-8 valid; `len` ends where `word` ended.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::ops::Deref for Upper {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Byte classes for the lexer's inner loops, looked up once per byte (issue 16).
const IDENT_START: u8 = 1;
const IDENT_CONT: u8 = 2;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            t[i] |= IDENT_START | IDENT_CONT;
        }
        if b.is_ascii_digit() || b == b'$' {
            t[i] |= IDENT_CONT;
        }
        i += 1;
    }
    t
};

fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & IDENT_START != 0
}

fn is_ident_cont(b: u8) -> bool {
    CLASS[b as usize] & IDENT_CONT != 0
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if !self.skip_trivia() {
            return None;
        }
        let b = self.bytes();
        let start = self.pos;
        let c = b[start];
        let (tok, end) = if c == b'\'' {
            let close = self.quoted_end(start + 1, b'\'', false);
            match close {
                Some(e) => (
                    Tok::Str {
                        raw: &self.src[start + 1..e],
                        escaped: false,
                        dollar: false,
                    },
                    e + 1,
                ),
                None => {
                    self.pos = b.len();
                    return None;
                }
            }
        } else if c == b'"' {
            match self.quoted_end(start + 1, b'"', false) {
                Some(e) => (Tok::QuotedIdent(&self.src[start + 1..e]), e + 1),
                None => {
                    self.pos = b.len();
                    return None;
                }
            }
        } else if (c == b'e' || c == b'E') && b.get(start + 1) == Some(&b'\'') {
            match self.quoted_end(start + 2, b'\'', true) {
                Some(e) => (
                    Tok::Str {
                        raw: &self.src[start + 2..e],
                        escaped: true,
                        dollar: false,
                    },
                    e + 1,
                ),
                None => {
                    self.pos = b.len();
                    return None;
                }
            }
        } else if c == b'$' {
            // `$n` parameter, or a dollar-quoted string `$tag$…$tag$`.
            let mut i = start + 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let n = self.src[start + 1..i].parse().unwrap_or(0);
                (Tok::Param(n), i)
            } else {
                while b.get(i).is_some_and(|&x| is_ident_cont(x) && x != b'$') {
                    i += 1;
                }
                if b.get(i) == Some(&b'$') {
                    let delim = &self.src[start..=i];
                    let body_start = i + 1;
                    match self.src[body_start..].find(delim) {
                        Some(off) => (
                            Tok::Str {
                                raw: &self.src[body_start..body_start + off],
                                escaped: false,
                                dollar: true,
                            },
                            body_start + off + delim.len(),
                        ),
                        None => {
                            self.pos = b.len();
                            return None;
                        }
                    }
                } else {
                    (Tok::Punct(b'$'), start + 1)
                }
            }
        } else if is_ident_start(c) {
            let i = start
                + 1
                + b[start + 1..]
                    .iter()
                    .position(|&x| !is_ident_cont(x))
                    .unwrap_or(b.len() - start - 1);
            // U&'…', B'…', X'…', N'…': a prefix glued to a string; the string is the
            // next token. Only E changes how the string is read.
            (Tok::Word(&self.src[start..i]), i)
        } else if c.is_ascii_digit()
            || (c == b'.' && b.get(start + 1).is_some_and(u8::is_ascii_digit))
        {
            let mut i = start + 1;
            while let Some(&x) = b.get(i) {
                if x.is_ascii_alphanumeric() || x == b'_' || x == b'.' {
                    // `1..2` does not occur in SQL; `e+5` exponent signs handled below.
                    i += 1;
                } else if (x == b'+' || x == b'-') && matches!(b[i - 1], b'e' | b'E') {
                    i += 1;
                } else {
                    break;
                }
            }
            (Tok::Number(&self.src[start..i]), i)
        } else {
            // One byte of punctuation; keep multi-byte UTF-8 characters whole.
            let mut i = start + 1;
            while i < b.len() && !self.src.is_char_boundary(i) {
                i += 1;
            }
            (Tok::Punct(c), i)
        };
        self.pos = end;
        Some(Token { tok, start, end })
    }
}

/// Reads `pgshard: shard=N` from a comment body.
fn parse_hint(body: &str) -> Option<Hint> {
    let t = body.trim();
    let rest = t
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("pgshard:"))
        .map(|_| t[8..].trim())?;
    let parsed = rest
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("shard"))
        .and_then(|_| rest[5..].trim_start().strip_prefix('='))
        .and_then(|n| n.trim().parse::<u64>().ok());
    Some(match parsed {
        Some(n) => Hint::Shard(n),
        None => Hint::Malformed(t.to_owned()),
    })
}

/// PostgreSQL `E'…'` escapes: `\n`, `\t`, `\b`, `\f`, `\r`, octal, `\xHH`, `\uXXXX`,
/// `\UXXXXXXXX`, and `\c` for any other `c`; `''` is a quote.
fn unescape_e_string(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            // `''`
            if chars.peek() == Some(&'\'') {
                chars.next();
            }
            out.push('\'');
            continue;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else { break };
        let take_hex = |n: usize, chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut v = 0u32;
            let mut seen = 0;
            while seen < n {
                match chars.peek().and_then(|c| c.to_digit(16)) {
                    Some(d) => {
                        v = v * 16 + d;
                        chars.next();
                        seen += 1;
                    }
                    None => break,
                }
            }
            (v, seen)
        };
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'r' => out.push('\r'),
            'x' => {
                let (v, seen) = take_hex(2, &mut chars);
                if seen == 0 {
                    out.push('x');
                } else if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                }
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let (v, _) = take_hex(n, &mut chars);
                if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                }
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// One statement of a Query string: its text (without the terminating `;`) and the
/// pgshard hint found in its comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatementText<'a> {
    pub text: &'a str,
    pub hint: Option<Hint>,
    /// True if the statement holds no token (only whitespace and comments).
    pub empty: bool,
    /// Its tokens, positions relative to `text`: lexed once, while splitting, and read
    /// by the planner (the router no longer lexes a Query three times, issue 16).
    pub toks: Vec<Token<'a>>,
}

/// Split a simple-protocol Query string into statements at top-level semicolons, as
/// psql and PostgreSQL do: semicolons inside strings, comments, quoted identifiers,
/// parentheses, or a `BEGIN … END` / `CASE … END` block of a `CREATE FUNCTION`/
/// `CREATE PROCEDURE` body (SQL-standard `BEGIN ATOMIC`) do not split. Trailing empty
/// pieces are dropped; a string with no statement yields one empty statement.
pub(crate) fn split_statements(sql: &str) -> Vec<StatementText<'_>> {
    // Sized for the usual one statement of a few dozen tokens: growing these one push
    // at a time cost several reallocations per query (issue 16). 20 tokens stay within
    // the allocator's small-object size (1 KiB); 32 took its slower path, twice the
    // instructions of the whole split.
    let mut out = Vec::with_capacity(1);
    let mut lexer = Lexer::new(sql);
    let mut stmt_start = 0usize;
    let mut paren = 0usize;
    let mut block = 0usize;
    let mut first_word: Option<&str> = None;
    let mut count = 0usize;
    let mut hint_seen: Option<Hint> = None;
    let mut toks: Vec<Token<'_>> = Vec::with_capacity(20);
    while let Some(t) = lexer.next() {
        // Hints are recorded by the lexer as comments pass; attribute them to the
        // statement being read.
        if let Some(h) = lexer.hint.take() {
            hint_seen.get_or_insert(h);
        }
        count += 1;
        match t.tok {
            Tok::Punct(b'(') => paren += 1,
            Tok::Punct(b')') => paren = paren.saturating_sub(1),
            Tok::Word(w) => {
                if first_word.is_none() {
                    first_word = Some(w);
                }
                if first_word.is_some_and(|f| f.eq_ignore_ascii_case("create")) {
                    if w.eq_ignore_ascii_case("begin") || w.eq_ignore_ascii_case("case") {
                        block += 1;
                    } else if w.eq_ignore_ascii_case("end") {
                        block = block.saturating_sub(1);
                    }
                }
            }
            Tok::Punct(b';') if paren == 0 && block == 0 => {
                let text = &sql[stmt_start..t.start];
                out.push(StatementText {
                    text,
                    hint: hint_seen.take(),
                    empty: count == 1,
                    toks: std::mem::take(&mut toks),
                });
                stmt_start = t.end;
                first_word = None;
                count = 0;
                continue;
            }
            _ => {}
        }
        toks.push(Token {
            tok: t.tok,
            start: t.start - stmt_start,
            end: t.end - stmt_start,
        });
    }
    if let Some(h) = lexer.hint.take() {
        hint_seen.get_or_insert(h);
    }
    let rest = &sql[stmt_start..];
    if count > 0 || hint_seen.is_some() || out.is_empty() {
        out.push(StatementText {
            text: rest,
            hint: hint_seen,
            empty: count == 0,
            toks,
        });
    }
    // `SELECT 1;;` — drop empty pieces unless everything is empty.
    if out.iter().any(|s| !s.empty) {
        out.retain(|s| !s.empty);
    } else {
        out.truncate(1);
    }
    out
}

/// All tokens of a statement.
pub(crate) fn tokens(sql: &str) -> Vec<Token<'_>> {
    Lexer::new(sql).collect()
}

/// Parse one statement with sqlparser's PostgreSQL dialect.
///
/// The statements are made safe to print: the router sends sqlparser's rendering of
/// them to shards (fan-out, split INSERTs, finishing queries), and sqlparser prints
/// `- -3` as `--3`, which PostgreSQL reads as the start of a comment, silently
/// dropping the rest of the line (`SELECT 5 - -1 AS x, id FROM t` would become
/// `SELECT 5 --1 AS x, id FROM t`). A negated negative operand is parenthesised.
pub(crate) fn parse_statement(sql: &str) -> Result<Vec<Statement>, String> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    if sql.contains('-') {
        let _ = stmts.visit(&mut NoDoubleMinus);
    }
    Ok(stmts)
}

/// Wraps the operand of a unary minus in parentheses when its text would start with
/// `-` (see [`parse_statement`]).
struct NoDoubleMinus;

impl VisitorMut for NoDoubleMinus {
    type Break = ();

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } = e
        {
            let negative = match &**expr {
                Expr::UnaryOp {
                    op: UnaryOperator::Minus,
                    ..
                } => true,
                Expr::Value(v) => v.to_string().starts_with('-'),
                _ => false,
            };
            if negative {
                let inner = std::mem::replace(&mut **expr, Expr::value(Value::Null));
                **expr = Expr::Nested(Box::new(inner));
            }
        }
        ControlFlow::Continue(())
    }
}

/// An identifier folded as PostgreSQL does: unquoted to lowercase, quoted kept.
pub(crate) fn fold_ident(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// The folded parts of an object name.
pub(crate) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => fold_ident(id),
            other => other.to_string(),
        })
        .collect()
}

/// Read a dotted name (`a`, `s.t`, `"Q".t`) starting at token `i`; returns the folded
/// parts and the index after the name.
pub(crate) fn read_name(toks: &[Token<'_>], mut i: usize) -> Option<(Vec<String>, usize)> {
    let mut parts = vec![toks.get(i)?.tok.ident()?];
    i += 1;
    while toks.get(i).map(|t| t.tok) == Some(Tok::Punct(b'.')) {
        match toks.get(i + 1).and_then(|t| t.tok.ident()) {
            Some(p) => {
                parts.push(p);
                i += 2;
            }
            None => break,
        }
    }
    Some((parts, i))
}

/// The index just after the parenthesised group opening at `i` (which must be `(`).
pub(crate) fn skip_parens(toks: &[Token<'_>], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while let Some(t) = toks.get(j) {
        match t.tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_classes_are_postgresql_identifier_characters() {
        for b in 0..=255u8 {
            let start = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
            let cont = start || b.is_ascii_digit() || b == b'$';
            assert_eq!(is_ident_start(b), start, "byte {b}");
            assert_eq!(is_ident_cont(b), cont, "byte {b}");
        }
        assert_eq!(
            words("SELECT a1$b, _x, été FROM t$"),
            ["SELECT", "a1$b", "_x", "été", "FROM", "t$"]
        );
    }

    #[test]
    fn upper_is_the_uppercase_word_or_empty_when_longer_than_any_keyword() {
        assert_eq!(Upper::new("select").as_str(), "SELECT");
        assert_eq!(Upper::new("CheckPoint").as_str(), "CHECKPOINT");
        assert_eq!(Upper::new("été").as_str(), "éTé");
        assert_eq!(Upper::new("").as_str(), "");
        assert_eq!(Upper::new("abcdefghijklmnop").as_str(), "ABCDEFGHIJKLMNOP");
        assert_eq!(Upper::new("abcdefghijklmnopq").as_str(), "");
    }

    fn words(sql: &str) -> Vec<String> {
        tokens(sql)
            .iter()
            .filter_map(|t| match t.tok {
                Tok::Word(w) => Some(w.to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lexer_skips_strings_comments_and_quotes() {
        assert_eq!(
            words(
                "SELECT 'FROM x' /* DELETE */ -- UPDATE\n, \"DROP\", $a$ INSERT $a$, $$;$$ FROM t"
            ),
            vec!["SELECT", "FROM", "t"]
        );
        assert_eq!(words("/* a /* nested */ still */ SELECT"), vec!["SELECT"]);
        assert_eq!(
            words("SELECT E'it\\'s' FROM t"),
            vec!["SELECT", "FROM", "t"]
        );
        assert_eq!(words("SELECT 'it''s' FROM t"), vec!["SELECT", "FROM", "t"]);
    }

    #[test]
    fn lexer_params_numbers_strings() {
        let t = tokens("a = $12 AND b = -1.5e+3 AND c = 'x''y' AND d = E'\\n'");
        assert!(t.iter().any(|t| t.tok == Tok::Param(12)));
        assert!(t.iter().any(|t| t.tok == Tok::Number("1.5e+3")));
        let strs: Vec<String> = t.iter().filter_map(|t| t.tok.string_value()).collect();
        assert_eq!(strs, vec!["x'y".to_owned(), "\n".to_owned()]);
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_e_string(r"a\tb\x41\101\u00e9\\"), "a\tbAAé\\");
    }

    #[test]
    fn split() {
        let s = split_statements("SELECT 1; SELECT ';'; ");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text, "SELECT 1");
        assert_eq!(s[1].text.trim(), "SELECT ';'");
        assert_eq!(split_statements("").len(), 1);
        assert!(split_statements(" -- c\n ;;")[0].empty);
        assert_eq!(split_statements("SELECT 1;;").len(), 1);
        let f = split_statements(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END; SELECT 2",
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            split_statements("DO $$ BEGIN PERFORM 1; END $$; SELECT 1").len(),
            2
        );
    }

    #[test]
    fn hints() {
        let s = split_statements("/* pgshard: shard=3 */ SELECT 1; SELECT 2 -- pgshard: shard = 4");
        assert_eq!(s[0].hint, Some(Hint::Shard(3)));
        assert_eq!(s[1].hint, Some(Hint::Shard(4)));
        assert!(matches!(
            split_statements("SELECT /* PGSHARD: bogus */ 1")[0].hint,
            Some(Hint::Malformed(_))
        ));
        assert_eq!(
            split_statements("SELECT '/* pgshard: shard=3 */'")[0].hint,
            None
        );
        assert_eq!(split_statements("SELECT /* not a hint */ 1")[0].hint, None);
    }
}

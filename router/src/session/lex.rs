//! Just enough SQL lexing for the session commands the router tracks itself (SPEC §5
//! rule 6, §7): transaction control and SET/RESET/DISCARD ALL. Routing (and SQL-level
//! PREPARE/EXECUTE/DEALLOCATE) is the planner's business (`pgshard_sql::plan`); these
//! commands change *session* state the router mirrors across pooled backends, so it
//! needs the variable names and statement texts, which a route does not carry.

/// What a single statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Begin,
    Commit,
    Rollback,
    /// A session-level SET: the variable (lowercase) and the statement to replay.
    Set {
        name: String,
        sql: String,
    },
    Reset {
        name: String,
    },
    ResetAll,
    DiscardAll,
    Prepare {
        name: String,
        body: String,
    },
    Execute {
        name: String,
        args: Option<Vec<String>>,
    },
    Deallocate {
        name: Option<String>,
    },
    /// Anything else (including SET LOCAL, SET TRANSACTION, SET CONSTRAINTS).
    Other,
}

/// Splits a query string into statements at top-level semicolons, skipping quotes,
/// dollar quotes and comments. Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b';' => {
                push_stmt(&mut out, &sql[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i = skip_token(sql, i),
        }
    }
    push_stmt(&mut out, &sql[start..]);
    out
}

fn push_stmt<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    if !strip_comments_ws(s).is_empty() {
        out.push(s.trim());
    }
}

fn strip_comments_ws(s: &str) -> &str {
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if s[i..].starts_with("--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if s[i..].starts_with("/*") {
            i = skip_block_comment(b, i);
        } else {
            return &s[i..];
        }
    }
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    // Nested, as PostgreSQL's.
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Skips one lexical unit starting at `i` (a quoted string, dollar-quoted string,
/// comment, or one byte) and returns the next index.
fn skip_token(sql: &str, i: usize) -> usize {
    let b = sql.as_bytes();
    match b[i] {
        b'\'' => {
            // E'...' strings allow backslash escapes.
            let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
            let mut j = i + 1;
            while j < b.len() {
                if escapes && b[j] == b'\\' {
                    j += 2;
                    continue;
                }
                if b[j] == b'\'' {
                    if j + 1 < b.len() && b[j + 1] == b'\'' {
                        j += 2;
                        continue;
                    }
                    return j + 1;
                }
                j += 1;
            }
            b.len()
        }
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == b'"' {
                    if j + 1 < b.len() && b[j + 1] == b'"' {
                        j += 2;
                        continue;
                    }
                    return j + 1;
                }
                j += 1;
            }
            b.len()
        }
        b'-' if sql[i..].starts_with("--") => {
            let mut j = i;
            while j < b.len() && b[j] != b'\n' {
                j += 1;
            }
            j
        }
        b'/' if sql[i..].starts_with("/*") => skip_block_comment(b, i),
        b'$' => {
            // $tag$ … $tag$ (tag may be empty); a lone $1 is a parameter.
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j < b.len()
                && b[j] == b'$'
                && !b[i + 1..j].first().is_some_and(|c| c.is_ascii_digit())
            {
                let tag = &sql[i..=j];
                match sql[j + 1..].find(tag) {
                    Some(p) => j + 1 + p + tag.len(),
                    None => b.len(),
                }
            } else {
                i + 1
            }
        }
        _ => i + 1,
    }
}

/// Words of a statement: keywords and identifiers (lowercased unless quoted), with
/// their byte offsets. Stops at the first token that is not a word, when `stop_at_other`.
/// The first keyword-like word, as written ("" if the statement starts otherwise).
fn first_word(sql: &str) -> &str {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with("--") || sql[i..].starts_with("/*") {
            i = skip_token(sql, i);
        } else {
            break;
        }
    }
    let s = i;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    &sql[s..i]
}

fn words(sql: &str, max: usize) -> Vec<(String, usize, usize)> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < max {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with("--") || sql[i..].starts_with("/*") {
            i = skip_token(sql, i);
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let s = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push((sql[s..i].to_lowercase(), s, i));
        } else if c == b'"' {
            let s = i;
            i = skip_token(sql, i);
            let inner = sql[s + 1..i.saturating_sub(1).max(s + 1)].replace("\"\"", "\"");
            out.push((inner, s, i));
        } else {
            let s = i;
            i = skip_token(sql, i);
            out.push((sql[s..i].to_string(), s, i));
        }
    }
    out
}

/// The command tag PostgreSQL answers a transaction start with: `START TRANSACTION`
/// for `START TRANSACTION …`, `BEGIN` for `BEGIN [WORK | TRANSACTION] …`.
pub fn begin_tag(stmt: &str) -> &'static str {
    if first_word(stmt).eq_ignore_ascii_case("start") {
        "START TRANSACTION"
    } else {
        "BEGIN"
    }
}

/// Classifies one statement (no trailing semicolon).
pub fn classify(stmt: &str) -> SessionCommand {
    // Most statements are none of these: one word tells (this runs on every query).
    const FIRST: [&str; 9] = [
        "begin", "start", "commit", "end", "rollback", "abort", "set", "reset", "discard",
    ];
    if !FIRST
        .iter()
        .any(|k| k.eq_ignore_ascii_case(first_word(stmt)))
    {
        return SessionCommand::Other;
    }
    let w = words(stmt, 8);
    let kw = |n: usize| w.get(n).map(|x| x.0.as_str()).unwrap_or("");
    match kw(0) {
        "begin" => {
            // BEGIN ... but not the PL/pgSQL block of a DO (not at top level anyway).
            SessionCommand::Begin
        }
        "start" if kw(1) == "transaction" => SessionCommand::Begin,
        "commit" | "end" if kw(1) != "prepared" => SessionCommand::Commit,
        "rollback" | "abort" => {
            if kw(1) == "prepared"
                || kw(1) == "to"
                || (kw(1) == "transaction" || kw(1) == "work") && kw(2) == "to"
            {
                SessionCommand::Other
            } else {
                SessionCommand::Rollback
            }
        }
        "set" => classify_set(stmt, &w),
        "reset" => match kw(1) {
            "all" => SessionCommand::ResetAll,
            "time" if kw(2) == "zone" => SessionCommand::Reset {
                name: "timezone".into(),
            },
            "session" if kw(2) == "authorization" => SessionCommand::Reset {
                name: "session_authorization".into(),
            },
            "" => SessionCommand::Other,
            name => SessionCommand::Reset {
                name: dotted_name(stmt, &w, 1).unwrap_or_else(|| name.to_string()),
            },
        },
        "discard" if kw(1) == "all" => SessionCommand::DiscardAll,
        _ => SessionCommand::Other,
    }
}

/// A possibly dotted variable name starting at word `i` (`a.b`).
fn dotted_name(stmt: &str, w: &[(String, usize, usize)], i: usize) -> Option<String> {
    let (first, _, end) = w.get(i)?;
    let rest = &stmt[*end..];
    if let Some(r) = rest.strip_prefix('.') {
        let tail: String = r
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !tail.is_empty() {
            return Some(format!("{first}.{}", tail.to_lowercase()));
        }
    }
    Some(first.clone())
}

fn classify_set(stmt: &str, w: &[(String, usize, usize)]) -> SessionCommand {
    let kw = |n: usize| w.get(n).map(|x| x.0.as_str()).unwrap_or("");
    let mut i = 1;
    match kw(1) {
        "local" => return SessionCommand::Other,
        "session" => match kw(2) {
            "authorization" => {
                return SessionCommand::Set {
                    name: "session_authorization".into(),
                    sql: stmt.to_string(),
                }
            }
            "characteristics" => {
                return SessionCommand::Set {
                    name: "session_characteristics".into(),
                    sql: stmt.to_string(),
                }
            }
            _ => i = 2,
        },
        "transaction" | "constraints" => return SessionCommand::Other,
        _ => {}
    }
    let name = match kw(i) {
        "time" if kw(i + 1) == "zone" => "timezone".to_string(),
        "" => return SessionCommand::Other,
        _ => match dotted_name(stmt, w, i) {
            Some(n) => n,
            None => return SessionCommand::Other,
        },
    };
    SessionCommand::Set {
        name,
        sql: stmt.to_string(),
    }
}

/// A SQL string literal for `value`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements() {
        assert_eq!(
            split_statements("select 1; select ';' ; -- x;\n"),
            vec!["select 1", "select ';'"]
        );
        assert_eq!(
            split_statements("do $$ begin; end $$; select 2"),
            vec!["do $$ begin; end $$", "select 2"]
        );
        assert_eq!(split_statements("select $1; select 3").len(), 2);
        assert!(split_statements(" ; -- only\n").is_empty());
    }

    #[test]
    fn classifies_session_commands() {
        assert_eq!(classify("BEGIN"), SessionCommand::Begin);
        assert_eq!(begin_tag("BEGIN ISOLATION LEVEL SERIALIZABLE"), "BEGIN");
        assert_eq!(
            begin_tag("/* c */ start transaction read only"),
            "START TRANSACTION"
        );
        assert_eq!(
            classify("start transaction isolation level serializable"),
            SessionCommand::Begin
        );
        assert_eq!(classify("END"), SessionCommand::Commit);
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a"), SessionCommand::Other);
        assert_eq!(classify("rollback"), SessionCommand::Rollback);
        assert_eq!(
            classify("SET search_path TO a, b"),
            SessionCommand::Set {
                name: "search_path".into(),
                sql: "SET search_path TO a, b".into()
            }
        );
        assert!(
            matches!(classify("set session TIME ZONE 'UTC'"), SessionCommand::Set { name, .. } if name == "timezone")
        );
        assert!(
            matches!(classify("SET my.var = 1"), SessionCommand::Set { name, .. } if name == "my.var")
        );
        assert_eq!(
            classify("SET LOCAL work_mem = '1MB'"),
            SessionCommand::Other
        );
        assert_eq!(classify("RESET ALL"), SessionCommand::ResetAll);
        assert_eq!(
            classify("reset work_mem"),
            SessionCommand::Reset {
                name: "work_mem".into()
            }
        );
        assert_eq!(classify("DISCARD ALL"), SessionCommand::DiscardAll);
        assert_eq!(classify("select 1"), SessionCommand::Other);
    }
}

//! Session commands (SPEC §5 rule 6, §7): transaction control and SET/RESET/DISCARD ALL,
//! which change *session* state the router mirrors across pooled backends; it needs
//! their variable names and texts, which a route does not carry. Read with the same
//! lexer as everything else the planner reads ([`crate::parse`]), so the router splits
//! and reads a Query string exactly as the planner does.

use crate::parse::{Lexer, Tok, Token};

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

/// The statements of a Query string (split at top-level semicolons as the planner
/// splits them), trimmed; statements of only whitespace and comments are dropped.
pub fn statement_texts(sql: &str) -> Vec<&str> {
    crate::SplitQuery::new(sql).texts()
}

/// The first word of a statement, as written ("" when it starts with something else).
fn first_word(stmt: &str) -> &str {
    match Lexer::new(stmt).next().map(|t| t.tok) {
        Some(Tok::Word(w)) => w,
        _ => "",
    }
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

/// A statement's leading tokens as words: keywords and identifiers lowercased, quoted
/// identifiers unquoted, anything else as written.
struct Words<'a> {
    stmt: &'a str,
    toks: Vec<Token<'a>>,
}

impl Words<'_> {
    fn new(stmt: &str, max: usize) -> Words<'_> {
        Words {
            stmt,
            toks: Lexer::new(stmt).take(max).collect(),
        }
    }

    fn kw(&self, n: usize) -> String {
        match self.toks.get(n) {
            Some(t) => match t.tok.ident() {
                Some(w) => w,
                None => self.stmt[t.start..t.end].to_string(),
            },
            None => String::new(),
        }
    }

    /// A possibly dotted variable name starting at word `i` (`a.b`).
    fn dotted_name(&self, i: usize) -> Option<String> {
        let first = self.toks.get(i)?.tok.ident()?;
        match (self.toks.get(i + 1), self.toks.get(i + 2)) {
            (
                Some(dot),
                Some(Token {
                    tok: Tok::Word(w), ..
                }),
            ) if dot.tok == Tok::Punct(b'.') => Some(format!("{first}.{}", w.to_lowercase())),
            _ => Some(first),
        }
    }
}

/// Classifies one statement (no trailing semicolon).
pub fn session_command(stmt: &str) -> SessionCommand {
    // Most statements are none of these: one word tells (this runs on every query).
    const FIRST: [&str; 9] = [
        "begin", "start", "commit", "end", "rollback", "abort", "set", "reset", "discard",
    ];
    let first = first_word(stmt);
    if !FIRST.iter().any(|k| k.eq_ignore_ascii_case(first)) {
        return SessionCommand::Other;
    }
    let w = Words::new(stmt, 8);
    let kw = |n: usize| w.kw(n);
    match kw(0).as_str() {
        "begin" => SessionCommand::Begin,
        "start" if kw(1) == "transaction" => SessionCommand::Begin,
        "commit" | "end" if kw(1) != "prepared" => SessionCommand::Commit,
        "rollback" | "abort" => {
            let (k1, k2) = (kw(1), kw(2));
            if k1 == "prepared" || k1 == "to" || (k1 == "transaction" || k1 == "work") && k2 == "to"
            {
                SessionCommand::Other
            } else {
                SessionCommand::Rollback
            }
        }
        "set" => classify_set(stmt, &w),
        "reset" => match (kw(1).as_str(), kw(2).as_str()) {
            ("all", _) => SessionCommand::ResetAll,
            ("time", "zone") => SessionCommand::Reset {
                name: "timezone".into(),
            },
            ("session", "authorization") => SessionCommand::Reset {
                name: "session_authorization".into(),
            },
            ("", _) => SessionCommand::Other,
            (name, _) => SessionCommand::Reset {
                name: w.dotted_name(1).unwrap_or_else(|| name.to_string()),
            },
        },
        "discard" if kw(1) == "all" => SessionCommand::DiscardAll,
        _ => SessionCommand::Other,
    }
}

fn classify_set(stmt: &str, w: &Words<'_>) -> SessionCommand {
    let set = |name: &str| SessionCommand::Set {
        name: name.to_string(),
        sql: stmt.to_string(),
    };
    let mut i = 1;
    match w.kw(1).as_str() {
        "local" | "transaction" | "constraints" => return SessionCommand::Other,
        "session" => match w.kw(2).as_str() {
            "authorization" => return set("session_authorization"),
            "characteristics" => return set("session_characteristics"),
            _ => i = 2,
        },
        _ => {}
    }
    match (w.kw(i).as_str(), w.kw(i + 1).as_str()) {
        ("time", "zone") => set("timezone"),
        ("", _) => SessionCommand::Other,
        _ => match w.dotted_name(i) {
            Some(n) => set(&n),
            None => SessionCommand::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements() {
        assert_eq!(
            statement_texts("select 1; select ';' ; -- x;\n"),
            vec!["select 1", "select ';'"]
        );
        assert_eq!(
            statement_texts("do $$ begin; end $$; select 2"),
            vec!["do $$ begin; end $$", "select 2"]
        );
        assert_eq!(statement_texts("select $1; select 3").len(), 2);
        assert!(statement_texts(" ; -- only\n").is_empty());
        // As the planner splits: a BEGIN ATOMIC body is one statement.
        assert_eq!(
            statement_texts(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2"
            )
            .len(),
            2
        );
    }

    #[test]
    fn classifies_session_commands() {
        let c = session_command;
        assert_eq!(c("BEGIN"), SessionCommand::Begin);
        assert_eq!(begin_tag("BEGIN ISOLATION LEVEL SERIALIZABLE"), "BEGIN");
        assert_eq!(
            begin_tag("/* c */ start transaction read only"),
            "START TRANSACTION"
        );
        assert_eq!(
            c("start transaction isolation level serializable"),
            SessionCommand::Begin
        );
        assert_eq!(c("END"), SessionCommand::Commit);
        assert_eq!(c("COMMIT PREPARED 'x'"), SessionCommand::Other);
        assert_eq!(c("ROLLBACK TO SAVEPOINT a"), SessionCommand::Other);
        assert_eq!(c("rollback work to a"), SessionCommand::Other);
        assert_eq!(c("rollback"), SessionCommand::Rollback);
        assert_eq!(
            c("SET search_path TO a, b"),
            SessionCommand::Set {
                name: "search_path".into(),
                sql: "SET search_path TO a, b".into()
            }
        );
        assert!(
            matches!(c("set session TIME ZONE 'UTC'"), SessionCommand::Set { name, .. } if name == "timezone")
        );
        assert!(
            matches!(c("SET my.var = 1"), SessionCommand::Set { name, .. } if name == "my.var")
        );
        assert!(
            matches!(c("SET \"My\".Var = 1"), SessionCommand::Set { name, .. } if name == "My.var")
        );
        assert_eq!(c("SET LOCAL work_mem = '1MB'"), SessionCommand::Other);
        assert_eq!(c("SET TRANSACTION READ ONLY"), SessionCommand::Other);
        assert_eq!(c("RESET ALL"), SessionCommand::ResetAll);
        assert_eq!(
            c("reset work_mem"),
            SessionCommand::Reset {
                name: "work_mem".into()
            }
        );
        assert_eq!(
            c("RESET my.var"),
            SessionCommand::Reset {
                name: "my.var".into()
            }
        );
        assert_eq!(c("DISCARD ALL"), SessionCommand::DiscardAll);
        assert_eq!(c("select 1"), SessionCommand::Other);
        assert_eq!(c("-- c\nselect 1"), SessionCommand::Other);
    }
}

//! Cursors over multi-shard queries (SPEC §6): `DECLARE c CURSOR FOR <fan-out>` is
//! planned as the fan-out with a [`CursorDecl`], which the router runs at once and
//! keeps (as PostgreSQL's cursor keeps its snapshot); `FETCH`, `MOVE` and `CLOSE` of
//! such a cursor are read here ([`cursor_command`]) and answered by the router.
//!
//! Only forward motion is supported on them (`NEXT`, `n`, `FORWARD [n | ALL]`, `ALL`);
//! any other direction is refused with the construct named.

use crate::parse::{tokens, Tok, Token};

/// A multi-shard query declared as a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorDecl {
    /// The cursor's name, folded as PostgreSQL folds identifiers.
    pub name: String,
    /// `WITH HOLD`: it outlives its transaction.
    pub hold: bool,
    /// `BINARY`: rows in binary format.
    pub binary: bool,
}

/// `FETCH`, `MOVE` or `CLOSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorVerb {
    Fetch,
    Move,
    Close,
}

/// How many rows a `FETCH` or `MOVE` goes forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorCount {
    Forward(u64),
    All,
    /// A direction the router does not support on its cursors, as written.
    Unsupported(String),
}

/// A `FETCH`, `MOVE` or `CLOSE` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorCommand {
    pub verb: CursorVerb,
    /// The cursor's folded name; `None` for `CLOSE ALL`.
    pub name: Option<String>,
    pub count: CursorCount,
}

/// Reads `DECLARE name [BINARY] … CURSOR [WITH[OUT] HOLD] FOR`: the declaration and
/// the index of the `FOR` token.
pub(crate) fn declaration(toks: &[Token<'_>], declare_at: usize) -> Option<(CursorDecl, usize)> {
    let name = toks.get(declare_at + 1)?.tok.ident()?;
    let cursor_at = toks.iter().position(|t| t.tok.is_word("cursor"))?;
    let for_at = cursor_at
        + toks[cursor_at..]
            .iter()
            .position(|t| t.tok.is_word("for"))?;
    let binary = toks[declare_at..cursor_at]
        .iter()
        .any(|t| t.tok.is_word("binary"));
    let hold = toks[cursor_at..for_at]
        .windows(2)
        .any(|w| w[0].tok.is_word("with") && w[1].tok.is_word("hold"));
    Some((CursorDecl { name, hold, binary }, for_at))
}

/// The cursor command `sql` is, if it is one (a single statement).
pub fn cursor_command(sql: &str) -> Option<CursorCommand> {
    let toks: Vec<Token<'_>> = tokens(sql)
        .into_iter()
        .filter(|t| t.tok != Tok::Punct(b';'))
        .collect();
    let verb = match toks.first()?.tok {
        t if t.is_word("fetch") => CursorVerb::Fetch,
        t if t.is_word("move") => CursorVerb::Move,
        t if t.is_word("close") => CursorVerb::Close,
        _ => return None,
    };
    let rest = &toks[1..];
    if verb == CursorVerb::Close {
        return match rest {
            [t] if t.tok.is_word("all") => Some(CursorCommand {
                verb,
                name: None,
                count: CursorCount::All,
            }),
            [t] => Some(CursorCommand {
                verb,
                name: Some(t.tok.ident()?),
                count: CursorCount::All,
            }),
            _ => None,
        };
    }
    // The cursor's name is the last token; FROM or IN may precede it.
    let (last, direction) = rest.split_last()?;
    let name = last.tok.ident()?;
    let direction = match direction.split_last() {
        Some((t, d)) if t.tok.is_word("from") || t.tok.is_word("in") => d,
        _ => direction,
    };
    let count = count_of(sql, direction);
    Some(CursorCommand {
        verb,
        name: Some(name),
        count,
    })
}

/// The rows a direction clause moves forward.
fn count_of(sql: &str, direction: &[Token<'_>]) -> CursorCount {
    let number = |t: &Token<'_>| match t.tok {
        Tok::Number(n) => n.parse::<u64>().ok(),
        _ => None,
    };
    match direction {
        [] => CursorCount::Forward(1),
        [t] if t.tok.is_word("next") || t.tok.is_word("forward") => CursorCount::Forward(1),
        [t] if t.tok.is_word("all") => CursorCount::All,
        [t] if number(t).is_some() => CursorCount::Forward(number(t).unwrap_or(1)),
        [f, t] if f.tok.is_word("forward") && t.tok.is_word("all") => CursorCount::All,
        [f, t] if f.tok.is_word("forward") && number(t).is_some() => {
            CursorCount::Forward(number(t).unwrap_or(1))
        }
        [first, ..] => {
            let end = direction.last().map_or(first.end, |t| t.end);
            CursorCount::Unsupported(sql[first.start..end].to_uppercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(sql: &str) -> (Option<String>, CursorCount) {
        let c = cursor_command(sql).expect(sql);
        (c.name, c.count)
    }

    #[test]
    fn fetch_directions() {
        let c = |n: &str| Some(n.to_string());
        assert_eq!(fetch("FETCH c"), (c("c"), CursorCount::Forward(1)));
        assert_eq!(
            fetch("FETCH NEXT FROM c"),
            (c("c"), CursorCount::Forward(1))
        );
        assert_eq!(
            fetch("fetch forward 9 from \"Cur\";"),
            (c("Cur"), CursorCount::Forward(9))
        );
        assert_eq!(fetch("FETCH 5 IN c"), (c("c"), CursorCount::Forward(5)));
        assert_eq!(fetch("FETCH ALL c"), (c("c"), CursorCount::All));
        assert_eq!(
            fetch("FETCH FORWARD ALL FROM c"),
            (c("c"), CursorCount::All)
        );
        assert_eq!(
            fetch("FETCH backward 2 FROM c"),
            (c("c"), CursorCount::Unsupported("BACKWARD 2".into()))
        );
        assert_eq!(
            cursor_command("MOVE 3 c").map(|c| c.verb),
            Some(CursorVerb::Move)
        );
        assert_eq!(cursor_command("SELECT 1"), None);
    }

    #[test]
    fn close() {
        let c = cursor_command("CLOSE c").expect("close");
        assert_eq!((c.verb, c.name), (CursorVerb::Close, Some("c".into())));
        assert_eq!(cursor_command("CLOSE ALL").and_then(|c| c.name), None);
    }

    #[test]
    fn declarations() {
        let sql = "DECLARE \"C\" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1";
        let toks = tokens(sql);
        let (d, for_at) = declaration(&toks, 0).expect("declaration");
        assert_eq!(
            d,
            CursorDecl {
                name: "C".into(),
                hold: true,
                binary: true
            }
        );
        assert!(toks[for_at].tok.is_word("for"));
        let toks = tokens("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1");
        assert!(!declaration(&toks, 0).expect("declaration").0.hold);
    }
}

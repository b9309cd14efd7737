//! Statements PostgreSQL accepts but sqlparser 0.59 cannot parse, planned through a
//! stand-in text (issue 15; SPEC §5 rule 8). Three constructs are known:
//! `trim(LEADING FROM x)` (no characters named), `a BETWEEN SYMMETRIC b AND c`, and a
//! window frame's `EXCLUDE CURRENT ROW | GROUP | TIES | NO OTHERS`. Without a parse such
//! a statement goes only where its leading keywords say, so a multi-shard read of a
//! distributed table using one was refused.
//!
//! [`stand_in`] rewrites the text into one sqlparser parses and that plans the same
//! way:
//! - `trim(LEADING FROM x)` becomes `trim(LEADING ' ' FROM x)`, which is what
//!   PostgreSQL's grammar makes of it (the default characters are one space), so there
//!   is nothing to restore;
//! - `BETWEEN SYMMETRIC b AND c` becomes `BETWEEN pgshard_symmetric(b) AND c` (the low
//!   bound ends at the first `AND` at its depth: PostgreSQL's `b_expr` has no bare
//!   `AND`);
//! - `(PARTITION BY p … EXCLUDE CURRENT ROW)` becomes `(PARTITION BY
//!   pgshard_exclude_current_row(), p …)`: the exclusion is the last clause of a window
//!   definition, and only definitions that start with PARTITION BY are rewritten.
//!
//! The markers change no routing decision: they are no shard-key comparison, no
//! aggregate, and a partition list keeps its other expressions (the key among them or
//! not). After planning, [`restore_route`] turns every text the plan sends back into the
//! original construct (`BETWEEN SYMMETRIC (b) AND c`; the exclusion put back before the
//! window's closing parenthesis). A route whose texts cannot all be restored, or whose
//! kind is not known here, is not used: the statement is routed by keywords as before
//! (and a multi-shard one refused). A single-shard route forwards the client's own text,
//! so it needs no restoring.

use crate::parse::{tokens, Tok, Token};
use crate::{CollectPlan, MergePlan, Route};

const SYMMETRIC: &str = "pgshard_symmetric";

/// Frame exclusions: the marker function and the clause it stands for.
const EXCLUSIONS: [(&str, &[&str]); 4] = [
    ("pgshard_exclude_current_row", &["current", "row"]),
    ("pgshard_exclude_group", &["group"]),
    ("pgshard_exclude_ties", &["ties"]),
    ("pgshard_exclude_no_others", &["no", "others"]),
];

/// A marker function name of a stand-in text.
pub(crate) fn is_marker(name: &str) -> bool {
    name.eq_ignore_ascii_case(SYMMETRIC)
        || EXCLUSIONS.iter().any(|(m, _)| name.eq_ignore_ascii_case(m))
}

fn is_word(toks: &[Token<'_>], i: usize, kw: &str) -> bool {
    toks.get(i).is_some_and(|t| t.tok.is_word(kw))
}

fn is_punct(toks: &[Token<'_>], i: usize, c: u8) -> bool {
    toks.get(i).is_some_and(|t| t.tok == Tok::Punct(c))
}

/// An edit of a text: the byte range `start..end` replaced by `with`.
struct Edit {
    start: usize,
    end: usize,
    with: String,
}

/// Applies non-overlapping edits (`None` if two overlap).
fn apply(text: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for e in edits {
        if e.start < at {
            return None;
        }
        out.push_str(text.get(at..e.start)?);
        out.push_str(&e.with);
        at = e.end;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

/// True when a statement names a marker itself: such a statement is refused (the
/// planner treats the markers as syntax, see [`crate::classify::is_portable_function`]).
pub(crate) fn names_marker(toks: &[Token<'_>]) -> bool {
    toks.iter().any(|t| match t.tok {
        Tok::Word(w) | Tok::QuotedIdent(w) => is_marker(w),
        _ => false,
    })
}

/// The parseable stand-in for `text` (see the module doc), or `None` when none of the
/// known constructs is in it (or a marker name already is).
pub(crate) fn stand_in(text: &str) -> Option<String> {
    let toks = tokens(text);
    if names_marker(&toks) {
        return None;
    }
    let mut edits = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        if t.tok.is_word("trim")
            && is_punct(&toks, k + 1, b'(')
            && ["leading", "trailing", "both"]
                .iter()
                .any(|w| is_word(&toks, k + 2, w))
            && is_word(&toks, k + 3, "from")
        {
            let at = toks[k + 3].start;
            edits.push(Edit {
                start: at,
                end: at,
                with: "' ' ".to_owned(),
            });
        } else if t.tok.is_word("between") && is_word(&toks, k + 1, "symmetric") {
            let low = k + 2;
            let and = bound_end(&toks, low)?;
            edits.push(Edit {
                start: toks[k + 1].start,
                end: toks[low].start,
                with: format!("{SYMMETRIC}("),
            });
            let at = toks[and - 1].end;
            edits.push(Edit {
                start: at,
                end: at,
                with: ")".to_owned(),
            });
        } else if t.tok.is_word("exclude") {
            let Some((marker, words)) = EXCLUSIONS.iter().find(|(_, words)| {
                words
                    .iter()
                    .enumerate()
                    .all(|(n, w)| is_word(&toks, k + 1 + n, w))
            }) else {
                continue;
            };
            let last = k + words.len();
            // The exclusion ends the window definition; the definition starts with
            // PARTITION BY.
            if !is_punct(&toks, last + 1, b')') {
                return None;
            }
            let open = group_start(&toks, k)?;
            if !(is_word(&toks, open + 1, "partition") && is_word(&toks, open + 2, "by")) {
                return None;
            }
            let at = toks[open + 2].end;
            edits.push(Edit {
                start: at,
                end: at,
                with: format!(" {marker}(),"),
            });
            edits.push(Edit {
                start: t.start,
                end: toks[last].end,
                with: String::new(),
            });
        }
    }
    if edits.is_empty() {
        return None;
    }
    apply(text, edits)
}

/// The index of the depth-0 `AND` that ends the BETWEEN low bound starting at `low`
/// (`None` if the bound is empty or has no end in its group).
fn bound_end(toks: &[Token<'_>], low: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(low) {
        match t.tok {
            Tok::Punct(b'(' | b'[') => depth += 1,
            Tok::Punct(b')' | b']') => depth = depth.checked_sub(1)?,
            Tok::Punct(b';') => return None,
            _ if depth == 0 && t.tok.is_word("and") => return (j > low).then_some(j),
            _ => {}
        }
    }
    None
}

/// The index of the `(` opening the parenthesised group that holds token `k`.
fn group_start(toks: &[Token<'_>], k: usize) -> Option<usize> {
    let mut depth = 0usize;
    for j in (0..k).rev() {
        match toks[j].tok {
            Tok::Punct(b')') => depth += 1,
            Tok::Punct(b'(') if depth == 0 => return Some(j),
            Tok::Punct(b'(') => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The index of the `)` closing the group that holds the tokens from `from` on.
fn group_end(toks: &[Token<'_>], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(from) {
        match t.tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') if depth == 0 => return Some(j),
            Tok::Punct(b')') => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `sql` (a text planned from a stand-in, or a fragment of one) with the original
/// constructs put back; `None` when a marker is not where the stand-in put it.
pub(crate) fn restore(sql: &str) -> Option<String> {
    let toks = tokens(sql);
    let mut edits = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        let name = match t.tok {
            Tok::Word(w) => w,
            Tok::QuotedIdent(w) if is_marker(w) => return None,
            _ => continue,
        };
        if name.eq_ignore_ascii_case(SYMMETRIC) {
            if !(k > 0 && toks[k - 1].tok.is_word("between") && is_punct(&toks, k + 1, b'(')) {
                return None;
            }
            edits.push(Edit {
                start: t.start,
                end: toks[k + 1].end,
                with: "SYMMETRIC (".to_owned(),
            });
        } else if let Some((_, words)) = EXCLUSIONS
            .iter()
            .find(|(m, _)| name.eq_ignore_ascii_case(m))
        {
            if !(is_punct(&toks, k + 1, b'(')
                && is_punct(&toks, k + 2, b')')
                && is_punct(&toks, k + 3, b',')
                && k >= 2
                && toks[k - 1].tok.is_word("by")
                && toks[k - 2].tok.is_word("partition"))
            {
                return None;
            }
            edits.push(Edit {
                start: t.start,
                end: toks[k + 3].end,
                with: String::new(),
            });
            let close = group_end(&toks, k + 4)?;
            let at = toks[close].start;
            edits.push(Edit {
                start: at,
                end: at,
                with: format!(" EXCLUDE {}", words.join(" ").to_ascii_uppercase()),
            });
        }
    }
    apply(sql, edits)
}

fn restore_collect(c: &mut CollectPlan) -> Option<()> {
    if c.insert.is_some() {
        return None;
    }
    c.sql = restore(&c.sql)?;
    Some(())
}

/// The route planned from a stand-in, with its texts restored (see the module doc);
/// `None` for a refusal or a route this module does not know the texts of.
pub(crate) fn restore_route(route: Route) -> Option<Route> {
    match route {
        Route::Shard(_) | Route::ShardByParam { .. } | Route::AnyShard => Some(route),
        Route::Fanout(mut f) => {
            if !f.moving_sql.is_empty() {
                return None;
            }
            f.shard_sql = restore(&f.shard_sql)?;
            match &mut f.merge {
                MergePlan::Stream(_) => {}
                MergePlan::Finish(fp) => {
                    fp.before = restore(&fp.before)?;
                    fp.after = restore(&fp.after)?;
                }
                MergePlan::Collect(c) => restore_collect(c)?,
            }
            if let Some(c) = f.fallback.as_mut() {
                if restore_collect(c).is_none() {
                    f.fallback = None;
                }
            }
            Some(Route::Fanout(f))
        }
        Route::AllShards
        | Route::FanoutWrite(_)
        | Route::InsertByParams(_)
        | Route::Copy(_)
        | Route::Router(_)
        | Route::Unsupported(_)
        | Route::Error(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{restore, stand_in};

    #[test]
    fn trim_gets_its_default_characters() {
        assert_eq!(
            stand_in("SELECT trim(LEADING FROM '  a') AS e FROM t").as_deref(),
            Some("SELECT trim(LEADING ' ' FROM '  a') AS e FROM t")
        );
    }

    #[test]
    fn between_symmetric_round_trips() {
        let s = stand_in("SELECT a BETWEEN SYMMETRIC f(x, 1) + 2 AND 1 AS c FROM t")
            .expect("a stand-in");
        assert_eq!(
            s,
            "SELECT a BETWEEN pgshard_symmetric(f(x, 1) + 2) AND 1 AS c FROM t"
        );
        assert_eq!(
            restore(&s).as_deref(),
            Some("SELECT a BETWEEN SYMMETRIC (f(x, 1) + 2) AND 1 AS c FROM t")
        );
        // A marker anywhere else is not restored.
        assert_eq!(restore("SELECT pgshard_symmetric(1)"), None);
        assert_eq!(
            stand_in("SELECT pgshard_symmetric(1) BETWEEN SYMMETRIC 1 AND 2"),
            None
        );
    }

    #[test]
    fn exclusion_round_trips() {
        let sql = "SELECT sum(x) OVER (PARTITION BY k ORDER BY x GROUPS BETWEEN CURRENT ROW AND 1 FOLLOWING EXCLUDE CURRENT ROW) FROM t";
        let s = stand_in(sql).expect("a stand-in");
        assert_eq!(
            s,
            "SELECT sum(x) OVER (PARTITION BY pgshard_exclude_current_row(), k ORDER BY x GROUPS BETWEEN CURRENT ROW AND 1 FOLLOWING ) FROM t"
        );
        assert_eq!(
            restore(&s).as_deref(),
            Some("SELECT sum(x) OVER (PARTITION BY  k ORDER BY x GROUPS BETWEEN CURRENT ROW AND 1 FOLLOWING  EXCLUDE CURRENT ROW) FROM t")
        );
        // Without PARTITION BY first: not rewritten.
        assert_eq!(
            stand_in(
                "SELECT sum(x) OVER (ORDER BY x ROWS UNBOUNDED PRECEDING EXCLUDE TIES) FROM t"
            ),
            None
        );
    }
}

//! Differential testing (SPEC §14): the same SQL against one plain PostgreSQL and through
//! pgshard must give the same rows, column names and types, command tags and SQLSTATEs,
//! or SQLSTATE 0A000 (an honest "not supported").
//!
//! Corpus files (`tests/corpus/*.sql`) hold statements ending with `;` at the end of a
//! line. Lines starting with `--` are comments, except two directives:
//! - `-- @router: <sql>` runs only through pgshard (e.g. `create_distributed_table`);
//! - `-- @plain: <sql>` runs only on the plain PostgreSQL;
//! - `-- @then-rollback: <sql>` runs on both and is compared like any statement, then
//!   both sessions get `ROLLBACK`: a statement inside a transaction block that pgshard
//!   may refuse (its 0A000 fails the block there while PostgreSQL's goes on) is counted
//!   as a refusal, not as a transaction status that differs, and both blocks end alike.
//!
//! Rows are compared in order when the statement has an ORDER BY, else as multisets,
//! since PostgreSQL itself promises no order then.
//! A LIMIT without any ORDER BY promises only how many rows: only the count is compared.

use crate::wire::{Mode, Outcome, WireClient, WireError};

/// Where a corpus statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Both,
    RouterOnly,
    PlainOnly,
    /// Compared, then `ROLLBACK` on both (`-- @then-rollback:`).
    BothThenRollback,
}

/// One statement of a corpus.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: String,
    pub line: usize,
    pub sql: String,
    pub target: Target,
}

/// How pgshard's answer compares with PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// pgshard answered 0A000 where PostgreSQL answered.
    Unsupported(String),
    /// Anything else that differs: the worst bug.
    Wrong(String),
}

/// The result of a corpus run.
#[derive(Debug, Default)]
pub struct Report {
    pub same: usize,
    pub unsupported: Vec<(Entry, String)>,
    pub wrong: Vec<(Entry, String)>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "differential corpus: {} same, {} unsupported (0A000), {} wrong\n",
            self.same,
            self.unsupported.len(),
            self.wrong.len()
        );
        for (e, why) in &self.wrong {
            s.push_str(&format!(
                "WRONG {}:{}: {}\n  {}\n",
                e.file, e.line, e.sql, why
            ));
        }
        for (e, why) in &self.unsupported {
            s.push_str(&format!(
                "unsupported {}:{}: {}\n  {}\n",
                e.file, e.line, e.sql, why
            ));
        }
        s
    }
}

/// Parse a corpus file.
pub fn parse_corpus(file: &str, text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if buf.is_empty() {
            if let Some(sql) = trimmed.strip_prefix("-- @router:") {
                out.push(Entry {
                    file: file.into(),
                    line: i + 1,
                    sql: sql.trim().into(),
                    target: Target::RouterOnly,
                });
                continue;
            }
            if let Some(sql) = trimmed.strip_prefix("-- @plain:") {
                out.push(Entry {
                    file: file.into(),
                    line: i + 1,
                    sql: sql.trim().into(),
                    target: Target::PlainOnly,
                });
                continue;
            }
            if let Some(sql) = trimmed.strip_prefix("-- @then-rollback:") {
                out.push(Entry {
                    file: file.into(),
                    line: i + 1,
                    sql: sql.trim().into(),
                    target: Target::BothThenRollback,
                });
                continue;
            }
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            start = i + 1;
        }
        if !buf.is_empty() {
            buf.push('\n');
        }
        buf.push_str(line);
        if trimmed.ends_with(';') {
            out.push(Entry {
                file: file.into(),
                line: start,
                sql: std::mem::take(&mut buf),
                target: Target::Both,
            });
        }
    }
    if !buf.trim().is_empty() {
        out.push(Entry {
            file: file.into(),
            line: start,
            sql: buf,
            target: Target::Both,
        });
    }
    out
}

fn has_order_by(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("order by")
}

/// A LIMIT (or FETCH FIRST) without any ORDER BY: PostgreSQL promises no particular
/// rows, only how many, so only the count is compared.
fn limit_without_order(sql: &str) -> bool {
    let s = sql.to_ascii_lowercase();
    !s.contains("order by") && (s.contains(" limit ") || s.contains(" fetch "))
}

/// Compare one statement's outcomes.
pub fn compare(sql: &str, plain: &[Outcome], router: &[Outcome]) -> Verdict {
    if router
        .iter()
        .any(|o| matches!(o, Outcome::Error(e) if e.code() == "0A000"))
        && !plain
            .iter()
            .any(|o| matches!(o, Outcome::Error(e) if e.code() == "0A000"))
    {
        let msg = router
            .iter()
            .find_map(|o| match o {
                Outcome::Error(e) => Some(e.message().to_string()),
                _ => None,
            })
            .unwrap_or_default();
        return Verdict::Unsupported(msg);
    }
    if plain.len() != router.len() {
        return Verdict::Wrong(format!(
            "{} results from PostgreSQL, {} from pgshard: {plain:?} vs {router:?}",
            plain.len(),
            router.len()
        ));
    }
    let ordered = has_order_by(sql);
    for (p, r) in plain.iter().zip(router) {
        match (p, r) {
            (
                Outcome::Done {
                    columns: pc,
                    rows: pr,
                    tag: pt,
                },
                Outcome::Done {
                    columns: rc,
                    rows: rr,
                    tag: rt,
                },
            ) => {
                if pt != rt {
                    return Verdict::Wrong(format!("command tag {pt:?} vs {rt:?}"));
                }
                if pc != rc {
                    return Verdict::Wrong(format!("columns {pc:?} vs {rc:?}"));
                }
                if limit_without_order(sql) {
                    if pr.len() != rr.len() {
                        return Verdict::Wrong(format!(
                            "LIMIT without ORDER BY: {} rows from PostgreSQL, {} from pgshard",
                            pr.len(),
                            rr.len()
                        ));
                    }
                    continue;
                }
                let (mut pr, mut rr) = (pr.clone(), rr.clone());
                if !ordered {
                    pr.sort();
                    rr.sort();
                }
                if pr != rr {
                    let show = |v: &Vec<Vec<Option<String>>>| {
                        let mut s = format!("{} rows", v.len());
                        for row in v.iter().take(5) {
                            s.push_str(&format!("\n      {row:?}"));
                        }
                        s
                    };
                    return Verdict::Wrong(format!(
                        "rows differ:\n    PostgreSQL: {}\n    pgshard:    {}",
                        show(&pr),
                        show(&rr)
                    ));
                }
            }
            (Outcome::Empty, Outcome::Empty) => {}
            (Outcome::Error(pe), Outcome::Error(re)) => {
                if pe.code() != re.code() {
                    return Verdict::Wrong(format!(
                        "SQLSTATE {} ({}) vs {} ({})",
                        pe.code(),
                        pe.message(),
                        re.code(),
                        re.message()
                    ));
                }
            }
            (p, r) => return Verdict::Wrong(format!("PostgreSQL: {p:?}\n    pgshard: {r:?}")),
        }
    }
    Verdict::Same
}

/// Run a corpus against both servers, statement by statement, in order.
pub async fn run(
    plain: &mut WireClient,
    router: &mut WireClient,
    entries: &[Entry],
) -> Result<Report, WireError> {
    run_mode(plain, router, entries, Mode::Simple).await
}

/// [`run`] with every statement sent as `mode` says. An entry holding several
/// statements goes as a simple Query in every mode (drivers can send those no other
/// way).
pub async fn run_mode(
    plain: &mut WireClient,
    router: &mut WireClient,
    entries: &[Entry],
    mode: Mode,
) -> Result<Report, WireError> {
    let mut report = Report::default();
    for e in entries {
        let mode = if pgshard_sql::statement_texts(&e.sql).len() > 1 {
            Mode::Simple
        } else {
            mode
        };
        match e.target {
            Target::RouterOnly => {
                let (out, _) = router.run(&e.sql, mode).await?;
                if let Some(Outcome::Error(err)) =
                    out.iter().find(|o| matches!(o, Outcome::Error(_)))
                {
                    report
                        .wrong
                        .push((e.clone(), format!("setup failed through pgshard: {err:?}")));
                }
            }
            Target::PlainOnly => {
                let (out, _) = plain.run(&e.sql, mode).await?;
                if let Some(Outcome::Error(err)) =
                    out.iter().find(|o| matches!(o, Outcome::Error(_)))
                {
                    report
                        .wrong
                        .push((e.clone(), format!("setup failed on PostgreSQL: {err:?}")));
                }
            }
            Target::Both | Target::BothThenRollback => {
                let (p, _) = plain.run(&e.sql, mode).await?;
                let (r, _) = router.run(&e.sql, mode).await?;
                match compare(&e.sql, &p, &r) {
                    Verdict::Same => report.same += 1,
                    Verdict::Unsupported(m) => report.unsupported.push((e.clone(), m)),
                    Verdict::Wrong(m) => report.wrong.push((e.clone(), m)),
                }
                if e.target == Target::BothThenRollback {
                    plain.query("ROLLBACK").await?;
                    router.query("ROLLBACK").await?;
                }
                // Keep both sessions in the same transaction state.
                if plain.status != router.status {
                    report.wrong.push((
                        e.clone(),
                        format!(
                            "transaction status {:?} vs {:?}",
                            plain.status as char, router.status as char
                        ),
                    ));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Column, ServerMessage};

    #[test]
    fn corpus_parsing() {
        let text = "-- a comment\n-- @router: SELECT create_distributed_table('t', 'id');\nCREATE TABLE t (\n  id int\n);\n\nSELECT 1;\n-- @plain: SELECT 2;\nSELECT 3";
        let e = parse_corpus("x.sql", text);
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].target, Target::RouterOnly);
        assert_eq!(e[1].sql, "CREATE TABLE t (\n  id int\n);");
        assert_eq!(e[1].line, 3);
        assert_eq!(e[2].sql, "SELECT 1;");
        assert_eq!(e[3].target, Target::PlainOnly);
        assert_eq!(e[4].sql, "SELECT 3");
        let e = parse_corpus("x.sql", "BEGIN;\n-- @then-rollback: SELECT 4;\nSELECT 5;");
        assert_eq!(e[1].target, Target::BothThenRollback);
        assert_eq!(e[1].sql, "SELECT 4;");
        assert_eq!(e[2].target, Target::Both);
    }

    fn done(rows: &[&str], tag: &str) -> Outcome {
        Outcome::Done {
            columns: vec![Column {
                name: "x".into(),
                type_oid: 23,
            }],
            rows: rows.iter().map(|r| vec![Some(r.to_string())]).collect(),
            tag: tag.into(),
        }
    }

    fn err(code: &str) -> Outcome {
        let mut m = ServerMessage::default();
        m.fields.insert('C', code.into());
        Outcome::Error(m)
    }

    #[test]
    fn verdicts() {
        let q = "SELECT x FROM t";
        assert_eq!(
            compare(
                q,
                &[done(&["1", "2"], "SELECT 2")],
                &[done(&["2", "1"], "SELECT 2")]
            ),
            Verdict::Same
        );
        let l = "SELECT x FROM t LIMIT 1";
        assert_eq!(
            compare(l, &[done(&["1"], "SELECT 1")], &[done(&["2"], "SELECT 1")]),
            Verdict::Same
        );
        assert!(matches!(
            compare(l, &[done(&["1"], "SELECT 1")], &[done(&[], "SELECT 0")]),
            Verdict::Wrong(_)
        ));
        let o = "SELECT x FROM t ORDER BY x";
        assert!(matches!(
            compare(
                o,
                &[done(&["1", "2"], "SELECT 2")],
                &[done(&["2", "1"], "SELECT 2")]
            ),
            Verdict::Wrong(_)
        ));
        assert!(matches!(
            compare(q, &[done(&["1"], "SELECT 1")], &[done(&["1"], "SELECT 2")]),
            Verdict::Wrong(_)
        ));
        assert!(matches!(
            compare(q, &[done(&["1"], "SELECT 1")], &[err("0A000")]),
            Verdict::Unsupported(_)
        ));
        assert!(matches!(
            compare(q, &[done(&["1"], "SELECT 1")], &[err("42P01")]),
            Verdict::Wrong(_)
        ));
        assert_eq!(compare(q, &[err("23505")], &[err("23505")]), Verdict::Same);
        assert!(matches!(
            compare(q, &[err("23505")], &[err("23502")]),
            Verdict::Wrong(_)
        ));
    }
}

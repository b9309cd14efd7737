//! Session state the router mirrors onto pooled backends (SPEC §5 rule 6, §7): the
//! session's effective SETs, keyed by variable, replayed on a backend whose applied state
//! differs (compared by fingerprint, so sessions with equal state share backends without
//! any replay).

use pgshard_sql::SessionCommand;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct SessionVars {
    sets: BTreeMap<String, String>,
    fp: u64,
}

/// Startup parameters that are not GUCs.
const NOT_GUCS: &[&str] = &["user", "database", "options", "replication"];

impl SessionVars {
    /// The state implied by a client's startup parameters (`application_name`,
    /// `client_encoding`, `-c name=value` in `options`, …).
    pub fn from_startup(params: &[(String, String)]) -> SessionVars {
        let mut v = SessionVars::default();
        for (name, value) in params {
            if name == "options" {
                for (n, val) in parse_options(value) {
                    v.set_value(&n, &val);
                }
            } else if !NOT_GUCS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                v.set_value(name, value);
            }
        }
        v
    }

    fn set_value(&mut self, name: &str, value: &str) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return;
        }
        let lname = name.to_ascii_lowercase();
        let sql = format!("SET {lname} TO {}", quote_literal(value));
        self.sets.insert(lname, sql);
        self.refresh();
    }

    /// Applies a successful SET/RESET/DISCARD ALL.
    pub fn apply(&mut self, cmd: &SessionCommand) {
        match cmd {
            SessionCommand::Set { name, sql } => {
                self.sets.insert(name.clone(), sql.clone());
            }
            SessionCommand::Reset { name } => {
                self.sets.remove(name);
            }
            SessionCommand::ResetAll | SessionCommand::DiscardAll => {
                // Keep session authorization (RESET ALL does not reset it).
                self.sets.retain(|k, _| k == "session_authorization");
                if matches!(cmd, SessionCommand::DiscardAll) {
                    self.sets.clear();
                }
            }
            _ => return,
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        if self.sets.is_empty() {
            self.fp = 0;
            return;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in &self.sets {
            for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        // 0 means "nothing set", which is what a fresh backend has.
        self.fp = h.max(1);
    }

    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// SQL that brings any idle backend to exactly this state.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("SET SESSION AUTHORIZATION DEFAULT; RESET ALL");
        for v in self.sets.values() {
            sql.push_str("; ");
            sql.push_str(v);
        }
        sql
    }

    /// True if the session's `extra_float_digits` may be below 1: float values then
    /// print rounded (`%.{15+n}g`), so distinct values can have the same text and a
    /// merge cannot order them by it. Unknown forms count as below 1. (`SET LOCAL` and
    /// `set_config` are not tracked here.)
    pub fn floats_print_rounded(&self) -> bool {
        let Some(sql) = self.sets.get("extra_float_digits") else {
            return false;
        };
        let lower = sql.to_ascii_lowercase();
        let value = match (lower.rfind('='), lower.rfind(" to ")) {
            (Some(e), Some(t)) => &lower[(e + 1).max(t + 4)..],
            (Some(e), None) => &lower[e + 1..],
            (None, Some(t)) => &lower[t + 4..],
            (None, None) => return true,
        };
        let value = value.trim().trim_end_matches(';').trim().trim_matches('\'');
        if value == "default" {
            return false;
        }
        value.parse::<i32>().map_or(true, |n| n < 1)
    }

    /// The value a client set for `name` at startup or with SET … TO 'literal', if simple.
    pub fn startup_value(&self, name: &str) -> Option<String> {
        let sql = self.sets.get(&name.to_ascii_lowercase())?;
        let v = sql.split_once(" TO ")?.1;
        v.strip_prefix('\'')?
            .strip_suffix('\'')
            .map(|s| s.replace("''", "'"))
    }
}

/// `-c name=value` and `--name=value` pairs from the `options` startup parameter
/// (backslash escapes spaces, as libpq does).
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let pair = if w == "-c" {
            i += 1;
            words.get(i).cloned()
        } else if let Some(r) = w.strip_prefix("-c") {
            Some(r.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        if let Some((n, v)) = pair.as_deref().and_then(|p| p.split_once('=')) {
            out.push((n.replace('-', "_"), v.to_string()));
        }
        i += 1;
    }
    out
}

/// A SQL string literal for `value`.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_params_become_sets() {
        let v = SessionVars::from_startup(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "psql".into()),
            ("options".into(), "-c search_path=a,b --work-mem=4MB".into()),
        ]);
        let sql = v.replay_sql();
        assert!(sql.contains("SET application_name TO 'psql'"), "{sql}");
        assert!(sql.contains("SET search_path TO 'a,b'"), "{sql}");
        assert!(sql.contains("SET work_mem TO '4MB'"), "{sql}");
        assert_eq!(v.startup_value("application_name").as_deref(), Some("psql"));
        assert_ne!(v.fingerprint(), 0);
        assert_eq!(SessionVars::default().fingerprint(), 0);
    }

    #[test]
    fn rounded_floats() {
        let set = |sql: &str| {
            let mut v = SessionVars::default();
            v.apply(&pgshard_sql::session_command(sql));
            v.floats_print_rounded()
        };
        assert!(!SessionVars::default().floats_print_rounded());
        assert!(set("SET extra_float_digits = -14"));
        assert!(set("SET extra_float_digits TO 0"));
        assert!(set("set session extra_float_digits to '-3'"));
        assert!(!set("SET extra_float_digits = 3"));
        assert!(!set("SET extra_float_digits TO DEFAULT"));
        let v = SessionVars::from_startup(&[("extra_float_digits".into(), "2".into())]);
        assert!(!v.floats_print_rounded());
        let v = SessionVars::from_startup(&[("extra_float_digits".into(), "0".into())]);
        assert!(v.floats_print_rounded());
    }
}

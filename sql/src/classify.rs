//! Classification: what kind of statement this is, and what kind of table a name is.
//!
//! [`kind_of`] decides a statement's [`StatementKind`] from its leading keywords alone
//! (after comments, whitespace and opening parentheses), so the router's transaction
//! tracking can call [`crate::statement_kind`] without a full parse, and statements
//! sqlparser rejects get the same kind as those it accepts (SPEC §5 rule 8, §7).
//!
//! [`classify_table`] maps a table name to its placement class (SPEC §4): distributed or
//! reference when the catalog declares it, a PostgreSQL catalog relation
//! (`pg_catalog.*`, `information_schema.*`, undeclared `pg_*`), or local (every other
//! undeclared table, which lives on the catalog's local shard).
//!
//! [`is_portable_function`] knows the built-in functions whose result does not depend on
//! which shard evaluates them; anything else might read a local object (a sequence, a
//! user function, a regclass lookup) and keeps the statement on the local shard.

use crate::parse::{skip_parens, tokens, Tok, Token};
use crate::StatementKind;
use pgshard_catalog::{Catalog, KeyType, TableDef, TableKind};

/// Where a table's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableClass<'c> {
    Distributed {
        def: &'c TableDef,
        key: &'c str,
        key_type: KeyType,
    },
    Reference(&'c TableDef),
    /// `pg_catalog`, `information_schema` and undeclared `pg_*` relations.
    Catalog,
    /// Undeclared user tables: on the local shard.
    Local,
}

impl TableClass<'_> {
    pub(crate) fn is_declared(&self) -> bool {
        matches!(
            self,
            TableClass::Distributed { .. } | TableClass::Reference(_)
        )
    }
}

/// The class of a table named by folded `parts` (`[t]`, `[schema, t]` or
/// `[db, schema, t]`), and the name to show in messages.
pub(crate) fn classify_table<'c>(
    catalog: &'c Catalog,
    parts: &[String],
) -> (TableClass<'c>, String) {
    let parts = match parts.len() {
        0 => return (TableClass::Local, String::new()),
        3.. => &parts[parts.len() - 2..],
        _ => parts,
    };
    let (schema, table) = match parts {
        [s, t] => (Some(s.as_str()), t.as_str()),
        [t] => (None, t.as_str()),
        _ => (None, ""),
    };
    if matches!(schema, Some("pg_catalog" | "information_schema")) {
        return (TableClass::Catalog, parts.join("."));
    }
    let def = match schema {
        None => catalog
            .table(table)
            .or_else(|| catalog.table(&format!("public.{table}"))),
        Some(s) => catalog.table(&format!("{s}.{table}")),
    };
    match def {
        Some(def) => {
            let class = match &def.kind {
                TableKind::Distributed {
                    shard_key,
                    key_type,
                    ..
                } => TableClass::Distributed {
                    def,
                    key: shard_key.as_str(),
                    key_type: *key_type,
                },
                TableKind::Reference => TableClass::Reference(def),
            };
            (class, def.name.clone())
        }
        None if schema.is_none() && table.starts_with("pg_") => {
            // Unqualified `pg_*` names resolve in pg_catalog first (it is implicitly at
            // the front of every search_path).
            (TableClass::Catalog, table.to_owned())
        }
        None => (TableClass::Local, parts.join(".")),
    }
}

/// Hash families: integer types hash alike, text and varchar alike (SPEC §4).
pub(crate) fn key_family(t: KeyType) -> u8 {
    match t {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => 0,
        KeyType::Text | KeyType::Varchar => 1,
        KeyType::Uuid => 2,
    }
}

/// Built-in functions whose result is the same on every shard and that touch no user
/// object; a statement calling only these (and reading only reference tables or no
/// table) can run on any shard.
pub(crate) fn is_portable_function(parts: &[String]) -> bool {
    let (schema, name) = match parts {
        [name] => (None, name.as_str()),
        [schema, name] => (Some(schema.as_str()), name.as_str()),
        _ => return false,
    };
    if schema.is_some_and(|s| s != "pg_catalog") {
        return false;
    }
    // The markers of a stand-in text stand for SQL syntax, not calls (a statement
    // that names one itself is refused, see `crate::standin`).
    if schema.is_none() && crate::standin::is_marker(name) {
        return true;
    }
    matches!(
        name,
        // session and time
        "now" | "current_timestamp" | "current_date" | "current_time" | "localtime"
            | "localtimestamp" | "statement_timestamp" | "transaction_timestamp"
            | "clock_timestamp" | "timeofday" | "version" | "current_setting"
            | "current_user" | "session_user" | "user" | "current_role" | "current_schema"
            | "current_schemas" | "current_database" | "current_catalog" | "pg_typeof"
            | "pg_sleep" | "pg_backend_pid" | "txid_current" | "pg_current_xact_id"
            | "inet_server_port" | "inet_server_addr" | "pg_postmaster_start_time"
            | "pg_is_in_recovery" | "pg_encoding_to_char" | "pg_client_encoding"
            | "gen_random_uuid" | "random"
            // math
            | "abs" | "ceil" | "ceiling" | "floor" | "round" | "trunc" | "sign" | "sqrt"
            | "cbrt" | "power" | "pow" | "exp" | "ln" | "log" | "log10" | "mod" | "div"
            | "pi" | "greatest" | "least" | "width_bucket" | "gcd" | "lcm"
            // strings
            | "length" | "char_length" | "character_length" | "octet_length" | "bit_length"
            | "lower" | "upper" | "initcap" | "trim" | "btrim" | "ltrim" | "rtrim" | "substr"
            | "substring" | "position" | "strpos" | "replace" | "concat" | "concat_ws"
            | "format" | "left" | "right" | "lpad" | "rpad" | "repeat" | "reverse"
            | "split_part" | "md5" | "sha256" | "sha512" | "encode" | "decode" | "to_hex"
            | "chr" | "ascii" | "quote_ident" | "quote_literal" | "quote_nullable"
            | "regexp_replace" | "regexp_match" | "regexp_matches" | "regexp_split_to_array"
            | "regexp_split_to_table" | "string_to_array" | "array_to_string"
            | "starts_with" | "translate" | "overlay"
            // conversion and dates
            | "to_char" | "to_date" | "to_timestamp" | "to_number" | "date_trunc"
            | "date_part" | "extract" | "age" | "make_date" | "make_time"
            | "make_timestamp" | "make_timestamptz" | "make_interval" | "justify_days"
            | "justify_hours" | "justify_interval" | "isfinite" | "cast"
            // conditional
            | "coalesce" | "nullif"
            // aggregates and window functions
            | "count" | "sum" | "avg" | "min" | "max" | "bool_and" | "bool_or" | "every"
            | "string_agg" | "array_agg" | "json_agg" | "jsonb_agg" | "json_object_agg"
            | "jsonb_object_agg" | "stddev" | "stddev_pop" | "stddev_samp" | "variance"
            | "var_pop" | "var_samp" | "bit_and" | "bit_or" | "row_number" | "rank"
            | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" | "lag" | "lead"
            | "first_value" | "last_value" | "nth_value"
            // arrays and sets
            | "array_length" | "cardinality" | "unnest" | "array_append" | "array_prepend"
            | "array_cat" | "array_position" | "array_positions" | "array_remove"
            | "array_replace" | "array_upper" | "array_lower" | "array_ndims" | "array_dims"
            | "generate_series" | "generate_subscripts"
            // json
            | "to_json" | "to_jsonb" | "json_build_object" | "jsonb_build_object"
            | "json_build_array" | "jsonb_build_array" | "row_to_json" | "array_to_json"
            | "jsonb_pretty" | "json_typeof" | "jsonb_typeof" | "jsonb_set" | "jsonb_insert"
            | "json_extract_path" | "json_extract_path_text" | "jsonb_extract_path"
            | "jsonb_extract_path_text" | "json_array_elements" | "jsonb_array_elements"
            | "json_array_elements_text" | "jsonb_array_elements_text" | "json_each"
            | "jsonb_each" | "json_each_text" | "jsonb_each_text" | "json_object_keys"
            | "jsonb_object_keys" | "json_array_length" | "jsonb_array_length"
            | "jsonb_strip_nulls" | "json_strip_nulls"
    )
}

/// True if a word at `toks[i]` equals `kw`.
fn word_at(toks: &[Token<'_>], i: usize, kw: &str) -> bool {
    toks.get(i).is_some_and(|t| t.tok.is_word(kw))
}

/// Index of the first token that is not an opening parenthesis.
pub(crate) fn first_non_paren(toks: &[Token<'_>]) -> usize {
    toks.iter()
        .position(|t| t.tok != Tok::Punct(b'('))
        .unwrap_or(toks.len())
}

/// The kind of one statement (no `;` separators) from its tokens.
pub(crate) fn kind_of(toks: &[Token<'_>], text: &str) -> StatementKind {
    let i = first_non_paren(toks);
    let Some(Tok::Word(first)) = toks.get(i).map(|t| t.tok) else {
        return if toks.is_empty() {
            StatementKind::Empty
        } else {
            StatementKind::Other
        };
    };
    let kw = crate::parse::Upper::new(first);
    match kw.as_str() {
        "SELECT" | "VALUES" | "TABLE" | "WITH" => query_kind(toks),
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => StatementKind::Write,
        "COPY" => {
            if toks.get(i + 1).map(|t| t.tok) == Some(Tok::Punct(b'(')) {
                StatementKind::Read
            } else if toks.iter().skip(i + 1).any(|t| t.tok.is_word("from")) {
                StatementKind::Write
            } else {
                StatementKind::Read
            }
        }
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "VACUUM" | "ANALYZE" | "ANALYSE" | "CLUSTER"
        | "REINDEX" | "COMMENT" | "GRANT" | "REVOKE" | "SECURITY" | "REFRESH" | "IMPORT"
        | "REASSIGN" => StatementKind::Ddl,
        "BEGIN" | "START" => StatementKind::Begin,
        "COMMIT" | "END" => {
            if word_at(toks, i + 1, "prepared") {
                StatementKind::Other
            } else {
                StatementKind::Commit
            }
        }
        "ROLLBACK" => {
            if word_at(toks, i + 1, "prepared") {
                StatementKind::Other
            } else if toks[i + 1..].iter().take(3).any(|t| t.tok.is_word("to")) {
                StatementKind::Savepoint
            } else {
                StatementKind::Rollback
            }
        }
        "ABORT" => StatementKind::Rollback,
        "SAVEPOINT" | "RELEASE" => StatementKind::Savepoint,
        "SET" | "RESET" | "DISCARD" => StatementKind::SessionSet,
        "SHOW" => StatementKind::SessionShow,
        "PREPARE" => {
            if word_at(toks, i + 1, "transaction") {
                StatementKind::Other
            } else {
                StatementKind::Prepared
            }
        }
        "EXECUTE" | "DEALLOCATE" => StatementKind::Prepared,
        "EXPLAIN" => {
            let (inner, analyze) = explain_inner(toks);
            match inner {
                Some(start) if analyze => {
                    let inner_text = &text[start..];
                    let inner_toks = tokens(inner_text);
                    // EXPLAIN does not nest; do not recurse on `EXPLAIN EXPLAIN …`.
                    if inner_toks
                        .get(first_non_paren(&inner_toks))
                        .is_some_and(|t| t.tok.is_word("explain"))
                    {
                        return StatementKind::Read;
                    }
                    match kind_of(&inner_toks, inner_text) {
                        StatementKind::Read => StatementKind::Read,
                        other => other,
                    }
                }
                _ => StatementKind::Read,
            }
        }
        "DECLARE" | "FETCH" | "MOVE" => StatementKind::Read,
        _ => StatementKind::Other,
    }
}

/// SELECT / VALUES / TABLE / WITH: a write if a data-modifying CTE is present, DDL for
/// `SELECT … INTO new_table`, else a read.
fn query_kind(toks: &[Token<'_>]) -> StatementKind {
    let mut depth = 0usize;
    let mut into_at_top = false;
    let mut prev: Option<Tok<'_>> = None;
    for t in toks {
        match t.tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth = depth.saturating_sub(1),
            Tok::Word(w) => {
                if w.eq_ignore_ascii_case("insert")
                    || w.eq_ignore_ascii_case("delete")
                    || w.eq_ignore_ascii_case("merge")
                {
                    return StatementKind::Write;
                }
                if w.eq_ignore_ascii_case("update")
                    && !prev.is_some_and(|p| p.is_word("for") || p.is_word("key"))
                {
                    return StatementKind::Write;
                }
                if depth == 0 && w.eq_ignore_ascii_case("into") {
                    into_at_top = true;
                }
            }
            _ => {}
        }
        prev = Some(t.tok);
    }
    if into_at_top {
        StatementKind::Ddl
    } else {
        StatementKind::Read
    }
}

/// For `EXPLAIN [ANALYZE] [VERBOSE] [(options)] statement`: the byte offset where the
/// explained statement starts, and whether it is executed (ANALYZE).
pub(crate) fn explain_inner(toks: &[Token<'_>]) -> (Option<usize>, bool) {
    let mut i = first_non_paren(toks) + 1;
    let mut analyze = false;
    loop {
        match toks.get(i).map(|t| t.tok) {
            Some(Tok::Punct(b'(')) => {
                // An option list, unless it is a parenthesised query.
                let is_query = toks.get(i + 1).is_some_and(|t| {
                    ["select", "values", "with", "table", "("]
                        .iter()
                        .any(|k| t.tok.is_word(k) || (*k == "(" && t.tok == Tok::Punct(b'(')))
                });
                if is_query {
                    break;
                }
                let end = skip_parens(toks, i);
                let mut j = i + 1;
                while j < end {
                    if toks[j].tok.is_word("analyze") || toks[j].tok.is_word("analyse") {
                        let off = toks
                            .get(j + 1)
                            .is_some_and(|t| t.tok.is_word("false") || t.tok.is_word("off"));
                        analyze |= !off;
                    }
                    j += 1;
                }
                i = end;
            }
            Some(t) if t.is_word("analyze") || t.is_word("analyse") => {
                analyze = true;
                i += 1;
            }
            Some(t) if t.is_word("verbose") => i += 1,
            _ => break,
        }
    }
    (toks.get(i).map(|t| t.start), analyze)
}

/// Words that may stand before `(` in a read without being a function call: SQL
/// keywords that take a parenthesised list or subquery, and type names with a
/// modifier (`numeric(10, 2)`). A word not listed here and not a known read-only
/// function ([`is_read_only_function`]) makes a statement primary-only.
const PAREN_KEYWORDS: &[&str] = &[
    "select",
    "values",
    "with",
    "as",
    "from",
    "join",
    "on",
    "using",
    "where",
    "and",
    "or",
    "not",
    "in",
    "exists",
    "any",
    "some",
    "all",
    "over",
    "filter",
    "within",
    "row",
    "array",
    "lateral",
    "union",
    "intersect",
    "except",
    "by",
    "case",
    "when",
    "then",
    "else",
    "is",
    "distinct",
    "limit",
    "offset",
    "having",
    "group",
    "order",
    "recursive",
    "materialized",
    "grouping",
    "rollup",
    "cube",
    "sets",
    "like",
    "ilike",
    "similar",
    "between",
    "to",
    "numeric",
    "decimal",
    "varchar",
    "char",
    "character",
    "varying",
    "timestamp",
    "time",
    "interval",
    "bit",
    "float",
    "table",
    "only",
    "end",
    "escape",
    "first",
    "last",
    "asc",
    "desc",
    "nulls",
    "true",
    "false",
    "null",
    "cross",
    "inner",
    "left",
    "right",
    "full",
    "outer",
    "natural",
    "at",
    "zone",
    "collate",
];

/// Built-in functions a hot standby runs exactly as its primary would: the portable
/// ones ([`is_portable_function`]) except those that assign a transaction id
/// (refused on a standby), plus the recovery functions that say what a replica has
/// replayed. User functions are never on this list: they may write.
fn is_read_only_function(parts: &[String]) -> bool {
    let name = parts.last().map(String::as_str).unwrap_or_default();
    if matches!(name, "txid_current" | "pg_current_xact_id") {
        return false;
    }
    if is_portable_function(parts) {
        return true;
    }
    let qualified_ok = parts.len() == 1 || parts.first().is_some_and(|s| s == "pg_catalog");
    qualified_ok
        && matches!(
            name,
            "pg_last_wal_replay_lsn"
                | "pg_last_wal_receive_lsn"
                | "pg_last_xact_replay_timestamp"
                | "pg_is_wal_replay_paused"
                | "extract"
                | "position"
                | "substring"
                | "trim"
                | "overlay"
                | "exists"
        )
}

/// May a replica answer this statement (its tokens; the caller has established that
/// its kind is [`StatementKind::Read`])? The rule of SPEC §8, decided from the text
/// alone so that it holds whatever sqlparser makes of the statement:
///
/// - it is a query: it starts with SELECT, VALUES, TABLE or WITH (not EXPLAIN, not a
///   cursor command: DECLARE/FETCH/MOVE need the backend that holds the cursor, not
///   COPY);
/// - it locks nothing: no `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY
///   SHARE` anywhere;
/// - every function it calls is a known read-only built-in: any other word before an
///   opening parenthesis (a user function, `nextval`, `set_config`,
///   `pg_advisory_lock`, a quoted name) keeps it on the primary, and so do column
///   alias lists (`AS t(a, b)`), which the scan cannot tell from calls —
///   conservative, never wrong.
///
/// Data-modifying CTEs and `SELECT … INTO` are not reads ([`query_kind`]). A view or
/// a default that hides a writing function is refused by the replica itself (a hot
/// standby runs every transaction read-only, SQLSTATE 25006): the client sees an
/// error, never a lost write.
pub(crate) fn replica_safe(toks: &[Token<'_>]) -> bool {
    let i = first_non_paren(toks);
    let Some(first) = toks.get(i) else {
        return false;
    };
    if !["select", "values", "table", "with"]
        .iter()
        .any(|k| first.tok.is_word(k))
    {
        return false;
    }
    for (j, t) in toks.iter().enumerate() {
        let next = toks.get(j + 1).map(|t| t.tok);
        let locks = t.tok.is_word("for")
            && ["update", "share", "no", "key"]
                .iter()
                .any(|k| next.is_some_and(|n| n.is_word(k)));
        let call =
            matches!(t.tok, Tok::Word(_) | Tok::QuotedIdent(_)) && next == Some(Tok::Punct(b'('));
        if locks || (call && !call_is_read_only(toks, j)) {
            return false;
        }
    }
    true
}

/// The word at `toks[j]` stands before `(`: a keyword, a type modifier or a call of a
/// known read-only function (possibly `pg_catalog.`-qualified).
fn call_is_read_only(toks: &[Token<'_>], j: usize) -> bool {
    let Tok::Word(w) = toks[j].tok else {
        // A quoted name: a user function or an alias list.
        return false;
    };
    let name = w.to_ascii_lowercase();
    let qualified = j >= 2 && toks[j - 1].tok == Tok::Punct(b'.');
    if qualified {
        let Some(schema) = toks[j - 2].tok.ident() else {
            return false;
        };
        return is_read_only_function(&[schema, name]);
    }
    PAREN_KEYWORDS.contains(&name.as_str()) || is_read_only_function(&[name])
}

/// True if a `BEGIN` / `START TRANSACTION` Query declares the transaction `READ ONLY`
/// (the last access mode written wins, as in PostgreSQL) and not `SERIALIZABLE`
/// (a hot standby refuses serializable transactions). Such a transaction cannot
/// write anywhere, so the router may run it on a replica.
pub fn begin_read_only(sql: &str) -> bool {
    let toks = tokens(sql);
    let mut read_only = false;
    for (j, t) in toks.iter().enumerate() {
        if t.tok.is_word("serializable") {
            return false;
        }
        if t.tok.is_word("read") {
            match toks.get(j + 1) {
                Some(n) if n.tok.is_word("only") => read_only = true,
                Some(n) if n.tok.is_word("write") => read_only = false,
                _ => {}
            }
        }
    }
    let starts = toks
        .first()
        .is_some_and(|t| t.tok.is_word("begin") || t.tok.is_word("start"));
    starts && read_only
}

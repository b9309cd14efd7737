//! `SELECT create_distributed_table('t', 'col' [, colocate_with => 'other'])` and
//! `SELECT create_reference_table('t')` through the router (SPEC §4 "Declaring
//! tables"), answered as Citus answers them: one row, one `void` column named after the
//! function, tag `SELECT 1`.
//!
//! The table exists already as an undeclared (local) table, so it lives on the
//! catalog's local shard only (SPEC §5). The router, in one distributed transaction:
//!
//! 1. on the local shard: `BEGIN`, `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` (reads and
//!    writes of the table through any router wait until the end), reads the definition
//!    (columns with types, collations, NOT NULL, defaults, identity and generated
//!    columns, serial sequences, constraints through `pg_get_constraintdef`, other
//!    indexes through `pg_get_indexdef`) and checks the shard key (exists, a supported
//!    key type, no NULLs, in every unique constraint and index);
//! 2. on every other shard: `BEGIN`, creates the same table, and copies in the rows
//!    that belong there (`COPY … TO STDOUT (FORMAT binary)` on the local shard streamed
//!    into `COPY … FROM STDIN` on the target; rows selected by bucket with
//!    [`pgshard_catalog::hash::bucket_sql_expr`]); a reference table gets every row;
//! 3. on the local shard: deletes the rows that moved;
//! 4. commits with two-phase commit ([`crate::twopc`]), the table's declaration
//!    ([`pgshard_catalog::store::add_table_at_commit`]: catalog version bump and NOTIFY)
//!    committing in the same catalog transaction as the commit decision, so the
//!    declaration and the moved data take effect together, and a crash anywhere leaves
//!    either both or neither (shardd's recovery finishes the prepared transactions).
//!
//! This router then reloads its catalog at once (the session's next statement routes
//! with the new declaration); other routers follow the NOTIFY within moments, and until
//! then route the table to the local shard, as before.

use crate::backend::BackendError;
use crate::backend::{BackendConn, PooledConn};
use crate::protocol::backend::{
    decode_command_tag, decode_ready_status, encode_command_complete, encode_data_row,
    encode_row_description_void,
};
use crate::protocol::frontend::{encode_copy_done, encode_copy_fail, encode_query};
use crate::session::error::SessionError;
use crate::session::Session;
use crate::twopc::{CatalogLog, CommitError, CommitLog, Gid, Member, Outcome, RecordError};
use bytes::BytesMut;
use futures::future::BoxFuture;
use pgshard_catalog::hash::bucket_sql_expr;
use pgshard_catalog::store::{self, StoreError};
use pgshard_catalog::twopc::TwoPcError;
use pgshard_catalog::{Catalog, KeyType, ShardId, TableDef, TableKind};
use pgshard_sql::RouterCommand;
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes of copied rows buffered for a target shard before they are written.
const COPY_CHUNK: usize = 256 * 1024;

/// Why a table cannot be declared; each has the SQLSTATE Citus (or PostgreSQL) uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistributeError {
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("column \"{column}\" of relation \"{table}\" does not exist")]
    UndefinedColumn { table: String, column: String },
    #[error("table \"{0}\" is already distributed")]
    AlreadyDistributed(String),
    #[error("cannot distribute relation \"{table}\": {reason}")]
    Unsupported { table: String, reason: String },
    #[error("cannot colocate tables {table} and {with}: {reason}")]
    Colocate {
        table: String,
        with: String,
        reason: String,
    },
    #[error("column \"{column}\" of relation \"{table}\" contains null values")]
    NullKeys { table: String, column: String },
    #[error("{0}() cannot run inside a transaction block")]
    InTransaction(&'static str),
    #[error("{0}() needs the router's catalog connection (the router runs with a fixed catalog)")]
    NoCatalog(&'static str),
    #[error("could not record table \"{table}\" in the catalog: {reason}")]
    Catalog { table: String, reason: String },
    #[error("rows of \"{table}\" changed while they moved ({moved} copied, {deleted} deleted)")]
    Moved {
        table: String,
        moved: u64,
        deleted: u64,
    },
}

impl DistributeError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            DistributeError::UndefinedTable(_) => "42P01",
            DistributeError::UndefinedColumn { .. } => "42703",
            DistributeError::AlreadyDistributed(_) => "42P07",
            DistributeError::Unsupported { .. } => "0A000",
            DistributeError::Colocate { .. } => "22023",
            DistributeError::NullKeys { .. } => "23502",
            DistributeError::InTransaction(_) => "25001",
            DistributeError::NoCatalog(_) => "0A000",
            DistributeError::Catalog { .. } => "XX000",
            DistributeError::Moved { .. } => "XX000",
        }
    }
}

/// What to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    Distributed {
        column: String,
        colocate_with: Option<String>,
    },
    Reference,
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Runs `create_distributed_table` / `create_reference_table` (`cmd`); its answer
    /// (one `void` row) goes into `b`. `in_txn` refuses it inside a transaction block.
    pub(crate) async fn run_create_table(
        &mut self,
        cmd: &RouterCommand,
        in_txn: bool,
        b: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let (function, table, placement) = match cmd {
            RouterCommand::CreateDistributedTable {
                table,
                column,
                colocate_with,
            } => (
                "create_distributed_table",
                table,
                Placement::Distributed {
                    column: column.clone(),
                    colocate_with: colocate_with.clone(),
                },
            ),
            RouterCommand::CreateReferenceTable { table } => {
                ("create_reference_table", table, Placement::Reference)
            }
            // Not reached: the caller passes these two commands only.
            _ => {
                return Err(SessionError::Unsupported(
                    "not a table placement command".into(),
                ))
            }
        };
        if in_txn {
            return Err(DistributeError::InTransaction(function).into());
        }
        self.entry.set_activity("active", None, None);
        let mover = Mover {
            ctx: &self.ctx,
            user: &self.user,
            database: &self.database,
            vars: &self.vars,
        };
        let r = mover.declare(function, table, &placement).await;
        self.entry.set_activity("idle", None, None);
        r?;
        encode_row_description_void(b, function);
        encode_data_row(b, &[Some("")]);
        encode_command_complete(b, "SELECT 1");
        Ok(())
    }
}

/// The table-distribution mover: what `create_distributed_table` and
/// `create_reference_table` do (see the module doc), apart from the session, which
/// lends it the router's context and its user, database and settings.
struct Mover<'a> {
    ctx: &'a crate::server::RouterCtx,
    user: &'a str,
    database: &'a str,
    vars: &'a crate::session::vars::SessionVars,
}

impl Mover<'_> {
    async fn declare(
        &self,
        function: &'static str,
        table: &str,
        placement: &Placement,
    ) -> Result<(), SessionError> {
        let Some(twopc) = self.ctx.twopc.as_ref() else {
            return Err(DistributeError::NoCatalog(function).into());
        };
        let (coord, log) = (twopc.coord.clone(), twopc.log.clone());
        let catalog = self.ctx.catalog.current();
        let mut parts: Vec<(ShardId, PooledConn)> = Vec::new();
        let prepared = self
            .prepare_move(&catalog, table, placement, &mut parts)
            .await;
        let mut members: Vec<Member<'_, _>> = parts
            .iter_mut()
            .map(|(shard, conn)| Member {
                shard: *shard,
                wrote: true,
                conn: &mut **conn,
            })
            .collect();
        let def = match prepared {
            Ok(def) => def,
            Err(e) => {
                coord.rollback(&mut members).await;
                return Err(e);
            }
        };
        let declaring = Declaring {
            log: &log,
            table: def.clone(),
        };
        let outcome = coord.commit(&mut members, &declaring).await;
        drop(members);
        drop(parts);
        match outcome {
            Ok(Outcome::Committed {
                gid: Some(gid),
                unfinished,
            }) => {
                if unfinished.is_empty() {
                    if let Err(error) = log.forget(&gid).await {
                        tracing::debug!(%gid, %error, "could not forget a commit record");
                    }
                }
            }
            Ok(Outcome::Committed { gid: None, .. }) => {
                // One shard only: nothing moved, the declaration is the whole change.
                let mut client = log
                    .dedicated()
                    .await
                    .map_err(|reason| catalog_error(&def, reason))?;
                store::add_table(&mut client, &def, store::TableOrigin::Function)
                    .await
                    .map_err(|e| catalog_error(&def, e.to_string()))?;
            }
            Ok(Outcome::RolledBack) => {
                return Err(SessionError::Commit {
                    code: "40000",
                    message: format!("{function}() was rolled back"),
                })
            }
            Err(CommitError::Failed { shard, source }) => {
                return Err(SessionError::from_backend(shard, source))
            }
            Err(e) => {
                return Err(SessionError::Commit {
                    code: "XX000",
                    message: e.to_string(),
                })
            }
        }
        tracing::info!(table = %def.name, kind = ?def.kind, "table declared");
        // This session's next statement must see the declaration.
        if let Ok(client) = log.dedicated().await {
            match store::load(&client).await {
                Ok(c) if c.version > self.ctx.catalog.current().version => {
                    self.ctx.catalog.replace(c)
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not reload the catalog"),
            }
        }
        Ok(())
    }

    /// Steps 1–3 of the module doc: every shard's connection ends up in `parts`, inside
    /// its transaction, with the table created and the rows moved. Returns the
    /// declaration to record.
    async fn prepare_move(
        &self,
        catalog: &Catalog,
        table: &str,
        placement: &Placement,
        parts: &mut Vec<(ShardId, PooledConn)>,
    ) -> Result<TableDef, SessionError> {
        if let Some(t) = catalog
            .table(table)
            .or_else(|| catalog.table(&format!("public.{table}")))
        {
            return Err(DistributeError::AlreadyDistributed(t.name.clone()).into());
        }
        let local = catalog.local_shard;
        let mut lc = self.shard_conn(catalog, local).await?;
        lc.run_silent("BEGIN")
            .await
            .map_err(|e| SessionError::from_backend(local, e))?;
        parts.push((local, lc));
        let q = |e| SessionError::from_backend(local, e);
        let lc = &mut parts[0].1;
        let found = resolve_table(lc, table).await.map_err(q)?;
        let Some(Resolved {
            oid,
            name,
            qualified,
        }) = found.transpose()?
        else {
            return Err(DistributeError::UndefinedTable(table.to_owned()).into());
        };
        if catalog.table(&name).is_some() {
            return Err(DistributeError::AlreadyDistributed(name).into());
        }
        lc.run_silent(&format!("LOCK TABLE {qualified} IN ACCESS EXCLUSIVE MODE"))
            .await
            .map_err(q)?;
        let def = TableDefinition::read(lc, &oid, &qualified)
            .await
            .map_err(q)?;
        let kind = table_kind(catalog, lc, &name, &qualified, &def, placement)
            .await
            .map_err(|e| e.into_session(local))?;
        let ddl = create_with_sequences(lc, &def, &qualified)
            .await
            .map_err(q)?;
        let moved = self
            .copy_to_shards(catalog, &kind, &def, &qualified, &ddl, parts)
            .await?;
        if let TableKind::Distributed {
            shard_key,
            key_type,
            ..
        } = &kind
        {
            let e = bucket_sql_expr(&ident(shard_key), *key_type, catalog.buckets);
            let deleted = parts[0]
                .1
                .query_tags(&format!(
                    "DELETE FROM {qualified} WHERE NOT ({e} = ANY({}))",
                    buckets_of(catalog, local)
                ))
                .await
                .map_err(q)?
                .last()
                .and_then(|t| t.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if deleted != moved {
                return Err(DistributeError::Moved {
                    table: name,
                    moved,
                    deleted,
                }
                .into());
            }
        }
        tracing::info!(table = %name, rows_moved = moved, "table copied to every shard");
        Ok(TableDef { name, kind })
    }

    /// Creates the table (`ddl`) on every shard but the local one (`parts[0]`), each in
    /// a transaction joined to `parts`, and copies there the rows of its buckets (all
    /// of them for a reference table). Returns how many rows were copied.
    async fn copy_to_shards(
        &self,
        catalog: &Catalog,
        kind: &TableKind,
        def: &TableDefinition,
        qualified: &str,
        ddl: &str,
        parts: &mut Vec<(ShardId, PooledConn)>,
    ) -> Result<u64, SessionError> {
        let local = catalog.local_shard;
        let columns = def.copy_columns();
        let key_expr = match kind {
            TableKind::Distributed {
                shard_key,
                key_type,
                ..
            } => Some(bucket_sql_expr(
                &ident(shard_key),
                *key_type,
                catalog.buckets,
            )),
            TableKind::Reference => None,
        };
        let mut moved = 0u64;
        for shard in catalog.shard_ids().into_iter().filter(|&s| s != local) {
            let mut conn = self.shard_conn(catalog, shard).await?;
            conn.run_silent(&format!("BEGIN; {ddl}"))
                .await
                .map_err(|e| SessionError::from_backend(shard, e))?;
            parts.push((shard, conn));
            let select = match &key_expr {
                Some(e) => format!(
                    "SELECT {columns} FROM {qualified} WHERE {e} = ANY({})",
                    buckets_of(catalog, shard)
                ),
                None => format!("SELECT {columns} FROM {qualified}"),
            };
            let (head, tail) = parts.split_at_mut(1);
            let (from, (to_shard, to)) = (
                &mut head[0].1,
                tail.last_mut().ok_or(SessionError::LostBackend { shard })?,
            );
            moved += copy_rows(
                from,
                local,
                to,
                *to_shard,
                &format!("COPY ({select}) TO STDOUT (FORMAT binary)"),
                &format!("COPY {qualified} ({columns}) FROM STDIN (FORMAT binary)"),
            )
            .await?;
        }
        Ok(moved)
    }

    /// A connection to `shard`'s primary with this session's settings.
    async fn shard_conn(
        &self,
        catalog: &Catalog,
        shard: ShardId,
    ) -> Result<PooledConn, SessionError> {
        let _ = catalog;
        let mut conn =
            crate::hold::checkout_primary(self.ctx, shard, self.user, self.database, false).await?;
        let fp = self.vars.fingerprint();
        if conn.state_fp != fp {
            if let Err(e) = conn.run_silent(&self.vars.replay_sql()).await {
                conn.broken = true;
                return Err(SessionError::from_backend(shard, e));
            }
            conn.state_fp = fp;
        }
        Ok(conn)
    }
}

fn catalog_error(def: &TableDef, reason: String) -> SessionError {
    DistributeError::Catalog {
        table: def.name.clone(),
        reason,
    }
    .into()
}

/// The colocation group of a new distributed table: `colocate_with`'s group, a group of
/// its own for `'none'`, else the default group of its key type (as the config does).
fn colocation(
    catalog: &Catalog,
    table: &str,
    key_type: KeyType,
    colocate_with: Option<&str>,
) -> Result<String, DistributeError> {
    let family = |k: KeyType| match k {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => "int",
        KeyType::Text | KeyType::Varchar => "text",
        KeyType::Uuid => "uuid",
    };
    match colocate_with {
        None => Ok(format!(
            "default:{}",
            if key_type.is_integer() {
                "int"
            } else {
                key_type.sql_name()
            }
        )
        .replace("character varying", "varchar")),
        Some("none") => Ok(format!("none:{table}")),
        Some(other) => {
            let other_name = other.strip_prefix("public.").unwrap_or(other);
            let colocate_error = |reason: &str| DistributeError::Colocate {
                table: table.to_owned(),
                with: other_name.to_owned(),
                reason: reason.to_owned(),
            };
            match catalog.table(other_name).map(|t| &t.kind) {
                Some(TableKind::Distributed {
                    key_type: k,
                    colocation,
                    ..
                }) => {
                    if family(*k) != family(key_type) {
                        return Err(colocate_error("the shard key types do not match"));
                    }
                    Ok(colocation.clone())
                }
                Some(TableKind::Reference) => Err(colocate_error(
                    "the table to colocate with is a reference table",
                )),
                None => Err(colocate_error(
                    "the table to colocate with is not distributed",
                )),
            }
        }
    }
}

/// One column of the table being declared.
struct ColumnDef {
    attnum: i64,
    name: String,
    type_sql: String,
    collation: Option<String>,
    not_null: bool,
    default: Option<String>,
    identity: String,
    generated: String,
    /// The sequence a `serial` column owns (not an identity column's).
    serial_sequence: Option<String>,
}

/// The table's definition as the local shard describes it.
struct TableDefinition {
    columns: Vec<ColumnDef>,
    /// `(name, pg_get_constraintdef, contype, key columns by attnum)`; foreign keys last.
    constraints: Vec<(String, String, String, Vec<i64>)>,
    /// `(pg_get_indexdef, unique, key columns by attnum)` of indexes no constraint owns.
    indexes: Vec<(String, bool, Vec<i64>)>,
}

impl TableDefinition {
    async fn read(
        conn: &mut BackendConn,
        oid: &str,
        qualified: &str,
    ) -> Result<TableDefinition, crate::backend::BackendError> {
        let rel = literal(qualified);
        let rows = conn
            .query_text(&format!(
                "SELECT a.attnum::text, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0 \
                             THEN pg_catalog.quote_ident(co.collname) END, \
                        a.attnotnull::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                        a.attidentity::text, a.attgenerated::text, \
                        CASE WHEN a.attidentity = '' \
                             THEN pg_catalog.pg_get_serial_sequence({rel}, a.attname) END \
                   FROM pg_catalog.pg_attribute a \
                   JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                   LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                   LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
                  WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped \
                  ORDER BY a.attnum"
            ))
            .await?;
        let columns = rows
            .into_iter()
            .map(|mut r| {
                let mut take = |i: usize| r.get_mut(i).and_then(Option::take);
                ColumnDef {
                    attnum: take(0).and_then(|s| s.parse().ok()).unwrap_or(0),
                    name: take(1).unwrap_or_default(),
                    type_sql: take(2).unwrap_or_default(),
                    collation: take(3),
                    not_null: take(4).as_deref() == Some("true"),
                    default: take(5),
                    identity: take(6).unwrap_or_default(),
                    generated: take(7).unwrap_or_default(),
                    serial_sequence: take(8),
                }
            })
            .collect();
        let rows = conn
            .query_text(&format!(
                "SELECT conname, pg_catalog.pg_get_constraintdef(oid), contype::text, \
                        coalesce(conkey::text, '{{}}') \
                   FROM pg_catalog.pg_constraint \
                  WHERE conrelid = {oid} AND contype IN ('p', 'u', 'c', 'x', 'f') \
                  ORDER BY contype = 'f', oid"
            ))
            .await?;
        let constraints = rows
            .into_iter()
            .map(|mut r| {
                let mut take = |i: usize| r.get_mut(i).and_then(Option::take).unwrap_or_default();
                (take(0), take(1), take(2), int_array(&take(3)))
            })
            .collect();
        let rows = conn
            .query_text(&format!(
                "SELECT pg_catalog.pg_get_indexdef(i.indexrelid), i.indisunique::text, \
                        array_to_string(i.indkey::int2[], ' ') \
                   FROM pg_catalog.pg_index i \
                  WHERE i.indrelid = {oid} AND NOT EXISTS ( \
                        SELECT 1 FROM pg_catalog.pg_constraint c \
                         WHERE c.conrelid = {oid} AND c.conindid = i.indexrelid) \
                  ORDER BY i.indexrelid"
            ))
            .await?;
        let indexes = rows
            .into_iter()
            .map(|mut r| {
                let mut take = |i: usize| r.get_mut(i).and_then(Option::take).unwrap_or_default();
                (take(0), take(1) == "true", int_array(&take(2)))
            })
            .collect();
        Ok(TableDefinition {
            columns,
            constraints,
            indexes,
        })
    }

    /// A distributed table's uniqueness must be checkable on one shard: every primary
    /// key, unique or exclusion constraint and unique index includes the shard key.
    fn check_unique(&self, table: &str, key: i64) -> Result<(), DistributeError> {
        for (name, _, contype, cols) in &self.constraints {
            if matches!(contype.as_str(), "p" | "u" | "x") && !cols.contains(&key) {
                return Err(DistributeError::Unsupported {
                    table: table.to_owned(),
                    reason: format!(
                        "constraint \"{name}\" does not include the shard key, so it could not be enforced across shards"
                    ),
                });
            }
        }
        for (def, unique, cols) in &self.indexes {
            if *unique && !cols.contains(&key) {
                return Err(DistributeError::Unsupported {
                    table: table.to_owned(),
                    reason: format!(
                        "unique index ({def}) does not include the shard key, so it could not be enforced across shards"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The statements that create the table on another shard.
    fn create_sql(&self, qualified: &str) -> String {
        let mut sql = String::new();
        for c in &self.columns {
            if let Some(seq) = &c.serial_sequence {
                sql.push_str(&format!("CREATE SEQUENCE {seq}; "));
            }
        }
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = format!("{} {}", ident(&c.name), c.type_sql);
                if let Some(coll) = &c.collation {
                    s.push_str(&format!(" COLLATE {coll}"));
                }
                if c.not_null {
                    s.push_str(" NOT NULL");
                }
                match (c.identity.as_str(), c.generated.as_str(), &c.default) {
                    ("a", _, _) => s.push_str(" GENERATED ALWAYS AS IDENTITY"),
                    ("d", _, _) => s.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
                    (_, "s", Some(e)) => s.push_str(&format!(" GENERATED ALWAYS AS ({e}) STORED")),
                    (_, _, Some(e)) => s.push_str(&format!(" DEFAULT {e}")),
                    _ => {}
                }
                s
            })
            .collect();
        sql.push_str(&format!("CREATE TABLE {qualified} ({}); ", cols.join(", ")));
        for c in &self.columns {
            if let Some(seq) = &c.serial_sequence {
                sql.push_str(&format!(
                    "ALTER SEQUENCE {seq} OWNED BY {qualified}.{}; ",
                    ident(&c.name)
                ));
            }
        }
        for (name, def, _, _) in &self.constraints {
            sql.push_str(&format!(
                "ALTER TABLE {qualified} ADD CONSTRAINT {} {def}; ",
                ident(name)
            ));
        }
        for (def, _, _) in &self.indexes {
            sql.push_str(&format!("{def}; "));
        }
        sql
    }

    /// The columns COPY moves (generated columns are computed again on the target).
    fn copy_columns(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.generated.is_empty())
            .map(|c| ident(&c.name))
            .collect();
        cols.join(", ")
    }
}

/// Streams the rows `select_sql` (a `COPY … TO STDOUT`) yields on `from` into
/// `insert_sql` (a `COPY … FROM STDIN`) on `to`, both inside their transactions.
/// Returns the number of rows.
async fn copy_rows(
    from: &mut BackendConn,
    from_shard: ShardId,
    to: &mut BackendConn,
    to_shard: ShardId,
    select_sql: &str,
    insert_sql: &str,
) -> Result<u64, SessionError> {
    let src = |e| SessionError::from_backend(from_shard, e);
    let dst = |e| SessionError::from_backend(to_shard, e);
    encode_query(&mut to.out, insert_sql);
    to.flush().await.map_err(dst)?;
    loop {
        let f = to.read().await.map_err(dst)?;
        match f.tag() {
            b'G' => break,
            b'E' => {
                let e = to.server_error(f);
                finish(to).await.map_err(dst)?;
                return Err(dst(e));
            }
            _ => {}
        }
    }
    encode_query(&mut from.out, select_sql);
    from.flush().await.map_err(src)?;
    let mut failed = None;
    let mut rows = 0u64;
    loop {
        let f = from.read().await.map_err(src)?;
        match f.tag() {
            b'd' => {
                to.out.extend_from_slice(f.raw());
                if to.out.len() >= COPY_CHUNK {
                    to.flush().await.map_err(dst)?;
                }
            }
            b'C' => rows = copy_count(&f),
            b'E' => failed = failed.or(Some(from.server_error(f))),
            b'Z' => {
                from.status = decode_ready_status(&f).unwrap_or(b'E');
                break;
            }
            _ => {}
        }
    }
    if let Some(e) = failed {
        encode_copy_fail(&mut to.out, "pgshard: reading the rows failed");
        to.flush().await.map_err(dst)?;
        finish(to).await.map_err(dst)?;
        return Err(src(e));
    }
    encode_copy_done(&mut to.out);
    to.flush().await.map_err(dst)?;
    let mut failed = None;
    let mut written = 0u64;
    loop {
        let f = to.read().await.map_err(dst)?;
        match f.tag() {
            b'C' => written = copy_count(&f),
            b'E' => failed = failed.or(Some(to.server_error(f))),
            b'Z' => {
                to.status = decode_ready_status(&f).unwrap_or(b'E');
                break;
            }
            _ => {}
        }
    }
    match failed {
        Some(e) => Err(dst(e)),
        None if written != rows => Err(SessionError::Commit {
            code: "XX000",
            message: format!("copied {rows} rows but shard {to_shard} stored {written}"),
        }),
        None => Ok(rows),
    }
}

/// Reads up to ReadyForQuery.
async fn finish(conn: &mut BackendConn) -> Result<(), crate::backend::BackendError> {
    loop {
        let f = conn.read().await?;
        if f.tag() == b'Z' {
            conn.status = decode_ready_status(&f).unwrap_or(b'E');
            return Ok(());
        }
    }
}

/// The row count of a `COPY n` CommandComplete.
fn copy_count(f: &crate::protocol::Frame) -> u64 {
    decode_command_tag(f)
        .ok()
        .and_then(|t| t.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The commit log for a declaring transaction: the decision and the declaration commit
/// together ([`store::add_table_at_commit`]); forgetting is the shared log's.
struct Declaring<'a> {
    log: &'a CatalogLog,
    table: TableDef,
}

impl CommitLog for Declaring<'_> {
    fn record_commit<'a>(
        &'a self,
        gid: &'a Gid,
        participants: &'a [ShardId],
    ) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let mut client = self.log.dedicated().await.map_err(RecordError::Unknown)?;
            let router = self.log.router();
            match store::add_table_at_commit(&mut client, &self.table, gid, router, participants)
                .await
            {
                Ok(_) => Ok(()),
                Err(StoreError::TwoPc(TwoPcError::Aborted(g))) => Err(RecordError::Refused(g)),
                // Declared meanwhile by another router: this transaction did not commit.
                Err(e @ StoreError::Invalid(_)) => Err(RecordError::Refused(e.to_string())),
                Err(e) => Err(RecordError::Unknown(e.to_string())),
            }
        })
    }

    fn forget<'a>(&'a self, gid: &'a Gid) -> BoxFuture<'a, Result<(), RecordError>> {
        self.log.forget(gid)
    }
}

/// A quoted identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A folded `[schema.]table` name (as the planner gives it) quoted part by part.
fn quote_name(folded: &str) -> String {
    folded.split('.').map(ident).collect::<Vec<_>>().join(".")
}

/// `{1,2,3}` as numbers.
/// The numbers of a PostgreSQL array or vector as text (`{1,2}`, `1 2`). An int2vector
/// cast to int2[] prints with explicit bounds (`[0:1]={1,2}`), so indkey is read with
/// array_to_string.
fn int_array(s: &str) -> Vec<i64> {
    s.trim_matches(['{', '}'])
        .split([',', ' '])
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// The table a distribution names, as the session's search_path resolves it.
struct Resolved {
    oid: String,
    /// As the catalog names it (unqualified in `public`).
    name: String,
    /// Schema-qualified and quoted, for SQL.
    qualified: String,
}

/// Looks the table up on the local shard: `None` when it does not exist; a relation
/// that is not a plain table is refused.
async fn resolve_table(
    lc: &mut PooledConn,
    table: &str,
) -> Result<Option<Result<Resolved, SessionError>>, BackendError> {
    let rows = lc
        .query_text(&format!(
            "SELECT c.oid::int8::text, n.nspname, c.relname, c.relkind::text \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = pg_catalog.to_regclass({})",
            literal(&quote_name(table))
        ))
        .await?;
    let Some([Some(oid), Some(nsp), Some(rel), Some(kind)]) = rows
        .into_iter()
        .next()
        .and_then(|r| <[Option<String>; 4]>::try_from(r).ok())
    else {
        return Ok(None);
    };
    let name = if nsp == "public" {
        rel.clone()
    } else {
        format!("{nsp}.{rel}")
    };
    if kind != "r" {
        return Ok(Some(Err(DistributeError::Unsupported {
            table: name,
            reason:
                "only plain tables can be distributed (not views, partitioned or foreign tables)"
                    .into(),
        }
        .into())));
    }
    let qualified = format!("{}.{}", ident(&nsp), ident(&rel));
    Ok(Some(Ok(Resolved {
        oid,
        name,
        qualified,
    })))
}

/// An error while checking a table for distribution: the refusal, or the local
/// shard's.
enum KindError {
    Refused(DistributeError),
    Backend(BackendError),
}

impl KindError {
    fn into_session(self, local: ShardId) -> SessionError {
        match self {
            KindError::Refused(e) => e.into(),
            KindError::Backend(e) => SessionError::from_backend(local, e),
        }
    }
}

impl From<DistributeError> for KindError {
    fn from(e: DistributeError) -> Self {
        KindError::Refused(e)
    }
}

impl From<BackendError> for KindError {
    fn from(e: BackendError) -> Self {
        KindError::Backend(e)
    }
}

/// What the table is declared as: reference, or distributed by a key column of a
/// supported type, with no NULL keys and no unique index without the key.
async fn table_kind(
    catalog: &Catalog,
    lc: &mut PooledConn,
    name: &str,
    qualified: &str,
    def: &TableDefinition,
    placement: &Placement,
) -> Result<TableKind, KindError> {
    let Placement::Distributed {
        column,
        colocate_with,
    } = placement
    else {
        return Ok(TableKind::Reference);
    };
    let key = def
        .columns
        .iter()
        .find(|c| c.name == *column)
        .ok_or_else(|| DistributeError::UndefinedColumn {
            table: name.to_owned(),
            column: column.clone(),
        })?;
    let key_type =
        KeyType::parse(&key.type_sql).ok_or_else(|| DistributeError::Unsupported {
            table: name.to_owned(),
            reason: format!(
                "shard key column \"{column}\" has type {}; supported key types are smallint, integer, bigint, text, varchar and uuid",
                key.type_sql
            ),
        })?;
    def.check_unique(name, key.attnum)?;
    let nulls = lc
        .query_text(&format!(
            "SELECT 1 FROM {qualified} WHERE {} IS NULL LIMIT 1",
            ident(column)
        ))
        .await?;
    if !nulls.is_empty() {
        return Err(DistributeError::NullKeys {
            table: name.to_owned(),
            column: column.clone(),
        }
        .into());
    }
    let colocation = colocation(catalog, name, key_type, colocate_with.as_deref())?;
    Ok(TableKind::Distributed {
        shard_key: column.clone(),
        key_type,
        colocation,
    })
}

/// The table's CREATE statements for the other shards, with its serial sequences set
/// to go on from where the local ones are (values in the moved rows are not handed out
/// again).
async fn create_with_sequences(
    lc: &mut PooledConn,
    def: &TableDefinition,
    qualified: &str,
) -> Result<String, BackendError> {
    let mut ddl = def.create_sql(qualified);
    for seq in def
        .columns
        .iter()
        .filter_map(|c| c.serial_sequence.as_deref())
    {
        let rows = lc
            .query_text(&format!(
                "SELECT last_value::text, is_called::text FROM {seq}"
            ))
            .await?;
        let state = rows
            .into_iter()
            .next()
            .and_then(|r| <[Option<String>; 2]>::try_from(r).ok());
        if let Some([Some(value), Some(called)]) = state {
            ddl.push_str(&format!(
                "SELECT pg_catalog.setval({}, {value}, {called}); ",
                literal(seq)
            ));
        }
    }
    Ok(ddl)
}

/// `shard`'s buckets as an SQL array literal.
fn buckets_of(catalog: &Catalog, shard: ShardId) -> String {
    let list: Vec<String> = catalog
        .bucket_map
        .iter()
        .enumerate()
        .filter(|(_, &o)| o == shard)
        .map(|(b, _)| b.to_string())
        .collect();
    format!("'{{{}}}'::int4[]", list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted() {
        assert_eq!(quote_name("public.Br"), "\"public\".\"Br\"");
        assert_eq!(quote_name("t"), "\"t\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(int_array("{1,3}"), vec![1, 3]);
        assert_eq!(int_array("{}"), Vec::<i64>::new());
    }

    #[test]
    fn sqlstates() {
        assert_eq!(
            DistributeError::UndefinedTable("t".into()).sqlstate(),
            "42P01"
        );
        assert_eq!(
            DistributeError::AlreadyDistributed("t".into()).to_string(),
            "table \"t\" is already distributed"
        );
    }
}

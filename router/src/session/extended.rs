//! The extended query protocol: Parse/Bind/Describe/Execute/Close/Sync (Flush is passed
//! through by the dispatcher).
//!
//! A client's statements live in the session. Parse plans the SQL and answers through a
//! backend: lazily, on the backend that serves the following Bind or Describe when that
//! message is already buffered, else at once on the attached or any shard (so syntax
//! errors surface at Parse, as with PostgreSQL). Bind decides the shard (from the key
//! parameter for `ShardByParam`) and prepares the statement on that backend if it lacks
//! it, under a router name `pgs_<digest>` shared by every client preparing the same SQL
//! and parameter types; the ParseComplete of such lazy prepares is swallowed. The unnamed
//! statement maps to the backend's unnamed statement, re-parsed when needed.

use super::attach::{Ensure, Need};
use super::error::SessionError;
use super::local::{LocalKind, LocalPortal};
use super::refusal::Refusal;
use super::simple::Target;
use super::simple::POISON_SQL;
use super::txn::RowLimit;
use super::{Expect, FanoutPortal, FanoutWritePortal, PortalAt, Session, Stmt, VirtualTxn};
use crate::backend::conn::MAX_PREPARED_PER_BACKEND;
use crate::backend::{BackendConn, StmtKey};
use crate::protocol::backend::{encode_command_complete, encode_error};
use crate::protocol::frame::BodyReader;
use crate::protocol::frontend::{
    encode_bind_renamed, encode_close, encode_describe, encode_parse, Bind,
};
use crate::protocol::Frame;
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{session_command as classify, SessionCommand, SplitQuery};
use pgshard_sql::{Route, RouterCommand, StatementKind};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(crate) async fn on_parse(
        &mut self,
        frame: &Frame,
        name: &str,
        sql: &str,
        param_types: Vec<u32>,
    ) -> Result<(), SessionError> {
        if let Some((stmt, catalog)) = self.unnamed_again(name, sql, &param_types) {
            return self
                .parse_planned(frame, String::new(), stmt, &catalog, false)
                .await;
        }
        let (name, sql) = (name.to_string(), sql.to_string());
        if !name.is_empty() && self.stmts.contains_key(&name) {
            self.fail_extended(SessionError::DuplicateStatement(name));
            return Ok(());
        }
        // A statement for a bucket frozen by a move waits for the move (`crate::hold`).
        let mut hold = crate::hold::FrozenHold::new();
        let (catalog, (mut plan, command, digest)) = loop {
            let catalog = self.ctx.catalog.current();
            let Some(planned) = self.plan_parse(&name, &sql, &param_types, &catalog).await else {
                return Ok(());
            };
            if self.shard_override.is_some() || !crate::hold::touches_frozen(&planned.0, &catalog) {
                hold.released(&self.ctx);
                break (catalog, planned);
            }
            if let Err(e) = hold.wait(&self.ctx).await {
                self.fail_extended(e);
                return Ok(());
            }
        };
        if let Some(route) = self.cursor_route(&sql) {
            plan.route = route;
        }
        // A view written in: backends prepare the text with the view written in.
        let sql = plan.rewritten.clone().unwrap_or(sql);
        let key = Arc::new(StmtKey { sql, param_types });
        let epoch = self
            .ctx
            .ddl_epoch
            .load(std::sync::atomic::Ordering::Relaxed);
        let stmt = Arc::new(Stmt {
            digest: digest.unwrap_or_else(|| {
                key.digest()
                    .wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }),
            key,
            unnamed: name.is_empty(),
            plan,
            catalog_version: catalog.version,
            command,
        });
        self.parse_planned(frame, name, stmt, &catalog, true).await
    }

    /// The unnamed statement as it stands when a Parse repeats it (same text and
    /// parameter types, same catalog, nothing in the session that plans it otherwise):
    /// drivers send the same unnamed Parse before every Bind (pgbench -M extended,
    /// psycopg), and planning it again made a new statement each time (issue 16).
    fn unnamed_again(
        &self,
        name: &str,
        sql: &str,
        param_types: &[u32],
    ) -> Option<(Arc<Stmt>, Arc<pgshard_catalog::Catalog>)> {
        if !name.is_empty() || !self.cursors.is_empty() {
            return None;
        }
        let prev = self.stmts.get("")?;
        let catalog = self.ctx.catalog.current();
        let same = prev.same_unnamed(sql, param_types, &catalog)
            && prev.plan.rewritten.is_none()
            && !matches!(prev.plan.route, Route::Router(RouterCommand::Cursor(_)))
            && (self.shard_override.is_some()
                || !crate::hold::touches_frozen(&prev.plan, &catalog));
        same.then(|| (prev.clone(), catalog))
    }

    /// A planned Parse recorded (`insert`: not there yet) and answered: refused, run
    /// by the router, or sent to a backend.
    async fn parse_planned(
        &mut self,
        frame: &Frame,
        name: String,
        stmt: Arc<Stmt>,
        catalog: &pgshard_catalog::Catalog,
        insert: bool,
    ) -> Result<(), SessionError> {
        // Refused at Parse: the statement could never run. (`Route::Error`, e.g. a NULL
        // shard key, is raised at Bind like PostgreSQL's constraint errors; an override
        // may still send Unsupported statements to a shard.)
        let planned = self.overridden(&stmt.plan.route);
        // PREPARE and EXECUTE go to a shard (see `sql_level_route`).
        let refused_router = matches!(
            &*planned,
            Route::Router(RouterCommand::Prepare { .. } | RouterCommand::Execute { .. })
        );
        if matches!(&*planned, Route::Unsupported(_)) {
            if let Err(e) = self.resolve(&planned, catalog) {
                self.fail_extended(e);
                return Ok(());
            }
        }
        let planned_shard = match &*planned {
            Route::Shard(s) => Some(*s),
            _ => None,
        };
        let runs_here = matches!(&*planned, Route::Router(_)) && !refused_router;
        if insert {
            self.stmts.insert(name.clone(), stmt.clone());
        }
        if runs_here {
            // Run by the router (see `super::local`): no shard knows the function.
            self.emit_empty(b'1');
            return Ok(());
        }
        self.parse_on_backend(frame, name, &stmt, planned_shard)
            .await
    }

    /// The plan, session command and (when reused) digest of a Parse; `None` once
    /// refused.
    async fn plan_parse(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[u32],
        catalog: &pgshard_catalog::Catalog,
    ) -> Option<(pgshard_sql::Plan, SessionCommand, Option<u64>)> {
        // Drivers re-Parse the unnamed statement with the same text over and over
        // (pgbench -M extended): reuse its plan and classification while the catalog is
        // unchanged. The backend still re-parses it, as PostgreSQL would.
        let reused = self
            .stmts
            .get(name)
            .filter(|prev| prev.same_unnamed(sql, param_types, catalog))
            .cloned();
        let (plan, command, digest) = match reused {
            Some(prev) => (prev.plan.clone(), prev.command.clone(), Some(prev.digest)),
            None => {
                let query = SplitQuery::new(sql);
                let command = match query.texts().as_slice() {
                    [one] => classify(one),
                    _ => SessionCommand::Other,
                };
                let mut plan = query.plan(catalog);
                self.complete_insert_columns(sql, &mut plan, catalog, true)
                    .await;
                // Only session commands are kept (recorded when they complete).
                let command = match command {
                    c @ (SessionCommand::Set { .. }
                    | SessionCommand::Reset { .. }
                    | SessionCommand::ResetAll
                    | SessionCommand::DiscardAll) => c,
                    _ => SessionCommand::Other,
                };
                (plan, command, None)
            }
        };
        Some((plan, command, digest))
    }

    /// Answers a Parse through a backend: lazily when the next message uses the
    /// statement, else now on the attached (or planned, or any) shard.
    async fn parse_on_backend(
        &mut self,
        frame: &Frame,
        name: String,
        stmt: &Arc<Stmt>,
        planned_shard: Option<ShardId>,
    ) -> Result<(), SessionError> {
        if self.next_uses_statement(&name) {
            self.parse_ack = Some(name);
            return Ok(());
        }
        let shard = match (&self.attached, planned_shard) {
            (Some(a), _) => a.shard,
            (None, Some(s)) => s,
            (None, None) => self.any_shard(),
        };
        // With no backend attached, a BEGIN is answered by the router (as with the simple
        // protocol), and a Parse on its own does not wait for a backend when the pool is
        // exhausted: the statement is parsed by the backend that first uses it (errors
        // then surface at that Bind or Describe). Waiting here could deadlock a client
        // that prepares synchronously while its other connections hold every backend
        // in their transactions (pgbench -M prepared with more clients than backends).
        if self.attached.is_none()
            && (stmt.plan.kind == StatementKind::Begin || !self.pool_has_capacity(shard))
        {
            self.emit_empty(b'1');
            return Ok(());
        }
        let need = if stmt.plan.replica_ok {
            self.read_need(|| stmt.digest)
        } else {
            Need::Attached
        };
        match self.ensure_backend_for(shard, need, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => {
                // Cannot happen (same shard or none attached); undo and retry later.
                self.stmts.remove(&name);
                return Ok(());
            }
            Err(e) => {
                self.fail_extended(e);
                return Ok(());
            }
        }
        self.prepare_on_attached(stmt, true);
        Ok(())
    }

    /// True when the next buffered client message is a Bind or Describe of `name`.
    fn next_uses_statement(&self, name: &str) -> bool {
        let Some((tag, body)) = self.client.peek_frame() else {
            return false;
        };
        let mut r = BodyReader::new(body, "peek");
        match tag {
            b'B' => r.cstr_bytes().is_ok() && r.cstr_bytes().ok() == Some(name.as_bytes()),
            b'D' => r.u8().ok() == Some(b'S') && r.cstr_bytes().ok() == Some(name.as_bytes()),
            _ => false,
        }
    }

    /// Makes sure the attached backend has `stmt` prepared; `forward_ack` sends the
    /// client the ParseComplete it asked for.
    fn prepare_on_attached(&mut self, stmt: &Arc<Stmt>, forward_ack: bool) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let conn = &mut a.conn;
        // The unnamed statement is parsed again whenever the client parsed it again
        // (`forward_ack`), even when the router reused its plan (`unnamed_again`), as
        // PostgreSQL would.
        let present = if stmt.unnamed {
            !forward_ack
                && conn
                    .unnamed
                    .as_ref()
                    .is_some_and(|k| Arc::ptr_eq(k, &stmt.key))
        } else {
            conn.tick += 1;
            let tick = conn.tick;
            match conn.prepared.get_mut(&stmt.digest) {
                Some((k, used)) if **k == *stmt.key => {
                    *used = tick;
                    true
                }
                Some(_) => {
                    // Digest collision with different SQL: replace it.
                    let name = BackendConn::statement_name(stmt.digest);
                    encode_close(&mut conn.out, b'S', &name);
                    a.expects.push_back(Expect::Close { forward: false });
                    conn.prepared.remove(&stmt.digest);
                    false
                }
                None => false,
            }
        };
        if present {
            if forward_ack {
                self.emit_empty(b'1');
            }
            return;
        }
        let conn = &mut a.conn;
        if stmt.unnamed {
            encode_parse(&mut conn.out, "", &stmt.key.sql, &stmt.key.param_types);
            conn.unnamed = Some(stmt.key.clone());
            a.expects.push_back(Expect::Parse {
                forward: forward_ack,
                digest: None,
            });
        } else {
            if conn.prepared.len() >= MAX_PREPARED_PER_BACKEND {
                if let Some((&victim, _)) = conn.prepared.iter().min_by_key(|(_, (_, used))| *used)
                {
                    conn.prepared.remove(&victim);
                    encode_close(&mut conn.out, b'S', &BackendConn::statement_name(victim));
                    a.expects.push_back(Expect::Close { forward: false });
                }
            }
            let name = BackendConn::statement_name(stmt.digest);
            encode_parse(&mut conn.out, &name, &stmt.key.sql, &stmt.key.param_types);
            let tick = conn.tick;
            conn.prepared.insert(stmt.digest, (stmt.key.clone(), tick));
            a.expects.push_back(Expect::Parse {
                forward: forward_ack,
                digest: Some(stmt.digest),
            });
        }
        a.conn.unsynced = true;
    }

    /// Binds a multi-shard read: the router answers BindComplete and runs the portal at
    /// Execute, on every shard at once, with the client's parameters.
    fn bind_fanout(
        &mut self,
        bind: &Bind<'_>,
        stmt: &Arc<Stmt>,
        plan: &pgshard_sql::FanoutPlan,
    ) -> Result<(), SessionError> {
        let (params, results) = bind.split_results()?;
        let portal = FanoutPortal {
            plan: plan.clone(),
            param_types: stmt.key.param_types.clone(),
            params: bytes::Bytes::copy_from_slice(params),
            results,
            digest: stmt.digest,
        };
        self.bind_locally(bind, stmt.clone(), PortalAt::Fanout(Arc::new(portal)));
        Ok(())
    }

    /// Answers a Bind the router keeps to itself (its ParseComplete first when that
    /// rides on it, then BindComplete) and records where the portal lives.
    pub(crate) fn bind_locally(&mut self, bind: &Bind<'_>, stmt: Arc<Stmt>, at: PortalAt) {
        if self.parse_ack.as_deref() == Some(bind.statement) {
            self.parse_ack = None;
            self.emit_empty(b'1');
        }
        self.emit_empty(b'2');
        self.add_portal(bind.portal, stmt, at);
    }

    /// Binds a multi-shard write: the router answers BindComplete and runs it at
    /// Execute on every target shard with the client's parameters (see
    /// `run_fanout_write_extended`). A statement the planner split by shard (a
    /// multi-row INSERT with constant keys) has each part's parameters renumbered, and
    /// each shard gets only the values its part uses.
    fn bind_fanout_write(
        &mut self,
        bind: &Bind<'_>,
        stmt: &Arc<Stmt>,
        w: &pgshard_sql::FanoutWrite,
    ) -> Result<(), SessionError> {
        let (params, results) = bind.split_results()?;
        let mut write = w.clone();
        let mut shard_params = Vec::new();
        if !w.shard_sql.is_empty() && has_params(params) {
            for part in write.shard_sql.iter_mut() {
                let Some((sql, picks)) = pgshard_sql::renumber_params(part) else {
                    self.fail_extended(SessionError::from(Refusal::SplitParams));
                    return Ok(());
                };
                *part = sql;
                shard_params.push(self.shard_part_params(stmt, params, &picks)?);
            }
        }
        let portal = FanoutWritePortal {
            write,
            param_types: stmt.key.param_types.clone(),
            params: bytes::Bytes::copy_from_slice(params),
            results,
            shard_params,
        };
        self.bind_locally(bind, stmt.clone(), PortalAt::FanoutWrite(Arc::new(portal)));
        Ok(())
    }

    /// One shard's parameters (values and declared types) for a part of a split
    /// statement that uses parameters `picks` of the client's (1-based).
    fn shard_part_params(
        &self,
        stmt: &Stmt,
        params: &[u8],
        picks: &[usize],
    ) -> Result<(bytes::Bytes, Vec<u32>), SessionError> {
        let values = crate::protocol::frontend::subset_params(params, picks)?;
        let types = picks
            .iter()
            .map(|n| {
                stmt.key
                    .param_types
                    .get(n.saturating_sub(1))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        Ok((values.freeze(), types))
    }

    /// Binds a multi-row INSERT whose shard keys are parameters: each row goes to the
    /// shard of its key. All on one shard: `Some(shard)`, and the statement goes there
    /// as written. Else the rows are split into one INSERT per shard, bound as a
    /// multi-shard write (one distributed transaction), and `None` is returned.
    fn bind_param_insert(
        &mut self,
        bind: &Bind<'_>,
        stmt: &Arc<Stmt>,
        pi: &pgshard_sql::ParamInsert,
    ) -> Result<Option<ShardId>, SessionError> {
        let catalog = self.ctx.catalog.current();
        let mut groups: std::collections::BTreeMap<ShardId, Vec<usize>> = Default::default();
        for (row, key) in pi.keys.iter().enumerate() {
            let value = match key {
                pgshard_sql::RowKey::Value(v) => v.clone(),
                pgshard_sql::RowKey::Param(n) => self
                    .param_key(stmt, bind, *n, pi.key_type)?
                    .ok_or_else(|| {
                        SessionError::Plan(pgshard_sql::PlanError::NullShardKey {
                            table: pi.table.clone(),
                            column: pi.column.clone(),
                        })
                    })?,
            };
            let shard = catalog
                .shard_of(&value)
                .ok_or_else(|| Refusal::NoOwner(pi.table.clone()))?;
            groups.entry(shard).or_default().push(row);
        }
        if groups.len() == 1 {
            return Ok(groups.into_keys().next());
        }
        let rows: Vec<Vec<usize>> = groups.values().cloned().collect();
        let parts = pgshard_sql::split_insert_rows(&pi.sql, &rows)
            .ok_or_else(|| SessionError::Unsupported(pi.refusal.clone()))?;
        let (params, results) = bind.split_results()?;
        let mut shard_sql = Vec::with_capacity(parts.len());
        let mut shard_params = Vec::with_capacity(parts.len());
        for (sql, picks) in parts {
            shard_params.push(self.shard_part_params(stmt, params, &picks)?);
            shard_sql.push(sql);
        }
        let portal = FanoutWritePortal {
            write: pgshard_sql::FanoutWrite {
                tables: vec![pi.table.clone()],
                shards: groups.into_keys().collect(),
                sql: pi.sql.clone(),
                replicated: false,
                defaults: Vec::new(),
                shard_sql,
                key_move: None,
            },
            param_types: stmt.key.param_types.clone(),
            params: bytes::Bytes::copy_from_slice(params),
            results,
            shard_params,
        };
        self.bind_locally(bind, stmt.clone(), PortalAt::FanoutWrite(Arc::new(portal)));
        Ok(None)
    }

    /// What the router runs itself at Execute for this statement, if it is one of
    /// those (see [`super::local`]).
    fn local_kind(&self, stmt: &Stmt) -> Option<LocalKind> {
        if stmt.command == SessionCommand::DiscardAll {
            return Some(LocalKind::DiscardAll);
        }
        // The hot path (a statement for one shard) decides without cloning its route.
        if !matches!(stmt.plan.route, Route::Router(_) | Route::AllShards) {
            return None;
        }
        match self.with_override(stmt.plan.route.clone()) {
            Route::Router(RouterCommand::Prepare { .. } | RouterCommand::Execute { .. }) => None,
            Route::Router(cmd) => Some(LocalKind::Router(cmd)),
            r @ Route::AllShards => match self.resolve(&r, &self.ctx.catalog.current()) {
                Ok(Target::All(shards)) => Some(LocalKind::AllShards(shards)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The shard-key value bound to parameter `$param` (1-based), `None` for NULL.
    fn param_key(
        &self,
        stmt: &Stmt,
        bind: &Bind<'_>,
        param: usize,
        key_type: pgshard_catalog::KeyType,
    ) -> Result<Option<pgshard_catalog::KeyValue>, SessionError> {
        let p = bind
            .param(param.saturating_sub(1))?
            .ok_or(SessionError::MissingKeyParam(param))?;
        let declared = stmt
            .key
            .param_types
            .get(param.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let Some(value) = p.value else {
            return Ok(None);
        };
        let key = pgshard_catalog::hash::key_from_param(value, p.format == 1, declared, key_type);
        if pgshard_catalog::hash::param_key_type(declared, key_type).is_none() {
            return Err(SessionError::Unsupported(format!(
                "shard key parameter ${param} declared with type oid {declared}, \
                 which does not compare like the {} shard key",
                key_type.sql_name()
            )));
        }
        Ok(Some(key.ok_or_else(|| SessionError::InvalidKey {
            key_type: key_type.sql_name().to_string(),
            value: if p.format == 1 {
                format!(
                    "\\x{}",
                    value.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            } else {
                String::from_utf8_lossy(value).into_owned()
            },
        })?))
    }

    /// Where an SQL-level PREPARE or EXECUTE runs, as with the simple protocol: the
    /// prepared statement's route (for EXECUTE, with its arguments).
    fn sql_level_route(
        &self,
        cmd: &RouterCommand,
        catalog: &pgshard_catalog::Catalog,
    ) -> Result<Route, SessionError> {
        match cmd {
            RouterCommand::Prepare { name, plan, .. } => {
                if self.sql_prepared.contains_key(name) {
                    return Err(SessionError::DuplicateStatement(name.clone()));
                }
                if pgshard_sql::prepared_fanout(plan) {
                    // Checked and prepared by one shard; EXECUTE runs it on all.
                    return Ok(Route::Shard(catalog.local_shard));
                }
                Ok(plan.route.clone())
            }
            RouterCommand::Execute { name, args } => match self.sql_prepared.get(name) {
                None => Err(SessionError::UnknownStatement(name.clone())),
                Some(p) => {
                    let prepared = p.plan_for(catalog);
                    Ok(match pgshard_sql::prepared_fanout(&prepared) {
                        true => pgshard_sql::execute_fanout(&p.text, args, catalog),
                        false => pgshard_sql::route_execute(&prepared, args, catalog),
                    })
                }
            },
            other => Ok(Route::Router(other.clone())),
        }
    }

    /// Which node a Bind needs: a read the planner cleared for replicas may go to
    /// one, keyed for `read_policy = "hash"` by its shard-key bucket when a parameter
    /// holds the key (else by its statement); anything else needs the primary.
    fn bind_need(&self, stmt: &Stmt, bind: &Bind<'_>) -> Need {
        if !stmt.plan.replica_ok {
            return Need::Primary;
        }
        self.read_need(|| {
            let key = match &stmt.plan.route {
                Route::ShardByParam { param, key_type } => self
                    .param_key(stmt, bind, *param, *key_type)
                    .ok()
                    .flatten()
                    .map(|k| {
                        let bucket = self.ctx.catalog.current().bucket_of(&k);
                        crate::reads::policy::mix(u64::from(bucket.0))
                    }),
                _ => None,
            };
            key.unwrap_or(stmt.digest)
        })
    }

    /// The shard a Bind runs on.
    fn bind_shard(
        &self,
        stmt: &Stmt,
        bind: &Bind<'_>,
        catalog: &pgshard_catalog::Catalog,
    ) -> Result<ShardId, SessionError> {
        let route = match &stmt.plan.route {
            Route::ShardByParam { param, key_type } if self.shard_override.is_none() => {
                let key = self.param_key(stmt, bind, *param, *key_type)?;
                pgshard_sql::route_for_key(&stmt.plan, key.as_ref(), catalog)
            }
            Route::Router(
                cmd @ (RouterCommand::Prepare { .. } | RouterCommand::Execute { .. }),
            ) => self.with_override(self.sql_level_route(cmd, catalog)?),
            r => {
                return match self.resolve(&self.overridden(r), catalog)? {
                    Target::One(s) => Ok(s),
                    Target::All(_) => Err(Refusal::EveryShardExecute.into()),
                }
            }
        };
        match self.resolve(&route, catalog)? {
            Target::One(s) => Ok(s),
            Target::All(_) => Err(Refusal::EveryShardExecute.into()),
        }
    }

    /// `stmt` planned again when the catalog changed since it was planned: a bucket of a
    /// key written in it may have moved to another shard, or a move started or ended
    /// (SPEC §9). `None` once the client has its error.
    async fn replanned(&mut self, name: &str, stmt: Arc<Stmt>) -> Option<Arc<Stmt>> {
        if self.shard_override.is_some()
            || stmt.catalog_version == self.ctx.catalog.current().version
        {
            return Some(stmt);
        }
        let mut hold = crate::hold::FrozenHold::new();
        let (catalog, mut plan) = loop {
            let catalog = self.ctx.catalog.current();
            // Boxed, as every rarely taken path of the session (see `Session::serve`).
            let (plan, _, _) =
                Box::pin(self.plan_parse(name, &stmt.key.sql, &stmt.key.param_types, &catalog))
                    .await?;
            if !crate::hold::touches_frozen(&plan, &catalog) {
                hold.released(&self.ctx);
                break (catalog, plan);
            }
            if let Err(e) = hold.wait(&self.ctx).await {
                self.fail_extended(e);
                return None;
            }
        };
        if let Some(route) = self.cursor_route(&stmt.key.sql) {
            plan.route = route;
        }
        let again = Arc::new(Stmt {
            key: stmt.key.clone(),
            digest: stmt.digest,
            unnamed: stmt.unnamed,
            plan,
            catalog_version: catalog.version,
            command: stmt.command.clone(),
        });
        self.stmts.insert(name.to_string(), again.clone());
        Some(again)
    }

    pub(crate) async fn on_bind(
        &mut self,
        frame: &Frame,
        bind: &Bind<'_>,
        stmt: Option<Arc<Stmt>>,
    ) -> Result<(), SessionError> {
        let Some(stmt) = stmt else {
            self.fail_extended(SessionError::UnknownStatement(bind.statement.to_string()));
            return Ok(());
        };
        let Some(stmt) = self.replanned(bind.statement, stmt).await else {
            return Ok(());
        };
        self.pending_write |= !stmt.plan.replica_ok;
        if stmt.plan.kind == StatementKind::Begin
            && self.attached.is_none()
            && self.shard_override.is_none()
        {
            // Answered at Execute (see `on_execute`).
            self.bind_locally(bind, stmt, PortalAt::Begin);
            return Ok(());
        }
        if let Some(kind) = self.local_kind(&stmt) {
            let (params, results) = bind.split_results()?;
            let portal = LocalPortal {
                kind,
                params: bytes::Bytes::copy_from_slice(params),
                results,
            };
            self.bind_locally(bind, stmt, PortalAt::Local(Arc::new(portal)));
            return Ok(());
        }
        if let Route::Fanout(plan) = &stmt.plan.route {
            if plan.shards.len() > 1 && self.shard_override.is_none() {
                return self.bind_fanout(bind, &stmt, plan);
            }
        }
        // EXECUTE of a multi-shard read: a fan-out of the prepared text with the
        // arguments written in (`pgshard_sql::execute_fanout`).
        if let Route::Router(cmd @ RouterCommand::Execute { .. }) = &stmt.plan.route {
            let catalog = self.ctx.catalog.current();
            let route = self.sql_level_route(cmd, &catalog);
            if let (Ok(Route::Fanout(plan)), None) = (&route, self.shard_override) {
                if plan.shards.len() > 1 {
                    // Its own digest: the shard statements (and their column counts)
                    // depend on the arguments and on what the name is prepared as.
                    let digest = {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        plan.shard_sql.hash(&mut h);
                        stmt.digest ^ h.finish()
                    };
                    let executed = Arc::new(Stmt {
                        key: stmt.key.clone(),
                        digest,
                        unnamed: stmt.unnamed,
                        plan: pgshard_sql::Plan {
                            route: Route::Fanout(plan.clone()),
                            ..stmt.plan.clone()
                        },
                        catalog_version: stmt.catalog_version,
                        command: stmt.command.clone(),
                    });
                    return self.bind_fanout(bind, &executed, plan);
                }
            }
        }
        let mut hold = crate::hold::FrozenHold::new();
        if let Route::FanoutWrite(w) = &stmt.plan.route {
            if self.shard_override.is_none() {
                // It may write a bucket being moved: wait until none is frozen.
                while !w.replicated && !self.ctx.catalog.current().frozen.is_empty() {
                    if let Err(e) = hold.wait(&self.ctx).await {
                        self.fail_extended(e);
                        return Ok(());
                    }
                }
                return self.bind_fanout_write(bind, &stmt, w);
            }
        }
        let rows_at = match &stmt.plan.route {
            Route::InsertByParams(pi) if self.shard_override.is_none() => {
                match self.bind_param_insert(bind, &stmt, pi) {
                    Ok(Some(shard)) => Some(shard),
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        self.fail_extended(e);
                        return Ok(());
                    }
                }
            }
            _ => None,
        };
        let shard = loop {
            let catalog = self.ctx.catalog.current();
            match rows_at.map_or_else(|| self.bind_shard(&stmt, bind, &catalog), Ok) {
                // The key's bucket is frozen for a move: wait, then route again (a
                // transaction that began on the source before the fence goes on there).
                Ok(s) if s == pgshard_catalog::FROZEN && rows_at.is_none() => {
                    let thawed = match self.in_transaction() {
                        true => self.catalog_before_fence(&catalog).await,
                        false => None,
                    };
                    if let Some(Ok(s)) = thawed.map(|c| self.bind_shard(&stmt, bind, &c)) {
                        if s != pgshard_catalog::FROZEN {
                            break s;
                        }
                    }
                    if let Err(e) = hold.wait(&self.ctx).await {
                        self.fail_extended(e);
                        return Ok(());
                    }
                }
                Ok(s) => {
                    hold.released(&self.ctx);
                    break s;
                }
                Err(e) => {
                    self.fail_extended(e);
                    return Ok(());
                }
            }
        };
        let need = self.bind_need(&stmt, bind);
        match self.ensure_backend_for(shard, need, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => return Ok(()),
            Err(e) => {
                self.fail_extended(e);
                return Ok(());
            }
        }
        if let Route::Router(RouterCommand::Execute { name, .. }) = &stmt.plan.route {
            self.ensure_sql_prepared(name, true);
        }
        let forward_ack = self.parse_ack.as_deref() == Some(bind.statement);
        if forward_ack {
            self.parse_ack = None;
        }
        self.prepare_on_attached(&stmt, forward_ack);
        if let Some(a) = self.attached.as_mut() {
            if stmt.unnamed {
                a.conn.out.extend_from_slice(frame.raw());
            } else {
                encode_bind_renamed(
                    &mut a.conn.out,
                    bind,
                    &BackendConn::statement_name(stmt.digest),
                );
            }
            a.conn.unsynced = true;
            a.expects.push_back(Expect::Bind);
        }
        self.add_portal(bind.portal, stmt, PortalAt::Shard(shard));
        Ok(())
    }

    pub(crate) async fn on_describe(
        &mut self,
        frame: &Frame,
        kind: u8,
        name: &str,
    ) -> Result<(), SessionError> {
        if kind == b'P' {
            return self.describe_portal(frame, name).await;
        }
        self.describe_statement(frame, name).await
    }

    /// Describe of a portal: answered by the router for the portals it holds, else by
    /// the backend that bound it.
    async fn describe_portal(&mut self, frame: &Frame, name: &str) -> Result<(), SessionError> {
        if let Some(c) = self.cursors.get(name) {
            // A SQL cursor is a portal too (psycopg describes its named cursors so).
            let d = c.description.clone();
            self.emit_local(&d);
            return Ok(());
        }
        let shard = match self.portals.get(name).map(|p| &p.at) {
            Some(PortalAt::Begin | PortalAt::Copy) => {
                self.emit_empty(b'n');
                return Ok(());
            }
            Some(PortalAt::Buffered(rows)) => {
                let rows = rows.clone();
                self.describe_buffered(&rows);
                return Ok(());
            }
            Some(PortalAt::Fanout(fp)) if fp.plan.cursor.is_some() => {
                // DECLARE returns no rows.
                self.emit_empty(b'n');
                return Ok(());
            }
            Some(PortalAt::Fanout(_) | PortalAt::FanoutWrite(_)) => {
                // Answered with the Execute that follows.
                self.described_fanout = Some(name.to_string());
                return Ok(());
            }
            Some(PortalAt::Local(p)) => {
                let mut b = BytesMut::new();
                match &p.kind {
                    LocalKind::Router(RouterCommand::Cursor(c)) => {
                        self.describe_cursor_command(c, &mut b)
                    }
                    kind => super::local::encode_local_description(&mut b, kind, &p.results),
                }
                self.emit_local(&b);
                return Ok(());
            }
            Some(PortalAt::Shard(shard)) => Some(*shard),
            None => None,
        };
        if let Some(shard) = shard {
            match self.ensure_backend(shard, frame).await {
                Ok(Ensure::Ready) => {}
                Ok(Ensure::Deferred) => return Ok(()),
                Err(e) => {
                    self.fail_extended(e);
                    return Ok(());
                }
            }
        }
        match self.attached.as_mut() {
            Some(a) => {
                a.conn.out.extend_from_slice(frame.raw());
                a.conn.unsynced = true;
                a.expects.push_back(Expect::Describe);
            }
            None => self.fail_extended(SessionError::UnknownPortal(name.to_string())),
        }
        Ok(())
    }

    /// Describe of a statement: router commands the router describes; anything else
    /// a backend, with the statement prepared there (an SQL-level EXECUTE's prepared
    /// statement too).
    async fn describe_statement(&mut self, frame: &Frame, name: &str) -> Result<(), SessionError> {
        let Some(stmt) = self.stmts.get(name).cloned() else {
            self.fail_extended(SessionError::UnknownStatement(name.to_string()));
            return Ok(());
        };
        let execute = match &stmt.plan.route {
            Route::Router(RouterCommand::Execute { name, .. }) => Some(name.clone()),
            _ => None,
        };
        // (`SET pgshard.shard` leaves router commands alone: no override to apply.)
        if let (Route::Router(cmd), None) = (&stmt.plan.route, &execute) {
            if self.parse_ack.as_deref() == Some(name) {
                self.parse_ack = None;
                self.emit_empty(b'1');
            }
            let mut b = BytesMut::new();
            super::local::encode_router_statement_description(&mut b, cmd);
            if let RouterCommand::Cursor(c) = cmd {
                // Its columns are the cursor's: NoData replaced by them.
                b.truncate(b.len() - 5);
                self.describe_cursor_command(c, &mut b);
            }
            self.emit_local(&b);
            return Ok(());
        }
        let shard = match (&self.attached, &stmt.plan.route) {
            (Some(a), _) => a.shard,
            (None, Route::Shard(s)) => *s,
            (None, _) => self.any_shard(),
        };
        // Describing writes nothing: a statement that will read from a replica is
        // described by one too (tokio-postgres describes before every first Bind).
        let need = if stmt.plan.replica_ok {
            self.read_need(|| stmt.digest)
        } else {
            Need::Attached
        };
        match self.ensure_backend_for(shard, need, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => return Ok(()),
            Err(e) => {
                self.fail_extended(e);
                return Ok(());
            }
        }
        if let Some(prepared) = &execute {
            // Described by the backend, which must hold the SQL-level statement.
            self.ensure_sql_prepared(prepared, true);
        }
        let forward_ack = self.parse_ack.as_deref() == Some(name);
        if forward_ack {
            self.parse_ack = None;
        }
        self.prepare_on_attached(&stmt, forward_ack);
        if let Some(a) = self.attached.as_mut() {
            let named = BackendConn::statement_name(stmt.digest);
            let backend_name = if stmt.unnamed { "" } else { &named };
            encode_describe(&mut a.conn.out, b'S', backend_name);
            a.conn.unsynced = true;
            a.expects.push_back(Expect::Describe);
        }
        Ok(())
    }

    pub(crate) async fn on_execute(
        &mut self,
        frame: &Frame,
        portal: &str,
        found: Option<super::Portal>,
        max_rows: i32,
    ) -> Result<(), SessionError> {
        let Some(super::Portal { stmt, at, .. }) = found else {
            // Unknown to the router: the backend answers (e.g. a portal of a cursor).
            // (Unknown, so it may write: it takes part in two-phase commit.)
            return self.execute_on_attached(frame, portal, None, true);
        };
        if stmt.plan.kind == StatementKind::Ddl {
            self.note_ddl(&stmt.key.sql);
        }
        match at {
            PortalAt::Shard(shard) => self.execute_on_shard(frame, portal, &stmt, shard).await,
            at => Box::pin(self.execute_router_portal(frame, portal, &stmt, at, max_rows)).await,
        }
    }

    /// Executes a portal the router holds itself (see [`PortalAt`]).
    async fn execute_router_portal(
        &mut self,
        frame: &Frame,
        portal: &str,
        stmt: &Stmt,
        at: PortalAt,
        max_rows: i32,
    ) -> Result<(), SessionError> {
        let describe = self.described_fanout.as_deref() == Some(portal);
        match at {
            PortalAt::Shard(_) => return Ok(()),
            PortalAt::Begin => return self.execute_virtual_begin(stmt),
            // Run by the dispatcher (`execute_copy`) before this is reached.
            PortalAt::Copy => {
                self.fail_extended(Refusal::CopyOutOfTurn.into());
                return Ok(());
            }
            PortalAt::Buffered(rows) => {
                self.emit_batch(&rows, usize::try_from(max_rows).unwrap_or(0));
                return Ok(());
            }
            PortalAt::Local(p) => {
                return Box::pin(self.execute_local(frame, &stmt.key.sql, &p)).await
            }
            PortalAt::FanoutWrite(p) => {
                let limit = RowLimit {
                    portal: portal.to_string(),
                    rows: usize::try_from(max_rows).unwrap_or(0),
                };
                Box::pin(self.run_fanout_write_extended(frame, &p, describe, &limit)).await?;
            }
            PortalAt::Fanout(fp) if fp.plan.cursor.is_some() => {
                Box::pin(self.declare_cursor(frame, &fp.plan, Some(&fp))).await?;
            }
            PortalAt::Fanout(fp) if max_rows > 0 => {
                Box::pin(self.execute_fanout_limited(frame, portal, &fp, max_rows as usize))
                    .await?;
            }
            PortalAt::Fanout(fp) => {
                let in_txn = self.client_status() != b'I';
                Box::pin(self.run_fanout(frame, &fp.plan, in_txn, Some((&fp, describe)))).await?;
            }
        }
        // Described and executed (unless put aside until the attached backend
        // answered; it runs again then).
        if self.deferred.is_none() {
            self.described_fanout = None;
        }
        Ok(())
    }

    /// Executes a portal bound on `shard`'s backend: transaction control the router
    /// tracks (COMMIT/ROLLBACK and savepoints of a transaction spanning shards run on
    /// every participant), then the Execute forwarded as is.
    async fn execute_on_shard(
        &mut self,
        frame: &Frame,
        portal: &str,
        stmt: &Stmt,
        shard: ShardId,
    ) -> Result<(), SessionError> {
        match stmt.plan.kind {
            StatementKind::Commit | StatementKind::Rollback if self.spans_shards() => {
                return Box::pin(
                    self.end_spanning_extended(stmt.plan.kind == StatementKind::Commit),
                )
                .await;
            }
            StatementKind::Savepoint if self.spans_shards() => {
                // On every participant, as with the simple protocol, once what the
                // attached backend owes (this statement's BindComplete…) is settled.
                if let Some(a) = self.attached.as_mut() {
                    a.sync_silent();
                }
                self.drain_attached().await?;
                if self.skip_until_sync {
                    return Ok(());
                }
                return self.savepoint_everywhere(&stmt.key.sql, true).await;
            }
            StatementKind::Savepoint => {
                super::txn::track_savepoint(&mut self.txn.savepoints, &stmt.key.sql)
            }
            StatementKind::Begin if self.client_status() == b'I' => {
                self.txn.begin = Some(stmt.key.sql.clone());
                self.txn.savepoints.clear();
            }
            _ => {}
        }
        // The portal lives on the backend that bound it, which may be parked.
        match self.ensure_backend(shard, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => return Ok(()),
            Err(e) => {
                self.fail_extended(e);
                return Ok(());
            }
        }
        let mut command =
            Some(stmt.command.clone()).filter(|c| !matches!(c, SessionCommand::Other));
        if let Route::Router(RouterCommand::Prepare { name, .. }) = &stmt.plan.route {
            self.drop_backend_sql_prepared(name, true);
            command = Some(SessionCommand::Prepare {
                name: name.clone(),
                body: stmt.key.sql.clone(),
            });
        }
        let writes = super::txn::may_write(&stmt.plan);
        // A COMMIT whose backend is lost before it answers: outcome unknown (08007).
        self.txn.commit_in_flight = stmt.plan.kind == StatementKind::Commit
            && self
                .attached
                .as_ref()
                .is_some_and(|a| a.conn.status != b'I');
        crate::stats::bump(&self.ctx.stats.single_shard);
        self.execute_on_attached(frame, portal, command, writes)
    }

    /// Executes a BEGIN portal bound with no backend attached: the transaction opens
    /// on the first backend a later statement needs (as with the simple protocol).
    fn execute_virtual_begin(&mut self, stmt: &Stmt) -> Result<(), SessionError> {
        if self.attached.is_some() {
            self.fail_extended(SessionError::from(Refusal::BeginAfterShard));
            return Ok(());
        }
        let mut b = BytesMut::new();
        if self.txn.virtual_txn.is_some() {
            encode_error(
                &mut b,
                b'N',
                "WARNING",
                "25001",
                "there is already a transaction in progress",
                None,
                None,
            );
        } else {
            self.txn.virtual_txn = Some(VirtualTxn {
                begin_sql: stmt.key.sql.clone(),
                failed: false,
            });
            self.txn.begin = Some(stmt.key.sql.clone());
            self.txn.savepoints.clear();
        }
        encode_command_complete(&mut b, pgshard_sql::begin_tag(&stmt.key.sql));
        self.emit_local(&b);
        Ok(())
    }

    fn execute_on_attached(
        &mut self,
        frame: &Frame,
        portal: &str,
        command: Option<SessionCommand>,
        may_write: bool,
    ) -> Result<(), SessionError> {
        match self.attached.as_mut() {
            Some(a) => {
                a.conn.out.extend_from_slice(frame.raw());
                a.conn.unsynced = true;
                a.executed = true;
                // Decides who PREPAREs at a COMMIT spanning shards.
                a.note_write(may_write);
                a.expects.push_back(Expect::Execute { command });
            }
            None => self.fail_extended(SessionError::UnknownPortal(portal.to_string())),
        }
        Ok(())
    }

    /// COMMIT or ROLLBACK executed through the extended protocol in a transaction that
    /// spans shards: what the attached backend owes (this statement's BindComplete…) is
    /// settled first, then every participant ends as with the simple protocol; the
    /// ReadyForQuery follows at the client's Sync.
    async fn end_spanning_extended(&mut self, commit: bool) -> Result<(), SessionError> {
        if let Some(a) = self.attached.as_mut() {
            a.sync_silent();
        }
        self.drain_attached().await?;
        if self.skip_until_sync {
            // Something before it failed: PostgreSQL would skip to Sync too.
            return Ok(());
        }
        Box::pin(self.end_spanning(commit, super::txn::EndAnswer::Tag)).await
    }

    pub(crate) fn on_close(&mut self, frame: &Frame, kind: u8, name: &str) {
        if kind == b'S' {
            // The backend copy stays: it is the router's, shared by equal statements.
            self.stmts.remove(name);
            self.emit_empty(b'3');
            return;
        }
        self.portals.remove(name);
        if self.cursors.remove(name).is_some() {
            self.emit_empty(b'3');
            return;
        }
        match self.attached.as_mut() {
            Some(a) => {
                a.conn.out.extend_from_slice(frame.raw());
                a.conn.unsynced = true;
                a.expects.push_back(Expect::Close { forward: true });
            }
            None => self.emit_empty(b'3'),
        }
    }

    pub(crate) fn on_sync(&mut self, frame: &Frame) {
        self.syncs_seen += 1;
        self.skip_until_sync = false;
        self.parse_ack = None;
        if self.described_fanout.take().is_some() {
            self.emit_error(&SessionError::from(Refusal::DescribedNotExecuted));
        }
        match self.attached.as_mut() {
            Some(a) => {
                a.conn.out.extend_from_slice(frame.raw());
                a.conn.pending_syncs += 1;
                a.conn.unsynced = false;
                a.expects.push_back(Expect::Sync { forward: true });
            }
            None => {
                let s = self.client_status();
                // Nothing is outstanding: every batch so far is answered.
                self.syncs_answered = self.syncs_seen;
                if s == b'I' {
                    // The implicit transaction ended: so did its portals.
                    self.portals.clear();
                }
                self.emit_ready(s);
            }
        }
    }

    /// An error the router raises in the extended protocol: ErrorResponse, then skip
    /// to Sync; an attached backend is made to fail too, so its (implicit or explicit)
    /// transaction ends the way the client now expects.
    pub(crate) fn fail_extended(&mut self, e: SessionError) {
        if self.parse_ack.take().is_some() {
            self.emit_empty(b'1');
        }
        if let Some(vt) = self.txn.virtual_txn.as_mut() {
            vt.failed = true;
        }
        self.emit_error(&e);
        if let Some(a) = self.attached.as_mut() {
            encode_parse(&mut a.conn.out, "", POISON_SQL, &[]);
            a.conn.unnamed = None;
            a.conn.unsynced = true;
            a.expects.push_back(Expect::Poison);
        }
        self.skip_until_sync = true;
    }
}

/// True when a Bind's parameter part (formats and values) holds any value.
fn has_params(params: &[u8]) -> bool {
    let mut r = BodyReader::new(params, "Bind");
    r.count16()
        .and_then(|n| r.bytes(n * 2))
        .and_then(|_| r.count16())
        .is_ok_and(|n| n > 0)
}

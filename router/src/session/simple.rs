//! The simple query protocol (`Query`): session commands the router answers itself,
//! routing by the planner, forwarding to one shard, or running DDL on every shard.

use super::attach::{Ensure, Need};
use super::error::SessionError;
use super::local::Answer;
use super::refusal::Refusal;
use super::{Expect, Session, SqlPrepared, VirtualTxn};
use crate::backend::{PooledConn, StmtKey};
use crate::protocol::backend::{encode_command_complete, encode_error, encode_ready};
use crate::protocol::frontend::encode_query;
use crate::protocol::Frame;
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{begin_tag, session_command as classify, SessionCommand, SplitQuery};
use pgshard_sql::{Plan, Route, RouterCommand};
use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// SQL that fails on purpose, to abort a backend's transaction when the router refuses
/// a statement inside it (so the client's transaction state stays consistent).
pub(crate) const POISON_SQL: &str = "pgshard: statement refused by the router";

/// Where a statement goes, once the route is resolved against the session.
pub(crate) enum Target {
    One(ShardId),
    All(Vec<ShardId>),
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// A simple Query: transaction and session commands the router answers, then the
    /// statement planned and run where its plan says (SPEC §5).
    pub(crate) async fn on_query(&mut self, frame: &Frame, sql: &str) -> Result<(), SessionError> {
        // One query at a time: the router answers some statements itself and needs the
        // backend's transaction status to do so.
        if self
            .attached
            .as_ref()
            .is_some_and(|a| !a.expects.is_empty())
        {
            self.deferred = Some(frame.clone());
            return Ok(());
        }
        // Split (and lexed) once: the texts and session commands here, the plan below.
        let query = SplitQuery::new(sql);
        let stmts = query.texts();
        if stmts.is_empty() {
            self.emit_empty(b'I');
            let s = self.client_status();
            self.emit_ready(s);
            return Ok(());
        }
        let cmd = if stmts.len() == 1 {
            classify(stmts[0])
        } else {
            SessionCommand::Other
        };
        self.txn.query_begin = (stmts.len() > 1
            && !self.in_transaction()
            && classify(stmts[0]) == SessionCommand::Begin)
            .then(|| stmts[0].to_string());
        if self
            .query_transaction_command(&cmd, &stmts, sql)
            .await?
            .is_break()
        {
            return Ok(());
        }
        let in_txn = self.in_transaction();
        let ControlFlow::Continue(plan) = self.plan_query(sql, &query, &stmts).await? else {
            return Ok(());
        };
        self.pending_write |= !plan.replica_ok;
        if !in_txn && self.shard_override.is_none() {
            if let Some(reads) = multi_shard_reads(&plan) {
                return Box::pin(self.run_reads_one_by_one(frame, &reads)).await;
            }
        }
        let ControlFlow::Continue((route, prepare)) = self.query_route(&plan, in_txn).await else {
            return Ok(());
        };
        if self
            .run_query_on_several(frame, sql, &stmts, &plan, &route, in_txn)
            .await?
            .is_break()
        {
            return Ok(());
        }
        self.forward_query(frame, &stmts, cmd, &plan, &route, prepare)
            .await
    }

    /// Several multi-shard reads in one Query string, outside a transaction block, run
    /// one after the other as PostgreSQL runs them: each one's rows and command tag,
    /// one ReadyForQuery at the end, and nothing after the first error. (They would
    /// share PostgreSQL's implicit transaction; reads change nothing, and a multi-shard
    /// read has no global snapshot either way.)
    async fn run_reads_one_by_one(
        &mut self,
        frame: &Frame,
        reads: &[&pgshard_sql::FanoutPlan],
    ) -> Result<(), SessionError> {
        for (i, f) in reads.iter().enumerate() {
            let last = i + 1 == reads.len();
            // A fan-out may wait for the attached backend by deferring the whole Query:
            // only the first statement can (nothing has been answered yet).
            let busy = self
                .attached
                .as_ref()
                .is_some_and(|a| !a.expects.is_empty());
            if i > 0 && busy {
                self.fail_simple(SessionError::Unsupported(
                    "a multi-statement query whose statements wait for a busy backend".to_owned(),
                ));
                break;
            }
            self.ready_held = (!last).then_some(false);
            let ran = Box::pin(self.run_fanout(frame, f, false, None)).await;
            let held = self.ready_held.take();
            ran?;
            // Anything but a clean answer ended the Query (its ReadyForQuery is out) or
            // deferred it (to run again whole).
            if !last && held != Some(true) {
                break;
            }
        }
        Ok(())
    }

    /// True inside a transaction block (virtual, or open on the attached backend).
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.virtual_txn.is_some()
            || self
                .attached
                .as_ref()
                .is_some_and(|a| a.conn.status != b'I')
    }

    /// Transaction control and session commands the router answers itself (a BEGIN
    /// before any shard is chosen and what follows it, COMMIT/ROLLBACK of a transaction
    /// spanning shards, DISCARD ALL): `Break` once answered.
    async fn query_transaction_command(
        &mut self,
        cmd: &SessionCommand,
        stmts: &[&str],
        sql: &str,
    ) -> Result<ControlFlow<()>, SessionError> {
        if let Some(vt) = &self.txn.virtual_txn {
            let failed = vt.failed;
            match cmd {
                SessionCommand::Commit => {
                    self.txn.virtual_txn = None;
                    self.answer(if failed { "ROLLBACK" } else { "COMMIT" })?;
                    return Ok(ControlFlow::Break(()));
                }
                SessionCommand::Rollback => {
                    self.txn.virtual_txn = None;
                    self.answer("ROLLBACK")?;
                    return Ok(ControlFlow::Break(()));
                }
                SessionCommand::Begin if !failed => {
                    let mut b = BytesMut::new();
                    encode_error(
                        &mut b,
                        b'N',
                        "WARNING",
                        "25001",
                        "there is already a transaction in progress",
                        None,
                        None,
                    );
                    self.emit_local(&b);
                    self.answer(begin_tag(stmts[0]))?;
                    return Ok(ControlFlow::Break(()));
                }
                _ if failed => {
                    self.fail_simple(SessionError::InFailedTransaction);
                    return Ok(ControlFlow::Break(()));
                }
                _ => {}
            }
        }
        let in_txn = self.in_transaction();
        if !in_txn {
            self.txn.begin = None;
            self.txn.savepoints.clear();
            if *cmd == SessionCommand::Begin {
                self.txn.begin = Some(sql.to_string());
            }
        }
        if self.spans_shards() {
            let commit = match cmd {
                SessionCommand::Commit => Some(true),
                SessionCommand::Rollback => Some(false),
                _ => None,
            };
            if let Some(commit) = commit {
                Box::pin(self.end_spanning(commit, super::txn::EndAnswer::TagAndReady)).await?;
                return Ok(ControlFlow::Break(()));
            }
        }
        self.txn.commit_in_flight = *cmd == SessionCommand::Commit && in_txn;
        match cmd {
            SessionCommand::Begin if self.attached.is_none() && self.txn.virtual_txn.is_none() => {
                self.txn.virtual_txn = Some(VirtualTxn {
                    begin_sql: sql.to_string(),
                    failed: false,
                });
                self.answer(begin_tag(stmts[0]))?;
                return Ok(ControlFlow::Break(()));
            }
            SessionCommand::DiscardAll => {
                let (reply, error) = self.discard_all(in_txn);
                self.deliver(Answer::Simple, reply, error);
                return Ok(ControlFlow::Break(()));
            }
            SessionCommand::ResetAll => {
                self.shard_override = None;
                self.read_from = None;
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The Query's plan; in a transaction spanning shards, its savepoint commands run
    /// on every participant here (`Break`), and a failed transaction refuses the rest.
    async fn plan_query(
        &mut self,
        sql: &str,
        query: &SplitQuery<'_>,
        stmts: &[&str],
    ) -> Result<ControlFlow<(), Plan>, SessionError> {
        // A statement for a bucket frozen by a move waits for the move (`crate::hold`).
        let mut hold = crate::hold::FrozenHold::new();
        let mut plan = loop {
            let catalog = self.ctx.catalog.current();
            let mut plan = query.plan(&catalog);
            if self.shard_override.is_none() && crate::hold::touches_frozen(&plan, &catalog) {
                // A transaction that began on the source before the fence goes on there.
                let thawed = match self.in_transaction() {
                    true => self.catalog_before_fence(&catalog).await,
                    false => None,
                };
                if let Some(c) = thawed {
                    let mut plan = query.plan(&c);
                    if !crate::hold::touches_frozen(&plan, &c) {
                        self.complete_insert_columns(sql, &mut plan, &c, false)
                            .await;
                        break plan;
                    }
                }
                hold.wait(&self.ctx).await?;
                continue;
            }
            hold.released(&self.ctx);
            self.complete_insert_columns(sql, &mut plan, &catalog, false)
                .await;
            break plan;
        };
        if let Some(route) = self.cursor_route(sql) {
            plan.route = route;
        }
        if plan.kind == pgshard_sql::StatementKind::Ddl {
            self.note_ddl(sql);
        }
        if self.spans_shards() {
            if super::txn::has_savepoint(&plan) {
                if stmts.len() != 1 || plan.kind != pgshard_sql::StatementKind::Savepoint {
                    self.fail_simple(SessionError::from(Refusal::SavepointWithOthers));
                    return Ok(ControlFlow::Break(()));
                }
                // On every participant, so they all roll back or release alike (also
                // in a failed transaction: ROLLBACK TO is how it recovers).
                self.savepoint_everywhere(sql, false).await?;
                return Ok(ControlFlow::Break(()));
            }
            if self.any_participant_failed() {
                self.fail_simple(SessionError::InFailedTransaction);
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(plan))
    }

    /// Where the Query goes: router commands run here (`Break`); PREPARE goes where its
    /// statement would (and is recorded: the returned name and plan), EXECUTE where
    /// the prepared statement goes with its arguments; `SET pgshard.shard` applied.
    async fn query_route<'p>(
        &mut self,
        plan: &'p Plan,
        in_txn: bool,
    ) -> ControlFlow<(), (Cow<'p, Route>, Option<Box<(String, Plan)>>)> {
        let mut prepare: Option<Box<(String, Plan)>> = None;
        let route = match &plan.route {
            Route::Router(RouterCommand::Prepare {
                name, plan: inner, ..
            }) => {
                if self.sql_prepared.contains_key(name) {
                    self.fail_simple(SessionError::DuplicateStatement(name.clone()));
                    return ControlFlow::Break(());
                }
                prepare = Some(Box::new((name.clone(), (**inner).clone())));
                if pgshard_sql::prepared_fanout(inner) {
                    // Checked and prepared by one shard; EXECUTE runs it on all.
                    Route::Shard(self.ctx.catalog.current().local_shard)
                } else {
                    inner.route.clone()
                }
            }
            Route::Router(RouterCommand::Execute { name, args }) => {
                match self.sql_prepared.get(name) {
                    None => {
                        self.fail_simple(SessionError::UnknownStatement(name.clone()));
                        return ControlFlow::Break(());
                    }
                    Some(p) => {
                        let catalog = self.ctx.catalog.current();
                        let prepared = p.plan_for(&catalog);
                        if pgshard_sql::prepared_fanout(&prepared) {
                            pgshard_sql::execute_fanout(&p.text, args, &catalog)
                        } else {
                            pgshard_sql::route_execute(&prepared, args, &catalog)
                        }
                    }
                }
            }
            Route::Router(rc) => {
                Box::pin(self.run_router_command(rc, in_txn, Answer::Simple, &[])).await;
                return ControlFlow::Break(());
            }
            r => return ControlFlow::Continue((self.overridden(r), None)),
        };
        ControlFlow::Continue((Cow::Owned(self.with_override(route)), prepare))
    }

    /// Statements the router runs on several shards itself (`Break` once answered): a
    /// multi-shard read or write, COPY, a statement on every shard; refusals too.
    async fn run_query_on_several(
        &mut self,
        frame: &Frame,
        sql: &str,
        stmts: &[&str],
        plan: &Plan,
        route: &Route,
        in_txn: bool,
    ) -> Result<ControlFlow<()>, SessionError> {
        // Only a route planned for this very statement (not the body of PREPARE or
        // EXECUTE, whose text is not `shard_sql`), or the EXECUTE of a multi-shard
        // read, planned from its text with the arguments written in
        // (`pgshard_sql::execute_fanout`).
        let executed = matches!(
            (route, &plan.route),
            (
                Route::Fanout(_),
                Route::Router(RouterCommand::Execute { .. })
            )
        );
        if let (Route::Fanout(f), true) = (route, executed) {
            if f.shards.len() > 1 {
                Box::pin(self.run_fanout(frame, f, in_txn, None)).await?;
                return Ok(ControlFlow::Break(()));
            }
        }
        match (route, &plan.route) {
            (Route::Fanout(f), Route::Fanout(_)) if f.cursor.is_some() && f.shards.len() > 1 => {
                Box::pin(self.declare_cursor(frame, f, None)).await?;
                return Ok(ControlFlow::Break(()));
            }
            (Route::Fanout(f), Route::Fanout(_)) if f.shards.len() > 1 => {
                Box::pin(self.run_fanout(frame, f, in_txn, None)).await?;
                return Ok(ControlFlow::Break(()));
            }
            // A multi-shard UPDATE/DELETE on its own: atomic on every shard through
            // two-phase commit, or joined to the transaction block.
            (Route::FanoutWrite(w), Route::FanoutWrite(_))
                if stmts.len() == 1 && self.ctx.twopc.is_some() =>
            {
                if in_txn {
                    Box::pin(self.run_fanout_write_in_txn(w)).await?;
                } else {
                    Box::pin(self.run_fanout_write(w)).await?;
                }
                return Ok(ControlFlow::Break(()));
            }
            // COPY into or out of a sharded table: split or concatenated by the router.
            (Route::Copy(c), Route::Copy(_)) => {
                Box::pin(self.run_copy(c, in_txn, super::copy::CopyMode::Simple)).await?;
                return Ok(ControlFlow::Break(()));
            }
            _ => {}
        }
        let shards = match self.resolve(route, &self.ctx.catalog.current()) {
            Ok(Target::One(_)) => return Ok(ControlFlow::Continue(())),
            Ok(Target::All(shards)) => shards,
            Err(e) => {
                self.fail_simple(e);
                return Ok(ControlFlow::Break(()));
            }
        };
        if !in_txn && leaves_block_open(stmts) {
            // Each shard would be left inside its own block, which the router does not
            // track: the statements would be reported done and then rolled back.
            self.fail_simple(SessionError::from(Refusal::EveryShardOpensBlock));
            return Ok(ControlFlow::Break(()));
        }
        if !in_txn {
            let (reply, error) = Box::pin(self.run_on_all(sql, &shards, stmts.len() == 1)).await?;
            self.deliver(Answer::Simple, reply, error);
            return Ok(ControlFlow::Break(()));
        }
        if self.ctx.twopc.is_none() || stmts.len() != 1 {
            self.fail_simple(SessionError::from(Refusal::EveryShardInTransaction));
            return Ok(ControlFlow::Break(()));
        }
        // DDL, TRUNCATE…: every shard joins the transaction and runs it; it commits
        // (two-phase) with the transaction.
        let all = pgshard_sql::FanoutWrite {
            tables: Vec::new(),
            shards,
            sql: sql.to_string(),
            replicated: true,
            // DDL and TRUNCATE write no column values.
            defaults: Vec::new(),
            shard_sql: Vec::new(),
            key_move: None,
        };
        Box::pin(self.run_fanout_write_in_txn(&all)).await?;
        Ok(ControlFlow::Break(()))
    }

    /// Sends the Query, byte for byte, to the one shard its route resolves to (which
    /// joins an explicit transaction open on another shard, SPEC §7).
    async fn forward_query(
        &mut self,
        frame: &Frame,
        stmts: &[&str],
        cmd: SessionCommand,
        plan: &Plan,
        route: &Route,
        prepare: Option<Box<(String, Plan)>>,
    ) -> Result<(), SessionError> {
        let shard = match self.resolve(route, &self.ctx.catalog.current()) {
            Ok(Target::One(s)) => s,
            // Resolved before (`run_query_on_several`).
            Ok(Target::All(_)) | Err(_) => return Ok(()),
        };
        let joins = self.attached.as_ref().is_some_and(|a| {
            a.shard != shard && a.conn.status != b'I' && self.txn.virtual_txn.is_none()
        });
        if joins && self.ctx.twopc.is_some() {
            if let Err(e) = Box::pin(self.join_shard(shard)).await {
                self.fail_simple(e);
                return Ok(());
            }
        }
        let need = if plan.replica_ok && prepare.is_none() {
            // The statement text stands for its key (`WHERE key = 42` is the same
            // text for the same rows).
            self.read_need(|| crate::reads::policy::key_of(frame.raw()))
        } else {
            Need::Primary
        };
        match self.ensure_backend_for(shard, need, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => return Ok(()),
            Err(e) => {
                self.fail_simple(e);
                return Ok(());
            }
        }
        crate::stats::bump(&self.ctx.stats.single_shard);
        if let Route::Router(RouterCommand::Execute { name, .. }) = &plan.route {
            self.ensure_sql_prepared(name, false);
        }
        let prepared_name = prepare.map(|p| self.record_sql_prepare(p.0, stmts[0], p.1));
        // One statement's command was read above (`on_query`).
        let statements: std::collections::VecDeque<SessionCommand> = match stmts {
            [_] => [cmd].into(),
            _ => stmts.iter().map(|s| classify(s)).collect(),
        };
        if super::txn::has_savepoint(plan) {
            for st in stmts {
                super::txn::track_savepoint(&mut self.txn.savepoints, st);
            }
        }
        if let Some(a) = self.attached.as_mut() {
            a.note_write(super::txn::may_write(plan));
            a.conn.out.extend_from_slice(frame.raw());
            a.conn.unnamed = None;
            a.conn.pending_syncs += 1;
            a.executed = true;
            a.expects.push_back(Expect::Query {
                forward: true,
                swallow_errors: false,
                statements,
                prepare: prepared_name,
                failed: false,
            });
        }
        // The activity was published when the backend was attached (`attach_for`) or
        // at its last ReadyForQuery, and nothing it shows has changed since.
        Ok(())
    }

    /// Records a PREPARE sent with a simple Query before it runs (removed again if it
    /// fails, see `after_ready`); returns its name.
    fn record_sql_prepare(&mut self, name: String, text: &str, inner: Plan) -> String {
        self.drop_backend_sql_prepared(&name, false);
        let key = StmtKey {
            sql: text.to_string(),
            param_types: Vec::new(),
        };
        let digest = key.digest();
        self.sql_prepared.insert(
            name.clone(),
            Arc::new(SqlPrepared {
                text: text.to_string(),
                digest,
                plan: inner,
                // Planned with a catalog that may have changed since: planned again at
                // the first EXECUTE that sees another version.
                catalog_version: None,
            }),
        );
        if let Some(a) = self.attached.as_mut() {
            a.conn.sql_prepared.insert(name.clone(), digest);
        }
        name
    }

    /// `SET pgshard.shard` wins over the planner, except for router commands and
    /// planner errors.
    pub(crate) fn with_override(&self, route: Route) -> Route {
        match self.override_shard(&route) {
            Some(s) => Route::Shard(s),
            None => route,
        }
    }

    /// [`Self::with_override`] of a route the caller keeps: borrowed unless the override
    /// replaces it (the extended protocol's hot path asked this of cloned routes several
    /// times per statement, issue 16).
    pub(crate) fn overridden<'r>(&self, route: &'r Route) -> std::borrow::Cow<'r, Route> {
        match self.override_shard(route) {
            Some(s) => std::borrow::Cow::Owned(Route::Shard(s)),
            None => std::borrow::Cow::Borrowed(route),
        }
    }

    /// The shard `SET pgshard.shard` sends `route` to instead, if any.
    fn override_shard(&self, route: &Route) -> Option<ShardId> {
        match self.shard_override {
            Some((s, _)) if !matches!(route, Route::Router(_) | Route::Error(_)) => Some(s),
            _ => None,
        }
    }

    /// Resolves a route to shards (without Bind parameters).
    pub(crate) fn resolve(
        &self,
        route: &Route,
        catalog: &pgshard_catalog::Catalog,
    ) -> Result<Target, SessionError> {
        match route {
            Route::Shard(s) => Ok(Target::One(*s)),
            Route::AnyShard | Route::ShardByParam { .. } => Ok(Target::One(self.any_shard())),
            Route::AllShards => {
                let ids = catalog.shard_ids();
                match ids.as_slice() {
                    [one] => Ok(Target::One(*one)),
                    _ => Ok(Target::All(ids)),
                }
            }
            Route::Router(cmd) => Err(Refusal::router_command(cmd).into()),
            Route::Unsupported(msg) => Err(SessionError::Unsupported(msg.clone())),
            Route::Error(e) => Err(SessionError::Plan(e.clone())),
            // One shard holds every row the statement can see: the statement itself
            // runs there and its answer is PostgreSQL's.
            Route::Fanout(f) if f.shards.len() == 1 => Ok(Target::One(f.shards[0])),
            // The simple protocol runs fan-outs before resolving (`run_fanout`); the
            // extended protocol does not execute them yet: refuse, never guess.
            Route::Fanout(_) => Err(SessionError::from(Refusal::MultiShardExecute)),
            // Rows routed by their Bind parameters (the extended protocol routes them
            // before resolving; an SQL-level EXECUTE cannot).
            Route::InsertByParams(pi) => Err(SessionError::Unsupported(pi.refusal.clone())),
            Route::Copy(_) => Err(SessionError::from(Refusal::CopyNotAlone)),
            Route::FanoutWrite(_) => Err(SessionError::from(Refusal::FanoutWriteHere)),
        }
    }

    /// Answers a statement the router handled itself: CommandComplete and ReadyForQuery.
    fn answer(&mut self, tag: &str) -> Result<(), SessionError> {
        let mut b = BytesMut::new();
        encode_command_complete(&mut b, tag);
        encode_ready(&mut b, self.client_status());
        self.emit_local(&b);
        Ok(())
    }

    /// An error the router raises for a simple Query: ErrorResponse, the backend's
    /// transaction aborted to match, ReadyForQuery.
    pub(crate) fn fail_simple(&mut self, e: SessionError) {
        if let Some(begin_sql) = self.txn.query_begin.take() {
            if self.txn.virtual_txn.is_none()
                && self.attached.as_ref().is_none_or(|a| a.conn.status == b'I')
            {
                self.txn.virtual_txn = Some(VirtualTxn {
                    begin_sql,
                    failed: true,
                });
            }
        }
        if let Some(vt) = self.txn.virtual_txn.as_mut() {
            vt.failed = true;
        }
        let mut status = self.client_status();
        if let Some(a) = self.attached.as_mut() {
            if a.conn.status != b'I' {
                a.send_silent(POISON_SQL, true);
                status = b'E';
            }
        }
        self.emit_error(&e);
        self.emit_ready(status);
    }

    /// Prepares a SQL-level statement on the attached backend if it lacks it (through
    /// the extended protocol when `extended`, so a batch's implicit transaction stays
    /// open).
    pub(crate) fn ensure_sql_prepared(&mut self, name: &str, extended: bool) {
        let Some(p) = self.sql_prepared.get(name).cloned() else {
            return;
        };
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        if a.conn.sql_prepared.get(name) == Some(&p.digest) {
            return;
        }
        if extended {
            if a.conn.sql_prepared.contains_key(name) {
                a.run_silent_extended(&format!("DEALLOCATE {name}"));
            }
            a.run_silent_extended(&p.text);
        } else {
            let mut sql = String::new();
            if a.conn.sql_prepared.contains_key(name) {
                sql.push_str(&format!("DEALLOCATE {name}; "));
            }
            sql.push_str(&p.text);
            a.send_silent(&sql, false);
        }
        a.conn.sql_prepared.insert(name.to_string(), p.digest);
    }

    /// Removes a SQL-level statement of that name from the attached backend, before the
    /// client's PREPARE creates it.
    pub(crate) fn drop_backend_sql_prepared(&mut self, name: &str, extended: bool) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        if a.conn.sql_prepared.remove(name).is_some() {
            let sql = format!("DEALLOCATE {name}");
            if extended {
                a.run_silent_extended(&sql);
            } else {
                a.send_silent(&sql, true);
            }
        }
    }

    /// Runs a statement on every shard, one after the other, and answers once with the
    /// first shard's reply.
    ///
    /// One statement runs inside a transaction on every shard, committed on all of them
    /// only once it succeeded on all (SPEC §5 rule 5, "atomically where PostgreSQL
    /// allows"): a statement that fails on one shard only (a CHECK or unique index
    /// that some shard's rows violate, an object that exists on one shard) leaves no
    /// shard changed. The commits are one-phase: a crash between them can still leave
    /// shards apart. Statements PostgreSQL refuses in a transaction block (SQLSTATE
    /// 25001: VACUUM, CREATE INDEX CONCURRENTLY…) and several statements in one Query
    /// run as before, each shard on its own; a failure then leaves earlier shards
    /// changed, and a WARNING says which.
    pub(crate) async fn run_on_all(
        &mut self,
        sql: &str,
        shards: &[ShardId],
        one_statement: bool,
    ) -> Result<(BytesMut, Option<SessionError>), SessionError> {
        crate::stats::bump(&self.ctx.stats.all_shards);
        if one_statement {
            match self.run_on_all_once(sql, shards, true).await? {
                AllShards::Answered(reply, error) => return Ok((reply, error)),
                AllShards::NotInTransaction => {}
            }
        }
        match self.run_on_all_once(sql, shards, false).await? {
            AllShards::Answered(reply, error) => Ok((reply, error)),
            AllShards::NotInTransaction => Ok((BytesMut::new(), None)),
        }
    }

    async fn run_on_all_once(
        &mut self,
        sql: &str,
        shards: &[ShardId],
        atomic: bool,
    ) -> Result<AllShards, SessionError> {
        let mut first_reply: Option<Vec<Frame>> = None;
        let mut done: Vec<ShardId> = Vec::new();
        let mut failure: Option<(ShardId, SessionError)> = None;
        // In atomic mode, every connection that began a transaction, to end it.
        let mut open = Vec::new();
        let mut not_in_txn = false;
        for &shard in shards {
            match self.run_statement_on(shard, sql, atomic).await {
                ShardRun::Lost(e) => {
                    failure = Some((shard, e));
                    break;
                }
                ShardRun::Failed(conn, f) => {
                    not_in_txn = atomic
                        && done.is_empty()
                        && crate::protocol::backend::error_summary(&f).0 == "25001";
                    let e = SessionError::from_backend(shard, conn.server_error(f));
                    failure = Some((shard, e));
                    if atomic {
                        open.push((shard, conn));
                    }
                    break;
                }
                ShardRun::Done(conn, frames) => {
                    done.push(shard);
                    first_reply.get_or_insert(frames);
                    if atomic {
                        open.push((shard, conn));
                    }
                }
            }
        }
        if atomic {
            done = end_each(&mut open, &mut failure).await;
            drop(open);
            if not_in_txn {
                return Ok(AllShards::NotInTransaction);
            }
        }
        let mut b = BytesMut::new();
        let error = match failure {
            None => {
                for f in first_reply.unwrap_or_default() {
                    b.extend_from_slice(f.raw());
                }
                None
            }
            Some((shard, e)) => {
                if !done.is_empty() {
                    let list: Vec<String> = done.iter().map(|s| s.to_string()).collect();
                    encode_error(
                        &mut b,
                        b'N',
                        "WARNING",
                        "01000",
                        &format!(
                            "statement failed on shard {shard} after it succeeded on shard(s) {}",
                            list.join(", ")
                        ),
                        Some("Statements that cannot run in a transaction block, or several statements in one query, are not atomic across shards; the shards that succeeded keep the change."),
                        None,
                    );
                }
                Some(e)
            }
        };
        Ok(AllShards::Answered(b, error))
    }

    /// Runs `sql` as a Query on a backend of `shard`'s primary brought to the session's
    /// state (inside a transaction when `atomic`).
    async fn run_statement_on(&self, shard: ShardId, sql: &str, atomic: bool) -> ShardRun {
        let checkout =
            crate::hold::checkout_primary(&self.ctx, shard, &self.user, &self.database, false);
        let mut conn = match checkout.await {
            Ok(c) => c,
            Err(e) => return ShardRun::Lost(e),
        };
        let fp = self.vars.fingerprint();
        let lost = |conn: &mut PooledConn, e| {
            conn.broken = true;
            ShardRun::Lost(SessionError::from_backend(shard, e))
        };
        if conn.state_fp != fp {
            if let Err(e) = conn.run_silent(&self.vars.replay_sql()).await {
                return lost(&mut conn, e);
            }
            conn.state_fp = fp;
        }
        if atomic {
            if let Err(e) = conn.run_silent("BEGIN").await {
                return lost(&mut conn, e);
            }
        }
        encode_query(&mut conn.out, sql);
        conn.unnamed = None;
        if let Err(e) = conn.flush().await {
            return lost(&mut conn, e);
        }
        let mut frames = Vec::new();
        let mut error = None;
        loop {
            match conn.read().await {
                Ok(f) => match f.tag() {
                    b'Z' => {
                        conn.status =
                            crate::protocol::backend::decode_ready_status(&f).unwrap_or(b'E');
                        break;
                    }
                    b'E' => error = Some(f),
                    _ => frames.push(f),
                },
                Err(e) => return lost(&mut conn, e),
            }
        }
        match error {
            Some(f) => ShardRun::Failed(conn, f),
            None => ShardRun::Done(conn, frames),
        }
    }
}

/// One shard's part of a statement run on every shard.
enum ShardRun {
    /// It ran: the reply (without ReadyForQuery).
    Done(PooledConn, Vec<Frame>),
    /// The shard's error; the connection is still usable.
    Failed(PooledConn, Frame),
    /// No connection, or it broke.
    Lost(SessionError),
}

/// Ends the transaction on each of `open`: COMMIT if nothing failed, else ROLLBACK.
/// Returns the shards that keep the change (those that committed before a COMMIT
/// failed; none after a ROLLBACK).
async fn end_each(
    open: &mut [(ShardId, PooledConn)],
    failure: &mut Option<(ShardId, SessionError)>,
) -> Vec<ShardId> {
    let end = if failure.is_none() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let mut committed: Vec<ShardId> = Vec::new();
    for (shard, conn) in open.iter_mut() {
        if conn.broken {
            continue;
        }
        match conn.run_silent(end).await {
            Ok(_) => committed.push(*shard),
            Err(e) => {
                conn.broken = true;
                if failure.is_none() {
                    *failure = Some((*shard, SessionError::from_backend(*shard, e)));
                }
            }
        }
    }
    if end == "ROLLBACK" {
        committed.clear();
    }
    committed
}

/// How a run on every shard ended.
enum AllShards {
    /// The answer (notices, the first shard's reply), and the error if it failed.
    Answered(BytesMut, Option<SessionError>),
    /// The statement cannot run in a transaction block: nothing was changed and nothing
    /// answered; run it again without one.
    NotInTransaction,
}

/// The statements of a multi-statement Query string when each is a multi-shard read
/// the router merges (no locking, no write, no cursor): run one by one
/// (`run_reads_one_by_one`) instead of refused as a whole.
fn multi_shard_reads(plan: &Plan) -> Option<Vec<&pgshard_sql::FanoutPlan>> {
    if plan.statements.len() < 2 || !matches!(plan.route, Route::Unsupported(_)) {
        return None;
    }
    plan.statements
        .iter()
        .map(|p| match &p.route {
            Route::Fanout(f)
                if p.kind == pgshard_sql::StatementKind::Read
                    && p.replica_ok
                    && f.shards.len() > 1
                    && f.cursor.is_none() =>
            {
                Some(f)
            }
            _ => None,
        })
        .collect()
}

/// True if the statements, run in order, leave a transaction block open: a BEGIN (or
/// a COMMIT / ROLLBACK … AND CHAIN) after the last COMMIT or ROLLBACK.
fn leaves_block_open(stmts: &[&str]) -> bool {
    stmts.iter().fold(false, |open, s| match classify(s) {
        SessionCommand::Begin => true,
        SessionCommand::Commit | SessionCommand::Rollback => {
            let s = s.to_ascii_lowercase();
            s.contains("chain") && !s.contains("no chain")
        }
        _ => open,
    })
}

#[cfg(test)]
mod tests {
    use super::leaves_block_open;

    #[test]
    fn blocks_left_open_by_a_multi_statement_query() {
        for (stmts, open) in [
            (&["BEGIN", "TRUNCATE t"][..], true),
            (
                &[
                    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                    "TRUNCATE t",
                ],
                true,
            ),
            (&["BEGIN", "CREATE TABLE x (a int)", "COMMIT"], false),
            (&["BEGIN", "TRUNCATE t", "ROLLBACK"], false),
            (&["BEGIN", "TRUNCATE t", "COMMIT AND CHAIN"], true),
            (&["BEGIN", "TRUNCATE t", "COMMIT AND NO CHAIN"], false),
            (&["TRUNCATE t", "TRUNCATE u"], false),
            (&["COMMIT", "BEGIN"], true),
            (&["BEGIN", "ROLLBACK TO SAVEPOINT a"], true),
        ] {
            assert_eq!(leaves_block_open(stmts), open, "{stmts:?}");
        }
    }
}

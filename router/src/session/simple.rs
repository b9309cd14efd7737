//! The simple query protocol (`Query`): session commands the router answers itself,
//! routing by the planner, forwarding to one shard, or running DDL on every shard.

use super::attach::Ensure;
use super::error::SessionError;
use super::lex::{begin_tag, classify, split_statements, SessionCommand};
use super::local::Answer;
use super::{Expect, Session, SqlPrepared, VirtualTxn};
use crate::backend::StmtKey;
use crate::protocol::backend::{encode_command_complete, encode_error, encode_ready};
use crate::protocol::frontend::encode_query;
use crate::protocol::Frame;
use bytes::BytesMut;
use pgshard_catalog::ShardId;
use pgshard_sql::{Plan, Route, RouterCommand};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// SQL that fails on purpose, to abort a backend's transaction when the router refuses
/// a statement inside it (so the client's transaction state stays consistent).
pub(crate) const POISON_SQL: &str = "pgshard: statement refused by the router";

/// Why a router command cannot run where it was sent.
pub(crate) fn router_command_unsupported(cmd: &RouterCommand) -> String {
    match cmd {
        RouterCommand::CreateDistributedTable { .. } | RouterCommand::CreateReferenceTable { .. } => {
            "create_distributed_table() and create_reference_table() are supported through the simple query protocol only".into()
        }
        RouterCommand::SetShard { .. } | RouterCommand::ResetShard | RouterCommand::ShowShard => {
            "pgshard.shard can be set, reset and shown through the simple query protocol only".into()
        }
        RouterCommand::Prepare { .. } | RouterCommand::Execute { .. } | RouterCommand::Deallocate { .. } => {
            "PREPARE, EXECUTE and DEALLOCATE are supported through the simple query protocol only".into()
        }
    }
}

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
        let stmts = split_statements(sql);
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
        if let Some(vt) = &self.txn.virtual_txn {
            let failed = vt.failed;
            match cmd {
                SessionCommand::Commit => {
                    self.txn.virtual_txn = None;
                    return self.answer(if failed { "ROLLBACK" } else { "COMMIT" });
                }
                SessionCommand::Rollback => {
                    self.txn.virtual_txn = None;
                    return self.answer("ROLLBACK");
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
                    return self.answer(begin_tag(stmts[0]));
                }
                _ if failed => {
                    self.fail_simple(SessionError::InFailedTransaction);
                    return Ok(());
                }
                _ => {}
            }
        }
        let in_txn = self.txn.virtual_txn.is_some()
            || self
                .attached
                .as_ref()
                .is_some_and(|a| a.conn.status != b'I');
        if !in_txn {
            self.txn.begin = None;
            self.txn.savepoints.clear();
            if cmd == SessionCommand::Begin {
                self.txn.begin = Some(sql.to_string());
            }
        }
        if self.spans_shards() {
            match cmd {
                SessionCommand::Commit => {
                    return self
                        .end_spanning(true, super::txn::EndAnswer::TagAndReady)
                        .await
                }
                SessionCommand::Rollback => {
                    return self
                        .end_spanning(false, super::txn::EndAnswer::TagAndReady)
                        .await
                }
                _ => {}
            }
        }
        let catalog = self.ctx.catalog.current();
        match &cmd {
            SessionCommand::Begin if self.attached.is_none() && self.txn.virtual_txn.is_none() => {
                self.txn.virtual_txn = Some(VirtualTxn {
                    begin_sql: sql.to_string(),
                    failed: false,
                });
                return self.answer(begin_tag(stmts[0]));
            }
            SessionCommand::DiscardAll => {
                if in_txn {
                    self.fail_simple(SessionError::DiscardInTransaction);
                    return Ok(());
                }
                self.vars.apply(&cmd);
                self.stmts.clear();
                self.sql_prepared.clear();
                self.shard_override = None;
                return self.answer("DISCARD ALL");
            }
            SessionCommand::ResetAll => self.shard_override = None,
            _ => {}
        }
        let plan = pgshard_sql::plan(sql, &catalog);
        let plan = self
            .complete_insert_columns(sql, plan, &catalog, false)
            .await;
        if plan.kind == pgshard_sql::StatementKind::Ddl {
            // Statements prepared from now on are parsed afresh (see `ddl_epoch`).
            self.ctx
                .ddl_epoch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.spans_shards() {
            if super::txn::has_savepoint(&plan) {
                if stmts.len() != 1 || plan.kind != pgshard_sql::StatementKind::Savepoint {
                    self.fail_simple(SessionError::Unsupported(
                        "a savepoint command together with other statements in one query, in a transaction spanning shards".into(),
                    ));
                    return Ok(());
                }
                // On every participant, so they all roll back or release alike (also
                // in a failed transaction: ROLLBACK TO is how it recovers).
                return self.savepoint_everywhere(sql, false).await;
            }
            if self.any_participant_failed() {
                self.fail_simple(SessionError::InFailedTransaction);
                return Ok(());
            }
        }
        let mut prepare: Option<(String, Plan)> = None;
        let route = match &plan.route {
            Route::Router(rc) => match rc {
                RouterCommand::Prepare {
                    name, plan: inner, ..
                } => {
                    if self.sql_prepared.contains_key(name) {
                        self.fail_simple(SessionError::DuplicateStatement(name.clone()));
                        return Ok(());
                    }
                    prepare = Some((name.clone(), (**inner).clone()));
                    inner.route.clone()
                }
                RouterCommand::Execute { name, args } => match self.sql_prepared.get(name) {
                    None => {
                        self.fail_simple(SessionError::UnknownStatement(name.clone()));
                        return Ok(());
                    }
                    Some(p) => pgshard_sql::route_execute(&p.plan, args, &catalog),
                },
                _ => {
                    self.run_router_command(rc, in_txn, Answer::Simple).await;
                    return Ok(());
                }
            },
            r => r.clone(),
        };
        let route = self.with_override(route);
        // A multi-shard read planned for this very statement (not the body of PREPARE
        // or EXECUTE, whose text is not `shard_sql`).
        if let (Route::Fanout(f), Route::Fanout(_)) = (&route, &plan.route) {
            if f.shards.len() > 1 {
                return self.run_fanout(frame, f, in_txn, None).await;
            }
        }
        // A multi-shard UPDATE/DELETE on its own, outside a transaction block: atomic
        // on every shard through two-phase commit.
        if let (Route::FanoutWrite(w), Route::FanoutWrite(_)) = (&route, &plan.route) {
            if stmts.len() == 1 && self.ctx.twopc.is_some() {
                return if in_txn {
                    self.run_fanout_write_in_txn(w).await
                } else {
                    self.run_fanout_write(w).await
                };
            }
        }
        // COPY into or out of a sharded table: split or concatenated by the router.
        if let (Route::Copy(c), Route::Copy(_)) = (&route, &plan.route) {
            return self
                .run_copy(c, in_txn, super::copy::CopyMode::Simple)
                .await;
        }
        let target = match self.resolve(&route, &catalog) {
            Ok(t) => t,
            Err(e) => {
                self.fail_simple(e);
                return Ok(());
            }
        };
        let shard = match target {
            Target::One(s) => s,
            Target::All(shards) => {
                if in_txn {
                    if self.ctx.twopc.is_none() || stmts.len() != 1 {
                        self.fail_simple(SessionError::Unsupported(
                            "statements that run on every shard inside a transaction block need the catalog's commit log and one statement per query".into(),
                        ));
                        return Ok(());
                    }
                    // DDL, TRUNCATE…: every shard joins the transaction and runs it; it
                    // commits (two-phase) with the transaction.
                    let all = pgshard_sql::FanoutWrite {
                        tables: Vec::new(),
                        shards,
                        sql: sql.to_string(),
                        replicated: true,
                        // DDL and TRUNCATE write no column values.
                        defaults: Vec::new(),
                        shard_sql: Vec::new(),
                    };
                    return self.run_fanout_write_in_txn(&all).await;
                }
                let (reply, error) = self.run_on_all(sql, &shards, stmts.len() == 1).await?;
                self.deliver(Answer::Simple, reply, error);
                return Ok(());
            }
        };
        // In an explicit transaction on another shard: that shard joins it (SPEC §7).
        let joins = self.attached.as_ref().is_some_and(|a| {
            a.shard != shard && a.conn.status != b'I' && self.txn.virtual_txn.is_none()
        });
        if joins && self.ctx.twopc.is_some() {
            if let Err(e) = self.join_shard(shard).await {
                self.fail_simple(e);
                return Ok(());
            }
        }
        match self.ensure_backend(shard, frame).await {
            Ok(Ensure::Ready) => {}
            Ok(Ensure::Deferred) => return Ok(()),
            Err(e) => {
                self.fail_simple(e);
                return Ok(());
            }
        }
        crate::stats::bump(&self.ctx.stats.single_shard);
        let mut prepared_name = None;
        if let Route::Router(RouterCommand::Execute { name, .. }) = &plan.route {
            self.ensure_sql_prepared(name, false);
        }
        if let Some((name, inner)) = prepare {
            self.drop_backend_sql_prepared(&name, false);
            let key = StmtKey {
                sql: stmts[0].to_string(),
                param_types: Vec::new(),
            };
            let digest = key.digest();
            // Recorded now; removed again if the PREPARE fails (see `after_ready`).
            self.sql_prepared.insert(
                name.clone(),
                Arc::new(SqlPrepared {
                    text: stmts[0].to_string(),
                    digest,
                    plan: inner,
                }),
            );
            if let Some(a) = self.attached.as_mut() {
                a.conn.sql_prepared.insert(name.clone(), digest);
            }
            prepared_name = Some(name);
        }
        let statements = stmts.iter().map(|s| classify(s)).collect();
        if super::txn::has_savepoint(&plan) {
            for st in &stmts {
                super::txn::track_savepoint(&mut self.txn.savepoints, st);
            }
        }
        if let Some(a) = self.attached.as_mut() {
            a.wrote |= super::txn::may_write(&plan);
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
        self.publish_activity();
        Ok(())
    }

    /// `SET pgshard.shard` wins over the planner, except for router commands and
    /// planner errors.
    pub(crate) fn with_override(&self, route: Route) -> Route {
        match (self.shard_override, route) {
            (_, r @ (Route::Router(_) | Route::Error(_))) => r,
            (Some((s, _)), _) => Route::Shard(s),
            (None, r) => r,
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
            Route::Router(cmd) => Err(SessionError::Unsupported(router_command_unsupported(cmd))),
            Route::Unsupported(msg) => Err(SessionError::Unsupported(msg.clone())),
            Route::Error(e) => Err(SessionError::Plan(e.clone())),
            // One shard holds every row the statement can see: the statement itself
            // runs there and its answer is PostgreSQL's.
            Route::Fanout(f) if f.shards.len() == 1 => Ok(Target::One(f.shards[0])),
            // The simple protocol runs fan-outs before resolving (`run_fanout`); the
            // extended protocol does not execute them yet: refuse, never guess.
            Route::Fanout(_) => Err(SessionError::Unsupported(
                "query on several shards through the extended query protocol (supported through the simple query protocol only, for now)"
                    .into(),
            )),
            // Rows routed by their Bind parameters (the extended protocol routes them
            // before resolving; an SQL-level EXECUTE cannot).
            Route::InsertByParams(pi) => Err(SessionError::Unsupported(pi.refusal.clone())),
            Route::Copy(_) => Err(SessionError::Unsupported(
                "COPY into or out of a sharded table is supported on its own, through the simple query protocol or Bind/Execute".into(),
            )),
            Route::FanoutWrite(_) => Err(SessionError::Unsupported(
                "write on several shards inside a transaction block, through the extended query protocol or without a catalog connection (not supported yet)".into(),
            )),
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
            let checkout = crate::hold::checkout_primary(
                &self.ctx,
                shard,
                &self.user,
                &self.database,
                false,
            );
            let mut conn = match checkout.await {
                Ok(c) => c,
                Err(e) => {
                    failure = Some((shard, e));
                    break;
                }
            };
            let fp = self.vars.fingerprint();
            if conn.state_fp != fp {
                if let Err(e) = conn.run_silent(&self.vars.replay_sql()).await {
                    conn.broken = true;
                    failure = Some((shard, SessionError::from_backend(shard, e)));
                    break;
                }
                conn.state_fp = fp;
            }
            if atomic {
                if let Err(e) = conn.run_silent("BEGIN").await {
                    conn.broken = true;
                    failure = Some((shard, SessionError::from_backend(shard, e)));
                    break;
                }
            }
            encode_query(&mut conn.out, sql);
            conn.unnamed = None;
            if let Err(e) = conn.flush().await {
                conn.broken = true;
                failure = Some((shard, SessionError::from_backend(shard, e)));
                break;
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
                    Err(e) => {
                        error = None;
                        conn.broken = true;
                        failure = Some((shard, SessionError::from_backend(shard, e)));
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
            if let Some(f) = error {
                not_in_txn = atomic
                    && done.is_empty()
                    && crate::protocol::backend::error_summary(&f).0 == "25001";
                failure = Some((
                    shard,
                    SessionError::from_backend(shard, conn.server_error(f)),
                ));
                if atomic {
                    open.push((shard, conn));
                }
                break;
            }
            done.push(shard);
            if first_reply.is_none() {
                first_reply = Some(frames);
            }
            if atomic {
                open.push((shard, conn));
            }
        }
        if atomic {
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
                            failure = Some((*shard, SessionError::from_backend(*shard, e)));
                        }
                    }
                }
            }
            if end == "ROLLBACK" {
                done.clear();
            } else {
                // A COMMIT failed: the shards that committed before it keep the change.
                done = committed;
            }
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
}

/// How a run on every shard ended.
enum AllShards {
    /// The answer (notices, the first shard's reply), and the error if it failed.
    Answered(BytesMut, Option<SessionError>),
    /// The statement cannot run in a transaction block: nothing was changed and nothing
    /// answered; run it again without one.
    NotInTransaction,
}

//! Replies from the attached backend: relayed to the client byte for byte unless they
//! answer something the router sent on its own, with the bookkeeping that follows
//! (transaction status, session state that took effect, prepared statements that failed,
//! release of an idle backend).

use super::error::SessionError;
use super::{Attached, Expect, Session};
use crate::protocol::backend::{decode_command_tag, decode_ready_status};
use crate::protocol::Frame;
use pgshard_sql::SessionCommand;
use tokio::io::{AsyncRead, AsyncWrite};

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub(crate) fn on_backend_frame(&mut self, frame: Frame) -> Result<(), SessionError> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let tag = frame.tag();
        tracing::trace!(tag = %(tag as char), len = frame.len(), expects = a.expects.len(), "backend message");
        // Hot path: rows.
        if tag == b'D' {
            if forwards_rows(a) {
                self.out.extend_from_slice(frame.raw());
            }
            return Ok(());
        }
        if let Some(Expect::Swallow(t)) = a.expects.front() {
            if *t == tag {
                a.expects.pop_front();
                self.flush_locals();
                return Ok(());
            }
        }
        match tag {
            b'1' | b'2' | b'3' => self.on_backend_ack(&frame)?,
            b't' => self.out.extend_from_slice(frame.raw()),
            b'T' | b'n' => match a.expects.front() {
                Some(Expect::Describe) => {
                    a.expects.pop_front();
                    self.out.extend_from_slice(frame.raw());
                }
                Some(Expect::Query { forward, .. }) => {
                    if *forward {
                        self.out.extend_from_slice(frame.raw());
                    }
                }
                _ => return unexpected(a, None, tag),
            },
            b'C' | b'I' | b's' => self.on_backend_completion(&frame)?,
            b'E' => self.on_backend_error(frame),
            b'Z' => return self.on_backend_ready(&frame),
            b'S' => {
                a.conn.note_parameter(&frame);
                self.out.extend_from_slice(frame.raw());
            }
            b'K' | b'R' => {
                a.conn.broken = true;
                return Err(SessionError::LostBackend { shard: a.shard });
            }
            // NoticeResponse, NotificationResponse, COPY messages and anything newer.
            _ => self.out.extend_from_slice(frame.raw()),
        }
        self.flush_locals();
        Ok(())
    }

    /// ParseComplete, BindComplete or CloseComplete: forwarded unless the router's own.
    fn on_backend_ack(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let tag = frame.tag();
        let forward = match (tag, a.expects.pop_front()) {
            (b'1', Some(Expect::Parse { forward, .. })) => forward,
            (b'2', Some(Expect::Bind)) => true,
            (b'3', Some(Expect::Close { forward })) => forward,
            (_, other) => return unexpected(a, other, tag),
        };
        if forward {
            self.out.extend_from_slice(frame.raw());
        }
        Ok(())
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended of an Execute or a
    /// Query: forwarded, and a finished session command applied.
    fn on_backend_completion(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let tag = frame.tag();
        let done = match a.expects.front_mut() {
            Some(Expect::Execute { .. }) => {
                self.out.extend_from_slice(frame.raw());
                match a.expects.pop_front() {
                    Some(Expect::Execute { command: Some(c) }) if tag == b'C' => Some(c),
                    _ => None,
                }
            }
            Some(Expect::Query {
                forward,
                statements,
                ..
            }) => {
                if *forward {
                    self.out.extend_from_slice(frame.raw());
                }
                if tag == b'C' {
                    statements.pop_front()
                } else {
                    None
                }
            }
            _ => return unexpected(a, None, tag),
        };
        if let Some(cmd) = done {
            self.statement_done(cmd, frame);
        }
        Ok(())
    }

    /// ReadyForQuery: the backend's status, the end of a batch or Query (its portals,
    /// the settings it made), and the backend released when the session is idle.
    fn on_backend_ready(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let tag = frame.tag();
        let status = decode_ready_status(frame).map_err(|e| {
            a.conn.broken = true;
            SessionError::Protocol(e)
        })?;
        a.conn.status = status;
        a.conn.pending_syncs = a.conn.pending_syncs.saturating_sub(1);
        self.txn.commit_in_flight = false;
        a.executed = false;
        let (forward, prepare, failed) = match a.expects.pop_front() {
            Some(Expect::Sync { forward }) => {
                self.syncs_answered += u64::from(forward);
                (forward, None, std::mem::take(&mut a.failed_since_sync))
            }
            Some(Expect::Query {
                forward,
                prepare,
                failed,
                ..
            }) => {
                a.failed_since_sync = false;
                (forward, prepare, failed)
            }
            other => return unexpected(a, other, tag),
        };
        if forward {
            self.out.extend_from_slice(frame.raw());
        }
        self.after_ready(status, prepare, failed, forward);
        self.flush_locals();
        self.maybe_release();
        if self.attached.is_some() {
            self.publish_activity();
        }
        Ok(())
    }

    fn on_backend_error(&mut self, frame: Frame) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        // A deadlock victim's cancellation reaches the client as 40P01.
        let frame = a.conn.deadlock_rewrite(frame);
        if !self.txn.parked.is_empty()
            && self.txn.savepoints.is_empty()
            && crate::protocol::backend::error_summary(&frame).0
                == crate::deadlock::DEADLOCK_DETECTED
        {
            self.txn.roll_back_parked = true;
        }
        match a.expects.front_mut() {
            Some(Expect::Query {
                forward,
                swallow_errors,
                failed,
                ..
            }) => {
                *failed = true;
                if *forward || !*swallow_errors {
                    self.out.extend_from_slice(frame.raw());
                }
                return;
            }
            Some(Expect::Poison) => {
                a.expects.pop_front();
                skip_to_sync(a, &mut self.skip_until_sync);
                return;
            }
            _ => {}
        }
        // Extended protocol: the failing message and everything up to Sync is skipped by
        // the server; drop what we expected from them.
        skip_to_sync(a, &mut self.skip_until_sync);
        self.out.extend_from_slice(frame.raw());
    }

    /// Emits router-made replies that have reached the front of the queue.
    pub(crate) fn flush_locals(&mut self) {
        if let Some(a) = self.attached.as_mut() {
            while let Some(Expect::Local(_)) = a.expects.front() {
                if let Some(Expect::Local(b)) = a.expects.pop_front() {
                    self.out.extend_from_slice(&b);
                }
            }
        }
    }

    /// A statement completed: SET/RESET become pending until their transaction (explicit,
    /// or the implicit one of a multi-statement Query or an extended-protocol batch)
    /// ends; COMMIT and ROLLBACK settle them.
    fn statement_done(&mut self, cmd: SessionCommand, frame: &Frame) {
        match cmd {
            SessionCommand::Set { .. }
            | SessionCommand::Reset { .. }
            | SessionCommand::ResetAll => {
                self.txn.vars.push(cmd);
            }
            SessionCommand::Commit => {
                // COMMIT of a failed transaction reports ROLLBACK.
                let committed = decode_command_tag(frame).is_ok_and(|t| t.starts_with("COMMIT"));
                let pending = std::mem::take(&mut self.txn.vars);
                if committed {
                    for c in &pending {
                        self.vars.apply(c);
                    }
                }
            }
            SessionCommand::Rollback => self.txn.vars.clear(),
            SessionCommand::Prepare { name, body } => {
                // A PREPARE run through the extended protocol: recorded once it
                // succeeded (PREPARE is not transactional).
                let key = crate::backend::StmtKey {
                    sql: body.clone(),
                    param_types: Vec::new(),
                };
                let digest = key.digest();
                let catalog = self.ctx.catalog.current();
                let plan = match pgshard_sql::plan(&body, &catalog).route {
                    pgshard_sql::Route::Router(pgshard_sql::RouterCommand::Prepare {
                        plan,
                        ..
                    }) => *plan,
                    _ => return,
                };
                if let Some(a) = self.attached.as_mut() {
                    a.conn.sql_prepared.insert(name.clone(), digest);
                }
                self.sql_prepared.insert(
                    name,
                    std::sync::Arc::new(super::SqlPrepared {
                        text: body,
                        digest,
                        plan,
                        catalog_version: Some(catalog.version),
                    }),
                );
            }
            _ => {}
        }
    }

    /// Session state and transaction bookkeeping at a ReadyForQuery.
    fn after_ready(&mut self, status: u8, prepare: Option<String>, failed: bool, forward: bool) {
        if let (Some(name), true) = (prepare, failed) {
            self.sql_prepared.remove(&name);
            if let Some(a) = self.attached.as_mut() {
                a.conn.sql_prepared.remove(&name);
            }
        }
        if status == b'I' {
            // The implicit transaction ended: committed unless it failed.
            let pending = std::mem::take(&mut self.txn.vars);
            if !failed {
                for c in &pending {
                    self.vars.apply(c);
                }
            }
            if forward {
                self.end_answered_portals();
            } else {
                // The router's own Sync (before a statement it runs itself, or a
                // move to another shard) ends the backend's portals only.
                self.drop_backend_portals();
            }
            if self.shard_override.is_some_and(|(_, local)| local) {
                self.shard_override = None;
            }
        }
        // The backend now carries the session's state plus what is pending on it.
        if let Some(a) = self.attached.as_mut() {
            a.conn.state_fp = if self.txn.vars.is_empty() {
                self.vars.fingerprint()
            } else {
                u64::MAX
            };
        }
    }
}

fn forwards_rows(a: &Attached) -> bool {
    match a.expects.front() {
        Some(Expect::Query { forward, .. }) => *forward,
        _ => true,
    }
}

fn skip_to_sync(a: &mut Attached, skip_until_sync: &mut bool) {
    a.failed_since_sync = true;
    loop {
        match a.expects.front() {
            Some(Expect::Sync { forward }) => {
                // Our own Sync ends the server's skipping, not the client's.
                if !*forward {
                    *skip_until_sync = true;
                }
                return;
            }
            Some(Expect::Query { .. }) => return,
            None => {
                *skip_until_sync = true;
                return;
            }
            Some(_) => {
                if let Some(e) = a.expects.pop_front() {
                    match e {
                        Expect::Parse {
                            digest: Some(d), ..
                        } => {
                            a.conn.prepared.remove(&d);
                        }
                        Expect::Parse { digest: None, .. } => a.conn.unnamed = None,
                        _ => {}
                    }
                }
            }
        }
    }
}

fn unexpected(a: &mut Attached, _got: Option<Expect>, tag: u8) -> Result<(), SessionError> {
    tracing::error!(tag = %(tag as char), shard = %a.shard, "backend reply does not match what was sent");
    a.conn.broken = true;
    Err(SessionError::LostBackend { shard: a.shard })
}

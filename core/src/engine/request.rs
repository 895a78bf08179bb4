//! Requests: EXEC and QUERY classified by their first statement; reads run at once on the
//! session's own connection (a query's rows in batches, with a cursor for the rest), writes go
//! to the write queue (`queue.rs`).

use super::{
    Cursor, Engine, OwnedTarget, Reply, Response, Session, SessionId, Slot, Target, Txn, Work,
    AD_HOC_STATEMENT,
};
use crate::error::ExecError;
use crate::lifecycle::WriteState;
use crate::sql;
use crate::stmt::{RawStmt, Step};
use crate::value::{Rows, Value};
use crate::vfs::Conn;

impl Engine {
    /// Executes `target` for the session (SQL with parameters, or a prepared statement).
    /// Reads run at once; writes go through the database's write slot and are answered after
    /// their command is applied.
    pub fn exec(
        &mut self,
        session: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
    ) -> Result<Reply, ExecError> {
        let reply = self.request(session, database, target, params, false);
        self.note_result(database, reply.as_ref().err());
        reply
    }

    /// Runs a query for the session. A read-only query answers with its first batch of rows
    /// (more with [`Engine::query_next`]); a query that writes (`INSERT … RETURNING`) takes the
    /// write path and answers with all its rows once applied.
    pub fn query(
        &mut self,
        session: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
    ) -> Result<Reply, ExecError> {
        let reply = self.request(session, database, target, params, true);
        self.note_result(database, reply.as_ref().err());
        reply
    }

    /// The next batch of rows of the session's unfinished query.
    pub fn query_next(&mut self, session: SessionId) -> Result<Rows, ExecError> {
        let batch = self.config.batch_bytes;
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        let cursor = session.cursor.take().ok_or(ExecError::NoQuery)?;
        let sdb = session
            .databases
            .get_mut(&cursor.database)
            .ok_or(ExecError::NoQuery)?;
        let statement = sdb.conn.kept(cursor.statement).ok_or(ExecError::NoQuery)?;
        let (response, more) = match collect_rows(statement, true, Some(batch), || (0, 0)) {
            Ok(rows) => rows,
            Err(error) => {
                let database = cursor.database;
                self.note_result(&database, Some(&error));
                return Err(error);
            }
        };
        if more {
            session.cursor = Some(cursor);
        } else if cursor.statement == AD_HOC_STATEMENT {
            sdb.conn.forget(AD_HOC_STATEMENT);
        }
        match response {
            Response::Rows(rows) => Ok(rows),
            Response::Exec { .. } => unreachable!("a cursor is a query"),
        }
    }

    /// Abandons the session's unfinished query, if any.
    pub(super) fn drop_cursor(session: &mut Session) {
        if let Some(cursor) = session.cursor.take() {
            if let Some(sdb) = session.databases.get_mut(&cursor.database) {
                if cursor.statement == AD_HOC_STATEMENT {
                    sdb.conn.forget(AD_HOC_STATEMENT);
                } else if let Some(statement) = sdb.conn.kept(cursor.statement) {
                    statement.reset();
                }
            }
        }
    }

    fn request(
        &mut self,
        id: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
        query: bool,
    ) -> Result<Reply, ExecError> {
        let batch = self.config.batch_bytes;
        let applied_index = self.applied_index;
        let now = self.now;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(ExecError::UnknownSession)?;
        match &session.state {
            WriteState::Idle => {}
            WriteState::Transaction { database: held } if held == database => {}
            WriteState::Transaction { .. } => {
                // A transaction on another database holds a slot; allow requests elsewhere.
            }
            _ => return Err(ExecError::RequestInProgress),
        }
        Self::drop_cursor(session);
        let db = self
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        db.used_at = now;
        if db.recovering_until > applied_index {
            return Err(ExecError::Recovering {
                index: db.recovering_until,
            });
        }
        let sdb = session
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        if let Some(reason) = sdb.aborted.take() {
            return Err(ExecError::Aborted(reason));
        }
        // Opened while the database was being recovered: its settings read the schema now.
        sdb.conn.configure()?;
        let owned = match target {
            Target::Sql(sql) => OwnedTarget::Sql(sql.to_string()),
            Target::Statement(statement) => {
                if sdb.conn.kept(statement).is_none() {
                    return Err(ExecError::UnknownStatement(statement));
                }
                OwnedTarget::Statement(statement)
            }
        };
        if sdb.txn == Txn::Write {
            // The session's own transaction holds the slot: run on its connection.
            session.state.transition(WriteState::Executing {
                database: database.to_string(),
            });
            let result = run_target(&mut sdb.conn, &owned, params, query, None);
            self.after_session_statement(id, database, result.map(|(r, _)| r));
            return self.take_reply(id);
        }
        // Classify by the first statement, prepared on the session's connection, asking
        // SQLite (`sql.rs`).
        let (class, single) = match &owned {
            OwnedTarget::Statement(statement) => {
                let statement = sdb.conn.kept(*statement).expect("checked");
                (sql::classify(statement)?, true)
            }
            OwnedTarget::Sql(sql) => {
                let (statement, used) = sdb.conn.prepare_one(sql)?;
                let Some(mut statement) = statement else {
                    return Ok(Reply::Done(Response::Exec {
                        last_insert_id: sdb.conn.last_insert_rowid(),
                        rows_changed: 0,
                    }));
                };
                let single = sql[used.min(sql.len())..]
                    .trim_matches(|c: char| c.is_whitespace() || c == ';')
                    .is_empty();
                let class = sql::classify(&mut statement)?;
                // Kept for the read path, which then runs it without preparing it again.
                sdb.conn.keep(AD_HOC_STATEMENT, statement);
                (class, single)
            }
        };
        if class.readonly && single && !class.takes_write_lock {
            // Reads, BEGIN [DEFERRED], COMMIT/ROLLBACK of a read transaction: no write slot.
            let owned = match owned {
                OwnedTarget::Sql(_) => OwnedTarget::Statement(AD_HOC_STATEMENT),
                statement => statement,
            };
            let result = run_target(&mut sdb.conn, &owned, params, query, Some(batch));
            if !matches!(result, Ok((_, true))) {
                sdb.conn.forget(AD_HOC_STATEMENT);
            }
            sdb.txn = if sdb.conn.is_autocommit() {
                Txn::None
            } else if sdb.txn == Txn::None {
                sdb.txn_since = now;
                Txn::Read
            } else {
                sdb.txn
            };
            let (response, more) = result?;
            if more {
                let OwnedTarget::Statement(statement) = owned else {
                    unreachable!("SQL text runs as the ad-hoc statement")
                };
                session.cursor = Some(Cursor {
                    database: database.to_string(),
                    statement,
                });
            }
            return Ok(Reply::Done(response));
        }
        sdb.conn.forget(AD_HOC_STATEMENT);
        if !matches!(session.state, WriteState::Idle) {
            // Its explicit transaction holds another database's write slot.
            return Err(ExecError::Limit(
                "one write at a time per session: finish the open transaction first",
            ));
        }
        let work = Work {
            target: owned,
            params: params.to_vec(),
            query,
            // Text of several statements may hold transaction control past the first (see
            // `sql.rs`): it runs alone too.
            alone: sdb.txn == Txn::Read
                || class.takes_write_lock
                || class.transaction_control
                || !single,
        };
        self.enqueue(id, database, work)?;
        if matches!(self.databases[database].slot, Slot::Free) {
            // With commands in flight it waits for `run_queued`, with whatever else arrives
            // meanwhile: one group, one command.
            self.pump(database);
        }
        self.take_reply(id)
    }

    /// The reply for a request that went through the write slot: still queued, proposed, or
    /// finished (its completion is taken back out of the outbox).
    fn take_reply(&mut self, id: SessionId) -> Result<Reply, ExecError> {
        let session = self.sessions.get(&id).ok_or(ExecError::UnknownSession)?;
        match &session.state {
            WriteState::Queued { .. } => return Ok(Reply::Queued),
            WriteState::Proposed { proposal, .. } => {
                return Ok(Reply::Proposed {
                    proposal: *proposal,
                })
            }
            _ => {}
        }
        let Some(position) = self.completions.iter().rposition(|c| c.session == id) else {
            // A member of a chain that another session's transaction continues: answered with
            // the chain's command (a completion) once that transaction ends.
            assert!(
                matches!(session.state, WriteState::Executing { .. }),
                "a finished request left its completion"
            );
            return Ok(Reply::Queued);
        };
        let completion = self.completions.remove(position);
        completion.result.map(Reply::Done)
    }
}

/// The error of an EXEC whose statement yields rows (the newest dqlite's code and text).
fn rows_in_exec() -> ExecError {
    ExecError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some("rows yielded when none expected for EXEC request".to_string()),
    ))
}

fn collect_rows(
    statement: &mut RawStmt,
    query: bool,
    batch: Option<usize>,
    conn_result: impl Fn() -> (i64, u64),
) -> Result<(Response, bool), ExecError> {
    let columns = statement.column_count();
    let mut rows = Rows::default();
    if query {
        rows.columns = (0..columns).map(|i| statement.column_name(i)).collect();
        rows.declared_types = (0..columns).map(|i| statement.column_decltype(i)).collect();
    }
    let mut bytes = 0usize;
    loop {
        match statement.step() {
            Ok(Step::Row) => {
                if !query {
                    // As the newest dqlite answers: EXEC is for statements without rows.
                    statement.reset();
                    return Err(rows_in_exec());
                }
                for column in 0..columns {
                    let value = statement.column_value(column);
                    bytes += value.size_bytes();
                    rows.values.push(value);
                }
                if batch.is_some_and(|limit| bytes >= limit) {
                    return Ok((Response::Rows(rows), true));
                }
            }
            Ok(Step::Done) => break,
            Err(error) => {
                statement.reset();
                return Err(error.into());
            }
        }
    }
    statement.reset();
    if query {
        rows.done = true;
        return Ok((Response::Rows(rows), false));
    }
    let (last_insert_id, rows_changed) = conn_result();
    Ok((
        Response::Exec {
            last_insert_id,
            rows_changed,
        },
        false,
    ))
}

/// Runs `target` on `conn`: every statement of SQL text in order (parameters bind to the
/// first), or a prepared statement. A read query returns its first batch and may leave a cursor
/// (the bool); other statements run to completion.
pub(super) fn run_target(
    conn: &mut Conn,
    target: &OwnedTarget,
    params: &[Value],
    query: bool,
    batch: Option<usize>,
) -> Result<(Response, bool), ExecError> {
    let connection_result = |conn: &Conn| (conn.last_insert_rowid(), conn.changes());
    match target {
        OwnedTarget::Statement(id) => {
            let statement = conn.kept(*id).ok_or(ExecError::UnknownStatement(*id))?;
            let batch = if statement.readonly() { batch } else { None };
            statement
                .bind_all(params)
                .inspect_err(|_| statement.reset())?;
            let outcome = collect_rows(statement, query, batch, || (0, 0))?;
            Ok(fill_exec(outcome, connection_result(conn)))
        }
        OwnedTarget::Sql(text) if batch.is_none() && conn.is_cached(text) => {
            // A single statement this connection ran before: no parsing again (the hot path of
            // autocommit writes).
            let statement = conn.cached(text)?;
            statement
                .bind_all(params)
                .inspect_err(|_| statement.reset())?;
            let outcome = collect_rows(statement, query, None, || (0, 0))?;
            Ok(fill_exec(outcome, connection_result(conn)))
        }
        OwnedTarget::Sql(text) => {
            let mut offset = 0;
            let mut first = true;
            let mut last = (
                Response::Exec {
                    last_insert_id: conn.last_insert_rowid(),
                    rows_changed: 0,
                },
                false,
            );
            while offset < text.len() {
                let (statement, used) = conn.prepare_one(&text[offset..])?;
                offset += used.max(1);
                let Some(statement) = statement else {
                    break;
                };
                let is_last = text[offset.min(text.len())..]
                    .trim_matches(|c: char| c.is_whitespace() || c == ';')
                    .is_empty();
                if first && is_last && batch.is_none() {
                    conn.cache(text, statement);
                    return run_target(conn, target, params, query, batch);
                }
                conn.keep(AD_HOC_STATEMENT, statement);
                let statement = conn.kept(AD_HOC_STATEMENT).expect("just kept");
                let batch = if is_last && statement.readonly() {
                    batch
                } else {
                    None
                };
                let values: &[Value] = if first { params } else { &[] };
                first = false;
                statement
                    .bind_all(values)
                    .inspect_err(|_| statement.reset())?;
                let outcome = collect_rows(statement, query, batch, || (0, 0));
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        conn.forget(AD_HOC_STATEMENT);
                        return Err(error);
                    }
                };
                last = fill_exec(outcome, connection_result(conn));
                if last.1 {
                    // A cursor stays open on the ad-hoc statement.
                    return Ok(last);
                }
                conn.forget(AD_HOC_STATEMENT);
            }
            Ok(last)
        }
    }
}

fn fill_exec(outcome: (Response, bool), result: (i64, u64)) -> (Response, bool) {
    match outcome {
        (Response::Exec { .. }, more) => (
            Response::Exec {
                last_insert_id: result.0,
                rows_changed: result.1,
            },
            more,
        ),
        other => other,
    }
}

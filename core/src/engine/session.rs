//! Sessions: the host's clock, client sessions opened and closed, the databases a session
//! opens (each on a connection of its own), and the statements it keeps prepared.

use std::collections::HashMap;

use super::{
    Engine, Session, SessionDb, SessionId, Slot, Txn, AD_HOC_STATEMENT, DATABASES_TOTAL_MAX,
};
use crate::command::validate_database_name;
use crate::error::{EngineError, ExecError};
use crate::lifecycle::WriteState;
use crate::vfs::{Conn, Role};

impl Engine {
    /// Tells the engine the host's current time and fails queued writers that waited longer
    /// than `queue_wait_max`, or longer than `transaction_wait_max` behind another session's
    /// explicit transaction (their completions come out of [`Engine::take_completions`]).
    pub fn set_time(&mut self, now: u64) {
        self.now = now;
        let wait_max = self.config.queue_wait_max;
        let transaction_wait_max = self.config.transaction_wait_max;
        let mut expired = Vec::new();
        for database in self.databases.values_mut() {
            let held_since = match database.slot {
                Slot::Transaction(_) => Some(database.transaction_since),
                _ => None,
            };
            database.queue.retain(|waiter| {
                let waited = now.saturating_sub(waiter.since);
                if waited >= wait_max {
                    expired.push((waiter.session, ExecError::Timeout { waited }));
                    return false;
                }
                if let Some(held_since) = held_since {
                    let behind = now.saturating_sub(waiter.since.max(held_since));
                    if behind >= transaction_wait_max {
                        expired.push((waiter.session, ExecError::Locked { waited: behind }));
                        return false;
                    }
                }
                true
            });
        }
        for (session, error) in expired {
            self.complete(session, Err(error));
        }
        self.expire_transactions();
    }

    /// Opens a session.
    pub fn open_session(&mut self) -> Result<SessionId, ExecError> {
        if self.sessions.len() >= self.config.sessions_max {
            return Err(ExecError::Limit("sessions"));
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                state: WriteState::Idle,
                databases: HashMap::new(),
                statements: HashMap::new(),
                next_statement: 1,
                statement_bytes: 0,
                cursor: None,
            },
        );
        Ok(id)
    }

    /// Closes a session: an open transaction is rolled back and its write slot released, a
    /// queued request leaves the queue, and a proposed write still completes (unanswered).
    pub fn close_session(&mut self, id: SessionId) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let mut freed = Vec::new();
        match &session.state {
            WriteState::Queued { database, .. } => {
                if let Some(db) = self.databases.get_mut(database) {
                    db.queue.retain(|w| w.session != id);
                }
            }
            WriteState::Transaction { database } => {
                if let Some(sdb) = session.databases.get_mut(database) {
                    sdb.conn.rollback();
                }
                if let Some(db) = self.databases.get_mut(database) {
                    db.slot = Slot::Free;
                    freed.push(database.clone());
                }
            }
            WriteState::Idle | WriteState::Proposed { .. } | WriteState::Executing { .. } => {}
        }
        for sdb in session.databases.values() {
            sdb.conn.rollback();
        }
        drop(session);
        for database in freed {
            // What the chain committed before the transaction still goes.
            let db = self.databases.get_mut(&database).expect("listed");
            let members = std::mem::take(&mut db.chain_members);
            self.end_chain(&database, members);
            self.pump(&database);
        }
    }

    /// Opens database `name` for the session, creating it (empty) if the node has none.
    pub fn open_database(&mut self, session: SessionId, name: &str) -> Result<(), ExecError> {
        validate_database_name(name).map_err(ExecError::BadDatabaseName)?;
        if !self.sessions.contains_key(&session) {
            return Err(ExecError::UnknownSession);
        }
        if !self.databases.contains_key(name) {
            let exec = |error| match error {
                EngineError::Io(error) => ExecError::Io(error),
                EngineError::Sqlite(error) => ExecError::Sqlite(error),
                other => ExecError::Io(std::io::Error::other(other.to_string())),
            };
            if !self.make_room().map_err(exec)? {
                return Err(ExecError::TooManyDatabases {
                    databases_max: self.config.databases_max,
                });
            }
            if !self.reopen(name).map_err(exec)? {
                if self.databases.len() + self.closed.len() >= DATABASES_TOTAL_MAX {
                    return Err(ExecError::Limit(
                        "databases: a node holds at most 4096 (what a snapshot carries)",
                    ));
                }
                self.create_database(name, self.applied_index)
                    .map_err(exec)?;
            }
        }
        let now = self.now;
        self.databases.get_mut(name).expect("open").used_at = now;
        let path = self.databases[name].path.clone();
        let recovering = self.databases[name].recovering_until > self.applied_index;
        let session = self.sessions.get_mut(&session).expect("checked");
        if session.databases.contains_key(name) {
            return Ok(());
        }
        let conn = if recovering {
            // Its main file may hold a mix of states until the log is replayed: the schema is
            // read once it holds together (`Conn::configure`, before the first statement).
            Conn::open_deferred(&self.vfs, &path, Role::Capture, None)?
        } else {
            Conn::open(&self.vfs, &path, Role::Capture, None)?
        };
        session.databases.insert(
            name.to_string(),
            SessionDb {
                conn,
                txn: Txn::None,
                txn_since: 0,
                aborted: None,
            },
        );
        Ok(())
    }

    /// Prepares the first statement of `sql` on the session's connection to `database`; returns
    /// its id and parameter count.
    pub fn prepare(
        &mut self,
        session: SessionId,
        database: &str,
        sql: &str,
    ) -> Result<(u32, usize), ExecError> {
        let statements_max = self.config.statements_max;
        let statement_bytes_max = self.config.statement_bytes_max;
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        if session.statements.len() >= statements_max {
            return Err(ExecError::Limit("prepared statements per session"));
        }
        let sdb = session
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        let recovering_until = self
            .databases
            .get(database)
            .map_or(0, |db| db.recovering_until);
        if recovering_until > self.applied_index {
            return Err(ExecError::Recovering {
                index: recovering_until,
            });
        }
        sdb.conn.configure()?;
        let (statement, used) = sdb.conn.prepare_one(sql)?;
        let statement = statement.ok_or_else(|| misuse("no SQL statement to prepare"))?;
        let bytes = used.min(sql.len());
        if session.statement_bytes.saturating_add(bytes) > statement_bytes_max {
            return Err(ExecError::Limit(
                "bytes of SQL prepared per session (finalize statements first)",
            ));
        }
        session.statement_bytes += bytes;
        let parameters = statement.parameter_count();
        let id = session.next_statement;
        session.next_statement = session.next_statement.wrapping_add(1).max(1);
        if session.next_statement == AD_HOC_STATEMENT {
            session.next_statement = 1;
        }
        sdb.conn.keep(id, statement);
        session.statements.insert(id, database.to_string());
        Ok((id, parameters))
    }

    /// Finalizes a prepared statement.
    pub fn finalize(&mut self, session: SessionId, statement: u32) -> Result<(), ExecError> {
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        let database = session
            .statements
            .remove(&statement)
            .ok_or(ExecError::UnknownStatement(statement))?;
        if session
            .cursor
            .as_ref()
            .is_some_and(|c| c.statement == statement)
        {
            session.cursor = None;
        }
        if let Some(sdb) = session.databases.get_mut(&database) {
            if let Some(kept) = sdb.conn.kept(statement) {
                let bytes = kept.sql().len();
                session.statement_bytes = session.statement_bytes.saturating_sub(bytes);
            }
            sdb.conn.forget(statement);
        }
        Ok(())
    }
}

fn misuse(message: &str) -> ExecError {
    ExecError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(message.to_string()),
    ))
}

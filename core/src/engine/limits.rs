//! Guards that keep one client or one bad file from hurting the rest of the node: transactions
//! held open too long, corrupt databases (checked at open, and noticed when SQLite says so).
//!
//! - A client transaction (a read snapshot or the write slot) open longer than
//!   `transaction_time_max` is rolled back in [`Engine::set_time`]: a reader would otherwise keep
//!   checkpoints (and so snapshots and log compaction) waiting forever, a writer every other
//!   writer. The session's next request on that database fails with [`ExecError::Aborted`];
//!   what other sessions' requests of the chain it continued committed still goes.
//! - At [`Engine::open`], `PRAGMA quick_check` runs on each database while the wall-clock budget
//!   `open_check_budget` lasts (a progress handler interrupts it); a database whose check fails
//!   is marked corrupt, one that is not checked in time is logged. Any statement that fails with
//!   `SQLITE_CORRUPT` or `SQLITE_NOTADB` marks its database corrupt too. A corrupt database
//!   refuses writes ([`ExecError::Corrupt`]), so a leader never replicates pages computed from a
//!   broken page; an open write transaction on it (and the chain it continues) is rolled back
//!   at the next `set_time`, and the rest of a chain stops once a member finds it. Reads
//!   go on (SQLite answers what it can), applies from the leader go on (they carry whole pages).
//!   Each database found corrupt is reported once through [`Engine::take_corrupt_found`] so
//!   that the host can repair the node; a header page damaged so badly that the database cannot
//!   be opened fails [`Engine::open`] with [`crate::EngineError::CorruptDatabase`].

use std::time::{Duration, Instant};

use super::{Engine, Slot, Txn};
use crate::error::ExecError;
use crate::lifecycle::WriteState;

/// Default for `EngineConfig::statement_bytes_max`: SQL text kept prepared per session.
pub const STATEMENT_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default for `EngineConfig::databases_max`.
pub const DATABASES_MAX_DEFAULT: usize = 1024;
/// The most databases a node holds, open or closed: what one snapshot may carry.
pub(crate) const DATABASES_TOTAL_MAX: usize = 4096;
/// Default for `EngineConfig::open_check_budget`.
pub const OPEN_CHECK_BUDGET_DEFAULT: Duration = Duration::from_secs(2);
/// SQLite virtual-machine steps between two looks at the clock during an open-time check.
const CHECK_PROGRESS_STEPS: i32 = 1000;

/// Whether `error` is SQLite saying that the database file is damaged.
pub(super) fn is_corruption(error: &ExecError) -> bool {
    match error {
        ExecError::Sqlite(error) => is_sqlite_corruption(error),
        _ => false,
    }
}

/// Whether SQLite's `error` says that the database file is damaged.
pub(super) fn is_sqlite_corruption(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(error, _) => matches!(
            error.extended_code & 0xff,
            rusqlite::ffi::SQLITE_CORRUPT | rusqlite::ffi::SQLITE_NOTADB
        ),
        _ => false,
    }
}

impl Engine {
    /// Rolls back client transactions open longer than `transaction_time_max`, and write
    /// transactions on databases found corrupt.
    pub(super) fn expire_transactions(&mut self) {
        let time_max = self.config.transaction_time_max;
        let now = self.now;
        let mut expired = Vec::new();
        for (&id, session) in &self.sessions {
            if !matches!(
                session.state,
                WriteState::Idle | WriteState::Transaction { .. }
            ) {
                continue;
            }
            for (name, sdb) in &session.databases {
                if sdb.txn == Txn::None {
                    continue;
                }
                let corrupt = sdb.txn == Txn::Write
                    && self
                        .databases
                        .get(name)
                        .is_some_and(|db| db.corrupt.is_some());
                let held = now.saturating_sub(sdb.txn_since);
                if corrupt {
                    expired.push((id, name.clone(), "the database is corrupt".to_string()));
                } else if time_max > 0 && held >= time_max {
                    let reason = format!(
                        "the transaction stayed open {held} (limit {time_max}; \
                         atoll start --transaction-timeout-ms)"
                    );
                    expired.push((id, name.clone(), reason));
                }
            }
        }
        for (id, database, reason) in expired {
            log::warn!("session {}: {database:?}: rolling back: {reason}", id.0);
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if session
                .cursor
                .as_ref()
                .is_some_and(|cursor| cursor.database == database)
            {
                Self::drop_cursor(session);
            }
            let Some(sdb) = session.databases.get_mut(&database) else {
                continue;
            };
            let holds_slot = matches!(
                self.databases.get(&database).map(|db| &db.slot),
                Some(Slot::Transaction(holder)) if *holder == id
            );
            if holds_slot && self.databases[&database].corrupt.is_some() {
                // Nothing more is replicated from it: the chain the transaction continues
                // (statements of other sessions that ran before it) is discarded too.
                self.abort_local_writes(&database, &reason);
                self.pump(&database);
            } else if holds_slot {
                // As when its session closes: the transaction is rolled back, what the chain
                // committed before it still goes.
                sdb.conn.rollback();
                sdb.txn = Txn::None;
                sdb.aborted = Some(reason);
                session.state.transition(WriteState::Idle);
                let db = self.databases.get_mut(&database).expect("holds its slot");
                db.slot = Slot::Free;
                let members = std::mem::take(&mut db.chain_members);
                self.end_chain(&database, members);
                self.pump(&database);
            } else {
                sdb.conn.rollback();
                sdb.txn = Txn::None;
                sdb.aborted = Some(reason);
            }
        }
    }

    /// Marks `database` corrupt if `error` says its file is damaged.
    pub(super) fn note_result(&mut self, database: &str, error: Option<&ExecError>) {
        let Some(error) = error.filter(|error| is_corruption(error)) else {
            return;
        };
        self.mark_corrupt(database, &error.client_message());
    }

    /// Refuses writes to `database` from now on (logged once).
    pub(super) fn mark_corrupt(&mut self, database: &str, reason: &str) {
        let Some(db) = self.databases.get_mut(database) else {
            return;
        };
        if db.corrupt.is_none() {
            log::error!(
                "database {database:?} is corrupt ({reason}): refusing writes to it until it \
                 is repaired"
            );
            db.corrupt = Some(reason.to_string());
            self.corrupt_found
                .push((database.to_string(), reason.to_string()));
        }
    }

    /// The databases found corrupt since the last call, with what was found (each once): the
    /// host repairs the node from its peers (`atoll-node`, `repair.rs`). A database that could
    /// not even be reopened (its header damaged) is among them, though it stays closed.
    pub fn take_corrupt_found(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.corrupt_found)
    }

    /// `PRAGMA quick_check` of `database`, interrupted at `deadline`. Returns false if it was
    /// not finished in time.
    pub(super) fn check_at_open(&mut self, database: &str, deadline: Instant) -> bool {
        let Some(db) = self.databases.get_mut(database) else {
            return true;
        };
        if Instant::now() >= deadline {
            return false;
        }
        let connection = db.control.connection_mut();
        let _ = connection.progress_handler(
            CHECK_PROGRESS_STEPS,
            Some(move || Instant::now() >= deadline),
        );
        let started = Instant::now();
        let result = connection
            .prepare("PRAGMA quick_check(10)")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            });
        let _ = connection.progress_handler(0, None::<fn() -> bool>);
        match result {
            Ok(lines) if lines.len() == 1 && lines[0] == "ok" => {
                log::debug!(
                    "database {database:?}: quick_check ok in {:?}",
                    started.elapsed()
                );
                true
            }
            Ok(lines) => {
                self.mark_corrupt(database, &format!("quick_check: {}", lines.join("; ")));
                true
            }
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                false
            }
            Err(error) => {
                let error = ExecError::Sqlite(error);
                if is_corruption(&error) {
                    self.mark_corrupt(
                        database,
                        &format!("quick_check: {}", error.client_message()),
                    );
                } else {
                    log::warn!("database {database:?}: quick_check failed: {error}");
                }
                true
            }
        }
    }

    /// The databases found corrupt, with what was found (for status reports), the closed ones
    /// that could not be opened again among them.
    pub fn corrupt_databases(&self) -> Vec<(String, String)> {
        let open = self
            .databases
            .iter()
            .filter_map(|(name, db)| Some((name.clone(), db.corrupt.clone()?)));
        let closed = self
            .closed
            .iter()
            .filter_map(|(name, closed)| Some((name.clone(), closed.corrupt.clone()?)));
        open.chain(closed).collect()
    }
}

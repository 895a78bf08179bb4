//! Closing idle databases, so that the databases a node holds are not bounded by its open-file
//! limit: only `databases_max` are open at once (two descriptors and a control connection each,
//! besides the connections of the sessions that use it).
//!
//! A database is *idle* when no session has it open, its write slot is free (no chain, no
//! session transaction) and its queue empty, no snapshot reads it, no checkpoint sync is
//! pending, it is not recovering and not corrupt (kept open so that its state stays visible).
//! To close it the engine first makes its WAL empty (a forced `TRUNCATE` checkpoint: the
//! wal-index lives only in memory, so a closed database must need none), then drops its
//! connection and files and keeps only what its record says ([`Closed`]). Opening a session
//! on it, or applying a command to it, opens it again; so does a snapshot (all of them, for
//! its duration) or a DUMP. Recovery at start opens at most `databases_max` databases and
//! leaves the others closed, so a restart never needs more descriptors than the limit allows.
//!
//! Room is made when a new database must be opened: the least recently used idle one is
//! closed. When none is idle, a session's OPEN fails with `TooManyDatabases`; `apply` never
//! fails for it (the limit is then exceeded until databases become idle again).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Engine, Slot};
use crate::error::EngineError;
use crate::record::Record;

/// What the engine keeps of a closed database.
#[derive(Debug, Clone)]
pub(super) struct Closed {
    /// Its main file.
    pub(super) path: PathBuf,
    /// Its record as the engine knows it (the checkpoint index may come from an idle mark).
    pub(super) record: Record,
    /// The last command applied to it.
    pub(super) last_command_index: u64,
    /// As `Database::idle_mark`.
    pub(super) idle_mark: u64,
    /// As `Database::snapshot_token`: a snapshot reading the closed database holds a clone,
    /// which moves to the database when it is opened again (its checkpoints then wait).
    pub(super) snapshot_token: Arc<()>,
    /// Why it could not be opened again (its header page is damaged), once found: reported
    /// once through `Engine::take_corrupt_found`; it stays closed.
    pub(super) corrupt: Option<String>,
}

impl Engine {
    /// The open databases that may be closed now (their WAL aside), least recently used first.
    fn idle_databases(&self) -> Vec<String> {
        let held: HashSet<&str> = self
            .sessions
            .values()
            .flat_map(|s| s.databases.keys().map(String::as_str))
            .collect();
        let mut idle: Vec<(u64, &String)> = self
            .databases
            .iter()
            .filter(|(name, db)| {
                matches!(db.slot, Slot::Free)
                    && db.chain_members.is_empty()
                    && db.queue.is_empty()
                    && Arc::strong_count(&db.snapshot_token) == 1
                    && !db.sync_pending
                    && db.recovering_until <= self.applied_index
                    && db.corrupt.is_none()
                    && !held.contains(name.as_str())
            })
            .map(|(name, db)| (db.used_at, name))
            .collect();
        idle.sort();
        idle.into_iter().map(|(_, name)| name.clone()).collect()
    }

    /// Closes least recently used idle databases until fewer than `databases_max` are open.
    /// Returns whether there is room for one more.
    pub(super) fn make_room(&mut self) -> Result<bool, EngineError> {
        if self.databases.len() < self.config.databases_max {
            return Ok(true);
        }
        for name in self.idle_databases() {
            if self.close(&name)? && self.databases.len() < self.config.databases_max {
                return Ok(true);
            }
        }
        Ok(self.databases.len() < self.config.databases_max)
    }

    /// Empties the WAL of the idle database `name` and closes it; false if its WAL could not
    /// be emptied.
    fn close(&mut self, name: &str) -> Result<bool, EngineError> {
        let frames = self.databases[name]
            .files
            .index_header()?
            .map_or(0, |h| h.max_frame);
        if frames > 0 && !self.checkpoint_database(name, true)? {
            return Ok(false);
        }
        let frames = self.databases[name]
            .files
            .index_header()?
            .map_or(0, |h| h.max_frame);
        if frames > 0 {
            return Ok(false);
        }
        let db = self.databases.remove(name).expect("known database");
        let closed = Closed {
            path: db.path.clone(),
            record: db.record,
            last_command_index: db.last_command_index,
            idle_mark: db.idle_mark,
            snapshot_token: Arc::clone(&db.snapshot_token),
            corrupt: None,
        };
        let path = db.path.clone();
        drop(db);
        self.vfs.remove_database(&path);
        self.closed.insert(name.to_string(), closed);
        log::debug!("closed idle database {name:?}");
        Ok(true)
    }

    /// Opens the closed database `name` again; false if it is not a closed one.
    pub(crate) fn reopen(&mut self, name: &str) -> Result<bool, EngineError> {
        let Some(closed) = self.closed.get(name).cloned() else {
            return Ok(false);
        };
        match self.attach_database(name, closed.record, 0) {
            Err(EngineError::Sqlite(error)) if super::limits::is_sqlite_corruption(&error) => {
                // Its header page is damaged: reported once for a repair; it stays closed.
                let closed = self.closed.get_mut(name).expect("listed above");
                if closed.corrupt.is_none() {
                    log::error!("database {name:?} is corrupt ({error}): it cannot be opened");
                    closed.corrupt = Some(error.to_string());
                    self.corrupt_found
                        .push((name.to_string(), error.to_string()));
                }
                return Err(EngineError::Sqlite(error));
            }
            other => other?,
        }
        self.closed.remove(name);
        let db = self.databases.get_mut(name).expect("attached");
        db.last_command_index = closed.last_command_index;
        db.idle_mark = closed.idle_mark;
        db.snapshot_token = closed.snapshot_token;
        db.used_at = self.now;
        log::debug!("reopened database {name:?}");
        Ok(true)
    }

    /// What a snapshot reads of the closed databases: their main files (their WAL is empty),
    /// opened one at a time as the stream reaches them.
    pub(crate) fn closed_snapshot_parts(&self) -> Vec<ClosedPart> {
        self.closed
            .iter()
            .map(|(name, closed)| ClosedPart {
                name: name.clone(),
                path: closed.path.clone(),
                page_size: closed.record.page_size,
                last_command_index: closed.last_command_index,
                token: Arc::clone(&closed.snapshot_token),
            })
            .collect()
    }
}

/// A closed database as a snapshot sees it.
pub(crate) struct ClosedPart {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) page_size: u32,
    pub(crate) last_command_index: u64,
    pub(crate) token: Arc<()>,
}

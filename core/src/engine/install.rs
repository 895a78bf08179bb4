//! What snapshots need of the engine: the parts a snapshot reads (each database's files, and a
//! token that holds its checkpoints back while the snapshot lives), and detaching every database
//! before an install replaces them, attaching them again after.

use std::path::PathBuf;
use std::sync::Arc;

use super::Engine;
use crate::error::EngineError;
use crate::lifecycle::WriteState;
use crate::vfs::DbFiles;

impl Engine {
    pub(crate) fn snapshot_parts(&self) -> Vec<SnapshotPart> {
        self.databases
            .iter()
            .map(|(name, db)| SnapshotPart {
                name: name.clone(),
                path: db.path.clone(),
                files: Arc::clone(&db.files),
                last_command_index: db.last_command_index,
                token: Arc::clone(&db.snapshot_token),
            })
            .collect()
    }

    /// The applied index from which database `name`'s files hold its state as of the applied
    /// index: past the last command they may reflect (an interrupted checkpoint's target, or the
    /// last command a checkpoint covered). `None` if it is not open.
    pub(crate) fn settled_at(&self, name: &str) -> Option<u64> {
        let db = self.databases.get(name)?;
        Some(db.recovering_until.max(db.last_command_index))
    }

    /// A database (open or closed) whose files are ahead of the applied index, with the
    /// index it settles at; `None` when every one holds its state as of the applied index.
    pub(crate) fn unsettled(&self) -> Option<(String, u64)> {
        let open = self.databases.keys().filter_map(|name| {
            let settled = self.settled_at(name)?;
            Some((name, settled))
        });
        let closed = self
            .closed
            .iter()
            .map(|(name, closed)| (name, closed.last_command_index));
        open.chain(closed)
            .find(|&(_, index)| index > self.applied_index)
            .map(|(name, index)| (name.clone(), index))
    }

    /// Drops every connection and session state of all databases and forgets them (before a
    /// snapshot replaces them). Sessions stay open but must open their databases again.
    pub(crate) fn detach_all(&mut self, reason: &str) {
        self.abandon_writes(reason);
        for session in self.sessions.values_mut() {
            session.cursor = None;
            session.statements.clear();
            session.statement_bytes = 0;
            session.databases.clear();
            if !matches!(session.state, WriteState::Idle) {
                session.state = WriteState::Idle;
            }
        }
        self.closed.clear();
        let databases = std::mem::take(&mut self.databases);
        for (_, db) in databases {
            let path = db.path.clone();
            drop(db);
            self.vfs.remove_database(&path);
        }
    }

    /// Attaches the databases in the directory again after a snapshot install, at `index`.
    pub(crate) fn reattach_after_install(&mut self, index: u64) -> Result<(), EngineError> {
        let recovery = self.recover()?;
        for database in &recovery.databases {
            assert_eq!(database.checkpoint_index, index);
        }
        self.applied_index = index;
        Ok(())
    }
}

/// One database's part of a snapshot.
pub(crate) struct SnapshotPart {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) files: Arc<DbFiles>,
    pub(crate) last_command_index: u64,
    pub(crate) token: Arc<()>,
}

/// Suffix of a database file being installed from a snapshot.
pub(crate) const SNAPSHOT_TEMP_SUFFIX: &str = "-snapshot.tmp";

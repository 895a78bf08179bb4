//! Apply: a committed command's frames appended to its database's WAL and published (on every
//! node, the leader included), the proposing sessions answered, and the applied index kept.

use super::{limits, Engine, Slot};
use crate::command::Command;
use crate::error::{Applied, EngineError};
use crate::vfs::FrameRef;

/// Capacity the apply buffer keeps between commands.
const SCRATCH_RETAINED_BYTES: usize = 2 * 1024 * 1024;

impl Engine {
    /// Applies the committed command at `index` (on every node, the leader included): its frames
    /// are appended to the database's WAL and published atomically; the page bytes are copied
    /// once, straight from `command`. If it is this node's outstanding proposal, its sessions
    /// are answered. Malformed and stale commands are rejected (before anything is written) the
    /// same way on every replica. Errors are I/O failures, after which the database stops
    /// serving until the engine is reopened, except a failed WAL write that published nothing
    /// (a full disk) and [`EngineError::CorruptDatabase`] (a closed database that cannot be
    /// opened again): nothing changed, and the host applies the same entry again later (or,
    /// for a damaged database, repairs the node from its peers).
    pub fn apply(&mut self, index: u64, command: &[u8]) -> Result<Applied, EngineError> {
        assert!(
            index > self.applied_index,
            "apply index {index} after {}",
            self.applied_index
        );
        let decoded = match Command::decode(command) {
            Ok(decoded) => decoded,
            Err(error) => {
                log::warn!("entry {index}: malformed command rejected: {error}");
                self.applied_index = index;
                return Ok(Applied::Malformed(error));
            }
        };
        let name = decoded.database;
        if !self.databases.contains_key(name) {
            // Replicated writes are never refused: past the limit, it is exceeded for a while
            // (and closing another database failing is no reason to fail this apply).
            if let Err(error) = self.make_room() {
                log::warn!("closing an idle database to open {name:?}: {error}");
            }
            match self.reopen(name) {
                Ok(true) => {}
                Ok(false) => self.create_database(name, index - 1)?,
                // A closed database whose header page is damaged (reported once through
                // `take_corrupt_found`): nothing is applied and the applied index stays.
                Err(EngineError::Sqlite(error)) if limits::is_sqlite_corruption(&error) => {
                    return Err(EngineError::CorruptDatabase {
                        database: name.to_string(),
                        reason: error.to_string(),
                    });
                }
                Err(error) => return Err(error),
            }
        }
        let now = self.now;
        let db = self.databases.get_mut(name).expect("exists");
        db.used_at = now;
        if index <= db.record.checkpoint_index {
            self.applied_index = index;
            return Ok(Applied::Skipped);
        }
        // This node's command: the first of the database's chain (Raft hands them out in the
        // order they were proposed), at the index it was proposed at once the host said. Origin
        // and proposal id alone do not identify it: proposal ids start over when the engine is
        // reopened, so an entry an earlier run of this node proposed (a duplicate proposal of an
        // old command) may carry the id of the chain's first link; it is someone else's command.
        let ours = decoded.origin == self.config.node_id
            && matches!(&db.slot, Slot::Chain(links) if {
                let first = links.front().expect("a chain is never empty");
                first.proposal == decoded.proposal && first.index.is_none_or(|at| at == index)
            });
        let stale = if decoded.page_size != db.files.page_size() {
            Some(format!(
                "page size {} differs from the database's {}",
                decoded.page_size,
                db.files.page_size()
            ))
        } else if decoded.base_index != db.last_command_index {
            Some(format!(
                "computed against command {}, but the database's last command is {}",
                decoded.base_index, db.last_command_index
            ))
        } else {
            None
        };
        if let Some(reason) = stale {
            log::warn!("entry {index}: stale command for {name:?} rejected: {reason}");
            if ours {
                // The links after it were computed on top of it: none of them can apply.
                self.fail_chain(name, &reason);
                self.pump(name);
            }
            self.applied_index = index;
            return Ok(Applied::Stale {
                database: name.to_string(),
                reason,
            });
        }
        if !ours {
            // Local state computed against the previous database state is now stale.
            self.abort_local_writes(name, "a replicated write changed the database");
        }
        let db = self.databases.get_mut(name).expect("exists");
        let frames: Vec<FrameRef<'_>> = decoded.frames().collect();
        let salt = index.to_le_bytes();
        db.files
            .append_frames(&frames, decoded.db_size_pages, salt, &mut self.scratch)?;
        // A large transaction must not pin its buffer for the life of the engine.
        self.scratch.shrink_to(SCRATCH_RETAINED_BYTES);
        db.last_command_index = index;
        self.applied_index = index;
        if ours {
            let Slot::Chain(links) = &mut db.slot else {
                unreachable!("ours is the first link of the chain")
            };
            let link = links.pop_front().expect("a chain is never empty");
            if links.is_empty() {
                db.slot = Slot::Free;
            }
            db.files.applied_link(link.proposal)?;
            for member in link.members {
                self.complete(member.session, member.result);
            }
        }
        let frame_count = decoded.frame_count();
        let database = name.to_string();
        if self.should_checkpoint(&database) {
            if let Err(error) = self.checkpoint_database(&database, false) {
                log::error!("checkpoint of {database:?} failed: {error}");
            }
        }
        self.pump(&database);
        Ok(Applied::Frames {
            database,
            frame_count,
        })
    }

    /// Records that the entry at `index` (a no-op or configuration entry) was applied.
    pub fn note_applied(&mut self, index: u64) {
        assert!(index > self.applied_index);
        self.applied_index = index;
    }

    /// The last index applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }
}

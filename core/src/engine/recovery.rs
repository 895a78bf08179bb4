//! Recovery: attaching the databases found in the directory at open (and after a snapshot
//! install), each with its WAL dropped and its checkpoint index reported, and creating new ones
//! with the canonical empty page 1.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use atoll_storage::{Disk, OpenMode};

use byteorder::{BigEndian, ByteOrder};

use super::install::SNAPSHOT_TEMP_SUFFIX;
use super::{closer, idle, limits, Database, Engine, Slot};
use crate::command::validate_database_name;
use crate::error::EngineError;
use crate::record::{self, Record};
use crate::vfs::{Conn, DbOptions, Role};

/// What recovery found for one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRecovery {
    /// The database.
    pub name: String,
    /// Its main file reflects the log up to this index: replay must start after it.
    pub checkpoint_index: u64,
    /// A checkpoint towards this index was interrupted: the database answers queries only once
    /// the log has been applied up to here (0: none).
    pub replay_through: u64,
}

/// What [`Engine::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Every database, by name.
    pub databases: Vec<DatabaseRecovery>,
}

impl Recovery {
    /// The index after which the host must replay committed commands (the minimum checkpoint
    /// index), or `None` without databases.
    pub fn replay_from(&self) -> Option<u64> {
        self.databases.iter().map(|d| d.checkpoint_index).min()
    }
}

impl Engine {
    pub(super) fn recover(&mut self) -> Result<Recovery, EngineError> {
        let disk = Arc::clone(&self.config.disk);
        let mut names = Vec::new();
        let mut others = Vec::new();
        let mut found = disk.read_dir(&self.config.dir)?;
        found.sort();
        for file_name in found {
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.ends_with(record::RECORD_TEMP_SUFFIX)
                || file_name.ends_with(SNAPSHOT_TEMP_SUFFIX)
            {
                disk.remove_file(&self.config.dir.join(file_name))?;
            } else if let Some(name) = file_name.strip_suffix(record::RECORD_SUFFIX) {
                names.push(name.to_string());
            } else if !file_name.ends_with(crate::vfs::WAL_SUFFIX) {
                others.push(file_name.to_string());
            }
        }
        names.sort();
        for other in others {
            let path = self.config.dir.join(&other);
            if validate_database_name(&other).is_ok()
                && !names.contains(&other)
                && is_sqlite_file(&*disk, &path)
            {
                // Created without its record: the creation never became durable, and no
                // checkpoint can have passed the command that created it.
                log::warn!("removing database {other:?}: it has no checkpoint record");
                disk.remove_file(&path)?;
                let _ = disk.remove_file(&crate::vfs::wal_path_of(&path));
            }
        }
        let marks = idle::read(&*disk, &self.config.dir)?;
        let mut recovery = Recovery::default();
        let check_deadline = std::time::Instant::now() + self.config.open_check_budget;
        let mut unchecked = 0usize;
        for name in names {
            let path = self.config.dir.join(&name);
            let record = record::read(&*disk, &path)?.expect("listed above");
            // Drop the WAL: committed frames come back from the Raft log.
            match disk.open(&crate::vfs::wal_path_of(&path), OpenMode::Write) {
                Ok(file) => {
                    file.set_len(0)?;
                    file.sync_all()?;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
            let main_len = disk.metadata(&path).map(|m| m.len).unwrap_or(0);
            if main_len < u64::from(record.page_size) {
                // Only a database that never held a command may lack its file: created (record
                // first) or being installed from a snapshot (record checkpoint index 0).
                let never_written = record.last_command_index == 0
                    && (record.intent_index == 0 || record.checkpoint_index == 0);
                if !never_written {
                    return Err(EngineError::CorruptRecord(format!(
                        "{}: database file missing or truncated",
                        path.display()
                    )));
                }
                match write_empty_database(&*disk, &path, record.page_size) {
                    Ok(()) => {}
                    Err(error) if record.intent_index == 0 && is_disk_full(&error) => {
                        // A creation that never finished, on a full disk: undone as a failed
                        // creation is (the node still starts). No command reached it, and no
                        // database was checkpointed past the one that created it: replay
                        // creates it again, as a session's OPEN does, once space is back.
                        let _ = disk.remove_file(&path);
                        let _ = disk.remove_file(&crate::vfs::wal_path_of(&path));
                        record::remove(&*disk, &path)?;
                        log::warn!(
                            "database {name:?}: no room for its empty file ({error}); not \
                             created (created again when used)"
                        );
                        continue;
                    }
                    Err(error) => {
                        let _ = disk.remove_file(&path);
                        return Err(error.into());
                    }
                }
            }
            let on_disk = record.checkpoint_index;
            let record = idle::apply_mark(record, marks.get(&name).copied());
            let replay_through = if record.intent_index > record.checkpoint_index {
                record.intent_index
            } else {
                0
            };
            let idle_mark = if record.checkpoint_index > on_disk {
                record.checkpoint_index
            } else {
                0
            };
            if replay_through == 0 && self.databases.len() >= self.config.databases_max {
                // Past the limit of open databases: opened when first used.
                let closed = closer::Closed {
                    path: self.config.dir.join(&name),
                    record,
                    last_command_index: record.last_command_index,
                    idle_mark,
                    snapshot_token: Arc::new(()),
                    corrupt: None,
                };
                self.closed.insert(name.clone(), closed);
                unchecked += 1;
            } else {
                match self.attach_database(&name, record, replay_through) {
                    Err(EngineError::Sqlite(error)) if limits::is_sqlite_corruption(&error) => {
                        // Its header page (or one read to open it) is damaged: nothing here can
                        // serve it; the host repairs the node from its peers.
                        return Err(EngineError::CorruptDatabase {
                            database: name,
                            reason: error.to_string(),
                        });
                    }
                    other => other?,
                }
                self.databases.get_mut(&name).expect("attached").idle_mark = idle_mark;
                // A database mid-recovery holds a mix of states until replay: not checked.
                if replay_through == 0 && !self.check_at_open(&name, check_deadline) {
                    unchecked += 1;
                }
            }
            log::info!(
                "database {name:?}: checkpoint index {}, replay through {replay_through}",
                record.checkpoint_index
            );
            recovery.databases.push(DatabaseRecovery {
                name,
                checkpoint_index: record.checkpoint_index,
                replay_through,
            });
        }
        if unchecked > 0 {
            log::info!(
                "{unchecked} database(s) not quick_checked at open: the budget of {:?} ran out",
                self.config.open_check_budget
            );
        }
        Ok(recovery)
    }

    /// Opens the files and connections of an existing database.
    pub(super) fn attach_database(
        &mut self,
        name: &str,
        record: Record,
        recovering_until: u64,
    ) -> Result<(), EngineError> {
        let path = self.config.dir.join(name);
        let options = DbOptions {
            page_size: record.page_size,
            capture_bytes_max: self.config.transaction_bytes_max,
        };
        if recovering_until > 0 {
            cover_header_size(&*self.config.disk, &path, record.page_size)?;
        }
        let files = self.vfs.add_database(&path, options)?;
        let cache_kib = Some(self.config.cache_kib);
        let opened = if recovering_until > 0 {
            Conn::open_recovering(&self.vfs, &path, cache_kib)
        } else {
            Conn::open(&self.vfs, &path, Role::Plain, cache_kib)
        };
        let control = match opened {
            Ok(connections) => connections,
            Err(error) => {
                self.vfs.remove_database(&path);
                return Err(error.into());
            }
        };
        let checkpoint_at_frames = self.next_checkpoint_frames();
        self.databases.insert(
            name.to_string(),
            Database {
                path,
                files,
                control,
                slot: Slot::Free,
                chain_members: Vec::new(),
                queue: VecDeque::new(),
                record,
                last_command_index: record.last_command_index,
                recovering_until,
                snapshot_token: Arc::new(()),
                checkpoint_at_frames,
                sync_pending: false,
                transaction_since: 0,
                corrupt: None,
                idle_mark: 0,
                used_at: self.now,
            },
        );
        Ok(())
    }

    /// Creates a new, empty database that reflects the log up to `created_at`. The record is
    /// made durable before the main file, so a database file without a record never holds data.
    pub(super) fn create_database(
        &mut self,
        name: &str,
        created_at: u64,
    ) -> Result<(), EngineError> {
        assert!(validate_database_name(name).is_ok());
        assert!(!self.databases.contains_key(name));
        let path = self.config.dir.join(name);
        let record = Record {
            page_size: self.config.page_size,
            checkpoint_index: created_at,
            last_command_index: 0,
            intent_index: 0,
            sequence: 0,
        };
        let disk = Arc::clone(&self.config.disk);
        let record = record::write(&*disk, &path, &record)?;
        let _ = disk.remove_file(&crate::vfs::wal_path_of(&path));
        let written = write_empty_database(&*disk, &path, record.page_size)
            .and_then(|()| disk.sync_dir(&self.config.dir));
        if let Err(error) = written {
            // A full disk, typically: nothing half-made stays (the main file first: a crash in
            // between leaves a record alone, which open turns into the same empty database),
            // and the same name can be created once space is freed.
            let _ = disk.remove_file(&path);
            let _ = record::remove(&*disk, &path);
            return Err(error.into());
        }
        log::info!("created database {name:?} at index {created_at}");
        self.attach_database(name, record, 0)
    }
}

/// The bytes of a fresh, empty WAL-mode database page 1, identical on every node (it matches
/// what SQLite writes for `PRAGMA journal_mode=WAL` on a new file, with our version number).
pub(crate) fn empty_database_page(page_size: u32) -> Vec<u8> {
    let mut page = vec![0u8; page_size as usize];
    page[0..16].copy_from_slice(b"SQLite format 3\0");
    let size_code = if page_size == 65536 {
        1
    } else {
        page_size as u16
    };
    BigEndian::write_u16(&mut page[16..18], size_code);
    page[18] = 2; // write version: WAL
    page[19] = 2; // read version: WAL
    page[21] = 64;
    page[22] = 32;
    page[23] = 32;
    BigEndian::write_u32(&mut page[24..28], 1); // change counter
    BigEndian::write_u32(&mut page[28..32], 1); // pages
    BigEndian::write_u32(&mut page[92..96], 1); // version-valid-for
    BigEndian::write_u32(
        &mut page[96..100],
        rusqlite::ffi::SQLITE_VERSION_NUMBER as u32,
    );
    page[100] = 0x0d; // an empty table b-tree leaf: sqlite_schema
    let content = if page_size == 65536 {
        0
    } else {
        page_size as u16
    };
    BigEndian::write_u16(&mut page[105..107], content);
    page
}

/// Whether `path` starts like an SQLite database (other files in the directory are left alone).
fn is_sqlite_file(disk: &dyn Disk, path: &Path) -> bool {
    let mut magic = [0u8; 16];
    disk.open(path, OpenMode::Read)
        .and_then(|file| file.read_exact_at(&mut magic, 0))
        .is_ok()
        && &magic == b"SQLite format 3\0"
}

/// Extends the main file of a database being recovered to the size its header page claims,
/// if it is shorter. A checkpoint cut short by a power loss can leave the new header page
/// without the extension of the file (or the pages) it counted on; SQLite refuses to read a
/// file shorter than its header says. The pages missing read as zeros until the replay of the
/// log puts their every version since the record's checkpoint index into the WAL (each page
/// such a checkpoint wrote changed after that index).
fn cover_header_size(disk: &dyn Disk, path: &Path, page_size: u32) -> std::io::Result<()> {
    let file = disk.open(path, OpenMode::Write)?;
    let mut header = [0u8; 100];
    if file.read_full_at(&mut header, 0)? < header.len() {
        return Ok(());
    }
    // The header's size is valid only when its change counter matches version-valid-for.
    if header[24..28] != header[92..96] {
        return Ok(());
    }
    let pages = u64::from(BigEndian::read_u32(&header[28..32]));
    let claimed = pages * u64::from(page_size);
    let len = file.size()?;
    if claimed > len {
        log::info!(
            "{}: {len} bytes, its header claims {claimed}: extended until the log is replayed",
            path.display()
        );
        file.set_len(claimed)?;
    }
    Ok(())
}

/// Whether an I/O error means the disk (or the user's quota) is full.
fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Writes a fresh database file with the canonical empty page 1, durably.
fn write_empty_database(disk: &dyn Disk, path: &Path, page_size: u32) -> std::io::Result<()> {
    let file = disk.open(path, OpenMode::Truncate)?;
    file.write_all_at(&empty_database_page(page_size), 0)?;
    file.sync_all()
}

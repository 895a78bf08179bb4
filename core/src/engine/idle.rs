//! Idle marks: how a forced checkpoint advances the checkpoint index of databases that have
//! not changed, with one file write for all of them instead of one record fdatasync each.
//!
//! A database whose WAL is empty and whose record has no intent holds, in its main file, every
//! command applied to it; if its record says checkpoint index `C` and the engine has applied up
//! to `X`, no command for it lies in `(C, X]`, so its main file is also "the state after `X`".
//! Writing that into each record costs one fdatasync per database (hundreds of idle databases:
//! seconds of stalled loop per forced checkpoint). Instead a forced checkpoint writes one file,
//! `idle-marks+atoll` (the `+` keeps it out of the database namespace), listing such databases
//! with `X`; recovery takes `max(record checkpoint index, mark)` as a database's checkpoint
//! index. Marks only ever state facts about the past, so a stale mark is harmless: a later
//! command raises the record past it, and a snapshot install (whose index is above every mark)
//! deletes the file first. An unreadable file is ignored (logged): records then only lag, and
//! the host replays more of the log or installs its snapshot.
//!
//! Layout (little-endian), written whole (temp file, fsync, rename, directory fsync):
//!
//! | size | field |
//! | --- | --- |
//! | 4 | magic `ATIM` |
//! | 4 | version, 1 |
//! | 4 | entry count N (at most `MARKS_MAX`) |
//! | N × (2 + L + 8) | name length L (1..=64), name, mark index |
//! | 4 | crc32 of everything before |

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use atoll_storage::Disk;

use byteorder::{ByteOrder, LittleEndian};

use super::Engine;
use crate::command::validate_database_name;
use crate::error::EngineError;
use crate::record::Record;

/// The file's name in the databases' directory.
pub(crate) const MARKS_FILE: &str = "idle-marks+atoll";
const MARKS_TEMP_FILE: &str = "idle-marks+atoll.tmp";
const MAGIC: &[u8; 4] = b"ATIM";
const VERSION: u32 = 1;
/// The most entries a marks file may hold (more than any node's database limit).
const MARKS_MAX: usize = 1 << 20;
/// The largest marks file: `MARKS_MAX` entries of the longest names.
const MARKS_FILE_BYTES_MAX: u64 = 16 + MARKS_MAX as u64 * (2 + 64 + 8);

/// Writes `marks` as the marks file of `dir`, durably.
fn write(disk: &dyn Disk, dir: &Path, marks: &BTreeMap<String, u64>) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(16 + marks.len() * 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    let count = u32::try_from(marks.len()).map_err(|_| io::Error::other("too many marks"))?;
    bytes.extend_from_slice(&count.to_le_bytes());
    for (name, index) in marks {
        let length = u16::try_from(name.len()).map_err(|_| io::Error::other("long name"))?;
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&index.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let temp = dir.join(MARKS_TEMP_FILE);
    let file = disk.open(&temp, atoll_storage::OpenMode::Truncate)?;
    file.write_all_at(&bytes, 0)?;
    file.sync_all()?;
    drop(file);
    disk.rename(&temp, &dir.join(MARKS_FILE))?;
    disk.sync_dir(dir)
}

/// Decodes a marks file; `None` if it is not a valid one.
fn decode(bytes: &[u8]) -> Option<BTreeMap<String, u64>> {
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) || body.get(..4)? != MAGIC {
        return None;
    }
    if LittleEndian::read_u32(body.get(4..8)?) != VERSION {
        return None;
    }
    let count = usize::try_from(LittleEndian::read_u32(body.get(8..12)?)).ok()?;
    if count > MARKS_MAX {
        return None;
    }
    let mut marks = BTreeMap::new();
    let mut rest = body.get(12..)?;
    for _ in 0..count {
        let length = usize::from(LittleEndian::read_u16(rest.get(..2)?));
        let name = std::str::from_utf8(rest.get(2..2 + length)?).ok()?;
        validate_database_name(name).ok()?;
        let index = LittleEndian::read_u64(rest.get(2 + length..10 + length)?);
        marks.insert(name.to_string(), index);
        rest = &rest[10 + length..];
    }
    rest.is_empty().then_some(marks)
}

/// The marks of `dir` (empty without a file, or with an invalid one, logged).
pub(super) fn read(disk: &dyn Disk, dir: &Path) -> io::Result<BTreeMap<String, u64>> {
    let _ = disk.remove_file(&dir.join(MARKS_TEMP_FILE));
    let bytes = match disk.read(&dir.join(MARKS_FILE), MARKS_FILE_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        // Too long to be a marks file: as invalid as a bad checksum.
        Err(error) if error.kind() == io::ErrorKind::InvalidData => Vec::new(),
        Err(error) => return Err(error),
    };
    Ok(decode(&bytes).unwrap_or_else(|| {
        log::warn!(
            "{}: not a valid idle-marks file; ignored (recovery replays from the records)",
            dir.join(MARKS_FILE).display()
        );
        BTreeMap::new()
    }))
}

/// Removes the marks file of `dir` (before a snapshot install rewrites every record).
pub(crate) fn remove(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    match disk.remove_file(&dir.join(MARKS_FILE)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A record whose checkpoint index is raised to `mark` (recovery), if the mark is above it.
pub(super) fn apply_mark(record: Record, mark: Option<u64>) -> Record {
    match mark {
        Some(mark) if mark > record.checkpoint_index => Record {
            checkpoint_index: mark,
            ..record
        },
        _ => record,
    }
}

impl Engine {
    /// Makes `names` (databases found idle by a forced checkpoint) reflect the applied index:
    /// one marks file holding them and every mark still above its database's record, then the
    /// in-memory records.
    pub(super) fn advance_idle(&mut self, names: &[String]) -> Result<(), EngineError> {
        let target = self.applied_index;
        let open = self
            .databases
            .iter()
            .map(|(name, db)| (name, db.idle_mark, db.record.checkpoint_index));
        let closed = self
            .closed
            .iter()
            .map(|(name, c)| (name, c.idle_mark, c.record.checkpoint_index));
        let mut marks: BTreeMap<String, u64> = open
            .chain(closed)
            .filter(|&(_, mark, checkpoint)| mark > 0 && mark >= checkpoint)
            .map(|(name, mark, _)| (name.clone(), mark))
            .collect();
        for name in names {
            marks.insert(name.clone(), target);
        }
        super::checkpoint::durable(
            &mut self.sync_failure,
            MARKS_FILE,
            write(&*self.config.disk, &self.config.dir, &marks),
        )?;
        for name in names {
            let (mark, record) = match self.databases.get_mut(name) {
                Some(db) => (&mut db.idle_mark, &mut db.record),
                None => {
                    let closed = self.closed.get_mut(name).expect("known database");
                    (&mut closed.idle_mark, &mut closed.record)
                }
            };
            *mark = target;
            record.checkpoint_index = target;
        }
        log::debug!(
            "{} idle database(s) marked checkpointed at index {target}",
            names.len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_storage::StdDisk;
    use std::fs;

    #[test]
    fn test_marks_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&StdDisk, dir.path()).unwrap().is_empty());
        let marks: BTreeMap<String, u64> = [("a".to_string(), 7), ("b.db".to_string(), 9)].into();
        write(&StdDisk, dir.path(), &marks).unwrap();
        assert_eq!(read(&StdDisk, dir.path()).unwrap(), marks);
        let path = dir.path().join(MARKS_FILE);
        let bytes = fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[14] ^= 1;
        assert_eq!(decode(&flipped), None);
        fs::write(&path, &flipped).unwrap();
        assert!(read(&StdDisk, dir.path()).unwrap().is_empty());
        remove(&StdDisk, dir.path()).unwrap();
        remove(&StdDisk, dir.path()).unwrap();
    }
}

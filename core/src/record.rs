//! The checkpoint record: a small per-database file that durably says which Raft index the
//! database's main file reflects.
//!
//! `<db>-atoll` holds two 64-byte slots; each update overwrites the slot with the older
//! sequence number in place and fdatasyncs the file (one flush, no rename, no directory sync),
//! so the other slot survives a torn write. Reading takes the valid slot (magic and crc) with
//! the higher sequence. Slot layout (little-endian):
//!
//! | offset | size | field                                                               |
//! |--------|------|---------------------------------------------------------------------|
//! | 0      | 4    | magic `ATCK`                                                        |
//! | 4      | 4    | version, 1                                                          |
//! | 8      | 4    | page size                                                           |
//! | 12     | 4    | reserved, 0                                                         |
//! | 16     | 8    | checkpoint index: the main file is exactly the state after it       |
//! | 24     | 8    | last command index: the last command applied to this database       |
//! | 32     | 8    | intent index: a checkpoint towards it started (0: none); the main    |
//! |        |      | file may hold any mix of states up to it                            |
//! | 40     | 8    | sequence number (slot = sequence % 2)                               |
//! | 48     | 4    | crc32 of bytes 0..48                                                |
//! | 52     | 12   | reserved, 0                                                         |
//!
//! The file is created whole (the first slot written, the other zero; temporary file, fsync,
//! rename, directory fsync) before the database file exists, so a database file without a
//! record holds no data.

use std::io;
use std::path::{Path, PathBuf};

use atoll_storage::{Disk, OpenMode};

use byteorder::{ByteOrder, LittleEndian};

use crate::error::EngineError;

const MAGIC: &[u8; 4] = b"ATCK";
const VERSION: u32 = 1;
const SLOT_BYTES: usize = 64;
const CHECKSUMMED_BYTES: usize = 48;
/// The suffix of a database's checkpoint record.
pub const RECORD_SUFFIX: &str = "-atoll";
/// The suffix of a record file being created (left over only by a crash; removed at open).
pub const RECORD_TEMP_SUFFIX: &str = "-atoll.tmp";

/// The durable facts about one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The page size.
    pub page_size: u32,
    /// The main file is exactly the state after this index (when `intent_index` is 0).
    pub checkpoint_index: u64,
    /// The index of the last command applied to the database, as of `checkpoint_index`.
    pub last_command_index: u64,
    /// A checkpoint towards this index started and may have written part of the main file.
    pub intent_index: u64,
    /// The sequence number of the slot this record was read from or written to; 0 for a record
    /// never written.
    pub sequence: u64,
}

impl Record {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[0..4].copy_from_slice(MAGIC);
        LittleEndian::write_u32(&mut bytes[4..8], VERSION);
        LittleEndian::write_u32(&mut bytes[8..12], self.page_size);
        LittleEndian::write_u64(&mut bytes[16..24], self.checkpoint_index);
        LittleEndian::write_u64(&mut bytes[24..32], self.last_command_index);
        LittleEndian::write_u64(&mut bytes[32..40], self.intent_index);
        LittleEndian::write_u64(&mut bytes[40..48], self.sequence);
        let crc = crc32fast::hash(&bytes[0..CHECKSUMMED_BYTES]);
        LittleEndian::write_u32(&mut bytes[48..52], crc);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Record, String> {
        assert_eq!(bytes.len(), SLOT_BYTES);
        if &bytes[0..4] != MAGIC {
            return Err("bad magic".to_string());
        }
        if crc32fast::hash(&bytes[0..CHECKSUMMED_BYTES]) != LittleEndian::read_u32(&bytes[48..52]) {
            return Err("checksum mismatch".to_string());
        }
        let version = LittleEndian::read_u32(&bytes[4..8]);
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let record = Record {
            page_size: LittleEndian::read_u32(&bytes[8..12]),
            checkpoint_index: LittleEndian::read_u64(&bytes[16..24]),
            last_command_index: LittleEndian::read_u64(&bytes[24..32]),
            intent_index: LittleEndian::read_u64(&bytes[32..40]),
            sequence: LittleEndian::read_u64(&bytes[40..48]),
        };
        if !record.page_size.is_power_of_two() || !(512..=65536).contains(&record.page_size) {
            return Err(format!("bad page size {}", record.page_size));
        }
        if record.last_command_index > record.checkpoint_index {
            return Err("last command after the checkpoint index".to_string());
        }
        if record.sequence == 0 {
            return Err("sequence 0".to_string());
        }
        Ok(record)
    }
}

/// The record path of the database at `db_path`.
pub fn record_path(db_path: &Path) -> PathBuf {
    let mut text = db_path.as_os_str().to_owned();
    text.push(RECORD_SUFFIX);
    PathBuf::from(text)
}

/// Reads the record of the database at `db_path`; `None` if it does not exist.
pub fn read(disk: &dyn Disk, db_path: &Path) -> Result<Option<Record>, EngineError> {
    let path = record_path(db_path);
    // One byte more than a record would be: a longer file is invalid, whatever follows.
    let bytes = match disk.read(&path, 2 * SLOT_BYTES as u64 + 1) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            return Err(EngineError::CorruptRecord(format!(
                "{}: longer than {} bytes",
                path.display(),
                2 * SLOT_BYTES
            )))
        }
        Err(error) => return Err(EngineError::Io(error)),
    };
    if bytes.len() != 2 * SLOT_BYTES {
        return Err(EngineError::CorruptRecord(format!(
            "{}: {} bytes, expected {}",
            path.display(),
            bytes.len(),
            2 * SLOT_BYTES
        )));
    }
    let slots = [
        Record::decode(&bytes[..SLOT_BYTES]),
        Record::decode(&bytes[SLOT_BYTES..]),
    ];
    match slots {
        [Ok(a), Ok(b)] => Ok(Some(if a.sequence > b.sequence { a } else { b })),
        [Ok(a), Err(_)] => Ok(Some(a)),
        [Err(_), Ok(b)] => Ok(Some(b)),
        [Err(a), Err(b)] => Err(EngineError::CorruptRecord(format!(
            "{}: no valid slot ({a}; {b})",
            path.display()
        ))),
    }
}

/// Durably writes `record` as the next version of the database's record and returns it with
/// its new sequence number. A record never written (sequence 0) creates the file.
pub fn write(disk: &dyn Disk, db_path: &Path, record: &Record) -> io::Result<Record> {
    assert!(record.last_command_index <= record.checkpoint_index);
    let path = record_path(db_path);
    let next = Record {
        sequence: record.sequence + 1,
        ..*record
    };
    let slot = (next.sequence % 2) as usize;
    if record.sequence == 0 {
        // Create it whole under a temporary name, then rename: a crash leaves no half file.
        let mut bytes = [0u8; 2 * SLOT_BYTES];
        bytes[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES].copy_from_slice(&next.encode());
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let created = disk
            .open(&temp, OpenMode::Truncate)
            .and_then(|file| file.write_all_at(&bytes, 0).and_then(|()| file.sync_all()));
        if let Err(error) = created {
            // A full disk: leave nothing behind (open would remove it, but it holds space).
            let _ = disk.remove_file(&temp);
            return Err(error);
        }
        disk.rename(&temp, &path)?;
        disk.sync_dir(path.parent().expect("records live in a directory"))?;
        return Ok(next);
    }
    let file = disk.open(&path, OpenMode::Write)?;
    file.write_all_at(&next.encode(), (slot * SLOT_BYTES) as u64)?;
    file.sync()?;
    Ok(next)
}

/// Removes the record of the database at `db_path`, durably.
pub fn remove(disk: &dyn Disk, db_path: &Path) -> io::Result<()> {
    match disk.remove_file(&record_path(db_path)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    disk.sync_dir(db_path.parent().expect("databases live in a directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_storage::{PowerLoss, SimDisk, StdDisk};
    use std::fs;

    #[test]
    fn test_record_slots_alternate_and_survive_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        assert_eq!(read(&StdDisk, &db).unwrap(), None);
        let first = Record {
            page_size: 4096,
            checkpoint_index: 10,
            last_command_index: 7,
            intent_index: 0,
            sequence: 0,
        };
        let first = write(&StdDisk, &db, &first).unwrap();
        assert_eq!(first.sequence, 1);
        assert_eq!(read(&StdDisk, &db).unwrap(), Some(first));
        let second = write(
            &StdDisk,
            &db,
            &Record {
                checkpoint_index: 20,
                ..first
            },
        )
        .unwrap();
        assert_eq!(read(&StdDisk, &db).unwrap(), Some(second));
        // Tear the newest slot: the previous version is still there.
        let mut bytes = fs::read(record_path(&db)).unwrap();
        let slot = (second.sequence % 2) as usize * SLOT_BYTES;
        bytes[slot + 20] ^= 1;
        fs::write(record_path(&db), &bytes).unwrap();
        assert_eq!(read(&StdDisk, &db).unwrap(), Some(first));
        // Both torn: a clear error.
        let other = (first.sequence % 2) as usize * SLOT_BYTES;
        bytes[other + 20] ^= 1;
        fs::write(record_path(&db), &bytes).unwrap();
        assert!(matches!(
            read(&StdDisk, &db),
            Err(EngineError::CorruptRecord(_))
        ));
    }

    #[test]
    fn test_a_power_loss_during_an_update_leaves_the_old_or_the_new_record() {
        // Updates of the record cut by a power loss at a random point of their one write (or
        // before its sync): the record read back is the last one synced or the one being
        // written, never an error and never older. Creation is whole or absent.
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let disk = SimDisk::new(seed);
            let shared = disk.shared();
            shared.create_dir(Path::new("/db")).unwrap();
            shared.sync_dir(Path::new("/")).unwrap();
            let db = Path::new("/db/a");
            let mut record = Record {
                page_size: 4096,
                checkpoint_index: 1,
                last_command_index: 1,
                intent_index: 0,
                sequence: 0,
            };
            for _ in 0..seed % 4 {
                record.checkpoint_index += 1;
                record = write(&*shared, db, &record).unwrap();
            }
            let durable = read(&*shared, db).unwrap();
            // The next update: written, not synced (its sync fails and changes nothing).
            disk.fail_after(atoll_storage::SimOp::Sync, 0);
            let next = Record {
                checkpoint_index: record.checkpoint_index + 1,
                ..record
            };
            let _ = write(&*shared, db, &next);
            disk.power_loss(PowerLoss::TornPrefix);
            let found = read(&*shared, db).unwrap();
            let new = found.is_some_and(|f| f.checkpoint_index == next.checkpoint_index);
            assert!(
                found == durable || new,
                "seed {seed}: {found:?}, {durable:?}"
            );
            outcomes.insert((durable.is_some(), found == durable));
        }
        // Both outcomes of an update happen; a creation whose sync failed leaves no record.
        assert!(outcomes.contains(&(true, true)), "{outcomes:?}");
        assert!(outcomes.contains(&(true, false)), "{outcomes:?}");
        assert!(outcomes.contains(&(false, true)), "{outcomes:?}");
    }
}

//! The checkpoint record: a small per-database file that durably says which Raft index the
//! database's main file reflects.
//!
//! Layout of `<db>-atoll` (48 bytes, little-endian):
//!
//! | offset | size | field                                                              |
//! |--------|------|--------------------------------------------------------------------|
//! | 0      | 4    | magic `ATCK`                                                       |
//! | 4      | 4    | version, 1                                                         |
//! | 8      | 4    | page size                                                          |
//! | 12     | 4    | reserved, 0                                                        |
//! | 16     | 8    | checkpoint index: the main file is exactly the state after it      |
//! | 24     | 8    | last command index: the last command applied to this database      |
//! | 32     | 8    | intent index: a checkpoint towards it started (0: none); the main   |
//! |        |      | file may hold any mix of states up to it                           |
//! | 40     | 4    | reserved, 0                                                        |
//! | 44     | 4    | crc32 of bytes 0..44                                               |
//!
//! It is replaced atomically: written to `<db>-atoll.tmp`, fsynced, renamed over, and the
//! directory fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};

use crate::error::EngineError;

const MAGIC: &[u8; 4] = b"ATCK";
const VERSION: u32 = 1;
const RECORD_BYTES: usize = 48;
/// The suffix of a database's checkpoint record.
pub const RECORD_SUFFIX: &str = "-atoll";
/// The suffix of a record being replaced.
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
}

impl Record {
    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut bytes = [0u8; RECORD_BYTES];
        bytes[0..4].copy_from_slice(MAGIC);
        LittleEndian::write_u32(&mut bytes[4..8], VERSION);
        LittleEndian::write_u32(&mut bytes[8..12], self.page_size);
        LittleEndian::write_u64(&mut bytes[16..24], self.checkpoint_index);
        LittleEndian::write_u64(&mut bytes[24..32], self.last_command_index);
        LittleEndian::write_u64(&mut bytes[32..40], self.intent_index);
        let crc = crc32fast::hash(&bytes[0..44]);
        LittleEndian::write_u32(&mut bytes[44..48], crc);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() != RECORD_BYTES {
            return Err(format!("{} bytes, expected {RECORD_BYTES}", bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err("bad magic".to_string());
        }
        if crc32fast::hash(&bytes[0..44]) != LittleEndian::read_u32(&bytes[44..48]) {
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
        };
        if !record.page_size.is_power_of_two() || !(512..=65536).contains(&record.page_size) {
            return Err(format!("bad page size {}", record.page_size));
        }
        if record.last_command_index > record.checkpoint_index {
            return Err("last command after the checkpoint index".to_string());
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
pub fn read(db_path: &Path) -> Result<Option<Record>, EngineError> {
    let path = record_path(db_path);
    match fs::read(&path) {
        Ok(bytes) => Record::decode(&bytes)
            .map(Some)
            .map_err(|why| EngineError::CorruptRecord(format!("{}: {why}", path.display()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(EngineError::Io(error)),
    }
}

/// Durably replaces the record of the database at `db_path`.
pub fn write(db_path: &Path, record: &Record) -> io::Result<()> {
    assert!(record.last_command_index <= record.checkpoint_index);
    let path = record_path(db_path);
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    {
        let mut file = File::create(&temp)?;
        file.write_all(&record.encode())?;
        file.sync_all()?;
    }
    fs::rename(&temp, &path)?;
    sync_dir(path.parent().expect("records live in a directory"))
}

/// Removes the record of the database at `db_path`, durably.
pub fn remove(db_path: &Path) -> io::Result<()> {
    match fs::remove_file(record_path(db_path)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    sync_dir(db_path.parent().expect("databases live in a directory"))
}

/// Fsyncs a directory, so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_record_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        assert_eq!(read(&db).unwrap(), None);
        let record = Record {
            page_size: 4096,
            checkpoint_index: 10,
            last_command_index: 7,
            intent_index: 0,
        };
        write(&db, &record).unwrap();
        assert_eq!(read(&db).unwrap(), Some(record));
        let mut bytes = fs::read(record_path(&db)).unwrap();
        bytes[20] ^= 1;
        fs::write(record_path(&db), &bytes).unwrap();
        assert!(matches!(read(&db), Err(EngineError::CorruptRecord(_))));
    }
}

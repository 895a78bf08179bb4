//! The metadata files: the hard state (term, vote) and the compaction point, saved atomically by
//! alternating between two files, `metadata1` and `metadata2`, as C-Raft does.
//!
//! Each save writes one 64-byte record with a version counter one higher than the newest, into
//! the file that does *not* hold the newest record (odd counters go to `metadata1`, even ones to
//! `metadata2`), then `fdatasync`s it. A crash during the write can tear only the older file, so
//! on open the valid record with the highest counter is exactly the last save that returned `Ok`
//! (or the one in flight, if it reached the disk whole).
//!
//! ```text
//! record (64 bytes, little-endian):
//!   0..8   magic "ATOLLMET"       8..12  format version u32     12..16 crc32 of bytes 16..64
//!   16..24 counter u64 (>= 1)     24..32 term u64               32..40 vote u64 (0 = none)
//!   40..48 compacted index u64    48..56 compacted term u64     56..64 reserved (zero)
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use crate::disk::{Disk, OpenMode};
use crate::error::LogError;
use crate::types::{HardState, LogIndex, NodeId, Term};

/// The first 8 bytes of a metadata record.
pub const METADATA_MAGIC: [u8; 8] = *b"ATOLLMET";
/// The metadata format this code writes and reads.
pub const METADATA_FORMAT_VERSION: u32 = 1;
/// The size of a metadata record (and file).
pub const METADATA_BYTES: usize = 64;
/// The two file names, for odd and even counters.
pub const METADATA_FILE_NAMES: [&str; 2] = ["metadata1", "metadata2"];

/// What the metadata files hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Increases by one with every save; 0 only before the first.
    pub counter: u64,
    /// The Raft hard state.
    pub hard_state: HardState,
    /// The last index compacted away (covered by a snapshot); 0 if never compacted.
    pub compacted_index: LogIndex,
    /// The term of the entry at `compacted_index`; 0 if never compacted.
    pub compacted_term: Term,
}

impl Metadata {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; METADATA_BYTES] {
        assert!(self.counter > 0, "counter 0 is never written");
        let mut bytes = [0u8; METADATA_BYTES];
        bytes[0..8].copy_from_slice(&METADATA_MAGIC);
        LittleEndian::write_u32(&mut bytes[8..12], METADATA_FORMAT_VERSION);
        LittleEndian::write_u64(&mut bytes[16..24], self.counter);
        LittleEndian::write_u64(&mut bytes[24..32], self.hard_state.term.0);
        LittleEndian::write_u64(&mut bytes[32..40], self.hard_state.vote.map_or(0, |v| v.0));
        LittleEndian::write_u64(&mut bytes[40..48], self.compacted_index.0);
        LittleEndian::write_u64(&mut bytes[48..56], self.compacted_term.0);
        let crc = crc32fast::hash(&bytes[16..]);
        LittleEndian::write_u32(&mut bytes[12..16], crc);
        bytes
    }

    /// Decodes and checks a record; the error says what is wrong. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Metadata, &'static str> {
        if bytes.len() != METADATA_BYTES {
            return Err("not 64 bytes long");
        }
        if bytes[0..8] != METADATA_MAGIC {
            return Err("bad magic number (not an atoll metadata file)");
        }
        if LittleEndian::read_u32(&bytes[8..12]) != METADATA_FORMAT_VERSION {
            return Err("unknown metadata format version");
        }
        if crc32fast::hash(&bytes[16..]) != LittleEndian::read_u32(&bytes[12..16]) {
            return Err("crc mismatch");
        }
        if bytes[56..64].iter().any(|&b| b != 0) {
            return Err("reserved bytes are not zero");
        }
        let counter = LittleEndian::read_u64(&bytes[16..24]);
        if counter == 0 {
            return Err("counter 0");
        }
        let vote = LittleEndian::read_u64(&bytes[32..40]);
        let compacted_index = LogIndex(LittleEndian::read_u64(&bytes[40..48]));
        let compacted_term = Term(LittleEndian::read_u64(&bytes[48..56]));
        if compacted_index.0 == 0 && compacted_term.0 != 0 {
            return Err("a term for compaction point 0");
        }
        Ok(Metadata {
            counter,
            hard_state: HardState {
                term: Term(LittleEndian::read_u64(&bytes[24..32])),
                vote: (vote != 0).then_some(NodeId(vote)),
            },
            compacted_index,
            compacted_term,
        })
    }

    /// Which of the two files holds the record with `counter`: 0 for odd, 1 for even.
    pub fn file_slot(counter: u64) -> usize {
        assert!(counter > 0);
        if counter % 2 == 1 {
            0
        } else {
            1
        }
    }
}

/// What one metadata file held at open.
#[derive(Debug)]
pub enum MetadataFile {
    /// No file, or an empty one: never written.
    Absent,
    /// A valid record.
    Valid(Metadata),
    /// Bytes that are not a valid record: a torn write, or damage.
    Invalid(&'static str),
}

/// Reads one metadata file.
pub fn read_metadata_file(disk: &dyn Disk, path: &Path) -> Result<MetadataFile, LogError> {
    let file = match disk.open(path, OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(MetadataFile::Absent),
        Err(error) => return Err(LogError::io("opening metadata file", path, error)),
    };
    // Read at most one byte more than a record: a longer file is invalid, whatever follows.
    let mut bytes = vec![0u8; METADATA_BYTES + 1];
    let read = file
        .read_full_at(&mut bytes, 0)
        .map_err(|error| LogError::io("reading metadata file", path, error))?;
    bytes.truncate(read);
    if bytes.is_empty() {
        return Ok(MetadataFile::Absent);
    }
    Ok(match Metadata::decode(&bytes) {
        Ok(metadata) => MetadataFile::Valid(metadata),
        Err(reason) => MetadataFile::Invalid(reason),
    })
}

/// Chooses the metadata to trust from the two files, in file order (`metadata1`, `metadata2`).
/// `Ok(None)` when neither was ever written. An invalid file next to a valid one is a torn write
/// (or damage to an old record) and is ignored with a warning; two invalid files are an error,
/// because the term and vote would be lost.
pub fn choose_metadata(dir: &Path, files: [MetadataFile; 2]) -> Result<Option<Metadata>, LogError> {
    let mut newest: Option<Metadata> = None;
    let mut invalid: Vec<(usize, &'static str)> = Vec::new();
    for (slot, file) in files.into_iter().enumerate() {
        match file {
            MetadataFile::Absent => {}
            MetadataFile::Invalid(reason) => invalid.push((slot, reason)),
            MetadataFile::Valid(metadata) => {
                if Metadata::file_slot(metadata.counter) != slot {
                    invalid.push((slot, "counter does not belong in this file"));
                    continue;
                }
                // The parity check above makes equal counters impossible.
                if newest.is_none_or(|other| metadata.counter > other.counter) {
                    newest = Some(metadata);
                }
            }
        }
    }
    match (newest, invalid.as_slice()) {
        (None, []) => Ok(None),
        (None, [(slot, reason), ..]) => Err(LogError::corrupt(
            dir.join(METADATA_FILE_NAMES[*slot]),
            0,
            format!("{reason}, and no other valid metadata file"),
        )),
        (Some(metadata), invalid) => {
            for (slot, reason) in invalid {
                log::warn!(
                    "ignoring {}: {reason} (a torn write or old damage); using counter {} from \
                     the other file",
                    dir.join(METADATA_FILE_NAMES[*slot]).display(),
                    metadata.counter
                );
            }
            Ok(Some(metadata))
        }
    }
}

/// The pair of metadata files of a data directory.
#[derive(Debug)]
pub struct MetadataStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// The newest record saved (counter 0 before the first save).
    current: Metadata,
    /// Per file: created by a save that failed before the directory was synced, so the next
    /// save into it syncs the directory (the file exists, but its name may not be durable).
    dir_sync_owed: [bool; 2],
}

impl MetadataStore {
    /// Opens the store of `dir`: `current` is what [`choose_metadata`] picked, or `None` for a
    /// new directory (the caller then saves the first record).
    pub fn new(disk: Arc<dyn Disk>, dir: &Path, current: Option<Metadata>) -> MetadataStore {
        MetadataStore {
            disk,
            dir: dir.to_path_buf(),
            current: current.unwrap_or_default(),
            dir_sync_owed: [false; 2],
        }
    }

    /// The newest record.
    pub fn current(&self) -> &Metadata {
        &self.current
    }

    /// Saves `hard_state` and the compaction point as the next record; durable on return. The
    /// file is created if missing, in which case the directory is synced too.
    ///
    /// `Err((error, false))` is a clean failure: the file could not be created or written (a
    /// full disk). The newest record is untouched in the other file, at most this one is torn
    /// (ignored at open), and a later save writes it again whole. `Err((error, true))` is a
    /// failed sync: nothing can be trusted of this file any more (never retried).
    pub fn save(
        &mut self,
        hard_state: HardState,
        compacted_index: LogIndex,
        compacted_term: Term,
    ) -> Result<(), (LogError, bool)> {
        let next = Metadata {
            counter: self
                .current
                .counter
                .checked_add(1)
                .expect("counter overflow"),
            hard_state,
            compacted_index,
            compacted_term,
        };
        let slot = Metadata::file_slot(next.counter);
        let path = self.dir.join(METADATA_FILE_NAMES[slot]);
        if !self.disk.exists(&path) {
            self.dir_sync_owed[slot] = true;
        }
        let file = self
            .disk
            .open(&path, OpenMode::Create)
            .map_err(|error| (LogError::io("opening metadata file", &path, error), false))?;
        file.write_all_at(&next.encode(), 0)
            .map_err(|error| (LogError::io("writing metadata file", &path, error), false))?;
        file.sync()
            .map_err(|error| (LogError::io("syncing metadata file", &path, error), true))?;
        if self.dir_sync_owed[slot] {
            self.disk.sync_dir(&self.dir).map_err(|error| {
                (
                    LogError::io("syncing data directory", &self.dir, error),
                    true,
                )
            })?;
            self.dir_sync_owed[slot] = false;
        }
        self.current = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(counter: u64) -> Metadata {
        Metadata {
            counter,
            hard_state: HardState {
                term: Term(7),
                vote: Some(NodeId(3)),
            },
            compacted_index: LogIndex(100),
            compacted_term: Term(6),
        }
    }

    #[test]
    fn test_metadata_round_trip_and_damage() {
        // A record decodes to itself; any single flipped bit makes it invalid.
        let bytes = sample(5).encode();
        assert_eq!(Metadata::decode(&bytes), Ok(sample(5)));
        for bit in 0..METADATA_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(Metadata::decode(&damaged).is_err(), "bit {bit}");
        }
        assert!(Metadata::decode(&bytes[..63]).is_err());
    }

    #[test]
    fn test_newest_valid_record_wins() {
        // The newer record is in metadata2 (even counter); if it is torn, the older one in
        // metadata1 wins; if both are torn, opening fails rather than forgetting the vote.
        let dir = Path::new("/data");
        let chosen = choose_metadata(
            dir,
            [
                MetadataFile::Valid(sample(3)),
                MetadataFile::Valid(sample(4)),
            ],
        )
        .unwrap();
        assert_eq!(chosen.unwrap().counter, 4);
        let chosen = choose_metadata(
            dir,
            [
                MetadataFile::Valid(sample(3)),
                MetadataFile::Invalid("crc mismatch"),
            ],
        )
        .unwrap();
        assert_eq!(chosen.unwrap().counter, 3);
        assert!(
            choose_metadata(dir, [MetadataFile::Absent, MetadataFile::Absent])
                .unwrap()
                .is_none()
        );
        let error = choose_metadata(
            dir,
            [
                MetadataFile::Invalid("crc mismatch"),
                MetadataFile::Invalid("crc mismatch"),
            ],
        )
        .unwrap_err();
        assert!(error.to_string().contains("metadata1"), "{error}");
        // A record in the wrong file (even counter in metadata1) is not trusted.
        let chosen = choose_metadata(
            dir,
            [
                MetadataFile::Valid(sample(4)),
                MetadataFile::Valid(sample(1)),
            ],
        )
        .unwrap_err();
        assert!(chosen.to_string().contains("metadata1"));
    }

    #[test]
    fn test_save_alternates_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::StdDisk::shared();
        let mut store = MetadataStore::new(Arc::clone(&disk), dir.path(), None);
        for term in 1..=3 {
            let hard_state = HardState {
                term: Term(term),
                vote: None,
            };
            store.save(hard_state, LogIndex(0), Term(0)).unwrap();
        }
        let read = |name: &str| read_metadata_file(&*disk, &dir.path().join(name)).unwrap();
        let MetadataFile::Valid(first) = read("metadata1") else {
            panic!("metadata1 is valid")
        };
        let MetadataFile::Valid(second) = read("metadata2") else {
            panic!("metadata2 is valid")
        };
        assert_eq!((first.counter, first.hard_state.term), (3, Term(3)));
        assert_eq!((second.counter, second.hard_state.term), (2, Term(2)));
    }
}

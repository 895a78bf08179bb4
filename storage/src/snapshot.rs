//! The snapshot store: one file per snapshot, written under a temporary name and renamed into
//! place once complete and synced, read back as a stream, never loaded whole into memory.
//!
//! ```text
//! file: header (64 bytes) | configuration (configuration_len bytes) | data (data_len bytes)
//! header, little-endian:
//!   0..8   magic "ATOLLSNP"     8..12  format version u32     12..16 crc32 of bytes 16..64 and
//!                                                                   of the configuration
//!   16..24 index u64            24..32 term u64               32..40 data_len u64
//!   40..44 data crc32 u32       44..48 configuration_len u32  48..64 reserved (zero)
//! ```
//!
//! The configuration is raft's encoding, at most [`CONFIGURATION_BYTES_MAX`] (16 MiB). A reader
//! checks every header and the file length when listing, and the data crc as it streams: a
//! mismatch is an error from the read that reaches the end.
//!
//! The name of a finished snapshot is `snapshot-<index>-<term>` (20 digits each, so names sort
//! by index); one being written is `snapshot-<index>-<term>.tmp` and is removed when the store is
//! opened. The header is written last, once the data's length and crc are known, and the file is
//! then synced, renamed, and the directory synced: a snapshot that is listed is complete.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use crate::disk::{Disk, DiskFile, FileCursor, OpenMode, Removal};
use crate::error::LogError;
use crate::types::{LogIndex, Term};

/// The first 8 bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"ATOLLSNP";
/// The snapshot format this code writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// The size of a snapshot file header.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// The largest cluster configuration a snapshot carries (it is read into memory whole).
pub const CONFIGURATION_BYTES_MAX: u32 = 16 << 20;

const SNAPSHOT_PREFIX: &str = "snapshot-";
const TEMP_SUFFIX: &str = ".tmp";
/// The write buffer of a snapshot being written.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// What a snapshot is: the log position it covers and the cluster configuration at that point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The cluster configuration as of `index`, encoded by raft; opaque here.
    pub configuration: Vec<u8>,
    /// The length of the data in bytes.
    pub data_bytes: u64,
    /// The crc32 of the data, checked as it is streamed back.
    pub data_crc: u32,
}

impl SnapshotMeta {
    fn file_name(&self) -> String {
        snapshot_file_name(self.index, self.term)
    }

    pub(crate) fn encode_header(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
        header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        LittleEndian::write_u32(&mut header[8..12], SNAPSHOT_FORMAT_VERSION);
        LittleEndian::write_u64(&mut header[16..24], self.index.0);
        LittleEndian::write_u64(&mut header[24..32], self.term.0);
        LittleEndian::write_u64(&mut header[32..40], self.data_bytes);
        LittleEndian::write_u32(&mut header[40..44], self.data_crc);
        let configuration_len =
            u32::try_from(self.configuration.len()).expect("configuration size checked");
        LittleEndian::write_u32(&mut header[44..48], configuration_len);
        let crc = header_crc(&header, &self.configuration);
        LittleEndian::write_u32(&mut header[12..16], crc);
        header
    }
}

fn header_crc(header: &[u8], configuration: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[16..SNAPSHOT_HEADER_BYTES]);
    hasher.update(configuration);
    hasher.finalize()
}

fn snapshot_file_name(index: LogIndex, term: Term) -> String {
    format!("{SNAPSHOT_PREFIX}{:020}-{:020}", index.0, term.0)
}

/// Parses `snapshot-<index>-<term>`; `None` for any other name.
fn parse_snapshot_file_name(name: &str) -> Option<(LogIndex, Term)> {
    let rest = name.strip_prefix(SNAPSHOT_PREFIX)?;
    let (index, term) = rest.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    if !index
        .bytes()
        .chain(term.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((LogIndex(index.parse().ok()?), Term(term.parse().ok()?)))
}

/// The first part of decoding a snapshot file: the fixed header. Returns the fields and the
/// configuration length; the crc is checked once the configuration is read too. Never panics.
pub fn decode_snapshot_header(
    header: &[u8],
) -> Result<(LogIndex, Term, u64, u32, u32), &'static str> {
    if header.len() < SNAPSHOT_HEADER_BYTES {
        return Err("shorter than a snapshot header");
    }
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic number (not an atoll snapshot)");
    }
    if LittleEndian::read_u32(&header[8..12]) != SNAPSHOT_FORMAT_VERSION {
        return Err("unknown snapshot format version");
    }
    if header[48..SNAPSHOT_HEADER_BYTES].iter().any(|&b| b != 0) {
        return Err("reserved header bytes are not zero");
    }
    let configuration_len = LittleEndian::read_u32(&header[44..48]);
    if configuration_len > CONFIGURATION_BYTES_MAX {
        return Err("configuration length beyond the maximum");
    }
    Ok((
        LogIndex(LittleEndian::read_u64(&header[16..24])),
        Term(LittleEndian::read_u64(&header[24..32])),
        LittleEndian::read_u64(&header[32..40]),
        LittleEndian::read_u32(&header[40..44]),
        configuration_len,
    ))
}

/// Decodes the header and configuration at the start of `bytes` (as read from a snapshot file)
/// and checks the metadata crc. Never panics.
pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, &'static str> {
    let (index, term, data_bytes, data_crc, configuration_len) = decode_snapshot_header(bytes)?;
    let configuration_end = SNAPSHOT_HEADER_BYTES + configuration_len as usize;
    if bytes.len() < configuration_end {
        return Err("configuration cut short by the end of the file");
    }
    let configuration = &bytes[SNAPSHOT_HEADER_BYTES..configuration_end];
    if header_crc(bytes, configuration) != LittleEndian::read_u32(&bytes[12..16]) {
        return Err("metadata crc mismatch");
    }
    Ok(SnapshotMeta {
        index,
        term,
        configuration: configuration.to_vec(),
        data_bytes,
        data_crc,
    })
}

/// The snapshots of one node, in one directory. The caller holds the data directory's lock
/// ([`crate::SegmentLog`] does, and hands out its store with [`crate::SegmentLog::snapshots`]).
#[derive(Debug)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating it if needed) the store in `dir`, and removes the temporary files of
    /// snapshots whose writing never finished.
    pub fn open(dir: &Path) -> Result<SnapshotStore, LogError> {
        SnapshotStore::open_on(crate::StdDisk::shared(), dir)
    }

    /// [`SnapshotStore::open`] on `disk`.
    pub fn open_on(disk: Arc<dyn Disk>, dir: &Path) -> Result<SnapshotStore, LogError> {
        create_dir_durably(&*disk, dir)?;
        let mut removed = false;
        for name in list_dir(&*disk, dir)? {
            // Only our own temporary names: never delete a file we did not make.
            let ours_temp = name
                .strip_suffix(TEMP_SUFFIX)
                .is_some_and(|stem| parse_snapshot_file_name(stem).is_some());
            if ours_temp {
                let path = dir.join(&name);
                log::warn!("removing unfinished snapshot {}", path.display());
                disk.remove_file(&path)
                    .map_err(|error| LogError::io("removing unfinished snapshot", &path, error))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&*disk, dir)?;
        }
        Ok(SnapshotStore {
            disk,
            dir: dir.to_path_buf(),
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts writing the snapshot of the log through `index` (whose term is `term`), with the
    /// cluster `configuration` of that point. Write the data into the returned writer, then call
    /// [`SnapshotWriter::finish`]; dropping it unfinished removes the temporary file. A finished
    /// snapshot with the same index and term is replaced atomically.
    pub fn create(
        &self,
        index: LogIndex,
        term: Term,
        configuration: &[u8],
    ) -> io::Result<SnapshotWriter> {
        if configuration.len() as u64 > u64::from(CONFIGURATION_BYTES_MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot configuration larger than 16 MiB",
            ));
        }
        let name = snapshot_file_name(index, term);
        let temp_path = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        let file = self
            .disk
            .open(&temp_path, OpenMode::Truncate)
            .map_err(|error| LogError::io("creating snapshot", &temp_path, error))?;
        let mut writer = SnapshotWriter {
            disk: Arc::clone(&self.disk),
            file: BufWriter::with_capacity(WRITE_BUFFER_BYTES, FileCursor::new(file, 0)),
            temp_path,
            final_path: self.dir.join(&name),
            dir: self.dir.clone(),
            meta: SnapshotMeta {
                index,
                term,
                configuration: configuration.to_vec(),
                data_bytes: 0,
                data_crc: 0,
            },
            hasher: crc32fast::Hasher::new(),
            finished: false,
        };
        // A zero header until `finish` writes the real one: an unfinished file is never valid.
        writer.file.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])?;
        writer.file.write_all(configuration)?;
        Ok(writer)
    }

    /// Every finished snapshot, oldest (lowest index) first. A snapshot whose header or
    /// configuration fails its checks, or whose length disagrees with its header, is an error
    /// naming the file: it is never skipped silently.
    pub fn list(&self) -> io::Result<Vec<SnapshotMeta>> {
        let mut found = Vec::new();
        for name in list_dir(&*self.disk, &self.dir)? {
            if let Some((index, term)) = parse_snapshot_file_name(&name) {
                let path = self.dir.join(&name);
                let (meta, _) = match self.read_meta(&path) {
                    Ok(found) => found,
                    // Removed since the directory was read (an old one pruned meanwhile).
                    Err(_)
                        if self
                            .disk
                            .metadata(&path)
                            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound) =>
                    {
                        continue
                    }
                    Err(error) => return Err(error.into()),
                };
                if (meta.index, meta.term) != (index, term) {
                    return Err(LogError::corrupt(
                        self.dir.join(&name),
                        16,
                        "header index or term disagrees with the file name",
                    )
                    .into());
                }
                found.push(meta);
            }
        }
        found.sort_by_key(|meta| (meta.index, meta.term));
        Ok(found)
    }

    /// The newest finished snapshot, if any.
    pub fn latest(&self) -> io::Result<Option<SnapshotMeta>> {
        Ok(self.list()?.pop())
    }

    /// Opens the snapshot described by `meta` (from [`SnapshotStore::list`]) for streaming its
    /// data. The data crc is checked as the data is read: a mismatch is an error from the read
    /// that reaches the end.
    pub fn open_reader(&self, meta: &SnapshotMeta) -> io::Result<SnapshotReader> {
        let path = self.dir.join(meta.file_name());
        let (found, file) = self.read_meta(&path)?;
        if &found != meta {
            return Err(LogError::corrupt(path, 0, "snapshot changed since it was listed").into());
        }
        Ok(SnapshotReader {
            file,
            path,
            remaining: meta.data_bytes,
            expected_crc: meta.data_crc,
            hasher: crc32fast::Hasher::new(),
        })
    }

    /// Opens the data of the finished snapshot through `index` (of `term`) for reads at any
    /// offset, as a leader streaming it to a follower in chunks needs: nothing is read until
    /// [`SnapshotData::read_at`] asks, so the snapshot is never whole in memory. The header and
    /// file length are checked here; the data crc only by a full [`SnapshotStore::open_reader`]
    /// read (the receiver's engine checks its own stream crc on install).
    pub fn open_data(&self, index: LogIndex, term: Term) -> io::Result<SnapshotData> {
        let path = self.dir.join(snapshot_file_name(index, term));
        let (meta, _) = self.read_meta(&path)?;
        let file = self
            .disk
            .open(&path, OpenMode::Read)
            .map_err(|error| LogError::io("opening snapshot", &path, error))?;
        Ok(SnapshotData {
            file,
            data_start: SNAPSHOT_HEADER_BYTES as u64 + meta.configuration.len() as u64,
            meta,
            path,
        })
    }

    /// Removes every snapshot but the newest `keep`, oldest first; returns how many it removed.
    pub fn prune(&self, keep: usize) -> io::Result<usize> {
        let removal = self.prunable(keep)?;
        removal
            .run()
            .map_err(|error| LogError::io("removing old snapshots", &self.dir, error))?;
        Ok(removal.paths().len())
    }

    /// What [`SnapshotStore::prune`] would delete, to delete on another thread: a large file's
    /// unlink takes milliseconds. Until it runs, the files are still listed.
    pub fn prunable(&self, keep: usize) -> io::Result<Removal> {
        let snapshots = self.list()?;
        let excess = snapshots.len().saturating_sub(keep);
        let paths = snapshots[..excess]
            .iter()
            .map(|meta| self.dir.join(meta.file_name()))
            .collect();
        Ok(Removal::new(
            Arc::clone(&self.disk),
            self.dir.clone(),
            paths,
        ))
    }

    /// Reads and checks the header and configuration of the snapshot at `path`, and its length;
    /// returns the metadata and the file positioned at the start of the data.
    fn read_meta(&self, path: &Path) -> Result<(SnapshotMeta, BufReader<FileCursor>), LogError> {
        let file = self
            .disk
            .open(path, OpenMode::Read)
            .map_err(|error| LogError::io("opening snapshot", path, error))?;
        let file_len = file
            .size()
            .map_err(|error| LogError::io("reading snapshot size", path, error))?;
        let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| LogError::corrupt(path, 0, "shorter than a snapshot header"))?;
        let (_, _, data_bytes, _, configuration_len) =
            decode_snapshot_header(&header).map_err(|reason| LogError::corrupt(path, 0, reason))?;
        let meta_bytes = SNAPSHOT_HEADER_BYTES as u64 + u64::from(configuration_len);
        if meta_bytes.checked_add(data_bytes) != Some(file_len) {
            return Err(LogError::corrupt(
                path,
                file_len.min(meta_bytes.saturating_add(data_bytes)),
                format!(
                    "file is {file_len} bytes but its header says {}",
                    meta_bytes.saturating_add(data_bytes)
                ),
            ));
        }
        let mut bytes = vec![0u8; meta_bytes as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|error| LogError::io("reading snapshot", path, error))?;
        let meta =
            decode_snapshot_meta(&bytes).map_err(|reason| LogError::corrupt(path, 0, reason))?;
        let reader = BufReader::new(FileCursor::new(file, meta_bytes));
        Ok((meta, reader))
    }
}

/// A snapshot being written; see [`SnapshotStore::create`].
pub struct SnapshotWriter {
    disk: Arc<dyn Disk>,
    file: BufWriter<FileCursor>,
    temp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    meta: SnapshotMeta,
    hasher: crc32fast::Hasher,
    finished: bool,
}

impl Write for SnapshotWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.meta.data_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl SnapshotWriter {
    /// Completes the snapshot: writes the header, syncs the file, renames it into place and
    /// syncs the directory. Durable and listed on return.
    pub fn finish(mut self) -> io::Result<SnapshotMeta> {
        self.meta.data_crc = self.hasher.clone().finalize();
        let header = self.meta.encode_header();
        self.file.flush()?;
        let file = self.file.get_ref().file();
        file.write_all_at(&header, 0)
            .map_err(|error| LogError::io("writing snapshot header", &self.temp_path, error))?;
        file.sync_all()
            .map_err(|error| LogError::io("syncing snapshot", &self.temp_path, error))?;
        self.disk
            .rename(&self.temp_path, &self.final_path)
            .map_err(|error| LogError::io("renaming snapshot", &self.final_path, error))?;
        self.finished = true;
        sync_dir(&*self.disk, &self.dir)?;
        Ok(self.meta.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: a leftover temporary file is removed at the next open anyway.
            let _ = self.disk.remove_file(&self.temp_path);
        }
    }
}

/// The data of a finished snapshot, read at offsets; see [`SnapshotStore::open_data`].
#[derive(Debug)]
pub struct SnapshotData {
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    /// Where the data starts in the file (after the header and the configuration).
    data_start: u64,
    meta: SnapshotMeta,
}

impl SnapshotData {
    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Fills `buf` with the data bytes at `offset`; an error if they are not all there.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.meta.data_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {} bytes at offset {offset} are beyond the data ({} bytes)",
                    self.path.display(),
                    buf.len(),
                    self.meta.data_bytes
                ),
            ));
        }
        self.file
            .read_exact_at(buf, self.data_start + offset)
            .map_err(|error| LogError::io("reading snapshot", &self.path, error).into())
    }
}

/// The data of a snapshot, streamed from its file; see [`SnapshotStore::open_reader`].
pub struct SnapshotReader {
    file: BufReader<FileCursor>,
    path: PathBuf,
    /// Data bytes not yet read. Invariant: the file holds at least this many more bytes.
    remaining: u64,
    expected_crc: u32,
    hasher: crc32fast::Hasher,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let wanted = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.file.read(&mut buf[..wanted])?;
        if read == 0 {
            return Err(LogError::corrupt(&self.path, 0, "snapshot data cut short").into());
        }
        self.hasher.update(&buf[..read]);
        self.remaining -= read as u64;
        if self.remaining == 0 && self.hasher.clone().finalize() != self.expected_crc {
            return Err(LogError::corrupt(&self.path, 0, "snapshot data crc mismatch").into());
        }
        Ok(read)
    }
}

/// The UTF-8 names in `dir`, sorted; other names are skipped with a warning.
pub(crate) fn list_dir(disk: &dyn Disk, dir: &Path) -> Result<Vec<String>, LogError> {
    let mut names = Vec::new();
    let entries = disk
        .read_dir(dir)
        .map_err(|error| LogError::io("listing directory", dir, error))?;
    for entry in entries {
        match entry.into_string() {
            Ok(name) => names.push(name),
            Err(name) => log::warn!(
                "ignoring file with a non-UTF-8 name {:?} in {}",
                name,
                dir.display()
            ),
        }
    }
    names.sort();
    Ok(names)
}

/// Creates `dir` (and its missing parents) if needed, and syncs the parent of each directory it
/// creates, so that the new directory itself survives a crash.
pub(crate) fn create_dir_durably(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    crate::disk::create_dir_durably(disk, dir)
        .map_err(|error| LogError::io("creating directory", dir, error))
}

/// fsyncs a directory, so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    disk.sync_dir(dir)
        .map_err(|error| LogError::io("syncing directory", dir, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    #[test]
    fn test_snapshot_write_list_stream_prune() {
        // Three snapshots written and listed in index order; one streams back byte for byte in
        // small reads; pruning to two removes the oldest.
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (index, term) in [(30, 2), (10, 1), (20, 1)] {
            let mut writer = store
                .create(LogIndex(index), Term(term), b"config")
                .unwrap();
            writer.write_all(&data[..index as usize * 1000]).unwrap();
            let meta = writer.finish().unwrap();
            assert_eq!(meta.data_bytes, index * 1000);
        }
        let listed = store.list().unwrap();
        let indexes: Vec<u64> = listed.iter().map(|meta| meta.index.0).collect();
        assert_eq!(indexes, [10, 20, 30]);
        assert_eq!(listed[2].term, Term(2));
        assert_eq!(listed[2].configuration, b"config");
        let mut reader = store.open_reader(&listed[1]).unwrap();
        let mut back = Vec::new();
        let mut chunk = [0u8; 333];
        loop {
            let read = reader.read(&mut chunk).unwrap();
            if read == 0 {
                break;
            }
            back.extend_from_slice(&chunk[..read]);
        }
        assert_eq!(back, &data[..20_000]);
        // Reads at offsets (a leader filling chunks) see the same bytes; past the end is an
        // error, not a short read.
        let at = store.open_data(LogIndex(20), Term(1)).unwrap();
        assert_eq!(at.meta().data_bytes, 20_000);
        let mut piece = vec![0u8; 4096];
        at.read_at(12_345, &mut piece).unwrap();
        assert_eq!(piece, &data[12_345..12_345 + 4096]);
        at.read_at(20_000 - 4096, &mut piece).unwrap();
        assert!(at.read_at(20_000 - 4095, &mut piece).is_err());
        assert!(store.open_data(LogIndex(20), Term(2)).is_err());
        // What a prune deletes can be handed to another thread: listed until it runs.
        let removal = store.prunable(2).unwrap();
        assert_eq!(removal.paths().len(), 1);
        assert_eq!(store.list().unwrap().len(), 3);
        assert_eq!(store.prune(2).unwrap(), 1);
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.index.0).collect();
        assert_eq!(indexes, [20, 30]);
        removal.run().unwrap(); // Already gone: no error.
                                // Reopening the store finds the same snapshots.
        drop(store);
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().index, LogIndex(30));
    }

    #[test]
    fn test_corrupt_snapshot_data_fails_at_end_of_stream() {
        // A flipped bit in the data is not noticed until the stream reaches the end, where the
        // read fails instead of returning the last bytes as if all were well.
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut writer = store.create(LogIndex(5), Term(1), b"c").unwrap();
        writer.write_all(&[7u8; 10_000]).unwrap();
        let meta = writer.finish().unwrap();
        let path = dir.path().join(snapshot_file_name(LogIndex(5), Term(1)));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[8u8], SNAPSHOT_HEADER_BYTES as u64 + 1 + 5000)
            .unwrap();
        let mut reader = store.open_reader(&meta).unwrap();
        let mut back = Vec::new();
        let error = reader.read_to_end(&mut back).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("crc mismatch"), "{error}");
        // Damage to the header or configuration makes listing fail, naming the file.
        file.write_all_at(b"X", SNAPSHOT_HEADER_BYTES as u64)
            .unwrap();
        let error = store.list().unwrap_err();
        assert!(error.to_string().contains("snapshot-"), "{error}");
        assert!(error.to_string().contains("crc mismatch"), "{error}");
    }

    #[test]
    fn test_unfinished_snapshot_is_never_listed() {
        // A writer dropped before `finish` leaves nothing; a temporary file left by a crash is
        // removed when the store is opened.
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut writer = store.create(LogIndex(5), Term(1), b"").unwrap();
        writer.write_all(b"partial").unwrap();
        drop(writer);
        assert!(store.list().unwrap().is_empty());
        let mut writer = store.create(LogIndex(6), Term(1), b"").unwrap();
        writer.write_all(b"partial").unwrap();
        writer.flush().unwrap();
        std::mem::forget(writer);
        assert_eq!(list_dir(&crate::StdDisk, dir.path()).unwrap().len(), 1);
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(list_dir(&crate::StdDisk, dir.path()).unwrap().is_empty());
    }

    #[test]
    fn test_truncated_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut writer = store.create(LogIndex(5), Term(1), b"").unwrap();
        writer.write_all(&[1u8; 100]).unwrap();
        writer.finish().unwrap();
        let path = dir.path().join(snapshot_file_name(LogIndex(5), Term(1)));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(150)
            .unwrap();
        let error = store.list().unwrap_err();
        assert!(error.to_string().contains("header says 164"), "{error}");
    }
}

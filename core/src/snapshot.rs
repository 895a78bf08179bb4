//! Snapshots of all databases at the applied index, streamed page by page.
//!
//! A snapshot is produced by [`Engine::snapshot`] as a [`SnapshotReader`] (`std::io::Read`):
//! the single-threaded host pulls it incrementally. Each database is read under its own read
//! transaction, opened when the snapshot starts, so later applies do not change what it yields;
//! a page comes from the newest WAL frame at or below the transaction's `mxFrame`, else from the
//! main file (checkpoints wait while a snapshot is live, so neither moves underneath).
//!
//! Stream layout (little-endian):
//!
//! | field                                   | size                       |
//! |-----------------------------------------|----------------------------|
//! | magic `ATSN`                            | 4                          |
//! | version, 1                              | 4                          |
//! | applied index                           | 8                          |
//! | database count D                        | 4                          |
//! | per database: name length N             | 2                          |
//! |   name                                  | N                          |
//! |   page size P                           | 4                          |
//! |   page count C                          | 4                          |
//! |   last command index                    | 8                          |
//! |   pages 1..=C                           | C × P                      |
//! | crc32 of every byte before it           | 4                          |
//!
//! [`Engine::install_snapshot`] writes each database to a temporary file, checks the crc, and
//! only then replaces the node's databases (rename, WAL dropped, record written).

use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;

use atoll_storage::{Disk, DiskFile, FileCursor, OpenMode};

use byteorder::{ByteOrder, LittleEndian};

use crate::command::validate_database_name;
use crate::engine::{Engine, SnapshotPart, SNAPSHOT_TEMP_SUFFIX};
use crate::error::EngineError;
use crate::record::{self, Record};
use crate::vfs::{Conn, DbFiles, Role};

const MAGIC: &[u8; 4] = b"ATSN";
const VERSION: u32 = 1;
/// The most databases a snapshot may carry (a node never holds more).
const DATABASES_MAX: u32 = crate::engine::DATABASES_TOTAL_MAX as u32;

struct Part {
    name: String,
    last_command_index: u64,
    page_size: u32,
    page_count: u32,
    _token: Arc<()>,
    source: Source,
}

/// Where a part's pages come from.
enum Source {
    /// An open database, under a read transaction of its own.
    Open {
        files: Arc<DbFiles>,
        max_frame: u32,
        /// Holds the read transaction that pins the frames this snapshot reads.
        _reader: Conn,
    },
    /// A database closed while idle: its WAL is empty and its main file cannot change while
    /// the part's token lives, so pages come from the main file, opened only while the stream
    /// is in this part (a node may hold more databases than it may keep open).
    Closed {
        disk: Arc<dyn Disk>,
        path: std::path::PathBuf,
        file: Option<Arc<dyn DiskFile>>,
    },
    /// A restore's file (`Engine::restore_database`): its pages, in order.
    Restore(Box<dyn Read + Send>),
}

impl Part {
    fn read_page(&mut self, page: u32, out: &mut [u8]) -> io::Result<()> {
        let page_size = u64::from(self.page_size);
        match &mut self.source {
            Source::Open {
                files, max_frame, ..
            } => match files.find_frame(page, *max_frame)? {
                Some(frame) => files.read_wal_page(frame, out),
                None => files.read_main_page(page, out),
            },
            Source::Closed { disk, path, file } => {
                let file = match file {
                    Some(file) => file,
                    None => file.insert(disk.open(path, OpenMode::Read)?),
                };
                file.read_exact_at(out, u64::from(page - 1) * page_size)?;
                if page == self.page_count {
                    self.source = Source::Closed {
                        disk: Arc::clone(disk),
                        path: std::mem::take(path),
                        file: None,
                    };
                }
                Ok(())
            }
            Source::Restore(reader) => reader.read_exact(out),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Header,
    Database(usize),
    Page(usize, u32),
    Trailer,
    Done,
}

/// A snapshot being streamed; read it to the end (its last 4 bytes are a crc32).
pub struct SnapshotReader {
    index: u64,
    parts: Vec<Part>,
    stage: Stage,
    chunk: Vec<u8>,
    position: usize,
    crc: crc32fast::Hasher,
}

impl SnapshotReader {
    /// The applied index the snapshot reflects.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Bytes the whole stream will have.
    pub fn len_bytes(&self) -> u64 {
        let mut total = 4 + 4 + 8 + 4 + 4;
        for part in &self.parts {
            total += 2 + part.name.len() as u64 + 4 + 4 + 8;
            total += u64::from(part.page_count) * u64::from(part.page_size);
        }
        total
    }

    fn refill(&mut self) -> io::Result<()> {
        self.chunk.clear();
        self.position = 0;
        match self.stage {
            Stage::Header => {
                self.chunk.extend_from_slice(MAGIC);
                push_u32(&mut self.chunk, VERSION);
                push_u64(&mut self.chunk, self.index);
                push_u32(&mut self.chunk, self.parts.len() as u32);
                self.stage = if self.parts.is_empty() {
                    Stage::Trailer
                } else {
                    Stage::Database(0)
                };
            }
            Stage::Database(at) => {
                let part = &self.parts[at];
                let mut length = [0u8; 2];
                LittleEndian::write_u16(&mut length, part.name.len() as u16);
                self.chunk.extend_from_slice(&length);
                self.chunk.extend_from_slice(part.name.as_bytes());
                push_u32(&mut self.chunk, part.page_size);
                push_u32(&mut self.chunk, part.page_count);
                push_u64(&mut self.chunk, part.last_command_index);
                self.stage = self.after_page(at, 0);
            }
            Stage::Page(at, page) => {
                let part = &mut self.parts[at];
                self.chunk.resize(part.page_size as usize, 0);
                part.read_page(page, &mut self.chunk)?;
                self.stage = self.after_page(at, page);
            }
            Stage::Trailer => {
                let crc = std::mem::take(&mut self.crc).finalize();
                push_u32(&mut self.chunk, crc);
                self.stage = Stage::Done;
                return Ok(());
            }
            Stage::Done => return Ok(()),
        }
        self.crc.update(&self.chunk);
        Ok(())
    }

    fn after_page(&self, at: usize, page: u32) -> Stage {
        if page < self.parts[at].page_count {
            Stage::Page(at, page + 1)
        } else if at + 1 < self.parts.len() {
            Stage::Database(at + 1)
        } else {
            Stage::Trailer
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position == self.chunk.len() {
            if matches!(self.stage, Stage::Done) {
                return Ok(0);
            }
            self.refill()?;
        }
        let count = out.len().min(self.chunk.len() - self.position);
        out[..count].copy_from_slice(&self.chunk[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

/// One database's file image; see [`Engine::database_image`].
pub struct DatabaseImage {
    part: Part,
    /// The next page to read (1-based); past `page_count` when done.
    page_next: u32,
    chunk: Vec<u8>,
    position: usize,
}

impl DatabaseImage {
    /// The database's page size.
    pub fn page_size(&self) -> u32 {
        self.part.page_size
    }

    /// The pages in the image.
    pub fn page_count(&self) -> u32 {
        self.part.page_count
    }

    /// The image's length in bytes: whole pages, so a multiple of 512.
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.part.page_count) * u64::from(self.part.page_size)
    }
}

impl Read for DatabaseImage {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position == self.chunk.len() {
            if self.page_next > self.part.page_count {
                return Ok(0);
            }
            let page = self.page_next;
            self.chunk.resize(self.part.page_size as usize, 0);
            self.part.read_page(page, &mut self.chunk)?;
            self.page_next += 1;
            self.position = 0;
        }
        let count = out.len().min(self.chunk.len() - self.position);
        out[..count].copy_from_slice(&self.chunk[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

fn push_u32(out: &mut Vec<u8>, value: u32) {
    let mut bytes = [0u8; 4];
    LittleEndian::write_u32(&mut bytes, value);
    out.extend_from_slice(&bytes);
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut bytes = [0u8; 8];
    LittleEndian::write_u64(&mut bytes, value);
    out.extend_from_slice(&bytes);
}

/// A reader that updates a crc with everything it reads.
struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: crc32fast::Hasher,
}

impl CrcReader<'_> {
    fn exact(&mut self, out: &mut [u8]) -> Result<(), EngineError> {
        self.inner
            .read_exact(out)
            .map_err(|e| EngineError::BadSnapshot(format!("truncated stream: {e}")))?;
        self.crc.update(out);
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, EngineError> {
        let mut bytes = [0u8; 2];
        self.exact(&mut bytes)?;
        Ok(LittleEndian::read_u16(&bytes))
    }

    fn u32(&mut self) -> Result<u32, EngineError> {
        let mut bytes = [0u8; 4];
        self.exact(&mut bytes)?;
        Ok(LittleEndian::read_u32(&bytes))
    }

    fn u64(&mut self) -> Result<u64, EngineError> {
        let mut bytes = [0u8; 8];
        self.exact(&mut bytes)?;
        Ok(LittleEndian::read_u64(&bytes))
    }
}

struct Incoming {
    name: String,
    page_size: u32,
    last_command_index: u64,
}

impl Engine {
    /// Starts a consistent snapshot of every database at the applied index, from its main file
    /// and WAL: no checkpoint is needed first. Checkpoints of the databases wait until the
    /// reader is dropped.
    ///
    /// [`EngineError::NotSettled`] while some database's files are ahead of the applied index
    /// (after a restart, until replay passes what its last checkpoint covered; see
    /// [`Engine::database_image`]): the snapshot would mix states.
    pub fn snapshot(&mut self) -> Result<SnapshotReader, EngineError> {
        if let Some((database, index)) = self.unsettled() {
            return Err(EngineError::NotSettled { database, index });
        }
        self.snapshot_as_is()
    }

    /// [`Engine::snapshot`] without the check that every database is settled.
    fn snapshot_as_is(&mut self) -> Result<SnapshotReader, EngineError> {
        let mut parts = Vec::new();
        for part in self.snapshot_parts() {
            parts.push(self.open_part(part)?);
        }
        for part in self.closed_snapshot_parts() {
            let bytes = self.disk().metadata(&part.path)?.len;
            let page_count = u32::try_from(bytes / u64::from(part.page_size)).map_err(|_| {
                EngineError::CorruptRecord(format!("{}: too large", part.path.display()))
            })?;
            parts.push(Part {
                name: part.name,
                last_command_index: part.last_command_index,
                page_size: part.page_size,
                page_count,
                _token: part.token,
                source: Source::Closed {
                    disk: Arc::clone(self.disk()),
                    path: part.path,
                    file: None,
                },
            });
        }
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(SnapshotReader {
            index: self.applied_index(),
            parts,
            stage: Stage::Header,
            chunk: Vec::new(),
            position: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Opens a read transaction on one database and sizes what it sees.
    fn open_part(&self, part: SnapshotPart) -> Result<Part, EngineError> {
        let SnapshotPart {
            name,
            path,
            files,
            last_command_index,
            token,
        } = part;
        let reader = Conn::open(self.vfs(), &path, Role::Plain, Some(self.cache_kib()))?;
        reader.execute_batch("BEGIN")?;
        reader
            .connection()
            .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let page_size = files.page_size();
        let (max_frame, page_count) = match files.index_header()? {
            Some(header) if header.max_frame > 0 => (header.max_frame, header.db_size_pages),
            _ => (0, (files.main_len()? / u64::from(page_size)) as u32),
        };
        Ok(Part {
            name,
            last_command_index,
            page_size,
            page_count,
            _token: token,
            source: Source::Open {
                files,
                max_frame,
                _reader: reader,
            },
        })
    }

    /// A consistent image of database `name` as of the applied index: its main file as a
    /// checkpoint would leave it (every committed frame applied), streamed page by page without
    /// holding it in memory. `None` if the node has no such database. Like a snapshot, the image
    /// holds a read transaction: checkpoints of the database wait until it is dropped.
    ///
    /// [`EngineError::NotSettled`] while the database's files are not its state as of the
    /// applied index: after a restart its main file may be ahead of the applied index (a
    /// checkpoint copied pages of later commands, whether or not it finished), and stays so
    /// until replay has applied the log up to the last index it may reflect.
    pub fn database_image(&mut self, name: &str) -> Result<Option<DatabaseImage>, EngineError> {
        self.reopen(name)?;
        if let Some(index) = self.settled_at(name).filter(|&i| i > self.applied_index()) {
            return Err(EngineError::NotSettled {
                database: name.to_string(),
                index,
            });
        }
        let Some(part) = self.snapshot_parts().into_iter().find(|p| p.name == name) else {
            return Ok(None);
        };
        let part = self.open_part(part)?;
        Ok(Some(DatabaseImage {
            part,
            page_next: 1,
            chunk: Vec::new(),
            position: 0,
        }))
    }

    /// Replaces every database of this node with those of a snapshot stream. The stream is
    /// written to temporary files and its crc checked first; on any error nothing changes.
    /// Then open transactions are rolled back, queued and proposed writes fail, and sessions
    /// must open their databases again. Returns the snapshot's index, now the applied index.
    ///
    /// If the node crashes during the swap, [`Engine::open`] reports a checkpoint index below
    /// the snapshot's for some database: the host installs the snapshot again.
    pub fn install_snapshot(&mut self, stream: &mut dyn Read) -> Result<u64, EngineError> {
        // No record may be written behind the swap's back.
        self.wait_checkpoints();
        let (index, incoming) = self.receive_snapshot(stream)?;
        self.swap_in(index, incoming, "the database was replaced by a snapshot")
    }

    /// Replaces database `name` (created if absent) with the `page_count` pages of `page_size`
    /// bytes that `source` yields, as the command at `index` (a restore's last piece): after it
    /// the applied index is `index` and the database's last command is `index`. The other
    /// databases are carried over as they are: the swap is the snapshot install's (every
    /// database written to a temporary file and checked first, then renamed into place with
    /// its record; sessions must open their databases again), so it is atomic for readers and
    /// crash-safe, at the cost of copying the other databases once. On error nothing changed.
    pub fn restore_database(
        &mut self,
        name: &str,
        source: Box<dyn Read + Send>,
        page_size: u32,
        page_count: u32,
        index: u64,
    ) -> Result<(), EngineError> {
        validate_database_name(name)
            .map_err(|why| EngineError::BadSnapshot(format!("database name: {why}")))?;
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) || page_count == 0 {
            return Err(EngineError::BadSnapshot(format!(
                "{page_count} pages of {page_size} bytes"
            )));
        }
        if index <= self.applied_index() {
            return Err(EngineError::BadSnapshot(format!(
                "restore at index {index}, applied {} already",
                self.applied_index()
            )));
        }
        self.wait_checkpoints();
        // Every database as it is (open ones under a read transaction, closed ones from their
        // main files), the restored one replaced by the file.
        let mut stream = self.snapshot_as_is()?;
        stream.index = index;
        stream.parts.retain(|part| part.name != name);
        stream.parts.push(Part {
            name: name.to_string(),
            last_command_index: index,
            page_size,
            page_count,
            _token: Arc::new(()),
            source: Source::Restore(source),
        });
        let received = self.receive_snapshot(&mut stream);
        drop(stream); // The read transactions end before the swap.
        let (stream_index, incoming) = received?;
        debug_assert_eq!(stream_index, index);
        self.swap_in(index, incoming, "the database was replaced by a restore")?;
        log::info!("restored database {name:?} at index {index} ({page_count} pages)");
        Ok(())
    }

    /// Reads a snapshot stream into temporary files; nothing else changes (the temporary files
    /// are removed on error).
    fn receive_snapshot(
        &mut self,
        stream: &mut dyn Read,
    ) -> Result<(u64, Vec<Incoming>), EngineError> {
        let dir = self.dir().to_path_buf();
        let disk = Arc::clone(self.disk());
        let mut incoming: Vec<Incoming> = Vec::new();
        match receive(&*disk, stream, &dir, &mut incoming) {
            Ok(index) => Ok((index, incoming)),
            Err(error) => {
                for database in &incoming {
                    let _ = disk.remove_file(&temp_path(&dir, &database.name));
                }
                Err(error)
            }
        }
    }

    /// Replaces the node's databases with the received ones, at `index`.
    fn swap_in(
        &mut self,
        index: u64,
        incoming: Vec<Incoming>,
        reason: &str,
    ) -> Result<u64, EngineError> {
        let dir = self.dir().to_path_buf();
        let disk = Arc::clone(self.disk());
        self.detach_all(reason);
        // Every record is rewritten at the snapshot's index, above any mark.
        crate::engine::remove_idle_marks(&*disk, &dir)?;
        for name in fs_database_names(&*disk, &dir)? {
            if !incoming.iter().any(|d| d.name == name) {
                let path = dir.join(&name);
                record::remove(&*disk, &path)?;
                let _ = disk.remove_file(&crate::vfs::wal_path_of(&path));
                disk.remove_file(&path)?;
            }
        }
        let mut records = Vec::with_capacity(incoming.len());
        for database in &incoming {
            let path = dir.join(&database.name);
            let record = match record::read(&*disk, &path)? {
                Some(old) => {
                    // Mark the swap: until the new record lands the file may be either state.
                    let intent = Record {
                        intent_index: index.max(old.checkpoint_index),
                        ..old
                    };
                    record::write(&*disk, &path, &intent)?
                }
                // A new database: its record comes first, saying it is not there yet (index 0,
                // intent the snapshot's), so a crash before the end makes the host install the
                // snapshot again instead of losing this database.
                None => record::write(
                    &*disk,
                    &path,
                    &Record {
                        page_size: database.page_size,
                        checkpoint_index: 0,
                        last_command_index: 0,
                        intent_index: index,
                        sequence: 0,
                    },
                )?,
            };
            disk.rename(&temp_path(&dir, &database.name), &path)?;
            let _ = disk.remove_file(&crate::vfs::wal_path_of(&path));
            records.push((path, record));
        }
        // The renames are durable before any record names the snapshot's index: a record
        // (synced in place) must never outlive, through a power loss, the file it describes
        // (seed 804: a failed directory sync, a power cut, and the old file under a record
        // claiming the snapshot's index).
        disk.sync_dir(&dir)?;
        for (database, (path, record)) in incoming.iter().zip(records) {
            let record = Record {
                page_size: database.page_size,
                checkpoint_index: index,
                last_command_index: database.last_command_index,
                intent_index: 0,
                ..record
            };
            record::write(&*disk, &path, &record)?;
        }
        disk.sync_dir(&dir)?;
        self.reattach_after_install(index)?;
        log::info!(
            "installed databases at index {index} ({} databases)",
            incoming.len()
        );
        Ok(index)
    }
}

fn temp_path(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}{SNAPSHOT_TEMP_SUFFIX}"))
}

/// Names of databases with a record in `dir`.
fn fs_database_names(disk: &dyn Disk, dir: &std::path::Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in disk.read_dir(dir)? {
        if let Some(name) = entry
            .to_str()
            .and_then(|n| n.strip_suffix(record::RECORD_SUFFIX))
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads a snapshot stream into temporary files; returns its index once the crc matched.
fn receive(
    disk: &dyn Disk,
    stream: &mut dyn Read,
    dir: &std::path::Path,
    incoming: &mut Vec<Incoming>,
) -> Result<u64, EngineError> {
    let mut reader = CrcReader {
        inner: stream,
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 4];
    reader.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(EngineError::BadSnapshot("bad magic".to_string()));
    }
    let version = reader.u32()?;
    if version != VERSION {
        return Err(EngineError::BadSnapshot(format!(
            "unknown version {version}"
        )));
    }
    let index = reader.u64()?;
    let count = reader.u32()?;
    if count > DATABASES_MAX {
        return Err(EngineError::BadSnapshot(format!("{count} databases")));
    }
    let mut page = Vec::new();
    for _ in 0..count {
        let length = usize::from(reader.u16()?);
        let mut name = vec![0u8; length];
        reader.exact(&mut name)?;
        let name = String::from_utf8(name)
            .map_err(|_| EngineError::BadSnapshot("database name is not UTF-8".to_string()))?;
        validate_database_name(&name)
            .map_err(|why| EngineError::BadSnapshot(format!("database name: {why}")))?;
        if incoming.iter().any(|d| d.name == name) {
            return Err(EngineError::BadSnapshot(format!("{name:?} twice")));
        }
        let page_size = reader.u32()?;
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(EngineError::BadSnapshot(format!("page size {page_size}")));
        }
        let page_count = reader.u32()?;
        let last_command_index = reader.u64()?;
        if last_command_index > index || page_count == 0 {
            return Err(EngineError::BadSnapshot(format!("{name:?}: bad header")));
        }
        incoming.push(Incoming {
            name: name.clone(),
            page_size,
            last_command_index,
        });
        let file = disk.open(&temp_path(dir, &name), OpenMode::Truncate)?;
        let mut writer = BufWriter::with_capacity(256 * 1024, FileCursor::new(file, 0));
        page.resize(page_size as usize, 0);
        for _ in 0..page_count {
            reader.exact(&mut page)?;
            writer.write_all(&page)?;
        }
        let cursor = writer.into_inner().map_err(|e| e.into_error())?;
        cursor.file().sync_all()?;
    }
    let computed = std::mem::take(&mut reader.crc).finalize();
    let mut trailer = [0u8; 4];
    reader
        .inner
        .read_exact(&mut trailer)
        .map_err(|e| EngineError::BadSnapshot(format!("truncated stream: {e}")))?;
    if LittleEndian::read_u32(&trailer) != computed {
        return Err(EngineError::BadSnapshot("checksum mismatch".to_string()));
    }
    Ok(index)
}

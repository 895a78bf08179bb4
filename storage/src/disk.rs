//! The file seam: every file the segment log, the snapshot store and the engine (`atoll-core`)
//! touch goes through a [`Disk`] and the [`DiskFile`]s it opens. Production runs on [`StdDisk`]
//! (std::fs, `pread`/`pwrite`, `fdatasync`, `posix_fallocate`, `flock`: the same system calls
//! as before the seam); the simulator runs on [`crate::SimDisk`], whose files live in memory
//! with a synced image apart from the unsynced writes, so that a power cut can drop what was
//! never synced, tear the last write, run out of space or fail an operation.
//!
//! Durability contract, for every implementation:
//! - [`DiskFile::write_all_at`] and [`DiskFile::set_len`] are visible to every handle of the
//!   file at once (one page cache) and survive a process crash, but not a power cut: only what
//!   [`DiskFile::sync`] made durable does.
//! - A new name ([`DiskFile`] created by [`Disk::open`], [`Disk::rename`], [`Disk::create_dir`])
//!   or a removed one ([`Disk::remove_file`]) is durable only once its directory is synced
//!   ([`Disk::sync_dir`]).
//! - An operation that fails with `ENOSPC` (`io::ErrorKind::StorageFull`) changed nothing. Any
//!   other failed write or sync may have changed anything: callers treat it as fatal (a failed
//!   fsync is never retried, see ARCHITECTURE.md, "Durability and crash recovery").
//!
//! The segment log keeps its memory maps in production: [`DiskFile::as_std`] hands it the
//! `std::fs::File` to map. A file without one (the simulator's) is read into memory and written
//! through [`DiskFile::write_all_at`] instead (`mmap.rs`).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mmap;

/// How [`Disk::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reading only; the file must exist.
    Read,
    /// Reading and writing; the file must exist.
    Write,
    /// Reading and writing; created empty if missing, kept as it is otherwise.
    Create,
    /// Reading and writing; created empty, failing (`AlreadyExists`) if it exists.
    CreateNew,
    /// Reading and writing; created if missing, emptied otherwise.
    Truncate,
}

/// What [`Disk::metadata`] tells of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMetadata {
    /// A directory (otherwise a regular file).
    pub is_dir: bool,
    /// The length of a file in bytes (0 for a directory).
    pub len: u64,
}

/// A file system: names, directories, free space. Implementations are shared between threads
/// (the engine's checkpointer syncs files from its own).
pub trait Disk: Send + Sync + fmt::Debug {
    /// Opens the file at `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;

    /// Renames `from` to `to` (a file or a directory), replacing a file at `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path` (open handles keep reading and writing it).
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Creates the directory `path`, whose parent must exist; `AlreadyExists` if it does.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// The names in the directory `path`, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;

    /// Makes the names in the directory `path` durable (creations, renames, removals).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Writes zeros over `range` of the file at `path`, whose blocks there are allocated
    /// ([`DiskFile::allocate`]), so that later writes into it overwrite blocks the file system
    /// counts as written. A preallocated block is *unwritten* until then (ext4, XFS): its first
    /// write changes the file's extent map, and the `fdatasync` after it must write that too (a
    /// journal commit, or the inode without a journal); an overwrite leaves only the data.
    /// The caller syncs the file afterwards. This default writes through an ordinary handle.
    fn write_zeros(&self, path: &Path, range: Range<u64>) -> io::Result<()> {
        let file = self.open(path, OpenMode::Write)?;
        write_zeros_at(&*file, range)
    }

    /// What is at `path`; `NotFound` if nothing.
    fn metadata(&self, path: &Path) -> io::Result<FileMetadata>;

    /// The absolute, normalized form of `path`, which must exist.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;

    /// The bytes an unprivileged process can still allocate on the file system of `path`.
    fn available_bytes(&self, path: &Path) -> io::Result<u64>;

    /// The files it can still create there, or `None` when the file system does not count them.
    fn available_inodes(&self, path: &Path) -> io::Result<Option<u64>>;
}

/// An open file. Handles are shared (`Arc`) and every method takes `&self`: the file's state is
/// the file system's, as with `pread`/`pwrite` on one descriptor.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`, growing the file if it ends before.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reserves real blocks for the first `len` bytes (growing the file to `len` if shorter),
    /// so that later writes into them cannot fail for want of space (`posix_fallocate`).
    fn allocate(&self, len: u64) -> io::Result<()>;

    /// Makes the file's data and length durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;

    /// Makes the file's data and all its metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;

    /// Takes an exclusive lock on the file, held until every handle of this open is dropped;
    /// `Ok(false)` if someone else holds it.
    fn try_lock(&self) -> io::Result<bool>;

    /// The operating system's file, when there is one (the segment log maps it).
    fn as_std(&self) -> Option<&File>;

    /// An offset from which on the file reads as zeros (its length if that is not known): a
    /// reader copying a preallocated file whole into memory can stop there.
    fn zeros_from(&self) -> io::Result<u64> {
        self.size()
    }
}

/// Files to delete from one directory, then the directory synced: space given back off the
/// caller's thread (a large file's unlink and the directory's fsync take milliseconds). Only
/// for files whose removal no reader depends on: old snapshots, and log segments a durable
/// compaction point already covers (recovery deletes any a crash leaves).
#[derive(Debug)]
pub struct Removal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl Removal {
    /// The removal of `paths`, all in `dir`.
    pub fn new(disk: Arc<dyn Disk>, dir: PathBuf, paths: Vec<PathBuf>) -> Removal {
        Removal { disk, dir, paths }
    }

    /// The files to delete.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Deletes the files (one already gone is no error), then syncs the directory. A file
    /// that cannot be deleted is logged and left for later; the first such error is returned
    /// once the rest are done.
    pub fn run(&self) -> io::Result<()> {
        let mut first_error = None;
        for path in &self.paths {
            match self.disk.remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    log::warn!("could not remove {}: {error}", path.display());
                    first_error.get_or_insert(error);
                }
            }
        }
        if !self.paths.is_empty() {
            self.disk.sync_dir(&self.dir)?;
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl dyn DiskFile + '_ {
    /// Fills `buf` from `offset`; `UnexpectedEof` if the file ends before.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(read) => {
                    buf = &mut buf[read..];
                    offset += read as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads from `offset` into `buf` until it is full or the file ends; the bytes read.
    pub fn read_full_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(done)
    }

    /// The whole file, at most `limit` bytes of it (more is `InvalidData`).
    pub fn read_to_end(&self, limit: u64) -> io::Result<Vec<u8>> {
        let len = self.size()?;
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {limit} expected"),
            ));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        let mut bytes = vec![0u8; len];
        let read = self.read_full_at(&mut bytes, 0)?;
        bytes.truncate(read);
        Ok(bytes)
    }
}

impl dyn Disk + '_ {
    /// Whether something exists at `path`.
    pub fn exists(&self, path: &Path) -> bool {
        self.metadata(path).is_ok()
    }

    /// Whether `path` is a directory.
    pub fn is_dir(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|metadata| metadata.is_dir)
    }

    /// The whole file at `path`, at most `limit` bytes of it (more is `InvalidData`).
    pub fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        self.open(path, OpenMode::Read)?.read_to_end(limit)
    }

    /// Creates `path` and its missing parents (no sync; see [`create_dir_durably`]).
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if self.is_dir(path) {
            return Ok(());
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        match self.create_dir(path) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && self.is_dir(path) => {
                Ok(())
            }
            other => other,
        }
    }

    /// Writes `bytes` as the file at `path` durably: a temporary file written and synced, then
    /// renamed over `path`, then the directory synced. A failure removes the temporary file.
    pub fn write_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let written = self.open(&temp, OpenMode::Truncate).and_then(|file| {
            file.write_all_at(bytes, 0)?;
            file.sync_all()
        });
        if let Err(error) = written {
            let _ = self.remove_file(&temp);
            return Err(error);
        }
        self.rename(&temp, path)?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// A file read or written from a position that moves with each call, as a file descriptor's
/// offset does, through positioned reads and writes (wrap it in a `BufReader` or `BufWriter`).
#[derive(Debug)]
pub struct FileCursor {
    file: Arc<dyn DiskFile>,
    offset: u64,
}

impl FileCursor {
    /// A cursor on `file` at `offset`.
    pub fn new(file: Arc<dyn DiskFile>, offset: u64) -> FileCursor {
        FileCursor { file, offset }
    }

    /// The file.
    pub fn file(&self) -> &Arc<dyn DiskFile> {
        &self.file
    }
}

impl io::Read for FileCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

impl io::Write for FileCursor {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(bytes, self.offset)?;
        self.offset += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Creates `dir` (and its missing parents) if needed, and syncs the parent of each directory it
/// creates, so that the new directory itself survives a crash.
pub fn create_dir_durably(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    if disk.is_dir(dir) {
        return Ok(());
    }
    let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durably(disk, parent)?;
    }
    match disk.create_dir(dir) {
        Ok(()) => {}
        // Created meanwhile by someone else: fine, as long as it is a directory now.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && disk.is_dir(dir) => {}
        Err(error) => return Err(error),
    }
    disk.sync_dir(parent.unwrap_or(Path::new(".")))
}

/// The operating system's file systems: std::fs and the system calls of `mmap.rs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdDisk;

impl StdDisk {
    /// A shared handle on the operating system's file systems.
    pub fn shared() -> Arc<dyn Disk> {
        Arc::new(StdDisk)
    }
}

impl Disk for StdDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::Write => {
                options.write(true);
            }
            OpenMode::Create => {
                options.write(true).create(true).truncate(false);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
            OpenMode::Truncate => {
                options.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(StdFile(options.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    /// With `O_DIRECT` where the file system takes it: the zeros go from one page-aligned
    /// buffer straight to the device, instead of being copied into (and then written back
    /// from) megabytes of page cache, which cost the helper thread that prepares segments a
    /// tenth of both cores under load. The unaligned head, and every byte on a file system
    /// that refuses `O_DIRECT` (tmpfs), go through an ordinary handle.
    fn write_zeros(&self, path: &Path, range: Range<u64>) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        const CHUNK: u64 = 1 << 20;
        let buffered = StdFile(OpenOptions::new().write(true).open(path)?);
        let page = mmap::page_bytes() as u64;
        let aligned = range.start.next_multiple_of(page).min(range.end);
        write_zeros_at(&buffered, range.start..aligned)?;
        let direct_end = aligned + (range.end - aligned) / page * page;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let mut offset = aligned;
        if let Ok(direct) = direct {
            // An anonymous map is page-aligned and reads as zeros.
            let zeros = memmap2::MmapOptions::new().len(CHUNK as usize).map_anon()?;
            while offset < direct_end {
                let chunk = (direct_end - offset).min(CHUNK) as usize;
                match direct.write_all_at(&zeros[..chunk], offset) {
                    Ok(()) => offset += chunk as u64,
                    // Accepted at open, refused at write (some file systems): buffered instead.
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(error) => return Err(error),
                }
            }
        }
        write_zeros_at(&buffered, offset..range.end)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(path)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMetadata> {
        let metadata = fs::metadata(path)?;
        Ok(FileMetadata {
            is_dir: metadata.is_dir(),
            len: if metadata.is_dir() { 0 } else { metadata.len() },
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        fs::canonicalize(path)
    }

    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        mmap::available_bytes(path)
    }

    fn available_inodes(&self, path: &Path) -> io::Result<Option<u64>> {
        mmap::available_inodes(path)
    }
}

/// A file of [`StdDisk`].
#[derive(Debug)]
pub struct StdFile(File);

impl StdFile {
    /// Wraps an open file.
    pub fn new(file: File) -> StdFile {
        StdFile(file)
    }
}

impl DiskFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        mmap::preallocate(&self.0, len)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn try_lock(&self) -> io::Result<bool> {
        match self.0.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn as_std(&self) -> Option<&File> {
        Some(&self.0)
    }
}

/// Writes zeros over `range` of `file`, 64 KiB at a time.
fn write_zeros_at(file: &dyn DiskFile, range: Range<u64>) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut offset = range.start;
    while offset < range.end {
        let chunk = (range.end - offset).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..chunk as usize], offset)?;
        offset += chunk;
    }
    Ok(())
}

//! The only module of this crate with `unsafe` code: memory maps of segment files, block
//! preallocation, and the few other system calls the node needs (`statvfs`, `malloc_trim`).
//!
//! A segment map has one of two backings. In production it maps the segment file itself
//! (the file's [`DiskFile::as_std`]), and the map is only ever *read*: its writer writes with
//! `pwrite` ([`DiskFile::write_all_at`]) and syncs with `fdatasync` ([`DiskFile::sync`]); on
//! Linux the page cache is one, so the map shows those bytes at once. It is the fast way:
//! the first write into a preallocated (unwritten) block changes the file's extent map, which
//! the next sync must write as well, so segments are filled with zeros when prepared; and
//! storing into a shared map of such written blocks measured slower still than `pwrite`.
//! Measured on this project's machine, 4 KiB per sync, three writers at once: 5,700 syncs/s
//! each with `pwrite` over written blocks, 3,600 storing into a map of preallocated blocks,
//! 3,100 appending (one writer alone: 8,700, 5,300 and 4,900; storing into a map of written
//! blocks, 2,100).
//! A file without an operating system file (the simulated disk's) is copied into an anonymous
//! map instead, and its writer stores every byte into the map and writes it through to the
//! file as well: the same frozen-prefix rules hold for both, and the arguments below hold for
//! the anonymous map trivially (nobody else can reach it).
//!
//! memmap2 marks file-backed maps `unsafe` because a file changed or truncated under a live map is
//! undefined behaviour (or `SIGBUS`). Our argument that it cannot happen has four parts:
//! 1. the data directory is locked (`LOCK` file), so no other atoll process opens these files;
//! 2. a segment file is never truncated or shrunk, by anyone, while it exists: the log replaces
//!    files (rename over, unlink) instead, and an unlinked file stays valid under its live maps;
//! 3. every access is bounds-checked against the length we mapped, which is never more than the
//!    file's length at mapping time;
//! 4. bytes become readable through a [`SegmentMap`] only once they are *frozen*, and frozen bytes
//!    are never written again: the single [`SegmentWriter`] of a map writes only above the frozen
//!    mark. So a `&[u8]` handed out never sees its bytes change, and no data race is possible
//!    even though a map is shared between threads through `Arc`.
//!
//! We use `memmap2::MmapRaw` rather than `MmapMut`: an `MmapMut` hands out `&mut [u8]` of the
//! whole map, which would alias the `&[u8]` payload windows already given to readers.
//!
//! Full disks: [`preallocate`] reserves every block of a segment (`posix_fallocate`) before the
//! segment takes an entry, so a full disk shows up as a clean `ENOSPC` there, early, and never
//! in the middle of a batch (nor as the `SIGBUS` a store into a hole of a map would raise).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::disk::DiskFile;

/// Bytes copied at a time from a file into an anonymous map.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// A shared map of a segment file, of which the prefix `0..frozen` is readable and immutable.
pub(crate) struct SegmentMap {
    raw: memmap2::MmapRaw,
    /// Invariant: only increases, and never exceeds `raw.len()`. Bytes below it are never
    /// written again through any map of this crate.
    frozen: AtomicUsize,
    /// Whether `raw` is an anonymous copy of the file rather than a map of it (a file without
    /// an operating system file): its pages are never released, they are the only copy.
    anonymous: bool,
    /// The file of a writable map: the writer writes every byte to it, and a flush syncs it.
    /// `None` for read-only maps.
    file: Option<Arc<dyn DiskFile>>,
}

/// The one writer of a [`SegmentMap`] mapped read-write. Not `Clone`: uniqueness is what makes
/// the unsynchronized writes sound.
///
/// Writes are staged ([`SegmentWriter::write`]) and go to the file together
/// ([`SegmentWriter::flush_staged`]: one `pwrite` for a batch of entries), as whole
/// [`WRITE_BLOCK_BYTES`] blocks: a write that covers only part of a block whose page is not
/// cached makes the kernel read the block from disk first, and segments are filled with zeros
/// by `O_DIRECT`, which leaves nothing of them cached. So the writer keeps a copy of the
/// written bytes of the block it last wrote into (`tail`), and a flush writes the blocks the
/// staged bytes touch: that copy, the staged bytes with zeros in their gaps (never-written
/// bytes of a segment are zeros), and zeros to the last block's end.
pub(crate) struct SegmentWriter {
    map: Arc<SegmentMap>,
    /// The end of the bytes written to the file so far.
    written: usize,
    /// The bytes from the start of the block holding `written` up to `written`.
    tail: Vec<u8>,
    /// The staged blocks, from `staged_start`: bytes not in the file yet.
    staging: Vec<u8>,
    /// Where `staging` starts in the segment (a block boundary), when it holds anything.
    staged_start: usize,
    /// The first staged byte (after the bytes of `tail` copied in front of it).
    staged_first: usize,
    /// The end of the staged bytes; writes only go forward from it.
    staged_end: usize,
}

/// The unit the writer writes in: a file system block (4 KiB on ext4 and XFS by default; a
/// multiple of smaller blocks). Not the memory page, which is 64 KiB on some aarch64 kernels.
pub(crate) const WRITE_BLOCK_BYTES: usize = 4096;

/// Staged bytes past which the caller should flush: the buffer stays small (a batch of large
/// entries is written in pieces of about this size).
pub(crate) const STAGING_FLUSH_BYTES: usize = 256 << 10;

impl SegmentMap {
    /// Maps all of `file` read-only; every byte is frozen at once.
    pub(crate) fn open_read_only(file: &dyn DiskFile) -> io::Result<Arc<SegmentMap>> {
        let (raw, anonymous) = match file.as_std() {
            Some(file) => (memmap2::MmapOptions::new().map_raw_read_only(file)?, false),
            None => {
                let len = usize::try_from(file.size()?)
                    .map_err(|_| io::Error::other("segment larger than the address space"))?;
                (copy_into_anonymous(file, len)?, true)
            }
        };
        let len = raw.len();
        Ok(Arc::new(SegmentMap {
            raw,
            frozen: AtomicUsize::new(len),
            anonymous,
            file: None,
        }))
    }

    /// Maps the first `len` bytes of `file` for its unique writer, with the first `frozen`
    /// bytes already frozen (a segment's header, and the entries recovered from disk), and
    /// returns the map with the writer. The file must be at least `len` bytes long, its blocks
    /// preallocated, and every byte from `frozen` on zero (the writer writes whole blocks).
    pub(crate) fn open_writable(
        file: &Arc<dyn DiskFile>,
        len: usize,
        frozen: usize,
    ) -> io::Result<(Arc<SegmentMap>, SegmentWriter)> {
        assert!(frozen <= len);
        let file_len = file.size()?;
        assert!(len as u64 <= file_len, "mapping past the end of the file");
        let (raw, anonymous) = match file.as_std() {
            Some(std_file) => (
                memmap2::MmapOptions::new()
                    .len(len)
                    .map_raw_read_only(std_file)?,
                false,
            ),
            None => (copy_into_anonymous(&**file, len)?, true),
        };
        assert_eq!(raw.len(), len);
        let map = Arc::new(SegmentMap {
            raw,
            frozen: AtomicUsize::new(frozen),
            anonymous,
            file: Some(Arc::clone(file)),
        });
        let tail_start = frozen - frozen % WRITE_BLOCK_BYTES;
        let mut tail = vec![0; frozen - tail_start];
        let read = file.read_full_at(&mut tail, tail_start as u64)?;
        if read < tail.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file shorter than its entries",
            ));
        }
        let writer = SegmentWriter {
            map: Arc::clone(&map),
            written: frozen,
            tail,
            staging: Vec::new(),
            staged_start: 0,
            staged_first: frozen,
            staged_end: frozen,
        };
        Ok((map, writer))
    }

    /// The mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// The end of the frozen (readable, immutable) prefix.
    pub(crate) fn frozen(&self) -> usize {
        self.frozen.load(Ordering::Acquire)
    }

    /// The bytes in `range`, which must lie within the frozen prefix (panics otherwise: reading
    /// bytes still being written is a programmer error).
    pub(crate) fn slice(&self, range: Range<usize>) -> &[u8] {
        assert!(range.start <= range.end);
        assert!(
            range.end <= self.frozen(),
            "reading unfrozen bytes {range:?} of a segment map"
        );
        if range.is_empty() {
            return &[];
        }
        // SAFETY: `range` lies within the frozen prefix, which lies within the map (invariant of
        // `frozen`); the file is never shrunk while mapped (module comment, part 2), so the pages
        // are backed; frozen bytes are never written again (part 4), so the shared slice stays
        // immutable for its whole lifetime, which is tied to `self` and so to the mapping.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(range.start), range.len()) }
    }
}

impl SegmentMap {
    /// Drops this process's resident pages of `range` (whole pages inside it only), which must
    /// lie within the frozen prefix; returns how many bytes were released. The bytes stay
    /// readable: the next access maps them again from the kernel's page cache (a minor fault),
    /// or from disk if the kernel evicted them. Resident segment pages count in the node's RSS;
    /// those of entries nobody is about to read are worth dropping. A failed `madvise` is only
    /// a missed hint: logged, nothing changes.
    pub(crate) fn release(&self, range: Range<usize>) -> usize {
        assert!(range.start <= range.end);
        assert!(
            range.end <= self.frozen(),
            "releasing unfrozen bytes {range:?} of a segment map"
        );
        // The map starts on a page boundary (`mmap` of offset 0), so offsets that are multiples
        // of the page size are page-aligned addresses.
        if self.anonymous {
            // Dropped pages of an anonymous map would read back as zeros.
            return 0;
        }
        let page = page_bytes();
        let start = range.start.next_multiple_of(page);
        let end = range.end - range.end % page;
        if start >= end {
            return 0;
        }
        // SAFETY: `start..end` lies within the map (below `frozen`, which never exceeds its
        // length) and covers only whole pages of the frozen prefix, which no map of this crate
        // ever writes again (module comment, part 4). Every map but the anonymous ones
        // (returned above) is a *shared* file mapping (`map_raw`, `map_raw_read_only`), for
        // which `MADV_DONTNEED` only unmaps
        // the pages from this process: a later access maps the same file page again, with the
        // same bytes (madvise(2): "repopulating the memory contents from the up-to-date contents
        // of the underlying mapped file"; a dirty page stays dirty in the page cache, so an
        // unsynced byte is neither lost nor changed). The file is never changed under the map
        // by anyone (parts 1 and 2), so a slice handed out over these bytes reads the same
        // values before and after: nothing observable changes for safe code.
        let advised = unsafe {
            self.raw
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        match advised {
            Ok(()) => end - start,
            Err(error) => {
                log::debug!("madvise(DONTNEED) of a segment map: {error}");
                0
            }
        }
    }
}

impl SegmentWriter {
    /// The map this writer writes.
    pub(crate) fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }

    /// Stages `parts`, one after the other, at `offset`, which must be at or above the frozen
    /// mark and the end of the last write, and end within the map (panics otherwise). The
    /// bytes reach the file at the next [`SegmentWriter::flush_staged`]; they are not readable
    /// until flushed and frozen.
    pub(crate) fn write(&mut self, offset: usize, parts: &[&[u8]]) {
        assert!(
            offset >= self.map.frozen(),
            "writing over frozen bytes at offset {offset}"
        );
        assert!(
            offset >= self.staged_end,
            "writing at {offset}, behind the last write"
        );
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let end = offset.checked_add(len).expect("offset overflow");
        assert!(end <= self.map.len(), "writing past the end of the map");
        if len == 0 {
            return;
        }
        if self.map.anonymous {
            let mut at = offset;
            for part in parts {
                self.store_anonymous(at, part);
                at += part.len();
            }
        }
        if self.staging.is_empty() {
            let start = offset - offset % WRITE_BLOCK_BYTES;
            self.staged_start = start;
            self.staged_first = offset;
            if start == self.written - self.tail.len() {
                self.staging.extend_from_slice(&self.tail);
            }
        }
        self.staging.resize(offset - self.staged_start, 0);
        for part in parts {
            self.staging.extend_from_slice(part);
        }
        self.staged_end = end;
    }

    /// The bytes staged and not flushed yet.
    pub(crate) fn staged_bytes(&self) -> usize {
        self.staging.len()
    }

    /// The offset of the first byte staged and not flushed yet, if any.
    pub(crate) fn staged_from(&self) -> Option<usize> {
        (!self.staging.is_empty()).then_some(self.staged_first)
    }

    /// Writes the staged bytes to the file, as the whole blocks they touch (one `pwrite`). A
    /// failed write leaves any part of them in the file (the caller treats it as a failed
    /// write, for good).
    pub(crate) fn flush_staged(&mut self) -> io::Result<()> {
        if self.staging.is_empty() {
            return Ok(());
        }
        let start = self.staged_start;
        let end = self.staged_end;
        let stop = end.next_multiple_of(WRITE_BLOCK_BYTES).min(self.map.len());
        self.staging.resize(stop - start, 0);
        let file = self.map.file.as_ref().expect("a writer's map has its file");
        let written = file.write_all_at(&self.staging, start as u64);
        let last_block = end - end % WRITE_BLOCK_BYTES;
        self.tail.clear();
        self.tail
            .extend_from_slice(&self.staging[last_block - start..end - start]);
        self.written = end;
        self.staging.clear();
        if self.staging.capacity() > 2 * STAGING_FLUSH_BYTES {
            // One large entry's buffer is not kept: the node's memory stays bounded.
            self.staging = Vec::new();
        }
        written
    }

    /// Stores `bytes` at `offset` of an anonymous map (a file without an operating system
    /// file, whose map is a copy: written to as well as to the file).
    fn store_anonymous(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        assert!(self.map.anonymous && offset >= self.map.frozen() && end <= self.map.len());
        {
            // SAFETY: the destination `offset..end` lies within the anonymous map (asserted
            // above), which nothing outside this crate can reach. It is above the frozen mark,
            // so no reader holds a slice of it, and this writer is the only one of the map
            // (`&mut self`, not `Clone`), so nobody else writes it. `ptr::copy` tolerates
            // overlap, should `bytes` come from the map itself.
            unsafe {
                std::ptr::copy(
                    bytes.as_ptr(),
                    self.map.raw.as_mut_ptr().add(offset),
                    bytes.len(),
                );
            }
        }
    }

    /// Makes `0..end` readable and immutable. `end` never moves backwards, and never passes
    /// a staged byte not flushed yet.
    pub(crate) fn freeze(&mut self, end: usize) {
        assert!(end <= self.map.len());
        assert!(
            self.staging.is_empty() || end <= self.staged_first,
            "freezing staged bytes not in the file yet"
        );
        assert!(
            end >= self.map.frozen(),
            "the frozen mark never moves backwards"
        );
        self.map.frozen.store(end, Ordering::Release);
    }

    /// Writes the dirty pages of `range` to disk and waits for them ([`SegmentMap::flush`]).
    pub(crate) fn flush(&self, range: Range<usize>) -> io::Result<()> {
        self.map.flush(range)
    }
}

impl SegmentMap {
    /// Makes the bytes written to `range` durable and waits for the disk (`fdatasync` of the
    /// file, which also commits the file system metadata needed to read them back). Any thread
    /// may flush while the writer goes on writing above the range: bytes written meanwhile may
    /// or may not be flushed too, and a later flush covers them either way. A read-only map
    /// has nothing to flush.
    pub(crate) fn flush(&self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end);
        assert!(range.end <= self.len());
        match &self.file {
            Some(file) if !range.is_empty() => file.sync(),
            _ => Ok(()),
        }
    }
}

/// An anonymous map of `len` bytes holding the first `len` bytes of `file` (zeros past its end,
/// and past [`DiskFile::zeros_from`] without reading them).
fn copy_into_anonymous(file: &dyn DiskFile, len: usize) -> io::Result<memmap2::MmapRaw> {
    let mut anonymous = memmap2::MmapOptions::new().len(len).map_anon()?;
    let end = usize::try_from(file.zeros_from()?)
        .unwrap_or(usize::MAX)
        .min(len);
    let mut offset = 0;
    while offset < end {
        let chunk = COPY_CHUNK_BYTES.min(end - offset);
        let read = file.read_full_at(&mut anonymous[offset..offset + chunk], offset as u64)?;
        if read < chunk {
            break;
        }
        offset += chunk;
    }
    Ok(memmap2::MmapRaw::from(anonymous))
}

/// The size of a memory page; a power of two.
pub(crate) fn page_bytes() -> usize {
    // SAFETY: `sysconf` only reads a system constant; `_SC_PAGESIZE` is a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).unwrap_or(4096);
    assert!(page.is_power_of_two());
    page
}

/// Reserves real disk blocks for the first `len` bytes of `file` (growing it to `len` if
/// shorter), so that later stores through a map never hit a hole: a full disk fails here, with
/// `ENOSPC` (or `EFBIG` past a file size limit), instead of raising `SIGBUS` later.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off64_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment length overflow"))?;
    // SAFETY: a plain system call on a file descriptor that `file` owns and keeps open for the
    // duration of the call; it touches no memory of ours.
    let rc = unsafe { libc::posix_fallocate64(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        // posix_fallocate returns the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Returns the free memory of the C heap to the kernel (glibc's `malloc_trim(0)`): memory freed
/// in the middle of the heap (closed sessions' SQLite connections, buffers of a burst) otherwise
/// stays resident for as long as a live allocation sits above it. True if memory was
/// returned; always false on C libraries without it. It walks every free chunk, taking each
/// arena's lock: call it when the process is idle, not per request.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointer and is thread-safe (it locks each arena); it
        // only gives free pages of the allocator back to the kernel, never moving or changing a
        // live allocation.
        let rc = unsafe { libc::malloc_trim(0) };
        rc == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The bytes an unprivileged process can still allocate on the file system holding `path`
/// (`statvfs`: available blocks times the fragment size). Lives here, beside `preallocate`,
/// because this module is where the storage crate's system calls are.
pub fn available_bytes(path: &std::path::Path) -> io::Result<u64> {
    let stats = statvfs(path)?;
    // The field types differ between 32- and 64-bit targets (`fsblkcnt_t`, `c_ulong`).
    #[allow(clippy::useless_conversion)]
    let blocks = u64::from(stats.f_bavail);
    #[allow(clippy::useless_conversion)]
    let fragment = u64::from(stats.f_frsize);
    Ok(blocks.saturating_mul(fragment))
}

/// The files (inodes) an unprivileged process can still create on the file system holding
/// `path`, or `None` when the file system has no fixed inode count (it reports zero inodes in
/// all, as btrfs does). A disk can have bytes left and no inode: no new segment, snapshot or
/// WAL file can be created there either.
pub fn available_inodes(path: &std::path::Path) -> io::Result<Option<u64>> {
    let stats = statvfs(path)?;
    #[allow(clippy::useless_conversion)]
    let total = u64::from(stats.f_files);
    #[allow(clippy::useless_conversion)]
    let available = u64::from(stats.f_favail);
    Ok((total > 0).then_some(available))
}

fn statvfs(path: &std::path::Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `statvfs` is plain old data; all-zero bytes are a valid value of it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` is a valid,
    // writable `statvfs` the call fills in; nothing keeps either pointer afterwards.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::disk::{Disk, OpenMode, StdFile};
    use crate::sim_disk::SimDisk;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    fn std_file(file: File) -> Arc<dyn DiskFile> {
        Arc::new(StdFile::new(file))
    }

    fn new_file(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn test_available_bytes_follow_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
        if let Some(inodes) = available_inodes(dir.path()).unwrap() {
            assert!(inodes > 0);
        }
        assert!(available_inodes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn test_frozen_bytes_are_readable_and_shared() {
        // Written bytes become visible through the shared map only once frozen; a read-only map
        // of the same file sees them too (one page cache).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = new_file(&path);
        preallocate(&file, 8192).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8192);
        let file = std_file(file);
        let (map, mut writer) = SegmentMap::open_writable(&file, 8192, 0).unwrap();
        writer.write(0, &[b"hello"]);
        writer.flush_staged().unwrap();
        writer.freeze(5);
        assert_eq!(map.slice(0..5), b"hello");
        writer.write(5, &[b" world"]);
        writer.flush_staged().unwrap();
        writer.freeze(11);
        writer.flush(0..11).unwrap();
        let reader = SegmentMap::open_read_only(&StdFile::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(reader.slice(0..11), b"hello world");
        let mut buf = [0u8; 11];
        file.as_std().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
    }

    #[test]
    fn test_the_writer_writes_whole_blocks_and_keeps_the_bytes_before() {
        // A segment filled with zeros the way spares are (`O_DIRECT` where it works): the
        // writer rewrites whole 4 KiB blocks, so every write must carry the bytes already in
        // its first block (the header, earlier records) and leave zeros in the gaps. Checked
        // through the file, and again after reopening the writer past an unaligned mark.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let disk = crate::disk::StdDisk;
        let file = disk.open(&path, OpenMode::CreateNew).unwrap();
        let len = 4 * WRITE_BLOCK_BYTES;
        file.allocate(len as u64).unwrap();
        file.write_all_at(b"HEADER", 0).unwrap();
        disk.write_zeros(&path, 6..len as u64).unwrap();
        let mut expected = vec![0u8; len];
        expected[..6].copy_from_slice(b"HEADER");
        let (map, mut writer) = SegmentMap::open_writable(&file, len, 6).unwrap();
        let mut put = |writer: &mut SegmentWriter, offset: usize, parts: &[&[u8]]| {
            writer.write(offset, parts);
            writer.flush_staged().unwrap();
            let mut at = offset;
            for part in parts {
                expected[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            writer.freeze(at);
            expected.clone()
        };
        put(&mut writer, 6, &[b"ab", b"cd"]);
        put(&mut writer, 16, &[b"gap before"]);
        let across = vec![7u8; 5000];
        put(&mut writer, 4000, &[b"head", &across]);
        let expected_now = put(&mut writer, 9100, &[b"x"]);
        let mut back = vec![0u8; len];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == expected_now);
        assert_eq!(map.slice(0..9101), &expected_now[..9101]);
        drop(writer);
        // Reopened past an unaligned mark (as after recovery): the block's first bytes come
        // from the file.
        let (_, mut writer) = SegmentMap::open_writable(&file, len, 9101).unwrap();
        let expected_now = put(&mut writer, 9200, &[b"after reopen"]);
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == expected_now);
    }

    #[test]
    fn test_zeros_are_written_over_exactly_the_range() {
        // The range's unaligned ends go through the page cache and its middle through
        // `O_DIRECT` (or the page cache again where the file system refuses it: tmpfs); the
        // bytes around it stay.
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in dirs {
            let path = dir.path().join("file");
            let disk = crate::disk::StdDisk;
            let file = disk.open(&path, OpenMode::CreateNew).unwrap();
            file.write_all_at(&vec![0xff; 3 << 20], 0).unwrap();
            let range = 100..(2 << 20) + 17;
            disk.write_zeros(&path, range.start as u64..range.end as u64)
                .unwrap();
            let mut back = vec![0u8; 3 << 20];
            file.read_exact_at(&mut back, 0).unwrap();
            for (k, byte) in back.iter().enumerate() {
                assert_eq!(*byte, if range.contains(&k) { 0 } else { 0xff }, "byte {k}");
            }
        }
    }

    /// The resident KiB of this process's mappings of files at or below `path` (a file or a
    /// directory), from `/proc/self/smaps` (Linux); panics if there is none. Found by path, not
    /// by address: under qemu-user with a 32-bit guest `smaps` is the host's, whose addresses
    /// are not the guest's.
    pub(crate) fn resident_kib_under(path: &Path) -> u64 {
        let path = path.canonicalize().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut mappings = 0;
        let mut kib = 0;
        let mut ours = false;
        for line in smaps.lines() {
            // A mapping's header: `start-end perms offset dev inode [path]`; its fields follow,
            // each `Name: value`.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_some_and(|first| !first.ends_with(':')) {
                ours = fields
                    .get(5)
                    .is_some_and(|file| Path::new(file).starts_with(&path));
                mappings += usize::from(ours);
            } else if let Some(rss) = line.strip_prefix("Rss:").filter(|_| ours) {
                kib += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        assert!(mappings > 0, "no mapping of {}", path.display());
        kib
    }

    #[test]
    fn test_released_pages_leave_the_process_and_keep_their_bytes() {
        // Reading 1 MiB through a map makes its pages resident in this process (writing does
        // not: it goes through the file); releasing the frozen prefix drops them (the RSS of
        // the mapping falls to the unreleased tail), yet every byte reads back the same,
        // through the same map and through the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 1 << 20;
        preallocate(&file, len as u64).unwrap();
        let file = std_file(file);
        let (map, mut writer) = SegmentMap::open_writable(&file, len, 0).unwrap();
        let bytes: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
        writer.write(0, &[&bytes]);
        writer.flush_staged().unwrap();
        writer.freeze(len - 100);
        assert!(map.slice(0..len - 100) == &bytes[..len - 100]);
        assert!(resident_kib_under(&path) >= 1000);
        // Partial pages at either end stay: only whole pages inside the range go.
        let page = page_bytes();
        assert_eq!(map.release(1..page), 0);
        let released = map.release(0..len - 100);
        assert_eq!(released, len - page);
        assert!(resident_kib_under(&path) <= (page as u64 / 1024) * 2);
        assert!(map.slice(0..len - 100) == &bytes[..len - 100]);
        writer.freeze(len);
        writer.flush(0..len).unwrap();
        let mut back = vec![0u8; len];
        file.as_std().unwrap().read_exact_at(&mut back, 0).unwrap();
        assert!(back == bytes);
    }

    #[test]
    #[should_panic(expected = "releasing unfrozen")]
    fn test_releasing_unfrozen_bytes_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("segment"))
            .unwrap();
        preallocate(&file, 8192).unwrap();
        let (map, _writer) = SegmentMap::open_writable(&std_file(file), 8192, 4096).unwrap();
        map.release(0..8192);
    }

    #[test]
    fn test_a_file_without_an_os_file_is_copied_and_written_through() {
        // A simulated file: its map is an anonymous copy; writes reach the file at once (a
        // process crash keeps them), and only `flush` makes them survive a power cut.
        let disk = SimDisk::new(1);
        let path = Path::new("/segment");
        let file = disk.open(path, OpenMode::Create).unwrap();
        file.allocate(8192).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.sync().unwrap();
        let (map, mut writer) = SegmentMap::open_writable(&file, 8192, 4).unwrap();
        assert_eq!(map.slice(0..4), b"head");
        writer.write(4, &[b"-tail"]);
        writer.flush_staged().unwrap();
        writer.freeze(9);
        assert_eq!(map.slice(0..9), b"head-tail");
        let mut buf = [0u8; 9];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head-tail");
        assert_eq!(&disk.synced_bytes(path).unwrap()[..9], b"head\0\0\0\0\0");
        writer.flush(4..9).unwrap();
        assert_eq!(&disk.synced_bytes(path).unwrap()[..9], b"head-tail");
        let reader =
            SegmentMap::open_read_only(&*disk.open(path, OpenMode::Read).unwrap()).unwrap();
        assert_eq!(reader.len(), 8192);
        assert_eq!(reader.slice(0..9), b"head-tail");
        assert!(reader.slice(9..8192).iter().all(|&b| b == 0));
        // An anonymous copy is the only copy of its bytes: releasing its pages would zero
        // them, so nothing is released.
        assert_eq!(reader.release(0..8192), 0);
        assert_eq!(map.release(0..9), 0);
        assert_eq!(reader.slice(0..9), b"head-tail");
        assert_eq!(map.slice(0..9), b"head-tail");
    }

    #[test]
    #[should_panic(expected = "unfrozen")]
    fn test_reading_unfrozen_bytes_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir.path().join("segment"));
        preallocate(&file, 4096).unwrap();
        let (map, mut writer) = SegmentMap::open_writable(&std_file(file), 4096, 0).unwrap();
        writer.write(0, &[b"abc"]);
        writer.flush_staged().unwrap();
        let _ = map.slice(0..3);
    }

    #[test]
    #[should_panic(expected = "over frozen")]
    fn test_writing_frozen_bytes_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir.path().join("segment"));
        preallocate(&file, 4096).unwrap();
        let (_map, mut writer) = SegmentMap::open_writable(&std_file(file), 4096, 16).unwrap();
        writer.write(8, &[b"abc"]);
    }
}

//! The only module of this crate with `unsafe` code: memory maps of segment files, block
//! preallocation, and the few other system calls the node needs (`statvfs`, `malloc_trim`).
//!
//! A segment map has one of two backings. In production it maps the segment file itself
//! (the file's [`DiskFile::as_std`]). A file without an operating system file (the simulated
//! disk's) is copied into an anonymous map instead, and its writer writes every byte through
//! to the file as well ([`DiskFile::write_all_at`]) and syncs with [`DiskFile::sync`]: the same
//! frozen-prefix rules hold for both, and the arguments below hold for the anonymous map
//! trivially (nobody else can reach it).
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
//! Full disks: a store through a map into a hole of a sparse file raises `SIGBUS` when the file
//! system finds no block for it. [`preallocate`] therefore reserves every block of a segment
//! (`posix_fallocate`) before the segment is ever mapped for writing, so a full disk shows up as a
//! clean `ENOSPC` from `preallocate` and never as a signal.

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
    /// The file of a writable anonymous map: the writer writes every byte through to it, and a
    /// flush syncs it. `None` for a map of the file itself and for read-only maps.
    through: Option<Arc<dyn DiskFile>>,
}

/// The one writer of a [`SegmentMap`] mapped read-write. Not `Clone`: uniqueness is what makes
/// the unsynchronized writes sound.
pub(crate) struct SegmentWriter {
    map: Arc<SegmentMap>,
}

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
            through: None,
        }))
    }

    /// Maps the first `len` bytes of `file` read-write, with the first `frozen` bytes already
    /// frozen (the entries recovered from disk), and returns the map with its unique writer.
    /// The file must be at least `len` bytes long and its blocks preallocated.
    pub(crate) fn open_writable(
        file: &Arc<dyn DiskFile>,
        len: usize,
        frozen: usize,
    ) -> io::Result<(Arc<SegmentMap>, SegmentWriter)> {
        assert!(frozen <= len);
        let file_len = file.size()?;
        assert!(len as u64 <= file_len, "mapping past the end of the file");
        let (raw, through) = match file.as_std() {
            Some(std_file) => (
                memmap2::MmapOptions::new().len(len).map_raw(std_file)?,
                None,
            ),
            None => (copy_into_anonymous(&**file, len)?, Some(Arc::clone(file))),
        };
        assert_eq!(raw.len(), len);
        let map = Arc::new(SegmentMap {
            raw,
            frozen: AtomicUsize::new(frozen),
            anonymous: through.is_some(),
            through,
        });
        let writer = SegmentWriter {
            map: Arc::clone(&map),
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

    /// Copies `bytes` into the map at `offset`, which must be at or above the frozen mark and
    /// end within the map (panics otherwise). The bytes are not readable until frozen. Only a
    /// write through to the file of an anonymous map can fail: the bytes are in the map then,
    /// and the file may hold any part of them (the caller treats it as a failed write).
    pub(crate) fn write(&mut self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        assert!(
            offset >= self.map.frozen(),
            "writing over frozen bytes at offset {offset}"
        );
        let end = offset.checked_add(bytes.len()).expect("offset overflow");
        assert!(end <= self.map.len(), "writing past the end of the map");
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination `offset..end` lies within the map (checked above) of a file
        // whose blocks were preallocated (so no SIGBUS on a full disk) and that is never shrunk
        // while mapped. It is above the frozen mark, so no reader holds a slice of it, and this
        // writer is the only one of the map (`&mut self`, not `Clone`), so nobody else writes it.
        // `ptr::copy` tolerates overlap, should `bytes` come from another map of the same file.
        unsafe {
            std::ptr::copy(
                bytes.as_ptr(),
                self.map.raw.as_mut_ptr().add(offset),
                bytes.len(),
            );
        }
        match &self.map.through {
            Some(file) => file.write_all_at(bytes, offset as u64),
            None => Ok(()),
        }
    }

    /// Makes `0..end` readable and immutable. `end` never moves backwards.
    pub(crate) fn freeze(&mut self, end: usize) {
        assert!(end <= self.map.len());
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
    /// Writes the dirty pages of `range` to disk and waits for them (`msync(MS_SYNC)`; on Linux
    /// this also commits the file system metadata needed to read them back, like
    /// `fdatasync`). The range is widened to whole pages. Any thread may flush while the writer
    /// goes on writing above the range: bytes written meanwhile into its last page may or may
    /// not be flushed too, and stay dirty for a later flush either way.
    pub(crate) fn flush(&self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end);
        assert!(range.end <= self.len());
        if range.is_empty() {
            return Ok(());
        }
        if let Some(file) = &self.through {
            // Every byte already went through to the file: syncing it is the flush.
            return file.sync();
        }
        let page = page_bytes();
        let start = range.start - range.start % page;
        self.raw.flush_range(start, range.end - start)
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
        writer.write(0, b"hello").unwrap();
        writer.freeze(5);
        assert_eq!(map.slice(0..5), b"hello");
        writer.write(5, b" world").unwrap();
        writer.freeze(11);
        writer.flush(0..11).unwrap();
        let reader = SegmentMap::open_read_only(&StdFile::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(reader.slice(0..11), b"hello world");
        let mut buf = [0u8; 11];
        file.as_std().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
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
        // Writing 1 MiB through a map makes its pages resident in this process; releasing the
        // frozen prefix drops them (the RSS of the mapping falls to the unreleased tail), yet
        // every byte reads back the same, through the same map and through the file.
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
        writer.write(0, &bytes).unwrap();
        writer.freeze(len - 100);
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
        writer.write(4, b"-tail").unwrap();
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
        writer.write(0, b"abc").unwrap();
        let _ = map.slice(0..3);
    }

    #[test]
    #[should_panic(expected = "over frozen")]
    fn test_writing_frozen_bytes_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir.path().join("segment"));
        preallocate(&file, 4096).unwrap();
        let (_map, mut writer) = SegmentMap::open_writable(&std_file(file), 4096, 16).unwrap();
        let _ = writer.write(8, b"abc");
    }
}

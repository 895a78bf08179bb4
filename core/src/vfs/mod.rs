//! The SQLite boundary: atoll's VFS, its in-memory wal-index, frame capture, hand-written apply,
//! and raw connections that keep prepared statements ([`crate::stmt`]).
//!
//! The `unsafe` code of this module lives in [`ffi`]; this module is the safe half. Per database,
//! one [`DbFiles`] holds what every connection to it shares: the main and WAL file handles, the
//! wal-index regions (SQLite's `-shm`, kept in memory: the node locks its data directory, so no
//! other process opens these files), the shm and file lock tables, and the capture buffer.
//!
//! How a leader's transaction is hidden (see ARCHITECTURE.md, "The flow of a write"):
//! 1. A *capture* connection takes the WAL write lock (`xShmLock`): the wal-index header is saved
//!    and capture starts. Its WAL writes go to the capture buffer, keyed by frame slot, and its
//!    WAL reads of those slots are served from it. Nothing reaches the WAL file.
//! 2. SQLite commits: it appends hash entries and publishes a new wal-index header.
//! 3. The connection releases the write lock: the saved header is written back (copy 1, then
//!    copy 0), the hash entries past the saved `mxFrame` are cleaned as `walCleanupHash` does, and
//!    the committed frames wait in the capture buffer for the engine to encode them.
//!
//! Inside a chain ([`DbFiles::begin_chain`] .. [`DbFiles::end_chain`]) step 3 waits for the end
//! of the chain: the next capture connection's transaction starts on the frames the ones before
//! it committed (indexed, served from the buffer), and the command carries each page once.
//!
//! Once proposed, a chain's command stays in the *overlay* (`overlay.rs`) until it is applied or
//! discarded; the next chain may start on top of it: the overlay is installed in the wal-index
//! for the duration of that chain, and taken out by its hide step.
//!
//! Readers never see the frames; the writer's own connection sees the header change at its next
//! read transaction and drops its page cache. [`DbFiles::append_frames`] later writes committed
//! frames into the WAL and publishes them under the WAL write lock.

mod ffi;
mod overlay;

pub(crate) use ffi::{configure_memory, sqlite_memory_used};

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use atoll_storage::{Disk, DiskFile, OpenMode};

use crate::stmt::RawStmt;
use crate::wal::{self, IndexHeader};
use overlay::Overlay;

/// Suffix SQLite appends to a database path to name its WAL.
pub(crate) const WAL_SUFFIX: &str = "-wal";

/// Regions of wal-index memory a database may map: 4096 × 32 KiB = 128 MiB of index, enough for
/// 16 million frames. The checkpoint policy keeps the WAL far below this.
const SHM_REGIONS_MAX: usize = 4096;

/// A connection's identity in the lock tables. 0 is the engine's own apply path.
pub(crate) type ConnId = u64;
const APPLY_CONN: ConnId = 0;

/// The VFS registered for one engine. Dropping it unregisters it; every connection through it
/// must be closed first (the engine drops its connections before its `Vfs`).
pub(crate) struct Vfs {
    shared: Arc<VfsShared>,
    registration: ffi::Registration,
}

/// What the VFS callbacks reach through `pAppData`.
pub(crate) struct VfsShared {
    databases: Mutex<HashMap<PathBuf, Arc<DbFiles>>>,
    /// Where the databases' files are (the engine's [`atoll_storage::Disk`]).
    disk: Arc<dyn Disk>,
}

impl Vfs {
    /// Registers a VFS named `name` (unique in the process) whose files are on `disk`.
    pub(crate) fn register(name: &str, disk: Arc<dyn Disk>) -> io::Result<Vfs> {
        let shared = Arc::new(VfsShared {
            databases: Mutex::new(HashMap::new()),
            disk,
        });
        let registration = ffi::Registration::new(name, Arc::clone(&shared))?;
        Ok(Vfs {
            shared,
            registration,
        })
    }

    /// The registered name, for `sqlite3_open_v2`.
    pub(crate) fn name(&self) -> &str {
        self.registration.name()
    }

    /// Makes the files of a database at `path` (absolute) known to the VFS, opening both files.
    /// The main file must exist (the engine writes its first page); the WAL is created if absent.
    pub(crate) fn add_database(&self, path: &Path, options: DbOptions) -> io::Result<Arc<DbFiles>> {
        assert!(path.is_absolute());
        let disk = &self.shared.disk;
        let main = disk.open(path, OpenMode::Write)?;
        let wal = disk.open(&wal_path_of(path), OpenMode::Create)?;
        let files = Arc::new(DbFiles {
            path: path.to_path_buf(),
            options,
            state: Mutex::new(DbState {
                main,
                wal,
                regions: Vec::new(),
                shm_slots: [ShmSlot::default(); wal::LOCK_SLOTS],
                shm_holders: Vec::new(),
                file_locks: FileLocks::default(),
                capture: Capture::default(),
                overlay: Overlay::new(options.page_size),
                next_conn: 1,
                failed: false,
            }),
        });
        let mut databases = lock_or_recover(&self.shared.databases);
        let previous = databases.insert(path.to_path_buf(), Arc::clone(&files));
        assert!(
            previous.is_none(),
            "database {} added twice",
            path.display()
        );
        Ok(files)
    }

    /// Forgets a database; its connections must all be closed.
    pub(crate) fn remove_database(&self, path: &Path) {
        let mut databases = lock_or_recover(&self.shared.databases);
        databases.remove(path);
    }
}

impl VfsShared {
    /// Where the databases' files are.
    pub(crate) fn disk(&self) -> &dyn Disk {
        &*self.disk
    }

    fn database(&self, path: &Path) -> Option<Arc<DbFiles>> {
        lock_or_recover(&self.databases).get(path).cloned()
    }

    /// The database whose WAL is at `path`, if any.
    fn database_of_wal(&self, path: &Path) -> Option<Arc<DbFiles>> {
        let text = path.to_str()?;
        let main = text.strip_suffix(WAL_SUFFIX)?;
        self.database(Path::new(main))
    }
}

fn lock_or_recover<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The registry map holds no invariant a panic could break halfway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The WAL path SQLite derives from a database path.
pub(crate) fn wal_path_of(path: &Path) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(WAL_SUFFIX);
    PathBuf::from(text)
}

/// Fixed properties of a database's files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbOptions {
    /// The page size; fixed when the database is created.
    pub(crate) page_size: u32,
    /// The most bytes of frames one captured transaction may hold.
    pub(crate) capture_bytes_max: usize,
}

/// The files and shared memory of one database, shared by all of its connections.
pub(crate) struct DbFiles {
    path: PathBuf,
    options: DbOptions,
    state: Mutex<DbState>,
}

/// Invariant: at most one connection (or the apply path) holds the WAL write lock, and capture
/// is active exactly while a capture connection holds it.
struct DbState {
    main: Arc<dyn DiskFile>,
    wal: Arc<dyn DiskFile>,
    regions: Vec<ffi::Region>,
    shm_slots: [ShmSlot; wal::LOCK_SLOTS],
    shm_holders: Vec<ShmHolder>,
    file_locks: FileLocks,
    capture: Capture,
    /// Frames of the commands in flight (`overlay.rs`), installed in the wal-index while a
    /// chain runs (`capture.overlay_installed`).
    overlay: Overlay,
    next_conn: ConnId,
    /// A write to the WAL or the wal-index failed halfway: the database may be inconsistent in
    /// memory, and every further access fails until the engine is reopened (sticky, like a failed
    /// fsync).
    failed: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct ShmSlot {
    shared: u32,
    exclusive: Option<ConnId>,
}

#[derive(Debug, Clone, Copy)]
struct ShmHolder {
    conn: ConnId,
    shared_mask: u8,
    exclusive_mask: u8,
}

/// The main file's lock levels (SQLite's SHARED, RESERVED, PENDING, EXCLUSIVE), in process.
#[derive(Debug, Default)]
struct FileLocks {
    shared: u32,
    reserved: Option<ConnId>,
    pending: Option<ConnId>,
    exclusive: Option<ConnId>,
}

/// The frames of the transaction being captured.
struct Capture {
    /// Invariant: `active` iff a capture connection holds the WAL write lock.
    active: bool,
    owner: ConnId,
    /// The wal-index header (copy 0) when the write lock was taken.
    saved_header: [u8; wal::INDEX_HEADER_BYTES],
    /// `mxFrame` of `saved_header`: captured slot 0 is frame `base_frame + 1`.
    base_frame: u32,
    /// Frames from `base_frame + 1` on, each a frame header and a page.
    buffer: Vec<u8>,
    /// Slots written so far (the highest written slot + 1).
    slots: u32,
    /// The WAL header SQLite wrote, if it started a new WAL.
    wal_header: Option<[u8; 32]>,
    /// A write went past `capture_bytes_max`; SQLite was told SQLITE_FULL.
    overflow: bool,
    /// Set by the hide step: the last transaction committed this many frames.
    committed: Option<Committed>,
    /// The hide step found an inconsistency; the commit must be treated as failed.
    error: bool,
    /// A chain is open ([`DbFiles::begin_chain`]): the transactions of several connections,
    /// one after another, accumulate in `buffer`, each seeing the frames of the ones before it
    /// (they are in the wal-index), and the hide step waits for [`DbFiles::end_chain`].
    chain: bool,
    /// The chain's first transaction took the write lock: `saved_header` and `base_frame` are
    /// the chain's, and captured slots are read from `buffer` between its transactions.
    started: bool,
    /// The overlay of commands in flight is installed for the open chain: the wal-index shows
    /// it, `saved_header` is the header after it, and the hide step restores `applied_header`.
    overlay_installed: bool,
    /// The applied wal-index header the overlay was installed on.
    applied_header: [u8; wal::INDEX_HEADER_BYTES],
}

impl Default for Capture {
    fn default() -> Capture {
        Capture {
            active: false,
            owner: 0,
            saved_header: [0; wal::INDEX_HEADER_BYTES],
            base_frame: 0,
            buffer: Vec::new(),
            slots: 0,
            wal_header: None,
            overflow: false,
            committed: None,
            error: false,
            chain: false,
            started: false,
            overlay_installed: false,
            applied_header: [0; wal::INDEX_HEADER_BYTES],
        }
    }
}

/// A committed, hidden transaction waiting in the capture buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Frames of the transaction, in slot order.
    pub(crate) frame_count: u32,
    /// The database size in pages after the commit.
    pub(crate) db_size_pages: u32,
}

/// One WAL frame, borrowed: a page number and the page.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The page number (1-based).
    pub page_number: u32,
    /// The page bytes.
    pub page: &'a [u8],
}

/// What a connection may do, chosen when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Session connections: their write transactions are captured, never written.
    Capture,
    /// The engine's control connection: checkpoints and snapshot reads.
    Plain,
}

/// Result codes the safe half hands back to the callbacks.
pub(crate) type Code = i32;
const OK: Code = rusqlite::ffi::SQLITE_OK;
const BUSY: Code = rusqlite::ffi::SQLITE_BUSY;

impl DbFiles {
    /// The page size.
    pub(crate) fn page_size(&self) -> u32 {
        self.options.page_size
    }

    fn frame_bytes(&self) -> usize {
        wal::FRAME_HEADER_BYTES + self.options.page_size as usize
    }

    fn lock(&self) -> Result<MutexGuard<'_, DbState>, Code> {
        let state = self.state.lock().map_err(|_| rusqlite::ffi::SQLITE_IOERR)?;
        if state.failed {
            return Err(rusqlite::ffi::SQLITE_IOERR);
        }
        Ok(state)
    }

    fn lock_io(&self) -> io::Result<MutexGuard<'_, DbState>> {
        self.lock().map_err(|_| {
            io::Error::other(format!(
                "database {} failed earlier; reopen the engine",
                self.path.display()
            ))
        })
    }

    fn new_conn(&self) -> ConnId {
        match self.state.lock() {
            Ok(mut state) => {
                let id = state.next_conn;
                state.next_conn += 1;
                id
            }
            Err(_) => ConnId::MAX,
        }
    }

    // ---- main file -------------------------------------------------------------------------

    fn main_read(&self, buffer: &mut [u8], offset: u64) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        read_full(&*state.main, buffer, offset)
    }

    fn main_write(&self, buffer: &[u8], offset: u64) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        match state.main.write_all_at(buffer, offset) {
            Ok(()) => OK,
            Err(error) => io_code(&error, rusqlite::ffi::SQLITE_IOERR_WRITE),
        }
    }

    fn main_truncate(&self, size: u64) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        match state.main.set_len(size) {
            Ok(()) => OK,
            Err(error) => io_code(&error, rusqlite::ffi::SQLITE_IOERR_TRUNCATE),
        }
    }

    fn main_sync(&self) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        match state.main.sync() {
            Ok(()) => OK,
            Err(error) => {
                log::error!("fsync of {} failed: {error}", self.path.display());
                rusqlite::ffi::SQLITE_IOERR_FSYNC
            }
        }
    }

    fn main_size(&self) -> Result<u64, Code> {
        let state = self.lock()?;
        state
            .main
            .size()
            .map_err(|e| io_code(&e, rusqlite::ffi::SQLITE_IOERR_FSTAT))
    }

    /// Flushes the main file (after a checkpoint, before its index is recorded). fdatasync
    /// covers the file size too, which is all a checkpoint changes besides the data.
    pub(crate) fn sync_main(&self) -> io::Result<()> {
        let state = self.lock_io()?;
        state.main.sync()
    }

    /// Another handle on the main file, for a thread that syncs it (the checkpointer).
    pub(crate) fn main_file_clone(&self) -> io::Result<Arc<dyn DiskFile>> {
        let state = self.lock_io()?;
        Ok(Arc::clone(&state.main))
    }

    /// Reads page `page_number` of the main file into `out` (zeros past its end).
    pub(crate) fn read_main_page(&self, page_number: u32, out: &mut [u8]) -> io::Result<()> {
        assert!(page_number >= 1);
        assert_eq!(out.len(), self.options.page_size as usize);
        let state = self.lock_io()?;
        let offset = u64::from(page_number - 1) * u64::from(self.options.page_size);
        read_zero_filled(&*state.main, out, offset)
    }

    /// The main file's size in bytes.
    pub(crate) fn main_len(&self) -> io::Result<u64> {
        let state = self.lock_io()?;
        state.main.size()
    }

    fn file_lock(&self, conn: ConnId, level: &mut i32, wanted: i32) -> Code {
        use rusqlite::ffi::{
            SQLITE_LOCK_EXCLUSIVE, SQLITE_LOCK_PENDING, SQLITE_LOCK_RESERVED, SQLITE_LOCK_SHARED,
        };
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        let locks = &mut state.file_locks;
        if *level >= wanted {
            return OK;
        }
        let other = |holder: Option<ConnId>| holder.is_some_and(|h| h != conn);
        if wanted == SQLITE_LOCK_SHARED {
            if other(locks.pending) || other(locks.exclusive) {
                return BUSY;
            }
            locks.shared += 1;
            *level = SQLITE_LOCK_SHARED;
            return OK;
        }
        assert!(*level >= SQLITE_LOCK_SHARED, "SQLite locks SHARED first");
        if wanted == SQLITE_LOCK_RESERVED {
            if other(locks.reserved) || other(locks.pending) || other(locks.exclusive) {
                return BUSY;
            }
            locks.reserved = Some(conn);
            *level = SQLITE_LOCK_RESERVED;
            return OK;
        }
        // PENDING or EXCLUSIVE.
        if other(locks.pending) || other(locks.exclusive) {
            return BUSY;
        }
        locks.pending = Some(conn);
        if wanted == SQLITE_LOCK_PENDING {
            *level = SQLITE_LOCK_PENDING;
            return OK;
        }
        if locks.shared > 1 {
            *level = SQLITE_LOCK_PENDING;
            return BUSY;
        }
        locks.exclusive = Some(conn);
        *level = SQLITE_LOCK_EXCLUSIVE;
        OK
    }

    fn file_unlock(&self, conn: ConnId, level: &mut i32, wanted: i32) -> Code {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        let locks = &mut state.file_locks;
        if *level <= wanted {
            return OK;
        }
        for holder in [
            &mut locks.reserved,
            &mut locks.pending,
            &mut locks.exclusive,
        ] {
            if *holder == Some(conn) {
                *holder = None;
            }
        }
        if wanted == rusqlite::ffi::SQLITE_LOCK_NONE && *level >= rusqlite::ffi::SQLITE_LOCK_SHARED
        {
            locks.shared = locks.shared.checked_sub(1).expect("shared lock count");
        }
        *level = wanted;
        OK
    }

    fn file_reserved(&self) -> Result<bool, Code> {
        let state = self.lock()?;
        let locks = &state.file_locks;
        Ok(locks.reserved.is_some() || locks.pending.is_some() || locks.exclusive.is_some())
    }

    // ---- WAL file --------------------------------------------------------------------------

    fn wal_read(&self, buffer: &mut [u8], offset: u64) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        let capture = &state.capture;
        if capture.overlay_installed {
            if let Some(code) = self.read_overlay(&state, buffer, offset) {
                return code;
            }
        }
        if capture.active || capture.started {
            let start = wal::frame_offset(capture.base_frame + 1, self.options.page_size);
            if offset >= start {
                // Past what a `usize` holds (32-bit) is past the captured bytes too; a read
                // past them is short and zero-filled.
                let from = usize::try_from(offset - start)
                    .unwrap_or(usize::MAX)
                    .min(capture.buffer.len());
                let available = capture.buffer.len().saturating_sub(from);
                let copied = available.min(buffer.len());
                buffer[..copied].copy_from_slice(&capture.buffer[from..from + copied]);
                buffer[copied..].fill(0);
                return if copied == buffer.len() {
                    OK
                } else {
                    rusqlite::ffi::SQLITE_IOERR_SHORT_READ
                };
            }
            if let Some(header) = &capture.wal_header {
                if offset + buffer.len() as u64 <= wal::WAL_HEADER_BYTES {
                    let from = offset as usize;
                    buffer.copy_from_slice(&header[from..from + buffer.len()]);
                    return OK;
                }
            }
        }
        read_full(&*state.wal, buffer, offset)
    }

    /// A WAL read of the installed overlay's frames (or of the header of a WAL generation it
    /// starts); `None` for any other offset.
    fn read_overlay(&self, state: &DbState, buffer: &mut [u8], offset: u64) -> Option<Code> {
        let applied_max = wal::raw_header_max_frame(&state.capture.applied_header);
        let start = wal::frame_offset(applied_max + 1, self.options.page_size);
        let end = start + state.overlay.tail_bytes() as u64;
        if (start..end).contains(&offset) {
            // Below `end`, itself the length of a buffer in memory: fits a `usize`.
            let from = (offset - start) as usize;
            let copied = state.overlay.read(from, buffer);
            buffer[copied..].fill(0);
            // SQLite reads a frame header or a page at a time, never across frames.
            return Some(if copied == buffer.len() {
                OK
            } else {
                rusqlite::ffi::SQLITE_IOERR_SHORT_READ
            });
        }
        let header = state.overlay.wal_header().filter(|_| applied_max == 0)?;
        let to = offset.checked_add(buffer.len() as u64)?;
        if to > wal::WAL_HEADER_BYTES {
            return None;
        }
        buffer.copy_from_slice(&header[offset as usize..to as usize]);
        Some(OK)
    }

    fn wal_write(&self, buffer: &[u8], offset: u64) -> Code {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        let page_size = self.options.page_size;
        let frame_bytes = self.frame_bytes();
        let capture = &mut state.capture;
        if !capture.active {
            // Only the apply path writes the WAL, and it does not go through SQLite.
            log::error!(
                "{}: a WAL write outside a captured transaction was refused",
                self.path.display()
            );
            return rusqlite::ffi::SQLITE_IOERR_WRITE;
        }
        if offset < wal::WAL_HEADER_BYTES {
            if offset + buffer.len() as u64 > wal::WAL_HEADER_BYTES {
                return rusqlite::ffi::SQLITE_IOERR_WRITE;
            }
            let header = capture.wal_header.get_or_insert([0u8; 32]);
            header[offset as usize..offset as usize + buffer.len()].copy_from_slice(buffer);
            return OK;
        }
        let start = wal::frame_offset(capture.base_frame + 1, page_size);
        if offset < start {
            log::error!(
                "{}: a captured transaction tried to overwrite committed frames",
                self.path.display()
            );
            return rusqlite::ffi::SQLITE_IOERR_WRITE;
        }
        // An offset past what a `usize` holds (32-bit) is past the capture limit too: never let
        // it wrap onto captured bytes.
        let end = usize::try_from(offset - start)
            .ok()
            .and_then(|from| from.checked_add(buffer.len()));
        let Some(end) = end.filter(|&end| end <= self.options.capture_bytes_max) else {
            capture.overflow = true;
            return rusqlite::ffi::SQLITE_FULL;
        };
        let from = end - buffer.len();
        if capture.buffer.len() < end {
            capture.buffer.resize(end, 0);
        }
        capture.buffer[from..end].copy_from_slice(buffer);
        let slots = end.div_ceil(frame_bytes) as u32;
        capture.slots = capture.slots.max(slots);
        OK
    }

    fn wal_truncate(&self, size: u64) -> Code {
        let state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        if state.capture.active {
            // `journal_size_limit` handling of a captured writer: the WAL file is not its own.
            return OK;
        }
        match state.wal.set_len(size) {
            Ok(()) => OK,
            Err(error) => io_code(&error, rusqlite::ffi::SQLITE_IOERR_TRUNCATE),
        }
    }

    fn wal_size(&self) -> Result<u64, Code> {
        let state = self.lock()?;
        let real = state
            .wal
            .size()
            .map_err(|e| io_code(&e, rusqlite::ffi::SQLITE_IOERR_FSTAT))?;
        let capture = &state.capture;
        let mut size = real;
        if capture.overlay_installed {
            let applied_max = wal::raw_header_max_frame(&capture.applied_header);
            let end = wal::frame_offset(applied_max + 1, self.options.page_size)
                + state.overlay.tail_bytes() as u64;
            size = size.max(end);
        }
        if (capture.active || capture.started) && capture.slots > 0 {
            let end = wal::frame_offset(capture.base_frame + 1, self.options.page_size)
                + capture.buffer.len() as u64;
            size = size.max(end);
        }
        Ok(size)
    }

    /// Empties the WAL file (recovery drops it: the WAL is never the durable copy).
    pub(crate) fn truncate_wal(&self) -> io::Result<()> {
        let state = self.lock_io()?;
        state.wal.set_len(0)
    }

    // ---- shared memory ---------------------------------------------------------------------

    fn shm_map(&self, region: usize, extend: bool) -> Result<Option<*mut u8>, Code> {
        let mut state = self.lock()?;
        if region >= SHM_REGIONS_MAX {
            return Err(rusqlite::ffi::SQLITE_IOERR_SHMSIZE);
        }
        while state.regions.len() <= region {
            if !extend {
                return Ok(None);
            }
            state.regions.push(ffi::Region::new());
        }
        Ok(Some(state.regions[region].as_ptr()))
    }

    fn shm_lock(&self, conn: ConnId, role: Role, offset: usize, n: usize, flags: i32) -> Code {
        use rusqlite::ffi::{SQLITE_SHM_EXCLUSIVE, SQLITE_SHM_LOCK, SQLITE_SHM_UNLOCK};
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(code) => return code,
        };
        if offset + n > wal::LOCK_SLOTS || n == 0 {
            return rusqlite::ffi::SQLITE_IOERR_SHMLOCK;
        }
        let exclusive = flags & SQLITE_SHM_EXCLUSIVE != 0;
        if flags & SQLITE_SHM_UNLOCK != 0 {
            let releases_write = exclusive
                && offset == wal::LOCK_WRITE
                && state.holder(conn).exclusive_mask & 1 != 0;
            state.shm_release(conn, offset, n, exclusive);
            if releases_write && state.capture.active && state.capture.owner == conn {
                self.release_capture(&mut state);
            }
            return OK;
        }
        assert!(flags & SQLITE_SHM_LOCK != 0);
        if !exclusive {
            return state.shm_acquire_shared(conn, offset, n);
        }
        if role == Role::Capture
            && offset == wal::LOCK_READ_FIRST + 1
            && n == wal::LOCK_SLOTS - wal::LOCK_READ_FIRST - 1
        {
            // A captured writer restarting the WAL (walRestartLog) would rewrite the wal-index
            // header and reuse frames readers still index; only checkpoints restart the WAL.
            return BUSY;
        }
        let code = state.shm_acquire_exclusive(conn, offset, n);
        if code == OK && role == Role::Capture && offset == wal::LOCK_WRITE {
            self.begin_capture(&mut state, conn);
        }
        code
    }

    fn shm_unmap(&self, conn: ConnId) {
        if let Ok(mut state) = self.lock() {
            let exclusive = state.holder(conn).exclusive_mask;
            if state.capture.active && state.capture.owner == conn && exclusive & 1 != 0 {
                self.release_capture(&mut state);
            }
            state.shm_release(conn, 0, wal::LOCK_SLOTS, true);
            state.shm_release(conn, 0, wal::LOCK_SLOTS, false);
            state.shm_holders.retain(|h| h.conn != conn);
        }
    }

    fn begin_capture(&self, state: &mut DbState, conn: ConnId) {
        let mut saved = [0u8; wal::INDEX_HEADER_BYTES];
        state.shm_read(0, 0, &mut saved);
        let capture = &mut state.capture;
        assert!(!capture.active, "two captured writers");
        capture.active = true;
        capture.owner = conn;
        if capture.chain && capture.started {
            // The next transaction of the chain: it appends after the ones before it.
            return;
        }
        capture.started = capture.chain;
        capture.saved_header = saved;
        capture.base_frame = wal::raw_header_max_frame(&saved);
        capture.buffer.clear();
        capture.slots = 0;
        capture.wal_header = None;
        capture.overflow = false;
        capture.committed = None;
        capture.error = false;
    }

    /// A captured writer released the WAL write lock: the hide step, unless a chain is open
    /// (then its frames stay visible to the chain's next transaction until `end_chain`).
    fn release_capture(&self, state: &mut DbState) {
        if state.capture.chain {
            state.capture.active = false;
        } else {
            self.hide_captured(state);
        }
    }

    /// Opens a chain: the transactions captured from now until [`DbFiles::end_chain`], by any
    /// capture connections one after another, form one committed run of frames. The engine
    /// runs them within one call, so no reader starts while their frames are visible. With
    /// commands in flight, the chain starts on top of them: the overlay is installed.
    pub(crate) fn begin_chain(&self) -> io::Result<()> {
        let mut state = self.lock_io()?;
        let capture = &state.capture;
        assert!(
            !capture.active && !capture.chain,
            "a chain inside a transaction"
        );
        assert!(!capture.overlay_installed);
        if !state.overlay.is_empty() {
            self.install_overlay(&mut state)?;
        }
        state.capture.chain = true;
        state.capture.started = false;
        Ok(())
    }

    /// Publishes the overlay's frames in the wal-index (hash entries, then the header after
    /// them: copy 1, then copy 0), as if its commands were applied. Only capture connections
    /// run until the hide step takes them out again (the engine runs the chain within one
    /// call), and readers that started earlier never look past their own `mxFrame`.
    fn install_overlay(&self, state: &mut DbState) -> io::Result<()> {
        if state.regions.is_empty() {
            return Err(io::Error::other("wal-index header is not initialised"));
        }
        let mut applied = [0u8; wal::INDEX_HEADER_BYTES];
        state.shm_read(0, 0, &mut applied);
        let pending = state.overlay.lay_out(&applied).map_err(io::Error::other)?;
        let applied_max = wal::raw_header_max_frame(&applied);
        for i in 0..state.overlay.frame_count() {
            let page_number = state.overlay.page_number(i);
            if let Err(error) = state.index_append(applied_max + 1 + i, page_number) {
                state.clean_hash_after(applied_max, applied_max + i);
                return Err(io::Error::other(error));
            }
        }
        state.shm_write(0, wal::INDEX_HEADER_BYTES, &pending);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        state.shm_write(0, 0, &pending);
        state.capture.applied_header = applied;
        state.capture.overlay_installed = true;
        Ok(())
    }

    /// Takes the installed overlay out of the wal-index: the applied header back (copy 1, then
    /// copy 0) and the hash entries of frames past it, up to `touched_frame`, removed.
    fn uninstall_overlay(&self, state: &mut DbState, touched_frame: u32) {
        assert!(state.capture.overlay_installed);
        let applied = state.capture.applied_header;
        state.shm_write(0, wal::INDEX_HEADER_BYTES, &applied);
        state.shm_write(0, 0, &applied);
        let applied_max = wal::raw_header_max_frame(&applied);
        state.clean_hash_after(applied_max, touched_frame.max(applied_max));
        state.capture.overlay_installed = false;
    }

    /// Whether a capture connection holds the WAL write lock now.
    pub(crate) fn capture_active(&self) -> bool {
        self.lock().is_ok_and(|state| state.capture.active)
    }

    /// Whether the open chain committed frames so far (visible in the live header).
    pub(crate) fn chain_committed(&self) -> bool {
        self.lock().is_ok_and(|state| {
            let mut live = [0u8; wal::INDEX_HEADER_BYTES];
            state.shm_read(0, 0, &mut live);
            state.capture.started && live != state.capture.saved_header
        })
    }

    /// Closes the chain: the hide step for everything it committed (see `take_committed`).
    /// No connection may hold the write lock.
    pub(crate) fn end_chain(&self) -> io::Result<()> {
        let mut state = self.lock_io()?;
        assert!(
            !state.capture.active,
            "end_chain while a writer holds the lock"
        );
        let started = state.capture.started;
        state.capture.chain = false;
        state.capture.started = false;
        if started {
            self.hide_captured(&mut state);
        } else if state.capture.overlay_installed {
            // No transaction of the chain wrote: only the overlay to take out.
            let applied_max = wal::raw_header_max_frame(&state.capture.applied_header);
            let touched = applied_max + state.overlay.frame_count();
            self.uninstall_overlay(&mut state, touched);
        }
        Ok(())
    }

    /// The hide step: runs when a captured writer releases the WAL write lock (at the end of
    /// a chain for chained transactions).
    fn hide_captured(&self, state: &mut DbState) {
        let frame_bytes = self.frame_bytes();
        let mut live = [0u8; wal::INDEX_HEADER_BYTES];
        state.shm_read(0, 0, &mut live);
        let base = state.capture.base_frame;
        let live_max = wal::raw_header_max_frame(&live);
        let capture_slots = state.capture.slots;
        if live != state.capture.saved_header && live_max > base {
            let frame_count = live_max - base;
            let commit_frame = (frame_count as usize - 1) * frame_bytes;
            let db_size = if frame_count <= capture_slots {
                let bytes = &state.capture.buffer[commit_frame..commit_frame + 8];
                byteorder::BigEndian::read_u32_at(bytes, 4)
            } else {
                0
            };
            if db_size == 0 {
                log::error!(
                    "{}: a commit of {frame_count} frames without a captured commit frame",
                    self.path.display()
                );
                state.capture.error = true;
            } else {
                state.capture.committed = Some(Committed {
                    frame_count,
                    db_size_pages: db_size,
                });
            }
        }
        let touched = base + capture_slots.max(live_max.saturating_sub(base));
        if state.capture.overlay_installed {
            // The header before the commands in flight, and theirs out of the index too.
            self.uninstall_overlay(state, touched);
        } else {
            // Restore the header as walIndexWriteHdr writes one: copy 1 first, then copy 0.
            let saved = state.capture.saved_header;
            state.shm_write(0, wal::INDEX_HEADER_BYTES, &saved);
            state.shm_write(0, 0, &saved);
            state.clean_hash_after(base, touched);
        }
        state.capture.active = false;
        state.capture.wal_header = None;
    }

    /// Takes the committed transaction left by the hide step, if any: calls `encode` with its
    /// frames (page number and page, in slot order) and its database size, adds them to the
    /// overlay as command `link` (in flight until [`DbFiles::applied_link`] or a discard), then
    /// empties the capture buffer. Returns `Ok(None)` when the last transaction committed
    /// nothing.
    pub(crate) fn take_committed<R>(
        &self,
        link: u64,
        encode: impl FnOnce(&mut dyn Iterator<Item = FrameRef<'_>>, Committed) -> R,
    ) -> io::Result<Option<R>> {
        let mut state = self.lock_io()?;
        assert!(
            !state.capture.active,
            "take_committed while a writer holds the lock"
        );
        let DbState {
            capture, overlay, ..
        } = &mut *state;
        if capture.error {
            capture.error = false;
            return Err(io::Error::other("captured commit was inconsistent"));
        }
        let Some(mut committed) = capture.committed.take() else {
            return Ok(None);
        };
        let frame_bytes = self.frame_bytes();
        let buffer = &capture.buffer;
        let page_of =
            |slot: usize| byteorder::BigEndian::read_u32_at(&buffer[slot * frame_bytes..], 0);
        // A chain of transactions may write a page several times: only its last version is
        // part of the committed state (readers never saw the others), so only it is sent.
        let mut last_slot: HashMap<u32, usize> = HashMap::new();
        for slot in 0..committed.frame_count as usize {
            last_slot.insert(page_of(slot), slot);
        }
        let kept: Vec<usize> = (0..committed.frame_count as usize)
            .filter(|&slot| last_slot.get(&page_of(slot)) == Some(&slot))
            .collect();
        committed.frame_count = kept.len() as u32;
        let frame_at = |slot: usize| {
            let frame = &buffer[slot * frame_bytes..(slot + 1) * frame_bytes];
            FrameRef {
                page_number: byteorder::BigEndian::read_u32_at(frame, 0),
                page: &frame[wal::FRAME_HEADER_BYTES..],
            }
        };
        let result = encode(&mut kept.iter().map(|&slot| frame_at(slot)), committed);
        overlay.push(
            link,
            &mut kept.iter().map(|&slot| frame_at(slot)),
            committed.db_size_pages,
        );
        capture.buffer.clear();
        // A large transaction must not pin its memory for the life of the engine.
        capture.buffer.shrink_to(CAPTURE_RETAINED_BYTES);
        Ok(Some(result))
    }

    /// Frees the capture buffer's retained capacity, unless a transaction is being captured
    /// (for an idle host: the next transaction allocates it again).
    pub(crate) fn release_memory(&self) {
        if let Ok(mut state) = self.lock() {
            if !state.capture.active && state.capture.buffer.is_empty() {
                state.capture.buffer = Vec::new();
            }
        }
    }

    /// Command `link`, the first in flight, was applied ([`DbFiles::append_frames`]): its frames
    /// leave the overlay.
    pub(crate) fn applied_link(&self, link: u64) -> io::Result<()> {
        let mut state = self.lock_io()?;
        assert!(!state.capture.overlay_installed);
        let mut applied = [0u8; wal::INDEX_HEADER_BYTES];
        state.shm_read(0, 0, &mut applied);
        state.overlay.applied_first(link, &applied);
        Ok(())
    }

    /// Command `link` and every one after it will not be applied: their frames leave the
    /// overlay, and the next chain starts on the commands before them.
    pub(crate) fn discard_links_from(&self, link: u64) {
        if let Ok(mut state) = self.lock() {
            assert!(!state.capture.overlay_installed);
            state.overlay.discard_from(link);
        }
    }

    /// No command in flight will be applied: the next chain starts on the applied state.
    pub(crate) fn discard_links(&self) {
        if let Ok(mut state) = self.lock() {
            assert!(!state.capture.overlay_installed);
            state.overlay.clear();
        }
    }

    /// How many times the overlay was laid out again on an applied state it did not predict.
    #[cfg(test)]
    pub(crate) fn overlay_relayouts(&self) -> u64 {
        self.lock().map_or(0, |state| state.overlay.relayouts())
    }

    /// Whether the last captured transaction overflowed the frame limit; clears the flag.
    pub(crate) fn take_overflow(&self) -> bool {
        match self.lock() {
            Ok(mut state) => std::mem::take(&mut state.capture.overflow),
            Err(_) => false,
        }
    }

    /// Drops whatever the last captured transaction left (a discarded group, a failed commit).
    pub(crate) fn clear_committed(&self) {
        if let Ok(mut state) = self.lock() {
            state.capture.committed = None;
            state.capture.error = false;
            state.capture.buffer.clear();
        }
    }

    /// The current wal-index header, or `None` before SQLite initialised it.
    pub(crate) fn index_header(&self) -> io::Result<Option<IndexHeader>> {
        let state = self.lock_io()?;
        let mut bytes = [0u8; wal::INDEX_HEADER_BYTES];
        if state.regions.is_empty() {
            return Ok(None);
        }
        state.shm_read(0, 0, &mut bytes);
        Ok(IndexHeader::decode(&bytes).filter(|h| h.is_init == 1))
    }

    /// The frame holding the latest copy of `page_number` among frames `1..=max_frame`
    /// (`walFindFrame`), or `None` if the page is not in that prefix of the WAL.
    pub(crate) fn find_frame(&self, page_number: u32, max_frame: u32) -> io::Result<Option<u32>> {
        let state = self.lock_io()?;
        Ok(state.find_frame(page_number, max_frame))
    }

    /// Reads the page of WAL frame `frame` into `out`.
    pub(crate) fn read_wal_page(&self, frame: u32, out: &mut [u8]) -> io::Result<()> {
        let state = self.lock_io()?;
        let offset =
            wal::frame_offset(frame, self.options.page_size) + wal::FRAME_HEADER_BYTES as u64;
        state.wal.read_exact_at(out, offset)
    }

    /// Appends one committed transaction to the WAL and publishes it in the wal-index, under
    /// the WAL write lock, as SQLite's `walFrames` would: frames at `mxFrame + 1..`, then hash
    /// entries, then the header (copy 1 before copy 0). Readers holding older read marks keep
    /// their snapshots; new readers see the whole transaction or nothing.
    ///
    /// `scratch` is a reusable buffer (the frames are assembled there: one copy of each page).
    /// `new_wal_salt` gives the salts when the WAL starts over (mxFrame 0), so that every replica
    /// writes identical WAL bytes.
    pub(crate) fn append_frames(
        &self,
        frames: &[FrameRef<'_>],
        db_size_pages: u32,
        new_wal_salt: [u8; 8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        assert!(!frames.is_empty());
        assert!(db_size_pages >= 1);
        let page_size = self.options.page_size;
        let mut state = self.lock_io()?;
        assert!(
            !state.capture.overlay_installed,
            "an apply inside a chain: its readers would see the overlay"
        );
        if state.shm_acquire_exclusive(APPLY_CONN, wal::LOCK_WRITE, 1) != OK {
            return Err(io::Error::other(
                "the WAL write lock is held by a connection",
            ));
        }
        let result =
            self.append_frames_locked(&mut state, frames, db_size_pages, new_wal_salt, scratch);
        state.shm_release(APPLY_CONN, wal::LOCK_WRITE, 1, true);
        let _ = page_size;
        match result {
            Ok(()) => Ok(()),
            // The frames did not all reach the WAL file, and the wal-index does not list them:
            // readers never see those bytes, and a retry writes them again at the same offsets
            // (a full disk: the host retries the apply once space is back).
            Err(AppendFailure::Unpublished(error)) => Err(error),
            Err(AppendFailure::Published(error)) => {
                // The wal-index may be half-written: stop serving this database.
                state.failed = true;
                Err(error)
            }
        }
    }

    fn append_frames_locked(
        &self,
        state: &mut DbState,
        frames: &[FrameRef<'_>],
        db_size_pages: u32,
        new_wal_salt: [u8; 8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), AppendFailure> {
        let page_size = self.options.page_size;
        let mut header_bytes = [0u8; wal::INDEX_HEADER_BYTES];
        state.shm_read(0, 0, &mut header_bytes);
        let Some(mut header) = IndexHeader::decode(&header_bytes).filter(|h| h.is_init == 1) else {
            return Err(AppendFailure::Published(io::Error::other(
                "wal-index header is not initialised",
            )));
        };
        let frames_before = header.max_frame;
        if header.max_frame > 0 && state.shm_u32(0, wal::CKPT_BACKFILL_OFFSET) == header.max_frame {
            // Everything is checkpointed: start the WAL over (walRestartLog) if no reader uses
            // its frames (read marks 1..4 free), rewriting the file instead of growing it.
            state.try_restart_wal(&mut header);
        }
        let first_frame = header.max_frame + 1;
        let frame_bytes = self.frame_bytes();
        scratch.clear();
        let mut write_offset = wal::frame_offset(first_frame, page_size);
        // A new WAL generation starts with a header with deterministic salts, and the checksum
        // chain starts from it.
        let (mut running, wal_header) = wal::begin_frames(&mut header, page_size, new_wal_salt)
            .map_err(|e| AppendFailure::Published(io::Error::other(e)))?;
        if let Some(wal_header) = wal_header {
            scratch.extend_from_slice(&wal_header);
            write_offset = 0;
        }
        scratch.reserve(frames.len() * frame_bytes);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.page.len(), page_size as usize);
            let is_commit = i + 1 == frames.len();
            let start = scratch.len();
            scratch.resize(start + wal::FRAME_HEADER_BYTES, 0);
            let size = if is_commit { db_size_pages } else { 0 };
            running = wal::encode_frame_header(
                &mut scratch[start..],
                frame.page_number,
                size,
                header.salt,
                frame.page,
                running,
            );
            scratch.extend_from_slice(frame.page);
        }
        // A restart reset the backfill count and read marks in the wal-index and writes over
        // the old frames: a failed write after it is not clean.
        let restarted = frames_before > 0 && header.max_frame == 0;
        state.wal.write_all_at(scratch, write_offset).map_err(|e| {
            if restarted {
                AppendFailure::Published(e)
            } else {
                AppendFailure::Unpublished(e)
            }
        })?;
        for (i, frame) in frames.iter().enumerate() {
            state
                .index_append(first_frame + i as u32, frame.page_number)
                .map_err(|e| AppendFailure::Published(io::Error::other(e)))?;
        }
        wal::end_frames(
            &mut header,
            frames.len() as u32,
            db_size_pages,
            running,
            page_size,
        );
        let encoded = header.encode();
        state.shm_write(0, wal::INDEX_HEADER_BYTES, &encoded);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        state.shm_write(0, 0, &encoded);
        Ok(())
    }
}

/// Why appending frames failed, and whether the wal-index may have changed.
enum AppendFailure {
    /// The WAL write failed (a full disk); the wal-index was not touched, so nothing changed
    /// for readers and the append can be retried.
    Unpublished(io::Error),
    /// The wal-index may be half-updated: the database must stop serving.
    Published(io::Error),
}

/// Capacity the capture buffer keeps between transactions (a 1 MiB blob fits).
const CAPTURE_RETAINED_BYTES: usize = 2 * 1024 * 1024;

trait ReadAt {
    fn read_u32_at(bytes: &[u8], offset: usize) -> u32;
}

impl ReadAt for byteorder::BigEndian {
    fn read_u32_at(bytes: &[u8], offset: usize) -> u32 {
        use byteorder::ByteOrder;
        byteorder::BigEndian::read_u32(&bytes[offset..offset + 4])
    }
}

impl DbState {
    fn holder(&mut self, conn: ConnId) -> &mut ShmHolder {
        if let Some(position) = self.shm_holders.iter().position(|h| h.conn == conn) {
            return &mut self.shm_holders[position];
        }
        self.shm_holders.push(ShmHolder {
            conn,
            shared_mask: 0,
            exclusive_mask: 0,
        });
        self.shm_holders.last_mut().expect("just pushed")
    }

    fn shm_acquire_shared(&mut self, conn: ConnId, offset: usize, n: usize) -> Code {
        let held = self.holder(conn).shared_mask;
        for slot in offset..offset + n {
            if held & (1 << slot) != 0 {
                continue;
            }
            if self.shm_slots[slot].exclusive.is_some_and(|h| h != conn) {
                return BUSY;
            }
        }
        for slot in offset..offset + n {
            if held & (1 << slot) == 0 {
                self.shm_slots[slot].shared += 1;
            }
        }
        let holder = self.holder(conn);
        for slot in offset..offset + n {
            holder.shared_mask |= 1 << slot;
        }
        OK
    }

    fn shm_acquire_exclusive(&mut self, conn: ConnId, offset: usize, n: usize) -> Code {
        let holder = *self.holder(conn);
        for slot in offset..offset + n {
            let own_shared = u32::from(holder.shared_mask & (1 << slot) != 0);
            let state = self.shm_slots[slot];
            if state.exclusive.is_some_and(|h| h != conn) || state.shared > own_shared {
                return BUSY;
            }
        }
        for slot in offset..offset + n {
            self.shm_slots[slot].exclusive = Some(conn);
        }
        let holder = self.holder(conn);
        for slot in offset..offset + n {
            holder.exclusive_mask |= 1 << slot;
        }
        OK
    }

    fn shm_release(&mut self, conn: ConnId, offset: usize, n: usize, exclusive: bool) {
        let holder = *self.holder(conn);
        for slot in offset..offset + n {
            let bit = 1u8 << slot;
            if exclusive && holder.exclusive_mask & bit != 0 {
                assert_eq!(self.shm_slots[slot].exclusive, Some(conn));
                self.shm_slots[slot].exclusive = None;
            }
            if !exclusive && holder.shared_mask & bit != 0 {
                self.shm_slots[slot].shared -= 1;
            }
        }
        let holder = self.holder(conn);
        for slot in offset..offset + n {
            if exclusive {
                holder.exclusive_mask &= !(1 << slot);
            } else {
                holder.shared_mask &= !(1 << slot);
            }
        }
    }

    /// `walRestartHdr`, run by the apply path: resets the checkpoint info so the next frames
    /// start at frame 1. The caller holds the WAL write lock; readers of WAL frames would hold a
    /// read mark 1..4, so the restart only happens when those are all free.
    fn try_restart_wal(&mut self, header: &mut IndexHeader) {
        let first = wal::LOCK_READ_FIRST + 1;
        let count = wal::LOCK_SLOTS - first;
        if self.shm_acquire_exclusive(APPLY_CONN, first, count) != OK {
            return;
        }
        header.max_frame = 0;
        let info = wal::CKPT_BACKFILL_OFFSET;
        self.set_shm_u32(0, info, 0); // nBackfill
        self.set_shm_u32(0, info + 4 + 4, 0); // aReadMark[1]
        for mark in 2..5 {
            self.set_shm_u32(0, info + 4 + mark * 4, wal::READ_MARK_UNUSED);
        }
        self.set_shm_u32(0, info + 32, 0); // nBackfillAttempted
        self.shm_release(APPLY_CONN, first, count, true);
    }

    fn shm_read(&self, region: usize, offset: usize, out: &mut [u8]) {
        self.regions[region].read(offset, out);
    }

    fn shm_write(&mut self, region: usize, offset: usize, bytes: &[u8]) {
        self.regions[region].write(offset, bytes);
    }

    fn shm_u32(&self, region: usize, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        self.regions[region].read(offset, &mut bytes);
        wal::read_native_u32(&bytes)
    }

    fn shm_u16(&self, region: usize, offset: usize) -> u16 {
        let mut bytes = [0u8; 2];
        self.regions[region].read(offset, &mut bytes);
        wal::read_native_u16(&bytes)
    }

    fn set_shm_u32(&mut self, region: usize, offset: usize, value: u32) {
        let mut bytes = [0u8; 4];
        wal::write_native_u32(&mut bytes, value);
        self.regions[region].write(offset, &bytes);
    }

    fn set_shm_u16(&mut self, region: usize, offset: usize, value: u16) {
        let mut bytes = [0u8; 2];
        wal::write_native_u16(&mut bytes, value);
        self.regions[region].write(offset, &bytes);
    }

    fn ensure_region(&mut self, region: usize) -> Result<(), &'static str> {
        if region >= SHM_REGIONS_MAX {
            return Err("wal-index full: checkpoint the WAL");
        }
        while self.regions.len() <= region {
            self.regions.push(ffi::Region::new());
        }
        Ok(())
    }

    /// `walIndexAppend`: records that frame `frame` holds page `page_number`.
    fn index_append(&mut self, frame: u32, page_number: u32) -> Result<(), &'static str> {
        let region = wal::frame_region(frame);
        self.ensure_region(region)?;
        let zero = wal::region_zero(region);
        let pages = wal::region_pages_offset(region);
        let index = frame - zero;
        if index == 1 {
            // The first entry of this region: clear its page array and hash table.
            self.regions[region].fill_zero(pages, wal::SHM_REGION_BYTES - pages);
        }
        let entry = pages + (index as usize - 1) * 4;
        if self.shm_u32(region, entry) != 0 {
            // Remnants of a transaction that never committed: clean them first.
            self.clean_region_after(region, frame - 1);
        }
        let mut slot = wal::hash_slot(page_number);
        let mut collisions = index;
        while self.shm_u16(region, wal::HASH_TABLE_OFFSET + slot as usize * 2) != 0 {
            if collisions == 0 {
                return Err("wal-index hash table is corrupt");
            }
            collisions -= 1;
            slot = wal::hash_next(slot);
        }
        self.set_shm_u32(region, entry, page_number);
        self.set_shm_u16(
            region,
            wal::HASH_TABLE_OFFSET + slot as usize * 2,
            index as u16,
        );
        Ok(())
    }

    /// `walCleanupHash` for `max_frame` in `region`: drops entries of later frames.
    fn clean_region_after(&mut self, region: usize, max_frame: u32) {
        let zero = wal::region_zero(region);
        let limit = max_frame.saturating_sub(zero);
        for slot in 0..wal::HASH_SLOTS as usize {
            let offset = wal::HASH_TABLE_OFFSET + slot * 2;
            if u32::from(self.shm_u16(region, offset)) > limit {
                self.set_shm_u16(region, offset, 0);
            }
        }
        let from = wal::region_pages_offset(region) + limit as usize * 4;
        self.regions[region].fill_zero(from, wal::HASH_TABLE_OFFSET - from);
    }

    /// Removes the index entries of frames `max_frame + 1 ..= touched_frame` (what
    /// `walCleanupHash` achieves, but by probing for each removed frame's page instead of
    /// scanning all 8192 slots: this runs after every captured commit). Entries go latest
    /// first: removing a later entry never breaks the probe chain of an earlier one (an earlier
    /// entry's chain only crosses slots that were already taken when it was inserted, by even
    /// earlier entries), while removing an earlier one first would cut the chain of a later
    /// entry of the same page (a chain of transactions writes a page several times).
    fn clean_hash_after(&mut self, max_frame: u32, touched_frame: u32) {
        for frame in (max_frame + 1..=touched_frame).rev() {
            let region = wal::frame_region(frame);
            if region >= self.regions.len() {
                continue;
            }
            let index = frame - wal::region_zero(region);
            let entry = wal::region_pages_offset(region) + (index as usize - 1) * 4;
            let page_number = self.shm_u32(region, entry);
            if page_number == 0 {
                continue;
            }
            let mut slot = wal::hash_slot(page_number);
            for _ in 0..wal::HASH_SLOTS {
                let offset = wal::HASH_TABLE_OFFSET + slot as usize * 2;
                let value = self.shm_u16(region, offset);
                if value == 0 {
                    break;
                }
                if u32::from(value) == index {
                    self.set_shm_u16(region, offset, 0);
                    break;
                }
                slot = wal::hash_next(slot);
            }
            self.set_shm_u32(region, entry, 0);
        }
    }

    /// `walFindFrame` over frames `1..=max_frame`.
    fn find_frame(&self, page_number: u32, max_frame: u32) -> Option<u32> {
        if max_frame == 0 {
            return None;
        }
        let last_region = wal::frame_region(max_frame);
        for region in (0..=last_region).rev() {
            let zero = wal::region_zero(region);
            let pages = wal::region_pages_offset(region);
            let mut best: Option<u32> = None;
            let mut slot = wal::hash_slot(page_number);
            let mut probes = 0;
            loop {
                let index = self.shm_u16(region, wal::HASH_TABLE_OFFSET + slot as usize * 2);
                if index == 0 || probes > wal::HASH_SLOTS {
                    break;
                }
                let frame = zero + u32::from(index);
                let stored = self.shm_u32(region, pages + (usize::from(index) - 1) * 4);
                if frame <= max_frame && stored == page_number {
                    best = best.max(Some(frame));
                }
                slot = wal::hash_next(slot);
                probes += 1;
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }
}

fn read_full(file: &dyn DiskFile, buffer: &mut [u8], offset: u64) -> Code {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => {
                buffer[done..].fill(0);
                return rusqlite::ffi::SQLITE_IOERR_SHORT_READ;
            }
            Ok(read) => done += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return io_code(&error, rusqlite::ffi::SQLITE_IOERR_READ),
        }
    }
    OK
}

fn read_zero_filled(file: &dyn DiskFile, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => {
                buffer[done..].fill(0);
                return Ok(());
            }
            Ok(read) => done += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn io_code(error: &io::Error, code: Code) -> Code {
    if error.raw_os_error() == Some(28) {
        // ENOSPC
        return rusqlite::ffi::SQLITE_FULL;
    }
    log::warn!("VFS I/O error: {error}");
    code
}

/// A connection through atoll's VFS, with the raw statements prepared on it.
///
/// Invariant: every statement in `statements` and `cache` belongs to `connection`, and both maps
/// are emptied (the statements finalized) before `connection` closes — field order guarantees it.
pub(crate) struct Conn {
    statements: HashMap<u32, RawStmt>,
    cache: Vec<(String, RawStmt)>,
    /// The page cache size (KiB; `None`: SQLite's default) this connection is configured with.
    cache_kib: Option<u32>,
    /// Whether [`Conn::configure`] has run.
    configured: std::cell::Cell<bool>,
    path: PathBuf,
    connection: rusqlite::Connection,
    /// Keeps the VFS registered while this connection uses it.
    _vfs: Arc<Vfs>,
}

/// Statements a connection keeps prepared by SQL text (single-statement writes: the hot path).
/// Small: every client session has its connection.
const STATEMENT_CACHE_MAX: usize = 8;

impl Conn {
    /// Opens a connection to the database at `path` through `vfs`, in role `role`, without
    /// mmap, with checkpoints under engine control and a page cache of `cache_kib` KiB (`None`:
    /// SQLite's default, which a client's `PRAGMA cache_size` reads and changes as in SQLite;
    /// all caches together are bounded by the soft heap limit, `engine/memory.rs`).
    pub(crate) fn open(
        vfs: &Arc<Vfs>,
        path: &Path,
        role: Role,
        cache_kib: Option<u32>,
    ) -> Result<Conn, rusqlite::Error> {
        let conn = Conn::open_deferred(vfs, path, role, cache_kib)?;
        conn.configure()?;
        Ok(conn)
    }

    /// Opens the control connection of a database whose main file may hold a mix of states
    /// (a checkpoint cut short by a crash): SQLite's schema is not read, because the pages it
    /// needs may not agree until the log is replayed into the WAL. Only the wal-index is set
    /// up (a read of the header's data version), which the apply path needs; the settings that
    /// read the schema wait for [`Conn::configure`], once the database is whole again.
    pub(crate) fn open_recovering(
        vfs: &Arc<Vfs>,
        path: &Path,
        cache_kib: Option<u32>,
    ) -> Result<Conn, rusqlite::Error> {
        let conn = Conn::open_deferred(vfs, path, Role::Plain, cache_kib)?;
        conn.connection
            .query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))?;
        Ok(conn)
    }

    /// Opens a connection without the settings that read the schema: [`Conn::configure`] must
    /// run before any statement of a client does.
    pub(crate) fn open_deferred(
        vfs: &Arc<Vfs>,
        path: &Path,
        role: Role,
        cache_kib: Option<u32>,
    ) -> Result<Conn, rusqlite::Error> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = rusqlite::Connection::open_with_flags_and_vfs(path, flags, vfs.name())?;
        // rusqlite sets a 5 s busy timeout; the engine runs on the host's loop thread and must
        // never wait in SQLite: a lock it cannot take now is retried later (checkpoints) or
        // answered as busy.
        connection.busy_timeout(std::time::Duration::ZERO)?;
        connection.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // Neither reads the schema.
        connection.execute_batch("PRAGMA mmap_size = 0; PRAGMA wal_autocheckpoint = 0;")?;
        if role == Role::Capture {
            ffi::set_capture(&connection)?;
            ffi::set_authorizer(&connection);
        }
        Ok(Conn {
            statements: HashMap::new(),
            cache: Vec::new(),
            cache_kib,
            configured: std::cell::Cell::new(false),
            path: path.to_path_buf(),
            connection,
            _vfs: Arc::clone(vfs),
        })
    }

    /// The settings that read the schema (page cache, `synchronous`, and the check that the
    /// database is in WAL mode); done once, a no-op afterwards.
    pub(crate) fn configure(&self) -> Result<(), rusqlite::Error> {
        if self.configured.get() {
            return Ok(());
        }
        if let Some(cache_kib) = self.cache_kib {
            self.connection
                .execute_batch(&format!("PRAGMA cache_size = -{cache_kib};"))?;
        }
        self.connection.execute_batch("PRAGMA synchronous = OFF;")?;
        let mode: String = self
            .connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!(
                    "{} is not in WAL mode ({mode})",
                    self.path.display()
                )),
            ));
        }
        self.configured.set(true);
        Ok(())
    }

    /// The rusqlite connection, for internal statements.
    pub(crate) fn connection(&self) -> &rusqlite::Connection {
        &self.connection
    }

    /// The rusqlite connection, to install handlers (an open-time check's progress handler).
    pub(crate) fn connection_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.connection
    }

    /// Prepares the first statement of `sql`; returns it (or `None` for only whitespace or
    /// comments) and the byte offset where the rest of `sql` starts.
    pub(crate) fn prepare_one(
        &self,
        sql: &str,
    ) -> Result<(Option<RawStmt>, usize), rusqlite::Error> {
        RawStmt::prepare(&self.connection, sql, false)
    }

    /// Keeps `statement` under `id` (replacing, and finalizing, any previous one).
    pub(crate) fn keep(&mut self, id: u32, statement: RawStmt) {
        self.statements.insert(id, statement);
    }

    /// The statement kept under `id`.
    pub(crate) fn kept(&mut self, id: u32) -> Option<&mut RawStmt> {
        self.statements.get_mut(&id)
    }

    /// Finalizes the statement kept under `id`; whether there was one.
    pub(crate) fn forget(&mut self, id: u32) -> bool {
        self.statements.remove(&id).is_some()
    }

    /// Whether a statement for `sql` is cached.
    pub(crate) fn is_cached(&self, sql: &str) -> bool {
        self.cache.iter().any(|(text, _)| text == sql)
    }

    /// Caches `statement`, the whole of `sql` (the least recently used entry makes room).
    pub(crate) fn cache(&mut self, sql: &str, statement: RawStmt) {
        self.cache.retain(|(text, _)| text != sql);
        if self.cache.len() >= STATEMENT_CACHE_MAX {
            self.cache.remove(0);
        }
        self.cache.push((sql.to_string(), statement));
    }

    /// A cached statement for the whole of `sql` (which must hold exactly one statement), prepared
    /// on first use.
    pub(crate) fn cached(&mut self, sql: &str) -> Result<&mut RawStmt, rusqlite::Error> {
        if let Some(position) = self.cache.iter().position(|(text, _)| text == sql) {
            let entry = self.cache.remove(position);
            self.cache.push(entry);
        } else {
            let (statement, _) = RawStmt::prepare(&self.connection, sql, true)?;
            let statement = statement.ok_or_else(|| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                    Some("empty statement".to_string()),
                )
            })?;
            if self.cache.len() >= STATEMENT_CACHE_MAX {
                self.cache.remove(0);
            }
            self.cache.push((sql.to_string(), statement));
        }
        Ok(&mut self.cache.last_mut().expect("just pushed").1)
    }

    /// Runs internal SQL (savepoints, pragmas) on this connection.
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.connection.execute_batch(sql)
    }

    /// Whether the connection is outside any transaction.
    pub(crate) fn is_autocommit(&self) -> bool {
        self.connection.is_autocommit()
    }

    /// The rowid of the last insert on this connection.
    pub(crate) fn last_insert_rowid(&self) -> i64 {
        self.connection.last_insert_rowid()
    }

    /// Rows changed by the last statement.
    pub(crate) fn changes(&self) -> u64 {
        self.connection.changes()
    }

    /// Rolls back any open transaction, ignoring "no transaction is active".
    pub(crate) fn rollback(&self) {
        if !self.connection.is_autocommit() {
            if let Err(error) = self.connection.execute_batch("ROLLBACK") {
                log::warn!("rollback failed: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests;

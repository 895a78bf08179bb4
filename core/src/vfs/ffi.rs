//! The `unsafe` lines of the VFS: the callbacks SQLite calls, the wal-index memory it maps, the
//! connection hooks (capture, authorizer), and SQLite's process-wide memory settings. Raw
//! prepared statements are in `crate::stmt`.
//!
//! Rules kept here: every callback runs its body under `catch_unwind` and turns a panic into an
//! SQLite error code (a Rust panic must never unwind into C); every pointer SQLite hands over is
//! checked for null before use; nothing here holds state of its own beyond what the safe half
//! (`super`) owns.

use std::alloc::{self, Layout};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rusqlite::ffi;

use super::{ConnId, DbFiles, Role, VfsShared};
use crate::wal;

/// Our file-control opcode: "this connection's write transactions are captured". SQLite passes
/// opcodes it does not know to the VFS.
const FCNTL_CAPTURE: c_int = 0x4154_4c01;

/// Runs a callback body, turning a panic into `fallback`.
fn guard(fallback: c_int, body: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(_) => {
            log::error!("a VFS callback panicked; SQLite gets error {fallback}");
            fallback
        }
    }
}

/// What `pAppData` points to.
struct AppData {
    shared: Arc<VfsShared>,
    /// The process's default VFS (unix): temp files and clocks are delegated to it.
    default: *mut ffi::sqlite3_vfs,
}

/// A registered VFS; unregistered and freed on drop.
pub(crate) struct Registration {
    vfs: NonNull<ffi::sqlite3_vfs>,
    name: String,
    _name_c: CString,
}

// SAFETY: the registration owns its heap allocations; SQLite only reads the vfs struct, and the
// engine that owns the registration uses it from one thread at a time.
unsafe impl Send for Registration {}

// SAFETY: shared references only read the name; the vfs struct is never mutated after
// registration.
unsafe impl Sync for Registration {}

impl Registration {
    pub(crate) fn new(name: &str, shared: Arc<VfsShared>) -> io::Result<Registration> {
        let name_c = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: sqlite3_vfs_find with a null name returns the default VFS or null; it
        // initialises the library if needed.
        let default = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
        if default.is_null() {
            return Err(io::Error::other("SQLite has no default VFS"));
        }
        // SAFETY: `default` is non-null and points to a registered, immutable vfs struct.
        let mut vfs: ffi::sqlite3_vfs = unsafe { *default };
        let file_bytes = std::mem::size_of::<AtollFile>() as c_int;
        vfs.iVersion = vfs.iVersion.min(3);
        vfs.szOsFile = vfs.szOsFile.max(file_bytes);
        vfs.pNext = ptr::null_mut();
        vfs.zName = name_c.as_ptr();
        let app = Box::new(AppData { shared, default });
        vfs.pAppData = Box::into_raw(app).cast();
        vfs.xOpen = Some(x_open);
        vfs.xDelete = Some(x_delete);
        vfs.xAccess = Some(x_access);
        vfs.xFullPathname = Some(x_full_pathname);
        let vfs = NonNull::from(Box::leak(Box::new(vfs)));
        // SAFETY: `vfs` is a valid, heap-allocated vfs struct that outlives the registration
        // (freed only after sqlite3_vfs_unregister in Drop).
        let rc = unsafe { ffi::sqlite3_vfs_register(vfs.as_ptr(), 0) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: registration failed, so SQLite holds no pointer to `vfs` or its app data.
            unsafe { free_vfs(vfs) };
            return Err(io::Error::other(format!(
                "sqlite3_vfs_register failed: {rc}"
            )));
        }
        Ok(Registration {
            vfs,
            name: name.to_string(),
            _name_c: name_c,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `vfs` was registered by `new`; the owner closed every connection using it.
        unsafe {
            ffi::sqlite3_vfs_unregister(self.vfs.as_ptr());
            free_vfs(self.vfs);
        }
    }
}

/// Frees a vfs struct and its app data.
///
/// # Safety
/// `vfs` must come from `Registration::new` and no longer be registered.
unsafe fn free_vfs(vfs: NonNull<ffi::sqlite3_vfs>) {
    // SAFETY: per the contract, both boxes were leaked by `Registration::new` and are unused.
    unsafe {
        let vfs = Box::from_raw(vfs.as_ptr());
        drop(Box::from_raw(vfs.pAppData.cast::<AppData>()));
    }
}

/// Our `sqlite3_file` subclass. SQLite allocates `szOsFile` bytes and xOpen fills them.
#[repr(C)]
struct AtollFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

/// The Rust side of an open file.
struct Handle {
    db: Arc<DbFiles>,
    kind: Kind,
}

enum Kind {
    Main {
        conn: ConnId,
        role: Role,
        level: c_int,
    },
    Wal,
}

/// The app data of `vfs`.
///
/// # Safety
/// `vfs` must be a vfs created by `Registration::new` and still alive.
unsafe fn app_data<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a AppData {
    // SAFETY: per the contract, pAppData points to a live AppData.
    unsafe { &*(*vfs).pAppData.cast::<AppData>() }
}

/// The handle of an open file.
///
/// # Safety
/// `file` must have been opened by `x_open` (not delegated) and not yet closed.
unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Handle {
    // SAFETY: per the contract, `file` is an AtollFile whose handle is a live Box.
    unsafe { &mut *(*file.cast::<AtollFile>()).handle }
}

/// A C string argument as a path, if it is valid UTF-8.
///
/// # Safety
/// `name` must be null or a valid NUL-terminated string.
unsafe fn path_arg(name: *const c_char) -> Option<PathBuf> {
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    let text = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
    Some(PathBuf::from(text))
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard(ffi::SQLITE_CANTOPEN, || {
        // SAFETY: SQLite passes our own vfs and a file buffer of szOsFile bytes.
        let app = unsafe { app_data(vfs) };
        // SAFETY: `file` points to at least szOsFile writable bytes.
        unsafe { (*file).pMethods = ptr::null() };
        let named_db = flags & (ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL) != 0;
        if name.is_null() || (!named_db && flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0) {
            // Temp databases, statement journals, sorter files: the default VFS serves them.
            // SAFETY: `app.default` is the live default vfs; `file` has room for its szOsFile
            // (ours is at least as large); arguments are passed through unchanged.
            return unsafe {
                match (*app.default).xOpen {
                    Some(open) => open(app.default, name, file, flags, out_flags),
                    None => ffi::SQLITE_CANTOPEN,
                }
            };
        }
        // SAFETY: a non-null filename from SQLite is NUL-terminated.
        let Some(path) = (unsafe { path_arg(name) }) else {
            return ffi::SQLITE_CANTOPEN;
        };
        let (db, kind) = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            let Some(db) = app.shared.database(&path) else {
                log::warn!("refused to open unknown database {}", path.display());
                return ffi::SQLITE_CANTOPEN;
            };
            let conn = db.new_conn();
            (
                db,
                Kind::Main {
                    conn,
                    role: Role::Plain,
                    level: ffi::SQLITE_LOCK_NONE,
                },
            )
        } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
            let Some(db) = app.shared.database_of_wal(&path) else {
                return ffi::SQLITE_CANTOPEN;
            };
            (db, Kind::Wal)
        } else {
            // Rollback journals and super-journals: atoll databases are WAL-only.
            log::warn!("refused to open {} (flags {flags:#x})", path.display());
            return ffi::SQLITE_CANTOPEN;
        };
        let handle = Box::into_raw(Box::new(Handle { db, kind }));
        // SAFETY: `file` has room for an AtollFile (szOsFile >= its size) and is ours to fill.
        unsafe {
            let atoll = file.cast::<AtollFile>();
            ptr::addr_of_mut!((*atoll).handle).write(handle);
            (*file).pMethods = &IO_METHODS;
            if !out_flags.is_null() {
                *out_flags = flags;
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    guard(ffi::SQLITE_IOERR_DELETE, || {
        // SAFETY: SQLite passes our own vfs.
        let app = unsafe { app_data(vfs) };
        // SAFETY: SQLite passes a NUL-terminated path.
        let Some(path) = (unsafe { path_arg(name) }) else {
            return ffi::SQLITE_IOERR_DELETE;
        };
        if let Some(db) = app.shared.database_of_wal(&path) {
            // The WAL stays open in DbFiles: empty it rather than unlink an inode in use.
            return match db.truncate_wal() {
                Ok(()) => ffi::SQLITE_OK,
                Err(_) => ffi::SQLITE_IOERR_DELETE,
            };
        }
        match app.shared.disk().remove_file(&path) {
            Ok(()) => ffi::SQLITE_OK,
            Err(error) if error.kind() == io::ErrorKind::NotFound => ffi::SQLITE_IOERR_DELETE_NOENT,
            Err(_) => ffi::SQLITE_IOERR_DELETE,
        }
    })
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard(ffi::SQLITE_IOERR_ACCESS, || {
        // SAFETY: SQLite passes our own vfs.
        let app = unsafe { app_data(vfs) };
        // SAFETY: SQLite passes a NUL-terminated path.
        let exists = unsafe { path_arg(name) }.is_some_and(|p| app.shared.disk().exists(&p));
        if out.is_null() {
            return ffi::SQLITE_IOERR_ACCESS;
        }
        // SAFETY: `out` is non-null and points to an int SQLite provides.
        unsafe { *out = c_int::from(exists) };
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    out_len: c_int,
    out: *mut c_char,
) -> c_int {
    guard(ffi::SQLITE_CANTOPEN, || {
        // SAFETY: SQLite passes a NUL-terminated path.
        let Some(path) = (unsafe { path_arg(name) }) else {
            return ffi::SQLITE_CANTOPEN;
        };
        let full = if path.is_absolute() {
            path
        } else {
            match std::env::current_dir() {
                Ok(dir) => dir.join(path),
                Err(_) => return ffi::SQLITE_CANTOPEN,
            }
        };
        let Some(text) = full.to_str() else {
            return ffi::SQLITE_CANTOPEN;
        };
        let bytes = text.as_bytes();
        if out.is_null() || out_len <= 0 || bytes.len() >= out_len as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        // SAFETY: `out` has `out_len` bytes and we write `bytes.len() + 1 <= out_len` of them.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
            *out.add(bytes.len()) = 0;
        }
        ffi::SQLITE_OK
    })
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    guard(ffi::SQLITE_IOERR_CLOSE, || {
        // SAFETY: xClose is called once on a file x_open filled; the handle box is ours.
        let handle = unsafe { Box::from_raw((*file.cast::<AtollFile>()).handle) };
        if let Kind::Main {
            conn, mut level, ..
        } = handle.kind
        {
            handle.db.shm_unmap(conn);
            handle
                .db
                .file_unlock(conn, &mut level, ffi::SQLITE_LOCK_NONE);
        }
        ffi::SQLITE_OK
    })
}

/// A byte buffer SQLite passed in.
///
/// # Safety
/// `buffer` must point to `amount` bytes valid for the duration of the callback.
unsafe fn buffer_mut<'a>(buffer: *mut c_void, amount: c_int) -> Option<&'a mut [u8]> {
    if buffer.is_null() || amount < 0 {
        return None;
    }
    // SAFETY: per the contract.
    Some(unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), amount as usize) })
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buffer: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    guard(ffi::SQLITE_IOERR_READ, || {
        // SAFETY: `file` was opened by x_open; SQLite provides `amount` bytes at `buffer`.
        let (handle, Some(buffer)) = (unsafe { handle(file) }, unsafe {
            buffer_mut(buffer, amount)
        }) else {
            return ffi::SQLITE_IOERR_READ;
        };
        let Ok(offset) = u64::try_from(offset) else {
            return ffi::SQLITE_IOERR_READ;
        };
        match handle.kind {
            Kind::Main { .. } => handle.db.main_read(buffer, offset),
            Kind::Wal => handle.db.wal_read(buffer, offset),
        }
    })
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buffer: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    guard(ffi::SQLITE_IOERR_WRITE, || {
        // SAFETY: `file` was opened by x_open; SQLite provides `amount` readable bytes.
        let (handle, Some(buffer)) = (unsafe { handle(file) }, unsafe {
            buffer_mut(buffer.cast_mut(), amount)
        }) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let Ok(offset) = u64::try_from(offset) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        match handle.kind {
            Kind::Main { .. } => handle.db.main_write(buffer, offset),
            Kind::Wal => handle.db.wal_write(buffer, offset),
        }
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    guard(ffi::SQLITE_IOERR_TRUNCATE, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        let Ok(size) = u64::try_from(size) else {
            return ffi::SQLITE_IOERR_TRUNCATE;
        };
        match handle.kind {
            Kind::Main { .. } => handle.db.main_truncate(size),
            Kind::Wal => handle.db.wal_truncate(size),
        }
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_FSYNC, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        match handle.kind {
            Kind::Main { .. } => handle.db.main_sync(),
            // The WAL is never the durable copy (ARCHITECTURE.md, "Durability and crash recovery").
            Kind::Wal => ffi::SQLITE_OK,
        }
    })
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    guard(ffi::SQLITE_IOERR_FSTAT, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        let result = match handle.kind {
            Kind::Main { .. } => handle.db.main_size(),
            Kind::Wal => handle.db.wal_size(),
        };
        match result {
            Ok(bytes) if !size.is_null() => {
                // SAFETY: `size` is non-null and points to an i64 SQLite provides.
                unsafe { *size = bytes as ffi::sqlite3_int64 };
                ffi::SQLITE_OK
            }
            Ok(_) => ffi::SQLITE_IOERR_FSTAT,
            Err(code) => code,
        }
    })
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_LOCK, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        match &mut handle.kind {
            Kind::Main {
                conn, level: held, ..
            } => handle.db.file_lock(*conn, held, level),
            Kind::Wal => ffi::SQLITE_OK,
        }
    })
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_UNLOCK, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        match &mut handle.kind {
            Kind::Main {
                conn, level: held, ..
            } => handle.db.file_unlock(*conn, held, level),
            Kind::Wal => ffi::SQLITE_OK,
        }
    })
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        match handle.db.file_reserved() {
            Ok(reserved) if !out.is_null() => {
                // SAFETY: `out` is non-null and points to an int SQLite provides.
                unsafe { *out = c_int::from(reserved) };
                ffi::SQLITE_OK
            }
            Ok(_) => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
            Err(code) => code,
        }
    })
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    _argument: *mut c_void,
) -> c_int {
    guard(ffi::SQLITE_IOERR, || {
        if op != FCNTL_CAPTURE {
            return ffi::SQLITE_NOTFOUND;
        }
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        match &mut handle.kind {
            Kind::Main { role, .. } => {
                *role = Role::Capture;
                ffi::SQLITE_OK
            }
            Kind::Wal => ffi::SQLITE_NOTFOUND,
        }
    })
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    region_bytes: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    guard(ffi::SQLITE_IOERR_SHMMAP, || {
        if out.is_null() || region < 0 || region_bytes as usize != wal::SHM_REGION_BYTES {
            return ffi::SQLITE_IOERR_SHMMAP;
        }
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        let mapped = handle.db.shm_map(region as usize, extend != 0);
        let (pointer, code) = match mapped {
            Ok(Some(pointer)) => (pointer.cast::<c_void>(), ffi::SQLITE_OK),
            Ok(None) => (ptr::null_mut(), ffi::SQLITE_OK),
            Err(code) => (ptr::null_mut(), code),
        };
        // SAFETY: `out` is non-null and points to a pointer SQLite provides.
        unsafe { *out = pointer };
        code
    })
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    guard(ffi::SQLITE_IOERR_SHMLOCK, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        let (Ok(offset), Ok(n)) = (usize::try_from(offset), usize::try_from(n)) else {
            return ffi::SQLITE_IOERR_SHMLOCK;
        };
        match handle.kind {
            Kind::Main { conn, role, .. } => handle.db.shm_lock(conn, role, offset, n, flags),
            Kind::Wal => ffi::SQLITE_IOERR_SHMLOCK,
        }
    })
}

unsafe extern "C" fn x_shm_barrier(_file: *mut ffi::sqlite3_file) {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, _delete: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR, || {
        // SAFETY: `file` was opened by x_open.
        let handle = unsafe { handle(file) };
        if let Kind::Main { conn, .. } = handle.kind {
            // The regions live as long as the database is open in the engine; only this
            // connection's locks go.
            handle.db.shm_unmap(conn);
        }
        ffi::SQLITE_OK
    })
}

/// One 32 KiB wal-index region: zeroed, 8-byte aligned heap memory that SQLite maps through
/// `xShmMap` and atoll reads and writes in `apply` and the hide step.
pub(crate) struct Region {
    bytes: NonNull<u8>,
}

// SAFETY: the region is plain heap memory owned by this value; every access (SQLite's through
// the mapped pointer, ours through these methods) happens under the database's mutex or inside
// a SQLite call on the engine's thread, never concurrently.
unsafe impl Send for Region {}

fn region_layout() -> Layout {
    Layout::from_size_align(wal::SHM_REGION_BYTES, 8).expect("constant layout")
}

impl Region {
    pub(crate) fn new() -> Region {
        let layout = region_layout();
        // SAFETY: the layout has a non-zero size.
        let bytes = unsafe { alloc::alloc_zeroed(layout) };
        let bytes = NonNull::new(bytes).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Region { bytes }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.bytes.as_ptr()
    }

    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= wal::SHM_REGION_BYTES);
        // SAFETY: the range is within the allocation (asserted) and `out` does not overlap it.
        unsafe {
            ptr::copy_nonoverlapping(self.bytes.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
    }

    pub(crate) fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= wal::SHM_REGION_BYTES);
        // SAFETY: the range is within the allocation (asserted) and `bytes` does not overlap it.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.bytes.as_ptr().add(offset), bytes.len())
        };
    }

    pub(crate) fn fill_zero(&mut self, offset: usize, len: usize) {
        assert!(offset + len <= wal::SHM_REGION_BYTES);
        // SAFETY: the range is within the allocation (asserted).
        unsafe { ptr::write_bytes(self.bytes.as_ptr().add(offset), 0, len) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout; no connection maps it any more (the
        // database's connections are closed before its DbFiles drops).
        unsafe { alloc::dealloc(self.bytes.as_ptr(), region_layout()) };
    }
}

/// SQLite's process-wide memory settings (`crate::engine::memory`): page caches allocate their
/// pages one by one instead of preallocating a bulk of them per connection, and the soft heap
/// limit is `soft_heap_limit_bytes`. The first setting can only be made before SQLite
/// initializes: it is tried once per process, and if SQLite is already in use (a host that
/// opened its own connection first), skipped with a log line; the limit is set every time.
pub(crate) fn configure_memory(soft_heap_limit_bytes: i64) {
    static PAGE_CACHE: std::sync::Once = std::sync::Once::new();
    PAGE_CACHE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_PAGECACHE takes (void *buffer, int slot size, int slot count);
        // a null buffer with no slots gives pcache1 no static pool and, with N = 0, no
        // per-cache bulk preallocation. sqlite3_config is only unsafe while other threads use
        // SQLite: before initialization (the only time it succeeds) nothing does; afterwards it
        // changes nothing and returns SQLITE_MISUSE.
        let rc = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PAGECACHE,
                ptr::null_mut::<c_void>(),
                0 as c_int,
                0 as c_int,
            )
        };
        if rc != ffi::SQLITE_OK {
            log::info!("SQLite in use before the engine: page caches keep their bulk ({rc})");
        }
    });
    // SAFETY: sqlite3_soft_heap_limit64 is thread-safe (it takes SQLite's memory mutex) and
    // takes no pointer.
    unsafe { ffi::sqlite3_soft_heap_limit64(soft_heap_limit_bytes) };
}

/// The bytes SQLite has allocated and not freed, in the whole process.
pub(crate) fn sqlite_memory_used() -> i64 {
    // SAFETY: sqlite3_memory_used reads a counter under SQLite's memory mutex; no pointer.
    unsafe { ffi::sqlite3_memory_used() }
}

/// Marks a connection's write transactions as captured (see `super::Role`).
pub(crate) fn set_capture(connection: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    // SAFETY: the handle is valid while `connection` lives; "main" is NUL-terminated; our
    // xFileControl ignores the argument.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            connection.handle(),
            c"main".as_ptr(),
            FCNTL_CAPTURE,
            ptr::null_mut(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some("the database is not served by atoll's VFS".to_string()),
        ));
    }
    Ok(())
}

/// PRAGMAs a client must not run: they would change the journal, bypass the checkpoint policy
/// or map files (atoll's replication depends on all three), or change the memory bounds of the
/// whole process.
const DENIED_PRAGMAS: &[&str] = &[
    "journal_mode",
    "locking_mode",
    "wal_checkpoint",
    "wal_autocheckpoint",
    "mmap_size",
    "writable_schema",
    "temp_store_directory",
    "data_store_directory",
    // Process-wide: one client would lift (or tighten) every connection's memory bound.
    "soft_heap_limit",
    "hard_heap_limit",
];

unsafe extern "C" fn authorize(
    _user: *mut c_void,
    action: c_int,
    first: *const c_char,
    second: *const c_char,
    _database: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    guard(ffi::SQLITE_DENY, || match action {
        ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => ffi::SQLITE_DENY,
        ffi::SQLITE_PRAGMA => {
            // SAFETY: SQLite passes the pragma name (and value, or null) as C strings.
            let (name, value) = unsafe { (path_arg(first), path_arg(second)) };
            let name = name
                .and_then(|n| n.to_str().map(str::to_ascii_lowercase))
                .unwrap_or_default();
            let reading = value.is_none() && name != "wal_checkpoint";
            if DENIED_PRAGMAS.contains(&name.as_str()) && !reading {
                ffi::SQLITE_DENY
            } else {
                ffi::SQLITE_OK
            }
        }
        _ => ffi::SQLITE_OK,
    })
}

/// Installs the authorizer that keeps clients away from atoll's machinery.
pub(crate) fn set_authorizer(connection: &rusqlite::Connection) {
    // SAFETY: the handle is valid while `connection` lives; the callback needs no user data.
    unsafe { ffi::sqlite3_set_authorizer(connection.handle(), Some(authorize), ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guard_turns_panics_into_error_codes() {
        // A panicking callback body must not unwind into SQLite's C frames.
        let code = guard(ffi::SQLITE_IOERR_READ, || panic!("injected"));
        assert_eq!(code, ffi::SQLITE_IOERR_READ);
        assert_eq!(guard(ffi::SQLITE_IOERR, || ffi::SQLITE_OK), ffi::SQLITE_OK);
    }
}

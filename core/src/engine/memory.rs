//! What the engine's memory is made of, and what bounds it.
//!
//! Most of it is SQLite's: every client session has its own connection per database it opens
//! (64 writers: 64 connections), each with a page cache, a lookaside buffer (48 KiB) and its
//! schema and statements, plus one control connection per open database. Client sessions keep
//! SQLite's default `cache_size` (a client reads and sets it as in SQLite), so the bound is
//! process-wide instead:
//!
//! - page caches allocate pages as they need them, not a bulk of 20 pages (88 KiB) per
//!   connection up front (`SQLITE_CONFIG_PAGECACHE` with no slots, set once per process before
//!   SQLite initializes);
//! - the soft heap limit ([`SQLITE_HEAP_SOFT_LIMIT_BYTES`]): past it, every page cache recycles
//!   its own least recently used page instead of growing (nothing fails); clients may read the
//!   limit but not change it (`PRAGMA soft_heap_limit` is denied);
//! - [`Engine::release_memory`], for a host gone idle: every connection frees its unpinned
//!   cache pages (`sqlite3_db_release_memory`) and the engine's retained buffers go.
//!
//! Each write transaction resets the caches of the other connections to the same database
//! (their pages may be stale), so under a write load the caches stay small anyway.

use super::Engine;
use crate::vfs;

/// SQLite's soft heap limit for the whole process: 8 MiB.
pub const SQLITE_HEAP_SOFT_LIMIT_BYTES: i64 = 8 << 20;

/// Applies SQLite's process-wide memory settings (idempotent; called by [`Engine::open`]
/// before SQLite's first use).
pub(super) fn configure() {
    vfs::configure_memory(SQLITE_HEAP_SOFT_LIMIT_BYTES);
}

impl Engine {
    /// Frees what the engine keeps only to go faster: the unpinned page-cache pages of every
    /// connection, the apply buffer, and each database's capture buffer while nothing is being
    /// captured. Nothing a client sees changes (a connection's cache fills again as it reads).
    /// For a host gone idle; cheap, but it costs the next requests their cache.
    pub fn release_memory(&mut self) {
        for session in self.sessions.values() {
            for db in session.databases.values() {
                // Only fails on a misuse SQLite detects (a closed handle): nothing to free then.
                let _ = db.conn.connection().release_memory();
            }
        }
        for database in self.databases.values() {
            let _ = database.control.connection().release_memory();
            database.files.release_memory();
        }
        self.scratch = Vec::new();
    }

    /// The bytes SQLite has allocated and not freed, in the whole process (every engine's
    /// connections): what the soft heap limit bounds.
    pub fn sqlite_memory_bytes() -> i64 {
        vfs::sqlite_memory_used()
    }
}

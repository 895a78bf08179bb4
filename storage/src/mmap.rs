//! The only module of this crate with `unsafe` code: memory maps of segment files.
//!
//! memmap2 marks file-backed maps `unsafe` because a file changed or truncated under a live map is
//! undefined behaviour (or `SIGBUS`). Our argument that it cannot happen has three parts:
//! 1. the data directory is locked (`LOCK` file), so no other atoll process opens these files;
//! 2. a segment file is never truncated or shrunk while a map of it is alive;
//! 3. every read is bounds-checked against the length we mapped, never past it.

use std::fs::File;
use std::io;

/// A read-only map of a whole file.
#[allow(
    dead_code,
    reason = "used by the segment log, which lands with the storage issue"
)]
pub struct ReadMap {
    map: memmap2::Mmap,
}

#[allow(
    dead_code,
    reason = "used by the segment log, which lands with the storage issue"
)]
impl ReadMap {
    /// Maps `file` read-only, all of its current length.
    pub fn open(file: &File) -> io::Result<ReadMap> {
        // SAFETY: see the module comment: the data directory lock keeps other processes out, and
        // this crate never truncates a file while a map of it is alive.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(ReadMap { map })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

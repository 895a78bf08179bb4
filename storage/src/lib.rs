//! atoll-storage: the durable Raft log of an atoll node.
//!
//! What it does: keeps the Raft log in memory-mapped, preallocated segment files (one crc32 per
//! entry) with [`SegmentLog`], persists the hard state (term and vote) and the compaction point
//! atomically in two alternating metadata files, and stores snapshots ([`SnapshotStore`]). Raft
//! reads the log through [`LogRead`]; the host writes it through [`LogStore`]. [`MemLog`]
//! implements the same traits in memory, with written and durable state kept apart, for tests
//! and the simulator. Byte layouts: segments in `segment.rs`, metadata in `meta.rs`, snapshot files
//! in [`snapshot`]; the data directory, durability and recovery rules in [`segment_log`].
//!
//! Every file goes through the file seam, [`Disk`] ([`disk`]): [`StdDisk`] in production (the
//! log maps its segments), [`SimDisk`] in the simulator (files in memory that a power cut, a
//! full disk or an I/O error can hit). The engine (`atoll-core`) uses the same seam.
//!
//! ```text
//!  host ── append(entries) ──► open segment map (readable now)
//!       ── sync() ───────────► msync of the dirty pages (durable now; one flush per batch)
//!       ── truncate_after / compact_through / save_hard_state ─► durable on return
//!  raft ◄─ term / entries ──── term runs in memory; payloads are windows into the maps
//! ```
//!
//! What it must never do: skip or invent an entry during recovery, delete a file to "recover",
//! hand out a byte that failed its checksum, write over bytes it has handed out, or accept
//! writes after a failed write or sync.
//!
//! Invariants:
//! - the entries on disk are contiguous from the compaction point on; recovery refuses a gap;
//! - an entry is never written twice in place: truncation writes a new file and renames it over
//!   the old one, so payloads already handed out (windows into the old map) stay valid;
//! - every byte after the last entry of an open segment is zero, so nothing stale can follow a
//!   new entry after a crash;
//! - a segment's blocks are preallocated before it is mapped for writing: a full disk is an
//!   error from `append`, never a `SIGBUS`;
//! - at most `maps_cached_max` closed segments, and `maps_cached_bytes_max` bytes of them (or the
//!   one read last), are mapped at once: memory and address space do not grow with the log.
//!
//! Byte order on disk: little-endian everywhere.
//!
//! ```
//! use atoll_storage::{Entry, EntryKind, LogIndex, LogRead, LogStore, Options, Payload,
//!                     SegmentLog, Term};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut log = SegmentLog::open(dir.path(), Options::default()).unwrap();
//! let entry = Entry {
//!     index: LogIndex(1),
//!     term: Term(1),
//!     kind: EntryKind::Command,
//!     payload: Payload::from_vec(b"hello".to_vec()),
//! };
//! log.append(&[entry]).unwrap();
//! log.sync().unwrap(); // entry 1 is durable now
//! assert_eq!(log.durable_index(), LogIndex(1));
//! drop(log);
//!
//! let log = SegmentLog::open(dir.path(), Options::default()).unwrap();
//! let mut read = Vec::new();
//! log.entries(LogIndex(1), LogIndex(2), u64::MAX, &mut read).unwrap();
//! assert_eq!(&read[0].payload[..], b"hello");
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod disk;
pub mod error;
pub mod fuzz;
pub mod log_store;
pub mod mem_log;
mod meta;
mod mmap;
mod segment;
pub mod segment_log;
pub mod sim_disk;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;

pub use disk::{Disk, DiskFile, FileCursor, FileMetadata, OpenMode, Removal, StdDisk};
pub use error::{is_closing, LogError};
pub use log_store::{LogRead, LogStore};
pub use mem_log::MemLog;
pub use mmap::{available_bytes, available_inodes, release_free_heap};
pub use segment::PAYLOAD_BYTES_MAX;
pub use segment_log::{
    read_hard_state, read_hard_state_on, Options, SegmentLog, SpareRequest, SyncRequest,
};
pub use sim_disk::{PowerLoss, SimDisk, SimFaults, SimOp};
pub use snapshot::{SnapshotData, SnapshotMeta, SnapshotReader, SnapshotStore, SnapshotWriter};
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};

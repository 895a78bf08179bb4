//! atoll-storage: the durable Raft log of an atoll node.
//!
//! What it does: keeps the Raft log in memory-mapped, preallocated segment files (one crc32 per
//! entry), persists the hard state (term and vote) atomically, and stores snapshots. Raft reads the
//! log through [`LogRead`]; the host writes it through [`LogStore`]. [`MemLog`] implements the same
//! traits in memory, with written and durable state kept apart, for tests and the simulator.
//!
//! What it must never do: skip or invent an entry during recovery, delete a file to "recover",
//! hand out a byte that failed its checksum, or accept writes after a failed write or sync.
//!
//! Byte order on disk: little-endian everywhere.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod log_store;
pub mod mem_log;
mod mmap;
pub mod types;

pub use log_store::{LogRead, LogStore};
pub use mem_log::MemLog;
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};

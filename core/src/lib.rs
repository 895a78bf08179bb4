//! atoll-core: SQLite, replicated physically through its WAL frames.
//!
//! What it must never do: let a reader see frames that Raft has not committed, or touch SQLite
//! from anywhere but this crate.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

//! atoll-raft: the Raft consensus algorithm as a pure state machine (sans-IO).
//!
//! What it must never do: open a socket or file, read a clock, start a thread, or draw randomness
//! other than from the seeded generator its host hands in.

#![forbid(unsafe_code)]

pub use atoll_storage::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};

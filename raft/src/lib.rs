//! atoll-raft: the Raft consensus algorithm as a pure state machine (sans-IO).
//!
//! What it must never do: open a socket or file, read a clock, start a thread, or draw randomness
//! other than from the seeded generator its host hands in.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
mod configurations;
pub mod error;
mod log;
pub mod membership;
pub mod message;
pub mod node;
pub mod prng;
pub mod progress;
pub mod ready;
mod role;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod wire;

pub use atoll_storage::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};
pub use config::{Config, ConfigError};
pub use error::{DecodeError, Error};
pub use membership::{Configuration, Member, MemberRole};
pub use message::{Message, MessageKind, SnapshotChunk, SnapshotMeta};
pub use node::{bootstrap_entry, Promotion, RawNode, StateRole};
pub use progress::{Progress, ProgressState};
pub use ready::{persist_ready, ReadState, Ready, SnapshotInstall};

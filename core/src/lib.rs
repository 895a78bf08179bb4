//! atoll-core: SQLite, replicated physically through its WAL frames.
//!
//! What it does: serves a node's named SQLite databases (on disk, in its data directory) through
//! atoll's own VFS. On the leader, a write transaction runs in SQLite as usual, but the WAL frames
//! it writes are *captured* in memory and hidden from every reader; they leave the engine as one
//! [`Proposal`] (a [`command`]). Once Raft commits it, [`Engine::apply`] — on every node, the
//! leader included — appends those frames to the database's WAL and publishes them in the
//! wal-index by hand, atomically for readers. Checkpoints copy the WAL into the main file on a
//! frame-count policy and durably record the Raft index the main file reflects.
//!
//! What it must never do: let a reader see frames that Raft has not committed; write a WAL frame
//! anywhere but in `apply`; let two writers compute pages against different states (one pending
//! write per database, later writers queue); let SQLite be touched from anywhere but this crate;
//! block the host (no busy-handler sleeps: waiting writers queue, and time comes from the host).
//!
//! Invariants:
//! - A database's WAL holds only applied (committed) frames; captured frames live in memory.
//! - At most one captured, unapplied transaction per database (its write slot is `Proposed`).
//! - A command applies only on top of the state it was computed from (its base index equals the
//!   database's last applied command), so every replica accepts or rejects it identically.
//! - The main file plus the Raft log after its recorded checkpoint index rebuild the state.
//!
//! ```text
//!  host (node event loop)                core::Engine                          disk
//!  ─────────────────────                 ────────────                          ────
//!  exec(session, db, sql, params) ──►  writer slot free? ─no──► FIFO queue
//!                                        │yes (or granted later: a chain of queued requests)
//!                                        ▼
//!                                      SQLite runs each request on its session's own
//!                                      connection, one after another (each sees the last)
//!                                        │ WAL xWrite ──► capture buffer (memory)
//!                                        │ end of chain ──► hide: restore wal-index
//!                                        ▼                  header, clean hash
//!  take_proposals() ◄── Proposal{command}    (slot: Proposed)
//!  raft propose / commit
//!  apply(index, &command) ──────────►  decode + validate (nothing written on error)
//!                                        │ frames + checksums ─────────────────────► db-wal
//!                                        │ wal-index: page array, hash, header (copy 1, 0)
//!                                        ▼
//!  take_completions() ◄── responses   (slot: Free; next writers go)
//!                                        │ every N frames: wal_checkpoint(PASSIVE),
//!                                        │ fsync main, record index ───────────────► db, db-atoll
//!                                        │ (the next apply starts the WAL over in place)
//! ```
//!
//! A minimal run, leader and follower in one process:
//!
//! ```
//! use atoll_core::{Engine, EngineConfig, Reply, Target, Value, Response};
//! let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
//! let (mut leader, _) = Engine::open(EngineConfig::new(dirs.0.path(), 1)).unwrap();
//! let (mut follower, _) = Engine::open(EngineConfig::new(dirs.1.path(), 2)).unwrap();
//! let session = leader.open_session().unwrap();
//! leader.open_database(session, "demo").unwrap();
//! let reply = leader
//!     .exec(session, "demo", Target::Sql("CREATE TABLE t(x)"), &[])
//!     .unwrap();
//! assert!(matches!(reply, Reply::Proposed { .. }));
//! for (index, proposal) in leader.take_proposals().into_iter().enumerate() {
//!     // Raft would replicate `proposal.command` and commit it at some index.
//!     let index = index as u64 + 1;
//!     leader.apply(index, &proposal.command).unwrap();
//!     follower.apply(index, &proposal.command).unwrap();
//! }
//! let done = leader.take_completions();
//! assert!(done[0].result.is_ok());
//! let reader = follower.open_session().unwrap();
//! follower.open_database(reader, "demo").unwrap();
//! let rows = follower
//!     .query(reader, "demo", Target::Sql("SELECT count(*) FROM t"), &[])
//!     .unwrap();
//! let Reply::Done(Response::Rows(rows)) = rows else { panic!() };
//! assert_eq!(rows.values, vec![Value::Integer(0)]);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod command;
mod engine;
mod error;
pub mod fuzzing;
pub mod lifecycle;
mod record;
mod snapshot;
pub mod sql;
mod stmt;
mod value;
mod vfs;
pub mod wal;

pub use engine::{
    Completion, DatabaseRecovery, Engine, EngineConfig, Proposal, Recovery, Reply, Response,
    SessionId, Target, DATABASES_MAX_DEFAULT, SQLITE_HEAP_SOFT_LIMIT_BYTES,
    STATEMENT_BYTES_MAX_DEFAULT,
};
pub use error::{Applied, EngineError, ExecError};
pub use snapshot::{DatabaseImage, SnapshotReader};
pub use value::{Rows, Value};
pub use vfs::FrameRef;

/// File-name suffixes atoll uses next to a database file; database names may not end in them.
pub(crate) const RESERVED_SUFFIXES: &[&str] = &[
    "-wal",
    "-shm",
    "-journal",
    "-atoll",
    "-atoll.tmp",
    "-snapshot.tmp",
];

#[cfg(test)]
mod tests {
    /// The host may move the engine to its event-loop thread.
    #[test]
    fn test_engine_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<crate::Engine>();
        assert_send::<crate::SnapshotReader>();
    }
}

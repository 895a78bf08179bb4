//! atoll-raft: the Raft consensus algorithm as a pure state machine (sans-IO).
//!
//! A [`RawNode`] is a value the host feeds and drains. Events go in: [`RawNode::tick`] (the
//! host's clock, in ticks), [`RawNode::step`] (a message from a peer), requests
//! ([`RawNode::propose`], [`RawNode::propose_batch`], [`RawNode::read_index`],
//! [`RawNode::add`], [`RawNode::assign`], [`RawNode::remove`],
//! [`RawNode::transfer_leadership`], [`RawNode::snapshot_taken`]). Work comes out as a
//! [`Ready`]: entries and hard state to persist, messages to send now and messages to send
//! only once that is durable, snapshot chunks to store and a snapshot to install, committed
//! entries to apply, reads now safe to answer. The host reports durability back with
//! [`RawNode::on_persisted`].
//!
//! ```text
//!   tick / step / propose / read_index / membership / transfer
//!                  |
//!                  v
//!   +----------- RawNode<L: LogRead> -----------+      reads the log it owns;
//!   |  role step function (leader/candidate/   |      never writes it
//!   |  follower), progress, configuration      |
//!   +-------------------------------------------+
//!                  | ready()
//!                  v
//!   host: persist (log_mut) -> send messages -> sync -> on_persisted
//!         -> send persisted_messages -> apply committed_entries -> answer read_states
//! ```
//!
//! What it must never do: open a socket or file, read a clock, start a thread, or draw randomness
//! other than from the seeded generator its host hands in ([`Config::seed`]).
//!
//! Invariants asserted in code (a failure means divergence or data loss, so they panic): the
//! commit index never moves backwards and never passes the last index; a committed entry is
//! never overwritten or truncated; one vote per term; the log stays contiguous with
//! non-decreasing terms; only a leader appends on its own; the term never goes backwards.
//! The simulator (module `sim`, feature `sim`) checks the cluster-wide properties over
//! thousands of seeded runs.
//!
//! A one-node cluster, driven the way a host drives any node:
//!
//! ```
//! use atoll_raft::{
//!     bootstrap_entry, persist_ready, Config, Configuration, LogIndex, MemberRole, NodeId,
//!     Payload, RawNode, StateRole,
//! };
//! use atoll_storage::{LogStore, MemLog};
//!
//! let mut configuration = Configuration::new();
//! configuration.insert(NodeId(1), "127.0.0.1:9001", MemberRole::Voter);
//! let mut log = MemLog::new();
//! log.append(&[bootstrap_entry(&configuration)]).unwrap();
//! log.sync().unwrap();
//! let hard_state = log.hard_state();
//! let mut node = RawNode::new(Config::new(NodeId(1)), log, hard_state, None, LogIndex(0))
//!     .unwrap();
//!
//! node.campaign().unwrap(); // normally an election timeout does this
//! assert_eq!(node.role(), StateRole::Leader);
//! let index = node.propose(Payload::from(&b"hello"[..])).unwrap();
//!
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let ready = node.ready();
//!     persist_ready(node.log_mut(), &ready).unwrap(); // entries, snapshot, hard state
//!     // ... send ready.messages to their peers here ...
//!     node.log_mut().sync().unwrap(); // may happen later, on a slow disk
//!     node.advance(&ready); // = on_persisted(ready.persist_point())
//!     // ... send ready.persisted_messages here ...
//!     applied.extend(ready.committed_entries); // apply, then answer ready.read_states
//! }
//! assert_eq!(applied.last().unwrap().index, index);
//! assert_eq!(&applied.last().unwrap().payload[..], b"hello");
//! ```

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

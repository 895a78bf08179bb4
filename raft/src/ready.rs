//! What a node hands its host after processing events: one batch of work.

use std::fmt;
use std::io;

use atoll_storage::LogStore;

use crate::message::{DisplayEntries, Message, SnapshotChunk, SnapshotMeta};
use crate::{Entry, HardState, LogIndex, Term};

/// A read that may be served: the request `context` once the state machine has applied
/// `index`. Raft releases a read state only once `index` is applied (counting the ready's own
/// `committed_entries`), so the host answers it right after applying them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The read index: the leader's commit index when leadership was confirmed.
    pub index: LogIndex,
    /// The host's request id, as passed to `read_index`.
    pub context: u64,
}

/// A received snapshot to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    /// The snapshot; its bytes are the chunks handed out in earlier readies (the install
    /// comes in the ready after the one with its last chunk).
    pub meta: SnapshotMeta,
    /// The log already holds the snapshot's last entry: compact through it and keep the rest.
    /// Otherwise the log is discarded and restarts after `meta.index`.
    pub keep_log: bool,
}

/// One batch of work for the host, in the order it must be done:
///
/// 1. Install `snapshot` (restore the state machine from the bytes received earlier, then the
///    log as [`persist_ready`] does); write `snapshot_chunks` into the incoming snapshot, or,
///    when they cannot be stored (a full disk), drop them and call
///    [`crate::RawNode::snapshot_store_failed`] before calling raft again.
/// 2. Append `entries` to the log (truncating any conflicting suffix), compact through
///    `compact`, and save `hard_state` durably. [`persist_ready`] does all of 1–2 for the log.
///    This must happen before raft is called again (raft reads the entries back from the log);
///    on a full disk the host gives them back instead ([`crate::RawNode::append_failed`]).
/// 3. Send `messages`: they may leave before the entries are durable, but not before the hard
///    state is (save it synchronously, as `LogStore::save_hard_state` does).
/// 4. Make the entries durable (`LogStore::sync`, possibly later: a slow disk), then call
///    `on_persisted` with [`Ready::persist_point`] and only then send `persisted_messages`.
/// 5. Apply `committed_entries` in order, then answer `read_states`; fail `dropped_reads`. An
///    entry that cannot be applied for want of space goes back ([`crate::RawNode::apply_failed`]).
#[derive(Debug, Default)]
pub struct Ready {
    /// The term and vote, when they changed.
    pub hard_state: Option<HardState>,
    /// A received snapshot to install.
    pub snapshot: Option<SnapshotInstall>,
    /// Received snapshot bytes to write, in order, at their offsets.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// A snapshot was taken: the log may drop entries through this point.
    pub compact: Option<(LogIndex, Term)>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send once this ready's entries (and snapshot) are durable: append and
    /// snapshot acknowledgements promise durability.
    pub persisted_messages: Vec<Message>,
    /// Committed, durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads now safe to answer (after applying `committed_entries`).
    pub read_states: Vec<ReadState>,
    /// Local read requests that were dropped (leadership lost): the host fails or retries them.
    pub dropped_reads: Vec<u64>,
}

impl Ready {
    /// The point to report to `on_persisted` once this ready is durable: its last entry, or
    /// the snapshot it installs.
    pub fn persist_point(&self) -> Option<(LogIndex, Term)> {
        if let Some(entry) = self.entries.last() {
            return Some((entry.index, entry.term));
        }
        self.snapshot
            .as_ref()
            .map(|install| (install.meta.index, install.meta.term))
    }

    /// Whether the host must sync before sending `persisted_messages`.
    pub fn must_sync(&self) -> bool {
        !self.entries.is_empty() || self.snapshot.is_some() || !self.snapshot_chunks.is_empty()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.snapshot_chunks.is_empty()
            && self.entries.is_empty()
            && self.compact.is_none()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.dropped_reads.is_empty()
    }
}

/// Applies a ready's log work to `store`: the snapshot install, the entries (truncating a
/// conflicting suffix first), the compaction and the hard state. It does not sync.
pub fn persist_ready<S: LogStore>(store: &mut S, ready: &Ready) -> io::Result<()> {
    if let Some(install) = &ready.snapshot {
        let meta = &install.meta;
        if !install.keep_log {
            // Drop everything from the snapshot's last index on; what stays before it is a
            // prefix we held already, so a crash in between leaves a consistent log.
            let floor = store.first_index().prev();
            let keep_through = meta.index.prev().max(floor);
            if keep_through < store.last_index() {
                store.truncate_after(keep_through)?;
            }
        }
        store.compact_through(meta.index, meta.term)?;
    }
    if let Some(first) = ready.entries.first() {
        if first.index <= store.last_index() {
            store.truncate_after(first.index.prev())?;
        }
        store.append(&ready.entries)?;
    }
    if let Some((index, term)) = ready.compact {
        if index >= store.first_index() {
            store.compact_through(index, term)?;
        }
    }
    if let Some(hard_state) = ready.hard_state {
        store.save_hard_state(hard_state)?;
    }
    Ok(())
}

impl fmt::Display for Ready {
    /// A multi-line, stable description for transcripts (etcd's `DescribeReady`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(hard_state) = &self.hard_state {
            let vote = hard_state.vote.map_or(0, |id| id.0);
            writeln!(f, "HardState term={} vote={}", hard_state.term, vote)?;
        }
        if let Some(install) = &self.snapshot {
            writeln!(
                f,
                "Snapshot {}/{} conf{} keep_log={}",
                install.meta.term, install.meta.index, install.meta.configuration, install.keep_log
            )?;
        }
        for chunk in &self.snapshot_chunks {
            writeln!(
                f,
                "SnapshotChunk {}/{} offset={} length={}",
                chunk.meta.term, chunk.meta.index, chunk.offset, chunk.length
            )?;
        }
        if !self.entries.is_empty() {
            writeln!(f, "Entries: {}", DisplayEntries(&self.entries))?;
        }
        if let Some((index, term)) = self.compact {
            writeln!(f, "Compact through {term}/{index}")?;
        }
        for message in &self.messages {
            writeln!(f, "Send: {message}")?;
        }
        for message in &self.persisted_messages {
            writeln!(f, "Send after persist: {message}")?;
        }
        if !self.committed_entries.is_empty() {
            writeln!(f, "Committed: {}", DisplayEntries(&self.committed_entries))?;
        }
        for read in &self.read_states {
            writeln!(f, "ReadState index={} context={}", read.index, read.context)?;
        }
        for context in &self.dropped_reads {
            writeln!(f, "DroppedRead context={context}")?;
        }
        Ok(())
    }
}

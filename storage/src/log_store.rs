//! The traits through which raft reads the log and the host writes it.
//!
//! Ownership: the host owns the log. Raft holds it (generic over [`LogRead`]) and only reads; the
//! host appends, syncs, truncates and compacts through [`LogStore`] when it processes raft's
//! output, then tells raft what became durable.
//!
//! Durability contract, for every implementation:
//! - `append` makes entries readable at once, and durable only after the next `sync` returns `Ok`.
//!   A crash before that leaves the log with some prefix (possibly empty) of the unsynced entries.
//! - `truncate_after`, `compact_through` and `save_hard_state` are durable when they return `Ok`.
//! - A failed write or sync is sticky: every later mutating call fails until the log is reopened,
//!   because after a failed fsync the page cache cannot be trusted.
//! - An `append` refused before it writes anything (no disk space for a new segment, a payload
//!   over the size limit) changes nothing and is not sticky: the caller may retry later. So do a
//!   `truncate_after` whose new file finds no space, and a `save_hard_state` or
//!   `compact_through` whose metadata write (not its sync) fails for want of space (`ENOSPC`):
//!   the old hard state and compaction point stay in force.

use std::io;

use crate::types::{Entry, HardState, LogIndex, Term};

/// Read access to the log: what raft needs and nothing more.
///
/// Errors are I/O errors on a read (mapping a closed segment, or finding it corrupt). They are
/// fatal for the node: raft hands them to the host, which stops.
pub trait LogRead {
    /// The index of the first entry the log holds. After `compact_through(i, _)` it is `i + 1`;
    /// for a log that was never compacted, 1.
    fn first_index(&self) -> LogIndex;

    /// The index of the last entry; `first_index() - 1` when the log holds no entries.
    fn last_index(&self) -> LogIndex;

    /// The term of the entry at `index`. For `index == first_index() - 1` this is the term of the
    /// compaction point (the snapshot's last entry), or `Term(0)` for index 0, so that raft can
    /// check a previous-entry term right at the boundary. `None` for any index outside
    /// `first_index() - 1 ..= last_index()`.
    fn term(&self, index: LogIndex) -> io::Result<Option<Term>>;

    /// Appends to `out` the entries with indexes in `low..high`, in order, stopping before the
    /// first entry that would take the payload bytes appended past `bytes_max`, but always
    /// appending at least one entry when the range is not empty (etcd's `limitSize`).
    /// Panics unless `first_index() <= low <= high <= last_index() + 1`.
    /// Payloads are borrowed from the log's maps where the implementation has them: no copy.
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> io::Result<()>;
}

/// Write access to the log, used by the host only (raft performs no I/O).
pub trait LogStore: LogRead {
    /// Appends `entries`, which must be contiguous and start at `last_index() + 1` (panics
    /// otherwise: a gap would be a programmer error). Readable on return; durable after `sync`.
    fn append(&mut self, entries: &[Entry]) -> io::Result<()>;

    /// Makes every appended entry durable with one flush (msync/fdatasync) for the whole batch.
    fn sync(&mut self) -> io::Result<()>;

    /// The last index known to be durable: every entry up to it survives a crash.
    fn durable_index(&self) -> LogIndex;

    /// Removes every entry after `index` (a new leader overwrote them). Durable on return.
    /// Panics if `index < first_index() - 1`: compacted entries are committed and never truncated.
    fn truncate_after(&mut self, index: LogIndex) -> io::Result<()>;

    /// Drops the entries up to and including `index`, whose term is `term`, because a snapshot
    /// covers them. `index` may lie beyond `last_index()` (a snapshot installed from the leader):
    /// the log is then empty and continues at `index + 1`. Durable on return.
    fn compact_through(&mut self, index: LogIndex, term: Term) -> io::Result<()>;

    /// The hard state last saved (term 0 and no vote for a new log).
    fn hard_state(&self) -> HardState;

    /// Saves `hard_state` atomically: after a crash either the old or the new one is read back,
    /// never a mix. Durable on return.
    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()>;
}

//! Raft's view of the log: the host's store (entries already handed out in a ready) followed by
//! the entries raft produced or received since the last ready (the unstable tail), plus the
//! commit, applied and persisted indexes.
//!
//! ```text
//!   store.first_index()          unstable_offset            last_index()
//!        |   store (host's log)       |   unstable (not yet handed out)  |
//!        [............................)[..................................]
//!   applied <= committed, applied <= persisted, committed <= last_index()
//! ```
//!
//! The host contract checked here: once a ready has handed out entries, the host appends them
//! to the store before calling raft again, so `store.last_index()` equals `handed_last`.

use std::cell::RefCell;
use std::io;

use atoll_storage::LogRead;

use crate::{Entry, LogIndex, Term};

/// The log as raft sees it.
pub struct RaftLog<L: LogRead> {
    store: L,
    /// Entries not yet handed out. Invariant: contiguous, and `unstable[0].index ==
    /// unstable_offset` when non-empty.
    unstable: Vec<Entry>,
    /// The index of the first unstable entry: the store's entries from here on are shadowed
    /// (a conflicting suffix the host truncates when it gets them).
    /// Invariant: `store.first_index() <= unstable_offset <= store.last_index() + 1`.
    unstable_offset: LogIndex,
    /// Invariant: never decreases; `committed <= last_index()`.
    committed: LogIndex,
    /// The last entry handed out for applying. Invariant: `applied <= committed`.
    applied: LogIndex,
    /// The last entry known durable (host's `on_persisted`), with the log's term there.
    /// Invariant: `persisted < unstable_offset`.
    persisted: LogIndex,
    /// What `store.last_index()` must be at the next call (the host contract).
    handed_last: LogIndex,
    /// The first storage read error; sticky, surfaced by the node's next public call.
    storage_error: RefCell<Option<io::Error>>,
    /// A snapshot installed in raft's view but not yet handed to the host: (index, term,
    /// whether the store keeps its suffix). Until then it acts as the compaction point.
    snapshot_pending: Option<(LogIndex, Term, bool)>,
}

impl<L: LogRead> RaftLog<L> {
    /// Wraps a store reopened after a restart: everything it holds is durable.
    pub(crate) fn new(store: L, applied: LogIndex) -> RaftLog<L> {
        let last = store.last_index();
        let first = store.first_index();
        let compacted = first.prev();
        assert!(
            applied <= last,
            "applied {applied} beyond the log's last index {last}"
        );
        // Entries at or below the compaction point and up to the host's applied index are
        // committed; nothing else is known to be.
        let committed = applied.max(compacted);
        RaftLog {
            store,
            unstable: Vec::new(),
            unstable_offset: last.next(),
            committed,
            applied: applied.max(compacted),
            persisted: last,
            handed_last: last,
            storage_error: RefCell::new(None),
            snapshot_pending: None,
        }
    }

    pub(crate) fn store(&self) -> &L {
        &self.store
    }

    pub(crate) fn into_store(self) -> L {
        self.store
    }

    pub(crate) fn store_mut(&mut self) -> &mut L {
        &mut self.store
    }

    /// Panics if the host did not apply the last ready's entries or snapshot to the store.
    pub(crate) fn check_host_contract(&self) {
        assert_eq!(
            self.store.last_index(),
            self.handed_last,
            "host contract: append the ready's entries (and install its snapshot) to the log \
             before calling raft again"
        );
    }

    pub(crate) fn take_storage_error(&self) -> Option<io::Error> {
        self.storage_error.borrow_mut().take()
    }

    fn record(&self, error: io::Error) {
        let mut slot = self.storage_error.borrow_mut();
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    pub fn first_index(&self) -> LogIndex {
        match self.snapshot_pending {
            Some((index, _, _)) => index.next(),
            None => self.store.first_index(),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        match self.unstable.last() {
            Some(entry) => entry.index,
            None => self.unstable_offset.prev(),
        }
    }

    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term at `index`, or `None` outside `first_index() - 1 ..= last_index()` (or after a
    /// storage error, which is recorded).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index >= self.unstable_offset {
            let position = (index.0 - self.unstable_offset.0) as usize;
            return self.unstable.get(position).map(|entry| entry.term);
        }
        if let Some((snapshot_index, snapshot_term, _)) = self.snapshot_pending {
            if index == snapshot_index {
                return Some(snapshot_term);
            }
            if index < snapshot_index {
                return None;
            }
        }
        match self.store.term(index) {
            Ok(term) => term,
            Err(error) => {
                self.record(error);
                None
            }
        }
    }

    pub fn last_term(&self) -> Term {
        self.term(self.last_index())
            .expect("the last index always has a term (entry or compaction point)")
    }

    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Section 5.4.1: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// Entries `low..high`, at most `bytes_max` payload bytes (at least one entry). `None` if
    /// `low` is compacted (the caller sends a snapshot) or a read failed.
    pub fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: u64) -> Option<Vec<Entry>> {
        let mut out = Vec::new();
        if self.entries_into(low, high, bytes_max, &mut out) {
            Some(out)
        } else {
            None
        }
    }

    /// Like [`RaftLog::entries`], appending to `out`; false if compacted or a read failed.
    pub fn entries_into(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> bool {
        assert!(low <= high);
        assert!(
            high <= self.last_index().next(),
            "entries beyond the last index"
        );
        if low < self.first_index() {
            return false;
        }
        let mut bytes = 0u64;
        let start = out.len();
        if low < self.unstable_offset {
            let stored_high = high.min(self.unstable_offset);
            if let Err(error) = self.store.entries(low, stored_high, bytes_max, out) {
                self.record(error);
                return false;
            }
            bytes = out[start..].iter().map(|e| e.payload.len() as u64).sum();
            let fetched_to = LogIndex(low.0 + (out.len() - start) as u64);
            if fetched_to < stored_high {
                return true; // Stopped by the byte limit.
            }
        }
        let low = low.max(self.unstable_offset);
        for index in low.0..high.0 {
            let entry = &self.unstable[(index - self.unstable_offset.0) as usize];
            let length = entry.payload.len() as u64;
            if out.len() > start && bytes + length > bytes_max {
                break;
            }
            bytes += length;
            out.push(entry.clone());
        }
        true
    }

    /// Appends entries a leader created. Panics unless they continue the log.
    pub fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        assert_eq!(
            first.index,
            self.last_index().next(),
            "appends must be contiguous"
        );
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index.next(),
                "entries must be contiguous"
            );
            assert!(
                pair[1].term >= pair[0].term,
                "terms never decrease along the log"
            );
        }
        assert!(
            first.term >= self.last_term(),
            "terms never decrease along the log"
        );
        if self.unstable.is_empty() {
            self.unstable = entries; // Moved, not copied: the common case of one batch per ready.
        } else {
            self.unstable.extend(entries);
        }
    }

    /// Section 5.3, the receiver of an append: if our log holds (`prev_index`, `prev_term`),
    /// append `entries` after it, truncating any conflicting suffix, advance the commit index
    /// to `min(leader_commit, last new index)`, and return the last new index and the index
    /// of the first entry actually written (none if all were present).
    pub fn maybe_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        leader_commit: LogIndex,
        mut entries: Vec<Entry>,
    ) -> Option<(LogIndex, Option<LogIndex>)> {
        if !self.matches(prev_index, prev_term) {
            return None;
        }
        let last_new = LogIndex(prev_index.0 + entries.len() as u64);
        // The first entry that is new or conflicts with ours; everything before matches.
        let conflict = entries
            .iter()
            .position(|entry| !self.matches(entry.index, entry.term));
        let mut written = None;
        if let Some(position) = conflict {
            let at = entries[position].index;
            written = Some(at);
            assert!(
                at > self.committed,
                "conflicting entry {at} at or below the commit index {}",
                self.committed
            );
            entries.drain(..position);
            self.truncate_and_append(entries);
        }
        self.commit_to(leader_commit.min(last_new));
        Some((last_new, written))
    }

    fn truncate_and_append(&mut self, entries: Vec<Entry>) {
        let at = entries[0].index;
        assert!(at > self.committed, "never truncate a committed entry");
        assert!(at <= self.last_index().next(), "appends must be contiguous");
        if at >= self.unstable_offset {
            // Within or right after the unstable tail.
            let keep = (at.0 - self.unstable_offset.0) as usize;
            self.unstable.truncate(keep);
        } else {
            // Shadow the store's suffix from `at`: the host truncates it with this ready.
            self.unstable.clear();
            self.unstable_offset = at;
            if self.persisted >= at {
                self.persisted = at.prev();
            }
        }
        if self.unstable.is_empty() {
            self.unstable = entries;
        } else {
            self.unstable.extend(entries);
        }
    }

    /// Advances the commit index; never moves it backwards.
    pub fn commit_to(&mut self, index: LogIndex) {
        if index <= self.committed {
            return;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond the last index {}",
            self.last_index()
        );
        self.committed = index;
    }

    /// The largest index at or below `index` whose term is at most `term`, and that term
    /// (fast backtracking). Falls back to the compaction point.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut index = index.min(self.last_index());
        let floor = self.first_index().prev();
        loop {
            match self.term(index) {
                Some(found) if found <= term => return (index, found),
                Some(_) if index > floor => index = index.prev(),
                _ => return (index.min(floor), self.term(floor).unwrap_or(Term(0))),
            }
        }
    }

    /// Whether entries wait to be handed out.
    pub fn has_unstable(&self) -> bool {
        !self.unstable.is_empty()
    }

    /// Hands the unstable entries out; the host appends them before the next call.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let entries = std::mem::take(&mut self.unstable);
        if let Some(last) = entries.last() {
            self.handed_last = last.index;
            self.unstable_offset = last.index.next();
        }
        entries
    }

    /// The host reports `index` (with `term`) durable. Stale reports (the entry was since
    /// overwritten) are ignored: terms at an index only grow, so the term pins the entry.
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) -> bool {
        if index <= self.persisted || index >= self.unstable_offset {
            return false;
        }
        if self.term(index) != Some(term) {
            return false;
        }
        self.persisted = index;
        true
    }

    /// Whether committed and durable entries wait to be applied.
    pub fn has_next_committed(&self) -> bool {
        self.applied < self.committed.min(self.persisted)
    }

    /// Hands out the next committed, durable entries (at most `bytes_max`, at least one).
    pub fn next_committed(&mut self, bytes_max: u64) -> Vec<Entry> {
        if !self.has_next_committed() {
            return Vec::new();
        }
        let high = self.committed.min(self.persisted).next();
        let Some(entries) = self.entries(self.applied.next(), high, bytes_max) else {
            return Vec::new();
        };
        if let Some(last) = entries.last() {
            assert_eq!(last.index.0, self.applied.0 + entries.len() as u64);
            self.applied = last.index;
        }
        entries
    }

    /// Installs a snapshot at (`index`, `term`). The log keeps its suffix after `index` if the
    /// host's store already holds that entry (log matching makes the suffix the leader's too);
    /// otherwise it restarts empty after `index`, keeping only unstable entries past a matching
    /// `index`. Returns whether the store's suffix stays (the host then only compacts).
    pub fn restore(&mut self, index: LogIndex, term: Term) -> bool {
        assert!(
            index > self.committed,
            "restoring a snapshot older than the commit index"
        );
        let keep = index < self.unstable_offset && self.matches(index, term);
        if !keep {
            let kept: Vec<Entry> = if self.matches(index, term) {
                self.unstable
                    .iter()
                    .filter(|entry| entry.index > index)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            self.unstable = kept;
            self.unstable_offset = index.next();
            self.persisted = index;
        } else {
            self.persisted = self.persisted.max(index);
        }
        self.snapshot_pending = Some((index, term, keep));
        self.committed = index;
        self.applied = index;
        keep
    }

    /// Hands the pending snapshot install out; the host installs it before the next call.
    pub fn take_snapshot_pending(&mut self) -> Option<(LogIndex, Term, bool)> {
        let pending = self.snapshot_pending.take()?;
        if !pending.2 {
            self.handed_last = pending.0;
        }
        Some(pending)
    }
}

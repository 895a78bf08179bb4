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
    /// Wraps a store reopened after a restart: everything it holds is durable, everything
    /// through `committed` (the snapshot's index) is known committed.
    pub(crate) fn new(store: L, applied: LogIndex, committed: LogIndex) -> RaftLog<L> {
        let last = store.last_index();
        let first = store.first_index();
        let compacted = first.prev();
        assert!(
            applied <= last && committed <= last,
            "applied {applied} or committed {committed} beyond the log's last index {last}"
        );
        // Entries at or below the compaction point, the snapshot and the host's applied index
        // are committed; nothing else is known to be.
        let committed = applied.max(compacted).max(committed);
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

    /// The first read error (kind and text), kept: it is sticky.
    pub(crate) fn storage_error(&self) -> Option<(io::ErrorKind, String)> {
        self.storage_error
            .borrow()
            .as_ref()
            .map(|error| (error.kind(), error.to_string()))
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
            // `index` may come from a message: on a 32-bit machine a plain `as usize` would wrap
            // an index 2^32 past the tail onto an entry of the tail.
            return usize::try_from(index.0 - self.unstable_offset.0)
                .ok()
                .and_then(|position| self.unstable.get(position))
                .map(|entry| entry.term);
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
        match self.term(self.last_index()) {
            Some(term) => term,
            None => {
                // Only a failed read can hide the last term; the node is stopping (its readies
                // are empty from now on), so any answer will do.
                assert!(
                    self.storage_error.borrow().is_some(),
                    "the last index always has a term (entry or compaction point)"
                );
                Term(0)
            }
        }
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

    /// Takes back `entries`, the last ones handed out, which the host could not append (a full
    /// disk): they are unstable again, served from memory and handed out in the next ready.
    /// False (nothing changes) unless they are exactly the last handed out and the store holds
    /// every entry before them (it may still hold a suffix they overwrite: the host could not
    /// cut it either).
    pub fn give_back(&mut self, mut entries: Vec<Entry>) -> bool {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return true;
        };
        let first = first.index;
        if last.index != self.handed_last
            || last.index.next() != self.unstable_offset
            || self.store.last_index() < first.prev()
        {
            return false;
        }
        entries.append(&mut self.unstable);
        self.unstable = entries;
        self.unstable_offset = first;
        // The store is as the host left it: it may still end in the suffix they overwrite.
        self.handed_last = self.store.last_index();
        self.persisted = self.persisted.min(first.prev());
        true
    }

    /// The host could not apply the entry at `index` (a full disk), nor the later ones it was
    /// handed: they are handed out again. False (nothing changes) unless `index` was handed
    /// out and is not compacted.
    pub fn unapply_from(&mut self, index: LogIndex) -> bool {
        if index > self.applied || index < self.first_index() || index.0 == 0 {
            return false;
        }
        self.applied = index.prev();
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryKind, Payload};
    use atoll_storage::{LogStore, MemLog};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            kind: EntryKind::Command,
            payload: Payload::from_vec(vec![index as u8; 3]),
        }
    }

    /// A log whose store holds entries 1..=`last` with the given terms, all durable.
    fn log_with(terms: &[u64]) -> RaftLog<MemLog> {
        let mut store = MemLog::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(position, term)| entry(position as u64 + 1, *term))
            .collect();
        store.append(&entries).unwrap();
        store.sync().unwrap();
        RaftLog::new(store, LogIndex(0), LogIndex(0))
    }

    /// Hands the unstable entries to the store, as a host does between calls.
    fn persist(log: &mut RaftLog<MemLog>) -> Vec<Entry> {
        let entries = log.take_unstable();
        if let Some(first) = entries.first() {
            let store = log.store_mut();
            if first.index <= store.last_index() {
                store.truncate_after(first.index.prev()).unwrap();
            }
            store.append(&entries).unwrap();
        }
        log.check_host_contract();
        entries
    }

    #[test]
    fn test_conflicting_append_shadows_the_store_until_handed_out() {
        // The store holds 1..=4 (terms 1,1,2,2); a leader of term 3 overwrites from 3.
        let mut log = log_with(&[1, 1, 2, 2]);
        let (last, written) = log
            .maybe_append(LogIndex(2), Term(1), LogIndex(2), vec![entry(3, 3)])
            .unwrap();
        assert_eq!((last, written), (LogIndex(3), Some(LogIndex(3))));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        assert_eq!(log.term(LogIndex(4)), None, "the old suffix is shadowed");
        assert_eq!(
            log.persisted(),
            LogIndex(2),
            "the overwritten entries are not durable"
        );
        assert_eq!(log.committed(), LogIndex(2));
        let handed = persist(&mut log);
        assert_eq!(handed, vec![entry(3, 3)]);
        assert_eq!(log.store().last_index(), LogIndex(3));
        // Already-present entries are not rewritten.
        let (_, written) = log
            .maybe_append(
                LogIndex(1),
                Term(1),
                LogIndex(2),
                vec![entry(2, 1), entry(3, 3)],
            )
            .unwrap();
        assert_eq!(written, None);
        assert!(!log.has_unstable());
    }

    #[test]
    #[should_panic(expected = "at or below the commit index")]
    fn test_overwriting_a_committed_entry_panics() {
        let mut log = log_with(&[1, 1, 2]);
        log.commit_to(LogIndex(3));
        let _ = log.maybe_append(LogIndex(2), Term(1), LogIndex(3), vec![entry(3, 3)]);
    }

    #[test]
    fn test_index_2_pow_32_past_the_unstable_tail_has_no_term() {
        // Regression (armv7): `term` cast the distance into the unstable tail with `as usize`,
        // so on a 32-bit machine an index 2^32 past the tail wrapped onto an entry of the tail,
        // and an append whose previous entry was that far out was accepted as matching.
        let mut log = log_with(&[1, 1, 2]);
        log.maybe_append(LogIndex(3), Term(2), LogIndex(3), vec![entry(4, 3)])
            .unwrap();
        assert_eq!(
            log.term(LogIndex(4)),
            Some(Term(3)),
            "4 is in the unstable tail"
        );
        let far = LogIndex(4 + (1 << 32));
        assert_eq!(log.term(far), None);
        assert!(log
            .maybe_append(far, Term(3), LogIndex(3), vec![entry(far.0 + 1, 3)])
            .is_none());
        assert_eq!(log.last_index(), LogIndex(4));
    }

    #[test]
    fn test_mismatched_previous_entry_is_refused() {
        let mut log = log_with(&[1, 1, 2]);
        assert!(log
            .maybe_append(LogIndex(3), Term(1), LogIndex(3), vec![entry(4, 3)])
            .is_none());
        assert!(log
            .maybe_append(LogIndex(7), Term(2), LogIndex(3), vec![entry(8, 3)])
            .is_none());
        assert_eq!(log.last_index(), LogIndex(3));
    }

    #[test]
    fn test_find_conflict_by_term_skips_whole_terms() {
        let log = log_with(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(
            log.find_conflict_by_term(LogIndex(7), Term(3)),
            (LogIndex(5), Term(2))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(7), Term(4)),
            (LogIndex(7), Term(4))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(4), Term(1)),
            (LogIndex(2), Term(1))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(9), Term(0)),
            (LogIndex(0), Term(0))
        );
    }

    #[test]
    fn test_committed_entries_wait_for_local_durability() {
        let mut log = log_with(&[1]);
        log.append(vec![entry(2, 1), entry(3, 1)]);
        persist(&mut log);
        log.commit_to(LogIndex(3));
        // Committed through 3, durable through 1: only 1 may be applied.
        assert_eq!(log.next_committed(u64::MAX), vec![entry(1, 1)]);
        assert!(!log.has_next_committed());
        // A stale report (wrong term) is ignored; the right one releases both.
        assert!(!log.persisted_to(LogIndex(3), Term(2)));
        assert!(log.persisted_to(LogIndex(3), Term(1)));
        assert_eq!(
            log.next_committed(3),
            vec![entry(2, 1)],
            "bytes_max bounds a batch"
        );
        assert_eq!(log.next_committed(u64::MAX), vec![entry(3, 1)]);
        assert_eq!(log.applied(), LogIndex(3));
    }

    #[test]
    fn test_restore_keeps_a_matching_suffix_or_discards_the_log() {
        let mut log = log_with(&[1, 1, 2, 2]);
        assert!(log.restore(LogIndex(3), Term(2)));
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(
            log.take_snapshot_pending(),
            Some((LogIndex(3), Term(2), true))
        );
        let mut log = log_with(&[1, 1, 2, 2]);
        assert!(!log.restore(LogIndex(6), Term(5)));
        assert_eq!(log.last_index(), LogIndex(6));
        assert_eq!(log.term(LogIndex(6)), Some(Term(5)));
        assert_eq!(log.term(LogIndex(4)), None);
        assert_eq!((log.committed(), log.applied()), (LogIndex(6), LogIndex(6)));
        assert_eq!(
            log.take_snapshot_pending(),
            Some((LogIndex(6), Term(5), false))
        );
        let store = log.store_mut();
        store
            .truncate_after(LogIndex(5).min(store.last_index()))
            .unwrap();
        store.compact_through(LogIndex(6), Term(5)).unwrap();
        log.check_host_contract();
    }
}

//! An in-memory [`LogStore`] for tests and the raft simulator.
//!
//! It keeps what was written apart from what is durable, so a test can cut the power at any sync
//! point with [`MemLog::crash`] and see exactly what a real disk would have kept. Because
//! truncation, compaction and the hard state are durable on return (the [`LogStore`] contract),
//! the durable entries are always a prefix of the written ones, and one count describes them.

use std::collections::VecDeque;
use std::io;

use crate::log_store::{LogRead, LogStore};
use crate::types::{Entry, HardState, LogIndex, Term};

/// The in-memory log.
#[derive(Debug, Default)]
pub struct MemLog {
    /// Entries from `first_index` on, contiguous.
    entries: VecDeque<Entry>,
    /// Invariant: `entries.is_empty() || entries[0].index == first_index`.
    first_index: LogIndex,
    /// The term of the entry at `first_index - 1` (the compaction point), `Term(0)` if none.
    compacted_term: Term,
    /// How many of `entries` (from the front) are durable.
    /// Invariant: `durable_count <= entries.len()`.
    durable_count: usize,
    hard_state: HardState,
    /// Mutating calls left before an injected I/O failure; `None` for never.
    failure_countdown: Option<u64>,
    /// Set by the first failure; sticky until [`MemLog::crash`] (the analogue of a reopen).
    failed: bool,
}

impl MemLog {
    /// A new, empty log starting at index 1 with term 0 and no vote.
    pub fn new() -> MemLog {
        MemLog {
            first_index: LogIndex(1),
            ..MemLog::default()
        }
    }

    /// Simulates a power cut followed by a restart: every entry appended since the last sync is
    /// lost, and an injected failure is cleared (a reopened log starts afresh).
    pub fn crash(&mut self) {
        self.crash_keeping(0);
    }

    /// Like [`MemLog::crash`], but the first `unsynced_kept` unsynced entries happened to reach
    /// the disk before the cut (a real disk may keep any prefix of unsynced writes).
    pub fn crash_keeping(&mut self, unsynced_kept: usize) {
        let kept = self
            .durable_count
            .saturating_add(unsynced_kept)
            .min(self.entries.len());
        self.entries.truncate(kept);
        self.durable_count = kept;
        self.failed = false;
        self.failure_countdown = None;
    }

    /// Makes the `count`-th mutating call from now (0 = the next one) fail with an I/O error,
    /// and every call after it, until [`MemLog::crash`].
    pub fn fail_after(&mut self, count: u64) {
        self.failure_countdown = Some(count);
    }

    /// The number of entries appended but not yet synced.
    pub fn unsynced_count(&self) -> usize {
        self.entries.len() - self.durable_count
    }

    fn check_failure(&mut self) -> io::Result<()> {
        if !self.failed {
            match self.failure_countdown {
                Some(0) => self.failed = true,
                Some(left) => self.failure_countdown = Some(left - 1),
                None => {}
            }
        }
        if self.failed {
            return Err(io::Error::other(
                "injected I/O failure (sticky until reopen)",
            ));
        }
        Ok(())
    }

    fn position(&self, index: LogIndex) -> usize {
        usize::try_from(index.0 - self.first_index.0).expect("in-memory log fits in memory")
    }
}

impl LogRead for MemLog {
    fn first_index(&self) -> LogIndex {
        self.first_index
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.entries.len() as u64 - 1)
    }

    fn term(&self, index: LogIndex) -> io::Result<Option<Term>> {
        if index.0 + 1 == self.first_index.0 {
            return Ok(Some(self.compacted_term));
        }
        if index < self.first_index || index > self.last_index() {
            return Ok(None);
        }
        let entry = &self.entries[self.position(index)];
        assert_eq!(entry.index, index);
        Ok(Some(entry.term))
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> io::Result<()> {
        assert!(
            self.first_index <= low,
            "entries({low}..{high}) below the first index"
        );
        assert!(low <= high);
        assert!(
            high <= self.last_index().next(),
            "entries({low}..{high}) beyond the last index"
        );
        let mut bytes: u64 = 0;
        for (taken, position) in (self.position(low)..self.position(high)).enumerate() {
            let entry = &self.entries[position];
            // The first entry always; the others while the total stays within the budget (an
            // empty first payload must not let an oversized second one through).
            if taken > 0 && bytes + entry.payload.len() as u64 > bytes_max {
                break;
            }
            bytes += entry.payload.len() as u64;
            out.push(entry.clone());
        }
        Ok(())
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.check_failure()?;
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index().next(),
                "appended entries must be contiguous"
            );
            self.entries.push_back(entry.clone());
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.check_failure()?;
        self.durable_count = self.entries.len();
        Ok(())
    }

    fn durable_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.durable_count as u64 - 1)
    }

    fn truncate_after(&mut self, index: LogIndex) -> io::Result<()> {
        assert!(
            index.0 + 1 >= self.first_index.0,
            "truncating compacted entries"
        );
        self.check_failure()?;
        if index >= self.last_index() {
            return Ok(());
        }
        let kept = self.position(index.next());
        self.entries.truncate(kept);
        self.durable_count = self.durable_count.min(kept);
        Ok(())
    }

    fn compact_through(&mut self, index: LogIndex, term: Term) -> io::Result<()> {
        self.check_failure()?;
        if index < self.first_index {
            return Ok(());
        }
        if index > self.last_index() {
            self.entries.clear();
            self.durable_count = 0;
        } else {
            if let Some(stored) = self.term(index)? {
                assert_eq!(stored, term, "compaction point term disagrees with the log");
            }
            let dropped = self.position(index.next());
            self.entries.drain(..dropped);
            self.durable_count = self.durable_count.saturating_sub(dropped);
        }
        self.first_index = index.next();
        self.compacted_term = term;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.check_failure()?;
        assert!(
            hard_state.term >= self.hard_state.term,
            "the term never goes backwards"
        );
        self.hard_state = hard_state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryKind, Payload};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            kind: EntryKind::Command,
            payload: Payload::from_vec(index.to_le_bytes().to_vec()),
        }
    }

    #[test]
    fn test_crash_keeps_only_synced_entries() {
        // Three entries synced, two more appended: a crash keeps exactly the three.
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        log.sync().unwrap();
        log.append(&[entry(4, 2), entry(5, 2)]).unwrap();
        assert_eq!(log.durable_index(), LogIndex(3));
        log.crash();
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)).unwrap(), Some(Term(1)));
        assert_eq!(log.term(LogIndex(4)).unwrap(), None);
    }

    #[test]
    fn test_injected_failure_is_sticky_until_crash() {
        let mut log = MemLog::new();
        log.fail_after(1);
        log.append(&[entry(1, 1)]).unwrap();
        assert!(log.sync().is_err());
        assert!(log.append(&[entry(2, 1)]).is_err());
        log.crash();
        assert_eq!(log.last_index(), LogIndex(0));
        log.append(&[entry(1, 1)]).unwrap();
        log.sync().unwrap();
    }

    #[test]
    fn test_compaction_beyond_last_index_empties_the_log() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        log.compact_through(LogIndex(10), Term(3)).unwrap();
        assert_eq!(log.first_index(), LogIndex(11));
        assert_eq!(log.last_index(), LogIndex(10));
        assert_eq!(log.term(LogIndex(10)).unwrap(), Some(Term(3)));
        assert_eq!(log.term(LogIndex(2)).unwrap(), None);
        log.append(&[entry(11, 3)]).unwrap();
    }
}

//! The [`LogStore`] conformance suite: the tests every log implementation must pass, written once
//! and run against [`SegmentLog`] and [`MemLog`] (and any other implementation, through a
//! [`Harness`]). Enabled by the `testing` feature, so that raft and the host can reuse it.
//!
//! The suite only asserts what the trait promises. In particular, after a reopen every entry
//! that was durable is there, and the log is a prefix of what was written: an implementation
//! may keep unsynced entries ([`SegmentLog`] does, they were in the page cache) or lose them
//! ([`MemLog`] does, it simulates a power cut).

use std::path::PathBuf;

use crate::log_store::{LogRead, LogStore};
use crate::mem_log::MemLog;
use crate::segment_log::{Options, SegmentLog};
use crate::types::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};

/// How the suite creates, reopens and breaks logs of one implementation.
pub trait Harness {
    /// The implementation under test.
    type Log: LogStore;

    /// A new, empty log.
    fn create(&mut self) -> Self::Log;

    /// Closes `log` and opens it again, as after a restart: durable state survives, unsynced
    /// entries may or may not.
    fn reopen(&mut self, log: Self::Log) -> Self::Log;

    /// Makes the `count`-th mutating call on `log` from now fail, as a failed write would.
    fn fail_after(&mut self, log: &mut Self::Log, count: u64);
}

/// One test of the suite: its name and its function.
type SuiteTest<H> = (&'static str, fn(&mut H));

/// Runs every test of the suite, in order, panicking at the first failure (with its name).
pub fn run_all<H: Harness>(harness: &mut H) {
    let tests: &[SuiteTest<H>] = &[
        ("empty_log", test_empty_log),
        ("append_read_round_trip", test_append_read_round_trip),
        ("entries_bytes_max", test_entries_bytes_max),
        ("sync_and_durable_index", test_sync_and_durable_index),
        ("truncate_after", test_truncate_after),
        ("truncate_everything", test_truncate_everything),
        ("compact_within_log", test_compact_within_log),
        ("compact_beyond_last_index", test_compact_beyond_last_index),
        ("hard_state", test_hard_state),
        ("failure_is_sticky", test_failure_is_sticky),
        (
            "payloads_outlive_truncation",
            test_payloads_outlive_truncation,
        ),
        ("long_history", test_long_history),
    ];
    for (name, test) in tests {
        log::info!("conformance: {name}");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(harness)));
        if let Err(panic) = result {
            eprintln!("conformance test {name} failed");
            std::panic::resume_unwind(panic);
        }
    }
}

/// A deterministic entry: payload of `payload_bytes` derived from index and term (never all
/// zeros, so a lost write cannot pass for a valid one).
pub fn entry(index: u64, term: u64, payload_bytes: usize) -> Entry {
    let payload: Vec<u8> = (0..payload_bytes)
        .map(|k| (index as usize * 31 + term as usize * 7 + k) as u8 | 1)
        .collect();
    let kind = match index % 5 {
        0 => EntryKind::Noop,
        3 => EntryKind::Configuration,
        _ => EntryKind::Command,
    };
    Entry {
        index: LogIndex(index),
        term: Term(term),
        kind,
        payload: Payload::from_vec(payload),
    }
}

/// All entries `low..high` of `log`.
pub fn read_all(log: &impl LogRead, low: u64, high: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    log.entries(LogIndex(low), LogIndex(high), u64::MAX, &mut out)
        .expect("reading entries");
    out
}

/// Checks that `log` holds a prefix of `written` (entries from `first` on) that includes every
/// entry up to `durable`.
pub fn assert_prefix(log: &impl LogRead, first: u64, written: &[Entry], durable: u64) {
    assert_eq!(log.first_index(), LogIndex(first));
    let last = log.last_index().0;
    assert!(
        last >= durable,
        "durable entry lost: last {last} < {durable}"
    );
    let written_last = written.last().map_or(first - 1, |entry| entry.index.0);
    assert!(
        last <= written_last,
        "entries invented: {last} > {written_last}"
    );
    let read = read_all(log, first, last + 1);
    assert_eq!(read.len() as u64, last + 1 - first);
    for entry in &read {
        let expected = &written[(entry.index.0 - written[0].index.0) as usize];
        assert_eq!(entry, expected);
        assert_eq!(log.term(entry.index).unwrap(), Some(entry.term));
    }
}

fn test_empty_log<H: Harness>(harness: &mut H) {
    // A new log is empty, starts at 1, knows term 0 for index 0 and nothing else.
    let log = harness.create();
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.last_index(), LogIndex(0));
    assert_eq!(log.durable_index(), LogIndex(0));
    assert_eq!(log.term(LogIndex(0)).unwrap(), Some(Term(0)));
    assert_eq!(log.term(LogIndex(1)).unwrap(), None);
    assert_eq!(log.hard_state(), HardState::default());
    assert!(read_all(&log, 1, 1).is_empty());
    let log = harness.reopen(log);
    assert_eq!(log.last_index(), LogIndex(0));
}

fn test_append_read_round_trip<H: Harness>(harness: &mut H) {
    // Entries of every kind and of sizes 0..=700 bytes read back equal, in whole and in parts,
    // before and after a reopen.
    let mut log = harness.create();
    let written: Vec<Entry> = (1..=60)
        .map(|index| entry(index, 1 + index / 20, (index as usize * 37) % 701))
        .collect();
    log.append(&written[..25]).unwrap();
    log.append(&written[25..]).unwrap();
    assert_eq!(log.last_index(), LogIndex(60));
    assert_eq!(read_all(&log, 1, 61), written);
    assert_eq!(read_all(&log, 17, 43), &written[16..42]);
    assert_eq!(log.term(LogIndex(60)).unwrap(), Some(Term(4)));
    assert_eq!(log.term(LogIndex(61)).unwrap(), None);
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_prefix(&log, 1, &written, 60);
    assert_eq!(log.last_index(), LogIndex(60));
}

fn test_entries_bytes_max<H: Harness>(harness: &mut H) {
    // The byte budget: entries are taken while they fit, the first one always.
    let mut log = harness.create();
    let written: Vec<Entry> = (1..=6).map(|index| entry(index, 1, 100)).collect();
    log.append(&written).unwrap();
    let mut out = Vec::new();
    log.entries(LogIndex(1), LogIndex(7), 250, &mut out)
        .unwrap();
    assert_eq!(out.len(), 2);
    out.clear();
    log.entries(LogIndex(2), LogIndex(7), 0, &mut out).unwrap();
    assert_eq!(out, &written[1..2]);
    out.clear();
    log.entries(LogIndex(1), LogIndex(7), 600, &mut out)
        .unwrap();
    assert_eq!(out.len(), 6);
    out.clear();
    log.entries(LogIndex(3), LogIndex(3), 0, &mut out).unwrap();
    assert!(out.is_empty());
    // Empty payloads count zero bytes, but a later entry still has to fit.
    log.append(&[entry(7, 1, 0), entry(8, 1, 50)]).unwrap();
    out.clear();
    log.entries(LogIndex(7), LogIndex(9), 10, &mut out).unwrap();
    assert_eq!(out.len(), 1);
}

fn test_sync_and_durable_index<H: Harness>(harness: &mut H) {
    // durable_index moves with sync only; a reopen keeps at least the synced entries.
    let mut log = harness.create();
    let written: Vec<Entry> = (1..=8).map(|index| entry(index, 2, 64)).collect();
    log.append(&written[..5]).unwrap();
    assert_eq!(log.durable_index(), LogIndex(0));
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(5));
    log.append(&written[5..]).unwrap();
    assert_eq!(log.durable_index(), LogIndex(5));
    let mut log = harness.reopen(log);
    assert_prefix(&log, 1, &written, 5);
    assert_eq!(log.durable_index(), log.last_index());
    // Appending continues after whatever survived.
    let next = log.last_index().0 + 1;
    log.append(&[entry(next, 3, 10)]).unwrap();
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_eq!(log.last_index(), LogIndex(next));
    assert_eq!(log.term(LogIndex(next)).unwrap(), Some(Term(3)));
}

fn test_truncate_after<H: Harness>(harness: &mut H) {
    // A new leader overwrites entries 7..=10: truncation is durable on return, new entries
    // follow, and truncating at or past the end changes nothing.
    let mut log = harness.create();
    let old: Vec<Entry> = (1..=10).map(|index| entry(index, 1, 200)).collect();
    log.append(&old).unwrap();
    log.sync().unwrap();
    log.truncate_after(LogIndex(10)).unwrap();
    log.truncate_after(LogIndex(12)).unwrap();
    assert_eq!(log.last_index(), LogIndex(10));
    log.truncate_after(LogIndex(6)).unwrap();
    assert_eq!(log.last_index(), LogIndex(6));
    assert!(log.durable_index() <= LogIndex(6));
    assert_eq!(log.term(LogIndex(7)).unwrap(), None);
    let log = harness.reopen(log);
    assert_eq!(log.last_index(), LogIndex(6));
    let mut log = log;
    let mut written = old[..6].to_vec();
    let new: Vec<Entry> = (7..=9).map(|index| entry(index, 2, 150)).collect();
    written.extend(new.iter().cloned());
    log.append(&new).unwrap();
    assert_eq!(read_all(&log, 1, 10), written);
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_prefix(&log, 1, &written, 9);
}

fn test_truncate_everything<H: Harness>(harness: &mut H) {
    // Truncating after index 0 empties the log, which then starts over at 1.
    let mut log = harness.create();
    log.append(&[entry(1, 1, 10), entry(2, 1, 10)]).unwrap();
    log.sync().unwrap();
    log.truncate_after(LogIndex(0)).unwrap();
    assert_eq!(log.last_index(), LogIndex(0));
    let mut log = harness.reopen(log);
    assert_eq!(log.last_index(), LogIndex(0));
    log.append(&[entry(1, 2, 10)]).unwrap();
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_eq!(read_all(&log, 1, 2), [entry(1, 2, 10)]);
}

fn test_compact_within_log<H: Harness>(harness: &mut H) {
    // Compacting through 4 drops 1..=4, keeps their last term as the boundary term, and both
    // survive a reopen.
    let mut log = harness.create();
    let written: Vec<Entry> = (1..=10).map(|index| entry(index, index, 300)).collect();
    log.append(&written).unwrap();
    log.sync().unwrap();
    log.compact_through(LogIndex(4), Term(4)).unwrap();
    assert_eq!(log.first_index(), LogIndex(5));
    assert_eq!(log.term(LogIndex(4)).unwrap(), Some(Term(4)));
    assert_eq!(log.term(LogIndex(3)).unwrap(), None);
    assert_eq!(read_all(&log, 5, 11), &written[4..]);
    // Compacting an already compacted point changes nothing.
    log.compact_through(LogIndex(2), Term(2)).unwrap();
    assert_eq!(log.first_index(), LogIndex(5));
    let mut log = harness.reopen(log);
    assert_eq!(log.first_index(), LogIndex(5));
    assert_eq!(log.term(LogIndex(4)).unwrap(), Some(Term(4)));
    assert_prefix(&log, 5, &written[4..], 10);
    // Truncating right at the compaction point empties the log; it continues at 5.
    log.truncate_after(LogIndex(4)).unwrap();
    assert_eq!(log.last_index(), LogIndex(4));
    log.append(&[entry(5, 9, 10)]).unwrap();
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_eq!(read_all(&log, 5, 6), [entry(5, 9, 10)]);
    assert_eq!(log.term(LogIndex(4)).unwrap(), Some(Term(4)));
}

fn test_compact_beyond_last_index<H: Harness>(harness: &mut H) {
    // A snapshot from the leader covers more than the log holds: the log empties and continues
    // right after the snapshot.
    let mut log = harness.create();
    log.append(&[entry(1, 1, 10), entry(2, 1, 10), entry(3, 1, 10)])
        .unwrap();
    log.sync().unwrap();
    log.compact_through(LogIndex(10), Term(5)).unwrap();
    assert_eq!(log.first_index(), LogIndex(11));
    assert_eq!(log.last_index(), LogIndex(10));
    assert_eq!(log.term(LogIndex(10)).unwrap(), Some(Term(5)));
    assert_eq!(log.term(LogIndex(3)).unwrap(), None);
    let mut log = harness.reopen(log);
    assert_eq!(log.first_index(), LogIndex(11));
    assert_eq!(log.last_index(), LogIndex(10));
    log.append(&[entry(11, 5, 10)]).unwrap();
    log.sync().unwrap();
    let log = harness.reopen(log);
    assert_eq!(log.last_index(), LogIndex(11));
    assert_eq!(read_all(&log, 11, 12), [entry(11, 5, 10)]);
    assert_eq!(log.term(LogIndex(10)).unwrap(), Some(Term(5)));
}

fn test_hard_state<H: Harness>(harness: &mut H) {
    // The last saved hard state is read back, after a reopen too.
    let mut log = harness.create();
    let first = HardState {
        term: Term(1),
        vote: Some(NodeId(2)),
    };
    let second = HardState {
        term: Term(3),
        vote: None,
    };
    log.save_hard_state(first).unwrap();
    assert_eq!(log.hard_state(), first);
    log.save_hard_state(second).unwrap();
    let mut log = harness.reopen(log);
    assert_eq!(log.hard_state(), second);
    let third = HardState {
        term: Term(3),
        vote: Some(NodeId(7)),
    };
    log.save_hard_state(third).unwrap();
    let log = harness.reopen(log);
    assert_eq!(log.hard_state(), third);
}

fn test_failure_is_sticky<H: Harness>(harness: &mut H) {
    // After one failed call every change fails, reads still work, and a reopen recovers every
    // durable entry.
    let mut log = harness.create();
    let written: Vec<Entry> = (1..=4).map(|index| entry(index, 1, 32)).collect();
    log.append(&written[..3]).unwrap();
    log.sync().unwrap();
    harness.fail_after(&mut log, 0);
    assert!(log.append(&written[3..]).is_err());
    assert!(log.sync().is_err());
    assert!(log.truncate_after(LogIndex(1)).is_err());
    assert!(log.compact_through(LogIndex(1), Term(1)).is_err());
    assert!(log
        .save_hard_state(HardState {
            term: Term(5),
            vote: None
        })
        .is_err());
    assert_eq!(read_all(&log, 1, 4), &written[..3]);
    let mut log = harness.reopen(log);
    assert_prefix(&log, 1, &written[..3], 3);
    assert_eq!(log.hard_state(), HardState::default());
    log.append(&written[3..]).unwrap();
    log.sync().unwrap();
}

fn test_payloads_outlive_truncation<H: Harness>(harness: &mut H) {
    // Payloads read before a truncation keep their bytes after it, even once new entries with
    // the same indexes are written.
    let mut log = harness.create();
    let old: Vec<Entry> = (1..=5).map(|index| entry(index, 1, 500)).collect();
    log.append(&old).unwrap();
    log.sync().unwrap();
    let held = read_all(&log, 1, 6);
    log.truncate_after(LogIndex(2)).unwrap();
    let new: Vec<Entry> = (3..=5).map(|index| entry(index, 2, 500)).collect();
    log.append(&new).unwrap();
    log.sync().unwrap();
    assert_eq!(held, old);
    assert_eq!(read_all(&log, 3, 6), new);
}

fn test_long_history<H: Harness>(harness: &mut H) {
    // Many appends, syncs, truncations, compactions and reopens in a fixed pattern; the log
    // always equals the model.
    let mut log = harness.create();
    let mut model: Vec<Entry> = Vec::new();
    let mut first = 1u64;
    let mut term = 1u64;
    for round in 0..30u64 {
        let next = first + model.len() as u64;
        let batch: Vec<Entry> = (next..next + 40)
            .map(|index| entry(index, term, ((index * 13 + round) % 900) as usize))
            .collect();
        log.append(&batch).unwrap();
        model.extend(batch);
        log.sync().unwrap();
        if round % 4 == 1 {
            let keep = model.len() - 15;
            log.truncate_after(LogIndex(first + keep as u64 - 1))
                .unwrap();
            model.truncate(keep);
            term += 1;
        }
        if round % 6 == 5 {
            let through = first + 50;
            let through_term = model[(through - first) as usize].term;
            log.compact_through(LogIndex(through), through_term)
                .unwrap();
            model.drain(..(through - first + 1) as usize);
            first = through + 1;
        }
        if round % 5 == 4 {
            log = harness.reopen(log);
        }
        assert_eq!(log.first_index(), LogIndex(first));
        assert_eq!(log.last_index(), LogIndex(first + model.len() as u64 - 1));
        assert_eq!(read_all(&log, first, first + model.len() as u64), model);
    }
}

/// Runs the suite on [`MemLog`]: a reopen is a power cut ([`MemLog::crash`]).
#[derive(Debug, Default)]
pub struct MemLogHarness;

impl Harness for MemLogHarness {
    type Log = MemLog;

    fn create(&mut self) -> MemLog {
        MemLog::new()
    }

    fn reopen(&mut self, mut log: MemLog) -> MemLog {
        log.crash();
        log
    }

    fn fail_after(&mut self, log: &mut MemLog, count: u64) {
        log.fail_after(count);
    }
}

/// Runs the suite on [`SegmentLog`], each log in a new directory under `base`.
#[derive(Debug)]
pub struct SegmentLogHarness {
    disk: std::sync::Arc<dyn crate::Disk>,
    base: PathBuf,
    options: Options,
    created: u64,
}

impl SegmentLogHarness {
    /// Logs go in fresh subdirectories of `base` (which the caller cleans up), opened with
    /// `options`; small segments make the suite cross many segment boundaries.
    pub fn new(base: impl Into<PathBuf>, options: Options) -> SegmentLogHarness {
        SegmentLogHarness::on(crate::StdDisk::shared(), base, options)
    }

    /// [`SegmentLogHarness::new`] on `disk` (a [`crate::SimDisk`]: the log reads and writes its
    /// segments through the file seam instead of maps of the files).
    pub fn on(
        disk: std::sync::Arc<dyn crate::Disk>,
        base: impl Into<PathBuf>,
        options: Options,
    ) -> SegmentLogHarness {
        SegmentLogHarness {
            disk,
            base: base.into(),
            options,
            created: 0,
        }
    }
}

impl Harness for SegmentLogHarness {
    type Log = SegmentLog;

    fn create(&mut self) -> SegmentLog {
        self.created += 1;
        let dir = self.base.join(format!("log-{}", self.created));
        SegmentLog::open_on(self.disk.clone(), dir, self.options.clone())
            .expect("opening a new log")
    }

    fn reopen(&mut self, log: SegmentLog) -> SegmentLog {
        let dir = log.dir().to_path_buf();
        drop(log);
        SegmentLog::open_on(self.disk.clone(), dir, self.options.clone())
            .expect("reopening the log")
    }

    fn fail_after(&mut self, log: &mut SegmentLog, count: u64) {
        log.fail_after(count);
    }
}

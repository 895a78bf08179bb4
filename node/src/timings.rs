//! Where a write's time goes in the node loop, and the loop's longest turns: measured always,
//! at the cost of a few clock reads per write, and written out on request (SIGUSR1 to
//! `atoll start`) to `DATA_DIR/timings`, then reset, so that each dump covers the time since
//! the previous one. `atoll-bench kv` reads it after each row to print the breakdown.
//!
//! File format (text, one line each, every duration in microseconds):
//!
//! ```text
//! # comment lines start with '#'
//! PHASE COUNT SUM MAX B0 B1 .. B31     per phase; Bi counts the samples below 2^i µs
//! turn_longest TOTAL EVENTS PERSIST SYNC APPLY HANDLE AFTER STEP STEP_US
//!                                   up to TURNS_LONGEST lines, longest first
//! ```
//!
//! A longest turn: its total, the events it handled (a count), the time writing the log
//! (persist), beginning and ending syncs (sync), applying (apply), handling the events
//! (handle: decoding, executing, stepping raft), the work after raft's readies (after:
//! leadership, compaction, snapshots, checkpoints, the next segment...), and the longest step
//! of that work with its name (`-` and 0 if none took time).
//!
//! Phases: `execute` (a write request handled: decoded, executed by SQLite, frames captured),
//! `batch` (the oldest proposal of a batch waiting in the turn for the batch to be proposed),
//! `append` (one ready's entries written to the log), `sync` (one log fdatasync, on the sync
//! thread: from its request to the loop taking its end), `commit`
//! (leader: a batch proposed until committed), `quorum` (leader: a batch durable in the local
//! log until committed, that is waiting for followers), `apply` (one command's frames into the
//! WAL), `answer` (the answers of one applied command queued to their clients), `turn` (one
//! loop turn).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buckets of a histogram: bucket `i` counts the samples below 2^i µs (the last one, the rest).
pub const BUCKETS: usize = 32;
/// Proposed batches the leader remembers until they commit; past it the oldest is forgotten
/// (not measured). Far above the batches in flight (one per database today).
const BATCHES_IN_FLIGHT_MAX: usize = 4096;
/// Longest loop turns kept between two dumps.
const TURNS_LONGEST: usize = 8;
/// The file the timings are written to, in the data directory.
pub const FILE_NAME: &str = "timings";

/// Count, sum, maximum and log2 buckets of one phase's durations.
#[derive(Clone, Debug, Default)]
struct Histogram {
    count: u64,
    sum_us: u64,
    max_us: u64,
    buckets: [u64; BUCKETS],
}

impl Histogram {
    fn record(&mut self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)] += 1;
    }
}

/// One loop turn, with where its time went (`sync`: the loop's own part of the log syncs,
/// beginning and ending them; the flush runs on the sync thread).
#[derive(Clone, Copy, Debug)]
pub struct Turn {
    pub total: Duration,
    pub events: usize,
    pub persist: Duration,
    pub sync: Duration,
    pub apply: Duration,
    /// Handling the events (before raft's readies).
    pub handle: Duration,
    /// The work after raft's readies.
    pub after: Duration,
    /// The longest step of that work: its name and time.
    pub after_step: (&'static str, Duration),
}

/// A batch the leader proposed: its last index, when it was proposed, when it was durable
/// locally.
struct InFlight {
    last: u64,
    proposed: Instant,
    durable: Option<Instant>,
}

/// The node's timings since the last dump.
pub struct Timings {
    requested: Arc<AtomicBool>,
    execute: Histogram,
    batch: Histogram,
    append: Histogram,
    sync: Histogram,
    commit: Histogram,
    quorum: Histogram,
    apply: Histogram,
    answer: Histogram,
    turn: Histogram,
    longest: Vec<Turn>,
    in_flight: VecDeque<InFlight>,
    /// When the oldest proposal waiting for this turn's batch was taken from the engine.
    batch_since: Option<Instant>,
}

impl Timings {
    pub fn new() -> Timings {
        Timings {
            requested: Arc::new(AtomicBool::new(false)),
            execute: Histogram::default(),
            batch: Histogram::default(),
            append: Histogram::default(),
            sync: Histogram::default(),
            commit: Histogram::default(),
            quorum: Histogram::default(),
            apply: Histogram::default(),
            answer: Histogram::default(),
            turn: Histogram::default(),
            longest: Vec::with_capacity(TURNS_LONGEST + 1),
            in_flight: VecDeque::new(),
            batch_since: None,
        }
    }

    /// The flag that asks for a dump (set by a signal handler; the loop wakes within a tick).
    pub fn request_flag(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }

    pub fn execute(&mut self, took: Duration) {
        self.execute.record(took);
    }

    /// Proposals were taken from the engine at `now` (the first ones start the batch's wait).
    pub fn proposals_taken(&mut self, now: Instant) {
        self.batch_since.get_or_insert(now);
    }

    /// The turn's batch, entries up to `last`, was proposed at `now`.
    pub fn proposed(&mut self, last: u64, now: Instant) {
        if let Some(since) = self.batch_since.take() {
            self.batch.record(now - since);
        }
        if self.in_flight.len() >= BATCHES_IN_FLIGHT_MAX {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(InFlight {
            last,
            proposed: now,
            durable: None,
        });
    }

    /// The turn's proposals were refused: nothing waits.
    pub fn proposals_dropped(&mut self) {
        self.batch_since = None;
    }

    pub fn append(&mut self, took: Duration) {
        self.append.record(took);
    }

    /// The log was synced (`took`), durable through `index` at `now`.
    pub fn synced(&mut self, took: Duration, index: Option<u64>, now: Instant) {
        self.sync.record(took);
        let Some(index) = index else { return };
        for batch in self.in_flight.iter_mut() {
            if batch.last > index {
                break;
            }
            batch.durable.get_or_insert(now);
        }
    }

    /// Entries through `index` were committed at `now` (`leading`: on the leader; a follower
    /// forgets what it proposed as leader).
    pub fn committed(&mut self, index: u64, leading: bool, now: Instant) {
        if !leading {
            self.in_flight.clear();
            return;
        }
        while self.in_flight.front().is_some_and(|b| b.last <= index) {
            let batch = self.in_flight.pop_front().expect("checked");
            self.commit.record(now - batch.proposed);
            self.quorum.record(now - batch.durable.unwrap_or(now));
        }
    }

    pub fn apply(&mut self, took: Duration) {
        self.apply.record(took);
    }

    pub fn answer(&mut self, took: Duration) {
        self.answer.record(took);
    }

    pub fn turn(&mut self, turn: Turn) {
        self.turn.record(turn.total);
        if self.longest.len() < TURNS_LONGEST
            || self.longest.last().is_some_and(|t| t.total < turn.total)
        {
            self.longest.push(turn);
            self.longest.sort_by_key(|t| std::cmp::Reverse(t.total));
            self.longest.truncate(TURNS_LONGEST);
        }
    }

    /// If a dump was asked for: writes the timings since the last dump to `dir/timings`
    /// (through a temporary file and a rename: a reader never sees half a file), and resets
    /// them.
    pub fn dump_if_requested(&mut self, dir: &Path) {
        if !self.requested.swap(false, Ordering::SeqCst) {
            return;
        }
        let text = self.render();
        let temporary = dir.join(format!("{FILE_NAME}.tmp"));
        let result =
            fs::write(&temporary, text).and_then(|()| fs::rename(&temporary, dir.join(FILE_NAME)));
        match result {
            Ok(()) => log::info!("timings written to {}", dir.join(FILE_NAME).display()),
            Err(e) => log::warn!("writing the timings to {}: {e}", dir.display()),
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        let requested = self.requested.clone();
        *self = Timings::new();
        self.requested = requested;
        self.in_flight = in_flight;
    }

    fn render(&self) -> String {
        let mut text = String::from(
            "# atoll loop timings since the previous dump (µs): PHASE COUNT SUM MAX B0..B31 \
             (Bi: samples below 2^i µs); turn_longest TOTAL EVENTS PERSIST SYNC APPLY HANDLE AFTER \
             STEP STEP_US\n",
        );
        let phases = [
            ("execute", &self.execute),
            ("batch", &self.batch),
            ("append", &self.append),
            ("sync", &self.sync),
            ("commit", &self.commit),
            ("quorum", &self.quorum),
            ("apply", &self.apply),
            ("answer", &self.answer),
            ("turn", &self.turn),
        ];
        for (name, histogram) in phases {
            let _ = write!(
                text,
                "{name} {} {} {}",
                histogram.count, histogram.sum_us, histogram.max_us
            );
            for bucket in histogram.buckets {
                let _ = write!(text, " {bucket}");
            }
            text.push('\n');
        }
        let us = |d: Duration| d.as_micros();
        for turn in &self.longest {
            let _ = writeln!(
                text,
                "turn_longest {} {} {} {} {} {} {} {} {}",
                us(turn.total),
                turn.events,
                us(turn.persist),
                us(turn.sync),
                us(turn.apply),
                us(turn.handle),
                us(turn.after),
                turn.after_step.0,
                us(turn.after_step.1)
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_batches_commit_and_dump_resets() {
        let dir = tempfile::tempdir().unwrap();
        let mut timings = Timings::new();
        let t0 = Instant::now();
        timings.proposals_taken(t0);
        timings.proposed(5, t0 + Duration::from_micros(100));
        timings.proposed(9, t0 + Duration::from_micros(200));
        timings.synced(
            Duration::from_micros(300),
            Some(5),
            t0 + Duration::from_micros(500),
        );
        // Batch 1 (..=5) commits; batch 2 (..=9) is not durable yet nor committed.
        timings.committed(7, true, t0 + Duration::from_micros(900));
        assert_eq!(timings.commit.count, 1);
        assert_eq!(timings.commit.sum_us, 800);
        assert_eq!(timings.quorum.sum_us, 400);
        assert_eq!(timings.batch.sum_us, 100);
        assert_eq!(timings.in_flight.len(), 1);
        for ms in [1, 5, 3, 9, 2, 7, 4, 8, 6, 10] {
            timings.turn(Turn {
                total: Duration::from_millis(ms),
                events: 1,
                persist: Duration::ZERO,
                sync: Duration::ZERO,
                apply: Duration::ZERO,
                handle: Duration::ZERO,
                after: Duration::from_micros(ms * 500),
                after_step: ("snapshot", Duration::from_micros(ms * 250)),
            });
        }
        let longest: Vec<u128> = timings
            .longest
            .iter()
            .map(|t| t.total.as_millis())
            .collect();
        assert_eq!(longest, [10, 9, 8, 7, 6, 5, 4, 3]);
        // 1 ms = 1000 µs: below 2^10.
        assert_eq!(timings.turn.buckets[10], 1);
        assert_eq!(timings.turn.max_us, 10_000);

        timings.dump_if_requested(dir.path());
        assert!(!dir.path().join(FILE_NAME).exists(), "not requested");
        timings.request_flag().store(true, Ordering::SeqCst);
        timings.dump_if_requested(dir.path());
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let commit = text.lines().find(|l| l.starts_with("commit ")).unwrap();
        assert!(commit.starts_with("commit 1 800 800 "), "{commit}");
        assert_eq!(commit.split(' ').count(), 4 + BUCKETS);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("turn_longest"))
                .count(),
            8
        );
        assert!(text.contains("\nturn_longest 10000 1 0 0 0 0 5000 snapshot 2500\n"));
        // Reset, but the batch in flight is still measured when it commits.
        assert_eq!(timings.turn.count, 0);
        timings.committed(9, true, t0 + Duration::from_micros(1200));
        assert_eq!((timings.commit.count, timings.commit.sum_us), (1, 1000));
        assert!(!timings.request_flag().load(Ordering::SeqCst));
    }
}

//! What a leader knows about each follower's log, and the flow control of appends to it.
//!
//! A follower's progress is in one of three states (etcd's `tracker/progress.go`):
//! - **Probe**: the leader does not know where the logs agree. It sends one append at a time
//!   and waits for its answer (or the next heartbeat response) before sending another.
//! - **Replicate**: the logs agree up to `match_index`; appends are pipelined optimistically,
//!   bounded by the in-flight window (messages and bytes).
//! - **Snapshot**: the follower needs entries the leader compacted; the leader streams snapshot
//!   chunks, resumable from the offset the follower acknowledges.

use std::collections::VecDeque;

use crate::message::SnapshotMeta;
use crate::LogIndex;

/// The replication state of one follower.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One append at a time until the logs are known to agree.
    Probe,
    /// Pipelined appends.
    Replicate,
    /// A snapshot is being streamed.
    Snapshot,
}

/// The bounded window of appends in flight to one follower: the last index and payload bytes of
/// each message, oldest first.
#[derive(Clone, Debug)]
pub struct Inflights {
    window: VecDeque<(LogIndex, u64)>,
    bytes: u64,
    count_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub(crate) fn new(count_max: u32, bytes_max: u64) -> Inflights {
        Inflights {
            window: VecDeque::new(),
            bytes: 0,
            count_max: count_max as usize,
            bytes_max,
        }
    }

    pub(crate) fn add(&mut self, last_index: LogIndex, bytes: u64) {
        assert!(!self.is_full(), "sending past the in-flight window");
        if let Some(&(previous, _)) = self.window.back() {
            assert!(
                last_index > previous,
                "in-flight appends are sent in index order"
            );
        }
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index` (acknowledged).
    pub(crate) fn free_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message (a heartbeat answered while the window was full: appends may
    /// have been lost, so let one more through to find out).
    pub(crate) fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    /// Whether no more messages may be sent.
    pub fn is_full(&self) -> bool {
        self.window.len() >= self.count_max || self.bytes >= self.bytes_max
    }

    /// The number of messages in flight.
    pub fn count(&self) -> usize {
        self.window.len()
    }

    /// The payload bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A snapshot being streamed to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend {
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// The next byte to send. Invariant: `acked_offset <= sent_offset <= meta.size_bytes`.
    pub sent_offset: u64,
    /// The bytes the follower confirmed holding.
    pub acked_offset: u64,
    /// Heartbeat intervals since `acked_offset` last moved: a stall makes the leader resend.
    pub stalled_heartbeats: u32,
    /// The chunk that ends the snapshot was sent (and not rewound since).
    pub last_sent: bool,
    /// The offset of the last rejection ignored because it was below `acked_offset` (taken
    /// for a reordered answer). Should the stream then stall, that answer was the truth (the
    /// acknowledgement above it was stale: from before the follower restarted, say), and the
    /// stream resumes from it instead of from `acked_offset`, which the follower would refuse
    /// for ever.
    pub ignored_reject: Option<u64>,
}

/// What the leader tracks for one member (itself included).
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be durably replicated on the member.
    pub(crate) match_index: LogIndex,
    /// The next index to send. Invariant: `match_index < next_index`.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ProgressState,
    /// Probe state: an append is out and unanswered; send nothing more until an answer or a
    /// heartbeat response.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    pub(crate) snapshot: Option<SnapshotSend>,
    /// Heard from within the current check-quorum window.
    pub(crate) recent_active: bool,
    /// Ticks since the last message from the member.
    pub(crate) last_contact_ticks: u64,
    /// Ticks since the member last answered an append (or the state was reset): a heartbeat
    /// response resumes a paused stream only once this is long enough, so that fast heartbeats
    /// do not resend an append per heartbeat to a member still working through the last ones.
    pub(crate) append_wait_ticks: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, count_max: u32, bytes_max: u64) -> Progress {
        assert!(next_index.0 >= 1);
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(count_max, bytes_max),
            snapshot: None,
            recent_active: false,
            last_contact_ticks: 0,
            append_wait_ticks: 0,
        }
    }

    /// The highest index known durable on the member.
    pub fn match_index(&self) -> LogIndex {
        self.match_index
    }

    /// The next index the leader sends.
    pub fn next_index(&self) -> LogIndex {
        self.next_index
    }

    /// The replication state.
    pub fn state(&self) -> ProgressState {
        self.state
    }

    /// Whether the member was heard from within the current check-quorum window.
    pub fn recent_active(&self) -> bool {
        self.recent_active
    }

    /// Ticks since the leader last heard from the member (host policy: replace a voter that
    /// stays unreachable past a threshold).
    pub fn last_contact_ticks(&self) -> u64 {
        self.last_contact_ticks
    }

    /// The appends in flight.
    pub fn inflights(&self) -> &Inflights {
        &self.inflights
    }

    /// The snapshot being streamed, in snapshot state.
    pub fn snapshot_send(&self) -> Option<&SnapshotSend> {
        self.snapshot.as_ref()
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let snapshot_index = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.meta.index);
            self.next_index = self.match_index.max(snapshot_index).next();
        } else {
            self.next_index = self.match_index.next();
        }
        self.reset_state(ProgressState::Probe);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.next_index = self.match_index.next();
        self.reset_state(ProgressState::Replicate);
    }

    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.reset_state(ProgressState::Snapshot);
        self.snapshot = Some(SnapshotSend {
            meta,
            sent_offset: 0,
            acked_offset: 0,
            stalled_heartbeats: 0,
            last_sent: false,
            ignored_reject: None,
        });
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.append_wait_ticks = 0;
        self.inflights.reset();
        self.snapshot = None;
    }

    /// Whether the leader must hold further appends to this member.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }

    /// An append up to `index` was acknowledged. Returns whether the match index moved.
    pub(crate) fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.append_wait_ticks = 0;
        if self.next_index <= index {
            self.next_index = index.next();
        }
        updated
    }

    /// An append with previous index `rejected` was refused; `hint` is where the follower
    /// suggests retrying. Returns false for a stale rejection (ignored).
    pub(crate) fn maybe_decrease_to(&mut self, rejected: LogIndex, hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            // Anything at or below the match index was accepted before: stale.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index.next();
            return true;
        }
        // In probe state only the answer to the one outstanding probe counts.
        if self.next_index.0 == 0 || self.next_index.prev() != rejected {
            return false;
        }
        self.next_index = rejected.min(hint.next()).max(self.match_index.next());
        self.probe_sent = false;
        self.append_wait_ticks = 0;
        true
    }

    /// Records an append sent up to `last_index` with `bytes` of payload.
    pub(crate) fn sent_append(&mut self, last_index: Option<LogIndex>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last.next();
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("no appends in snapshot state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_inflights_bound_messages_and_bytes() {
        let mut inflights = Inflights::new(3, 100);
        inflights.add(LogIndex(1), 10);
        inflights.add(LogIndex(2), 10);
        assert!(!inflights.is_full());
        inflights.add(LogIndex(5), 90);
        assert!(inflights.is_full());
        inflights.free_to(LogIndex(2));
        assert_eq!(inflights.count(), 1);
        assert_eq!(inflights.bytes(), 90);
        assert!(!inflights.is_full());
        inflights.free_to(LogIndex(9));
        assert_eq!(inflights.count(), 0);
    }

    #[test]
    fn test_probe_ignores_stale_rejections() {
        let mut progress = Progress::new(LogIndex(10), 4, 1 << 20);
        progress.sent_append(Some(LogIndex(12)), 0);
        assert!(progress.is_paused());
        // A rejection of some other probe is stale.
        assert!(!progress.maybe_decrease_to(LogIndex(5), LogIndex(3)));
        // The answer to our probe (previous index 9) moves next to the hint.
        assert!(progress.maybe_decrease_to(LogIndex(9), LogIndex(4)));
        assert_eq!(progress.next_index(), LogIndex(5));
        assert!(!progress.is_paused());
    }

    #[test]
    fn test_replicate_pipelines_until_the_window_fills() {
        let mut progress = Progress::new(LogIndex(1), 2, 1 << 20);
        progress.maybe_update(LogIndex(3));
        progress.become_replicate();
        assert_eq!(progress.next_index(), LogIndex(4));
        progress.sent_append(Some(LogIndex(5)), 1);
        progress.sent_append(Some(LogIndex(7)), 1);
        assert!(progress.is_paused());
        assert!(progress.maybe_update(LogIndex(5)));
        progress.inflights.free_to(LogIndex(5));
        assert!(!progress.is_paused());
        assert_eq!(progress.next_index(), LogIndex(8));
        // A rejection below the match index is stale.
        assert!(!progress.maybe_decrease_to(LogIndex(4), LogIndex(0)));
    }
}

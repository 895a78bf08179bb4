//! Giving memory back when the node goes idle.
//!
//! Under load a node's resident memory is bounded piece by piece (the log keeps at most about
//! 2 MiB of its open segment mapped in, SQLite's caches sit under one soft heap limit, buffers
//! shrink after bursts), but what a burst left behind stays resident: freed C heap below live
//! allocations, pages of segments read by a lagging follower, full page caches. Once nothing
//! has happened for [`IDLE_RELEASE_AFTER`] (no client event, no new entry, nothing applied),
//! the node releases it all, once, until the next activity: the engine's caches and buffers
//! (`Engine::release_memory`), the log's mapped pages (`SegmentLog::release_memory`), then the
//! C heap's free pages (`malloc_trim`). Heartbeats and other peer traffic do not count as
//! activity: a quiet cluster still exchanges them.

use std::time::{Duration, Instant};

/// How long a node must be idle before it releases memory.
pub(crate) const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Watches for activity; see the module documentation.
#[derive(Debug)]
pub(crate) struct IdleRelease {
    /// Client events (connections, requests, closes) seen so far.
    client_events: u64,
    /// (client events, last log index, applied index) when last looked at.
    mark: (u64, u64, u64),
    /// When `mark` last changed.
    since: Instant,
    /// Released since `mark` last changed: nothing more to give back until it changes.
    released: bool,
}

impl IdleRelease {
    pub(crate) fn new(now: Instant) -> IdleRelease {
        IdleRelease {
            client_events: 0,
            mark: (0, 0, 0),
            since: now,
            released: false,
        }
    }

    /// A client connected, sent a request or went away.
    pub(crate) fn note_client_event(&mut self) {
        self.client_events += 1;
    }

    /// Whether the node should release memory now, given the log's last index and the applied
    /// index: true once per idle stretch, after `IDLE_RELEASE_AFTER` without activity.
    pub(crate) fn due(&mut self, now: Instant, last_index: u64, applied: u64) -> bool {
        let mark = (self.client_events, last_index, applied);
        if mark != self.mark {
            self.mark = mark;
            self.since = now;
            self.released = false;
            return false;
        }
        if self.released || now.saturating_duration_since(self.since) < IDLE_RELEASE_AFTER {
            return false;
        }
        self.released = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_release_is_due_once_per_idle_stretch() {
        let start = Instant::now();
        let mut idle = IdleRelease::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!idle.due(at(0), 5, 5), "the first look sets the mark");
        assert!(!idle.due(at(999), 5, 5));
        assert!(idle.due(at(1000), 5, 5));
        assert!(!idle.due(at(5000), 5, 5), "once per idle stretch");
        // An applied entry starts a new stretch; so does a client event.
        assert!(!idle.due(at(5001), 6, 6));
        assert!(!idle.due(at(5500), 6, 6));
        idle.note_client_event();
        assert!(!idle.due(at(6100), 6, 6));
        assert!(!idle.due(at(7000), 6, 6));
        assert!(idle.due(at(7100), 6, 6));
    }
}

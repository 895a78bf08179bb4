//! The node's inputs that are not messages: time, randomness and the disk, behind small traits.
//! The node never reads the clock or draws a random number itself: it asks its [`Clock`] and its
//! [`Random`], so that a host can run it on simulated time with a seeded generator and replay a
//! run identically; the files of its log and its databases go through its
//! [`atoll_storage::Disk`]. Production uses [`MonotonicClock`], [`OsRandom`] and
//! [`atoll_storage::StdDisk`] ([`Inputs::production`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log_sync::{LogSync, SimulatedSync};
use atoll_storage::{Disk, StdDisk};

use crate::network::Network;

/// Where the node reads the time. Only differences between its instants matter, except for
/// names: [`Clock::unix_time`] is read only to name things (a quarantine directory), never to
/// decide anything.
pub trait Clock: Send {
    /// The current instant; never earlier than a previous answer.
    fn now(&self) -> Instant;

    /// The wall-clock time since the Unix epoch, for names only (it may go back).
    fn unix_time(&self) -> Duration;
}

/// Where the node draws random numbers: election seeds, peer incarnations, snapshot and
/// checkpoint jitter.
pub trait Random: Send {
    /// The next number of the sequence.
    fn next_u64(&mut self) -> u64;
}

/// The operating system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_time(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Simulated time: starts at an arbitrary instant and moves only when [`ManualClock::advance`]
/// is called. Clones share the time (the simulator keeps one, each node another).
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    /// Nanoseconds since `base`.
    elapsed: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing still at an arbitrary instant.
    pub fn new() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            elapsed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the time forward by `by` (saturating at about 584 years of simulated time).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let now = self.elapsed.load(Ordering::Relaxed);
        self.elapsed
            .store(now.saturating_add(by), Ordering::Relaxed);
    }

    /// Simulated time elapsed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed.load(Ordering::Relaxed))
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

/// Where a [`ManualClock`]'s wall-clock time starts: 2020-01-01T00:00:00Z, so that a
/// simulated run names things the same way every time.
const MANUAL_CLOCK_UNIX_START: Duration = Duration::from_secs(1_577_836_800);

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }

    /// 2020-01-01T00:00:00Z plus the simulated time elapsed.
    fn unix_time(&self) -> Duration {
        MANUAL_CLOCK_UNIX_START.saturating_add(self.elapsed())
    }
}

/// Random numbers seeded by the operating system per draw.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn next_u64(&mut self) -> u64 {
        os_random_u64()
    }
}

/// A random number from the standard library's hasher keys (seeded from the OS per process),
/// mixed with the wall-clock time and the process id.
pub(crate) fn os_random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A seeded generator (splitmix64): one seed, one sequence.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    /// The sequence of `seed`.
    pub fn new(seed: u64) -> SeededRandom {
        SeededRandom { state: seed }
    }
}

impl Random for SeededRandom {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The clock, the random source and the network a node runs on.
pub struct Inputs {
    /// Where the node reads the time.
    pub clock: Box<dyn Clock>,
    /// Where the node draws random numbers.
    pub random: Box<dyn Random>,
    /// The transport; `None` binds the mio reactor on the configured address (production).
    pub network: Option<Box<dyn Network>>,
    /// Whether the node's slow file work runs on helper threads (production: the loop does not
    /// stall on it): a checkpoint's fdatasync, a snapshot file's sync and rename, deleting
    /// files no longer needed. A simulation keeps everything on its one thread, so that a seed
    /// replays identically.
    pub checkpoint_sync_in_background: bool,
    /// Runs the log's syncs off the loop; `None` starts a thread that wakes the transport
    /// (production; the transport must give a waker).
    pub log_sync: Option<Box<dyn LogSync>>,
    /// Where the Raft log (`DIR/raft`) and the databases (`DIR/db`) are, and the free space is
    /// measured. The node's configuration files (`atoll.conf`, the secret, TLS files, the
    /// members hint, the repair marker) stay on the operating system's file system.
    pub disk: Arc<dyn Disk>,
}

impl Inputs {
    /// The operating system's clock and randomness, and the reactor.
    pub fn production() -> Inputs {
        Inputs {
            clock: Box::new(MonotonicClock),
            random: Box::new(OsRandom),
            network: None,
            checkpoint_sync_in_background: true,
            log_sync: None,
            disk: StdDisk::shared(),
        }
    }

    /// A simulated clock and a seeded generator, with production's reactor (real loopback
    /// sockets) unless `network` is given, and log syncs that take a simulated time drawn from
    /// the seed: everything on the caller's thread. The disk is the operating system's until
    /// the caller sets another.
    pub fn simulated(
        clock: Box<dyn Clock>,
        seed: u64,
        network: Option<Box<dyn Network>>,
    ) -> Inputs {
        Inputs {
            clock,
            random: Box::new(SeededRandom::new(seed)),
            network,
            checkpoint_sync_in_background: false,
            // Its own stream: the node's draws do not shift the disk's, nor the reverse.
            log_sync: Some(Box::new(SimulatedSync::new(!seed))),
            disk: StdDisk::shared(),
        }
    }
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inputs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = ManualClock::new();
        let shared = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::from_millis(250));
        assert_eq!(clock.now() - start, Duration::from_millis(250));
        assert_eq!(clock.elapsed(), Duration::from_millis(250));
        assert_eq!(
            clock.unix_time(),
            MANUAL_CLOCK_UNIX_START + Duration::from_millis(250)
        );
        clock.advance(Duration::MAX);
        assert!(clock.now() >= start + Duration::from_millis(250));
    }

    #[test]
    fn test_seeded_random_replays_its_seed() {
        let draw = |seed| {
            let mut random = SeededRandom::new(seed);
            (0..4).map(|_| random.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}

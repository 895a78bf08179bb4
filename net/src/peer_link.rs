//! The reactor's state for one remote node it sends to: the address, the bounded send queue, the
//! connection state and the reconnect backoff.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::time::{Duration, Instant};

use crate::peer::{message_header, FRAME_HEADER_BYTES};

/// Frames handed to one `write_vectored` call (two slices each).
const FRAMES_PER_WRITE_MAX: usize = 32;
/// Buffers kept for reuse by `peer_send_with`.
pub const BUFFER_POOL_MAX: usize = 32;
/// A buffer larger than this is not kept for reuse (one snapshot chunk must not pin megabytes).
pub const BUFFER_POOL_CAPACITY_MAX: usize = 64 * 1024;

/// Counters of one peer, for metrics, tests and logs. All counts since the peer became known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// The address the reactor dials.
    pub address: String,
    /// An outbound connection is established.
    pub connected: bool,
    /// Frames waiting in the send queue (the one being written included).
    pub frames_queued: usize,
    /// Bytes (headers included) waiting in the send queue.
    pub bytes_queued: usize,
    /// Message frames written completely to a socket.
    pub frames_sent: u64,
    /// Frames `peer_send` refused because the queue was at its bound.
    pub frames_dropped_full: u64,
    /// Frames dropped because their connection failed or closed before they were written.
    pub frames_dropped_disconnect: u64,
    /// Outbound connections established.
    pub connects: u64,
    /// Dial attempts that failed, and connections that closed before they counted as stable.
    pub failures: u64,
    /// Consecutive failures; the next delay grows with it, and a stable connection resets it.
    pub backoff_attempt: u32,
    /// The delay chosen before the latest redial.
    pub backoff_last: Option<Duration>,
}

/// A frame waiting to be written.
#[derive(Debug)]
pub struct OutFrame {
    header: [u8; FRAME_HEADER_BYTES],
    payload: Vec<u8>,
}

impl OutFrame {
    fn bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload.len()
    }
}

/// The frames queued for one peer, written with vectored writes straight from the host's
/// buffers (no copy into a connection buffer).
#[derive(Debug, Default)]
pub struct SendQueue {
    frames: VecDeque<OutFrame>,
    // Invariant: frames.is_empty() implies head_written == 0, and otherwise
    // head_written < frames[0].bytes(): a fully written frame is popped at once.
    head_written: usize,
    // Invariant: bytes == sum of frames[i].bytes() - head_written (the bytes left to write).
    bytes: usize,
}

impl SendQueue {
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether a frame of `payload_bytes` fits under the bounds.
    pub fn fits(&self, payload_bytes: usize, frames_max: usize, bytes_max: usize) -> bool {
        self.frames.len() < frames_max
            && self.bytes + FRAME_HEADER_BYTES + payload_bytes <= bytes_max
    }

    pub fn push(&mut self, payload: Vec<u8>) {
        let payload_bytes = u32::try_from(payload.len()).expect("checked against frame_bytes_max");
        let frame = OutFrame {
            header: message_header(payload_bytes),
            payload,
        };
        self.bytes += frame.bytes();
        self.frames.push_back(frame);
    }

    /// Drops every queued frame (the connection they were meant for is gone); returns how many.
    pub fn clear(&mut self, pool: &mut Vec<Vec<u8>>) -> u64 {
        let dropped = self.frames.len() as u64;
        for frame in self.frames.drain(..) {
            recycle(pool, frame.payload);
        }
        self.head_written = 0;
        self.bytes = 0;
        dropped
    }

    /// One vectored write of the queue's head; returns the frames completed, or the write error
    /// (`WouldBlock` included).
    pub fn write_once(
        &mut self,
        writer: &mut impl Write,
        pool: &mut Vec<Vec<u8>>,
    ) -> io::Result<u64> {
        assert!(!self.frames.is_empty());
        let mut slices: [IoSlice<'_>; 2 * FRAMES_PER_WRITE_MAX] =
            [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE_MAX];
        let mut count = 0;
        for (i, frame) in self.frames.iter().take(FRAMES_PER_WRITE_MAX).enumerate() {
            let skip = if i == 0 { self.head_written } else { 0 };
            if skip < FRAME_HEADER_BYTES {
                slices[count] = IoSlice::new(&frame.header[skip..]);
                count += 1;
            }
            let payload_skip = skip.saturating_sub(FRAME_HEADER_BYTES);
            slices[count] = IoSlice::new(&frame.payload[payload_skip..]);
            count += 1;
        }
        let written = writer.write_vectored(&slices[..count])?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(self.advance(written, pool))
    }

    fn advance(&mut self, mut written: usize, pool: &mut Vec<Vec<u8>>) -> u64 {
        let mut completed = 0;
        self.bytes -= written;
        // Bounded by the frames written in one call.
        while written > 0 {
            let head = self
                .frames
                .front()
                .expect("written bytes belong to queued frames");
            let left = head.bytes() - self.head_written;
            if written < left {
                self.head_written += written;
                break;
            }
            written -= left;
            self.head_written = 0;
            let frame = self.frames.pop_front().expect("front exists");
            recycle(pool, frame.payload);
            completed += 1;
        }
        debug_assert_eq!(
            self.bytes + self.head_written,
            self.frames.iter().map(OutFrame::bytes).sum::<usize>()
        );
        completed
    }
}

/// Keeps a small buffer for reuse by `peer_send_with`.
pub fn recycle(pool: &mut Vec<Vec<u8>>, mut buffer: Vec<u8>) {
    if pool.len() < BUFFER_POOL_MAX && buffer.capacity() <= BUFFER_POOL_CAPACITY_MAX {
        buffer.clear();
        pool.push(buffer);
    }
}

/// Where the outbound connection to a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Known (its address was set) but never sent to: nothing is dialled yet.
    Idle,
    /// Dial at this instant (now, after an address change, or after a backoff delay).
    DialAt(Instant),
    /// The address is a host name being resolved off the loop; the dial follows the answer.
    Resolving,
    /// A TCP connect is in progress on this slot.
    Dialing { slot: usize },
    /// Connected on this slot since then.
    Connected { slot: usize, since: Instant },
}

/// One remote node the reactor sends to.
#[derive(Debug)]
pub struct PeerLink {
    pub address: String,
    pub state: LinkState,
    pub queue: SendQueue,
    pub stats: PeerStats,
    /// The incarnation of the node's latest inbound hello, to notice a restart.
    pub incarnation_seen: Option<u64>,
    /// When the node's latest inbound connection closed (None while one is open or none was).
    pub inbound_closed_at: Option<Instant>,
}

impl PeerLink {
    pub fn new(address: String) -> PeerLink {
        PeerLink {
            stats: PeerStats {
                address: address.clone(),
                ..PeerStats::default()
            },
            address,
            state: LinkState::Idle,
            queue: SendQueue::default(),
            incarnation_seen: None,
            inbound_closed_at: None,
        }
    }

    /// The slot of the link's connection, dialling or connected.
    pub fn slot(&self) -> Option<usize> {
        match self.state {
            LinkState::Dialing { slot } | LinkState::Connected { slot, .. } => Some(slot),
            LinkState::Idle | LinkState::DialAt(_) | LinkState::Resolving => None,
        }
    }

    pub fn stats(&self) -> PeerStats {
        PeerStats {
            connected: matches!(self.state, LinkState::Connected { .. }),
            frames_queued: self.queue.frames(),
            bytes_queued: self.queue.bytes(),
            ..self.stats.clone()
        }
    }
}

/// Exponential backoff with jitter: the delay before the n-th consecutive redial is drawn
/// uniformly from [d/2, d] where d = min(initial × 2ⁿ, max), so retries start fast (failover must
/// stay sub-second) and nodes that lost a peer at the same instant do not redial in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    prng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        assert!(!initial.is_zero());
        assert!(initial <= max);
        Backoff {
            initial,
            max,
            prng: seed,
        }
    }

    /// The delay before the redial following `attempt` consecutive failures (0 for the first).
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(20);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        let delay = half + Duration::from_nanos(jitter);
        assert!(delay <= ceiling);
        delay
    }

    /// splitmix64: our own PRNG, so a seed keeps meaning the same delays.
    fn next_u64(&mut self) -> u64 {
        self.prng = self.prng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.prng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value derived from the seed, never 0: the incarnation a hello announces.
    pub fn incarnation(seed: u64) -> u64 {
        let mut prng = Backoff::new(Duration::from_millis(1), Duration::from_millis(1), seed);
        prng.next_u64() | 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_partial_vectored_writes_keep_frames_whole_and_in_order() {
        // Writes that stop anywhere (inside a header, inside a payload) resume exactly there.
        for limit in [1, 3, 8, 9, 13, 100] {
            let mut queue = SendQueue::default();
            let mut pool = Vec::new();
            let payloads: Vec<Vec<u8>> = (1..=40u8).map(|i| vec![i; i as usize]).collect();
            for p in &payloads {
                queue.push(p.clone());
            }
            let mut writer = Trickle {
                out: Vec::new(),
                limit,
            };
            let mut completed = 0;
            while !queue.is_empty() {
                completed += queue.write_once(&mut writer, &mut pool).unwrap();
            }
            assert_eq!(completed, 40);
            assert_eq!(queue.bytes(), 0);
            let mut expected = Vec::new();
            for p in &payloads {
                expected.extend_from_slice(&message_header(p.len() as u32));
                expected.extend_from_slice(p);
            }
            assert_eq!(writer.out, expected, "limit {limit}");
        }
    }

    #[test]
    fn test_queue_bounds_count_headers() {
        let mut queue = SendQueue::default();
        assert!(queue.fits(92, 2, 100));
        assert!(!queue.fits(93, 2, 100));
        queue.push(vec![0; 10]);
        queue.push(vec![0; 10]);
        assert!(!queue.fits(1, 2, 1000));
        let mut pool = Vec::new();
        assert_eq!(queue.clear(&mut pool), 2);
        assert_eq!(pool.len(), 2);
        assert!(queue.fits(1, 2, 1000));
    }

    #[test]
    fn test_backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 42);
        for attempt in 0..12 {
            let ceiling = Duration::from_millis(10 << attempt.min(7)).min(Duration::from_secs(1));
            let delay = backoff.delay(attempt);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempt}: {delay:?}"
            );
        }
        // Jitter: two seeds give different delays.
        let mut other = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 43);
        let a: Vec<_> = (0..8).map(|_| backoff.delay(10)).collect();
        let b: Vec<_> = (0..8).map(|_| other.delay(10)).collect();
        assert_ne!(a, b);
        assert_ne!(Backoff::incarnation(1), Backoff::incarnation(2));
        assert_ne!(Backoff::incarnation(0), 0);
    }
}

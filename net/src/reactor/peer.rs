//! The reactor's peer transport: outbound connections with send queues and redial backoff,
//! inbound connections that deliver frames, and their timeouts. The wire format is in
//! [`crate::peer`]; the per-peer state in [`crate::peer_link`].
//!
//! Every node dials every peer it sends to and writes only on that outbound connection; it
//! receives on the connections its peers dialled. Two connections per pair keep each one simple:
//! one writer and one reader per socket, no multiplexing, no tie-break when both dial at once.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{CloseReason, Event, Reactor, Waker};
use crate::conn::{Conn, IoOutcome, PeerHandshake, Phase, READ_CHUNK_BYTES};
use crate::peer::{
    encode_auth, encode_challenge, verify_auth, verify_challenge, ClusterSecret, FrameHeader,
    FrameKind, Hello, PeerError, ADDRESS_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    PEER_MAGIC_V1, PING_FRAME,
};
use crate::peer_link::{LinkState, PeerLink, PeerStats};

/// Default bytes queued per peer (headers included): room for two maximum-size frames.
pub const PEER_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Default frames queued per peer (etcd's rafthttp keeps 4096 messages per stream).
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;
/// Default number of peers a reactor sends to.
pub const PEERS_MAX: usize = 64;
/// Default first redial delay (drawn from [5 ms, 10 ms]).
pub const PEER_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Default longest redial delay; a connection that stayed up this long resets the backoff.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Default time a dial may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default idle time after which an outbound connection sends a PING.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Default silence after which an inbound connection is closed (five missed keepalives).
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time an outbound connection may hold unwritten frames without write progress.
pub const PEER_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default frames delivered per inbound connection per poll (fairness).
pub const PEER_FRAMES_PER_POLL_MAX: usize = 256;
/// Default bytes read per inbound connection per poll (fairness).
pub const PEER_BYTES_PER_POLL_MAX: usize = 4 * 1024 * 1024;
/// Largest single read of a large frame's payload.
pub const PEER_READ_CHUNK_MAX: usize = 256 * 1024;
/// Reads per inbound peer connection per poll.
const PEER_READS_PER_POLL_MAX: usize = 64;
/// Refused hellos remembered for log-once; past this, every refusal logs at debug level.
const REJECTIONS_LOGGED_MAX: usize = 256;

const _: () = assert!(FRAME_BYTES_MAX as usize + FRAME_HEADER_BYTES <= PEER_QUEUE_BYTES_MAX);
const _: () = assert!(PEER_KEEPALIVE_INTERVAL.as_millis() * 2 < PEER_IDLE_TIMEOUT.as_millis());
const _: () = assert!(PEER_READ_CHUNK_MAX >= READ_CHUNK_BYTES);

/// The peer transport's identity and limits.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This node's id, non-zero; sent in every hello and required in inbound ones.
    pub node_id: u64,
    /// The cluster id; hellos with another are refused.
    pub cluster_id: u64,
    /// The cluster secret every peer connection proves, both ways, before any message.
    pub secret: ClusterSecret,
    /// The address this node advertises in its hellos (1..=255 bytes); empty: the listening
    /// address, as `Reactor::bind` resolved it.
    pub address: String,
    /// Seeds the backoff jitter and this process's incarnation: pass a value that differs at
    /// every start (clock and pid), so peers notice a restart.
    pub seed: u64,
    /// Largest message payload sent or accepted; a larger inbound header closes the connection.
    pub frame_bytes_max: u32,
    /// Bytes (headers included) queued per peer; `peer_send` refuses a frame past it.
    pub queue_bytes_max: usize,
    /// Frames queued per peer; `peer_send` refuses a frame past it.
    pub queue_frames_max: usize,
    /// Peers this node sends to at once.
    pub peers_max: usize,
    /// First redial delay (jittered down to half).
    pub backoff_initial: Duration,
    /// Longest redial delay; a connection that stayed up this long resets the backoff.
    pub backoff_max: Duration,
    /// Time a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// An outbound connection idle this long sends a PING.
    pub keepalive_interval: Duration,
    /// An inbound connection silent this long is closed (half-open or dead peer).
    pub idle_timeout: Duration,
    /// An outbound connection with unwritten frames and no write progress this long is closed.
    pub write_stall_timeout: Duration,
    /// Frames delivered per inbound connection per poll.
    pub frames_per_poll_max: usize,
    /// Bytes read per inbound connection per poll.
    pub bytes_per_poll_max: usize,
    /// Resolves a peer's host name (never an IP address) on the resolver thread; the system
    /// resolver by default (tests put a slow one here).
    pub lookup: fn(&str) -> io::Result<SocketAddr>,
}

impl PeerConfig {
    /// The defaults for a node with this identity.
    pub fn new(
        node_id: u64,
        cluster_id: u64,
        secret: ClusterSecret,
        address: impl Into<String>,
        seed: u64,
    ) -> Self {
        PeerConfig {
            node_id,
            cluster_id,
            secret,
            address: address.into(),
            seed,
            frame_bytes_max: FRAME_BYTES_MAX,
            queue_bytes_max: PEER_QUEUE_BYTES_MAX,
            queue_frames_max: PEER_QUEUE_FRAMES_MAX,
            peers_max: PEERS_MAX,
            backoff_initial: PEER_BACKOFF_INITIAL,
            backoff_max: PEER_BACKOFF_MAX,
            connect_timeout: PEER_CONNECT_TIMEOUT,
            keepalive_interval: PEER_KEEPALIVE_INTERVAL,
            idle_timeout: PEER_IDLE_TIMEOUT,
            write_stall_timeout: PEER_WRITE_STALL_TIMEOUT,
            frames_per_poll_max: PEER_FRAMES_PER_POLL_MAX,
            bytes_per_poll_max: PEER_BYTES_PER_POLL_MAX,
            lookup: system_lookup,
        }
    }

    /// Panics on a configuration no node can run with (a programmer error of the host).
    pub(super) fn validate(&self) {
        assert!(self.node_id != 0, "node id 0 is reserved");
        assert!(
            valid_address(&self.address),
            "advertised address must be 1..=255 bytes"
        );
        assert!(self.frame_bytes_max > 0);
        assert!(
            self.frame_bytes_max as usize + FRAME_HEADER_BYTES <= self.queue_bytes_max,
            "the send queue must hold a maximum-size frame"
        );
        assert!(self.queue_frames_max > 0);
        assert!(self.peers_max > 0);
        assert!(!self.backoff_initial.is_zero());
        assert!(self.backoff_initial <= self.backoff_max);
        assert!(
            self.keepalive_interval < self.idle_timeout,
            "peers would close connections that are merely idle"
        );
        assert!(self.frames_per_poll_max > 0);
        assert!(self.bytes_per_poll_max > 0);
    }
}

/// Which of a pair's two connections an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerDirection {
    /// The connection this node dialled and sends on.
    Outbound,
    /// The connection the peer dialled and this node receives on.
    Inbound,
}

/// Why `peer_send` (or another peer call) refused. A refused frame is dropped; raft retransmits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSendError {
    /// The reactor was built without a peer configuration.
    NoPeerTransport,
    /// Node id 0, or this node's own id.
    InvalidNode(u64),
    /// The address is empty or longer than 255 bytes.
    InvalidAddress,
    /// An empty frame (every raft message has bytes).
    EmptyFrame,
    /// The frame exceeds `frame_bytes_max`.
    FrameTooLarge {
        /// The frame's size.
        bytes: usize,
        /// The limit.
        max: u32,
    },
    /// `peers_max` peers are known already.
    TooManyPeers,
    /// The peer's send queue is at its bound (a dead or slow peer): the frame was dropped.
    QueueFull {
        /// Frames queued.
        frames: usize,
        /// Bytes queued.
        bytes: usize,
    },
}

impl fmt::Display for PeerSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSendError::NoPeerTransport => write!(f, "this reactor has no peer transport"),
            PeerSendError::InvalidNode(id) => write!(f, "cannot send to node {id}"),
            PeerSendError::InvalidAddress => write!(f, "peer address must be 1..=255 bytes"),
            PeerSendError::EmptyFrame => write!(f, "empty peer frame"),
            PeerSendError::FrameTooLarge { bytes, max } => {
                write!(
                    f,
                    "peer frame of {bytes} bytes exceeds the maximum of {max}"
                )
            }
            PeerSendError::TooManyPeers => write!(f, "too many peers"),
            PeerSendError::QueueFull { frames, bytes } => write!(
                f,
                "peer send queue full ({frames} frames, {bytes} bytes): frame dropped"
            ),
        }
    }
}

impl std::error::Error for PeerSendError {}

fn valid_address(address: &str) -> bool {
    !address.is_empty() && address.len() <= ADDRESS_BYTES_MAX
}

/// Resolves a host name with the system resolver (blocking: only on the resolver thread).
pub fn system_lookup(address: &str) -> io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{address} resolves to nothing"),
        )
    })
}

/// An answer of the resolver thread: the node, the address asked, and what it resolved to.
type Answer = (u64, String, io::Result<SocketAddr>);

/// The peer address resolver: one thread that resolves host names with the system resolver
/// (which may block for seconds) and wakes the reactor with each answer, so the loop never
/// waits on DNS. IP literals never go there. At most one request per peer is outstanding (the
/// link waits in `Resolving`), so the queues are bounded by `peers_max`. The thread ends when
/// the reactor drops its side.
#[derive(Debug)]
pub struct Resolver {
    requests: mpsc::Sender<(u64, String)>,
    answers: mpsc::Receiver<Answer>,
}

impl Resolver {
    fn start(waker: Waker, lookup: fn(&str) -> io::Result<SocketAddr>) -> io::Result<Resolver> {
        let (requests, requests_in) = mpsc::channel::<(u64, String)>();
        let (answers_out, answers) = mpsc::channel::<Answer>();
        std::thread::Builder::new()
            .name("atoll-resolver".into())
            .spawn(move || {
                // Bounded: ends when the reactor drops the sender.
                for (to, address) in requests_in {
                    let resolved = lookup(&address);
                    if answers_out.send((to, address, resolved)).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        warn!("resolver: cannot wake the reactor: {e}");
                    }
                }
            })?;
        Ok(Resolver { requests, answers })
    }
}

/// What parsing an inbound peer connection's buffered bytes came to.
enum Processed {
    /// Everything buffered was handled; read at most this many bytes next.
    NeedBytes(usize),
    /// The frame budget of this poll is spent.
    BudgetSpent,
    /// The connection was closed.
    Closed,
    /// The handshake of an outbound connection completed: it is only written from now on.
    Outbound,
}

/// One step of `peer_process_inbound`'s frame loop.
enum Step {
    Need(usize),
    Budget,
    Reject(PeerError),
    Hello(Vec<u8>),
    Auth(Vec<u8>),
    Challenge(Vec<u8>),
}

impl Reactor {
    fn peer_config(&self) -> &PeerConfig {
        self.config
            .peer
            .as_ref()
            .expect("peer connections exist only with a peer configuration")
    }

    /// Queues `frame` (one opaque message) for node `to` at `address`, dialling it first if
    /// this is the first send (the connection is then kept and redialled when it drops). If
    /// `address` differs from the one known, the peer moved: see [`Reactor::peer_set_address`].
    ///
    /// Frames to one peer are written in the order they were queued. A frame queued while the
    /// peer is being dialled or waiting for a redial goes out once connected, or is dropped with
    /// the next failed attempt (reported in `PeerDisconnected::frames_dropped`). When the queue is
    /// at its bound the *new* frame is refused with [`PeerSendError::QueueFull`]: the frames
    /// already queued keep their order (raft's pipelined appends stay contiguous), the host learns
    /// at once which frame was lost (a snapshot chunk is retried later, an append is resent by
    /// raft), and a frame half written is never cut.
    pub fn peer_send(
        &mut self,
        to: u64,
        address: &str,
        frame: Vec<u8>,
    ) -> Result<(), PeerSendError> {
        let config = self
            .config
            .peer
            .as_ref()
            .ok_or(PeerSendError::NoPeerTransport)?;
        if frame.is_empty() {
            return Err(PeerSendError::EmptyFrame);
        }
        if frame.len() > config.frame_bytes_max as usize {
            return Err(PeerSendError::FrameTooLarge {
                bytes: frame.len(),
                max: config.frame_bytes_max,
            });
        }
        let (frames_max, bytes_max) = (config.queue_frames_max, config.queue_bytes_max);
        self.peer_set_address(to, address)?;
        let link = self
            .peers
            .get_mut(&to)
            .expect("peer_set_address created it");
        if !link.queue.fits(frame.len(), frames_max, bytes_max) {
            link.stats.frames_dropped_full += 1;
            let error = PeerSendError::QueueFull {
                frames: link.queue.frames(),
                bytes: link.queue.bytes(),
            };
            if link.stats.frames_dropped_full == 1 {
                info!("peer {to} at {}: {error}", link.address);
            } else {
                debug!("peer {to} at {}: {error}", link.address);
            }
            crate::peer_link::recycle(&mut self.buffer_pool, frame);
            return Err(error);
        }
        let was_empty = link.queue.is_empty();
        link.queue.push(frame);
        match link.state {
            LinkState::Idle => link.state = LinkState::DialAt(Instant::now()),
            LinkState::Connected { slot, .. } => {
                let conn = self.slots[slot]
                    .conn
                    .as_mut()
                    .expect("a link's slot is open");
                if was_empty && conn.out_pending_bytes() == 0 {
                    conn.write_progress_at = Instant::now();
                }
                Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
            }
            LinkState::DialAt(_) | LinkState::Resolving | LinkState::Dialing { .. } => {}
        }
        Ok(())
    }

    /// Like [`Reactor::peer_send`], with the frame written by `encode` into a buffer the reactor
    /// recycles from frames already sent: the hot path allocates nothing once warm.
    pub fn peer_send_with(
        &mut self,
        to: u64,
        address: &str,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), PeerSendError> {
        let mut buffer = self.buffer_pool.pop().unwrap_or_default();
        buffer.clear();
        encode(&mut buffer);
        self.peer_send(to, address, buffer)
    }

    /// Sets the address of node `to` (a membership change moved it), making it known if it was
    /// not. A connection to the old address is closed (its queued frames are dropped and
    /// reported) and the new address is dialled at once if the peer had been sent to.
    pub fn peer_set_address(&mut self, to: u64, address: &str) -> Result<(), PeerSendError> {
        let config = self
            .config
            .peer
            .as_ref()
            .ok_or(PeerSendError::NoPeerTransport)?;
        if to == 0 || to == config.node_id {
            return Err(PeerSendError::InvalidNode(to));
        }
        if let Some(link) = self.peers.get(&to) {
            if link.address == address {
                return Ok(());
            }
        }
        if !valid_address(address) {
            return Err(PeerSendError::InvalidAddress);
        }
        if !self.peers.contains_key(&to) {
            if self.peers.len() >= config.peers_max {
                return Err(PeerSendError::TooManyPeers);
            }
            debug!("peer {to}: known at {address}");
            self.peers.insert(to, PeerLink::new(address.to_owned()));
            return Ok(());
        }
        let link = self.peers.get_mut(&to).expect("checked above");
        info!(
            "peer {to}: address changes from {} to {address}",
            link.address
        );
        link.address = address.to_owned();
        link.stats.address = address.to_owned();
        link.stats.backoff_attempt = 0;
        match link.state {
            LinkState::Idle => {}
            // A pending answer for the old address is ignored when it comes.
            LinkState::DialAt(_) | LinkState::Resolving => {
                link.state = LinkState::DialAt(Instant::now())
            }
            LinkState::Dialing { slot } | LinkState::Connected { slot, .. } => {
                // Closing moves the link to DialAt(now), at the new address.
                self.close_slot(slot, CloseReason::Host, None);
            }
        }
        Ok(())
    }

    /// Forgets node `to` (it left the cluster): closes its connections, both directions, and
    /// drops its queue and counters. Returns whether it was known.
    pub fn peer_forget(&mut self, to: u64) -> bool {
        if let Some(&slot) = self.peers_inbound.get(&to) {
            self.close_slot(slot, CloseReason::Host, None);
        }
        let Some(slot) = self.peers.get(&to).map(PeerLink::slot) else {
            return false;
        };
        if let Some(slot) = slot {
            self.close_slot(slot, CloseReason::Host, None);
        }
        let mut link = self.peers.remove(&to).expect("checked above");
        link.queue.clear(&mut self.buffer_pool);
        info!("peer {to} at {}: forgotten", link.address);
        true
    }

    /// The counters of node `to`, if it is known.
    pub fn peer_stats(&self, to: u64) -> Option<PeerStats> {
        self.peers.get(&to).map(PeerLink::stats)
    }

    /// The nodes this reactor knows as peers (sent to, or given an address).
    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.keys().copied()
    }

    /// The incarnation this reactor announces (derived from `PeerConfig::seed`).
    pub fn peer_incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The earliest instant a peer is due to be dialled.
    pub(super) fn peer_dial_next_at(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|link| match link.state {
                LinkState::DialAt(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Dials every peer whose time has come, and those whose host name was resolved.
    pub(super) fn peer_dial_due(&mut self, events: &mut Vec<Event>) {
        self.peer_resolved(events);
        let now = Instant::now();
        if self.peer_dial_next_at().is_none_or(|at| at > now) {
            return;
        }
        let due: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, link)| matches!(link.state, LinkState::DialAt(at) if at <= now))
            .map(|(&id, _)| id)
            .collect();
        for to in due {
            self.peer_dial(to, events);
        }
    }

    /// Dials the answers of the resolver thread whose link still waits for them.
    fn peer_resolved(&mut self, events: &mut Vec<Event>) {
        let Some(resolver) = self.resolver.as_ref() else {
            return;
        };
        let answers: Vec<Answer> = resolver.answers.try_iter().collect();
        for (to, address, resolved) in answers {
            let waiting = self
                .peers
                .get(&to)
                .is_some_and(|link| link.state == LinkState::Resolving && link.address == address);
            if !waiting {
                continue; // The peer moved or was forgotten meanwhile.
            }
            match resolved {
                Ok(target) => self.peer_connect(to, target, events),
                Err(e) => {
                    debug!("peer {to}: resolving {address}: {e}");
                    let event = self.peer_link_down(to, CloseReason::ConnectFailed(e.kind()), None);
                    events.push(event);
                }
            }
        }
    }

    /// Dials node `to`: at once for an IP address, through the resolver thread for a name.
    fn peer_dial(&mut self, to: u64, events: &mut Vec<Event>) {
        let address = &self.peers.get(&to).expect("due peers exist").address;
        if let Ok(target) = address.parse::<SocketAddr>() {
            return self.peer_connect(to, target, events);
        }
        let address = address.clone();
        if self.resolver.is_none() {
            let lookup = self.peer_config().lookup;
            let started = self
                .waker()
                .and_then(|waker| Resolver::start(waker, lookup));
            match started {
                Ok(resolver) => self.resolver = Some(resolver),
                Err(e) => {
                    warn!("cannot start the peer address resolver: {e}");
                    let event = self.peer_link_down(to, CloseReason::ConnectFailed(e.kind()), None);
                    events.push(event);
                    return;
                }
            }
        }
        let resolver = self.resolver.as_ref().expect("started above");
        if resolver.requests.send((to, address)).is_err() {
            // The thread died: start another at the next dial.
            self.resolver = None;
            let event = self.peer_link_down(
                to,
                CloseReason::ConnectFailed(io::ErrorKind::BrokenPipe),
                None,
            );
            events.push(event);
            return;
        }
        self.peers.get_mut(&to).expect("due peers exist").state = LinkState::Resolving;
    }

    /// Opens the TCP connection to node `to` at `target` and queues the greeting and hello.
    fn peer_connect(&mut self, to: u64, target: SocketAddr, events: &mut Vec<Event>) {
        let now = Instant::now();
        let nonce = self
            .nonces
            .as_mut()
            .expect("a peer transport has a nonce source")
            .next_nonce();
        let config = self.peer_config();
        let hello = Hello {
            from: config.node_id,
            to,
            cluster_id: config.cluster_id,
            incarnation: self.incarnation,
            nonce,
            address: config.address.clone(),
        };
        let dialled = Ok(target).and_then(|address| {
            let mut stream = TcpStream::connect(address)?;
            let slot = self.slot_alloc();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + 1),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                self.free_slots.push(slot);
                return Err(e);
            }
            Ok((stream, address, slot))
        });
        let (stream, address, slot) = match dialled {
            Ok(dialled) => dialled,
            Err(e) => {
                let event = self.peer_link_down(to, CloseReason::ConnectFailed(e.kind()), None);
                events.push(event);
                return;
            }
        };
        let mut conn = Conn::new(stream, address, now);
        conn.phase = Phase::PeerDialing { to };
        if let Some(tls) = &self.config.tls {
            match tls.client_session() {
                Ok(session) => {
                    conn.tls = Some(Box::new(session));
                    // The acceptor's first bytes are ours to trust only through TLS.
                    conn.tls_first_checked = true;
                }
                Err(e) => {
                    warn!("peer {to}: {e}");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    self.free_slots.push(slot);
                    let event = self.peer_link_down(to, CloseReason::Host, None);
                    events.push(event);
                    return;
                }
            }
        }
        // The greeting and hello go first, as soon as the connect completes.
        conn.outbound
            .extend_from_slice(&PEER_MAGIC_V1.to_le_bytes());
        hello.encode(&mut conn.outbound);
        conn.handshake = Some(Box::new(PeerHandshake {
            hello_payload: conn.outbound[8 + FRAME_HEADER_BYTES..].to_vec(),
            acceptor_nonce: [0; crate::peer::NONCE_BYTES],
        }));
        self.slots[slot].conn = Some(conn);
        self.connections_count += 1;
        let id = self.conn_id(slot);
        let link = self.peers.get_mut(&to).expect("due peers exist");
        link.state = LinkState::Dialing { slot };
        debug!("peer {to}: dialling {} as {id}", link.address);
    }

    /// A dial completed (or failed): on a writable or error event of a dialling connection.
    pub(super) fn peer_connect_check(&mut self, slot: usize, events: &mut Vec<Event>) {
        let conn = self.slots[slot].conn.as_mut().expect("caller checked");
        let Phase::PeerDialing { to } = conn.phase else {
            return;
        };
        let failure = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => None,
                // Not connected yet: a spurious wakeup; wait for the next event.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.close_slot(slot, CloseReason::ConnectFailed(e.kind()), Some(events));
            return;
        }
        let now = Instant::now();
        if let Err(e) = conn.stream.set_nodelay(true) {
            debug!("set_nodelay for peer {to}: {e}");
        }
        // Connected: the greeting and hello go out; the link counts as connected once the
        // acceptor proved it holds the secret (peer_challenge).
        conn.phase = Phase::PeerAuthOut { to };
        conn.write_progress_at = now;
        conn.active_at = now;
        self.flush_slot(slot, events);
    }

    /// The dialler received the acceptor's CHALLENGE: verifies it, answers with AUTH, and makes
    /// the connection the link's, writing the queued frames.
    fn peer_challenge(&mut self, slot: usize, payload: &[u8], events: &mut Vec<Event>) -> bool {
        let secret = self.peer_config().secret.clone();
        let conn = self.slots[slot].conn.as_mut().expect("open");
        let Phase::PeerAuthOut { to } = conn.phase else {
            unreachable!("a CHALLENGE is processed only in PeerAuthOut");
        };
        let handshake = conn
            .handshake
            .take()
            .expect("PeerAuthOut keeps its handshake");
        let verified = verify_challenge(&secret, &handshake.hello_payload, payload);
        let error = match verified {
            Err(error) => Some(error),
            // The acceptor writes nothing after its CHALLENGE.
            Ok(_) if !conn.inbound.is_empty() => Some(PeerError::UnexpectedData),
            Ok(nonce) => {
                encode_auth(
                    &secret,
                    &handshake.hello_payload,
                    &nonce,
                    &mut conn.outbound,
                );
                None
            }
        };
        if let Some(error) = error {
            self.peer_reject(slot, error, events);
            return false;
        }
        let now = Instant::now();
        conn.phase = Phase::PeerOut { to };
        conn.write_progress_at = now;
        conn.active_at = now;
        let link = self
            .peers
            .get_mut(&to)
            .expect("a dialling connection's link exists");
        debug_assert_eq!(link.state, LinkState::Dialing { slot });
        link.state = LinkState::Connected { slot, since: now };
        link.stats.connects += 1;
        if link.stats.backoff_attempt > 0 {
            info!(
                "peer {to}: connected to {} after {} failed attempts",
                link.address, link.stats.backoff_attempt
            );
        } else {
            debug!("peer {to}: connected to {}", link.address);
        }
        events.push(Event::PeerConnected {
            node: to,
            direction: PeerDirection::Outbound,
            address: link.address.clone(),
        });
        self.peer_flush(slot, events);
        true
    }

    /// Writes an outbound connection's greeting, hello and pings, then its peer's queue.
    pub(super) fn peer_flush(&mut self, slot: usize, events: &mut Vec<Event>) {
        let now = Instant::now();
        let conn = self.slots[slot].conn.as_mut().expect("caller checked");
        let Phase::PeerOut { to } = conn.phase else {
            return;
        };
        let failure = loop {
            match conn.write_once(now) {
                IoOutcome::Progress => continue,
                IoOutcome::Blocked | IoOutcome::Eof => break None,
                IoOutcome::Failed(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            self.close_slot(slot, CloseReason::Io(e.kind()), Some(events));
            return;
        }
        if conn.out_pending_bytes() > 0 {
            return;
        }
        let link = self.peers.get_mut(&to).expect("a connected link exists");
        // Bounded: every turn writes bytes of the queue or leaves the loop.
        let failure = loop {
            if link.queue.is_empty() {
                break None;
            }
            match link
                .queue
                .write_once(&mut conn.queue_writer(), &mut self.buffer_pool)
            {
                Ok(completed) => {
                    link.stats.frames_sent += completed;
                    conn.active_at = now;
                    conn.write_progress_at = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failure {
            self.close_slot(slot, CloseReason::Io(e.kind()), Some(events));
        }
    }

    /// An outbound connection is readable: the peer closed it (or broke the protocol by
    /// writing).
    pub(super) fn peer_read_outbound(&mut self, slot: usize, events: &mut Vec<Event>) {
        let conn = self.slots[slot].conn.as_mut().expect("caller checked");
        let reason = match conn.read_once(Instant::now()) {
            IoOutcome::Blocked => return,
            IoOutcome::Progress if conn.inbound.is_empty() => {
                // TLS records without data (the read budget ran out): read on next turn.
                Self::queue(&mut self.revisit_list, &mut conn.revisit_queued, slot);
                return;
            }
            IoOutcome::Progress => CloseReason::Peer(PeerError::UnexpectedData),
            IoOutcome::Eof => CloseReason::PeerClosed,
            IoOutcome::Failed(e) => CloseReason::Io(e.kind()),
        };
        self.close_slot(slot, reason, Some(events));
    }

    /// Reads an inbound peer connection (or an outbound one during its handshake) within this
    /// poll's budget, delivering its frames.
    pub(super) fn peer_read_slot(&mut self, slot: usize, events: &mut Vec<Event>) {
        let config = self.peer_config();
        let (frames_max, bytes_max) = (config.frames_per_poll_max, config.bytes_per_poll_max);
        let mut frames = 0;
        let mut bytes_read = 0;
        for _ in 0..PEER_READS_PER_POLL_MAX {
            let want = match self.peer_process_inbound(slot, events, &mut frames, frames_max) {
                Processed::NeedBytes(want) => want,
                Processed::Closed | Processed::Outbound => return,
                Processed::BudgetSpent => break,
            };
            if bytes_read >= bytes_max {
                break;
            }
            let conn = self.slots[slot].conn.as_mut().expect("open");
            let before = conn.inbound.len();
            if let Some(header) = conn.in_frame {
                // Grow geometrically, capped at the frame: memory follows the bytes received
                // (a header alone reserves nothing large), and ends at exactly the payload size.
                let payload_bytes = header.payload_bytes as usize;
                let needed = before + want;
                if conn.inbound.capacity() < needed && needed <= payload_bytes {
                    let target = needed.max(before * 2).min(payload_bytes);
                    conn.inbound.reserve_exact(target - before);
                }
            }
            match conn.read_once_max(Instant::now(), want) {
                IoOutcome::Progress => bytes_read += conn.inbound.len() - before,
                IoOutcome::Blocked => return,
                IoOutcome::Eof => {
                    self.close_slot(slot, CloseReason::PeerClosed, Some(events));
                    return;
                }
                IoOutcome::Failed(e) => {
                    self.close_slot(slot, CloseReason::Io(e.kind()), Some(events));
                    return;
                }
            }
        }
        // Budget spent with data possibly left in the socket: come back next turn (the
        // edge-triggered readiness will not fire again for bytes already there).
        let conn = self.slots[slot].conn.as_mut().expect("open");
        Self::queue(&mut self.revisit_list, &mut conn.revisit_queued, slot);
    }

    /// Handles a peer connection's buffered bytes: inbound, the hello, the AUTH, then frames;
    /// outbound, the CHALLENGE. Every header
    /// is validated before its payload is awaited, so a bad one closes the connection before a
    /// byte of its payload is buffered.
    fn peer_process_inbound(
        &mut self,
        slot: usize,
        events: &mut Vec<Event>,
        frames: &mut usize,
        frames_max: usize,
    ) -> Processed {
        let frame_bytes_max = self.peer_config().frame_bytes_max;
        // Bounded: the hello comes once per connection; other turns return.
        loop {
            let conn = self.slots[slot].conn.as_mut().expect("open");
            // Frames are cut at `pos`; the consumed bytes are dropped once, after the loop.
            let mut pos = 0;
            // Bounded: every turn consumes a header (and its payload) or leaves.
            let step = loop {
                if *frames >= frames_max {
                    break Step::Budget;
                }
                let header = match conn.in_frame {
                    Some(header) => header,
                    None => {
                        let Some(bytes) = conn.inbound[pos..].first_chunk::<FRAME_HEADER_BYTES>()
                        else {
                            break Step::Need(READ_CHUNK_BYTES);
                        };
                        let header = match FrameHeader::decode(*bytes, frame_bytes_max) {
                            Ok(header) => header,
                            Err(error) => break Step::Reject(error),
                        };
                        match (conn.phase, header.kind) {
                            (Phase::PeerHello, FrameKind::Hello)
                            | (Phase::PeerAuthIn { .. }, FrameKind::Auth)
                            | (Phase::PeerAuthOut { .. }, FrameKind::Challenge)
                            | (Phase::PeerIn { .. }, FrameKind::Message | FrameKind::Ping) => {}
                            (Phase::PeerHello, kind) => {
                                break Step::Reject(PeerError::HelloExpected(kind))
                            }
                            (_, FrameKind::Hello) => break Step::Reject(PeerError::HelloRepeated),
                            (_, kind) => break Step::Reject(PeerError::OutOfOrder(kind)),
                        }
                        pos += FRAME_HEADER_BYTES;
                        if header.kind == FrameKind::Ping {
                            continue;
                        }
                        conn.in_frame = Some(header);
                        header
                    }
                };
                let payload_bytes = header.payload_bytes as usize;
                let have = conn.inbound.len() - pos;
                if have < payload_bytes {
                    // A large frame's payload is read to its end and no further, into a buffer
                    // grown toward exactly its size (see peer_read_slot), then handed over.
                    let remaining = payload_bytes - have;
                    break Step::Need(if payload_bytes >= READ_CHUNK_BYTES {
                        remaining.min(PEER_READ_CHUNK_MAX)
                    } else {
                        READ_CHUNK_BYTES
                    });
                }
                conn.in_frame = None;
                let exact = pos == 0
                    && have == payload_bytes
                    && conn.inbound.capacity() <= payload_bytes + payload_bytes / 4;
                let payload = if exact {
                    // No copy, and no spare capacity pinned by a frame the host may keep.
                    std::mem::replace(&mut conn.inbound, Vec::with_capacity(READ_CHUNK_BYTES))
                } else {
                    pos += payload_bytes;
                    conn.inbound[pos - payload_bytes..pos].to_vec()
                };
                match (conn.phase, header.kind) {
                    (Phase::PeerIn { from }, FrameKind::Message) => {
                        events.push(Event::PeerFrame {
                            from,
                            frame: payload,
                        });
                        *frames += 1;
                    }
                    (_, FrameKind::Hello) => break Step::Hello(payload),
                    (_, FrameKind::Auth) => break Step::Auth(payload),
                    (_, FrameKind::Challenge) => break Step::Challenge(payload),
                    (phase, kind) => unreachable!("{kind:?} frame in {phase:?}"),
                }
            };
            conn.consume_inbound(pos);
            match step {
                Step::Need(want) => return Processed::NeedBytes(want),
                Step::Budget => return Processed::BudgetSpent,
                Step::Reject(error) => {
                    self.peer_reject(slot, error, events);
                    return Processed::Closed;
                }
                Step::Hello(payload) => {
                    if !self.peer_hello(slot, &payload, events) {
                        return Processed::Closed;
                    }
                }
                Step::Auth(payload) => {
                    if !self.peer_auth(slot, &payload, events) {
                        return Processed::Closed;
                    }
                }
                Step::Challenge(payload) => {
                    return match self.peer_challenge(slot, &payload, events) {
                        true => Processed::Outbound,
                        false => Processed::Closed,
                    };
                }
            }
        }
    }

    /// Validates a hello completely, then makes the connection the node's inbound one.
    fn peer_hello(&mut self, slot: usize, payload: &[u8], events: &mut Vec<Event>) -> bool {
        let config = self.peer_config();
        let hello = Hello::decode(payload).and_then(|hello| {
            hello.validate(config.node_id, config.cluster_id)?;
            Ok(hello)
        });
        let hello = match hello {
            Ok(hello) => hello,
            Err(error) => {
                self.peer_reject(slot, error, events);
                return false;
            }
        };
        let from = hello.from;
        let nonce = self
            .nonces
            .as_mut()
            .expect("a peer transport has a nonce source")
            .next_nonce();
        let secret = &self.config.peer.as_ref().expect("peer transport").secret;
        let conn = self.slots[slot].conn.as_mut().expect("open");
        conn.phase = Phase::PeerAuthIn { from };
        if conn.out_pending_bytes() == 0 {
            conn.write_progress_at = Instant::now();
        }
        encode_challenge(secret, payload, &nonce, &mut conn.outbound);
        conn.handshake = Some(Box::new(PeerHandshake {
            hello_payload: payload.to_vec(),
            acceptor_nonce: nonce,
        }));
        Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
        true
    }

    /// The acceptor received the dialler's AUTH: verifies it, then makes the connection the
    /// node's inbound one. Nothing of a connection reaches the host before this succeeds.
    fn peer_auth(&mut self, slot: usize, payload: &[u8], events: &mut Vec<Event>) -> bool {
        let secret = &self.config.peer.as_ref().expect("peer transport").secret;
        let conn = self.slots[slot].conn.as_mut().expect("open");
        let Phase::PeerAuthIn { from } = conn.phase else {
            unreachable!("an AUTH is processed only in PeerAuthIn");
        };
        let handshake = conn
            .handshake
            .take()
            .expect("PeerAuthIn keeps its handshake");
        let verified = verify_auth(
            secret,
            &handshake.hello_payload,
            &handshake.acceptor_nonce,
            payload,
        )
        .and_then(|()| Hello::decode(&handshake.hello_payload));
        let hello = match verified {
            Ok(hello) => hello,
            Err(error) => {
                self.peer_reject(slot, error, events);
                return false;
            }
        };
        let peers_max = self.peer_config().peers_max;
        if self.peers_inbound.len() >= peers_max && !self.peers_inbound.contains_key(&from) {
            self.peer_reject(slot, PeerError::TooManyPeers, events);
            return false;
        }
        let id = self.conn_id(slot);
        let conn = self.slots[slot].conn.as_mut().expect("open");
        conn.phase = Phase::PeerIn { from };
        // An authenticated peer: it no longer counts against the handshake limit, and no limit
        // of clients applies to it.
        self.handshakes_count -= 1;
        debug!(
            "{id} ({}): peer {from} at {} authenticated (incarnation {:#x})",
            conn.peer, hello.address, hello.incarnation
        );
        // A restarted peer: the outbound connection to it may lead to its dead process (a
        // half-open socket that could take minutes of TCP retransmits to fail). It is stale if
        // it was connected before the node's previous inbound connection ended, or while that
        // one is still open.
        if let Some(link) = self.peers.get_mut(&from) {
            let restarted = link
                .incarnation_seen
                .is_some_and(|seen| seen != hello.incarnation);
            link.incarnation_seen = Some(hello.incarnation);
            let inbound_closed_at = link.inbound_closed_at.take();
            if let (true, LinkState::Connected { slot: out, since }) = (restarted, link.state) {
                if inbound_closed_at.is_none_or(|closed| since <= closed) {
                    info!("peer {from} restarted: redialling {}", link.address);
                    self.close_slot(out, CloseReason::PeerRestarted, Some(events));
                }
            }
        }
        if let Some(old) = self.peers_inbound.insert(from, slot) {
            if old != slot {
                info!("peer {from}: a new inbound connection replaces the previous one");
                self.close_slot(old, CloseReason::Replaced, Some(events));
            }
        }
        events.push(Event::PeerConnected {
            node: from,
            direction: PeerDirection::Inbound,
            address: hello.address,
        });
        true
    }

    /// Closes an inbound connection that broke the peer protocol, logging the first refusal of
    /// each kind from each address at warn level (a misconfigured node redials every second).
    fn peer_reject(&mut self, slot: usize, error: PeerError, events: &mut Vec<Event>) {
        let conn = self.slots[slot].conn.as_ref().expect("open");
        let key = (conn.peer.ip(), std::mem::discriminant(&error));
        let first = self.peer_rejections_logged.len() < REJECTIONS_LOGGED_MAX
            && self.peer_rejections_logged.insert(key);
        let id = self.conn_id(slot);
        if first {
            warn!("{id} ({}): peer refused: {error}; closing", conn.peer);
        } else {
            debug!("{id} ({}): peer refused: {error}; closing", conn.peer);
        }
        self.close_slot(slot, CloseReason::Peer(error), Some(events));
    }

    /// Bookkeeping after a peer connection closed (called by `close_slot`); returns the event
    /// for the host, if any.
    pub(super) fn peer_closed(
        &mut self,
        slot: usize,
        phase: Phase,
        reason: CloseReason,
    ) -> Option<Event> {
        match phase {
            Phase::PeerHello | Phase::PeerAuthIn { .. } => None,
            Phase::PeerIn { from } => {
                if self.peers_inbound.get(&from) == Some(&slot) {
                    self.peers_inbound.remove(&from);
                    if let Some(link) = self.peers.get_mut(&from) {
                        link.inbound_closed_at = Some(Instant::now());
                    }
                }
                debug!("peer {from}: inbound connection closed: {reason:?}");
                Some(Event::PeerDisconnected {
                    node: from,
                    direction: PeerDirection::Inbound,
                    reason,
                    frames_dropped: 0,
                })
            }
            Phase::PeerDialing { to } | Phase::PeerAuthOut { to } | Phase::PeerOut { to } => {
                let link = self
                    .peers
                    .get(&to)
                    .expect("an outbound connection's link exists");
                assert_eq!(
                    link.slot(),
                    Some(slot),
                    "peer {to}: link and connection disagree"
                );
                let since = match link.state {
                    LinkState::Connected { since, .. } => Some(since),
                    _ => None,
                };
                Some(self.peer_link_down(to, reason, since))
            }
            Phase::Handshake | Phase::Client(_) => unreachable!("not a peer connection"),
        }
    }

    /// The outbound connection to `to` failed or closed (or a dial could not start): drops the
    /// queued frames, picks the redial delay, and says so to the host.
    fn peer_link_down(&mut self, to: u64, reason: CloseReason, up_since: Option<Instant>) -> Event {
        let now = Instant::now();
        let backoff = self
            .backoff
            .as_mut()
            .expect("peer links exist only with a peer config");
        let link = self.peers.get_mut(&to).expect("caller checked");
        let dropped = link.queue.clear(&mut self.buffer_pool);
        link.stats.frames_dropped_disconnect += dropped;
        let delay = match reason {
            // The host moved or forgot the peer, or the peer restarted: nothing failed.
            CloseReason::Host | CloseReason::PeerRestarted => Duration::ZERO,
            _ => {
                let stable = up_since.is_some_and(|since| now - since >= backoff.max);
                if stable {
                    link.stats.backoff_attempt = 0;
                } else {
                    link.stats.failures += 1;
                }
                let delay = backoff.delay(link.stats.backoff_attempt);
                link.stats.backoff_attempt = link.stats.backoff_attempt.saturating_add(1);
                delay
            }
        };
        link.stats.backoff_last = Some(delay);
        link.state = LinkState::DialAt(now + delay);
        let message = format!(
            "peer {to} at {}: {} ({reason:?}), {dropped} frames dropped; redial in {delay:?}",
            link.address,
            if up_since.is_some() {
                "connection lost"
            } else {
                "dial failed"
            },
        );
        if link.stats.backoff_attempt == 1 {
            info!("{message}");
        } else {
            debug!("{message}");
        }
        Event::PeerDisconnected {
            node: to,
            direction: PeerDirection::Outbound,
            reason,
            frames_dropped: dropped,
        }
    }

    /// Why the sweep should close this peer connection, if it should.
    pub(super) fn peer_sweep_reason(&self, conn: &Conn, now: Instant) -> Option<CloseReason> {
        let config = self.peer_config();
        match conn.phase {
            Phase::PeerHello | Phase::PeerAuthIn { .. } => (now.duration_since(conn.accepted_at)
                > self.config.handshake_timeout)
                .then_some(CloseReason::HandshakeTimeout),
            // The dial and the handshake together must fit in the connect timeout.
            Phase::PeerAuthOut { .. } => (now.duration_since(conn.accepted_at)
                > config.connect_timeout)
                .then_some(CloseReason::ConnectTimeout),
            Phase::PeerIn { .. } => (now.duration_since(conn.active_at) > config.idle_timeout)
                .then_some(CloseReason::IdleTimeout),
            Phase::PeerDialing { .. } => (now.duration_since(conn.accepted_at)
                > config.connect_timeout)
                .then_some(CloseReason::ConnectTimeout),
            Phase::PeerOut { to } => {
                let queued = self
                    .peers
                    .get(&to)
                    .is_some_and(|link| !link.queue.is_empty());
                let pending = queued || conn.out_pending_bytes() > 0;
                (pending && now.duration_since(conn.write_progress_at) > config.write_stall_timeout)
                    .then_some(CloseReason::WriteStalled)
            }
            Phase::Handshake | Phase::Client(_) => None,
        }
    }

    /// Queues a PING on every outbound connection idle for the keepalive interval, so the
    /// receiver's idle timeout only closes connections whose sender is gone.
    pub(super) fn peer_keepalive(&mut self, now: Instant) {
        let Some(config) = self.config.peer.as_ref() else {
            return;
        };
        for link in self.peers.values() {
            let LinkState::Connected { slot, .. } = link.state else {
                continue;
            };
            let conn = self.slots[slot]
                .conn
                .as_mut()
                .expect("a link's slot is open");
            if link.queue.is_empty()
                && conn.out_pending_bytes() == 0
                && now.duration_since(conn.active_at) >= config.keepalive_interval
            {
                conn.outbound.extend_from_slice(&PING_FRAME);
                conn.write_progress_at = now;
                conn.active_at = now;
                Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
            }
        }
    }
}

//! The reactor: one mio `Poll` on one thread owning the listener, every connection and the
//! timers. The host (the node loop) drives it:
//!
//! ```text
//! loop {                                   // the one loop that never ends
//!     reactor.poll(&mut events, timeout)?; // flush, wait, read, decode, fire timers
//!     for event in events.drain(..) {      // Connected, Request, Drained, Closed, Timer,
//!         ...                              // PeerConnected, PeerDisconnected, PeerFrame:
//!     }                                    // feed core/raft, gather work as a batch
//!     reactor.send(conn, &response)?;      // or send_encoded for streamed ROWS batches
//!     reactor.peer_send(to, address, bytes)?; // raft messages, opaque here
//! }
//! ```
//!
//! The reactor never blocks except inside `poll`, never calls the host, and bounds every buffer:
//! a connection gets one request at a time (the next is parsed only after the final response to
//! the previous one was queued), pipelined bytes wait in a buffer of at most
//! [`PIPELINE_BYTES_MAX`], and reading stops while more than `out_bytes_high` bytes of responses
//! wait to be written. A client that stops reading therefore stops being read, and is closed once
//! its socket made no write progress for `write_stall_timeout`. The host streams large results
//! batch by batch: it sends a non-final ROWS batch, and produces the next one on `Drained`.
//!
//! The peer transport (`peer_send`, `peer_set_address`, `peer_forget`, `peer_stats` and the
//! `Peer*` events) shares the listener and the slots: a connection whose first word is the peer
//! magic is a peer's inbound connection, and each peer sent to gets one outbound connection with
//! a bounded send queue, redialled with backoff. See `reactor/peer.rs` and ARCHITECTURE.md.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::conn::{Conn, IoOutcome, Phase};
use crate::peer::{NonceSource, PeerError};
use crate::peer_link::{Backoff, PeerLink};
use crate::protocol::{
    DecodeError, Greeting, Header, ProtocolVersion, Request, Response, HEADER_BYTES,
};
use crate::tls::TlsContext;

pub use crate::conn::{BUFFER_CAPACITY_KEEP_BYTES, PIPELINE_BYTES_MAX, READ_CHUNK_BYTES};
pub use crate::peer_link::PeerStats;
pub use peer::{system_lookup, PeerConfig, PeerDirection, PeerSendError};

mod http;
mod peer;

pub use http::{MetricsRequestId, HTTP_CONNECTIONS_MAX, HTTP_REQUEST_BYTES_MAX, HTTP_TIMEOUT};

/// Default largest request body: 64 MiB, room for large blobs in parameters.
pub const MESSAGE_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Default limit of client connections.
pub const CONNECTIONS_MAX: usize = 1024;
/// Default limit of connections that have not said what they are yet (their first word) or
/// are peers not yet authenticated.
pub const HANDSHAKES_MAX: usize = 1024;
/// Default budget for client request bytes buffered beyond each connection's first
/// `BUFFER_CAPACITY_KEEP_BYTES`, all client connections together: one 64 MiB request fits, a
/// crowd of them does not (past it: FAILURE, then close).
pub const CLIENT_BUFFER_BYTES_MAX: usize = 128 * 1024 * 1024;
/// dqlite's code for "out of memory" (SQLITE_NOMEM), sent when the client buffer budget is spent.
pub const FAILURE_CODE_NOMEM: u64 = 7;
/// Default outbound high-water mark: above it the connection is not read.
pub const OUT_BYTES_HIGH: usize = 256 * 1024;
/// Default time a new connection has to send its version word.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an idle client connection (no request in flight, nothing to write) is kept.
/// Pooled client connections legitimately sit idle, and no client sends heartbeats; but an idle
/// connection holds a slot of the client limit.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a connection may hold unwritten responses without write progress.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on armed timers.
pub const TIMERS_MAX: usize = 1024;
/// Connections accepted per poll before the others get their turn.
pub const ACCEPTS_PER_POLL_MAX: usize = 64;
/// Reads per connection per poll: a fast sender cannot starve the others.
pub const READS_PER_POLL_MAX: usize = 16;
/// How often connection timeouts are checked (more often when the peer keepalive interval is
/// short: a keepalive is sent by the sweep, and must not be late by a whole sweep).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Readiness events taken from the OS per poll.
const POLL_EVENTS_CAPACITY: usize = 256;

const _: () = assert!(PIPELINE_BYTES_MAX < OUT_BYTES_HIGH);
const _: () = assert!(ACCEPTS_PER_POLL_MAX <= CONNECTIONS_MAX);

const LISTENER: Token = Token(0);
/// The token of the waker ([`Reactor::waker`]); connections use `Token(slot + 1)`, bounded by
/// the connection limits, so they never reach it.
const WAKER: Token = Token(usize::MAX);
// The metrics server's tokens sit between the connections' (below half) and the waker's.
const _: () = assert!(http::HTTP_TOKEN_LOW > (WAKER.0 - 1) / 2);

/// Wakes a reactor blocked in [`Reactor::poll`] from another thread (a signal-handling thread,
/// for example): that `poll` returns early, with no event for the wake itself; the host then
/// checks whatever flag the other thread set. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Waker(std::sync::Arc<mio::Waker>);

impl Waker {
    /// Makes the reactor's current or next `poll` return.
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// Limits and timeouts of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Largest request body accepted; a larger header gets FAILURE 1005 and the connection is
    /// closed (its body cannot be skipped safely).
    pub message_body_bytes_max: u64,
    /// Client connections served at once: a connection whose first word says it is a client
    /// is closed past it. Peer connections do not count (they have their own bounds).
    pub connections_max: usize,
    /// Connections that have not said what they are yet, and peer connections not yet
    /// authenticated: new connections past it are accepted and closed at once.
    pub handshakes_max: usize,
    /// Outbound bytes above which a connection is not read.
    pub out_bytes_high: usize,
    /// Time to receive the version word.
    pub handshake_timeout: Duration,
    /// Idle time after which a client connection is closed; `None` keeps it forever.
    pub idle_timeout: Option<Duration>,
    /// Time without write progress after which a connection with queued output is closed.
    pub write_stall_timeout: Duration,
    /// Timers armed at once.
    pub timers_max: usize,
    /// Bytes of partly received client requests buffered, beyond each connection's first
    /// `BUFFER_CAPACITY_KEEP_BYTES`, over all client connections. A request that would need
    /// more is answered with FAILURE 7 and its connection closed. Buffers grow as bytes arrive,
    /// never on the size a header announces.
    pub client_buffer_bytes_max: usize,
    /// The peer transport: `None` refuses peer connections (a client-only reactor).
    pub peer: Option<PeerConfig>,
    /// TLS for every connection, clients and peers, both directions (`None`: plaintext).
    /// A TLS reactor refuses plaintext.
    pub tls: Option<TlsContext>,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            message_body_bytes_max: MESSAGE_BODY_BYTES_MAX,
            connections_max: CONNECTIONS_MAX,
            handshakes_max: HANDSHAKES_MAX,
            out_bytes_high: OUT_BYTES_HIGH,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: Some(IDLE_TIMEOUT),
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            timers_max: TIMERS_MAX,
            client_buffer_bytes_max: CLIENT_BUFFER_BYTES_MAX,
            peer: None,
            tls: None,
        }
    }
}

/// A connection, as the host names it. The generation makes a stale id (of a closed connection
/// whose slot was reused) harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// A connection id made up by a host that simulates connections (the node's simulated
    /// network). A reactor names its connections itself: an id made this way never names one
    /// of a reactor's connections unless the reactor handed it out.
    pub fn from_parts(slot: u32, generation: u32) -> ConnId {
        ConnId { slot, generation }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {}.{}", self.slot, self.generation)
    }
}

/// A timer, as the host names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

impl TimerId {
    /// A timer id made up by a host that simulates the reactor's timers (the node's simulated
    /// network).
    pub fn from_raw(id: u64) -> TimerId {
        TimerId(id)
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its side.
    PeerClosed,
    /// The socket failed (reset, broken pipe…).
    Io(io::ErrorKind),
    /// No version word within the handshake timeout.
    HandshakeTimeout,
    /// Idle past the idle timeout.
    IdleTimeout,
    /// Queued output made no progress within the write stall timeout.
    WriteStalled,
    /// A frame that cannot be skipped (oversized); FAILURE was sent first.
    Malformed(DecodeError),
    /// The host called `close`, or (peer connections) forgot the peer or changed its address.
    Host,
    /// An outbound peer dial failed (refused, unreachable, address not resolvable).
    ConnectFailed(io::ErrorKind),
    /// An outbound peer dial did not complete within `connect_timeout`.
    ConnectTimeout,
    /// The peer protocol was violated or the hello refused (wrong cluster, node id 0...).
    Peer(PeerError),
    /// A newer inbound connection from the same node took this one's place.
    Replaced,
    /// Its request would have taken the client request buffers past
    /// `ReactorConfig::client_buffer_bytes_max`; FAILURE 7 was sent first.
    BufferBudget,
    /// The peer announced a new incarnation (it restarted), so this outbound connection may lead
    /// to its previous, dead process; it is redialled at once.
    PeerRestarted,
    /// A client connection past the client limit (`connections_max`).
    TooManyClients,
}

/// What happened, for the host to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client connected and sent a valid version word.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The client's address.
        peer: SocketAddr,
        /// The protocol version it speaks.
        version: ProtocolVersion,
    },
    /// A decoded request. The host owes exactly one final response (a ROWS stream counts as
    /// one: its last batch ends with DONE); no other request of this connection arrives before.
    Request {
        /// The connection.
        conn: ConnId,
        /// The request.
        request: Request,
    },
    /// Everything queued on the connection was written after a non-final ROWS batch: time to
    /// produce the next batch.
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// A connection announced with `Connected` ended; its id is dead.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A peer connection is up: an outbound one connected (greeting and hello queued first), or
    /// an inbound one sent a valid hello.
    PeerConnected {
        /// The remote node.
        node: u64,
        /// Which of the pair's two connections.
        direction: PeerDirection,
        /// Outbound: the address dialled; inbound: the address the peer advertised.
        address: String,
    },
    /// A peer connection ended, or (outbound) a dial attempt failed: the host may report the
    /// node unreachable. Outbound, the frames still queued were dropped; the reactor redials
    /// after a backoff delay unless the host forgot the peer.
    PeerDisconnected {
        /// The remote node.
        node: u64,
        /// Which of the pair's two connections.
        direction: PeerDirection,
        /// Why.
        reason: CloseReason,
        /// Frames dropped with it (outbound only; 0 inbound).
        frames_dropped: u64,
    },
    /// One message frame from a peer, in the order the peer sent it. The bytes are owned: the
    /// host may wrap them in an `Arc` and decode raft entries as windows into them.
    PeerFrame {
        /// The sender's node id (from its validated hello).
        from: u64,
        /// The opaque payload.
        frame: Vec<u8>,
    },
    /// `GET /metrics` on the metrics listener ([`Reactor::bind_metrics`]): answer it with
    /// [`Reactor::metrics_respond`].
    MetricsRequest {
        /// The request.
        request: MetricsRequestId,
    },
    /// A timer armed with `timer_after` fired.
    Timer {
        /// The timer.
        timer: TimerId,
        /// The token given when arming it.
        token: u64,
    },
}

/// Whether a response sent with [`Reactor::send_encoded`] completes its request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The final response (any response but a ROWS batch ending with PART).
    Final,
    /// A non-final ROWS batch: more follow, after `Drained`.
    More,
}

/// Why the reactor refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closed (or the id is stale).
    Closed,
    /// The connection has no request waiting for an answer: the protocol has no unsolicited
    /// messages.
    NoRequestPending,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => write!(f, "connection closed"),
            SendError::NoRequestPending => write!(f, "no request is waiting for a response"),
        }
    }
}

impl std::error::Error for SendError {}

/// Arming a timer failed: `timers_max` timers are armed already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimersFull;

impl fmt::Display for TimersFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "too many timers armed")
    }
}

impl std::error::Error for TimersFull {}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The event loop's I/O half. See the module documentation.
#[derive(Debug)]
pub struct Reactor {
    poll: Poll,
    mio_events: Events,
    listener: TcpListener,
    /// The listener may have connections left to accept (the last accept round stopped early).
    listener_backlog: bool,
    config: ReactorConfig,
    // Invariant: slots.len() <= connections_max + handshakes_max + 2 × peers_max (clients,
    // unclassified or unauthenticated connections, one inbound and one outbound per peer);
    // Token(i + 1) is slots[i].
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    connections_count: usize,
    /// Open connections in phase Handshake, PeerHello or PeerAuthIn (bounded by handshakes_max).
    handshakes_count: usize,
    /// Open client connections (bounded by connections_max).
    clients_count: usize,
    /// Sum of every client connection's `Conn::charged` (bounded by `client_buffer_bytes_max`).
    client_buffered_bytes: usize,
    /// A connection limit was hit and logged; re-armed when the counts drop below them.
    limit_logged: bool,
    /// Connections with queued output to write.
    flush_list: Vec<usize>,
    /// Connections to parse or read again without a readiness event (a response was sent, a
    /// limit lifted, the read budget ran out).
    revisit_list: Vec<usize>,
    /// Events produced outside `poll` (closes requested by the host).
    pending_events: Vec<Event>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    // Invariant: every armed timer's id is in timers_live; cancelled ones linger in the heap
    // until popped or compacted.
    timers_live: HashMap<u64, u64>,
    timer_next_id: u64,
    sweep_at: Instant,
    sweep_interval: Duration,
    /// The nodes this reactor sends to.
    // Invariant: peers.len() <= peer.peers_max; every LinkState::Dialing slot holds a connection
    // in phase PeerDialing/PeerAuthOut, every Connected one in PeerOut, naming this peer, and
    // vice versa.
    peers: HashMap<u64, PeerLink>,
    /// The open inbound connection of each node (a newer hello replaces an older connection).
    peers_inbound: HashMap<u64, usize>,
    /// Draws the backoff jitter.
    backoff: Option<Backoff>,
    /// The incarnation this reactor announces in its hellos.
    incarnation: u64,
    /// Draws the peer handshake nonces (None without a peer transport).
    nonces: Option<NonceSource>,
    /// Resolves peer host names off the loop (started at the first name to resolve).
    resolver: Option<peer::Resolver>,
    /// Buffers for `peer_send_with`, reused once their frame is written.
    buffer_pool: Vec<Vec<u8>>,
    /// Refused peer hellos already logged at warn level, by source address and error kind.
    peer_rejections_logged: HashSet<(IpAddr, std::mem::Discriminant<PeerError>)>,
    /// Wakes `poll` from another thread (signal handling), created on first request.
    waker: Option<Waker>,
    /// The metrics listener, when bound.
    http: Option<http::HttpServer>,
}

impl Reactor {
    /// Binds the listener. `127.0.0.1:0` picks a free port ([`Reactor::local_addr`] tells it).
    pub fn bind(address: SocketAddr, config: ReactorConfig) -> io::Result<Reactor> {
        assert!(config.connections_max > 0);
        assert!(config.handshakes_max > 0);
        assert!(
            config.connections_max.saturating_add(config.handshakes_max) < (WAKER.0 - 1) / 2,
            "connection tokens stay below the metrics server's and the waker's"
        );
        assert!(config.timers_max > 0);
        let mut config = config;
        let mut listener = TcpListener::bind(address)?;
        if let Some(peer) = config.peer.as_mut() {
            if peer.address.is_empty() {
                peer.address = listener.local_addr()?.to_string();
            }
            peer.validate();
        }
        let backoff = config.peer.as_ref().map(|peer| {
            Backoff::new(
                peer.backoff_initial,
                peer.backoff_max,
                peer.seed ^ peer.node_id.rotate_left(32),
            )
        });
        let incarnation = config
            .peer
            .as_ref()
            .map_or(0, |peer| Backoff::incarnation(peer.seed));
        let nonces = match config.peer {
            Some(_) => Some(NonceSource::from_os()?),
            None => None,
        };
        let sweep_interval = config.peer.as_ref().map_or(SWEEP_INTERVAL, |peer| {
            SWEEP_INTERVAL
                .min(peer.keepalive_interval / 4)
                .max(Duration::from_millis(1))
        });
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            mio_events: Events::with_capacity(POLL_EVENTS_CAPACITY),
            listener,
            listener_backlog: false,
            slots: Vec::new(),
            free_slots: Vec::new(),
            connections_count: 0,
            handshakes_count: 0,
            clients_count: 0,
            client_buffered_bytes: 0,
            limit_logged: false,
            flush_list: Vec::new(),
            revisit_list: Vec::new(),
            pending_events: Vec::new(),
            timers: BinaryHeap::new(),
            timers_live: HashMap::new(),
            timer_next_id: 1,
            sweep_at: Instant::now() + sweep_interval,
            sweep_interval,
            peers: HashMap::new(),
            peers_inbound: HashMap::new(),
            backoff,
            incarnation,
            nonces,
            resolver: None,
            buffer_pool: Vec::new(),
            peer_rejections_logged: HashSet::new(),
            waker: None,
            http: None,
            config,
        })
    }

    /// Listens for metrics scrapes (`GET /metrics`, plain HTTP/1.1) on `address`; returns the
    /// bound address. See [`Event::MetricsRequest`].
    pub fn bind_metrics(&mut self, address: SocketAddr) -> io::Result<SocketAddr> {
        let server = http::HttpServer::bind(self.poll.registry(), address)?;
        let bound = server.local_addr()?;
        self.http = Some(server);
        Ok(bound)
    }

    /// Answers a metrics request with `body`; false if its connection is gone.
    pub fn metrics_respond(
        &mut self,
        request: MetricsRequestId,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        match self.http.as_mut() {
            Some(http) => http.respond(self.poll.registry(), request, content_type, body),
            None => false,
        }
    }

    /// A handle that wakes this reactor's `poll` from another thread. A reactor has one waker;
    /// every call returns a handle to it.
    pub fn waker(&mut self) -> io::Result<Waker> {
        if self.waker.is_none() {
            let waker = mio::Waker::new(self.poll.registry(), WAKER)?;
            self.waker = Some(Waker(std::sync::Arc::new(waker)));
        }
        Ok(self.waker.clone().expect("created above"))
    }

    /// The listening address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections currently open (announced or still in the handshake).
    pub fn connections_count(&self) -> usize {
        self.connections_count
    }

    /// Bytes queued on a connection and not yet written (0 for a closed one).
    pub fn out_pending_bytes(&self, conn: ConnId) -> usize {
        self.conn(conn).map_or(0, Conn::out_pending_bytes)
    }

    /// Bytes buffered on a connection: received and not yet consumed, queued and not yet
    /// written. `None` for a closed connection. For tests and metrics.
    pub fn buffered_bytes(&self, conn: ConnId) -> Option<(usize, usize)> {
        self.conn(conn)
            .map(|c| (c.inbound.len(), c.out_pending_bytes()))
    }

    /// Bytes of client request buffers charged to `client_buffer_bytes_max` now.
    pub fn client_buffered_bytes(&self) -> usize {
        self.client_buffered_bytes
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_id(&self, slot: usize) -> ConnId {
        ConnId {
            slot: u32::try_from(slot).expect("slots are bounded by the connection limits"),
            generation: self.slots[slot].generation,
        }
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.conn(id).map(|_| id.slot as usize)
    }

    /// Queues the final or only response to the pending request of `conn`.
    pub fn send(&mut self, conn: ConnId, response: &Response) -> Result<(), SendError> {
        let completion = if response.is_final() {
            Completion::Final
        } else {
            Completion::More
        };
        let version = match self.conn(conn).map(|c| c.phase) {
            Some(Phase::Client(version)) => version,
            _ => ProtocolVersion::V1,
        };
        self.send_encoded(conn, |out| {
            response.encode(out, version);
            completion
        })
    }

    /// Queues a response that `encode` appends to the connection's output buffer (a ROWS batch
    /// written with [`crate::protocol::RowsBatch`], without an intermediate copy). `encode` must
    /// append whole messages and say whether the answer is complete; the one exception is a
    /// large message streamed in pieces (a FILES answer): its header must announce the whole
    /// length, every piece but the last returns `More`, and the next piece is appended on
    /// `Drained`.
    pub fn send_encoded(
        &mut self,
        conn: ConnId,
        encode: impl FnOnce(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError> {
        let slot = self.slot_of(conn).ok_or(SendError::Closed)?;
        let c = self.slots[slot].conn.as_mut().expect("slot_of checked it");
        if !c.awaiting_response {
            return Err(SendError::NoRequestPending);
        }
        if c.out_pending_bytes() == 0 {
            c.write_progress_at = Instant::now();
        }
        let completion = encode(&mut c.outbound);
        match completion {
            Completion::Final => {
                c.awaiting_response = false;
                c.drain_wanted = false;
                // The next pipelined request may already be buffered.
                Self::queue(&mut self.revisit_list, &mut c.revisit_queued, slot);
            }
            Completion::More => c.drain_wanted = true,
        }
        Self::queue(&mut self.flush_list, &mut c.flush_queued, slot);
        Ok(())
    }

    /// Closes a connection now, dropping unwritten output; `Closed` follows from `poll`.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(slot) = self.slot_of(conn) {
            self.close_slot(slot, CloseReason::Host, None);
        }
    }

    /// Closes a connection once its queued output is written (say, after a last FAILURE).
    pub fn close_after_flush(&mut self, conn: ConnId) {
        if let Some(slot) = self.slot_of(conn) {
            let c = self.slots[slot].conn.as_mut().expect("slot_of checked it");
            c.close_after_flush = Some(CloseReason::Host);
            Self::queue(&mut self.flush_list, &mut c.flush_queued, slot);
        }
    }

    /// Arms a one-shot timer firing `Event::Timer { token, .. }` after `delay`.
    pub fn timer_after(&mut self, delay: Duration, token: u64) -> Result<TimerId, TimersFull> {
        if self.timers_live.len() >= self.config.timers_max {
            return Err(TimersFull);
        }
        let id = self.timer_next_id;
        self.timer_next_id += 1;
        self.timers_live.insert(id, token);
        self.timers.push(Reverse((Instant::now() + delay, id)));
        // Cancelled timers linger in the heap; compact before they outnumber the live ones.
        if self.timers.len() > 2 * self.timers_live.len() + 64 {
            let live = &self.timers_live;
            self.timers.retain(|Reverse((_, id))| live.contains_key(id));
        }
        Ok(TimerId(id))
    }

    /// Cancels a timer; false if it already fired or was cancelled.
    pub fn timer_cancel(&mut self, timer: TimerId) -> bool {
        self.timers_live.remove(&timer.0).is_some()
    }

    fn queue(list: &mut Vec<usize>, queued: &mut bool, slot: usize) {
        if !*queued {
            *queued = true;
            list.push(slot);
        }
    }

    /// Replaces the TLS configuration (certificate rotation): connections opened from now on
    /// use `tls`; open ones keep their session until they close. A plaintext reactor stays one.
    pub fn set_tls(&mut self, tls: TlsContext) -> bool {
        if self.config.tls.is_none() {
            return false;
        }
        self.config.tls = Some(tls);
        true
    }

    /// Whether this reactor speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.config.tls.is_some()
    }

    /// One turn of the event loop: writes queued output, waits for readiness (at most `timeout`,
    /// less when a timer or a timeout check is due, not at all when events are ready already),
    /// accepts, reads and decodes, fires due timers, enforces timeouts. Appends what happened to
    /// `events`.
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.peer_dial_due(events);
        self.flush_queued(events);
        self.revisit_queued(events);
        events.append(&mut self.pending_events);
        let now = Instant::now();
        let mut wait = timeout;
        if let Some(Reverse((deadline, _))) = self.timers.peek() {
            wait = Some(min_wait(wait, deadline.saturating_duration_since(now)));
        }
        if self.connections_count > 0 || self.http.as_ref().is_some_and(|h| h.has_connections()) {
            wait = Some(min_wait(wait, self.sweep_at.saturating_duration_since(now)));
        }
        if let Some(dial_at) = self.peer_dial_next_at() {
            wait = Some(min_wait(wait, dial_at.saturating_duration_since(now)));
        }
        if !events.is_empty() || self.listener_backlog || !self.revisit_list.is_empty() {
            wait = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.mio_events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut ready: Vec<(Token, bool, bool)> = Vec::with_capacity(POLL_EVENTS_CAPACITY);
        for event in self.mio_events.iter() {
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_write_closed();
            ready.push((event.token(), readable, writable));
        }
        for (token, readable, writable) in ready {
            if token == LISTENER {
                self.listener_backlog = true;
                continue;
            }
            if token == WAKER {
                continue; // The wake only ends the wait; the host checks why.
            }
            if let Some(http) = self.http.as_mut() {
                if token == http::HTTP_LISTENER {
                    http.accept(self.poll.registry());
                    continue;
                }
                if let Some(slot) = http::HttpServer::slot_of(token) {
                    http.ready(self.poll.registry(), slot, readable, events);
                    continue;
                }
            }
            let slot = token.0 - 1;
            if writable && self.slots.get(slot).is_some_and(|s| s.conn.is_some()) {
                self.flush_slot(slot, events);
            }
            if readable && self.slots.get(slot).is_some_and(|s| s.conn.is_some()) {
                self.read_slot(slot, events);
            }
        }
        if self.listener_backlog {
            self.accept()?;
        }
        self.peer_dial_due(events);
        self.flush_queued(events);
        self.fire_timers(events);
        if Instant::now() >= self.sweep_at {
            self.sweep(events);
        }
        events.append(&mut self.pending_events);
        Ok(())
    }

    fn accept(&mut self) -> io::Result<()> {
        for _ in 0..ACCEPTS_PER_POLL_MAX {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_backlog = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: the connection stays in the backlog;
                    // try again on the next poll rather than spin.
                    warn!("accept failed: {e}");
                    self.listener_backlog = false;
                    return Ok(());
                }
            };
            self.accept_one(stream, peer)?;
        }
        // Budget spent: more may be waiting; `listener_backlog` stays set.
        Ok(())
    }

    fn accept_one(&mut self, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        if self.handshakes_count >= self.config.handshakes_max {
            if !self.limit_logged {
                warn!(
                    "{} connections have not finished their handshake: refusing new \
                     connections (from {peer})",
                    self.config.handshakes_max
                );
                self.limit_logged = true;
            }
            drop(stream);
            return Ok(());
        }
        let slot = self.slot_alloc();
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay for {peer}: {e}");
        }
        self.poll.registry().register(
            &mut stream,
            Token(slot + 1),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = Conn::new(stream, peer, Instant::now());
        if let Some(tls) = &self.config.tls {
            match tls.server_session() {
                Ok(session) => conn.tls = Some(Box::new(session)),
                Err(e) => {
                    warn!("{peer}: {e}; closing");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    self.free_slots.push(slot);
                    return Ok(());
                }
            }
        }
        self.slots[slot].conn = Some(conn);
        self.connections_count += 1;
        self.handshakes_count += 1;
        debug!("accepted {peer} as {}", self.conn_id(slot));
        Ok(())
    }

    /// A free slot for a new connection. The caller fills it (or puts it back on the free list).
    fn slot_alloc(&mut self) -> usize {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.slots.len() - 1
            }
        };
        assert!(self.slots[slot].conn.is_none());
        slot
    }

    fn close_slot(&mut self, slot: usize, reason: CloseReason, events: Option<&mut Vec<Event>>) {
        let Some(mut conn) = self.slots[slot].conn.take() else {
            return;
        };
        let id = ConnId {
            slot: slot as u32,
            generation: self.slots[slot].generation,
        };
        if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
            debug!("deregister {id}: {e}");
        }
        self.slots[slot].generation = self.slots[slot].generation.wrapping_add(1);
        self.free_slots.push(slot);
        self.connections_count -= 1;
        self.client_buffered_bytes -= conn.charged;
        match conn.phase {
            Phase::Handshake | Phase::PeerHello | Phase::PeerAuthIn { .. } => {
                self.handshakes_count -= 1
            }
            Phase::Client(_) => self.clients_count -= 1,
            _ => {}
        }
        if self.handshakes_count < self.config.handshakes_max
            && self.clients_count < self.config.connections_max
        {
            self.limit_logged = false;
        }
        debug!("closed {id} ({}): {reason:?}", conn.peer);
        if conn.phase.is_peer() {
            if let Some(event) = self.peer_closed(slot, conn.phase, reason) {
                match events {
                    Some(events) => events.push(event),
                    None => self.pending_events.push(event),
                }
            }
            return;
        }
        if conn.announced {
            let event = Event::Closed { conn: id, reason };
            match events {
                Some(events) => events.push(event),
                None => self.pending_events.push(event),
            }
        }
    }

    fn flush_queued(&mut self, events: &mut Vec<Event>) {
        let list = std::mem::take(&mut self.flush_list);
        for &slot in &list {
            if let Some(conn) = self.slots[slot].conn.as_mut() {
                conn.flush_queued = false;
                self.flush_slot(slot, events);
            }
        }
        // Keep the allocation for the next turn.
        let mut list = list;
        list.clear();
        if self.flush_list.is_empty() {
            self.flush_list = list;
        }
    }

    fn flush_slot(&mut self, slot: usize, events: &mut Vec<Event>) {
        match self.slots[slot]
            .conn
            .as_ref()
            .expect("caller checked")
            .phase
        {
            Phase::PeerDialing { .. } => return self.peer_connect_check(slot, events),
            Phase::PeerOut { .. } => return self.peer_flush(slot, events),
            Phase::Handshake
            | Phase::Client(_)
            | Phase::PeerHello
            | Phase::PeerAuthIn { .. }
            | Phase::PeerAuthOut { .. }
            | Phase::PeerIn { .. } => {}
        }
        let now = Instant::now();
        let conn = self.slots[slot].conn.as_mut().expect("caller checked");
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
        if let Some(reason) = conn.close_after_flush.take() {
            self.close_slot(slot, reason, Some(events));
            return;
        }
        if conn.drain_wanted {
            conn.drain_wanted = false;
            events.push(Event::Drained {
                conn: ConnId {
                    slot: slot as u32,
                    generation: self.slots[slot].generation,
                },
            });
        }
        let conn = self.slots[slot].conn.as_mut().expect("still open");
        if conn.read_paused {
            Self::queue(&mut self.revisit_list, &mut conn.revisit_queued, slot);
        }
    }

    fn revisit_queued(&mut self, events: &mut Vec<Event>) {
        let list = std::mem::take(&mut self.revisit_list);
        for slot in list {
            if let Some(conn) = self.slots[slot].conn.as_mut() {
                conn.revisit_queued = false;
                self.read_slot(slot, events);
            }
        }
    }

    /// Parses what is buffered, then reads while the limits allow, parsing after every read.
    fn read_slot(&mut self, slot: usize, events: &mut Vec<Event>) {
        match self.slots[slot]
            .conn
            .as_ref()
            .expect("caller checked")
            .phase
        {
            Phase::PeerDialing { .. } => return self.peer_connect_check(slot, events),
            Phase::PeerOut { .. } => return self.peer_read_outbound(slot, events),
            Phase::PeerHello
            | Phase::PeerAuthIn { .. }
            | Phase::PeerAuthOut { .. }
            | Phase::PeerIn { .. } => return self.peer_read_slot(slot, events),
            Phase::Handshake | Phase::Client(_) => {}
        }
        let out_bytes_high = self.config.out_bytes_high;
        for _ in 0..READS_PER_POLL_MAX {
            if !self.process_inbound(slot, events) {
                return; // closed
            }
            let conn = self.slots[slot].conn.as_mut().expect("open");
            if conn.phase.is_peer() {
                // The first word made it a peer connection: the peer transport reads it now.
                return self.peer_read_slot(slot, events);
            }
            let paused = conn.close_after_flush.is_some()
                || conn.out_pending_bytes() > out_bytes_high
                || (conn.awaiting_response && conn.inbound.len() >= PIPELINE_BYTES_MAX);
            conn.read_paused = paused;
            if paused {
                return;
            }
            match conn.read_once(Instant::now()) {
                IoOutcome::Progress => {}
                IoOutcome::Blocked => {
                    self.process_inbound(slot, events);
                    return;
                }
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
        // Read budget spent with data possibly left in the socket: come back next turn (the
        // edge-triggered readiness will not fire again for bytes already there).
        let conn = self.slots[slot].conn.as_mut().expect("open");
        Self::queue(&mut self.revisit_list, &mut conn.revisit_queued, slot);
    }

    /// Handles the buffered bytes: the version word, then frames while no request is pending.
    /// Returns false if the connection was closed.
    fn process_inbound(&mut self, slot: usize, events: &mut Vec<Event>) -> bool {
        let body_bytes_max = self.config.message_body_bytes_max;
        let out_bytes_high = self.config.out_bytes_high;
        // Bounded: every turn consumes a frame or returns.
        loop {
            let id = self.conn_id(slot);
            let conn = self.slots[slot].conn.as_mut().expect("open");
            if conn.awaiting_response || conn.close_after_flush.is_some() {
                return true;
            }
            if conn.out_pending_bytes() > out_bytes_high {
                // Pipelined requests wait until the client has read its answers: parsing them
                // now would grow the outbound buffer past the mark.
                conn.read_paused = true;
                return true;
            }
            if conn.phase == Phase::Handshake {
                let Some(word) = conn.inbound.first_chunk::<8>() else {
                    return true;
                };
                let word = u64::from_le_bytes(*word);
                conn.consume_inbound(8);
                match Greeting::decode(word) {
                    Ok(Greeting::Client(_))
                        if self.clients_count >= self.config.connections_max =>
                    {
                        if !self.limit_logged {
                            warn!(
                                "client connection limit of {} reached: closing {} (peers are \
                                 still admitted)",
                                self.config.connections_max, conn.peer
                            );
                            self.limit_logged = true;
                        }
                        self.close_slot(slot, CloseReason::TooManyClients, Some(events));
                        return false;
                    }
                    Ok(Greeting::Client(version)) => {
                        conn.phase = Phase::Client(version);
                        self.handshakes_count -= 1;
                        self.clients_count += 1;
                        conn.announced = true;
                        events.push(Event::Connected {
                            conn: id,
                            peer: conn.peer,
                            version,
                        });
                        continue;
                    }
                    Ok(Greeting::Peer) if self.config.peer.is_some() => {
                        // The peer transport takes over; its hello comes next.
                        conn.phase = Phase::PeerHello;
                        return true;
                    }
                    Ok(Greeting::Peer) => {
                        info!(
                            "{}: peer connection, but this reactor has no peer transport",
                            conn.peer
                        );
                        self.close_slot(slot, CloseReason::PeerClosed, Some(events));
                        return false;
                    }
                    Err(error) => {
                        // As dqlite: close without writing anything.
                        warn!("{}: {error}; closing", conn.peer);
                        self.close_slot(slot, CloseReason::Malformed(error), Some(events));
                        return false;
                    }
                }
            }
            let Some(header) = conn.inbound.first_chunk::<HEADER_BYTES>() else {
                return true;
            };
            let header = Header::decode(*header);
            let body_bytes = match header.body_bytes_checked(body_bytes_max) {
                Ok(body_bytes) => body_bytes,
                Err(error @ DecodeError::EmptyBody { .. }) => {
                    // The frame is just the header: answer and carry on.
                    conn.consume_inbound(HEADER_BYTES);
                    Self::answer_malformed(conn, &error, id);
                    Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
                    continue;
                }
                Err(error) => {
                    // The body cannot be skipped without reading it: answer, then close.
                    conn.inbound.clear();
                    Self::answer_malformed(conn, &error, id);
                    conn.close_after_flush = Some(CloseReason::Malformed(error));
                    Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
                    return true;
                }
            };
            let frame_bytes = HEADER_BYTES + body_bytes;
            if conn.inbound.len() < frame_bytes {
                // Grow with the bytes that arrived (doubling, never past the frame's end), so a
                // header alone costs nothing; growth beyond the first 64 KiB is charged to the
                // budget shared by all client connections.
                let len = conn.inbound.len();
                let wanted = frame_bytes.min(len + READ_CHUNK_BYTES);
                if conn.inbound.capacity() < wanted {
                    let capacity = frame_bytes.min(wanted.max(2 * conn.inbound.capacity()));
                    let charge = capacity.saturating_sub(BUFFER_CAPACITY_KEEP_BYTES);
                    let others = self.client_buffered_bytes - conn.charged;
                    if others + charge > self.config.client_buffer_bytes_max {
                        warn!(
                            "{id} ({}): request of {frame_bytes} bytes refused: client request \
                             buffers hold {others} bytes (budget {})",
                            conn.peer, self.config.client_buffer_bytes_max
                        );
                        conn.inbound.clear();
                        if conn.out_pending_bytes() == 0 {
                            conn.write_progress_at = Instant::now();
                        }
                        Response::failure(
                            FAILURE_CODE_NOMEM,
                            format!(
                                "server out of memory for requests: {others} bytes of other \
                                 requests are buffered; try again later"
                            ),
                        )
                        .encode(&mut conn.outbound, version_of(conn.phase));
                        conn.close_after_flush = Some(CloseReason::BufferBudget);
                        Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
                        return true;
                    }
                    conn.inbound.reserve_exact(capacity - len);
                    self.client_buffered_bytes = others + charge;
                    conn.charged = charge;
                }
                return true;
            }
            let decoded = Request::decode(header, &conn.inbound[HEADER_BYTES..frame_bytes]);
            conn.consume_inbound(frame_bytes);
            // The charge follows the buffer: a shrunk one gives it back.
            let charge = conn
                .inbound
                .capacity()
                .saturating_sub(BUFFER_CAPACITY_KEEP_BYTES);
            self.client_buffered_bytes = self.client_buffered_bytes - conn.charged + charge;
            conn.charged = charge;
            match decoded {
                Ok(request) => {
                    conn.awaiting_response = true;
                    events.push(Event::Request { conn: id, request });
                    return true;
                }
                Err(error) => {
                    Self::answer_malformed(conn, &error, id);
                    Self::queue(&mut self.flush_list, &mut conn.flush_queued, slot);
                }
            }
        }
    }

    /// Answers an undecodable frame with FAILURE (1005, or 15 for DESCRIBE's format), logging
    /// the first one of a connection at warn level.
    fn answer_malformed(conn: &mut Conn, error: &DecodeError, id: ConnId) {
        if conn.malformed_logged {
            debug!("{id} ({}): malformed request: {error}", conn.peer);
        } else {
            warn!("{id} ({}): malformed request: {error}", conn.peer);
            conn.malformed_logged = true;
        }
        let version = version_of(conn.phase);
        if conn.out_pending_bytes() == 0 {
            conn.write_progress_at = Instant::now();
        }
        Response::failure(error.failure_code(), error.to_string())
            .encode(&mut conn.outbound, version);
    }

    fn fire_timers(&mut self, events: &mut Vec<Event>) {
        let now = Instant::now();
        // Bounded by the heap's size.
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            if let Some(token) = self.timers_live.remove(&id) {
                events.push(Event::Timer {
                    timer: TimerId(id),
                    token,
                });
            }
        }
    }

    fn sweep(&mut self, events: &mut Vec<Event>) {
        let now = Instant::now();
        self.sweep_at = now + self.sweep_interval;
        if let Some(http) = self.http.as_mut() {
            http.sweep(self.poll.registry(), now);
        }
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].conn.as_ref() else {
                continue;
            };
            let reason = if conn.phase.is_peer() {
                self.peer_sweep_reason(conn, now)
            } else if conn.phase == Phase::Handshake
                && now.duration_since(conn.accepted_at) > self.config.handshake_timeout
            {
                Some(CloseReason::HandshakeTimeout)
            } else if conn.out_pending_bytes() > 0
                && now.duration_since(conn.write_progress_at) > self.config.write_stall_timeout
            {
                Some(CloseReason::WriteStalled)
            } else if !conn.awaiting_response
                && conn.out_pending_bytes() == 0
                && self
                    .config
                    .idle_timeout
                    .is_some_and(|idle| now.duration_since(conn.active_at) > idle)
            {
                Some(CloseReason::IdleTimeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                info!(
                    "{} ({}): closing: {reason:?}",
                    self.conn_id(slot),
                    conn.peer
                );
                self.close_slot(slot, reason, Some(events));
            }
        }
        self.peer_keepalive(now);
    }
}

fn min_wait(wait: Option<Duration>, other: Duration) -> Duration {
    match wait {
        Some(wait) => wait.min(other),
        None => other,
    }
}

/// The protocol version a connection's answers are encoded in.
fn version_of(phase: Phase) -> ProtocolVersion {
    match phase {
        Phase::Client(version) => version,
        _ => ProtocolVersion::V1,
    }
}

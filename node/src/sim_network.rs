//! A simulated network for the whole-stack simulator: one in-memory fabric for N nodes, on a
//! [`ManualClock`] and a seeded generator, so that one seed replays identically. Each node gets
//! an [`Endpoint`] (its [`Network`]); the simulator's clients open connections through the
//! fabric and receive the node's responses decoded, as a real client would after reading them.
//!
//! What the fabric does to peer frames (per [`LinkFaults`], changeable at any time): a delay
//! drawn per frame, drops, duplicates, and reordering (a reordered frame skips the per-link
//! FIFO that otherwise keeps TCP's order). Links can be cut one way ([`Fabric::cut`]), which
//! makes every partition shape; [`Fabric::heal`] restores them all. A frame to a crashed node,
//! or over a cut link, is lost, and its sender is told the link went down
//! (`PeerDisconnected`), as the reactor tells it when a connection drops.
//!
//! Client connections are reliable and ordered (TCP to one node) with a delay drawn from their
//! own range (clients may be near a node whose peers are far: a new leader then hears from
//! clients before its first entry commits); they end
//! when either side closes them or the node crashes. The node answers through the same
//! [`Network::send`]/[`Network::send_encoded_dyn`] calls as in production: its bytes are
//! decoded here with the client's decoder.
//!
//! Determinism: the node's sends of one turn are taken at its next poll (or
//! [`Fabric::flush`]) and ordered by destination before any delay is drawn, so the order in
//! which the node iterates its own maps cannot change the draws.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atoll_net::protocol::{
    DecodeError, Header, ProtocolVersion, Request, Response, ResponseContext, HEADER_BYTES,
};
use atoll_net::reactor::{
    CloseReason, Completion, ConnId, Event, MetricsRequestId, PeerDirection, PeerSendError,
    SendError, TimerId, TimersFull, Waker,
};
use atoll_net::tls::TlsContext;

use crate::inputs::{Clock, ManualClock, Random, SeededRandom};
use crate::network::{Network, OutboundAnswer, OutboundId};

/// Timers one endpoint may have armed (the reactor's default bound).
const TIMERS_MAX: usize = atoll_net::reactor::TIMERS_MAX;
/// The shortest delay of anything crossing the fabric: time always moves between a send and
/// its delivery, so a simulator stepping to the next due instant always progresses.
const DELAY_MIN: Duration = Duration::from_micros(1);

/// What the fabric does to peer frames. Probabilities are in parts per million.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFaults {
    /// Shortest delay of a frame.
    pub delay_min: Duration,
    /// Longest delay of a frame.
    pub delay_max: Duration,
    /// A frame is lost.
    pub drop_ppm: u32,
    /// A frame is delivered twice.
    pub duplicate_ppm: u32,
    /// A frame skips its link's FIFO (may overtake or be overtaken).
    pub reorder_ppm: u32,
    /// Shortest delay of a client connection's bytes (ordered and reliable, as TCP).
    pub client_delay_min: Duration,
    /// Longest delay of a client connection's bytes.
    pub client_delay_max: Duration,
}

impl Default for LinkFaults {
    /// A fast, perfect network.
    fn default() -> LinkFaults {
        LinkFaults {
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_micros(500),
            drop_ppm: 0,
            duplicate_ppm: 0,
            reorder_ppm: 0,
            client_delay_min: Duration::from_micros(100),
            client_delay_max: Duration::from_micros(500),
        }
    }
}

/// Counters of the fabric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Peer frames sent by nodes.
    pub frames_sent: u64,
    /// Frames lost (drawn, over a cut link, to a crashed node).
    pub frames_dropped: u64,
    /// Frames delivered twice.
    pub frames_duplicated: u64,
    /// Frames taken out of their link's order.
    pub frames_reordered: u64,
}

/// What a client connection received since it last looked.
#[derive(Debug, Default)]
pub struct ClientReceived {
    /// Decoded responses, in order.
    pub responses: Vec<Response>,
    /// The connection ended (the node closed it, or crashed); nothing more comes.
    pub closed: bool,
    /// Bytes that did not decode as responses (a protocol bug): the connection is closed.
    pub garbage: Option<DecodeError>,
}

/// An event on its way to a node.
#[derive(Debug)]
struct Delivery {
    incarnation: u64,
    event: Event,
}

/// What a node sent during its turn, taken at its next poll.
#[derive(Debug)]
enum Outgoing {
    Frame { to: u64, frame: Vec<u8> },
    Bytes { conn: ConnId, bytes: Vec<u8> },
    Close { conn: ConnId },
}

#[derive(Debug, Default)]
struct NodeState {
    up: bool,
    incarnation: u64,
    address: String,
    /// Events for the next poll, due at their instant (ordered by instant, then sequence).
    inbox: BTreeMap<(Instant, u64), Delivery>,
    /// Armed timers: (due, id) -> token.
    timers: BTreeMap<(Instant, u64), u64>,
    timer_next: u64,
    outbox: Vec<Outgoing>,
    /// Peers known to the node's transport, with their addresses.
    peers: BTreeMap<u64, String>,
    /// Nodes whose frames reached this node since the link was last down (their inbound
    /// connection is up: `PeerConnected` was announced).
    inbound: BTreeSet<u64>,
}

#[derive(Debug)]
struct ConnState {
    node: u64,
    incarnation: u64,
    /// The node owes a final response.
    awaiting_response: bool,
    /// The node side is open (the node has not closed it, nor seen it closed).
    node_open: bool,
    /// Bytes on their way to the client, due at their instant.
    to_client: BTreeMap<(Instant, u64), Vec<u8>>,
    /// When the client learns the connection ended (after the bytes before it).
    closed_at: Option<Instant>,
    /// The last delivery instant to the client (FIFO).
    last_at: Instant,
    /// The last delivery instant to the node (FIFO).
    to_node_last: Instant,
    /// Received bytes not yet a whole message.
    buffer: Vec<u8>,
    /// How to decode its responses (the format of its last CLUSTER request).
    context: ResponseContext,
}

/// A request a node made itself, on the client connection it is keyed by.
#[derive(Debug)]
struct Outbound {
    from: u64,
    incarnation: u64,
    id: OutboundId,
    /// Given up unanswered at this instant.
    deadline: Instant,
}

#[derive(Debug)]
struct State {
    clock: ManualClock,
    random: SeededRandom,
    faults: LinkFaults,
    /// Cut links, (from, to).
    cut: BTreeSet<(u64, u64)>,
    nodes: BTreeMap<u64, NodeState>,
    conns: BTreeMap<ConnId, ConnState>,
    /// The last delivery instant of each link (FIFO unless reordered).
    link_last: BTreeMap<(u64, u64), Instant>,
    sequence: u64,
    conn_next: u32,
    stats: FabricStats,
    /// Nodes' own requests, by their connection.
    outbound: BTreeMap<ConnId, Outbound>,
    /// Nodes' own requests that could not connect: (due, sequence) -> (node, incarnation,
    /// answer).
    refused: BTreeMap<(Instant, u64), (u64, u64, OutboundAnswer)>,
    outbound_next: u64,
}

impl State {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// True with probability `ppm` parts per million.
    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.random.next_u64() % 1_000_000 < u64::from(ppm)
    }

    fn delay(&mut self) -> Duration {
        let (min, max) = (self.faults.delay_min, self.faults.delay_max);
        self.delay_between(min, max)
    }

    fn client_delay(&mut self) -> Duration {
        let (min, max) = (self.faults.client_delay_min, self.faults.client_delay_max);
        self.delay_between(min, max)
    }

    fn delay_between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_nanos() as u64;
        let extra = if span == 0 {
            0
        } else {
            self.random.next_u64() % (span + 1)
        };
        (min + Duration::from_nanos(extra)).max(DELAY_MIN)
    }

    fn deliver(&mut self, node: u64, at: Instant, event: Event) {
        let sequence = self.next_sequence();
        let Some(state) = self.nodes.get_mut(&node) else {
            return;
        };
        if !state.up {
            return;
        }
        let incarnation = state.incarnation;
        state
            .inbox
            .insert((at, sequence), Delivery { incarnation, event });
    }

    /// The link `from` -> `to` went down: the sender hears of it, and the receiver's inbound
    /// connection from it is gone.
    fn link_down(&mut self, from: u64, to: u64) {
        let now = self.now();
        if let Some(receiver) = self.nodes.get_mut(&to) {
            receiver.inbound.remove(&from);
        }
        let known = self
            .nodes
            .get(&from)
            .is_some_and(|sender| sender.up && sender.peers.contains_key(&to));
        if known {
            let at = now + DELAY_MIN;
            self.deliver(
                from,
                at,
                Event::PeerDisconnected {
                    node: to,
                    direction: PeerDirection::Outbound,
                    reason: CloseReason::ConnectFailed(io::ErrorKind::ConnectionRefused),
                    frames_dropped: 0,
                },
            );
        }
    }

    /// Schedules what `node` sent since its last poll.
    fn flush(&mut self, node: u64) {
        let Some(state) = self.nodes.get_mut(&node) else {
            return;
        };
        let mut outbox = std::mem::take(&mut state.outbox);
        // Canonical order (stable: each destination keeps the order of its sends).
        outbox.sort_by_key(|outgoing| match outgoing {
            Outgoing::Frame { to, .. } => (0, *to, ConnId::from_parts(0, 0)),
            Outgoing::Bytes { conn, .. } | Outgoing::Close { conn } => (1, 0, *conn),
        });
        for outgoing in outbox {
            match outgoing {
                Outgoing::Frame { to, frame } => self.flush_frame(node, to, frame),
                Outgoing::Bytes { conn, bytes } => self.flush_bytes(conn, bytes),
                Outgoing::Close { conn } => self.flush_close(conn),
            }
        }
    }

    fn flush_frame(&mut self, from: u64, to: u64, frame: Vec<u8>) {
        self.stats.frames_sent += 1;
        let reachable =
            self.nodes.get(&to).is_some_and(|n| n.up) && !self.cut.contains(&(from, to));
        if !reachable || self.chance(self.faults.drop_ppm) {
            self.stats.frames_dropped += 1;
            return;
        }
        let copies = if self.chance(self.faults.duplicate_ppm) {
            self.stats.frames_duplicated += 1;
            vec![frame.clone(), frame]
        } else {
            vec![frame]
        };
        for frame in copies {
            let now = self.now();
            let mut at = now + self.delay();
            if self.chance(self.faults.reorder_ppm) {
                self.stats.frames_reordered += 1;
            } else {
                let last = self.link_last.entry((from, to)).or_insert(now);
                at = at.max(*last + DELAY_MIN);
                *last = at;
            }
            let announce = self
                .nodes
                .get_mut(&to)
                .is_some_and(|receiver| receiver.inbound.insert(from));
            if announce {
                let address = self
                    .nodes
                    .get(&from)
                    .map(|n| n.address.clone())
                    .unwrap_or_default();
                self.deliver(
                    to,
                    at,
                    Event::PeerConnected {
                        node: from,
                        direction: PeerDirection::Inbound,
                        address,
                    },
                );
            }
            self.deliver(to, at, Event::PeerFrame { from, frame });
        }
    }

    fn flush_bytes(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let delay = self.client_delay();
        let sequence = self.next_sequence();
        let now = self.now();
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let at = (now + delay).max(state.last_at + DELAY_MIN);
        state.last_at = at;
        state.to_client.insert((at, sequence), bytes);
    }

    fn flush_close(&mut self, conn: ConnId) {
        let delay = self.client_delay();
        let now = self.now();
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let at = (now + delay).max(state.last_at + DELAY_MIN);
        state.last_at = at;
        state.closed_at.get_or_insert(at);
    }

    fn conn_for_node(
        &mut self,
        node: u64,
        incarnation: u64,
        conn: ConnId,
    ) -> Option<&mut ConnState> {
        self.conns
            .get_mut(&conn)
            .filter(|c| c.node == node && c.incarnation == incarnation && c.node_open)
    }

    fn next_due(&self) -> Option<Instant> {
        let nodes = self.nodes.values().filter(|n| n.up).flat_map(|n| {
            let inbox = n.inbox.keys().next().map(|(at, _)| *at);
            let timer = n.timers.keys().next().map(|(at, _)| *at);
            inbox.into_iter().chain(timer)
        });
        let conns = self.conns.values().flat_map(|c| {
            let bytes = c.to_client.keys().next().map(|(at, _)| *at);
            bytes.into_iter().chain(c.closed_at)
        });
        let outbound = self.outbound.values().map(|o| o.deadline);
        let refused = self.refused.keys().next().map(|(at, _)| *at);
        nodes.chain(conns).chain(outbound).chain(refused).min()
    }
}

/// The fabric: shared by the simulator and every node's [`Endpoint`] (cheap to clone).
#[derive(Debug, Clone)]
pub struct Fabric {
    state: Arc<Mutex<State>>,
}

impl Fabric {
    /// An empty fabric on `clock`, drawing its faults and delays from `seed`.
    pub fn new(clock: ManualClock, seed: u64) -> Fabric {
        Fabric {
            state: Arc::new(Mutex::new(State {
                clock,
                random: SeededRandom::new(seed),
                faults: LinkFaults::default(),
                cut: BTreeSet::new(),
                nodes: BTreeMap::new(),
                conns: BTreeMap::new(),
                link_last: BTreeMap::new(),
                sequence: 0,
                conn_next: 0,
                stats: FabricStats::default(),
                outbound: BTreeMap::new(),
                refused: BTreeMap::new(),
                outbound_next: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // One thread uses the fabric; a panic elsewhere leaves its state usable for a report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network of node `id` at `address` (a new incarnation: a restarted node starts with
    /// no timers, no connections and nothing in flight to it).
    pub fn endpoint(&self, id: u64, address: &str) -> Box<dyn Network> {
        let mut state = self.lock();
        let node = state.nodes.entry(id).or_default();
        let incarnation = node.incarnation + 1;
        *node = NodeState {
            up: true,
            incarnation,
            address: address.to_owned(),
            ..NodeState::default()
        };
        Box::new(Endpoint {
            id,
            incarnation,
            fabric: self.clone(),
            answers: Vec::new(),
        })
    }

    /// Node `id` crashed: everything in flight to it is lost, its connections end (clients see
    /// them closed) and its peers see their links to it go down.
    pub fn crash(&self, id: u64) {
        let mut state = self.lock();
        let now = state.now();
        let Some(node) = state.nodes.get_mut(&id) else {
            return;
        };
        node.up = false;
        node.inbox.clear();
        node.timers.clear();
        node.outbox.clear();
        node.inbound.clear();
        for conn in state.conns.values_mut().filter(|c| c.node == id) {
            conn.node_open = false;
            conn.closed_at.get_or_insert(now + DELAY_MIN);
        }
        let others: Vec<u64> = state.nodes.keys().copied().filter(|&n| n != id).collect();
        // A process that dies has its sockets closed by the kernel, and its peers read the end
        // of their connections from it; a machine that loses power closes nothing. Half the
        // crashes are of each kind.
        let closes = state.chance(500_000);
        for other in others {
            let connected = state
                .nodes
                .get(&other)
                .is_some_and(|o| o.inbound.contains(&id));
            if closes && connected {
                let at = now + DELAY_MIN;
                state.deliver(
                    other,
                    at,
                    Event::PeerDisconnected {
                        node: id,
                        direction: PeerDirection::Inbound,
                        reason: CloseReason::PeerClosed,
                        frames_dropped: 0,
                    },
                );
            }
            state.link_down(other, id);
        }
        state.outbound_drop(id, None);
        state.refused.retain(|_, (node, _, _)| *node != id);
    }

    /// Sets what happens to peer frames from now on.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().faults = faults;
    }

    /// Cuts the link `from` -> `to` (one way): frames on it are lost until [`Fabric::heal`].
    pub fn cut(&self, from: u64, to: u64) {
        let mut state = self.lock();
        if state.cut.insert((from, to)) {
            state.link_down(from, to);
            state.outbound_drop(from, Some(to));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// The cut links, (from, to).
    pub fn cuts(&self) -> Vec<(u64, u64)> {
        self.lock().cut.iter().copied().collect()
    }

    /// Takes what node `id` sent in its last turn and schedules it (idempotent; its next poll
    /// does it too).
    pub fn flush(&self, id: u64) {
        self.lock().flush(id);
    }

    /// The earliest instant something is due (a delivery, a timer, a client's bytes).
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().next_due()
    }

    /// Whether node `id` is up and has an event due by now (a delivery or a timer): what
    /// would make its poll return.
    pub fn due(&self, id: u64) -> bool {
        let state = self.lock();
        let now = state.now();
        state.nodes.get(&id).is_some_and(|node| {
            let first = |at: Option<Instant>| at.is_some_and(|at| at <= now);
            node.up
                && (first(node.inbox.keys().next().map(|(at, _)| *at))
                    || first(node.timers.keys().next().map(|(at, _)| *at))
                    || state.outbound_due(id, now))
        })
    }

    /// The counters.
    pub fn stats(&self) -> FabricStats {
        self.lock().stats.clone()
    }

    /// A client connects to node `id` (speaking protocol version 1); `None` if the node is
    /// down. The node hears `Connected` after a delay.
    pub fn client_connect(&self, id: u64) -> Option<ConnId> {
        self.lock().client_connect(id)
    }

    /// The client sends `request` on `conn` (it must wait for the final response to the
    /// previous one first). False if the connection is closed.
    pub fn client_send(&self, conn: ConnId, request: Request) -> bool {
        self.lock().client_send(conn, request)
    }

    /// The client closes `conn`: the node hears `Closed` after a delay; nothing more arrives.
    pub fn client_close(&self, conn: ConnId) {
        self.lock().client_close(conn)
    }

    /// What arrived on `conn` by now: whole responses, decoded; a connection that ended is
    /// forgotten once reported.
    pub fn client_receive(&self, conn: ConnId) -> ClientReceived {
        self.lock().client_receive(conn)
    }
}

impl State {
    fn client_connect(&mut self, id: u64) -> Option<ConnId> {
        let incarnation = self.nodes.get(&id).filter(|n| n.up)?.incarnation;
        self.conn_next += 1;
        let conn = ConnId::from_parts(u32::try_from(id).ok()?, self.conn_next);
        let now = self.now();
        let at = now + self.client_delay();
        self.conns.insert(
            conn,
            ConnState {
                node: id,
                incarnation,
                awaiting_response: false,
                node_open: true,
                to_client: BTreeMap::new(),
                closed_at: None,
                last_at: now,
                to_node_last: at,
                buffer: Vec::new(),
                context: ResponseContext::default(),
            },
        );
        let client: SocketAddr = ([10, 0, 0, 1], 40_000).into();
        self.deliver(
            id,
            at,
            Event::Connected {
                conn,
                peer: client,
                version: ProtocolVersion::V1,
            },
        );
        Some(conn)
    }

    fn client_send(&mut self, conn: ConnId, request: Request) -> bool {
        let now = self.now();
        let delay = self.client_delay();
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closed_at.is_some() || !c.node_open {
            return false;
        }
        if let Request::Cluster { format } = request {
            c.context.cluster_format = format;
        }
        let at = (now + delay).max(c.to_node_last + DELAY_MIN);
        c.to_node_last = at;
        let node = c.node;
        self.deliver(node, at, Event::Request { conn, request });
        true
    }

    fn client_close(&mut self, conn: ConnId) {
        let now = self.now();
        let delay = self.client_delay();
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.node_open {
            self.deliver(
                c.node,
                (now + delay).max(c.to_node_last + DELAY_MIN),
                Event::Closed {
                    conn,
                    reason: CloseReason::PeerClosed,
                },
            );
        }
    }

    fn client_receive(&mut self, conn: ConnId) -> ClientReceived {
        let now = self.now();
        let mut received = ClientReceived::default();
        let Some(c) = self.conns.get_mut(&conn) else {
            received.closed = true;
            return received;
        };
        while let Some(entry) = c.to_client.first_entry() {
            if entry.key().0 > now {
                break;
            }
            c.buffer.extend_from_slice(&entry.remove());
        }
        let mut offset = 0;
        while let Some(header) = c.buffer.get(offset..offset + HEADER_BYTES) {
            let header = Header::decode(header.try_into().expect("sliced to HEADER_BYTES"));
            let body_bytes = match header.body_bytes_checked(u64::MAX) {
                Ok(bytes) => bytes,
                Err(e) => {
                    received.garbage = Some(e);
                    break;
                }
            };
            let start = offset + HEADER_BYTES;
            let Some(body) = c.buffer.get(start..start + body_bytes) else {
                break;
            };
            match Response::decode(header, body, &c.context) {
                Ok(response) => received.responses.push(response),
                Err(e) => {
                    received.garbage = Some(e);
                    break;
                }
            }
            offset = start + body_bytes;
        }
        c.buffer.drain(..offset);
        let ended = c.closed_at.is_some_and(|at| at <= now) && c.to_client.is_empty();
        if ended || received.garbage.is_some() {
            received.closed = true;
            let c = self.conns.remove(&conn).expect("looked up above");
            if c.node_open && received.garbage.is_some() {
                let at = now + DELAY_MIN;
                self.deliver(
                    c.node,
                    at,
                    Event::Closed {
                        conn,
                        reason: CloseReason::PeerClosed,
                    },
                );
            }
        }
        received
    }

    /// Node `from` (incarnation `incarnation`) asks the node at `address`: a client connection
    /// of its own, unless the node is down, unknown or the link between them cut (then the
    /// answer is a refusal, after a delay).
    fn outbound_request(
        &mut self,
        from: u64,
        incarnation: u64,
        address: &str,
        request: Request,
        timeout: Duration,
    ) -> OutboundId {
        self.outbound_next += 1;
        let id = OutboundId(self.outbound_next);
        let now = self.now();
        let to = self
            .nodes
            .iter()
            .find(|(_, n)| n.up && n.address == address)
            .map(|(&to, _)| to);
        let linked = |to| !self.cut.contains(&(from, to)) && !self.cut.contains(&(to, from));
        let conn = to
            .filter(|&to| to != from && linked(to))
            .and_then(|to| self.client_connect(to));
        match conn {
            Some(conn) => {
                self.client_send(conn, request);
                self.outbound.insert(
                    conn,
                    Outbound {
                        from,
                        incarnation,
                        id,
                        deadline: now + timeout,
                    },
                );
            }
            None => {
                let at = now + self.client_delay();
                let sequence = self.next_sequence();
                let answer = OutboundAnswer {
                    id,
                    result: Err(format!("connecting to {address}: connection refused")),
                };
                self.refused
                    .insert((at, sequence), (from, incarnation, answer));
            }
        }
        id
    }

    /// The outbound requests of node `from` that ended by now: their answers, their
    /// connections closed.
    fn outbound_ended(&mut self, from: u64, incarnation: u64) -> Vec<OutboundAnswer> {
        let now = self.now();
        let mut answers = Vec::new();
        let refused: Vec<(Instant, u64)> = self
            .refused
            .iter()
            .filter(|((at, _), (node, _, _))| *at <= now && *node == from)
            .map(|(key, _)| *key)
            .collect();
        for key in refused {
            let (_, of, answer) = self.refused.remove(&key).expect("listed above");
            if of == incarnation {
                answers.push(answer);
            }
        }
        let conns: Vec<ConnId> = self
            .outbound
            .iter()
            .filter(|(_, o)| o.from == from)
            .map(|(&conn, _)| conn)
            .collect();
        for conn in conns {
            let outbound = &self.outbound[&conn];
            let (id, deadline) = (outbound.id, outbound.deadline);
            let received = self.client_receive(conn);
            let result = if let Some(response) = received.responses.into_iter().next() {
                Ok(response)
            } else if let Some(e) = received.garbage {
                Err(format!("an undecodable answer: {e}"))
            } else if received.closed {
                Err("the connection closed without an answer".to_owned())
            } else if now >= deadline {
                Err("no answer in time".to_owned())
            } else {
                continue;
            };
            self.client_close(conn);
            let outbound = self.outbound.remove(&conn).expect("listed above");
            if outbound.incarnation == incarnation {
                answers.push(OutboundAnswer { id, result });
            }
        }
        answers
    }

    /// Whether an outbound request of node `from` ends by now.
    fn outbound_due(&self, from: u64, now: Instant) -> bool {
        let refused = self
            .refused
            .iter()
            .any(|((at, _), (node, _, _))| *at <= now && *node == from);
        refused
            || self.outbound.iter().any(|(conn, o)| {
                o.from == from
                    && (o.deadline <= now
                        || self.conns.get(conn).is_none_or(|c| {
                            c.to_client.keys().next().is_some_and(|(at, _)| *at <= now)
                                || c.closed_at.is_some_and(|at| at <= now)
                        }))
            })
    }

    /// Ends the outbound requests of node `node`, or to it (it crashed, or a link between the
    /// two was cut: a connection through a partition is given up).
    fn outbound_drop(&mut self, node: u64, peer: Option<u64>) {
        let conns: Vec<ConnId> = self
            .outbound
            .iter()
            .filter(|(conn, o)| {
                let to = self.conns.get(conn).map(|c| c.node);
                match peer {
                    None => o.from == node,
                    Some(peer) => {
                        (o.from == node && to == Some(peer)) || (o.from == peer && to == Some(node))
                    }
                }
            })
            .map(|(&conn, _)| conn)
            .collect();
        for conn in conns {
            let now = self.now();
            self.client_close(conn);
            if peer.is_some() {
                // The requester sees it closed: its answer is an error, at its next poll.
                if let Some(o) = self.outbound.get_mut(&conn) {
                    o.deadline = now;
                }
            } else {
                self.outbound.remove(&conn);
            }
        }
    }
}

/// One node's view of the fabric: its [`Network`].
#[derive(Debug)]
pub struct Endpoint {
    id: u64,
    incarnation: u64,
    fabric: Fabric,
    /// Answers to the node's own requests, taken at its polls.
    answers: Vec<OutboundAnswer>,
}

impl Endpoint {
    /// The node's state, if this endpoint is still its current incarnation.
    fn with_node<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> Option<T> {
        let mut state = self.fabric.lock();
        let current = state
            .nodes
            .get(&self.id)
            .is_some_and(|n| n.up && n.incarnation == self.incarnation);
        current.then(|| f(&mut state, self.id))
    }
}

impl Network for Endpoint {
    fn poll(&mut self, events: &mut Vec<Event>, _timeout: Option<Duration>) -> io::Result<()> {
        let incarnation = self.incarnation;
        let answers = self.with_node(|state, id| {
            state.flush(id);
            let now = state.now();
            let mut due = Vec::new();
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            while let Some(entry) = node.inbox.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let delivery = entry.remove();
                if delivery.incarnation == incarnation {
                    due.push(delivery.event);
                }
            }
            while let Some(entry) = node.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, timer), token) = entry.remove_entry();
                due.push(Event::Timer {
                    timer: TimerId::from_raw(timer),
                    token,
                });
            }
            for event in due {
                match &event {
                    Event::Request { conn, .. } => {
                        match state.conn_for_node(id, incarnation, *conn) {
                            Some(c) => c.awaiting_response = true,
                            None => continue, // Closed meanwhile: the request is gone with it.
                        }
                    }
                    Event::Closed { conn, .. } => {
                        if let Some(c) = state.conns.get_mut(conn) {
                            c.node_open = false;
                        }
                    }
                    _ => {}
                }
                events.push(event);
            }
            state.outbound_ended(id, incarnation)
        });
        self.answers.extend(answers.into_iter().flatten());
        Ok(())
    }

    fn send(&mut self, conn: ConnId, response: &Response) -> Result<(), SendError> {
        let completion = if response.is_final() {
            Completion::Final
        } else {
            Completion::More
        };
        self.send_encoded_dyn(conn, &mut |out| {
            response.encode(out, ProtocolVersion::V1);
            completion
        })
    }

    fn send_encoded_dyn(
        &mut self,
        conn: ConnId,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError> {
        let incarnation = self.incarnation;
        self.with_node(|state, id| {
            let now = state.now();
            let Some(c) = state.conn_for_node(id, incarnation, conn) else {
                return Err(SendError::Closed);
            };
            if !c.awaiting_response {
                return Err(SendError::NoRequestPending);
            }
            let mut bytes = Vec::new();
            let completion = encode(&mut bytes);
            if completion == Completion::Final {
                c.awaiting_response = false;
            }
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            node.outbox.push(Outgoing::Bytes { conn, bytes });
            if completion == Completion::More {
                // Written at once: the next piece is wanted.
                let sequence = state.next_sequence();
                let node = state.nodes.get_mut(&id).expect("with_node checked it");
                node.inbox.insert(
                    (now, sequence),
                    Delivery {
                        incarnation,
                        event: Event::Drained { conn },
                    },
                );
            }
            Ok(())
        })
        .unwrap_or(Err(SendError::Closed))
    }

    fn close(&mut self, conn: ConnId) {
        self.close_after_flush(conn);
    }

    fn close_after_flush(&mut self, conn: ConnId) {
        let incarnation = self.incarnation;
        self.with_node(|state, id| {
            let now = state.now();
            if let Some(c) = state.conn_for_node(id, incarnation, conn) {
                c.node_open = false;
                let sequence = state.next_sequence();
                let node = state.nodes.get_mut(&id).expect("with_node checked it");
                node.outbox.push(Outgoing::Close { conn });
                node.inbox.insert(
                    (now, sequence),
                    Delivery {
                        incarnation,
                        event: Event::Closed {
                            conn,
                            reason: CloseReason::Host,
                        },
                    },
                );
            }
        });
    }

    fn timer_after(&mut self, delay: Duration, token: u64) -> Result<TimerId, TimersFull> {
        self.with_node(|state, id| {
            let now = state.now();
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            if node.timers.len() >= TIMERS_MAX {
                return Err(TimersFull);
            }
            node.timer_next += 1;
            let timer = node.timer_next;
            node.timers.insert((now + delay, timer), token);
            Ok(TimerId::from_raw(timer))
        })
        .unwrap_or(Ok(TimerId::from_raw(0)))
    }

    fn peer_send_dyn(
        &mut self,
        to: u64,
        address: &str,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<(), PeerSendError> {
        if to == 0 || to == self.id {
            return Err(PeerSendError::InvalidNode(to));
        }
        self.peer_set_address(to, address)?;
        let mut frame = Vec::new();
        encode(&mut frame);
        if frame.is_empty() {
            return Err(PeerSendError::EmptyFrame);
        }
        self.with_node(|state, id| {
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            node.outbox.push(Outgoing::Frame { to, frame });
        });
        Ok(())
    }

    fn peer_set_address(&mut self, to: u64, address: &str) -> Result<(), PeerSendError> {
        if to == 0 || to == self.id {
            return Err(PeerSendError::InvalidNode(to));
        }
        if address.is_empty() || address.len() > 255 {
            return Err(PeerSendError::InvalidAddress);
        }
        self.with_node(|state, id| {
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            node.peers.insert(to, address.to_owned());
        });
        Ok(())
    }

    fn peer_forget(&mut self, to: u64) -> bool {
        self.with_node(|state, id| {
            let node = state.nodes.get_mut(&id).expect("with_node checked it");
            node.peers.remove(&to).is_some()
        })
        .unwrap_or(false)
    }

    fn peers(&self) -> Vec<u64> {
        self.with_node(|state, id| state.nodes[&id].peers.keys().copied().collect())
            .unwrap_or_default()
    }

    fn metrics_respond(&mut self, _: MetricsRequestId, _: &str, _: &[u8]) -> bool {
        false
    }

    fn waker(&mut self) -> io::Result<Waker> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a simulated node has no other threads to wake it",
        ))
    }

    fn set_tls(&mut self, _: TlsContext) -> bool {
        false
    }

    fn is_tls(&self) -> bool {
        false
    }

    fn outbound_request(
        &mut self,
        address: &str,
        request: Request,
        timeout: Duration,
    ) -> OutboundId {
        let incarnation = self.incarnation;
        let address = address.to_owned();
        self.with_node(|state, id| {
            state.outbound_request(id, incarnation, &address, request, timeout)
        })
        .unwrap_or(OutboundId(0)) // A crashed incarnation: nothing is ever answered.
    }

    fn outbound_answers(&mut self, answers: &mut Vec<OutboundAnswer>) {
        answers.append(&mut self.answers);
    }
}

/// Connections still open, for tests of the fabric itself.
#[cfg(test)]
impl Fabric {
    fn open_conns(&self) -> usize {
        self.lock().conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fabric() -> (ManualClock, Fabric, Box<dyn Network>, Box<dyn Network>) {
        let clock = ManualClock::new();
        let fabric = Fabric::new(clock.clone(), 1);
        let a = fabric.endpoint(1, "127.0.0.1:1");
        let b = fabric.endpoint(2, "127.0.0.1:2");
        (clock, fabric, a, b)
    }

    fn poll(network: &mut Box<dyn Network>) -> Vec<Event> {
        let mut events = Vec::new();
        network.poll(&mut events, None).unwrap();
        events
    }

    #[test]
    fn test_frames_arrive_in_order_after_their_delay_and_not_over_a_cut_link() {
        let (clock, fabric, mut a, mut b) = fabric();
        for byte in 1..=3u8 {
            a.peer_send_with(2, "127.0.0.1:2", |out| out.push(byte))
                .unwrap();
        }
        assert!(poll(&mut a).is_empty());
        assert!(poll(&mut b).is_empty(), "nothing arrives before its delay");
        clock.advance(Duration::from_millis(1));
        let frames: Vec<Vec<u8>> = poll(&mut b)
            .into_iter()
            .filter_map(|e| match e {
                Event::PeerFrame { from: 1, frame } => Some(frame),
                _ => None,
            })
            .collect();
        assert_eq!(frames, vec![vec![1], vec![2], vec![3]]);
        fabric.cut(1, 2);
        a.peer_send_with(2, "127.0.0.1:2", |out| out.push(4))
            .unwrap();
        b.peer_send_with(1, "127.0.0.1:1", |out| out.push(5))
            .unwrap();
        fabric.flush(1);
        fabric.flush(2);
        clock.advance(Duration::from_millis(1));
        assert!(poll(&mut b).is_empty(), "the cut link loses the frame");
        let events = poll(&mut a);
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::PeerDisconnected { node: 2, .. })));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::PeerFrame { from: 2, .. })),
            "the other way works"
        );
    }

    #[test]
    fn test_a_client_request_gets_its_response_decoded_and_a_crash_closes_it() {
        let (clock, fabric, mut a, _b) = fabric();
        let conn = fabric.client_connect(1).unwrap();
        assert!(fabric.client_send(conn, Request::Leader));
        clock.advance(Duration::from_millis(1));
        let events = poll(&mut a);
        assert!(matches!(events[0], Event::Connected { .. }));
        assert!(matches!(events[1], Event::Request { .. }));
        let answer = Response::Server {
            id: 1,
            address: "127.0.0.1:1".into(),
        };
        a.send(conn, &answer).unwrap();
        assert_eq!(a.send(conn, &answer), Err(SendError::NoRequestPending));
        poll(&mut a);
        clock.advance(Duration::from_millis(1));
        let received = fabric.client_receive(conn);
        assert_eq!(received.responses, vec![answer]);
        assert!(!received.closed);
        fabric.crash(1);
        clock.advance(Duration::from_millis(1));
        assert!(fabric.client_receive(conn).closed);
        assert_eq!(fabric.open_conns(), 0);
        assert!(
            fabric.client_connect(1).is_none(),
            "a crashed node takes no connections"
        );
    }

    #[test]
    fn test_a_node_request_of_its_own_is_answered_once_or_refused() {
        let (clock, fabric, mut a, mut b) = fabric();
        let asked = b.outbound_request("127.0.0.1:1", Request::Leader, Duration::from_secs(1));
        clock.advance(Duration::from_millis(1));
        assert!(fabric.due(1));
        let events = poll(&mut a);
        let Event::Request { conn, .. } = events[1] else {
            panic!("{events:?}");
        };
        let answer = Response::Server {
            id: 1,
            address: "127.0.0.1:1".into(),
        };
        a.send(conn, &answer).unwrap();
        poll(&mut a);
        clock.advance(Duration::from_millis(1));
        assert!(fabric.due(2), "the answer wakes the node that asked");
        poll(&mut b);
        let mut answers = Vec::new();
        b.outbound_answers(&mut answers);
        assert_eq!(
            answers,
            vec![OutboundAnswer {
                id: asked,
                result: Ok(answer)
            }]
        );
        assert_eq!(fabric.open_conns(), 0, "closed after its answer");
        // Unknown address, and a cut link: refused.
        let unknown = b.outbound_request("127.0.0.1:9", Request::Leader, Duration::from_secs(1));
        fabric.cut(2, 1);
        let cut = b.outbound_request("127.0.0.1:1", Request::Leader, Duration::from_secs(1));
        clock.advance(Duration::from_millis(1));
        poll(&mut b);
        answers.clear();
        b.outbound_answers(&mut answers);
        let mut ids: Vec<OutboundId> = answers.iter().map(|a| a.id).collect();
        ids.sort();
        assert_eq!(ids, vec![unknown, cut]);
        assert!(answers.iter().all(|a| a.result.is_err()));
    }
}

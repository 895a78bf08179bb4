//! The network as one of the node's inputs: exactly what the node loop asks of its transport,
//! behind one small trait. Production runs the mio [`Reactor`] (sockets, timers, the metrics
//! listener); the simulator (`sim_network.rs`) runs an in-memory fabric on simulated time.
//! Both speak the same plain data: the reactor's [`Event`]s in, decoded-or-encoded
//! [`Response`]s and opaque peer frames out.
//!
//! Contract (the reactor's, which a simulation must keep):
//! - [`Network::poll`] is the only call that waits. It appends what happened since the last
//!   poll to `events`; timers armed with [`Network::timer_after`] fire as
//!   [`Event::Timer`] once their delay has passed.
//! - A connection gets one request at a time: after [`Event::Request`], the host owes exactly
//!   one final response (a ROWS stream counts as one), and no other request of that connection
//!   arrives before it is sent.
//! - Frames to one peer arrive in the order they were sent, or not at all (a refused frame is
//!   dropped and raft retransmits). Nothing is promised across peers.
//! - A closed connection's id is dead: sends to it fail with [`SendError::Closed`].
//! - A request the node makes itself ([`Network::outbound_request`]: a joining node asks the
//!   leader to add it) gets exactly one [`OutboundAnswer`], the response or why there is none,
//!   taken after a later poll ([`Network::outbound_answers`]); a poll returns when one arrives.
//!
//! Production runs [`ReactorNetwork`]: the reactor, plus a helper thread per outbound request
//! (the blocking client: connect, send, receive, at most its timeout), which touches no node
//! state and wakes the loop with its answer. The simulator answers them on its fabric, on the
//! one thread.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_net::client::{ClientConfig, ClientError, Connection};
use atoll_net::protocol::{Request, Response};
use atoll_net::reactor::{
    Completion, ConnId, Event, MetricsRequestId, PeerSendError, Reactor, SendError, TimerId,
    TimersFull, Waker,
};
use atoll_net::tls::TlsContext;

/// Names a request the node made itself ([`Network::outbound_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboundId(pub u64);

/// How a request the node made itself ended.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundAnswer {
    /// The request.
    pub id: OutboundId,
    /// Its final response (a FAILURE too), or why none came (connect failed, connection
    /// closed, timed out, undecodable answer).
    pub result: Result<Response, String>,
}

/// What the node loop asks of its transport. See the module documentation for the contract.
pub trait Network: Send {
    /// Flushes queued output, waits at most `timeout` (`None`: until something happens) and
    /// appends what happened to `events`.
    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;

    /// Queues the final or only response to the pending request of `conn`.
    fn send(&mut self, conn: ConnId, response: &Response) -> Result<(), SendError>;

    /// Queues a response that `encode` appends to the connection's output, encoded (a ROWS
    /// batch, a piece of a FILES answer); `encode` says whether the answer is complete. Called
    /// at most once (see the `send_encoded` wrapper on `dyn Network`, which takes an `FnOnce`).
    fn send_encoded_dyn(
        &mut self,
        conn: ConnId,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError>;

    /// Closes a connection now, dropping unwritten output; `Event::Closed` follows.
    fn close(&mut self, conn: ConnId);

    /// Closes a connection once its queued output is written.
    fn close_after_flush(&mut self, conn: ConnId);

    /// Arms a one-shot timer firing `Event::Timer { token, .. }` after `delay`.
    fn timer_after(&mut self, delay: Duration, token: u64) -> Result<TimerId, TimersFull>;

    /// Queues one opaque frame, written by `encode` (called at most once), for node `to` at
    /// `address`. Frames to one peer keep their order; a refused frame is dropped.
    fn peer_send_dyn(
        &mut self,
        to: u64,
        address: &str,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<(), PeerSendError>;

    /// Sets the address of node `to`, making it known if it was not.
    fn peer_set_address(&mut self, to: u64, address: &str) -> Result<(), PeerSendError>;

    /// Forgets node `to` (it left the cluster); whether it was known.
    fn peer_forget(&mut self, to: u64) -> bool;

    /// The nodes known as peers, in ascending order.
    fn peers(&self) -> Vec<u64>;

    /// Answers a metrics request; false if it is gone.
    fn metrics_respond(
        &mut self,
        request: MetricsRequestId,
        content_type: &str,
        body: &[u8],
    ) -> bool;

    /// A handle that makes the current or next `poll` return, for another thread.
    fn waker(&mut self) -> io::Result<Waker>;

    /// Replaces the TLS configuration of new connections; false if TLS is off.
    fn set_tls(&mut self, tls: TlsContext) -> bool;

    /// Whether the transport speaks TLS.
    fn is_tls(&self) -> bool;

    /// Sends `request` (one with a single final response) to the client port of the node at
    /// `address`, on a connection of this node's own, dialled for it and closed after the
    /// answer. Its [`OutboundAnswer`] comes within about `timeout`.
    fn outbound_request(
        &mut self,
        address: &str,
        request: Request,
        timeout: Duration,
    ) -> OutboundId;

    /// Moves the answers to outbound requests that arrived by the last poll into `answers`.
    fn outbound_answers(&mut self, answers: &mut Vec<OutboundAnswer>);
}

impl dyn Network + '_ {
    /// [`Network::send_encoded_dyn`] for an `FnOnce` (every caller's closure).
    pub fn send_encoded(
        &mut self,
        conn: ConnId,
        encode: impl FnOnce(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError> {
        let mut encode = Some(encode);
        self.send_encoded_dyn(conn, &mut |out| {
            let encode = encode.take().expect("a transport encodes a response once");
            encode(out)
        })
    }

    /// [`Network::peer_send_dyn`] for an `FnOnce`.
    pub fn peer_send_with(
        &mut self,
        to: u64,
        address: &str,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), PeerSendError> {
        let mut encode = Some(encode);
        self.peer_send_dyn(to, address, &mut |out| {
            let encode = encode.take().expect("a transport encodes a frame once");
            encode(out)
        })
    }
}

/// Production's network: the mio [`Reactor`], and the node's own requests each on a helper
/// thread with the blocking client.
pub struct ReactorNetwork {
    reactor: Reactor,
    /// TLS for the node's own client connections (the cluster's, as for its peers).
    tls: Option<TlsContext>,
    /// Answers the helper threads delivered, taken by `outbound_answers`.
    answers: Arc<Mutex<Vec<OutboundAnswer>>>,
    /// Wakes the loop when a helper has answered (made at the first request).
    waker: Option<Waker>,
    next_id: u64,
}

impl ReactorNetwork {
    /// `reactor`, with `tls` for the node's own requests.
    pub fn new(reactor: Reactor, tls: Option<TlsContext>) -> ReactorNetwork {
        ReactorNetwork {
            reactor,
            tls,
            answers: Arc::new(Mutex::new(Vec::new())),
            waker: None,
            next_id: 0,
        }
    }

    /// The reactor.
    pub fn reactor_mut(&mut self) -> &mut Reactor {
        &mut self.reactor
    }
}

/// Connects to `address`, sends `request`, receives its final response (a FAILURE as one).
fn outbound_call(
    address: &str,
    request: &Request,
    config: &ClientConfig,
) -> Result<Response, String> {
    let mut connection = Connection::connect(address, config).map_err(|e| e.to_string())?;
    connection.send(request).map_err(|e| e.to_string())?;
    match connection.receive() {
        Ok(response) => Ok(response),
        Err(ClientError::Failure { code, message }) => Ok(Response::Failure { code, message }),
        Err(e) => Err(e.to_string()),
    }
}

impl Network for ReactorNetwork {
    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.reactor.poll(events, timeout)
    }

    fn send(&mut self, conn: ConnId, response: &Response) -> Result<(), SendError> {
        self.reactor.send(conn, response)
    }

    fn send_encoded_dyn(
        &mut self,
        conn: ConnId,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError> {
        self.reactor.send_encoded(conn, encode)
    }

    fn close(&mut self, conn: ConnId) {
        self.reactor.close(conn)
    }

    fn close_after_flush(&mut self, conn: ConnId) {
        self.reactor.close_after_flush(conn)
    }

    fn timer_after(&mut self, delay: Duration, token: u64) -> Result<TimerId, TimersFull> {
        self.reactor.timer_after(delay, token)
    }

    fn peer_send_dyn(
        &mut self,
        to: u64,
        address: &str,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<(), PeerSendError> {
        self.reactor.peer_send_with(to, address, encode)
    }

    fn peer_set_address(&mut self, to: u64, address: &str) -> Result<(), PeerSendError> {
        self.reactor.peer_set_address(to, address)
    }

    fn peer_forget(&mut self, to: u64) -> bool {
        self.reactor.peer_forget(to)
    }

    fn peers(&self) -> Vec<u64> {
        let mut peers: Vec<u64> = self.reactor.peers().collect();
        peers.sort_unstable();
        peers
    }

    fn metrics_respond(
        &mut self,
        request: MetricsRequestId,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        self.reactor.metrics_respond(request, content_type, body)
    }

    fn waker(&mut self) -> io::Result<Waker> {
        self.reactor.waker()
    }

    fn set_tls(&mut self, tls: TlsContext) -> bool {
        if self.tls.is_some() {
            self.tls = Some(tls.clone());
        }
        self.reactor.set_tls(tls)
    }

    fn is_tls(&self) -> bool {
        self.reactor.is_tls()
    }

    fn outbound_request(
        &mut self,
        address: &str,
        request: Request,
        timeout: Duration,
    ) -> OutboundId {
        self.next_id += 1;
        let id = OutboundId(self.next_id);
        let answers = self.answers.clone();
        let answer = move |result: Result<Response, String>| {
            let mut answers = answers.lock().unwrap_or_else(|e| e.into_inner());
            answers.push(OutboundAnswer { id, result });
        };
        let waker = match &self.waker {
            Some(waker) => waker.clone(),
            None => match self.reactor.waker() {
                Ok(waker) => self.waker.insert(waker).clone(),
                Err(e) => {
                    answer(Err(format!("creating the wake-up handle: {e}")));
                    return id;
                }
            },
        };
        let config = ClientConfig {
            connect_timeout: timeout,
            request_timeout: timeout,
            tls: self.tls.clone(),
            ..ClientConfig::default()
        };
        let address = address.to_owned();
        let spawned = std::thread::Builder::new().name("outbound".into()).spawn({
            let answer = answer.clone();
            move || {
                answer(outbound_call(&address, &request, &config));
                let _ = waker.wake();
            }
        });
        if let Err(e) = spawned {
            answer(Err(format!("starting a request thread: {e}")));
        }
        id
    }

    fn outbound_answers(&mut self, answers: &mut Vec<OutboundAnswer>) {
        let mut arrived = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.append(&mut arrived);
    }
}

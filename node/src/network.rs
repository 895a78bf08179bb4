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

use std::io;
use std::time::Duration;

use atoll_net::protocol::Response;
use atoll_net::reactor::{
    Completion, ConnId, Event, MetricsRequestId, PeerSendError, Reactor, SendError, TimerId,
    TimersFull, Waker,
};
use atoll_net::tls::TlsContext;

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

impl Network for Reactor {
    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        Reactor::poll(self, events, timeout)
    }

    fn send(&mut self, conn: ConnId, response: &Response) -> Result<(), SendError> {
        Reactor::send(self, conn, response)
    }

    fn send_encoded_dyn(
        &mut self,
        conn: ConnId,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Completion,
    ) -> Result<(), SendError> {
        Reactor::send_encoded(self, conn, encode)
    }

    fn close(&mut self, conn: ConnId) {
        Reactor::close(self, conn)
    }

    fn close_after_flush(&mut self, conn: ConnId) {
        Reactor::close_after_flush(self, conn)
    }

    fn timer_after(&mut self, delay: Duration, token: u64) -> Result<TimerId, TimersFull> {
        Reactor::timer_after(self, delay, token)
    }

    fn peer_send_dyn(
        &mut self,
        to: u64,
        address: &str,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<(), PeerSendError> {
        Reactor::peer_send_with(self, to, address, encode)
    }

    fn peer_set_address(&mut self, to: u64, address: &str) -> Result<(), PeerSendError> {
        Reactor::peer_set_address(self, to, address)
    }

    fn peer_forget(&mut self, to: u64) -> bool {
        Reactor::peer_forget(self, to)
    }

    fn peers(&self) -> Vec<u64> {
        let mut peers: Vec<u64> = Reactor::peers(self).collect();
        peers.sort_unstable();
        peers
    }

    fn metrics_respond(
        &mut self,
        request: MetricsRequestId,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        Reactor::metrics_respond(self, request, content_type, body)
    }

    fn waker(&mut self) -> io::Result<Waker> {
        Reactor::waker(self)
    }

    fn set_tls(&mut self, tls: TlsContext) -> bool {
        Reactor::set_tls(self, tls)
    }

    fn is_tls(&self) -> bool {
        Reactor::is_tls(self)
    }
}

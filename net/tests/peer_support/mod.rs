//! Shared support for the peer transport tests: nodes made of a reactor with a peer
//! configuration, all driven from the test thread (each `pump` polls every node briefly), and raw
//! sockets for misbehaving peers. Every wait polls for the expected state with a deadline.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use atoll_net::peer::{
    encode_auth, verify_challenge, ClusterSecret, FrameHeader, FrameKind, Hello, CHALLENGE_BYTES,
    FRAME_HEADER_BYTES, PEER_MAGIC_V1,
};
use atoll_net::protocol::{Request, Response};
use atoll_net::reactor::{
    CloseReason, Event, PeerConfig, PeerDirection, PeerStats, Reactor, ReactorConfig,
};

pub const DEADLINE: Duration = Duration::from_secs(20);
pub const CLUSTER: u64 = 0xa701;

/// One node: a reactor and what its host saw.
pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    pub reactor: Reactor,
    /// Message frames received, in order, with their sender.
    pub frames: Vec<(u64, Vec<u8>)>,
    pub connected: Vec<(u64, PeerDirection, String)>,
    pub disconnected: Vec<(u64, PeerDirection, CloseReason, u64)>,
    pub requests: usize,
}

/// The secret of the test cluster.
pub fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes([0x5a; 32])
}

pub fn peer_config(id: u64) -> PeerConfig {
    PeerConfig::new(id, CLUSTER, secret(), "", 0x5eed_0000 + id)
}

impl Node {
    /// A node listening on a free port of 127.0.0.1.
    pub fn start(id: u64, tweak: impl FnOnce(&mut PeerConfig)) -> Node {
        Node::start_at("127.0.0.1:0".parse().unwrap(), id, tweak)
    }

    pub fn start_at(addr: SocketAddr, id: u64, tweak: impl FnOnce(&mut PeerConfig)) -> Node {
        Node::start_full(addr, id, tweak, |_| {})
    }

    /// A node on a free port with both its peer and reactor configurations tweaked.
    pub fn start_with(
        id: u64,
        tweak: impl FnOnce(&mut PeerConfig),
        reactor: impl FnOnce(&mut ReactorConfig),
    ) -> Node {
        Node::start_full("127.0.0.1:0".parse().unwrap(), id, tweak, reactor)
    }

    fn start_full(
        addr: SocketAddr,
        id: u64,
        tweak: impl FnOnce(&mut PeerConfig),
        reactor: impl FnOnce(&mut ReactorConfig),
    ) -> Node {
        let mut peer = peer_config(id);
        tweak(&mut peer);
        let mut config = ReactorConfig {
            peer: Some(peer),
            ..ReactorConfig::default()
        };
        reactor(&mut config);
        let reactor = Reactor::bind(addr, config).unwrap();
        Node {
            id,
            addr: reactor.local_addr().unwrap(),
            reactor,
            frames: Vec::new(),
            connected: Vec::new(),
            disconnected: Vec::new(),
            requests: 0,
        }
    }

    /// One turn of the node's loop: poll, record, answer client requests (LEADER names this
    /// node, anything else gets EMPTY). Returns the number of frames this poll delivered.
    pub fn turn(&mut self, timeout: Duration) -> usize {
        let mut events = Vec::new();
        self.reactor.poll(&mut events, Some(timeout)).unwrap();
        let mut delivered = 0;
        for event in events {
            match event {
                Event::PeerFrame { from, frame } => {
                    delivered += 1;
                    self.frames.push((from, frame));
                }
                Event::PeerConnected {
                    node,
                    direction,
                    address,
                } => self.connected.push((node, direction, address)),
                Event::PeerDisconnected {
                    node,
                    direction,
                    reason,
                    frames_dropped,
                } => self
                    .disconnected
                    .push((node, direction, reason, frames_dropped)),
                Event::Request { conn, request } => {
                    self.requests += 1;
                    let response = match request {
                        Request::Leader => Response::Server {
                            id: self.id,
                            address: self.addr.to_string(),
                        },
                        _ => Response::Empty,
                    };
                    let _ = self.reactor.send(conn, &response);
                }
                _ => {}
            }
        }
        delivered
    }

    pub fn send(&mut self, to: &Node, frame: Vec<u8>) {
        self.reactor
            .peer_send(to.id, &to.addr.to_string(), frame)
            .unwrap();
    }

    pub fn stats(&self, to: u64) -> PeerStats {
        self.reactor.peer_stats(to).unwrap()
    }

    pub fn frames_from(&self, from: u64) -> Vec<&[u8]> {
        self.frames
            .iter()
            .filter(|(f, _)| *f == from)
            .map(|(_, frame)| frame.as_slice())
            .collect()
    }

    pub fn outbound_connected(&self, to: u64) -> bool {
        self.reactor.peer_stats(to).is_some_and(|s| s.connected)
    }
}

/// Polls every node (1 ms each) until `condition` holds; panics at the deadline.
pub fn pump_until(nodes: &mut [&mut Node], what: &str, condition: impl Fn(&[&mut Node]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for node in nodes.iter_mut() {
            node.turn(Duration::from_millis(1));
        }
        if condition(nodes) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// Polls every node for `duration` (to show that something does *not* happen).
pub fn pump_for(nodes: &mut [&mut Node], duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        for node in nodes.iter_mut() {
            node.turn(Duration::from_millis(1));
        }
    }
}

/// A frame whose bytes say who sent it, its sequence number, and its length.
pub fn frame(from: u64, seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 12);
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&from.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend((12..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    bytes
}

/// Checks that `frames` are `frame(from, first..first+n, ...)` in order, intact.
pub fn assert_sequence(frames: &[&[u8]], from: u64, first: u32) {
    for (i, bytes) in frames.iter().enumerate() {
        let seq = first + i as u32;
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), from);
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            seq,
            "frame {i}"
        );
        assert_eq!(
            *bytes,
            frame(from, seq, bytes.len()).as_slice(),
            "frame {seq} corrupted"
        );
    }
}

/// A raw socket speaking (or breaking) the peer protocol by hand.
pub struct RawPeer {
    pub stream: TcpStream,
}

impl RawPeer {
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nonblocking(true).unwrap();
        RawPeer { stream }
    }

    /// Connects and sends the magic word and a hello.
    pub fn hello(addr: SocketAddr, hello: &Hello) -> RawPeer {
        let mut peer = RawPeer::connect(addr);
        let mut bytes = PEER_MAGIC_V1.to_le_bytes().to_vec();
        hello.encode(&mut bytes);
        peer.write(&bytes);
        peer
    }

    /// Connects to `node`, sends the magic word and `hello`, and pumps `node` until its
    /// CHALLENGE arrives; returns the peer, the hello payload and the acceptor's CHALLENGE
    /// payload (not yet answered).
    pub fn challenged(node: &mut Node, hello: &Hello) -> (RawPeer, Vec<u8>, Vec<u8>) {
        let mut peer = RawPeer::hello(node.addr, hello);
        let mut encoded = Vec::new();
        hello.encode(&mut encoded);
        let hello_payload = encoded[FRAME_HEADER_BYTES..].to_vec();
        let mut got = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while got.len() < FRAME_HEADER_BYTES + CHALLENGE_BYTES {
            node.turn(Duration::from_millis(1));
            let mut buf = [0u8; 256];
            match peer.stream.read(&mut buf) {
                Ok(0) => panic!("the acceptor closed instead of challenging"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the challenge: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a challenge"
            );
        }
        assert_eq!(
            got.len(),
            FRAME_HEADER_BYTES + CHALLENGE_BYTES,
            "only a CHALLENGE"
        );
        let header = FrameHeader::decode(got[..8].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(header.kind, FrameKind::Challenge);
        (peer, hello_payload, got[FRAME_HEADER_BYTES..].to_vec())
    }

    /// A peer that completed the handshake with `node` using `secret` (checking the node's
    /// proof first); frames written next are delivered.
    pub fn authenticated(node: &mut Node, hello: &Hello) -> RawPeer {
        let (mut peer, hello_payload, challenge) = RawPeer::challenged(node, hello);
        let nonce = verify_challenge(&secret(), &hello_payload, &challenge)
            .expect("the node proves it holds the secret");
        let mut auth = Vec::new();
        encode_auth(&secret(), &hello_payload, &nonce, &mut auth);
        peer.write(&auth);
        peer
    }

    pub fn write(&mut self, bytes: &[u8]) {
        // Small writes into an empty socket buffer do not block.
        self.stream.write_all(bytes).unwrap();
    }

    /// Whether the other side closed the connection (EOF or reset); never blocks. A peer
    /// connection's receiver writes only its CHALLENGE (at most one), which is skipped.
    pub fn is_closed(&self) -> bool {
        let mut buf = [0u8; FRAME_HEADER_BYTES + CHALLENGE_BYTES + 1];
        match (&self.stream).read(&mut buf) {
            Ok(0) => true,
            Ok(n) if n <= FRAME_HEADER_BYTES + CHALLENGE_BYTES => {
                assert_eq!(
                    buf[4],
                    FrameKind::Challenge as u8,
                    "only a CHALLENGE is written"
                );
                self.is_closed()
            }
            Ok(_) => panic!("a peer connection's receiver wrote more than a CHALLENGE"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

pub fn hello_for(to: u64, from: u64) -> Hello {
    Hello {
        from,
        to,
        cluster_id: CLUSTER,
        incarnation: 1,
        nonce: [from as u8; 16],
        address: format!("127.0.0.1:{}", 40000 + from),
    }
}

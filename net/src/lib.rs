//! atoll-net: the networking of an atoll node. One mio reactor owns every socket and timer,
//! speaks the dqlite client wire protocol (version 1) so every existing dqlite client works, and
//! a blocking client talks to a cluster.
//!
//! What it must never do: block the reactor thread, let one connection grow the node's memory
//! without bound, panic or over-allocate on bytes from the network, or call into core/raft/storage
//! (the node loop in `node/` wires the reactor to them).
//!
//! ```text
//!  clients ─TCP─► Reactor::poll ─Event::Request───► host (node loop) ──► core / raft
//!  peers ───TCP─►       │       ─Event::PeerFrame─►        │
//!  clients ◄─TCP─ Reactor::send / send_encoded ◄───────────┤  (ROWS batches on Drained)
//!  peers ◄──TCP── Reactor::peer_send ◄─────────────────────┘  (one outbound link per peer)
//! ```
//!
//! - [`protocol`]: every request and response, values, framing; decoders check every length
//!   against the remaining bytes before allocating and return precise [`protocol::DecodeError`]s.
//! - [`reactor`]: the event loop's I/O half, driven by the host with `poll`/`send`/`close` and
//!   timers. Invariants: at most one request per connection is with the host at a time; a
//!   connection is not read while its unwritten output exceeds the high-water mark.
//! - [`peer`]: the node-to-node wire format (greeting, hello, frames); the reactor's peer
//!   transport keeps one outbound connection per peer with a bounded send queue and redials with
//!   backoff, and delivers inbound frames as `Event::PeerFrame`. Raft messages are opaque here.
//! - [`client`]: blocking client with leader discovery and safe retries.
//! - `capture` (feature `test-tools`): real dqlite traffic as test vectors, and a harness
//!   replaying it at a server.
//! - [`fuzz`]: entry points for the fuzz targets.
//! - `testing` (feature `test-tools`): a fault-injecting TCP proxy for cluster tests (std
//!   threads).
//!
//! The client, against a running node:
//!
//! ```no_run
//! use atoll_net::client::{Client, ClientConfig};
//! use atoll_net::protocol::Value;
//!
//! let nodes = ["127.0.0.1:9001", "127.0.0.1:9002"];
//! let mut client = Client::connect(&nodes, ClientConfig::default())?;
//! client.open("app")?;
//! client.exec_sql("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)", &[])?;
//! let result = client.exec_sql(
//!     "INSERT INTO kv VALUES (?, ?)",
//!     &[Value::Text("key".into()), Value::Blob(vec![1, 2, 3])],
//! )?;
//! assert_eq!(result.rows_affected, 1);
//! let rows = client.query_sql("SELECT k, v FROM kv", &[])?;
//! println!("{:?} {:?}", rows.columns, rows.rows);
//! for node in client.cluster()? {
//!     println!("node {} at {} ({:?})", node.id, node.address, node.role);
//! }
//! # Ok::<(), atoll_net::client::ClientError>(())
//! ```

//!
//! The peer transport: two reactors (two nodes of cluster 7) exchange an opaque frame. The first
//! `peer_send` dials; the receiver gets the bytes with the sender's node id.
//!
//! ```
//! use std::time::Duration;
//! use atoll_net::peer::ClusterSecret;
//! use atoll_net::reactor::{Event, PeerConfig, Reactor, ReactorConfig};
//!
//! // Every member holds the cluster's secret (`ClusterSecret::generate()` makes one).
//! let secret = ClusterSecret::from_bytes([7; 32]);
//! let node = |id| {
//!     let config = ReactorConfig {
//!         // An empty address advertises the listening one; the seed should vary per start.
//!         peer: Some(PeerConfig::new(id, 7, secret.clone(), "", id)),
//!         ..ReactorConfig::default()
//!     };
//!     Reactor::bind("127.0.0.1:0".parse().unwrap(), config).unwrap()
//! };
//! let (mut one, mut two) = (node(1), node(2));
//! let two_addr = two.local_addr()?.to_string();
//! one.peer_send(2, &two_addr, b"raft message".to_vec()).unwrap();
//! let mut events = Vec::new();
//! let mut received = None;
//! for _ in 0..10_000 {
//!     one.poll(&mut events, Some(Duration::from_millis(1)))?;
//!     events.clear(); // PeerConnected { node: 2, direction: Outbound, .. }
//!     two.poll(&mut events, Some(Duration::from_millis(1)))?;
//!     for event in events.drain(..) {
//!         if let Event::PeerFrame { from, frame } = event {
//!             received = Some((from, frame));
//!         }
//!     }
//!     if received.is_some() {
//!         break;
//!     }
//! }
//! assert_eq!(received, Some((1, b"raft message".to_vec())));
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod blocking;
#[cfg(feature = "test-tools")]
pub mod capture;
pub mod client;
pub mod fuzz;
pub mod peer;
pub mod protocol;
pub mod reactor;
pub mod sql;
#[cfg(feature = "test-tools")]
pub mod testing;
pub mod tls;

mod conn;
mod peer_link;

//! Test tooling for cluster tests: [`FaultProxy`], a TCP proxy that injects network faults
//! between two nodes. It is not part of a node: it runs on its own std threads (two per proxied
//! connection, one per direction) and is meant for loopback tests only.
//!
//! Put one proxy in front of each node's address and give the other nodes the proxy's address
//! for it; then, at runtime, the test can:
//! - [`FaultProxy::blackhole`] one or both directions: the sockets stay open but the bytes are
//!   discarded, and a close on one side is not passed on, so the endpoints see a partition
//!   (silence), not a reset;
//! - [`FaultProxy::set_latency`]: delay every chunk by a fixed time (order is kept);
//! - [`FaultProxy::reset`]: close every proxied connection now (both endpoints see a close);
//! - [`FaultProxy::heal`]: end blackholes and latency. A connection that lost bytes cannot carry
//!   on (a TCP stream has no gaps: the receiver would read a frame's tail as a header), so
//!   healing closes those, as TCP would have given up on them in a long partition; connections
//!   that lost nothing carry on.
//!
//! ```no_run
//! use atoll_net::testing::{Direction, FaultProxy};
//!
//! let node_b = "127.0.0.1:9002".parse().unwrap();
//! let proxy = FaultProxy::start(node_b).unwrap();
//! // Node A dials proxy.addr() for node B.
//! proxy.blackhole(Direction::Both); // partition A from B
//! proxy.heal(); // and heal it
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a forwarding thread waits for bytes before it looks at the faults again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes read per chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Time to connect to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the dialling side (the client of the proxy) to the target.
    ToTarget,
    /// From the target back to the dialling side.
    ToClient,
    /// Both.
    Both,
}

#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    blackhole_to_target: bool,
    blackhole_to_client: bool,
    latency: Duration,
}

impl Faults {
    fn blackholed(&self, to_target: bool) -> bool {
        if to_target {
            self.blackhole_to_target
        } else {
            self.blackhole_to_client
        }
    }
}

#[derive(Debug)]
struct ProxyConn {
    client: TcpStream,
    target: TcpStream,
    /// Bytes were discarded or a close was hidden: the stream cannot be resumed.
    tainted: AtomicBool,
    closed: AtomicBool,
}

impl ProxyConn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Errors mean the socket is gone already.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    conns: Mutex<Vec<Arc<ProxyConn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
    bytes_forwarded: AtomicU64,
    bytes_dropped: AtomicU64,
}

impl Shared {
    fn faults(&self) -> Faults {
        *lock(&self.faults)
    }
}

/// A mutex poisoned by a panicking forwarder still holds valid data (plain flags and lists).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fault-injecting TCP proxy: forwards a listening port on 127.0.0.1 to a target address.
/// See the module documentation. Dropping it closes every connection and joins its threads.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            bytes_forwarded: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
        });
        let accept_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(FaultProxy {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Discards the traffic of `direction` from now on (open connections and new ones alike),
    /// and hides a close that would travel that way.
    pub fn blackhole(&self, direction: Direction) {
        let mut faults = lock(&self.shared.faults);
        match direction {
            Direction::ToTarget => faults.blackhole_to_target = true,
            Direction::ToClient => faults.blackhole_to_client = true,
            Direction::Both => {
                faults.blackhole_to_target = true;
                faults.blackhole_to_client = true;
            }
        }
    }

    /// Delays every chunk forwarded from now on by `latency` (zero removes the delay).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.faults).latency = latency;
    }

    /// Ends every fault. Connections that lost bytes or hid a close are closed; others carry on.
    pub fn heal(&self) {
        *lock(&self.shared.faults) = Faults::default();
        let mut conns = lock(&self.shared.conns);
        for conn in conns.iter() {
            if conn.tainted.load(Ordering::SeqCst) {
                conn.close();
            }
        }
        conns.retain(|conn| !conn.closed.load(Ordering::SeqCst));
    }

    /// Closes every proxied connection now; new ones are accepted as usual.
    pub fn reset(&self) {
        let mut conns = lock(&self.shared.conns);
        for conn in conns.drain(..) {
            conn.close();
        }
    }

    /// Proxied connections currently open.
    pub fn connections(&self) -> usize {
        let mut conns = lock(&self.shared.conns);
        conns.retain(|conn| !conn.closed.load(Ordering::SeqCst));
        conns.len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes delivered, both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.bytes_forwarded.load(Ordering::SeqCst)
    }

    /// Bytes discarded by blackholes, both directions.
    pub fn bytes_dropped(&self) -> u64 {
        self.shared.bytes_dropped.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; a failure means the listener is gone already.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        self.reset();
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    // Ends when the proxy is dropped (it sets `stop`, then connects to wake this accept).
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // A target that cannot be reached closes the client: the dialler sees a failed connect.
        let Ok(target) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            continue;
        };
        if let Err(e) = start_conn(client, target, shared) {
            log::debug!("fault proxy: cannot forward a connection: {e}");
        }
    }
}

fn start_conn(client: TcpStream, target: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nodelay(true)?;
    target.set_nodelay(true)?;
    let conn = Arc::new(ProxyConn {
        client: client.try_clone()?,
        target: target.try_clone()?,
        tainted: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    lock(&shared.conns).push(conn.clone());
    let mut threads = lock(&shared.threads);
    threads.retain(|thread| !thread.is_finished());
    for (to_target, src, dst) in [
        (true, client.try_clone()?, target.try_clone()?),
        (false, target, client),
    ] {
        let shared = shared.clone();
        let conn = conn.clone();
        threads.push(
            std::thread::Builder::new()
                .name("fault-proxy-forward".into())
                .spawn(move || forward(to_target, src, dst, &conn, &shared))?,
        );
    }
    Ok(())
}

/// Forwards one direction of one connection until the connection closes or the proxy stops.
fn forward(
    to_target: bool,
    mut src: TcpStream,
    mut dst: TcpStream,
    conn: &ProxyConn,
    shared: &Shared,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut delayed: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut src_open = true;
    let mut dst_gone = false;
    let mut close_when_drained = false;
    // Ends when the connection is closed (by either direction, a reset, a heal or the drop).
    while !shared.stop.load(Ordering::SeqCst) && !conn.closed.load(Ordering::SeqCst) {
        let faults = shared.faults();
        let now = Instant::now();
        // Deliver the chunks whose delay is over, in order.
        while delayed.front().is_some_and(|(due, _)| *due <= now) {
            let (_, chunk) = delayed.pop_front().expect("front exists");
            if dst_gone || faults.blackholed(to_target) {
                shared
                    .bytes_dropped
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                conn.tainted.store(true, Ordering::SeqCst);
            } else if dst.write_all(&chunk).is_ok() {
                shared
                    .bytes_forwarded
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            } else {
                // The destination is gone; that news travels the other way.
                dst_gone = true;
                if faults.blackholed(!to_target) {
                    conn.tainted.store(true, Ordering::SeqCst);
                } else {
                    conn.close();
                    return;
                }
            }
        }
        if close_when_drained && delayed.is_empty() {
            conn.close();
            return;
        }
        let wait = delayed
            .front()
            .map_or(POLL_INTERVAL, |(due, _)| due.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), POLL_INTERVAL);
        if !src_open {
            // Nothing to read any more; keep the connection (and its hidden close) as it is.
            std::thread::sleep(wait);
            continue;
        }
        if src.set_read_timeout(Some(wait)).is_err() {
            conn.close();
            return;
        }
        let read = src.read(&mut buffer);
        // The faults may have changed while the read waited: the bytes obey the current ones.
        let faults = shared.faults();
        match read {
            Ok(0) => {
                if faults.blackholed(to_target) {
                    // The close would travel this way: hide it.
                    conn.tainted.store(true, Ordering::SeqCst);
                    src_open = false;
                } else {
                    src_open = false;
                    close_when_drained = true;
                }
            }
            Ok(n) => {
                if faults.blackholed(to_target) || dst_gone {
                    shared.bytes_dropped.fetch_add(n as u64, Ordering::SeqCst);
                    conn.tainted.store(true, Ordering::SeqCst);
                } else {
                    delayed.push_back((Instant::now() + faults.latency, buffer[..n].to_vec()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                if conn.closed.load(Ordering::SeqCst) {
                    return;
                }
                if faults.blackholed(to_target) {
                    conn.tainted.store(true, Ordering::SeqCst);
                    src_open = false;
                } else {
                    conn.close();
                    return;
                }
            }
        }
    }
}

//! The reactor's limits with real sockets on 127.0.0.1: a test server made of the reactor and a
//! tiny scripted handler runs on its own thread; clients are plain blocking sockets. Every wait
//! polls for the expected state with a deadline.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atoll_net::blocking::read_message;
use atoll_net::protocol::response::ROWS_BATCH_BYTES_TARGET;
use atoll_net::protocol::{
    ProtocolVersion, Request, Response, ResponseContext, RowsBatch, RowsEnd, ValueRef,
    PEER_MAGIC_V1, VERSION_1, VERSION_LEGACY,
};
use atoll_net::reactor::{
    CloseReason, Completion, ConnId, Event, Reactor, ReactorConfig, SendError,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// What the server thread saw, for the tests to assert on.
#[derive(Debug, Default)]
struct Observed {
    closed: Vec<(ConnId, CloseReason)>,
    connected: usize,
    /// Largest (inbound, outbound) buffered bytes seen on any connection after a poll.
    inbound_max: usize,
    outbound_max: usize,
    rows_sent: u64,
    requests: usize,
    /// The reactor's client buffer charge after the last poll, and the largest seen.
    charged: usize,
    charged_max: usize,
}

struct Stream {
    next: u64,
    total: u64,
    text: String,
}

struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts the reactor with `config` and the scripted handler:
    /// LEADER → SERVER(1, own address); CLIENT → WELCOME; EXEC_SQL → RESULT(0, 0);
    /// QUERY_SQL "rows N [W]" → N rows (an integer and a W-byte text) streamed in dqlite-sized
    /// batches, the next batch produced on Drained; HEARTBEAT → FAILURE 1005; else EMPTY.
    fn start(config: ReactorConfig) -> TestServer {
        let mut reactor = Reactor::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = reactor.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let thread = {
            let stop = stop.clone();
            let observed = observed.clone();
            std::thread::spawn(move || serve(&mut reactor, addr, &stop, &observed))
        };
        TestServer {
            addr,
            stop,
            observed,
            thread: Some(thread),
        }
    }

    fn observed<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        f(&self.observed.lock().unwrap())
    }

    /// Polls `condition` until it holds or the deadline passes.
    fn wait_for(&self, what: &str, condition: impl Fn(&Observed) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !self.observed(&condition) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Sends the next batch of a stream. A send may fail with `Closed` when the connection's
/// `Closed` event comes later in the same batch of events; the host just drops the answer.
fn send_batch(reactor: &mut Reactor, conn: ConnId, stream: &mut Stream) -> u64 {
    let mut sent = 0;
    let result = reactor.send_encoded(conn, |out| {
        let mut batch = RowsBatch::begin(out, &["n", "t"], ROWS_BATCH_BYTES_TARGET);
        while stream.next < stream.total && !batch.is_full() {
            batch.push_row(&[
                ValueRef::Integer(stream.next as i64),
                ValueRef::Text(&stream.text),
            ]);
            stream.next += 1;
            sent += 1;
        }
        if stream.next == stream.total {
            batch.finish(RowsEnd::Done);
            Completion::Final
        } else {
            batch.finish(RowsEnd::Part);
            Completion::More
        }
    });
    match result {
        Ok(()) => sent,
        Err(SendError::Closed) => 0,
        Err(e) => panic!("{e}"),
    }
}

fn serve(reactor: &mut Reactor, addr: SocketAddr, stop: &AtomicBool, observed: &Mutex<Observed>) {
    let mut events = Vec::new();
    let mut streams: HashMap<ConnId, Stream> = HashMap::new();
    let mut conns: Vec<ConnId> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        reactor
            .poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        let mut observed = observed.lock().unwrap();
        for event in events.drain(..) {
            match event {
                Event::Connected { conn, .. } => {
                    observed.connected += 1;
                    conns.push(conn);
                }
                Event::Closed { conn, reason } => {
                    streams.remove(&conn);
                    conns.retain(|c| *c != conn);
                    observed.closed.push((conn, reason));
                }
                Event::Drained { conn } => {
                    if let Some(stream) = streams.get_mut(&conn) {
                        observed.rows_sent += send_batch(reactor, conn, stream);
                        if stream.next == stream.total {
                            streams.remove(&conn);
                        }
                    }
                }
                // This server has no peer transport and no metrics listener.
                Event::Timer { .. }
                | Event::MetricsRequest { .. }
                | Event::PeerConnected { .. }
                | Event::PeerDisconnected { .. }
                | Event::PeerFrame { .. } => {}
                Event::Request { conn, request } => {
                    observed.requests += 1;
                    let response = match request {
                        Request::Leader => Response::Server {
                            id: 1,
                            address: addr.to_string(),
                        },
                        Request::Client { .. } => Response::Welcome {
                            heartbeat_timeout_ms: 15000,
                        },
                        Request::ExecSql { .. } => Response::Result {
                            last_insert_id: 0,
                            rows_affected: 0,
                        },
                        Request::QuerySql { sql, .. } => {
                            let mut words = sql.split_whitespace().skip(1);
                            let total = words.next().unwrap().parse().unwrap();
                            let width = words.next().map_or(1, |w| w.parse().unwrap());
                            let mut stream = Stream {
                                next: 0,
                                total,
                                text: "x".repeat(width),
                            };
                            observed.rows_sent += send_batch(reactor, conn, &mut stream);
                            if stream.next < stream.total {
                                streams.insert(conn, stream);
                            }
                            continue;
                        }
                        Request::Heartbeat { .. } => {
                            Response::failure(1005, "unrecognized request type")
                        }
                        _ => Response::Empty,
                    };
                    match reactor.send(conn, &response) {
                        Ok(()) | Err(SendError::Closed) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        observed.charged = reactor.client_buffered_bytes();
        observed.charged_max = observed.charged_max.max(observed.charged);
        for &conn in &conns {
            if let Some((inbound, outbound)) = reactor.buffered_bytes(conn) {
                observed.inbound_max = observed.inbound_max.max(inbound);
                observed.outbound_max = observed.outbound_max.max(outbound);
            }
        }
    }
}

/// A blocking test client speaking raw bytes.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    context: ResponseContext,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
            context: ResponseContext::default(),
        }
    }

    fn handshake(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr);
        client.write(&VERSION_1.to_le_bytes());
        client
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn send(&mut self, request: &Request) {
        let mut out = Vec::new();
        request.encode(&mut out);
        self.write(&out);
    }

    fn receive(&mut self) -> Response {
        read_message(&mut self.stream, 1 << 30, &mut self.buffer).unwrap();
        Response::decode_message(&self.buffer, &self.context).unwrap()
    }

    fn request(&mut self, request: &Request) -> Response {
        self.send(request);
        self.receive()
    }

    /// Reads until the server closes the connection; returns the bytes received meanwhile.
    fn read_to_close(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return bytes,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return bytes,
                Err(e) => panic!("expected the server to close the connection: {e}"),
            }
        }
    }

    fn assert_served(&mut self) {
        assert!(matches!(
            self.request(&Request::Leader),
            Response::Server { id: 1, .. }
        ));
    }
}

fn assert_failure(response: Response, code: u64) -> String {
    match response {
        Response::Failure { code: c, message } => {
            assert_eq!(c, code, "{message}");
            message
        }
        other => panic!("expected FAILURE {code}, got {other:?}"),
    }
}

#[test]
fn test_pipelined_requests_are_answered_in_order() {
    // A client may write several requests at once (the Python client sends version + CLIENT in
    // one write); the reactor hands them to the host one at a time and the answers come back in
    // request order.
    let server = TestServer::start(ReactorConfig::default());
    let mut client = Client::connect(server.addr);
    let mut bytes = VERSION_1.to_le_bytes().to_vec();
    Request::Client { id: 7 }.encode(&mut bytes);
    Request::Leader.encode(&mut bytes);
    Request::ExecSql {
        db_id: 0,
        sql: "BEGIN".into(),
        params: vec![],
    }
    .encode(&mut bytes);
    client.write(&bytes);
    assert!(matches!(client.receive(), Response::Welcome { .. }));
    assert!(matches!(client.receive(), Response::Server { .. }));
    assert!(matches!(client.receive(), Response::Result { .. }));
}

#[test]
fn test_malformed_frames_get_failure_and_the_connection_survives() {
    // Framing stays intact for an empty body, an unknown type, HEARTBEAT and an undecodable body:
    // each gets one FAILURE and the connection is served as before.
    let server = TestServer::start(ReactorConfig::default());
    let mut client = Client::handshake(server.addr);
    client.write(&[0, 0, 0, 0, 9, 0, 0, 0]);
    assert_failure(client.receive(), 1005);
    client.write(&[1, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let message = assert_failure(client.receive(), 1005);
    assert!(message.contains("42"), "{message}");
    assert_failure(client.request(&Request::Heartbeat { timestamp: 1 }), 1005);
    // OPEN whose text has no NUL inside the body.
    client.write(&[
        1, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h',
    ]);
    assert_failure(client.receive(), 1005);
    // DESCRIBE with format 2 (format 1 is atoll's; any non-zero one aborts dqlite 1.11): one
    // FAILURE 15, nothing else.
    client.write(&[1, 0, 0, 0, 18, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    assert_failure(client.receive(), 15);
    client.assert_served();
}

#[test]
fn test_oversized_frame_gets_failure_then_close_and_others_are_served() {
    // A header claiming more than the maximum body (here 0xffffffff words) cannot be skipped
    // without reading it: FAILURE, then the connection closes. Other clients are unaffected.
    let config = ReactorConfig {
        message_body_bytes_max: 1024,
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut bystander = Client::handshake(server.addr);
    bystander.assert_served();
    let mut client = Client::handshake(server.addr);
    client.write(&[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0]);
    assert_failure(client.receive(), 1005);
    assert!(client.read_to_close().is_empty());
    server.wait_for("the host to hear why", |o| {
        o.closed
            .iter()
            .any(|(_, reason)| matches!(reason, CloseReason::Malformed(_)))
    });
    // Exactly at the limit is fine.
    let mut client = Client::handshake(server.addr);
    let mut bytes = vec![128, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[b'x'; 1015]);
    bytes.push(0);
    client.write(&bytes);
    assert!(matches!(client.receive(), Response::Result { .. }));
    bystander.assert_served();
}

#[test]
fn test_bad_version_closes_silently_and_peer_magic_is_dispatched() {
    // An unknown version word closes the connection without a byte, as dqlite does. The peer
    // magic is recognised, and closed by a reactor built without a peer configuration. The
    // legacy version gets the address-only SERVER.
    let server = TestServer::start(ReactorConfig::default());
    let mut client = Client::connect(server.addr);
    client.write(&2u64.to_le_bytes());
    Request::Leader.encode(&mut Vec::new());
    assert!(client.read_to_close().is_empty());
    let mut client = Client::connect(server.addr);
    client.write(&PEER_MAGIC_V1.to_le_bytes());
    assert!(client.read_to_close().is_empty());
    let mut client = Client::connect(server.addr);
    client.write(&VERSION_LEGACY.to_le_bytes());
    client.context.version = ProtocolVersion::Legacy;
    assert_eq!(
        client.request(&Request::Leader),
        Response::Server {
            id: 0,
            address: server.addr.to_string()
        }
    );
    let mut client = Client::handshake(server.addr);
    client.assert_served();
    assert_eq!(server.observed(|o| o.connected), 2);
}

#[test]
fn test_connection_limit_refuses_extra_connections() {
    // With room for two connections, a third is accepted and closed at once; once one of the
    // two leaves, a new one is served.
    let config = ReactorConfig {
        connections_max: 2,
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut first = Client::handshake(server.addr);
    first.assert_served();
    let mut second = Client::handshake(server.addr);
    second.assert_served();
    let mut third = Client::handshake(server.addr);
    assert!(third.read_to_close().is_empty());
    drop(first);
    server.wait_for("the first connection to close", |o| o.closed.len() == 1);
    let mut fourth = Client::handshake(server.addr);
    fourth.assert_served();
    second.assert_served();
}

#[test]
fn test_abrupt_disconnect_mid_request_is_cleaned_up() {
    // A client that sends a query for a large result and vanishes: the host gets Closed, the
    // stream is dropped, and others are served.
    let server = TestServer::start(ReactorConfig::default());
    let mut client = Client::handshake(server.addr);
    client.send(&Request::QuerySql {
        db_id: 0,
        sql: "rows 1000000 100".into(),
        params: vec![],
    });
    server.wait_for("the query to start", |o| o.rows_sent > 0);
    drop(client);
    server.wait_for("the connection to close", |o| o.closed.len() == 1);
    let mut other = Client::handshake(server.addr);
    other.assert_served();
}

#[test]
fn test_stalled_reader_is_bounded_and_closed() {
    // A client asks for 100 MB of rows and never reads. The host produces a batch only on
    // Drained, so the reactor's outbound buffer never holds more than about one batch, the
    // kernel's socket buffers fill, and after the write stall timeout the connection is closed.
    let config = ReactorConfig {
        write_stall_timeout: Duration::from_millis(500),
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut client = Client::handshake(server.addr);
    client.send(&Request::QuerySql {
        db_id: 0,
        sql: "rows 100000 1000".into(),
        params: vec![],
    });
    server.wait_for("the stalled connection to be closed", |o| {
        o.closed
            .iter()
            .any(|(_, reason)| *reason == CloseReason::WriteStalled)
    });
    let (rows_sent, outbound_max) = server.observed(|o| (o.rows_sent, o.outbound_max));
    assert!(rows_sent < 100_000, "{rows_sent}");
    assert!(
        outbound_max <= 2 * ROWS_BATCH_BYTES_TARGET,
        "{outbound_max}"
    );
}

#[test]
fn test_client_that_pipelines_without_reading_stops_being_read() {
    // A client writes LEADER requests flat out and never reads the answers. The answers fill
    // the kernel buffers, the reactor's outbound buffer passes the high-water mark, and the
    // reactor stops reading: its buffers stay bounded, and the client's writes block.
    let config = ReactorConfig {
        out_bytes_high: 16 * 1024,
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut client = Client::handshake(server.addr);
    client
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut request = Vec::new();
    Request::Leader.encode(&mut request);
    let batch: Vec<u8> = request.iter().copied().cycle().take(64 * 1024).collect();
    let mut written = 0usize;
    let deadline = Instant::now() + DEADLINE;
    // Write until the kernel pushes back (a write times out) or 256 MB went through.
    while written < 256 << 20 {
        assert!(Instant::now() < deadline, "the server never pushed back");
        match client.stream.write(&batch) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        written < 256 << 20,
        "the server kept reading: {written} bytes"
    );
    let (inbound_max, outbound_max) = server.observed(|o| (o.inbound_max, o.outbound_max));
    assert!(inbound_max <= 96 * 1024, "{inbound_max}");
    // Requests are parsed only while the outbound buffer is under the mark: it ends at most
    // one answer past it.
    assert!(outbound_max <= 16 * 1024 + 1024, "{outbound_max}");
    // Another client is served meanwhile.
    let mut other = Client::handshake(server.addr);
    other.assert_served();
}

#[test]
fn test_large_result_streams_in_batches_on_drained() {
    // 10,000 rows leave as a sequence of ROWS batches, all but the last ending with PART.
    let server = TestServer::start(ReactorConfig::default());
    let mut client = Client::handshake(server.addr);
    client.send(&Request::QuerySql {
        db_id: 0,
        sql: "rows 10000 10".into(),
        params: vec![],
    });
    let mut rows = 0;
    let mut batches = 0;
    loop {
        let Response::Rows(batch) = client.receive() else {
            panic!("ROWS expected");
        };
        batches += 1;
        rows += batch.rows.len();
        if batch.end == RowsEnd::Done {
            break;
        }
    }
    assert_eq!(rows, 10_000);
    assert!(batches > 50, "{batches}");
    client.assert_served();
}

#[test]
fn test_handshake_and_idle_timeouts_close_half_open_connections() {
    // A connection that never sends its version word, and one that goes idle after a request,
    // are closed by the timeouts; the idle one is reported to the host.
    let config = ReactorConfig {
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: Some(Duration::from_millis(600)),
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut silent = Client::connect(server.addr);
    let mut idle = Client::handshake(server.addr);
    idle.assert_served();
    assert!(silent.read_to_close().is_empty());
    assert!(idle.read_to_close().is_empty());
    server.wait_for("the idle close event", |o| {
        o.closed
            .iter()
            .any(|(_, reason)| *reason == CloseReason::IdleTimeout)
    });
}

#[test]
fn test_timers_fire_in_deadline_order_and_cancel() {
    // Timers armed by the host come back as events in deadline order; a cancelled one never.
    let mut reactor =
        Reactor::bind("127.0.0.1:0".parse().unwrap(), ReactorConfig::default()).unwrap();
    let late = reactor.timer_after(Duration::from_millis(60), 3).unwrap();
    reactor.timer_after(Duration::from_millis(20), 1).unwrap();
    let cancelled = reactor.timer_after(Duration::from_millis(40), 2).unwrap();
    assert!(reactor.timer_cancel(cancelled));
    assert!(!reactor.timer_cancel(cancelled));
    let mut events = Vec::new();
    let mut tokens = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while tokens.len() < 2 {
        assert!(Instant::now() < deadline);
        reactor
            .poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        for event in events.drain(..) {
            if let Event::Timer { token, timer } = event {
                tokens.push(token);
                if token == 3 {
                    assert_eq!(timer, late);
                }
            }
        }
    }
    assert_eq!(tokens, vec![1, 3]);
}

#[test]
fn test_timer_limit_is_enforced() {
    let config = ReactorConfig {
        timers_max: 2,
        ..ReactorConfig::default()
    };
    let mut reactor = Reactor::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let first = reactor.timer_after(Duration::from_secs(60), 1).unwrap();
    reactor.timer_after(Duration::from_secs(60), 2).unwrap();
    assert!(reactor.timer_after(Duration::from_secs(60), 3).is_err());
    reactor.timer_cancel(first);
    assert!(reactor.timer_after(Duration::from_secs(60), 3).is_ok());
}

#[test]
fn test_waker_ends_a_poll_from_another_thread() {
    // A poll with no timeout and nothing to do would wait forever; a wake from another thread
    // (a signal handler thread, in the node) ends it without producing an event.
    let mut reactor =
        Reactor::bind("127.0.0.1:0".parse().unwrap(), ReactorConfig::default()).unwrap();
    let waker = reactor.waker().unwrap();
    let same = reactor.waker().unwrap();
    let started = std::time::Instant::now();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        waker.wake().unwrap();
    });
    let mut events = Vec::new();
    reactor.poll(&mut events, None).unwrap();
    thread.join().unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The second handle wakes the same reactor.
    same.wake().unwrap();
    reactor
        .poll(&mut events, Some(Duration::from_secs(10)))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// An EXEC_SQL frame (db 0) whose SQL text makes a body of about `body_bytes`.
fn exec_sql_frame(body_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    Request::ExecSql {
        db_id: 0,
        sql: "x".repeat(body_bytes),
        params: Vec::new(),
    }
    .encode(&mut out);
    out
}

#[test]
fn test_request_buffers_grow_with_bytes_and_share_a_budget() {
    let config = ReactorConfig {
        client_buffer_bytes_max: 1024 * 1024,
        ..ReactorConfig::default()
    };
    let server = TestServer::start(config);
    let mut bystander = Client::handshake(server.addr);
    bystander.assert_served();
    // Headers declaring 60 MiB bodies, and nothing more: no buffer grows for them (before, each
    // reserved its whole frame: 20 x 60 MiB).
    let mut idle: Vec<Client> = (0..20)
        .map(|_| {
            let mut client = Client::handshake(server.addr);
            client.write(&exec_sql_frame(60 << 20)[..16]);
            client
        })
        .collect();
    bystander.assert_served();
    assert_eq!(server.observed(|o| o.charged_max), 0);

    // A 900 KiB request, all but its last byte: its buffer grows with what arrived.
    let big = exec_sql_frame(900 * 1024);
    let mut first = Client::handshake(server.addr);
    first.write(&big[..big.len() - 1]);
    server.wait_for("the first request to be buffered", |o| {
        o.charged >= 800 * 1024
    });
    assert!(server.observed(|o| o.charged) <= big.len());
    // A second one does not fit the 1 MiB budget: FAILURE 7, then close.
    let mut second = Client::handshake(server.addr);
    let _ = second.stream.write_all(&big[..400 * 1024]);
    if let Ok(header) = read_message(&mut second.stream, 1 << 20, &mut second.buffer) {
        let _ = header;
        let response = Response::decode_message(&second.buffer, &second.context).unwrap();
        let message = assert_failure(response, 7);
        assert!(message.contains("out of memory"), "{message}");
    }
    server.wait_for("the refusal", |o| {
        o.closed
            .iter()
            .any(|(_, reason)| *reason == CloseReason::BufferBudget)
    });
    // The first completes and is answered; its charge is given back; everyone is served.
    first.write(&big[big.len() - 1..]);
    assert!(matches!(first.receive(), Response::Result { .. }));
    server.wait_for("the charge to drop", |o| o.charged == 0);
    bystander.assert_served();
    first.assert_served();
    for client in &mut idle {
        client.write(&[0]);
    }
}

//! The peer transport under faults, with real sockets on 127.0.0.1: peers that restart, dials
//! that fail (backoff growth and reset), partitions, latency and resets injected by
//! `atoll_net::testing::FaultProxy`, and a restart hidden behind a half-open connection.

mod peer_support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use atoll_net::reactor::{CloseReason, PeerDirection};
use atoll_net::testing::{Direction, FaultProxy};
use peer_support::*;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn test_restarted_peer_is_redialled_and_frames_flow_again() {
    // B's reactor is dropped (the process died: the kernel closes its sockets) and rebuilt on
    // the same port. A notices the close, redials with backoff until B is back, and frames sent
    // after the reconnection arrive in order.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start(2, |_| {});
    let b_addr = b.addr;
    a.send(&b, frame(1, 0, 100));
    pump_until(&mut [&mut a, &mut b], "the first frame", |n| {
        n[1].frames.len() == 1
    });
    drop(b);
    pump_until(&mut [&mut a], "A to notice", |n| {
        !n[0].disconnected.is_empty()
    });
    assert_eq!(a.disconnected[0].0, 2);
    assert_eq!(a.disconnected[0].1, PeerDirection::Outbound);
    // Let a few redials fail while B is down.
    pump_until(&mut [&mut a], "failed redials", |n| {
        n[0].stats(2).failures >= 2
    });
    let mut b = Node::start_at(b_addr, 2, |_| {});
    pump_until(&mut [&mut a, &mut b], "the reconnection", |n| {
        n[0].outbound_connected(2)
    });
    for seq in 1..=100 {
        a.send(&b, frame(1, seq, 100));
    }
    pump_until(&mut [&mut a, &mut b], "100 frames", |n| {
        n[1].frames.len() == 100
    });
    assert_sequence(&b.frames_from(1), 1, 1);
    assert_eq!(a.stats(2).connects, 2);
}

#[test]
fn test_backoff_grows_while_dials_fail_and_resets_after_a_stable_connection() {
    // Nothing listens at B's address: each failed dial doubles the delay ceiling (10 ms, 20 ms,
    // ... capped at 160 ms here), each delay drawn from [ceiling/2, ceiling]. Once B listens,
    // A connects; after the connection has stayed up for backoff_max it counts as stable, so
    // when B dies again the first redial delay is back at the initial [5 ms, 10 ms].
    let b_addr = free_addr();
    let tweak = |c: &mut atoll_net::reactor::PeerConfig| {
        c.backoff_initial = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(160);
    };
    let mut a = Node::start(1, tweak);
    a.reactor
        .peer_send(2, &b_addr.to_string(), frame(1, 0, 20))
        .unwrap();
    let mut delays = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while delays.len() < 7 {
        assert!(Instant::now() < deadline);
        a.turn(Duration::from_millis(1));
        let stats = a.stats(2);
        if stats.failures as usize > delays.len() {
            delays.push((stats.backoff_attempt, stats.backoff_last.unwrap()));
        }
    }
    for (attempt, delay) in &delays {
        let ceiling = Duration::from_millis(10 << (attempt - 1).min(4));
        assert!(*delay >= ceiling / 2 && *delay <= ceiling, "{delays:?}");
    }
    assert!(
        delays.last().unwrap().1 >= Duration::from_millis(80),
        "{delays:?}"
    );
    let mut b = Node::start_at(b_addr, 2, |_| {});
    a.send(&b, frame(1, 1, 20));
    pump_until(&mut [&mut a, &mut b], "the connection", |n| {
        n[1].frames.len() == 1
    });
    let connected_at = Instant::now();
    pump_until(&mut [&mut a, &mut b], "the connection to be stable", |_| {
        connected_at.elapsed() > Duration::from_millis(200)
    });
    drop(b);
    let failures_before = a.stats(2).failures;
    pump_until(&mut [&mut a], "the close", |n| {
        n[0].stats(2).backoff_last.is_some() && !n[0].outbound_connected(2)
    });
    let stats = a.stats(2);
    assert_eq!(stats.backoff_attempt, 1, "{stats:?}");
    assert_eq!(
        stats.failures, failures_before,
        "a stable connection's end is no failure"
    );
    assert!(
        stats.backoff_last.unwrap() <= Duration::from_millis(10),
        "{stats:?}"
    );
}

#[test]
fn test_fault_proxy_partitions_and_heals() {
    // A reaches B through a proxy. A blackhole in both directions looks like a partition, not a
    // reset: A's outbound connection stays up while its frames vanish, and B closes its silent
    // inbound connection by its idle timeout. Healing closes the connection that lost bytes; A
    // redials and frames flow again, in order.
    let mut b = Node::start(2, |c| {
        c.idle_timeout = Duration::from_millis(400);
        c.keepalive_interval = Duration::from_millis(100);
    });
    let proxy = FaultProxy::start(b.addr).unwrap();
    let via = proxy.addr().to_string();
    let mut a = Node::start(1, |c| c.keepalive_interval = Duration::from_millis(100));
    a.reactor.peer_send(2, &via, frame(1, 0, 100)).unwrap();
    pump_until(&mut [&mut a, &mut b], "the first frame", |n| {
        n[1].frames.len() == 1
    });
    proxy.blackhole(Direction::Both);
    for seq in 1..=10 {
        a.reactor.peer_send(2, &via, frame(1, seq, 100)).unwrap();
    }
    pump_until(
        &mut [&mut a, &mut b],
        "B to give up on the silent connection",
        |n| {
            n[1].disconnected
                .iter()
                .any(|d| d.0 == 1 && d.2 == CloseReason::IdleTimeout)
        },
    );
    assert_eq!(b.frames.len(), 1);
    assert!(proxy.bytes_dropped() > 0);
    // A saw nothing: a partition, not a reset.
    assert!(a.disconnected.is_empty(), "{:?}", a.disconnected);
    assert!(a.outbound_connected(2));
    assert_eq!(a.stats(2).frames_sent, 11);
    proxy.heal();
    pump_until(&mut [&mut a, &mut b], "A to reconnect", |n| {
        n[0].stats(2).connects == 2 && n[0].outbound_connected(2)
    });
    for seq in 11..=20 {
        a.reactor.peer_send(2, &via, frame(1, seq, 100)).unwrap();
    }
    pump_until(&mut [&mut a, &mut b], "frames after healing", |n| {
        n[1].frames.len() == 11
    });
    assert_sequence(&b.frames_from(1)[1..], 1, 11);
}

#[test]
fn test_fault_proxy_latency_and_reset() {
    // With 150 ms of latency a frame takes at least that long; a reset closes the connection at
    // once (A sees it and redials), and the proxy then forwards the new connection.
    let mut b = Node::start(2, |_| {});
    let proxy = FaultProxy::start(b.addr).unwrap();
    let via = proxy.addr().to_string();
    let mut a = Node::start(1, |_| {});
    a.reactor.peer_send(2, &via, frame(1, 0, 100)).unwrap();
    pump_until(&mut [&mut a, &mut b], "the first frame", |n| {
        n[1].frames.len() == 1
    });
    proxy.set_latency(Duration::from_millis(150));
    let sent_at = Instant::now();
    a.reactor.peer_send(2, &via, frame(1, 1, 100)).unwrap();
    pump_until(&mut [&mut a, &mut b], "the delayed frame", |n| {
        n[1].frames.len() == 2
    });
    assert!(
        sent_at.elapsed() >= Duration::from_millis(150),
        "{:?}",
        sent_at.elapsed()
    );
    proxy.set_latency(Duration::ZERO);
    proxy.reset();
    pump_until(&mut [&mut a, &mut b], "A to see the reset", |n| {
        n[0].disconnected
            .iter()
            .any(|d| d.0 == 2 && d.1 == PeerDirection::Outbound)
    });
    pump_until(&mut [&mut a, &mut b], "A to reconnect", |n| {
        n[0].outbound_connected(2)
    });
    a.reactor.peer_send(2, &via, frame(1, 2, 100)).unwrap();
    pump_until(&mut [&mut a, &mut b], "a frame after the reset", |n| {
        n[1].frames.len() == 3
    });
    assert_sequence(&b.frames_from(1), 1, 0);
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn test_restart_behind_a_half_open_connection_is_detected_by_the_new_incarnation() {
    // A reaches B through a proxy that hides closes travelling from B to A. B dies and restarts
    // on the same port (a new incarnation): A's outbound connection stays open, leading nowhere,
    // and TCP would not tell for minutes. When the new B dials A, its hello announces a new
    // incarnation, so A closes the stale connection and redials at once. (The redial's
    // handshake needs B's CHALLENGE to reach A: the proxy is healed once the stale connection
    // was dropped, and A's frames then reach the new B.)
    let mut b = Node::start(2, |_| {});
    let b_addr = b.addr;
    let proxy = FaultProxy::start(b_addr).unwrap();
    let via = proxy.addr().to_string();
    let mut a = Node::start(1, |c| {
        c.keepalive_interval = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(120);
    });
    a.reactor.peer_send(2, &via, frame(1, 0, 100)).unwrap();
    b.send(&a, frame(2, 0, 100));
    pump_until(&mut [&mut a, &mut b], "frames both ways", |n| {
        n[0].frames.len() == 1 && n[1].frames.len() == 1
    });
    proxy.blackhole(Direction::ToClient);
    drop(b);
    pump_until(&mut [&mut a], "A to notice B's own connection close", |n| {
        n[0].disconnected
            .iter()
            .any(|d| d.1 == PeerDirection::Inbound)
    });
    assert!(
        a.outbound_connected(2),
        "the proxy hides the close of A's outbound connection"
    );
    let mut b = Node::start_at(b_addr, 2, |c| c.seed = 0xb2);
    b.send(&a, frame(2, 1, 100));
    pump_until(&mut [&mut a, &mut b], "A to redial the new B", |n| {
        n[0].disconnected
            .iter()
            .any(|d| d.2 == CloseReason::PeerRestarted)
    });
    proxy.heal();
    a.reactor.peer_send(2, &via, frame(1, 1, 100)).unwrap();
    pump_until(&mut [&mut a, &mut b], "A's frame at the new B", |n| {
        n[1].frames.len() == 1
    });
    assert_sequence(&b.frames_from(1), 1, 1);
}

#[test]
fn test_fault_proxy_blackholes_one_direction_and_heal_closes_what_lost_bytes() {
    // Plain sockets through the proxy: with only the client-to-target direction blackholed,
    // the client's bytes vanish while the target's still arrive; healing closes the connection
    // (it lost bytes), and a new connection is forwarded normally.
    use std::io::{Read, Write};
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = FaultProxy::start(target.local_addr().unwrap()).unwrap();
    let mut client = std::net::TcpStream::connect(proxy.addr()).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut server, _) = target.accept().unwrap();
    let mut byte = [0u8; 1];
    client.write_all(b"a").unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    server.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"a");
    proxy.blackhole(Direction::ToTarget);
    client.write_all(b"b").unwrap();
    server.write_all(b"c").unwrap();
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"c");
    let deadline = Instant::now() + DEADLINE;
    while proxy.bytes_dropped() == 0 {
        assert!(
            Instant::now() < deadline,
            "the proxy never dropped the client's byte"
        );
        std::thread::yield_now();
    }
    proxy.heal();
    assert_eq!(
        client.read(&mut byte).unwrap_or(0),
        0,
        "healing closes the connection"
    );
    assert_eq!(proxy.connections(), 0);
    let mut client = std::net::TcpStream::connect(proxy.addr()).unwrap();
    let (mut server, _) = target.accept().unwrap();
    client.write_all(b"d").unwrap();
    server.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"d");
    // The proxy counts a chunk just after writing it: a, c and d, never b.
    let deadline = Instant::now() + DEADLINE;
    while proxy.bytes_forwarded() < 3 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert_eq!(proxy.bytes_forwarded(), 3);
}

#[test]
fn test_peer_that_never_reads_is_closed_by_the_write_stall_timeout() {
    // B's "node" answers the hello with a valid CHALLENGE, then never reads again (a hung
    // process). A's frames fill the kernel buffers, then its queue stops draining; after the
    // write stall timeout A closes the connection, drops what was queued (reported in the event)
    // and redials.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let (keep, kept) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok((mut stream, _)) = hung.accept() else {
            return;
        };
        let mut head = [0u8; 16];
        stream.read_exact(&mut head).unwrap();
        let length = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
        let mut hello = vec![0u8; length];
        stream.read_exact(&mut hello).unwrap();
        let mut challenge = Vec::new();
        atoll_net::peer::encode_challenge(&secret(), &hello, &[5; 16], &mut challenge);
        stream.write_all(&challenge).unwrap();
        // Hold the socket open, unread, until the test ends.
        let _ = keep.send((stream, hung));
    });
    let mut a = Node::start(1, |c| {
        c.write_stall_timeout = Duration::from_millis(300);
        c.frame_bytes_max = 1024 * 1024;
        c.queue_bytes_max = 4 * 1024 * 1024;
    });
    let deadline = Instant::now() + DEADLINE;
    let mut seq = 0;
    while a.disconnected.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was never closed"
        );
        // Keep the queue topped up; QueueFull is expected once the kernel buffers are full.
        let _ = a
            .reactor
            .peer_send(2, &hung_addr, frame(1, seq, 256 * 1024));
        seq += 1;
        a.turn(Duration::from_millis(1));
    }
    let (node, direction, reason, dropped) = a.disconnected[0].clone();
    assert_eq!((node, direction), (2, PeerDirection::Outbound));
    assert_eq!(reason, CloseReason::WriteStalled);
    assert!(dropped > 0);
    let stats = a.stats(2);
    assert!(stats.frames_dropped_full > 0, "{stats:?}");
    assert!(stats.bytes_queued <= 4 * 1024 * 1024);
    drop(kept);
}

/// A lookup that takes 1.5 s (a slow DNS server), then resolves as the system does.
fn slow_lookup(address: &str) -> std::io::Result<SocketAddr> {
    std::thread::sleep(Duration::from_millis(1500));
    atoll_net::reactor::system_lookup(address)
}

#[test]
fn test_a_slow_host_name_lookup_never_blocks_the_loop() {
    // A sends to B by host name (`localhost:PORT`) with a lookup that takes 1.5 s, and to C
    // by IP address. The lookup runs off the loop: no turn of A's loop takes long, C gets its
    // frames well before the lookup ends, and B gets its frames once it has.
    let mut a = Node::start(1, |c| c.lookup = slow_lookup);
    let mut b = Node::start(2, |_| {});
    let mut c = Node::start(3, |_| {});
    let started = Instant::now();
    let by_name = format!("localhost:{}", b.addr.port());
    a.reactor.peer_send(2, &by_name, frame(1, 0, 64)).unwrap();
    a.send(&c, frame(1, 0, 64));
    let mut slowest = Duration::ZERO;
    let mut c_at = None;
    let deadline = Instant::now() + DEADLINE;
    while b.frames.is_empty() {
        assert!(Instant::now() < deadline, "B never got its frame");
        let turn = Instant::now();
        a.turn(Duration::from_millis(1));
        slowest = slowest.max(turn.elapsed());
        b.turn(Duration::from_millis(1));
        c.turn(Duration::from_millis(1));
        if c.frames.len() == 1 && c_at.is_none() {
            c_at = Some(started.elapsed());
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let c_at = c_at.expect("C got its frame before B");
    assert!(c_at < Duration::from_millis(1000), "C waited {c_at:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a turn of A's loop took {slowest:?}: the lookup blocked it"
    );
    assert_sequence(&b.frames_from(1), 1, 0);
}

//! The peer transport with real sockets on 127.0.0.1: reactors exchanging frames, a client and
//! peers on one port, misbehaving peers, bounded queues, large frames, backpressure, address
//! changes. Every node is driven from the test thread; waits poll with a deadline.

mod peer_support;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use atoll_net::blocking::read_message;
use atoll_net::peer::{message_header, Hello, PEER_MAGIC_V1, PING_FRAME};
use atoll_net::protocol::{Request, Response, ResponseContext, VERSION_1};
use atoll_net::reactor::{CloseReason, PeerDirection, PeerSendError};
use peer_support::*;

#[test]
fn test_two_nodes_exchange_frames_both_ways_in_order() {
    // Each node dials the other on its first send and writes on its own outbound connection;
    // 2,000 frames of varied sizes each way arrive intact and in order, and each node sees both
    // of the pair's connections come up.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start(2, |_| {});
    for seq in 0..2000u32 {
        let len = 12 + (seq as usize * 37) % 3000;
        a.send(&b, frame(1, seq, len));
        b.send(&a, frame(2, seq, len));
    }
    pump_until(&mut [&mut a, &mut b], "2,000 frames each way", |n| {
        n[0].frames.len() == 2000 && n[1].frames.len() == 2000
    });
    assert_sequence(&b.frames_from(1), 1, 0);
    assert_sequence(&a.frames_from(2), 2, 0);
    for (node, other) in [(&a, 2), (&b, 1)] {
        let directions: Vec<_> = node
            .connected
            .iter()
            .filter(|(id, ..)| *id == other)
            .map(|(_, direction, _)| *direction)
            .collect();
        assert!(
            directions.contains(&PeerDirection::Outbound),
            "{directions:?}"
        );
        assert!(
            directions.contains(&PeerDirection::Inbound),
            "{directions:?}"
        );
        let stats = node.stats(other);
        assert_eq!(stats.frames_sent, 2000);
        assert_eq!(stats.connects, 1);
        assert_eq!(
            stats.frames_dropped_full + stats.frames_dropped_disconnect,
            0
        );
    }
    // The inbound side learns the advertised address from the hello.
    assert!(b
        .connected
        .contains(&(1, PeerDirection::Inbound, a.addr.to_string())));
}

#[test]
fn test_three_nodes_full_mesh_in_order() {
    // Three nodes, each sending 300 frames to each of the others, interleaved: every receiver
    // gets each sender's frames in the order sent.
    let mut nodes = [
        Node::start(1, |_| {}),
        Node::start(2, |_| {}),
        Node::start(3, |_| {}),
    ];
    let addrs: Vec<_> = nodes.iter().map(|n| (n.id, n.addr.to_string())).collect();
    for seq in 0..300u32 {
        for node in nodes.iter_mut() {
            for (id, addr) in &addrs {
                if *id != node.id {
                    let bytes = frame(node.id, seq, 12 + seq as usize % 200);
                    node.reactor.peer_send(*id, addr, bytes).unwrap();
                }
            }
        }
    }
    let [a, b, c] = &mut nodes;
    pump_until(&mut [a, b, c], "600 frames at each node", |n| {
        n.iter().all(|node| node.frames.len() == 600)
    });
    for node in &nodes {
        for (id, _) in &addrs {
            if *id != node.id {
                let frames = node.frames_from(*id);
                assert_eq!(frames.len(), 300);
                assert_sequence(&frames, *id, 0);
            }
        }
    }
}

#[test]
fn test_client_and_peer_share_the_listening_port() {
    // One address serves both: while node A streams frames to B, a dqlite client (on its own
    // thread, blocking) asks B's port for the leader 50 times and is answered each time, and
    // the frames arrive intact and in order.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start(2, |_| {});
    let b_addr = b.addr;
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(b_addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&VERSION_1.to_le_bytes()).unwrap();
        let mut buffer = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..50 {
            let mut request = Vec::new();
            Request::Leader.encode(&mut request);
            stream.write_all(&request).unwrap();
            read_message(&mut stream, 1 << 20, &mut buffer).unwrap();
            answers.push(Response::decode_message(&buffer, &ResponseContext::default()).unwrap());
        }
        answers
    });
    for seq in 0..2000u32 {
        a.send(&b, frame(1, seq, 100));
        if seq % 20 == 0 {
            a.turn(Duration::ZERO);
            b.turn(Duration::ZERO);
        }
    }
    pump_until(
        &mut [&mut a, &mut b],
        "2,000 frames and the client's answers",
        |n| n[1].frames.len() == 2000 && client.is_finished(),
    );
    let answers = client.join().unwrap();
    let expected = Response::Server {
        id: 2,
        address: b.addr.to_string(),
    };
    assert!(
        answers.iter().all(|answer| *answer == expected),
        "{answers:?}"
    );
    assert_sequence(&b.frames_from(1), 1, 0);
    assert_eq!(b.requests, 50);
}

#[test]
fn test_misbehaving_peer_connections_are_closed_and_others_unaffected() {
    // Each broken connection is closed by B while A's frames keep flowing to B:
    // a wrong first word; a hello from another cluster, from node 0, or meant for another
    // node; a message before the hello; garbage after a valid handshake; an oversized frame
    // after a valid handshake; a second hello. The ones refused before their AUTH is verified
    // produce no event; those authenticated end with an inbound PeerDisconnected saying why.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start(2, |c| c.frame_bytes_max = 64 * 1024);
    let mut seq = 0u32;
    let mut send_some = |a: &mut Node, b: &Node| {
        for _ in 0..20 {
            a.send(b, frame(1, seq, 64));
            seq += 1;
        }
    };
    let mut broken = Vec::new();
    let mut wrong_magic = RawPeer::connect(b.addr);
    wrong_magic.write(&(PEER_MAGIC_V1 + 1).to_le_bytes());
    broken.push(wrong_magic);
    let other_cluster = Hello {
        cluster_id: CLUSTER + 1,
        ..hello_for(2, 7)
    };
    broken.push(RawPeer::hello(b.addr, &other_cluster));
    broken.push(RawPeer::hello(
        b.addr,
        &Hello {
            from: 0,
            ..hello_for(2, 7)
        },
    ));
    broken.push(RawPeer::hello(b.addr, &hello_for(3, 7)));
    let mut early = RawPeer::connect(b.addr);
    let mut bytes = PEER_MAGIC_V1.to_le_bytes().to_vec();
    bytes.extend_from_slice(&message_header(1));
    bytes.push(0);
    early.write(&bytes);
    broken.push(early);
    let mut garbage = RawPeer::authenticated(&mut b, &hello_for(2, 8));
    garbage.write(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05]);
    broken.push(garbage);
    let mut oversized = RawPeer::authenticated(&mut b, &hello_for(2, 9));
    oversized.write(&PING_FRAME);
    oversized.write(&message_header(64 * 1024 + 1));
    broken.push(oversized);
    let mut twice = RawPeer::authenticated(&mut b, &hello_for(2, 10));
    let mut again = Vec::new();
    hello_for(2, 10).encode(&mut again);
    twice.write(&again);
    broken.push(twice);
    send_some(&mut a, &b);
    pump_until(
        &mut [&mut a, &mut b],
        "every broken connection to close",
        |_| broken.iter().all(RawPeer::is_closed),
    );
    send_some(&mut a, &b);
    pump_until(&mut [&mut a, &mut b], "A's frames", |n| {
        n[1].frames.len() == 40
    });
    assert_sequence(&b.frames_from(1), 1, 0);
    // Only A's frames arrived; the three authenticated connections were announced and ended
    // with the reason.
    assert!(b.frames.iter().all(|(from, _)| *from == 1));
    let reasons: Vec<_> = b
        .disconnected
        .iter()
        .map(|(node, direction, reason, _)| {
            assert_eq!(*direction, PeerDirection::Inbound);
            (*node, reason.clone())
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(matches!(
        reasons.iter().find(|r| r.0 == 8),
        Some((_, CloseReason::Peer(_)))
    ));
    assert!(reasons.contains(&(
        9,
        CloseReason::Peer(atoll_net::peer::PeerError::FrameTooLarge {
            bytes: 64 * 1024 + 1,
            max: 64 * 1024
        })
    )));
    assert!(reasons.contains(&(
        10,
        CloseReason::Peer(atoll_net::peer::PeerError::HelloRepeated)
    )));
    assert!(a.disconnected.is_empty(), "{:?}", a.disconnected);
}

#[test]
fn test_large_frames_arrive_intact() {
    // A 6 MiB frame (a snapshot chunk) between small ones: all arrive intact and in order, and
    // the large one is handed over without spare capacity.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start(2, |_| {});
    a.send(&b, frame(1, 0, 100));
    a.send(&b, frame(1, 1, 6 * 1024 * 1024));
    a.send(&b, frame(1, 2, 100));
    a.send(&b, frame(1, 3, 8 * 1024 * 1024));
    pump_until(&mut [&mut a, &mut b], "four frames", |n| {
        n[1].frames.len() == 4
    });
    assert_sequence(&b.frames_from(1), 1, 0);
    for (i, len) in [(1, 6 * 1024 * 1024), (3, 8 * 1024 * 1024)] {
        assert_eq!(b.frames[i].1.len(), len);
        assert!(b.frames[i].1.capacity() <= len + len / 4);
    }
    // Larger than the maximum is refused at the sender.
    let too_large = vec![0u8; 8 * 1024 * 1024 + 1];
    assert!(matches!(
        a.reactor.peer_send(2, &b.addr.to_string(), too_large),
        Err(PeerSendError::FrameTooLarge { .. })
    ));
}

#[test]
fn test_frames_queued_to_an_unreachable_peer_stay_within_the_bound() {
    // Node 2's address refuses connections (nothing listens). 10,000 sends: the queue never
    // holds more than its bounds, the surplus is refused with QueueFull (the newest frame is
    // the one dropped), and every frame is accounted for: refused, dropped with a failed dial,
    // or still queued.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("127.0.0.1:{port}");
    let mut a = Node::start(1, |c| {
        c.queue_frames_max = 50;
        c.queue_bytes_max = 64 * 1024;
        c.frame_bytes_max = 16 * 1024;
    });
    let mut refused = 0u64;
    for seq in 0..10_000u32 {
        match a
            .reactor
            .peer_send(2, &dead, frame(1, seq, 12 + seq as usize % 4000))
        {
            Ok(()) => {}
            Err(PeerSendError::QueueFull { frames, bytes }) => {
                assert!(frames <= 50 && bytes <= 64 * 1024);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        if seq % 100 == 0 {
            a.turn(Duration::from_millis(1));
        }
        let stats = a.stats(2);
        assert!(stats.frames_queued <= 50, "{stats:?}");
        assert!(stats.bytes_queued <= 64 * 1024, "{stats:?}");
    }
    pump_until(&mut [&mut a], "a few failed dials", |n| {
        n[0].stats(2).failures >= 3
    });
    let stats = a.stats(2);
    assert!(refused > 0);
    assert_eq!(stats.frames_dropped_full, refused);
    let reported: u64 = a.disconnected.iter().map(|d| d.3).sum();
    assert_eq!(reported, stats.frames_dropped_disconnect);
    assert_eq!(
        stats.frames_dropped_full + stats.frames_dropped_disconnect + stats.frames_queued as u64,
        10_000
    );
    assert!(a
        .disconnected
        .iter()
        .all(|d| matches!(d.2, CloseReason::ConnectFailed(_))));
}

#[test]
fn test_slow_peer_is_bounded_and_frames_per_poll_are_limited() {
    // Node B stops polling (its host is busy): A's writes fill the kernel buffers, then A's
    // queue reaches its bound and further sends are refused; A's memory stays bounded. When B
    // resumes, one poll delivers at most frames_per_poll_max frames, and everything that A
    // queued arrives in order.
    let mut a = Node::start(1, |c| {
        c.queue_frames_max = 100_000;
        c.queue_bytes_max = 1024 * 1024;
        c.frame_bytes_max = 64 * 1024;
    });
    let mut b = Node::start(2, |c| c.frames_per_poll_max = 10);
    a.send(&b, frame(1, 0, 1000));
    pump_until(&mut [&mut a, &mut b], "the first frame", |n| {
        n[1].frames.len() == 1
    });
    let mut seq = 1;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the sender never pushed back"
        );
        let result = a
            .reactor
            .peer_send(2, &b.addr.to_string(), frame(1, seq, 16 * 1024));
        match result {
            Ok(()) => seq += 1,
            Err(PeerSendError::QueueFull { bytes, .. }) => {
                assert!(bytes <= 1024 * 1024);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        a.turn(Duration::ZERO);
    }
    let delivered = b.turn(Duration::from_millis(1));
    assert!(delivered <= 10, "{delivered}");
    pump_until(&mut [&mut a, &mut b], "every accepted frame", |n| {
        n[1].frames.len() == seq as usize
    });
    assert_sequence(&b.frames_from(1), 1, 0);
}

#[test]
fn test_address_change_and_forget() {
    // B listens on two ports (two reactors with the same id stand in for a moved node). A sends
    // to B at the first address, then at the second: the old connection closes and frames go to
    // the new one. Forgetting B closes A's connections to it and drops its state.
    let mut a = Node::start(1, |_| {});
    let mut b_old = Node::start(2, |_| {});
    let mut b_new = Node::start(2, |_| {});
    a.send(&b_old, frame(1, 0, 50));
    pump_until(
        &mut [&mut a, &mut b_old, &mut b_new],
        "the old address",
        |n| n[1].frames.len() == 1,
    );
    a.send(&b_new, frame(1, 1, 50));
    pump_until(
        &mut [&mut a, &mut b_old, &mut b_new],
        "the new address",
        |n| n[2].frames.len() == 1 && !n[1].disconnected.is_empty(),
    );
    assert_eq!(a.stats(2).address, b_new.addr.to_string());
    assert_eq!(a.disconnected[0].2, CloseReason::Host);
    assert!(a.reactor.peer_forget(2));
    assert!(a.reactor.peer_stats(2).is_none());
    assert!(!a.reactor.peer_forget(2));
    pump_until(
        &mut [&mut a, &mut b_old, &mut b_new],
        "the close at B",
        |n| !n[2].disconnected.is_empty(),
    );
    assert_eq!(a.reactor.peers().count(), 0);
    // Sending to itself or to node 0 is refused.
    let own = a.addr.to_string();
    assert_eq!(
        a.reactor.peer_send(1, &own, vec![1]),
        Err(PeerSendError::InvalidNode(1))
    );
    assert_eq!(
        a.reactor.peer_send(0, &own, vec![1]),
        Err(PeerSendError::InvalidNode(0))
    );
    assert_eq!(
        a.reactor.peer_send(3, &own, vec![]),
        Err(PeerSendError::EmptyFrame)
    );
}

#[test]
fn test_keepalive_keeps_quiet_links_open_and_silent_inbound_is_closed() {
    // With a 300 ms idle timeout and 50 ms keepalive, a link that carries nothing for a second
    // stays open (pings keep it alive). A raw peer that sends its hello and then falls silent
    // is closed by the idle timeout.
    let tweak = |c: &mut atoll_net::reactor::PeerConfig| {
        c.idle_timeout = Duration::from_millis(300);
        c.keepalive_interval = Duration::from_millis(50);
    };
    let mut a = Node::start(1, tweak);
    let mut b = Node::start(2, tweak);
    a.send(&b, frame(1, 0, 20));
    pump_until(&mut [&mut a, &mut b], "the first frame", |n| {
        n[1].frames.len() == 1
    });
    let silent = RawPeer::authenticated(&mut b, &hello_for(2, 5));
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(1000));
    assert!(
        b.disconnected.iter().all(|d| d.0 != 1),
        "{:?}",
        b.disconnected
    );
    assert!(a.disconnected.is_empty(), "{:?}", a.disconnected);
    pump_until(
        &mut [&mut a, &mut b],
        "the silent peer to be closed",
        |_| silent.is_closed(),
    );
    assert!(b
        .disconnected
        .contains(&(5, PeerDirection::Inbound, CloseReason::IdleTimeout, 0)));
    a.send(&b, frame(1, 1, 20));
    pump_until(&mut [&mut a, &mut b], "the second frame", |n| {
        n[1].frames.len() == 2
    });
    assert_eq!(a.stats(2).connects, 1);
}

#[test]
fn test_peers_without_the_secret_are_refused_before_any_frame() {
    // Every way in without the cluster secret is closed by B before a frame reaches its host,
    // with no event: a message right after a valid hello (no AUTH); an AUTH made with another
    // secret; a replayed AUTH (recorded from an accepted exchange, sent on a new connection
    // with the same hello: B's nonce differs); B's own proof reflected back as the AUTH; a
    // message between the hello and the AUTH. A node with another secret cannot connect either,
    // and B refuses to prove itself to nothing: its CHALLENGE binds the hello, so a dialler
    // learns no reusable answer.
    use atoll_net::peer::{auth_mac, encode_auth, verify_challenge, ClusterSecret, Role};
    use hmac::Mac;
    let mut b = Node::start(2, |_| {});
    let mut broken = Vec::new();
    let (mut no_auth, _, _) = RawPeer::challenged(&mut b, &hello_for(2, 20));
    let mut message = message_header(1).to_vec();
    message.push(7);
    no_auth.write(&message);
    broken.push(no_auth);

    let wrong = ClusterSecret::from_bytes([0x33; 32]);
    let (mut wrong_secret, hello_payload, challenge) =
        RawPeer::challenged(&mut b, &hello_for(2, 21));
    assert_eq!(
        verify_challenge(&wrong, &hello_payload, &challenge),
        Err(atoll_net::peer::PeerError::AuthFailed),
        "a dialler with another secret sees the acceptor's proof fail"
    );
    let nonce: [u8; 16] = challenge[..16].try_into().unwrap();
    let mut auth = Vec::new();
    encode_auth(&wrong, &hello_payload, &nonce, &mut auth);
    wrong_secret.write(&auth);
    wrong_secret.write(&message);
    broken.push(wrong_secret);

    // An accepted exchange, recorded; then its AUTH replayed on a new connection.
    let (mut honest, hello_payload, challenge) = RawPeer::challenged(&mut b, &hello_for(2, 22));
    let nonce = verify_challenge(&secret(), &hello_payload, &challenge).unwrap();
    let mut recorded = Vec::new();
    encode_auth(&secret(), &hello_payload, &nonce, &mut recorded);
    honest.write(&recorded);
    honest.write(&message);
    pump_until(&mut [&mut b], "the honest peer's frame", |n| {
        n[0].frames.len() == 1
    });
    drop(honest);
    let (mut replay, _, _) = RawPeer::challenged(&mut b, &hello_for(2, 22));
    replay.write(&recorded);
    replay.write(&message);
    broken.push(replay);

    // Reflection: B's own proof (its CHALLENGE MAC) sent back as the AUTH.
    let (mut reflect, _, challenge) = RawPeer::challenged(&mut b, &hello_for(2, 23));
    let mut reflected = atoll_net::peer::FrameHeader {
        kind: atoll_net::peer::FrameKind::Auth,
        payload_bytes: 32,
    }
    .encode()
    .to_vec();
    reflected.extend_from_slice(&challenge[16..]);
    reflect.write(&reflected);
    reflect.write(&message);
    broken.push(reflect);

    let (mut early, _, _) = RawPeer::challenged(&mut b, &hello_for(2, 24));
    early.write(&PING_FRAME);
    broken.push(early);

    let mut c = Node::start(3, |c| c.secret = ClusterSecret::from_bytes([0x33; 32]));
    c.send(&b, frame(3, 0, 20));
    pump_until(&mut [&mut b], "every broken connection to close", |_| {
        broken.iter().all(RawPeer::is_closed)
    });
    pump_for(&mut [&mut b, &mut c], Duration::from_millis(300));
    // Only the honest peer's one frame arrived; only it was announced.
    assert_eq!(b.frames, vec![(22, vec![7])]);
    assert_eq!(
        b.connected
            .iter()
            .map(|(node, _, _)| *node)
            .collect::<Vec<_>>(),
        vec![22]
    );
    let c_stats = c.stats(2);
    assert!(!c_stats.connected && c_stats.connects == 0, "{c_stats:?}");
    assert!(c_stats.failures > 0, "{c_stats:?}");
    // The roles' MACs differ for the same input: no reflection across roles.
    let (a_mac, d_mac) = (
        auth_mac(&secret(), Role::Acceptor, b"hello", &[0; 16]).finalize(),
        auth_mac(&secret(), Role::Dialler, b"hello", &[0; 16]).finalize(),
    );
    assert_ne!(a_mac.into_bytes(), d_mac.into_bytes());
}

#[test]
fn test_clients_at_their_limit_do_not_lock_peers_out() {
    // B serves at most 8 clients. 20 clients connect and stay idle: 8 are kept, the other 12
    // are closed once they say they are clients. A peer connects after them all and its frames
    // arrive: the client limit does not apply to peers.
    let mut a = Node::start(1, |_| {});
    let mut b = Node::start_with(
        2,
        |_| {},
        |r| {
            r.connections_max = 8;
        },
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = std::net::TcpStream::connect(b.addr).unwrap();
        client.write_all(&VERSION_1.to_le_bytes()).unwrap();
        client.set_nonblocking(true).unwrap();
        clients.push(RawPeer { stream: client });
    }
    pump_until(&mut [&mut b], "12 clients refused", |_| {
        clients.iter().filter(|c| c.is_closed()).count() == 12
    });
    assert_eq!(b.reactor.connections_count(), 8);
    for seq in 0..10 {
        a.send(&b, frame(1, seq, 64));
    }
    pump_until(&mut [&mut a, &mut b], "A's frames at B", |n| {
        n[1].frames.len() == 10
    });
    assert_sequence(&b.frames_from(1), 1, 0);
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(100));
    assert_eq!(clients.iter().filter(|c| c.is_closed()).count(), 12);
}

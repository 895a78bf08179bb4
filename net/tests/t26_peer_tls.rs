//! The peer transport over mutual TLS: two reactors with the cluster certificate exchange
//! frames (the HMAC handshake runs inside TLS); a reactor whose certificate the cluster does not
//! trust never gets a frame through, in either direction, while the good pair keeps working.

use std::time::{Duration, Instant};

use atoll_net::peer::ClusterSecret;
use atoll_net::reactor::{Event, PeerConfig, Reactor, ReactorConfig};
use atoll_net::tls::{generate_cluster_certificate, TlsContext};

fn node(id: u64, tls: &TlsContext) -> Reactor {
    let config = ReactorConfig {
        peer: Some(PeerConfig::new(
            id,
            7,
            ClusterSecret::from_bytes([7; 32]),
            "",
            id,
        )),
        tls: Some(tls.clone()),
        ..ReactorConfig::default()
    };
    Reactor::bind("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// Polls every reactor for `time`; the frames each received, with their sender.
fn run(reactors: &mut [&mut Reactor], time: Duration) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut received = vec![Vec::new(); reactors.len()];
    let deadline = Instant::now() + time;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        for (index, reactor) in reactors.iter_mut().enumerate() {
            reactor
                .poll(&mut events, Some(Duration::from_millis(1)))
                .unwrap();
            for event in events.drain(..) {
                if let Event::PeerFrame { from, frame } = event {
                    received[index].push((from, frame));
                }
            }
        }
    }
    received
}

#[test]
fn peers_over_mutual_tls_and_an_untrusted_peer_refused() {
    let (cert, key) = generate_cluster_certificate().unwrap();
    let cluster = TlsContext::from_pem(cert.as_bytes(), key.as_bytes(), None).unwrap();
    let (other_cert, other_key) = generate_cluster_certificate().unwrap();
    let other = TlsContext::from_pem(other_cert.as_bytes(), other_key.as_bytes(), None).unwrap();
    // Trusts the cluster (so only the cluster's refusal of its certificate stops it).
    let intruder_tls = TlsContext::from_pem(
        other_cert.as_bytes(),
        other_key.as_bytes(),
        Some(cert.as_bytes()),
    )
    .unwrap();
    let (mut one, mut two) = (node(1, &cluster), node(2, &cluster));
    let mut intruder = node(3, &intruder_tls);
    let mut stranger = node(4, &other);
    let one_addr = one.local_addr().unwrap().to_string();
    let two_addr = two.local_addr().unwrap().to_string();
    let intruder_addr = intruder.local_addr().unwrap().to_string();

    // A large frame too: many TLS records, reassembled in order.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    one.peer_send(2, &two_addr, b"over TLS".to_vec()).unwrap();
    one.peer_send(2, &two_addr, big.clone()).unwrap();
    two.peer_send(1, &one_addr, b"back".to_vec()).unwrap();
    intruder
        .peer_send(2, &two_addr, b"let me in".to_vec())
        .unwrap();
    stranger
        .peer_send(1, &one_addr, b"let me in".to_vec())
        .unwrap();
    one.peer_send(3, &intruder_addr, b"to the intruder".to_vec())
        .unwrap();
    let received = run(
        &mut [&mut one, &mut two, &mut intruder, &mut stranger],
        Duration::from_secs(3),
    );
    assert_eq!(received[0], vec![(2, b"back".to_vec())]);
    let senders: Vec<(u64, usize)> = received[1].iter().map(|(f, b)| (*f, b.len())).collect();
    assert_eq!(
        senders,
        [(1, 8), (1, big.len())],
        "only node 1's frames reach node 2"
    );
    assert!(received[1][1].1 == big, "the large frame arrives intact");
    assert!(received[2].is_empty(), "the intruder got {:?}", received[2]);
    assert!(received[3].is_empty());
    // The good pair still works after the refusals.
    one.peer_send(2, &two_addr, b"still".to_vec()).unwrap();
    let received = run(&mut [&mut one, &mut two], Duration::from_millis(500));
    assert_eq!(received[1], vec![(1, b"still".to_vec())]);
}

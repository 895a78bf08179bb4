//! Regression tests: each seed here once broke an invariant in the simulator. The name says
//! the seed; the comment says what broke and why the fix holds. Simulator parameters changed
//! since, so each seed is also pinned down by a deterministic scenario on a hand-driven
//! network that fails without the fix.

use atoll_raft::sim::network::Network;
use atoll_raft::sim::{run, SimOptions};
use atoll_raft::{LogIndex, MemberRole, Message, MessageKind, NodeId, ProgressState, StateRole};

fn replay(seed: u64, nodes: usize) {
    if let Err(violation) = run(&SimOptions::new(seed, nodes)) {
        panic!("{violation}");
    }
}

fn elect(network: &mut Network, id: u64) {
    network.node_mut(id).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(id).role(), StateRole::Leader);
}

/// A leader removed node 2, then demoted itself, and the second configuration brought node 2
/// back as a voter: the leader never applied its own configuration entries (only followers
/// did), so each change was computed from the configuration before the previous one. With no
/// node believing itself a voter of an up-to-date log, the cluster never elected a leader.
#[test]
fn t90_seed_1257() {
    replay(1257, 3);
    let mut network = Network::new(&[1, 2, 3, 4]);
    elect(&mut network, 1);
    network.node_mut(1).remove(NodeId(2)).unwrap();
    assert!(
        network.node(1).configuration().get(NodeId(2)).is_none(),
        "effective on append"
    );
    network.stabilize();
    network
        .node_mut(1)
        .assign(NodeId(3), MemberRole::Standby)
        .unwrap();
    network.stabilize();
    let configuration = network.node(1).configuration().to_string();
    assert_eq!(configuration, "{1=voter,3=standby,4=voter}");
}

/// A follower completed snapshot A and, before its host handled that ready, received the first
/// chunk of a newer snapshot B: the ready carried A's install together with B's first bytes,
/// and the host installed B's bytes as A. Now a node takes no chunk while an install waits
/// for its host (the leader resends it), so a ready's install always ends its bytes.
#[test]
fn t90_seed_8() {
    replay(8, 7);
    let mut network = Network::with_config(&[1, 2, 3], |config| {
        // A (two registers: 44 bytes) goes out whole in three chunks; B (three registers,
        // 60 bytes) does not fit in the window, so node 3 sees only B's start.
        config.snapshot_chunk_bytes = 16;
        config.snapshot_chunks_inflight_max = 3;
        config.snapshot_trailing_entries = 0;
    });
    elect(&mut network, 1);
    network.isolate(3);
    network.put(1, 1, 10).unwrap();
    network.put(1, 2, 20).unwrap();
    network.stabilize();
    network.snapshot(1); // Snapshot A.
    network.stabilize();
    network.heal();
    // The leader finds 3 behind its log's start and streams A.
    for _ in 0..4 {
        network.tick(1, 1);
        network.deliver(Some(3));
        network.process(3);
        network.deliver(Some(1));
        network.process(1);
        if network.has_pending(MessageKind::Snapshot) {
            break;
        }
    }
    assert!(network.has_pending(MessageKind::Snapshot));
    // Snapshot B is taken (after a commit with node 2) while A's chunks are still in flight.
    network.put(1, 3, 30).unwrap();
    network.process(1);
    network.deliver(Some(2));
    network.process(2);
    network.deliver(Some(1));
    network.process(1);
    network.snapshot(1);
    network.process(1);
    // Node 3 receives all of A and the start of B before its host runs.
    network.deliver(Some(3));
    network.process(3);
    for _ in 0..10 {
        network.tick(1, 1);
        network.stabilize();
    }
    assert_eq!(network.nodes[&NodeId(3)].kv, network.nodes[&NodeId(1)].kv);
}

/// Reordered snapshot answers: a rejection asking to resume from an offset the follower has
/// since acknowledged past arrived late and rewound the stream, over and over (a resend storm
/// that kept a follower from ever finishing). Now a rejection below the acknowledged offset is
/// ignored unless it is 0 (the follower restarted).
#[test]
fn t90_seed_1421() {
    replay(1421, 7);
    let mut network = streaming_snapshot_to_3(32);
    let before = snapshot_acked(&network).expect("streaming a snapshot to 3");
    assert!(before >= 32);
    let index = network.node(1).snapshot_meta().unwrap().index;
    let mut stale = Message::new(
        MessageKind::SnapshotResponse,
        NodeId(3),
        NodeId(1),
        network.node(1).term(),
    );
    stale.index = index;
    stale.context = 16;
    stale.reject = true;
    network.node_mut(1).step(stale).unwrap();
    assert_eq!(
        snapshot_acked(&network),
        Some(before),
        "a stale rejection rewound the stream"
    );
    for _ in 0..20 {
        network.tick(1, 1);
        network.stabilize();
    }
    let progress = network
        .node(1)
        .progress()
        .find(|(id, _)| *id == NodeId(3))
        .unwrap()
        .1;
    assert_eq!(progress.state(), ProgressState::Replicate);
    assert!(progress.match_index() >= LogIndex(index.0));
}

/// An acknowledgement above what the follower holds (from before it restarted, overtaken on
/// the wire by its restart's rejection from 0) moved the leader's acknowledged offset past the
/// follower's bytes. The follower then asked to resume from what it held; that rejection, below
/// the acknowledged offset, was ignored as reordered (seed 1421's rule), and every stall resent
/// from the acknowledged offset again: the follower never caught up (a liveness violation
/// after healing). Now a rejection ignored that way is remembered, and a stall with no
/// progress since resumes from it.
#[test]
fn t90_seed_9974() {
    replay(9974, 7);
    let mut network = streaming_snapshot_to_3(16);
    let held = snapshot_acked(&network).expect("streaming a snapshot to 3");
    let index = network.node(1).snapshot_meta().unwrap().index;
    // The chunk in flight is lost; a stale acknowledgement claims 16 bytes more than node 3 has.
    network.drop_pending(|m| m.kind == MessageKind::Snapshot);
    let mut stale = Message::new(
        MessageKind::SnapshotResponse,
        NodeId(3),
        NodeId(1),
        network.node(1).term(),
    );
    stale.index = index;
    stale.context = held + 16;
    network.node_mut(1).step(stale).unwrap();
    assert_eq!(snapshot_acked(&network), Some(held + 16));
    for _ in 0..40 {
        network.tick(1, 1);
        network.stabilize();
    }
    let progress = network
        .node(1)
        .progress()
        .find(|(id, _)| *id == NodeId(3))
        .unwrap()
        .1;
    assert_eq!(
        progress.state(),
        ProgressState::Replicate,
        "node 3 never caught up"
    );
    assert!(progress.match_index() >= LogIndex(index.0));
}

/// Three nodes with 16-byte snapshot chunks, one in flight: node 3 was cut off while node 1
/// logged four writes and compacted behind a snapshot; node 1 now streams it to 3, and has
/// driven the stream until 3 acknowledged at least `acked` bytes (at most 20 ticks).
fn streaming_snapshot_to_3(acked: u64) -> Network {
    let mut network = Network::with_config(&[1, 2, 3], |config| {
        config.snapshot_chunk_bytes = 16;
        config.snapshot_chunks_inflight_max = 1;
        config.snapshot_trailing_entries = 0;
    });
    elect(&mut network, 1);
    network.isolate(3);
    for value in 1..=4 {
        network.put(1, value, value * 10).unwrap();
    }
    network.stabilize();
    network.snapshot(1);
    network.stabilize();
    network.heal();
    for _ in 0..20 {
        network.tick(1, 1);
        network.deliver(Some(3));
        network.process(3);
        network.deliver(Some(1));
        network.process(1);
        if snapshot_acked(&network).is_some_and(|offset| offset >= acked) {
            break;
        }
    }
    network
}

/// The bytes of its snapshot node 1 saw node 3 acknowledge, while it streams one to 3.
fn snapshot_acked(network: &Network) -> Option<u64> {
    network
        .node(1)
        .progress()
        .find(|(id, _)| *id == NodeId(3))
        .and_then(|(_, p)| p.snapshot_send().map(|s| s.acked_offset))
}

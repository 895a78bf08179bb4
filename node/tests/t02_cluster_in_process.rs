//! Three full nodes (Raft, segment log, engine on real SQLite) in one process and one thread,
//! on one simulated clock, driven turn by turn: two join the first, automatic roles make them
//! voters, writes replicate, and the stopped replicas' databases are byte-identical. The
//! network is real loopback (not yet simulated).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use atoll_net::client::{Client, ClientConfig};
use atoll_net::peer::ClusterSecret;
use atoll_net::protocol::Value;
use atoll_node::config::{self, NodeConfig};
use atoll_node::inputs::{Inputs, ManualClock, SeededRandom};
use atoll_node::{Node, StartOptions};
use atoll_raft::{NodeId, StateRole};

fn open(data: &Path, clock: &ManualClock, seed: u64) -> Node {
    let inputs = Inputs {
        clock: Box::new(clock.clone()),
        random: Box::new(SeededRandom::new(seed)),

        ..Inputs::production()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    Node::open_with(data, shutdown, StartOptions::default(), inputs).unwrap()
}

/// Turns every node, a millisecond of simulated time per round, until `done` (bounded).
fn drive(nodes: &mut [Node], clock: &ManualClock, mut done: impl FnMut(&[Node]) -> bool) {
    for _ in 0..60_000 {
        if done(nodes) {
            return;
        }
        clock.advance(Duration::from_millis(1));
        for node in nodes.iter_mut() {
            assert!(node.turn(Some(Duration::from_micros(200))).unwrap());
        }
    }
    let statuses: Vec<_> = nodes.iter().map(Node::state).collect();
    panic!("the cluster never got there: {statuses:#?}");
}

#[test]
fn test_three_nodes_in_one_thread_join_replicate_and_stay_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("n{i}"))).collect();
    // Held together so that the kernel cannot hand one released port out twice.
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(listeners);
    let secret = ClusterSecret::generate().unwrap();
    let mut first = NodeConfig::new(1, addresses[0].clone());
    first.snapshot_entries = 50;
    atoll_node::init(&dirs[0], &first, &secret).unwrap();
    for i in 1..3 {
        let mut config = NodeConfig::new(i as u64 + 1, addresses[i].clone());
        config.cluster_id = first.cluster_id;
        config.join = vec![addresses[0].clone()];
        config.snapshot_entries = 50;
        atoll_node::prepare_join(&dirs[i], &config, &secret).unwrap();
    }
    let clock = ManualClock::new();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| open(&dirs[i], &clock, 100 + i as u64))
        .collect();
    drive(&mut nodes, &clock, |nodes| {
        nodes.iter().all(|node| node.state().voters.len() == 3)
    });

    let cluster = addresses.clone();
    let writer = thread::spawn(move || {
        let mut client = Client::connect(&cluster, ClientConfig::default()).unwrap();
        client.open("sim").unwrap();
        client
            .exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", &[])
            .unwrap();
        for id in 0..200i64 {
            client
                .exec_sql(
                    "INSERT INTO t VALUES (?, ?)",
                    &[Value::Integer(id), Value::Text(format!("row {id}"))],
                )
                .unwrap();
        }
    });
    drive(&mut nodes, &clock, |_| writer.is_finished());
    writer.join().unwrap();
    drive(&mut nodes, &clock, |nodes| {
        let leader = nodes
            .iter()
            .map(Node::state)
            .find(|s| s.role == StateRole::Leader);
        leader.is_some_and(|leader| {
            nodes
                .iter()
                .all(|node| node.state().applied == leader.commit)
        })
    });
    let statuses: Vec<_> = nodes.iter().map(Node::state).collect();
    let leaders = statuses
        .iter()
        .filter(|s| s.role == StateRole::Leader)
        .count();
    assert_eq!(leaders, 1, "{statuses:#?}");
    for status in &statuses {
        assert_eq!(
            status.voters,
            vec![NodeId(1), NodeId(2), NodeId(3)],
            "{status:?}"
        );
        assert!(
            status.snapshot.is_some(),
            "snapshots every 50 entries: {status:?}"
        );
    }
    for node in &mut nodes {
        node.stop();
    }
    drop(nodes);
    // Physical replication: the same pages everywhere once checkpointed.
    let image = |i: usize| std::fs::read(config::db_dir(&dirs[i]).join("sim")).unwrap();
    let leader_image = image(0);
    assert!(leader_image.len() >= 4096);
    for i in 1..3 {
        assert!(
            image(i) == leader_image,
            "node {} differs from node 1",
            i + 1
        );
    }
}

//! The node as a library: opened in-process on a simulated clock and a seeded random source,
//! driven turn by turn by the test (`Node::turn`) and observed through `Node::state`, never
//! through its log lines. Clients are real dqlite-protocol connections on loopback.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::peer::ClusterSecret;
use atoll_net::protocol::Value;
use atoll_node::config::NodeConfig;
use atoll_node::inputs::{Inputs, ManualClock, SeededRandom};
use atoll_node::{Node, StartOptions};
use atoll_raft::{LogIndex, NodeId, StateRole};

/// A loopback address with a port free a moment ago.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Initializes a one-voter node in `data` and opens it on `clock` with a seeded generator.
fn open(data: &Path, config: Option<&NodeConfig>, clock: &ManualClock) -> Node {
    if let Some(config) = config {
        let secret = ClusterSecret::generate().unwrap();
        atoll_node::init(data, config, &secret).unwrap();
    }
    let inputs = Inputs {
        clock: Box::new(clock.clone()),
        random: Box::new(SeededRandom::new(7)),

        ..Inputs::production()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    Node::open_with(data, shutdown, StartOptions::default(), inputs).unwrap()
}

/// Turns the node, a tick of simulated time each, until `done` says so (bounded).
fn drive(node: &mut Node, clock: &ManualClock, mut done: impl FnMut(&mut Node) -> bool) {
    for _ in 0..20_000 {
        if done(node) {
            return;
        }
        clock.advance(Duration::from_millis(10));
        assert!(node.turn(Some(Duration::from_millis(2))).unwrap());
    }
    panic!("the node never got there: {:?}", node.state());
}

fn connect(address: &str) -> Connection {
    let mut connection = Connection::connect(address, &ClientConfig::default()).unwrap();
    connection.open("lib").unwrap();
    connection
}

#[test]
fn test_in_process_node_snapshots_and_recovers_seen_through_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let mut config = NodeConfig::new(1, address.clone());
    config.snapshot_entries = 40;
    let clock = ManualClock::new();
    let mut node = open(&data, Some(&config), &clock);
    let writer = {
        let address = address.clone();
        thread::spawn(move || {
            let mut connection = connect(&address);
            connection
                .exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY)", &[])
                .unwrap();
            for id in 0..300i64 {
                connection
                    .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(id)])
                    .unwrap();
            }
            let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
            rows.rows[0][0].clone()
        })
    };
    drive(&mut node, &clock, |_| writer.is_finished());
    assert_eq!(writer.join().unwrap(), Value::Integer(300));
    drive(&mut node, &clock, |node| node.state().snapshots_taken >= 2);
    let before = node.state();
    assert_eq!(before.id, NodeId(1));
    assert_eq!(before.role, StateRole::Leader);
    assert_eq!(before.leader, Some(NodeId(1)));
    assert_eq!(before.applied, before.commit);
    assert!(before.commands_applied >= 301, "{before:?}");
    let snapshot = before.snapshot.expect("a snapshot");
    assert!(
        snapshot >= LogIndex(40) && snapshot <= before.applied,
        "{before:?}"
    );
    assert_eq!(before.log_last, before.commit, "{before:?}");
    // The stop waits for a snapshot whose file is being finished, and records it.
    node.stop();
    let stopped = node.state();
    assert!(
        stopped.snapshot >= before.snapshot && stopped.snapshot <= Some(stopped.applied),
        "{stopped:?}"
    );
    let snapshot = stopped.snapshot.expect("a snapshot");
    drop(node);

    // Reopened: recovery reaches the same applied index, from the snapshot and the log.
    let mut node = open(&data, None, &clock);
    drive(&mut node, &clock, |node| {
        node.state().role == StateRole::Leader && node.state().applied > before.applied
    });
    let after = node.state();
    assert_eq!(after.snapshot, Some(snapshot), "{after:?}");
    assert!(after.term > before.term, "{after:?}");
    let reader = thread::spawn(move || {
        let mut connection = connect(&address);
        let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
        rows.rows[0][0].clone()
    });
    drive(&mut node, &clock, |_| reader.is_finished());
    assert_eq!(reader.join().unwrap(), Value::Integer(300));
    node.stop();
}

#[test]
fn test_simulated_time_alone_rolls_back_a_transaction_left_open() {
    // The node reads time only from its clock: advancing the simulated clock past the
    // transaction timeout rolls back a transaction that lasted milliseconds of real time.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_address();
    let mut config = NodeConfig::new(1, address.clone());
    config.transaction_timeout_ms = 60_000;
    let clock = ManualClock::new();
    let mut node = open(&data, Some(&config), &clock);
    let (began_tx, began) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let mut connection = connect(&address);
        connection.exec_sql("CREATE TABLE t(v)", &[]).unwrap();
        connection.exec_sql("BEGIN", &[]).unwrap();
        connection
            .exec_sql("INSERT INTO t VALUES (1)", &[])
            .unwrap();
        began_tx.send(()).unwrap();
        go.recv().unwrap();
        let in_expired = connection.exec_sql("INSERT INTO t VALUES (2)", &[]);
        let _ = connection.exec_sql("ROLLBACK", &[]);
        let count = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
        (in_expired.is_err(), count.rows[0][0].clone())
    });
    // A tick per turn: far less than the timeout until the transaction is open.
    drive(&mut node, &clock, |_| began.try_recv().is_ok());
    let real = std::time::Instant::now();
    clock.advance(Duration::from_millis(61_000));
    for _ in 0..3 {
        node.turn(Some(Duration::ZERO)).unwrap();
    }
    go_tx.send(()).unwrap();
    drive(&mut node, &clock, |_| client.is_finished());
    let (refused, count) = client.join().unwrap();
    assert!(refused, "the transaction outlived its simulated timeout");
    assert_eq!(count, Value::Integer(0), "the rolled-back row is visible");
    assert!(real.elapsed() < Duration::from_secs(60));
    node.stop();
}

//! Raft messages forged on the peer port (a peer that passes the hello: right node and
//! cluster ids) with fields out of range: the node refuses each one, changes nothing, stays up
//! and keeps serving. A heartbeat whose commit lay beyond the log used to abort the process.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::peer::{message_header, Hello, PEER_MAGIC_V1};
use atoll_net::protocol::Value;
use atoll_raft::{codec, LogIndex, Message, MessageKind, NodeId, Term};

use crate::support::{AtollNode, Node};

#[test]
fn test_forged_raft_messages_change_nothing_and_kill_nothing() {
    let mut node = AtollNode::start();
    let before = node.metadata().expect("metadata");
    assert_eq!(before.state, 3, "leads");
    let (me, forger) = (NodeId(before.id), NodeId(77));
    let term = Term(before.term);
    let message = |kind, term| Message::new(kind, forger, me, term);
    let mut forged = Vec::new();
    // A heartbeat from a later term, and one from this term, committing far beyond the log.
    for term in [Term(term.0 + 1), term] {
        let mut heartbeat = message(MessageKind::Heartbeat, term);
        heartbeat.commit = LogIndex(1 << 40);
        forged.push(heartbeat);
    }
    // An append whose indexes overflow.
    let mut append = message(MessageKind::Append, term);
    append.index = LogIndex(u64::MAX);
    forged.push(append);
    // An acknowledgement beyond the leader's log; a heartbeat answer for a round never sent.
    let mut acked = message(MessageKind::AppendResponse, term);
    acked.index = LogIndex(u64::MAX);
    forged.push(acked);
    let mut round = message(MessageKind::HeartbeatResponse, term);
    round.context = u64::MAX;
    forged.push(round);

    let mut bytes = PEER_MAGIC_V1.to_le_bytes().to_vec();
    Hello {
        from: forger.0,
        to: me.0,
        cluster_id: before.cluster_id,
        incarnation: 1,
        address: "127.0.0.1:9".to_owned(),
    }
    .encode(&mut bytes);
    for message in &forged {
        let encoded = codec::encode_message_to_vec(message);
        bytes.extend_from_slice(&message_header(encoded.len() as u32));
        bytes.extend_from_slice(&encoded);
    }
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream.write_all(&bytes).unwrap();

    let exited = node.wait_exit(Duration::from_secs(1));
    assert!(
        exited.is_none(),
        "the node exited: {exited:?}\n{}",
        node.log()
    );
    let after = node.metadata().expect("metadata");
    assert_eq!((after.term, after.state), (before.term, 3));
    assert!(after.commit_index >= before.commit_index);
    let log = node.log();
    assert!(
        log.matches("message from node 77 refused").count() >= forged.len(),
        "{log}"
    );
    // Still serving writes.
    let mut connection = Connection::connect(node.address(), &ClientConfig::default()).unwrap();
    connection.open("forged").unwrap();
    connection.exec_sql("CREATE TABLE t (x)", &[]).unwrap();
    connection
        .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(1)])
        .unwrap();
    drop(stream);
}

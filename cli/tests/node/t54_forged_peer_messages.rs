//! Raft messages forged on the peer port (a peer that passes the hello and the handshake: right
//! node and cluster ids, the cluster secret, a member's id) with fields out of range: the node
//! refuses each one, changes nothing, stays up and keeps serving. A heartbeat whose commit lay
//! beyond the log used to abort the process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::peer::{
    encode_auth, message_header, verify_challenge, ClusterSecret, Hello, CHALLENGE_BYTES,
    FRAME_HEADER_BYTES, PEER_MAGIC_V1,
};
use atoll_net::protocol::Value;
use atoll_raft::{codec, LogIndex, Message, MessageKind, NodeId, Term};

use crate::support::{atoll, AtollNode, Node};

#[test]
fn test_forged_raft_messages_change_nothing_and_kill_nothing() {
    let mut node = AtollNode::start();
    // Node 77 is made a member (a spare at an address nobody serves): only members' messages
    // reach raft.
    atoll(&[
        "add",
        "--cluster",
        node.address(),
        "--id",
        "77",
        "--address",
        "127.0.0.1:9",
    ])
    .ok();
    let data = node.data_dir();
    let token = atoll(&["token", "--data-dir", data.to_str().unwrap()]);
    let digits = token
        .ok()
        .trim()
        .strip_prefix("atoll1-")
        .unwrap()
        .to_owned();
    let cluster_id = u64::from_str_radix(&digits[..16], 16).unwrap();
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[16 + 2 * i..18 + 2 * i], 16).unwrap();
    }
    let secret = ClusterSecret::from_bytes(secret);
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

    let mut hello = PEER_MAGIC_V1.to_le_bytes().to_vec();
    Hello {
        from: forger.0,
        to: me.0,
        cluster_id,
        incarnation: 1,
        nonce: [7; 16],
        address: "127.0.0.1:9".to_owned(),
    }
    .encode(&mut hello);
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&hello).unwrap();
    let mut challenge = [0u8; FRAME_HEADER_BYTES + CHALLENGE_BYTES];
    stream.read_exact(&mut challenge).unwrap();
    let hello_payload = &hello[8 + FRAME_HEADER_BYTES..];
    let nonce = verify_challenge(&secret, hello_payload, &challenge[FRAME_HEADER_BYTES..]).unwrap();
    let mut bytes = Vec::new();
    encode_auth(&secret, hello_payload, &nonce, &mut bytes);
    for message in &forged {
        let encoded = codec::encode_message_to_vec(message);
        bytes.extend_from_slice(&message_header(encoded.len() as u32));
        bytes.extend_from_slice(&encoded);
    }
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

//! Peer authentication against real clusters started with the CLI: forged peer traffic from a
//! raw socket (hellos, appends at a higher term, heartbeats, snapshot chunks, made-up node ids)
//! changes nothing and stops nothing, with or without the cluster secret; the cluster id is not
//! told to clients; idle clients past the client limit do not keep a peer out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig};
use atoll_net::peer::{
    encode_auth, message_header, verify_challenge, ClusterSecret, FrameHeader, FrameKind, Hello,
    CHALLENGE_BYTES, FRAME_HEADER_BYTES, PEER_MAGIC_V1,
};
use atoll_net::protocol::VERSION_1;
use atoll_raft::{
    codec, Configuration, Entry, EntryKind, LogIndex, Message, MessageKind, NodeId, Payload,
    SnapshotChunk, SnapshotMeta, Term,
};

use crate::support::*;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster id and secret of a node, read from its join token (`atoll token`): the
/// strongest forger knows both, a weaker one the id alone.
fn cluster_keys(node: &AtollNode) -> (u64, ClusterSecret) {
    let data = node.data_dir();
    let output = atoll(&["token", "--data-dir", data.to_str().unwrap()]);
    let token = output.ok().trim().to_owned();
    let digits = token.strip_prefix("atoll1-").expect("a token");
    let cluster_id = u64::from_str_radix(&digits[..16], 16).unwrap();
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[16 + 2 * i..18 + 2 * i], 16).unwrap();
    }
    (cluster_id, ClusterSecret::from_bytes(secret))
}

/// A raw peer connection that sent its magic word and hello and read the node's CHALLENGE.
struct Forger {
    stream: TcpStream,
    hello_payload: Vec<u8>,
    challenge: Vec<u8>,
}

impl Forger {
    fn hello(address: &str, from: u64, to: u64, cluster_id: u64) -> Forger {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let hello = Hello {
            from,
            to,
            cluster_id,
            incarnation: 1,
            nonce: [from as u8; 16],
            address: format!("127.0.0.1:{}", 1000 + from % 60000),
        };
        let mut bytes = PEER_MAGIC_V1.to_le_bytes().to_vec();
        hello.encode(&mut bytes);
        stream.write_all(&bytes).unwrap();
        let mut challenge = vec![0u8; FRAME_HEADER_BYTES + CHALLENGE_BYTES];
        stream
            .read_exact(&mut challenge)
            .expect("the node answers a well-formed hello with a CHALLENGE");
        let header = FrameHeader::decode(challenge[..8].try_into().unwrap(), 0).unwrap();
        assert_eq!(header.kind, FrameKind::Challenge);
        Forger {
            stream,
            hello_payload: bytes[8 + FRAME_HEADER_BYTES..].to_vec(),
            challenge: challenge[FRAME_HEADER_BYTES..].to_vec(),
        }
    }

    /// Answers the CHALLENGE with an AUTH made with `secret` (the right one or not), and sends
    /// `messages` as MESSAGE frames in the same write (one segment: a node that replaces the
    /// connection a moment later has read them); a write error (the node closed) is ignored.
    fn auth_and_send(&mut self, secret: &ClusterSecret, messages: &[Message]) {
        let nonce: [u8; 16] = self.challenge[..16].try_into().unwrap();
        let mut bytes = Vec::new();
        encode_auth(secret, &self.hello_payload, &nonce, &mut bytes);
        self.append_messages(messages, &mut bytes);
        let _ = self.stream.write_all(&bytes);
    }

    /// Sends raft messages as MESSAGE frames; a write error (the node closed) is ignored.
    fn send(&mut self, messages: &[Message]) {
        let mut bytes = Vec::new();
        self.append_messages(messages, &mut bytes);
        let _ = self.stream.write_all(&bytes);
    }

    fn append_messages(&self, messages: &[Message], out: &mut Vec<u8>) {
        for message in messages {
            let mut body = Vec::new();
            codec::encode_message(message, &mut body);
            out.extend_from_slice(&message_header(body.len() as u32));
            out.extend_from_slice(&body);
        }
    }

    /// Whether the node closed the connection within the timeout (it never writes after its
    /// CHALLENGE).
    fn closed_by_node(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => panic!("the node wrote after its CHALLENGE"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
            Err(_) => true,
        }
    }
}

/// The messages an attacker sends as node `from` to node `to` at `term`: an append carrying
/// a command at term + 1, a heartbeat at term + 1, a vote request, a pre-vote, and the first
/// chunk of a snapshot that claims a petabyte.
fn forged_traffic(from: u64, to: u64, term: u64, last_index: u64) -> Vec<Message> {
    let (from, to) = (NodeId(from), NodeId(to));
    let mut append = Message::new(MessageKind::Append, from, to, Term(term + 1));
    append.index = LogIndex(last_index);
    append.log_term = Term(term);
    append.commit = LogIndex(last_index + 1);
    append.entries = vec![Entry {
        index: LogIndex(last_index + 1),
        term: Term(term + 1),
        kind: EntryKind::Command,
        payload: Payload::from_vec(b"INSERT INTO t VALUES ('forged')".to_vec()),
    }];
    let mut heartbeat = Message::new(MessageKind::Heartbeat, from, to, Term(term + 1));
    heartbeat.commit = LogIndex(last_index + 1);
    let mut vote = Message::new(MessageKind::Vote, from, to, Term(term));
    vote.index = LogIndex(last_index + 10);
    vote.log_term = Term(term);
    let mut pre_vote = Message::new(MessageKind::PreVote, from, to, Term(term + 1));
    pre_vote.index = LogIndex(last_index + 10);
    pre_vote.log_term = Term(term);
    let mut snapshot = Message::new(MessageKind::Snapshot, from, to, Term(term));
    snapshot.snapshot = Some(Box::new(SnapshotChunk {
        meta: SnapshotMeta {
            index: LogIndex(last_index + 1000),
            term: Term(term),
            size_bytes: 1 << 50,
            configuration: Configuration::new(),
        },
        offset: 0,
        length: 8,
        data: Payload::from_vec(vec![0xee; 8]),
    }));
    vec![append, heartbeat, vote, pre_vote, snapshot]
}

/// Whether the node closed a (non-blocking) client connection that never sent a request.
fn is_closed(mut stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn count_rows(cluster: &AtollCluster) -> i64 {
    let mut client = cluster.client();
    client.open("auth").expect("open");
    let rows = client
        .query_sql("SELECT count(*) FROM t", &[])
        .expect("count");
    match rows.rows[0][0] {
        atoll_net::protocol::Value::Integer(n) => n,
        ref other => panic!("count is {other:?}"),
    }
}

fn insert(cluster: &AtollCluster, value: &str) {
    let mut client = cluster.client();
    client.open("auth").expect("open");
    client
        .exec_sql(&format!("INSERT INTO t VALUES ('{value}')"), &[])
        .expect("insert");
}

/// Files in a node's snapshot directory.
fn snapshot_files(node: &AtollNode) -> Vec<String> {
    let dir = node.data_dir().join("raft").join("snapshots");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The leader's (id, term) and every node's running state, for before/after comparisons.
fn leader_and_term(cluster: &AtollCluster) -> (u64, u64, u64) {
    let leader = cluster.leader();
    let metadata = cluster.nodes[leader]
        .metadata()
        .expect("the leader answers");
    (metadata.id, metadata.term, metadata.last_index)
}

#[test]
fn test_forged_peer_traffic_without_the_secret_changes_nothing() {
    let cluster = AtollCluster::start(3, &[], 3);
    {
        let mut client = cluster.client();
        client.open("auth").unwrap();
        client.exec_sql("CREATE TABLE t (v TEXT)", &[]).unwrap();
    }
    insert(&cluster, "real");
    let (leader_id, term, last_index) = leader_and_term(&cluster);
    let leader = cluster.index_of(leader_id);
    let leader_address = cluster.nodes[leader].address().to_owned();
    let (cluster_id, _) = cluster_keys(&cluster.nodes[0]);
    // DESCRIBE format 1 no longer tells the cluster id.
    assert_eq!(cluster.nodes[leader].metadata().unwrap().cluster_id, 0);
    let follower = (leader + 1) % 3;
    let follower_id = cluster.nodes[follower].id();
    let wrong = ClusterSecret::from_bytes([0x42; 32]);
    let mut forgers = Vec::new();
    // Messages right after the hello, without an AUTH.
    let mut no_auth = Forger::hello(&leader_address, 99, leader_id, cluster_id);
    no_auth.send(&forged_traffic(99, leader_id, term, last_index));
    forgers.push(no_auth);
    // A wrong AUTH, then the traffic.
    let mut wrong_auth = Forger::hello(&leader_address, 99, leader_id, cluster_id);
    wrong_auth.auth_and_send(&wrong, &forged_traffic(99, leader_id, term, last_index));
    forgers.push(wrong_auth);
    // A real member's id (a follower) with a wrong AUTH.
    let mut as_member = Forger::hello(&leader_address, follower_id, leader_id, cluster_id);
    as_member.auth_and_send(
        &wrong,
        &forged_traffic(follower_id, leader_id, term, last_index),
    );
    forgers.push(as_member);
    // 100 made-up node ids, to every node.
    for from in 1000..1100u64 {
        let node = &cluster.nodes[from as usize % 3];
        let mut forger = Forger::hello(node.address(), from, node.id(), cluster_id);
        forger.auth_and_send(&wrong, &forged_traffic(from, node.id(), term, last_index));
        forgers.push(forger);
    }
    for (i, forger) in forgers.iter_mut().enumerate() {
        assert!(forger.closed_by_node(), "forged connection {i} left open");
    }
    let (leader_after, term_after, _) = leader_and_term(&cluster);
    assert_eq!((leader_after, term_after), (leader_id, term));
    assert!(cluster
        .nodes
        .iter()
        .all(|n| n.is_running() && n.metadata().is_some()));
    assert_eq!(count_rows(&cluster), 1);
    insert(&cluster, "after");
    assert_eq!(count_rows(&cluster), 2);
    cluster.wait_in_sync();
    let dumps: Vec<Vec<u8>> = (0..3).map(|i| cluster.dump(i, "auth")).collect();
    assert!(dumps.iter().all(|d| *d == dumps[0]), "the nodes differ");
}

#[test]
fn test_traffic_from_non_members_with_the_secret_changes_nothing() {
    // A holder of the secret that is not a member (a removed node, a leaked token) passes the
    // handshake, but members drop its messages: no higher term, no snapshot file, no reply
    // (so no peer entry at the nodes: after 100 made-up ids, a real node still joins). A
    // snapshot chunk that claims to come from the leader itself is dropped too: it does not
    // fit on the disk, and one from a member that does not lead is dropped whatever its size.
    let mut cluster = AtollCluster::start(3, &[], 3);
    {
        let mut client = cluster.client();
        client.open("auth").unwrap();
        client.exec_sql("CREATE TABLE t (v TEXT)", &[]).unwrap();
    }
    insert(&cluster, "real");
    let (leader_id, term, last_index) = leader_and_term(&cluster);
    let (cluster_id, secret) = cluster_keys(&cluster.nodes[0]);
    let snapshots_before: Vec<Vec<String>> = cluster.nodes.iter().map(snapshot_files).collect();
    let mut forgers = Vec::new();
    for from in 1000..1100u64 {
        let node = &cluster.nodes[from as usize % 3];
        let mut forger = Forger::hello(node.address(), from, node.id(), cluster_id);
        assert!(
            verify_challenge(&secret, &forger.hello_payload, &forger.challenge).is_ok(),
            "the node proves it holds the secret"
        );
        forger.auth_and_send(&secret, &forged_traffic(from, node.id(), term, last_index));
        forgers.push(forger);
    }
    // The leader's identity, authenticated, sending a petabyte snapshot to a follower.
    let leader = cluster.index_of(leader_id);
    let follower = (leader + 1) % 3;
    let follower_id = cluster.nodes[follower].id();
    let mut impostor = Forger::hello(
        cluster.nodes[follower].address(),
        leader_id,
        follower_id,
        cluster_id,
    );
    let snapshot = forged_traffic(leader_id, follower_id, term, last_index).pop();
    impostor.auth_and_send(&secret, &[snapshot.unwrap()]);
    // The other follower's identity (a member, not the leader), a small snapshot.
    let other = (leader + 2) % 3;
    let other_id = cluster.nodes[other].id();
    let mut not_leader = Forger::hello(
        cluster.nodes[follower].address(),
        other_id,
        follower_id,
        cluster_id,
    );
    let mut snapshot = forged_traffic(other_id, follower_id, term, last_index)
        .pop()
        .unwrap();
    snapshot.snapshot.as_mut().unwrap().meta.size_bytes = 8;
    not_leader.auth_and_send(&secret, &[snapshot]);
    std::thread::sleep(Duration::from_millis(1500));
    for (i, forger) in forgers.iter_mut().enumerate() {
        forger.stream.set_nonblocking(true).unwrap();
        assert!(
            !forger.closed_by_node(),
            "authenticated connection {i} was closed"
        );
    }
    let (leader_after, term_after, _) = leader_and_term(&cluster);
    assert_eq!((leader_after, term_after), (leader_id, term));
    let snapshots_after: Vec<Vec<String>> = cluster.nodes.iter().map(snapshot_files).collect();
    assert_eq!(
        snapshots_after, snapshots_before,
        "a forged snapshot was written"
    );
    assert_eq!(count_rows(&cluster), 1);
    drop(forgers);
    drop(impostor);
    drop(not_leader);
    // A real node still joins and catches up (the peer tables were not filled).
    let address = cluster.addresses();
    let mut joined = AtollNode::prepare_join(&free_address(), &address, &[]);
    joined.spawn();
    cluster.nodes.push(joined);
    insert(&cluster, "after");
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader_commit = loop {
        let leader = cluster.leader();
        let commit = cluster.nodes[leader].metadata().map(|m| m.commit_index);
        let joined = cluster.nodes[3].metadata().map(|m| m.applied_index);
        if let (Some(commit), Some(applied)) = (commit, joined) {
            if applied >= commit && applied > last_index {
                break commit;
            }
        }
        assert!(Instant::now() < deadline, "the joined node never caught up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(leader_commit > last_index);
    assert_eq!(count_rows(&cluster), 2);
}

#[test]
fn test_idle_clients_past_the_limit_do_not_keep_peers_out() {
    // 1,100 idle clients connect to the leader: 1,024 (less the one the test keeps) are
    // kept, the others closed. While they sit there, a follower restarts and the other stops:
    // writes need the restarted follower's connection to the leader, and they commit. Then a
    // new node joins (its ADD waits for the idle clients to time out: 15 s here) and catches up.
    let addresses = [free_address(), free_address(), free_address()];
    // A long election timeout: while one follower is down and the other restarts the leader
    // has no quorum, and on a loaded machine the restart can outlast 300-600 ms (it stepped
    // down and the write failed). The test is about admission, not failover.
    let idle = [
        "--client-idle-timeout",
        "15",
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "3000",
    ]
    .map(String::from)
    .to_vec();
    let mut first = AtollNode::init(&addresses[0], &["--id", "1"]);
    first.start_args = idle.clone();
    first.restart();
    let mut nodes = vec![first];
    for (i, address) in addresses.iter().enumerate().skip(1) {
        let id = (i + 1).to_string();
        let mut node = AtollNode::prepare_join(address, &addresses[0], &["--id", &id]);
        node.start_args = idle.clone();
        node.spawn();
        nodes.push(node);
    }
    let mut cluster = AtollCluster { nodes };
    cluster.wait_roles(3, None);
    let leader = cluster.leader();
    let leader_address = cluster.nodes[leader].address().to_owned();
    let mut writer =
        Client::connect(&[leader_address.as_str()], ClientConfig::default()).expect("the writer");
    writer.open("auth").unwrap();
    writer.exec_sql("CREATE TABLE t (v TEXT)", &[]).unwrap();
    let flooded = Instant::now();
    let mut idle_clients = Vec::new();
    for _ in 0..1100 {
        let mut stream = TcpStream::connect(&leader_address).expect("connect");
        stream.write_all(&VERSION_1.to_le_bytes()).unwrap();
        idle_clients.push(stream);
    }
    for stream in &idle_clients {
        stream.set_nonblocking(true).unwrap();
    }
    let refused = wait_for(
        "the clients past the limit to be closed",
        READY_TIMEOUT,
        || {
            let closed = idle_clients.iter().filter(|s| is_closed(s)).count();
            (closed >= 1100 - 1023).then_some(closed)
        },
    );
    assert!(refused < 1100, "{refused}");
    let a = (leader + 1) % 3;
    let b = (leader + 2) % 3;
    cluster.nodes[a].kill();
    // The dead follower's connections at the leader are gone: more idle clients come for
    // their room (and are refused: the client limit is full).
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&leader_address).expect("connect");
        stream.write_all(&VERSION_1.to_le_bytes()).unwrap();
        stream.set_nonblocking(true).unwrap();
        idle_clients.push(stream);
    }
    cluster.nodes[a].spawn();
    cluster.nodes[b].stop();
    for i in 0..5 {
        writer
            .exec_sql(&format!("INSERT INTO t VALUES ('w{i}')"), &[])
            .expect("a write with the restarted follower");
    }
    assert!(
        flooded.elapsed() < Duration::from_secs(15),
        "the writes took until the idle clients timed out ({:?})",
        flooded.elapsed()
    );
    cluster.nodes[b].spawn();
    let joined = AtollNode::prepare_join(&free_address(), &cluster.addresses(), &[]);
    cluster.nodes.push(joined);
    cluster.nodes[3].spawn();
    let in_sync = cluster.wait_in_sync();
    assert!(in_sync > 0);
    writer
        .exec_sql("INSERT INTO t VALUES ('last')", &[])
        .expect("a write after the join");
    assert_eq!(count_rows(&cluster), 6);
    drop(idle_clients);
}

#[test]
fn test_join_tokens_and_secret_files() {
    // `atoll init` makes both files private and prints the token `atoll token` prints; `atoll
    // join` refuses a token of another cluster or with another secret, saying which; a data
    // directory without a secret (made before peers authenticated) is refused by `atoll start`
    // until `atoll token --generate` gives it one.
    use std::os::unix::fs::PermissionsExt;
    let mut node = AtollNode::start();
    let data = node.data_dir();
    let data_text = data.to_str().unwrap().to_owned();
    for file in ["atoll.conf", "cluster.secret"] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let token = atoll(&["token", "--data-dir", &data_text])
        .ok()
        .trim()
        .to_owned();
    assert!(token.starts_with("atoll1-") && token.len() == 87, "{token}");
    let cluster = node.address().to_owned();
    let join = |token: &str| {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let address = free_address();
        let output = atoll(&[
            "join",
            "--data-dir",
            target.to_str().unwrap(),
            "--address",
            &address,
            "--cluster",
            &cluster,
            "--join-token",
            token,
        ]);
        (output, target.exists())
    };
    let mut other_secret = token.clone();
    let last = other_secret.pop().unwrap();
    other_secret.push(if last == '0' { '1' } else { '0' });
    let (output, created) = join(&other_secret);
    assert!(output
        .failed()
        .contains("the token's secret is not this cluster's"));
    assert!(!created, "nothing is written for a refused token");
    let mut other_cluster = token.clone();
    let first = other_cluster.as_bytes()[7];
    other_cluster.replace_range(7..8, if first == b'0' { "1" } else { "0" });
    let (output, created) = join(&other_cluster);
    assert!(output.failed().contains("the token is for another cluster"));
    assert!(!created);
    let (output, _) = join("atoll1-123");
    assert!(output.failed().contains("hex digits"));
    // An old data directory: no secret.
    node.stop();
    std::fs::remove_file(data.join("cluster.secret")).unwrap();
    let output = atoll(&["start", "--data-dir", &data_text]);
    assert!(output
        .failed()
        .contains("atoll token --data-dir DIR --generate"));
    let generated = atoll(&["token", "--data-dir", &data_text, "--generate"]);
    let new_token = generated.ok().trim().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(new_token[..23], token[..23], "the same cluster id");
    let again = atoll(&["token", "--data-dir", &data_text, "--generate"]);
    assert!(again.failed().contains("already has a cluster secret"));
    node.restart();
}

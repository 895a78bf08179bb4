//! Requests beyond SQL on a single node: membership changes that commit on one voter, the ones
//! that need a peer, and a DUMP large enough to stream in several pieces.

use atoll_net::client::{ClientConfig, ClientError, Connection};
use atoll_net::protocol::{Request, Response, Role, Value};

use crate::support::{AtollNode, Node};

fn connect(node: &AtollNode) -> Connection {
    Connection::connect(node.address(), &ClientConfig::default()).unwrap()
}

fn failure(result: Result<(), ClientError>) -> (u64, String) {
    match result {
        Err(ClientError::Failure { code, message }) => (code, message),
        other => panic!("expected a FAILURE, got {other:?}"),
    }
}

/// ADD (a spare) and ASSIGN to standby commit on the single voter and show in CLUSTER;
/// promotion to voter of a node that never answers is abandoned by raft's catch-up (it would
/// otherwise take the quorum down), TRANSFER needs another voter; REMOVE takes the node out;
/// the last voter cannot be removed. (Roles are manual here: automatic roles would try to
/// promote the spare themselves.)
#[test]
fn test_membership_requests_on_one_node() {
    let mut node = AtollNode::start_with(&["--roles", "manual"]);
    let mut connection = connect(&node);
    connection.add(42, "127.0.0.1:1").unwrap();
    connection.assign(42, Role::Standby).unwrap();
    let nodes = connection.cluster().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!((nodes[1].id, nodes[1].role), (42, Some(Role::Standby)));
    let (code, message) = failure(connection.assign(42, Role::Voter));
    assert_eq!(code, 1);
    assert!(message.contains("did not catch up"), "{message}");
    let (code, message) = failure(connection.transfer(0));
    assert_eq!(
        (code, message.as_str()),
        (1, "there's no other voting server")
    );
    let (code, _) = failure(connection.transfer(42));
    assert_eq!(code, 1);
    let (code, message) = failure(connection.add(42, "127.0.0.1:2"));
    assert_eq!(code, 1);
    assert!(message.contains("already a member"), "{message}");
    connection.remove(42).unwrap();
    let (code, message) = failure(connection.remove(1));
    assert_eq!(code, 1);
    assert!(message.contains("last voter"), "{message}");
    assert_eq!(connection.cluster().unwrap().len(), 1);
    // Configuration changes are log entries: acknowledged, they survive a crash.
    connection.add(43, "127.0.0.1:3").unwrap();
    drop(connection);
    node.kill();
    node.restart();
    let mut connection = connect(&node);
    let nodes = connection.cluster().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!((nodes[1].id, nodes[1].role), (43, Some(Role::Spare)));
    let (_, leader) = connection.leader().unwrap().unwrap();
    assert_eq!(leader, node.address());
}

/// A DUMP of a database of several MiB streams in pieces (256 KiB each) inside one FILES
/// message: a full image whose header agrees with its length, and an empty WAL.
#[test]
fn test_large_dump_streams_a_consistent_image() {
    let node = AtollNode::start();
    let mut connection = connect(&node);
    connection.open("large").unwrap();
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for _ in 0..40 {
        connection
            .exec_sql(
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 25) \
                 INSERT INTO t (v) SELECT randomblob(4000) FROM c",
                &[],
            )
            .unwrap();
    }
    let files = connection.dump("large").unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        (files[0].name.as_str(), files[1].name.as_str()),
        ("large", "large-wal")
    );
    assert!(files[1].data.is_empty());
    let image = &files[0].data;
    assert!(image.len() > 3 << 20, "{} bytes", image.len());
    let pages = u32::from_be_bytes(image[28..32].try_into().unwrap()) as usize;
    assert_eq!(pages * 4096, image.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("large.db"), image).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("large.db")).unwrap();
    let count: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1000);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // The connection serves the next request after the streamed answer.
    let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0], vec![Value::Integer(1000)]);
    connection.send(&Request::Leader).unwrap();
    assert!(matches!(
        connection.receive().unwrap(),
        Response::Server { .. }
    ));
}

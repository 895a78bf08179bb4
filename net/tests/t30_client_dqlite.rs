//! The blocking client against a real dqlite node (`dqlite-demo` from Debian's go-dqlite) on
//! loopback. These tests fail, with a message saying to run `scripts/setup-test-deps`, when
//! dqlite-demo is not installed.

mod support;

use atoll_net::client::{Client, ClientConfig, ClientError, Connection};
use atoll_net::protocol::{Role, Value};
use std::time::{Duration, Instant};

use support::DqliteNode;

fn client(node: &DqliteNode, database: &str) -> Client {
    let mut client = Client::connect(&[&node.address], ClientConfig::default()).unwrap();
    client.open(database).unwrap();
    client
}

#[test]
fn test_every_value_type_round_trips_through_dqlite() {
    // Parameters of every type a client may send go in through EXEC_SQL; they come back through
    // QUERY_SQL with their declared-type mapping: a BOOLEAN column answers BOOLEAN, a DATETIME
    // column holding text answers ISO8601.
    let node = DqliteNode::start(None);
    let mut client = client(&node, "types");
    client
        .exec_sql(
            "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n TEXT, flag BOOLEAN, d DATETIME)",
            &[],
        )
        .unwrap();
    let row = vec![
        Value::Integer(i64::MIN),
        Value::Float(-2.5),
        Value::Text("ünï".into()),
        Value::Blob(vec![0, 1, 0xff]),
        Value::Null,
        Value::Boolean(true),
        Value::Iso8601("2024-05-06 07:08:09".into()),
    ];
    let result = client
        .exec_sql("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", &row)
        .unwrap();
    assert_eq!(result.rows_affected, 1);
    assert_eq!(result.last_insert_id, 1);
    let rows = client.query_sql("SELECT * FROM t", &[]).unwrap();
    assert_eq!(rows.columns, ["i", "f", "s", "b", "n", "flag", "d"]);
    assert_eq!(rows.rows.len(), 1);
    let got = &rows.rows[0];
    assert_eq!(got[..6], row[..6]);
    let Value::Iso8601(date) = &got[6] else {
        panic!("ISO8601 expected, got {:?}", got[6]);
    };
    assert!(date.starts_with("2024-05-06"), "{date}");
    // Parameters in a query, and an empty blob.
    let rows = client
        .query_sql("SELECT ?, ?", &[Value::Integer(7), Value::Blob(Vec::new())])
        .unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![Value::Integer(7), Value::Blob(Vec::new())]]
    );
}

#[test]
fn test_multi_batch_results_are_collected_and_iterated() {
    // 10,000 rows take dozens of ROWS batches; query_sql collects them all. Iterating a few rows
    // and dropping the iterator interrupts the stream, and the connection stays usable.
    let node = DqliteNode::start(None);
    let mut client = client(&node, "big");
    client
        .exec_sql("CREATE TABLE big (x INTEGER)", &[])
        .unwrap();
    client
        .exec_sql(
            "INSERT INTO big(x) WITH RECURSIVE c(v) AS \
             (SELECT 1 UNION ALL SELECT v+1 FROM c WHERE v < 10000) SELECT v FROM c",
            &[],
        )
        .unwrap();
    let rows = client
        .query_sql("SELECT x FROM big ORDER BY x", &[])
        .unwrap();
    assert_eq!(rows.rows.len(), 10_000);
    assert_eq!(rows.rows[9_999], vec![Value::Integer(10_000)]);
    {
        let mut iter = client.query_sql_rows("SELECT x FROM big", &[]).unwrap();
        assert_eq!(iter.columns(), ["x"]);
        for _ in 0..10 {
            iter.next().unwrap().unwrap();
        }
    }
    let count = client.query_sql("SELECT count(*) FROM big", &[]).unwrap();
    assert_eq!(count.rows, vec![vec![Value::Integer(10_000)]]);
}

#[test]
fn test_prepared_statements_and_failures() {
    // PREPARE/EXEC/QUERY/FINALIZE, then the failures clients depend on: a SQL error with
    // SQLite's code and message, a finalized statement id (12), a constraint (2067).
    let node = DqliteNode::start(None);
    let mut client = client(&node, "prepared");
    client
        .exec_sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)", &[])
        .unwrap();
    let insert = client.prepare("INSERT INTO kv VALUES (?, ?)").unwrap();
    assert_eq!(insert.params_count, 2);
    for i in 0..3 {
        let result = client
            .exec(&insert, &[Value::Text(format!("k{i}")), Value::Integer(i)])
            .unwrap();
        assert_eq!(result.rows_affected, 1);
    }
    let select = client.prepare("SELECT v FROM kv WHERE k = ?").unwrap();
    let rows = client.query(&select, &[Value::Text("k2".into())]).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(2)]]);
    client.finalize(select).unwrap();
    match client.finalize(select) {
        Err(ClientError::Failure { code: 12, message }) => {
            assert_eq!(message, "no statement with the given id")
        }
        other => panic!("expected FAILURE 12, got {other:?}"),
    }
    match client.exec_sql("SELEC 1", &[]) {
        Err(ClientError::Failure { code: 1, message }) => assert!(message.contains("syntax")),
        other => panic!("expected a syntax error, got {other:?}"),
    }
    match client.exec(&insert, &[Value::Text("k0".into()), Value::Integer(9)]) {
        // SQLITE_CONSTRAINT_PRIMARYKEY, an extended code, passed through as is.
        Err(ClientError::Failure {
            code: 1555,
            message,
        }) => {
            assert_eq!(message, "UNIQUE constraint failed: kv.k")
        }
        other => panic!("expected a PRIMARY KEY failure, got {other:?}"),
    }
    assert!(matches!(
        client.exec_sql("SELECT ?", &[Value::UnixTime(1)]),
        Err(ClientError::InvalidParameter(_))
    ));
    // Transactions: BEGIN … ROLLBACK leaves nothing behind.
    client.exec_sql("BEGIN", &[]).unwrap();
    client
        .exec_sql("INSERT INTO kv VALUES ('tx', 1)", &[])
        .unwrap();
    client.exec_sql("ROLLBACK", &[]).unwrap();
    let rows = client
        .query_sql("SELECT count(*) FROM kv WHERE k = 'tx'", &[])
        .unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(0)]]);
}

#[test]
fn test_cluster_requests() {
    // LEADER, CLUSTER, DESCRIBE, WEIGHT and DUMP against a one-node cluster; membership
    // requests on a node id that does not exist fail with raft's message.
    let node = DqliteNode::start(None);
    let mut client = client(&node, "admin");
    client
        .exec_sql("CREATE TABLE kv (k TEXT); INSERT INTO kv VALUES ('a')", &[])
        .unwrap();
    let (id, address) = client.leader().unwrap().unwrap();
    assert_ne!(id, 0);
    assert_eq!(address, node.address);
    let nodes = client.cluster().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, id);
    assert_eq!(nodes[0].role, Some(Role::Voter));
    client.weight(3).unwrap();
    assert_eq!(client.describe().unwrap(), (0, 3));
    let files = client.dump("admin").unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].name, "admin");
    assert_eq!(files[1].name, "admin-wal");
    assert!(files[0].data.len() + files[1].data.len() >= 4096);
    assert!(matches!(
        client.remove(0x1234),
        Err(ClientError::Failure { code: 1, .. })
    ));
    // A low-level connection straight to the node: DESCRIBE without CLIENT, as the shell does.
    let mut connection = Connection::connect(&node.address, &ClientConfig::default()).unwrap();
    assert_eq!(connection.describe().unwrap(), (0, 3));
}

#[test]
fn test_leader_discovery_follows_a_follower_to_the_leader() {
    // Two dqlite nodes, the second promoted to voter (a spare knows no leader). The client is
    // given only the second: LEADER there names the first, the client redials it, checks that
    // it names itself, and writes there.
    let first = DqliteNode::start(None);
    let second = DqliteNode::start(Some(&first.address));
    let mut admin = Client::connect(&[&first.address], ClientConfig::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second_id = loop {
        let nodes = admin.cluster().unwrap();
        if let Some(node) = nodes.iter().find(|n| n.address == second.address) {
            break node.id;
        }
        assert!(Instant::now() < deadline, "the second node never joined");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The join's own configuration change may still be in flight: dqlite answers BUSY (5).
    loop {
        match admin.assign(second_id, Role::Voter) {
            Ok(()) => break,
            Err(ClientError::Failure { code: 5, .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("promoting the second node: {e}"),
        }
    }
    let mut probe = Connection::connect(&second.address, &ClientConfig::default()).unwrap();
    while probe.leader().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the second node never learned the leader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = Client::connect(&[&second.address], ClientConfig::default()).unwrap();
    assert_eq!(client.leader_address(), Some(first.address.as_str()));
    client.open("follow").unwrap();
    client.exec_sql("CREATE TABLE t (x)", &[]).unwrap();
}

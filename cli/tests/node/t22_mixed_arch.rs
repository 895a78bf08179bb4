//! A cluster of two builds: one node runs this build's `atoll`, two run `ATOLL_PEER_BINARY`, an
//! `atoll` of another architecture (big-endian s390x, 32-bit armv7, ...) that binfmt_misc hands
//! to qemu-user. `scripts/cross-test` runs it natively with the target's binary as the peer.

use std::path::PathBuf;
use std::thread;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::Value;

use crate::support::{atoll, free_address, AtollCluster, AtollNode, Node};

/// Writes `count` rows (ids from `first`) with four clients of the node at `address`, one row
/// per write, so the log grows by about `count` entries.
fn write_rows(address: &str, first: i64, count: i64) {
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let address = address.to_owned();
            thread::spawn(move || {
                let mut connection =
                    Connection::connect(&address, &ClientConfig::default()).unwrap();
                connection.open("app").unwrap();
                for i in (first + w * count / 4)..(first + (w + 1) * count / 4) {
                    connection
                        .exec_sql(
                            "INSERT INTO r VALUES (?, ?, ?, randomblob(?), ?)",
                            &[
                                Value::Integer(i),
                                Value::Float(-(i as f64) / 7.0),
                                Value::Text(format!("ligne {i}: Zürich → 東京")),
                                Value::Integer(i % 700),
                                Value::Integer(i64::MIN + i),
                            ],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
}

/// The snapshot files of a node's log directory: the indexes they end at.
fn snapshot_indexes(node: &AtollNode) -> Vec<u64> {
    let dir = node.data_dir().join("raft").join("snapshots");
    let Ok(items) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut indexes: Vec<u64> = items
        .filter_map(|item| {
            let name = item.ok()?.file_name().into_string().ok()?;
            let rest = name.strip_prefix("snapshot-")?;
            let (index, term) = rest.split_once('-')?;
            (term.len() == 20).then(|| index.parse().ok())?
        })
        .collect();
    indexes.sort_unstable();
    indexes
}

/// Stops node `down`, writes enough through node `leader` that the others compact their logs
/// past it, then starts it again: it can only catch up by a snapshot from `leader`. Checks that
/// it installed one past where it stopped and that all three hold the same database.
fn catch_up_by_snapshot(cluster: &mut AtollCluster, leader: usize, down: usize, first: i64) {
    let stopped_at = cluster.nodes[down].metadata().unwrap().last_index;
    cluster.nodes[down].kill();
    let address = cluster.nodes[leader].address().to_owned();
    // 1,024 entries are kept behind a snapshot, taken every 100: 1,300 single-row writes leave
    // the node's last entry compacted away on the others.
    write_rows(&address, first, 1300);
    cluster.nodes[down].spawn();
    cluster.wait_in_sync();
    assert!(
        snapshot_indexes(&cluster.nodes[down])
            .iter()
            .any(|&index| index > stopped_at),
        "node {down} (stopped at {stopped_at}) caught up without a snapshot: {:?}",
        snapshot_indexes(&cluster.nodes[down])
    );
    let images: Vec<Vec<u8>> = (0..3).map(|i| cluster.dump(i, "app")).collect();
    assert!(images[0].len() > 100 * 4096, "{} bytes", images[0].len());
    assert!(
        images[0] == images[1] && images[1] == images[2],
        "the three databases differ"
    );
}

/// Node 1 runs this build, nodes 2 and 3 the peer build. The native leader replicates to the
/// peers and streams a snapshot to one of them; leadership moves to a peer, which replicates
/// back and streams a snapshot to the native node. Every node ends with the same DUMP, and a
/// follower of each build answers the same rows.
#[test]
#[ignore = "needs ATOLL_PEER_BINARY, another build's atoll (scripts/cross-test sets it)"]
fn test_nodes_of_two_architectures_replicate_identical_databases() {
    let peer = PathBuf::from(
        std::env::var_os("ATOLL_PEER_BINARY")
            .expect("ATOLL_PEER_BINARY names another build's atoll"),
    );
    assert!(peer.is_file(), "{}: no such file", peer.display());
    let settings = ["--snapshot-entries", "100", "--election-timeout-ms", "3000"];
    let mut first = AtollNode::init(&free_address(), &settings);
    first.restart();
    let mut cluster = AtollCluster { nodes: vec![first] };
    for _ in 1..3 {
        let address = cluster.nodes[0].address().to_owned();
        let mut node = AtollNode::prepare_join(&free_address(), &address, &settings);
        node.binary = Some(peer.clone());
        node.spawn();
        cluster.nodes.push(node);
    }
    cluster.wait_roles(3, None);
    assert_eq!(cluster.leader(), 0);
    let mut connection =
        Connection::connect(cluster.nodes[0].address(), &ClientConfig::default()).unwrap();
    connection.open("app").unwrap();
    connection
        .exec_sql(
            "CREATE TABLE r (id INTEGER PRIMARY KEY, x REAL, s TEXT, b BLOB, n INTEGER)",
            &[],
        )
        .unwrap();
    connection
        .exec_sql("CREATE INDEX r_s ON r(s)", &[])
        .unwrap();

    // Native leader to a peer: log entries, then a snapshot.
    catch_up_by_snapshot(&mut cluster, 0, 2, 0);

    // A peer leads: its entries and its snapshot go to the native node.
    let out = atoll(&[
        "transfer",
        "--cluster",
        &cluster.addresses(),
        "--id",
        &cluster.nodes[1].id().to_string(),
    ]);
    assert!(out.ok().contains("to node"), "{}", out.stdout);
    assert_eq!(cluster.leader(), 1);
    connection = Connection::connect(cluster.nodes[1].address(), &ClientConfig::default()).unwrap();
    connection.open("app").unwrap();
    connection
        .exec_sql("UPDATE r SET x = -x, n = n + 1 WHERE id % 3 = 0", &[])
        .unwrap();
    connection
        .exec_sql("DELETE FROM r WHERE id % 11 = 5", &[])
        .unwrap();
    catch_up_by_snapshot(&mut cluster, 1, 0, 1300);

    let query = "SELECT count(*), sum(id), sum(length(b)), sum(x), total(n) FROM r";
    let mut answers = Vec::new();
    for index in [0, 2] {
        let mut reader =
            Connection::connect(cluster.nodes[index].address(), &ClientConfig::default()).unwrap();
        reader
            .open_with_flags("app", atoll_net::client::OPEN_FOLLOWER_READS)
            .unwrap();
        answers.push(reader.query_sql(query, &[]).unwrap().rows);
    }
    assert_eq!(answers[0], answers[1]);
    let Value::Integer(rows) = answers[0][0][0] else {
        panic!("{:?}", answers[0]);
    };
    // The delete ran between the two batches of 1,300.
    let deleted = (0..1300).filter(|i| i % 11 == 5).count() as i64;
    assert_eq!(rows, 2600 - deleted);
}

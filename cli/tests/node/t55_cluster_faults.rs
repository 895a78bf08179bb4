//! Cluster faults: an isolated leader (fault-injecting proxies between every pair of nodes,
//! `atoll start --peer-route`), and a node that comes back after the log it needs was
//! compacted (it catches up by a snapshot stream that survives a dropped connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::Value;
use atoll_net::testing::{Direction, FaultProxy};

use crate::support::{free_address, wait_for, AtollCluster, AtollNode, Node, READY_TIMEOUT};
use crate::t20_cluster::{assert_all_present, start_writer};

/// Three nodes (ids 1, 2, 3) whose peer connections each go through their own proxy: node i
/// dials node j through `proxies[(i, j)]`. Clients dial the nodes directly.
fn proxied_cluster() -> (AtollCluster, HashMap<(u64, u64), FaultProxy>) {
    proxied_cluster_with(&[])
}

/// [`proxied_cluster`] with extra `init`/`join` settings.
fn proxied_cluster_with(settings: &[&str]) -> (AtollCluster, HashMap<(u64, u64), FaultProxy>) {
    proxied_cluster_in(None, settings)
}

/// [`proxied_cluster_with`], node 1's data directory in `first` (`first/data`, which may be a
/// mount point the test made) if given.
pub(crate) fn proxied_cluster_in(
    first: Option<tempfile::TempDir>,
    settings: &[&str],
) -> (AtollCluster, HashMap<(u64, u64), FaultProxy>) {
    proxied_cluster_started(first, settings, |_| Vec::new())
}

/// [`proxied_cluster_in`], node `id` started with `start(id)` too (`atoll start` arguments).
pub(crate) fn proxied_cluster_started(
    first: Option<tempfile::TempDir>,
    settings: &[&str],
    start: impl Fn(u64) -> Vec<String>,
) -> (AtollCluster, HashMap<(u64, u64), FaultProxy>) {
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let mut proxies = HashMap::new();
    // A proxy listens on an ephemeral port, which may be one just picked (and released) for a
    // node: such a proxy is kept aside until every proxy has a port of its own, then dropped,
    // so that the node can bind its address (seen once: "address already in use").
    let mut collided = Vec::new();
    for i in 1..=3u64 {
        for j in 1..=3u64 {
            if i != j {
                let target: SocketAddr = addresses[j as usize - 1].parse().unwrap();
                let proxy = loop {
                    let proxy = FaultProxy::start(target).unwrap();
                    if addresses.contains(&proxy.addr().to_string()) {
                        collided.push(proxy);
                    } else {
                        break proxy;
                    }
                };
                proxies.insert((i, j), proxy);
            }
        }
    }
    drop(collided);
    let routes = |i: u64| -> Vec<String> {
        let mut args: Vec<String> = (1..=3u64)
            .filter(|j| *j != i)
            .flat_map(|j| {
                let proxy = proxies[&(i, j)].addr();
                ["--peer-route".to_owned(), format!("{j}={proxy}")]
            })
            .collect();
        args.extend(start(i));
        args
    };
    let mut first_args = vec!["--id", "1"];
    first_args.extend_from_slice(settings);
    let mut first = match first {
        Some(dir) => AtollNode::init_in(dir, &addresses[0], &first_args),
        None => AtollNode::init(&addresses[0], &first_args),
    };
    first.start_args = routes(1);
    first.restart();
    let mut nodes = vec![first];
    for id in 2..=3u64 {
        let id_text = id.to_string();
        let mut node = AtollNode::prepare_join(
            &addresses[id as usize - 1],
            &addresses[0],
            &["--id", &id_text],
        );
        node.start_args = routes(id);
        node.spawn();
        nodes.push(node);
    }
    let cluster = AtollCluster { nodes };
    cluster.wait_roles(3, None);
    (cluster, proxies)
}

/// The leader is cut off from both followers (every proxy to and from it blackholes, so no
/// connection even closes): within about an election timeout it stops acknowledging writes and
/// linearizable reads (check-quorum deposes it; a read waits for a heartbeat round it cannot
/// get), while the majority elects a new leader that serves writes. After healing, the old
/// leader follows the new one and holds the same database.
#[test]
fn test_partitioned_leader_stops_serving_and_catches_up_after_healing() {
    let (cluster, proxies) = proxied_cluster();
    let writer = start_writer(cluster.running());
    writer.wait_progress(30, "writes before the partition");
    let old = cluster.leader();
    let old_id = old as u64 + 1;
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let mut direct = Connection::connect(cluster.nodes[old].address(), &config).unwrap();
    direct.open("app").unwrap();

    for ((from, to), proxy) in &proxies {
        if *from == old_id || *to == old_id {
            proxy.blackhole(Direction::Both);
        }
    }
    let cut_at = Instant::now();
    // A write sent to the isolated leader is never acknowledged: it fails when the leader
    // steps down (leadership lost, or not leader once it has).
    let write = direct.exec_sql("INSERT INTO w VALUES (-1)", &[]);
    assert!(write.is_err(), "the isolated leader acknowledged a write");
    // A linearizable read is refused too.
    let read = direct.query_sql("SELECT count(*) FROM w", &[]);
    assert!(
        read.is_err(),
        "the isolated leader answered a read: {read:?}"
    );
    let refused_after = cut_at.elapsed();
    wait_for("the isolated leader to step down", READY_TIMEOUT, || {
        cluster.nodes[old]
            .metadata()
            .is_some_and(|m| m.state != 3)
            .then_some(())
    });
    let stepped_down = cut_at.elapsed();
    eprintln!("isolated leader: refused after {refused_after:?}, stepped down by {stepped_down:?}");
    // The election timeout is 100-200 ms; allow for a debug build on a busy machine.
    assert!(
        stepped_down < Duration::from_millis(1500),
        "{stepped_down:?}"
    );

    writer.wait_progress(30, "writes on the majority's new leader");
    let new = cluster.leader();
    assert_ne!(new, old);

    for proxy in proxies.values() {
        proxy.heal();
    }
    writer.wait_progress(30, "writes after healing");
    let (acknowledged, errors) = writer.finish();
    assert!(errors.len() <= 5, "{errors:?}");
    cluster.wait_in_sync();
    assert_all_present(&cluster, old, &acknowledged);
    assert_eq!(cluster.dump(old, "app"), cluster.dump(new, "app"));
    let mut connection = Connection::connect(cluster.nodes[new].address(), &config).unwrap();
    connection.open("app").unwrap();
    let rows = connection
        .query_sql("SELECT count(*) FROM w WHERE k = -1", &[])
        .unwrap();
    assert_eq!(
        rows.rows,
        [[Value::Integer(0)]],
        "the unacknowledged write is not there"
    );
}

/// A follower is down while 10,000 rows (about 10 MB) are written by four clients (thousands
/// of log entries) and the others take snapshots and compact their logs past where it stopped.
/// Restarted, it cannot catch up from the log: the leader streams it the snapshot in chunks,
/// read from its snapshot file. The path from the leader to it is slowed (a proxy delays every
/// piece) and its connection reset once in the middle of the stream: the stream resumes from
/// the bytes the follower holds instead of starting over (its log shows one "receiving
/// snapshot"). It installs the snapshot, follows the log, and its database equals the leader's.
#[test]
fn test_node_back_after_compaction_catches_up_by_snapshot() {
    // A long election timeout: leadership must not move while the writers (plain connections
    // to the leader) run, and a sync on a shared CI disk was seen to take 453 ms.
    let (mut cluster, proxies) =
        proxied_cluster_with(&["--snapshot-entries", "300", "--election-timeout-ms", "2000"]);
    let leader = cluster.leader();
    let down = (leader + 1) % 3;
    cluster.nodes[down].kill();
    let address = cluster.nodes[leader].address().to_owned();
    let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
    connection.open("app").unwrap();
    connection
        .exec_sql("CREATE TABLE r (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    // Four clients writing one row per write: thousands of entries even with group commit, so
    // the log is compacted (a snapshot every 300 entries, 1024 kept behind) far past the node.
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut connection =
                    Connection::connect(&address, &ClientConfig::default()).unwrap();
                connection.open("app").unwrap();
                for i in (w * 2500)..((w + 1) * 2500) {
                    connection
                        .exec_sql(
                            "INSERT INTO r VALUES (?, randomblob(1000))",
                            &[Value::Integer(i)],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let log = cluster.nodes[leader].log();
    assert!(
        log.contains("snapshot at index"),
        "the leader took no snapshot"
    );

    let leader_id = leader as u64 + 1;
    let down_id = down as u64 + 1;
    let path = &proxies[&(leader_id, down_id)];
    path.set_latency(Duration::from_millis(15));
    cluster.nodes[down].spawn();
    wait_for("the snapshot stream to start", READY_TIMEOUT, || {
        cluster.nodes[down]
            .log()
            .contains("receiving snapshot")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    path.reset();
    path.set_latency(Duration::ZERO);
    cluster.wait_in_sync();
    let log = cluster.nodes[down].log();
    assert_eq!(log.matches("receiving snapshot").count(), 1, "{log}");
    assert!(log.contains("installed snapshot"), "{log}");
    assert_eq!(cluster.dump(down, "app"), cluster.dump(leader, "app"));
    let mut reader =
        Connection::connect(cluster.nodes[down].address(), &ClientConfig::default()).unwrap();
    reader
        .open_with_flags("app", atoll_net::client::OPEN_FOLLOWER_READS)
        .unwrap();
    let rows = reader
        .query_sql("SELECT count(*), sum(id), sum(length(v)) FROM r", &[])
        .unwrap();
    assert_eq!(
        rows.rows,
        [[
            Value::Integer(10_000),
            Value::Integer(49_995_000),
            Value::Integer(10_000_000)
        ]]
    );
}

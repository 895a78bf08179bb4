//! Memory given back: a node that served 64 sessions writing 12 MiB of rows (every page of
//! several log segments written through their maps, 64 SQLite connections with their caches)
//! and reading them back returns, once idle, to within a few MiB of its resident memory at
//! start. Before the idle release, the mapped segments, the freed C heap and the page caches
//! stayed: about 50 MiB more (bench/RESULTS.md, "Memory per node").
//!
//! The bound is relative to the same process at start, so it holds for debug and release
//! builds alike (the binary's own pages differ by several MiB between them); the absolute
//! targets (release, a three-node cluster) are `atoll-bench kv`'s "rss check" line.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::Value;

use crate::support::{AtollNode, Node};

/// How much more than at start an idle node may keep resident after the load: its SQLite
/// connections' leftovers, the WAL index, allocator slack.
const IDLE_GROWTH_KIB_MAX: u64 = 8 * 1024;

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn test_idle_node_gives_back_what_a_burst_took() {
    const CLIENTS: usize = 64;
    const ROWS_PER_CLIENT: usize = 48;
    let mut node = AtollNode::start();
    let pid = node.pid();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let mut setup = Connection::connect(node.address(), &config).unwrap();
    setup.open("memory").unwrap();
    setup
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    drop(setup);
    // Idle at start: the same settling the end gets (the release after a quiet second).
    thread::sleep(Duration::from_secs(2));
    let at_start = resident_kib(pid);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let address = node.address().to_owned();
            let barrier = barrier.clone();
            let config = config.clone();
            thread::spawn(move || {
                let mut connection = Connection::connect(&address, &config).unwrap();
                connection.open("memory").unwrap();
                barrier.wait();
                for row in 0..ROWS_PER_CLIENT {
                    connection
                        .exec_sql("INSERT INTO t (v) VALUES (randomblob(4000))", &[])
                        .unwrap_or_else(|e| panic!("client {client} row {row}: {e}"));
                }
                barrier.wait();
                // Every session reads the whole table: 64 page caches fill.
                let rows = connection
                    .query_sql("SELECT count(*), sum(length(v)) FROM t", &[])
                    .unwrap();
                let count = (CLIENTS * ROWS_PER_CLIENT) as i64;
                assert_eq!(
                    rows.rows[0],
                    vec![Value::Integer(count), Value::Integer(count * 4000)]
                );
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let after_load = resident_kib(pid);
    // Polled with a deadline: the release comes a quiet second after the last client left.
    let deadline = Instant::now() + Duration::from_secs(20);
    let idle = loop {
        let now = resident_kib(pid);
        if now <= at_start + IDLE_GROWTH_KIB_MAX || Instant::now() >= deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(50));
    };
    eprintln!("resident: {at_start} KiB at start, {after_load} after the load, {idle} idle");
    assert!(
        idle <= at_start + IDLE_GROWTH_KIB_MAX,
        "idle for 20 s, the node keeps {idle} KiB resident: {} KiB more than at start",
        idle - at_start
    );
    // The load did take memory: the bound above is not met trivially.
    assert!(
        after_load > at_start + IDLE_GROWTH_KIB_MAX,
        "the load took only {} KiB",
        after_load - at_start
    );
    assert!(node.stop().success());
}

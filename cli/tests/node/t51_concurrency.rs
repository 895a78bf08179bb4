//! Concurrent writers: 64 connections insert into one table at the same time. dqlite 1.11
//! answers most of them "database is locked" at once; atoll queues them and commits them in
//! groups.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::Value;

use crate::support::{AtollNode, Node};

#[test]
fn test_64_concurrent_writers_all_succeed_in_groups() {
    const CLIENTS: usize = 64;
    const ROWS_PER_CLIENT: usize = 50;
    let mut node = AtollNode::start();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let mut setup = Connection::connect(node.address(), &config).unwrap();
    setup.open("concurrent").unwrap();
    setup
        .exec_sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, client INTEGER, v TEXT)",
            &[],
        )
        .unwrap();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let address = node.address().to_owned();
            let barrier = barrier.clone();
            let config = config.clone();
            thread::spawn(move || {
                let mut connection = Connection::connect(&address, &config).unwrap();
                connection.open("concurrent").unwrap();
                barrier.wait();
                for row in 0..ROWS_PER_CLIENT {
                    let params = [
                        Value::Integer(client as i64),
                        Value::Text(format!("client {client} row {row}")),
                    ];
                    let result = connection
                        .exec_sql("INSERT INTO t (client, v) VALUES (?, ?)", &params)
                        .unwrap_or_else(|e| panic!("client {client} row {row}: {e}"));
                    assert_eq!(result.rows_affected, 1);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let elapsed = started.elapsed();
    let writes = CLIENTS * ROWS_PER_CLIENT;
    let rows = setup
        .query_sql("SELECT count(*), count(DISTINCT client) FROM t", &[])
        .unwrap();
    assert_eq!(
        rows.rows[0],
        vec![
            Value::Integer(writes as i64),
            Value::Integer(CLIENTS as i64)
        ]
    );
    assert!(node.stop().success());
    // "stopping: N entries proposed in M batches, S syncs, ...": the group commit at work.
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("stopping:"))
        .unwrap_or_else(|| panic!("no statistics in the log:\n{log}"));
    let number_before = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"));
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let entries = number_before("entries proposed");
    let syncs = number_before("syncs");
    println!(
        "{writes} writes from {CLIENTS} connections in {elapsed:?} ({:.0} writes/s): {entries} \
         raft entries, {syncs} log syncs",
        writes as f64 / elapsed.as_secs_f64()
    );
    assert!(
        entries * 4 <= writes as u64,
        "group commit: {entries} entries for {writes} writes"
    );
}

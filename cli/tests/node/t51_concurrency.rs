//! Concurrent writers: 64 connections insert into one table at the same time. dqlite 1.11
//! answers most of them "database is locked" at once; atoll queues them and commits them in
//! groups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError, Connection};
use atoll_net::protocol::Value;

use atoll_net::testing::Direction;

use crate::support::{
    atoll, free_address, metric_sample, scrape_metrics, wait_for, AtollNode, Node, READY_TIMEOUT,
};
use crate::t55_cluster_faults::proxied_cluster_started;

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

/// 32 writers insert unique keys through three nodes while leadership moves: twice by
/// `atoll transfer`, twice because the leader is cut off from its peers (fault proxies) until a
/// new one is elected. Writers arriving while commands are in flight run on top of them
/// (chains: the metrics show commands proposed with others of the database ahead of them); a
/// cut-off leader discards the chain it had out when it steps down, and its writers get a
/// clean error (leadership lost, not leader, busy), never a wrong answer. Every acknowledged
/// key is on every node, the nodes' databases are byte-identical, and SQLite finds them intact.
#[test]
fn test_chains_of_writers_through_leader_changes() {
    const WRITERS: usize = 32;
    let metrics: Vec<String> = (0..3).map(|_| free_address()).collect();
    let start = |id: u64| vec!["--metrics-address".into(), metrics[id as usize - 1].clone()];
    let (cluster, proxies) = proxied_cluster_started(None, &[], start);
    let addresses = cluster.running();
    let mut setup = cluster.client();
    setup.open("app").unwrap();
    setup
        .exec_sql("CREATE TABLE w (k INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS as i64)
        .map(|writer| {
            let (addresses, stop, acknowledged) =
                (addresses.clone(), stop.clone(), acknowledged.clone());
            thread::spawn(move || {
                let config = ClientConfig {
                    request_timeout: Duration::from_secs(10),
                    leader_timeout: Duration::from_secs(10),
                    ..ClientConfig::default()
                };
                let mut client = Client::connect(&addresses, config).expect("connect");
                client.open("app").expect("open");
                let mut errors = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = writer * 1_000_000 + n;
                    let sql = "INSERT INTO w VALUES (?, randomblob(300))";
                    match client.exec_sql(sql, &[Value::Integer(key)]) {
                        Ok(result) => {
                            assert_eq!(result.rows_affected, 1);
                            acknowledged.lock().unwrap().push(key);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        })
        .collect();
    let count = || acknowledged.lock().unwrap().len();
    let mut leaders = vec![cluster.leader()];
    for change in 0..4 {
        let target = count() + 300;
        wait_for("writes", READY_TIMEOUT, || {
            (count() >= target).then_some(())
        });
        let old = *leaders.last().unwrap();
        let old_id = old as u64 + 1;
        let cut = change % 2 == 1;
        if cut {
            for ((from, to), proxy) in &proxies {
                if *from == old_id || *to == old_id {
                    proxy.blackhole(Direction::Both);
                }
            }
        } else {
            atoll(&["transfer", "--cluster", &cluster.addresses()]).ok();
        }
        let new = wait_for("a new leader", READY_TIMEOUT, || {
            (0..3).find(|&i| i != old && cluster.nodes[i].metadata().is_some_and(|m| m.state == 3))
        });
        if cut {
            wait_for("the cut-off leader to step down", READY_TIMEOUT, || {
                cluster.nodes[old]
                    .metadata()
                    .is_some_and(|m| m.state != 3)
                    .then_some(())
            });
            for proxy in proxies.values() {
                proxy.heal();
            }
        }
        leaders.push(new);
    }
    let target = count() + 300;
    wait_for("writes", READY_TIMEOUT, || {
        (count() >= target).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for writer in writers {
        errors.extend(writer.join().unwrap());
    }
    for error in &errors {
        let clean = match error {
            ClientError::OutcomeUnknown(_) | ClientError::NoLeader { .. } => true,
            ClientError::Failure { code: 5, .. } => true,
            other => other.is_not_leader() || other.is_leadership_lost(),
        };
        assert!(clean, "a writer got {error}");
    }
    let leadership_lost = errors
        .iter()
        .filter(|e| matches!(e, ClientError::OutcomeUnknown(inner) if inner.is_leadership_lost()))
        .count();
    let acknowledged = acknowledged.lock().unwrap().clone();
    cluster.wait_in_sync();
    let images: Vec<Vec<u8>> = (0..3).map(|i| cluster.dump(i, "app")).collect();
    assert!(
        images[0] == images[1] && images[1] == images[2],
        "dumps differ"
    );
    let mut reader = cluster.client();
    reader.open("app").unwrap();
    let rows = reader.query_sql("SELECT k FROM w", &[]).unwrap();
    let present: std::collections::HashSet<i64> = rows
        .rows
        .iter()
        .map(|row| match row[0] {
            Value::Integer(k) => k,
            ref other => panic!("{other:?}"),
        })
        .collect();
    let lost: Vec<&i64> = acknowledged
        .iter()
        .filter(|k| !present.contains(k))
        .collect();
    assert!(lost.is_empty(), "acknowledged keys lost: {lost:?}");
    let check = reader.query_sql("PRAGMA integrity_check", &[]).unwrap();
    assert_eq!(check.rows, vec![vec![Value::Text("ok".into())]]);
    let chained: f64 = metrics
        .iter()
        .map(|address| {
            let text = scrape_metrics(address);
            metric_sample(&text, "atoll_chain_ahead_commands_count")
                - metric_sample(&text, "atoll_chain_ahead_commands_bucket{le=\"0\"}")
        })
        .sum();
    eprintln!(
        "{} writes acknowledged, leaders {leaders:?}, {} clean errors ({leadership_lost} \
         leadership lost), {chained} commands proposed on top of others",
        acknowledged.len(),
        errors.len()
    );
    assert!(chained > 0.0, "no command was proposed on top of another");
    assert!(
        leadership_lost > 0,
        "no write was in flight when a leader was cut off"
    );
}

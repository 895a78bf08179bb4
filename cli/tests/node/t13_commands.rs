//! The node commands from the outside: `atoll demo`, `atoll init` refusals, a clean stop on
//! SIGTERM, a data directory in use, a directory that was never initialized.

use crate::support::{atoll, AtollNode, Node};

/// `atoll demo` needs no setup: it runs three nodes (init + two joins), the workload, a
/// failover it times, a restart that catches up, stops the nodes and removes its temporary
/// directory.
#[test]
fn test_demo_runs_a_workload_and_cleans_up() {
    let out = atoll(&["demo"]);
    let stdout = out.ok();
    for wanted in [
        "atoll demo: a three-node cluster in ",
        "$ atoll init --data-dir ",
        "$ atoll join --data-dir ",
        "three voters after ",
        "killing the leader, node",
        "ms from kill -9 to the next acknowledged write",
        "node1 applied everything through index ",
        "|  200 |",
        "OK (4 rows changed)",
        "| greenhouse |    23.0 | 2024-05-01 12:00:00 |",
        "4 rows",
        "| attic      |        1 |    30.0 |",
        "stopped; databases checkpointed",
        "removed ",
    ] {
        assert!(
            stdout.contains(wanted),
            "{wanted:?} missing from:\n{stdout}"
        );
    }
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("removed "))
        .unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
}

#[test]
fn test_init_refuses_a_non_empty_directory_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"keep").unwrap();
    let data = dir.path().to_str().unwrap();
    let out = atoll(&["init", "--data-dir", data, "--address", "127.0.0.1:9"]);
    assert!(out.failed().contains("is not empty"), "{out:?}");
    assert_eq!(std::fs::read(dir.path().join("precious")).unwrap(), b"keep");
    let fresh = dir.path().join("fresh");
    let fresh = fresh.to_str().unwrap();
    let out = atoll(&["init", "--data-dir", fresh, "--address", "localhost"]);
    assert!(out.failed().contains("is not HOST:PORT"), "{out:?}");
    let out = atoll(&["init", "--data-dir", fresh, "--address", "h:1", "--id", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = atoll(&["start", "--data-dir", fresh]);
    assert!(
        out.failed().contains("is ")
            && out.stderr.contains("a data directory made by `atoll init`"),
        "{out:?}"
    );
}

/// SIGTERM stops the node cleanly (exit 0, databases checkpointed); a second `atoll start` on a
/// directory in use is refused; after the stop the node starts again with its data.
#[test]
fn test_sigterm_stops_cleanly_and_a_directory_in_use_is_refused() {
    let mut node = AtollNode::start();
    let address = node.address().to_owned();
    crate::support::shell(
        &address,
        "kept",
        &["CREATE TABLE t (x); INSERT INTO t VALUES (1)"],
    )
    .ok();
    let data = node.data_dir();
    let out = atoll(&["start", "--data-dir", data.to_str().unwrap()]);
    assert!(
        out.failed().contains("in use by another atoll process"),
        "{out:?}"
    );
    let status = node.stop();
    assert!(status.success(), "{status}");
    let log = node.log();
    assert!(log.contains("stopped; databases checkpointed"), "{log}");
    node.restart();
    let out = crate::support::shell(&address, "kept", &["-f", "csv", "SELECT x FROM t"]);
    assert_eq!(out.ok(), "x\n1\n");
}

/// The timing flags take any milliseconds: without `--tick-ms` the tick is derived (45 and 450
/// ms: a tick of 9 ms), with it the values are rounded to whole ticks and a note says so; the
/// node starts and serves with either.
#[test]
fn test_timing_flags_take_any_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("exact");
    let exact = exact.to_str().unwrap();
    let out = atoll(&[
        "init",
        "--data-dir",
        exact,
        "--address",
        "127.0.0.1:9",
        "--heartbeat-ms",
        "45",
        "--election-timeout-ms",
        "450",
    ]);
    out.ok();
    assert!(!out.stderr.contains("rounded"), "{out:?}");
    let conf = std::fs::read_to_string(dir.path().join("exact/atoll.conf")).unwrap();
    for line in [
        "tick_ms = 9\n",
        "heartbeat_ticks = 5\n",
        "election_ticks_min = 50\n",
    ] {
        assert!(conf.contains(line), "{line:?} in\n{conf}");
    }
    let rounded = dir.path().join("rounded");
    let rounded = rounded.to_str().unwrap();
    let out = atoll(&[
        "init",
        "--data-dir",
        rounded,
        "--address",
        "127.0.0.1:9",
        "--tick-ms",
        "10",
        "--heartbeat-ms",
        "15",
        "--election-timeout-ms",
        "333",
    ]);
    out.ok();
    assert!(
        out.stderr.contains("rounded to 20 ms and 330 ms"),
        "{out:?}"
    );
    let conf = std::fs::read_to_string(dir.path().join("rounded/atoll.conf")).unwrap();
    for line in [
        "tick_ms = 10\n",
        "heartbeat_ticks = 2\n",
        "election_ticks_min = 33\n",
    ] {
        assert!(conf.contains(line), "{line:?} in\n{conf}");
    }
    // Still refused: an election timeout not above the heartbeat.
    let refused = dir.path().join("refused");
    let out = atoll(&[
        "init",
        "--data-dir",
        refused.to_str().unwrap(),
        "--address",
        "127.0.0.1:9",
        "--heartbeat-ms",
        "50",
        "--election-timeout-ms",
        "40",
    ]);
    assert!(
        out.failed().contains("must be above the heartbeat"),
        "{out:?}"
    );
    // A node with derived timing leads and writes.
    let node = AtollNode::start_with(&["--heartbeat-ms", "45", "--election-timeout-ms", "450"]);
    let config = atoll_net::client::ClientConfig::default();
    let mut client = atoll_net::client::Client::connect(&[node.address()], config).unwrap();
    client.open("timing").unwrap();
    client.exec_sql("CREATE TABLE t (x)", &[]).unwrap();
}

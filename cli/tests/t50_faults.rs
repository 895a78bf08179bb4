//! Faults seen from the client commands, on real nodes: a cluster that is not running, bad
//! arguments, a leader that changes under a shell session (transparent between statements,
//! reported inside a transaction), a node killed under a write (outcome unknown: said, never
//! resent), and a cluster that lost its quorum.

mod support;

use std::time::{Duration, Instant};

use support::{atoll, free_address, wait_for, Cluster, LiveShell, ServerKind, READY_TIMEOUT};

/// Every client command fails at once, with one line naming the addresses and what to do,
/// when nothing listens there.
#[test]
fn test_unreachable_cluster_fails_fast_with_a_clear_message() {
    let nowhere = free_address();
    let commands: Vec<Vec<&str>> = vec![
        vec!["shell", "db", "SELECT 1"],
        vec!["dump", "db", "-o", "/nonexistent/never-written.db"],
        vec!["cluster"],
        vec!["add", "--id", "2", "--address", "127.0.0.1:1"],
        vec!["assign", "--id", "2", "--role", "voter"],
        vec!["remove", "--id", "2"],
        vec!["transfer"],
    ];
    for command in commands {
        let mut args = vec![command[0], "--cluster", nowhere.as_str()];
        args.extend_from_slice(&command[1..]);
        let started = Instant::now();
        let out = atoll(&args);
        let stderr = out.failed();
        assert_eq!(
            stderr.trim(),
            format!(
                "error: cannot reach any node of {nowhere}: connection refused; is the node \
                 running (`atoll start`)?"
            ),
            "{command:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{command:?} was slow"
        );
    }
}

#[test]
fn test_bad_arguments_are_refused_before_connecting() {
    for (args, wanted) in [
        (
            vec!["shell", "--cluster", "localhost", "db"],
            "is not HOST:PORT",
        ),
        (
            vec!["shell", "--cluster", "127.0.0.1:70000", "db"],
            "is not a port number",
        ),
        (
            vec!["remove", "--cluster", "127.0.0.1:1", "--id", "0"],
            "0 is not a node id",
        ),
        (
            vec![
                "assign",
                "--cluster",
                "127.0.0.1:1",
                "--id",
                "1",
                "--role",
                "boss",
            ],
            "invalid value 'boss'",
        ),
        (
            vec!["shell", "--cluster", "127.0.0.1:1", "db", "--timeout", "0"],
            "not between 0 and 3600",
        ),
    ] {
        let out = atoll(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(wanted), "{args:?}: {}", out.stderr);
    }
}

/// A shell session given only the first node's address: leadership moves to the second node
/// between two statements and the session carries on, on the new leader, without a word. Inside
/// a transaction the same move cannot be hidden (the transaction lived on the old leader's
/// connection): the shell says the transaction was lost, and indeed nothing of it remains.
fn scenario_shell_across_leader_changes(cluster: &Cluster) {
    let (first, second) = (cluster.address(0), cluster.address(1));
    let both = cluster.addresses();
    let mut client = cluster.client();
    let second_id = client
        .cluster()
        .unwrap()
        .iter()
        .find(|n| n.address == second)
        .unwrap()
        .id
        .to_string();
    atoll(&[
        "assign",
        "--cluster",
        &both,
        "--id",
        &second_id,
        "--role",
        "voter",
    ])
    .ok();
    let transfer_to = |id: &str| {
        let moved = atoll(&["transfer", "--cluster", &both, "--id", id]);
        assert!(moved.ok().contains("leadership moved"), "{}", moved.stdout);
    };
    let first_id = client
        .cluster()
        .unwrap()
        .iter()
        .find(|n| n.address == first)
        .unwrap()
        .id
        .to_string();

    let mut shell = LiveShell::start(first, "moves", &["-f", "csv"]);
    shell.send("CREATE TABLE t (x);");
    shell.send("INSERT INTO t VALUES (1);");
    shell.send("SELECT count(*) AS n FROM t;");
    shell.expect_stdout("n");
    assert_eq!(shell.expect_stdout("1"), ["1"]);

    transfer_to(&second_id);
    shell.send("INSERT INTO t VALUES (2);");
    shell.send("SELECT count(*) AS n FROM t;");
    shell.expect_stdout("n");
    assert_eq!(shell.expect_stdout("2"), ["2"]);
    shell.send(".leader");
    shell.expect_stdout(&format!("at {second}"));

    shell.send("BEGIN;");
    shell.send("INSERT INTO t VALUES (3);");
    shell.send("SELECT count(*) AS n FROM t;");
    shell.expect_stdout("n");
    assert_eq!(
        shell.expect_stdout("3"),
        ["3"],
        "the transaction sees its insert"
    );
    transfer_to(&first_id);
    shell.send("INSERT INTO t VALUES (4);");
    let lines = shell.expect_stderr("the leader changed");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("the open transaction was lost"),
        "{lines:?}"
    );
    shell.send("SELECT count(*) AS n FROM t;");
    shell.expect_stdout("n");
    assert_eq!(
        shell.expect_stdout("2"),
        ["2"],
        "nothing of the transaction remains"
    );
    let status = shell.finish();
    assert_eq!(status.code(), Some(1), "a statement failed");
}

#[test]
fn test_shell_follows_the_leader_and_reports_lost_transactions() {
    scenario_shell_across_leader_changes(&Cluster::start(2));
}

#[test]
fn test_shell_follows_the_atoll_leader_and_reports_lost_transactions() {
    scenario_shell_across_leader_changes(&Cluster::start_kind(ServerKind::Atoll, 2));
}

/// The only node dies while the shell is idle; the next statement is a write: it may have
/// reached the node before it died, so the shell says the outcome is unknown and does not
/// resend it. The next statement finds no node and says so.
fn scenario_write_with_unknown_outcome(cluster: &mut Cluster) {
    let address = cluster.address(0).to_owned();
    let mut shell = LiveShell::start(&address, "crash", &["--timeout", "1"]);
    shell.send("CREATE TABLE t (x);");
    shell.expect_stdout("OK");
    cluster.nodes[0].kill();
    shell.send("INSERT INTO t VALUES (1);");
    let lines = shell.expect_stderr("may or may not have taken effect");
    assert!(lines.last().unwrap().contains("not retried"), "{lines:?}");
    shell.send("SELECT 1;");
    shell.expect_stderr(&format!(
        "cannot reach any node of {address}: connection refused; is the node running"
    ));
    assert_eq!(shell.finish().code(), Some(1));
}

#[test]
fn test_write_with_unknown_outcome_is_reported_not_resent() {
    scenario_write_with_unknown_outcome(&mut Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_write_with_unknown_outcome_is_reported_not_resent() {
    scenario_write_with_unknown_outcome(&mut Cluster::start_kind(ServerKind::Atoll, 1));
}

/// Two voters, one killed: the survivor steps down (no quorum). `atoll cluster` still shows the
/// configuration it can read, with no leader and the dead node unreachable, and fails; the
/// shell fails after its --timeout with the reason and what to do.
fn scenario_lost_quorum(cluster: &mut Cluster) {
    let first = cluster.address(0).to_owned();
    let second = cluster.address(1).to_owned();
    let mut client = cluster.client();
    let second_id = client
        .cluster()
        .unwrap()
        .iter()
        .find(|n| n.address == second)
        .unwrap()
        .id
        .to_string();
    atoll(&[
        "assign",
        "--cluster",
        &first,
        "--id",
        &second_id,
        "--role",
        "voter",
    ])
    .ok();
    cluster.nodes[1].kill();
    let out = wait_for("the survivor to step down", READY_TIMEOUT, || {
        let out = atoll(&["cluster", "--cluster", &first, "--timeout", "1"]);
        (!out.status.success()).then_some(out)
    });
    assert!(out.failed().contains("no leader among"), "{}", out.stderr);
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert!(
        rows[1..].iter().all(|row| row.contains("| no ")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("no (connection refused)"),
        "{}",
        out.stdout
    );

    let shell = atoll(&[
        "shell",
        "--cluster",
        &first,
        "--timeout",
        "1",
        "db",
        "SELECT 1",
    ]);
    let stderr = shell.failed();
    assert!(stderr.contains("no leader among"), "{stderr}");
    assert!(stderr.contains("lost its quorum"), "{stderr}");
}

#[test]
fn test_lost_quorum_is_reported() {
    scenario_lost_quorum(&mut Cluster::start(2));
}

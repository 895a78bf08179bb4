//! Membership from the command line while a client writes (joins, promotion, removal with
//! `atoll remove` and the dqlite shell's `.remove`, transfer), automatic roles (convergence to
//! 3 voters and 2 standbys; an unreachable voter replaced), SIGTERM on the leader (a handover
//! first), reads served by a follower on request, and the Python client pointed at a follower.

use std::process::Command;
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, ClientError, Connection, OPEN_FOLLOWER_READS};
use atoll_net::protocol::{Role, Value};

use crate::support::{
    atoll, free_address, require, run_command, wait_for, AtollCluster, AtollNode, Node,
    READY_TIMEOUT,
};
use crate::t20_cluster::{assert_all_present, start_writer};

fn role_of(cluster: &AtollCluster, id: u64) -> Option<Role> {
    cluster
        .roles()
        .into_iter()
        .find(|(node, _)| *node == id)
        .map(|(_, role)| role)
}

/// Manual roles, a writer throughout: two joined nodes promoted to voters (`atoll assign`),
/// a 4th and 5th joined (spares) and promoted (voter, standby), a voter removed with
/// `atoll remove`, leadership transferred to the 4th, another voter removed with the dqlite
/// shell's `.remove`. The writer makes progress after every step and loses nothing.
#[test]
fn test_membership_changes_while_a_client_writes() {
    require("dqlite");
    let settings = ["--roles", "manual"];
    let mut first = AtollNode::init(&free_address(), &settings);
    first.restart();
    let mut cluster = AtollCluster { nodes: vec![first] };
    let writer = start_writer(cluster.running());
    writer.wait_progress(20, "writes on one node");
    let join = |cluster: &mut AtollCluster, id: u64| {
        let seed = cluster.nodes[0].address().to_owned();
        let id_text = id.to_string();
        let mut args = settings.to_vec();
        args.extend(["--id", &id_text]);
        let mut node = AtollNode::prepare_join(&free_address(), &seed, &args);
        node.spawn();
        cluster.nodes.push(node);
        wait_for("the joined node listed as a spare", READY_TIMEOUT, || {
            (role_of(cluster, id) == Some(Role::Spare)).then_some(())
        });
    };
    let assign = |cluster: &AtollCluster, id: u64, role: &str| {
        let out = atoll(&[
            "assign",
            "--cluster",
            &cluster.running().join(","),
            "--id",
            &id.to_string(),
            "--role",
            role,
        ]);
        assert!(out.ok().contains(&format!("-> {role}")), "{}", out.stdout);
    };
    for id in [2, 3] {
        join(&mut cluster, id);
        assign(&cluster, id, "voter");
        writer.wait_progress(20, "writes after a promotion");
    }
    for id in [4, 5] {
        join(&mut cluster, id);
    }
    assign(&cluster, 4, "voter");
    assign(&cluster, 5, "standby");
    writer.wait_progress(20, "writes with five members");

    // Remove voter 2 (a follower unless it leads; then the leader steps down after the change).
    let out = atoll(&[
        "remove",
        "--cluster",
        &cluster.running().join(","),
        "--id",
        "2",
    ]);
    assert!(out.ok().starts_with("removed node"), "{}", out.stdout);
    assert_eq!(role_of(&cluster, 2), None);
    cluster.nodes[1].kill();
    writer.wait_progress(20, "writes after a removal");

    let out = atoll(&[
        "transfer",
        "--cluster",
        &cluster.running().join(","),
        "--id",
        "4",
    ]);
    assert!(out.ok().contains("to node 4"), "{}", out.stdout);
    writer.wait_progress(20, "writes after a transfer");
    assert_eq!(cluster.leader(), cluster.index_of(4));

    // The dqlite shell's `.remove ADDRESS` (LEADER, CLIENT, CLUSTER, REMOVE) on voter 3.
    let third = cluster.nodes[cluster.index_of(3)].address().to_owned();
    let mut command = Command::new("dqlite");
    command.args([
        "-s",
        &cluster.running().join(","),
        "app",
        &format!(".remove {third}"),
    ]);
    run_command(command, None).ok();
    assert_eq!(role_of(&cluster, 3), None);
    writer.wait_progress(20, "writes after the dqlite shell's remove");

    let (acknowledged, errors) = writer.finish();
    assert!(errors.len() <= 5, "{errors:?}");
    let roles = cluster.roles();
    assert_eq!(
        roles,
        [(1, Role::Voter), (4, Role::Voter), (5, Role::Standby)],
        "{roles:?}"
    );
    let leader = cluster.leader();
    assert_all_present(&cluster, leader, &acknowledged);
}

/// Automatic roles: five nodes converge to 3 voters and 2 standbys (3 wanted, 2 available).
/// A killed voter is replaced by a standby within the unreachable threshold (1 s here) and a
/// little more for the promotion, and demoted to spare.
#[test]
fn test_automatic_roles_converge_and_replace_an_unreachable_voter() {
    let cluster_settings = ["--unreachable-ms", "1000"];
    let mut cluster = AtollCluster::start(5, &cluster_settings, 3);
    cluster.wait_roles(3, Some(2));
    let leader = cluster.leader();
    let leader_id = cluster.nodes[leader].id();
    let (victim_id, _) = cluster
        .roles()
        .into_iter()
        .find(|(id, role)| *role == Role::Voter && *id != leader_id)
        .expect("a follower voter");
    let victim = cluster.index_of(victim_id);
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    wait_for("the dead voter replaced", READY_TIMEOUT, || {
        let roles = cluster.roles();
        let voters = roles.iter().filter(|(_, r)| *r == Role::Voter).count();
        let demoted = roles
            .iter()
            .any(|(id, r)| *id == victim_id && *r == Role::Spare);
        (voters == 3 && demoted).then_some(())
    });
    let replaced_after = killed_at.elapsed();
    eprintln!("voter replaced {replaced_after:?} after the kill (threshold 1 s)");
    assert!(
        replaced_after < Duration::from_secs(4),
        "{replaced_after:?}"
    );
    assert!(
        replaced_after >= Duration::from_millis(900),
        "{replaced_after:?}"
    );
    let log = cluster.nodes[leader].log();
    assert!(
        log.contains(&format!("to replace voter {victim_id}")),
        "{log}"
    );
    // The cluster still takes writes with the new voter set.
    let mut client = cluster.client();
    client.open("app").unwrap();
    client.exec_sql("CREATE TABLE t (x)", &[]).unwrap();
}

/// SIGTERM on the leader while a client writes: the leader hands leadership over before it
/// exits (exit status 0), and the client, which retries "not leader" by itself, sees no error.
#[test]
fn test_sigterm_on_the_leader_hands_leadership_over_first() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let writer = start_writer(cluster.running());
    writer.wait_progress(50, "writes before the stop");
    let old = cluster.leader();
    let status = cluster.nodes[old].stop();
    assert!(status.success(), "{status}");
    writer.wait_progress(50, "writes after the stop");
    let (acknowledged, errors) = writer.finish();
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    let log = cluster.nodes[old].log();
    assert!(log.contains("handing leadership over to node"), "{log}");
    assert!(log.contains("leadership handed over"), "{log}");
    let new = cluster.leader();
    assert_ne!(new, old);
    assert_all_present(&cluster, new, &acknowledged);
}

/// A follower answers queries itself only on a connection opened with atoll's follower-reads
/// flag, and such a read is linearizable: it sees a write acknowledged just before by the
/// leader. Without the flag, a follower answers "not leader" (as dqlite does); writes on a
/// follower-reads connection still need the leader.
#[test]
fn test_follower_reads_on_request_are_linearizable() {
    let cluster = AtollCluster::start(3, &[], 3);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let config = ClientConfig::default();
    let mut writer = Connection::connect(cluster.nodes[leader].address(), &config).unwrap();
    writer.open("app").unwrap();
    writer.exec_sql("CREATE TABLE t (x INTEGER)", &[]).unwrap();
    let mut reader = Connection::connect(cluster.nodes[follower].address(), &config).unwrap();
    reader.open_with_flags("app", OPEN_FOLLOWER_READS).unwrap();
    for x in 1..=20 {
        writer
            .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(x)])
            .unwrap();
        let rows = reader.query_sql("SELECT max(x) FROM t", &[]).unwrap();
        assert_eq!(rows.rows, [[Value::Integer(x)]]);
    }
    match reader.exec_sql("INSERT INTO t VALUES (0)", &[]) {
        Err(e) => assert!(e.is_not_leader(), "{e}"),
        Ok(_) => panic!("a follower accepted a write"),
    }
    let mut plain = Connection::connect(cluster.nodes[follower].address(), &config).unwrap();
    match plain.open("app") {
        Err(ClientError::Failure { code: 10250, .. }) => {}
        other => panic!("expected not leader, got {other:?}"),
    }
}

/// The Python DB-API client given only a follower's address finds the leader (LEADER names
/// it) and runs its whole check there.
#[test]
fn test_python_client_pointed_at_a_follower_reaches_the_leader() {
    let cluster = AtollCluster::start(3, &[], 3);
    let leader = cluster.leader();
    let follower = cluster.nodes[(leader + 1) % 3].address();
    let out = crate::t11_python::run_script("dbapi_check.py", follower);
    assert!(out.ends_with("all dbapi checks passed\n"), "{out}");
}

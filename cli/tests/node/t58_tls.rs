//! TLS (issue 15): a cluster from `atoll init --tls` + `atoll join --tls-cert/--tls-key`,
//! written through the `dqlite` shell with `-c/-k` and atoll's own client and shell; failover
//! and a catch-up by snapshot over TLS; plaintext, untrusted certificates and handshake garbage
//! refused while the node keeps serving; certificate rotation on SIGHUP under a write load.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_net::client::{Client, ClientConfig, Connection};
use atoll_net::protocol::Value;
use atoll_net::tls::{generate_cluster_certificate, TlsContext};

use crate::support::{
    atoll, free_address, require, run_command, scrape_metrics, wait_for, AtollNode, Node, Output,
    READY_TIMEOUT,
};

/// The cluster files of a TLS node's data directory.
fn cert_files(node: &AtollNode) -> (PathBuf, PathBuf) {
    let dir = node.data_dir();
    (dir.join("cluster.crt"), dir.join("cluster.key"))
}

fn context(node: &AtollNode) -> TlsContext {
    let (cert, key) = cert_files(node);
    TlsContext::load(&cert, &key, None).expect("the node's TLS files")
}

fn tls_config(tls: &TlsContext) -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        leader_timeout: Duration::from_secs(10),
        tls: Some(tls.clone()),
        ..ClientConfig::default()
    }
}

fn dqlite_tls(servers: &str, cert: &Path, key: &Path, sql: &str) -> Output {
    require("dqlite");
    let mut command = Command::new("timeout");
    command
        .args(["20", "dqlite", "-s", servers, "-c"])
        .arg(cert)
        .arg("-k")
        .arg(key)
        .args(["app", sql]);
    run_command(command, None)
}

/// Waits until the node at `address` answers LEADER over TLS with itself.
fn wait_leading(address: &str, tls: &TlsContext) {
    wait_for(&format!("{address} to lead (TLS)"), READY_TIMEOUT, || {
        let mut connection = Connection::connect(address, &tls_config(tls)).ok()?;
        match connection.leader() {
            Ok(Some((_, leader))) if leader == address => Some(()),
            _ => None,
        }
    });
}

/// Waits until the cluster at `addresses` has `voters` voters, over TLS.
fn wait_voters(addresses: &[String], tls: &TlsContext, voters: usize) {
    wait_for(&format!("{voters} voters (TLS)"), READY_TIMEOUT, || {
        let mut client = Client::connect(addresses, tls_config(tls)).ok()?;
        let nodes = client.cluster().ok()?;
        let count = nodes
            .iter()
            .filter(|n| n.role == Some(atoll_net::protocol::Role::Voter))
            .count();
        (count == voters).then_some(())
    });
}

/// A node's applied index over TLS (DESCRIBE format 1).
fn applied(address: &str, tls: &TlsContext) -> Option<u64> {
    let mut connection = Connection::connect_atoll(address, &tls_config(tls)).ok()??;
    connection.describe_v1().ok().map(|m| m.applied_index)
}

/// `atoll init --tls` + two `atoll join --tls-cert/--tls-key`, started; returns once there are
/// three voters.
fn tls_cluster(settings: &[&str]) -> (Vec<AtollNode>, TlsContext) {
    let mut init_args = vec!["--tls"];
    init_args.extend_from_slice(settings);
    let mut first = AtollNode::init(&free_address(), &init_args);
    let tls = context(&first);
    first.spawn();
    wait_leading(first.address(), &tls);
    let (cert, key) = cert_files(&first);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut nodes = vec![first];
    for _ in 0..2 {
        let mut join_args = vec!["--tls-cert", cert, "--tls-key", key];
        join_args.extend_from_slice(settings);
        let mut node = AtollNode::prepare_join(&free_address(), nodes[0].address(), &join_args);
        node.spawn();
        nodes.push(node);
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.address().to_owned()).collect();
    wait_voters(&addresses, &tls, 3);
    (nodes, tls)
}

fn addresses(nodes: &[AtollNode]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.address().to_owned())
        .collect()
}

/// The whole path under TLS: a cluster from the CLI, the dqlite shell with `-c/-k` writes and
/// reads, `atoll shell` and `atoll cluster` with `--tls-cert/--tls-key`, dqlite-dbapi with a
/// TLS `dial_func`, the leader stopped
/// (failover: the shell writes through the new leader), and a node stopped while the log is
/// compacted past it catches up by snapshot over TLS.
#[test]
fn test_tls_cluster_dqlite_shell_failover_and_snapshot() {
    let (mut nodes, tls) = tls_cluster(&["--snapshot-entries", "300"]);
    let (cert, key) = cert_files(&nodes[0]);
    let all = addresses(&nodes).join(",");
    dqlite_tls(&all, &cert, &key, "CREATE TABLE t (n INTEGER, s TEXT)").ok();
    dqlite_tls(&all, &cert, &key, "INSERT INTO t VALUES (1, 'over TLS')").ok();
    let out = dqlite_tls(&all, &cert, &key, "SELECT n, s FROM t");
    assert_eq!(out.ok(), "1|over TLS\n");

    let tls_flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let mut args = vec!["shell", "--cluster", &all];
    args.extend_from_slice(&tls_flags);
    args.extend(["app", "SELECT s FROM t"]);
    assert!(atoll(&args).ok().contains("over TLS"));
    // dqlite-dbapi through its dial_func hook and Python's ssl module.
    let mut python = Command::new(crate::t11_python::python());
    python
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/tls_check.py"))
        .arg(&cert)
        .arg(&key)
        .arg(nodes[0].address());
    let out = run_command(python, None);
    assert!(out.ok().ends_with("tls dbapi check passed\n"), "{out:?}");
    let mut args = vec!["cluster", "--cluster", &all];
    args.extend_from_slice(&tls_flags);
    let listing = atoll(&args);
    assert_eq!(
        listing.ok().matches("voter").count(),
        3,
        "{}",
        listing.stdout
    );
    // Without the certificate, atoll's shell cannot talk to the cluster.
    let refused = atoll(&[
        "shell",
        "--cluster",
        &all,
        "--timeout",
        "2",
        "app",
        "SELECT 1",
    ]);
    assert!(refused.failed().contains("--tls-cert"), "{refused:?}");

    // Failover: stop the leader; the shell's write lands on the new one.
    let leader = {
        let mut client = Client::connect(&addresses(&nodes), tls_config(&tls)).unwrap();
        let (_, address) = client.leader().unwrap().expect("a leader");
        nodes.iter().position(|n| n.address() == address).unwrap()
    };
    nodes[leader].stop();
    let left = addresses(&nodes).join(",");
    wait_for("a new leader (TLS)", READY_TIMEOUT, || {
        let mut client = Client::connect(&addresses(&nodes), tls_config(&tls)).ok()?;
        client
            .leader()
            .ok()?
            .filter(|(_, a)| left.contains(a.as_str()))
    });
    dqlite_tls(
        &left,
        &cert,
        &key,
        "INSERT INTO t VALUES (2, 'after failover')",
    )
    .ok();

    // The old leader misses >1,300 entries (a snapshot every 300, 1,024 kept behind) and
    // comes back: it can only catch up by snapshot, streamed over TLS.
    let mut client = Client::connect(&addresses(&nodes), tls_config(&tls)).unwrap();
    client.open("app").unwrap();
    for n in 3..1700 {
        client
            .exec_sql("INSERT INTO t VALUES (?, 'bulk')", &[Value::Integer(n)])
            .unwrap();
    }
    let (_, new_leader) = client.leader().unwrap().expect("a leader");
    let target = applied(&new_leader, &tls).expect("the leader's applied index");
    nodes[leader].spawn();
    let back = nodes[leader].address().to_owned();
    wait_for(
        "the restarted node to catch up (TLS)",
        READY_TIMEOUT,
        || applied(&back, &tls).filter(|a| *a >= target),
    );
    assert!(
        nodes[leader].log().contains("installed snapshot"),
        "{}",
        nodes[leader].log()
    );
    // Its own copy (DUMP reads the node's file) has every row.
    let mut connection = Connection::connect(&back, &tls_config(&tls)).unwrap();
    let files = connection.dump("app").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app"), &files[0].data).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("app")).unwrap();
    let count: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1699);
}

/// What a TLS node refuses, each while a good client keeps being served: plaintext (a dqlite
/// client without `-c/-k`, a plaintext peer hello), a certificate the cluster does not trust
/// (as a client, and `atoll join` with another cluster's files), garbage after a TLS record
/// header; and a client that does not trust the node's certificate refuses the node.
#[test]
fn test_tls_refuses_plaintext_untrusted_and_garbage() {
    let mut node = AtollNode::init(&free_address(), &["--tls"]);
    let tls = context(&node);
    node.spawn();
    wait_leading(node.address(), &tls);
    let address = node.address().to_owned();
    let mut good = Client::connect(&[&address], tls_config(&tls)).unwrap();
    good.open("app").unwrap();
    good.exec_sql("CREATE TABLE t (n INTEGER)", &[]).unwrap();
    let mut writes = 0;
    let mut write = |good: &mut Client| {
        writes += 1;
        good.exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(writes)])
            .unwrap();
    };

    // Plaintext client (atoll's client without TLS): refused.
    let plain = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let mut connection = Connection::connect(&address, &plain).unwrap();
    assert!(connection.leader().is_err());
    write(&mut good);

    // Another cluster's certificate: the node refuses it (as a client or a peer: the TLS
    // handshake does not know which), and the client refuses the node.
    let (other_cert, other_key) = generate_cluster_certificate().unwrap();
    let other = TlsContext::from_pem(other_cert.as_bytes(), other_key.as_bytes(), None).unwrap();
    let refused = Connection::connect(&address, &tls_config(&other)).and_then(|mut c| c.leader());
    assert!(refused.is_err(), "{refused:?}");
    write(&mut good);
    // Trusting the node's certificate but presenting another: refused by the node.
    let own_cert = std::fs::read(cert_files(&node).0).unwrap();
    let mixed =
        TlsContext::from_pem(other_cert.as_bytes(), other_key.as_bytes(), Some(&own_cert)).unwrap();
    let refused = Connection::connect(&address, &tls_config(&mixed)).and_then(|mut c| c.leader());
    assert!(refused.is_err(), "{refused:?}");
    write(&mut good);

    // Presenting the node's own certificate but trusting another root: the client refuses
    // the node.
    let own_key = std::fs::read(cert_files(&node).1).unwrap();
    let distrusting =
        TlsContext::from_pem(&own_cert, &own_key, Some(other_cert.as_bytes())).unwrap();
    let refused =
        Connection::connect(&address, &tls_config(&distrusting)).and_then(|mut c| c.leader());
    assert!(refused.is_err(), "{refused:?}");
    write(&mut good);

    // `atoll join` with another cluster's files is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), &other_cert).unwrap();
    std::fs::write(dir.path().join("c.key"), &other_key).unwrap();
    let token = atoll(&["token", "--data-dir", node.data_dir().to_str().unwrap()]);
    let join_dir = dir.path().join("joiner");
    let join = atoll(&[
        "join",
        "--data-dir",
        join_dir.to_str().unwrap(),
        "--address",
        &free_address(),
        "--cluster",
        &address,
        "--join-token",
        token.ok().trim(),
        "--tls-cert",
        dir.path().join("c.crt").to_str().unwrap(),
        "--tls-key",
        dir.path().join("c.key").to_str().unwrap(),
    ]);
    join.failed();
    assert!(!join_dir.join("atoll.conf").exists());

    // The dqlite shell without -c/-k, and a plaintext peer hello: refused (the shell retries
    // until its timeout).
    require("dqlite");
    let mut command = Command::new("timeout");
    command.args(["3", "dqlite", "-s", &address, "app", "SELECT 1"]);
    let out = run_command(command, None);
    assert!(!out.status.success());
    let mut peer = TcpStream::connect(&address).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.write_all(&atoll_net::peer::PEER_MAGIC_V1.to_le_bytes())
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(peer.read(&mut byte), Ok(0) | Err(_)));
    write(&mut good);

    // Garbage: a TLS record header then junk, and a huge record length.
    for junk in [
        &[
            0x16, 0x03, 0x01, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ][..],
        &[0x16, 0x03, 0x03, 0xff, 0xff, 0, 0, 0][..],
        &[0x16; 64][..],
    ] {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(junk).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        write(&mut good);
    }
    let log = node.log();
    assert!(log.contains("this node serves TLS only"), "{log}");
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(node.is_running());
    let rows = good.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(writes));
}

fn sighup(node: &AtollNode) {
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Rotation without downtime on a three-node cluster, while a client writes without pause:
/// 1. every node trusts the old and the new certificate (cluster-ca.crt), SIGHUP;
/// 2. every node serves the new certificate, SIGHUP; a client with the new one connects;
/// 3. every node trusts only the new one, SIGHUP: a new connection with the old certificate is
///    refused, the writer's open connection (old certificate) drains on.
///
/// Not one write fails.
#[test]
fn test_tls_rotation_under_load() {
    let (nodes, old) = tls_cluster(&[]);
    let old_cert_pem = std::fs::read(cert_files(&nodes[0]).0).unwrap();
    let (new_cert_pem, new_key_pem) = generate_cluster_certificate().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut client = Client::connect(&addresses(&nodes), tls_config(&old)).unwrap();
    client.open("app").unwrap();
    client.exec_sql("CREATE TABLE t (n INTEGER)", &[]).unwrap();
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                client
                    .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(n)])
                    .unwrap_or_else(|e| panic!("write {n} failed during rotation: {e}"));
                written.store(n as u64, Ordering::SeqCst);
            }
            client
        })
    };
    let progress = |what: &str| {
        let before = written.load(Ordering::SeqCst);
        wait_for(what, READY_TIMEOUT, || {
            (written.load(Ordering::SeqCst) > before + 20).then_some(())
        });
    };
    progress("writes before the rotation");

    let mut bundle = old_cert_pem.clone();
    bundle.extend_from_slice(new_cert_pem.as_bytes());
    for node in &nodes {
        std::fs::write(node.data_dir().join("cluster-ca.crt"), &bundle).unwrap();
        sighup(node);
    }
    progress("writes after step 1");
    for node in &nodes {
        let dir = node.data_dir();
        std::fs::write(dir.join("cluster.key"), &new_key_pem).unwrap();
        std::fs::write(dir.join("cluster.crt"), &new_cert_pem).unwrap();
        sighup(node);
    }
    progress("writes after step 2");
    let new = TlsContext::from_pem(new_cert_pem.as_bytes(), new_key_pem.as_bytes(), None).unwrap();
    let mut fresh = Client::connect(&addresses(&nodes), tls_config(&new)).unwrap();
    fresh.open("app").unwrap();
    fresh.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    for node in &nodes {
        std::fs::write(
            node.data_dir().join("cluster-ca.crt"),
            new_cert_pem.as_bytes(),
        )
        .unwrap();
        sighup(node);
    }
    wait_for("the old certificate refused", READY_TIMEOUT, || {
        let refused =
            Connection::connect(nodes[0].address(), &tls_config(&old)).and_then(|mut c| c.leader());
        refused.is_err().then_some(())
    });
    progress("writes after step 3 (the open connection drains)");
    stop.store(true, Ordering::SeqCst);
    let _client = writer.join().expect("no write failed");
    let rows = fresh.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(
        rows.rows[0][0],
        Value::Integer(written.load(Ordering::SeqCst) as i64)
    );
    for node in &nodes {
        assert!(node.log().contains("TLS files reloaded"), "{}", node.log());
    }
}

/// The day-2 commands on a TLS cluster, with `--tls-cert/--tls-key` as every client command
/// takes them: `atoll status` reaches every node, `atoll verify` gets every replica's checksum,
/// `atoll backup --from-follower` copies the rows and `atoll restore` puts them in another
/// database; without the flags they are refused. `/metrics` stays plain HTTP on its own
/// address and answers on a TLS node.
#[test]
fn test_tls_operations_commands_and_metrics() {
    let metrics = free_address();
    let (mut nodes, tls) = tls_cluster(&[]);
    nodes[0].stop();
    nodes[0].start_args = vec!["--metrics-address".into(), metrics.clone()];
    nodes[0].spawn();
    let all = addresses(&nodes).join(",");
    wait_voters(&addresses(&nodes), &tls, 3);
    let mut client = Client::connect(&addresses(&nodes), tls_config(&tls)).unwrap();
    client.open("app").unwrap();
    client.exec_sql("CREATE TABLE t (n INTEGER)", &[]).unwrap();
    for n in 0..50 {
        client
            .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(n)])
            .unwrap();
    }
    let (cert, key) = cert_files(&nodes[0]);
    let with_tls = |command: &[&str]| {
        let mut args = vec![command[0], "--cluster", &all];
        args.extend(["--tls-cert", cert.to_str().unwrap()]);
        args.extend(["--tls-key", key.to_str().unwrap()]);
        args.extend_from_slice(&command[1..]);
        atoll(&args)
    };

    let status = with_tls(&["status", "--format", "csv"]);
    assert_eq!(status.ok().lines().count(), 4, "{}", status.stdout);
    let verify = with_tls(&["verify", "--format", "csv", "app"]);
    let rows: Vec<&str> = verify.ok().lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", verify.stdout);
    assert!(rows.iter().all(|r| r.ends_with(",ok")), "{}", verify.stdout);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let file_arg = file.to_str().unwrap();
    let backup = with_tls(&["backup", "app", "-o", file_arg, "--from-follower"]);
    assert!(backup.ok().contains("from follower"), "{}", backup.stdout);
    with_tls(&["restore", "copy", file_arg]).ok();
    let count = with_tls(&[
        "shell",
        "--format",
        "csv",
        "copy",
        "SELECT count(*), sum(n) FROM t",
    ]);
    assert!(count.ok().contains("50,1225"), "{}", count.stdout);

    for command in ["status", "verify"] {
        let refused = atoll(&[command, "--cluster", &all, "--timeout", "2"]);
        assert!(refused.failed().contains("--tls-cert"), "{refused:?}");
    }

    let body = scrape_metrics(&metrics);
    assert!(body.contains("atoll_raft_term"), "{body}");
}

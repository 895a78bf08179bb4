//! Day-2 operations against real nodes: `atoll backup` (from the leader and from a follower)
//! and `atoll recover` after the loss of a majority.

use std::process::Command;

use crate::support::{
    atoll, require, run_command, shell, wait_for, AtollCluster, AtollNode, Node, READY_TIMEOUT,
};

/// `sqlite3 FILE .dump`: the whole content as SQL text.
fn sqlite_dump(path: &std::path::Path) -> String {
    let mut command = Command::new("sqlite3");
    command.arg(path).arg(".dump");
    run_command(command, None).ok().to_owned()
}

/// A backup from the leader and one from a follower (`--from-follower`) of a database of a few
/// MiB (many DUMP pieces) are valid SQLite files with the same content, which is the content
/// written; a missing database and a missing follower are clear errors that write nothing.
#[test]
fn test_backup_from_leader_and_follower_hold_the_written_content() {
    require("sqlite3");
    let cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(
        &addresses,
        "app",
        &["CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB, t TEXT)"],
    )
    .ok();
    for round in 0..8 {
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
             INSERT INTO kv (v, t) SELECT randomblob(2000), 'r{round}-' || i FROM n"
        );
        shell(&addresses, "app", &[&sql]).ok();
    }
    shell(&addresses, "app", &["DELETE FROM kv WHERE k % 7 = 0"]).ok();
    cluster.wait_in_sync();

    let dir = tempfile::tempdir().unwrap();
    let from_leader = dir.path().join("leader.db");
    let from_follower = dir.path().join("follower.db");
    let out = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_leader.to_str().unwrap(),
    ]);
    assert!(out.ok().contains("from the leader"), "{}", out.stdout);
    let out = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_follower.to_str().unwrap(),
        "--from-follower",
    ]);
    assert!(out.ok().contains("from follower"), "{}", out.stdout);
    let leader_id = cluster.nodes[cluster.leader()].id();
    assert!(
        !out.stdout.contains(&format!("follower {leader_id} ")),
        "{}",
        out.stdout
    );
    assert!(
        std::fs::metadata(&from_leader).unwrap().len() > 3 << 20,
        "a backup of several MiB"
    );

    let text = sqlite_dump(&from_leader);
    assert_eq!(text, sqlite_dump(&from_follower));
    let connection = rusqlite::Connection::open(&from_leader).unwrap();
    let (count, check): (i64, String) = connection
        .query_row(
            "SELECT count(*), (SELECT quick_check FROM pragma_quick_check) FROM kv",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(count, 1600 - 1600 / 7);
    assert_eq!(check, "ok");

    let missing = dir.path().join("missing.db");
    let err = atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "nosuchdb",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert!(err.failed().contains("no"), "{}", err.stderr);
    assert!(!missing.exists());
}

/// The first `last log index N (term T)` line of `atoll recover --inspect`: (N, T).
fn inspected(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("last log index "))
        .expect("a last log index line");
    let mut words = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let index = words.next().unwrap().parse().unwrap();
    let term = words.next().unwrap().parse().unwrap();
    (index, term)
}

/// Three voters, two killed for good (the leader among them): the survivor cannot write. `atoll
/// recover` refuses while it runs and refuses ids it does not know, changing nothing; on the
/// stopped survivor it makes it the only voter: started again it elects itself, keeps every
/// acknowledged write and serves new ones; two fresh nodes `atoll join` it and become voters
/// with the same data.
#[test]
fn test_recover_after_losing_the_majority_serves_writes_and_takes_new_members() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(&addresses, "app", &["CREATE TABLE t (n INTEGER)"]).ok();
    for n in 0..20 {
        shell(&addresses, "app", &[&format!("INSERT INTO t VALUES ({n})")]).ok();
    }
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.nodes[i].kill();
    }
    let mut node = cluster.nodes.swap_remove(survivor);
    drop(cluster);
    let data = node.data_dir();
    let data = data.to_str().unwrap().to_owned();
    let id = node.id().to_string();

    let refused = atoll(&["recover", "--data-dir", &data, "--voters", &id]);
    assert!(refused.failed().contains("in use"), "{}", refused.stderr);
    // No quorum: a write cannot commit.
    let stalled = atoll(&[
        "shell",
        "--cluster",
        node.address(),
        "--timeout",
        "1",
        "app",
        "INSERT INTO t VALUES (100)",
    ]);
    assert!(!stalled.status.success(), "{stalled:?}");
    node.kill();

    let before = atoll(&["recover", "--data-dir", &data, "--inspect"]);
    let (index, term) = inspected(before.ok());
    assert!(index > 20, "{}", before.stdout);
    let unknown = atoll(&[
        "recover",
        "--data-dir",
        &data,
        "--voters",
        &format!("{id},999"),
    ]);
    assert!(unknown.failed().contains("999"), "{}", unknown.stderr);
    let again = atoll(&["recover", "--data-dir", &data, "--inspect"]);
    assert_eq!(
        again.ok(),
        before.stdout,
        "a refused recover changes nothing"
    );

    let out = atoll(&["recover", "--data-dir", &data, "--voters", &id]);
    assert!(out.ok().contains("1 voter(s)"), "{}", out.stdout);
    let after = atoll(&["recover", "--data-dir", &data, "--inspect"]);
    let (new_index, new_term) = inspected(after.ok());
    assert!(
        new_index == index + 1 && new_term > term,
        "{}",
        after.stdout
    );

    node.restart();
    let cluster_address = node.address().to_owned();
    shell(&cluster_address, "app", &["INSERT INTO t VALUES (20)"]).ok();
    let out = shell(&cluster_address, "app", &["SELECT count(*), sum(n) FROM t"]);
    assert!(
        out.ok().contains("21") && out.stdout.contains("210"),
        "{}",
        out.stdout
    );

    let first = AtollNode::join(&cluster_address, &[]);
    let second = AtollNode::join(&cluster_address, &[]);
    let cluster = AtollCluster {
        nodes: vec![node, first, second],
    };
    cluster.wait_roles(3, None);
    shell(&cluster.addresses(), "app", &["INSERT INTO t VALUES (21)"]).ok();
    cluster.wait_in_sync();
    let image = cluster.dump(0, "app");
    for i in 1..3 {
        assert!(
            cluster.dump(i, "app") == image,
            "node {i} holds the same database"
        );
    }
    wait_for("a leader among the new voters", READY_TIMEOUT, || {
        let out = shell(&cluster.addresses(), "app", &["SELECT count(*) FROM t"]);
        out.stdout.contains("22").then_some(())
    });
}

/// `atoll verify --format csv` parsed: (node id, db, checksum, verdict) per row.
fn verify_rows(out: &str) -> Vec<(u64, String, String, String)> {
    out.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 7, "{line}");
            (
                fields[0].parse().unwrap(),
                fields[2].to_owned(),
                fields[5].to_owned(),
                fields[6].to_owned(),
            )
        })
        .collect()
}

/// Verify on a healthy cluster, also while a client keeps writing: every replica of every
/// database has the same checksum at the verify point. A byte flipped in a value in a
/// follower's database file (node stopped) makes verify fail and name that node and database,
/// the others ok; `--repair` has the node rebuild itself in the same process.
#[test]
fn test_verify_agrees_under_writes_and_names_a_damaged_replica() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(&addresses, "app", &["CREATE TABLE t (n INTEGER, b BLOB)"]).ok();
    shell(&addresses, "other", &["CREATE TABLE u (x)"]).ok();
    for n in 0..30 {
        let sql = format!("INSERT INTO t VALUES ({n}, randomblob(3000))");
        shell(&addresses, "app", &[&sql]).ok();
    }
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--cluster", &addresses, "--format", "csv"];
        args.extend_from_slice(extra);
        atoll(&args)
    };

    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let addresses = addresses.clone();
        std::thread::spawn(move || {
            let mut n = 1000;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let sql = format!("INSERT INTO t VALUES ({n}, randomblob(500))");
                shell(&addresses, "app", &[&sql]).ok();
                n += 1;
            }
            n - 1000
        })
    };
    for _ in 0..3 {
        let out = verify(&[]);
        let rows = verify_rows(out.ok());
        assert_eq!(rows.len(), 6, "3 nodes x 2 databases:\n{}", out.stdout);
        for db in ["app", "other"] {
            let sums: Vec<&String> = rows.iter().filter(|r| r.1 == db).map(|r| &r.2).collect();
            assert!(sums.iter().all(|s| *s == sums[0]), "{}", out.stdout);
        }
        assert!(rows.iter().all(|r| r.3 == "ok"), "{}", out.stdout);
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0, "writes went on during verify");

    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id();
    cluster.nodes[victim].stop();
    let file = cluster.nodes[victim].data_dir().join("db").join("app");
    let mut bytes = std::fs::read(&file).unwrap();
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(bytes.len() >= 4 * page, "the table spans pages");
    // Inside a value at the end of leaf page 3: nothing SQLite checks (a damaged b-tree page
    // is found by quick_check at start and repaired at once, t61), so only verify finds it.
    let at = 3 * page - 100;
    bytes[at] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    cluster.nodes[victim].spawn();
    wait_for("the damaged node to serve", READY_TIMEOUT, || {
        cluster.nodes[victim].metadata().map(|_| ())
    });

    let out = verify(&["app"]);
    assert!(!out.status.success(), "verify must fail:\n{}", out.stdout);
    assert!(out.stderr.contains("differ"), "{}", out.stderr);
    let rows = verify_rows(&out.stdout);
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    for (node, db, _, verdict) in &rows {
        assert_eq!(db, "app");
        let expected = if *node == victim_id { "MISMATCH" } else { "ok" };
        assert_eq!(verdict, expected, "{}", out.stdout);
    }
    // The other database is intact everywhere.
    verify_rows(verify(&["other"]).ok());

    // --repair: the outvoted node stops, moves its data aside and is rebuilt from the leader.
    let out = verify(&["app", "--repair"]);
    assert!(out.stderr.contains("repairs itself"), "{}", out.stderr);
    assert!(!out.status.success());
    wait_for(
        "verify to find every replica equal again",
        READY_TIMEOUT,
        || {
            let out = verify(&[]);
            let rows = verify_rows(&out.stdout);
            (out.status.success() && rows.len() == 6).then_some(())
        },
    );
    wait_for(
        "the repaired node to be a voter again",
        READY_TIMEOUT,
        || {
            let voter = cluster
                .roles()
                .iter()
                .any(|(id, role)| *id == victim_id && *role == atoll_net::protocol::Role::Voter);
            voter.then_some(())
        },
    );
    let quarantine = cluster.nodes[victim].data_dir().join("quarantine");
    let kept: Vec<_> = std::fs::read_dir(&quarantine).unwrap().collect();
    assert_eq!(kept.len(), 1);
    let kept = std::fs::read(kept[0].as_ref().unwrap().path().join("db").join("app")).unwrap();
    assert_eq!(kept[at], bytes[at], "the damaged file is kept as it was");
    assert!(
        cluster.nodes[victim]
            .wait_exit(std::time::Duration::from_millis(1))
            .is_none(),
        "the same process serves again"
    );
}

/// `atoll status` shows each node: one leader, the same term, and once in sync the same applied
/// index with no lag, the database count, a disk and a memory figure and the version; JSON
/// carries the numbers. A killed node is shown unreachable and the command fails.
#[test]
fn test_status_shows_every_node_and_a_dead_one() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(
        &addresses,
        "app",
        &["CREATE TABLE t (n); INSERT INTO t VALUES (1)"],
    )
    .ok();
    let applied = cluster.wait_in_sync();

    let out = atoll(&["status", "--cluster", &addresses, "--format", "csv"]);
    let lines: Vec<Vec<String>> = out
        .ok()
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(
        lines[0].join(","),
        "id,address,role,term,applied,lag,contact,disk_free,dbs,rss,version"
    );
    let rows = &lines[1..];
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert_eq!(rows.iter().filter(|r| r[2] == "leader").count(), 1);
    assert!(rows.iter().all(|r| r[3] == rows[0][3]), "one term");
    for row in rows {
        assert!(row[4].parse::<u64>().unwrap() >= applied, "{}", out.stdout);
        assert_eq!(row[5], "0", "no lag once in sync: {}", out.stdout);
        assert_eq!(row[6] == "-", row[2] == "leader", "{}", out.stdout);
        assert!(
            row[7].ends_with("iB") || row[7].ends_with(" B"),
            "{}",
            out.stdout
        );
        assert_eq!(row[8], "1");
        assert!(row[9].ends_with("MiB"), "{}", out.stdout);
        assert_eq!(row[10], env!("CARGO_PKG_VERSION"));
    }
    let json = atoll(&["status", "--cluster", &addresses, "--format", "json"]);
    assert_eq!(json.ok().matches("\"lag\":0").count(), 3, "{}", json.stdout);
    assert_eq!(json.stdout.matches("\"reachable\":true").count(), 3);

    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id();
    cluster.nodes[victim].kill();
    let out = atoll(&["status", "--cluster", &addresses, "--format", "csv"]);
    assert!(
        out.failed().contains(&victim_id.to_string()),
        "{}",
        out.stderr
    );
    let dead: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{victim_id},")))
        .collect();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("unreachable"), "{}", out.stdout);
}

/// An HTTP/1.1 request to `address`: (status code, body).
fn http(address: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("the whole answer, then close");
    let text = String::from_utf8(bytes).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "{head}");
    (status, body.to_owned())
}

/// `GET /metrics` of `address`, checked by `promtool check metrics`.
fn scrape(address: &str) -> String {
    let (status, body) = http(address, "GET /metrics HTTP/1.1\r\nHost: atoll\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let out = run_command(promtool, Some(&body));
    assert!(
        out.status.success() && out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
        "promtool: {out:?}\n{body}"
    );
    body
}

/// The value of the sample `name` (with its labels, if any) in a scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Three nodes serving `/metrics`: each scrape passes `promtool check metrics`; a write
/// workload moves the leader's commit index, write latency, group commit and log sync
/// histograms; the leader reports its two peers' lag; killing the leader makes a survivor count
/// an election and lead, and report the dead peer's lag growing. Bad requests get 404, 405 and
/// 431 and the node goes on serving.
#[test]
fn test_metrics_pass_promtool_and_move_under_writes_and_failover() {
    require("promtool");
    let metrics: Vec<String> = (0..3).map(|_| crate::support::free_address()).collect();
    let mut first = AtollNode::init(&crate::support::free_address(), &[]);
    first.start_args = vec!["--metrics-address".into(), metrics[0].clone()];
    first.restart();
    let mut nodes = vec![first];
    for address in &metrics[1..] {
        let mut node =
            AtollNode::prepare_join(&crate::support::free_address(), nodes[0].address(), &[]);
        node.start_args = vec!["--metrics-address".into(), address.clone()];
        node.spawn();
        nodes.push(node);
    }
    let mut cluster = AtollCluster { nodes };
    cluster.wait_roles(3, None);
    let addresses = cluster.addresses();
    let leader = cluster.leader();
    let before = scrape(&metrics[leader]);
    assert_eq!(sample(&before, "atoll_raft_is_leader"), 1.0);
    assert_eq!(sample(&before, "atoll_client_connections"), 0.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 1e6);

    shell(&addresses, "app", &["CREATE TABLE t (n)"]).ok();
    for n in 0..20 {
        shell(&addresses, "app", &[&format!("INSERT INTO t VALUES ({n})")]).ok();
    }
    let after = scrape(&metrics[leader]);
    assert!(
        sample(&after, "atoll_raft_commit_index")
            >= sample(&before, "atoll_raft_commit_index") + 21.0
    );
    for histogram in [
        "atoll_write_latency_seconds_count",
        "atoll_group_commit_writes_count",
        "atoll_log_sync_seconds_count",
    ] {
        assert!(
            sample(&after, histogram) >= sample(&before, histogram) + 21.0,
            "{histogram}:\n{after}"
        );
    }
    assert!(sample(&after, "atoll_write_latency_seconds_sum") > 0.0);
    assert_eq!(sample(&after, "atoll_databases"), 1.0);
    let peers: Vec<u64> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.nodes[i].id())
        .collect();
    for peer in &peers {
        let lag = sample(
            &after,
            &format!("atoll_peer_match_lag_entries{{peer=\"{peer}\"}}"),
        );
        assert!((0.0..1000.0).contains(&lag));
    }

    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let survivor_before = scrape(&metrics[survivor]);
    assert_eq!(sample(&survivor_before, "atoll_raft_is_leader"), 0.0);
    let dead_id = cluster.nodes[leader].id();
    cluster.nodes[leader].kill();
    let new_leader = cluster.leader();
    for n in 0..5 {
        let running = cluster.running().join(",");
        shell(&running, "app", &[&format!("INSERT INTO t VALUES ({n})")]).ok();
    }
    let failed_over = scrape(&metrics[new_leader]);
    assert_eq!(sample(&failed_over, "atoll_raft_is_leader"), 1.0);
    let survivor_after = scrape(&metrics[survivor]);
    assert!(
        sample(&survivor_after, "atoll_raft_elections_total")
            > sample(&survivor_before, "atoll_raft_elections_total")
    );
    assert!(
        sample(&survivor_after, "atoll_raft_term") > sample(&survivor_before, "atoll_raft_term")
    );
    let lag = sample(
        &failed_over,
        &format!("atoll_peer_match_lag_entries{{peer=\"{dead_id}\"}}"),
    );
    assert!(lag >= 5.0, "the dead node falls behind: {lag}");

    let (status, _) = http(&metrics[new_leader], "POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _) = http(&metrics[new_leader], "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 404);
    // Exactly the limit, never ending: all of it is read (nothing left unread to reset the
    // connection before the answer is read), then refused.
    let mut huge = "GET /metrics HTTP/1.1\r\nX: ".to_owned();
    huge.push_str(&"a".repeat(8192 - huge.len()));
    let (status, _) = http(&metrics[new_leader], &huge);
    assert_eq!(status, 431);
    scrape(&metrics[new_leader]);
}

/// A follower's open log segment damaged mid-file while it is stopped (a flipped byte with
/// valid entries after it): at its next start it moves its log and databases to
/// `DIR/quarantine/<time>/` (the damaged segment is there, byte for byte), withholds its vote
/// and has the cluster remove and re-add it; it is rebuilt from the leader, becomes a voter
/// again, no acknowledged write is lost, and `atoll verify` finds every replica equal.
#[test]
fn test_a_follower_with_a_damaged_open_segment_repairs_itself_from_the_leader() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    shell(&addresses, "app", &["CREATE TABLE t (n INTEGER, v TEXT)"]).ok();
    for n in 0..40 {
        let sql = format!("INSERT INTO t VALUES ({n}, 'acknowledged')");
        shell(&addresses, "app", &[&sql]).ok();
    }
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = cluster.nodes[victim].id();
    cluster.nodes[victim].kill();
    let raft = cluster.nodes[victim].data_dir().join("raft");
    let (path, bytes, records) = std::fs::read_dir(&raft)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with("open-") && !name.ends_with(".tmp")
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let records = crate::t50_durability::segment_records(&bytes);
            (path, bytes, records)
        })
        .max_by_key(|(_, _, records)| records.len())
        .expect("an open segment");
    assert!(records.len() >= 40, "{} records", records.len());
    let (_, payload, length) = records[records.len() / 2];
    let mut damaged = bytes;
    damaged[payload + length / 2] ^= 0x04;
    std::fs::write(&path, &damaged).unwrap();

    // Writes go on without it (two voters of three).
    for n in 40..50 {
        let sql = format!("INSERT INTO t VALUES ({n}, 'acknowledged')");
        shell(&cluster.running().join(","), "app", &[&sql]).ok();
    }
    cluster.nodes[victim].spawn();
    let quarantine = cluster.nodes[victim].data_dir().join("quarantine");
    wait_for(
        "the damaged node to be rebuilt and a voter again",
        READY_TIMEOUT,
        || {
            let in_sync = cluster.nodes[victim]
                .metadata()
                .is_some_and(|m| m.applied_index >= 50 && m.leader_id != 0);
            let voter = cluster
                .roles()
                .iter()
                .any(|(id, role)| *id == victim_id && *role == atoll_net::protocol::Role::Voter);
            (in_sync && voter && !cluster.nodes[victim].data_dir().join("repairing").exists())
                .then_some(())
        },
    );
    let kept: Vec<_> = std::fs::read_dir(&quarantine).unwrap().collect();
    assert_eq!(kept.len(), 1, "one quarantine directory");
    let kept = kept[0].as_ref().unwrap().path();
    let name = path.file_name().unwrap();
    assert_eq!(
        std::fs::read(kept.join("raft").join(name)).unwrap(),
        damaged,
        "the damaged segment is kept as it was"
    );
    assert!(kept.join("db").join("app").exists());

    shell(&addresses, "app", &["INSERT INTO t VALUES (50, 'after')"]).ok();
    cluster.wait_in_sync();
    let out =
        verify_rows(atoll(&["verify", "--cluster", &addresses, "--format", "csv", "app"]).ok());
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.3 == "ok"));
    // Every acknowledged write, on the repaired node itself (follower reads off: ask the
    // leader, then compare the repaired node's own image).
    let count = shell(&addresses, "app", &["SELECT count(*), sum(n) FROM t"]);
    assert!(
        count.ok().contains("51") && count.stdout.contains("1275"),
        "{}",
        count.stdout
    );
    assert!(cluster.dump(victim, "app") == cluster.dump(cluster.leader(), "app"));
}

/// A follower's snapshot file damaged while it is stopped (a byte of its header): at start it
/// quarantines its data instead of refusing, is rebuilt from the leader, and holds every row.
#[test]
fn test_a_follower_with_a_damaged_snapshot_repairs_itself_from_the_leader() {
    let mut cluster = AtollCluster::start(3, &["--snapshot-entries", "40"], 3);
    let addresses = cluster.addresses();
    shell(&addresses, "app", &["CREATE TABLE t (n INTEGER)"]).ok();
    for n in 0..100 {
        shell(&addresses, "app", &[&format!("INSERT INTO t VALUES ({n})")]).ok();
    }
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let snapshots = cluster.nodes[victim]
        .data_dir()
        .join("raft")
        .join("snapshots");
    wait_for("a snapshot on the follower", READY_TIMEOUT, || {
        std::fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_str().is_some_and(|n| !n.ends_with(".tmp")))
            .map(|e| e.path())
    });
    cluster.nodes[victim].stop();
    let snapshot = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.to_str().unwrap().ends_with(".tmp"))
        .unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[20] ^= 0x01; // The index field: the header's crc no longer matches.
    std::fs::write(&snapshot, &bytes).unwrap();

    cluster.nodes[victim].spawn();
    wait_for("the node to be rebuilt", READY_TIMEOUT, || {
        let dir = cluster.nodes[victim].data_dir();
        let applied = cluster.nodes[victim].metadata()?.applied_index;
        (!dir.join("repairing").exists() && applied >= 100).then_some(())
    });
    let quarantine = cluster.nodes[victim].data_dir().join("quarantine");
    let kept = std::fs::read_dir(&quarantine)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = snapshot.file_name().unwrap();
    assert_eq!(
        std::fs::read(kept.join("raft/snapshots").join(name)).unwrap(),
        bytes
    );
    shell(&addresses, "app", &["INSERT INTO t VALUES (100)"]).ok();
    cluster.wait_in_sync();
    assert!(cluster.dump(victim, "app") == cluster.dump(cluster.leader(), "app"));
    let count = shell(&addresses, "app", &["SELECT count(*) FROM t"]);
    assert!(count.ok().contains("101"), "{}", count.stdout);
}

/// `SELECT count(*), sum(n) FROM t` through `atoll shell` (csv): the pair, or None on an error.
fn count_and_sum(addresses: &str) -> Option<(i64, i64)> {
    let out = atoll(&[
        "shell",
        "--cluster",
        addresses,
        "--format",
        "csv",
        "app",
        "SELECT count(*), sum(n) FROM t",
    ]);
    if !out.status.success() {
        return None;
    }
    let line = out.stdout.lines().nth(1)?;
    let (count, sum) = line.split_once(',')?;
    Some((count.parse().ok()?, sum.parse().ok()?))
}

/// A backup of one cluster restored into another (three nodes, whose `app` held other rows):
/// every node of the second then holds the same content as the first (`sqlite3 .dump` of
/// backups from its leader and a follower equal the original's, verify agrees), its other
/// database is untouched, and readers polling during the restore only ever see the old or
/// the new database. A file that is not a database, and a first piece that is not one, are
/// refused and change nothing.
#[test]
fn test_restore_round_trip_into_another_cluster_is_atomic_for_readers() {
    require("sqlite3");
    let source = AtollNode::start();
    shell(
        source.address(),
        "app",
        &["CREATE TABLE t (n INTEGER, b BLOB)"],
    )
    .ok();
    for round in 0..6 {
        let sql = format!(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 200) \
             INSERT INTO t SELECT {round} * 1000 + i, randomblob(3000) FROM k"
        );
        shell(source.address(), "app", &[&sql]).ok();
    }
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let backup_path = backup.to_str().unwrap();
    atoll(&[
        "backup",
        "--cluster",
        source.address(),
        "app",
        "-o",
        backup_path,
    ])
    .ok();
    let new = count_and_sum(source.address()).unwrap();
    assert_eq!(new.0, 1200);
    assert!(std::fs::metadata(&backup).unwrap().len() > 3 << 20);

    let target = AtollCluster::start(3, &[], 3);
    let addresses = target.addresses();
    shell(&addresses, "app", &["CREATE TABLE t (n INTEGER)"]).ok();
    shell(&addresses, "app", &["INSERT INTO t VALUES (1), (2), (3)"]).ok();
    shell(
        &addresses,
        "keep",
        &["CREATE TABLE k (x); INSERT INTO k VALUES ('kept')"],
    )
    .ok();
    let old = count_and_sum(&addresses).unwrap();
    assert_eq!(old, (3, 6));

    // Refusals first: nothing changes.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "this is not a database\n".repeat(300)).unwrap();
    let refused = atoll(&[
        "restore",
        "--cluster",
        &addresses,
        "app",
        junk.to_str().unwrap(),
    ]);
    assert!(
        refused.failed().contains("not a valid SQLite database"),
        "{}",
        refused.stderr
    );
    let mut client = target.client();
    let error = client
        .restore_piece("app", 7, 0, 4096, &[0x42; 4096])
        .unwrap_err();
    assert!(
        error.to_string().contains("not a SQLite database"),
        "{error}"
    );
    assert_eq!(count_and_sum(&addresses), Some(old));

    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let reading = reading.clone();
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while reading.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(pair) = count_and_sum(&addresses) {
                        seen.push(pair);
                    }
                }
                seen
            })
        })
        .collect();
    let out = atoll(&["restore", "--cluster", &addresses, "app", backup_path]);
    assert!(out.ok().contains("restored"), "{}", out.stdout);
    reading.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen: Vec<(i64, i64)> = readers
        .into_iter()
        .flat_map(|reader| reader.join().unwrap())
        .collect();
    assert!(!seen.is_empty(), "the readers read during the restore");
    for pair in &seen {
        assert!(*pair == old || *pair == new, "a mixed view: {pair:?}");
    }
    println!("readers during the restore: {seen:?}");
    assert_eq!(count_and_sum(&addresses), Some(new));
    target.wait_in_sync();

    let expected = sqlite_dump(&backup);
    let from_leader = dir.path().join("leader.db");
    let from_follower = dir.path().join("follower.db");
    atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_leader.to_str().unwrap(),
    ])
    .ok();
    atoll(&[
        "backup",
        "--cluster",
        &addresses,
        "app",
        "-o",
        from_follower.to_str().unwrap(),
        "--from-follower",
    ])
    .ok();
    assert!(
        sqlite_dump(&from_leader) == expected,
        "the leader's copy differs"
    );
    assert!(
        sqlite_dump(&from_follower) == expected,
        "a follower's copy differs"
    );
    let rows = verify_rows(atoll(&["verify", "--cluster", &addresses, "--format", "csv"]).ok());
    assert_eq!(rows.len(), 6, "3 nodes x 2 databases");
    let kept = shell(&addresses, "keep", &["SELECT x FROM k"]);
    assert!(kept.ok().contains("kept"));
    // Writes go on on top of the restored database.
    shell(&addresses, "app", &["DELETE FROM t WHERE n > 1000"]).ok();
    assert_eq!(count_and_sum(&addresses).map(|p| p.0), Some(200));
}

//! A damaged database page repaired from peers without an operator: found by `quick_check` at
//! start, a damaged header page (SQLite cannot open the database at all) at start, and a
//! "malformed" answer while a leader serves. Each time the node moves its data to
//! `DIR/quarantine/<time>/`, is rebuilt from the leader in the same process, and holds the
//! same data as the others again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};
use atoll_net::protocol::Value;

use crate::support::{atoll, shell, wait_for, AtollCluster, AtollNode, Node, READY_TIMEOUT};

/// Rows of `t` in `app`: enough 600-byte values for the table to span about 150 pages.
const ROWS: u64 = 1000;

/// `app` with `ROWS` rows in `t`, and `other` with one table, through the leader.
fn fill(addresses: &str) {
    shell(
        addresses,
        "app",
        &["CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)"],
    )
    .ok();
    for chunk in 0..(ROWS / 250) {
        let sql = format!(
            "WITH RECURSIVE c(n) AS (SELECT {} UNION ALL SELECT n + 1 FROM c WHERE n < {}) \
             INSERT INTO t SELECT n, hex(randomblob(300)) FROM c",
            chunk * 250 + 1,
            chunk * 250 + 250
        );
        shell(addresses, "app", &[&sql]).ok();
    }
    shell(addresses, "other", &["CREATE TABLE acks (n INTEGER)"]).ok();
}

/// `atoll verify` (CSV): (node id, database, checksum, verdict) per row, and whether it passed.
fn verify(addresses: &str) -> (bool, Vec<(u64, String, String, String)>) {
    let out = atoll(&["verify", "--cluster", addresses, "--format", "csv"]);
    let rows = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.len() == 7).then(|| {
                (
                    fields[0].parse().unwrap(),
                    fields[2].to_owned(),
                    fields[5].to_owned(),
                    fields[6].to_owned(),
                )
            })
        })
        .collect();
    (out.status.success(), rows)
}

/// Overwrites 16 bytes at the start of page `page` (1-based) of `file` (a stopped node's, or
/// one SQLite reads from disk): a b-tree page header SQLite finds malformed; page 1 loses the
/// "SQLite format 3" magic, and SQLite calls it "not a database". Returns the damaged bytes.
fn damage_page(file: &Path, page: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(file).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let at = (page - 1) * page_size;
    assert!(bytes.len() >= at + page_size, "the file has page {page}");
    bytes[at..at + 16].copy_from_slice(&[0x55; 16]);
    std::fs::write(file, &bytes).unwrap();
    bytes
}

/// The one quarantine directory of a node's data directory.
fn quarantined(data_dir: &Path) -> Option<PathBuf> {
    let mut kept: Vec<PathBuf> = std::fs::read_dir(data_dir.join("quarantine"))
        .ok()?
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(kept.len() <= 1, "one quarantine directory: {kept:?}");
    kept.pop()
}

/// `atoll cluster --format json` through `address`: whether node `id` says it is repairing.
fn listed_repairing(address: &str, id: u64) -> Option<bool> {
    // Without a leader the listing comes from the first node that answers, after --timeout.
    let out = atoll(&[
        "cluster",
        "--cluster",
        address,
        "--format",
        "json",
        "--timeout",
        "1",
    ]);
    let line = out
        .stdout
        .lines()
        .find(|line| line.contains(&format!("{{\"id\":{id},")))?
        .to_owned();
    if line.contains("\"repairing\":true") {
        Some(true)
    } else if line.contains("\"repairing\":false") {
        Some(false)
    } else {
        None
    }
}

/// Waits until node `victim` is rebuilt: no repair marker, the same `app` and `other` as the
/// leader, a voter again.
fn wait_repaired(cluster: &mut AtollCluster, victim: usize) {
    let id = cluster.nodes[victim].id();
    wait_for("the damaged node to be rebuilt", READY_TIMEOUT, || {
        let data_dir = cluster.nodes[victim].data_dir();
        if data_dir.join("repairing").exists() || quarantined(&data_dir).is_none() {
            return None;
        }
        let voter = cluster
            .roles()
            .iter()
            .any(|(node, role)| *node == id && *role == atoll_net::protocol::Role::Voter);
        let leader = cluster.leader();
        (voter && leader != victim && cluster.wait_in_sync() > 0).then_some(())?;
        let same = ["app", "other"]
            .iter()
            .all(|db| cluster.dump(victim, db) == cluster.dump(leader, db));
        same.then_some(())
    });
    assert!(
        cluster.nodes[victim]
            .wait_exit(Duration::from_millis(1))
            .is_none(),
        "the node repaired itself without its process exiting"
    );
}

/// Issue 14's verify scenario with the repair automatic: verify finds every replica equal; a
/// page of a follower's `app` is damaged while it is stopped; at its next start `quick_check`
/// finds it, so the node moves its data aside instead of serving it (writes to it would be
/// refused), has the cluster re-add it and is rebuilt from the leader; verify is equal again
/// and the damaged file is kept in quarantine, byte for byte.
#[test]
fn test_a_page_damaged_on_disk_is_found_at_start_and_repaired_from_the_leader() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    fill(&addresses);
    let (ok, rows) = verify(&addresses);
    assert!(ok && rows.len() == 6, "{rows:?}");
    assert!(rows.iter().all(|row| row.3 == "ok"), "{rows:?}");

    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    cluster.nodes[victim].stop(); // checkpoints: every page is in the main file
    let file = cluster.nodes[victim].data_dir().join("db").join("app");
    let damaged = damage_page(&file, 2); // the root page of t
    cluster.nodes[victim].spawn();

    wait_repaired(&mut cluster, victim);
    wait_for("verify to find every replica equal", READY_TIMEOUT, || {
        let (ok, rows) = verify(&addresses);
        (ok && rows.len() == 6).then_some(())
    });
    let kept = quarantined(&cluster.nodes[victim].data_dir()).unwrap();
    assert_eq!(std::fs::read(kept.join("db").join("app")).unwrap(), damaged);
    let count = shell(&addresses, "app", &["SELECT count(*) FROM t"]);
    assert!(count.ok().contains(&ROWS.to_string()), "{}", count.stdout);
    shell(&addresses, "app", &["INSERT INTO t (v) VALUES ('after')"]).ok();
}

/// A follower's `app` loses its header page (page 1) while it is stopped. Before, the node
/// could not start at all ("file is not a database"). Now it comes up, quarantines its data and
/// waits to be re-added: with two of the three nodes down the cluster cannot re-add it, and
/// `atoll cluster` shows it repairing meanwhile (`atoll status` needs a leader). Once the third
/// node is back the repair completes and the node holds the same data as the leader.
#[test]
fn test_a_follower_with_a_damaged_header_page_starts_and_repairs_itself() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    fill(&addresses);
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != victim).unwrap();
    let victim_id = cluster.nodes[victim].id();
    cluster.nodes[other].stop();
    cluster.nodes[victim].stop();
    let file = cluster.nodes[victim].data_dir().join("db").join("app");
    let damaged = damage_page(&file, 1);
    // Once the lone leader stepped down nobody can take the node's REMOVE (proposed earlier,
    // the uncommitted entry would already take it out of the configuration listed below).
    wait_for(
        "the leader without a quorum to step down",
        READY_TIMEOUT,
        || {
            cluster.nodes[leader]
                .metadata()
                .is_some_and(|m| m.state != 3)
                .then_some(())
        },
    );
    cluster.nodes[victim].spawn();

    let leader_address = cluster.nodes[leader].address().to_owned();
    wait_for(
        "the damaged node to be listed repairing",
        READY_TIMEOUT,
        || {
            listed_repairing(&leader_address, victim_id)
                .unwrap_or(false)
                .then_some(())
        },
    );
    assert!(cluster.nodes[victim].data_dir().join("repairing").exists());

    cluster.nodes[other].spawn();
    wait_repaired(&mut cluster, victim);
    assert_eq!(listed_repairing(&addresses, victim_id), Some(false));
    let kept = quarantined(&cluster.nodes[victim].data_dir()).unwrap();
    assert_eq!(std::fs::read(kept.join("db").join("app")).unwrap(), damaged);
    let count = shell(&addresses, "app", &["SELECT count(*) FROM t"]);
    assert!(count.ok().contains(&ROWS.to_string()), "{}", count.stdout);
}

/// A page of the leader's `app` damaged on disk while it serves (as a failing disk would): a
/// query answers "malformed"; the leader refuses writes to `app`, hands leadership to another
/// voter and is rebuilt from it, in the same process. A client writing to `other` all along
/// loses no acknowledged write, and every replica ends with the same data.
#[test]
fn test_a_leader_finding_a_corrupt_page_hands_over_and_repairs_itself() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    fill(&addresses);
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let old_leader_id = cluster.nodes[leader].id();
    let wal = cluster.nodes[leader].data_dir().join("db").join("app-wal");
    // The idle checkpoint copies every page into the main file, where SQLite reads it.
    wait_for(
        "the leader's app WAL to be checkpointed",
        READY_TIMEOUT,
        || (std::fs::metadata(&wal).ok()?.len() == 0).then_some(()),
    );

    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let addresses = addresses.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                let sql = format!("INSERT INTO acks VALUES ({n})");
                if shell(&addresses, "other", &[&sql]).status.success() {
                    acknowledged.push(n);
                }
                n += 1;
            }
            acknowledged
        })
    };

    let file = cluster.nodes[leader].data_dir().join("db").join("app");
    let damaged = damage_page(&file, 80);
    let leader_address = cluster.nodes[leader].address().to_owned();
    let out = shell(
        &leader_address,
        "app",
        &["SELECT count(*), sum(length(v)) FROM t"],
    );
    let message = out.failed();
    assert!(message.contains("malformed"), "{message}");

    let new_leader = wait_for("another node to lead", READY_TIMEOUT, || {
        let index = cluster.leader();
        (index != leader).then_some(index)
    });
    // Writes to other go on through the new leader.
    let before = shell(&addresses, "other", &["SELECT count(*) FROM acks"]);
    before.ok();
    wait_for("more writes on the new leader", READY_TIMEOUT, || {
        let now = shell(&addresses, "other", &["SELECT count(*) FROM acks"]);
        (now.status.success() && now.stdout != before.stdout).then_some(())
    });
    writing.store(false, Ordering::SeqCst);
    let acknowledged = writer.join().unwrap();
    assert!(!acknowledged.is_empty());

    wait_repaired(&mut cluster, leader);
    let kept = quarantined(&cluster.nodes[leader].data_dir()).unwrap();
    assert_eq!(std::fs::read(kept.join("db").join("app")).unwrap(), damaged);
    assert!(cluster.nodes[new_leader].id() != old_leader_id);
    let rows = shell(
        &addresses,
        "other",
        &["--format", "csv", "SELECT n FROM acks"],
    );
    let stored: std::collections::HashSet<u64> = rows
        .ok()
        .lines()
        .skip(1)
        .map(|line| line.trim().parse().unwrap())
        .collect();
    let lost: Vec<&u64> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let count = shell(&addresses, "app", &["SELECT count(*) FROM t"]);
    assert!(count.ok().contains(&ROWS.to_string()), "{}", count.stdout);
    let (ok, rows) = verify(&addresses);
    assert!(ok && rows.len() == 6, "{rows:?}");
}

/// A database closed while idle, its header page damaged on a follower (SQLite cannot open
/// it): nothing reads it until a write for it arrives from the leader. Before, that apply failed
/// and the node stopped. Now the apply is held back (nothing applied past it), the damage is
/// reported, and the node is repaired from the leader in the same process.
#[test]
fn test_a_closed_database_damaged_on_a_follower_is_repaired_when_a_write_reaches_it() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    fill(&addresses);
    cluster.wait_in_sync();
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    cluster.nodes[victim].stop();
    // One database open at a time: at its start the node opens `app` and leaves `other`
    // closed (and unchecked) until something needs it.
    cluster.nodes[victim].start_args = vec!["--max-databases".into(), "1".into()];
    let file = cluster.nodes[victim].data_dir().join("db").join("other");
    let damaged = damage_page(&file, 1);
    cluster.nodes[victim].spawn();
    cluster.wait_in_sync();

    shell(&addresses, "other", &["INSERT INTO acks VALUES (1)"]).ok();
    wait_repaired(&mut cluster, victim);
    let kept = quarantined(&cluster.nodes[victim].data_dir()).unwrap();
    assert_eq!(
        std::fs::read(kept.join("db").join("other")).unwrap(),
        damaged
    );
    let count = shell(&addresses, "other", &["SELECT count(*) FROM acks"]);
    assert!(count.ok().contains('1'), "{}", count.stdout);
}

/// The only voter finds a page of `app` damaged: with no peer to repair from it keeps serving,
/// refusing writes to `app`, and reports it. Its next snapshots hold the damaged page; a node
/// joining once the log was compacted (it can only catch up by a snapshot) must not be sent
/// one: before, it installed the damaged `app` (then found it corrupt and quarantined it).
#[test]
fn test_a_leader_with_a_damaged_database_sends_no_snapshot() {
    let leader = AtollNode::start_with(&["--snapshot-entries", "64"]);
    let address = leader.address().to_owned();
    fill(&address);
    let wal = leader.data_dir().join("db").join("app-wal");
    wait_for("the app WAL to be checkpointed", READY_TIMEOUT, || {
        (std::fs::metadata(&wal).ok()?.len() == 0).then_some(())
    });
    damage_page(&leader.data_dir().join("db").join("app"), 80);
    let out = shell(&address, "app", &["SELECT count(*), sum(length(v)) FROM t"]);
    assert!(out.failed().contains("malformed"), "{}", out.stderr);
    assert_eq!(leader.metadata().unwrap().corrupt_databases, 1);
    let refused = shell(&address, "app", &["INSERT INTO t (v) VALUES ('x')"]);
    assert!(refused.failed().contains("corrupt"), "{}", refused.stderr);

    // Snapshots past the damage, and a log compacted past its start (1,024 entries are kept
    // behind a snapshot).
    let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
    connection.open("other").unwrap();
    for n in 0..1300 {
        connection
            .exec_sql("INSERT INTO acks VALUES (?)", &[Value::Integer(n)])
            .unwrap();
    }
    let joiner = AtollNode::join(&address, &[]);
    std::thread::sleep(Duration::from_secs(3));
    // Before, the joiner installed the damaged `app`, found it corrupt and quarantined it.
    let data_dir = joiner.data_dir();
    assert!(quarantined(&data_dir).is_none() && !data_dir.join("repairing").exists());
    let received: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft/snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(received.is_empty(), "snapshots received: {received:?}");
    assert!(!data_dir.join("db").join("app").exists());
    assert_eq!(joiner.metadata().unwrap().applied_index, 0);
    // The leader still serves what is whole.
    shell(&address, "other", &["INSERT INTO acks VALUES (-1)"]).ok();
}

/// The leader of `app`'s replicas with a damaged page (as in the test above) is repaired;
/// made leader again, it finds `app` damaged again within `--repair-again-after` of the
/// repair: the damage likely came with the leader's copy, so it is not repaired again (one
/// quarantine directory), it is reported, writes to `app` are refused and the node serves
/// `other`. Once the window has passed, damage found in `other` is repaired again.
#[test]
fn test_damage_found_again_soon_after_a_repair_is_not_repaired_again() {
    const WINDOW_S: u64 = 30;
    let mut cluster = AtollCluster::start(3, &[], 3);
    let addresses = cluster.addresses();
    fill(&addresses);
    cluster.wait_in_sync();
    let victim = 0;
    let victim_id = cluster.nodes[victim].id();
    cluster.nodes[victim].stop();
    cluster.nodes[victim].start_args = vec!["--repair-again-after".into(), WINDOW_S.to_string()];
    cluster.nodes[victim].spawn();
    cluster.wait_in_sync();
    let victim_address = cluster.nodes[victim].address().to_owned();

    // The victim leads (handed leadership), then a page of `database` is damaged and a query
    // through it finds it.
    let lead_and_damage = |cluster: &AtollCluster, database: &str, page: usize, query: &str| {
        wait_for("the node to lead", READY_TIMEOUT, || {
            if cluster.leader() == victim {
                return Some(());
            }
            atoll(&[
                "transfer",
                "--cluster",
                &addresses,
                "--id",
                &victim_id.to_string(),
            ]);
            None
        });
        let data_dir = cluster.nodes[victim].data_dir();
        let wal = data_dir.join("db").join(format!("{database}-wal"));
        wait_for("the WAL to be checkpointed", READY_TIMEOUT, || {
            (std::fs::metadata(&wal).ok()?.len() == 0).then_some(())
        });
        damage_page(&data_dir.join("db").join(database), page);
        let out = shell(&victim_address, database, &[query]);
        assert!(out.failed().contains("malformed"), "{}", out.stderr);
    };
    let scan_app = "SELECT count(*), sum(length(v)) FROM t";

    lead_and_damage(&cluster, "app", 80, scan_app);
    let first_repair = std::time::Instant::now();
    wait_repaired(&mut cluster, victim);

    lead_and_damage(&cluster, "app", 80, scan_app);
    assert!(first_repair.elapsed() < Duration::from_secs(WINDOW_S - 5));
    std::thread::sleep(Duration::from_secs(2));
    let metadata = cluster.nodes[victim].metadata().unwrap();
    assert_eq!((metadata.state, metadata.corrupt_databases), (3, 1));
    assert!(quarantined(&cluster.nodes[victim].data_dir()).is_some()); // only the first
    let refused = shell(&addresses, "app", &["INSERT INTO t (v) VALUES ('x')"]);
    assert!(refused.failed().contains("corrupt"), "{}", refused.stderr);
    shell(&addresses, "other", &["INSERT INTO acks VALUES (1)"]).ok();
    assert_eq!(listed_repairing(&addresses, victim_id), Some(false));

    // Past the window: new damage is repaired again (the first damage with it).
    let wait = Duration::from_secs(WINDOW_S + 2).saturating_sub(first_repair.elapsed());
    std::thread::sleep(wait);
    lead_and_damage(&cluster, "other", 2, "SELECT * FROM acks");
    wait_for("a second repair", READY_TIMEOUT, || {
        let kept = std::fs::read_dir(cluster.nodes[victim].data_dir().join("quarantine"))
            .ok()?
            .count();
        (kept == 2 && !cluster.nodes[victim].data_dir().join("repairing").exists()).then_some(())
    });
    wait_for("the node to hold app again", READY_TIMEOUT, || {
        (cluster.nodes[victim].metadata()?.corrupt_databases == 0
            && cluster.wait_in_sync() > 0
            && cluster.dump(victim, "app") == cluster.dump(cluster.leader(), "app"))
        .then_some(())
    });
    assert!(cluster.nodes[victim]
        .wait_exit(Duration::from_millis(1))
        .is_none());
}

//! A full disk (a small tmpfs as the data directory, filled by a file): the node stays up,
//! serves reads, refuses writes with SQLITE_FULL, logs the change once, and resumes by itself
//! once the file is deleted, losing nothing acknowledged. Mounting needs root: without it the
//! tests say so and pass without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError, Connection};
use atoll_net::protocol::Value;

use crate::support::{
    atoll, free_address, metric_sample, scrape_metrics, wait_for, AtollCluster, AtollNode, Node,
};

/// SQLITE_FULL.
const CODE_FULL: u64 = 13;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A tmpfs of `size` mounted on `path` for the life of the value.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_with(path, &format!("size={size}"))
    }

    /// A tmpfs mounted with `options` (`size=…,nr_inodes=…`).
    fn mount_with(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the file system with `filler` until it refuses a byte more.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                    break;
                }
            }
        }
        assert_eq!(self.available_bytes(), 0);
        filler
    }

    /// Fills the file system, then gives `bytes` back: `bytes` stay available.
    fn fill_leaving(&self, bytes: u64) -> PathBuf {
        let filler = self.fill();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        let length = file.metadata().unwrap().len();
        file.set_len(length.saturating_sub(bytes)).unwrap();
        filler
    }

    /// Takes every free inode with empty files (`inode-N`), until the file system refuses one
    /// more (ENOSPC while bytes are still free); returns them.
    fn fill_inodes(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for n in 0..100_000 {
            let path = self.path.join(format!("inode-{n}"));
            match std::fs::File::create(&path) {
                Ok(_) => files.push(path),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                    return files;
                }
            }
        }
        panic!("the file system took 100000 files");
    }

    /// The bytes available (`df`).
    fn available_bytes(&self) -> u64 {
        let free = Command::new("df")
            .args(["--block-size=1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        let free = String::from_utf8_lossy(&free.stdout);
        free.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Panics (with its log) if the node's process ended.
fn assert_alive(node: &mut AtollNode) {
    if let Some(status) = node.wait_exit(Duration::ZERO) {
        panic!("the node exited with {status}:\n{}", node.log());
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        leader_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn connect(address: &str) -> Connection {
    let mut connection = Connection::connect(address, &config()).unwrap();
    connection.open("full").unwrap();
    connection
}

fn count(connection: &mut Connection) -> i64 {
    let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    match rows.rows[0][0] {
        Value::Integer(n) => n,
        ref other => panic!("{other:?}"),
    }
}

fn insert(connection: &mut Connection, id: i64) -> Result<(), ClientError> {
    connection
        .exec_sql(
            "INSERT INTO t VALUES (?, randomblob(2000))",
            &[Value::Integer(id)],
        )
        .map(|_| ())
}

/// One node on a 48 MiB tmpfs. Filled to the last byte: reads are served, every write is
/// refused with SQLITE_FULL ("disk full"), the node stays up and logs the change once. The
/// filler deleted: writes resume without a restart; every acknowledged row is there, also
/// after a kill -9 and a restart.
#[test]
fn test_full_disk_refuses_writes_serves_reads_and_recovers() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "48m");
    let mut node = AtollNode::init_in(dir, &free_address(), &[]);
    node.restart();
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    let mut acknowledged = 0;
    for id in 0..50 {
        insert(&mut connection, id).unwrap();
        acknowledged += 1;
    }

    let filler = mount.fill();
    // The node measures free space at most every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    for id in 1000..1020 {
        match insert(&mut connection, id) {
            Err(ClientError::Failure { code, message }) => {
                assert_eq!(code, CODE_FULL, "{message}");
                assert!(message.contains("disk full"), "{message}");
            }
            other => panic!("a write on a full disk: {other:?}"),
        }
        assert_eq!(count(&mut connection), acknowledged, "reads are served");
    }
    let log = node.log();
    assert_eq!(log.matches("disk full: writes refused").count(), 1, "{log}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match insert(&mut connection, 2000) {
            Ok(()) => break,
            Err(ClientError::Failure { code, .. })
                if code == CODE_FULL && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("writes did not resume: {e}"),
        }
    }
    acknowledged += 1;
    for id in 2001..2050 {
        insert(&mut connection, id).unwrap();
        acknowledged += 1;
    }
    assert_eq!(count(&mut connection), acknowledged);
    let log = node.log();
    assert_eq!(log.matches("disk space back: resuming").count(), 1, "{log}");
    assert_alive(&mut node);

    drop(connection);
    node.kill();
    node.restart();
    let mut connection = connect(node.address());
    assert_eq!(count(&mut connection), acknowledged);
}

/// Three nodes; the leader's data directory is a tmpfs, filled to the last byte. The leader
/// refuses the write and hands leadership to a member with room, where writes go on. The old
/// leader stays up as a follower that can neither apply nor (once its segment is full)
/// append what is committed: it acknowledges nothing it does not hold and skips nothing. Once
/// the filler is deleted it catches up by itself, and its database equals the leader's.
#[test]
fn test_leader_with_a_full_disk_steps_down_and_catches_up_later() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "96m");
    let mut first = AtollNode::init_in(dir, &free_address(), &[]);
    first.restart();
    let mut cluster = AtollCluster { nodes: vec![first] };
    for _ in 1..3 {
        let address = cluster.nodes[0].address().to_owned();
        let mut node = AtollNode::prepare_join(&free_address(), &address, &[]);
        node.spawn();
        cluster.nodes.push(node);
    }
    cluster.wait_roles(3, None);
    assert_eq!(cluster.leader(), 0);
    let mut client = Client::connect(&cluster.running(), config()).unwrap();
    client.open("full").unwrap();
    client
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    let insert = |client: &mut Client, id: i64| {
        client
            .exec_sql(
                "INSERT INTO t VALUES (?, randomblob(20000))",
                &[Value::Integer(id)],
            )
            .map(|_| ())
    };
    let mut acknowledged = 0i64;
    for id in 0..20 {
        insert(&mut client, id).unwrap();
        acknowledged += 1;
    }

    let filler = mount.fill();
    std::thread::sleep(Duration::from_millis(300));
    // The first write is refused (SQLITE_FULL) or redirected; then writes go to a new leader.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match insert(&mut client, 1000) {
            Ok(()) => break,
            Err(ClientError::Failure { code, message }) if code == CODE_FULL => {
                assert!(message.contains("disk full"), "{message}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "no leader with room took over");
        std::thread::sleep(Duration::from_millis(50));
    }
    acknowledged += 1;
    // Refused at least once, unless the leader found its disk full (preparing a segment) and
    // handed over before the first write.
    let log = cluster.nodes[0].log();
    assert!(
        refused >= 1 || log.contains("disk full: handing leadership over"),
        "{log}"
    );
    let leader = cluster.leader();
    assert_ne!(leader, 0, "the node with the full disk still leads");
    // Enough to fill the old leader's open log segment (8 MiB) and more.
    for id in 2000..2600 {
        insert(&mut client, id).unwrap();
        acknowledged += 1;
    }
    // Half a second later the full node still has not applied the last writes (a follower
    // with room applies within milliseconds), and it still runs.
    std::thread::sleep(Duration::from_millis(500));
    assert_alive(&mut cluster.nodes[0]);
    let stuck = cluster.nodes[0].metadata().expect("the full node answers");
    let leader_applied = cluster.nodes[leader].metadata().unwrap().applied_index;
    assert!(
        stuck.applied_index < leader_applied,
        "{} {leader_applied}",
        stuck.applied_index
    );

    std::fs::remove_file(&filler).unwrap();
    let applied = cluster.wait_in_sync();
    assert!(applied >= leader_applied);
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(acknowledged));
    assert_eq!(cluster.dump(0, "full"), cluster.dump(leader, "full"));
    let log = cluster.nodes[0].log();
    assert_eq!(log.matches("disk full: writes refused").count(), 1, "{log}");
    assert_eq!(log.matches("disk space back: resuming").count(), 1, "{log}");
}

/// A checkpoint whose durable half fails (its record cannot be written and synced: here the
/// record file was replaced by a directory) stops the node with an error, instead of logging
/// it and syncing again later (a sync that failed may have lost pages a later one would not
/// report). The restart replays the log from the last durable record: nothing acknowledged is
/// lost.
#[test]
fn test_failed_checkpoint_sync_stops_the_node() {
    let mut node = AtollNode::start();
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..30 {
        insert(&mut connection, id).unwrap();
    }
    let record = node.data_dir().join("db").join("full-atoll");
    let bytes = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    // The idle checkpoint (after 2 s without applies) fails; the node stops.
    let status = node.wait_exit(Duration::from_secs(20));
    let log = node.log();
    let status = status.unwrap_or_else(|| panic!("the node kept running:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains(r#"syncing "full" in a checkpoint"#), "{log}");
    std::fs::remove_dir(&record).unwrap();
    std::fs::write(&record, &bytes).unwrap();
    node.restart();
    let mut connection = connect(node.address());
    assert_eq!(count(&mut connection), 30);
}

/// A client OPENs a database the node does not have while the disk is full: creating its
/// files fails. The client gets SQLITE_FULL ("disk full"), again on a second try, and nothing
/// is left half-made; the node stays up and serves the database it has. Once space is freed
/// the same OPEN succeeds, the new database takes writes, and it survives a kill -9.
#[test]
fn test_open_of_a_new_database_on_a_full_disk() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "48m");
    let mut node = AtollNode::init_in(dir, &free_address(), &[]);
    node.restart();
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..10 {
        insert(&mut connection, id).unwrap();
    }

    let filler = mount.fill();
    for _ in 0..2 {
        let mut fresh = Connection::connect(node.address(), &config()).unwrap();
        match fresh.open("fresh") {
            Err(ClientError::Failure { code, message }) => {
                assert_eq!(code, CODE_FULL, "{message}");
                assert!(message.contains("disk full"), "{message}");
            }
            other => panic!("OPEN of a new database on a full disk: {other:?}"),
        }
        assert_alive(&mut node);
        assert_eq!(count(&mut connection), 10, "reads are served");
    }
    let leftovers: Vec<_> = std::fs::read_dir(node.data_dir().join("db"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("fresh"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    std::fs::remove_file(&filler).unwrap();
    let mut fresh = Connection::connect(node.address(), &config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fresh.open("fresh") {
            Ok(()) => break,
            Err(ClientError::Failure { code, .. })
                if code == CODE_FULL && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("OPEN after freeing space: {e}"),
        }
    }
    fresh
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..5 {
        insert(&mut fresh, id).unwrap();
    }
    assert_eq!(count(&mut fresh), 5);
    drop(fresh);
    drop(connection);
    node.kill();
    node.restart();
    let mut fresh = Connection::connect(node.address(), &config()).unwrap();
    fresh.open("fresh").unwrap();
    assert_eq!(count(&mut fresh), 5);
    assert_eq!(count(&mut connect(node.address())), 10);
}

/// A snapshot larger than the space left: the disk holds more than the margin under which
/// writes are refused, but not the snapshot the node starts after `--snapshot-entries`
/// applies. Writing it fails; the node stays up, drops the unfinished file (giving the space
/// back), keeps taking writes, and takes the snapshot once space is freed. Every acknowledged
/// row is there, also after a kill -9.
#[test]
fn test_snapshot_larger_than_the_free_space() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "160m");
    let mut node = AtollNode::init_in(dir, &free_address(), &["--snapshot-entries", "400"]);
    node.restart();
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    // About 40 MB of rows in few entries (one large transaction each), far from a snapshot.
    for batch in 0..20i64 {
        connection
            .exec_sql(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99) \
                 INSERT INTO t SELECT ? * 100 + i, randomblob(20000) FROM n",
                &[Value::Integer(batch)],
            )
            .unwrap();
    }
    let mut acknowledged = 2000;
    let snapshots = node.data_dir().join("raft").join("snapshots");
    let finished = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
            .count()
    };
    assert_eq!(finished(&snapshots), 0);
    let small = |connection: &mut Connection, id: i64| {
        connection
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .map(|_| ())
    };
    // Room above the 16 MiB margin (for a new 8 MiB log segment and WAL frames too), not for
    // a 40 MB snapshot.
    let filler = mount.fill_leaving(36 << 20);
    for id in 100_000..100_500 {
        small(&mut connection, id).unwrap();
        acknowledged += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_alive(&mut node);
    assert_eq!(finished(&snapshots), 0);
    assert!(
        mount.available_bytes() > 16 << 20,
        "the unfinished file is gone"
    );
    assert_eq!(count(&mut connection), acknowledged);

    std::fs::remove_file(&filler).unwrap();
    let mut id = 200_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished(&snapshots) == 0 {
        assert!(Instant::now() < deadline, "no snapshot after freeing space");
        small(&mut connection, id).unwrap();
        acknowledged += 1;
        id += 1;
    }
    assert_eq!(count(&mut connection), acknowledged);
    drop(connection);
    node.kill();
    node.restart();
    assert_eq!(count(&mut connect(node.address())), acknowledged);
}

/// A node joins with its data directory full to the last byte. Its first term and vote need
/// a new metadata file, which cannot be written: the node stays up, sends nothing (it
/// acknowledges no append and grants no vote on a term it could lose in a crash) and starts
/// no election; the cluster goes on writing without it. Once space is freed it saves them,
/// joins and catches up, and its database equals the leader's.
#[test]
fn test_node_that_cannot_save_its_term_joins_once_space_is_freed() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut first = AtollNode::start();
    let cluster_address = first.address().to_owned();
    let mut client = Client::connect(std::slice::from_ref(&cluster_address), config()).unwrap();
    client.open("full").unwrap();
    client
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "48m");
    let mut joining = AtollNode::prepare_join_in(dir, &free_address(), &cluster_address, &[]);
    let raft = joining.data_dir().join("raft");
    assert!(raft.join("metadata1").exists());
    assert!(
        !raft.join("metadata2").exists(),
        "the next save makes a new file"
    );
    let filler = mount.fill();
    joining.spawn();
    // The leader adds it to the configuration (its first message carries the term to save).
    let address = joining.address().to_owned();
    wait_for(
        "the leader to add the joining node",
        Duration::from_secs(60),
        || {
            let nodes = client.cluster().ok()?;
            nodes.iter().any(|n| n.address == address).then_some(())
        },
    );
    let mut acknowledged = 0i64;
    for id in 0..40 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_alive(&mut joining);
    assert_eq!(
        std::fs::metadata(raft.join("metadata2")).map_or(0, |m| m.len()),
        0,
        "nothing saved"
    );
    let leader = first.metadata().unwrap().applied_index;
    assert!(joining.metadata().map_or(0, |m| m.applied_index) < leader);
    assert_alive(&mut first);

    std::fs::remove_file(&filler).unwrap();
    let mut cluster = AtollCluster {
        nodes: vec![first, joining],
    };
    let applied = cluster.wait_in_sync();
    assert!(applied >= leader);
    for id in 1000..1010 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
    }
    cluster.wait_in_sync();
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(acknowledged));
    assert_eq!(cluster.dump(0, "full"), cluster.dump(1, "full"));
    cluster.nodes.iter_mut().for_each(assert_alive);
    drop(mount);
}

/// The finished snapshot files in a node's data directory, and whether an unfinished one is
/// there.
fn snapshot_files(node: &AtollNode) -> (usize, bool) {
    let dir = node.data_dir().join("raft").join("snapshots");
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("snapshot-"))
                .collect()
        })
        .unwrap_or_default();
    let finished = names.iter().filter(|n| !n.ends_with(".tmp")).count();
    (finished, names.iter().any(|n| n.ends_with(".tmp")))
}

/// A node joins a cluster whose leader compacted its log behind a snapshot of about 24 MB.
/// First its data directory has 20 MiB left: the snapshot does not fit and is refused before
/// a byte is written. Then every inode is taken and the bytes are back: the snapshot file
/// cannot be created (ENOSPC, as when a write fails mid-stream). Either way the node stays
/// up, keeps no partial file and installs nothing, while the cluster goes on writing; its
/// metrics count each refusal. Once the disk is freed the leader streams the snapshot again;
/// the node stores and installs it, catches up, and its database equals the leader's.
#[test]
fn test_snapshot_from_the_leader_that_cannot_be_stored() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let Compacted {
        first,
        cluster_address,
        mut client,
        mut acknowledged,
        mut id,
    } = leader_compacted_behind_a_snapshot();

    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount_with(&dir.path().join("data"), "size=96m,nr_inodes=2000");
    let mut joining = AtollNode::prepare_join_in(dir, &free_address(), &cluster_address, &[]);
    let metrics = free_address();
    joining.start_args = vec!["--metrics-address".into(), metrics.clone()];
    let filler = mount.fill_leaving(20 << 20);
    joining.spawn();
    let address = joining.address().to_owned();
    wait_for(
        "the leader to add the joining node",
        Duration::from_secs(60),
        || {
            let nodes = client.cluster().ok()?;
            nodes.iter().any(|n| n.address == address).then_some(())
        },
    );
    let refused = || metric_sample(&scrape_metrics(&metrics), "atoll_snapshots_refused_total");
    // The leader streams the snapshot; the node refuses it for want of bytes (unread).
    wait_for(
        "the joining node to refuse the snapshot",
        Duration::from_secs(60),
        || (refused() >= 1.0).then_some(()),
    );
    assert_eq!(snapshot_files(&joining), (0, false), "nothing stored");
    // No inode left, then the bytes back: the snapshot file cannot be created. The leader
    // tries again (a few times, until it gives up catching the node up for a while).
    let inodes = mount.fill_inodes();
    let before = refused();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(0)
        .unwrap();
    for _ in 0..40 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
        assert_alive(&mut joining);
        assert_eq!(snapshot_files(&joining), (0, false), "nothing stored");
    }
    wait_for(
        "the joining node to refuse the snapshot again",
        Duration::from_secs(60),
        || (refused() > before).then_some(()),
    );
    assert_eq!(snapshot_files(&joining), (0, false), "nothing stored");
    assert!(
        mount.available_bytes() > 80 << 20,
        "no partial file holds space"
    );
    let leader = first.metadata().unwrap().applied_index;
    assert!(joining.metadata().map_or(0, |m| m.applied_index) < leader);

    for path in inodes.iter().chain([&filler]) {
        std::fs::remove_file(path).unwrap();
    }
    // The leader tries again once it retries the promotion it gave up (seconds later).
    wait_for(
        "the joining node to catch up",
        Duration::from_secs(90),
        || {
            let applied = joining.metadata()?.applied_index;
            (applied >= leader).then_some(())
        },
    );
    assert_eq!(snapshot_files(&joining).0, 1, "the snapshot, installed");
    let mut cluster = AtollCluster {
        nodes: vec![first, joining],
    };
    for id in 200_000..200_010 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
    }
    cluster.wait_in_sync();
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(acknowledged));
    assert_eq!(cluster.dump(0, "full"), cluster.dump(1, "full"));
    cluster.nodes.iter_mut().for_each(assert_alive);
    drop(mount);
}

/// Writes `rows` rows of 2000 random bytes into `t` of database "src" and backs it up to
/// `path` (a WAL-mode SQLite file, as `atoll restore` takes).
fn backup_of_rows(address: &str, rows: i64, path: &Path) {
    let mut connection = Connection::connect(address, &config()).unwrap();
    connection.open("src").unwrap();
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    connection
        .exec_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1) \
             INSERT INTO t SELECT i, randomblob(2000) FROM n",
            &[Value::Integer(rows)],
        )
        .unwrap();
    let path = path.to_str().unwrap();
    atoll(&["backup", "--cluster", address, "src", "-o", path]).ok();
}

/// The staged restore files a node holds.
fn staged_restores(node: &AtollNode) -> Vec<String> {
    std::fs::read_dir(node.data_dir().join("restore"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

/// `atoll restore` of a 6 MB file into a node whose disk has 20 MiB left: more than the
/// margin writes keep, not enough for the staged file and the database it becomes. The
/// restore fails with "disk full"; nothing changed (the database keeps its rows, nothing is
/// staged) and the node serves on. Once space is freed the same restore succeeds.
#[test]
fn test_restore_on_a_full_disk_fails_cleanly() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "96m");
    let mut node = AtollNode::init_in(dir, &free_address(), &[]);
    node.restart();
    let files = tempfile::tempdir().unwrap();
    let backup = files.path().join("backup.db");
    backup_of_rows(node.address(), 3000, &backup);
    assert!(std::fs::metadata(&backup).unwrap().len() > 6_000_000);
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..10 {
        insert(&mut connection, id).unwrap();
    }

    let filler = mount.fill_leaving(20 << 20);
    let backup_path = backup.to_str().unwrap();
    let address = node.address().to_owned();
    let restore = || atoll(&["restore", "--cluster", &address, "full", backup_path]);
    let refused = restore();
    assert!(refused.failed().contains("disk full"), "{}", refused.stderr);
    assert_alive(&mut node);
    assert_eq!(count(&mut connection), 10, "nothing changed");
    assert_eq!(staged_restores(&node), Vec::<String>::new());

    std::fs::remove_file(&filler).unwrap();
    restore().ok();
    let mut connection = connect(node.address());
    assert_eq!(count(&mut connection), 3000);
    assert_alive(&mut node);
}

/// A restore into a cluster whose follower has no inode left on its disk: the leader stages
/// and switches; the follower cannot create the staged file (ENOSPC). It stays up, applies
/// nothing past the piece (never skipping it), and once the disk is freed applies it and
/// holds the restored database, equal to the leader's.
#[test]
fn test_restore_piece_a_follower_cannot_stage() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let first = AtollNode::start();
    let cluster_address = first.address().to_owned();
    let files = tempfile::tempdir().unwrap();
    let backup = files.path().join("backup.db");
    backup_of_rows(&cluster_address, 100, &backup);
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount_with(&dir.path().join("data"), "size=96m,nr_inodes=2000");
    let mut joining = AtollNode::prepare_join_in(dir, &free_address(), &cluster_address, &[]);
    joining.spawn();
    let mut cluster = AtollCluster {
        nodes: vec![first, joining],
    };
    let mut connection = connect(&cluster_address);
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    insert(&mut connection, 1).unwrap();
    cluster.wait_in_sync();

    let inodes = mount.fill_inodes();
    let backup_path = backup.to_str().unwrap();
    atoll(&[
        "restore",
        "--cluster",
        &cluster_address,
        "full",
        backup_path,
    ])
    .ok();
    assert_eq!(count(&mut connect(&cluster_address)), 100);
    let leader = cluster.nodes[0].metadata().unwrap().applied_index;
    std::thread::sleep(Duration::from_millis(1000));
    assert_alive(&mut cluster.nodes[1]);
    let stuck = cluster.nodes[1].metadata().unwrap().applied_index;
    assert!(stuck < leader, "{stuck} {leader}");

    for path in &inodes {
        std::fs::remove_file(path).unwrap();
    }
    cluster.wait_in_sync();
    assert_eq!(cluster.dump(0, "full"), cluster.dump(1, "full"));
    assert_eq!(staged_restores(&cluster.nodes[1]), Vec::<String>::new());
    cluster.nodes.iter_mut().for_each(assert_alive);
}

/// A database whose creation never finished (its record is there, its main file is not:
/// a crash in between) on a node restarted with a full disk: starting used to write its empty
/// main file and failed. The node starts and serves the database it has; the unfinished one
/// is not there: an OPEN of it is refused with "disk full" until space is freed, then
/// creates it (empty), and it takes writes.
#[test]
fn test_start_on_a_full_disk_with_an_unfinished_database() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "48m");
    let mut node = AtollNode::init_in(dir, &free_address(), &[]);
    node.restart();
    let mut connection = connect(node.address());
    connection
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..10 {
        insert(&mut connection, id).unwrap();
    }
    Connection::connect(node.address(), &config())
        .unwrap()
        .open("fresh")
        .unwrap();
    drop(connection);
    node.kill();
    let main = node.data_dir().join("db").join("fresh");
    assert!(node.data_dir().join("db").join("fresh-atoll").exists());
    std::fs::remove_file(&main).unwrap();

    let filler = mount.fill();
    node.spawn();
    let mut connection = wait_for("the node to serve", Duration::from_secs(20), || {
        assert_alive(&mut node);
        let mut connection = Connection::connect(node.address(), &config()).ok()?;
        connection.open("full").ok()?;
        Some(connection)
    });
    assert_eq!(count(&mut connection), 10);
    match Connection::connect(node.address(), &config())
        .unwrap()
        .open("fresh")
    {
        Err(ClientError::Failure { code, message }) => {
            assert_eq!(code, CODE_FULL, "{message}");
            assert!(message.contains("disk full"), "{message}");
        }
        other => panic!("OPEN of the unfinished database on a full disk: {other:?}"),
    }
    assert_alive(&mut node);

    std::fs::remove_file(&filler).unwrap();
    let mut fresh = Connection::connect(node.address(), &config()).unwrap();
    fresh.open("fresh").unwrap();
    fresh
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    insert(&mut fresh, 1).unwrap();
    assert_eq!(count(&mut fresh), 1);
    assert_eq!(count(&mut connection), 10);
}

/// A node joins a cluster whose leader compacted its log behind a snapshot of about 24 MB.
/// Its raft directory has room, but its databases' directory is a 16 MiB file system of its
/// own: the snapshot is received and stored, raft installs it, but the databases cannot be
/// written (ENOSPC). The node stays up, applies nothing, and writes no database file; once
/// that file system grows it installs the snapshot, catches up, and its database equals the
/// leader's.
#[test]
fn test_snapshot_from_the_leader_that_cannot_be_installed() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let Compacted {
        first,
        cluster_address,
        mut client,
        mut acknowledged,
        mut id,
    } = leader_compacted_behind_a_snapshot();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("db");
    let mut joining = AtollNode::prepare_join_in(dir, &free_address(), &cluster_address, &[]);
    let mount = Tmpfs::mount(&db, "16m");
    joining.spawn();
    wait_for(
        "the snapshot to be received",
        Duration::from_secs(60),
        || (snapshot_files(&joining).0 == 1).then_some(()),
    );
    for _ in 0..20 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
        assert_alive(&mut joining);
    }
    let databases: Vec<_> = std::fs::read_dir(&db)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!databases.iter().any(|n| n == "full"), "{databases:?}");
    let leader = first.metadata().unwrap().applied_index;
    assert!(joining.metadata().map_or(0, |m| m.applied_index) < leader);

    let status = Command::new("mount")
        .args(["-o", "remount,size=96m"])
        .arg(&mount.path)
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "the joining node to catch up",
        Duration::from_secs(90),
        || {
            let applied = joining.metadata()?.applied_index;
            (applied >= leader).then_some(())
        },
    );
    let mut cluster = AtollCluster {
        nodes: vec![first, joining],
    };
    for id in 200_000..200_010 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
    }
    cluster.wait_in_sync();
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(acknowledged));
    assert_eq!(cluster.dump(0, "full"), cluster.dump(1, "full"));
    cluster.nodes.iter_mut().for_each(assert_alive);
    drop(mount);
}

/// Three nodes; node 1 leads, its data directory a tmpfs. Cut off from the others, it
/// appends a write it can never commit, steps down, and the majority writes on under a new
/// leader. Its disk is then filled to the last byte and the partition healed: the new
/// leader's entries conflict with its suffix, and cutting its log (the kept prefix of the
/// segment goes to a new file first) fails for want of space. It stays up, is retried, and
/// once the filler is deleted it truncates, catches up and holds the leader's database,
/// without the write it never acknowledged.
#[test]
fn test_truncating_a_conflicting_suffix_on_a_full_disk() {
    use atoll_net::testing::Direction;
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "64m");
    let (mut cluster, proxies) = crate::t55_cluster_faults::proxied_cluster_in(Some(dir), &[]);
    assert_eq!(cluster.leader(), 0);
    let mut direct = Connection::connect(cluster.nodes[0].address(), &config()).unwrap();
    direct.open("full").unwrap();
    direct
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for id in 0..10 {
        insert(&mut direct, id).unwrap();
    }
    cluster.wait_in_sync();

    for ((from, to), proxy) in &proxies {
        if *from == 1 || *to == 1 {
            proxy.blackhole(Direction::Both);
        }
    }
    assert!(
        insert(&mut direct, -1).is_err(),
        "acknowledged without a quorum"
    );
    let addresses = [cluster.nodes[1].address(), cluster.nodes[2].address()]
        .map(str::to_owned)
        .to_vec();
    let mut client = Client::connect(&addresses, config()).unwrap();
    client.open("full").unwrap();
    let mut acknowledged = 10i64;
    for id in 100..130 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
    }
    let leader = cluster.leader();
    assert_ne!(leader, 0);

    let filler = mount.fill();
    for proxy in proxies.values() {
        proxy.heal();
    }
    for id in 200..220 {
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_alive(&mut cluster.nodes[0]);
    let stuck = cluster.nodes[0].metadata().unwrap().applied_index;
    let applied = cluster.nodes[leader].metadata().unwrap().applied_index;
    assert!(stuck < applied, "{stuck} {applied}");

    std::fs::remove_file(&filler).unwrap();
    cluster.wait_in_sync();
    let rows = client.query_sql("SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(acknowledged));
    assert_eq!(cluster.dump(0, "full"), cluster.dump(leader, "full"));
    let rows = client
        .query_sql("SELECT count(*) FROM t WHERE id = -1", &[])
        .unwrap();
    assert_eq!(rows.rows[0][0], Value::Integer(0));
    cluster.nodes.iter_mut().for_each(assert_alive);
    drop(mount);
}

/// A one-node cluster whose leader holds about 24 MB in database `full` (table `t`) and has
/// compacted its log behind a snapshot, keeping 1024 entries: a node joining it needs the
/// snapshot.
struct Compacted {
    first: AtollNode,
    cluster_address: String,
    client: Client,
    /// Rows acknowledged in `t`.
    acknowledged: i64,
    /// The next free id of `t`.
    id: i64,
}

fn leader_compacted_behind_a_snapshot() -> Compacted {
    let first = AtollNode::start_with(&["--snapshot-entries", "1100"]);
    let cluster_address = first.address().to_owned();
    let mut client = Client::connect(std::slice::from_ref(&cluster_address), config()).unwrap();
    client.open("full").unwrap();
    client
        .exec_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
        .unwrap();
    for batch in 0..12i64 {
        client
            .exec_sql(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99) \
                 INSERT INTO t SELECT ? * 100 + i, randomblob(20000) FROM n",
                &[Value::Integer(batch)],
            )
            .unwrap();
    }
    let mut acknowledged = 1200i64;
    // Past the snapshot (after 1100 to 1237 applies), which compacts the log behind it but
    // for 1024 entries.
    let mut id = 100_000;
    while snapshot_files(&first).0 == 0 || id < 101_300 {
        assert!(id < 110_000, "the leader took no snapshot");
        client
            .exec_sql("INSERT INTO t VALUES (?, x'00')", &[Value::Integer(id)])
            .unwrap();
        acknowledged += 1;
        id += 1;
    }
    Compacted {
        first,
        cluster_address,
        client,
        acknowledged,
        id,
    }
}

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

use crate::support::{free_address, wait_for, AtollCluster, AtollNode, Node};

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
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
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
    let deadline = Instant::now() + Duration::from_secs(10);
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
    let deadline = Instant::now() + Duration::from_secs(10);
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
        Duration::from_secs(20),
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

//! Log syncs off the loop thread (`node/src/log_sync.rs`), seen from outside: in-process nodes
//! on a simulated clock whose log syncs a test holds back (a [`LogSync`] that runs a request
//! only once released), real files, real loopback clients. While a sync is held the loop keeps
//! turning (it receives, executes, appends and sends), but nothing it covers counts as durable:
//! a single voter commits nothing, and followers acknowledge nothing, until it is released.
//! Snapshots too stay off the loop: no checkpoint before one, its file finished on a helper.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, Connection};
use atoll_net::peer::ClusterSecret;
use atoll_net::protocol::Value;
use atoll_node::config::NodeConfig;
use atoll_node::inputs::{Inputs, ManualClock, SeededRandom};
use atoll_node::log_sync::LogSync;
use atoll_node::{Node, StartOptions, Status};
use atoll_raft::{Configuration, LogIndex, MemberRole, NodeId, StateRole};
use atoll_storage::SyncRequest;

/// A disk the test controls: a started request runs only while `held` is false. Records the
/// last index of every request started.
struct HeldSync {
    held: Arc<AtomicBool>,
    /// Holds only the requests that close a full segment.
    hold_closes: Arc<AtomicBool>,
    started: Arc<Mutex<Vec<LogIndex>>>,
    closes: Arc<Mutex<Vec<LogIndex>>>,
    request: Option<SyncRequest>,
}

impl LogSync for HeldSync {
    fn start(&mut self, request: SyncRequest, _now: Instant) {
        assert!(self.request.is_none(), "one sync in flight at a time");
        self.started.lock().unwrap().push(request.last_index());
        if request.closes_segment() {
            self.closes.lock().unwrap().push(request.last_index());
        }
        self.request = Some(request);
    }

    fn finished(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        let closes = self.request.as_ref()?.closes_segment();
        if self.held.load(Ordering::SeqCst) || closes && self.hold_closes.load(Ordering::SeqCst) {
            return None;
        }
        let request = self.request.take()?;
        let result = request.run();
        Some((request, result))
    }

    /// A wait the loop must make (a segment's close before an install or the stop) is not
    /// held: the request runs.
    fn wait(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        let request = self.request.take()?;
        let result = request.run();
        Some((request, result))
    }

    fn due(&self) -> Option<Instant> {
        None
    }

    fn reset(&mut self) {
        self.request = None;
    }
}

/// A node's handles on its held disk.
struct Disk {
    held: Arc<AtomicBool>,
    hold_closes: Arc<AtomicBool>,
    started: Arc<Mutex<Vec<LogIndex>>>,
    closes: Arc<Mutex<Vec<LogIndex>>>,
}

impl Disk {
    fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }

    fn started(&self) -> Vec<LogIndex> {
        self.started.lock().unwrap().clone()
    }
}

fn open(data: &Path, clock: &ManualClock, seed: u64) -> (Node, Disk) {
    open_with(data, clock, seed, StartOptions::default())
}

fn open_with(data: &Path, clock: &ManualClock, seed: u64, options: StartOptions) -> (Node, Disk) {
    let disk = Disk {
        held: Arc::new(AtomicBool::new(false)),
        hold_closes: Arc::new(AtomicBool::new(false)),
        started: Arc::new(Mutex::new(Vec::new())),
        closes: Arc::new(Mutex::new(Vec::new())),
    };
    let inputs = Inputs {
        clock: Box::new(clock.clone()),
        random: Box::new(SeededRandom::new(seed)),
        log_sync: Some(Box::new(HeldSync {
            held: disk.held.clone(),
            hold_closes: disk.hold_closes.clone(),
            started: disk.started.clone(),
            closes: disk.closes.clone(),
            request: None,
        })),
        ..Inputs::production()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let node = Node::open_with(data, shutdown, options, inputs).unwrap();
    (node, disk)
}

/// Loopback addresses with ports free a moment ago (held together so that none repeats).
fn free_addresses(count: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// Turns every node, a millisecond of simulated time per round, until `done` (bounded).
fn drive(nodes: &mut [Node], clock: &ManualClock, mut done: impl FnMut(&[Node]) -> bool) {
    for _ in 0..30_000 {
        if done(nodes) {
            return;
        }
        clock.advance(Duration::from_millis(1));
        for node in nodes.iter_mut() {
            assert!(node.turn(Some(Duration::from_micros(200))).unwrap());
        }
    }
    let statuses: Vec<Status> = nodes.iter().map(Node::state).collect();
    panic!("the nodes never got there: {statuses:#?}");
}

/// A data directory at `data` for a single voter at `address`, with 64 KiB log segments.
fn init_single_voter(data: &Path, config: &NodeConfig) {
    let mut configuration = Configuration::new();
    configuration.insert(NodeId(1), config.address.clone(), MemberRole::Voter);
    atoll_node::init_member(
        atoll_storage::StdDisk::shared(),
        data,
        config,
        &ClusterSecret::generate().unwrap(),
        &configuration,
        Some(64 << 10),
    )
    .unwrap();
}

/// A client thread that creates table `t` in `database` if needed and inserts `rows`, each
/// with a random blob of `blob` bytes.
fn write_rows(
    address: &str,
    database: &'static str,
    blob: usize,
    rows: std::ops::Range<i64>,
) -> thread::JoinHandle<()> {
    let address = address.to_owned();
    thread::spawn(move || {
        let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
        connection.open(database).unwrap();
        connection
            .exec_sql(
                "CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, v)",
                &[],
            )
            .unwrap();
        let insert = format!("INSERT INTO t VALUES (?, randomblob({blob}))");
        for row in rows {
            connection
                .exec_sql(&insert, &[Value::Integer(row)])
                .unwrap();
        }
    })
}

/// The rows of table `t` in `database`, counted by a client while the nodes turn.
fn count_rows(
    nodes: &mut [Node],
    clock: &ManualClock,
    address: &str,
    database: &'static str,
) -> i64 {
    let address = address.to_owned();
    let count = thread::spawn(move || {
        let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
        connection.open(database).unwrap();
        connection.query_sql("SELECT count(*) FROM t", &[]).unwrap()
    });
    drive(nodes, clock, |_| count.is_finished());
    match count.join().unwrap().rows.as_slice() {
        [row] => match row.as_slice() {
            [Value::Integer(count)] => *count,
            other => panic!("count(*) gave {other:?}"),
        },
        other => panic!("count(*) gave {other:?}"),
    }
}

/// Turns every node `rounds` times (a millisecond each).
fn turn_for(nodes: &mut [Node], clock: &ManualClock, rounds: usize) {
    let mut left = rounds;
    drive(nodes, clock, |_| {
        left = left.saturating_sub(1);
        left == 0
    });
}

#[test]
fn test_single_voter_keeps_turning_while_its_sync_is_held() {
    // One voter: a write commits once the leader's own log holds it durably. With its sync
    // held, the loop still takes a second write (to another database, so it does not queue
    // behind the first) and appends it; neither commits nor is answered. One sync is in
    // flight meanwhile; once released, the next one covers both writes (coalesced) and both
    // are answered.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_addresses(1).remove(0);
    let config = NodeConfig::new(1, address.clone());
    atoll_node::init(&data, &config, &ClusterSecret::generate().unwrap()).unwrap();
    let clock = ManualClock::new();
    let (node, disk) = open(&data, &clock, 7);
    let mut nodes = [node];
    let schema = {
        let address = address.clone();
        thread::spawn(move || {
            for database in ["a", "b"] {
                let mut connection =
                    Connection::connect(&address, &ClientConfig::default()).unwrap();
                connection.open(database).unwrap();
                connection.exec_sql("CREATE TABLE t(v)", &[]).unwrap();
            }
        })
    };
    drive(&mut nodes, &clock, |_| schema.is_finished());
    schema.join().unwrap();
    let before = nodes[0].state();
    assert_eq!(before.commit, before.log_last, "{before:?}");

    disk.hold(true);
    let syncs_before = disk.started().len();
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|database| {
            let address = address.clone();
            thread::spawn(move || {
                let mut connection =
                    Connection::connect(&address, &ClientConfig::default()).unwrap();
                connection.open(database).unwrap();
                connection
                    .exec_sql("INSERT INTO t VALUES (1)", &[])
                    .unwrap();
            })
        })
        .collect();
    drive(&mut nodes, &clock, |nodes| {
        nodes[0].state().log_last.0 >= before.log_last.0 + 2
    });
    turn_for(&mut nodes, &clock, 50);
    let held = nodes[0].state();
    assert_eq!(held.log_last.0, before.log_last.0 + 2, "{held:?}");
    assert_eq!(
        held.commit, before.commit,
        "nothing commits before it is durable"
    );
    assert_eq!(held.applied, before.applied, "{held:?}");
    assert!(writers.iter().all(|w| !w.is_finished()), "answered early");
    let started = disk.started();
    assert_eq!(
        started.len(),
        syncs_before + 1,
        "one sync in flight: {started:?}"
    );

    disk.hold(false);
    drive(&mut nodes, &clock, |_| {
        writers.iter().all(|w| w.is_finished())
    });
    for writer in writers {
        writer.join().unwrap();
    }
    let after = nodes[0].state();
    assert_eq!(after.commit, held.log_last, "{after:?}");
    let started = disk.started();
    assert!(
        started[syncs_before..].contains(&held.log_last),
        "a sync covered both writes: {started:?}"
    );
    nodes[0].stop();
}

#[test]
fn test_followers_acknowledge_only_synced_entries_and_keep_receiving() {
    // Three voters. With both followers' syncs held, a write is appended everywhere (the
    // followers keep receiving while they sync) but cannot commit: the leader alone is no
    // quorum and no follower acknowledges an entry before its sync ends. Releasing one
    // follower's sync makes the quorum, and the write is answered.
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("n{i}"))).collect();
    let addresses = free_addresses(3);
    let secret = ClusterSecret::generate().unwrap();
    let mut configuration = Configuration::new();
    for (i, address) in addresses.iter().enumerate() {
        configuration.insert(NodeId(i as u64 + 1), address.clone(), MemberRole::Voter);
    }
    let first = NodeConfig::new(1, addresses[0].clone());
    for (i, address) in addresses.iter().enumerate() {
        let mut config = NodeConfig::new(i as u64 + 1, address.clone());
        config.cluster_id = first.cluster_id;
        atoll_node::init_member(
            atoll_storage::StdDisk::shared(),
            &dirs[i],
            &config,
            &secret,
            &configuration,
            None,
        )
        .unwrap();
    }
    let clock = ManualClock::new();
    let (mut nodes, disks): (Vec<Node>, Vec<Disk>) = (0..3)
        .map(|i| open(&dirs[i], &clock, 40 + i as u64))
        .unzip();
    let cluster = addresses.clone();
    let schema = thread::spawn(move || {
        let mut client = Client::connect(&cluster, ClientConfig::default()).unwrap();
        client.open("f").unwrap();
        client.exec_sql("CREATE TABLE t(v)", &[]).unwrap();
    });
    drive(&mut nodes, &clock, |_| schema.is_finished());
    schema.join().unwrap();
    drive(&mut nodes, &clock, |nodes| {
        let states: Vec<Status> = nodes.iter().map(Node::state).collect();
        states.iter().all(|s| s.applied == states[0].commit)
    });
    let leader = nodes
        .iter()
        .position(|n| n.state().role == StateRole::Leader)
        .expect("a leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let before = nodes[leader].state();
    for &f in &followers {
        disks[f].hold(true);
    }

    let cluster = addresses.clone();
    let writer = thread::spawn(move || {
        let mut client = Client::connect(&cluster, ClientConfig::default()).unwrap();
        client.open("f").unwrap();
        client
            .exec_sql("INSERT INTO t VALUES (?)", &[Value::Integer(1)])
            .unwrap();
    });
    let target = LogIndex(before.log_last.0 + 1);
    drive(&mut nodes, &clock, |nodes| {
        nodes.iter().all(|n| n.state().log_last >= target)
    });
    turn_for(&mut nodes, &clock, 50);
    let states: Vec<Status> = nodes.iter().map(Node::state).collect();
    assert!(states[leader].commit < target, "{states:#?}");
    assert!(!writer.is_finished(), "answered before a quorum synced it");
    assert_eq!(states[leader].role, StateRole::Leader, "{states:#?}");

    disks[followers[0]].hold(false);
    drive(&mut nodes, &clock, |_| writer.is_finished());
    writer.join().unwrap();
    let state = nodes[leader].state();
    assert!(state.commit >= target, "{state:?}");
    disks[followers[1]].hold(false);
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn test_failed_sync_stops_the_node_unanswered() {
    // A sync that fails on the sync thread (EIO) is fatal, as a failed sync on the loop was:
    // the page cache cannot be trusted afterwards. The turn that learns it returns the error,
    // and the write it covered is never answered as a success.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_addresses(1).remove(0);
    let config = NodeConfig::new(1, address.clone());
    atoll_node::init(&data, &config, &ClusterSecret::generate().unwrap()).unwrap();
    let clock = ManualClock::new();
    let fail = Arc::new(AtomicBool::new(false));
    let inputs = Inputs {
        clock: Box::new(clock.clone()),
        random: Box::new(SeededRandom::new(9)),
        log_sync: Some(Box::new(FailingSync {
            fail: fail.clone(),
            request: None,
        })),
        ..Inputs::production()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let node = Node::open_with(&data, shutdown, StartOptions::default(), inputs).unwrap();
    let mut nodes = [node];
    let schema = {
        let address = address.clone();
        thread::spawn(move || {
            let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
            connection.open("x").unwrap();
            connection.exec_sql("CREATE TABLE t(v)", &[]).unwrap();
        })
    };
    drive(&mut nodes, &clock, |_| schema.is_finished());
    schema.join().unwrap();
    let before = nodes[0].state();
    fail.store(true, Ordering::SeqCst);
    let writer = thread::spawn(move || {
        let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
        connection.open("x").unwrap();
        connection.exec_sql("INSERT INTO t VALUES (1)", &[])
    });
    let mut error = None;
    for _ in 0..10_000 {
        clock.advance(Duration::from_millis(1));
        match nodes[0].turn(Some(Duration::from_micros(200))) {
            Ok(running) => assert!(running),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let error = error.expect("the failed sync stops the node");
    assert!(error.contains("syncing the log"), "{error}");
    assert!(error.contains("EIO"), "{error}");
    assert_eq!(nodes[0].state().commit, before.commit);
    let [node] = nodes;
    drop(node);
    assert!(
        writer.join().unwrap().is_err(),
        "the write was not answered as done"
    );
}

/// A disk whose syncs fail (EIO) once `fail` is set.
struct FailingSync {
    fail: Arc<AtomicBool>,
    request: Option<SyncRequest>,
}

impl LogSync for FailingSync {
    fn start(&mut self, request: SyncRequest, _now: Instant) {
        self.request = Some(request);
    }

    fn finished(&mut self, _now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        let request = self.request.take()?;
        let result = if self.fail.load(Ordering::SeqCst) {
            Err(io::Error::other("EIO"))
        } else {
            request.run()
        };
        Some((request, result))
    }

    fn wait(&mut self, now: Instant) -> Option<(SyncRequest, io::Result<()>)> {
        self.finished(now)
    }

    fn due(&self) -> Option<Instant> {
        None
    }

    fn reset(&mut self) {
        self.request = None;
    }
}

#[test]
fn test_a_full_segment_closes_off_the_loop_and_the_writes_wait_for_it() {
    // One voter, 64 KiB log segments, 8 KiB rows: a segment fills every few writes. The first
    // write that does not fit is handed back to raft and the next sync request closes the
    // segment (flush, rename, directory sync). With that request held the loop keeps turning,
    // the write waits uncommitted and the log does not grow; released, the write lands in the
    // next segment and is answered. Every write is answered, every segment but
    // the open one is closed under its `FIRST-LAST` name, and a reopen finds every row.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_addresses(1).remove(0);
    init_single_voter(&data, &NodeConfig::new(1, address.clone()));
    let clock = ManualClock::new();
    let options = StartOptions {
        log_segment_bytes: Some(64 << 10),
        ..StartOptions::default()
    };
    let (node, disk) = open_with(&data, &clock, 11, options);
    let mut nodes = [node];
    let write = |rows| write_rows(&address, "big", 8192, rows);
    let first = write(0..20);
    drive(&mut nodes, &clock, |_| first.is_finished());
    first.join().unwrap();
    let closes = disk.closes.lock().unwrap().clone();
    assert!(
        closes.len() >= 2,
        "segments closed by sync requests: {closes:?}"
    );

    // Hold the next close, with a writer waiting behind it.
    disk.hold_closes.store(true, Ordering::SeqCst);
    let closes_before = closes.len();
    let second = write(20..40);
    drive(&mut nodes, &clock, |_| {
        disk.closes.lock().unwrap().len() > closes_before
    });
    let held = nodes[0].state();
    turn_for(&mut nodes, &clock, 200);
    let still = nodes[0].state();
    assert_eq!(
        still.log_last, held.log_last,
        "nothing appended while the close is out"
    );
    assert!(
        !second.is_finished(),
        "a write was answered before its entry was durable"
    );
    disk.hold_closes.store(false, Ordering::SeqCst);
    drive(&mut nodes, &clock, |_| second.is_finished());
    second.join().unwrap();
    let done = nodes[0].state();
    assert!(done.log_last > held.log_last, "{done:?}");
    let segments: Vec<String> = std::fs::read_dir(data.join("raft"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains('-') && !n.ends_with(".tmp"))
        .collect();
    let closed = segments.iter().filter(|n| !n.starts_with("open-")).count();
    assert!(closed > closes_before, "{segments:?}");

    // Reopened, every row is there.
    let [node] = nodes;
    drop(node);
    let (node, _disk) = open_with(
        &data,
        &clock,
        12,
        StartOptions {
            log_segment_bytes: Some(64 << 10),
            ..StartOptions::default()
        },
    );
    let mut nodes = [node];
    assert_eq!(count_rows(&mut nodes, &clock, &address, "big"), 40);
}

#[test]
fn test_a_snapshot_waits_for_no_checkpoint_and_the_log_keeps_what_recovery_needs() {
    // One voter snapshotting every 32 entries (of a database larger than what a turn copies),
    // compacting right behind each snapshot. A client
    // holds a read transaction: no checkpoint can pass it. Snapshots are still taken (from the
    // databases' files and WALs, without a checkpoint on the loop), but the log is not
    // compacted past the checkpoint, so that a restart replays the entries after it instead
    // of installing the node's own snapshot; and every row is there.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = free_addresses(1).remove(0);
    let mut config = NodeConfig::new(1, address.clone());
    config.snapshot_entries = 32;
    init_single_voter(&data, &config);
    let clock = ManualClock::new();
    let options = || StartOptions {
        log_segment_bytes: Some(64 << 10),
        snapshot_trailing_entries: Some(0),
        ..StartOptions::default()
    };
    let (node, _disk) = open_with(&data, &clock, 21, options());
    let mut nodes = [node];
    let write = |rows| write_rows(&address, "db", 9000, rows);
    let first = write(0..40);
    drive(&mut nodes, &clock, |_| first.is_finished());
    first.join().unwrap();

    // A reader opens a transaction and holds it.
    let (began_tx, began) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let address = address.clone();
        thread::spawn(move || {
            let mut connection = Connection::connect(&address, &ClientConfig::default()).unwrap();
            connection.open("db").unwrap();
            connection.exec_sql("BEGIN", &[]).unwrap();
            let rows = connection.query_sql("SELECT count(*) FROM t", &[]).unwrap();
            began_tx.send(rows.rows).unwrap();
            let _ = release_rx.recv();
            // The node may be gone by now (the test crashes it).
            let _ = connection.exec_sql("COMMIT", &[]);
        })
    };
    let mut seen = None;
    drive(&mut nodes, &clock, |_| {
        seen = began.try_recv().ok();
        seen.is_some()
    });
    assert_eq!(seen.unwrap(), vec![vec![Value::Integer(40)]]);
    let held_at = nodes[0].state();
    let second = write(40..200);
    drive(&mut nodes, &clock, |_| second.is_finished());
    second.join().unwrap();
    // The snapshots finish on a helper thread: a few more turns see them.
    let taken = held_at.snapshots_taken;
    drive(&mut nodes, &clock, |nodes| {
        nodes[0].state().snapshots_taken >= taken + 3
    });
    let crashed = nodes[0].state();
    let snapshot = crashed.snapshot.expect("a snapshot");
    assert!(snapshot > held_at.applied, "{held_at:?} {crashed:?}");
    assert!(
        crashed.log_first <= held_at.applied.next(),
        "the log was compacted past the reader's checkpoint: {held_at:?} {crashed:?}"
    );

    // A crash (no clean stop, which would checkpoint): the restart replays the log after the
    // checkpoint, behind the snapshot, and serves every row.
    let [node] = nodes;
    drop(node);
    release.send(()).unwrap();
    reader.join().unwrap();
    let (node, _disk) = open_with(&data, &clock, 22, options());
    let reopened = node.state();
    assert_eq!(reopened.snapshot, Some(snapshot));
    assert!(
        reopened.applied < snapshot,
        "the snapshot was installed instead of the log replayed: {reopened:?}"
    );
    let mut nodes = [node];
    assert_eq!(count_rows(&mut nodes, &clock, &address, "db"), 200);

    // With no reader left, the checkpoints that follow each snapshot catch up with it (far
    // fewer frames than a checkpoint of its own needs), and the log is compacted past it while
    // the writes go on (not only once the node idles, which checkpoints everything).
    let third = write(200..300);
    drive(&mut nodes, &clock, |nodes| {
        third.is_finished() || nodes[0].state().log_first > snapshot
    });
    let state = nodes[0].state();
    assert!(state.log_first > snapshot, "{state:?}");
    drive(&mut nodes, &clock, |_| third.is_finished());
    third.join().unwrap();

    // The files behind are deleted off the loop (the stop waits for that): no closed segment
    // wholly before the log's first entry, and one snapshot file.
    let state = nodes[0].state();
    let [mut node] = nodes;
    node.stop();
    drop(node);
    let names = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    for name in names(data.join("raft")) {
        if let Some((_, last)) = name.split_once('-').filter(|_| !name.starts_with("open-")) {
            if let Ok(last) = last.parse::<u64>() {
                assert!(last >= state.log_first.0, "{name} left behind: {state:?}");
            }
        }
    }
    let snapshots = names(data.join("raft").join("snapshots"));
    let finished: Vec<&String> = snapshots.iter().filter(|n| !n.ends_with(".tmp")).collect();
    assert_eq!(finished.len(), 1, "{snapshots:?}");
}

//! Three atoll nodes made from the command line (`atoll init` + two `atoll join`), written to
//! through the dqlite shell on any node; a failover under a write loop; a restarted node that
//! catches up.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError};
use atoll_net::protocol::Value;

use crate::support::{
    atoll, free_address, require, run_command, wait_for, AtollCluster, AtollNode, LiveShell, Node,
    READY_TIMEOUT,
};

fn dqlite(address: &str, sql: &str) -> String {
    let mut command = Command::new("dqlite");
    command.args(["-s", address, "app", sql]);
    run_command(command, None).ok().to_owned()
}

/// `atoll init` and two `atoll join`s from the command line make a cluster of three voters
/// (automatic roles promote the joined spares). Writes through the dqlite shell on any node
/// (followers name the leader, the shell follows) reach every node: once all have applied the
/// same index, each node's own DUMP is byte-identical, and `atoll cluster` shows that index.
#[test]
fn test_three_nodes_from_the_cli_hold_identical_databases() {
    require("dqlite");
    let addresses = [free_address(), free_address(), free_address()];
    let mut first = AtollNode::init(&addresses[0], &[]);
    first.restart();
    let mut nodes = vec![first];
    for address in &addresses[1..] {
        let mut node = AtollNode::prepare_join(address, &addresses[0], &[]);
        node.spawn();
        nodes.push(node);
    }
    let cluster = AtollCluster { nodes };
    cluster.wait_roles(3, None);

    dqlite(
        &addresses[1],
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB, n INTEGER)",
    );
    for (round, address) in addresses.iter().cycle().take(9).enumerate() {
        dqlite(
            address,
            &format!(
                "INSERT INTO kv VALUES ('key{round}', randomblob(3000), {round}); \
                 UPDATE kv SET n = n + 1"
            ),
        );
    }
    let out = dqlite(&addresses[2], "SELECT count(*), sum(n) FROM kv");
    assert!(out.contains("9|81"), "{out}");

    let applied = cluster.wait_in_sync();
    let images: Vec<Vec<u8>> = (0..3).map(|i| cluster.dump(i, "app")).collect();
    assert!(images[0].len() >= 4 * 4096);
    assert!(
        images[0] == images[1] && images[1] == images[2],
        "dumps differ"
    );

    // The listing shows every node reachable, at the same applied index.
    let table = atoll(&["cluster", "--cluster", &addresses[2]]);
    let text = table.ok();
    for address in &addresses {
        let line = text
            .lines()
            .find(|l| l.contains(address.as_str()))
            .unwrap_or_else(|| panic!("{address} not listed:\n{text}"));
        assert!(line.contains("| voter "), "{line}");
        assert!(line.contains(&format!("| {applied} ")), "{line}");
    }
    // The dqlite shell's `.cluster` lists the three voters too.
    let listed = dqlite(&addresses[0], ".cluster");
    for address in &addresses {
        assert!(listed.contains(address.as_str()), "{listed}");
    }
}

/// Writes acknowledged so far, by a writer thread.
pub(crate) struct Writer {
    acknowledged: Arc<Mutex<Vec<i64>>>,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<String>>,
}

/// A client inserting increasing keys in a loop until stopped. An outcome-unknown write (the
/// leader died while it ran) is retried with the same key (`INSERT OR IGNORE`), so every key
/// it reports acknowledged is one the cluster confirmed. Returns the errors it saw.
pub(crate) fn start_writer(addresses: Vec<String>) -> Writer {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (acks, stopped) = (acknowledged.clone(), stop.clone());
    let handle = thread::spawn(move || {
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            leader_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        let mut client = Client::connect(&addresses, config).expect("connect");
        client.open("app").expect("open");
        client
            .exec_sql("CREATE TABLE IF NOT EXISTS w (k INTEGER PRIMARY KEY)", &[])
            .expect("create");
        let mut errors = Vec::new();
        let mut key = 0i64;
        while !stopped.load(Ordering::SeqCst) {
            match client.exec_sql("INSERT OR IGNORE INTO w VALUES (?)", &[Value::Integer(key)]) {
                Ok(_) => {
                    acks.lock().unwrap().push(key);
                    key += 1;
                }
                Err(e) => {
                    errors.push(e.to_string());
                    if errors.len() > 1000 {
                        break;
                    }
                    if !matches!(e, ClientError::OutcomeUnknown(_)) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        errors
    });
    Writer {
        acknowledged,
        stop,
        handle,
    }
}

impl Writer {
    pub(crate) fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until `more` writes past the current count are acknowledged.
    pub(crate) fn wait_progress(&self, more: usize, what: &str) {
        let target = self.count() + more;
        wait_for(what, READY_TIMEOUT, || {
            (self.count() >= target).then_some(())
        });
    }

    pub(crate) fn finish(self) -> (Vec<i64>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.handle.join().expect("writer thread");
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        (acknowledged, errors)
    }
}

/// Every acknowledged key is in table `w` on node `index`.
pub(crate) fn assert_all_present(cluster: &AtollCluster, index: usize, acknowledged: &[i64]) {
    let mut connection = atoll_net::client::Connection::connect(
        cluster.nodes[index].address(),
        &ClientConfig::default(),
    )
    .unwrap();
    connection
        .open_with_flags("app", atoll_net::client::OPEN_FOLLOWER_READS)
        .unwrap();
    let rows = connection
        .query_sql("SELECT k FROM w ORDER BY k", &[])
        .unwrap();
    let present: std::collections::HashSet<i64> = rows
        .rows
        .iter()
        .map(|r| match r[0] {
            Value::Integer(k) => k,
            ref other => panic!("{other:?}"),
        })
        .collect();
    let missing: Vec<&i64> = acknowledged
        .iter()
        .filter(|k| !present.contains(k))
        .collect();
    assert!(missing.is_empty(), "acknowledged keys lost: {missing:?}");
}

/// kill -9 of the leader while a client writes in a loop: the others elect a leader, the
/// client carries on there (leader discovery; the write in flight is retried as an unknown
/// outcome), no acknowledged write is lost, and the killed node, restarted, catches up to the
/// same database. An `atoll shell --cluster A,B,C` session open across the failover carries on
/// too: its next query runs on the new leader.
#[test]
fn test_failover_under_a_write_loop_loses_no_acknowledged_write() {
    let mut cluster = AtollCluster::start(3, &[], 3);
    let writer = start_writer(cluster.running());
    writer.wait_progress(50, "writes before the failover");
    let mut shell = LiveShell::start(&cluster.addresses(), "app", &["-f", "csv"]);
    shell.send("SELECT count(*) > 0 AS some FROM w;");
    shell.expect_stdout("some");
    assert_eq!(shell.expect_stdout("1"), ["1"]);
    let old = cluster.leader();
    let killed_at = Instant::now();
    cluster.nodes[old].kill();
    writer.wait_progress(50, "writes after the failover");
    let failover = killed_at.elapsed();
    let new = cluster.leader();
    assert_ne!(new, old);
    let (acknowledged, errors) = writer.finish();
    assert!(
        errors.len() <= 5,
        "a failover costs a retry or two, not {} errors: {errors:?}",
        errors.len()
    );
    eprintln!("failover with a busy writer: {failover:?}; errors: {errors:?}");
    assert_all_present(&cluster, new, &acknowledged);
    // The shell's connection went with the old leader; a query is safe to run again, so the
    // shell finds the new leader and answers; a write after it goes there too.
    shell.send("SELECT count(*) > 100 AS many FROM w;");
    shell.expect_stdout("many");
    assert_eq!(shell.expect_stdout("1"), ["1"]);
    shell.send("INSERT INTO w VALUES (-7);");
    shell.send("SELECT count(*) AS seven FROM w WHERE k = -7;");
    shell.expect_stdout("seven");
    assert_eq!(shell.expect_stdout("1"), ["1"]);
    assert!(shell.finish().success());

    cluster.nodes[old].spawn();
    let applied = cluster.wait_in_sync();
    assert!(applied > 100);
    assert_all_present(&cluster, old, &acknowledged);
    assert_eq!(cluster.dump(old, "app"), cluster.dump(new, "app"));
}

/// SIGUSR1 to a node: `DATA_DIR/timings` (see `node/src/timings.rs`) holds where the writes
/// since the last dump spent their time; the leader executed, committed and applied them, a
/// follower appended, synced and applied them; a second dump starts from zero.
#[test]
fn test_sigusr1_writes_the_loop_timings_and_resets_them() {
    let cluster = AtollCluster::start(3, &[], 3);
    let mut client = cluster.client();
    client.open("timed").expect("open");
    client
        .exec_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", &[])
        .expect("create");
    for key in 0..20 {
        client
            .exec_sql(
                "INSERT INTO t VALUES (?, ?)",
                &[Value::Integer(key), Value::Text("x".repeat(1000))],
            )
            .expect("insert");
    }
    let leader = cluster.leader();
    cluster.wait_in_sync();
    let dump = |index: usize| -> Vec<(String, Vec<u64>)> {
        let node = &cluster.nodes[index];
        let path = node.data_dir().join("timings");
        let _ = std::fs::remove_file(&path);
        let status = Command::new("kill")
            .args(["-USR1", &node.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let text = wait_for("the timings file", Duration::from_secs(10), || {
            std::fs::read_to_string(&path).ok()
        });
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let mut words: Vec<&str> = line.split(' ').collect();
                let name = words.remove(0).to_owned();
                if name == "turn_longest" {
                    // TOTAL EVENTS PERSIST SYNC APPLY HANDLE AFTER, the longest step after
                    // raft's readies by name, and its time.
                    assert_eq!(words.len(), 9, "{line}");
                    let step = words.remove(7);
                    let steps = [
                        "-",
                        "compact",
                        "roles+repair",
                        "snapshot",
                        "idle-checkpoint",
                        "memory",
                        "next-segment",
                    ];
                    assert!(steps.contains(&step), "{line}");
                }
                let numbers = words.iter().map(|w| w.parse().expect("a number")).collect();
                (name, numbers)
            })
            .collect()
    };
    let count = |timings: &[(String, Vec<u64>)], phase: &str| -> u64 {
        let (_, numbers) = timings.iter().find(|(n, _)| n == phase).expect(phase);
        // COUNT SUM MAX and 32 buckets adding up to COUNT.
        assert_eq!(numbers.len(), 3 + 32, "{phase}: {numbers:?}");
        assert_eq!(numbers[3..].iter().sum::<u64>(), numbers[0], "{phase}");
        assert!(numbers[2] <= numbers[1], "{phase}: max above the sum");
        numbers[0]
    };
    let first = dump(leader);
    assert!(count(&first, "execute") >= 21, "{first:?}");
    for phase in ["batch", "append", "sync", "commit", "quorum"] {
        assert!(count(&first, phase) >= 1, "{phase}: {first:?}");
    }
    assert!(count(&first, "apply") >= 21, "{first:?}");
    assert!(count(&first, "answer") >= 21, "{first:?}");
    assert!(count(&first, "turn") >= 21, "{first:?}");
    let longest: Vec<_> = first.iter().filter(|(n, _)| n == "turn_longest").collect();
    assert!(!longest.is_empty() && longest.len() <= 8, "{longest:?}");
    assert!(
        longest.windows(2).all(|w| w[0].1[0] >= w[1].1[0]),
        "longest first"
    );
    // Handling the events and the work after the readies fit in the turn.
    assert!(
        longest
            .iter()
            .all(|(_, n)| n[5] <= n[0] && n[6] <= n[0] && n[7] <= n[6]),
        "{longest:?}"
    );
    // Nothing written since: the counters started again from zero.
    let second = dump(leader);
    assert_eq!(count(&second, "execute"), 0, "{second:?}");
    assert_eq!(count(&second, "commit"), 0, "{second:?}");
    let follower = (leader + 1) % 3;
    let timings = dump(follower);
    assert_eq!(count(&timings, "execute"), 0, "{timings:?}");
    assert_eq!(count(&timings, "commit"), 0, "{timings:?}");
    assert!(count(&timings, "append") >= 1, "{timings:?}");
    assert!(count(&timings, "sync") >= 1, "{timings:?}");
    assert!(count(&timings, "apply") >= 21, "{timings:?}");
    // The node still serves.
    client
        .exec_sql("INSERT INTO t VALUES (100, 'after')", &[])
        .expect("insert after the dumps");
}

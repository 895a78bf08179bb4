//! Whole-cluster benchmarks on real processes: `failover` (kill -9 of the leader to the next
//! acknowledged write, repeated) and `kv` (dqlite-benchmark's kvwrite workload), each against
//! atoll and, for the same workload in the same run, dqlite (Debian's go-dqlite: `dqlite-demo`
//! for failover, `dqlite-benchmark` for kv).
//!
//! The `atoll` binary is the one built beside this one (`target/<profile>/atoll`), built with
//! `cargo build -p atoll` first if missing, or the one `ATOLL_BIN` names. `ATOLL_BENCH_KEEP=1`
//! keeps the nodes' data directories and logs.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError, Connection, OPEN_FOLLOWER_READS};
use atoll_net::protocol::{Role, Value};
use atoll_net::tls::TlsContext;

use crate::timings::Breakdown;
use crate::{median, plot, Options, Samples};

/// `count` distinct free loopback addresses: every listener is held until all are picked, so
/// the kernel cannot hand the same released port out twice.
fn free_addresses(count: usize) -> Result<Vec<String>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.to_string())
                .map_err(|e| format!("free port: {e}"))
        })
        .collect()
}

/// How long a cluster has to come up, a node to catch up, a failover to happen.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn free_address() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(listener
        .local_addr()
        .map_err(|e| format!("free port: {e}"))?
        .to_string())
}

/// Polls `check` every 5 ms until it answers or `WAIT_MAX` passes.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The `atoll` binary to run.
fn atoll_binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("ATOLL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating atoll-bench: {e}"))?;
    let mut binary = exe.with_file_name("atoll");
    // A test binary lives in `target/<profile>/deps`, beside no `atoll`.
    if exe.parent().and_then(Path::file_name) == Some(std::ffi::OsStr::new("deps")) {
        if let Some(profile) = exe.parent().and_then(Path::parent) {
            binary = profile.join("atoll");
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Inside the source tree, always let cargo bring the binary up to date (a no-op when it is):
    // `cargo run -p atoll-bench` does not rebuild `atoll`, and a stale one measures old code.
    if root.join("Cargo.toml").exists() || !binary.exists() {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "atoll"]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        eprintln!("building atoll ({command:?})");
        let status = command
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() || !binary.exists() {
            return Err(format!(
                "cannot build {} (set ATOLL_BIN to an atoll binary)",
                binary.display()
            ));
        }
    }
    Ok(binary)
}

/// Resident set size of process `pid` in KiB (Linux `/proc`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        leader_timeout: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..ClientConfig::default()
    }
}

/// Which server a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Atoll,
    DqliteDemo,
}

/// One node process.
struct NodeProcess {
    address: String,
    data: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProcess {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local cluster of real processes in a temporary directory (removed on drop).
struct LocalCluster {
    server: Server,
    binary: PathBuf,
    nodes: Vec<NodeProcess>,
    dir: tempfile::TempDir,
    /// The cluster certificate (`atoll init --tls`), when the nodes serve TLS.
    tls: Option<TlsContext>,
}

impl LocalCluster {
    /// `count` atoll nodes (`init` + `join`s, `settings` given to each) or dqlite-demo nodes,
    /// started; returns once `count.min(3)` are voters.
    /// With `tls`, the first node is made with `atoll init --tls` and the others join with its
    /// certificate files; clients present them.
    fn start(
        server: Server,
        count: usize,
        settings: &[String],
        tls: bool,
    ) -> Result<LocalCluster, String> {
        let binary = match server {
            Server::Atoll => atoll_binary()?,
            Server::DqliteDemo => PathBuf::from("dqlite-demo"),
        };
        let mut dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        if std::env::var_os("ATOLL_BENCH_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the nodes' directory {}", dir.path().display());
        }
        let mut cluster = LocalCluster {
            server,
            binary,
            nodes: Vec::new(),
            dir,
            tls: None,
        };
        for index in 0..count {
            let address = free_address()?;
            let data = cluster.dir.path().join(format!("node{}", index + 1));
            let log = cluster.dir.path().join(format!("node{}.log", index + 1));
            if server == Server::Atoll {
                let data_text = data.to_string_lossy().into_owned();
                let mut args: Vec<String> = if index == 0 {
                    vec!["init".into()]
                } else {
                    // The join token lives with the first node: the join file keeps it off the
                    // command line.
                    vec![
                        "join".into(),
                        "--cluster".into(),
                        cluster.nodes[0].address.clone(),
                        "--join-token-file".into(),
                        cluster
                            .dir
                            .path()
                            .join("join.token")
                            .to_string_lossy()
                            .into_owned(),
                    ]
                };
                args.extend([
                    "--data-dir".into(),
                    data_text,
                    "--address".into(),
                    address.clone(),
                ]);
                args.extend(settings.iter().cloned());
                if tls && index == 0 {
                    args.push("--tls".into());
                } else if tls {
                    let first = &cluster.nodes[0].data;
                    for (flag, file) in
                        [("--tls-cert", "cluster.crt"), ("--tls-key", "cluster.key")]
                    {
                        args.push(flag.into());
                        args.push(first.join(file).to_string_lossy().into_owned());
                    }
                }
                let output = Command::new(&cluster.binary)
                    .args(&args)
                    .output()
                    .map_err(|e| format!("running atoll {}: {e}", args[0]))?;
                if !output.status.success() {
                    return Err(format!(
                        "atoll {} failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&output.stderr)
                    ));
                }
                if index == 0 {
                    let token = Command::new(&cluster.binary)
                        .args(["token", "--data-dir"])
                        .arg(&data)
                        .output()
                        .map_err(|e| format!("running atoll token: {e}"))?;
                    if !token.status.success() {
                        return Err(format!(
                            "atoll token failed: {}",
                            String::from_utf8_lossy(&token.stderr)
                        ));
                    }
                    let path = cluster.dir.path().join("join.token");
                    fs::write(&path, &token.stdout)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if tls {
                        let context = TlsContext::load(
                            &data.join("cluster.crt"),
                            &data.join("cluster.key"),
                            None,
                        )
                        .map_err(|e| format!("TLS: {e}"))?;
                        cluster.tls = Some(context);
                    }
                }
            } else {
                fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            }
            cluster.nodes.push(NodeProcess {
                address,
                data,
                child: None,
                log,
            });
            cluster.spawn(index)?;
            if index == 0 {
                let first = cluster.nodes[0].address.clone();
                wait_for("the first node to lead", || {
                    let mut connection = Connection::connect(&first, &cluster.config()).ok()?;
                    matches!(connection.leader(), Ok(Some((_, ref l))) if *l == first).then_some(())
                })?;
            }
        }
        let voters = count.min(3);
        if server == Server::DqliteDemo {
            // dqlite-demo joins nodes as spares and its role management is slow: promote them.
            let mut client = Client::connect(&cluster.addresses(), cluster.config())
                .map_err(|e| format!("connecting: {e}"))?;
            let nodes = client.cluster().map_err(|e| format!("CLUSTER: {e}"))?;
            for node in nodes
                .iter()
                .filter(|n| n.role != Some(Role::Voter))
                .take(voters - 1)
            {
                let _ = client.assign(node.id, Role::Voter);
            }
        }
        wait_for(&format!("{voters} voters"), || {
            let mut client = Client::connect(&cluster.addresses(), cluster.config()).ok()?;
            let nodes = client.cluster().ok()?;
            (nodes.len() == count
                && nodes.iter().filter(|n| n.role == Some(Role::Voter)).count() == voters)
                .then_some(())
        })?;
        Ok(cluster)
    }

    /// The client configuration for this cluster (TLS when it serves TLS).
    fn config(&self) -> ClientConfig {
        ClientConfig {
            tls: self.tls.clone(),
            ..client_config()
        }
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let node = &self.nodes[index];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let mut command = Command::new(&self.binary);
        match self.server {
            Server::Atoll => {
                command
                    .args(["start", "--data-dir"])
                    .arg(&node.data)
                    .env("RUST_LOG", "info");
            }
            Server::DqliteDemo => {
                let api = free_address()?;
                command
                    .args(["--db", &node.address, "--api", &api, "-D"])
                    .arg(&node.data);
                if index > 0 {
                    command.args(["--join", &self.nodes[0].address]);
                }
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    fn running(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.address.clone())
            .collect()
    }

    /// The index of the node the running nodes name as leader.
    fn leader(&self) -> Result<usize, String> {
        wait_for("a leader", || {
            let mut client = Client::connect(&self.running(), self.config()).ok()?;
            let (_, address) = client.leader().ok()??;
            self.nodes.iter().position(|n| n.address == address)
        })
    }

    /// Waits until node `index` has applied what node `leader` has (atoll), or is listed
    /// back and answers (dqlite: no applied index on its protocol).
    fn wait_caught_up(&self, index: usize, leader: usize) -> Result<(), String> {
        let applied = |address: &str| {
            let mut connection = Connection::connect_atoll(address, &self.config()).ok()??;
            connection.describe_v1().ok().map(|m| m.applied_index)
        };
        match self.server {
            Server::Atoll => wait_for("the restarted node to catch up", || {
                let target = applied(&self.nodes[leader].address)?;
                (applied(&self.nodes[index].address)? >= target).then_some(())
            }),
            Server::DqliteDemo => wait_for("the restarted node to answer", || {
                let mut connection =
                    Connection::connect(&self.nodes[index].address, &self.config()).ok()?;
                connection.leader().ok().flatten().map(|_| ())
            }),
        }
    }

    /// The highest Raft term among the atoll nodes (each election raises it).
    fn term(&self) -> Result<u64, String> {
        let mut term = 0;
        for node in &self.nodes {
            let mut connection = Connection::connect_atoll(&node.address, &self.config())
                .map_err(|e| format!("{}: {e}", node.address))?
                .ok_or_else(|| format!("{} is not an atoll node", node.address))?;
            let metadata = connection
                .describe_v1()
                .map_err(|e| format!("{}: {e}", node.address))?;
            term = term.max(metadata.term);
        }
        Ok(term)
    }

    /// Asks every atoll node for its loop timings since the last ask (SIGUSR1, then its
    /// `DATA_DIR/timings`), in node order.
    fn timings(&self) -> Result<Vec<Breakdown>, String> {
        let mut all = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let Some(child) = &node.child else {
                all.push(Breakdown::default());
                continue;
            };
            let path = node.data.join("timings");
            let _ = fs::remove_file(&path);
            let status = Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status()
                .map_err(|e| format!("kill -USR1: {e}"))?;
            if !status.success() {
                return Err(format!("kill -USR1 {} failed", child.id()));
            }
            let text = wait_for("the node's timings", || fs::read_to_string(&path).ok())?;
            all.push(Breakdown::parse(&text)?);
        }
        Ok(all)
    }

    /// RSS of every running node, in MiB.
    fn rss_mib(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref())
            .filter_map(|c| rss_kib(c.id()))
            .map(|kib| kib as f64 / 1024.0)
            .collect()
    }
}

/// A client writing in a loop, recording when each acknowledged write was sent and answered.
struct LoopWriter {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(Instant, Instant)>>>,
    handle: thread::JoinHandle<Result<(), String>>,
}

fn start_loop_writer(addresses: Vec<String>) -> LoopWriter {
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (stopped, acks) = (stop.clone(), acknowledged.clone());
    let handle = thread::spawn(move || {
        let mut client =
            Client::connect(&addresses, client_config()).map_err(|e| format!("connect: {e}"))?;
        client.open("bench").map_err(|e| format!("open: {e}"))?;
        client
            .exec_sql("CREATE TABLE IF NOT EXISTS f (k INTEGER PRIMARY KEY)", &[])
            .map_err(|e| format!("create: {e}"))?;
        let mut key = 0i64;
        while !stopped.load(Ordering::SeqCst) {
            let sent = Instant::now();
            match client.exec_sql("INSERT OR IGNORE INTO f VALUES (?)", &[Value::Integer(key)]) {
                Ok(_) => {
                    acks.lock().expect("acks").push((sent, Instant::now()));
                    key += 1;
                }
                Err(ClientError::NoLeader { .. }) => {}
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(())
    });
    LoopWriter {
        stop,
        acknowledged,
        handle,
    }
}

impl LoopWriter {
    /// The answer to the first write sent after `instant` (an answer arriving just after a
    /// kill to a write sent before it was sent by the dead leader: it does not count).
    fn first_ack_after(&self, instant: Instant) -> Option<Instant> {
        let acks = self.acknowledged.lock().expect("acks");
        acks.iter()
            .rev()
            .take_while(|(sent, _)| *sent > instant)
            .last()
            .map(|(_, acked)| *acked)
    }

    fn acks(&self) -> usize {
        self.acknowledged.lock().expect("acks").len()
    }

    fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| "writer panicked".to_owned())?
    }
}

fn number<T: std::str::FromStr>(options: &Options, name: &str, default: T) -> Result<T, String> {
    match options.value(name) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} {text}: not a valid number")),
        None => Ok(default),
    }
}

/// Flushes what earlier runs left in the page cache (`sync`), so that their writeback does not
/// slow the next run's fsyncs: each system starts from a quiet disk.
fn settle_disk() {
    if let Err(e) = Command::new("sync").status() {
        eprintln!("sync: {e}");
    }
}

/// The atoll timing flags given to the suite, passed on to `atoll init` and `atoll join`.
fn timing_settings(options: &Options) -> Vec<String> {
    let mut settings = Vec::new();
    for flag in ["--heartbeat-ms", "--election-timeout-ms", "--tick-ms"] {
        if let Some(value) = options.value(flag) {
            settings.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    settings
}

/// `failover`: kill -9 the leader under a write loop, time the next acknowledged write, restart
/// the killed node, wait for it to catch up; repeat.
pub fn failover(options: &Options) -> Result<(), String> {
    let nodes: usize = number(options, "--nodes", 3)?;
    let rounds: usize = number(options, "--rounds", if options.quick { 1 } else { 10 })?;
    let server = match options.value("--server").unwrap_or("atoll") {
        "atoll" => Server::Atoll,
        "dqlite-demo" => Server::DqliteDemo,
        other => return Err(format!("--server {other}: atoll or dqlite-demo")),
    };
    if nodes < 3 {
        return Err("--nodes must be at least 3 (a failover needs a majority left)".into());
    }
    let settings = timing_settings(options);
    if server != Server::Atoll && !settings.is_empty() {
        return Err(
            "--heartbeat-ms, --election-timeout-ms and --tick-ms are atoll settings".into(),
        );
    }
    let mut cluster = LocalCluster::start(server, nodes, &settings, false)?;
    println!(
        "failover: {server:?}, {nodes} nodes, {rounds} round(s), settings {settings:?}; \
         kill -9 of the leader to the next acknowledged write"
    );
    let writer = start_loop_writer(cluster.addresses());
    let mut times = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let before = writer.acks();
        wait_for("writes before the kill", || {
            (writer.acks() >= before + 50).then_some(())
        })?;
        let leader = cluster.leader()?;
        let killed_at = Instant::now();
        cluster.nodes[leader].kill();
        let acked = wait_for("the next acknowledged write", || {
            writer.first_ack_after(killed_at)
        })?;
        let failover = acked.duration_since(killed_at);
        times.push(failover.as_secs_f64() * 1000.0);
        let new = cluster.leader()?;
        println!(
            "round {round}: {:.1} ms (node {} killed, node {} leads)",
            failover.as_secs_f64() * 1000.0,
            leader + 1,
            new + 1
        );
        cluster.spawn(leader)?;
        cluster.wait_caught_up(leader, new)?;
    }
    let rss = cluster.rss_mib();
    writer.finish()?;
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "rss per node: {}",
        rss.iter()
            .map(|m| format!("{m:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("failover: p50 {:.1} ms, max {max:.1} ms", median(&times));
    Ok(())
}

/// A small xorshift generator per worker (keys and values need no quality).
struct Letters(u64);

impl Letters {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        ALPHABET[(self.0 % ALPHABET.len() as u64) as usize]
    }

    fn text(&mut self, length: usize) -> String {
        (0..length).map(|_| self.next() as char).collect()
    }
}

/// dqlite-benchmark's workloads: `kvwrite` (every operation a write of a new key) and
/// `kvreadwrite` (each operation, a coin toss: a read of a key this worker wrote, or a write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Write,
    ReadWrite,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "kvwrite",
            Workload::ReadWrite => "kvreadwrite",
        }
    }

    fn parse(text: &str) -> Result<Workload, String> {
        match text {
            "kvwrite" => Ok(Workload::Write),
            "kvreadwrite" => Ok(Workload::ReadWrite),
            other => Err(format!(
                "--workloads: {other:?} is not kvwrite or kvreadwrite"
            )),
        }
    }
}

const KV_WRITE_SQL: &str = "INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)";
const KV_READ_SQL: &str = "SELECT value FROM model WHERE key = ?";

/// One kv run's outcome: writes and reads apart.
struct KvResult {
    writes: Samples,
    write_errors: u64,
    reads: Samples,
    read_errors: u64,
    seconds: f64,
}

impl KvResult {
    fn new(seconds: f64) -> KvResult {
        KvResult {
            writes: Samples::with_capacity(1 << 16),
            write_errors: 0,
            reads: Samples::with_capacity(1 << 16),
            read_errors: 0,
            seconds,
        }
    }

    fn merge(&mut self, other: KvResult) {
        for duration in other.writes.into_durations() {
            self.writes.push(duration);
        }
        for duration in other.reads.into_durations() {
            self.reads.push(duration);
        }
        self.write_errors += other.write_errors;
        self.read_errors += other.read_errors;
    }

    fn ops(&self) -> u64 {
        (self.writes.len() + self.reads.len()) as u64
    }

    fn ops_per_second(&self) -> f64 {
        self.ops() as f64 / self.seconds
    }

    /// Every sample, reads and writes.
    fn all(&self) -> Samples {
        let mut all = Samples::with_capacity(self.ops() as usize);
        for duration in self.writes.clone().into_durations() {
            all.push(duration);
        }
        for duration in self.reads.clone().into_durations() {
            all.push(duration);
        }
        all
    }
}

/// A value as dqlite-benchmark makes it: half one repeated letter, half random letters.
fn kv_value(letters: &mut Letters, value_bytes: usize) -> String {
    let repeated = letters.next() as char;
    let mut value = String::with_capacity(value_bytes);
    value.extend(std::iter::repeat_n(repeated, value_bytes / 2));
    value.push_str(&letters.text(value_bytes - value_bytes / 2));
    value
}

/// dqlite-benchmark's workloads on an atoll cluster: each worker writes (INSERT OR REPLACE) a
/// new random 32-letter key, as fast as it is answered; with `kvreadwrite`, half of its
/// operations (a coin toss) read instead a key it wrote. Writes go to the leader; reads go,
/// worker by worker, to every node in turn, on a connection opened with follower reads (each
/// node serves them itself, linearizable: see ARCHITECTURE.md, "The flow of a read"). A read
/// that finds no row counts as an error: the key was acknowledged before.
fn kv_atoll(
    cluster: &LocalCluster,
    workload: Workload,
    workers: usize,
    seconds: f64,
    value_bytes: usize,
) -> Result<KvResult, String> {
    let addresses = cluster.addresses();
    let mut setup =
        Client::connect(&addresses, cluster.config()).map_err(|e| format!("connect: {e}"))?;
    setup.open("bench").map_err(|e| format!("open: {e}"))?;
    setup
        .exec_sql(
            "CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))",
            &[],
        )
        .map_err(|e| format!("schema: {e}"))?;
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let addresses = addresses.clone();
            let reader_address = addresses[worker % addresses.len()].clone();
            let config = cluster.config();
            thread::spawn(move || -> Result<KvResult, String> {
                let mut client = Client::connect(&addresses, config.clone())
                    .map_err(|e| format!("connect: {e}"))?;
                client.open("bench").map_err(|e| format!("open: {e}"))?;
                let open_reader = || -> Result<Connection, ClientError> {
                    let mut reader = Connection::connect(&reader_address, &config)?;
                    reader.open_with_flags("bench", OPEN_FOLLOWER_READS)?;
                    Ok(reader)
                };
                let mut reader = match workload {
                    Workload::ReadWrite => Some(open_reader().map_err(|e| {
                        format!("follower-reads connection to {reader_address}: {e}")
                    })?),
                    Workload::Write => None,
                };
                let mut letters = Letters(0x9e37_79b9_7f4a_7c15 ^ ((worker as u64 + 1) * 7919));
                let mut keys: Vec<String> = Vec::new();
                let mut result = KvResult::new(seconds);
                while Instant::now() < start {
                    thread::sleep(Duration::from_millis(1));
                }
                while Instant::now() < deadline {
                    let read = workload == Workload::ReadWrite
                        && !keys.is_empty()
                        && letters.next().is_multiple_of(2);
                    if read {
                        let key = keys[(letters.next() as usize * 7919) % keys.len()].clone();
                        let began = Instant::now();
                        let answer = match reader.as_mut() {
                            Some(connection) => {
                                connection.query_sql(KV_READ_SQL, &[Value::Text(key)])
                            }
                            None => open_reader().and_then(|mut connection| {
                                let answer = connection.query_sql(KV_READ_SQL, &[Value::Text(key)]);
                                reader = Some(connection);
                                answer
                            }),
                        };
                        match answer {
                            Ok(rows) if rows.rows.len() == 1 => {
                                result.reads.push(began.elapsed());
                            }
                            Ok(_) => result.read_errors += 1,
                            Err(_) => {
                                result.read_errors += 1;
                                reader = None;
                            }
                        }
                        continue;
                    }
                    let key = letters.text(32);
                    let value = kv_value(&mut letters, value_bytes);
                    let began = Instant::now();
                    match client.exec_sql(
                        KV_WRITE_SQL,
                        &[Value::Text(key.clone()), Value::Text(value)],
                    ) {
                        Ok(_) => {
                            result.writes.push(began.elapsed());
                            if workload == Workload::ReadWrite {
                                keys.push(key);
                            }
                        }
                        Err(_) => result.write_errors += 1,
                    }
                }
                Ok(result)
            })
        })
        .collect();
    let mut all = KvResult::new(seconds);
    for handle in handles {
        all.merge(handle.join().map_err(|_| "worker panicked")??);
    }
    Ok(all)
}

/// Runs a dqlite-benchmark workload on a three-node dqlite cluster (its own processes) and
/// reads the results its driver writes: a file per worker and kind of query (`N-exec-TIME`,
/// `N-query-TIME`), each with `n`, `n_err` and every latency in ms.
fn kv_dqlite(
    workload: Workload,
    workers: usize,
    seconds: u64,
    value_bytes: usize,
) -> Result<KvResult, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let addresses = free_addresses(3)?;
    let mut children = Vec::new();
    for (index, address) in addresses.iter().enumerate() {
        let data = dir.path().join(format!("node{}", index + 1));
        fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let mut command = Command::new("dqlite-benchmark");
        command.args(["--db", address, "-D"]).arg(&data);
        if index == 0 {
            command.args([
                "--driver",
                "--cluster",
                &addresses.join(","),
                "--workers",
                &workers.to_string(),
                "--duration",
                &seconds.to_string(),
                "--value-size",
                &value_bytes.to_string(),
                "--workload",
                workload.name(),
            ]);
        } else {
            command.args(["--join", &addresses[0]]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("dqlite-benchmark: {e} (install go-dqlite)"))?;
        children.push(NodeProcess {
            address: address.clone(),
            data,
            child: Some(child),
            log: PathBuf::new(),
        });
    }
    // Newer go-dqlite writes results under DIR/results, Debian's 1.11 under DIR/ADDRESS/results.
    let results = [
        children[0].data.join(&addresses[0]).join("results"),
        children[0].data.join("results"),
    ];
    let deadline = Instant::now() + WAIT_MAX + Duration::from_secs(seconds);
    let status = loop {
        let driver = children[0].child.as_mut().expect("spawned");
        if let Some(status) = driver.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            return Err("dqlite-benchmark did not finish".into());
        }
        thread::sleep(Duration::from_millis(50));
    };
    children[0].child = None;
    if !status.success() {
        return Err(format!("dqlite-benchmark driver exited with {status}"));
    }
    let mut result = KvResult::new(seconds as f64);
    let results = results.iter().find(|dir| dir.is_dir()).ok_or_else(|| {
        format!(
            "dqlite-benchmark wrote no results under {}",
            dir.path().display()
        )
    })?;
    let entries = fs::read_dir(results).map_err(|e| format!("{}: {e}", results.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let reads = name.is_some_and(|n| n.split('-').nth(1) == Some("query"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut in_measurements = false;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("n_err ") {
                let n = n.trim().parse::<u64>().unwrap_or(0);
                if reads {
                    result.read_errors += n;
                } else {
                    result.write_errors += n;
                }
            } else if line.starts_with("measurements") {
                in_measurements = true;
            } else if line.starts_with("errors") {
                in_measurements = false;
            } else if in_measurements {
                if let Some(ms) = line.split_whitespace().nth(1) {
                    if let Ok(ms) = ms.parse::<f64>() {
                        let duration = Duration::from_secs_f64(ms / 1000.0);
                        if reads {
                            result.reads.push(duration);
                        } else {
                            result.writes.push(duration);
                        }
                    }
                }
            }
        }
    }
    Ok(result)
}

/// One row: ops/s, p50, p99 of every operation (writes and reads apart for `kvreadwrite`).
fn kv_line(name: &str, workload: Workload, workers: usize, result: &KvResult) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut all = result.all();
    let mut line = format!(
        "kv {name} {} workers={workers}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms ({} errors)",
        workload.name(),
        result.ops_per_second(),
        ms(all.percentile(50.0)),
        ms(all.percentile(99.0)),
        result.write_errors + result.read_errors
    );
    if workload == Workload::ReadWrite {
        let (mut writes, mut reads) = (result.writes.clone(), result.reads.clone());
        line.push_str(&format!(
            "; writes {:.0}/s p50 {:.2} ms ({} errors), reads {:.0}/s p50 {:.2} ms ({} errors)",
            writes.len() as f64 / result.seconds,
            ms(writes.percentile(50.0)),
            result.write_errors,
            reads.len() as f64 / result.seconds,
            ms(reads.percentile(50.0)),
            result.read_errors
        ));
    }
    line
}

/// 4 KiB `write` + `fdatasync` appending to a file in `dir`, in a loop for `seconds`: the
/// rate one disk sync allows (the same measure as the storage suite's raw baseline).
fn raw_fdatasync_per_second(dir: &Path, seconds: f64) -> Result<f64, String> {
    let path = dir.join("raw-fdatasync");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let block = vec![0x5a_u8; 4096];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < seconds || count == 0 {
        file.write_all(&block)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        count += 1;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = fs::remove_file(&path);
    Ok(rate)
}

fn mib_list(rss: &[f64]) -> String {
    rss.iter()
        .map(|m| format!("{m:.1} MiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One point of the kv plot: ops/s and p99 (ms) of atoll, and of dqlite if run.
struct PlotRow {
    /// Measured on the TLS cluster (`--tls`).
    tls: bool,
    workload: Workload,
    workers: usize,
    atoll: (f64, f64),
    dqlite: Option<(f64, f64)>,
}

/// `kv`: dqlite-benchmark's workloads against an atoll cluster (and, with `--dqlite`, against
/// dqlite-benchmark's own three-node cluster, in the same run), with the raw fdatasync rate
/// of the nodes' disk, where the writes' time went in the nodes (see `Breakdown`), the nodes'
/// RSS, and with `--plot FILE.svg` a chart of ops/s and p99 against workers.
pub fn kv(options: &Options) -> Result<(), String> {
    let nodes: usize = number(options, "--nodes", 3)?;
    let seconds: f64 = number(options, "--seconds", if options.quick { 1.0 } else { 10.0 })?;
    let value_bytes: usize = number(options, "--value-size", 1024)?;
    let workers: Vec<usize> = match options.value("--workers") {
        Some(list) => list
            .split(',')
            .map(|w| w.parse().map_err(|_| format!("--workers {list}: numbers")))
            .collect::<Result<_, _>>()?,
        None if options.quick => vec![4],
        None => vec![1, 16, 64],
    };
    let workloads: Vec<Workload> = options
        .value("--workloads")
        .unwrap_or("kvwrite,kvreadwrite")
        .split(',')
        .map(Workload::parse)
        .collect::<Result<_, _>>()?;
    if workers.is_empty() || workers.contains(&0) || nodes == 0 {
        return Err("--workers and --nodes must be at least 1".into());
    }
    let plot = options.value("--plot").map(PathBuf::from);
    let with_dqlite = options.rest.iter().any(|a| a == "--dqlite");
    let with_tls = options.rest.iter().any(|a| a == "--tls");
    let settings = timing_settings(options);
    let run = KvRun {
        settings,
        nodes,
        workers,
        workloads,
        seconds,
        value_bytes,
        quick: options.quick,
    };
    let mut lines = Vec::new();
    let mut rows: Vec<PlotRow> = Vec::new();
    // With --tls: the plaintext cluster's rows, then a TLS cluster's (one cluster at a time);
    // the disk baseline and dqlite-benchmark once, with the plaintext cluster.
    for tls in [false, true] {
        if tls && !with_tls {
            break;
        }
        kv_cluster(&run, tls, with_dqlite && !tls, &mut lines, &mut rows)?;
    }
    if let Some(path) = plot {
        let svg = kv_plot(
            &rows,
            &baseline_title(run.nodes, run.value_bytes, run.seconds, &run.settings),
        );
        fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        lines.push(format!("kv plot written to {}", path.display()));
    }
    // The summary, last.
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// What one `kv` invocation measures, for each cluster it starts.
struct KvRun {
    settings: Vec<String>,
    nodes: usize,
    workers: Vec<usize>,
    workloads: Vec<Workload>,
    seconds: f64,
    value_bytes: usize,
    quick: bool,
}

/// One cluster's `kv` rows (plaintext or TLS): summary lines into `lines`, plot points into
/// `rows`.
fn kv_cluster(
    run: &KvRun,
    tls: bool,
    with_dqlite: bool,
    lines: &mut Vec<String>,
    rows: &mut Vec<PlotRow>,
) -> Result<(), String> {
    let cluster = LocalCluster::start(Server::Atoll, run.nodes, &run.settings, tls)?;
    let server = if tls { "atoll-tls" } else { "atoll" };
    if !tls {
        settle_disk();
        let baseline_seconds = if run.quick { 0.2 } else { 3.0 };
        let raw = raw_fdatasync_per_second(cluster.dir.path(), baseline_seconds)?;
        let baseline =
            format!("kv baseline raw-fdatasync: {raw:.0} ops/s (4 KiB append + fdatasync)");
        println!("{baseline}");
        lines.push(baseline);
    }
    // The nodes have settled after their start (one second without requests).
    thread::sleep(Duration::from_secs(1));
    let idle_at_start = cluster.rss_mib();
    println!(
        "rss per node idle after the start ({server}): {}",
        mib_list(&idle_at_start)
    );
    for &workload in &run.workloads {
        for &count in &run.workers {
            let mut dqlite_point = None;
            if with_dqlite {
                settle_disk();
                let dqlite =
                    kv_dqlite(workload, count, run.seconds.ceil() as u64, run.value_bytes)?;
                let line = kv_line("dqlite-benchmark", workload, count, &dqlite);
                println!("{line}");
                dqlite_point = Some((dqlite.ops_per_second(), p99_ms(&dqlite)));
                lines.push(line);
            }
            settle_disk();
            let term_before = cluster.term()?;
            // Zero the nodes' timings: the breakdown below covers this row only.
            cluster.timings()?;
            let result = kv_atoll(&cluster, workload, count, run.seconds, run.value_bytes)?;
            let breakdown = cluster.timings()?;
            let elections = cluster.term()? - term_before;
            // Printed at zero too: "no election under load" is a result worth showing.
            println!("kv: {elections} election(s) during the run with {count} workers");
            let leader = cluster.leader().ok();
            for (index, timings) in breakdown.iter().enumerate() {
                let role = if Some(index) == leader {
                    "leader"
                } else {
                    "follower"
                };
                println!("  node {} ({role}): {}", index + 1, timings.summary());
            }
            if let Some(timings) = leader.and_then(|l| breakdown.get(l)) {
                let mut writes = result.writes.clone();
                println!(
                    "  write p50 {:.0} µs at the client; {}",
                    writes.percentile(50.0).as_secs_f64() * 1e6,
                    timings.leader_path(mean_us(&result.writes))
                );
            }
            let line = kv_line(server, workload, count, &result);
            println!("{line}");
            rows.push(PlotRow {
                tls,
                workload,
                workers: count,
                atoll: (result.ops_per_second(), p99_ms(&result)),
                dqlite: dqlite_point,
            });
            lines.push(line);
        }
    }
    let after = cluster.rss_mib();
    lines.push(format!(
        "rss per node after the run ({server}): {}",
        mib_list(&after)
    ));
    thread::sleep(Duration::from_secs(if run.quick { 1 } else { 5 }));
    let idle_after = cluster.rss_mib();
    lines.push(format!(
        "rss per node idle after the run ({server}): {}",
        mib_list(&idle_after)
    ));
    let within = |values: &[f64], max: f64| {
        let worst = values.iter().copied().fold(0.0, f64::max);
        format!(
            "{} (max {worst:.1} MiB)",
            if worst <= max { "ok" } else { "OVER" }
        )
    };
    let idle: Vec<f64> = idle_at_start.iter().chain(&idle_after).copied().collect();
    lines.push(format!(
        "rss check ({server}): after the run <= {RSS_AFTER_MIB_MAX} MiB {}; idle <= \
         {RSS_IDLE_MIB_MAX} MiB {}",
        within(&after, RSS_AFTER_MIB_MAX),
        within(&idle, RSS_IDLE_MIB_MAX)
    ));
    Ok(())
}

/// The resident memory a node may have right after the `kv` rows (ARCHITECTURE.md, "Limits").
const RSS_AFTER_MIB_MAX: f64 = 32.0;
/// The resident memory an idle node may have, after its start and after the rows.
const RSS_IDLE_MIB_MAX: f64 = 16.0;

fn p99_ms(result: &KvResult) -> f64 {
    result.all().percentile(99.0).as_secs_f64() * 1000.0
}

fn mean_us(samples: &Samples) -> f64 {
    let durations = samples.clone().into_durations();
    if durations.is_empty() {
        return 0.0;
    }
    durations.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1e6 / durations.len() as f64
}

fn baseline_title(nodes: usize, value_bytes: usize, seconds: f64, settings: &[String]) -> String {
    let mut title = format!("{nodes} nodes, {value_bytes} B values, {seconds} s per point");
    if !settings.is_empty() {
        title.push_str(&format!(", {}", settings.join(" ")));
    }
    title
}

/// The plot: ops/s and p99 against workers, a line per server and workload.
fn kv_plot(rows: &[PlotRow], subtitle: &str) -> String {
    let mut series: Vec<plot::Series> = Vec::new();
    for (tls, server, color) in [(false, "atoll", "#1f77b4"), (true, "atoll-tls", "#2ca02c")] {
        for workload in [Workload::Write, Workload::ReadWrite] {
            let points: Vec<_> = rows
                .iter()
                .filter(|r| r.workload == workload && r.tls == tls)
                .collect();
            if points.is_empty() {
                continue;
            }
            series.push(plot::Series {
                name: format!("{server} {}", workload.name()),
                dashed: workload == Workload::ReadWrite,
                color,
                points: points
                    .iter()
                    .map(|r| (r.workers, r.atoll.0, r.atoll.1))
                    .collect(),
            });
            let dqlite: Vec<_> = points
                .iter()
                .filter_map(|r| r.dqlite.map(|(ops, p99)| (r.workers, ops, p99)))
                .collect();
            if !dqlite.is_empty() {
                series.push(plot::Series {
                    name: format!("dqlite {}", workload.name()),
                    dashed: workload == Workload::ReadWrite,
                    color: "#d62728",
                    points: dqlite,
                });
            }
        }
    }
    plot::svg(&format!("atoll-bench kv: {subtitle}"), &series)
}

/// One atoll node (`init` + `start`) in a temporary directory, for the suites and tests that
/// need a real server but no cluster (`sqldiff`). Stopped and removed on drop.
pub struct SingleNode {
    cluster: LocalCluster,
}

impl SingleNode {
    /// Starts the node and waits until it leads.
    pub fn start() -> Result<SingleNode, String> {
        let cluster = LocalCluster::start(Server::Atoll, 1, &[], false)?;
        Ok(SingleNode { cluster })
    }

    /// The node's client address.
    pub fn address(&self) -> String {
        self.cluster.nodes[0].address.clone()
    }
}

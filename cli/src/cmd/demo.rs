//! `atoll demo`: a local three-node cluster in a temporary directory, a short workload through
//! the shell, a failover (the leader killed) timed from the kill to the next acknowledged write,
//! the killed node restarted and caught up, then a clean stop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError, Connection};
use atoll_net::protocol::{Role, Value};

use super::CliError;

/// Run a local three-node atoll cluster, show a workload and a failover, and clean up.
///
/// Needs no setup: it picks free loopback ports and, in a temporary directory, runs `atoll
/// init` for the first node and `atoll join` for two more (this same binary), starts all
/// three and waits until the leader has made the joined nodes voters (automatic roles). It
/// runs a short workload with `atoll shell`, printing each command and its output; then it
/// writes in a loop, kills the leader with SIGKILL, and shows the new leader taking writes and
/// how long the failover took (from the kill to the next acknowledged write). It restarts the
/// killed node, shows it catching up, stops every node with SIGTERM (a clean stop) and removes
/// the directory (keep it with --keep).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the temporary directory (data and node logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// How long the node has to come up, and to stop.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// The statements the demo runs, one `atoll shell` each.
const WORKLOAD: &[(&str, &str)] = &[
    (
        "create a table",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, celsius REAL, \
         taken DATETIME)",
    ),
    (
        "insert rows (each write is a Raft entry, synced before it is acknowledged)",
        "INSERT INTO readings (sensor, celsius, taken) VALUES \
         ('greenhouse', 21.5, '2024-05-01 08:00:00'), \
         ('greenhouse', 23.0, '2024-05-01 12:00:00'), \
         ('cellar', 12.25, '2024-05-01 08:00:00'), \
         ('cellar', 12.5, '2024-05-01 12:00:00')",
    ),
    (
        "query them",
        "SELECT sensor, celsius, taken FROM readings ORDER BY id",
    ),
    (
        "a transaction: both statements commit together, or neither does",
        "BEGIN; UPDATE readings SET celsius = celsius + 0.5 WHERE sensor = 'cellar'; \
         INSERT INTO readings (sensor, celsius, taken) VALUES ('attic', 30.0, \
         '2024-05-01 12:00:00'); COMMIT",
    ),
    (
        "an aggregate over the result",
        "SELECT sensor, count(*) AS readings, round(avg(celsius), 2) AS average \
         FROM readings GROUP BY sensor ORDER BY sensor",
    ),
];

/// Rows written before the leader is killed, and after the failover.
const WRITES_AROUND_FAILOVER: i64 = 100;

/// A node of the demo: its process (killed on drop if still running), address and files.
struct DemoNode {
    name: String,
    address: String,
    data: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl DemoNode {
    fn new(dir: &Path, index: usize) -> Result<DemoNode, CliError> {
        let name = format!("node{index}");
        Ok(DemoNode {
            address: free_address()?,
            data: dir.join(&name).to_string_lossy().into_owned(),
            log: dir.join(format!("{name}.log")),
            name,
            child: None,
        })
    }

    fn start(&mut self) -> Result<(), CliError> {
        println!(
            "$ atoll start --data-dir {}   # in the background, log in {}.log",
            self.data, self.name
        );
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| CliError::new(format!("cannot open {}: {e}", self.log.display())))?;
        let child = Command::new(atoll()?)
            .args(["start", "--data-dir", &self.data])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| CliError::new(format!("cannot start {}: {e}", self.name)))?;
        self.child = Some(child);
        Ok(())
    }

    /// Fails if the process exited, with its log.
    fn check_running(&mut self) -> Result<(), CliError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(CliError::new(format!(
                    "{} exited ({status}); its log is {}:\n{}",
                    self.name,
                    self.log.display(),
                    fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The node's applied index (atoll's DESCRIBE format 1).
    fn applied_index(&self) -> Option<u64> {
        let mut connection = Connection::connect_atoll(&self.address, &quick_config()).ok()??;
        connection.describe_v1().ok().map(|m| m.applied_index)
    }

    /// SIGTERM through the system's `kill` (std has no signal API, and this crate has no
    /// unsafe code), then waits for the exit.
    fn stop(&mut self) -> Result<ExitStatus, CliError> {
        let Some(child) = self.child.as_mut() else {
            return Err(CliError::new(format!("{} is not running", self.name)));
        };
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| CliError::new(format!("cannot run kill: {e}")))?;
        if !status.success() {
            return Err(CliError::new(format!("kill -TERM {pid} failed")));
        }
        let deadline = Instant::now() + NODE_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| CliError::new(format!("waiting for {}: {e}", self.name)))?
            {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(CliError::new(format!(
                    "{} did not stop after SIGTERM",
                    self.name
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The demo's temporary directory, removed on drop unless kept.
struct DemoDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn free_address() -> Result<String, CliError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| CliError::new(format!("cannot find a free loopback port: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::new(format!("cannot find a free loopback port: {e}")))?;
    Ok(address.to_string())
}

fn atoll() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| CliError::new(format!("cannot find this program: {e}")))
}

fn run_atoll(args: &[&str]) -> Result<String, CliError> {
    let output = Command::new(atoll()?)
        .args(args)
        .env("ATOLL_HISTORY", "")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::new(format!("cannot run atoll {}: {e}", args[0])))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(CliError::new(format!(
            "`atoll {}` failed: {}{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(stdout)
}

fn quick_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        leader_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    }
}

/// Polls `check` every 20 ms until it answers, failing if a node exits or the time is up.
fn wait_until<T>(
    nodes: &mut [DemoNode],
    what: &str,
    mut check: impl FnMut(&[DemoNode]) -> Option<T>,
) -> Result<T, CliError> {
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        for node in nodes.iter_mut() {
            node.check_running()?;
        }
        if let Some(value) = check(nodes) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "timed out after {NODE_TIMEOUT:?} waiting for {what}; see the node logs"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The voters the cluster lists, if a leader answers.
fn voters(addresses: &[String]) -> Option<usize> {
    let mut client = Client::connect(addresses, quick_config()).ok()?;
    let nodes = client.cluster().ok()?;
    Some(nodes.iter().filter(|n| n.role == Some(Role::Voter)).count())
}

/// Inserts row `key` until it is acknowledged (an unknown outcome is retried: the insert is
/// idempotent), or fails after `NODE_TIMEOUT`.
fn insert_until_acknowledged(client: &mut Client, key: i64) -> Result<(), CliError> {
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        match client.exec_sql(
            "INSERT OR IGNORE INTO events (id, note) VALUES (?, 'written in a loop')",
            &[Value::Integer(key)],
        ) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                if !matches!(e, ClientError::OutcomeUnknown(_)) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Err(e) => return Err(CliError::new(format!("writing row {key}: {e}"))),
        }
    }
}

/// Runs `atoll demo`.
pub fn run(args: Args) -> Result<(), CliError> {
    let dir = DemoDir {
        path: std::env::temp_dir().join(format!(
            "atoll-demo-{}-{:08x}",
            std::process::id(),
            atoll_node::config::random_u64() as u32
        )),
        keep: args.keep,
    };
    fs::create_dir_all(&dir.path)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.path.display())))?;
    let mut nodes = Vec::new();
    for index in 1..=3 {
        nodes.push(DemoNode::new(&dir.path, index)?);
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let all = addresses.join(",");
    let started = Instant::now();

    println!(
        "atoll demo: a three-node cluster in {}\n",
        dir.path.display()
    );
    println!("# the first node bootstraps a new cluster");
    println!(
        "$ atoll init --data-dir {} --address {}",
        nodes[0].data, nodes[0].address
    );
    print!(
        "{}",
        run_atoll(&[
            "init",
            "--data-dir",
            &nodes[0].data,
            "--address",
            &nodes[0].address
        ])?
    );
    nodes[0].start()?;
    let first = nodes[0].address.clone();
    wait_until(&mut nodes, "the first node to lead", |_| {
        let mut connection = Connection::connect(&first, &quick_config()).ok()?;
        matches!(connection.leader(), Ok(Some((_, ref leader))) if *leader == first).then_some(())
    })?;
    println!("\n# the join token (init printed it too) lets nodes prove they belong");
    println!("$ TOKEN=$(atoll token --data-dir {})", nodes[0].data);
    let token = run_atoll(&["token", "--data-dir", &nodes[0].data])?;
    let token = token.trim();
    println!("\n# two more nodes join it; the leader adds them and makes them voters");
    for (index, node) in nodes.iter_mut().enumerate().skip(1) {
        let id = (index + 1).to_string();
        println!(
            "$ atoll join --data-dir {} --address {} --cluster {first} --id {id} --join-token \
             $TOKEN",
            node.data, node.address
        );
        print!(
            "{}",
            run_atoll(&[
                "join",
                "--data-dir",
                &node.data,
                "--address",
                &node.address,
                "--cluster",
                &first,
                "--id",
                &id,
                "--join-token",
                token,
            ])?
        );
        node.start()?;
    }
    wait_until(&mut nodes, "three voters", |_| {
        (voters(&addresses) == Some(3)).then_some(())
    })?;
    println!(
        "three voters after {} ms\n\n$ atoll cluster --cluster {all}",
        started.elapsed().as_millis()
    );
    print!("{}", run_atoll(&["cluster", "--cluster", &all])?);
    println!();

    for (what, sql) in WORKLOAD {
        println!("# {what}");
        println!("$ atoll shell --cluster {all} demo \"{sql}\"");
        print!("{}", run_atoll(&["shell", "--cluster", &all, "demo", sql])?);
        println!();
    }

    println!("# a client writes rows in a loop; then the leader is killed (kill -9)");
    let mut client = Client::connect(&addresses, quick_config())
        .map_err(|e| CliError::new(format!("connecting: {e}")))?;
    let leader_error = |e: ClientError| CliError::new(format!("asking for the leader: {e}"));
    client
        .open("demo")
        .map_err(|e| CliError::new(format!("opening demo: {e}")))?;
    client
        .exec_sql(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT)",
            &[],
        )
        .map_err(|e| CliError::new(format!("creating a table: {e}")))?;
    for key in 0..WRITES_AROUND_FAILOVER {
        insert_until_acknowledged(&mut client, key)?;
    }
    let (_, leader_address) = client
        .leader()
        .map_err(leader_error)?
        .ok_or_else(|| CliError::new("no leader"))?;
    let leader = nodes
        .iter()
        .position(|n| n.address == leader_address)
        .ok_or_else(|| CliError::new(format!("the leader {leader_address} is not a demo node")))?;
    println!(
        "{WRITES_AROUND_FAILOVER} rows written; killing the leader, {} at {leader_address}",
        nodes[leader].name
    );
    let killed_at = Instant::now();
    if let Some(child) = nodes[leader].child.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    nodes[leader].child = None;
    insert_until_acknowledged(&mut client, WRITES_AROUND_FAILOVER)?;
    let failover = killed_at.elapsed();
    for key in WRITES_AROUND_FAILOVER + 1..2 * WRITES_AROUND_FAILOVER {
        insert_until_acknowledged(&mut client, key)?;
    }
    let (_, new_address) = client
        .leader()
        .map_err(leader_error)?
        .ok_or_else(|| CliError::new("no leader"))?;
    let new = nodes
        .iter()
        .position(|n| n.address == new_address)
        .ok_or_else(|| CliError::new(format!("the leader {new_address} is not a demo node")))?;
    println!(
        "failover: {:.0} ms from kill -9 to the next acknowledged write; {} at {new_address} \
         leads now and took {WRITES_AROUND_FAILOVER} more rows\n",
        failover.as_secs_f64() * 1000.0,
        nodes[new].name
    );
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.address.clone())
        .collect();
    println!("$ atoll cluster --cluster {}", survivors.join(","));
    print!(
        "{}",
        run_atoll(&["cluster", "--cluster", &survivors.join(",")])?
    );

    println!("\n# the killed node restarts and catches up from the new leader");
    nodes[leader].start()?;
    let caught_up = wait_until(&mut nodes, "the restarted node to catch up", |nodes| {
        let target = nodes[new].applied_index()?;
        let applied = nodes[leader].applied_index()?;
        (applied >= target).then_some(applied)
    })?;
    println!(
        "{} applied everything through index {caught_up}\n\n$ atoll shell --cluster {all} \
         demo \"SELECT count(*) AS rows FROM events\"",
        nodes[leader].name
    );
    print!(
        "{}",
        run_atoll(&[
            "shell",
            "--cluster",
            &all,
            "demo",
            "SELECT count(*) AS rows FROM events",
        ])?
    );
    println!("$ atoll cluster --cluster {all}");
    print!("{}", run_atoll(&["cluster", "--cluster", &all])?);

    println!("\n# stop every node: SIGTERM, a clean shutdown (a leader hands over first)");
    for node in &mut nodes {
        let status = node.stop()?;
        if !status.success() {
            return Err(CliError::new(format!(
                "{} stopped with {status}; its log is {}",
                node.name,
                node.log.display()
            )));
        }
    }
    for node in &nodes {
        let log = fs::read_to_string(&node.log).unwrap_or_default();
        for line in log.lines().filter(|l| {
            l.contains("elected leader")
                || l.contains("automatic roles")
                || l.contains("is a member")
                || l.contains("stopped;")
        }) {
            println!("{}.log: {line}", node.name);
        }
    }
    if args.keep {
        println!("\nkept {} (data and node logs)", dir.path.display());
    } else {
        println!("\nremoved {}", dir.path.display());
    }
    Ok(())
}

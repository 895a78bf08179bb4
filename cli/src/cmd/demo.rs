//! `atoll demo`: a local cluster in a temporary directory, a short workload through the shell,
//! then a clean stop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, Connection};

use super::CliError;

/// Run a local atoll cluster in a temporary directory, show a few statements, and clean up.
///
/// Needs no setup: it picks a free loopback port, runs `atoll init` and `atoll start` (this
/// same binary) in a temporary directory, waits until the node answers, then runs a short
/// workload with `atoll shell` (a table, inserts, a query printed as a table, a transaction),
/// printing each command and its output. Finally it stops the node with SIGTERM (a clean stop)
/// and removes the directory (keep it with --keep). One node for now; three once nodes talk to
/// each other.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the temporary directory (data and node log) instead of removing it.
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

/// A node process of the demo, killed on drop if it is still running.
struct NodeProcess {
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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

/// Polls the node until it answers LEADER with its own address.
fn wait_until_serving(address: &str, node: &mut NodeProcess, log: &Path) -> Result<(), CliError> {
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        leader_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(CliError::new(format!(
                "the node exited ({status}) before serving; its log is {}:\n{}",
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            )));
        }
        if let Ok(mut connection) = Connection::connect(address, &config) {
            if let Ok(Some((_, leader))) = connection.leader() {
                if leader == address {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "the node at {address} did not start serving within {NODE_TIMEOUT:?}; its log \
                 is {}",
                log.display()
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM through the system's `kill` (std has no signal API, and this crate has no unsafe
/// code), then waits for the exit.
fn stop(node: &mut NodeProcess) -> Result<ExitStatus, CliError> {
    let pid = node.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .map_err(|e| CliError::new(format!("cannot run kill: {e}")))?;
    if !status.success() {
        return Err(CliError::new(format!("kill -TERM {pid} failed")));
    }
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        if let Some(status) = node
            .child
            .try_wait()
            .map_err(|e| CliError::new(format!("waiting for the node: {e}")))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(CliError::new("the node did not stop after SIGTERM"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `atoll demo`.
pub fn run(args: Args) -> Result<(), CliError> {
    let dir = DemoDir {
        path: std::env::temp_dir().join(format!(
            "atoll-demo-{}-{:08x}",
            std::process::id(),
            crate::node::config::random_u64() as u32
        )),
        keep: args.keep,
    };
    fs::create_dir_all(&dir.path)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.path.display())))?;
    let data_dir = dir.path.join("node1");
    let data = data_dir.to_string_lossy().into_owned();
    let log_path = dir.path.join("node1.log");
    let address = free_address()?;

    println!("atoll demo: a one-node cluster in {}\n", dir.path.display());
    println!("$ atoll init --data-dir {data} --address {address}");
    print!(
        "{}",
        run_atoll(&["init", "--data-dir", &data, "--address", &address])?
    );
    println!("$ atoll start --data-dir {data}   # in the background, log in node1.log");
    let log_file = fs::File::create(&log_path)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", log_path.display())))?;
    let child = Command::new(atoll()?)
        .args(["start", "--data-dir", &data])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| CliError::new(format!("cannot start the node: {e}")))?;
    let mut node = NodeProcess { child };
    let started = Instant::now();
    wait_until_serving(&address, &mut node, &log_path)?;
    println!(
        "node 1 is the leader at {address} (serving after {} ms)\n",
        started.elapsed().as_millis()
    );

    for (what, sql) in WORKLOAD {
        println!("# {what}");
        println!("$ atoll shell --cluster {address} demo \"{sql}\"");
        print!(
            "{}",
            run_atoll(&["shell", "--cluster", &address, "demo", sql])?
        );
        println!();
    }

    println!("# stop the node: SIGTERM, a clean shutdown");
    let status = stop(&mut node)?;
    if !status.success() {
        return Err(CliError::new(format!(
            "the node stopped with {status}; its log is {}",
            log_path.display()
        )));
    }
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    for line in log.lines().filter(|l| {
        l.contains("elected leader") || l.contains("stopping:") || l.contains("stopped;")
    }) {
        println!("node1.log: {line}");
    }
    if args.keep {
        println!("\nkept {} (data and node1.log)", dir.path.display());
    } else {
        println!("\nremoved {}", dir.path.display());
    }
    Ok(())
}

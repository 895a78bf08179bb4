//! Test support for the client commands: servers to run them against, and the `atoll` binary run
//! as a real process.
//!
//! Scenarios take a [`Cluster`] and only use its addresses, so the same scenario runs against
//! any server that speaks dqlite's protocol: [`ServerKind::DqliteDemo`] (Debian's go-dqlite
//! 1.11.5 on libdqlite 1.11.1) and [`ServerKind::Atoll`] (`atoll init` + `atoll start` in a
//! temporary directory, [`AtollNode`]). `Cluster::start` uses the kind `ATOLL_TEST_SERVER`
//! names (default dqlite-demo); `Cluster::start_kind` picks one. An atoll node joins with
//! `atoll join` ([`AtollNode::join`]); [`AtollCluster`] runs several atoll nodes for the
//! cluster tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, Connection};
use atoll_net::protocol::NodeMetadata;

/// Longest a test waits for a node to come up or for the cluster to reach a state.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one run of the `atoll` binary may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A free loopback port (bound and released; the node binds it right after).
///
/// The kernel may hand a released port out again at once, so two calls in a row could answer
/// the same port (seen in CI: three nodes' addresses picked up front, two equal). A port this
/// process already handed out is never answered again.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind a loopback port")
            .local_addr()
            .expect("local address")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A free loopback address.
pub fn free_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// One running node of some server kind; stopped (killed) on drop.
pub trait Node {
    /// The address the node serves and advertises.
    fn address(&self) -> &str;
    /// Kills the node at once (SIGKILL), as a crash would.
    fn kill(&mut self);
}

/// Which server the scenarios run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `dqlite-demo` from Debian's go-dqlite: real dqlite 1.11.
    DqliteDemo,
    /// `atoll start`: this repository's node.
    Atoll,
}

impl ServerKind {
    /// The kind named by `ATOLL_TEST_SERVER` (default: dqlite-demo).
    pub fn selected() -> ServerKind {
        match std::env::var("ATOLL_TEST_SERVER").as_deref() {
            Err(_) | Ok("") | Ok("dqlite-demo") => ServerKind::DqliteDemo,
            Ok("atoll") => ServerKind::Atoll,
            Ok(other) => panic!("ATOLL_TEST_SERVER={other}: known servers are dqlite-demo, atoll"),
        }
    }

    /// Starts a node that bootstraps a new cluster, and waits until it leads.
    pub fn bootstrap(self) -> Box<dyn Node> {
        match self {
            ServerKind::DqliteDemo => Box::new(DqliteDemo::start(None)),
            // Manual roles, like an operator-run dqlite cluster: a joined node stays a spare
            // until a scenario promotes it (automatic roles would race the scenario).
            ServerKind::Atoll => Box::new(AtollNode::start_with(&["--roles", "manual"])),
        }
    }

    /// Starts a node that joins the cluster at `cluster`, and waits until the leader lists it.
    pub fn join(self, cluster: &str) -> Box<dyn Node> {
        match self {
            ServerKind::DqliteDemo => Box::new(DqliteDemo::start(Some(cluster))),
            ServerKind::Atoll => Box::new(AtollNode::join(cluster, &["--roles", "manual"])),
        }
    }
}

/// A cluster of running nodes, the first one bootstrapped, the others joined.
pub struct Cluster {
    pub kind: ServerKind,
    pub nodes: Vec<Box<dyn Node>>,
}

impl Cluster {
    /// A cluster of `count` nodes of the selected kind.
    pub fn start(count: usize) -> Cluster {
        Cluster::start_kind(ServerKind::selected(), count)
    }

    /// A cluster of `count` nodes of `kind`.
    pub fn start_kind(kind: ServerKind, count: usize) -> Cluster {
        assert!(count >= 1);
        let mut nodes = vec![kind.bootstrap()];
        for _ in 1..count {
            let first = nodes[0].address().to_owned();
            nodes.push(kind.join(&first));
        }
        Cluster { kind, nodes }
    }

    /// Address of node `index`.
    pub fn address(&self, index: usize) -> &str {
        self.nodes[index].address()
    }

    /// Every address, comma-separated, for `--cluster`.
    pub fn addresses(&self) -> String {
        let addresses: Vec<&str> = self.nodes.iter().map(|n| n.address()).collect();
        addresses.join(",")
    }

    /// A client of the cluster, for checks made beside the binary.
    pub fn client(&self) -> Client {
        let addresses: Vec<&str> = self.nodes.iter().map(|n| n.address()).collect();
        Client::connect(&addresses, ClientConfig::default()).expect("connect to the cluster")
    }
}

/// `GET /metrics` of a node's metrics address (`--metrics-address`): the body of its 200.
pub fn scrape_metrics(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: atoll\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("the answer, then close");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    body.to_owned()
}

/// The value of the sample `name` (with its labels) in a scrape, 0 if absent.
pub fn metric_sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails the test (never skips it) when a program it needs is missing.
pub fn require(program: &str) {
    let how = if program == "script" {
        "install util-linux's `script` (Debian: bsdutils, an essential package)"
    } else {
        "run scripts/setup-test-deps (it installs Debian's go-dqlite) before these tests"
    };
    assert!(installed(program), "`{program}` is not installed: {how}");
}

/// A running `dqlite-demo` node in a temporary directory.
pub struct DqliteDemo {
    address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DqliteDemo {
    /// Starts a node bootstrapping a new cluster (or joining `join`) on a free port and waits
    /// until it leads (or until the leader lists it).
    pub fn start(join: Option<&str>) -> DqliteDemo {
        require("dqlite-demo");
        let address = free_address();
        let api = free_address();
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut command = Command::new("dqlite-demo");
        command
            .args(["--db", &address, "--api", &api, "-D"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        let child = command.spawn().expect("dqlite-demo starts");
        let node = DqliteDemo {
            address,
            child,
            _dir: dir,
        };
        match join {
            None => node.wait_leading(),
            Some(cluster) => node.wait_listed(cluster),
        }
        node
    }

    pub fn quick_config() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(2),
            leader_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        }
    }

    fn wait_leading(&self) {
        let what = format!("dqlite-demo at {} to lead", self.address);
        wait_for(&what, READY_TIMEOUT, || {
            let mut connection = Connection::connect(&self.address, &Self::quick_config()).ok()?;
            match connection.leader() {
                Ok(Some((_, leader))) if leader == self.address => Some(()),
                _ => None,
            }
        });
    }

    fn wait_listed(&self, cluster: &str) {
        let what = format!("dqlite-demo at {} to join {cluster}", self.address);
        wait_for(&what, READY_TIMEOUT, || {
            let mut client = Client::connect(&[cluster], Self::quick_config()).ok()?;
            let nodes = client.cluster().ok()?;
            nodes
                .iter()
                .any(|n| n.address == self.address)
                .then_some(())
        });
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Node for DqliteDemo {
    fn address(&self) -> &str {
        &self.address
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DqliteDemo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `atoll start` node in a temporary data directory, made by `atoll init` or
/// `atoll join`. It can be killed (SIGKILL, a crash), stopped (SIGTERM) and started again on
/// the same directory and address. Its log (RUST_LOG=info unless the test sets another) goes to
/// `node.log` beside the data directory.
pub struct AtollNode {
    address: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra `atoll start` arguments, used at every start.
    pub start_args: Vec<String>,
    /// A command the node runs under, with its arguments (`prlimit --nofile=128 --`): it must
    /// exec the node, so that the child's pid is the node's.
    pub wrapper: Vec<String>,
    /// The `atoll` that `atoll start` runs, when not this build's (another architecture's,
    /// run through binfmt_misc and qemu-user).
    pub binary: Option<std::path::PathBuf>,
}

impl AtollNode {
    /// `atoll init` + `atoll start` on a free port; returns once the node leads.
    pub fn start() -> AtollNode {
        AtollNode::start_with(&[])
    }

    /// Like [`AtollNode::start`], with extra `atoll init` arguments.
    pub fn start_with(init_args: &[&str]) -> AtollNode {
        let mut node = AtollNode::init(&free_address(), init_args);
        node.restart();
        node
    }

    /// `atoll init` at `address` (not started).
    pub fn init(address: &str, init_args: &[&str]) -> AtollNode {
        AtollNode::init_in(
            tempfile::tempdir().expect("temporary directory"),
            address,
            init_args,
        )
    }

    /// `atoll init` at `address` with its data directory `DIR/data` (which may be a mount
    /// point the test made), not started.
    pub fn init_in(dir: tempfile::TempDir, address: &str, init_args: &[&str]) -> AtollNode {
        let data = dir.path().join("data");
        let data = data.to_str().expect("UTF-8 path");
        let mut args = vec!["init", "--data-dir", data, "--address", address];
        args.extend_from_slice(init_args);
        atoll(&args).ok();
        let token = atoll(&["token", "--data-dir", data]);
        remember_token(address, token.ok().trim());
        AtollNode {
            address: address.to_owned(),
            child: None,
            dir,
            start_args: Vec::new(),
            wrapper: Vec::new(),
            binary: None,
        }
    }

    /// `atoll join --cluster CLUSTER` at `address` (not started), with the join token of the
    /// cluster's first address (the one its `init` printed) unless `join_args` give one.
    pub fn prepare_join(address: &str, cluster: &str, join_args: &[&str]) -> AtollNode {
        let dir = tempfile::tempdir().expect("temporary directory");
        AtollNode::prepare_join_in(dir, address, cluster, join_args)
    }

    /// [`AtollNode::prepare_join`] with its data directory `DIR/data` (which may be a mount
    /// point the test made).
    pub fn prepare_join_in(
        dir: tempfile::TempDir,
        address: &str,
        cluster: &str,
        join_args: &[&str],
    ) -> AtollNode {
        let data = dir.path().join("data");
        let data = data.to_str().expect("UTF-8 path");
        let token = known_token(cluster);
        let mut args = vec![
            "join",
            "--data-dir",
            data,
            "--address",
            address,
            "--cluster",
            cluster,
        ];
        if !join_args.iter().any(|a| a.starts_with("--join-token")) {
            args.extend(["--join-token", &token]);
        }
        args.extend_from_slice(join_args);
        atoll(&args).ok();
        remember_token(address, &token);
        AtollNode {
            address: address.to_owned(),
            child: None,
            dir,
            start_args: Vec::new(),
            wrapper: Vec::new(),
            binary: None,
        }
    }

    /// `atoll join` + `atoll start` on a free port; returns once the cluster lists the node.
    pub fn join(cluster: &str, join_args: &[&str]) -> AtollNode {
        let mut node = AtollNode::prepare_join(&free_address(), cluster, join_args);
        node.spawn();
        node.wait_listed(cluster);
        node
    }

    /// The data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The node's id, from its configuration file.
    pub fn id(&self) -> u64 {
        let text = std::fs::read_to_string(self.data_dir().join("atoll.conf")).expect("atoll.conf");
        text.lines()
            .find_map(|l| l.strip_prefix("id = "))
            .expect("an id line")
            .parse()
            .expect("a numeric id")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node runs").id()
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the node process (after `init`, `prepare_join`, `kill` or `stop`), without
    /// waiting for anything.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the node is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("node log");
        let data = self.data_dir();
        let binary = self
            .binary
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_atoll").into());
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .args(["start", "--data-dir"])
            .arg(&data)
            .args(&self.start_args)
            .env(
                "RUST_LOG",
                std::env::var("ATOLL_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("atoll start"));
    }

    /// Starts the node again (after `kill` or `stop`) and waits until it leads.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_leading();
    }

    fn check_alive(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("atoll start exited with {status}:\n{}", self.log());
        }
    }

    fn wait_leading(&mut self) {
        let what = format!("atoll at {} to lead", self.address);
        let address = self.address.clone();
        wait_for(&what, READY_TIMEOUT, || {
            self.check_alive();
            let mut connection = Connection::connect(&address, &DqliteDemo::quick_config()).ok()?;
            match connection.leader() {
                Ok(Some((_, leader))) if leader == address => Some(()),
                _ => None,
            }
        });
    }

    fn wait_listed(&mut self, cluster: &str) {
        let what = format!("atoll at {} to join {cluster}", self.address);
        let address = self.address.clone();
        let addresses: Vec<&str> = cluster.split(',').collect();
        wait_for(&what, READY_TIMEOUT, || {
            self.check_alive();
            let mut client = Client::connect(&addresses, DqliteDemo::quick_config()).ok()?;
            let nodes = client.cluster().ok()?;
            nodes.iter().any(|n| n.address == address).then_some(())
        });
    }

    /// The node's metadata and Raft status (DESCRIBE format 1), if it answers.
    pub fn metadata(&self) -> Option<NodeMetadata> {
        let mut connection =
            Connection::connect_atoll(&self.address, &DqliteDemo::quick_config()).ok()??;
        connection.describe_v1().ok()
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, or `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("the node runs");
            if let Some(status) = child.try_wait().expect("wait for the node") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (a clean stop) and returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the node runs");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        wait_bounded(&mut child, "atoll start (after SIGTERM)")
    }
}

/// Join tokens by node address: `AtollNode::init` records its cluster's, joined nodes inherit
/// it, so `prepare_join` finds the token of the cluster it is given.
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_token(address: &str, token: &str) {
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.retain(|(a, _)| a != address);
    tokens.push((address.to_owned(), token.to_owned()));
}

/// The join token of the cluster at `cluster` (comma-separated addresses: any known one).
pub fn known_token(cluster: &str) -> String {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    cluster
        .split(',')
        .find_map(|address| {
            tokens
                .iter()
                .find(|(a, _)| a == address.trim())
                .map(|(_, t)| t.clone())
        })
        .unwrap_or_else(|| panic!("no join token known for {cluster}: not made by AtollNode"))
}

/// Several atoll nodes: the first made by `atoll init`, the others by `atoll join`, all
/// started with the same settings.
pub struct AtollCluster {
    pub nodes: Vec<AtollNode>,
}

impl AtollCluster {
    /// `count` nodes with `settings` (arguments of `init`/`join`), started; returns once
    /// `voters` of them are voters (the leader's automatic roles promote the joined ones).
    pub fn start(count: usize, settings: &[&str], voters: usize) -> AtollCluster {
        let mut first = AtollNode::init(&free_address(), settings);
        first.restart();
        let mut cluster = AtollCluster { nodes: vec![first] };
        for _ in 1..count {
            let address = cluster.nodes[0].address().to_owned();
            let mut node = AtollNode::prepare_join(&free_address(), &address, settings);
            node.spawn();
            cluster.nodes.push(node);
        }
        cluster.wait_roles(voters, None);
        cluster
    }

    /// Every address, comma-separated.
    pub fn addresses(&self) -> String {
        let addresses: Vec<&str> = self.nodes.iter().map(|n| n.address()).collect();
        addresses.join(",")
    }

    /// The addresses of the running nodes.
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.address().to_owned())
            .collect()
    }

    /// A client of the running nodes.
    pub fn client(&self) -> Client {
        Client::connect(&self.running(), ClientConfig::default()).expect("connect to the cluster")
    }

    /// The index of the node that leads (and says so), polled.
    pub fn leader(&self) -> usize {
        wait_for("a leader", READY_TIMEOUT, || {
            self.nodes
                .iter()
                .position(|n| n.is_running() && n.metadata().is_some_and(|m| m.state == 3))
        })
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id() == id)
            .expect("a node with that id")
    }

    /// The configuration as the leader lists it: (id, role) pairs.
    pub fn roles(&self) -> Vec<(u64, atoll_net::protocol::Role)> {
        let Ok(mut client) = Client::connect(&self.running(), DqliteDemo::quick_config()) else {
            return Vec::new();
        };
        client
            .cluster()
            .map(|nodes| {
                nodes
                    .into_iter()
                    .map(|n| (n.id, n.role.expect("format 1 has roles")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the leader's configuration has `voters` voters (and `standbys` standbys
    /// when given).
    pub fn wait_roles(&self, voters: usize, standbys: Option<usize>) {
        use atoll_net::protocol::Role;
        let what = format!("{voters} voters and {standbys:?} standbys");
        wait_for(&what, READY_TIMEOUT, || {
            let roles = self.roles();
            let count = |role| roles.iter().filter(|(_, r)| *r == role).count();
            (count(Role::Voter) == voters && standbys.is_none_or(|s| count(Role::Standby) == s))
                .then_some(())
        });
    }

    /// Waits until every running node has applied at least the leader's commit index at the
    /// time of the call, and all report the same applied index; returns it.
    pub fn wait_in_sync(&self) -> u64 {
        wait_for(
            "the running nodes to apply the same index",
            READY_TIMEOUT,
            || {
                let applied: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|n| n.is_running())
                    .map(|n| n.metadata().map(|m| m.applied_index))
                    .collect::<Option<_>>()?;
                let first = *applied.first()?;
                applied.iter().all(|a| *a == first).then_some(first)
            },
        )
    }

    /// DUMP of `database` from node `index` (no leadership needed: each node's own copy).
    pub fn dump(&self, index: usize, database: &str) -> Vec<u8> {
        let mut connection =
            Connection::connect(self.nodes[index].address(), &ClientConfig::default())
                .expect("connect");
        let files = connection.dump(database).expect("dump");
        files.into_iter().next().expect("the database file").data
    }
}

impl Node for AtollNode {
    fn address(&self) -> &str {
        &self.address
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AtollNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("log of the atoll node at {}:\n{}", self.address, self.log());
        }
    }
}

/// What a finished process printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts failure (exit status 1) and returns stderr.
    pub fn failed(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(1),
            "`{}` should have failed with status 1:\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// Reads all of a pipe on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` with a deadline; kills it and panics past the deadline, saying where each
/// of its threads was waiting.
fn wait_bounded(child: &mut Child, command: &str) -> ExitStatus {
    match wait_or_kill(child) {
        Ok(status) => status,
        Err(threads) => panic!("`{command}` did not finish within {RUN_TIMEOUT:?}; {threads}"),
    }
}

/// Waits for `child` for at most [`RUN_TIMEOUT`]. Past it, notes what each of its threads was
/// doing (state, kernel wait channel, system call: a diagnosis for a hang that does not
/// reproduce), kills it and returns the note.
fn wait_or_kill(child: &mut Child) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let threads = describe_threads(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(threads);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One line per thread of process `pid`: `tid state wchan syscall` from /proc (what the
/// kernel lets us read; fields it does not are `?`).
fn describe_threads(pid: u32) -> String {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(path).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid}: its threads cannot be listed");
    };
    let mut lines = vec![format!(
        "threads of process {pid} (tid state wchan syscall):"
    )];
    for task in tasks.flatten() {
        let path = task.path();
        let stat = read(path.join("stat"));
        // The state follows the parenthesised command name, which may hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        lines.push(format!(
            "  {} {state} {} {}",
            task.file_name().to_string_lossy(),
            read(path.join("wchan")),
            read(path.join("syscall"))
        ));
    }
    lines.join("\n")
}

/// The `atoll` binary with `args`, history off, quiet logs.
pub fn atoll_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atoll"));
    command
        .args(args)
        .env("ATOLL_HISTORY", "")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a program to completion, feeding it `stdin`.
pub fn run_command(mut command: Command, stdin: Option<&str>) -> Output {
    let description = format!("{command:?}");
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        // The child may exit early (--bail): a closed pipe is fine.
        let _ = pipe.write_all(input.as_bytes());
    }
    let status = wait_or_kill(&mut child);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Ok(status) => Output {
            status,
            stdout,
            stderr,
            command: description,
        },
        Err(threads) => panic!(
            "`{description}` did not finish within {RUN_TIMEOUT:?}; {threads}\nits stdout \
             so far:\n{stdout}\nits stderr so far:\n{stderr}"
        ),
    }
}

/// Runs `atoll ARGS` to completion.
pub fn atoll(args: &[&str]) -> Output {
    run_command(atoll_command(args), None)
}

/// Runs `atoll ARGS` with `stdin` as its standard input.
pub fn atoll_with_stdin(args: &[&str], stdin: &str) -> Output {
    run_command(atoll_command(args), Some(stdin))
}

/// `atoll shell --cluster ADDRESSES DB [more...]`.
pub fn shell(cluster: &str, database: &str, more: &[&str]) -> Output {
    let mut args = vec!["shell", "--cluster", cluster, database];
    args.extend_from_slice(more);
    atoll(&args)
}

/// An `atoll shell` kept running with piped standard input, driven line by line: each
/// statement is written and its output awaited before the next, so a test can act on the
/// cluster between statements of one session.
pub struct LiveShell {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

impl LiveShell {
    /// Starts `atoll shell --cluster CLUSTER DB EXTRA...` reading statements from a pipe.
    pub fn start(cluster: &str, database: &str, extra: &[&str]) -> LiveShell {
        let mut args = vec!["shell", "--cluster", cluster, database];
        args.extend_from_slice(extra);
        let mut command = atoll_command(&args);
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("spawn atoll shell");
        let stdin = child.stdin.take();
        let stdout = lines_of(child.stdout.take().expect("stdout piped"));
        let stderr = lines_of(child.stderr.take().expect("stderr piped"));
        LiveShell {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Writes one line of input.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to the shell");
        stdin.flush().expect("flush to the shell");
    }

    fn expect_line(receiver: &mpsc::Receiver<String>, what: &str, wanted: &str) -> Vec<String> {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(wanted);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no {what} line containing {wanted:?}; saw {seen:#?}"),
            }
        }
    }

    /// Waits for a line of standard output containing `wanted`; returns the lines up to it.
    pub fn expect_stdout(&mut self, wanted: &str) -> Vec<String> {
        Self::expect_line(&self.stdout, "stdout", wanted)
    }

    /// Waits for a line of standard error containing `wanted`; returns the lines up to it.
    pub fn expect_stderr(&mut self, wanted: &str) -> Vec<String> {
        Self::expect_line(&self.stderr, "stderr", wanted)
    }

    /// Closes standard input and waits for the exit status.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_bounded(&mut self.child, "atoll shell")
    }
}

impl Drop for LiveShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program run on a pseudo-terminal through util-linux's `script`, so that it sees a real
/// terminal (rustyline's raw mode, line editing, history) while the test types keys into it.
pub struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    screen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    /// Runs shell command `command` on a terminal, with `ATOLL_HISTORY=history`.
    pub fn start(command: &str, history: &Path) -> Terminal {
        require("script");
        let mut child = Command::new("script")
            .args(["-q", "-f", "-e", "-c", command, "/dev/null"])
            .env("ATOLL_HISTORY", history)
            .env("TERM", "xterm")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn script");
        let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("stdout piped");
        let sink = screen.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..read]);
                sink.lock().expect("screen lock").push_str(&text);
            }
        });
        let stdin = child.stdin.take();
        Terminal {
            child,
            stdin,
            screen,
        }
    }

    /// Types `keys` (raw bytes: `\r` is Enter, `\x7f` Backspace, `\x1b[A` Up, `\x04` Ctrl-D).
    pub fn type_keys(&mut self, keys: &str) {
        let stdin = self.stdin.as_mut().expect("terminal input open");
        stdin
            .write_all(keys.as_bytes())
            .expect("type into the terminal");
        stdin.flush().expect("flush the terminal input");
        // Let the line editor read these keys before the next ones arrive, as a person types.
        thread::sleep(Duration::from_millis(200));
    }

    /// Waits until the screen shows `wanted` (since the last match), then forgets what was
    /// shown up to it.
    pub fn expect(&mut self, wanted: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut screen = self.screen.lock().expect("screen lock");
                if let Some(at) = screen.find(wanted) {
                    screen.drain(..at + wanted.len());
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the terminal never showed {wanted:?}; it shows {screen:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the program to exit.
    pub fn finish(mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child, "script");
        drop(self.stdin.take());
        status
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

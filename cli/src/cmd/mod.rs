//! The subcommands, one module each, and what the client commands share: the `--cluster`
//! arguments, connecting with an error that says what to do, and the CLI's error type.
//!
//! A subcommand module has an `Args` struct (clap derive: its doc comments are the `--help`)
//! and `run(args) -> Result<(), CliError>`. Adding one is a variant of `Command` in main.rs and
//! an arm of its `match`.

pub mod add;
pub mod assign;
pub mod backup;
pub mod cert;
pub mod cluster;
pub mod demo;
pub mod dump;
pub mod init;
pub mod join;
pub mod recover;
pub mod remove;
pub mod restore;
pub mod shell;
pub mod start;
pub mod status;
pub mod token;
pub mod transfer;
pub mod verify;

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use atoll_net::client::{Client, ClientConfig, ClientError};
use atoll_net::protocol::{NodeInfo, Role};

/// What went wrong, said once to the user by main.
#[derive(Debug)]
pub enum CliError {
    /// One line saying what went wrong and what to do.
    Message(String),
    /// Already reported (the shell prints each failed statement's error as it goes); only the
    /// exit status is left to set.
    Reported,
}

impl CliError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError::Message(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Message(message) => f.write_str(message),
            CliError::Reported => f.write_str("errors were reported above"),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // The reader of our output went away (`atoll shell … | head`): nothing to say.
            return CliError::Reported;
        }
        CliError::new(format!("writing output: {e}"))
    }
}

/// Where the cluster is; shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Addresses of one or more nodes of the cluster, comma-separated, written exactly as the
    /// nodes advertise themselves. Any node will do: the leader is found from them.
    #[arg(
        short = 'c',
        long,
        value_name = "HOST:PORT[,...]",
        value_delimiter = ',',
        required = true,
        value_parser = parse_address
    )]
    pub cluster: Vec<String>,

    /// How long to look for a leader (an election may be under way) before giving up.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// The TLS setup, loaded once by `check_tls`.
    #[arg(skip)]
    pub tls_context: Option<atoll_net::tls::TlsContext>,
}

/// TLS files a command uses to reach a TLS cluster, or a new node takes (`init`, `join`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// TLS: the certificate (PEM) to present: the cluster certificate (`atoll cert`), as for
    /// `dqlite -c CERT -k KEY`. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: the certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS: the trust root (PEM) when it is not the certificate itself.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The TLS setup these flags name (`None`: plaintext).
    pub fn context(&self) -> Result<Option<atoll_net::tls::TlsContext>, CliError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        atoll_net::tls::TlsContext::load(cert, key, self.tls_ca.as_deref())
            .map(Some)
            .map_err(|e| CliError::new(format!("TLS: {e}")))
    }
}

/// The settings of a node that `atoll init`, `atoll join` and `atoll start` take. Given to
/// `init` or `join` they go into the new node's `atoll.conf`; given to `start` they change it
/// (for good: the file is rewritten before the node starts).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeSettings {
    /// Leader heartbeat interval (ms; default 30). Followers notice a dead leader after the
    /// election timeout, so failover takes about the election timeout plus a few round trips.
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Election timeout (ms; default 300): each follower waits a random time between this and
    /// twice this without hearing from the leader before it campaigns. Shorter: faster
    /// failover; too short for the network or the disk: needless elections under load.
    #[arg(long, value_name = "MS")]
    pub election_timeout_ms: Option<u64>,

    /// Length of one raft tick (ms; default 10). Without it, a heartbeat or election timeout
    /// given picks the longest tick (1 to 10 ms, at most half the heartbeat) dividing both, so
    /// any milliseconds are kept; with it, they are rounded to whole ticks (and a note says so).
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,

    /// How long a write waits for a busy database before failing with SQLITE_BUSY (ms;
    /// default 5000).
    #[arg(long, value_name = "MS")]
    pub writer_wait_ms: Option<u64>,

    /// How long a write waits while another client's explicit transaction holds the database
    /// before failing with SQLITE_BUSY "database is locked" (ms; default 500). Writes queued
    /// behind group commit never fail this way.
    #[arg(long, value_name = "MS")]
    pub busy_wait_ms: Option<u64>,

    /// Take a snapshot and compact the Raft log every N applied entries (default 8192).
    #[arg(long, value_name = "N")]
    pub snapshot_entries: Option<u64>,

    /// Who changes roles: `auto` (default: the leader keeps --voters voters and --standbys
    /// standbys, promotes joining nodes and replaces unreachable voters) or `manual` (only
    /// `atoll assign` does).
    #[arg(long, value_name = "auto|manual", value_parser = ["auto", "manual"])]
    pub roles: Option<String>,

    /// Voters the leader keeps with automatic roles (default 3).
    #[arg(long, value_name = "N")]
    pub voters: Option<u32>,

    /// Standbys the leader keeps with automatic roles (default 3).
    #[arg(long, value_name = "N")]
    pub standbys: Option<u32>,

    /// With automatic roles, a voter unreachable this long is replaced by a standby or spare
    /// and demoted (ms; default 3000).
    #[arg(long, value_name = "MS")]
    pub unreachable_ms: Option<u64>,

    /// The most databases open at once (two file descriptors each): idle ones are closed to
    /// make room, and an OPEN fails with "too many databases open" only while all are in use
    /// (default 0: sized to the open-file limit, `ulimit -n`, after a reserve). A node holds at
    /// most 4096 databases in all.
    #[arg(long, value_name = "N")]
    pub max_databases: Option<u64>,

    /// A client transaction (a read snapshot or a write) open longer than this is rolled back,
    /// and the client's next request on it fails (ms; default 30000; 0: no limit). An open
    /// reader holds back checkpoints and snapshots, an open writer every other writer.
    #[arg(long, value_name = "MS")]
    pub transaction_timeout_ms: Option<u64>,
}

impl NodeSettings {
    /// Whether any setting was given.
    pub fn any(&self) -> bool {
        self.heartbeat_ms.is_some()
            || self.election_timeout_ms.is_some()
            || self.tick_ms.is_some()
            || self.writer_wait_ms.is_some()
            || self.busy_wait_ms.is_some()
            || self.snapshot_entries.is_some()
            || self.roles.is_some()
            || self.voters.is_some()
            || self.standbys.is_some()
            || self.unreachable_ms.is_some()
            || self.max_databases.is_some()
            || self.transaction_timeout_ms.is_some()
    }

    /// Applies the settings given to `config` and checks the result.
    pub fn apply(&self, config: &mut atoll_node::config::NodeConfig) -> Result<(), CliError> {
        if let Some(note) = config
            .set_timing(self.tick_ms, self.heartbeat_ms, self.election_timeout_ms)
            .map_err(CliError::new)?
        {
            eprintln!("atoll: {note}");
        }
        if let Some(ms) = self.writer_wait_ms {
            config.writer_wait_ms = ms;
        }
        if let Some(ms) = self.busy_wait_ms {
            config.busy_wait_ms = ms;
        }
        if let Some(entries) = self.snapshot_entries {
            config.snapshot_entries = entries;
        }
        if let Some(roles) = &self.roles {
            config.auto_roles = roles == "auto";
        }
        if let Some(voters) = self.voters {
            config.voters = voters;
        }
        if let Some(standbys) = self.standbys {
            config.standbys = standbys;
        }
        if let Some(ms) = self.unreachable_ms {
            config.unreachable_ms = ms;
        }
        if let Some(max) = self.max_databases {
            config.max_databases = max;
        }
        if let Some(ms) = self.transaction_timeout_ms {
            config.transaction_timeout_ms = ms;
        }
        config.validate().map_err(CliError::new)
    }
}

/// A `HOST:PORT` address, trimmed.
pub fn parse_address(text: &str) -> Result<String, String> {
    let address = text.trim();
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not HOST:PORT (a port is needed)"));
    };
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{port}` in `{address}` is not a port number"))?;
    Ok(address.to_owned())
}

/// A positive number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!("{text} seconds is not between 0 and 3600"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A node id: decimal, or hexadecimal with `0x` (as the dqlite shell prints them); never 0.
pub fn parse_node_id(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let id = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("`{text}` is not a node id (a number)"))?;
    if id == 0 {
        return Err("0 is not a node id".into());
    }
    Ok(id)
}

impl ClusterArgs {
    /// Loads the TLS files named (call before `client_config`).
    pub fn check_tls(&mut self) -> Result<(), CliError> {
        self.tls_context = self.tls.context()?;
        Ok(())
    }

    /// The client configuration for these arguments.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(2).min(self.timeout),
            leader_timeout: self.timeout,
            tls: self.tls_context.clone(),
            ..ClientConfig::default()
        }
    }

    /// The addresses joined for messages.
    pub fn joined(&self) -> String {
        self.cluster.join(",")
    }
}

/// An I/O error in a few words ("connection refused" rather than "Connection refused (os error
/// 111)").
pub fn io_words(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "the node closed the connection".into(),
        _ => e.to_string(),
    }
}

/// Dials each address once: `Err` with the first problem when none accepts a TCP connection.
fn probe_reachable(args: &ClusterArgs) -> Result<(), String> {
    let timeout = args.client_config().connect_timeout;
    let mut first_problem = None;
    for address in &args.cluster {
        let resolved: Vec<_> = match address.to_socket_addrs() {
            Ok(resolved) => resolved.collect(),
            Err(e) => {
                first_problem.get_or_insert(format!("cannot resolve {address}: {e}"));
                continue;
            }
        };
        for socket_address in resolved {
            match TcpStream::connect_timeout(&socket_address, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first_problem.get_or_insert(io_words(&e));
                }
            }
        }
    }
    Err(first_problem.unwrap_or_else(|| "no address".into()))
}

/// The message for a cluster without a reachable leader: nothing listens (the nodes are not
/// running), or nodes answer but none leads (an election, or a lost quorum).
pub fn no_leader_message(args: &ClusterArgs, attempts: &[String]) -> String {
    match probe_reachable(args) {
        Err(problem) => format!(
            "cannot reach any node of {}: {problem}; is the node running (`atoll start`)?",
            args.joined()
        ),
        Ok(()) => format!(
            "no leader among {} within {:?} ({}); the cluster may be electing one or have lost \
             its quorum: retry, or look with `atoll cluster --cluster {}`{}",
            args.joined(),
            args.timeout,
            attempts.first().map_or("no answer", String::as_str),
            args.joined(),
            tls_hint(args, attempts)
        ),
    }
}

/// What to check when nodes close the connection at once: a TLS mismatch looks like that.
fn tls_hint(args: &ClusterArgs, attempts: &[String]) -> &'static str {
    let closed = attempts.iter().any(|a| {
        ["reset", "end of file", "certificate", "TLS", "InvalidData"]
            .iter()
            .any(|word| a.contains(word))
    });
    match (closed, args.tls_context.is_some()) {
        (false, _) => "",
        (true, false) => {
            "; a TLS cluster refuses plaintext: give --tls-cert and --tls-key (`atoll cert`)"
        }
        (true, true) => {
            "; with TLS: the node may not serve TLS, or may not trust this certificate (or this \
             client its)"
        }
    }
}

/// Connects to the cluster's leader.
pub fn connect(args: &ClusterArgs) -> Result<Client, CliError> {
    // Fail at once, not after the leader timeout, when nothing listens at all.
    if probe_reachable(args).is_err() {
        return Err(CliError::new(no_leader_message(args, &[])));
    }
    log::debug!("looking for the leader among {}", args.joined());
    let client = Client::connect(&args.cluster, args.client_config()).map_err(|e| match e {
        ClientError::NoLeader { attempts } => CliError::new(no_leader_message(args, &attempts)),
        other => CliError::new(format!(
            "connecting to {}: {}",
            args.joined(),
            explain(&other)
        )),
    })?;
    log::info!(
        "connected to the leader at {}",
        client.leader_address().unwrap_or("?")
    );
    Ok(client)
}

/// A client error in words for a person: the server's message for a failure, what to do for
/// the rest.
pub fn explain(e: &ClientError) -> String {
    match e {
        ClientError::Failure { code, message } => format!("{message} (code {code})"),
        ClientError::Io(io) => format!("connection to the leader lost: {}", io_words(io)),
        ClientError::Protocol(p) => format!("the node broke the protocol: {p}"),
        ClientError::NoLeader { attempts } => format!(
            "no leader found ({}); the cluster may be electing one or have lost its quorum",
            attempts.first().map_or("no answer", String::as_str)
        ),
        ClientError::OutcomeUnknown(inner) => format!(
            "the connection to the leader was lost while the request ran ({}); it may or may \
             not have taken effect, and it was not retried",
            explain(inner)
        ),
        other => other.to_string(),
    }
}

/// The cluster's configuration as the leader `client` reaches knows it.
pub fn configuration(client: &mut Client) -> Result<Vec<NodeInfo>, CliError> {
    client.cluster().map_err(|e| configuration_error(&e))
}

/// A failure to read the configuration, in words.
pub fn configuration_error(e: &ClientError) -> CliError {
    CliError::new(format!("reading the cluster configuration: {}", explain(e)))
}

/// A client error met while questioning one node, in words: an I/O error as [`io_words`]
/// (no "connection to the leader" wording), anything else as [`explain`].
pub fn node_words(e: ClientError) -> String {
    match e {
        ClientError::Io(io) => io_words(&io),
        other => explain(&other),
    }
}

/// The client settings for questioning one node: its own timeouts, the cluster's TLS.
pub fn probe_config(
    connect_timeout: Duration,
    request_timeout: Duration,
    tls: Option<&atoll_net::tls::TlsContext>,
) -> ClientConfig {
    ClientConfig {
        connect_timeout,
        request_timeout,
        tls: tls.cloned(),
        ..ClientConfig::default()
    }
}

/// Runs `probe` on every node at once (a thread each), so unreachable nodes cost one timeout in
/// all; the answers in the order of `nodes`.
pub fn probe_each<T: Send>(
    nodes: &[NodeInfo],
    probe: impl Fn(&NodeInfo) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let probe = &probe;
    std::thread::scope(|scope| {
        let probes: Vec<_> = nodes
            .iter()
            .map(|node| scope.spawn(move || probe(node)))
            .collect();
        probes
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|_| Err("probe failed".into())))
            .collect()
    })
}

/// SQLITE_BUSY: dqlite's answer when another configuration change is still being committed.
const CODE_BUSY: u64 = 5;

/// Runs a membership change, retrying while the server answers that another change is in
/// progress (FAILURE 5: nothing was done, so retrying is safe), until `--timeout`. A node that
/// just joined has its own change in flight for a moment.
pub fn change_membership<T>(
    args: &ClusterArgs,
    mut change: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + args.timeout;
    let mut pause = Duration::from_millis(50);
    // Bounded by the deadline.
    loop {
        match change() {
            Err(ClientError::Failure { code, message })
                if code == CODE_BUSY && Instant::now() + pause < deadline =>
            {
                log::info!("{message}; retrying in {pause:?}");
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The role's name as the CLI writes it.
pub fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Voter) => "voter",
        Some(Role::Standby) => "standby",
        Some(Role::Spare) => "spare",
        None => "-",
    }
}

/// Finds node `id` in the configuration, or says which ids exist.
pub fn find_node(nodes: &[NodeInfo], id: u64, args: &ClusterArgs) -> Result<NodeInfo, CliError> {
    nodes.iter().find(|n| n.id == id).cloned().ok_or_else(|| {
        let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).collect();
        CliError::new(format!(
            "no node with id {id} in the cluster (its nodes: {}); `atoll cluster --cluster {}` \
             lists them",
            ids.join(", "),
            args.joined()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_address() {
        assert_eq!(parse_address(" 127.0.0.1:9001 ").unwrap(), "127.0.0.1:9001");
        assert_eq!(parse_address("[::1]:9001").unwrap(), "[::1]:9001");
        assert!(parse_address("127.0.0.1").is_err());
        assert!(parse_address(":9001").is_err());
        assert!(parse_address("host:99999").is_err());
    }

    #[test]
    fn test_parse_node_id_accepts_decimal_and_hex() {
        assert_eq!(parse_node_id("42"), Ok(42));
        assert_eq!(
            parse_node_id("0x2dc171858c3155be"),
            Ok(0x2dc1_7185_8c31_55be)
        );
        assert!(parse_node_id("0").is_err());
        assert!(parse_node_id("x").is_err());
    }

    #[test]
    fn test_parse_seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}

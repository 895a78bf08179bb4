//! A node's configuration file and data-directory layout.
//!
//! ```text
//! DIR/atoll.conf          this file (mode 0600; temp file, fsync, rename, directory fsync)
//! DIR/cluster.secret      the cluster secret (mode 0600; `secret.rs`)
//! DIR/cluster.crt, .key   TLS (optional, PEM, 0600): present = the node serves only TLS, to
//! DIR/cluster-ca.crt      clients and peers; the CA file (optional) is the trust root, else
//!                         cluster.crt is (`tls.rs`)
//! DIR/raft/               the Raft log (atoll_storage::SegmentLog: LOCK, metadata, segments)
//! DIR/raft/snapshots/     the snapshots (atoll_storage::SnapshotStore): engine snapshot streams
//! DIR/db/                 the engine's databases: NAME, NAME-wal, NAME-atoll (the checkpoint
//!                         record), idle-marks+atoll (atoll_core::Engine owns this directory)
//! DIR/members             the last configuration seen, `id address role` lines (`repair.rs`)
//! DIR/repairing           present while the node is rebuilt from its peers (`repair.rs`)
//! DIR/quarantine/SECS/    damaged raft/ and db/ moved aside by a repair, never deleted
//! DIR/restore/            staged restore pieces NAME.ID.part, NAME.done (`restore.rs`)
//! DIR/timings             written on SIGUSR1 (`timings.rs`)
//! ```
//!
//! `atoll.conf` is `key = value` lines (`#` starts a comment), written by `atoll init` or
//! `atoll join` and rewritten when `atoll start` is given new settings. Required keys:
//! `format` (1), `id`, `address` (advertised exactly as written), `cluster_id` (16 hex digits),
//! `tick_ms`, `heartbeat_ticks`, `election_ticks_min`, `election_ticks_max`, `writer_wait_ms`,
//! `snapshot_entries`. Optional keys (defaults for files written before them): `busy_wait_ms`,
//! `roles` (`auto` or `manual`), `voters`, `standbys`, `unreachable_ms`, `max_databases` (0:
//! sized to the open-file limit), `transaction_timeout_ms` (0: none), `join` (comma-separated
//! addresses, until the node is a member). Unknown keys and a key given twice are refused.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The configuration file's name inside the data directory.
pub const CONFIG_FILE_NAME: &str = "atoll.conf";
/// The Raft log's directory inside the data directory.
pub const RAFT_DIR_NAME: &str = "raft";
/// The engine's directory inside the data directory.
pub const DB_DIR_NAME: &str = "db";
/// The configuration format this code writes and reads.
const FORMAT: u64 = 1;

/// Tick length by default: raft's timeouts are counted in ticks.
pub const TICK_MS_DEFAULT: u64 = 10;
/// How long a writer waits for the write lock of a database by default.
pub const WRITER_WAIT_MS_DEFAULT: u64 = 5_000;
/// How long a writer waits behind another session's explicit transaction before SQLITE_BUSY,
/// by default: well inside the 5 s timeouts of go-dqlite and dqlite-dbapi.
pub const BUSY_WAIT_MS_DEFAULT: u64 = 500;
/// Applied entries between two snapshots by default.
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 8_192;
/// Leader heartbeat interval by default: 3 ticks of 10 ms.
pub const HEARTBEAT_MS_DEFAULT: u64 = 30;
/// Election timeout by default (the lower bound; each follower draws from it up to twice it).
/// Long enough to ride out the loop stalls a slow or shared disk causes under load (a sync of
/// 100 ms and more was measured with three nodes on one disk), short enough for failover well
/// under a second; see ARCHITECTURE.md, "Membership, roles and failover", and the measurements
/// in bench/RESULTS.md.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 300;
/// Voters the leader keeps by default (automatic roles).
pub const VOTERS_DEFAULT: u32 = 3;
/// Standbys the leader keeps by default (automatic roles).
pub const STANDBYS_DEFAULT: u32 = 3;
/// How long a voter may stay unreachable before the leader replaces it, by default.
pub const UNREACHABLE_MS_DEFAULT: u64 = 3_000;

/// A client transaction open longer than this is rolled back, by default (ms).
pub const TRANSACTION_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// File descriptors kept for everything but databases (log segments, snapshots, sockets, SQLite
/// temp files) when the database limit is sized to the descriptor limit: this many, plus a
/// quarter of the limit.
const FDS_RESERVED: u64 = 64;
/// File descriptors one database keeps open (its main file and its WAL).
const FDS_PER_DATABASE: u64 = 2;
/// The database limit when the descriptor limit cannot be read or is unlimited.
const DATABASES_MAX_FALLBACK: u64 = atoll_core::DATABASES_MAX_DEFAULT as u64;

/// Everything `atoll init` decides about a node; `atoll start` reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's id in the cluster (never 0).
    pub id: u64,
    /// The address clients and peers dial, exactly as advertised in LEADER and CLUSTER.
    pub address: String,
    /// A random id for the cluster, drawn by the node that bootstrapped it; peers check it when
    /// they connect, so two clusters never mix (the secret, not this id, keeps others out).
    pub cluster_id: u64,
    /// One raft tick, in milliseconds.
    pub tick_ms: u64,
    /// A leader heartbeat every this many ticks.
    pub heartbeat_ticks: u32,
    /// The election timeout is drawn from `election_ticks_min..election_ticks_max` ticks.
    pub election_ticks_min: u32,
    /// Exclusive upper bound of the election timeout.
    pub election_ticks_max: u32,
    /// How long a writer waits for a database's write lock before failing with SQLITE_BUSY.
    pub writer_wait_ms: u64,
    /// How long a writer waits while another session's explicit transaction holds the write
    /// lock before failing with SQLITE_BUSY "database is locked".
    pub busy_wait_ms: u64,
    /// A snapshot (and log compaction) after this many applied entries.
    pub snapshot_entries: u64,
    /// Automatic roles: the leader promotes and demotes members to keep `voters` voters and
    /// `standbys` standbys, and replaces voters unreachable for `unreachable_ms`. Off, roles
    /// change only when an operator asks (`atoll assign`).
    pub auto_roles: bool,
    /// Voters to keep (automatic roles).
    pub voters: u32,
    /// Standbys to keep (automatic roles).
    pub standbys: u32,
    /// A voter unreachable this long is replaced (automatic roles).
    pub unreachable_ms: u64,
    /// The most databases open at once (idle ones are closed to make room); 0: sized to the
    /// process's file descriptor limit when the node starts ([`NodeConfig::databases_max`]).
    pub max_databases: u64,
    /// A client transaction open longer than this (ms) is rolled back and the client's next
    /// request fails; 0: no limit.
    pub transaction_timeout_ms: u64,
    /// Set by `atoll join` until the node is a member: the addresses of nodes of the cluster it
    /// asks to add it. Empty for a member.
    pub join: Vec<String>,
}

impl NodeConfig {
    /// A configuration with the defaults for `id` at `address`, in a new cluster.
    pub fn new(id: u64, address: String) -> NodeConfig {
        NodeConfig {
            id,
            address,
            cluster_id: random_u64(),
            tick_ms: TICK_MS_DEFAULT,
            heartbeat_ticks: (HEARTBEAT_MS_DEFAULT / TICK_MS_DEFAULT) as u32,
            election_ticks_min: (ELECTION_TIMEOUT_MS_DEFAULT / TICK_MS_DEFAULT) as u32,
            election_ticks_max: (2 * ELECTION_TIMEOUT_MS_DEFAULT / TICK_MS_DEFAULT) as u32,
            writer_wait_ms: WRITER_WAIT_MS_DEFAULT,
            busy_wait_ms: BUSY_WAIT_MS_DEFAULT,
            snapshot_entries: SNAPSHOT_ENTRIES_DEFAULT,
            auto_roles: true,
            voters: VOTERS_DEFAULT,
            standbys: STANDBYS_DEFAULT,
            unreachable_ms: UNREACHABLE_MS_DEFAULT,
            max_databases: 0,
            transaction_timeout_ms: TRANSACTION_TIMEOUT_MS_DEFAULT,
            join: Vec::new(),
        }
    }

    /// The database limit in effect: `max_databases`, or with 0 what the soft limit on open
    /// files leaves after `FDS_RESERVED` and a quarter of it, at two descriptors a database.
    pub fn databases_max(&self) -> usize {
        let max = if self.max_databases > 0 {
            self.max_databases
        } else {
            match open_files_limit() {
                Some(fds) => (fds.saturating_sub(fds / 4).saturating_sub(FDS_RESERVED)
                    / FDS_PER_DATABASE)
                    .max(1),
                None => DATABASES_MAX_FALLBACK,
            }
        };
        usize::try_from(max).unwrap_or(usize::MAX)
    }

    /// Sets the timing from milliseconds: the tick, the heartbeat interval and the election
    /// timeout (its lower bound; each follower draws its timeout up to twice it). Values not
    /// given keep their current length. Without an explicit tick, a heartbeat or election
    /// timeout given picks the longest tick (at most half the heartbeat, at most
    /// `TICK_MS_DEFAULT`) that divides both, so any milliseconds are kept exactly. With an
    /// explicit tick, the heartbeat and election timeout are rounded to the nearest whole
    /// ticks (the heartbeat at least one, the election timeout above it); the answer then says
    /// what was rounded, for the caller to tell the user.
    pub fn set_timing(
        &mut self,
        tick_ms: Option<u64>,
        heartbeat_ms: Option<u64>,
        election_timeout_ms: Option<u64>,
    ) -> Result<Option<String>, String> {
        let heartbeat = heartbeat_ms.unwrap_or(self.heartbeat_ms());
        let election = election_timeout_ms.unwrap_or(self.election_timeout_ms());
        if heartbeat == 0 {
            return Err("the heartbeat must be at least 1 ms".into());
        }
        if election <= heartbeat {
            return Err(format!(
                "the election timeout ({election} ms) must be above the heartbeat \
                 ({heartbeat} ms)"
            ));
        }
        let tick = match tick_ms {
            Some(tick) => tick,
            None if heartbeat_ms.is_some() || election_timeout_ms.is_some() => {
                let common = gcd(heartbeat, election);
                let most = (heartbeat / 2).clamp(1, TICK_MS_DEFAULT);
                (1..=most)
                    .rev()
                    .find(|t| common.is_multiple_of(*t))
                    .unwrap_or(1)
            }
            None => self.tick_ms,
        };
        if tick == 0 {
            return Err("the tick must be at least 1 ms".into());
        }
        let ticks = |ms: u64| -> Result<u32, String> {
            let rounded = ms.saturating_add(tick / 2) / tick;
            u32::try_from(rounded).map_err(|_| format!("{ms} ms is too long a timeout"))
        };
        let heartbeat_ticks = ticks(heartbeat)?.max(1);
        let election_ticks = ticks(election)?.max(heartbeat_ticks + 1);
        let election_ticks_max = election_ticks
            .checked_mul(2)
            .ok_or_else(|| format!("{election} ms is too long a timeout"))?;
        let note = (u64::from(heartbeat_ticks) * tick != heartbeat
            || u64::from(election_ticks) * tick != election)
            .then(|| {
                format!(
                    "with a tick of {tick} ms, the heartbeat ({heartbeat} ms) and election \
                     timeout ({election} ms) are rounded to {} ms and {} ms",
                    u64::from(heartbeat_ticks) * tick,
                    u64::from(election_ticks) * tick
                )
            });
        self.tick_ms = tick;
        self.heartbeat_ticks = heartbeat_ticks;
        self.election_ticks_min = election_ticks;
        self.election_ticks_max = election_ticks_max;
        Ok(note)
    }

    /// The heartbeat interval in milliseconds.
    pub fn heartbeat_ms(&self) -> u64 {
        u64::from(self.heartbeat_ticks) * self.tick_ms
    }

    /// The lower bound of the election timeout in milliseconds.
    pub fn election_timeout_ms(&self) -> u64 {
        u64::from(self.election_ticks_min) * self.tick_ms
    }

    /// Checks the values and their relations.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must not be 0".into());
        }
        validate_address(&self.address)?;
        if !(1..=1000).contains(&self.tick_ms) {
            return Err("tick_ms must be between 1 and 1000".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks_min <= self.heartbeat_ticks {
            return Err("heartbeat_ticks must be at least 1 and below election_ticks_min".into());
        }
        if self.election_ticks_max <= self.election_ticks_min {
            return Err("election_ticks_max must be above election_ticks_min".into());
        }
        if self.writer_wait_ms == 0 || self.snapshot_entries == 0 {
            return Err("writer_wait_ms and snapshot_entries must be at least 1".into());
        }
        if self.voters == 0 || self.voters > 64 || self.standbys > 64 {
            return Err("voters must be 1..=64 and standbys 0..=64".into());
        }
        if self.unreachable_ms < self.election_timeout_ms() {
            return Err(format!(
                "unreachable_ms ({}) must be at least the election timeout ({} ms)",
                self.unreachable_ms,
                self.election_timeout_ms()
            ));
        }
        for address in &self.join {
            validate_address(address)?;
        }
        Ok(())
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# atoll node configuration, written by `atoll init`. Times in milliseconds or raft\n\
             # ticks. Change with care: the id, address and cluster id identify this node.\n",
        );
        let _ = writeln!(text, "format = {FORMAT}");
        let _ = writeln!(text, "id = {}", self.id);
        let _ = writeln!(text, "address = {}", self.address);
        let _ = writeln!(text, "cluster_id = {:016x}", self.cluster_id);
        let _ = writeln!(text, "tick_ms = {}", self.tick_ms);
        let _ = writeln!(text, "heartbeat_ticks = {}", self.heartbeat_ticks);
        let _ = writeln!(text, "election_ticks_min = {}", self.election_ticks_min);
        let _ = writeln!(text, "election_ticks_max = {}", self.election_ticks_max);
        let _ = writeln!(text, "writer_wait_ms = {}", self.writer_wait_ms);
        let _ = writeln!(text, "busy_wait_ms = {}", self.busy_wait_ms);
        let _ = writeln!(text, "snapshot_entries = {}", self.snapshot_entries);
        let roles = if self.auto_roles { "auto" } else { "manual" };
        let _ = writeln!(text, "roles = {roles}");
        let _ = writeln!(text, "voters = {}", self.voters);
        let _ = writeln!(text, "standbys = {}", self.standbys);
        let _ = writeln!(text, "unreachable_ms = {}", self.unreachable_ms);
        let _ = writeln!(text, "max_databases = {}", self.max_databases);
        let _ = writeln!(
            text,
            "transaction_timeout_ms = {}",
            self.transaction_timeout_ms
        );
        if !self.join.is_empty() {
            let _ = writeln!(text, "join = {}", self.join.join(","));
        }
        text
    }

    /// Parses the file's text; every key is required, unknown keys are refused.
    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        let mut values = std::collections::BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: expected `key = value`", number + 1));
            };
            if values
                .insert(key.trim().to_owned(), value.trim().to_owned())
                .is_some()
            {
                return Err(format!(
                    "line {}: `{}` appears twice",
                    number + 1,
                    key.trim()
                ));
            }
        }
        let mut take = |key: &str| -> Result<String, String> {
            values
                .remove(key)
                .ok_or_else(|| format!("`{key}` is missing"))
        };
        fn number<T: std::str::FromStr>(key: &str, value: String) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("`{key} = {value}` is not a valid number"))
        }
        let format: u64 = number("format", take("format")?)?;
        if format != FORMAT {
            return Err(format!(
                "format {format} is not supported (this atoll reads {FORMAT})"
            ));
        }
        let cluster_id = take("cluster_id")?;
        let config = NodeConfig {
            id: number("id", take("id")?)?,
            address: take("address")?,
            cluster_id: u64::from_str_radix(&cluster_id, 16)
                .map_err(|_| format!("`cluster_id = {cluster_id}` is not hexadecimal"))?,
            tick_ms: number("tick_ms", take("tick_ms")?)?,
            heartbeat_ticks: number("heartbeat_ticks", take("heartbeat_ticks")?)?,
            election_ticks_min: number("election_ticks_min", take("election_ticks_min")?)?,
            election_ticks_max: number("election_ticks_max", take("election_ticks_max")?)?,
            writer_wait_ms: number("writer_wait_ms", take("writer_wait_ms")?)?,
            busy_wait_ms: BUSY_WAIT_MS_DEFAULT,
            snapshot_entries: number("snapshot_entries", take("snapshot_entries")?)?,
            auto_roles: true,
            voters: VOTERS_DEFAULT,
            standbys: STANDBYS_DEFAULT,
            unreachable_ms: UNREACHABLE_MS_DEFAULT,
            max_databases: 0,
            transaction_timeout_ms: TRANSACTION_TIMEOUT_MS_DEFAULT,
            join: Vec::new(),
        };
        // Keys added for clusters are optional: a file written before them gets the defaults.
        let mut config = config;
        let mut optional = |key: &str| values.remove(key);
        if let Some(roles) = optional("roles") {
            config.auto_roles = match roles.as_str() {
                "auto" => true,
                "manual" => false,
                other => return Err(format!("`roles = {other}`: expected auto or manual")),
            };
        }
        if let Some(value) = optional("voters") {
            config.voters = number("voters", value)?;
        }
        if let Some(value) = optional("standbys") {
            config.standbys = number("standbys", value)?;
        }
        if let Some(value) = optional("busy_wait_ms") {
            config.busy_wait_ms = number("busy_wait_ms", value)?;
        }
        if let Some(value) = optional("unreachable_ms") {
            config.unreachable_ms = number("unreachable_ms", value)?;
        }
        if let Some(value) = optional("max_databases") {
            config.max_databases = number("max_databases", value)?;
        }
        if let Some(value) = optional("transaction_timeout_ms") {
            config.transaction_timeout_ms = number("transaction_timeout_ms", value)?;
        }
        if let Some(value) = optional("join") {
            config.join = value
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect();
        }
        if let Some(key) = values.keys().next() {
            return Err(format!("unknown key `{key}`"));
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads `DIR/atoll.conf`.
    pub fn read(data_dir: &Path) -> Result<NodeConfig, String> {
        let path = data_dir.join(CONFIG_FILE_NAME);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!(
                "{} not found: is {} a data directory made by `atoll init`?",
                path.display(),
                data_dir.display()
            ),
            _ => format!("reading {}: {e}", path.display()),
        })?;
        NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `DIR/atoll.conf` atomically with mode 0600: a temporary file, fsync, rename,
    /// directory fsync.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        super::secret::write_private(data_dir, CONFIG_FILE_NAME, self.to_text().as_bytes())
    }
}

/// The Raft log's directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RAFT_DIR_NAME)
}

/// The engine's directory.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_DIR_NAME)
}

/// `HOST:PORT` with a non-empty host and a port number that is not 0 (the address is
/// advertised: a client must be able to dial it).
pub fn validate_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not HOST:PORT"));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("`{address}` has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "`{port}` in `{address}` is not a port number (1-65535)"
        )),
        Ok(_) => Ok(()),
    }
}

/// A random number from the operating system ([`crate::inputs::OsRandom`]): enough for a
/// cluster id and election seeds.
pub fn random_u64() -> u64 {
    crate::inputs::os_random_u64()
}

/// The soft limit on open files of this process (Linux: `/proc/self/limits`), `None` when
/// unknown or unlimited.
fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The greatest common divisor of `a` and `b`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_round_trips_through_its_text() {
        let config = NodeConfig::new(7, "127.0.0.1:9001".into());
        assert_eq!(NodeConfig::parse(&config.to_text()).unwrap(), config);
    }

    #[test]
    fn test_config_refuses_bad_files() {
        let good = NodeConfig::new(7, "127.0.0.1:9001".into()).to_text();
        let cases = [
            (good.replace("id = 7", "id = 0"), "id must not be 0"),
            (good.replace("tick_ms = 10\n", ""), "`tick_ms` is missing"),
            (format!("{good}color = red\n"), "unknown key `color`"),
            (good.replace("format = 1", "format = 9"), "format 9"),
            (
                good.replace("address = 127.0.0.1:9001", "address = x"),
                "HOST:PORT",
            ),
            (
                good.replace("tick_ms = 10", "tick_ms = ten"),
                "not a valid number",
            ),
            (format!("{good}id = 8\n"), "appears twice"),
        ];
        for (text, wanted) in cases {
            let error = NodeConfig::parse(&text).unwrap_err();
            assert!(error.contains(wanted), "{error} should mention {wanted}");
        }
    }

    #[test]
    fn test_cluster_keys_are_optional_and_round_trip() {
        let mut config = NodeConfig::new(7, "127.0.0.1:9001".into());
        config.auto_roles = false;
        config.voters = 5;
        config.join = vec!["127.0.0.1:9002".into(), "127.0.0.1:9003".into()];
        assert_eq!(NodeConfig::parse(&config.to_text()).unwrap(), config);
        // A file from before clusters: the defaults.
        let old: String = NodeConfig::new(7, "127.0.0.1:9001".into())
            .to_text()
            .lines()
            .filter(|l| {
                ![
                    "roles",
                    "voters",
                    "standbys",
                    "unreachable_ms",
                    "max_databases",
                    "transaction_timeout_ms",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = NodeConfig::parse(&old).unwrap();
        assert!(parsed.auto_roles);
        assert_eq!((parsed.voters, parsed.standbys), (3, 3));
        assert!(parsed.join.is_empty());
        assert!(NodeConfig::parse(&format!("{old}roles = sometimes\n")).is_err());
    }

    #[test]
    fn test_timing_from_milliseconds() {
        let mut config = NodeConfig::new(7, "127.0.0.1:9001".into());
        assert_eq!(
            (config.heartbeat_ms(), config.election_timeout_ms()),
            (30, 300)
        );
        config.set_timing(None, Some(4), Some(20)).unwrap();
        assert_eq!(config.tick_ms, 2);
        assert_eq!((config.heartbeat_ticks, config.election_ticks_min), (2, 10));
        assert_eq!(config.election_ticks_max, 20);
        config.set_timing(Some(1), None, Some(30)).unwrap();
        assert_eq!(
            (config.heartbeat_ms(), config.election_timeout_ms()),
            (4, 30)
        );
        // Any milliseconds: the tick divides both (45 and 450: a tick of 9 ms).
        let mut config = NodeConfig::new(7, "127.0.0.1:9001".into());
        assert_eq!(config.set_timing(None, Some(45), Some(450)), Ok(None));
        assert_eq!(config.tick_ms, 9);
        assert_eq!(
            (config.heartbeat_ms(), config.election_timeout_ms()),
            (45, 450)
        );
        assert_eq!(config.set_timing(None, Some(7), Some(100)), Ok(None));
        assert_eq!(config.tick_ms, 1);
        assert_eq!(
            (config.heartbeat_ticks, config.election_ticks_min),
            (7, 100)
        );
        // An explicit tick rounds, and says so.
        let note = config.set_timing(Some(10), Some(15), Some(333)).unwrap();
        assert!(note.unwrap().contains("rounded to 20 ms and 330 ms"));
        assert_eq!((config.heartbeat_ticks, config.election_ticks_min), (2, 33));
        assert_eq!(config.election_ticks_max, 66);
        config.set_timing(Some(10), Some(1), Some(12)).unwrap();
        assert_eq!((config.heartbeat_ticks, config.election_ticks_min), (1, 2));
        config.validate().unwrap();
        assert!(config.set_timing(None, Some(50), Some(40)).is_err());
        assert!(config.set_timing(None, Some(0), Some(40)).is_err());
        assert!(config.set_timing(Some(0), Some(5), Some(40)).is_err());
        assert!(config.set_timing(Some(1), Some(5), Some(u64::MAX)).is_err());
    }

    #[test]
    fn test_address_validation() {
        assert!(validate_address("127.0.0.1:9001").is_ok());
        assert!(validate_address("node-1.local:1").is_ok());
        assert!(validate_address("[::1]:9001").is_ok());
        assert!(validate_address("127.0.0.1").is_err());
        assert!(validate_address(":9001").is_err());
        assert!(validate_address("127.0.0.1:0").is_err());
        assert!(validate_address("127.0.0.1:70000").is_err());
    }
}

//! `atoll-node`: the node as a library. One thread, one loop, wiring the reactor (`atoll_net`),
//! Raft (`atoll_raft`), the segment log (`atoll_storage`) and the SQLite engine (`atoll_core`).
//! net never calls core; this crate is where client requests become engine calls and engine
//! proposals become Raft entries.
//!
//! ```text
//! loop {                                             // the one loop that never ends
//!     reactor.poll(timeout)                          // flush, wait, accept, read, decode, timers
//!     engine.set_time(now)
//!     for event: Request -> engine call | raft request; Drained -> next ROWS / DUMP piece;
//!                Closed -> engine.close_session; Timer(tick) -> raft.tick
//!     propose_batch(every proposal of the turn)      // rounds: each proposed command lets
//!                                                    // its database's next group run on top
//!     while raft.has_ready():                        // persist, sync off the loop, apply
//!         persist_ready; send; sync request (log_sync.rs); engine.apply(committed) -> responses
//!     a sync done: on_persisted; send the acknowledgements that waited for it
//!     leadership checks, parked requests, membership waiters, snapshot/checkpoint policy
//! }
//! ```
//!
//! Invariants: an answer to a write is sent only after `engine.apply` of its command, which
//! raft hands out only once the entry is durable in the local log (and, with peers, on a
//! majority); the Raft log is never compacted past `engine.min_checkpoint_index()`, because
//! crash recovery replays the log after each database's checkpoint; a new leader serves no
//! request that needs the leader before it has applied the first entry of its term (so every
//! write acknowledged by an earlier term is visible first). See ARCHITECTURE.md,
//! "The flow of a write" and "The flow of a read".
//!
//! Command entries carry one of three payloads, told apart by their magic: a transaction's
//! frames (`ATLC`, [`atoll_core::command`]), a restore piece (`ATRS`, `restore.rs`) and a verify
//! point (`ATVF`, `verify.rs`). The data directory is laid out in `config.rs`.

#![forbid(unsafe_code)]

mod clients;
pub mod config;
pub mod database_header;
mod disk;
pub mod inputs;
mod janitor;
mod join;
pub mod log_sync;
mod memory;
mod metrics;
pub mod network;
mod peers;
mod reads;
pub mod recover;
pub mod repair;
mod restore;
mod roles;
pub mod secret;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sim_network;
mod snapshot_job;
mod timings;
pub mod tls;
mod values;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atoll_core::{Applied, Engine, EngineConfig, Proposal, SessionId};
use atoll_net::peer::ClusterSecret;
use atoll_net::reactor::{ConnId, Event, PeerConfig, Reactor, ReactorConfig, Waker};
use atoll_raft::{
    bootstrap_entry, persist_ready, Config as RaftConfig, Configuration, EntryKind, LogIndex,
    MemberRole, NodeId, Payload, RawNode, Ready, SnapshotMeta, StateRole, Term,
};
use atoll_storage::{
    Disk, LogRead, LogStore, Options, SegmentLog, SnapshotData, SnapshotWriter, StdDisk,
};
use log::{debug, error, info, warn};
use network::Network;

use clients::{ChangeWaiter, Client};
use config::NodeConfig;
use inputs::{Clock, Inputs, Random};
use snapshot_job::{Progress, SnapshotJob};

/// The reactor timer token of the raft tick.
const TICK_TOKEN: u64 = 1;

/// The most committed entries one turn applies; the rest wait for the next turn (`busy`), so
/// that messages and timers are seen in between. Applying also stops once a quarter of the
/// shortest election timeout has passed, but never before [`APPLY_TURN_MIN`].
const APPLY_TURN_ENTRIES_MAX: usize = 32;

/// The shortest apply budget of a turn, however short the election timeout.
const APPLY_TURN_MIN: Duration = Duration::from_millis(1);
/// A node that applied nothing for this long checkpoints every database (TRUNCATE), so that a
/// restart replays little and the WAL files give their space back.
const IDLE_CHECKPOINT_AFTER: Duration = Duration::from_secs(2);
/// A snapshot from the leader that could not be stored for want of space: chunks are dropped
/// unread this long before the next try (the leader resends them when it sees no progress).
const SNAPSHOT_RECEIVE_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot attempt that could not start (a database not settled after a restart, a full
/// disk) is retried after this many more applied entries.
const SNAPSHOT_RETRY_ENTRIES: u64 = 256;
/// Largest transaction a node accepts (captured frame bytes): its command must fit one raft
/// entry (`atoll_raft::codec::ENTRY_BYTES_MAX`, 32 MiB) with room for the command's headers.
const TRANSACTION_BYTES_MAX: usize = 30 << 20;
/// The most commands of one database in flight (proposed, not yet applied): the next group of
/// writers runs on top of them and is proposed without waiting for their apply.
const CHAIN_MAX: usize = 4;
/// Largest peer frame: one raft message, which holds at least one whole entry.
const PEER_FRAME_BYTES_MAX: u32 = 40 << 20;
/// Bytes queued per peer: one largest frame and some more. A slow or dead peer costs at most
/// this much memory before frames to it are dropped (raft resends).
const PEER_QUEUE_BYTES_MAX: usize = 48 << 20;

const _: () = assert!((TRANSACTION_BYTES_MAX as u64) < atoll_raft::codec::ENTRY_BYTES_MAX);
const _: () = assert!(atoll_raft::codec::ENTRY_BYTES_MAX + (1 << 20) < PEER_FRAME_BYTES_MAX as u64);
const _: () = assert!(PEER_FRAME_BYTES_MAX as usize + 64 < PEER_QUEUE_BYTES_MAX);

/// What became of a ready's entries (`Node::append_entries`).
enum Append {
    /// In the log (durable once a sync covers them).
    Done,
    /// Not appended: the disk is full, or the term and vote are unsaved.
    Refused,
    /// Not appended: the open segment is full and being closed off the loop.
    Closing,
}

/// The ticks to count when the tick timer fires at `now`, the last counted tick boundary being
/// `tick_at`: every whole tick since (at least one, at most `max`), and the new boundary. A
/// stall longer than `max` ticks is forgotten beyond them: the boundary moves to `now`.
fn count_ticks(tick_at: Instant, now: Instant, tick: Duration, max: u32) -> (u32, Instant) {
    let elapsed = now.saturating_duration_since(tick_at);
    let ticks = (elapsed.as_nanos() / tick.as_nanos()).max(1);
    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).min(max.max(1));
    let mut next = tick_at + tick * ticks;
    if now.saturating_duration_since(next) > tick {
        next = now;
    }
    (ticks, next)
}

/// What `atoll start` may add to the node's configuration file for this run only.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Addresses to dial for some peers instead of their configured ones (tests route a node's
    /// outbound peer connections through fault-injecting proxies); hidden flag `--peer-route`.
    pub peer_routes: HashMap<u64, String>,
    /// Client connections idle this long are closed (`None`: never); `--client-idle-timeout`.
    pub client_idle_timeout: Option<Duration>,
    /// Set (by SIGHUP) to reload the TLS files: new connections use them, open ones drain.
    pub tls_reload: Arc<AtomicBool>,
    /// Where to serve Prometheus metrics (`--metrics-address`), if anywhere.
    pub metrics_address: Option<String>,
    /// Damage found this soon after a repair in this process is not repaired again by itself
    /// (`None`: 10 minutes); `--repair-again-after`.
    pub repair_again_after: Option<Duration>,
    /// Entries kept behind a snapshot when the log compacts (`None`: raft's default, 1024). The
    /// simulator keeps few, so that its short runs compact and install snapshots.
    pub snapshot_trailing_entries: Option<u64>,
    /// Size of new Raft log segment files (`None`: the storage default, 8 MiB). The simulator
    /// uses small ones: its nodes open often, and each open reads the open segment whole.
    pub log_segment_bytes: Option<u64>,
}

/// Why the node stopped with an error. Any of them is fatal: the operator restarts the node,
/// and recovery brings it back from what is durable.
#[derive(Debug)]
pub enum NodeError {
    /// Starting failed: configuration, data directory, address.
    Start(String),
    /// The log, the engine or the reactor failed while running.
    Fatal(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Start(message) | NodeError::Fatal(message) => f.write_str(message),
        }
    }
}

fn fatal(what: &str, error: impl fmt::Display) -> NodeError {
    NodeError::Fatal(format!("{what}: {error}"))
}

/// Creates the data directory of the first node of a new cluster: the configuration file and a
/// Raft log holding the bootstrap configuration (this node, a voter) at index 1.
pub fn init(data_dir: &Path, config: &NodeConfig, secret: &ClusterSecret) -> Result<(), NodeError> {
    let mut configuration = Configuration::new();
    configuration.insert(NodeId(config.id), config.address.clone(), MemberRole::Voter);
    create(
        StdDisk::shared(),
        data_dir,
        config,
        secret,
        Some(&configuration),
        Options::default(),
    )
}

/// Creates the data directory of one node of a cluster bootstrapped whole (the simulator's):
/// every member's log holds the same `configuration` at index 1, as etcd's initial cluster.
/// The log and the database directory go on `disk` (the node's `Inputs::disk`);
/// `log_segment_bytes` as in [`StartOptions`].
pub fn init_member(
    disk: Arc<dyn Disk>,
    data_dir: &Path,
    config: &NodeConfig,
    secret: &ClusterSecret,
    configuration: &Configuration,
    log_segment_bytes: Option<u64>,
) -> Result<(), NodeError> {
    if configuration.get(NodeId(config.id)).is_none() {
        return Err(NodeError::Start(format!(
            "node {} is not in the bootstrap configuration",
            config.id
        )));
    }
    create(
        disk,
        data_dir,
        config,
        secret,
        Some(configuration),
        log_options(log_segment_bytes),
    )
}

/// The segment log's options for a segment size (`None`: the default).
fn log_options(segment_bytes: Option<u64>) -> Options {
    let mut options = Options::default();
    if let Some(bytes) = segment_bytes {
        options.segment_bytes = bytes;
    }
    options
}

/// Creates the data directory of a node that will join a cluster (`config.join` names it):
/// the configuration file and an empty Raft log. The log and the databases come from the
/// leader once the node is added (`atoll start`).
pub fn prepare_join(
    data_dir: &Path,
    config: &NodeConfig,
    secret: &ClusterSecret,
) -> Result<(), NodeError> {
    prepare_join_on(StdDisk::shared(), data_dir, config, secret)
}

/// [`prepare_join`] with the log and the database directory on `disk`.
pub fn prepare_join_on(
    disk: Arc<dyn Disk>,
    data_dir: &Path,
    config: &NodeConfig,
    secret: &ClusterSecret,
) -> Result<(), NodeError> {
    assert!(!config.join.is_empty(), "a joining node knows its cluster");
    create(disk, data_dir, config, secret, None, Options::default())
}

fn create(
    disk: Arc<dyn Disk>,
    data_dir: &Path,
    config: &NodeConfig,
    secret: &ClusterSecret,
    bootstrap: Option<&Configuration>,
    log_options: Options,
) -> Result<(), NodeError> {
    config.validate().map_err(NodeError::Start)?;
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(NodeError::Start(format!(
                    "{} is not empty: `atoll init` and `atoll join` only set up a new, empty \
                     data directory (to run an existing node: `atoll start --data-dir {}`)",
                    data_dir.display(),
                    data_dir.display()
                )));
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                NodeError::Start(format!("cannot create {}: {e}", data_dir.display()))
            })?;
        }
        Err(error) => {
            return Err(NodeError::Start(format!(
                "cannot read {}: {error}",
                data_dir.display()
            )))
        }
    }
    let start = |what: &str, e: &dyn fmt::Display| NodeError::Start(format!("{what}: {e}"));
    let mut log = SegmentLog::open_on(Arc::clone(&disk), config::raft_dir(data_dir), log_options)
        .map_err(|e| start("creating the Raft log", &e))?;
    if let Some(configuration) = bootstrap {
        log.append(&[bootstrap_entry(configuration)])
            .map_err(|e| start("writing the bootstrap entry", &e))?;
        log.sync().map_err(|e| start("syncing the Raft log", &e))?;
    }
    drop(log);
    atoll_storage::disk::create_dir_durably(&*disk, &config::db_dir(data_dir))
        .map_err(|e| start("creating the database directory", &e))?;
    secret::write_secret(data_dir, secret).map_err(|e| start("writing the cluster secret", &e))?;
    // The configuration file last: a directory without it is an unfinished init.
    config
        .write(data_dir)
        .map_err(|e| start("writing the configuration", &e))?;
    Ok(())
}

/// Counters for the log and for tests (printed at shutdown).
#[derive(Debug, Default)]
struct Stats {
    entries_proposed: u64,
    apply_yields: u64,
    commands_chained: u64,
    chain_longest: u64,
    commands_abandoned: u64,
    proposal_batches: u64,
    syncs: u64,
    commands_applied: u64,
    commands_stale: u64,
    /// The index of the last command rejected as stale.
    stale_last: Option<u64>,
    snapshots: u64,
    snapshots_installed: u64,
    /// Snapshot streams from the leader refused: too large for the disk, or a full disk.
    snapshots_refused: u64,
    messages_refused: u64,
}

/// What a host (a test, a simulator) sees of a node between turns: read from the node's
/// state, never from its log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its Raft role.
    pub role: StateRole,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of, if any.
    pub leader: Option<NodeId>,
    /// Raft's commit index.
    pub commit: LogIndex,
    /// The index the databases reflect.
    pub applied: LogIndex,
    /// The first and last index in the segment log (compaction moves the first).
    pub log_first: LogIndex,
    /// The last index in the segment log.
    pub log_last: LogIndex,
    /// The index of the snapshot Raft knows (taken or installed), if any.
    pub snapshot: Option<LogIndex>,
    /// Snapshots taken by this node since it opened.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader since it opened.
    pub snapshots_installed: u64,
    /// Commands applied to the engine since it opened.
    pub commands_applied: u64,
    /// Turns whose apply stopped at its budget, leaving committed entries to the next turn,
    /// since it opened.
    pub apply_yields: u64,
    /// Commands this node proposed on top of others of their database still in flight (chains
    /// longer than one), since it opened.
    pub commands_chained: u64,
    /// The most commands of one database in flight at once, since it opened.
    pub chain_longest: u64,
    /// Commands in flight when this node lost leadership (their chains discarded), since it
    /// opened.
    pub commands_abandoned: u64,
    /// Commands rejected as computed against another state than the one they follow in the
    /// log (`Applied::Stale`) since it opened: a leader computed one against a state behind
    /// its log (nothing should, the check is a last defence).
    pub commands_stale: u64,
    /// The index of the last command rejected as stale.
    pub stale_last: Option<LogIndex>,
    /// The voters of the Raft configuration this node follows.
    pub voters: Vec<NodeId>,
}

/// A running node. Built by [`Node::open`], run by [`Node::run`].
pub struct Node {
    config: NodeConfig,
    data_dir: PathBuf,
    /// The transport: the mio reactor in production, a simulated network in the simulator.
    reactor: Box<dyn Network>,
    raft: RawNode<SegmentLog>,
    engine: Engine,
    clients: HashMap<ConnId, Client>,
    sessions: HashMap<SessionId, ConnId>,
    /// Proposals taken from the engine this turn, proposed together at its end.
    proposals: Vec<Proposal>,
    /// Requests that need a leader that has not applied its term's first entry yet.
    parked: Vec<(ConnId, atoll_net::protocol::Request)>,
    /// Membership and transfer requests waiting for Raft.
    changes: Vec<ChangeWaiter>,
    shutdown: Arc<AtomicBool>,
    started: Instant,
    tick: Duration,
    /// The term in which this node last saw itself leader (detects leadership loss).
    leader_term: Option<Term>,
    weight: u64,
    /// The snapshot being received from a leader, and the bytes written to it so far.
    incoming: Option<(SnapshotWriter, u64)>,
    /// The snapshot received whole and made durable, for raft's install in the next ready.
    incoming_finished: Option<atoll_storage::SnapshotMeta>,
    /// A snapshot from the leader that raft installed (its file is durable, the log restarts
    /// after it) but the engine could not, for want of space: the databases are behind raft.
    /// Until it is installed (retried at most every `DISK_RETRY_INTERVAL`) nothing is applied
    /// or read, no raft message leaves, no entry is appended and raft is not ticked. A crash
    /// meanwhile is covered: at start the databases behind the snapshot get it installed.
    install_pending: Option<atoll_storage::SnapshotMeta>,
    /// A snapshot from the leader could not be stored (a full disk): chunks arriving before
    /// this instant are dropped unread (the leader resends them), so that a disk still full
    /// is not tried at the pace of a round trip. Logged once per full state.
    incoming_refused_until: Option<Instant>,
    /// Snapshots being streamed to followers, open for reads at offsets (chunks are read
    /// from the file when they are sent, never the whole snapshot into memory).
    outgoing: Vec<SnapshotData>,
    /// Peer addresses: routes from `--peer-route`, then the configuration's, then what peers
    /// announced in their hellos (a node learns its leader's address before the log tells it).
    peer_routes: HashMap<u64, String>,
    peer_announced: HashMap<u64, String>,
    /// (sender, reason) of refused peer messages already logged at warn level (bounded).
    peer_refusals_logged: std::collections::HashSet<(u64, u8)>,
    /// The configurations the reactor's peer addresses follow (the latest one's index, the
    /// committed one's).
    peers_configuration_index: (LogIndex, LogIndex),
    /// When this node last knew a leader (itself included): a member without one for long may
    /// lag behind a configuration it has not received (`peers.rs`, `refuse_message`).
    leader_seen_at: Instant,
    /// Peers whose send failures were logged already (log once, then debug).
    peer_send_failures: HashMap<u64, u64>,
    /// The instant of the last counted raft tick.
    tick_at: Instant,
    /// Reads of this turn, confirmed together with one read index; reads waiting for theirs.
    reads: reads::Reads,
    /// Automatic roles (on the leader).
    roles: roles::Roles,
    /// A join request in progress (a node made by `atoll join`, not a member yet).
    join: Option<join::Join>,
    /// SIGTERM on a leader: leadership is handed over first, until this deadline.
    handover_until: Option<Instant>,
    /// After a handover, the node keeps answering (as a follower) until this instant.
    linger_until: Option<Instant>,
    /// Time spent this turn persisting, syncing and applying (reported for slow turns).
    turn_persist: Duration,
    turn_sync: Duration,
    /// The longest step of this turn's `after_turn`, and its time.
    turn_after_step: (&'static str, Duration),
    turn_apply: Duration,
    snapshot_job: Option<SnapshotJob>,
    /// Verify points and the checksums being computed for them.
    verify: verify::Verify,
    /// The applied index at which the next snapshot starts.
    snapshot_next_at: u64,
    /// Snapshots are postponed for want of disk space (logged once when it began).
    snapshot_postponed: bool,
    /// Compaction raft asked for and not done yet: the log is compacted one segment file per
    /// turn toward it, so that removing many files (and their syncs) never stalls one turn.
    compact_target: Option<(LogIndex, Term)>,
    last_apply_at: Instant,
    /// When a message from the leader last arrived (`atoll status`'s last contact).
    last_leader_contact: Option<Instant>,
    /// Counters and histograms for `/metrics`.
    metrics: metrics::Metrics,
    /// A repair from peers in progress (`repair.rs`).
    repair: Option<repair::Repair>,
    /// Damage found (a REPAIR request, a corrupt database): the loop stops (a leader hands over
    /// first) and the host restarts the node in place ([`Node::reopen_repaired`]).
    repair_requested: Option<repair::Damage>,
    /// Set once the answers of the turn that requested the repair were flushed: the loop stops.
    repair_stop: bool,
    /// After a repair: the leader's commit index when the node was re-added; the repair is
    /// finished (logged) once this node applied it.
    repair_catch_up: Option<u64>,
    /// What `Node::open` was given, for a restart in place after a repair.
    start_options: StartOptions,
    /// When this process last reopened the node for a repair: damage found again soon after
    /// is not repaired again automatically (it likely came from the leader).
    repaired_at: Option<Instant>,
    /// An apply found a closed database damaged: applies wait until this instant, then retry.
    damaged_apply_retry_at: Option<Instant>,
    /// Restore pieces this leader proposed, waiting for their apply (`restore.rs`).
    restore_waiting: Vec<restore::Waiting>,
    /// The applied index of the last idle checkpoint.
    checkpointed_at: u64,
    /// An idle checkpoint found a client's transaction in the way: the next try is not before.
    idle_checkpoint_retry_at: Instant,
    /// The applied index and the log's last index at start: what was replayed is logged once
    /// the node serves (`None` afterwards).
    replay: Option<(u64, u64)>,
    /// A full disk: writes refused, stalled appends and applies retried.
    disk: disk::Disk,
    /// Raft's term and vote could not be saved (a full disk): until they are, no raft
    /// message leaves the node (no vote is granted, no append acknowledged), raft is not
    /// ticked (no election starts) and entries are not appended; the save is retried.
    hard_state_unsaved: bool,
    /// Acknowledgements of entries handed back to raft while the log closed a full segment,
    /// with the log's truncation count then: they go with the next ready that appends (and
    /// leave once that is durable), unless the log was truncated meanwhile.
    held_acks: Option<(u64, Vec<atoll_raft::Message>)>,
    stats: Stats,
    /// Set by SIGHUP: reload the TLS files.
    tls_reload: Arc<AtomicBool>,
    /// Where writes' time goes, and the longest turns (dumped on request).
    timings: timings::Timings,
    /// The reactor's events of a turn (kept to reuse the allocation).
    events: Vec<Event>,
    /// Where the node reads the time (never `Instant::now` itself).
    clock: Box<dyn Clock>,
    /// Where the node draws random numbers.
    random: Box<dyn Random>,
    /// The transport came with the `Inputs` (kept by a restart in place) rather than being
    /// bound here.
    network_given: bool,
    /// Where the log's and the databases' files are (from the `Inputs`).
    files: Arc<dyn Disk>,
    /// From the `Inputs` (kept by a restart in place).
    checkpoint_sync_in_background: bool,
    /// Deletes the files the node no longer needs and prepares the log's next segment, off
    /// the loop (`janitor.rs`).
    janitor: janitor::Janitor,
    /// Runs the log's syncs off the loop (`log_sync.rs`): a thread, or the simulated disk.
    log_sync: Box<dyn log_sync::LogSync>,
    /// The `LogSync` came with the `Inputs` (kept by a restart in place).
    log_sync_given: bool,
    /// The sync in flight and the acknowledgements waiting for syncs.
    durability: log_sync::Durability,
    /// When to give memory back (`memory.rs`).
    idle_release: memory::IdleRelease,
    /// A turn's apply stopped at its budget ([`APPLY_TURN_ENTRIES_MAX`], or a quarter of the
    /// shortest election timeout) with committed entries left: the next turn comes at once.
    apply_yielded: bool,
}

impl Node {
    /// After damage found at start (`what`) with the log closed: quarantines (`repair.rs`) and
    /// opens again from the empty log, or refuses naming the damage.
    fn open_repaired(
        data_dir: &Path,
        config: &NodeConfig,
        what: String,
        shutdown: Arc<AtomicBool>,
        options: StartOptions,
        inputs: Inputs,
    ) -> Result<Node, NodeError> {
        let damage = repair::Damage { what };
        repair::quarantine(&inputs.disk, data_dir, config.id, &damage, &*inputs.clock).map_err(
            |why| NodeError::Start(format!("{} (not repaired from peers: {why})", damage.what)),
        )?;
        Node::open_with(data_dir, shutdown, options, inputs)
    }

    /// Opens a node's data directory and binds its address: recovers the log, the snapshot
    /// and the databases, and starts an election at once when this node is the only voter.
    /// Damage found in the log or a snapshot is repaired from peers when possible
    /// (`repair.rs`). The node runs on the operating system's clock and randomness.
    pub fn open(
        data_dir: &Path,
        shutdown: Arc<AtomicBool>,
        options: StartOptions,
    ) -> Result<Node, NodeError> {
        Node::open_with(data_dir, shutdown, options, Inputs::production())
    }

    /// [`Node::open`] on the given clock and random source.
    pub fn open_with(
        data_dir: &Path,
        shutdown: Arc<AtomicBool>,
        options: StartOptions,
        inputs: Inputs,
    ) -> Result<Node, NodeError> {
        let Inputs {
            clock,
            mut random,
            network,
            checkpoint_sync_in_background,
            log_sync,
            disk: files,
        } = inputs;
        // What a reopen after damage found here is given back.
        macro_rules! inputs_again {
            () => {
                Inputs {
                    clock,
                    random,
                    network,
                    checkpoint_sync_in_background,
                    log_sync,
                    disk: files,
                }
            };
        }
        let start_options = options.clone();
        let config = NodeConfig::read(data_dir).map_err(NodeError::Start)?;
        let cluster_secret = secret::read_secret(data_dir).map_err(NodeError::Start)?;
        let start = |what: String| NodeError::Start(what);
        let log_options = log_options(options.log_segment_bytes);
        let log = match SegmentLog::open_on(
            Arc::clone(&files),
            config::raft_dir(data_dir),
            log_options,
        ) {
            Err(
                e @ (atoll_storage::LogError::Corrupt { .. } | atoll_storage::LogError::Gap { .. }),
            ) => {
                // A damaged log: rebuilt from the leader when there is one to ask.
                let what = format!("opening the Raft log: {e}");
                return Node::open_repaired(
                    data_dir,
                    &config,
                    what,
                    shutdown,
                    options,
                    inputs_again!(),
                );
            }
            other => other,
        };
        let mut log = log.map_err(|e| match e {
            atoll_storage::LogError::Locked { .. } => start(format!(
                "{} is in use by another atoll process ({e})",
                data_dir.display()
            )),
            other => start(format!("opening the Raft log: {other}")),
        })?;
        let hard_state = log.hard_state();
        let snapshot = match log.snapshots().latest() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // A damaged snapshot file: rebuilt from the leader when there is one to ask.
                drop(log);
                return Node::open_repaired(
                    data_dir,
                    &config,
                    format!("reading the snapshots: {e}"),
                    shutdown,
                    options,
                    inputs_again!(),
                );
            }
        };
        let mut engine_config = EngineConfig::new(config::db_dir(data_dir), config.id);
        engine_config.disk = Arc::clone(&files);
        engine_config.queue_wait_max = config.writer_wait_ms;
        engine_config.transaction_wait_max = config.busy_wait_ms;
        engine_config.transaction_time_max = config.transaction_timeout_ms;
        engine_config.databases_max = config.databases_max();
        info!(
            "at most {} databases open at once (--max-databases), client transactions open at \
             most {} ms",
            engine_config.databases_max, config.transaction_timeout_ms
        );
        engine_config.transaction_bytes_max = TRANSACTION_BYTES_MAX;
        engine_config.chain_max = CHAIN_MAX;
        // Checkpoints stall the loop: small ones (1 MiB of pages: a few milliseconds of copy
        // and the intent record's fdatasync), their fdatasync and record on a helper thread
        // (`poll_checkpoints` each turn takes the results), and jitter so that nodes, which
        // apply the same entries, do not checkpoint together. With 64 writers and a 10 ms
        // election timeout, 256 frames rather than 1024 took the longest apply turns from
        // 10-25 ms to 8-10 ms, and elections from 2-5 to 0-2 in 20 s (same throughput).
        engine_config.checkpoint_frames = 256;
        engine_config.checkpoint_jitter_frames = engine_config.checkpoint_frames / 2;
        engine_config.checkpoint_sync_in_background = checkpoint_sync_in_background;
        engine_config.checkpoint_jitter_seed = random.next_u64();
        // Unique across restarts: a command proposed by the previous run may still apply.
        engine_config.first_proposal = random.next_u64();
        let (mut engine, recovery) = match Engine::open(engine_config) {
            Err(e @ atoll_core::EngineError::CorruptDatabase { .. }) => {
                // A database SQLite cannot even open (its header page): rebuilt from the leader
                // when there is one to ask.
                drop(log);
                let what = format!("opening the databases: {e}");
                return Node::open_repaired(
                    data_dir,
                    &config,
                    what,
                    shutdown,
                    options,
                    inputs_again!(),
                );
            }
            other => other.map_err(|e| start(format!("opening the databases: {e}")))?,
        };
        let found = engine.corrupt_databases();
        if !found.is_empty() && repair::repair_source_known(data_dir, config.id) {
            // quick_check found a damaged page: the node is rebuilt from the leader before it
            // serves anything from it. Otherwise the first turn decides (`damage_step`): with
            // no other voter it serves, refusing writes to the database.
            let what = repair::describe_corrupt(&found);
            drop(engine);
            drop(log);
            return Node::open_repaired(
                data_dir,
                &config,
                what,
                shutdown,
                options,
                inputs_again!(),
            );
        }
        let raft_snapshot = match &snapshot {
            Some(meta) => {
                let configuration = Configuration::decode(&meta.configuration).map_err(|e| {
                    start(format!("snapshot {}: bad configuration: {e}", meta.index))
                })?;
                // First the log, so that the databases never reflect an index past its end.
                let cut = log_through_snapshot(&mut log, meta.index, meta.term).map_err(|e| {
                    start(format!("cutting the log at snapshot {}: {e}", meta.index))
                })?;
                // A cut log means the crash fell between storing the snapshot and its install
                // into the log, perhaps during the databases' swap: they are installed from it
                // again, whatever their records say (cheap, rare, and the snapshot is the truth).
                if cut {
                    info!(
                        "the log now continues after snapshot {} (received whole before a \
                         crash, not yet installed)",
                        meta.index
                    );
                }
                // Databases behind the snapshot replay the log up to it when the log still
                // holds every entry after them: a node's own snapshot is taken without a
                // checkpoint, and the log is compacted no further than the checkpoints.
                let replays = |from: u64| from >= meta.index.0 || log.first_index().0 <= from + 1;
                if cut || recovery.replay_from().is_none_or(|from| !replays(from)) {
                    // The databases are older than the snapshot and the log (an install from a
                    // leader was interrupted): install it again, then replay the log after it.
                    info!("databases behind snapshot {}: installing it", meta.index);
                    let mut reader = log
                        .snapshots()
                        .open_reader(meta)
                        .map_err(|e| start(format!("opening snapshot {}: {e}", meta.index)))?;
                    match engine.install_snapshot(&mut reader) {
                        Ok(_) => {}
                        Err(e @ atoll_core::EngineError::BadSnapshot(_)) => {
                            let what = format!("installing snapshot {}: {e}", meta.index);
                            drop(reader);
                            drop(engine);
                            drop(log);
                            return Node::open_repaired(
                                data_dir,
                                &config,
                                what,
                                shutdown,
                                options,
                                inputs_again!(),
                            );
                        }
                        Err(e) => {
                            return Err(start(format!("installing snapshot {}: {e}", meta.index)))
                        }
                    }
                }
                Some(SnapshotMeta {
                    index: meta.index,
                    term: meta.term,
                    size_bytes: meta.data_bytes,
                    configuration,
                })
            }
            None => None,
        };
        let applied = engine.applied_index();
        let (first, last) = (log.first_index(), log.last_index());
        if applied > last.0 {
            return Err(start(format!(
                "the databases reflect index {applied} but the Raft log ends at {last}: the \
                 log in {} does not belong to these databases",
                config::raft_dir(data_dir).display()
            )));
        }
        info!(
            "recovered node {} ({}): log {}..={}, term {}, vote {}, snapshot {}, {} database(s) \
             applied through {applied}",
            config.id,
            config.address,
            first,
            last,
            hard_state.term,
            hard_state.vote.map_or(0, |v| v.0),
            snapshot
                .as_ref()
                .map_or("none".to_owned(), |m| m.index.to_string()),
            recovery.databases.len(),
        );
        let mut raft_config = RaftConfig::new(NodeId(config.id));
        raft_config.heartbeat_ticks = config.heartbeat_ticks;
        raft_config.election_timeout_ticks_min = config.election_ticks_min;
        raft_config.election_timeout_ticks_max = config.election_ticks_max;
        raft_config.seed = random.next_u64();
        if let Some(entries) = options.snapshot_trailing_entries {
            raft_config.snapshot_trailing_entries = entries;
        }
        // A full segment is closed by the log sync (flush, rename, directory sync off the
        // loop); its entries wait in raft meanwhile (`log_sync.rs`).
        log.set_background_close(true);
        // Segments behind a compaction are deleted by the janitor, off the loop.
        log.set_background_removal(true);
        let raft = RawNode::new(
            raft_config,
            log,
            hard_state,
            raft_snapshot,
            LogIndex(applied),
        )
        .map_err(|e| start(format!("starting raft: {e}")))?;

        let address = resolve(&config.address).map_err(NodeError::Start)?;
        let mut peer = PeerConfig::new(
            config.id,
            config.cluster_id,
            cluster_secret,
            config.address.clone(),
            random.next_u64(),
        );
        peer.frame_bytes_max = PEER_FRAME_BYTES_MAX;
        peer.queue_bytes_max = PEER_QUEUE_BYTES_MAX;
        let tls = tls::load(data_dir).map_err(NodeError::Start)?;
        if tls.is_some() {
            info!("TLS on for clients and peers ({})", tls::CERT_FILE_NAME);
        }
        let network_given = network.is_some();
        let mut reactor: Box<dyn Network> = match network {
            Some(network) => network,
            None => {
                let reactor_config = ReactorConfig {
                    peer: Some(peer),
                    tls: tls.clone(),
                    idle_timeout: options.client_idle_timeout,
                    ..ReactorConfig::default()
                };
                let mut reactor = Reactor::bind(address, reactor_config).map_err(|e| {
                    start(format!(
                        "cannot listen on {} ({address}): {e}",
                        config.address
                    ))
                })?;
                if let Some(metrics_address) = &options.metrics_address {
                    let resolved = resolve(metrics_address).map_err(NodeError::Start)?;
                    let bound = reactor.bind_metrics(resolved).map_err(|e| {
                        start(format!(
                            "cannot serve metrics on {metrics_address} ({resolved}): {e}"
                        ))
                    })?;
                    info!("serving metrics at http://{bound}/metrics");
                }
                Box::new(network::ReactorNetwork::new(reactor, tls))
            }
        };
        let log_sync_given = log_sync.is_some();
        let log_sync: Box<dyn log_sync::LogSync> = match log_sync {
            Some(given) => given,
            None => {
                let waker = reactor
                    .waker()
                    .map_err(|e| start(format!("creating the log sync's wake-up handle: {e}")))?;
                Box::new(
                    log_sync::SyncThread::start(waker)
                        .map_err(|e| start(format!("starting the log sync thread: {e}")))?,
                )
            }
        };
        let janitor = janitor::Janitor::start(checkpoint_sync_in_background)
            .map_err(|e| start(format!("starting the janitor thread: {e}")))?;
        let snapshot_next_at = applied + snapshot_interval(&config, random.as_mut());
        let tick = Duration::from_millis(config.tick_ms);
        let now = clock.now();
        let mut node = Node {
            config,
            data_dir: data_dir.to_path_buf(),
            reactor,
            raft,
            engine,
            clients: HashMap::new(),
            sessions: HashMap::new(),
            proposals: Vec::new(),
            parked: Vec::new(),
            changes: Vec::new(),
            shutdown,
            started: now,
            tick,
            leader_term: None,
            weight: 0,
            incoming: None,
            incoming_finished: None,
            incoming_refused_until: None,
            install_pending: None,
            held_acks: None,
            outgoing: Vec::new(),
            peer_routes: options.peer_routes,
            peer_announced: HashMap::new(),
            peer_refusals_logged: std::collections::HashSet::new(),
            peers_configuration_index: (LogIndex(0), LogIndex(0)),
            leader_seen_at: now,
            peer_send_failures: HashMap::new(),
            tick_at: now,
            reads: reads::Reads::default(),
            roles: roles::Roles::default(),
            join: None,
            handover_until: None,
            linger_until: None,
            turn_persist: Duration::ZERO,
            turn_sync: Duration::ZERO,
            turn_after_step: ("-", Duration::ZERO),
            turn_apply: Duration::ZERO,
            snapshot_job: None,
            verify: verify::Verify::default(),
            snapshot_next_at,
            snapshot_postponed: false,
            compact_target: None,
            last_apply_at: now,
            last_leader_contact: None,
            metrics: metrics::Metrics::new(hard_state.term.0),
            repair: None,
            repair_requested: None,
            repair_stop: false,
            repair_catch_up: None,
            start_options,
            repaired_at: None,
            damaged_apply_retry_at: None,
            restore_waiting: Vec::new(),
            checkpointed_at: applied,
            idle_release: memory::IdleRelease::new(now),
            apply_yielded: false,
            idle_checkpoint_retry_at: now,
            replay: Some((applied, last.0)),
            disk: disk::Disk::new(Arc::clone(&files), data_dir.to_path_buf()),
            hard_state_unsaved: false,
            stats: Stats::default(),
            tls_reload: options.tls_reload,
            timings: timings::Timings::new(),
            events: Vec::new(),
            clock,
            random,
            network_given,
            checkpoint_sync_in_background,
            janitor,
            log_sync,
            log_sync_given,
            durability: log_sync::Durability::default(),
            files,
        };
        node.reactor
            .timer_after(node.tick, TICK_TOKEN)
            .map_err(|e| start(format!("arming the tick timer: {e}")))?;
        let me = NodeId(node.config.id);
        let configuration = node.raft.configuration();
        if configuration.is_voter(me) && configuration.voter_count() == 1 {
            // The only voter: no one else can elect it, and waiting an election timeout would
            // only delay the first request.
            node.raft
                .campaign()
                .map_err(|e| start(format!("campaigning: {e}")))?;
        }
        node.follow_configuration();
        node.start_join()?;
        node.start_repair()?;
        Ok(node)
    }

    /// Reloads the TLS files (SIGHUP): new connections use them; open ones keep their session
    /// until they close. Unusable files change nothing.
    fn reload_tls(&mut self) {
        match tls::load(&self.data_dir) {
            Ok(Some(context)) if self.reactor.is_tls() => {
                self.reactor.set_tls(context);
                info!("TLS files reloaded: new connections use them");
            }
            Ok(_) => warn!("SIGHUP: no TLS reload (TLS is not on, or its files are gone)"),
            Err(e) => warn!("SIGHUP: keeping the current TLS setup: {e}"),
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The node's state as a host sees it (see [`Status`]).
    pub fn state(&self) -> Status {
        let log = self.raft.log();
        Status {
            id: self.raft.id(),
            role: self.raft.role(),
            term: self.raft.term(),
            leader: self.raft.leader_id(),
            commit: self.raft.commit_index(),
            applied: LogIndex(self.engine.applied_index()),
            log_first: log.first_index(),
            log_last: log.last_index(),
            snapshot: self.raft.snapshot_meta().map(|meta| meta.index),
            snapshots_taken: self.stats.snapshots,
            snapshots_installed: self.stats.snapshots_installed,
            commands_applied: self.stats.commands_applied,
            apply_yields: self.stats.apply_yields,
            commands_chained: self.stats.commands_chained,
            chain_longest: self.stats.chain_longest,
            commands_abandoned: self.stats.commands_abandoned,
            commands_stale: self.stats.commands_stale,
            stale_last: self.stats.stale_last.map(LogIndex),
            voters: self.raft.configuration().voters().collect(),
        }
    }

    /// Whether the node has work of its own left (a snapshot being written, proposals, verify
    /// checksums): its next turn must not wait for input. Otherwise nothing changes in it until
    /// an input arrives or one of its timers fires, so a host (the simulator) need not turn it.
    pub fn busy(&self) -> bool {
        self.snapshot_job.as_ref().is_some_and(SnapshotJob::copying)
            || !self.proposals.is_empty()
            || self.verify.busy()
            || self.apply_yielded
    }

    /// A handle that interrupts [`Node::run`]'s wait, for the signal thread.
    pub fn waker(&mut self) -> io::Result<Waker> {
        self.reactor.waker()
    }

    /// The flag that asks the loop to write its timings to `DATA_DIR/timings` (see
    /// `timings.rs`); the loop sees it within a tick.
    pub fn timings_flag(&self) -> Arc<AtomicBool> {
        self.timings.request_flag()
    }

    /// Runs the node until the shutdown flag is set (SIGINT, SIGTERM) or a fatal error.
    pub fn run(&mut self) -> Result<(), NodeError> {
        info!(
            "node {} serving {} (data directory {})",
            self.config.id,
            self.config.address,
            self.data_dir.display()
        );
        // The one loop that never ends, until shutdown.
        while self.turn(None)? {}
        self.stop();
        Ok(())
    }

    /// One turn of the loop: waits for input (at most `wait`; `None`: until some arrives, a
    /// timer fires or a log sync ends), then gathers the inputs, proposes, persists (its sync
    /// runs off the loop), applies and answers as a batch. False once the shutdown flag is set
    /// and a leader's handover is done: the host then calls [`Node::stop`]. [`Node::run`] is
    /// `turn(None)` until false.
    pub fn turn(&mut self, wait: Option<Duration>) -> Result<bool, NodeError> {
        let stopping = self.shutdown.load(Ordering::SeqCst) || self.repair_stop;
        if stopping && self.handover_done() {
            return Ok(false);
        }
        let mut events = std::mem::take(&mut self.events);
        let mut timeout = if self.busy() {
            Some(Duration::ZERO)
        } else {
            wait
        };
        if let Some(due) = self.log_sync.due() {
            // A simulated disk wakes nobody: wait no longer than its sync takes.
            let left = due.saturating_duration_since(self.clock.now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        self.reactor
            .poll(&mut events, timeout)
            .map_err(|e| fatal("polling", e))?;
        if self.tls_reload.swap(false, Ordering::SeqCst) {
            self.reload_tls();
        }
        if self.repair_requested.is_some() && !self.repair_stop {
            // Damage found, a REPAIR answered (the poll flushed it): stop as on SIGTERM (a
            // leader hands over first); the host restarts the node in place.
            self.repair_stop = true;
        }
        let turn_start = self.clock.now();
        let now = self
            .clock
            .now()
            .saturating_duration_since(self.started)
            .as_millis() as u64;
        self.engine.set_time(now);
        self.engine.poll_checkpoints();
        self.drain_engine();
        self.verify.work(verify::VERIFY_BYTES_PER_TURN);
        let event_count = events.len();
        let mut tick_due = false;
        for event in events.drain(..) {
            if matches!(
                event,
                Event::Timer {
                    token: TICK_TOKEN,
                    ..
                }
            ) {
                tick_due = true;
            } else {
                self.on_event(event)?;
            }
        }
        if tick_due {
            // After the turn's messages: what arrived during a stall counts before the
            // time the stall took (a heartbeat that waited in the socket is still heard).
            self.on_tick()?;
        }
        let mut answers = Vec::new();
        self.reactor.outbound_answers(&mut answers);
        for answer in answers {
            self.on_outbound_answer(answer);
        }
        let events_done = self.clock.now();
        self.drive_raft()?;
        self.metrics.note_term(self.raft.term().0);
        let raft_done = self.clock.now();
        self.after_turn()?;
        self.note_slow_turn(turn_start, events_done, raft_done, event_count);
        self.timings.dump_if_requested(&self.data_dir);
        self.events = events;
        Ok(true)
    }

    /// A turn long enough to delay heartbeats (half an election timeout) is logged with where
    /// the time went: the operator sees why an election happened.
    fn note_slow_turn(
        &mut self,
        start: Instant,
        events_done: Instant,
        raft_done: Instant,
        event_count: usize,
    ) {
        let now = self.clock.now();
        let took = now.saturating_duration_since(start);
        let after = now.saturating_duration_since(raft_done);
        let (step, step_took) = std::mem::replace(&mut self.turn_after_step, ("-", Duration::ZERO));
        self.timings.turn(timings::Turn {
            total: took,
            events: event_count,
            persist: self.turn_persist,
            sync: self.turn_sync,
            apply: self.turn_apply,
            handle: events_done.saturating_duration_since(start),
            after,
            after_step: (step, step_took),
        });
        let budget = self.tick * self.config.election_ticks_min / 2;
        if took >= budget {
            warn!(
                "slow loop turn: {took:?} ({event_count} events {:?}; raft {:?}: persist {:?}, \
                 sync {:?}, apply {:?}; after {after:?}, longest {step} {step_took:?}); half \
                 the election timeout is {budget:?}",
                events_done - start,
                raft_done - events_done,
                self.turn_persist,
                self.turn_sync,
                self.turn_apply,
            );
        }
        self.turn_persist = Duration::ZERO;
        self.turn_sync = Duration::ZERO;
        self.turn_apply = Duration::ZERO;
    }

    fn on_event(&mut self, event: Event) -> Result<(), NodeError> {
        if matches!(
            event,
            Event::Connected { .. } | Event::Request { .. } | Event::Closed { .. }
        ) {
            self.idle_release.note_client_event();
        }
        match event {
            Event::Connected {
                conn,
                peer,
                version,
            } => {
                debug!("{conn} from {peer}: connected");
                self.clients.insert(conn, Client::new(self.clock.now()));
                debug!("{conn}: protocol {version:?}");
            }
            Event::Request { conn, request } => {
                let write = matches!(
                    request,
                    atoll_net::protocol::Request::Exec { .. }
                        | atoll_net::protocol::Request::ExecSql { .. }
                );
                let began = self.clock.now();
                self.on_request(conn, request);
                if write {
                    self.timings
                        .execute(self.clock.now().saturating_duration_since(began));
                }
            }
            Event::Drained { conn } => self.on_drained(conn),
            Event::Closed { conn, reason } => {
                debug!("{conn}: closed ({reason:?})");
                if let Some(client) = self.clients.remove(&conn) {
                    if let Some(session) = client.session {
                        // Rolls back an open transaction and leaves the write queue.
                        self.engine.close_session(session);
                        self.sessions.remove(&session);
                        self.drain_engine();
                    }
                }
                self.parked.retain(|(c, _)| *c != conn);
                self.changes.retain(|w| w.conn != conn);
                self.reads.forget(conn);
            }
            Event::Timer { token, .. } => {
                if token == TICK_TOKEN {
                    self.on_tick()?;
                }
            }
            Event::PeerConnected {
                node,
                direction,
                address,
            } => self.on_peer_connected(node, direction, address),
            Event::PeerDisconnected {
                node,
                direction,
                reason,
                frames_dropped,
            } => self.on_peer_disconnected(node, direction, reason, frames_dropped),
            Event::PeerFrame { from, frame } => self.on_peer_frame(from, frame)?,
            Event::MetricsRequest { request } => {
                let text = self.metrics.render(&self.metrics_sample());
                self.reactor
                    .metrics_respond(request, metrics::CONTENT_TYPE, text.as_bytes());
            }
        }
        Ok(())
    }

    /// The tick timer fired: counts every tick that passed since the last one (a busy turn may
    /// have taken several), so that raft's heartbeats and timeouts follow the wall clock and a
    /// busy leader still heartbeats on time. Then re-arms the timer for the next tick boundary.
    ///
    /// At most half the shortest election timeout is counted at once: a turn that stalled
    /// longer (a checkpoint's syncs on a slow disk, a stopped process) must not by itself make
    /// a follower campaign or a leader step down for want of messages it could not read while
    /// stalled. The rest of the stall is forgotten; a dead leader is noticed at most that much
    /// later, once per stall.
    fn on_tick(&mut self) -> Result<(), NodeError> {
        let now = self.clock.now();
        let (ticks, tick_at) = count_ticks(self.tick_at, now, self.tick, self.ticks_per_turn_max());
        if self.hard_state_unsaved {
            self.save_hard_state()?;
        }
        if self.install_pending.is_some() {
            self.install_again()?;
        }
        // A node whose term and vote are not durable must not start an election, nor one whose
        // databases are behind its log.
        if !self.hard_state_unsaved && self.install_pending.is_none() {
            for _ in 0..ticks {
                self.raft.tick();
            }
        }
        self.tick_at = tick_at;
        let next = (self.tick_at + self.tick).saturating_duration_since(self.clock.now());
        self.reactor
            .timer_after(next, TICK_TOKEN)
            .map_err(|e| fatal("arming the tick timer", e))?;
        Ok(())
    }

    /// The most ticks one timer event counts: half the shortest election timeout.
    fn ticks_per_turn_max(&self) -> u32 {
        (self.config.election_ticks_min / 2).max(1)
    }

    /// Takes the engine's proposals (proposed at the end of the turn) and its late answers.
    fn drain_engine(&mut self) {
        let before = self.proposals.len();
        self.proposals.extend(self.engine.take_proposals());
        if self.proposals.len() > before {
            self.timings.proposals_taken(self.clock.now());
        }
        for completion in self.engine.take_completions() {
            match self.sessions.get(&completion.session) {
                Some(&conn) => self.complete(conn, completion.result),
                None => debug!("answer for closed session {:?} dropped", completion.session),
            }
        }
    }

    /// Proposes the turn's writes, then works off every ready: persist, hand the sync to the
    /// sync thread, apply, answer; and takes the syncs that finished. Each proposed command
    /// lets the next group of its database run on top of it (`run_queued`), proposed in the
    /// same turn: so the turn's proposals go in rounds, one command per database and round.
    fn drive_raft(&mut self) -> Result<(), NodeError> {
        self.apply_yielded = false;
        // Bounded: a round with nothing to propose ends it, and each round's new commands are
        // links of chains of at most `CHAIN_MAX`.
        for _ in 0..=CHAIN_MAX {
            if self.leader_ready() {
                self.engine.run_queued();
                self.drain_engine();
            }
            if self.proposals.is_empty() {
                break;
            }
            self.propose_turn()?;
        }
        self.request_read_index();
        self.sync_poll()?;
        // Bounded: each ready hands out pending work, and raft produces new work only from
        // what this loop reports back (persistence, applies).
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            if self.handle_ready(ready)? {
                // Entries went back to raft (a full disk): retried in a later turn.
                break;
            }
            // A sync that finished meanwhile (a fast disk) lets raft commit in this turn.
            self.sync_poll()?;
        }
        if let Some(e) = self.raft.storage_error() {
            return Err(fatal("reading the log", e));
        }
        self.follow_configuration();
        Ok(())
    }

    /// Proposes the commands taken from the engine as one batch and tells the engine where
    /// each went; a refused batch is discarded (with the commands computed on top of it).
    fn propose_turn(&mut self) -> Result<(), NodeError> {
        if !self.proposals.is_empty() {
            self.disk.check(self.clock.now());
        }
        if !self.proposals.is_empty() && self.disk.is_full() {
            if self.raft.role() == StateRole::Leader && self.raft.transferee().is_none() {
                // A handover that timed out (the target lagged) is tried again.
                self.disk_full_began();
            }
            // Nothing was appended: the client may retry once space is freed.
            for proposal in std::mem::take(&mut self.proposals) {
                self.engine.discard(proposal.id, values::REASON_DISK_FULL);
            }
            self.drain_engine();
        }
        if !self.proposals.is_empty() {
            let proposals = std::mem::take(&mut self.proposals);
            let ids: Vec<u64> = proposals.iter().map(|p| p.id).collect();
            for proposal in &proposals {
                self.metrics.group_commit.observe(proposal.writes as f64);
                self.metrics.chain_ahead.observe(proposal.ahead as f64);
                self.stats.commands_chained += u64::from(proposal.ahead > 0);
                self.stats.chain_longest = self.stats.chain_longest.max(proposal.ahead as u64 + 1);
            }
            let payloads: Vec<Payload> = proposals
                .into_iter()
                .map(|p| Payload::from_vec(p.command))
                .collect();
            match self.raft.propose_batch(payloads) {
                Ok(first) => {
                    for (index, &id) in (first.0..).zip(&ids) {
                        self.engine.proposed(id, index);
                    }
                    let last = first.0 + ids.len() as u64 - 1;
                    self.timings.proposed(last, self.clock.now());
                    self.stats.entries_proposed += ids.len() as u64;
                    self.stats.proposal_batches += 1;
                    debug!("proposed {} command(s) from index {first}", ids.len());
                }
                Err(atoll_raft::Error::Storage(e)) => return Err(fatal("reading the log", e)),
                Err(e) => {
                    self.timings.proposals_dropped();
                    // Nothing was appended: the client may retry. During a leadership transfer
                    // it is told "not leader", which every client retries on the new leader.
                    let reason = match e {
                        atoll_raft::Error::NotLeader { .. }
                        | atoll_raft::Error::TransferInProgress => values::REASON_NOT_LEADER,
                        atoll_raft::Error::ProposalDropped => values::REASON_BUSY,
                        _ => values::REASON_LEADERSHIP_LOST,
                    };
                    if matches!(e, atoll_raft::Error::TransferInProgress) {
                        debug!("{} proposal(s) refused by raft: {e}", ids.len());
                    } else {
                        warn!("{} proposal(s) refused by raft: {e}", ids.len());
                    }
                    for id in ids {
                        self.engine.discard(id, reason);
                    }
                    self.drain_engine();
                }
            }
        }
        Ok(())
    }

    /// Handles one ready; true if some of its entries could not be appended or applied for
    /// want of disk space and went back to raft.
    fn handle_ready(&mut self, mut ready: Ready) -> Result<bool, NodeError> {
        // 0. The term and vote, durable before anything else (saved again if an earlier save
        //    failed). While they are not, nothing leaves the node and no entry is appended.
        if ready.hard_state.take().is_some() || self.hard_state_unsaved {
            self.save_hard_state()?;
        }
        if self.install_pending.is_some() {
            self.install_again()?;
        }
        let unsaved = self.hard_state_unsaved || self.install_pending.is_some();
        if unsaved {
            ready.messages.clear();
            ready.persisted_messages.clear();
        }
        // 1. An install (of a snapshot whose bytes an earlier ready handed out), then received
        //    snapshot bytes (followers; none arrive without peers).
        if let Some(install) = &ready.snapshot {
            self.install_snapshot(install.meta.index)?;
            if self.install_pending.is_some() {
                ready.messages.clear();
                ready.persisted_messages.clear();
            }
        }
        let unsaved = unsaved || self.install_pending.is_some();
        if let Err(e) = self.store_snapshot_chunks(&ready) {
            self.snapshot_store_failed(e)?;
            // The answers acknowledge chunks that are gone.
            ready.persisted_messages.clear();
        }
        // 2. The log: install, truncate + append, hard state (durable before sends). A
        //    compaction is done later, never past the databases' checkpoints, its files
        //    deleted off the loop (`compact_step`).
        if let Some((index, term)) = ready.compact.take() {
            if self.compact_target.is_none_or(|(target, _)| target < index) {
                self.compact_target = Some((index, term));
            }
        }
        let persist_start = self.clock.now();
        if ready.snapshot.is_some() {
            // Installing cuts the log: the close of a full segment ends first (rare).
            self.log_close_wait()?;
        }
        // The entries apart: on a full disk they go back to raft, and the rest goes on.
        let entries = std::mem::take(&mut ready.entries);
        persist_ready(self.raft.log_mut(), &ready).map_err(|e| fatal("writing the log", e))?;
        let mut stalled = false;
        if !entries.is_empty() {
            let append_start = self.clock.now();
            let appended = if unsaved {
                Append::Refused
            } else {
                self.append_entries(&entries)?
            };
            self.timings
                .append(self.clock.now().saturating_duration_since(append_start));
            match appended {
                Append::Done => {
                    ready.entries = entries;
                    if let Some((truncations, acks)) = self.held_acks.take() {
                        // They acknowledge entries now appended: they wait for this sync.
                        if truncations == self.raft.log().truncations() {
                            ready.persisted_messages.splice(0..0, acks);
                        }
                    }
                }
                not_appended => {
                    if matches!(not_appended, Append::Closing) {
                        // Appended once the close ends, and acknowledged then: the answers to
                        // appends wait (those to snapshot chunks only for the next sync).
                        let (acks, chunk_acks): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut ready.persisted_messages)
                                .into_iter()
                                .partition(|m| m.kind == atoll_raft::MessageKind::AppendResponse);
                        ready.persisted_messages = chunk_acks;
                        let truncations = self.raft.log().truncations();
                        match &mut self.held_acks {
                            Some((held, waiting)) if *held == truncations => waiting.extend(acks),
                            held => *held = Some((truncations, acks)),
                        }
                    } else {
                        // Unappended entries are not acknowledged: drop the answers that would.
                        ready.persisted_messages.clear();
                    }
                    self.raft
                        .append_failed(entries)
                        .map_err(|e| fatal("giving entries back to raft", e))?;
                    stalled = true;
                }
            }
        }
        self.turn_persist += self.clock.now().saturating_duration_since(persist_start);
        // 3. Messages that may leave before the entries are durable.
        self.send_messages(std::mem::take(&mut ready.messages));
        // 4. The sync runs off the loop (`log_sync.rs`): raft hears what is durable, and the
        //    acknowledgements leave, when it is done; the loop goes on meanwhile.
        let persisted_messages = std::mem::take(&mut ready.persisted_messages);
        // A full segment waiting for its close: the next sync request closes it.
        let must_sync = ready.must_sync() || self.raft.log().close_pending();
        self.durability_after_ready(must_sync, persisted_messages)?;
        // 5. Apply the committed entries, answering the writes they carry.
        let apply_start = self.clock.now();
        let now = self.clock.now();
        if let Some(last) = ready.committed_entries.last() {
            let leading = self.raft.role() == StateRole::Leader;
            self.timings.committed(last.index.0, leading, now);
            // No database reflects an index the local log does not hold durably (a checkpoint
            // would make it durable, and a power loss then leave the log behind it): raft hands
            // out only entries at or below what the log reported durable.
            let durable = self.raft.log().durable_index();
            assert!(
                last.index <= durable,
                "applying {} past the log's durable index {durable}",
                last.index
            );
        }
        if self.install_pending.is_some() {
            // The databases are behind raft's snapshot: nothing is applied, nothing is read.
            if let Some(first) = ready.committed_entries.first() {
                let index = first.index;
                self.apply_again_from(index, &mut ready)?;
                stalled = true;
            }
            ready.committed_entries.clear();
            for read in std::mem::take(&mut ready.read_states) {
                self.read_dropped(read.context);
            }
        }
        let apply_budget = (self.tick * self.config.election_ticks_min / 4).max(APPLY_TURN_MIN);
        for (applied, entry) in ready.committed_entries.iter().enumerate() {
            let index = entry.index.0;
            if applied > 0
                && (applied >= APPLY_TURN_ENTRIES_MAX
                    || self.clock.now().saturating_duration_since(apply_start) >= apply_budget)
            {
                // The rest waits for the next turn, which comes at once (`busy`): a follower
                // catching up, or applying a burst, still hears heartbeats in time, and a
                // leader still sends them.
                self.apply_again_from(entry.index, &mut ready)?;
                self.apply_yielded = true;
                self.stats.apply_yields += 1;
                stalled = true;
                break;
            }
            match entry.kind {
                EntryKind::Command if verify::decode_point(&entry.payload).is_some() => {
                    self.engine.note_applied(index);
                    match verify::decode_point(&entry.payload) {
                        Some(Ok(database)) => {
                            self.verify.applied(&mut self.engine, index, &database)
                        }
                        Some(Err(why)) => warn!("entry {index}: malformed verify point: {why}"),
                        None => {}
                    }
                }
                EntryKind::Command if !self.disk.may_write(now) => {
                    // A stalled apply is retried at most every `DISK_RETRY_INTERVAL`.
                    self.apply_again_from(entry.index, &mut ready)?;
                    stalled = true;
                    break;
                }
                EntryKind::Command if self.damaged_apply_wait(now) => {
                    // A damaged database held the apply back: retried a second later.
                    self.apply_again_from(entry.index, &mut ready)?;
                    stalled = true;
                    break;
                }
                EntryKind::Command if restore::decode(&entry.payload).is_some() => {
                    if let Err(e) =
                        self.apply_restore_piece(entry.index, entry.term, &entry.payload)?
                    {
                        // As for any command: applied again once space is back, never skipped.
                        if self
                            .disk
                            .write_failed(&format!("applying entry {index}"), &e, now)
                        {
                            self.disk_full_began();
                        }
                        self.apply_again_from(entry.index, &mut ready)?;
                        stalled = true;
                        break;
                    }
                    self.disk.write_succeeded();
                }
                EntryKind::Command => match self.timed_apply(index, &entry.payload) {
                    Ok(Applied::Frames { .. }) => {
                        self.stats.commands_applied += 1;
                        self.disk.write_succeeded();
                    }
                    Ok(Applied::Skipped) => {}
                    // The engine logged why; every replica rejects it the same way.
                    Ok(Applied::Malformed(_)) => {}
                    Ok(Applied::Stale { .. }) => {
                        self.stats.commands_stale += 1;
                        self.stats.stale_last = Some(index);
                    }
                    Err(atoll_core::EngineError::Io(e)) if disk::is_full(&e) => {
                        // Nothing was written: the entry (and those after it) are applied
                        // again once space is back, never skipped.
                        if self
                            .disk
                            .write_failed(&format!("applying entry {index}"), &e, now)
                        {
                            self.disk_full_began();
                        }
                        self.apply_again_from(entry.index, &mut ready)?;
                        stalled = true;
                        break;
                    }
                    Err(atoll_core::EngineError::CorruptDatabase { database, reason }) => {
                        // Never applied past (nor skipped): held back until the node is
                        // repaired (`damage_step`, this turn), retried meanwhile.
                        self.damaged_apply_held(index, &database, &reason, now);
                        self.apply_again_from(entry.index, &mut ready)?;
                        stalled = true;
                        break;
                    }
                    Err(e) => return Err(fatal(&format!("applying entry {index}"), e)),
                },
                EntryKind::Noop | EntryKind::Configuration => self.engine.note_applied(index),
            }
            let answer_start = self.clock.now();
            self.drain_engine();
            if entry.kind == EntryKind::Command {
                self.timings
                    .answer(self.clock.now().saturating_duration_since(answer_start));
            }
        }
        if !ready.committed_entries.is_empty() {
            self.last_apply_at = self.clock.now();
        }
        self.turn_apply += self.clock.now().saturating_duration_since(apply_start);
        // Reads whose index is applied now: run them (raft releases a read state only then).
        for read in &ready.read_states {
            self.read_confirmed(read.context, read.index);
        }
        for context in &ready.dropped_reads {
            self.read_dropped(*context);
        }
        Ok(stalled || unsaved)
    }

    /// Saves raft's term and vote. For want of space the node goes on with them unsaved
    /// ([`Node::hard_state_unsaved`]) and retries at most every `DISK_RETRY_INTERVAL`; a
    /// failed sync, or any other error, stops it.
    fn save_hard_state(&mut self) -> Result<(), NodeError> {
        let now = self.clock.now();
        if self.hard_state_unsaved && !self.disk.may_write(now) {
            return Ok(());
        }
        let hard_state = self.raft.hard_state();
        match self.raft.log_mut().save_hard_state(hard_state) {
            Ok(()) => {
                if std::mem::take(&mut self.hard_state_unsaved) {
                    self.disk.write_succeeded();
                    info!(
                        "term {} and vote saved: taking part in raft again",
                        hard_state.term
                    );
                }
                Ok(())
            }
            Err(e) if disk::is_full(&e) => {
                if !self.hard_state_unsaved {
                    warn!(
                        "cannot save term {} and vote ({e}): sending nothing, granting no vote \
                         and starting no election until they are saved",
                        hard_state.term
                    );
                }
                self.hard_state_unsaved = true;
                if self.disk.write_failed("saving the term and vote", &e, now) {
                    self.disk_full_began();
                }
                Ok(())
            }
            Err(e) => Err(fatal("saving the term and vote", e)),
        }
    }

    /// `engine.apply`, timed.
    fn timed_apply(
        &mut self,
        index: u64,
        payload: &[u8],
    ) -> Result<Applied, atoll_core::EngineError> {
        let start = self.clock.now();
        let applied = self.engine.apply(index, payload);
        self.timings
            .apply(self.clock.now().saturating_duration_since(start));
        applied
    }

    /// Appends a ready's entries (truncating a conflicting suffix first). `Refused` if the disk
    /// is full (nothing appended; retried at most every `DISK_RETRY_INTERVAL`); `Closing` if
    /// the open segment is full and a sync request closes it (nothing appended; retried once it
    /// has ended).
    fn append_entries(&mut self, entries: &[atoll_raft::Entry]) -> Result<Append, NodeError> {
        let now = self.clock.now();
        if !self.disk.may_write(now) {
            return Ok(Append::Refused);
        }
        let log = self.raft.log_mut();
        let first = entries[0].index;
        if first <= log.last_index() {
            // Cutting a segment writes its kept prefix to a new file first: a full disk fails
            // there, before anything changed.
            match log.truncate_after(first.prev()) {
                Ok(()) => {}
                Err(e) if atoll_storage::is_closing(&e) => return Ok(Append::Closing),
                Err(e) if disk::is_full(&e) => {
                    let what = format!("truncating the log after {}", first.prev());
                    if self.disk.write_failed(&what, &e, now) {
                        self.disk_full_began();
                    }
                    return Ok(Append::Refused);
                }
                Err(e) => return Err(fatal("truncating the log", e)),
            }
        }
        let log = self.raft.log_mut();
        match log.append(entries) {
            Ok(()) => {
                self.disk.write_succeeded();
                Ok(Append::Done)
            }
            Err(e) if atoll_storage::is_closing(&e) => Ok(Append::Closing),
            Err(e) if disk::is_full(&e) => {
                let what = format!(
                    "appending entries {first}..={}",
                    entries[entries.len() - 1].index
                );
                if self.disk.write_failed(&what, &e, now) {
                    self.disk_full_began();
                }
                Ok(Append::Refused)
            }
            Err(e) => Err(fatal("writing the log", e)),
        }
    }

    /// The committed entries from `index` on could not be applied: raft hands them out again,
    /// with the read states of this ready (which may need them).
    fn apply_again_from(&mut self, index: LogIndex, ready: &mut Ready) -> Result<(), NodeError> {
        let reads = std::mem::take(&mut ready.read_states);
        self.raft
            .apply_failed(index, reads)
            .map_err(|e| fatal("handing entries back to raft", e))
    }

    /// The disk just became full: a leader hands leadership to a member with room (raft picks
    /// the most up-to-date voter), once per full state.
    fn disk_full_began(&mut self) {
        let me = NodeId(self.config.id);
        if self.raft.role() != StateRole::Leader
            || !self.raft.configuration().voters().any(|id| id != me)
        {
            return;
        }
        match self.raft.transfer_leadership(None) {
            Ok(to) => info!("disk full: handing leadership over to node {to}"),
            Err(e) => warn!("disk full: cannot hand leadership over: {e}"),
        }
    }

    /// Writes received snapshot chunks into the incoming snapshot file, each at its offset:
    /// raft hands them out contiguous from 0, and a chunk at offset 0 starts a new file (a
    /// restarted stream, or a newer snapshot; the unfinished one is removed). The chunk that
    /// completes it finishes the file (durable), before raft installs it in the next ready.
    /// (A snapshot that does not fit is refused before raft sees it: `refuse_message`.) An
    /// error of the disk comes back to the caller.
    fn store_snapshot_chunks(&mut self, ready: &Ready) -> Result<(), io::Error> {
        for chunk in &ready.snapshot_chunks {
            if chunk.offset == 0 {
                self.incoming = None;
                self.incoming_finished = None;
                let configuration = chunk.meta.configuration.encode_to_vec();
                let writer = self.raft.log().snapshots().create(
                    chunk.meta.index,
                    chunk.meta.term,
                    &configuration,
                )?;
                info!(
                    "receiving snapshot {} ({} bytes) from the leader",
                    chunk.meta.index, chunk.meta.size_bytes
                );
                self.incoming = Some((writer, 0));
            }
            let Some((writer, written)) = self.incoming.as_mut() else {
                return Err(io::Error::other(format!(
                    "snapshot chunk at offset {} without its start",
                    chunk.offset
                )));
            };
            assert_eq!(
                chunk.offset, *written,
                "raft hands out snapshot chunks contiguously"
            );
            assert_eq!(chunk.data.len(), chunk.length as usize);
            writer.write_all(&chunk.data)?;
            *written += chunk.data.len() as u64;
            if *written == chunk.meta.size_bytes {
                let (writer, _) = self.incoming.take().expect("matched above");
                self.incoming_finished = Some(writer.finish()?);
            }
        }
        Ok(())
    }

    /// Received snapshot chunks could not be stored. For want of space the unfinished file
    /// goes, raft forgets the receive and asks the leader to start again, and chunks are
    /// dropped unread for [`SNAPSHOT_RECEIVE_RETRY_INTERVAL`]; the node goes on. Any other
    /// error stops it.
    fn snapshot_store_failed(&mut self, error: io::Error) -> Result<(), NodeError> {
        if !disk::is_full(&error) {
            return Err(fatal("storing a received snapshot", error));
        }
        self.incoming = None;
        self.incoming_finished = None;
        self.raft
            .snapshot_store_failed()
            .map_err(|e| fatal("dropping a received snapshot", e))?;
        let now = self.clock.now();
        if self.incoming_refused_until.is_none() {
            warn!("disk full: a snapshot from the leader cannot be stored ({error}); retried");
        } else {
            debug!("a snapshot from the leader cannot be stored again: {error}");
        }
        self.incoming_refused_until = Some(now + SNAPSHOT_RECEIVE_RETRY_INTERVAL);
        self.stats.snapshots_refused += 1;
        Ok(())
    }

    /// Whether snapshot chunks from the leader are dropped unread now (a full disk).
    fn snapshot_receive_refused(&self) -> bool {
        self.incoming_refused_until
            .is_some_and(|until| self.clock.now() < until)
    }

    /// Installs the received snapshot raft just installed (`index`) into the engine. For want
    /// of space the engine changes nothing and the install waits ([`Node::install_pending`]).
    fn install_snapshot(&mut self, index: LogIndex) -> Result<(), NodeError> {
        let meta = self
            .incoming_finished
            .take()
            .filter(|meta| meta.index == index)
            .ok_or_else(|| {
                NodeError::Fatal(format!("snapshot {index} to install was not received"))
            })?;
        if self.incoming_refused_until.take().is_some() {
            info!("disk space back: snapshot {index} from the leader stored");
        }
        self.install_into_engine(meta, false)
    }

    /// Tries a pending install again (at most every `DISK_RETRY_INTERVAL`).
    fn install_again(&mut self) -> Result<(), NodeError> {
        if !self.disk.may_write(self.clock.now()) {
            return Ok(());
        }
        let meta = self.install_pending.take().expect("checked by the caller");
        self.install_into_engine(meta, true)
    }

    /// Installs a received snapshot into the engine (`again`: a pending one).
    fn install_into_engine(
        &mut self,
        meta: atoll_storage::SnapshotMeta,
        again: bool,
    ) -> Result<(), NodeError> {
        let index = meta.index;
        let mut reader = self
            .raft
            .log()
            .snapshots()
            .open_reader(&meta)
            .map_err(|e| fatal("opening a received snapshot", e))?;
        // Images being hashed read files the install replaces.
        self.verify.snapshot_installed(index.0);
        match self.engine.install_snapshot(&mut reader) {
            Ok(_) => {}
            Err(atoll_core::EngineError::Io(e)) if disk::is_full(&e) => {
                let now = self.clock.now();
                if !again {
                    warn!(
                        "disk full: snapshot {index} cannot be installed ({e}); applying, \
                         reading and taking part in raft wait until it is"
                    );
                }
                self.disk
                    .write_failed(&format!("installing snapshot {index}"), &e, now);
                self.install_pending = Some(meta);
                return Ok(());
            }
            Err(e) => return Err(fatal("installing a snapshot", e)),
        }
        if again {
            self.disk.write_succeeded();
        }
        info!(
            "installed snapshot {index} from the leader ({} bytes)",
            meta.data_bytes
        );
        self.drain_engine();
        self.snapshot_next_at = index.0 + snapshot_interval(&self.config, self.random.as_mut());
        self.checkpointed_at = index.0;
        self.stats.snapshots_installed += 1;
        self.prune_snapshots();
        Ok(())
    }

    /// Whether this node leads and has applied its term's first entry: it then has every
    /// write acknowledged before its term and may serve requests that need the leader.
    fn leader_ready(&self) -> bool {
        self.raft.role() == StateRole::Leader
            && self.raft.log_term(self.raft.applied()) == Some(self.raft.term())
    }

    /// What happens once per turn after raft: leadership changes, parked requests, waiters,
    /// the snapshot and checkpoint policies, and preparing the next log segment.
    fn after_turn(&mut self) -> Result<(), NodeError> {
        if let Some(failure) = self.engine.sync_failure() {
            // Never retried: a restart replays the log from the last durable checkpoint.
            return Err(NodeError::Fatal(failure.to_owned()));
        }
        let leading = self.raft.role() == StateRole::Leader;
        match (self.leader_term, leading) {
            (None, true) => {
                self.leader_term = Some(self.raft.term());
                info!(
                    "elected leader in term {} (log ends at {})",
                    self.raft.term(),
                    self.raft.last_index()
                );
            }
            (Some(term), _) if !leading || term != self.raft.term() => {
                warn!("lost leadership of term {term}; now {}", self.raft.role());
                self.stats.commands_abandoned += self.engine.commands_in_flight() as u64;
                self.engine.abandon_writes(values::REASON_LEADERSHIP_LOST);
                self.drain_engine();
                self.leader_term = leading.then(|| self.raft.term());
                self.fail_changes(values::CODE_LEADERSHIP_LOST, "leadership lost");
            }
            _ => {}
        }
        if let Some((applied_at_start, last_at_start)) = self.replay {
            if self.leader_ready() {
                let applied = self.raft.applied().0;
                if last_at_start > applied_at_start {
                    info!(
                        "serving: replayed the {} log entries after the databases' checkpoint \
                         ({}..={last_at_start}); applied through {applied}",
                        last_at_start - applied_at_start,
                        applied_at_start + 1,
                    );
                } else {
                    info!("serving: nothing to replay; applied through {applied}");
                }
                self.replay = None;
            }
        }
        if !self.parked.is_empty() && self.raft.role() != StateRole::Leader || self.leader_ready() {
            for (conn, request) in std::mem::take(&mut self.parked) {
                self.on_request(conn, request);
            }
        }
        self.check_changes();
        let step = self.clock.now();
        self.compact_step()?;
        // The segments a compaction (this one, or a snapshot's install) took out of the log.
        if let Some(removal) = self.raft.log_mut().take_removals() {
            self.janitor.remove(removal);
        }
        let step = self.after_step("compact", step);
        self.expire_reads();
        self.roles_step();
        self.join_step();
        self.damage_step();
        self.repair_step();
        self.restore_step();
        let step = self.after_step("roles+repair", step);
        self.snapshot_policy()?;
        let step = self.after_step("snapshot", step);
        self.checkpoint_policy();
        let step = self.after_step("idle-checkpoint", step);
        self.memory_step();
        let step = self.after_step("memory", step);
        if self.disk.is_full() {
            // Leaves the full state once space is back and nothing is stalled.
            self.disk.check(self.clock.now());
        } else if self.checkpoint_sync_in_background || self.proposals.is_empty() {
            match self.raft.log_mut().spare_request() {
                Ok(Some(request)) => self.janitor.prepare(request),
                Ok(None) => {}
                Err(e) => return Err(fatal("preparing the next log segment", e)),
            }
        }
        // The next log segment, prepared by the janitor (off the loop; on a simulated disk, at
        // once): a spare ready before the open segment fills keeps the append path free of
        // file creation and preallocation.
        if let Some((request, result)) = self.janitor.spare_done() {
            if let Err(e) = self.raft.log_mut().spare_ready(request, result) {
                if disk::is_full(&e) {
                    if self
                        .disk
                        .space_short(&format!("preparing the next log segment: {e}"))
                    {
                        self.disk_full_began();
                    }
                } else {
                    // Any other failure left the log refusing changes until it is reopened:
                    // the node stops now, as after a failed append, rather than run on with
                    // a log that can take nothing (seed 94,434).
                    return Err(fatal("preparing the next log segment", e));
                }
            }
        }
        self.after_step("next-segment", step);
        Ok(())
    }

    /// Ends a step of [`Node::after_turn`] begun at `began`: the turn remembers its longest
    /// step (shown with the longest turns). Returns when the next step begins.
    fn after_step(&mut self, name: &'static str, began: Instant) -> Instant {
        let now = self.clock.now();
        let took = now.saturating_duration_since(began);
        if took > self.turn_after_step.1 {
            self.turn_after_step = (name, took);
        }
        now
    }

    /// Every `snapshot_entries` applied entries: a snapshot of every database at the applied
    /// index, read from their files and WALs as they are (no checkpoint first: on a large
    /// database that stalled the loop past an election timeout), copied a bounded piece per
    /// turn and made durable off the loop (`snapshot_job.rs`). Once written, raft compacts the
    /// log behind it, no further than the databases' checkpoints, which are then brought up to
    /// it in the background; old snapshots go.
    fn snapshot_policy(&mut self) -> Result<(), NodeError> {
        if self.install_pending.is_some() {
            return Ok(()); // The databases are behind raft's snapshot.
        }
        if let Some(job) = self.snapshot_job.as_mut() {
            let index = job.index();
            match job.turn(self.checkpoint_sync_in_background) {
                Progress::Working => return Ok(()),
                Progress::ReadFailed(e) => return Err(fatal("reading the snapshot", e)),
                Progress::WriteFailed(why, e) => return self.snapshot_failed(&why, e),
                Progress::Written(meta) => {
                    self.snapshot_job = None;
                    return self.snapshot_written(index, meta);
                }
            }
        }
        let applied = self.raft.applied().0;
        if applied < self.snapshot_next_at {
            return Ok(());
        }
        let configuration_index = self.raft.configuration_index().0;
        if configuration_index > applied {
            // A configuration change is not applied yet (or a replay after a restart is not
            // past the snapshot's): tried again once it is.
            self.snapshot_next_at = configuration_index;
            return Ok(());
        }
        self.snapshot_next_at = applied + SNAPSHOT_RETRY_ENTRIES;
        let index = LogIndex(applied);
        let term = self
            .raft
            .log_term(index)
            .ok_or_else(|| NodeError::Fatal(format!("no term for applied index {index}")))?;
        let configuration = self.raft.configuration().encode_to_vec();
        let reader = match self.engine.snapshot() {
            Ok(reader) => reader,
            Err(atoll_core::EngineError::NotSettled { database, index }) => {
                // After a restart, until replay passes what a checkpoint copied: tried again
                // as soon as it has (a replay is applied over several turns).
                debug!("snapshot postponed: {database:?} settles at index {index}");
                self.snapshot_next_at = self.snapshot_next_at.min(index.max(applied + 1));
                return Ok(());
            }
            Err(e) => return Err(fatal("starting the snapshot", e)),
        };
        assert_eq!(reader.index(), applied);
        // A snapshot that would leave less than the margin writes keep is not started: it
        // would fail part-way, or take the space committed writes need.
        let needed = reader.len_bytes().saturating_add(disk::DISK_FREE_BYTES_MIN);
        let snapshots = self.raft.log().snapshots().dir();
        match self.files.available_bytes(snapshots) {
            Ok(available) if available < needed => {
                let why = format!(
                    "snapshot {index} needs {} bytes and the margin, {available} available",
                    reader.len_bytes()
                );
                return self.snapshot_failed(&why, io::ErrorKind::StorageFull.into());
            }
            Ok(_) => {}
            Err(e) => warn!("free space of {}: {e}", snapshots.display()),
        }
        let writer = match self
            .raft
            .log()
            .snapshots()
            .create(index, term, &configuration)
        {
            Ok(writer) => writer,
            Err(e) => return self.snapshot_failed(&format!("creating snapshot {index}"), e),
        };
        self.snapshot_job = Some(SnapshotJob::new(index, reader, writer));
        self.snapshot_next_at = applied + snapshot_interval(&self.config, self.random.as_mut());
        Ok(())
    }

    /// Snapshot `index` is durable: raft learns of it (and asks for the log behind it to be
    /// compacted), and every database checkpoints up to it, so that the compaction can go on.
    fn snapshot_written(
        &mut self,
        index: LogIndex,
        meta: atoll_storage::SnapshotMeta,
    ) -> Result<(), NodeError> {
        if std::mem::take(&mut self.snapshot_postponed) {
            info!("disk space back: snapshots resume");
        }
        self.raft
            .snapshot_taken(index, meta.data_bytes)
            .map_err(|e| fatal("recording the snapshot", e))?;
        self.stats.snapshots += 1;
        info!(
            "snapshot at index {index} written ({} bytes)",
            meta.data_bytes
        );
        self.prune_snapshots();
        match self.engine.checkpoint_behind(index.0) {
            Ok(floor) => debug!("checkpoints behind snapshot {index} started (floor {floor:?})"),
            // The log waits for a later checkpoint; a full disk is handled where writes see it.
            Err(atoll_core::EngineError::Io(e)) if disk::is_full(&e) => {
                warn!("checkpoints up to snapshot {index} cut short by a full disk: {e}");
            }
            Err(e) => return Err(fatal("checkpointing up to the snapshot", e)),
        }
        Ok(())
    }

    /// Taking a snapshot failed (`why`, `error`). For want of space the snapshot is dropped
    /// (its unfinished file removed, giving the space back) and tried again after
    /// [`SNAPSHOT_RETRY_ENTRIES`] more applies, logged once until one is written: the log is
    /// only compacted later. Any other error stops the node.
    fn snapshot_failed(&mut self, why: &str, error: io::Error) -> Result<(), NodeError> {
        if !disk::is_full(&error) {
            return Err(fatal(why, error));
        }
        // Writes go on while the disk holds more than the margin: a snapshot is the largest
        // file the node writes, and a failed one gives its space back.
        self.snapshot_job = None;
        self.snapshot_next_at = self.raft.applied().0 + SNAPSHOT_RETRY_ENTRIES;
        if !self.snapshot_postponed {
            self.snapshot_postponed = true;
            warn!("disk full: snapshots postponed ({why}: {error})");
        } else {
            debug!("snapshot postponed again: {why}: {error}");
        }
        Ok(())
    }

    /// The compaction raft asked for, in one save of the compaction point (the janitor deletes
    /// the files it covers, off the loop): through the target once every database's checkpoint
    /// has reached it, through the newest closed segment they passed until then. Raft's
    /// `compact` is permission, not an order: entries kept a little longer are still valid log.
    fn compact_step(&mut self) -> Result<(), NodeError> {
        let Some((target, target_term)) = self.compact_target else {
            return Ok(());
        };
        let log = self.raft.log();
        if log.first_index() > target {
            self.compact_target = None;
            return Ok(());
        }
        // Recovery replays the log after each database's checkpoint: a snapshot ahead of them
        // compacts whole segments up to them, and the rest once they pass it.
        let floor = LogIndex(self.engine.min_checkpoint_index().unwrap_or(u64::MAX));
        let (index, term) = if target <= floor {
            (target, target_term)
        } else {
            let segment = log
                .closed_segment_last_at_most(floor)
                .filter(|&last| last >= log.first_index())
                .and_then(|last| Some((last, self.raft.log_term(last)?)));
            match segment {
                Some(segment) => segment,
                None => return Ok(()), // The checkpoints catch up (`snapshot_policy`).
            }
        };
        assert!(index <= floor, "compaction past the checkpoint index");
        if self.disk.is_full() {
            return Ok(()); // Tried again once space is back.
        }
        match self.raft.log_mut().compact_through(index, term) {
            Ok(()) => {}
            // A full segment is being closed: tried again next turn.
            Err(e) if atoll_storage::is_closing(&e) => return Ok(()),
            // Saving the compaction point failed to write: nothing changed; tried again once
            // space is back (entries kept longer are still valid log).
            Err(e) if disk::is_full(&e) => {
                if self
                    .disk
                    .space_short(&format!("compacting the log through {index}: {e}"))
                {
                    self.disk_full_began();
                }
                return Ok(());
            }
            Err(e) => return Err(fatal("compacting the log", e)),
        }
        debug!("log compacted through {index}");
        if index == target {
            self.compact_target = None;
        }
        Ok(())
    }

    /// Removes the snapshots raft no longer needs (older than every one in use).
    fn prune_snapshots(&mut self) {
        let in_use = self.raft.snapshots_in_use();
        self.outgoing
            .retain(|data| in_use.contains(&data.meta().index));
        let Some(oldest) = in_use.first().copied() else {
            return;
        };
        let store = self.raft.log().snapshots();
        let result = store.list().and_then(|list| {
            let keep = list.iter().filter(|m| m.index >= oldest).count();
            store.prunable(keep)
        });
        match result {
            Ok(removal) if removal.paths().is_empty() => {}
            Ok(removal) => {
                debug!("removing {} old snapshot(s)", removal.paths().len());
                self.janitor.remove(removal);
            }
            Err(e) => warn!("removing old snapshots: {e}"),
        }
    }

    /// A node idle for `memory::IDLE_RELEASE_AFTER` gives back what the last burst left
    /// resident: caches, buffers, mapped log pages, free C heap (`memory.rs`).
    fn memory_step(&mut self) {
        let now = self.clock.now();
        let last = self.raft.last_index().0;
        let applied = self.raft.applied().0;
        if !self.idle_release.due(now, last, applied) {
            return;
        }
        let before = metrics::resident_memory_bytes();
        self.engine.release_memory();
        let log_bytes = self.raft.log_mut().release_memory();
        atoll_storage::release_free_heap();
        debug!(
            "idle: released memory (log pages {} KiB; resident {:?} -> {:?} KiB)",
            log_bytes / 1024,
            before.map(|b| b / 1024),
            metrics::resident_memory_bytes().map(|b| b / 1024)
        );
    }

    /// A node that has been idle for a while checkpoints every database (TRUNCATE).
    fn checkpoint_policy(&mut self) {
        let applied = self.raft.applied().0;
        if applied == self.checkpointed_at
            || self
                .clock
                .now()
                .saturating_duration_since(self.last_apply_at)
                < IDLE_CHECKPOINT_AFTER
            || self.clock.now() < self.idle_checkpoint_retry_at
            || self.snapshot_job.is_some()
        {
            return;
        }
        match self.engine.checkpoint(true) {
            Ok(index) if index.is_some_and(|index| index < applied) => {
                // A client's open transaction holds frames: try again after another idle
                // period (the engine never waits for it; its time limit ends it).
                debug!("idle checkpoint incomplete (index {index:?}): a reader holds frames");
                self.idle_checkpoint_retry_at = self.clock.now() + IDLE_CHECKPOINT_AFTER;
            }
            Ok(index) => {
                self.checkpointed_at = applied;
                info!("idle: checkpointed every database (index {index:?})");
            }
            Err(atoll_core::EngineError::Io(e)) if disk::is_full(&e) => {
                // Tried again after another idle period: space may be back by then.
                warn!("idle checkpoint cut short by a full disk: {e}");
                self.idle_checkpoint_retry_at = self.clock.now() + IDLE_CHECKPOINT_AFTER;
            }
            Err(e) => {
                self.checkpointed_at = applied;
                error!("idle checkpoint failed: {e}");
            }
        }
    }

    /// After SIGINT/SIGTERM: whether the loop may end now. A leader with other voters first
    /// hands leadership to the most up-to-date one (a transfer: proposals meanwhile are refused
    /// as "not leader", which clients retry on the new leader), and waits for it, a bounded
    /// time; then it stops as any node does.
    fn handover_done(&mut self) -> bool {
        let now = self.clock.now();
        if let Some(until) = self.linger_until {
            return now >= until;
        }
        let me = NodeId(self.config.id);
        if self.raft.role() != StateRole::Leader
            || !self.raft.configuration().voters().any(|id| id != me)
        {
            if self.handover_until.take().is_some() {
                info!(
                    "leadership handed over (now term {}, leader {})",
                    self.raft.term(),
                    self.raft
                        .leader_id()
                        .map_or("not known yet".to_owned(), |id| format!("node {id}"))
                );
                // Serve a moment longer as a follower: a client with a request in flight or
                // about to send one gets "not leader" (retried on the new leader) instead of a
                // closed connection (an unknown outcome).
                let linger = (self.tick * self.config.election_ticks_max * 2)
                    .max(Duration::from_millis(200));
                self.linger_until = Some(now + linger);
                return false;
            }
            return true;
        }
        match self.handover_until {
            Some(until) if now >= until => {
                warn!("stopping: leadership was not handed over in time");
                true
            }
            Some(_) => false,
            None => {
                let wait =
                    self.tick * self.config.election_ticks_max * 3 + Duration::from_millis(300);
                match self.raft.transfer_leadership(None) {
                    Ok(to) => {
                        info!(
                            "stopping: handing leadership over to node {to} first (waiting at \
                             most {wait:?})"
                        );
                        self.handover_until = Some(now + wait);
                        false
                    }
                    Err(e) => {
                        warn!("stopping without handing leadership over: {e}");
                        true
                    }
                }
            }
        }
    }

    /// A clean stop: every database checkpointed, so the next start replays nothing.
    /// Stops the node after its last turn: logs its counters and checkpoints the databases.
    pub fn stop(&mut self) {
        info!(
            "stopping: {} entries proposed in {} batches ({} on top of others in flight), {} \
             syncs, {} commands applied, {} snapshots taken, {} installed, {} peer messages \
             refused",
            self.stats.entries_proposed,
            self.stats.proposal_batches,
            self.stats.commands_chained,
            self.stats.syncs,
            self.stats.commands_applied,
            self.stats.snapshots,
            self.stats.snapshots_installed,
            self.stats.messages_refused
        );
        // A snapshot whose file is being finished is waited for and recorded, as its next
        // turn would have; one still being copied is dropped (its unfinished file removed).
        if let Some(job) = self.snapshot_job.take() {
            let index = job.index();
            match job.wait_finished() {
                None => {}
                Some(Ok(meta)) => {
                    if let Err(e) = self.snapshot_written(index, meta) {
                        error!("recording snapshot {index} at stop failed: {e}");
                    }
                }
                Some(Err(e)) => warn!("snapshot {index} not finished at stop: {e}"),
            }
        }
        // What was appended is durable when the node stops (a sync may still be in flight;
        // its outcome is not waited for, but a segment's close is: the log's files must not
        // change under the next open).
        if let Err(e) = self.log_close_wait() {
            error!("closing the full log segment at stop failed: {e}");
        }
        if let Err(e) = self.raft.log_mut().sync() {
            error!("syncing the log at stop failed: {e}");
        }
        match self.engine.checkpoint(true) {
            Ok(index) => info!("stopped; databases checkpointed at index {index:?}"),
            Err(e) => error!("final checkpoint failed (the next start replays the log): {e}"),
        }
    }
}

/// Makes the log agree with the snapshot found at start (`index`, `term`). A snapshot received
/// from the leader is durable before raft installs it in the log (`persist_ready`: truncate,
/// then compact through it), so a crash in between leaves a snapshot past a log that ends
/// before it, or that holds another entry at its index. Everything the snapshot covers is
/// committed, and a log without its entry at `index` holds no committed entry after it (log
/// matching), so the log is cut as that install would have cut it. Returns whether it changed.
fn log_through_snapshot<S: LogStore>(
    store: &mut S,
    index: LogIndex,
    term: Term,
) -> io::Result<bool> {
    let compacted = store.first_index().prev();
    if index <= compacted || store.term(index)? == Some(term) {
        return Ok(false);
    }
    let keep_through = index.prev().max(compacted);
    if keep_through < store.last_index() {
        store.truncate_after(keep_through)?;
    }
    store.compact_through(index, term)?;
    Ok(true)
}

/// Applied entries until the next snapshot: `snapshot_entries` and up to an eighth more, drawn
/// per snapshot, so that the nodes of a cluster (which apply the same entries at about the
/// same time) do not all snapshot, checkpoint and compact in the same instant: a pause of every
/// node at once would look like a dead leader.
fn snapshot_interval(config: &NodeConfig, random: &mut dyn Random) -> u64 {
    let jitter = config.snapshot_entries / 8;
    config.snapshot_entries + random.next_u64() % (jitter + 1)
}

/// The first socket address of `HOST:PORT`.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<atoll_raft::Entry> {
        indexes
            .map(|index| atoll_raft::Entry {
                index: LogIndex(index),
                term: Term(term),
                kind: EntryKind::Command,
                payload: Payload::from_vec(index.to_le_bytes().to_vec()),
            })
            .collect()
    }

    #[test]
    fn test_log_through_snapshot_cuts_a_log_behind_or_off_the_snapshot() -> io::Result<()> {
        // Seeds 199 and 1205: a snapshot at 17 received whole, a crash before raft installed it
        // in a log ending at 14; without the cut the node installed the databases at 17 and
        // refused to start ("the databases reflect index 17 but the Raft log ends at 14").
        let mut log = atoll_storage::MemLog::new();
        log.append(&entries(1..=14, 1))?;
        assert!(log_through_snapshot(&mut log, LogIndex(17), Term(2))?);
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(18), LogIndex(17))
        );
        assert_eq!(log.term(LogIndex(17))?, Some(Term(2)));
        // Done already: nothing changes.
        assert!(!log_through_snapshot(&mut log, LogIndex(17), Term(2))?);
        // A log holding another entry at the snapshot's index: that entry and what follows
        // are not the leader's, cut too.
        let mut log = atoll_storage::MemLog::new();
        log.append(&entries(1..=20, 1))?;
        assert!(log_through_snapshot(&mut log, LogIndex(17), Term(2))?);
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(18), LogIndex(17))
        );
        // A log holding the snapshot's entry (a snapshot of its own, or one raft kept the log
        // for) is left as it is: compaction comes later.
        let mut log = atoll_storage::MemLog::new();
        log.append(&entries(1..=20, 1))?;
        assert!(!log_through_snapshot(&mut log, LogIndex(17), Term(1))?);
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(1), LogIndex(20))
        );
        Ok(())
    }

    #[test]
    fn test_count_ticks_follows_the_clock_up_to_the_cap() {
        let tick = Duration::from_millis(10);
        let start = Instant::now();
        // On time: one tick, the boundary moves by one tick.
        assert_eq!(
            count_ticks(start, start + tick, tick, 15),
            (1, start + tick)
        );
        // Early (the timer fired a little before the boundary): still one tick.
        assert_eq!(count_ticks(start, start + tick / 2, tick, 15).0, 1);
        // A 35 ms turn: three ticks, the boundary keeps the 5 ms remainder.
        assert_eq!(
            count_ticks(start, start + Duration::from_millis(35), tick, 15),
            (3, start + Duration::from_millis(30))
        );
        // A 400 ms stall with half an election timeout of 15 ticks: 15 counted, the rest
        // forgotten (the next boundary starts from now).
        let now = start + Duration::from_millis(400);
        assert_eq!(count_ticks(start, now, tick, 15), (15, now));
        // A cap of 0 (a one-tick election timeout) still counts one.
        assert_eq!(count_ticks(start, now, tick, 0).0, 1);
    }
}

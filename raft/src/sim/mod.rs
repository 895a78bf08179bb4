//! The deterministic simulator: whole clusters on one thread, every decision drawn from one
//! seed, every invariant checked after every step.
//!
//! It injects: message delay, loss, duplication and reordering; partitions (symmetric,
//! one-way, an isolated leader, a bridge node) that heal; crashes that lose whatever was not
//! durable (`MemLog::crash_keeping`) and restarts from the durable log and snapshot; slow disks
//! (persistence completes late, holding back acknowledgements); per-node tick skew; membership
//! churn and leadership transfers mid-traffic; snapshots streamed in small chunks; and a client
//! workload of writes (proposals) and linearizable reads (ReadIndex, on leaders and followers).
//!
//! It checks, after every step: election safety, log matching (on every append), leader
//! completeness (on every new leader), state machine safety and durability (every applied entry
//! is the committed one, never twice, never uncommitted, same state everywhere), and at the end
//! linearizability of each register's history and liveness: once faults heal, a leader is
//! elected and a proposal commits everywhere within a bounded number of ticks.

pub mod checker;
pub mod kv;
pub mod linearizability;
pub mod network;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;

use atoll_storage::{LogRead, LogStore, MemLog};

use crate::codec::{decode_message, encode_message_to_vec};
use crate::membership::{Configuration, MemberRole};
use crate::message::{Message, SnapshotMeta};
use crate::prng::Prng;
use crate::ready::persist_ready;
use crate::sim::checker::{entry_digest, Checker};
use crate::sim::kv::{Kv, Put};
use crate::sim::linearizability::{check_register_with, OpKind, Operation};
use crate::{bootstrap_entry, Config, EntryKind, Error, LogIndex, NodeId, Payload, RawNode};
use crate::{StateRole, Term};

/// Simulated time units per tick of a node without skew.
pub const TICK_UNITS: u64 = 10;
/// Operations on one register before the workload moves on to a fresh one (keeps each
/// register's history small enough for the exhaustive linearizability search).
const OPERATIONS_PER_KEY: usize = 60;
/// Registers written concurrently.
const KEYS_LIVE: u64 = 3;
/// Nodes that may join through membership changes, beyond the initial ones.
const JOINERS_MAX: u64 = 3;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: everything else follows from it.
    pub seed: u64,
    /// The initial voters (3, 5 or 7).
    pub nodes: usize,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Ticks allowed, after every fault heals, to elect a leader and commit everywhere.
    pub liveness_ticks: u64,
    /// Random faults (crashes, partitions, loss, churn); off for scripted runs.
    pub random_faults: bool,
    /// Events at fixed ticks (the fuzz target's schedule).
    pub script: Vec<(u64, ScriptedEvent)>,
}

impl SimOptions {
    /// The default run for `seed`.
    pub fn new(seed: u64, nodes: usize) -> SimOptions {
        SimOptions {
            seed,
            nodes,
            fault_ticks: 400,
            liveness_ticks: 500,
            random_faults: true,
            script: Vec::new(),
        }
    }
}

/// A fault or request at a fixed tick (nodes are chosen by index modulo the node count).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScriptedEvent {
    /// Crash a node.
    Crash(u8),
    /// Restart a node.
    Restart(u8),
    /// Cut a node off (both directions).
    Isolate(u8),
    /// Cut the link from one node to another (one way).
    CutLink(u8, u8),
    /// Heal every partition.
    Heal,
    /// Ask the leader to transfer leadership to a node.
    Transfer(u8),
    /// Ask the leader to change a node's role (0 voter, 1 standby, 2 spare).
    Assign(u8, u8),
    /// Ask the leader to remove a node.
    Remove(u8),
    /// Ask the leader to add the next joiner with a role.
    Add(u8),
    /// Make a node take a snapshot now.
    Snapshot(u8),
}

/// A run's totals.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Committed entries (the highest committed index).
    pub commits: u64,
    /// Distinct leaders (one per term at most).
    pub elections: u64,
    /// Client operations that completed.
    pub operations: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Ticks from healing to a proposal applied everywhere.
    pub recovery_ticks: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Membership changes and transfers the leader accepted.
    pub membership_changes: u64,
    /// Leadership transfers the leader accepted.
    pub transfers: u64,
    /// Reads answered by a node that was not the leader (follower reads).
    pub follower_reads: u64,
}

impl SimReport {
    /// Adds another run's counts (the recovery time is the worst of both).
    pub fn add(&mut self, other: &SimReport) {
        self.commits += other.commits;
        self.elections += other.elections;
        self.operations += other.operations;
        self.snapshots_installed += other.snapshots_installed;
        self.recovery_ticks = self.recovery_ticks.max(other.recovery_ticks);
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.membership_changes += other.membership_changes;
        self.transfers += other.transfers;
        self.follower_reads += other.follower_reads;
    }
}

/// A broken invariant, with what reproduces it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The node count.
    pub nodes: usize,
    /// Simulated time of the violation.
    pub time: u64,
    /// What broke.
    pub message: String,
}

impl Violation {
    /// The command that replays this run.
    pub fn reproduce(&self) -> String {
        format!(
            "cargo run --release -p atoll-raft --example raft_sim -- --seeds {}..{} --nodes {}",
            self.seed,
            self.seed + 1,
            self.nodes
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "violation: seed {} ({} nodes) at time {}: {}\nreproduce with: {}",
            self.seed,
            self.nodes,
            self.time,
            self.message,
            self.reproduce()
        )
    }
}

/// Runs one simulation; a panic inside raft (a failed assertion) is a violation too.
pub fn run(options: &SimOptions) -> Result<SimReport, Violation> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut simulation = Simulation::new(options);
        let result = simulation.run_all();
        (result, simulation.now)
    }));
    match outcome {
        Ok((Ok(report), _)) => Ok(report),
        Ok((Err(message), time)) => Err(Violation {
            seed: options.seed,
            nodes: options.nodes,
            time,
            message,
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Err(Violation {
                seed: options.seed,
                nodes: options.nodes,
                time: 0,
                message: format!("panic: {message}"),
            })
        }
    }
}

/// The fuzz target `raft_sim`: turns bytes into a scripted schedule and runs it. Panics on a
/// violation (with the reproduction line).
pub fn fuzz_simulation(bytes: &[u8]) {
    let options = options_from_bytes(bytes);
    if let Err(violation) = run(&options) {
        panic!("{violation}\nfuzz input: {bytes:?}");
    }
}

/// The schedule fuzz bytes describe: a seed, a node count, then three bytes per event (tick
/// delta, event kind, argument).
pub fn options_from_bytes(bytes: &[u8]) -> SimOptions {
    let mut seed_bytes = [0u8; 8];
    for (slot, byte) in seed_bytes.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    let seed = u64::from_le_bytes(seed_bytes);
    let nodes = [3, 5, 7][usize::from(bytes.get(8).copied().unwrap_or(0) % 3)];
    let mut options = SimOptions::new(seed, nodes);
    options.random_faults = false;
    options.fault_ticks = 200;
    options.liveness_ticks = 500;
    let mut tick = 0u64;
    for event in bytes.get(9..).unwrap_or_default().chunks_exact(3).take(64) {
        tick += u64::from(event[0] % 16);
        let argument = event[2];
        let scripted = match event[1] % 10 {
            0 => ScriptedEvent::Crash(argument),
            1 => ScriptedEvent::Restart(argument),
            2 => ScriptedEvent::Isolate(argument),
            3 => ScriptedEvent::CutLink(argument & 0xf, argument >> 4),
            4 => ScriptedEvent::Heal,
            5 => ScriptedEvent::Transfer(argument),
            6 => ScriptedEvent::Assign(argument & 0xf, (argument >> 4) % 3),
            7 => ScriptedEvent::Remove(argument),
            8 => ScriptedEvent::Add(argument % 3),
            _ => ScriptedEvent::Snapshot(argument),
        };
        options
            .script
            .push((tick.min(options.fault_ticks), scripted));
    }
    options
}

/// A message on the wire.
struct InFlight {
    deliver_at: u64,
    order: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &InFlight) -> bool {
        (self.deliver_at, self.order) == (other.deliver_at, other.order)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &InFlight) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    /// Reversed: the heap pops the earliest delivery first.
    fn cmp(&self, other: &InFlight) -> std::cmp::Ordering {
        (other.deliver_at, other.order).cmp(&(self.deliver_at, self.order))
    }
}

/// Persistence the disk has not finished: acknowledgements held back until it does.
struct DiskWrite {
    due: u64,
    point: Option<(LogIndex, Term)>,
    messages: Vec<Message>,
}

/// A write waiting for its outcome on the node that proposed it.
struct PendingWrite {
    operation: usize,
    op_id: u64,
    digest: u64,
}

/// One simulated machine: a node (while up), its durable log and snapshot, its state machine.
struct Host {
    id: NodeId,
    node: Option<RawNode<MemLog>>,
    /// The log while the node is down.
    log_down: Option<MemLog>,
    kv: Kv,
    /// The durable snapshot: metadata and bytes.
    snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
    /// Older snapshots still streamed to followers (`RawNode::snapshots_in_use`).
    streamed: BTreeMap<LogIndex, Arc<Vec<u8>>>,
    /// The snapshot being received.
    incoming: Vec<u8>,
    disk: VecDeque<DiskWrite>,
    disk_latency_max: u64,
    tick_period: u64,
    next_tick: u64,
    restart_at: Option<u64>,
    /// Entries between snapshots.
    snapshot_interval: u64,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    pending_reads: BTreeMap<u64, usize>,
    /// How far this node's commit index was recorded in the checker.
    commit_recorded: LogIndex,
}

/// A client operation in the history.
struct HistoryEntry {
    key: u64,
    operation: Operation,
    /// A write that had no effect or a read without an answer: left out of the check.
    failed: bool,
    /// A write: the index it was proposed at and its entry's digest, to settle at the end
    /// whether it took effect when its client never learned.
    proposed: Option<(LogIndex, u64)>,
}

struct Simulation {
    options: SimOptions,
    prng: Prng,
    now: u64,
    hosts: BTreeMap<NodeId, Host>,
    network: BinaryHeap<InFlight>,
    order: u64,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    heal_at: u64,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    latency_min: u64,
    latency_jitter: u64,
    faults_active: bool,
    checker: Checker,
    history: Vec<HistoryEntry>,
    key_counts: BTreeMap<u64, usize>,
    next_key: u64,
    next_op_id: u64,
    next_joiner: u64,
    raft_config: Config,
    report: SimReport,
}

impl Simulation {
    fn new(options: &SimOptions) -> Simulation {
        let mut prng = Prng::new(options.seed);
        let mut raft_config = Config::new(NodeId(1));
        raft_config.heartbeat_ticks = 1 + prng.below(2) as u32;
        raft_config.election_timeout_ticks_min = 10;
        raft_config.election_timeout_ticks_max = 20;
        // One seed in six runs classic elections, without pre-vote. Then a voter that is
        // removed or demoted without learning it raises the term forever and liveness after
        // healing is not guaranteed (dissertation section 4.2.3), so those seeds never remove
        // or demote voters.
        raft_config.pre_vote = !prng.chance(1, 6);
        raft_config.check_quorum = prng.chance(4, 5);
        raft_config.append_entries_max = 2 + prng.below(15) as u32;
        raft_config.append_bytes_max = 64 + prng.below(512);
        raft_config.inflight_msgs_max = 2 + prng.below(7) as u32;
        raft_config.inflight_bytes_max = 256 + prng.below(4096);
        // Bounds the backlog a partitioned leader builds, and so the catch-up after healing.
        raft_config.uncommitted_bytes_max = 256 + prng.below(2048);
        raft_config.apply_bytes_max = 64 + prng.below(1024);
        raft_config.snapshot_chunk_bytes = 16 + prng.below(64) as u32;
        raft_config.snapshot_chunks_inflight_max = 1 + prng.below(3) as u32;
        // Few trailing entries force snapshots on lagging followers; many let a stream of an
        // older snapshot continue when the leader snapshots again.
        raft_config.snapshot_trailing_entries = if prng.chance(1, 2) {
            prng.below(8)
        } else {
            16 + prng.below(112)
        };
        raft_config.reads_pending_max = 4 + prng.below(64) as u32;
        let mut simulation = Simulation {
            options: options.clone(),
            now: 0,
            hosts: BTreeMap::new(),
            network: BinaryHeap::new(),
            order: 0,
            cut: BTreeSet::new(),
            heal_at: 0,
            drop_per_mille: prng.below(60),
            duplicate_per_mille: prng.below(30),
            latency_min: 1 + prng.below(4),
            latency_jitter: 1 + prng.below(25),
            faults_active: true,
            checker: Checker::default(),
            history: Vec::new(),
            key_counts: BTreeMap::new(),
            next_key: KEYS_LIVE,
            next_op_id: 1,
            next_joiner: options.nodes as u64 + 1,
            raft_config,
            report: SimReport::default(),
            prng,
        };
        if !options.random_faults {
            simulation.drop_per_mille = 0;
            simulation.duplicate_per_mille = 0;
        }
        let mut configuration = Configuration::new();
        for id in 1..=options.nodes as u64 {
            configuration.insert(NodeId(id), address(NodeId(id)), MemberRole::Voter);
        }
        let bootstrap = bootstrap_entry(&configuration);
        for id in 1..=options.nodes as u64 {
            let mut log = MemLog::new();
            log.append(std::slice::from_ref(&bootstrap))
                .expect("memory");
            log.sync().expect("memory");
            simulation.create_host(NodeId(id), log);
        }
        simulation
    }

    fn create_host(&mut self, id: NodeId, log: MemLog) {
        let skew = self.prng.below(3);
        let tick_period = if self.prng.chance(1, 2) {
            TICK_UNITS + skew
        } else {
            TICK_UNITS - skew
        };
        let disk_latency_max = if self.prng.chance(1, 2) {
            self.prng.below(4 * TICK_UNITS)
        } else {
            self.prng.below(3)
        };
        let host = Host {
            id,
            node: None,
            log_down: Some(log),
            kv: Kv::default(),
            snapshot: None,
            streamed: BTreeMap::new(),
            incoming: Vec::new(),
            disk: VecDeque::new(),
            disk_latency_max,
            tick_period,
            next_tick: self.now + 1 + self.prng.below(TICK_UNITS),
            restart_at: None,
            // Snapshots must not come faster than one can be streamed, or a slow follower restarts
            // its transfer forever (a host policy the architecture notes state).
            snapshot_interval: 16 + self.prng.below(48),
            pending_writes: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            commit_recorded: LogIndex(0),
        };
        self.hosts.insert(id, host);
        self.start(id).expect("a fresh node starts");
    }

    fn node_config(&mut self, id: NodeId) -> Config {
        let mut config = self.raft_config.clone();
        config.id = id;
        config.seed = self.prng.next_u64();
        config
    }

    /// Boots the node from its durable log and snapshot.
    fn start(&mut self, id: NodeId) -> Result<(), String> {
        let config = self.node_config(id);
        let host = self.hosts.get_mut(&id).expect("host");
        let log = host.log_down.take().expect("a down node has its log");
        let hard_state = log.hard_state();
        let (meta, kv) = match &host.snapshot {
            Some((meta, bytes)) => (Some(meta.clone()), Kv::decode(bytes)),
            None => (None, Kv::default()),
        };
        let applied = kv.applied;
        host.kv = kv;
        host.incoming.clear();
        host.restart_at = None;
        let node = RawNode::new(config, log, hard_state, meta, applied)
            .map_err(|e| format!("{id} failed to start: {e}"))?;
        host.commit_recorded = node.commit_index();
        host.node = Some(node);
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        self.report.crashes += 1;
        let unsynced_kept = self.prng.below(3) as usize;
        let host = self.hosts.get_mut(&id).expect("host");
        let Some(node) = host.node.take() else {
            return;
        };
        let mut log = node.into_log();
        let kept = unsynced_kept.min(log.unsynced_count());
        log.crash_keeping(kept);
        host.log_down = Some(log);
        host.disk.clear();
        host.streamed.clear();
        for (_, write) in std::mem::take(&mut host.pending_writes) {
            // The client never learns the outcome: the write may or may not take effect.
            self.history[write.operation].operation.response = None;
        }
        for (_, operation) in std::mem::take(&mut host.pending_reads) {
            self.history[operation].failed = true;
        }
    }

    fn run_all(&mut self) -> Result<SimReport, String> {
        let fault_end = self.options.fault_ticks * TICK_UNITS;
        let mut script = self.options.script.clone();
        script.sort_by_key(|(tick, _)| *tick);
        let mut script = VecDeque::from(script);
        while self.now < fault_end {
            if self.now.is_multiple_of(TICK_UNITS) {
                let tick = self.now / TICK_UNITS;
                while script.front().is_some_and(|(at, _)| *at <= tick) {
                    let (_, event) = script.pop_front().expect("non-empty");
                    self.scripted(event)?;
                }
                if self.options.random_faults {
                    self.random_faults()?;
                }
                self.workload()?;
            }
            self.step()?;
        }
        self.heal_everything()?;
        self.liveness()?;
        self.check_history()?;
        self.report.elections = self.checker.elections;
        self.report.commits = self.checker.committed_index().0;
        Ok(self.report.clone())
    }

    /// One unit of simulated time.
    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        self.deliver()?;
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        for id in &ids {
            let host = self.hosts.get_mut(id).expect("host");
            if host.restart_at.is_some_and(|at| at <= self.now) {
                self.start(*id)?;
            }
            let host = self.hosts.get_mut(id).expect("host");
            if let Some(node) = host.node.as_mut() {
                if host.next_tick <= self.now {
                    host.next_tick += host.tick_period;
                    node.tick();
                }
            }
        }
        for id in &ids {
            self.complete_disk_writes(*id)?;
            self.process_ready(*id)?;
        }
        self.check_step()
    }

    fn deliver(&mut self) -> Result<(), String> {
        while self
            .network
            .peek()
            .is_some_and(|m| m.deliver_at <= self.now)
        {
            let in_flight = self.network.pop().expect("peeked");
            let message = in_flight.message;
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!("{} deliver {message}", self.now);
            }
            if self.cut.contains(&(message.from, message.to)) {
                continue;
            }
            let Some(node) = self
                .hosts
                .get_mut(&message.to)
                .and_then(|h| h.node.as_mut())
            else {
                continue;
            };
            match node.step(message) {
                Ok(()) => {}
                Err(Error::InvalidMessage(why)) => {
                    return Err(format!("an honest node sent an invalid message: {why}"))
                }
                Err(error) => return Err(format!("step failed: {error}")),
            }
        }
        Ok(())
    }

    /// Puts a message on the wire: encoded and decoded (the codec is exercised on every
    /// message), then delayed, dropped or duplicated.
    fn send(&mut self, mut message: Message) -> Result<(), String> {
        let from = message.from;
        if let Some(chunk) = message.snapshot_chunk_to_fill() {
            let host = self.hosts.get(&from).expect("sender");
            let bytes = match &host.snapshot {
                Some((meta, bytes)) if meta.index == chunk.meta.index => bytes,
                _ => host.streamed.get(&chunk.meta.index).ok_or_else(|| {
                    format!(
                        "{from} streams snapshot {} it does not hold",
                        chunk.meta.index
                    )
                })?,
            };
            if bytes.len() as u64 != chunk.meta.size_bytes {
                return Err(format!(
                    "{from}: snapshot {} changed size",
                    chunk.meta.index
                ));
            }
            let start = chunk.offset as usize;
            let end = start + chunk.length as usize;
            chunk.data = Payload::from_shared(Arc::clone(bytes), start..end);
        }
        let bytes = encode_message_to_vec(&message);
        let decoded = decode_message(Arc::new(bytes)).map_err(|e| format!("codec: {e}"))?;
        if decoded != message {
            return Err(format!("codec round trip changed {message}"));
        }
        if self.cut.contains(&(message.from, message.to)) {
            return Ok(());
        }
        if self.prng.chance(self.drop_per_mille, 1000) {
            return Ok(());
        }
        let copies = if self.prng.chance(self.duplicate_per_mille, 1000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.latency_min + self.prng.below(self.latency_jitter);
            self.order += 1;
            self.network.push(InFlight {
                deliver_at: self.now + delay,
                order: self.prng.next_u64(),
                message: decoded.clone(),
            });
        }
        Ok(())
    }

    fn complete_disk_writes(&mut self, id: NodeId) -> Result<(), String> {
        let now = self.now;
        let mut outgoing = Vec::new();
        {
            let host = self.hosts.get_mut(&id).expect("host");
            let Some(node) = host.node.as_mut() else {
                return Ok(());
            };
            while host.disk.front().is_some_and(|write| write.due <= now) {
                let write = host.disk.pop_front().expect("peeked");
                node.log_mut().sync().map_err(|e| format!("sync: {e}"))?;
                if let Some((index, term)) = write.point {
                    node.on_persisted(index, term);
                }
                outgoing.extend(write.messages);
            }
        }
        for message in outgoing {
            self.send(message)?;
        }
        Ok(())
    }

    fn process_ready(&mut self, id: NodeId) -> Result<(), String> {
        for _ in 0..16 {
            let has_ready = self
                .hosts
                .get(&id)
                .and_then(|h| h.node.as_ref())
                .is_some_and(|n| n.has_ready());
            if !has_ready {
                return Ok(());
            }
            self.handle_ready(id)?;
        }
        Ok(())
    }

    fn handle_ready(&mut self, id: NodeId) -> Result<(), String> {
        let now = self.now;
        let disk_delay = {
            let max = self.hosts[&id].disk_latency_max;
            if max == 0 {
                0
            } else {
                self.prng.below(max + 1)
            }
        };
        let host = self.hosts.get_mut(&id).expect("host");
        let node = host.node.as_mut().expect("up");
        let ready = node.ready();
        // 1. Snapshot bytes and install.
        for chunk in &ready.snapshot_chunks {
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!(
                    "{now} {id} chunk {}/{} {}+{} have {}",
                    chunk.meta.term,
                    chunk.meta.index,
                    chunk.offset,
                    chunk.length,
                    host.incoming.len()
                );
            }
            if chunk.offset == 0 {
                host.incoming.clear();
            }
            if host.incoming.len() as u64 != chunk.offset {
                return Err(format!(
                    "{id}: snapshot chunk at {} after {} bytes",
                    chunk.offset,
                    host.incoming.len()
                ));
            }
            host.incoming.extend_from_slice(&chunk.data);
        }
        if let Some(install) = &ready.snapshot {
            let bytes = std::mem::take(&mut host.incoming);
            if bytes.len() as u64 != install.meta.size_bytes {
                return Err(format!(
                    "{id}: snapshot of {} bytes, expected {}",
                    bytes.len(),
                    install.meta.size_bytes
                ));
            }
            let kv = Kv::decode(&bytes);
            if kv.applied != install.meta.index {
                return Err(format!(
                    "{id}: snapshot state at {} labelled {}",
                    kv.applied, install.meta.index
                ));
            }
            self.checker.state(id, kv.applied, kv.digest())?;
            host.kv = kv;
            host.snapshot = Some((install.meta.clone(), Arc::new(bytes)));
            self.report.snapshots_installed += 1;
            // Writes this node proposed below the snapshot: decided by what committed there.
            let covered: Vec<LogIndex> = host
                .pending_writes
                .range(..=install.meta.index)
                .map(|(i, _)| *i)
                .collect();
            for index in covered {
                let write = host.pending_writes.remove(&index).expect("listed");
                match self.checker.committed_digest(index) {
                    Some(digest) if digest == write.digest => {
                        self.history[write.operation].operation.response = Some(now);
                        self.report.operations += 1;
                    }
                    Some(_) => self.history[write.operation].failed = true,
                    None => self.history[write.operation].operation.response = None,
                }
            }
        }
        // 2. The log.
        let node = host.node.as_mut().expect("up");
        persist_ready(node.log_mut(), &ready).map_err(|e| format!("persist: {e}"))?;
        for entry in &ready.entries {
            let previous = node.log().term(entry.index.prev()).expect("memory");
            self.checker.appended(id, entry, previous)?;
        }
        // 3. Messages that may leave now; 4. those that wait for the disk.
        let point = ready.persist_point();
        host.disk.push_back(DiskWrite {
            due: host
                .disk
                .back()
                .map_or(now, |w| w.due)
                .max(now + disk_delay),
            point,
            messages: ready.persisted_messages,
        });
        // 5. Apply, then answer reads.
        let mut applied_any = false;
        for entry in &ready.committed_entries {
            if entry.index != host.kv.applied.next() {
                return Err(format!(
                    "{id} applies {} after {}",
                    entry.index, host.kv.applied
                ));
            }
            let node = host.node.as_ref().expect("up");
            if entry.index > node.commit_index() {
                return Err(format!("{id} applies uncommitted {}", entry.index));
            }
            let put = if entry.kind == EntryKind::Command {
                Put::decode(&entry.payload)
            } else {
                None
            };
            if let Some(put) = &put {
                host.kv.apply(put);
            }
            host.kv.applied = entry.index;
            applied_any = true;
            self.checker.applied(id, entry, host.kv.digest())?;
            if let Some(write) = host.pending_writes.remove(&entry.index) {
                if put.is_some_and(|p| p.op_id == write.op_id) {
                    self.history[write.operation].operation.response = Some(now);
                    self.report.operations += 1;
                } else {
                    self.history[write.operation].failed = true;
                }
            }
        }
        for read in &ready.read_states {
            if let Some(operation) = host.pending_reads.remove(&read.context) {
                if read.index > host.kv.applied {
                    return Err(format!(
                        "{id}: read state {} released before applying it",
                        read.index
                    ));
                }
                let entry = &mut self.history[operation];
                entry.operation.kind = OpKind::Read(host.kv.get(entry.key));
                entry.operation.response = Some(now);
                self.report.operations += 1;
                if host
                    .node
                    .as_ref()
                    .is_some_and(|n| n.role() != StateRole::Leader)
                {
                    self.report.follower_reads += 1;
                }
            }
        }
        for context in &ready.dropped_reads {
            if let Some(operation) = host.pending_reads.remove(context) {
                self.history[operation].failed = true;
            }
        }
        let snapshot_due = applied_any
            && host.kv.applied.0
                >= host.snapshot.as_ref().map_or(0, |(m, _)| m.index.0) + host.snapshot_interval;
        // Chunks in these messages name the current snapshot: send them before replacing it.
        for message in ready.messages {
            self.send(message)?;
        }
        if snapshot_due {
            self.take_snapshot(id)?;
        }
        Ok(())
    }

    fn take_snapshot(&mut self, id: NodeId) -> Result<(), String> {
        let host = self.hosts.get_mut(&id).expect("host");
        let Some(node) = host.node.as_mut() else {
            return Ok(());
        };
        if host.kv.applied.0 == 0
            || host
                .snapshot
                .as_ref()
                .is_some_and(|(m, _)| m.index >= host.kv.applied)
        {
            return Ok(());
        }
        let bytes = host.kv.encode();
        node.snapshot_taken(host.kv.applied, bytes.len() as u64)
            .map_err(|e| format!("{id}: snapshot_taken: {e}"))?;
        let meta = node.snapshot_meta().expect("just taken").clone();
        if let Some((previous, previous_bytes)) = host.snapshot.replace((meta, Arc::new(bytes))) {
            host.streamed.insert(previous.index, previous_bytes);
        }
        let in_use = node.snapshots_in_use();
        host.streamed.retain(|index, _| in_use.contains(index));
        Ok(())
    }

    /// Checks after every step: election safety, leader completeness, commit records.
    fn check_step(&mut self) -> Result<(), String> {
        let mut committing_leader = None;
        for host in self.hosts.values_mut() {
            let Some(node) = host.node.as_ref() else {
                continue;
            };
            if node.role() == StateRole::Leader && self.checker.leader(node.term(), host.id)? {
                self.checker.leader_complete(
                    host.id,
                    node.term(),
                    node.log().first_index(),
                    node.last_index(),
                    |index| node.log_term(index),
                )?;
            }
            let commit = node.commit_index();
            if commit < host.commit_recorded {
                return Err(format!("{}: commit index moved back to {commit}", host.id));
            }
            if commit > host.commit_recorded
                && node.role() == StateRole::Leader
                && node.persisted_index() < node.last_index()
            {
                committing_leader = Some(host.id);
            }
            while host.commit_recorded < commit {
                let index = host.commit_recorded.next();
                if let Some(term) = node.log_term(index) {
                    self.checker.commit(host.id, index, term)?;
                }
                host.commit_recorded = index;
            }
        }
        // The worst moment for a crash: a leader just committed while its own disk lags.
        if let Some(id) = committing_leader {
            if self.faults_active && self.options.random_faults && self.prng.chance(1, 25) {
                self.crash(id);
                let downtime = 1 + self.prng.below(40);
                self.hosts.get_mut(&id).expect("host").restart_at =
                    Some(self.now + downtime * TICK_UNITS);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ faults and workload

    fn leader(&self) -> Option<NodeId> {
        self.hosts
            .values()
            .filter_map(|h| h.node.as_ref().map(|n| (h.id, n)))
            .filter(|(_, n)| n.role() == StateRole::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| id)
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.hosts
            .values()
            .filter(|h| h.node.is_some())
            .map(|h| h.id)
            .collect()
    }

    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.prng.below(ids.len() as u64) as usize])
    }

    fn random_faults(&mut self) -> Result<(), String> {
        if !self.faults_active {
            return Ok(());
        }
        let now = self.now;
        if !self.cut.is_empty() && now >= self.heal_at {
            self.cut.clear();
        }
        if self.cut.is_empty() && self.prng.chance(1, 80) {
            self.partition();
        }
        let down = self.hosts.values().filter(|h| h.node.is_none()).count();
        if down < self.options.nodes.div_ceil(2) && self.prng.chance(1, 70) {
            let ids = self.live_ids();
            if let Some(id) = self.pick(&ids) {
                self.crash(id);
                let downtime = 1 + self.prng.below(80);
                self.hosts.get_mut(&id).expect("host").restart_at =
                    Some(now + downtime * TICK_UNITS);
            }
        }
        if self.prng.chance(1, 60) {
            self.membership_change()?;
        }
        if self.prng.chance(1, 90) {
            if let Some(leader) = self.leader() {
                let voters: Vec<NodeId> = self.node(leader).configuration().voters().collect();
                let target = if self.prng.chance(1, 3) {
                    None
                } else {
                    self.pick(&voters)
                };
                if self.node_mut(leader).transfer_leadership(target).is_ok() {
                    self.report.transfers += 1;
                }
            }
        }
        if self.prng.chance(1, 40) {
            let ids = self.live_ids();
            if let Some(id) = self.pick(&ids) {
                self.take_snapshot(id)?;
            }
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> &RawNode<MemLog> {
        self.hosts[&id].node.as_ref().expect("up")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut RawNode<MemLog> {
        self.hosts
            .get_mut(&id)
            .expect("host")
            .node
            .as_mut()
            .expect("up")
    }

    fn partition(&mut self) {
        self.report.partitions += 1;
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        let now = self.now;
        match self.prng.below(4) {
            0 => {
                // Symmetric split into two random groups.
                let side: BTreeMap<NodeId, bool> =
                    ids.iter().map(|id| (*id, self.prng.chance(1, 2))).collect();
                for a in &ids {
                    for b in &ids {
                        if side[a] != side[b] {
                            self.cut.insert((*a, *b));
                        }
                    }
                }
            }
            1 => {
                // The leader (or anyone) isolated while the rest elect.
                let target = self.leader().or_else(|| ids.first().copied());
                if let Some(target) = target {
                    for other in &ids {
                        if *other != target {
                            self.cut.insert((target, *other));
                            self.cut.insert((*other, target));
                        }
                    }
                }
            }
            2 => {
                // One way: a node hears nobody (or nobody hears it).
                if let Some(target) = self.pick(&ids) {
                    let inbound = self.prng.chance(1, 2);
                    for other in &ids {
                        if *other != target {
                            if inbound {
                                self.cut.insert((*other, target));
                            } else {
                                self.cut.insert((target, *other));
                            }
                        }
                    }
                }
            }
            _ => {
                // A bridge: two groups that only one node connects.
                if let Some(bridge) = self.pick(&ids) {
                    let side: BTreeMap<NodeId, bool> =
                        ids.iter().map(|id| (*id, self.prng.chance(1, 2))).collect();
                    for a in &ids {
                        for b in &ids {
                            if *a != bridge && *b != bridge && side[a] != side[b] {
                                self.cut.insert((*a, *b));
                            }
                        }
                    }
                }
            }
        }
        self.heal_at = now + (20 + self.prng.below(130)) * TICK_UNITS;
    }

    fn membership_change(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let configuration = self.node(leader).configuration().clone();
        let members: Vec<NodeId> = configuration.members().map(|(id, _)| id).collect();
        let voters = if self.raft_config.pre_vote {
            configuration.voter_count()
        } else {
            0 // Never remove or demote a voter (see `Simulation::new`).
        };
        match self.prng.below(3) {
            0 => {
                let role = [
                    MemberRole::Voter,
                    MemberRole::Voter,
                    MemberRole::Standby,
                    MemberRole::Spare,
                ][self.prng.below(4) as usize];
                self.add_joiner(leader, role)?;
            }
            1 => {
                if let Some(id) = self.pick(&members) {
                    let is_voter = configuration.is_voter(id);
                    if (!is_voter || voters > 2) && self.node_mut(leader).remove(id).is_ok() {
                        self.report.membership_changes += 1;
                    }
                }
            }
            _ => {
                if let Some(id) = self.pick(&members) {
                    let role = [MemberRole::Voter, MemberRole::Standby, MemberRole::Spare]
                        [self.prng.below(3) as usize];
                    let allowed =
                        role == MemberRole::Voter || !configuration.is_voter(id) || voters > 2;
                    if allowed && self.node_mut(leader).assign(id, role).is_ok() {
                        self.report.membership_changes += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn add_joiner(&mut self, leader: NodeId, role: MemberRole) -> Result<(), String> {
        if self.next_joiner > self.options.nodes as u64 + JOINERS_MAX {
            return Ok(());
        }
        let id = NodeId(self.next_joiner);
        if self.node_mut(leader).add(id, &address(id), role).is_ok() {
            self.report.membership_changes += 1;
            self.next_joiner += 1;
            self.create_host(id, MemLog::new());
        }
        Ok(())
    }

    fn scripted(&mut self, event: ScriptedEvent) -> Result<(), String> {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        let nth = |n: u8| ids[usize::from(n) % ids.len()];
        match event {
            ScriptedEvent::Crash(n) => {
                let down = self.hosts.values().filter(|h| h.node.is_none()).count();
                if down < ids.len() {
                    self.crash(nth(n));
                }
            }
            ScriptedEvent::Restart(n) => {
                if self.hosts[&nth(n)].node.is_none() {
                    self.start(nth(n))?;
                }
            }
            ScriptedEvent::Isolate(n) => {
                let target = nth(n);
                for other in &ids {
                    if *other != target {
                        self.cut.insert((target, *other));
                        self.cut.insert((*other, target));
                    }
                }
            }
            ScriptedEvent::CutLink(a, b) => {
                if nth(a) != nth(b) {
                    self.cut.insert((nth(a), nth(b)));
                }
            }
            ScriptedEvent::Heal => self.cut.clear(),
            ScriptedEvent::Transfer(n) => {
                if let Some(leader) = self.leader() {
                    let _ = self.node_mut(leader).transfer_leadership(Some(nth(n)));
                }
            }
            ScriptedEvent::Assign(n, role) => {
                if let Some(leader) = self.leader() {
                    let role = MemberRole::from_u8(role).expect("0..3");
                    let configuration = self.node(leader).configuration().clone();
                    let id = nth(n);
                    if role == MemberRole::Voter
                        || !configuration.is_voter(id)
                        || (configuration.voter_count() > 2 && self.raft_config.pre_vote)
                    {
                        let _ = self.node_mut(leader).assign(id, role);
                    }
                }
            }
            ScriptedEvent::Remove(n) => {
                if let Some(leader) = self.leader() {
                    let configuration = self.node(leader).configuration().clone();
                    let id = nth(n);
                    let voters_removable =
                        configuration.voter_count() > 2 && self.raft_config.pre_vote;
                    if !configuration.is_voter(id) || voters_removable {
                        let _ = self.node_mut(leader).remove(id);
                    }
                }
            }
            ScriptedEvent::Add(role) => {
                if let Some(leader) = self.leader() {
                    self.add_joiner(leader, MemberRole::from_u8(role).expect("0..3"))?;
                }
            }
            ScriptedEvent::Snapshot(n) => {
                if self.hosts[&nth(n)].node.is_some() {
                    self.take_snapshot(nth(n))?;
                    self.process_ready(nth(n))?;
                }
            }
        }
        Ok(())
    }

    /// Client operations: writes proposed on whichever node the client guesses is the leader,
    /// reads through ReadIndex on leaders and followers.
    fn workload(&mut self) -> Result<(), String> {
        let writes = self.prng.below(3);
        let reads = self.prng.below(3);
        for _ in 0..writes {
            self.client_write(None)?;
        }
        for _ in 0..reads {
            self.client_read(None)?;
        }
        Ok(())
    }

    fn choose_key(&mut self) -> u64 {
        let slot = self.prng.below(KEYS_LIVE);
        // Keys retire after OPERATIONS_PER_KEY operations; live key `slot` is the latest one
        // congruent to it.
        let mut key = slot;
        while self.key_counts.get(&key).copied().unwrap_or(0) >= OPERATIONS_PER_KEY {
            key += KEYS_LIVE;
        }
        *self.key_counts.entry(key).or_insert(0) += 1;
        self.next_key = self.next_key.max(key + 1);
        key
    }

    fn client_target(&mut self) -> Option<NodeId> {
        let leader = self.leader();
        if leader.is_some() && self.prng.chance(3, 4) {
            return leader;
        }
        let ids = self.live_ids();
        self.pick(&ids)
    }

    fn client_write(&mut self, target: Option<NodeId>) -> Result<Option<LogIndex>, String> {
        let Some(id) = target.or_else(|| self.client_target()) else {
            return Ok(None);
        };
        let key = self.choose_key();
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let put = Put {
            op_id,
            key,
            value: op_id,
        };
        let payload = Payload::from_vec(put.encode());
        let digest = entry_digest(&crate::Entry {
            index: LogIndex(0),
            term: Term(0),
            kind: EntryKind::Command,
            payload: payload.clone(),
        });
        let now = self.now;
        let host = self.hosts.get_mut(&id).expect("host");
        let Some(node) = host.node.as_mut() else {
            return Ok(None);
        };
        match node.propose(payload) {
            Ok(index) => {
                self.history.push(HistoryEntry {
                    key,
                    operation: Operation {
                        invoke: now,
                        response: None,
                        kind: OpKind::Write(put.value),
                        log_index: Some(index.0),
                    },
                    failed: false,
                    proposed: Some((index, digest)),
                });
                host.pending_writes.insert(
                    index,
                    PendingWrite {
                        operation: self.history.len() - 1,
                        op_id,
                        digest,
                    },
                );
                self.process_ready(id)?;
                Ok(Some(index))
            }
            Err(_) => Ok(None),
        }
    }

    fn client_read(&mut self, target: Option<NodeId>) -> Result<bool, String> {
        let Some(id) = target.or_else(|| self.client_target()) else {
            return Ok(false);
        };
        let key = self.choose_key();
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let now = self.now;
        let host = self.hosts.get_mut(&id).expect("host");
        let Some(node) = host.node.as_mut() else {
            return Ok(false);
        };
        match node.read_index(op_id) {
            Ok(()) => {
                self.history.push(HistoryEntry {
                    key,
                    operation: Operation {
                        invoke: now,
                        response: None,
                        kind: OpKind::Read(0),
                        log_index: None,
                    },
                    failed: false,
                    proposed: None,
                });
                host.pending_reads.insert(op_id, self.history.len() - 1);
                self.process_ready(id)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    // ------------------------------------------------------------ the end of a run

    fn heal_everything(&mut self) -> Result<(), String> {
        self.faults_active = false;
        self.cut.clear();
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        let down: Vec<NodeId> = self
            .hosts
            .values()
            .filter(|h| h.node.is_none())
            .map(|h| h.id)
            .collect();
        for id in down {
            self.start(id)?;
        }
        Ok(())
    }

    /// After healing: a leader must appear and a proposal must commit and apply on every
    /// member that gets the log, within `liveness_ticks`; then every register is read once
    /// more through the leader, which puts every acknowledged write to the test.
    fn liveness(&mut self) -> Result<(), String> {
        let start = self.now;
        let deadline = start + self.options.liveness_ticks * TICK_UNITS;
        let mut sentinel: Option<(NodeId, LogIndex, usize)> = None;
        let mut final_reads: Option<Vec<usize>> = None;
        while self.now < deadline {
            if self.now.is_multiple_of(TICK_UNITS) {
                match (&sentinel, self.leader()) {
                    (None, Some(leader)) => {
                        if let Some(index) = self.client_write(Some(leader))? {
                            sentinel = Some((leader, index, self.history.len() - 1));
                        }
                    }
                    (Some((_, _, operation)), _) if self.history[*operation].failed => {
                        sentinel = None
                    }
                    // Leadership moved before the sentinel applied: propose again on the new
                    // leader (the old proposal is settled from the committed log at the end).
                    (Some((proposer, _, _)), Some(leader)) if *proposer != leader => {
                        sentinel = None
                    }
                    _ => {}
                }
            }
            self.step()?;
            let trace = std::env::var_os("SIM_TRACE").is_some();
            if trace && (self.now - start).is_multiple_of(50 * TICK_UNITS) {
                eprintln!(
                    "{} liveness: sentinel {sentinel:?}\n{}",
                    self.now,
                    self.describe_nodes()
                );
            }
            let Some((_, index, operation)) = sentinel else {
                continue;
            };
            if self.history[operation].operation.response.is_none() {
                continue;
            }
            if self.history[operation].failed {
                sentinel = None;
                continue;
            }
            if !self.all_members_applied(index) {
                continue;
            }
            if self.report.recovery_ticks == 0 {
                self.report.recovery_ticks = (self.now - start).div_ceil(TICK_UNITS);
            }
            match &final_reads {
                None => {
                    let Some(leader) = self.leader() else {
                        continue;
                    };
                    let mut operations = Vec::new();
                    let keys: Vec<u64> = self.key_counts.keys().copied().collect();
                    for key in keys {
                        let op_id = self.next_op_id;
                        self.next_op_id += 1;
                        if self.node_mut(leader).read_index(op_id).is_ok() {
                            self.history.push(HistoryEntry {
                                key,
                                operation: Operation {
                                    invoke: self.now,
                                    response: None,
                                    kind: OpKind::Read(0),
                                    log_index: None,
                                },
                                failed: false,
                                proposed: None,
                            });
                            let position = self.history.len() - 1;
                            self.hosts
                                .get_mut(&leader)
                                .expect("host")
                                .pending_reads
                                .insert(op_id, position);
                            operations.push(position);
                        }
                    }
                    final_reads = Some(operations);
                }
                Some(operations) => {
                    if operations.iter().any(|op| self.history[*op].failed) {
                        final_reads = None; // Leadership moved: read again.
                        continue;
                    }
                    if operations
                        .iter()
                        .all(|op| self.history[*op].operation.response.is_some())
                    {
                        return Ok(());
                    }
                }
            }
        }
        Err(format!(
            "liveness: no leader committed and applied a proposal everywhere within {} ticks of \
             healing (leader: {:?}, sentinel: {:?})\n{}",
            self.options.liveness_ticks,
            self.leader(),
            sentinel.map(|(id, index, _)| (id, index)),
            self.describe_nodes(),
        ))
    }

    /// One line per node: what a reader needs to see why a run is stuck.
    fn describe_nodes(&self) -> String {
        let mut text = String::new();
        for host in self.hosts.values() {
            match &host.node {
                None => text.push_str(&format!("  {}: down\n", host.id)),
                Some(node) => text.push_str(&format!(
                    "  {}: {} term={} vote={:?} leader={:?} last={}/{} commit={} applied={} \
                     conf{}@{} elapsed={}\n",
                    host.id,
                    node.role(),
                    node.term(),
                    node.vote(),
                    node.leader_id(),
                    node.log_term(node.last_index()).unwrap_or_default(),
                    node.last_index(),
                    node.commit_index(),
                    host.kv.applied,
                    node.configuration(),
                    node.configuration_index(),
                    node.election_elapsed,
                )),
            }
            if let Some(node) = host.node.as_ref() {
                for (id, progress) in node.progress() {
                    text.push_str(&format!(
                        "    -> {id}: {:?} match={} next={} paused={} inflight={} snapshot={:?}\n",
                        progress.state(),
                        progress.match_index(),
                        progress.next_index(),
                        progress.is_paused(),
                        progress.inflights().count(),
                        progress.snapshot_send(),
                    ));
                }
            }
        }
        text
    }

    fn all_members_applied(&self, index: LogIndex) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let configuration = self.node(leader).configuration();
        configuration
            .members()
            .filter(|(_, member)| member.role.replicates())
            .all(|(id, _)| {
                self.hosts
                    .get(&id)
                    .is_some_and(|h| h.node.is_some() && h.kv.applied >= index)
            })
    }

    fn check_history(&mut self) -> Result<(), String> {
        // Writes whose client never learned the outcome: after healing every entry that will
        // ever commit has committed, so the committed log says whether each took effect.
        for entry in &mut self.history {
            if entry.failed || entry.operation.response.is_some() {
                continue;
            }
            match entry.proposed {
                Some((index, digest)) if self.checker.committed_digest(index) == Some(digest) => {}
                _ => entry.failed = true,
            }
        }
        let mut by_key: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
        for entry in &self.history {
            if !entry.failed {
                by_key.entry(entry.key).or_default().push(entry.operation);
            }
        }
        for (key, history) in by_key {
            check_register_with(&history, true)
                .map_err(|e| format!("linearizability of register {key}: {e}"))?;
        }
        Ok(())
    }
}

/// The address a simulated node announces.
fn address(id: NodeId) -> String {
    format!("10.0.0.{}:9001", id.0)
}

/// Runs seeds `seeds` with `nodes` each; returns the totals or the first violation.
pub fn run_seeds(seeds: std::ops::Range<u64>, nodes: usize) -> Result<SimReport, Violation> {
    let mut total = SimReport::default();
    for seed in seeds {
        total.add(&run(&SimOptions::new(seed, nodes))?);
    }
    Ok(total)
}

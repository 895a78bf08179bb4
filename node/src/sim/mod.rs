//! The whole-stack deterministic simulator: N full nodes (Raft, segment log, engine on real
//! SQLite) in one thread on simulated time, over the simulated network (`sim_network.rs`) and
//! each on its own simulated disk ([`atoll_storage::SimDisk`]: the log's and the databases'
//! files in memory), with clients issuing SQL, network faults, disk faults, crashes and
//! restarts, and leadership transfers, all drawn from one seed. The `sim` example runs seeds;
//! a seed replays identically (one thread, one clock, seeded generators, and the node's sends
//! ordered before any draw).
//!
//! A run: the cluster boots (every node holds the same bootstrap configuration), a client
//! creates the schema, then for `fault_ms` of simulated time clients write, read and commit
//! transactions while faults come and go. Then everything heals (links restored, crashed nodes
//! restarted, a perfect network), and the cluster must make progress again (liveness); clients
//! stop, read every key a last time, the replicas converge, and the nodes stop.
//!
//! Checkers (each failure is a violation of the seed):
//! - election safety: one leader per term, over every observation;
//! - per-key linearizability of every read and write the clients saw (the raft crate's
//!   checker); a value never written, or written by a transaction that never committed, read
//!   anywhere fails it too (no uncommitted data visible);
//! - no acknowledged write lost: every acknowledged value is in every replica's `writes`
//!   table at the end, and no replica holds a value of an aborted transaction;
//! - replicas byte-identical at equal applied indexes (the database files after the final
//!   checkpoint);
//! - liveness: after healing, a write is acknowledged and every node applies the leader's
//!   commit index within `LIVENESS_TIMEOUT`.
//!
//! A crash drops the `Node` without its shutdown handover and reopens it from its directory:
//! half the time a process crash (the page cache survives: the disk keeps every write), else a
//! power cut of its disk, which loses every write of every file (log segments, metadata,
//! snapshots, databases, WALs, records) and every name not synced yet, or keeps a prefix of
//! them in order with the next one torn. Log syncs run as in production, off the loop
//! (`log_sync.rs`), each completing after a latency drawn from the seed (`SimulatedSync`): a
//! power cut before then loses its bytes. The disk faults, drawn from the seed too:
//! - latency: each node's disk has a profile (none, fast, slow, slow with stalls of up to
//!   1.5 s on some syncs); a node whose turn spent disk time holds its answers and messages
//!   back and does not turn again until that time has passed;
//! - a full disk: a node's disk gets a byte budget a little above what it holds, for a while:
//!   the node must refuse writes and resume once space is back;
//! - an I/O error (`EIO`) armed on a node's next syncs or writes: a failed write or sync is
//!   fatal by design, the node stops, and the simulator restarts it as after a crash; no
//!   acknowledged write may be lost.
//!
//! The node's own configuration files (`atoll.conf`, the secret, the members hint) are written
//! once by `init_member` in a real temporary directory; everything the node changes while it
//! runs is on its simulated disk.

pub mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use atoll_net::peer::ClusterSecret;
use atoll_raft::sim::linearizability::check_register;
use atoll_raft::{Configuration, MemberRole, NodeId, StateRole};

use atoll_storage::{PowerLoss, SimDisk, SimFaults, SimOp};

use crate::config::{self, NodeConfig};
use crate::inputs::{Clock, Inputs, ManualClock, Random, SeededRandom};
use crate::sim_network::{Fabric, LinkFaults};
use crate::{Node, StartOptions};
use client::{Context, Shared, SimClient, DATABASE};

/// Time after healing within which the cluster must acknowledge a write and converge.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest simulated step: every node turns at least this often.
const STEP_MAX: Duration = Duration::from_millis(1);
/// The shortest simulated step (deliveries due within it are taken together, in order).
const STEP_MIN: Duration = Duration::from_micros(10);
/// Simulated time the quiescing clients get to finish and read every key.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// One seed's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed: everything else is drawn from it.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Simulated time with faults.
    pub fault_ms: u64,
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// What the checkers found (empty: the seed ran clean).
    pub violations: Vec<String>,
    /// Writes acknowledged to clients.
    pub commits: u64,
    /// Terms that had a leader.
    pub elections: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Leadership transfers asked.
    pub transfers: u64,
    /// Snapshots installed from a leader, all nodes.
    pub snapshots_installed: u64,
    /// Nodes whose log was compacted (its first index past 1) when they stopped or crashed.
    pub compacted: u64,
    /// Commands proposed on top of others of their database still in flight, all nodes.
    pub chained: u64,
    /// The most commands of one database in flight at once, on any node.
    pub chain_longest: u64,
    /// Commands in flight when their leader lost leadership (chains discarded), all nodes.
    pub abandoned: u64,
    /// Crashes that cut the power of the node's disk (a subset of `crashes`).
    pub power_losses: u64,
    /// Writes a power cut tore, all disks.
    pub torn_writes: u64,
    /// Nodes stopped by an injected I/O error (and restarted).
    pub io_error_stops: u64,
    /// Times a node's disk was made full.
    pub disk_full: u64,
    /// Writes refused with `ENOSPC`, all disks.
    pub enospc: u64,
    /// Simulated time.
    pub simulated: Duration,
    /// A digest of everything observed: equal for two runs of one seed.
    pub fingerprint: u64,
}

/// Mixes a seed and a stream number into an independent seed (splitmix64's finalizer).
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over observations.
struct Digest(u64);

impl Digest {
    fn add(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The nodes, their directories, their disks and their network.
struct Cluster {
    clock: ManualClock,
    fabric: Fabric,
    dirs: Vec<PathBuf>,
    addresses: Vec<String>,
    nodes: Vec<Option<Node>>,
    /// Each node's disk; it outlives the node's crashes.
    disks: Vec<SimDisk>,
    /// The latency profile of each disk (kept through healing, without stalls).
    disk_faults: Vec<SimFaults>,
    /// A node whose last turn spent disk time holds its output and does not turn before this
    /// instant (nanoseconds of simulated time).
    busy_until: Vec<u64>,
    /// The disk's injected-error count when an `EIO` was armed on it: once the count moves,
    /// the node's failure is the injected one.
    eio_armed: Vec<Option<u64>>,
    incarnations: Vec<u64>,
    seed: u64,
    /// Entries raft keeps behind a snapshot (few: compaction and snapshot installs happen).
    snapshot_trailing_entries: u64,
    snapshots_installed: u64,
    compacted: u64,
    chained: u64,
    chain_longest: u64,
    abandoned: u64,
}

impl Cluster {
    fn id(index: usize) -> u64 {
        index as u64 + 1
    }

    /// Opens node `index` on its disk; `Ok(false)` when the I/O error armed on its disk
    /// stopped it again during its recovery.
    fn open(&mut self, index: usize) -> Result<bool, String> {
        let id = Cluster::id(index);
        self.incarnations[index] += 1;
        let network = self.fabric.endpoint(id, &self.addresses[index]);
        let seed = mix(self.seed, 1000 * id + self.incarnations[index]);
        let mut inputs = Inputs::simulated(Box::new(self.clock.clone()), seed, Some(network));
        inputs.disk = self.disks[index].shared();
        let shutdown = Arc::new(AtomicBool::new(false));
        let options = StartOptions {
            snapshot_trailing_entries: Some(self.snapshot_trailing_entries),
            ..StartOptions::default()
        };
        self.busy_until[index] = 0;
        match Node::open_with(&self.dirs[index], shutdown, options, inputs) {
            Ok(node) => {
                self.nodes[index] = Some(node);
                Ok(true)
            }
            // The injected error hit the recovery: the node stops again, as it would.
            Err(_) if self.eio_fired(index) => {
                self.disarm(index);
                Ok(false)
            }
            Err(e) => Err(format!("node {id} did not open: {e}")),
        }
    }

    /// Drops the node without its shutdown: no handover, no final checkpoint. With
    /// `power_loss`, its disk loses what was not synced (or keeps a prefix of it, torn).
    fn crash(&mut self, index: usize, power_loss: Option<PowerLoss>) {
        self.fabric.crash(Cluster::id(index));
        let node = self.nodes[index].take();
        if let Some(node) = &node {
            self.note_stopping(node);
        }
        drop(node);
        self.busy_until[index] = 0;
        if let Some(mode) = power_loss {
            self.disks[index].power_loss(mode);
        }
    }

    /// Whether the `EIO` armed on node `index`'s disk has fired.
    fn eio_fired(&self, index: usize) -> bool {
        self.eio_armed[index].is_some_and(|at| self.disks[index].stats().eio > at)
    }

    fn disarm(&mut self, index: usize) {
        self.eio_armed[index] = None;
        self.disks[index].clear_countdowns();
    }

    fn note_stopping(&mut self, node: &Node) {
        let state = node.state();
        self.snapshots_installed += state.snapshots_installed;
        self.compacted += u64::from(state.log_first.0 > 1);
        self.chained += state.commands_chained;
        self.chain_longest = self.chain_longest.max(state.chain_longest);
        self.abandoned += state.commands_abandoned;
    }

    fn up(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(Cluster::id)
            .collect()
    }

    /// Turns every running node that is not busy with its disk. Returns the nodes an injected
    /// I/O error stopped (they are down now; the caller restarts them); any other failure is
    /// a violation.
    fn turn(&mut self, now: u64) -> Result<Vec<usize>, String> {
        let mut stopped = Vec::new();
        for index in 0..self.nodes.len() {
            if self.busy_until[index] > now {
                continue;
            }
            let Some(node) = self.nodes[index].as_mut() else {
                continue;
            };
            let turned = node.turn(Some(Duration::ZERO));
            let latency = self.disks[index].take_latency().as_nanos() as u64;
            match turned {
                Ok(_) => {}
                Err(_) if self.eio_fired(index) => {
                    self.disarm(index);
                    stopped.push(index);
                    continue;
                }
                Err(e) => return Err(format!("node {} failed: {e}", Cluster::id(index))),
            }
            if latency > 0 {
                // The turn took that long: what it sent leaves at its next poll, then.
                self.busy_until[index] = now + latency;
            } else {
                self.fabric.flush(Cluster::id(index));
            }
        }
        Ok(stopped)
    }

    /// The earliest instant a busy node turns again.
    fn next_free(&self, now: u64) -> Option<u64> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some() && self.busy_until[i] > now)
            .map(|i| self.busy_until[i])
            .min()
    }

    /// Every running node applied the highest commit index any of them knows, and one leads.
    fn converged(&self) -> bool {
        let states: Vec<_> = self.nodes.iter().flatten().map(Node::state).collect();
        let commit = states.iter().map(|s| s.commit).max();
        states.iter().any(|s| s.role == StateRole::Leader)
            && states.len() == self.nodes.len()
            && states.iter().all(|s| Some(s.applied) == commit)
    }
}

/// The run of one seed.
struct Run {
    config: SimConfig,
    cluster: Cluster,
    clients: Vec<SimClient>,
    shared: Shared,
    random: SeededRandom,
    report: SeedReport,
    digest: Digest,
    /// The leader of each term seen.
    leaders: BTreeMap<u64, u64>,
    /// Crashed nodes and when they restart (nanoseconds).
    restarts: BTreeMap<usize, u64>,
    /// Full disks and when their space comes back (nanoseconds).
    space_back: BTreeMap<usize, u64>,
    fault_next_at: u64,
}

impl Run {
    fn now(&self) -> u64 {
        self.cluster.clock.elapsed().as_nanos() as u64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.random.next_u64() % n.max(1)
    }

    /// One step: nodes turn, observations are checked, clients act, time moves to the next
    /// thing due (at most `STEP_MAX` on).
    fn step(&mut self) -> Result<(), String> {
        let now = self.now();
        for index in self.cluster.turn(now)? {
            // A failed sync or write stopped the node, by design: restarted as after a crash
            // (its disk may have lost what it could not sync).
            self.report.io_error_stops += 1;
            let mode = self.draw_crash();
            self.cluster.crash(index, mode);
            self.report.power_losses += u64::from(mode.is_some());
            let after = 10_000_000 + self.below(500_000_000);
            self.restarts.insert(index, now + after);
        }
        self.observe()?;
        let up = self.cluster.up();
        let mut next = now + STEP_MAX.as_nanos() as u64;
        if let Some(free) = self.cluster.next_free(now) {
            next = next.min(free);
        }
        for client in &mut self.clients {
            let mut ctx = Context {
                fabric: &self.cluster.fabric,
                now,
                up: &up,
                shared: &mut self.shared,
            };
            client.step(&mut ctx);
            next = next.min(client.next_at().max(now + 1));
        }
        let syncs_due = self
            .cluster
            .nodes
            .iter()
            .flatten()
            .filter_map(Node::sync_due);
        if let Some(due) = self
            .cluster
            .fabric
            .next_due()
            .into_iter()
            .chain(syncs_due)
            .min()
        {
            let due = due
                .saturating_duration_since(self.cluster.clock.now())
                .as_nanos() as u64;
            next = next.min(now + due.max(1));
        }
        let step = Duration::from_nanos(next.saturating_sub(now)).max(STEP_MIN);
        self.cluster.clock.advance(step);
        Ok(())
    }

    /// Election safety and the fingerprint, from every running node's state.
    fn observe(&mut self) -> Result<(), String> {
        for node in self.cluster.nodes.iter().flatten() {
            let state = node.state();
            self.digest.add(state.id.0);
            self.digest.add(state.term.0);
            self.digest.add(state.commit.0);
            self.digest.add(state.applied.0);
            if state.role == StateRole::Leader {
                let leader = *self.leaders.entry(state.term.0).or_insert(state.id.0);
                if leader != state.id.0 {
                    return Err(format!(
                        "election safety: nodes {leader} and {} both lead term {}",
                        state.id, state.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// A fault, drawn: links cut (one way, a node isolated, a split), healed, a crash, a
    /// restart, a leadership transfer, or new link faults.
    fn fault(&mut self) -> Result<(), String> {
        let n = self.config.nodes as u64;
        let now = self.now();
        match self.below(100) {
            0..=24 => self.cluster.fabric.heal(),
            25..=39 => {
                let from = 1 + self.below(n);
                let to = 1 + (from + self.below(n - 1)) % n;
                self.cluster.fabric.cut(from, to);
            }
            40..=54 => {
                let isolated = 1 + self.below(n);
                for other in (1..=n).filter(|&o| o != isolated) {
                    self.cluster.fabric.cut(isolated, other);
                    self.cluster.fabric.cut(other, isolated);
                }
            }
            55..=64 => {
                let minority: Vec<u64> = (1..=n).filter(|_| self.below(3) == 0).collect();
                for &a in &minority {
                    for b in (1..=n).filter(|b| !minority.contains(b)) {
                        self.cluster.fabric.cut(a, b);
                        self.cluster.fabric.cut(b, a);
                    }
                }
            }
            65..=76 => {
                let up = self.cluster.up();
                if up.len() > 1 {
                    let id = up[self.below(up.len() as u64) as usize];
                    let index = id as usize - 1;
                    let mode = self.draw_crash();
                    self.cluster.crash(index, mode);
                    self.report.crashes += 1;
                    self.report.power_losses += u64::from(mode.is_some());
                    let after = 50_000_000 + self.below(2_000_000_000);
                    self.restarts.insert(index, now + after);
                }
            }
            77..=84 => {
                let target = 1 + self.below(n);
                self.shared.transfer_wanted = Some(target);
            }
            85..=90 => {
                // A full disk on one node, for 0.2 to 3 s: a budget at most 24 MiB above what
                // it holds, below the node's 16 MiB margin most of the time, and often below
                // what its next writes need (a WAL that grows, a new segment), so that writes
                // fail with ENOSPC before the node measures its free space.
                let index = self.below(n) as usize;
                let room_max: u64 = [1, 64 << 10, 1 << 20, 24 << 20][self.below(4) as usize];
                let room = self.below(room_max);
                let disk = &self.cluster.disks[index];
                disk.set_budget(Some(disk.used_bytes() + room));
                self.report.disk_full += 1;
                let after = 200_000_000 + self.below(2_800_000_000);
                self.space_back.insert(index, now + after);
            }
            91..=95 => {
                // An I/O error on one of the next syncs or writes of a running node's disk.
                let up = self.cluster.up();
                let id = up.get(self.below(up.len() as u64) as usize).copied();
                let index = id.map_or(0, |id| id as usize - 1);
                if id.is_some() && self.cluster.eio_armed[index].is_none() {
                    let op = [SimOp::Sync, SimOp::Write, SimOp::SyncDir][self.below(3) as usize];
                    let count = self.below(40);
                    let disk = &self.cluster.disks[index];
                    self.cluster.eio_armed[index] = Some(disk.stats().eio);
                    disk.fail_after(op, count);
                }
            }
            _ => {
                let faults = self.draw_faults();
                self.cluster.fabric.set_faults(faults);
            }
        }
        Ok(())
    }

    /// How a crash leaves the disk: half the time a process crash (`None`: the page cache
    /// survives), else a power cut that loses every unsynced write (a third of them), or keeps
    /// a prefix of them with the next one torn.
    fn draw_crash(&mut self) -> Option<PowerLoss> {
        match self.below(6) {
            0..=2 => None,
            3 => Some(PowerLoss::DropUnsynced),
            _ => Some(PowerLoss::TornPrefix),
        }
    }

    /// The space of full disks whose time is up comes back (all of them with `all`).
    fn space_back_due(&mut self, all: bool) {
        let now = self.now();
        let due: Vec<usize> = self
            .space_back
            .iter()
            .filter(|(_, &at)| all || at <= now)
            .map(|(&index, _)| index)
            .collect();
        for index in due {
            self.space_back.remove(&index);
            self.cluster.disks[index].set_budget(None);
        }
    }

    fn draw_faults(&mut self) -> LinkFaults {
        let delay_max_us = [500, 2_000, 10_000, 40_000][self.below(4) as usize];
        LinkFaults {
            delay_min: Duration::from_micros(50),
            delay_max: Duration::from_micros(delay_max_us),
            drop_ppm: [0, 1_000, 20_000, 100_000][self.below(4) as usize],
            duplicate_ppm: [0, 1_000, 20_000][self.below(3) as usize],
            reorder_ppm: [0, 1_000, 50_000][self.below(3) as usize],
        }
    }

    fn restart_due(&mut self, all: bool) -> Result<(), String> {
        let now = self.now();
        let due: Vec<usize> = self
            .restarts
            .iter()
            .filter(|(_, &at)| all || at <= now)
            .map(|(&index, _)| index)
            .collect();
        for index in due {
            self.restarts.remove(&index);
            if !self.cluster.open(index)? {
                // Stopped again by the injected error: another try a little later.
                self.report.io_error_stops += 1;
                let after = 10_000_000 + self.below(200_000_000);
                self.restarts.insert(index, now + after);
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        // Boot and schema.
        let setup_until = self.now() + 30_000_000_000;
        while !self.shared.schema_ready {
            self.step()?;
            if self.now() > setup_until {
                return Err("liveness: the schema was not created in 30 s".into());
            }
        }
        // Faults.
        let faults = self.draw_faults();
        self.cluster.fabric.set_faults(faults);
        let fault_end = self.now() + self.config.fault_ms * 1_000_000;
        self.fault_next_at = self.now();
        while self.now() < fault_end {
            if self.now() >= self.fault_next_at {
                self.fault()?;
                self.fault_next_at = self.now() + 100_000_000 + self.below(1_400_000_000);
            }
            self.restart_due(false)?;
            self.space_back_due(false);
            self.step()?;
        }
        // Heal: the cluster must acknowledge a write and converge. Disks keep their latency,
        // not their stalls, full budgets or armed errors.
        self.cluster.fabric.heal();
        self.cluster.fabric.set_faults(LinkFaults::default());
        self.space_back_due(true);
        for index in 0..self.cluster.nodes.len() {
            self.cluster.disarm(index);
            let calm = SimFaults {
                stall_ppm: 0,
                ..self.cluster.disk_faults[index].clone()
            };
            self.cluster.disks[index].set_faults(calm);
        }
        self.restart_due(true)?;
        let healed_at = self.now();
        let acknowledged = self.shared.acknowledged.len();
        let deadline = healed_at + LIVENESS_TIMEOUT.as_nanos() as u64;
        while self.shared.acknowledged.len() == acknowledged || !self.cluster.converged() {
            if self.now() > deadline {
                let states: Vec<String> = self
                    .cluster
                    .nodes
                    .iter()
                    .flatten()
                    .map(|n| format!("{:?}", n.state()))
                    .collect();
                let clients: Vec<String> = self.clients.iter().map(SimClient::describe).collect();
                return Err(format!(
                    "liveness: {} s after healing ({} ms), {} new writes acknowledged, nodes {}; \
                     clients {}",
                    LIVENESS_TIMEOUT.as_secs(),
                    healed_at / 1_000_000,
                    self.shared.acknowledged.len() - acknowledged,
                    states.join("; "),
                    clients.join("; ")
                ));
            }
            self.step()?;
        }
        // Quiesce: no new operations; final reads of every key.
        for client in &mut self.clients {
            client.quiet = true;
        }
        let deadline = self.now() + QUIESCE_TIMEOUT.as_nanos() as u64;
        while self.clients.iter().any(SimClient::busy) {
            if self.now() > deadline {
                return Err("liveness: client operations did not end after healing".into());
            }
            self.step()?;
        }
        if let Some(reader) = self.clients.iter_mut().find(|c| c.id == 0) {
            reader.final_reads = self.shared.history.keys().copied().collect();
        }
        while self
            .clients
            .iter()
            .any(|c| c.busy() || !c.final_reads.is_empty())
            || !self.cluster.converged()
        {
            if self.now() > deadline {
                return Err("liveness: the final reads did not complete".into());
            }
            self.step()?;
        }
        Ok(())
    }

    /// The checks on the history and on the replicas' files (after the nodes stopped).
    fn check(&mut self) {
        let shared = &self.shared;
        for violation in &shared.violations {
            self.report.violations.push(violation.clone());
        }
        for (key, history) in &shared.history {
            for op in history {
                if let atoll_raft::sim::linearizability::OpKind::Read(value) = op.kind {
                    if shared.aborted.contains(&value) {
                        self.report.violations.push(format!(
                            "uncommitted data visible: key {key} read value {value} of a \
                             transaction that never committed"
                        ));
                    }
                }
            }
            if let Err(e) = check_register(history) {
                self.report
                    .violations
                    .push(format!("linearizability of key {key}: {e}"));
            }
        }
        let images: Vec<Vec<u8>> = (0..self.cluster.dirs.len())
            .map(|index| {
                let path = config::db_dir(&self.cluster.dirs[index]).join(DATABASE);
                self.cluster.disks[index]
                    .shared()
                    .read(&path, u64::MAX)
                    .unwrap_or_default()
            })
            .collect();
        for (index, image) in images.iter().enumerate().skip(1) {
            if *image != images[0] {
                self.report.violations.push(format!(
                    "replicas differ: node {}'s database ({} bytes) is not node 1's ({} bytes)",
                    index + 1,
                    image.len(),
                    images[0].len()
                ));
            }
        }
        for (index, dir) in self.cluster.dirs.iter().enumerate() {
            // The database, as its disk holds it, copied to a real file for rusqlite to read.
            let copy = dir.with_extension("check.db");
            let copied = std::fs::write(&copy, &images[index]);
            let wal = config::db_dir(dir).join(format!("{DATABASE}-wal"));
            let wal_bytes = self.cluster.disks[index]
                .shared()
                .metadata(&wal)
                .map_or(0, |m| m.len);
            if wal_bytes > 0 {
                self.report.violations.push(format!(
                    "node {}: {wal_bytes} bytes left in the WAL after a clean stop",
                    index + 1
                ));
            }
            let written = copied
                .map_err(|e| e.to_string())
                .and_then(|()| read_writes(&copy).map_err(|e| e.to_string()));
            match written {
                Ok(written) => {
                    let lost: Vec<u64> = shared
                        .acknowledged
                        .keys()
                        .filter(|v| !written.contains(v))
                        .copied()
                        .collect();
                    if !lost.is_empty() {
                        self.report.violations.push(format!(
                            "acknowledged writes lost on node {}: values {lost:?}",
                            index + 1
                        ));
                    }
                    let phantom: Vec<u64> = written
                        .iter()
                        .filter(|v| shared.aborted.contains(v) || !shared.issued.contains_key(v))
                        .copied()
                        .collect();
                    if !phantom.is_empty() {
                        self.report.violations.push(format!(
                            "uncommitted or unknown values on node {}: {phantom:?}",
                            index + 1
                        ));
                    }
                }
                Err(e) => self
                    .report
                    .violations
                    .push(format!("node {}: reading its database: {e}", index + 1)),
            }
        }
    }
}

/// The values in a replica's `writes` table.
fn read_writes(path: &Path) -> rusqlite::Result<BTreeSet<u64>> {
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = connection.prepare("SELECT v FROM writes")?;
    let values = statement.query_map([], |row| row.get::<_, i64>(0))?;
    values.map(|v| v.map(|v| v as u64)).collect()
}

/// The temporary directory of a run: in memory (`/dev/shm`) where there is one, so that
/// fsyncs cost nothing.
fn temporary_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("atoll-sim-");
        builder
    };
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

/// Runs one seed; the report says what the checkers found.
pub fn run_seed(config: &SimConfig) -> SeedReport {
    let seed = config.seed;
    let mut report = SeedReport::default();
    let dir = match temporary_dir() {
        Ok(dir) => dir,
        Err(e) => {
            report
                .violations
                .push(format!("no temporary directory: {e}"));
            return report;
        }
    };
    let clock = ManualClock::new();
    let fabric = Fabric::new(clock.clone(), mix(seed, 1));
    let mut random = SeededRandom::new(mix(seed, 2));
    let n = config.nodes.max(1);
    let dirs: Vec<PathBuf> = (1..=n).map(|i| dir.path().join(format!("n{i}"))).collect();
    let addresses: Vec<String> = (1..=n)
        .map(|i| format!("127.0.0.1:{}", 20_000 + i))
        .collect();
    let mut configuration = Configuration::new();
    for (i, address) in addresses.iter().enumerate() {
        configuration.insert(NodeId(i as u64 + 1), address.clone(), MemberRole::Voter);
    }
    let secret = ClusterSecret::from_bytes([7; 32]);
    // Each node's disk, and its latency profile: none, fast, slow, or slow with stalls.
    let mut disk_random = SeededRandom::new(mix(seed, 4));
    let profile = disk_random.next_u64() % 4;
    let disk_faults: Vec<SimFaults> = (0..n)
        .map(|_| match profile {
            0 => SimFaults::default(),
            1 => SimFaults {
                sync_latency_us: (20, 200),
                op_latency_us: (0, 2),
                ..SimFaults::default()
            },
            _ => SimFaults {
                sync_latency_us: (200, 4_000),
                op_latency_us: (1, 20),
                stall_ppm: if profile == 3 { 1_000 } else { 0 },
                stall_ms: (100, 1_500),
                ..SimFaults::default()
            },
        })
        .collect();
    let disks: Vec<SimDisk> = (0..n)
        .map(|i| {
            let disk = SimDisk::new(mix(seed, 600 + i as u64));
            disk.set_faults(disk_faults[i].clone());
            disk
        })
        .collect();
    let snapshot_entries = [8, 32, 256][(random.next_u64() % 3) as usize];
    for (i, dir) in dirs.iter().enumerate() {
        let mut node_config = NodeConfig::new(i as u64 + 1, addresses[i].clone());
        node_config.cluster_id = mix(seed, 3);
        node_config.snapshot_entries = snapshot_entries;
        let disk = disks[i].shared();
        if let Err(e) = crate::init_member(disk, dir, &node_config, &secret, &configuration) {
            report.violations.push(format!("init: {e}"));
            return report;
        }
    }
    let cluster = Cluster {
        clock,
        fabric,
        dirs,
        addresses,
        nodes: (0..n).map(|_| None).collect(),
        disks,
        disk_faults,
        busy_until: vec![0; n],
        eio_armed: vec![None; n],
        incarnations: vec![0; n],
        seed,
        snapshot_trailing_entries: [0, 4, 64][(random.next_u64() % 3) as usize],
        snapshots_installed: 0,
        compacted: 0,
        chained: 0,
        chain_longest: 0,
        abandoned: 0,
    };
    // Up to five writers on the one database: groups arrive while commands are in flight, so
    // chains of several commands form (and meet leader changes).
    let clients_count = 2 + (random.next_u64() % 5) as usize;
    let clients = (0..clients_count)
        .map(|i| {
            SimClient::new(
                i,
                i == clients_count - 1 && i > 1,
                mix(seed, 100 + i as u64),
            )
        })
        .collect();
    let mut run = Run {
        config: config.clone(),
        cluster,
        clients,
        shared: Shared::default(),
        random,
        report,
        digest: Digest(0xcbf2_9ce4_8422_2325),
        leaders: BTreeMap::new(),
        restarts: BTreeMap::new(),
        space_back: BTreeMap::new(),
        fault_next_at: 0,
    };
    let mut outcome = (0..n).try_for_each(|i| run.cluster.open(i).map(|_| ()));
    if outcome.is_ok() {
        outcome = run.run();
    }
    if let Err(e) = outcome {
        run.report.violations.push(e);
    }
    for index in 0..n {
        if let Some(mut node) = run.cluster.nodes[index].take() {
            run.cluster.note_stopping(&node);
            node.stop();
            run.cluster.nodes[index] = Some(node);
        }
    }
    for index in 0..n {
        run.cluster.nodes[index] = None;
    }
    if run.report.violations.is_empty() {
        run.check();
    }
    run.report.commits = run.shared.acknowledged.len() as u64;
    run.report.elections = run.leaders.len() as u64;
    run.report.transfers = run.shared.transfers;
    run.report.snapshots_installed = run.cluster.snapshots_installed;
    run.report.compacted = run.cluster.compacted;
    run.report.chained = run.cluster.chained;
    run.report.chain_longest = run.cluster.chain_longest;
    run.report.abandoned = run.cluster.abandoned;
    for disk in &run.cluster.disks {
        let stats = disk.stats();
        run.report.torn_writes += stats.writes_torn;
        run.report.enospc += stats.enospc;
    }
    run.report.simulated = run.cluster.clock.elapsed();
    run.digest.add(run.report.commits);
    for (key, history) in &run.shared.history {
        run.digest.add(*key);
        for op in history {
            run.digest.add(op.invoke);
            run.digest.add(op.response.unwrap_or(u64::MAX));
        }
    }
    run.report.fingerprint = run.digest.0;
    report = run.report;
    report
}

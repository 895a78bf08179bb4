//! The whole-stack deterministic simulator: N full nodes (Raft, segment log, engine on real
//! SQLite) in one thread on simulated time, over the simulated network (`sim_network.rs`) and
//! each on its own simulated disk ([`atoll_storage::SimDisk`]: the log's and the databases'
//! files in memory), with clients issuing SQL, network faults, disk faults, crashes and
//! restarts, leadership transfers and membership changes, all drawn from one seed. The `sim`
//! example runs seeds;
//! a seed replays identically (one thread, one clock, seeded generators, and the node's sends
//! ordered before any draw).
//!
//! A run: the cluster boots (every node holds the same bootstrap configuration: `nodes`
//! voters and, drawn, a standby or a spare), a client creates the schema, then for `fault_ms`
//! of simulated time clients write, read and commit transactions while faults come and go.
//! Then everything heals (links restored, crashed nodes restarted, a perfect network), and the
//! cluster must make progress again (liveness); clients stop, read every key a last time, the
//! replicas converge, and the nodes stop.
//!
//! Membership: fresh nodes join (prepared as `atoll join` does, asking the leader through the
//! node's own join path), an operator's client asks REMOVE or ASSIGN (voter, standby, spare),
//! removed nodes go on running until some are retired (stopped for good), and automatic roles
//! (on in most seeds, with a short unreachable threshold) promote joiners and replace
//! unreachable voters. The replicas checked at the end are the final configuration's voters
//! and standbys.
//!
//! Checkers (each failure is a violation of the seed):
//! - election safety: one leader per term, over every observation;
//! - per-key linearizability of every read and write the clients saw (the raft crate's
//!   checker); a value never written, or written by a transaction that never committed, read
//!   anywhere fails it too (no uncommitted data visible);
//! - no stale command: no replica ever rejects a command as computed against another state
//!   than the one it follows in the log (a leader that computed one served too early);
//! - no acknowledged write lost: every acknowledged value is in every replica's `writes`
//!   table at the end, and no replica holds a value of an aborted transaction;
//! - replicas byte-identical at equal applied indexes: while the run goes on, each node's
//!   database image (its pages as of its applied index, `Engine::database_image`) is hashed
//!   whenever its applied index moved to one another node hashed (and, to have those, every
//!   `IMAGE_INTERVAL` at most), and every
//!   hash of one index must be equal, whichever node and time it came from (snapshot installs
//!   included; a restarted node has no image until replay passes what its main file may hold,
//!   `EngineError::NotSettled`); at the end, the database files after the final checkpoint;
//! - liveness: after healing, a write is acknowledged and every voter and standby applies the
//!   leader's commit index within `LIVENESS_TIMEOUT`;
//! - configuration safety (`membership.rs`): at most one configuration change pending; a
//!   removed node, a standby or a spare never counted in a commit or an election.
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
mod membership;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use atoll_net::peer::ClusterSecret;
use atoll_net::protocol::{Request, Role};
use atoll_raft::sim::linearizability::check_register;
use atoll_raft::{Configuration, EntryKind, LogIndex, MemberRole, NodeId, Payload, StateRole};
use atoll_storage::LogRead;

use atoll_storage::{PowerLoss, SimDisk, SimFaults, SimOp};

use crate::config::{self, NodeConfig};
use crate::inputs::{Clock, Inputs, ManualClock, Random, SeededRandom};
use crate::sim_network::{Fabric, LinkFaults};
use crate::{Node, StartOptions};
use client::{Context, Shared, SimClient, DATABASE};
use membership::{ConfigurationChecker, Held, Seen};

/// Time after healing within which the cluster must acknowledge a write and converge.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest simulated step (a bound only: the nodes' tick timers are due more often).
const STEP_MAX: Duration = Duration::from_millis(10);
/// The shortest simulated step (deliveries due within it are taken together, in order): about
/// what a turn of a real node takes.
const STEP_MIN: Duration = Duration::from_micros(10);
/// Shortest simulated time between two image hashes of one node at indexes no other node
/// hashed (an index another node hashed is hashed at once: it is compared).
const IMAGE_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh nodes that may join during a seed.
const JOINS_MAX: usize = 2;
/// Sizes of the nodes' log segment files, one drawn per seed: small, so that segments fill,
/// roll over and are compacted away within a run (and an open reads little).
const LOG_SEGMENT_BYTES: [u64; 3] = [64 << 10, 256 << 10, 1 << 20];
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
    /// Fresh nodes that joined (were started to join).
    pub joins: u64,
    /// REMOVE and ASSIGN requests asked, and answered done.
    pub membership_asked: u64,
    /// REMOVE and ASSIGN requests answered done.
    pub membership_done: u64,
    /// Removed nodes stopped for good.
    pub retired: u64,
    /// Old commands proposed again (expected rejected as stale).
    pub replays: u64,
    /// Database images hashed during the run, and those compared with another node's hash at
    /// the same applied index.
    pub images_hashed: u64,
    /// Images compared with another node's at the same applied index.
    pub images_compared: u64,
    /// Snapshots installed from a leader, all nodes.
    pub snapshots_installed: u64,
    /// Nodes whose log was compacted (its first index past 1) when they stopped or crashed.
    pub compacted: u64,
    /// Commands proposed on top of others of their database still in flight, all nodes.
    pub chained: u64,
    /// Turns whose apply stopped at its budget with entries left for the next, all nodes.
    pub apply_yields: u64,
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
    /// Simulator steps (clock advances) and node turns.
    pub steps: u64,
    /// Node turns, all nodes.
    pub turns: u64,
    /// A digest of everything observed: equal for two runs of one seed.
    pub fingerprint: u64,
}

/// The address of node `id` on the simulated network.
fn address(id: u64) -> String {
    format!("127.0.0.1:{}", 20_000 + id)
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
    apply_yields: u64,
    chain_longest: u64,
    abandoned: u64,
    /// Size of the nodes' log segment files.
    log_segment_bytes: u64,
    /// Nodes to turn at the next step whatever is due (just opened).
    wake: Vec<bool>,
    turns: u64,
    /// Nodes removed from the cluster and stopped for good.
    retired: Vec<bool>,
    /// What each node that is down held when it went down (the configuration checks).
    held: Vec<Option<Held>>,
    /// The configuration checkers.
    configurations: ConfigurationChecker,
    /// Where node directories go, the secret, and the configuration every node starts from.
    root: PathBuf,
    secret: ClusterSecret,
    template: NodeConfig,
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
            log_segment_bytes: Some(self.log_segment_bytes),
            ..StartOptions::default()
        };
        self.busy_until[index] = 0;
        match Node::open_with(&self.dirs[index], shutdown, options, inputs) {
            Ok(node) => {
                self.nodes[index] = Some(node);
                self.wake[index] = true;
                self.held[index] = None;
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

    /// A fresh node, prepared as `atoll join` does (asking the nodes at `join`), started.
    fn join(&mut self, join: Vec<String>) -> Result<(), String> {
        let index = self.nodes.len();
        let id = Cluster::id(index);
        let dir = self.root.join(format!("n{id}"));
        let address = address(id);
        let mut config = self.template.clone();
        config.id = id;
        config.address = address.clone();
        config.join = join;
        // Its own disk, with the cluster's latency profile.
        let disk = SimDisk::new(mix(self.seed, 600 + index as u64));
        let faults = self.disk_faults[0].clone();
        disk.set_faults(faults.clone());
        crate::prepare_join_on(disk.shared(), &dir, &config, &self.secret)
            .map_err(|e| format!("preparing node {id} to join: {e}"))?;
        self.dirs.push(dir);
        self.addresses.push(address);
        self.nodes.push(None);
        self.disks.push(disk);
        self.disk_faults.push(faults);
        self.busy_until.push(0);
        self.eio_armed.push(None);
        self.incarnations.push(0);
        self.wake.push(false);
        self.retired.push(false);
        self.held.push(None);
        // No error is armed on a fresh disk: it opens.
        self.open(index).map(|_| ())
    }

    /// Node `id` as the configuration checks see it.
    fn seen(&self, id: u64) -> Seen<'_> {
        let index = (id as usize).wrapping_sub(1);
        match (self.nodes.get(index), self.held.get(index)) {
            (Some(Some(node)), _) => Seen::Up(node),
            (_, Some(Some(held))) => Seen::Down(held),
            _ => Seen::Gone,
        }
    }

    /// The configuration of the leader of the highest term, if one is up.
    fn leader_configuration(&self) -> Option<Configuration> {
        let leader = self
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.raft.role() == StateRole::Leader)
            .max_by_key(|n| n.raft.term())?;
        Some(leader.raft.configuration().clone())
    }

    /// The voters and standbys of the leader's configuration (`None`: no leader up).
    fn replicas(&self) -> Option<Vec<u64>> {
        let configuration = self.leader_configuration()?;
        Some(
            configuration
                .members()
                .filter(|(_, m)| m.role.replicates())
                .map(|(id, _)| id.0)
                .collect(),
        )
    }

    /// Nodes not in the configuration committed on the leader (removed for good). A leader
    /// that has committed no configuration yet (restarted, its commit index still below the
    /// first entry) knows of none removed: raft's history starts with an empty configuration
    /// at index 0, a placeholder, in which every node would look removed (seed 86,071 retired
    /// a voter that way).
    fn removed(&self) -> Vec<u64> {
        let Some(leader) = self
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.raft.role() == StateRole::Leader)
            .max_by_key(|n| n.raft.term())
        else {
            return Vec::new();
        };
        let commit = leader.raft.commit_index();
        let Some(committed) = leader
            .raft
            .configurations()
            .filter(|(index, _)| index.0 > 0 && *index <= commit)
            .map(|(_, c)| c)
            .last()
        else {
            return Vec::new();
        };
        (0..self.nodes.len())
            .map(Cluster::id)
            .filter(|&id| !self.retired[id as usize - 1] && committed.get(NodeId(id)).is_none())
            .collect()
    }

    /// Drops the node without its shutdown: no handover, no final checkpoint. With
    /// `power_loss`, its disk loses what was not synced (or keeps a prefix of it, torn).
    fn crash(&mut self, index: usize, power_loss: Option<PowerLoss>) {
        self.fabric.crash(Cluster::id(index));
        let node = self.nodes[index].take();
        if let Some(node) = &node {
            let state = node.state();
            log::debug!(
                "sim: node {} crashes (power loss: {}): log {}..={}, commit {}, applied {}",
                state.id,
                power_loss.is_some(),
                state.log_first,
                state.log_last,
                state.commit,
                state.applied
            );
            self.note_stopping(node);
            self.held[index] = Some(Held::of(node, self.configurations.commit_seen()));
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
        self.apply_yields += state.apply_yields;
        self.chain_longest = self.chain_longest.max(state.chain_longest);
        self.abandoned += state.commands_abandoned;
    }

    fn up(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(Cluster::id)
            .collect()
    }

    /// Turns every running node that is not busy with its disk and has an input due, a sync
    /// ended, output held back or work of its own (as production's loop, whose poll returns
    /// only then); a node with none of these would do nothing. Returns the nodes an injected
    /// I/O error stopped (they are down now; the caller restarts them); any other failure is
    /// a violation.
    fn turn(&mut self, now: u64) -> Result<Vec<usize>, String> {
        let mut stopped = Vec::new();
        let clock_now = self.clock.now();
        for index in 0..self.nodes.len() {
            let id = Cluster::id(index);
            if self.busy_until[index] > now {
                continue;
            }
            let Some(node) = self.nodes[index].as_mut() else {
                continue;
            };
            // A node whose disk time just passed sends what it held back.
            let held_back = std::mem::take(&mut self.busy_until[index]) > 0;
            let synced = node.sync_due().is_some_and(|due| due <= clock_now);
            let woken = std::mem::take(&mut self.wake[index]);
            if !woken && !held_back && !synced && !node.busy() && !self.fabric.due(id) {
                continue;
            }
            let turned = node.turn(Some(Duration::ZERO));
            self.turns += 1;
            let latency = self.disks[index].take_latency().as_nanos() as u64;
            match turned {
                Ok(_) => {}
                Err(_) if self.eio_fired(index) => {
                    self.disarm(index);
                    stopped.push(index);
                    continue;
                }
                Err(e) => return Err(format!("node {id} failed: {e}")),
            }
            if latency > 0 {
                // The turn took that long: what it sent leaves at its next poll, then.
                self.busy_until[index] = now + latency;
            } else {
                self.fabric.flush(id);
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

    /// Whether a node not held up by its disk has work of its own left for its next turn.
    fn busy(&self, now: u64) -> bool {
        (0..self.nodes.len())
            .any(|i| self.busy_until[i] <= now && self.nodes[i].as_ref().is_some_and(Node::busy))
    }

    /// One node leads, and every voter and standby of its configuration is up and applied the
    /// highest commit index any node knows.
    fn converged(&self) -> bool {
        let Some(replicas) = self.replicas() else {
            return false;
        };
        let commit = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.raft.commit_index())
            .max();
        replicas.iter().all(|&id| {
            let node = self.nodes.get(id as usize - 1).and_then(Option::as_ref);
            node.is_some_and(|n| Some(n.raft.applied()) == commit)
        })
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
    /// Per node, the stale commands it rejected so far.
    stale: BTreeMap<u64, u64>,
    /// Indexes where old commands were proposed again (`replay`): rejected as stale by every
    /// replica.
    replays: BTreeSet<u64>,
    /// Database image hashes by applied index: (hash, the node that hashed it first).
    images: BTreeMap<u64, (u64, u64)>,
    /// Per node: the applied index last hashed, and when the next hash may be taken.
    imaged: BTreeMap<u64, (u64, u64)>,
    /// Crashed nodes and when they restart (nanoseconds).
    restarts: BTreeMap<usize, u64>,
    /// Full disks and when their space comes back (nanoseconds).
    space_back: BTreeMap<usize, u64>,
    fault_next_at: u64,
    /// The most nodes the seed may have (the bootstrapped ones and `JOINS_MAX` joiners).
    nodes_max: usize,
    /// The voters and standbys of the final configuration (the replicas checked).
    final_replicas: Vec<u64>,
}

impl Run {
    fn now(&self) -> u64 {
        self.cluster.clock.elapsed().as_nanos() as u64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.random.next_u64() % n.max(1)
    }

    /// One step: nodes turn, observations are checked, clients act, time moves to the next
    /// thing due (a delivery, a timer, a client, a fault, a restart; at least `STEP_MIN` and at
    /// most `STEP_MAX` on).
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
        self.report.steps += 1;
        self.observe()?;
        let up = self.cluster.up();
        let mut next = now + STEP_MAX.as_nanos() as u64;
        if let Some(free) = self.cluster.next_free(now) {
            next = next.min(free);
        }
        if self.cluster.busy(now) {
            next = now;
        }
        let faults = self
            .restarts
            .values()
            .chain(self.space_back.values())
            .chain([&self.fault_next_at]);
        if let Some(&due) = faults.filter(|&&at| at > now).min() {
            next = next.min(due);
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
        // Deliveries and syncs already due wait for a node held up by its disk (the others
        // took theirs this step): `next_free` covers them.
        let clock_now = self.cluster.clock.now();
        if let Some(due) = self
            .cluster
            .fabric
            .next_due()
            .into_iter()
            .chain(syncs_due)
            .filter(|&due| due > clock_now)
            .min()
        {
            let due = due
                .saturating_duration_since(self.cluster.clock.now())
                .as_nanos() as u64;
            next = next.min(now + due);
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
            let stale_seen = self.stale.insert(state.id.0, state.commands_stale);
            let replayed = state
                .stale_last
                .is_some_and(|i| self.replays.contains(&i.0));
            if state.commands_stale > stale_seen.unwrap_or(0) && !replayed {
                return Err(format!(
                    "stale command: node {} rejected the command at {:?}, computed against \
                     another state than the one it follows in the log",
                    state.id, state.stale_last
                ));
            }
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
        let mut checker = std::mem::take(&mut self.cluster.configurations);
        let cluster = &self.cluster;
        let outcome = checker.observe(cluster.nodes.iter().flatten(), |id| cluster.seen(id));
        self.cluster.configurations = checker;
        outcome?;
        self.hash_images()
    }

    /// Hashes the database image of every node whose applied index moved to one another node
    /// hashed, or (at most every `IMAGE_INTERVAL`) to another, and checks it against the hash
    /// any node had at that index.
    fn hash_images(&mut self) -> Result<(), String> {
        let now = self.now();
        for node in self.cluster.nodes.iter_mut().flatten() {
            let id = node.id();
            let applied = node.engine.applied_index();
            let (last, next_at) = self.imaged.get(&id).copied().unwrap_or((0, 0));
            let comparable = self.images.get(&applied).is_some_and(|&(_, by)| by != id);
            if applied == last || (now < next_at && !comparable) {
                continue;
            }
            self.imaged
                .insert(id, (applied, now + IMAGE_INTERVAL.as_nanos() as u64));
            let Some(hash) = image_hash(&mut node.engine)
                .map_err(|e| format!("node {id}: hashing its database at {applied}: {e}"))?
            else {
                continue; // No database yet, or none as of this index.
            };
            self.report.images_hashed += 1;
            let (known, by) = *self.images.entry(applied).or_insert((hash, id));
            self.report.images_compared += u64::from(by != id);
            if known != hash {
                return Err(format!(
                    "replicas differ: node {id}'s database at applied index {applied} is not \
                     node {by}'s at that index"
                ));
            }
        }
        Ok(())
    }

    /// A fault, drawn: links cut (one way, a node isolated, a split), healed, a crash, a
    /// restart, a leadership transfer, new link faults, or a membership change (a fresh node
    /// joins, an operator removes a node or assigns it a role, a removed node is retired).
    fn fault(&mut self) -> Result<(), String> {
        let n = self.cluster.nodes.len() as u64;
        let now = self.now();
        match self.below(140) {
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
            96..=111 => {
                let faults = self.draw_faults();
                self.cluster.fabric.set_faults(faults);
            }
            112..=116 => {
                if self.cluster.nodes.len() < self.nodes_max {
                    // The join addresses: the nodes not retired, from a drawn one on.
                    let known: Vec<String> = (0..self.cluster.nodes.len())
                        .filter(|&i| !self.cluster.retired[i])
                        .map(|i| self.cluster.addresses[i].clone())
                        .collect();
                    let from = self.below(known.len() as u64) as usize;
                    let join = known[from..]
                        .iter()
                        .chain(&known[..from])
                        .cloned()
                        .collect();
                    self.cluster.join(join)?;
                    self.report.joins += 1;
                }
            }
            117..=129 => {
                // One change, or two racing.
                for _ in 0..1 + self.below(2) {
                    let id = 1 + self.below(n);
                    let request = match self.below(3) {
                        0 => Request::Remove { id },
                        _ => {
                            let roles = [Role::Voter, Role::Standby, Role::Spare];
                            let role = roles[self.below(3) as usize];
                            Request::Assign {
                                id,
                                role: Some(role),
                            }
                        }
                    };
                    self.shared.membership_wanted.push_back(request);
                }
            }
            130..=133 => self.replay()?,
            _ => {
                let removed = self.cluster.removed();
                if !removed.is_empty() {
                    let id = removed[self.below(removed.len() as u64) as usize];
                    let index = id as usize - 1;
                    self.cluster.crash(index, None);
                    self.cluster.retired[index] = true;
                    self.cluster.held[index] = None;
                    self.restarts.remove(&index);
                    self.report.retired += 1;
                }
            }
        }
        Ok(())
    }

    /// Proposes again, on a ready leader, an old command of its log: a duplicate proposal (a
    /// retried COMMIT's frames, a host proposing twice) computed against a state long gone.
    /// Every replica must reject it as stale (its index is expected stale) and nothing else
    /// may change: applied, it would put old pages back over later writes.
    fn replay(&mut self) -> Result<(), String> {
        let leader = self.cluster.nodes.iter().position(|n| {
            n.as_ref()
                .is_some_and(|n| n.raft.role() == StateRole::Leader && n.leader_ready())
        });
        let Some(index) = leader else {
            return Ok(());
        };
        let node = self.cluster.nodes[index].as_ref().expect("found up");
        let (first, applied) = (node.raft.log().first_index().0, node.raft.applied().0);
        if applied < first {
            return Ok(());
        }
        let old = LogIndex(first + self.below(applied - first + 1));
        let node = self.cluster.nodes[index].as_mut().expect("found up");
        let mut entries = Vec::new();
        node.raft
            .log()
            .entries(old, old.next(), u64::MAX, &mut entries)
            .map_err(|e| format!("reading entry {old}: {e}"))?;
        let Some(entry) = entries.pop() else {
            return Ok(());
        };
        if entry.kind != EntryKind::Command
            || atoll_core::command::Command::decode(&entry.payload).is_err()
        {
            return Ok(());
        }
        let payload = Payload::from_vec(entry.payload.to_vec());
        if let Ok(at) = node.raft.propose_batch(vec![payload]) {
            self.replays.insert(at.0);
            self.cluster.wake[index] = true;
            self.report.replays += 1;
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
            // Clients as far as the peers, or near while the peers are far.
            client_delay_min: Duration::from_micros(50),
            client_delay_max: match self.below(2) {
                0 => Duration::from_micros(delay_max_us),
                _ => Duration::from_micros(500),
            },
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
        self.final_replicas = self.cluster.replicas().unwrap_or_default();
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
        // The final configuration's voters and standbys (spares and removed nodes hold no
        // current copy).
        let replicas: Vec<(u64, PathBuf)> = self
            .final_replicas
            .iter()
            .map(|&id| (id, self.cluster.dirs[id as usize - 1].clone()))
            .collect();
        // Each database as its disk holds it.
        let images: Vec<(u64, Vec<u8>)> = replicas
            .iter()
            .map(|(id, dir)| {
                let path = config::db_dir(dir).join(DATABASE);
                let disk = self.cluster.disks[*id as usize - 1].shared();
                (*id, disk.read(&path, u64::MAX).unwrap_or_default())
            })
            .collect();
        for (id, image) in images.iter().skip(1) {
            if *image != images[0].1 {
                self.report.violations.push(format!(
                    "replicas differ: node {id}'s database ({} bytes) is not node {}'s ({} bytes)",
                    image.len(),
                    images[0].0,
                    images[0].1.len()
                ));
            }
        }
        for (position, (id, dir)) in replicas.iter().enumerate() {
            let index = *id as usize - 1;
            // The database, as its disk holds it, copied to a real file for rusqlite to read.
            let copy = dir.with_extension("check.db");
            let copied = std::fs::write(&copy, &images[position].1);
            let wal = config::db_dir(dir).join(format!("{DATABASE}-wal"));
            let wal_bytes = self.cluster.disks[index]
                .shared()
                .metadata(&wal)
                .map_or(0, |m| m.len);
            if wal_bytes > 0 {
                self.report.violations.push(format!(
                    "node {id}: {wal_bytes} bytes left in the WAL after a clean stop"
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

/// A hash of the image of the simulator's database as of the engine's applied index (its page
/// count and the CRC-32 of its pages), `None` if there is no such database yet or no image of
/// that index (`EngineError::NotSettled`).
fn image_hash(engine: &mut atoll_core::Engine) -> Result<Option<u64>, String> {
    if !engine.database_names().iter().any(|name| name == DATABASE) {
        return Ok(None);
    }
    let mut image = match engine.database_image(DATABASE) {
        Ok(Some(image)) => image,
        // A restarted node whose files are ahead of its applied index (a checkpoint copied later
        // commands' pages before the crash) has no image of that index to compare until replay
        // passes them.
        Ok(None) | Err(atoll_core::EngineError::NotSettled { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let pages = u64::from(image.page_count());
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = std::io::Read::read(&mut image, &mut buffer).map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        crc.update(&buffer[..read]);
    }
    Ok(Some(pages << 32 | u64::from(crc.finalize())))
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
    let voters = config.nodes.max(1);
    // A standby or a spare in the bootstrap configuration, drawn.
    let extra_role = [None, Some(MemberRole::Standby), Some(MemberRole::Spare)]
        [(random.next_u64() % 3) as usize];
    let n = voters + usize::from(extra_role.is_some());
    let dirs: Vec<PathBuf> = (1..=n).map(|i| dir.path().join(format!("n{i}"))).collect();
    let addresses: Vec<String> = (1..=n as u64).map(address).collect();
    let mut configuration = Configuration::new();
    for (i, address) in addresses.iter().enumerate() {
        let role = if i < voters {
            MemberRole::Voter
        } else {
            extra_role.unwrap_or(MemberRole::Voter)
        };
        configuration.insert(NodeId(i as u64 + 1), address.clone(), role);
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
    let mut template = NodeConfig::new(1, address(1));
    template.cluster_id = mix(seed, 3);
    template.snapshot_entries = [8, 32, 256][(random.next_u64() % 3) as usize];
    // Automatic roles in three seeds of four, replacing a voter unreachable for 1 or 3 s.
    template.auto_roles = !random.next_u64().is_multiple_of(4);
    template.unreachable_ms = [1_000, 3_000][(random.next_u64() % 2) as usize];
    template.standbys = (random.next_u64() % 3) as u32;
    let log_segment_bytes = LOG_SEGMENT_BYTES[(random.next_u64() % 3) as usize];
    for (i, dir) in dirs.iter().enumerate() {
        let mut node_config = template.clone();
        node_config.id = i as u64 + 1;
        node_config.address = addresses[i].clone();
        if let Err(e) = crate::init_member(
            disks[i].shared(),
            dir,
            &node_config,
            &secret,
            &configuration,
            Some(log_segment_bytes),
        ) {
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
        apply_yields: 0,
        chain_longest: 0,
        abandoned: 0,
        log_segment_bytes,
        wake: vec![false; n],
        turns: 0,
        retired: vec![false; n],
        held: vec![None; n],
        configurations: ConfigurationChecker::default(),
        root: dir.path().to_path_buf(),
        secret,
        template,
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
        stale: BTreeMap::new(),
        replays: BTreeSet::new(),
        images: BTreeMap::new(),
        imaged: BTreeMap::new(),
        restarts: BTreeMap::new(),
        space_back: BTreeMap::new(),
        fault_next_at: 0,
        nodes_max: n + JOINS_MAX,
        final_replicas: Vec::new(),
    };
    let mut outcome = (0..n).try_for_each(|i| run.cluster.open(i).map(|_| ()));
    if outcome.is_ok() {
        outcome = run.run();
    }
    if let Err(e) = outcome {
        run.report.violations.push(e);
    }
    let n = run.cluster.nodes.len();
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
    run.report.membership_asked = run.shared.membership_asked;
    run.report.membership_done = run.shared.membership_done;
    run.report.snapshots_installed = run.cluster.snapshots_installed;
    run.report.compacted = run.cluster.compacted;
    run.report.chained = run.cluster.chained;
    run.report.apply_yields = run.cluster.apply_yields;
    run.report.chain_longest = run.cluster.chain_longest;
    run.report.abandoned = run.cluster.abandoned;
    for disk in &run.cluster.disks {
        let stats = disk.stats();
        run.report.torn_writes += stats.writes_torn;
        run.report.enospc += stats.enospc;
    }
    run.report.simulated = run.cluster.clock.elapsed();
    run.report.turns = run.cluster.turns;
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

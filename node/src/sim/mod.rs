//! The whole-stack deterministic simulator: N full nodes (Raft, segment log, engine on real
//! SQLite, real files in a temporary directory) in one thread on simulated time, over the
//! simulated network (`sim_network.rs`), with clients issuing SQL, network faults, crashes and
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
//!   included); at the end, the database files after the final checkpoint;
//! - liveness: after healing, a write is acknowledged and every voter and standby applies the
//!   leader's commit index within `LIVENESS_TIMEOUT`;
//! - configuration safety (`membership.rs`): at most one configuration change pending; a
//!   removed node, a standby or a spare never counted in a commit or an election.
//!
//! A crash drops the `Node` without its shutdown handover and reopens it from its directory:
//! a process crash (the page cache survives), or, half the time, a power cut of the log: the
//! segment log's bytes written since its last sync are zeroed before the restart. A simulated
//! disk (latency, power loss of every file, torn writes, ENOSPC, EIO) would sit under the
//! segment log and the engine's VFS; it is not there yet.

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

/// The nodes, their directories and their network.
struct Cluster {
    clock: ManualClock,
    fabric: Fabric,
    dirs: Vec<PathBuf>,
    addresses: Vec<String>,
    nodes: Vec<Option<Node>>,
    incarnations: Vec<u64>,
    seed: u64,
    /// Entries raft keeps behind a snapshot (few: compaction and snapshot installs happen).
    snapshot_trailing_entries: u64,
    snapshots_installed: u64,
    compacted: u64,
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

    fn open(&mut self, index: usize) -> Result<(), String> {
        let id = Cluster::id(index);
        self.incarnations[index] += 1;
        let network = self.fabric.endpoint(id, &self.addresses[index]);
        let seed = mix(self.seed, 1000 * id + self.incarnations[index]);
        let inputs = Inputs::simulated(Box::new(self.clock.clone()), seed, Some(network));
        let shutdown = Arc::new(AtomicBool::new(false));
        let options = StartOptions {
            snapshot_trailing_entries: Some(self.snapshot_trailing_entries),
            log_segment_bytes: Some(self.log_segment_bytes),
            ..StartOptions::default()
        };
        let node = Node::open_with(&self.dirs[index], shutdown, options, inputs)
            .map_err(|e| format!("node {id} did not open: {e}"))?;
        self.nodes[index] = Some(node);
        self.wake[index] = true;
        self.held[index] = None;
        Ok(())
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
        crate::prepare_join(&dir, &config, &self.secret)
            .map_err(|e| format!("preparing node {id} to join: {e}"))?;
        self.dirs.push(dir);
        self.addresses.push(address);
        self.nodes.push(None);
        self.incarnations.push(0);
        self.wake.push(false);
        self.retired.push(false);
        self.held.push(None);
        self.open(index)
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

    /// Nodes not in the configuration committed on the leader (removed for good).
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
            .filter(|(index, _)| *index <= commit)
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
    /// `power_loss`, the log's bytes not synced yet are lost too (zeroed), as a power cut may
    /// lose them; the other files keep what was written (a legal outcome of a power cut too).
    fn crash(&mut self, index: usize, power_loss: bool) -> Result<(), String> {
        self.fabric.crash(Cluster::id(index));
        let node = self.nodes[index].take();
        if let Some(node) = &node {
            self.note_stopping(node);
            self.held[index] = Some(Held::of(node, self.configurations.commit_seen()));
        }
        let unsynced = node.as_ref().and_then(|n| n.raft.log().unsynced_bytes());
        drop(node);
        if let (true, Some((path, offset, length))) = (power_loss, unsynced) {
            let zero = || -> std::io::Result<()> {
                let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                std::os::unix::fs::FileExt::write_all_at(&file, &vec![0; length as usize], offset)
            };
            zero().map_err(|e| format!("cutting the power of {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn note_stopping(&mut self, node: &Node) {
        let state = node.state();
        self.snapshots_installed += state.snapshots_installed;
        self.compacted += u64::from(state.log_first.0 > 1);
    }

    fn up(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(Cluster::id)
            .collect()
    }

    /// Turns every node that has an input due or work of its own (as production's loop, whose
    /// poll returns only then); a node with neither would do nothing.
    fn turn(&mut self) -> Result<(), String> {
        for index in 0..self.nodes.len() {
            let id = Cluster::id(index);
            if let Some(node) = self.nodes[index].as_mut() {
                if !std::mem::take(&mut self.wake[index]) && !node.busy() && !self.fabric.due(id)
                {
                    continue;
                }
                node.turn(Some(Duration::ZERO))
                    .map_err(|e| format!("node {id} failed: {e}"))?;
                self.fabric.flush(id);
                self.turns += 1;
            }
        }
        Ok(())
    }

    /// Whether a node has work of its own left for its next turn.
    fn busy(&self) -> bool {
        self.nodes.iter().flatten().any(Node::busy)
    }

    /// One node leads, and every voter and standby of its configuration is up and applied the
    /// highest commit index any node knows.
    fn converged(&self) -> bool {
        let Some(replicas) = self.replicas() else {
            return false;
        };
        let commit = self.nodes.iter().flatten().map(|n| n.raft.commit_index()).max();
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
        self.cluster.turn()?;
        self.report.steps += 1;
        self.observe()?;
        let up = self.cluster.up();
        let now = self.now();
        let mut next = now + STEP_MAX.as_nanos() as u64;
        if self.cluster.busy() {
            next = now;
        }
        let faults = self.restarts.values().chain([&self.fault_next_at]);
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
        if let Some(due) = self.cluster.fabric.next_due() {
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
            let replayed = state.stale_last.is_some_and(|i| self.replays.contains(&i.0));
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
                continue; // No database yet.
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
        match self.below(128) {
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
                    let power_loss = self.below(2) == 0;
                    self.cluster.crash(index, power_loss)?;
                    self.report.crashes += 1;
                    let after = 50_000_000 + self.below(2_000_000_000);
                    self.restarts.insert(index, now + after);
                }
            }
            77..=88 => {
                let target = 1 + self.below(n);
                self.shared.transfer_wanted = Some(target);
            }
            89..=99 => {
                let faults = self.draw_faults();
                self.cluster.fabric.set_faults(faults);
            }
            100..=104 => {
                if self.cluster.nodes.len() < self.nodes_max {
                    // The join addresses: the nodes not retired, from a drawn one on.
                    let known: Vec<String> = (0..self.cluster.nodes.len())
                        .filter(|&i| !self.cluster.retired[i])
                        .map(|i| self.cluster.addresses[i].clone())
                        .collect();
                    let from = self.below(known.len() as u64) as usize;
                    let join = known[from..].iter().chain(&known[..from]).cloned().collect();
                    self.cluster.join(join)?;
                    self.report.joins += 1;
                }
            }
            105..=117 => {
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
            118..=121 => self.replay()?,
            _ => {
                let removed = self.cluster.removed();
                if !removed.is_empty() {
                    let id = removed[self.below(removed.len() as u64) as usize];
                    let index = id as usize - 1;
                    self.cluster.crash(index, false)?;
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
        if entry.kind != EntryKind::Command || atoll_core::command::Command::decode(&entry.payload).is_err() {
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
            self.cluster.open(index)?;
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
            self.step()?;
        }
        // Heal: the cluster must acknowledge a write and converge.
        self.cluster.fabric.heal();
        self.cluster.fabric.set_faults(LinkFaults::default());
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
        let images: Vec<(u64, Vec<u8>)> = replicas
            .iter()
            .map(|(id, dir)| {
                let path = config::db_dir(dir).join(DATABASE);
                (*id, std::fs::read(path).unwrap_or_default())
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
        for (id, dir) in &replicas {
            let index = *id as usize - 1;
            match read_writes(&config::db_dir(dir).join(DATABASE)) {
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
/// count and the CRC-32 of its pages), `None` if there is no such database yet.
fn image_hash(engine: &mut atoll_core::Engine) -> Result<Option<u64>, String> {
    if !engine.database_names().iter().any(|name| name == DATABASE) {
        return Ok(None);
    }
    let Some(mut image) = engine
        .database_image(DATABASE)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
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
    let mut template = NodeConfig::new(1, address(1));
    template.cluster_id = mix(seed, 3);
    template.snapshot_entries = [8, 32, 256][(random.next_u64() % 3) as usize];
    // Automatic roles in three seeds of four, replacing a voter unreachable for 1 or 3 s.
    template.auto_roles = random.next_u64() % 4 != 0;
    template.unreachable_ms = [1_000, 3_000][(random.next_u64() % 2) as usize];
    template.standbys = (random.next_u64() % 3) as u32;
    let log_segment_bytes = LOG_SEGMENT_BYTES[(random.next_u64() % 3) as usize];
    for (i, dir) in dirs.iter().enumerate() {
        let mut node_config = template.clone();
        node_config.id = i as u64 + 1;
        node_config.address = addresses[i].clone();
        if let Err(e) = crate::init_member(
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
        incarnations: vec![0; n],
        seed,
        snapshot_trailing_entries: [0, 4, 64][(random.next_u64() % 3) as usize],
        snapshots_installed: 0,
        compacted: 0,
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
    let clients_count = 2 + (random.next_u64() % 3) as usize;
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
        fault_next_at: 0,
        nodes_max: n + JOINS_MAX,
        final_replicas: Vec::new(),
    };
    let mut outcome = (0..n).try_for_each(|i| run.cluster.open(i));
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

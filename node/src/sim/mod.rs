//! The whole-stack deterministic simulator: N full nodes (Raft, segment log, engine on real
//! SQLite, real files in a temporary directory) in one thread on simulated time, over the
//! simulated network (`sim_network.rs`), with clients issuing SQL, network faults, crashes and
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
//! a process crash (the page cache survives), or, half the time, a power cut of the log: the
//! segment log's bytes written since its last sync are zeroed before the restart. A simulated
//! disk (latency, power loss of every file, torn writes, ENOSPC, EIO) would sit under the
//! segment log and the engine's VFS; it is not there yet.

pub mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use atoll_net::peer::ClusterSecret;
use atoll_raft::sim::linearizability::check_register;
use atoll_raft::{Configuration, MemberRole, NodeId, StateRole};

use crate::config::{self, NodeConfig};
use crate::inputs::{Clock, Inputs, ManualClock, Random, SeededRandom};
use crate::sim_network::{Fabric, LinkFaults};
use crate::{Node, StartOptions};
use client::{Context, Shared, SimClient, DATABASE};

/// Time after healing within which the cluster must acknowledge a write and converge.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest simulated step (a bound only: the nodes' tick timers are due more often).
const STEP_MAX: Duration = Duration::from_millis(10);
/// The shortest simulated step (deliveries due within it are taken together, in order): about
/// what a turn of a real node takes.
const STEP_MIN: Duration = Duration::from_micros(10);
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
        Ok(())
    }

    /// Drops the node without its shutdown: no handover, no final checkpoint. With
    /// `power_loss`, the log's bytes not synced yet are lost too (zeroed), as a power cut may
    /// lose them; the other files keep what was written (a legal outcome of a power cut too).
    fn crash(&mut self, index: usize, power_loss: bool) -> Result<(), String> {
        self.fabric.crash(Cluster::id(index));
        let node = self.nodes[index].take();
        if let Some(node) = &node {
            self.note_stopping(node);
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
            _ => {
                let faults = self.draw_faults();
                self.cluster.fabric.set_faults(faults);
            }
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
        let images: Vec<Vec<u8>> = self
            .cluster
            .dirs
            .iter()
            .map(|dir| std::fs::read(config::db_dir(dir).join(DATABASE)).unwrap_or_default())
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
    let snapshot_entries = [8, 32, 256][(random.next_u64() % 3) as usize];
    let log_segment_bytes = LOG_SEGMENT_BYTES[(random.next_u64() % 3) as usize];
    for (i, dir) in dirs.iter().enumerate() {
        let mut node_config = NodeConfig::new(i as u64 + 1, addresses[i].clone());
        node_config.cluster_id = mix(seed, 3);
        node_config.snapshot_entries = snapshot_entries;
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
        restarts: BTreeMap::new(),
        fault_next_at: 0,
    };
    let mut outcome = (0..n).try_for_each(|i| run.cluster.open(i));
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

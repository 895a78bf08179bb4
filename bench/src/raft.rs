//! The `raft` suite: proposals pushed through an in-memory three-node cluster (no I/O, no
//! codec: messages move between nodes as values, logs are `MemLog`s synced at once), to
//! measure the consensus core alone: committed entries per second, and heap allocations per
//! committed entry (counted by the bench binary's counting allocator).
//!
//! Proposals arrive in batches of `BATCH_ENTRIES` (group commit), each batch's payloads being
//! windows of one buffer, as the node's write path builds them.

use std::sync::Arc;
use std::time::Instant;

use atoll_bench::{median, Options};
use atoll_raft::{
    bootstrap_entry, persist_ready, Config, Configuration, MemberRole, Message, NodeId, Payload,
    RawNode, StateRole,
};
use atoll_storage::{LogStore, MemLog};

/// Entries proposed at once.
const BATCH_ENTRIES: usize = 64;
/// Bytes per entry (a small SQLite transaction's frames would be larger; the cost measured
/// here is per entry, not per byte).
const ENTRY_BYTES: usize = 128;
/// Entries between snapshots (keeps the in-memory logs bounded).
const SNAPSHOT_INTERVAL: u64 = 8192;

/// Allocation counts, read from the bench binary's global allocator.
pub type AllocationCounter = fn() -> u64;

struct Cluster {
    nodes: Vec<RawNode<MemLog>>,
    in_flight: Vec<Message>,
    committed: u64,
}

impl Cluster {
    fn new() -> Result<Cluster, String> {
        let mut configuration = Configuration::new();
        for id in 1..=3 {
            configuration.insert(
                NodeId(id),
                format!("127.0.0.1:{}", 9000 + id),
                MemberRole::Voter,
            );
        }
        let bootstrap = bootstrap_entry(&configuration);
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let mut log = MemLog::new();
            log.append(std::slice::from_ref(&bootstrap))
                .map_err(|e| e.to_string())?;
            log.sync().map_err(|e| e.to_string())?;
            let mut config = Config::new(NodeId(id));
            config.append_entries_max = 256;
            config.snapshot_trailing_entries = 1024;
            let hard_state = log.hard_state();
            let node = RawNode::new(config, log, hard_state, None, atoll_raft::LogIndex(0))
                .map_err(|e| e.to_string())?;
            nodes.push(node);
        }
        let mut cluster = Cluster {
            nodes,
            in_flight: Vec::new(),
            committed: 0,
        };
        cluster.nodes[0].campaign().map_err(|e| e.to_string())?;
        cluster.pump()?;
        if cluster.nodes[0].role() != StateRole::Leader {
            return Err("node 1 did not win the election".to_string());
        }
        Ok(cluster)
    }

    /// Handles every ready and delivers every message until the cluster is quiet.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let mut busy = false;
            for position in 0..self.nodes.len() {
                while self.nodes[position].has_ready() {
                    busy = true;
                    let node = &mut self.nodes[position];
                    let ready = node.ready();
                    persist_ready(node.log_mut(), &ready).map_err(|e| e.to_string())?;
                    node.log_mut().sync().map_err(|e| e.to_string())?;
                    node.advance(&ready);
                    if position == 0 {
                        self.committed += ready.committed_entries.len() as u64;
                    }
                    let applied = node.applied();
                    if applied.0 % SNAPSHOT_INTERVAL < ready.committed_entries.len() as u64 {
                        node.snapshot_taken(applied, 0).map_err(|e| e.to_string())?;
                    }
                    self.in_flight.extend(ready.messages);
                    self.in_flight.extend(ready.persisted_messages);
                }
            }
            for message in self.in_flight.drain(..) {
                busy = true;
                let to = (message.to.0 - 1) as usize;
                self.nodes[to].step(message).map_err(|e| e.to_string())?;
            }
            if !busy {
                return Ok(());
            }
        }
    }

    /// Proposes `batches` batches and waits for each to commit.
    fn run(&mut self, batches: usize) -> Result<(), String> {
        for _ in 0..batches {
            let buffer = Arc::new(vec![0x5a; BATCH_ENTRIES * ENTRY_BYTES]);
            let payloads: Vec<Payload> = (0..BATCH_ENTRIES)
                .map(|n| {
                    Payload::from_shared(
                        Arc::clone(&buffer),
                        n * ENTRY_BYTES..(n + 1) * ENTRY_BYTES,
                    )
                })
                .collect();
            self.nodes[0]
                .propose_batch(payloads)
                .map_err(|e| e.to_string())?;
            self.pump()?;
        }
        Ok(())
    }
}

/// Runs the suite; `allocations` reads the process-wide allocation count.
pub fn run(options: &Options, allocations: AllocationCounter) -> Result<(), String> {
    let (rounds, batches) = if options.quick { (3, 50) } else { (7, 2000) };
    let mut rates = Vec::new();
    let mut per_entry = Vec::new();
    for _ in 0..rounds {
        let mut cluster = Cluster::new()?;
        let committed_before = cluster.committed;
        let allocations_before = allocations();
        let started = Instant::now();
        cluster.run(batches)?;
        let elapsed = started.elapsed().as_secs_f64();
        let committed = cluster.committed - committed_before;
        if committed < (batches * BATCH_ENTRIES) as u64 {
            return Err(format!("only {committed} entries committed"));
        }
        rates.push(committed as f64 / elapsed);
        per_entry.push((allocations() - allocations_before) as f64 / committed as f64);
    }
    println!(
        "raft: {:.0} committed entries/s, {:.2} allocations per committed entry",
        median(&rates),
        median(&per_entry)
    );
    Ok(())
}

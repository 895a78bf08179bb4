//! A hand-driven cluster for scenario, paper and data-driven tests: nothing happens unless the
//! test says so (no random delays), persistence is synchronous unless a node's disk is
//! stalled, and every ready and delivery can be printed as a transcript.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use atoll_storage::{LogStore, MemLog};

use crate::membership::{Configuration, MemberRole};
use crate::message::{Message, MessageKind, SnapshotMeta};
use crate::ready::{persist_ready, ReadState, Ready};
use crate::sim::kv::{Kv, Put};
use crate::{bootstrap_entry, Config, Entry, EntryKind, LogIndex, NodeId, Payload, RawNode, Term};

/// One node of a [`Network`] and what its host keeps.
pub struct NetworkNode {
    /// The node while up.
    pub node: Option<RawNode<MemLog>>,
    log_down: Option<MemLog>,
    /// Applied entries, in order.
    pub applied: Vec<Entry>,
    /// Reads answered.
    pub read_states: Vec<ReadState>,
    /// The register machine (commands that decode as puts).
    pub kv: Kv,
    snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
    /// Older snapshots still streamed to followers.
    streamed: BTreeMap<LogIndex, Arc<Vec<u8>>>,
    incoming: Vec<u8>,
    /// Disk stalled: readies are persisted to the log but not synced and not acknowledged
    /// until [`Network::release_disk`].
    pub disk_stalled: bool,
    /// Disk full for snapshots: received chunks cannot be stored; the host reports
    /// [`RawNode::snapshot_store_failed`] and sends none of that ready's acknowledgements.
    pub snapshot_store_full: bool,
    /// After a failed store the host drops snapshot chunks unread until the next
    /// [`Network::stabilize`] (a back-off, as the node's: else leader and follower would
    /// restart the stream at each other forever).
    snapshot_refusing: bool,
    held: Vec<HeldWrite>,
}

/// A ready persisted but not synced: its persist point and the acknowledgements it holds.
type HeldWrite = (Option<(LogIndex, Term)>, Vec<Message>);

/// Nodes, a message queue and the links cut between them.
pub struct Network {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, NetworkNode>,
    /// Messages sent and not yet delivered, in send order.
    pub pending: Vec<Message>,
    /// Directed links that drop messages.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    configure: fn(&mut Config),
}

fn default_configure(_: &mut Config) {}

impl Network {
    /// Voters `ids`, bootstrapped with the same configuration, default tunables.
    pub fn new(ids: &[u64]) -> Network {
        Network::with_config(ids, default_configure)
    }

    /// Like [`Network::new`], with `configure` applied to every node's tunables.
    pub fn with_config(ids: &[u64], configure: fn(&mut Config)) -> Network {
        let mut network = Network {
            nodes: BTreeMap::new(),
            pending: Vec::new(),
            cut: BTreeSet::new(),
            configure,
        };
        let mut configuration = Configuration::new();
        for id in ids {
            configuration.insert(NodeId(*id), format!("n{id}"), MemberRole::Voter);
        }
        let bootstrap = bootstrap_entry(&configuration);
        for id in ids {
            let mut log = MemLog::new();
            log.append(std::slice::from_ref(&bootstrap))
                .expect("memory");
            log.sync().expect("memory");
            network.add_node(NodeId(*id), log);
        }
        network
    }

    /// Adds a node over `log` (an empty log for a node joining later) and starts it.
    pub fn add_node(&mut self, id: NodeId, log: MemLog) {
        self.nodes.insert(
            id,
            NetworkNode {
                node: None,
                log_down: Some(log),
                applied: Vec::new(),
                read_states: Vec::new(),
                kv: Kv::default(),
                snapshot: None,
                streamed: BTreeMap::new(),
                incoming: Vec::new(),
                disk_stalled: false,
                snapshot_store_full: false,
                snapshot_refusing: false,
                held: Vec::new(),
            },
        );
        self.restart(id);
    }

    /// The tunables node `id` runs with: a heartbeat every tick, an election timeout drawn
    /// from 10..20 ticks by a generator seeded with the id, so every run draws the same.
    pub fn config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.heartbeat_ticks = 1;
        config.election_timeout_ticks_min = 10;
        config.election_timeout_ticks_max = 20;
        config.seed = id.0;
        (self.configure)(&mut config);
        config
    }

    /// The node `id` (panics if down).
    pub fn node(&self, id: u64) -> &RawNode<MemLog> {
        self.nodes[&NodeId(id)].node.as_ref().expect("node is up")
    }

    /// The node `id`, mutably (panics if down).
    pub fn node_mut(&mut self, id: u64) -> &mut RawNode<MemLog> {
        self.nodes
            .get_mut(&NodeId(id))
            .expect("node exists")
            .node
            .as_mut()
            .expect("node is up")
    }

    /// Crashes node `id`: unsynced entries and undelivered acknowledgements are lost.
    pub fn crash(&mut self, id: u64) {
        let host = self.nodes.get_mut(&NodeId(id)).expect("node exists");
        if let Some(node) = host.node.take() {
            let mut log = node.into_log();
            log.crash();
            host.log_down = Some(log);
            host.held.clear();
            host.disk_stalled = false;
        }
    }

    /// Restarts node `id` from its durable log and snapshot.
    pub fn restart(&mut self, id: impl Into<NodeIdArg>) {
        let id = id.into().0;
        let config = self.config(id);
        let host = self.nodes.get_mut(&id).expect("node exists");
        let log = host.log_down.take().expect("node is down");
        let hard_state = log.hard_state();
        let (meta, kv) = match &host.snapshot {
            Some((meta, bytes)) => (Some(meta.clone()), Kv::decode(bytes)),
            None => (None, Kv::default()),
        };
        let applied = kv.applied;
        host.kv = kv;
        host.incoming.clear();
        let node = RawNode::new(config, log, hard_state, meta, applied).expect("restart");
        host.node = Some(node);
    }

    /// Cuts node `id` off in both directions.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other.0 != id {
                self.cut.insert((NodeId(id), other));
                self.cut.insert((other, NodeId(id)));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Ticks node `id` `count` times, handling its readies.
    pub fn tick(&mut self, id: u64, count: u32) -> String {
        let mut out = String::new();
        for _ in 0..count {
            self.node_mut(id).tick();
            out.push_str(&self.process(id));
        }
        out
    }

    /// Proposes a command on `id`.
    pub fn propose(&mut self, id: u64, data: &[u8]) -> Result<LogIndex, crate::Error> {
        self.node_mut(id).propose(Payload::from(data))
    }

    /// Proposes a register write on `id`.
    pub fn put(&mut self, id: u64, key: u64, value: u64) -> Result<LogIndex, crate::Error> {
        let put = Put {
            op_id: value,
            key,
            value,
        };
        self.node_mut(id).propose(Payload::from_vec(put.encode()))
    }

    /// Handles node `id`'s readies until it has none; returns their transcript.
    pub fn process(&mut self, id: u64) -> String {
        let mut out = String::new();
        for _ in 0..32 {
            let Some(node) = self.nodes[&NodeId(id)].node.as_ref() else {
                return out;
            };
            if !node.has_ready() {
                return out;
            }
            let ready = self
                .nodes
                .get_mut(&NodeId(id))
                .expect("node")
                .node
                .as_mut()
                .expect("up")
                .ready();
            let text = ready.to_string();
            if !text.is_empty() {
                let _ = writeln!(out, "> {id} handling Ready");
                for line in text.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            self.handle_ready(NodeId(id), ready);
        }
        out
    }

    fn handle_ready(&mut self, id: NodeId, mut ready: Ready) {
        let host = self.nodes.get_mut(&id).expect("node");
        if host.snapshot_store_full && !ready.snapshot_chunks.is_empty() {
            host.incoming.clear();
            ready.snapshot_chunks.clear();
            ready.persisted_messages.clear();
            let node = host.node.as_mut().expect("up");
            node.snapshot_store_failed()
                .expect("a snapshot is being received");
            host.snapshot_refusing = true;
        }
        for chunk in &ready.snapshot_chunks {
            if chunk.offset == 0 {
                host.incoming.clear();
            }
            assert_eq!(host.incoming.len() as u64, chunk.offset, "chunks in order");
            host.incoming.extend_from_slice(&chunk.data);
        }
        if let Some(install) = &ready.snapshot {
            let bytes = std::mem::take(&mut host.incoming);
            assert_eq!(
                bytes.len() as u64,
                install.meta.size_bytes,
                "snapshot bytes"
            );
            host.kv = Kv::decode(&bytes);
            assert_eq!(
                host.kv.applied, install.meta.index,
                "the bytes are another snapshot"
            );
            host.snapshot = Some((install.meta.clone(), Arc::new(bytes)));
        }
        let node = host.node.as_mut().expect("up");
        persist_ready(node.log_mut(), &ready).expect("memory");
        let point = ready.persist_point();
        let mut outgoing = ready.messages;
        if host.disk_stalled {
            host.held.push((point, ready.persisted_messages));
        } else {
            node.log_mut().sync().expect("memory");
            if let Some((index, term)) = point {
                node.on_persisted(index, term);
            }
            outgoing.extend(ready.persisted_messages);
        }
        for entry in ready.committed_entries {
            if entry.kind == EntryKind::Command {
                if let Some(put) = Put::decode(&entry.payload) {
                    host.kv.apply(&put);
                }
            }
            host.kv.applied = entry.index;
            host.applied.push(entry);
        }
        host.read_states.extend(ready.read_states);
        for mut message in outgoing {
            if let Some(chunk) = message.snapshot_chunk_to_fill() {
                let bytes = match &host.snapshot {
                    Some((meta, bytes)) if meta.index == chunk.meta.index => bytes,
                    _ => &host.streamed[&chunk.meta.index],
                };
                let start = chunk.offset as usize;
                let end = start + chunk.length as usize;
                chunk.data = Payload::from_shared(Arc::clone(bytes), start..end);
            }
            self.pending.push(message);
        }
    }

    /// The disk of `id` completes everything held: sync, acknowledge, send.
    pub fn release_disk(&mut self, id: u64) {
        let host = self.nodes.get_mut(&NodeId(id)).expect("node");
        host.disk_stalled = false;
        let held = std::mem::take(&mut host.held);
        let node = host.node.as_mut().expect("up");
        node.log_mut().sync().expect("memory");
        for (point, messages) in held {
            if let Some((index, term)) = point {
                node.on_persisted(index, term);
            }
            self.pending.extend(messages);
        }
    }

    /// The host of `id` snapshots its register machine at its applied index.
    pub fn snapshot(&mut self, id: u64) {
        let host = self.nodes.get_mut(&NodeId(id)).expect("node");
        let bytes = host.kv.encode();
        let node = host.node.as_mut().expect("up");
        node.snapshot_taken(host.kv.applied, bytes.len() as u64)
            .expect("snapshot");
        let meta = node.snapshot_meta().expect("taken").clone();
        if let Some((previous, previous_bytes)) = host.snapshot.replace((meta, Arc::new(bytes))) {
            host.streamed.insert(previous.index, previous_bytes);
        }
        let in_use = node.snapshots_in_use();
        host.streamed.retain(|index, _| in_use.contains(index));
    }

    /// Delivers the pending messages (only those to `to`, if given); returns the transcript.
    pub fn deliver(&mut self, to: Option<u64>) -> String {
        let mut out = String::new();
        let (now, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|m| to.is_none_or(|id| m.to.0 == id));
        self.pending = later;
        for message in now {
            if self.cut.contains(&(message.from, message.to)) {
                let _ = writeln!(out, "  dropped: {message}");
                continue;
            }
            if message.snapshot.is_some()
                && self
                    .nodes
                    .get(&message.to)
                    .is_some_and(|h| h.snapshot_refusing)
            {
                let _ = writeln!(out, "  dropped (refusing snapshots): {message}");
                continue;
            }
            let Some(node) = self
                .nodes
                .get_mut(&message.to)
                .and_then(|h| h.node.as_mut())
            else {
                let _ = writeln!(out, "  dropped (down): {message}");
                continue;
            };
            let _ = writeln!(out, "  {message}");
            node.step(message).expect("step");
        }
        out
    }

    /// Drops pending messages matching `filter`.
    pub fn drop_pending(&mut self, filter: impl Fn(&Message) -> bool) {
        self.pending.retain(|m| !filter(m));
    }

    /// Processes readies and delivers messages until nothing is left; returns the transcript.
    pub fn stabilize(&mut self) -> String {
        let mut out = String::new();
        for host in self.nodes.values_mut() {
            host.snapshot_refusing = false;
        }
        for _ in 0..1000 {
            let ids: Vec<u64> = self.nodes.keys().map(|id| id.0).collect();
            let mut progressed = false;
            for id in &ids {
                let text = self.process(*id);
                if !text.is_empty() {
                    out.push_str(&text);
                    progressed = true;
                }
            }
            for id in &ids {
                if self.pending.iter().any(|m| m.to.0 == *id) {
                    let _ = writeln!(out, "> {id} receiving messages");
                    out.push_str(&self.deliver(Some(*id)));
                    progressed = true;
                }
            }
            if !progressed {
                return out;
            }
        }
        panic!("the network did not stabilize");
    }

    /// A one-line state per node.
    pub fn status(&self) -> String {
        let mut out = String::new();
        for (id, host) in &self.nodes {
            match &host.node {
                None => {
                    let _ = writeln!(out, "{id}: down");
                }
                Some(node) => {
                    let _ = writeln!(
                        out,
                        "{id}: {} term={} leader={} last={} commit={} applied={} conf{}",
                        node.role(),
                        node.term(),
                        node.leader_id().map_or(0, |l| l.0),
                        node.last_index(),
                        node.commit_index(),
                        node.applied(),
                        node.configuration()
                    );
                }
            }
        }
        out
    }

    /// Whether any pending message is of `kind`.
    pub fn has_pending(&self, kind: MessageKind) -> bool {
        self.pending.iter().any(|m| m.kind == kind)
    }
}

/// A node id argument: `u64` or [`NodeId`].
pub struct NodeIdArg(pub NodeId);

impl From<u64> for NodeIdArg {
    fn from(id: u64) -> NodeIdArg {
        NodeIdArg(NodeId(id))
    }
}

impl From<NodeId> for NodeIdArg {
    fn from(id: NodeId) -> NodeIdArg {
        NodeIdArg(id)
    }
}

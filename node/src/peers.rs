//! Raft messages over the reactor's peer transport: encoding with raft's codec into recycled
//! send buffers, snapshot chunks filled from the snapshot file at their offsets, received
//! frames decoded (payloads are windows of the one received buffer) and stepped, failures
//! reported to raft, and peer addresses that follow the Raft configuration.
//!
//! Where a message goes: a `--peer-route` for the node (tests), else the node's address in the
//! configuration, else the address the node announced in its hello (a joining node learns its
//! leader that way before the log tells it the configuration). A message to a node with no
//! known address is dropped and the node reported unreachable, as a failed connection would be.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_net::reactor::{CloseReason, PeerDirection, PeerSendError};
use atoll_raft::{codec, LogIndex, Message, NodeId, RawNode};
use atoll_storage::SegmentLog;
use log::{debug, info, warn};

use super::{fatal, Node, NodeError};

/// Addresses a joining node keeps from the hellos of nodes not in its log yet.
pub const PEERS_ANNOUNCED_MAX: usize = 64;
/// Refused messages logged at warn level (first per sender and reason); the rest at debug.
pub const PEER_REFUSALS_LOGGED_MAX: usize = 256;
/// Free space a received snapshot must leave: it must fit twice (its file, then the databases
/// restored from it) plus this margin, or its first chunk is dropped (the leader retries).
pub const SNAPSHOT_DISK_MARGIN_BYTES: u64 = 16 * 1024 * 1024;

/// Why a peer's message was dropped before raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    NotMember(u64),
    SnapshotNotFromLeader(u64),
    SnapshotTooLarge { size: u64, available: u64 },
}

impl Refusal {
    /// A small key for log-once.
    fn kind(&self) -> u8 {
        match self {
            Refusal::NotMember(_) => 0,
            Refusal::SnapshotNotFromLeader(_) => 1,
            Refusal::SnapshotTooLarge { .. } => 2,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotMember(id) => write!(f, "node {id} is not a member of the configuration"),
            Refusal::SnapshotNotFromLeader(id) => {
                write!(
                    f,
                    "snapshot chunk from node {id}, not the current term's leader"
                )
            }
            Refusal::SnapshotTooLarge { size, available } => write!(
                f,
                "a snapshot of {size} bytes does not fit ({available} bytes free; needs twice \
                 its size and {SNAPSHOT_DISK_MARGIN_BYTES} more)"
            ),
        }
    }
}

/// The address to send to node `id`: its route, its configured address, or the one it
/// announced. (A free function so the caller can borrow the reactor mutably meanwhile.)
fn peer_address<'a>(
    routes: &'a HashMap<u64, String>,
    raft: &'a RawNode<SegmentLog>,
    announced: &'a HashMap<u64, String>,
    id: u64,
) -> Option<&'a str> {
    if let Some(route) = routes.get(&id) {
        return Some(route);
    }
    if let Some(member) = raft.configuration().get(NodeId(id)) {
        return Some(&member.address);
    }
    // Rarely (a node the latest configuration does not name): the earlier ones back to the
    // committed one, since a node an uncommitted configuration removes may be the next leader
    // (seed 1116). A node whose removal committed gets nothing: its messages are refused.
    let commit = raft.commit_index();
    let mut committed_seen = false;
    for (index, configuration) in raft.configurations().collect::<Vec<_>>().into_iter().rev() {
        if committed_seen {
            break;
        }
        committed_seen = index <= commit;
        if let Some(member) = configuration.get(NodeId(id)) {
            return Some(&member.address);
        }
    }
    announced.get(&id).map(String::as_str)
}

impl Node {
    /// Sends raft messages to their peers. A refused frame (queue full, unknown address) is
    /// lost, and raft is told the peer is unreachable so it stops pipelining and probes; raft
    /// resends what was lost.
    pub(super) fn send_messages(&mut self, messages: Vec<Message>) {
        for mut message in messages {
            let to = message.to.0;
            if let Some(chunk) = message.snapshot_chunk_to_fill() {
                if self.snapshots_refused() {
                    // Damage must not spread: raft sends the chunk again when no progress
                    // comes (after the repair a whole leader sends its own snapshot).
                    debug!(
                        "snapshot {} for node {to}: not sent, a database here is damaged",
                        chunk.meta.index
                    );
                    continue;
                }
                if let Err(e) = self.fill_snapshot_chunk(chunk) {
                    // The leader resends from the acknowledged offset when no progress comes.
                    warn!(
                        "snapshot {} for node {to}: cannot read {} bytes at offset {}: {e}",
                        chunk.meta.index, chunk.length, chunk.offset
                    );
                    continue;
                }
            }
            let Some(address) =
                peer_address(&self.peer_routes, &self.raft, &self.peer_announced, to)
            else {
                debug!("no address for node {to}: dropping {message}");
                self.raft.report_unreachable(message.to);
                continue;
            };
            let sent = self.reactor.peer_send_with(to, address, |buffer| {
                codec::encode_message(&message, buffer);
            });
            if let Err(error) = sent {
                let failures = self.peer_send_failures.entry(to).or_insert(0);
                *failures += 1;
                if *failures == 1 || matches!(error, PeerSendError::FrameTooLarge { .. }) {
                    warn!("sending to node {to}: {error}");
                } else {
                    debug!("sending to node {to}: {error}");
                }
                self.raft.report_unreachable(message.to);
            }
        }
    }

    /// Reads a chunk's bytes from the snapshot file it belongs to (kept open while raft streams
    /// it), straight into the message: one chunk in memory per message, never the snapshot.
    fn fill_snapshot_chunk(
        &mut self,
        chunk: &mut atoll_raft::SnapshotChunk,
    ) -> std::io::Result<()> {
        let (index, term) = (chunk.meta.index, chunk.meta.term);
        let position = match self
            .outgoing
            .iter()
            .position(|data| data.meta().index == index && data.meta().term == term)
        {
            Some(position) => position,
            None => {
                let data = self.raft.log().snapshots().open_data(index, term)?;
                info!(
                    "streaming snapshot {index} ({} bytes) to followers",
                    data.meta().data_bytes
                );
                self.outgoing.push(data);
                self.outgoing.len() - 1
            }
        };
        let mut bytes = vec![0u8; chunk.length as usize];
        self.outgoing[position].read_at(chunk.offset, &mut bytes)?;
        chunk.data = atoll_raft::Payload::from_vec(bytes);
        Ok(())
    }

    /// A frame from a peer: one raft message. A frame that does not decode or that raft
    /// refuses changes nothing (a bug or a confused peer, logged); a failed log read is fatal.
    pub(super) fn on_peer_frame(&mut self, from: u64, frame: Vec<u8>) -> Result<(), NodeError> {
        let message = match codec::decode_message(Arc::new(frame)) {
            Ok(message) => message,
            Err(e) => {
                warn!("undecodable raft message from node {from}: {e}");
                return Ok(());
            }
        };
        if message.from.0 != from {
            warn!(
                "node {from} sent a message from node {}: dropped",
                message.from
            );
            return Ok(());
        }
        if message.kind == atoll_raft::MessageKind::Snapshot && self.snapshot_receive_refused() {
            // Unread, unanswered: the leader resends from what it knows stored when it sees
            // no progress (answering each chunk would restart its stream once per chunk).
            debug!("snapshot chunk from node {from} dropped: the disk was full");
            return Ok(());
        }
        if let Some(refusal) = self.refuse_message(&message) {
            if matches!(refusal, Refusal::SnapshotTooLarge { .. }) {
                self.incoming_refused_until =
                    Some(self.clock.now() + super::SNAPSHOT_RECEIVE_RETRY_INTERVAL);
                self.stats.snapshots_refused += 1;
            }
            let first = self.peer_refusals_logged.len() < PEER_REFUSALS_LOGGED_MAX
                && self.peer_refusals_logged.insert((from, refusal.kind()));
            if first {
                warn!("{refusal}: {message} dropped");
            } else {
                debug!("{refusal}: {message} dropped");
            }
            self.stats.messages_refused += 1;
            return Ok(());
        }
        let from_leader = self.raft.leader_id().is_some_and(|leader| leader.0 == from);
        match self.raft.step(message) {
            Ok(()) => {
                if from_leader || self.raft.leader_id().is_some_and(|leader| leader.0 == from) {
                    self.last_leader_contact = Some(self.clock.now());
                }
                Ok(())
            }
            Err(atoll_raft::Error::Storage(e)) => Err(fatal("reading the log", e)),
            Err(e @ atoll_raft::Error::InvalidMessage(_)) => {
                warn!("message from node {from} refused: {e}");
                Ok(())
            }
            Err(e) => {
                debug!("message from node {from} refused: {e}");
                Ok(())
            }
        }
    }

    /// Why an authenticated peer's message must not reach raft, if it must not: a member
    /// takes messages only from members of the configuration committed in its log or of a
    /// later one (a configuration not committed yet may be truncated: the leader that replaces
    /// it may be a node it removes, and must be heard; a node whose removal is committed is
    /// not; an unknown node, even holding the secret, changes nothing). A joining node, not yet
    /// in its own configuration, takes them from whoever holds the secret: its leader is not
    /// in its log yet. A snapshot chunk is taken only from the leader of the current term, and
    /// a new snapshot only if it fits on the disk.
    fn refuse_message(&self, message: &Message) -> Option<Refusal> {
        let me = NodeId(self.config.id);
        if self.raft.configuration().get(me).is_some() {
            let commit = self.raft.commit_index();
            let configurations: Vec<(atoll_raft::LogIndex, &atoll_raft::Configuration)> =
                self.raft.configurations().collect();
            let committed = configurations
                .iter()
                .rposition(|(index, _)| *index <= commit)
                .unwrap_or(0);
            let member = configurations[committed..]
                .iter()
                .any(|(_, configuration)| configuration.get(message.from).is_some());
            if !member && !self.lagging_behind(message, &configurations) {
                return Some(Refusal::NotMember(message.from.0));
            }
        }
        let chunk = message.snapshot.as_ref()?;
        if message.term != self.raft.term() || self.raft.leader_id() != Some(message.from) {
            return Some(Refusal::SnapshotNotFromLeader(message.from.0));
        }
        if chunk.offset != 0 {
            return None;
        }
        let snapshots = self.raft.log().snapshots().dir().to_path_buf();
        let needed = chunk
            .meta
            .size_bytes
            .saturating_mul(2)
            .saturating_add(SNAPSHOT_DISK_MARGIN_BYTES);
        match self.files.available_bytes(&snapshots) {
            Ok(available) if available >= needed => None,
            Ok(available) => Some(Refusal::SnapshotTooLarge {
                size: chunk.meta.size_bytes,
                available,
            }),
            Err(e) => {
                warn!("free space of {}: {e}", snapshots.display());
                Some(Refusal::SnapshotTooLarge {
                    size: chunk.meta.size_bytes,
                    available: 0,
                })
            }
        }
    }

    /// Whether a message from a non-member may still be heard because this member lags
    /// behind the configuration that added its sender: the sender is in none of this log's
    /// configurations (not a removed node), it acts as a leader (appends, heartbeats,
    /// snapshots) at this node's term or later, and this node has known no leader for three
    /// election timeouts, or follows that sender already. A healthy member hears nobody
    /// unknown, so a holder of the secret with a made-up id changes nothing; a lagging one
    /// would otherwise never hear from a leader that joined after its log ends (seed 2077).
    fn lagging_behind(
        &self,
        message: &Message,
        configurations: &[(atoll_raft::LogIndex, &atoll_raft::Configuration)],
    ) -> bool {
        use atoll_raft::MessageKind::{Append, Heartbeat, Snapshot};
        let known = configurations
            .iter()
            .any(|(_, configuration)| configuration.get(message.from).is_some());
        if known
            || !matches!(message.kind, Append | Heartbeat | Snapshot)
            || message.term < self.raft.term()
        {
            return false;
        }
        if self.raft.leader_id() == Some(message.from) {
            return true;
        }
        let leaderless = self
            .clock
            .now()
            .saturating_duration_since(self.leader_seen_at);
        self.raft.leader_id().is_none()
            && leaderless >= 3 * Duration::from_millis(self.config.election_timeout_ms())
    }

    pub(super) fn on_peer_connected(
        &mut self,
        node: u64,
        direction: PeerDirection,
        address: String,
    ) {
        match direction {
            PeerDirection::Inbound => {
                debug!("node {node} ({address}) connected");
                // A node not in this node's configuration may be a member this node has not
                // heard of yet (this node is joining, or it lags behind the change that added
                // the other one): answers to it go to the address it announced, or a lagging
                // voter could never vote for a new member (seed 710). Bounded, and forgotten
                // once the configuration names it.
                let configuration = self.raft.configuration();
                if configuration.get(NodeId(node)).is_none()
                    && (self.peer_announced.len() < PEERS_ANNOUNCED_MAX
                        || self.peer_announced.contains_key(&node))
                {
                    self.peer_announced.insert(node, address);
                }
            }
            PeerDirection::Outbound => {
                debug!("connected to node {node} at {address}");
                if self.peer_send_failures.remove(&node).is_some() {
                    info!("node {node} at {address} is reachable again");
                }
            }
        }
    }

    pub(super) fn on_peer_disconnected(
        &mut self,
        node: u64,
        direction: PeerDirection,
        reason: CloseReason,
        frames_dropped: u64,
    ) {
        debug!(
            "peer {node} {direction:?} connection ended: {reason:?}, {frames_dropped} frames \
             dropped"
        );
        if direction == PeerDirection::Outbound {
            // Appends in flight may be lost: probe instead of pipelining into the void.
            self.raft.report_unreachable(NodeId(node));
        }
        if matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_)) {
            // Closed by the other end, or reset: the leader's process ended, most likely.
            self.raft.leader_connection_closed(NodeId(node));
        }
    }

    /// Makes the reactor's peer addresses follow the configurations: the address (or route) of
    /// every member of the committed configuration and of the later ones is set, the latest
    /// one's first, and a node in none of them is forgotten (its connections closed). A node
    /// an uncommitted configuration removes stays reachable until the removal commits: that
    /// configuration may be truncated, and the node may be the next leader (seed 1116).
    pub(super) fn follow_configuration(&mut self) {
        if self.raft.leader_id().is_some() {
            self.leader_seen_at = self.clock.now();
        }
        let commit = self.raft.commit_index();
        let committed_index = self
            .raft
            .configurations()
            .map(|(index, _)| index)
            .filter(|index| *index <= commit)
            .last()
            .unwrap_or(LogIndex(0));
        let key = (self.raft.configuration_index(), committed_index);
        if key == self.peers_configuration_index {
            return;
        }
        self.peers_configuration_index = key;
        let configurations: Vec<(LogIndex, &atoll_raft::Configuration)> =
            self.raft.configurations().collect();
        let committed = configurations
            .iter()
            .rposition(|(index, _)| *index <= commit)
            .unwrap_or(0);
        let me = self.config.id;
        let configuration = self.raft.configuration();
        if !configuration.is_empty() {
            // Where the cluster is, should this node's log be damaged later (`repair.rs`).
            if let Err(e) = super::repair::write_members(&self.data_dir, configuration) {
                warn!("recording the configuration: {e}");
            }
        }
        let mut addresses: HashMap<u64, String> = HashMap::new();
        for (_, configuration) in configurations
            .get(committed..)
            .unwrap_or_default()
            .iter()
            .rev()
        {
            for (id, member) in configuration.members() {
                if id.0 != me {
                    addresses
                        .entry(id.0)
                        .or_insert_with(|| member.address.clone());
                }
            }
        }
        for (&id, address) in &addresses {
            self.peer_announced.remove(&id);
            let address = self.peer_routes.get(&id).unwrap_or(address);
            if let Err(e) = self.reactor.peer_set_address(id, address) {
                warn!("node {id} at {address}: {e}");
            }
        }
        let gone: Vec<u64> = self
            .reactor
            .peers()
            .into_iter()
            .filter(|id| !addresses.contains_key(id))
            .filter(|id| !self.peer_announced.contains_key(id))
            .collect();
        for id in gone {
            info!("node {id} left the configuration: forgetting it");
            self.reactor.peer_forget(id);
            self.peer_send_failures.remove(&id);
        }
    }
}

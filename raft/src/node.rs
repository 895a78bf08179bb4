//! The Raft node: state shared by every role, the public API, and the dispatch to one step
//! function per role (`role/`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use atoll_storage::LogRead;

use crate::config::Config;
use crate::configurations::ConfigurationHistory;
use crate::error::Error;
use crate::log::RaftLog;
use crate::membership::{Configuration, MemberRole, ADDRESS_BYTES_MAX};
use crate::message::{Message, MessageKind, SnapshotChunk, SnapshotMeta, CAMPAIGN_TRANSFER};
use crate::prng::Prng;
use crate::progress::Progress;
use crate::ready::{ReadState, Ready, SnapshotInstall};
use crate::{Entry, EntryKind, HardState, LogIndex, NodeId, Payload, Term};

/// A node's role in its current term.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election, without raising its term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

impl fmt::Display for StateRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateRole::Follower => "follower",
            StateRole::PreCandidate => "pre-candidate",
            StateRole::Candidate => "candidate",
            StateRole::Leader => "leader",
        })
    }
}

/// Why a campaign starts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Campaign {
    /// A pre-vote round (the term stays).
    PreElection,
    /// A real election (the term rises).
    Election,
    /// A transfer: a real election whose votes ignore leader leases.
    Transfer,
}

/// The outcome of counting votes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Pending,
    Won,
    Lost,
}

/// A read request waiting for a heartbeat round to confirm leadership.
#[derive(Clone, Debug)]
pub(crate) struct ReadRequest {
    pub(crate) index: LogIndex,
    pub(crate) context: u64,
    pub(crate) from: NodeId,
    /// The heartbeat round that confirms it.
    pub(crate) round: u64,
}

/// A member being caught up before it becomes a voter (C-Raft's rounds): each round ends when
/// the member's match index reaches the leader's last index at the round's start; a round
/// shorter than an election timeout means the member keeps up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The member to promote.
    pub id: NodeId,
    /// The index the current round must reach.
    pub round_target: LogIndex,
    /// The leader tick at which the round started.
    pub round_start_tick: u64,
    /// Rounds so far.
    pub rounds: u32,
}

/// The most catch-up rounds before a promotion is abandoned.
pub const CATCH_UP_ROUNDS_MAX: u32 = 10;

/// A snapshot being received from the leader.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotReceive {
    pub(crate) meta: SnapshotMeta,
    /// Bytes received so far (contiguous from 0).
    pub(crate) offset: u64,
    /// The leader that sent the chunk completing it (answered once it is installed).
    pub(crate) from: NodeId,
    /// The chunk completing it went out in a ready: the host holds every byte once that
    /// ready is handled, and the next ready installs the snapshot (unless the host reported
    /// [`RawNode::snapshot_store_failed`] in between).
    pub(crate) handed: bool,
}

impl SnapshotReceive {
    pub(crate) fn complete(&self) -> bool {
        self.offset == self.meta.size_bytes
    }
}

/// The entry every member of a new cluster starts with: the first configuration at index 1,
/// term 1. Bootstrap each initial member's empty log with the same entry.
pub fn bootstrap_entry(configuration: &Configuration) -> Entry {
    Entry {
        index: LogIndex(1),
        term: Term(1),
        kind: EntryKind::Configuration,
        payload: Payload::from_vec(configuration.encode_to_vec()),
    }
}

/// A Raft node as a value: feed it ticks, messages and requests; take work out with
/// [`RawNode::ready`]. It owns the log (`L`) and only reads it; the host writes it.
pub struct RawNode<L: LogRead> {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) prng: Prng,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) role: StateRole,
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) log: RaftLog<L>,
    pub(crate) configurations: ConfigurationHistory,
    /// The host's latest snapshot (what a leader streams to a follower that needs it).
    pub(crate) snapshot: Option<SnapshotMeta>,

    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_election_timeout: u32,
    /// Ticks since this node became leader; the clock of promotions.
    pub(crate) leader_ticks: u64,

    /// Candidate: the votes received, granted or not.
    pub(crate) votes: BTreeMap<NodeId, bool>,

    /// Leader: every member that gets the log (and the promotee), itself included.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Leader: the index of its term's first entry (the no-op). Until it commits, the leader
    /// accepts no membership change and serves no read.
    pub(crate) term_start_index: LogIndex,
    /// Leader: the index of the last configuration entry it appended.
    pub(crate) pending_conf_index: LogIndex,
    pub(crate) promotion: Option<Promotion>,
    pub(crate) transferee: Option<NodeId>,
    pub(crate) transfer_elapsed: u32,
    /// Leader: (last index, payload bytes) of each uncommitted proposal batch.
    pub(crate) uncommitted: VecDeque<(LogIndex, u64)>,
    pub(crate) uncommitted_bytes: u64,
    /// Leader: the current heartbeat round (carried as the heartbeat's context).
    pub(crate) read_round: u64,
    /// Leader: the highest round each member acknowledged.
    pub(crate) read_acks: BTreeMap<NodeId, u64>,
    pub(crate) reads: VecDeque<ReadRequest>,
    /// Leader: reads received before the term's first entry committed.
    pub(crate) reads_unready: VecDeque<(NodeId, u64)>,
    /// Leader: appends to broadcast at the next ready (batches proposals).
    pub(crate) broadcast_pending: bool,
    /// Leader: a heartbeat round to start at the next ready (confirms reads).
    pub(crate) heartbeat_pending: bool,

    /// Follower: the snapshot being received.
    pub(crate) snapshot_receive: Option<SnapshotReceive>,
    /// A received snapshot installed in raft's view, to hand to the host.
    pub(crate) snapshot_install: Option<SnapshotInstall>,

    // Output, collected until the next ready.
    pub(crate) messages: Vec<Message>,
    pub(crate) persisted_messages: Vec<Message>,
    pub(crate) snapshot_chunks: Vec<SnapshotChunk>,
    pub(crate) compact: Option<(LogIndex, Term)>,
    /// Confirmed reads waiting for their index to be applied.
    pub(crate) read_states_waiting: Vec<ReadState>,
    pub(crate) dropped_reads: Vec<u64>,
    pub(crate) hard_state_handed: HardState,
    /// Reused buffers of the leader's hot paths.
    pub(crate) scratch_ids: Vec<NodeId>,
    pub(crate) scratch_indexes: Vec<LogIndex>,
    /// Set by the host while this node's log was lost and is being rebuilt from the leader:
    /// it grants no vote and does not campaign (see [`RawNode::set_votes_withheld`]).
    pub(crate) votes_withheld: bool,
}

impl<L: LogRead> RawNode<L> {
    /// Builds a node over `log` (reopened after a restart, or new), with the hard state saved
    /// in the store, the host's latest snapshot (if any) and the index its state machine has
    /// applied. The configuration comes from the snapshot and the configuration entries after it.
    pub fn new(
        config: Config,
        log: L,
        hard_state: HardState,
        snapshot: Option<SnapshotMeta>,
        applied: LogIndex,
    ) -> Result<RawNode<L>, Error> {
        config.validate().map_err(|e| Error::InvalidRequest(e.0))?;
        let first = log.first_index();
        let last = log.last_index();
        let compacted = first.prev();
        let (base_index, base_configuration) = match &snapshot {
            Some(meta) => {
                if meta.index < compacted {
                    return Err(Error::InvalidRequest("snapshot older than the log's start"));
                }
                (meta.index, meta.configuration.clone())
            }
            None if compacted.0 > 0 => {
                return Err(Error::InvalidRequest("compacted log without a snapshot"));
            }
            None => (LogIndex(0), Configuration::new()),
        };
        // The host's state machine may lag its own snapshot when the log still holds the
        // entries after what it applied (a host that snapshots without checkpointing first
        // compacts no further than its checkpoints): those entries are handed out again, as
        // committed. Otherwise the snapshot is what it has applied.
        let replays = applied < base_index && first <= applied.next() && base_index <= last;
        let committed = base_index.min(last);
        let applied = if replays {
            applied
        } else {
            applied.max(committed)
        };
        if applied > last {
            return Err(Error::InvalidRequest(
                "applied index beyond the log's last index",
            ));
        }
        let mut configurations = ConfigurationHistory::new(base_index, base_configuration);
        let mut low = base_index.next().max(first);
        while low <= last {
            let mut batch = Vec::new();
            log.entries(low, last.next(), 4 << 20, &mut batch)?;
            let Some(end) = batch.last().map(|entry| entry.index) else {
                break;
            };
            for entry in batch.iter().filter(|e| e.kind == EntryKind::Configuration) {
                let configuration = Configuration::decode(&entry.payload).map_err(|e| {
                    Error::Storage(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("configuration entry {} does not decode: {e}", entry.index),
                    ))
                })?;
                configurations.push(entry.index, configuration);
            }
            low = end.next();
        }
        let mut prng = Prng::new(config.seed ^ config.id.0.rotate_left(32));
        let randomized_election_timeout = prng.range(
            u64::from(config.election_timeout_ticks_min),
            u64::from(config.election_timeout_ticks_max),
        ) as u32;
        let node = RawNode {
            id: config.id,
            prng,
            term: hard_state.term,
            vote: hard_state.vote,
            role: StateRole::Follower,
            leader_id: None,
            log: RaftLog::new(log, applied, committed),
            configurations,
            snapshot,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout,
            leader_ticks: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: LogIndex(0),
            pending_conf_index: LogIndex(0),
            promotion: None,
            transferee: None,
            transfer_elapsed: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            read_round: 0,
            read_acks: BTreeMap::new(),
            reads: VecDeque::new(),
            reads_unready: VecDeque::new(),
            broadcast_pending: false,
            heartbeat_pending: false,
            snapshot_receive: None,
            snapshot_install: None,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            snapshot_chunks: Vec::new(),
            compact: None,
            read_states_waiting: Vec::new(),
            dropped_reads: Vec::new(),
            hard_state_handed: hard_state,
            scratch_ids: Vec::new(),
            scratch_indexes: Vec::new(),
            votes_withheld: false,
            config,
        };
        Ok(node)
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The role in the current term.
    pub fn role(&self) -> StateRole {
        self.role
    }

    /// The leader of the current term, if known.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// The commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed()
    }

    /// The last index handed out for applying.
    pub fn applied(&self) -> LogIndex {
        self.log.applied()
    }

    /// The last index known durable in the local log.
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted()
    }

    /// The last index of the log (including entries not yet handed out).
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The term of the entry at `index`, if raft's view of the log holds it.
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The configuration in force (the last one appended, committed or not).
    pub fn configuration(&self) -> &Configuration {
        self.configurations.current()
    }

    /// The index of the entry that carries the configuration in force.
    pub fn configuration_index(&self) -> LogIndex {
        self.configurations.current_index()
    }

    /// Every configuration raft knows by the index of the entry (or snapshot) carrying it,
    /// oldest first; the last is the one in force. Those after the commit index may still be
    /// truncated. Older ones are forgotten as the log is compacted.
    pub fn configurations(&self) -> impl Iterator<Item = (LogIndex, &Configuration)> + '_ {
        self.configurations.iter()
    }

    /// The host's latest snapshot, as raft knows it.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// Leader: each tracked member's progress (itself included).
    pub fn progress(&self) -> impl Iterator<Item = (NodeId, &Progress)> + '_ {
        self.progress.iter().map(|(id, progress)| (*id, progress))
    }

    /// Leader: the member a transfer is handing leadership to.
    pub fn transferee(&self) -> Option<NodeId> {
        self.transferee
    }

    /// Leader: the promotion being caught up.
    pub fn promotion(&self) -> Option<&Promotion> {
        self.promotion.as_ref()
    }

    /// The hard state as raft holds it (the host persists it from readies).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    /// The log, for reads.
    pub fn log(&self) -> &L {
        self.log.store()
    }

    /// The log, for the host to persist readies into. Raft never writes it.
    pub fn log_mut(&mut self) -> &mut L {
        self.log.store_mut()
    }

    /// Consumes the node, giving its log back (a host shutting down or crashing).
    pub fn into_log(self) -> L {
        self.log.into_store()
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node may campaign: a voter in the configuration in force.
    pub fn is_promotable(&self) -> bool {
        self.configuration().is_voter(self.id)
    }

    /// Withholds (or gives back) this node's vote: while withheld it rejects every vote and
    /// pre-vote request and never campaigns. The host sets it when the node lost log entries it
    /// may have acknowledged (a damaged log replaced by an empty one): an empty log would look
    /// up to date to any candidate, and voting on it could elect a leader lacking an entry this
    /// node helped commit. Appends are still acknowledged: they are entries the node holds.
    pub fn set_votes_withheld(&mut self, withheld: bool) {
        self.votes_withheld = withheld;
    }

    /// Whether votes are withheld ([`RawNode::set_votes_withheld`]).
    pub fn votes_withheld(&self) -> bool {
        self.votes_withheld
    }

    /// Whether this node may start an election: a voter whose vote is not withheld. A node its
    /// latest configuration removes (or demotes) still campaigns while that configuration is
    /// not committed, if it is a voter of the committed one (dissertation, section 4.2.2): it
    /// may hold the entry the others lack, and be needed to commit it. Its own vote does not
    /// count then; it needs a majority of the latest configuration's voters.
    pub(crate) fn may_campaign(&self) -> bool {
        if self.votes_withheld {
            return false;
        }
        let commit = self.commit_index();
        self.is_promotable()
            || (self.configurations.current_index() > commit
                && self.configurations.at(commit).is_voter(self.id))
    }

    pub(crate) fn is_voter(&self, id: NodeId) -> bool {
        self.configuration().is_voter(id)
    }

    // ---------------------------------------------------------------- inputs

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.log.check_host_contract();
        match self.role {
            StateRole::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    /// Feeds a message received from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        self.validate_message(&message)?;
        self.step_validated(message);
        self.storage_result()
    }

    /// Proposes a command. Returns the index it was appended at (it may still be lost if
    /// leadership changes before it commits; the host learns the outcome by applying).
    pub fn propose(&mut self, data: Payload) -> Result<LogIndex, Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        let bytes = data.len() as u64;
        self.check_proposal(bytes)?;
        let index = self.append_entries_as_leader([(EntryKind::Command, data)], bytes);
        Ok(index)
    }

    /// Proposes several commands at once (group commit). Returns the first one's index; the
    /// rest follow contiguously. All or none are accepted.
    pub fn propose_batch(&mut self, data: Vec<Payload>) -> Result<LogIndex, Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        if data.is_empty() {
            return Err(Error::InvalidRequest("empty proposal batch"));
        }
        let bytes = data.iter().map(|payload| payload.len() as u64).sum();
        self.check_proposal(bytes)?;
        let index = self.append_entries_as_leader(
            data.into_iter()
                .map(|payload| (EntryKind::Command, payload)),
            bytes,
        );
        Ok(index)
    }

    /// Asks for a linearizable read: `context` comes back in a [`ReadState`] once the state
    /// machine has applied far enough (or in `dropped_reads`). On a follower the request goes
    /// to the leader (a follower read).
    pub fn read_index(&mut self, context: u64) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        match self.role {
            StateRole::Leader => self.leader_read(self.id, context),
            StateRole::Follower => match self.leader_id {
                Some(leader) => {
                    let mut message =
                        Message::new(MessageKind::ReadIndex, self.id, leader, self.term);
                    message.context = context;
                    self.send(message);
                    Ok(())
                }
                None => Err(Error::NotLeader { leader: None }),
            },
            _ => Err(Error::NotLeader { leader: None }),
        }
    }

    /// Starts an election now (a host command or a test; normally timeouts do it).
    pub fn campaign(&mut self) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        if !self.may_campaign() {
            return Err(Error::InvalidRequest(
                "only voters with their vote campaign",
            ));
        }
        if self.role == StateRole::Leader {
            return Ok(());
        }
        let kind = if self.config.pre_vote {
            Campaign::PreElection
        } else {
            Campaign::Election
        };
        self.campaign_now(kind);
        self.storage_result()
    }

    /// Leader: adds a member. A new voter joins as a standby and is promoted once it has
    /// caught up with the log (see [`RawNode::promotion`]).
    pub fn add(&mut self, id: NodeId, address: &str, role: MemberRole) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        self.check_conf_change()?;
        if id.0 == 0 {
            return Err(Error::InvalidConfChange("node id 0 is reserved"));
        }
        if address.len() > ADDRESS_BYTES_MAX {
            return Err(Error::InvalidConfChange("address longer than 255 bytes"));
        }
        if self.configuration().get(id).is_some() {
            return Err(Error::InvalidConfChange("already a member"));
        }
        let mut configuration = self.configuration().clone();
        let first_role = if role == MemberRole::Voter {
            MemberRole::Standby
        } else {
            role
        };
        configuration.insert(id, address, first_role);
        self.append_configuration(configuration);
        if role == MemberRole::Voter {
            self.start_promotion(id);
        }
        Ok(())
    }

    /// Leader: changes a member's role. Promotion to voter first catches the member up.
    pub fn assign(&mut self, id: NodeId, role: MemberRole) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        self.check_conf_change()?;
        let current = self
            .configuration()
            .role(id)
            .ok_or(Error::UnknownNode(id))?;
        if current == role {
            return Ok(());
        }
        if role == MemberRole::Voter {
            self.start_promotion(id);
            return Ok(());
        }
        if current == MemberRole::Voter && self.configuration().voter_count() == 1 {
            return Err(Error::InvalidConfChange("cannot demote the last voter"));
        }
        let mut configuration = self.configuration().clone();
        let address = configuration.get(id).expect("member").address.clone();
        configuration.insert(id, address, role);
        self.append_configuration(configuration);
        Ok(())
    }

    /// Leader: removes a member. A leader removing itself steps down once the change commits.
    pub fn remove(&mut self, id: NodeId) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        self.check_conf_change()?;
        let role = self
            .configuration()
            .role(id)
            .ok_or(Error::UnknownNode(id))?;
        if role == MemberRole::Voter && self.configuration().voter_count() == 1 {
            return Err(Error::InvalidConfChange("cannot remove the last voter"));
        }
        let mut configuration = self.configuration().clone();
        configuration.remove(id);
        self.append_configuration(configuration);
        Ok(())
    }

    /// Leader: hands leadership to `target`, or to the most up-to-date voter. Returns the
    /// transferee. Proposals are refused until the transfer completes or aborts (after an
    /// election timeout).
    pub fn transfer_leadership(&mut self, target: Option<NodeId>) -> Result<NodeId, Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        if self.role != StateRole::Leader {
            return Err(Error::NotLeader {
                leader: self.leader_id,
            });
        }
        let target = match target {
            Some(id) => id,
            None => self
                .best_transfer_target()
                .ok_or(Error::InvalidRequest("no other voter to transfer to"))?,
        };
        if target == self.id {
            return Ok(target);
        }
        if !self.is_voter(target) {
            return Err(Error::InvalidRequest("the transfer target is not a voter"));
        }
        self.start_transfer(target);
        self.storage_result()?;
        Ok(target)
    }

    /// The host's state machine has a snapshot through `index` (at most the applied index),
    /// `size_bytes` long. Raft records it (to stream to followers) and asks the host to compact
    /// the log in the next ready, keeping `snapshot_trailing_entries`.
    pub fn snapshot_taken(&mut self, index: LogIndex, size_bytes: u64) -> Result<(), Error> {
        self.log.check_host_contract();
        self.storage_result()?;
        if index > self.log.applied() {
            return Err(Error::InvalidRequest("snapshot beyond the applied index"));
        }
        if let Some(current) = &self.snapshot {
            if index <= current.index {
                return Ok(());
            }
        }
        let term = self
            .log
            .term(index)
            .ok_or(Error::InvalidRequest("snapshot index outside the log"))?;
        let meta = SnapshotMeta {
            index,
            term,
            size_bytes,
            configuration: self.configurations.at(index).clone(),
        };
        self.snapshot = Some(meta);
        let keep_from = index
            .0
            .saturating_sub(self.config.snapshot_trailing_entries);
        let compact_to = LogIndex(keep_from);
        if compact_to >= self.log.first_index() {
            if let Some(compact_term) = self.log.term(compact_to) {
                self.compact = Some((compact_to, compact_term));
                self.configurations.compact_to(compact_to);
            }
        }
        if self.role == StateRole::Leader {
            let first = self.log.first_index().prev();
            let floor = self.compact.map_or(first, |(index, _)| index.max(first));
            self.restart_snapshot_sends(floor);
        }
        self.storage_result()
    }

    /// The snapshots the host must keep: its latest and, on a leader, older ones still being
    /// streamed to followers. Any other snapshot may be deleted.
    pub fn snapshots_in_use(&self) -> Vec<LogIndex> {
        let mut indexes: Vec<LogIndex> = self
            .snapshot
            .iter()
            .map(|meta| meta.index)
            .chain(
                self.progress
                    .values()
                    .filter_map(|p| p.snapshot.as_ref().map(|send| send.meta.index)),
            )
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
    }

    /// The host saw its connection with `id` closed by the other end (a process that exits or
    /// dies closes its sockets), not time out. If `id` is this follower's leader, the follower
    /// stops counting on it: it leaves the leader lease (others' pre-votes and votes are heard)
    /// and campaigns once the random part of its election timeout has passed, unless a leader
    /// is heard first. The fixed part is skipped: a crashed leader is replaced in a few ticks,
    /// not a whole election timeout. Liveness only: a node whose connection alone broke cannot
    /// depose a live leader (the others still hear it and refuse its pre-votes).
    pub fn leader_connection_closed(&mut self, id: NodeId) {
        if self.role != StateRole::Follower || self.leader_id != Some(id) {
            return;
        }
        log::info!(
            "{}: connection with leader {id} closed by it: campaigning without waiting out \
             the election timeout's fixed part",
            self.id
        );
        self.leader_id = None;
        self.election_elapsed = self
            .election_elapsed
            .max(self.config.election_timeout_ticks_min);
    }

    /// The host could not reach `id` (a connection failed): stop pipelining to it and probe.
    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.role != StateRole::Leader || id == self.id {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&id) {
            if progress.state == crate::progress::ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    // ---------------------------------------------------------------- output

    /// Whether a ready has work.
    pub fn has_ready(&self) -> bool {
        if self.log.storage_error().is_some() {
            return false; // Fail-stop: nothing decided after a failed read may leave the node.
        }
        self.hard_state() != self.hard_state_handed
            || self.log.has_unstable()
            || self.snapshot_install.is_some()
            || self.snapshot_receive.as_ref().is_some_and(|r| r.handed)
            || !self.snapshot_chunks.is_empty()
            || self.compact.is_some()
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_next_committed()
            || !self.dropped_reads.is_empty()
            || (self.role == StateRole::Leader
                && (self.broadcast_pending || self.heartbeat_pending))
            || self
                .read_states_waiting
                .iter()
                .any(|read| read.index <= self.log.applied())
    }

    /// Takes the pending work out. See [`Ready`] for the order the host must follow.
    pub fn ready(&mut self) -> Ready {
        self.log.check_host_contract();
        if self.log.storage_error().is_some() {
            return Ready::default();
        }
        if self.role == StateRole::Leader {
            if self.broadcast_pending {
                self.broadcast_pending = false;
                self.broadcast_append();
            }
            if self.heartbeat_pending {
                self.heartbeat_pending = false;
                self.broadcast_heartbeat();
            }
        } else {
            // A leader's chores asked for in the step that ended its leadership (a commit
            // that removed it) have nobody to do them now.
            self.broadcast_pending = false;
            self.heartbeat_pending = false;
        }
        let mut ready = Ready::default();
        let hard_state = self.hard_state();
        if hard_state != self.hard_state_handed {
            assert!(
                hard_state.term >= self.hard_state_handed.term,
                "term went backwards"
            );
            if hard_state.term == self.hard_state_handed.term {
                if let Some(vote) = self.hard_state_handed.vote {
                    assert_eq!(hard_state.vote, Some(vote), "two votes in one term");
                }
            }
            ready.hard_state = Some(hard_state);
            self.hard_state_handed = hard_state;
        }
        // A snapshot whose last bytes the previous ready handed out is installed now: the host
        // stored them (or said it could not, and the receive is gone).
        if self.snapshot_receive.as_ref().is_some_and(|r| r.handed) {
            self.install_received_snapshot();
        }
        if let Some(install) = self.snapshot_install.take() {
            let (index, term, keep) = self
                .log
                .take_snapshot_pending()
                .expect("a snapshot install is pending in the log");
            assert_eq!(
                (index, term, keep),
                (install.meta.index, install.meta.term, install.keep_log)
            );
            self.snapshot = Some(install.meta.clone());
            ready.snapshot = Some(install);
        }
        ready.snapshot_chunks = std::mem::take(&mut self.snapshot_chunks);
        if let Some(receive) = self.snapshot_receive.as_mut() {
            let last = ready.snapshot_chunks.last();
            if receive.complete()
                && last.is_some_and(|c| {
                    c.meta == receive.meta && c.offset + u64::from(c.length) == receive.offset
                })
            {
                receive.handed = true;
            }
        }
        ready.entries = self.log.take_unstable();
        ready.compact = self.compact.take();
        ready.messages = std::mem::take(&mut self.messages);
        ready.persisted_messages = std::mem::take(&mut self.persisted_messages);
        ready.committed_entries = self.log.next_committed(self.config.apply_bytes_max);
        let applied = self.log.applied();
        if !self.read_states_waiting.is_empty() {
            let (done, waiting): (Vec<ReadState>, Vec<ReadState>) = self
                .read_states_waiting
                .drain(..)
                .partition(|read| read.index <= applied);
            ready.read_states = done;
            self.read_states_waiting = waiting;
        }
        ready.dropped_reads = std::mem::take(&mut self.dropped_reads);
        ready
    }

    /// The host made the log durable through `index`, whose term is `term` (a ready's
    /// [`Ready::persist_point`]). Stale reports are ignored.
    pub fn on_persisted(&mut self, index: LogIndex, term: Term) {
        if !self.log.persisted_to(index, term) {
            return;
        }
        if self.role == StateRole::Leader {
            let persisted = self.log.persisted();
            if let Some(progress) = self.progress.get_mut(&self.id) {
                progress.maybe_update(persisted);
            }
            if self.maybe_commit() {
                self.broadcast_pending = true;
            }
        }
    }

    /// The host could not append a ready's `entries` (a full disk): raft takes them back,
    /// serves them from memory, and hands them out again in the next ready. The host must not
    /// send that ready's `persisted_messages` (they may acknowledge these entries), and calls
    /// this before calling raft again. Refused unless `entries` are exactly the last handed out
    /// and the log ends right before them.
    pub fn append_failed(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        if self.log.give_back(entries) {
            Ok(())
        } else {
            Err(Error::InvalidRequest(
                "entries given back are not the last handed out",
            ))
        }
    }

    /// The host could not store the snapshot chunks of the last ready (a full disk): raft
    /// forgets the snapshot being received (never installing it) and asks the leader to
    /// stream it again from the start; chunks of it not handed out yet are dropped. The host
    /// drops what it wrote of that snapshot, must not send that ready's `persisted_messages`
    /// (they acknowledge the chunks), and calls this before calling raft again. Refused when
    /// no snapshot is being received.
    pub fn snapshot_store_failed(&mut self) -> Result<(), Error> {
        let Some(receive) = self.snapshot_receive.take() else {
            return Err(Error::InvalidRequest("no snapshot is being received"));
        };
        self.snapshot_chunks
            .retain(|chunk| chunk.meta != receive.meta);
        let mut answer = Message::new(
            MessageKind::SnapshotResponse,
            self.id,
            receive.from,
            self.term,
        );
        answer.index = receive.meta.index;
        answer.context = 0;
        answer.reject = true;
        self.send(answer);
        Ok(())
    }

    /// The host could not apply the committed entry at `index` (a full disk): raft hands it
    /// out again, with the entries after it, in a later ready, and holds back `reads` (read
    /// states of the same ready the host has not answered) until they are applied.
    pub fn apply_failed(&mut self, index: LogIndex, reads: Vec<ReadState>) -> Result<(), Error> {
        if !self.log.unapply_from(index) {
            return Err(Error::InvalidRequest(
                "entry to apply again was not handed out",
            ));
        }
        self.read_states_waiting.extend(reads);
        Ok(())
    }

    /// For a synchronous host: the ready was persisted and synced.
    pub fn advance(&mut self, ready: &Ready) {
        if let Some((index, term)) = ready.persist_point() {
            self.on_persisted(index, term);
        }
    }

    // ---------------------------------------------------------------- shared internals

    /// The first failed log read, if any: sticky, because raft's state after a failed read
    /// cannot be trusted. The host stops the node and reopens its storage.
    pub fn storage_error(&self) -> Option<std::io::Error> {
        self.log
            .storage_error()
            .map(|(kind, message)| std::io::Error::new(kind, message))
    }

    fn storage_result(&self) -> Result<(), Error> {
        match self.storage_error() {
            Some(error) => Err(Error::Storage(error)),
            None => Ok(()),
        }
    }

    /// Checks a message before anything changes: a bad message is refused whole.
    fn validate_message(&self, message: &Message) -> Result<(), Error> {
        if message.to != self.id {
            return Err(Error::InvalidMessage("addressed to another node"));
        }
        if message.from == self.id {
            return Err(Error::InvalidMessage("sent by this node to itself"));
        }
        if !message.entries.is_empty() && message.kind != MessageKind::Append {
            return Err(Error::InvalidMessage("entries outside an append"));
        }
        if message.snapshot.is_some() != (message.kind == MessageKind::Snapshot) {
            return Err(Error::InvalidMessage("snapshot chunk presence"));
        }
        if let Some(chunk) = &message.snapshot {
            if chunk.data.len() != chunk.length as usize
                || chunk
                    .offset
                    .checked_add(u64::from(chunk.length))
                    .is_none_or(|end| end > chunk.meta.size_bytes)
            {
                return Err(Error::InvalidMessage("snapshot chunk bounds"));
            }
            if chunk.meta.term > message.term {
                return Err(Error::InvalidMessage("snapshot from a later term"));
            }
        }
        if message
            .index
            .0
            .checked_add(message.entries.len() as u64 + 1)
            .is_none()
        {
            return Err(Error::InvalidMessage("index out of range"));
        }
        let mut previous = (message.index, message.log_term);
        for entry in &message.entries {
            if entry.index.0 != previous.0 .0 + 1 {
                return Err(Error::InvalidMessage("entries not contiguous"));
            }
            if entry.term < previous.1 || entry.term > message.term {
                return Err(Error::InvalidMessage("entry terms out of order"));
            }
            if entry.kind == EntryKind::Configuration
                && Configuration::decode(&entry.payload).is_err()
            {
                return Err(Error::InvalidMessage("configuration entry does not decode"));
            }
            previous = (entry.index, entry.term);
        }
        if message.kind == MessageKind::Append && message.log_term > message.term {
            return Err(Error::InvalidMessage("previous entry from a later term"));
        }
        // Fields that only a confused or forged peer sends. A message of an earlier term is
        // answered with our term whatever it holds, so these checks skip it.
        if message.term < self.term {
            return Ok(());
        }
        let last = self.log.last_index();
        match message.kind {
            // The leader caps the commit index at our match index, which we hold durably.
            MessageKind::Heartbeat if message.commit > last => {
                Err(Error::InvalidMessage("heartbeat commit beyond our log"))
            }
            // A rejection hints at an index at or below the append it refuses.
            MessageKind::AppendResponse
                if message.reject && message.reject_hint > message.index =>
            {
                Err(Error::InvalidMessage(
                    "rejection hint beyond the refused index",
                ))
            }
            // A leader's log only grows within its term: no member holds more of it than it.
            MessageKind::AppendResponse
                if self.role == StateRole::Leader
                    && message.term == self.term
                    && !message.reject
                    && message.index > last =>
            {
                Err(Error::InvalidMessage("append acknowledged beyond our log"))
            }
            // Heartbeat rounds are numbered by this leader within its term.
            MessageKind::HeartbeatResponse
                if self.role == StateRole::Leader
                    && message.term == self.term
                    && message.context > self.read_round =>
            {
                Err(Error::InvalidMessage("heartbeat round not sent yet"))
            }
            _ => Ok(()),
        }
    }

    fn step_validated(&mut self, message: Message) {
        use MessageKind::*;
        if message.term > self.term {
            if matches!(message.kind, PreVote | Vote) {
                let forced = message.kind == Vote && message.context == CAMPAIGN_TRANSFER;
                let in_lease = self.config.check_quorum
                    && self.leader_id.is_some()
                    && self.election_elapsed < self.config.election_timeout_ticks_min;
                if !forced && in_lease {
                    // Section 6 of the dissertation: a node that hears from its leader does not
                    // let a disruptive candidate (a removed or partitioned node) depose it.
                    log::debug!(
                        "{}: ignoring {} from {} (leader lease)",
                        self.id,
                        message.kind.name(),
                        message.from
                    );
                    return;
                }
            }
            match message.kind {
                // A pre-vote never changes the receiver's term.
                PreVote => {}
                // A granted pre-vote answers with the future term we asked about.
                PreVoteResponse if !message.reject => {}
                _ => {
                    let leader = if matches!(message.kind, Append | Heartbeat | Snapshot) {
                        Some(message.from)
                    } else {
                        None
                    };
                    self.become_follower(message.term, leader);
                }
            }
        } else if message.term < self.term {
            if matches!(message.kind, Append | Heartbeat) {
                // Section 5.1: refuse, with our term. A stale leader (say, back from a
                // partition) learns the new term from the answer and steps down; with pre-vote
                // and leases nothing else would tell it.
                let answer = Message::new(AppendResponse, self.id, message.from, self.term);
                self.send(answer);
            } else if message.kind == PreVote {
                let mut answer = Message::new(PreVoteResponse, self.id, message.from, self.term);
                answer.reject = true;
                self.send(answer);
            }
            return;
        }
        match message.kind {
            PreVote | Vote => self.handle_vote_request(message),
            _ => match self.role {
                StateRole::Leader => self.step_leader(message),
                StateRole::PreCandidate | StateRole::Candidate => self.step_candidate(message),
                StateRole::Follower => self.step_follower(message),
            },
        }
    }

    /// Section 5.2 and 5.4.1: grant at most one vote per term, only to an up-to-date log.
    fn handle_vote_request(&mut self, message: Message) {
        let pre_vote = message.kind == MessageKind::PreVote;
        let can_vote = !self.votes_withheld
            && (self.vote == Some(message.from)
                || (self.vote.is_none() && self.leader_id.is_none())
                || (pre_vote && message.term > self.term));
        let response_kind = if pre_vote {
            MessageKind::PreVoteResponse
        } else {
            MessageKind::VoteResponse
        };
        if can_vote && self.log.is_up_to_date(message.index, message.log_term) {
            let mut answer = Message::new(response_kind, self.id, message.from, message.term);
            if !pre_vote {
                assert_eq!(message.term, self.term);
                if let Some(vote) = self.vote {
                    assert_eq!(vote, message.from, "one vote per term");
                }
                self.election_elapsed = 0;
                self.vote = Some(message.from);
            }
            answer.reject = false;
            self.send(answer);
        } else {
            let mut answer = Message::new(response_kind, self.id, message.from, self.term);
            answer.reject = true;
            self.send(answer);
        }
    }

    /// Queues a message: acknowledgements of log state wait for persistence.
    pub(crate) fn send(&mut self, mut message: Message) {
        message.from = self.id;
        assert_ne!(message.to, self.id, "a node never messages itself");
        match message.kind {
            MessageKind::AppendResponse | MessageKind::SnapshotResponse => {
                self.persisted_messages.push(message)
            }
            _ => self.messages.push(message),
        }
    }

    pub(crate) fn reset(&mut self, term: Term) {
        if term != self.term {
            assert!(term > self.term, "the term never goes backwards");
            self.term = term;
            self.vote = None;
        }
        self.leader_id = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.prng.range(
            u64::from(self.config.election_timeout_ticks_min),
            u64::from(self.config.election_timeout_ticks_max),
        ) as u32;
        self.votes.clear();
        self.progress.clear();
        self.promotion = None;
        self.transferee = None;
        self.transfer_elapsed = 0;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.read_round = 0;
        self.read_acks.clear();
        self.broadcast_pending = false;
        self.heartbeat_pending = false;
        // Reads waiting for leadership confirmation cannot be confirmed any more.
        for request in self.reads.drain(..) {
            if request.from == self.id {
                self.dropped_reads.push(request.context);
            }
        }
        for (from, context) in self.reads_unready.drain(..) {
            if from == self.id {
                self.dropped_reads.push(context);
            }
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = StateRole::Follower;
        self.leader_id = leader;
        log::debug!(
            "{}: follower in term {} (leader {:?})",
            self.id,
            term,
            leader
        );
    }

    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.may_campaign() && self.election_elapsed >= self.randomized_election_timeout {
            let kind = if self.config.pre_vote {
                Campaign::PreElection
            } else {
                Campaign::Election
            };
            self.campaign_now(kind);
        }
    }

    pub(crate) fn append_configuration(&mut self, configuration: Configuration) {
        log::info!("{}: appending configuration {configuration}", self.id);
        let payload = Payload::from_vec(configuration.encode_to_vec());
        let index = self.append_entries_as_leader([(EntryKind::Configuration, payload)], 0);
        self.pending_conf_index = index;
        self.apply_configuration(index, configuration);
    }

    /// Records a configuration entry appended at `index` (effective now).
    pub(crate) fn apply_configuration(&mut self, index: LogIndex, configuration: Configuration) {
        self.configurations.push(index, configuration);
        if self.role == StateRole::Leader {
            self.leader_configuration_changed();
        }
    }
}

//! Leaders: replication with flow control, commit counting, heartbeats and check-quorum,
//! snapshot streaming, read index, membership changes with catch-up, and transfers.

use atoll_storage::LogRead;

use crate::error::Error;
use crate::membership::MemberRole;
use crate::message::{Message, MessageKind, SnapshotChunk};
use crate::node::{Promotion, RawNode, ReadRequest, StateRole, CATCH_UP_ROUNDS_MAX};
use crate::progress::{Progress, ProgressState};
use crate::ready::ReadState;
use crate::{Entry, EntryKind, LogIndex, NodeId, Payload};

/// Snapshot chunks are resent from the acknowledged offset after this many heartbeat intervals
/// without progress.
const SNAPSHOT_STALL_HEARTBEATS: u32 = 3;

impl<L: LogRead> RawNode<L> {
    pub(crate) fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            StateRole::Candidate,
            "only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = StateRole::Leader;
        self.leader_id = Some(self.id);
        self.leader_ticks = 0;
        let next = self.log.last_index().next();
        let ids: Vec<NodeId> = self
            .configuration()
            .members()
            .filter(|(_, member)| member.role.replicates())
            .map(|(id, _)| id)
            .chain(std::iter::once(self.id))
            .collect();
        for id in ids {
            self.insert_progress(id, next);
        }
        // Section 8: a no-op commits the entries of earlier terms (Figure 8) and tells the
        // leader its commit index; until it commits, no membership change and no read.
        let index = self.append_entries_as_leader([(EntryKind::Noop, crate::Payload::empty())], 0);
        self.term_start_index = index;
        self.pending_conf_index = self.configurations.current_index();
        log::info!(
            "{}: leader in term {} (no-op at {index})",
            self.id,
            self.term
        );
    }

    fn insert_progress(&mut self, id: NodeId, next: LogIndex) {
        let mut progress = Progress::new(
            next,
            self.config.inflight_msgs_max,
            self.config.inflight_bytes_max,
        );
        if id == self.id {
            progress.match_index = self.log.persisted();
            progress.recent_active = true;
        }
        self.progress.insert(id, progress);
    }

    /// Appends entries of this term; returns the first one's index.
    pub(crate) fn append_entries_as_leader(
        &mut self,
        items: impl IntoIterator<Item = (EntryKind, Payload)>,
        bytes: u64,
    ) -> LogIndex {
        assert_eq!(
            self.role,
            StateRole::Leader,
            "only a leader appends on its own"
        );
        let first = self.log.last_index().next();
        let mut index = first.prev();
        let term = self.term;
        let entries: Vec<Entry> = items
            .into_iter()
            .map(|(kind, payload)| {
                index = index.next();
                Entry {
                    index,
                    term,
                    kind,
                    payload,
                }
            })
            .collect();
        self.log.append(entries);
        if bytes > 0 {
            self.uncommitted.push_back((index, bytes));
            self.uncommitted_bytes += bytes;
        }
        if let Some(progress) = self.progress.get_mut(&self.id) {
            progress.next_index = index.next();
        }
        self.broadcast_pending = true;
        first
    }

    pub(crate) fn check_proposal(&self, bytes: u64) -> Result<(), Error> {
        if self.role != StateRole::Leader {
            return Err(Error::NotLeader {
                leader: self.leader_id,
            });
        }
        if self.transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max
        {
            return Err(Error::ProposalDropped);
        }
        Ok(())
    }

    pub(crate) fn check_conf_change(&self) -> Result<(), Error> {
        if self.role != StateRole::Leader {
            return Err(Error::NotLeader {
                leader: self.leader_id,
            });
        }
        if self.transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        // One change at a time, and not before the leader committed an entry of its term
        // (the single-server change bug fix of the dissertation's errata).
        let committed = self.log.committed();
        if committed < self.term_start_index
            || self.pending_conf_index > committed
            || self.promotion.is_some()
        {
            return Err(Error::ConfChangeInProgress);
        }
        Ok(())
    }

    /// The configuration changed (appended by this leader): track the members that get the
    /// log, forget the others.
    pub(crate) fn leader_configuration_changed(&mut self) {
        let configuration = self.configuration().clone();
        let promotee = self.promotion.as_ref().map(|p| p.id);
        let next = self.log.last_index().next();
        for (id, member) in configuration.members() {
            let wanted = member.role.replicates() || Some(id) == promotee;
            if wanted && !self.progress.contains_key(&id) {
                self.insert_progress(id, next);
            }
        }
        let me = self.id;
        self.progress.retain(|id, _| {
            *id == me
                || configuration.role(*id).is_some_and(MemberRole::replicates)
                || Some(*id) == promotee
        });
        self.read_acks.retain(|id, _| configuration.is_voter(*id));
        if let Some(target) = self.transferee {
            if !configuration.is_voter(target) {
                self.transferee = None;
            }
        }
        if let Some(id) = promotee {
            if configuration.get(id).is_none() {
                self.promotion = None;
            }
        }
    }

    pub(crate) fn start_promotion(&mut self, id: NodeId) {
        self.promotion = Some(Promotion {
            id,
            round_target: self.log.last_index(),
            round_start_tick: self.leader_ticks,
            rounds: 1,
        });
        if !self.progress.contains_key(&id) {
            let next = self.log.last_index().next();
            self.insert_progress(id, next);
        }
        self.broadcast_pending = true;
        log::info!("{}: catching up {id} before promoting it to voter", self.id);
    }

    /// Promotes the promotee once a catch-up round finished within an election timeout.
    fn check_promotion(&mut self) {
        let Some(promotion) = self.promotion.clone() else {
            return;
        };
        if self.pending_conf_index > self.log.committed() || self.transferee.is_some() {
            return; // Its addition must commit first.
        }
        let Some(matched) = self.progress.get(&promotion.id).map(|p| p.match_index) else {
            self.promotion = None;
            return;
        };
        let elapsed = self.leader_ticks - promotion.round_start_tick;
        if matched >= promotion.round_target {
            if elapsed <= u64::from(self.config.election_timeout_ticks_min) {
                self.promotion = None;
                let mut configuration = self.configuration().clone();
                let Some(member) = configuration.get(promotion.id) else {
                    return;
                };
                let address = member.address.clone();
                configuration.insert(promotion.id, address, MemberRole::Voter);
                self.append_configuration(configuration);
                log::info!("{}: promoted {} to voter", self.id, promotion.id);
                return;
            }
            let rounds = promotion.rounds + 1;
            if rounds > CATCH_UP_ROUNDS_MAX {
                log::warn!(
                    "{}: {} does not catch up: promotion abandoned",
                    self.id,
                    promotion.id
                );
                self.promotion = None;
                self.leader_configuration_changed(); // A spare stops getting the log.
                return;
            }
            self.promotion = Some(Promotion {
                id: promotion.id,
                round_target: self.log.last_index(),
                round_start_tick: self.leader_ticks,
                rounds,
            });
        } else if elapsed > 8 * u64::from(self.config.election_timeout_ticks_max) {
            log::warn!(
                "{}: {} unreachable: promotion abandoned",
                self.id,
                promotion.id
            );
            self.promotion = None;
            self.leader_configuration_changed();
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.leader_ticks += 1;
        let me = self.id;
        for (id, progress) in self.progress.iter_mut() {
            if *id != me {
                progress.last_contact_ticks += 1;
                progress.append_wait_ticks += 1;
            }
        }
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks_min {
                log::info!(
                    "{}: leadership transfer to {:?} aborted",
                    self.id,
                    self.transferee
                );
                self.transferee = None;
            }
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                if !self.quorum_active() {
                    log::info!(
                        "{}: no quorum heard within an election timeout: stepping down",
                        me
                    );
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                for (id, progress) in self.progress.iter_mut() {
                    if *id != me {
                        progress.recent_active = false;
                    }
                }
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        self.check_promotion();
    }

    fn quorum_active(&self) -> bool {
        let voters = self.configuration().voter_count();
        let active = self
            .configuration()
            .voters()
            .filter(|id| *id == self.id || self.progress.get(id).is_some_and(|p| p.recent_active))
            .count();
        active > voters / 2
    }

    /// The followers tracked, in a reused buffer (the broadcast paths run for every batch of
    /// proposals and must not allocate). Give it back with `self.scratch_ids = ids`.
    fn take_follower_ids(&mut self) -> Vec<NodeId> {
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        let me = self.id;
        ids.extend(self.progress.keys().copied().filter(|id| *id != me));
        ids
    }

    pub(crate) fn broadcast_append(&mut self) {
        let ids = self.take_follower_ids();
        for id in &ids {
            self.maybe_send_append(*id, true);
        }
        self.scratch_ids = ids;
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let ids = self.take_follower_ids();
        let committed = self.log.committed();
        for &id in &ids {
            let progress = self.progress.get_mut(&id).expect("tracked");
            let mut resend = false;
            if let Some(send) = progress.snapshot.as_mut() {
                send.stalled_heartbeats += 1;
                if send.stalled_heartbeats >= SNAPSHOT_STALL_HEARTBEATS {
                    send.stalled_heartbeats = 0;
                    if let Some(offset) = send.ignored_reject.take() {
                        send.acked_offset = offset.min(send.acked_offset);
                    }
                    send.sent_offset = send.acked_offset;
                    send.last_sent = false;
                    resend = true;
                }
            }
            let mut message = Message::new(MessageKind::Heartbeat, self.id, id, self.term);
            message.commit = progress.match_index.min(committed);
            message.context = self.read_round;
            self.send(message);
            if resend {
                self.send_snapshot_chunks(id);
            }
        }
        self.scratch_ids = ids;
    }

    /// Sends the next append to `to` unless flow control pauses it. Returns whether one left.
    pub(crate) fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next_index;
        let prev = next.prev();
        let last = self.log.last_index();
        let prev_term = self.log.term(prev);
        let mut entries = Vec::new();
        let mut available = true;
        if next <= last {
            let high = LogIndex(
                last.0
                    .min(next.0 + u64::from(self.config.append_entries_max) - 1),
            )
            .next();
            available =
                self.log
                    .entries_into(next, high, self.config.append_bytes_max, &mut entries);
        }
        let (Some(prev_term), true) = (prev_term, available) else {
            // The entries this follower needs were compacted: stream the snapshot instead.
            return self.start_snapshot_send(to);
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let bytes: u64 = entries.iter().map(|e| e.payload.len() as u64).sum();
        let last_sent = entries.last().map(|e| e.index);
        let mut message = Message::new(MessageKind::Append, self.id, to, self.term);
        message.index = prev;
        message.log_term = prev_term;
        message.commit = self.log.committed();
        message.entries = entries;
        self.progress
            .get_mut(&to)
            .expect("tracked")
            .sent_append(last_sent, bytes);
        self.send(message);
        true
    }

    fn start_snapshot_send(&mut self, to: NodeId) -> bool {
        let Some(meta) = self.snapshot.clone() else {
            log::error!(
                "{}: {to} needs compacted entries but there is no snapshot",
                self.id
            );
            return false;
        };
        log::info!(
            "{}: sending snapshot {}/{} to {to}",
            self.id,
            meta.term,
            meta.index
        );
        self.progress
            .get_mut(&to)
            .expect("tracked")
            .become_snapshot(meta);
        self.send_snapshot_chunks(to);
        true
    }

    /// Sends snapshot chunks to `to` up to the in-flight limit.
    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk_bytes = u64::from(self.config.snapshot_chunk_bytes);
        let inflight_max = u64::from(self.config.snapshot_chunks_inflight_max);
        loop {
            let Some(send) = self.progress.get_mut(&to).and_then(|p| p.snapshot.as_mut()) else {
                return;
            };
            let size = send.meta.size_bytes;
            if send.last_sent {
                return;
            }
            if (send.sent_offset - send.acked_offset).div_ceil(chunk_bytes) >= inflight_max {
                return;
            }
            let length = chunk_bytes.min(size - send.sent_offset);
            let chunk = SnapshotChunk {
                meta: send.meta.clone(),
                offset: send.sent_offset,
                length: u32::try_from(length).expect("bounded by snapshot_chunk_bytes"),
                data: Payload::empty(),
            };
            send.sent_offset += length;
            send.last_sent = send.sent_offset == size;
            let mut message = Message::new(MessageKind::Snapshot, self.id, to, self.term);
            message.snapshot = Some(Box::new(chunk));
            self.send(message);
        }
    }

    /// A newer snapshot was taken and the log will start after `floor`. A stream of an older
    /// snapshot whose follower could continue from the log afterwards (its index at or above
    /// the floor) goes on: restarting it would throw away what was sent, and a host that
    /// snapshots often could keep a slow follower from ever finishing. Others restart with the
    /// new snapshot. The host keeps every snapshot [`RawNode::snapshots_in_use`] lists.
    pub(crate) fn restart_snapshot_sends(&mut self, floor: LogIndex) {
        let Some(meta) = self.snapshot.clone() else {
            return;
        };
        let ids: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| {
                p.snapshot
                    .as_ref()
                    .is_some_and(|s| s.meta.index < meta.index && s.meta.index < floor)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.progress
                .get_mut(&id)
                .expect("tracked")
                .become_snapshot(meta.clone());
            self.send_snapshot_chunks(id);
        }
    }

    /// Commits the highest index a quorum of voters holds durably, if it is of this term
    /// (Figure 8: entries of earlier terms commit only through one of the current term).
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let mut matches = std::mem::take(&mut self.scratch_indexes);
        matches.clear();
        let configuration = self.configurations.current();
        matches.extend(configuration.voters().map(|id| {
            self.progress
                .get(&id)
                .map_or(LogIndex(0), |p| p.match_index)
        }));
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matches.get(matches.len() / 2).copied();
        self.scratch_indexes = matches;
        let Some(candidate) = candidate else {
            return false;
        };
        if candidate <= self.log.committed() || self.log.term(candidate) != Some(self.term) {
            return false;
        }
        self.log.commit_to(candidate);
        self.leader_committed();
        true
    }

    fn leader_committed(&mut self) {
        let committed = self.log.committed();
        while let Some(&(index, bytes)) = self.uncommitted.front() {
            if index > committed {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= bytes;
        }
        if committed >= self.term_start_index && !self.reads_unready.is_empty() {
            let waiting: Vec<(NodeId, u64)> = self.reads_unready.drain(..).collect();
            for (from, context) in waiting {
                if self.leader_read(from, context).is_err() {
                    self.read_failed(from, context);
                }
            }
        }
        if !self.is_promotable() && committed >= self.configurations.current_index() {
            self.step_down_removed();
            return;
        }
        self.check_promotion();
    }

    /// This leader is no longer a voter and the change committed (dissertation section 4.2.2):
    /// hand over to the most up-to-date voter and step down.
    fn step_down_removed(&mut self) {
        log::info!("{}: no longer a voter: stepping down", self.id);
        if let Some(target) = self.best_transfer_target() {
            let caught_up = self
                .progress
                .get(&target)
                .is_some_and(|p| p.match_index == self.log.last_index());
            if caught_up {
                let message = Message::new(MessageKind::TimeoutNow, self.id, target, self.term);
                self.send(message);
            }
        }
        let term = self.term;
        self.become_follower(term, None);
    }

    /// The voter (other than this node) with the highest match index.
    pub(crate) fn best_transfer_target(&self) -> Option<NodeId> {
        self.configuration()
            .voters()
            .filter(|id| *id != self.id)
            .max_by_key(|id| {
                (
                    self.progress.get(id).map_or(LogIndex(0), |p| p.match_index),
                    std::cmp::Reverse(*id),
                )
            })
    }

    pub(crate) fn start_transfer(&mut self, target: NodeId) {
        if self.transferee == Some(target) {
            return;
        }
        log::info!("{}: transferring leadership to {target}", self.id);
        self.transferee = Some(target);
        self.transfer_elapsed = 0;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            let message = Message::new(MessageKind::TimeoutNow, self.id, target, self.term);
            self.send(message);
        } else {
            self.maybe_send_append(target, true);
        }
    }

    /// A read from `from` (this node or a follower): confirm leadership with a heartbeat round,
    /// then answer with the commit index at the time of the request (dissertation 6.4).
    pub(crate) fn leader_read(&mut self, from: NodeId, context: u64) -> Result<(), Error> {
        let reads_max = self.config.reads_pending_max as usize;
        if self.log.committed() < self.term_start_index {
            if self.reads_unready.len() >= reads_max {
                return Err(Error::ProposalDropped);
            }
            self.reads_unready.push_back((from, context));
            return Ok(());
        }
        if self.reads.len() >= reads_max {
            return Err(Error::ProposalDropped);
        }
        let index = self.log.committed();
        if self.configuration().voter_count() == 1 && self.is_promotable() {
            self.read_confirmed(from, index, context);
            return Ok(());
        }
        self.read_round += 1;
        self.reads.push_back(ReadRequest {
            index,
            context,
            from,
            round: self.read_round,
        });
        self.heartbeat_pending = true;
        Ok(())
    }

    fn read_failed(&mut self, from: NodeId, context: u64) {
        if from == self.id {
            self.dropped_reads.push(context);
        } else {
            let mut answer = Message::new(MessageKind::ReadIndexResponse, self.id, from, self.term);
            answer.reject = true;
            answer.context = context;
            self.send(answer);
        }
    }

    fn read_confirmed(&mut self, from: NodeId, index: LogIndex, context: u64) {
        if from == self.id {
            self.read_states_waiting.push(ReadState { index, context });
        } else {
            let mut answer = Message::new(MessageKind::ReadIndexResponse, self.id, from, self.term);
            answer.index = index;
            answer.context = context;
            self.send(answer);
        }
    }

    /// A voter acknowledged heartbeat round `round`: confirm every read of a round a quorum
    /// of voters acknowledged.
    fn read_acknowledged(&mut self, from: NodeId, round: u64) {
        if !self.is_voter(from) || self.reads.is_empty() {
            return;
        }
        let acked = self.read_acks.entry(from).or_insert(0);
        *acked = (*acked).max(round);
        let mut rounds: Vec<u64> = self
            .configuration()
            .voters()
            .map(|id| {
                if id == self.id {
                    self.read_round
                } else {
                    self.read_acks.get(&id).copied().unwrap_or(0)
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[rounds.len() / 2];
        while self.reads.front().is_some_and(|r| r.round <= confirmed) {
            let request = self.reads.pop_front().expect("non-empty");
            self.read_confirmed(request.from, request.index, request.context);
        }
    }

    /// Ticks a paused append stream waits for an answer before a heartbeat response resumes it:
    /// half the shortest election timeout, at least one heartbeat interval.
    fn append_resend_ticks(&self) -> u64 {
        u64::from((self.config.election_timeout_ticks_min / 2).max(self.config.heartbeat_ticks))
    }

    pub(crate) fn step_leader(&mut self, message: Message) {
        use MessageKind::*;
        let from = message.from;
        let mut silent_ticks = 0;
        if let Some(progress) = self.progress.get_mut(&from) {
            progress.recent_active = true;
            silent_ticks = progress.last_contact_ticks;
            progress.last_contact_ticks = 0;
        }
        match message.kind {
            AppendResponse => self.handle_append_response(message),
            HeartbeatResponse => {
                let last = self.log.last_index();
                let resend_after = self.append_resend_ticks();
                let heartbeat_ticks = u64::from(self.config.heartbeat_ticks);
                if let Some(progress) = self.progress.get_mut(&from) {
                    // A paused stream (a probe unanswered, a full window) resumes on a
                    // heartbeat response when the member was silent before it (the append
                    // may have been lost with a connection) or after half an election timeout
                    // without an answer to an append. Not on every response: with heartbeats
                    // of a few milliseconds, a member still working through a backlog would be
                    // sent another full append per heartbeat.
                    if silent_ticks > heartbeat_ticks || progress.append_wait_ticks >= resend_after
                    {
                        progress.append_wait_ticks = 0;
                        progress.probe_sent = false;
                        if progress.state == ProgressState::Replicate
                            && progress.inflights.is_full()
                        {
                            progress.inflights.free_first_one();
                        }
                    }
                    if progress.match_index < last {
                        self.maybe_send_append(from, true);
                    }
                }
                self.read_acknowledged(from, message.context);
            }
            SnapshotResponse => self.handle_snapshot_response(message),
            ReadIndex if self.leader_read(from, message.context).is_err() => {
                self.read_failed(from, message.context);
            }
            _ => {}
        }
    }

    fn handle_append_response(&mut self, message: Message) {
        let from = message.from;
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if message.reject {
            let mut next_probe = message.reject_hint;
            if message.log_term.0 > 0 {
                next_probe = self
                    .log
                    .find_conflict_by_term(message.reject_hint, message.log_term)
                    .0;
            }
            let progress = self.progress.get_mut(&from).expect("tracked");
            if progress.maybe_decrease_to(message.index, next_probe) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.maybe_send_append(from, true);
            }
            return;
        }
        if !progress.maybe_update(message.index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot => {
                let snapshot_index = progress
                    .snapshot
                    .as_ref()
                    .map_or(LogIndex(0), |s| s.meta.index);
                if progress.match_index >= snapshot_index {
                    progress.become_replicate();
                }
            }
            ProgressState::Replicate => progress.inflights.free_to(message.index),
        }
        if self.maybe_commit() {
            self.broadcast_pending = true;
        }
        if self.role != StateRole::Leader {
            return; // Stepped down (removed from the configuration).
        }
        while self.maybe_send_append(from, false) {}
        let last = self.log.last_index();
        if self.transferee == Some(from)
            && self
                .progress
                .get(&from)
                .is_some_and(|p| p.match_index == last)
        {
            let message = Message::new(MessageKind::TimeoutNow, self.id, from, self.term);
            self.send(message);
        }
        self.check_promotion();
    }

    fn handle_snapshot_response(&mut self, message: Message) {
        let from = message.from;
        let Some(send) = self
            .progress
            .get_mut(&from)
            .and_then(|p| p.snapshot.as_mut())
        else {
            return;
        };
        let offset = message.context;
        if send.meta.index != message.index || offset > send.meta.size_bytes {
            return;
        }
        if message.reject {
            // The follower holds `offset` bytes: resume from there (a chunk was lost, the
            // follower restarted and holds nothing, or a new leader resumes a transfer an old
            // one began). A rejection below what it acknowledged since, other than a restart
            // from 0, was overtaken by later answers: ignore it, or reordered rejections would
            // rewind the stream over and over.
            // Remembered, though: if no progress follows, the stall rewinds to it.
            if offset != 0 && offset < send.acked_offset {
                send.ignored_reject = Some(offset);
                return;
            }
            send.sent_offset = offset;
            send.acked_offset = offset;
            send.last_sent = false;
            send.stalled_heartbeats = 0;
            send.ignored_reject = None;
        } else if offset > send.acked_offset {
            send.acked_offset = offset;
            send.sent_offset = send.sent_offset.max(offset);
            send.stalled_heartbeats = 0;
            send.ignored_reject = None;
        }
        self.send_snapshot_chunks(from);
    }
}

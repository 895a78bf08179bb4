//! Followers: accepting appends, heartbeats and snapshot chunks from the leader (Raft paper
//! section 5.3 and 7), transfers, and read-index answers.

use atoll_storage::LogRead;

use crate::membership::Configuration;
use crate::message::{Message, MessageKind};
use crate::node::{Campaign, RawNode, SnapshotReceive};
use crate::ready::{ReadState, SnapshotInstall};
use crate::EntryKind;

impl<L: LogRead> RawNode<L> {
    pub(crate) fn step_follower(&mut self, message: Message) {
        use MessageKind::*;
        match message.kind {
            Append | Heartbeat | Snapshot => {
                self.election_elapsed = 0;
                self.leader_id = Some(message.from);
                match message.kind {
                    Append => self.handle_append(message),
                    Heartbeat => self.handle_heartbeat(message),
                    _ => self.handle_snapshot(message),
                }
            }
            TimeoutNow if self.may_campaign() => {
                log::info!("{}: leadership transfer from {}", self.id, message.from);
                self.campaign_now(Campaign::Transfer);
            }
            ReadIndexResponse => {
                if message.reject {
                    self.dropped_reads.push(message.context);
                } else {
                    self.read_states_waiting.push(ReadState {
                        index: message.index,
                        context: message.context,
                    });
                }
            }
            ReadIndex => {
                // Not the leader (any more): the asker retries elsewhere.
                let mut answer = Message::new(ReadIndexResponse, self.id, message.from, self.term);
                answer.reject = true;
                answer.context = message.context;
                self.send(answer);
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, message: Message) {
        let committed = self.log.committed();
        if message.index < committed {
            // Everything up to our commit index matches the leader's log already.
            let mut answer = Message::new(
                MessageKind::AppendResponse,
                self.id,
                message.from,
                self.term,
            );
            answer.index = committed;
            self.send(answer);
            return;
        }
        // Configuration entries are rare: set them aside (no allocation without one) before
        // the entries move into the log.
        let configurations: Vec<(crate::LogIndex, Configuration)> = message
            .entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::Configuration)
            .map(|entry| {
                let configuration =
                    Configuration::decode(&entry.payload).expect("validated before stepping");
                (entry.index, configuration)
            })
            .collect();
        match self.log.maybe_append(
            message.index,
            message.log_term,
            message.commit,
            message.entries,
        ) {
            Some((last_new, written)) => {
                if let Some(first_written) = written {
                    self.configurations.truncate_from(first_written);
                    for (index, configuration) in configurations {
                        if index >= first_written {
                            self.apply_configuration(index, configuration);
                        }
                    }
                }
                let mut answer = Message::new(
                    MessageKind::AppendResponse,
                    self.id,
                    message.from,
                    self.term,
                );
                answer.index = last_new;
                self.send(answer);
            }
            None => {
                // Fast backtracking: our last entry at or below the probe whose term is at most
                // the leader's, so the leader skips whole terms instead of single entries.
                let probe = message.index.min(self.log.last_index());
                let (hint_index, hint_term) =
                    self.log.find_conflict_by_term(probe, message.log_term);
                let mut answer = Message::new(
                    MessageKind::AppendResponse,
                    self.id,
                    message.from,
                    self.term,
                );
                answer.index = message.index;
                answer.reject = true;
                answer.reject_hint = hint_index;
                answer.log_term = hint_term;
                self.send(answer);
            }
        }
    }

    fn handle_heartbeat(&mut self, message: Message) {
        // The leader caps the commit index at our match index, which we hold durably; a
        // commit beyond our log was refused in `validate_message`.
        self.log
            .commit_to(message.commit.min(self.log.last_index()));
        let mut answer = Message::new(
            MessageKind::HeartbeatResponse,
            self.id,
            message.from,
            self.term,
        );
        answer.context = message.context;
        self.send(answer);
    }

    fn handle_snapshot(&mut self, message: Message) {
        let chunk = *message
            .snapshot
            .expect("validated: a snapshot message has a chunk");
        let meta = chunk.meta.clone();
        let committed = self.log.committed();
        if meta.index <= committed {
            // We have it all already (a duplicate, or we caught up another way).
            let mut answer = Message::new(
                MessageKind::AppendResponse,
                self.id,
                message.from,
                self.term,
            );
            answer.index = committed;
            self.send(answer);
            return;
        }
        if self.snapshot_install.is_some() {
            // One install per ready: the host ends that snapshot's bytes before another begins.
            // The leader resends this chunk when it sees no progress.
            return;
        }
        let same = matches!(&self.snapshot_receive, Some(receive) if receive.meta == meta);
        if !same {
            if chunk.offset != 0 {
                self.send_snapshot_response(message.from, meta.index, 0, true);
                return;
            }
            // A chunk at offset 0 starts a new incoming snapshot (the host starts a new file).
            self.snapshot_receive = Some(SnapshotReceive {
                meta: meta.clone(),
                offset: 0,
                from: message.from,
                handed: false,
            });
        }
        let receive = self.snapshot_receive.as_mut().expect("set above");
        if chunk.offset != receive.offset {
            // A duplicate (behind us) only reports progress; a gap (ahead of us: a chunk was
            // lost or overtaken) asks the leader to resume from what we hold.
            let offset = receive.offset;
            let gap = chunk.offset > offset;
            self.send_snapshot_response(message.from, meta.index, offset, gap);
            return;
        }
        receive.offset += u64::from(chunk.length);
        receive.from = message.from;
        let offset = receive.offset;
        self.snapshot_chunks.push(chunk);
        self.send_snapshot_response(message.from, meta.index, offset, false);
    }

    /// Installs the snapshot received whole, in raft's view, once the ready that handed out
    /// its last chunk was handled (the host stored every byte before calling raft again):
    /// the log restarts after it and the leader is told it holds everything through it. A
    /// snapshot the log has caught up with meanwhile is dropped.
    pub(crate) fn install_received_snapshot(&mut self) {
        let receive = self.snapshot_receive.take().expect("checked by the caller");
        assert!(receive.handed && receive.complete());
        let meta = receive.meta;
        if meta.index <= self.log.committed() {
            return;
        }
        let keep = self.log.restore(meta.index, meta.term);
        let keep_later = keep || self.log.last_index() > meta.index;
        self.configurations
            .restore(meta.index, meta.configuration.clone(), keep_later);
        log::info!(
            "{}: installing snapshot {}/{} (keep log: {keep})",
            self.id,
            meta.term,
            meta.index
        );
        let index = meta.index;
        self.snapshot_install = Some(SnapshotInstall {
            meta,
            keep_log: keep,
        });
        let mut answer = Message::new(
            MessageKind::AppendResponse,
            self.id,
            receive.from,
            self.term,
        );
        answer.index = index;
        self.send(answer);
    }

    fn send_snapshot_response(
        &mut self,
        to: crate::NodeId,
        index: crate::LogIndex,
        offset: u64,
        reject: bool,
    ) {
        let mut answer = Message::new(MessageKind::SnapshotResponse, self.id, to, self.term);
        answer.index = index;
        answer.context = offset;
        answer.reject = reject;
        self.send(answer);
    }
}

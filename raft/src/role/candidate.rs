//! Pre-candidates and candidates: campaigning and counting votes (Raft paper section 5.2,
//! dissertation section 9.6 for pre-vote).

use atoll_storage::LogRead;

use crate::message::{Message, MessageKind, CAMPAIGN_TRANSFER};
use crate::node::{Campaign, RawNode, StateRole, VoteResult};
use crate::{NodeId, Term};

impl<L: LogRead> RawNode<L> {
    /// Starts a campaign of `kind`, if this node is a voter.
    pub(crate) fn campaign_now(&mut self, kind: Campaign) {
        if !self.may_campaign() {
            return;
        }
        assert_ne!(self.role, StateRole::Leader, "a leader does not campaign");
        let (vote_kind, vote_term) = match kind {
            Campaign::PreElection => {
                self.become_pre_candidate();
                (MessageKind::PreVote, Term(self.term.0 + 1))
            }
            Campaign::Election | Campaign::Transfer => {
                self.become_candidate();
                (MessageKind::Vote, self.term)
            }
        };
        if self.poll(self.id, true) == VoteResult::Won {
            // A single voter wins at once.
            match kind {
                Campaign::PreElection => self.campaign_now(Campaign::Election),
                _ => self.become_leader(),
            }
            return;
        }
        let voters: Vec<NodeId> = self
            .configuration()
            .voters()
            .filter(|id| *id != self.id)
            .collect();
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        for to in voters {
            let mut message = Message::new(vote_kind, self.id, to, vote_term);
            message.index = last_index;
            message.log_term = last_term;
            if kind == Campaign::Transfer {
                message.context = CAMPAIGN_TRANSFER;
            }
            self.send(message);
        }
    }

    fn become_pre_candidate(&mut self) {
        // The term and vote stay: a pre-vote round changes nothing durable.
        let term = self.term;
        self.reset(term);
        self.role = StateRole::PreCandidate;
        log::debug!("{}: pre-candidate in term {}", self.id, self.term);
    }

    fn become_candidate(&mut self) {
        let term = Term(self.term.0 + 1);
        self.reset(term);
        self.vote = Some(self.id);
        self.role = StateRole::Candidate;
        log::debug!("{}: candidate in term {}", self.id, self.term);
    }

    /// Records `id`'s answer (the first one counts) and tallies the voters' answers.
    pub(crate) fn poll(&mut self, id: NodeId, granted: bool) -> VoteResult {
        self.votes.entry(id).or_insert(granted);
        let voters: Vec<NodeId> = self.configuration().voters().collect();
        let quorum = voters.len() / 2 + 1;
        let granted = voters
            .iter()
            .filter(|id| self.votes.get(id) == Some(&true))
            .count();
        let rejected = voters
            .iter()
            .filter(|id| self.votes.get(id) == Some(&false))
            .count();
        if granted >= quorum {
            VoteResult::Won
        } else if rejected > voters.len() - quorum {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    pub(crate) fn step_candidate(&mut self, message: Message) {
        use MessageKind::*;
        match message.kind {
            Append | Heartbeat | Snapshot => {
                // A leader exists in our term (or a later one): follow it.
                self.become_follower(message.term, Some(message.from));
                self.step_follower(message);
            }
            PreVoteResponse | VoteResponse => {
                let expected = match self.role {
                    StateRole::PreCandidate => PreVoteResponse,
                    _ => VoteResponse,
                };
                if message.kind != expected || !self.is_voter(message.from) {
                    return;
                }
                match self.poll(message.from, !message.reject) {
                    VoteResult::Won if self.role == StateRole::PreCandidate => {
                        self.campaign_now(Campaign::Election)
                    }
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, None);
                    }
                    VoteResult::Pending => {}
                }
            }
            ReadIndexResponse => self.step_follower(message),
            _ => {}
        }
    }
}

//! Linearizable reads (ReadIndex). A query is answered only after raft confirmed, with a
//! heartbeat round a quorum acknowledged, that this node still led when the query arrived, and
//! after the node applied everything committed by then: a leader cut off from its quorum stops
//! answering (its reads are dropped when check-quorum deposes it), and no answer reflects less
//! than what was acknowledged before the query was sent.
//!
//! The queries of one loop turn share one read index (one heartbeat round for all of them).
//! On a connection opened with atoll's follower-reads flag, a follower does the same through
//! the leader (`MsgReadIndex`): it waits until it has applied the leader's commit index, then
//! reads its own databases.

use std::time::{Duration, Instant};

use atoll_net::protocol::Request;
use atoll_net::reactor::ConnId;
use atoll_raft::LogIndex;
use log::debug;

use super::values;
use super::Node;

/// Queries whose read index was asked together.
struct Batch {
    context: u64,
    asked_at: Instant,
    requests: Vec<(ConnId, Request)>,
}

/// The reads of the current turn and those waiting for their read index.
#[derive(Default)]
pub(super) struct Reads {
    /// Queries gathered this turn (and follower reads waiting for a leader to be known), with
    /// when they arrived; one read index is asked for all of them at the turn's end.
    gathered: Vec<(ConnId, Request, Instant)>,
    /// Batches waiting for raft (oldest first).
    waiting: Vec<Batch>,
    context_last: u64,
}

impl Reads {
    /// A query that waits for the turn's read index.
    pub(super) fn gather(&mut self, conn: ConnId, request: Request, now: Instant) {
        self.gathered.push((conn, request, now));
    }

    /// Forgets the queries of a closed connection.
    pub(super) fn forget(&mut self, conn: ConnId) {
        self.gathered.retain(|(c, _, _)| *c != conn);
        for batch in &mut self.waiting {
            batch.requests.retain(|(c, _)| *c != conn);
        }
    }
}

impl Node {
    /// How long a read may wait for its read index before it is refused with "not leader"
    /// (nothing happened; the client retries elsewhere): a follower whose leader died, or a
    /// leader that lost its quorum and has not noticed yet.
    fn read_wait_max(&self) -> Duration {
        (self.tick * self.config.election_ticks_max * 4).max(Duration::from_millis(500))
    }

    /// Asks raft for one read index for every query gathered this turn.
    pub(super) fn request_read_index(&mut self) {
        if self.reads.gathered.is_empty() {
            return;
        }
        let gathered = std::mem::take(&mut self.reads.gathered);
        let asked_at = gathered
            .iter()
            .map(|(_, _, at)| *at)
            .min()
            .unwrap_or_else(|| self.clock.now());
        self.reads.context_last += 1;
        let context = self.reads.context_last;
        match self.raft.read_index(context) {
            Ok(()) => {
                debug!("read index {context} asked for {} queries", gathered.len());
                self.reads.waiting.push(Batch {
                    context,
                    asked_at,
                    requests: gathered.into_iter().map(|(c, r, _)| (c, r)).collect(),
                });
            }
            Err(atoll_raft::Error::NotLeader { leader: None })
                if self.raft.role() != atoll_raft::StateRole::Leader =>
            {
                // A follower between leaders (an election, or a pre-vote it lost: it learns
                // the leader again with the next heartbeat). Its follower reads wait for one,
                // within the same bound as any read.
                self.reads.gathered = gathered;
            }
            Err(e) => {
                let requests: Vec<_> = gathered.into_iter().map(|(c, r, _)| (c, r)).collect();
                debug!("read index refused: {e}");
                let refusal = match e {
                    atoll_raft::Error::ProposalDropped => (
                        values::CODE_BUSY,
                        "too many reads waiting; try again".to_owned(),
                    ),
                    _ => (values::CODE_NOT_LEADER, "not leader".to_owned()),
                };
                for (conn, _) in requests {
                    self.refuse(conn, refusal.clone());
                }
            }
        }
    }

    /// Raft confirmed read `context` at `index`, which is applied: run its queries.
    pub(super) fn read_confirmed(&mut self, context: u64, index: LogIndex) {
        let Some(position) = self.reads.waiting.iter().position(|b| b.context == context) else {
            return; // Expired meanwhile.
        };
        let batch = self.reads.waiting.remove(position);
        debug_assert!(self.raft.applied() >= index);
        for (conn, request) in batch.requests {
            self.serve_request(conn, request, true);
        }
    }

    /// Raft dropped read `context` (leadership lost, or the leader refused): nothing ran.
    pub(super) fn read_dropped(&mut self, context: u64) {
        let Some(position) = self.reads.waiting.iter().position(|b| b.context == context) else {
            return;
        };
        let batch = self.reads.waiting.remove(position);
        for (conn, _) in batch.requests {
            self.refuse(conn, (values::CODE_NOT_LEADER, "not leader".to_owned()));
        }
    }

    /// Refuses the reads that waited too long for their read index.
    pub(super) fn expire_reads(&mut self) {
        let wait_max = self.read_wait_max();
        let now = self.clock.now();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.gathered)
            .into_iter()
            .partition(|(_, _, at)| now.saturating_duration_since(*at) > wait_max);
        self.reads.gathered = kept;
        for (conn, _, _) in expired {
            self.refuse(conn, (values::CODE_NOT_LEADER, "not leader".to_owned()));
        }
        while self
            .reads
            .waiting
            .first()
            .is_some_and(|b| now.saturating_duration_since(b.asked_at) > wait_max)
        {
            let batch = self.reads.waiting.remove(0);
            debug!(
                "read index {} not confirmed within {wait_max:?}: {} queries refused",
                batch.context,
                batch.requests.len()
            );
            for (conn, _) in batch.requests {
                self.refuse(conn, (values::CODE_NOT_LEADER, "not leader".to_owned()));
            }
        }
    }
}

//! Paper tests: each checks one rule of the Raft paper ("In Search of an Understandable
//! Consensus Algorithm", extended version) and cites its section, as etcd's
//! `raft_paper_test.go` does. They step single nodes of a hand-driven [`Network`] and look at
//! the exact state and messages that result.

use atoll_raft::sim::network::Network;
use atoll_raft::{
    Entry, EntryKind, LogIndex, Message, MessageKind, NodeId, Payload, StateRole, Term,
};

fn classic(config: &mut atoll_raft::Config) {
    config.pre_vote = false;
    config.check_quorum = false;
}

fn message(kind: MessageKind, from: u64, to: u64, term: u64) -> Message {
    Message::new(kind, NodeId(from), NodeId(to), Term(term))
}

fn elect(network: &mut Network, id: u64) {
    network.node_mut(id).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(id).role(), StateRole::Leader);
}

/// The messages node `id` sent since the last call (it handles its ready first).
fn sent(network: &mut Network, id: u64) -> Vec<Message> {
    network.process(id);
    let (mine, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut network.pending)
        .into_iter()
        .partition(|m| m.from.0 == id);
    network.pending = rest;
    mine
}

/// Section 5.1: "If a server receives a request with a stale term number, it rejects it";
/// "if one server's current term is smaller than the other's, then it updates its current term
/// to the larger value. If a candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state."
#[test]
fn test_5_1_a_higher_term_turns_a_leader_into_a_follower() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    let term = network.node(1).term().0;
    let append = message(MessageKind::Append, 2, 1, term + 1);
    network.node_mut(1).step(append).unwrap();
    assert_eq!(network.node(1).role(), StateRole::Follower);
    assert_eq!(network.node(1).term(), Term(term + 1));
    assert_eq!(network.node(1).leader_id(), Some(NodeId(2)));
}

/// Section 5.1: a stale leader's append is refused, and the answer carries the newer term so
/// that the stale leader steps down.
#[test]
fn test_5_1_stale_term_appends_are_refused() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    elect(&mut network, 2);
    let term = network.node(2).term().0;
    let last = network.node(2).last_index();
    let mut append = message(MessageKind::Append, 3, 2, term - 1);
    append.index = LogIndex(1);
    append.log_term = Term(1);
    append.entries = vec![Entry {
        index: LogIndex(2),
        term: Term(term - 1),
        kind: EntryKind::Command,
        payload: Payload::from(&b"stale"[..]),
    }];
    network.node_mut(2).step(append).unwrap();
    assert_eq!(network.node(2).last_index(), last);
    let answers = sent(&mut network, 2);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].kind, MessageKind::AppendResponse);
    assert_eq!(answers[0].term, Term(term));
}

/// Section 5.2: "If a follower receives no communication over a period of time called the
/// election timeout, then it ... begins an election": it increments its term, votes for itself
/// and sends RequestVote to every other server, with its last log index and term (5.4.1).
#[test]
fn test_5_2_follower_starts_an_election_after_its_timeout() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    let term = network.node(1).term();
    let timeout = network.config(NodeId(1)).election_timeout_ticks_max;
    for _ in 0..timeout {
        network.node_mut(1).tick();
        if network.node(1).role() == StateRole::Candidate {
            break;
        }
    }
    assert_eq!(network.node(1).role(), StateRole::Candidate);
    assert_eq!(network.node(1).term(), Term(term.0 + 1));
    assert_eq!(network.node(1).vote(), Some(NodeId(1)));
    let votes = sent(&mut network, 1);
    let mut recipients: Vec<u64> = votes.iter().map(|m| m.to.0).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, vec![2, 3]);
    for vote in votes {
        assert_eq!(vote.kind, MessageKind::Vote);
        assert_eq!(vote.term, Term(term.0 + 1));
        assert_eq!(vote.index, LogIndex(1));
        assert_eq!(vote.log_term, Term(1));
    }
}

/// Section 5.2: "A candidate wins an election if it receives votes from a majority of the
/// servers in the full cluster": with 2 of 5 down a candidate still wins; with 3 down it cannot.
#[test]
fn test_5_2_a_majority_elects_a_leader() {
    let mut network = Network::with_config(&[1, 2, 3, 4, 5], classic);
    network.crash(4);
    network.crash(5);
    elect(&mut network, 1);
    let mut network = Network::with_config(&[1, 2, 3, 4, 5], classic);
    for id in [3, 4, 5] {
        network.crash(id);
    }
    network.node_mut(1).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(1).role(), StateRole::Candidate);
}

/// Section 5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis."
#[test]
fn test_5_2_one_vote_per_term_first_come_first_served() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    for candidate in [2, 3] {
        let mut vote = message(MessageKind::Vote, candidate, 1, 5);
        vote.index = LogIndex(1);
        vote.log_term = Term(1);
        network.node_mut(1).step(vote).unwrap();
    }
    let answers = sent(&mut network, 1);
    assert_eq!(answers.len(), 2);
    assert_eq!((answers[0].to.0, answers[0].reject), (2, false));
    assert_eq!((answers[1].to.0, answers[1].reject), (3, true));
    assert_eq!(network.node(1).vote(), Some(NodeId(2)));
}

/// Section 5.2: "If the AppendEntries RPC is from another server claiming to be leader and the
/// leader's term is at least as large as the candidate's current term, then the candidate
/// recognizes the leader as legitimate and returns to follower state."
#[test]
fn test_5_2_candidate_follows_a_leader_of_its_term() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    network.node_mut(1).campaign().unwrap();
    let term = network.node(1).term().0;
    let mut append = message(MessageKind::Append, 2, 1, term);
    append.index = LogIndex(1);
    append.log_term = Term(1);
    network.node_mut(1).step(append).unwrap();
    assert_eq!(network.node(1).role(), StateRole::Follower);
    assert_eq!(network.node(1).leader_id(), Some(NodeId(2)));
}

/// Section 5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
/// candidate" (later last term, or same term and longer).
#[test]
fn test_5_4_1_voters_deny_less_up_to_date_candidates() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    network.propose(1, b"x").unwrap();
    network.stabilize();
    let last = network.node(2).last_index();
    let last_term = network.node(2).log_term(last).unwrap();
    let term = network.node(2).term().0 + 1;
    let cases = [
        (last.0 - 1, last_term.0, true),
        (last.0, last_term.0 - 1, true),
        (last.0, last_term.0, false),
        (last.0 + 5, last_term.0, false),
    ];
    for (position, (index, log_term, rejected)) in cases.into_iter().enumerate() {
        let mut vote = message(MessageKind::Vote, 3, 2, term + position as u64);
        vote.index = LogIndex(index);
        vote.log_term = Term(log_term);
        network.node_mut(2).step(vote).unwrap();
        let answers = sent(&mut network, 2);
        let answer = answers
            .iter()
            .find(|m| m.kind == MessageKind::VoteResponse)
            .unwrap();
        assert_eq!(answer.reject, rejected, "candidate log {log_term}/{index}");
    }
}

/// Section 5.3: "If an existing entry conflicts with a new one (same index but different
/// terms), delete the existing entry and all that follow it"; and a follower refuses entries
/// whose previous entry it does not hold, hinting where to retry.
#[test]
fn test_5_3_followers_check_the_previous_entry_and_truncate_conflicts() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    let entry = |index: u64, term: u64, data: &'static [u8]| Entry {
        index: LogIndex(index),
        term: Term(term),
        kind: EntryKind::Command,
        payload: Payload::from(data),
    };
    let mut append = message(MessageKind::Append, 2, 1, 2);
    append.index = LogIndex(1);
    append.log_term = Term(1);
    append.entries = vec![entry(2, 2, b"a"), entry(3, 2, b"b")];
    network.node_mut(1).step(append).unwrap();
    assert_eq!(network.node(1).last_index(), LogIndex(3));
    // A gap: the previous entry (5) is missing; refused with a hint at our last entry.
    let mut gap = message(MessageKind::Append, 2, 1, 2);
    gap.index = LogIndex(5);
    gap.log_term = Term(2);
    network.node_mut(1).step(gap).unwrap();
    let answers = sent(&mut network, 1);
    let refusal = answers.iter().find(|m| m.reject).unwrap();
    assert_eq!(refusal.reject_hint, LogIndex(3));
    // A new leader of term 3 overwrites entry 3.
    let mut overwrite = message(MessageKind::Append, 3, 1, 3);
    overwrite.index = LogIndex(2);
    overwrite.log_term = Term(2);
    overwrite.entries = vec![entry(3, 3, b"c")];
    network.node_mut(1).step(overwrite).unwrap();
    assert_eq!(network.node(1).log_term(LogIndex(3)), Some(Term(3)));
    network.process(1);
    assert_eq!(network.node(1).log_term(LogIndex(3)), Some(Term(3)));
}

/// Section 5.3: "A log entry is committed once the leader that created the entry has
/// replicated it on a majority of the servers", and followers learn the commit index from
/// later appends and heartbeats.
#[test]
fn test_5_3_leader_commits_on_a_majority_and_followers_learn_it() {
    let mut network = Network::with_config(&[1, 2, 3, 4, 5], classic);
    elect(&mut network, 1);
    network.isolate(4);
    network.isolate(5);
    let index = network.propose(1, b"x").unwrap();
    network.stabilize();
    assert!(network.node(1).commit_index() >= index);
    network.tick(1, 1);
    network.stabilize();
    for id in [2, 3] {
        assert!(network.node(id).commit_index() >= index);
    }
    network.isolate(3);
    let index = network.propose(1, b"y").unwrap();
    network.stabilize();
    assert!(
        network.node(1).commit_index() < index,
        "2 of 5 is not a majority"
    );
}

/// Section 5.4.2 and 8: a new leader commits entries of earlier terms only through an entry
/// of its own term, so it appends a no-op as soon as it is elected.
#[test]
fn test_8_a_new_leader_appends_a_no_op() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    let last = network.node(1).last_index();
    let noop = &network.nodes[&NodeId(1)].applied.last().unwrap().clone();
    assert_eq!(noop.index, last);
    assert_eq!(noop.kind, EntryKind::Noop);
    assert_eq!(noop.term, network.node(1).term());
}

/// Section 5.2 (heartbeats): "Leaders send periodic heartbeats (AppendEntries RPCs that carry
/// no log entries) to all followers in order to maintain their authority."
#[test]
fn test_5_2_leader_sends_heartbeats_every_interval() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    sent(&mut network, 1);
    let interval = network.config(NodeId(1)).heartbeat_ticks;
    for _ in 0..interval {
        network.node_mut(1).tick();
    }
    let heartbeats: Vec<u64> = sent(&mut network, 1)
        .iter()
        .filter(|m| m.kind == MessageKind::Heartbeat)
        .map(|m| m.to.0)
        .collect();
    assert_eq!(heartbeats, vec![2, 3]);
}

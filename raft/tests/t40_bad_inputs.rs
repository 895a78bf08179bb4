//! Bad input gets a clear error and changes nothing: misaddressed or malformed messages,
//! requests to the wrong node, impossible membership changes, limits reached.

use atoll_raft::sim::network::Network;
use atoll_raft::{
    Config, Entry, EntryKind, Error, HardState, LogIndex, MemberRole, Message, MessageKind, NodeId,
    Payload, RawNode, StateRole, Term,
};
use atoll_storage::MemLog;

fn elected() -> Network {
    let mut network = Network::new(&[1, 2, 3]);
    network.node_mut(1).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(1).role(), StateRole::Leader);
    network
}

fn append(from: u64, to: u64, term: Term, entries: Vec<Entry>) -> Message {
    let mut message = Message::new(MessageKind::Append, NodeId(from), NodeId(to), term);
    message.index = LogIndex(2);
    message.log_term = term;
    message.entries = entries;
    message
}

#[test]
fn test_malformed_messages_are_refused_whole() {
    let mut network = elected();
    let term = network.node(2).term();
    let before = (network.node(2).last_index(), network.node(2).commit_index());
    let entry = |index: u64, kind: EntryKind, payload: &[u8]| Entry {
        index: LogIndex(index),
        term,
        kind,
        payload: Payload::from(payload),
    };
    let cases = [
        // Addressed to node 3.
        append(1, 3, term, vec![]),
        // Entries with a gap.
        append(
            1,
            2,
            term,
            vec![
                entry(3, EntryKind::Command, b"a"),
                entry(5, EntryKind::Command, b"b"),
            ],
        ),
        // A configuration entry that does not decode.
        append(
            1,
            2,
            term,
            vec![entry(3, EntryKind::Configuration, b"\x07junk")],
        ),
        // An entry from a later term than the message's.
        append(
            1,
            2,
            term,
            vec![Entry {
                term: Term(term.0 + 1),
                ..entry(3, EntryKind::Noop, b"")
            }],
        ),
        // Entries in a heartbeat.
        Message {
            entries: vec![entry(3, EntryKind::Command, b"a")],
            ..Message::new(MessageKind::Heartbeat, NodeId(1), NodeId(2), term)
        },
    ];
    for (position, message) in cases.into_iter().enumerate() {
        let outcome = network.node_mut(2).step(message);
        assert!(
            matches!(outcome, Err(Error::InvalidMessage(_))),
            "case {position}: {outcome:?}"
        );
        assert_eq!(
            (network.node(2).last_index(), network.node(2).commit_index()),
            before
        );
        assert!(!network.node(2).has_ready() || network.process(2).is_empty());
    }
}

#[test]
fn test_requests_on_the_wrong_node_or_out_of_bounds_are_refused() {
    let mut network = elected();
    assert!(matches!(
        network.propose(2, b"x"),
        Err(Error::NotLeader {
            leader: Some(NodeId(1))
        })
    ));
    assert!(matches!(
        network.node_mut(2).add(NodeId(9), "n9", MemberRole::Voter),
        Err(Error::NotLeader { .. })
    ));
    let leader = network.node_mut(1);
    let long = "x".repeat(300);
    assert!(matches!(
        leader.add(NodeId(9), &long, MemberRole::Spare),
        Err(Error::InvalidConfChange(_))
    ));
    assert!(matches!(
        leader.add(NodeId(2), "n2", MemberRole::Spare),
        Err(Error::InvalidConfChange(_))
    ));
    assert!(matches!(
        leader.add(NodeId(0), "n0", MemberRole::Spare),
        Err(Error::InvalidConfChange(_))
    ));
    assert!(matches!(
        leader.remove(NodeId(9)),
        Err(Error::UnknownNode(NodeId(9)))
    ));
    assert!(matches!(
        leader.transfer_leadership(Some(NodeId(9))),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        leader.snapshot_taken(LogIndex(99), 1),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        leader.propose_batch(vec![]),
        Err(Error::InvalidRequest(_))
    ));
    // Shrinking to one voter works; removing that last one does not.
    leader.remove(NodeId(3)).unwrap();
    network.stabilize();
    network.node_mut(1).remove(NodeId(2)).unwrap();
    network.stabilize();
    let leader = network.node_mut(1);
    assert_eq!(leader.configuration().voter_count(), 1);
    assert!(matches!(
        leader.remove(NodeId(1)),
        Err(Error::InvalidConfChange(_))
    ));
    assert!(matches!(
        leader.assign(NodeId(1), MemberRole::Standby),
        Err(Error::InvalidConfChange(_))
    ));
}

#[test]
fn test_backpressure_drops_proposals_and_reads_past_their_limits() {
    let mut network = Network::with_config(&[1, 2, 3], |config| {
        config.uncommitted_bytes_max = 100;
        config.reads_pending_max = 2;
    });
    network.node_mut(1).campaign().unwrap();
    network.stabilize();
    network.isolate(2);
    network.isolate(3);
    network.propose(1, &[0u8; 60]).unwrap();
    assert!(matches!(
        network.propose(1, &[0u8; 60]),
        Err(Error::ProposalDropped)
    ));
    network.node_mut(1).read_index(1).unwrap();
    network.node_mut(1).read_index(2).unwrap();
    assert!(matches!(
        network.node_mut(1).read_index(3),
        Err(Error::ProposalDropped)
    ));
    network.heal();
    network.stabilize();
    network.propose(1, &[0u8; 60]).unwrap();
}

#[test]
fn test_invalid_configs_and_logs_are_refused_at_construction() {
    let mut config = Config::new(NodeId(1));
    config.election_timeout_ticks_max = config.election_timeout_ticks_min;
    let outcome = RawNode::new(
        config,
        MemLog::new(),
        HardState::default(),
        None,
        LogIndex(0),
    );
    assert!(matches!(outcome, Err(Error::InvalidRequest(_))));
    let outcome = RawNode::new(
        Config::new(NodeId(1)),
        MemLog::new(),
        HardState::default(),
        None,
        LogIndex(5),
    );
    assert!(matches!(outcome, Err(Error::InvalidRequest(_))));
    // A node with no configuration is not a voter: it never campaigns on its own.
    let mut node = RawNode::new(
        Config::new(NodeId(1)),
        MemLog::new(),
        HardState::default(),
        None,
        LogIndex(0),
    )
    .unwrap();
    for _ in 0..100 {
        node.tick();
    }
    assert_eq!(node.role(), StateRole::Follower);
    assert!(matches!(node.campaign(), Err(Error::InvalidRequest(_))));
}

/// A host may snapshot without bringing its state machine's durable state up to the snapshot
/// (atoll snapshots its databases without a checkpoint) and compact no further than that
/// state. Restarted behind its snapshot, with the log holding every entry after what it
/// applied, it gets those entries again, as committed; without them, the snapshot is its
/// state (the host installs it).
#[test]
fn test_a_host_behind_its_own_snapshot_replays_the_entries_it_kept() {
    use atoll_storage::LogStore;
    let mut configuration = atoll_raft::Configuration::new();
    configuration.insert(NodeId(1), "n1", MemberRole::Voter);
    configuration.insert(NodeId(2), "n2", MemberRole::Voter);
    let log = |first: u64| {
        let mut log = MemLog::new();
        let mut entries = vec![atoll_raft::bootstrap_entry(&configuration)];
        entries.extend((2..=10).map(|index| Entry {
            index: LogIndex(index),
            term: Term(1),
            kind: EntryKind::Command,
            payload: Payload::from_vec(vec![index as u8]),
        }));
        log.append(&entries).unwrap();
        log.sync().unwrap();
        if first > 1 {
            log.compact_through(LogIndex(first - 1), Term(1)).unwrap();
        }
        log
    };
    let snapshot = atoll_raft::SnapshotMeta {
        index: LogIndex(8),
        term: Term(1),
        size_bytes: 100,
        configuration: configuration.clone(),
    };
    let hard_state = HardState {
        term: Term(1),
        vote: None,
    };
    // The log kept everything after index 3: entries 4..=8 are handed out again.
    let mut node = RawNode::new(
        Config::new(NodeId(1)),
        log(4),
        hard_state,
        Some(snapshot.clone()),
        LogIndex(3),
    )
    .unwrap();
    assert_eq!(node.applied(), LogIndex(3));
    assert_eq!(node.commit_index(), LogIndex(8));
    let ready = node.ready();
    let handed: Vec<u64> = ready.committed_entries.iter().map(|e| e.index.0).collect();
    assert_eq!(handed, vec![4, 5, 6, 7, 8]);
    node.advance(&ready);
    assert_eq!(node.applied(), LogIndex(8));
    // Entry 4 is gone: the snapshot stands for everything through 8.
    let mut node = RawNode::new(
        Config::new(NodeId(1)),
        log(5),
        hard_state,
        Some(snapshot),
        LogIndex(3),
    )
    .unwrap();
    assert_eq!(node.applied(), LogIndex(8));
    assert!(node.ready().committed_entries.is_empty());
}

/// A log that starts failing reads on demand.
struct FlakyLog {
    inner: MemLog,
    failing: std::cell::Cell<bool>,
}

impl atoll_storage::LogRead for FlakyLog {
    fn first_index(&self) -> LogIndex {
        self.inner.first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.inner.last_index()
    }

    fn term(&self, index: LogIndex) -> std::io::Result<Option<Term>> {
        if self.failing.get() {
            return Err(std::io::Error::other("injected read failure"));
        }
        self.inner.term(index)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
        out: &mut Vec<Entry>,
    ) -> std::io::Result<()> {
        if self.failing.get() {
            return Err(std::io::Error::other("injected read failure"));
        }
        self.inner.entries(low, high, bytes_max, out)
    }
}

/// A failed log read is fatal and sticky: every later request reports it, so the host stops
/// the node instead of running on a state built from a read that did not happen.
#[test]
fn test_a_failed_log_read_is_sticky() {
    use atoll_storage::LogStore;
    let mut configuration = atoll_raft::Configuration::new();
    configuration.insert(NodeId(1), "n1", MemberRole::Voter);
    configuration.insert(NodeId(2), "n2", MemberRole::Voter);
    let mut inner = MemLog::new();
    inner
        .append(&[atoll_raft::bootstrap_entry(&configuration)])
        .unwrap();
    inner.sync().unwrap();
    let log = FlakyLog {
        inner,
        failing: std::cell::Cell::new(false),
    };
    let mut node = RawNode::new(
        Config::new(NodeId(1)),
        log,
        HardState::default(),
        None,
        LogIndex(0),
    )
    .unwrap();
    node.log().failing.set(true);
    let mut vote = Message::new(MessageKind::Vote, NodeId(2), NodeId(1), Term(5));
    vote.index = LogIndex(1);
    vote.log_term = Term(1);
    assert!(matches!(node.step(vote), Err(Error::Storage(_))));
    node.log().failing.set(false);
    assert!(node.storage_error().is_some());
    assert!(matches!(
        node.propose(Payload::from(&b"x"[..])),
        Err(Error::Storage(_))
    ));
    assert!(matches!(node.read_index(1), Err(Error::Storage(_))));
    // Fail-stop: the vote decided around the failed read never leaves the node.
    assert!(!node.has_ready());
    assert!(node.ready().is_empty());
}

/// Fields out of range (a forged or confused peer) are refused with an error and change
/// nothing; none of them aborts the node. Each of these panicked or corrupted state before.
#[test]
fn test_out_of_range_fields_are_refused_without_a_panic() {
    let mut network = elected();
    network.put(1, 1, 1).unwrap();
    network.stabilize();
    let term = network.node(2).term();
    let status = |network: &Network, id: u64| {
        let node = network.node(id);
        let progress: Vec<_> = node
            .progress()
            .map(|(id, p)| (id, p.match_index(), p.next_index()))
            .collect();
        (
            node.term(),
            node.role(),
            node.last_index(),
            node.commit_index(),
            progress,
        )
    };
    let follower_before = status(&network, 2);
    let last = network.node(2).last_index();

    // To the follower: a heartbeat whose commit lies beyond its log, in this term and in a
    // later one (which must not bump the term either).
    for heartbeat_term in [term, Term(term.0 + 1)] {
        let mut heartbeat =
            Message::new(MessageKind::Heartbeat, NodeId(1), NodeId(2), heartbeat_term);
        heartbeat.commit = LogIndex(last.0 + 1_000);
        let outcome = network.node_mut(2).step(heartbeat);
        assert!(
            matches!(outcome, Err(Error::InvalidMessage(_))),
            "{outcome:?}"
        );
        assert_eq!(status(&network, 2), follower_before);
    }
    // An append whose indexes overflow.
    let mut append = append(1, 2, term, vec![]);
    append.index = LogIndex(u64::MAX);
    let outcome = network.node_mut(2).step(append);
    assert!(
        matches!(outcome, Err(Error::InvalidMessage(_))),
        "{outcome:?}"
    );
    assert_eq!(status(&network, 2), follower_before);

    // To the leader: an acknowledgement beyond its log, a rejection whose hint lies past the
    // refused index, a heartbeat answer for a round never sent.
    let leader_before = status(&network, 1);
    let leader_last = network.node(1).last_index();
    let mut acked = Message::new(MessageKind::AppendResponse, NodeId(2), NodeId(1), term);
    acked.index = LogIndex(u64::MAX);
    let mut hinted = Message::new(MessageKind::AppendResponse, NodeId(2), NodeId(1), term);
    hinted.reject = true;
    hinted.index = leader_last;
    hinted.reject_hint = LogIndex(u64::MAX);
    let mut round = Message::new(MessageKind::HeartbeatResponse, NodeId(2), NodeId(1), term);
    round.context = u64::MAX;
    for (position, message) in [acked, hinted, round].into_iter().enumerate() {
        let outcome = network.node_mut(1).step(message);
        assert!(
            matches!(outcome, Err(Error::InvalidMessage(_))),
            "case {position}: {outcome:?}"
        );
        assert_eq!(status(&network, 1), leader_before, "case {position}");
    }

    // The cluster carries on: a write commits everywhere.
    network.process(1);
    network.process(2);
    network.put(1, 2, 2).unwrap();
    network.stabilize();
    let committed = network.node(1).commit_index();
    assert!(committed > leader_before.3);
    for id in [2, 3] {
        assert_eq!(network.node(id).commit_index(), committed);
    }
}

/// A full disk: the host cannot append a ready's entries, or cannot apply a committed one.
/// Raft takes them back and hands them out again; nothing is skipped, nothing is reported
/// durable that is not, and a read waits for the entries it must see. Gives back that do not
/// match what was handed out are refused.
#[test]
fn test_entries_given_back_on_a_full_disk_are_handed_out_again() {
    let mut network = Network::new(&[1]);
    network.node_mut(1).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(1).role(), StateRole::Leader);
    let node = network.node_mut(1);
    let index = node.propose(Payload::from(&b"x"[..])).unwrap();

    // The append fails: nothing reaches the log; the entry comes back.
    let ready = node.ready();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(index));
    let stored_last = atoll_storage::LogRead::last_index(node.log());
    assert_eq!(stored_last, index.prev());
    let mut wrong = ready.entries.clone();
    wrong.pop();
    if !wrong.is_empty() {
        assert!(matches!(
            node.append_failed(wrong),
            Err(Error::InvalidRequest(_))
        ));
    }
    node.append_failed(ready.entries.clone()).unwrap();
    assert_eq!(node.last_index(), index);
    assert!(node.log_term(index).is_some());
    assert!(node.commit_index() < index);
    // A second failure, the same again.
    let again = node.ready();
    assert_eq!(again.entries, ready.entries);
    assert!(again.committed_entries.iter().all(|e| e.index < index));
    node.append_failed(again.entries.clone()).unwrap();

    // Space is back: the append succeeds, the entry commits.
    let ready = node.ready();
    assert_eq!(ready.entries, again.entries);
    atoll_raft::persist_ready(node.log_mut(), &ready).unwrap();
    atoll_storage::LogStore::sync(node.log_mut()).unwrap();
    node.advance(&ready);
    assert_eq!(node.commit_index(), index);

    // The apply fails, with a read waiting on it: both come back, in order.
    node.read_index(7).unwrap();
    let ready = node.ready();
    let committed: Vec<LogIndex> = ready.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(committed.last(), Some(&index));
    assert_eq!(ready.read_states.len(), 1);
    let first = committed[0];
    assert!(matches!(
        node.apply_failed(LogIndex(index.0 + 1), vec![]),
        Err(Error::InvalidRequest(_))
    ));
    node.apply_failed(first, ready.read_states.clone()).unwrap();
    assert_eq!(node.applied(), first.prev());
    let ready = node.ready();
    let again: Vec<LogIndex> = ready.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(again, committed);
    assert_eq!(ready.read_states.len(), 1);
    assert_eq!(ready.read_states[0].context, 7);
    assert_eq!(node.applied(), index);
}

/// A full disk on a follower whose log has a conflicting suffix (entries of a deposed leader):
/// the host cannot cut it, so it gives back the entries that overwrite it. Raft takes them
/// (the store still ends past them) and hands them out again; once the host can cut and
/// append, the follower holds the leader's log and the deposed leader's entry is gone.
#[test]
fn test_entries_overwriting_a_suffix_given_back_on_a_full_disk() {
    let mut network = Network::new(&[1, 2, 3]);
    network.node_mut(1).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(1).role(), StateRole::Leader);
    network.isolate(1);
    let lost = network
        .node_mut(1)
        .propose(Payload::from(&b"lost"[..]))
        .unwrap();
    network.stabilize();
    // Node 1 is gone for the others: after an election timeout one of them leads.
    for _ in 0..100 {
        for id in [2, 3] {
            network.node_mut(id).tick();
        }
        network.stabilize();
        if network.node(2).role() == StateRole::Leader {
            break;
        }
        if network.node(3).role() == StateRole::Leader {
            network.node_mut(2).campaign().unwrap();
            network.stabilize();
        }
    }
    assert_eq!(network.node(2).role(), StateRole::Leader);
    network.put(2, 1, 1).unwrap();
    network.stabilize();
    network.heal();
    // The new leader's appends reach node 1 (a probe first) until one conflicts with its
    // suffix; the readies before it are handled as a host with room would.
    network.put(2, 2, 2).unwrap();
    let mut conflicting = None;
    for _ in 0..20 {
        network.node_mut(2).tick();
        network.deliver(Some(2));
        network.process(2);
        network.deliver(Some(1));
        let node = network.node_mut(1);
        if !node.has_ready() {
            continue;
        }
        let ready = node.ready();
        let stored_last = atoll_storage::LogRead::last_index(node.log());
        if ready
            .entries
            .first()
            .is_some_and(|e| e.index <= stored_last)
        {
            conflicting = Some(ready);
            break;
        }
        atoll_raft::persist_ready(node.log_mut(), &ready).unwrap();
        atoll_storage::LogStore::sync(node.log_mut()).unwrap();
        node.advance(&ready);
        network.pending.extend(ready.messages);
        network.pending.extend(ready.persisted_messages);
    }
    let ready = conflicting.expect("an append conflicting with node 1's suffix");
    let node = network.node_mut(1);
    let first = ready.entries[0].index;
    assert!(first <= lost);
    node.append_failed(ready.entries.clone()).unwrap();
    let again = node.ready();
    assert_eq!(again.entries, ready.entries);
    node.append_failed(again.entries.clone()).unwrap();
    network.stabilize();
    for _ in 0..5 {
        network.node_mut(2).tick();
        network.stabilize();
    }
    let leader_commit = network.node(2).commit_index();
    assert_eq!(network.node(1).commit_index(), leader_commit);
    let term_lost = network.node(1).log_term(lost);
    assert_eq!(term_lost, network.node(2).log_term(lost));
}

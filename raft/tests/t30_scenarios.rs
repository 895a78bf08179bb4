//! Scenario tests for the textbook cases, each on a hand-driven [`Network`]: nothing happens
//! unless the test says so, so each step and its outcome can be read in order.

use atoll_raft::sim::network::Network;
use atoll_raft::{Error, LogIndex, MemberRole, MessageKind, NodeId, StateRole};
use atoll_storage::LogRead;

/// Elects `id` (campaign, then let every message flow) and checks it won.
fn elect(network: &mut Network, id: u64) {
    network.node_mut(id).campaign().unwrap();
    network.stabilize();
    assert_eq!(
        network.node(id).role(),
        StateRole::Leader,
        "{}",
        network.status()
    );
}

/// Elects `id`, campaigning again while it loses (a term in which the others already voted).
fn elect_retrying(network: &mut Network, id: u64) {
    for _ in 0..5 {
        network.node_mut(id).campaign().unwrap();
        network.stabilize();
        if network.node(id).role() == StateRole::Leader {
            return;
        }
    }
    panic!("{id} did not win\n{}", network.status());
}

/// Ticks every up node `count` times, stabilizing after each round of ticks.
fn tick_all(network: &mut Network, count: u32) {
    for _ in 0..count {
        let ids: Vec<u64> = network
            .nodes
            .iter()
            .filter(|(_, host)| host.node.is_some())
            .map(|(id, _)| id.0)
            .collect();
        for id in ids {
            network.node_mut(id).tick();
        }
        network.stabilize();
    }
}

fn classic(config: &mut atoll_raft::Config) {
    config.pre_vote = false;
    config.check_quorum = false;
    config.append_entries_max = 1;
}

/// Figure 8 of the Raft paper: a leader must not commit an entry of an earlier term by
/// counting replicas, or a later leader may overwrite a "committed" entry. Here S1 replicates
/// its term-t1 entry X to a majority while leading a later term; X must stay uncommitted, and
/// indeed S5 later overwrites it.
#[test]
fn test_figure_8_entries_of_earlier_terms_do_not_commit_by_counting() {
    let mut network = Network::with_config(&[1, 2, 3, 4, 5], classic);
    elect(&mut network, 1);
    // (a) S1 replicates X only to S2.
    for other in [3, 4, 5] {
        network.isolate(other);
    }
    let x = network.propose(1, b"X").unwrap();
    let x_term = network.node(1).log_term(x);
    network.stabilize();
    assert_eq!(network.node(2).log_term(x), network.node(1).log_term(x));
    assert!(network.node(1).commit_index() < x);
    // (b) S1 crashes; S5 wins with S3 and S4 and appends at X's index, but crashes before
    // replicating it.
    network.crash(1);
    network.heal();
    network.isolate(2);
    network.node_mut(5).campaign().unwrap();
    for _ in 0..10 {
        if network.node(5).role() == StateRole::Leader {
            break;
        }
        for id in [2, 3, 4, 5] {
            network.process(id);
        }
        network.deliver(None);
    }
    assert_eq!(
        network.node(5).role(),
        StateRole::Leader,
        "{}",
        network.status()
    );
    network.process(5);
    network.drop_pending(|m| m.from.0 == 5 && m.kind == MessageKind::Append);
    assert!(network.node(5).last_index() >= x);
    network.crash(5);
    network.heal();
    // (c) S1 restarts and wins a later term with S2, S3, S4. It replicates X (one entry per
    // append) to S3: X is now on S1, S2 and S3, a majority, but from an earlier term.
    network.restart(1);
    network.isolate(4);
    network.node_mut(1).campaign().unwrap();
    // Votes from 2 and 3 plus its own: S1 leads (its first try may hit the term in which
    // they voted for S5; it tries again in the next).
    for _ in 0..10 {
        if network.node(1).role() == StateRole::Leader {
            break;
        }
        for id in [1, 2, 3] {
            network.process(id);
        }
        network.deliver(None);
        for id in [1, 2, 3] {
            network.process(id);
        }
        network.deliver(None);
        if network.node(1).role() != StateRole::Leader {
            network.node_mut(1).campaign().unwrap();
        }
    }
    assert_eq!(
        network.node(1).role(),
        StateRole::Leader,
        "{}",
        network.status()
    );
    let term = network.node(1).term();
    // Let S3 catch up one entry at a time until it holds X, but never S1's no-op.
    for _ in 0..20 {
        network.process(1);
        network.process(2);
        network.process(3);
        // S2 may take the no-op (two of five hold it: not a quorum). S3 gets it only while
        // it lacks X (it rejects it, which walks S1 back to X); once S3 holds X, never.
        let holding: Vec<NodeId> = [3]
            .into_iter()
            .filter(|id| network.node(*id).log_term(x) == x_term)
            .map(NodeId)
            .collect();
        network.drop_pending(|m| {
            m.kind == MessageKind::Append
                && holding.contains(&m.to)
                && m.entries.iter().any(|e| e.term == term)
        });
        network.deliver(None);
        network.tick(1, 1);
        if network.node(3).log_term(x) == network.node(1).log_term(x) {
            break;
        }
    }
    // S3's acknowledgement of X reaches S1.
    network.process(3);
    network.deliver(Some(1));
    network.process(1);
    assert_eq!(network.node(3).log_term(x), network.node(1).log_term(x));
    let holding = [1, 2, 3].into_iter().filter(|id| {
        let leader = network.node(1);
        *id == 1
            || leader
                .progress()
                .any(|(p, pr)| p.0 == *id && pr.match_index() >= x)
    });
    let progress: Vec<String> = network
        .node(1)
        .progress()
        .map(|(id, p)| format!("{id}:{}", p.match_index()))
        .collect();
    assert_eq!(
        holding.count(),
        3,
        "S1 knows X is on a majority: {progress:?}"
    );
    assert!(
        network.node(1).commit_index() < x,
        "X (term {:?}) committed by counting replicas in term {term}",
        network.node(1).log_term(x)
    );
    // (d) S1 crashes; S5 restarts and wins with S2, S3, S4 (its last term is higher), and
    // overwrites X everywhere: it was right not to count X as committed.
    network.crash(1);
    network.heal();
    network.restart(5);
    network.isolate(1);
    elect_retrying(&mut network, 5);
    for id in [2, 3, 4, 5] {
        let applied = &network.nodes[&NodeId(id)].applied;
        assert!(
            applied.iter().all(|e| &e.payload[..] != b"X"),
            "{id} applied X"
        );
        assert_ne!(network.node(id).log_term(x), x_term, "X survived on {id}");
    }
}

/// An isolated leader cannot commit; the majority elects a new leader; when the partition
/// heals the old leader steps down and its uncommitted proposal is overwritten (Raft paper
/// section 5.4; a stale leader's proposals are dropped).
#[test]
fn test_isolated_leader_while_the_rest_elect() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.isolate(1);
    let stale = network.propose(1, b"stale").unwrap();
    network.stabilize();
    assert!(network.node(1).commit_index() < stale);
    // The majority times out and elects 2 (pre-vote succeeds: they no longer hear a leader).
    for _ in 0..30 {
        for id in [2, 3] {
            network.node_mut(id).tick();
        }
        network.stabilize();
        if network.node(2).role() == StateRole::Leader
            || network.node(3).role() == StateRole::Leader
        {
            break;
        }
    }
    let new_leader = if network.node(2).role() == StateRole::Leader {
        2
    } else {
        3
    };
    let fresh = network.propose(new_leader, b"fresh").unwrap();
    network.stabilize();
    assert!(network.node(new_leader).commit_index() >= fresh);
    // Check quorum: the isolated leader steps down on its own within two election timeouts
    // (the window in which it heard from the others ends first).
    network.tick(1, 21);
    assert_eq!(network.node(1).role(), StateRole::Follower);
    network.heal();
    // The new leader's probe to 1 was lost in the partition; a heartbeat response resumes it
    // once half an election timeout passed without an answer (here the leader barely ticked
    // while 1 was cut off, so it does not know 1 was silent).
    tick_all(&mut network, 8);
    for id in [1, 2, 3] {
        let applied = &network.nodes[&NodeId(id)].applied;
        assert!(
            applied.iter().all(|e| &e.payload[..] != b"stale"),
            "{id} applied stale"
        );
        assert!(
            applied.iter().any(|e| &e.payload[..] == b"fresh"),
            "{id} missed fresh"
        );
    }
    assert!(matches!(
        network.propose(1, b"late"),
        Err(Error::NotLeader { leader: Some(_) })
    ));
}

/// A vote survives a restart: after voting for 2 in a term, node 3 restarts and must refuse
/// to vote for 1 in the same term (section 5.2: one vote per term, persisted).
#[test]
fn test_votes_are_persisted_across_restart() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    network.isolate(1);
    network.node_mut(2).campaign().unwrap();
    network.stabilize();
    assert_eq!(network.node(2).role(), StateRole::Leader);
    let term = network.node(3).term();
    assert_eq!(network.node(3).vote(), Some(NodeId(2)));
    network.crash(3);
    network.restart(3);
    assert_eq!(network.node(3).term(), term);
    assert_eq!(network.node(3).vote(), Some(NodeId(2)));
    // Node 1 campaigns in that very term (same last log): 3 must refuse.
    network.crash(2);
    network.heal();
    let mut vote = atoll_raft::Message::new(MessageKind::Vote, NodeId(1), NodeId(3), term);
    vote.index = network.node(3).last_index();
    vote.log_term = network.node(3).log_term(vote.index).unwrap();
    network.node_mut(3).step(vote).unwrap();
    network.process(3);
    let answer = network
        .pending
        .iter()
        .find(|m| m.kind == MessageKind::VoteResponse)
        .unwrap();
    assert!(answer.reject, "a second vote in term {term}");
}

/// Pre-vote: a node cut off from the cluster keeps timing out but cannot raise its term
/// (no pre-vote quorum), so when it returns it does not depose the healthy leader (dissertation
/// section 9.6).
#[test]
fn test_pre_vote_stops_term_inflation() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    let term = network.node(1).term();
    network.isolate(3);
    network.tick(3, 200);
    network.stabilize();
    assert_eq!(
        network.node(3).term(),
        term,
        "pre-vote must not raise the term"
    );
    assert_eq!(network.node(3).role(), StateRole::PreCandidate);
    network.heal();
    tick_all(&mut network, 3);
    assert_eq!(network.node(1).role(), StateRole::Leader);
    assert_eq!(network.node(1).term(), term);
    assert_eq!(network.node(3).leader_id(), Some(NodeId(1)));
}

/// Without pre-vote the same partition inflates the term and the returning node deposes the
/// leader: the behaviour pre-vote exists to prevent.
#[test]
fn test_without_pre_vote_the_term_inflates() {
    let mut network = Network::with_config(&[1, 2, 3], |c| c.pre_vote = false);
    elect(&mut network, 1);
    let term = network.node(1).term();
    network.isolate(3);
    network.tick(3, 100);
    network.stabilize();
    assert!(network.node(3).term() > term);
}

/// A removed node that missed its removal times out and campaigns, but pre-vote (its log is
/// behind) and the leader lease keep it from disrupting the cluster (dissertation 4.2.3).
#[test]
fn test_removed_node_does_not_disrupt() {
    let mut network = Network::new(&[1, 2, 3, 4]);
    elect(&mut network, 1);
    network.isolate(4);
    network.node_mut(1).remove(NodeId(4)).unwrap();
    network.stabilize();
    let term = network.node(1).term();
    assert!(!network.node(1).configuration().is_voter(NodeId(4)));
    network.heal();
    for _ in 0..100 {
        network.node_mut(4).tick();
        network.stabilize();
        for id in [1, 2, 3] {
            network.node_mut(id).tick();
        }
        network.stabilize();
    }
    assert_eq!(network.node(1).role(), StateRole::Leader);
    assert_eq!(network.node(1).term(), term);
}

/// Leadership transfer to a node that lags: the leader first brings it up to date, then sends
/// TimeoutNow, and it wins at once (dissertation section 3.10).
#[test]
fn test_transfer_to_a_lagging_node() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.isolate(3);
    for round in 0..5 {
        network
            .propose(1, format!("entry {round}").as_bytes())
            .unwrap();
    }
    network.stabilize();
    assert!(network.node(3).last_index() < network.node(1).last_index());
    network.heal();
    assert_eq!(
        network
            .node_mut(1)
            .transfer_leadership(Some(NodeId(3)))
            .unwrap(),
        NodeId(3)
    );
    assert!(matches!(
        network.propose(1, b"during"),
        Err(Error::TransferInProgress)
    ));
    tick_all(&mut network, 2);
    assert_eq!(
        network.node(3).role(),
        StateRole::Leader,
        "{}",
        network.status()
    );
    assert_eq!(network.node(1).leader_id(), Some(NodeId(3)));
    // The most up-to-date voter is chosen when no target is given.
    let target = network.node_mut(3).transfer_leadership(None).unwrap();
    tick_all(&mut network, 2);
    assert_eq!(network.node(target.0).role(), StateRole::Leader);
}

/// A leader removed from the configuration keeps leading until the change commits, then steps
/// down and hands over (TimeoutNow) so the cluster does not wait an election timeout.
#[test]
fn test_removed_leader_steps_down() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.node_mut(1).remove(NodeId(1)).unwrap();
    network.stabilize();
    assert_ne!(network.node(1).role(), StateRole::Leader);
    // Regression (issue 6): the commit that made it step down also asked for a broadcast, a
    // leader-only chore that no ready cleared on a follower, so `has_ready` stayed true for
    // ever and a host looping on it spun.
    assert!(!network.node(1).has_ready(), "{}", network.status());
    tick_all(&mut network, 2);
    let leader = [2, 3]
        .into_iter()
        .find(|id| network.node(*id).role() == StateRole::Leader);
    assert!(leader.is_some(), "{}", network.status());
    assert!(network
        .node(leader.unwrap())
        .configuration()
        .get(NodeId(1))
        .is_none());
}

/// A new voter joins as a standby, catches up, and only then is promoted: the quorum never
/// counts a node with an empty log.
#[test]
fn test_new_voter_catches_up_before_promotion() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    for round in 0..10 {
        network
            .propose(1, format!("entry {round}").as_bytes())
            .unwrap();
    }
    network.stabilize();
    network.add_node(NodeId(4), atoll_storage::MemLog::new());
    network
        .node_mut(1)
        .add(NodeId(4), "n4", MemberRole::Voter)
        .unwrap();
    assert_eq!(
        network.node(1).configuration().role(NodeId(4)),
        Some(MemberRole::Standby)
    );
    assert!(matches!(
        network.node_mut(1).remove(NodeId(2)),
        Err(Error::ConfChangeInProgress)
    ));
    network.stabilize();
    tick_all(&mut network, 3);
    assert_eq!(
        network.node(1).configuration().role(NodeId(4)),
        Some(MemberRole::Voter)
    );
    assert_eq!(network.node(4).last_index(), network.node(1).last_index());
    assert!(network.node(1).promotion().is_none());
}

/// A follower far behind the compacted log receives the snapshot in chunks and resumes
/// normal replication after it.
#[test]
fn test_snapshot_catches_up_a_follower() {
    let mut network = Network::with_config(&[1, 2, 3], |c| {
        c.snapshot_chunk_bytes = 16;
        c.snapshot_trailing_entries = 0;
    });
    elect(&mut network, 1);
    network.isolate(3);
    for value in 1..=20 {
        network.put(1, value % 4, value).unwrap();
    }
    network.stabilize();
    network.snapshot(1);
    network.stabilize();
    assert!(network.node(1).log().first_index() > network.node(3).last_index());
    network.heal();
    tick_all(&mut network, 3);
    let leader_kv = network.nodes[&NodeId(1)].kv.values.clone();
    assert_eq!(network.nodes[&NodeId(3)].kv.values, leader_kv);
    assert_eq!(
        network.node(3).commit_index(),
        network.node(1).commit_index()
    );
    network.put(1, 9, 99).unwrap();
    network.stabilize();
    assert_eq!(network.nodes[&NodeId(3)].kv.get(9), 99);
}

/// A follower whose host cannot store the snapshot's chunks (a full disk) reports it: raft
/// forgets the receive and never installs a snapshot the host does not hold, and the leader
/// streams it again from the start. Once the host has room the follower installs it and
/// replicates normally.
#[test]
fn test_snapshot_the_follower_cannot_store_is_streamed_again() {
    let mut network = Network::with_config(&[1, 2, 3], |c| {
        c.snapshot_chunk_bytes = 16;
        c.snapshot_trailing_entries = 0;
    });
    elect(&mut network, 1);
    network.isolate(3);
    for value in 1..=20 {
        network.put(1, value % 4, value).unwrap();
    }
    network.stabilize();
    network.snapshot(1);
    network.stabilize();
    network.heal();
    network
        .nodes
        .get_mut(&NodeId(3))
        .unwrap()
        .snapshot_store_full = true;
    tick_all(&mut network, 10);
    assert!(
        network.node(3).snapshot_meta().is_none(),
        "nothing installed"
    );
    assert_eq!(network.node(3).commit_index(), LogIndex(2));
    assert_eq!(network.node(3).role(), StateRole::Follower);
    assert!(network.nodes[&NodeId(3)].kv.values.is_empty());

    network
        .nodes
        .get_mut(&NodeId(3))
        .unwrap()
        .snapshot_store_full = false;
    tick_all(&mut network, 10);
    let leader_kv = network.nodes[&NodeId(1)].kv.values.clone();
    assert_eq!(network.nodes[&NodeId(3)].kv.values, leader_kv);
    assert_eq!(
        network.node(3).commit_index(),
        network.node(1).commit_index()
    );
    network.put(1, 9, 99).unwrap();
    network.stabilize();
    assert_eq!(network.nodes[&NodeId(3)].kv.get(9), 99);
}

/// ReadIndex: a leader answers a read after a heartbeat round confirms it still leads; a
/// follower asks the leader and answers once it has applied that far (dissertation 6.4).
#[test]
fn test_read_index_on_leader_and_follower() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.put(1, 1, 7).unwrap();
    network.stabilize();
    network.node_mut(1).read_index(100).unwrap();
    network.process(1);
    assert!(
        network.nodes[&NodeId(1)].read_states.is_empty(),
        "needs a heartbeat round"
    );
    network.stabilize();
    let read = network.nodes[&NodeId(1)].read_states[0].clone();
    assert_eq!(read.context, 100);
    assert_eq!(read.index, network.node(1).commit_index());
    network.node_mut(2).read_index(200).unwrap();
    network.stabilize();
    let read = network.nodes[&NodeId(2)].read_states[0].clone();
    assert_eq!(read.context, 200);
    assert!(network.node(2).applied() >= read.index);
    assert_eq!(network.nodes[&NodeId(2)].kv.get(1), 7);
    // An isolated leader cannot confirm its reads.
    network.isolate(1);
    network.node_mut(1).read_index(300).unwrap();
    network.stabilize();
    assert_eq!(network.nodes[&NodeId(1)].read_states.len(), 1);
}

/// The leader's own entries count toward the quorum only once its disk made them durable, and
/// followers acknowledge only what their disk made durable.
#[test]
fn test_only_durable_entries_count() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.nodes.get_mut(&NodeId(1)).unwrap().disk_stalled = true;
    network.nodes.get_mut(&NodeId(2)).unwrap().disk_stalled = true;
    let index = network.propose(1, b"x").unwrap();
    network.stabilize();
    // Only node 3 acknowledged: 1 of the 2 others is not a quorum with an undurable leader.
    assert!(network.node(1).commit_index() < index);
    assert_eq!(network.node(1).persisted_index(), LogIndex(index.0 - 1));
    network.release_disk(1);
    network.stabilize();
    assert!(network.node(1).commit_index() >= index);
    // Node 2 still has not acknowledged: the leader's progress says so.
    let matched = network
        .node(1)
        .progress()
        .find(|(id, _)| *id == NodeId(2))
        .unwrap()
        .1
        .match_index();
    assert!(matched < index);
    network.release_disk(2);
    network.stabilize();
    let matched = network
        .node(1)
        .progress()
        .find(|(id, _)| *id == NodeId(2))
        .unwrap()
        .1
        .match_index();
    assert!(matched >= index);
}

/// Failover: with the default timeouts (election 10..20 ticks), once the leader dies a new one
/// leads within the maximum election timeout plus a round of pre-vote and vote: about 200 ms
/// with 10 ms ticks. Each tick here delivers every message (a fast LAN).
#[test]
fn test_failover_within_an_election_timeout() {
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    tick_all(&mut network, 5);
    network.crash(1);
    let timeout_max = network.config(NodeId(2)).election_timeout_ticks_max;
    let mut ticks = 0;
    while ![2, 3]
        .iter()
        .any(|id| network.node(*id).role() == StateRole::Leader)
    {
        tick_all(&mut network, 1);
        ticks += 1;
        assert!(
            ticks <= timeout_max + 2,
            "no leader {ticks} ticks after the crash"
        );
    }
    assert!(ticks >= network.config(NodeId(2)).election_timeout_ticks_min - 1);
}

/// A snapshot stream survives a newer snapshot when the log still holds the entries after the
/// streamed one: the follower finishes it and continues from the log, instead of starting over
/// (a host that snapshots often would otherwise keep a slow follower from ever finishing).
#[test]
fn test_snapshot_stream_continues_across_a_newer_snapshot() {
    let mut network = Network::with_config(&[1, 2, 3], |c| {
        c.snapshot_chunk_bytes = 16;
        c.snapshot_chunks_inflight_max = 1;
        c.snapshot_trailing_entries = 5;
    });
    elect(&mut network, 1);
    network.isolate(3);
    for value in 1..=20 {
        network.put(1, value % 3, value).unwrap();
    }
    network.stabilize();
    network.snapshot(1);
    let first = network.node(1).snapshot_meta().unwrap().index;
    network.stabilize();
    network.heal();
    // The stream of the first snapshot starts; one round trip at a time.
    for _ in 0..10 {
        network.tick(1, 1);
        network.deliver(Some(3));
        network.process(3);
        network.deliver(Some(1));
        network.process(1);
        let streaming = network.node(1).progress().any(|(id, p)| {
            id == NodeId(3) && p.snapshot_send().is_some_and(|s| s.acked_offset > 0)
        });
        if streaming {
            break;
        }
    }
    // A newer snapshot, three entries later: the log still starts before the first one's end.
    network.isolate(3);
    for value in 21..=23 {
        network.put(1, 1, value).unwrap();
    }
    network.stabilize();
    network.snapshot(1);
    let second = network.node(1).snapshot_meta().unwrap().index;
    assert!(second > first);
    assert_eq!(network.node(1).snapshots_in_use(), vec![first, second]);
    network.heal();
    tick_all(&mut network, 30);
    assert_eq!(network.nodes[&NodeId(3)].kv, network.nodes[&NodeId(1)].kv);
    assert_eq!(
        network.node(3).snapshot_meta().unwrap().index,
        first,
        "installed the first"
    );
    assert_eq!(network.node(1).snapshots_in_use(), vec![second]);
}

/// Whether a transcript shows the leader sending node 3 an append that carries entries.
fn sends_entries_to_3(transcript: &str) -> bool {
    transcript
        .lines()
        .any(|line| line.contains("Send: 1->3 MsgAppend") && line.contains("entries=["))
}

#[test]
fn test_heartbeat_responses_resume_a_lost_probe_only_after_a_wait() {
    // A probe to 3 is lost while 3 keeps answering heartbeats (as a node working through a
    // backlog does). A heartbeat response used to resume the probe at once: with heartbeats
    // every few milliseconds that meant another full append per heartbeat, tens of megabytes
    // queued to a node that was catching up. Now it waits half an election timeout (5 ticks
    // here) without an answer to an append, then resends once, and 3 catches up.
    let mut network = Network::new(&[1, 2, 3]);
    elect(&mut network, 1);
    network.node_mut(1).report_unreachable(NodeId(3));
    network.propose(1, b"x").unwrap();
    let transcript = network.process(1);
    assert!(sends_entries_to_3(&transcript), "{transcript}");
    network.drop_pending(|m| m.to == NodeId(3) && m.kind == MessageKind::Append);
    network.stabilize();
    let mut resends = Vec::new();
    for tick in 1..=12u32 {
        let mut transcript = network.tick(1, 1);
        transcript.push_str(&network.stabilize());
        if sends_entries_to_3(&transcript) {
            resends.push(tick);
        }
    }
    assert!(
        resends.first().is_some_and(|&t| t >= 5),
        "resent at ticks {resends:?}"
    );
    assert_eq!(resends.len(), 1, "resent at ticks {resends:?}");
    assert_eq!(network.node(3).last_index(), network.node(1).last_index());
}

/// A node whose vote is withheld (its log was lost and is being rebuilt) grants no vote and
/// does not campaign, even though its empty-looking log would make any candidate look up to
/// date; it still acknowledges appends. Given back, it votes again.
#[test]
fn test_a_withheld_vote_elects_nobody_until_given_back() {
    let mut network = Network::with_config(&[1, 2, 3], classic);
    elect(&mut network, 1);
    network.propose(1, b"x").unwrap();
    network.stabilize();
    network.node_mut(3).set_votes_withheld(true);
    // Appends are still acknowledged by the withholding node.
    let y = network.propose(1, b"y").unwrap();
    network.stabilize();
    assert_eq!(network.node(1).commit_index(), y);
    assert_eq!(network.node(3).last_index(), y);
    network.crash(1);
    for _ in 0..3 {
        network.node_mut(2).campaign().unwrap();
        network.stabilize();
        assert_ne!(
            network.node(2).role(),
            StateRole::Leader,
            "{}",
            network.status()
        );
    }
    assert!(matches!(
        network.node_mut(3).campaign(),
        Err(Error::InvalidRequest(_))
    ));
    tick_all(&mut network, 50);
    assert_ne!(network.node(3).role(), StateRole::Leader);
    assert_ne!(network.node(2).role(), StateRole::Leader);
    network.node_mut(3).set_votes_withheld(false);
    elect_retrying(&mut network, 2);
}

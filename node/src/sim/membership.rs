//! The simulator's configuration checkers, against every node's raft state after every step:
//!
//! - at most one configuration change pending: no log holds more than one configuration entry
//!   above the highest commit index any node has shown (single-server changes: a leader appends
//!   a configuration only once the previous one is committed);
//! - a removed node (or a standby, a spare) never counted: the index a leader commits is held,
//!   with the leader's term for it, by a majority of the voters of a configuration the leader
//!   was in force under since that index; the leader of a new term got there with a majority of
//!   its voters at that term or later. Nodes that are down answer from what their log and term
//!   held when they went down ([`Held`]).
//!
//! Lenient where the observation is coarse (a down node's unsynced entries count; entries
//! compacted behind a snapshot count as held), never strict where Raft is not: no false alarm
//! on a correct node.

use std::collections::{BTreeMap, BTreeSet};

use atoll_raft::{Configuration, LogIndex, StateRole, Term};
use atoll_storage::LogRead;

use crate::Node;

/// Entries of a down node's log remembered above the commit index seen (a partitioned
/// leader's backlog is bounded by raft's uncommitted limit; past this the check is lenient).
const HELD_ENTRIES_MAX: u64 = 4096;

/// What a node held when it went down: its term and the terms of its log's uncommitted tail.
#[derive(Debug, Clone)]
pub(super) struct Held {
    term: Term,
    /// The highest commit index seen when it went down: entries at or below it are committed.
    floor: u64,
    terms: BTreeMap<u64, Term>,
}

impl Held {
    /// What `node` holds, `floor` being the highest commit index seen.
    pub(super) fn of(node: &Node, floor: u64) -> Held {
        let first = node.raft.log().first_index().0;
        let low = floor.max(first.saturating_sub(1)) + 1;
        let high = node.raft.last_index().0.min(low + HELD_ENTRIES_MAX);
        let terms = (low..=high)
            .filter_map(|index| node.raft.log_term(LogIndex(index)).map(|t| (index, t)))
            .collect();
        Held {
            term: node.raft.term(),
            floor,
            terms,
        }
    }
}

/// A node as the checks see it: running, or down with what it held, or neither (retired,
/// never opened: it holds nothing).
#[derive(Clone, Copy)]
pub(super) enum Seen<'a> {
    Up(&'a Node),
    Down(&'a Held),
    Gone,
}

impl Seen<'_> {
    fn term(&self) -> Term {
        match self {
            Seen::Up(node) => node.raft.term(),
            Seen::Down(held) => held.term,
            Seen::Gone => Term(0),
        }
    }

    /// Whether its log holds `index` with `term`.
    fn holds(&self, index: u64, term: Term) -> bool {
        match self {
            Seen::Up(node) => {
                index < node.raft.log().first_index().0
                    || node.raft.log_term(LogIndex(index)) == Some(term)
            }
            Seen::Down(held) => index <= held.floor || held.terms.get(&index) == Some(&term),
            Seen::Gone => false,
        }
    }
}

/// The configuration checkers' record.
#[derive(Debug, Default)]
pub(super) struct ConfigurationChecker {
    /// The highest commit index any node showed.
    commit_seen: u64,
    /// Each node's commit index at its last observation.
    commits: BTreeMap<u64, u64>,
    /// Terms whose leader's election was checked.
    elections: BTreeSet<u64>,
}

/// The configurations `node` may have counted a quorum under for `index`: the one in force at
/// `index` and every later one.
fn configurations_since(node: &Node, index: u64) -> Vec<&Configuration> {
    let all: Vec<(LogIndex, &Configuration)> = node.raft.configurations().collect();
    let start = all.iter().rposition(|(at, _)| at.0 <= index).unwrap_or(0);
    all[start..].iter().map(|(_, c)| *c).collect()
}

/// Whether the voters of one of `configurations` that pass `counted` are a majority.
fn majority_of(configurations: &[&Configuration], counted: impl Fn(u64) -> bool) -> bool {
    configurations.iter().any(|configuration| {
        let voters: Vec<u64> = configuration.voters().map(|id| id.0).collect();
        let count = voters.iter().filter(|&&id| counted(id)).count();
        count * 2 > voters.len()
    })
}

impl ConfigurationChecker {
    /// The highest commit index any node showed.
    pub(super) fn commit_seen(&self) -> u64 {
        self.commit_seen
    }

    /// Checks one observation; `seen(id)` is node `id` as the checks see it.
    pub(super) fn observe<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a Node> + Clone,
        seen: impl Fn(u64) -> Seen<'a>,
    ) -> Result<(), String> {
        for node in nodes.clone() {
            self.commit_seen = self.commit_seen.max(node.raft.commit_index().0);
        }
        for node in nodes {
            let id = node.raft.id().0;
            let pending: Vec<u64> = node
                .raft
                .configurations()
                .map(|(index, _)| index.0)
                .filter(|&index| index > self.commit_seen)
                .collect();
            if pending.len() > 1 {
                return Err(format!(
                    "configuration safety: node {id} holds configuration changes at {pending:?}, \
                     more than one above the commit index {}",
                    self.commit_seen
                ));
            }
            let commit = node.raft.commit_index().0;
            let before = self.commits.insert(id, commit).unwrap_or(0);
            if node.raft.role() != StateRole::Leader {
                continue;
            }
            let term = node.raft.term();
            if self.elections.insert(term.0) {
                let configurations = configurations_since(node, commit);
                if !majority_of(&configurations, |v| v == id || seen(v).term() >= term) {
                    return Err(format!(
                        "configuration safety: node {id} leads term {term} without a majority of \
                         voters at that term (configurations {configurations:?})"
                    ));
                }
            }
            if commit > before {
                let Some(entry_term) = node.raft.log_term(LogIndex(commit)) else {
                    continue;
                };
                let configurations = configurations_since(node, commit);
                if !majority_of(&configurations, |v| seen(v).holds(commit, entry_term)) {
                    return Err(format!(
                        "configuration safety: leader {id} (term {term}) commits {entry_term}/\
                         {commit}, which no majority of voters holds (configurations \
                         {configurations:?})"
                    ));
                }
            }
        }
        Ok(())
    }
}

//! The invariants checked after every simulator step, against everything any node ever did.

use std::collections::HashMap;

use crate::sim::kv::Fnv;
use crate::{Entry, LogIndex, NodeId, Term};

/// The digest of an entry's content (kind and payload).
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut hash = Fnv::new();
    hash.write(&[entry.kind as u8]);
    hash.write(&entry.payload);
    hash.finish()
}

/// The global record the invariants are checked against.
#[derive(Default)]
pub struct Checker {
    /// Election safety: the one leader of each term.
    leaders: HashMap<Term, NodeId>,
    /// Log matching: what every (index, term) pair holds, and the term before it.
    entries: HashMap<(LogIndex, Term), (u64, Option<Term>)>,
    /// Committed entries by index (position 0 is index 1): term and digest once known.
    committed: Vec<(Term, Option<u64>)>,
    /// State machine safety: the register digest after applying each index.
    states: Vec<Option<u64>>,
    /// Distinct (term, leader) pairs seen.
    pub elections: u64,
}

impl Checker {
    /// Election safety (Figure 3): at most one leader per term.
    pub fn leader(&mut self, term: Term, id: NodeId) -> Result<bool, String> {
        match self.leaders.get(&term) {
            Some(&leader) if leader != id => Err(format!(
                "election safety: {leader} and {id} both lead term {term}"
            )),
            Some(_) => Ok(false),
            None => {
                self.leaders.insert(term, id);
                self.elections += 1;
                Ok(true)
            }
        }
    }

    /// Log matching (Figure 3): an entry at (index, term) has the same content and the same
    /// previous term on every node, so by induction the same prefix.
    pub fn appended(
        &mut self,
        id: NodeId,
        entry: &Entry,
        previous: Option<Term>,
    ) -> Result<(), String> {
        let digest = entry_digest(entry);
        let key = (entry.index, entry.term);
        match self.entries.get(&key) {
            Some(&(known, known_previous)) => {
                if known != digest {
                    return Err(format!(
                        "log matching: {id} holds a different entry at {}/{}",
                        entry.term, entry.index
                    ));
                }
                if known_previous.is_some() && previous.is_some() && known_previous != previous {
                    return Err(format!(
                        "log matching: {id}'s entry {}/{} follows term {previous:?}, \
                         not {known_previous:?}",
                        entry.term, entry.index
                    ));
                }
                if known_previous.is_none() {
                    self.entries.insert(key, (digest, previous));
                }
            }
            None => {
                self.entries.insert(key, (digest, previous));
            }
        }
        Ok(())
    }

    /// The highest index known committed.
    pub fn committed_index(&self) -> LogIndex {
        LogIndex(self.committed.len() as u64)
    }

    /// The term recorded committed at `index`.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.committed.get(position).map(|(term, _)| *term)
    }

    /// A node's commit index covers (index, term): no other entry may ever commit there.
    pub fn commit(&mut self, id: NodeId, index: LogIndex, term: Term) -> Result<(), String> {
        let position = (index.0 - 1) as usize;
        if position < self.committed.len() {
            let (known, _) = self.committed[position];
            if known == Term(0) {
                self.committed[position].0 = term;
                return Ok(());
            }
            if known != term {
                return Err(format!(
                    "state machine safety: {id} commits {term}/{index} \
                     but {known}/{index} committed"
                ));
            }
            return Ok(());
        }
        if position > self.committed.len() {
            // A gap: the indexes between are committed too, their terms learned later.
            while self.committed.len() < position {
                self.committed.push((Term(0), None));
            }
        }
        self.committed.push((term, None));
        Ok(())
    }

    /// A node applies `entry`: it must be the committed one (same term and content).
    pub fn applied(&mut self, id: NodeId, entry: &Entry, digest_after: u64) -> Result<(), String> {
        self.commit(id, entry.index, entry.term)?;
        let position = (entry.index.0 - 1) as usize;
        let slot = &mut self.committed[position];
        if slot.0 == Term(0) {
            slot.0 = entry.term;
        }
        if slot.0 != entry.term {
            return Err(format!(
                "state machine safety: {id} applies {}/{} but term {} committed there",
                entry.term, entry.index, slot.0
            ));
        }
        let digest = entry_digest(entry);
        match slot.1 {
            Some(known) if known != digest => {
                return Err(format!(
                    "state machine safety: {id} applies different content at {}",
                    entry.index
                ))
            }
            _ => slot.1 = Some(digest),
        }
        self.state(id, entry.index, digest_after)
    }

    /// The digest of the committed entry at `index`, if some node applied it.
    pub fn committed_digest(&self, index: LogIndex) -> Option<u64> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.committed.get(position).and_then(|(_, digest)| *digest)
    }

    /// The registers after applying through `index` are the same on every node (and in
    /// every snapshot).
    pub fn state(&mut self, id: NodeId, index: LogIndex, digest: u64) -> Result<(), String> {
        let position = index.0 as usize;
        if self.states.len() <= position {
            self.states.resize(position + 1, None);
        }
        match self.states[position] {
            Some(known) if known != digest => Err(format!(
                "state machine safety: {id}'s state after {index} differs from another node's"
            )),
            Some(_) => Ok(()),
            None => {
                self.states[position] = Some(digest);
                Ok(())
            }
        }
    }

    /// Leader completeness (Figure 3): a new leader holds every committed entry. `term_at`
    /// reads its log; indexes below `first_index` are in its snapshot.
    pub fn leader_complete(
        &self,
        id: NodeId,
        term: Term,
        first_index: LogIndex,
        last_index: LogIndex,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), String> {
        let committed = self.committed_index();
        if last_index < committed {
            return Err(format!(
                "leader completeness: {id} leads term {term} with last index {last_index} \
                 below the commit index {committed}"
            ));
        }
        for index in first_index.0.max(1)..=committed.0 {
            let index = LogIndex(index);
            let known = self.committed_term(index).expect("within committed");
            if known == Term(0) {
                continue;
            }
            if term_at(index) != Some(known) {
                return Err(format!(
                    "leader completeness: {id} leads term {term} without committed {known}/{index}"
                ));
            }
        }
        Ok(())
    }
}

//! Quorum-loss recovery (`atoll recover`): rewrites a stopped node's configuration so that the
//! named survivors form the cluster.
//!
//! The node's log gets one more entry, a configuration entry at `last + 1` whose term is one
//! past the node's current term (the term is saved first, then the entry appended and synced).
//! Raft takes a node's configuration from the newest configuration entry of its log, so at the
//! next start the node counts only the named voters; its log, with that entry in the newest
//! term, is at least as up to date as any survivor's, so the survivors it names vote for it and
//! receive the new configuration from it. Nothing else changes: the databases, the snapshots
//! and the rest of the log stay as they are. A crash between the two writes leaves a higher
//! term and no new entry, which is harmless: run the command again.
//!
//! The entry is written by this node alone, outside any leader's term: it is safe only if this
//! is the one node that runs `recover` (the others restart unchanged) and the lost nodes never
//! come back with their old logs. `--inspect` prints what the operator needs to pick the node:
//! the survivor with the highest (last term, last index) holds every entry any survivor holds.

use std::fmt::Write as _;
use std::path::Path;

use atoll_raft::{Configuration, Entry, EntryKind, HardState, MemberRole, NodeId, Payload};
use atoll_storage::{LogError, LogIndex, LogRead, LogStore, Options, SegmentLog, Term};

use super::config::{self, NodeConfig};

/// Bytes of entries read at a time while looking for the newest configuration entry.
const SCAN_BATCH_BYTES: u64 = 4 << 20;

/// What `--inspect` prints and what the rewrite starts from.
pub struct LogState {
    /// This node's id (from `atoll.conf`).
    pub id: u64,
    /// Its address.
    pub address: String,
    /// The saved term and vote.
    pub hard_state: HardState,
    /// The log's first and last indexes.
    pub first: LogIndex,
    /// The last index.
    pub last: LogIndex,
    /// The term of the last entry (of the snapshot when the log is empty).
    pub last_term: Term,
    /// The newest configuration (log entry or snapshot) and where it comes from.
    pub configuration: Configuration,
    /// The index of that configuration (0: none).
    pub configuration_index: LogIndex,
}

fn role_word(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Standby => "standby",
        MemberRole::Spare => "spare",
    }
}

impl LogState {
    /// A report for the operator, one fact a line.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "node {} ({})", self.id, self.address);
        let _ = writeln!(
            text,
            "last log index {} (term {}), log {}..={}",
            self.last, self.last_term, self.first, self.last
        );
        let _ = writeln!(
            text,
            "current term {}, voted for {}",
            self.hard_state.term,
            self.hard_state
                .vote
                .map_or("nobody".to_owned(), |v| v.0.to_string())
        );
        let _ = writeln!(text, "configuration (index {}):", self.configuration_index);
        for (id, member) in self.configuration.members() {
            let _ = writeln!(
                text,
                "  {} {} {}",
                id.0,
                member.address,
                role_word(member.role)
            );
        }
        let _ = write!(
            text,
            "pick the survivor with the highest last log term, then the highest last log index"
        );
        text
    }
}

fn open_log(data_dir: &Path) -> Result<SegmentLog, String> {
    SegmentLog::open(config::raft_dir(data_dir), Options::default()).map_err(|e| match e {
        LogError::Locked { .. } => format!(
            "{} is in use by a running atoll process ({e}): stop the node first (recover only \
             rewrites a stopped node)",
            data_dir.display()
        ),
        other => format!("opening the Raft log: {other}"),
    })
}

fn state(data_dir: &Path, log: &SegmentLog) -> Result<LogState, String> {
    let node = NodeConfig::read(data_dir)?;
    let (first, last) = (log.first_index(), log.last_index());
    let last_term = log
        .term(last)
        .map_err(|e| format!("reading the log: {e}"))?
        .unwrap_or(Term(0));
    let mut configuration = None;
    // The newest configuration entry: scan the whole log (configuration entries are rare and
    // the log is bounded by compaction), keeping the last one seen.
    let mut low = first;
    while low <= last {
        let mut batch = Vec::new();
        log.entries(low, last.next(), SCAN_BATCH_BYTES, &mut batch)
            .map_err(|e| format!("reading the log: {e}"))?;
        let Some(end) = batch.last().map(|entry| entry.index) else {
            break;
        };
        for entry in batch.iter().filter(|e| e.kind == EntryKind::Configuration) {
            let decoded = Configuration::decode(&entry.payload)
                .map_err(|e| format!("configuration entry {} does not decode: {e}", entry.index))?;
            configuration = Some((entry.index, decoded));
        }
        low = end.next();
    }
    if configuration.is_none() {
        let snapshot = log
            .snapshots()
            .latest()
            .map_err(|e| format!("reading the snapshots: {e}"))?;
        if let Some(meta) = snapshot {
            let decoded = Configuration::decode(&meta.configuration)
                .map_err(|e| format!("snapshot {}: bad configuration: {e}", meta.index))?;
            configuration = Some((meta.index, decoded));
        }
    }
    let (configuration_index, configuration) =
        configuration.unwrap_or((LogIndex(0), Configuration::new()));
    Ok(LogState {
        id: node.id,
        address: node.address,
        hard_state: log.hard_state(),
        first,
        last,
        last_term,
        configuration,
        configuration_index,
    })
}

/// Reads a stopped node's log state (`atoll recover --inspect`).
pub fn inspect(data_dir: &Path) -> Result<LogState, String> {
    let log = open_log(data_dir)?;
    state(data_dir, &log)
}

/// Rewrites a stopped node's configuration: `voters` (ids of the current configuration, this
/// node among them) become the only members, all voters. Returns the state before and the new
/// configuration.
pub fn recover(data_dir: &Path, voters: &[u64]) -> Result<(LogState, Configuration), String> {
    let mut log = open_log(data_dir)?;
    let before = state(data_dir, &log)?;
    if before.configuration.is_empty() {
        return Err(format!(
            "{} has no configuration (a node that never joined a cluster): nothing to recover",
            data_dir.display()
        ));
    }
    if !voters.contains(&before.id) {
        return Err(format!(
            "--voters must name this node ({}): recover runs on a survivor that will be a voter",
            before.id
        ));
    }
    let mut configuration = Configuration::new();
    for &id in voters {
        let Some(member) = before.configuration.get(NodeId(id)) else {
            return Err(format!(
                "node {id} is not in this node's configuration (index {}); members: {}",
                before.configuration_index,
                before
                    .configuration
                    .members()
                    .map(|(id, _)| id.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        configuration.insert(NodeId(id), member.address.clone(), MemberRole::Voter);
    }
    let Some(term) = before
        .hard_state
        .term
        .0
        .max(before.last_term.0)
        .checked_add(1)
    else {
        return Err("the term cannot grow any more".to_owned());
    };
    let term = Term(term);
    // The term first: an entry of a term the node has not reached would break raft's rule that
    // the log's terms never pass the current term.
    log.save_hard_state(HardState { term, vote: None })
        .map_err(|e| format!("saving the term: {e}"))?;
    let entry = Entry {
        index: before.last.next(),
        term,
        kind: EntryKind::Configuration,
        payload: Payload::from_vec(configuration.encode_to_vec()),
    };
    log.append(&[entry])
        .map_err(|e| format!("appending the configuration entry: {e}"))?;
    log.sync().map_err(|e| format!("syncing the log: {e}"))?;
    Ok((before, configuration))
}
